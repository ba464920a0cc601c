"""Consent end to end across three real nodes: grant, signals, plugins, revocation, audit."""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import MARKER
from helpers import signed
from rxfed import hookimpl
from rxfed.client.consent import PatientConsent
from rxfed.client.sdk import NodeRefused
from rxfed.consent import audit as pa
from rxfed.consent import grants as consent_grants
from rxfed.crypto import SigningKeyPair, b64e, seal_to_node
from rxfed.errors import RxfedError
from rxfed.plugins import PluginManifest
from rxfed.protocol.canonical import canonical
from rxfed.protocol.federation import WireEvent
from rxfed.testing import NodeHarness, builtin_plugins, make_plugins, start_federation
from test_communities import eventually

#: Every test here runs with its nodes on SQLite and again on PostgreSQL (RXFED_TEST_PG_DSN).
pytestmark = pytest.mark.usefixtures("rxfed_store_backend")


DRUG = MARKER.lower() + "ol"


class Recorder:
    """A node plugin that keeps what it is handed (diagnosis categories, for matching)."""

    def __init__(self, name="recorder", purposes=("matching",)):
        self.name, self.purposes = name, purposes
        self.signals, self.revoked = [], []

    @hookimpl
    def rxfed_plugin_manifest(self):
        return PluginManifest(self.name, "1.0", reads=("diagnosis.category",), purposes=self.purposes)

    @hookimpl
    def rxfed_signals_received(self, signals):
        self.signals.extend(signals)

    @hookimpl
    def rxfed_consent_revoked(self, grant, subject):
        self.revoked.append((grant, subject))


def plugins_with(*extra):
    """The built-ins and ``extra``, without the built-in ``matching`` plugin: these tests
    watch the recorder stand in for a plugin serving ``matching`` (tests/test_matching.py
    covers the real one), so that every use they count is the recorder's."""
    return make_plugins({plugin.name: plugin for plugin in extra}, disabled=("matching",))


@pytest.fixture
async def fed(tmp_path):
    recorders = [Recorder(purposes=("matching", "research")) for _ in range(3)]
    nodes = []
    for name, rec in zip(("hospital-a", "hospital-b", "community-c"), recorders):
        nodes.extend(await start_federation(tmp_path, name, plugins=plugins_with(rec)))
    for node in nodes:
        await node.allow(*(n for n in nodes if n is not node))
    yield nodes
    for n in nodes:
        await n.stop()


def recorder(node) -> Recorder:
    return node.state.plugins.pm.get_plugin("recorder")


def outcomes(node):
    return node.state.plugins.pm.get_plugin("outcomes")


async def consenting(make_patient, node):
    patient = await make_patient(node)
    await patient.add_condition("E11.9", label=MARKER)
    await patient.add_treatment(DRUG.capitalize() + " 500 mg", efficacy=8, side_effects=["nausea"], adherence=9)
    return patient, PatientConsent(patient, plugins=builtin_plugins())


def scan(data_dir, needle: bytes) -> list[str]:
    return [p.name for p in data_dir.rglob("*") if p.is_file() and needle in p.read_bytes()]


