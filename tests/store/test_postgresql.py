"""What only the PostgreSQL backend does: its migrations and their one-line errors, the
commands that choose it, concurrent writers, and no plaintext in its dump or files.

Runs against ``RXFED_TEST_PG_DSN`` (a fresh database per test); skipped, with the reason,
without it."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from contract import commit, nonce, register
from test_node_config import run
from rxfed.errors import Conflict
from rxfed.store import SchemaOutdated, SchemaTooNew, StoredRecord
from rxfed.store.operations import Store

asyncpg = pytest.importorskip("asyncpg")
from rxfed.store.postgresql import PostgreSQLBackend, safe_dsn  # noqa: E402
from rxfed.store.postgresql import schema as pg_schema  # noqa: E402


async def fetchval(dsn: str, sql: str, *args):
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


@pytest.fixture
async def dsn(rxfed_pg_databases):
    return await rxfed_pg_databases.create()


@pytest.fixture
async def store(dsn):
    s = Store(PostgreSQLBackend(dsn))
    await s.open()
    yield s
    await s.close()


async def test_an_empty_database_is_created_at_the_newest_schema(rxfed_pg_databases):
    empty = await rxfed_pg_databases.create_empty()
    s = Store(PostgreSQLBackend(empty))
    assert s.schema() == (None, len(pg_schema.MIGRATIONS))
    await s.open()
    await s.close()
    assert s.schema() == (len(pg_schema.MIGRATIONS), len(pg_schema.MIGRATIONS))
    assert await fetchval(empty, "SHOW synchronous_commit") == "on"


async def test_newer_and_older_schemas_are_refused(dsn, monkeypatch):
    await fetchval(dsn, "UPDATE rxfed_schema SET version=99")
    with pytest.raises(SchemaTooNew, match="newer"):
        await Store(PostgreSQLBackend(dsn)).open()
    await fetchval(dsn, "UPDATE rxfed_schema SET version=$1", len(pg_schema.MIGRATIONS))
    later = [*pg_schema.MIGRATIONS, "CREATE TABLE later (x INTEGER)"]
    monkeypatch.setattr(pg_schema, "MIGRATIONS", later)
    with pytest.raises(SchemaOutdated, match="older than this rxfed") as refused:
        await Store(PostgreSQLBackend(dsn)).open()
    assert (refused.value.current, refused.value.latest) == (len(later) - 1, len(later))
    assert await fetchval(dsn, "SELECT to_regclass('later') IS NULL")  # refused means untouched
    s = Store(PostgreSQLBackend(dsn, migrate=True))
    await s.open()
    await s.close()
    assert await fetchval(dsn, "SELECT version FROM rxfed_schema") == len(later)


async def test_a_database_of_someone_elses_tables_is_refused(rxfed_pg_databases):
    other = await rxfed_pg_databases.create_empty()
    await fetchval(other, "CREATE TABLE customers (id INTEGER)")
    with pytest.raises(SchemaTooNew, match="no rxfed schema"):
        await Store(PostgreSQLBackend(other)).open()


async def test_an_unreachable_server_is_one_clear_error():
    from rxfed.store.postgresql import StoreUnreachable

    with pytest.raises(StoreUnreachable, match=r"cannot reach PostgreSQL at postgresql://rxfed:\*\*\*@127.0.0.1:1/x"):
        await Store(PostgreSQLBackend("postgresql://rxfed:secret@127.0.0.1:1/x")).open()
    assert safe_dsn("postgresql://u@h/db") == "postgresql://u@h/db"


def test_node_init_with_db_and_the_commands_that_check_the_schema(rxfed_pg_databases, tmp_path, capsys, monkeypatch):
    dsn = asyncio.run(rxfed_pg_databases.create_empty())
    code, out, err = run(capsys, "node", "init", str(tmp_path / "n"), "--name", "pg", "--port", "18491", "--db", dsn,
                         "--json")
    assert code == 0, err
    assert "[storage]" in (tmp_path / "n" / "rxfed.toml").read_text() and not (tmp_path / "n" / "rxfed.db").exists()
    assert asyncio.run(fetchval(dsn, "SELECT value FROM meta WHERE key='created'"))
    code, out, err = run(capsys, "node", "check", str(tmp_path / "n"))
    assert code == 0, err
    # an older schema: `node check` (and `run`) refuse with the hint, `node migrate` migrates
    latest = len(pg_schema.MIGRATIONS)
    monkeypatch.setattr(pg_schema, "MIGRATIONS", [*pg_schema.MIGRATIONS, "CREATE TABLE later (x INTEGER)"])
    for command in ("check", "run"):
        code, out, err = run(capsys, "node", command, str(tmp_path / "n"))
        assert code == 1 and len(err.splitlines()) == 1, err
        assert "older than this rxfed" in err and f"rxfed node migrate {tmp_path / 'n'}" in err
    code, out, err = run(capsys, "node", "migrate", str(tmp_path / "n"), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["from"], doc["to"], doc["migrated"], doc["backup"]) == (latest, latest + 1, True, None)
    code, out, err = run(capsys, "node", "check", str(tmp_path / "n"))
    assert code == 0, err


def test_a_dsn_password_stays_out_of_node_status_and_others_cannot_read_it(rxfed_pg_databases, tmp_path, capsys):
    """The server here trusts local logins, so a password in the DSN is accepted and unused:
    what matters is where it shows. ``node status`` (its settings) never prints it, and the
    rxfed.toml that holds it is readable by the node's owner only."""
    from urllib.parse import urlsplit, urlunsplit

    plain = urlsplit(asyncio.run(rxfed_pg_databases.create_empty()))
    netloc = f"{plain.username or 'postgres'}:hunter2-secret@{plain.hostname}:{plain.port or 5432}"
    dsn = urlunsplit(plain._replace(netloc=netloc))
    code, out, err = run(capsys, "node", "init", str(tmp_path / "n"), "--name", "pg", "--port", "18492", "--db", dsn)
    assert code == 0, err
    assert "hunter2-secret" not in out + err
    assert (tmp_path / "n" / "rxfed.toml").stat().st_mode & 0o077 == 0
    code, out, err = run(capsys, "node", "status", str(tmp_path / "n"), "--json")
    assert "hunter2-secret" not in out + err
    code, out, err = run(capsys, "node", "status", str(tmp_path / "n"))
    assert "hunter2-secret" not in out + err


