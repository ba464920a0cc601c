"""Key pairs (Ed25519 signing, X25519 sealing), hashes and randomness."""

from __future__ import annotations

import hashlib

import attrs
import nacl.bindings
import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.public
import nacl.signing
import nacl.utils

from rxfed.crypto.encoding import b64e
from rxfed.crypto.errors import BadSignature, DecryptionFailed


def random_bytes(n: int) -> bytes:
    """``n`` bytes from libsodium's CSPRNG."""
    return nacl.utils.random(n)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def hash_id(data: bytes, *, person: bytes, size: int = 16) -> str:
    """A short identifier derived from ``data``: BLAKE2b with a personalisation string, hex."""
    return nacl.hash.blake2b(data, digest_size=size, person=person.ljust(16, b"\0")[:16]).decode()


def fingerprint(public_key: bytes) -> str:
    """Human-comparable fingerprint of a public key: ``SHA256:`` + base64url of its hash."""
    return "SHA256:" + b64e(sha256(public_key))


@attrs.frozen
class SigningKeyPair:
    """An Ed25519 key pair. ``seed`` is the 32-byte secret; it never appears in ``repr``."""

    seed: bytes = attrs.field(repr=False)
    _key: nacl.signing.SigningKey = attrs.field(repr=False, eq=False)

    @classmethod
    def generate(cls) -> SigningKeyPair:
        key = nacl.signing.SigningKey.generate()
        return cls(bytes(key), key)

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKeyPair:
        return cls(seed, nacl.signing.SigningKey(seed))

    @property
    def public(self) -> bytes:
        return bytes(self._key.verify_key)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte detached signature of ``message``."""
        return self._key.sign(message).signature


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bytes:
    """Return ``message`` if ``signature`` is valid for it under ``public_key``; else raise.

    libsodium's ``crypto_sign_open`` directly, as ``nacl.signing.VerifyKey.verify`` calls it,
    after the same type and length checks (a node verifies one signature per request)."""
    if not isinstance(public_key, bytes) or len(public_key) != 32 or not isinstance(signature, bytes) \
            or len(signature) != 64:
        raise BadSignature()
    try:
        return nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, TypeError) as exc:
        raise BadSignature() from exc


@attrs.frozen
class BoxKeyPair:
    """An X25519 key pair used to receive sealed boxes (anonymous sender, authenticated by a
    signature around them where the sender matters)."""

    secret: bytes = attrs.field(repr=False)
    _key: nacl.public.PrivateKey = attrs.field(repr=False, eq=False)

    @classmethod
    def generate(cls) -> BoxKeyPair:
        key = nacl.public.PrivateKey.generate()
        return cls(bytes(key), key)

    @classmethod
    def from_secret(cls, secret: bytes) -> BoxKeyPair:
        return cls(secret, nacl.public.PrivateKey(secret))

    @property
    def public(self) -> bytes:
        return bytes(self._key.public_key)

    def open_sealed(self, sealed: bytes) -> bytes:
        try:
            return nacl.public.SealedBox(self._key).decrypt(sealed)
        except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, TypeError) as exc:
            raise DecryptionFailed() from exc


def seal_to(public_key: bytes, message: bytes, *, ephemeral: BoxKeyPair | None = None) -> bytes:
    """Encrypt ``message`` to an X25519 public key (libsodium ``crypto_box_seal``).

    ``ephemeral`` is for test vectors only: the sealed box is then made with that key pair
    instead of a fresh one, exactly as ``crypto_box_seal`` makes it (``crypto_box`` from the
    ephemeral secret key to ``public_key`` with nonce BLAKE2b-192(ephemeral public ||
    public_key), after the ephemeral public key), so it opens with ``crypto_box_seal_open``.
    An ephemeral key used twice would reveal what it sealed."""
    if ephemeral is None:
        return nacl.public.SealedBox(nacl.public.PublicKey(public_key)).encrypt(message)
    nonce = nacl.hash.blake2b(ephemeral.public + public_key, digest_size=24, encoder=nacl.encoding.RawEncoder)
    box = nacl.public.Box(ephemeral._key, nacl.public.PublicKey(public_key))
    return ephemeral.public + box.encrypt(message, nonce).ciphertext


def seal_signed(signer: SigningKeyPair, recipient_box_key: bytes, context: bytes, data: bytes, *,
                ephemeral: BoxKeyPair | None = None) -> bytes:
    """``data`` sealed to an X25519 key, with the signer's Ed25519 signature over
    ``context || data`` inside. A sealed box alone is anonymous; the signature inside says
    who sealed it, and ``context`` (who it is for, and what it is) keeps it from being
    replayed to another holder or for another purpose. (``ephemeral``: see :func:`seal_to`.)"""
    return seal_to(recipient_box_key, signer.sign(context + data) + data, ephemeral=ephemeral)


def open_signed(signer_public: bytes, box: BoxKeyPair, context: bytes, sealed: bytes) -> bytes:
    """The data of :func:`seal_signed`, or :class:`DecryptionFailed` if it does not open
    or was not signed by ``signer_public`` for ``context``."""
    inner = box.open_sealed(sealed)
    if len(inner) < 64:
        raise DecryptionFailed()
    try:
        verify_signature(signer_public, context + inner[64:], inner[:64])
    except BadSignature:
        raise DecryptionFailed() from None
    return inner[64:]


# -- consent: pairwise pseudonyms, sealing to a node, the audit chain -----------------------

_PSEUDONYM_PERSON = b"rxfed-pseudonym1"
_AUDIT_PERSON = b"rxfed-audit-v1\0\0"


def pseudonym_key(secret: bytes, label: str) -> SigningKeyPair:
    """The patient's pairwise pseudonymous Ed25519 key for one recipient and purpose.

    Its seed is keyed BLAKE2b (a PRF) of ``label`` under an identity epoch's pseudonym
    secret, so only the patient's devices can derive it, the same label always gives the
    same key, and keys for different labels are unlinkable without the secret
    (spec/consent.md).
    """
    if len(secret) != 32:
        raise ValueError("the pseudonym secret is 32 bytes")
    seed = nacl.hash.blake2b(label.encode(), key=secret, digest_size=32, person=_PSEUDONYM_PERSON,
                             encoder=nacl.encoding.RawEncoder)
    return SigningKeyPair.from_seed(seed)


def node_box_key(node_public_key: bytes) -> bytes:
    """The X25519 public key birationally equivalent to a node's Ed25519 identity key
    (libsodium ``crypto_sign_ed25519_pk_to_curve25519``): what signals are sealed to."""
    try:
        return bytes(nacl.signing.VerifyKey(node_public_key).to_curve25519_public_key())
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise DecryptionFailed("not a usable node key") from None


def seal_to_node(node_public_key: bytes, message: bytes) -> bytes:
    """Seal ``message`` to a node's Ed25519 identity key (libsodium sealed box to its X25519
    birational equivalent), so nodes that relay it cannot read it."""
    return seal_to(node_box_key(node_public_key), message)


def open_as_node(node_key: SigningKeyPair, sealed: bytes) -> bytes:
    try:
        return nacl.public.SealedBox(node_key._key.to_curve25519_private_key()).decrypt(sealed)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise DecryptionFailed("cannot open: sealed to another key, or tampered") from None


def open_as_any_node_key(node_keys, sealed: bytes) -> bytes:
    """:func:`open_as_node` under the first of ``node_keys`` that opens ``sealed`` (a node
    with a rotated key keeps the old ones for the overlap); DecryptionFailed if none does."""
    for node_key in node_keys:
        try:
            return open_as_node(node_key, sealed)
        except DecryptionFailed:
            continue
    raise DecryptionFailed("cannot open: sealed to another key, or tampered")


def audit_link(previous: bytes, entry: bytes) -> bytes:
    """The next hash of an audit chain: BLAKE2b-256 over the previous hash and the entry's
    canonical bytes (a 32-byte zero hash starts the chain)."""
    return nacl.hash.blake2b(previous + entry, digest_size=32, person=_AUDIT_PERSON,
                             encoder=nacl.encoding.RawEncoder)
