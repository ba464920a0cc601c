"""The patient's local key file: secrets sealed under a key stretched from a passphrase.

The file is JSON: ``{"format", "kdf": {"alg", "opslimit", "memlimit", "salt"}, "sealed"}``.
The key is ``argon2id(passphrase, salt, opslimit, memlimit)`` (libsodium ``crypto_pwhash``);
``sealed`` is XChaCha20-Poly1305 over the secrets with the header as associated data, so the
cost parameters cannot be lowered by editing the file without failing authentication.
"""

from __future__ import annotations

import json

import attrs
import nacl.exceptions
import nacl.pwhash

from rxfed.crypto.encoding import b64d, b64e
from rxfed.crypto.errors import DecryptionFailed, WrongPassphrase
from rxfed.crypto.keys import random_bytes
from rxfed.crypto.records import KEY_SIZE, secretbox_open, secretbox_seal

FORMAT = "rxfed-keyfile-1"
_argon = nacl.pwhash.argon2id


@attrs.frozen
class KdfCost:
    opslimit: int
    memlimit: int

    #: Named costs. ``min`` exists for tests only; real profiles use ``moderate`` or more.
    NAMES = ("min", "interactive", "moderate", "sensitive")

    @classmethod
    def named(cls, name: str) -> KdfCost:
        table = {
            "min": (_argon.OPSLIMIT_MIN, _argon.MEMLIMIT_MIN),
            "interactive": (_argon.OPSLIMIT_INTERACTIVE, _argon.MEMLIMIT_INTERACTIVE),
            "moderate": (_argon.OPSLIMIT_MODERATE, _argon.MEMLIMIT_MODERATE),
            "sensitive": (_argon.OPSLIMIT_SENSITIVE, _argon.MEMLIMIT_SENSITIVE),
        }
        if name not in table:
            raise ValueError(f"unknown KDF cost {name!r}; choose one of {', '.join(table)}")
        return cls(*table[name])


def keyfile_key(passphrase: str, salt: bytes, cost: KdfCost) -> bytes:
    return _argon.kdf(KEY_SIZE, passphrase.encode("utf-8"), salt, opslimit=cost.opslimit, memlimit=cost.memlimit)


def seal_keyfile(secrets: bytes, passphrase: str, cost: KdfCost, *, salt: bytes | None = None,
                 nonce: bytes | None = None) -> bytes:
    """The key file. ``salt`` and ``nonce`` are random unless given (test vectors only)."""
    if not passphrase:
        raise ValueError("the passphrase must not be empty")
    salt = random_bytes(_argon.SALTBYTES) if salt is None else salt
    header = {
        "format": FORMAT,
        "kdf": {"alg": "argon2id13", "opslimit": cost.opslimit, "memlimit": cost.memlimit, "salt": b64e(salt)},
    }
    sealed = secretbox_seal(keyfile_key(passphrase, salt, cost), keyfile_ad(header), secrets,
                            random=random_bytes if nonce is None else lambda n: nonce)
    return json.dumps({**header, "sealed": b64e(sealed)}, indent=1, sort_keys=True).encode() + b"\n"


def keyfile_ad(header: dict) -> bytes:
    """The associated data: the header ``{format, kdf}`` as Python's ``json.dumps`` writes
    it with sorted keys (``", "`` and ``": "`` separators, ASCII); spec/crypto.md §4."""
    return json.dumps(header, sort_keys=True).encode()


def keyfile_cost(data: bytes) -> KdfCost:
    header = _parse(data)
    return KdfCost(header["kdf"]["opslimit"], header["kdf"]["memlimit"])


def _parse(data: bytes) -> dict:
    try:
        doc = json.loads(data)
        kdf = doc["kdf"]
        if doc["format"] != FORMAT or kdf["alg"] != "argon2id13":
            raise ValueError("unknown key file format")
        if not (isinstance(kdf["opslimit"], int) and isinstance(kdf["memlimit"], int)):
            raise ValueError("bad cost")
        b64d(kdf["salt"], length=_argon.SALTBYTES)
        b64d(doc["sealed"])
    except (ValueError, KeyError, TypeError) as exc:
        raise WrongPassphrase("not an rxfed key file, or it is damaged") from exc
    return doc


def open_keyfile(data: bytes, passphrase: str) -> bytes:
    doc = _parse(data)
    ad = keyfile_ad({"format": doc["format"], "kdf": doc["kdf"]})
    cost = KdfCost(doc["kdf"]["opslimit"], doc["kdf"]["memlimit"])
    try:
        key = keyfile_key(passphrase, b64d(doc["kdf"]["salt"]), cost)
        return secretbox_open(key, ad, b64d(doc["sealed"]))
    except (DecryptionFailed, ValueError, nacl.exceptions.CryptoError) as exc:
        raise WrongPassphrase() from exc

