"""SQLite store: WAL mode, group commit, one reader thread.

Durability: ``synchronous=FULL`` makes every COMMIT fsync the WAL before a reply is sent.
To stay fast under concurrency, the operations that arrive together run in one transaction
and share one COMMIT: one fsync for many requests. A batch runs first without savepoints;
if an operation fails, it runs again with one SAVEPOINT per operation, so that one rolls
back alone. Where a batch runs (inline on the event loop, or on the writer thread) is
explained at ``_write_loop``.
``secure_delete=ON`` overwrites freed content with zeros; erasures, and deletions of
signals whose consent was revoked or expired, end with a TRUNCATE checkpoint so the WAL
keeps no old frames either.
"""
from __future__ import annotations

import asyncio
import bisect
import collections
import statistics
import concurrent.futures
import json
import logging
import os
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from rxfed.consent.audit import append as audit_append
from rxfed.consent.tokens import ReceivedState, TokenOutcome, check_share, on_delivery
from rxfed.protocol import account as pa
from rxfed.protocol import community as pcm
from rxfed.protocol.federation import track_sequence
from rxfed.errors import RxfedError, Conflict, Forbidden, Gone, NotFound, Unauthorized, Unavailable
from rxfed.store import (
    Account,
    AccountSummary,
    AuditRow,
    AuthKey,
    CommunityEvent,
    CommunityRow,
    DeadLetter,
    Device,
    GrantRow,
    NewPatient,
    Nonce,
    OperatorEntry,
    OutboundTransaction,
    OutboxSummary,
    Peer,
    Quota,
    ReceivedToken,
    Recovery,
    Replayed,
    SchemaOutdated,
    SchemaTooNew,
    Store,
    StoredRecord,
    TokenRow,
    Vault,
)

log = logging.getLogger("rxfed.store")

#: Consent delivery state: a grant token keeps the sequence number of its last delivery (the
#: patient's devices continue from it) and the recipient's signed acknowledgement; an outbox
#: event may wait until a time (Unix seconds: signal deliveries, each after a random delay).
CONSENT_DELIVERY_STATE = """
    ALTER TABLE grant_tokens ADD COLUMN seq INTEGER;
    ALTER TABLE grant_tokens ADD COLUMN ack BLOB;
    ALTER TABLE outbox ADD COLUMN not_before INTEGER NOT NULL DEFAULT 0
    """

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
    # 2: federation and communities
    """
    CREATE TABLE peers (
        node_id TEXT PRIMARY KEY,
        policy TEXT NOT NULL DEFAULT 'known',
        url TEXT,
        fingerprint TEXT,
        document BLOB,
        fetched INTEGER,
        failures INTEGER NOT NULL DEFAULT 0,
        breaker_until INTEGER,
        last_success INTEGER,
        last_error TEXT,
        out_seq INTEGER NOT NULL DEFAULT 0,
        in_contiguous INTEGER NOT NULL DEFAULT 0,
        in_seen TEXT NOT NULL DEFAULT '[]'
    ) WITHOUT ROWID;
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        destination TEXT NOT NULL,
        event BLOB NOT NULL,
        created INTEGER NOT NULL,
        txn TEXT
    );
    CREATE INDEX outbox_queue ON outbox(destination, txn, id);
    CREATE TABLE outbox_txns (
        txn TEXT PRIMARY KEY,
        destination TEXT NOT NULL,
        seq INTEGER NOT NULL,
        created INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    ) WITHOUT ROWID;
    CREATE INDEX outbox_txns_dest ON outbox_txns(destination, seq);
    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        destination TEXT NOT NULL,
        event BLOB NOT NULL,
        created INTEGER NOT NULL,
        died INTEGER NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE TABLE inbox (
        origin TEXT NOT NULL,
        txn TEXT NOT NULL,
        seq INTEGER NOT NULL,
        reply BLOB NOT NULL,
        received INTEGER NOT NULL,
        PRIMARY KEY (origin, txn)
    ) WITHOUT ROWID;
    CREATE TABLE communities (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        name TEXT NOT NULL,
        condition TEXT,
        approval INTEGER NOT NULL,
        public INTEGER NOT NULL,
        seq INTEGER NOT NULL DEFAULT 0,
        created INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE community_events (
        community_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        event BLOB NOT NULL,
        stamp BLOB NOT NULL,
        PRIMARY KEY (community_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE subscriptions (
        patient_id TEXT NOT NULL,
        community_id TEXT NOT NULL,
        PRIMARY KEY (patient_id, community_id)
    ) WITHOUT ROWID;
    """,
    """
    -- v3: consent grants and tokens (home node), signals received under tokens, audit chains
    CREATE TABLE grants (
        id TEXT PRIMARY KEY,
        patient_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        purpose TEXT NOT NULL,
        recipient TEXT NOT NULL,
        not_after INTEGER NOT NULL,
        created INTEGER NOT NULL,
        statement BLOB NOT NULL,
        revoked INTEGER,
        revocation BLOB
    ) WITHOUT ROWID;
    CREATE INDEX grants_patient ON grants (patient_id);
    CREATE TABLE grant_tokens (
        token TEXT PRIMARY KEY,
        grant_id TEXT NOT NULL,
        node TEXT NOT NULL,
        statement BLOB NOT NULL,
        voucher BLOB NOT NULL,
        revocation BLOB,
        shared INTEGER,
        acked INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX grant_tokens_grant ON grant_tokens (grant_id);
    CREATE TABLE received_tokens (
        token TEXT PRIMARY KEY,
        origin TEXT NOT NULL,
        subject TEXT NOT NULL,
        subject_key BLOB NOT NULL,
        kind TEXT NOT NULL,
        purpose TEXT NOT NULL,
        recipient TEXT NOT NULL,
        not_after INTEGER NOT NULL,
        statement BLOB,
        voucher BLOB,
        received INTEGER NOT NULL,
        revoked INTEGER,
        revocation BLOB,
        delivery TEXT,
        delivery_seq INTEGER
    ) WITHOUT ROWID;
    CREATE TABLE deliveries (
        token TEXT NOT NULL,
        delivery TEXT NOT NULL,
        created INTEGER NOT NULL,
        used INTEGER,
        PRIMARY KEY (token, delivery)
    ) WITHOUT ROWID;
    CREATE TABLE received_signals (
        token TEXT NOT NULL,
        n INTEGER NOT NULL,
        kind TEXT NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (token, n)
    ) WITHOUT ROWID;
    CREATE TABLE audit (
        patient_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        entry BLOB NOT NULL,
        hash BLOB NOT NULL,
        PRIMARY KEY (patient_id, seq)
    ) WITHOUT ROWID
    """,
    # 4: write amplification. Records move to a rowid table with a unique index: in a
    # WITHOUT ROWID table, rows of several hundred bytes made every insert dirty (and often
    # split) a random leaf of the whole table; now the rows append to the table's last
    # pages and only the small index entry lands at random, which halves the bytes written
    # (and fsynced) per record. Nonces are ordered by expiry: a replay repeats the signed
    # creation time and so the expiry, so (expires, nonce) refuses it as the nonce alone
    # did, new nonces land on the last page of one B-tree (the random nonce key dirtied a
    # page of the table and one of its expiry index per request), and pruning is a range
    # of that same key.
    """
    CREATE TABLE records_by_rowid (
        patient_id TEXT NOT NULL REFERENCES patients(id),
        id TEXT NOT NULL,
        version INTEGER NOT NULL,
        blob BLOB NOT NULL
    );
    INSERT INTO records_by_rowid (patient_id, id, version, blob)
        SELECT patient_id, id, version, blob FROM records ORDER BY patient_id, id;
    DROP TABLE records;
    ALTER TABLE records_by_rowid RENAME TO records;
    CREATE UNIQUE INDEX records_id ON records(patient_id, id);
    CREATE TABLE nonces_by_expiry (
        expires INTEGER NOT NULL,
        nonce BLOB NOT NULL,
        PRIMARY KEY (expires, nonce)
    ) WITHOUT ROWID;
    INSERT INTO nonces_by_expiry SELECT expires, nonce FROM nonces;
    DROP TABLE nonces;
    ALTER TABLE nonces_by_expiry RENAME TO nonces
    """,
    # 5: identity epochs. A patient's master key signs one statement per epoch (the first
    # at registration); the epoch's signing key certifies devices and signs manifests.
    # Accounts from before have no chain and must register again.
    """
    CREATE TABLE identity_chain (
        patient_id TEXT NOT NULL REFERENCES patients(id),
        epoch INTEGER NOT NULL,
        statement BLOB NOT NULL,
        PRIMARY KEY (patient_id, epoch)
    ) WITHOUT ROWID;
    ALTER TABLE patients ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0
    """,
    # 6: the keys a node trusts for each peer (pinned or learnt on first contact, and those
    # reached from them by signed rotations), kept so a changed key is noticed
    """
    ALTER TABLE peers ADD COLUMN trusted_keys BLOB
    """,
    # 7: communities keyed by address. A copy of a community is keyed by (id, host), so events
    # another node sends under the same id stay apart. Who may read a copy is kept by member
    # key (community_members), and no table links a patient to a community any more
    # (subscriptions goes). Mirrors keep no name or condition. Communities from before this
    # migration are dropped: their random ids certify no create event, so no client could
    # accept them, and mirrors' copies of their create events name the condition.
    """
    DROP TABLE subscriptions;
    DROP TABLE community_events;
    DROP TABLE communities;
    CREATE TABLE communities (
        id TEXT NOT NULL,
        host TEXT NOT NULL,
        name TEXT NOT NULL,
        condition TEXT,
        approval INTEGER NOT NULL,
        public INTEGER NOT NULL,
        seq INTEGER NOT NULL DEFAULT 0,
        created INTEGER NOT NULL,
        about BLOB,
        PRIMARY KEY (id, host)
    ) WITHOUT ROWID;
    CREATE TABLE community_events (
        community_id TEXT NOT NULL,
        host TEXT NOT NULL,
        seq INTEGER NOT NULL,
        event BLOB NOT NULL,
        stamp BLOB NOT NULL,
        PRIMARY KEY (community_id, host, seq)
    ) WITHOUT ROWID;
    CREATE TABLE community_members (
        community_id TEXT NOT NULL,
        host TEXT NOT NULL,
        member BLOB NOT NULL,
        active INTEGER NOT NULL,
        PRIMARY KEY (community_id, host, member)
    ) WITHOUT ROWID
    """,
    # 8
    CONSENT_DELIVERY_STATE,
    # 9: the inbox is pruned by age (replies kept past the senders' retry horizon only)
    "CREATE INDEX inbox_received ON inbox(received)",
    # 10: operator actions. An account may be suspended (since when, and why, for the
    # operator); the operator log keeps what operators did (``rxfed node log``).
    """
    ALTER TABLE patients ADD COLUMN suspended INTEGER;
    ALTER TABLE patients ADD COLUMN suspended_reason TEXT;
    CREATE INDEX patients_suspended ON patients(suspended) WHERE suspended IS NOT NULL;
    CREATE TABLE operator_log (
        seq INTEGER PRIMARY KEY,
        time INTEGER NOT NULL,
        action TEXT NOT NULL,
        subject TEXT NOT NULL,
        by TEXT NOT NULL,
        detail TEXT NOT NULL
    )
    """,
]

