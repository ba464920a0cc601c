"""The embedded SQLite backend (the default): WAL mode, group commit, fsync on every commit.

* :mod:`rxfed.store.sqlite.schema`: the versioned migrations and the file-level tools
  (schema version, online backup, check);
* :mod:`rxfed.store.sqlite.engine`: :class:`SQLiteBackend`, the group-commit engine;
* :mod:`rxfed.store.sqlite.connection`: the row-level connection the operations use.
"""
from rxfed.store import SchemaOutdated, SchemaTooNew
from rxfed.store.sqlite.engine import SQLiteBackend
from rxfed.store.sqlite.schema import (
    CONSENT_DELIVERY_STATE,
    MIGRATIONS,
    backup_database,
    check_database,
    schema_version,
    set_meta_offline,
)

__all__ = ["SQLiteBackend", "MIGRATIONS", "CONSENT_DELIVERY_STATE", "SchemaOutdated", "SchemaTooNew",
           "backup_database", "check_database", "schema_version", "set_meta_offline"]
