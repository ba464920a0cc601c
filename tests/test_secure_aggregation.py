"""Secure aggregation by pairwise masks (rxfed.protocol.aggregation), between in-memory peers.

Every byte a participant sends goes through the aggregator here, as it would over signed
federation requests, so what the tests inspect is what would cross the wire.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rxfed.crypto import SigningKeyPair
from rxfed.crypto.masks import MaskKeyPair, expand, mask_seed
from rxfed.errors import RxfedError
from rxfed.protocol import aggregation as agg
from rxfed.protocol.aggregation import (
    AggregationError,
    AggregationRefused,
    AggregationReplay,
    AggregationTooLarge,
    Aggregator,
    Participant,
    Phase,
    RoundSpec,
)
from rxfed.protocol.canonical import canonical, loads

KEYS = {f"n{i}.example": SigningKeyPair.from_seed(bytes([i + 1]) * 32) for i in range(8)}


def make_spec(n: int, cells: int, *, bits: int = 32, collusion: int = 1, dropouts: int = 0,
              round_id: str | None = None) -> RoundSpec:
    names = sorted(KEYS)[:n]
    return RoundSpec(round=round_id or agg.new_round_id(), aggregator=names[0],
                     nodes=tuple((name, KEYS[name].public) for name in names), cells=cells, table="t1",
                     bits=bits, collusion=collusion, dropouts=dropouts)


class Round:
    """A round between in-memory nodes; ``wire`` records every message and who it went to."""

    def __init__(self, spec: RoundSpec, vectors: dict[str, list[int]], **participant_kw):
        self.spec = spec
        self.aggregator = Aggregator(spec)
        self.participants = {n: Participant(spec, n, KEYS[n], vectors[n], **participant_kw.get(n, {}))
                             for n in vectors}
        self.wire: list[tuple[str, str, bytes]] = []
        self.silent: dict[str, str] = {}  # node -> the message type from which it stops answering

    def send_to_aggregator(self, node: str, data: bytes) -> list[tuple[str, bytes]]:
        self.wire.append((node, "aggregator", data))
        return self.aggregator.receive(node, data)

    def deliver(self, outgoing: list[tuple[str, bytes]]) -> None:
        while outgoing:
            nxt = []
            for node, data in outgoing:
                self.wire.append(("aggregator", node, data))
                kind = loads(data)["type"]
                if self._silent(node, kind):
                    continue
                reply = self.participants[node].receive(data)
                if reply is not None:
                    nxt += self.send_to_aggregator(node, reply)
            outgoing = nxt

    def _silent(self, node: str, kind: str) -> bool:
        order = ["advert", "rxfed.agg.roster", "rxfed.agg.survivors", "rxfed.agg.unmask", "rxfed.agg.abandon"]
        stop = self.silent.get(node)
        return stop is not None and order.index(kind) >= order.index(stop)

    def run(self) -> agg.Outcome | None:
        out = []
        for node, p in self.participants.items():
            if self.silent.get(node) != "advert":
                out += self.send_to_aggregator(node, p.advert())
        self.deliver(out)
        while self.aggregator.outcome is None:
            out = self.aggregator.deadline()
            self.deliver(out)
        return self.aggregator.outcome

    def sent_by(self, node: str, kind: str) -> dict:
        (data,) = [d for s, _, d in self.wire if s == node and loads(d)["type"] == kind]
        return loads(data)


def vectors_for(spec: RoundSpec, values) -> dict[str, list[int]]:
    return {node: list(values[i]) for i, node in enumerate(spec.node_ids)}


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_masks_cancel_exactly(data):
    n = data.draw(st.integers(2, 5))
    bits = data.draw(st.sampled_from(agg.BITS))
    cells = data.draw(st.integers(1, 24))
    half = 1 << (bits - 1)
    # values small enough that the total stays in range (as counts plus noise do)
    bound = half // n - 1
    values = data.draw(st.lists(st.lists(st.integers(-bound, bound), min_size=cells, max_size=cells),
                                min_size=n, max_size=n))
    collusion = data.draw(st.integers(0, n - 1))
    spec = make_spec(n, cells, bits=bits, collusion=collusion)
    outcome = Round(spec, vectors_for(spec, values)).run()
    assert outcome.phase == Phase.DONE
    assert list(outcome.total) == [sum(col) for col in zip(*values)]
    assert outcome.dropped == ()


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_a_node_dropping_out_before_its_masked_input_is_recovered(data):
    n = data.draw(st.sampled_from([3, 5, 6]))
    collusion = {3: 0, 5: 1, 6: 1}[n]
    spec = make_spec(n, 6, collusion=collusion, dropouts=1)
    values = data.draw(st.lists(st.lists(st.integers(0, 10**6), min_size=6, max_size=6), min_size=n, max_size=n))
    gone = data.draw(st.sampled_from(spec.node_ids))
    r = Round(spec, vectors_for(spec, values))
    r.silent[gone] = "rxfed.agg.roster"  # advertised its key, then left
    outcome = r.run()
    assert outcome.phase == Phase.DONE and outcome.dropped == (gone,)
    kept = [v for node, v in zip(spec.node_ids, values) if node != gone]
    assert list(outcome.total) == [sum(col) for col in zip(*kept)]
    # the survivors revealed their pairwise seeds with the dropped node and their self seeds;
    # the dropped node revealed nothing and its input never arrived
    for node in spec.node_ids:
        if node != gone:
            assert set(r.sent_by(node, "rxfed.agg.reveal")["pair_seeds"]) == {gone}
    assert not [d for s, _, d in r.wire if s == gone and loads(d)["type"] != "rxfed.agg.advert"]


@pytest.mark.parametrize("stop", ["rxfed.agg.survivors", "rxfed.agg.unmask"])
def test_a_node_dropping_out_after_its_masked_input_abandons_the_round_unrevealed(stop):
    spec = make_spec(3, 8, collusion=0, dropouts=1)
    values = [[100 + i] * 8 for i in range(3)]
    r = Round(spec, vectors_for(spec, values))
    gone = spec.node_ids[2]
    r.silent[gone] = stop
    outcome = r.run()
    assert outcome.phase == Phase.ABANDONED and outcome.total is None
    assert all(p.phase == Phase.ABANDONED for n, p in r.participants.items() if n != gone)
    # The gone node's masked input carries its self mask, whose seed it never revealed. What a
    # survivor revealed (its self seed, when it got that far) still leaves its pairwise masks
    # with the gone node on its vector: no input can be read off the wire.
    for i, node in enumerate(spec.node_ids):
        masked = agg.decode_vector(agg.b64d(r.sent_by(node, "rxfed.agg.masked")["vector"]), 8, 32)
        reveals = [loads(d) for s, _, d in r.wire if s == node and loads(d)["type"] == "rxfed.agg.reveal"]
        if reveals:
            self_mask = expand(agg.b64d(reveals[0]["self_seed"]), 8, 32)
            masked = [(y - m) % 2**32 for y, m in zip(masked, self_mask)]
            assert reveals[0]["pair_seeds"] == {}
        assert masked != values[i]
    assert not [d for s, _, d in r.wire if s == gone and loads(d)["type"] == "rxfed.agg.reveal"]


def test_no_nodes_counts_cross_the_wire():
    """Every byte of a round, in either direction: no node's vector appears, encoded or as
    JSON numbers, and the only thing that decodes to the counts is the aggregator's total."""
    spec = make_spec(3, 6)
    values = [[3, 1, 4, 1, 5, 9], [2, 6, 5, 3, 5, 8], [9, 7, 9, 3, 2, 3]]
    r = Round(spec, vectors_for(spec, values))
    assert r.run().total == tuple(map(sum, zip(*values)))
    for v in values:
        encoded = agg.b64e(agg.encode_vector(v, 32))
        as_json = canonical(v)[1:-1]
        for _, _, data in r.wire:
            assert encoded.encode() not in data and as_json not in data


