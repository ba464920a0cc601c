"""The key hierarchy under attack: a revoked (stolen) device, a node that helps it, old
recovery codes and database backups (spec/crypto.md sections 1, 3 and 6).

The attacker holds everything the stolen device held: its device keys and every epoch
secret sealed to it before the revocation. The colluding node is simulated by editing the
node's database directly, which is what a malicious operator can do.
"""

from __future__ import annotations

import sqlite3

import pytest

from conftest import PASSPHRASE
from helpers import signed
from rxfed.client import IntegrityError, PatientClient, RollbackDetected
from rxfed.client.identity import open_secrets
from rxfed.client.sdk import record_ad, recovery_material
from rxfed.crypto import BoxKeyPair, DecryptionFailed, SigningKeyPair, b64e
from rxfed.crypto.records import open_record, secretbox_open
from rxfed.errors import BadRequest, Forbidden
from rxfed.protocol import vault as pv
from rxfed.protocol.canonical import canonical, loads


def db(node) -> sqlite3.Connection:
    return sqlite3.connect(node.data_dir / "rxfed.db", isolation_level=None)


async def linked_device(patient: PatientClient, node, tmp_path, name="stolen") -> PatientClient:
    """A second device of ``patient``, enrolled from ``patient`` (the link flow)."""
    code = await PatientClient.request_link(node.url, tmp_path / name, PASSPHRASE, kdf="min")
    device, confirm = await patient.add_device(code)
    other = PatientClient.open(tmp_path / name, PASSPHRASE)
    assert await other.finish_link(confirm) == confirm
    assert other.patient == patient.patient and other.device == device
    return other


async def stolen_secrets(thief: PatientClient):
    """What the stolen device holds of the epoch it last saw."""
    return await thief.secrets()


async def test_link_flow_and_confirmation(make_patient, node, tmp_path):
    patient = await make_patient()
    await patient.add_condition("G40.909")
    laptop = await linked_device(patient, node, tmp_path, "laptop")
    async with laptop:
        assert [r.data["code"] for r in await laptop.records()] == ["G40.909"]
        await laptop.add_condition("I10")
    assert {r.data["code"] for r in await patient.records()} == {"G40.909", "I10"}
    devices = {d.device: d for d in await patient.devices()}
    assert devices[laptop.device].enrolled_by == patient.device and devices[laptop.device].known == "enrolled"
    # a wrong confirmation code: the device is not linked
    code = await PatientClient.request_link(node.url, tmp_path / "phone", PASSPHRASE, kdf="min")
    await patient.add_device(code)
    phone = PatientClient.open(tmp_path / "phone", PASSPHRASE)
    async with phone:
        with pytest.raises(IntegrityError):
            await phone.finish_link("AAAA-AAAA-AAAA-AAAA")
        assert PatientClient.open(tmp_path / "phone", PASSPHRASE).identity.patient is None


async def test_a_device_cannot_enrol_itself(make_patient, node, tmp_path):
    """The old attack: any root-signed certificate enrolled a device. Now a certificate must
    be made under the current epoch's signing key and sent by an active device or the
    recovery key; a key the node does not know cannot enrol itself."""
    patient = await make_patient()
    secrets = await patient.secrets()
    newcomer = SigningKeyPair.generate()
    cert = pv.DeviceCert.issue(secrets.signing, patient=patient.patient, epoch=1, sign_key=newcomer.public,
                               box_key=b"\x01" * 32, enrolled_by=patient.device, now=patient._now())
    body = {"device": cert.signed, "keyring": b64e(b"x" * 100)}
    status, doc = await signed(patient, "POST", "/v1/devices", body, key=newcomer)
    assert (status, doc["error"]) == (401, "unknown_key")
    # signed by an active device, but naming another enroller
    cert = pv.DeviceCert.issue(secrets.signing, patient=patient.patient, epoch=1, sign_key=newcomer.public,
                               box_key=b"\x01" * 32, enrolled_by="recovery", now=patient._now())
    status, doc = await signed(patient, "POST", "/v1/devices", {"device": cert.signed, "keyring": b64e(b"x" * 100)})
    assert (status, doc["error"]) == (403, "wrong_enroller")
    # a certificate signed by a key of the patient's own making, not the epoch's
    cert = pv.DeviceCert.issue(SigningKeyPair.generate(), patient=patient.patient, epoch=1,
                               sign_key=newcomer.public, box_key=b"\x01" * 32, enrolled_by=patient.device,
                               now=patient._now())
    status, doc = await signed(patient, "POST", "/v1/devices", {"device": cert.signed, "keyring": b64e(b"x" * 100)})
    assert (status, doc["error"]) == (403, "bad_statement_signature")
    assert len(await patient.devices()) == 1


