"""Multibase and Multikey: the text encodings of keys and signatures in W3C Data Integrity.

* Multibase (draft-multiformats-multibase): a one-character prefix naming the base, then
  the data in it. Data Integrity proofs use ``z`` (base58btc, the Bitcoin alphabet); status
  lists use ``u`` (base64url without padding).
* Multikey (W3C Controlled Identifiers 1.0, §2.2.2): base58btc multibase of a multicodec
  varint header and the raw key: ``0xed 0x01`` for an Ed25519 public key (so every such key
  starts ``z6Mk``), ``0x80 0x26`` for an Ed25519 secret key (its 32-byte seed).

Decoding is strict: a text decodes only if encoding the result gives the same text back, so
no two texts name one key.
"""

from __future__ import annotations

import base58

from rxfed.crypto.encoding import b64d, b64e

ED25519_PUBLIC_HEADER = b"\xed\x01"
ED25519_SECRET_HEADER = b"\x80\x26"
_ALPHABET = set(base58.BITCOIN_ALPHABET.decode())


def base58btc_encode(data: bytes) -> str:
    """Multibase base58btc: ``z`` and the base58 (Bitcoin alphabet) text of ``data``."""
    return "z" + base58.b58encode(data).decode("ascii")


def base58btc_decode(text: str, *, length: int | None = None) -> bytes:
    """The bytes of a ``z``-prefixed base58btc text; ``ValueError`` on anything else."""
    if not isinstance(text, str) or not text.startswith("z") or len(text) < 2 or len(text) > 4096:
        raise ValueError("not a base58btc multibase value (it must start with 'z')")
    if not set(text[1:]) <= _ALPHABET:
        raise ValueError("not a base58btc multibase value (a character outside the base58 alphabet)")
    data = base58.b58decode(text[1:])
    if base58btc_encode(data) != text:  # pragma: no cover - the alphabet check guards this
        raise ValueError("non-canonical base58btc")
    if length is not None and len(data) != length:
        raise ValueError(f"expected {length} bytes, got {len(data)}")
    return data


def base64url_encode(data: bytes) -> str:
    """Multibase base64url without padding: ``u`` and the text."""
    return "u" + b64e(data)


def base64url_decode(text: str) -> bytes:
    if not isinstance(text, str) or not text.startswith("u"):
        raise ValueError("not a base64url multibase value (it must start with 'u')")
    return b64d(text[1:])


def ed25519_multikey(public_key: bytes) -> str:
    """The Multikey text of an Ed25519 public key (``z6Mk...``)."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return base58btc_encode(ED25519_PUBLIC_HEADER + public_key)


def ed25519_from_multikey(text: str) -> bytes:
    """The 32 bytes of an Ed25519 public key in Multikey form; ``ValueError`` otherwise."""
    data = base58btc_decode(text, length=34)
    if data[:2] != ED25519_PUBLIC_HEADER:
        raise ValueError("not an Ed25519 public Multikey (multicodec header 0xed01)")
    return data[2:]


def ed25519_secret_multikey(seed: bytes) -> str:
    """The Multikey text of an Ed25519 secret key (its seed): for key files and test vectors."""
    if len(seed) != 32:
        raise ValueError("an Ed25519 seed is 32 bytes")
    return base58btc_encode(ED25519_SECRET_HEADER + seed)


def ed25519_seed_from_multikey(text: str) -> bytes:
    data = base58btc_decode(text, length=34)
    if data[:2] != ED25519_SECRET_HEADER:
        raise ValueError("not an Ed25519 secret Multikey (multicodec header 0x8026)")
    return data[2:]
