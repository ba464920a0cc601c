"""The node as an operator runs it: file modes, signals and logs, a full disk, connection
limits, the systemd unit, trusted CA bundles."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

from rxfed.node import admin
from rxfed.node.config import NodeConfig
from rxfed.testing import free_port


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_init_into_an_existing_open_directory_makes_everything_private(tmp_path):
    """The database holds received signals and audit logs: it, its WAL and -shm files are
    0600, and the directory is tightened to 0700 even when it existed 0755."""
    data = tmp_path / "node"
    data.mkdir()
    os.chmod(data, 0o755)
    old = os.umask(0o022)
    try:
        admin.init_node(data, name="private", port=free_port())
    finally:
        os.umask(old)
    assert _mode(data) == 0o700
    config = NodeConfig.load(data)

    async def write_and_look(store):
        await store.add_invites([os.urandom(32)], int(time.time()))
        return {p.name: _mode(p) for p in data.iterdir() if p.name.startswith("rxfed.db")}

    modes = asyncio.run(admin._with_store(config, write_and_look))
    assert set(modes) >= {"rxfed.db", "rxfed.db-wal", "rxfed.db-shm"}
    assert modes == dict.fromkeys(modes, 0o600)
    assert _mode(data / "node-keys.json") == 0o600


def test_a_store_left_readable_by_an_older_version_is_tightened(tmp_path):
    data = tmp_path / "node"
    admin.init_node(data, name="older", port=free_port())
    os.chmod(data / "rxfed.db", 0o644)
    asyncio.run(admin._with_store(NodeConfig.load(data), lambda store: store.get_meta("created")))
    assert _mode(data / "rxfed.db") == 0o600
    (data / "node.log").write_text("an older node's line\n")
    os.chmod(data / "node.log", 0o644)
    from rxfed.node.logs import LogFile

    LogFile(data / "node.log").close()
    assert _mode(data / "node.log") == 0o600


# -- signals and logs --------------------------------------------------------------------


def _node_dir(tmp_path, **settings):
    """A node made by ``node init``, with ``settings`` (key = TOML value) changed in rxfed.toml."""
    import re

    data = tmp_path / "node"
    admin.init_node(data, name="ops test", port=free_port())
    text = (data / "rxfed.toml").read_text()
    for key, value in settings.items():
        text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        assert n == 1, key
    (data / "rxfed.toml").write_text(text)
    return data, NodeConfig.load(data)


def _start(data, *, files: int | None = None):
    """``rxfed node run DATA`` in a subprocess (with at most ``files`` open files, soft and
    hard, when given), once it answers /health."""
    import subprocess
    import sys
    import urllib.request

    config = NodeConfig.load(data)
    run = ["-m", "rxfed", "node", "run", str(data)]
    if files:
        run = ["-c", "import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_NOFILE, "
               f"({files}, {files})); sys.argv = ['rxfed', 'node', 'run', {str(data)!r}]; "
               "runpy.run_module('rxfed', run_name='__main__', alter_sys=True)"]
    proc = subprocess.Popen([sys.executable, *run], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{config.port}"
    for _ in range(150):
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return proc, url
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("node did not start: " + proc.stderr.read().decode())


def _get(url: str, timeout: float = 5) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _wait_for(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sighup_reopens_the_logs_and_sigterm_stops_cleanly(tmp_path):
    """logrotate moves node.log and access.log away and sends SIGHUP: the node reopens
    both, and the next lines land in new files (created 0600). The first line says what
    started; SIGTERM exits 0 after a line saying the node stopped cleanly."""
    import signal

    import rxfed

    data, config = _node_dir(tmp_path, access='"access.log"')
    proc, url = _start(data)
    try:
        _get(url + "/.well-known/rxfed")
        _wait_for(lambda: (data / "access.log").stat().st_size > 0)  # flushed every 2 s
        os.rename(data / "node.log", data / "node.log.1")
        os.rename(data / "access.log", data / "access.log.1")
        proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: (data / "node.log").exists() and "reopened" in (data / "node.log").read_text())
        assert proc.poll() is None
        assert _get(url + "/health") == 200
        _wait_for(lambda: (data / "access.log").exists() and "/health" in (data / "access.log").read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
    stderr = proc.stderr.read().decode()
    assert rc == 0, stderr
    first = (data / "node.log.1").read_text()
    assert f"rxfed {rxfed.__version__} node {config.node_id} started" in first
    assert f"listening on http://127.0.0.1:{config.port}" in first and "storage sqlite" in first
    assert "/.well-known/rxfed" in (data / "access.log.1").read_text()
    after = (data / "node.log").read_text()
    assert after.rstrip().endswith("node stopped cleanly") and "started" not in after
    assert "Traceback" not in stderr + first + after
    assert _mode(data / "node.log") == _mode(data / "access.log") == 0o600


def test_the_access_log_is_off_by_default_and_names_no_client(tmp_path):
    """No access log unless configured; when configured, a line has the time, method,
    route pattern, status, size and duration, and no client address."""
    data, config = _node_dir(tmp_path)
    assert config.access_log is None and NodeConfig.load(data).access_log is None
    assert 'access = ""' in (data / "rxfed.toml").read_text()
    data, config = _node_dir(tmp_path / "on", access='"access.log"')
    proc, url = _start(data)
    try:
        _get(url + "/health")
        _wait_for(lambda: (data / "access.log").exists() and "/health" in (data / "access.log").read_text())
    finally:
        proc.terminate()
        proc.wait(30)
    lines = (data / "access.log").read_text().splitlines()
    assert lines and all("127.0.0.1" not in line for line in lines)
    assert lines[-1].split()[1:4] == ["GET", "/health", "200"]


# -- a full disk -------------------------------------------------------------------------


def _fill_disk(store, full: bool = True) -> None:
    """SQLite's own full disk on the store's write connection: a database that may not
    grow answers SQLITE_FULL ("database or disk is full") to every write needing a page."""
    with store._conn_lock:
        store._conn.execute(f"PRAGMA max_page_count={1 if full else 1 << 30}")


async def test_a_full_disk_answers_503_with_retry_after_and_health_says_so(node, make_patient, monkeypatch, caplog):
    """Writes answer 503 with Retry-After; /health answers 503 naming the store while
    writes fail, and ok again once they work; the log says so once, not once per write."""
    import logging

    import aiohttp
    import pytest

    from helpers import raw_request
    from rxfed.client.sdk import NodeRefused
    from rxfed.node import app

    answers = []

    async def on_end(_session, _ctx, params):
        answers.append((params.response.status, params.response.headers.get("Retry-After")))

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_end)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        patient = await make_patient(session=session)
        await patient.add_journal(feeling=3)
        _fill_disk(node.app_store())
        caplog.set_level(logging.INFO, "rxfed")
        for _ in range(3):
            with pytest.raises(NodeRefused) as refused:
                await patient.add_journal(note="x" * 4000)
            assert refused.value.status == 503
        assert answers[-1] == (503, "5")
        status, doc = await raw_request(node.url, "GET", "/health")
        assert status == 503 and doc["status"] == "failing"
        assert doc["store"]["writable"] is False and doc["store"]["error"] == "the disk is full"
        failing = [r for r in caplog.records if "store writes are failing" in r.getMessage()]
        assert len(failing) == 1 and "database or disk is full" in failing[0].getMessage()

        _fill_disk(node.app_store(), full=False)
        monkeypatch.setattr(app, "HEALTH_PROBE_S", 0.0)  # no write has come since: /health tries one
        assert await raw_request(node.url, "GET", "/health") == (200, {"status": "ok"})
        assert any("store writes work again" in r.getMessage() for r in caplog.records)
        await patient.add_journal(note="x" * 4000)


def test_a_log_file_that_cannot_be_written_says_so_once(tmp_path, capsys):
    """Every write of node.log failing (ENOSPC) costs lines, not a traceback per line on
    stderr; when writes work again the log says how many lines were lost."""
    import errno
    import io
    import logging

    from rxfed.node.logs import LogFile

    class FullDisk(io.StringIO):
        full = True

        def write(self, text):
            if self.full:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(text)

    handler = LogFile(tmp_path / "node.log")
    handler.stream.close()
    handler.stream = stream = FullDisk()
    logger = logging.getLogger("rxfed.test.fulldisk")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for i in range(50):
            logger.warning("line %d", i)
        stream.full = False
        logger.warning("after")
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1 and "No space left on device" in err
    assert stream.getvalue().splitlines()[-2:] == ["after", "50 log lines were lost while "
                                                   f"{tmp_path / 'node.log'} could not be written"]


async def test_an_access_log_that_cannot_be_written_keeps_connections(monkeypatch, capsys):
    """ENOSPC from the access log inside aiohttp loses the line, never the keep-alive
    connection, and writes no traceback."""
    import errno

    import aiohttp
    from aiohttp import web

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        flush = write

    monkeypatch.setattr(admin.AccessLog, "stream", FullDisk())

    async def which(request):
        return web.Response(text=str(id(request.protocol)))

    app = web.Application()
    app.router.add_get("/", which)
    runner = web.AppRunner(app, access_log_class=admin.AccessLog)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            seen = []
            for _ in range(3):
                async with session.get(f"http://127.0.0.1:{port}/") as resp:
                    assert resp.status == 200
                    seen.append(await resp.text())
        assert len(set(seen)) == 1  # one connection served all three
    finally:
        await runner.cleanup()
    assert "Traceback" not in capsys.readouterr().err


def test_a_node_whose_logs_hit_a_full_disk_serves_and_stops_cleanly(tmp_path):
    """node.log and access.log on a full device (/dev/full: every write ENOSPC): requests
    are answered on one keep-alive connection, stderr says so in a line or two with no
    traceback, and SIGTERM still exits 0."""
    import http.client

    import pytest

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    data, config = _node_dir(tmp_path, access='"access.log"')
    os.unlink(data / "node.log") if (data / "node.log").exists() else None
    os.symlink("/dev/full", data / "node.log")
    os.symlink("/dev/full", data / "access.log")
    proc, _url = _start(data)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", config.port, timeout=5)
        for _ in range(20):
            conn.request("GET", "/.well-known/rxfed")
            assert conn.getresponse().read()
        time.sleep(2.5)  # an access-log flush fails in between
        for _ in range(5):
            conn.request("GET", "/health")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read()
        conn.close()
    finally:
        proc.terminate()
        rc = proc.wait(30)
    err = proc.stderr.read().decode()
    assert rc == 0, err
    assert "Traceback" not in err and "Logging error" not in err
    assert len(err.splitlines()) <= 4, err


# -- connections and open files ----------------------------------------------------------


def test_raise_fd_limit_lifts_the_soft_limit_to_the_hard_one():
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import json, resource; from rxfed.node.admin import raise_fd_limit; "
                          "_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
                          "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)); "
                          "print(json.dumps([raise_fd_limit(), hard, resource.getrlimit(resource.RLIMIT_NOFILE)[0]]))"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (before, after), hard, now = json.loads(out.stdout)
    assert before == 256 and after == now == min(hard, 1 << 20) and now > 256


def test_idle_connections_cannot_lock_out_new_clients(tmp_path):
    """300 idle connections to a node allowed 256 open files (soft and hard: nothing to
    raise) and 100 connections: new clients are still served at once, because a new
    connection past the cap closes the oldest idle one."""
    import socket

    data, config = _node_dir(tmp_path, max_connections="100", keepalive_timeout="60.0")
    proc, url = _start(data, files=256)
    idle = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", config.port), timeout=5))
        started = time.monotonic()
        assert [_get(url + "/health", timeout=3) for _ in range(20)] == [200] * 20
        assert time.monotonic() - started < 10
    finally:
        for sock in idle:
            sock.close()
        proc.terminate()
        rc = proc.wait(30)
    log = (data / "node.log").read_text()
    assert rc == 0 and "open-file limit 256" in log and "at most 100 connections" in log
    assert "connection limit (100) reached" in log


def test_an_idle_connection_is_closed_after_the_keepalive_timeout(tmp_path):
    import socket

    data, config = _node_dir(tmp_path, keepalive_timeout="1.0")
    proc, _url = _start(data)
    try:
        with socket.create_connection(("127.0.0.1", config.port), timeout=10) as sock:
            started = time.monotonic()
            assert sock.recv(1) == b""  # closed by the node, before any request
            assert time.monotonic() - started < 5
    finally:
        proc.terminate()
        proc.wait(30)


# -- deployment files --------------------------------------------------------------------

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _unit() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / "rxfed-node.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


def test_the_systemd_unit_runs_the_node_hardened():
    """What the unit promises: a dedicated user, a read-only system but for the data
    directory, no privileges; reload is SIGHUP; the commands are ones rxfed has."""
    import shlex

    from rxfed.cli import build_parser

    unit = _unit()
    assert unit["User"] == ["rxfed"] and unit["NoNewPrivileges"] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"] and unit["ReadWritePaths"] == ["/var/lib/rxfed"]
    for key in ("PrivateTmp", "PrivateDevices", "ProtectHome", "ProtectKernelTunables", "RestrictSUIDSGID"):
        assert unit[key] == ["yes"], key
    assert unit["CapabilityBoundingSet"] == [""] and unit["UMask"] == ["0077"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    for command in unit["ExecStartPre"] + unit["ExecStart"]:
        argv = shlex.split(command)
        assert argv[0].endswith("/rxfed") and argv[-1].startswith("/var/lib/rxfed/")
        args = build_parser(argv[1:]).parse_args(argv[1:])
        assert args.action in ("check", "run")


def test_systemd_analyze_verifies_the_unit(tmp_path):
    import shutil
    import subprocess
    import sys

    import pytest

    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed here (package systemd)")
    rxfed = Path(sys.executable).with_name("rxfed")  # verify wants ExecStart to exist
    text = (DEPLOY / "systemd" / "rxfed-node.service").read_text()
    unit = tmp_path / "rxfed-node.service"
    unit.write_text(text.replace("/opt/rxfed/bin/rxfed", str(rxfed)).replace("/var/lib/rxfed", str(tmp_path)))
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr


def test_the_logrotate_file_parses(tmp_path):
    import getpass
    import shutil
    import subprocess

    import pytest

    if not shutil.which("logrotate"):
        pytest.skip("logrotate is not installed here")
    user = getpass.getuser()
    text = (DEPLOY / "logrotate" / "rxfed-node").read_text().replace("/var/lib/rxfed/node", str(tmp_path))
    conf = tmp_path / "rxfed-node"
    conf.write_text(text.replace("rxfed rxfed", f"{user} {user}"))
    (tmp_path / "node.log").write_text("x\n")
    out = subprocess.run(["logrotate", "--debug", "--state", str(tmp_path / "state"), str(conf)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "error" not in out.stderr.lower(), out.stderr


# -- trusted CA bundles ------------------------------------------------------------------


def _private_ca(where: Path) -> tuple[Path, Path, Path]:
    """A certificate authority of its own (as a hospital network has) and a certificate it
    signed for 127.0.0.1: (ca.pem, cert.pem, key.pem)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "St Example Hospital test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    where.mkdir(parents=True, exist_ok=True)
    paths = where / "ca.pem", where / "cert.pem", where / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


