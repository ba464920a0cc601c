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
import cattrs
import tomli_w

from rxfed.crypto import SigningKeyPair, b64d, b64e, fingerprint
from rxfed.errors import BadRequest, RxfedError
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

class ConfigFileError(RxfedError):
    """What a data directory holds is unusable (its ``rxfed.toml``, keys, TLS files or
    store): one line per problem, and the command exits 1, not 2 (spec/cli.md)."""

    status = 500
    code = "bad_config"

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _number(kind: type, low: float, high: float | None = None, *, above: bool = False):
    """An attrs validator: a whole number (``int``) or a number (``float``, ints allowed)
    from ``low`` (exclusive with ``above``) to ``high``; booleans are neither."""
    what = "a whole number" if kind is int else "a number"
    bound = f"above {low:g}" if above else f"from {low:g}" + (f" to {high:g}" if high is not None else " up")
    if above and high is not None:
        bound += f" and at most {high:g}"

    def check(_instance, attribute, value):
        ok_type = isinstance(value, int) if kind is int else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type or (value <= low if above else value < low) or (
                high is not None and value > high):
            raise ValueError(f"must be {what} {bound}, not {value!r}")
    return check


def _one_of(*choices: str):
    def check(_instance, attribute, value):
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(repr(c) for c in choices)}, not {value!r}")
    return check


@attrs.frozen
class Limits:
    max_body_bytes: int = attrs.field(default=1024 * 1024, validator=_number(int, 1024, 1 << 30))
    #: Open client connections at most; past it a new one closes the oldest idle one (or
    #: itself, when every connection is busy). Lowered at start-up to fit the open-file limit.
    max_connections: int = attrs.field(default=10000, validator=_number(int, 16, 1 << 20))
    #: Seconds a connection may sit idle (before its first request or between requests).
    keepalive_timeout: float = attrs.field(default=20.0, validator=_number(float, 0, 3600, above=True))
    max_records: int = attrs.field(default=20000, validator=_number(int, 1))
    max_vault_bytes: int = attrs.field(default=256 * 1024 * 1024, validator=_number(int, 1))
    #: Signed requests per second per signing key, and the burst allowed above that.
    requests_per_second: float = attrs.field(default=50.0, validator=_number(float, 0, above=True))
    burst: int = attrs.field(default=200, validator=_number(int, 1))
    #: Unauthenticated requests (registration, recovery) per minute per remote address.
    anonymous_per_minute: float = attrs.field(default=30.0, validator=_number(float, 0, above=True))
    anonymous_burst: int = attrs.field(default=30, validator=_number(int, 1))
    request_window_seconds: int = attrs.field(default=300, validator=_number(int, 1, 86400))
    #: Seconds a client has to send a request's line and headers, from the first byte of it.
    header_timeout: float = attrs.field(default=10.0, validator=_number(float, 0, 3600, above=True))
    #: Seconds a client has to send a request's body once the node reads it (after checking
    #: the signature headers), and the most a refused request's unread body is drained.
    body_timeout: float = attrs.field(default=30.0, validator=_number(float, 0, 3600, above=True))
    #: The largest body of an unauthenticated request (registration, recovery).
    anonymous_max_body_bytes: int = attrs.field(default=64 * 1024, validator=_number(int, 1024, 1 << 30))
    #: Bodies read at once before a signature can vouch for them (registrations, and signed
    #: requests without a Content-Digest header); more get 503 with Retry-After.
    max_unverified_bodies: int = attrs.field(default=32, validator=_number(int, 1, 100000))
    #: Unauthenticated requests per minute from every address together, and their burst.
    anonymous_global_per_minute: float = attrs.field(default=600.0, validator=_number(float, 0, above=True))
    anonymous_global_burst: int = attrs.field(default=120, validator=_number(int, 1))
    #: Requests worked on at once; more wait, at most ``max_queued`` of them and each for at
    #: most ``queue_timeout`` seconds, and beyond that get 503 with Retry-After.
    max_in_flight: int = attrs.field(default=32, validator=_number(int, 1, 100000))
    max_queued: int = attrs.field(default=1024, validator=_number(int, 0, 1000000))
    queue_timeout: float = attrs.field(default=0.5, validator=_number(float, 0, 600, above=True))

