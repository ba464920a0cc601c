"""The per-patient audit log: a hash chain with heads signed by the home node (sans-I/O).

Entry *n* is canonical JSON; ``hash_n = audit_link(hash_{n-1}, entry_n)`` with a zero hash
before the first. The node signs heads ``{patient, seq, hash}``; the client keeps every head
it has seen, so a node that rewrites an entry, drops the tail or forks the log for this
patient is caught the next time the client reads it (spec/consent.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from rxfed.crypto import SigningKeyPair, audit_link, b64d, b64e
from rxfed.errors import Forbidden
from rxfed.protocol.canonical import canonical
from rxfed.protocol.statements import open_statement_by_any, sign_statement

HEAD = "rxfed.audit.head"
GENESIS = bytes(32)


class AuditTampered(Forbidden):
    code = "audit_tampered"


def chain(entries: Iterable[bytes], previous: bytes = GENESIS) -> list[bytes]:
    """The hash after each entry (canonical bytes), starting from ``previous``."""
    out = []
    for entry in entries:
        previous = audit_link(previous, entry)
        out.append(previous)
    return out


@attrs.frozen
class Appended:
    """One entry as the log stores it: its number, canonical bytes and chain hash."""

    seq: int
    entry: bytes
    hash: bytes


def append(head: tuple[int, bytes] | None, entries: Iterable[dict], now: int) -> list[Appended]:
    """Entries to add after ``head`` (the last ``(seq, hash)``, or None for an empty log):
    each numbered, stamped with ``now`` unless it has its own ``time``, and chained."""
    seq, previous = head if head is not None else (0, GENESIS)
    out = []
    for entry in entries:
        seq += 1
        data = canonical({**entry, "seq": seq, "time": entry.get("time", now)})
        previous = audit_link(previous, data)
        out.append(Appended(seq, data, previous))
    return out


def sign_head(node_key: SigningKeyPair, patient: str, seq: int, head: bytes, now: int) -> dict:
    return sign_statement(node_key, {"type": HEAD, "patient": patient, "seq": seq, "hash": b64e(head),
                                     "signed": now})


@attrs.frozen
class Head:
    seq: int
    hash: bytes

    def to_json(self) -> dict:
        return {"seq": self.seq, "hash": b64e(self.hash)}

    @classmethod
    def from_json(cls, obj: dict) -> Head:
        return cls(int(obj["seq"]), b64d(obj["hash"], length=32))


def verify(patient: str, entries: list[dict], head_statement: Any, node_keys: list[bytes],
           seen: Iterable[Head]) -> Head:
    """Check a log the node served against its signed head and every head seen before.

    ``entries`` are the log in order (each with its ``seq``, from 1). Returns the new head,
    or raises :class:`AuditTampered` saying what does not add up.
    """
    if not isinstance(entries, list):
        raise AuditTampered("the audit log is not a list of entries")
    for i, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict) or entry.get("seq") != i:
            raise AuditTampered(f"audit entry {i} is missing or out of order")
    hashes = chain(canonical(e) for e in entries)
    try:
        body = open_statement_by_any(head_statement, "head", HEAD, node_keys)
    except Forbidden:
        raise AuditTampered("the audit head is not signed by the home node") from None
    if body.get("patient") != patient or body.get("seq") != len(entries):
        raise AuditTampered("the signed audit head does not match the log served")
    top = hashes[-1] if hashes else GENESIS
    if body.get("hash") != b64e(top):
        raise AuditTampered("the audit log does not hash to its signed head: an entry was changed")
    for old in seen:
        if old.seq > len(entries):
            raise AuditTampered(f"the audit log is shorter than before ({len(entries)} entries, "
                                f"{old.seq} seen): history was truncated")
        if old.seq and hashes[old.seq - 1] != old.hash:
            raise AuditTampered(f"audit entry {old.seq} differs from what was seen before: history was rewritten")
    return Head(len(entries), top)
