"""The PostgreSQL backend: the shared operations in real transactions, through asyncpg.

Each write is one ``REPEATABLE READ`` transaction (snapshot isolation) in which the
account's row is locked (``FOR UPDATE``) by the first read of any write about a patient.
Every other operation writes the rows whose values it decided on (a peer's sequence
numbers, a token's state, a member's status, a community's seq), so PostgreSQL's
first-updater-wins makes two concurrent ones collide; unique keys (nonces, transaction and
token ids, record ids, event numbers, an outbound transaction's sequence number) catch the
rest. A transaction PostgreSQL aborts for a collision (serialisation failure, deadlock, a
unique key another writer took since this one's snapshot) runs again from the start: an operation is a function of its arguments and the database, so
concurrent writers (requests of one process, or several node workers) end as if they ran
one after the other, as they do on SQLite. ``SERIALIZABLE`` would give that without the
reasoning, but its predicate locks on index pages made one write in four between
*different* patients fail and run again. ``synchronous_commit=on``: a write returns after
its commit is flushed to the server's WAL. Reads run in a read-only ``REPEATABLE READ``
transaction, so a read of several rows sees one snapshot.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from rxfed.errors import Conflict, RxfedError, Unavailable
from rxfed.store import Backend, SchemaOutdated, SchemaTooNew, safe_dsn
from rxfed.store.postgresql import schema
from rxfed.store.postgresql.connection import PostgreSQLConnection

log = logging.getLogger("rxfed.store")

#: Times a write runs before the caller hears the store is busy.
ATTEMPTS = 12
_RETRY = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)
#: The server or the connection failed: the caller gets 503 (the pool replaces the connection).
_FAILED = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


def _without_secrets(text: str, dsn: str) -> str:
    """``text`` (a library's message about ``dsn``) with the URL's passwords masked."""
    from urllib.parse import parse_qsl, unquote, urlsplit

    secrets = set()
    try:
        parts = urlsplit(dsn)
        authority = parts.netloc.rpartition("@")[0]
        if ":" in authority:
            secrets.add(authority.partition(":")[2])
        secrets.update(v for k, v in parse_qsl(parts.query) if k.lower() in ("password", "sslpassword"))
    except ValueError:
        return "(a message about an unreadable URL)"
    for secret in sorted({*secrets, *map(unquote, secrets)} - {""}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A connection going back to the pool keeps its session as it is. asyncpg's default
    sends ``RESET ALL``, ``UNLISTEN *``, ``CLOSE ALL`` and an advisory-lock release after
    every use: a round trip per operation for state this backend never leaves behind (no
    session settings, no LISTEN, no cursors or session locks on pooled connections; an open
    transaction is still rolled back by the pool before this runs)."""


class StoreUnreachable(OSError):
    """The database server cannot be reached, or refuses this rxfed's login."""


class PostgreSQLBackend(Backend):
    name = "postgresql"

    def __init__(self, dsn: str, *, min_connections: int = 1, max_connections: int = 10, migrate: bool = False):
        if not dsn.startswith(("postgresql://", "postgres://")):
            raise ValueError("the PostgreSQL DSN must be a postgresql:// URL")
        self.dsn = dsn
        self.migrate = migrate
        self.min_connections, self.max_connections = min_connections, max_connections
        self._pool: asyncpg.Pool | None = None
        self.stats = {"retries": 0, "busy": 0}
        #: (since, error) while writes fail because the server or its connection does, the
        #: failed writes since then, and when a write last ended (see :meth:`write_health`).
        self._write_failure: tuple[int, str] | None = None
        self._failed_writes = 0
        self._write_checked = 0.0
        #: The last writes' times from taking a connection to their COMMIT's answer (seconds).
        self._commit_times: collections.deque[float] = collections.deque(maxlen=64)

    def __repr__(self) -> str:
        return f"PostgreSQLBackend({safe_dsn(self.dsn)!r})"

    def _settings(self) -> dict[str, str]:
        return {"synchronous_commit": "on", "application_name": "rxfed"}

    async def _connect(self) -> asyncpg.Connection:
        try:
            return await asyncpg.connect(self.dsn, server_settings=self._settings(), timeout=10)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnreachable(f"cannot reach PostgreSQL at {safe_dsn(self.dsn)}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        except (ValueError, TypeError) as exc:  # asyncpg could not read the URL (a port that is no number, say)
            raise StoreUnreachable(f"the PostgreSQL URL {safe_dsn(self.dsn)} cannot be used: "
                                   f"{_without_secrets(str(exc).splitlines()[0] if str(exc) else '', self.dsn)}"
                                   ) from None

    async def open(self) -> None:
        conn = await self._connect()
        try:
            await schema.migrate(conn, upgrade=self.migrate)
        finally:
            await conn.close()
        try:
            self._pool = await asyncpg.create_pool(self.dsn, min_size=self.min_connections,
                                                   max_size=self.max_connections, server_settings=self._settings(),
                                                   timeout=10, reset=_keep_session)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError) as exc:
            raise StoreUnreachable(f"cannot reach PostgreSQL at {safe_dsn(self.dsn)}: {exc}") from None

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    def schema(self) -> tuple[int | None, int]:
        """(the stored schema version, None when no rxfed schema is there yet; the code's)."""
        async def read() -> int | None:
            conn = await self._connect()
            try:
                return await schema.stored_version(conn) or None
            finally:
                await conn.close()

        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # callable from a running loop too
            return pool.submit(asyncio.run, read()).result(), len(schema.MIGRATIONS)

    def _pool_or_fail(self) -> asyncpg.Pool:
        if self._pool is None:
            raise Unavailable("the store is closed")
        return self._pool

    async def read(self, op: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        try:
            async with self._pool_or_fail().acquire() as conn:
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    return await op(PostgreSQLConnection(conn), *args)
        except RxfedError:
            raise
        except _FAILED as exc:
            log.error("store read failed: %s: %s", type(exc).__name__, exc)
            raise Unavailable("the store could not be read; try again") from None

    def write_health(self) -> dict:
        """As the SQLite engine's: ``writable`` (the last write that reached the server did
        not fail for the server's or the connection's sake), and while failing ``since``,
        ``error``, ``failed_batches`` (failed writes); ``checked``: when a write last ended."""
        failure = self._write_failure
        if failure is None:
            return {"writable": True, "checked": self._write_checked}
        return {"writable": False, "since": failure[0], "error": failure[1], "failed_batches": self._failed_writes,
                "checked": self._write_checked}

    def commit_status(self) -> dict:
        """For ``rxfed node status``: the pool's connections and how commits go."""
        pool = self._pool
        times = sorted(self._commit_times)
        return {"backend": "postgresql", "mode": "connection pool",
                "commit_us": round(times[len(times) // 2] * 1e6) if times else 0,
                "connections": pool.get_size() if pool else 0, "idle": pool.get_idle_size() if pool else 0,
                "max_connections": self.max_connections, **self.stats}

    def _wrote(self, started: float) -> None:
        now = time.time()
        self._commit_times.append(time.perf_counter() - started)
        self._write_checked = now
        if self._write_failure is not None:
            log.info("store writes succeed again")
            self._write_failure = None

    def _write_failed(self, exc: BaseException) -> None:
        now = time.time()
        self._write_checked = now
        if self._write_failure is None:
            self._write_failure = (int(now), f"{type(exc).__name__}: {_without_secrets(str(exc), self.dsn)}")
            self._failed_writes = 0
        self._failed_writes += 1

    async def write(self, op: Callable[..., Awaitable[Any]], *args: Any, heavy: bool = False) -> Any:
        for attempt in range(ATTEMPTS):
            try:
                started = time.perf_counter()
                async with self._pool_or_fail().acquire() as conn:
                    async with conn.transaction(isolation="repeatable_read"):
                        result = await op(PostgreSQLConnection(conn, write=True), *args)
                self._wrote(started)
                return result
            except _RETRY:
                self.stats["retries"] += 1
                await asyncio.sleep(random.uniform(0, 0.001 * 2 ** min(attempt, 7)))
            except asyncpg.UniqueViolationError:
                # Two writers made the same row at once from one snapshot (the next entry of
                # an audit chain, say): run again, and the operation sees the other's row.
                if attempt == ATTEMPTS - 1:
                    raise Conflict("that already exists", code="already_exists") from None
                self.stats["retries"] += 1
                await asyncio.sleep(random.uniform(0, 0.001 * 2 ** min(attempt, 7)))
            except RxfedError:
                raise
            except _FAILED as exc:
                self._write_failed(exc)
                log.error("store write failed: %s: %s", type(exc).__name__, exc)
                raise Unavailable("the store could not save this change; try again") from None
        self.stats["busy"] += 1
        raise Unavailable("the store is busy; try again")


__all__ = ["PostgreSQLBackend", "StoreUnreachable", "SchemaOutdated", "SchemaTooNew", "safe_dsn"]
