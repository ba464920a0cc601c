"""In-memory guards of the request path: the replay window and rate limits."""

from __future__ import annotations

import time

from rxfed.errors import RateLimited
from rxfed.protocol import budget
from rxfed.store import Nonce, Replayed


class NonceWindow:
    """Nonces seen inside the signature window. Write operations also persist their nonce in
    the same transaction as the write, and a restarted node reloads them from the store."""

    def __init__(self) -> None:
        self._seen: dict[bytes, int] = {}
        self._next_prune = 0

    def add(self, nonce: Nonce, now: int) -> None:
        if now >= self._next_prune:
            self._seen = {n: e for n, e in self._seen.items() if e >= now}
            self._next_prune = now + 30
        if nonce.value in self._seen:
            raise Replayed()
        self._seen[nonce.value] = nonce.expires

    def check(self, value: bytes) -> None:
        """Refuse a nonce already seen, without recording it (:meth:`add` does, once the
        request is admitted): a replay is then refused before it costs its signer's rate
        budget or a body read."""
        if value in self._seen:
            raise Replayed()

    def load(self, nonces: list[Nonce]) -> None:
        for n in nonces:
            self._seen[n.value] = n.expires

    def __len__(self) -> int:
        return len(self._seen)


class RateLimiter:
    """Token buckets by key: ``rate`` tokens a second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: int, *, clock=time.monotonic, max_keys: int = 100_000):
        self.rate, self.burst, self.clock, self.max_keys = rate, burst, clock, max_keys
        self._buckets: dict[object, tuple[float, float]] = {}
        #: Requests refused so far (``/metrics``).
        self.refused = 0

    def take(self, key: object) -> None:
        now = self.clock()
        try:
            tokens = budget.take(self._buckets.get(key), now, self.rate, self.burst)
        except RateLimited:
            self.refused += 1
            raise
        if len(self._buckets) >= self.max_keys and key not in self._buckets:
            # Forget buckets that have refilled completely: they carry no state.
            full = [k for k, (t, ts) in self._buckets.items() if t + (now - ts) * self.rate >= self.burst]
            for k in full:
                del self._buckets[k]
        self._buckets[key] = (tokens, now)
