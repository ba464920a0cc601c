"""Consent on a node: patients' grants and revocations (home node), signals received under
grant tokens (any node), handing them to plugins, and the audit chain.

Everything that reaches a plugin passed three checks here: the token is signed by the
patient's pseudonymous key and vouched for by its home node; it is live (not revoked, not
expired) and for this node; the plugin's manifest reads the kind and serves the purpose, and
the token's recipient covers the plugin. Every hand-over is logged in the patient's audit
chain on their home node (directly, or reported back over federation).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from aiohttp import web

from rxfed.consent import audit as pa
from rxfed.consent import grants as consent_grants
from rxfed.consent.signals import MAX_SIGNALS, Signal, SignalError
from rxfed.consent.tokens import TokenOutcome
from rxfed.crypto import DecryptionFailed, b64e, open_as_any_node_key
from rxfed.errors import BadRequest, Conflict, Forbidden, Gone, NotFound, RxfedError, Unavailable
from rxfed.node.http import NODE, authenticate, reply
from rxfed.node.federation import InboundEffects
from rxfed.protocol.canonical import canonical, loads
from rxfed.protocol.federation import EventResult, WireEvent
from rxfed.protocol.schema import anything, array, b64, fields, integer, mapping, text
from rxfed.store import GrantRow, ReceivedToken, TokenRow

log = logging.getLogger("rxfed.consent")
routes = web.RouteTableDef()
SIGNALS = "consent.signals"
USED = "consent.used"
REVOKE = "consent.revoke"
ACK = "consent.ack"
#: The largest sealed signal batch accepted (bytes after base64 decoding).
MAX_SEALED = 256 * 1024
#: Deliveries waiting for plugins beyond which a node asks senders to come back later.
MAX_QUEUED = 10_000


class ConsentService:
    """A node's consent machinery (installed as ``state.consent``)."""

    def __init__(self, state):
        self.node = state
        #: Deliveries from other nodes waiting to be handed to plugins, in arrival order.
        self._deliveries: asyncio.Queue = asyncio.Queue()
        self._worker: asyncio.Task | None = None

    async def start(self) -> None:
        self._worker = asyncio.create_task(self._hand_over_worker())

    async def stop(self, grace: float = 2.0) -> None:
        """Hand over what is queued (for at most ``grace`` seconds), then stop."""
        if self._worker is None:
            return
        try:
            await asyncio.wait_for(self._deliveries.join(), grace)
        except TimeoutError:
            log.warning("stopping with %d deliveries not yet handed to plugins (they are kept; the "
                        "patient's next delivery replaces them)", self._deliveries.qsize())
        self._worker.cancel()
        try:
            await self._worker
        except asyncio.CancelledError:
            pass
        self._worker = None

    @property
    def me(self) -> str:
        return self.node.config.node_id

    def kinds(self):
        return self.node.plugins.signal_kinds()

    def my_keys(self) -> list[bytes]:
        return [k.key.public for k in self.node.keys]

    async def keys_of(self, node_id: str) -> list[bytes]:
        if node_id == self.me:
            return self.my_keys()
        return [k.public_key for k in (await self.node.federation.document(node_id)).keys]

    async def seal_key_of(self, node_id: str) -> bytes:
        """The key to seal signals to: the node's newest key without an end date."""
        if node_id == self.me:
            return self.node.signing_key().public
        keys = (await self.node.federation.document(node_id)).keys
        return max(keys, key=lambda k: (k.valid_until is None, k.valid_from)).public_key

    async def federated(self) -> list[str]:
        """This node first, then the peers it federates with (allowed)."""
        peers = sorted(p.node_id for p in await self.node.store.peers() if p.policy == "allowed")
        return [self.me, *peers]

    # -- receiving signals (any node) ------------------------------------------------------
    def _received(self, token: consent_grants.Token, voucher: dict | None) -> ReceivedToken:
        return ReceivedToken(token.id, token.home, token.subject, token.subject_key, token.kind, token.purpose,
                             str(token.recipient), token.not_after, canonical(token.signed),
                             canonical(voucher) if voucher is not None else None, self.node.now())

    def _open(self, sealed: bytes, token: consent_grants.Token, delivery: str) -> tuple[int, list[dict]]:
        try:
            plaintext = open_as_any_node_key([key.key for key in self.node.keys], sealed)
        except DecryptionFailed:
            raise Forbidden("the signals are sealed to another node", code="not_for_this_node") from None
        seq, items = consent_grants.open_delivery(loads(plaintext), token, delivery)
        if len(items) > MAX_SIGNALS:
            raise SignalError(f"a delivery holds a list of at most {MAX_SIGNALS} signals")
        kinds = self.kinds()
        out = []
        for i, item in enumerate(items):
            f = fields(item, f"signals[{i}]", {"kind": text(96), "body": anything})
            if f["kind"] != token.kind:
                raise Forbidden(f"signals[{i}] is a {f['kind']} signal; the grant covers {token.kind} only",
                                code="widened_grant")
            out.append(kinds[token.kind].validate(f["body"]))
        return seq, out

    async def receive(self, origin: str, content: Any) -> tuple[list[str], int, consent_grants.Token, str]:
        """Check and keep one delivery and hand it to plugins. Returns the plugins that took
        it, the signal count, the token and the delivery id."""
        token, signals, delivery = await self.keep(origin, content)
        return await self.dispatch(token, signals), len(signals), token, delivery

    async def keep(self, origin: str, content: Any) -> tuple[consent_grants.Token, list[Signal], str]:
        """Check one delivery and keep its signals (replacing the token's previous ones)."""
        f = fields(content, "signals", {"token": anything, "voucher": anything, "delivery": text(32, consent_grants.ID),
                                        "sealed": b64(max_length=MAX_SEALED)})
        token = consent_grants.Token.from_json(f["token"])
        if token.home != origin:
            raise Forbidden("a token travels from its own home node", code="wrong_origin")
        consent_grants.check_voucher(f["voucher"], token, await self.keys_of(origin))
        token.check_live(self.me, self.node.now(), self.kinds())
        seq, bodies = self._open(f["sealed"], token, f["delivery"])
        outcome = await self.node.store.receive_signals(self._received(token, f["voucher"]), f["delivery"],
                                                         [(token.kind, canonical(b)) for b in bodies], seq=seq)
        if outcome is TokenOutcome.REVOKED:
            raise Gone("the consent grant was revoked", code="grant_revoked")
        if outcome is TokenOutcome.STALE:
            raise Conflict("a newer delivery under this grant was kept already", code="stale_delivery")
        # A duplicate (the store kept it, the reply was lost) is handed over again: a
        # delivery replaces the previous one under the same token, so plugins stay correct.
        return token, [Signal(token.kind, b, token.subject, token.purpose, token.id, origin, self.node.now())
                       for b in bodies], f["delivery"]

    async def dispatch(self, token: consent_grants.Token, signals: list[Signal]) -> list[str]:
        """Hand a kept delivery to the plugins it covers; the names of those that took it."""
        if signals:
            return await self.hand_over(token, signals)
        # the patient's records give nothing any more: plugins drop what the token gave
        await self._tell_plugins(self._received(token, None))
        return []

    async def _hand_over_worker(self) -> None:
        """Hands deliveries from other nodes to plugins, one at a time and in order, apart
        from the federation transaction that brought them: a slow plugin (each call has its
        timeout) delays plugins, never the sending node's delivery. Then reports the use."""
        while True:
            origin, token, signals, delivery = await self._deliveries.get()
            try:
                taken = await self.dispatch(token, signals)
                await self.node.store.enqueue([(origin, _wire(USED, {
                    "token": token.id, "delivery": delivery, "count": len(signals), "plugins": taken}))],
                    self.node.now())
                self.node.federation.notify()
            except RxfedError as exc:
                log.warning("handing a delivery to plugins failed: %s", exc.message)
            finally:
                self._deliveries.task_done()

    async def hand_over(self, token: consent_grants.Token, signals: list[Signal]) -> list[str]:
        plugins = self.node.plugins
        taken = []
        for name in plugins.recipients(token.kind, token.purpose, only=token.recipient.only_plugin()):
            if token.recipient.covers(self.me, name) and await plugins.deliver_signals(name, signals):
                taken.append(name)
        return taken

    async def revoked(self, token: consent_grants.Token | ReceivedToken, revocation: dict | None) -> list[str]:
        """Delete what was received under ``token`` and tell the plugins that may hold some.
        Returns the plugins that could not confirm (failed, timed out, or disabled)."""
        row = self._received(token, None) if isinstance(token, consent_grants.Token) else token
        if revocation is not None or row.revoked is None:
            await self.node.store.revoke_received(row, canonical(revocation) if revocation else None, self.node.now())
        return await self._tell_plugins(row)

    async def _tell_plugins(self, row: ReceivedToken) -> list[str]:
        recipient = consent_grants.Recipient.parse(row.recipient)
        unconfirmed = []
        for name in self.node.plugins.holders(row.kind, row.purpose, only=recipient.only_plugin()):
            if recipient.covers(self.me, name) and not await self.node.plugins.consent_revoked(
                    name, row.token, row.subject):
                unconfirmed.append(name)
        if unconfirmed:
            log.warning("plugins %s could not confirm deleting a revoked grant's signals", ", ".join(unconfirmed))
        return unconfirmed

    # -- federation handlers ---------------------------------------------------------------
    async def on_signals(self, origin: str, events: list[WireEvent]):
        if self._deliveries.qsize() >= MAX_QUEUED:
            raise Unavailable("this node's plugins are behind; deliver later")
        results, kept = [], []
        for event in events:
            try:
                token, signals, delivery = await self.keep(origin, event.content)
            except RxfedError as exc:
                log.info("signals from %s refused: %s", origin, exc.code)
                results.append(EventResult(False, exc.code, exc.message))
                continue
            results.append(EventResult(True))
            kept.append((origin, token, signals, delivery))
        # Queued for plugins once the transaction is committed. A delivery kept here and then
        # re-applied after a lost reply is queued again: deliveries replace each other, so
        # plugins stay correct, and the home node logs each delivery's use once.
        effects = InboundEffects(after_commit=[lambda item=item: self._deliveries.put_nowait(item) for item in kept])
        return results, effects

    async def on_revoke(self, origin: str, events: list[WireEvent]):
        results, effects = [], InboundEffects()
        for event in events:
            try:
                f = fields(event.content, "revoke", {"token": anything, "revocation": anything})
                token = consent_grants.Token.from_json(f["token"])
                if token.home != origin or token.node != self.me:
                    raise Forbidden("the token is not from this origin or not for this node", code="wrong_origin")
                consent_grants.check_token_revocation(f["revocation"], token.id, token.subject_key)
                unconfirmed = await self.revoked(token, f["revocation"])
            except RxfedError as exc:
                results.append(EventResult(False, exc.code, exc.message))
                continue
            results.append(EventResult(True))
            ack = self.acknowledge(token.id, f["revocation"], unconfirmed)
            effects.outbox.append((origin, _wire(ACK, {"token": token.id, "ack": ack.signed})))
        return results, effects

    def acknowledge(self, token_id: str, revocation: dict, unconfirmed: list[str]) -> consent_grants.Acknowledgement:
        """This node's signed statement that it deleted what ``token_id`` gave it."""
        return consent_grants.Acknowledgement.create(self.node.signing_key(), token=token_id, node=self.me, revocation=revocation,
                                         unconfirmed=unconfirmed, now=self.node.now())

    async def on_used(self, origin: str, events: list[WireEvent]):
        results = []
        for event in events:
            try:
                f = fields(event.content, "used", {"token": text(32, consent_grants.ID), "delivery": text(32, consent_grants.ID),
                                                   "count": integer(0, MAX_SIGNALS),
                                                   "plugins": array(text(40, consent_grants.PLUGIN), 64)})
                await self.log_use(origin, f["token"], f["delivery"], f["count"], f["plugins"])
            except RxfedError as exc:
                results.append(EventResult(False, exc.code, exc.message))
                continue
            results.append(EventResult(True))
        return results, InboundEffects()

    async def on_ack(self, origin: str, events: list[WireEvent]):
        results = []
        for event in events:
            try:
                f = fields(event.content, "ack", {"token": text(32, consent_grants.ID), "ack": anything})
                await self.log_ack(origin, f["token"], f["ack"])
            except RxfedError as exc:
                results.append(EventResult(False, exc.code, exc.message))
                continue
            results.append(EventResult(True))
        return results, InboundEffects()

    # -- the home node's side --------------------------------------------------------------
    async def _own_token(self, token_id: str, node: str) -> tuple[GrantRow, TokenRow]:
        found = await self.node.store.grant_of_token(token_id)
        if found is None or found[1].node != node:
            raise NotFound("no such grant token sent to that node", code="unknown_grant")
        return found

    async def log_use(self, node: str, token_id: str, delivery: str, count: int, plugins: list[str]) -> None:
        """Log ``node``'s report of one delivery's use: once, and only for a delivery the
        patient made under that token to that node (a recipient cannot pad the log)."""
        grant, _ = await self._own_token(token_id, node)
        named = consent_grants.Recipient.parse(grant.recipient).only_plugin()
        names = sorted({p for p in plugins if named is None or p == named})
        entries = [{"event": "used", "grant": grant.id, "node": node, "plugin": name, "purpose": grant.purpose,
                    "kind": grant.kind, "count": count} for name in names]
        await self.node.store.delivery_used(token_id, node, delivery, entries, self.node.now())

    async def log_ack(self, node: str, token_id: str, ack: Any) -> None:
        """Keep ``node``'s signed acknowledgement of a revoked token and log it (with the
        plugins there that could not confirm deleting). The patient's client checks the
        signature itself, against the keys ``node`` publishes; checking here too keeps a
        broken or misdirected one out of the log."""
        grant, token = await self._own_token(token_id, node)
        if token.revocation is None:
            raise Conflict("that grant token is not revoked", code="not_revoked")
        checked = consent_grants.Acknowledgement.check(ack, token=token_id, node=node, revocation=loads(token.revocation),
                                           node_keys=await self.keys_of(node))
        entry = {"event": "acknowledged", "grant": grant.id, "node": node, "ack": checked.signed}
        if checked.unconfirmed:
            entry["unconfirmed"] = list(checked.unconfirmed)
        await self.node.store.token_acknowledged(token_id, node, ack=canonical(checked.signed), audit=[entry],
                                                 now=self.node.now())

    async def housekeeping(self) -> None:
        """Delete signals whose grant ended and tell the plugins."""
        for row in await self.node.store.expire_received(self.node.now()):
            await self._tell_plugins(row)