def _outlasts_backoff(instance, attribute, value):
    backoff_max = instance.backoff_max
    if isinstance(backoff_max, (int, float)) and isinstance(value, int) and value < 2 * backoff_max:
        raise ValueError(f"must be at least twice backoff_max ({2 * backoff_max:g}), not {value!r}: "
                         "events would die while deliveries to a reachable peer are still held back")


@attrs.frozen
class FederationSettings:
    """How this node talks to other nodes."""

    #: ``open``: any node reachable over HTTPS that is not denied; ``allowlist``: allowed peers only.
    mode: str = attrs.field(default="open", validator=_one_of("open", "allowlist"))
    #: Retry delay: full jitter over ``backoff_base * 2**attempts`` seconds, capped.
    backoff_base: float = attrs.field(default=0.5, validator=_number(float, 0, above=True))
    backoff_max: float = attrs.field(default=300.0, validator=_number(float, 0, above=True))
    #: Consecutive failures that open a peer's circuit breaker, and its first cool-down.
    breaker_threshold: int = attrs.field(default=5, validator=_number(int, 1))
    breaker_cooldown: float = attrs.field(default=30.0, validator=_number(float, 0, above=True))
    #: Events undelivered this long (seconds) become dead letters (never those of a log,
    #: such as a community's history: they wait). At least twice ``backoff_max``, the
    #: longest a breaker or a backoff holds a transaction back, so every event gets tried.
    dead_after: int = attrs.field(default=86400, validator=[_number(int, 1), _outlasts_backoff])
    request_timeout: float = attrs.field(default=10.0, validator=_number(float, 0, 600, above=True))
    max_batch: int = attrs.field(default=500, validator=_number(int, 1, 100000))
    #: Minimum seconds between fetches of a peer's key document when a key is unknown.
    key_refetch: int = attrs.field(default=30, validator=_number(int, 0))
    #: Seconds a failed fetch of an origin's key document is remembered: requests naming
    #: that origin meanwhile are answered 503 at once, without a fetch.
    key_failure_ttl: int = attrs.field(default=30, validator=_number(int, 0, 86400))
    #: Fetches of key documents of origins not seen before, per minute, all origins together.
    key_fetches_per_minute: int = attrs.field(default=60, validator=_number(int, 1))
    #: Transactions accepted per second from one origin, and the burst above that (429
    #: with Retry-After beyond; our own sender waits as asked).
    inbound_per_second: float = attrs.field(default=200.0, validator=_number(float, 0, above=True))
    inbound_burst: int = attrs.field(default=1000, validator=_number(int, 1))
    #: A patient's signal delivery waits a random 0 to this many seconds before it goes to
    #: its recipient, each recipient's delay drawn apart, so the recipients of one grant do
    #: not all receive it at the same moment (spec/crypto.md §9 says what this does not hide).
    signal_delay: int = attrs.field(default=60, validator=_number(int, 0, 3600))
    #: PEM file of the certificate authorities trusted for peers' HTTPS, relative to the data
    #: directory; empty for the system's. It replaces the system's list (as curl's --cacert).
    ca_bundle: str = ""


@attrs.frozen
class MatchingSettings:
    """Cross-node diagnosis matching (spec/federation.md, "Matching")."""

    #: Run sessions with allowed peers and answer theirs (the ``matching`` plugin must be enabled too).
    enabled: bool = True
    #: A category is offered, counted and shown only with at least this many consenting
    #: patients (never fewer than 5).
    k: int = attrs.field(default=11, validator=_number(int, 5, 10_000_000))
    #: Seconds between this node's sessions with each allowed peer.
    interval: float = attrs.field(default=3600.0, validator=_number(float, 0, 7 * 86400, above=True))
    #: Sessions one peer may open with this node per 24 hours (429 beyond).
    sessions_per_peer_per_day: int = attrs.field(default=48, validator=_number(int, 1, 100_000))
    #: The largest padded set a session takes or sends (the request size cap).
    max_elements: int = attrs.field(default=1024, validator=_number(int, 64, 1 << 20))
    #: Seconds an open session may take before it ends as ``failed:expired``.
    session_timeout: float = attrs.field(default=120.0, validator=_number(float, 0, 86400, above=True))


def _name_ok(_instance, attribute, value):
    if not isinstance(value, str) or not NAME_OK.match(value):
        raise ValueError("must be 1 to 200 characters, none of them control characters")


