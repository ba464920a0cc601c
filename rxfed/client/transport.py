"""The patient client's HTTP: HTTP/1.1 over asyncio streams, framed by h11 (sans-I/O).

A command of the ``rxfed`` CLI starts, makes a few requests to the patient's node and exits;
importing aiohttp alone (it builds TLS contexts at import) costs more than the whole of such
a command may take, so the client speaks HTTP/1.1 itself through h11, which parses and
frames messages and does no I/O. Connections are kept alive per host and port, a TLS
context is made only for an ``https`` URL. A caller that already holds an
``aiohttp.ClientSession`` (a load generator sharing one pool between many patients) may hand
it to the SDK instead: :func:`request` accepts either.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any
from urllib.parse import urlsplit

import h11

from rxfed.errors import BadRequest

#: Seconds one request may take, connecting included.
TIMEOUT = 60.0
#: An idle connection older than this is closed rather than reused (servers drop idle
#: keep-alive connections after a while; reusing one the server is closing loses the request).
IDLE_REUSE = 15.0
#: The largest answer read from a node (a whole vault at the largest quota fits): a node
#: that sends more is refused rather than let fill the device's memory.
MAX_RESPONSE = 512 * 1024 * 1024


#: A PEM file of the certificate authorities to trust for nodes' HTTPS instead of the
#: system's (a hospital's own CA, say): ``Http(ca_bundle=...)``, else this variable.
CA_BUNDLE_VARIABLE = "RXFED_CA_BUNDLE"


def tls_context(ca_bundle: str | os.PathLike | None = None):
    """The client's TLS context: the system's CAs, or only those of ``ca_bundle`` (as
    curl's ``--cacert``). Certificates and host names are always checked."""
    import ssl

    if not ca_bundle:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=os.fspath(ca_bundle))
    except FileNotFoundError:
        raise BadRequest(f"CA bundle {ca_bundle}: no such file", code="bad_ca_bundle") from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise BadRequest(f"CA bundle {ca_bundle}: not a PEM file of CA certificates ({exc})",
                         code="bad_ca_bundle") from None


class TransportError(OSError):
    """The exchange with the node failed (connection refused or lost, malformed answer)."""


def split_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, request target) of an ``http``/``https`` URL; anything else is
    bad input."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"{url.split('/v1')[0]!r} is not a node URL: write it with its scheme, "
                         "e.g. https://rxfed.example.org or http://127.0.0.1:8470", code="bad_url")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise BadRequest(f"{url!r} has an invalid port", code="bad_url") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port, target


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(our_role=h11.CLIENT)
        self.used = time.monotonic()

    def usable(self) -> bool:
        return (self.h11.our_state is h11.IDLE and not self.reader.at_eof()
                and time.monotonic() - self.used < IDLE_REUSE)

    async def exchange(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes,
                       max_bytes: int = MAX_RESPONSE) -> tuple[int, bytes]:
        conn = self.h11
        out = conn.send(h11.Request(method=method, target=target, headers=headers))
        if body:
            out += conn.send(h11.Data(data=body))
        out += conn.send(h11.EndOfMessage())
        self.writer.write(out)
        await self.writer.drain()
        status, chunks, size = 0, [], 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await self.reader.read(256 * 1024))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
                size += len(event.data)
                if size > max_bytes:
                    raise TransportError(f"the node's answer is larger than {max_bytes} bytes")
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise TransportError("the node closed the connection before answering")
            # an InformationalResponse (100 Continue) needs nothing
        self.used = time.monotonic()
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        return status, b"".join(chunks)

    def close(self) -> None:
        self.writer.close()


class Http:
    """A small HTTP/1.1 client: ``await request(method, url, body=..., headers=...)`` returns
    ``(status, body)``. Use one per task or share it: concurrent requests take separate
    connections. ``close()`` ends the idle ones."""

    def __init__(self, *, timeout: float = TIMEOUT, ca_bundle: str | os.PathLike | None = None):
        self.timeout = timeout
        self.ca_bundle = ca_bundle or os.environ.get(CA_BUNDLE_VARIABLE) or None
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._tls: Any = None

    def _tls_context(self):
        if self._tls is None:
            self._tls = tls_context(self.ca_bundle)
        return self._tls

    async def _connection(self, key: tuple[str, str, int]) -> _Connection:
        idle = self._idle.get(key, [])
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.close()
        scheme, host, port = key
        tls = self._tls_context() if scheme == "https" else None
        reader, writer = await asyncio.open_connection(host, port, ssl=tls, server_hostname=host if tls else None,
                                                       limit=1024 * 1024)
        return _Connection(reader, writer)

    async def request(self, method: str, url: str, *, body: bytes = b"",
                      headers: dict[str, str] | None = None, max_bytes: int = MAX_RESPONSE) -> tuple[int, bytes]:
        scheme, host, port, target = split_url(url)
        name = f"[{host}]" if ":" in host else host
        authority = name if port == (443 if scheme == "https" else 80) else f"{name}:{port}"
        lines = [("Host", authority), ("Content-Length", str(len(body))), *(headers or {}).items()]
        key = (scheme, host, port)
        conn = None
        try:
            async with asyncio.timeout(self.timeout):
                conn = await self._connection(key)
                status, payload = await conn.exchange(method, target, lines, body, max_bytes)
        except h11.ProtocolError as exc:
            if conn is not None:
                conn.close()
            raise TransportError(f"malformed HTTP from the node: {exc}") from None
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        if conn.h11.our_state is h11.IDLE:
            self._idle.setdefault(key, []).append(conn)
        else:
            conn.close()
        return status, payload

    async def close(self) -> None:
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    async def __aenter__(self) -> Http:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


async def request(session: Any, method: str, url: str, *, body: bytes = b"",
                  headers: dict[str, str] | None = None, max_bytes: int = MAX_RESPONSE) -> tuple[int, bytes]:
    """``(status, body)`` through ``session``: an :class:`Http`, or an
    ``aiohttp.ClientSession`` a caller brought. Failures to talk to the node are ``OSError``;
    so is an answer longer than ``max_bytes`` (read no further)."""
    if isinstance(session, Http):
        return await session.request(method, url, body=body, headers=headers, max_bytes=max_bytes)
    import aiohttp  # the caller made an aiohttp session, so it is imported already

    split_url(url)
    try:
        async with session.request(method, url, data=body or None, headers=headers) as resp:
            chunks, size = [], 0
            async for chunk in resp.content.iter_chunked(256 * 1024):
                size += len(chunk)
                if size > max_bytes:
                    raise TransportError(f"the node's answer is larger than {max_bytes} bytes")
                chunks.append(chunk)
            return resp.status, b"".join(chunks)
    except aiohttp.ClientError as exc:
        raise TransportError(str(exc) or type(exc).__name__) from None


def host_url(host: str) -> str:
    """Where a host node answers: ``https://{node id}``; plain HTTP only on loopback."""
    import ipaddress

    name = host[1:host.index("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
    try:
        loopback = ipaddress.ip_address(name).is_loopback
    except ValueError:
        loopback = name == "localhost"
    return f"{'http' if loopback else 'https'}://{host}"
