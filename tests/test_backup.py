"""Back up, restore and upgrade a node: ``rxfed node backup|restore|migrate``, the restore
statement, and a patient's device that is told what a restore lost and goes on only with
the patient's consent."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import stat
import tarfile
import time

import pytest

from helpers import raw_request
from test_node_config import run

from rxfed.client import PatientClient, RollbackDetected
from rxfed.client.restore import RestoreDetected
from rxfed.crypto import SigningKeyPair
from rxfed.node.admin import init_node
from rxfed.node.backup import backup_node, restore_node
from rxfed.node.config import current_key, load_node_keys
from rxfed.protocol.restore import SKEW, RestoreStatement
from rxfed.store.sqlite import MIGRATIONS, schema_version


@pytest.fixture
def node_dir(tmp_path):
    init_node(tmp_path / "n", name="backup test", port=18481)
    return tmp_path / "n"


def files(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def test_init_creates_a_migrated_database(node_dir):
    assert schema_version(node_dir / "rxfed.db") == len(MIGRATIONS)


def test_backup_is_a_private_file_with_or_without_keys(node_dir, tmp_path, capsys):
    out = tmp_path / "b.rxfed-backup"
    code, doc, err = run(capsys, "node", "backup", str(node_dir), str(out), "--json")
    assert code == 0, err
    doc = json.loads(doc)
    assert set(doc) == {"backup", "node_id", "taken", "schema", "keys", "bytes"}
    assert doc["keys"] is True and doc["schema"] == len(MIGRATIONS) and doc["node_id"] == "127.0.0.1:18481"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    with tarfile.open(out) as tar:
        assert sorted(tar.getnames()) == ["backup.json", "node-keys.json", "rxfed.db", "rxfed.toml"]
    # never over an existing file
    before = out.read_bytes()
    code, _, err = run(capsys, "node", "backup", str(node_dir), str(out))
    assert code == 1 and "exists" in err and out.read_bytes() == before
    code, _, err = run(capsys, "node", "backup", str(node_dir), str(tmp_path / "k.rxfed-backup"), "--no-keys")
    assert code == 0, err
    with tarfile.open(tmp_path / "k.rxfed-backup") as tar:
        assert "node-keys.json" not in tar.getnames()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers


def test_restore_signs_a_statement_and_refuses_to_overwrite(node_dir, tmp_path, capsys):
    out = tmp_path / "b.rxfed-backup"
    assert run(capsys, "node", "backup", str(node_dir), str(out))[0] == 0
    target = tmp_path / "restored"
    code, doc, err = run(capsys, "node", "restore", str(out), str(target), "--json")
    assert code == 0, err
    doc = json.loads(doc)
    assert set(doc) == {"data_dir", "node_id", "backup_taken", "restored", "restore_id", "schema", "keys", "config",
                        "replaced", "needs_migration"}
    assert (doc["keys"], doc["config"], doc["replaced"], doc["needs_migration"]) == ("backup", "backup", None, False)
    assert stat.S_IMODE((target / "rxfed.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((target / "node-keys.json").stat().st_mode) == 0o600
    (row,) = sqlite3.connect(target / "rxfed.db").execute("SELECT value FROM meta WHERE key='restore'").fetchone()
    keys = [k.key.public for k in load_node_keys(node_dir)]
    statement = RestoreStatement.from_json(json.loads(row), "restore", keys)
    assert (statement.node, statement.restore_id, statement.backup_taken) == (doc["node_id"], doc["restore_id"],
                                                                               doc["backup_taken"])
    assert run(capsys, "node", "check", str(target))[:2] == (0, "configuration ok\n")
    # a data directory with a database is not overwritten...
    before = files(target)
    code, _, err = run(capsys, "node", "restore", str(out), str(target))
    assert code == 1 and "--replace" in err and files(target) == before
    # ...unless asked: the old one is moved aside
    code, doc, err = run(capsys, "node", "restore", str(out), str(target), "--replace", "--json")
    assert code == 0, err
    replaced = json.loads(doc)["replaced"]
    assert (target / replaced.rsplit("/", 1)[1] / "rxfed.db").read_bytes() == before["rxfed.db"]
    assert json.loads(doc)["keys"] == "kept"


def test_restore_without_keys_needs_them_and_changes_nothing(node_dir, tmp_path, capsys):
    out = tmp_path / "b.rxfed-backup"
    assert run(capsys, "node", "backup", str(node_dir), str(out), "--no-keys")[0] == 0
    target = tmp_path / "restored"
    code, _, err = run(capsys, "node", "restore", str(out), str(target))
    assert code == 1 and "--keys FILE" in err and list(target.iterdir()) == []
    code, doc, err = run(capsys, "node", "restore", str(out), str(target), "--keys", str(node_dir / "node-keys.json"),
                         "--json")
    assert code == 0, err
    assert (target / "node-keys.json").read_bytes() == (node_dir / "node-keys.json").read_bytes()


def _tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("members", [
    None,  # not a tar at all
    {"backup.json": b"{}", "rxfed.db": b"", "rxfed.toml": b""},
    {"../escape": b"x", "backup.json": b"{}"},
    {"rxfed.db": b""},
])
def test_restore_refuses_what_is_not_a_backup(tmp_path, capsys, members):
    bad = tmp_path / "bad"
    if members is None:
        bad.write_bytes(b"not a backup at all")
    else:
        _tar(bad, members)
    target = tmp_path / "restored"
    code, _, err = run(capsys, "node", "restore", str(bad), str(target))
    assert code == 1 and "not an rxfed backup" in err and len(err.splitlines()) == 1
    assert list(target.iterdir()) == [] and not (tmp_path / "escape").exists()


def test_restore_of_a_damaged_database_is_one_line_and_changes_nothing(node_dir, tmp_path, capsys):
    out = tmp_path / "b.rxfed-backup"
    assert run(capsys, "node", "backup", str(node_dir), str(out))[0] == 0
    with tarfile.open(out) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    members["rxfed.db"] = b"SQLite format 3\x00" + b"\xff" * 4096
    _tar(tmp_path / "damaged", members)
    target = tmp_path / "restored"
    code, _, err = run(capsys, "node", "restore", str(tmp_path / "damaged"), str(target))
    assert code == 1 and "is damaged" in err and len(err.splitlines()) == 1
    assert list(target.iterdir()) == []


def test_restore_of_another_nodes_backup_is_refused(node_dir, tmp_path, capsys):
    init_node(tmp_path / "other", name="other", port=18482)
    out = tmp_path / "b.rxfed-backup"
    assert run(capsys, "node", "backup", str(node_dir), str(out))[0] == 0
    before = files(tmp_path / "other")
    code, _, err = run(capsys, "node", "restore", str(out), str(tmp_path / "other"), "--replace")
    assert code == 1 and "is a backup of 127.0.0.1:18481" in err and files(tmp_path / "other") == before


@pytest.fixture
def old_node(tmp_path, monkeypatch):
    """A node whose database is at the schema of the release before."""
    import rxfed.store.sqlite.schema as backend

    monkeypatch.setattr(backend, "MIGRATIONS", MIGRATIONS[:-1])
    init_node(tmp_path / "old", name="old", port=18483)
    monkeypatch.setattr(backend, "MIGRATIONS", MIGRATIONS)
    assert schema_version(tmp_path / "old" / "rxfed.db") == len(MIGRATIONS) - 1
    return tmp_path / "old"


@pytest.mark.parametrize("command", [("status",), ("check",), ("run",), ("invite", "--count", "1"),
                                     ("outbox", "list")])
def test_an_older_database_is_never_migrated_silently(old_node, capsys, command):
    code, _, err = run(capsys, "node", command[0], str(old_node), *command[1:])
    assert code == 1, err
    if command[0] != "invite":  # (invite refuses earlier: registration is open)
        assert len(err.splitlines()) == 1 and f"rxfed node migrate {old_node}" in err and "older than" in err
    assert schema_version(old_node / "rxfed.db") == len(MIGRATIONS) - 1


def test_migrate_takes_a_backup_first(old_node, tmp_path, capsys):
    before = (old_node / "rxfed.db").read_bytes()
    code, doc, err = run(capsys, "node", "migrate", str(old_node), "--json")
    assert code == 0, err
    doc = json.loads(doc)
    assert (doc["from"], doc["to"], doc["migrated"]) == (len(MIGRATIONS) - 1, len(MIGRATIONS), True)
    assert schema_version(old_node / "rxfed.db") == len(MIGRATIONS)
    backup = old_node / "backups" / doc["backup"].rsplit("/", 1)[1]
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert stat.S_IMODE((old_node / "backups").stat().st_mode) == 0o700
    with tarfile.open(backup) as tar:
        copy = tar.extractfile("rxfed.db").read()
    assert len(copy) >= len(before) // 2 and b"SQLite format 3" in copy[:16]
    restored = tmp_path / "from-backup"
    assert run(capsys, "node", "restore", str(backup), str(restored))[0] == 0
    assert schema_version(restored / "rxfed.db") == len(MIGRATIONS) - 1  # the backup is from before
    code, out, err = run(capsys, "node", "status", str(old_node))  # migrated: it opens (the node is stopped: 1)
    assert code == 1 and "not running" in err and "node migrate" not in err
    code, out, err = run(capsys, "node", "migrate", str(old_node))
    assert code == 0 and "nothing to migrate" in out


def test_a_database_newer_than_the_code_is_still_one_line(node_dir, capsys):
    with sqlite3.connect(node_dir / "rxfed.db") as conn:
        conn.execute("PRAGMA user_version=9999")
    for command in ("run", "migrate", "check"):
        code, _, err = run(capsys, "node", command, str(node_dir))
        assert code == 1 and len(err.splitlines()) == 1 and "newer than this rxfed" in err, (command, err)


# -- a patient's device and a restored node --------------------------------------------------



async def restored(node, tmp_path, before, after):
    """Run ``before`` (writes), back the running node up, run ``after`` (more writes), stop
    the node, restore the backup over it and start it again."""
    await before()
    out = tmp_path / f"backup-{len(list(tmp_path.iterdir()))}.rxfed-backup"
    await asyncio.to_thread(backup_node, node.data_dir, out)
    await after()
    await node.stop()
    doc = await asyncio.to_thread(restore_node, out, node.data_dir, replace=True)
    await node.start()
    return doc


async def test_restore_end_to_end(make_patient, node, tmp_path):
    patient = await make_patient()
    kept = {}

    async def before():
        kept["a"] = await patient.add_condition("E11.9", label="before the backup")
        kept["b"] = await patient.add_journal(symptoms={"fatigue": 3})

    async def after():
        kept["c"] = await patient.add_condition("I10", label="after the backup")
        await patient.edit_record(kept["a"].id, {**kept["a"].data, "label": "edited after the backup"})
        await patient.delete_record(kept["b"].id)
        kept["seen"] = [(r.id, r.data) for r in await patient.records()]

    doc = await restored(node, tmp_path, before, after)
    # the restore statement is published with the node's keys and with every vault
    status, well_known = await raw_request(node.url, "GET", "/.well-known/rxfed")
    assert status == 200 and well_known["restore"]["body"]["restore"] == doc["restore_id"]
    with pytest.raises(RestoreDetected) as told:
        await patient.records()
    report = told.value.report
    assert report.restore_id == doc["restore_id"] and report.node == node.node_id
    assert report.served < report.seen and report.complete
    lost = {r.id: (r.kind, r.seen_version, r.node_version, r.recoverable) for r in report.lost}
    assert lost == {kept["c"].id: ("condition", 1, None, True), kept["a"].id: ("condition", 2, 1, True)}
    assert report.reappeared == (kept["b"].id,)
    assert any("--accept-restore " + doc["restore_id"] in line for line in report.lines())
    # nothing goes on without the patient's consent: writes are refused too
    with pytest.raises(RestoreDetected):
        await patient.add_journal(symptoms={"fatigue": 5})
    assert (await patient.restore_report()) == report
    # the patient accepts: this device uploads again what it holds
    result = await patient.accept_restore(report.restore_id)
    assert sorted(result["reuploaded"]) == sorted([kept["a"].id, kept["c"].id])
    assert result["deleted"] == [kept["b"].id] and result["not_recoverable"] == []
    assert sorted((r.id, r.data) for r in await patient.records()) == sorted(kept["seen"])
    assert await patient.restore_report() is None
    # the new manifest is above every version this device saw: no number names two vaults
    assert patient.profile.state().counter > report.seen
    await patient.add_journal(symptoms={"fatigue": 5})
    assert len(await patient.records()) == 3
    # a second device, opened from the same profile after the fact, agrees
    again = PatientClient.open(patient.profile.path, "correct horse battery staple")
    async with again:
        assert sorted(r.id for r in await again.records()) == sorted(r.id for r in await patient.records())


@pytest.fixture
async def rolled_back(make_patient, node, tmp_path):
    """A patient whose device saw writes the restored node no longer has."""
    patient = await make_patient()

    async def before():
        await patient.add_condition("E11.9")

    async def after():
        await patient.add_condition("I10")

    doc = await restored(node, tmp_path, before, after)
    return patient, doc


def _statement(harness, key=None, **changes):
    from rxfed.protocol.statements import sign_statement

    return sign_statement(key or current_key(harness.state.keys).key, {**harness.state.restore["body"], **changes})


@pytest.mark.parametrize("forgery", ["unsigned", "other key", "other node", "before the last sync",
                                     "future", "backup before the vault served", "malformed"])
async def test_a_rollback_with_a_bad_restore_statement_is_refused(rolled_back, node, forgery):
    patient, doc = rolled_back
    now = int(time.time())
    good = node.state.restore
    node.state.restore = {
        "unsigned": {"body": good["body"], "sig": good["sig"][:-4] + "AAAA"},
        "other key": _statement(node, key=SigningKeyPair.generate()),
        "other node": _statement(node, node="elsewhere.example"),
        "before the last sync": _statement(node, restored=now - 10 * SKEW, backup_taken=now - 20 * SKEW),
        "future": _statement(node, restored=now + 10 * SKEW),
        "backup before the vault served": _statement(node, backup_taken=now - 10 * SKEW),
        "malformed": {"body": {"type": "rxfed.restore"}, "sig": good["sig"]},
    }[forgery]
    with pytest.raises(RollbackDetected, match="restore statement does not account for it") as refused:
        await patient.records()
    assert not isinstance(refused.value, RestoreDetected)
    with pytest.raises(RollbackDetected):
        await patient.accept_restore(doc["restore_id"])
    assert patient.profile.state().restores == ()


async def test_a_restore_statement_accounts_for_one_rollback_only(rolled_back, node, tmp_path):
    patient, doc = rolled_back
    await patient.accept_restore(doc["restore_id"])
    assert len(await patient.records()) == 2
    accepted = node.state.restore

    async def after():
        await patient.add_condition("J45")

    second = await restored(node, tmp_path, lambda: asyncio.sleep(0), after)
    fresh = node.state.restore
    node.state.restore = accepted  # the node rolls back again under the statement accepted before
    with pytest.raises(RollbackDetected, match="already accepted"):
        await patient.records()
    node.state.restore = fresh  # a new restore is told again, and needs consent again
    with pytest.raises(RestoreDetected) as told:
        await patient.records()
    assert told.value.report.restore_id == second["restore_id"] != doc["restore_id"]
    assert [r.kind for r in told.value.report.lost] == ["condition"]


async def test_no_rollback_no_restore_to_accept(make_patient, node):
    patient = await make_patient()
    await patient.add_condition("E11.9")
    assert await patient.restore_report() is None
    with pytest.raises(Exception, match="no restore to accept"):
        await patient.accept_restore("0" * 32)


async def test_patient_sync_shows_the_restore_and_accepts_it_by_id(rolled_back, monkeypatch, capsys):
    patient, doc = rolled_back
    monkeypatch.setenv("RXFED_PASSPHRASE", "correct horse battery staple")
    profile = str(patient.profile.path)

    def cli(*argv):
        return asyncio.to_thread(run, capsys, "patient", *argv, "--profile", profile)

    code, out, err = await cli("show")
    assert code == 1 and len(err.splitlines()) == 1 and f"--accept-restore {doc['restore_id']}" in err
    code, out, err = await cli("sync", "--json")
    assert code == 1, err
    shown = json.loads(out)
    assert shown["in_step"] is False and shown["restore"]["restore_id"] == doc["restore_id"]
    assert set(shown["restore"]) == {"node", "restore_id", "backup_taken", "restored", "seen", "served", "lost",
                                     "reappeared", "complete"}
    assert [r["kind"] for r in shown["restore"]["lost"]] == ["condition"]
    code, out, err = await cli("sync")
    assert code == 1 and "this device can upload it again" in out
    code, out, err = await cli("sync", "--accept-restore", "f" * 32)
    assert code == 1 and "not " + "f" * 32 in err
    code, out, err = await cli("sync", "--accept-restore", doc["restore_id"], "--json")
    assert code == 0, err
    done = json.loads(out)
    assert set(done) == {"in_step", "restore", "reuploaded", "deleted", "not_recoverable"}
    assert len(done["reuploaded"]) == 1
    code, out, err = await cli("sync", "--json")
    assert code == 0 and json.loads(out)["in_step"] is True
    code, out, err = await cli("show")
    assert code == 0 and "I10" in out


async def test_a_restore_from_before_a_revocation_is_refused_and_explained(make_patient, node, tmp_path):
    """A restore cannot undo a revocation for the devices that saw it: the identity epoch
    is never accepted back, whatever the node signs; the patient is told how to revoke again."""
    from test_identity_security import linked_device

    patient = await make_patient()
    box = {}

    async def before():
        await patient.add_condition("E11.9")
        box["thief"] = await linked_device(patient, node, tmp_path)
        await box["thief"].close()

    async def after():
        await patient.revoke_device(box["thief"].device, patient.recovery_code)

    await restored(node, tmp_path, before, after)
    with pytest.raises(RollbackDetected, match="recovery code that was current at the backup") as refused:
        await patient.records()
    assert not isinstance(refused.value, RestoreDetected)
    with pytest.raises(RollbackDetected):
        await patient.accept_restore(node.state.restore["body"]["restore"])


async def test_each_device_is_told_what_only_it_held(make_patient, node, tmp_path):
    """The phone accepts the restore first and signs the next vault version; the laptop had
    written that same version number before the restore, with its own record: the laptop
    sees another vault under the number it pinned, is told, and uploads its record again."""
    from test_identity_security import linked_device

    phone = await make_patient()
    box = {}

    async def before():
        await phone.add_condition("E11.9")
        box["laptop"] = laptop = await linked_device(phone, node, tmp_path, name="laptop")
        await laptop.records()

    async def after():
        box["mine"] = await phone.add_condition("I10", label="written on the phone")
        await box["laptop"].records()
        box["laptops"] = await box["laptop"].add_journal(symptoms={"fatigue": 7})  # the phone never saw it

    doc = await restored(node, tmp_path, before, after)
    laptop = box["laptop"]
    with pytest.raises(RestoreDetected) as told:
        await phone.records()
    assert [r.id for r in told.value.report.lost] == [box["mine"].id]
    await phone.accept_restore(doc["restore_id"])
    assert phone.profile.state().counter == laptop.profile.state().counter  # the same number, another vault
    with pytest.raises(RestoreDetected) as told:
        await laptop.records()
    assert [r.id for r in told.value.report.lost] == [box["laptops"].id]
    await laptop.accept_restore(doc["restore_id"])
    ids = sorted(r.id for r in await laptop.records())
    assert ids == sorted(r.id for r in await phone.records()) and box["laptops"].id in ids and box["mine"].id in ids
    await laptop.close()


async def test_restore_over_a_running_node_is_refused(node, tmp_path, capsys):
    out = tmp_path / "b.rxfed-backup"
    await asyncio.to_thread(backup_node, node.data_dir, out)
    before = (node.data_dir / "rxfed.db").stat().st_ino
    code, _, err = await asyncio.to_thread(run, capsys, "node", "restore", str(out), str(node.data_dir), "--replace")
    assert code == 1 and "stop the node" in err and len(err.splitlines()) == 1
    assert (node.data_dir / "rxfed.db").stat().st_ino == before


async def test_an_acceptance_cut_short_resumes(rolled_back, monkeypatch):
    from rxfed.errors import Unavailable

    patient, doc = rolled_back
    real = patient._call

    async def down(method, path, body=None, **kw):
        if method == "POST" and path == "/v1/vault":
            raise Unavailable("cannot reach the node")
        return await real(method, path, body, **kw)

    monkeypatch.setattr(patient, "_call", down)
    with pytest.raises(Unavailable):
        await patient.accept_restore(doc["restore_id"])
    monkeypatch.setattr(patient, "_call", real)
    with pytest.raises(RestoreDetected):  # still told, and nothing was lost from the copy meanwhile
        await patient.records()
    done = await patient.accept_restore(doc["restore_id"])
    assert len(done["reuploaded"]) == 1 and len(await patient.records()) == 2
    assert patient.profile.state().restore_pending is None


async def test_a_device_enrolled_after_the_backup_is_told_why_the_node_forgot_it(make_patient, node, tmp_path):
    from test_identity_security import linked_device

    patient = await make_patient()
    box = {}

    async def before():
        await patient.add_condition("E11.9")

    async def after():
        box["laptop"] = await linked_device(patient, node, tmp_path, name="laptop")
        await box["laptop"].records()

    await restored(node, tmp_path, before, after)
    with pytest.raises(Exception, match="restored from a backup taken .* before this device") as told:
        await box["laptop"].records()
    assert "rxfed patient link" in str(told.value)
    await box["laptop"].close()
