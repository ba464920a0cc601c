"""A node served in this process on 127.0.0.1: what ``rxfed demo`` runs three of, and what
the test fixtures of :mod:`rxfed.testing` build on.

A :class:`LocalNode` is a real node (the same application as ``rxfed node run``) with the
plugin manager its caller hands it; it creates its data directory and keys on first start.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import attrs
from aiohttp import web

from rxfed.node.app import create_app
from rxfed.node.http import NODE
from rxfed.node.config import FederationSettings, Limits, MatchingSettings, NodeConfig, create_node_keys, load_node_keys
from rxfed.plugins import RxfedPlugins


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@attrs.define
class LocalNode:
    """One node serving on 127.0.0.1. ``await start()``, use ``url``, ``await stop()``.
    ``plugins`` is required: several nodes in one process must not share plugin state
    unless their caller means them to."""

    data_dir: Path
    plugins: RxfedPlugins
    name: str = "local-node"
    registration: str = "open"
    limits: Limits = attrs.Factory(Limits)
    federation: FederationSettings = attrs.Factory(FederationSettings)
    matching: MatchingSettings = attrs.Factory(MatchingSettings)
    clock: Callable[[], float] = time.time
    #: ``[node] trusted_proxies``: peers whose X-Forwarded-For / Forwarded the node believes.
    trusted_proxies: tuple[str, ...] = ()
    #: ``[node] forwarded_header``: which of the two those proxies write.
    forwarded_header: str = "X-Forwarded-For"
    port: int = attrs.field(factory=free_port)
    #: ``host:port`` for the node's metrics listener, or None for none.
    metrics_listen: str | None = None
    #: The ``[storage]`` section (the embedded SQLite database in ``data_dir`` by default).
    storage: dict | None = None
    runner: web.AppRunner | None = None
    config: NodeConfig | None = None
    #: One of several worker processes of one node (``node run --workers N``), or None.
    worker: int | None = None
    #: The URL in the node's config, when it is not this listener's own (a second worker
    #: of the same node, listening on a port of its own in a test).
    public_url: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self):
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config = NodeConfig(data_dir=self.data_dir, name=self.name, public_url=self.public_url or self.url,
                                 port=self.port,
                                 registration=self.registration, limits=self.limits, federation=self.federation,
                                 matching=self.matching,
                                 trusted_proxies=tuple(self.trusted_proxies), forwarded_header=self.forwarded_header,
                                 metrics_listen=self.metrics_listen, storage=self.storage or {"backend": "sqlite"})
        if not (self.data_dir / "node-keys.json").exists():
            create_node_keys(self.data_dir)
            self.config.save()
        app = create_app(self.config, load_node_keys(self.data_dir), plugins=self.plugins, clock=self.clock,
                         worker=self.worker)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    @property
    def metrics_url(self) -> str | None:
        return f"http://{self.metrics_listen}/metrics" if self.metrics_listen else None

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
        return self.runner.app[NODE]

    async def allow(self, *others: LocalNode) -> None:
        """Allow peers explicitly (the only way to federate over loopback and plain HTTP)."""
        for other in others:
            await self.app_store().set_peer_policy(other.node_id, "allowed", url=other.url)
        await self.state.federation.policy_changed()
