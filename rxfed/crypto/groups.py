"""Group message crypto: per-sender keys, sealed messages, franking commitments.

Each member of a community encrypts what it posts under its own *sender key*, a random
32-byte XChaCha20-Poly1305 key numbered by an epoch, and hands that key to every current
member sealed to their X25519 box key and signed by its member key (:func:`seal_sender_key`).
A member who leaves never receives the next epoch's key, and a member who joins never
receives an earlier one.

Message franking: the sender draws a fresh franking key per message and publishes
``HMAC-SHA256(franking_key, message)`` beside the ciphertext; the franking key travels inside
the ciphertext. A recipient checks the commitment, and can later hand a moderator the text
and franking key, who recomputes the commitment the host countersigned at send time. The
host never sees the franking key, so it learns nothing about the text.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import attrs
import nacl.encoding
import nacl.hash

from rxfed.crypto.errors import DecryptionFailed
from rxfed.crypto.keys import BoxKeyPair, SigningKeyPair, open_signed, random_bytes, seal_signed
from rxfed.crypto.records import KEY_SIZE, pad, secretbox_open, secretbox_seal, unpad

MAX_EPOCH = 2**32 - 1
FRANKING_KEY_SIZE = 32
COMMITMENT_SIZE = 32
#: Bytes an XChaCha20-Poly1305 seal adds to the padded plaintext: 24-byte nonce, 16-byte tag.
MESSAGE_OVERHEAD = 24 + 16
#: Length of a sealed sender key: the sealed box's ephemeral key and tag (48), the sender's
#: signature (64), then epoch (4) and key. Fixed, so the host can check it without opening.
SEALED_SENDER_KEY_SIZE = 48 + 64 + 4 + KEY_SIZE

_MESSAGE_AD = b"rxfed-msg|"
_SENDER_KEY_CONTEXT = b"rxfed-sender-key|"
_HISTORY_PERSON = b"rxfed-history-v1"
#: Where a history chain starts, before the first event.
HISTORY_START = bytes(32)


@attrs.frozen
class SenderKey:
    """One sender's message key for one epoch."""

    epoch: int
    key: bytes = attrs.field(repr=False)

    @classmethod
    def generate(cls, epoch: int) -> SenderKey:
        if not 1 <= epoch <= MAX_EPOCH:
            raise ValueError(f"epoch must be from 1 to {MAX_EPOCH}")
        return cls(epoch, random_bytes(KEY_SIZE))

    def to_bytes(self) -> bytes:
        return struct.pack(">I", self.epoch) + self.key

    @classmethod
    def from_bytes(cls, data: bytes) -> SenderKey:
        # Only ever parsed from an opened box, so a malformed one is a decryption failure.
        if len(data) != 4 + KEY_SIZE:
            raise DecryptionFailed()
        (epoch,) = struct.unpack(">I", data[:4])
        if epoch == 0:
            raise DecryptionFailed()
        return cls(epoch, data[4:])


def seal_message(sender_key: SenderKey, ad: bytes, plaintext: bytes, *, nonce: bytes | None = None) -> bytes:
    """``plaintext`` padded to a size bucket and sealed under the sender key; ``ad`` (the
    community, sender and epoch) is bound so a ciphertext cannot be replayed elsewhere.
    The result is ``bucket_size(len(plaintext)) + MESSAGE_OVERHEAD`` bytes long.
    (``nonce``: for test vectors only; by default a random one.)"""
    return secretbox_seal(sender_key.key, _MESSAGE_AD + ad, pad(plaintext),
                          random=random_bytes if nonce is None else lambda n: nonce)


def open_message(sender_key: SenderKey, ad: bytes, sealed: bytes) -> bytes:
    """The plaintext of :func:`seal_message`, or :class:`DecryptionFailed`."""
    # PyNaCl raises a bare ValueError for input shorter than nonce and tag: keep failures opaque.
    if len(sealed) < MESSAGE_OVERHEAD:
        raise DecryptionFailed()
    return unpad(secretbox_open(sender_key.key, _MESSAGE_AD + ad, sealed))


def new_franking_key() -> bytes:
    return random_bytes(FRANKING_KEY_SIZE)


def commitment(franking_key: bytes, message: bytes) -> bytes:
    """``HMAC-SHA256(franking_key, message)``: binding because SHA-256 is collision resistant,
    hiding because the key is fresh, random and never reused."""
    # HMAC pads short keys with zeros, so keys of different lengths could collide: only one
    # length is accepted.
    if len(franking_key) != FRANKING_KEY_SIZE:
        raise ValueError(f"a franking key is {FRANKING_KEY_SIZE} bytes")
    return hmac.new(franking_key, message, hashlib.sha256).digest()


def check_commitment(franking_key: bytes, message: bytes, expected: bytes) -> bool:
    if len(franking_key) != FRANKING_KEY_SIZE:
        return False
    return hmac.compare_digest(commitment(franking_key, message), expected)


def seal_sender_key(sender: SigningKeyPair, recipient_box_key: bytes, context: bytes, key: SenderKey, *,
                    ephemeral: BoxKeyPair | None = None) -> bytes:
    """``key`` sealed to one member's box key and signed by the sender's member key.
    ``context`` names the community, the recipient's member key and the epoch, so the host
    cannot hand one member's copy to another or replay it for another epoch.
    (``ephemeral``: for test vectors only, see :func:`rxfed.crypto.keys.seal_to`.)"""
    return seal_signed(sender, recipient_box_key, _SENDER_KEY_CONTEXT + context, key.to_bytes(), ephemeral=ephemeral)


def open_sender_key(sender_public: bytes, box: BoxKeyPair, context: bytes, sealed: bytes) -> SenderKey:
    """The key of :func:`seal_sender_key`, or :class:`DecryptionFailed` if it does not open
    or was not sealed by ``sender_public`` for ``context``."""
    return SenderKey.from_bytes(open_signed(sender_public, box, _SENDER_KEY_CONTEXT + context, sealed))


def history_link(previous: bytes, event_hash: bytes) -> bytes:
    """The next head of a community history chain: BLAKE2b-256 (personal
    ``rxfed-history-v1``) over the previous head and the next event's statement hash, both
    32 bytes. :data:`HISTORY_START` is the head before the first event."""
    if len(previous) != 32 or len(event_hash) != 32:
        raise ValueError("history links are made of 32-byte hashes")
    return nacl.hash.blake2b(previous + event_hash, digest_size=32, person=_HISTORY_PERSON,
                             encoder=nacl.encoding.RawEncoder)