def test_a_node_silent_after_the_roster_abandons_a_round_that_tolerates_no_dropout():
    spec = make_spec(3, 4, collusion=1, dropouts=0)
    r = Round(spec, vectors_for(spec, [[1] * 4] * 3))
    r.silent[spec.node_ids[1]] = "rxfed.agg.roster"
    outcome = r.run()
    assert outcome.phase == Phase.ABANDONED and "needs 3" in outcome.reason
    assert not [d for s, _, d in r.wire if loads(d)["type"] in ("rxfed.agg.survivors", "rxfed.agg.reveal")]


def test_too_few_adverts_abandon_before_anything_is_sent():
    spec = make_spec(3, 4, collusion=0, dropouts=1)
    r = Round(spec, vectors_for(spec, [[1] * 4] * 3))
    r.silent[spec.node_ids[0]] = "advert"
    r.silent[spec.node_ids[1]] = "advert"
    outcome = r.run()
    assert outcome.phase == Phase.ABANDONED
    assert not [d for s, _, d in r.wire if s != "aggregator" and loads(d)["type"] == "rxfed.agg.masked"]


def test_a_masked_vector_differs_from_the_counts_changes_per_round_and_looks_uniform():
    cells = 4096
    counts = [7] * cells
    seen = []
    for _ in range(2):
        spec = make_spec(3, cells)
        r = Round(spec, vectors_for(spec, [counts] * 3))
        assert r.run().total == tuple([21] * cells)
        seen.append(agg.decode_vector(agg.b64d(r.sent_by(spec.node_ids[1], "rxfed.agg.masked")["vector"]), cells, 32))
    assert seen[0] != counts and seen[1] != counts and seen[0] != seen[1]
    assert sum(a == b for a, b in zip(seen[0], seen[1])) < 3
    # the top byte of each masked cell: a chi-square against uniform over 256 values, at the
    # 1e-6 level (z = 4.753) since the masks are fresh randomness in every run
    top = Counter(v >> 24 for v in seen[0])
    e = cells / 256
    stat = sum((top.get(b, 0) - e) ** 2 / e for b in range(256))
    df = 255
    assert stat < df * (1 - 2 / (9 * df) + 4.753 * math.sqrt(2 / (9 * df))) ** 3


