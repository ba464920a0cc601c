"""Built-in plugin: the embedded SQLite storage backend (the default)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rxfed import hookimpl
from rxfed.plugins import StorageBackend
from rxfed.store.sqlite import SQLiteStore


def open_sqlite(data_dir: Path, options: dict[str, Any]) -> SQLiteStore:
    return SQLiteStore(Path(data_dir) / options.get("path", "rxfed.db"), synchronous=options.get("synchronous", "FULL"))


@hookimpl
def rxfed_storage_backends():
    return [StorageBackend("sqlite", "embedded SQLite in WAL mode, group commit, fsync on every commit", open_sqlite)]
