"""The node's aiohttp application: parse, check, call the store, reply.

Handlers stay short: they read the body, authenticate the signature (protocol core), parse
the body into a protocol object, call one store operation and answer JSON. Every error is
an :class:`rxfed.errors.RxfedError` mapped to a JSON reply by one middleware; nothing a
client sends can produce a stack trace in a reply.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import attrs
from aiohttp import web

import rxfed
from rxfed.crypto import b64e, sha256
from rxfed.errors import BadRequest, Conflict, Forbidden, RxfedError, Unauthorized
from rxfed.crypto import SigningKeyPair
from rxfed.node.config import KEYS_FILE, NodeConfig, NodeKey, current_key, load_node_keys, rotation_statements
from rxfed.node.federation import Federation
from rxfed.node.guards import NonceWindow, RateLimiter
from rxfed.node.listener import LISTENER, ClientGone, Listener, check_declared_size, guard_middleware, read_body
from rxfed.node.listener import install as install_listener
from rxfed.plugins import RxfedPlugins
from rxfed.protocol import vault as pv
from rxfed.protocol.auth import SignedRequest
from rxfed.protocol.federation import TXN_ID
from rxfed.protocol.canonical import canonical, loads
from rxfed.protocol.schema import fields
from rxfed.store import AuthKey, NewPatient, Nonce, Quota, Recovery, Store, StoredRecord

log = logging.getLogger("rxfed.node")
PROTOCOL_VERSIONS = ("1",)
MAX_DEVICES = 32


@attrs.define
class NodeState:
    config: NodeConfig
    keys: list[NodeKey]
    store: Store
    plugins: RxfedPlugins
    clock: Callable[[], float] = time.time
    nonces: NonceWindow = attrs.Factory(NonceWindow)
    limiter: RateLimiter = None
    anonymous: RateLimiter = None
    federation: Federation = None
    communities: Any = None
    consent: Any = None
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
        self.listener = Listener(lim, self.config.trusted_proxies)
        self.anonymous = self.listener.anonymous
        self.federation = Federation(self)

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
            if len(self._identities) < 100_000:
                self._identities[patient] = chain
        return chain

    def forget_patient(self, patient: str) -> None:
        self._identities.pop(patient, None)
        for key in [k for k, a in self._auth_keys.items() if a.patient == patient]:
            del self._auth_keys[key]


NODE = web.AppKey("node", NodeState)
#: Whether the application made its plugin manager (and so closes it).
OWN_PLUGINS = web.AppKey("own_plugins", bool)
routes = web.RouteTableDef()


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


async def _admit(state: NodeState, request: web.Request, signed: SignedRequest, now: int) -> Nonce:
    """Wait for a work slot (or be shed), then record the nonce: a request shed before its
    nonce is recorded may be sent again as it was."""
    await request.app[LISTENER].admission.enter(request)
    nonce = Nonce(signed.nonce, signed.created + state.config.limits.request_window_seconds)
    state.nonces.add(nonce, now)
    return nonce


async def _signed_body(state: NodeState, request: web.Request, signed: SignedRequest, key: bytes, *,
                       limit: int | None = None, rate_limit: bool = False) -> tuple[bytes, Nonce]:
    """The body of a request signed by ``key``, its signature checked and its nonce recorded;
    with ``rate_limit``, a request of the key's budget is spent once the signature is good.

    With a ``Content-Digest`` header (every rxfed client sends one) the signature is checked
    before the body is read, so only a request the key's owner signed makes the node read a
    body; without one the body is read first, counted among the unverified bodies."""
    lim = state.config.limits
    limit = lim.max_body_bytes if limit is None else limit
    now = state.now()
    where = dict(method=request.method, target=request.raw_path, destination=state.config.node_id, now=now,
                 window=lim.request_window_seconds)
    if signed.digest is None:
        async with request.app[LISTENER].unverified():
            raw = await read_body(request, limit=limit, timeout=lim.body_timeout)
        # Inline, on the event loop: about 50 us of libsodium. Handing it to a worker thread
        # under load measured slower on two cores (community posts at concurrency 16: -15%;
        # record writes: no difference): the GIL hand-backs cost more than the overlap gains.
        signed.verify(key, body=raw, **where)
        if rate_limit:
            state.limiter.take(signed.key)
    else:
        signed.verify_head(key, **where)
        if rate_limit:
            state.limiter.take(signed.key)
        raw = signed.check_body(await read_body(request, limit=limit, timeout=lim.body_timeout))
    return raw, await _admit(state, request, signed, now)


def _json(raw: bytes) -> Any:
    if not raw:
        return None
    return loads(raw)


def _check_window(state: NodeState, signed: SignedRequest) -> None:
    if abs(state.now() - signed.created) > state.config.limits.request_window_seconds:
        raise Unauthorized("request time is outside the accepted window; check the clock", code="stale_request")


class AccountSuspended(Forbidden):
    code = "account_suspended"

    def __init__(self):
        super().__init__("this account is suspended by the node's operator: it may read and export its data, "
                         "delete records, revoke consent, leave communities and erase itself, nothing else")


async def authenticate(request: web.Request, *, kinds: tuple[str, ...] = ("device",),
                       limit: int | None = None, suspended_ok: bool = False) -> Caller:
    """The request's signer and body. The headers, the key and the time window are checked
    before the body is read (see :func:`_signed_body`). A suspended account is refused (403
    ``account_suspended``) unless ``suspended_ok``: reads of its own data, consent
    revocation and erasure stay open to it, so suspension never holds a patient's data or
    consent hostage."""
    state = request.app[NODE]
    check_declared_size(request, state.config.limits.max_body_bytes if limit is None else limit)
    signed = SignedRequest.from_headers(request.headers)
    _check_window(state, signed)
    auth = await state.auth_key(signed.key)
    if auth is None or auth.kind not in kinds:
        raise Unauthorized("unknown signing key", code="unknown_key")
    raw, nonce = await _signed_body(state, request, signed, signed.key, limit=limit, rate_limit=True)
    if not suspended_ok and auth.patient in state.suspended:  # only to a verified signer
        raise AccountSuspended()
    return Caller(auth, nonce, _json(raw), state.now())


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
    async with listener.unverified():
        raw = await read_body(request, limit=lim.anonymous_max_body_bytes, timeout=lim.body_timeout)
    obj = await parse(_json(raw))
    if signed.key != sign_key_of(obj):
        raise Unauthorized("the request must be signed by the device it enrols", code="bad_signature")
    now = state.now()
    signed.verify(signed.key, method=request.method, target=request.raw_path, destination=state.config.node_id,
                  body=raw, now=now, window=lim.request_window_seconds)
    return obj, await _admit(state, request, signed, now)


def logged_path(request: web.BaseRequest) -> str:
    """A request's path as logs show it: the pattern of the route it matched
    (``/federation/v1/transactions/{txn}``), never the values in it, so that no log line
    ties an address to an id; ``(unmatched)`` for a path no route serves."""
    match_info = getattr(request, "match_info", None)
    route = getattr(match_info, "route", None)
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else "(unmatched)"


def reply(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=canonical(data), status=status, content_type="application/json")


# -- public --------------------------------------------------------------------------------


#: Seconds without any write after which a failing store's /health makes a small write of
#: its own, so that a node taken out of rotation sees that its disk has room again.
HEALTH_PROBE_S = 5.0


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    """``{"status": "ok"}``; 503 ``{"status": "failing", "store": ...}`` while the store's
    writes fail (a full disk), so a load balancer or monitor sees what clients see."""
    state = request.app[NODE]
    check = getattr(state.store, "write_health", None)
    store = check() if check is not None else {"writable": True}
    if not store["writable"] and time.time() - store["checked"] >= HEALTH_PROBE_S:
        try:
            await state.store.set_meta("health_probe", str(state.now()))
        except RxfedError:
            pass
        store = check()
    if store["writable"]:
        return reply({"status": "ok"})
    return web.Response(body=canonical({"status": "failing", "store": {
        "writable": False, "since": store["since"], "failed_batches": store["failed_batches"],
        "error": "the disk is full" if "full" in store["error"].lower() else "writes fail (see the node log)"}}),
        status=503, content_type="application/json", headers={"Retry-After": str(round(HEALTH_PROBE_S))})


@routes.get("/.well-known/rxfed")
async def well_known(request: web.Request) -> web.Response:
    state = request.app[NODE]
    config = state.config
    return reply({
        "node_id": config.node_id,
        "name": config.name,
        "software": {"name": "rxfed", "version": rxfed.__version__},
        "protocol_versions": list(PROTOCOL_VERSIONS),
        **state.published_keys(),
        "restore": state.restore,
        "registration": config.registration,
        # What a grant to this node can reach: the client checks a grant against it before
        # the patient signs (spec/consent.md, "What a node offers").
        "plugins": [{"name": m.name, "version": m.version, "reads": list(m.reads), "purposes": list(m.purposes)}
                    for m in state.plugins.offered()],
        "limits": {"max_body_bytes": config.limits.max_body_bytes, "max_records": config.limits.max_records,
                   "max_vault_bytes": config.limits.max_vault_bytes,
                   "request_window_seconds": config.limits.request_window_seconds},
    })


# -- patients ------------------------------------------------------------------------------


def _recovery_row(identity: pv.IdentityStatement, setup: pv.RecoverySetup) -> Recovery:
    return Recovery(identity.recovery_auth, canonical(identity.signed), setup.root_bundle, setup.keyring)


def invite_hash(code: str) -> bytes:
    return sha256(b"rxfed-invite|" + code.replace("-", "").strip().upper().encode())


@routes.post("/v1/patients")
async def register(request: web.Request) -> web.Response:
    state = request.app[NODE]
    mode = state.config.registration
    if mode == "closed":
        raise Forbidden("registration on this node is closed", code="registration_closed")

    async def parse(obj):
        return pv.Registration.from_json(obj)

    reg, nonce = await authenticate_new_device(request, parse, lambda r: r.device.sign_key)
    if mode == "invite" and not reg.invite:
        raise Forbidden("this node registers patients by invitation; pass an invitation code", code="invite_required")
    patient = pv.patient_id(reg.root_key)
    await state.store.register_patient(
        NewPatient(patient, reg.root_key, reg.device.device, reg.device.sign_key, canonical(reg.device.signed),
                   reg.keyring, _recovery_row(reg.identity, reg.recovery), canonical(reg.identity.signed)),
        invite_hash=invite_hash(reg.invite) if mode == "invite" else None, nonce=nonce, now=state.now())
    log.info("patient registered")
    return reply({"patient": patient, "device": reg.device.device}, status=201)


@routes.get("/v1/account")
async def account(request: web.Request) -> web.Response:
    state = request.app[NODE]
    caller = await authenticate(request, suspended_ok=True)
    await state.store.check_signer(caller.patient, caller.auth.device)
    acct = await state.store.account(caller.patient)
    devices = await state.store.devices(caller.patient)
    mine = next((d for d in devices if d.device == caller.auth.device and d.revoked is None), None)
    if acct is None or mine is None:  # revoked or erased in the meantime
        raise Unauthorized("unknown device or account", code="unknown_key")
    chain = await state.store.identity_chain(caller.patient)
    return reply({
        "patient": acct.patient,
        "root_key": b64e(acct.root_key),
        "identity": [loads(s) for s in chain],
        "created": acct.created,
        "counter": acct.counter,
        "records": acct.records,
        "bytes": acct.bytes,
        "quota": {"max_records": state.quota.max_records, "max_bytes": state.quota.max_bytes},
        "devices": [{"device": d.device, "created": d.created, "revoked": d.revoked, "cert": loads(d.cert)}
                    for d in devices],
        "keyring": b64e(mine.keyring),
        "restore": state.restore,
    })


async def _enroller(state: NodeState, caller: Caller, chain: pv.IdentityChain) -> str:
    """Who enrols: the calling device, or ``recovery`` when the current recovery key signs."""
    if caller.auth.kind == "recovery":
        if caller.auth.key != chain.current.recovery_auth:
            raise Unauthorized("unknown recovery key", code="unknown_key")
        return "recovery"
    return caller.auth.device


@routes.post("/v1/devices")
async def enrol_device(request: web.Request) -> web.Response:
    """A new device, enrolled by an active device or by the recovery key (never by itself:
    a device certificate alone proves only that someone holds an epoch's signing key)."""
    state = request.app[NODE]
    caller = await authenticate(request, kinds=("device", "recovery"))
    chain = await state.identity(caller.patient)
    enrolment = pv.DeviceEnrolment.from_json(caller.body, chain, await _enroller(state, caller, chain), caller.auth.key)
    cert = enrolment.device
    await state.store.enrol_device(caller.patient, signer=caller.auth.device, epoch=cert.epoch, device=cert.device,
                                   sign_key=cert.sign_key, cert=canonical(cert.signed), keyring=enrolment.keyring,
                                   nonce=caller.nonce, now=caller.now, max_devices=MAX_DEVICES,
                                   recovery_key=caller.auth.key if caller.auth.kind == "recovery" else None)
    return reply({"patient": caller.patient, "device": cert.device}, status=201)


@routes.post("/v1/identity")
async def rotate_identity(request: web.Request) -> web.Response:
    """A new identity epoch, signed by the master key (which only the recovery code opens):
    revokes every active device it does not certify again, and replaces recovery material.
    Signed by the recovery key, it may also enrol the recovering device in the same step."""
    state = request.app[NODE]
    caller = await authenticate(request, kinds=("device", "recovery"))
    chain = await state.identity(caller.patient)
    enroller = await _enroller(state, caller, chain)
    listed = {}
    for d in await state.store.devices(caller.patient):
        listed[d.device] = (pv.DeviceCert.from_json(loads(d.cert), "device", None).sign_key, d.revoked)
    rotation = pv.IdentityRotation.from_json(caller.body, chain, {d: key for d, (key, _) in listed.items()})
    identity = rotation.identity
    kept, added = {}, {}
    for k in rotation.devices:
        entry = (canonical(k.cert.signed), k.keyring)
        if k.cert.device in listed:
            kept[k.cert.device] = entry
        elif enroller == "recovery" and k.cert.enrolled_by == "recovery" and k.cert.enrolled_epoch == identity.epoch:
            added[k.cert.device] = (k.cert.sign_key, *entry)
        else:
            raise Conflict("a device in the rotation is not a device of this patient", code="unknown_device")
    revoked = await state.store.rotate_identity(
        caller.patient, signer=caller.auth.device, epoch=identity.epoch, identity=canonical(identity.signed),
        devices=kept, added=added, recovery=_recovery_row(identity, rotation.recovery),
        manifest=(rotation.manifest.counter, canonical(rotation.manifest.signed)),
        recovery_key=caller.auth.key if enroller == "recovery" else None, nonce=caller.nonce, now=caller.now)
    state.forget_patient(caller.patient)  # the old recovery key must stop working at once
    log.info("patient identity rotated")
    return reply({"epoch": identity.epoch, "revoked": revoked})


@routes.post("/v1/recovery/bundle")
async def recovery_bundle(request: web.Request) -> web.Response:
    state = request.app[NODE]
    request.app[LISTENER].take_anonymous(request)
    caller = await authenticate(request, kinds=("recovery",), limit=state.config.limits.anonymous_max_body_bytes,
                                suspended_ok=True)
    found = await state.store.recovery_by_key(caller.auth.key)
    if found is None:
        raise Unauthorized("unknown recovery key", code="unknown_key")
    patient, root_key, recovery = found
    chain = await state.store.identity_chain(patient)
    devices = await state.store.devices(patient)
    return reply({"patient": patient, "root_key": b64e(root_key), "identity": [loads(s) for s in chain],
                  "root_bundle": b64e(recovery.root_bundle), "keyring": b64e(recovery.keyring),
                  "devices": [{"device": d.device, "created": d.created, "revoked": d.revoked, "cert": loads(d.cert)}
                              for d in devices]})


@routes.post("/v1/account/erase")
async def erase_account(request: web.Request) -> web.Response:
    state = request.app[NODE]
    caller = await authenticate(request, suspended_ok=True)
    f = fields(caller.body, "erase", {"tombstone": lambda v, w: v})
    pv.parse_tombstone(f["tombstone"], "erase.tombstone", (await state.identity(caller.patient)).current)
    if any(g.revoked is None and g.not_after > caller.now for g, _ in await state.store.grants(caller.patient)):
        # Only the patient's devices can sign the revocations other nodes act on.
        raise Conflict("revoke your live consent grants first, so every node that received signals deletes "
                       "them (the SDK and `rxfed patient delete-account` do this)", code="live_grants")
    await state.store.erase_patient(caller.patient, signer=caller.auth.device, tombstone=canonical(f["tombstone"]),
                                    nonce=caller.nonce, now=caller.now)
    state.forget_patient(caller.patient)
    log.info("patient account erased")
    return reply({"erased": True, "patient": caller.patient})


# -- vault ---------------------------------------------------------------------------------


@routes.get("/v1/vault")
async def get_vault(request: web.Request) -> web.Response:
    state = request.app[NODE]
    # The recovery key reads the vault too: a recovery re-signs the manifest under a new epoch.
    caller = await authenticate(request, kinds=("device", "recovery"), suspended_ok=True)
    vault = await state.store.vault(caller.patient, caller.auth.device)
    return reply({
        "manifest": loads(vault.manifest) if vault.manifest else None,
        "records": [{"id": r.id, "version": r.version, "blob": b64e(r.blob)} for r in vault.records],
        "restore": state.restore,
    })


@routes.post("/v1/vault")
async def commit(request: web.Request) -> web.Response:
    state = request.app[NODE]
    caller = await authenticate(request, suspended_ok=True)
    change = pv.Commit.from_json(caller.body, caller.patient)
    if change.puts and caller.patient in state.suspended:
        raise AccountSuspended()  # deleting stays open (leaving a community deletes its record)
    counter = await state.store.commit(
        caller.patient, signer=caller.auth.device, counter=change.manifest.counter,
        manifest=canonical(change.manifest.signed),
        puts=[StoredRecord(p.id, p.version, p.blob) for p in change.puts],
        deletes=[(d.id, d.version) for d in change.deletes], quota=state.quota, nonce=caller.nonce,
        epoch=change.manifest.epoch, base=change.base)
    return reply({"counter": counter})


# -- federation ----------------------------------------------------------------------------


@routes.put("/federation/v1/transactions/{txn}")
async def receive_transaction(request: web.Request) -> web.Response:
    state = request.app[NODE]
    txn_id = request.match_info["txn"]
    if not re.fullmatch(TXN_ID, txn_id):
        raise BadRequest("malformed transaction id (16 to 64 of A-Z a-z 0-9 _ -)", code="bad_txn_id")
    lim = state.config.limits
    check_declared_size(request, lim.max_body_bytes)
    # Everything that needs no key comes before the key look-up, which may fetch the
    # origin's document: a request that is not well formed costs a cheap refusal, no fetch.
    # The body is read before its signature is checked, so it counts among the unverified ones.
    signed = SignedRequest.from_headers(request.headers)
    if signed.origin is None:
        raise Unauthorized("federation requests name their origin", code="unsigned")
    peer = await state.federation.check_inbound(signed.origin)
    now = state.now()
    if abs(now - signed.created) > lim.request_window_seconds:
        raise Unauthorized("request time is outside the accepted window; check the clock", code="stale_request")
    async with request.app[LISTENER].unverified():
        raw = await read_body(request, limit=lim.max_body_bytes, timeout=lim.body_timeout)
    txn = state.federation.parse_inbound(signed.origin, txn_id, _json(raw))
    document = await state.federation.document(signed.origin, need_key=signed.key)
    document.key_for(signed.key, signed.created)
    signed.verify(signed.key, method=request.method, target=request.raw_path, destination=state.config.node_id,
                  body=raw, now=now, window=lim.request_window_seconds)
    nonce = await _admit(state, request, signed, now)
    reply_bytes = await state.federation.receive(signed.origin, txn, nonce, peer=peer)
    return web.Response(body=reply_bytes, content_type="application/json")


# -- the application -----------------------------------------------------------------------


def _error_reply(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    return web.Response(body=canonical({"error": code, "message": message}), status=status,
                        content_type="application/json", headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RxfedError as exc:
        headers = dict(getattr(exc, "headers", None) or {})
        if getattr(exc, "retry_after", None) is not None:
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        return _error_reply(exc.status, exc.code, exc.message, headers or None)
    except ClientGone:
        # Nobody to answer (the client left mid-body, or while its request waited).
        log.debug("client left before %s %s was answered", request.method, logged_path(request))
        return _error_reply(499, "client_gone", "the client closed the connection")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status, "http_error")
        return _error_reply(exc.status, code, exc.reason)
    except asyncio.CancelledError:
        raise
    except Exception:
        # Never a traceback to the client; the log gets the exception type and location
        # (the node holds no plaintext, so nothing in it can leak a patient's data).
        log.exception("internal error handling %s %s", request.method, logged_path(request))
        return _error_reply(500, "internal", "internal error; the operator can find details in the node log")


def store_writable(state: NodeState) -> bool:
    check = getattr(state.store, "write_health", None)
    return check is None or check()["writable"]


async def report_plugins(state: NodeState, reported: list | None) -> list | None:
    """Record plugin health for `rxfed node status` (another process) when it changed;
    returns what is now recorded."""
    plugins = [s.to_json() for s in state.plugins.status()]
    if plugins == reported:
        return reported
    try:
        await state.store.set_meta("plugins_status", canonical({"at": state.now(), "plugins": plugins}).decode())
    except RxfedError as exc:
        if store_writable(state):  # else the store logged that its writes fail, once
            log.warning("recording plugin status failed: %s", exc.message)
        return reported
    return plugins


async def report_store(state: NodeState, reported: dict | None) -> dict | None:
    """Record where the store commits (event loop or writer thread, commit time, counts)
    for `rxfed node status` when it changed; returns what is now recorded."""
    status = getattr(state.store, "commit_status", None)
    if status is None:
        return reported
    now = status()
    if now == reported:
        return reported
    try:
        await state.store.set_meta("store_status", canonical({"at": state.now(), **now}).decode())
    except RxfedError as exc:
        if store_writable(state):  # else the store logged that its writes fail, once
            log.warning("recording store status failed: %s", exc.message)
        return reported
    return now


async def reload_suspended(state: NodeState) -> None:
    """Read the suspended accounts again (``rxfed node accounts`` changed them)."""
    try:
        state.suspended = await state.store.suspended_accounts()
    except RxfedError as exc:
        log.warning("reading suspended accounts failed: %s", exc.message)


async def _store_ctx(app: web.Application):
    state = app[NODE]
    await state.store.open()
    restore = await state.store.get_meta("restore")
    state.restore = loads(restore.encode()) if restore else None
    state.nonces.load(await state.store.load_nonces(state.now()))
    state.suspended = await state.store.suspended_accounts()
    state.reload_keys()

    async def housekeeping():
        ticks, reported, reported_store = 0, None, None
        while True:
            await asyncio.sleep(5)
            ticks += 1
            state.reload_keys()
            reported = await report_plugins(state, reported)
            reported_store = await report_store(state, reported_store)
            await reload_suspended(state)  # if the operator's command could not tell us
            try:
                await state.federation.refresh_policies()  # `rxfed node peers` edits the store
            except RxfedError as exc:
                log.warning("reading peer policies failed: %s", exc.message)
            if ticks % 12 == 0:
                try:
                    await state.store.prune_nonces(state.now())
                    await state.consent.housekeeping()
                except RxfedError as exc:
                    log.warning("housekeeping failed: %s", exc.message)

    task = asyncio.create_task(housekeeping())
    await state.consent.start()
    await state.federation.start()
    yield
    await state.consent.stop()
    await state.federation.stop()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    await state.store.close()
    state.verifier.shutdown(wait=False)
    if app.get(OWN_PLUGINS):
        state.plugins.close()


def create_app(config: NodeConfig, keys: list[NodeKey], *, plugins: RxfedPlugins | None = None,
               store: Store | None = None, clock: Callable[[], float] = time.time) -> web.Application:
    """The node application. The store is opened and closed with the application."""
    own_plugins = plugins is None
    if own_plugins:
        plugins = RxfedPlugins(disabled=config.disabled_plugins)
    if store is None:
        options = dict(config.storage)
        backend = plugins.storage_backend(options.pop("backend", "sqlite"))
        store = backend.open(config.data_dir, options)
    from rxfed.node import communities, consent, control, metrics

    state = NodeState(config, keys, store, plugins, clock)
    state.metrics = metrics.NodeMetrics(state)
    app = web.Application(middlewares=[metrics.middleware(state.metrics), error_middleware, guard_middleware],
                          client_max_size=config.limits.max_body_bytes)
    install_listener(app, config.limits)
    app[NODE] = state
    app[OWN_PLUGINS] = own_plugins
    app[LISTENER] = state.listener
    communities.install(state)
    consent.install(state)
    app.add_routes(routes)
    app.add_routes(communities.routes)
    app.add_routes(consent.routes)
    from rxfed.node import web as web_client

    web_client.install(app)
    app.cleanup_ctx.append(_store_ctx)
    # After the store: the control socket and the metrics listener read it.
    app.cleanup_ctx.append(control.control_ctx)
    if config.metrics_listen:
        app.cleanup_ctx.append(metrics.metrics_ctx(state.metrics, config.metrics_listen))
    return app
