"""Cryptographic recipes for rxfed, composed from libsodium (PyNaCl) and pyca/cryptography.

Only this package imports ``nacl`` or ``cryptography``. Everything here is a recipe built
from library primitives; no primitive is implemented here. Each construction and its
security argument is written down in ``spec/crypto.md``.
"""

from rxfed.crypto.encoding import b32_code, b64d, b64e
from rxfed.crypto.errors import BadSignature, DecryptionFailed, WrongPassphrase
from rxfed.crypto.keys import (
    BoxKeyPair,
    SigningKeyPair,
    audit_link,
    fingerprint,
    hash_id,
    node_box_key,
    open_as_any_node_key,
    open_as_node,
    open_signed,
    pseudonym_key,
    random_bytes,
    seal_signed,
    seal_to,
    seal_to_node,
    sha256,
    verify_signature,
)

__all__ = [
    "b32_code",
    "b64d",
    "b64e",
    "BadSignature",
    "DecryptionFailed",
    "WrongPassphrase",
    "BoxKeyPair",
    "SigningKeyPair",
    "audit_link",
    "node_box_key",
    "open_as_any_node_key",
    "open_as_node",
    "pseudonym_key",
    "seal_to_node",
    "fingerprint",
    "hash_id",
    "open_signed",
    "random_bytes",
    "seal_signed",
    "seal_to",
    "sha256",
    "verify_signature",
]
