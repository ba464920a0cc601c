"""A node's data directory: configuration (``rxfed.toml``) and identity keys (``node-keys.json``)."""

from __future__ import annotations

import functools
import json
import os
import re
import time
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from rxfed.crypto import SigningKeyPair, b64d, b64e, fingerprint
from rxfed.errors import BadRequest
from rxfed.protocol.federation import KeyRotation

CONFIG_FILE = "rxfed.toml"
KEYS_FILE = "node-keys.json"
REGISTRATION_MODES = ("open", "invite", "closed")

class ConfigError(BadRequest):
    code = "bad_config"

def node_id_from_url(url: str) -> str:
    """A node's id is the authority (host and port) of its public URL, lower-cased."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"public URL {url!r} must be http:// or https:// with a host")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ConfigError(f"public URL {url!r} must have no path, query or credentials")
    return parts.netloc.lower()

@attrs.frozen
class Limits:
    max_body_bytes: int = 1024 * 1024
    max_records: int = 20000
    max_vault_bytes: int = 256 * 1024 * 1024
    #: Signed requests per second per signing key, and the burst allowed above that.
    requests_per_second: float = 50.0
    burst: int = 200
    #: Unauthenticated requests (registration, recovery) per minute per remote address.
    anonymous_per_minute: float = 30.0
    anonymous_burst: int = 30
    request_window_seconds: int = 300

@attrs.frozen
class Federation:
    """How this node talks to other nodes."""

    #: ``open``: any node reachable over HTTPS that is not denied; ``allowlist``: allowed peers only.
    mode: str = "open"
    #: Retry delay: full jitter over ``backoff_base * 2**attempts`` seconds, capped.
    backoff_base: float = 0.5
    backoff_max: float = 300.0
    #: Consecutive failures that open a peer's circuit breaker, and its first cool-down.
    breaker_threshold: int = 5
    breaker_cooldown: float = 30.0
    #: Events undelivered this long (seconds) become dead letters.
    dead_after: int = 86400
    request_timeout: float = 10.0
    max_batch: int = 500
    #: Minimum seconds between fetches of a peer's key document when a key is unknown.
    key_refetch: int = 30
    #: A patient's signal delivery waits a random 0 to this many seconds before it goes to
    #: its recipient, each recipient's delay drawn apart, so the recipients of one grant do
    #: not all receive it at the same moment (spec/crypto.md §9 says what this does not hide).
    signal_delay: int = 60


@attrs.frozen
class NodeConfig:
    data_dir: Path
    name: str
    public_url: str
    host: str = "127.0.0.1"
    port: int = 8470
    registration: str = "open"
    storage: dict[str, Any] = attrs.field(factory=lambda: {"backend": "sqlite"})
    limits: Limits = Limits()
    federation: Federation = Federation()
    tls_cert: str | None = None
    tls_key: str | None = None
    disabled_plugins: tuple[str, ...] = ()
    log_file: str | None = "node.log"
    access_log: str | None = "access.log"

    @functools.cached_property
    def node_id(self) -> str:
        return node_id_from_url(self.public_url)

    @classmethod
    def load(cls, data_dir: str | Path) -> NodeConfig:
        data_dir = Path(data_dir)
        path = data_dir / CONFIG_FILE
        try:
            doc = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path} not found; create the node with 'rxfed node init {data_dir}'") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        node = doc.get("node", {})
        for section, cls_ in (("limits", Limits), ("federation", Federation)):
            unknown = set(doc.get(section, {})) - {f.name for f in attrs.fields(cls_)}
            if unknown:
                raise ConfigError(f"{path}: unknown setting {section}.{sorted(unknown)[0]}")
        try:
            config = cls(
                data_dir=data_dir,
                name=node["name"],
                public_url=node["public_url"],
                host=node.get("host", "127.0.0.1"),
                port=int(node.get("port", 8470)),
                registration=node.get("registration", "open"),
                storage=dict(doc.get("storage", {"backend": "sqlite"})),
                limits=Limits(**doc.get("limits", {})),
                federation=Federation(**doc.get("federation", {})),
                tls_cert=doc.get("tls", {}).get("cert") or None,
                tls_key=doc.get("tls", {}).get("key") or None,
                disabled_plugins=tuple(doc.get("plugins", {}).get("disabled", ())),
                log_file=doc.get("logging", {}).get("file", "node.log") or None,
                access_log=doc.get("logging", {}).get("access", "access.log") or None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: missing or invalid setting ({exc})") from None
        config.validate()
        return config

    def validate(self) -> None:
        node_id_from_url(self.public_url)
        if self.registration not in REGISTRATION_MODES:
            raise ConfigError(f"registration must be one of {', '.join(REGISTRATION_MODES)}")
        if not 0 < self.port < 65536:
            raise ConfigError("port must be from 1 to 65535")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("TLS needs both a certificate and a key")
        if self.federation.mode not in ("open", "allowlist"):
            raise ConfigError("federation.mode must be open or allowlist")
        delay = self.federation.signal_delay
        if not isinstance(delay, int) or isinstance(delay, bool) or not 0 <= delay <= 3600:
            raise ConfigError("federation.signal_delay must be a whole number of seconds from 0 to 3600")
        if not self.name or len(self.name) > 200:
            raise ConfigError("the node name must be 1 to 200 characters")

    def save(self) -> None:
        s = _toml_string
        limits = "\n".join(f"{f.name} = {getattr(self.limits, f.name)!r}" for f in attrs.fields(Limits))
        federation = "\n".join(
            f"{f.name} = {s(v) if isinstance(v := getattr(self.federation, f.name), str) else repr(v)}"
            for f in attrs.fields(Federation))
        storage = "\n".join(f"{k} = {s(str(v))}" for k, v in self.storage.items())
        text = (
            "# rxfed node configuration. Restart the node after editing.\n\n"
            f"[node]\nname = {s(self.name)}\npublic_url = {s(self.public_url)}\n"
            f"host = {s(self.host)}\nport = {self.port}\n"
            f"# open: anyone may register; invite: a code from 'rxfed node invite'; closed: nobody\n"
            f"registration = {s(self.registration)}\n\n"
            f"[storage]\n{storage}\n\n[limits]\n{limits}\n\n[federation]\n{federation}\n\n"
            f"[tls]\ncert = {s(self.tls_cert or '')}\nkey = {s(self.tls_key or '')}\n\n"
            f"[plugins]\ndisabled = [{', '.join(s(p) for p in self.disabled_plugins)}]\n\n"
            f"[logging]\n# empty to log to stderr only / to keep no access log\n"
            f"file = {s(self.log_file or '')}\naccess = {s(self.access_log or '')}\n"
        )
        _write_private(self.data_dir / CONFIG_FILE, text.encode(), mode=0o644)

def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string

def _write_private(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write atomically (temp file, fsync, rename) with ``mode`` from the start."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)

@attrs.frozen
class NodeKey:
    """One of the node's Ed25519 identity keys with its validity period."""

    key: SigningKeyPair
    valid_from: int
    valid_until: int | None

    @property
    def key_id(self) -> str:
        return "ed25519:" + b64e(self.key.public)[:16]

    def to_public_json(self) -> dict:
        return {"key_id": self.key_id, "alg": "ed25519", "public_key": b64e(self.key.public),
                "fingerprint": fingerprint(self.key.public), "valid_from": self.valid_from,
                "valid_until": self.valid_until}

