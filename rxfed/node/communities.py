"""Condition communities on a node: hosting (validate, sequence, stamp, fan out), relaying a
local patient's events to a remote host, and mirroring communities hosted elsewhere.

The host is authoritative: it folds every event into the community state
(:class:`rxfed.protocol.community.CommunityState`), refuses what is not a valid next event,
stamps what it accepts with its node key and fans it out to the home nodes of the members.
Nodes only ever hold ciphertext and signed membership changes under per-community
pseudonyms. A node serves a community's events only to a member that signs for its member
key, keeps no record of which patient is a member of what, and keeps name and condition
only for the communities it hosts (its public directory).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import attrs
from aiohttp import web

from rxfed.crypto import DecryptionFailed, b64e, open_as_any_node_key, sha256
from rxfed.errors import BadRequest, Conflict, Forbidden, NotFound, RxfedError
from rxfed.node.http import NODE, AccountSuspended, authenticate, reply
from rxfed.node.listener import LISTENER
from rxfed.node.federation import InboundEffects
from rxfed.protocol import blocklists as pbl
from rxfed.protocol import community as pc
from rxfed.protocol.canonical import canonical, loads
from rxfed.protocol.federation import EventResult, WireEvent
from rxfed.protocol.schema import anything, b64, fields, integer
from rxfed.store import CommunityEvent, CommunityRow

log = logging.getLogger("rxfed.communities")
routes = web.RouteTableDef()
SUBMIT = "community.submit"
EVENT = "community.event"
FORWARD = "community.forward"
#: A forwarded report sealed to a node: the franking report (a message of at most 8 KiB)
#: and the moderator's signature, as base64url.
MAX_FORWARD = 64 * 1024
#: Events in one page of ``POST /v1/communities/read`` (and of the host's own reads).
PAGE = 1000
#: Seconds one build of the community directory answers every request for it.
DIRECTORY_TTL = 2.0
#: Times a worker among several stamps a local member's event again after another worker
#: appended to the community first.
STALE_TRIES = 12


@attrs.frozen
class Hosted:
    """A hosted community's state, and the hashes of events accepted on top of what is
    committed (kept apart so a refused batch leaves the committed hashes untouched)."""

    state: pc.CommunityState
    new_hashes: tuple[bytes, ...] = ()


class CommunityService:
    """The communities a node hosts (state cached in memory, rebuilt from the store)."""

    def __init__(self, state):
        self.node = state
        self._hosted: dict[str, Hosted] = {}
        #: Statement hashes of each hosted community's events, to answer a resubmission ok.
        self._hashes: dict[str, set[bytes]] = {}
        #: The latest queued store write of each hosted community.
        self._writes: dict[str, asyncio.Future] = {}
        #: Among several workers: each community's latest state this worker saw committed,
        #: which a failed write falls back to (then caught up with the others' events).
        self._committed: dict[str, Hosted] = {}
        self._stamping: dict[str, asyncio.Lock] = {}
        #: The directory's reply and until when it serves (see :meth:`directory`).
        self._directory: tuple[float, bytes] | None = None
        self._directory_lock = asyncio.Lock()

    @property
    def me(self) -> str:
        return self.node.config.node_id

    async def hosted(self, address: pc.CommunityAddress) -> Hosted | None:
        if address.host != self.me:
            return None
        community_id = address.id
        found = self._hosted.get(community_id)
        write = self._writes.get(community_id)
        if found is not None and not self.node.guards.caches and (write is None or write.done()):
            # Another worker may have appended since: the cached state is used only while
            # it is the committed one (the seq checks the write again, in its transaction).
            row = await self.node.store.community(community_id, self.me)
            if row is None or row.seq < found.state.seq:
                self.forget(community_id)
                found = None
            elif row.seq > found.state.seq:
                found = await self._catch_up(community_id, found)
        if found is None:
            row = await self.node.store.community(community_id, self.me)
            if row is None:
                return None
            events = await self._all_events(community_id)
            state = pc.CommunityState.from_events([(e.seq, loads(e.event)) for e in events])
            found = self._hosted[community_id] = Hosted(state)
            self._hashes[community_id] = {sha256(e.event) for e in events}  # stored canonical
            self.committed(community_id, found)
        return found

    async def _catch_up(self, community_id: str, hosted: Hosted) -> Hosted | None:
        """``hosted`` with the events another worker of this node committed since (checked
        by that worker before it stored them, so their signatures are not checked again);
        None (rebuilt from the store by the caller) if they do not follow on."""
        state, hashes = hosted.state, self._hashes.setdefault(community_id, set())
        try:
            while True:
                page = await self.node.store.community_events(community_id, self.me, after=state.seq, limit=PAGE)
                for e in page:
                    state = state.step(loads(e.event), seq=e.seq, checked=True)[0]
                    hashes.add(sha256(e.event))
                if len(page) < PAGE:
                    break
        except RxfedError:
            self.forget(community_id)
            return None
        found = self._hosted[community_id] = Hosted(state)
        self._directory = None
        self.committed(community_id, found)
        return found

    async def check_lists(self, parsed: pc.Event, origin: str | None = None) -> None:
        """The operator's lists (spec/moderation.md, "Operators"): a pseudonym on the node's
        ban list submits nothing but its leave, whether this node hosts the community or
        relays for its patient; and members on a silenced or suspended node join no
        community hosted here (``origin``: the node that submitted it, None for a local
        patient). Only hashes are looked up: the list holds no pseudonym."""
        if isinstance(parsed, pc.Leave | pc.Create):
            return
        key = parsed.member if isinstance(parsed, pc.Join) else parsed.author
        if key is not None and await self.node.store.banned([pbl.ban_hash(key)]):
            raise Forbidden("this node's operator bans that pseudonym", code="banned_pseudonym")
        if origin is not None and isinstance(parsed, pc.Join):
            block = await self.node.store.block_for(origin)
            if block is not None and block.severity in ("silence", "suspend"):
                raise Forbidden(f"this node silences {origin}: its members join no community hosted here",
                                code="silenced")

    def seen(self, hosted: Hosted, digest: bytes) -> bool:
        """Whether the event with statement hash ``digest`` was accepted already."""
        return digest in hosted.new_hashes or digest in self._hashes.get(hosted.state.address.id, ())

    async def _all_events(self, community_id: str) -> list[CommunityEvent]:
        out: list[CommunityEvent] = []
        while True:
            page = await self.node.store.community_events(community_id, self.me, after=out[-1].seq if out else 0,
                                                          limit=PAGE)
            out.extend(page)
            if len(page) < PAGE:
                return out

    def accept(self, hosted: Hosted | None, address: pc.CommunityAddress, event: dict, *,
               parsed: pc.Event | None = None, raw: bytes | None = None) -> tuple[Hosted, CommunityEvent, dict]:
        """Validate ``event`` as the next one, stamp it: the new state, the stored event and
        the stamp. (``parsed``: the event already parsed, see :meth:`CommunityState.step`;
        ``raw``: its canonical bytes, if already encoded.)"""
        if hosted is None:
            if not isinstance(pc.parse_event(event), pc.Create):
                raise NotFound(f"no community {address} on this node", code="unknown_community")
            state = pc.CommunityState.empty(address)
        else:
            state = hosted.state
        new_state, parsed = state.step(event, seq=state.seq + 1, parsed=parsed)
        now = self.node.now()
        pc.check_timely(parsed, now)
        signer = parsed.author if parsed.author is not None else state.meta.admin
        raw = raw if raw is not None else canonical(event)
        digest = sha256(raw)  # == statement_hash(event), without encoding it twice
        stamped = pc.stamp_checked(self.node.signing_key(), new_state.seq, parsed, signer, now, digest=digest)
        new_hashes = (hosted.new_hashes if hosted else ()) + (digest,)
        return Hosted(new_state, new_hashes), _stored(new_state.seq, raw, canonical(stamped), parsed), stamped

    async def fan_out(self, before: pc.CommunityState | None, after: pc.CommunityState,
                      stored: list[CommunityEvent]) -> list[tuple[str, bytes]]:
        """Outbox entries: each new event to every member node (before and after, so a node
        whose last member left still learns it), and the full history to a node that has
        just gained its first member (it needs every event to fold the state)."""
        address = str(after.address)
        old_nodes = before.member_nodes() if before else set()
        targets = (old_nodes | after.member_nodes()) - {self.me}
        new_nodes = after.member_nodes() - old_nodes - {self.me}
        items: list[tuple[str, bytes]] = []
        if new_nodes and stored and stored[0].seq > 1:
            await self.settled(after.address.id)
            history = [e for e in await self._all_events(after.address.id) if e.seq < stored[0].seq]
            for node in sorted(new_nodes):
                items += [(node, _wire(address, e)) for e in history]
        for node in sorted(targets):
            items += [(node, _wire(address, e)) for e in stored]
        return items

    def row(self, state: pc.CommunityState, created: int, about: pc.About | None = None) -> CommunityRow:
        """The row of a hosted community. Its name, condition and commitment key are stored
        with the create event (``about``); later rows leave them as they are."""
        return CommunityRow(state.address.id, state.address.host, about.name if about else "",
                            about.condition if about else None, state.meta.approval, True, state.seq, created,
                            about.key if about else None)

    def pending(self, community_id: str, write) -> asyncio.Future:
        """Start a store write for a hosted community now (so writes queue in order). On a
        backend whose writes may commit out of order (PostgreSQL's pool), the write starts
        once the community's previous one is through: the next event's sequence check must
        see it committed, or it would be refused as stale."""
        previous = self._writes.get(community_id)
        if previous is not None and not previous.done() and not getattr(self.node.store.backend, "ordered_writes",
                                                                         False):
            write = _after(previous, write)
        future = asyncio.ensure_future(write)
        self._writes[community_id] = future
        return future

    async def settled(self, community_id: str) -> None:
        """Wait for the community's queued writes (before reading its history back)."""
        write = self._writes.get(community_id)
        if write is not None and not write.done():
            await asyncio.wait([write])

    def forget(self, community_id: str) -> None:
        """Drop the cached state (a write failed): the next use reloads it from the store."""
        self._committed.pop(community_id, None)
        self._hosted.pop(community_id, None)
        self._hashes.pop(community_id, None)
        self._directory = None

    def one_at_a_time(self, community_id: str) -> asyncio.Lock:
        """Among several workers: the lock a local submission to a hosted community holds
        from its stamp to its commit."""
        lock = self._stamping.get(community_id)
        if lock is None:
            if len(self._stamping) > 10_000:
                self._stamping = {k: v for k, v in self._stamping.items() if v.locked()}
            lock = self._stamping[community_id] = asyncio.Lock()
        return lock

    def committed(self, community_id: str, hosted: Hosted) -> None:
        """Among several workers: ``hosted``'s events are committed."""
        if not self.node.guards.caches:
            known = self._committed.get(community_id)
            if known is None or hosted.state.seq > known.state.seq:
                self._committed[community_id] = Hosted(hosted.state)

    def failed(self, community_id: str, digest: bytes) -> None:
        """A write failed: its event is not in the community. On one process the cached
        state is dropped (rebuilt from the store); among several workers it falls back to
        the last state seen committed, which the next use catches up with the store."""
        known = self._committed.get(community_id)
        if self.node.guards.caches or known is None:
            self._committed.pop(community_id, None)
            self.forget(community_id)
            return
        self._hosted[community_id] = known
        self._hashes.get(community_id, set()).discard(digest)
        self._directory = None

    def remember(self, community_id: str, hosted: Hosted) -> None:
        """Adopt ``hosted`` once its events are committed."""
        self._hashes.setdefault(community_id, set()).update(hosted.new_hashes)
        self._hosted[community_id] = Hosted(hosted.state)
        self._directory = None

    async def directory(self) -> bytes:
        """The reply of ``GET /v1/communities``. Anyone may ask, as often as they like, and it
        costs a store read and every hosted community's listing: it is made once for all
        the requests of :data:`DIRECTORY_TTL` seconds (and again once a community changes),
        so its cost no longer grows with the rate strangers ask at."""
        now = asyncio.get_running_loop().time()
        if self._directory is not None and self._directory[0] > now:
            return self._directory[1]
        async with self._directory_lock:  # concurrent askers share one build
            now = asyncio.get_running_loop().time()
            if self._directory is not None and self._directory[0] > now:
                return self._directory[1]
            out = []
            for row in await self.node.store.communities(hosted_by=self.me):
                hosted = await self.hosted(pc.CommunityAddress(row.id, row.host))
                if hosted is None or row.about is None:
                    continue
                create = pc.parse_event(hosted.state.meta.create)
                about = pc.About(row.name, row.condition, row.about)
                out.append(pc.Listing(create, about, len(hosted.state.joined()), row.created).to_json())
            body = canonical({"communities": out})
            self._directory = (now + DIRECTORY_TTL, body)
            return body

    # -- federation handlers ----------------------------------------------------------------
    async def on_submit(self, origin: str, events: list[WireEvent]) -> tuple[list[EventResult], InboundEffects]:
        """At the host: events members on ``origin`` submitted through their home node."""
        results, effects = [], InboundEffects()
        pending: dict[str, Hosted] = {}
        for wire in events:
            try:
                f = fields(wire.content, "content", {"community": pc.CommunityAddress.parse, "event": anything})
                address, event = f["community"], f["event"]
                if address.host != self.me:
                    raise BadRequest(f"{address} is not hosted here", code="not_host")
                if address.id not in pending:
                    await self.settled(address.id)  # build only on committed local events
                hosted = pending.get(address.id) or await self.hosted(address)
                if hosted is None:
                    raise NotFound(f"no community {address} on this node", code="unknown_community")
                raw = canonical(event)
                if self.seen(hosted, sha256(raw)):
                    results.append(EventResult(True))  # a resubmission of an accepted event
                    continue
                parsed = pc.parse_event(event)
                if isinstance(parsed, pc.Create):
                    raise Forbidden("communities are created on their host by a local patient")
                member_node = _member_node(hosted.state, parsed, origin)
                if member_node != origin:
                    raise Forbidden(f"this member's home node is {member_node}, not {origin}", code="wrong_origin")
                await self.check_lists(parsed, origin)
                after, stored, _ = self.accept(hosted, address, event, parsed=parsed, raw=raw)
                pending[address.id] = after
                effects.communities.append((self.row(after.state, self.node.now()), [stored]))
                effects.outbox.extend(await self.fan_out(hosted.state, after.state, [stored]))
                results.append(EventResult(True))
            except RxfedError as exc:
                results.append(EventResult(False, exc.code, exc.message))
        for cid, hosted in pending.items():
            effects.after_commit.append(lambda cid=cid, hosted=hosted: self.remember(cid, hosted))
        return results, effects

    async def on_event(self, origin: str, events: list[WireEvent]) -> tuple[list[EventResult], InboundEffects]:
        """At a member's home node: stamped events from the host, kept as a copy keyed by the
        community's address. The stamps are checked in the node's verifier threads, so a
        large transaction uses more than the event loop's core."""
        results: list[EventResult | None] = [None] * len(events)
        effects = InboundEffects()
        checks = []
        for i, wire in enumerate(events):
            try:
                f = fields(wire.content, "content", {"community": pc.CommunityAddress.parse,
                                                     "seq": integer(1, pc.MAX_SEQ), "event": anything,
                                                     "stamp": anything})
                address = f["community"]
                if address.host != origin or address.host == self.me:
                    raise Forbidden(f"{origin} does not host {address}", code="not_host")
                checks.append((i, f))
            except RxfedError as exc:
                results[i] = EventResult(False, exc.code, exc.message)
        if checks:
            keys = {k.public_key: k for k in (await self.node.federation.document(origin)).keys}
            halves = [checks[::2], checks[1::2]]
            loop = asyncio.get_running_loop()
            grouped: dict[pc.CommunityAddress, tuple[CommunityRow, list[CommunityEvent]]] = {}
            for done in await asyncio.gather(*(loop.run_in_executor(self.node.verifier, _check_stamps, keys, h)
                                               for h in halves if h)):
                for i, f, outcome, parsed in done:
                    results[i] = outcome
                    if not outcome.ok:
                        continue
                    address = f["community"]
                    _row, stored = grouped.setdefault(address, (self._mirror_row(address), []))
                    stored.append(_stored(f["seq"], canonical(f["event"]), canonical(f["stamp"]), parsed))
            effects.communities.extend(grouped.values())
        return results, effects

    async def on_forward(self, origin: str, events: list[WireEvent]) -> tuple[list[EventResult], InboundEffects]:
        """At a member's home node: a report a moderator of the community decided to forward
        about a message of a member on this node. Kept for the operator (``rxfed node
        reports``) if the report verifies under the host's keys, its sender is a member on
        this node's copy, its signer a moderator in that copy, and the operator does not
        reject reports from ``origin``."""
        results = []
        for wire in events:
            try:
                f = fields(wire.content, "content", {"community": pc.CommunityAddress.parse,
                                                     "sealed": b64(max_length=MAX_FORWARD)})
                await self.keep_forward(origin, f["community"], f["sealed"])  # kept once, however often sent
                results.append(EventResult(True))
            except RxfedError as exc:
                results.append(EventResult(False, exc.code, exc.message))
        return results, InboundEffects()

    async def keep_forward(self, origin: str, address: pc.CommunityAddress, sealed: bytes) -> bool:
        block = await self.node.store.block_for(origin) if origin != self.me else None
        if block is not None and block.reject_reports:
            raise Forbidden(f"this node rejects reports from {origin}", code="reports_rejected")
        try:
            plaintext = open_as_any_node_key([key.key for key in self.node.keys], sealed)
        except DecryptionFailed:
            raise Forbidden("the report is sealed to another node", code="not_for_this_node") from None
        statement = loads(plaintext)
        if address.host == self.me:
            host_keys = [k.key.public for k in self.node.keys]
        else:
            host_keys = [k.public_key for k in (await self.node.federation.document(address.host)).keys]
        facts = pc.open_forward(statement, host_keys)
        if facts.community != address:
            raise BadRequest("the report is of another community", code="wrong_community")
        if await self.node.store.community_reader(address.id, address.host, facts.sender) is None:
            raise Forbidden("the reported message's sender is no member on this node", code="not_your_member")
        events = []
        while True:
            page = await self.node.store.community_events(address.id, address.host, after=events[-1][0] if events
                                                          else 0, limit=PAGE)
            events.extend((e.seq, loads(e.event)) for e in page)
            if len(page) < PAGE:
                break
        # the copy up to its first gap (a copy may receive events out of order); the host
        # checked every signature, and the stamps were checked on arrival
        events = events[:pc.contiguous_end(0, [seq for seq, _ in events])]
        state = pc.CommunityState.from_events(events, checked=len(events))
        if not state.is_moderator(facts.moderator):
            raise Forbidden("the report was forwarded by no moderator of the community", code="not_moderator")
        # kept once per message and moderator, however often it is forwarded
        kept_as = b64e(sha256(canonical({"community": str(address), "seq": facts.seq,
                                         "moderator": b64e(facts.moderator)})))
        return await self.node.store.keep_forwarded_report({
            "id": kept_as, "received": self.node.now(), "community_id": address.id, "host": address.host,
            "seq": facts.seq, "sender": b64e(facts.sender), "category": facts.category, "text": facts.text,
            "sent": facts.sent, "moderator": b64e(facts.moderator), "origin": origin})

    def _mirror_row(self, address: pc.CommunityAddress) -> CommunityRow:
        """A copy of a community hosted elsewhere: no name, no condition."""
        return CommunityRow(address.id, address.host, "", None, False, False, 0, self.node.now())


async def _after(previous: asyncio.Future, write):
    """``write`` (a coroutine not started yet) once ``previous`` is done; if that failed,
    ``write`` (stamped on top of it) never starts and fails as stale. Its own sequence check
    would not do among several workers: another worker may have appended an event under the
    number the failed one had, and ``write`` would then land on a predecessor it was never
    checked against."""
    try:
        await asyncio.wait([previous])
    except BaseException:
        write.close()  # cancelled while it waited: it never starts
        raise
    if previous.cancelled() or previous.exception() is not None:
        write.close()
        raise Conflict("the community moved on; try again", code="stale_community")
    return await write


def _stored(seq: int, event: bytes, stamp: bytes, parsed: pc.Event) -> CommunityEvent:
    return CommunityEvent(seq, event, stamp, pc.membership_change(parsed))


def _check_stamps(keys: dict, items: list[tuple[int, dict]]) -> list[tuple[int, dict, EventResult, Any]]:
    """Verify host stamps (run in a verifier thread: libsodium releases the GIL) under the
    host's trusted keys valid at each stamp's time; parsing the events checks that a create
    event certifies its community's id."""
    out = []
    public, valid_at = list(keys), (lambda key, when: keys[key].valid_at(when))
    for i, f in items:
        try:
            stamp, parsed = pc.check_stamped(public, f["stamp"], f["event"], valid_at)  # both name one community
            if stamp.seq != f["seq"] or stamp.community != f["community"]:
                raise Forbidden("stamp is for another position or community", code="stamp_mismatch")
            out.append((i, f, EventResult(True), parsed))
        except RxfedError as exc:
            out.append((i, f, EventResult(False, exc.code, exc.message), None))
    return out


def _member_node(state: pc.CommunityState, event: Any, origin: str) -> str:
    if isinstance(event, pc.Join):
        return event.node
    if isinstance(event, pc.Report):
        # Filed under a fresh key that names nobody: it comes from the home node of some
        # joined member (the reporter's, which the host does not pass on).
        if not any(m.node == origin for m in state.joined()):
            raise Forbidden(f"no joined member of this community is at {origin}", code="wrong_origin")
        return origin
    author = event.author if event.author is not None else state.meta.admin
    member = state.members.get(b64e(author))
    if member is None:
        raise Forbidden("not a member of this community", code="not_a_member")
    return member.node


def _wire(address: str, event: CommunityEvent) -> bytes:
    """The canonical ``community.event`` wire event, spliced from the stored canonical bytes
    (keys in canonical order) rather than parsed and encoded again for every destination."""
    return b"".join([b'{"content":{"community":', canonical(address), b',"event":', event.event, b',"seq":',
                     str(event.seq).encode(), b',"stamp":', event.stamp, b'},"kind":"', EVENT.encode(), b'"}'])


# -- client API ----------------------------------------------------------------------------


@routes.get("/v1/communities")
async def list_communities(request: web.Request) -> web.Response:
    """The communities this node hosts (no authentication: a directory), each with its
    create event and the name and condition it commits to, so a client can check them."""
    state = request.app[NODE]
    await request.app[LISTENER].admission.enter(request)
    return web.Response(body=await state.communities.directory(), content_type="application/json")


@routes.post("/v1/communities/events")
async def submit(request: web.Request) -> web.Response:
    """A local patient's community event: applied here if this node hosts the community,
    otherwise queued for the host (202). A create event comes with its ``about``."""
    state = request.app[NODE]
    caller = await authenticate(request, suspended_ok=True)
    f = fields(caller.body, "submission", {"community": pc.CommunityAddress.parse, "event": anything},
               {"about": anything})
    address, event = f["community"], f["event"]
    parsed = pc.parse_event(event)
    if caller.patient in state.suspended and not isinstance(parsed, pc.Leave):
        raise AccountSuspended()  # leaving stays open: no member list keeps a patient against their will
    if parsed.community != address:
        raise BadRequest("the event is for another community", code="wrong_community")
    about = None
    if isinstance(parsed, pc.Create):
        if f["about"] is None:
            raise BadRequest("a create event comes with the name and condition it commits to", code="missing_field")
        about = pc.About.from_json(f["about"]).check(parsed)
    elif f["about"] is not None:
        raise BadRequest("only a create event comes with about", code="unknown_field")
    communities = state.communities
    await communities.check_lists(parsed)
    if address.host != state.config.node_id:
        if isinstance(parsed, pc.Create):
            raise BadRequest("create communities on your home node", code="not_host")
        await state.federation.check_deliverable(address.host)
        wire = canonical(WireEvent(SUBMIT, {"community": str(address), "event": event}).to_json())
        await state.store.relay(address.host, wire, now=caller.now, nonce=caller.nonce, patient=caller.patient,
                                signer=caller.auth.device)
        state.federation.notify()
        return reply({"community": str(address), "queued": True}, status=202)
    raw = canonical(event)
    # Among several workers another one may append first: the write then fails its sequence
    # check (409 stale_community), the cached state is dropped, and the event is stamped
    # again on top of what the other worker committed.
    if state.guards.caches:
        return await _host_submission(state, caller, address, event, parsed, raw, about)
    # Among several workers, one event of a community at a time in each worker, from its
    # stamp to its commit: every stamp is made on the state just read back from the store
    # (so a collision costs one stamp, not a queue of writes built on a stale one).
    for attempt in range(STALE_TRIES):
        async with state.communities.one_at_a_time(address.id):
            try:
                return await _host_submission(state, caller, address, event, parsed, raw, about)
            except Conflict as exc:
                if exc.code != "stale_community" or attempt == STALE_TRIES - 1:
                    raise
        await asyncio.sleep(random.uniform(0, 0.001 * 2 ** min(attempt, 5)))  # out of step with the other


async def _host_submission(state, caller, address, event, parsed, raw, about) -> web.Response:
    communities = state.communities
    async with state.federation.lock:
        hosted = await communities.hosted(address)
        if hosted is not None and communities.seen(hosted, sha256(raw)):
            return reply({"community": str(address), "duplicate": True})  # a retry after a lost reply
        if hosted is None and isinstance(parsed, pc.Create) and await state.store.community(address.id, address.host):
            raise BadRequest("that community exists", code="already_created")
        if isinstance(parsed, pc.Join) and parsed.node != state.config.node_id:
            raise Forbidden("a member joins through their own home node", code="wrong_origin")
        after, stored, stamp = communities.accept(hosted, address, event, parsed=parsed, raw=raw)
        outbox = await communities.fan_out(hosted.state if hosted else None, after.state, [stored])
        # Queue the write and adopt the new state, then let the next submission in while
        # this one is committed: concurrent posts share one fsync (group commit). Writes
        # reach the store in the order queued here; if this one fails, the ones queued on
        # top of it fail their sequence check too, and the cached state is dropped.
        write = communities.pending(address.id, state.store.append_community_events(
            communities.row(after.state, caller.now, about), [stored], outbox=outbox, now=caller.now,
            nonce=caller.nonce, patient=caller.patient, signer=caller.auth.device))
        communities.remember(address.id, after)
    try:
        await write
    except BaseException:
        communities.failed(address.id, sha256(raw))
        raise
    communities.committed(address.id, after)
    if outbox:
        state.federation.notify()
    return reply({"community": str(address), "seq": stored.seq, "stamp": stamp})


@routes.post("/v1/communities/read")
async def read_events(request: web.Request) -> web.Response:
    """Events of a community from ``after``, for a member: the request carries a proof
    signed by a member key this node's copy of the community lets read. (A POST, so that
    no community id appears in a URL, and so in no access log.)"""
    state = request.app[NODE]
    caller = await authenticate(request)
    await state.store.check_signer(caller.patient, caller.auth.device)
    f = fields(caller.body, "read", {"community": pc.CommunityAddress.parse, "proof": anything},
               {"after": integer(0, pc.MAX_SEQ), "limit": integer(1, PAGE)})
    address = f["community"]
    member = pc.open_read_proof(f["proof"], address, node=state.config.node_id, now=caller.now,
                                skew=state.config.limits.request_window_seconds)
    reader = await state.store.community_reader(address.id, address.host, member)
    if reader is None:
        # The same answer for a community this node does not know: a stranger learns nothing.
        raise NotFound("no community of yours by that address on this node", code="unknown_community")
    if not reader:
        raise Forbidden("this member key has left the community or was removed", code="not_a_member")
    row = await state.store.community(address.id, address.host)
    events = await state.store.community_events(address.id, address.host, after=f["after"] or 0,
                                                limit=f["limit"] or PAGE)
    return reply({"community": str(address), "seq": row.seq if row else 0,
                  "events": [{"seq": e.seq, "event": loads(e.event), "stamp": loads(e.stamp)} for e in events]})


@routes.post("/v1/communities/forward")
async def forward(request: web.Request) -> web.Response:
    """A moderator's client forwards a verified report to the sender's home node ``node``,
    sealed to that node's key (this node relays bytes it cannot read)."""
    state = request.app[NODE]
    caller = await authenticate(request)
    f = fields(caller.body, "forward", {"community": pc.CommunityAddress.parse, "node": pc.node_id,
                                        "sealed": b64(max_length=MAX_FORWARD)})
    address, node = f["community"], f["node"]
    if node == state.config.node_id:
        await state.communities.keep_forward(node, address, f["sealed"])
        return reply({"community": str(address), "node": node, "queued": False})
    await state.federation.check_deliverable(node)
    wire = canonical(WireEvent(FORWARD, {"community": str(address), "sealed": b64e(f["sealed"])}).to_json())
    await state.store.relay(node, wire, now=caller.now, nonce=caller.nonce, patient=caller.patient,
                            signer=caller.auth.device)
    state.federation.notify()
    return reply({"community": str(address), "node": node, "queued": True}, status=202)


def install(state) -> None:
    """Wire communities into a node: state, federation handlers."""
    state.communities = CommunityService(state)
    state.federation.handlers[SUBMIT] = state.communities.on_submit
    state.federation.serialised.add(SUBMIT)
    state.federation.ordered.add(SUBMIT)
    state.federation.handlers[EVENT] = state.communities.on_event
    state.federation.handlers[FORWARD] = state.communities.on_forward
    # A community's history is a log its members' nodes need whole: its events wait for a
    # peer that is away rather than die by age (spec/federation.md §4.1).
    state.federation.logs.update((SUBMIT, EVENT))
