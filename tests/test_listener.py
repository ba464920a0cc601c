"""The HTTP listener under hostile and heavy load (issue 10): bodies are read only after the
signature headers are checked, slow heads and bodies time out, anonymous bodies are small
and capped in number, compressed bodies are refused, the anonymous rate limit sees through
a trusted proxy, and beyond its queue the node sheds load with 503 and Retry-After."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time

import attrs
import pytest
from aiohttp import web

from rxfed.node.config import NodeConfig
from rxfed.node.listener import client_address
from rxfed.protocol.auth import H_DIGEST, parse_content_digest, sign_request
from rxfed.crypto import SigningKeyPair
from rxfed.testing import TEST_LIMITS, NodeHarness, free_port
from helpers import raw_request, signed, signed_headers




async def start(tmp_path, name="n", **kw) -> NodeHarness:
    limits = attrs.evolve(TEST_LIMITS, **kw.pop("limits", {}))
    return await NodeHarness(tmp_path / name, limits=limits, **kw).start()


def head(method: str, path: str, headers: dict) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_reply(reader, timeout: float = 5.0) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 reply from a raw connection: status, headers (lower-case), body."""
    status_line = await asyncio.wait_for(reader.readline(), timeout)
    assert status_line, "connection closed without a reply"
    status = int(status_line.split()[1])
    headers = {}
    while (line := await asyncio.wait_for(reader.readline(), timeout)) not in (b"\r\n", b""):
        k, v = line.decode().split(":", 1)
        headers[k.strip().lower()] = v.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), timeout)
    return status, headers, body


async def closed_within(reader, seconds: float) -> bool:
    """Whether the server closes the connection within ``seconds`` (reading what is left)."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(65536):
                pass
        return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def unknown_key_headers(node, method, path, body: bytes) -> dict:
    return sign_request(SigningKeyPair.generate(), method=method, target=path, destination=node.node_id, body=body,
                        now=int(time.time()))


# -- 1. bodies after headers; timeouts; small and capped anonymous bodies -------------------------------------


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


async def test_stalled_bodies_keep_memory_bounded_and_connections_close_after_the_timeout(tmp_path):
    """300 stalled 1 MiB bodies (and 50 stalled heads) against `rxfed node run`: the node's
    memory grows by a few MiB, not by the bodies, and it closes every connection within a
    few seconds of its timeouts (before: +150 MiB and all of them still open)."""
    from rxfed.node.admin import init_node

    port = free_port()
    limits = attrs.evolve(TEST_LIMITS, header_timeout=1.5, body_timeout=1.5, max_unverified_bodies=8)
    await asyncio.to_thread(init_node, tmp_path / "n", name="slow bodies", port=port, limits=limits)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rxfed", "node", "run", str(tmp_path / "n")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if (await raw_request(url, "GET", "/health"))[0] == 200:
                    break
            except OSError:
                await asyncio.sleep(0.05)
        before = rss_mib(proc.pid)
        body = b"x" * (512 * 1024)
        conns = []

        async def stalled_signed():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            headers = unknown_key_headers(type("N", (), {"node_id": f"127.0.0.1:{port}"}), "POST", "/v1/vault",
                                          b"y" * (1 << 20))
            writer.write(head("POST", "/v1/vault", {**headers, "Content-Length": str(1 << 20),
                                                    "Content-Type": "application/json"}))
            writer.write(body)  # half of it, then nothing
            await writer.drain()
            conns.append((reader, writer))

        async def stalled_registration():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head("POST", "/v1/patients", {"Transfer-Encoding": "chunked", "Rxfed-Key": "x" * 43,
                                                       "Rxfed-Created": str(int(time.time())), "Rxfed-Nonce": "x" * 22,
                                                       "Rxfed-Signature": "x" * 86}))
            writer.write(b"8000\r\n" + b"z" * 0x8000)  # 32 KiB of a chunk, then nothing
            await writer.drain()
            conns.append((reader, writer))

        async def stalled_head():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /v1/vault HTTP/1.1\r\nHost: 127.0.0.1\r\nRxfed-Key: ")
            await writer.drain()
            conns.append((reader, writer))

        await asyncio.gather(*(stalled_signed() for _ in range(150)), *(stalled_registration() for _ in range(150)),
                             *(stalled_head() for _ in range(50)))
        await asyncio.sleep(0.5)
        during = rss_mib(proc.pid)
        assert (await raw_request(url, "GET", "/health"))[0] == 200  # still answering
        assert during - before < 40, (before, during)
        closed = await asyncio.gather(*(closed_within(r, 8) for r, _ in conns))
        assert all(closed), f"{closed.count(False)} of {len(conns)} connections still open"
        for _, w in conns:
            w.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert b"Traceback" not in err, err.decode()[-2000:]


async def test_an_unknown_key_is_refused_before_the_body_is_sent(node):
    """Refused from its headers: the node does not wait for (or buffer) a body nobody vouches for."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    headers = unknown_key_headers(node, "POST", "/v1/vault", b"{}")
    writer.write(head("POST", "/v1/vault", {**headers, "Content-Length": "100000"}))
    await writer.drain()
    status, _, reply = await read_reply(reader, timeout=2)
    assert status == 401 and json.loads(reply)["error"] == "unknown_key"
    writer.close()


