"""Small validators for protocol objects: exact field sets, typed values, clear messages."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from rxfed.crypto import b64d
from rxfed.errors import BadRequest

Validator = Callable[[Any, str], Any]


def fields(obj: Any, where: str, required: Mapping[str, Validator], optional: Mapping[str, Validator] = {}) -> dict:
    """Validate a JSON object: every required field present, no unknown field; returns the
    validated values (optional fields missing or null are ``None``)."""
    if not isinstance(obj, dict):
        raise BadRequest(f"{where} must be a JSON object")
    for key in obj:
        if key not in required and key not in optional:
            unknown = sorted(k for k in obj if k not in required and k not in optional)
            raise BadRequest(f"{where}: unknown field {unknown[0]!r}", code="unknown_field")
    out = {}
    for name, check in required.items():
        try:
            value = obj[name]
        except KeyError:
            raise BadRequest(f"{where}: missing field {name!r}", code="missing_field") from None
        out[name] = check(value, f"{where}.{name}")
    if optional:
        get = obj.get
        for name, check in optional.items():
            value = get(name)
            out[name] = None if value is None else check(value, f"{where}.{name}")
    return out


def b64(length: int | None = None, *, max_length: int | None = None) -> Validator:
    def check(value: Any, where: str) -> bytes:
        try:
            data = b64d(value, length=length)
        except ValueError as exc:
            raise BadRequest(f"{where}: {exc}") from None
        if max_length is not None and len(data) > max_length:
            raise BadRequest(f"{where}: longer than {max_length} bytes")
        return data

    return check


def integer(lo: int, hi: int) -> Validator:
    def check(value: Any, where: str) -> int:
        if type(value) is int and lo <= value <= hi:  # the usual case, in one test
            return value
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise BadRequest(f"{where} must be an integer from {lo} to {hi}")
        return value

    return check


def text(max_length: int, pattern: str | None = None) -> Validator:
    compiled = re.compile(pattern) if pattern else None

    def check(value: Any, where: str) -> str:
        if not isinstance(value, str) or not value or len(value) > max_length:
            raise BadRequest(f"{where} must be a non-empty string of at most {max_length} characters")
        if compiled and not compiled.fullmatch(value):
            raise BadRequest(f"{where} is not well formed")
        return value

    return check


def const(expected: str) -> Validator:
    def check(value: Any, where: str) -> str:
        if value != expected:
            raise BadRequest(f"{where} must be {expected!r}")
        return value

    return check


def array(item: Validator, max_items: int) -> Validator:
    def check(value: Any, where: str) -> list:
        if not isinstance(value, list) or len(value) > max_items:
            raise BadRequest(f"{where} must be a list of at most {max_items} items")
        return [item(v, f"{where}[{i}]") for i, v in enumerate(value)]

    return check


def mapping(key: Validator, value: Validator, max_items: int) -> Validator:
    def check(obj: Any, where: str) -> dict:
        if not isinstance(obj, dict) or len(obj) > max_items:
            raise BadRequest(f"{where} must be an object of at most {max_items} entries")
        return {key(k, f"{where} key"): value(v, f"{where}[{k!r}]") for k, v in obj.items()}

    return check


def anything(value: Any, where: str) -> Any:
    return value


HEX_ID = r"[0-9a-f]{32}"
