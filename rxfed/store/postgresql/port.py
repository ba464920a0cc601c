"""Copy a SQLite node's rows into an empty PostgreSQL database (``rxfed node migrate-db``).

Both schemas have the same tables and columns (PostgreSQL's migration 1 is SQLite's schema
11, each later one the SQLite migration of the same tables), so every row is copied as it is, table by table, in one PostgreSQL transaction: the
target holds all of the node's data or none of it. The source is read in one SQLite read
transaction, so the copy is one consistent snapshot.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg

from rxfed.store.postgresql.backend import PostgreSQLBackend
from rxfed.store.postgresql.schema import MIGRATIONS
from rxfed.store.sqlite.schema import MIGRATIONS as SQLITE_MIGRATIONS

#: Tables in an order that satisfies the foreign keys (accounts before their rows).
TABLES = ("meta", "invites", "patients", "devices", "recovery", "records", "identity_chain", "nonces", "tombstones",
          "peers", "outbox", "outbox_txns", "dead_letters", "inbox", "communities", "community_events",
          "community_members", "grants", "grant_tokens", "received_tokens", "deliveries", "received_signals", "audit",
          "operator_log", "rate_budgets", "outbox_leases",
          "matching_sessions", "matching_common", "matching_schedule", "domain_blocks", "ban_hashes",
          "forwarded_reports")
#: Columns PostgreSQL numbers itself: after the copy its sequences go on from the highest.
IDENTITIES = {"outbox": "id", "dead_letters": "id", "operator_log": "seq"}


class PortRefused(RuntimeError):
    """The source or the target is not fit for the copy (said in one line)."""


def _sqlite_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


async def copy_sqlite_to_postgresql(path: Path, dsn: str) -> dict[str, int]:
    """Copy every row of the SQLite database at ``path`` into the PostgreSQL database at
    ``dsn`` (created at the newest schema if empty; refused if it holds any row). Returns
    the rows copied per table."""
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        version = source.execute("PRAGMA user_version").fetchone()[0]
        if version != len(SQLITE_MIGRATIONS):
            raise PortRefused(f"the SQLite database is at schema {version}, not this rxfed's "
                              f"({len(SQLITE_MIGRATIONS)}); run 'rxfed node migrate' first")
        backend = PostgreSQLBackend(dsn, max_connections=1)
        await backend.open()  # an empty database gets the schema; another schema is refused
        await backend.close()
        target = await backend._connect()
        try:
            for table in TABLES:
                if await target.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})"):
                    raise PortRefused(f"the PostgreSQL database already holds rows ({table}); give an empty one")
            copied: dict[str, int] = {}
            source.execute("BEGIN")  # one snapshot of the source
            async with target.transaction():
                for table in TABLES:
                    columns = _sqlite_columns(source, table)
                    wanted = [r["column_name"] for r in await target.fetch(
                        "SELECT column_name FROM information_schema.columns WHERE table_name=$1 "
                        "AND table_schema=current_schema()", table)]
                    if sorted(columns) != sorted(wanted):
                        raise PortRefused(f"table {table}: the SQLite columns {sorted(columns)} are not PostgreSQL "
                                          f"schema {len(MIGRATIONS)}'s {sorted(wanted)}")
                    rows = source.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
                    if rows:
                        await target.copy_records_to_table(table, records=rows, columns=columns)
                    copied[table] = len(rows)
                for table, column in IDENTITIES.items():
                    await target.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                                         f"coalesce(max({column}), 0) + 1, false) FROM {table}")
            source.execute("COMMIT")
            return copied
        except asyncpg.PostgresError as exc:
            raise PortRefused(f"PostgreSQL refused the copy: {exc}") from None
        finally:
            await target.close()
    finally:
        source.close()