async def test_a_bad_signature_is_refused_before_the_body_with_a_content_digest(node, make_patient):
    """A known key's request whose signature does not verify over its Content-Digest is
    refused from its headers; a body that does not match a good Content-Digest is refused after."""
    patient = await make_patient()
    good = b'{"x": 1}'
    headers = signed_headers(patient, "POST", "/v1/vault", good)
    forged = dict(headers, **{H_DIGEST: signed_headers(patient, "POST", "/v1/vault", b"other")[H_DIGEST]})
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    writer.write(head("POST", "/v1/vault", {**forged, "Content-Length": str(len(good))}))
    await writer.drain()
    status, _, reply = await read_reply(reader, timeout=2)
    assert status == 401 and json.loads(reply)["error"] == "bad_signature"
    writer.close()
    status, reply = await raw_request(node.url, "POST", "/v1/vault", b'{"x": 2}', headers)
    assert status == 401 and reply["error"] == "bad_signature" and "Content-Digest" in reply["message"]


async def test_a_signed_request_without_content_digest_still_works(node, make_patient):
    patient = await make_patient()
    headers = signed_headers(patient, "GET", "/v1/account", b"")
    del headers[H_DIGEST]
    status, reply = await raw_request(node.url, "GET", "/v1/account", b"", headers)
    assert status == 200 and reply["patient"] == patient.identity.patient


async def test_a_stalled_body_of_a_signed_request_gets_408_and_the_connection_closes(tmp_path, make_patient):
    node = await start(tmp_path, limits={"body_timeout": 0.5})
    try:
        patient = await make_patient(node)
        body = b'{"manifest": {}, "puts": [], "deletes": []}'
        headers = signed_headers(patient, "POST", "/v1/vault", body)
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        writer.write(head("POST", "/v1/vault", {**headers, "Content-Length": str(len(body))}) + body[:10])
        await writer.drain()
        t0 = time.monotonic()
        status, reply_headers, reply = await read_reply(reader, timeout=3)
        assert status == 408 and json.loads(reply)["error"] == "request_timeout"
        assert reply_headers.get("connection", "").lower() == "close"
        assert await closed_within(reader, 1) and time.monotonic() - t0 < 2
        writer.close()
    finally:
        await node.stop()


async def test_a_slow_request_head_gets_408_and_the_connection_closes(tmp_path):
    node = await start(tmp_path, limits={"header_timeout": 0.5})
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        await writer.drain()
        status, _, reply = await read_reply(reader, timeout=3)
        assert status == 408 and json.loads(reply)["error"] == "request_timeout"
        assert await closed_within(reader, 1)
        writer.close()
        # a client that sends its head in pieces, in time, is served; keep-alive still works
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        for _ in range(2):
            writer.write(b"GET /health HTTP/1.1\r\n")
            await asyncio.sleep(0.2)
            writer.write(b"Host: 127.0.0.1\r\n\r\n")
            assert (await read_reply(reader))[0] == 200
            await asyncio.sleep(0.7)  # idle between requests is not a slow head
        writer.close()
    finally:
        await node.stop()


