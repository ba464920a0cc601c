"""Operator actions on a node's data directory: create a node, mint invitations, serve."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import ssl
import sys
import time
from pathlib import Path
from typing import IO

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from rxfed.crypto import b32_code, fingerprint
from rxfed.errors import Conflict
from rxfed.node.app import create_app, invite_hash, logged_path
from rxfed.node.config import ConfigError, ConfigFileError, Limits, NodeConfig, create_node_keys, load_node_keys
from rxfed.plugins import RxfedPlugins
from rxfed.protocol.federation import fingerprint_ok, keys_from_json, node_id_ok

class AccessLog(AbstractAccessLogger):
    """One line per request (time, address, method, route, status, bytes, seconds) written
    to a buffered file and flushed every few seconds: the ``logging`` module's per-record
    formatting and flush would cost about a tenth of the node's time per request. A line
    shows the route's pattern, never the path's values (:func:`rxfed.node.app.logged_path`),
    so no line ties a client's address to a community, record or transaction."""

    stream: IO[str] | None = None

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_taken: float) -> None:
        if self.stream is not None:
            self.stream.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {request.remote} {request.method} "
                              f"{logged_path(request)} {response.status} {response.body_length} {time_taken:.4f}\n")

    @property
    def enabled(self) -> bool:
        return self.stream is not None


async def _flush_access_log(app: web.Application):
    async def flush():
        while True:
            await asyncio.sleep(2)
            AccessLog.stream.flush()

    task = asyncio.create_task(flush()) if AccessLog.stream else None
    yield
    if task:
        task.cancel()
    if AccessLog.stream:
        AccessLog.stream.flush()


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
    from rxfed.store import SchemaOutdated

    try:
        await store.open()
    except SchemaOutdated as exc:  # never migrated silently: `rxfed node migrate` backs up first
        raise ConfigFileError([f"{config.data_dir}: {exc}; upgrade it with 'rxfed node migrate {config.data_dir}' "
                               "(it takes a backup first)"]) from None
    except RuntimeError as exc:  # a database newer than this rxfed
        raise ConfigFileError([f"{config.data_dir}: {exc}; upgrade rxfed to use this data directory"]) from None
    except (sqlite3.Error, OSError) as exc:
        writable = os.access(config.data_dir, os.W_OK)
        raise ConfigFileError([f"{config.data_dir}: cannot open the store ({exc})"
                               + ("" if writable else "; the directory is not writable by this user")]) from None
    try:
        return await action(store)
    finally:
        await store.close()


def create_invites(data_dir: str | Path, count: int) -> list[str]:
    """Single-use invitation codes; the store keeps only their hashes."""
    config = NodeConfig.load(data_dir)
    if config.registration != "invite":
        # A refusal, not bad usage: the command is right, the node's setting says no.
        raise Conflict(f"this node's registration is {config.registration!r}, so it takes no invitations; set "
                       "registration = \"invite\" in its rxfed.toml first", code="not_invite_only")
    codes = [b32_code(10) for _ in range(count)]
    asyncio.run(_with_store(config, lambda store: store.add_invites([invite_hash(c) for c in codes], int(time.time()))))
    return codes


