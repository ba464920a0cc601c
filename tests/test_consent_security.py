"""Attacks on consent by the parties it must hold against: colluding recipients linking a
patient's tokens, a home node faking acknowledgements or widening a federation grant."""

from __future__ import annotations

import sqlite3
import time

import attrs
import pytest

from rxfed.client.consent import PatientConsent
from rxfed.client.sdk import NodeRefused
from rxfed.consent import grants as consent_grants
from rxfed.crypto import SigningKeyPair, audit_link, b64e
from rxfed.errors import RxfedError
from rxfed.protocol.canonical import canonical
from rxfed.testing import TEST_FEDERATION, NodeHarness, builtin_plugins
from test_communities import eventually
from test_consent import Recorder, _true, consenting, fed, plugins_with, recorder  # noqa: F401 (fed: a fixture)


def spy_on_deliveries(node, seen: list) -> None:
    """What a curious recipient writes down: each delivery's token and sequence number."""
    real = node.state.store.receive_signals

    async def receive_signals(token, delivery, signals, *, seq=0):
        seen.append((token.token, seq))
        return await real(token, delivery, signals, seq=seq)

    node.state.store.receive_signals = receive_signals


async def test_colluding_recipients_cannot_link_tokens_by_delivery_numbers(fed, make_patient):
    """Recipients B and C pool what three rounds of deliveries told them and pair tokens
    whose sequence numbers moved by the same amounts: each patient shares in a rhythm of
    their own, so equal gaps at B and C would single them out."""
    a, b, c = fed
    seen = {b.node_id: [], c.node_id: []}
    for node in (b, c):
        spy_on_deliveries(node, seen[node.node_id])
    patients = [await consenting(make_patient, a) for _ in range(3)]
    for _, consent in patients:
        await consent.grant("diagnosis.category", "matching", "federation", share=False)
    start = time.time()
    for rnd in range(3):
        for i, (patient, consent) in enumerate(patients):
            # patient i shares every (i + 1) * 7 seconds
            patient.clock = lambda rnd=rnd, i=i: time.time() + rnd * (i + 1) * 7
            await consent.share()
        expected = 3 * (rnd + 1)
        await eventually(lambda: _true(len(seen[b.node_id]) == len(seen[c.node_id]) == expected))

    def gaps(node) -> dict[str, list[int]]:
        numbers: dict[str, list[int]] = {}
        for token, seq in seen[node.node_id]:
            numbers.setdefault(token, []).append(seq)
        assert all(later > earlier for seqs in numbers.values() for earlier, later in zip(seqs, seqs[1:]))
        return {token: [later - earlier for earlier, later in zip(seqs, seqs[1:])] for token, seqs in numbers.items()}

    at_b, at_c = gaps(b), gaps(c)
    assert len(at_b) == len(at_c) == 3 and all(len(g) == 2 for g in [*at_b.values(), *at_c.values()])
    linked = {(tb, tc) for tb, gb in at_b.items() for tc, gc in at_c.items()
              if all(abs(x - y) < 2000 for x, y in zip(gb, gc))}
    assert linked == set()
    # every delivery was taken: the numbers still order each token's deliveries
    await eventually(lambda: _true(len(recorder(b).signals) == len(recorder(c).signals) == 9))
    assert time.time() - start < 30


async def test_devices_of_one_patient_continue_each_others_delivery_numbers(fed, make_patient, tmp_path):
    from test_identity_security import linked_device

    a, b, c = fed
    patient, consent = await consenting(make_patient, a)
    granted = await consent.grant("diagnosis.category", "matching", f"node:{b.node_id}")
    async with await linked_device(patient, a, tmp_path, "second-device") as again:
        other = PatientConsent(again, plugins=builtin_plugins())
        for device in (other, consent, other):
            await device.share(granted["grant"])
        # each delivery continued from the last one, whichever device sent it: B took all four
        await eventually(lambda: _true(len(recorder(b).signals) == 4))
        (token,) = (await other.list())[0]["tokens"]
        # a device that did not see the last number is told to share again, nothing is queued
        with pytest.raises(NodeRefused) as refused:
            await again._call("POST", "/v1/consent/signals", {"token": token["token"], "delivery": consent_grants.new_id(),
                                                              "seq": token["seq"], "count": 0,
                                                              "sealed": b64e(b"x" * 64)})
        assert refused.value.code == "stale_delivery"
    assert not any(s.pending + s.in_flight for s in await a.app_store().outbox_summary())