def test_node_init_with_an_unreachable_server_leaves_nothing(tmp_path, capsys):
    code, out, err = run(capsys, "node", "init", str(tmp_path / "n"), "--name", "pg", "--db",
                         "postgresql://rxfed@127.0.0.1:1/rxfed")
    assert code == 1 and len(err.splitlines()) == 1 and "cannot reach PostgreSQL at" in err, err
    assert not (tmp_path / "n" / "rxfed.toml").exists() and not (tmp_path / "n" / "node-keys.json").exists()
    code, out, err = run(capsys, "node", "init", str(tmp_path / "m"), "--name", "pg", "--db", "mysql://x")
    assert code == 2 and "postgresql://" in err


def test_node_init_with_a_url_asyncpg_cannot_read_is_one_line_without_its_password(tmp_path, capsys):
    """A port that is no number used to end in asyncpg's traceback."""
    code, out, err = run(capsys, "node", "init", str(tmp_path / "n"), "--name", "pg", "--db",
                         "postgresql://rxfed:hunter2@127.0.0.1:notaport/rxfed")
    assert code == 1 and len(err.splitlines()) == 1 and "cannot be used" in err, err
    assert "hunter2" not in out + err and "Traceback" not in err
    assert not (tmp_path / "n" / "rxfed.toml").exists()


