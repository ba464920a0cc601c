"""The SQLite backend against the store contract, plus what only SQLite does."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
import threading
import time

import pytest

from contract import new_patient, commit, nonce, register
from rxfed.errors import Conflict, Unavailable
import rxfed.store.sqlite.engine as engine
import rxfed.store.sqlite.schema as schema
from rxfed.store import Quota, Replayed, StoredRecord
from rxfed.store.operations import Store
from rxfed.store.sqlite import CONSENT_DELIVERY_STATE, MIGRATIONS, SQLiteBackend


def SQLiteStore(path, **kwargs) -> Store:
    return Store(SQLiteBackend(path, **kwargs))


@pytest.fixture
async def store(tmp_path):
    s = SQLiteStore(tmp_path / "rxfed.db")
    await s.open()
    yield s
    await s.close()


async def test_pragmas_and_schema(store):
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


async def test_erase_leaves_no_ciphertext_in_database_files(store, tmp_path):
    p = await register(store, 1)
    blob = b"CIPHERTEXT-" + bytes(range(256)) * 8
    await commit(store, p, 1, [StoredRecord("a" * 32, 1, blob)])

    def files_contain(needle: bytes) -> bool:
        return any(needle in f.read_bytes() for f in tmp_path.iterdir() if f.is_file())

    assert files_contain(blob[:64])  # the scan does see stored bytes
    await store.erase_patient(p.patient, signer=p.device, tombstone=b"t", nonce=nonce(), now=1)
    assert not files_contain(blob[:64])
    assert not files_contain(p.device_sign_key)


async def test_reopen_keeps_data_and_nonces(tmp_path):
    s = SQLiteStore(tmp_path / "rxfed.db")
    await s.open()
    p = await register(s, 1)
    await commit(s, p, 1, [StoredRecord("a" * 32, 1, b"x")])
    await s.close()
    s = SQLiteStore(tmp_path / "rxfed.db")
    await s.open()
    try:
        assert (await s.account(p.patient)).counter == 1
        assert len(await s.load_nonces(now=0)) == 2
    finally:
        await s.close()


async def test_newer_schema_refused(tmp_path):
    conn = sqlite3.connect(tmp_path / "rxfed.db")
    conn.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        await SQLiteStore(tmp_path / "rxfed.db").open()


# -- the writer: statements inline on the event loop, COMMIT behind on the committer thread ------


async def _runs_on(store) -> str:
    return await store._write(lambda c: threading.current_thread().name)


def _on_thread(store) -> None:
    """As if every caller were on another event loop: batches run on the writer thread."""
    store.backend._loop = object()


async def test_batches_run_on_the_event_loop_and_heavy_ones_on_the_writer_thread(store):
    assert await _runs_on(store) == threading.current_thread().name  # a new store too: no probing first
    ran = []
    await store._write(lambda c: ran.append(threading.current_thread().name), heavy=True)
    assert ran == ["rxfed-sqlite-writer"]  # heavy operations never run on the loop
    seen = {await _runs_on(store) for _ in range(50)}  # the thread may hold the connection a moment longer
    assert threading.current_thread().name in seen


async def test_a_slow_commit_leaves_the_event_loop_free_and_the_next_batch_gathers_behind_it(store):
    """The COMMIT (its fsync) runs on the committer thread: the loop turns meanwhile, the
    writes that arrive wait and share the next batch, and no caller is answered before its
    batch is on disk. Nothing about the disk's speed changes where batches run."""
    patients = [await register(store, n) for n in range(1, 10)]
    sizes = _batch_sizes(store)
    real, gate, commits = store.backend._conn, threading.Event(), []

    class SlowCommit:  # the write connection, with a disk that takes its time
        def __getattr__(self, name):
            return getattr(real, name)

        def execute(self, sql, *args):
            if sql == "COMMIT":
                commits.append(threading.current_thread().name)
                gate.wait(10)
            return real.execute(sql, *args)

    store.backend._conn = SlowCommit()
    try:
        first = asyncio.ensure_future(commit(store, patients[0], 1, [StoredRecord("a" * 32, 1, b"x")]))
        started = time.perf_counter()
        await asyncio.sleep(0.1)  # the loop turns while the COMMIT waits
        assert time.perf_counter() - started < 1.0 and not first.done() and commits
        rest = [asyncio.ensure_future(commit(store, p, 1, [StoredRecord("a" * 32, 1, b"x")])) for p in patients[1:]]
        await asyncio.sleep(0.1)
        assert not any(f.done() for f in rest)  # waiting for the first batch to be on disk
        gate.set()
        assert await first == 1 and await asyncio.gather(*rest) == [1] * 8
    finally:
        gate.set()
        store.backend._conn = real
    assert sizes == [1, 8] and set(commits) == {"rxfed-sqlite-commit"}
    assert (await store.account(patients[-1].patient)).counter == 1


