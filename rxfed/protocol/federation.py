"""Server-to-server protocol: node key documents, transactions, and their validation.

A transaction carries a batch of events from an origin node to a destination node in one
signed ``PUT /federation/v1/transactions/{txn}``. The sender keeps the transaction id for
retries (each retry signs a fresh nonce), so the receiver applies a transaction once and
answers a retry with the reply it stored. Sequence numbers count transactions per
origin-destination pair so a receiver can report gaps; a gap never blocks delivery.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from rxfed.crypto import SigningKeyPair, b64d, b64e, sha256
from rxfed.errors import BadRequest, RxfedError, Unauthorized
from rxfed.protocol.canonical import canonical, loads
from rxfed.protocol.schema import anything, array, b64, fields, integer, text
from rxfed.protocol.statements import open_statement, sign_statement

PROTOCOL_VERSIONS = ("1",)
MAX_EVENTS_PER_TXN = 1000
MAX_TIME = 2**40
NODE_ID = r"(\[[0-9a-fA-F:.]+\]|[a-z0-9.-]+)(:[0-9]{1,5})?"
TXN_ID = r"[A-Za-z0-9_-]{16,64}"
EVENT_KIND = r"[a-z][a-z0-9_.-]{0,63}"
FINGERPRINT = r"SHA256:[A-Za-z0-9_-]{43}"
ROTATION = "rxfed.node-key-rotation"
#: Keys, and rotation statements, read from one key document.
MAX_KEYS = 64
#: A key signs from this long before its ``valid_from`` (clocks differ).
CLOCK_SKEW = 300


def node_id_ok(value: str) -> bool:
    return isinstance(value, str) and len(value) <= 255 and re.fullmatch(NODE_ID, value) is not None


def fingerprint_ok(value: str) -> bool:
    """Whether ``value`` is a complete key fingerprint: ``SHA256:`` and the unpadded
    base64url of 32 bytes (43 characters, canonical)."""
    if not isinstance(value, str) or not re.fullmatch(FINGERPRINT, value):
        return False
    try:
        b64d(value[len("SHA256:"):], length=32)
    except ValueError:
        return False
    return True


def _bad_document(message: str) -> BadRequest:
    return BadRequest(message, code="bad_document")


@attrs.frozen
class NodeKey:
    """A node's Ed25519 key and the span in which its signatures are valid. ``successor``
    (trusted keys only) is the key it introduced by a rotation this node followed."""

    public_key: bytes
    valid_from: int
    valid_until: int | None
    successor: bytes | None = None

    def valid_at(self, when: int) -> bool:
        return self.valid_from - CLOCK_SKEW <= when and (self.valid_until is None or when <= self.valid_until)

    def to_json(self) -> dict:
        return {"public_key": b64e(self.public_key), "valid_from": self.valid_from, "valid_until": self.valid_until,
                "successor": None if self.successor is None else b64e(self.successor)}

    @classmethod
    def from_json(cls, obj: Any, where: str, *, published: bool = False) -> NodeKey:
        """A trusted key as stored, or (``published``) a key entry of a key document with
        the labels it adds (never trusted: a key is identified by ``public_key`` alone)."""
        extra = ({"key_id": anything, "alg": anything, "fingerprint": anything} if published
                 else {"successor": b64(32)})
        f = fields(obj, where, {"public_key": b64(32), "valid_from": integer(0, MAX_TIME)},
                   {"valid_until": integer(0, MAX_TIME), **extra})
        return cls(f["public_key"], f["valid_from"], f["valid_until"], f.get("successor"))


def keys_json(keys: tuple[NodeKey, ...]) -> bytes:
    """The canonical form in which a node remembers the keys it trusts for a peer."""
    return canonical([k.to_json() for k in keys])


def keys_from_json(data: bytes) -> tuple[NodeKey, ...]:
    obj = loads(data)
    if not isinstance(obj, list):
        raise BadRequest("a list of keys is expected")
    return tuple(NodeKey.from_json(k, f"keys[{i}]") for i, k in enumerate(obj))


@attrs.frozen
class KeyRotation:
    """``rxfed.node-key-rotation``: a node's ``old`` key introducing its successor ``new``,
    valid from ``valid_from``, and ending its own validity at ``old_valid_until``. Signed by
    ``old``, so only a holder of the old key can make one."""

    node: str
    old: bytes
    new: bytes
    valid_from: int
    old_valid_until: int

    def body(self) -> dict:
        return {"type": ROTATION, "node": self.node, "old": b64e(self.old), "new": b64e(self.new),
                "valid_from": self.valid_from, "old_valid_until": self.old_valid_until}

    def signed_by(self, old: SigningKeyPair) -> dict:
        if old.public != self.old:
            raise ValueError("a rotation is signed by the key it retires")
        return sign_statement(old, self.body())

    @classmethod
    def from_statement(cls, obj: Any, where: str) -> KeyRotation:
        """Parse and verify under the ``old`` key it names; BadRequest or Forbidden otherwise."""
        body = open_statement(obj, where, ROTATION, None)
        f = fields(body, where, {"type": anything, "node": text(255), "old": b64(32), "new": b64(32),
                                 "valid_from": integer(0, MAX_TIME), "old_valid_until": integer(0, MAX_TIME)})
        if f["old"] == f["new"] or f["old_valid_until"] < f["valid_from"]:
            raise BadRequest(f"{where}: a rotation introduces another key and ends the old one no earlier")
        open_statement(obj, where, ROTATION, f["old"])
        return cls(f["node"], f["old"], f["new"], f["valid_from"], f["old_valid_until"])


def trusted_keys(anchors: tuple[NodeKey, ...], rotations: tuple[KeyRotation, ...]) -> tuple[NodeKey, ...]:
    """The keys to accept for a node: the ``anchors`` (pinned by the operator, or trusted
    before) and every key reached from them by a chain of rotations, each with the validity
    the chain gives it (spec/federation.md §2.2).

    A rotation is followed when its old key is trusted, was valid at the rotation's
    ``valid_from`` and has introduced no other key; it ends the old key at
    ``old_valid_until`` (an end is never extended) and records the successor. A key that
    signed two different rotations is followed by neither. Only a stolen or misused key
    forks, and a receiver that followed the real rotation before keeps its successor and
    follows no other."""
    trusted = {k.public_key: k for k in anchors}
    by_old: dict[bytes, set[KeyRotation]] = {}
    for r in rotations:
        by_old.setdefault(r.old, set()).add(r)
    pending = [next(iter(signed)) for signed in by_old.values() if len(signed) == 1]
    progress = True
    while progress:
        progress = False
        for r in list(pending):
            old = trusted.get(r.old)
            if old is None:
                continue
            pending.remove(r)
            progress = True
            if not old.valid_at(r.valid_from) or old.successor not in (None, r.new):
                continue
            end = r.old_valid_until if old.valid_until is None else min(old.valid_until, r.old_valid_until)
            trusted[r.old] = attrs.evolve(old, valid_until=end, successor=r.new)
            if r.new not in trusted:
                trusted[r.new] = NodeKey(r.new, r.valid_from, None)
    return tuple(trusted.values())


@attrs.frozen
class NodeDocument:
    """The ``/.well-known/rxfed`` document of a node, as far as federation needs it.

    As parsed, ``keys`` are the keys the document lists. :meth:`trusting` gives the view a
    node acts on: ``keys`` only the trusted ones, ``untrusted`` the listed rest."""

    node_id: str
    name: str
    protocol_versions: tuple[str, ...]
    keys: tuple[NodeKey, ...]
    rotations: tuple[KeyRotation, ...] = ()
    untrusted: frozenset[bytes] = frozenset()

    @classmethod
    def from_json(cls, obj: Any) -> NodeDocument:
        if not isinstance(obj, dict):
            raise _bad_document("the node document must be a JSON object")
        try:
            node_id = text(255)(obj.get("node_id"), "node_id")
        except BadRequest as exc:
            raise _bad_document(exc.message) from None
        if not node_id_ok(node_id):
            raise _bad_document("the node document has a malformed node_id")
        if not isinstance(obj.get("keys"), list) or not isinstance(obj.get("protocol_versions"), list):
            raise _bad_document("the node document needs lists of keys and protocol_versions")
        if not isinstance(obj.get("rotations", []), list):
            raise _bad_document("the node document's rotations must be a list")
        try:
            keys = tuple(NodeKey.from_json(k, f"keys[{i}]", published=True)
                         for i, k in enumerate(obj["keys"][:MAX_KEYS]))
        except BadRequest as exc:
            raise _bad_document(exc.message) from None
        if not keys:
            raise _bad_document("the node document lists no key")
        rotations = []
        for i, statement in enumerate(obj.get("rotations", [])[:MAX_KEYS]):
            try:
                rotation = KeyRotation.from_statement(statement, f"rotations[{i}]")
            except RxfedError:
                continue  # never followed: a rotation counts only if its old key signed it
            if rotation.node == node_id:
                rotations.append(rotation)
        versions = tuple(v for v in obj["protocol_versions"][:32] if isinstance(v, str))
        return cls(node_id, str(obj.get("name", ""))[:200], versions, keys, tuple(rotations))

    def candidates(self) -> set[bytes]:
        """Every key the document names: listed, or retired or introduced by a rotation."""
        return {k.public_key for k in self.keys} | {r.old for r in self.rotations} | {r.new for r in self.rotations}

    def trusting(self, anchors: tuple[NodeKey, ...]) -> NodeDocument:
        """This document as trusted from ``anchors`` (see :func:`trusted_keys`)."""
        keys = trusted_keys(anchors, self.rotations)
        known = {k.public_key for k in keys}
        return attrs.evolve(self, keys=keys, untrusted=frozenset(k.public_key for k in self.keys) - known)

    def key_for(self, public_key: bytes, created: int) -> NodeKey:
        """The trusted key a signature made at ``created`` may use, or Unauthorized."""
        for key in self.keys:
            if key.public_key == public_key:
                if not key.valid_at(created):
                    raise Unauthorized("the signing key was not valid at the signature's time", code="expired_key")
                return key
        if public_key in self.untrusted:
            raise Unauthorized("the signing key is published but neither pinned nor learnt for the origin, nor "
                               "signed by such a key", code="untrusted_key")
        raise Unauthorized("the signing key is not one the origin publishes", code="unknown_key")


def negotiate(ours: tuple[str, ...], theirs: tuple[str, ...]) -> str:
    """The highest protocol version both sides speak, or BadRequest."""
    common = set(ours) & set(theirs)
    if not common:
        raise BadRequest(f"no common protocol version (ours {', '.join(ours)}; theirs {', '.join(theirs) or 'none'})",
                         code="incompatible_version")
    return max(common, key=int)


@attrs.frozen
class WireEvent:
    """One event in a transaction: a kind and its content. ``id`` is the SHA-256 of its
    canonical form, so the same event sent twice has the same id."""

    kind: str
    content: dict

    @property
    def id(self) -> str:
        return b64e(sha256(canonical(self.to_json())))

    def to_json(self) -> dict:
        return {"kind": self.kind, "content": self.content}

    @classmethod
    def from_json(cls, obj: Any, where: str) -> WireEvent:
        f = fields(obj, where, {"kind": text(64, EVENT_KIND), "content": anything})
        if not isinstance(f["content"], dict):
            raise BadRequest(f"{where}.content must be an object")
        return cls(f["kind"], f["content"])


@attrs.frozen
class Transaction:
    txn_id: str
    origin: str
    destination: str
    seq: int
    events: tuple[WireEvent, ...]

    def to_json(self) -> dict:
        return {"origin": self.origin, "destination": self.destination, "seq": self.seq,
                "events": [e.to_json() for e in self.events]}

    @classmethod
    def from_json(cls, txn_id: str, obj: Any) -> Transaction:
        if isinstance(obj, dict) and isinstance(obj.get("events"), list) and len(obj["events"]) > MAX_EVENTS_PER_TXN:
            raise BadRequest(f"a transaction carries at most {MAX_EVENTS_PER_TXN} events", code="too_many_events")
        f = fields(obj, "transaction", {"origin": text(255), "destination": text(255),
                                        "seq": integer(1, 2**53 - 1), "events": array(anything, MAX_EVENTS_PER_TXN)})
        if not f["events"]:
            # It would change nothing but cost a write (its reply, for idempotency).
            raise BadRequest("a transaction carries at least one event", code="empty_transaction")
        events = tuple(WireEvent.from_json(e, f"events[{i}]") for i, e in enumerate(f["events"]))
        return cls(txn_id, f["origin"], f["destination"], f["seq"], events)

    def check_route(self, *, signed_origin: str | None, me: str) -> None:
        """The body must agree with who signed the request and who received it."""
        if signed_origin != self.origin:
            raise Unauthorized("the transaction's origin is not the signing node", code="wrong_origin")
        if self.destination != me:
            raise BadRequest(f"this transaction is for {self.destination}, not {me}", code="wrong_destination")


def transaction_body(origin: str, destination: str, seq: int, events: list[bytes]) -> bytes:
    """The canonical body of a transaction whose events are already canonical JSON: they
    are spliced in rather than parsed and encoded again (keys in canonical order)."""
    return b"".join([b'{"destination":', canonical(destination), b',"events":[', b",".join(events),
                     b'],"origin":', canonical(origin), b',"seq":', str(seq).encode(), b"}"])


@attrs.frozen
class EventResult:
    ok: bool
    error: str | None = None
    message: str | None = None

    def to_json(self) -> dict:
        return {"ok": True} if self.ok else {"ok": False, "error": self.error, "message": self.message}


def reply_json(results: list[EventResult], missing: list[int]) -> dict:
    """``results`` in the order of the transaction's events."""
    return {"results": [r.to_json() for r in results], "missing": missing}


def track_sequence(contiguous: int, seen: set[int], seq: int, *, window: int = 10_000) -> tuple[int, set[int], list[int]]:
    """Record ``seq`` from one origin; returns the new highest contiguous number, the numbers
    seen above it, and the gaps below the highest seen (capped to ``window`` numbers)."""
    if seq > contiguous:
        seen = set(seen) | {seq}
        while contiguous + 1 in seen:
            contiguous += 1
            seen.discard(contiguous)
    highest = max(seen, default=contiguous)
    missing = [n for n in range(max(contiguous + 1, highest - window), highest) if n not in seen]
    return contiguous, seen, missing
