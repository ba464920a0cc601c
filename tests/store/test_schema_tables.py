"""`rxfed node migrate-db` copies every table the SQLite schema has (a table added by a
migration but missing from the copy's list would be left behind silently)."""
from __future__ import annotations

import sqlite3

from rxfed.store.postgresql.port import TABLES
from rxfed.store.sqlite.schema import migrate


def test_migrate_db_copies_every_table_of_the_sqlite_schema():
    conn = sqlite3.connect(":memory:")
    migrate(conn, upgrade=True)
    tables = {name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
    assert len(TABLES) == len(set(TABLES))
    assert tables == set(TABLES)