async def test_where_batches_ran_is_counted_for_operators(store):
    await _runs_on(store)
    status = store.commit_status()
    assert status["mode"] == "event loop" and status["inline_batches"] == 1 and status["switches"] == 0
    await store._write(lambda c: None, heavy=True)
    status = store.commit_status()
    assert status["mode"] == "writer thread" and status["thread_batches"] == 1 and status["switches"] == 1
    me = threading.current_thread().name
    while await _runs_on(store) != me:  # the writer thread may still hold the connection a moment
        pass
    assert store.commit_status()["mode"] == "event loop" and store.commit_status()["switches"] == 2
    assert store.commit_status()["commit_us"] > 0


@pytest.mark.parametrize("slow_disk", [False, True])
async def test_one_failing_operation_fails_alone_in_a_batch(store, slow_disk):
    patients = [await register(store, n) for n in range(1, 6)]
    if slow_disk:
        _on_thread(store)
    ok = [commit(store, p, 1, [StoredRecord(f"{n:032x}", 1, b"r%d" % n)]) for n, p in enumerate(patients)]
    stale = commit(store, patients[0], 7, [StoredRecord("f" * 32, 1, b"stale")])
    results = await asyncio.gather(*ok[:2], stale, *ok[2:], return_exceptions=True)
    assert isinstance(results[2], Conflict)
    assert [r for i, r in enumerate(results) if i != 2] == [1] * 5
    for n, p in enumerate(patients):
        vault = await store.vault(p.patient, p.device)
        assert [r.blob for r in vault.records] == [b"r%d" % n]


@pytest.mark.parametrize("reopened", [False, True])
async def test_another_process_writing_never_blocks_the_event_loop(store, reopened):
    p = await register(store, 1)
    if reopened:  # the same store object, closed and opened again: a new connection
        await store._write(lambda c: None)  # inline
        await store.close()
        await store.open()
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # e.g. `rxfed node invite` while the node runs
    try:
        write = asyncio.ensure_future(commit(store, p, 1, [StoredRecord("a" * 32, 1, b"x")]))
        started = time.perf_counter()
        await asyncio.sleep(0.2)  # the loop keeps turning while the write waits for the lock
        assert time.perf_counter() - started < 1.0
        assert not write.done()
    finally:
        other.execute("COMMIT")
        other.close()
    assert await write == 1


async def test_writes_from_another_event_loop(store):
    p = await register(store, 1)

    def elsewhere():
        return asyncio.run(commit(store, p, 1, [StoredRecord("a" * 32, 1, b"x")]))

    assert await asyncio.to_thread(elsewhere) == 1
    assert (await store.account(p.patient)).counter == 1


async def test_close_writes_what_was_queued(tmp_path):
    s = SQLiteStore(tmp_path / "rxfed.db")
    await s.open()
    p = await register(s, 1)
    write = asyncio.ensure_future(commit(s, p, 1, [StoredRecord("a" * 32, 1, b"x")]))
    await asyncio.sleep(0)  # queued, not yet written
    await s.close()
    assert await write == 1
    s = SQLiteStore(tmp_path / "rxfed.db")
    await s.open()
    try:
        assert (await s.account(p.patient)).counter == 1
    finally:
        await s.close()


