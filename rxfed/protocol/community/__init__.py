"""Community events and state: signed membership changes and messages, folded in sequence
order by the same pure code on the host (to validate) and on clients (to read).

A community lives on one host node. A member appears in it only under a per-community
member key (Ed25519) and box key (X25519) that its client made for this community alone.
Every event is a statement signed by a member key (membership changes by the member or the
admin, messages and sender keys by their sender); the host checks it against the state,
gives it the next sequence number and countersigns it with a host stamp. Nodes store and
forward ciphertext only.

Keys follow membership: every membership change bumps ``version``, and a sender may post
only under a sender key it distributed, for the current version, to exactly the joined
members. So after any change each sender must hand a fresh key to the members of the moment
before posting again: a member who left never gets a key for later messages, and one who
joined never gets a key for earlier ones.

Addresses certify their creation: a community's id is a hash of its create event (without
the id) and its host, so ``<id>@<host>`` names exactly one create, hence one admin. Clients
check every event against the host's stamp under the host's own keys and keep a
:class:`HistoryPin`, so neither a member's home node nor anyone else can hand them another
history than the one the host stamped, nor roll back one they have seen.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs

from rxfed.crypto import (
    BadSignature,
    BoxKeyPair,
    DecryptionFailed,
    SigningKeyPair,
    b64e,
    seal_signed,
    sha256,
    verify_signature,
)
from rxfed.crypto.groups import (
    COMMITMENT_SIZE,
    FRANKING_KEY_SIZE,
    HISTORY_START,
    MAX_EPOCH,
    MESSAGE_OVERHEAD,
    SEALED_SENDER_KEY_SIZE,
    SenderKey,
    check_commitment,
    commitment,
    history_link,
    new_franking_key,
    open_message,
    open_sender_key,
    seal_message,
    seal_sender_key,
)
from rxfed.crypto.records import bucket_size, pad
from rxfed.errors import BadRequest, Conflict, Forbidden, Unauthorized
from rxfed.protocol.canonical import canonical, loads
from rxfed.protocol.schema import HEX_ID, b64, const, fields, integer, mapping, text
from rxfed.protocol.statements import open_statement, sign_statement, statement_hash

if TYPE_CHECKING:
    from rxfed.protocol.community.extra import About, ReceivedReport

CREATE = "rxfed.community.create"
JOIN = "rxfed.community.join"
APPROVE = "rxfed.community.approve"
LEAVE = "rxfed.community.leave"
REMOVE = "rxfed.community.remove"
REKEY = "rxfed.community.rekey"
SENDER_KEY = "rxfed.community.sender-key"
MESSAGE = "rxfed.community.message"
READ = "rxfed.community.read"
HOST_STAMP = "rxfed.host-stamp"
FRANKING_REPORT = "rxfed.franking-report"
ACTION = "rxfed.community.action"
REPORT = "rxfed.community.report"
REPORT_FORWARD = "rxfed.report-forward"

MAX_TIME = 2**40
MAX_SEQ = 2**53 - 1
MAX_VERSION = 2**31 - 1
#: Joined and pending members at most: a sender-key event carries one sealed key per member.
MAX_MEMBERS = 1000
MAX_NAME = 80
MAX_TEXT = 4000
#: Largest message ciphertext. The padded plaintext must fit a bucket below it, so the
#: largest bucket is 4 KiB: 4000 characters of mostly ASCII text fit, far fewer of a script
#: that takes several UTF-8 bytes a character (make_message says so with message_too_long).
MAX_CIPHERTEXT = 8 * 1024
#: What a moderator's action does (spec/moderation.md, "Moderator actions"). ``appoint`` and
#: ``dismiss`` name or end a moderator, and only the admin may; the others any moderator may.
ACTIONS = ("hide", "warn", "remove", "ban", "appoint", "dismiss")
#: What a report says a message is: the pre-send check's categories, and the harms it does
#: not check for.
REPORT_CATEGORIES = ("medication_change", "dosing_advice", "miracle_cure", "drug_sourcing", "crisis", "harassment",
                     "spam", "privacy", "other")
#: Moderators at most, the admin included: a report is sealed to each of them.
MAX_MODERATORS = 10
MAX_REASON = 200
#: A report sealed to one moderator: the sealed box (48), the reporter's signature (64) and
#: the padded report. Its text is a message's, whose padded plaintext fits 4 KiB, so the
#: report (a few bytes more) fits the next bucket, 8 KiB.
MAX_SEALED_REPORT = 48 + 64 + MAX_CIPHERTEXT
#: How far an event's own time may stray from the host's clock (see check_timely).
MAX_SKEW = 300

_NAME = r"[^\x00-\x1f\x7f]+"
#: An ICD-10 category: a letter and two characters (G40, E11, and ICD-10-CM's C4A, M1A...).
_CONDITION = r"[A-Z][0-9][0-9A-Z]"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NODE_ID = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[(?P<ipv6>[0-9a-f:.]+)\])(?::(?P<port>[1-9][0-9]{{0,4}}))?")


def node_id(value: Any, where: str) -> str:
    """Validate a node id: the lower-case authority of its public URL (``host[:port]``,
    ``[ipv6]:port``)."""
    match = _NODE_ID.fullmatch(value) if isinstance(value, str) and len(value) <= 261 else None
    ok = match is not None and (not match["port"] or int(match["port"]) <= 65535)
    if ok and match["ipv6"]:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            ok = False
    if not ok:
        raise BadRequest(f"{where} is not a node id (host or host:port, lower case)", code="bad_node_id")
    return value


def _boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{where} must be true or false")
    return value


def _member_key(value: Any, where: str) -> str:
    """A member key as it appears in JSON object keys: kept as its (canonical) base64url."""
    return b64e(b64(32)(value, where))


def _ciphertext(value: Any, where: str) -> bytes:
    data = b64(max_length=MAX_CIPHERTEXT)(value, where)
    # A sealed message is a padded bucket plus nonce and tag, nothing else. A client that
    # skipped padding would tell every node that stores or forwards it the exact length of
    # the message, so the host refuses any other length rather than trusting clients.
    # ``bucket_size(n - 1) == n`` holds exactly when n is a bucket size.
    padded = len(data) - MESSAGE_OVERHEAD
    if padded <= 0 or bucket_size(padded - 1) != padded:
        raise BadRequest(f"{where} is not a padded message", code="unpadded_message")
    return data


_TIME = integer(0, MAX_TIME)
_TEXT = text(MAX_TEXT)


def community_id(host: str, body: dict) -> str:
    """The id a create event's ``body`` certifies on ``host``: the first 16 bytes of
    SHA-256 over ``"rxfed-community-id|"`` and the canonical JSON of ``{"create": body
    without its community field, "host": host}``, in hex."""
    create = {k: v for k, v in body.items() if k != "community"}
    return sha256(b"rxfed-community-id|" + canonical({"create": create, "host": host}))[:16].hex()


@attrs.frozen
class CommunityAddress:
    """``<id>@<host>``: the 128-bit id its create event certifies and the host's node id."""

    id: str
    host: str

    @classmethod
    def parse(cls, value: Any, where: str = "community") -> CommunityAddress:
        ident, at, host = value.partition("@") if isinstance(value, str) else ("", "", "")
        if not at or not re.fullmatch(HEX_ID, ident):
            raise BadRequest(f"{where} must be <32 hex digits>@<host>", code="bad_address")
        try:
            return cls(ident, node_id(host, where))
        except BadRequest as exc:
            raise BadRequest(exc.message, code="bad_address") from None

    def __str__(self) -> str:
        return f"{self.id}@{self.host}"