async def test_the_deliveries_of_one_share_leave_at_independent_random_times(tmp_path, make_patient):
    delayed = attrs.evolve(TEST_FEDERATION, signal_delay=600)
    a = await NodeHarness(tmp_path / "a", federation=delayed, plugins=plugins_with(Recorder())).start()
    b = await NodeHarness(tmp_path / "b", plugins=plugins_with(Recorder())).start()
    c = await NodeHarness(tmp_path / "c", plugins=plugins_with(Recorder())).start()
    nodes = [a, b, c]
    try:
        for node in nodes:
            await node.allow(*(n for n in nodes if n is not node))
        patient, consent = await consenting(make_patient, a)
        granted = await consent.grant("diagnosis.category", "matching", "federation")
        for _ in range(3):
            await consent.share(granted["grant"])
        db = sqlite3.connect(a.data_dir / "rxfed.db")
        rows = db.execute("SELECT destination, created, not_before FROM outbox ORDER BY id").fetchall()
        db.close()
        assert sorted({r[0] for r in rows}) == sorted([b.node_id, c.node_id]) and len(rows) == 8
        assert all(created <= not_before <= created + 600 for _, created, not_before in rows)
        assert len({not_before for *_, not_before in rows}) > 1  # each delivery its own delay
        # the home node's own token was delivered at once; the others wait for their time
        assert len(recorder(a).signals) == 4
        assert await b.app_store().received_signals() == [] and await c.app_store().received_signals() == []
    finally:
        for node in nodes:
            await node.stop()


def forge_acknowledgement(node, patient: str, token: str, *, entry: dict | None = None, ack: dict | None = None):
    """What a home node can do to its own database: mark a token acknowledged and log it."""
    db = sqlite3.connect(node.data_dir / "rxfed.db")
    now = int(time.time())
    with db:
        if ack is None:
            db.execute("UPDATE grant_tokens SET acked=? WHERE token=?", (now, token))
        else:
            db.execute("UPDATE grant_tokens SET acked=?, ack=? WHERE token=?", (now, canonical(ack), token))
        if entry is not None:
            seq, previous = db.execute("SELECT seq, hash FROM audit WHERE patient_id=? ORDER BY seq DESC LIMIT 1",
                                       (patient,)).fetchone()
            data = canonical({**entry, "seq": seq + 1, "time": now})
            db.execute("INSERT INTO audit VALUES (?, ?, ?, ?)", (patient, seq + 1, data, audit_link(previous, data)))
    db.close()


async def test_a_home_node_cannot_fake_a_recipients_acknowledgement(fed, make_patient):
    a, b, c = fed
    patient, consent = await consenting(make_patient, a)
    granted = await consent.grant("diagnosis.category", "matching", f"node:{c.node_id}")
    await eventually(lambda: _true(len(recorder(c).signals) == 1))
    # The home node drops the revocation on its way to C ...
    await a.app_store().set_peer_policy(c.node_id, "blocked")
    await a.state.federation.policy_changed()
    await consent.revoke(granted["grant"])
    # ... and says C acknowledged, in the grant and in the audit log.
    (token,) = (await patient._call("GET", "/v1/consent/grants"))["grants"][0]["tokens"]
    forge_acknowledgement(a, patient.patient, token["token"],
                          entry={"event": "acknowledged", "grant": granted["grant"], "node": c.node_id})
    (grant,) = await consent.list()
    assert grant["acknowledged"] == [] and grant["pending"] == [c.node_id]
    view = await consent.audit()
    assert view.entries[-1]["event"] == "acknowledged" and view.forged == [view.entries[-1]["seq"]]
    assert len(await c.app_store().received_signals()) == 1  # C still holds the signals

    # An acknowledgement the home node signs in C's name, or C's real one for another token,
    # is reported as forged.
    in_cs_name = consent_grants.Acknowledgement.create(a.state.signing_key(), token=token["token"], node=c.node_id,
                                           revocation=token["revocation"], unconfirmed=[], now=int(time.time()))
    forge_acknowledgement(a, patient.patient, token["token"], ack=in_cs_name.signed)
    (grant,) = await consent.list()
    assert grant["forged"] == [c.node_id] and grant["pending"] == [c.node_id] and grant["acknowledged"] == []
    await a.app_store().set_peer_policy(c.node_id, "allowed", url=c.url)
    await a.state.federation.policy_changed()
    other = await consent.grant("diagnosis.category", "research", f"node:{c.node_id}", share=False)
    await consent.revoke(other["grant"])

    async def acknowledged():
        return [g for g in await consent.list() if g["grant"] == other["grant"]][0]["acknowledged"] == [c.node_id]

    await eventually(acknowledged)
    (real,) = [g for g in (await patient._call("GET", "/v1/consent/grants"))["grants"]
               if g["grant"] == other["grant"]][0]["tokens"]
    forge_acknowledgement(a, patient.patient, token["token"], ack=real["ack"])
    (first,) = [g for g in await consent.list() if g["grant"] == granted["grant"]]
    assert first["forged"] == [c.node_id] and first["acknowledged"] == []
    # C's real acknowledgement, relayed as it was signed, verifies
    assert (await consent.audit()).acknowledgements[(await consent.audit()).entries[-1]["seq"]] == "verified"


