"""Back up, restore and migrate a node's data directory (``rxfed node backup|restore|migrate``).

A backup is one tar file (mode 0600): ``backup.json`` (what it is), ``rxfed.db`` (a
consistent copy taken while the node serves: the store's online backup), ``rxfed.toml`` and,
unless the operator keeps them apart, ``node-keys.json``. A restore puts them back and signs
a restore statement with the node's key (:mod:`rxfed.protocol.restore`): without it every
patient's device would take the older vaults for a rollback attack and stop, with no way
forward; with it each device tells its patient what the node lost and goes on only with
their consent.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import sqlite3
import tarfile
import tempfile
import time
from pathlib import Path

import attrs

import rxfed
from rxfed.errors import Conflict
from rxfed.node.config import CONFIG_FILE, KEYS_FILE, ConfigFileError, NodeConfig, current_key, load_node_keys
from rxfed.plugins import RxfedPlugins
from rxfed.protocol.canonical import canonical
from rxfed.protocol.restore import RestoreStatement

FORMAT = "rxfed-backup"
MANIFEST = "backup.json"
DATABASE = "rxfed.db"
#: Where ``migrate`` keeps the backup it takes first, inside the data directory.
BACKUPS = "backups"


def store_of(config: NodeConfig):
    """The configured store, not opened (opening would create or refuse a database)."""
    options = dict(config.storage)
    backend = RxfedPlugins(disabled=config.disabled_plugins).storage_backend(options.pop("backend", "sqlite"))
    return backend.open(config.data_dir, options)


def schema_problems(config: NodeConfig) -> list[str]:
    """One line if the store's schema is not this code's: older (``node migrate``) or newer."""
    store = store_of(config)
    try:
        current, latest = store.schema()
    except NotImplementedError:
        return []
    except OSError as exc:
        return [f"{config.data_dir}: cannot read the store ({exc.strerror or exc})"]
    except Exception as exc:  # noqa: BLE001 - a damaged file: say so in one line
        return [f"{config.data_dir}: cannot read the store ({exc})"]
    if current is None or current == 0 or current == latest:
        return []
    if current > latest:
        return [f"{config.data_dir}: database schema {current} is newer than this rxfed ({latest}); upgrade rxfed "
                "to use this data directory"]
    return [f"{config.data_dir}: database schema {current} is older than this rxfed ({latest}); upgrade it with "
            f"'rxfed node migrate {config.data_dir}' (it takes a backup first)"]


def refuse_if_serving(config: NodeConfig, what: str) -> None:
    """Conflict when something answers on the node's configured address: ``restore`` and
    ``migrate`` must not change a database under a running node."""
    import socket

    try:
        with socket.create_connection((config.host, config.port), timeout=0.5):
            pass
    except OSError:
        return
    raise Conflict(f"something listens on {config.host}:{config.port}, the node's address: stop the node before "
                   f"{what}", code="node_running")


def _stamp(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup_node(data_dir: str | Path, out: str | Path, *, keys: bool = True, now: float | None = None) -> dict:
    """Write a backup of the node in ``data_dir`` to the new file ``out`` (never replaced),
    while the node may be serving. ``keys=False`` leaves the identity keys out, for an
    operator who keeps them apart (offline, in a vault). Returns what ``--json`` prints."""
    config = NodeConfig.load(data_dir)
    now = time.time() if now is None else now
    out = Path(out)
    if out.exists():
        raise Conflict(f"{out} exists; a backup never replaces a file", code="backup_exists")
    if not out.parent.is_dir():
        raise ConfigFileError([f"{out.parent} is not a directory"])
    store = store_of(config)
    current, _latest = _schema(store)
    if current is None:
        raise ConfigFileError([f"{config.data_dir}: no database to back up"])
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as work:  # mode 0700
        copy = Path(work) / DATABASE
        taken = int(now)
        try:
            schema = asyncio.run(store.backup_to(copy, meta={"backup_taken": str(taken)}))
        except NotImplementedError as exc:
            raise ConfigFileError([str(exc)]) from None
        manifest = {"format": FORMAT, "version": 1, "node_id": config.node_id, "name": config.name,
                    "taken": taken, "schema": schema, "software": rxfed.__version__, "keys": keys}
        files = {MANIFEST: canonical(manifest), CONFIG_FILE: (config.data_dir / CONFIG_FILE).read_bytes()}
        if keys:
            files[KEYS_FILE] = (config.data_dir / KEYS_FILE).read_bytes()
        partial = Path(work) / "backup.tar"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in files.items():
                _add(tar, name, data, taken)
            info = tar.gettarinfo(str(copy), arcname=DATABASE)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(copy, "rb") as f:
                tar.addfile(info, f)
            tar.close()
            raw.flush()
            os.fsync(raw.fileno())
        try:
            os.link(partial, out)  # never over a file that appeared meanwhile
        except FileExistsError:
            raise Conflict(f"{out} exists; a backup never replaces a file", code="backup_exists") from None
        _fsync_dir(out.parent)
    return {"backup": str(out), "node_id": config.node_id, "taken": taken, "schema": schema, "keys": keys,
            "bytes": out.stat().st_size}


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o600, mtime
    tar.addfile(info, io.BytesIO(data))


def _schema(store) -> tuple[int | None, int]:
    try:
        return store.schema()
    except NotImplementedError as exc:
        raise ConfigFileError([str(exc)]) from None


def _read_backup(path: Path, into: Path) -> dict:
    """Check the backup file and extract its members into ``into`` (mode 0600 each).
    Only the four known regular files are taken; anything else is refused."""
    allowed = {MANIFEST, DATABASE, CONFIG_FILE, KEYS_FILE}
    try:
        tar = tarfile.open(path, mode="r:")
    except (tarfile.TarError, OSError) as exc:
        raise ConfigFileError([f"{path} is not an rxfed backup ({exc})"]) from None
    with tar:
        seen = set()
        for member in tar:
            if member.name not in allowed or not member.isfile() or member.name in seen:
                raise ConfigFileError([f"{path} is not an rxfed backup: unexpected member {member.name!r}"])
            seen.add(member.name)
            src = tar.extractfile(member)
            fd = os.open(into / member.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                os.fsync(dst.fileno())
    if MANIFEST not in seen or DATABASE not in seen or CONFIG_FILE not in seen:
        raise ConfigFileError([f"{path} is not an rxfed backup: it lacks {MANIFEST}, {DATABASE} or {CONFIG_FILE}"])
    try:
        manifest = json.loads((into / MANIFEST).read_bytes())
        if manifest.get("format") != FORMAT or manifest.get("version") != 1 or not isinstance(manifest["taken"], int):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise ConfigFileError([f"{path} is not an rxfed backup (its {MANIFEST} is not one this rxfed reads)"]) from None
    if manifest.get("keys") != (KEYS_FILE in seen):
        raise ConfigFileError([f"{path} is damaged: its {MANIFEST} and its files disagree about the keys"])
    return manifest


def restore_node(backup: str | Path, data_dir: str | Path, *, keys_file: str | Path | None = None,
                 replace: bool = False, now: float | None = None) -> dict:
    """Restore ``backup`` into ``data_dir`` (the node must be stopped) and sign a restore
    statement, which the node publishes from its next start.

    The identity keys are ``keys_file`` if given, else those already in ``data_dir`` (the
    node's current keys: a key rotated since the backup stays), else the backup's. The
    configuration already in ``data_dir`` is kept; else the backup's is used. A database
    already there is refused unless ``replace``, which moves it (with its WAL) into
    ``data_dir/replaced-TIME-ID/``. Nothing changes in ``data_dir`` until every file is ready."""
    backup, data_dir = Path(backup), Path(data_dir)
    now = time.time() if now is None else now
    if not backup.is_file():
        raise ConfigFileError([f"{backup} does not exist"])
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".restore-") as work:
        staged = Path(work)
        manifest = _read_backup(backup, staged)
        config_from = data_dir if (data_dir / CONFIG_FILE).exists() else staged
        config = NodeConfig.load(config_from)
        if manifest.get("node_id") != config.node_id:
            raise Conflict(f"{backup} is a backup of {manifest.get('node_id')}, but {data_dir} is configured as "
                           f"{config.node_id}", code="wrong_node")
        if keys_file is not None:
            keys_path = Path(keys_file)
            if not keys_path.is_file():
                raise ConfigFileError([f"--keys {keys_path} does not exist"])
            shutil.copyfile(keys_path, staged / "keys.given")
            os.chmod(staged / "keys.given", 0o600)
            keys_source, keys_dir = str(keys_path), None
        elif (data_dir / KEYS_FILE).exists():
            keys_source, keys_dir = "kept", data_dir
        elif (staged / KEYS_FILE).exists():
            keys_source, keys_dir = "backup", staged
        else:
            raise ConfigFileError([f"{backup} holds no identity keys (it was taken with --no-keys) and {data_dir} has "
                                   "none: give the node's key file with --keys FILE"])
        if keys_dir is None:
            given = staged / "given"
            given.mkdir(mode=0o700)
            os.replace(staged / "keys.given", given / KEYS_FILE)
            keys_dir = given
        keys = load_node_keys(keys_dir)
        target = store_of(attrs.evolve(config, data_dir=data_dir))
        db = getattr(target, "path", None)
        if db is None:
            raise ConfigFileError([f"the {config.storage.get('backend')} backend restores with its database's own "
                                   "tools"])
        if db.exists() and not replace:
            raise Conflict(f"{data_dir} already holds a database; stop the node and pass --replace to move it "
                           "aside", code="node_exists")
        if db.exists():
            refuse_if_serving(attrs.evolve(config, data_dir=data_dir), "restoring over its database")
        from rxfed.store.sqlite import check_database, set_meta_offline

        statement = RestoreStatement.issue(current_key(keys).key, node=config.node_id,
                                           restore_id=secrets.token_hex(16), backup_taken=manifest["taken"],
                                           restored=int(now))
        try:
            schema = check_database(staged / DATABASE)
            set_meta_offline(staged / DATABASE, {"restore": canonical(statement.signed).decode()})
        except sqlite3.Error as exc:
            raise ConfigFileError([f"{backup} is damaged: its database does not open ({exc})"]) from None
        # every file is ready: move them in
        replaced = None
        if db.exists():
            replaced = data_dir / f"replaced-{_stamp(now)}-{statement.restore_id[:8]}"
            replaced.mkdir(mode=0o700)
            for suffix in ("", "-wal", "-shm"):
                old = db.with_name(db.name + suffix)
                if old.exists():
                    os.replace(old, replaced / old.name)
        os.replace(staged / DATABASE, db)
        if config_from is staged:
            os.replace(staged / CONFIG_FILE, data_dir / CONFIG_FILE)
        if keys_dir != data_dir:
            os.replace(keys_dir / KEYS_FILE, data_dir / KEYS_FILE)
        _fsync_dir(data_dir)
    return {"data_dir": str(data_dir), "node_id": config.node_id, "backup_taken": manifest["taken"],
            "restored": statement.restored, "restore_id": statement.restore_id, "schema": schema,
            "keys": keys_source, "config": "kept" if config_from is data_dir else "backup",
            "replaced": str(replaced) if replaced else None,
            "needs_migration": schema is not None and schema < _schema(target)[1]}


def migrate_node(data_dir: str | Path, *, backup: str | Path | None = None, now: float | None = None) -> dict:
    """Upgrade the store's schema to this code's, after a backup (to ``backup``, else into
    ``DATA_DIR/backups/``). Stop the node first: a node refuses to start on an older schema,
    and an older rxfed still running would find tables changed under it."""
    config = NodeConfig.load(data_dir)
    now = time.time() if now is None else now
    store = store_of(config)
    current, latest = _schema(store)
    if current is None:
        raise ConfigFileError([f"{config.data_dir}: no database to migrate"])
    if current > latest:
        raise ConfigFileError(schema_problems(config))
    if current == latest or current == 0:
        return {"from": current, "to": latest, "migrated": False, "backup": None}
    refuse_if_serving(config, "migrating its database")
    if getattr(store, "path", None) is None:
        # A database server (PostgreSQL) has its own backups (pg_dump, base backups); rxfed
        # migrates it in one transaction, which either applies whole or leaves it as it was.
        if backup is not None:
            raise ConfigFileError([f"--backup: the {config.storage.get('backend')} backend is backed up with its "
                                   "database's own tools (pg_dump); migrate without --backup"])
        taken = {"backup": None}
    else:
        if backup is None:
            folder = config.data_dir / BACKUPS
            folder.mkdir(mode=0o700, exist_ok=True)
            backup = folder / f"pre-migrate-{current}-to-{latest}-{_stamp(now)}.rxfed-backup"
        taken = backup_node(config.data_dir, backup, now=now)
    store.migrate = True

    async def upgrade():
        await store.open()
        await store.close()

    asyncio.run(upgrade())
    return {"from": current, "to": _schema(store)[0], "migrated": True, "backup": taken["backup"]}


async def _same_reads(old, new, now: int) -> list[str]:
    """What the two stores answer differently, by the contract's reads (nothing: the same)."""
    differ = []

    async def same(what: str, read) -> None:
        a, b = await read(old), await read(new)
        if a != b:
            differ.append(what)

    accounts = await old.accounts(now)
    for what, read in (("accounts", lambda s: s.accounts(now)), ("peers", lambda s: s.peers()),
                       ("outbox", lambda s: s.outbox_summary()), ("due destinations", lambda s: s.due_destinations()),
                       ("dead letters", lambda s: s.dead_letters()), ("communities", lambda s: s.communities()),
                       ("received signals", lambda s: s.received_signals()),
                       ("operator log", lambda s: s.operator_log(1 << 30)), ("open invites", lambda s: s.open_invites()),
                       ("matching sessions", lambda s: s.matching_sessions(1 << 30)),
                       ("matching results", lambda s: s.matching_common()),
                       ("nonces", lambda s: _as_set(s.load_nonces(0))), ("suspended", lambda s: s.suspended_accounts())):
        await same(what, read)
    for account in accounts:
        p = account.patient
        for what, read in (("vault", lambda s: s.vault(p, None)), ("devices", lambda s: s.devices(p)),
                           ("identity", lambda s: s.identity_chain(p)), ("recovery", lambda s: s.recovery(p)),
                           ("grants", lambda s: s.grants(p)), ("audit", lambda s: s.audit(p)),
                           ("account", lambda s: s.account(p))):
            await same(f"{what} of {p}", read)
    for community in await old.communities():
        await same(f"events of {community.id}@{community.host}",
                   lambda s: s.community_events(community.id, community.host, limit=1 << 30))
    return differ


async def _as_set(read) -> set:
    return set(await read)


def migrate_db_node(data_dir: str | Path, *, to: str, now: float | None = None) -> dict:
    """Move a stopped SQLite node's data into the empty PostgreSQL database ``to`` (one
    transaction), check that both answer every read of the store contract alike, then
    point the node's rxfed.toml at PostgreSQL. The SQLite file stays where it was."""
    config = NodeConfig.load(data_dir)
    now = int(time.time() if now is None else now)
    if config.storage.get("backend", "sqlite") != "sqlite":
        raise ConfigFileError([f"{config.data_dir}: the node's store is {config.storage.get('backend')}, not sqlite"])
    if not to.startswith(("postgresql://", "postgres://")):
        from rxfed.store import safe_dsn

        raise ConfigFileError([f"--to must be a postgresql:// URL, not {safe_dsn(to)!r}"])
    source = store_of(config)
    if source.schema()[0] is None:
        raise ConfigFileError([f"{config.data_dir}: no database to move"])
    refuse_if_serving(config, "moving its database")
    target_config = attrs.evolve(config, storage={"backend": "postgresql", "dsn": to})
    try:
        from rxfed.store.postgresql.port import PortRefused, copy_sqlite_to_postgresql
    except ImportError:
        raise ConfigFileError(["moving to PostgreSQL needs asyncpg: pip install 'rxfed[postgresql]'"]) from None

    async def move() -> tuple[dict[str, int], list[str]]:
        copied = await copy_sqlite_to_postgresql(source.path, to)
        target = store_of(target_config)
        await source.open()
        try:
            await target.open()
            try:
                return copied, await _same_reads(source, target, now)
            finally:
                await target.close()
        finally:
            await source.close()

    try:
        copied, differ = asyncio.run(move())
    except PortRefused as exc:
        raise ConfigFileError([f"{config.data_dir}: {exc}"]) from None
    except OSError as exc:  # the server cannot be reached
        raise ConfigFileError([f"{config.data_dir}: {exc}"]) from None
    if differ:
        raise ConfigFileError([f"{config.data_dir}: the copy in PostgreSQL reads differently ({', '.join(differ)}); "
                               "the node still uses SQLite"])
    target_config.save()
    from rxfed.store import safe_dsn

    return {"data_dir": str(config.data_dir), "to": safe_dsn(to), "rows": copied, "verified": True,
            "sqlite": str(source.path)}