def _public_url_ok(_instance, attribute, value):
    node_id_from_url(value)


# -- the file: one attrs class per section, read with cattrs ----------------------------------


@attrs.frozen
class _NodeSection:
    name: str = attrs.field(validator=_name_ok)
    public_url: str = attrs.field(validator=_public_url_ok)
    host: str = "127.0.0.1"
    port: int = attrs.field(default=8470, validator=_number(int, 1, 65535))
    registration: str = attrs.field(default="open", validator=_one_of(*REGISTRATION_MODES))
    #: Reverse proxies (addresses or CIDR networks) whose X-Forwarded-For / Forwarded the node believes.
    trusted_proxies: list[str] = attrs.field(factory=list, validator=lambda _i, _a, v: proxy_networks(v))
    #: The one header the trusted proxies write the client's address into (see FORWARDED_HEADERS).
    forwarded_header: str = attrs.field(default="X-Forwarded-For", validator=lambda _i, _a, v: forwarded_header(v))


@attrs.frozen
class _SQLiteStorage:
    backend: str = "sqlite"
    path: str = "rxfed.db"
    synchronous: str = attrs.field(default="FULL", validator=_one_of("FULL", "EXTRA", "NORMAL"))


@attrs.frozen
class _TLSSection:
    #: PEM files; relative paths are inside the data directory.
    cert: str = ""
    key: str = ""


@attrs.frozen
class _PluginsSection:
    disabled: tuple[str, ...] = ()


@attrs.frozen
class _LoggingSection:
    file: str = "node.log"
    #: Off by default: see README (Run a node, Logs) for what it holds and its retention.
    access: str = ""


def split_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as (host, port); ValueError otherwise."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c in host for c in " /[]"):
        raise ValueError(f"must be host:port (e.g. \"127.0.0.1:9470\"), or empty for no metrics listener, not {value!r}")
    return host, int(port)


def _listen_ok(_instance, attribute, value):
    if value:
        split_listen(value)


@attrs.frozen
class _MetricsSection:
    #: ``host:port`` of the Prometheus listener (``GET /metrics``); empty: none.
    listen: str = attrs.field(default="", validator=_listen_ok)


@attrs.frozen
class _ConfigFile:
    node: _NodeSection
    #: ``_SQLiteStorage`` for the built-in backend; another backend's plugin checks its own options.
    storage: Any = attrs.field(factory=_SQLiteStorage)
    limits: Limits = Limits()
    federation: FederationSettings = FederationSettings()
    matching: MatchingSettings = MatchingSettings()
    tls: _TLSSection = _TLSSection()
    plugins: _PluginsSection = _PluginsSection()
    logging: _LoggingSection = _LoggingSection()
    metrics: _MetricsSection = _MetricsSection()


def _exact(kind: type, what: str):
    def structure(value, _type):
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            raise TypeError(f"must be {what}, not {value!r}")
        return value
    return structure


def _float(value, _type):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"must be a number, not {value!r}")
    return value


def _names(value, _type):
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"must be a list of names, e.g. [\"outcomes\"], not {value!r}")
    return tuple(value)


def _strings(value, _type):
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"must be a list of strings, e.g. [\"127.0.0.1\", \"10.0.0.0/8\"], not {value!r}")
    return list(value)


#: The headers a reverse proxy may forward the client's address in. The node reads only the
#: one ``[node] forwarded_header`` names: a proxy passes on the other unchanged from the
#: client (nginx, HAProxy, Caddy and Traefik append to X-Forwarded-For and forward a
#: client's own ``Forwarded``), so believing both would let any client pick its address.
FORWARDED_HEADERS = ("X-Forwarded-For", "Forwarded")


def forwarded_header(value) -> str:
    """``forwarded_header`` as the header's canonical name; another is a ValueError."""
    for name in FORWARDED_HEADERS:
        if isinstance(value, str) and value.lower() == name.lower():
            return name
    raise ValueError(f"must be one of {', '.join(FORWARDED_HEADERS)}, not {value!r}")


def proxy_networks(values) -> tuple:
    """``trusted_proxies`` as :mod:`ipaddress` networks; a bad entry is a ValueError."""
    import ipaddress

    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or CIDR network (e.g. 10.0.0.0/8)") from None
    return tuple(out)


