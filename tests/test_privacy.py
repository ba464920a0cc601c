"""Threat-model promise 1: the node, its database, WAL and logs hold only ciphertext."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from conftest import MARKER, PASSPHRASE
from helpers import signed
from rxfed.client import IntegrityError, PatientClient, RollbackDetected

FHIR_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fhir"


def scan(data_dir: Path, needles: list[str]) -> dict[str, list[str]]:
    """Which needles appear (as UTF-8, or UTF-16 for good measure) in which files."""
    found: dict[str, list[str]] = {}
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for needle in needles:
            if needle.encode() in data or needle.encode("utf-16-le") in data or needle.lower().encode() in data:
                found.setdefault(needle, []).append(path.name)
    return found


@pytest.fixture
def node_log(node):
    """Send every log record (access log included) to a file inside the node's data dir."""
    handler = logging.FileHandler(node.data_dir / "node.log")
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    yield node.data_dir / "node.log"
    root.removeHandler(handler)
    root.setLevel(old_level)
    handler.close()


async def test_storage_holds_no_plaintext(make_patient, node, node_log):
    patient = await make_patient()
    await patient.add_condition("G40.909", "icd10", label=f"epilepsy {MARKER}")
    await patient.add_journal(symptoms={f"aura{MARKER}": 3}, feeling=4, note=f"note {MARKER} seizure")
    await patient.add_treatment("levetiracetam", dose="500 mg", side_effects=[f"tired{MARKER}"])
    # The category alone as it would stand in JSON ('"G40"', 5 bytes): a bare 3-byte needle
    # turns up by chance in a few megabytes of ciphertext (about one run in five).
    needles = [MARKER, "G40.909", '"G40"', "levetiracetam", "epilepsy", "seizure"]
    if not FHIR_DIR.is_dir():
        pytest.skip(f"the hospital exports are not at {FHIR_DIR}")
    with open(FHIR_DIR / "Alberto_Atencio_fc712d1f-5a2e-4407-9c55-a2a2bad623c2.json") as f:
        bundle = json.load(f)
    from rxfed.client.fhir import import_bundle

    await patient.add_records(list(import_bundle(bundle).records))
    person = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    needles += [person["name"][0]["family"], person["name"][0]["given"][0], person["address"][0]["city"],
                person["address"][0]["line"][0], "Clonazepam", "Carbamazepine", "84757009", "Seizure disorder"]
    needles += [i["value"] for i in person["identifier"] if len(i.get("value", "")) >= 6]
    # The patient sees everything...
    seen = json.dumps([r.to_json() for r in await patient.records()])
    assert MARKER in seen and "Clonazepam" in seen and person["name"][0]["family"] in seen
    await node.stop()  # flush and close every file the node holds
    assert (node.data_dir / "node.log").stat().st_size > 0
    # ...the node's files hold none of it.
    assert scan(node.data_dir, needles) == {}
    # The scan itself works: the device key (public, registered) is found in the database.
    assert scan(node.data_dir, [patient.device]) != {}


async def test_record_sizes_are_padded(make_patient, node):
    patient = await make_patient()
    await patient.add_journal(note="a")
    await patient.add_journal(note="a" * 80)
    store = node.app_store()
    sizes = {len(r.blob) for r in (await store.vault(patient.patient, None)).records}
    assert len(sizes) == 1


async def test_paths_do_not_reveal_record_kind(make_patient, node, node_log):
    patient = await make_patient()
    await patient.add_condition("E11.9")
    await patient.add_journal(feeling=3)
    log = node_log.read_text()
    for word in ("condition", "journal", "treatment"):
        assert word not in log


async def test_tampered_record_detected(make_patient, node):
    patient = await make_patient()
    record = await patient.add_condition("E11.9")
    store = node.app_store()

    def flip(c):
        (blob,) = c.execute("SELECT blob FROM records WHERE id=?", (record.id,)).fetchone()
        c.execute("UPDATE records SET blob=? WHERE id=?", (blob[:100] + bytes([blob[100] ^ 1]) + blob[101:], record.id))

    await store._write(flip)
    with pytest.raises(IntegrityError):
        await patient.records()


async def test_dropped_record_detected(make_patient, node):
    patient = await make_patient()
    await patient.add_condition("E11.9")
    record = await patient.add_condition("I10")
    await node.app_store()._write(lambda c: c.execute("DELETE FROM records WHERE id=?", (record.id,)))
    with pytest.raises(IntegrityError, match="dropped"):
        await patient.records()


async def test_rollback_detected(make_patient, node, tmp_path):
    patient = await make_patient()
    await patient.add_condition("E11.9")
    await node.stop()
    backup = tmp_path / "backup"
    shutil.copytree(node.data_dir, backup)
    await node.start()
    await patient.add_condition("I10")
    await node.stop()
    shutil.rmtree(node.data_dir)
    shutil.copytree(backup, node.data_dir)
    await node.start()
    with pytest.raises(RollbackDetected):
        await patient.records()


async def test_patients_cannot_read_each_other(make_patient):
    a, b = await make_patient(), await make_patient()
    await a.add_condition("E11.9", label=MARKER)
    status, doc = await signed(b, "GET", "/v1/vault")
    assert status == 200 and doc["records"] == []
    # b cannot open a's records even given the ciphertext: keys differ
    assert [r.kind for r in await b.records()] == []


async def test_revoked_device_cannot_read_new_records(make_patient, node, tmp_path):
    old = await make_patient()
    new = await PatientClient.recover(node.url, tmp_path / "new", old.recovery_code, PASSPHRASE, kdf="min")
    async with new:
        # recovering revoked the old device
        await new.add_journal(note=MARKER)
        blob = (await node.app_store().vault(new.patient, None)).records[0]
        keyring_before = old.identity  # the old device's keys
    from rxfed.crypto import DecryptionFailed
    from rxfed.crypto.records import VaultKeyring, open_record
    from rxfed.client.sdk import record_ad

    # Even handed the ciphertext by a colluding node, the revoked device holds only epoch 1.
    assert blob.blob[2:6] == (2).to_bytes(4, "big")
    with pytest.raises(DecryptionFailed):
        open_record(VaultKeyring({1: b"\0" * 32}), record_ad(new.patient, blob.id, blob.version), blob.blob)
    assert keyring_before


async def test_erased_account_leaves_no_ciphertext(make_patient, node):
    patient = await make_patient()
    await patient.add_journal(note=MARKER)
    blobs = [r.blob for r in (await node.app_store().vault(patient.patient, None)).records]
    manifest_sig = (await signed(patient, "GET", "/v1/vault"))[1]["manifest"]["sig"]
    await patient.erase_account()
    status, doc = await signed(patient, "GET", "/v1/vault")
    assert status == 401
    await node.stop()
    files = [p.read_bytes() for p in node.data_dir.rglob("*") if p.is_file()]
    for blob in blobs:
        assert not any(blob[-64:] in data for data in files)
    assert not any(manifest_sig.encode() in data for data in files)
    assert any(patient.patient.encode() in data for data in files)  # the tombstone stays
