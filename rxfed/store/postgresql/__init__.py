"""The PostgreSQL backend (asyncpg): several node workers, on one machine or several, share
one database. Installed with the ``postgresql`` extra, chosen by ``[storage] backend =
"postgresql"`` and ``dsn`` (``rxfed node init DATA_DIR --db postgresql://...``).

* :mod:`rxfed.store.postgresql.schema`: versioned migrations;
* :mod:`rxfed.store.postgresql.backend`: :class:`PostgreSQLBackend`, transactions;
* :mod:`rxfed.store.postgresql.connection`: the row-level connection the operations use.
"""
from rxfed.store.postgresql.backend import PostgreSQLBackend, StoreUnreachable, safe_dsn
from rxfed.store.postgresql.schema import MIGRATIONS

__all__ = ["PostgreSQLBackend", "StoreUnreachable", "MIGRATIONS", "safe_dsn"]
