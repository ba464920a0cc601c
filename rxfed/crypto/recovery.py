"""Recovery codes: 160 random bits plus a 16-bit checksum, written as base32 groups.

From the code the client derives, with keyed BLAKE2b (libsodium ``crypto_generichash``,
distinct personalisation per purpose), three independent keys:

* ``bundle_key``: seals the patient's current master key, which the node keeps (XChaCha20-Poly1305);
* ``box_secret``: an X25519 secret; the identity epoch's secrets are sealed to its public
  half, like to a device;
* ``auth_key``: an Ed25519 key whose public half the node stores, so a patient who lost
  every device can authenticate a request for the bundle without revealing the code.

The code has 160 bits of entropy, so no password stretching is needed: guessing it is as
hard as guessing a key.
"""

from __future__ import annotations

import base64
import re

import attrs
import nacl.encoding
import nacl.hash

from rxfed.crypto.keys import SigningKeyPair, random_bytes

_ENTROPY = 20  # bytes: 160 bits
_CHECK = 2


def _derive(secret: bytes, purpose: bytes) -> bytes:
    return nacl.hash.blake2b(
        b"", key=secret, digest_size=32, person=purpose.ljust(16, b"\0")[:16], encoder=nacl.encoding.RawEncoder
    )


def _checksum(secret: bytes) -> bytes:
    return nacl.hash.blake2b(secret, digest_size=_CHECK, person=b"rxfed-rc-check\0\0", encoder=nacl.encoding.RawEncoder)


@attrs.frozen
class RecoveryCode:
    secret: bytes = attrs.field(repr=False)

    @classmethod
    def generate(cls) -> RecoveryCode:
        return cls(random_bytes(_ENTROPY))

    @classmethod
    def parse(cls, text: str) -> RecoveryCode:
        """Accept the code as printed, ignoring case, spaces and dashes; ``ValueError`` on a
        typo (the checksum catches any single wrong character)."""
        cleaned = re.sub(r"[\s-]", "", text or "").upper()
        if not re.fullmatch(r"[A-Z2-7]{36}", cleaned):
            raise ValueError("a recovery code is 36 letters and digits 2-7, in groups of four")
        raw = base64.b32decode(cleaned + "====")
        secret, check = raw[:_ENTROPY], raw[_ENTROPY:]
        if _checksum(secret) != check:
            raise ValueError("recovery code checksum does not match: check for a typo")
        return cls(secret)

    def __str__(self) -> str:
        text = base64.b32encode(self.secret + _checksum(self.secret)).decode().rstrip("=")
        return "-".join(text[i : i + 4] for i in range(0, len(text), 4))

    def bundle_key(self) -> bytes:
        return _derive(self.secret, b"rxfed-rc-bundle")

    def box_secret(self) -> bytes:
        return _derive(self.secret, b"rxfed-rc-box")

    def auth_key(self) -> SigningKeyPair:
        return SigningKeyPair.from_seed(_derive(self.secret, b"rxfed-rc-auth"))