async def test_grant_use_revoke_across_the_federation(fed, make_patient):
    a, b, c = fed
    patient, consent = await consenting(make_patient, a)
    granted = await consent.grant("treatment.outcome", "research", f"plugin:{c.node_id}/outcomes")
    assert granted["nodes"] == [c.node_id] and granted["shared"][0]["queued"]

    await eventually(lambda: _true(outcomes(c).held() == 1))
    assert outcomes(c).summary() == {DRUG: {"high": "<11"}}
    assert outcomes(b).held() == 0 and outcomes(a).held() == 0

    async def used():
        entries = (await consent.audit()).entries
        return any(e["event"] == "used" and e["plugin"] == "outcomes" and e["node"] == c.node_id for e in entries)

    await eventually(used)
    # The home node relayed the signals sealed: it never held the drug name in any form.
    assert scan(a.data_dir, DRUG.encode()) == []
    assert scan(a.data_dir, MARKER.encode()) == []
    held = await c.app_store().received_signals()
    assert len(held) == 1 and DRUG.encode() in held[0][2]
    assert patient.patient.encode() not in b"".join(row[2] for row in held)

    revoked = await consent.revoke(granted["grant"])
    assert revoked["pending"] == [c.node_id]

    async def acknowledged():
        (grant,) = await consent.list()
        return grant["status"] == "revoked" and grant["acknowledged"] == [c.node_id] and not grant["pending"]

    await eventually(acknowledged)
    assert outcomes(c).held() == 0
    assert await c.app_store().received_signals() == []
    # deleted for real: not in the database file, not in the WAL either
    assert scan(c.data_dir, DRUG.encode()) == []
    with pytest.raises(RxfedError, match="no live grant"):
        await consent.share(granted["grant"])
    # and the home node refuses at once whatever a client sends under the revoked grant
    (token,) = (await consent.list())[0]["tokens"]
    with pytest.raises(NodeRefused) as refused:
        await patient._call("POST", "/v1/consent/signals", {"token": token["token"], "delivery": consent_grants.new_id(),
                                                             "seq": 2**40, "count": 0, "sealed": b64e(b"x" * 64)})
    assert refused.value.code == "grant_revoked"
    events = [e["event"] for e in (await consent.audit()).entries]
    assert events == ["granted", "shared", "used", "revoked", "acknowledged"]
    # a recipient cannot pad the patient's log: uses count only for deliveries that were made
    (token,) = (await consent.list())[0]["tokens"]
    results, _ = await a.state.consent.on_used(c.node_id, [WireEvent("consent.used", {
        "token": token["token"], "delivery": consent_grants.new_id(), "count": 1, "plugins": ["outcomes"] * 64})])
    assert [e["event"] for e in (await consent.audit()).entries] == events


async def _true(value):
    return value


async def test_home_node_as_recipient_plugins_see_only_a_pseudonym(fed, make_patient):
    a, b, c = fed
    patient, consent = await consenting(make_patient, a)
    granted = await consent.grant("diagnosis.category", "matching", f"node:{a.node_id}")
    assert granted["shared"] == [{"grant": granted["grant"], "node": a.node_id, "sent": True, "signals": 1,
                                  "queued": False, "plugins": ["recorder"]}]
    (signal,) = recorder(a).signals
    assert signal.kind == "diagnosis.category" and dict(signal.body) == {"system": "icd10", "category": "E11",
                                                                         "source": "icd10"}
    assert signal.purpose == "matching" and signal.origin == a.node_id
    assert patient.patient not in repr(signal) and patient.device not in repr(signal)
    # the research-only plugin on the same node got nothing
    assert outcomes(a).held() == 0
    await consent.revoke(granted["grant"])
    assert recorder(a).revoked == [(signal.grant, signal.subject)]  # at once, on the home node
    (grant,) = await consent.list()
    assert grant["acknowledged"] == [a.node_id]
    assert await a.app_store().received_signals() == []


async def test_pseudonyms_are_unlinkable_across_nodes_plugins_and_purposes(fed, make_patient):
    a, b, c = fed
    patient, consent = await consenting(make_patient, a)
    await consent.grant("diagnosis.category", "matching", "federation")
    await eventually(lambda: _true(len(recorder(b).signals) == 1 and len(recorder(c).signals) == 1))
    subjects = {n.node_id: recorder(n).signals[0].subject for n in fed}
    assert len(set(subjects.values())) == 3
    # another purpose on the same node: another pseudonym
    await consent.grant("diagnosis.category", "research", f"node:{b.node_id}")
    token_b = [t for g in await consent.list() for t in g["tokens"] if t["node"] == b.node_id]

    async def both_received():
        found = [await b.app_store().received_token(t["token"]) for t in token_b]
        return found if all(found) else None

    received = await eventually(both_received)
    assert len({r.subject for r in received}) == 2 and len({r.subject_key for r in received}) == 2
    # nothing any recipient holds names the patient, a device, or another recipient's pseudonym
    for node in (b, c):
        for needle in (patient.patient, patient.device, b64e(patient.root_key)):
            assert scan(node.data_dir, needle.encode()) == []
    assert scan(c.data_dir, subjects[b.node_id].encode()) == []
    assert scan(b.data_dir, subjects[c.node_id].encode()) == []
    # what every recipient of one grant sees alike is whole days, not a linking timestamp
    for node in (b, c):
        held = await node.app_store().received_token(recorder(node).signals[0].grant)
        token, voucher = json.loads(held.statement)["body"], json.loads(held.voucher)["body"]
        assert token["issued"] % 86400 == 0 and token["not_after"] % 86400 == 86399
        assert voucher["issued"] % 86400 == 0


