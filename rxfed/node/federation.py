"""Federation I/O: peer key discovery with SSRF guards, the outbox worker, the inbox.

The protocol decisions live in :mod:`rxfed.protocol.federation`; this module fetches,
sends, retries and persists.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import random
import secrets
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import attrs
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

from rxfed.crypto import fingerprint
from rxfed.errors import BadRequest, Forbidden, RateLimited, RxfedError, Unauthorized, Unavailable
from rxfed.node.guards import RateLimiter
from rxfed.protocol.auth import sign_request
from rxfed.protocol.canonical import canonical, loads
from rxfed.protocol.delivery import WINDOW as WINDOW_CLOSED, Breaker, DeliveryPolicy, PeerDelivery
from rxfed.protocol.federation import (
    PROTOCOL_VERSIONS,
    EventResult,
    NodeDocument,
    Transaction,
    WireEvent,
    keys_from_json,
    keys_json,
    negotiate,
    node_id_ok,
    transaction_body,
)
from rxfed.store import CommunityEvent, CommunityRow, Inbound, Peer

log = logging.getLogger("rxfed.federation")

POLICIES = ("known", "allowed", "denied", "blocked")
#: How often the inbox is pruned (seconds).
PRUNE_EVERY = 600
#: Seconds a worker among several holds a destination's outbox once it took it, renewed
#: every third of that while it delivers: a worker that dies leaves it to the others after
#: at most this long.
LEASE_SECONDS = 15
#: Origins whose failed key fetch is remembered at once (the oldest are forgotten first).
MAX_FAILED_FETCHES = 10_000


class PeerRefused(Forbidden):
    code = "peer_refused"


class KeyDocumentUnavailable(RateLimited):
    """The origin's key document cannot be had now (fetch failed recently, or the fetch
    budget is spent): 503 with ``Retry-After``, and no fetch."""

    status = 503
    code = "unavailable"


def _trusts(doc: NodeDocument, key: bytes) -> bool:
    return any(k.public_key == key for k in doc.keys)


class DeliveryError(Exception):
    """A transaction did not reach its destination (retried later). ``retry_after`` is set
    when the destination answered 429: it is up and asks us to slow down."""

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    return ip.is_global and not ip.is_multicast


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def peer_tls_context(ca_bundle: Path | None) -> ssl.SSLContext | None:
    """The TLS context for peers' HTTPS: None for the system's CAs, else one trusting only
    ``[federation] ca_bundle`` (a hospital network's own CA). Raises ``ssl.SSLError`` or
    ``OSError`` for a file that is not a PEM file of certificates (``rxfed node check``
    says so first)."""
    if ca_bundle is None:
        return None
    return ssl.create_default_context(cafile=str(ca_bundle))


class GuardedResolver(AbstractResolver):
    """Resolves names but drops private, loopback and link-local addresses unless the name
    belongs to a peer the operator allowed explicitly: a stranger cannot make the node
    connect to its own network (server-side request forgery), also not by DNS rebinding,
    since the check applies to the very addresses the connection uses."""

    def __init__(self, allowed: Callable[[], set[tuple[str, int]]]):
        self._inner = DefaultResolver()
        self._allowed = allowed

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
        found = await self._inner.resolve(host, port, family)
        # Exactly the allowed peer's host *and port*: allowing one service on a private
        # host must not open the host's other ports to strangers.
        if (host.lower(), port) in self._allowed():
            return found
        public = [r for r in found if _is_public(r["host"])]
        if not public:
            raise OSError(f"refusing to connect to {host}: it resolves to private addresses only")
        return public

    async def close(self) -> None:
        await self._inner.close()


@attrs.frozen
class InboundEffects:
    """What applying inbound events changes, written in one store transaction."""

    communities: list[tuple[CommunityRow, list[CommunityEvent]]] = attrs.Factory(list)
    outbox: list[tuple[str, bytes]] = attrs.Factory(list)
    #: Run once the store has committed (to update in-memory caches).
    after_commit: list[Callable[[], None]] = attrs.Factory(list)


#: An inbound handler takes (origin, events of its kind) and returns a result per event
#: (in order) plus the effects to persist.
InboundHandler = Callable[[str, list[WireEvent]], Awaitable[tuple[list[EventResult], InboundEffects]]]


class FederationService:
    """One node's view of its peers: policy, keys, the HTTP client and the outbox worker."""

    def __init__(self, state, *, rng: random.Random | None = None):
        self.state = state
        self.settings = s = state.config.federation
        #: Backoff jitter; a test passes a seeded generator.
        self.rng = rng or random.Random()
        self.handlers: dict[str, InboundHandler] = {}
        #: Event kinds whose handlers validate against shared in-memory state: transactions
        #: carrying them are applied one at a time, under :attr:`lock`.
        self.serialised: set[str] = set()
        #: Event kinds whose order across transactions matters: such a transaction goes
        #: alone (:meth:`DeliveryPolicy.goes_alone`).
        self.ordered: set[str] = set()
        #: Event kinds forming a log the receiver needs whole: they never become dead
        #: letters by age, they wait (:meth:`DeliveryPolicy.may_die`).
        self.logs: set[str] = set()
        #: Transactions accepted per origin (token bucket; 429 with Retry-After beyond).
        self.inbound = RateLimiter(s.inbound_per_second, s.inbound_burst, clock=state.clock)
        #: Key document fetches for origins not cached, all origins together.
        self._fetch_budget = RateLimiter(s.key_fetches_per_minute / 60.0, max(1, s.key_fetches_per_minute // 6),
                                         clock=state.clock)
        #: Per origin, until when a failed fetch is remembered, and what it said.
        self._fetch_failed: dict[str, tuple[float, RxfedError]] = {}
        #: Fetches in progress: concurrent requests naming one origin share one fetch.
        self._fetching: dict[str, asyncio.Future] = {}
        self._next_prune = 0.0
        #: Per origin, until when its transactions do not close our breaker for it again.
        self._seen_until: dict[str, float] = {}
        self._documents: dict[str, tuple[NodeDocument, float]] = {}
        self._allowed_hosts: set[tuple[str, int]] = set()
        #: Per peer, what its cached document depends on in the store (url, pin, trusted keys).
        self._trust: dict[str, tuple] = {}
        self._session: aiohttp.ClientSession | None = None
        self._wake = asyncio.Event()
        self._active: dict[str, asyncio.Task] = {}
        self._task: asyncio.Task | None = None
        self._failing: set[str] = set()
        self._succeeded: set[str] = set()
        #: Serialises everything that validates against and then changes shared state
        #: (inbound transactions, local community submissions).
        self.lock = asyncio.Lock()
        self._stopping = False
        #: Among several workers (``node run --workers N``): this process's name on the
        #: destinations' outbox leases; None for a node of one process, which needs none.
        self.holder: str | None = None if state.worker is None else f"{os.getpid()}-{secrets.token_hex(6)}"
        self._renewing: asyncio.Task | None = None

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def policy(self) -> DeliveryPolicy:
        return DeliveryPolicy.from_settings(self.settings, ordered=self.ordered, logs=self.logs)

    def _now(self) -> float:
        return self.state.clock()

    async def start(self) -> None:
        await self._refresh_allowed()
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(lambda: self._allowed_hosts), limit_per_host=4,
                                         ssl=peer_tls_context(self.state.config.ca_bundle) or True)
        self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(
            total=self.settings.request_timeout), auto_decompress=False)
        self._task = asyncio.create_task(self._run(), name="rxfed-outbox")
        if self.holder is not None:
            self._renewing = asyncio.create_task(self._renew_leases(), name="rxfed-outbox-leases")

    async def stop(self) -> None:
        # A flag as well as cancellation: a cancel that races a wake-up must not be lost.
        self._stopping = True
        tasks = [t for t in [self._task, self._renewing, *self._active.values()] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def notify(self) -> None:
        """Something was queued: deliver now rather than at the next timer."""
        self._wake.set()

    async def _refresh_allowed(self) -> None:
        hosts, trust = set(), {}
        for peer in await self.state.store.peers():
            if peer.policy == "allowed":
                hosts.add(_host_port(self.url_for(peer)))
            trust[peer.node_id] = (peer.url, peer.fingerprint, peer.trusted_keys)
        self._allowed_hosts = hosts
        self._trust = trust

    async def refresh_policies(self) -> None:
        """Pick up what ``rxfed node peers`` changed in the store: allowed hosts, and a
        peer's URL, pin or forgotten keys (its cached document no longer holds)."""
        hosts, trust = self._allowed_hosts, self._trust
        await self._refresh_allowed()
        if self._allowed_hosts != hosts:
            self._documents.clear()
            self._fetch_failed.clear()
            return
        for node_id, depends in self._trust.items():
            if trust.get(node_id) != depends:
                self._documents.pop(node_id, None)
                self._fetch_failed.pop(node_id, None)

    async def policy_changed(self) -> None:
        await self._refresh_allowed()
        self._documents.clear()
        self._fetch_failed.clear()
        self.notify()

    # -- peers -----------------------------------------------------------------------------
    @staticmethod
    def url_for(peer: Peer | None, node_id: str | None = None) -> str:
        if peer is not None and peer.url:
            return peer.url.rstrip("/")
        return f"https://{node_id or peer.node_id}"

    def _check_url(self, peer: Peer | None, url: str) -> None:
        parts = urlsplit(url)
        allowed = peer is not None and peer.policy == "allowed" and _host_port(url) in self._allowed_hosts
        host = parts.hostname or ""
        if parts.scheme != "https" and not (allowed and _is_loopback(host)):
            raise PeerRefused(f"peers talk HTTPS off loopback; {url} is not allowed")
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return
        if not allowed and not _is_public(str(literal)):
            raise PeerRefused(f"refusing to contact private address {host} of a peer not explicitly allowed")

    async def check_deliverable(self, destination: str) -> None:
        """Raise :class:`PeerRefused` saying why, when this node will not exchange events
        with ``destination`` (blocked or denied, not allowed in allowlist mode, or an address
        it refuses to contact): a local patient learns it at once, instead of from something
        queued that never leaves."""
        peer, block = await self.state.store.peer_and_block(destination)
        policy = peer.policy if peer else "known"
        reason = None
        if policy == "blocked":
            reason = "this node blocks it: nothing is sent there"
        elif block is not None and block.severity == "suspend":
            reason = f"this node suspends {', '.join(block.domains)}: nothing is sent there"
        elif policy == "denied":
            reason = "this node refuses its traffic, so nothing it sends back would be accepted"
        elif self.settings.mode == "allowlist" and policy != "allowed":
            reason = "this node federates with allowed peers only, and it is not one"
        else:
            try:
                self._check_url(peer, self.url_for(peer, destination))
            except PeerRefused as exc:
                reason = exc.message
        if reason is not None:
            raise PeerRefused(f"your home node will not deliver to {destination}: {reason}. Its operator decides "
                              "which nodes it talks to (`rxfed node peers`)")

    async def check_inbound(self, origin: str) -> Peer | None:
        if not node_id_ok(origin):
            raise BadRequest("malformed origin node id", code="bad_origin")
        if origin == self.state.config.node_id:
            raise Unauthorized("a node does not send itself transactions", code="wrong_origin")
        peer, block = await self.state.store.peer_and_block(origin)
        policy = peer.policy if peer else "known"
        if policy in ("denied", "blocked"):
            raise PeerRefused(f"this node does not accept traffic from {origin}")
        if block is not None and block.severity == "suspend":
            raise PeerRefused(f"this node suspends {origin}: it accepts no traffic from it")
        if self.settings.mode == "allowlist" and policy != "allowed":
            raise PeerRefused(f"this node federates with allowed peers only; {origin} is not one")
        return peer

    async def document(self, node_id: str, *, need_key: bytes | None = None) -> NodeDocument:
        """The peer's key document as this node trusts it (``keys`` holds only trusted keys,
        :meth:`_trusted`): cached in memory and in the store, refetched when a key it signs
        with is not a trusted one (a rotation), at most every ``key_refetch`` seconds. The
        trust decision is made once per document, so verifying a request stays a look-up."""
        cached = self._documents.get(node_id)
        if cached is not None and (need_key is None or _trusts(cached[0], need_key)):
            return cached[0]
        peer = await self.state.store.peer(node_id)
        if cached is None and peer is not None and peer.document:
            try:
                doc = NodeDocument.from_json(loads(peer.document))
                cached = (await self._trusted(peer.node_id, peer, doc, peer.document, peer.fetched or 0),
                          peer.fetched or 0)
                self._documents[node_id] = cached
            except RxfedError:
                cached = None
        if cached is not None and (need_key is None or _trusts(cached[0], need_key)):
            return cached[0]
        if cached is not None and self._now() - cached[1] < self.settings.key_refetch:
            return cached[0]  # not a trusted key, but we asked recently: the caller will refuse
        doc = await self._fetch_once(node_id, peer, known=cached is not None)
        self._documents[node_id] = (doc, self._now())
        return doc

    async def _fetch_once(self, node_id: str, peer: Peer | None, *, known: bool) -> NodeDocument:
        """Fetch ``node_id``'s document, at most one fetch per origin at a time (the others
        wait for it), none for an origin whose fetch failed within ``key_failure_ttl``
        seconds (the failure is answered again), and, for origins not cached before, within
        the node's fetch budget: a stream of requests naming strangers costs a refusal each,
        not a connection each."""
        now = self._now()
        failed = self._fetch_failed.get(node_id)
        if failed is not None:
            if failed[0] > now:
                raise KeyDocumentUnavailable(failed[1].message, retry_after=failed[0] - now)
            del self._fetch_failed[node_id]
        pending = self._fetching.get(node_id)
        if pending is not None:
            return await asyncio.shield(pending)
        if not known:
            try:
                self._fetch_budget.take("fetch")
            except RateLimited as exc:
                raise KeyDocumentUnavailable(f"cannot fetch the key document of {node_id} now; try again later",
                                             retry_after=exc.retry_after) from None
        future = asyncio.get_running_loop().create_future()
        self._fetching[node_id] = future
        try:
            doc = await self._fetch_document(node_id, peer)
        except RxfedError as exc:
            if not isinstance(exc, PeerRefused):
                self._remember_failure(node_id, exc)
            future.set_exception(exc)
            future.exception()  # retrieved: no warning when nobody else waited
            raise
        except BaseException:
            future.set_exception(Unavailable(f"cannot fetch the key document of {node_id}"))
            future.exception()
            raise
        else:
            future.set_result(doc)
            return doc
        finally:
            self._fetching.pop(node_id, None)

    def _remember_failure(self, node_id: str, exc: RxfedError) -> None:
        now = self._now()
        if len(self._fetch_failed) >= MAX_FAILED_FETCHES:
            self._fetch_failed = {k: v for k, v in self._fetch_failed.items() if v[0] > now}
            while len(self._fetch_failed) >= MAX_FAILED_FETCHES:
                del self._fetch_failed[next(iter(self._fetch_failed))]
        self._fetch_failed[node_id] = (now + self.settings.key_failure_ttl, exc)

    async def _fetch_document(self, node_id: str, peer: Peer | None) -> NodeDocument:
        if self.settings.mode == "allowlist" and (peer is None or peer.policy != "allowed"):
            raise PeerRefused(f"this node federates with allowed peers only; {node_id} is not one")
        url = self.url_for(peer, node_id)
        self._check_url(peer, url)
        try:
            async with self._session.get(url + "/.well-known/rxfed", allow_redirects=False) as resp:
                status = resp.status
                raw = await _read_capped(resp, 64 * 1024)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as exc:
            # The details stay in our log: the caller may be a stranger probing our network.
            log.info("fetching the key document of %s failed: %s", node_id, exc or type(exc).__name__)
            raise Unavailable(f"cannot fetch the key document of {node_id}") from None
        if status != 200:
            raise Unavailable(f"cannot fetch the key document of {node_id}")
        obj = loads(raw)
        doc = NodeDocument.from_json(obj)
        if doc.node_id != node_id:
            raise Unauthorized(f"{url} says it is {doc.node_id}, not {node_id}", code="wrong_node")
        negotiate(PROTOCOL_VERSIONS, doc.protocol_versions)
        return await self._trusted(node_id, peer, doc, canonical(obj), int(self._now()))

    async def _trusted(self, node_id: str, peer: Peer | None, doc: NodeDocument, raw: bytes,
                       fetched: int) -> NodeDocument:
        """``doc`` as this node trusts it, and the trusted keys remembered with it. The
        anchors are the keys trusted before; before any, the operator's pin (a listed key
        with that fingerprint) or, unpinned, every listed key (trust on first use). Keys
        reached from the anchors by signed rotations join them; every other key is refused,
        as a changed host key is by SSH, until the operator accepts it."""
        if peer is not None and peer.trusted_keys:
            anchors = keys_from_json(peer.trusted_keys)
        elif peer is not None and peer.fingerprint:
            anchors = tuple(k for k in doc.keys if fingerprint(k.public_key) == peer.fingerprint)
            if not anchors:
                raise Unauthorized(f"{node_id} does not publish the pinned key {peer.fingerprint}", code="pin_mismatch")
        else:
            anchors = doc.keys
        view = doc.trusting(anchors)
        if view.untrusted:
            log.warning("%s publishes key(s) %s that are neither trusted for it nor signed by a trusted key; their "
                        "requests are refused. If %s really changed keys, check the fingerprint with its operator and "
                        "accept it: rxfed node peers DATA_DIR %s", node_id,
                        ", ".join(sorted(fingerprint(k) for k in view.untrusted)), node_id,
                        f"allow {node_id} --fingerprint SHA256:..." if peer is not None and peer.fingerprint
                        else f"accept-key {node_id}")
        trusted = keys_json(view.keys)
        if peer is None or trusted != peer.trusted_keys or raw != peer.document or fetched != peer.fetched:
            await self.state.store.save_peer_document(node_id, raw, fetched, trusted)
        return view

    # -- outbound --------------------------------------------------------------------------
    async def send_events(self, destination: str, events: list[WireEvent]) -> None:
        """Queue events for a peer (durably) and wake the worker."""
        await self.state.store.enqueue([(destination, canonical(e.to_json())) for e in events], self.state.now())
        self.notify()

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                next_ms = await self._start_due()
                await self._prune_inbox()
            except RxfedError as exc:
                log.warning("outbox scan failed: %s", exc.message)
                next_ms = None
            timeout = 30.0 if next_ms is None else max(0.0, next_ms / 1000 - self._now())
            try:
                async with asyncio.timeout(min(timeout, 30.0)):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _prune_inbox(self) -> None:
        """Forget replies to transactions older than the retry horizon (see
        :meth:`inbox_horizon`): the inbox stays as large as a few days of traffic."""
        now = self._now()
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY
        pruned = await self.state.store.prune_inbox(int(now) - self.inbox_horizon())
        if pruned:
            log.info("inbox: forgot %d transaction(s) past the retry horizon", pruned)

    def inbox_horizon(self) -> int:
        """How long (seconds) a received transaction's reply is kept: twice ``dead_after``
        (a sender with our settings stops retrying after ``dead_after``; the margin covers
        peers configured longer) plus the request window. A retry arriving later still
        changes nothing: every event kind is idempotent on its own (spec/federation.md §4)."""
        return 2 * self.settings.dead_after + self.state.config.limits.request_window_seconds

    async def _start_due(self) -> int | None:
        now = self._now()
        policy = self.policy
        soonest = None
        for destination, when in await self.state.store.due_destinations():
            if destination in self._active:
                continue
            peer, block = await self.state.store.peer_and_block(destination)
            if peer is not None and peer.policy == "blocked":
                continue
            if block is not None and block.severity == "suspend":
                continue  # kept, as for a blocked peer: lifting the suspension sends it
            due = policy.due(_delivery_state(peer), when, now)
            if due.at_ms and due.at_ms > now * 1000:
                soonest = due.at_ms if soonest is None else min(soonest, due.at_ms)
                continue
            if self.holder is not None and not await self.state.store.take_lease(
                    destination, self.holder, now=int(now), seconds=LEASE_SECONDS):
                # Another worker delivers it; if that one dies, its lease lapses.
                at_ms = (int(now) + LEASE_SECONDS) * 1000
                soonest = at_ms if soonest is None else min(soonest, at_ms)
                continue
            self._active[destination] = asyncio.create_task(self._deliver(destination, due.window))
        return soonest

    async def _deliver(self, destination: str, window: int) -> None:
        """Send a destination's transactions, up to ``window`` at once (receivers apply them
        in any order; 1 for a half-open breaker's trial), until its queue is empty or a send
        fails."""
        s, store, policy = self.settings, self.state.store, self.policy
        may_die = policy.may_die if _has_answered(await store.peer(destination)) else _any_may_die
        in_flight: dict[asyncio.Task, object] = {}
        alone: set[str] = set()  # the ids of transactions in flight that go alone
        failed = False
        try:
            while True:
                while not failed and len(in_flight) < window and not alone:
                    now = self._now()
                    txn = await store.next_transaction(destination, max_events=s.max_batch, now=int(now),
                                                       dead_after=s.dead_after, may_die=may_die,
                                                       exclude=[t.txn_id for t in in_flight.values()])
                    if txn is None or txn.next_attempt_ms > now * 1000:
                        break
                    if policy.goes_alone(txn.events):
                        if in_flight:
                            break  # it waits until the transactions before it are acknowledged
                        alone.add(txn.txn_id)
                    in_flight[asyncio.create_task(self._send(destination, txn))] = txn
                if not in_flight:
                    return
                done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    txn = in_flight.pop(task)
                    alone.discard(txn.txn_id)
                    exc = task.exception()
                    if exc is None:
                        await store.transaction_delivered(txn.txn_id)
                        if destination in self._failing or destination not in self._succeeded:
                            # (also once per destination after a restart: a stored failure
                            # count or open breaker is cleared by the first success)
                            await self._closed(destination, policy)
                        window = max(window, WINDOW_CLOSED)  # a trial that succeeded closes the breaker
                    else:
                        failed = True  # no new sends; let the others finish, then back off
                        if not isinstance(exc, (DeliveryError, RxfedError)):
                            log.error("delivery to %s failed unexpectedly: %r", destination, exc)
                        await self._failed(destination, txn, exc, policy)
        except asyncio.CancelledError:
            for task in in_flight:
                task.cancel()
            raise
        except Exception:
            log.exception("delivery to %s failed unexpectedly", destination)
            for task in in_flight:
                task.cancel()
        finally:
            if self.holder is not None:
                try:  # before the scan: rows queued by another worker meanwhile are seen by it
                    await self.state.store.drop_lease(destination, self.holder)
                except BaseException as exc:  # noqa: BLE001 - it lapses on its own
                    log.debug("dropping the outbox lease of %s failed: %r", destination, exc)
            self._active.pop(destination, None)
            self._wake.set()

    async def _renew_leases(self) -> None:
        """Keep the leases of the destinations this worker delivers to."""
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            now = int(self.state.clock())
            for destination, task in list(self._active.items()):
                try:
                    kept = await self.state.store.take_lease(destination, self.holder, now=now,
                                                             seconds=LEASE_SECONDS)
                except RxfedError as exc:
                    log.warning("renewing the outbox lease of %s failed: %s", destination, exc.message)
                    continue
                if not kept:  # taken over after it lapsed (this worker stalled): stop sending
                    log.warning("the outbox of %s is delivered by another worker now", destination)
                    task.cancel()

    async def _closed(self, destination: str, policy: DeliveryPolicy) -> None:
        peer = await self.state.store.peer(destination)
        policy.on_delivered(_delivery_state(peer), self._now())
        self._failing.discard(destination)
        self._succeeded.add(destination)
        await self.state.store.peer_delivery(destination, ok=True, now=self.state.now())

    async def _failed(self, destination: str, txn, exc: BaseException, policy: DeliveryPolicy) -> None:
        message = exc.message if isinstance(exc, RxfedError) else str(exc)
        now = self._now()
        peer = _delivery_state(await self.state.store.peer(destination))
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            retry = policy.on_throttled(peer, retry_after, now)
            if retry.peer != peer:  # it answers: a half-open breaker closes
                self._failing.discard(destination)
                await self.state.store.peer_delivery(destination, ok=True, now=int(now))
        else:
            retry = policy.on_failure(peer, txn.attempts, now, self.rng)
            self._failing.add(destination)
            await self.state.store.peer_delivery(destination, ok=False, now=int(now), error=message,
                                                 breaker_until=retry.peer.breaker_until)
        await self.state.store.transaction_failed(txn.txn_id, error=message, next_attempt_ms=int(retry.retry_at * 1000))
        if retry.breaker is Breaker.OPEN and retry.peer.breaker_until is not None:
            # The cool-down replaces every transaction's own backoff: all wait for its end,
            # and the oldest is then the trial.
            await self.state.store.reschedule_transactions(destination,
                                                           next_attempt_ms=retry.peer.breaker_until * 1000)
        log.info("delivery to %s failed (attempt %d): %s; retry in %.1fs%s", destination, txn.attempts + 1,
                 message, retry.delay, " (breaker open)" if retry.breaker is Breaker.OPEN else "")

    async def peer_seen(self, origin: str, peer: Peer | None) -> None:
        """An authenticated transaction from ``origin`` arrived: it is up. If deliveries to
        it were failing, its breaker closes and what waits for it goes now, instead of after
        the cool-down and each transaction's backoff."""
        if origin not in self._failing and (peer is None or (not peer.failures and peer.breaker_until is None)):
            return
        now = self._now()
        if now < self._seen_until.get(origin, 0):
            # Closed on its word within the cool-down already: a peer that talks to us but
            # fails our deliveries (it refuses them, or only its inbound path is broken) is
            # retried at most that often, not on each of its transactions.
            return
        self._seen_until[origin] = now + self.settings.breaker_cooldown
        if len(self._seen_until) > 10_000:
            self._seen_until = {k: v for k, v in self._seen_until.items() if v > now}
        self.policy.on_peer_seen(_delivery_state(peer), now)
        self._failing.discard(origin)
        await self.state.store.peer_recovered(origin, now=self.state.now())
        log.info("%s is reachable again (it sent us a transaction): delivering to it now", origin)
        self.notify()

    def _signer(self, destination: str, path: str, body: bytes, method: str = "PUT"):
        """A client middleware that signs each attempt of a request anew. aiohttp resends an
        idempotent request (PUT) once by itself when a kept-alive connection drops; with
        headers signed once, that resend carries the nonce the receiver may already have
        seen, and is refused as a replay. Signed here, every attempt has its own nonce."""
        async def sign(request: aiohttp.ClientRequest, handler) -> aiohttp.ClientResponse:
            request.headers.update(sign_request(self.state.signing_key(), method=method, target=path,
                                                destination=destination, origin=self.state.config.node_id,
                                                body=body, now=self.state.now()))
            return await handler(request)

        return sign

    async def post(self, destination: str, path: str, body: bytes, *, limit: int,
                   content_type: str = "application/octet-stream") -> tuple[int, bytes]:
        """A signed ``POST`` of ``body`` to a peer, outside the outbox (an exchange that
        needs its answer now, such as a matching session's step): ``(status, answer)``, the
        answer at most ``limit`` bytes. :class:`PeerRefused` for a peer this node does not
        contact, :class:`DeliveryError` when it cannot be reached."""
        peer = await self.state.store.peer(destination)
        await self.check_deliverable(destination)
        url = self.url_for(peer, destination)
        self._check_url(peer, url)
        if self._session is None:
            raise DeliveryError("the node is not running its federation client")
        try:
            async with self._session.post(url + path, data=body, headers={"Content-Type": content_type},
                                          allow_redirects=False,
                                          middlewares=(self._signer(destination, path, body, "POST"),)) as resp:
                return resp.status, await _read_capped(resp, limit)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None

    async def _send(self, destination: str, txn) -> dict:
        peer = await self.state.store.peer(destination)
        url = self.url_for(peer, destination)
        self._check_url(peer, url)
        body = transaction_body(self.state.config.node_id, destination, txn.seq, list(txn.events))
        path = f"/federation/v1/transactions/{txn.txn_id}"
        try:
            async with self._session.put(url + path, data=body, headers={"Content-Type": "application/json"},
                                         allow_redirects=False,
                                         middlewares=(self._signer(destination, path, body),)) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After", "")
                raw = await _read_capped(resp, 16 * 1024 * 1024)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
        if status != 200:
            detail = ""
            try:
                detail = loads(raw).get("message", "")
            except (RxfedError, AttributeError):
                pass
            throttled = None
            if status == 429:
                throttled = float(retry_after) if retry_after.isascii() and retry_after.isdigit() else 1.0
            raise DeliveryError(f"{destination} answered {status} {detail}".strip(), retry_after=throttled)
        try:
            reply = loads(raw)
            results = reply["results"]
            if not isinstance(results, list) or len(results) != len(txn.events):
                raise ValueError("results")
        except (RxfedError, KeyError, TypeError, ValueError):
            raise DeliveryError(f"{destination} answered 200 with a malformed reply") from None
        rejected = [r for r in results if isinstance(r, dict) and not r.get("ok")]
        if rejected:
            log.warning("%s rejected %d event(s) of transaction %s: %s", destination, len(rejected), txn.txn_id,
                        "; ".join(f"{r.get('error')}" for r in rejected[:3]))
        if isinstance(reply.get("missing"), list) and reply["missing"]:
            log.info("%s reports missing transactions %s", destination, reply["missing"][:10])
        return reply

    # -- inbound ---------------------------------------------------------------------------
    def parse_inbound(self, origin: str, txn_id: str, body: Any) -> Transaction:
        """The transaction a request carries, checked against who claims to send it and who
        receives it. It needs no key, so it comes before any key look-up: a malformed request
        costs no fetch."""
        txn = Transaction.from_json(txn_id, body)
        txn.check_route(signed_origin=origin, me=self.state.config.node_id)
        return txn

    async def receive(self, origin: str, txn: Transaction, nonce, *, peer: Peer | None = None) -> bytes:
        """Apply an authenticated transaction (once; a retry gets the stored reply)."""
        self.inbound.take(origin)
        await self.peer_seen(origin, peer)
        txn_id = txn.txn_id
        stored = await self.state.store.inbox_reply(origin, txn_id)
        if stored is not None:
            return inbound_reply(stored)
        if any(e.kind in self.serialised for e in txn.events):
            async with self.lock:
                return await self._apply(origin, txn, nonce)
        # Kinds whose handlers keep no in-memory state apply without the lock (the store
        # makes them idempotent), so transactions from several peers proceed together.
        return await self._apply(origin, txn, nonce)

    async def _apply(self, origin: str, txn: Transaction, nonce) -> bytes:
        results: list[EventResult | None] = [None] * len(txn.events)
        effects = InboundEffects()
        by_kind: dict[str, list[int]] = {}
        for i, event in enumerate(txn.events):
            by_kind.setdefault(event.kind, []).append(i)
        for kind, positions in by_kind.items():
            handler = self.handlers.get(kind)
            if handler is None:
                for i in positions:
                    results[i] = EventResult(False, "unknown_kind", f"this node does not handle {kind!r} events")
                continue
            outcomes, more = await handler(origin, [txn.events[i] for i in positions])
            for i, outcome in zip(positions, outcomes):
                results[i] = outcome
            effects.communities.extend(more.communities)
            effects.outbox.extend(more.outbox)
            effects.after_commit.extend(more.after_commit)
        inbound = await self.state.store.apply_inbound(
            origin, txn.txn_id, txn.seq, results=canonical([r.to_json() for r in results]),
            communities=effects.communities, outbox=effects.outbox, nonce=nonce, now=self.state.now())
        reply = inbound_reply(inbound)
        for update in effects.after_commit:
            update()
        if effects.outbox:
            self.notify()
        return reply


def inbound_reply(inbound: Inbound) -> bytes:
    """The reply to a received transaction, from what the store kept of it (the same bytes
    for the first answer and for every retry)."""
    return canonical({"results": loads(inbound.results), "missing": list(inbound.missing)})


def _has_answered(peer: Peer | None) -> bool:
    """Whether a log queued for ``peer`` waits for it past ``dead_after``: only for a peer
    the operator allowed, one that accepted a delivery, or one whose keys this node holds.
    Patients name the hosts they submit to; a log for a host that never answered stalls
    nothing behind it, and waiting for it would keep the node retrying any name a client
    made up, for ever."""
    return peer is not None and (peer.policy == "allowed" or peer.last_success is not None
                                 or peer.trusted_keys is not None)


def _any_may_die(event: bytes) -> bool:
    return True


def _delivery_state(peer: Peer | None) -> PeerDelivery:
    return PeerDelivery() if peer is None else PeerDelivery(peer.failures, peer.breaker_until)


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body (a single read returns only what has arrived), at most ``limit`` bytes."""
    chunks, size = [], 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ValueError(f"answer larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
