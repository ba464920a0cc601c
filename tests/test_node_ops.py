"""Operating a node: TLS, rate limits, quotas, registration modes, well-known document."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import subprocess
import sys
import time
import urllib.request

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import PASSPHRASE
from helpers import raw_request, signed
from rxfed.client import PatientClient
from rxfed.client.sdk import NodeRefused
from rxfed.node.config import Limits
from rxfed.testing import TEST_LIMITS, NodeHarness, free_port


async def test_well_known_and_health(node):
    status, doc = await raw_request(node.url, "GET", "/.well-known/rxfed")
    assert status == 200
    assert doc["node_id"] == node.config.node_id and doc["protocol_versions"] == ["1"]
    assert doc["keys"][0]["alg"] == "ed25519" and doc["keys"][0]["valid_until"] is None
    assert (await raw_request(node.url, "GET", "/health")) == (200, {"status": "ok"})
    assert doc["rotations"] == []


async def test_well_known_publishes_signed_rotations(tmp_path):
    """After two rotations (picked up while the node runs) each key introduces its successor
    in a rotation statement signed by the key before it."""
    from rxfed.crypto import b64e
    from rxfed.node.config import load_node_keys, rotate_node_key
    from rxfed.protocol.federation import KeyRotation, NodeDocument

    harness = await NodeHarness(tmp_path / "rotating").start()
    try:
        rotate_node_key(harness.data_dir, overlap=600)
        rotate_node_key(harness.data_dir, overlap=60)
        keys = load_node_keys(harness.data_dir)
        harness.state._keys_mtime = 1.0  # as if the key file changed since the last look
        harness.state.reload_keys()
        _, doc = await raw_request(harness.url, "GET", "/.well-known/rxfed")
        rotations = [KeyRotation.from_statement(r, "r") for r in doc["rotations"]]
        assert [(b64e(r.old), b64e(r.new)) for r in rotations] == [
            (b64e(keys[0].key.public), b64e(keys[1].key.public)), (b64e(keys[1].key.public), b64e(keys[2].key.public))]
        assert [(r.valid_from, r.old_valid_until) for r in rotations] == [
            (keys[1].valid_from, keys[0].valid_until), (keys[2].valid_from, keys[1].valid_until)]
        assert len(NodeDocument.from_json(doc).rotations) == 2 and {r.node for r in rotations} == {harness.node_id}
    finally:
        await harness.stop()


async def test_rate_limit_per_key(tmp_path, make_patient):
    harness = NodeHarness(tmp_path / "limited", limits=Limits(requests_per_second=1, burst=3,
                                                              anonymous_per_minute=600, anonymous_burst=100))
    await harness.start()
    try:
        patient = await make_patient(harness)
        statuses = [(await signed(patient, "GET", "/v1/account"))[0] for _ in range(6)]
        assert statuses[:2] == [200, 200] and 429 in statuses
    finally:
        await harness.stop()


async def test_anonymous_rate_limit(tmp_path):
    harness = NodeHarness(tmp_path / "anon", limits=Limits(anonymous_per_minute=1, anonymous_burst=2))
    await harness.start()
    try:
        for i in range(2):
            client, _ = await PatientClient.register(harness.url, tmp_path / f"p{i}", PASSPHRASE, kdf="min")
            await client.close()
        with pytest.raises(NodeRefused) as info:
            await PatientClient.register(harness.url, tmp_path / "p3", PASSPHRASE, kdf="min")
        assert info.value.status == 429
        assert not (tmp_path / "p3" / "keys.json").exists()
    finally:
        await harness.stop()


async def test_quota(tmp_path, make_patient):
    harness = NodeHarness(tmp_path / "quota", limits=attrs.evolve(TEST_LIMITS, max_records=2))
    await harness.start()
    try:
        patient = await make_patient(harness)
        await patient.add_records([("journal", {"note": "a"}), ("journal", {"note": "b"})])
        with pytest.raises(NodeRefused) as info:
            await patient.add_journal(feeling=1)
        assert info.value.code == "quota_exceeded"
        assert len(await patient.records()) == 2
    finally:
        await harness.stop()


@pytest.mark.parametrize("mode", ["invite", "closed"])
async def test_registration_modes(tmp_path, mode):
    harness = NodeHarness(tmp_path / mode, registration=mode)
    await harness.start()
    try:
        with pytest.raises(NodeRefused) as info:
            await PatientClient.register(harness.url, tmp_path / "p", PASSPHRASE, kdf="min", invite="AAAA-BBBB")
        assert info.value.status == 403
        if mode == "invite":
            from rxfed.node.app import invite_hash

            await harness.app_store().add_invites([invite_hash("ABCD-EFGH")], now=1)
            client, _ = await PatientClient.register(harness.url, tmp_path / "p", PASSPHRASE, kdf="min",
                                                     invite="abcd efgh".replace(" ", "-"))
            await client.close()
            with pytest.raises(NodeRefused):  # single use
                await PatientClient.register(harness.url, tmp_path / "q", PASSPHRASE, kdf="min", invite="ABCD-EFGH")
    finally:
        await harness.stop()


def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return tmp_path / "cert.pem", tmp_path / "key.pem"


def test_tls(tmp_path):
    cert, key = _self_signed(tmp_path)
    port = free_port()
    env = {**os.environ, "RXFED_PASSPHRASE": "tls test pass phrase", "RXFED_KDF": "min", "SSL_CERT_FILE": str(cert)}
    run = lambda *a: subprocess.run([sys.executable, "-m", "rxfed", *a], capture_output=True, text=True, env=env,
                                    timeout=60, stdin=subprocess.DEVNULL)
    data = tmp_path / "node"
    assert run("node", "init", str(data), "--name", "tls", "--port", str(port),
               "--public-url", f"https://127.0.0.1:{port}").returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "rxfed", "node", "run", str(data), "--tls-cert", str(cert),
                             "--tls-key", str(key)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        import ssl

        ctx = ssl.create_default_context(cafile=str(cert))
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", timeout=1, context=ctx) as r:
                    assert json.load(r) == {"status": "ok"}
                    break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(proc.stderr.read().decode())
        out = run("patient", "register", "--node", f"https://127.0.0.1:{port}", "--profile", str(tmp_path / "p"))
        assert out.returncode == 0, out.stderr
        assert run("patient", "condition", "add", "--profile", str(tmp_path / "p"), "E11.9").returncode == 0
    finally:
        proc.terminate()
        proc.wait(20)


async def test_node_status_shows_where_the_store_commits(node, make_patient):
    """An operator sees whether batches commit on the event loop or the writer thread, the
    commit time and the counts: from the running node at once, and once it stopped, as it
    last recorded them."""
    import asyncio

    from rxfed.node import admin
    from rxfed.node.app import report_store

    patient = await make_patient()
    await patient.add_journal(feeling=5)
    store = (await asyncio.to_thread(admin.node_status, node.data_dir))["store"]
    assert store["mode"] in ("event loop", "writer thread") and store["inline_batches"] >= 1
    assert set(store) == {"at", "mode", "commit_us", "inline_batches", "thread_batches", "switches"}
    await report_store(node.state, None)
    await node.stop()
    stopped = await asyncio.to_thread(admin.node_status, node.data_dir)
    assert not stopped["running"] and stopped["store"]["inline_batches"] >= 1