async def test_bad_grants_are_refused_and_change_nothing(fed, make_patient):
    a, b, c = fed
    patient, consent = await consenting(make_patient, a)
    now = consent._now()
    identity = patient.identity

    def token(node=b.node_id, kind="diagnosis.category", not_after=now + 3600, recipient=None, key=None):
        recipient = recipient or consent_grants.Recipient("node", node)
        key = key or consent._key(node, "matching", recipient.only_plugin())
        return consent_grants.Token.create(key, node=node, home=a.node_id, kind=kind, purpose="matching", recipient=recipient,
                               nodes=[node], issued=now, not_after=not_after)

    def grant(tokens, kind="diagnosis.category", recipient=None, not_after=now + 3600, issued=now):
        recipient = recipient or consent_grants.Recipient("node", b.node_id)
        return consent_grants.Grant.create(identity.device, patient=patient.patient, device=patient.device, kind=kind,
                               purpose="matching", recipient=recipient, issued=issued, not_after=not_after,
                               nodes=[t.node for t in tokens], tokens=[t.id for t in tokens])

    async def post(g, tokens):
        return await patient._call("POST", "/v1/consent/grants", {"grant": g.signed if hasattr(g, "signed") else g,
                                                                 "tokens": [t.signed for t in tokens]})

    t = token()
    forged = grant([t]).signed
    forged = {"body": {**forged["body"], "purpose": "research"}, "sig": forged["sig"]}
    cases = {
        "bad_statement_signature": (forged, [t]),
        "widened_grant": (grant([t2 := token(kind="treatment.outcome")]), [t2]),
        "unknown_kind": (grant([t3 := token(kind="sleep.band")], kind="sleep.band"), [t3]),
        "unknown_node": (grant([t4 := token(node="elsewhere.example")],
                               recipient=consent_grants.Recipient("node", "elsewhere.example")), [t4]),
    }
    t6 = token(not_after=now - 10)
    cases["grant_expired"] = (grant([t6], not_after=now - 10, issued=now - 100), [t6])
    t7 = token()
    cases["bad_date"] = (grant([t7], issued=now - 3600), [t7])  # issued an hour ago: a clock problem
    for code, (g, tokens) in cases.items():
        with pytest.raises(NodeRefused) as refused:
            await post(g, tokens)
        assert refused.value.code == code, code
    # a token signed by a key other than the one it names
    other = SigningKeyPair.generate()
    t5 = token()
    body = {**t5.signed["body"], "subject": b64e(other.public)}
    with pytest.raises(NodeRefused) as refused:
        await patient._call("POST", "/v1/consent/grants", {"grant": grant([t5]).signed,
                                                         "tokens": [{"body": body, "sig": t5.signed["sig"]}]})
    assert refused.value.code == "bad_statement_signature"
    # a grant signed by another patient's device
    other_patient = await make_patient(a)
    with pytest.raises(NodeRefused) as refused:
        await other_patient._call("POST", "/v1/consent/grants", {"grant": grant([t]).signed, "tokens": [t.signed]})
    assert refused.value.code == "bad_statement_signature"
    with pytest.raises(RxfedError) as refused:
        await consent.grant("diagnosis.category", "matching", f"node:{b.node_id}", until=now - 10)
    assert refused.value.code == "bad_date"
    with pytest.raises(RxfedError) as refused:
        await consent.grant("sleep.band", "matching", f"node:{b.node_id}")
    assert refused.value.code == "unknown_kind"
    assert await consent.list() == []
    assert [e for e in (await consent.audit()).entries] == []


