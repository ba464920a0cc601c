"""The store contract on every backend: SQLite, and PostgreSQL when RXFED_TEST_PG_DSN
names a server (each test on a fresh database; skipped, with the reason, without it)."""

from __future__ import annotations

import pytest

from contract import StoreContract
from rxfed.store.operations import Store
from rxfed.store.sqlite import SQLiteBackend


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request, tmp_path):
    if request.param == "sqlite":
        backend = SQLiteBackend(tmp_path / "rxfed.db")
    else:
        from rxfed.store.postgresql import PostgreSQLBackend

        databases = request.getfixturevalue("rxfed_pg_databases")
        backend = PostgreSQLBackend(await databases.create())
    s = Store(backend)
    await s.open()
    yield s
    await s.close()


class TestContract(StoreContract):
    pass