async def test_an_acknowledgement_is_signed_by_the_recipient_and_checked_by_the_client(fed, make_patient):
    a, b, c = fed
    patient, consent = await consenting(make_patient, a)
    granted = await consent.grant("diagnosis.category", "matching", "federation")
    await eventually(lambda: _true(len(recorder(c).signals) == 1 and len(recorder(b).signals) == 1))
    await consent.revoke(granted["grant"])

    async def done():
        (grant,) = await consent.list()
        return grant["acknowledged"] == sorted(n.node_id for n in fed) and not grant["pending"]

    await eventually(done)
    (grant,) = await consent.list()
    assert {t["ack"] for t in grant["tokens"]} == {"verified"} and grant["forged"] == []
    view = await consent.audit()
    acked = [e for e in view.entries if e["event"] == "acknowledged"]
    assert len(acked) == 3 and all(view.acknowledgements[e["seq"]] == "verified" for e in acked)
    for entry in acked:  # each signed by the node it names, for this token and revocation
        assert entry["ack"]["body"]["node"] == entry["node"]
    # a recipient's acknowledgement the home node cannot verify is refused, not logged
    (token,) = [t for t in (await patient._call("GET", "/v1/consent/grants"))["grants"][0]["tokens"]
                if t["node"] == b.node_id]
    bogus = consent_grants.Acknowledgement.create(SigningKeyPair.generate(), token=token["token"], node=b.node_id,
                                      revocation=token["revocation"], unconfirmed=[], now=int(time.time()))
    from rxfed.protocol.federation import WireEvent

    results, _ = await a.state.consent.on_ack(b.node_id, [WireEvent("consent.ack", {"token": token["token"],
                                                                                     "ack": bogus.signed})])
    assert results[0].error == "bad_ack"