async def test_concurrent_writers_are_serialised(store, dsn):
    """Commits to one vault from several connections at once: exactly one of each counter
    wins, whichever worker or connection it came through."""
    p = await register(store, 1)
    other = Store(PostgreSQLBackend(dsn))  # as a second worker process would
    await other.open()
    try:
        for counter in (1, 2, 3):
            results = await asyncio.gather(
                *(commit(s, p, counter, [StoredRecord(f"{counter:02d}{i:030x}", 1, b"x")])
                  for i, s in enumerate([store, other] * 4)), return_exceptions=True)
            assert sum(r == counter for r in results) == 1, results
            assert all(isinstance(r, Conflict) for r in results if r != counter)
        assert (await other.account(p.patient)).records == 3
    finally:
        await other.close()


async def test_a_replayed_nonce_is_refused_by_another_worker(store, dsn):
    p = await register(store, 1)
    n = nonce()
    other = Store(PostgreSQLBackend(dsn))
    await other.open()
    try:
        results = await asyncio.gather(commit(store, p, 1, n=n), commit(other, p, 1, n=n), return_exceptions=True)
        assert sorted(type(r).__name__ for r in results) == ["Replayed", "int"]
    finally:
        await other.close()


def _dump(dsn: str) -> bytes:
    return subprocess.run(["pg_dump", "--data-only", dsn], check=True, capture_output=True, timeout=60).stdout


def _database_files(dsn: str) -> list[Path]:
    """The server's files of this database and its WAL, where this process may read them."""
    data = Path(asyncio.run(fetchval(dsn, "SELECT setting FROM pg_settings WHERE name='data_directory'")))
    oid = asyncio.run(fetchval(dsn, "SELECT oid FROM pg_database WHERE datname=current_database()"))
    found = []
    for folder in (data / "base" / str(oid), data / "pg_wal"):
        try:
            found += [p for p in folder.iterdir() if p.is_file()]
        except OSError:
            continue
    return found


@pytest.mark.skipif(shutil.which("pg_dump") is None, reason="pg_dump is not installed")
async def test_dump_and_files_hold_no_plaintext(rxfed_pg_databases, tmp_path):
    from conftest import MARKER, PASSPHRASE
    from rxfed.client import PatientClient
    from rxfed.testing import NodeHarness

    dsn = await rxfed_pg_databases.create()
    node = await NodeHarness(tmp_path / "node", storage={"backend": "postgresql", "dsn": dsn}).start()
    try:
        patient, _code = await PatientClient.register(node.url, tmp_path / "p", PASSPHRASE, kdf="min")
        try:
            await patient.add_condition("G40.909", "icd10", label=f"epilepsy {MARKER}")
            await patient.add_journal(symptoms={f"aura{MARKER}": 3}, feeling=4, note=f"note {MARKER} seizure")
            await patient.add_treatment("levetiracetam", dose="500 mg", side_effects=[f"tired{MARKER}"])
            stored = (await node.app_store().vault(patient.patient, None)).records
            device_key = (await node.app_store().devices(patient.patient))[0].cert
        finally:
            await patient.close()
    finally:
        await node.stop()
    needles = [MARKER, "G40.909", "levetiracetam", "epilepsy", "seizure"]
    forms = [form for n in needles for form in (n.encode(), n.encode().hex().encode(), n.lower().encode())]
    dump = await asyncio.to_thread(_dump, dsn)
    assert stored and stored[0].blob[:32].hex().encode() in dump  # the scan sees stored ciphertext
    assert device_key.hex().encode() in dump
    assert [f for f in forms if f in dump] == []
    files = await asyncio.to_thread(_database_files, dsn)
    if not files:
        pytest.skip("the server's data directory is not readable here (the dump was scanned)")
    seen = False
    for path in files:
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # another database's file, dropped while the scan ran
            continue
        seen = seen or stored[0].blob[:32] in data
        assert [f for f in forms if f in data] == [], path
    assert seen  # the scan sees stored ciphertext in the files too


