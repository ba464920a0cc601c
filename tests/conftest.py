"""Shared fixtures: real nodes on loopback, patients with cheap key-file parameters."""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import tempfile

import pytest

from rxfed.client import PatientClient
from rxfed.testing import NodeHarness, start_federation

# The suite's own plugin index (rxfed.plugin_index), never the user's cache: set before any
# test module is imported, so the commands tests run (with environments copied at import)
# inherit it.
_INDEX_DIR = tempfile.mkdtemp(prefix="rxfed-test-index-")
os.environ["RXFED_PLUGIN_INDEX"] = os.path.join(_INDEX_DIR, "plugins.json")
atexit.register(shutil.rmtree, _INDEX_DIR, True)

PASSPHRASE = "correct horse battery staple"
#: Unique marker written into records so storage scans can look for it.
MARKER = "ZQXMARKER"


@pytest.fixture
async def node(tmp_path):
    harness = NodeHarness(tmp_path / "node")
    await harness.start()
    yield harness
    await harness.stop()


@pytest.fixture
async def pair(tmp_path):
    """Two started nodes, a and b, that allow each other (no pinned keys)."""
    nodes = await start_federation(tmp_path, "a", "b")
    yield nodes
    for n in nodes:
        await n.stop()


@pytest.fixture
async def make_patient(node, tmp_path):
    counter = itertools.count()
    clients = []

    async def make(harness: NodeHarness | None = None, **kwargs):
        harness = harness or node
        profile = tmp_path / f"patient-{next(counter)}"
        client, code = await PatientClient.register(harness.url, profile, PASSPHRASE, kdf="min", **kwargs)
        clients.append(client)
        client.recovery_code = code
        return client

    yield make
    for client in clients:
        await client.close()
