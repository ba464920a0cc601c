"""Insights on a node: the ledger and table declarations as the operator sees them (``rxfed
node insights``, run by rxfed.node.administer), and the tables patients read (``GET
/v1/insights/{category}``).

A release reads only the store (the records plugins/insights.py keeps as signals arrive),
so an operator may run one while the node serves; each is charged to the privacy-budget
ledger in the same transaction that publishes it (rxfed.store.operations). A patient's query
reads a published table and spends nothing: asking twice gives the same answer.
"""

from __future__ import annotations

import calendar
import logging
from typing import Any

from aiohttp import web

from rxfed.crypto import b64e, sha256
from rxfed.errors import BadRequest, Forbidden, NotFound, RxfedError
from rxfed.node.federation import InboundEffects
from rxfed.node.http import NODE, authenticate, reply
from rxfed.protocol import aggregation as ag
from rxfed.protocol import insights as pin
from rxfed.protocol import release as prl
from rxfed.protocol.canonical import canonical, loads
from rxfed.protocol.federation import EventResult, WireEvent
from rxfed.protocol.schema import anything, b64, fields, text

log = logging.getLogger("rxfed.insights")

routes = web.RouteTableDef()


def ledger_doc(ledger: prl.Ledger, period: str | None = None) -> dict:
    """The ledger as ``rxfed node insights DATA_DIR ledger --json`` shows it: the budget per
    period, and per period what was spent and what is left, with every release charged."""
    periods = sorted({e.period for e in ledger.entries} | ({period} if period else set()))
    return {"budget": prl.epsilon_text(ledger.budget),
            "periods": [{"period": p, "spent": prl.epsilon_text(ledger.spent(p)),
                         "remaining": prl.epsilon_text(ledger.remaining(p)),
                         "releases": [{"release": e.release, "epsilon": prl.epsilon_text(e.epsilon), "at": e.at}
                                      for e in ledger.entries if e.period == p]}
                        for p in periods if period is None or p == period]}


def release_row(row: tuple) -> dict:
    release, table, category, period, computed, body = row
    return {"release": release, "table": table, "category": category, "period": period, "computed": computed,
            "published": loads(body)}


def declared_table(category: str, declaration: Any) -> prl.TableSchema:
    """A category's table from the operator's declaration, a JSON object: ``treatments``
    (required), ``side_effects``, ``symptoms`` (lists of names) and ``max_groups``."""
    pin.check_category(category)
    if not isinstance(declaration, dict) or not set(declaration) <= {"treatments", "side_effects", "symptoms",
                                                                      "max_groups"} \
            or "treatments" not in declaration:
        raise BadRequest("a table declaration is {treatments, side_effects, symptoms, max_groups}",
                         code="bad_table")
    lists = {k: declaration.get(k, []) for k in ("treatments", "side_effects", "symptoms")}
    if not all(isinstance(v, list) for v in lists.values()):
        raise BadRequest("treatments, side_effects and symptoms are lists of names", code="bad_table")
    return pin.outcome_table(category, lists["treatments"], side_effects=lists["side_effects"],
                             symptoms=lists["symptoms"], max_groups=declaration.get("max_groups", 1))


# -- what patients read ----------------------------------------------------------------------


@routes.get("/v1/insights/{category}")
async def get_insights(request: web.Request) -> web.Response:
    """The newest published table of a category, as :func:`rxfed.protocol.insights.patient_view`
    shows it, with the ledger of its period. Only a patient of this node may read it; reading
    spends no budget."""
    state = request.app[NODE]
    caller = await authenticate(request, suspended_ok=True)
    await state.store.check_signer(caller.patient, caller.auth.device)
    category = pin.check_category(request.match_info["category"])
    rows = await state.store.insight_releases(category)
    if not rows:
        raise NotFound(f"no table has been released for {category} yet", code="no_release")
    row = release_row(rows[0])
    view = pin.patient_view(row["published"])
    return reply({"release": row["release"], "category": category, **view,
                  "ledger": ledger_doc(await state.store.insights_ledger(), row["period"])})


# -- rounds between nodes (spec/privacy.md §7) -------------------------------------------------