async def test_anonymous_bodies_are_small(tmp_path):
    node = await start(tmp_path, limits={"anonymous_max_body_bytes": 4096})
    try:
        status, reply = await raw_request(node.url, "POST", "/v1/patients", b"x" * 5000,
                                          {"Content-Type": "application/json"})
        assert status == 413 and reply["error"] == "payload_too_large"
        # no Content-Length (chunked): refused once the limit is passed
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        headers = unknown_key_headers(node, "POST", "/v1/patients", b"")
        writer.write(head("POST", "/v1/patients", {**headers, "Transfer-Encoding": "chunked"}))
        writer.write(b"1400\r\n" + b"x" * 0x1400 + b"\r\n")
        await writer.drain()
        status, _, reply = await read_reply(reader)
        assert status == 413
        writer.close()
    finally:
        await node.stop()


async def test_bodies_read_before_a_signature_vouches_for_them_are_capped(tmp_path, make_patient):
    node = await start(tmp_path, limits={"max_unverified_bodies": 2, "body_timeout": 5})
    try:
        stalled = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
            writer.write(head("POST", "/v1/patients", {**unknown_key_headers(node, "POST", "/v1/patients", b""),
                                                       "Content-Length": "1000"}) + b"{")
            await writer.drain()
            stalled.append(writer)
        await asyncio.sleep(0.2)
        status, reply = await raw_request(node.url, "POST", "/v1/patients", b"{}",
                                          unknown_key_headers(node, "POST", "/v1/patients", b"{}"))
        assert status == 503 and reply["error"] == "overloaded"
        for writer in stalled:
            writer.close()
        await asyncio.sleep(0.2)
        # the slots are free again: a real registration goes through
        assert await make_patient(node)
    finally:
        await node.stop()


# -- 3. content codings, clients that leave ------------------------------------------------------------------


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "x-custom"])
async def test_a_compressed_body_is_refused_with_415(node, coding):
    body = b"\x1f\x8b garbage that is no valid stream"
    status, reply = await raw_request(node.url, "POST", "/v1/patients", body,
                                      {"Content-Encoding": coding, "Content-Type": "application/json"})
    assert status == 415 and reply["error"] == "unsupported_encoding"


async def test_a_compressed_body_gets_accept_encoding_identity(node):
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.post(node.url + "/v1/vault", data=b"garbage", headers={"Content-Encoding": "gzip"}) as resp:
            assert resp.status == 415 and resp.headers["Accept-Encoding"] == "identity"


async def test_a_client_that_leaves_mid_body_is_no_error(node, make_patient, caplog):
    patient = await make_patient()
    body = b'{"manifest": {}, "puts": [], "deletes": []}'
    headers = signed_headers(patient, "POST", "/v1/vault", body)
    caplog.set_level(logging.DEBUG)
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    writer.write(head("POST", "/v1/vault", {**headers, "Content-Length": str(len(body))}) + body[:10])
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()
    await asyncio.sleep(0.3)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not loud, [r.getMessage() for r in loud]
    assert any("client left" in r.getMessage() for r in caplog.records if r.name == "rxfed.node")
    assert (await raw_request(node.url, "GET", "/health"))[0] == 200


# -- 2. the anonymous rate limit behind a reverse proxy -------------------------------------------------------


async def junk_registration(node, headers=None):
    return (await raw_request(node.url, "POST", "/v1/patients", b"{}", {"Content-Type": "application/json",
                                                                         **(headers or {})}))[0]


async def test_behind_a_trusted_proxy_each_visitor_has_its_own_budget(tmp_path):
    """30 junk requests through the proxy used to lock every visitor out; now only the sender."""
    node = await start(tmp_path, trusted_proxies=("127.0.0.1",),
                       limits={"anonymous_per_minute": 3.0, "anonymous_burst": 3})
    try:
        statuses = [await junk_registration(node, {"X-Forwarded-For": "198.51.100.7"}) for _ in range(5)]
        assert statuses[:3] == [401] * 3 and statuses[3:] == [429, 429]
        for i in range(10):  # everyone else still gets through the same proxy
            assert await junk_registration(node, {"X-Forwarded-For": f"203.0.113.{i}, 127.0.0.1"}) == 401
    finally:
        await node.stop()


async def test_behind_a_forwarded_proxy_each_visitor_has_its_own_budget(tmp_path):
    node = await start(tmp_path, trusted_proxies=("127.0.0.1",), forwarded_header="Forwarded",
                       limits={"anonymous_per_minute": 3.0, "anonymous_burst": 3})
    try:
        statuses = [await junk_registration(node, {"Forwarded": 'for="[2001:db8::1]:4711";proto=https'})
                    for _ in range(5)]
        assert statuses[:3] == [401] * 3 and statuses[3:] == [429, 429]
        assert await junk_registration(node, {"Forwarded": "for=203.0.113.1"}) == 401
    finally:
        await node.stop()