_BATCH_MAX = 512
#: Loop turns a batch may wait for more operations while they keep arriving.
_GATHER_TURNS = 2
#: Inline COMMIT times kept for the operator's average (``rxfed node status``): a median,
#: so the occasional commit that carries a WAL checkpoint does not dominate it.
_WINDOW = 31
#: Upper bounds of the commit-time (seconds) and batch-size histograms (``/metrics``).
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@attrs.frozen
class _Checkpoint:
    """An operation's result, with a request to checkpoint the WAL (TRUNCATE) after the
    commit, so deleted content leaves the WAL file too (erasure, revoked signals)."""

    result: Any = None


def schema_version(path: str | Path) -> int | None:
    """The schema version of the database at ``path`` (0: empty), or None when there is no
    file. Reads the header only: nothing is created, locked for long or migrated."""
    path = Path(path)
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def backup_database(path: str | Path, dest: str | Path, *, meta: dict[str, str] | None = None) -> int:
    """Copy the database at ``path`` into a new file ``dest`` (mode 0600) with SQLite's
    online backup API: one consistent snapshot, taken while the node keeps serving (in WAL
    mode a reader blocks no writer, and the copy is made in one step, so no commit lands
    half in it). ``meta`` rows are written into the copy. Returns the copy's schema version.

    The copy is a single file in rollback-journal mode (no WAL beside it), fsynced."""
    path, dest = Path(path), Path(dest)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        src = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            dst = sqlite3.connect(dest, isolation_level=None)
            try:
                src.backup(dst)
                dst.execute("PRAGMA journal_mode=DELETE")
                version = dst.execute("PRAGMA user_version").fetchone()[0]
                if meta:
                    has_meta = dst.execute("SELECT 1 FROM sqlite_master WHERE name='meta'").fetchone()
                    if has_meta:
                        dst.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(meta.items()))
                integrity = dst.execute("PRAGMA quick_check").fetchone()[0]
                if integrity != "ok":
                    raise sqlite3.DatabaseError(f"the copy fails SQLite's check: {integrity}")
            finally:
                dst.close()
        finally:
            src.close()
        fd = os.open(dest, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return version


def check_database(path: str | Path) -> int:
    """The schema version of the database file at ``path``, after SQLite's ``quick_check``
    (sqlite3.DatabaseError when the file is not a sound database)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        result = conn.execute("PRAGMA quick_check").fetchone()[0]
        if result != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {result}")
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def set_meta_offline(path: str | Path, values: dict[str, str]) -> None:
    """Write ``meta`` rows into a database no node serves (a restored copy, before it
    starts), whatever its schema version, without migrating it."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    try:
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(values.items()))
        conn.execute("COMMIT")
    finally:
        conn.close()