async def test_a_node_refuses_forged_or_widened_deliveries(fed, make_patient):
    a, b, c = fed
    patient, consent = await consenting(make_patient, a)
    await consent.grant("diagnosis.category", "matching", f"node:{b.node_id}", share=False)
    (grant,) = await consent.list()
    (token,) = (await patient._call("GET", "/v1/consent/grants"))["grants"][0]["tokens"]
    parsed = consent_grants.Token.from_json(token["statement"])
    b_key = b.state.signing_key().public
    token_key = consent._key(b.node_id, "matching", None)
    seqs = iter(range(1000, 10**6))

    def content(signals, voucher=None, statement=None, signer=None, seq=None, to=b_key):
        delivery = consent_grants.new_id()
        signed = consent_grants.sign_delivery(signer or token_key, token=parsed.id, node=b.node_id, delivery=delivery,
                                  seq=seq or next(seqs), signals=signals)
        return {"token": statement or token["statement"], "voucher": voucher or token["voucher"],
                "delivery": delivery, "sealed": b64e(seal_to_node(to, canonical(signed)))}

    good = [{"kind": "diagnosis.category", "body": {"system": "icd10", "category": "E11", "source": "icd10"}}]
    wider = [{"kind": "treatment.outcome", "body": {"treatment": "metformin", "status": "ongoing"}}]
    free_text = [{"kind": "diagnosis.category", "body": {"system": "icd10", "category": "E11", "source": "icd10",
                                                          "note": "my name is Ann"}}]
    # a voucher made by a node other than the token's home
    fake_voucher = consent_grants.voucher(c.state.signing_key(), parsed, consent._now())
    for body, origin, code in [(wider, a.node_id, "widened_grant"), (free_text, a.node_id, "bad_signal"),
                               (good, c.node_id, "wrong_origin")]:
        with pytest.raises(RxfedError) as refused:
            await b.state.consent.receive(origin, content(body))
        assert refused.value.code == code
    with pytest.raises(RxfedError) as refused:
        await b.state.consent.receive(a.node_id, content(good, voucher=fake_voucher))
    assert refused.value.code == "bad_voucher"
    assert recorder(b).signals == [] and await b.app_store().received_signals() == []
    # sealed to another node: B cannot open what was meant for C
    with pytest.raises(RxfedError) as refused:
        await b.state.consent.receive(a.node_id, content(good, to=c.state.signing_key().public))
    assert refused.value.code == "not_for_this_node"
    # the relaying home node (or anyone holding B's public key) cannot make a delivery: it
    # is signed by the patient's pseudonymous token key, for this token, node and delivery id
    with pytest.raises(RxfedError) as refused:
        await b.state.consent.receive(a.node_id, content(good, signer=SigningKeyPair.generate()))
    assert refused.value.code == "bad_statement_signature"
    unsigned = {**content(good), "sealed": b64e(seal_to_node(b_key, canonical(good)))}
    with pytest.raises(RxfedError):
        await b.state.consent.receive(a.node_id, unsigned)
    assert recorder(b).signals == [] and await b.app_store().received_signals() == []
    delivered = content(good, seq=5000)
    taken, count, _, _ = await b.state.consent.receive(a.node_id, delivered)
    assert taken == ["recorder"] and count == 1
    # nor replay an old delivery under a new id, nor bring back an older one
    with pytest.raises(RxfedError) as refused:
        await b.state.consent.receive(a.node_id, {**delivered, "delivery": consent_grants.new_id()})
    assert refused.value.code == "bad_delivery"
    with pytest.raises(RxfedError) as refused:
        await b.state.consent.receive(a.node_id, content([], seq=4000))
    assert refused.value.code == "stale_delivery"
    assert len(await b.app_store().received_signals()) == 1


