"""Private set intersection between two nodes (rxfed/protocol/psi.py), two sessions in memory."""

from __future__ import annotations

import itertools
import string
import struct

import attrs
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rxfed.crypto.ristretto import IDENTITY, ExponentKey, GroupHasher, hash_to_group
from rxfed.errors import RxfedError
from rxfed.protocol import psi
from rxfed.protocol.psi import (
    Blinded,
    Commitment,
    Hello,
    Phase,
    PsiContext,
    PsiLimits,
    Reveal,
    Role,
    accept,
    offered_categories,
    padded_size,
    start,
)

FEDERATION = "rxfed-test"
A, B = "hospital-a.example", "hospital-b.example"
#: Every string the diagnosis.category pattern admits: [A-U][0-9][0-9A-Z] (spec/signals.md).
CODE_SPACE = ["".join(c) for c in itertools.product(string.ascii_uppercase[:21], string.digits,
                                                      string.digits + string.ascii_uppercase)]


def codes(*names: str) -> set[bytes]:
    return {name.encode() for name in names}


@attrs.define
class Pair:
    """An initiator on node A and a responder on node B, stepped by hand."""

    a: psi.PsiSession
    b: psi.PsiSession
    messages: dict[str, bytes] = attrs.Factory(dict)

    @classmethod
    def open(cls, ours, theirs, *, limits=PsiLimits(), receive=True) -> Pair:
        context = PsiContext.new(FEDERATION, A, B)
        a, hello = start(context, ours, limits=limits)
        b, reply = accept(hello, federation=FEDERATION, me=B, peer=A, elements=theirs, limits=limits)
        return cls(a.receive_hello(reply) if receive else a, b, {"hello_a": hello, "hello_b": reply})

    def blind(self) -> Pair:
        self.a, self.messages["blinded_a"] = self.a.blind()
        self.b, self.messages["blinded_b"] = self.b.blind()
        return self

    def commit(self) -> Pair:
        self.a, self.messages["commit_a"] = self.a.receive_blinded(self.messages["blinded_b"])
        self.b, self.messages["commit_b"] = self.b.receive_blinded(self.messages["blinded_a"])
        return self

    def reveal(self) -> Pair:
        self.a, self.messages["reveal_a"] = self.a.receive_commitment(self.messages["commit_b"])
        self.b, self.messages["reveal_b"] = self.b.receive_commitment(self.messages["commit_a"])
        return self

    def finish(self) -> tuple[psi.PsiResult, psi.PsiResult]:
        self.a, result_a = self.a.receive_reveal(self.messages["reveal_b"])
        self.b, result_b = self.b.receive_reveal(self.messages["reveal_a"])
        return result_a, result_b


def run(ours, theirs, **kw) -> tuple[psi.PsiResult, psi.PsiResult]:
    return Pair.open(ours, theirs, **kw).blind().commit().reveal().finish()


def refused(code: str, call, *args, **kw) -> RxfedError:
    with pytest.raises(RxfedError) as info:
        call(*args, **kw)
    assert info.value.code == code, info.value.message
    return info.value


# --- the intersection ----------------------------------------------------------------

@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sets(st.sampled_from(CODE_SPACE[:80]), max_size=45), st.sets(st.sampled_from(CODE_SPACE[:80]), max_size=45))
def test_psi_equals_the_naive_intersection(ours, theirs):
    ours, theirs = {c.encode() for c in ours}, {c.encode() for c in theirs}
    result_a, result_b = run(ours, theirs)
    assert result_a.common == result_b.common == ours & theirs
    assert (result_a.own_size, result_b.own_size) == (len(ours), len(theirs))
    assert result_a.peer_padded == result_b.own_padded == padded_size(len(theirs))
    assert result_b.peer_padded == result_a.own_padded == padded_size(len(ours))


def test_empty_and_disjoint_sets():
    assert run(set(), set())[0].common == frozenset()
    assert run(codes("G40"), set())[1].common == frozenset()
    assert run(codes("G40", "E11"), codes("F20", "I10")) [0].common == frozenset()
    assert run(codes("G40", "E11"), codes("E11", "G40"))[0].common == codes("G40", "E11")