async def test_a_home_node_cannot_widen_a_federation_grant(fed, make_patient, tmp_path):
    a, b, c = fed
    patient, consent = await consenting(make_patient, a)
    named = sorted(n.node_id for n in fed)
    granted = await consent.grant("diagnosis.category", "matching", "federation", nodes=named)
    await eventually(lambda: _true(all(len(recorder(n).signals) == 1 for n in fed)))
    (grant,) = await consent.list()
    assert grant["nodes"] == named and all(t["verified"] and t["named"] for t in grant["tokens"])
    # The home node starts federating with a node it controls.
    evil = await NodeHarness(tmp_path / "evil", plugins=plugins_with(Recorder())).start()
    try:
        await a.allow(evil)
        await evil.allow(a)
        # A new grant to the nodes the patient agreed to is refused rather than reaching it.
        with pytest.raises(RxfedError) as refused:
            await consent.grant("diagnosis.category", "research", "federation", nodes=named)
        assert refused.value.code == "nodes_differ" and evil.node_id in refused.value.message
        assert len(await consent.list()) == 1
        # It adds the node to the existing grant: the only token it can make for it is under
        # a key of its own, which the client does not derive, so nothing is sent there.
        wider = sorted([*named, evil.node_id])
        fake = consent_grants.Token.create(SigningKeyPair.generate(), node=evil.node_id, home=a.node_id,
                               kind="diagnosis.category", purpose="matching", recipient=consent_grants.Recipient("federation"),
                               nodes=wider, issued=int(time.time()), not_after=grant["not_after"])
        db = sqlite3.connect(a.data_dir / "rxfed.db")
        with db:
            db.execute("INSERT INTO grant_tokens (token, grant_id, node, statement, voucher) VALUES (?, ?, ?, ?, ?)",
                       (fake.id, granted["grant"], evil.node_id, canonical(fake.signed),
                        canonical(consent_grants.voucher(a.state.signing_key(), fake, int(time.time())))))
        db.close()
        (listed,) = await consent.list()
        (added,) = [t for t in listed["tokens"] if t["node"] == evil.node_id]
        assert not added["verified"] and not added["named"] and listed["nodes"] == named
        shared = await consent.share(granted["grant"])
        assert sorted(s["node"] for s in shared if s["sent"]) == named
        assert [s["node"] for s in shared if not s["sent"]] == [evil.node_id]
        await eventually(lambda: _true(all(len(recorder(n).signals) == 2 for n in fed)))
        assert recorder(evil).signals == [] and await evil.app_store().received_signals() == []
        # Nor can the patient's token for another node be used there: it names its node.
        (real,) = [t for t in (await patient._call("GET", "/v1/consent/grants"))["grants"][0]["tokens"]
                   if t["node"] == b.node_id]
        with pytest.raises(RxfedError) as refused:
            await evil.state.consent.keep(a.node_id, {"token": real["statement"], "voucher": real["voucher"],
                                                      "delivery": consent_grants.new_id(), "sealed": b64e(b"x" * 64)})
        assert refused.value.code == "wrong_recipient"
        # A token always names the node it is for among its grant's nodes ...
        key = consent._key(evil.node_id, "matching", None)
        with pytest.raises(RxfedError) as refused:
            consent_grants.Token.create(key, node=evil.node_id, home=a.node_id, kind="diagnosis.category", purpose="matching",
                            recipient=consent_grants.Recipient("federation"), nodes=named, issued=int(time.time()),
                            not_after=grant["not_after"])
        assert refused.value.code == "widened_grant"
        # ... and an honest home node takes only tokens for exactly the nodes the grant names.
        now = consent._now()
        tokens = [consent_grants.Token.create(consent._key(n, "research", None), node=n, home=a.node_id,
                                  kind="diagnosis.category", purpose="research", recipient=consent_grants.Recipient("federation"),
                                  nodes=wider, issued=now, not_after=now + 3600) for n in named]
        narrow = consent_grants.Grant.create(patient.identity.device, patient=patient.patient, device=patient.device,
                                 kind="diagnosis.category", purpose="research", recipient=consent_grants.Recipient("federation"),
                                 issued=now, not_after=now + 3600, nodes=named, tokens=[t.id for t in tokens])
        with pytest.raises(NodeRefused) as refused:
            await patient._call("POST", "/v1/consent/grants", {"grant": narrow.signed,
                                                                "tokens": [t.signed for t in tokens]})
        assert refused.value.code == "widened_grant"
        assert len(await consent.list()) == 1
    finally:
        await evil.stop()


async def test_a_federation_token_that_names_no_nodes_is_refused_by_recipients(fed, make_patient):
    """A version 1 token (from before grants named their nodes) is still read, so its grant
    can be listed and revoked, but a recipient takes no signals under it."""
    a, b, c = fed
    patient, consent = await consenting(make_patient, a)
    key = consent._key(b.node_id, "matching", None)
    now = consent._now()
    body = {"type": consent_grants.TOKEN, "v": 1, "id": consent_grants.new_id(), "node": b.node_id, "home": a.node_id,
            "subject": b64e(key.public), "kind": "diagnosis.category", "purpose": "matching",
            "recipient": "federation", "issued": consent_grants.day(now), "not_after": now + 3600}
    from rxfed.protocol.statements import sign_statement

    old = consent_grants.Token.from_json(sign_statement(key, body))
    assert old.nodes is None and old.v == 1
    with pytest.raises(RxfedError) as refused:
        old.check_live(b.node_id, now, b.state.consent.kinds())
    assert refused.value.code == "widened_grant"
    assert consent_grants.check_token_revocation(consent_grants.revoke_token(key, old.id, now), old.id, old.subject_key) == now