# -- events --------------------------------------------------------------------------------
#
# Each class parses one event type. ``author`` is the key that must have signed it when the
# body names it; ``None`` means the community's admin signed it (approve, remove). ``when``
# is the event's own claim of time, if it makes one.


@attrs.frozen
class Create:
    """A community's first event. ``about`` commits to its name and condition (see
    :class:`About`), which stay off the event: nodes that copy it learn neither."""

    TYPE = CREATE
    FIELDS = {"about": b64(COMMITMENT_SIZE), "approval": _boolean, "admin": b64(32), "admin_box": b64(32),
              "node": node_id, "created": _TIME}

    community: CommunityAddress
    about: bytes
    approval: bool
    admin: bytes
    admin_box: bytes
    node: str
    created: int
    signed: dict = attrs.field(eq=False, repr=False)

    author = property(lambda self: self.admin)
    when = property(lambda self: self.created)


@attrs.frozen
class Join:
    TYPE = JOIN
    FIELDS = {"member": b64(32), "box_key": b64(32), "node": node_id, "time": _TIME}

    community: CommunityAddress
    member: bytes
    box_key: bytes
    node: str
    time: int
    signed: dict = attrs.field(eq=False, repr=False)

    author = property(lambda self: self.member)
    when = property(lambda self: self.time)


@attrs.frozen
class _MemberEvent:
    """An event about one member, the ``member`` it names (its subject)."""

    FIELDS = {"member": b64(32), "time": _TIME}

    community: CommunityAddress
    member: bytes
    time: int
    signed: dict = attrs.field(eq=False, repr=False)

    when = property(lambda self: self.time)


@attrs.frozen
class Approve(_MemberEvent):
    TYPE = APPROVE
    author = None


@attrs.frozen
class Leave(_MemberEvent):
    TYPE = LEAVE
    author = property(lambda self: self.member)


@attrs.frozen
class Remove(_MemberEvent):
    TYPE = REMOVE
    author = None


def _rekey_bytes(community: str, member: bytes, new_member: bytes, box_key: bytes) -> bytes:
    return b"rxfed-community-rekey|" + canonical({"community": community, "member": b64e(member),
                                                   "new_member": b64e(new_member), "box_key": b64e(box_key)})


@attrs.frozen
class Rekey:
    """A member replaces its member and box keys (after a device of the patient was
    revoked: the revoked device held the old ones). Signed by the old key; ``proof`` is the
    new key's signature, so nobody can hand a seat to a key they do not hold. The old key
    is then gone, the new one holds the same seat (the admin's too), and membership changes
    so every sender hands out a fresh sender key, which the old key never receives."""

    TYPE = REKEY
    FIELDS = {"member": b64(32), "new_member": b64(32), "box_key": b64(32), "node": node_id, "proof": b64(64),
              "time": _TIME}

    community: CommunityAddress
    member: bytes
    new_member: bytes
    box_key: bytes
    node: str
    proof: bytes
    time: int
    signed: dict = attrs.field(eq=False, repr=False)

    author = property(lambda self: self.member)
    when = property(lambda self: self.time)


@attrs.frozen
class SenderKeyDistribution:
    """A sender's new key for ``epoch``, sealed to each member listed in ``keys`` (member key
    base64url to sealed key), made for membership ``version``."""

    TYPE = SENDER_KEY
    FIELDS = {"sender": b64(32), "epoch": integer(1, MAX_EPOCH), "version": integer(1, MAX_VERSION),
              "keys": mapping(_member_key, b64(SEALED_SENDER_KEY_SIZE), MAX_MEMBERS)}

    community: CommunityAddress
    sender: bytes
    epoch: int
    version: int
    keys: dict[str, bytes] = attrs.field(repr=False)
    signed: dict = attrs.field(eq=False, repr=False)

    author = property(lambda self: self.sender)
    when = None


@attrs.frozen
class MessagePosted:
    TYPE = MESSAGE
    FIELDS = {"sender": b64(32), "epoch": integer(1, MAX_EPOCH), "ciphertext": _ciphertext,
              "commitment": b64(COMMITMENT_SIZE), "sent": _TIME}

    community: CommunityAddress
    sender: bytes
    epoch: int
    ciphertext: bytes = attrs.field(repr=False)
    commitment: bytes
    sent: int
    signed: dict = attrs.field(eq=False, repr=False)

    author = property(lambda self: self.sender)
    when = property(lambda self: self.sent)


@attrs.frozen
class Action:
    """A moderator's signed decision (spec/moderation.md): hide message ``seq`` of
    ``member``, warn ``member`` (about message ``seq``, or 0), remove or ban ``member``, or
    (the admin) appoint or dismiss ``member`` as a moderator. ``reason`` is shown to members
    (a report category, or a few words)."""

    TYPE = ACTION
    FIELDS = {"moderator": b64(32), "action": text(16, "|".join(ACTIONS)), "member": b64(32),
              "seq": integer(0, MAX_SEQ), "reason": text(MAX_REASON, _NAME), "time": _TIME}

    community: CommunityAddress
    moderator: bytes
    action: str
    member: bytes
    seq: int
    reason: str
    time: int
    signed: dict = attrs.field(eq=False, repr=False)

    author = property(lambda self: self.moderator)
    when = property(lambda self: self.time)


@attrs.frozen
class Report:
    """A member's report of a message, sealed to each current moderator (``reports``:
    moderator key to sealed report) and signed by a fresh ``reporter`` key that names nobody:
    the community learns that a report was made, the moderators what it says, and nobody
    who made it (spec/moderation.md, "Reports")."""

    TYPE = REPORT
    FIELDS = {"reporter": b64(32), "reports": mapping(_member_key, b64(max_length=MAX_SEALED_REPORT), MAX_MODERATORS),
              "time": _TIME}

    community: CommunityAddress
    reporter: bytes
    reports: dict[str, bytes] = attrs.field(repr=False)
    time: int
    signed: dict = attrs.field(eq=False, repr=False)

    author = property(lambda self: self.reporter)
    when = property(lambda self: self.time)