async def test_federation_trusts_the_configured_ca_bundle(tmp_path, monkeypatch):
    """A peer whose certificate a private CA signed: a node with ``[federation] ca_bundle``
    naming that CA fetches its key document over HTTPS; a node without it refuses."""
    import shutil
    import ssl

    import attrs
    import pytest
    from aiohttp import web

    from rxfed.errors import Unavailable
    from rxfed.node.app import create_app
    from rxfed.node.config import create_node_keys, load_node_keys
    from rxfed.testing import TEST_FEDERATION, TEST_LIMITS, NodeHarness, builtin_plugins

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    ca, cert, key = _private_ca(tmp_path / "pki")
    port = free_port()
    peer = NodeConfig(data_dir=tmp_path / "peer", name="TLS peer", public_url=f"https://127.0.0.1:{port}", port=port,
                      limits=TEST_LIMITS)
    peer.data_dir.mkdir()
    create_node_keys(peer.data_dir)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    runner = web.AppRunner(create_app(peer, load_node_keys(peer.data_dir), plugins=builtin_plugins()))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_tls).start()
    (tmp_path / "trusting").mkdir()
    shutil.copy(ca, tmp_path / "trusting" / "hospital-ca.pem")
    trusting = await NodeHarness(tmp_path / "trusting", federation=attrs.evolve(
        TEST_FEDERATION, ca_bundle="hospital-ca.pem")).start()
    default = await NodeHarness(tmp_path / "default").start()
    try:
        for node in (trusting, default):
            await node.app_store().set_peer_policy(peer.node_id, "allowed", url=peer.public_url)
            await node.state.federation.policy_changed()
        assert (await trusting.state.federation.document(peer.node_id)).node_id == peer.node_id
        with pytest.raises(Unavailable):
            await default.state.federation.document(peer.node_id)
    finally:
        await trusting.stop()
        await default.stop()
        await runner.cleanup()