def _storage(value, _type):
    if not isinstance(value, dict):
        raise TypeError("must be a table")
    if value.get("backend", "sqlite") == "sqlite":
        return _CONVERTER.structure(value, _SQLiteStorage)
    return dict(value)


_CONVERTER = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
_CONVERTER.register_structure_hook(int, _exact(int, "a whole number"))
_CONVERTER.register_structure_hook(str, _exact(str, "a string"))
_CONVERTER.register_structure_hook(bool, _exact(bool, "true or false"))
_CONVERTER.register_structure_hook(float, _float)
_CONVERTER.register_structure_hook_func(lambda t: t == tuple[str, ...], _names)
_CONVERTER.register_structure_hook_func(lambda t: t is Any, _storage)
_CONVERTER.register_structure_hook_func(lambda t: t == list[str], _strings)


def _where(path: tuple[str, ...]) -> str:
    return f"[{path[0]}]" + (f" {'.'.join(path[1:])}" if len(path) > 1 else "")


def _structure_problems(exc: BaseException, path: tuple[str, ...] = ()) -> list[str]:
    """One line per problem cattrs found, naming the section and key."""
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        cl = exc.cl
        known = ", ".join(f.name for f in attrs.fields(cl))
        what = "section" if not path else "setting"
        return [f"{_where((*path, key))}: unknown {what}; the known {what}s{' here' if path else ''} are {known}"
                for key in sorted(exc.extra_fields)]
    if isinstance(exc, cattrs.ClassValidationError):
        with_notes, without = exc.group_exceptions()
        out = [p for sub, note in with_notes for p in _structure_problems(sub, (*path, note.name))]
        return out + [p for sub in without for p in _structure_problems(sub, path)]
    if isinstance(exc, KeyError) and path:
        return [f"{_where(path)}: missing; it is required"]
    if not path:
        return [str(exc)]
    message = str(exc) if isinstance(exc, (TypeError, ValueError)) else f"invalid ({exc})"
    if "not a dict" in message or "object is not subscriptable" in message or "has no attribute" in message or "not iterable" in message:
        message = "must be a table (a [section])"
    return [f"{_where(path)}: {message}"]


def _validation_problems(obj: Any, path: tuple[str, ...] = ()) -> list[str]:
    out = []
    for field in attrs.fields(type(obj)):
        value = getattr(obj, field.name)
        if attrs.has(type(value)):
            out += _validation_problems(value, (*path, field.name))
        elif field.validator is not None:
            try:
                field.validator(obj, field, value)
            except (ValueError, TypeError, BadRequest) as exc:
                out.append(f"{_where((*path, field.name))}: {getattr(exc, 'message', None) or exc}")
    return out


def parse_config(doc: dict) -> _ConfigFile:
    """The file's contents, every setting checked; :class:`ConfigFileError` lists every problem."""
    with attrs.validators.disabled():
        try:
            parsed = _CONVERTER.structure(doc, _ConfigFile)
        except (cattrs.BaseValidationError, TypeError, ValueError, KeyError) as exc:  # cattrs: every problem in one group
            raise ConfigFileError(_structure_problems(exc)) from None
    problems = _validation_problems(parsed)
    if problems:
        raise ConfigFileError(problems)
    return parsed


