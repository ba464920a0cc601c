"""The row-level connection every SQL backend offers the operations, in portable SQL.

:mod:`rxfed.store.operations` writes each domain operation once over this narrow, typed
connection: methods read or write the rows of one table (or one join), check nothing and
decide nothing. A backend supplies four primitives (:meth:`SQLConnection._one`, ``_all``,
``_run``, ``_many``) and the SQL dialect it needs beyond what SQLite (3.35 and later) and
PostgreSQL share: the statements here use ``?`` placeholders (PostgreSQL's driver turns them
into ``$n``), ``ON CONFLICT``, ``RETURNING``, ``IS DISTINCT FROM``, and cast a parameter
whose type PostgreSQL could not infer.

Every method is a coroutine. SQLite's primitives complete without suspending, so its engine
runs a whole operation with one ``send(None)``; asyncpg's await the server.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
import attrs

from rxfed.store import (
    Account,
    AccountSummary,
    AuditRow,
    AuthKey,
    CommunityEvent,
    CommunityRow,
    DeadLetter,
    Device,
    GrantRow,
    Inbound,
    MatchingMember,
    MatchingSession,
    Nonce,
    OperatorEntry,
    OutboxSummary,
    Peer,
    ReceivedToken,
    Recovery,
    StoredRecord,
    TokenRow,
)

#: Placeholders per statement when a list of ids goes into ``IN (...)``.
CHUNK = 500


@attrs.frozen
class AccountState:
    """An account's row as a write reads it, with the device named (if any): whose device it
    is (None when no such device) and when it was revoked."""

    device_patient: str | None
    device_revoked: int | None
    epoch: int
    counter: int
    records: int
    bytes: int


@attrs.frozen
class PendingTransaction:
    txn: str
    seq: int
    attempts: int
    created: int
    next_attempt_ms: int


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _community(row: Sequence) -> CommunityRow:
    id_, host, name, condition, approval, public, seq, created, about = row
    return CommunityRow(id_, host, name, condition, bool(approval), bool(public), seq, created, about)


class SQLConnection:
    """One open transaction's rows. Subclasses implement the primitives."""

    #: The driver's exception for a broken unique constraint.
    unique_violation: type[BaseException] = Exception

    # -- primitives (a backend implements these) -----------------------------------------
    async def _one(self, sql: str, args: Sequence = ()) -> Sequence | None:
        raise NotImplementedError

    async def _all(self, sql: str, args: Sequence = ()) -> list[Sequence]:
        raise NotImplementedError

    async def _run(self, sql: str, args: Sequence = ()) -> int:
        """Run one statement; the number of rows it changed."""
        raise NotImplementedError

    async def _many(self, sql: str, rows: list[Sequence]) -> None:
        raise NotImplementedError

    def scrub(self) -> None:
        """Content deleted in this transaction must leave the database files as far as the
        backend can make it (SQLite: a TRUNCATE checkpoint of the WAL after the commit)."""

    # -- node ------------------------------------------------------------------------------
    async def get_meta(self, key: str) -> str | None:
        row = await self._one("SELECT value FROM meta WHERE key=?", (key,))
        return row[0] if row else None

    async def set_meta(self, key: str, value: str) -> None:
        await self._run("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                        "value=excluded.value", (key, value))

    async def add_invites(self, code_hashes: list[bytes], now: int) -> None:
        await self._many("INSERT INTO invites (code_hash, created, used) VALUES (?, ?, NULL)",
                         [(h, now) for h in code_hashes])

    async def open_invites(self) -> int:
        return (await self._one("SELECT count(*) FROM invites WHERE used IS NULL"))[0]

    async def use_invite(self, code_hash: bytes, now: int) -> bool:
        return await self._run("UPDATE invites SET used=? WHERE code_hash=? AND used IS NULL", (now, code_hash)) == 1

    async def add_nonce(self, nonce: Nonce) -> bool:
        """False when the nonce is stored already (a replay)."""
        return await self._run("INSERT INTO nonces (expires, nonce) VALUES (?, ?) ON CONFLICT DO NOTHING",
                               (nonce.expires, nonce.value)) == 1

    async def load_nonces(self, now: int) -> list[Nonce]:
        rows = await self._all("SELECT nonce, expires FROM nonces WHERE expires >= ?", (now,))
        return [Nonce(n, e) for n, e in rows]

    async def prune_nonces(self, now: int) -> int:
        return await self._run("DELETE FROM nonces WHERE expires < ?", (now,))

    # -- state shared by several worker processes ------------------------------------------
    async def budget(self, key: bytes) -> tuple[float, float] | None:
        """A signer's request budget: (tokens, when they were counted), None if never spent."""
        row = await self._one("SELECT tokens, at FROM rate_budgets WHERE key=?", (key,))
        return (row[0], row[1]) if row else None

    async def set_budget(self, key: bytes, tokens: float, at: float) -> None:
        await self._run("INSERT INTO rate_budgets (key, tokens, at) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                        "tokens=excluded.tokens, at=excluded.at", (key, tokens, at))

    async def prune_budgets(self, before: float) -> int:
        return await self._run("DELETE FROM rate_budgets WHERE at < ?", (before,))

    async def take_lease(self, destination: str, holder: str, now: int, expires: int) -> bool:
        """Whether ``holder`` now holds the destination's outbox lease until ``expires``: it
        held it already, or nobody did, or its holder let it lapse before ``now``."""
        return await self._run(
            "INSERT INTO outbox_leases (destination, holder, expires) VALUES (?, ?, ?) ON CONFLICT (destination) "
            "DO UPDATE SET holder=excluded.holder, expires=excluded.expires "
            "WHERE outbox_leases.holder=excluded.holder OR outbox_leases.expires < ?",
            (destination, holder, expires, now)) == 1

    async def drop_lease(self, destination: str, holder: str) -> None:
        await self._run("DELETE FROM outbox_leases WHERE destination=? AND holder=?", (destination, holder))

    # -- patients --------------------------------------------------------------------------
    async def account_state(self, patient: str, device: str | None) -> AccountState | None:
        row = await self._one("SELECT d.patient_id, d.revoked, p.epoch, p.counter, p.records, p.bytes FROM patients p "
                              "LEFT JOIN devices d ON d.id=? WHERE p.id=?", (device, patient))
        return AccountState(*row) if row else None

    async def root_key_erased(self, root_key: bytes) -> bool:
        return await self._one("SELECT 1 FROM tombstones WHERE root_key=?", (root_key,)) is not None

    async def root_key_registered(self, root_key: bytes) -> bool:
        return await self._one("SELECT 1 FROM patients WHERE root_key=?", (root_key,)) is not None

    async def device_key_taken(self, device: str, sign_key: bytes) -> bool:
        """Whether ``device`` or ``sign_key`` is a device's, or ``sign_key`` a recovery key."""
        return (await self._one("SELECT 1 FROM devices WHERE sign_key=? OR id=?", (sign_key, device)) is not None
                or await self.recovery_key_owner(sign_key) is not None)

    async def is_device_key(self, key: bytes) -> bool:
        return await self._one("SELECT 1 FROM devices WHERE sign_key=?", (key,)) is not None

    async def recovery_key_owner(self, auth_key: bytes) -> str | None:
        row = await self._one("SELECT patient_id FROM recovery WHERE auth_key=?", (auth_key,))
        return row[0] if row else None

    async def add_patient(self, patient: str, root_key: bytes, now: int) -> None:
        await self._run("INSERT INTO patients (id, root_key, created, epoch) VALUES (?, ?, ?, 1)",
                        (patient, root_key, now))

    async def add_identity(self, patient: str, epoch: int, statement: bytes) -> None:
        await self._run("INSERT INTO identity_chain (patient_id, epoch, statement) VALUES (?, ?, ?)",
                        (patient, epoch, statement))

    async def add_device(self, device: str, patient: str, sign_key: bytes, cert: bytes, keyring: bytes,
                         now: int) -> None:
        await self._run("INSERT INTO devices (id, patient_id, sign_key, cert, keyring, created) VALUES (?, ?, ?, ?, ?, ?)",
                        (device, patient, sign_key, cert, keyring, now))

    async def put_recovery(self, patient: str, recovery: Recovery) -> None:
        await self._run("INSERT INTO recovery (patient_id, auth_key, statement, root_bundle, keyring) "
                        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (patient_id) DO UPDATE SET auth_key=excluded.auth_key, "
                        "statement=excluded.statement, root_bundle=excluded.root_bundle, keyring=excluded.keyring",
                        (patient, recovery.auth_key, recovery.statement, recovery.root_bundle, recovery.keyring))

    async def has_recovery_key(self, patient: str, auth_key: bytes | None) -> bool:
        return await self._one("SELECT 1 FROM recovery WHERE patient_id=? AND auth_key=?",
                               (patient, auth_key)) is not None

    async def active_devices(self, patient: str) -> list[str]:
        return [r[0] for r in await self._all("SELECT id FROM devices WHERE patient_id=? AND revoked IS NULL",
                                              (patient,))]

    async def set_manifest(self, patient: str, counter: int, manifest: bytes) -> None:
        await self._run("UPDATE patients SET counter=?, manifest=? WHERE id=?", (counter, manifest, patient))

    async def set_epoch(self, patient: str, epoch: int) -> None:
        await self._run("UPDATE patients SET epoch=? WHERE id=?", (epoch, patient))

    async def revoke_devices(self, devices: list[str], now: int, statement: bytes) -> None:
        await self._many("UPDATE devices SET revoked=?, revocation=? WHERE id=?", [(now, statement, d) for d in devices])

    async def recertify_devices(self, devices: dict[str, tuple[bytes, bytes]]) -> None:
        await self._many("UPDATE devices SET cert=?, keyring=? WHERE id=?",
                         [(cert, keyring, d) for d, (cert, keyring) in devices.items()])

    async def auth_key(self, key: bytes) -> AuthKey | None:
        row = await self._one("SELECT patient_id, id FROM devices WHERE sign_key=?", (key,))
        if row:
            return AuthKey(key, "device", row[0], row[1])
        owner = await self.recovery_key_owner(key)
        return AuthKey(key, "recovery", owner, None) if owner else None

    async def account(self, patient: str) -> Account | None:
        row = await self._one("SELECT id, root_key, epoch, created, counter, records, bytes FROM patients WHERE id=?",
                              (patient,))
        return Account(*row) if row else None

    async def devices(self, patient: str) -> list[Device]:
        rows = await self._all("SELECT id, patient_id, cert, keyring, created, revoked, revocation FROM devices "
                               "WHERE patient_id=? ORDER BY created, id", (patient,))
        return [Device(*r) for r in rows]

    async def identity_chain(self, patient: str) -> list[bytes]:
        rows = await self._all("SELECT statement FROM identity_chain WHERE patient_id=? ORDER BY epoch", (patient,))
        return [r[0] for r in rows]

    async def recovery(self, patient: str) -> Recovery | None:
        row = await self._one("SELECT auth_key, statement, root_bundle, keyring FROM recovery WHERE patient_id=?",
                              (patient,))
        return Recovery(*row) if row else None

    async def recovery_by_key(self, auth_key: bytes) -> tuple[str, bytes, Recovery] | None:
        row = await self._one("SELECT r.patient_id, p.root_key, r.auth_key, r.statement, r.root_bundle, r.keyring "
                              "FROM recovery r JOIN patients p ON p.id = r.patient_id WHERE r.auth_key=?", (auth_key,))
        return (row[0], row[1], Recovery(*row[2:])) if row else None

    # -- vault -----------------------------------------------------------------------------
    async def record_versions(self, patient: str, ids: list[str]) -> dict[str, tuple[int, int]]:
        """``{id: (version, size)}`` of the stored records among ``ids``."""
        found: dict[str, tuple[int, int]] = {}
        for start in range(0, len(ids), CHUNK):
            part = ids[start:start + CHUNK]
            for rid, version, size in await self._all(
                    f"SELECT id, version, length(blob) FROM records WHERE patient_id=? AND id IN ({_marks(len(part))})",
                    (patient, *part)):
                found[rid] = (version, size)
        return found

    async def add_records(self, patient: str, records: Iterable[StoredRecord]) -> None:
        await self._many("INSERT INTO records (patient_id, id, version, blob) VALUES (?, ?, ?, ?)",
                         [(patient, r.id, r.version, r.blob) for r in records])

    async def replace_records(self, patient: str, records: Iterable[StoredRecord]) -> None:
        await self._many("UPDATE records SET version=?, blob=? WHERE patient_id=? AND id=?",
                         [(r.version, r.blob, patient, r.id) for r in records])

    async def delete_records(self, patient: str, ids: Iterable[str]) -> None:
        await self._many("DELETE FROM records WHERE patient_id=? AND id=?", [(patient, rid) for rid in ids])

    async def set_vault(self, patient: str, counter: int, manifest: bytes, records: int, size: int) -> None:
        await self._run("UPDATE patients SET counter=?, manifest=?, records=?, bytes=? WHERE id=?",
                        (counter, manifest, records, size, patient))

    async def manifest(self, patient: str) -> bytes | None:
        row = await self._one("SELECT manifest FROM patients WHERE id=?", (patient,))
        return row[0] if row else None

    async def records(self, patient: str) -> list[StoredRecord]:
        rows = await self._all("SELECT id, version, blob FROM records WHERE patient_id=? ORDER BY id", (patient,))
        return [StoredRecord(*r) for r in rows]

    async def erase(self, patient: str, tombstone: bytes, now: int) -> None:
        """Delete every row of the patient and keep the tombstone (with the root key, so the
        same keys cannot register again)."""
        (root_key,) = await self._one("SELECT root_key FROM patients WHERE id=?", (patient,))
        for table in ("records", "recovery", "devices", "identity_chain", "audit"):
            await self._run(f"DELETE FROM {table} WHERE patient_id=?", (patient,))
        await self._run("DELETE FROM deliveries WHERE token IN (SELECT token FROM grant_tokens WHERE grant_id IN "
                        "(SELECT id FROM grants WHERE patient_id=?))", (patient,))
        await self._run("DELETE FROM grant_tokens WHERE grant_id IN (SELECT id FROM grants WHERE patient_id=?)",
                        (patient,))
        await self._run("DELETE FROM grants WHERE patient_id=?", (patient,))
        await self._run("DELETE FROM patients WHERE id=?", (patient,))
        await self._run("INSERT INTO tombstones (patient_id, root_key, tombstone, deleted) VALUES (?, ?, ?, ?)",
                        (patient, root_key, tombstone, now))

    async def tombstone(self, patient: str) -> bytes | None:
        row = await self._one("SELECT tombstone FROM tombstones WHERE patient_id=?", (patient,))
        return row[0] if row else None

    # -- operator actions --------------------------------------------------------------------
    async def accounts(self, now: int) -> list[AccountSummary]:
        rows = await self._all(
            "SELECT p.id, p.created, p.records, p.bytes, "
            "(SELECT count(*) FROM devices d WHERE d.patient_id=p.id AND d.revoked IS NULL), "
            "(SELECT count(*) FROM grants g WHERE g.patient_id=p.id AND g.revoked IS NULL AND g.not_after>?), "
            "p.suspended, p.suspended_reason FROM patients p ORDER BY p.created, p.id", (now,))
        return [AccountSummary(*r) for r in rows]

    async def suspended_accounts(self) -> set[str]:
        return {r[0] for r in await self._all("SELECT id FROM patients WHERE suspended IS NOT NULL")}

    async def suspension(self, patient: str) -> tuple[int | None] | None:
        """``(suspended since or None,)`` for an account, None when there is none."""
        row = await self._one("SELECT suspended FROM patients WHERE id=?", (patient,))
        return None if row is None else (row[0],)

    async def set_suspended(self, patient: str, since: int | None, reason: str | None) -> None:
        await self._run("UPDATE patients SET suspended=?, suspended_reason=? WHERE id=?", (since, reason, patient))

    async def log_operator(self, entry: OperatorEntry) -> None:
        await self._run("INSERT INTO operator_log (time, action, subject, by, detail) VALUES (?, ?, ?, ?, ?)",
                        (entry.time, entry.action, entry.subject, entry.by, entry.detail))

    async def operator_log(self, limit: int) -> list[OperatorEntry]:
        rows = await self._all("SELECT time, action, subject, by, detail, seq FROM operator_log ORDER BY seq DESC "
                               "LIMIT ?", (limit,))
        return [OperatorEntry(*r) for r in reversed(rows)]

    async def remove_community(self, community_id: str, host: str) -> bool:
        key = (community_id, host)
        if await self._run("DELETE FROM communities WHERE id=? AND host=?", key) == 0:
            return False
        await self._run("DELETE FROM community_events WHERE community_id=? AND host=?", key)
        await self._run("DELETE FROM community_members WHERE community_id=? AND host=?", key)
        return True

    # -- federation: peers -----------------------------------------------------------------
    # -- operators' block lists (rows: see rxfed.protocol.blocklists) --------------------------
    _BLOCK_COLUMNS = "domain, severity, reject_media, reject_reports, public_comment, obfuscate"

    async def domain_blocks(self, domains: Sequence[str] | None = None) -> list[Sequence]:
        if domains is None:
            return await self._all(f"SELECT {self._BLOCK_COLUMNS} FROM domain_blocks ORDER BY domain")
        if not domains:
            return []
        return await self._all(f"SELECT {self._BLOCK_COLUMNS} FROM domain_blocks WHERE domain IN "
                               f"({_marks(len(domains))}) ORDER BY domain", list(domains))

    async def put_domain_blocks(self, rows: list[Sequence], now: int) -> None:
        """Add or replace blocks: (domain, severity, reject_media, reject_reports,
        public_comment, obfuscate) each."""
        await self._many("INSERT INTO domain_blocks (domain, severity, reject_media, reject_reports, public_comment, "
                         "obfuscate, created) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (domain) DO UPDATE SET "
                         "severity=excluded.severity, reject_media=excluded.reject_media, "
                         "reject_reports=excluded.reject_reports, public_comment=excluded.public_comment, "
                         "obfuscate=excluded.obfuscate",
                         [(d, sev, int(m), int(r), c, int(o), now) for d, sev, m, r, c, o in rows])

    async def delete_domain_block(self, domain: str) -> bool:
        return await self._run("DELETE FROM domain_blocks WHERE domain=?", (domain,)) == 1

    async def ban_hashes(self, hashes: Sequence[str] | None = None) -> list[Sequence]:
        """(hash, reason) rows: all, or those among ``hashes``."""
        if hashes is None:
            return await self._all("SELECT hash, reason FROM ban_hashes ORDER BY hash")
        if not hashes:
            return []
        return await self._all(f"SELECT hash, reason FROM ban_hashes WHERE hash IN ({_marks(len(hashes))})",
                               list(hashes))

    async def put_ban_hashes(self, rows: list[Sequence], now: int) -> None:
        await self._many("INSERT INTO ban_hashes (hash, reason, created) VALUES (?, ?, ?) ON CONFLICT (hash) DO "
                         "UPDATE SET reason=excluded.reason", [(h, r, now) for h, r in rows])

    async def delete_ban_hash(self, hash_: str) -> bool:
        return await self._run("DELETE FROM ban_hashes WHERE hash=?", (hash_,)) == 1

    async def put_forwarded_report(self, row: Sequence) -> bool:
        """(id, received, community_id, host, seq, sender, category, text, sent, moderator,
        origin); False when that report was kept already."""
        return await self._run("INSERT INTO forwarded_reports (id, received, community_id, host, seq, sender, "
                               "category, text, sent, moderator, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                               "ON CONFLICT (id) DO NOTHING", tuple(row)) == 1

    async def forwarded_reports(self) -> list[Sequence]:
        return await self._all("SELECT id, received, community_id, host, seq, sender, category, text, sent, moderator, "
                               "origin FROM forwarded_reports ORDER BY received, id")

    _PEER_COLUMNS = ("node_id, policy, url, fingerprint, document, fetched, failures, breaker_until, "
                     "last_success, last_error, trusted_keys")

    @staticmethod
    def _peer(row: Sequence) -> Peer:
        return Peer(*row)

    async def peer(self, node_id: str) -> Peer | None:
        row = await self._one(f"SELECT {self._PEER_COLUMNS} FROM peers WHERE node_id=?", (node_id,))
        return self._peer(row) if row else None

    async def peers(self) -> list[Peer]:
        return [self._peer(r) for r in await self._all(f"SELECT {self._PEER_COLUMNS} FROM peers ORDER BY node_id")]

    async def ensure_peer(self, node_id: str) -> None:
        await self._run("INSERT INTO peers (node_id) VALUES (?) ON CONFLICT DO NOTHING", (node_id,))

    async def set_peer_policy(self, node_id: str, policy: str, url: str | None, fingerprint: str | None) -> None:
        # A new pin replaces whatever trust was learnt before it.
        await self._run("UPDATE peers SET policy=?, url=coalesce(CAST(? AS TEXT), url), trusted_keys=CASE WHEN "
                        "CAST(? AS TEXT) IS NOT NULL AND CAST(? AS TEXT) IS DISTINCT FROM fingerprint THEN NULL ELSE "
                        "trusted_keys END, fingerprint=coalesce(CAST(? AS TEXT), fingerprint), failures=0, "
                        "breaker_until=NULL WHERE node_id=?",
                        (policy, url, fingerprint, fingerprint, fingerprint, node_id))

    async def save_peer_document(self, node_id: str, document: bytes, fetched: int, trusted_keys: bytes) -> None:
        await self._run("UPDATE peers SET document=?, fetched=?, trusted_keys=? WHERE node_id=?",
                        (document, fetched, trusted_keys, node_id))

    async def forget_peer_keys(self, node_id: str) -> bool:
        return await self._run("UPDATE peers SET trusted_keys=NULL, document=NULL, fetched=NULL WHERE node_id=?",
                               (node_id,)) == 1

    async def peer_delivered(self, node_id: str, now: int) -> None:
        await self._run("UPDATE peers SET failures=0, breaker_until=NULL, last_success=? WHERE node_id=?",
                        (now, node_id))

    async def peer_failed(self, node_id: str, error: str | None, breaker_until: int | None) -> int:
        """Count one more failure in a row; returns the count."""
        row = await self._one("UPDATE peers SET failures=failures+1, last_error=?, breaker_until=? WHERE node_id=? "
                              "RETURNING failures", (error, breaker_until, node_id))
        return row[0]

    async def peer_recovered(self, node_id: str) -> None:
        await self._run("UPDATE peers SET failures=0, breaker_until=NULL WHERE node_id=?", (node_id,))
        await self._run("UPDATE outbox_txns SET next_attempt=0 WHERE destination=?", (node_id,))

    # -- federation: outbox ----------------------------------------------------------------
    async def enqueue(self, items: list[tuple[str, bytes]], now: int, not_before: int = 0) -> None:
        await self._many("INSERT INTO outbox (destination, event, created, not_before) VALUES (?, ?, ?, ?)",
                         [(dest, event, now, not_before) for dest, event in items])

    async def transactions_created_before(self, destination: str, cutoff: int) -> list[str]:
        return [r[0] for r in await self._all("SELECT txn FROM outbox_txns WHERE destination=? AND created < ?",
                                              (destination, cutoff))]

    async def transaction_events(self, txn: str) -> list[bytes]:
        return [r[0] for r in await self._all("SELECT event FROM outbox WHERE txn=? ORDER BY id", (txn,))]

    async def bury_transaction(self, txn: str, now: int, reason: str) -> None:
        await self._bury("txn=?", (txn,), now, reason)
        await self._run("DELETE FROM outbox_txns WHERE txn=?", (txn,))

    async def unformed_events_before(self, destination: str, cutoff: int) -> list[tuple[int, bytes]]:
        return [(i, e) for i, e in await self._all(
            "SELECT id, event FROM outbox WHERE destination=? AND txn IS NULL AND created < ? ORDER BY id",
            (destination, cutoff))]

    async def bury_events(self, ids: list[int], now: int, reason: str) -> None:
        for start in range(0, len(ids), CHUNK):
            part = ids[start:start + CHUNK]
            await self._bury(f"id IN ({_marks(len(part))})", tuple(part), now, reason)

    async def _bury(self, where: str, args: tuple, now: int, reason: str) -> None:
        await self._run("INSERT INTO dead_letters (destination, event, created, died, reason) SELECT destination, "
                        f"event, created, CAST(? AS BIGINT), CAST(? AS TEXT) FROM outbox WHERE {where} ORDER BY id",
                        (now, reason, *args))
        await self._run(f"DELETE FROM outbox WHERE {where}", args)

    async def oldest_transaction(self, destination: str, exclude: Sequence[str]) -> PendingTransaction | None:
        skip = f"AND txn NOT IN ({_marks(len(exclude))}) " if exclude else ""
        row = await self._one("SELECT txn, seq, attempts, created, next_attempt FROM outbox_txns WHERE destination=? "
                              f"{skip}ORDER BY seq LIMIT 1", (destination, *exclude))
        return PendingTransaction(*row) if row else None

    async def waiting_events(self, destination: str, now: int, limit: int) -> list[int]:
        return [r[0] for r in await self._all("SELECT id FROM outbox WHERE destination=? AND txn IS NULL "
                                              "AND not_before <= ? ORDER BY id LIMIT ?", (destination, now, limit))]

    async def next_out_seq(self, destination: str) -> int:
        await self.ensure_peer(destination)
        (seq,) = await self._one("UPDATE peers SET out_seq=out_seq+1 WHERE node_id=? RETURNING out_seq", (destination,))
        return seq

    async def form_transaction(self, txn: str, destination: str, seq: int, now: int, ids: list[int]) -> None:
        await self._run("INSERT INTO outbox_txns (txn, destination, seq, created) VALUES (?, ?, ?, ?)",
                        (txn, destination, seq, now))
        for start in range(0, len(ids), CHUNK):
            part = ids[start:start + CHUNK]
            await self._run(f"UPDATE outbox SET txn=? WHERE id IN ({_marks(len(part))})", (txn, *part))

    async def transaction_delivered(self, txn: str) -> None:
        await self._run("DELETE FROM outbox WHERE txn=?", (txn,))
        await self._run("DELETE FROM outbox_txns WHERE txn=?", (txn,))

    async def transaction_failed(self, txn: str, error: str, next_attempt_ms: int) -> None:
        await self._run("UPDATE outbox_txns SET attempts=attempts+1, last_error=?, next_attempt=? WHERE txn=?",
                        (error[:500], next_attempt_ms, txn))

    async def reschedule_transactions(self, destination: str, next_attempt_ms: int) -> None:
        await self._run("UPDATE outbox_txns SET next_attempt=? WHERE destination=?", (next_attempt_ms, destination))

    async def due_destinations(self) -> list[tuple[str, int | None]]:
        # Every unacknowledged transaction still has its events in the outbox, and it goes
        # before any newer event, so a destination is due when its oldest transaction is
        # (the one sent first; an earlier retry time of a later one would wake the worker
        # for nothing); with none, when its first waiting event may go (0, at once, for most).
        rows = await self._all(
            "SELECT o.destination, coalesce((SELECT t.next_attempt FROM outbox_txns t "
            "WHERE t.destination = o.destination ORDER BY t.seq LIMIT 1), min(o.not_before) * 1000) "
            "FROM outbox o GROUP BY o.destination ORDER BY 1")
        return [(d, t) for d, t in rows]

    async def outbox_summary(self) -> list[OutboxSummary]:
        out = []
        dests = [r[0] for r in await self._all(
            "SELECT destination FROM outbox UNION SELECT destination FROM dead_letters ORDER BY 1")]
        for dest in dests:
            pending, in_flight, oldest = await self._one(
                "SELECT count(*) - count(txn), count(txn), min(created) FROM outbox WHERE destination=?", (dest,))
            (next_attempt,) = await self._one("SELECT min(next_attempt) FROM outbox_txns WHERE destination=?", (dest,))
            (dead,) = await self._one("SELECT count(*) FROM dead_letters WHERE destination=?", (dest,))
            out.append(OutboxSummary(dest, pending, in_flight, oldest, next_attempt, dead))
        return out

    async def dead_letters(self, destination: str | None) -> list[DeadLetter]:
        where, args = ("WHERE destination=? ", (destination,)) if destination is not None else ("", ())
        rows = await self._all(f"SELECT id, destination, event, created, died, reason FROM dead_letters {where}"
                               "ORDER BY id", args)
        return [DeadLetter(*r) for r in rows]

    async def replay_dead_letters(self, now: int, destination: str | None) -> int:
        where, args = ("WHERE destination=? ", (destination,)) if destination is not None else ("", ())
        moved = await self._run("INSERT INTO outbox (destination, event, created) SELECT destination, event, "
                                f"CAST(? AS BIGINT) FROM dead_letters {where}ORDER BY id", (now, *args))
        await self._run(f"DELETE FROM dead_letters {where}", args)
        return moved

    # -- federation: inbox -----------------------------------------------------------------
    async def inbound(self, origin: str, txn: str) -> Inbound | None:
        row = await self._one("SELECT reply, missing FROM inbox WHERE origin=? AND txn=?", (origin, txn))
        return Inbound(row[0], tuple(json.loads(row[1]))) if row else None

    async def add_inbound(self, origin: str, txn: str, seq: int, reply: Inbound, now: int) -> None:
        await self._run("INSERT INTO inbox (origin, txn, seq, reply, missing, received) VALUES (?, ?, ?, ?, ?, ?)",
                        (origin, txn, seq, reply.results, json.dumps(list(reply.missing)), now))

    async def prune_inbox(self, before: int) -> int:
        return await self._run("DELETE FROM inbox WHERE received < ?", (before,))

    async def inbound_sequence(self, origin: str) -> tuple[int, list[int]]:
        """(the highest contiguous sequence number seen from ``origin``, those seen above it)."""
        await self.ensure_peer(origin)
        contiguous, seen = await self._one("SELECT in_contiguous, in_seen FROM peers WHERE node_id=?", (origin,))
        return contiguous, json.loads(seen)

    async def set_inbound_sequence(self, origin: str, contiguous: int, seen: list[int]) -> None:
        await self._run("UPDATE peers SET in_contiguous=?, in_seen=? WHERE node_id=?",
                        (contiguous, json.dumps(seen), origin))

    # -- communities -----------------------------------------------------------------------
    _COMMUNITY_COLUMNS = "id, host, name, condition, approval, public, seq, created, about"

    async def communities(self, hosted_by: str | None) -> list[CommunityRow]:
        where, args = ("WHERE host=? ", (hosted_by,)) if hosted_by is not None else ("", ())
        rows = await self._all(f"SELECT {self._COMMUNITY_COLUMNS} FROM communities {where}ORDER BY created, id", args)
        return [_community(r) for r in rows]

    async def community(self, community_id: str, host: str) -> CommunityRow | None:
        row = await self._one(f"SELECT {self._COMMUNITY_COLUMNS} FROM communities WHERE id=? AND host=?",
                              (community_id, host))
        return _community(row) if row else None

    async def community_events(self, community_id: str, host: str, after: int, limit: int) -> list[CommunityEvent]:
        rows = await self._all("SELECT seq, event, stamp FROM community_events WHERE community_id=? AND host=? AND seq>? "
                               "ORDER BY seq LIMIT ?", (community_id, host, after, limit))
        return [CommunityEvent(*r) for r in rows]

    async def member_state(self, community_id: str, host: str, member: bytes) -> bool | None:
        row = await self._one("SELECT active FROM community_members WHERE community_id=? AND host=? AND member=?",
                              (community_id, host, member))
        return None if row is None else bool(row[0])

    async def last_event_seq(self, community_id: str, host: str) -> int:
        (current,) = await self._one("SELECT coalesce(max(seq), 0) FROM community_events WHERE community_id=? "
                                     "AND host=?", (community_id, host))
        return current

    async def ensure_community(self, community: CommunityRow) -> None:
        await self._run("INSERT INTO communities (id, host, name, condition, approval, public, seq, created, about) "
                        "VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?) ON CONFLICT (id, host) DO NOTHING",
                        (community.id, community.host, community.name, community.condition, int(community.approval),
                         int(community.public), community.created, community.about))

    async def add_community_events(self, community_id: str, host: str, events: list[CommunityEvent]) -> None:
        """Store events not stored yet (a community's events are idempotent by number)."""
        await self._many("INSERT INTO community_events (community_id, host, seq, event, stamp) VALUES (?, ?, ?, ?, ?) "
                         "ON CONFLICT DO NOTHING", [(community_id, host, e.seq, e.event, e.stamp) for e in events])

    async def set_members(self, community_id: str, host: str, members: dict[bytes, bool]) -> None:
        await self._many("INSERT INTO community_members (community_id, host, member, active) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT (community_id, host, member) DO UPDATE SET active=excluded.active",
                         [(community_id, host, m, int(a)) for m, a in members.items()])

    async def community_seq(self, community_id: str, host: str) -> int:
        (seq,) = await self._one("SELECT seq FROM communities WHERE id=? AND host=?", (community_id, host))
        return seq

    async def event_seqs_after(self, community_id: str, host: str, after: int, limit: int) -> list[int]:
        return [r[0] for r in await self._all("SELECT seq FROM community_events WHERE community_id=? AND host=? "
                                              "AND seq>? ORDER BY seq LIMIT ?", (community_id, host, after, limit))]

    async def set_community_seq(self, community_id: str, host: str, seq: int) -> None:
        await self._run("UPDATE communities SET seq=? WHERE id=? AND host=?", (seq, community_id, host))

    # -- consent: grants and the audit chain -------------------------------------------------
    _GRANT_COLUMNS = "id, patient_id, kind, purpose, recipient, not_after, created, statement, revoked, revocation"
    _TOKEN_COLUMNS = "token, grant_id, node, statement, voucher, revocation, shared, acked, seq, ack"

    @staticmethod
    def _grant(row: Sequence) -> GrantRow:
        return GrantRow(*row)

    @staticmethod
    def _token(row: Sequence) -> TokenRow:
        return TokenRow(*row)

    async def add_grant(self, grant: GrantRow, tokens: list[TokenRow]) -> bool:
        """False when the grant's or a token's id is taken (the caller refuses the write,
        which rolls the transaction back)."""
        try:
            await self._run(f"INSERT INTO grants ({self._GRANT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
                            (grant.id, grant.patient, grant.kind, grant.purpose, grant.recipient, grant.not_after,
                             grant.created, grant.statement))
            await self._many(f"INSERT INTO grant_tokens ({self._TOKEN_COLUMNS}) "
                             "VALUES (?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, NULL)",
                             [(t.token, grant.id, t.node, t.statement, t.voucher) for t in tokens])
        except self.unique_violation:
            return False
        return True

    async def grants(self, patient: str) -> list[tuple[GrantRow, list[TokenRow]]]:
        out = []
        for row in await self._all(f"SELECT {self._GRANT_COLUMNS} FROM grants WHERE patient_id=? "
                                   "ORDER BY created DESC, id", (patient,)):
            tokens = [self._token(t) for t in await self._all(
                f"SELECT {self._TOKEN_COLUMNS} FROM grant_tokens WHERE grant_id=? ORDER BY node", (row[0],))]
            out.append((self._grant(row), tokens))
        return out

    async def grant_of_token(self, token: str) -> tuple[GrantRow, TokenRow] | None:
        t = await self._one(f"SELECT {self._TOKEN_COLUMNS} FROM grant_tokens WHERE token=?", (token,))
        if t is None:
            return None
        g = await self._one(f"SELECT {self._GRANT_COLUMNS} FROM grants WHERE id=?", (t[1],))
        return self._grant(g), self._token(t)

    async def audit_head(self, patient: str) -> tuple[int, bytes] | None:
        row = await self._one("SELECT seq, hash FROM audit WHERE patient_id=? ORDER BY seq DESC LIMIT 1", (patient,))
        return (row[0], row[1]) if row else None

    async def add_audit(self, patient: str, rows: Iterable[AuditRow]) -> None:
        await self._many("INSERT INTO audit (patient_id, seq, entry, hash) VALUES (?, ?, ?, ?)",
                         [(patient, a.seq, a.entry, a.hash) for a in rows])

    async def audit(self, patient: str) -> list[AuditRow]:
        rows = await self._all("SELECT seq, entry, hash FROM audit WHERE patient_id=? ORDER BY seq", (patient,))
        return [AuditRow(*r) for r in rows]

    async def token_share_state(self, token: str, patient: str) -> tuple[int | None, int | None] | None:
        """(when its grant was revoked, its last delivery's number) for a token of the patient's."""
        row = await self._one("SELECT g.revoked, t.seq FROM grant_tokens t JOIN grants g ON g.id = t.grant_id "
                              "WHERE t.token=? AND g.patient_id=?", (token, patient))
        return (row[0], row[1]) if row else None

    async def set_token_shared(self, token: str, now: int, seq: int) -> None:
        await self._run("UPDATE grant_tokens SET shared=?, seq=? WHERE token=?", (now, seq, token))

    async def add_delivery(self, token: str, delivery: str, now: int) -> bool:
        """False when the delivery id was used before."""
        return await self._run("INSERT INTO deliveries (token, delivery, created, used) VALUES (?, ?, ?, NULL) "
                               "ON CONFLICT DO NOTHING", (token, delivery, now)) == 1

    async def revoke_grant(self, grant_id: str, patient: str, now: int, revocation: bytes) -> bool:
        return await self._run("UPDATE grants SET revoked=?, revocation=? WHERE id=? AND patient_id=? "
                               "AND revoked IS NULL", (now, revocation, grant_id, patient)) == 1

    async def set_token_revocations(self, grant_id: str, revocations: dict[str, bytes]) -> None:
        await self._many("UPDATE grant_tokens SET revocation=? WHERE token=? AND grant_id=?",
                         [(r, t, grant_id) for t, r in revocations.items()])

    async def unacknowledged_revoked_token(self, token: str, node: str) -> str | None:
        """The patient whose revoked token ``token`` (sent to ``node``) is not acknowledged yet."""
        row = await self._one("SELECT g.patient_id FROM grant_tokens t JOIN grants g ON g.id = t.grant_id "
                              "WHERE t.token=? AND t.node=? AND g.revoked IS NOT NULL AND t.acked IS NULL",
                              (token, node))
        return row[0] if row else None

    async def set_token_acknowledged(self, token: str, now: int, ack: bytes) -> None:
        await self._run("UPDATE grant_tokens SET acked=?, ack=? WHERE token=?", (now, ack, token))

    async def unused_delivery(self, token: str, node: str, delivery: str) -> str | None:
        """The patient whose delivery ``delivery`` under ``token`` to ``node`` was not reported used."""
        row = await self._one("SELECT g.patient_id FROM deliveries d JOIN grant_tokens t ON t.token = d.token "
                              "JOIN grants g ON g.id = t.grant_id WHERE d.token=? AND d.delivery=? AND t.node=? "
                              "AND d.used IS NULL", (token, delivery, node))
        return row[0] if row else None

    async def set_delivery_used(self, token: str, delivery: str, now: int) -> None:
        await self._run("UPDATE deliveries SET used=? WHERE token=? AND delivery=?", (now, token, delivery))

    # -- consent: signals received ---------------------------------------------------------
    _RECEIVED_COLUMNS = ("token, origin, subject, subject_key, kind, purpose, recipient, not_after, statement, "
                         "voucher, received, revoked, delivery")

    @staticmethod
    def _received(row: Sequence) -> ReceivedToken:
        return ReceivedToken(*row)

    async def add_received(self, t: ReceivedToken) -> None:
        """Keep a token seen for the first time (one already known stays as it is)."""
        await self._run(f"INSERT INTO received_tokens ({self._RECEIVED_COLUMNS}) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL) ON CONFLICT DO NOTHING",
                        (t.token, t.origin, t.subject, t.subject_key, t.kind, t.purpose, t.recipient, t.not_after,
                         t.statement, t.voucher, t.received))

    async def received_origin(self, token: str) -> tuple[str, bytes]:
        origin, key = await self._one("SELECT origin, subject_key FROM received_tokens WHERE token=?", (token,))
        return origin, key

    async def received_state(self, token: str) -> tuple[int | None, str | None, int | None]:
        """(revoked, last delivery id, its number) of a received token."""
        row = await self._one("SELECT revoked, delivery, delivery_seq FROM received_tokens WHERE token=?", (token,))
        return row[0], row[1], row[2]

    async def replace_received_signals(self, token: str, signals: list[tuple[str, bytes]]) -> None:
        await self._run("DELETE FROM received_signals WHERE token=?", (token,))
        await self._many("INSERT INTO received_signals (token, n, kind, body) VALUES (?, ?, ?, ?)",
                         [(token, n, kind, body) for n, (kind, body) in enumerate(signals)])

    async def set_received_delivery(self, token: str, delivery: str, seq: int) -> None:
        await self._run("UPDATE received_tokens SET delivery=?, delivery_seq=? WHERE token=?", (delivery, seq, token))

    async def delete_received_signals(self, token: str) -> int:
        return await self._run("DELETE FROM received_signals WHERE token=?", (token,))

    async def set_received_revoked(self, token: str, now: int, revocation: bytes | None) -> None:
        await self._run("UPDATE received_tokens SET revoked=COALESCE(revoked, ?), revocation=COALESCE(revocation, ?) "
                        "WHERE token=?", (now, revocation, token))

    async def received_token(self, token: str) -> ReceivedToken | None:
        row = await self._one(f"SELECT {self._RECEIVED_COLUMNS} FROM received_tokens WHERE token=?", (token,))
        return self._received(row) if row else None

    async def received_signals(self, token: str | None) -> list[tuple[str, str, bytes]]:
        where, args = ("WHERE token=? ", (token,)) if token is not None else ("", ())
        rows = await self._all(f"SELECT token, kind, body FROM received_signals {where}ORDER BY token, n", args)
        return [(t, k, b) for t, k, b in rows]

    async def ended_received(self, now: int) -> list[ReceivedToken]:
        """Tokens whose grant ended by ``now`` that still hold signals."""
        rows = await self._all(f"SELECT {self._RECEIVED_COLUMNS} FROM received_tokens WHERE not_after <= ? "
                               "AND token IN (SELECT token FROM received_signals)", (now,))
        return [self._received(r) for r in rows]

    async def forget_received(self, ended_before: int) -> None:
        """Forget tokens without signals whose grant ended before ``ended_before``."""
        await self._run("DELETE FROM received_tokens WHERE not_after <= ? AND token NOT IN "
                        "(SELECT token FROM received_signals)", (ended_before,))

    # -- matching: PSI sessions, results per peer, the schedule ---------------------------
    _SESSION_COLUMNS = ("id, role, peer, started, outcome, step, finished, own_size, own_padded, peer_padded, "
                        "common, state")

    async def matching_members(self, origin: str, kind: str, purpose: str, now: int) -> list[MatchingMember]:
        """Signals this node's own patients (not suspended) sent it under live tokens of ``kind`` for ``purpose``."""
        rows = await self._all(
            "SELECT g.patient_id, t.token, t.subject, t.recipient, s.body FROM received_tokens t "
            "JOIN received_signals s ON s.token = t.token JOIN grant_tokens gt ON gt.token = t.token "
            "JOIN grants g ON g.id = gt.grant_id JOIN patients p ON p.id = g.patient_id "
            "WHERE t.origin=? AND t.kind=? AND t.purpose=? AND p.suspended IS NULL "
            "AND t.revoked IS NULL AND t.not_after > ? AND g.revoked IS NULL AND g.not_after > ? "
            "ORDER BY t.token, s.n", (origin, kind, purpose, now, now))
        return [MatchingMember(*r) for r in rows]

    async def matching_sessions_since(self, peer: str, role: str, since: int) -> tuple[int, int]:
        """(sessions ``peer`` had with us in ``role`` started at or after ``since``, of them open)."""
        row = await self._one("SELECT count(*), count(state) FROM matching_sessions WHERE peer=? AND role=? "
                              "AND started >= ?", (peer, role, since))
        return int(row[0]), int(row[1])

    async def add_matching_session(self, s: MatchingSession) -> bool:
        return await self._run(f"INSERT INTO matching_sessions ({self._SESSION_COLUMNS}) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                               (s.id, s.role, s.peer, s.started, s.outcome, s.step, s.finished, s.own_size,
                                s.own_padded, s.peer_padded, s.common, s.state)) == 1

    async def matching_session(self, session_id: str, role: str) -> MatchingSession | None:
        row = await self._one(f"SELECT {self._SESSION_COLUMNS} FROM matching_sessions WHERE id=? AND role=?",
                              (session_id, role))
        return MatchingSession(*row) if row else None

    async def advance_matching_session(self, session_id: str, role: str, step: int, state: bytes) -> bool:
        """Move an open session from ``step`` to ``step + 1`` with its new state (False when
        another request moved it first)."""
        return await self._run("UPDATE matching_sessions SET step=?, state=? WHERE id=? AND role=? AND step=? "
                               "AND finished IS NULL", (step + 1, state, session_id, role, step)) == 1

    async def finish_matching_session(self, s: MatchingSession) -> bool:
        return await self._run("UPDATE matching_sessions SET finished=?, outcome=?, step=?, own_size=?, own_padded=?, "
                               "peer_padded=?, common=?, state=NULL WHERE id=? AND role=? AND finished IS NULL",
                               (s.finished, s.outcome, s.step, s.own_size, s.own_padded, s.peer_padded, s.common,
                                s.id, s.role)) == 1

    async def stale_matching_sessions(self, before: int) -> list[MatchingSession]:
        rows = await self._all(f"SELECT {self._SESSION_COLUMNS} FROM matching_sessions WHERE finished IS NULL "
                               "AND started < ?", (before,))
        return [MatchingSession(*r) for r in rows]

    async def matching_sessions(self, limit: int) -> list[MatchingSession]:
        rows = await self._all(f"SELECT {self._SESSION_COLUMNS} FROM matching_sessions "
                               "ORDER BY started DESC, id LIMIT ?", (limit,))
        return [attrs.evolve(MatchingSession(*r), state=None) for r in rows]

    async def replace_matching_common(self, peer: str, counts: dict[str, int], now: int) -> None:
        await self._run("DELETE FROM matching_common WHERE peer=?", (peer,))
        await self._many("INSERT INTO matching_common (peer, category, count, updated) VALUES (?, ?, ?, ?)",
                         [(peer, category, n, now) for category, n in sorted(counts.items())])

    async def matching_common(self, categories: list[str] | None) -> list[tuple[str, str, int, int]]:
        """(peer, category, count, updated) for ``categories`` (all when None)."""
        if categories is None:
            rows = await self._all("SELECT peer, category, count, updated FROM matching_common ORDER BY peer, category")
            return [tuple(r) for r in rows]
        out = []
        for i in range(0, len(categories), CHUNK):
            part = categories[i:i + CHUNK]
            out += [tuple(r) for r in await self._all(
                f"SELECT peer, category, count, updated FROM matching_common WHERE category IN ({_marks(len(part))}) "
                "ORDER BY peer, category", part)]
        return out

    async def claim_matching_run(self, peer: str, now_ms: int, next_ms: int) -> bool:
        """Whether this caller runs ``peer``'s due session: the schedule moved to ``next_ms``
        by exactly one caller (another worker process claiming it at once gets False)."""
        return await self._run("INSERT INTO matching_schedule (peer, next_run) VALUES (?, ?) ON CONFLICT (peer) "
                               "DO UPDATE SET next_run = excluded.next_run WHERE matching_schedule.next_run <= ?",
                               (peer, next_ms, now_ms)) == 1
