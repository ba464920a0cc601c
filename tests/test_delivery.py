"""Delivery between nodes under faults: the breaker's half-open trial, signs of life, logs that
must not lose a part, aiohttp's own resend, per-origin limits, and key fetches on a
stranger's say-so."""

from __future__ import annotations

import asyncio
import json
import time

import attrs
import pytest
from aiohttp import ClientSession, web

from helpers import raw_request, record_notes
from rxfed.crypto import SigningKeyPair
from rxfed.protocol.auth import sign_request
from rxfed.protocol.canonical import canonical
from rxfed.protocol.federation import WireEvent
from rxfed.testing import TEST_FEDERATION, NodeHarness, free_port

from test_federation_transport import _txn_request, note, wait_for


#: Every test here runs with its nodes on SQLite and again on PostgreSQL (RXFED_TEST_PG_DSN).
pytestmark = pytest.mark.usefixtures("rxfed_store_backend")


class FakePeer:
    """An HTTP server standing in for a peer: ``behaviour(request_number)`` returns a status
    (or None to answer 200 with one ok result per event). Records every request."""

    def __init__(self, behaviour, *, ports: int = 1):
        self.behaviour, self.requests, self.fetches, self.delivered = behaviour, [], [], []
        self.ports = [free_port() for _ in range(ports)]
        self.in_flight, self.log = 0, []

    async def _handle(self, request: web.Request) -> web.Response:
        if request.path == "/.well-known/rxfed":
            self.fetches.append(request.host)
            return web.Response(status=500)
        body = await request.read()
        n = len(self.requests)
        self.requests.append((request.headers.get("Rxfed-Nonce"), json.loads(body)))
        self.in_flight += 1
        self.log.append(("in", n))
        try:
            status = self.behaviour(n)
            await asyncio.sleep(0.05)
            if status is not None:
                return web.Response(status=status)
            events = json.loads(body)["events"]
            self.delivered.append(json.loads(body))
            return web.json_response({"results": [{"ok": True}] * len(events), "missing": []})
        finally:
            self.in_flight -= 1
            self.log.append(("out", n))

    async def __aenter__(self) -> FakePeer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        for port in self.ports:
            await web.TCPSite(self.runner, "127.0.0.1", port).start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()

    @property
    def node_id(self) -> str:
        return f"127.0.0.1:{self.ports[0]}"

    def kinds(self) -> list[str]:
        """The kinds of the events acknowledged, in order."""
        return [e["kind"] for body in self.delivered for e in body["events"]]


async def _allow(node: NodeHarness, peer: str, url: str | None = None) -> None:
    await node.app_store().set_peer_policy(peer, "allowed", url=url or f"http://{peer}")
    await node.state.federation.policy_changed()


async def _node(tmp_path, name, **federation) -> NodeHarness:
    return await NodeHarness(tmp_path / name, name=name, federation=attrs.evolve(TEST_FEDERATION, **federation)).start()


# -- 2: half-open trial, and inbound traffic closes the breaker ---------------------------------


async def test_after_the_cooldown_one_trial_goes_then_the_rest(tmp_path):
    """Long transaction backoffs, a short breaker cool-down: after it, the transaction that
    tripped the breaker goes at once, alone, and the others follow when it succeeds (before,
    the trial waited for its own backoff too, up to backoff_max)."""
    async with FakePeer(lambda n: 500 if n < 2 else None) as peer:
        a = await _node(tmp_path, "a", breaker_threshold=1, breaker_cooldown=1, backoff_base=100, backoff_max=200,
                        dead_after=400, max_batch=1)
        try:
            await _allow(a, peer.node_id)
            await a.state.federation.send_events(peer.node_id, [note(i) for i in range(6)])
            await wait_for(lambda: len(peer.requests) >= 2 + 6, timeout=8)
            peer_state = await a.app_store().peer(peer.node_id)
            assert peer_state.failures == 0 and peer_state.breaker_until is None
            # the trial (request 2) was alone: the next one came after its answer
            log = peer.log
            assert log.index(("out", 2)) < log.index(("in", 3)), log
        finally:
            await a.stop()


