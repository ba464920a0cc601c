"""SQLite store: WAL mode, one writer thread with group commit, one reader thread.

Durability: ``synchronous=FULL`` makes every COMMIT fsync the WAL before a reply is sent.
To stay fast under concurrency the writer thread drains every operation waiting in its
queue into one transaction (each inside its own SAVEPOINT, so one operation failing rolls
back only itself), commits once, then answers them all: one fsync for many requests.
``secure_delete=ON`` overwrites freed content with zeros; erasures end with a TRUNCATE
checkpoint so the WAL keeps no old frames either.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rxfed.errors import RxfedError, Conflict, Forbidden, Gone, QuotaExceeded, Unauthorized, Unavailable
from rxfed.store import (
    Account,
    AuthKey,
    Device,
    NewPatient,
    Nonce,
    Quota,
    Recovery,
    Replayed,
    Store,
    StoredRecord,
    Vault,
)

log = logging.getLogger("rxfed.store")

MIGRATIONS: list[str] = [
    # 1: the vault
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE invites (code_hash BLOB PRIMARY KEY, created INTEGER NOT NULL, used INTEGER) WITHOUT ROWID;
    CREATE TABLE patients (
        id TEXT PRIMARY KEY,
        root_key BLOB NOT NULL UNIQUE,
        created INTEGER NOT NULL,
        counter INTEGER NOT NULL DEFAULT 0,
        manifest BLOB,
        records INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        patient_id TEXT NOT NULL REFERENCES patients(id),
        sign_key BLOB NOT NULL UNIQUE,
        cert BLOB NOT NULL,
        keyring BLOB NOT NULL,
        created INTEGER NOT NULL,
        revoked INTEGER,
        revocation BLOB
    ) WITHOUT ROWID;
    CREATE INDEX devices_patient ON devices(patient_id);
    CREATE TABLE recovery (
        patient_id TEXT PRIMARY KEY REFERENCES patients(id),
        auth_key BLOB NOT NULL UNIQUE,
        statement BLOB NOT NULL,
        root_bundle BLOB NOT NULL,
        keyring BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE records (
        patient_id TEXT NOT NULL REFERENCES patients(id),
        id TEXT NOT NULL,
        version INTEGER NOT NULL,
        blob BLOB NOT NULL,
        PRIMARY KEY (patient_id, id)
    ) WITHOUT ROWID;
    CREATE TABLE nonces (nonce BLOB PRIMARY KEY, expires INTEGER NOT NULL) WITHOUT ROWID;
    CREATE INDEX nonces_expires ON nonces(expires);
    CREATE TABLE tombstones (patient_id TEXT PRIMARY KEY, root_key BLOB NOT NULL UNIQUE,
                             tombstone BLOB NOT NULL, deleted INTEGER NOT NULL) WITHOUT ROWID;
    """,
]

_BATCH_MAX = 512
_CHECKPOINT = object()


