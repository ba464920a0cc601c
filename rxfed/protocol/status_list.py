"""Revocation through a W3C Bitstring Status List (W3C vc-bitstring-status-list 1.0).

An issuer keeps one bit per credential, at an index it drew at random when it issued the
credential; a set bit means revoked. It publishes the whole bitstring, GZIP-compressed and
in base64url multibase, inside a ``BitstringStatusListCredential`` it signs like any other
credential. Every list has at least 131,072 bits, so that fetching it tells the issuer
nothing about which credential is being checked (herd privacy), and most of them are zero,
so it compresses to a few hundred bytes. Pure functions; the node publishes, verifiers fetch.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Callable, Container
from typing import Any

import attrs

from rxfed.crypto.multikey import base64url_decode, base64url_encode
from rxfed.protocol.data_integrity import (
    CredentialExpired,
    CredentialNotYetValid,
    CredentialRevoked,
    Issuer,
    IssuerKeys,
    MalformedCredential,
    StatusUnavailable,
    WrongIssuer,
    add_proof,
    format_time,
    parse_time,
    verify_proof,
)

VC_CONTEXT = "https://www.w3.org/ns/credentials/v2"
ENTRY_TYPE = "BitstringStatusListEntry"
LIST_TYPE = "BitstringStatusList"
LIST_CREDENTIAL_TYPE = "BitstringStatusListCredential"
REVOCATION = "revocation"
#: The specification's minimum, 16 KB of bits.
MIN_BITS = 131_072
#: The largest list a verifier decompresses (1 MiB of bits, eight million credentials):
#: a bound on what a hostile list can make it allocate.
MAX_BITS = 2**23
#: How long a published list is valid: how long a stale copy can hide a revocation.
LIST_VALIDITY = 86400
#: The longest a verifier accepts a list to be valid (validFrom to validUntil): what bounds the
#: lists a retired key could still sign, as MAX_VALIDITY does for credentials.
MAX_LIST_VALIDITY = 7 * 86400
#: When verifiers should fetch the list again (``ttl``, and the reply's Cache-Control), seconds.
LIST_TTL = 3600
#: The media type of a credential secured with an embedded proof (VC 2.0 §6.1), for the
#: reply that publishes a list.
MEDIA_TYPE = "application/vc"
_INDEX = re.compile(r"0|[1-9][0-9]{0,15}")


@attrs.frozen
class Bitstring:
    """A status bitstring: index 0 is the most significant bit of the first byte."""

    data: bytes

    @classmethod
    def empty(cls, size: int = MIN_BITS) -> Bitstring:
        if size < MIN_BITS or size % 8 or size > MAX_BITS:
            raise ValueError(f"a status list has a multiple of 8 bits, from {MIN_BITS} to {MAX_BITS}")
        return cls(bytes(size // 8))

    @property
    def size(self) -> int:
        return len(self.data) * 8

    def _check(self, index: int) -> None:
        if not isinstance(index, int) or not 0 <= index < self.size:
            raise IndexError(f"index {index!r} is outside a list of {self.size} bits")

    def get(self, index: int) -> bool:
        self._check(index)
        return bool(self.data[index // 8] & (0x80 >> (index % 8)))

    def with_bit(self, index: int, value: bool = True) -> Bitstring:
        self._check(index)
        data = bytearray(self.data)
        mask = 0x80 >> (index % 8)
        data[index // 8] = data[index // 8] | mask if value else data[index // 8] & ~mask
        return Bitstring(bytes(data))

    def encode(self) -> str:
        """``encodedList``: base64url multibase of the GZIP of the bits (modification time 0,
        so the same bits always give the same text)."""
        return base64url_encode(gzip.compress(self.data, compresslevel=9, mtime=0))

    @classmethod
    def decode(cls, text: Any) -> Bitstring:
        """The bits of an ``encodedList``; StatusUnavailable when it is not one, is shorter
        than the minimum or would decompress beyond :data:`MAX_BITS`."""
        try:
            compressed = base64url_decode(text)
        except ValueError as exc:
            raise StatusUnavailable(f"the status list's encodedList is not base64url multibase: {exc}") from None
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # GZIP framing only
        try:
            data = inflater.decompress(compressed, MAX_BITS // 8 + 1)
            complete = inflater.eof and not inflater.unconsumed_tail and not inflater.unused_data
        except zlib.error:
            raise StatusUnavailable("the status list's encodedList is not GZIP data") from None
        if len(data) > MAX_BITS // 8:
            raise StatusUnavailable(f"the status list has more than {MAX_BITS} bits")
        if not complete:
            raise StatusUnavailable("the status list's GZIP data is truncated or followed by other data")
        if len(data) * 8 < MIN_BITS:
            raise StatusUnavailable(f"the status list has {len(data) * 8} bits, fewer than the minimum {MIN_BITS}")
        return cls(data)


@attrs.frozen
class StatusEntry:
    """A credential's ``credentialStatus``: which bit of which list says whether it stands."""

    list_url: str
    index: int
    purpose: str = REVOCATION

    def to_json(self) -> dict:
        return {"id": f"{self.list_url}#{self.index}", "type": ENTRY_TYPE, "statusPurpose": self.purpose,
                "statusListIndex": str(self.index), "statusListCredential": self.list_url}

    @classmethod
    def from_json(cls, obj: Any) -> StatusEntry:
        if not isinstance(obj, dict) or obj.get("type") != ENTRY_TYPE:
            raise MalformedCredential(f"credentialStatus must be one {ENTRY_TYPE}")
        if "statusSize" in obj and obj["statusSize"] != 1:
            raise MalformedCredential("only one-bit status entries are understood (statusSize 1)")
        purpose, index, url = obj.get("statusPurpose"), obj.get("statusListIndex"), obj.get("statusListCredential")
        if purpose != REVOCATION:
            raise MalformedCredential(f"the status purpose must be {REVOCATION!r}")
        if not isinstance(index, str) or not _INDEX.fullmatch(index):
            raise MalformedCredential("statusListIndex must be a non-negative integer written as a base-10 string")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")) or len(url) > 2048:
            raise MalformedCredential("statusListCredential must be an http(s) URL")
        return cls(url, int(index), purpose)


