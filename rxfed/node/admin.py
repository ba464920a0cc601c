"""Operator actions on a node's data directory: create a node, mint invitations, serve."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import ssl
import time
from pathlib import Path

import attrs
from aiohttp import web

import rxfed
from rxfed.crypto import b32_code, fingerprint
from rxfed.errors import Conflict
from rxfed.node.app import create_app, invite_hash
from rxfed.node.config import (ConfigError, ConfigFileError, Limits, NodeConfig, create_node_keys, load_node_keys,
                               node_id_from_url)
from rxfed.node.logs import AccessLog, NodeLogs, flush_access_log, setup_logging
from rxfed.plugins import RxfedPlugins
from rxfed.protocol.delivery import PeerDelivery
from rxfed.protocol.federation import fingerprint_ok, keys_from_json, node_id_ok
from rxfed.store import safe_dsn

log = logging.getLogger("rxfed.node")

#: Connections the kernel queues for the node to accept (capped by net.core.somaxconn). aiohttp's
#: default of 128 drops the SYNs of a burst of new clients, which then wait 1, 3, 7 s to retry.
LISTEN_BACKLOG = 4096


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
    # An existing directory keeps its mode through mkdir: it holds the identity key, the
    # database (received signals, audit logs) and the logs, so nobody else may list or read it.
    os.chmod(data_dir, 0o700)
    key = create_node_keys(data_dir)
    config.save()
    try:
        asyncio.run(_with_store(config, lambda store: store.set_meta("created", str(int(time.time())))))
    except BaseException:  # no store (a database server unreachable, say): no half-made node either
        for name in ("rxfed.toml", "node-keys.json"):
            (data_dir / name).unlink(missing_ok=True)
        raise
    return config, fingerprint(key.key.public)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _with_store(config: NodeConfig, action):
    options = dict(config.storage)
    backend = RxfedPlugins(disabled=config.disabled_plugins).storage_backend(options.pop("backend", "sqlite"))
    try:
        store = backend.open(config.data_dir, options)
    except ValueError as exc:  # the backend's own options ([storage] dsn, say)
        raise ConfigFileError([f"{config.data_dir / 'rxfed.toml'}: {exc}"]) from None
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


def _check_ca_bundle(config: NodeConfig) -> None:
    from rxfed.node.federation import peer_tls_context

    path = config.ca_bundle
    if path is None:
        return
    if not path.is_file():
        raise ConfigFileError([f"[federation] ca_bundle: {path} does not exist"])
    try:
        peer_tls_context(path)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigFileError([f"[federation] ca_bundle: {path} is not a PEM file of CA certificates "
                               f"({getattr(exc, 'reason', None) or exc})"]) from None


def check_node(data_dir: str | Path, *, tls_cert: str | None = None, tls_key: str | None = None) -> NodeConfig:
    """Everything ``run`` checks before it listens (``rxfed node check``): the config, the
    identity keys, the TLS files. Raises :class:`ConfigFileError` with every problem."""
    config = NodeConfig.load(data_dir)
    problems = []
    for check in (lambda: load_node_keys(config.data_dir), lambda: tls_context(config, tls_cert, tls_key),
                  lambda: _check_ca_bundle(config)):
        try:
            check()
        except ConfigFileError as exc:
            problems += exc.problems
    from rxfed.node.backup import schema_problems

    problems += schema_problems(config)  # an older schema: `rxfed node migrate` first
    if problems:
        raise ConfigFileError(problems)
    return config


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft limit on open files to the hard limit; returns (before, after).

    Every connection costs a file descriptor, and the soft limit is often 1024 while the hard
    limit allows far more: idle connections past the soft limit make ``accept`` fail, and
    new clients (health checks included) time out until the idle ones leave."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
        return soft, soft
    return soft, target


#: File descriptors kept for the store, logs, the event loop and outgoing federation.
_FD_RESERVE = 64


class ConnectionCap:
    """At most ``limit`` open client connections. Past it a new connection closes the
    oldest idle one (no request in progress: before its first request or between two) and
    stays, as nginx reuses keep-alive connections when it runs out: idle connections cannot
    lock new clients out. When every connection is busy, the new one is closed instead."""

    def __init__(self, server: web.Server, limit: int):
        self.server, self.limit = server, limit
        self.evicted = self.refused = 0
        self._warned = 0.0
        self._made = server.connection_made
        server.connection_made = self.connection_made  # the hook aiohttp calls for each connection

    def connection_made(self, handler, transport) -> None:
        self._made(handler, transport)
        # aiohttp's own dict, oldest first (its public ``connections`` copies it as a list)
        connections = getattr(self.server, "_connections", None) or self.server.connections
        if len(connections) <= self.limit:
            return
        open_ = [h for h in connections if h.transport is not None]  # closed ones are leaving
        if len(open_) <= self.limit:
            return
        idle = next((h for h in open_ if h is not handler and not getattr(h, "_request_in_progress", True)), None)
        if idle is not None:
            idle.force_close()
            self.evicted += 1
        else:
            handler.force_close()
            self.refused += 1
        if time.monotonic() - self._warned > 60:
            self._warned = time.monotonic()
            log.warning("connection limit (%d) reached: %d idle connections closed for new ones, %d new ones "
                        "refused while every connection was busy", self.limit, self.evicted, self.refused)


def run_node(data_dir: str | Path, *, host: str | None = None, port: int | None = None,
             tls_cert: str | None = None, tls_key: str | None = None, print_ready=None,
             workers: int | None = None, worker: int | None = None) -> int | None:
    """Serve until SIGTERM or SIGINT (a graceful stop: in-flight requests finish, queued
    writes commit). SIGHUP reopens the log files. With ``workers``, supervise that many
    worker processes (:mod:`rxfed.node.workers`); ``worker`` is the index of this process
    among a supervisor's workers (it listens with ``SO_REUSEPORT`` beside the others)."""
    config = check_node(data_dir, tls_cert=tls_cert, tls_key=tls_key)
    if workers is not None and workers > 1:
        from rxfed.node.workers import run_workers

        config = attrs.evolve(config, host=host or config.host, port=port if port is not None else config.port)
        return run_workers(config, workers, host=config.host, port=config.port, tls_cert=tls_cert, tls_key=tls_key,
                           print_ready=print_ready)
    # What the process really uses, so `rxfed node status` shows it (overrides included).
    config = attrs.evolve(config, host=host or config.host, port=port or config.port)
    keys = load_node_keys(config.data_dir)
    context = tls_context(config, tls_cert, tls_key)
    logs = setup_logging(config.data_dir, config.log_file, config.access_log)
    try:
        try:
            import uvloop  # a faster event loop where available (Linux, macOS)

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
        app = create_app(config, keys, worker=worker)
        if config.access_log:
            app.cleanup_ctx.append(flush_access_log)
        asyncio.run(_serve(app, config, host=host or config.host, port=port or config.port, ssl_context=context,
                           logs=logs, print_ready=print_ready, reuse_port=worker is not None))
    finally:
        logs.close()


