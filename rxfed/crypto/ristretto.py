"""The ristretto255 group (RFC 9496) for private set intersection: hash to group, keys, exponentiation.

Group operations come from libsodium's ``crypto_core_ristretto255_*`` and
``crypto_scalarmult_ristretto255*`` through the ``rbcl`` bindings; scalars are reduced with
PyNaCl's ``crypto_core_ed25519_scalar_reduce`` (the same group order). What is built here:

* :func:`expand_message_xmd`, RFC 9380 §5.3.1 over SHA-512, and on top of it
  :func:`hash_to_group`, the RFC 9380 suite ``ristretto255_XMD:SHA-512_R255MAP_RO_``: 64
  uniform bytes, then RFC 9496's element derivation (libsodium's
  ``crypto_core_ristretto255_from_hash``). :class:`GroupHasher` is the same function for
  many messages under one DST and one prefix, with the prefix's SHA-512 state computed once.
* :class:`ExponentKey`, a secret non-zero scalar, and its exponentiation of received
  elements, each decoded and checked first (libsodium refuses a non-canonical encoding, and
  the identity is refused here: in a prime-order group every other element generates it).
* :func:`tag`, a keyed BLAKE2b of an element, truncated: what two sides compare instead of
  elements.

The protocol built from these is ``rxfed/protocol/psi.py``; construction and security
argument in ``spec/crypto.md`` §13.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable

import attrs
import nacl.bindings
from rxfed.crypto.errors import CryptoError
from rxfed.crypto.keys import random_bytes

_rbcl = None


def _lib():
    """rbcl, imported on first use: it bundles its own libsodium (and imports doctest, pdb and
    unittest through its dependencies), which a node that never runs a PSI session should not
    carry in memory. rbcl writes that libsodium to a new temporary file at every import (2.8 MB)
    and loads it from there, never removing it; the loaded mapping outlives the file, so the
    file goes at once instead of piling up in the temporary directory, one per process."""
    global _rbcl
    if _rbcl is None:
        import rbcl

        bundled = getattr(rbcl._sodium, "_name", None)
        if (isinstance(bundled, str) and os.path.dirname(bundled) == tempfile.gettempdir()
                and os.path.basename(bundled).startswith("tmp") and bundled.endswith(".so")):
            try:
                os.unlink(bundled)
            except OSError:
                pass
        _rbcl = rbcl
    return _rbcl

POINT_SIZE = 32
SCALAR_SIZE = 32
#: The encoding of the identity element: all zero bytes (RFC 9496 §4.3.2).
IDENTITY = bytes(POINT_SIZE)
#: Bytes of uniform input to RFC 9496's element derivation.
UNIFORM_SIZE = 64

_SHA512_BLOCK = 128
_SHA512_SIZE = 64


class InvalidElement(CryptoError):
    """Bytes that are not the canonical encoding of a ristretto255 element other than the identity."""

    def __init__(self, message: str = "not a ristretto255 element"):
        super().__init__(message)


def expand_message_xmd(msg: bytes, dst: bytes, length: int) -> bytes:
    """RFC 9380 §5.3.1 ``expand_message_xmd`` with SHA-512: ``length`` uniform bytes.

    A DST longer than 255 bytes is replaced by ``SHA-512("H2C-OVERSIZE-DST-" || DST)``
    (§5.3.3)."""
    if not 0 < length <= 255 * _SHA512_SIZE:
        raise ValueError("expand_message_xmd: length out of range")
    return _expand(hashlib.sha512(bytes(_SHA512_BLOCK) + msg), length, _dst_prime(dst))


def _dst_prime(dst: bytes) -> bytes:
    """``DST || I2OSP(len(DST), 1)``, an oversized DST hashed first (RFC 9380 §5.3.3)."""
    if len(dst) > 255:
        dst = hashlib.sha512(b"H2C-OVERSIZE-DST-" + dst).digest()
    return dst + bytes([len(dst)])


def _expand(prefix_state, length: int, dst_prime: bytes) -> bytes:
    """The rest of ``expand_message_xmd`` once ``Z_pad || msg`` is in ``prefix_state``."""
    state = prefix_state
    state.update(length.to_bytes(2, "big") + b"\0" + dst_prime)
    b0 = state.digest()
    b = hashlib.sha512(b0 + b"\x01" + dst_prime).digest()
    out = [b]
    for i in range(2, -(-length // _SHA512_SIZE) + 1):
        b = hashlib.sha512(bytes(x ^ y for x, y in zip(b0, b)) + bytes([i]) + dst_prime).digest()
        out.append(b)
    return b"".join(out)[:length]


def element_from_uniform(data: bytes) -> bytes:
    """RFC 9496 §4.3.4: the element derived from 64 uniform bytes (a one-way map)."""
    if len(data) != UNIFORM_SIZE:
        raise ValueError(f"element derivation takes {UNIFORM_SIZE} bytes")
    return _lib().crypto_core_ristretto255_from_hash(data)


def hash_to_group(msg: bytes, dst: bytes) -> bytes:
    """RFC 9380 ``hash_to_group`` for ristretto255 (suite ``ristretto255_XMD:SHA-512_R255MAP_RO_``)."""
    return element_from_uniform(expand_message_xmd(msg, dst, UNIFORM_SIZE))


class GroupHasher:
    """:func:`hash_to_group` of ``prefix || element`` for many elements under one ``dst``:
    the SHA-512 state after ``Z_pad || prefix`` is computed once and copied per element."""

    def __init__(self, dst: bytes, prefix: bytes = b""):
        self._dst_prime = _dst_prime(dst)
        self._state = hashlib.sha512(bytes(_SHA512_BLOCK) + prefix)

    def __call__(self, element: bytes) -> bytes:
        state = self._state.copy()
        state.update(element)
        return _lib().crypto_core_ristretto255_from_hash(_expand(state, UNIFORM_SIZE, self._dst_prime))

    def many(self, elements: Iterable[bytes]) -> list[bytes]:
        return [self(element) for element in elements]


def is_element(data: bytes) -> bool:
    """Whether ``data`` canonically encodes a ristretto255 element other than the identity."""
    return (isinstance(data, bytes) and len(data) == POINT_SIZE and data != IDENTITY
            and _lib().crypto_core_ristretto255_is_valid_point(data))


def scalar_from_uniform(data: bytes) -> bytes:
    """A scalar from 64 uniform bytes: reduced modulo the group order (bias below 2^-250)."""
    if len(data) != 2 * SCALAR_SIZE:
        raise ValueError(f"a scalar is reduced from {2 * SCALAR_SIZE} bytes")
    return nacl.bindings.crypto_core_ed25519_scalar_reduce(data)


def random_scalar(random: Callable[[int], bytes] = random_bytes) -> bytes:
    """A uniformly random non-zero scalar (``random``: for test vectors only)."""
    while True:
        scalar = scalar_from_uniform(random(2 * SCALAR_SIZE))
        if scalar != bytes(SCALAR_SIZE):
            return scalar


def base_exponentiate(scalar: bytes) -> bytes:
    """``scalar`` times the generator (``crypto_scalarmult_ristretto255_base``)."""
    try:
        return _lib().crypto_scalarmult_ristretto255_base(scalar)
    except (RuntimeError, TypeError) as exc:
        raise ValueError("not a non-zero scalar") from exc


@attrs.frozen
class ExponentKey:
    """A secret exponent for one PSI session: a non-zero scalar, never in ``repr``."""

    scalar: bytes = attrs.field(repr=False)

    @scalar.validator
    def _check(self, attribute, value):
        if not isinstance(value, bytes) or len(value) != SCALAR_SIZE or value == bytes(SCALAR_SIZE):
            raise ValueError("an exponent key is a non-zero 32-byte scalar")

    @classmethod
    def generate(cls, random: Callable[[int], bytes] = random_bytes) -> ExponentKey:
        return cls(random_scalar(random))

    @property
    def public(self) -> bytes:
        """The key times the generator: lets a peer's exponentiation be spot-checked."""
        return base_exponentiate(self.scalar)

    def exponentiate(self, element: bytes) -> bytes:
        """``element`` raised to this key; :class:`InvalidElement` unless ``element`` is
        the canonical encoding of an element other than the identity."""
        if not isinstance(element, bytes) or len(element) != POINT_SIZE or element == IDENTITY:
            raise InvalidElement()
        try:
            return _lib().crypto_scalarmult_ristretto255(self.scalar, element)
        except RuntimeError:
            # libsodium returns -1 for an encoding that does not decode (non-canonical,
            # not on the curve) and for an identity result, which a non-zero scalar gives
            # only for the identity.
            raise InvalidElement() from None

    def exponentiate_many(self, elements: Iterable[bytes]) -> list[bytes]:
        return [self.exponentiate(element) for element in elements]


def tag(key: bytes, element: bytes, *, size: int, person: bytes) -> bytes:
    """BLAKE2b of ``element`` keyed with ``key`` (32 bytes), ``size`` bytes, personalised."""
    return hashlib.blake2b(element, digest_size=size, key=key, person=person).digest()


class Tagger:
    """:func:`tag` for many elements under one key: the keyed state is made once and copied."""

    def __init__(self, key: bytes, *, size: int, person: bytes):
        self._state = hashlib.blake2b(digest_size=size, key=key, person=person)

    def __call__(self, element: bytes) -> bytes:
        state = self._state.copy()
        state.update(element)
        return state.digest()
