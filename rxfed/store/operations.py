"""The node's store: every domain operation written once, over any backend.

A write reads the rows it needs through the backend's row-level connection
(:class:`rxfed.store.sql.SQLConnection`), calls the pure rule from protocol/ or consent/,
and applies the typed plan the rule returns; an error anywhere rolls the whole transaction
back, so a refused write changes nothing. The backend decides how a transaction runs
(:class:`rxfed.store.Backend`): SQLite groups the operations that arrive together into one
transaction and drives each operation's coroutine to its end without suspending; PostgreSQL
awaits the same coroutine inside a real transaction of its own. Every write takes the
request's nonce, persisted in the same transaction, so a replayed write is refused even
after a restart. ``tests/store/contract.py`` runs every operation on every backend.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from operator import methodcaller
from pathlib import Path
from typing import Any

import attrs

from rxfed.consent.audit import append as audit_append
from rxfed.consent.tokens import ReceivedState, TokenOutcome, check_share, on_delivery
from rxfed.errors import Conflict, Forbidden, Gone, NotFound, RateLimited, Unauthorized
from rxfed.protocol import account as pa
from rxfed.protocol import budget
from rxfed.protocol import blocklists as pbl
from rxfed.protocol import community as pcm
from rxfed.protocol import insights as pin
from rxfed.protocol import release as prl
from rxfed.protocol.canonical import canonical, loads
from rxfed.protocol.federation import track_sequence
from rxfed.store import (
    Account,
    AccountSummary,
    AuditRow,
    AuthKey,
    Backend,
    CommunityEvent,
    CommunityRow,
    DeadLetter,
    Device,
    GrantRow,
    Inbound,
    IssuedCredential,
    MatchingMember,
    MatchingSession,
    NewPatient,
    Nonce,
    OperatorEntry,
    OutboundTransaction,
    OutboxSummary,
    Peer,
    Quota,
    ReceivedToken,
    Recovery,
    Replayed,
    StoredRecord,
    TokenRow,
    Vault,
)
from rxfed.store.sql import AccountState, SQLConnection as Conn

#: Why an event that waited too long went to the dead letters.
TOO_OLD = "undelivered past the maximum age"
#: How many numbers of an origin's transactions seen out of order are kept.
SEEN_WINDOW = 10_000
#: The meta row holding the insights privacy budget per period (an exact fraction as text).
INSIGHTS_BUDGET = "insights.budget"
#: The budget per period until the operator sets one (spec/privacy.md section 6).
DEFAULT_INSIGHTS_BUDGET = "1"


# -- steps shared by several operations ---------------------------------------------------


async def _use_nonce(c: Conn, nonce: Nonce) -> None:
    if not nonce.claimed and not await c.add_nonce(nonce):
        raise Replayed()


async def _spend(c: Conn, nonce: Nonce, key: bytes | None, now: float, rate: float, burst: int) -> None:
    await _use_nonce(c, nonce)
    if key is not None:
        await c.set_budget(key, budget.take(await c.budget(key), now, rate, burst), now)


async def _signer(c: Conn, patient: str, device: str | None) -> AccountState:
    """The account's row, after checking that it exists and that ``device`` (if given) is one
    of its live devices."""
    state = await c.account_state(patient, device)
    if state is None:
        raise Unauthorized("unknown or erased account", code="unknown_account")
    if device is not None:
        if state.device_patient != patient:
            raise Unauthorized("unknown device", code="unknown_key")
        if state.device_revoked is not None:
            raise Unauthorized("this device was revoked", code="revoked_device")
    return state


async def _current_epoch(c: Conn, patient: str, signer: str | None, epoch: int,
                         recovery_key: bytes | None) -> AccountState:
    state = await _signer(c, patient, signer)
    if signer is None and not await c.has_recovery_key(patient, recovery_key):
        raise Unauthorized("unknown recovery key", code="unknown_key")
    pa.check_epoch(state.epoch, epoch)
    return state


async def _new_device_key(c: Conn, device: str, sign_key: bytes) -> None:
    """A device key must be new: no device's, and no recovery key (a device holding a
    patient's recovery auth key as its own would stand in its place)."""
    if await c.device_key_taken(device, sign_key):
        raise Conflict("this device key is already registered", code="already_registered")


async def _put_recovery(c: Conn, patient: str, recovery: Recovery) -> None:
    other = await c.recovery_key_owner(recovery.auth_key)
    if (other is not None and other != patient) or await c.is_device_key(recovery.auth_key):
        raise Conflict("this recovery key is in use", code="already_registered")
    await c.put_recovery(patient, recovery)


async def _account_exists(c: Conn, patient: str) -> int | None:
    """When the account was suspended (None: it is not); NotFound when there is none."""
    row = await c.suspension(patient)
    if row is None:
        erased = await c.tombstone(patient) is not None
        raise NotFound(f"no account {patient} on this node" + (" (it was erased)" if erased else ""),
                       code="unknown_account")
    return row[0]


async def _erase(c: Conn, patient: str, tombstone: bytes, now: int) -> None:
    await c.erase(patient, tombstone, now)
    c.scrub()


async def _audit(c: Conn, patient: str, entries: list[dict], now: int) -> None:
    """Append ``entries`` to the patient's chain (callers make each logged fact happen once)."""
    appended = audit_append(await c.audit_head(patient), entries, now)
    await c.add_audit(patient, [AuditRow(a.seq, a.entry, a.hash) for a in appended])


async def _write_community(c: Conn, community: CommunityRow, events: list[CommunityEvent]) -> None:
    key = (community.id, community.host)
    # The row is made once: at the host with the create event, on a mirror by its first event.
    await c.ensure_community(community)
    await c.add_community_events(*key, events)
    members: dict[bytes, bool] = {}
    for e in events:
        for member, active in e.changes:
            if member not in members:
                members[member] = await c.member_state(*key, member)
            members[member] = pcm.member_active(members[member], active)
    await c.set_members(*key, members)
    # The community's seq is the end of the contiguous run stored: mirrors may see gaps.
    seq = await c.community_seq(*key)
    while True:
        end = pcm.contiguous_end(seq, await c.event_seqs_after(*key, seq, 1000))
        done, seq = end - seq < 1000, end
        if done:
            break
    await c.set_community_seq(*key, seq)


async def _insert_received(c: Conn, t: ReceivedToken) -> None:
    await c.add_received(t)
    origin, key = await c.received_origin(t.token)
    if origin != t.origin or key != t.subject_key:  # another home's token with the same id
        raise Forbidden("that token id belongs to another patient's grant", code="wrong_origin")


# -- the operations -----------------------------------------------------------------------


async def _register_patient(c: Conn, new: NewPatient, invite_hash: bytes | None, nonce: Nonce, now: int) -> None:
    await _use_nonce(c, nonce)
    if await c.root_key_erased(new.root_key):
        raise Gone("this account was erased; register with new keys", code="erased")
    if await c.root_key_registered(new.root_key):
        raise Conflict("this patient is already registered", code="already_registered")
    await _new_device_key(c, new.device, new.device_sign_key)
    if await c.recovery_key_owner(new.recovery.auth_key) is not None:
        raise Conflict("this recovery key is already registered", code="already_registered")
    if invite_hash is not None and not await c.use_invite(invite_hash, now):
        raise Forbidden("unknown or already used invitation code", code="bad_invite")
    await c.add_patient(new.patient, new.root_key, now)
    await c.add_identity(new.patient, 1, new.identity)
    await c.add_device(new.device, new.patient, new.device_sign_key, new.device_cert, new.keyring, now)
    await _put_recovery(c, new.patient, new.recovery)


async def _enrol_device(c: Conn, patient: str, signer: str | None, epoch: int, device: str, sign_key: bytes,
                        cert: bytes, keyring: bytes, nonce: Nonce, now: int, max_devices: int,
                        recovery_key: bytes | None) -> None:
    await _use_nonce(c, nonce)
    await _current_epoch(c, patient, signer, epoch, recovery_key)
    await _new_device_key(c, device, sign_key)
    pa.check_enrolment(len(await c.active_devices(patient)), max_devices)
    await c.add_device(device, patient, sign_key, cert, keyring, now)


