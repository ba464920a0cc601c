"""The request path's guards, behind one interface: where a node keeps the nonces it has
seen and each signer's request budget.

* :class:`LocalGuards`, for a node of one process (SQLite, or PostgreSQL without
  ``--workers``): in memory (:class:`rxfed.node.guards.NonceWindow`,
  :class:`rxfed.node.guards.RateLimiter`); a write also stores its nonce in its own
  transaction, so a restarted node still refuses a replayed write. Nothing here waits.
* :class:`StoreGuards`, for each of several worker processes sharing one database
  (``rxfed node run --workers N``): a request's nonce is stored, and its signer's budget
  spent, in one transaction of the store (:meth:`rxfed.store.operations.Store.spend`) before
  its body is read, so a request replayed to another worker, at the same moment or later,
  meets the nonce's unique key, and a signer has one budget whichever worker its requests
  reach. Caches that another worker's write would make stale are off.

Both have the same two steps, which return None when they are done or an awaitable to wait
for (the request path pays no coroutine on one process): :meth:`check` once the signature
is good and before the body is read (a replay is refused before it costs its signer's
budget or a body read); :meth:`admit` once the request holds its work slot returns its
:class:`~rxfed.store.Nonce`, or an awaitable of it.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from rxfed.errors import RateLimited
from rxfed.node.guards import NonceWindow, RateLimiter
from rxfed.store import Nonce

#: The request attribute holding the nonce :meth:`StoreGuards.check` stored.
_CLAIMED = web.RequestKey("rxfed_claimed_nonce", Nonce) if hasattr(web, "RequestKey") else "rxfed_claimed_nonce"


class LocalGuards:
    """One process: the nonce window and the token buckets in memory."""

    #: Whether caches of store rows may be kept (no other process changes the rows).
    caches = True

    def __init__(self, nonces: NonceWindow, limiter: RateLimiter, window: int):
        self.nonces, self.limiter, self.window = nonces, limiter, window

    def check(self, request: Any, signed: Any, rate_limit: bool, now: int) -> None:
        self.nonces.check(signed.nonce)
        if rate_limit:
            self.limiter.take(signed.key)

    def admit(self, request: Any, signed: Any, now: int) -> Nonce:
        nonce = Nonce(signed.nonce, signed.created + self.window)
        self.nonces.add(nonce, now)
        return nonce


class StoreGuards:
    """Several worker processes: nonces and budgets in the store, shared by all of them."""

    caches = False

    def __init__(self, store: Any, limiter: RateLimiter, window: int, *, clock=time.time):
        self.store, self.limiter, self.window, self.clock = store, limiter, window, clock

    def check(self, request: Any, signed: Any, rate_limit: bool, now: int):
        return self._check(request, signed, rate_limit)

    async def _check(self, request: Any, signed: Any, rate_limit: bool) -> None:
        nonce = Nonce(signed.nonce, signed.created + self.window)
        lim = self.limiter
        try:
            request[_CLAIMED] = await self.store.spend(nonce, signed.key if rate_limit else None, now=self.clock(),
                                                       rate=lim.rate, burst=lim.burst)
        except RateLimited:
            lim.refused += 1
            raise

    def admit(self, request: Any, signed: Any, now: int):
        claimed = request.get(_CLAIMED)
        if claimed is not None and claimed.value == signed.nonce:
            return claimed
        return self.store.spend(Nonce(signed.nonce, signed.created + self.window), now=self.clock())