def random_index(taken: Container[int], size: int, draw: Callable[[int], int], *, tries: int = 64) -> int:
    """A free index of a list of ``size`` bits, drawn uniformly with ``draw(n)`` (a CSPRNG's
    ``randbelow``), so an index says nothing of when its credential was issued or how many
    there are. ValueError when ``tries`` draws find only taken ones (the list is full enough
    that the issuer should open a new one)."""
    for _ in range(tries):
        index = draw(size)
        if index not in taken:
            return index
    raise ValueError(f"no free index found in {tries} draws: start a new status list")


def status_list_credential(issuer: Issuer, list_url: str, bits: Bitstring, *, valid_from: int,
                           valid_until: int | None = None, purpose: str = REVOCATION) -> dict:
    """The signed ``BitstringStatusListCredential`` the issuer publishes at ``list_url``.
    ``valid_until`` bounds how long a stale copy can hide a revocation: verifiers refuse
    the list after it (default: :data:`LIST_VALIDITY` after ``valid_from``)."""
    if valid_until is None:
        valid_until = valid_from + LIST_VALIDITY
    document = {
        "@context": [VC_CONTEXT],
        "id": list_url,
        "type": ["VerifiableCredential", LIST_CREDENTIAL_TYPE],
        "issuer": issuer.did,
        "validFrom": format_time(valid_from),
        "validUntil": format_time(valid_until),
        "credentialSubject": {"id": f"{list_url}#list", "type": LIST_TYPE, "statusPurpose": purpose,
                              "encodedList": bits.encode(), "ttl": LIST_TTL * 1000},
    }
    return add_proof(document, issuer.key, verification_method=issuer.verification_method, created=valid_from)


def publication_headers() -> dict[str, str]:
    """The headers of the reply that serves a status list credential (its body is the
    credential's JCS bytes): the media type, and caching aligned with ``ttl``."""
    return {"Content-Type": MEDIA_TYPE, "Cache-Control": f"public, max-age={LIST_TTL}"}


def verify_status_list(document: Any, keys: IssuerKeys, entry: StatusEntry, *, now: int) -> Bitstring:
    """The bits of a status list credential, checked for ``entry``: signed by the issuer of
    ``keys``, the list ``entry`` names, its purpose, in its validity period, long enough and
    holding ``entry.index``. StatusUnavailable (or the proof's own error) otherwise."""
    try:
        verified = verify_proof(document, keys.public_key_for, now=now)
    except MalformedCredential as exc:
        raise StatusUnavailable(f"the status list is malformed: {exc.message}") from None
    doc = verified.document
    types = doc.get("type")
    if not isinstance(types, list) or LIST_CREDENTIAL_TYPE not in types:
        raise StatusUnavailable(f"the status list is not a {LIST_CREDENTIAL_TYPE}")
    if doc.get("issuer") != keys.issuer:
        raise WrongIssuer(f"the status list is issued by {doc.get('issuer')!r}, not by {keys.issuer}")
    if doc.get("id") != entry.list_url:
        raise StatusUnavailable(f"the status list is {doc.get('id')!r}, not the {entry.list_url} the credential names")
    try:
        if "validFrom" not in doc or "validUntil" not in doc:
            raise MalformedCredential("the status list names no validity period (validFrom, validUntil)")
        valid_from, valid_until = parse_time(doc["validFrom"], "validFrom"), parse_time(doc["validUntil"], "validUntil")
        # As for credentials: the key is checked at the proof's ``created``, so it must be
        # validFrom, and the period is bounded, or a retired key could sign a list that hides
        # revocations for years.
        if verified.created != valid_from:
            raise MalformedCredential("the status list's proof must be created at its validFrom")
        if not 0 < valid_until - valid_from <= MAX_LIST_VALIDITY:
            raise MalformedCredential(f"a status list is valid for at most {MAX_LIST_VALIDITY // 86400} days")
        if now < valid_from:
            raise CredentialNotYetValid("the status list is not valid yet")
        if now > valid_until:
            raise CredentialExpired("the status list has expired: fetch a fresh one")
    except (CredentialNotYetValid, CredentialExpired, MalformedCredential) as exc:
        raise StatusUnavailable(exc.message) from None
    subject = doc.get("credentialSubject")
    if not isinstance(subject, dict) or subject.get("type") != LIST_TYPE:
        raise StatusUnavailable(f"the status list's subject is not a {LIST_TYPE}")
    purposes = subject.get("statusPurpose")
    purposes = purposes if isinstance(purposes, list) else [purposes]
    if entry.purpose not in purposes:
        raise StatusUnavailable(f"the status list is not for {entry.purpose}")
    bits = Bitstring.decode(subject.get("encodedList"))
    if entry.index >= bits.size:
        raise StatusUnavailable(f"index {entry.index} is outside the status list's {bits.size} bits")
    return bits


def check_status(entry: StatusEntry, bits: Bitstring) -> None:
    """CredentialRevoked when the entry's bit is set."""
    if bits.get(entry.index):
        raise CredentialRevoked("the issuer has revoked this credential")