ROUND = "insights.round"
AGG = "insights.agg"
PUBLISHED = "insights.published"
#: Seconds the aggregator waits for a phase before it goes on without the silent nodes, or
#: abandons the round (rxfed.protocol.aggregation.Aggregator.deadline).
PHASE_TIMEOUT = 120
_HEX32 = r"[0-9a-f]{32}"


def schedule_doc(category: str, declaration: Any, *, epsilon: str, aggregator: str, nodes: list[str],
                 collusion: int = 1, dropouts: int = 0) -> dict:
    """A category's scheduled round as the store keeps it (checked: the table, the epsilon,
    a round spec these nodes could run)."""
    schema = declared_table(category, declaration)
    eps = prl.epsilon_text(prl.epsilon_of(epsilon))
    if not isinstance(nodes, list) or aggregator not in nodes:
        raise BadRequest("the aggregator is one of the round's nodes", code="bad_schedule")
    try:
        ag.RoundSpec(ag.new_round_id(), aggregator, tuple((n, bytes(32)) for n in sorted(set(nodes))),
                     len(schema.cells), "check", bits=48, collusion=collusion, dropouts=dropouts)
    except ag.AggregationError as exc:
        raise BadRequest(f"bad schedule: {exc.message}", code="bad_schedule") from None
    return {"table": schema.to_json(), "epsilon": eps, "aggregator": aggregator, "nodes": sorted(set(nodes)),
            "collusion": collusion, "dropouts": dropouts}


def _wire(kind: str, content: dict) -> bytes:
    return canonical(WireEvent(kind, content).to_json())


def _agg_event(round_id: str, to: str, data: bytes) -> bytes:
    return _wire(AGG, {"round": round_id, "to": to, "message": b64e(data)})


