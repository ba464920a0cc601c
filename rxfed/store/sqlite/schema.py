"""The SQLite backend's schema: its versioned migrations, and the file-level tools
(schema version, online backup, check, offline meta) that need no open store.

``PRAGMA user_version`` holds the schema version: the number of migrations applied. A new,
empty database is created at the newest; an older one is upgraded only when the store is
opened to migrate (``rxfed node migrate``, which takes a backup first).
"""
from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from rxfed.store import SchemaOutdated, SchemaTooNew

log = logging.getLogger("rxfed.store")

#: Consent delivery state: a grant token keeps the sequence number of its last delivery (the
#: patient's devices continue from it) and the recipient's signed acknowledgement; an outbox
#: event may wait until a time (Unix seconds: signal deliveries, each after a random delay).
CONSENT_DELIVERY_STATE = """
    ALTER TABLE grant_tokens ADD COLUMN seq INTEGER;
    ALTER TABLE grant_tokens ADD COLUMN ack BLOB;
    ALTER TABLE outbox ADD COLUMN not_before INTEGER NOT NULL DEFAULT 0
    """

MIGRATIONS: list[str] = [
    # 1: the vault
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE invites (code_hash BLOB PRIMARY KEY, created INTEGER NOT NULL, used INTEGER) WITHOUT ROWID;
    CREATE TABLE patients (
        id TEXT PRIMARY KEY,
        root_key BLOB NOT NULL UNIQUE,
        created INTEGER NOT NULL,
        counter INTEGER NOT NULL DEFAULT 0,
        manifest BLOB,
        records INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        patient_id TEXT NOT NULL REFERENCES patients(id),
        sign_key BLOB NOT NULL UNIQUE,
        cert BLOB NOT NULL,
        keyring BLOB NOT NULL,
        created INTEGER NOT NULL,
        revoked INTEGER,
        revocation BLOB
    ) WITHOUT ROWID;
    CREATE INDEX devices_patient ON devices(patient_id);
    CREATE TABLE recovery (
        patient_id TEXT PRIMARY KEY REFERENCES patients(id),
        auth_key BLOB NOT NULL UNIQUE,
        statement BLOB NOT NULL,
        root_bundle BLOB NOT NULL,
        keyring BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE records (
        patient_id TEXT NOT NULL REFERENCES patients(id),
        id TEXT NOT NULL,
        version INTEGER NOT NULL,
        blob BLOB NOT NULL,
        PRIMARY KEY (patient_id, id)
    ) WITHOUT ROWID;
    CREATE TABLE nonces (nonce BLOB PRIMARY KEY, expires INTEGER NOT NULL) WITHOUT ROWID;
    CREATE INDEX nonces_expires ON nonces(expires);
    CREATE TABLE tombstones (patient_id TEXT PRIMARY KEY, root_key BLOB NOT NULL UNIQUE,
                             tombstone BLOB NOT NULL, deleted INTEGER NOT NULL) WITHOUT ROWID;
    """,
    # 2: federation and communities
    """
    CREATE TABLE peers (
        node_id TEXT PRIMARY KEY,
        policy TEXT NOT NULL DEFAULT 'known',
        url TEXT,
        fingerprint TEXT,
        document BLOB,
        fetched INTEGER,
        failures INTEGER NOT NULL DEFAULT 0,
        breaker_until INTEGER,
        last_success INTEGER,
        last_error TEXT,
        out_seq INTEGER NOT NULL DEFAULT 0,
        in_contiguous INTEGER NOT NULL DEFAULT 0,
        in_seen TEXT NOT NULL DEFAULT '[]'
    ) WITHOUT ROWID;
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        destination TEXT NOT NULL,
        event BLOB NOT NULL,
        created INTEGER NOT NULL,
        txn TEXT
    );
    CREATE INDEX outbox_queue ON outbox(destination, txn, id);
    CREATE TABLE outbox_txns (
        txn TEXT PRIMARY KEY,
        destination TEXT NOT NULL,
        seq INTEGER NOT NULL,
        created INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    ) WITHOUT ROWID;
    CREATE INDEX outbox_txns_dest ON outbox_txns(destination, seq);
    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        destination TEXT NOT NULL,
        event BLOB NOT NULL,
        created INTEGER NOT NULL,
        died INTEGER NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE TABLE inbox (
        origin TEXT NOT NULL,
        txn TEXT NOT NULL,
        seq INTEGER NOT NULL,
        reply BLOB NOT NULL,
        received INTEGER NOT NULL,
        PRIMARY KEY (origin, txn)
    ) WITHOUT ROWID;
    CREATE TABLE communities (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        name TEXT NOT NULL,
        condition TEXT,
        approval INTEGER NOT NULL,
        public INTEGER NOT NULL,
        seq INTEGER NOT NULL DEFAULT 0,
        created INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE community_events (
        community_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        event BLOB NOT NULL,
        stamp BLOB NOT NULL,
        PRIMARY KEY (community_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE subscriptions (
        patient_id TEXT NOT NULL,
        community_id TEXT NOT NULL,
        PRIMARY KEY (patient_id, community_id)
    ) WITHOUT ROWID;
    """,
    """
    -- v3: consent grants and tokens (home node), signals received under tokens, audit chains
    CREATE TABLE grants (
        id TEXT PRIMARY KEY,
        patient_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        purpose TEXT NOT NULL,
        recipient TEXT NOT NULL,
        not_after INTEGER NOT NULL,
        created INTEGER NOT NULL,
        statement BLOB NOT NULL,
        revoked INTEGER,
        revocation BLOB
    ) WITHOUT ROWID;
    CREATE INDEX grants_patient ON grants (patient_id);
    CREATE TABLE grant_tokens (
        token TEXT PRIMARY KEY,
        grant_id TEXT NOT NULL,
        node TEXT NOT NULL,
        statement BLOB NOT NULL,
        voucher BLOB NOT NULL,
        revocation BLOB,
        shared INTEGER,
        acked INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX grant_tokens_grant ON grant_tokens (grant_id);
    CREATE TABLE received_tokens (
        token TEXT PRIMARY KEY,
        origin TEXT NOT NULL,
        subject TEXT NOT NULL,
        subject_key BLOB NOT NULL,
        kind TEXT NOT NULL,
        purpose TEXT NOT NULL,
        recipient TEXT NOT NULL,
        not_after INTEGER NOT NULL,
        statement BLOB,
        voucher BLOB,
        received INTEGER NOT NULL,
        revoked INTEGER,
        revocation BLOB,
        delivery TEXT,
        delivery_seq INTEGER
    ) WITHOUT ROWID;
    CREATE TABLE deliveries (
        token TEXT NOT NULL,
        delivery TEXT NOT NULL,
        created INTEGER NOT NULL,
        used INTEGER,
        PRIMARY KEY (token, delivery)
    ) WITHOUT ROWID;
    CREATE TABLE received_signals (
        token TEXT NOT NULL,
        n INTEGER NOT NULL,
        kind TEXT NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (token, n)
    ) WITHOUT ROWID;
    CREATE TABLE audit (
        patient_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        entry BLOB NOT NULL,
        hash BLOB NOT NULL,
        PRIMARY KEY (patient_id, seq)
    ) WITHOUT ROWID
    """,
    # 4: write amplification. Records move to a rowid table with a unique index: in a
    # WITHOUT ROWID table, rows of several hundred bytes made every insert dirty (and often
    # split) a random leaf of the whole table; now the rows append to the table's last
    # pages and only the small index entry lands at random, which halves the bytes written
    # (and fsynced) per record. Nonces are ordered by expiry: a replay repeats the signed
    # creation time and so the expiry, so (expires, nonce) refuses it as the nonce alone
    # did, new nonces land on the last page of one B-tree (the random nonce key dirtied a
    # page of the table and one of its expiry index per request), and pruning is a range
    # of that same key.
    """
    CREATE TABLE records_by_rowid (
        patient_id TEXT NOT NULL REFERENCES patients(id),
        id TEXT NOT NULL,
        version INTEGER NOT NULL,
        blob BLOB NOT NULL
    );
    INSERT INTO records_by_rowid (patient_id, id, version, blob)
        SELECT patient_id, id, version, blob FROM records ORDER BY patient_id, id;
    DROP TABLE records;
    ALTER TABLE records_by_rowid RENAME TO records;
    CREATE UNIQUE INDEX records_id ON records(patient_id, id);
    CREATE TABLE nonces_by_expiry (
        expires INTEGER NOT NULL,
        nonce BLOB NOT NULL,
        PRIMARY KEY (expires, nonce)
    ) WITHOUT ROWID;
    INSERT INTO nonces_by_expiry SELECT expires, nonce FROM nonces;
    DROP TABLE nonces;
    ALTER TABLE nonces_by_expiry RENAME TO nonces
    """,
    # 5: identity epochs. A patient's master key signs one statement per epoch (the first
    # at registration); the epoch's signing key certifies devices and signs manifests.
    # Accounts from before have no chain and must register again.
    """
    CREATE TABLE identity_chain (
        patient_id TEXT NOT NULL REFERENCES patients(id),
        epoch INTEGER NOT NULL,
        statement BLOB NOT NULL,
        PRIMARY KEY (patient_id, epoch)
    ) WITHOUT ROWID;
    ALTER TABLE patients ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0
    """,
    # 6: the keys a node trusts for each peer (pinned or learnt on first contact, and those
    # reached from them by signed rotations), kept so a changed key is noticed
    """
    ALTER TABLE peers ADD COLUMN trusted_keys BLOB
    """,
    # 7: communities keyed by address. A copy of a community is keyed by (id, host), so events
    # another node sends under the same id stay apart. Who may read a copy is kept by member
    # key (community_members), and no table links a patient to a community any more
    # (subscriptions goes). Mirrors keep no name or condition. Communities from before this
    # migration are dropped: their random ids certify no create event, so no client could
    # accept them, and mirrors' copies of their create events name the condition.
    """
    DROP TABLE subscriptions;
    DROP TABLE community_events;
    DROP TABLE communities;
    CREATE TABLE communities (
        id TEXT NOT NULL,
        host TEXT NOT NULL,
        name TEXT NOT NULL,
        condition TEXT,
        approval INTEGER NOT NULL,
        public INTEGER NOT NULL,
        seq INTEGER NOT NULL DEFAULT 0,
        created INTEGER NOT NULL,
        about BLOB,
        PRIMARY KEY (id, host)
    ) WITHOUT ROWID;
    CREATE TABLE community_events (
        community_id TEXT NOT NULL,
        host TEXT NOT NULL,
        seq INTEGER NOT NULL,
        event BLOB NOT NULL,
        stamp BLOB NOT NULL,
        PRIMARY KEY (community_id, host, seq)
    ) WITHOUT ROWID;
    CREATE TABLE community_members (
        community_id TEXT NOT NULL,
        host TEXT NOT NULL,
        member BLOB NOT NULL,
        active INTEGER NOT NULL,
        PRIMARY KEY (community_id, host, member)
    ) WITHOUT ROWID
    """,
    # 8
    CONSENT_DELIVERY_STATE,
    # 9: the inbox is pruned by age (replies kept past the senders' retry horizon only)
    "CREATE INDEX inbox_received ON inbox(received)",
    # 10: operator actions. An account may be suspended (since when, and why, for the
    # operator); the operator log keeps what operators did (``rxfed node log``).
    """
    ALTER TABLE patients ADD COLUMN suspended INTEGER;
    ALTER TABLE patients ADD COLUMN suspended_reason TEXT;
    CREATE INDEX patients_suspended ON patients(suspended) WHERE suspended IS NOT NULL;
    CREATE TABLE operator_log (
        seq INTEGER PRIMARY KEY,
        time INTEGER NOT NULL,
        action TEXT NOT NULL,
        subject TEXT NOT NULL,
        by TEXT NOT NULL,
        detail TEXT NOT NULL
    )
    """,
    # 11: the inbox keeps what the node replies from (the events' results, the missing
    # sequence numbers) instead of the reply's bytes: the node makes the reply.
    """
    ALTER TABLE inbox ADD COLUMN missing TEXT NOT NULL DEFAULT '[]';
    UPDATE inbox SET missing = coalesce(json_extract(CAST(reply AS TEXT), '$.missing'), '[]'),
        reply = CAST(coalesce(json_extract(CAST(reply AS TEXT), '$.results'), '[]') AS BLOB)
    """,
    # 12: state several worker processes share (`node run --workers N`): each signer's
    # request budget (token bucket), and which process delivers a destination's outbox
    # (a lease that lapses when its holder dies).
    """
    CREATE TABLE rate_budgets (key BLOB PRIMARY KEY, tokens REAL NOT NULL, at REAL NOT NULL) WITHOUT ROWID;
    CREATE TABLE outbox_leases (destination TEXT PRIMARY KEY, holder TEXT NOT NULL, expires INTEGER NOT NULL)
        WITHOUT ROWID
    """,
    # 13: cross-node matching. Every PSI session (the log the operator reads, and while a
    # session this node answers is open, its state: a secret exponent, deleted at the end);
    # per peer, the common categories of its last completed session and its stated counts;
    # when each peer's next session is due (claimed by one worker process at a time).
    """
    CREATE TABLE matching_sessions (
        id TEXT NOT NULL,
        role TEXT NOT NULL,
        peer TEXT NOT NULL,
        started INTEGER NOT NULL,
        finished INTEGER,
        outcome TEXT NOT NULL,
        step INTEGER NOT NULL,
        own_size INTEGER,
        own_padded INTEGER,
        peer_padded INTEGER,
        common INTEGER,
        state BLOB,
        PRIMARY KEY (id, role)
    ) WITHOUT ROWID;
    CREATE INDEX matching_sessions_peer ON matching_sessions (peer, role, started);
    CREATE TABLE matching_common (
        peer TEXT NOT NULL,
        category TEXT NOT NULL,
        count INTEGER NOT NULL,
        updated INTEGER NOT NULL,
        PRIMARY KEY (peer, category)
    ) WITHOUT ROWID;
    CREATE TABLE matching_schedule (peer TEXT PRIMARY KEY, next_run INTEGER NOT NULL) WITHOUT ROWID
    """,
    # 14: operators' block lists. Instance blocks with Mastodon's severities and flags (a
    # host also covers its subdomains), and hashed pseudonym bans (MSC4205): the node keeps
    # only the hash of a banned pseudonym, as the shared list does; and the reports that
    # communities' moderators forwarded to this node about its members' messages.
    """
    CREATE TABLE domain_blocks (
        domain TEXT PRIMARY KEY,
        severity TEXT NOT NULL,
        reject_media INTEGER NOT NULL,
        reject_reports INTEGER NOT NULL,
        public_comment TEXT NOT NULL,
        obfuscate INTEGER NOT NULL,
        created INTEGER NOT NULL
    );
    CREATE TABLE ban_hashes (
        hash TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        created INTEGER NOT NULL
    );
    CREATE TABLE forwarded_reports (
        id TEXT PRIMARY KEY,
        received INTEGER NOT NULL,
        community_id TEXT NOT NULL,
        host TEXT NOT NULL,
        seq INTEGER NOT NULL,
        sender TEXT NOT NULL,
        category TEXT NOT NULL,
        text TEXT NOT NULL,
        sent INTEGER NOT NULL,
        moderator TEXT NOT NULL,
        origin TEXT NOT NULL
    )
    """,
]


def migrate(conn: sqlite3.Connection, *, upgrade: bool) -> None:
    """Bring the schema to the newest: a new, empty database always (creating it is not an
    upgrade), an older one only with ``upgrade``; otherwise :class:`SchemaOutdated`."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > len(MIGRATIONS):
        raise SchemaTooNew(f"database schema {current} is newer than this rxfed ({len(MIGRATIONS)})")
    if 0 < current < len(MIGRATIONS) and not upgrade:
        raise SchemaOutdated(f"database schema {current} is older than this rxfed ({len(MIGRATIONS)})",
                             current=current, latest=len(MIGRATIONS))
    for version in range(current, len(MIGRATIONS)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("database schema migrated to version %d", version + 1)


def schema_version(path: str | Path) -> int | None:
    """The schema version of the database at ``path`` (0: empty), or None when there is no
    file. Reads the header only: nothing is created, locked for long or migrated."""
    path = Path(path)
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def backup_database(path: str | Path, dest: str | Path, *, meta: dict[str, str] | None = None) -> int:
    """Copy the database at ``path`` into a new file ``dest`` (mode 0600) with SQLite's
    online backup API: one consistent snapshot, taken while the node keeps serving (in WAL
    mode a reader blocks no writer, and the copy is made in one step, so no commit lands
    half in it). ``meta`` rows are written into the copy. Returns the copy's schema version.

    The copy is a single file in rollback-journal mode (no WAL beside it), fsynced."""
    path, dest = Path(path), Path(dest)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        src = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            dst = sqlite3.connect(dest, isolation_level=None)
            try:
                src.backup(dst)
                dst.execute("PRAGMA journal_mode=DELETE")
                version = dst.execute("PRAGMA user_version").fetchone()[0]
                if meta:
                    has_meta = dst.execute("SELECT 1 FROM sqlite_master WHERE name='meta'").fetchone()
                    if has_meta:
                        dst.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(meta.items()))
                integrity = dst.execute("PRAGMA quick_check").fetchone()[0]
                if integrity != "ok":
                    raise sqlite3.DatabaseError(f"the copy fails SQLite's check: {integrity}")
            finally:
                dst.close()
        finally:
            src.close()
        fd = os.open(dest, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return version


def check_database(path: str | Path) -> int:
    """The schema version of the database file at ``path``, after SQLite's ``quick_check``
    (sqlite3.DatabaseError when the file is not a sound database)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        result = conn.execute("PRAGMA quick_check").fetchone()[0]
        if result != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {result}")
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def set_meta_offline(path: str | Path, values: dict[str, str]) -> None:
    """Write ``meta`` rows into a database no node serves (a restored copy, before it
    starts), whatever its schema version, without migrating it."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    try:
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(values.items()))
        conn.execute("COMMIT")
    finally:
        conn.close()


def private_database(path: Path) -> None:
    """The database, its WAL and its shared-memory file readable by their owner only: they
    hold received signals and audit logs. SQLite creates a database 0644 (less the umask)
    and gives the WAL and -shm files the database's mode, so the database is created 0600
    here before SQLite opens it, and looser files left by an older rxfed are tightened."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = file.stat().st_mode
        except FileNotFoundError:
            continue
        if mode & 0o077:
            os.chmod(file, 0o600)
            log.warning("%s was readable by others (mode %o); now 0600", file.name, mode & 0o777)


