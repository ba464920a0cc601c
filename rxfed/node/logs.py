"""The node's log files: owner-only, reopened on SIGHUP, and never a reason to fail.

``node.log`` and the optional access log are opened 0600 inside the data directory and
reopened when the process gets SIGHUP, so logrotate can move them away (``postrotate``:
``systemctl reload rxfed-node``) without copytruncate. A write that fails (a full disk)
loses that line only: it never fails a request, drops a connection, fills stderr with
tracebacks or changes the exit status; stderr gets one line when writes start failing, and
the log says how many lines were lost once they work again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import sys
import time
from pathlib import Path
from typing import IO

import attrs
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from rxfed.node.http import logged_path

log = logging.getLogger("rxfed.node")


def _private(path: str, flags: int) -> int:
    fd = os.open(path, flags, 0o600)
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:  # left readable by an older rxfed
        os.fchmod(fd, 0o600)
    return fd


def open_private(path: str | Path, *, buffering: int = -1) -> IO[str]:
    """``path`` opened for appending, created 0600."""
    return open(path, "a", buffering=buffering, encoding="utf-8", opener=_private)


def _say(message: str) -> None:
    """One line to stderr, where a service manager (journald) keeps it."""
    try:
        sys.stderr.write(f"rxfed: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class LogFile(logging.FileHandler):
    """``node.log``: created 0600, reopened by :meth:`reopen`, quiet when it cannot write."""

    def __init__(self, path: str | Path):
        self.lost = 0
        super().__init__(path, encoding="utf-8")

    def _open(self):
        return open_private(self.baseFilename)

    def reopen(self) -> None:
        """Close the file and open its path again: after logrotate moved it, a new file."""
        self.acquire()
        try:
            old, self.stream = self.stream, None
            if old is not None:
                try:
                    old.close()
                except OSError:
                    pass
            try:
                self.stream = self._open()
            except OSError as exc:
                _say(f"cannot reopen {self.baseFilename} ({exc.strerror or exc}); trying again at the next line")
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:
        lost = self.lost
        if self.stream is None:  # a reopen failed (or the handler was closed): try again
            try:
                self.stream = self._open()
            except OSError:
                self.handleError(record)
                return
        logging.StreamHandler.emit(self, record)
        if lost and self.lost == lost:  # this line was written: say what was lost before it
            self.lost = 0
            logging.StreamHandler.emit(self, logging.makeLogRecord({
                "name": log.name, "levelno": logging.WARNING, "levelname": "WARNING",
                "msg": "%d log lines were lost while %s could not be written", "args": (lost, self.baseFilename)}))

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            super().handleError(record)  # a formatting bug: the traceback is worth having
            return
        self.lost += 1
        if self.lost == 1:
            _say(f"cannot write {self.baseFilename} ({exc.strerror or exc}); its lines are lost until it can be")


class AccessLog(AbstractAccessLogger):
    """One line per request (time, method, route, status, bytes, seconds) written to a
    buffered file and flushed every few seconds: the ``logging`` module's per-record
    formatting and flush would cost about a tenth of the node's time per request. A line
    shows the route's pattern, never the path's values (:func:`rxfed.node.http.logged_path`),
    and no client address, so no line ties a client to an account, community, record or
    transaction. Off unless ``[logging] access`` names a file.

    aiohttp makes one instance per connection; the file is the class's."""

    stream: IO[str] | None = None
    path: Path | None = None
    #: Lines that could not be written since the last successful flush.
    lost: int = 0

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_taken: float) -> None:
        stream = AccessLog.stream
        if stream is None:
            return
        try:
            stream.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {request.method} {logged_path(request)} "
                         f"{response.status} {response.body_length} {time_taken:.4f}\n")
        except (OSError, ValueError) as exc:  # a full disk loses the line, never the connection
            AccessLog._failed(exc)

    @property
    def enabled(self) -> bool:
        return AccessLog.stream is not None

    @classmethod
    def _failed(cls, exc: BaseException) -> None:
        cls.lost += 1
        if cls.lost == 1:
            log.warning("cannot write the access log (%s); its lines are lost until it can be",
                        getattr(exc, "strerror", None) or exc)

    @classmethod
    def open(cls, path: Path) -> None:
        cls.path, cls.stream, cls.lost = path, open_private(path, buffering=64 * 1024), 0

    @classmethod
    def flush(cls) -> None:
        if cls.stream is None:
            return
        try:
            cls.stream.flush()
        except (OSError, ValueError) as exc:
            cls._failed(exc)
            return
        if cls.lost:
            log.warning("%d access log lines were lost while it could not be written", cls.lost)
            cls.lost = 0

    @classmethod
    def close(cls) -> None:
        stream, cls.stream = cls.stream, None
        if stream is None:
            return
        try:
            stream.close()
        except (OSError, ValueError):
            try:  # the buffer could not be written out: drop it rather than fail at exit
                stream.buffer.raw.close()
            except (OSError, ValueError, AttributeError):
                pass

    @classmethod
    def reopen(cls) -> None:
        if cls.path is None:
            return
        cls.flush()
        cls.close()
        cls.open(cls.path)


async def flush_access_log(app: web.Application):
    """A cleanup context: the access log flushed every two seconds and at the end."""
    async def flush():
        while True:
            await asyncio.sleep(2)
            AccessLog.flush()

    task = asyncio.create_task(flush())
    yield
    task.cancel()
    AccessLog.flush()


@attrs.define
class NodeLogs:
    """The running node's log files, reopened together on SIGHUP."""

    file: LogFile | None = None
    access: Path | None = None

    def reopen(self) -> None:
        if self.file is not None:
            self.file.reopen()
        if self.access is not None:
            AccessLog.reopen()
        log.info("log files reopened")

    def close(self) -> None:
        AccessLog.close()
        AccessLog.path = None
        if self.file is not None:
            logging.getLogger().removeHandler(self.file)
            try:
                self.file.close()
            except OSError:
                pass


def setup_logging(data_dir: Path, log_file: str | None, access_log: str | None, *,
                  verbose: bool = False) -> NodeLogs:
    """Everything to ``log_file`` inside the data directory, warnings and errors to stderr
    too; with no log file, everything to stderr. The access log only when configured."""
    console = logging.StreamHandler(sys.stderr)
    handlers: list[logging.Handler] = [console]
    logs = NodeLogs()
    if log_file:
        console.setLevel(logging.WARNING)
        logs.file = LogFile(data_dir / log_file)
        handlers.append(logs.file)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if access_log:
        logs.access = data_dir / access_log
        AccessLog.open(logs.access)
    return logs
