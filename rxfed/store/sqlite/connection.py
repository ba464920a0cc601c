"""The SQLite backend's row-level connection: :class:`rxfed.store.sql.SQLConnection` over
one :mod:`sqlite3` connection, whose primitives complete without suspending.

Because no primitive suspends, an operation's coroutine runs to its end at its first
``send(None)`` (:func:`run_op`): the group-commit engine runs operations inline on the event
loop or on its writer thread, inside the batch's transaction, as plain function calls.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs

from rxfed.store.sql import SQLConnection


@attrs.frozen
class Checkpoint:
    """An operation's result, with a request to checkpoint the WAL (TRUNCATE) after the
    commit, so deleted content leaves the WAL file too (erasure, revoked signals)."""

    result: Any = None


class SQLiteConnection(SQLConnection):
    unique_violation = sqlite3.IntegrityError

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.scrubbed = False

    async def _one(self, sql: str, args: Sequence = ()) -> Sequence | None:
        return self.conn.execute(sql, args).fetchone()

    async def _all(self, sql: str, args: Sequence = ()) -> list[Sequence]:
        return self.conn.execute(sql, args).fetchall()

    async def _run(self, sql: str, args: Sequence = ()) -> int:
        return self.conn.execute(sql, args).rowcount

    async def _many(self, sql: str, rows: list[Sequence]) -> None:
        if len(rows) == 1:  # a record write's one row: execute costs less than executemany
            self.conn.execute(sql, rows[0])
        elif rows:
            self.conn.executemany(sql, rows)

    def scrub(self) -> None:
        self.scrubbed = True


def run_op(conn: sqlite3.Connection, op: Callable[..., Awaitable[Any]], args: tuple) -> Any:
    """Run the operation ``op(connection, *args)`` to its end on ``conn``, in the caller's
    transaction; its result, as a :class:`Checkpoint` when it deleted content."""
    c = SQLiteConnection(conn)
    coro = op(c, *args)
    try:
        coro.send(None)
    except StopIteration as done:
        return Checkpoint(done.value) if c.scrubbed else done.value
    coro.close()
    raise RuntimeError(f"the store operation {getattr(op, '__name__', op)!r} waited for something on SQLite")
