"""Unpadded base64url, the one binary-to-text encoding rxfed uses on the wire."""

from __future__ import annotations

import base64
import binascii

import nacl.utils

#: base64url to standard base64 for ``binascii``; '+', '/' and '=' are not base64url, so
#: they become '*', which the strict decoder refuses.
_TO_STD = bytes.maketrans(b"-_+/=", b"+/***")
_TO_URL = bytes.maketrans(b"+/", b"-_")
_PAD = (b"", None, b"==", b"=")  # by length mod 4; one character more than a group is never valid
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
#: Last characters with bits set that decoding drops (4 bits after 2 characters of a
#: group, 2 bits after 3): such a text is not the encoding of any bytes.
_LOOSE_AFTER_2 = frozenset(c for i, c in enumerate(_ALPHABET) if i & 0xF)
_LOOSE_AFTER_3 = frozenset(c for i, c in enumerate(_ALPHABET) if i & 0x3)


def b64e(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).translate(_TO_URL).rstrip(b"=").decode("ascii")


def b64d(text: str, *, length: int | None = None) -> bytes:
    """Decode unpadded base64url; ``ValueError`` on anything else or on a wrong length.

    Exactly one text decodes to given bytes: no padding, no other alphabet, no whitespace,
    no set bits after the last byte (``b64e(b64d(t)) == t`` for every accepted ``t``)."""
    if not isinstance(text, str):
        raise ValueError("not unpadded base64url")
    rest = len(text) & 3
    pad = _PAD[rest]
    if pad is None or not text.isascii():
        raise ValueError("not unpadded base64url")
    if rest and text[-1] in (_LOOSE_AFTER_2 if rest == 2 else _LOOSE_AFTER_3):
        # Non-canonical trailing bits: two texts must never decode to the same bytes.
        raise ValueError("non-canonical base64url")
    try:
        data = binascii.a2b_base64(text.encode("ascii").translate(_TO_STD) + pad, strict_mode=True)
    except binascii.Error:
        raise ValueError("not unpadded base64url") from None
    if length is not None and len(data) != length:
        raise ValueError(f"expected {length} bytes, got {len(data)}")
    return data


def b32_code(nbytes: int) -> str:
    """A random code people can type: base32 in groups of four (``ABCD-EFGH-...``)."""
    text = base64.b32encode(nacl.utils.random(nbytes)).decode().rstrip("=")
    return "-".join(text[i : i + 4] for i in range(0, len(text), 4))