async def test_migrate_db_moves_a_sqlite_node_and_it_serves_on(rxfed_pg_databases, tmp_path, capsys):
    from conftest import PASSPHRASE
    from rxfed.client import PatientClient
    from rxfed.testing import NodeHarness

    node = await NodeHarness(tmp_path / "node").start()
    patient, _code = await PatientClient.register(node.url, tmp_path / "p", PASSPHRASE, kdf="min")
    await patient.add_journal(feeling=3, note="before the move")
    await node.app_store().set_peer_policy("b.example", "allowed", url="https://b.example")
    await node.app_store().enqueue([("b.example", b'{"kind":"x"}')], now=1000)
    await patient.close()
    await node.stop()
    empty = await rxfed_pg_databases.create_empty()
    code, out, err = await asyncio.to_thread(run, capsys, "node", "migrate-db", str(tmp_path / "node"), "--to", empty,
                                             "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["verified"] and doc["rows"]["records"] >= 1 and doc["rows"]["outbox"] == 1
    assert 'backend = "postgresql"' in (tmp_path / "node" / "rxfed.toml").read_text()
    # a second move into the same (now full) database is refused, and changes nothing
    code, out, err = await asyncio.to_thread(run, capsys, "node", "migrate-db", str(tmp_path / "node"), "--to", empty)
    assert code == 1 and len(err.splitlines()) == 1, err
    moved = await NodeHarness(tmp_path / "node", port=node.port, storage={"backend": "postgresql", "dsn": empty}).start()
    try:
        again = PatientClient.open(tmp_path / "p", PASSPHRASE)
        try:
            assert "before the move" in json.dumps([r.to_json() for r in await again.records()])
            await again.add_journal(feeling=4, note="after the move")
        finally:
            await again.close()
        assert (await moved.app_store().peer("b.example")).policy == "allowed"
    finally:
        await moved.stop()


async def test_a_node_on_postgresql_serves_health_and_metrics(rxfed_pg_databases, tmp_path):
    import aiohttp

    from rxfed.testing import NodeHarness, free_port

    node = NodeHarness(tmp_path / "node", storage={"backend": "postgresql", "dsn": await rxfed_pg_databases.create()},
                       metrics_listen=f"127.0.0.1:{free_port()}")
    await node.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{node.url}/health") as r:
                assert r.status == 200 and (await r.json())["status"] == "ok"
            async with http.get(node.metrics_url) as r:
                assert r.status == 200 and "rxfed_node_info" in await r.text()
    finally:
        await node.stop()


async def test_connections_lost_to_the_server_fail_one_write_cleanly_then_the_store_reconnects(store, dsn):
    from rxfed.errors import Unavailable

    p = await register(store, 1)
    await fetchval(dsn, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname=current_database() "
                        "AND pid <> pg_backend_pid()")
    try:
        await commit(store, p, 1, [StoredRecord("a" * 32, 1, b"x")])
    except Unavailable:  # the write on the lost connection: 503, nothing half-done
        pass
    counter = (await store.account(p.patient)).counter
    assert await commit(store, p, counter + 1, [StoredRecord("b" * 32, 1, b"y")]) == counter + 1


async def test_audit_entries_appended_at_once_by_two_workers_chain_in_order(store, dsn):
    """A recipient's reports of use (which take no lock on the account) and the patient's
    own grants append to one audit chain at the same time: every entry lands, numbered in
    sequence, none refused."""
    from rxfed.consent.audit import chain
    from rxfed.store import GrantRow, TokenRow

    p = await register(store, 1)
    grant = GrantRow("g" * 32, p.patient, "diagnosis.category", "research", "federation", 5000, 1000, b"grant")
    token = TokenRow("t" * 32, grant.id, "b", b"token", b"voucher")
    await store.add_grant(grant, [token], signer=p.device, audit=[{"event": "granted"}], nonce=nonce(), now=1000)
    for i in range(8):
        await store.mark_shared(token.token, patient=p.patient, signer=p.device, delivery=f"d{i}", seq=i + 1, outbox=[],
                                audit=[], nonce=nonce(), now=1000)
    other = Store(PostgreSQLBackend(dsn))
    await other.open()
    try:
        used = [other.delivery_used(token.token, "b", f"d{i}", [{"event": "used", "n": i}], now=1100) for i in range(8)]
        grants = [store.add_grant(GrantRow(f"{i:032x}", p.patient, "diagnosis.category", "research", "federation",
                                           5000, 1000, b"grant"), [], signer=p.device, audit=[{"event": "granted"}],
                                  nonce=nonce(), now=1100) for i in range(8)]
        results = await asyncio.gather(*(x for pair in zip(used, grants) for x in pair))
    finally:
        await other.close()
    assert results == [True, None] * 8
    rows = await store.audit(p.patient)
    assert [r.seq for r in rows] == list(range(1, 18)) and [r.hash for r in rows] == chain(r.entry for r in rows)


async def test_a_running_node_reports_its_dsn_without_the_password(rxfed_pg_databases, tmp_path):
    """The control socket's /status (what ``rxfed node status`` prints for a running node)
    carries the settings the node runs with: the DSN there has no password."""
    from urllib.parse import urlsplit, urlunsplit

    from rxfed.node import control
    from rxfed.node.admin import node_status
    from rxfed.testing import NodeHarness

    plain = urlsplit(await rxfed_pg_databases.create())
    dsn = urlunsplit(plain._replace(netloc=f"{plain.username or 'postgres'}:hunter2-secret@{plain.hostname}:"
                                           f"{plain.port or 5432}"))
    node = await NodeHarness(tmp_path / "n", storage={"backend": "postgresql", "dsn": dsn}).start()
    try:
        live = await asyncio.to_thread(control.ask, node.data_dir, "GET", "/status")
        assert live["running"] is True and "hunter2-secret" not in json.dumps(live)
        assert live["settings"]["storage"]["dsn"].startswith(f"postgresql://{plain.username or 'postgres'}:***@")
        assert "hunter2-secret" not in json.dumps(await asyncio.to_thread(node_status, node.data_dir))
        # the store line: the pool's connections and commits (not "not reported yet")
        assert live["store"]["backend"] == "postgresql" and live["store"]["connections"] >= 1
        code, out, err = await asyncio.to_thread(_status_text, node.data_dir)
        assert code == 0 and "store: PostgreSQL, " in out and "not reported yet" not in out, out + err
    finally:
        await node.stop()


def _status_text(data_dir):
    import contextlib
    import io

    from rxfed.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["node", "status", str(data_dir)])
    return code, out.getvalue(), err.getvalue()