def test_a_round_with_no_dropout_reveals_no_pairwise_seed_and_only_the_total():
    spec = make_spec(3, 5)
    values = [[1, 2, 3, 4, 5], [10, 20, 30, 40, 50], [0, 0, 0, 0, 1]]
    r = Round(spec, vectors_for(spec, values))
    assert r.run().total == (11, 22, 33, 44, 56)
    for node in spec.node_ids:
        assert r.sent_by(node, "rxfed.agg.reveal")["pair_seeds"] == {}


# -- what a participant refuses ------------------------------------------------------------


def started(n=3, cells=4, **kw):
    spec = make_spec(n, cells, **kw)
    parts = {node: Participant(spec, node, KEYS[node], [1] * cells) for node in spec.node_ids}
    a = Aggregator(spec)
    out = []
    for node, p in parts.items():
        out += a.receive(node, p.advert())
    return spec, parts, a, out


def test_a_participant_refuses_a_second_roster_a_foreign_round_and_junk():
    spec, parts, a, out = started()
    node, roster = out[0]
    p = parts[node]
    masked = p.receive(roster)
    with pytest.raises(AggregationReplay):
        p.receive(roster)  # replayed
    other = loads(roster)
    other["round"] = "0" * 32
    with pytest.raises(AggregationReplay):
        p.receive(canonical(other))
    for junk in (b"", b"{", b"[]", b'{"type":"rxfed.agg.roster"}', canonical({"type": "x", "round": spec.round}),
                 b"\xff\xfe", canonical({**loads(roster), "extra": 1})):
        with pytest.raises(RxfedError) as info:
            p.receive(junk)
        assert 400 <= info.value.status < 500
    with pytest.raises(AggregationTooLarge):
        p.receive(b" " * (spec.max_message + 1))
    assert p.phase == Phase.MASKED and masked