async def _serve(app: web.Application, config: NodeConfig, *, host: str, port: int,
                 ssl_context: ssl.SSLContext | None, logs: NodeLogs, print_ready, reuse_port: bool = False) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def stop(sig: signal.Signals) -> None:
        log.info("stopping (%s): finishing requests in flight", sig.name)
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig)
    if hasattr(signal, "SIGHUP"):  # not on Windows
        loop.add_signal_handler(signal.SIGHUP, logs.reopen)
    before, files = raise_fd_limit()
    unlimited = files < 0  # RLIM_INFINITY
    limit = config.limits.max_connections if unlimited else min(config.limits.max_connections,
                                                                max(16, files - _FD_RESERVE))
    runner = web.AppRunner(app, access_log_class=AccessLog, keepalive_timeout=config.limits.keepalive_timeout)
    await runner.setup()
    try:
        ConnectionCap(runner.server, limit)
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=LISTEN_BACKLOG,
                           reuse_port=reuse_port or None)
        await site.start()
        scheme = "https" if ssl_context else "http"
        listening = ", ".join(f"{scheme}://{_url_host(a[0])}:{a[1]}" for a in runner.addresses)
        storage = dict(config.storage)
        backend = storage.pop("backend", "sqlite")
        log.info("rxfed %s node %s started (pid %d): listening on %s; storage %s (%s); open-file limit %s%s, at "
                 "most %d connections, idle ones closed after %gs", rxfed.__version__, config.node_id, os.getpid(),
                 listening, backend, ", ".join(f"{k} {safe_dsn(v) if k == 'dsn' else v}" for k, v in storage.items())
                 or "defaults",
                 "unlimited" if unlimited else files,
                 f" (raised from {before})" if files != before else "", limit, config.limits.keepalive_timeout)
        if limit < config.limits.max_connections:
            log.warning("[limits] max_connections %d lowered to %d to fit the open-file limit (%d); raise the limit "
                        "(LimitNOFILE= in the systemd unit) to allow more", config.limits.max_connections, limit, files)
        if print_ready:
            print_ready(f"rxfed node {config.node_id} listening on {listening} (Ctrl-C to stop)")
        await stopping.wait()
    finally:
        await runner.cleanup()
    log.info("node stopped cleanly")


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