async def test_health_on_postgresql_says_when_writes_fail_and_when_they_work_again(rxfed_pg_databases, tmp_path,
                                                                                   monkeypatch):
    """A database that refuses writes (here: made read-only) turns /health to 503 with the
    store's failure, as a full disk does on SQLite; once writes work, /health's own probe
    write turns it ok again. `node status` shows the pool's line."""
    import aiohttp

    from rxfed.node import app as node_app
    from rxfed.testing import NodeHarness

    monkeypatch.setattr(node_app, "HEALTH_PROBE_S", 0.0)
    dsn = await rxfed_pg_databases.create()
    node = await NodeHarness(tmp_path / "node", storage={"backend": "postgresql", "dsn": dsn}).start()
    from rxfed.testing import pg_test_dsn

    admin = pg_test_dsn()  # the database itself turns read-only: its settings change from another
    name = await fetchval(dsn, "SELECT current_database()")
    terminate = f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname='{name}'"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{node.url}/health") as r:
                assert r.status == 200
            await fetchval(admin, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
            await fetchval(admin, terminate)
            for _ in range(3):  # the first write may meet a connection the server closed
                try:
                    await node.app_store().set_meta("x", "1")
                except Exception:  # noqa: BLE001 - Unavailable: the write failed cleanly
                    pass
            async with http.get(f"{node.url}/health") as r:
                body = await r.json()
                assert r.status == 503 and body["status"] == "failing", body
                assert body["store"]["writable"] is False and body["store"]["failed_batches"] >= 1
                assert "postgres" not in json.dumps(body).lower()  # no server message, no DSN
            status = node.app_store().commit_status()
            assert status["backend"] == "postgresql" and status["max_connections"] == 10
            await fetchval(admin, f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
            await fetchval(admin, terminate)
            for _ in range(20):
                async with http.get(f"{node.url}/health") as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.1)
            assert r.status == 200
    finally:
        await node.stop()