async def test_revoked_device_enrols_revokes_and_changes_nothing(make_patient, node, tmp_path):
    """Finding 1: a stolen laptop, once revoked, cannot come back by enrolling a fresh device
    key, cannot revoke the patient's devices and cannot replace the recovery code."""
    patient = await make_patient()
    thief = await linked_device(patient, node, tmp_path)
    old = await stolen_secrets(thief)
    assert await patient.revoke_device(thief.device, patient.recovery_code) == [thief.device]
    async with thief:
        # enrol a fresh key with what the laptop holds (the old epoch's signing key)
        fresh = SigningKeyPair.generate()
        for epoch in (1, 2):
            cert = pv.DeviceCert.issue(old.signing, patient=patient.patient, epoch=epoch, sign_key=fresh.public,
                                       box_key=b"\x02" * 32, enrolled_by=thief.device, now=thief._now())
            for key in (thief.identity.device, fresh):
                status, doc = await signed(thief, "POST", "/v1/devices",
                                           {"device": cert.signed, "keyring": b64e(b"x" * 100)}, key=key)
                assert status in (401, 403, 409), doc
        # revoke the patient's device, or change the recovery code: only the master key can
        # sign a new epoch, and the laptop never held it
        current = pv.IdentityChain.verify(patient.root_key, (await patient._call("GET", "/v1/account"))["identity"])
        with pytest.raises(Forbidden):
            current.current.next(old.signing, signing_key=fresh.public, now=thief._now())
        impostor = pv.IdentityStatement.issue(
            old.signing, patient=patient.patient, epoch=3, previous=current.current.hash, master_key=old.signing.public,
            signing_key=fresh.public, recovery_auth=fresh.public, recovery_box=fresh.public, now=thief._now())
        body = {"identity": impostor.signed, "devices": [],
                "recovery": {"root_bundle": b64e(b"r" * 80), "keyring": b64e(b"k" * 100)}}
        status, doc = await signed(thief, "POST", "/v1/identity", body)
        assert status in (401, 403) and doc["error"] in ("revoked_device", "bad_statement_signature")
    # the node, helping, runs the laptop's rotation anyway: the patient's client refuses it
    with db(node) as conn:
        conn.execute("INSERT INTO identity_chain VALUES (?, 3, ?)", (patient.patient, canonical(impostor.signed)))
    with pytest.raises(IntegrityError):
        await patient.records()
    with db(node) as conn:
        conn.execute("DELETE FROM identity_chain WHERE epoch=3")
    assert len(await patient.records()) == 0
    # the recovery code still works, and is still the patient's
    recovered = await PatientClient.recover(node.url, tmp_path / "recovered", patient.recovery_code, PASSPHRASE,
                                            kdf="min")
    await recovered.close()


async def test_revoked_device_reads_nothing_written_later_even_with_the_node(make_patient, node, tmp_path):
    """Finding 1 and 2: after the revocation, records are sealed under the new epoch's key;
    a node that hands the revoked device everything it stores gives it nothing readable."""
    patient = await make_patient()
    await patient.add_condition("E11.9")
    thief = await linked_device(patient, node, tmp_path)
    old = await stolen_secrets(thief)
    await thief.close()
    await patient.revoke_device(thief.device, patient.recovery_code)
    record = await patient.add_condition("F32.1", label="written after the revocation")
    with db(node) as conn:
        blob, = conn.execute("SELECT blob FROM records WHERE id=?", (record.id,)).fetchone()
        envelopes = [r[0] for r in conn.execute("SELECT keyring FROM devices")]
        recovery_env, = conn.execute("SELECT keyring FROM recovery").fetchone()
    with pytest.raises(DecryptionFailed):
        open_record(old.keyring, record_ad(patient.patient, record.id, record.version), blob)
    # nor does any envelope the node holds open for the revoked device
    chain = pv.IdentityChain.verify(patient.root_key, (await patient._call("GET", "/v1/account"))["identity"])
    for sealed in envelopes + [recovery_env]:
        with pytest.raises(IntegrityError):
            open_secrets(chain.current, thief.device, thief.identity.box, sealed)