async def _rotate_identity(c: Conn, patient: str, signer: str | None, epoch: int, identity: bytes,
                           devices: dict[str, tuple[bytes, bytes]], added: dict[str, tuple[bytes, bytes, bytes]],
                           recovery: Recovery, manifest: tuple[int, bytes], nonce: Nonce, now: int,
                           recovery_key: bytes | None) -> list[str]:
    await _use_nonce(c, nonce)
    state = await _current_epoch(c, patient, signer, epoch - 1, recovery_key)
    revoked = pa.plan_rotation(await c.active_devices(patient), devices, signer, counter=state.counter,
                               manifest_counter=manifest[0])
    await c.set_manifest(patient, manifest[0], manifest[1])
    for device, (sign_key, cert, keyring) in added.items():
        await _new_device_key(c, device, sign_key)
        await c.add_device(device, patient, sign_key, cert, keyring, now)
    await c.set_epoch(patient, epoch)
    await c.add_identity(patient, epoch, identity)
    await c.revoke_devices(revoked, now, identity)
    await c.recertify_devices(devices)
    await _put_recovery(c, patient, recovery)
    return revoked


async def _commit(c: Conn, patient: str, signer: str, counter: int, manifest: bytes, puts: list[StoredRecord],
                  deletes: list[tuple[str, int]], quota: Quota, nonce: Nonce, epoch: int, base: int | None) -> int:
    await _use_nonce(c, nonce)
    s = await _signer(c, patient, signer)
    ids = [p.id for p in puts] + [rid for rid, _ in deletes]
    stored = {rid: pa.Stored(version, size) for rid, (version, size) in (await c.record_versions(patient, ids)).items()}
    plan = pa.plan_commit(pa.VaultTotals(s.counter, s.records, s.bytes, s.epoch), stored, counter=counter, base=base,
                          epoch=epoch, puts=[(p.id, p.version, len(p.blob)) for p in puts], deletes=deletes,
                          max_records=quota.max_records, max_bytes=quota.max_bytes)
    blobs = {p.id: p for p in puts}
    if plan.inserts:  # a statement only for what the commit does (a record write: one insert)
        await c.add_records(patient, [blobs[rid] for rid in plan.inserts])
    if plan.replaces:
        await c.replace_records(patient, [blobs[rid] for rid in plan.replaces])
    if plan.deletes:
        await c.delete_records(patient, plan.deletes)
    t = plan.totals
    await c.set_vault(patient, t.counter, manifest, t.records, t.bytes)
    return t.counter


async def _vault(c: Conn, patient: str, device: str | None) -> Vault:
    await _signer(c, patient, device)
    return Vault(await c.manifest(patient), tuple(await c.records(patient)))


async def _erase_patient(c: Conn, patient: str, signer: str, tombstone: bytes, nonce: Nonce, now: int) -> None:
    await _use_nonce(c, nonce)
    await _signer(c, patient, signer)
    await _erase(c, patient, tombstone, now)


async def _set_suspended(c: Conn, patient: str, since: int | None, reason: str | None, log: OperatorEntry) -> bool:
    current = await _account_exists(c, patient)
    if (current is None) == (since is None):
        return False
    await c.set_suspended(patient, since, reason)
    await c.log_operator(log)
    return True


async def _operator_erase(c: Conn, patient: str, tombstone: bytes, now: int, log: OperatorEntry) -> None:
    await _account_exists(c, patient)
    await c.log_operator(log)
    await _erase(c, patient, tombstone, now)


async def _remove_community(c: Conn, community_id: str, host: str, log: OperatorEntry) -> bool:
    if not await c.remove_community(community_id, host):
        return False
    await c.log_operator(log)
    return True


async def _peer_and_block(c: Conn, node_id: str, candidates: list[str]):
    peer = await c.peer(node_id)
    return peer, pbl.effective(_block(r) for r in await c.domain_blocks(candidates))


def _block(row) -> pbl.DomainBlock:
    domain, severity, media, reports, comment, obfuscate = row
    return pbl.DomainBlock(domain, severity, bool(media), bool(reports), comment, bool(obfuscate))


async def _put_domain_blocks(c: Conn, rows: list, now: int, log: OperatorEntry | None) -> None:
    await c.put_domain_blocks(rows, now)
    if log is not None:
        await c.log_operator(log)


async def _delete_domain_block(c: Conn, domain: str, log: OperatorEntry | None) -> bool:
    found = await c.delete_domain_block(domain)
    if found and log is not None:
        await c.log_operator(log)
    return found


async def _put_ban_entries(c: Conn, rows: list, now: int, log: OperatorEntry | None) -> None:
    await c.put_ban_hashes(rows, now)
    if log is not None:
        await c.log_operator(log)


async def _delete_ban_entry(c: Conn, hash_: str, log: OperatorEntry | None) -> bool:
    found = await c.delete_ban_hash(hash_)
    if found and log is not None:
        await c.log_operator(log)
    return found
async def _issue_credentials(c: Conn, list_id: str, draw: Callable[[set[int]], int],
                             make: Callable[[int], IssuedCredential], log: Callable[[IssuedCredential], OperatorEntry]
                             ) -> IssuedCredential:
    """Draw a free status index of ``list_id`` (``draw(taken)``), record the issuance ``make``
    builds for it, and log it: the index can never be handed out twice."""
    taken = set(await c.status_indexes(list_id))
    index = draw(taken)
    if index in taken:
        raise Conflict(f"status index {index} of list {list_id} is taken", code="status_index_taken")
    issued = make(index)
    await c.add_issued_credential(issued)
    await c.log_operator(log(issued))
    return issued


async def _revoke_credential(c: Conn, credential_id: str, when: int, reason: str | None, log: OperatorEntry) -> bool:
    """Set the status bit of an issuance (NotFound for none); False (nothing logged) when it
    was already revoked: a revocation is never undone."""
    if await c.issued_credential(credential_id) is None:
        raise NotFound(f"this node issued no credential {credential_id!r}", code="unknown_credential")
    if not await c.revoke_issued_credential(credential_id, when, reason):
        return False
    await c.log_operator(log)
    return True


async def _set_peer_policy(c: Conn, node_id: str, policy: str, url: str | None, fingerprint: str | None) -> None:
    await c.ensure_peer(node_id)
    await c.set_peer_policy(node_id, policy, url, fingerprint)


async def _save_peer_document(c: Conn, node_id: str, document: bytes, fetched: int, trusted_keys: bytes) -> None:
    await c.ensure_peer(node_id)
    await c.save_peer_document(node_id, document, fetched, trusted_keys)


async def _peer_delivery(c: Conn, node_id: str, ok: bool, now: int, error: str | None,
                         breaker_until: int | None) -> int:
    await c.ensure_peer(node_id)
    if ok:
        await c.peer_delivered(node_id, now)
        return 0
    return await c.peer_failed(node_id, error, breaker_until)


async def _next_transaction(c: Conn, destination: str, max_events: int, now: int, dead_after: int,
                            exclude: list[str], may_die: Callable[[bytes], bool]) -> OutboundTransaction | None:
    cutoff = now - dead_after
    # Whole transactions expire together, so a dead transaction never half-arrives; one
    # holding an event that may not die (part of a log) waits whole.
    for txn in await c.transactions_created_before(destination, cutoff):
        if txn not in exclude and all(may_die(e) for e in await c.transaction_events(txn)):
            await c.bury_transaction(txn, now, TOO_OLD)
    await c.bury_events([i for i, e in await c.unformed_events_before(destination, cutoff) if may_die(e)], now,
                        TOO_OLD)
    pending = await c.oldest_transaction(destination, list(exclude))
    if pending is None:
        ids = await c.waiting_events(destination, now, max_events)
        if not ids:
            return None
        seq = await c.next_out_seq(destination)
        txn = secrets.token_urlsafe(18)
        await c.form_transaction(txn, destination, seq, now, ids)
        return OutboundTransaction(txn, destination, seq, tuple(await c.transaction_events(txn)), 0, now, 0)
    return OutboundTransaction(pending.txn, destination, pending.seq, tuple(await c.transaction_events(pending.txn)),
                               pending.attempts, pending.created, pending.next_attempt_ms)


