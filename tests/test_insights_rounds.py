"""Insights rounds between three real nodes: scheduled, masked, noised by every node, the
federation total published back to every node; what crosses the wire; a node dropping out;
rounds beyond the schedule; bad, forged and replayed messages."""

from __future__ import annotations

import asyncio

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