Event = Create | Join | Approve | Leave | Remove | Rekey | SenderKeyDistribution | MessagePosted | Action | Report
_EVENTS: dict[str, type] = {cls.TYPE: cls for cls in Event.__args__}


def parse_event(obj: Any, where: str = "event") -> Event:
    """The typed event of a statement, shape checked; its signature is *not* checked here,
    since the admin's key comes from the state (:meth:`CommunityState.apply` checks it)."""
    body = obj.get("body") if isinstance(obj, dict) else None
    kind = body.get("type") if isinstance(body, dict) else None
    cls = _EVENTS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise BadRequest(f"{where} is not a community event", code="bad_event")
    body = open_statement(obj, where, cls.TYPE, None)
    f = fields(body, where, {"type": const(cls.TYPE), "community": CommunityAddress.parse, **cls.FIELDS},
               getattr(cls, "OPTIONAL", {}))
    del f["type"]
    if cls is Create and community_id(f["community"].host, body) != f["community"].id:
        raise BadRequest(f"{where}: the community id is not the one this create event certifies",
                         code="bad_community_id")
    return cls(**f, signed=obj)


def check_timely(event: dict | Event, now: int, *, skew: int = MAX_SKEW) -> None:
    """For the host on submission: refuse an event whose own time is more than ``skew``
    seconds from ``now``, so the ``sent`` a franking report shows is close to the truth.
    (Not part of :meth:`CommunityState.apply`, which replays old events too.)"""
    when = (event if not isinstance(event, dict) else parse_event(event)).when
    if when is not None and abs(when - now) > skew:
        raise BadRequest(f"event time is more than {skew} s from the host's clock", code="clock_skew")


# -- state ---------------------------------------------------------------------------------


class MemberStatus(enum.StrEnum):
    PENDING = "pending"
    JOINED = "joined"
    LEFT = "left"
    REMOVED = "removed"


PENDING, JOINED, LEFT, REMOVED = MemberStatus

#: Every membership transition: event type -> (statuses it may start from, status it leads
#: to, code and message when it may not). ``None`` is "never seen": a member key that left
#: or was removed cannot join again (its client makes a new key), so a replayed join fails.
#: A join leads to ``JOINED`` straight away in an open community.
_MEMBERSHIP: dict[str, tuple[tuple[MemberStatus | None, ...], MemberStatus, str, str]] = {
    JOIN: ((None,), PENDING, "already_member", "this member key has already joined; join under a new key"),
    APPROVE: ((PENDING,), JOINED, "not_pending", "only a pending member can be approved"),
    LEAVE: ((JOINED, PENDING), LEFT, "not_a_member", "not a current member"),
    REMOVE: ((JOINED, PENDING), REMOVED, "not_a_member", "not a current member"),
}


@attrs.frozen
class Member:
    member: bytes
    box_key: bytes
    node: str
    status: MemberStatus

    @property
    def member_b64(self) -> str:
        return b64e(self.member)


@attrs.frozen
class CommunityMeta:
    """What the create event says: the commitment to name and condition, whether joins need
    approval, the admin's key, the host; and the create event itself."""

    about: bytes
    approval: bool
    admin: bytes
    host: str
    create: dict = attrs.field(eq=False, repr=False)


@attrs.frozen
class CommunityState:
    """The community after events ``1..seq``: a value, changed only by :meth:`apply`.

    ``members`` maps member key (base64url) to :class:`Member`, in join order; ``senders``
    maps member key to the (epoch, membership version) of its latest sender key; ``version``
    counts membership changes.
    """

    address: CommunityAddress
    seq: int = 0
    version: int = 0
    meta: CommunityMeta | None = None
    members: dict[str, Member] = attrs.field(factory=dict, repr=False)
    senders: dict[str, tuple[int, int]] = attrs.field(factory=dict, repr=False)
    # Per sender: the latest ``sent`` and the commitments posted at that second, so a
    # replayed message is refused while the state stays small (``sent`` never goes back).
    _recent: dict[str, tuple[int, frozenset[bytes]]] = attrs.field(factory=dict, repr=False, alias="recent")
    #: Member keys the admin appointed moderators (the admin always is one).
    moderators: frozenset[str] = attrs.field(default=frozenset(), repr=False)
    #: Member keys a moderator banned.
    banned: frozenset[str] = attrs.field(default=frozenset(), repr=False)
    #: Per moderator, as ``_recent`` for messages: the latest action's time and the hashes of
    #: the actions at that second, so a replayed action is refused.
    _acted: dict[str, tuple[int, frozenset[bytes]]] = attrs.field(factory=dict, repr=False, alias="acted")
    #: Reporter keys already used: each report is filed under a fresh one.
    reporters: frozenset[str] = attrs.field(default=frozenset(), repr=False)

    @classmethod
    def empty(cls, address: CommunityAddress) -> CommunityState:
        return cls(address)

    @classmethod
    def from_events(cls, events: list[tuple[int, dict]], *, checked: int = 0) -> CommunityState:
        """Fold ``(seq, event)`` pairs from the first (the create event) on. ``checked``:
        events up to this number are exactly ones whose signatures the caller verified
        before (a device's pinned history), and are not verified again."""
        if not events:
            raise BadRequest("a community starts with its create event")
        state = cls.empty(parse_event(events[0][1]).community)
        for seq, event in events:
            state = state.step(event, seq=seq, checked=seq <= checked)[0]
        return state

    def apply(self, event: dict, *, seq: int) -> CommunityState:
        """The state after ``event`` as number ``seq``, or BadRequest (malformed), Forbidden
        (bad signature, not allowed) or Conflict (not a valid next event)."""
        return self.step(event, seq=seq)[0]

    def step(self, event: dict, *, seq: int, parsed: Event | None = None,
             checked: bool = False) -> tuple[CommunityState, Event]:
        """:meth:`apply`, also returning the parsed event. A caller that has parsed
        ``event`` already may pass the result as ``parsed`` (its signature is still checked).
        ``checked``: the caller verified this very statement's signature before (its hash is
        in a history it pinned), so it is not verified again; every rule still applies."""
        if seq != self.seq + 1:
            raise Conflict(f"expected event {self.seq + 1}, got {seq}", code="out_of_order")
        if parsed is None or parsed.signed is not event:
            parsed = parse_event(event)
        if parsed.community != self.address:
            raise BadRequest("event is for another community", code="wrong_community")
        if (self.meta is None) != isinstance(parsed, Create):
            raise Conflict("a community starts with exactly one create event",
                           code="not_created" if self.meta is None else "already_created")
        signer = parsed.author if parsed.author is not None else self.meta.admin
        if not checked:
            open_statement(event, "event", parsed.TYPE, signer)
        return attrs.evolve(_FOLD[type(parsed)](self, parsed), seq=seq), parsed

    # -- queries ---------------------------------------------------------------------------

    def joined(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members.values() if m.status is JOINED)

    def member_nodes(self) -> set[str]:
        """Home nodes of joined and pending members: where the host fans events out."""
        return {m.node for m in self.members.values() if m.status in (JOINED, PENDING)}

    def status(self, member: bytes) -> MemberStatus | None:
        found = self.members.get(b64e(member))
        return found.status if found else None

    def moderator_keys(self) -> tuple[Member, ...]:
        """The moderators who can act now: the admin and the appointed moderators still
        joined, in join order (a report is sealed to exactly these)."""
        admin = b64e(self.meta.admin) if self.meta else None
        return tuple(m for m in self.joined() if m.member_b64 == admin or m.member_b64 in self.moderators)

    def is_moderator(self, member: bytes) -> bool:
        return any(m.member == member for m in self.moderator_keys())

    def needs_sender_key(self, member: bytes) -> bool:
        """Whether ``member`` must distribute a new sender key before it may post."""
        record = self.senders.get(b64e(member))
        return record is None or record[1] != self.version

    def next_epoch(self, member: bytes) -> int:
        return self.senders.get(b64e(member), (0, 0))[0] + 1

    def last_sent(self, member: bytes) -> int:
        """The ``sent`` of ``member``'s latest message; a new one may not be earlier."""
        return self._recent.get(b64e(member), (0, frozenset()))[0]