def installed_plugins() -> list[str]:
    from importlib.metadata import entry_points

    from rxfed.plugins import ENTRY_POINT_GROUP

    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


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
    federation: FederationSettings = FederationSettings()
    matching: MatchingSettings = MatchingSettings()
    tls_cert: str | None = None
    tls_key: str | None = None
    disabled_plugins: tuple[str, ...] = ()
    log_file: str | None = "node.log"
    access_log: str | None = None
    trusted_proxies: tuple[str, ...] = ()
    forwarded_header: str = "X-Forwarded-For"
    #: ``host:port`` of the metrics listener, or None for none.
    metrics_listen: str | None = None

    @functools.cached_property
    def node_id(self) -> str:
        return node_id_from_url(self.public_url)

    @classmethod
    def load(cls, data_dir: str | Path) -> NodeConfig:
        """Read and check ``rxfed.toml``: unknown sections and settings, wrong types, values
        out of range and plugins that are not installed are errors, all listed at once."""
        data_dir = Path(data_dir)
        path = data_dir / CONFIG_FILE
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigFileError([f"{path} not found; create the node with 'rxfed node init {data_dir}'"]) from None
        except PermissionError:
            raise ConfigFileError([f"{path} cannot be read (permission denied)"]) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigFileError([f"{path}: not valid TOML: {exc}"]) from None
        try:
            parsed = parse_config(doc)
        except ConfigFileError as exc:
            raise ConfigFileError([f"{path}: {p}" for p in exc.problems]) from None
        installed = installed_plugins()
        unknown = [name for name in parsed.plugins.disabled if name not in installed]
        if unknown:
            raise ConfigFileError([f"{path}: [plugins] disabled: no installed plugin is named {name!r}; the "
                                   f"installed plugins are {', '.join(installed)}" for name in unknown])
        storage = parsed.storage if isinstance(parsed.storage, dict) else attrs.asdict(parsed.storage)
        return cls(
            data_dir=data_dir, name=parsed.node.name, public_url=parsed.node.public_url, host=parsed.node.host,
            port=parsed.node.port, registration=parsed.node.registration, storage=storage, limits=parsed.limits,
            federation=parsed.federation, matching=parsed.matching, tls_cert=parsed.tls.cert or None, tls_key=parsed.tls.key or None,
            disabled_plugins=parsed.plugins.disabled, log_file=parsed.logging.file or None,
            access_log=parsed.logging.access or None, metrics_listen=parsed.metrics.listen or None,
            trusted_proxies=tuple(parsed.node.trusted_proxies),
            forwarded_header=forwarded_header(parsed.node.forwarded_header))

    def validate(self) -> None:
        node_id_from_url(self.public_url)
        if self.registration not in REGISTRATION_MODES:
            raise ConfigError(f"registration must be one of {', '.join(REGISTRATION_MODES)}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ConfigError("port must be from 1 to 65535")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("TLS needs both a certificate and a key")
        if not NAME_OK.match(self.name or ""):
            raise ConfigError("the node name must be 1 to 200 characters, none of them control characters")

    @property
    def ca_bundle(self) -> Path | None:
        """``[federation] ca_bundle`` as a path (inside the data directory when relative)."""
        return self.tls_path(self.federation.ca_bundle) if self.federation.ca_bundle else None

    def tls_path(self, value: str) -> Path:
        """A ``[tls]`` path: relative ones are inside the data directory."""
        return self.data_dir / Path(value).expanduser()

    def settings(self) -> dict[str, dict[str, Any]]:
        """Every setting by section, as ``rxfed.toml`` spells it (``rxfed node status``
        shows the running node's)."""
        return {
            "node": {"name": self.name, "public_url": self.public_url, "host": self.host, "port": self.port,
                     "registration": self.registration, "trusted_proxies": list(self.trusted_proxies),
                     "forwarded_header": self.forwarded_header},
            "storage": ({**attrs.asdict(_SQLiteStorage()), **self.storage}
                        if self.storage.get("backend", "sqlite") == "sqlite" else self._shown_storage()),
            "limits": attrs.asdict(self.limits),
            "federation": attrs.asdict(self.federation),
            "matching": attrs.asdict(self.matching),
            "tls": {"cert": self.tls_cert or "", "key": self.tls_key or ""},
            "plugins": {"disabled": list(self.disabled_plugins)},
            "logging": {"file": self.log_file or "", "access": self.access_log or ""},
            "metrics": {"listen": self.metrics_listen or ""},
        }

    _COMMENTS = {
        "node": "registration: open: anyone may register; invite: a code from 'rxfed node invite'; closed: nobody"
                "\n# trusted_proxies: addresses or networks of the reverse proxies whose X-Forwarded-For the node "
                "believes\n# forwarded_header: the header those proxies write the client address in (X-Forwarded-For "
                "or Forwarded; the other is ignored)",
        "tls": "PEM files, relative to this directory; both empty to serve plain HTTP (behind a proxy)",
        "matching": "cross-node diagnosis matching with allowed peers (spec/federation.md 5b): k: the least number of "
                    "consenting patients a category is offered, counted or shown with (at least 5); interval: seconds "
                    "between sessions with each peer",
        "plugins": "plugin names to block, e.g. [\"outcomes\"]",
        "logging": "inside this directory; file empty: stderr only; access: a file name to keep an access log "
                   "(routes and statuses, no client addresses)",
        "metrics": "Prometheus metrics (GET /metrics) on host:port, e.g. \"127.0.0.1:9470\"; empty for none. "
                   "Counts only, no ids; keep it off the public interface",
    }

    def to_toml(self) -> str:
        """The file ``save`` writes, comments included (each section written by tomli-w)."""
        text = "# rxfed node configuration. Restart the node after editing; check it with 'rxfed node check'.\n"
        for name, values in self.settings().items():
            if name == "storage":  # as given: defaults stay implicit
                values = dict(self.storage)
            comment = self._COMMENTS.get(name)
            text += "\n" + (f"# {comment}\n" if comment else "") + tomli_w.dumps({name: values})
        return text

    def _shown_storage(self) -> dict[str, Any]:
        """``[storage]`` as status and logs show it: a database URL without its password."""
        from rxfed.store import safe_dsn

        return {k: safe_dsn(v) if k == "dsn" and isinstance(v, str) else v for k, v in self.storage.items()}

    def save(self) -> None:
        # A database URL may hold a password: the file is then its owner's alone.
        secret = self._shown_storage() != dict(self.storage)
        _write_private(self.data_dir / CONFIG_FILE, self.to_toml().encode(), mode=0o600 if secret else 0o644)

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
class NodeSigningKey:
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

def create_node_keys(data_dir: Path, now: int | None = None) -> NodeSigningKey:
    key = NodeSigningKey(SigningKeyPair.generate(), int(now or time.time()), None)
    save_node_keys(data_dir, [key])
    return key

def save_node_keys(data_dir: Path, keys: list[NodeSigningKey]) -> None:
    doc = {"keys": [{"seed": b64e(k.key.seed), "valid_from": k.valid_from, "valid_until": k.valid_until} for k in keys]}
    _write_private(data_dir / KEYS_FILE, json.dumps(doc, indent=1).encode())

def rotate_node_key(data_dir: Path, *, overlap: int, now: int | None = None) -> tuple[NodeSigningKey, list[NodeSigningKey]]:
    """Add a new signing key; keys without an end date get one ``overlap`` seconds from now,
    so signatures they made stay verifiable while peers learn the new key."""
    now = int(now or time.time())
    keys = load_node_keys(data_dir)
    ended = [attrs.evolve(k, valid_until=now + overlap) if k.valid_until is None else k for k in keys]
    new = NodeSigningKey(SigningKeyPair.generate(), now, None)
    save_node_keys(data_dir, [*ended, new])
    return new, ended


def rotation_statements(keys: list[NodeSigningKey], node_id: str) -> list[dict]:
    """The rotations a node publishes: each key of the file introduced by the key before
    it, which :func:`rotate_node_key` ended when it added the new one. Derived from the file
    (the node holds every old seed; Ed25519 signatures are deterministic), so key files
    written before rotations were published get them too."""
    return [KeyRotation(node_id, old.key.public, new.key.public, new.valid_from, old.valid_until).signed_by(old.key)
            for old, new in zip(keys, keys[1:])
            if old.valid_until is not None and old.valid_until >= new.valid_from]


def current_key(keys: list[NodeSigningKey]) -> NodeSigningKey:
    """The key to sign with: the newest without an end date."""
    return max((k for k in keys if k.valid_until is None), key=lambda k: k.valid_from, default=keys[-1])


def load_node_keys(data_dir: Path) -> list[NodeSigningKey]:
    path = Path(data_dir) / KEYS_FILE
    try:
        doc = json.loads(path.read_text())
        keys = [NodeSigningKey(SigningKeyPair.from_seed(b64d(k["seed"], length=32)), k["valid_from"], k["valid_until"])
                for k in doc["keys"]]
    except FileNotFoundError:
        raise ConfigFileError([f"{path} not found"]) from None
    except (ValueError, KeyError, TypeError):
        raise ConfigFileError([f"{path} is damaged"]) from None
    if not keys:
        raise ConfigFileError([f"{path} holds no key"])
    if path.stat().st_mode & 0o077:
        raise ConfigFileError([f"{path} must be readable by its owner only (chmod 600)"])
    return keys

NAME_OK = re.compile(r"^[^\x00-\x1f]{1,200}$")
