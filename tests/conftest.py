"""Shared fixtures: real nodes on loopback, patients with cheap key-file parameters."""

from __future__ import annotations

import itertools

import pytest

from rxfed.client import PatientClient
from rxfed.testing import NodeHarness, start_federation

PASSPHRASE = "correct horse battery staple"
#: Unique marker written into records so storage scans can look for it.
MARKER = "ZQXMARKER"


@pytest.fixture(autouse=True, scope="session")
def _plugin_index(tmp_path_factory):
    """The suite's own plugin index (rxfed.plugin_index), never the user's cache; the
    commands tests run inherit it."""
    import os

    os.environ["RXFED_PLUGIN_INDEX"] = str(tmp_path_factory.mktemp("plugin-index") / "plugins.json")
    yield
    os.environ.pop("RXFED_PLUGIN_INDEX", None)


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
