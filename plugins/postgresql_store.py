"""Built-in plugin: the PostgreSQL storage backend (needs the ``postgresql`` extra, asyncpg).

``[storage] backend = "postgresql"`` with ``dsn = "postgresql://user@host/db"`` (the
password, if any, better in ``~/.pgpass`` or ``PGPASSWORD`` than in rxfed.toml) and,
optionally, ``max_connections`` (10).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rxfed import StorageBackend, hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from rxfed.store.operations import Store


def open_postgresql(data_dir: Path, options: dict[str, Any]) -> Store:
    from rxfed.store.operations import Store

    try:
        from rxfed.store.postgresql import PostgreSQLBackend
    except ImportError:
        raise ValueError("the postgresql backend needs asyncpg: pip install 'rxfed[postgresql]'") from None
    dsn = options.get("dsn")
    if not isinstance(dsn, str) or not dsn:
        raise ValueError("[storage] dsn: the postgresql backend needs a postgresql:// URL")
    max_connections = options.get("max_connections", 10)
    if isinstance(max_connections, bool) or not isinstance(max_connections, int) or not 1 <= max_connections <= 1000:
        raise ValueError("[storage] max_connections must be a whole number from 1 to 1000")
    return Store(PostgreSQLBackend(dsn, max_connections=max_connections))


@hookimpl
def rxfed_storage_backends():
    return [StorageBackend("postgresql", "PostgreSQL through asyncpg: several node workers share one database",
                           open_postgresql)]