async def test_revocation_reaches_a_node_that_was_down(fed, make_patient):
    a, b, c = fed
    patient, consent = await consenting(make_patient, a)
    granted = await consent.grant("diagnosis.category", "matching", "federation")
    await eventually(lambda: _true(len(recorder(c).signals) == 1))
    await c.stop()
    revoked = await consent.revoke(granted["grant"])
    assert revoked["pending"] == sorted([b.node_id, c.node_id])

    async def b_acknowledged():
        (grant,) = await consent.list()
        return grant["acknowledged"] == sorted([a.node_id, b.node_id])

    await eventually(b_acknowledged)
    (grant,) = await consent.list()
    assert grant["pending"] == [c.node_id]  # the patient sees who has not acknowledged
    await c.start()

    async def all_acknowledged():
        (grant,) = await consent.list()
        return not grant["pending"]

    await eventually(all_acknowledged, timeout=20)
    assert await c.app_store().received_signals() == []
    # a delivery still in flight under the revoked token is refused where it arrives
    (token,) = [t for t in (await patient._call("GET", "/v1/consent/grants"))["grants"][0]["tokens"]
                if t["node"] == b.node_id]
    late_id = consent_grants.new_id()
    late = canonical(consent_grants.sign_delivery(consent._key(b.node_id, "matching", None), token=token["token"],
                                      node=b.node_id, delivery=late_id, seq=2**52, signals=[
                                          {"kind": "diagnosis.category",
                                           "body": {"system": "icd10", "category": "E11", "source": "icd10"}}]))
    with pytest.raises(RxfedError) as refused:
        await b.state.consent.receive(a.node_id, {"token": token["statement"], "voucher": token["voucher"],
                                                  "delivery": late_id,
                                                  "sealed": b64e(seal_to_node(b.state.signing_key().public, late))})
    assert refused.value.code == "grant_revoked"
    assert await b.app_store().received_signals() == [] and len(recorder(b).signals) == 1


@pytest.mark.sqlite_only  # reads or writes the SQLite file itself
async def test_audit_log_rewrite_or_truncation_is_detected(fed, make_patient):
    a, b, c = fed
    patient, consent = await consenting(make_patient, a)
    granted = await consent.grant("diagnosis.category", "matching", f"node:{a.node_id}")
    await consent.revoke(granted["grant"])
    view = await consent.audit()
    assert view.head.seq == len(view.entries) == 5
    db = a.data_dir / "rxfed.db"

    def tamper(sql, *args):
        conn = sqlite3.connect(db)
        with conn:
            conn.execute(sql, args)
        conn.close()

    # rewrite an entry and re-chain everything after it: the node signs the new head, but
    # the client remembers the old one
    rows = [(seq, entry) for seq, entry in sqlite3.connect(db).execute(
        "SELECT seq, entry FROM audit WHERE patient_id=? ORDER BY seq", (patient.patient,))]
    rewritten = [(seq, entry.replace(b'"matching"', b'"research"')) for seq, entry in rows]
    hashes = pa.chain(e for _, e in rewritten)
    for (seq, entry), digest in zip(rewritten, hashes):
        tamper("UPDATE audit SET entry=?, hash=? WHERE patient_id=? AND seq=?", entry, digest, patient.patient, seq)
    with pytest.raises(pa.AuditTampered, match="rewritten"):
        await consent.audit()
    for (seq, entry), digest in zip(rows, pa.chain(e for _, e in rows)):
        tamper("UPDATE audit SET entry=?, hash=? WHERE patient_id=? AND seq=?", entry, digest, patient.patient, seq)
    assert (await consent.audit()).head == view.head
    tamper("DELETE FROM audit WHERE patient_id=? AND seq=?", patient.patient, 5)
    with pytest.raises(pa.AuditTampered, match="truncated"):
        await consent.audit()


async def test_fhir_consent_export(fed, make_patient):
    from fhir.resources.R4B.bundle import Bundle

    a, b, c = fed
    patient, consent = await consenting(make_patient, a)
    granted = await consent.grant("diagnosis.category", "matching", f"node:{b.node_id}", share=False)
    bundle = await consent.fhir_bundle()
    Bundle.model_validate(bundle)
    (resource,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Consent"]
    assert resource["status"] == "active" and resource["identifier"][0]["value"] == granted["grant"]
    assert resource["provision"]["purpose"][0]["code"] == "matching"
    await consent.revoke(granted["grant"])
    (resource,) = [e["resource"] for e in (await consent.fhir_bundle())["entry"]
                   if e["resource"]["resourceType"] == "Consent"]
    assert resource["status"] == "inactive"


FUZZ: dict = {}
CONSENT_ENDPOINTS = ["/v1/consent/grants", "/v1/consent/signals", "/v1/consent/revoke"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 2**60) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["grant", "tokens", "token", "delivery", "sealed", "count", "revocation", "voucher",
                         "body", "sig", "type", "v", "id", "kind", "purpose", "recipient", "plugins"]),
        children, max_size=5),
    max_leaves=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values)
