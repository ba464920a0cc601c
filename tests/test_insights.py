"""Insights end to end on real nodes: consented signals kept by the insights plugin, the
privacy-budget ledger, releases, audit entries and what a patient reads."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys

import pytest

from conftest import PASSPHRASE
from helpers import signed
from rxfed.client.consent import PatientConsent
from rxfed.client.insights import insights
from rxfed.client.sdk import NodeRefused
from rxfed.protocol.canonical import loads
from rxfed.protocol.insights import period_of
from rxfed.testing import builtin_plugins

pytestmark = pytest.mark.usefixtures("rxfed_store_backend")

TABLE = {"treatments": ["metformin", "insulin"], "side_effects": ["nausea", "dizziness"], "symptoms": ["fatigue"]}


def rxfed(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rxfed", *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


async def diabetic(make_patient, node, *, drug="Metformin 500 mg", efficacy=8):
    patient = await make_patient(node)
    await patient.add_condition("E11.9")
    await patient.add_treatment(drug, efficacy=efficacy, side_effects=["nausea"], adherence=9)
    today = dt.date.today()
    for ago, score in ((20, 8), (3, 3)):  # fatigue improving over the four weeks
        await patient.add_journal(symptoms={"fatigue": score}, date=(today - dt.timedelta(days=ago)).isoformat())
    return patient, PatientConsent(patient, plugins=builtin_plugins())


async def grant_both(consent, node_id):
    grants = []
    for kind in ("treatment.outcome", "symptom.trend"):
        grants.append(await consent.grant(kind, "insights", f"plugin:{node_id}/insights"))
    return grants


async def held(node):
    return await node.app_store().insight_records(period_of(node.state.now()))


def release(node, table=TABLE, epsilon="1/2", *extra):
    path = node.data_dir / "table.json"
    path.write_text(json.dumps(table))
    return rxfed("node", "insights", str(node.data_dir), "release", "E11", "--table", str(path),
                 "--epsilon", epsilon, "--json", *extra)


async def test_signals_are_held_once_by_the_home_node_and_dropped_on_revocation(pair, make_patient):
    a, b = pair
    patient, consent = await diabetic(make_patient, a)
    outcome, trend = await grant_both(consent, a.node_id)
    rows = await held(a)
    assert [(k, g) for _, k, g, _, _ in rows] == [("symptom.trend", "fatigue"), ("treatment.outcome", "metformin")]
    assert len({s for s, *_ in rows}) == 1  # one pseudonym for the patient's two grants to this plugin
    assert loads(rows[1][4])["category"] == "E11"
    # shared again: still one record per kind and group
    await consent.share(outcome["grant"])
    await consent.share(trend["grant"])
    assert len(await held(a)) == 2
    # a patient of another node is counted by their home node only
    other, other_consent = await diabetic(make_patient, b)
    await grant_both(other_consent, a.node_id)

    async def delivered():
        return sum(1 for e in (await other_consent.audit()).entries if e["event"] == "used") == 2

    for _ in range(200):
        if await delivered():
            break
        await asyncio.sleep(0.05)
    assert await delivered()
    assert len(await held(a)) == 2
    # a grant to the whole node (another pseudonym) or a second grant to the plugin: still
    # one record per kind and group, under the one pseudonym
    await consent.grant("treatment.outcome", "insights", f"node:{a.node_id}")
    again = await consent.grant("treatment.outcome", "insights", f"plugin:{a.node_id}/insights")
    assert [(k, g) for _, k, g, _, _ in await held(a)] == [("symptom.trend", "fatigue"),
                                                           ("treatment.outcome", "metformin")]
    await consent.revoke(again["grant"])
    await consent.share(outcome["grant"])
    await consent.revoke(outcome["grant"])
    assert [k for _, k, *_ in await held(a)] == ["symptom.trend"]
    await consent.revoke(trend["grant"])
    assert await held(a) == []


async def test_a_release_is_charged_audited_and_read_by_patients_without_spending(pair, make_patient):
    a, _ = pair
    patients = []
    for i in range(3):
        patient, consent = await diabetic(make_patient, a)
        await grant_both(consent, a.node_id)
        patients.append((patient, consent))
    with pytest.raises(NodeRefused) as none_yet:
        await insights(patients[0][0], "E11")
    assert none_yet.value.status == 404 and none_yet.value.code == "no_release"

    done = await asyncio.to_thread(release, a)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["ledger"]["periods"][0]["spent"] == "1/2" and doc["ledger"]["periods"][0]["remaining"] == "1/2"
    published = doc["published"]
    assert published["nodes"] == 1 and published["epsilon"] == "1/2" and set(published["rows"]) == {"metformin",
                                                                                                     "insulin"}
    for row in published["rows"].values():  # 3 patients: every cell is noisy, most under 11
        assert set(row) == {"reports", "efficacy", "adherence", "status", "side_effects", "symptom fatigue"}
        for value in [row["reports"], *(v for m in row.values() if isinstance(m, dict) for v in m.values())]:
            assert value == "<11" or (type(value) is int and value >= 11)

    # each contributing patient's audit shows the release, once per grant
    for _, consent in patients:
        released = [e for e in (await consent.audit()).entries if e["event"] == "released"]
        assert len(released) == 2 and {e["release"] for e in released} == {doc["release"]}
        assert all(e["epsilon"] == "1/2" and e["table"] == "outcomes-e11" for e in released)

    # reading spends nothing and gives the same answer twice
    first = await insights(patients[0][0], "E11")
    second = await insights(patients[1][0], "E11", "metformin")
    assert first["release"] == doc["release"] and first["ledger"]["periods"][0]["spent"] == "1/2"
    assert [t["treatment"] for t in first["treatments"]] == ["insulin", "metformin"]
    assert second["treatments"] == [t for t in first["treatments"] if t["treatment"] == "metformin"]
    assert await insights(patients[0][0], "E11") == first

    # the CLI shows the same, with --json keys as documented
    shown = await asyncio.to_thread(rxfed, "insights", "--profile", str(patients[0][0].profile.path), "E11",
                                    "--treatment", "metformin", "--json", env={"RXFED_PASSPHRASE": PASSPHRASE})
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == second
    text = await asyncio.to_thread(rxfed, "insights", "--profile", str(patients[0][0].profile.path), "E11",
                                   env={"RXFED_PASSPHRASE": PASSPHRASE})
    assert text.returncode == 0 and "metformin:" in text.stdout and "epsilon 1/2 spent" in text.stdout

    # the ledger refuses a release beyond the period's budget, and nothing changes
    over = await asyncio.to_thread(release, a, TABLE, "3/4")
    assert over.returncode == 1 and "budget" in over.stderr and len(over.stderr.splitlines()) == 1
    ledger = await asyncio.to_thread(rxfed, "node", "insights", str(a.data_dir), "ledger", "--json")
    assert json.loads(ledger.stdout)["periods"][0]["spent"] == "1/2"
    assert (await insights(patients[0][0], "E11"))["release"] == doc["release"]


async def test_a_revoked_patient_is_in_no_later_release(pair, make_patient):
    a, _ = pair
    (p1, c1), (p2, c2) = [await diabetic(make_patient, a) for _ in range(2)]
    g1 = await grant_both(c1, a.node_id)
    await grant_both(c2, a.node_id)
    for g in g1:
        await c1.revoke(g["grant"])
    done = await asyncio.to_thread(release, a)
    assert done.returncode == 0, done.stderr
    assert not [e for e in (await c1.audit()).entries if e["event"] == "released"]
    assert [e for e in (await c2.audit()).entries if e["event"] == "released"]


@pytest.mark.parametrize("args, code", [
    (("release", "E11", "--epsilon", "1/2"), 2),  # no --table
    (("release", "--table", "t.json", "--epsilon", "1/2"), 2),  # no category
    (("release", "E11", "--table", "t.json", "--epsilon", "half"), 2),
    (("release", "E11", "--table", "t.json", "--epsilon", "0"), 2),
    (("release", "Z99", "--table", "t.json", "--epsilon", "1"), 2),  # not a diagnosis category
    (("release", "E11", "--table", "t.json", "--epsilon", "1", "--period", "2026-13"), 2),
    (("release", "E11", "--table", "bad.json", "--epsilon", "1"), 2),
    (("release", "E11", "--table", "nope.json", "--epsilon", "1"), 2),
    (("budget",), 2),
    (("budget", "-1"), 2),
    (("ledger", "x"), 2),
    (("ledger", "--epsilon", "1"), 2),
    (("releases", "--category", "e11"), 2),
])
@pytest.mark.sqlite_only
def test_bad_operator_input_is_refused_and_changes_nothing(tmp_path, args, code):
    assert rxfed("node", "init", str(tmp_path / "n"), "--name", "n").returncode == 0
    (tmp_path / "t.json").write_text(json.dumps(TABLE))
    (tmp_path / "bad.json").write_text(json.dumps({"treatments": ["Metformin!"]}))
    args = tuple(str(tmp_path / a) if a.endswith(".json") else a for a in args)
    done = rxfed("node", "insights", str(tmp_path / "n"), *args)
    assert done.returncode == code, done.stderr
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) >= 1
    ledger = json.loads(rxfed("node", "insights", str(tmp_path / "n"), "ledger", "--json").stdout)
    assert ledger == {"budget": "1", "periods": []}


async def test_bad_patient_requests_are_a_clean_4xx(pair, make_patient):
    a, _ = pair
    patient = await make_patient(a)
    for path in ("/v1/insights/e11", "/v1/insights/Z99", "/v1/insights/E1", "/v1/insights/" + "E" * 300):
        status, body = await signed(patient, "GET", path)
        assert 400 <= status < 500 and isinstance(body, dict), (path, status, body)
    status, _ = await signed(patient, "GET", "/v1/insights/E11")
    assert status == 404


async def test_one_plugin_object_serving_two_nodes_keeps_each_nodes_patients_apart(tmp_path, make_patient):
    """The entry point's object is one per process: an in-process federation (the demo)
    shares it between nodes, and each signal still goes to its home node's store only."""
    from rxfed.testing import start_federation
    from rxfed_plugins.insights import Insights

    shared = Insights()
    managers = []
    for _ in range(2):
        plugins = builtin_plugins()
        plugins.pm.unregister(name="insights")
        plugins.register(shared, "insights")
        managers.append(plugins)
    a, b = [(await start_federation(tmp_path / name, name, plugins=m))[0] for name, m in zip("ab", managers)]
    try:
        await a.allow(b)
        await b.allow(a)
        _, on_a = await diabetic(make_patient, a)
        _, on_b = await diabetic(make_patient, b)
        (g_a, _), (g_b, _) = await grant_both(on_a, a.node_id), await grant_both(on_b, b.node_id)
        rows_a, rows_b = await held(a), await held(b)
        assert len(rows_a) == len(rows_b) == 2 and {r[0] for r in rows_a}.isdisjoint({r[0] for r in rows_b})
        await on_a.revoke(g_a["grant"])
        assert len(await held(a)) == 1 and len(await held(b)) == 2
    finally:
        for n in (a, b):
            await n.stop()
