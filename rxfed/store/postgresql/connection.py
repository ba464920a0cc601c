"""The PostgreSQL backend's row-level connection: :class:`rxfed.store.sql.SQLConnection`
over one asyncpg connection, inside the transaction the backend opened.

The shared statements use ``?`` placeholders; each is rewritten once into PostgreSQL's
``$1, $2, ...`` (no statement holds a literal question mark), and asyncpg keeps the
prepared statement per connection.
"""
from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from rxfed.store.sql import SQLConnection

_REWRITTEN: dict[str, str] = {}


def dollar(sql: str) -> str:
    """``sql`` with its ``?`` placeholders numbered as PostgreSQL's ``$n``."""
    out = _REWRITTEN.get(sql)
    if out is None:
        parts = sql.split("?")
        out = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))
        if len(_REWRITTEN) < 10_000:
            _REWRITTEN[sql] = out
    return out


def _count(status: str) -> int:
    """The row count of a command status (``UPDATE 3``, ``INSERT 0 1``)."""
    tail = status.rpartition(" ")[2]
    return int(tail) if tail.isdigit() else 0


class PostgreSQLConnection(SQLConnection):
    unique_violation = asyncpg.UniqueViolationError

    def __init__(self, conn: asyncpg.Connection, *, write: bool = False):
        self.conn = conn
        self.write = write

    async def account_state(self, patient: str, device: str | None):
        """In a write, the account's row is locked until the commit: the writes of one
        patient (their vault counter, device count, audit chain) run one after another."""
        if not self.write:
            return await super().account_state(patient, device)
        from rxfed.store.sql import AccountState

        row = await self._one("SELECT d.patient_id, d.revoked, p.epoch, p.counter, p.records, p.bytes FROM patients p "
                              "LEFT JOIN devices d ON d.id=? WHERE p.id=? FOR UPDATE OF p", (device, patient))
        return AccountState(*row) if row else None

    async def _one(self, sql: str, args: Sequence = ()) -> Sequence | None:
        return await self.conn.fetchrow(dollar(sql), *args)

    async def _all(self, sql: str, args: Sequence = ()) -> list[Sequence]:
        return await self.conn.fetch(dollar(sql), *args)

    async def _run(self, sql: str, args: Sequence = ()) -> int:
        return _count(await self.conn.execute(dollar(sql), *args))

    async def _many(self, sql: str, rows: list[Sequence]) -> None:
        if rows:
            await self.conn.executemany(dollar(sql), rows)