async def test_a_client_forwarded_header_passed_on_by_an_x_forwarded_for_proxy_is_ignored(tmp_path):
    """A proxy that appends to X-Forwarded-For (README's nginx example) passes a client's own
    Forwarded header on unchanged: the node used to prefer it, so a client naming a new
    address in it each time had a fresh budget each time."""
    node = await start(tmp_path, trusted_proxies=("127.0.0.1",),
                       limits={"anonymous_per_minute": 3.0, "anonymous_burst": 3})
    try:
        statuses = [await junk_registration(node, {"Forwarded": f"for=198.51.100.{i}",
                                                   "X-Forwarded-For": "203.0.113.7"}) for i in range(5)]
        assert statuses == [401, 401, 401, 429, 429]
    finally:
        await node.stop()


async def test_a_forged_forwarded_address_from_an_untrusted_peer_is_ignored(tmp_path):
    node = await start(tmp_path, limits={"anonymous_per_minute": 3.0, "anonymous_burst": 3})
    try:
        statuses = [await junk_registration(node, {"X-Forwarded-For": f"198.51.100.{i}"}) for i in range(5)]
        assert statuses == [401, 401, 401, 429, 429]
    finally:
        await node.stop()


async def test_all_anonymous_requests_share_a_global_budget(tmp_path):
    node = await start(tmp_path, trusted_proxies=("127.0.0.0/8",),
                       limits={"anonymous_global_per_minute": 4.0, "anonymous_global_burst": 4})
    try:
        statuses = [await junk_registration(node, {"X-Forwarded-For": f"198.51.100.{i}"}) for i in range(6)]
        assert statuses == [401] * 4 + [429, 429]
        status, reply = await raw_request(node.url, "POST", "/v1/patients", b"{}",
                                          {"X-Forwarded-For": "198.51.100.99"})
        assert status == 429 and reply["error"] == "rate_limited"
    finally:
        await node.stop()


def request_from(remote: str, headers: dict):
    from unittest import mock

    from aiohttp.test_utils import make_mocked_request

    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (remote, 1234) if name == "peername" else default
    return make_mocked_request("POST", "/v1/patients", headers=headers, transport=transport)


@pytest.mark.parametrize("remote,headers,expected", [
    ("10.0.0.5", {"X-Forwarded-For": "198.51.100.1"}, "198.51.100.1"),
    ("10.0.0.5", {"X-Forwarded-For": "6.6.6.6, 198.51.100.1, 10.0.0.9"}, "198.51.100.1"),  # a forged first hop
    ("10.0.0.5", {"X-Forwarded-For": "garbage, 10.0.0.9"}, "10.0.0.9"),
    ("10.0.0.5", {}, "10.0.0.5"),
    ("192.0.2.1", {"X-Forwarded-For": "198.51.100.1"}, "192.0.2.1"),  # not a trusted proxy
    ("10.0.0.5", {"Forwarded": "for=198.51.100.2", "X-Forwarded-For": "198.51.100.3"}, "198.51.100.3"),
    ("10.0.0.5", {"Forwarded": "for=198.51.100.2"}, "10.0.0.5"),  # not the header the proxy writes
    ("::ffff:192.0.2.9", {}, "192.0.2.9"),
])
def test_client_address(remote, headers, expected):
    from rxfed.node.config import proxy_networks

    assert client_address(request_from(remote, headers), proxy_networks(["10.0.0.0/8"])) == expected


@pytest.mark.parametrize("remote,headers,expected", [
    ("10.0.0.5", {"Forwarded": 'for=198.51.100.2;proto=https, for="[2001:db8:1:2::17]:80"'}, "2001:db8:1:2::/64"),
    ("10.0.0.5", {"Forwarded": "for=198.51.100.2", "X-Forwarded-For": "198.51.100.3"}, "198.51.100.2"),
    ("10.0.0.5", {"X-Forwarded-For": "198.51.100.3"}, "10.0.0.5"),
])
def test_client_address_from_forwarded(remote, headers, expected):
    from rxfed.node.config import proxy_networks

    assert client_address(request_from(remote, headers), proxy_networks(["10.0.0.0/8"]), "Forwarded") == expected


# -- 4. admission: shed beyond the queue, drop work for clients that left -----------------------------------