def test_a_session_needs_every_step_in_order():
    pair = Pair.open(codes("G40"), codes("G40"))
    assert pair.a.phase is pair.b.phase is Phase.READY
    refused("psi_out_of_order", pair.a.receive_hello, pair.messages["hello_b"])
    refused("psi_out_of_order", pair.b.receive_hello, pair.messages["hello_a"])
    refused("psi_out_of_order", pair.a.receive_blinded, b"")
    pair.blind()
    refused("psi_out_of_order", pair.a.blind)
    refused("psi_out_of_order", pair.a.receive_commitment, b"")
    refused("psi_out_of_order", pair.a.receive_reveal, b"")
    pair.commit()
    refused("psi_out_of_order", pair.a.receive_blinded, pair.messages["blinded_b"])
    refused("psi_out_of_order", pair.a.receive_reveal, b"")
    pair.reveal()
    result_a, _ = pair.finish()
    assert result_a.common == codes("G40") and pair.a.phase is Phase.DONE
    refused("psi_out_of_order", pair.a.receive_reveal, pair.messages["reveal_b"])


def test_the_transition_table_is_a_line():
    steps = list(psi.TRANSITIONS.items())
    for (_, before), after in steps:
        assert [b for (_, b), _ in steps].count(before) == 1
    assert {after for after in psi.TRANSITIONS.values()} | {Phase.HELLO_SENT} == set(Phase)


# --- what a node offers --------------------------------------------------------------

def test_a_category_is_offered_only_with_k_consenting_patients():
    consents = [(f"p{i}", "G40") for i in range(10)] + [(f"p{i}", "E11") for i in range(11)]
    assert offered_categories(consents) == {"E11"}
    assert offered_categories(consents, k=10) == {"G40", "E11"}
    assert offered_categories(consents, k=12) == frozenset()
    # one patient twice is one patient
    assert offered_categories(consents + [("p0", "G40")] * 5) == {"E11"}
    assert offered_categories([]) == frozenset()
    for k in (0, -1, 1.5, "11"):
        with pytest.raises(ValueError):
            offered_categories(consents, k=k)


def test_a_node_with_k_minus_1_patients_offers_nothing_a_probing_peer_could_learn():
    """Node B holds 10 consenting G40 patients and 11 E11 ones. A peer that offers every
    category its cap lets it (G40 and E11 among them) learns E11, never G40; a node that
    faked one G40 patient of its own learns no more, since what it offers is its choice
    and B offers G40 to nobody."""
    consents = [(f"p{i}", "G40") for i in range(10)] + [(f"p{i}", "E11") for i in range(11)]
    offered = {c.encode() for c in offered_categories(consents)}
    probe = set(CODE_SPACE[:1000]) | {"G40", "E11"}
    probe = {c.encode() for c in list(probe)[:1000]} | codes("G40", "E11")
    assert len(probe) <= 1008
    result_probe, result_b = run(probe, offered)
    assert result_probe.common == result_b.common == codes("E11")


def test_the_whole_code_space_is_refused_by_the_caps():
    everything = {c.encode() for c in CODE_SPACE}
    assert len(everything) == 7560
    context = PsiContext.new(FEDERATION, A, B)
    # our own node will not send it
    refused("psi_too_large", start, context, everything)
    # a peer's hello announcing it is refused before any work
    hello = Hello(context.session_id, Role.INITIATOR, padded_size(len(everything)), FEDERATION, A, B).to_bytes()
    refused("psi_too_large", accept, hello, federation=FEDERATION, me=B, peer=A, elements=codes("G40"))
    # a peer that announces a small set and then sends it all is refused by size
    points = tuple(hash_to_group(c, b"x") for c in sorted(everything))
    pair = Pair.open(codes("G40"), codes("G40")).blind()
    big = Blinded(pair.a.context.session_id, ExponentKey.generate().public, points).to_bytes()
    assert len(big) > PsiLimits().max_message_size()
    refused("psi_too_large", pair.a.receive_blinded, big)
    # with a raised cap it still must match what the hello announced
    limits = PsiLimits(max_elements=8192)
    pair = Pair.open(codes("G40"), codes("G40"), limits=limits).blind()
    big = Blinded(pair.a.context.session_id, ExponentKey.generate().public, points).to_bytes()
    refused("psi_malformed", pair.a.receive_blinded, big)


def test_padded_sizes_are_buckets_with_room_for_dummies():
    assert padded_size(0) == 64 and padded_size(48) == 64 and padded_size(49) == 72
    assert padded_size(10_000) == 10240 and padded_size(100_000) == 106496
    assert padded_size(5, minimum=1) == 22 and psi.is_bucket(22) and psi.is_bucket(20)
    assert not psi.is_bucket(17) and not psi.is_bucket(0) and psi.is_bucket(18)