async def _apply_inbound(c: Conn, origin: str, txn_id: str, seq: int, results: bytes,
                         communities: list[tuple[CommunityRow, list[CommunityEvent]]],
                         outbox: list[tuple[str, bytes]], nonce: Nonce, now: int) -> Inbound:
    stored = await c.inbound(origin, txn_id)
    if stored is not None:
        return stored
    await _use_nonce(c, nonce)
    for community, events in communities:
        await _write_community(c, community, events)
    await c.enqueue(outbox, now)
    contiguous, seen = await c.inbound_sequence(origin)
    contiguous, seen, missing = track_sequence(contiguous, set(seen), seq)
    await c.set_inbound_sequence(origin, contiguous, sorted(seen)[-SEEN_WINDOW:])
    reply = Inbound(results, tuple(missing))
    await c.add_inbound(origin, txn_id, seq, reply, now)
    return reply


async def _append_community_events(c: Conn, community: CommunityRow, events: list[CommunityEvent],
                                   outbox: list[tuple[str, bytes]], now: int, nonce: Nonce | None,
                                   patient: str | None, signer: str | None) -> None:
    if nonce is not None:
        await _use_nonce(c, nonce)
    if signer is not None:
        await _signer(c, patient, signer)
    if events:
        pcm.check_append(await c.last_event_seq(community.id, community.host), events[0].seq)
    await _write_community(c, community, events)
    await c.enqueue(outbox, now)


async def _relay(c: Conn, destination: str, event: bytes, now: int, nonce: Nonce, patient: str,
                 signer: str | None) -> None:
    await _use_nonce(c, nonce)
    await _signer(c, patient, signer)
    await c.enqueue([(destination, event)], now)


async def _add_grant(c: Conn, grant: GrantRow, tokens: list[TokenRow], signer: str, audit: list[dict], nonce: Nonce,
                     now: int) -> None:
    await _use_nonce(c, nonce)
    await _signer(c, grant.patient, signer)
    if not await c.add_grant(grant, tokens):
        raise Conflict("that grant or token id is taken", code="duplicate_grant")
    await _audit(c, grant.patient, audit, now)


async def _mark_shared(c: Conn, token: str, patient: str, signer: str, delivery: str, seq: int,
                       outbox: list[tuple[str, bytes]], audit: list[dict], nonce: Nonce, now: int,
                       not_before: int) -> None:
    await _use_nonce(c, nonce)
    await _signer(c, patient, signer)
    state = await c.token_share_state(token, patient)
    if state is None:
        raise Gone("unknown grant token", code="unknown_grant")
    check_share(revoked=state[0], last_seq=state[1], seq=seq)
    await c.set_token_shared(token, now, seq)
    if not await c.add_delivery(token, delivery, now):
        raise Conflict("that delivery id was used before", code="duplicate_delivery")
    await c.enqueue(outbox, now, not_before)
    await _audit(c, patient, audit, now)


async def _revoke_grant(c: Conn, patient: str, grant_id: str, signer: str, revocation: bytes,
                        token_revocations: dict[str, bytes], outbox: list[tuple[str, bytes]], audit: list[dict],
                        nonce: Nonce, now: int, not_before: dict[str, int] | None) -> None:
    await _use_nonce(c, nonce)
    await _signer(c, patient, signer)
    if not await c.revoke_grant(grant_id, patient, now, revocation):
        raise Gone("no live grant with that id", code="unknown_grant")
    await c.set_token_revocations(grant_id, token_revocations)
    for item in outbox:
        await c.enqueue([item], now, (not_before or {}).get(item[0], 0))
    await _audit(c, patient, audit, now)


async def _token_acknowledged(c: Conn, token: str, node: str, ack: bytes, audit: list[dict], now: int) -> bool:
    patient = await c.unacknowledged_revoked_token(token, node)
    if patient is None:
        return False
    await c.set_token_acknowledged(token, now, ack)
    await _audit(c, patient, audit, now)
    return True


async def _delivery_used(c: Conn, token: str, node: str, delivery: str, entries: list[dict], now: int) -> bool:
    patient = await c.unused_delivery(token, node, delivery)
    if patient is None:
        return False
    await c.set_delivery_used(token, delivery, now)
    if entries:
        await _audit(c, patient, entries, now)
    return True


async def _receive_signals(c: Conn, token: ReceivedToken, delivery: str, signals: list[tuple[str, bytes]],
                           seq: int) -> TokenOutcome:
    await _insert_received(c, token)
    outcome = on_delivery(ReceivedState(*await c.received_state(token.token)), delivery, seq)
    if outcome is TokenOutcome.NEW:
        await c.replace_received_signals(token.token, signals)
        await c.set_received_delivery(token.token, delivery, seq)
    return outcome


async def _revoke_received(c: Conn, token: ReceivedToken, revocation: bytes | None, now: int) -> bool:
    await _insert_received(c, token)
    held = await c.delete_received_signals(token.token)
    await c.set_received_revoked(token.token, now, revocation)
    if held:
        c.scrub()
    return bool(held)


async def _expire_received(c: Conn, now: int) -> list[ReceivedToken]:
    expired = await c.ended_received(now)
    for t in expired:
        await c.delete_received_signals(t.token)
    # A day after its end a token is forgotten: a delivery under it is refused anyway.
    await c.forget_received(now - 86400)
    if expired:
        c.scrub()
    return expired


async def _open_matching_session(c: Conn, session: MatchingSession, per_day: int, nonce: Nonce | None) -> None:
    if nonce is not None:
        await _use_nonce(c, nonce)
    started, open_now = await c.matching_sessions_since(session.peer, session.role, session.started - 86400)
    if open_now >= 1:
        raise RateLimited(f"{session.peer} has a matching session open with this node already", retry_after=60)
    if started >= per_day:
        raise RateLimited(f"{session.peer} had its {per_day} matching sessions with this node today", retry_after=3600)
    if not await c.add_matching_session(session):
        raise Conflict("a matching session with that id exists", code="psi_wrong_session")


async def _advance_matching_session(c: Conn, session_id: str, role: str, step: int, state: bytes,
                                    nonce: Nonce | None) -> None:
    if nonce is not None:
        await _use_nonce(c, nonce)
    if not await c.advance_matching_session(session_id, role, step, state):
        raise Conflict("the matching session moved on", code="psi_out_of_order")


async def _finish_matching_session(c: Conn, session: MatchingSession, counts: dict[str, int] | None,
                                   nonce: Nonce | None) -> None:
    if nonce is not None:
        await _use_nonce(c, nonce)
    if not await c.finish_matching_session(session):
        raise Conflict("the matching session has ended", code="psi_out_of_order")
    if counts is not None:
        await c.replace_matching_common(session.peer, counts, session.finished)


async def _expire_matching_sessions(c: Conn, before: int, now: int) -> int:
    stale = await c.stale_matching_sessions(before)
    for s in stale:
        await c.finish_matching_session(attrs.evolve(s, finished=now, outcome="failed:expired", state=None))
    return len(stale)

# -- insights (plugins/insights.py) --------------------------------------------------------


async def _insights_ledger(c: Conn, lock: bool) -> prl.Ledger:
    """The ledger as it stands. With ``lock``, the budget's meta row is written first, so a
    concurrent release (another worker process, PostgreSQL) waits for this transaction."""
    budget = await c.get_meta(INSIGHTS_BUDGET) or DEFAULT_INSIGHTS_BUDGET
    if lock:
        await c.set_meta(INSIGHTS_BUDGET, budget)
    entries = tuple(prl.LedgerEntry(r, p, prl.epsilon_of(e), at) for r, _, p, e, at in await c.insight_ledger(None))
    return prl.Ledger(prl.epsilon_of(budget, "budget"), entries)