async def test_fuzzed_consent_input_is_a_clean_4xx_and_changes_nothing(node, make_patient, body):
    patient = FUZZ.get(node.data_dir) or FUZZ.setdefault(node.data_dir, await make_patient())
    for path in CONSENT_ENDPOINTS:
        status, doc = await signed(patient, "POST", path, json.dumps(body).encode())
        assert 400 <= status < 500 and set(doc) == {"error", "message"}, (path, body, doc)
    for handler in (node.state.consent.on_signals, node.state.consent.on_revoke, node.state.consent.on_used,
                    node.state.consent.on_ack):
        if isinstance(body, dict):
            results, effects = await handler("peer.example", [WireEvent("consent.x", body)])
            assert not results[0].ok and effects.outbox == []
    assert (await signed(patient, "GET", "/v1/consent/grants"))[1] == {"grants": []}
    assert await node.app_store().received_signals() == []


class ForgetfulRecorder(Recorder):
    @hookimpl
    def rxfed_consent_revoked(self, grant, subject):
        raise RuntimeError("cannot delete")


async def test_a_plugin_that_cannot_confirm_deletion_is_shown_to_the_patient(tmp_path, make_patient):
    from rxfed.testing import NodeHarness

    node = await NodeHarness(tmp_path / "solo", plugins=plugins_with(ForgetfulRecorder())).start()
    try:
        patient, consent = await consenting(make_patient, node)
        granted = await consent.grant("diagnosis.category", "matching", f"node:{node.node_id}")
        await consent.revoke(granted["grant"])
        # the node itself deleted what it held; the plugin's failure is on the record
        assert await node.app_store().received_signals() == []
        last = (await consent.audit()).entries[-1]
        assert last["event"] == "acknowledged" and last["unconfirmed"] == ["recorder"]
        (status,) = [s for s in node.state.plugins.status() if s.name == "recorder"]
        assert "RuntimeError" in status.to_json()["last_error"]
        # and the operator sees it with `rxfed node status` (the running node records it)
        from rxfed.node import admin
        from rxfed.node.app import report_plugins

        status_now = functools.partial(asyncio.to_thread, admin.node_status, node.data_dir)
        (live,) = [p for p in (await status_now())["plugins"] if p["name"] == "recorder"]
        assert live["total_failures"] == 1 and "RuntimeError" in live["last_error"]
        await report_plugins(node.state, None)  # and what it last recorded, once it stopped
        await node.stop()
        (reported,) = [p for p in (await status_now())["plugins"] if p["name"] == "recorder"]
        assert reported["total_failures"] == 1 and "RuntimeError" in reported["last_error"]
    finally:
        await node.stop()


async def test_a_delivery_replaces_the_previous_one(fed, make_patient):
    a, b, c = fed
    patient, consent = await consenting(make_patient, a)
    await patient.add_condition("G40.909")
    granted = await consent.grant("diagnosis.category", "matching", f"node:{a.node_id}")
    assert sorted(s.body["category"] for s in recorder(a).signals) == ["E11", "G40"]
    assert len(await a.app_store().received_signals()) == 2

    async def nothing(kind, records=None):
        return []

    consent.derive = nothing  # as if the patient's records no longer gave any signal
    await consent.share(granted["grant"])
    assert await a.app_store().received_signals() == []
    assert recorder(a).revoked == [(recorder(a).signals[0].grant, recorder(a).signals[0].subject)]
    events = [e["event"] for e in (await consent.audit()).entries]
    assert events == ["granted", "shared", "used", "shared"]


async def test_a_recovery_revokes_the_grants_of_the_devices_it_revokes(fed, make_patient, tmp_path):
    """A recovery revokes every other device and starts a new identity epoch. Grants made by
    a device revoked then (perhaps a stolen one) are revoked, not renewed: the recipients
    drop their signals; the patient grants again from the new device under a new, unlinkable
    pseudonym."""
    from conftest import PASSPHRASE
    from rxfed.client import PatientClient

    a, b, c = fed
    patient, consent = await consenting(make_patient, a)
    granted = await consent.grant("diagnosis.category", "matching", "federation")
    await eventually(lambda: _true(len(recorder(c).signals) == 1))
    old_subject = recorder(c).signals[0].subject
    async with await PatientClient.recover(a.url, tmp_path / "new-device", patient.recovery_code, PASSPHRASE,
                                           kdf="min") as again:
        assert again.followups["grants"] == [{"grant": granted["grant"],
                                              "revoked": "made by a device that is no longer active"}]
        other = PatientConsent(again, plugins=builtin_plugins())
        (old,) = await other.list()
        assert old["status"] == "revoked"

        async def acknowledged():
            return not any(g["pending"] for g in await other.list())

        await eventually(acknowledged)
        for node in fed:
            assert await node.app_store().received_signals() == []
        await other.grant("diagnosis.category", "matching", "federation")
        await eventually(lambda: _true(any(s.subject != old_subject for s in recorder(c).signals)))