async def test_an_open_breaker_replaces_every_transactions_backoff(tmp_path):
    """Two transactions in flight fail; the first failure (below the threshold) draws a long
    backoff, the second opens the breaker. When the cool-down ends both may go: the trial
    does not wait for the first one's own backoff."""
    async with FakePeer(lambda n: 500 if n < 2 else None) as peer:
        a = await _node(tmp_path, "a", breaker_threshold=2, breaker_cooldown=1, backoff_base=100, backoff_max=200,
                        dead_after=400, max_batch=1)
        try:
            await _allow(a, peer.node_id)
            await a.state.federation.send_events(peer.node_id, [note(1), note(2)])
            await wait_for(lambda: len(peer.delivered) == 2, timeout=8)
        finally:
            await a.stop()


async def test_a_transaction_from_the_peer_closes_the_breaker(tmp_path):
    """a's breaker for b is open for five minutes; b sends a a transaction: b is up, so a
    delivers what waits for b at once (before: after the whole cool-down)."""
    a = await _node(tmp_path, "a", breaker_threshold=1, breaker_cooldown=300, backoff_max=300)
    b = await _node(tmp_path, "b")
    try:
        await a.allow(b)
        await b.allow(a)
        seen_b, seen_a = record_notes(b), record_notes(a)
        now = a.state.now()
        await a.app_store().peer_delivery(b.node_id, ok=False, now=now, error="down", breaker_until=now + 300)
        await a.state.federation.send_events(b.node_id, [note(1), note(2)])
        await asyncio.sleep(0.3)
        assert seen_b == []  # the breaker holds them
        await b.state.federation.send_events(a.node_id, [note(99)])
        await wait_for(lambda: seen_a == [99], timeout=5)
        await wait_for(lambda: sorted(seen_b) == [1, 2], timeout=5)
        peer = await a.app_store().peer(b.node_id)
        assert peer.failures == 0 and peer.breaker_until is None
    finally:
        await a.stop()
        await b.stop()


async def test_retry_times_follow_the_injected_clock(tmp_path):
    """The node's clock decides retry times (it was time.time() in places, so a node with
    an injected clock scheduled retries in another time frame)."""
    async with FakePeer(lambda n: 500) as peer:
        a = await NodeHarness(tmp_path / "a", clock=lambda: time.time() + 5000,
                              federation=attrs.evolve(TEST_FEDERATION, backoff_base=1, backoff_max=2)).start()
        try:
            await _allow(a, peer.node_id)
            await a.state.federation.send_events(peer.node_id, [note(1)])
            await wait_for(lambda: peer.requests, timeout=5)

            async def retry_scheduled():
                return any(s.next_attempt for s in await a.app_store().outbox_summary())

            await wait_for(retry_scheduled, timeout=5)
            (summary,) = await a.app_store().outbox_summary()
            assert summary.next_attempt >= (time.time() + 4990) * 1000
        finally:
            await a.stop()


# -- 3: a log never loses a part ------------------------------------------------------------


async def test_a_log_waits_for_its_peer_while_other_events_die(tmp_path):
    """Past dead_after, notes die but a community's history waits whole and arrives, in
    order, once the peer answers (before: it was buried and the member's view stalled)."""
    down = {"until": time.monotonic() + 4}

    def behaviour(_n):
        return 503 if time.monotonic() < down["until"] else None

    async with FakePeer(behaviour) as peer:
        a = await _node(tmp_path, "a", dead_after=1, backoff_base=0.05, backoff_max=0.3, max_batch=3)
        try:
            await _allow(a, peer.node_id)
            history = [WireEvent("community.event", {"seq": i}) for i in range(1, 6)]
            await a.state.federation.send_events(peer.node_id, history[:2] + [note(1)] + history[2:] + [note(2)])
            await wait_for(lambda: a.app_store().dead_letters(), timeout=4)
            await wait_for(lambda: [b for b in peer.kinds() if b == "community.event"] == ["community.event"] * 5,
                           timeout=8)
            delivered = [e["content"]["seq"] for body in peer.delivered for e in body["events"]
                         if e["kind"] == "community.event"]
            assert delivered == [1, 2, 3, 4, 5]
            dead = await a.app_store().dead_letters()
            assert dead and all(b'"kind":"test.note"' in d.event for d in dead)
            await wait_for(lambda: _outbox_empty(a), timeout=5)
        finally:
            await a.stop()