async def _set_insights_budget(c: Conn, budget: str) -> None:
    await c.set_meta(INSIGHTS_BUDGET, prl.epsilon_text(prl.epsilon_of(budget, "budget")))


async def _charge_and_count(c: Conn, release: str, schema: prl.TableSchema, category: str, period: str,
                            epsilon: str, nodes: int, now: int) -> tuple[int, ...]:
    """Charge ``epsilon`` for ``release`` (Forbidden ``budget_exhausted`` when the period's
    budget does not cover it), log the release in the audit of every patient whose records
    go into it (once per grant), and return the bounded true counts: for noise, in the same
    transaction, never to be kept or sent as they are."""
    ledger = await _insights_ledger(c, lock=True)
    plan = prl.plan_release(ledger, epsilon, period, release=release, at=now)
    if not plan.allowed:
        raise Forbidden(plan.reason, code=plan.code)
    eps = prl.epsilon_text(prl.epsilon_of(epsilon))
    await c.add_insight_charge(release, schema.name, period, eps, now)
    rows = await c.insight_records(period)
    # Bounded per patient, not per pseudonym: a patient's grants to the plugin may carry
    # several (one made before an identity rotation, one after), and each is this node's
    # own patient's, so the grant's account says whose records they are.
    owners = await c.grants_of_tokens(sorted({token for _, _, _, token, _ in rows}))  # token -> (grant, patient)

    def whose(subject: str, token: str) -> str:
        owner = owners.get(token)
        return "patient|" + owner[1] if owner is not None else "subject|" + subject

    tokens: dict[tuple[str, str], set[str]] = {}
    for subject, kind, group, token, _ in rows:
        tokens.setdefault((whose(subject, token), kind + "|" + group), set()).add(token)
    # the bodies are this node's own canonical JSON (plugins/insights.py wrote them): the
    # standard parser reads them, without the checks untrusted input gets
    found, used = pin.contributions(category, period, [(whose(s, t), k, g, json.loads(b)) for s, k, g, t, b in rows])
    # the audit of every patient whose records go into the release, once per grant, in one batch
    went = {token for who, keys in used.items() for key in keys for token in tokens.get((who, key), ())}
    grants = sorted({owners[t] for t in went if t in owners})  # (grant, patient), this node's own
    heads = await c.audit_heads(sorted({p for _, p in grants}))
    appended: list[tuple[str, AuditRow]] = []
    for grant_id, patient in grants:
        (entry,) = audit_append(heads.get(patient), [{"event": "released", "grant": grant_id, "release": release,
                                                      "table": schema.name, "period": period, "epsilon": eps,
                                                      "nodes": nodes}], now)
        heads[patient] = (entry.seq, entry.hash)
        appended.append((patient, AuditRow(entry.seq, entry.entry, entry.hash)))
    await c.add_audit_rows(appended)
    return prl.bound_contributions(schema, period, found).counts


async def _release_insights(c: Conn, release: str, schema: prl.TableSchema, category: str, period: str,
                            epsilon: str, now: int, rng) -> prl.ReleasedTable:
    counts = await _charge_and_count(c, release, schema, category, period, epsilon, 1, now)
    noise = prl.noise_share(schema, epsilon, 1, rng)
    table = prl.publish(schema, period, [n + x for n, x in zip(counts, noise)], epsilon=epsilon, nodes=1, computed=now)
    await c.add_insight_release(release, schema.name, category, period, now, canonical(table.to_json()))
    return table


#: How many message digests a round's row remembers (a round has a few messages per node).
_SEEN = 256


async def _insights_start(c: Conn, row: tuple, outbox: list[tuple[str, bytes]], now: int, table: str | None) -> None:
    """Keep a new round (this node its aggregator) and queue its invitations, unless a round
    of its category and period is running here already or its table was charged for the
    period: checked under the ledger's lock, so two starts at once (every worker process's
    monthly check on the same tick) make one round, not two that split the nodes between
    them and charge every node's budget for nothing."""
    _, _, _, category, period = row[:5]
    await _insights_ledger(c, lock=True)
    if table is not None and await c.insight_charged(table, period):
        raise Forbidden(f"{table} was released for {period} already: one round per table and period",
                        code="beyond_schedule")
    if any(r[3] == category and r[4] == period and r[6] != "abandoned" for r in await c.insight_rounds("aggregator")):
        raise Forbidden(f"a round of {category} for {period} is running already: one round per table and period",
                        code="beyond_schedule")
    if not await c.add_insight_round(row):
        raise Conflict("this round exists already", code="aggregation_replay")
    await c.enqueue(outbox, now)


async def _insights_join(c: Conn, row: tuple, schema: prl.TableSchema, threshold: int, epsilon: str, nodes: int,
                         make: Callable, outbox_to: str | None, now: int, rng) -> tuple[bytes, bytes]:
    """Join a round as a participant: refused beyond the schedule (one round per table and
    period), charged, counted, noised with this node's share; the participant's state kept
    and its advert queued for the aggregator (unless this node is the aggregator), at once."""
    round_id, _, release, category, period = row[:5]
    if await c.insight_round(round_id, "participant") is not None:
        raise Conflict("this node joined that round already", code="aggregation_replay")
    if await c.insight_charged(schema.name, period):
        raise Forbidden(f"{schema.name} was released for {period} already: one round per table and period",
                        code="beyond_schedule")
    counts = await _charge_and_count(c, release, schema, category, period, epsilon, nodes, now)
    noise = prl.noise_share(schema, epsilon, threshold, rng)
    state, advert = make([n + x for n, x in zip(counts, noise)])
    await c.add_insight_round((*row[:6], "advertise", state, "[]", now))
    if outbox_to is not None:
        await c.enqueue([(outbox_to, advert)], now)
    return state, advert


async def _insights_step(c: Conn, round_id: str, role: str, digest: str | None, step: Callable, me: str,
                         now: int) -> list[tuple[str, bytes]]:
    """One message (or a deadline, ``digest`` None) into a round's state, at once: the state
    read under its row lock, ``step(row)`` (pure) giving the new state, the messages out
    (queued here, except those to this node, returned) and a table to publish, or None for
    nothing to do. A message seen before changes nothing."""
    if not await c.lock_insight_round(round_id, role):
        raise NotFound("no such round here", code="unknown_round")
    row = await c.insight_round(round_id, role)
    seen = loads(row[8].encode())
    if digest is not None and digest in seen:
        return []
    result = step(row)
    if result is None:  # nothing to do on the row as it stands (a deadline no longer due)
        return []
    if digest is not None:
        seen = (seen + [digest])[-_SEEN:]
    await c.set_insight_round(round_id, role, result["phase"], result["state"], canonical(seen).decode(), now)
    away = [(node, data) for node, data in result["out"] if node != me]
    if away:
        await c.enqueue(away, now)
    published = result.get("publish")
    if published is not None and not await c.has_insight_release(published[0]):
        await c.add_insight_release(*published)
    return [(node, data) for node, data in result["out"] if node == me]


async def _insights_published(c: Conn, round_id: str, origin: str, table: dict, body: bytes, now: int) -> bool:
    """Keep a round's published table, from its aggregator, on a node that took part."""
    row = await c.insight_round(round_id, "participant")
    if row is None or row[5] != origin:
        raise Forbidden("no round of that aggregator's here", code="unknown_round")
    if row[6] != "done":
        raise Forbidden("this node did not reveal its masks in that round", code="aggregation_refused")
    if table.get("period") != row[4]:
        raise Forbidden("the table is for another period", code="aggregation_refused")
    if await c.has_insight_release(row[2]):
        return False
    await c.add_insight_release(row[2], table["table"], row[3], row[4], now, body)
    return True


