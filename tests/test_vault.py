"""The patient vault end to end: register, write, read back, recover, revoke, erase."""

from __future__ import annotations

import pytest

from conftest import MARKER, PASSPHRASE
from rxfed.client import IntegrityError, PatientClient
from rxfed.client.sdk import NodeRefused
from rxfed.errors import BadRequest, NotFound


async def test_records_round_trip(make_patient):
    patient = await make_patient()
    await patient.add_condition("G40.909", "icd10", label=f"epilepsy {MARKER}")
    await patient.add_journal(symptoms={"headache": 4}, feeling=6, note=f"slept badly {MARKER}")
    await patient.add_treatment("levetiracetam", dose="500 mg", efficacy=7, side_effects=["tiredness"])
    records = await patient.records()
    assert [r.kind for r in records] == ["treatment", "journal", "condition"]
    assert records[2].data["code"] == "G40.909"
    assert records[1].data["symptoms"] == {"headache": 4}


async def test_recover_on_new_device_revokes_the_old_one(make_patient, node, tmp_path):
    patient = await make_patient()
    await patient.add_condition("E11.9")
    new = await PatientClient.recover(node.url, tmp_path / "new-device", patient.recovery_code, PASSPHRASE, kdf="min")
    async with new:
        assert [r.data["code"] for r in await new.records()] == ["E11.9"]
        assert (await new.secrets()).epoch == 2  # recovery starts an epoch of its own
        await new.add_condition("I10")
        assert {r.data["code"] for r in await new.records()} == {"E11.9", "I10"}
    with pytest.raises(NodeRefused) as info:
        await patient.records()
    assert info.value.code == "revoked_device"


async def test_recover_keeping_a_device(make_patient, node, tmp_path):
    patient = await make_patient()
    await patient.add_condition("E11.9")
    new = await PatientClient.recover(node.url, tmp_path / "new-device", patient.recovery_code, PASSPHRASE, kdf="min",
                                      keep=[patient.device])
    async with new:
        await new.add_condition("I10")
    assert {r.data["code"] for r in await patient.records()} == {"E11.9", "I10"}
    assert all(d.verified and d.revoked is None for d in await patient.devices())
    with pytest.raises(BadRequest):
        await PatientClient.recover(node.url, tmp_path / "third", patient.recovery_code, PASSPHRASE, kdf="min",
                                    keep=["f" * 32])


async def test_erase_account(make_patient, node):
    patient = await make_patient()
    await patient.add_condition("E11.9")
    result = await patient.erase_account()
    assert result["erased"] is True


async def test_edit_and_delete_records(make_patient):
    patient = await make_patient()
    record = await patient.add_condition("E11.9", label="diabetis")
    kept = await patient.add_journal(symptoms={"pain": 3})
    edited = await patient.edit_record(record.id, {**record.data, "label": "type 2 diabetes"})
    assert (edited.id, edited.version, edited.kind, edited.created) == (record.id, 2, "condition", record.created)
    again = await patient.edit_record(record.id, lambda r: {**r.data, "onset": "2019-03-01"})
    assert again.version == 3 and again.data["label"] == "type 2 diabetes" and again.data["onset"] == "2019-03-01"
    by_id = {r.id: r for r in await patient.records()}
    assert by_id[record.id] == again and by_id[kept.id] == kept
    gone = await patient.delete_record(kept.id)
    assert gone == kept
    assert [r.id for r in await patient.records()] == [record.id]
    with pytest.raises(NotFound):
        await patient.delete_record(kept.id)
    with pytest.raises(NotFound):
        await patient.edit_record("0" * 32, {})