async def test_keyring_rollback_and_unrevocation_are_detected(make_patient, node, tmp_path):
    """Finding 2: a node colluding with a revoked device serves the remaining device its
    pre-revocation envelope and chain (so that new records would be sealed under a key the
    revoked device holds), or marks the revoked device active again."""
    patient = await make_patient()
    await patient.add_condition("E11.9")
    thief = await linked_device(patient, node, tmp_path)
    await thief.close()
    with db(node) as conn:
        before = conn.execute("SELECT keyring, cert FROM devices WHERE id=?", (patient.device,)).fetchone()
        manifest_before = conn.execute("SELECT counter, manifest FROM patients").fetchone()
    await patient.revoke_device(thief.device, patient.recovery_code)
    # rollback: epoch 1 again, with its envelope, certificate and manifest
    with db(node) as conn:
        after = conn.execute("SELECT keyring, cert FROM devices WHERE id=?", (patient.device,)).fetchone()
        after_manifest = conn.execute("SELECT counter, manifest FROM patients").fetchone()
        conn.execute("UPDATE devices SET keyring=?, cert=? WHERE id=?", (*before, patient.device))
        conn.execute("UPDATE patients SET epoch=1, counter=?, manifest=?", manifest_before)
        epoch2, = conn.execute("SELECT statement FROM identity_chain WHERE epoch=2").fetchone()
        conn.execute("DELETE FROM identity_chain WHERE epoch=2")
    with pytest.raises(RollbackDetected):
        await patient.records()
    with pytest.raises(RollbackDetected):
        await patient.add_condition("I10")
    with db(node) as conn:
        conn.execute("INSERT INTO identity_chain VALUES (?, 2, ?)", (patient.patient, epoch2))
        conn.execute("UPDATE devices SET keyring=?, cert=? WHERE id=?", (*after, patient.device))
        conn.execute("UPDATE patients SET epoch=2, counter=?, manifest=?", after_manifest)
        # un-revoke: the node's flag says active, the certificate says epoch 1
        conn.execute("UPDATE devices SET revoked=NULL, revocation=NULL WHERE id=?", (thief.device,))
    devices = {d.device: d for d in await patient.devices()}
    assert not devices[thief.device].verified
    # and the next epoch is not sealed to it: rotate the recovery code, then look
    new_code = await patient.rotate_recovery_code(patient.recovery_code)
    with db(node) as conn:
        revoked, = conn.execute("SELECT revoked FROM devices WHERE id=?", (thief.device,)).fetchone()
    assert revoked is not None and new_code != patient.recovery_code


async def test_rotating_the_recovery_code_retires_what_the_old_one_opens(make_patient, node, tmp_path):
    """Finding 3: an old recovery code plus an older database backup opened the old root
    bundle, which stayed the patient's identity. Now rotating the code starts an epoch under
    a new master key; the old master signs nothing any device accepts, and the old code's
    secrets open nothing written afterwards."""
    patient = await make_patient()
    old_code = patient.recovery_code
    with db(node) as conn:
        backup = conn.execute("SELECT auth_key, statement, root_bundle, keyring FROM recovery").fetchone()
    new_code = await patient.rotate_recovery_code(old_code)
    record = await patient.add_condition("F32.1")
    with pytest.raises(Forbidden):  # the old code, against an honest node
        await PatientClient.recover(node.url, tmp_path / "old", old_code, PASSPHRASE, kdf="min")
    # the node restores the backup's recovery row (it still has it): the old code opens the
    # old master key and the old epoch's secrets
    with db(node) as conn:
        conn.execute("UPDATE recovery SET auth_key=?, statement=?, root_bundle=?, keyring=?", backup)
    node.state.forget_patient(patient.patient)
    old_master = SigningKeyPair.from_seed(
        secretbox_open(old_code.bundle_key(), b"rxfed-recovery|" + patient.patient.encode(), backup[2]))
    with pytest.raises(Forbidden):  # the current chain names the new code, so the old one is refused
        await PatientClient.recover(node.url, tmp_path / "old2", old_code, PASSPHRASE, kdf="min")
    chain = pv.IdentityChain.verify(patient.root_key, (await patient._call("GET", "/v1/account"))["identity"])
    assert chain.current.master_key != old_master.public
    old_secrets = open_secrets(chain.statements[0], "recovery", BoxKeyPair.from_secret(old_code.box_secret()),
                               backup[3])
    with db(node) as conn:
        blob, = conn.execute("SELECT blob FROM records WHERE id=?", (record.id,)).fetchone()
    with pytest.raises(DecryptionFailed):
        open_record(old_secrets.keyring, record_ad(patient.patient, record.id, 1), blob)
    # the old master forks epoch 2 with keys of its own: every device that saw epoch 2 refuses
    fork = chain.statements[0].next(old_master, signing_key=SigningKeyPair.generate().public, now=patient._now())
    with db(node) as conn:
        conn.execute("DELETE FROM identity_chain WHERE epoch>=2")
        conn.execute("INSERT INTO identity_chain VALUES (?, 2, ?)", (patient.patient, canonical(fork.signed)))
    with pytest.raises(IntegrityError) as info:
        await patient.records()
    assert "forked" in str(info.value)
    assert str(new_code) != str(old_code)


