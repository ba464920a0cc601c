"""Consent grants, grant tokens, vouchers and revocations (sans-I/O).

A patient's **grant** says: signals of one kind, for one purpose, to one recipient
(``node:ID``, ``federation`` or ``plugin:NODE_ID/NAME``), until a time. It is signed by one
of the patient's devices and stays on the patient's home node.

The grant names its recipient **nodes**, so the home node cannot widen a ``federation``
grant by federating with a node of its own afterwards.

What travels is a **token** per recipient node: the same scope, signed by the patient's
pairwise pseudonymous key for that node, purpose and plugin (:func:`rxfed.crypto.pseudonym_key`),
so two recipients cannot link their tokens to each other or to the patient. The home node
**vouches** for a token (a statement signed with its node key: "this pseudonym is a patient
of mine"). A **revocation** is signed by the device (for the home node) and by each token's
pseudonymous key (for the recipients); a recipient answers it with an **acknowledgement**
signed by its node key, which the patient's client checks against the keys that node
publishes itself.

See spec/consent.md for the wire format and the security argument.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import attrs

from rxfed.crypto import SigningKeyPair, b64e, fingerprint, hash_id, random_bytes
from rxfed.errors import BadRequest, Conflict, Forbidden, Gone
from rxfed.protocol.schema import anything, array, b64, const, fields, integer, text
from rxfed.protocol.statements import open_statement, open_statement_by_any, sign_statement, statement_hash

GRANT = "rxfed.consent.grant"
TOKEN = "rxfed.consent.token"
VOUCHER = "rxfed.consent.voucher"
DELIVERY = "rxfed.consent.delivery"
REVOKE = "rxfed.consent.revoke"
TOKEN_REVOKE = "rxfed.consent.token-revoke"
ACK = "rxfed.consent.ack"
#: The version of grants and tokens made now: 2 names the recipient nodes. Version 1
#: tokens (no ``nodes``) are still read, so grants made before can be listed and revoked.
VERSION = 2

PURPOSE = r"[a-z][a-z0-9_.-]{0,39}"
PLUGIN = r"[a-z][a-z0-9_.-]{0,39}"
NODE_ID = r"[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?"
ID = r"[a-z0-9]{32}"
#: The longest a grant may run: a year and a day; a patient renews it explicitly.
MAX_DURATION = 366 * 86400
#: How far a grant's issue time may be from the node's clock.
SKEW = 300
MAX_TIME = 2**41
#: Times that every recipient of a grant sees are whole days (see :func:`day`).
DAY = 86400
#: Delivery sequence numbers step up by a uniform random amount from 1 to this.
SEQ_STEP = 2**32
MAX_SEQ = 2**53 - 1
#: The most recipient nodes one grant can name.
MAX_NODES = 64
_RECIPIENT = re.compile(rf"node:(?P<node>{NODE_ID})|(?P<fed>federation)|plugin:(?P<pnode>{NODE_ID})/(?P<plugin>{PLUGIN})")


class ConsentError(BadRequest):
    code = "bad_grant"


def new_id() -> str:
    return hash_id(random_bytes(32), person=b"rxfed-consent-id")


@attrs.frozen
class Recipient:
    """Who a grant is for: ``node:ID``, ``federation`` (every node federated at grant time,
    the home node included) or ``plugin:NODE_ID/NAME`` (one plugin on one node)."""

    kind: str
    node: str | None = None
    plugin: str | None = None

    @classmethod
    def parse(cls, value: Any, where: str = "recipient") -> Recipient:
        match = _RECIPIENT.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            raise ConsentError(f"{where} must be node:NODE_ID, federation or plugin:NODE_ID/NAME",
                               code="bad_recipient")
        if match["fed"]:
            return cls("federation")
        if match["node"]:
            return cls("node", match["node"])
        return cls("plugin", match["pnode"], match["plugin"])

    def __str__(self) -> str:
        if self.kind == "federation":
            return "federation"
        return f"node:{self.node}" if self.kind == "node" else f"plugin:{self.node}/{self.plugin}"

    def nodes(self, federated: list[str]) -> list[str]:
        """The nodes a grant to this recipient reaches, given the home node's federation
        (``federated``: the home node first, then its peers)."""
        return list(dict.fromkeys(federated)) if self.kind == "federation" else [self.node]

    def covers(self, node: str, plugin: str) -> bool:
        """True when this recipient includes ``plugin`` running on ``node``."""
        if self.kind == "plugin":
            return self.node == node and self.plugin == plugin
        return self.kind == "federation" or self.node == node

    def only_plugin(self) -> str | None:
        return self.plugin if self.kind == "plugin" else None


@attrs.frozen
class OfferedPlugin:
    """A plugin a node says, in its ``/.well-known/rxfed`` document, receives signals: the
    kinds its manifest reads and the purposes it serves."""

    name: str
    version: str
    reads: tuple[str, ...]
    purposes: tuple[str, ...]

    def accepts(self, kind: str, purpose: str) -> bool:
        return kind in self.reads and purpose in self.purposes

    def to_json(self) -> dict:
        return {"name": self.name, "version": self.version, "reads": list(self.reads),
                "purposes": list(self.purposes)}

    def __str__(self) -> str:
        return f"{self.name} ({', '.join(self.reads) or 'no kind'} for {', '.join(self.purposes) or 'no purpose'})"


#: The most plugins a node document may list.
MAX_OFFERED = 200


def offered_plugins(doc: Any, node: str) -> tuple[OfferedPlugin, ...] | None:
    """The plugins ``node``'s document offers (``plugins``), or None when the document does
    not say (a node older than the list): then a grant to it cannot be checked."""
    listed = doc.get("plugins") if isinstance(doc, dict) else None
    if listed is None:
        return None
    words = array(text(80), 64)
    try:
        out = []
        for i, row in enumerate(array(anything, MAX_OFFERED)(listed, "plugins")):
            if not isinstance(row, dict):  # other keys are left for later versions to add
                raise BadRequest(f"plugins[{i}] must be an object")
            name = text(40, PLUGIN)(row.get("name"), f"plugins[{i}].name")
            version = text(80)(row.get("version", ""), f"plugins[{i}].version") if row.get("version") else ""
            out.append(OfferedPlugin(name, version, tuple(words(row.get("reads"), f"plugins[{i}].reads")),
                                     tuple(words(row.get("purposes"), f"plugins[{i}].purposes"))))
    except BadRequest as exc:
        raise BadRequest(f"{node} publishes a malformed list of plugins: {exc.message}",
                         code="bad_node_document") from None
    return tuple(out)


def _offers_text(plugins: tuple[OfferedPlugin, ...]) -> str:
    return "; ".join(str(p) for p in plugins) if plugins else "no plugin that receives signals"


def grant_receivers(recipient: Recipient, kind: str, purpose: str,
                    offers: dict[str, tuple[OfferedPlugin, ...] | None]) -> dict[str, list[str] | None]:
    """The plugins a grant of ``kind`` for ``purpose`` to ``recipient`` would reach on each
    of its nodes (``offers``: what each node publishes; None: it does not say), checked
    before the patient signs it. Refused (:class:`ConsentError`, ``unknown_plugin`` or
    ``no_recipient``) when the named plugin is not there or does not read the kind for the
    purpose, or when no plugin on any of the nodes would: such a grant would send the
    patient's signals where nothing uses them."""
    receivers = {node: None if plugins is None else [p.name for p in plugins if p.accepts(kind, purpose)
                                                     and recipient.covers(node, p.name)]
                 for node, plugins in offers.items()}
    if recipient.kind == "plugin":
        plugins = offers.get(recipient.node)
        if plugins is None:
            return receivers
        named = next((p for p in plugins if p.name == recipient.plugin), None)
        if named is None:
            raise ConsentError(f"{recipient.node} has no plugin {recipient.plugin!r}; it offers: "
                               f"{_offers_text(plugins)}", code="unknown_plugin")
        if not named.accepts(kind, purpose):
            raise ConsentError(f"plugin {recipient.plugin!r} on {recipient.node} reads "
                               f"{', '.join(named.reads) or 'no kind'} for {', '.join(named.purposes) or 'no purpose'}, "
                               f"not {kind} for {purpose}", code="unknown_plugin")
        return receivers
    if receivers and all(found is not None and not found for found in receivers.values()):
        served = sorted({purpose for plugins in offers.values() for p in plugins or () if kind in p.reads
                         for purpose in p.purposes})
        where = ", ".join(sorted(offers))
        raise ConsentError(f"no plugin on {where} reads {kind} for {purpose}"
                           + (f" (purposes served there for {kind}: {', '.join(served)})" if served
                              else f" (no plugin there reads {kind})"), code="no_recipient")
    return receivers


