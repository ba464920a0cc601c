"""Signed statements: a JSON body with a ``type``, and an Ed25519 signature over its
canonical bytes. Device certificates, manifests, community events and host stamps are all
statements; the domain prefix and ``type`` keep one kind from being replayed as another."""

from __future__ import annotations

from typing import Any

from rxfed.crypto import BadSignature, SigningKeyPair, b64e, sha256, verify_signature
from rxfed.errors import BadRequest, Forbidden
from rxfed.protocol.canonical import canonical
from rxfed.protocol.schema import anything, b64, fields

DOMAIN = b"rxfed-statement|"
_STATEMENT = {"body": anything, "sig": b64(64)}


def sign_statement(key: SigningKeyPair, body: dict) -> dict:
    """``{"body": body, "sig": ...}``: an Ed25519 signature over the body's canonical bytes."""
    return {"body": body, "sig": b64e(key.sign(DOMAIN + canonical(body)))}


def open_statement(obj: Any, where: str, kind: str, public_key: bytes | None) -> dict:
    """Check shape and ``type``; with ``public_key``, check the signature too (Forbidden)."""
    parsed = fields(obj, where, _STATEMENT)
    body = parsed["body"]
    if not isinstance(body, dict) or body.get("type") != kind:
        raise BadRequest(f"{where} must be a signed {kind}")
    if public_key is not None:
        try:
            verify_signature(public_key, DOMAIN + canonical(body), parsed["sig"])
        except BadSignature:
            raise Forbidden(f"{where}: signature does not verify", code="bad_statement_signature") from None
    return body


def open_statement_by_any(obj: Any, where: str, kind: str, public_keys: list[bytes]) -> dict:
    """:func:`open_statement` under whichever of ``public_keys`` signed it (a node publishes
    several keys while it rotates); Forbidden when none did."""
    for key in public_keys:
        try:
            return open_statement(obj, where, kind, key)
        except Forbidden:
            continue
    raise Forbidden(f"{where}: not signed by any of the expected keys", code="bad_statement_signature")


def statement_hash(obj: dict) -> bytes:
    """SHA-256 of a statement's canonical bytes (body and signature): its identity."""
    return sha256(canonical(obj))
