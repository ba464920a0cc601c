"""Insights rounds between three real nodes: scheduled, masked, noised by every node, the
federation total published back to every node; what crosses the wire; a node dropping out;
rounds beyond the schedule; bad, forged and replayed messages."""

from __future__ import annotations

import asyncio
import json

import pytest

from rxfed.errors import Forbidden
from rxfed.protocol.canonical import canonical, loads
from rxfed.testing import start_federation
from test_insights import TABLE, diabetic, grant_both

pytestmark = pytest.mark.usefixtures("rxfed_store_backend")


@pytest.fixture
async def trio(tmp_path):
    nodes = await start_federation(tmp_path, "a", "b", "c")
    yield nodes
    for n in nodes:
        await n.stop()


async def schedule(nodes, *, aggregator=None, epsilon="1/2", table=TABLE, only=None):
    from rxfed.node.insights import schedule_doc

    aggregator = aggregator or nodes[0]
    doc = schedule_doc("E11", table, epsilon=epsilon, aggregator=aggregator.node_id,
                       nodes=[n.node_id for n in nodes])
    for n in only or nodes:
        await n.app_store().set_insights_schedule("E11", canonical(doc))
    return doc


async def until(check, timeout=20.0):
    for _ in range(int(timeout / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def releases(node):
    return await node.app_store().insight_releases("E11")


async def test_a_round_releases_the_federation_total_to_every_node(trio, make_patient):
    patients = []
    for node in trio:
        for _ in range(2):
            patient, consent = await diabetic(make_patient, node)
            await grant_both(consent, node.node_id)
            patients.append(consent)
    await schedule(trio)
    a = trio[0]
    round_id = await a.state.insights.start_round("E11")

    async def everywhere():
        return all([len(await releases(n)) == 1 for n in trio])

    await until(everywhere)
    tables = [loads((await releases(n))[0][5]) for n in trio]
    assert tables[0] == tables[1] == tables[2]
    assert tables[0]["nodes"] == 3 and tables[0]["epsilon"] == "1/2"
    assert (await releases(a))[0][0] == round_id
    for node in trio:  # every node charged its own ledger, once
        ledger = await node.app_store().insights_ledger()
        assert [e.release for e in ledger.entries] == [round_id]
    for consent in patients:
        released = [e for e in (await consent.audit()).entries if e["event"] == "released"]
        assert {e["release"] for e in released} == {round_id} and all(e["nodes"] == 3 for e in released)
    # a second round of the same table and period is beyond the schedule: the aggregator
    # does not start it, and a hostile aggregator asking a node directly is refused
    with pytest.raises(Forbidden) as refused:
        await a.state.insights.start_round("E11")
    assert refused.value.code == "beyond_schedule"
    b = trio[1]
    doc, schema = await a.state.insights.schedule("E11")
    invite = await a.state.insights.invitation("E11", tables[0]["period"], doc, schema)
    with pytest.raises(Forbidden) as refused:
        await b.state.insights.join(a.node_id, invite)
    assert refused.value.code == "beyond_schedule"
    assert len((await b.app_store().insights_ledger()).entries) == 1


async def _phase(node, round_id, role, phase):
    row = await node.app_store().insight_round(round_id, role)
    return row is not None and row[6] == phase


def spy_outbox(node) -> list[tuple[str, dict]]:
    """Every event the node sends to other nodes, as (destination, event): the transactions
    its federation sender takes from the outbox to put on the wire."""
    store = node.app_store()
    sent: list[tuple[str, dict]] = []
    original = store.next_transaction
    seen: set[str] = set()

    async def next_transaction(destination, **kw):
        txn = await original(destination, **kw)
        if txn is not None and txn.txn_id not in seen:
            seen.add(txn.txn_id)
            sent.extend((txn.destination, loads(e)) for e in txn.events)
        return txn

    store.next_transaction = next_transaction
    return sent


async def test_nothing_a_node_sends_reveals_its_counts(trio, make_patient):
    from rxfed.crypto import b64d
    from rxfed.protocol import aggregation as ag

    for node in trio:
        for _ in range(3):
            _, consent = await diabetic(make_patient, node)
            await grant_both(consent, node.node_id)
    await schedule(trio)
    a, b, c = trio
    wires = {n.node_id: spy_outbox(n) for n in (b, c)}
    await a.state.insights.start_round("E11")

    async def everywhere():
        return all([len(await releases(n)) == 1 for n in trio])

    await until(everywhere)
    for node_id, sent in wires.items():
        kinds = [(dest, e["kind"]) for dest, e in sent if e["kind"].startswith("insights.")]
        assert kinds and all(dest == a.node_id and kind == "insights.agg" for dest, kind in kinds)
        messages = [loads(b64d(e["content"]["message"])) for _, e in sent if e["kind"] == "insights.agg"]
        assert [m["type"] for m in messages] == ["rxfed.agg.advert", "rxfed.agg.masked",
                                                "rxfed.agg.survivors-signed", "rxfed.agg.reveal"]
        (masked,) = [m for m in messages if m["type"] == "rxfed.agg.masked"]
        cells = ag.decode_vector(b64d(masked["vector"]), 28, 48)
        # 3 patients' counts plus noise are small; masked, every cell is spread over 2^48
        assert all(abs(v) >= 1 << 24 for v in ag.centred(cells, 48))
        (reveal,) = [m for m in messages if m["type"] == "rxfed.agg.reveal"]
        assert reveal["pair_seeds"] == {}  # nobody dropped: no pairwise seed is revealed


async def test_a_node_dropping_out_abandons_the_round_and_nothing_is_published(trio, make_patient):
    for node in trio:
        _, consent = await diabetic(make_patient, node)
        await grant_both(consent, node.node_id)
    await schedule(trio)
    a, b, c = trio
    await c.stop()  # c never advertises
    round_id = await a.state.insights.start_round("E11")
    await until(lambda: _phase(b, round_id, "participant", "advertise"))
    await until(lambda: _aggregator_heard(a, round_id, 2))
    await a.state.insights.tick(a.state.now() + a.state.insights.phase_timeout + 1)
    assert await _phase(a, round_id, "aggregator", "abandoned")
    await until(lambda: _phase(b, round_id, "participant", "abandoned"))
    assert await _phase(a, round_id, "participant", "abandoned")
    assert await releases(a) == [] and await releases(b) == []
    # the round was charged when each node committed to it: a hostile aggregator cannot
    # run it again for that table and period
    assert [e.release for e in (await b.app_store().insights_ledger()).entries] == [round_id]
    with pytest.raises(Forbidden):
        await a.state.insights.start_round("E11")
    # what a participant keeps of an abandoned round holds no secret any more
    state = loads((await b.app_store().insight_round(round_id, "participant"))[7])
    assert state["mask_secret"] is None and state["self_seed"] is None and state["vector"] is None


async def _aggregator_heard(node, round_id, adverts):
    row = await node.app_store().insight_round(round_id, "aggregator")
    return row is not None and len(loads(row[7])["aggregator"]["adverts"]) == adverts


async def test_bad_forged_and_replayed_round_messages_are_refused_and_change_nothing(trio, make_patient):
    from rxfed.crypto import b64e
    from rxfed.node import insights as ni
    from rxfed.protocol.federation import WireEvent

    for node in trio:
        _, consent = await diabetic(make_patient, node)
        await grant_both(consent, node.node_id)
    await schedule(trio)
    a, b, c = trio
    wire_b = spy_outbox(b)
    round_id = await a.state.insights.start_round("E11")

    async def everywhere():
        return all([len(await releases(n)) == 1 for n in trio])

    await until(everywhere)

    async def send(node, origin, kind, content):
        handler = node.state.federation.handlers[kind]
        (result,), _ = await handler(origin, [WireEvent(kind, content)])
        return result

    before = {n.node_id: (await n.app_store().insight_round(round_id, "participant"),
                          await n.app_store().insight_round(round_id, "aggregator"),
                          await releases(n), (await n.app_store().insights_ledger()).entries) for n in trio}
    agg = lambda to, message, rid=round_id: {"round": rid, "to": to, "message": b64e(message)}  # noqa: E731
    cases = [
        (b, a.node_id, ni.AGG, {"round": round_id}),  # missing fields
        (b, a.node_id, ni.AGG, agg("participant", b"not json")),
        (b, a.node_id, ni.AGG, agg("nobody", b"{}")),
        (b, a.node_id, ni.AGG, agg("participant", b"{}", "0" * 32)),  # unknown round
        (b, c.node_id, ni.AGG, agg("participant", canonical({"type": "rxfed.agg.abandon", "round": round_id,
                                                            "reason": "forged"}))),  # not the aggregator
        (a, c.node_id, ni.AGG, agg("aggregator", canonical({"type": "rxfed.agg.reveal", "round": round_id,
                                                           "node": b.node_id, "self_seed": b64e(bytes(32)),
                                                           "pair_seeds": {}}))),  # in b's name
        (b, a.node_id, ni.ROUND, {"spec": {"round": "x"}, "category": "E11", "period": "2026-01"}),
        (b, a.node_id, ni.ROUND, {"spec": {}, "category": "Z99", "period": "2026-01"}),
        (b, c.node_id, ni.PUBLISHED, {"round": round_id, "table": loads((await releases(a))[0][5])}),
        (b, a.node_id, ni.PUBLISHED, {"round": round_id, "table": {"rows": {}}}),
    ]
    for node, origin, kind, content in cases:
        result = await send(node, origin, kind, content)
        assert not result.ok and result.error, (kind, content, result)
    # a message replayed (the same bytes again) is taken once: nothing changes
    (dest, advert), = [(d, e) for d, e in wire_b if e["kind"] == ni.AGG][:1]
    assert (await send(a, b.node_id, ni.AGG, advert["content"])).ok
    after = {n.node_id: (await n.app_store().insight_round(round_id, "participant"),
                         await n.app_store().insight_round(round_id, "aggregator"),
                         await releases(n), (await n.app_store().insights_ledger()).entries) for n in trio}
    strip = lambda v: {k: (p and p[:9], g and g[:9], r, e) for k, (p, g, r, e) in v.items()}  # noqa: E731
    assert strip(after) == strip(before)


async def test_the_operator_schedules_and_starts_a_round_from_the_command_line(trio, make_patient, tmp_path):
    from test_insights import rxfed

    for node in trio:
        _, consent = await diabetic(make_patient, node)
        await grant_both(consent, node.node_id)
    a = trio[0]
    (tmp_path / "t.json").write_text(json.dumps(TABLE))
    nodes = ",".join(n.node_id for n in trio)
    for node in trio:
        done = await asyncio.to_thread(rxfed, "node", "insights", str(node.data_dir), "schedule", "E11", "--table",
                                       str(tmp_path / "t.json"), "--epsilon", "1/4", "--aggregator", a.node_id,
                                       "--nodes", nodes, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["nodes"] == sorted(n.node_id for n in trio)
    # only the aggregator starts it
    refused = await asyncio.to_thread(rxfed, "node", "insights", str(trio[1].data_dir), "round", "E11")
    assert refused.returncode == 1 and "runs this round" in refused.stderr
    started = await asyncio.to_thread(rxfed, "node", "insights", str(a.data_dir), "round", "E11", "--json")
    assert started.returncode == 0, started.stderr
    round_id = json.loads(started.stdout)["round"]

    async def everywhere():
        return all([len(await releases(n)) == 1 for n in trio])

    await until(everywhere)
    rounds = json.loads((await asyncio.to_thread(rxfed, "node", "insights", str(a.data_dir), "rounds",
                                                 "--json")).stdout)["rounds"]
    assert {(r["role"], r["phase"]) for r in rounds if r["round"] == round_id} == {("aggregator", "done"),
                                                                                 ("participant", "done")}
    # bad schedules are bad usage and change nothing
    for bad in (["--aggregator", "nobody.example"], ["--collusion", "3"], ["--epsilon", "0"]):
        args = {"--aggregator": a.node_id, "--collusion": "1", "--epsilon": "1/4"}
        args.update(dict(zip(bad[::2], bad[1::2])))
        done = await asyncio.to_thread(rxfed, "node", "insights", str(a.data_dir), "schedule", "E11", "--table",
                                       str(tmp_path / "t.json"), "--nodes", nodes,
                                       *[x for kv in args.items() for x in kv])
        assert done.returncode == 2, (bad, done.stderr)
    doc, _ = await a.state.insights.schedule("E11")
    assert doc["epsilon"] == "1/4" and doc["aggregator"] == a.node_id


async def test_a_monthly_schedule_starts_the_last_months_round_once(trio):
    doc = await schedule(trio)
    for n in trio:
        await n.app_store().set_insights_schedule("E11", canonical({**doc, "monthly": True}))
    a = trio[0]
    assert await trio[1].state.insights.monthly() == []  # not the aggregator
    (round_id,) = await a.state.insights.monthly()
    assert await a.state.insights.monthly() == []

    async def everywhere():
        return all([len(await releases(n)) == 1 for n in trio])

    await until(everywhere)
    (row,) = await releases(a)
    assert row[0] == round_id and row[3] == loads(row[5])["period"] != _this_month(a)


def _this_month(node):
    from rxfed.protocol.insights import period_of

    return period_of(node.state.now())


async def test_a_hostile_aggregator_cannot_make_a_node_join_another_round(trio):
    """An aggregator standing in for a node it names (its own key in that node's place),
    changing the epsilon, the nodes or the thresholds, or asking for a future month: the
    node refuses before anything is charged."""
    from rxfed.protocol import aggregation as ag
    from rxfed.protocol import release as prl

    await schedule(trio)
    a, b, c = trio
    doc, schema = await a.state.insights.schedule("E11")
    period = _this_month(a)

    def respec(invite, **changes):
        spec = ag.RoundSpec.from_json(invite["spec"])
        fields = {"round": spec.round, "aggregator": spec.aggregator, "nodes": spec.nodes, "cells": spec.cells,
                  "table": spec.table, "bits": spec.bits, "collusion": spec.collusion, "dropouts": spec.dropouts}
        fields.update(changes)
        return {**invite, "spec": ag.RoundSpec(**fields).to_json()}

    invite = await a.state.insights.invitation("E11", period, doc, schema)
    spec = ag.RoundSpec.from_json(invite["spec"])
    own = a.state.signing_key().public
    stand_in = tuple((n, own if n == c.node_id else k) for n, k in spec.nodes)
    cases = {
        "unknown_key": respec(invite, nodes=stand_in),
        "not_scheduled": respec(invite, table=prl.release_digest(schema, period, "1", spec.round)),
        "bad_period": {**respec(invite, table=prl.release_digest(schema, "2099-01", doc["epsilon"], spec.round)),
                       "period": "2099-01"},
    }
    cases["not_scheduled "] = respec(invite, collusion=0)
    for code, bad in cases.items():
        with pytest.raises(Forbidden) as refused:
            await b.state.insights.join(a.node_id, bad)
        assert refused.value.code == code.strip(), (code, refused.value.message)
    # from a node the schedule does not name as aggregator
    with pytest.raises(Forbidden) as refused:
        await b.state.insights.join(c.node_id, invite)
    assert refused.value.code == "not_scheduled"
    assert (await b.app_store().insights_ledger()).entries == ()
    assert await b.app_store().insight_rounds() == []


async def test_two_starts_at_once_make_one_round_and_it_releases(trio, make_patient):
    """Every worker process of the aggregator runs the monthly check on the same tick (and an
    operator may ask for the round meanwhile): two starts at once make one round, not two
    whose invitations split the nodes between them and burn every node's budget for nothing."""
    for node in trio:
        for _ in range(2):
            _, consent = await diabetic(make_patient, node)
            await grant_both(consent, node.node_id)
    await schedule(trio)
    a = trio[0]
    results = await asyncio.gather(*(a.state.insights.start_round("E11") for _ in range(3)),
                                   return_exceptions=True)
    started = [r for r in results if isinstance(r, str)]
    assert len(started) == 1, results
    assert all(isinstance(r, Forbidden) and r.code == "beyond_schedule" for r in results if not isinstance(r, str))
    assert [r[0] for r in await a.app_store().insight_rounds("aggregator")] == started

    async def everywhere():
        return all([len(await releases(n)) == 1 for n in trio])

    await until(everywhere)
    for node in trio:
        assert [e.release for e in (await node.app_store().insights_ledger()).entries] == started


def _unsuppressed(table):
    """A hostile aggregator's table: the cells it suppressed shown as small counts."""
    rows = {g: {m: (3 if isinstance(v, str) else v) if not isinstance(v, dict)
                else {b: 3 if isinstance(x, str) else x for b, x in v.items()} for m, v in r.items()}
            for g, r in table["rows"].items()}
    return {**table, "suppressed_below": 0, "rows": rows}


def _garbled(table):
    """A hostile aggregator's table whose rows are not rows."""
    return {**table, "rows": {g: "x" for g in table["rows"]}}


@pytest.mark.parametrize("tamper", [_unsuppressed, _garbled])
async def test_a_published_table_unlike_the_schedules_release_is_refused(trio, make_patient, tamper):
    """What the aggregator publishes back is kept only if it is a table the declared schema
    and release rules make (every cell a count of at least k, or suppressed): a hostile
    aggregator can make a node's patients read neither counts below k nor a table their
    node cannot show (a 500 on every read)."""
    from rxfed.client.insights import insights
    from rxfed.client.sdk import NodeRefused
    from rxfed.node import insights as ni

    patients = {}
    for node in trio:
        for _ in range(2):
            patient, consent = await diabetic(make_patient, node)
            await grant_both(consent, node.node_id)
            patients[node.node_id] = patient
    await schedule(trio)
    a, b, c = trio
    seen = []

    async def tampered(origin, content):
        content = {**content, "table": tamper(content["table"])}
        try:
            await b.state.insights.published(origin, content)
        except Exception as exc:
            seen.append(exc)
            raise

    b.state.federation.handlers[ni.PUBLISHED] = b.state.insights._handler(tampered)
    await a.state.insights.start_round("E11")

    async def published_elsewhere():
        return all([len(await releases(n)) == 1 for n in (a, c)]) and bool(seen or await releases(b))

    await until(published_elsewhere)
    await asyncio.sleep(0.2)
    assert await releases(b) == []
    assert seen and all(getattr(e, "code", None) == "not_scheduled" for e in seen), seen
    with pytest.raises(NodeRefused) as none:
        await insights(patients[b.node_id], "E11")
    assert none.value.status == 404 and none.value.code == "no_release"


async def test_two_deadlines_at_once_end_one_phase_only(trio, make_patient):
    """Every worker process of the aggregator checks the rounds' deadlines on the same tick:
    the second to take the round's lock finds the phase the first moved to, just begun, and
    must leave it alone; ending it at once as well dropped every node from the round and
    abandoned it, every node's budget spent for nothing."""
    from rxfed.node import insights as ni
    from rxfed.node.federation import InboundEffects
    from rxfed.node.insights import schedule_doc
    from rxfed.protocol.federation import EventResult

    for node in trio:
        for _ in range(2):
            _, consent = await diabetic(make_patient, node)
            await grant_both(consent, node.node_id)
    a, b, c = trio
    doc = schedule_doc("E11", TABLE, epsilon="1/2", aggregator=a.node_id, nodes=[n.node_id for n in trio],
                       collusion=0, dropouts=1)
    for n in trio:
        await n.app_store().set_insights_schedule("E11", canonical(doc))

    async def silent(origin, events):  # c takes the invitation and never joins
        return [EventResult(True) for _ in events], InboundEffects()

    c.state.federation.handlers[ni.ROUND] = silent
    round_id = await a.state.insights.start_round("E11")
    await until(lambda: _aggregator_heard(a, round_id, 2))
    clock = a.state.clock
    a.state.clock = lambda: clock() + a.state.insights.phase_timeout + 1  # the advertise phase has timed out
    await asyncio.gather(a.state.insights.tick(), a.state.insights.tick())
    assert not await _phase(a, round_id, "aggregator", "abandoned")

    async def released():
        return all([len(await releases(n)) == 1 for n in (a, b)])

    await until(released)
    assert loads((await releases(b))[0][5])["nodes"] == 2
