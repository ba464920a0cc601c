"""Outbox delivery policy, sans-I/O: backoff, the circuit breaker, ordering and expiry.

The node's outbox worker (:mod:`rxfed.node.federation`) sends, the store persists; every
decision of when to send what, and what a failure or a sign of life from a peer changes,
is made here from values passed in (``now`` in seconds, a random number generator), so it
can be tested without a network or a clock. As in h11's ``_state.py``, the breaker's state
changes live in one table, :data:`TRANSITIONS`: a change it does not list is a bug and
raises instead of silently doing something.

Breaker states are derived from what the store keeps per peer (consecutive ``failures`` and
``breaker_until``, Unix seconds): no ``breaker_until`` is closed, a future one is open, a
past one is half-open (the cool-down is over: one trial transaction may go). A valid,
authenticated transaction *from* the peer proves it is up again and closes the breaker at
once, whatever its state.
"""

from __future__ import annotations

import enum
import random
import re
from collections.abc import Iterable

import attrs

from rxfed.protocol.canonical import loads

#: Transactions in flight to one destination at a time while its breaker is closed.
WINDOW = 2


class Breaker(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class Signal(enum.Enum):
    """What happens to a peer's breaker."""

    #: A transaction was acknowledged (200 with a well-formed reply).
    DELIVERED = "delivered"
    #: A transaction failed, and the consecutive failures stay below the threshold.
    FAILED = "failed"
    #: A transaction failed, and the consecutive failures reach the threshold.
    TRIPPED = "tripped"
    #: The cool-down ended: one trial transaction may go.
    COOLED_DOWN = "cooled-down"
    #: The peer answered 429 (too fast for it): it is up, but nothing was delivered.
    THROTTLED = "throttled"
    #: An authenticated transaction arrived from the peer: it is up.
    PEER_SEEN = "peer-seen"


#: Every breaker change, in one place. A failure while open is possible (a transaction
#: sent just before the breaker opened fails afterwards); a delivery while open too (it
#: succeeds afterwards): both are listed, so the table is total over what can happen.
TRANSITIONS: dict[Breaker, dict[Signal, Breaker]] = {
    Breaker.CLOSED: {
        Signal.DELIVERED: Breaker.CLOSED,
        Signal.FAILED: Breaker.CLOSED,
        Signal.TRIPPED: Breaker.OPEN,
        Signal.THROTTLED: Breaker.CLOSED,
        Signal.PEER_SEEN: Breaker.CLOSED,
    },
    Breaker.OPEN: {
        Signal.DELIVERED: Breaker.CLOSED,
        Signal.FAILED: Breaker.OPEN,
        Signal.TRIPPED: Breaker.OPEN,
        Signal.COOLED_DOWN: Breaker.HALF_OPEN,
        Signal.THROTTLED: Breaker.OPEN,
        Signal.PEER_SEEN: Breaker.CLOSED,
    },
    Breaker.HALF_OPEN: {
        Signal.DELIVERED: Breaker.CLOSED,
        Signal.FAILED: Breaker.OPEN,
        Signal.TRIPPED: Breaker.OPEN,
        Signal.THROTTLED: Breaker.CLOSED,
        Signal.PEER_SEEN: Breaker.CLOSED,
    },
}


class InvalidTransition(Exception):
    """A breaker change :data:`TRANSITIONS` does not list (a bug in the caller)."""


def transition(state: Breaker, signal: Signal) -> Breaker:
    try:
        return TRANSITIONS[state][signal]
    except KeyError:
        raise InvalidTransition(f"{signal.value} while the breaker is {state.value}") from None


@attrs.frozen
class PeerDelivery:
    """What the store keeps about deliveries to one peer."""

    failures: int = 0
    #: Unix seconds until which nothing is sent (None: the breaker is closed).
    breaker_until: int | None = None

    def breaker(self, now: float) -> Breaker:
        if self.breaker_until is None:
            return Breaker.CLOSED
        if now < self.breaker_until:
            return Breaker.OPEN
        return transition(Breaker.OPEN, Signal.COOLED_DOWN)


@attrs.frozen
class Retry:
    """What a failed attempt changes: the peer's new state and when the transaction may go
    again (Unix seconds)."""

    peer: PeerDelivery
    breaker: Breaker
    retry_at: float
    delay: float


@attrs.frozen
class Due:
    """When a destination may be sent to next (Unix milliseconds, None: at once) and how
    many transactions may be in flight then (1 for a half-open breaker's trial)."""

    at_ms: int | None
    window: int
    probe: bool = False


@attrs.frozen
class DeliveryPolicy:
    """The ``[federation]`` settings that govern delivery, and the rules over them."""

    backoff_base: float
    backoff_max: float
    breaker_threshold: int
    breaker_cooldown: float
    dead_after: int
    #: Kinds whose transactions go alone, after everything queued before them is
    #: acknowledged (a member's sender key before its message).
    ordered: frozenset[str] = frozenset()
    #: Kinds that form a log the receiver needs whole (a community's history): never
    #: dead-lettered by age, they wait for the peer, however long it is away.
    logs: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings, *, ordered: Iterable[str] = (), logs: Iterable[str] = ()) -> DeliveryPolicy:
        return cls(settings.backoff_base, settings.backoff_max, settings.breaker_threshold,
                   settings.breaker_cooldown, settings.dead_after, frozenset(ordered), frozenset(logs))

    # -- the breaker -------------------------------------------------------------------------
    def cooldown(self, failures: int) -> float:
        """How long the breaker stays open after ``failures`` consecutive failures (at
        least the threshold): doubling from ``breaker_cooldown``, capped at ``backoff_max``."""
        return min(self.backoff_max, self.breaker_cooldown * 2 ** min(64, failures - self.breaker_threshold))

    def on_failure(self, peer: PeerDelivery, attempts: int, now: float, rng: random.Random) -> Retry:
        """A transaction that had been tried ``attempts`` times before failed again."""
        failures = peer.failures + 1
        tripped = failures >= self.breaker_threshold
        state = transition(peer.breaker(now), Signal.TRIPPED if tripped else Signal.FAILED)
        delay = rng.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** min(64, attempts)))  # full jitter
        if state is not Breaker.OPEN:
            return Retry(PeerDelivery(failures, None), state, now + delay, delay)
        # The breaker's cool-down replaces the transaction's own backoff: the trial that
        # ends it is this transaction, sent as soon as the cool-down is over.
        until = int(now + max(1.0, self.cooldown(failures)) + 0.999)
        return Retry(PeerDelivery(failures, until), state, float(until), until - now)

    def on_throttled(self, peer: PeerDelivery, retry_after: float, now: float) -> Retry:
        """The peer answered 429 with ``Retry-After``: it is up and asks us to slow down. Not
        a failure (the breaker does not count it); the transaction waits as asked, at most
        ``backoff_max``."""
        state = transition(peer.breaker(now), Signal.THROTTLED)
        delay = min(self.backoff_max, max(0.0, retry_after))
        kept = peer if state is not Breaker.CLOSED else PeerDelivery()
        return Retry(kept, state, now + delay, delay)

    def on_delivered(self, peer: PeerDelivery, now: float) -> PeerDelivery:
        transition(peer.breaker(now), Signal.DELIVERED)
        return PeerDelivery()

    def on_peer_seen(self, peer: PeerDelivery, now: float) -> PeerDelivery:
        """An authenticated transaction from the peer: it answers again, so the breaker
        closes and whatever waits for it may go at once."""
        transition(peer.breaker(now), Signal.PEER_SEEN)
        return PeerDelivery()

    def due(self, peer: PeerDelivery, next_attempt_ms: int | None, now: float) -> Due:
        """When to send to a destination whose oldest transaction may go at
        ``next_attempt_ms`` (None or 0: at once). An open breaker holds everything until
        its cool-down ends (the transaction that opened it waits exactly that long, see
        :meth:`on_failure`). Half-open, one trial goes and no other until it is answered."""
        state = peer.breaker(now)
        if state is Breaker.OPEN:
            return Due(max(peer.breaker_until * 1000, next_attempt_ms or 0), 1, probe=True)
        if state is Breaker.HALF_OPEN:
            return Due(next_attempt_ms or None, 1, probe=True)
        return Due(next_attempt_ms or None, WINDOW)

    # -- ordering and expiry -----------------------------------------------------------------
    def goes_alone(self, events: Iterable[bytes]) -> bool:
        """Whether a transaction with these (canonical) events must not travel alongside
        another to the same destination."""
        return bool(self.ordered) and any(event_kind(e) in self.ordered for e in events)

    def expired(self, created: int, now: float) -> bool:
        return created < now - self.dead_after

    def may_die(self, event: bytes) -> bool:
        """Whether a queued event may become a dead letter once expired: not when it belongs
        to a log, since burying part of a log silently stalls everything after it."""
        return event_kind(event) not in self.logs


_KIND_TAIL = re.compile(rb',"kind":"([a-z][a-z0-9_.-]{0,63})"\}\Z')


def event_kind(event: bytes) -> str | None:
    """The kind of a queued event (the canonical JSON of a :class:`WireEvent`). Canonical
    keys are sorted, so ``kind`` is the object's last member and the kind grammar has no
    characters JSON escapes: reading it from the end is exact, not a guess. Anything else
    is parsed in full; None when it is not an event at all."""
    match = _KIND_TAIL.search(event, max(0, len(event) - 80))  # the tail is at most 76 bytes
    if match is not None:
        return match.group(1).decode()
    try:
        obj = loads(event)
    except Exception:
        return None
    kind = obj.get("kind") if isinstance(obj, dict) else None
    return kind if isinstance(kind, str) else None
