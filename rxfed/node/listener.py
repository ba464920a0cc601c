"""The HTTP listener's defences: slow clients, bodies, load, and addresses behind proxies.

A node faces the internet (or a reverse proxy that does), so what a request costs before it
is known to be wanted must stay small and bounded in time:

- a request's line and headers must arrive within ``header_timeout`` of its first byte
  (:class:`GuardedRequestHandler`; aiohttp itself waits for a head for as long as the
  connection's idle timeout);
- a body is read only after the signature headers, the key and the time window are checked
  (``authenticate`` in :mod:`rxfed.node.http`), within ``body_timeout``, no larger than its
  endpoint's limit (:func:`read_body`), and bodies no signature vouches for yet are capped in
  number (:meth:`Listener.unverified`);
- request bodies are taken in the identity coding only: a compressed body is refused with
  415 before anything decompresses it (nothing the node's clients send compresses well:
  records are ciphertext);
- at most ``max_in_flight`` requests are worked on at once; up to ``max_queued`` more wait,
  each at most ``queue_timeout`` seconds, and beyond that a request is shed with 503 and
  ``Retry-After`` (:class:`Admission`), so that under overload the node keeps answering at its
  best rate instead of answering everyone late; a request whose client left while it waited
  is dropped before any work;
- unauthenticated requests are rate limited per client address, which behind a configured
  trusted proxy is the forwarded one (:func:`client_address`), and all together.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
from collections.abc import Awaitable, Sequence

from aiohttp import web
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from rxfed.errors import BadRequest, Overloaded, PayloadTooLarge, RequestTimeout, UnsupportedEncoding
from rxfed.node.config import Limits, proxy_networks
from rxfed.node.guards import RateLimiter

log = logging.getLogger("rxfed.node")

_key = getattr(web, "RequestKey", lambda name, _type: f"rxfed.{name}")  # typed keys from aiohttp 3.12 on
#: Whether a request holds an admission slot (set False by :func:`guard` when it arrives).
_ADMITTED = _key("admitted", bool)
_ARRIVED = _key("arrived", float)
_HEAD_TIMEOUT_BODY = b'{"error":"request_timeout","message":"the request headers did not arrive in time"}'
_HEAD_TIMEOUT_REPLY = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(_HEAD_TIMEOUT_BODY), _HEAD_TIMEOUT_BODY))


class ClientGone(Exception):
    """The client closed its connection before its request was read or worked on: there is
    nobody to answer, and nothing to log above debug."""


# -- the connection: a deadline for each request head ---------------------------------------


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection handler with a deadline for each request head.

    The deadline starts with the first bytes received while no request is being handled
    (:attr:`head_since`) and ends when a handler starts (:func:`guard`); the server's sweep
    (:class:`_GuardedServer`) gives a head still incomplete after ``header_timeout`` a 408 and
    closes the connection. One time stamp per request, no timer: the sweep runs a few times
    per ``header_timeout`` over the open connections. A request marked with
    :func:`close_after_reply` closes its connection once the reply is written, without
    draining the rest of its body."""

    def __init__(self, *args, header_timeout: float, **kwargs):
        super().__init__(*args, **kwargs)
        self._header_timeout = header_timeout
        #: Loop time when the bytes of a request head began to arrive; None while no head
        #: is awaited or a request is being handled.
        self.head_since: float | None = None
        self.close_after_reply = False

    def data_received(self, data: bytes) -> None:
        if data and self.head_since is None and not self._request_in_progress:
            self.head_since = self._loop.time()
        super().data_received(data)

    def head_overdue(self, now: float) -> None:
        """Called by the sweep: a 408 and the connection closed when the head that began
        arriving at :attr:`head_since` is still incomplete ``header_timeout`` later."""
        since = self.head_since
        if since is None or now - since < self._header_timeout:
            return
        waiting = self._waiter is not None and not self._waiter.done()  # still no complete head
        if self._request_in_progress or self.transport is None or not waiting:
            return
        log.debug("request head not complete within %g s; connection closed", self._header_timeout)
        self.head_since = None
        self.transport.write(_HEAD_TIMEOUT_REPLY)
        self.force_close()

    def finish_response(self, request, resp, start_time):
        if not self.close_after_reply:  # no coroutine of our own in the way of every reply
            return super().finish_response(request, resp, start_time)
        return self._finish_and_close(request, resp, start_time)

    async def _finish_and_close(self, request, resp, start_time):
        if resp is not None and not resp.prepared:
            resp.force_close()  # says Connection: close
        result = await super().finish_response(request, resp, start_time)
        self.force_close()
        return result