def check_purpose(value: Any) -> str:
    if not isinstance(value, str) or re.fullmatch(PURPOSE, value) is None:
        raise ConsentError("a purpose is lower case letters, digits, '.', '_' or '-', at most 40 (e.g. research)",
                           code="bad_purpose")
    return value


def pseudonym_label(node: str, purpose: str, plugin: str | None) -> str:
    """The label a pseudonymous key is derived from: one per node, purpose and plugin."""
    return f"rxfed-pseudonym-v1|{node}|{purpose}|{plugin or ''}"


def subject_of(key: bytes) -> str:
    """The pseudonym plugins see: a fingerprint of the token's public key."""
    return fingerprint(key)


def parse_until(value: str, now: int) -> int:
    """``--until`` as a Unix time: a date (end of that day, UTC) or an ISO datetime."""
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            moment = dt.datetime.combine(dt.date.fromisoformat(value), dt.time(23, 59, 59), dt.timezone.utc)
        else:
            moment = dt.datetime.fromisoformat(value)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=dt.timezone.utc)
    except (TypeError, ValueError):
        raise ConsentError(f"--until must be a date like 2027-01-31, not {value!r}", code="bad_date") from None
    until = int(moment.timestamp())
    if until <= now:
        raise ConsentError("--until must be in the future", code="bad_date")
    if until - now > MAX_DURATION:
        raise ConsentError("a grant runs for at most a year; renew it when it ends", code="bad_date")
    return until


