"""Restore statements: a node's signed admission that it was restored from a backup, and the
rule by which a patient's device weighs one against what it has seen (spec/crypto.md
section 11).

A restored node serves every vault as it was at the backup: older than what devices saw
since. Without a statement that is a rollback attack and devices refuse it. With one, the
device can tell the patient what the node lost and go on, but only with the patient's
consent: the statement proves that the node's key signed it, not that a disk really died,
so it never lets a device accept anything silently."""

from __future__ import annotations

from typing import Any

import attrs

from rxfed.crypto import SigningKeyPair
from rxfed.errors import Forbidden
from rxfed.protocol.schema import HEX_ID, const, fields, integer, text
from rxfed.protocol.statements import open_statement_by_any, sign_statement, statement_hash

RESTORE = "rxfed.restore"
MAX_TIME = 2**40
#: Clock difference tolerated between a device and its node when comparing their times
#: (seconds): the request window's default.
SKEW = 300


class RestoreRefused(Forbidden):
    """A restore statement that does not account for the rollback the device sees."""

    code = "bad_restore_statement"


@attrs.frozen
class RestoreStatement:
    """``{"type": "rxfed.restore", "node", "restore", "backup_taken", "restored"}`` signed by
    the node's identity key: the node ``node`` was restored at ``restored`` (Unix seconds)
    from a backup taken at ``backup_taken``; ``restore`` is a random id (32 hex digits)
    naming this restore, which a device accepts once."""

    node: str
    restore_id: str
    backup_taken: int
    restored: int
    signed: dict = attrs.field(eq=False, repr=False)

    @classmethod
    def issue(cls, key: SigningKeyPair, *, node: str, restore_id: str, backup_taken: int,
              restored: int) -> RestoreStatement:
        body = {"type": RESTORE, "node": node, "restore": restore_id, "backup_taken": backup_taken,
                "restored": restored}
        return cls(node, restore_id, backup_taken, restored, sign_statement(key, body))

    @classmethod
    def from_json(cls, obj: Any, where: str, node_keys: list[bytes]) -> RestoreStatement:
        """Parse and check the signature under one of ``node_keys`` (the node's keys valid at
        the restore time); Forbidden when none signed it."""
        body = open_statement_by_any(obj, where, RESTORE, node_keys)
        f = fields(body, where, {"type": const(RESTORE), "node": text(255), "restore": text(32, HEX_ID),
                                 "backup_taken": integer(0, MAX_TIME), "restored": integer(0, MAX_TIME)})
        if f["backup_taken"] > f["restored"]:
            raise RestoreRefused(f"{where}: the backup is dated after the restore")
        return cls(f["node"], f["restore"], f["backup_taken"], f["restored"], obj)

    @property
    def hash(self) -> bytes:
        return statement_hash(self.signed)


def check_restore(statement: RestoreStatement, *, node: str, synced: int | None, served_issued: int,
                  accepted: tuple[str, ...] | list[str], now: int) -> None:
    """Raise :class:`RestoreRefused` unless ``statement`` accounts for a device seeing an
    older vault than it pinned: it names the device's node, it was not accepted by this
    device before (one statement, one rollback), the restore happened after the device
    last saw the newer vault (``synced``, the device's time of that sync; None for a
    device that never recorded it), not in the future, and the vault served is no newer
    than the backup (``served_issued``: when the served manifest was signed). Times
    compare with :data:`SKEW` of tolerance."""
    if statement.node != node:
        raise RestoreRefused(f"the restore statement is for {statement.node}, not {node}")
    if statement.restore_id in accepted:
        raise RestoreRefused("this restore was already accepted on this device: a second rollback needs a new "
                             "restore statement")
    if synced is not None and statement.restored + SKEW < synced:
        raise RestoreRefused("the restore statement is older than this device's last sync, so it cannot explain "
                             "what changed since")
    if statement.restored > now + SKEW:
        raise RestoreRefused("the restore statement is dated in the future")
    if served_issued > statement.backup_taken + SKEW:
        raise RestoreRefused("the vault served was signed after the backup the node claims to be restored from")
