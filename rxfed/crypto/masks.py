"""Masks for secure aggregation: pairwise keys by X25519, expanded by libsodium's ChaCha20.

Each node of an aggregation round draws a fresh X25519 key pair (:class:`MaskKeyPair`). Two
nodes agree on a pair key with libsodium's ``crypto_kx`` (X25519, then BLAKE2b-512 of the
shared point and both public keys; the node whose public key sorts first takes the client
side, so both compute the same key). A mask seed is keyed BLAKE2b-256 of the round's context
under that key, and a mask is the ChaCha20 keystream of the seed
(``randombytes_buf_deterministic``) read as little-endian integers modulo 2^bits.

Nothing here is a new primitive: crypto_kx, BLAKE2b and ChaCha20 are libsodium's, and the
construction is Bonawitz et al., *Practical Secure Aggregation for Privacy-Preserving
Machine Learning* (CCS 2017). spec/privacy.md gives the argument.
"""

from __future__ import annotations

import attrs
import nacl.bindings
import nacl.encoding
import nacl.exceptions
import nacl.hash

from rxfed.crypto.errors import CryptoError

SEED_SIZE = 32
PUBLIC_KEY_SIZE = 32
_MASK_PERSON = b"rxfed-agg-mask1\0"
_SELF_PERSON = b"rxfed-agg-self1\0"


class BadMaskKey(CryptoError):
    def __init__(self, message: str = "not a usable mask key"):
        super().__init__(message)


@attrs.frozen
class MaskKeyPair:
    """One node's X25519 key pair for one aggregation round (never reused: its pair keys may
    be revealed when a peer drops out)."""

    public: bytes
    secret: bytes = attrs.field(repr=False)

    @classmethod
    def generate(cls) -> MaskKeyPair:
        public, secret = nacl.bindings.crypto_kx_keypair()
        return cls(public, secret)

    @classmethod
    def from_seed(cls, seed: bytes) -> MaskKeyPair:
        """A key pair from 32 bytes (test vectors only)."""
        public, secret = nacl.bindings.crypto_kx_seed_keypair(seed)
        return cls(public, secret)

    def pair_key(self, peer_public: bytes) -> bytes:
        """The 32-byte key this node shares with the holder of ``peer_public``."""
        if not isinstance(peer_public, bytes) or len(peer_public) != PUBLIC_KEY_SIZE or peer_public == self.public:
            raise BadMaskKey()
        try:
            if self.public < peer_public:
                _rx, tx = nacl.bindings.crypto_kx_client_session_keys(self.public, self.secret, peer_public)
                return tx
            rx, _tx = nacl.bindings.crypto_kx_server_session_keys(self.public, self.secret, peer_public)
            return rx
        except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, TypeError):
            raise BadMaskKey() from None  # e.g. a low-order point: the shared secret would be zero


def mask_seed(pair_key: bytes, context: bytes) -> bytes:
    """The seed of the pairwise mask for one round: keyed BLAKE2b-256 (a PRF) of the round's
    context under the pair key."""
    return nacl.hash.blake2b(context, key=pair_key, digest_size=SEED_SIZE, person=_MASK_PERSON,
                             encoder=nacl.encoding.RawEncoder)


def self_mask_seed(secret: bytes, context: bytes) -> bytes:
    """The seed of a node's own mask, from a fresh random secret and the round's context."""
    return nacl.hash.blake2b(context, key=secret, digest_size=SEED_SIZE, person=_SELF_PERSON,
                             encoder=nacl.encoding.RawEncoder)


def expand(seed: bytes, cells: int, bits: int) -> list[int]:
    """``cells`` integers uniform modulo 2^bits: the ChaCha20 keystream of ``seed``
    (libsodium ``randombytes_buf_deterministic``), ``bits / 8`` little-endian bytes each."""
    if len(seed) != SEED_SIZE:
        raise ValueError("a mask seed is 32 bytes")
    if bits % 8 or not 8 <= bits <= 64:
        raise ValueError("bits must be a multiple of 8 from 8 to 64")
    width = bits // 8
    stream = nacl.bindings.randombytes_buf_deterministic(cells * width, seed)
    return [int.from_bytes(stream[i:i + width], "little") for i in range(0, cells * width, width)]
