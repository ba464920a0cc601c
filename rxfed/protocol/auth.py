"""Signed HTTP requests: every request to a node is signed by a device, recovery or node key.

The signature covers, as canonical JSON: method, target (path and query), destination node
id, origin node id (server-to-server only), signer key, creation time, a fresh random nonce
and the SHA-256 of the body. The receiver checks each of them; replay protection (the nonce
store) is the caller's, since it is state.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from rxfed.crypto import BadSignature, SigningKeyPair, b64d, b64e, random_bytes, sha256, verify_signature
from rxfed.errors import BadRequest, Unauthorized
from rxfed.protocol.canonical import canonical

VERSION = "rxfed-request-1"
H_KEY = "Rxfed-Key"
H_CREATED = "Rxfed-Created"
H_NONCE = "Rxfed-Nonce"
H_SIGNATURE = "Rxfed-Signature"
H_ORIGIN = "Rxfed-Origin"
NONCE_BYTES = 16
DEFAULT_WINDOW = 300


@attrs.frozen
class SignedRequest:
    """What a request's signature headers claim; verify before trusting any of it."""

    key: bytes
    created: int
    nonce: bytes
    signature: bytes = attrs.field(repr=False)
    origin: str | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> SignedRequest:
        missing = [h for h in (H_KEY, H_CREATED, H_NONCE, H_SIGNATURE) if h not in headers]
        if missing:
            raise Unauthorized(f"request is not signed (missing {missing[0]} header)", code="unsigned")
        try:
            created_text = headers[H_CREATED]
            if not created_text.isascii() or not created_text.isdigit() or len(created_text) > 12:
                raise ValueError("bad time")
            return cls(
                key=b64d(headers[H_KEY], length=32),
                created=int(created_text),
                nonce=b64d(headers[H_NONCE], length=NONCE_BYTES),
                signature=b64d(headers[H_SIGNATURE], length=64),
                origin=headers.get(H_ORIGIN),
            )
        except ValueError:
            raise BadRequest("malformed signature headers", code="bad_signature_headers") from None

    def signing_bytes(self, *, method: str, target: str, destination: str, body: bytes) -> bytes:
        return signing_bytes(
            method=method, target=target, destination=destination, origin=self.origin,
            key=self.key, created=self.created, nonce=self.nonce, body=body,
        )

    def verify(self, public_key: bytes, *, method: str, target: str, destination: str, body: bytes,
               now: int, window: int = DEFAULT_WINDOW) -> SignedRequest:
        """Return self if the signature is valid for this request at time ``now``; else raise
        :class:`Unauthorized`. The nonce must still be checked against the replay store."""
        if abs(now - self.created) > window:
            raise Unauthorized("request time is outside the accepted window; check the clock", code="stale_request")
        message = self.signing_bytes(method=method, target=target, destination=destination, body=body)
        try:
            verify_signature(public_key, message, self.signature)
        except BadSignature:
            raise Unauthorized("bad request signature", code="bad_signature") from None
        return self


def signing_bytes(*, method: str, target: str, destination: str, origin: str | None, key: bytes,
                  created: int, nonce: bytes, body: bytes) -> bytes:
    return canonical({
        "v": VERSION,
        "method": method.upper(),
        "target": target,
        "destination": destination,
        "origin": origin,
        "key": b64e(key),
        "created": created,
        "nonce": b64e(nonce),
        "digest": b64e(sha256(body)),
    })


def sign_request(key: SigningKeyPair, *, method: str, target: str, destination: str, body: bytes,
                 now: int, nonce: bytes | None = None, origin: str | None = None) -> dict[str, str]:
    """The headers that sign this request. A retry must call this again (a fresh nonce)."""
    nonce = random_bytes(NONCE_BYTES) if nonce is None else nonce
    message = signing_bytes(method=method, target=target, destination=destination, origin=origin,
                            key=key.public, created=now, nonce=nonce, body=body)
    headers = {
        H_KEY: b64e(key.public),
        H_CREATED: str(now),
        H_NONCE: b64e(nonce),
        H_SIGNATURE: b64e(key.sign(message)),
    }
    if origin is not None:
        headers[H_ORIGIN] = origin
    return headers
