"""Sealed records: XChaCha20-Poly1305 under a fresh per-record key, wrapped by a vault key.

Layout of a sealed record (all lengths fixed except the body)::

    b"R1" | epoch (4 bytes, big-endian) | wrapped record key (72) | body (24 + padded + 16)

``wrapped record key`` is ``Aead(vault_key[epoch]).encrypt(record_key, aad=b"rxfed-key|"+ad)``
and ``body`` is ``Aead(record_key).encrypt(pad(plaintext), aad=b"rxfed-body|"+ad)``, where
``ad`` is the caller's associated data (record id, owner and version, canonical JSON).
Plaintext is padded with ISO/IEC 7816-4 padding (libsodium ``sodium_pad``) to a size bucket,
so the ciphertext length reveals only the bucket.
"""

from __future__ import annotations

import struct

import attrs
import nacl.bindings
import nacl.exceptions
import nacl.secret

from rxfed.crypto.errors import DecryptionFailed
from rxfed.crypto.keys import random_bytes

MAGIC = b"R1"
KEY_SIZE = nacl.secret.Aead.KEY_SIZE
_WRAPPED = nacl.secret.Aead.NONCE_SIZE + KEY_SIZE + nacl.secret.Aead.MACBYTES
_HEADER = len(MAGIC) + 4
#: Smallest bucket; buckets double up to 64 KiB, then grow in 64 KiB steps.
MIN_BUCKET = 256
_STEP = 64 * 1024


def bucket_size(length: int) -> int:
    """The padded size for ``length`` bytes of plaintext (always at least one byte larger)."""
    size = MIN_BUCKET
    while size <= length and size < _STEP:
        size *= 2
    if size <= length:
        size = (length // _STEP + 1) * _STEP
    return size


def pad(data: bytes) -> bytes:
    return nacl.bindings.sodium_pad(data, bucket_size(len(data)))


def unpad(data: bytes) -> bytes:
    try:
        return nacl.bindings.sodium_unpad(data, len(data))
    except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, ValueError) as exc:
        raise DecryptionFailed() from exc


@attrs.frozen
class VaultKeyring:
    """Every vault key a patient has had, by epoch; new records use the newest.

    A new epoch starts when a device is revoked, so records written after that are wrapped
    under a key the revoked device never saw.
    """

    keys: dict[int, bytes] = attrs.field(repr=False)

    @classmethod
    def generate(cls) -> VaultKeyring:
        return cls({1: random_bytes(KEY_SIZE)})

    @property
    def current_epoch(self) -> int:
        return max(self.keys)

    def rotated(self) -> VaultKeyring:
        return VaultKeyring({**self.keys, self.current_epoch + 1: random_bytes(KEY_SIZE)})

    def to_bytes(self) -> bytes:
        return b"".join(struct.pack(">I", epoch) + key for epoch, key in sorted(self.keys.items()))

    @classmethod
    def from_bytes(cls, data: bytes) -> VaultKeyring:
        step = 4 + KEY_SIZE
        if not data or len(data) % step:
            raise DecryptionFailed()
        keys = {}
        for i in range(0, len(data), step):
            (epoch,) = struct.unpack(">I", data[i : i + 4])
            keys[epoch] = data[i + 4 : i + step]
        return cls(keys)


def seal_record(keyring: VaultKeyring, ad: bytes, plaintext: bytes, *, random=random_bytes) -> bytes:
    """Seal under a fresh record key; ``random`` (n -> bytes) draws the record key and both
    nonces, the CSPRNG unless a test vector fixes it."""
    epoch = keyring.current_epoch
    record_key = random(KEY_SIZE)
    wrapped = nacl.secret.Aead(keyring.keys[epoch]).encrypt(record_key, b"rxfed-key|" + ad,
                                                            random(nacl.secret.Aead.NONCE_SIZE))
    body = nacl.secret.Aead(record_key).encrypt(pad(plaintext), b"rxfed-body|" + ad, random(nacl.secret.Aead.NONCE_SIZE))
    return MAGIC + struct.pack(">I", epoch) + bytes(wrapped) + bytes(body)


def open_record(keyring: VaultKeyring, ad: bytes, sealed: bytes) -> bytes:
    """The plaintext of ``sealed``, or :class:`DecryptionFailed` for any tampering, wrong
    associated data or unknown key."""
    if len(sealed) < _HEADER + _WRAPPED or sealed[:2] != MAGIC:
        raise DecryptionFailed()
    (epoch,) = struct.unpack(">I", sealed[2:_HEADER])
    vault_key = keyring.keys.get(epoch)
    if vault_key is None:
        raise DecryptionFailed()
    try:
        wrapped = sealed[_HEADER : _HEADER + _WRAPPED]
        record_key = nacl.secret.Aead(vault_key).decrypt(wrapped, b"rxfed-key|" + ad)
        padded = nacl.secret.Aead(record_key).decrypt(sealed[_HEADER + _WRAPPED :], b"rxfed-body|" + ad)
    except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, TypeError) as exc:
        raise DecryptionFailed() from exc
    return unpad(padded)


def secretbox_seal(key: bytes, ad: bytes, plaintext: bytes, *, random=random_bytes) -> bytes:
    """XChaCha20-Poly1305 with a random nonce, for small secrets sealed under a derived key:
    ``nonce || ciphertext || tag``. ``random`` (n -> bytes) draws the nonce: the CSPRNG
    unless a test vector fixes it."""
    return bytes(nacl.secret.Aead(key).encrypt(plaintext, ad, random(nacl.secret.Aead.NONCE_SIZE)))


def secretbox_open(key: bytes, ad: bytes, sealed: bytes) -> bytes:
    try:
        return nacl.secret.Aead(key).decrypt(sealed, ad)
    except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, TypeError) as exc:
        raise DecryptionFailed() from exc
