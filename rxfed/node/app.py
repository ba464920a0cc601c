"""The node's aiohttp application: parse, check, call the store, reply.

Handlers stay short: they authenticate the request and read its body (rxfed.node.http),
parse the body into a protocol object, call one store operation and answer JSON.
:func:`create_app` wires the API modules (this one, communities, consent), the listener,
metrics and the control socket around one :class:`~rxfed.node.http.NodeState`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable

from aiohttp import web

import rxfed
from rxfed.crypto import b64e, sha256
from rxfed.errors import BadRequest, Conflict, Forbidden, RxfedError, Unauthorized
from rxfed.node.config import NodeConfig, NodeSigningKey
from rxfed.node.http import (MAX_DEVICES, NODE, OWN_PLUGINS, PROTOCOL_VERSIONS, AccountSuspended, Caller, NodeState,
                             admit, authenticate, authenticate_new_device, body_json, node_middleware, reply,
                             reply_bytes, signed_by_a_node)
from rxfed.node.listener import LISTENER, read_body
from rxfed.node.listener import install as install_listener
from rxfed.plugins import NodeContext, RxfedPlugins
from rxfed.protocol import vault as pv
from rxfed.protocol.federation import TXN_ID
from rxfed.protocol.canonical import canonical, loads
from rxfed.protocol.schema import fields
from rxfed.store import NewPatient, Recovery, StoredRecord
from rxfed.store.operations import Store

log = logging.getLogger("rxfed.node")
routes = web.RouteTableDef()


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
        manifest=change.manifest.canonical_bytes(),
        puts=[StoredRecord(p.id, p.version, p.blob) for p in change.puts],
        deletes=[(d.id, d.version) for d in change.deletes], quota=state.quota, nonce=caller.nonce,
        epoch=change.manifest.epoch, base=change.base)
    return reply_bytes(b'{"counter":%d}' % counter)  # canonical({"counter": counter}): the store's int


# -- federation ----------------------------------------------------------------------------


@routes.put("/federation/v1/transactions/{txn}")
async def receive_transaction(request: web.Request) -> web.Response:
    state = request.app[NODE]
    txn_id = request.match_info["txn"]
    if not re.fullmatch(TXN_ID, txn_id):
        raise BadRequest("malformed transaction id (16 to 64 of A-Z a-z 0-9 _ -)", code="bad_txn_id")
    lim = state.config.limits
    # Everything that needs no key comes before the key look-up, which may fetch the
    # origin's document: a request that is not well formed costs a cheap refusal, no fetch.
    # The body is read before its signature is checked, so it counts among the unverified ones.
    signed = signed_by_a_node(state, request, lim.max_body_bytes)
    now = state.now()
    # A work slot before the origin's look-up (a store read), the body, the key fetch and the
    # signature check: shed under load, a transaction has cost its headers only.
    waiting = request.app[LISTENER].admission.take(request)
    if waiting is not None:
        await waiting
    peer = await state.federation.check_inbound(signed.origin)
    async with request.app[LISTENER].unverified():
        raw = await read_body(request, limit=lim.max_body_bytes, timeout=lim.body_timeout)
    txn = state.federation.parse_inbound(signed.origin, txn_id, body_json(raw))
    document = await state.federation.document(signed.origin, need_key=signed.key)
    document.key_for(signed.key, signed.created)
    signed.verify(signed.key, method=request.method, target=request.raw_path, destination=state.config.node_id,
                  body=raw, now=now, window=lim.request_window_seconds)
    nonce = await admit(state, request, signed, now)
    answer = await state.federation.receive(signed.origin, txn, nonce, peer=peer)
    return web.Response(body=answer, content_type="application/json")


# -- the application -----------------------------------------------------------------------


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
    """Record where the store's batches run (event loop or writer thread, commit time,
    counts) for `rxfed node status` when it changed; returns what is now recorded."""
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


async def _store_ctx(app: web.Application):
    state = app[NODE]
    await state.store.open()
    restore = await state.store.get_meta("restore")
    state.restore = loads(restore.encode()) if restore else None
    if state.guards.caches:  # (among several workers the nonces are looked up in the store)
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
            await state.reload_suspended()  # if the operator's command could not tell us
            try:
                await state.insights.tick()  # insights rounds whose phase timed out
            except RxfedError as exc:
                log.warning("insights rounds: %s", exc.message)
            try:
                await state.federation.refresh_policies()  # `rxfed node peers` edits the store
            except RxfedError as exc:
                log.warning("reading peer policies failed: %s", exc.message)
            if ticks % 12 == 0:
                try:
                    await state.store.prune_nonces(state.now())
                    if not state.guards.caches:  # budgets in the store: forget the full ones
                        lim = state.config.limits
                        await state.store.prune_budgets(time.time() - lim.burst / lim.requests_per_second - 60)
                    await state.consent.housekeeping()
                except RxfedError as exc:
                    log.warning("housekeeping failed: %s", exc.message)

    task = asyncio.create_task(housekeeping())
    failed = await state.plugins.node_started(NodeContext(state.config.node_id, state.now, state.store))
    if failed:
        log.warning("plugins %s failed to start; the node serves without them", ", ".join(failed))
    await state.consent.start()
    await state.federation.start()
    await state.matching.start()
    yield
    await state.matching.stop()
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


def create_app(config: NodeConfig, keys: list[NodeSigningKey], *, plugins: RxfedPlugins | None = None,
               store: Store | None = None, clock: Callable[[], float] = time.time,
               worker: int | None = None) -> web.Application:
    """The node application. The store is opened and closed with the application. With
    ``worker`` (one of several processes serving one store, ``node run --workers N``), the
    state that every worker must agree on is kept in the store (:mod:`rxfed.node.shared`)."""
    own_plugins = plugins is None
    if own_plugins:
        plugins = RxfedPlugins(disabled=config.disabled_plugins)
    if store is None:
        options = dict(config.storage)
        backend = plugins.storage_backend(options.pop("backend", "sqlite"))
        store = backend.open(config.data_dir, options)
    from rxfed.node import communities, consent, control, insights, matching, metrics

    state = NodeState(config, keys, store, plugins, clock, worker=worker)
    state.metrics = metrics.NodeMetrics(state)
    app = web.Application(middlewares=[node_middleware(state.metrics.observe, state.listener)],
                          client_max_size=config.limits.max_body_bytes)
    install_listener(app, config.limits)
    app[NODE] = state
    app[OWN_PLUGINS] = own_plugins
    app[LISTENER] = state.listener
    communities.install(state)
    consent.install(state)
    matching.install(state)
    insights.install(state)
    app.add_routes(routes)
    app.add_routes(communities.routes)
    app.add_routes(consent.routes)
    app.add_routes(matching.routes)
    app.add_routes(insights.routes)
    from rxfed.node import clinicians
    from rxfed.node import web as web_client

    clinicians.install(app)

    web_client.install(app)
    app.cleanup_ctx.append(_store_ctx)
    # After the store: the control socket and the metrics listener read it.
    app.cleanup_ctx.append(control.control_ctx)
    if config.metrics_listen and not worker:  # among several workers, the first one's (each on its socket)
        app.cleanup_ctx.append(metrics.metrics_ctx(state.metrics, config.metrics_listen))
    return app