def test_a_participant_refuses_a_roster_without_its_key_or_with_a_forged_advert():
    spec, parts, a, out = started()
    node, roster = out[0]
    obj = loads(roster)
    mine = [x for x in obj["adverts"] if x["body"]["node"] == node]
    others = [x for x in obj["adverts"] if x["body"]["node"] != node]
    with pytest.raises(AggregationRefused):
        parts[node].receive(canonical({**obj, "adverts": others}))
    forged = dict(others[0], body={**others[0]["body"], "mask_key": agg.b64e(MaskKeyPair.generate().public)})
    with pytest.raises(AggregationError):
        parts[node].receive(canonical({**obj, "adverts": mine + [forged] + others[1:]}))
    # an advert for another spec (say, a different epsilon) does not verify as this round's
    other_spec = RoundSpec(round=spec.round, aggregator=spec.aggregator, nodes=spec.nodes, cells=spec.cells,
                           table="another table", collusion=spec.collusion)
    stranger = Participant(other_spec, others[0]["body"]["node"], KEYS[others[0]["body"]["node"]], [0] * 4)
    alien = loads(stranger.advert())["advert"]
    with pytest.raises(AggregationError) as info:
        parts[node].receive(canonical({**obj, "adverts": mine + [alien] + others[1:]}))
    assert info.value.code == "aggregation_spec_mismatch"
    assert parts[node].phase == Phase.ADVERTISE
    assert parts[node].receive(roster)  # and the real roster still works


def advance_to_survivors(spec, parts, a, out):
    nxt = []
    for node, data in out:
        nxt += a.receive(node, parts[node].receive(data))
    return nxt


def test_a_participant_reveals_nothing_for_a_list_it_did_not_sign_or_that_leaves_it_out():
    spec, parts, a, out = started(collusion=0, dropouts=1)
    survivors = advance_to_survivors(spec, parts, a, out)
    node, data = survivors[0]
    obj = loads(data)
    p = parts[node]
    without_me = [n for n in obj["nodes"] if n != node]
    with pytest.raises(AggregationRefused):
        p.receive(canonical({**obj, "nodes": without_me}))
    signed = p.receive(data)
    # an unmask for another list (one leaving out a peer, to learn its pairwise seed) is refused
    peer = [n for n in obj["nodes"] if n != node][0]
    smaller = [n for n in obj["nodes"] if n != peer]
    sig = loads(signed)["sig"]
    with pytest.raises(AggregationRefused):
        p.receive(canonical({"type": "rxfed.agg.unmask", "round": spec.round, "nodes": smaller,
                             "sigs": {node: sig}}))
    # the right list without every survivor's signature, or with a forged one, is refused too
    with pytest.raises(AggregationRefused):
        p.receive(canonical({"type": "rxfed.agg.unmask", "round": spec.round, "nodes": obj["nodes"],
                             "sigs": {node: sig}}))
    with pytest.raises(AggregationRefused):
        p.receive(canonical({"type": "rxfed.agg.unmask", "round": spec.round, "nodes": obj["nodes"],
                             "sigs": {n: sig for n in obj["nodes"]}}))
    assert p.phase == Phase.CONSISTENCY


def test_an_aggregator_telling_nodes_different_survivor_lists_gets_no_reveal():
    """The aggregator claims to one pair that the third node dropped (to learn its pairwise
    seeds and so unmask it) while telling the third it survived: the lists differ, so no
    list carries every named survivor's signature and nobody reveals anything."""
    spec, parts, a, out = started(n=3, collusion=0, dropouts=1)
    survivors = advance_to_survivors(spec, parts, a, out)
    x, y, z = spec.node_ids
    full = loads(survivors[0][1])["nodes"]
    sigs_full = {z: loads(parts[z].receive(canonical({"type": "rxfed.agg.survivors", "round": spec.round,
                                                      "nodes": full})))["sig"]}
    pair = [x, y]
    sigs_pair = {n: loads(parts[n].receive(canonical({"type": "rxfed.agg.survivors", "round": spec.round,
                                                      "nodes": pair})))["sig"] for n in pair}
    for n in pair:
        with pytest.raises(AggregationRefused):
            parts[n].receive(canonical({"type": "rxfed.agg.unmask", "round": spec.round, "nodes": pair,
                                        "sigs": {**sigs_pair, z: sigs_full[z]}}))
    with pytest.raises(AggregationRefused):
        parts[z].receive(canonical({"type": "rxfed.agg.unmask", "round": spec.round, "nodes": full,
                                    "sigs": {**sigs_full, **sigs_pair}}))