def _wire(kind: str, content: dict) -> bytes:
    return canonical(WireEvent(kind, content).to_json())


# -- client API ----------------------------------------------------------------------------


@routes.get("/v1/consent/nodes")
async def nodes(request: web.Request) -> web.Response:
    """The nodes a grant can reach from here, with the keys to seal signals to."""
    state = request.app[NODE]
    caller = await authenticate(request)
    await state.store.check_signer(caller.patient, caller.auth.device)
    federated = await state.consent.federated()
    # Fetched together: a peer that is down costs one timeout, not one per peer.
    keys = await asyncio.gather(*(state.consent.seal_key_of(n) for n in federated), return_exceptions=True)
    for key in keys:
        if isinstance(key, BaseException) and not isinstance(key, RxfedError):
            raise key
    out = [{"node_id": node_id, "seal_key": b64e(key)} for node_id, key in zip(federated, keys)
           if isinstance(key, bytes)]  # an RxfedError: unreachable right now, so not offered
    return reply({"home": state.config.node_id, "nodes": out,
                  "kinds": [k.to_json() for k in state.consent.kinds().values()]})


@routes.post("/v1/consent/grants")
async def add_grant(request: web.Request) -> web.Response:
    state = request.app[NODE]
    consent: ConsentService = state.consent
    caller = await authenticate(request)
    f = fields(caller.body, "grant request", {"grant": anything, "tokens": array(anything, 64)})
    grant = consent_grants.Grant.from_json(f["grant"], caller.auth.key)
    now = caller.now
    if grant.patient != caller.patient or grant.device != caller.auth.device:
        raise Forbidden("a grant is signed by the patient's own device", code="bad_grant")
    if abs(grant.issued - now) > consent_grants.SKEW:
        raise consent_grants.ConsentError("the grant's issue time is off; check the clock", code="bad_date")
    if grant.not_after <= now:
        raise Gone("the grant has already expired", code="grant_expired")
    if grant.kind not in consent.kinds():
        raise consent_grants.ConsentError(f"unknown signal kind {grant.kind!r}; `rxfed patient consent recipients` lists the "
                              "kinds this node knows", code="unknown_kind")
    federated = await consent.federated()
    tokens = [consent_grants.Token.from_json(t) for t in f["tokens"]]
    nodes = sorted(t.node for t in tokens)
    if len(set(nodes)) != len(nodes) or {t.id for t in tokens} != set(grant.tokens):
        raise consent_grants.ConsentError("one token per recipient node, each listed in the grant", code="bad_grant")
    for token in tokens:
        if not token.matches(grant) or token.home != state.config.node_id:
            raise Forbidden("a token's scope differs from its grant's", code="widened_grant")
        if token.node not in federated:
            raise consent_grants.ConsentError(f"{token.node} is not a node this one federates with", code="unknown_node")
    if tuple(nodes) != grant.nodes:  # one token for each node the patient named, no other
        raise Forbidden("the tokens' nodes differ from the nodes the grant names", code="widened_grant")
    if grant.recipient.kind == "plugin" and grant.recipient.node == state.config.node_id:
        manifest = state.plugins.manifests().get(grant.recipient.plugin)
        if manifest is None or not manifest.accepts(grant.kind, grant.purpose):
            raise consent_grants.ConsentError(f"no plugin {grant.recipient.plugin!r} on this node reads {grant.kind} for "
                                  f"{grant.purpose}; `rxfed patient consent recipients` lists what each node offers",
                                  code="unknown_plugin")
    rows = [TokenRow(t.id, grant.id, t.node, canonical(t.signed), canonical(consent_grants.voucher(state.signing_key(), t, now)))
            for t in tokens]
    row = GrantRow(grant.id, grant.patient, grant.kind, grant.purpose, str(grant.recipient), grant.not_after, now,
                   canonical(grant.signed))
    await state.store.add_grant(row, rows, signer=caller.auth.device, nonce=caller.nonce, now=now, audit=[{
        "event": "granted", "grant": grant.id, "kind": grant.kind, "purpose": grant.purpose,
        "recipient": str(grant.recipient), "nodes": list(grant.nodes), "not_after": grant.not_after}])
    log.info("consent grant recorded")
    return reply({"grant": grant.id, "not_after": grant.not_after,
                  "tokens": [{"token": t.token, "node": t.node, "voucher": loads(t.voucher)} for t in rows]},
                 status=201)


