"""Watching and administering a running node: metrics, the control socket and status,
accounts (suspend, erase), communities (list, remove), plugin health, the operator log."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import urllib.request

import pytest

from helpers import raw_request
from rxfed.client.community import PatientCommunities
from rxfed.client.sdk import NodeRefused
from rxfed.errors import BadRequest, Conflict, NotFound
from rxfed.node import administer, control
from rxfed.node.admin import node_status
from rxfed.node.config import ConfigFileError, Limits
from rxfed.testing import TEST_LIMITS, NodeHarness, free_port


def rxfed(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rxfed", *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


async def scrape(url: str) -> str:
    def get():
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.headers["Content-Type"].startswith("text/plain")
            return r.read().decode()
    return await asyncio.to_thread(get)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the exposition ``text`` (labels given must match)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


@pytest.fixture
async def watched(tmp_path):
    port = free_port()
    harness = await NodeHarness(tmp_path / "watched", metrics_listen=f"127.0.0.1:{port}").start()
    yield harness
    await harness.stop()


# -- metrics -------------------------------------------------------------------------------------


async def test_metrics_count_requests_by_route_and_name_no_one(watched, make_patient):
    patient = await make_patient(watched)
    await patient.add_journal(feeling=5)
    await patient.add_journal(feeling=6)
    address = await PatientCommunities(patient).create("Epilepsy friends", condition="G40")
    assert (await raw_request(watched.url, "GET", "/nowhere/" + patient.patient))[0] == 404
    for method in ("TRACE", "PROPFIND"):
        await raw_request(watched.url, method, "/health")
    text = await scrape(watched.metrics_url)
    assert sample(text, "rxfed_http_requests_total", route="/v1/vault", method="POST", status="200") >= 2
    assert sample(text, "rxfed_http_requests_total", route="/v1/patients", method="POST", status="201") == 1
    assert sample(text, "rxfed_http_requests_total", route="(unmatched)", status="404") == 1
    assert sample(text, "rxfed_http_requests_total", route="(unmatched)", method="other", status="405") == 2
    assert "TRACE" not in text and "PROPFIND" not in text
    assert sample(text, "rxfed_http_request_duration_seconds_count", route="/v1/vault") >= 2
    assert sample(text, "rxfed_store_commit_seconds_count") >= 3
    assert sample(text, "rxfed_store_batch_operations_sum") >= 3
    assert sample(text, "rxfed_plugin_enabled", plugin="outcomes") == 1
    assert sample(text, "rxfed_node_info", version=__import__("rxfed").__version__) == 1
    # counts only: no patient, device or community id, and no community name, anywhere
    for secret in (patient.patient, patient.device, address.split("@")[0], "Epilepsy"):
        assert secret not in text
    # the public listener serves no metrics
    assert (await raw_request(watched.url, "GET", "/metrics"))[0] == 404


async def test_metrics_show_outbox_breakers_dead_letters_plugins_and_refusals(tmp_path):
    port = free_port()
    limits = Limits(requests_per_second=10_000, burst=10_000, anonymous_per_minute=1, anonymous_burst=1)
    node = await NodeHarness(tmp_path / "n", limits=limits, metrics_listen=f"127.0.0.1:{port}").start()
    try:
        store, now = node.app_store(), node.state.now()
        await store.set_peer_policy("peer.example", "blocked")  # nothing is sent to it: the queue stays
        await store.enqueue([("peer.example", b'{"kind":"x"}'), ("peer.example", b'{"kind":"y"}')], now)
        await store.peer_delivery("peer.example", ok=False, now=now, error="refused", breaker_until=now + 600)
        await store.set_peer_policy("gone.example", "blocked")
        await store.enqueue([("gone.example", b'{"kind":"z"}')], now - 10_000)
        assert await store.next_transaction("gone.example", max_events=10, now=now, dead_after=60) is None  # buried
        node.state.plugins._failed("outcomes", "rxfed_receive_signals", "RuntimeError: boom")
        for _ in range(3):  # past the anonymous burst of one
            await raw_request(node.url, "POST", "/v1/patients", {})
        text = await scrape(f"http://127.0.0.1:{port}/metrics")
        queued = sample(text, "rxfed_outbox_queued_events", peer="peer.example") or 0
        in_flight = sample(text, "rxfed_outbox_in_flight_events", peer="peer.example") or 0
        assert queued + in_flight == 2
        assert sample(text, "rxfed_peer_breaker_open", peer="peer.example") == 1
        assert sample(text, "rxfed_peer_consecutive_failures", peer="peer.example") == 1
        assert sample(text, "rxfed_dead_letters") == 1
        assert sample(text, "rxfed_outbox_dead_letters", peer="gone.example") == 1
        assert sample(text, "rxfed_plugin_failures_total", plugin="outcomes") == 1
        assert sample(text, "rxfed_rate_limited_total", limit="anonymous") >= 2
        assert sample(text, "rxfed_http_requests_total", route="/v1/patients", status="429") >= 2
    finally:
        await node.stop()


async def test_destinations_patients_name_share_one_metrics_label(tmp_path):
    """Every host a patient named (a community elsewhere, a grant's node) used to be a label
    of its own in five series, kept while its dead letters are: a client could grow a scrape
    without bound. Only configured peers and peers whose keys the node holds are named."""
    port = free_port()
    node = await NodeHarness(tmp_path / "n", metrics_listen=f"127.0.0.1:{port}").start()
    try:
        store, now = node.app_store(), node.state.now()
        await store.set_peer_policy("partner.example", "blocked")  # configured: named (and nothing is sent)
        await store.enqueue([("partner.example", b'{"kind":"x"}')], now)
        strangers = [f"h{i}.attacker.example" for i in range(40)]
        await store.enqueue([(host, b'{"kind":"x"}') for host in strangers], now)
        for host in strangers[:5]:
            await store.peer_delivery(host, ok=False, now=now, error="refused", breaker_until=now + 600)
        text = await scrape(f"http://127.0.0.1:{port}/metrics")
        assert "attacker.example" not in text
        assert sample(text, "rxfed_outbox_queued_events", peer="partner.example") == 1
        queued = sample(text, "rxfed_outbox_queued_events", peer="(other)") or 0
        in_flight = sample(text, "rxfed_outbox_in_flight_events", peer="(other)") or 0
        assert queued + in_flight == 40
        assert sample(text, "rxfed_peer_breaker_open", peer="(other)") == 5
    finally:
        await node.stop()


async def test_each_node_in_a_process_has_its_own_metrics(pair):
    a, b = pair
    for _ in range(3):
        await raw_request(a.url, "GET", "/health")
    text_a = (await control_metrics(a)).decode()
    text_b = (await control_metrics(b)).decode()
    assert sample(text_a, "rxfed_http_requests_total", route="/health") == 3
    assert sample(text_b, "rxfed_http_requests_total", route="/health") is None
    assert a.state.metrics.listening == [] and a.metrics_url is None  # no metrics listener unless configured


async def control_metrics(node) -> bytes:
    return await asyncio.to_thread(control.ask, node.data_dir, "GET", "/metrics")


async def test_a_metrics_port_in_use_is_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        node = NodeHarness(tmp_path / "n", metrics_listen=f"127.0.0.1:{busy.getsockname()[1]}")
        with pytest.raises(ConfigFileError, match=r"\[metrics\] listen: cannot listen on 127.0.0.1:"):
            await node.start()
        await node.stop()


# -- the control socket and status ---------------------------------------------------------------


async def test_status_shows_the_running_process_not_the_file(watched):
    path = watched.data_dir / "rxfed.toml"
    path.write_text(path.read_text().replace('registration = "open"', 'registration = "closed"'))
    doc = await asyncio.to_thread(node_status, watched.data_dir)
    assert doc["running"] and doc["pid"] == os.getpid() and doc["registration"] == "open"
    assert doc["settings"]["node"]["registration"] == "open" and doc["changed_in_file"] == ["node.registration"]
    assert doc["metrics_listening"] == [watched.metrics_url.removeprefix("http://").removesuffix("/metrics")]
    shown = await asyncio.to_thread(rxfed, "node", "status", str(watched.data_dir))
    assert shown.returncode == 0 and "running: pid" in shown.stdout
    assert "rxfed.toml differs from what the node runs (node.registration): edited since it started" in shown.stdout
    assert oct(os.stat(control.socket_path(watched.data_dir)).st_mode & 0o777) == "0o600"
    await watched.stop()
    assert not control.socket_path(watched.data_dir).exists()
    down = await asyncio.to_thread(rxfed, "node", "status", str(watched.data_dir), "--json")
    assert down.returncode == 1 and "is not running" in down.stderr and len(down.stderr.splitlines()) == 1
    doc = json.loads(down.stdout)
    assert doc["running"] is False and doc["settings"] is None and doc["registration"] == "closed"


async def test_one_data_dir_serves_one_node_and_a_stale_socket_is_replaced(node, tmp_path):
    with pytest.raises(ConfigFileError, match="another node is running"):
        await NodeHarness(node.data_dir).start()
    await node.stop()
    stale = socket.socket(socket.AF_UNIX)  # left behind by a node that was killed
    stale.bind(str(control.socket_path(node.data_dir)))
    stale.close()
    again = await NodeHarness(node.data_dir).start()
    try:
        assert (await asyncio.to_thread(node_status, node.data_dir))["running"]
    finally:
        await again.stop()


async def test_a_long_data_dir_path_still_gets_a_control_socket(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    node = await NodeHarness(deep).start()
    try:
        assert len(str(control.socket_path(deep))) > 108
        assert (await asyncio.to_thread(node_status, deep))["running"]
    finally:
        await node.stop()


def test_a_node_process_reports_what_it_runs_and_cleans_up(tmp_path):
    """``rxfed node run`` with a port override and a metrics listener: status shows the
    port it listens on (and that the file says otherwise), the listener serves, and a
    SIGTERM leaves no control socket behind."""
    import signal
    import time

    from rxfed.node.admin import init_node

    data, port, metrics_port = tmp_path / "n", free_port(), free_port()
    init_node(data, name="process", port=free_port())
    path = data / "rxfed.toml"
    path.write_text(path.read_text().replace('listen = ""', f'listen = "127.0.0.1:{metrics_port}"'))
    proc = subprocess.Popen([sys.executable, "-m", "rxfed", "node", "run", str(data), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        for _ in range(200):
            status = rxfed("node", "status", str(data), "--json")
            if status.returncode == 0:
                break
            time.sleep(0.1)
        else:
            pytest.fail(proc.stderr.read().decode())
        doc = json.loads(status.stdout)
        assert doc["pid"] == proc.pid and doc["settings"]["node"]["port"] == port
        assert doc["changed_in_file"] == ["node.port"] and doc["metrics_listening"] == [f"127.0.0.1:{metrics_port}"]
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            assert b"rxfed_node_info" in r.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert not control.socket_path(data).exists()
    assert rxfed("node", "status", str(data)).returncode == 1


# -- accounts ------------------------------------------------------------------------------------


async def test_a_suspended_account_is_refused_but_can_take_its_data_and_go(node, make_patient):
    patient, other = await make_patient(), await make_patient()
    address = await PatientCommunities(patient).create("Peer support", condition="E11")
    done = await asyncio.to_thread(administer.suspend, node.data_dir, patient.patient, reason="spam reports")
    assert done == {"account": patient.patient, "suspended": True, "changed": True, "node_told": True}
    with pytest.raises(NodeRefused) as refused:
        await patient.add_journal(feeling=3)
    assert (refused.value.status, refused.value.code) == (403, "account_suspended")
    await other.add_journal(feeling=3)  # nobody else is affected
    listed = {a["account"]: a for a in await asyncio.to_thread(administer.accounts_list, node.data_dir)}
    assert listed[patient.patient]["suspended_reason"] == "spam reports" and listed[other.patient]["suspended"] is None
    # reads, leaving and erasure stay open
    assert len(await patient.devices()) == 1
    await PatientCommunities(patient).leave(address)
    await asyncio.to_thread(administer.unsuspend, node.data_dir, patient.patient)
    await patient.add_journal(feeling=4)
    await asyncio.to_thread(administer.suspend, node.data_dir, patient.patient, reason=None)
    erased = await patient.erase_account(remove_profile=False)
    assert erased["erased"] and erased["not_left"] == []
    log = await asyncio.to_thread(administer.operator_log, node.data_dir, 10)
    assert [(e["action"], e["subject"]) for e in log] == [("account.suspend", patient.patient),
                                                          ("account.unsuspend", patient.patient),
                                                          ("account.suspend", patient.patient)]
    assert log[0]["detail"] == {"reason": "spam reports"} and log[0]["by"]


async def test_only_a_verified_signer_learns_its_account_is_suspended(node, make_patient):
    from helpers import signed_headers

    patient = await make_patient()
    await asyncio.to_thread(administer.suspend, node.data_dir, patient.patient, reason=None)
    headers = {**signed_headers(patient, "POST", "/v1/vault", b'{"a":1}'), "Content-Type": "application/json"}
    status, doc = await raw_request(node.url, "POST", "/v1/vault", b'{"a":2}', headers)  # not what was signed
    assert (status, doc["error"]) == (401, "bad_signature")


async def test_a_suspension_the_node_was_not_told_of_is_picked_up(node, make_patient):
    from rxfed.store import OperatorEntry

    patient = await make_patient()
    await node.app_store().set_suspended(patient.patient, since=1, reason=None,
                                         log=OperatorEntry(1, "account.suspend", patient.patient, "test"))
    await patient.add_journal(feeling=3)  # not yet known to the running node
    await node.state.reload_suspended()  # what housekeeping does every few seconds
    with pytest.raises(NodeRefused, match="suspended"):
        await patient.add_journal(feeling=3)


async def test_operator_erasure(node, make_patient):
    from rxfed.client.consent import PatientConsent
    from rxfed.testing import builtin_plugins

    patient, granting = await make_patient(), await make_patient()
    await patient.add_journal(feeling=5)
    await granting.add_condition("E11.9")
    await PatientConsent(granting, plugins=builtin_plugins()).grant("treatment.outcome", "research", f"plugin:{node.node_id}/outcomes")
    with pytest.raises(Conflict, match="live consent grant"):
        await asyncio.to_thread(administer.erase, node.data_dir, granting.patient, reason=None)
    forced = await asyncio.to_thread(administer.erase, node.data_dir, granting.patient, reason="court order",
                                     force=True)
    assert forced["live_grants_left"] == 1
    done = await asyncio.to_thread(administer.erase, node.data_dir, patient.patient, reason="asked by phone")
    assert done["erased"] and done["node_told"]
    with pytest.raises(NodeRefused) as gone:
        await patient.add_journal(feeling=1)
    assert gone.value.status == 401
    assert json.loads(await node.app_store().tombstone(patient.patient))["type"] == "rxfed.operator-erasure"
    with pytest.raises(NotFound, match="was erased"):
        await asyncio.to_thread(administer.erase, node.data_dir, patient.patient, reason=None)
    assert {a["account"] for a in await asyncio.to_thread(administer.accounts_list, node.data_dir)} == set()
    log = await asyncio.to_thread(administer.operator_log, node.data_dir, 10)
    assert [e["detail"].get("reason") for e in log] == ["court order", "asked by phone"]


def test_account_commands_and_their_exit_codes(tmp_path):
    from rxfed.node.admin import init_node

    data = tmp_path / "n"
    init_node(data, name="cli", port=18473)
    listed = rxfed("node", "accounts", str(data), "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == {"accounts": []}
    assert rxfed("node", "accounts", str(data), "suspend").returncode == 2
    bad = rxfed("node", "accounts", str(data), "suspend", "Not-An-Id")
    assert bad.returncode == 2 and "is not an account id" in bad.stderr
    unknown = rxfed("node", "accounts", str(data), "erase", "0" * 32)
    assert unknown.returncode == 1 and "no account" in unknown.stderr
    assert rxfed("node", "accounts", str(data), "unsuspend", "0" * 32, "--force").returncode == 2
    assert rxfed("node", "communities", str(data), "remove", "nonsense").returncode == 2
    assert rxfed("node", "communities", str(data), "remove", f"{'a' * 43}@example.org").returncode in (1, 2)
    log = rxfed("node", "log", str(data), "--json")
    assert log.returncode == 0 and json.loads(log.stdout) == {"entries": []}
    plugins = rxfed("node", "plugins", str(data), "--json")
    assert plugins.returncode == 0 and json.loads(plugins.stdout)["running"] is False


# -- communities ---------------------------------------------------------------------------------


async def test_communities_list_flags_an_abandoned_one_and_remove_takes_it_away(node, make_patient):
    admin_patient, member = await make_patient(), await make_patient()
    address = await PatientCommunities(admin_patient).create("Night shift diabetics", condition="E11")
    await PatientCommunities(member).join(address)
    (row,) = await asyncio.to_thread(administer.communities_list, node.data_dir)
    assert row["community"] == address and row["hosted"] and row["members"] == 2 and row["admin_left"] is False
    await PatientCommunities(admin_patient).leave(address)
    (row,) = await asyncio.to_thread(administer.communities_list, node.data_dir)
    assert row["members"] == 1 and row["admin_left"] is True
    shown = await asyncio.to_thread(rxfed, "node", "communities", str(node.data_dir), "list")
    assert "ADMIN LEFT" in shown.stdout
    removed = await asyncio.to_thread(rxfed, "node", "communities", str(node.data_dir), "remove", address,
                                      "--reason", "abandoned", "--json")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout) == {"community": address, "removed": True, "node_told": True}
    assert (await raw_request(node.url, "GET", "/v1/communities"))[1] == {"communities": []}
    assert await asyncio.to_thread(administer.communities_list, node.data_dir) == []
    with pytest.raises((NodeRefused, NotFound)):  # the member can read and post nothing more in it
        await PatientCommunities(member).post(address, "hello?")
    with pytest.raises(NotFound):
        await asyncio.to_thread(administer.remove_community, node.data_dir, address, reason=None)
    with pytest.raises(BadRequest):
        await asyncio.to_thread(administer.remove_community, node.data_dir, "no-at-sign", reason=None)
    (entry,) = await asyncio.to_thread(administer.operator_log, node.data_dir, 10)
    assert entry["action"] == "community.remove" and entry["detail"] == {"reason": "abandoned"}


async def test_plugin_health_from_the_running_node(node):
    node.state.plugins._failed("outcomes", "rxfed_receive_signals", "RuntimeError: boom")
    shown = await asyncio.to_thread(rxfed, "node", "plugins", str(node.data_dir))
    assert shown.returncode == 0 and "outcomes: enabled" in shown.stdout and "1 failures" in shown.stdout
    assert "RuntimeError: boom" in shown.stdout


async def test_a_patient_who_erases_their_account_leaves_every_member_list(node, make_patient):
    admin_patient, member = await make_patient(), await make_patient()
    address = await PatientCommunities(admin_patient).create("Morning walkers", condition="E11")
    await PatientCommunities(member).join(address)
    (row,) = await asyncio.to_thread(administer.communities_list, node.data_dir)
    assert row["members"] == 2
    erased = await member.erase_account(remove_profile=False)
    assert erased["left"] == [address] and erased["not_left"] == []
    (row,) = await asyncio.to_thread(administer.communities_list, node.data_dir)
    assert row["members"] == 1 and row["admin_left"] is False
    assert len((await PatientCommunities(admin_patient).read(address)).state.joined()) == 1  # what members see


@pytest.mark.parametrize("body", [["not", "an", "object"], {"accounts": [{"a": 1}]}, {"communities": [["x"]]},
                                  {"accounts": 7}, {"accounts": "abc"}])
async def test_the_control_socket_refuses_a_malformed_reload(node, body):
    """Ids that are not strings used to be looked up as they came (500, a traceback in the log)."""
    with pytest.raises(control.NodeUnreachable, match="400"):
        await asyncio.to_thread(control.ask, node.data_dir, "POST", "/reload", body)
    assert (await asyncio.to_thread(control.ask, node.data_dir, "GET", "/status"))["running"] is True


@pytest.mark.skipif(sys.platform != "linux", reason="Linux creates a socket file with its socket's mode")
def test_the_control_socket_is_private_from_the_moment_it_exists(tmp_path, monkeypatch):
    """The socket file used to be created with the umask's mode (0775 under umask 002) and
    made 0600 only after: in between, another user could connect."""
    import stat

    monkeypatch.setattr(control.os, "chmod", lambda *a, **k: None)  # the moment between bind and chmod
    old = os.umask(0o002)
    try:
        sock = control.bind(tmp_path / "admin.sock")
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.lstat(tmp_path / "admin.sock").st_mode) == 0o600
    finally:
        sock.close()
