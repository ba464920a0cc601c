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

from rxfed.crypto import b64d, b64e, sha256
from rxfed.errors import BadRequest, Unauthorized
from rxfed.protocol.canonical import canonical
from rxfed.protocol.schema import anything, array, b64, fields, integer, text

PROTOCOL_VERSIONS = ("1",)
MAX_EVENTS_PER_TXN = 1000
MAX_TIME = 2**40
NODE_ID = r"(\[[0-9a-fA-F:.]+\]|[a-z0-9.-]+)(:[0-9]{1,5})?"
TXN_ID = r"[A-Za-z0-9_-]{16,64}"
EVENT_KIND = r"[a-z][a-z0-9_.-]{0,63}"
FINGERPRINT = r"SHA256:[A-Za-z0-9_-]{43}"


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


@attrs.frozen
class NodeKey:
    """A node's published Ed25519 key and the span in which its signatures are valid."""

    public_key: bytes
    valid_from: int
    valid_until: int | None

    def valid_at(self, when: int) -> bool:
        return self.valid_from - 300 <= when and (self.valid_until is None or when <= self.valid_until)


@attrs.frozen
class NodeDocument:
    """The ``/.well-known/rxfed`` document of a node, as far as federation needs it."""

    node_id: str
    name: str
    protocol_versions: tuple[str, ...]
    keys: tuple[NodeKey, ...]

    @classmethod
    def from_json(cls, obj: Any) -> NodeDocument:
        if not isinstance(obj, dict):
            raise BadRequest("the node document must be a JSON object")
        node_id = text(255)(obj.get("node_id"), "node_id")
        if not node_id_ok(node_id):
            raise BadRequest("the node document has a malformed node_id")
        if not isinstance(obj.get("keys"), list) or not isinstance(obj.get("protocol_versions"), list):
            raise BadRequest("the node document needs lists of keys and protocol_versions")
        keys = []
        for i, k in enumerate(obj["keys"][:32]):
            f = fields(k, f"keys[{i}]", {"public_key": b64(32), "valid_from": integer(0, MAX_TIME)},
                       {"valid_until": integer(0, MAX_TIME), "key_id": anything, "alg": anything,
                        "fingerprint": anything})
            keys.append(NodeKey(f["public_key"], f["valid_from"], f["valid_until"]))
        versions = tuple(v for v in obj["protocol_versions"][:32] if isinstance(v, str))
        return cls(node_id, str(obj.get("name", ""))[:200], versions, tuple(keys))

    def key_for(self, public_key: bytes, created: int) -> NodeKey:
        """The published key a signature made at ``created`` may use, or Unauthorized."""
        for key in self.keys:
            if key.public_key == public_key:
                if not key.valid_at(created):
                    raise Unauthorized("the signing key was not valid at the signature's time", code="expired_key")
                return key
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
        f = fields(obj, "transaction", {"origin": text(255), "destination": text(255),
                                        "seq": integer(1, 2**53 - 1), "events": array(anything, MAX_EVENTS_PER_TXN)})
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
