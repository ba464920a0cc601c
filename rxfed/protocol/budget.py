"""A signer's request budget: a token bucket, as a pure rule (sans-I/O).

``rate`` tokens a second refill a bucket of at most ``burst``; a request spends one. The
node's one process keeps the buckets in memory (:class:`rxfed.node.guards.RateLimiter`);
several worker processes keep them in the store (``rate_budgets``), so a signer's budget is
the same whichever worker its requests reach. Both call :func:`take`.
"""

from __future__ import annotations

from rxfed.errors import RateLimited


def take(saved: tuple[float, float] | None, now: float, rate: float, burst: int) -> float:
    """The tokens left after one request, given what was ``saved`` (tokens, when counted;
    None: a full bucket). Raises :class:`RateLimited` (with the seconds until a token is
    there) when none is left; nothing is then spent."""
    if saved is None:
        tokens = float(burst)
    else:
        tokens, last = saved
        tokens = min(float(burst), tokens + max(0.0, now - last) * rate)
    if tokens < 1.0:
        raise RateLimited("too many requests; slow down", retry_after=(1.0 - tokens) / rate)
    return tokens - 1.0