def _create(state: CommunityState, event: Create) -> CommunityState:
    meta = CommunityMeta(event.about, event.approval, event.admin, state.address.host, event.signed)
    admin = Member(event.admin, event.admin_box, event.node, JOINED)
    return attrs.evolve(state, meta=meta, members={admin.member_b64: admin}, version=state.version + 1)


def _membership(state: CommunityState, event: Join | Approve | Leave | Remove) -> CommunityState:
    key = b64e(event.member)
    current = state.members.get(key)
    sources, target, code, message = _MEMBERSHIP[event.TYPE]
    if (current.status if current else None) not in sources:
        raise Conflict(message, code=code)
    if event.author is None:  # approve, remove: the admin acts, and must still be a member
        if state.status(state.meta.admin) is not JOINED:
            raise Forbidden("the admin has left this community", code="not_admin")
        if event.member == state.meta.admin:
            raise Conflict("the admin leaves rather than removing themselves", code="admin_cannot_remove_self")
    if isinstance(event, Join):
        if sum(m.status in (JOINED, PENDING) for m in state.members.values()) >= MAX_MEMBERS:
            raise Conflict(f"a community has at most {MAX_MEMBERS} members", code="community_full")
        updated = Member(event.member, event.box_key, event.node, target if state.meta.approval else JOINED)
    else:
        updated = attrs.evolve(current, status=target)
    return attrs.evolve(state, members={**state.members, key: updated}, version=state.version + 1)


def _rekey(state: CommunityState, event: Rekey) -> CommunityState:
    old = state.members.get(b64e(event.member))
    if old is None or old.status not in (JOINED, PENDING):
        raise Conflict("not a current member", code="not_a_member")
    if b64e(event.new_member) in state.members:
        raise Conflict("this member key has already joined; rekey to a new key", code="already_member")
    if event.node != old.node:
        raise Conflict("a rekey keeps the member's home node", code="rekey_moves_node")
    try:
        verify_signature(event.new_member, _rekey_bytes(str(event.community), event.member, event.new_member,
                                                        event.box_key), event.proof)
    except BadSignature:
        raise Forbidden("the new member key's proof does not verify", code="bad_rekey_proof") from None
    new = Member(event.new_member, event.box_key, event.node, old.status)
    members = {**state.members, b64e(event.member): attrs.evolve(old, status=LEFT), new.member_b64: new}
    meta = state.meta
    if event.member == meta.admin:
        meta = attrs.evolve(meta, admin=event.new_member)
    moderators = state.moderators
    if b64e(event.member) in moderators:
        moderators = (moderators - {b64e(event.member)}) | {new.member_b64}
    return attrs.evolve(state, members=members, meta=meta, moderators=moderators, version=state.version + 1)


def _joined_sender(state: CommunityState, sender: bytes) -> str:
    key = b64e(sender)
    if state.status(sender) is not JOINED:
        raise Forbidden("only a joined member may do this", code="not_a_member")
    return key


def _sender_key(state: CommunityState, event: SenderKeyDistribution) -> CommunityState:
    key = _joined_sender(state, event.sender)
    if event.epoch < state.next_epoch(event.sender):
        raise Conflict("a sender key's epoch must be above the sender's last", code="stale_epoch")
    if event.version != state.version:
        raise Conflict("membership changed since this sender key was made", code="membership_changed")
    if set(event.keys) != {m.member_b64 for m in state.joined()}:
        raise Conflict("a sender key goes to exactly the joined members", code="wrong_recipients")
    return attrs.evolve(state, senders={**state.senders, key: (event.epoch, event.version)})


def _message(state: CommunityState, event: MessagePosted) -> CommunityState:
    key = _joined_sender(state, event.sender)
    if state.senders.get(key) != (event.epoch, state.version):
        raise Conflict("membership changed: distribute a new sender key first", code="rotate_sender_key")
    last, seen = state._recent.get(key, (0, frozenset()))
    if event.sent < last:
        raise Conflict("a message may not be older than its sender's last", code="stale_message")
    if event.sent == last and event.commitment in seen:
        raise Conflict("this message was already posted", code="duplicate_message")
    seen = seen | {event.commitment} if event.sent == last else frozenset({event.commitment})
    return attrs.evolve(state, recent={**state._recent, key: (event.sent, seen)})


