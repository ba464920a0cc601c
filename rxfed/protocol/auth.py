"""Signed HTTP requests: every request to a node is signed by a device, recovery or node key.

The signature covers, as canonical JSON: method, target (path and query), destination node
id, origin node id (server-to-server only), signer key, creation time, a fresh random nonce
and the SHA-256 of the body. The receiver checks each of them; replay protection (the nonce
store) is the caller's, since it is state.

The body's SHA-256 also travels in a ``Content-Digest`` header (RFC 9530), so a receiver can
check the signature from the headers alone and read the body only for a request that an
owner of the key signed, then compare its digest (:meth:`SignedRequest.verify_head`).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping

import attrs

from rxfed.crypto import BadSignature, SigningKeyPair, b64d, b64e, random_bytes, sha256, verify_signature
from rxfed.errors import BadRequest, Unauthorized
from rxfed.protocol.canonical import MAX_SAFE_INTEGER, canonical, escape_string

VERSION = "rxfed-request-1"
H_KEY = "Rxfed-Key"
H_CREATED = "Rxfed-Created"
H_NONCE = "Rxfed-Nonce"
H_SIGNATURE = "Rxfed-Signature"
H_ORIGIN = "Rxfed-Origin"
H_DIGEST = "Content-Digest"
#: RFC 9530's ``sha-256=:BASE64:`` member; other algorithms in the header are ignored.
_SHA256_MEMBER = re.compile(r"(?:^|,)\s*sha-256=:([A-Za-z0-9+/]{43}=):\s*(?:$|[,;])")
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
    #: The SHA-256 of the body the ``Content-Digest`` header claims, if it is there.
    digest: bytes | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> SignedRequest:
        get = headers.get
        key_text, created_text, nonce_text, signature_text = get(H_KEY), get(H_CREATED), get(H_NONCE), get(H_SIGNATURE)
        if key_text is None or created_text is None or nonce_text is None or signature_text is None:
            missing = [h for h in (H_KEY, H_CREATED, H_NONCE, H_SIGNATURE) if h not in headers]
            raise Unauthorized(f"request is not signed (missing {missing[0]} header)", code="unsigned")
        try:
            if not created_text.isascii() or not created_text.isdigit() or len(created_text) > 12:
                raise ValueError("bad time")
            return cls(b64d(key_text, length=32), int(created_text), b64d(nonce_text, length=NONCE_BYTES),
                       b64d(signature_text, length=64), get(H_ORIGIN), parse_content_digest(get(H_DIGEST)))
        except ValueError:
            raise BadRequest("malformed signature headers", code="bad_signature_headers") from None

    def signing_bytes(self, *, method: str, target: str, destination: str, body: bytes | None = None,
                      digest: bytes | None = None) -> bytes:
        return signing_bytes(
            method=method, target=target, destination=destination, origin=self.origin,
            key=self.key, created=self.created, nonce=self.nonce, body=body, digest=digest,
        )

    def verify(self, public_key: bytes, *, method: str, target: str, destination: str, body: bytes,
               now: int, window: int = DEFAULT_WINDOW) -> SignedRequest:
        """Return self if the signature is valid for this request at time ``now``; else raise
        :class:`Unauthorized`. The nonce must still be checked against the replay store."""
        if abs(now - self.created) > window:
            raise Unauthorized("request time is outside the accepted window; check the clock", code="stale_request")
        return self._check(public_key, self.signing_bytes(method=method, target=target, destination=destination,
                                                          body=body))

    def verify_head(self, public_key: bytes, *, method: str, target: str, destination: str, now: int,
                    window: int = DEFAULT_WINDOW) -> SignedRequest:
        """Like :meth:`verify`, over the digest the ``Content-Digest`` header claims instead of
        the body, which is not read yet; the caller then reads the body and checks it with
        :meth:`check_body`."""
        if self.digest is None:
            raise Unauthorized("request has no Content-Digest header", code="unsigned")
        if abs(now - self.created) > window:
            raise Unauthorized("request time is outside the accepted window; check the clock", code="stale_request")
        return self._check(public_key, signing_bytes(method=method, target=target, destination=destination,
                                                     origin=self.origin, key=self.key, created=self.created,
                                                     nonce=self.nonce, digest=self.digest))

    def check_body(self, body: bytes) -> bytes:
        """``body`` if it is the one whose digest :meth:`verify_head` checked."""
        if sha256(body) != self.digest:
            raise Unauthorized("the body does not match its signed Content-Digest", code="bad_signature")
        return body

    def _check(self, public_key: bytes, message: bytes) -> SignedRequest:
        try:
            verify_signature(public_key, message, self.signature)
        except BadSignature:
            raise Unauthorized("bad request signature", code="bad_signature") from None
        return self


def parse_content_digest(value: str | None) -> bytes | None:
    """The SHA-256 in a ``Content-Digest`` header (RFC 9530), None without a ``sha-256``
    member; a malformed one is a :class:`ValueError`."""
    if value is None:
        return None
    match = _SHA256_MEMBER.search(value)
    if match is None:
        if "sha-256" in value:
            raise ValueError("bad Content-Digest")
        return None
    try:  # the pattern admits only the 44 characters of 32 bytes in standard base64
        return binascii.a2b_base64(match.group(1), strict_mode=True)
    except binascii.Error:
        raise ValueError("bad Content-Digest") from None


def content_digest(body: bytes) -> str:
    return f"sha-256=:{base64.b64encode(sha256(body)).decode()}:"


#: The canonical form of the object below, keys in their sorted order, for the usual case.
_SIGNING_TEMPLATE = ('{"created":%d,"destination":%s,"digest":"%s","key":"%s","method":%s,"nonce":"%s",'
                     '"origin":%s,"target":%s,"v":"' + VERSION + '"}')


def signing_bytes(*, method: str, target: str, destination: str, origin: str | None, key: bytes,
                  created: int, nonce: bytes, body: bytes | None = None, digest: bytes | None = None) -> bytes:
    """The canonical JSON of the signed fields (see :func:`_signing_object`). Written out
    directly when every field has its usual type (text, an integer time in the safe range):
    the same bytes (tests/test_protocol.py compares them), without building and walking an
    object on every request."""
    if (type(method) is str and type(target) is str and type(destination) is str
            and (origin is None or type(origin) is str) and type(created) is int
            and -MAX_SAFE_INTEGER <= created <= MAX_SAFE_INTEGER):
        text = _SIGNING_TEMPLATE % (
            created, escape_string(destination), b64e(sha256(body) if digest is None else digest), b64e(key),
            escape_string(method.upper()), b64e(nonce), "null" if origin is None else escape_string(origin),
            escape_string(target))
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate: canonical() refuses it as it refuses it anywhere
    return canonical(_signing_object(method=method, target=target, destination=destination, origin=origin, key=key,
                                     created=created, nonce=nonce, body=body, digest=digest))


def _signing_object(*, method: str, target: str, destination: str, origin: str | None, key: bytes,
                    created: int, nonce: bytes, body: bytes | None = None, digest: bytes | None = None) -> dict:
    return {
        "v": VERSION,
        "method": method.upper(),
        "target": target,
        "destination": destination,
        "origin": origin,
        "key": b64e(key),
        "created": created,
        "nonce": b64e(nonce),
        "digest": b64e(sha256(body) if digest is None else digest),
    }


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
        H_DIGEST: content_digest(body),
    }
    if origin is not None:
        headers[H_ORIGIN] = origin
    return headers