async def test_migration_4_keeps_records_and_nonces(tmp_path, monkeypatch):
    backend = schema
    monkeypatch.setattr(backend, "MIGRATIONS", MIGRATIONS[:3])  # a database from before migration 4
    s = SQLiteStore(tmp_path / "rxfed.db")
    await s.open()
    await s.close()
    p, used = new_patient(1), nonce()
    conn = sqlite3.connect(s.path)  # rows as the code of schema 3 wrote them
    with conn:
        conn.execute("INSERT INTO patients (id, root_key, created, counter) VALUES (?, ?, 1000, 1)",
                     (p.patient, p.root_key))
        conn.execute("INSERT INTO devices (id, patient_id, sign_key, cert, keyring, created) VALUES (?, ?, ?, ?, ?, 1000)",
                     (p.device, p.patient, p.device_sign_key, p.device_cert, p.keyring))
        conn.executemany("INSERT INTO records VALUES (?, ?, 1, ?)",
                         [(p.patient, "a" * 32, b"first"), (p.patient, "b" * 32, b"second")])
        conn.execute("INSERT INTO nonces VALUES (?, ?)", (used.value, used.expires))
    conn.close()
    monkeypatch.setattr(backend, "MIGRATIONS", MIGRATIONS)
    s = SQLiteStore(tmp_path / "rxfed.db", migrate=True)
    await s.open()
    try:
        conn = sqlite3.connect(s.path)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        vault = await s.vault(p.patient, p.device)
        assert [(r.id, r.blob) for r in vault.records] == [("a" * 32, b"first"), ("b" * 32, b"second")]
        # (accounts from before migration 5 are at identity epoch 0)
        with pytest.raises(Replayed):
            await commit(s, p, 2, [StoredRecord("c" * 32, 1, b"x")], n=used, epoch=0)
        with pytest.raises(Conflict):  # the unique (patient, id) index holds
            await commit(s, p, 2, [StoredRecord("a" * 32, 1, b"again")], epoch=0)
        await commit(s, p, 2, [StoredRecord("a" * 32, 2, b"first, edited")], epoch=0)
        assert [r.blob for r in (await s.vault(p.patient, p.device)).records] == [b"first, edited", b"second"]
    finally:
        await s.close()


async def test_consent_delivery_state_migration_keeps_grants_and_queued_events(tmp_path, monkeypatch):
    backend = schema
    monkeypatch.setattr(backend, "MIGRATIONS", MIGRATIONS[:MIGRATIONS.index(CONSENT_DELIVERY_STATE)])
    s = SQLiteStore(tmp_path / "rxfed.db")
    await s.open()
    p = await register(s, 1)
    await s.close()
    conn = sqlite3.connect(tmp_path / "rxfed.db")  # rows as that schema's code wrote them
    with conn:
        conn.execute("INSERT INTO grants VALUES (?, ?, 'diagnosis.category', 'research', 'node:b', 5000, 1000, "
                     "x'00', NULL, NULL)", ("g" * 32, p.patient))
        conn.execute("INSERT INTO grant_tokens VALUES (?, ?, 'b', ?, x'00', NULL, 1100, NULL)",
                     ("t" * 32, "g" * 32, b"token"))
        conn.execute("INSERT INTO outbox (destination, event, created) VALUES ('b', ?, 1000)", (b"queued before",))
    conn.close()
    monkeypatch.setattr(backend, "MIGRATIONS", MIGRATIONS)
    s = SQLiteStore(tmp_path / "rxfed.db", migrate=True)
    await s.open()
    try:
        ((_, (token,)),) = await s.grants(p.patient)
        assert (token.seq, token.ack, token.statement, token.shared) == (None, None, b"token", 1100)
        assert await s.due_destinations() == [("b", 0)]  # an event queued before waits for nothing
        assert (await s.next_transaction("b", max_events=10, now=1000, dead_after=86400)).events == (b"queued before",)
    finally:
        await s.close()


