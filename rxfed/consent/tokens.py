"""The life of a grant token at the node that receives signals under it, and at the
patient's home node that sends them (sans-I/O).

A recipient keeps, per token, the last delivery it applied (its id and the sequence number
the patient's devices gave it) and whether the grant was revoked. :func:`on_delivery` says
what a new delivery does to that state; the store applies the outcome.
"""

from __future__ import annotations

import enum

import attrs

from rxfed.errors import Conflict, Gone


class TokenOutcome(enum.Enum):
    """What a delivery under a received token does."""

    #: kept: it replaces what the token gave before
    NEW = "new"
    #: this very delivery was applied before (its reply was lost): nothing changes
    DUPLICATE = "duplicate"
    #: its sequence number is not above the kept delivery's: an older delivery, refused
    STALE = "stale"
    #: the grant was revoked: nothing is kept, ever again
    REVOKED = "revoked"


@attrs.frozen
class ReceivedState:
    revoked: int | None
    delivery: str | None
    seq: int | None


def on_delivery(state: ReceivedState, delivery: str, seq: int) -> TokenOutcome:
    if state.revoked is not None:
        return TokenOutcome.REVOKED
    if state.delivery == delivery:
        return TokenOutcome.DUPLICATE
    if state.seq is not None and seq <= state.seq:
        return TokenOutcome.STALE
    return TokenOutcome.NEW


def check_share(*, revoked: int | None, last_seq: int | None, seq: int) -> None:
    """At the home node: a device shares under a live grant, continuing from the sequence
    number of the last delivery any of the patient's devices made."""
    if revoked is not None:
        raise Gone("the consent grant was revoked", code="grant_revoked")
    if last_seq is not None and seq <= last_seq:
        raise Conflict("another device shared under this grant since this one looked; share again",
                       code="stale_delivery")
