"""Node-to-node delivery: signed transactions, retries, exactly-once, faults, peer policy."""

from __future__ import annotations

import asyncio
import inspect
import json
import time

import pytest
from aiohttp import web

from helpers import raw_request, record_notes
from rxfed.protocol.auth import sign_request
from rxfed.protocol.canonical import canonical
from rxfed.protocol.federation import WireEvent
from rxfed.testing import NodeHarness, free_port


def note(i: int) -> WireEvent:
    return WireEvent("test.note", {"n": i})


async def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def outbox_empty(node):
    return not await node.app_store().due_destinations()


async def test_events_arrive_exactly_once(pair):
    a, b = pair
    seen = record_notes(b)
    for i in range(0, 300, 30):
        await a.state.federation.send_events(b.node_id, [note(j) for j in range(i, i + 30)])
    await wait_for(lambda: len(seen) == 300)
    await asyncio.sleep(0.2)
    assert sorted(seen) == list(range(300)) and len(seen) == 300
    await wait_for(lambda: outbox_empty(a))


async def test_peer_down_then_restarted_gets_everything_once(pair):
    a, b = pair
    await b.stop()
    await a.state.federation.send_events(b.node_id, [note(i) for i in range(50)])
    await wait_for(lambda: a.app_store().peer(b.node_id))
    await asyncio.sleep(0.3)  # a few failed attempts
    peer = await a.app_store().peer(b.node_id)
    assert peer.failures >= 1 and peer.last_error
    await a.state.federation.send_events(b.node_id, [note(i) for i in range(50, 60)])
    await b.start()
    seen = record_notes(b)
    await wait_for(lambda: len(seen) >= 60)
    await asyncio.sleep(0.2)
    assert sorted(seen) == list(range(60)) and len(seen) == 60


async def test_sender_restarted_with_full_outbox(pair):
    a, b = pair
    await b.stop()
    await a.state.federation.send_events(b.node_id, [note(i) for i in range(20)])
    await a.stop()
    await b.start()
    seen = record_notes(b)
    await a.start()
    await wait_for(lambda: len(seen) == 20)
    assert sorted(seen) == list(range(20))


def _txn_request(a: NodeHarness, b: NodeHarness, txn: str, seq: int, events, *, now=None, destination=None,
                 body_destination=None):
    body = canonical({"origin": a.node_id, "destination": body_destination or b.node_id, "seq": seq,
                      "events": [e.to_json() for e in events]})
    path = f"/federation/v1/transactions/{txn}"
    headers = sign_request(a.state.signing_key(), method="PUT", target=path, destination=destination or b.node_id,
                           origin=a.node_id, body=body, now=int(now or time.time()))
    return path, body, {**headers, "Content-Type": "application/json"}


async def test_duplicate_and_reordered_transactions(pair):
    a, b = pair
    seen = record_notes(b)
    path2, body2, h2 = _txn_request(a, b, "txn-two-aaaaaaaaaaaaaaa", 2, [note(2)])
    status, reply = await raw_request(b.url, "PUT", path2, body2, h2)
    assert status == 200 and reply["missing"] == [1]
    path1, body1, h1 = _txn_request(a, b, "txn-one-aaaaaaaaaaaaaaa", 1, [note(1)])
    status, reply = await raw_request(b.url, "PUT", path1, body1, h1)
    assert status == 200 and reply["missing"] == []
    # a retry of transaction 2 (fresh signature and nonce) gets the stored reply, applies nothing
    path2, body2, h2 = _txn_request(a, b, "txn-two-aaaaaaaaaaaaaaa", 2, [note(2)])
    status, again = await raw_request(b.url, "PUT", path2, body2, h2)
    assert status == 200 and again["results"] == [{"ok": True}]
    assert seen == [2, 1]


