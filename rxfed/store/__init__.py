"""The storage interface every backend implements (SQLite built in; PostgreSQL to follow).

A store speaks in domain operations, each atomic: it either applies completely or raises
and changes nothing. Every write operation takes the request's nonce, persisted in the same
transaction, so a replayed write is refused even after a restart. Backends are plugins
chosen by configured name (see ``rxfed.hookspecs.rxfed_storage_backends``) and must pass
``tests/store/contract.py``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from rxfed.errors import Unauthorized

if TYPE_CHECKING:  # pragma: no cover
    from rxfed.consent.tokens import TokenOutcome


class Replayed(Unauthorized):
    code = "replayed_request"

    def __init__(self, message: str = "this request was already received (replay)"):
        super().__init__(message)


@attrs.frozen
class Nonce:
    """A request nonce and when it may be forgotten (the end of its signature window)."""

    value: bytes
    expires: int


@attrs.frozen
class AuthKey:
    """What a public key that signs requests stands for. Immutable facts only: whether a
    device is revoked is checked by every operation, inside its transaction."""

    key: bytes
    kind: str  # "device" or "recovery"
    patient: str
    device: str | None


@attrs.frozen
class Account:
    patient: str
    root_key: bytes
    epoch: int
    created: int
    counter: int
    records: int
    bytes: int


@attrs.frozen
class Device:
    device: str
    patient: str
    cert: bytes
    keyring: bytes = attrs.field(repr=False)
    created: int
    revoked: int | None
    revocation: bytes | None


@attrs.frozen
class StoredRecord:
    id: str
    version: int
    blob: bytes = attrs.field(repr=False)


@attrs.frozen
class Vault:
    manifest: bytes | None
    records: tuple[StoredRecord, ...]


@attrs.frozen
class Quota:
    max_records: int
    max_bytes: int


@attrs.frozen
class Recovery:
    """What restores a patient's access from a recovery code (all opaque to the node but
    ``auth_key``, which authenticates the request for the rest)."""

    auth_key: bytes
    statement: bytes
    root_bundle: bytes = attrs.field(repr=False)
    keyring: bytes = attrs.field(repr=False)


@attrs.frozen
class NewPatient:
    patient: str
    root_key: bytes
    device: str
    device_sign_key: bytes
    device_cert: bytes
    keyring: bytes = attrs.field(repr=False)
    recovery: Recovery
    #: The first identity statement (epoch 1), canonical bytes.
    identity: bytes



# -- consent ------------------------------------------------------------------------------


@attrs.frozen
class GrantRow:
    """A local patient's consent grant (home node): scope, signed statement, revocation."""

    id: str
    patient: str
    kind: str
    purpose: str
    recipient: str
    not_after: int
    created: int
    statement: bytes
    revoked: int | None = None
    revocation: bytes | None = None


@attrs.frozen
class TokenRow:
    """One recipient node's token of a local grant, its voucher and delivery state."""

    token: str
    grant_id: str
    node: str
    statement: bytes
    voucher: bytes
    revocation: bytes | None = None
    shared: int | None = None
    acked: int | None = None
    #: The sequence number of the last delivery relayed under the token (devices go on from it).
    seq: int | None = None
    #: The recipient's signed acknowledgement of the revocation, as relayed.
    ack: bytes | None = None


@attrs.frozen
class ReceivedToken:
    """A grant token this node received signals under (from any home node, itself too)."""

    token: str
    origin: str
    subject: str
    subject_key: bytes
    kind: str
    purpose: str
    recipient: str
    not_after: int
    statement: bytes | None
    voucher: bytes | None
    received: int
    revoked: int | None = None
    delivery: str | None = None


@attrs.frozen
class AccountSummary:
    """What an operator sees of one account (``rxfed node accounts list``): sizes and
    states, never a record, key or community."""

    patient: str
    created: int
    records: int
    bytes: int
    devices: int
    live_grants: int
    suspended: int | None
    suspended_reason: str | None


@attrs.frozen
class OperatorEntry:
    """One line of the node's operator log: what an operator did, to what, when and as
    which system user (``rxfed node log``)."""

    time: int
    action: str
    subject: str
    by: str
    detail: str = "{}"
    seq: int | None = None


@attrs.frozen
class AuditRow:
    seq: int
    entry: bytes
    hash: bytes


class SchemaTooNew(RuntimeError):
    """The database was written by a newer rxfed."""


