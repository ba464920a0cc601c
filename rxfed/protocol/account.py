"""The node's rules for a patient's account, as pure functions (sans-I/O).

A store runs each write as one transaction: it reads the rows a rule needs, calls the rule
here, and applies the typed plan the rule returns, or lets the rule's error roll the
transaction back. The rules are the same for every backend; only the reading and applying
is written per backend. See spec/client-api.md for what each rule protects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from rxfed.errors import Conflict, Forbidden, QuotaExceeded


@attrs.frozen
class VaultTotals:
    """What the account row keeps about the vault: the manifest counter, the number of
    records and their bytes, and the identity epoch manifests must be signed for."""

    counter: int
    records: int
    bytes: int
    epoch: int


@attrs.frozen
class Stored:
    """A record as the store holds it, without its ciphertext: version and size."""

    version: int
    size: int


@attrs.frozen
class CommitPlan:
    """What a vault commit changes: record ids to insert (new records, version 1), to
    replace (next version), to delete, and the account's totals afterwards."""

    inserts: tuple[str, ...]
    replaces: tuple[str, ...]
    deletes: tuple[str, ...]
    totals: VaultTotals


def plan_commit(totals: VaultTotals, stored: Mapping[str, Stored], *, counter: int, epoch: int,
                puts: Iterable[tuple[str, int, int]], deletes: Iterable[tuple[str, int]],
                max_records: int, max_bytes: int, base: int | None = None) -> CommitPlan:
    """Check one commit against the vault and plan it.

    ``stored`` holds the current rows of the records the commit names; ``puts`` are
    ``(id, version, size)`` and ``deletes`` ``(id, version)``. The manifest must be signed for
    the current epoch and its counter follow the stored one (a compare-and-swap: two devices
    writing at once, one wins and the other syncs). A commit that names its ``base`` (the
    stored counter it builds on) may jump the counter past it: after a node's restore, a
    device signs a counter above every one it saw, so no counter ever names two vaults. A put is version 1 of a new record or the
    next version of a stored one; a delete names the stored version. The quota is checked on
    the totals after the commit, so a commit that frees space may also add some.
    """
    if epoch != totals.epoch:
        raise Conflict(f"the manifest is signed for identity epoch {epoch}, not the current {totals.epoch}; "
                       "sync and retry", code="stale_identity")
    if (counter - 1 if base is None else base) != totals.counter or counter <= totals.counter:
        raise Conflict(f"manifest counter {counter} does not follow {totals.counter}; sync and retry",
                       code="stale_manifest")
    records, size = totals.records, totals.bytes
    inserts, replaces, removed = [], [], []
    seen: set[str] = set()
    for rid, version, length in puts:
        if rid in seen:
            raise Conflict("the commit writes one record twice", code="stale_record")
        seen.add(rid)
        row = stored.get(rid)
        if version == 1:
            if row is not None:
                raise Conflict("record version 1 is not new: the record exists", code="stale_record")
            records += 1
            inserts.append(rid)
        else:
            if row is None or version != row.version + 1:
                expected = 1 if row is None else row.version + 1
                raise Conflict(f"record version {version} is not {expected}", code="stale_record")
            size -= row.size
            replaces.append(rid)
        size += length
    for rid, version in deletes:
        row = stored.get(rid)
        if rid in seen or row is None or row.version != version:
            raise Conflict("deleted record is missing or at another version", code="stale_record")
        seen.add(rid)
        records -= 1
        size -= row.size
        removed.append(rid)
    if records > max_records or size > max_bytes:
        raise QuotaExceeded(f"vault quota exceeded ({max_records} records, {max_bytes} bytes)")
    return CommitPlan(tuple(inserts), tuple(replaces), tuple(removed),
                      VaultTotals(counter, records, size, totals.epoch))


def check_epoch(current: int, epoch: int) -> None:
    """A change to the identity names the epoch it builds on: the current one."""
    if current != epoch:
        raise Conflict(f"identity epoch {epoch} is not the current epoch {current}; sync and retry",
                       code="stale_identity")


def check_enrolment(active_devices: int, max_devices: int) -> None:
    if active_devices >= max_devices:
        raise Forbidden(f"at most {max_devices} active devices; revoke one first", code="too_many_devices")


def plan_rotation(active: Iterable[str], kept: Iterable[str], signer: str | None, *, counter: int,
                  manifest_counter: int) -> list[str]:
    """The devices a new identity epoch revokes (the active ones it does not keep), after
    checking that it keeps only active devices, that a device signing it stays, and that its
    manifest follows the stored counter."""
    active, kept = set(active), set(kept)
    if not kept <= active:
        raise Conflict("a kept device is not an active device of this patient", code="unknown_device")
    if signer is not None and signer not in kept:
        raise Conflict("the device that signs a rotation must stay active", code="unknown_device")
    if manifest_counter != counter + 1:
        raise Conflict(f"manifest counter {manifest_counter} does not follow {counter}; sync and retry",
                       code="stale_manifest")
    return sorted(active - kept)
