"""The patient's profile directory: the passphrase-sealed key file and local state.

``keys.json`` holds this device's secrets (its signing seed and box secret; the patient's
master key is never kept on a device) and the patient's root public key, sealed with
Argon2id + XChaCha20-Poly1305; ``state.json`` holds what is not secret but must survive
between runs: what this device has seen and pins (the highest manifest counter, the newest
identity epoch and its hash, the devices it enrolled and revoked), so that a node serving an
older or forked state is detected. Both are written atomically with mode 0600.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import attrs

from rxfed.crypto import BoxKeyPair, SigningKeyPair, WrongPassphrase, b64d, b64e
from rxfed.crypto.keyfile import KdfCost, open_keyfile, seal_keyfile
from rxfed.errors import BadRequest, Conflict, NotFound, Unauthorized

KEYS = "keys.json"
STATE = "state.json"
#: Where a profile is when none is named: ``$RXFED_PROFILE``, else this.
DEFAULT_PROFILE = "~/.rxfed"
#: The shortest passphrase a new key file accepts, in characters (spec/cli.md says why).
MIN_PASSPHRASE = 15


def default_profile() -> Path:
    """``$RXFED_PROFILE`` if set, else ``~/.rxfed``; ``~`` expanded."""
    return Path(os.environ.get("RXFED_PROFILE") or DEFAULT_PROFILE).expanduser()


def check_new_passphrase(passphrase: str) -> None:
    """A passphrase chosen for a key file must be at least :data:`MIN_PASSPHRASE` characters:
    it is all that protects the device's keys in a stolen copy of the file."""
    if len(passphrase or "") < MIN_PASSPHRASE:
        raise WeakPassphrase(f"the passphrase must be at least {MIN_PASSPHRASE} characters (a few words "
                             f"work well); this one has {len(passphrase or '')}")


class ProfileError(BadRequest):
    code = "bad_profile"


class WrongPassphraseError(Unauthorized):
    code = "wrong_passphrase"


class WeakPassphrase(BadRequest):
    code = "weak_passphrase"


@attrs.frozen
class Identity:
    """One patient device's own secrets, the patient's root public key (which names the
    patient), and where the patient is registered. ``patient`` and ``root_key`` are None on
    a device waiting to be linked to an account (``rxfed patient link``)."""

    patient: str | None
    node_url: str
    node_id: str
    root_key: bytes | None
    device: SigningKeyPair = attrs.field(repr=False)
    box: BoxKeyPair = attrs.field(repr=False)

    def to_bytes(self) -> bytes:
        return json.dumps({
            "format": 2, "patient": self.patient, "node_url": self.node_url, "node_id": self.node_id,
            "root_key": b64e(self.root_key) if self.root_key else None,
            "device": b64e(self.device.seed), "box": b64e(self.box.secret),
        }).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Identity:
        doc = json.loads(data)
        if doc.get("format") != 2:
            raise ProfileError("this profile was made by an older rxfed whose devices held the patient's root "
                               "key; register again, or recover with the recovery code into a new profile")
        root_key = doc.get("root_key")
        return cls(doc["patient"], doc["node_url"], doc["node_id"], b64d(root_key, length=32) if root_key else None,
                   SigningKeyPair.from_seed(b64d(doc["device"], length=32)),
                   BoxKeyPair.from_secret(b64d(doc["box"], length=32)))