class SQLiteStore(Store):
    name = "sqlite"

    def __init__(self, path: str | Path, *, synchronous: str = "FULL"):
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous must be FULL, EXTRA or NORMAL")
        self.path = Path(path)
        self.synchronous = synchronous
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader_local = threading.local()
        self._closed = True

    # -- lifecycle -------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ready: concurrent.futures.Future = concurrent.futures.Future()
        self._writer = threading.Thread(target=self._write_loop, args=(ready,), name="rxfed-sqlite-writer", daemon=True)
        self._writer.start()
        await asyncio.wrap_future(ready)
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rxfed-sqlite-reader")
        self._closed = False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        await asyncio.to_thread(self._writer.join)
        self._reader.shutdown(wait=True)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        if current > len(MIGRATIONS):
            raise RuntimeError(f"database schema {current} is newer than this rxfed ({len(MIGRATIONS)})")
        for version in range(current, len(MIGRATIONS)):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={version + 1}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            log.info("database schema migrated to version %d", version + 1)

    # -- the writer: group commit ----------------------------------------------------------
    def _write_loop(self, ready: concurrent.futures.Future) -> None:
        try:
            conn = self._connect()
            self._migrate(conn)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < _BATCH_MAX:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._apply(conn, batch)
        conn.close()

    def _apply(self, conn: sqlite3.Connection, batch: list) -> None:
        outcomes: list[tuple[Any, Any, BaseException | None]] = []
        checkpoint = False
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, args, future, loop in batch:
                conn.execute("SAVEPOINT op")
                try:
                    result = fn(conn, *args)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    if not isinstance(exc, RxfedError):
                        log.error("store operation failed: %s: %s", type(exc).__name__, exc)
                        exc = Unavailable("the store could not save this change; try again")
                    outcomes.append((future, loop, None, exc))
                    continue
                conn.execute("RELEASE op")
                if result is _CHECKPOINT:
                    checkpoint, result = True, None
                outcomes.append((future, loop, result, None))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.error("store transaction failed: %s", exc)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            failure = Unavailable("the store could not save this change; try again")
            outcomes = [(future, loop, None, failure) for _fn, _args, future, loop in batch]
            checkpoint = False
        if checkpoint:
            self._checkpoint(conn)
        for future, loop, result, exc in outcomes:
            loop.call_soon_threadsafe(_settle, future, result, exc)

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        # A reader holding an old snapshot makes TRUNCATE report busy; readers are short, so
        # wait for them rather than leave erased frames in the WAL.
        for _ in range(200):
            busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return
            time.sleep(0.01)
        log.error("WAL checkpoint after an erasure stayed busy; it will run at the next erasure or restart")

    async def _write(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._closed:
            raise Unavailable("the store is closed")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((fn, args, future, loop))
        return await future

    # -- the reader ------------------------------------------------------------------------
    def _reader_conn(self) -> sqlite3.Connection:
        conn = getattr(self._reader_local, "conn", None)
        if conn is None:
            conn = self._reader_local.conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
        return conn

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._closed:
            raise Unavailable("the store is closed")

        def run():
            conn = self._reader_conn()
            try:
                conn.execute("BEGIN")
                try:
                    return fn(conn, *args)
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                log.error("store read failed: %s: %s", type(exc).__name__, exc)
                raise Unavailable("the store could not be read; try again") from None

        return await asyncio.get_running_loop().run_in_executor(self._reader, run)

    # -- node ------------------------------------------------------------------------------
    async def get_meta(self, key: str) -> str | None:
        row = await self._read(lambda c: c.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone())
        return row[0] if row else None

    async def set_meta(self, key: str, value: str) -> None:
        await self._write(lambda c: c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value)))

    async def add_invites(self, code_hashes: list[bytes], now: int) -> None:
        await self._write(lambda c: c.executemany("INSERT INTO invites VALUES (?, ?, NULL)", [(h, now) for h in code_hashes]))

    async def open_invites(self) -> int:
        return await self._read(lambda c: c.execute("SELECT count(*) FROM invites WHERE used IS NULL").fetchone()[0])

    async def load_nonces(self, now: int) -> list[Nonce]:
        rows = await self._read(lambda c: c.execute("SELECT nonce, expires FROM nonces WHERE expires >= ?", (now,)).fetchall())
        return [Nonce(n, e) for n, e in rows]

    async def prune_nonces(self, now: int) -> int:
        return await self._write(lambda c: c.execute("DELETE FROM nonces WHERE expires < ?", (now,)).rowcount)

    # -- helpers run inside a transaction --------------------------------------------------
    @staticmethod
    def _use_nonce(c: sqlite3.Connection, nonce: Nonce) -> None:
        try:
            c.execute("INSERT INTO nonces VALUES (?, ?)", (nonce.value, nonce.expires))
        except sqlite3.IntegrityError:
            raise Replayed() from None

    @staticmethod
    def _signer_ok(c: sqlite3.Connection, patient: str, device: str | None) -> None:
        if c.execute("SELECT 1 FROM patients WHERE id=?", (patient,)).fetchone() is None:
            raise Unauthorized("unknown or erased account", code="unknown_account")
        if device is not None:
            row = c.execute("SELECT patient_id, revoked FROM devices WHERE id=?", (device,)).fetchone()
            if row is None or row[0] != patient:
                raise Unauthorized("unknown device", code="unknown_key")
            if row[1] is not None:
                raise Unauthorized("this device was revoked", code="revoked_device")

    # -- patients --------------------------------------------------------------------------
    async def register_patient(self, new: NewPatient, *, invite_hash: bytes | None, nonce: Nonce, now: int) -> None:
        def op(c: sqlite3.Connection) -> None:
            self._use_nonce(c, nonce)
            if c.execute("SELECT 1 FROM tombstones WHERE root_key=?", (new.root_key,)).fetchone():
                raise Gone("this account was erased; register with new keys", code="erased")
            if c.execute("SELECT 1 FROM patients WHERE root_key=?", (new.root_key,)).fetchone():
                raise Conflict("this patient is already registered", code="already_registered")
            if c.execute("SELECT 1 FROM devices WHERE sign_key=?", (new.device_sign_key,)).fetchone():
                raise Conflict("this device key is already registered", code="already_registered")
            if c.execute("SELECT 1 FROM recovery WHERE auth_key=?", (new.recovery.auth_key,)).fetchone():
                raise Conflict("this recovery key is already registered", code="already_registered")
            if invite_hash is not None:
                used = c.execute("UPDATE invites SET used=? WHERE code_hash=? AND used IS NULL", (now, invite_hash))
                if used.rowcount != 1:
                    raise Forbidden("unknown or already used invitation code", code="bad_invite")
            c.execute("INSERT INTO patients (id, root_key, created) VALUES (?, ?, ?)", (new.patient, new.root_key, now))
            c.execute("INSERT INTO devices (id, patient_id, sign_key, cert, keyring, created) VALUES (?, ?, ?, ?, ?, ?)",
                      (new.device, new.patient, new.device_sign_key, new.device_cert, new.keyring, now))
            self._put_recovery(c, new.patient, new.recovery)

        await self._write(op)

    async def auth_key(self, key: bytes) -> AuthKey | None:
        def op(c: sqlite3.Connection) -> AuthKey | None:
            row = c.execute("SELECT patient_id, id FROM devices WHERE sign_key=?", (key,)).fetchone()
            if row:
                return AuthKey(key, "device", row[0], row[1])
            row = c.execute("SELECT patient_id FROM recovery WHERE auth_key=?", (key,)).fetchone()
            return AuthKey(key, "recovery", row[0], None) if row else None

        return await self._read(op)

    async def account(self, patient: str) -> Account | None:
        row = await self._read(lambda c: c.execute(
            "SELECT id, root_key, created, counter, records, bytes FROM patients WHERE id=?", (patient,)).fetchone())
        return Account(*row) if row else None

    async def devices(self, patient: str) -> list[Device]:
        rows = await self._read(lambda c: c.execute(
            "SELECT id, patient_id, cert, keyring, created, revoked, revocation FROM devices WHERE patient_id=? "
            "ORDER BY created, id", (patient,)).fetchall())
        return [Device(*r) for r in rows]

    async def enrol_device(self, patient: str, *, device: str, sign_key: bytes, cert: bytes, keyring: bytes,
                           nonce: Nonce, now: int) -> None:
        def op(c: sqlite3.Connection) -> None:
            self._use_nonce(c, nonce)
            self._signer_ok(c, patient, None)
            if c.execute("SELECT 1 FROM devices WHERE sign_key=? OR id=?", (sign_key, device)).fetchone():
                raise Conflict("this device is already enrolled", code="already_registered")
            c.execute("INSERT INTO devices (id, patient_id, sign_key, cert, keyring, created) VALUES (?, ?, ?, ?, ?, ?)",
                      (device, patient, sign_key, cert, keyring, now))

        await self._write(op)

    async def revoke_device(self, patient: str, *, signer: str | None, device: str, revocation: bytes,
                            keyrings: dict[str, bytes], recovery_keyring: bytes, nonce: Nonce, now: int) -> None:
        def op(c: sqlite3.Connection) -> None:
            self._use_nonce(c, nonce)
            self._signer_ok(c, patient, signer)
            rows = c.execute("SELECT id, revoked FROM devices WHERE patient_id=?", (patient,)).fetchall()
            active = {r[0] for r in rows if r[1] is None}
            if device not in active:
                raise Conflict("no such active device", code="unknown_device")
            remaining = active - {device}
            if set(keyrings) != remaining:
                raise Conflict("the rotated keyring must be sealed to exactly the remaining devices", code="keyring_mismatch")
            c.execute("UPDATE devices SET revoked=?, revocation=? WHERE id=?", (now, revocation, device))
            c.executemany("UPDATE devices SET keyring=? WHERE id=?", [(k, d) for d, k in keyrings.items()])
            c.execute("UPDATE recovery SET keyring=? WHERE patient_id=?", (recovery_keyring, patient))

        await self._write(op)

    @staticmethod
    def _put_recovery(c: sqlite3.Connection, patient: str, recovery: Recovery) -> None:
        other = c.execute("SELECT patient_id FROM recovery WHERE auth_key=?", (recovery.auth_key,)).fetchone()
        if other and other[0] != patient:
            raise Conflict("this recovery key is in use", code="already_registered")
        c.execute("INSERT OR REPLACE INTO recovery VALUES (?, ?, ?, ?, ?)",
                  (patient, recovery.auth_key, recovery.statement, recovery.root_bundle, recovery.keyring))

    async def set_recovery(self, patient: str, *, signer: str, recovery: Recovery, nonce: Nonce) -> None:
        def op(c: sqlite3.Connection) -> None:
            self._use_nonce(c, nonce)
            self._signer_ok(c, patient, signer)
            self._put_recovery(c, patient, recovery)

        await self._write(op)

    async def recovery(self, patient: str) -> Recovery | None:
        row = await self._read(lambda c: c.execute(
            "SELECT auth_key, statement, root_bundle, keyring FROM recovery WHERE patient_id=?", (patient,)).fetchone())
        return Recovery(*row) if row else None

    async def recovery_by_key(self, auth_key: bytes) -> tuple[str, bytes, Recovery] | None:
        row = await self._read(lambda c: c.execute(
            "SELECT r.patient_id, p.root_key, r.auth_key, r.statement, r.root_bundle, r.keyring "
            "FROM recovery r JOIN patients p ON p.id = r.patient_id WHERE r.auth_key=?", (auth_key,)).fetchone())
        return (row[0], row[1], Recovery(*row[2:])) if row else None

    async def check_signer(self, patient: str, device: str | None) -> None:
        await self._read(self._signer_ok, patient, device)

    # -- vault -----------------------------------------------------------------------------
    async def commit(self, patient: str, *, signer: str, counter: int, manifest: bytes,
                     puts: list[StoredRecord], deletes: list[tuple[str, int]], quota: Quota,
                     nonce: Nonce) -> int:
        def op(c: sqlite3.Connection) -> int:
            self._use_nonce(c, nonce)
            self._signer_ok(c, patient, signer)
            stored, records, size = c.execute(
                "SELECT counter, records, bytes FROM patients WHERE id=?", (patient,)).fetchone()
            if counter != stored + 1:
                raise Conflict(f"manifest counter {counter} does not follow {stored}; sync and retry",
                               code="stale_manifest")
            for put in puts:
                row = c.execute("SELECT version, length(blob) FROM records WHERE patient_id=? AND id=?",
                                (patient, put.id)).fetchone()
                expected = 1 if row is None else row[0] + 1
                if put.version != expected:
                    raise Conflict(f"record version {put.version} is not {expected}", code="stale_record")
                if row is None:
                    records += 1
                else:
                    size -= row[1]
                size += len(put.blob)
            for rid, version in deletes:
                row = c.execute("SELECT version, length(blob) FROM records WHERE patient_id=? AND id=?",
                                (patient, rid)).fetchone()
                if row is None or row[0] != version:
                    raise Conflict("deleted record is missing or at another version", code="stale_record")
                records -= 1
                size -= row[1]
            if records > quota.max_records or size > quota.max_bytes:
                raise QuotaExceeded(f"vault quota exceeded ({quota.max_records} records, {quota.max_bytes} bytes)")
            c.executemany("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?)",
                          [(patient, p.id, p.version, p.blob) for p in puts])
            c.executemany("DELETE FROM records WHERE patient_id=? AND id=?", [(patient, rid) for rid, _ in deletes])
            c.execute("UPDATE patients SET counter=?, manifest=?, records=?, bytes=? WHERE id=?",
                      (counter, manifest, records, size, patient))
            return counter

        return await self._write(op)

    async def vault(self, patient: str, device: str | None) -> Vault:
        def op(c: sqlite3.Connection) -> Vault:
            self._signer_ok(c, patient, device)
            manifest = c.execute("SELECT manifest FROM patients WHERE id=?", (patient,)).fetchone()[0]
            rows = c.execute("SELECT id, version, blob FROM records WHERE patient_id=? ORDER BY id", (patient,)).fetchall()
            return Vault(manifest, tuple(StoredRecord(*r) for r in rows))

        return await self._read(op)

    async def erase_patient(self, patient: str, *, signer: str, tombstone: bytes, nonce: Nonce, now: int) -> None:
        def op(c: sqlite3.Connection) -> object:
            self._use_nonce(c, nonce)
            self._signer_ok(c, patient, signer)
            (root_key,) = c.execute("SELECT root_key FROM patients WHERE id=?", (patient,)).fetchone()
            for table in ("records", "recovery", "devices"):
                c.execute(f"DELETE FROM {table} WHERE patient_id=?", (patient,))
            c.execute("DELETE FROM patients WHERE id=?", (patient,))
            c.execute("INSERT INTO tombstones VALUES (?, ?, ?, ?)", (patient, root_key, tombstone, now))
            return _CHECKPOINT

        await self._write(op)

    async def tombstone(self, patient: str) -> bytes | None:
        row = await self._read(lambda c: c.execute("SELECT tombstone FROM tombstones WHERE patient_id=?", (patient,)).fetchone())
        return row[0] if row else None


def _settle(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
