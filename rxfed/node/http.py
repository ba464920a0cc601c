"""The node's HTTP layer: the application key and state every API module reads, signed
request authentication, JSON replies and the error middleware.

Every API module (app, communities, consent, the control socket) imports from here, and
nothing here imports them: the application (:mod:`rxfed.node.app`) wires them together.
Every error is an :class:`rxfed.errors.RxfedError` mapped to a JSON reply by one
middleware; nothing a client sends can produce a stack trace in a reply.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable
from typing import Any

import attrs
from aiohttp import web

from rxfed.errors import Forbidden, RxfedError, Unauthorized
from rxfed.crypto import SigningKeyPair
from rxfed.node.config import KEYS_FILE, NodeConfig, NodeSigningKey, current_key, load_node_keys, rotation_statements
from rxfed.node.federation import FederationService
from rxfed.node.guards import NonceWindow, RateLimiter
from rxfed.node.shared import LocalGuards, StoreGuards
from rxfed.node.listener import LISTENER, ClientGone, Listener, check_declared_size, guard, read_body
from rxfed.plugins import RxfedPlugins
from rxfed.protocol import vault as pv
from rxfed.protocol.auth import SignedRequest
from rxfed.protocol.canonical import canonical, loads
from rxfed.store import AuthKey, Nonce, Quota
from rxfed.store.operations import Store

log = logging.getLogger("rxfed.node")
PROTOCOL_VERSIONS = ("1",)
MAX_DEVICES = 32


@attrs.define
class NodeState:
    config: NodeConfig
    keys: list[NodeSigningKey]
    store: Store
    plugins: RxfedPlugins
    clock: Callable[[], float] = time.time
    #: This process's index among the workers of ``node run --workers N``, or None (the
    #: node's only process).
    worker: int | None = attrs.field(default=None, kw_only=True)
    nonces: NonceWindow = attrs.Factory(NonceWindow)
    limiter: RateLimiter = None
    #: Where the nonces seen and the signers' budgets are kept (:mod:`rxfed.node.shared`).
    guards: LocalGuards | StoreGuards = None
    anonymous: RateLimiter = None
    federation: FederationService = None
    communities: Any = None
    consent: Any = None
    matching: Any = None
    insights: Any = None
    listener: Listener = None
    verifier: concurrent.futures.ThreadPoolExecutor = attrs.Factory(
        lambda: concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="rxfed-verify"))
    #: Patients whose accounts the operator suspended (``rxfed node accounts``), read from
    #: the store at start, by housekeeping and when the operator's command says so.
    suspended: set[str] = attrs.Factory(set)
    metrics: Any = None
    started: float = attrs.Factory(time.time)
    _auth_keys: dict[bytes, AuthKey] = attrs.Factory(dict)
    _identities: dict[str, pv.IdentityChain] = attrs.Factory(dict)
    _keys_mtime: float = 0.0
    #: The restore statement ``rxfed node restore`` signed (spec/crypto.md section 11), or
    #: None: published with the node's keys and with every vault.
    restore: dict | None = None
    #: (the key list, its public keys and rotation statements), signed once per key list.
    _published: tuple = attrs.field(default=(None, None), init=False)

    def __attrs_post_init__(self) -> None:
        lim = self.config.limits
        self.limiter = RateLimiter(lim.requests_per_second, lim.burst)
        window = lim.request_window_seconds
        self.guards = (LocalGuards(self.nonces, self.limiter, window) if self.worker is None
                       else StoreGuards(self.store, self.limiter, window))
        self.listener = Listener(lim, self.config.trusted_proxies, self.config.forwarded_header)
        self.anonymous = self.listener.anonymous
        self.federation = FederationService(self)

    def signing_key(self) -> SigningKeyPair:
        return current_key(self.keys).key

    def published_keys(self) -> dict:
        """``keys`` and ``rotations`` of ``/.well-known/rxfed``."""
        if self._published[0] is not self.keys:
            self._published = (self.keys, {"keys": [k.to_public_json() for k in self.keys],
                                           "rotations": rotation_statements(self.keys, self.config.node_id)})
        return self._published[1]

    def reload_keys(self) -> None:
        """Pick up keys rotated by ``rxfed node rotate-key`` while the node runs."""
        path = self.config.data_dir / KEYS_FILE
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return
        if mtime != self._keys_mtime:
            if self._keys_mtime:
                self.keys = load_node_keys(self.config.data_dir)
                log.info("node keys reloaded")
            self._keys_mtime = mtime

    def now(self) -> int:
        return int(self.clock())

    @property
    def quota(self) -> Quota:
        return Quota(self.config.limits.max_records, self.config.limits.max_vault_bytes)

    async def auth_key(self, key: bytes) -> AuthKey | None:
        found = self._auth_keys.get(key)
        if found is None:
            found = await self.store.auth_key(key)
            if found is not None and len(self._auth_keys) < 200_000:
                self._auth_keys[key] = found
        return found

    async def identity(self, patient: str) -> pv.IdentityChain:
        """The patient's identity chain as stored (checked when it was accepted), cached until
        the patient rotates or is erased."""
        chain = self._identities.get(patient)
        if chain is None:
            account = await self.store.account(patient)
            statements = await self.store.identity_chain(patient)
            if account is None or not statements:
                raise Unauthorized("unknown or erased account", code="unknown_account")
            chain = pv.IdentityChain.verify(account.root_key, [loads(s) for s in statements])
            # (not among several workers: another may rotate it, and the old recovery key
            # must stop working at once)
            if len(self._identities) < 100_000 and self.guards.caches:
                self._identities[patient] = chain
        return chain

    def forget_patient(self, patient: str) -> None:
        self._identities.pop(patient, None)
        for key in [k for k, a in self._auth_keys.items() if a.patient == patient]:
            del self._auth_keys[key]

    async def reload_suspended(self) -> None:
        """Read the suspended accounts again (``rxfed node accounts`` changed them)."""
        try:
            self.suspended = await self.store.suspended_accounts()
        except RxfedError as exc:
            log.warning("reading suspended accounts failed: %s", exc.message)


NODE = web.AppKey("node", NodeState)
#: Whether the application made its plugin manager (and so closes it).
OWN_PLUGINS = web.AppKey("own_plugins", bool)


@attrs.frozen
class Caller:
    """An authenticated request: who signed it, its nonce and its parsed JSON body."""

    auth: AuthKey
    nonce: Nonce
    body: Any
    now: int

    @property
    def patient(self) -> str:
        return self.auth.patient


async def admit(state: NodeState, request: web.Request, signed: SignedRequest, now: int) -> Nonce:
    """Wait for a work slot (or be shed), then record the nonce: a request shed before its
    nonce is recorded may be sent again as it was."""
    waiting = state.listener.admission.take(request)
    if waiting is not None:
        await waiting
    nonce = state.guards.admit(request, signed, now)
    if not isinstance(nonce, Nonce):
        nonce = await nonce
    return nonce


async def _signed_body(state: NodeState, request: web.Request, signed: SignedRequest, key: bytes, *,
                       limit: int | None = None, rate_limit: bool = False) -> tuple[bytes, Nonce]:
    """The body of a request signed by ``key``, once it holds a work slot (or is shed, before
    anything else), its signature checked and its nonce recorded; with ``rate_limit``, a
    request of the key's budget is spent once the signature is good.

    With a ``Content-Digest`` header (every rxfed client sends one) the signature is checked
    before the body is read, so only a request the key's owner signed makes the node read a
    body; without one the body is read first, counted among the unverified bodies."""
    lim = state.config.limits
    limit = lim.max_body_bytes if limit is None else limit
    listener = state.listener  # the application's LISTENER
    # A work slot first: a request the node sheds under load has cost it its headers only,
    # not a signature check and a body read.
    waiting = listener.admission.take(request)
    if waiting is not None:
        await waiting
    now = state.now()
    if signed.digest is None:
        async with listener.unverified():
            raw = await read_body(request, limit=limit, timeout=lim.body_timeout)
        # Inline, on the event loop: about 50 us of libsodium. Handing it to a worker thread
        # under load measured slower on two cores (community posts at concurrency 16: -15%;
        # record writes: no difference): the GIL hand-backs cost more than the overlap gains.
        signed.verify(key, method=request.method, target=request.raw_path, destination=state.config.node_id, body=raw,
                      now=now, window=lim.request_window_seconds)
        checking = state.guards.check(request, signed, rate_limit, now)
        if checking is not None:
            await checking
    else:
        signed.verify_head(key, method=request.method, target=request.raw_path, destination=state.config.node_id,
                           now=now, window=lim.request_window_seconds)
        # A replay reads no body and spends nothing of the key's budget.
        checking = state.guards.check(request, signed, rate_limit, now)
        if checking is not None:
            await checking
        raw = signed.check_body(await read_body(request, limit=limit, timeout=lim.body_timeout))
    return raw, await admit(state, request, signed, now)


def body_json(raw: bytes) -> Any:
    if not raw:
        return None
    return loads(raw)


def _check_window(state: NodeState, signed: SignedRequest) -> None:
    if abs(state.now() - signed.created) > state.config.limits.request_window_seconds:
        raise Unauthorized("request time is outside the accepted window; check the clock", code="stale_request")


def signed_by_a_node(state: NodeState, request: web.Request, limit: int) -> SignedRequest:
    """The signature headers of a request another node sends (a federation transaction, a
    matching step), checked as far as they can be without a key: its declared size against
    ``limit``, its origin named, its time within the window. A request that fails costs no
    store read, key fetch or body read."""
    check_declared_size(request, limit)
    signed = SignedRequest.from_headers(request.headers)
    if signed.origin is None:
        raise Unauthorized("requests from other nodes name their origin", code="unsigned")
    _check_window(state, signed)
    return signed


class AccountSuspended(Forbidden):
    code = "account_suspended"

    def __init__(self):
        super().__init__("this account is suspended by the node's operator: it may read and export its data, "
                         "delete records, revoke consent, leave communities and erase itself, nothing else")


async def authenticate(request: web.Request, *, kinds: tuple[str, ...] = ("device",),
                       limit: int | None = None, suspended_ok: bool = False) -> Caller:
    """The request's signer and body. The headers and the time window are checked, then the
    request waits for its work slot (or is shed), then the key is looked up and checked, all
    before the body is read (see :func:`_signed_body`). A suspended account is refused (403
    ``account_suspended``) unless ``suspended_ok``: reads of its own data, consent
    revocation and erasure stay open to it, so suspension never holds a patient's data or
    consent hostage."""
    state = request.app[NODE]
    check_declared_size(request, state.config.limits.max_body_bytes if limit is None else limit)
    signed = SignedRequest.from_headers(request.headers)
    _check_window(state, signed)
    # The key's lookup is a store read: it waits for a work slot too (a request signed by a
    # made-up key spends no signer's budget, so nothing else would bound these reads).
    waiting = state.listener.admission.take(request)
    if waiting is not None:
        await waiting
    auth = await state.auth_key(signed.key)
    if auth is None or auth.kind not in kinds:
        raise Unauthorized("unknown signing key", code="unknown_key")
    raw, nonce = await _signed_body(state, request, signed, signed.key, limit=limit, rate_limit=True)
    if not suspended_ok and auth.patient in state.suspended:  # only to a verified signer
        raise AccountSuspended()
    return Caller(auth, nonce, body_json(raw), state.now())


async def authenticate_new_device(request: web.Request, parse: Callable[[Any], Any], sign_key_of: Callable[[Any], bytes]):
    """For a request signed by a key the node does not know yet (registration): the key
    comes from the certificate in the body, which the registration's own first identity
    epoch signs. Anonymous, so rate limited by address and in all, and its body is small."""
    state = request.app[NODE]
    listener = request.app[LISTENER]
    lim = state.config.limits
    listener.take_anonymous(request)
    check_declared_size(request, lim.anonymous_max_body_bytes)
    signed = SignedRequest.from_headers(request.headers)
    _check_window(state, signed)
    waiting = listener.admission.take(request)  # shed under load before its body is read
    if waiting is not None:
        await waiting
    async with listener.unverified():
        raw = await read_body(request, limit=lim.anonymous_max_body_bytes, timeout=lim.body_timeout)
    obj = await parse(body_json(raw))
    if signed.key != sign_key_of(obj):
        raise Unauthorized("the request must be signed by the device it enrols", code="bad_signature")
    now = state.now()
    signed.verify(signed.key, method=request.method, target=request.raw_path, destination=state.config.node_id,
                  body=raw, now=now, window=lim.request_window_seconds)
    return obj, await admit(state, request, signed, now)


def logged_path(request: web.BaseRequest) -> str:
    """A request's path as logs show it: the pattern of the route it matched
    (``/federation/v1/transactions/{txn}``), never the values in it, so that no log line
    ties an address to an id; ``(unmatched)`` for a path no route serves."""
    match_info = getattr(request, "match_info", None)
    route = getattr(match_info, "route", None)
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else "(unmatched)"


def reply(data: Any, status: int = 200) -> web.Response:
    return reply_bytes(canonical(data), status)


def reply_bytes(body: bytes, status: int = 200) -> web.Response:
    """A reply whose body is canonical JSON already."""
    return web.Response(body=body, status=status, content_type="application/json")



# -- replies and errors ---------------------------------------------------------------------


def _error_reply(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    return web.Response(body=canonical({"error": code, "message": message}), status=status,
                        content_type="application/json", headers=headers)


def _reply_for(request: web.BaseRequest, exc: BaseException) -> web.Response:
    """The JSON reply for an error a handler raised (re-raises what is not an error reply)."""
    if isinstance(exc, RxfedError):
        headers = dict(getattr(exc, "headers", None) or {})
        if getattr(exc, "retry_after", None) is not None:
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        return _error_reply(exc.status, exc.code, exc.message, headers or None)
    if isinstance(exc, ClientGone):
        # Nobody to answer (the client left mid-body, or while its request waited).
        log.debug("client left before %s %s was answered", request.method, logged_path(request))
        return _error_reply(499, "client_gone", "the client closed the connection")
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status, "http_error")
        return _error_reply(exc.status, code, exc.reason)
    if not isinstance(exc, Exception):  # cancellation, exit: not ours to answer
        raise exc
    # Never a traceback to the client; the log gets the exception type and location
    # (the node holds no plaintext, so nothing in it can leak a patient's data).
    log.error("internal error handling %s %s", request.method, logged_path(request), exc_info=exc)
    return _error_reply(500, "internal", "internal error; the operator can find details in the node log")


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Every error as a JSON reply (for applications without the node's listener)."""
    try:
        return await handler(request)
    except BaseException as exc:  # noqa: BLE001 - _reply_for re-raises what is not an error reply
        return _reply_for(request, exc)