@routes.get("/v1/consent/grants")
async def list_grants(request: web.Request) -> web.Response:
    state = request.app[NODE]
    caller = await authenticate(request, suspended_ok=True)
    await state.store.check_signer(caller.patient, caller.auth.device)
    out = []
    for grant, tokens in await state.store.grants(caller.patient):
        out.append({
            "grant": grant.id, "kind": grant.kind, "purpose": grant.purpose, "recipient": grant.recipient,
            "not_after": grant.not_after, "created": grant.created, "revoked": grant.revoked,
            "statement": loads(grant.statement),
            "tokens": [{"token": t.token, "node": t.node, "statement": loads(t.statement),
                        "voucher": loads(t.voucher), "shared": t.shared, "seq": t.seq,
                        "revocation": loads(t.revocation) if t.revocation else None,
                        "acknowledged": t.acked, "ack": loads(t.ack) if t.ack else None}
                       for t in tokens]})
    return reply({"grants": out})


@routes.post("/v1/consent/signals")
async def share(request: web.Request) -> web.Response:
    """Signals sealed to the token's node, sent under a live grant."""
    state = request.app[NODE]
    consent: ConsentService = state.consent
    caller = await authenticate(request)
    f = fields(caller.body, "share", {"token": text(32, consent_grants.ID), "delivery": text(32, consent_grants.ID),
                                      "seq": integer(1, consent_grants.MAX_SEQ), "sealed": b64(max_length=MAX_SEALED),
                                      "count": integer(0, MAX_SIGNALS)})
    # ``count`` is the patient's own figure for their audit log; the node cannot check it.
    # ``seq`` is the one sealed inside: the node keeps the last one per token and tells the
    # patient's devices (``GET /v1/consent/grants``), so each continues from it. It is random
    # steps, so it tells the node nothing; a node that lies about it only makes deliveries
    # fail, which it could do by dropping them.
    found = await state.store.grant_of_token(f["token"])
    if found is None or found[0].patient != caller.patient:
        raise NotFound("no such grant token", code="unknown_grant")
    grant, token = found
    if grant.revoked is not None:
        raise Gone("the consent grant was revoked", code="grant_revoked")
    if grant.not_after <= caller.now:
        raise Gone("the consent grant has expired", code="grant_expired")
    content = {"token": loads(token.statement), "voucher": loads(token.voucher), "delivery": f["delivery"],
               "sealed": b64e(f["sealed"])}
    local = token.node == state.config.node_id
    outbox = [] if local else [(token.node, _wire(SIGNALS, content))]
    # Each recipient gets its delivery after its own random delay, so the deliveries of one
    # share (to the recipients of one grant) do not arrive at the same moment everywhere.
    delay = state.config.federation.signal_delay
    await state.store.mark_shared(token.token, patient=caller.patient, signer=caller.auth.device,
                                  delivery=f["delivery"], seq=f["seq"], outbox=outbox,
                                  not_before=caller.now + secrets.randbelow(delay + 1) if delay else 0,
                                  nonce=caller.nonce, now=caller.now, audit=[{
                                      "event": "shared", "grant": grant.id, "node": token.node,
                                      "kind": grant.kind, "count": f["count"]}])
    if not local:
        state.federation.notify()
        return reply({"token": token.token, "node": token.node, "queued": True}, status=202)
    taken, count, _, delivery = await consent.receive(state.config.node_id, content)
    await consent.log_use(state.config.node_id, token.token, delivery, count, taken)
    return reply({"token": token.token, "node": token.node, "queued": False, "plugins": taken})