@attrs.frozen
class LocalState:
    """What this device has seen: the newest manifest counter (with that manifest's
    digest, and when this device last saw the vault verified: ``synced``, its own clock)
    and identity epoch (with the hash of that epoch's statement), and the devices it
    enrolled or revoked itself. ``cached`` is the manifest counter the local copy of the
    vault (:class:`rxfed.client.vault_cache.VaultCache`) reflects; ``restores`` the ids of
    the node restores the patient accepted here, and ``restore_pending`` one whose
    re-upload is not finished."""

    counter: int = 0
    epoch: int = 0
    identity_hash: str | None = None
    devices: dict[str, str] = attrs.Factory(dict)
    manifest_hash: str | None = None
    synced: int | None = None
    cached: int = 0
    restores: tuple[str, ...] = ()
    restore_pending: str | None = None

    def to_bytes(self) -> bytes:
        return json.dumps({"counter": self.counter, "epoch": self.epoch, "identity_hash": self.identity_hash,
                           "devices": self.devices, "manifest_hash": self.manifest_hash, "synced": self.synced,
                           "cached": self.cached, "restores": list(self.restores),
                           "restore_pending": self.restore_pending}, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LocalState:
        doc = json.loads(data)
        devices = doc.get("devices", {})
        restores = doc.get("restores", [])
        if not isinstance(devices, dict) or not isinstance(restores, list):
            raise ValueError("devices")
        synced = doc.get("synced")
        return cls(int(doc["counter"]), int(doc.get("epoch", 0)), doc.get("identity_hash"),
                   {str(k): str(v) for k, v in devices.items()}, doc.get("manifest_hash"),
                   None if synced is None else int(synced), int(doc.get("cached", 0)),
                   tuple(str(r) for r in restores), doc.get("restore_pending"))


def write_private(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write atomically (temp file, rename), mode 0600; ``durable`` also fsyncs first."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@attrs.frozen
class Profile:
    path: Path
    #: The state as this process last read or wrote it, with the file's (mtime, size) then:
    #: reused while the file is unchanged (a write per record needs no read), re-read as soon
    #: as another process changed it.
    _state_cache: dict = attrs.field(factory=dict, eq=False, repr=False, alias="state_cache")

    @property
    def exists(self) -> bool:
        return (self.path / KEYS).exists()

    def create(self, identity: Identity, passphrase: str, cost: KdfCost) -> None:
        if self.exists:
            raise Conflict(f"{self.path} already holds a profile; choose another --profile", code="profile_exists")
        check_new_passphrase(passphrase)
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.save(identity, passphrase, cost)
        self.save_state(LocalState())

    def save(self, identity: Identity, passphrase: str, cost: KdfCost) -> None:
        try:
            sealed = seal_keyfile(identity.to_bytes(), passphrase, cost)
        except ValueError as exc:
            raise ProfileError(str(exc)) from None
        write_private(self.path / KEYS, sealed)

    def unlock(self, passphrase: str) -> Identity:
        try:
            data = (self.path / KEYS).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no profile in {self.path}; register or recover first", code="no_profile") from None
        try:
            return Identity.from_bytes(open_keyfile(data, passphrase))
        except WrongPassphrase as exc:
            raise WrongPassphraseError(str(exc)) from None

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path / STATE)
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def state(self) -> LocalState:
        stamp = self._stamp()
        cached = self._state_cache.get("state")
        if cached is not None and stamp is not None and cached[0] == stamp:
            return cached[1]
        try:
            state = LocalState.from_bytes((self.path / STATE).read_bytes())
        except FileNotFoundError:
            return LocalState()
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ProfileError(f"{self.path / STATE} is damaged") from None
        self._state_cache["state"] = (stamp, state)
        return state

    def save_state(self, state: LocalState, *, durable: bool = True) -> None:
        write_private(self.path / STATE, state.to_bytes(), durable=durable)
        self._state_cache["state"] = (self._stamp(), state)

    def counter(self) -> int:
        return self.state().counter

    def set_counter(self, counter: int, manifest_hash: str | None = None, *, synced: int | None = None,
                    cached: int | None = None, state: LocalState | None = None) -> None:
        """Pin the vault this device saw: its counter, its manifest's pin, when (``synced``)
        and, when the local copy was brought up to it, ``cached`` (``state``: the state as
        just read, to save reading it again)."""
        # Not fsynced: after a crash the counter may be a step behind, which weakens rollback
        # detection by that step only; an fsync per write would double a write's cost.
        # (Identity pins are saved durably by save_state.)
        state = state or self.state()
        self.save_state(attrs.evolve(state, counter=counter, manifest_hash=manifest_hash,
                                     synced=state.synced if synced is None else synced,
                                     cached=state.cached if cached is None else cached), durable=False)

    def remove(self) -> None:
        # the key file and everything this device kept about the account (pins, heads)
        for name in (KEYS, STATE, "communities.json", "audit.json", "consent-revoked.json", "vault-cache.jsonl"):
            (self.path / name).unlink(missing_ok=True)