def hold_vault_reads(node, monkeypatch) -> tuple[asyncio.Event, list]:
    """Vault reads wait for the returned event (so a request holds its work slot); each
    read is recorded in the returned list when it starts."""
    gate, calls = asyncio.Event(), []
    vault = node.state.store.vault

    async def slow_vault(*args, **kw):
        calls.append(args)
        await gate.wait()
        return await vault(*args, **kw)

    monkeypatch.setattr(node.state.store, "vault", slow_vault)
    return gate, calls


async def occupy_the_only_slot(node, patient, monkeypatch) -> tuple[asyncio.Event, asyncio.Task]:
    """``patient`` reads its vault and holds the node's one work slot until the returned event
    is set; returns the event and that request's task, once it is in."""
    gate, calls = hold_vault_reads(node, monkeypatch)
    first = asyncio.create_task(signed(patient, "GET", "/v1/vault"))
    while not calls:
        await asyncio.sleep(0.01)
    return gate, first


def count_calls(monkeypatch, obj, name: str) -> list:
    """Record the arguments of every call of the coroutine method ``obj.name`` (which still runs)."""
    calls, real = [], getattr(obj, name)

    async def counted(*args, **kw):
        calls.append(args)
        return await real(*args, **kw)

    monkeypatch.setattr(obj, name, counted)
    return calls


async def test_beyond_its_queue_the_node_sheds_with_503_and_retry_after(tmp_path, make_patient, monkeypatch):
    node = await start(tmp_path, limits={"max_in_flight": 1, "max_queued": 1, "queue_timeout": 0.5})
    try:
        patients = [await make_patient(node) for _ in range(3)]
        gate, first = await occupy_the_only_slot(node, patients[0], monkeypatch)
        queued = asyncio.create_task(signed(patients[1], "GET", "/v1/vault"))
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        status, reply = await signed(patients[2], "GET", "/v1/vault")  # the queue is full: shed at once
        assert status == 503 and reply["error"] == "overloaded" and time.monotonic() - t0 < 0.3
        assert (await raw_request(node.url, "GET", "/health"))[0] == 200  # health is never queued
        status, reply = await queued  # waited its queue_timeout, then shed
        assert status == 503 and reply["error"] == "overloaded"
        gate.set()
        assert (await first)[0] == 200
        assert (await signed(patients[1], "GET", "/v1/vault"))[0] == 200  # free again
    finally:
        await node.stop()


async def test_a_shed_request_costs_no_signature_check_and_no_body_read(tmp_path, make_patient, monkeypatch):
    """Under load a request waits for its work slot before anything but its headers is looked
    at: shed, it has cost neither a signature check nor a body read."""
    node = await start(tmp_path, limits={"max_in_flight": 1, "max_queued": 4, "queue_timeout": 0.3,
                                         "body_timeout": 5.0})
    try:
        patients = [await make_patient(node) for _ in range(2)]
        gate, first = await occupy_the_only_slot(node, patients[0], monkeypatch)
        checked = []
        from rxfed.protocol.auth import SignedRequest

        verify_head = SignedRequest.verify_head
        monkeypatch.setattr(SignedRequest, "verify_head", lambda self, *a, **kw: checked.append(1) or
                            verify_head(self, *a, **kw))
        body = b'{"put": []}' * 10
        headers = signed_headers(patients[1], "POST", "/v1/vault", body)
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        writer.write(head("POST", "/v1/vault", {**headers, "Content-Length": str(len(body))}))  # and no body
        await writer.drain()
        t0 = time.monotonic()
        status, reply_headers, reply = await read_reply(reader, timeout=3)
        assert status == 503 and json.loads(reply)["error"] == "overloaded" and "retry-after" in reply_headers
        assert time.monotonic() - t0 < 2 and checked == []  # its queue time, not the body's timeout
        writer.close()
        gate.set()
        assert (await first)[0] == 200
    finally:
        await node.stop()