class SQLiteStore(Store):
    name = "sqlite"

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", migrate: bool = False):
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous must be FULL, EXTRA or NORMAL")
        self.path = Path(path)
        self.migrate = migrate
        self.synchronous = synchronous
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        # The write connection, used by one side at a time under _conn_lock: the event loop
        # (inline batches) or the writer thread (everything else).
        self._conn: sqlite3.Connection | None = None
        self._conn_lock = threading.Lock()
        self._busy_timeout_ms = 10_000
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list = []
        self._flush_scheduled = False
        self._gathered = 0  # operations pending at the last turn of the loop
        self._turns = 0
        #: Median of the last _WINDOW inline COMMITs' durations (seconds), for operators.
        self._commit_s = 0.0
        self._last_commit_s = 0.0
        self._recent: collections.deque[float] = collections.deque(maxlen=_WINDOW)
        #: Where the last batch ran (True: its statements on the event loop, its COMMIT on
        #: the committer thread; False: all of it on the writer thread).
        self._inline = True
        #: Counts for operators (``rxfed node status``): batches run inline and on the writer
        #: thread, and how often one ran elsewhere than the one before it.
        self.stats = {"inline_batches": 0, "thread_batches": 0, "switches": 0}
        #: Commit times and batch sizes, counted per bucket (the last count: above every
        #: bound), with their sums; updated under _conn_lock, by whichever side commits.
        self._commit_counts = [0] * (len(COMMIT_BUCKETS) + 1)
        self._batch_counts = [0] * (len(BATCH_BUCKETS) + 1)
        self._commit_sum = 0.0
        self._batch_sum = 0
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        #: The thread that runs an inline batch's COMMIT (and so its fsync) while the event
        #: loop goes on, fed through _commits; _committing is True while one is on its way
        #: (the next inline batch waits for it).
        self._committer: threading.Thread | None = None
        self._commits: queue.SimpleQueue = queue.SimpleQueue()
        self._committing = False
        self._reader_local = threading.local()
        self._closed = True
        self._write_failure: tuple[int, str] | None = None
        self._failed_batches = 0
        self._write_checked = 0.0

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
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _private_database(self.path)
        ready: concurrent.futures.Future = concurrent.futures.Future()
        self._writer = threading.Thread(target=self._write_loop, args=(ready,), name="rxfed-sqlite-writer", daemon=True)
        self._writer.start()
        await asyncio.wrap_future(ready)
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rxfed-sqlite-reader")
        self._committer = threading.Thread(target=self._commit_loop, name="rxfed-sqlite-commit", daemon=True)
        self._committer.start()
        self._loop = asyncio.get_running_loop()
        self._closed = False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        log.info("store closed: %d batches committed on the event loop, %d on the writer thread; commits "
                 "averaged %.2f ms", self.stats["inline_batches"], self.stats["thread_batches"], self._commit_s * 1000)
        self._to_thread(self._pending)  # before the stop mark, so they are written first
        self._pending = []
        self._queue.put(None)
        await asyncio.to_thread(self._writer.join)
        while True:  # only if the writer thread died: nothing may wait forever
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                _fn, _args, future, loop = item
                loop.call_soon_threadsafe(_settle_all, [(future, None, Unavailable("the store is closed"))])
        self._reader.shutdown(wait=True)
        self._commits.put(None)
        await asyncio.to_thread(self._committer.join)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring the schema to the newest: a new, empty database always (creating it is not
        an upgrade), an older one only when ``self.migrate`` says so (``rxfed node migrate``,
        which takes a backup first); otherwise :class:`SchemaOutdated`."""
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        if current > len(MIGRATIONS):
            raise SchemaTooNew(f"database schema {current} is newer than this rxfed ({len(MIGRATIONS)})")
        if 0 < current < len(MIGRATIONS) and not self.migrate:
            raise SchemaOutdated(f"database schema {current} is older than this rxfed ({len(MIGRATIONS)})",
                                 current=current, latest=len(MIGRATIONS))
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
    #
    # Writes are grouped: the operations that arrive together share one transaction and one
    # fsync. A batch runs inline: its statements on the event loop, because a hand-off to a
    # thread per statement would wait for the interpreter lock, held by the busy loop, at
    # every statement; its COMMIT, which waits for the fsync, on the committer thread, while
    # the loop goes on reading and checking requests. The writes that arrive meanwhile
    # gather into the next batch, which starts as soon as the last one is on disk. So the
    # disk's commit latency sets the batch size, not the loop's idle time, and throughput
    # does not hang on how the writers happen to split into batches, nor on a threshold
    # that noise would cross (an earlier design committed on the loop while commits were
    # fast and moved to the thread when they were slow). Callers are answered once their
    # COMMIT returned, never before.
    #
    # A batch runs on the writer thread instead when the thread is already writing, when
    # another process holds the database's write lock (an operator command: the loop never
    # waits for it), when an operation failed and the batch must run again with savepoints,
    # for heavy operations (erasure, pruning, whatever may checkpoint the WAL) and for
    # callers on another event loop. The write connection is used by one thread at a time,
    # under _conn_lock, which an inline batch holds from its BEGIN to its COMMIT.
    #
    # SQLite's automatic checkpoint (every 1000 WAL pages) runs inside the COMMIT that
    # crosses it, so on the committer thread: the loop goes on meanwhile. Measured
    # alternatives did worse in full benchmark runs: with a checkpointer thread running
    # alongside the writes, record writes at concurrency 16 came to 22x and 24x Synapse's
    # rate (27x and 28x without it), and checkpoints on the writer thread every 100 commits
    # raised the p99 of federation delivery from about 6 ms to 43 ms.

    def _write_loop(self, ready: concurrent.futures.Future) -> None:
        try:
            conn = self._connect()
            self._migrate(conn)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        self._busy_timeout_ms = 10_000  # what _connect set on this new connection
        self._conn = conn
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
            with self._conn_lock:
                try:
                    self._set_busy_timeout(conn, 10_000)
                    outcomes = self._transaction(conn, batch, savepoints=False)
                    if outcomes is None:
                        outcomes = self._transaction(conn, batch, savepoints=True)
                    self._ran(False)
                    self._finish(conn, outcomes, inline=False)
                except BaseException as exc:  # noqa: BLE001 - the thread must go on serving
                    self._fail(conn, batch, exc, inline=False)
        with self._conn_lock:
            conn.close()

    def _ran(self, inline: bool) -> None:
        """Count a batch by where it ran (the thread: under _conn_lock)."""
        self.stats["inline_batches" if inline else "thread_batches"] += 1
        if inline != self._inline:
            self._inline = inline
            self.stats["switches"] += 1

    def schema(self) -> tuple[int | None, int]:
        """(the database's schema version, or None when it does not exist yet; this code's)."""
        return schema_version(self.path), len(MIGRATIONS)

    async def backup_to(self, dest: Path, *, meta: dict[str, str] | None = None) -> int:
        """See :func:`backup_database`; the store need not be open (a node may be serving it)."""
        return await asyncio.to_thread(backup_database, self.path, dest, meta=meta)

    def commit_status(self) -> dict:
        """Where the last batch ran and how commits went, for operators: ``mode`` (``event
        loop``: statements on the loop, COMMIT on the committer thread; ``writer thread``),
        ``commit_us`` (the median of the last inline COMMITs), batches by where they ran and
        how often that changed."""
        return {"mode": "event loop" if self._inline else "writer thread", "commit_us": round(self._commit_s * 1e6),
                **self.stats}

    def commit_histograms(self) -> dict[str, tuple[tuple, list[int], float]]:
        """Commit times (seconds) and batch sizes (operations) of every commit so far: the
        bucket bounds, the count in each bucket and above the last, and the sum."""
        return {"commit_seconds": (COMMIT_BUCKETS, list(self._commit_counts), self._commit_sum),
                "batch_operations": (BATCH_BUCKETS, list(self._batch_counts), float(self._batch_sum))}

    def _observe(self, took: float, operations: int) -> None:
        self._commit_counts[bisect.bisect_left(COMMIT_BUCKETS, took)] += 1
        self._batch_counts[bisect.bisect_left(BATCH_BUCKETS, operations)] += 1
        self._commit_sum += took
        self._batch_sum += operations

    def _set_busy_timeout(self, conn: sqlite3.Connection, ms: int) -> None:
        if self._busy_timeout_ms != ms:
            conn.execute(f"PRAGMA busy_timeout={ms}")
            self._busy_timeout_ms = ms

    def _to_thread(self, batch: list) -> None:
        for item in batch:
            self._queue.put(item)

    def _flush(self) -> None:
        """On the event loop: write the operations gathered since the last batch.

        While more keep arriving (the loop is still working through requests that came in
        together), wait up to _GATHER_TURNS more turns of the loop, so that they share the
        transaction and its fsync: a busy node commits fewer, larger batches."""
        if (len(self._pending) > self._gathered and self._turns < _GATHER_TURNS
                and len(self._pending) < _BATCH_MAX):
            self._gathered = len(self._pending)
            self._turns += 1
            self._loop.call_soon(self._flush)
            return
        self._gathered = self._turns = 0
        self._flush_scheduled = False
        if self._committing:  # the last inline batch's COMMIT is on its way: this one follows it
            return
        batch, self._pending = self._pending[:_BATCH_MAX], self._pending[_BATCH_MAX:]
        if self._pending:  # more than one batch arrived at once: the rest goes next turn
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        if not batch:
            return
        if not self._conn_lock.acquire(blocking=False):  # the writer thread is writing
            self._to_thread(batch)
            return
        conn = self._conn
        behind = False
        try:
            self._set_busy_timeout(conn, 0)  # never wait for another process on the loop
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:  # another process is writing: wait off the loop
                outcomes = None
            else:
                outcomes = self._transaction(conn, batch, savepoints=False, begun=True, commit=False)
            if outcomes is not None:
                if conn.in_transaction:
                    behind = True  # the committer thread releases the connection
                    self._commit_behind(conn, outcomes)
                    return
                self._answer(outcomes, inline=True)  # a batch of one that failed: nothing to commit
        except BaseException as exc:  # noqa: BLE001 - every caller gets an answer
            self._fail(conn, batch, exc, inline=True)
            return
        finally:
            if not behind:
                self._conn_lock.release()
        if outcomes is None:  # locked, or an operation failed: savepoints, on the thread
            self._to_thread(batch)

    def _commit_behind(self, conn: sqlite3.Connection, outcomes: list) -> None:
        """An inline batch's COMMIT, on the committer thread (see _write_loop)."""
        self._committing = True
        self._commits.put((conn, outcomes))

    def _commit_loop(self) -> None:
        while (item := self._commits.get()) is not None:
            conn, outcomes = item
            exc = self._commit_on_thread(conn, len(outcomes))
            try:
                self._loop.call_soon_threadsafe(self._committed, outcomes, exc)
            except RuntimeError:  # the loop is closed: nobody waits for these any more
                pass

    def _commit_on_thread(self, conn: sqlite3.Connection, operations: int) -> BaseException | None:
        try:
            started = time.perf_counter()
            conn.execute("COMMIT")
            self._last_commit_s = time.perf_counter() - started
            self._write_worked()
            self._observe(self._last_commit_s, operations)
            self._ran(True)
            self._recent.append(self._last_commit_s)
            self._commit_s = statistics.median(self._recent)
            return None
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, which answers every caller
            self._write_failed(exc)
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            return exc
        finally:
            self._conn_lock.release()

    def _committed(self, outcomes: list, exc: BaseException | None) -> None:
        """On the event loop, once the committer thread is through: answer the batch, and
        start the next one if writes gathered meanwhile."""
        self._committing = False
        if exc is None:
            self._answer(outcomes, inline=True)
        else:
            self._answer([(future, loop, None, Unavailable("the store could not save this change; try again"))
                          for future, loop, _result, _exc in outcomes], inline=True)
        if self._pending and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _finish(self, conn: sqlite3.Connection, outcomes: list, *, inline: bool) -> None:
        if any(isinstance(result, _Checkpoint) for _future, _loop, result, _exc in outcomes):
            self._checkpoint(conn)
        self._answer(outcomes, inline=inline)

    @staticmethod
    def _answer(outcomes: list, *, inline: bool) -> None:
        """Settle each caller's future: directly on the loop, else one hand-off per loop."""
        by_loop: dict[Any, list] = {}
        for future, loop, result, exc in outcomes:
            if isinstance(result, _Checkpoint):
                result = result.result
            by_loop.setdefault(loop, []).append((future, result, exc))
        for loop, settled in by_loop.items():
            if inline:
                _settle_all(settled)
                continue
            try:  # one hand-off to each event loop per batch, not one per operation
                loop.call_soon_threadsafe(_settle_all, settled)
            except RuntimeError:  # that loop is closed: nobody waits for these any more
                pass

    def _transaction(self, conn: sqlite3.Connection, batch: list, *, savepoints: bool,
                     begun: bool = False, commit: bool = True) -> list | None:
        """Run ``batch`` in one transaction (``begun``: already open) and commit it.

        The batch runs first with no savepoints: operations rarely fail (a conflict, a
        replay), and a savepoint costs two more statements per operation. Without
        ``savepoints`` an operation that fails rolls back the whole transaction: None for a
        batch of several (run it again with a savepoint per operation, so that one fails
        alone), its error for a batch of one. Operations are functions of their arguments
        and the database only, so running one twice is safe."""
        outcomes: list[tuple[Any, Any, Any, BaseException | None]] = []
        try:
            if not begun:
                conn.execute("BEGIN IMMEDIATE")
            for fn, args, future, loop in batch:
                if savepoints:
                    conn.execute("SAVEPOINT op")
                try:
                    result = fn(conn, *args)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    if isinstance(exc, sqlite3.OperationalError):  # the disk (full, say), not the operation
                        self._write_failed(exc)
                    elif not isinstance(exc, RxfedError):
                        log.error("store operation failed: %s: %s", type(exc).__name__, exc)
                    if not conn.in_transaction:  # SQLite rolled it all back itself (SQLITE_FULL does)
                        return _failed(batch)
                    if not savepoints:
                        conn.execute("ROLLBACK")
                        if len(batch) > 1:
                            return None
                    else:
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                    if not isinstance(exc, RxfedError):
                        exc = Unavailable("the store could not save this change; try again")
                    outcomes.append((future, loop, None, exc))
                    continue
                if savepoints:
                    conn.execute("RELEASE op")
                outcomes.append((future, loop, result, None))
            if commit and conn.in_transaction:
                started = time.perf_counter()
                conn.execute("COMMIT")
                self._last_commit_s = time.perf_counter() - started
                self._write_worked()
                self._observe(self._last_commit_s, len(batch))
        except sqlite3.Error as exc:
            self._write_failed(exc)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return _failed(batch)
        return outcomes

    def _fail(self, conn: sqlite3.Connection, batch: list, exc: BaseException, *, inline: bool) -> None:
        """The store itself failed (a disk error, say): roll back, answer every caller."""
        self._write_failed(exc)
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        self._answer(_failed(batch), inline=inline)

    # -- write health: what /health reports ----------------------------------------------
    #
    # A full disk fails every write while reads go on working. The node logs when writes
    # start failing and when they work again (not once per failed batch: that would fill
    # the log, itself maybe on the full disk), and /health reports it.

    def _write_failed(self, exc: BaseException) -> None:
        now = time.time()
        self._write_checked = now
        if self._write_failure is None:
            self._write_failure = (int(now), f"{type(exc).__name__}: {exc}")
            self._failed_batches = 0
            log.error("store writes are failing (%s: %s); writes answer 503 until they work again",
                      type(exc).__name__, exc)
        self._failed_batches += 1

    def _write_worked(self) -> None:
        self._write_checked = time.time()
        if self._write_failure is not None:
            log.warning("store writes work again, after %d failed batches since %s", self._failed_batches,
                        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._write_failure[0])))
            self._write_failure = None

    def write_health(self) -> dict:
        """Whether the last write committed: ``writable``, and when failing ``since`` (unix
        time), ``error`` and ``failed_batches``; ``checked``: when a write last ended."""
        failure = self._write_failure
        if failure is None:
            return {"writable": True, "checked": self._write_checked}
        return {"writable": False, "since": failure[0], "error": failure[1], "failed_batches": self._failed_batches,
                "checked": self._write_checked}

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        # A reader holding an old snapshot makes TRUNCATE report busy; readers are short, so
        # wait for them rather than leave erased frames in the WAL.
        for _ in range(200):
            busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return
            time.sleep(0.01)
        log.error("WAL checkpoint after an erasure stayed busy; it will run at the next erasure or restart")

    async def _write(self, fn: Callable[..., Any], *args: Any, heavy: bool = False) -> Any:
        """Run ``fn(conn, *args)`` in the next group commit; ``heavy`` for operations that
        may touch many rows or checkpoint the WAL (they never run on the event loop)."""
        if self._closed:
            raise Unavailable("the store is closed")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        item = (fn, args, future, loop)
        if heavy or loop is not self._loop:
            self._queue.put(item)
        else:
            self._pending.append(item)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush)
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
        return await self._write(lambda c: c.execute("DELETE FROM nonces WHERE expires < ?", (now,)).rowcount,
                                 heavy=True)

    # -- helpers run inside a transaction --------------------------------------------------
    @staticmethod
    def _use_nonce(c: sqlite3.Connection, nonce: Nonce) -> None:
        try:
            c.execute("INSERT INTO nonces (expires, nonce) VALUES (?, ?)", (nonce.expires, nonce.value))
        except sqlite3.IntegrityError:
            raise Replayed() from None

    @staticmethod
    def _signer_ok(c: sqlite3.Connection, patient: str, device: str | None, columns: str = "1") -> tuple:
        """Check that the account exists and that ``device`` (if given) is one of its live
        devices; return ``columns`` of the account's row. One statement: every write runs it."""
        row = c.execute(f"SELECT d.patient_id, d.revoked, {columns} FROM patients p "
                        "LEFT JOIN devices d ON d.id=? WHERE p.id=?", (device, patient)).fetchone()
        if row is None:
            raise Unauthorized("unknown or erased account", code="unknown_account")
        if device is not None:
            if row[0] != patient:
                raise Unauthorized("unknown device", code="unknown_key")
            if row[1] is not None:
                raise Unauthorized("this device was revoked", code="revoked_device")
        return row[2:]

    # -- patients --------------------------------------------------------------------------
    async def register_patient(self, new: NewPatient, *, invite_hash: bytes | None, nonce: Nonce, now: int) -> None:
        def op(c: sqlite3.Connection) -> None:
            self._use_nonce(c, nonce)
            if c.execute("SELECT 1 FROM tombstones WHERE root_key=?", (new.root_key,)).fetchone():
                raise Gone("this account was erased; register with new keys", code="erased")
            if c.execute("SELECT 1 FROM patients WHERE root_key=?", (new.root_key,)).fetchone():
                raise Conflict("this patient is already registered", code="already_registered")
            self._new_device_key(c, new.device, new.device_sign_key)
            if c.execute("SELECT 1 FROM recovery WHERE auth_key=?", (new.recovery.auth_key,)).fetchone():
                raise Conflict("this recovery key is already registered", code="already_registered")
            if invite_hash is not None:
                used = c.execute("UPDATE invites SET used=? WHERE code_hash=? AND used IS NULL", (now, invite_hash))
                if used.rowcount != 1:
                    raise Forbidden("unknown or already used invitation code", code="bad_invite")
            c.execute("INSERT INTO patients (id, root_key, created, epoch) VALUES (?, ?, ?, 1)",
                      (new.patient, new.root_key, now))
            c.execute("INSERT INTO identity_chain VALUES (?, 1, ?)", (new.patient, new.identity))
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
            "SELECT id, root_key, epoch, created, counter, records, bytes FROM patients WHERE id=?",
            (patient,)).fetchone())
        return Account(*row) if row else None

    async def devices(self, patient: str) -> list[Device]:
        rows = await self._read(lambda c: c.execute(
            "SELECT id, patient_id, cert, keyring, created, revoked, revocation FROM devices WHERE patient_id=? "
            "ORDER BY created, id", (patient,)).fetchall())
        return [Device(*r) for r in rows]

    async def identity_chain(self, patient: str) -> list[bytes]:
        rows = await self._read(lambda c: c.execute(
            "SELECT statement FROM identity_chain WHERE patient_id=? ORDER BY epoch", (patient,)).fetchall())
        return [r[0] for r in rows]

    @staticmethod
    def _current_epoch(c: sqlite3.Connection, patient: str, signer: str | None, epoch: int,
                       recovery_key: bytes | None) -> None:
        (current,) = SQLiteStore._signer_ok(c, patient, signer, "p.epoch")
        if signer is None and not c.execute("SELECT 1 FROM recovery WHERE patient_id=? AND auth_key=?",
                                            (patient, recovery_key)).fetchone():
            raise Unauthorized("unknown recovery key", code="unknown_key")
        pa.check_epoch(current, epoch)

    @staticmethod
    def _new_device_key(c: sqlite3.Connection, device: str, sign_key: bytes) -> None:
        """A device key must be new: no device's, and no recovery key (a device holding a
        patient's recovery auth key as its own would stand in its place)."""
        if (c.execute("SELECT 1 FROM devices WHERE sign_key=? OR id=?", (sign_key, device)).fetchone()
                or c.execute("SELECT 1 FROM recovery WHERE auth_key=?", (sign_key,)).fetchone()):
            raise Conflict("this device key is already registered", code="already_registered")

    async def enrol_device(self, patient: str, *, signer: str | None, epoch: int, device: str, sign_key: bytes,
                           cert: bytes, keyring: bytes, nonce: Nonce, now: int, max_devices: int,
                           recovery_key: bytes | None = None) -> None:
        def op(c: sqlite3.Connection) -> None:
            self._use_nonce(c, nonce)
            self._current_epoch(c, patient, signer, epoch, recovery_key)
            self._new_device_key(c, device, sign_key)
            (active,) = c.execute("SELECT count(*) FROM devices WHERE patient_id=? AND revoked IS NULL",
                                  (patient,)).fetchone()
            pa.check_enrolment(active, max_devices)
            c.execute("INSERT INTO devices (id, patient_id, sign_key, cert, keyring, created) VALUES (?, ?, ?, ?, ?, ?)",
                      (device, patient, sign_key, cert, keyring, now))

        await self._write(op)

    async def rotate_identity(self, patient: str, *, signer: str | None, epoch: int, identity: bytes,
                              devices: dict[str, tuple[bytes, bytes]], added: dict[str, tuple[bytes, bytes, bytes]],
                              recovery: Recovery, manifest: tuple[int, bytes], nonce: Nonce, now: int,
                              recovery_key: bytes | None = None) -> list[str]:
        def op(c: sqlite3.Connection) -> list[str]:
            self._use_nonce(c, nonce)
            self._current_epoch(c, patient, signer, epoch - 1, recovery_key)
            active = [r[0] for r in c.execute("SELECT id FROM devices WHERE patient_id=? AND revoked IS NULL",
                                              (patient,))]
            (stored,) = c.execute("SELECT counter FROM patients WHERE id=?", (patient,)).fetchone()
            revoked = pa.plan_rotation(active, devices, signer, counter=stored, manifest_counter=manifest[0])
            c.execute("UPDATE patients SET counter=?, manifest=? WHERE id=?", (manifest[0], manifest[1], patient))
            for device, (sign_key, cert, keyring) in added.items():
                self._new_device_key(c, device, sign_key)
                c.execute("INSERT INTO devices (id, patient_id, sign_key, cert, keyring, created) "
                          "VALUES (?, ?, ?, ?, ?, ?)", (device, patient, sign_key, cert, keyring, now))
            c.execute("UPDATE patients SET epoch=? WHERE id=?", (epoch, patient))
            c.execute("INSERT INTO identity_chain VALUES (?, ?, ?)", (patient, epoch, identity))
            c.executemany("UPDATE devices SET revoked=?, revocation=? WHERE id=?",
                          [(now, identity, d) for d in revoked])
            c.executemany("UPDATE devices SET cert=?, keyring=? WHERE id=?",
                          [(cert, keyring, d) for d, (cert, keyring) in devices.items()])
            self._put_recovery(c, patient, recovery)
            return revoked

        return await self._write(op)

    @staticmethod
    def _put_recovery(c: sqlite3.Connection, patient: str, recovery: Recovery) -> None:
        other = c.execute("SELECT patient_id FROM recovery WHERE auth_key=?", (recovery.auth_key,)).fetchone()
        if (other and other[0] != patient) or c.execute("SELECT 1 FROM devices WHERE sign_key=?",
                                                        (recovery.auth_key,)).fetchone():
            raise Conflict("this recovery key is in use", code="already_registered")
        c.execute("INSERT OR REPLACE INTO recovery VALUES (?, ?, ?, ?, ?)",
                  (patient, recovery.auth_key, recovery.statement, recovery.root_bundle, recovery.keyring))

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
                     nonce: Nonce, epoch: int, base: int | None = None) -> int:
        def op(c: sqlite3.Connection) -> int:
            self._use_nonce(c, nonce)
            totals = pa.VaultTotals(*self._signer_ok(c, patient, signer, "p.counter, p.records, p.bytes, p.epoch"))
            ids = [p.id for p in puts] + [rid for rid, _ in deletes]
            stored = {}
            for chunk in range(0, len(ids), 500):
                part = ids[chunk:chunk + 500]
                stored.update((rid, pa.Stored(version, size)) for rid, version, size in c.execute(
                    f"SELECT id, version, length(blob) FROM records WHERE patient_id=? AND id IN "
                    f"({','.join('?' * len(part))})", (patient, *part)))
            plan = pa.plan_commit(totals, stored, counter=counter, base=base, epoch=epoch,
                                  puts=[(p.id, p.version, len(p.blob)) for p in puts], deletes=deletes,
                                  max_records=quota.max_records, max_bytes=quota.max_bytes)
            blobs = {p.id: p for p in puts}
            c.executemany("INSERT INTO records VALUES (?, ?, ?, ?)",
                          [(patient, rid, blobs[rid].version, blobs[rid].blob) for rid in plan.inserts])
            c.executemany("UPDATE records SET version=?, blob=? WHERE patient_id=? AND id=?",
                          [(blobs[rid].version, blobs[rid].blob, patient, rid) for rid in plan.replaces])
            c.executemany("DELETE FROM records WHERE patient_id=? AND id=?", [(patient, rid) for rid in plan.deletes])
            t = plan.totals
            c.execute("UPDATE patients SET counter=?, manifest=?, records=?, bytes=? WHERE id=?",
                      (t.counter, manifest, t.records, t.bytes, patient))
            return t.counter

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
            return self._erase(c, patient, tombstone, now)

        await self._write(op, heavy=True)

    @staticmethod
    def _erase(c: sqlite3.Connection, patient: str, tombstone: bytes, now: int) -> _Checkpoint:
        (root_key,) = c.execute("SELECT root_key FROM patients WHERE id=?", (patient,)).fetchone()
        for table in ("records", "recovery", "devices", "identity_chain", "audit"):
            c.execute(f"DELETE FROM {table} WHERE patient_id=?", (patient,))
        c.execute("DELETE FROM deliveries WHERE token IN (SELECT token FROM grant_tokens WHERE grant_id IN "
                  "(SELECT id FROM grants WHERE patient_id=?))", (patient,))
        c.execute("DELETE FROM grant_tokens WHERE grant_id IN (SELECT id FROM grants WHERE patient_id=?)",
                  (patient,))
        c.execute("DELETE FROM grants WHERE patient_id=?", (patient,))
        c.execute("DELETE FROM patients WHERE id=?", (patient,))
        c.execute("INSERT INTO tombstones VALUES (?, ?, ?, ?)", (patient, root_key, tombstone, now))
        return _Checkpoint()

    async def tombstone(self, patient: str) -> bytes | None:
        row = await self._read(lambda c: c.execute("SELECT tombstone FROM tombstones WHERE patient_id=?", (patient,)).fetchone())
        return row[0] if row else None


    # -- operator actions --------------------------------------------------------------------
    async def accounts(self, now: int) -> list[AccountSummary]:
        rows = await self._read(lambda c: c.execute(
            "SELECT p.id, p.created, p.records, p.bytes, "
            "(SELECT count(*) FROM devices d WHERE d.patient_id=p.id AND d.revoked IS NULL), "
            "(SELECT count(*) FROM grants g WHERE g.patient_id=p.id AND g.revoked IS NULL AND g.not_after>?), "
            "p.suspended, p.suspended_reason FROM patients p ORDER BY p.created, p.id", (now,)).fetchall())
        return [AccountSummary(*r) for r in rows]

    async def suspended_accounts(self) -> set[str]:
        rows = await self._read(lambda c: c.execute("SELECT id FROM patients WHERE suspended IS NOT NULL").fetchall())
        return {r[0] for r in rows}

    @staticmethod
    def _log(c: sqlite3.Connection, entry: OperatorEntry) -> None:
        c.execute("INSERT INTO operator_log (time, action, subject, by, detail) VALUES (?, ?, ?, ?, ?)",
                  (entry.time, entry.action, entry.subject, entry.by, entry.detail))

    @staticmethod
    def _account_exists(c: sqlite3.Connection, patient: str) -> tuple:
        row = c.execute("SELECT suspended FROM patients WHERE id=?", (patient,)).fetchone()
        if row is None:
            erased = c.execute("SELECT 1 FROM tombstones WHERE patient_id=?", (patient,)).fetchone()
            raise NotFound(f"no account {patient} on this node" + (" (it was erased)" if erased else ""),
                           code="unknown_account")
        return row

    async def set_suspended(self, patient: str, *, since: int | None, reason: str | None,
                            log: OperatorEntry) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            (current,) = self._account_exists(c, patient)
            if (current is None) == (since is None):
                return False
            c.execute("UPDATE patients SET suspended=?, suspended_reason=? WHERE id=?", (since, reason, patient))
            self._log(c, log)
            return True

        return await self._write(op)

    async def operator_erase(self, patient: str, *, tombstone: bytes, now: int, log: OperatorEntry) -> None:
        def op(c: sqlite3.Connection) -> object:
            self._account_exists(c, patient)
            self._log(c, log)
            return self._erase(c, patient, tombstone, now)

        await self._write(op, heavy=True)

    async def remove_community(self, community_id: str, host: str, *, log: OperatorEntry) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            key = (community_id, host)
            if c.execute("DELETE FROM communities WHERE id=? AND host=?", key).rowcount == 0:
                return False
            c.execute("DELETE FROM community_events WHERE community_id=? AND host=?", key)
            c.execute("DELETE FROM community_members WHERE community_id=? AND host=?", key)
            self._log(c, log)
            return True

        return await self._write(op, heavy=True)

    async def log_operator(self, entry: OperatorEntry) -> None:
        await self._write(self._log, entry)

    async def operator_log(self, limit: int = 1000) -> list[OperatorEntry]:
        rows = await self._read(lambda c: c.execute(
            "SELECT time, action, subject, by, detail, seq FROM operator_log ORDER BY seq DESC LIMIT ?",
            (limit,)).fetchall())
        return [OperatorEntry(*r) for r in reversed(rows)]

    # -- federation: peers -----------------------------------------------------------------
    _PEER_COLUMNS = ("node_id, policy, url, fingerprint, document, fetched, failures, breaker_until, "
                     "last_success, last_error, trusted_keys")

    async def peer(self, node_id: str) -> Peer | None:
        row = await self._read(lambda c: c.execute(
            f"SELECT {self._PEER_COLUMNS} FROM peers WHERE node_id=?", (node_id,)).fetchone())
        return Peer(*row) if row else None

    async def peers(self) -> list[Peer]:
        rows = await self._read(lambda c: c.execute(f"SELECT {self._PEER_COLUMNS} FROM peers ORDER BY node_id").fetchall())
        return [Peer(*r) for r in rows]

    @staticmethod
    def _ensure_peer(c: sqlite3.Connection, node_id: str) -> None:
        c.execute("INSERT OR IGNORE INTO peers (node_id) VALUES (?)", (node_id,))

    async def set_peer_policy(self, node_id: str, policy: str, *, url: str | None = None,
                              fingerprint: str | None = None) -> None:
        def op(c: sqlite3.Connection) -> None:
            self._ensure_peer(c, node_id)
            # A new pin replaces whatever trust was learnt before it.
            c.execute("UPDATE peers SET policy=:policy, url=coalesce(:url, url), trusted_keys=CASE "
                      "WHEN :pin IS NOT NULL AND :pin IS NOT fingerprint THEN NULL ELSE trusted_keys END, "
                      "fingerprint=coalesce(:pin, fingerprint), failures=0, breaker_until=NULL WHERE node_id=:node",
                      {"policy": policy, "url": url, "pin": fingerprint, "node": node_id})

        await self._write(op)

    async def save_peer_document(self, node_id: str, document: bytes, fetched: int, trusted_keys: bytes) -> None:
        def op(c: sqlite3.Connection) -> None:
            self._ensure_peer(c, node_id)
            c.execute("UPDATE peers SET document=?, fetched=?, trusted_keys=? WHERE node_id=?",
                      (document, fetched, trusted_keys, node_id))

        await self._write(op)

    async def forget_peer_keys(self, node_id: str) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            return c.execute("UPDATE peers SET trusted_keys=NULL, document=NULL, fetched=NULL WHERE node_id=?",
                             (node_id,)).rowcount == 1

        return await self._write(op)

    async def peer_delivery(self, node_id: str, *, ok: bool, now: int, error: str | None = None,
                            breaker_until: int | None = None) -> int:
        def op(c: sqlite3.Connection) -> int:
            self._ensure_peer(c, node_id)
            if ok:
                c.execute("UPDATE peers SET failures=0, breaker_until=NULL, last_success=? WHERE node_id=?",
                          (now, node_id))
                return 0
            c.execute("UPDATE peers SET failures=failures+1, last_error=?, breaker_until=? WHERE node_id=?",
                      (error, breaker_until, node_id))
            return c.execute("SELECT failures FROM peers WHERE node_id=?", (node_id,)).fetchone()[0]

        return await self._write(op)

    async def peer_recovered(self, node_id: str, *, now: int) -> None:
        def op(c: sqlite3.Connection) -> None:
            c.execute("UPDATE peers SET failures=0, breaker_until=NULL WHERE node_id=?", (node_id,))
            c.execute("UPDATE outbox_txns SET next_attempt=0 WHERE destination=?", (node_id,))

        await self._write(op)

    # -- federation: outbox ----------------------------------------------------------------
    async def enqueue(self, items: list[tuple[str, bytes]], now: int) -> None:
        await self._write(lambda c: self._enqueue(c, items, now))

    @staticmethod
    def _enqueue(c: sqlite3.Connection, items: list[tuple[str, bytes]], now: int, not_before: int = 0) -> None:
        c.executemany("INSERT INTO outbox (destination, event, created, not_before) VALUES (?, ?, ?, ?)",
                      [(dest, event, now, not_before) for dest, event in items])

    async def next_transaction(self, destination: str, *, max_events: int, now: int, dead_after: int,
                               exclude: list[str] = (),
                               may_die: Callable[[bytes], bool] = lambda event: True) -> OutboundTransaction | None:
        def op(c: sqlite3.Connection) -> OutboundTransaction | None:
            cutoff = now - dead_after
            # Whole transactions expire together, so a dead transaction never half-arrives;
            # one holding an event that may not die (part of a log) waits whole.
            for (txn,) in c.execute("SELECT txn FROM outbox_txns WHERE destination=? AND created < ?",
                                    (destination, cutoff)).fetchall():
                if txn in exclude:
                    continue
                if all(may_die(e) for (e,) in c.execute("SELECT event FROM outbox WHERE txn=?", (txn,))):
                    self._bury(c, "txn=?", (txn,), now, "undelivered past the maximum age")
                    c.execute("DELETE FROM outbox_txns WHERE txn=?", (txn,))
            dying = [i for i, e in c.execute("SELECT id, event FROM outbox WHERE destination=? AND txn IS NULL "
                                             "AND created < ?", (destination, cutoff)).fetchall() if may_die(e)]
            for start in range(0, len(dying), 500):
                ids = dying[start:start + 500]
                self._bury(c, f"id IN ({','.join('?' * len(ids))})", tuple(ids), now,
                           "undelivered past the maximum age")
            skip = list(exclude)
            row = c.execute("SELECT txn, seq, attempts, created, next_attempt FROM outbox_txns WHERE destination=? "
                            f"AND txn NOT IN ({','.join('?' * len(skip))}) ORDER BY seq LIMIT 1",
                            (destination, *skip)).fetchone()
            if row is None:
                ids = [r[0] for r in c.execute("SELECT id FROM outbox WHERE destination=? AND txn IS NULL "
                                               "AND not_before <= ? ORDER BY id LIMIT ?",
                                               (destination, now, max_events))]
                if not ids:
                    return None
                self._ensure_peer(c, destination)
                c.execute("UPDATE peers SET out_seq=out_seq+1 WHERE node_id=?", (destination,))
                (seq,) = c.execute("SELECT out_seq FROM peers WHERE node_id=?", (destination,)).fetchone()
                txn = _new_txn_id()
                c.execute("INSERT INTO outbox_txns (txn, destination, seq, created) VALUES (?, ?, ?, ?)",
                          (txn, destination, seq, now))
                c.execute(f"UPDATE outbox SET txn=? WHERE id IN ({','.join('?' * len(ids))})", (txn, *ids))
                row = (txn, seq, 0, now, 0)
            txn, seq, attempts, created, next_attempt = row
            events = tuple(r[0] for r in c.execute("SELECT event FROM outbox WHERE txn=? ORDER BY id", (txn,)))
            return OutboundTransaction(txn, destination, seq, events, attempts, created, next_attempt)

        return await self._write(op, heavy=True)  # it may bury many expired events

    @staticmethod
    def _bury(c: sqlite3.Connection, where: str, args: tuple, now: int, reason: str) -> None:
        c.execute(f"INSERT INTO dead_letters (destination, event, created, died, reason) "
                  f"SELECT destination, event, created, ?, ? FROM outbox WHERE {where} ORDER BY id", (now, reason, *args))
        c.execute(f"DELETE FROM outbox WHERE {where}", args)

    async def transaction_delivered(self, txn_id: str) -> None:
        def op(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM outbox WHERE txn=?", (txn_id,))
            c.execute("DELETE FROM outbox_txns WHERE txn=?", (txn_id,))

        await self._write(op)

    async def transaction_failed(self, txn_id: str, *, error: str, next_attempt_ms: int) -> None:
        await self._write(lambda c: c.execute(
            "UPDATE outbox_txns SET attempts=attempts+1, last_error=?, next_attempt=? WHERE txn=?",
            (error[:500], next_attempt_ms, txn_id)))

    async def reschedule_transactions(self, destination: str, *, next_attempt_ms: int) -> None:
        await self._write(lambda c: c.execute("UPDATE outbox_txns SET next_attempt=? WHERE destination=?",
                                              (next_attempt_ms, destination)))

    async def due_destinations(self) -> list[tuple[str, int | None]]:
        # Every unacknowledged transaction still has its events in the outbox, and it goes
        # before any newer event, so a destination is due when its oldest transaction is
        # (the one sent first; an earlier retry time of a later one would wake the worker
        # for nothing); with none, when its first waiting event may go (0, at once, for most).
        return await self._read(lambda c: c.execute(
            "SELECT o.destination, coalesce((SELECT t.next_attempt FROM outbox_txns t "
            "WHERE t.destination = o.destination ORDER BY t.seq LIMIT 1), min(o.not_before) * 1000) "
            "FROM outbox o GROUP BY o.destination ORDER BY 1").fetchall())

    async def outbox_summary(self) -> list[OutboxSummary]:
        def op(c: sqlite3.Connection) -> list[OutboxSummary]:
            out = []
            dests = [r[0] for r in c.execute(
                "SELECT destination FROM outbox UNION SELECT destination FROM dead_letters ORDER BY 1")]
            for dest in dests:
                pending, in_flight, oldest = c.execute(
                    "SELECT count(*) - count(txn), count(txn), min(created) FROM outbox WHERE destination=?",
                    (dest,)).fetchone()
                (next_attempt,) = c.execute("SELECT min(next_attempt) FROM outbox_txns WHERE destination=?",
                                            (dest,)).fetchone()
                (dead,) = c.execute("SELECT count(*) FROM dead_letters WHERE destination=?", (dest,)).fetchone()
                out.append(OutboxSummary(dest, pending, in_flight, oldest, next_attempt, dead))
            return out

        return await self._read(op)

    async def dead_letters(self, destination: str | None = None) -> list[DeadLetter]:
        rows = await self._read(lambda c: c.execute(
            "SELECT id, destination, event, created, died, reason FROM dead_letters "
            "WHERE ? IS NULL OR destination=? ORDER BY id", (destination, destination)).fetchall())
        return [DeadLetter(*r) for r in rows]

    async def replay_dead_letters(self, now: int, destination: str | None = None) -> int:
        def op(c: sqlite3.Connection) -> int:
            moved = c.execute("INSERT INTO outbox (destination, event, created) SELECT destination, event, ? "
                              "FROM dead_letters WHERE ? IS NULL OR destination=? ORDER BY id",
                              (now, destination, destination)).rowcount
            c.execute("DELETE FROM dead_letters WHERE ? IS NULL OR destination=?", (destination, destination))
            return moved

        return await self._write(op, heavy=True)

    async def prune_inbox(self, before: int) -> int:
        def op(c: sqlite3.Connection) -> int:
            return c.execute("DELETE FROM inbox WHERE received < ?", (before,)).rowcount

        return await self._write(op, heavy=True)

    # -- federation: inbox -----------------------------------------------------------------
    async def inbox_reply(self, origin: str, txn_id: str) -> bytes | None:
        row = await self._read(lambda c: c.execute("SELECT reply FROM inbox WHERE origin=? AND txn=?",
                                                   (origin, txn_id)).fetchone())
        return row[0] if row else None

    async def apply_inbound(self, origin: str, txn_id: str, seq: int, *, make_reply,
                            communities: list[tuple[CommunityRow, list[CommunityEvent]]],
                            outbox: list[tuple[str, bytes]], nonce: Nonce, now: int) -> bytes:
        def op(c: sqlite3.Connection) -> bytes:
            row = c.execute("SELECT reply FROM inbox WHERE origin=? AND txn=?", (origin, txn_id)).fetchone()
            if row:
                return row[0]
            self._use_nonce(c, nonce)
            for community, events in communities:
                self._write_community(c, community, events)
            self._enqueue(c, outbox, now)
            self._ensure_peer(c, origin)
            contiguous, seen_json = c.execute("SELECT in_contiguous, in_seen FROM peers WHERE node_id=?",
                                              (origin,)).fetchone()
            contiguous, seen, missing = track_sequence(contiguous, set(json.loads(seen_json)), seq)
            c.execute("UPDATE peers SET in_contiguous=?, in_seen=? WHERE node_id=?",
                      (contiguous, json.dumps(sorted(seen)[-10_000:]), origin))
            reply = make_reply(missing)
            c.execute("INSERT INTO inbox VALUES (?, ?, ?, ?, ?)", (origin, txn_id, seq, reply, now))
            return reply

        return await self._write(op)

    # -- communities -----------------------------------------------------------------------
    _COMMUNITY_COLUMNS = "id, host, name, condition, approval, public, seq, created, about"

    async def communities(self, *, hosted_by: str | None = None) -> list[CommunityRow]:
        rows = await self._read(lambda c: c.execute(
            f"SELECT {self._COMMUNITY_COLUMNS} FROM communities WHERE ? IS NULL OR host=? ORDER BY created, id",
            (hosted_by, hosted_by)).fetchall())
        return [_community(r) for r in rows]

    async def community(self, community_id: str, host: str) -> CommunityRow | None:
        row = await self._read(lambda c: c.execute(
            f"SELECT {self._COMMUNITY_COLUMNS} FROM communities WHERE id=? AND host=?",
            (community_id, host)).fetchone())
        return _community(row) if row else None

    async def community_events(self, community_id: str, host: str, *, after: int = 0,
                               limit: int = 1000) -> list[CommunityEvent]:
        rows = await self._read(lambda c: c.execute(
            "SELECT seq, event, stamp FROM community_events WHERE community_id=? AND host=? AND seq>? "
            "ORDER BY seq LIMIT ?", (community_id, host, after, limit)).fetchall())
        return [CommunityEvent(*r) for r in rows]

    async def community_reader(self, community_id: str, host: str, member: bytes) -> bool | None:
        row = await self._read(lambda c: c.execute(
            "SELECT active FROM community_members WHERE community_id=? AND host=? AND member=?",
            (community_id, host, member)).fetchone())
        return None if row is None else bool(row[0])

    @staticmethod
    def _write_community(c: sqlite3.Connection, community: CommunityRow, events: list[CommunityEvent]) -> None:
        key = (community.id, community.host)
        # The row is made once: at the host with the create event, on a mirror by its first event.
        c.execute("INSERT INTO communities VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?) ON CONFLICT(id, host) DO NOTHING",
                  (*key, community.name, community.condition, int(community.approval), int(community.public),
                   community.created, community.about))
        c.executemany("INSERT OR IGNORE INTO community_events VALUES (?, ?, ?, ?, ?)",
                      [(*key, e.seq, e.event, e.stamp) for e in events])
        members: dict[bytes, bool] = {}
        for e in events:
            for member, active in e.changes:
                if member not in members:
                    row = c.execute("SELECT active FROM community_members WHERE community_id=? AND host=? "
                                    "AND member=?", (*key, member)).fetchone()
                    members[member] = None if row is None else bool(row[0])
                members[member] = pcm.member_active(members[member], active)
        c.executemany("INSERT OR REPLACE INTO community_members VALUES (?, ?, ?, ?)",
                      [(*key, member, int(active)) for member, active in members.items()])
        # The community's seq is the end of the contiguous run stored: mirrors may see gaps.
        (seq,) = c.execute("SELECT seq FROM communities WHERE id=? AND host=?", key).fetchone()
        while True:
            following = [n for (n,) in c.execute("SELECT seq FROM community_events WHERE community_id=? AND host=? "
                                                 "AND seq>? ORDER BY seq LIMIT 1000", (*key, seq))]
            end = pcm.contiguous_end(seq, following)
            done, seq = end - seq < 1000, end
            if done:
                break
        c.execute("UPDATE communities SET seq=? WHERE id=? AND host=?", (seq, *key))

    async def append_community_events(self, community: CommunityRow, events: list[CommunityEvent], *,
                                      outbox: list[tuple[str, bytes]], now: int, nonce: Nonce | None = None,
                                      patient: str | None = None, signer: str | None = None) -> None:
        def op(c: sqlite3.Connection) -> None:
            if nonce is not None:
                self._use_nonce(c, nonce)
            if signer is not None:
                self._signer_ok(c, patient, signer)
            (current,) = c.execute("SELECT coalesce(max(seq), 0) FROM community_events WHERE community_id=? "
                                   "AND host=?", (community.id, community.host)).fetchone()
            if events:
                pcm.check_append(current, events[0].seq)
            self._write_community(c, community, events)
            self._enqueue(c, outbox, now)

        await self._write(op)

    async def relay(self, destination: str, event: bytes, *, now: int, nonce: Nonce, patient: str,
                    signer: str | None = None) -> None:
        def op(c: sqlite3.Connection) -> None:
            self._use_nonce(c, nonce)
            self._signer_ok(c, patient, signer)
            self._enqueue(c, [(destination, event)], now)

        await self._write(op)

    # -- consent: grants and the audit chain (home node) -----------------------------------
    _GRANT_COLUMNS = "id, patient_id, kind, purpose, recipient, not_after, created, statement, revoked, revocation"
    _TOKEN_COLUMNS = "token, grant_id, node, statement, voucher, revocation, shared, acked, seq, ack"

    @staticmethod
    def _audit(c: sqlite3.Connection, patient: str, entries: list[dict], now: int) -> None:
        """Append ``entries`` to the patient's chain (callers make each logged fact happen once)."""
        head = c.execute("SELECT seq, hash FROM audit WHERE patient_id=? ORDER BY seq DESC LIMIT 1",
                         (patient,)).fetchone()
        c.executemany("INSERT INTO audit VALUES (?, ?, ?, ?)",
                      [(patient, a.seq, a.entry, a.hash) for a in audit_append(head, entries, now)])

    async def add_grant(self, grant: GrantRow, tokens: list[TokenRow], *, signer: str, audit: list[dict],
                        nonce: Nonce, now: int) -> None:
        def op(c: sqlite3.Connection) -> None:
            self._use_nonce(c, nonce)
            self._signer_ok(c, grant.patient, signer)
            try:
                c.execute(f"INSERT INTO grants ({self._GRANT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
                          (grant.id, grant.patient, grant.kind, grant.purpose, grant.recipient, grant.not_after,
                           grant.created, grant.statement))
                c.executemany(f"INSERT INTO grant_tokens ({self._TOKEN_COLUMNS}) "
                              "VALUES (?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, NULL)",
                              [(t.token, grant.id, t.node, t.statement, t.voucher) for t in tokens])
            except sqlite3.IntegrityError:
                raise Conflict("that grant or token id is taken", code="duplicate_grant") from None
            self._audit(c, grant.patient, audit, now)

        await self._write(op)

    async def grants(self, patient: str) -> list[tuple[GrantRow, list[TokenRow]]]:
        def op(c: sqlite3.Connection):
            out = []
            for row in c.execute(f"SELECT {self._GRANT_COLUMNS} FROM grants WHERE patient_id=? "
                                 "ORDER BY created DESC, id", (patient,)).fetchall():
                tokens = [TokenRow(*t) for t in c.execute(
                    f"SELECT {self._TOKEN_COLUMNS} FROM grant_tokens WHERE grant_id=? ORDER BY node", (row[0],))]
                out.append((GrantRow(*row), tokens))
            return out

        return await self._read(op)

    async def grant_of_token(self, token: str) -> tuple[GrantRow, TokenRow] | None:
        def op(c: sqlite3.Connection):
            t = c.execute(f"SELECT {self._TOKEN_COLUMNS} FROM grant_tokens WHERE token=?", (token,)).fetchone()
            if t is None:
                return None
            g = c.execute(f"SELECT {self._GRANT_COLUMNS} FROM grants WHERE id=?", (t[1],)).fetchone()
            return GrantRow(*g), TokenRow(*t)

        return await self._read(op)

    async def mark_shared(self, token: str, *, patient: str, signer: str, delivery: str, seq: int,
                          outbox: list[tuple[str, bytes]], audit: list[dict], nonce: Nonce, now: int,
                          not_before: int = 0) -> None:
        def op(c: sqlite3.Connection) -> None:
            self._use_nonce(c, nonce)
            self._signer_ok(c, patient, signer)
            row = c.execute("SELECT g.revoked, t.seq FROM grant_tokens t JOIN grants g ON g.id = t.grant_id "
                            "WHERE t.token=? AND g.patient_id=?", (token, patient)).fetchone()
            if row is None:
                raise Gone("unknown grant token", code="unknown_grant")
            check_share(revoked=row[0], last_seq=row[1], seq=seq)
            c.execute("UPDATE grant_tokens SET shared=?, seq=? WHERE token=?", (now, seq, token))
            try:
                c.execute("INSERT INTO deliveries VALUES (?, ?, ?, NULL)", (token, delivery, now))
            except sqlite3.IntegrityError:
                raise Conflict("that delivery id was used before", code="duplicate_delivery") from None
            self._enqueue(c, outbox, now, not_before)
            self._audit(c, patient, audit, now)

        await self._write(op)

    async def revoke_grant(self, patient: str, grant_id: str, *, signer: str, revocation: bytes,
                           token_revocations: dict[str, bytes], outbox: list[tuple[str, bytes]],
                           audit: list[dict], nonce: Nonce, now: int,
                           not_before: dict[str, int] | None = None) -> None:
        def op(c: sqlite3.Connection) -> None:
            self._use_nonce(c, nonce)
            self._signer_ok(c, patient, signer)
            updated = c.execute("UPDATE grants SET revoked=?, revocation=? WHERE id=? AND patient_id=? "
                                "AND revoked IS NULL", (now, revocation, grant_id, patient))
            if updated.rowcount != 1:
                raise Gone("no live grant with that id", code="unknown_grant")
            c.executemany("UPDATE grant_tokens SET revocation=? WHERE token=? AND grant_id=?",
                          [(r, t, grant_id) for t, r in token_revocations.items()])
            for item in outbox:
                self._enqueue(c, [item], now, (not_before or {}).get(item[0], 0))
            self._audit(c, patient, audit, now)

        await self._write(op)

    async def token_acknowledged(self, token: str, node: str, *, ack: bytes, audit: list[dict], now: int) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            row = c.execute("SELECT g.patient_id FROM grant_tokens t JOIN grants g ON g.id = t.grant_id "
                            "WHERE t.token=? AND t.node=? AND g.revoked IS NOT NULL AND t.acked IS NULL",
                            (token, node)).fetchone()
            if row is None:
                return False
            c.execute("UPDATE grant_tokens SET acked=?, ack=? WHERE token=?", (now, ack, token))
            self._audit(c, row[0], audit, now)
            return True

        return await self._write(op)

    async def delivery_used(self, token: str, node: str, delivery: str, entries: list[dict], now: int) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            row = c.execute("SELECT g.patient_id FROM deliveries d JOIN grant_tokens t ON t.token = d.token "
                            "JOIN grants g ON g.id = t.grant_id WHERE d.token=? AND d.delivery=? AND t.node=? "
                            "AND d.used IS NULL", (token, delivery, node)).fetchone()
            if row is None:
                return False
            c.execute("UPDATE deliveries SET used=? WHERE token=? AND delivery=?", (now, token, delivery))
            if entries:
                self._audit(c, row[0], entries, now)
            return True

        return await self._write(op)

    async def audit(self, patient: str) -> list[AuditRow]:
        rows = await self._read(lambda c: c.execute(
            "SELECT seq, entry, hash FROM audit WHERE patient_id=? ORDER BY seq", (patient,)).fetchall())
        return [AuditRow(*r) for r in rows]

    # -- consent: signals received ---------------------------------------------------------
    _RECEIVED_COLUMNS = ("token, origin, subject, subject_key, kind, purpose, recipient, not_after, statement, "
                         "voucher, received, revoked, delivery")

    def _insert_received(self, c: sqlite3.Connection, t: ReceivedToken) -> None:
        c.execute(f"INSERT OR IGNORE INTO received_tokens ({self._RECEIVED_COLUMNS}) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
                  (t.token, t.origin, t.subject, t.subject_key, t.kind, t.purpose, t.recipient, t.not_after,
                   t.statement, t.voucher, t.received))
        origin, key = c.execute("SELECT origin, subject_key FROM received_tokens WHERE token=?", (t.token,)).fetchone()
        if origin != t.origin or key != t.subject_key:  # another home's token with the same id
            raise Forbidden("that token id belongs to another patient's grant", code="wrong_origin")

    async def receive_signals(self, token: ReceivedToken, delivery: str, signals: list[tuple[str, bytes]], *,
                              seq: int = 0) -> TokenOutcome:
        def op(c: sqlite3.Connection) -> TokenOutcome:
            self._insert_received(c, token)
            state = ReceivedState(*c.execute("SELECT revoked, delivery, delivery_seq FROM received_tokens "
                                             "WHERE token=?", (token.token,)).fetchone())
            outcome = on_delivery(state, delivery, seq)
            if outcome is not TokenOutcome.NEW:
                return outcome
            c.execute("DELETE FROM received_signals WHERE token=?", (token.token,))
            c.executemany("INSERT INTO received_signals VALUES (?, ?, ?, ?)",
                          [(token.token, n, kind, body) for n, (kind, body) in enumerate(signals)])
            c.execute("UPDATE received_tokens SET delivery=?, delivery_seq=? WHERE token=?",
                      (delivery, seq, token.token))
            return outcome

        return await self._write(op)

    async def revoke_received(self, token: ReceivedToken, revocation: bytes | None, now: int) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            self._insert_received(c, token)
            held = c.execute("DELETE FROM received_signals WHERE token=?", (token.token,)).rowcount
            c.execute("UPDATE received_tokens SET revoked=COALESCE(revoked, ?), revocation=COALESCE(revocation, ?) "
                      "WHERE token=?", (now, revocation, token.token))
            # secure_delete zeroes the rows in the database file; the checkpoint clears the WAL.
            return _Checkpoint(True) if held else False

        return await self._write(op, heavy=True)

    async def received_token(self, token: str) -> ReceivedToken | None:
        row = await self._read(lambda c: c.execute(
            f"SELECT {self._RECEIVED_COLUMNS} FROM received_tokens WHERE token=?", (token,)).fetchone())
        return ReceivedToken(*row) if row else None

    async def received_signals(self, token: str | None = None) -> list[tuple[str, str, bytes]]:
        rows = await self._read(lambda c: c.execute(
            "SELECT token, kind, body FROM received_signals WHERE ? IS NULL OR token=? ORDER BY token, n",
            (token, token)).fetchall())
        return [tuple(r) for r in rows]

    async def expire_received(self, now: int) -> list[ReceivedToken]:
        def op(c: sqlite3.Connection) -> list[ReceivedToken]:
            rows = c.execute(f"SELECT {self._RECEIVED_COLUMNS} FROM received_tokens WHERE not_after <= ? "
                             "AND token IN (SELECT token FROM received_signals)", (now,)).fetchall()
            c.executemany("DELETE FROM received_signals WHERE token=?", [(r[0],) for r in rows])
            # A day after its end a token is forgotten: a delivery under it is refused anyway.
            c.execute("DELETE FROM received_tokens WHERE not_after <= ? AND token NOT IN "
                      "(SELECT token FROM received_signals)", (now - 86400,))
            expired = [ReceivedToken(*r) for r in rows]
            return _Checkpoint(expired) if expired else expired

        return await self._write(op, heavy=True)


def _private_database(path: Path) -> None:
    """The database, its WAL and its shared-memory file readable by their owner only: they
    hold received signals and audit logs. SQLite creates a database 0644 (less the umask)
    and gives the WAL and -shm files the database's mode, so the database is created 0600
    here before SQLite opens it, and looser files left by an older rxfed are tightened."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = file.stat().st_mode
        except FileNotFoundError:
            continue
        if mode & 0o077:
            os.chmod(file, 0o600)
            log.warning("%s was readable by others (mode %o); now 0600", file.name, mode & 0o777)


def _community(row: tuple) -> CommunityRow:
    id_, host, name, condition, approval, public, seq, created, about = row
    return CommunityRow(id_, host, name, condition, bool(approval), bool(public), seq, created, about)


def _new_txn_id() -> str:
    return secrets.token_urlsafe(18)


def _failed(batch: list) -> list:
    """Every operation of ``batch`` answered: the store could not save it."""
    failure = Unavailable("the store could not save this change; try again")
    return [(future, loop, None, failure) for _fn, _args, future, loop in batch]


def _settle_all(settled: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    for future, result, exc in settled:
        if future.done():
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
