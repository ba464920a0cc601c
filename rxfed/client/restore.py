"""What a node restore lost, as this device can tell: the report shown to the patient before
they accept a restored vault (spec/crypto.md section 11)."""

from __future__ import annotations

import time

import attrs

from rxfed.client.identity import RollbackDetected


@attrs.frozen
class LostRecord:
    """A record version this device saw that the node no longer has."""

    id: str
    kind: str | None
    seen_version: int
    #: The version the node serves now, or None when it has no such record at all.
    node_version: int | None
    #: This device holds the sealed record and can upload it again.
    recoverable: bool

    def to_json(self) -> dict:
        return attrs.asdict(self)


@attrs.frozen
class RestoreReport:
    """A restore the node signed, and what it means for this device's view of the vault."""

    node: str
    restore_id: str
    backup_taken: int
    restored: int
    #: The vault version (manifest counter) this device saw, and the one the node serves.
    seen: int
    served: int
    lost: tuple[LostRecord, ...]
    #: Records deleted since the backup that the node serves again (accepting deletes them).
    reappeared: tuple[str, ...]
    #: This device's copy covered everything it saw (else the lists may be short).
    complete: bool

    def to_json(self) -> dict:
        return {"node": self.node, "restore_id": self.restore_id, "backup_taken": self.backup_taken,
                "restored": self.restored, "seen": self.seen, "served": self.served,
                "lost": [r.to_json() for r in self.lost], "reappeared": list(self.reappeared),
                "complete": self.complete}

    def lines(self) -> list[str]:
        out = [f"The node {self.node} says it was restored from a backup taken {_utc(self.backup_taken)} "
               f"(restored {_utc(self.restored)}; restore {self.restore_id}).",
               f"This device saw vault version {self.seen}; the node now serves version {self.served}."]
        if self.lost:
            out.append(f"The node no longer has {len(self.lost)} record version(s) this device saw:")
            for r in self.lost:
                there = "none" if r.node_version is None else f"version {r.node_version}"
                can = "this device can upload it again" if r.recoverable else "this device cannot restore it"
                out.append(f"  {r.kind or 'record'} {r.id[:8]}: version {r.seen_version} (the node has {there}); {can}")
        else:
            out.append("The node still has every record version this device saw.")
        if self.reappeared:
            out.append(f"{len(self.reappeared)} record(s) deleted since the backup are back on the node; accepting "
                       "deletes them again.")
        if not self.complete:
            out.append("This device's copy of the vault missed its last writes: the list may be incomplete.")
        out += ["Records written on other devices after the backup that this device never saw are not listed: "
                "each of those devices shows what it holds when it next syncs.",
                "Accept only if you expected this node to lose data (ask its operator). A node that rolls back "
                "without a signed restore is refused.",
                f"To accept and upload again what this device holds: rxfed patient sync --accept-restore "
                f"{self.restore_id}"]
        return out


class RestoreDetected(RollbackDetected):
    """The node serves an older vault than this device saw, with a valid restore statement:
    nothing goes on until the patient accepts (:meth:`PatientClient.accept_restore`)."""

    code = "restore_detected"

    def __init__(self, report: RestoreReport):
        lost = len(report.lost)
        super().__init__(f"the node {report.node} was restored from a backup taken {_utc(report.backup_taken)} and "
                         f"no longer has {lost} record version(s) this device saw; see what was lost with "
                         f"`rxfed patient sync` and go on with `rxfed patient sync --accept-restore "
                         f"{report.restore_id}`")
        self.report = report


def _utc(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))
