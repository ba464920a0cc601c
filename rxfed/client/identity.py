"""The patient's key hierarchy on the device: epoch secrets, their envelopes, and pins.

A patient's *master key* signs one identity statement per epoch and is kept only under the
recovery code (on the node, sealed). Each epoch names a *signing key*; the epoch's secrets
(that signing key, the vault keyring and the pseudonym secrets) reach every active device,
and the recovery holder, in an envelope sealed to the holder's box key and signed by the
epoch's signing key. A device never holds the master key, so a stolen device cannot start
an epoch: revoking it (which needs the recovery code) leaves it with nothing current.
spec/crypto.md sections 1, 3 and 6 give the argument.
"""

from __future__ import annotations

from typing import Any

import attrs

from rxfed.client.profile import LocalState
from rxfed.crypto import BoxKeyPair, DecryptionFailed, SigningKeyPair, b64d, b64e, open_signed, seal_signed
from rxfed.crypto.records import VaultKeyring
from rxfed.errors import RxfedError
from rxfed.protocol import vault as pv
from rxfed.protocol.canonical import canonical, loads


class IntegrityError(RxfedError):
    """The node served something the patient never signed: tampering or silent loss."""

    status = 502
    code = "integrity_error"


class RollbackDetected(IntegrityError):
    code = "rollback_detected"


@attrs.frozen
class EpochSecrets:
    """What every active device holds for one identity epoch. ``keyring`` holds the vault
    key of every epoch so far (records written earlier stay readable); ``pseudonyms`` the
    pseudonym secret of every epoch (tokens made earlier keep their keys)."""

    epoch: int
    signing: SigningKeyPair = attrs.field(repr=False)
    keyring: VaultKeyring = attrs.field(repr=False)
    pseudonyms: VaultKeyring = attrs.field(repr=False)

    @classmethod
    def first(cls) -> EpochSecrets:
        return cls(1, SigningKeyPair.generate(), VaultKeyring.generate(), VaultKeyring.generate())

    def next(self) -> EpochSecrets:
        """Fresh secrets for the next epoch: a new signing key, vault key and pseudonym secret."""
        return EpochSecrets(self.epoch + 1, SigningKeyPair.generate(), self.keyring.rotated(), self.pseudonyms.rotated())

    @property
    def pseudonym_secret(self) -> bytes:
        return self.pseudonyms.keys[self.pseudonyms.current_epoch]

    def to_bytes(self) -> bytes:
        return canonical({"epoch": self.epoch, "signing": b64e(self.signing.seed),
                          "keyring": b64e(self.keyring.to_bytes()), "pseudonyms": b64e(self.pseudonyms.to_bytes())})

    @classmethod
    def from_bytes(cls, data: bytes) -> EpochSecrets:
        try:
            doc = loads(data)
            return cls(doc["epoch"], SigningKeyPair.from_seed(b64d(doc["signing"], length=32)),
                       VaultKeyring.from_bytes(b64d(doc["keyring"])), VaultKeyring.from_bytes(b64d(doc["pseudonyms"])))
        except (RxfedError, DecryptionFailed, KeyError, TypeError, ValueError):
            raise IntegrityError("the epoch secrets from the node are malformed") from None


def _context(holder: str, epoch: int) -> bytes:
    return b"rxfed-keyring|" + holder.encode() + b"|" + str(epoch).encode() + b"|"


def seal_secrets(secrets: EpochSecrets, holder: str, box_key: bytes) -> bytes:
    """The epoch's secrets sealed to one holder (a device id, or ``recovery``), signed inside
    by the epoch's signing key over the holder's name and the epoch."""
    return seal_signed(secrets.signing, box_key, _context(holder, secrets.epoch), secrets.to_bytes())


def open_secrets(identity: pv.IdentityStatement, holder: str, box: BoxKeyPair, sealed: bytes) -> EpochSecrets:
    """Open an envelope for the epoch of ``identity`` (the newest this device accepts): it
    must be signed by that epoch's signing key for this holder and hold exactly that epoch's
    secrets. An envelope of an earlier epoch, or of a key the node made, is refused."""
    try:
        data = open_signed(identity.signing_key, box, _context(holder, identity.epoch), sealed)
    except DecryptionFailed:
        raise IntegrityError("the keyring from the node is not one the patient sealed for this device and "
                             f"identity epoch {identity.epoch}") from None
    secrets = EpochSecrets.from_bytes(data)
    if (secrets.epoch != identity.epoch or secrets.signing.public != identity.signing_key
            or secrets.keyring.current_epoch != identity.epoch or secrets.pseudonyms.current_epoch != identity.epoch):
        raise IntegrityError("the keyring from the node does not belong to the current identity epoch")
    return secrets


def verify_chain(root_key: bytes, statements: Any, pins: LocalState) -> tuple[pv.IdentityChain, LocalState]:
    """The identity chain as the node served it, checked from the root key and against what
    this device pinned: never an epoch older than the newest seen, never another statement
    for an epoch already seen (a fork). Returns the chain and the pins to save."""
    try:
        chain = pv.IdentityChain.verify(root_key, statements)
    except RxfedError as exc:
        raise IntegrityError(f"the identity chain from the node does not verify: {exc}") from None
    current = chain.current
    if current.epoch < pins.epoch:
        raise RollbackDetected(f"the node served identity epoch {current.epoch}, older than epoch {pins.epoch} "
                               "this device has already seen (a revocation or recovery-code change was hidden)")
    if pins.identity_hash is not None and b64e(chain.statements[pins.epoch - 1].hash) != pins.identity_hash:
        raise IntegrityError(f"the node served another identity statement for epoch {pins.epoch} than the one "
                             "this device saw: the history was forked")
    if current.epoch > pins.epoch:
        pins = attrs.evolve(pins, epoch=current.epoch, identity_hash=b64e(current.hash))
    return chain, pins
