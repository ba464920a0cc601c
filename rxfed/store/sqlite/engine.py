"""The SQLite backend's engine: WAL mode, group commit, one reader thread.

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
import concurrent.futures
import logging
import queue
import sqlite3
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rxfed.errors import RxfedError, Unavailable
from rxfed.store import Backend
from rxfed.store.sqlite import schema
from rxfed.store.sqlite.connection import Checkpoint as _Checkpoint, run_op
from rxfed.store.sqlite.schema import backup_database, private_database, schema_version

log = logging.getLogger("rxfed.store")

_BATCH_MAX = 512
#: Loop turns a batch may wait for more operations while they keep arriving.
_GATHER_TURNS = 2
#: Inline COMMIT times kept for the operator's average (``rxfed node status``): a median,
#: so the occasional commit that carries a WAL checkpoint does not dominate it.
_WINDOW = 31
#: Upper bounds of the commit-time (seconds) and batch-size histograms (``/metrics``).
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class SQLiteBackend(Backend):
    name = "sqlite"
    ordered_writes = True  # one writer: batches commit in the order their writes were queued

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
        private_database(self.path)
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
            schema.migrate(conn, upgrade=self.migrate)
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
        return schema_version(self.path), len(schema.MIGRATIONS)

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
            self._roll_back(conn, exc)
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
        self._roll_back(conn, exc)
        self._answer(_failed(batch), inline=inline)

    def _roll_back(self, conn: sqlite3.Connection, exc: BaseException) -> None:
        """After the store itself failed: note it (``/health``) and end the transaction."""
        self._write_failed(exc)
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

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

    # -- the Backend interface: operations over the row-level connection ---------------------
    async def read(self, op: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return await self._read(run_op, op, args)

    def write(self, op: Callable[..., Awaitable[Any]], *args: Any, heavy: bool = False) -> Awaitable[Any]:
        return self._write(run_op, op, args, heavy=heavy)  # its coroutine, not one more around it


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