def _action(state: CommunityState, event: Action) -> CommunityState:
    key = _joined_sender(state, event.moderator)
    is_admin = event.moderator == state.meta.admin
    if not state.is_moderator(event.moderator):
        raise Forbidden("only a moderator of this community may act", code="not_moderator")
    last, seen = state._acted.get(key, (0, frozenset()))
    digest = statement_hash(event.signed)
    if event.time < last:
        raise Conflict("an action may not be older than its moderator's last", code="stale_action")
    if event.time == last and digest in seen:
        raise Conflict("this action was already taken", code="duplicate_action")
    acted = {**state._acted, key: (event.time, seen | {digest} if event.time == last else frozenset({digest}))}
    target = b64e(event.member)
    current = state.members.get(target)
    if current is None:
        raise Conflict("no member of this community has that key", code="not_a_member")
    if event.action in ("hide", "warn"):
        if not (0 < event.seq <= state.seq) and not (event.action == "warn" and event.seq == 0):
            raise Conflict("the action names no earlier event", code="bad_action")
        return attrs.evolve(state, acted=acted)
    if event.seq != 0:
        raise Conflict(f"a {event.action} names no message (seq 0)", code="bad_action")
    if event.action in ("appoint", "dismiss") and not is_admin:
        raise Forbidden("only the admin appoints or dismisses moderators", code="not_admin")
    if event.member == state.meta.admin:
        raise Conflict("no action removes, bans, appoints or dismisses the admin", code="cannot_act_on_admin")
    if event.action == "appoint":
        if current.status is not JOINED:
            raise Conflict("only a joined member can be a moderator", code="not_a_member")
        if target in state.moderators:
            raise Conflict("already a moderator", code="already_moderator")
        if len(state.moderator_keys()) >= MAX_MODERATORS:
            raise Conflict(f"a community has at most {MAX_MODERATORS} moderators", code="too_many_moderators")
        return attrs.evolve(state, acted=acted, moderators=state.moderators | {target})
    if event.action == "dismiss":
        if target not in state.moderators:
            raise Conflict("not a moderator", code="not_moderator")
        return attrs.evolve(state, acted=acted, moderators=state.moderators - {target})
    # remove, ban
    if target in state.moderators and not is_admin:
        raise Forbidden("only the admin removes or bans a moderator", code="not_admin")
    banned = state.banned | {target} if event.action == "ban" else state.banned
    if event.action == "ban" and target in state.banned:
        raise Conflict("already banned", code="already_banned")
    if current.status not in (JOINED, PENDING):
        if event.action == "remove":
            raise Conflict("not a current member", code="not_a_member")
        return attrs.evolve(state, acted=acted, banned=banned)
    return attrs.evolve(state, acted=acted, banned=banned, moderators=state.moderators - {target},
                        members={**state.members, target: attrs.evolve(current, status=REMOVED)},
                        version=state.version + 1)


def _report(state: CommunityState, event: Report) -> CommunityState:
    key = b64e(event.reporter)
    if key in state.members:
        raise Conflict("a report is filed under a fresh key, never a member key", code="reporter_is_member")
    if key in state.reporters:
        raise Conflict("this reporter key has filed a report already", code="duplicate_report")
    if set(event.reports) != {m.member_b64 for m in state.moderator_keys()}:
        raise Conflict("a report is sealed to exactly the current moderators", code="wrong_recipients")
    return attrs.evolve(state, reporters=state.reporters | {key})


_FOLD = {Create: _create, Join: _membership, Approve: _membership, Leave: _membership, Remove: _membership,
         Rekey: _rekey,
         SenderKeyDistribution: _sender_key, MessagePosted: _message, Action: _action, Report: _report}


# -- builders, for clients -----------------------------------------------------------------


def _built(key: SigningKeyPair, body: dict) -> dict:
    # Parse what we build, so a client learns of a bad field before the host does.
    statement = sign_statement(key, body)
    parse_event(statement)
    return statement


def make_create(admin: SigningKeyPair, admin_box: bytes, host: str, *, about: About, approval: bool, node: str,
                now: int) -> dict:
    """The create event of a new community on ``host``; its address is the one it certifies
    (``parse_event(event).community``)."""
    body = {"type": CREATE, "about": b64e(about.commitment()), "approval": approval, "admin": b64e(admin.public),
            "admin_box": b64e(admin_box), "node": node, "created": now}
    address = CommunityAddress(community_id(node_id(host, "host"), body), host)
    return _built(admin, {**body, "community": str(address)})


def make_join(member: SigningKeyPair, box_public: bytes, address: CommunityAddress, node: str, now: int) -> dict:
    return _built(member, {"type": JOIN, "community": str(address), "member": b64e(member.public),
                           "box_key": b64e(box_public), "node": node, "time": now})


def make_approve(admin: SigningKeyPair, address: CommunityAddress, member: bytes, now: int) -> dict:
    return _built(admin, {"type": APPROVE, "community": str(address), "member": b64e(member), "time": now})


def make_leave(member: SigningKeyPair, address: CommunityAddress, now: int) -> dict:
    return _built(member, {"type": LEAVE, "community": str(address), "member": b64e(member.public), "time": now})


def make_rekey(member: SigningKeyPair, new_member: SigningKeyPair, box_public: bytes, address: CommunityAddress,
               node: str, now: int) -> dict:
    proof = new_member.sign(_rekey_bytes(str(address), member.public, new_member.public, box_public))
    return _built(member, {"type": REKEY, "community": str(address), "member": b64e(member.public),
                           "new_member": b64e(new_member.public), "box_key": b64e(box_public), "node": node,
                           "proof": b64e(proof), "time": now})


def make_remove(admin: SigningKeyPair, address: CommunityAddress, member: bytes, now: int) -> dict:
    return _built(admin, {"type": REMOVE, "community": str(address), "member": b64e(member), "time": now})


def _sender_key_context(address: CommunityAddress, recipient: bytes, epoch: int) -> bytes:
    return canonical({"community": str(address), "recipient": b64e(recipient), "epoch": epoch})


def _message_ad(address: CommunityAddress, sender: bytes, epoch: int) -> bytes:
    return canonical({"community": str(address), "sender": b64e(sender), "epoch": epoch})


def _franked(address: CommunityAddress, sender: bytes, text: str, sent: int) -> bytes:
    """What a message commitment commits to."""
    return canonical({"community": str(address), "sender": b64e(sender), "text": text, "sent": sent})


def make_sender_key(sender: SigningKeyPair, state: CommunityState, sender_key: SenderKey,
                    address: CommunityAddress | None = None, *, ephemerals: list[BoxKeyPair] | None = None) -> dict:
    """``sender_key`` sealed to every joined member (the sender too, so its other devices and
    its own history read back), for the current membership version. Make the key with
    ``SenderKey.generate(state.next_epoch(sender.public))``. (``ephemerals``, one per joined
    member in join order: for test vectors only.)"""
    if address is not None and address != state.address:
        raise BadRequest("state is for another community", code="wrong_community")
    address = state.address
    keys = {}
    for i, m in enumerate(state.joined()):
        context = _sender_key_context(address, m.member, sender_key.epoch)
        ephemeral = ephemerals[i] if ephemerals is not None else None
        keys[m.member_b64] = b64e(seal_sender_key(sender, m.box_key, context, sender_key, ephemeral=ephemeral))
    return _built(sender, {"type": SENDER_KEY, "community": str(address), "sender": b64e(sender.public),
                           "epoch": sender_key.epoch, "version": state.version, "keys": keys})