def _batch_sizes(store) -> list[int]:
    """The sizes of the batches the store runs from now on."""
    sizes = []
    real = store.backend._transaction

    def counting(conn, batch, **kw):
        sizes.append(len(batch))
        return real(conn, batch, **kw)

    store.backend._transaction = counting
    return sizes


async def test_operations_arriving_together_share_a_transaction(store):
    patients = [await register(store, n) for n in range(1, 9)]
    commits = _batch_sizes(store)

    async def arrive_later(p, turns):
        for _ in range(turns):  # as requests still being parsed when the first reaches the store
            await asyncio.sleep(0)
        return await commit(store, p, 1, [StoredRecord("a" * 32, 1, b"x")])

    assert await asyncio.gather(*(arrive_later(p, i % 2) for i, p in enumerate(patients))) == [1] * 8
    assert commits == [8]


async def test_an_existing_record_is_a_conflict_even_at_the_quota(store):
    p = await register(store, 1)
    quota = Quota(max_records=1, max_bytes=10**6)
    await commit(store, p, 1, [StoredRecord("a" * 32, 1, b"x")], quota=quota)
    with pytest.raises(Conflict) as refused:
        await commit(store, p, 2, [StoredRecord("a" * 32, 1, b"again")], quota=quota)
    assert refused.value.code == "stale_record"


async def test_a_failing_store_answers_every_caller(store, monkeypatch):
    p = await register(store, 1)

    def broken(conn):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store.backend, "_checkpoint", broken)
    with pytest.raises(Unavailable):  # an erasure checkpoints on the writer thread, which fails here
        await store.erase_patient(p.patient, signer=p.device, tombstone=b"t", nonce=nonce(), now=1)
    p2 = await register(store, 2)  # the writer thread still serves
    await store._write(lambda c: None, heavy=True)
    assert (await store.account(p2.patient)) is not None


async def test_inline_batches_are_capped(store):
    sizes = _batch_sizes(store)
    await asyncio.gather(*(store._write(lambda c: None) for _ in range(1200)))
    assert sum(sizes) == 1200 and max(sizes) == 512


