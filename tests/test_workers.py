"""Several worker processes of one node sharing one PostgreSQL database
(``rxfed node run DATA_DIR --workers N``): what one worker sees, every other enforces.

The first tests run two workers of one node in this process, each on a port of its own,
so a test chooses which worker a request reaches; the later ones run the supervisor and
its worker processes as an operator does, on one port shared with ``SO_REUSEPORT``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import attrs
import pytest

from rxfed.client import PatientClient
from rxfed.protocol.canonical import canonical
from rxfed.testing import PG_SKIP_REASON, NodeHarness, free_port, pg_test_dsn

PASSPHRASE = "correct horse battery staple"

needs_pg = pytest.mark.skipif(pg_test_dsn() is None, reason=PG_SKIP_REASON)


@pytest.fixture
async def workers(tmp_path, rxfed_pg_databases):
    """Two workers of one node (one database, one node id), each listening on its own port."""
    dsn = await rxfed_pg_databases.create()
    storage = {"backend": "postgresql", "dsn": dsn}
    a = await NodeHarness(tmp_path / "node", worker=0, storage=storage).start()
    b = await NodeHarness(tmp_path / "node", worker=1, storage=storage, public_url=a.url).start()
    yield a, b
    await b.stop()
    await a.stop()


async def _send(url: str, method: str, path: str, headers: dict, body: bytes = b"") -> tuple[int, dict]:
    def go():
        request = urllib.request.Request(url + path, data=body or None, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    return await asyncio.to_thread(go)


async def _patient(node, tmp_path, name="patient") -> PatientClient:
    client, code = await PatientClient.register(node.url, tmp_path / name, PASSPHRASE, kdf="min")
    client.recovery_code = code
    return client


@needs_pg
async def test_a_request_replayed_to_another_worker_is_refused(workers, tmp_path):
    a, b = workers
    patient = await _patient(a, tmp_path)
    try:
        read = patient._sign("GET", "/v1/account", b"")
        assert (await _send(a.url, "GET", "/v1/account", read))[0] == 200
        status, body = await _send(b.url, "GET", "/v1/account", read)
        assert (status, body["error"]) == (401, "replayed_request")
        # the same request sent to both at once: one answer, one refusal
        read = patient._sign("GET", "/v1/account", b"")
        answers = await asyncio.gather(_send(a.url, "GET", "/v1/account", read),
                                       _send(b.url, "GET", "/v1/account", read))
        assert sorted(s for s, _ in answers) == [200, 401]
        # a write: applied once, whichever worker sees it first
        await patient.add_condition("I10")
        counter = (await _send(a.url, "GET", "/v1/account", patient._sign("GET", "/v1/account", b"")))[1]["counter"]
        assert counter >= 1
    finally:
        await patient.close()


@needs_pg
async def test_a_signers_request_budget_is_shared_by_the_workers(tmp_path, rxfed_pg_databases):
    from rxfed.testing import TEST_LIMITS

    dsn = await rxfed_pg_databases.create()
    storage = {"backend": "postgresql", "dsn": dsn}
    limits = attrs.evolve(TEST_LIMITS, requests_per_second=0.01, burst=6)
    a = await NodeHarness(tmp_path / "node", worker=0, storage=storage, limits=limits).start()
    b = await NodeHarness(tmp_path / "node", worker=1, storage=storage, limits=limits, public_url=a.url).start()
    try:
        patient = await _patient(a, tmp_path)  # registration is anonymous: not from the signer's budget
        try:
            statuses = []
            for node in (a, b, a, b, a, b, a, b):
                statuses.append((await _send(node.url, "GET", "/v1/account",
                                             patient._sign("GET", "/v1/account", b"")))[0])
            assert statuses.count(200) == 6 and statuses[-2:] == [429, 429], statuses
            assert a.state.limiter.refused + b.state.limiter.refused == 2
        finally:
            await patient.close()
    finally:
        await b.stop()
        await a.stop()


@needs_pg
async def test_a_revocation_seen_by_one_worker_is_enforced_by_the_other_at_once(workers, tmp_path):
    a, b = workers
    patient = await _patient(a, tmp_path)
    code = await PatientClient.request_link(a.url, tmp_path / "laptop", PASSPHRASE, kdf="min")
    device, confirm = await patient.add_device(code)
    laptop = PatientClient.open(tmp_path / "laptop", PASSPHRASE)
    try:
        assert await laptop.finish_link(confirm) == confirm
        # the laptop works through worker b first, so b has seen (and may cache) its key
        assert (await _send(b.url, "GET", "/v1/account", laptop._sign("GET", "/v1/account", b"")))[0] == 200
        assert (await _send(b.url, "GET", "/v1/vault", laptop._sign("GET", "/v1/vault", b"")))[0] == 200
        assert await patient.revoke_device(device, patient.recovery_code) == [device]  # through worker a
        for path in ("/v1/account", "/v1/vault"):
            status, body = await _send(b.url, "GET", path, laptop._sign("GET", path, b""))
            assert status == 401, (path, status, body)
        put = canonical({"manifest": {}, "puts": [], "deletes": []})
        status, _ = await _send(b.url, "POST", "/v1/vault", {**laptop._sign("POST", "/v1/vault", put),
                                                             "Content-Type": "application/json"}, put)
        assert status in (400, 401, 409)
    finally:
        await laptop.close()
        await patient.close()


@needs_pg
async def test_posts_to_one_community_through_two_workers_all_land_in_order(workers, tmp_path):
    """Members on both workers post at once: each worker stamps on top of what the other
    committed (a stale stamp is made again), so every post lands, numbered without gaps."""
    from rxfed.client.community import PatientCommunities

    a, b = workers
    owner = await _patient(a, tmp_path, "owner")
    members = [await _patient(node, tmp_path, f"m{i}") for i, node in enumerate((a, b))]
    try:
        host = PatientCommunities(owner)
        address = await host.create("Epilepsy peers", condition="G40")
        views = [PatientCommunities(m) for m in members]
        for v in views:
            await v.join(address)

        async def posts(i, view):  # one member's posts one after another, the two members at once
            return [await view.post(address, f"hello {i} {k}") for k in range(4)]

        results = [r for rs in await asyncio.gather(*(posts(i, v) for i, v in enumerate(views))) for r in rs]
        assert len({r["seq"] for r in results}) == 8
        community_id = address.partition("@")[0]
        events = await a.app_store().community_events(community_id, a.node_id, after=0, limit=100)
        assert [e.seq for e in events] == list(range(1, len(events) + 1)) and len(events) >= 11
        # every event was checked against the very events before it: the whole log folds
        from rxfed.protocol.canonical import loads
        from rxfed.protocol.community import CommunityState

        CommunityState.from_events([(e.seq, loads(e.event)) for e in events])
        assert sorted(m.text for m in (await host.read(address)).messages) == sorted(
            f"hello {i} {k}" for k in range(4) for i in range(2))
    finally:
        for m in (owner, *members):
            await m.close()


# -- the supervisor and its worker processes, as an operator runs them ----------------------


def _pg_node(tmp_path, dsn: str, name="node"):
    from rxfed.node import admin

    data = tmp_path / name
    admin.init_node(data, name="workers test", port=free_port(), storage={"backend": "postgresql", "dsn": dsn})
    return data


def _run_workers(data, n=2):
    from rxfed.node.config import NodeConfig

    config = NodeConfig.load(data)
    proc = subprocess.Popen([sys.executable, "-m", "rxfed", "node", "run", str(data), "--workers", str(n)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{config.port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = _status(data)
        if status and status.get("workers") and all(w["answering"] for w in status["workers"]):
            return proc, url
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the workers did not start: " + proc.communicate()[1].decode())


def _status(data):
    from rxfed.node import control

    try:
        return control.ask(data, "GET", "/status", timeout=5)
    except control.NodeUnreachable:
        return None


def _health_requests(data, worker: int) -> float:
    from rxfed.node import control

    text = control.ask_socket(control.socket_path(data, worker), "GET", "/metrics").decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("rxfed_http_requests_total{") and 'route="/health"' in line)


def _stop(proc, timeout=40) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()


def _wait(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_workers_on_sqlite_are_refused_with_one_line(tmp_path):
    from rxfed.node import admin

    admin.init_node(tmp_path / "n", name="sqlite", port=free_port())
    for flag, why in (("2", "PostgreSQL"), ("0", "at least 1")):
        done = subprocess.run([sys.executable, "-m", "rxfed", "node", "run", str(tmp_path / "n"), "--workers", flag],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and why in done.stderr, done
        assert done.stdout == ""


@needs_pg
@pytest.mark.slow
def test_two_worker_processes_share_the_port_restart_when_killed_and_drain_on_sigterm(tmp_path, rxfed_pg_databases):
    dsn = asyncio.run(rxfed_pg_databases.create())
    data = _pg_node(tmp_path, dsn)
    proc, url = _run_workers(data)
    try:
        # new connections spread over both workers (the kernel hashes each one)
        for _ in range(200):
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                assert r.status == 200
            if _health_requests(data, 0) and _health_requests(data, 1):
                break
        assert _health_requests(data, 0) > 0 and _health_requests(data, 1) > 0
        out = subprocess.run([sys.executable, "-m", "rxfed", "node", "status", str(data)], capture_output=True,
                             text=True, timeout=30).stdout
        assert "workers: 2 of 2 answering" in out, out
        status = _status(data)
        assert status["pid"] == proc.pid and [w["worker"] for w in status["workers"]] == [0, 1]
        # a worker that dies is restarted, and the supervisor says so in the log
        killed = status["workers"][0]["pid"]
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            status = _status(data)
            w0 = status["workers"][0]
            if w0["restarts"] == 1 and w0["answering"] and w0["pid"] != killed:
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        assert "worker 0 (pid %d) exited with signal 9" % killed in (data / "node.log").read_text()
        with urllib.request.urlopen(url + "/health", timeout=5) as r:
            assert r.status == 200
        pids = [w["pid"] for w in status["workers"]]
        # log rotation: SIGHUP to the supervisor reopens every process's log file
        (data / "node.log").rename(data / "node.log.1")
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: (data / "node.log").exists(), 10)
        time.sleep(0.5)
    finally:
        code = _stop(proc)
    assert code == 0, proc.stderr.read().decode()
    assert all(_gone(pid) for pid in pids)
    assert not list(data.glob("admin*.sock"))
    log = (data / "node.log").read_text()  # the workers' last lines too: they reopened it
    assert log.count("node stopped cleanly") == 2 and "supervisor stopped cleanly" in log, log


@needs_pg
@pytest.mark.slow
def test_a_worker_killed_under_load_loses_no_acknowledged_write_and_no_event(tmp_path, rxfed_pg_databases):
    """SIGKILL of a worker while patients write records and post to a community hosted on
    the node, whose events go to a member's node: every write the node acknowledged is
    there afterwards, every event reaches the member's node and is applied there exactly
    once, requests replayed across the workers are refused, and no sequence number is
    used twice."""
    asyncio.run(_killed_under_load(tmp_path, rxfed_pg_databases))


async def _killed_under_load(tmp_path, databases):
    import asyncpg

    from rxfed.client.community import PatientCommunities
    from rxfed.node.communities import EVENT
    from rxfed.node.config import NodeConfig
    from rxfed.testing import TEST_FEDERATION, TEST_LIMITS

    dsn = await databases.create()
    data = await asyncio.to_thread(_pg_node, tmp_path, dsn)
    config = NodeConfig.load(data)
    attrs.evolve(config, limits=TEST_LIMITS, federation=TEST_FEDERATION).save()
    member_node = await NodeHarness(tmp_path / "member-node").start()
    applied: dict[bytes, int] = {}
    receive = member_node.state.federation.handlers[EVENT]

    async def counting(origin, events):
        for e in events:
            key = canonical(e.content)
            applied[key] = applied.get(key, 0) + 1
        return await receive(origin, events)

    member_node.state.federation.handlers[EVENT] = counting
    proc, url = await asyncio.to_thread(_run_workers, data)
    clients = []
    try:
        host_id = config.node_id
        await member_node.app_store().set_peer_policy(host_id, "allowed", url=url)
        await member_node.state.federation.policy_changed()
        allowed = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "rxfed", "node", "peers", str(data),
                                                           "allow", member_node.node_id, "--url", member_node.url],
                                          capture_output=True, text=True, timeout=30)
        assert allowed.returncode == 0, allowed.stderr
        await asyncio.sleep(6)  # the workers read peer policies every 5 s
        owner = await _patient_at(url, tmp_path, "owner", clients)
        address = await PatientCommunities(owner).create("Load test", condition="G40")
        remote = await _patient_at(member_node.url, tmp_path, "remote", clients)
        await PatientCommunities(remote).join(address)
        locals_ = [await _patient_at(url, tmp_path, f"local-{i}", clients) for i in range(4)]
        for p in locals_:
            await PatientCommunities(p).join(address)
        community_id = address.partition("@")[0]

        async def mirrored() -> int:
            events = await member_node.app_store().community_events(community_id, host_id, after=0, limit=10_000)
            return len(events)

        await _eventually(lambda: _at_least(mirrored, 6), 60)
        acknowledged_records: dict[str, set[str]] = {}
        acknowledged_posts: set[int] = set()
        failures = 0
        stop = asyncio.Event()

        async def load(i: int, patient: PatientClient) -> None:
            nonlocal failures
            view = PatientCommunities(patient)
            mine = acknowledged_records.setdefault(patient.patient, set())
            k = 0
            while not stop.is_set():
                k += 1
                try:
                    await patient.add_condition(f"Z{i}{k:03d}")
                    mine.add(f"Z{i}{k:03d}")
                except Exception:  # noqa: BLE001 - a reset connection, a worker gone: not acknowledged
                    failures += 1
                try:
                    acknowledged_posts.add((await view.post(address, f"post {i} {k}"))["seq"])
                except Exception:  # noqa: BLE001
                    failures += 1

        tasks = [asyncio.create_task(load(i, p)) for i, p in enumerate(locals_)]
        await asyncio.sleep(2)
        status = await asyncio.to_thread(_status, data)
        victim = status["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        await asyncio.sleep(4)
        stop.set()
        await asyncio.gather(*tasks)
        assert acknowledged_posts and sum(map(len, acknowledged_records.values())) > 0

        # every acknowledged record write is in the store
        conn = await asyncpg.connect(dsn)
        try:
            for p in locals_:
                codes = {str(r.data.get("code")).replace(".", "") for r in await p.records()}
                assert acknowledged_records[p.patient] <= codes
            host_seq = await conn.fetchval("SELECT seq FROM communities WHERE id=$1 AND host=$2", community_id, host_id)
            seqs = [r[0] for r in await conn.fetch("SELECT seq FROM community_events WHERE community_id=$1 "
                                                   "ORDER BY seq", community_id)]
            assert seqs == list(range(1, host_seq + 1))  # no number twice, none skipped
            assert acknowledged_posts <= set(seqs)
        finally:
            await conn.close()
        # every event reaches the member's node, and is applied there once
        await _eventually(lambda: _at_least(mirrored, host_seq), 90)
        assert await mirrored() == host_seq
        twice = {k: n for k, n in applied.items() if n > 1}
        assert not twice, twice
        # replays across the workers are refused: one signed request sent on many connections
        read = owner._sign("GET", "/v1/account", b"")
        answers = await asyncio.gather(*(_send(url, "GET", "/v1/account", read) for _ in range(12)))
        assert sorted(s for s, _ in answers) == [200] + [401] * 11
    finally:
        for c in clients:
            await c.close()
        code = await asyncio.to_thread(_stop, proc)
        await member_node.stop()
    assert code == 0


async def _patient_at(url, tmp_path, name, clients) -> PatientClient:
    client, _ = await PatientClient.register(url, tmp_path / name, PASSPHRASE, kdf="min")
    clients.append(client)
    return client


async def _at_least(count, n: int) -> bool:
    return await count() >= n


async def _eventually(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)


def test_the_workers_port_is_refused_while_anything_else_holds_it():
    """Another node of the same user serving on the port (its workers with
    ``SO_REUSEPORT``, or a node of one process without): the supervisor refuses to start
    rather than share the port with it."""
    import socket

    from rxfed.node.config import ConfigFileError
    from rxfed.node.workers import reserve

    first = reserve("127.0.0.1", 0)
    port = first.getsockname()[1]
    worker = socket.socket()  # what a worker of the first supervisor does
    worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        worker.bind(("127.0.0.1", port))
        worker.listen()
        with pytest.raises(ConfigFileError, match=f"cannot listen on 127.0.0.1:{port}"):
            reserve("127.0.0.1", port)
    finally:
        worker.close()
        first.close()
    plain = socket.socket()
    plain.bind(("127.0.0.1", 0))
    plain.listen()
    try:
        with pytest.raises(ConfigFileError):
            reserve("127.0.0.1", plain.getsockname()[1])
    finally:
        plain.close()


async def test_the_supervisor_passes_an_insights_round_to_a_worker(tmp_path, monkeypatch):
    """``rxfed node insights DATA_DIR round`` asks the control socket, which the supervisor
    holds among several workers: it must pass the request to a worker (the first that
    answers) and give back its answer, refusals included, not answer 404."""
    import types

    from aiohttp.test_utils import TestClient, TestServer

    from rxfed.node.workers import Supervisor

    supervisor = Supervisor(types.SimpleNamespace(data_dir=tmp_path), 2, host="127.0.0.1", port=0, tls_cert=None,
                            tls_key=None)
    asked = []

    async def ask(worker, method, target, body=None, **kw):
        asked.append((worker.index, method, target, body))
        if worker.index == 0:
            return None  # not answering (restarting, say)
        return {"error": "beyond_schedule", "message": "released already", "status": 403}

    monkeypatch.setattr(supervisor, "ask", ask)
    async with TestClient(TestServer(supervisor.control_app())) as client:
        resp = await client.post("/insights/round", json={"category": "E11", "period": None})
        assert resp.status == 200 and (await resp.json())["error"] == "beyond_schedule"
        assert [(i, t) for i, _, t, _ in asked] == [(0, "/insights/round"), (1, "/insights/round")]
        assert asked[1][3] == {"category": "E11", "period": None}
        bad = await client.post("/insights/round", data=b"not json")
        assert bad.status == 400 and len(asked) == 2