class SchemaOutdated(RuntimeError):
    """The database's schema is older than the code's and the store was not opened to
    migrate it."""

    def __init__(self, message: str, *, current: int, latest: int):
        super().__init__(message)
        self.current = current
        self.latest = latest


class Store(abc.ABC):
    """One node's persistent state. All methods are coroutines; all writes are durable
    (fsynced) before they return."""

    #: Set before :meth:`open` to upgrade a database with an older schema (``rxfed node
    #: migrate``); without it such a database is refused, so that no other command
    #: migrates it silently. A new, empty database is always created at the newest schema.
    migrate: bool = False

    @abc.abstractmethod
    async def open(self) -> None: ...

    def schema(self) -> tuple[int | None, int]:
        """(the stored schema version, None when nothing is stored yet; the code's version)."""
        raise NotImplementedError(f"the {type(self).__name__} backend does not report its schema")

    async def backup_to(self, dest: Path, *, meta: dict[str, str] | None = None) -> int:
        """Write a consistent copy of the whole store to the new file ``dest`` (mode 0600)
        while the node may be serving, with ``meta`` rows set in the copy; returns the
        copy's schema version. Backends whose database has its own tools may refuse."""
        raise NotImplementedError(f"the {type(self).__name__} backend has no built-in backup; use its database's "
                                  "own tools")

    @abc.abstractmethod
    async def close(self) -> None: ...

    # -- node ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def get_meta(self, key: str) -> str | None: ...

    @abc.abstractmethod
    async def set_meta(self, key: str, value: str) -> None: ...

    @abc.abstractmethod
    async def add_invites(self, code_hashes: list[bytes], now: int) -> None: ...

    @abc.abstractmethod
    async def open_invites(self) -> int:
        """How many invitation codes are still unused."""

    @abc.abstractmethod
    async def load_nonces(self, now: int) -> list[Nonce]:
        """Nonces still inside their window, so a restarted node keeps refusing replays."""

    @abc.abstractmethod
    async def prune_nonces(self, now: int) -> int: ...

    # -- patients --------------------------------------------------------------------------
    @abc.abstractmethod
    async def register_patient(self, new: NewPatient, *, invite_hash: bytes | None, nonce: Nonce, now: int) -> None:
        """Create a patient with one device. With ``invite_hash``, consume that unused
        invitation in the same transaction (Forbidden if unknown or used). Conflict if the
        root or device key is registered; Gone if the patient erased their account."""

    @abc.abstractmethod
    async def auth_key(self, key: bytes) -> AuthKey | None: ...

    @abc.abstractmethod
    async def account(self, patient: str) -> Account | None: ...

    @abc.abstractmethod
    async def devices(self, patient: str) -> list[Device]: ...

    @abc.abstractmethod
    async def identity_chain(self, patient: str) -> list[bytes]:
        """The patient's identity statements, epoch 1 first (empty for an unknown patient)."""

    @abc.abstractmethod
    async def enrol_device(self, patient: str, *, signer: str | None, epoch: int, device: str, sign_key: bytes,
                           cert: bytes, keyring: bytes, nonce: Nonce, now: int, max_devices: int,
                           recovery_key: bytes | None = None) -> None:
        """Add a device certified at identity ``epoch``, which must be the current one
        (Conflict ``stale_identity``). ``signer`` is the enrolling device, which must be
        active; with ``recovery_key`` instead, that must be the patient's current recovery
        key. Forbidden ``too_many_devices`` past ``max_devices`` active devices; Conflict if
        the key is any device's or any recovery key."""

    @abc.abstractmethod
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

    @abc.abstractmethod
    async def recovery(self, patient: str) -> Recovery | None: ...

    @abc.abstractmethod
    async def recovery_by_key(self, auth_key: bytes) -> tuple[str, bytes, Recovery] | None:
        """(patient, root key, recovery) for a recovery auth key."""

    @abc.abstractmethod
    async def check_signer(self, patient: str, device: str | None) -> None:
        """Raise Unauthorized unless the patient exists and ``device`` (if given) is one of
        their devices that is not revoked."""

    # -- vault -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def commit(self, patient: str, *, signer: str, counter: int, manifest: bytes,
                     puts: list[StoredRecord], deletes: list[tuple[str, int]], quota: Quota,
                     nonce: Nonce, epoch: int, base: int | None = None) -> int:
        """Apply one vault change atomically. ``epoch`` (the manifest's identity epoch) must
        be the current one (Conflict ``stale_identity``); ``base`` (by default ``counter`` minus
        one) must be the stored counter and ``counter`` above it; a put's version must be one more than the stored one (1 for a new record); a
        delete's version must match. Conflict on any mismatch, QuotaExceeded past the quota."""

    @abc.abstractmethod
    async def vault(self, patient: str, device: str | None) -> Vault: ...

    @abc.abstractmethod
    async def erase_patient(self, patient: str, *, signer: str, tombstone: bytes, nonce: Nonce, now: int) -> None:
        """Delete every record, device and key of the patient so that no byte of their
        ciphertext stays in the database files, and keep the signed tombstone."""

    @abc.abstractmethod
    async def tombstone(self, patient: str) -> bytes | None: ...

    # -- operator actions --------------------------------------------------------------------
    @abc.abstractmethod
    async def accounts(self, now: int) -> list[AccountSummary]:
        """Every account, oldest first (grants live at ``now`` are counted)."""

    @abc.abstractmethod
    async def suspended_accounts(self) -> set[str]:
        """The patients whose accounts are suspended (the node refuses their writes)."""

    @abc.abstractmethod
    async def set_suspended(self, patient: str, *, since: int | None, reason: str | None,
                            log: OperatorEntry) -> bool:
        """Suspend (``since``: when) or unsuspend (None) an account and log it, at once.
        NotFound for an unknown account; False (nothing logged) when already so."""

    @abc.abstractmethod
    async def operator_erase(self, patient: str, *, tombstone: bytes, now: int, log: OperatorEntry) -> None:
        """Erase an account as :meth:`erase_patient` does, on the operator's word (no
        device signs it; ``tombstone`` is the node's statement), and log it. NotFound for an
        unknown account."""

    @abc.abstractmethod
    async def remove_community(self, community_id: str, host: str, *, log: OperatorEntry) -> bool:
        """Delete this node's copy of a community (events, readers, row) and log it; False
        (nothing logged) when there is none."""

    @abc.abstractmethod
    async def log_operator(self, entry: OperatorEntry) -> None: ...

    @abc.abstractmethod
    async def operator_log(self, limit: int = 1000) -> list[OperatorEntry]:
        """The newest ``limit`` entries of the operator log, oldest first."""

    # -- federation: peers -----------------------------------------------------------------
    @abc.abstractmethod
    async def peer(self, node_id: str) -> Peer | None: ...

    @abc.abstractmethod
    async def peers(self) -> list[Peer]: ...

    @abc.abstractmethod
    async def set_peer_policy(self, node_id: str, policy: str, *, url: str | None = None,
                              fingerprint: str | None = None) -> None:
        """Record the operator's decision about a peer (creating the peer if unknown)."""

    @abc.abstractmethod
    async def save_peer_document(self, node_id: str, document: bytes, fetched: int, trusted_keys: bytes) -> None:
        """Keep a peer's key document as fetched, and the keys this node now trusts for it."""

    @abc.abstractmethod
    async def forget_peer_keys(self, node_id: str) -> bool:
        """Forget the keys trusted for a peer and its document (the operator accepts a key
        change); the next document fetched counts as a first contact, or is checked against
        the pin. False when the peer is unknown."""

    @abc.abstractmethod
    async def peer_delivery(self, node_id: str, *, ok: bool, now: int, error: str | None = None,
                            breaker_until: int | None = None) -> int:
        """Record a delivery attempt; returns the number of consecutive failures."""

    @abc.abstractmethod
    async def peer_recovered(self, node_id: str, *, now: int) -> None:
        """The peer showed it is up (it sent an authenticated transaction): no failures, no
        open breaker, and every transaction waiting for it due at once."""

    # -- federation: outbox ----------------------------------------------------------------
    @abc.abstractmethod
    async def enqueue(self, items: list[tuple[str, bytes]], now: int) -> None:
        """Queue (destination, event) pairs for delivery."""

    @abc.abstractmethod
    async def next_transaction(self, destination: str, *, max_events: int, now: int, dead_after: int,
                               exclude: list[str] = (),
                               may_die: Callable[[bytes], bool] = lambda event: True) -> OutboundTransaction | None:
        """The transaction to send next: the oldest one sent but not acknowledged (same id,
        same events) and not in ``exclude`` (those in flight), or a new one formed from
        queued events with the next sequence number. Events queued longer than
        ``dead_after`` seconds become dead letters first, those ``may_die`` (the delivery
        policy's rule) lets die: a transaction dies whole, or waits whole."""

    @abc.abstractmethod
    async def transaction_delivered(self, txn_id: str) -> None: ...

    @abc.abstractmethod
    async def transaction_failed(self, txn_id: str, *, error: str, next_attempt_ms: int) -> None: ...

    @abc.abstractmethod
    async def reschedule_transactions(self, destination: str, *, next_attempt_ms: int) -> None:
        """Make every unacknowledged transaction to ``destination`` due at ``next_attempt_ms``
        (an open breaker holds them all until its cool-down ends)."""

    @abc.abstractmethod
    async def due_destinations(self) -> list[tuple[str, int | None]]:
        """Destinations with something to send, with the time (ms) of their next attempt."""

    @abc.abstractmethod
    async def outbox_summary(self) -> list[OutboxSummary]: ...

    @abc.abstractmethod
    async def dead_letters(self, destination: str | None = None) -> list[DeadLetter]: ...

    @abc.abstractmethod
    async def replay_dead_letters(self, now: int, destination: str | None = None) -> int:
        """Queue dead letters again; returns how many."""

    # -- federation: inbox -----------------------------------------------------------------
    @abc.abstractmethod
    async def inbox_reply(self, origin: str, txn_id: str) -> bytes | None: ...

    @abc.abstractmethod
    async def prune_inbox(self, before: int) -> int:
        """Forget received transactions (their stored replies) received before ``before``
        (Unix seconds); returns how many."""

    @abc.abstractmethod
    async def apply_inbound(self, origin: str, txn_id: str, seq: int, *, make_reply,
                            communities: list[tuple[CommunityRow, list[CommunityEvent]]],
                            outbox: list[tuple[str, bytes]], nonce: Nonce, now: int) -> bytes:
        """Apply one inbound transaction exactly once: community events (idempotent by
        community and sequence number), the events it queues onward, the sequence tracking
        of ``origin``, and the reply (``make_reply(missing)``), all in one store transaction.
        A transaction seen before returns its stored reply and changes nothing."""

    # -- communities -----------------------------------------------------------------------
    #
    # A community is keyed by its address, (id, host): a node's copy of one community never
    # mixes with events another node sends under the same id. No row names a patient.
    @abc.abstractmethod
    async def communities(self, *, hosted_by: str | None = None) -> list[CommunityRow]: ...

    @abc.abstractmethod
    async def community(self, community_id: str, host: str) -> CommunityRow | None: ...

    @abc.abstractmethod
    async def community_events(self, community_id: str, host: str, *, after: int = 0,
                               limit: int = 1000) -> list[CommunityEvent]: ...

    @abc.abstractmethod
    async def community_reader(self, community_id: str, host: str, member: bytes) -> bool | None:
        """Whether ``member`` may read this node's copy of the community: True once its
        create or join is stored, False once its leave or removal is too, None when the key
        is unknown here (see :attr:`CommunityEvent.member`)."""

    @abc.abstractmethod
    async def append_community_events(self, community: CommunityRow, events: list[CommunityEvent], *,
                                      outbox: list[tuple[str, bytes]], now: int, nonce: Nonce | None = None,
                                      patient: str | None = None, signer: str | None = None) -> None:
        """Store events a local patient submitted (at the host: stamped and sequenced),
        queue their fan-out and persist the request nonce, at once. With ``signer`` (a
        device of ``patient``), refuse a revoked device or erased account."""

    @abc.abstractmethod
    async def relay(self, destination: str, event: bytes, *, now: int, nonce: Nonce, patient: str,
                    signer: str | None = None) -> None:
        """Queue a local patient's event for a community hosted elsewhere (refused for a
        revoked ``signer`` device)."""

    # -- consent: the home node's grants and audit log ------------------------------------
    @abc.abstractmethod
    async def add_grant(self, grant: GrantRow, tokens: list[TokenRow], *, signer: str, audit: list[dict],
                        nonce: Nonce, now: int) -> None:
        """Store a local patient's grant and its tokens and log it, at once (refused for a
        revoked ``signer`` device or an erased account)."""

    @abc.abstractmethod
    async def grants(self, patient: str) -> list[tuple[GrantRow, list[TokenRow]]]:
        """A patient's grants, newest first, each with its tokens."""

    @abc.abstractmethod
    async def grant_of_token(self, token: str) -> tuple[GrantRow, TokenRow] | None: ...

    @abc.abstractmethod
    async def mark_shared(self, token: str, *, patient: str, signer: str, delivery: str, seq: int,
                          outbox: list[tuple[str, bytes]], audit: list[dict], nonce: Nonce, now: int,
                          not_before: int = 0) -> None:
        """Record that the patient shared signals under ``token`` as ``delivery`` numbered
        ``seq`` (still live: refused with Gone once revoked; Conflict unless ``seq`` is above
        the token's last one), queue their delivery, to be sent no earlier than
        ``not_before``, and log it, at once."""

    @abc.abstractmethod
    async def delivery_used(self, token: str, node: str, delivery: str, entries: list[dict], now: int) -> bool:
        """Log a recipient node's use of one recorded delivery, once: False (nothing logged)
        unless ``delivery`` was shared under ``token`` to ``node`` and not reported before."""

    @abc.abstractmethod
    async def revoke_grant(self, patient: str, grant_id: str, *, signer: str, revocation: bytes,
                           token_revocations: dict[str, bytes], outbox: list[tuple[str, bytes]],
                           audit: list[dict], nonce: Nonce, now: int,
                           not_before: dict[str, int] | None = None) -> None:
        """Revoke a live grant and its tokens, queue the revocations and log it, at once;
        ``not_before`` holds each destination's revocation until that time."""

    @abc.abstractmethod
    async def token_acknowledged(self, token: str, node: str, *, ack: bytes, audit: list[dict], now: int) -> bool:
        """Keep ``node``'s signed acknowledgement of a revoked token (once; False when not a
        revoked token of ours sent to ``node``)."""

    @abc.abstractmethod
    async def audit(self, patient: str) -> list[AuditRow]: ...

    # -- consent: signals received under tokens -------------------------------------------
    @abc.abstractmethod
    async def receive_signals(self, token: ReceivedToken, delivery: str, signals: list[tuple[str, bytes]], *,
                              seq: int = 0) -> TokenOutcome:
        """Keep ``signals`` under ``token``, replacing what it delivered before, as
        :func:`rxfed.consent.tokens.on_delivery` decides: returns its
        :class:`~rxfed.consent.tokens.TokenOutcome`. Forbidden when the token id is known
        from another origin or under another key."""

    @abc.abstractmethod
    async def revoke_received(self, token: ReceivedToken, revocation: bytes | None, now: int) -> bool:
        """Delete every signal received under ``token`` and remember it revoked (a later
        delivery under it is refused). True when it held signals."""

    @abc.abstractmethod
    async def received_token(self, token: str) -> ReceivedToken | None: ...

    @abc.abstractmethod
    async def received_signals(self, token: str | None = None) -> list[tuple[str, str, bytes]]:
        """``(token, kind, body)`` of signals held (all tokens, or one)."""

    @abc.abstractmethod
    async def expire_received(self, now: int) -> list[ReceivedToken]:
        """Delete the signals of tokens whose grant ended; returns those tokens."""


