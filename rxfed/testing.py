"""Test helpers for rxfed and for plugin authors: real nodes on loopback, in-process.

``NodeHarness`` starts a node's aiohttp application on a free loopback port with exactly
the plugins you name (never whatever happens to be installed), and stops it cleanly.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import attrs
from aiohttp import web

from rxfed.node.app import create_app
from rxfed.node.config import Federation, Limits, NodeConfig, create_node_keys, load_node_keys
from rxfed.plugins import RxfedPlugins

#: Limits for tests: generous rate limits so tests are not throttled unless they mean to be.
TEST_LIMITS = Limits(requests_per_second=10_000, burst=10_000, anonymous_per_minute=60_000, anonymous_burst=10_000)
#: Federation settings for tests: fast retries, no key-refetch delay.
TEST_FEDERATION = Federation(backoff_base=0.05, backoff_max=0.5, breaker_threshold=1000, breaker_cooldown=1.0,
                             request_timeout=2.0, key_refetch=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def builtin_plugins() -> RxfedPlugins:
    """A plugin manager holding only rxfed's built-in plugins, registered by hand."""
    import rxfed_plugins.sqlite_store

    plugins = RxfedPlugins(entry_points=False)
    plugins.register(rxfed_plugins.sqlite_store, "sqlite")
    return plugins


@attrs.define
class NodeHarness:
    """One node serving on 127.0.0.1. ``await start()``, use ``url``, ``await stop()``."""

    data_dir: Path
    name: str = "test-node"
    registration: str = "open"
    limits: Limits = TEST_LIMITS
    federation: Federation = TEST_FEDERATION
    plugins: RxfedPlugins | None = None
    clock: Callable[[], float] = time.time
    port: int = attrs.field(factory=free_port)
    runner: web.AppRunner | None = None
    config: NodeConfig | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> NodeHarness:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config = NodeConfig(data_dir=self.data_dir, name=self.name, public_url=self.url, port=self.port,
                                 registration=self.registration, limits=self.limits, federation=self.federation)
        if not (self.data_dir / "node-keys.json").exists():
            create_node_keys(self.data_dir)
            self.config.save()
        app = create_app(self.config, load_node_keys(self.data_dir), plugins=self.plugins or builtin_plugins(),
                         clock=self.clock)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @property
    def app(self) -> web.Application:
        return self.runner.app

    def app_store(self):
        """The running node's store (for tests and the demo to look at what the node holds)."""
        return self.state.store

    @property
    def node_id(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def state(self):
        from rxfed.node.app import NODE

        return self.runner.app[NODE]

    async def allow(self, *others: NodeHarness) -> None:
        """Allow peers explicitly (the only way to federate over loopback and plain HTTP)."""
        for other in others:
            await self.app_store().set_peer_policy(other.node_id, "allowed", url=other.url)
        await self.state.federation.policy_changed()


async def start_federation(base: Path, *names: str, **kwargs) -> list[NodeHarness]:
    """Nodes on loopback that allow each other: the in-process federation for tests."""
    nodes = [await NodeHarness(base / name, name=name, **kwargs).start() for name in names]
    for node in nodes:
        await node.allow(*(n for n in nodes if n is not node))
    return nodes