def make_message(sender: SigningKeyPair, sender_key: SenderKey, address: CommunityAddress, text: str,
                 now: int, *, franking_key: bytes | None = None, nonce: bytes | None = None,
                 badge: tuple[SigningKeyPair, dict] | None = None) -> tuple[dict, bytes]:
    """A message statement and its franking key. ``now`` must not be before the sender's
    last message (``state.last_sent``). ``badge``: (the clinician's key, the credential it
    shows), bound to this post inside the ciphertext (rxfed.protocol.badges). (``franking_key``,
    ``nonce``: for test vectors only; by default fresh random ones.)"""
    _TEXT(text, "text")
    franking_key = franking_key or new_franking_key()
    inner = {"text": text, "franking_key": b64e(franking_key), "sent": now}
    if badge is not None:
        # here, not at import nor for every post: the credential code is only loaded for a badged post
        from rxfed.protocol.badges import make_badge

        inner["badge"] = make_badge(badge[0], badge[1], community=str(address), sender=sender.public, text=text,
                                    sent=now)
    plaintext = canonical(inner)
    if bucket_size(len(plaintext)) + MESSAGE_OVERHEAD > MAX_CIPHERTEXT:
        raise BadRequest("message is too long once encoded", code="message_too_long")
    sealed = seal_message(sender_key, _message_ad(address, sender.public, sender_key.epoch), plaintext, nonce=nonce)
    committed = commitment(franking_key, _franked(address, sender.public, text, now))
    statement = _built(sender, {
        "type": MESSAGE, "community": str(address), "sender": b64e(sender.public), "epoch": sender_key.epoch,
        "ciphertext": b64e(sealed), "commitment": b64e(committed), "sent": now})
    return statement, franking_key


def make_action(moderator: SigningKeyPair, address: CommunityAddress, action: str, member: bytes, *, seq: int = 0,
                reason: str, now: int) -> dict:
    """A moderator's signed action (see :class:`Action`)."""
    return _built(moderator, {"type": ACTION, "community": str(address), "moderator": b64e(moderator.public),
                              "action": action, "member": b64e(member), "seq": seq, "reason": reason, "time": now})


def _report_context(address: CommunityAddress, moderator: bytes, reporter: bytes) -> bytes:
    return b"rxfed-report|" + canonical({"community": str(address), "moderator": b64e(moderator),
                                         "reporter": b64e(reporter)})


def make_report(state: CommunityState, message: Message, category: str, now: int, *,
                reporter: SigningKeyPair | None = None, text: str | None = None,
                franking_key: bytes | None = None, ephemerals: list[BoxKeyPair] | None = None) -> dict:
    """A report of ``message`` (one this member read) as ``category``, sealed to each current
    moderator under a fresh reporter key: ``seal_signed(reporter, moderator's box key,
    "rxfed-report|" || canonical({community, moderator, reporter}), pad(canonical({category,
    franking_key, seq, text})))``. Nothing in it names the reporter. (``reporter``, ``text``,
    ``franking_key``: for tests and vectors; a forged text or key is what a moderator's
    check refuses. ``ephemerals``, one per moderator in order: for test vectors only.)"""
    if category not in REPORT_CATEGORIES:
        raise BadRequest(f"category must be one of {', '.join(REPORT_CATEGORIES)}", code="bad_category")
    reporter = reporter or SigningKeyPair.generate()
    payload = pad(canonical({"category": category, "franking_key": b64e(franking_key or message.franking_key),
                             "seq": message.seq, "text": message.text if text is None else text}))
    reports = {m.member_b64: b64e(seal_signed(reporter, m.box_key, _report_context(state.address, m.member,
                                                                                  reporter.public), payload,
                                              ephemeral=ephemerals[i] if ephemerals else None))
               for i, m in enumerate(state.moderator_keys())}
    if not reports:
        raise Conflict("this community has no moderator to report to", code="no_moderator")
    return _built(reporter, {"type": REPORT, "community": str(state.address), "reporter": b64e(reporter.public),
                             "reports": reports, "time": now})


def membership_change(event: Event) -> tuple[tuple[bytes, bool], ...]:
    """For a node's copy of a community: the member keys an event is about and whether each
    may read the copy from now on (the creator and joined or pending members may; one that
    left, was removed or rekeyed may not). A member key never joins twice, so these facts
    need no order: a key may read once its create, join or rekey arrived, unless its leave,
    removal or rekey did too."""
    if isinstance(event, Create):
        return ((event.admin, True),)
    if isinstance(event, Join):
        return ((event.member, True),)
    if isinstance(event, Rekey):
        return ((event.member, False), (event.new_member, True))
    if isinstance(event, Leave | Remove):
        return ((event.member, False),)
    if isinstance(event, Action) and event.action in ("remove", "ban"):
        return ((event.member, False),)
    return ()


def make_read_proof(member: SigningKeyPair, address: CommunityAddress, node: str, now: int) -> dict:
    """What a member sends its home node with a request for a community's events: its member
    key's signature over the address, that node and the time."""
    return sign_statement(member, {"type": READ, "community": str(address), "member": b64e(member.public),
                                   "node": node, "time": now})


def open_read_proof(obj: Any, address: CommunityAddress, *, node: str, now: int, skew: int = MAX_SKEW) -> bytes:
    """The member key that signed a read proof for ``address`` to ``node`` within ``skew``
    seconds of ``now``; BadRequest, Forbidden or Unauthorized otherwise."""
    body = open_statement(obj, "proof", READ, None)
    f = fields(body, "proof", {"type": const(READ), "community": CommunityAddress.parse, "member": b64(32),
                               "node": node_id, "time": _TIME})
    open_statement(obj, "proof", READ, f["member"])
    if f["community"] != address:
        raise BadRequest("the proof is for another community", code="wrong_community")
    if f["node"] != node:
        raise Forbidden("the proof is for another node", code="wrong_node")
    if abs(f["time"] - now) > skew:
        raise Unauthorized("the proof's time is outside the accepted window; check the clock", code="stale_request")
    return f["member"]


# -- what a client has seen ------------------------------------------------------------------