async def test_a_log_for_a_destination_that_never_answered_dies_by_age(tmp_path):
    """A patient names the host of a community it submits to: a log queued for a host that
    never accepted anything (nor is allowed, nor known by its keys) used to wait, and be
    retried, forever, so names of hosts that do not exist kept the node probing them. It
    dies after dead_after like any event; nothing is stalled behind it."""
    a = await _node(tmp_path, "a", dead_after=1, backoff_base=0.05, backoff_max=0.3)
    try:
        nowhere = "127.0.0.1:9"  # refused at once: a private address of a peer nobody allowed
        await a.state.federation.send_events(nowhere, [WireEvent("community.submit", {"seq": 1})])
        await wait_for(lambda: a.app_store().dead_letters(), timeout=6)
        assert [b'"kind":"community.submit"' in d.event for d in await a.app_store().dead_letters()] == [True]
        await wait_for(lambda: _outbox_empty(a), timeout=5)
    finally:
        await a.stop()


async def _outbox_empty(node) -> bool:
    return not await node.app_store().due_destinations()


def test_config_with_dead_after_below_the_breaker_hold_is_refused(tmp_path):
    import re

    from rxfed.node.config import ConfigFileError, NodeConfig

    data_dir = tmp_path / "n"
    data_dir.mkdir()
    NodeConfig(data_dir=data_dir, name="n", public_url="http://127.0.0.1:8470").save()
    path = data_dir / "rxfed.toml"
    text = re.sub(r"(?m)^dead_after = .*$", "dead_after = 60", path.read_text())
    assert "dead_after = 60" in text
    path.write_text(text)
    with pytest.raises(ConfigFileError, match=r"federation.*dead_after.*backoff_max"):
        NodeConfig.load(data_dir)


# -- 4: aiohttp's own resend after a dropped connection ----------------------------------------