# -- federation ---------------------------------------------------------------------------


@attrs.frozen
class Peer:
    """What a node knows and decided about another node."""

    node_id: str
    policy: str  # "known", "allowed", "denied", "blocked"
    url: str | None
    fingerprint: str | None
    document: bytes | None  # the peer's /.well-known/rxfed, as fetched
    fetched: int | None
    failures: int
    breaker_until: int | None
    last_success: int | None
    last_error: str | None
    #: The keys this node trusts for the peer (canonical JSON list of keys), see
    #: :func:`rxfed.protocol.federation.trusted_keys`; None before the first contact.
    trusted_keys: bytes | None = None


@attrs.frozen
class OutboundTransaction:
    txn_id: str
    destination: str
    seq: int
    events: tuple[bytes, ...]
    attempts: int
    created: int
    next_attempt_ms: int


@attrs.frozen
class OutboxSummary:
    destination: str
    pending: int
    in_flight: int
    oldest: int | None
    next_attempt: int | None
    dead: int


@attrs.frozen
class DeadLetter:
    id: int
    destination: str
    event: bytes
    created: int
    died: int
    reason: str


@attrs.frozen
class CommunityRow:
    """A community this node hosts (``public``: listed in its directory, with the name,
    condition and commitment key of :class:`rxfed.protocol.community.About`) or keeps a
    copy of for its members (no name, no condition). ``seq``: the highest contiguous event."""

    id: str
    host: str
    name: str
    condition: str | None
    approval: bool
    public: bool
    seq: int
    created: int
    about: bytes | None = attrs.field(default=None, repr=False)


@attrs.frozen
class CommunityEvent:
    """A stored event and its host stamp. ``changes``: the member keys whose right to read
    this node's copy the event changes, each with whether it may read from now on
    (:func:`rxfed.protocol.community.membership_change`)."""

    seq: int
    event: bytes
    stamp: bytes
    changes: tuple[tuple[bytes, bool], ...] = ()
