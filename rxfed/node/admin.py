"""Operator actions on a node's data directory: create a node, mint invitations, serve."""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
import time
from pathlib import Path

from aiohttp import web

from rxfed.crypto import b32_code, fingerprint
from rxfed.errors import Conflict
from rxfed.node.app import create_app, invite_hash
from rxfed.node.config import ConfigError, Limits, NodeConfig, create_node_keys, load_node_keys
from rxfed.plugins import RxfedPlugins

ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'


def init_node(data_dir: str | Path, *, name: str, host: str = "127.0.0.1", port: int = 8470,
              public_url: str | None = None, registration: str = "open", limits: Limits | None = None,
              storage: dict | None = None) -> tuple[NodeConfig, str]:
    """Create a node: identity key (0600), config, and an empty migrated store. Returns the
    config and the key's fingerprint."""
    data_dir = Path(data_dir)
    if (data_dir / "rxfed.toml").exists():
        raise Conflict(f"{data_dir} already holds a node", code="node_exists")
    config = NodeConfig(data_dir=data_dir, name=name, public_url=public_url or f"http://{_url_host(host)}:{port}",
                        host=host, port=port, registration=registration, limits=limits or Limits(),
                        storage=storage or {"backend": "sqlite"})
    config.validate()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = create_node_keys(data_dir)
    config.save()
    asyncio.run(_with_store(config, lambda store: store.set_meta("created", str(int(time.time())))))
    return config, fingerprint(key.key.public)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _with_store(config: NodeConfig, action):
    options = dict(config.storage)
    backend = RxfedPlugins(disabled=config.disabled_plugins).storage_backend(options.pop("backend", "sqlite"))
    store = backend.open(config.data_dir, options)
    await store.open()
    try:
        return await action(store)
    finally:
        await store.close()


def create_invites(data_dir: str | Path, count: int) -> list[str]:
    """Single-use invitation codes; the store keeps only their hashes."""
    config = NodeConfig.load(data_dir)
    if config.registration != "invite":
        raise ConfigError(f"this node's registration is {config.registration!r}; invitations need 'invite'")
    codes = [b32_code(10) for _ in range(count)]
    asyncio.run(_with_store(config, lambda store: store.add_invites([invite_hash(c) for c in codes], int(time.time()))))
    return codes


def setup_logging(config: NodeConfig, *, verbose: bool = False) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if config.log_file:
        handlers.append(logging.FileHandler(config.data_dir / config.log_file))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_node(data_dir: str | Path, *, host: str | None = None, port: int | None = None,
             tls_cert: str | None = None, tls_key: str | None = None, print_ready=None) -> None:
    config = NodeConfig.load(data_dir)
    keys = load_node_keys(config.data_dir)
    setup_logging(config)
    cert, key = tls_cert or config.tls_cert, tls_key or config.tls_key
    context = None
    if cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
    app = create_app(config, keys)
    web.run_app(app, host=host or config.host, port=port or config.port, ssl_context=context,
                access_log_format=ACCESS_LOG_FORMAT, print=print_ready, handler_cancellation=True)