async def test_migration_7_drops_old_communities_and_keeps_the_rest(tmp_path, monkeypatch):
    backend = schema
    monkeypatch.setattr(backend, "MIGRATIONS", MIGRATIONS[:6])  # a database from before migration 7
    s = SQLiteStore(tmp_path / "rxfed.db")
    await s.open()
    p = await register(s, 1)
    await commit(s, p, 1, [StoredRecord("a" * 32, 1, b"kept")])
    await s.close()
    conn = sqlite3.connect(tmp_path / "rxfed.db")
    with conn:
        conn.execute("INSERT INTO communities VALUES (?, 'h.example', 'Epilepsy', 'G40', 0, 0, 1, 1)", ("c" * 32,))
        conn.execute("INSERT INTO community_events VALUES (?, 1, x'7b7d', x'7b7d')", ("c" * 32,))
        conn.execute("INSERT INTO subscriptions VALUES (?, ?)", (p.patient, "c" * 32))
    conn.close()
    monkeypatch.setattr(backend, "MIGRATIONS", MIGRATIONS)
    s = SQLiteStore(tmp_path / "rxfed.db", migrate=True)
    await s.open()
    try:
        conn = sqlite3.connect(s.path)
        tables = {t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "subscriptions" not in tables and "community_members" in tables
        assert conn.execute("SELECT count(*) FROM communities").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM community_events").fetchone()[0] == 0
        assert [r.blob for r in (await s.vault(p.patient, p.device)).records] == [b"kept"]
    finally:
        await s.close()


async def test_older_schema_is_refused_unless_opened_to_migrate(tmp_path, monkeypatch):
    backend = schema
    monkeypatch.setattr(backend, "MIGRATIONS", MIGRATIONS[:-1])  # a database from the release before
    s = SQLiteStore(tmp_path / "rxfed.db")
    await s.open()
    await s.close()
    monkeypatch.setattr(backend, "MIGRATIONS", MIGRATIONS)
    s = SQLiteStore(tmp_path / "rxfed.db")
    assert s.schema() == (len(MIGRATIONS) - 1, len(MIGRATIONS))
    with pytest.raises(schema.SchemaOutdated, match="older than this rxfed") as refused:
        await s.open()
    assert (refused.value.current, refused.value.latest) == (len(MIGRATIONS) - 1, len(MIGRATIONS))
    assert backend.schema_version(s.path) == len(MIGRATIONS) - 1  # refused means untouched
    s = SQLiteStore(tmp_path / "rxfed.db", migrate=True)
    await s.open()
    await s.close()
    assert backend.schema_version(s.path) == len(MIGRATIONS)


async def test_a_new_database_is_created_at_the_newest_schema(tmp_path):
    s = SQLiteStore(tmp_path / "new.db")
    assert s.schema() == (None, len(MIGRATIONS))
    await s.open()
    await s.close()
    assert s.schema() == (len(MIGRATIONS), len(MIGRATIONS))


async def test_backup_while_writing_is_a_consistent_private_copy(tmp_path):
    backend = schema
    s = SQLiteStore(tmp_path / "rxfed.db")
    await s.open()
    try:
        p = await register(s, 1)
        await commit(s, p, 1, [StoredRecord("a" * 32, 1, b"before")])
        async def sequential():
            for n in range(2, 9):
                await commit(s, p, n, [StoredRecord(f"{n:032x}", 1, b"during")])

        writer = asyncio.ensure_future(sequential())
        copy = tmp_path / "copy.db"
        version = await s.backup_to(copy, meta={"backup_taken": "1234"})
        await writer
    finally:
        await s.close()
    assert version == len(MIGRATIONS)
    assert stat.S_IMODE(os.stat(copy).st_mode) == 0o600
    assert not (tmp_path / "copy.db-wal").exists()
    conn = sqlite3.connect(copy)
    counter, records = conn.execute("SELECT counter, records FROM patients").fetchone()
    stored = conn.execute("SELECT count(*) FROM records").fetchone()[0]
    assert counter == stored == records >= 1  # every commit wholly in the copy or wholly out
    assert conn.execute("SELECT value FROM meta WHERE key='backup_taken'").fetchone() == ("1234",)
    conn.close()
    with pytest.raises(FileExistsError):  # never overwrites
        backend.backup_database(tmp_path / "rxfed.db", copy)


async def test_migration_11_keeps_the_inbox_replies_as_results_and_missing_numbers(tmp_path, monkeypatch):
    from rxfed.store import Inbound

    monkeypatch.setattr(schema, "MIGRATIONS", MIGRATIONS[:10])  # a database from before migration 11
    s = SQLiteStore(tmp_path / "rxfed.db")
    await s.open()
    await s.close()
    conn = sqlite3.connect(tmp_path / "rxfed.db")
    with conn:  # a reply as the node of schema 10 stored it
        conn.execute("INSERT INTO inbox VALUES ('a.example', 'txn-1', 4, ?, 1000)",
                     (b'{"missing":[2,3],"results":[{"ok":true},{"error":"x","ok":false}]}',))
    conn.close()
    monkeypatch.setattr(schema, "MIGRATIONS", MIGRATIONS)
    s = SQLiteStore(tmp_path / "rxfed.db", migrate=True)
    await s.open()
    try:
        kept = await s.inbox_reply("a.example", "txn-1")
        assert kept.missing == (2, 3)
        assert json.loads(kept.results) == [{"ok": True}, {"error": "x", "ok": False}]
        from rxfed.node.federation import inbound_reply
        assert inbound_reply(kept) == b'{"missing":[2,3],"results":[{"ok":true},{"error":"x","ok":false}]}'
        assert isinstance(kept, Inbound)
    finally:
        await s.close()
