"""The node as an operator runs it: file modes, signals and logs, a full disk, connection
limits, the systemd unit, trusted CA bundles."""

from __future__ import annotations

import asyncio
import os
import stat
import time

from rxfed.node import admin
from rxfed.node.config import NodeConfig
from rxfed.testing import free_port


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_init_into_an_existing_open_directory_makes_everything_private(tmp_path):
    """The database holds received signals and audit logs: it, its WAL and -shm files are
    0600, and the directory is tightened to 0700 even when it existed 0755."""
    data = tmp_path / "node"
    data.mkdir()
    os.chmod(data, 0o755)
    old = os.umask(0o022)
    try:
        admin.init_node(data, name="private", port=free_port())
    finally:
        os.umask(old)
    assert _mode(data) == 0o700
    config = NodeConfig.load(data)

    async def write_and_look(store):
        await store.add_invites([os.urandom(32)], int(time.time()))
        return {p.name: _mode(p) for p in data.iterdir() if p.name.startswith("rxfed.db")}

    modes = asyncio.run(admin._with_store(config, write_and_look))
    assert set(modes) >= {"rxfed.db", "rxfed.db-wal", "rxfed.db-shm"}
    assert modes == dict.fromkeys(modes, 0o600)
    assert _mode(data / "node-keys.json") == 0o600


def test_a_store_left_readable_by_an_older_version_is_tightened(tmp_path):
    data = tmp_path / "node"
    admin.init_node(data, name="older", port=free_port())
    os.chmod(data / "rxfed.db", 0o644)
    asyncio.run(admin._with_store(NodeConfig.load(data), lambda store: store.get_meta("created")))
    assert _mode(data / "rxfed.db") == 0o600