def _breaker(peer, now: int) -> str:
    """``closed``, ``open`` or ``half-open`` (the cool-down is over; the next transaction is
    the trial), as the delivery policy sees it."""
    return PeerDelivery(peer.failures, peer.breaker_until).breaker(now).value


def peers_list(data_dir: str | Path) -> list[dict]:
    """Every peer, with the instance block that covers it (``block``: the severity, or
    None), as ``node peers list`` shows them."""
    return peers_and_blocks(data_dir)[0]


def peers_and_blocks(data_dir: str | Path) -> tuple[list[dict], list[dict]]:
    async def action(store):
        peers = await store.peers()
        return peers, [await store.block_for(p.node_id) for p in peers], await store.domain_blocks()

    _config, (peers, blocks, domain_blocks) = _store_action(data_dir, action)
    now = int(time.time())
    return [{"node_id": p.node_id, "policy": p.policy, "url": p.url, "fingerprint": p.fingerprint,
             "trusted_keys": [fingerprint(k.public_key) for k in keys_from_json(p.trusted_keys or b"[]")],
             "failures": p.failures, "breaker": _breaker(p, now),
             "last_success": p.last_success, "last_error": p.last_error,
             "block": b.severity if b else None, "blocked_by": list(b.domains) if b else []}
            for p, b in zip(peers, blocks)], [b.to_json() for b in domain_blocks]


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


def _differences(live: dict, written: dict) -> list[str]:
    """``section.setting`` of every setting whose value in the file is not the running one."""
    names = {(s, k) for section in (live, written) for s in section for k in section[s]}
    return sorted(f"{s}.{k}" for s, k in names if live.get(s, {}).get(k) != written.get(s, {}).get(k))


def node_status(data_dir: str | Path) -> dict:
    """The node as its store holds it and, while it runs, as the running process reports
    it (``running``; its settings, plugins and store commits are then the live ones)."""
    from rxfed.node import control

    config = NodeConfig.load(data_dir)
    keys = load_node_keys(config.data_dir)
    try:
        live = control.ask(config.data_dir, "GET", "/status")
    except control.NodeUnreachable as exc:
        raise ConfigFileError([str(exc)]) from None
    now = int(time.time())

    async def action(store):
        return (await store.peers(), await store.outbox_summary(), await store.dead_letters(),
                await store.communities(hosted_by=config.node_id), await store.get_meta("plugins_status"),
                await store.get_meta("store_status"))

    peers, summary, dead, communities, plugins, store_status = asyncio.run(_with_store(config, action))
    plugins = json.loads(plugins) if plugins else {"at": None, "plugins": None}
    settings = live["settings"] if live else config.settings()
    if live:
        plugins = {"at": now, "plugins": live["plugins"]}
        store_status = json.dumps({"at": now, **live["store"]}) if live["store"] else store_status
    running = {"running": bool(live), "pid": live and live["pid"], "version": live and live["version"],
               "started": live and live["started"], "uptime_seconds": live and live["uptime_seconds"],
               "settings": live and live["settings"], "metrics_listening": live and live["metrics_listening"],
               "suspended_accounts": live and live["suspended_accounts"],
               # `node run --workers N`: each worker process (None: the node is one process)
               "workers": live.get("workers") if live else None,
               # settings edited in rxfed.toml (or overridden on the command line) since the start
               "changed_in_file": _differences(live["settings"], config.settings()) if live else []}
    return {
        **running,
        "node_id": node_id_from_url(settings["node"]["public_url"]), "name": settings["node"]["name"],
        "public_url": settings["node"]["public_url"],
        "registration": settings["node"]["registration"], "federation_mode": settings["federation"]["mode"],
        "keys": [{**k.to_public_json(), "current": k.valid_until is None or k.valid_until > now,
                  "expires_in_days": None if k.valid_until is None else round((k.valid_until - now) / 86400, 1)}
                 for k in keys],
        "peers": [{"node_id": p.node_id, "policy": p.policy, "failures": p.failures,
                   "breaker": _breaker(p, now),
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
