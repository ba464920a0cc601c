"""The storage interface: the rows a store keeps, and what a backend offers.

A backend (SQLite built in, PostgreSQL as a plugin) runs transactions over a narrow,
row-level connection and holds no rule; the domain operations are written once above it,
in :mod:`rxfed.store.operations`, and speak the row types defined here. Backends are
plugins chosen by configured name (see ``rxfed.hookspecs.rxfed_storage_backends``) and must
pass ``tests/store/contract.py``. spec/store.md says where each rule lives.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs

from rxfed.errors import Unauthorized


class Replayed(Unauthorized):
    code = "replayed_request"

    def __init__(self, message: str = "this request was already received (replay)"):
        super().__init__(message)


@attrs.frozen
class Nonce:
    """A request nonce and when it may be forgotten (the end of its signature window).
    ``claimed``: stored already, in a transaction of its own, when the request was admitted
    (several worker processes: :meth:`rxfed.store.operations.Store.spend`); a write then
    does not store it again."""

    value: bytes
    expires: int
    claimed: bool = False


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
class MatchingSession:
    """One PSI session in the node's log (``rxfed node matching DATA_DIR sessions``):
    with whom, in which role, when, how it ended (``open``, ``matched``, or ``failed:<code>``),
    both padded set sizes and how many categories were common, never which. ``state``
    (the open session this node answers, secret exponent included) is None once it ended,
    and in listings."""

    id: str
    role: str
    peer: str
    started: int
    outcome: str = "open"
    step: int = 0
    finished: int | None = None
    own_size: int | None = None
    own_padded: int | None = None
    peer_padded: int | None = None
    common: int | None = None
    state: bytes | None = attrs.field(default=None, repr=False)

    def to_json(self) -> dict:
        return {"id": self.id, "role": self.role, "peer": self.peer, "started": self.started,
                "finished": self.finished, "outcome": self.outcome, "own_size": self.own_size,
                "own_padded": self.own_padded, "peer_padded": self.peer_padded, "common": self.common}


@attrs.frozen
class MatchingMember:
    """A patient of this node who granted a kind for matching, and one signal under it."""

    patient: str
    token: str
    subject: str
    recipient: str
    body: bytes


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


#: Query parameters of a PostgreSQL URL that carry a secret (libpq's and asyncpg's names).
_SECRET_PARAMS = frozenset({"password", "sslpassword"})


def safe_dsn(dsn: str) -> str:
    """A database URL without its password (in the authority or in the query), for messages
    and logs."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(dsn)
        if parts.password is not None:
            user, _, host = parts.netloc.rpartition("@")  # as written: brackets, several hosts, port
            parts = parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}")
        if parts.query:
            query = parse_qsl(parts.query, keep_blank_values=True)
            if any(key.lower() in _SECRET_PARAMS for key, _ in query):
                parts = parts._replace(query=urlencode(
                    [(key, "***" if key.lower() in _SECRET_PARAMS else value) for key, value in query], safe="*"))
    except ValueError:
        return "(an unreadable database URL)"
    return urlunsplit(parts)


class Backend(abc.ABC):
    """Where a store's rows live: transactions over a row-level connection
    (:class:`rxfed.store.sql.SQLConnection`). The operations on top are written once, in
    :class:`rxfed.store.operations.Store`; a backend holds no rule.

    ``read(op, *args)`` and ``write(op, *args)`` run the coroutine function ``op(conn, *args)``
    in one transaction and return its result; a write is durable before it returns, and an
    exception raised by ``op`` rolls the whole transaction back. ``op`` is a function of its
    arguments and the database only: a backend may run it again (after a serialisation
    failure, or to let one failing operation of a group commit fail alone). ``heavy`` marks
    writes that may touch many rows."""

    name: str = ""
    #: Whether writes started one after another on one event loop commit in that order (one
    #: writer, as SQLite's). Where they may not (a pool of connections, as PostgreSQL's), a
    #: caller that needs the order waits for each write before it starts the next.
    ordered_writes: bool = False
    #: Set before :meth:`open` to upgrade a database with an older schema (``rxfed node
    #: migrate``); without it such a database is refused (:class:`SchemaOutdated`).
    migrate: bool = False

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    def schema(self) -> tuple[int | None, int]:
        """(the stored schema version, None when nothing is stored yet; the code's version)."""
        raise NotImplementedError(f"the {type(self).__name__} backend does not report its schema")

    async def backup_to(self, dest: Path, *, meta: dict[str, str] | None = None) -> int:
        raise NotImplementedError(f"the {self.name or type(self).__name__} backend has no built-in backup; use its "
                                  "database's own tools")

    @abc.abstractmethod
    async def read(self, op: Callable[..., Awaitable[Any]], *args: Any) -> Any: ...

    @abc.abstractmethod
    async def write(self, op: Callable[..., Awaitable[Any]], *args: Any, heavy: bool = False) -> Any: ...


@attrs.frozen
class Inbound:
    """What the store keeps of a received transaction, for the node's reply: the results of
    its events (canonical JSON, opaque to the store) and the sequence numbers of the
    origin's transactions found missing when it arrived."""

    results: bytes
    missing: tuple[int, ...]


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
