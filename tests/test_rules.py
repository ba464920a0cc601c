"""The pure rules the store applies inside its transactions (rxfed.protocol.account,
rxfed.protocol.community, rxfed.consent.audit and rxfed.consent.tokens), tested without a
store: every backend gets these decisions from the same functions."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxfed.consent import audit
from rxfed.consent.tokens import ReceivedState, TokenOutcome, check_share, on_delivery
from rxfed.errors import Conflict, Forbidden, Gone, QuotaExceeded
from rxfed.protocol import account as pa
from rxfed.protocol import community as pcm

TOTALS = pa.VaultTotals(counter=4, records=2, bytes=300, epoch=1)
STORED = {"a": pa.Stored(1, 100), "b": pa.Stored(3, 200)}


def plan(*, puts=(), deletes=(), counter=5, epoch=1, max_records=10, max_bytes=10_000, stored=STORED, base=None):
    return pa.plan_commit(TOTALS, stored, counter=counter, epoch=epoch, puts=puts, deletes=deletes,
                          max_records=max_records, max_bytes=max_bytes, base=base)


def test_a_commit_plans_inserts_replacements_and_deletions_with_new_totals():
    p = plan(puts=[("c", 1, 50), ("b", 4, 120)], deletes=[("a", 1)])
    assert (p.inserts, p.replaces, p.deletes) == (("c",), ("b",), ("a",))
    assert p.totals == pa.VaultTotals(counter=5, records=2, bytes=170, epoch=1)


@pytest.mark.parametrize("change, code", [
    ({"counter": 4}, "stale_manifest"),                      # a replay of the last commit
    ({"counter": 6}, "stale_manifest"),                      # skipped one
    ({"epoch": 2}, "stale_identity"),
    ({"puts": [("a", 1, 10)]}, "stale_record"),              # version 1 of a record that exists
    ({"puts": [("b", 3, 10)]}, "stale_record"),              # not the next version
    ({"puts": [("z", 2, 10)]}, "stale_record"),              # next version of nothing
    ({"puts": [("c", 1, 10), ("c", 1, 10)]}, "stale_record"),
    ({"deletes": [("b", 2)]}, "stale_record"),
    ({"deletes": [("z", 1)]}, "stale_record"),
    ({"puts": [("b", 4, 10)], "deletes": [("b", 3)]}, "stale_record"),
])
def test_a_commit_that_does_not_follow_the_vault_is_a_conflict(change, code):
    with pytest.raises(Conflict) as caught:
        plan(**change)
    assert caught.value.code == code


def test_the_quota_counts_what_the_commit_leaves():
    with pytest.raises(QuotaExceeded):
        plan(puts=[("c", 1, 10)], max_records=2)
    # deleting one and adding one stays within two records
    assert plan(puts=[("c", 1, 10)], deletes=[("a", 1)], max_records=2).totals.records == 2
    with pytest.raises(QuotaExceeded):
        plan(puts=[("b", 4, 9_901)])
    assert plan(puts=[("b", 4, 9_900)]).totals.bytes == 10_000


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(1, 3), st.integers(0, 500)), max_size=6),
       st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(1, 3)), max_size=4))
def test_a_plan_keeps_the_totals_true(puts, deletes):
    stored = {"a": pa.Stored(1, 100), "b": pa.Stored(2, 40), "c": pa.Stored(3, 7)}
    totals = pa.VaultTotals(0, 3, 147, 1)
    try:
        p = pa.plan_commit(totals, stored, counter=1, epoch=1, puts=puts, deletes=deletes,
                           max_records=1000, max_bytes=10**9)
    except Conflict:
        return
    after = {rid: row.size for rid, row in stored.items()}
    for rid, _version, size in puts:
        after[rid] = size
    for rid in p.deletes:
        del after[rid]
    assert p.totals.records == len(after) and p.totals.bytes == sum(after.values())
    assert set(p.inserts).isdisjoint(stored) and set(p.replaces) <= set(stored)


def test_rotation_revokes_the_active_devices_it_does_not_keep():
    assert pa.plan_rotation({"d1", "d2", "d3"}, {"d1"}, "d1", counter=3, manifest_counter=4) == ["d2", "d3"]
    assert pa.plan_rotation({"d1", "d2"}, {"d1", "d2"}, None, counter=3, manifest_counter=4) == []
    for kept, signer, counter, code in [({"d9"}, "d1", 4, "unknown_device"), ({"d2"}, "d1", 4, "unknown_device"),
                                        ({"d1"}, "d1", 5, "stale_manifest")]:
        with pytest.raises(Conflict) as caught:
            pa.plan_rotation({"d1", "d2"}, kept, signer, counter=3, manifest_counter=counter)
        assert caught.value.code == code
    with pytest.raises(Forbidden):
        pa.check_enrolment(5, 5)
    pa.check_enrolment(4, 5)
    with pytest.raises(Conflict):
        pa.check_epoch(3, 2)


def test_the_audit_chain_appends_numbered_entries_that_verify():
    first = audit.append(None, [{"event": "granted"}, {"event": "shared", "time": 7}], now=100)
    assert [a.seq for a in first] == [1, 2]
    assert first[1].entry == b'{"event":"shared","seq":2,"time":7}'
    more = audit.append((first[-1].seq, first[-1].hash), [{"event": "revoked"}], now=101)
    entries = [a.entry for a in first + more]
    assert audit.chain(entries) == [a.hash for a in first + more]


@pytest.mark.parametrize("state, delivery, seq, outcome", [
    (ReceivedState(None, None, None), "d1", 0, TokenOutcome.NEW),
    (ReceivedState(None, "d1", 3), "d1", 3, TokenOutcome.DUPLICATE),
    (ReceivedState(None, "d1", 3), "d2", 3, TokenOutcome.STALE),
    (ReceivedState(None, "d1", 3), "d2", 2, TokenOutcome.STALE),
    (ReceivedState(None, "d1", 3), "d2", 4, TokenOutcome.NEW),
    (ReceivedState(50, "d1", 3), "d1", 3, TokenOutcome.REVOKED),   # revoked wins over everything
    (ReceivedState(50, None, None), "d2", 9, TokenOutcome.REVOKED),
])
def test_a_delivery_under_a_received_token(state, delivery, seq, outcome):
    assert on_delivery(state, delivery, seq) is outcome


def test_a_home_node_shares_only_under_a_live_grant_and_forward():
    check_share(revoked=None, last_seq=None, seq=1)
    check_share(revoked=None, last_seq=4, seq=5)
    with pytest.raises(Gone):
        check_share(revoked=10, last_seq=None, seq=1)
    with pytest.raises(Conflict):
        check_share(revoked=None, last_seq=5, seq=5)


def test_a_community_log_grows_only_at_its_end():
    pcm.check_append(7, 8)
    for first in (7, 9, 1):
        with pytest.raises(Conflict):
            pcm.check_append(7, first)
    assert pcm.contiguous_end(3, [4, 5, 7, 8]) == 5
    assert pcm.contiguous_end(3, [5]) == 3
    assert pcm.contiguous_end(0, []) == 0


@given(st.lists(st.booleans(), min_size=1, max_size=6))
def test_leaving_wins_in_any_order(events):
    results = set()
    for order in itertools.islice(itertools.permutations(events), 50):
        status = None
        for active in order:
            status = pcm.member_active(status, active)
        results.add(status)
    assert results == {all(events)}


def test_a_commit_naming_its_base_may_jump_the_counter_but_never_back():
    assert plan(counter=9, base=4).totals.counter == 9
    for counter, base in ((9, 3), (4, 4), (3, 4)):
        with pytest.raises(Conflict) as caught:
            plan(counter=counter, base=base)
        assert caught.value.code == "stale_manifest"
