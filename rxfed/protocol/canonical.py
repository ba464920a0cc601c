"""Canonical JSON (the integer-only subset of RFC 8785 / JCS) and a strict parser.

Canonical form: UTF-8, no insignificant whitespace, object keys sorted by their UTF-16 code
units, strings escaped as ECMAScript ``JSON.stringify`` does, integers only and within
+/-(2**53 - 1). Floats, NaN, duplicate keys and non-string keys are refused, so every value
has exactly one encoding and signatures over it are unambiguous.
"""

from __future__ import annotations

import json
import re
from typing import Any

from rxfed.errors import BadRequest

MAX_SAFE_INTEGER = 2**53 - 1
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


class CanonicalError(BadRequest):
    code = "bad_json"


def _string(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise CanonicalError("integer out of the safe range")
        out.append(str(value))
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    elif isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise CanonicalError("object keys must be strings")
        out.append("{")
        for i, key in enumerate(sorted(value, key=lambda k: k.encode("utf-16-be"))):
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _encode(value[key], out)
        out.append("}")
    else:
        raise CanonicalError(f"{type(value).__name__} has no canonical JSON form")


_FAST = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False)
#: JCS string escaping: the escaper ``_FAST`` uses (``ensure_ascii=False``).
escape_string = json.encoder.encode_basestring
#: ``_FAST``'s C encoder, made once rather than per call as ``JSONEncoder.encode`` does; no
#: circular-reference markers: :func:`_check` has walked the value already (a cycle ends
#: there, in a RecursionError).
_C_ENCODE = (json.encoder.c_make_encoder(None, _FAST.default, escape_string, None, ":", ",", True, False, False)
             if json.encoder.c_make_encoder is not None else None)


def _check(value: Any) -> bool:
    """Raise on anything without a canonical form; True if every key is in the BMP (then
    code point order, which the C encoder sorts by, equals UTF-16 order)."""
    # The exact JSON types first, by identity (one comparison each instead of a chain of
    # isinstance calls: a record write checks about 25 values); subclasses take the general
    # path below.
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return True
    if kind is int:
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise CanonicalError("integer out of the safe range")
        return True
    if kind is dict:
        bmp = True
        for key, item in value.items():
            if type(key) is not str:
                if not isinstance(key, str):
                    raise CanonicalError("object keys must be strings")
            if not key.isascii() and max(key) > "\uffff":
                bmp = False
            kind = type(item)
            if kind is str or item is None:
                continue
            bmp = _check(item) and bmp
        return bmp
    if kind is list or kind is tuple:
        bmp = True
        for item in value:
            bmp = _check(item) and bmp
        return bmp
    return _check_general(value)


def _check_general(value: Any) -> bool:
    if isinstance(value, str) or value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise CanonicalError("integer out of the safe range")
        return True
    if isinstance(value, (list, tuple)):
        bmp = True
        for item in value:
            bmp = _check(item) and bmp
        return bmp
    if isinstance(value, dict):
        bmp = True
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalError("object keys must be strings")
            if not key.isascii() and max(key) > "\uffff":
                bmp = False
            bmp = _check(item) and bmp
        return bmp
    raise CanonicalError(f"{type(value).__name__} has no canonical JSON form")


def canonical(value: Any) -> bytes:
    """The canonical UTF-8 bytes of ``value``."""
    if _check(value):
        # Python's encoder escapes exactly as JCS does (short escapes for \b \f \n \r \t,
        # \u00xx lower-case for other controls, nothing else), so it serves whenever the key
        # order agrees; the tests pin this against the reference encoder below.
        kind = type(value)
        if _C_ENCODE is not None and (kind is dict or kind is list):
            text = "".join(_C_ENCODE(value, 0))
        else:
            text = _FAST.encode(value)
    else:
        out: list[str] = []
        _encode(value, out)
        text = "".join(out)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalError("strings must be valid Unicode (no lone surrogates)") from exc


def reference_canonical(value: Any) -> bytes:
    """The canonical form written out rule by rule (slow); tests compare it with the fast path."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out).encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # a key came twice: name the first one repeated
        seen = set()
        for key, _value in pairs:
            if key in seen:
                raise CanonicalError(f"duplicate key {key!r}")
            seen.add(key)
    return obj


def _no_float(text: str) -> Any:
    raise CanonicalError("numbers must be integers")


def _no_constant(text: str) -> Any:
    raise CanonicalError(f"{text} is not JSON")


def _safe_int(text: str) -> int:
    value = int(text)
    if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        raise CanonicalError("integer out of the safe range")
    return value


#: One strict decoder for every call (``json.loads`` with hooks builds a new one each time).
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_float=_no_float, parse_constant=_no_constant,
                            parse_int=_safe_int)
_SURROGATE_CHECK = json.JSONEncoder(ensure_ascii=False, check_circular=False)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def loads(data: bytes | str) -> Any:
    """Parse JSON strictly: duplicate keys, floats, NaN, unsafe integers, lone surrogates and
    non-UTF-8 are refused."""
    try:
        if isinstance(data, bytes):
            data = data.decode("utf-8")
        if data.startswith("\ufeff"):  # as json.loads refuses it
            raise ValueError("a byte order mark")
        value = _DECODER.decode(data)
        # An escaped lone surrogate parses into a str that cannot be UTF-8 encoded; only a
        # \uD800-\uDFFF escape can make one (raw surrogates are not valid UTF-8).
        if "\\" in data and _SURROGATE_ESCAPE.search(data):  # any escape at all: one fast find first
            _SURROGATE_CHECK.encode(value).encode("utf-8")
    except CanonicalError:
        raise
    except (ValueError, RecursionError) as exc:
        raise CanonicalError("malformed JSON") from exc
    return value