async def test_renewing_after_a_revocation_keeps_the_grants_of_the_remaining_device(fed, make_patient, tmp_path):
    """Revoking a linked device: the grants the patient made on the remaining device are
    granted again under the new epoch's pseudonym secret (which the revoked device never
    held), then the old ones revoked; the recipient sees a new pseudonym."""
    from conftest import PASSPHRASE
    from rxfed.client import PatientClient

    a, b, c = fed
    patient, consent = await consenting(make_patient, a)
    granted = await consent.grant("diagnosis.category", "matching", "federation")
    await eventually(lambda: _true(len(recorder(c).signals) == 1))
    old_subject = recorder(c).signals[0].subject
    code = await PatientClient.request_link(a.url, tmp_path / "laptop", PASSPHRASE, kdf="min")
    laptop_id, confirm = await patient.add_device(code)
    laptop = PatientClient.open(tmp_path / "laptop", PASSPHRASE)
    await laptop.finish_link(confirm)
    await laptop.close()
    await patient.revoke_device(laptop_id, patient.recovery_code)
    (renewed,) = patient.followups["grants"]
    assert renewed["grant"] == granted["grant"] and "renewed" in renewed
    grants = {g["grant"]: g for g in await consent.list()}
    assert grants[granted["grant"]]["status"] == "revoked" and grants[renewed["renewed"]]["status"] == "live"
    await eventually(lambda: _true(any(s.subject != old_subject for s in recorder(c).signals)))


async def test_a_grant_to_a_plugin_this_node_lacks_is_refused(fed, make_patient, monkeypatch):
    a, b, c = fed
    patient, consent = await consenting(make_patient, a)
    for recipient in (f"plugin:{a.node_id}/nosuch", f"plugin:{a.node_id}/outcomes"):  # outcomes reads other kinds
        # the client, from what the node publishes, before signing anything
        with pytest.raises(consent_grants.ConsentError) as refused:
            await consent.grant("diagnosis.category", "matching", recipient)
        assert refused.value.code == "unknown_plugin"
    assert (await consent.list()) == []

    async def publishes_nothing(nodes):  # a client that could not check: the home node refuses
        return dict.fromkeys(nodes)

    monkeypatch.setattr(consent, "offers", publishes_nothing)
    for recipient in (f"plugin:{a.node_id}/nosuch", f"plugin:{a.node_id}/outcomes"):
        with pytest.raises(NodeRefused) as refused:
            await consent.grant("diagnosis.category", "matching", recipient)
        assert refused.value.code == "unknown_plugin"
        assert "`rxfed patient consent recipients` lists what each node offers" in refused.value.message


async def test_what_a_node_publishes_is_checked_before_a_grant_is_signed(fed, make_patient):
    """A plugin on another node that is not there or reads something else, and a purpose
    no plugin on the grant's nodes serves, are refused with nothing signed or sent; each
    node's own document is what counts."""
    a, b, c = fed
    patient, consent = await consenting(make_patient, a)
    doc = await patient.discover(patient._session_or_new(), b.url)
    assert {"name": "recorder", "version": "1.0", "reads": ["diagnosis.category"],
            "purposes": ["matching", "research"]} in doc["plugins"]
    with pytest.raises(consent_grants.ConsentError, match=f"{b.node_id} has no plugin 'nosuch'; it offers: "):
        await consent.grant("diagnosis.category", "matching", f"plugin:{b.node_id}/nosuch")
    with pytest.raises(consent_grants.ConsentError) as refused:
        await consent.grant("diagnosis.category", "advertising", "federation")
    assert refused.value.code == "no_recipient" and "matching, research" in refused.value.message
    with pytest.raises(consent_grants.ConsentError) as refused:
        await consent.grant("diagnosis.category", "advertising", f"node:{c.node_id}")
    assert refused.value.code == "no_recipient"
    assert await consent.list() == [] and recorder(b).signals == [] and recorder(c).signals == []
    granted = await consent.grant("diagnosis.category", "matching", f"plugin:{b.node_id}/recorder")
    assert granted["receivers"] == {b.node_id: ["recorder"]}
    await eventually(lambda: _true(len(recorder(b).signals) == 1))
    wide = await consent.grant("diagnosis.category", "matching", "federation", share=False)
    assert wide["receivers"] == {n.node_id: ["recorder"] for n in fed}