class InsightsService:
    """A node's side of insights rounds (installed as ``state.insights``): the aggregator's
    (start, phases, deadlines, the published total) and a participant's (checks against the
    schedule, the ledger's charge, the masked noisy counts). Every round's state is in the
    store; each message is applied in one store transaction with what it sends."""

    def __init__(self, state):
        self.node = state
        self.phase_timeout = PHASE_TIMEOUT

    @property
    def me(self) -> str:
        return self.node.config.node_id

    async def schedule(self, category: str) -> tuple[dict, prl.TableSchema]:
        rows = await self.node.store.insights_schedule(pin.check_category(category))
        if not rows:
            raise Forbidden(f"no round of {category} is scheduled on this node", code="not_scheduled")
        doc = loads(rows[0][1])
        return doc, pin.table_from_json(doc["table"])

    def _check_period(self, period: str) -> str:
        """A round is for this month or the last: never a future month's budget."""
        this = pin.period_of(self.node.now())
        last = pin.period_of(calendar.timegm((int(this[:4]), int(this[5:]), 1, 0, 0, 0)) - 1)
        if prl.check_period(period) not in (this, last):
            raise Forbidden(f"a round is for {last} or {this}, not {period}", code="bad_period")
        return period

    async def _key(self, node: str) -> bytes:
        if node == self.me:
            return self.node.signing_key().public
        return await self.node.consent.seal_key_of(node)

    def _notify(self) -> None:
        self.node.federation.notify()

    async def start_round(self, category: str, period: str | None = None) -> str:
        """Start the scheduled round of ``category`` (this node must be its aggregator)."""
        doc, schema = await self.schedule(category)
        if doc["aggregator"] != self.me:
            raise Forbidden(f"{doc['aggregator']} runs this round, not this node", code="not_aggregator")
        period = self._check_period(period or pin.period_of(self.node.now()))
        if await self.node.store.insight_charged(schema.name, period):
            raise Forbidden(f"{schema.name} was released for {period} already: one round per table and period",
                            code="beyond_schedule")
        invite = await self.invitation(category, period, doc, schema)
        spec = ag.RoundSpec.from_json(invite["spec"])
        round_id = spec.round
        state = {"aggregator": ag.Aggregator(spec).to_state(), "table": doc["table"], "epsilon": doc["epsilon"]}
        now = self.node.now()
        await self.node.store.start_insights_round(
            (round_id, "aggregator", round_id, category, period, self.me, "advertise", canonical(state), "[]", now),
            [(n, _wire(ROUND, invite)) for n in spec.node_ids if n != self.me], now, table=schema.name)
        self._notify()
        await self.join(self.me, invite)
        return round_id

    async def invitation(self, category: str, period: str, doc: dict, schema: prl.TableSchema) -> dict:
        """A new round of the schedule ``doc``, as its aggregator sends it to every node."""
        round_id = ag.new_round_id()
        keys = tuple([(n, await self._key(n)) for n in doc["nodes"]])
        spec = ag.RoundSpec(round_id, doc["aggregator"], keys, len(schema.cells),
                            prl.release_digest(schema, period, doc["epsilon"], round_id), bits=48,
                            collusion=doc["collusion"], dropouts=doc["dropouts"])
        return {"spec": spec.to_json(), "category": category, "period": period}

    async def join(self, origin: str, content: Any) -> None:
        f = fields(content, "round", {"spec": anything, "category": text(3), "period": text(7)})
        spec = ag.RoundSpec.from_json(f["spec"])
        category, period = pin.check_category(f["category"]), prl.check_period(f["period"])
        doc, schema = await self.schedule(category)
        if not (spec.aggregator == origin == doc["aggregator"]) or list(spec.node_ids) != doc["nodes"] \
                or (spec.collusion, spec.dropouts, spec.bits) != (doc["collusion"], doc["dropouts"], 48) \
                or spec.cells != len(schema.cells) \
                or spec.table != prl.release_digest(schema, period, doc["epsilon"], spec.round):
            raise Forbidden("the round is not the one this node scheduled (aggregator, nodes, table, epsilon or "
                            "thresholds differ)", code="not_scheduled")
        self._check_period(period)
        for node, key in spec.nodes:
            known = [self.node.signing_key().public] if node == self.me else await self.node.consent.keys_of(node)
            if key not in known:
                raise Forbidden(f"the round names a key {node} does not publish", code="unknown_key")
        identity = self.node.signing_key()

        def make(vector):
            p = ag.Participant(spec, self.me, identity, vector)
            return canonical(p.to_state()), _agg_event(spec.round, "aggregator", p.advert())

        _, advert = await self.node.store.join_insights_round(
            (spec.round, "participant", spec.round, category, period, origin), schema, spec.threshold,
            doc["epsilon"], len(spec.nodes), make, None if origin == self.me else origin, self.node.now())
        self._notify()
        if origin == self.me:
            await self._local([(self.me, advert)])

    async def _local(self, messages: list[tuple[str, bytes]]) -> None:
        """Messages this node sent itself (it is aggregator and participant at once)."""
        for _, data in messages:
            event = WireEvent.from_json(loads(data), "event")
            try:
                if event.kind == AGG:
                    await self.agg(self.me, event.content)
            except RxfedError as exc:
                log.warning("an insights round message to this node itself was refused: %s", exc.message)

    def _aggregator_step(self, row: tuple, work) -> dict:
        held = loads(row[7])
        a = ag.Aggregator.from_state(held["aggregator"])
        sent = work(a)
        out = [(node, _agg_event(row[0], "participant", data)) for node, data in sent]
        result = {"phase": str(a.phase), "state": canonical({**held, "aggregator": a.to_state()}), "out": out}
        if a.outcome is not None and a.outcome.phase is ag.Phase.DONE:
            schema = pin.table_from_json(held["table"])
            table = prl.publish(schema, row[4], list(a.outcome.total), epsilon=held["epsilon"],
                                nodes=len(a.outcome.survivors), computed=self.node.now())
            result["publish"] = (row[2], schema.name, row[3], row[4], self.node.now(), canonical(table.to_json()))
            out += [(n, _wire(PUBLISHED, {"round": row[0], "table": table.to_json()}))
                    for n in a.outcome.survivors if n != self.me]
        return result

    async def agg(self, origin: str, content: Any) -> None:
        f = fields(content, "agg", {"round": text(32, _HEX32), "to": text(12, r"aggregator|participant"),
                                    "message": b64(max_length=ag.MAX_CELLS * 12 + 64 * 1024)})
        role, data = f["to"], f["message"]
        digest = b64e(sha256(origin.encode() + b"|" + data))
        identity = self.node.signing_key()

        def step(row: tuple) -> dict:
            if role == "participant":
                if origin != row[5]:
                    raise Forbidden("only the round's aggregator writes to its participants", code="wrong_origin")
                p = ag.Participant.from_state(loads(row[7]), identity)
                reply = p.receive(data)
                out = [] if reply is None else [(row[5], _agg_event(row[0], "aggregator", reply))]
                return {"phase": str(p.phase), "state": canonical(p.to_state()), "out": out}
            return self._aggregator_step(row, lambda a: a.receive(origin, data))

        local = await self.node.store.step_insights_round(f["round"], role, digest, step, self.me, self.node.now())
        self._notify()
        await self._local(local)

    async def published(self, origin: str, content: Any) -> None:
        f = fields(content, "published", {"round": text(32, _HEX32), "table": anything})
        table = f["table"]
        if not isinstance(table, dict) or set(table) != {"table", "period", "epsilon", "nodes", "computed",
                                                         "suppressed_below", "rows"}:
            raise BadRequest("a published table is {table, period, epsilon, nodes, computed, suppressed_below, rows}",
                             code="bad_table")
        row = await self.node.store.insight_round(f["round"], "participant")
        if row is not None:
            doc, schema = await self.schedule(row[3])
            # the whole table as the release rules make it: the declared cells, each a count
            # of at least k or suppressed (patients read it as it is kept)
            if table["table"] != schema.name or table["epsilon"] != doc["epsilon"] \
                    or not prl.is_published(schema, table, period=row[4], epsilon=doc["epsilon"],
                                            max_nodes=len(doc["nodes"])):
                raise Forbidden("the table is not the one this node's schedule declares", code="not_scheduled")
        await self.node.store.insights_published(f["round"], origin, table, canonical(table), self.node.now())

    async def monthly(self) -> list[str]:
        """Start the round of the month just ended for every schedule this node aggregates
        that says ``monthly``, once (a round charged, even abandoned, is never run again)."""
        started = []
        this = pin.period_of(self.node.now())
        last = pin.period_of(calendar.timegm((int(this[:4]), int(this[5:]), 1, 0, 0, 0)) - 1)
        for category, body in await self.node.store.insights_schedule():
            doc = loads(body)
            if not doc.get("monthly") or doc["aggregator"] != self.me:
                continue
            if await self.node.store.insight_charged(pin.table_from_json(doc["table"]).name, last):
                continue
            started.append(await self.start_round(category, last))
        return started

    async def tick(self, now: int | None = None) -> None:
        """Go on with (or abandon) the rounds this node aggregates whose phase timed out,
        and start the monthly ones due."""
        try:
            await self.monthly()
        except RxfedError as exc:
            log.warning("starting a monthly insights round failed: %s", exc.message)
        now = self.node.now() if now is None else now
        for round_id, *_, phase, updated in await self.node.store.insight_rounds("aggregator"):
            if phase in ("done", "abandoned") or updated + self.phase_timeout > now:
                continue

            def due(row: tuple):
                # checked again on the row read under its lock: another worker's tick may have
                # ended this phase meanwhile, and the next one has only just begun
                if row[6] in ("done", "abandoned") or row[9] + self.phase_timeout > now:
                    return None
                return self._aggregator_step(row, lambda a: a.deadline())

            try:
                local = await self.node.store.step_insights_round(round_id, "aggregator", None, due, self.me, now)
            except RxfedError as exc:
                log.warning("an insights round's deadline failed: %s", exc.message)
                continue
            self._notify()
            await self._local(local)

    def _handler(self, work):
        async def handle(origin: str, events: list[WireEvent]):
            results = []
            for event in events:
                try:
                    await work(origin, event.content)
                except RxfedError as exc:
                    log.info("insights %s from %s refused: %s", event.kind, origin, exc.code)
                    results.append(EventResult(False, exc.code, exc.message))
                    continue
                results.append(EventResult(True))
            return results, InboundEffects()
        return handle


def install(state) -> None:
    state.insights = InsightsService(state)
    handlers = state.federation.handlers
    handlers[ROUND] = state.insights._handler(state.insights.join)
    handlers[AGG] = state.insights._handler(state.insights.agg)
    handlers[PUBLISHED] = state.insights._handler(state.insights.published)
    state.federation.ordered.add(AGG)
