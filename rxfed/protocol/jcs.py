"""The JSON Canonicalization Scheme (RFC 8785) in full, for W3C credentials, and their parser.

rxfed's own canonical JSON (:mod:`rxfed.protocol.canonical`) is RFC 8785 restricted to
integers: on every value it accepts it gives exactly the JCS bytes (a test compares the two),
but it refuses floats. A credential from another issuer may carry any JSON number, and the
``eddsa-jcs-2022`` cryptosuite signs its full JCS form, so credentials are canonicalised by
the ``rfc8785`` package (a complete, maintained implementation, checked here against RFC
8785's own examples in ``tests/test_credentials.py``).
"""

from __future__ import annotations

import json
from typing import Any

import rfc8785

from rxfed.protocol.canonical import CanonicalError, _no_constant, _no_duplicates

#: Most bytes a credential document may have (a status list credential is the largest:
#: a 16 KB bitstring compresses to a few hundred bytes, but a list with many revocations
#: does not compress; 2^20 bits stay below 200 KB in base64url).
MAX_DOCUMENT_BYTES = 256 * 1024


class JcsError(CanonicalError):
    """No canonical form, or not JSON at all (``400 bad_json``, as rxfed's own parser says)."""


def jcs(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of ``value``; :class:`JcsError` when it has none
    (NaN or infinite numbers, integers beyond ±(2^53−1), lone surrogates, non-string keys)."""
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, RecursionError, ValueError, TypeError) as exc:
        raise JcsError(f"no JSON canonical form: {exc}") from None


def load_document(data: bytes | str) -> Any:
    """Parse a credential strictly: UTF-8 JSON of at most :data:`MAX_DOCUMENT_BYTES`,
    without duplicate keys, NaN or Infinity, and with a JCS form (checked here, so a value
    that parses but cannot be canonicalised is refused at the door)."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if len(data) > MAX_DOCUMENT_BYTES:
        raise JcsError(f"a credential document is at most {MAX_DOCUMENT_BYTES} bytes")
    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except CanonicalError as exc:
        raise JcsError(exc.message) from None
    except (ValueError, RecursionError) as exc:
        raise JcsError("malformed JSON") from exc
    jcs(value)
    return value