def test_a_survivor_list_outside_the_roster_a_node_was_given_is_refused():
    """An aggregator that left k out of x's roster (so x masked nothing with k) cannot then
    have x sign a list naming k: x would reveal its self seed while its vector carries no
    mask that k's secrecy protects."""
    spec, parts, a, out = started(n=3, collusion=0, dropouts=1)
    x, j, k = spec.node_ids
    roster = loads(dict(out)[x])
    parts[x].receive(canonical({**roster, "adverts": [ad for ad in roster["adverts"] if ad["body"]["node"] != k]}))
    with pytest.raises(AggregationRefused):
        parts[x].receive(canonical({"type": "rxfed.agg.survivors", "round": spec.round, "nodes": [x, k]}))


# -- what the aggregator refuses -----------------------------------------------------------


def test_the_aggregator_refuses_replays_strangers_impersonation_and_bad_vectors():
    spec = make_spec(3, 4)
    parts = {node: Participant(spec, node, KEYS[node], [2] * 4) for node in spec.node_ids}
    a = Aggregator(spec)
    x, y, z = spec.node_ids
    advert = parts[x].advert()
    a.receive(x, advert)
    with pytest.raises(AggregationReplay):
        a.receive(x, advert)
    with pytest.raises(AggregationRefused):
        a.receive(y, advert)  # x's advert sent by y
    with pytest.raises(AggregationRefused):
        a.receive("stranger.example", parts[y].advert())
    with pytest.raises(AggregationTooLarge):
        a.receive(y, b"{" * (spec.max_message + 1))
    out = a.receive(y, parts[y].advert()) + a.receive(z, parts[z].advert())
    assert a.phase == Phase.MASKED
    with pytest.raises(AggregationReplay):
        a.receive(z, parts[z].advert())  # the phase is over
    masked = {node: parts[node].receive(data) for node, data in out}
    obj = loads(masked[x])
    for vector in ("", "AAAA", agg.b64e(b"\0" * 15), agg.b64e(b"\0" * 17), "!!!!"):
        with pytest.raises(AggregationError):
            a.receive(x, canonical({**obj, "vector": vector}))
    with pytest.raises(AggregationError):
        a.receive(x, canonical({**obj, "vector": obj["vector"], "more": 1}))
    a.receive(x, masked[x])
    with pytest.raises(AggregationReplay):
        a.receive(x, masked[x])
    out = a.receive(y, masked[y]) + a.receive(z, masked[z])
    # every refusal above left the round able to finish with the right total
    nxt = []
    for node, data in out:
        nxt += a.receive(node, parts[node].receive(data))
    for node, data in nxt:
        a.receive(node, parts[node].receive(data))
    assert a.outcome.total == (6, 6, 6, 6)


def test_a_reveal_naming_seeds_it_should_not_is_refused():
    spec, parts, a, out = started(n=3, collusion=0, dropouts=1)
    survivors = advance_to_survivors(spec, parts, a, out)
    unmask = []
    for node, data in survivors:
        unmask += a.receive(node, parts[node].receive(data))
    node, data = unmask[0]
    reveal = loads(parts[node].receive(data))
    peer = [n for n in spec.node_ids if n != node][0]
    with pytest.raises(AggregationError):
        a.receive(node, canonical({**reveal, "pair_seeds": {peer: agg.b64e(b"\0" * 32)}}))
    with pytest.raises(AggregationError):
        a.receive(node, canonical({**reveal, "self_seed": agg.b64e(b"\0" * 31)}))


@pytest.mark.parametrize("kw, message", [
    (dict(n=3, collusion=1, dropouts=1), "must exceed collusion"),
    (dict(n=3, collusion=3, dropouts=0), "at least 1"),
    (dict(n=2, collusion=0, dropouts=1), "at least 2"),
    (dict(n=3, cells=0), "cells"),
    (dict(n=3, cells=agg.MAX_CELLS + 1), "cells"),
    (dict(n=3, bits=16), "bits"),
])
def test_a_round_spec_that_cannot_keep_its_promise_is_refused(kw, message):
    n = kw.pop("n")
    cells = kw.pop("cells", 4)
    with pytest.raises(AggregationError, match=message):
        make_spec(n, cells, **kw)