class _GuardedServer(web.Server):
    """aiohttp's server, making :class:`GuardedRequestHandler` connections and sweeping them
    for overdue request heads while any are open."""

    _sweep_handle: asyncio.TimerHandle | None = None

    def __call__(self) -> RequestHandler:
        if self._sweep_handle is None:
            self._sweep_handle = self._loop.call_later(self._sweep_every(), self._sweep)
        return GuardedRequestHandler(self, loop=self._loop, **self._kwargs)

    def _sweep_every(self) -> float:
        """A quarter of the head deadline, between 50 ms and a second: a slow head is closed
        between ``header_timeout`` and that much later."""
        return min(1.0, max(0.05, self._kwargs["header_timeout"] / 4))

    def _sweep(self) -> None:
        connections = getattr(self, "_connections", None) or self.connections
        now = self._loop.time()
        for handler in list(connections):
            if getattr(handler, "head_since", None) is not None:
                handler.head_overdue(now)
        self._sweep_handle = self._loop.call_later(self._sweep_every(), self._sweep) if connections else None

    async def shutdown(self, timeout: float | None = None) -> None:
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        await super().shutdown(timeout)


def close_after_reply(request: web.BaseRequest) -> None:
    """Close ``request``'s connection once its reply is written, without draining the rest of
    its body (a body that did not arrive in time, or is too large)."""
    protocol = request.protocol
    if isinstance(protocol, GuardedRequestHandler):
        protocol.close_after_reply = True


def install(app: web.Application, limits: Limits) -> None:
    """Serve ``app`` with :class:`GuardedRequestHandler` however it is run (``web.run_app``,
    ``AppRunner``): aiohttp has no setting for a head deadline, so the server it makes for
    the application is given this handler class."""
    make_server = app._make_handler

    def make_handler(**kwargs) -> web.Server:
        server = make_server(**kwargs, header_timeout=limits.header_timeout,
                             # a refused request's unread body is drained this long at most
                             lingering_time=min(10.0, limits.body_timeout),
                             # bodies are taken in the identity coding only (guard)
                             auto_decompress=False)
        server.__class__ = _GuardedServer
        return server

    app._make_handler = make_handler


# -- client addresses -----------------------------------------------------------------------


def _ip(text: str | None):
    if not text:
        return None
    text = text.strip().strip('"')
    if text.startswith("["):  # Forwarded: for="[2001:db8::1]:4711"
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # 192.0.2.1:4711
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def client_address(request: web.BaseRequest, trusted: Sequence, header: str = "X-Forwarded-For") -> str:
    """The address a request came from: the peer's, or, when the peer is a trusted proxy,
    the nearest address in the chain of ``header`` (``X-Forwarded-For``, or ``Forwarded``
    of RFC 7239: the one the proxies write) that is not itself a trusted proxy. The other
    header is never read: a proxy that writes one passes the other on from the client as it
    came, so reading it would let a client name any address. Headers from any other peer
    are ignored (anyone can send them). An IPv6 client is keyed by its /64, which one
    subscriber usually holds."""
    peer = _ip(request.remote)
    if peer is None:
        return request.remote or "?"
    address = peer
    if trusted and any(peer in net for net in trusted):
        if header == "Forwarded":
            hops = [_ip(item.get("for")) for item in request.forwarded]
        else:
            hops = [_ip(h) for h in ",".join(request.headers.getall("X-Forwarded-For", [])).split(",") if h.strip()]
        for hop in reversed(hops):  # the proxy appends what it saw: read from the right
            if hop is None:
                break  # unreadable: stay with the last hop the proxies vouch for
            address = hop
            if not any(hop in net for net in trusted):
                break
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


