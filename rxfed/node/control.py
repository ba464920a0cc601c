"""The running node's control socket: ``DATA_DIR/admin.sock``, for its operator's commands.

``rxfed node status`` asks it what the running process uses (its settings as loaded, not
the file as edited since), ``rxfed node accounts`` and ``communities`` tell it to drop what
it cached of an account or community they changed, and ``GET /metrics`` serves the same
metrics as the metrics listener. It is a Unix socket, mode 0600 in the data directory: only
the node's own user (and root) can connect, so it needs no token. Nothing answering on it
means no node runs on the data directory; a node that finds another answering refuses to
start (two processes serving one store would each cache what the other changes).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

import rxfed
from rxfed.node.http import NODE

SOCKET_FILE = "admin.sock"
#: Seconds a command waits for the node's answer.
TIMEOUT = 10.0
#: AF_UNIX paths are limited to 108 bytes; longer ones are reached through the directory's
#: file descriptor (/proc/self/fd/N/admin.sock, Linux).
_MAX_PATH = 100


def socket_path(data_dir: str | Path, worker: int | None = None) -> Path:
    """The control socket: the node's, or with ``worker`` the socket of one worker process
    of ``rxfed node run --workers N`` (whose supervisor answers on the node's)."""
    return Path(data_dir) / (SOCKET_FILE if worker is None else f"admin.worker-{worker}.sock")


@contextlib.contextmanager
def _address(path: Path) -> Iterator[str]:
    if len(os.fsencode(path)) <= _MAX_PATH or not os.path.isdir("/proc/self/fd"):
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _connect(path: Path, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with _address(path) as address:
            sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


class NodeUnreachable(Exception):
    """A socket is there but the node cannot be asked (permissions, a timeout)."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float):
        super().__init__("rxfed-node", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = _connect(self._path, self.timeout)


def ask(data_dir: str | Path, method: str, target: str, body: dict | None = None, *,
        timeout: float = TIMEOUT) -> Any:
    """The running node's JSON answer (bytes for ``/metrics``), or None when no node runs
    on ``data_dir``. :class:`NodeUnreachable` when one may run but cannot be asked."""
    return ask_socket(socket_path(data_dir), method, target, body, timeout=timeout)


def ask_socket(path: Path, method: str, target: str, body: dict | None = None, *, timeout: float = TIMEOUT) -> Any:
    """:func:`ask` of the control socket at ``path``."""
    conn = _UnixConnection(path, timeout)
    try:
        conn.request(method, target, body=None if body is None else json.dumps(body).encode(),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    except PermissionError:
        raise NodeUnreachable(f"{path}: permission denied; run this command as the node's user") from None
    except (TimeoutError, socket.timeout):
        raise NodeUnreachable(f"the node did not answer on {path} within {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise NodeUnreachable(f"{path}: {exc}") from None
    finally:
        conn.close()
    if response.status != 200:
        raise NodeUnreachable(f"{path}: the node answered {response.status}: {data[:200]!r}")
    if target == "/metrics":
        return data
    return json.loads(data)


# -- the node's side ---------------------------------------------------------------------------


def bind(path: Path) -> socket.socket:
    """The control socket at ``path``, listening (refused while another process answers on it)."""
    from rxfed.node.config import ConfigFileError

    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None:
        if not stat.S_ISSOCK(mode):
            raise ConfigFileError([f"{path} exists and is not a socket; move it away"])
        try:
            _connect(path, 2.0).close()
        except OSError:
            path.unlink()  # left by a node that did not stop cleanly
        else:
            raise ConfigFileError([f"another node is running on {path.parent} (it answers on {path})"])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Linux creates the socket file with the socket's own mode (less the umask): set to
        # 0600 first, nobody else can connect in the moment between bind and chmod.
        with contextlib.suppress(OSError):
            os.fchmod(sock.fileno(), 0o600)
        with _address(path) as address:
            sock.bind(address)
        os.chmod(path, 0o600)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise ConfigFileError([f"{path}: cannot create the control socket: {exc.strerror or exc}"]) from None
    sock.setblocking(False)
    return sock


def live_status(state: Any) -> dict:
    """What the running process uses and how it is doing (``rxfed node status``)."""
    status = getattr(state.store, "commit_status", None)
    return {
        "running": True,
        "pid": os.getpid(),
        "worker": state.worker,
        "version": rxfed.__version__,
        "started": int(state.started),
        "uptime_seconds": round(time.time() - state.started),
        "settings": state.config.settings(),
        "metrics_listening": [f"{a[0]}:{a[1]}" if isinstance(a, tuple) else str(a)
                              for a in state.metrics.listening] if state.metrics.listening else None,
        "store": status() if status else None,
        "plugins": [s.to_json() for s in state.plugins.status()],
        "suspended_accounts": len(state.suspended),
    }


def control_app(state: Any) -> web.Application:

    reply = web.json_response  # settings hold floats, which canonical JSON does not
    routes = web.RouteTableDef()

    @routes.get("/status")
    async def status(request: web.Request) -> web.Response:
        return reply(live_status(state))

    @routes.get("/metrics")
    async def metrics(request: web.Request) -> web.Response:
        from rxfed.node.metrics import serve_metrics

        return await serve_metrics(request)

    @routes.post("/reload")
    async def reload(request: web.Request) -> web.Response:
        """An operator's command changed accounts or communities in the store."""
        try:
            body = await request.json()
            accounts, communities = body.get("accounts", []), body.get("communities", [])
        except (ValueError, AttributeError, TypeError):
            accounts = communities = None
        if not all(isinstance(ids, list) and all(isinstance(i, str) for i in ids) for ids in (accounts, communities)):
            return reply({"error": "bad_request", "message": "a JSON object with accounts and communities, each a "
                                                            "list of ids"}, status=400)
        await state.reload_suspended()
        for patient in accounts:
            state.forget_patient(patient)
        for community in communities:
            state.communities.forget(community)
        return reply({"reloaded": True})

    from rxfed.node.metrics import METRICS

    app = web.Application()
    app[METRICS] = state.metrics
    app.add_routes(routes)
    return app


async def control_ctx(app: web.Application):
    """A cleanup context of the node's application: serve the control socket while it runs."""

    state = app[NODE]
    path = socket_path(state.config.data_dir, state.worker)
    sock = bind(path)
    inode = os.stat(path).st_ino
    runner = web.AppRunner(control_app(state), access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    yield
    await runner.cleanup()
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:  # still ours
            path.unlink()