class SlowRecorder(Recorder):
    @hookimpl
    def rxfed_signals_received(self, signals):
        time.sleep(2.5)  # longer than the sending node's request timeout in tests (2 s)
        self.signals.extend(signals)


async def test_a_slow_plugin_never_holds_up_federation_delivery(tmp_path, make_patient):
    a = await NodeHarness(tmp_path / "a", plugins=plugins_with(Recorder())).start()
    b = await NodeHarness(tmp_path / "b", plugins=plugins_with(SlowRecorder())).start()
    try:
        await a.allow(b)
        await b.allow(a)
        patient, consent = await consenting(make_patient, a)
        started = time.monotonic()
        await consent.grant("diagnosis.category", "matching", f"node:{b.node_id}")

        async def delivered():
            return (await b.app_store().received_signals()) and not any(
                s.pending + s.in_flight for s in await a.app_store().outbox_summary())

        await eventually(delivered)
        assert time.monotonic() - started < 2.0 and recorder(b).signals == []  # kept, acknowledged, plugin still busy

        async def used():
            return any(e["event"] == "used" for e in (await consent.audit()).entries)

        await eventually(used)
        assert len(recorder(b).signals) == 1
    finally:
        await a.stop()
        await b.stop()


async def test_erasing_an_account_needs_its_grants_revoked_first(fed, make_patient):
    from rxfed.protocol import vault as pv
    from rxfed.protocol.statements import sign_statement

    a, b, c = fed
    patient, consent = await consenting(make_patient, a)
    await consent.grant("diagnosis.category", "matching", f"node:{a.node_id}")
    secrets = await patient.secrets()
    tombstone = sign_statement(secrets.signing, {"type": pv.TOMBSTONE, "patient": patient.patient,
                                                 "epoch": secrets.epoch, "deleted": consent._now()})
    with pytest.raises(NodeRefused) as refused:  # straight to the endpoint: refused, nothing erased
        await patient._call("POST", "/v1/account/erase", {"tombstone": tombstone})
    assert refused.value.code == "live_grants"
    assert len(await a.app_store().received_signals()) == 1
    await patient.erase_account()  # the SDK revokes first
    assert await a.app_store().received_signals() == [] and len(recorder(a).revoked) == 1


def test_a_nodes_published_plugins_are_read_strictly_and_new_keys_ignored():
    doc = {"plugins": [{"name": "tally", "version": "0.1", "reads": ["diagnosis.category"], "purposes": ["research"],
                        "description": "a key a later version adds"}]}
    (tally,) = consent_grants.offered_plugins(doc, "n.example")
    assert tally.accepts("diagnosis.category", "research") and not tally.accepts("diagnosis.category", "matching")
    assert consent_grants.offered_plugins({}, "n.example") is None  # an older node: not checked
    for bad in ({"plugins": "tally"}, {"plugins": [{"name": "Not A Name", "reads": [], "purposes": []}]},
                {"plugins": [{"name": "tally", "reads": "diagnosis.category", "purposes": []}]},
                {"plugins": [{"name": "x"}] * (consent_grants.MAX_OFFERED + 1)}):
        with pytest.raises(RxfedError) as refused:
            consent_grants.offered_plugins(bad, "n.example")
        assert refused.value.code == "bad_node_document" and "n.example publishes" in refused.value.message
    unchecked = consent_grants.grant_receivers(consent_grants.Recipient.parse("plugin:n.example/nosuch"), "diagnosis.category", "research",
                                   {"n.example": None})
    assert unchecked == {"n.example": None}
