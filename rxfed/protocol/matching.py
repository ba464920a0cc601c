"""Cross-node matching around the PSI core, sans-I/O: what a node offers, how counts leave it,
and how a session's messages travel in request bodies.

:mod:`rxfed.protocol.psi` compares two sets; this module decides what goes into a node's
set (categories at least ``k`` consenting patients hold), what a node says of each common
category afterwards (a bucketed count, never below ``k``), and how the PSI messages and the
counts are framed in the three requests of a session (spec/federation.md, "Matching").
"""

from __future__ import annotations

import re
import struct
from collections import defaultdict
from collections.abc import Iterable

from rxfed.errors import BadRequest, PayloadTooLarge
from rxfed.protocol.canonical import canonical, loads

#: A matching category as it enters the PSI: a code system and a code, e.g. ``icd10:G40``.
CATEGORY = r"[a-z0-9]{1,16}:[A-Za-z0-9.]{1,16}"
_CATEGORY = re.compile(CATEGORY)
#: The default threshold: a category is offered, counted or shown only with this many patients.
DEFAULT_K = 11
#: No node may set its threshold lower than this.
MIN_K = 5
#: The largest count a node states (larger ones are stated as this).
MAX_COUNT = 10_000_000
#: The most categories a node states counts for in one session.
MAX_COUNTS = 4096
#: The purpose a patient's grant names for matching.
PURPOSE = "matching"


def valid_category(value: object) -> bool:
    return isinstance(value, str) and _CATEGORY.fullmatch(value) is not None


def offered_counts(consents: Iterable[tuple[str, str]], *, k: int = DEFAULT_K) -> dict[str, int]:
    """Per category, how many distinct patients hold it and consented, for the categories
    at least ``k`` patients hold (the others are not offered: :func:`rxfed.protocol.psi.offered_categories`)."""
    check_k(k)
    patients: dict[str, set[str]] = defaultdict(set)
    for patient, category in consents:
        patients[category].add(patient)
    return {category: len(who) for category, who in sorted(patients.items()) if len(who) >= k}


def check_k(k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or not MIN_K <= k <= MAX_COUNT:
        raise ValueError(f"the matching threshold k is a whole number of at least {MIN_K}")
    return k


def bucket(n: int, *, k: int = DEFAULT_K) -> int:
    """The count a node states for ``n`` patients (``n >= k``): ``n`` rounded down to a
    multiple of 5 (of 25 from 100, of 250 from 1,000), never below ``k``. A stated count is a
    lower bound; one patient joining or leaving moves it only across a bucket's edge."""
    if n < k:
        raise ValueError("a count below k is never stated")
    step = 5 if n < 100 else 25 if n < 1000 else 250
    return max(k, min(MAX_COUNT, n - n % step))


# --- framing: several parts in one request body -------------------------------------------

_LENGTH = struct.Struct(">I")


def pack(*parts: bytes) -> bytes:
    """Parts in one body, each after its 4-byte length."""
    return b"".join(_LENGTH.pack(len(p)) + p for p in parts)


def unpack(data: bytes, count: int, *, limit: int) -> list[bytes]:
    """The ``count`` parts of a body :func:`pack` made; 413 above ``limit`` bytes, 400
    ``psi_malformed`` for anything else it did not make."""
    if not isinstance(data, bytes | bytearray):
        raise BadRequest("a matching message is bytes", code="psi_malformed")
    if len(data) > limit:
        raise PayloadTooLarge(f"a matching message is at most {limit} bytes", code="psi_too_large")
    parts, offset = [], 0
    for _ in range(count):
        if len(data) < offset + _LENGTH.size:
            raise BadRequest("the matching message is cut short", code="psi_malformed")
        (n,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if len(data) < offset + n:
            raise BadRequest("the matching message is cut short", code="psi_malformed")
        parts.append(bytes(data[offset:offset + n]))
        offset += n
    if offset != len(data):
        raise BadRequest("the matching message has trailing bytes", code="psi_malformed")
    return parts


# --- counts of the common categories --------------------------------------------------------

def counts_message(counts: dict[str, int]) -> bytes:
    return canonical({"counts": dict(sorted(counts.items()))})


def read_counts(data: bytes, *, common: frozenset[str], k: int) -> dict[str, int]:
    """A peer's counts, for ``common`` categories only (400 ``psi_peer_misbehaved`` for a
    count of any other category, ``psi_malformed`` for what is not a counts message). A
    common category may be missing: the peer no longer offers it (a patient revoked).
    Counts below this node's ``k`` (a peer with a lower threshold) are left out: this node
    never shows them."""
    try:
        doc = loads(data)
    except BadRequest:
        raise BadRequest("the counts are not JSON", code="psi_malformed") from None
    if not isinstance(doc, dict) or set(doc) != {"counts"} or not isinstance(doc["counts"], dict):
        raise BadRequest("a counts message is {\"counts\": {category: count}}", code="psi_malformed")
    counts = doc["counts"]
    if len(counts) > MAX_COUNTS:
        raise PayloadTooLarge(f"at most {MAX_COUNTS} counts", code="psi_too_large")
    for category, n in counts.items():
        if not valid_category(category) or not isinstance(n, int) or isinstance(n, bool) or n > MAX_COUNT:
            raise BadRequest("a count is a whole number for a category", code="psi_malformed")
    if not set(counts) <= common:
        raise BadRequest("the peer stated counts for categories other than the common ones", code="psi_peer_misbehaved")
    return {category: n for category, n in sorted(counts.items()) if n >= k}
