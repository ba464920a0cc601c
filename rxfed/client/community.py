"""A patient's side of condition communities: per-community pseudonymous keys kept in the
encrypted vault, events built and signed on the device, messages read and decrypted here.

The client trusts no node for what a community is. The address certifies the create event
(hence the admin); the host's keys come from the host itself; every event must carry the
host's stamp under those keys; and each device remembers how far it has read (a
:class:`~rxfed.protocol.community.HistoryPin` in its profile directory), so a node that
serves another history, or less of it, is refused with :class:`IntegrityError`.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from rxfed.client.profile import write_private
from rxfed.client.records import Record
from rxfed.client.sdk import IntegrityError, NodeRefused, PatientCore
from rxfed.client.transport import host_url
from rxfed.crypto import BoxKeyPair, SigningKeyPair, b64d, b64e, hash_id, seal_to_node
from rxfed.crypto.groups import SenderKey
from rxfed.errors import BadRequest, Conflict, Forbidden, NotFound, RxfedError, Unavailable
from rxfed.protocol import community as pc
from rxfed.protocol.canonical import canonical
from rxfed.protocol.statements import statement_hash

if TYPE_CHECKING:  # pragma: no cover
    from rxfed.protocol.federation import NodeDocument

KIND = "community"
#: The per-device file of history pins, in the profile directory.
PINS = "communities.json"
#: Events per read request (the node's page size).
PAGE = 1000


@attrs.frozen
class Membership:
    """This patient's keys for one community and what it pinned when it joined (stored as a
    ``community`` record, so every device of the patient shares them): the statement hash
    of the create event, the admin's key, and the host's keys as the host published them."""

    address: pc.CommunityAddress
    member: SigningKeyPair = attrs.field(repr=False)
    box: BoxKeyPair = attrs.field(repr=False)
    name: str
    condition: str | None
    create: bytes | None
    admin: bytes | None
    host_keys: tuple[bytes, ...]
    record_id: str = ""
    #: Member and box keys this membership had before rekeys, newest first: they read the
    #: messages sent to them.
    previous: tuple[tuple[SigningKeyPair, BoxKeyPair], ...] = attrs.field(default=(), repr=False)

    @classmethod
    def from_record(cls, record: Record) -> Membership:
        d = record.data
        create, admin = d.get("create"), d.get("admin")
        return cls(pc.CommunityAddress.parse(d["address"]), SigningKeyPair.from_seed(b64d(d["member_seed"])),
                   BoxKeyPair.from_secret(b64d(d["box_secret"])), d.get("name") or "", d.get("condition"),
                   b64d(create) if create else None, b64d(admin) if admin else None,
                   tuple(b64d(k) for k in d.get("host_keys", [])), record.id,
                   tuple((SigningKeyPair.from_seed(b64d(p["member_seed"])), BoxKeyPair.from_secret(b64d(p["box_secret"])))
                         for p in d.get("previous", [])))

    def to_data(self) -> dict:
        return {"address": str(self.address), "member_seed": b64e(self.member.seed), "box_secret": b64e(self.box.secret),
                "name": self.name, "condition": self.condition, "create": b64e(self.create) if self.create else None,
                "admin": b64e(self.admin) if self.admin else None, "host_keys": [b64e(k) for k in self.host_keys],
                "previous": [{"member_seed": b64e(m.seed), "box_secret": b64e(b.secret)} for m, b in self.previous]}

    @property
    def keys(self) -> tuple[tuple[SigningKeyPair, BoxKeyPair], ...]:
        """The current member and box keys, then earlier ones, newest first."""
        return ((self.member, self.box),) + self.previous

    @property
    def pseudonym(self) -> str:
        return b64e(self.member.public)


@attrs.frozen
class History:
    """A community's events as the home node served them, checked: every one stamped by the
    host, extending what this device saw. ``reading`` is None while the node has none yet."""

    membership: Membership
    rows: tuple[tuple[int, dict, dict], ...] = attrs.field(repr=False)
    reading: pc.Reading | None

    @property
    def events(self) -> list[tuple[int, dict]]:
        return [(seq, event) for seq, event, _ in self.rows]

    @property
    def state(self) -> pc.CommunityState | None:
        return self.reading.state if self.reading else None

    def stamp(self, seq: int) -> dict:
        return self.rows[seq - 1][2]


@attrs.frozen
class CommunityView:
    """What a member sees: the state, the messages it can read (each one reportable), and
    those for it it cannot show (tampered with, or from a client that broke the protocol)."""

    address: str
    name: str
    state: pc.CommunityState | None
    messages: tuple[pc.Message, ...]
    me: str
    unreadable: tuple[pc.Unreadable, ...] = ()
    #: Every moderator action in the log, and the messages they hid (message seq -> action).
    actions: tuple[tuple[int, pc.Action], ...] = ()
    hidden: dict[int, tuple[int, pc.Action]] = attrs.field(factory=dict)
    #: Every member key this membership has had (warnings to any of them are for this patient).
    my_keys: frozenset[str] = frozenset()
    #: The verdict on each badged message's badge, by seq (rxfed.protocol.badges).
    badges: dict = attrs.field(factory=dict)

    @property
    def shown(self) -> tuple[pc.Message, ...]:
        """The messages shown: every readable one no moderator hid."""
        return tuple(m for m in self.messages if m.seq not in self.hidden)

    def to_json(self) -> dict:
        members = []
        mine = self.my_keys | {self.me}
        if self.state is not None:
            moderators = {m.member_b64 for m in self.state.moderator_keys()}
            members = [{"member": m.member_b64, "node": m.node, "status": str(m.status), "me": m.member_b64 == self.me,
                        "moderator": m.member_b64 in moderators, "banned": m.member_b64 in self.state.banned}
                       for m in self.state.members.values()]
        readable = {m.seq: m for m in self.messages}
        return {
            "address": self.address, "name": self.name, "me": self.me, "seq": self.state.seq if self.state else 0,
            "members": members,
            "messages": [{"seq": m.seq, "sender": b64e(m.sender), "mine": b64e(m.sender) == self.me, "text": m.text,
                          "sent": m.sent, "badge": self.badges[m.seq].to_json() if m.seq in self.badges else None}
                         for m in self.shown],
            "unreadable": [{"seq": u.seq, "sender": b64e(u.sender), "reason": u.reason, "explanation": u.explanation}
                           for u in self.unreadable],
            "hidden": [{"seq": seq, "sender": b64e(a.member), "by": b64e(a.moderator), "action": at,
                        "reason": a.reason, "mine": b64e(a.member) in mine}
                       for seq, (at, a) in sorted(self.hidden.items()) if seq in readable],
            "actions": [_action_json(seq, a) for seq, a in self.actions],
            "warnings": [_action_json(seq, a) for seq, a in self.actions
                         if a.action == "warn" and b64e(a.member) in mine],
        }


def _action_json(seq: int, action: pc.Action) -> dict:
    return {"seq": seq, "action": action.action, "member": b64e(action.member), "moderator": b64e(action.moderator),
            "about": action.seq or None, "reason": action.reason, "time": action.time}


def _read_with(mine: Membership, events: list[tuple[int, dict]], checked: int = 0) -> pc.Reading:
    """The community read with every key this membership has had: the current key's view,
    with the messages its earlier keys were sent added (each message once). ``checked``:
    events whose signatures this device verified before (up to its pin)."""
    reading = pc.read_history(events, mine.member, mine.box, checked=checked)
    if not mine.previous:
        return reading
    messages = {m.seq: m for m in reading.messages}
    unreadable = {u.seq: u for u in reading.unreadable}
    for member, box in mine.previous:
        earlier = pc.read_history(events, member, box, checked=len(events))  # verified just above
        for m in earlier.messages:
            messages.setdefault(m.seq, m)
        for u in earlier.unreadable:
            if u.seq not in messages:
                unreadable.setdefault(u.seq, u)
    reports = {r.report_seq: r for r in reading.reports}
    for member, box in mine.previous:
        for r in pc.read_history(events, member, box, checked=len(events)).reports:
            reports.setdefault(r.report_seq, r)
    return attrs.evolve(reading, messages=tuple(messages[k] for k in sorted(messages)),
                        unreadable=tuple(unreadable[k] for k in sorted(unreadable) if k not in messages),
                        reports=tuple(reports[k] for k in sorted(reports)))


class HistoryPins:
    """This device's pins, one per membership, in ``communities.json`` (mode 0600). A pin
    only ever moves forward. Entries are named by a hash of the membership's secret member
    key, so the file does not say which communities the patient is in."""

    def __init__(self, profile_dir: Path):
        self.path = Path(profile_dir) / PINS

    def _load(self) -> dict:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            raise IntegrityError(f"{self.path} is damaged; this device cannot check community histories") from None
        return doc if isinstance(doc, dict) else {}

    @staticmethod
    def _entry(mine: Membership) -> str:
        # the membership's first member key: a rekey keeps the pin
        return hash_id(mine.keys[-1][0].seed, person=b"rxfed-pin")

    def get(self, mine: Membership) -> pc.HistoryPin:
        found = self._load().get(self._entry(mine))
        try:
            return pc.HistoryPin(found["seq"], b64d(found["head"], length=32)) if found else pc.HistoryPin()
        except (KeyError, TypeError, ValueError):
            raise IntegrityError(f"{self.path} is damaged; this device cannot check community histories") from None

    def save(self, mine: Membership, pin: pc.HistoryPin) -> None:
        if pin.seq <= self.get(mine).seq:
            return
        doc = self._load()
        doc[self._entry(mine)] = {"seq": pin.seq, "head": b64e(pin.head)}
        # Not fsynced: after a crash a pin may be a step behind, which weakens the check by
        # that step only (as for the vault counter).
        write_private(self.path, json.dumps(doc, sort_keys=True).encode(), durable=False)

    def forget(self, mine: Membership) -> None:
        doc = self._load()
        if doc.pop(self._entry(mine), None) is not None:
            write_private(self.path, json.dumps(doc, sort_keys=True).encode(), durable=False)


class PatientCommunities:
    """Community operations for one patient client."""

    def __init__(self, client: PatientCore):
        self.client = client
        self.pins = HistoryPins(client.profile.path)

    def _now(self) -> int:
        return int(self.client.clock())

    async def memberships(self) -> list[Membership]:
        return [Membership.from_record(r) for r in await self.client.records(KIND)]

    async def membership(self, address: str) -> Membership:
        wanted = pc.CommunityAddress.parse(address)
        for m in await self.memberships():
            if m.address == wanted:
                return m
        raise NotFound(f"you are not a member of {address}", code="not_a_member")

    async def _submit(self, address: pc.CommunityAddress, event: dict, **extra) -> dict:
        return await self.client._call("POST", "/v1/communities/events", {"community": str(address), "event": event,
                                                                           **extra})

    # -- the host, asked directly ------------------------------------------------------------
    def _host_url(self, host: str) -> str:
        return self.client.identity.node_url if host == self.client.identity.node_id else host_url(host)

    async def _host_document(self, host: str) -> NodeDocument:
        """The host's key document from its own ``/.well-known/rxfed``, never from the home node."""
        # here, not at import: posting and reading never need it (rxfed command latency)
        from rxfed.protocol.federation import NodeDocument

        url = self._host_url(host)
        document = NodeDocument.from_json(await PatientCore.discover(self.client._session_or_new(), url))
        if document.node_id != host:
            raise IntegrityError(f"{url} says it is {document.node_id}, not {host}", code="wrong_node")
        if not document.keys:
            raise IntegrityError(f"{host} publishes no key to check its stamps with", code="bad_stamp")
        return document

    async def _host_keys(self, host: str) -> tuple[bytes, ...]:
        """The host's keys when joining (trusted on first use, like a node first meeting a
        peer: pinned from then on)."""
        return tuple(k.public_key for k in (await self._host_document(host)).keys)

    async def _listing(self, address: pc.CommunityAddress) -> pc.Listing:
        """The community as its host lists it, checked against the create event the address
        certifies (so the admin, the rules, the name and the condition are the creator's)."""
        for entry in await self.directory(self._host_url(address.host)):
            if isinstance(entry, dict) and entry.get("address") == str(address):
                try:
                    return pc.Listing.from_json(entry)
                except RxfedError as exc:
                    raise IntegrityError(f"{address.host} lists {address} wrongly: {exc.message}",
                                         code=exc.code) from None
        raise NotFound(f"{address.host} lists no community {address}", code="unknown_community")

    async def _refresh_host_keys(self, mine: Membership) -> Membership:
        """After a stamp by a key not pinned: the host's keys reached from the pinned ones by
        signed rotations, added to the pins (hosts rotate keys, and list the ones that ended)."""
        document = await self._host_document(mine.address.host)
        # only keys the pinned ones signed in as successors (spec/federation.md section 2.2): a
        # document listing an extra key beside the pinned one adds nothing
        anchors = tuple(k for k in document.keys if k.public_key in mine.host_keys)
        fresh = [k.public_key for k in document.trusting(anchors).keys] if anchors else []
        keys = mine.host_keys + tuple(k for k in fresh if k not in mine.host_keys)
        if keys == mine.host_keys:
            return mine
        return await self._update(attrs.evolve(mine, host_keys=keys))

    async def _update(self, mine: Membership) -> Membership:
        for attempt in itertools.count():
            record = next((r for r in await self.client.records(KIND) if r.id == mine.record_id), None)
            if record is None:
                raise NotFound(f"you are not a member of {mine.address}", code="not_a_member")
            vault = await self.client.open_vault()
            try:
                await self.client._commit(vault.state, [attrs.evolve(record, data=mine.to_data())])
                return mine
            except NodeRefused as exc:
                if exc.code != "stale_manifest" or attempt:
                    raise

    # -- reading -----------------------------------------------------------------------------
    async def _fetch(self, mine: Membership) -> list[tuple[int, dict, dict]]:
        """Every event the home node holds, in order, up to its first gap (a copy can hold one
        while the host catches it up)."""
        keys = list(mine.keys)
        proof = pc.make_read_proof(keys[0][0], mine.address, self.client.identity.node_id, self._now())
        out: list[tuple[int, dict, dict]] = []
        while True:
            body = {"community": str(mine.address), "after": out[-1][0] if out else 0, "limit": PAGE, "proof": proof}
            try:
                page = await self.client._call("POST", "/v1/communities/read", body)
            except NodeRefused as exc:
                if exc.code == "unknown_community" and not out:
                    return []  # the node has not received the community yet
                if exc.code == "not_a_member" and len(keys) > 1 and not out:
                    # a rekey not yet on this node's copy: read with the key it replaces
                    keys.pop(0)
                    proof = pc.make_read_proof(keys[0][0], mine.address, self.client.identity.node_id, self._now())
                    continue
                raise
            try:
                out.extend((e["seq"], e["event"], e["stamp"]) for e in page["events"])
                count = len(page["events"])
            except (KeyError, TypeError):
                raise IntegrityError("the node answered a community read with a malformed page") from None
            if count < PAGE:
                break
        contiguous: list[tuple[int, dict, dict]] = []
        for row in out:
            if row[0] != len(contiguous) + 1:
                break
            contiguous.append(row)
        return contiguous

    async def history(self, address: str | Membership, *, messages: bool = True) -> History:
        """The community's events from the home node, checked against the host's stamps and
        this device's pin; IntegrityError if they are not what the host stamped or do not
        extend what this device saw. Without ``messages`` the state is folded but no message
        is opened (``reading`` then holds the state alone): what posting and rekeying need.

        The events this device already checked (up to its pin, when the served ones hash to
        the pinned head) are not checked against their stamps, nor their signatures, again:
        they are the very statements it verified (the pin is saved only after a full check).
        Events after the pin are; every rule of the fold still applies to all."""
        mine = address if isinstance(address, Membership) else await self.membership(address)
        if mine.create is None or not mine.host_keys:
            raise IntegrityError(f"the membership of {mine.address} pins nothing to check its history against; "
                                 "leave the community and join it again", code="unpinned")
        rows = await self._fetch(mine)
        pin = self.pins.get(mine)
        try:
            hashes = []
            seen = pin.seq if pin.covers([statement_hash(event) for _, event, _ in rows[:pin.seq]]) else 0
            for seq, event, stamped in rows:
                if seq <= seen:
                    hashes.append(statement_hash(event))
                    continue
                try:
                    stamp = pc.verify_stamp(list(mine.host_keys), stamped, event)
                except Forbidden as exc:
                    if exc.code != "bad_stamp":
                        raise
                    refreshed = await self._refresh_host_keys(mine)
                    if refreshed is mine:
                        raise
                    mine = refreshed
                    stamp = pc.verify_stamp(list(mine.host_keys), stamped, event)
                if stamp.seq != seq or stamp.community != mine.address:
                    raise Forbidden("a stamp is for another position or community", code="stamp_mismatch")
                hashes.append(stamp.event)
            if hashes and hashes[0] != mine.create:
                raise Forbidden("the first event is not the create event this membership pinned",
                                code="forked_history")
            after = pin.extend(hashes)
            events = [(s, e) for s, e, _ in rows]
            reading = (None if not rows else _read_with(mine, events, seen) if messages
                       else pc.Reading(pc.CommunityState.from_events(events, checked=seen), (), ()))
            if reading is not None and mine.admin is not None and pc.parse_event(rows[0][1]).admin != mine.admin:
                raise Forbidden("the community's admin is not the one this membership pinned", code="forked_history")
        except (NodeRefused, Unavailable):
            raise
        except RxfedError as exc:
            raise IntegrityError(f"the node served a history of {mine.address} that the host did not stamp or "
                                 f"that does not extend what this device saw: {exc.message}", code=exc.code) from None
        self.pins.save(mine, after)
        return History(mine, tuple(rows), reading)

    # -- changes -----------------------------------------------------------------------------
    async def create(self, name: str, *, condition: str | None = None, approval: bool = False) -> str:
        node = self.client.identity.node_id
        about = pc.About.new(name, condition)
        member, box = SigningKeyPair.generate(), BoxKeyPair.generate()
        event = pc.make_create(member, box.public, node, about=about, approval=approval, node=node, now=self._now())
        address = pc.parse_event(event).community
        mine = Membership(address, member, box, name, condition, statement_hash(event), member.public,
                          await self._host_keys(node))
        await self.client.add_record(KIND, mine.to_data())
        await self._submit(address, event, about=about.to_json())
        return str(address)

    async def join(self, address: str) -> dict:
        """Join through the home node, after checking the community with its host: its keys
        and its listing, whose create event the address certifies. Approval communities
        list the member as pending until the admin approves."""
        target = pc.CommunityAddress.parse(address)
        for m in await self.memberships():
            if m.address == target:
                raise BadRequest(f"you are already a member of {address}", code="already_member")
        host_keys = await self._host_keys(target.host)
        listing = await self._listing(target)
        member, box = SigningKeyPair.generate(), BoxKeyPair.generate()
        event = pc.make_join(member, box.public, target, self.client.identity.node_id, self._now())
        mine = Membership(target, member, box, listing.about.name, listing.about.condition,
                          statement_hash(listing.create.signed), listing.create.admin, host_keys)
        # The keys are stored first: a join the node accepted must never lack them.
        record = await self.client.add_record(KIND, mine.to_data())
        try:
            return await self._submit(target, event)
        except NodeRefused:
            # The node said no (for one, it will not deliver to the host): nothing was sent.
            vault = await self.client.open_vault()
            await self.client._commit(vault.state, [], deletes=[record.id])
            raise

    async def approve(self, address: str, member: str) -> dict:
        mine = await self.membership(address)
        event = pc.make_approve(mine.member, mine.address, b64d(member, length=32), self._now())
        return await self._submit(mine.address, event)

    async def remove(self, address: str, member: str) -> dict:
        """Remove a member (admins): the next posts are sealed to the remaining members only."""
        mine = await self.membership(address)
        event = pc.make_remove(mine.member, mine.address, b64d(member, length=32), self._now())
        return await self._submit(mine.address, event)

    async def leave(self, address: str) -> dict:
        mine = await self.membership(address)
        result = await self._submit(mine.address, pc.make_leave(mine.member, mine.address, self._now()))
        state = await self.client.open_vault()
        await self.client._commit(state.state, [], deletes=[mine.record_id])
        self.pins.forget(mine)
        return result

    async def rekey(self, address: str | Membership) -> dict:
        """Replace this membership's member and box keys, keeping its seat (after a device
        was revoked: it held the old ones). The new keys are in the vault before the host
        hears of them; a rekey that did not reach the host is sent again by the next call."""
        mine = address if isinstance(address, Membership) else await self.membership(address)
        state = (await self.history(mine, messages=False)).state
        if state is None:
            raise NotFound("this node has not received the community yet; try again shortly", code="not_ready")
        current = state.status(mine.member.public)
        if current in (pc.MemberStatus.JOINED, pc.MemberStatus.PENDING):
            old = (mine.member, mine.box)
            mine = await self._update(attrs.evolve(mine, member=SigningKeyPair.generate(), box=BoxKeyPair.generate(),
                                                   previous=(old,) + mine.previous))
        elif not mine.previous or current is not None:
            raise Conflict("this membership's key is no current member: it cannot be rekeyed", code="not_a_member")
        signer = mine.previous[0][0]
        event = pc.make_rekey(signer, mine.member, mine.box.public, mine.address, self.client.identity.node_id,
                              self._now())
        result = await self._submit(mine.address, event)
        return {"address": str(mine.address), "member": mine.pseudonym, **(result or {})}

    async def rekey_all(self) -> dict[str, str]:
        """Rekey every membership; what became of each (``rekeyed``, or the error)."""
        out = {}
        for mine in await self.memberships():
            try:
                await self.rekey(mine)
                out[str(mine.address)] = "rekeyed"
            except RxfedError as exc:
                out[str(mine.address)] = f"{exc.code}: {exc.message}"
        return out

    async def post(self, address: str, text: str, *, badge: dict | None = None) -> dict:
        """Encrypt and post ``text``; first hands a fresh sender key to exactly the current
        members if the membership changed since this member's last key. ``badge``: a
        clinician credential of this profile's clinician key, checked as readers will check
        it (refused with the reason if it would not show), then bound to the post."""
        clinician = None
        if badge is not None:
            from rxfed.client.clinician import BadgeChecker, clinician_key

            key = await clinician_key(self.client)
            if key is None:
                raise Conflict("this profile has no clinician key: run 'rxfed patient clinician key' and have "
                               "your hospital issue a credential for it", code="no_clinician_key")
            from rxfed.client.clinician import PINS

            verdict = await BadgeChecker(self.client._session_or_new(), self._now(),
                                         pins=self.client.profile.path / PINS).credential(badge, key.public)
            if not verdict.verified:
                raise Forbidden(f"the badge would not show: {verdict.explanation}", code=verdict.reason)
            clinician = (key, badge)
        mine = await self.membership(address)
        history = await self.history(mine, messages=False)
        state = history.state
        if state is None:
            raise NotFound("this node has not received the community yet; try again shortly", code="not_ready")
        if state.status(mine.member.public) is not pc.MemberStatus.JOINED:
            raise BadRequest("you are not (yet) a joined member of this community", code="not_joined")
        # My latest sender key, read back from my own distribution (sealed to me too), so
        # any of my devices can go on posting with it.
        key = pc.own_sender_key(state, history.events, mine.member, mine.box)
        if key is None or state.needs_sender_key(mine.member.public):
            key = SenderKey.generate(state.next_epoch(mine.member.public))
            await self._submit(mine.address, pc.make_sender_key(mine.member, state, key))
        now = max(self._now(), state.last_sent(mine.member.public))
        message, _franking = pc.make_message(mine.member, key, mine.address, text, now, badge=clinician)
        result = await self._submit(mine.address, message)
        # The post's id: the hash of its signed statement, known before the host numbers it.
        return {**result, "id": b64e(statement_hash(message))}

    async def read(self, address: str) -> CommunityView:
        mine = await self.membership(address)
        history = await self.history(mine)
        if history.reading is None:
            return CommunityView(str(mine.address), mine.name, None, (), mine.pseudonym)
        reading = history.reading
        verdicts = {}
        badged = [m for m in reading.messages if m.badge is not None]
        if badged:
            from rxfed.client.clinician import PINS, BadgeChecker

            checker = BadgeChecker(self.client._session_or_new(), self._now(), contactable=await self._federated(),
                                   pins=self.client.profile.path / PINS)
            for m in badged:
                verdicts[m.seq] = await checker.verdict(m.badge, community=str(mine.address), sender=m.sender,
                                                        text=m.text, sent=m.sent)
        return CommunityView(str(mine.address), mine.name, reading.state, reading.messages, mine.pseudonym,
                             reading.unreadable, reading.actions, reading.hidden,
                             frozenset(b64e(m.public) for m, _ in mine.keys), verdicts)

    async def _readable(self, address: str, seq: int):
        """The checked history of ``address`` and its message ``seq``, one this member can
        read (NotFound otherwise)."""
        mine = await self.membership(address)
        history = await self.history(mine)
        messages = history.reading.messages if history.reading else ()
        message = next((m for m in messages if m.seq == seq), None)
        if message is None:
            raise NotFound(f"no message {seq} you can read in {address}", code="unknown_message")
        return history, message

    async def file_report(self, address: str, seq: int, category: str) -> dict:
        """Report message ``seq`` (one this member read) to the community's moderators as
        ``category``: its text and franking key sealed to each current moderator, under a
        fresh key that names nobody (spec/moderation.md). Goes through the home node and the
        host like any event; no node can read it."""
        if category not in pc.REPORT_CATEGORIES:
            raise BadRequest(f"category must be one of {', '.join(pc.REPORT_CATEGORIES)}", code="bad_category")
        history, message = await self._readable(address, seq)
        event = pc.make_report(history.state, message, category, self._now())
        result = await self._submit(history.membership.address, event)
        return {**(result or {}), "id": b64e(statement_hash(event))}

    async def reports(self, address: str) -> list[dict]:
        """The moderator queue: the reports sealed to this member as a moderator, each checked
        against the message it names (whose stamp and signature the history check verified),
        with the actions a moderator took on that message since."""
        mine = await self.membership(address)
        history = await self.history(mine)
        reading = history.reading
        if reading is None:
            return []
        if not any(b64e(m.public) == k.member_b64 for m, _ in mine.keys for k in reading.state.moderator_keys()) \
                and not reading.reports:
            raise Forbidden("you are no moderator of this community", code="not_moderator")
        out = []
        for r in reading.reports:
            if r.status == "verified":
                # The host's stamp and the sender's signature, checked once more for this report.
                report = {"type": pc.FRANKING_REPORT, "text": r.text, "franking_key": b64e(r.franking_key),
                          "event": history.rows[r.seq - 1][1], "stamp": history.stamp(r.seq)}
                pc.open_franking_report(report, list(history.membership.host_keys))
            taken = [_action_json(seq, a) for seq, a in reading.actions if a.seq == r.seq and seq > r.report_seq
                     and a.action in ("hide", "warn")] if r.seq else []
            taken += [_action_json(seq, a) for seq, a in reading.actions if seq > r.report_seq and r.sender
                      and a.member == r.sender and a.action in ("remove", "ban")]
            out.append({**r.to_json(), "actions": taken})
        return out

    async def forward(self, address: str, seq: int, category: str | None = None) -> dict:
        """Forward the verified report of message ``seq`` to its sender's home node, as the
        moderators decided: the franking report and its category (the report's own, unless
        ``category`` says otherwise), signed by this moderator and sealed to that node's key
        from its own key document. The reporter is named nowhere in it."""
        mine = await self.membership(address)
        history = await self.history(mine)
        reading = history.reading
        found = [r for r in (reading.reports if reading else ()) if r.seq == seq and r.status == "verified"]
        if not found:
            raise NotFound(f"no verified report of message {seq} in your queue", code="unknown_report")
        report = found[-1]
        category = category or report.category
        franking = {"type": pc.FRANKING_REPORT, "text": report.text, "franking_key": b64e(report.franking_key),
                    "event": history.rows[seq - 1][1], "stamp": history.stamp(seq)}
        node = reading.state.members[b64e(report.sender)].node
        document = await self._host_document(node)
        key = max(document.keys, key=lambda k: (k.valid_until is None, k.valid_from)).public_key
        statement = pc.make_forward(mine.member, franking, category, self._now())
        sealed = seal_to_node(key, canonical(statement))
        result = await self.client._call("POST", "/v1/communities/forward",
                                         {"community": str(mine.address), "node": node, "sealed": b64e(sealed)})
        return {**(result or {}), "node": node, "member": b64e(report.sender), "category": category}

    async def act(self, address: str, action: str, member: str | None = None, *, seq: int = 0,
                  reason: str) -> dict:
        """A moderator's action, signed with this member's key (see pc.Action). Without
        ``member``, the sender of message ``seq`` is the member acted on (a hide or warn then
        names that message; a remove or ban names none)."""
        if action not in pc.ACTIONS:
            raise BadRequest(f"action must be one of {', '.join(pc.ACTIONS)}", code="bad_action")
        mine = await self.membership(address)
        history = await self.history(mine, messages=False)
        if history.state is None:
            raise NotFound("this node has not received the community yet; try again shortly", code="not_ready")
        if member is None:
            if not 0 < seq <= len(history.rows):
                raise BadRequest("name the member, or a message by its seq", code="bad_action")
            event = pc.parse_event(history.rows[seq - 1][1])
            if not isinstance(event, pc.MessagePosted):
                raise BadRequest(f"event {seq} is not a message", code="not_a_message")
            target = event.sender
            if action not in ("hide", "warn"):
                seq = 0  # "ban the sender of message 12": the ban itself names no message
        else:
            target = b64d(member, length=32)
        statement = pc.make_action(mine.member, mine.address, action, target, seq=seq, reason=reason,
                                   now=self._now())
        # The rules of the fold, here first: a refusal says why before anything is sent.
        history.state.apply(statement, seq=history.state.seq + 1)
        result = await self._submit(mine.address, statement)
        return {**(result or {}), "action": action, "member": b64e(target), "id": b64e(statement_hash(statement))}

    async def _federated(self) -> set[str]:
        """The home node and the peers it federates with (``GET /v1/consent/nodes``): the only
        issuers a reader's client contacts to check a badge; the home node alone if it cannot
        say."""
        home = self.client.identity.node_id
        try:
            doc = await self.client._call("GET", "/v1/consent/nodes")
            return {home, *(n["node_id"] for n in doc["nodes"] if isinstance(n, dict) and isinstance(n.get("node_id"), str))}
        except (RxfedError, KeyError, TypeError):
            return {home}

    async def report(self, address: str, seq: int) -> dict:
        """A franking report of message ``seq`` this member received: its text and franking
        key with the sender-signed event and the host's stamp, so a moderator can check who
        sent what (:func:`rxfed.protocol.community.verify_franking_report`) while the node
        never learns any other message."""
        history, message = await self._readable(address, seq)
        return pc.franking_report(message, history.rows[seq - 1][1], history.stamp(seq))

    @staticmethod
    async def directory(node_url: str) -> list[dict]:
        """The communities a node hosts (no account needed)."""
        async with PatientCore._new_session() as session:
            doc = await PatientCore._http(session, "GET", node_url.rstrip("/") + "/v1/communities")
        return doc["communities"]
