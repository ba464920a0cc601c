"""The sans-I/O delivery policy: the breaker's transition table, backoff, ordering, expiry."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rxfed.node.config import FederationSettings
from rxfed.protocol.canonical import canonical
from rxfed.protocol.delivery import (
    TRANSITIONS,
    Breaker,
    DeliveryPolicy,
    InvalidTransition,
    PeerDelivery,
    Signal,
    event_kind,
    transition,
)
from rxfed.protocol.federation import WireEvent

ROOT = Path(__file__).resolve().parent.parent
POLICY = DeliveryPolicy(backoff_base=0.5, backoff_max=300.0, breaker_threshold=3, breaker_cooldown=30.0,
                        dead_after=86400, ordered=frozenset({"community.submit"}),
                        logs=frozenset({"community.submit", "community.event"}))


def event(kind: str, content: dict | None = None) -> bytes:
    return canonical(WireEvent(kind, content or {}).to_json())


def test_the_table_lists_every_change_and_nothing_else():
    assert set(TRANSITIONS) == set(Breaker)
    for state in Breaker:
        for signal in Signal:
            if signal in TRANSITIONS[state]:
                assert transition(state, signal) is TRANSITIONS[state][signal]
            else:
                with pytest.raises(InvalidTransition):
                    transition(state, signal)
    # only time ends a cool-down, and only an open breaker has one
    assert [s for s in Breaker if Signal.COOLED_DOWN in TRANSITIONS[s]] == [Breaker.OPEN]
    # whatever the state, a sign of life or a delivery closes it
    assert {TRANSITIONS[s][Signal.PEER_SEEN] for s in Breaker} == {Breaker.CLOSED}
    assert {TRANSITIONS[s][Signal.DELIVERED] for s in Breaker} == {Breaker.CLOSED}


def test_breaker_opens_at_the_threshold_then_one_trial_goes_after_the_cooldown():
    rng, now = random.Random(1), 1000.0
    peer = PeerDelivery()
    for i in range(2):
        retry = POLICY.on_failure(peer, attempts=i, now=now, rng=rng)
        peer = retry.peer
        assert retry.breaker is Breaker.CLOSED and peer.breaker_until is None and peer.failures == i + 1
        assert POLICY.due(peer, None, now).window == 2
    retry = POLICY.on_failure(peer, attempts=2, now=now, rng=rng)
    peer = retry.peer
    assert retry.breaker is Breaker.OPEN and peer.breaker_until == 1030
    # the transaction that tripped it is the trial, due exactly when the cool-down ends
    assert retry.retry_at == 1030
    due = POLICY.due(peer, int(retry.retry_at * 1000), now + 1)
    assert due.at_ms == 1_030_000 and due.window == 1 and due.probe
    assert peer.breaker(1030) is Breaker.HALF_OPEN
    due = POLICY.due(peer, 1_030_000, 1030)
    assert due.at_ms == 1_030_000 and due.window == 1  # one trial, no more
    # the trial fails: open again, for twice as long
    again = POLICY.on_failure(peer, attempts=3, now=1030, rng=rng)
    assert again.breaker is Breaker.OPEN and again.peer.breaker_until == 1030 + 60
    # the trial succeeds: closed, the full window again
    closed = POLICY.on_delivered(peer, 1030)
    assert closed == PeerDelivery() and POLICY.due(closed, None, 1030).window == 2


def test_a_sign_of_life_closes_an_open_breaker_before_its_cooldown():
    peer = PeerDelivery(failures=7, breaker_until=2000)
    assert peer.breaker(1000) is Breaker.OPEN
    assert POLICY.on_peer_seen(peer, 1000) == PeerDelivery()


def test_a_throttled_peer_is_not_a_failing_one():
    peer = PeerDelivery(failures=2)
    retry = POLICY.on_throttled(peer, retry_after=5, now=100)
    assert retry.peer == PeerDelivery() and retry.retry_at == 105
    half_open = PeerDelivery(failures=9, breaker_until=50)
    assert POLICY.on_throttled(half_open, 1000, now=100).peer == PeerDelivery()  # it answers: closed
    assert POLICY.on_throttled(half_open, 1000, now=100).delay == 300  # at most backoff_max
    open_ = PeerDelivery(failures=9, breaker_until=500)
    assert POLICY.on_throttled(open_, 1, now=100).peer == open_


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["fail", "ok", "seen", "throttled"]), st.floats(0, 400)), max_size=40),
       st.integers(0, 2**32))
def test_any_history_keeps_the_breaker_sound(steps, seed):
    """Whatever happens, in whatever order: failures count up to the threshold before the
    breaker opens, it never holds longer than backoff_max (rounded up to the second), a retry
    never waits longer than that either, and a delivery or a sign of life closes it."""
    rng, now, peer = random.Random(seed), 0.0, PeerDelivery()
    for what, elapsed in steps:
        now += elapsed
        if what == "fail":
            retry = POLICY.on_failure(peer, attempts=peer.failures, now=now, rng=rng)
            assert retry.peer.failures == peer.failures + 1
            assert (retry.peer.breaker_until is not None) == (retry.peer.failures >= POLICY.breaker_threshold)
            assert now <= retry.retry_at <= now + POLICY.backoff_max + 1
            if retry.peer.breaker_until is not None:
                assert now < retry.peer.breaker_until <= now + POLICY.backoff_max + 1
            peer = retry.peer
        elif what == "throttled":
            retry = POLICY.on_throttled(peer, elapsed, now)
            assert retry.peer.failures in (0, peer.failures) and retry.delay <= POLICY.backoff_max
            peer = retry.peer
        else:
            peer = POLICY.on_delivered(peer, now) if what == "ok" else POLICY.on_peer_seen(peer, now)
            assert peer == PeerDelivery()
        due = POLICY.due(peer, None, now)
        assert due.window == (2 if peer.breaker(now) is Breaker.CLOSED else 1)


def test_cooldown_is_capped_for_any_failure_count():
    assert POLICY.cooldown(3) == 30 and POLICY.cooldown(4) == 60 and POLICY.cooldown(10_000) == 300


def test_event_kind_reads_the_canonical_event_exactly():
    assert event_kind(event("community.submit")) == "community.submit"
    # a "kind" inside the content never counts (the old byte scan found it anywhere)
    tricky = event("test.note", {"inner": {"kind": "community.submit"}, "z": '","kind":"community.submit"}'})
    assert event_kind(tricky) == "test.note"
    assert not POLICY.goes_alone([tricky]) and POLICY.goes_alone([tricky, event("community.submit")])
    assert event_kind(b'{"kind": "a.b", "content": {}}') == "a.b"  # not canonical: parsed
    assert event_kind(b"junk") is None


def test_only_events_outside_logs_may_die():
    assert not POLICY.may_die(event("community.event")) and not POLICY.may_die(event("community.submit"))
    assert POLICY.may_die(event("consent.used")) and POLICY.may_die(event("test.note"))
    assert POLICY.expired(created=100, now=100 + 86401) and not POLICY.expired(created=100, now=100 + 86400)


def test_dead_after_shorter_than_the_longest_holdback_is_refused():
    with pytest.raises(ValueError, match="dead_after|backoff_max"):
        FederationSettings(dead_after=60, backoff_max=300)
    FederationSettings(dead_after=600, backoff_max=300)


def _calls(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {f"{node.func.value.id}.{node.func.attr}" for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)}


def test_delivery_reads_no_clock_and_does_no_io():
    """Time comes from the node's injected clock: neither the policy nor the federation
    service calls time.time() (or time.monotonic()) itself; the policy imports no I/O."""
    for name in ("rxfed/protocol/delivery.py", "rxfed/node/federation.py"):
        calls = _calls(ROOT / name)
        assert not {c for c in calls if c.startswith("time.")}, (name, calls)
    imported = {n.names[0].name.split(".")[0] if isinstance(n, ast.Import) else (n.module or "").split(".")[0]
                for n in ast.walk(ast.parse((ROOT / "rxfed/protocol/delivery.py").read_text()))
                if isinstance(n, (ast.Import, ast.ImportFrom))}
    assert not imported & {"aiohttp", "asyncio", "time", "socket", "sqlite3"}, imported
    assert not any(isinstance(n, ast.Import) and n.names[0].name.startswith("rxfed.store")
                   for n in ast.walk(ast.parse((ROOT / "rxfed/protocol/delivery.py").read_text())))