async def test_a_shed_request_signed_by_an_unknown_key_costs_no_store_read(tmp_path, make_patient, monkeypatch):
    """Looking a signing key up is a store read: it waits for a work slot like the signature
    check, so requests signed by made-up keys cannot send the store reads while every slot is
    busy (nothing else limits them: no signer's budget applies to a key nobody has)."""
    node = await start(tmp_path, limits={"max_in_flight": 1, "max_queued": 8, "queue_timeout": 0.3})
    gate = asyncio.Event()
    try:
        patient = await make_patient(node)
        gate, first = await occupy_the_only_slot(node, patient, monkeypatch)
        looked_up = count_calls(monkeypatch, node.state.store, "auth_key")
        for _ in range(4):
            status, reply = await raw_request(node.url, "GET", "/v1/vault",
                                              headers=unknown_key_headers(node, "GET", "/v1/vault", b""))
            assert status == 503 and reply["error"] == "overloaded"
        assert looked_up == []
        gate.set()
        assert (await first)[0] == 200
        status, reply = await raw_request(node.url, "GET", "/v1/vault",
                                          headers=unknown_key_headers(node, "GET", "/v1/vault", b""))
        assert status == 401 and reply["error"] == "unknown_key" and len(looked_up) == 1  # admitted: looked up
    finally:
        gate.set()
        await node.stop()


async def test_a_shed_federation_transaction_costs_no_store_read_and_no_body_read(tmp_path, make_patient,
                                                                                   monkeypatch):
    """A federation transaction waits for its work slot like a patient's request: shed under
    load, it has cost neither the look-up of its origin nor a body read (nor the fetch of
    the origin's keys, nor a signature check)."""
    node = await start(tmp_path, limits={"max_in_flight": 1, "max_queued": 4, "queue_timeout": 0.3,
                                         "body_timeout": 5.0})
    gate = asyncio.Event()
    try:
        patient = await make_patient(node)
        gate, first = await occupy_the_only_slot(node, patient, monkeypatch)
        looked_up = count_calls(monkeypatch, node.state.store, "peer")
        path = "/federation/v1/transactions/" + "t" * 20
        body = b'{"events": []}' * 10
        headers = sign_request(SigningKeyPair.generate(), method="PUT", target=path, destination=node.node_id,
                               body=body, now=int(time.time()), origin="elsewhere.example")
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        writer.write(head("PUT", path, {**headers, "Content-Length": str(len(body))}))  # and no body
        await writer.drain()
        t0 = time.monotonic()
        status, reply_headers, reply = await read_reply(reader, timeout=3)
        assert status == 503 and json.loads(reply)["error"] == "overloaded" and "retry-after" in reply_headers
        assert time.monotonic() - t0 < 2 and looked_up == []  # its queue time, not the body's timeout
        writer.close()
        gate.set()
        assert (await first)[0] == 200
    finally:
        gate.set()
        await node.stop()


async def test_a_shed_registration_costs_no_body_read(tmp_path, make_patient, monkeypatch):
    """A registration (signed by the device it enrols, which the body's certificate names)
    is shed under load before its body is read or its certificates checked."""
    node = await start(tmp_path, limits={"max_in_flight": 1, "max_queued": 4, "queue_timeout": 0.3,
                                         "body_timeout": 5.0})
    gate = asyncio.Event()
    try:
        patient = await make_patient(node)
        gate, first = await occupy_the_only_slot(node, patient, monkeypatch)
        body = b'{"registration": 1}' * 10
        headers = unknown_key_headers(node, "POST", "/v1/patients", body)
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        writer.write(head("POST", "/v1/patients", {**headers, "Content-Length": str(len(body))}))  # and no body
        await writer.drain()
        t0 = time.monotonic()
        status, reply_headers, reply = await read_reply(reader, timeout=3)
        assert status == 503 and json.loads(reply)["error"] == "overloaded" and "retry-after" in reply_headers
        assert time.monotonic() - t0 < 2  # its queue time, not the body's timeout
        writer.close()
        gate.set()
        assert (await first)[0] == 200
    finally:
        gate.set()
        await node.stop()


async def test_queue_time_counts_from_the_requests_first_bytes(tmp_path, make_patient, monkeypatch):
    """queue_timeout bounds the wait from when a request began to arrive, not from when the
    node got round to it: one whose head took longer than that is shed as soon as it is
    complete, while every slot is busy."""
    node = await start(tmp_path, limits={"max_in_flight": 1, "max_queued": 4, "queue_timeout": 1.0,
                                         "header_timeout": 5.0})
    try:
        patients = [await make_patient(node) for _ in range(2)]
        gate, first = await occupy_the_only_slot(node, patients[0], monkeypatch)
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        whole = head("GET", "/v1/vault", signed_headers(patients[1], "GET", "/v1/vault", b""))
        writer.write(whole[:20])
        await writer.drain()
        await asyncio.sleep(1.2)
        writer.write(whole[20:])
        await writer.drain()
        t0 = time.monotonic()
        status, _, reply = await read_reply(reader, timeout=3)
        assert status == 503 and json.loads(reply)["error"] == "overloaded"
        assert time.monotonic() - t0 < 0.6  # not another queue_timeout of waiting
        writer.close()
        gate.set()
        assert (await first)[0] == 200
    finally:
        await node.stop()