@given(st.integers(0, 2**22))
def test_padding_hides_size_within_a_bucket(n):
    size = padded_size(n, minimum=1)
    assert psi.is_bucket(size)
    assert n + psi.MIN_DUMMIES <= size <= (n + psi.MIN_DUMMIES) * 9 // 8 + 1
    assert padded_size(n) == max(64, size)


# --- bad input ------------------------------------------------------------------------

def test_duplicate_identity_and_invalid_elements_are_refused():
    pair = Pair.open(codes("G40", "E11"), codes("G40")).blind()
    blinded = Blinded.from_bytes(pair.messages["blinded_b"], limits=PsiLimits())
    elements = list(blinded.elements)
    sid = blinded.session_id

    duplicate = Blinded(sid, blinded.public, tuple(elements[:-1] + elements[:1])).to_bytes()
    refused("psi_malformed", pair.a.receive_blinded, duplicate)
    identity = Blinded(sid, blinded.public, tuple(elements[:-1] + [IDENTITY])).to_bytes()
    refused("psi_malformed", pair.a.receive_blinded, identity)
    not_canonical = bytes.fromhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f")
    refused("psi_malformed", pair.a.receive_blinded, Blinded(sid, blinded.public, tuple(elements[:-1] + [not_canonical])).to_bytes())
    refused("psi_malformed", pair.a.receive_blinded, Blinded(sid, IDENTITY, tuple(elements)).to_bytes())
    refused("psi_malformed", pair.a.receive_blinded, Blinded(sid, blinded.public, tuple(elements[:-1])).to_bytes())
    # the session was left as it was: the genuine message still goes through
    pair.commit().reveal()
    assert pair.finish()[0].common == codes("G40")


def test_duplicate_tags_in_a_reveal_are_refused():
    pair = Pair.open(codes("G40"), codes("G40")).blind().commit().reveal()
    reveal = Reveal.from_bytes(pair.messages["reveal_b"], limits=PsiLimits())
    doubled = Reveal(reveal.session_id, reveal.tags[:-1] + reveal.tags[:1]).to_bytes()
    refused("psi_malformed", pair.a.receive_reveal, doubled)
    refused("psi_malformed", pair.a.receive_reveal, Reveal(reveal.session_id, reveal.tags[:-1]).to_bytes())
    assert pair.finish()[0].common == codes("G40")


STAGES = {"hello": ("hello_b", "receive_hello"), "blinded": ("blinded_b", "receive_blinded"),
          "commit": ("commit_b", "receive_commitment"), "reveal": ("reveal_b", "receive_reveal")}


@pytest.mark.parametrize("stage", list(STAGES))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_a_mangled_message_is_refused_cleanly_and_changes_nothing(stage, data):
    pair = Pair.open(codes("G40", "E11"), codes("G40"), receive=stage != "hello")
    if stage != "hello":
        pair.blind()
    if stage in ("commit", "reveal"):
        pair.commit()
    if stage == "reveal":
        pair.reveal()
    name, step = STAGES[stage]
    genuine = pair.messages[name]
    mangle = data.draw(st.sampled_from(["cut", "extend", "flip", "replace"]))
    if mangle == "cut":
        bad = genuine[:data.draw(st.integers(0, len(genuine) - 1))]
    elif mangle == "extend":
        bad = genuine + data.draw(st.binary(min_size=1, max_size=64))
    elif mangle == "flip":
        i = data.draw(st.integers(0, len(genuine) - 1))
        bad = genuine[:i] + bytes([genuine[i] ^ data.draw(st.integers(1, 255))]) + genuine[i + 1:]
    else:
        bad = data.draw(st.binary(max_size=200))
    assume(bad != genuine)
    try:
        outcome = getattr(pair.a, step)(bad)
    except RxfedError as exc:
        assert exc.code in psi.ERROR_CODES and exc.code != "psi_out_of_order" and 400 <= exc.status < 500
    else:
        # A flipped bit that still parses (another group element, another commitment) is
        # caught where it matters: the peer's reveal then fails its checks.
        assert stage in ("hello", "blinded", "commit"), mangle
        if stage == "hello":
            # only the announced size can change and still parse: the peer's set then
            # does not match it
            session, _ = outcome.blind()
            _, blinded_b = pair.b.blind()
            refused("psi_malformed", session.receive_blinded, blinded_b)
        if stage == "commit":
            session, _ = outcome
            _, reveal_b = pair.b.receive_commitment(pair.messages["commit_a"])
            with pytest.raises(RxfedError) as info:
                session.receive_reveal(reveal_b)
            assert info.value.code == "psi_peer_misbehaved"
    # The refused message changed nothing: the session goes on with the genuine one.
    if stage == "hello":
        pair.a = pair.a.receive_hello(genuine)
        pair.blind()
    if stage in ("hello", "blinded"):
        pair.commit()
    if stage in ("hello", "blinded", "commit"):
        pair.reveal()
    assert pair.finish()[0].common == codes("G40")