async def test_bad_federation_requests_change_nothing(pair):
    a, b = pair
    seen = record_notes(b)
    txn = "txn-bad-aaaaaaaaaaaaaaa"
    path, body, headers = _txn_request(a, b, txn, 1, [note(1)])
    sig = bytearray(headers["Rxfed-Signature"].encode())
    sig[3] = ord("A") if sig[3] != ord("A") else ord("B")
    cases = [
        ({**headers, "Rxfed-Signature": sig.decode()}, body, 401),
        (_txn_request(a, b, txn, 1, [note(1)], destination="elsewhere.example")[2], body, 401),
        (_txn_request(a, b, txn, 1, [note(1)], now=time.time() - 3600)[2], body, 401),
        (_txn_request(a, b, txn, 1, [note(1)], body_destination="elsewhere.example")[2],
         _txn_request(a, b, txn, 1, [note(1)], body_destination="elsewhere.example")[1], 400),
        ({k: v for k, v in headers.items() if k != "Rxfed-Origin"}, body, 401),
        # a stranger on a private address: not fetched
        ({**headers, "Rxfed-Origin": "10.0.0.1"}, body.replace(a.node_id.encode(), b"10.0.0.1"), 403),
        ({**headers, "Rxfed-Origin": "10.0.0.1"}, body, 401),  # the body names another origin: refused before
    ]
    for hdrs, payload, status in cases:
        got, doc = await raw_request(b.url, "PUT", path, payload, hdrs)
        assert got == status and set(doc) == {"error", "message"}, (got, doc)
    for junk in [b"{", b"[]", b'{"origin": 1}', json.dumps({"origin": a.node_id, "destination": b.node_id,
                                                             "seq": 1, "events": [{"kind": "X"}]}).encode()]:
        p, _, h = _txn_request(a, b, txn, 1, [])
        h = sign_request(a.state.signing_key(), method="PUT", target=p, destination=b.node_id, origin=a.node_id,
                         body=junk, now=int(time.time()))
        got, doc = await raw_request(b.url, "PUT", p, junk, {**h, "Content-Type": "application/json"})
        assert got == 400, (junk, doc)
    assert await b.app_store().inbox_reply(a.node_id, txn) is None
    # and a replay of a good request is refused
    status, _ = await raw_request(b.url, "PUT", path, body, headers)
    assert status == 200
    status, doc = await raw_request(b.url, "PUT", path, body, headers)
    assert status == 401 and doc["error"] == "replayed_request"
    assert seen == [1]


async def test_denied_and_blocked_peers(pair):
    a, b = pair
    seen = record_notes(b)
    await b.app_store().set_peer_policy(a.node_id, "denied")
    path, body, headers = _txn_request(a, b, "txn-deny-aaaaaaaaaaaaaa", 1, [note(1)])
    status, doc = await raw_request(b.url, "PUT", path, body, headers)
    assert status == 403 and doc["error"] == "peer_refused"
    await a.app_store().set_peer_policy(b.node_id, "blocked")
    await a.state.federation.send_events(b.node_id, [note(2)])
    await asyncio.sleep(0.3)
    assert seen == [] and [s.pending for s in await a.app_store().outbox_summary()] == [1]


async def test_unresponsive_peer_backoff_breaker_dead_letter(tmp_path):
    """A peer that answers 500 or hangs: retries back off, the breaker opens, old events die."""
    hits = []

    async def broken(request):
        hits.append(time.monotonic())
        if len(hits) % 2:
            return web.Response(status=500)
        await asyncio.sleep(5)  # longer than the request timeout
        return web.Response(status=200)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    from rxfed.node.config import FederationSettings

    a = await NodeHarness(tmp_path / "a", federation=FederationSettings(
        backoff_base=0.05, backoff_max=0.2, breaker_threshold=3, breaker_cooldown=1, request_timeout=0.3,
        dead_after=2, key_refetch=0)).start()
    try:
        peer = f"127.0.0.1:{port}"
        await a.app_store().set_peer_policy(peer, "allowed", url=f"http://{peer}")
        await a.state.federation.policy_changed()
        await a.state.federation.send_events(peer, [note(1), note(2)])
        async def breaker_open():  # the third failure is recorded after its answer or timeout
            state = await a.app_store().peer(peer)
            return state.failures >= 3 and state.breaker_until is not None

        await wait_for(breaker_open, timeout=10)
        n = len(hits)
        await asyncio.sleep(0.5)
        assert len(hits) <= n + 1  # the open breaker holds further attempts back
        await wait_for(lambda: a.app_store().dead_letters(), timeout=10)
        dead = await a.app_store().dead_letters()
        assert len(dead) == 2 and "maximum age" in dead[0].reason
        assert await a.app_store().replay_dead_letters(a.state.now()) == 2
        assert [s.pending for s in await a.app_store().outbox_summary()] == [2]
    finally:
        await a.stop()
        await runner.cleanup()


async def test_no_requests_to_private_addresses_of_strangers(pair):
    a, b = pair
    fed = a.state.federation
    from rxfed.node.federation import PeerRefused

    with pytest.raises(PeerRefused):
        fed._check_url(None, "http://127.0.0.1:9")
    with pytest.raises(PeerRefused):
        fed._check_url(None, "https://10.1.2.3")
    with pytest.raises(PeerRefused):
        fed._check_url(None, "https://[::1]:443")
    fed._check_url(None, "https://93.184.216.34")
    # a stranger's name that resolves to loopback is refused by the resolver itself
    from rxfed.errors import Unavailable

    with pytest.raises((Unavailable, PeerRefused)):
        await fed._fetch_document("localhost", None)
    with pytest.raises(OSError, match="private"):
        from rxfed.node.federation import GuardedResolver

        await GuardedResolver(lambda: set()).resolve("localhost", 443)
    assert await GuardedResolver(lambda: {("localhost", 443)}).resolve("localhost", 443)
    with pytest.raises(OSError, match="private"):  # allowing one port of a host opens no other
        await GuardedResolver(lambda: {("localhost", 443)}).resolve("localhost", 8080)