# -- admission ------------------------------------------------------------------------------


class Admission:
    """At most ``max_in_flight`` requests worked on at once, at most ``max_queued`` waiting;
    a request not admitted within ``queue_timeout`` seconds of its first bytes arriving
    (which counts the time a busy event loop took to reach it) and the rest are shed with
    503 and Retry-After.

    A free slot is taken without waiting or allocating (:meth:`enter` returns None); only a
    request that must queue gets a future, and a slot freed while requests wait passes to
    the first of them."""

    def __init__(self, max_in_flight: int, max_queued: int, queue_timeout: float):
        self.max_in_flight, self.max_queued, self.queue_timeout = max_in_flight, max_queued, queue_timeout
        #: Requests holding a slot.
        self.in_flight = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self.waiting = 0
        self.shed = 0
        self.gone = 0

    def refuse_if_full(self) -> None:
        """Shed at once, before a request costs anything, while the queue is full."""
        if self.waiting >= self.max_queued and self.in_flight >= self.max_in_flight:
            self.shed += 1
            raise Overloaded("the node is busy; retry after the time in Retry-After")

    async def enter(self, request: web.BaseRequest) -> None:
        """Wait for a slot for ``request`` (once; :meth:`leave` frees it), or be shed."""
        waiting = self.take(request)
        if waiting is not None:
            await waiting

    def take(self, request: web.BaseRequest) -> Awaitable[None] | None:
        """:meth:`enter` without a coroutine when a slot is free: None when ``request`` got
        one, else an awaitable that waits for one (or sheds the request when its time is
        up). While the queue is full it sheds at once."""
        if request[_ADMITTED]:
            return None
        if self.in_flight < self.max_in_flight and not self.waiting:
            self.in_flight += 1
            self._admitted(request)
            return None
        self.refuse_if_full()
        left = self.queue_timeout - (asyncio.get_running_loop().time() - request[_ARRIVED])
        if left <= 0:
            self.shed += 1
            raise Overloaded("the node is busy; retry after the time in Retry-After")
        return self._queue(request, left)

    async def _queue(self, request: web.BaseRequest, left: float) -> None:
        slot = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        self.waiting += 1
        try:
            async with asyncio.timeout(left):
                await slot
        except TimeoutError:
            if not slot.done() or slot.cancelled():
                slot.cancel()
                self.shed += 1
                raise Overloaded("the node is busy; retry after the time in Retry-After") from None
            # handed a slot in the same turn as the wait ran out: keep it
        except BaseException:
            if slot.done() and not slot.cancelled():
                self._release()  # the slot it was handed goes on to the next
            else:
                slot.cancel()
            raise
        finally:
            self.waiting -= 1
        self._admitted(request)

    def _admitted(self, request: web.BaseRequest) -> None:
        request[_ADMITTED] = True
        transport = request.transport
        if transport is None or transport.is_closing():
            self.gone += 1
            raise ClientGone()

    def _release(self) -> None:
        while self._waiters:
            slot = self._waiters.popleft()
            if not slot.done():
                slot.set_result(None)  # the slot passes to the first request waiting
                return
        self.in_flight -= 1

    def leave(self, request: web.BaseRequest) -> None:
        if request[_ADMITTED]:
            request[_ADMITTED] = False
            self._release()


# -- bodies ---------------------------------------------------------------------------------


