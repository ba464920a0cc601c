"""Cross-node diagnosis matching across real nodes: offers, PSI sessions, counts, suggestions."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import PASSPHRASE
from helpers import raw_request
from rxfed.client import matching as client_matching
from rxfed.client.consent import PatientConsent
from rxfed.client.sdk import NodeRefused
from rxfed.crypto import SigningKeyPair
from rxfed.node.config import MatchingSettings
from rxfed.node.matching import FEDERATION
from rxfed.protocol import matching as pm
from rxfed.protocol import psi
from rxfed.protocol.auth import sign_request
from rxfed.store import OperatorEntry
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


# -- a malicious or broken peer --------------------------------------------------------------


async def peer_post(sender, receiver, path: str, body: bytes, *, key=None, headers=None):
    """``body`` POSTed to ``receiver`` as ``sender`` signs it (or ``key``, a forgery)."""
    signed = headers or sign_request(key or sender.state.signing_key(), method="POST", target=path,
                                     destination=receiver.node_id, origin=sender.node_id, body=body,
                                     now=int(time.time()))
    status, answer = await raw_request(receiver.url, "POST", path, body,
                                       {**signed, "Content-Type": "application/octet-stream"})
    return status, answer, signed


def error(answer) -> str:
    return answer["error"] if isinstance(answer, dict) else json.loads(answer)["error"]


async def responder_row(node, sid: str):
    row = await node.app_store().matching_session(sid, "responder")
    return None if row is None else (row.step, row.state, row.finished, row.outcome)


async def test_a_peer_over_its_daily_rate_is_refused(rxfed_federation, make_patient):
    a, b = await rxfed_federation("hospital-a", "hospital-b",
                                  matching=MatchingSettings(interval=7 * 86400, sessions_per_peer_per_day=2))
    assert [(await session(a, b)).outcome for _ in range(3)] == ["matched", "matched", "failed:rate_limited"]
    answered = [s for s in await b.app_store().matching_sessions() if s.role == "responder"]
    assert len(answered) == 2
    # the refusal costs the responder nothing: no session, no blinding
    status, answer, _ = await peer_post(a, b, "/v1/matching/sessions", hello_from(a, b)[1])
    assert status == 429 and error(answer) == "rate_limited"
    assert len([s for s in await b.app_store().matching_sessions() if s.role == "responder"]) == 2


def hello_from(a, b, elements=(b"icd10:G40",), **limits):
    context = psi.PsiContext.new(FEDERATION, a.node_id, b.node_id)
    return psi.start(context, list(elements), limits=psi.PsiLimits(**limits))


async def test_forged_replayed_oversized_malformed_and_misplaced_messages_change_nothing(three):
    a, b, c, _ = three
    initiator, hello = hello_from(a, b)
    sid = initiator.context.session_id.hex()
    status, answer, first = await peer_post(a, b, "/v1/matching/sessions", hello)
    assert status == 200
    hello_r, blinded_r = pm.unpack(answer, 2, limit=1 << 20)
    opened = await responder_row(b, sid)
    assert opened[0] == 1 and opened[2] is None

    # the same request again: a replay
    status, answer, _ = await peer_post(a, b, "/v1/matching/sessions", hello, headers=first)
    assert status == 401 and error(answer) == "replayed_request"
    initiator = initiator.receive_hello(hello_r)
    initiator, blinded = initiator.blind()
    initiator, commitment = initiator.receive_blinded(blinded_r)
    good = pm.pack(blinded, commitment)
    path = f"/v1/matching/sessions/{sid}/blinded"
    refusals = [
        # forged: signed by a key that is not hospital-a's
        (dict(key=SigningKeyPair.generate()), good, 401),
        # malformed: not a framed message, or a blinded set cut short
        ({}, b"\x00garbage", 400),
        ({}, pm.pack(blinded[:-7], commitment), 400),
        # a commitment in place of the blinded set
        ({}, pm.pack(commitment, commitment), 400),
    ]
    for kwargs, body, expected in refusals:
        status, answer, _ = await peer_post(a, b, path, body, **kwargs)
        assert status == expected, (status, answer)
        assert await responder_row(b, sid) == opened
    # oversized: refused from its Content-Length, before any read
    status, answer, _ = await peer_post(a, b, path, b"\x00" * (b.state.matching.limits.max_message_size() * 3))
    assert status == 413 and await responder_row(b, sid) == opened
    # out of order: the reveal before the blinded set
    status, answer, _ = await peer_post(a, b, f"/v1/matching/sessions/{sid}/reveal", good)
    assert status == 409 and error(answer) == "psi_out_of_order" and await responder_row(b, sid) == opened
    # another peer cannot step into the session
    status, answer, _ = await peer_post(c, b, path, good)
    assert status == 404 and error(answer) == "psi_wrong_session" and await responder_row(b, sid) == opened
    # a session id that is no session
    status, answer, _ = await peer_post(a, b, "/v1/matching/sessions/../x/blinded", good)
    assert status in (404, 400)

    # the session still completes after all that
    status, answer, _ = await peer_post(a, b, path, good)
    assert status == 200
    commitment_r, reveal_r = pm.unpack(answer, 2, limit=1 << 20)
    initiator, reveal = initiator.receive_commitment(commitment_r)
    initiator, result = initiator.receive_reveal(reveal_r)
    assert result.common == {b"icd10:G40"}
    # counts for a category that is not common are refused, and change nothing
    status, answer, _ = await peer_post(a, b, f"/v1/matching/sessions/{sid}/reveal",
                                        pm.pack(reveal, pm.counts_message({"icd10:E11": 50})))
    assert status == 400 and error(answer) == "psi_peer_misbehaved"
    assert (await responder_row(b, sid))[0] == 2
    status, answer, _ = await peer_post(a, b, f"/v1/matching/sessions/{sid}/reveal",
                                        pm.pack(reveal, pm.counts_message({"icd10:G40": 500})))
    assert status == 200
    assert pm.read_counts(pm.unpack(answer, 1, limit=1 << 16)[0], common=frozenset({"icd10:G40"}), k=K) == {
        "icd10:G40": K}
    step, state, finished, outcome = await responder_row(b, sid)
    assert state is None and finished is not None and outcome == "matched"
    assert [(p, c, n) for p, c, n, _ in await b.app_store().matching_common()] == [(a.node_id, "icd10:G40", 500)]


async def test_a_set_above_the_cap_and_a_stranger_are_refused_before_any_work(three, rxfed_federation):
    a, b, c, _ = three
    cap = b.state.matching.limits.max_elements
    big = [f"icd10:X{i}".encode() for i in range(cap)]
    _, hello = hello_from(a, b, big, max_elements=4 * cap)
    status, answer, _ = await peer_post(a, b, "/v1/matching/sessions", hello)
    assert status == 413 and error(answer) == "psi_too_large"
    (stranger,) = await rxfed_federation("stranger", matching=IDLE)
    _, hello = hello_from(stranger, b)
    status, answer, _ = await peer_post(stranger, b, "/v1/matching/sessions", hello)
    assert status == 403 and error(answer) == "peer_refused"
    assert [s for s in await b.app_store().matching_sessions() if s.role == "responder"] == []


# -- the command line ------------------------------------------------------------------------


async def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RXFED_PASSPHRASE": PASSPHRASE, **(env or {})}
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "rxfed", *args], capture_output=True,
                                   text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)


async def test_patient_matches_and_the_operator_listing_on_the_command_line(three):
    a, b, c, patients = three
    assert (await session(a, b)).outcome == "matched"
    assert (await session(a, c)).outcome == "matched"
    await session(c, b)
    profile = str(patients["hospital-a"][0][0].profile.path)
    shown = await cli("patient", "matches", "--profile", profile)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [f"{K} patients on {b.node_id} (and {K} on your own node) share category G40"]
    doc = json.loads((await cli("patient", "matches", "--profile", profile, "--json")).stdout)
    assert doc["k"] == K and doc["own"] == [{"category": "icd10:G40", "node": a.node_id, "count": K}]
    assert [(s["id"], s["count"]) for s in doc["suggestions"]] == [(f"{b.node_id}/icd10:G40", K)]
    # a patient of community-c: nothing there reaches k
    on_c = await cli("patient", "matches", "--profile", str(patients["community-c"][0][0].profile.path))
    assert on_c.returncode == 0 and "no suggestions yet" in on_c.stdout

    listed = await cli("node", "matching", str(a.data_dir), "sessions", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)["sessions"]
    assert sorted((r["peer"], r["role"], r["outcome"], r["common"]) for r in rows) == sorted([
        (b.node_id, "initiator", "matched", 1), (c.node_id, "initiator", "matched", 0)])
    assert all(r["own_size"] == 1 and r["own_padded"] >= 64 and r["peer_padded"] >= 64 and r["finished"] for r in rows)
    text = await cli("node", "matching", str(b.data_dir), "sessions")
    assert text.returncode == 0 and "G40" not in text.stdout and "responder\tmatched" in text.stdout
    bad = await cli("node", "matching", str(b.data_dir), "sessions", "--limit", "0")
    assert bad.returncode == 2 and bad.stdout == ""


# -- pure rules --------------------------------------------------------------------------------


VECTORS = json.loads((Path(__file__).resolve().parents[1] / "spec" / "vectors" / "matching.json").read_text())


def test_suggestions_are_checked_and_worded_as_the_vectors_say():
    for case in VECTORS["cases"]:
        view = client_matching.checked(case["answer"])
        assert view == case["checked"] and client_matching.lines(view) == case["lines"]
    for case in VECTORS["refused"]:
        with pytest.raises(client_matching.BadSuggestions):
            client_matching.checked(case["answer"])


def test_counts_are_bucketed_lower_bounds_never_below_k():
    assert [pm.bucket(n) for n in (11, 14, 15, 23, 99, 100, 124, 999, 1000, 1249, 1250)] == [
        11, 11, 15, 20, 95, 100, 100, 975, 1000, 1000, 1250]
    assert all(K <= pm.bucket(n) <= n for n in range(K, 5000))
    with pytest.raises(ValueError):
        pm.bucket(K - 1)
    assert pm.offered_counts([("p1", "icd10:G40"), ("p1", "icd10:G40"), ("p2", "icd10:G40")], k=5) == {}
    with pytest.raises(ValueError):
        pm.check_k(4)
    with pytest.raises(ValueError):
        MatchingSettings(k=4)


def test_a_kept_session_is_the_session():
    initiator, hello = hello_from_names("a", "b")
    responder, hello_r = psi.accept(hello, federation=FEDERATION, me="b", peer="a", elements=[b"icd10:G40"])
    responder, blinded_r = responder.blind()
    kept = psi.session_from_state(psi.session_to_state(responder))
    assert kept == responder
    with pytest.raises(ValueError):
        psi.session_from_state(b'{"v": 1}')
    with pytest.raises(ValueError):
        psi.session_from_state(b"\xff")


def hello_from_names(a: str, b: str):
    return psi.start(psi.PsiContext.new(FEDERATION, a, b), [b"icd10:G40"])


async def test_a_patient_with_two_grants_counts_once_and_other_nodes_patients_not_at_all(rxfed_federation, make_patient):
    a, b = await rxfed_federation("hospital-a", "hospital-b", matching=IDLE)
    patients = [await consenting(make_patient, a, "G40.9") for _ in range(K - 1)]
    consent = patients[0][1]
    await consent.grant("diagnosis.category", "matching", f"node:{a.node_id}")
    assert (await a.state.matching.offer()).counts == {}
    # a patient of hospital-b granting to hospital-a's plugin is not hospital-a's patient
    visitor = await make_patient(b)
    await visitor.add_condition("G40.9")
    await PatientConsent(visitor, plugins=builtin_plugins()).grant("diagnosis.category", "matching",
                                                                    f"plugin:{a.node_id}/matching")

    async def arrived():
        return any(t.origin == b.node_id for t in [await a.app_store().received_token(tok) for tok, *_ in
                                                   await a.app_store().received_signals()])

    await eventually(arrived)
    assert (await a.state.matching.offer()).counts == {}
    last = (await consenting(make_patient, a, "G40.9"))[0]
    assert (await a.state.matching.offer()).counts == {"icd10:G40": K}
    # an account the operator suspended (a fake one, say) does not count
    await a.app_store().set_suspended(last.patient, since=int(time.time()), reason="spam",
                                      log=OperatorEntry(int(time.time()), "account.suspend", last.patient, "test"))
    assert (await a.state.matching.offer()).counts == {}


async def test_a_node_that_does_not_match_says_so_and_a_denied_peer_is_no_longer_shown(rxfed_federation, make_patient):
    a, b = await rxfed_federation("hospital-a", "hospital-b", matching=IDLE)
    (off,) = await rxfed_federation("hospital-off", matching=MatchingSettings(enabled=False))
    await off.allow(a)
    await a.allow(off)
    patients = [await consenting(make_patient, node, "G40.9") for node in (a, b) for _ in range(K)]
    assert (await session(a, off)).outcome == "failed:matching_off"
    with pytest.raises(NodeRefused) as refused:
        await suggestions(await make_patient(off))
    assert refused.value.status == 404 and refused.value.code == "matching_off"

    assert (await session(a, b)).common == 1
    assert [s["node"] for s in (await suggestions(patients[0][0]))["suggestions"]] == [b.node_id]
    await a.app_store().set_peer_policy(b.node_id, "denied")
    assert (await suggestions(patients[0][0]))["suggestions"] == []
