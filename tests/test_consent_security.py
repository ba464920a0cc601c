"""Attacks on consent by the parties it must hold against: colluding recipients linking a
patient's tokens, a home node faking acknowledgements."""

from __future__ import annotations

import sqlite3
import time

import attrs
import pytest

from conftest import PASSPHRASE
from rxfed.client.consent import Consent
from rxfed.client.sdk import NodeRefused
from rxfed.consent import grants as pg
from rxfed.crypto import SigningKeyPair, audit_link, b64e
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
    from rxfed.client import PatientClient

    a, b, c = fed
    patient, consent = await consenting(make_patient, a)
    granted = await consent.grant("diagnosis.category", "matching", f"node:{b.node_id}")
    async with await PatientClient.recover(a.url, tmp_path / "second-device", patient.recovery_code, PASSPHRASE,
                                           kdf="min") as again:
        other = Consent(again, plugins=builtin_plugins())
        for device in (other, consent, other):
            await device.share(granted["grant"])
        # each delivery continued from the last one, whichever device sent it: B took all four
        await eventually(lambda: _true(len(recorder(b).signals) == 4))
        (token,) = (await other.list())[0]["tokens"]
        # a device that did not see the last number is told to share again, nothing is queued
        with pytest.raises(NodeRefused) as refused:
            await again._call("POST", "/v1/consent/signals", {"token": token["token"], "delivery": pg.new_id(),
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
    in_cs_name = pg.Acknowledgement.create(a.state.signing_key(), token=token["token"], node=c.node_id,
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
    bogus = pg.Acknowledgement.create(SigningKeyPair.generate(), token=token["token"], node=b.node_id,
                                      revocation=token["revocation"], unconfirmed=[], now=int(time.time()))
    from rxfed.protocol.federation import WireEvent

    results, _ = await a.state.consent.on_ack(b.node_id, [WireEvent("consent.ack", {"token": token["token"],
                                                                                     "ack": bogus.signed})])
    assert results[0].error == "bad_ack"
