"""Bad input anywhere gets a clear 4xx JSON error and changes nothing."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import PASSPHRASE
from helpers import raw_request, signed, signed_headers
from rxfed.client import PatientClient
from rxfed.client.profile import WrongPassphraseError
from rxfed.errors import BadRequest
from rxfed.protocol import vault as pv

ENDPOINTS = [("POST", "/v1/vault"), ("POST", "/v1/devices/revoke"), ("PUT", "/v1/recovery"),
             ("POST", "/v1/account/erase")]


async def vault_state(client):
    account = (await signed(client, "GET", "/v1/account"))[1]
    return account["counter"], account["records"], account["bytes"]


async def commit_body(client, **override):
    """A valid commit body for ``client`` (one new record), with fields overridden."""
    vault = await client.open_vault()
    from rxfed.client.records import Record
    from rxfed.client.sdk import record_ad
    from rxfed.crypto import b64e, random_bytes, sha256
    from rxfed.crypto.records import seal_record

    rid = random_bytes(16).hex()
    blob = seal_record(vault.state.secrets.keyring, record_ad(client.patient, rid, 1),
                       Record(rid, 1, "journal", 1, {"note": "x"}).to_plaintext())
    entries = dict(vault.state.entries)
    entries[rid] = (1, sha256(blob))
    secrets = vault.state.secrets
    manifest = pv.Manifest.issue(secrets.signing, patient=client.patient, epoch=secrets.epoch,
                                 counter=vault.counter + 1, entries=entries, now=int(time.time()))
    body = {"put": [{"id": rid, "version": 1, "blob": b64e(blob)}], "delete": [], "manifest": manifest.signed}
    body.update(override)
    return body


@pytest.fixture
async def patient(make_patient):
    p = await make_patient()
    await p.add_condition("E11.9")
    return p


@pytest.mark.parametrize("raw, code", [
    (b"{not json", "bad_json"),
    (b'{"put": [], "put": [], "manifest": {}}', "bad_json"),
    (b'{"put": [], "manifest": 1.5}', "bad_json"),
    (b"\xff\xfe", "bad_json"),
    (b"[]", "bad_request"),
    (b'{"manifest": {}, "extra": 1}', "unknown_field"),
    (b'{"put": []}', "missing_field"),
])
async def test_malformed_bodies(patient, raw, code):
    before = await vault_state(patient)
    status, doc = await signed(patient, "POST", "/v1/vault", raw)
    assert status == 400 and doc["error"] == code, doc
    assert await vault_state(patient) == before


async def test_oversized_body(patient, node):
    before = await vault_state(patient)
    status, doc = await signed(patient, "POST", "/v1/vault", b"{" + b" " * (node.config.limits.max_body_bytes + 1) + b"}")
    assert status == 413 and doc["error"] == "payload_too_large"
    assert await vault_state(patient) == before


async def test_valid_commit_then_replay_refused(patient):
    body = await commit_body(patient)
    raw = json.dumps(body).encode()
    headers = signed_headers(patient, "POST", "/v1/vault", raw)
    headers["Content-Type"] = "application/json"
    status, _ = await raw_request(patient.identity.node_url, "POST", "/v1/vault", raw, headers)
    assert status == 200
    after_first = await vault_state(patient)
    status, doc = await raw_request(patient.identity.node_url, "POST", "/v1/vault", raw, headers)
    assert status == 401 and doc["error"] == "replayed_request"
    assert await vault_state(patient) == after_first


async def test_wrong_signature_destination_and_clock(patient):
    before = await vault_state(patient)
    body = json.dumps(await commit_body(patient)).encode()
    headers = signed_headers(patient, "POST", "/v1/vault", body)
    sig = bytearray(headers["Rxfed-Signature"].encode())
    sig[5] = ord("A") if sig[5] != ord("A") else ord("B")
    cases = [
        ({**headers, "Rxfed-Signature": sig.decode()}, "bad_signature"),
        (signed_headers(patient, "POST", "/v1/vault", body, destination="evil.example:443"), "bad_signature"),
        (signed_headers(patient, "POST", "/v1/vault", body, now=time.time() - 3600), "stale_request"),
        (signed_headers(patient, "POST", "/v1/vault", body, now=time.time() + 3600), "stale_request"),
        (signed_headers(patient, "POST", "/v1/other", body), "bad_signature"),
        ({k: v for k, v in headers.items() if k != "Rxfed-Nonce"}, "unsigned"),
        ({**headers, "Rxfed-Created": "soon"}, "bad_signature_headers"),
        ({**headers, "Rxfed-Key": "not-a-key"}, "bad_signature_headers"),
    ]
    for hdrs, code in cases:
        status, doc = await raw_request(patient.identity.node_url, "POST", "/v1/vault", body,
                                        {**hdrs, "Content-Type": "application/json"})
        assert status in (400, 401) and doc["error"] == code, (code, doc)
    # a body changed after signing
    status, doc = await raw_request(patient.identity.node_url, "POST", "/v1/vault", body + b" ",
                                    {**headers, "Content-Type": "application/json"})
    assert status == 401 and doc["error"] == "bad_signature"
    assert await vault_state(patient) == before


async def test_manifest_of_another_patient_refused(make_patient):
    a, b = await make_patient(), await make_patient()
    body = await commit_body(a)
    before = await vault_state(b)
    status, doc = await signed(b, "POST", "/v1/vault", body)
    assert status == 403, doc
    assert await vault_state(b) == before


async def test_stale_manifest_counter_conflicts(patient):
    body = await commit_body(patient)
    await patient.add_condition("I10")  # moves the counter on
    before = await vault_state(patient)
    status, doc = await signed(patient, "POST", "/v1/vault", body)
    assert status == 409 and doc["error"] == "stale_manifest"
    assert await vault_state(patient) == before


async def test_unknown_paths_and_methods_are_json(node):
    status, doc = await raw_request(node.url, "GET", "/nope")
    assert status == 404 and doc["error"] == "not_found"
    status, doc = await raw_request(node.url, "DELETE", "/v1/vault")
    assert status == 405 and doc["error"] == "method_not_allowed"


async def test_unknown_key_refused(node, patient):
    other = PatientClient(patient.profile, patient.identity)
    from rxfed.crypto import SigningKeyPair

    status, doc = await signed(other, "GET", "/v1/vault", key=SigningKeyPair.generate())
    assert status == 401 and doc["error"] == "unknown_key"
    # the recovery key authenticates the recovery requests (bundle, vault read, enrolment,
    # rotation) and nothing else
    for method, path in (("GET", "/v1/account"), ("POST", "/v1/vault"), ("POST", "/v1/consent/grants")):
        status, doc = await signed(patient, method, path, {} if method == "POST" else None,
                                   key=patient.recovery_code.auth_key())
        assert status == 401 and doc["error"] == "unknown_key", path


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.recursive(
    st.none() | st.booleans() | st.integers(-10, 2**60) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["put", "delete", "manifest", "revocation", "keyrings", "recovery_keyring", "tombstone",
                         "statement", "root_bundle", "keyring", "body", "sig", "id", "version", "blob"]),
        children, max_size=5),
    max_leaves=12))
async def test_fuzzed_bodies_never_500(patient, body):
    before = await vault_state(patient)
    for method, path in ENDPOINTS:
        status, doc = await signed(patient, method, path, json.dumps(body).encode())
        assert 400 <= status < 500, (path, body, doc)
        assert set(doc) == {"error", "message"}
    assert await vault_state(patient) == before


async def test_wrong_passphrase(patient):
    with pytest.raises(WrongPassphraseError):
        PatientClient.open(patient.profile.path, PASSPHRASE + "x")


@pytest.mark.parametrize("call", [
    lambda p: p.add_condition("not-a-code"),
    lambda p: p.add_condition("123456", "snomed"),
    lambda p: p.add_journal(symptoms={"pain": 11}),
    lambda p: p.add_journal(feeling=-1),
    lambda p: p.add_journal(),
    lambda p: p.add_treatment("x", efficacy="seven"),
    lambda p: p.add_treatment("x", started="2026-02-30"),
    lambda p: p.add_treatment("x", started="2026-02-01", stopped="2026-01-01"),
])
async def test_invalid_records_rejected_before_sending(patient, call):
    before = await vault_state(patient)
    with pytest.raises(BadRequest):
        await call(patient)
    assert await vault_state(patient) == before