async def test_an_edit_or_delete_the_node_undoes_is_detected(make_patient, node):
    """Edits and deletions are covered by the signed manifest: a node that serves the old
    version of an edited record, or a deleted record again, is caught."""
    patient = await make_patient()
    record = await patient.add_condition("E11.9", label="first")
    other = await patient.add_condition("I10")
    store = node.app_store()
    old = await store._read(lambda c: c.execute("SELECT version, blob FROM records WHERE id=?", (record.id,)).fetchone())
    deleted = await store._read(lambda c: c.execute("SELECT * FROM records WHERE id=?", (other.id,)).fetchone())
    await patient.edit_record(record.id, {**record.data, "label": "second"})
    await patient.delete_record(other.id)
    assert [r.data["label"] for r in await patient.records()] == ["second"]
    await store._write(lambda c: c.execute("UPDATE records SET version=?, blob=? WHERE id=?", (*old, record.id)))
    with pytest.raises(IntegrityError):
        await patient.records()
    await store._write(lambda c: c.execute("UPDATE records SET version=version WHERE id=?", (record.id,)))
    fresh = await store._read(lambda c: c.execute("PRAGMA table_info(records)").fetchall())
    columns = ", ".join(col[1] for col in fresh)
    await store._write(lambda c: c.execute(f"INSERT INTO records ({columns}) VALUES "
                                           f"({', '.join('?' * len(deleted))})", deleted))
    with pytest.raises(IntegrityError):
        await patient.records()


async def test_community_records_are_left_not_deleted(make_patient):
    from rxfed.client.community import PatientCommunities

    patient = await make_patient()
    address = await PatientCommunities(patient).create("Mine")
    (membership,) = await patient.records("community")
    with pytest.raises(BadRequest) as info:
        await patient.delete_record(membership.id)
    assert info.value.code == "community_record"
    assert (await PatientCommunities(patient).membership(address)).record_id == membership.id


async def test_the_readme_sdk_snippet_works(node, tmp_path, monkeypatch):
    """README, "Use it as a patient": ``PatientClient.open("~/.rxfed", passphrase)``."""
    import re
    from pathlib import Path

    monkeypatch.setenv("HOME", str(tmp_path))
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippet = re.search(r"```python\n(from rxfed.client import PatientClient\n.*?)```", readme, re.S).group(1)
    assert 'PatientClient.open("~/.rxfed", passphrase)' in snippet
    client, _code = await PatientClient.register(node.url, "~/.rxfed", PASSPHRASE, kdf="min")
    await client.close()
    assert (tmp_path / ".rxfed" / "keys.json").exists()
    printed = []
    body = "\n".join("    " + line for line in snippet.splitlines())
    namespace = {"passphrase": PASSPHRASE, "print": lambda *args: printed.append(args)}
    exec(f"async def snippet():\n{body}\n", namespace)
    await namespace["snippet"]()
    assert len(printed) == 1 and printed[0] == ("journal", printed[0][1])


async def test_a_new_key_file_needs_a_passphrase_of_15_characters(node, tmp_path, make_patient):
    from rxfed.client.profile import WeakPassphrase

    with pytest.raises(WeakPassphrase):
        await PatientClient.register(node.url, tmp_path / "weak", "x" * 14, kdf="min")
    assert not (tmp_path / "weak" / "keys.json").exists()
    patient = await make_patient()
    with pytest.raises(WeakPassphrase):
        patient.change_passphrase("too short")
    patient.change_passphrase("a new and long pass phrase")


async def test_open_without_a_passphrase_needs_an_agent(make_patient):
    from rxfed.client.sdk import ProfileLocked

    patient = await make_patient()
    with pytest.raises(ProfileLocked):
        PatientClient.open(patient.profile.path)


async def test_reading_a_large_vault_reports_progress(make_patient):
    """A whole vault of hundreds of records (a new device, `show`, `export`) says how far
    opening it has come, as a large import does while storing; a small one says nothing."""
    patient = await make_patient()
    calls = []
    patient.progress = lambda what, done, total: calls.append((what, done, total))
    await patient.add_records([("journal", {"feeling": i % 10}) for i in range(300)])
    calls.clear()
    assert len(await patient.records()) == 300
    assert calls[0] == ("opening records", 1, 300) and calls[-1] == ("opening records", 300, 300)
    assert [done for _, done, _ in calls] == list(range(1, 301))
    small = await make_patient()
    small.progress = lambda *a: calls.append(a)
    calls.clear()
    await small.add_journal(feeling=5)
    await small.records()
    assert calls == []