async def test_stranger_on_another_port_of_an_allowed_host_is_not_fetched(pair):
    """b allowed a on 127.0.0.1:PORT; a stranger naming 127.0.0.1:OTHER gets nothing fetched
    and learns nothing about that port."""
    a, b = pair
    stranger = f"127.0.0.1:{free_port()}"
    path, body, headers = _txn_request(a, b, "txn-stranger-aaaaaaaaaa", 1, [note(1)])
    body = body.replace(a.node_id.encode(), stranger.encode())
    headers = {**sign_request(a.state.signing_key(), method="PUT", target=path, destination=b.node_id,
                              origin=stranger, body=body, now=int(time.time())), "Content-Type": "application/json"}
    status, doc = await raw_request(b.url, "PUT", path, body, headers)
    assert status in (403, 503) and "Connect" not in doc["message"] and "ssl" not in doc["message"], doc


async def test_inbound_from_stranger_with_private_origin_is_refused(pair):
    """An unknown origin naming a private address: the node does not fetch its keys."""
    a, b = pair
    await b.app_store().set_peer_policy(a.node_id, "known", url="")
    b.state.federation._documents.clear()
    await b.state.federation.policy_changed()
    path, body, headers = _txn_request(a, b, "txn-strange-aaaaaaaaaaa", 1, [note(1)])
    status, doc = await raw_request(b.url, "PUT", path, body, headers)
    assert status in (403, 503), doc


async def test_key_rotation_with_overlap(pair):
    a, b = pair
    seen = record_notes(b)
    from rxfed.node.config import load_node_keys, rotate_node_key

    old_key = a.state.signing_key()
    rotate_node_key(a.data_dir, overlap=3600)
    a.state.reload_keys()
    a.state.keys = load_node_keys(a.data_dir)
    assert a.state.signing_key().public != old_key.public
    await a.state.federation.send_events(b.node_id, [note(1)])
    await wait_for(lambda: seen == [1])
    # the old key still verifies signatures made inside its overlap
    path, body, headers = _txn_request(a, b, "txn-old-key-aaaaaaaaaaa", 5, [note(5)])
    headers = {**sign_request(old_key, method="PUT", target=path, destination=b.node_id, origin=a.node_id,
                              body=body, now=int(time.time())), "Content-Type": "application/json"}
    status, _ = await raw_request(b.url, "PUT", path, body, headers)
    assert status == 200 and seen == [1, 5]


def test_spliced_transaction_body_is_canonical():
    """The outbox splices stored canonical events into the body; it must equal encoding the whole."""
    from rxfed.protocol.canonical import loads
    from rxfed.protocol.federation import transaction_body

    events = [canonical(note(i).to_json()) for i in range(3)] + [canonical({"kind": "x", "content": {"é": "\n"}})]
    assert transaction_body("a.example", "b.example:1", 12, events) == canonical(
        {"origin": "a.example", "destination": "b.example:1", "seq": 12, "events": [loads(e) for e in events]})


async def test_error_codes_of_the_transaction_endpoint(pair):
    """Codes a second implementation can rely on (spec/federation.md §6), each with its status."""
    a, b = pair
    cases = []
    path, body, headers = _txn_request(a, b, "short", 1, [note(1)])
    cases.append(("bad_txn_id", 400, path, body, headers))
    path, body, headers = _txn_request(a, b, "txn-many-aaaaaaaaaaaaaa", 1, [note(i) for i in range(1001)])
    cases.append(("too_many_events", 400, path, body, headers))
    path, body, headers = _txn_request(a, b, "txn-self-aaaaaaaaaaaaaa", 1, [note(1)])
    cases.append(("wrong_origin", 401, path, body, {**headers, "Rxfed-Origin": b.node_id}))
    cases.append(("bad_origin", 400, path, body, {**headers, "Rxfed-Origin": "Not A Node"}))
    cases.append(("stale_request", 401, *_txn_request(a, b, "txn-old-aaaaaaaaaaaaaaa", 1, [note(1)],
                                                      now=time.time() - 301)))
    for code, status, p, payload, hdrs in cases:
        got, doc = await raw_request(b.url, "PUT", p, payload, hdrs)
        assert (got, doc["error"]) == (status, code), doc


def test_every_federation_error_code_is_in_the_spec():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    table = (root / "spec" / "federation.md").read_text().split("## 6. Errors")[1]
    listed = set(re.findall(r"^\| \d{3} \| `(\w+)`(?:, `(\w+)`)?", table, re.M))
    listed = {c for pair in listed for c in pair if c}
    raised = set()
    for name in ("protocol/federation.py", "protocol/auth.py", "protocol/canonical.py", "node/federation.py"):
        raised |= set(re.findall(r'code\s*=\s*"(\w+)"', (root / "rxfed" / name).read_text()))
    app = (root / "rxfed" / "node" / "app.py").read_text()
    receive = app[app.index("async def receive_transaction"):app.index("# -- the application")]
    raised |= set(re.findall(r'code="(\w+)"', receive))
    raised |= {"replayed_request", "missing_field", "unknown_field", "bad_request", "payload_too_large"}
    assert raised - listed == set()
