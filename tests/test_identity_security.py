"""The key hierarchy under attack: a revoked (stolen) device, a node that helps it, old
recovery codes and database backups (spec/crypto.md sections 1, 3 and 6).

The attacker holds everything the stolen device held: its device keys and every epoch
secret sealed to it before the revocation. The colluding node is simulated by editing the
node's database directly, which is what a malicious operator can do.
"""

from __future__ import annotations

import contextlib
import sqlite3

import pytest

from conftest import PASSPHRASE
from helpers import signed
from rxfed.client import IntegrityError, PatientClient, RollbackDetected
from rxfed.client.identity import open_secrets
from rxfed.client.sdk import new_device_cert, record_ad, recovery_material
from rxfed.crypto import BoxKeyPair, DecryptionFailed, SigningKeyPair, b64d, b64e
from rxfed.crypto.records import open_record, secretbox_open
from rxfed.errors import BadRequest, Forbidden
from rxfed.protocol import vault as pv
from rxfed.protocol.canonical import canonical, loads


@contextlib.contextmanager
def db(node):
    """A connection to the node's database, as its operator has (autocommit), closed after."""
    conn = sqlite3.connect(node.data_dir / "rxfed.db", isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


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
    box = b"\x01" * 32
    proof = pv.device_key_proof(newcomer, box)
    cert = new_device_cert(secrets.signing, newcomer, patient=patient.patient, epoch=1, sign_key=newcomer.public,
                           box_key=box, device_proof=proof, enrolled_by=patient.device, now=patient._now())
    body = {"device": cert.signed, "keyring": b64e(b"x" * 100)}
    status, doc = await signed(patient, "POST", "/v1/devices", body, key=newcomer)
    assert (status, doc["error"]) == (401, "unknown_key")
    # signed by an active device, but naming another enroller
    cert = new_device_cert(secrets.signing, patient.identity.device, patient=patient.patient, epoch=1,
                           sign_key=newcomer.public, box_key=box, device_proof=proof, enrolled_by="recovery",
                           now=patient._now())
    status, doc = await signed(patient, "POST", "/v1/devices", {"device": cert.signed, "keyring": b64e(b"x" * 100)})
    assert (status, doc["error"]) == (403, "wrong_enroller")
    # a certificate signed by a key of the patient's own making, not the epoch's
    cert = new_device_cert(SigningKeyPair.generate(), patient.identity.device, patient=patient.patient, epoch=1,
                           sign_key=newcomer.public, box_key=box, device_proof=proof, enrolled_by=patient.device,
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
            cert = new_device_cert(old.signing, thief.identity.device, patient=patient.patient, epoch=epoch,
                                   sign_key=fresh.public, box_key=b"\x02" * 32,
                                   device_proof=pv.device_key_proof(fresh, b"\x02" * 32), enrolled_by=thief.device,
                                   now=thief._now())
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
        manifest = pv.Manifest.issue(fresh, patient=patient.patient, epoch=3, counter=2, entries={},
                                     now=thief._now())
        body = {"identity": impostor.signed, "devices": [], "manifest": manifest.signed,
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
        assert (await again.secrets()).epoch == 3  # the revocation's, then the recovery's own


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


# -- found by attacking the first version of the hierarchy ----------------------------------


async def test_forged_certificates_by_a_stolen_device_are_not_kept(make_patient, node, tmp_path):
    """Before its revocation a stolen device holds the epoch's signing key. It certifies a
    spare of its own claiming to come from registration, and the patient's other device with
    the thief's box key; the node serves both. Neither is kept by the revocation, so the
    next epoch's secrets reach no key of the thief's."""
    patient = await make_patient()
    tablet = await linked_device(patient, node, tmp_path, "tablet")
    await tablet.close()
    thief = await linked_device(patient, node, tmp_path)
    old = await stolen_secrets(thief)
    await thief.close()
    spare, spare_box = SigningKeyPair.generate(), BoxKeyPair.generate()
    spare_cert = new_device_cert(old.signing, SigningKeyPair.generate(), patient=patient.patient, epoch=1,
                                 sign_key=spare.public, box_key=spare_box.public,
                                 device_proof=pv.device_key_proof(spare, spare_box.public),
                                 enrolled_by="registration", now=patient._now())
    thief_box = BoxKeyPair.generate()
    with db(node) as conn:
        real, = conn.execute("SELECT cert FROM devices WHERE id=?", (tablet.device,)).fetchone()
        body = loads(real)["body"]
        forged_tablet = pv.DeviceCert.issue(
            old.signing, patient=patient.patient, epoch=1, sign_key=b64d(body["sign_key"]), box_key=thief_box.public,
            enrolled_by=body["enrolled_by"], enrolled_epoch=1, device_proof=b64d(body["proof"]["device"]),
            enroller_proof=b64d(body["proof"]["enroller"]), now=patient._now())
        conn.execute("INSERT INTO devices (id, patient_id, sign_key, cert, keyring, created) VALUES (?, ?, ?, ?, ?, 1)",
                     (spare_cert.device, patient.patient, spare.public, canonical(spare_cert.signed), b"k"))
        conn.execute("UPDATE devices SET cert=? WHERE id=?", (canonical(forged_tablet.signed), tablet.device))
    listed = {d.device: d for d in await patient.devices()}
    assert not listed[spare_cert.device].verified and not listed[tablet.device].verified
    revoked = await patient.revoke_device(thief.device, patient.recovery_code)
    assert spare_cert.device in revoked and tablet.device in revoked  # fail closed: the forged tablet goes too
    with db(node) as conn:
        envelopes = [r[0] for r in conn.execute("SELECT keyring FROM devices WHERE revoked IS NULL")]
    chain = pv.IdentityChain.verify(patient.root_key, (await patient._call("GET", "/v1/account"))["identity"])
    for sealed in envelopes:
        for box in (spare_box, thief_box):
            for holder in (spare_cert.device, tablet.device, patient.device):
                with pytest.raises(IntegrityError):
                    open_secrets(chain.current, holder, box, sealed)


async def test_a_device_cannot_take_the_recovery_key_as_its_own(make_patient, node, tmp_path):
    """A stolen device enrolled a "device" whose signing key is the patient's recovery auth
    key (public in the identity statement), so that the node took recovery requests for a
    device's: the patient could then never recover, revoke or rotate. A certificate now
    needs the device's own proof of its key, and the store keeps the two kinds apart."""
    patient = await make_patient()
    secrets = await patient.secrets()
    chain = pv.IdentityChain.verify(patient.root_key, (await patient._call("GET", "/v1/account"))["identity"])
    auth_public = chain.current.recovery_auth
    forged = pv.DeviceCert.issue(
        secrets.signing, patient=patient.patient, epoch=1, sign_key=auth_public, box_key=b"\x03" * 32,
        enrolled_by=patient.device, enrolled_epoch=1, device_proof=b"\x00" * 64,
        enroller_proof=pv.enrolment_proof(patient.identity.device, patient=patient.patient, sign_key=auth_public,
                                          box_key=b"\x03" * 32, enrolled_by=patient.device, enrolled_epoch=1),
        now=patient._now())
    status, doc = await signed(patient, "POST", "/v1/devices", {"device": forged.signed, "keyring": b64e(b"x" * 100)})
    assert (status, doc["error"]) == (403, "bad_device_proof")
    thief = await linked_device(patient, node, tmp_path)
    await thief.close()
    assert await patient.revoke_device(thief.device, patient.recovery_code) == [thief.device]


async def test_recovery_from_a_rolled_back_node_seals_nothing_to_a_revoked_device(make_patient, node, tmp_path):
    """The node restores a backup from before a revocation (the chain, the recovery row, the
    envelopes). A device recovering with the (unchanged) code saw nothing newer, yet what it
    writes is sealed under a fresh epoch of its own, which the revoked device never holds."""
    patient = await make_patient()
    thief = await linked_device(patient, node, tmp_path)
    old = await stolen_secrets(thief)
    await thief.close()
    tables = ("patients", "devices", "identity_chain", "recovery")
    with db(node) as conn:
        backup = {t: conn.execute(f"SELECT * FROM {t}").fetchall() for t in tables}
    await patient.revoke_device(thief.device, patient.recovery_code)
    with db(node) as conn:  # the operator restores the backup of those tables
        for table, rows in backup.items():
            conn.execute(f"DELETE FROM {table}")
            conn.executemany(f"INSERT INTO {table} VALUES ({','.join('?' * len(rows[0]))})", rows)
    node.state.forget_patient(patient.patient)
    again = await PatientClient.recover(node.url, tmp_path / "again", patient.recovery_code, PASSPHRASE, kdf="min",
                                        keep=[patient.device])
    async with again:
        record = await again.add_condition("F32.1")
        assert (await again.secrets()).epoch == 2
    with db(node) as conn:
        blob, = conn.execute("SELECT blob FROM records WHERE id=?", (record.id,)).fetchone()
    with pytest.raises(DecryptionFailed):
        open_record(old.keyring, record_ad(patient.patient, record.id, 1), blob)
    with pytest.raises(IntegrityError):  # and the patient's pinned device sees the fork
        await patient.records()


async def test_a_device_linked_by_someone_else_is_not_adopted(make_patient, node, tmp_path):
    """Whoever sees a link code (or the node) can enrol it under an account of their own;
    without the confirmation code of the patient's own device the new device adopts nothing."""
    patient, attacker = await make_patient(), await make_patient()
    code = await PatientClient.request_link(node.url, tmp_path / "new", PASSPHRASE, kdf="min")
    await attacker.add_device(code)
    new = PatientClient.open(tmp_path / "new", PASSPHRASE)
    async with new:
        with pytest.raises(IntegrityError):
            await new.finish_link("ABCD-EFGH-IJKL-MNOP")
        with pytest.raises(TypeError):
            await new.finish_link()  # the code is required
    assert PatientClient.open(tmp_path / "new", PASSPHRASE).identity.patient is None
    with pytest.raises(Exception):
        await patient.add_device(code)  # and the patient's own enrolment is refused, not silently joined


async def test_a_rotation_must_re_sign_the_vault(make_patient, node, tmp_path):
    """A rotation without the re-signed manifest left the vault's manifest in the old epoch,
    unreadable for good. The manifest is now required and compared-and-swapped."""
    patient = await make_patient()
    thief = await linked_device(patient, node, tmp_path)
    await thief.close()
    await patient.revoke_device(thief.device, patient.recovery_code)  # an empty vault: counter 0 -> 1
    await patient.add_condition("E11.9")
    assert [r.data["code"] for r in await patient.records()] == ["E11.9"]
    status, doc = await signed(patient, "POST", "/v1/identity", {"identity": {}, "devices": [], "recovery": {}})
    assert (status, doc["error"]) == (400, "missing_field")


async def test_rotating_the_recovery_code_rekeys_communities_too(make_patient, node, tmp_path):
    """What the old code opens in an old backup (the old epochs' secrets, so the community
    member keys in the vault) reads no community post made after the rotation."""
    from rxfed.client.community import PatientCommunities

    patient = await make_patient()
    communities = PatientCommunities(patient)
    address = await communities.create("Mine")
    before = await communities.membership(address)
    await patient.rotate_recovery_code(patient.recovery_code)
    assert patient.followups["communities"] == {address: "rekeyed"}
    after = await communities.membership(address)
    assert after.member.public != before.member.public and after.previous[0][0].public == before.member.public
    await communities.post(address, "after the rotation")
    assert [m.text for m in (await communities.read(address)).messages] == ["after the rotation"]
