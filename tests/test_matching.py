"""Cross-node diagnosis matching across real nodes: offers, PSI sessions, counts, suggestions."""

from __future__ import annotations

import pytest

from rxfed.client.consent import PatientConsent
from rxfed.client.sdk import NodeRefused
from rxfed.node.config import MatchingSettings
from rxfed.testing import builtin_plugins
from test_communities import eventually

#: Every test here runs with its nodes on SQLite and again on PostgreSQL (RXFED_TEST_PG_DSN).
pytestmark = pytest.mark.usefixtures("rxfed_store_backend")

K = 11
#: Sessions every 0.3 s; the schedule does not run on its own in tests that drive it.
FAST = MatchingSettings(interval=0.3)
IDLE = MatchingSettings(interval=7 * 86400)

async def consenting(make_patient, node, *codes: str):
    """A patient of ``node`` with conditions ``codes`` who granted diagnosis categories for matching."""
    patient = await make_patient(node)
    for code in codes:
        await patient.add_condition(code)
    consent = PatientConsent(patient, plugins=builtin_plugins())
    granted = await consent.grant("diagnosis.category", "matching", f"plugin:{node.node_id}/matching")
    return patient, consent, granted["grant"]

async def suggestions(patient) -> dict:
    return await patient._call("GET", "/v1/matching/suggestions")

async def session(a, b):
    """One session from ``a`` to ``b``, run now."""
    return await a.state.matching.run_session(b.node_id)

@pytest.fixture
async def three(rxfed_federation, make_patient):
    """hospital-a and hospital-b with K patients each sharing G40 (and B with K-1 in E11),
    community-c with K-1 in G40: the schedule idle, sessions run by the tests."""
    a, b, c = await rxfed_federation("hospital-a", "hospital-b", "community-c", matching=IDLE)
    patients = {}
    for node, n in ((a, K), (b, K), (c, K - 1)):
        patients[node.name] = [await consenting(make_patient, node, "G40.9") for _ in range(n)]
    return a, b, c, patients

async def test_common_categories_are_found_and_nothing_below_k_is_offered_or_shown(three):
    a, b, c, patients = three
    assert set((await a.state.matching.offer()).counts) == {"icd10:G40"}
    assert (await c.state.matching.offer()).counts == {}

    ab = await session(a, b)
    assert ab.outcome == "matched" and ab.common == 1 and ab.own_size == 1
    ac = await session(a, c)
    assert ac.outcome == "matched" and ac.common == 0 and ac.own_size == 1
    cb = await session(c, b)
    assert cb.outcome == "matched" and cb.common == 0 and cb.own_size == 0

    first = patients["hospital-a"][0][0]
    found = await suggestions(first)
    assert found["own"] == [{"category": "icd10:G40", "node": a.node_id, "count": K}]
    assert [(s["id"], s["node"], s["count"]) for s in found["suggestions"]] == [
        (f"{b.node_id}/icd10:G40", b.node_id, K)]
    # B learnt A's count in the same session; C (K-1 patients) shows nothing, learns nothing.
    on_b = await suggestions(patients["hospital-b"][0][0])
    assert [(s["node"], s["count"]) for s in on_b["suggestions"]] == [(a.node_id, K)]
    on_c = await suggestions(patients["community-c"][0][0])
    assert on_c["own"] == [] and on_c["suggestions"] == []
    assert await c.app_store().matching_common() == []

async def test_a_revoked_grant_leaves_the_next_counts(three):
    a, b, c, patients = three
    assert (await session(a, b)).common == 1
    _, consent, grant = patients["hospital-b"][0]
    await consent.revoke(grant)
    # B is at K-1 now: it offers nothing in the next session, and A stops showing it.
    assert (await b.state.matching.offer()).counts == {}
    again = await session(a, b)
    assert again.outcome == "matched" and again.common == 0
    found = await suggestions(patients["hospital-a"][1][0])
    assert found["suggestions"] == [] and found["own"][0]["count"] == K

async def test_a_patient_without_the_grant_gets_403(three, make_patient):
    a, *_ = three
    stranger = await make_patient(a)
    await stranger.add_condition("G40.9")
    with pytest.raises(NodeRefused) as refused:
        await suggestions(stranger)
    assert refused.value.status == 403 and refused.value.code == "no_matching_grant"
    # a revoked grant is no grant
    patient, consent, grant = (await three_patient(three))
    await consent.revoke(grant)
    with pytest.raises(NodeRefused) as refused:
        await suggestions(patient)
    assert refused.value.code == "no_matching_grant"

async def three_patient(three):
    return three[3]["hospital-a"][-1]

async def test_the_schedule_runs_sessions_and_the_operator_lists_them(rxfed_federation, make_patient):
    a, b = await rxfed_federation("hospital-a", "hospital-b", matching=FAST)
    for node in (a, b):
        for _ in range(K):
            await consenting(make_patient, node, "G40.9", "E11.9")
    patient = (await consenting(make_patient, a, "G40.9"))[0]

    async def suggested():
        found = await suggestions(patient)
        return [s["node"] for s in found["suggestions"]] == [b.node_id]

    await eventually(suggested, timeout=20)
    sessions = await a.app_store().matching_sessions()
    assert any(s.outcome == "matched" and s.common == 2 for s in sessions)
    assert all(s.state is None for s in sessions)
