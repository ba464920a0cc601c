"""The patient's profile directory: the passphrase-sealed key file and local state.

``keys.json`` holds the secrets (root identity seed, this device's signing seed and box
secret) sealed with Argon2id + XChaCha20-Poly1305; ``state.json`` holds what is not secret
but must survive between runs: the highest manifest counter seen, to detect a node that
rolls the vault back. Both are written atomically with mode 0600.
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


class ProfileError(BadRequest):
    code = "bad_profile"


class WrongPassphraseError(Unauthorized):
    code = "wrong_passphrase"


@attrs.frozen
class Identity:
    """Everything secret about one patient device, plus where the patient is registered."""

    patient: str
    node_url: str
    node_id: str
    root: SigningKeyPair = attrs.field(repr=False)
    device: SigningKeyPair = attrs.field(repr=False)
    box: BoxKeyPair = attrs.field(repr=False)

    def to_bytes(self) -> bytes:
        return json.dumps({
            "patient": self.patient, "node_url": self.node_url, "node_id": self.node_id,
            "root": b64e(self.root.seed), "device": b64e(self.device.seed), "box": b64e(self.box.secret),
        }).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Identity:
        doc = json.loads(data)
        return cls(doc["patient"], doc["node_url"], doc["node_id"],
                   SigningKeyPair.from_seed(b64d(doc["root"], length=32)),
                   SigningKeyPair.from_seed(b64d(doc["device"], length=32)),
                   BoxKeyPair.from_secret(b64d(doc["box"], length=32)))


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

    @property
    def exists(self) -> bool:
        return (self.path / KEYS).exists()

    def create(self, identity: Identity, passphrase: str, cost: KdfCost) -> None:
        if self.exists:
            raise Conflict(f"{self.path} already holds a profile; choose another --profile", code="profile_exists")
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.save(identity, passphrase, cost)
        self.set_counter(0)

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

    def counter(self) -> int:
        try:
            return int(json.loads((self.path / STATE).read_text())["counter"])
        except FileNotFoundError:
            return 0
        except (ValueError, KeyError, TypeError):
            raise ProfileError(f"{self.path / STATE} is damaged") from None

    def set_counter(self, counter: int) -> None:
        # Not fsynced: after a crash the counter may be a step behind, which weakens rollback
        # detection by that step only; an fsync per write would double a write's cost.
        write_private(self.path / STATE, json.dumps({"counter": counter}).encode(), durable=False)

    def remove(self) -> None:
        for name in (KEYS, STATE):
            (self.path / name).unlink(missing_ok=True)