@routes.post("/v1/consent/revoke")
async def revoke(request: web.Request) -> web.Response:
    state = request.app[NODE]
    consent: ConsentService = state.consent
    caller = await authenticate(request, suspended_ok=True)
    f = fields(caller.body, "revoke", {"grant": text(32, consent_grants.ID), "revocation": anything,
                                       "tokens": mapping(text(32, consent_grants.ID), anything, 64)})
    mine = {g.id: (g, t) for g, t in await state.store.grants(caller.patient)}
    if f["grant"] not in mine:
        raise NotFound("no such grant", code="unknown_grant")
    grant, tokens = mine[f["grant"]]
    if grant.revoked is not None:
        raise Gone("the grant is already revoked", code="grant_revoked")
    consent_grants.check_grant_revocation(f["revocation"], grant.id, caller.auth.key)
    if set(f["tokens"]) != {t.token for t in tokens}:
        raise BadRequest("a revocation covers every token of the grant", code="bad_revocation")
    parsed = {}
    for t in tokens:
        token = consent_grants.Token.from_json(loads(t.statement))
        consent_grants.check_token_revocation(f["tokens"][t.token], t.token, token.subject_key)
        parsed[t.token] = token
    outbox = [(t.node, _wire(REVOKE, {"token": loads(t.statement), "revocation": f["tokens"][t.token]}))
              for t in tokens if t.node != state.config.node_id]
    # Like deliveries, each recipient's revocation leaves after its own random delay, so the
    # revocations of one grant do not arrive at the same moment everywhere.
    delay = state.config.federation.signal_delay
    hold = {node: caller.now + secrets.randbelow(delay + 1) for node, _ in outbox} if delay else None
    await state.store.revoke_grant(
        caller.patient, grant.id, signer=caller.auth.device, revocation=canonical(f["revocation"]),
        token_revocations={k: canonical(v) for k, v in f["tokens"].items()}, outbox=outbox, nonce=caller.nonce,
        not_before=hold,
        now=caller.now, audit=[{"event": "revoked", "grant": grant.id}])
    for t in tokens:
        if t.node == state.config.node_id:  # takes effect here at once
            unconfirmed = await consent.revoked(parsed[t.token], f["tokens"][t.token])
            ack = consent.acknowledge(t.token, f["tokens"][t.token], unconfirmed)
            await consent.log_ack(t.node, t.token, ack.signed)
    if outbox:
        state.federation.notify()
    log.info("consent grant revoked")
    return reply({"grant": grant.id, "revoked": caller.now,
                  "pending": sorted(t.node for t in tokens if t.node != state.config.node_id)})


@routes.get("/v1/consent/audit")
async def audit_log(request: web.Request) -> web.Response:
    state = request.app[NODE]
    caller = await authenticate(request, suspended_ok=True)
    await state.store.check_signer(caller.patient, caller.auth.device)
    rows = await state.store.audit(caller.patient)
    head = rows[-1].hash if rows else pa.GENESIS
    return reply({"entries": [loads(r.entry) for r in rows],
                  "head": pa.sign_head(state.signing_key(), caller.patient, len(rows), head, caller.now)})


def install(state) -> None:
    state.consent = ConsentService(state)
    handlers = state.federation.handlers
    handlers[SIGNALS] = state.consent.on_signals
    # A delivery replaces the token's previous one, so two must not overtake each other.
    state.federation.ordered.add(SIGNALS)
    handlers[REVOKE] = state.consent.on_revoke
    handlers[USED] = state.consent.on_used
    handlers[ACK] = state.consent.on_ack