# -- after a revocation: nothing a revoked device or the node makes is shared under ---------


async def test_a_grant_a_revoked_device_makes_with_the_node_gets_nothing(fed, make_patient, tmp_path):
    """The revoked device keeps its epoch's pseudonym secret; with the home node's help it
    registers a grant to that node after the revocation. The patient's client sees that no
    active device of theirs signed it: it shares nothing under it and renews nothing."""
    from helpers import signed
    from rxfed.crypto import pseudonym_key
    from test_identity_security import db, linked_device

    a, b, c = fed
    patient, consent = await consenting(make_patient, a)
    thief = await linked_device(patient, a, tmp_path)
    old = await thief.secrets()
    await patient.revoke_device(thief.device, patient.recovery_code)
    now = int(time.time())
    target = consent_grants.Recipient.parse(f"node:{a.node_id}")
    not_after = consent_grants.end_of_day(now + 30 * 86400)
    key = pseudonym_key(old.pseudonym_secret, consent_grants.pseudonym_label(a.node_id, "matching", None))
    token = consent_grants.Token.create(key, node=a.node_id, home=a.node_id, kind="diagnosis.category", purpose="matching",
                            recipient=target, nodes=[a.node_id], issued=now, not_after=not_after)
    grant = consent_grants.Grant.create(thief.identity.device, patient=patient.patient, device=thief.device,
                            kind="diagnosis.category", purpose="matching", recipient=target, issued=now,
                            not_after=not_after, nodes=[a.node_id], tokens=[token.id])
    with db(a) as conn:  # the node lets the revoked device's request through
        conn.execute("UPDATE devices SET revoked=NULL WHERE id=?", (thief.device,))
    status, _ = await signed(thief, "POST", "/v1/consent/grants", {"grant": grant.signed, "tokens": [token.signed]})
    assert status == 201
    with db(a) as conn:
        conn.execute("UPDATE devices SET revoked=? WHERE id=?", (now, thief.device))
    await thief.close()
    fresh = PatientConsent(patient, plugins=builtin_plugins())
    (listed,) = [g for g in await fresh.list() if g["grant"] == grant.id]
    assert listed["device"] == thief.device and not listed["device_active"]
    before = len(recorder(a).signals)
    await patient.add_condition("F32.1", label="written after the revocation")
    shared = [s for s in await fresh.share() if s["grant"] == grant.id]
    assert shared and not any(s["sent"] for s in shared)
    assert len(recorder(a).signals) == before
    (renewal,) = await fresh.renew()
    assert renewal == {"grant": grant.id, "revoked": "made by a device that is no longer active"}


async def test_a_grant_the_node_un_revokes_stays_revoked(fed, make_patient):
    """The home node clears a grant's revocation in its listing (and is the recipient): the
    client remembers what it revoked and shares nothing more under it."""
    a, b, c = fed
    patient, consent = await consenting(make_patient, a)
    granted = await consent.grant("diagnosis.category", "matching", f"node:{a.node_id}")
    await consent.revoke(granted["grant"])
    db = sqlite3.connect(a.data_dir / "rxfed.db")
    with db:
        db.execute("UPDATE grants SET revoked=NULL, revocation=NULL")
        db.execute("UPDATE received_tokens SET revoked=NULL, revocation=NULL")
    db.close()
    (listed,) = await consent.list()
    assert listed["status"] == "revoked"
    before = len(recorder(a).signals)
    await patient.add_condition("F32.1")
    assert await consent.share() == []
    assert len(recorder(a).signals) == before


async def test_revocation_times_are_whole_days(fed, make_patient):
    """Every recipient of a grant sees the token revocation's time: a whole UTC day, so
    colluding recipients cannot pair a patient's pseudonyms by the second they were revoked."""
    a, b, c = fed
    patient, consent = await consenting(make_patient, a)
    granted = await consent.grant("diagnosis.category", "matching", "federation")
    await consent.revoke(granted["grant"])
    (listed,) = (await patient._call("GET", "/v1/consent/grants"))["grants"]
    for t in listed["tokens"]:
        assert t["revocation"]["body"]["revoked"] % consent_grants.DAY == 0