@pytest.mark.parametrize("junk", [b"", b"RXPSI", b"\0" * 100, "text", None, 12, b"RXPSI\x02\x01" + bytes(16) + bytes(40)])
def test_junk_is_refused_at_every_step(junk):
    context = PsiContext.new(FEDERATION, A, B)
    with pytest.raises(RxfedError) as info:
        accept(junk, federation=FEDERATION, me=B, peer=A, elements=set())
    assert info.value.code == "psi_malformed"
    for kind in (Hello, Blinded, Commitment, Reveal):
        with pytest.raises(RxfedError):
            kind.from_bytes(junk, limits=PsiLimits())
    session, _ = start(context, codes("G40"))
    with pytest.raises(RxfedError):
        session.receive_hello(junk)


def test_a_message_of_another_type_or_version_is_refused():
    pair = Pair.open(codes("G40"), codes("G40")).blind()
    refused("psi_malformed", pair.a.receive_blinded, pair.messages["hello_b"])
    version_2 = pair.messages["blinded_b"][:5] + b"\x02" + pair.messages["blinded_b"][6:]
    assert "version 2" in refused("psi_malformed", pair.a.receive_blinded, version_2).message


def test_a_hello_must_name_this_session_and_these_nodes():
    context = PsiContext.new(FEDERATION, A, B)
    session, hello = start(context, codes("G40"))
    kw = dict(elements=codes("G40"))
    refused("psi_wrong_session", accept, hello, federation="other", me=B, peer=A, **kw)
    refused("psi_wrong_session", accept, hello, federation=FEDERATION, me="hospital-c.example", peer=A, **kw)
    refused("psi_wrong_session", accept, hello, federation=FEDERATION, me=B, peer="hospital-c.example", **kw)
    # a responder's hello is no opening
    _, reply = accept(hello, federation=FEDERATION, me=B, peer=A, **kw)
    refused("psi_wrong_session", accept, reply, federation=FEDERATION, me=A, peer=B, **kw)
    # the initiator takes only the answer to its own session, from the node it asked
    other, _ = start(PsiContext.new(FEDERATION, A, B), codes("G40"))
    refused("psi_wrong_session", other.receive_hello, reply)
    forged = Hello(context.session_id, Role.RESPONDER, 64, FEDERATION, "hospital-c.example", A).to_bytes()
    refused("psi_wrong_session", session.receive_hello, forged)
    odd = Hello(context.session_id, Role.RESPONDER, 65, FEDERATION, B, A).to_bytes()
    refused("psi_malformed", session.receive_hello, odd)
    assert session.receive_hello(reply).phase is Phase.READY


def test_messages_of_another_session_are_refused():
    one = Pair.open(codes("G40"), codes("G40")).blind().commit().reveal()
    two = Pair.open(codes("G40"), codes("G40")).blind()
    refused("psi_wrong_session", two.a.receive_blinded, one.messages["blinded_b"])
    two.commit()
    refused("psi_wrong_session", two.a.receive_commitment, one.messages["commit_b"])
    two.reveal()
    refused("psi_wrong_session", two.a.receive_reveal, one.messages["reveal_b"])


def test_context_and_limits_are_checked():
    for args in ((FEDERATION, bytes(15), A, B), (FEDERATION, bytes(16), A, A), ("", bytes(16), A, B),
                 ("x" * 256, bytes(16), A, B), (FEDERATION, "0" * 16, A, B)):
        with pytest.raises(ValueError):
            PsiContext(*args)
    for kw in ({"max_elements": 0}, {"max_elements": 2**25}, {"min_padded": 0}, {"min_padded": 2048}):
        with pytest.raises(ValueError):
            PsiLimits(**kw)
    with pytest.raises(TypeError):
        start(PsiContext.new(FEDERATION, A, B), ["G40"])  # type: ignore[list-item]


