"""Built-in plugin: the embedded SQLite storage backend (the default)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rxfed import StorageBackend, hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from rxfed.store.operations import Store


def open_sqlite(data_dir: Path, options: dict[str, Any]) -> Store:
    # Imported when a node opens its store, not when a patient's device loads the plugins
    # for their client hooks (the store is of no use there).
    from rxfed.store.operations import Store
    from rxfed.store.sqlite import SQLiteBackend

    return Store(SQLiteBackend(Path(data_dir) / options.get("path", "rxfed.db"),
                               synchronous=options.get("synchronous", "FULL")))


@hookimpl
def rxfed_storage_backends():
    return [StorageBackend("sqlite", "embedded SQLite in WAL mode, group commit, fsync on every commit", open_sqlite)]
