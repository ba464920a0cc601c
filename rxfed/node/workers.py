"""``rxfed node run DATA_DIR --workers N``: a supervisor and N node worker processes.

Every worker is a whole node process (``rxfed node run DATA_DIR --worker K``, a flag for the
supervisor only) listening on the same address with ``SO_REUSEPORT``, so the kernel spreads
new connections over the workers, and sharing one PostgreSQL database, where every piece of
state that two workers must agree on lives (spec/store.md, "Several workers"). The
supervisor binds the address first without listening (so ``--port 0`` picks one port for
all of them, and nobody else takes it while a worker restarts), starts the workers, restarts
one that dies (logged, with a growing pause if it keeps dying at once), and on SIGTERM or
SIGINT passes SIGTERM on, so every worker drains: requests in flight finish, then it exits.
SIGHUP (log rotation) reopens its log files and is passed on too.

The supervisor owns the control socket ``DATA_DIR/admin.sock`` that operator commands
talk to: ``/status`` is a worker's status with the list of workers added, ``/reload`` is
passed to every worker, ``/metrics`` is the first answering worker's. Each worker answers
on its own socket, ``DATA_DIR/admin.worker-K.sock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from aiohttp import web

log = logging.getLogger("rxfed.node")

#: Seconds the supervisor waits for its workers to drain after SIGTERM before it kills them.
STOP_GRACE = 30.0
#: Seconds a worker must run to count as started well: one that dies sooner is restarted
#: after a pause that doubles each time (at most :data:`MAX_PAUSE`).
HEALTHY_AFTER = 5.0
MAX_PAUSE = 10.0
#: Seconds the supervisor waits for every worker to answer on its control socket at start.
START_TIMEOUT = 60.0


def backend_of(config) -> str:
    return dict(config.storage).get("backend", "sqlite")


def refusal(config, workers: int) -> str | None:
    """Why ``--workers N`` cannot serve this node, or None."""
    if workers < 1:
        return "--workers must be at least 1"
    if workers > 64:
        return "--workers must be at most 64"
    if workers > 1 and backend_of(config) != "postgresql":
        return (f"--workers {workers} needs the PostgreSQL store (this node keeps its data in "
                f"{backend_of(config)}, which one process serves; see 'rxfed node migrate-db')")
    return None


def reserve(host: str, port: int) -> socket.socket:
    """The address bound, not listening, with ``SO_REUSEPORT``: the workers bind it too.

    First it is bound without ``SO_REUSEPORT``: that fails while any socket listens on the
    port, with the option or without. Otherwise another node of the same user started with
    ``--workers`` on the same port by mistake would share it, and the kernel would spread
    one node's clients over two nodes."""
    from rxfed.node.config import ConfigFileError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for reuse_port in (False, True):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise ConfigFileError([f"cannot listen on {host}:{port}: {exc.strerror or exc}"]) from None
        if not reuse_port:
            port = sock.getsockname()[1]  # --port 0: the one the kernel chose, for all
            sock.close()
    return sock


class Worker:
    """One worker process and what the supervisor knows of it."""

    def __init__(self, index: int, argv: list[str]):
        self.index, self.argv = index, argv
        self.proc: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self.restarts = 0
        self.pause = 0.5
        self.last_exit: int | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(*self.argv, stdin=asyncio.subprocess.DEVNULL,
                                                         preexec_fn=_die_with_parent)
        self.started = time.time()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def to_json(self) -> dict:
        return {"worker": self.index, "pid": self.proc.pid if self.proc else None, "alive": self.alive,
                "started": int(self.started), "restarts": self.restarts, "last_exit": self.last_exit}


def _find_prctl():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


#: Resolved before any fork: the child of a threaded process may only call what is ready.
_PRCTL = _find_prctl()