# -- the grant (home node only) ------------------------------------------------------------


@attrs.frozen
class Grant:
    id: str
    patient: str
    device: str
    kind: str
    purpose: str
    recipient: Recipient
    issued: int
    not_after: int
    #: The recipient nodes, sorted: the one node of a ``node:`` or ``plugin:`` grant, the
    #: nodes of the federation the patient agreed to for a ``federation`` grant.
    nodes: tuple[str, ...]
    tokens: tuple[str, ...]
    signed: dict = attrs.field(eq=False, repr=False)

    @classmethod
    def create(cls, device_key: SigningKeyPair, *, patient: str, device: str, kind: str, purpose: str,
               recipient: Recipient, issued: int, not_after: int, nodes: list[str], tokens: list[str]) -> Grant:
        body = {"type": GRANT, "v": VERSION, "id": new_id(), "patient": patient, "device": device, "kind": kind,
                "purpose": purpose, "recipient": str(recipient), "issued": issued, "not_after": not_after,
                "nodes": sorted(nodes), "tokens": list(tokens)}
        return cls.from_json(sign_statement(device_key, body), device_key.public)

    @classmethod
    def from_json(cls, obj: Any, device_key: bytes | None) -> Grant:
        body = open_statement(obj, "grant", GRANT, device_key)
        f = fields(body, "grant", {
            "type": const(GRANT), "v": const_int(VERSION), "id": text(32, ID), "patient": text(128),
            "device": text(128), "kind": text(96), "purpose": text(40, PURPOSE), "recipient": Recipient.parse,
            "issued": integer(0, MAX_TIME), "not_after": integer(0, MAX_TIME), "nodes": node_list,
            "tokens": token_ids})
        if f["not_after"] <= f["issued"] or f["not_after"] - f["issued"] > MAX_DURATION:
            raise ConsentError("a grant ends after it is issued and runs for at most a year", code="bad_date")
        if f["recipient"].kind != "federation" and f["nodes"] != (f["recipient"].node,):
            raise ConsentError("a grant to one node names that node only", code="widened_grant")
        if len(f["tokens"]) != len(f["nodes"]):
            raise ConsentError("a grant has one token per node it names")
        return cls(f["id"], f["patient"], f["device"], f["kind"], f["purpose"], f["recipient"], f["issued"],
                   f["not_after"], f["nodes"], tuple(f["tokens"]), obj)