def test_a_round_spec_round_trips_through_json_and_its_digest_binds_every_field():
    spec = make_spec(3, 7, collusion=1)
    assert RoundSpec.from_json(loads(canonical(spec.to_json()))) == spec
    digests = {spec.digest}
    for change in ({"cells": 8}, {"table": "t2"}, {"bits": 64}, {"collusion": 0}):
        digests.add(RoundSpec(**{**{k: getattr(spec, k) for k in ("round", "aggregator", "nodes", "cells", "table",
                                                                       "bits", "collusion", "dropouts")},
                                 **change}).digest)
    assert len(digests) == 5
    with pytest.raises(AggregationError):
        RoundSpec.from_json({**spec.to_json(), "nodes": [["n0.example", "AAAA"]]})


def test_pair_keys_agree_and_seeds_are_bound_to_the_context():
    a, b = MaskKeyPair.generate(), MaskKeyPair.generate()
    assert a.pair_key(b.public) == b.pair_key(a.public)
    k = a.pair_key(b.public)
    assert mask_seed(k, b"round 1") != mask_seed(k, b"round 2")
    assert expand(mask_seed(k, b"x"), 3, 32) == expand(mask_seed(k, b"x"), 3, 32)
    with pytest.raises(Exception):
        a.pair_key(bytes(32))  # the all-zero point: no shared secret
    with pytest.raises(Exception):
        a.pair_key(a.public)


class StoredRound(Round):
    """A round whose every party is written out and read back (through JSON, as the node's
    store keeps them) between any two messages."""

    def _reload(self) -> None:
        import json

        self.aggregator = Aggregator.from_state(json.loads(json.dumps(self.aggregator.to_state())))
        self.participants = {n: Participant.from_state(json.loads(json.dumps(p.to_state())), KEYS[n])
                             for n, p in self.participants.items()}

    def send_to_aggregator(self, node, data):
        self._reload()
        return super().send_to_aggregator(node, data)

    def deliver(self, outgoing):
        self._reload()
        super().deliver(outgoing)


@settings(max_examples=20, deadline=None)
@given(st.data())
def test_a_round_kept_in_the_store_between_messages_ends_as_one_kept_in_memory(data):
    n = data.draw(st.sampled_from([3, 5]))
    spec = make_spec(n, 5, bits=48, collusion=1, dropouts=0 if n == 3 else 1)
    values = data.draw(st.lists(st.lists(st.integers(-10**6, 10**6), min_size=5, max_size=5), min_size=n,
                                max_size=n))
    r = StoredRound(spec, vectors_for(spec, values))
    if n == 5:
        r.silent[spec.node_ids[-1]] = "rxfed.agg.roster"
    outcome = r.run()
    kept = values if n == 3 else values[:-1]
    assert outcome.phase == Phase.DONE and list(outcome.total) == [sum(col) for col in zip(*kept)]
    # a finished participant's state holds no secret, and answers nothing more
    for node, p in r.participants.items():
        state = p.to_state()
        if p.phase in (Phase.DONE, Phase.ABANDONED):
            assert state["mask_secret"] is None and state["self_seed"] is None and state["vector"] is None
    survivor = next(n for n, p in r.participants.items() if p.phase == Phase.DONE)
    again = Participant.from_state(r.participants[survivor].to_state(), KEYS[survivor])
    with pytest.raises(RxfedError):
        again.receive(canonical({"type": "rxfed.agg.unmask", "round": spec.round, "nodes": [], "sigs": {}}))
    with pytest.raises(RxfedError):  # another node's identity key cannot take a participant's state
        Participant.from_state(r.participants[survivor].to_state(), KEYS[spec.node_ids[0] if survivor !=
                                                                            spec.node_ids[0] else spec.node_ids[1]])
