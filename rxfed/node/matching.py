"""Cross-node matching on a node: what it offers, PSI sessions with allowed peers (asking
and answering), the schedule, and a consenting patient's suggestions.

The rules live in :mod:`rxfed.protocol.psi` (the intersection) and
:mod:`rxfed.protocol.matching` (threshold, bucketed counts, framing); plugins serving the
``matching`` purpose name the category each consented signal puts its patient in
(``rxfed_matching_categories``). Everything a session needs between two requests, its log,
the peers' stated counts and the schedule live in the store, so several worker processes
can serve one node. A session is three signed requests from the initiator
(spec/federation.md, "Matching")::

    POST /v1/matching/sessions               hello_I            -> hello_R, blinded_R
    POST /v1/matching/sessions/{id}/blinded  blinded_I, commit_I -> commit_R, reveal_R
    POST /v1/matching/sessions/{id}/reveal   reveal_I, counts_I  -> counts_R
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

import attrs
from aiohttp import web

from rxfed.consent.grants import Recipient
from rxfed.consent.signals import Signal
from rxfed.errors import Conflict, Forbidden, NotFound, RateLimited, RxfedError
from rxfed.node.federation import DeliveryError, PeerRefused
from rxfed.node.http import NODE, admit, authenticate, reply, signed_by_a_node
from rxfed.node.listener import LISTENER, read_body
from rxfed.protocol import matching as pm
from rxfed.protocol import psi
from rxfed.protocol.canonical import loads
from rxfed.store import MatchingSession

log = logging.getLogger("rxfed.matching")
routes = web.RouteTableDef()

#: What every session's hash-to-group names as the federation (both sides must agree).
FEDERATION = "rxfed"
INITIATOR, RESPONDER = "initiator", "responder"
#: The largest hello (three names of at most 255 bytes and a header).
MAX_HELLO = 1024
#: The largest counts message.
MAX_COUNTS_BYTES = 64 * 1024
_SESSION_ID = re.compile(r"[0-9a-f]{32}")


@attrs.frozen
class Offer:
    """What this node offers now: per category, how many of its patients consented (only
    categories with at least ``k``), and per patient the categories they are in."""

    counts: dict[str, int]
    by_patient: dict[str, frozenset[str]]


class MatchingService:
    """A node's matching (installed as ``state.matching``)."""

    def __init__(self, state):
        self.node = state
        self.settings = state.config.matching
        self.limits = psi.PsiLimits(max_elements=self.settings.max_elements)
        self._task: asyncio.Task | None = None
        self._running: dict[str, asyncio.Task] = {}

    @property
    def me(self) -> str:
        return self.node.config.node_id

    @property
    def k(self) -> int:
        return self.settings.k

    def active(self) -> bool:
        return self.settings.enabled and bool(self.node.plugins.matchers())

    def check_active(self) -> None:
        if not self.active():
            raise NotFound("this node does not run matching", code="matching_off")

    # -- what this node offers ---------------------------------------------------------------
    async def offer(self) -> Offer:
        """Counted from the store at each call: a revoked or expired grant is out of the next
        session and the next suggestion at once."""
        plugins = self.node.plugins
        pairs: list[tuple[str, str]] = []
        now = self.node.now()
        for name in plugins.matchers():
            manifest = plugins.manifests()[name]
            for kind in manifest.reads:
                members = [m for m in await self.node.store.matching_members(self.me, kind, pm.PURPOSE, now)
                           if Recipient.parse(m.recipient).covers(self.me, name)]
                if not members:
                    continue
                signals = [Signal(kind, loads(m.body), m.subject, pm.PURPOSE, m.token, self.me, now) for m in members]
                named = await plugins.matching_categories(name, signals)
                if named is None:
                    log.warning("plugin %r could not name matching categories; it offers nothing now", name)
                    continue
                pairs += [(m.patient, category) for m, categories in zip(members, named) for category in categories]
        by_patient: dict[str, set[str]] = {}
        for patient, category in pairs:
            by_patient.setdefault(patient, set()).add(category)
        return Offer(pm.offered_counts(pairs, k=self.k), {p: frozenset(c) for p, c in by_patient.items()})

    def stated(self, counts: dict[str, int], categories) -> dict[str, int]:
        """The counts this node states for ``categories`` (those it still offers), bucketed."""
        return {c: pm.bucket(counts[c], k=self.k) for c in sorted(categories) if c in counts}

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self._schedule(), name="rxfed-matching")

    async def stop(self) -> None:
        tasks = [t for t in [self._task, *self._running.values()] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

    async def _schedule(self) -> None:
        """Every allowed peer gets a session every ``interval`` seconds; the store's schedule
        decides which worker process runs it."""
        interval = self.settings.interval
        tick = min(max(interval / 4, 0.05), 30.0)
        while True:
            try:
                await self.tick()
            except RxfedError as exc:
                log.warning("matching schedule: %s", exc.message)
            except Exception:  # noqa: BLE001 - the schedule must survive a bug in one round
                log.exception("matching schedule failed")
            await asyncio.sleep(tick)

    async def tick(self) -> None:
        now = self.node.now()
        await self.node.store.expire_matching_sessions(now - int(self.settings.session_timeout), now)
        if not self.active():
            return
        now_ms = int(self.node.clock() * 1000)
        for peer in sorted(p.node_id for p in await self.node.store.peers() if p.policy == "allowed"):
            if peer in self._running:
                continue
            if await self.node.store.claim_matching_run(peer, now_ms=now_ms,
                                                        next_ms=now_ms + int(self.settings.interval * 1000)):
                task = asyncio.create_task(self.run_session(peer), name=f"rxfed-matching-{peer}")
                self._running[peer] = task
                task.add_done_callback(lambda _t, peer=peer: self._running.pop(peer, None))

    # -- the initiator ----------------------------------------------------------------------
    async def _step(self, peer: str, path: str, body: bytes, limit: int, parts: int) -> list[bytes]:
        status, answer = await self.node.federation.post(peer, path, body, limit=limit)
        if status != 200:
            code = "http_error"
            try:
                doc = loads(answer)
                if isinstance(doc, dict) and isinstance(doc.get("error"), str) and re.fullmatch(r"[a-z_]{1,40}",
                                                                                                   doc["error"]):
                    code = doc["error"]
            except RxfedError:
                pass
            raise _PeerAnswered(status, code)
        return pm.unpack(answer, parts, limit=limit)

    async def run_session(self, peer: str) -> MatchingSession:
        """One session with ``peer`` as the initiator, logged whatever its outcome."""
        offer = await self.offer()
        context = psi.PsiContext.new(FEDERATION, self.me, peer)
        sid = context.session_id.hex()
        row = MatchingSession(sid, INITIATOR, peer, self.node.now())
        await self.node.store.open_matching_session(row, per_day=1 << 30)
        started = time.perf_counter()
        limit = self.limits.max_message_size() * 2 + 64
        result = None
        try:
            session, hello = psi.start(context, [c.encode() for c in offer.counts], limits=self.limits)
            row = attrs.evolve(row, own_size=session.own_size, own_padded=len(session.slots))
            hello_r, blinded_r = await self._step(peer, "/v1/matching/sessions", hello, limit, 2)
            session = session.receive_hello(hello_r)
            row = attrs.evolve(row, peer_padded=session.peer_size)
            session, blinded = await asyncio.to_thread(session.blind)
            session, commitment = await asyncio.to_thread(session.receive_blinded, blinded_r)
            commitment_r, reveal_r = await self._step(peer, f"/v1/matching/sessions/{sid}/blinded",
                                                      pm.pack(blinded, commitment), limit, 2)
            session, reveal = session.receive_commitment(commitment_r)
            session, result = session.receive_reveal(reveal_r)
            common = frozenset(e.decode() for e in result.common)
            mine = self.stated((await self.offer()).counts, common)
            (counts_r,) = await self._step(peer, f"/v1/matching/sessions/{sid}/reveal",
                                           pm.pack(reveal, pm.counts_message(mine)), MAX_COUNTS_BYTES + 16, 1)
            theirs = pm.read_counts(counts_r, common=common, k=self.k)
        except _PeerAnswered as exc:
            outcome, why = f"failed:{exc.code}", f"{peer} answered {exc.status}"
        except RxfedError as exc:
            outcome, why = f"failed:{exc.code}", exc.message
        except DeliveryError as exc:
            outcome, why = "failed:unreachable", str(exc)
        else:
            row = attrs.evolve(row, finished=self.node.now(), outcome="matched", step=3, common=len(common))
            if not await self._finish(row, theirs):
                return row
            log.info("matching session with %s: %d common categories in %.2f s", peer, len(common),
                     time.perf_counter() - started)
            return row
        row = attrs.evolve(row, finished=self.node.now(), outcome=outcome)
        await self._finish(row, None)
        log.info("matching session with %s %s: %s", peer, outcome, why)
        return row

    async def _finish(self, row: MatchingSession, counts: dict[str, int] | None) -> bool:
        try:
            await self.node.store.finish_matching_session(row, counts=counts)
        except Conflict:  # it ran past session_timeout and was ended as expired: its results are dropped
            log.warning("matching session with %s ended as expired before it finished", row.peer)
            return False
        return True

    # -- the responder ----------------------------------------------------------------------
    async def open_session(self, origin: str, hello: bytes, nonce) -> bytes:
        # The peer's budget is checked before the costly blinding, and again in the write.
        since = self.node.now() - 86400
        started, open_now = await self.node.store.matching_budget(origin, RESPONDER, since)
        if open_now or started >= self.settings.sessions_per_peer_per_day:
            raise RateLimited(f"{origin} has a session open or had its {self.settings.sessions_per_peer_per_day} "
                              "matching sessions with this node today", retry_after=3600 if not open_now else 60)
        offer = await self.offer()
        session, hello_r = psi.accept(hello, federation=FEDERATION, me=self.me, peer=origin,
                                      elements=[c.encode() for c in offer.counts], limits=self.limits)
        session, blinded = await asyncio.to_thread(session.blind)
        row = MatchingSession(session.context.session_id.hex(), RESPONDER, origin, self.node.now(), step=1,
                              own_size=session.own_size, own_padded=len(session.slots), peer_padded=session.peer_size,
                              state=psi.session_to_state(session))
        await self.node.store.open_matching_session(row, per_day=self.settings.sessions_per_peer_per_day, nonce=nonce)
        return pm.pack(hello_r, blinded)

    async def _open(self, origin: str, sid: str, step: int) -> tuple[MatchingSession, psi.PsiSession]:
        row = await self.node.store.matching_session(sid, RESPONDER) if _SESSION_ID.fullmatch(sid) else None
        if row is None or row.peer != origin:
            raise NotFound("no such matching session with this peer", code="psi_wrong_session")
        if row.finished is not None or row.state is None:
            raise Conflict("the matching session has ended", code="psi_out_of_order")
        if row.step != step:
            raise Conflict("the matching session is at another step", code="psi_out_of_order")
        return row, psi.session_from_state(row.state)

    async def blinded(self, origin: str, sid: str, body: bytes, nonce) -> bytes:
        row, session = await self._open(origin, sid, 1)
        blinded_i, commitment_i = pm.unpack(body, 2, limit=self.limits.max_message_size() * 2 + 64)
        session, commitment = await asyncio.to_thread(session.receive_blinded, blinded_i)
        session, reveal = session.receive_commitment(commitment_i)
        await self.node.store.advance_matching_session(sid, RESPONDER, step=1, state=psi.session_to_state(session),
                                                       nonce=nonce)
        return pm.pack(commitment, reveal)

    async def reveal(self, origin: str, sid: str, body: bytes, nonce) -> bytes:
        row, session = await self._open(origin, sid, 2)
        reveal_i, counts_i = pm.unpack(body, 2, limit=self.limits.max_message_size() + MAX_COUNTS_BYTES)
        session, result = session.receive_reveal(reveal_i)
        common = frozenset(e.decode() for e in result.common)
        theirs = pm.read_counts(counts_i, common=common, k=self.k)
        mine = self.stated((await self.offer()).counts, common)
        await self.node.store.finish_matching_session(
            attrs.evolve(row, finished=self.node.now(), outcome="matched", step=3, common=len(common), state=None),
            counts=theirs, nonce=nonce)
        log.info("matching session from %s: %d common categories", origin, len(common))
        return pm.pack(pm.counts_message(mine))

    # -- the patient's suggestions ----------------------------------------------------------
    async def suggestions(self, patient: str, now: int) -> dict:
        live = [g for g, tokens in await self.node.store.grants(patient)
                if g.purpose == pm.PURPOSE and g.revoked is None and g.not_after > now
                and any(t.node == self.me for t in tokens)]
        if not live:
            raise Forbidden("suggestions are for patients who granted their diagnosis categories for matching "
                            "(`rxfed patient consent grant diagnosis.category matching plugin:NODE/matching`)",
                            code="no_matching_grant")
        offer = await self.offer()
        held = offer.by_patient.get(patient, frozenset())
        own = self.stated(offer.counts, held)
        allowed = {p.node_id for p in await self.node.store.peers() if p.policy == "allowed"}
        rows = await self.node.store.matching_common(sorted(own)) if own else []
        return {
            "node": self.me, "k": self.k,
            "own": [{"category": c, "node": self.me, "count": n} for c, n in own.items()],
            "suggestions": [{"id": f"{peer}/{category}", "category": category, "node": peer, "count": count,
                             "updated": updated}
                            for peer, category, count, updated in rows
                            if peer in allowed and category in own and count >= self.k],
        }


class _PeerAnswered(Exception):
    def __init__(self, status: int, code: str):
        super().__init__(f"{status} {code}")
        self.status, self.code = status, code


# -- HTTP ----------------------------------------------------------------------------------


async def authenticate_peer(request: web.Request, limit: int) -> tuple[str, bytes, object]:
    """``(origin, body, nonce)`` of a matching request signed by an allowed peer. As for a
    federation transaction, everything that needs no key comes first, and the size cap
    before any read: a request that is too large, unsigned, stale or from a peer this node
    does not match with costs no key fetch and no body read."""
    state = request.app[NODE]
    lim = state.config.limits
    signed = signed_by_a_node(state, request, limit)
    now = state.now()
    state.matching.check_active()
    waiting = request.app[LISTENER].admission.take(request)
    if waiting is not None:
        await waiting
    peer = await state.federation.check_inbound(signed.origin)
    if peer is None or peer.policy != "allowed":
        raise PeerRefused(f"this node matches with the peers its operator allowed only; {signed.origin} is not one")
    async with request.app[LISTENER].unverified():
        raw = await read_body(request, limit=limit, timeout=lim.body_timeout)
    document = await state.federation.document(signed.origin, need_key=signed.key)
    document.key_for(signed.key, signed.created)
    signed.verify(signed.key, method=request.method, target=request.raw_path, destination=state.config.node_id,
                  body=raw, now=now, window=lim.request_window_seconds)
    nonce = await admit(state, request, signed, now)
    state.federation.inbound.take(signed.origin)
    return signed.origin, raw, nonce


def _binary(data: bytes) -> web.Response:
    return web.Response(body=data, content_type="application/octet-stream")


@routes.post("/v1/matching/sessions")
async def open_session(request: web.Request) -> web.Response:
    origin, body, nonce = await authenticate_peer(request, MAX_HELLO)
    return _binary(await request.app[NODE].matching.open_session(origin, body, nonce))


@routes.post("/v1/matching/sessions/{session}/blinded")
async def blinded(request: web.Request) -> web.Response:
    service: MatchingService = request.app[NODE].matching
    origin, body, nonce = await authenticate_peer(request, service.limits.max_message_size() * 2 + 64)
    return _binary(await service.blinded(origin, request.match_info["session"], body, nonce))


@routes.post("/v1/matching/sessions/{session}/reveal")
async def reveal(request: web.Request) -> web.Response:
    service: MatchingService = request.app[NODE].matching
    origin, body, nonce = await authenticate_peer(request, service.limits.max_message_size() + MAX_COUNTS_BYTES)
    return _binary(await service.reveal(origin, request.match_info["session"], body, nonce))


@routes.get("/v1/matching/suggestions")
async def suggestions(request: web.Request) -> web.Response:
    """A consenting patient's suggestions: for each category they hold that this node
    offers, its count here and the counts peers stated, each at least ``k``."""
    state = request.app[NODE]
    caller = await authenticate(request)
    await state.store.check_signer(caller.patient, caller.auth.device)
    state.matching.check_active()
    return reply(await state.matching.suggestions(caller.patient, caller.now))


def install(state) -> None:
    state.matching = MatchingService(state)