def const_int(expected: int):
    def check(value: Any, where: str) -> int:
        if value != expected or isinstance(value, bool):
            raise BadRequest(f"{where} must be {expected}", code="unsupported_version")
        return value

    return check


def token_ids(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not 1 <= len(value) <= 64:
        raise ConsentError(f"{where} must list 1 to 64 distinct token ids")
    ids = [text(32, ID)(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if len(set(ids)) != len(ids):
        raise ConsentError(f"{where} must list 1 to 64 distinct token ids")
    return ids


def node_list(value: Any, where: str) -> tuple[str, ...]:
    """The recipient nodes a grant or token names: 1 to 64 node ids, sorted, distinct."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_NODES:
        raise ConsentError(f"{where} must list 1 to {MAX_NODES} node ids")
    nodes = tuple(text(260, NODE_ID)(v, f"{where}[{i}]") for i, v in enumerate(value))
    if list(nodes) != sorted(set(nodes)):
        raise ConsentError(f"{where} must list distinct node ids in sorted order")
    return nodes


def day(unix: int) -> int:
    """``unix`` rounded down to a whole UTC day. Times the recipients of one grant all see
    are whole days, so a shared timestamp cannot link their tokens (beyond "granted the same
    day"); ``not_after`` is the last second of a day for the same reason."""
    return unix - unix % DAY


def end_of_day(unix: int) -> int:
    return day(unix) + DAY - 1


# -- tokens: what travels ------------------------------------------------------------------


@attrs.frozen
class Token:
    """One recipient node's copy of a grant, signed by the patient's pseudonymous key.

    ``subject_key`` is the **pseudonym key** (the token body's ``subject`` field: the
    Ed25519 public key that signs the token and its deliveries); :attr:`subject` is the
    **pseudonym** plugins see, a fingerprint of that key.
    """

    id: str
    node: str
    home: str
    subject_key: bytes
    kind: str
    purpose: str
    recipient: Recipient
    issued: int
    not_after: int
    #: The nodes of the grant (``node`` among them); None for a version 1 ``federation``
    #: token, made before grants named their nodes.
    nodes: tuple[str, ...] | None
    v: int
    signed: dict = attrs.field(eq=False, repr=False)

    @property
    def subject(self) -> str:
        return subject_of(self.subject_key)

    @classmethod
    def create(cls, key: SigningKeyPair, *, node: str, home: str, kind: str, purpose: str, recipient: Recipient,
               nodes: list[str], issued: int, not_after: int) -> Token:
        body = {"type": TOKEN, "v": VERSION, "id": new_id(), "node": node, "home": home,
                "subject": b64e(key.public), "kind": kind, "purpose": purpose, "recipient": str(recipient),
                "nodes": sorted(nodes), "issued": day(issued), "not_after": not_after}
        return cls.from_json(sign_statement(key, body))

    @classmethod
    def from_json(cls, obj: Any) -> Token:
        """Parse and check the signature under the pseudonym key the token names."""
        unverified = open_statement(obj, "token", TOKEN, None)
        subject = b64(32)(unverified.get("subject") if isinstance(unverified, dict) else None, "token.subject")
        body = open_statement(obj, "token", TOKEN, subject)
        version = body.get("v")
        if version not in (1, VERSION) or isinstance(version, bool):
            raise BadRequest(f"token.v must be {VERSION}", code="unsupported_version")
        spec = {"type": const(TOKEN), "v": anything, "id": text(32, ID), "node": text(260, NODE_ID),
                "home": text(260, NODE_ID), "subject": b64(32), "kind": text(96), "purpose": text(40, PURPOSE),
                "recipient": Recipient.parse, "issued": integer(0, MAX_TIME), "not_after": integer(0, MAX_TIME)}
        if version == VERSION:
            spec["nodes"] = node_list
        f = fields(body, "token", spec)
        recipient = f["recipient"]
        if recipient.kind != "federation" and recipient.node != f["node"]:
            raise ConsentError("the token's node is not its recipient", code="widened_grant")
        nodes = f.get("nodes") or (None if recipient.kind == "federation" else (f["node"],))
        if nodes is not None and (f["node"] not in nodes
                                  or (recipient.kind != "federation" and nodes != (f["node"],))):
            raise ConsentError("the token's node is not one its grant names", code="widened_grant")
        return cls(f["id"], f["node"], f["home"], f["subject"], f["kind"], f["purpose"], recipient, f["issued"],
                   f["not_after"], nodes, version, obj)

    def matches(self, grant: Grant) -> bool:
        """The token has exactly the grant's scope (a token can never widen its grant)."""
        return (self.v == VERSION and self.id in grant.tokens and self.kind == grant.kind
                and self.purpose == grant.purpose and self.recipient == grant.recipient
                and self.nodes == grant.nodes and self.not_after == grant.not_after)

    def check_live(self, me: str, now: int, kinds) -> None:
        """Refuse a token that is not for this node (named by the patient), expired, or for
        an unknown kind."""
        if self.node != me:
            raise Forbidden("the grant token is for another node", code="wrong_recipient")
        if self.nodes is None:
            raise Forbidden("the token does not name its grant's nodes (made by an older rxfed); the patient "
                            "grants again", code="widened_grant")
        if self.not_after <= now:
            raise Gone("the consent grant has expired", code="grant_expired")
        if self.kind not in kinds:
            raise ConsentError(f"unknown signal kind {self.kind!r}", code="unknown_kind")


def voucher(node_key: SigningKeyPair, token: Token, now: int) -> dict:
    """The home node's statement that a token's pseudonym is one of its patients."""
    return sign_statement(node_key, {"type": VOUCHER, "token": token.id, "subject": b64e(token.subject_key),
                                     "home": token.home, "issued": day(now)})


def check_voucher(obj: Any, token: Token, home_keys: list[bytes]) -> None:
    try:
        body = open_statement_by_any(obj, "voucher", VOUCHER, home_keys)
    except Forbidden as exc:
        raise Forbidden("the home node's voucher does not verify", code="bad_voucher") from exc
    if body.get("token") != token.id or body.get("subject") != b64e(token.subject_key) \
            or body.get("home") != token.home:
        raise Forbidden("the voucher is for another token", code="bad_voucher")


# -- deliveries: the signals, signed by the token's key ------------------------------------


def next_seq(last: int, random: bytes) -> int:
    """The sequence number of a token's next delivery: ``last`` (the token's previous one,
    0 for none) plus a uniform random step from 1 to 2**32 drawn from ``random`` (4 fresh
    random bytes). The numbers grow for one token, so a recipient can refuse an old delivery;
    their values and gaps depend on nothing but fresh randomness, never on time or on another
    token, so recipients comparing them learn nothing that links their tokens."""
    if len(random) != 4:
        raise ValueError("a sequence step takes 4 random bytes")
    seq = last + 1 + int.from_bytes(random, "big")
    if seq > MAX_SEQ:
        raise Conflict("this grant has made all the deliveries it can; grant again", code="seq_exhausted")
    return seq


def legacy_seq_floor(now_ms: int) -> int:
    """A ``last`` above every sequence number a token shared under before the numbers were
    relayed by the home node: those were milliseconds plus an offset below 2**32."""
    return now_ms + SEQ_STEP


def sign_delivery(key: SigningKeyPair, *, token: str, node: str, delivery: str, seq: int,
                  signals: list[dict]) -> dict:
    """The plaintext sealed to the recipient: the signals, signed by the token's key, bound
    to the token, the node and the delivery id, and ordered by ``seq``."""
    return sign_statement(key, {"type": DELIVERY, "token": token, "node": node, "delivery": delivery, "seq": seq,
                                "signals": signals})


def open_delivery(obj: Any, token: Token, delivery: str) -> tuple[int, list]:
    """``(seq, signals)`` of a delivery the token's key signed for this token, its node and
    this delivery id; Forbidden otherwise (a relaying node cannot make or replay one)."""
    body = open_statement(obj, "delivery", DELIVERY, token.subject_key)
    f = fields(body, "delivery", {"type": const(DELIVERY), "token": text(32, ID), "node": text(260, NODE_ID),
                                  "delivery": text(32, ID), "seq": integer(0, MAX_SEQ), "signals": anything})
    if f["token"] != token.id or f["node"] != token.node or f["delivery"] != delivery:
        raise Forbidden("the delivery is signed for another token, node or delivery", code="bad_delivery")
    if not isinstance(f["signals"], list):
        raise ConsentError("delivery.signals must be a list", code="bad_signal")
    return f["seq"], f["signals"]


# -- revocation ----------------------------------------------------------------------------


def revoke_grant(device_key: SigningKeyPair, grant_id: str, now: int) -> dict:
    return sign_statement(device_key, {"type": REVOKE, "grant": grant_id, "revoked": now})


def check_grant_revocation(obj: Any, grant_id: str, device_key: bytes) -> int:
    body = open_statement(obj, "revocation", REVOKE, device_key)
    f = fields(body, "revocation", {"type": const(REVOKE), "grant": text(32, ID), "revoked": integer(0, MAX_TIME)})
    if f["grant"] != grant_id:
        raise Forbidden("the revocation is for another grant", code="bad_revocation")
    return f["revoked"]


def revoke_token(key: SigningKeyPair, token_id: str, now: int) -> dict:
    return sign_statement(key, {"type": TOKEN_REVOKE, "token": token_id, "revoked": now})


def check_token_revocation(obj: Any, token_id: str, subject_key: bytes) -> int:
    body = open_statement(obj, "token revocation", TOKEN_REVOKE, subject_key)
    f = fields(body, "token revocation", {"type": const(TOKEN_REVOKE), "token": text(32, ID),
                                          "revoked": integer(0, MAX_TIME)})
    if f["token"] != token_id:
        raise Forbidden("the revocation is for another token", code="bad_revocation")
    return f["revoked"]


# -- acknowledgement: the recipient's signed word that it deleted --------------------------


@attrs.frozen
class Acknowledgement:
    """A recipient node's statement, signed by its node key, that it deleted what it held
    under a revoked token: bound to the token, the exact revocation (its statement hash),
    the node and a time. The home node relays and keeps it but cannot make one, so the
    patient's client shows a node as done only with a valid one (spec/consent.md §6)."""

    token: str
    node: str
    acknowledged: int
    #: Plugins on that node that could not confirm deleting what they were handed.
    unconfirmed: tuple[str, ...]
    signed: dict = attrs.field(eq=False, repr=False)

    @classmethod
    def create(cls, node_key: SigningKeyPair, *, token: str, node: str, revocation: dict, unconfirmed: list[str],
               now: int) -> Acknowledgement:
        body = {"type": ACK, "token": token, "node": node, "revocation": b64e(statement_hash(revocation)),
                "acknowledged": now, "unconfirmed": sorted(unconfirmed)}
        return cls(token, node, now, tuple(sorted(unconfirmed)), sign_statement(node_key, body))

    @classmethod
    def check(cls, obj: Any, *, token: str, node: str, revocation: dict, node_keys: list[bytes]) -> Acknowledgement:
        """The acknowledgement if one of ``node_keys`` (the node's own published keys)
        signed it for this token, node and revocation; Forbidden (``bad_ack``) otherwise."""
        try:
            body = open_statement_by_any(obj, "acknowledgement", ACK, node_keys)
        except Forbidden as exc:
            raise Forbidden(f"the acknowledgement is not signed by a key {node} publishes", code="bad_ack") from exc
        f = fields(body, "acknowledgement", {
            "type": const(ACK), "token": text(32, ID), "node": text(260, NODE_ID), "revocation": b64(32),
            "acknowledged": integer(0, MAX_TIME), "unconfirmed": array(text(40, PLUGIN), 64)})
        if f["token"] != token or f["node"] != node or f["revocation"] != statement_hash(revocation):
            raise Forbidden("the acknowledgement is for another token, node or revocation", code="bad_ack")
        return cls(f["token"], f["node"], f["acknowledged"], tuple(f["unconfirmed"]), obj)