# --- a peer that cheats ------------------------------------------------------------------

def test_a_reveal_other_than_the_one_committed_to_is_caught():
    pair = Pair.open(codes("G40", "E11"), codes("G40")).blind().commit().reveal()
    reveal = Reveal.from_bytes(pair.messages["reveal_b"], limits=PsiLimits())
    swapped = Reveal(reveal.session_id, (reveal.tags[1], reveal.tags[0]) + reveal.tags[2:]).to_bytes()
    refused("psi_peer_misbehaved", pair.a.receive_reveal, swapped)


def test_a_peer_that_raises_our_set_to_another_key_is_caught():
    """B publishes one key and raises A's set to another, committing to what it sends:
    A's dummies, raised to the published key, do not match."""
    pair = Pair.open(codes("G40", "E11"), codes("G40")).blind()
    pair.b = attrs.evolve(pair.b, key=ExponentKey.generate())
    pair.commit().reveal()
    refused("psi_peer_misbehaved", pair.a.receive_reveal, pair.messages["reveal_b"])


def test_a_peer_that_sends_back_our_commitment_is_refused_before_we_reveal():
    pair = Pair.open(codes("G40"), codes("G40")).blind().commit()
    refused("psi_peer_misbehaved", pair.a.receive_commitment, pair.messages["commit_a"])


# --- freshness, domain separation, secrets, size ----------------------------------------

def test_every_session_blinds_with_a_fresh_key():
    one = Pair.open(codes("G40"), codes("G40")).blind()
    two = Pair.open(codes("G40"), codes("G40")).blind()
    first = set(Blinded.from_bytes(one.messages["blinded_a"], limits=PsiLimits()).elements)
    second = set(Blinded.from_bytes(two.messages["blinded_a"], limits=PsiLimits()).elements)
    assert not first & second
    assert one.a.key != two.a.key != one.b.key


def test_the_hash_to_group_input_names_federation_session_and_both_nodes():
    context = PsiContext(FEDERATION, bytes(16), A, B)
    point = GroupHasher(psi.HASH_DST, context.hash_prefix())(b"G40")
    assert point == hash_to_group(context.hash_prefix() + b"G40", psi.HASH_DST)
    others = [PsiContext("other", bytes(16), A, B), PsiContext(FEDERATION, b"\1" * 16, A, B),
              PsiContext(FEDERATION, bytes(16), B, A), PsiContext(FEDERATION, bytes(16), A, "hospital-c.example"),
              PsiContext(FEDERATION, bytes(16), A + "x", B[1:])]
    prefixes = {context.hash_prefix()} | {c.hash_prefix() for c in others}
    assert len(prefixes) == len(others) + 1
    for other in others:
        assert GroupHasher(psi.HASH_DST, other.hash_prefix())(b"G40") != point


def test_secrets_stay_out_of_repr():
    pair = Pair.open(codes("G40"), codes("G40", "E11")).blind().commit()
    text = repr(pair.a) + repr(pair.b)
    assert "G40" not in text and "E11" not in text
    assert pair.a.key.scalar.hex() not in text and "scalar" not in text


def test_wire_bytes_per_element():
    ours = {f"x{i:05d}".encode() for i in range(1000)}
    theirs = {f"x{i:05d}".encode() for i in range(500, 1500)}
    pair = Pair.open(ours, theirs).blind().commit().reveal()
    result_a, _ = pair.finish()
    assert len(result_a.common) == 500
    total = sum(len(m) for m in pair.messages.values())
    assert total / 1000 <= 100, total
    padded = padded_size(1000)
    assert len(pair.messages["blinded_a"]) == psi._HEADER_SIZE + 36 + 32 * padded
    assert len(pair.messages["reveal_a"]) == psi._HEADER_SIZE + 4 + psi.TAG_SIZE * padded
    assert len(pair.messages["commit_a"]) == psi._HEADER_SIZE + 32
    header = struct.unpack_from(">5sBB16s", pair.messages["blinded_a"])
    assert header[:3] == (b"RXPSI", 1, 2)