async def test_recovery_keys_come_from_the_signed_chain(make_patient, node, tmp_path):
    """Also from the issue: a revocation resealed the keyring to whatever recovery statement
    the node served, so a stale one got the new keyring. Recovery keys are now part of the
    master-signed identity statement; an edited one does not verify."""
    patient = await make_patient()
    thief = await linked_device(patient, node, tmp_path)
    await thief.close()
    with db(node) as conn:
        first, = conn.execute("SELECT statement FROM identity_chain WHERE epoch=1").fetchone()
        doc = loads(first)
        doc["body"]["recovery"]["box_key"] = b64e(b"\x05" * 32)  # the node's own key
        conn.execute("UPDATE identity_chain SET statement=? WHERE epoch=1", (canonical(doc),))
    with pytest.raises(IntegrityError):
        await patient.revoke_device(thief.device, patient.recovery_code)
    with db(node) as conn:
        conn.execute("UPDATE identity_chain SET statement=? WHERE epoch=1", (first,))
    await patient.revoke_device(thief.device, patient.recovery_code)
    # the new epoch's recovery envelope opens with the (unchanged) code: recovery still works
    again = await PatientClient.recover(node.url, tmp_path / "again", patient.recovery_code, PASSPHRASE, kdf="min")
    async with again:
        assert (await again.secrets()).epoch == 2


async def test_revoking_a_device_revokes_what_it_enrolled(make_patient, node, tmp_path):
    """A stolen device may have enrolled a spare before it was revoked: it goes too."""
    patient = await make_patient()
    thief = await linked_device(patient, node, tmp_path)
    async with thief:
        spare = await linked_device(thief, node, tmp_path, "spare")
        await spare.close()
    revoked = await patient.revoke_device(thief.device, patient.recovery_code)
    assert sorted(revoked) == sorted([thief.device, spare.device])
    with pytest.raises(BadRequest):
        await patient.revoke_device(patient.device, patient.recovery_code)


async def test_wrong_recovery_code_cannot_revoke(make_patient, node, tmp_path):
    patient = await make_patient()
    other = await make_patient()
    thief = await linked_device(patient, node, tmp_path)
    await thief.close()
    with pytest.raises(Forbidden):
        await patient.revoke_device(thief.device, other.recovery_code)
    assert all(d.revoked is None for d in await patient.devices())


def test_recovery_material_is_sealed_to_the_code():
    from rxfed.client.identity import EpochSecrets
    from rxfed.crypto.recovery import RecoveryCode

    code, master, secrets = RecoveryCode.generate(), SigningKeyPair.generate(), EpochSecrets.first()
    setup = recovery_material(master, code, secrets, "a" * 32)
    assert master.seed not in setup.root_bundle
    assert secretbox_open(code.bundle_key(), b"rxfed-recovery|" + b"a" * 32, setup.root_bundle) == master.seed
    with pytest.raises(DecryptionFailed):
        secretbox_open(RecoveryCode.generate().bundle_key(), b"rxfed-recovery|" + b"a" * 32, setup.root_bundle)