@attrs.frozen
class HistoryPin:
    """How much of a community's history a device has folded (``seq`` events) and the head
    of the hash chain over their statement hashes (:func:`rxfed.crypto.groups.history_link`)."""

    seq: int = 0
    head: bytes = HISTORY_START

    def covers(self, event_hashes: list[bytes]) -> bool:
        """Whether events ``1..seq`` with these statement hashes are exactly the ones this
        pin folded (their chain ends at the pinned head)."""
        if len(event_hashes) != self.seq:
            return False
        head = HISTORY_START
        for digest in event_hashes:
            head = history_link(head, digest)
        return head == self.head

    def extend(self, event_hashes: list[bytes]) -> HistoryPin:
        """The pin after folding events ``1..n`` with these statement hashes, if they extend
        what this pin saw; Forbidden (``rolled_back``, ``forked_history``) otherwise."""
        if len(event_hashes) < self.seq:
            raise Forbidden(f"the node now serves {len(event_hashes)} events of a community this device has "
                            f"seen {self.seq} of", code="rolled_back")
        head = HISTORY_START
        for i, digest in enumerate(event_hashes, 1):
            head = history_link(head, digest)
            if i == self.seq and head != self.head:
                raise Forbidden(f"the community's history differs from what this device saw up to event {i}",
                                code="forked_history")
        return HistoryPin(len(event_hashes), head)


# -- host stamps ---------------------------------------------------------------------------


@attrs.frozen
class HostStamp:
    """The host's countersignature on event ``seq``: which event (its statement hash), who
    signed it, the message commitment if it is a message, and the host's time."""

    community: CommunityAddress
    seq: int
    event: bytes
    sender: bytes
    commitment: bytes | None
    time: int
    signed: dict = attrs.field(eq=False, repr=False)

    TYPE = HOST_STAMP

    @classmethod
    def from_json(cls, obj: Any, where: str, host_public_keys: list[bytes],
                  valid_at: Callable[[bytes, int], bool] | None = None) -> HostStamp:
        """Parse a stamp one of ``host_public_keys`` (the host's current and earlier keys)
        verifies; Forbidden otherwise, also when the list is empty. With ``valid_at(key,
        time)``, only a key valid at the stamp's own time counts (a retired key stamps
        nothing new)."""
        body = open_statement(obj, where, cls.TYPE, None)
        f = fields(body, where, {"type": const(cls.TYPE), "community": CommunityAddress.parse,
                                 "seq": integer(1, MAX_SEQ), "event": b64(32), "sender": b64(32), "time": _TIME},
                   {"commitment": b64(COMMITMENT_SIZE)})
        keys = [k for k in host_public_keys if valid_at is None or valid_at(k, f["time"])]
        if not any(_verifies(obj, where, key) for key in keys):
            raise Forbidden(f"{where}: no host key valid at its time verifies it", code="bad_stamp")
        return cls(f["community"], f["seq"], f["event"], f["sender"], f["commitment"], f["time"], obj)


def _verifies(obj: dict, where: str, key: bytes) -> bool:
    try:
        open_statement(obj, where, HOST_STAMP, key)
    except Forbidden:
        return False
    return True


def stamp(host_key: SigningKeyPair, address: CommunityAddress, seq: int, event: dict, now: int, *,
          signer: bytes | None = None) -> dict:
    """The host stamp for ``event`` accepted as number ``seq``. ``signer`` is needed only
    for events the admin signs (approve, remove: pass ``state.meta.admin``); other events
    name their signer. The event's signature is checked against it."""
    parsed = parse_event(event)
    if parsed.community != address:
        raise BadRequest("event is for another community", code="wrong_community")
    if parsed.author is not None and signer not in (None, parsed.author):
        raise BadRequest("this event names another signer")
    signer = parsed.author if parsed.author is not None else signer
    if signer is None:
        raise BadRequest("an admin event needs the admin key to stamp it")
    open_statement(event, "event", parsed.TYPE, signer)
    return stamp_checked(host_key, seq, parsed, signer, now)


def stamp_checked(host_key: SigningKeyPair, seq: int, parsed: Event, signer: bytes, now: int, *,
                  digest: bytes | None = None) -> dict:
    """The host stamp for an event :meth:`CommunityState.step` has just accepted (so its
    signature by ``signer`` is already checked). ``digest``: its statement hash, if known."""
    franked = parsed.commitment if isinstance(parsed, MessagePosted) else None
    return sign_statement(host_key, {
        "type": HOST_STAMP, "community": str(parsed.community), "seq": seq,
        "event": b64e(digest or statement_hash(parsed.signed)), "sender": b64e(signer),
        "commitment": b64e(franked) if franked else None, "time": now})


def verify_stamp(host_public_keys: list[bytes], stamped: dict, event: dict) -> HostStamp:
    """The stamp, if one of the host's keys signed it and it is for exactly ``event``;
    Forbidden otherwise."""
    return check_stamped(host_public_keys, stamped, event)[0]


def check_stamped(host_public_keys: list[bytes], stamped: dict, event: dict,
                  valid_at: Callable[[bytes, int], bool] | None = None) -> tuple[HostStamp, Event]:
    """:func:`verify_stamp`, also returning the parsed event (its signature is not checked
    here: the host checked it, and the stamp says so)."""
    parsed_stamp = HostStamp.from_json(stamped, "stamp", host_public_keys, valid_at)
    parsed = parse_event(event)
    franked = parsed.commitment if isinstance(parsed, MessagePosted) else None
    if (statement_hash(event) != parsed_stamp.event or parsed.community != parsed_stamp.community
            or parsed.author not in (None, parsed_stamp.sender) or franked != parsed_stamp.commitment):
        raise Forbidden("stamp is for another event", code="stamp_mismatch")
    return parsed_stamp, parsed


# -- reading, for clients ------------------------------------------------------------------


@attrs.frozen
class Message:
    """A decrypted message whose franking commitment opens with its text: it can always be
    reported (:func:`franking_report`)."""

    seq: int
    sender: bytes
    text: str
    sent: int
    epoch: int
    franking_key: bytes = attrs.field(repr=False)
    commitment: bytes
    #: The clinician badge the sender attached (``{credential, signature}``, not verified
    #: yet: rxfed.protocol.badges), or None.
    badge: dict | None = None


#: Why a message addressed to a member is not shown to it.
UNREADABLE = {
    "undecryptable": "it does not decrypt under its sender's key",
    "bad_franking": "its franking commitment does not match its text, so it could never be reported",
    "bad_sender_key": "the sender key it was sent under, sealed to you, does not open",
}


@attrs.frozen
class Unreadable:
    """A message this member holds a sender key for (or was sent one) that it cannot show:
    tampered with, or sent by a client that broke the protocol. ``reason`` is a key of
    :data:`UNREADABLE`."""

    seq: int
    sender: bytes
    reason: str

    @property
    def explanation(self) -> str:
        return UNREADABLE[self.reason]


