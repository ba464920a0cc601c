"""The patient vault end to end: register, write, read back, recover, revoke, erase."""

from __future__ import annotations

import pytest

from conftest import MARKER, PASSPHRASE
from rxfed.client import PatientClient
from rxfed.client.sdk import NodeRefused
from rxfed.errors import BadRequest


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