async def test_shed_replies_carry_retry_after(tmp_path, make_patient):
    import aiohttp

    node = await start(tmp_path, limits={"max_in_flight": 1, "max_queued": 0})
    try:
        patient = await make_patient(node)
        admission = node.state.listener.admission
        admission.in_flight = admission.max_in_flight  # every slot busy
        async with aiohttp.ClientSession() as session:
            headers = signed_headers(patient, "GET", "/v1/vault", b"")
            async with session.get(node.url + "/v1/vault", headers=headers) as resp:
                assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1
    finally:
        await node.stop()


async def test_a_request_whose_client_left_while_queued_does_no_work(tmp_path, make_patient, monkeypatch):
    node = await start(tmp_path, limits={"max_in_flight": 1, "max_queued": 10, "queue_timeout": 5})
    try:
        patients = [await make_patient(node) for _ in range(2)]
        gate, first = await occupy_the_only_slot(node, patients[0], monkeypatch)
        calls = count_calls(monkeypatch, node.state.store, "vault")  # the vault reads from now on
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        writer.write(head("GET", "/v1/vault", signed_headers(patients[1], "GET", "/v1/vault", b"")))
        await writer.drain()
        await asyncio.sleep(0.2)
        assert node.state.listener.admission.waiting == 1
        writer.transport.abort()  # the client gives up while its request waits
        await asyncio.sleep(0.1)
        gate.set()
        assert (await first)[0] == 200
        await asyncio.sleep(0.1)
        assert calls == [] and node.state.listener.admission.gone == 1  # the left request read nothing
    finally:
        await node.stop()


# -- settings -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("old,new,expected", [
    ("header_timeout = 10.0", "header_timeout = 0", "[limits] header_timeout: must be a number above 0"),
    ("body_timeout = 30.0", 'body_timeout = "slow"', "[limits] body_timeout: must be a number"),
    ("anonymous_max_body_bytes = 65536", "anonymous_max_body_bytes = 10",
     "[limits] anonymous_max_body_bytes: must be a whole number from 1024"),
    ("max_unverified_bodies = 32", "max_unverified_bodies = 0", "[limits] max_unverified_bodies: must be a whole"),
    ("anonymous_global_per_minute = 600.0", "anonymous_global_per_minute = -1",
     "[limits] anonymous_global_per_minute: must be a number above 0"),
    ("anonymous_global_burst = 120", "anonymous_global_burst = 1.5", "[limits] anonymous_global_burst: must be a whole"),
    ("max_in_flight = 32", "max_in_flight = 0", "[limits] max_in_flight: must be a whole number from 1"),
    ("max_queued = 1024", "max_queued = -1", "[limits] max_queued: must be a whole number from 0"),
    ("queue_timeout = 0.5", "queue_timeout = 0", "[limits] queue_timeout: must be a number above 0"),
    ("trusted_proxies = []", 'trusted_proxies = ["10.0.0.300"]',
     "[node] trusted_proxies: '10.0.0.300' is not an IP address or CIDR network"),
    ("trusted_proxies = []", 'trusted_proxies = "10.0.0.1"', "[node] trusted_proxies: must be a list of strings"),
])
def test_bad_listener_setting_is_one_line_naming_it(tmp_path, capsys, old, new, expected):
    from rxfed.cli import main
    from rxfed.node.admin import init_node

    init_node(tmp_path / "n", name="config test", port=18473)
    path = tmp_path / "n" / "rxfed.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    try:
        code = main(["node", "check", str(tmp_path / "n")])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1 and expected in err, err


def test_trusted_proxies_round_trip(tmp_path):
    from rxfed.node.admin import init_node

    config, _ = init_node(tmp_path / "n", name="proxied", port=18474)
    attrs.evolve(config, trusted_proxies=("127.0.0.1", "10.0.0.0/8", "2001:db8::/32")).save()
    assert NodeConfig.load(tmp_path / "n").trusted_proxies == ("127.0.0.1", "10.0.0.0/8", "2001:db8::/32")