def node_middleware(observe: Callable[[str, str, int, float], None] | None = None, listener: Listener | None = None):
    """The node's one middleware, around every handler: the listener's guard
    (:func:`rxfed.node.listener.guard`: compressed bodies, a full admission queue), every
    error as a JSON reply, the request's admission slot freed when it is answered, and, with
    ``observe`` (:meth:`rxfed.node.metrics.NodeMetrics.observe`), the request counted and
    timed by route pattern with the status the client gets. One middleware rather than
    three: each layer costs every request a coroutine. ``listener`` is the application's
    LISTENER (looked up on each request when not given)."""
    clock = time.perf_counter
    known = listener

    @web.middleware
    async def node(request: web.Request, handler) -> web.StreamResponse:
        started = clock()
        listener = known if known is not None else request.app[LISTENER]
        try:
            try:
                guard(request, listener)
                response = await handler(request)
            finally:
                listener.admission.leave(request)
        except BaseException as exc:  # noqa: BLE001 - _reply_for re-raises what is not an error reply
            try:
                response = _reply_for(request, exc)
            except web.HTTPException as passed:  # a redirect: counted, then on its way
                if observe is not None:
                    observe(logged_path(request), request.method, passed.status, clock() - started)
                raise
        if observe is not None:
            observe(logged_path(request), request.method, response.status, clock() - started)
        return response

    return node