def setup_logging(config: NodeConfig, *, verbose: bool = False) -> None:
    """Everything (the access log included) to the node's log file; warnings and errors to
    stderr too. With no log file configured, everything goes to stderr."""
    console = logging.StreamHandler(sys.stderr)
    handlers: list[logging.Handler] = [console]
    if config.log_file:
        console.setLevel(logging.WARNING)
        handlers.append(logging.FileHandler(config.data_dir / config.log_file))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def tls_context(config: NodeConfig, cert: str | None = None, key: str | None = None) -> ssl.SSLContext | None:
    """The server's TLS context: ``cert`` and ``key`` from the command line (relative to the
    working directory), else the ``[tls]`` files (relative to the data directory)."""
    where = "--tls-cert/--tls-key" if cert else "[tls] cert/key"
    if cert:
        cert_path, key_path = Path(cert), Path(key)
    elif config.tls_cert:
        cert_path, key_path = config.tls_path(config.tls_cert), config.tls_path(config.tls_key)
    else:
        return None
    problems = [f"{where}: {path} does not exist" for path in (cert_path, key_path) if not path.is_file()]
    if problems:
        raise ConfigFileError(problems)
    try:
        head_cert, head_key = cert_path.read_bytes()[:4096], key_path.read_bytes()[:4096]
    except OSError as exc:
        raise ConfigFileError([f"{where}: {exc.filename}: {exc.strerror}"]) from None
    if b"PRIVATE KEY-----" in head_cert and b"CERTIFICATE-----" in head_key:
        raise ConfigFileError([f"{where}: the certificate and the key are swapped: {cert_path} holds a private key "
                               f"and {key_path} a certificate"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        raise ConfigFileError([f"{where}: cannot use {cert_path} (a PEM certificate chain) with {key_path} (its PEM "
                               f"private key): {exc.reason or exc}"]) from None
    return context


def check_node(data_dir: str | Path, *, tls_cert: str | None = None, tls_key: str | None = None) -> NodeConfig:
    """Everything ``run`` checks before it listens (``rxfed node check``): the config, the
    identity keys, the TLS files. Raises :class:`ConfigFileError` with every problem."""
    config = NodeConfig.load(data_dir)
    problems = []
    for check in (lambda: load_node_keys(config.data_dir), lambda: tls_context(config, tls_cert, tls_key)):
        try:
            check()
        except ConfigFileError as exc:
            problems += exc.problems
    from rxfed.node.backup import schema_problems

    problems += schema_problems(config)  # an older schema: `rxfed node migrate` first
    if problems:
        raise ConfigFileError(problems)
    return config


def run_node(data_dir: str | Path, *, host: str | None = None, port: int | None = None,
             tls_cert: str | None = None, tls_key: str | None = None, print_ready=None) -> None:
    config = check_node(data_dir, tls_cert=tls_cert, tls_key=tls_key)
    keys = load_node_keys(config.data_dir)
    context = tls_context(config, tls_cert, tls_key)
    setup_logging(config)
    try:
        import uvloop  # a faster event loop where available (Linux, macOS)

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    app = create_app(config, keys)
    if config.access_log:
        AccessLog.stream = open(config.data_dir / config.access_log, "a", buffering=64 * 1024)
        app.cleanup_ctx.append(_flush_access_log)
    web.run_app(app, host=host or config.host, port=port or config.port, ssl_context=context,
                access_log_class=AccessLog, print=print_ready)


# -- operator commands on a node's data directory (the node may be running) ------------------


def _store_action(data_dir: str | Path, action):
    config = NodeConfig.load(data_dir)
    return config, asyncio.run(_with_store(config, action))


def _check_peer(peer: str) -> None:
    if not node_id_ok(peer):
        raise ConfigError(f"{peer!r} is not a node id (host or host:port)")


def peer_policy(data_dir: str | Path, peer: str, policy: str, *, url: str | None = None,
                fingerprint: str | None = None) -> None:
    _check_peer(peer)
    if url is not None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ConfigError(f"--url {url!r} must be http(s)://host[:port]")
    if fingerprint is not None and not fingerprint_ok(fingerprint):
        raise ConfigError(f"--fingerprint {fingerprint!r} is not a complete key fingerprint: SHA256: and 43 "
                          "base64url characters, as 'rxfed node init' and 'rxfed node status' print it")
    _store_action(data_dir, lambda store: store.set_peer_policy(peer, policy, url=url, fingerprint=fingerprint))


def accept_peer_key(data_dir: str | Path, peer: str) -> str | None:
    """Forget the keys trusted for ``peer``: its next key document is trusted as on first
    contact, or checked against its pin (returned). For a peer that really changed keys
    without a signed rotation; compare the new fingerprint with its operator first."""
    _check_peer(peer)

    async def action(store):
        return await store.forget_peer_keys(peer), await store.peer(peer)

    _config, (known, row) = _store_action(data_dir, action)
    if not known:
        raise ConfigError(f"{peer} is not a peer this node knows")
    return row.fingerprint


def peers_list(data_dir: str | Path) -> list[dict]:
    _config, peers = _store_action(data_dir, lambda store: store.peers())
    now = int(time.time())
    return [{"node_id": p.node_id, "policy": p.policy, "url": p.url, "fingerprint": p.fingerprint,
             "trusted_keys": [fingerprint(k.public_key) for k in keys_from_json(p.trusted_keys or b"[]")],
             "failures": p.failures, "breaker": "open" if p.breaker_until and p.breaker_until > now else "closed",
             "last_success": p.last_success, "last_error": p.last_error} for p in peers]


def outbox_list(data_dir: str | Path) -> dict:
    async def action(store):
        return await store.outbox_summary(), await store.dead_letters()

    _config, (summary, dead) = _store_action(data_dir, action)
    return {"destinations": [{"destination": s.destination, "pending": s.pending, "in_flight": s.in_flight,
                              "oldest": s.oldest, "next_attempt": (s.next_attempt // 1000) if s.next_attempt else None,
                              "dead": s.dead} for s in summary],
            "dead_letters": [{"id": d.id, "destination": d.destination, "created": d.created, "died": d.died,
                              "reason": d.reason, "bytes": len(d.event)} for d in dead]}


def outbox_replay(data_dir: str | Path, destination: str | None) -> int:
    _config, n = _store_action(data_dir, lambda store: store.replay_dead_letters(int(time.time()), destination))
    return n


def rotate_key(data_dir: str | Path, overlap_days: float) -> dict:
    from rxfed.node.config import rotate_node_key

    NodeConfig.load(data_dir)
    new, _old = rotate_node_key(Path(data_dir), overlap=int(overlap_days * 86400))
    return {"key_id": new.key_id, "fingerprint": fingerprint(new.key.public), "valid_from": new.valid_from}


def node_status(data_dir: str | Path) -> dict:
    config = NodeConfig.load(data_dir)
    keys = load_node_keys(config.data_dir)
    now = int(time.time())

    async def action(store):
        return (await store.peers(), await store.outbox_summary(), await store.dead_letters(),
                await store.communities(hosted_by=config.node_id), await store.get_meta("plugins_status"),
                await store.get_meta("store_status"))

    peers, summary, dead, communities, plugins, store_status = asyncio.run(_with_store(config, action))
    plugins = json.loads(plugins) if plugins else {"at": None, "plugins": None}
    return {
        "node_id": config.node_id, "name": config.name, "public_url": config.public_url,
        "registration": config.registration, "federation_mode": config.federation.mode,
        "keys": [{**k.to_public_json(), "current": k.valid_until is None or k.valid_until > now,
                  "expires_in_days": None if k.valid_until is None else round((k.valid_until - now) / 86400, 1)}
                 for k in keys],
        "peers": [{"node_id": p.node_id, "policy": p.policy, "failures": p.failures,
                   "breaker": "open" if p.breaker_until and p.breaker_until > now else "closed",
                   "last_success": p.last_success, "last_error": p.last_error} for p in peers],
        "queues": [{"destination": s.destination, "pending": s.pending, "in_flight": s.in_flight,
                    "oldest": s.oldest} for s in summary],
        "queued_events": sum(s.pending + s.in_flight for s in summary),
        "dead_letters": len(dead),
        "communities_hosted": len(communities),
        "plugins": plugins["plugins"],
        # as the running node last recorded it (every few seconds): where batches commit
        "store": json.loads(store_status) if store_status else None,
        "plugins_reported_at": plugins["at"],
    }
