"""Unpadded base64url, the one binary-to-text encoding rxfed uses on the wire."""

from __future__ import annotations

import base64
import binascii
import re

import nacl.utils

_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str, *, length: int | None = None) -> bytes:
    """Decode unpadded base64url; ``ValueError`` on anything else or on a wrong length."""
    if not isinstance(text, str) or not _B64URL.match(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - regex guards this
        raise ValueError("not unpadded base64url") from exc
    if b64e(data) != text:
        # Non-canonical trailing bits: two texts must never decode to the same bytes.
        raise ValueError("non-canonical base64url")
    if length is not None and len(data) != length:
        raise ValueError(f"expected {length} bytes, got {len(data)}")
    return data


def b32_code(nbytes: int) -> str:
    """A random code people can type: base32 in groups of four (``ABCD-EFGH-...``)."""
    text = base64.b32encode(nacl.utils.random(nbytes)).decode().rstrip("=")
    return "-".join(text[i : i + 4] for i in range(0, len(text), 4))