def _die_with_parent() -> None:
    """In the worker, between fork and exec: SIGTERM when the supervisor dies (Linux
    ``PR_SET_PDEATHSIG``), so a killed supervisor leaves no worker serving on its own."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)


def worker_argv(data_dir: Path, index: int, host: str, port: int, tls_cert: str | None,
                tls_key: str | None) -> list[str]:
    argv = [sys.executable, "-m", "rxfed", "node", "run", str(data_dir), "--worker", str(index),
            "--host", host, "--port", str(port)]
    if tls_cert:
        argv += ["--tls-cert", tls_cert, "--tls-key", tls_key]
    return argv


class Supervisor:
    def __init__(self, config, workers: int, *, host: str, port: int, tls_cert: str | None, tls_key: str | None):
        self.config = config
        self.host, self.port = host, port
        self.workers = [Worker(i, worker_argv(config.data_dir, i, host, port, tls_cert, tls_key))
                        for i in range(workers)]
        self.stopping = asyncio.Event()
        self.started = time.time()
        self.logs = None

    async def _watch(self, worker: Worker) -> None:
        while not self.stopping.is_set():
            code = await worker.proc.wait()
            worker.last_exit = code
            if self.stopping.is_set():
                return
            ran = time.time() - worker.started
            worker.pause = 0.5 if ran >= HEALTHY_AFTER else min(MAX_PAUSE, worker.pause * 2)
            log.error("worker %d (pid %d) exited with %s after %.1f s; restarting it in %.1f s", worker.index,
                      worker.proc.pid, f"signal {-code}" if code < 0 else f"code {code}", ran, worker.pause)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(worker.pause):
                    await self.stopping.wait()
            if self.stopping.is_set():
                return
            worker.restarts += 1
            await worker.start()
            log.info("worker %d restarted (pid %d)", worker.index, worker.proc.pid)

    async def ask(self, worker: Worker, method: str, target: str, body: dict | None = None, *,
                  timeout: float = 5.0):
        from rxfed.node import control

        path = control.socket_path(self.config.data_dir, worker.index)
        try:
            return await asyncio.to_thread(control.ask_socket, path, method, target, body, timeout=timeout)
        except control.NodeUnreachable as exc:
            log.warning("worker %d did not answer %s %s: %s", worker.index, method, target, exc)
            return None

    async def status(self) -> dict:
        answers = await asyncio.gather(*(self.ask(w, "GET", "/status") for w in self.workers))
        first = next((a for a in answers if a), None)
        if first is None:
            first = {"running": True, "settings": self.config.settings(), "store": None, "plugins": [],
                     "metrics_listening": None, "suspended_accounts": 0, "version": None}
        workers = []
        for w, a in zip(self.workers, answers):
            workers.append({**w.to_json(), "answering": a is not None,
                            "store": a.get("store") if a else None})
        return {**first, "pid": os.getpid(), "started": int(self.started),
                "uptime_seconds": round(time.time() - self.started), "workers": workers}

    def control_app(self) -> web.Application:
        routes = web.RouteTableDef()
        reply = web.json_response

        @routes.get("/status")
        async def status(request: web.Request) -> web.Response:
            return reply(await self.status())

        @routes.get("/metrics")
        async def metrics(request: web.Request) -> web.Response:
            for w in self.workers:
                body = await self.ask(w, "GET", "/metrics")
                if body is not None:
                    return web.Response(body=body, content_type="text/plain")
            return reply({"error": "unavailable", "message": "no worker answers"}, status=503)

        @routes.post("/reload")
        async def reload(request: web.Request) -> web.Response:
            try:
                body = await request.json()
            except ValueError:
                body = None
            lists = [body.get("accounts", []), body.get("communities", [])] if isinstance(body, dict) else None
            if lists is None or not all(isinstance(ids, list) and all(isinstance(i, str) for i in ids)
                                        for ids in lists):
                return reply({"error": "bad_request", "message": "a JSON object with accounts and communities, "
                                                                "each a list of ids"}, status=400)
            told = await asyncio.gather(*(self.ask(w, "POST", "/reload", body) for w in self.workers))
            return reply({"reloaded": True, "workers": sum(1 for t in told if t)})

        @routes.post("/insights/round")
        async def insights_round(request: web.Request) -> web.Response:
            """``rxfed node insights DATA_DIR round``: one worker starts the round (the first
            that answers; the store refuses a second start of the same round)."""
            from rxfed.node import control

            try:
                body = await request.json()
            except ValueError:
                body = None
            if not isinstance(body, dict) or not isinstance(body.get("category"), str):
                return reply({"error": "bad_request", "message": "a JSON object with category (and period)"},
                             status=400)
            for w in self.workers:
                answer = await self.ask(w, "POST", "/insights/round", body, timeout=control.TIMEOUT)
                if answer is not None:
                    return reply(answer)
            return reply({"error": "unavailable", "message": "no worker answers"}, status=503)

        app = web.Application()
        app.add_routes(routes)
        return app

    async def _wait_answering(self) -> bool:
        from rxfed.node import control

        deadline = time.monotonic() + START_TIMEOUT
        pending = list(self.workers)
        while pending and time.monotonic() < deadline and not self.stopping.is_set():
            for w in list(pending):
                if not w.alive:
                    return False
                try:
                    if await asyncio.to_thread(control.ask_socket, control.socket_path(self.config.data_dir, w.index),
                                               "GET", "/status", None, timeout=2.0):
                        pending.remove(w)
                except control.NodeUnreachable:
                    pass
            if pending:
                await asyncio.sleep(0.1)
        return not pending

    async def run(self, print_ready=None) -> int:
        from rxfed.node import control

        loop = asyncio.get_running_loop()

        def stop(sig: signal.Signals) -> None:
            log.info("stopping (%s): the workers finish their requests in flight", sig.name)
            self.stopping.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop, sig)

        def reopen() -> None:  # logrotate: every process reopens its log files
            if self.logs is not None:
                self.logs.reopen()
            for w in self.workers:
                if w.alive:
                    with contextlib.suppress(ProcessLookupError):
                        w.proc.send_signal(signal.SIGHUP)

        loop.add_signal_handler(signal.SIGHUP, reopen)
        path = control.socket_path(self.config.data_dir)
        sock = control.bind(path)
        inode = os.stat(path).st_ino
        runner = web.AppRunner(self.control_app(), access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        watchers = []
        try:
            for w in self.workers:
                await w.start()
            if not await self._wait_answering():
                if not self.stopping.is_set():
                    log.error("the workers did not start (see the node log)")
                    sys.stderr.write("rxfed: the workers did not start; see the node log\n")
                    return 1
            watchers = [asyncio.create_task(self._watch(w)) for w in self.workers]
            log.info("supervisor (pid %d) started %d workers on %s:%d: pids %s", os.getpid(), len(self.workers),
                     self.host, self.port, ", ".join(str(w.proc.pid) for w in self.workers))
            if print_ready:
                scheme = "https" if self.workers[0].argv.count("--tls-cert") else "http"
                print_ready(f"rxfed node {self.config.node_id} listening on {scheme}://{self.host}:{self.port} "
                            f"with {len(self.workers)} workers (Ctrl-C to stop)")
            await self.stopping.wait()
            return 0
        finally:
            self.stopping.set()
            await self._stop_workers()
            for task in watchers:
                task.cancel()
            await runner.cleanup()
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == inode:
                    path.unlink()
            log.info("supervisor stopped cleanly")

    async def _stop_workers(self) -> None:
        alive = [w for w in self.workers if w.alive]
        for w in alive:
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_GRACE):
                await asyncio.gather(*(w.proc.wait() for w in alive))
        except TimeoutError:
            for w in alive:
                if w.alive:
                    log.warning("worker %d did not stop within %g s; killing it", w.index, STOP_GRACE)
                    with contextlib.suppress(ProcessLookupError):
                        w.proc.kill()
            await asyncio.gather(*(w.proc.wait() for w in alive))


def run_workers(config, workers: int, *, host: str, port: int, tls_cert: str | None, tls_key: str | None,
                print_ready=None) -> int:
    """Supervise ``workers`` node processes on ``host:port`` until SIGTERM or SIGINT."""
    from rxfed.node.logs import setup_logging

    reserved = reserve(host, port)
    port = reserved.getsockname()[1]
    logs = setup_logging(config.data_dir, config.log_file, False)
    try:
        supervisor = Supervisor(config, workers, host=host, port=port, tls_cert=tls_cert, tls_key=tls_key)
        supervisor.logs = logs
        return asyncio.run(supervisor.run(print_ready))
    finally:
        reserved.close()
        logs.close()