def test_node_check_names_a_bad_ca_bundle(tmp_path):
    import pytest

    from rxfed.node.config import ConfigFileError

    data, _config = _node_dir(tmp_path, ca_bundle='"hospital-ca.pem"')
    with pytest.raises(ConfigFileError) as missing:
        admin.check_node(data)
    assert missing.value.problems == [f"[federation] ca_bundle: {data / 'hospital-ca.pem'} does not exist"]
    (data / "hospital-ca.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigFileError) as bad:
        admin.check_node(data)
    assert len(bad.value.problems) == 1 and "is not a PEM file of CA certificates" in bad.value.problems[0]
    _private_ca(tmp_path / "pki")
    (data / "hospital-ca.pem").write_bytes((tmp_path / "pki" / "ca.pem").read_bytes())
    admin.check_node(data)


def test_the_patient_client_trusts_a_ca_bundle(tmp_path):
    """A node whose certificate a private CA signed: ``--ca-bundle`` or RXFED_CA_BUNDLE
    makes the patient's commands trust it; without, a certificate error and exit 1."""
    import subprocess
    import sys

    ca, cert, key = _private_ca(tmp_path / "pki")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "SSL_CERT_FILE"} | {
        "RXFED_PASSPHRASE": "ca bundle pass phrase", "RXFED_KDF": "min"}
    data = tmp_path / "node"
    admin.init_node(data, name="private CA", port=port, public_url=f"https://127.0.0.1:{port}")
    proc = subprocess.Popen([sys.executable, "-m", "rxfed", "node", "run", str(data), "--tls-cert", str(cert),
                             "--tls-key", str(key)], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    rxfed = lambda *a, extra=None: subprocess.run([sys.executable, "-m", "rxfed", *a], capture_output=True, text=True,
                                                  env=env | (extra or {}), timeout=60, stdin=subprocess.DEVNULL)
    node = f"https://127.0.0.1:{port}"
    try:
        import ssl

        trusted = ssl.create_default_context(cafile=str(ca))
        _wait_for(lambda: _serves(node, trusted), timeout=15)
        refused = rxfed("patient", "register", "--node", node, "--profile", str(tmp_path / "refused"))
        assert refused.returncode == 1 and "certificate verify failed" in refused.stderr
        flag = rxfed("patient", "register", "--node", node, "--profile", str(tmp_path / "flag"), "--ca-bundle", str(ca))
        assert flag.returncode == 0, flag.stderr
        assert rxfed("patient", "show", "--profile", str(tmp_path / "flag"), "--ca-bundle", str(ca)).returncode == 0
        variable = rxfed("patient", "register", "--node", node, "--profile", str(tmp_path / "variable"),
                         extra={"RXFED_CA_BUNDLE": str(ca)})
        assert variable.returncode == 0, variable.stderr
        missing = rxfed("patient", "register", "--node", node, "--profile", str(tmp_path / "missing"),
                        "--ca-bundle", str(tmp_path / "nowhere.pem"))
        assert missing.returncode == 2 and "nowhere.pem: no such file" in missing.stderr
    finally:
        proc.terminate()
        proc.wait(30)


def _serves(url: str, context) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/health", timeout=1, context=context):
            return True
    except OSError:
        return False


async def test_a_failing_store_is_not_reported_again_every_few_seconds(node, monkeypatch, caplog):
    """While the store's writes fail (it said so once), the housekeeping's status records
    failing every 5 s add no warning each (they would reach stderr)."""
    import logging

    from rxfed.errors import Unavailable
    from rxfed.node import app

    async def full(*_args):
        raise Unavailable("the store could not save this change; try again")

    store = node.state.store
    monkeypatch.setattr(store, "set_meta", full)
    caplog.set_level(logging.WARNING, "rxfed")
    monkeypatch.setattr(store, "write_health", lambda: {"writable": False, "since": 1, "error": "x",
                                                        "failed_batches": 1, "checked": 0.0})
    assert await app.report_store(node.state, None) is None
    assert await app.report_plugins(node.state, None) is None
    assert not caplog.records
    monkeypatch.setattr(store, "write_health", lambda: {"writable": True, "checked": 0.0})
    await app.report_store(node.state, None)
    assert "recording store status failed" in caplog.text