class Store:
    """One node's persistent state over a :class:`~rxfed.store.Backend`. All methods are
    coroutines; all writes are durable before they return.

    What a backend offers beyond the interface (the SQLite engine's commit statistics and
    write health, its file ``path``) is reached through the store as well."""

    def __init__(self, backend: Backend):
        self.backend = backend

    def __getattr__(self, name: str) -> Any:
        if name == "backend":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.backend, name)

    def __repr__(self) -> str:
        return f"Store({self.backend!r})"

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def migrate(self) -> bool:
        """Set before :meth:`open` to upgrade a database with an older schema (``rxfed node
        migrate``); without it such a database is refused, so that no other command
        migrates it silently. A new, empty database is always created at the newest schema."""
        return self.backend.migrate

    @migrate.setter
    def migrate(self, value: bool) -> None:
        self.backend.migrate = value

    async def open(self) -> None:
        await self.backend.open()

    async def close(self) -> None:
        await self.backend.close()

    def schema(self) -> tuple[int | None, int]:
        """(the stored schema version, None when nothing is stored yet; the code's version)."""
        return self.backend.schema()

    async def backup_to(self, dest: Path, *, meta: dict[str, str] | None = None) -> int:
        """Write a consistent copy of the whole store to the new file ``dest`` (mode 0600)
        while the node may be serving, with ``meta`` rows set in the copy; returns the
        copy's schema version. Backends whose database has its own tools refuse."""
        return await self.backend.backup_to(dest, meta=meta)

    # -- node ------------------------------------------------------------------------------
    async def get_meta(self, key: str) -> str | None:
        return await self.backend.read(methodcaller("get_meta", key))

    async def set_meta(self, key: str, value: str) -> None:
        await self.backend.write(methodcaller("set_meta", key, value))

    async def add_invites(self, code_hashes: list[bytes], now: int) -> None:
        await self.backend.write(methodcaller("add_invites", code_hashes, now))

    async def open_invites(self) -> int:
        """How many invitation codes are still unused."""
        return await self.backend.read(methodcaller("open_invites"))

    async def load_nonces(self, now: int) -> list[Nonce]:
        """Nonces still inside their window, so a restarted node keeps refusing replays."""
        return await self.backend.read(methodcaller("load_nonces", now))

    async def prune_nonces(self, now: int) -> int:
        return await self.backend.write(methodcaller("prune_nonces", now), heavy=True)

    # -- state shared by several worker processes (`node run --workers N`) -----------------
    async def spend(self, nonce: Nonce, key: bytes | None = None, *, now: float, rate: float = 1.0,
                    burst: int = 1) -> Nonce:
        """Store a request's nonce (:class:`Replayed` if stored already) and, with ``key``,
        spend one request of that signer's budget (:class:`RateLimited`, and the nonce is
        not stored, when it has none left), in one transaction. Returns the nonce marked
        claimed, so the request's write does not store it again."""
        await self.backend.write(_spend, nonce, key, now, rate, burst)
        return Nonce(nonce.value, nonce.expires, True)

    async def prune_budgets(self, before: float) -> int:
        """Forget budgets last spent before ``before`` (full again by now)."""
        return await self.backend.write(methodcaller("prune_budgets", before), heavy=True)

    async def take_lease(self, destination: str, holder: str, *, now: int, seconds: int) -> bool:
        """Whether ``holder`` holds the destination's outbox lease for ``seconds`` from now
        (taken, renewed, or taken over from a holder that let it lapse)."""
        return await self.backend.write(methodcaller("take_lease", destination, holder, now, now + seconds))

    async def drop_lease(self, destination: str, holder: str) -> None:
        await self.backend.write(methodcaller("drop_lease", destination, holder))

    # -- patients --------------------------------------------------------------------------
    async def register_patient(self, new: NewPatient, *, invite_hash: bytes | None, nonce: Nonce, now: int) -> None:
        """Create a patient with one device. With ``invite_hash``, consume that unused
        invitation in the same transaction (Forbidden if unknown or used). Conflict if the
        root or device key is registered; Gone if the patient erased their account."""
        await self.backend.write(_register_patient, new, invite_hash, nonce, now)

    async def auth_key(self, key: bytes) -> AuthKey | None:
        return await self.backend.read(methodcaller("auth_key", key))

    async def account(self, patient: str) -> Account | None:
        return await self.backend.read(methodcaller("account", patient))

    async def devices(self, patient: str) -> list[Device]:
        return await self.backend.read(methodcaller("devices", patient))

    async def identity_chain(self, patient: str) -> list[bytes]:
        """The patient's identity statements, epoch 1 first (empty for an unknown patient)."""
        return await self.backend.read(methodcaller("identity_chain", patient))

    async def enrol_device(self, patient: str, *, signer: str | None, epoch: int, device: str, sign_key: bytes,
                           cert: bytes, keyring: bytes, nonce: Nonce, now: int, max_devices: int,
                           recovery_key: bytes | None = None) -> None:
        """Add a device certified at identity ``epoch``, which must be the current one
        (Conflict ``stale_identity``). ``signer`` is the enrolling device, which must be
        active; with ``recovery_key`` instead, that must be the patient's current recovery
        key. Forbidden ``too_many_devices`` past ``max_devices`` active devices; Conflict if
        the key is any device's or any recovery key."""
        await self.backend.write(_enrol_device, patient, signer, epoch, device, sign_key, cert, keyring, nonce, now,
                                 max_devices, recovery_key)

    async def rotate_identity(self, patient: str, *, signer: str | None, epoch: int, identity: bytes,
                              devices: dict[str, tuple[bytes, bytes]], added: dict[str, tuple[bytes, bytes, bytes]],
                              recovery: Recovery, manifest: tuple[int, bytes], nonce: Nonce, now: int,
                              recovery_key: bytes | None = None) -> list[str]:
        """Start identity ``epoch`` (the current one plus one, Conflict ``stale_identity``
        otherwise): store its statement, replace the certificate and keyring of every device
        in ``devices`` (device -> (cert, keyring); each must be active), add the devices in
        ``added`` (device -> (sign key, cert, keyring)), revoke every other active device,
        replace the recovery material, and re-sign the vault with ``manifest`` (counter,
        statement; the counter must follow the stored one). ``signer``, if a device, must be
        active and kept; with ``recovery_key`` instead, that must be the current recovery
        key. Returns the revoked devices."""
        return await self.backend.write(_rotate_identity, patient, signer, epoch, identity, devices, added, recovery,
                                        manifest, nonce, now, recovery_key)

    async def recovery(self, patient: str) -> Recovery | None:
        return await self.backend.read(methodcaller("recovery", patient))

    async def recovery_by_key(self, auth_key: bytes) -> tuple[str, bytes, Recovery] | None:
        """(patient, root key, recovery) for a recovery auth key."""
        return await self.backend.read(methodcaller("recovery_by_key", auth_key))

    async def check_signer(self, patient: str, device: str | None) -> None:
        """Raise Unauthorized unless the patient exists and ``device`` (if given) is one of
        their devices that is not revoked."""
        await self.backend.read(_signer, patient, device)

    # -- vault -----------------------------------------------------------------------------
    async def commit(self, patient: str, *, signer: str, counter: int, manifest: bytes,
                     puts: list[StoredRecord], deletes: list[tuple[str, int]], quota: Quota,
                     nonce: Nonce, epoch: int, base: int | None = None) -> int:
        """Apply one vault change atomically, as :func:`rxfed.protocol.account.plan_commit`
        plans it: ``epoch`` must be the current one (Conflict ``stale_identity``), ``base``
        (by default ``counter`` minus one) the stored counter and ``counter`` above it; a
        put's version one more than the stored one (1 for a new record); a delete's version
        must match. Conflict on any mismatch, QuotaExceeded past the quota."""
        return await self.backend.write(_commit, patient, signer, counter, manifest, puts, deletes, quota, nonce,
                                        epoch, base)

    async def vault(self, patient: str, device: str | None) -> Vault:
        return await self.backend.read(_vault, patient, device)

    async def erase_patient(self, patient: str, *, signer: str, tombstone: bytes, nonce: Nonce, now: int) -> None:
        """Delete every record, device and key of the patient so that no byte of their
        ciphertext stays in the database files, and keep the signed tombstone."""
        await self.backend.write(_erase_patient, patient, signer, tombstone, nonce, now, heavy=True)

    async def tombstone(self, patient: str) -> bytes | None:
        return await self.backend.read(methodcaller("tombstone", patient))

    # -- operator actions --------------------------------------------------------------------
    async def accounts(self, now: int) -> list[AccountSummary]:
        """Every account, oldest first (grants live at ``now`` are counted)."""
        return await self.backend.read(methodcaller("accounts", now))

    async def suspended_accounts(self) -> set[str]:
        """The patients whose accounts are suspended (the node refuses their writes)."""
        return await self.backend.read(methodcaller("suspended_accounts"))

    async def set_suspended(self, patient: str, *, since: int | None, reason: str | None,
                            log: OperatorEntry) -> bool:
        """Suspend (``since``: when) or unsuspend (None) an account and log it, at once.
        NotFound for an unknown account; False (nothing logged) when already so."""
        return await self.backend.write(_set_suspended, patient, since, reason, log)

    async def operator_erase(self, patient: str, *, tombstone: bytes, now: int, log: OperatorEntry) -> None:
        """Erase an account as :meth:`erase_patient` does, on the operator's word (no
        device signs it; ``tombstone`` is the node's statement), and log it. NotFound for an
        unknown account."""
        await self.backend.write(_operator_erase, patient, tombstone, now, log, heavy=True)

    async def remove_community(self, community_id: str, host: str, *, log: OperatorEntry) -> bool:
        """Delete this node's copy of a community (events, readers, row) and log it; False
        (nothing logged) when there is none."""
        return await self.backend.write(_remove_community, community_id, host, log, heavy=True)

    async def log_operator(self, entry: OperatorEntry) -> None:
        await self.backend.write(methodcaller("log_operator", entry))

    async def operator_log(self, limit: int = 1000) -> list[OperatorEntry]:
        """The newest ``limit`` entries of the operator log, oldest first."""
        return await self.backend.read(methodcaller("operator_log", limit))

    # -- operators' block lists ---------------------------------------------------------------
    async def domain_blocks(self) -> list[pbl.DomainBlock]:
        return [_block(r) for r in await self.backend.read(methodcaller("domain_blocks"))]

    async def block_for(self, node_id: str) -> pbl.Effective | None:
        """What the instance blocks that cover ``node_id`` add up to (its host and the host's
        parent domains: :func:`rxfed.protocol.blocklists.candidates`), None when none does."""
        rows = await self.backend.read(methodcaller("domain_blocks", pbl.candidates(node_id)))
        return pbl.effective(_block(r) for r in rows)

    async def peer_and_block(self, node_id: str) -> tuple[Peer | None, pbl.Effective | None]:
        """:meth:`peer` and :meth:`block_for` in one read (the federation's checks of every
        transaction need both)."""
        return await self.backend.read(_peer_and_block, node_id, pbl.candidates(node_id))

    async def put_domain_blocks(self, blocks: list[pbl.DomainBlock], *, now: int,
                                log: OperatorEntry | None = None) -> None:
        """Add or replace ``blocks`` in one transaction (an import lands whole or not at all)."""
        await self.backend.write(_put_domain_blocks, [(b.domain, b.severity, b.reject_media, b.reject_reports,
                                                      b.public_comment, b.obfuscate) for b in blocks], now, log)

    async def delete_domain_block(self, domain: str, *, log: OperatorEntry | None = None) -> bool:
        return await self.backend.write(_delete_domain_block, domain, log)

    async def ban_entries(self) -> list[pbl.BanEntry]:
        return [pbl.BanEntry(h, r) for h, r in await self.backend.read(methodcaller("ban_hashes"))]

    async def banned(self, hashes: list[str]) -> list[str]:
        """Which of ``hashes`` (see :func:`rxfed.protocol.blocklists.ban_hash`) are banned."""
        return [h for h, _r in await self.backend.read(methodcaller("ban_hashes", hashes))]

    async def put_ban_entries(self, entries: list[pbl.BanEntry], *, now: int, log: OperatorEntry | None = None) -> None:
        await self.backend.write(_put_ban_entries, [(e.hash, e.reason) for e in entries], now, log)

    async def delete_ban_entry(self, hash_: str, *, log: OperatorEntry | None = None) -> bool:
        return await self.backend.write(_delete_ban_entry, hash_, log)

    async def keep_forwarded_report(self, row: dict) -> bool:
        """Keep a report a community's moderator forwarded to this node (keys as
        :meth:`forwarded_reports` gives them); False when it was kept already."""
        columns = ("id", "received", "community_id", "host", "seq", "sender", "category", "text", "sent",
                   "moderator", "origin")
        return await self.backend.write(methodcaller("put_forwarded_report", tuple(row[c] for c in columns)))

    async def forwarded_reports(self) -> list[dict]:
        columns = ("id", "received", "community_id", "host", "seq", "sender", "category", "text", "sent",
                   "moderator", "origin")
        return [dict(zip(columns, r)) for r in await self.backend.read(methodcaller("forwarded_reports"))]
    # -- clinician credentials ------------------------------------------------------------
    async def issue_credentials(self, list_id: str, *, draw: Callable[[set[int]], int],
                                make: Callable[[int], IssuedCredential],
                                log: Callable[[IssuedCredential], OperatorEntry]) -> IssuedCredential:
        """Record one issuance at a status index ``draw(taken indexes)`` picks (``make(index)``
        is the row; it signs the credentials, so nothing is signed for an index not kept)."""
        return await self.backend.write(_issue_credentials, list_id, draw, make, log)

    async def issued_credentials(self) -> list[IssuedCredential]:
        return await self.backend.read(methodcaller("issued_credentials"))

    async def revoke_credential(self, credential_id: str, *, when: int, reason: str | None,
                                log: OperatorEntry) -> bool:
        return await self.backend.write(_revoke_credential, credential_id, when, reason, log)

    async def status_list(self, list_id: str) -> tuple[list[int], list[int]]:
        """``(indexes issued, indexes revoked)`` of one status list."""
        async def read(c: Conn):
            return await c.status_indexes(list_id), await c.status_indexes(list_id, revoked_only=True)
        return await self.backend.read(read)

    # -- federation: peers -----------------------------------------------------------------
    async def peer(self, node_id: str) -> Peer | None:
        return await self.backend.read(methodcaller("peer", node_id))

    async def peers(self) -> list[Peer]:
        return await self.backend.read(methodcaller("peers"))

    async def set_peer_policy(self, node_id: str, policy: str, *, url: str | None = None,
                              fingerprint: str | None = None) -> None:
        """Record the operator's decision about a peer (creating the peer if unknown)."""
        await self.backend.write(_set_peer_policy, node_id, policy, url, fingerprint)

    async def save_peer_document(self, node_id: str, document: bytes, fetched: int, trusted_keys: bytes) -> None:
        """Keep a peer's key document as fetched, and the keys this node now trusts for it."""
        await self.backend.write(_save_peer_document, node_id, document, fetched, trusted_keys)

    async def forget_peer_keys(self, node_id: str) -> bool:
        """Forget the keys trusted for a peer and its document (the operator accepts a key
        change); the next document fetched counts as a first contact, or is checked against
        the pin. False when the peer is unknown."""
        return await self.backend.write(methodcaller("forget_peer_keys", node_id))

    async def peer_delivery(self, node_id: str, *, ok: bool, now: int, error: str | None = None,
                            breaker_until: int | None = None) -> int:
        """Record a delivery attempt; returns the number of consecutive failures."""
        return await self.backend.write(_peer_delivery, node_id, ok, now, error, breaker_until)

    async def peer_recovered(self, node_id: str, *, now: int) -> None:
        """The peer showed it is up (it sent an authenticated transaction): no failures, no
        open breaker, and every transaction waiting for it due at once."""
        await self.backend.write(methodcaller("peer_recovered", node_id))

    # -- federation: outbox ----------------------------------------------------------------
    async def enqueue(self, items: list[tuple[str, bytes]], now: int) -> None:
        """Queue (destination, event) pairs for delivery."""
        await self.backend.write(methodcaller("enqueue", items, now))

    async def next_transaction(self, destination: str, *, max_events: int, now: int, dead_after: int,
                               exclude: list[str] = (),
                               may_die: Callable[[bytes], bool] = lambda event: True) -> OutboundTransaction | None:
        """The transaction to send next: the oldest one sent but not acknowledged (same id,
        same events) and not in ``exclude`` (those in flight), or a new one formed from
        queued events with the next sequence number. Events queued longer than
        ``dead_after`` seconds become dead letters first, those ``may_die`` (the delivery
        policy's rule) lets die: a transaction dies whole, or waits whole."""
        return await self.backend.write(_next_transaction, destination, max_events, now, dead_after, list(exclude),
                                        may_die, heavy=True)  # it may bury many expired events

    async def transaction_delivered(self, txn_id: str) -> None:
        await self.backend.write(methodcaller("transaction_delivered", txn_id))

    async def transaction_failed(self, txn_id: str, *, error: str, next_attempt_ms: int) -> None:
        await self.backend.write(methodcaller("transaction_failed", txn_id, error, next_attempt_ms))

    async def reschedule_transactions(self, destination: str, *, next_attempt_ms: int) -> None:
        """Make every unacknowledged transaction to ``destination`` due at ``next_attempt_ms``
        (an open breaker holds them all until its cool-down ends)."""
        await self.backend.write(methodcaller("reschedule_transactions", destination, next_attempt_ms))

    async def due_destinations(self) -> list[tuple[str, int | None]]:
        """Destinations with something to send, with the time (ms) of their next attempt."""
        return await self.backend.read(methodcaller("due_destinations"))

    async def outbox_summary(self) -> list[OutboxSummary]:
        return await self.backend.read(methodcaller("outbox_summary"))

    async def dead_letters(self, destination: str | None = None) -> list[DeadLetter]:
        return await self.backend.read(methodcaller("dead_letters", destination))

    async def replay_dead_letters(self, now: int, destination: str | None = None) -> int:
        """Queue dead letters again; returns how many."""
        return await self.backend.write(methodcaller("replay_dead_letters", now, destination), heavy=True)

    # -- federation: inbox -----------------------------------------------------------------
    async def inbox_reply(self, origin: str, txn_id: str) -> Inbound | None:
        """What :meth:`apply_inbound` kept of a transaction received before, or None."""
        return await self.backend.read(methodcaller("inbound", origin, txn_id))

    async def prune_inbox(self, before: int) -> int:
        """Forget received transactions (their stored replies) received before ``before``
        (Unix seconds); returns how many."""
        return await self.backend.write(methodcaller("prune_inbox", before), heavy=True)

    async def apply_inbound(self, origin: str, txn_id: str, seq: int, *, results: bytes,
                            communities: list[tuple[CommunityRow, list[CommunityEvent]]],
                            outbox: list[tuple[str, bytes]], nonce: Nonce, now: int) -> Inbound:
        """Apply one inbound transaction exactly once: community events (idempotent by
        community and sequence number), the events it queues onward, the sequence tracking
        of ``origin`` (:func:`rxfed.protocol.federation.track_sequence`), and what the node
        replies (``results``, opaque here, and the sequence numbers found missing), all in
        one store transaction. A transaction seen before returns what was kept and changes
        nothing; the node makes the reply from it."""
        return await self.backend.write(_apply_inbound, origin, txn_id, seq, results, communities, outbox, nonce, now)

    # -- communities -----------------------------------------------------------------------
    #
    # A community is keyed by its address, (id, host): a node's copy of one community never
    # mixes with events another node sends under the same id. No row names a patient.
    async def communities(self, *, hosted_by: str | None = None) -> list[CommunityRow]:
        return await self.backend.read(methodcaller("communities", hosted_by))

    async def community(self, community_id: str, host: str) -> CommunityRow | None:
        return await self.backend.read(methodcaller("community", community_id, host))

    async def community_events(self, community_id: str, host: str, *, after: int = 0,
                               limit: int = 1000) -> list[CommunityEvent]:
        return await self.backend.read(methodcaller("community_events", community_id, host, after, limit))

    async def community_reader(self, community_id: str, host: str, member: bytes) -> bool | None:
        """Whether ``member`` may read this node's copy of the community: True once its
        create or join is stored, False once its leave or removal is too, None when the key
        is unknown here (see :attr:`CommunityEvent.changes`)."""
        return await self.backend.read(methodcaller("member_state", community_id, host, member))

    async def append_community_events(self, community: CommunityRow, events: list[CommunityEvent], *,
                                      outbox: list[tuple[str, bytes]], now: int, nonce: Nonce | None = None,
                                      patient: str | None = None, signer: str | None = None) -> None:
        """Store events a local patient submitted (at the host: stamped and sequenced),
        queue their fan-out and persist the request nonce, at once. With ``signer`` (a
        device of ``patient``), refuse a revoked device or erased account."""
        await self.backend.write(_append_community_events, community, events, outbox, now, nonce, patient, signer)

    async def relay(self, destination: str, event: bytes, *, now: int, nonce: Nonce, patient: str,
                    signer: str | None = None) -> None:
        """Queue a local patient's event for a community hosted elsewhere (refused for a
        revoked ``signer`` device)."""
        await self.backend.write(_relay, destination, event, now, nonce, patient, signer)

    # -- consent: the home node's grants and audit log ------------------------------------
    async def add_grant(self, grant: GrantRow, tokens: list[TokenRow], *, signer: str, audit: list[dict],
                        nonce: Nonce, now: int) -> None:
        """Store a local patient's grant and its tokens and log it, at once (refused for a
        revoked ``signer`` device or an erased account)."""
        await self.backend.write(_add_grant, grant, tokens, signer, audit, nonce, now)

    async def grants(self, patient: str) -> list[tuple[GrantRow, list[TokenRow]]]:
        """A patient's grants, newest first, each with its tokens."""
        return await self.backend.read(methodcaller("grants", patient))

    async def grant_of_token(self, token: str) -> tuple[GrantRow, TokenRow] | None:
        return await self.backend.read(methodcaller("grant_of_token", token))

    async def mark_shared(self, token: str, *, patient: str, signer: str, delivery: str, seq: int,
                          outbox: list[tuple[str, bytes]], audit: list[dict], nonce: Nonce, now: int,
                          not_before: int = 0) -> None:
        """Record that the patient shared signals under ``token`` as ``delivery`` numbered
        ``seq`` (still live: refused with Gone once revoked; Conflict unless ``seq`` is above
        the token's last one), queue their delivery, to be sent no earlier than
        ``not_before``, and log it, at once."""
        await self.backend.write(_mark_shared, token, patient, signer, delivery, seq, outbox, audit, nonce, now,
                                 not_before)

    async def delivery_used(self, token: str, node: str, delivery: str, entries: list[dict], now: int) -> bool:
        """Log a recipient node's use of one recorded delivery, once: False (nothing logged)
        unless ``delivery`` was shared under ``token`` to ``node`` and not reported before."""
        return await self.backend.write(_delivery_used, token, node, delivery, entries, now)

    async def revoke_grant(self, patient: str, grant_id: str, *, signer: str, revocation: bytes,
                           token_revocations: dict[str, bytes], outbox: list[tuple[str, bytes]],
                           audit: list[dict], nonce: Nonce, now: int,
                           not_before: dict[str, int] | None = None) -> None:
        """Revoke a live grant and its tokens, queue the revocations and log it, at once;
        ``not_before`` holds each destination's revocation until that time."""
        await self.backend.write(_revoke_grant, patient, grant_id, signer, revocation, token_revocations, outbox,
                                 audit, nonce, now, not_before)

    async def token_acknowledged(self, token: str, node: str, *, ack: bytes, audit: list[dict], now: int) -> bool:
        """Keep ``node``'s signed acknowledgement of a revoked token (once; False when not a
        revoked token of ours sent to ``node``)."""
        return await self.backend.write(_token_acknowledged, token, node, ack, audit, now)

    async def audit(self, patient: str) -> list[AuditRow]:
        return await self.backend.read(methodcaller("audit", patient))

    # -- consent: signals received under tokens -------------------------------------------
    async def receive_signals(self, token: ReceivedToken, delivery: str, signals: list[tuple[str, bytes]], *,
                              seq: int = 0) -> TokenOutcome:
        """Keep ``signals`` under ``token``, replacing what it delivered before, as
        :func:`rxfed.consent.tokens.on_delivery` decides: returns its
        :class:`~rxfed.consent.tokens.TokenOutcome`. Forbidden when the token id is known
        from another origin or under another key."""
        return await self.backend.write(_receive_signals, token, delivery, signals, seq)

    async def revoke_received(self, token: ReceivedToken, revocation: bytes | None, now: int) -> bool:
        """Delete every signal received under ``token`` and remember it revoked (a later
        delivery under it is refused). True when it held signals."""
        return await self.backend.write(_revoke_received, token, revocation, now, heavy=True)

    async def received_token(self, token: str) -> ReceivedToken | None:
        return await self.backend.read(methodcaller("received_token", token))

    async def received_signals(self, token: str | None = None) -> list[tuple[str, str, bytes]]:
        """``(token, kind, body)`` of signals held (all tokens, or one)."""
        return await self.backend.read(methodcaller("received_signals", token))

    async def expire_received(self, now: int) -> list[ReceivedToken]:
        """Delete the signals of tokens whose grant ended; returns those tokens."""
        return await self.backend.write(_expire_received, now, heavy=True)

    # -- matching --------------------------------------------------------------------------
    async def matching_members(self, origin: str, kind: str, purpose: str, now: int) -> list[MatchingMember]:
        """The signals ``origin``'s (this node's) own patients sent it under live grants of
        ``kind`` for ``purpose``, with the patient each came from (a patient with several
        grants is one patient)."""
        return await self.backend.read(methodcaller("matching_members", origin, kind, purpose, now))

    async def matching_budget(self, peer: str, role: str, since: int) -> tuple[int, int]:
        """(sessions ``peer`` had with this node in ``role`` since ``since``, of them still open)."""
        return await self.backend.read(methodcaller("matching_sessions_since", peer, role, since))

    async def open_matching_session(self, session: MatchingSession, *, per_day: int, nonce: Nonce | None = None) -> None:
        """Log a new session (with its state when this node answers it). 429 when the peer
        has one open with us in that role already, or had ``per_day`` of them in the last 24
        hours; 409 ``psi_wrong_session`` for an id in use."""
        await self.backend.write(_open_matching_session, session, per_day, nonce)

    async def advance_matching_session(self, session_id: str, role: str, *, step: int, state: bytes,
                                       nonce: Nonce | None = None) -> None:
        """Keep an open session's next state; 409 ``psi_out_of_order`` unless it is still at ``step``."""
        await self.backend.write(_advance_matching_session, session_id, role, step, state, nonce)

    async def finish_matching_session(self, session: MatchingSession, *, counts: dict[str, int] | None = None,
                                      nonce: Nonce | None = None) -> None:
        """End a session as ``session`` says (its state deleted) and, after a match, keep the
        peer's stated counts of the common categories in place of the previous ones."""
        await self.backend.write(_finish_matching_session, session, counts, nonce)

    async def matching_session(self, session_id: str, role: str) -> MatchingSession | None:
        return await self.backend.read(methodcaller("matching_session", session_id, role))

    async def matching_sessions(self, limit: int = 1000) -> list[MatchingSession]:
        """The newest ``limit`` sessions, newest first, without their state."""
        return await self.backend.read(methodcaller("matching_sessions", limit))

    async def expire_matching_sessions(self, before: int, now: int) -> int:
        """End, as ``failed:expired``, every session still open that started before ``before``."""
        return await self.backend.write(_expire_matching_sessions, before, now)

    async def matching_common(self, categories: list[str] | None = None) -> list[tuple[str, str, int, int]]:
        """``(peer, category, count, updated)`` of the common categories each peer's last
        completed session found (those in ``categories``, or all)."""
        return await self.backend.read(methodcaller("matching_common", categories))

    async def claim_matching_run(self, peer: str, *, now_ms: int, next_ms: int) -> bool:
        return await self.backend.write(methodcaller("claim_matching_run", peer, now_ms, next_ms))
    # -- insights (plugins/insights.py) ----------------------------------------------------
    async def put_insight_records(self, token: str, period: str, records: list[tuple[str, str, str, bytes]]) -> None:
        """Hold the records of a token's latest delivery for ``period``
        (``(subject, kind, group, body)``), replacing what the token gave in that period."""
        await self.backend.write(methodcaller("replace_insight_records", token, period, records))

    async def drop_insight_records(self, token: str) -> int:
        """Forget every record a token gave, in every period (its grant was revoked)."""
        return await self.backend.write(methodcaller("delete_insight_records", token), heavy=True)

    async def insight_records(self, period: str) -> list[tuple[str, str, str, str, bytes]]:
        return await self.backend.read(methodcaller("insight_records", period))

    async def insights_ledger(self) -> prl.Ledger:
        """The privacy-budget ledger: the budget per period and every release charged."""
        return await self.backend.read(_insights_ledger, False)

    async def set_insights_budget(self, budget: str) -> None:
        """Set the epsilon each period allows (BadRequest unless an exact positive epsilon)."""
        await self.backend.write(_set_insights_budget, budget)

    async def release_insights(self, release: str, schema: prl.TableSchema, category: str, period: str,
                               epsilon: str, now: int, rng=None) -> prl.ReleasedTable:
        """Release ``category``'s table for ``period`` from the records this node holds, at
        once: charge ``epsilon`` to the ledger (Forbidden ``budget_exhausted`` when the
        period's budget does not cover it), count with each patient's influence bounded,
        add exact discrete Laplace noise, suppress small cells, keep the published table and
        log the release in the audit of every patient whose signals went into it."""
        return await self.backend.write(_release_insights, release, schema, category, period, epsilon, now, rng,
                                        heavy=True)

    async def insight_releases(self, category: str | None = None) -> list[tuple[str, str, str, str, int, bytes]]:
        """Published tables (of one category, or all), newest first."""
        return await self.backend.read(methodcaller("insight_releases", category))

    async def set_insights_schedule(self, category: str, body: bytes) -> None:
        await self.backend.write(methodcaller("set_insight_schedule", category, body))

    async def insights_schedule(self, category: str | None = None) -> list[tuple[str, bytes]]:
        return await self.backend.read(methodcaller("insight_schedule", category))

    async def start_insights_round(self, row: tuple, outbox: list[tuple[str, bytes]], now: int, *,
                                   table: str | None = None) -> None:
        """Keep a new round's aggregator state and queue its invitations, at once; Forbidden
        ``beyond_schedule`` when a round of its category and period runs here already, or
        ``table`` was charged for the period."""
        await self.backend.write(_insights_start, row, outbox, now, table)

    async def join_insights_round(self, row: tuple, schema: prl.TableSchema, threshold: int, epsilon: str,
                                  nodes: int, make: Callable, outbox_to: str | None, now: int,
                                  rng=None) -> tuple[bytes, bytes]:
        return await self.backend.write(_insights_join, row, schema, threshold, epsilon, nodes, make, outbox_to, now,
                                        rng, heavy=True)

    async def step_insights_round(self, round_id: str, role: str, digest: str | None, step: Callable, me: str,
                                  now: int) -> list[tuple[str, bytes]]:
        return await self.backend.write(_insights_step, round_id, role, digest, step, me, now)

    async def insights_published(self, round_id: str, origin: str, table: dict, body: bytes, now: int) -> bool:
        return await self.backend.write(_insights_published, round_id, origin, table, body, now)

    async def insight_round(self, round_id: str, role: str) -> tuple | None:
        return await self.backend.read(methodcaller("insight_round", round_id, role))

    async def insight_charged(self, table: str, period: str) -> bool:
        """Whether the ledger holds a release of ``table`` for ``period``."""
        return await self.backend.read(methodcaller("insight_charged", table, period))

    async def insight_rounds(self, role: str | None = None) -> list[tuple]:
        return await self.backend.read(methodcaller("insight_rounds", role))