def check_declared_size(request: web.BaseRequest, limit: int) -> None:
    """A body its Content-Length says is larger than ``limit`` is refused before it is read."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"request body over {limit} bytes", code="payload_too_large")


async def read_body(request: web.BaseRequest, *, limit: int, timeout: float) -> bytes:
    """The request's body: at most ``limit`` bytes (413 at once when Content-Length says
    more), all of it within ``timeout`` seconds (else 408, and the connection closes)."""
    check_declared_size(request, limit)
    if not request.body_exists:
        return b""
    content = request.content
    if content.is_eof():  # all of it arrived with the head, as small bodies do: no timer needed
        body = content.read_nowait()
        if len(body) > limit:
            close_after_reply(request)
            raise PayloadTooLarge(f"request body over {limit} bytes", code="payload_too_large")
        return body
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            while chunk := await content.readany():
                size += len(chunk)
                if size > limit:
                    close_after_reply(request)
                    raise PayloadTooLarge(f"request body over {limit} bytes", code="payload_too_large")
                chunks.append(chunk)
    except TimeoutError:
        close_after_reply(request)
        raise RequestTimeout(f"the request body did not arrive within {timeout:g} s") from None
    except RequestPayloadError:
        raise BadRequest("malformed request body (its framing)", code="bad_body") from None
    except ConnectionError:  # the client left mid-body
        raise ClientGone() from None
    return b"".join(chunks)


class Listener:
    """The listener's shared state for one node: admission, the unverified-body cap, the
    anonymous budgets, the trusted proxies."""

    def __init__(self, limits: Limits, trusted_proxies: Sequence[str] = (), forwarded_header: str = "X-Forwarded-For"):
        self.limits = limits
        self.trusted = proxy_networks(trusted_proxies)
        self.forwarded_header = forwarded_header
        self.admission = Admission(limits.max_in_flight, limits.max_queued, limits.queue_timeout)
        self.anonymous = RateLimiter(limits.anonymous_per_minute / 60.0, limits.anonymous_burst)
        self.anonymous_all = RateLimiter(limits.anonymous_global_per_minute / 60.0, limits.anonymous_global_burst)
        self.unverified_bodies = 0

    def take_anonymous(self, request: web.BaseRequest) -> None:
        """One unauthenticated request from the request's client: its address's budget, then
        everyone's (so one address that is refused costs the others nothing)."""
        self.anonymous.take(client_address(request, self.trusted, self.forwarded_header))
        self.anonymous_all.take("*")

    def unverified(self) -> _UnverifiedBody:
        """``async with listener.unverified():`` around reading a body no signature vouches
        for yet; 503 with Retry-After when ``max_unverified_bodies`` are being read."""
        return _UnverifiedBody(self)


class _UnverifiedBody:
    def __init__(self, listener: Listener):
        self.listener = listener

    async def __aenter__(self) -> None:
        if self.listener.unverified_bodies >= self.listener.limits.max_unverified_bodies:
            raise Overloaded("too many requests are sending their bodies; retry after the time in Retry-After")
        self.listener.unverified_bodies += 1

    async def __aexit__(self, *exc) -> None:
        self.listener.unverified_bodies -= 1


LISTENER = web.AppKey("listener", Listener)


def guard(request: web.BaseRequest, listener: Listener) -> None:
    """What every request meets first (the node's one middleware calls it): a compressed
    body is refused before anything reads it, and any request but ``/health`` is shed at
    once while the admission queue is full. It ends the request head's deadline and marks
    the request as holding no admission slot (:meth:`Admission.leave` frees one it took)."""
    protocol = request.protocol
    arrived = None
    if isinstance(protocol, GuardedRequestHandler):
        arrived, protocol.head_since = protocol.head_since, None
    request[_ADMITTED] = False
    encoding = request.headers.get("Content-Encoding")
    if encoding is not None and (encoding := encoding.strip().lower()) not in ("", "identity"):
        raise UnsupportedEncoding(f"request bodies are taken uncompressed only, not in {encoding[:40]!r}; send "
                                  "them without Content-Encoding")
    # When its first bytes came, so that the time it waited for the busy loop to reach it
    # counts towards queue_timeout too.
    request[_ARRIVED] = arrived if arrived is not None else asyncio.get_running_loop().time()
    if request.path != "/health":
        listener.admission.refuse_if_full()