@attrs.frozen
class Reading:
    """A community folded by one member: the state, the messages it can read (each one
    reportable), and the messages for it that it cannot show."""

    state: CommunityState
    messages: tuple[Message, ...]
    unreadable: tuple[Unreadable, ...]
    #: Every moderator action in the log, in order (members see what moderators did).
    actions: tuple[tuple[int, Action], ...] = ()
    #: Message seq -> the action that hid it (a hide naming a message of that member).
    hidden: dict[int, tuple[int, Action]] = attrs.field(factory=dict)
    #: The reports sealed to this member as a moderator, checked.
    reports: tuple[ReceivedReport, ...] = ()


def read_history(state_events: list[tuple[int, dict]], me: SigningKeyPair, my_box: BoxKeyPair, *,
                 checked: int = 0) -> Reading:
    """Fold ``(seq, event)`` pairs from the create event on and decrypt every message this
    member has a sender key for. Messages without one (posted before it joined or after it
    left) are skipped; ones that do not open, or whose commitment does not, are returned as
    :class:`Unreadable`. An invalid event raises, as the host should never have stamped it.
    ``checked`` as for :meth:`CommunityState.from_events`."""
    if not state_events:
        raise BadRequest("a community starts with its create event")
    state = CommunityState.from_events(state_events[:1], checked=checked)
    keys: dict[tuple[bytes, int], SenderKey] = {}
    broken: set[tuple[bytes, int]] = set()
    mine = b64e(me.public)
    messages: list[Message] = []
    unreadable: list[Unreadable] = []
    posted: dict[int, MessagePosted] = {}
    actions: list[tuple[int, Action]] = []
    hidden: dict[int, tuple[int, Action]] = {}
    reports: list[ReceivedReport] = []
    for seq, statement in state_events[1:]:
        state, event = state.step(statement, seq=seq, checked=seq <= checked)
        if isinstance(event, Action):
            actions.append((seq, event))
            target = posted.get(event.seq)
            if event.action == "hide" and target is not None and target.sender == event.member:
                hidden.setdefault(event.seq, (seq, event))
            continue
        if isinstance(event, Report):
            from rxfed.protocol.community.extra import open_report

            received = open_report(state.address, seq, event, me, my_box, posted)
            if received is not None:
                reports.append(received)
            continue
        if isinstance(event, MessagePosted):
            posted[seq] = event
        if isinstance(event, SenderKeyDistribution) and mine in event.keys:
            context = _sender_key_context(state.address, me.public, event.epoch)
            try:
                key = open_sender_key(event.sender, my_box, context, event.keys[mine])
                if key.epoch != event.epoch:
                    raise DecryptionFailed()
            except DecryptionFailed:
                broken.add((event.sender, event.epoch))
                continue
            keys[(event.sender, key.epoch)] = key
        elif isinstance(event, MessagePosted):
            if (event.sender, event.epoch) in keys:
                opened = _open(state.address, seq, event, keys[(event.sender, event.epoch)])
                (messages if isinstance(opened, Message) else unreadable).append(opened)
            elif (event.sender, event.epoch) in broken:
                unreadable.append(Unreadable(seq, event.sender, "bad_sender_key"))
    return Reading(state, tuple(messages), tuple(unreadable), tuple(actions), hidden, tuple(reports))


def read_messages(state_events: list[tuple[int, dict]], me: SigningKeyPair, my_box: BoxKeyPair) -> list[Message]:
    """The messages of :func:`read_history` (none for an empty history)."""
    return list(read_history(state_events, me, my_box).messages) if state_events else []


def own_sender_key(state: CommunityState, state_events: list[tuple[int, dict]], me: SigningKeyPair,
                   my_box: BoxKeyPair) -> SenderKey | None:
    """``me``'s current sender key, opened from its own latest distribution (a sender seals
    its key to itself as well), or None if it has none yet."""
    epoch = state.senders.get(b64e(me.public), (0, 0))[0]
    mine = b64e(me.public)
    for _seq, statement in reversed(state_events):
        body = statement.get("body") if isinstance(statement, dict) else None
        if isinstance(body, dict) and body.get("type") == SENDER_KEY and body.get("sender") == mine \
                and body.get("epoch") == epoch:
            event = parse_event(statement)
            try:
                return open_sender_key(me.public, my_box, _sender_key_context(state.address, me.public, epoch),
                                       event.keys[mine])
            except (DecryptionFailed, KeyError):
                return None
    return None


def _badge(value: Any, where: str) -> dict:
    # here, not at import: the credential code is only loaded for a post that has a badge
    from rxfed.protocol.badges import badge_shape

    return badge_shape(value, where)


def _open(address: CommunityAddress, seq: int, event: MessagePosted, key: SenderKey) -> Message | Unreadable:
    try:
        plaintext = open_message(key, _message_ad(address, event.sender, event.epoch), event.ciphertext)
        f = fields(loads(plaintext), "message", {"text": _TEXT, "franking_key": b64(FRANKING_KEY_SIZE),
                                                 "sent": _TIME}, {"badge": _badge})
    except (DecryptionFailed, BadRequest):
        return Unreadable(seq, event.sender, "undecryptable")
    if f["sent"] != event.sent or not check_commitment(
            f["franking_key"], _franked(address, event.sender, f["text"], event.sent), event.commitment):
        return Unreadable(seq, event.sender, "bad_franking")
    return Message(seq, event.sender, f["text"], event.sent, event.epoch, f["franking_key"], event.commitment,
                   f["badge"])


# -- a community's log as a store keeps it ----------------------------------------------


def check_append(stored: int, first: int) -> None:
    """At the host, events extend the log: the first new one follows the highest stored."""
    if first != stored + 1:
        raise Conflict("the community moved on; try again", code="stale_community")


def contiguous_end(seq: int, following: Iterable[int]) -> int:
    """The end of the run of consecutive sequence numbers after ``seq`` in ``following``
    (ascending). A mirror may receive events out of order; it reports and serves the log up
    to its first gap."""
    for n in following:
        if n != seq + 1:
            break
        seq = n
    return seq


def member_active(stored: bool | None, event_active: bool) -> bool:
    """A member's status on a mirror: leaving wins, whatever order the mirror receives the
    member's events in."""
    return event_active if stored is None else stored and event_active


# -- loaded when first used ------------------------------------------------------------------
# Metadata, the directory, reports and forwarding live in rxfed.protocol.community.extra, which
# a post never needs: building their attrs classes stays off every post's start-up time. They
# are still reachable here (pc.Listing, pc.open_franking_report, ...).
_EXTRA = frozenset({'About', 'ReceivedReport', 'open_report', 'ForwardedReport', 'make_forward', 'open_forward', 'Listing', 'FrankingReport', 'franking_report', 'open_franking_report', 'verify_franking_report'})


def __getattr__(name: str) -> Any:
    if name in _EXTRA:
        from rxfed.protocol.community import extra

        value = getattr(extra, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _EXTRA)