def test_max_message_size_bounds_every_message():
    limits = PsiLimits(max_elements=128)
    pair = Pair.open(codes(*CODE_SPACE[:112]), codes(*CODE_SPACE[50:150]), limits=limits).blind().commit().reveal()
    assert max(len(m) for m in pair.messages.values()) <= limits.max_message_size()
    assert len(pair.messages["blinded_a"]) == limits.max_message_size()


def test_the_vector_session_follows_the_spec():
    """spec/vectors/psi.json (checked current by tests/test_vectors.py), recomputed from the
    formulas of spec/crypto.md §13 with hashlib and the group alone."""
    import hashlib
    import json
    from pathlib import Path

    from rxfed.crypto import b64d

    v = json.loads((Path(__file__).resolve().parents[1] / "spec" / "vectors" / "psi.json").read_text())
    m = {name: b64d(value) for name, value in v["messages"].items()}
    ctx = v["context"]
    prefix = b"".join(bytes([len(x)]) + x for x in (ctx["federation"].encode(), b64d(ctx["session_id"]),
                                                    ctx["initiator"].encode(), ctx["responder"].encode()))
    assert prefix == b64d(ctx["hash_prefix"])
    dst = v["dst"].encode()
    for element, point in v["hash_to_group"].items():
        assert hash_to_group(prefix + element.encode(), dst) == b64d(point)
    a, b = ExponentKey(b64d(v["keys"]["initiator"])), ExponentKey(b64d(v["keys"]["responder"]))
    assert a.public == b64d(v["public"]["initiator"]) and b.public == b64d(v["public"]["responder"])
    g40 = b64d(v["hash_to_group"]["G40"])
    assert a.exponentiate(g40) == b64d(v["blinded_g40_by_initiator"])
    assert b.exponentiate(a.exponentiate(g40)) == a.exponentiate(b.exponentiate(g40)) == b64d(v["doubly_blinded_g40"])

    transcript = hashlib.blake2b(m["hello_initiator"] + m["hello_responder"], digest_size=32,
                                 person=b"rxfed-psi-th").digest()
    assert transcript == b64d(v["transcript"])
    header = 5 + 1 + 1 + 16
    blinded_a = [m["blinded_initiator"][header + 36 + 32 * i:header + 68 + 32 * i] for i in range(v["padded"]["initiator"])]
    assert b64d(v["blinded_g40_by_initiator"]) in blinded_a
    tags_of_a = [m["reveal_responder"][header + 4 + 12 * i:header + 16 + 12 * i] for i in range(v["padded"]["initiator"])]
    g40_tag = hashlib.blake2b(b64d(v["doubly_blinded_g40"]), digest_size=12, key=transcript,
                              person=b"rxfed-psi-tag").digest()
    assert tags_of_a[blinded_a.index(b64d(v["blinded_g40_by_initiator"]))] == g40_tag
    assert g40_tag in m["reveal_initiator"]
    for role, name in ((0, "initiator"), (1, "responder")):
        digest = hashlib.blake2b(bytes([role]) + m[f"reveal_{name}"], digest_size=32, key=transcript,
                                 person=b"rxfed-psi-commit").digest()
        assert m[f"commitment_{name}"] == m[f"commitment_{name}"][:header] + digest
    assert v["common"] == ["G40", "J45"]



def test_threads_share_the_work_and_change_nothing():
    ours = {f"x{i:04d}".encode() for i in range(700)}
    theirs = {f"x{i:04d}".encode() for i in range(350, 1050)}
    pair = Pair.open(ours, theirs)
    one_a, blinded_one = pair.a.blind()
    two_a, blinded_two = pair.a.blind(workers=3)
    assert blinded_one == blinded_two and one_a == two_a
    b, blinded_b = pair.b.blind(workers=2)
    assert one_a.receive_blinded(blinded_b) == one_a.receive_blinded(blinded_b, workers=2)
    # a bad element in any thread's share is refused as from one thread
    parsed = Blinded.from_bytes(blinded_b, limits=PsiLimits())
    bad = Blinded(parsed.session_id, parsed.public, parsed.elements[:-1] + (bytes.fromhex("ec" + "ff" * 30 + "7f"),)).to_bytes()
    refused("psi_malformed", one_a.receive_blinded, bad, workers=2)
    for workers in (0, -1, 1.5):
        with pytest.raises(ValueError):
            pair.a.blind(workers=workers)