@pytest.mark.sqlite_only  # reads or writes the SQLite file itself
async def test_a_resend_after_a_dropped_connection_is_signed_anew(pair):
    """A proxy in front of b passes the first request on, then drops the connection before
    the answer. aiohttp sends the PUT again by itself; signed anew, b answers it with the
    stored reply and a counts no failure (before: the same nonce, 401 replayed_request)."""
    a, b = pair
    seen = record_notes(b)
    nonces, port = [], free_port()

    async def proxy(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        nonces.append(request.headers["Rxfed-Nonce"])
        headers = {k: v for k, v in request.headers.items() if k.lower().startswith("rxfed-")}
        async with ClientSession() as session:
            async with session.put(b.url + request.path, data=body,
                                   headers={**headers, "Content-Type": "application/json"}) as resp:
                status, answer = resp.status, await resp.read()
        if len(nonces) == 1:
            request.transport.close()  # the answer is lost with the connection
            await asyncio.sleep(0.1)
            return web.Response(status=200)
        return web.Response(status=status, body=answer, content_type="application/json")

    app = web.Application()
    app.router.add_put("/{tail:.*}", proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await a.app_store().set_peer_policy(b.node_id, "allowed", url=f"http://127.0.0.1:{port}")
        await a.state.federation.policy_changed()
        await a.state.federation.send_events(b.node_id, [note(7)])
        await wait_for(lambda: _outbox_empty(a), timeout=8)
        assert seen == [7]
        assert len(nonces) == 2 and nonces[0] != nonces[1]
        peer = await a.app_store().peer(b.node_id)
        assert peer.last_error is None
    finally:
        await runner.cleanup()


# -- 5: per-origin limits, empty transactions, inbox pruning -------------------------------------


async def test_transactions_from_one_origin_are_rate_limited(tmp_path):
    a = await _node(tmp_path, "a")
    b = await _node(tmp_path, "b", inbound_per_second=0.5, inbound_burst=2)
    try:
        await a.allow(b)
        await b.allow(a)
        record_notes(b)
        statuses = []
        for i in range(4):
            path, body, headers = _txn_request(a, b, f"txn-limit-{i}-aaaaaaaaaaaa", i + 1, [note(i)])
            async with ClientSession() as session:
                async with session.put(b.url + path, data=body, headers=headers) as resp:
                    statuses.append((resp.status, resp.headers.get("Retry-After")))
        assert [s for s, _ in statuses] == [200, 200, 429, 429]
        assert int(statuses[2][1]) >= 1
        assert await b.app_store().inbox_reply(a.node_id, "txn-limit-2-aaaaaaaaaaaa") is None
    finally:
        await a.stop()
        await b.stop()


async def test_a_throttled_sender_waits_as_asked_and_counts_no_failure(tmp_path):
    a = await _node(tmp_path, "a", max_batch=1)
    b = await _node(tmp_path, "b", inbound_per_second=5, inbound_burst=1)
    try:
        await a.allow(b)
        await b.allow(a)
        seen = record_notes(b)
        await a.state.federation.send_events(b.node_id, [note(i) for i in range(4)])
        await wait_for(lambda: sorted(seen) == [0, 1, 2, 3], timeout=15)
        peer = await a.app_store().peer(b.node_id)
        assert peer.failures == 0 and peer.last_error is None
    finally:
        await a.stop()
        await b.stop()


@pytest.mark.sqlite_only  # reads or writes the SQLite file itself
async def test_empty_transactions_are_refused_without_a_write(pair):
    a, b = pair
    path, body, headers = _txn_request(a, b, "txn-empty-aaaaaaaaaaaaa", 1, [])
    status, doc = await raw_request(b.url, "PUT", path, body, headers)
    assert status == 400 and doc["error"] == "empty_transaction"
    assert await b.app_store().inbox_reply(a.node_id, "txn-empty-aaaaaaaaaaaaa") is None


async def test_inbox_rows_are_pruned_after_the_retry_horizon(pair):
    a, b = pair
    record_notes(b)
    fed = b.state.federation
    for i, txn in enumerate(["txn-old-aaaaaaaaaaaaaaa", "txn-new-aaaaaaaaaaaaaaa"]):
        path, body, headers = _txn_request(a, b, txn, i + 1, [note(i)])
        assert (await raw_request(b.url, "PUT", path, body, headers))[0] == 200
    store = b.app_store()
    horizon = fed.inbox_horizon()
    assert horizon >= 2 * b.config.federation.dead_after
    # the old one was received longer ago than the horizon
    now = b.state.now()
    assert await store.prune_inbox(now - horizon) == 0
    assert await store.prune_inbox(now + 1) == 2
    assert await store.inbox_reply(a.node_id, "txn-old-aaaaaaaaaaaaaaa") is None
    # the worker prunes on its own, from the injected clock
    path, body, headers = _txn_request(a, b, "txn-third-aaaaaaaaaaaaa", 3, [note(3)])
    assert (await raw_request(b.url, "PUT", path, body, headers))[0] == 200
    b.state.clock = lambda: time.time() + horizon + 10
    fed._next_prune = 0
    fed.notify()
    await wait_for(lambda: _inbox_gone(store, a.node_id, "txn-third-aaaaaaaaaaaaa"), timeout=5)


async def _inbox_gone(store, origin, txn):
    return await store.inbox_reply(origin, txn) is None


# -- 6: no key fetch on a stranger's say-so -------------------------------------------------


def _stranger_request(b: NodeHarness, origin: str, txn: str, *, body: bytes | None = None, key=None):
    key = key or SigningKeyPair.generate()
    body = body if body is not None else canonical(
        {"origin": origin, "destination": b.node_id, "seq": 1, "events": [note(1).to_json()]})
    path = f"/federation/v1/transactions/{txn}"
    headers = sign_request(key, method="PUT", target=path, destination=b.node_id, origin=origin, body=body,
                           now=int(time.time()))
    return path, body, {**headers, "Content-Type": "application/json"}


async def test_a_failed_key_fetch_is_remembered(tmp_path):
    async with FakePeer(lambda n: None) as peer:
        b = await _node(tmp_path, "b", key_failure_ttl=60)
        try:
            await _allow(b, peer.node_id)
            answers = []
            for i in range(10):
                path, body, headers = _stranger_request(b, peer.node_id, f"txn-neg-{i:02d}-aaaaaaaaaaa")
                async with ClientSession() as session:
                    async with session.put(b.url + path, data=body, headers=headers) as resp:
                        answers.append((resp.status, resp.headers.get("Retry-After")))
            assert len(peer.fetches) == 1
            assert all(s == 503 for s, _ in answers) and all(r is not None for _, r in answers[1:])
        finally:
            await b.stop()


async def test_key_fetches_share_one_budget(tmp_path):
    async with FakePeer(lambda n: None, ports=6) as peers:
        b = await _node(tmp_path, "b", key_fetches_per_minute=12)  # a burst of 2
        try:
            origins = [f"127.0.0.1:{p}" for p in peers.ports]
            for origin in origins:
                await _allow(b, origin)
            statuses = []
            for i, origin in enumerate(origins):
                path, body, headers = _stranger_request(b, origin, f"txn-budget-{i}-aaaaaaaaaa")
                statuses.append((await raw_request(b.url, "PUT", path, body, headers))[0])
            assert len(peers.fetches) == 2 and statuses == [503] * 6
        finally:
            await b.stop()


async def test_concurrent_requests_naming_one_origin_share_one_fetch(tmp_path):
    async with FakePeer(lambda n: None) as peer:
        b = await _node(tmp_path, "b", key_failure_ttl=0)
        try:
            await _allow(b, peer.node_id)
            requests = [_stranger_request(b, peer.node_id, f"txn-flight-{i:02d}-aaaaaaaa") for i in range(8)]
            got = await asyncio.gather(*(raw_request(b.url, "PUT", p, body, h) for p, body, h in requests))
            assert {s for s, _ in got} == {503} and len(peer.fetches) < 8
        finally:
            await b.stop()


async def test_malformed_requests_cost_no_fetch(tmp_path):
    async with FakePeer(lambda n: None) as peer:
        b = await _node(tmp_path, "b")
        try:
            await _allow(b, peer.node_id)
            origin = peer.node_id
            cases = [
                _stranger_request(b, origin, "txn-junk-1-aaaaaaaaaaa", body=b"{"),
                _stranger_request(b, origin, "txn-junk-2-aaaaaaaaaaa", body=canonical(
                    {"origin": "someone.else", "destination": b.node_id, "seq": 1, "events": [note(1).to_json()]})),
                _stranger_request(b, origin, "txn-junk-3-aaaaaaaaaaa", body=canonical(
                    {"origin": origin, "destination": b.node_id, "seq": 1, "events": []})),
            ]
            path, body, headers = _stranger_request(b, origin, "txn-junk-4-aaaaaaaaaaa")
            cases.append((path, body, {**headers, "Rxfed-Signature": "short"}))
            cases.append((path, body, {k: v for k, v in headers.items() if k != "Rxfed-Signature"}))
            statuses = [(await raw_request(b.url, "PUT", p, body, h))[0] for p, body, h in cases]
            assert statuses == [400, 401, 400, 400, 401] and peer.fetches == []
        finally:
            await b.stop()


async def test_allowlist_never_fetches_for_unknown_origins(tmp_path):
    from rxfed.node.federation import PeerRefused

    b = await _node(tmp_path, "b", mode="allowlist")
    try:
        with pytest.raises(PeerRefused):
            await b.state.federation.document("stranger.example")
    finally:
        await b.stop()


async def test_a_peer_that_talks_but_fails_our_deliveries_is_not_retried_on_each_of_its_transactions(pair):
    a, b = pair
    fed, calls = a.state.federation, []
    real = a.app_store().peer_recovered

    async def counting(node_id, *, now):
        calls.append(node_id)
        await real(node_id, now=now)

    a.app_store().peer_recovered = counting
    for _ in range(3):
        await a.app_store().peer_delivery(b.node_id, ok=False, now=a.state.now(), error="refused")
        await fed.peer_seen(b.node_id, await a.app_store().peer(b.node_id))
    assert calls == [b.node_id]  # once per breaker_cooldown


async def test_peers_list_shows_a_half_open_breaker(pair):
    from rxfed.node import admin

    a, b = pair
    await a.app_store().peer_delivery(b.node_id, ok=False, now=a.state.now(), error="down",
                                      breaker_until=a.state.now() - 1)
    await a.app_store().peer_delivery("c.example", ok=False, now=a.state.now(), error="down",
                                      breaker_until=a.state.now() + 600)
    listed = await asyncio.to_thread(admin.peers_list, a.data_dir)
    states = {p["node_id"]: p["breaker"] for p in listed}
    assert states[b.node_id] == "half-open" and states["c.example"] == "open"


def test_the_default_per_origin_limit_admits_a_busy_peers_steady_traffic():
    """At low rates a peer sends each event in its own transaction: the default limit must
    take 100 a second for as long as they come (the federation benchmark's offered rate;
    a limit of 20 a second held every event back half a second), and refuse a flood."""
    from rxfed.errors import RateLimited
    from rxfed.node.config import FederationSettings
    from rxfed.node.guards import RateLimiter

    now = [0.0]
    defaults = FederationSettings()
    limiter = RateLimiter(defaults.inbound_per_second, defaults.inbound_burst, clock=lambda: now[0])
    for _ in range(100 * 60):  # a minute at 100 transactions a second
        limiter.take("peer.example")
        now[0] += 0.01
    with pytest.raises(RateLimited):  # a flood of 3000 at once is not taken
        for _ in range(3000):
            limiter.take("flood.example")