def create_node_keys(data_dir: Path, now: int | None = None) -> NodeKey:
    key = NodeKey(SigningKeyPair.generate(), int(now or time.time()), None)
    save_node_keys(data_dir, [key])
    return key

def save_node_keys(data_dir: Path, keys: list[NodeKey]) -> None:
    doc = {"keys": [{"seed": b64e(k.key.seed), "valid_from": k.valid_from, "valid_until": k.valid_until} for k in keys]}
    _write_private(data_dir / KEYS_FILE, json.dumps(doc, indent=1).encode())

def rotate_node_key(data_dir: Path, *, overlap: int, now: int | None = None) -> tuple[NodeKey, list[NodeKey]]:
    """Add a new signing key; keys without an end date get one ``overlap`` seconds from now,
    so signatures they made stay verifiable while peers learn the new key."""
    now = int(now or time.time())
    keys = load_node_keys(data_dir)
    ended = [attrs.evolve(k, valid_until=now + overlap) if k.valid_until is None else k for k in keys]
    new = NodeKey(SigningKeyPair.generate(), now, None)
    save_node_keys(data_dir, [*ended, new])
    return new, ended


def rotation_statements(keys: list[NodeKey], node_id: str) -> list[dict]:
    """The rotations a node publishes: each key of the file introduced by the key before
    it, which :func:`rotate_node_key` ended when it added the new one. Derived from the file
    (the node holds every old seed; Ed25519 signatures are deterministic), so key files
    written before rotations were published get them too."""
    return [KeyRotation(node_id, old.key.public, new.key.public, new.valid_from, old.valid_until).signed_by(old.key)
            for old, new in zip(keys, keys[1:])
            if old.valid_until is not None and old.valid_until >= new.valid_from]


def current_key(keys: list[NodeKey]) -> NodeKey:
    """The key to sign with: the newest without an end date."""
    return max((k for k in keys if k.valid_until is None), key=lambda k: k.valid_from, default=keys[-1])


def load_node_keys(data_dir: Path) -> list[NodeKey]:
    path = Path(data_dir) / KEYS_FILE
    try:
        doc = json.loads(path.read_text())
        keys = [NodeKey(SigningKeyPair.from_seed(b64d(k["seed"], length=32)), k["valid_from"], k["valid_until"])
                for k in doc["keys"]]
    except FileNotFoundError:
        raise ConfigError(f"{path} not found") from None
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path} is damaged") from None
    if not keys:
        raise ConfigError(f"{path} holds no key")
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"{path} must be readable by its owner only (chmod 600)")
    return keys

NAME_OK = re.compile(r"^[^\x00-\x1f]{1,200}$")