@pytest.mark.parametrize("value,digest", [
    (None, None),
    ("sha-512=:AAAA:", None),
    ("sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:", bytes.fromhex(
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")),
    ("sha-512=:AAAA:, sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:", bytes.fromhex(
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")),
])
def test_content_digest_parsing(value, digest):
    assert parse_content_digest(value) == digest


@pytest.mark.parametrize("value", ["sha-256=:short:", "sha-256=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="])
async def test_a_malformed_content_digest_is_400(node, make_patient, value):
    patient = await make_patient()
    headers = dict(signed_headers(patient, "GET", "/v1/account", b""), **{H_DIGEST: value})
    status, reply = await raw_request(node.url, "GET", "/v1/account", b"", headers)
    assert status == 400 and reply["error"] == "bad_signature_headers"


async def test_a_replayed_request_spends_nothing_of_its_signers_budget(tmp_path, make_patient):
    """A request seen before is refused before it spends the key's rate budget (and before
    its body is read): replaying a captured request used to lock its signer out."""
    node = await start(tmp_path, "replayed", limits={"requests_per_second": 0.001, "burst": 12})
    try:
        patient = await make_patient(node)
        headers = signed_headers(patient, "GET", "/v1/account", b"")
        assert (await raw_request(node.url, "GET", "/v1/account", b"", headers))[0] == 200
        for _ in range(15):
            status, reply = await raw_request(node.url, "GET", "/v1/account", b"", headers)
            assert status == 401 and reply["error"] == "replayed_request"
        assert (await signed(patient, "GET", "/v1/account"))[0] == 200
    finally:
        await node.stop()


# -- admission without a semaphore ------------------------------------------------------------------------------


class _Request(dict):
    """What Admission reads of a request: its flags, its arrival, a live transport."""

    class _Transport:
        def is_closing(self) -> bool:
            return False

    transport = _Transport()


def _arrived(loop) -> _Request:
    from rxfed.node.listener import _ADMITTED, _ARRIVED

    return _Request({_ADMITTED: False, _ARRIVED: loop.time()})


async def test_admission_takes_a_free_slot_without_waiting_and_passes_freed_slots_in_order():
    from rxfed.errors import Overloaded
    from rxfed.node.listener import Admission

    loop = asyncio.get_running_loop()
    admission = Admission(max_in_flight=2, max_queued=2, queue_timeout=5)
    first, second = _arrived(loop), _arrived(loop)
    assert admission.take(first) is None and admission.take(second) is None  # nothing to await
    assert admission.take(first) is None and admission.in_flight == 2  # once per request
    waiting = [_arrived(loop), _arrived(loop)]
    tasks = [asyncio.create_task(admission.enter(r)) for r in waiting]
    await asyncio.sleep(0)
    assert admission.waiting == 2
    with pytest.raises(Overloaded):  # the queue is full: shed at once
        admission.take(_arrived(loop))
    admission.leave(first)  # the slot passes to the first waiting, in_flight stays
    await asyncio.sleep(0)
    assert tasks[0].done() and not tasks[1].done() and admission.in_flight == 2
    admission.leave(second)
    await asyncio.gather(*tasks)
    for r in waiting:
        admission.leave(r)
        admission.leave(r)  # a second leave frees nothing
    assert admission.in_flight == 0 and admission.waiting == 0


async def test_admission_sheds_a_request_waiting_past_its_time_and_loses_no_slot():
    from rxfed.errors import Overloaded
    from rxfed.node.listener import Admission

    loop = asyncio.get_running_loop()
    admission = Admission(max_in_flight=1, max_queued=4, queue_timeout=0.05)
    holder = _arrived(loop)
    admission.take(holder)
    late = [_arrived(loop) for _ in range(3)]
    results = await asyncio.gather(*(admission.enter(r) for r in late), return_exceptions=True)
    assert all(isinstance(r, Overloaded) for r in results) and admission.shed == 3
    # one cancelled while it waits (its client left): it takes no slot with it
    gone = asyncio.create_task(admission.enter(_arrived(loop)))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    admission.leave(holder)
    assert admission.in_flight == 0 and admission.waiting == 0
    again = _arrived(loop)
    assert admission.take(again) is None and admission.in_flight == 1
