"""Clinician credentials: W3C Verifiable Credentials 2.0 a hospital node issues for its staff.

A credential binds the clinician's own Ed25519 key (``credentialSubject.id``, a ``did:key``)
to a role and a specialty (a NUCC Health Care Provider Taxonomy code), names the issuing
node (``issuer``, a ``did:web``) and its validity (``validFrom``/``validUntil``), points to
its bit in the issuer's revocation list (``credentialStatus``), and is secured with an
``eddsa-jcs-2022`` Data Integrity proof by the node's identity key, so any verifier checks
it offline against the keys the node publishes (spec/crypto.md §12).

Selective disclosure is by **derived credentials**: at issuance the node signs one
credential per disclosure profile (:data:`PROFILES`), each with only that profile's
claims, all sharing one status bit. The clinician attaches the one that shows what they
choose (``badge``: role, specialty and hospital; ``role``: only that they are a clinician
of the hospital); the name and NPI are only ever in the ``full`` one.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from rxfed.crypto.multikey import ed25519_from_multikey, ed25519_multikey
from rxfed.errors import BadRequest
from rxfed.protocol.data_integrity import (
    CredentialError,
    CredentialExpired,
    CredentialNotYetValid,
    Issuer,
    IssuerKeys,
    IssuerKeysNeeded,
    MalformedCredential,
    StatusUnavailable,
    WrongIssuer,
    add_proof,
    format_time,
    node_of_did,
    parse_time,
    verify_proof,
)
from rxfed.protocol.status_list import VC_CONTEXT, StatusEntry, check_status, verify_status_list

CREDENTIAL_TYPE = "ClinicianCredential"
#: The roles a hospital vouches for.
ROLES = ("physician", "nurse", "nurse-practitioner", "physician-assistant", "pharmacist", "psychologist",
         "dietitian", "therapist", "social-worker", "midwife")
#: What each profile discloses besides the clinician's key, the issuer and the validity.
PROFILES: dict[str, tuple[str, ...]] = {
    "badge": ("role", "specialty"),
    "role": ("role",),
    "full": ("role", "specialty", "name", "npi"),
}
#: NUCC Health Care Provider Taxonomy code: ten characters, three digits, six digits or
#: capital letters, and a final ``X`` (e.g. ``207RE0101X``, endocrinology).
NUCC_TAXONOMY = re.compile(r"[0-9]{3}[0-9A-Z]{6}X")
NPI_FORMAT = re.compile(r"[12][0-9]{9}")
#: The longest a credential may be valid: a hospital re-issues at least yearly.
MAX_VALIDITY = 400 * 86400


class BadClinician(BadRequest):
    code = "bad_clinician"


class StatusListNeeded(CredentialError):
    """Not a refusal: fetch the status list at ``url`` (from the issuing node) and verify again."""

    status = 424
    code = "need_status_list"

    def __init__(self, url: str):
        super().__init__(f"the status list {url} is needed to check this credential")
        self.url = url


# -- codes ------------------------------------------------------------------------------------


def npi_check_digit(first_nine: str) -> int:
    """The NPI check digit of nine digits: Luhn (ISO/IEC 7812) over ``80840`` followed by
    them, the prefix that makes an NPI a card number of the health industry (CMS, "Requirements
    for the NPI check digit")."""
    if not re.fullmatch(r"[0-9]{9}", first_nine):
        raise ValueError("nine digits are needed")
    total = 0
    # Digits from the right of the number without its check digit: every other one doubled,
    # starting with the rightmost.
    for position, digit in enumerate(reversed("80840" + first_nine)):
        d = int(digit)
        if position % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return (10 - total % 10) % 10


def npi_valid(value: Any) -> bool:
    """Whether ``value`` is a well-formed NPI: ten digits, the first 1 or 2, and a correct
    check digit. (Whether the number is assigned is a registry's question.)"""
    return (isinstance(value, str) and NPI_FORMAT.fullmatch(value) is not None
            and npi_check_digit(value[:9]) == int(value[9]))


def nucc_valid(value: Any) -> bool:
    return isinstance(value, str) and NUCC_TAXONOMY.fullmatch(value) is not None


def did_key(public_key: bytes) -> str:
    """The ``did:key`` of an Ed25519 public key: how a credential names its clinician."""
    return "did:key:" + ed25519_multikey(public_key)


def key_of_did(did: Any) -> bytes:
    if not isinstance(did, str) or not did.startswith("did:key:"):
        raise MalformedCredential("credentialSubject.id must be the did:key of the clinician's Ed25519 key")
    try:
        return ed25519_from_multikey(did[len("did:key:"):])
    except ValueError as exc:
        raise MalformedCredential(f"credentialSubject.id is not an Ed25519 did:key: {exc}") from None


def _label(value: Any, where: str, max_length: int = 200) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > max_length or not value.isprintable():
        raise BadClinician(f"{where} must be printable text of 1 to {max_length} characters")
    return value


# -- what a hospital vouches for ----------------------------------------------------------


@attrs.frozen
class Clinician:
    """A clinician as the hospital vouches for them. ``staff_id`` is the hospital's own
    reference (for its directory and verification backends) and is never in a credential."""

    public_key: bytes
    role: str
    specialty: str
    specialty_name: str
    name: str | None = None
    npi: str | None = None
    staff_id: str | None = None

    @classmethod
    def create(cls, public_key: bytes, role: str, specialty: str, specialty_name: str, *, name: str | None = None,
               npi: str | None = None, staff_id: str | None = None) -> Clinician:
        """A validated clinician; BadClinician with the reason otherwise."""
        if not isinstance(public_key, bytes) or len(public_key) != 32:
            raise BadClinician("the clinician's key is a 32-byte Ed25519 public key")
        if role not in ROLES:
            raise BadClinician(f"role must be one of {', '.join(ROLES)}")
        if not nucc_valid(specialty):
            raise BadClinician(f"specialty {specialty!r} is not a NUCC taxonomy code (ten characters: three digits, "
                               "six digits or capital letters, then X, e.g. 207RE0101X)")
        _label(specialty_name, "the specialty's name", 100)
        if name is not None:
            _label(name, "the name")
        if npi is not None and not npi_valid(npi):
            raise BadClinician(f"{npi!r} is not a valid NPI (ten digits, first 1 or 2, Luhn check digit over 80840 "
                               "and the first nine)")
        if staff_id is not None:
            _label(staff_id, "the staff id", 100)
        return cls(public_key, role, specialty, specialty_name, name, npi, staff_id)


def _subject(clinician: Clinician, profile: str) -> dict:
    claims = PROFILES[profile]
    subject: dict[str, Any] = {"id": did_key(clinician.public_key)}
    if "role" in claims:
        subject["role"] = clinician.role
    if "specialty" in claims:
        subject["specialty"] = {"code": clinician.specialty, "name": clinician.specialty_name}
    if "name" in claims and clinician.name is not None:
        subject["name"] = clinician.name
    if "npi" in claims and clinician.npi is not None:
        subject["npi"] = clinician.npi
    return subject


def new_credential_id() -> str:
    """A fresh random ``urn:uuid:`` (for callers; the core takes ids as parameters)."""
    return f"urn:uuid:{uuid.uuid4()}"


def issue(issuer: Issuer, clinician: Clinician, *, valid_from: int, valid_until: int, status: StatusEntry,
          credential_id: str, profile: str = "badge") -> dict:
    """The signed credential of one disclosure ``profile`` for ``clinician``."""
    if profile not in PROFILES:
        raise BadClinician(f"profile must be one of {', '.join(PROFILES)}")
    if not 0 < valid_until - valid_from <= MAX_VALIDITY:
        raise BadClinician(f"a credential is valid for more than no time and at most {MAX_VALIDITY // 86400} days")
    document = {
        "@context": [VC_CONTEXT],
        "id": credential_id,
        "type": ["VerifiableCredential", CREDENTIAL_TYPE],
        "issuer": {"id": issuer.did, "name": issuer.name},
        "validFrom": format_time(valid_from),
        "validUntil": format_time(valid_until),
        "credentialSubject": _subject(clinician, profile),
        "credentialStatus": status.to_json(),
    }
    return add_proof(document, issuer.key, verification_method=issuer.verification_method, created=valid_from)


def issue_profiles(issuer: Issuer, clinician: Clinician, *, valid_from: int, valid_until: int, status: StatusEntry,
                   new_id: Callable[[], str], profiles: tuple[str, ...] = tuple(PROFILES)) -> dict[str, dict]:
    """One credential per disclosure profile, all revoked by the one status bit."""
    return {p: issue(issuer, clinician, valid_from=valid_from, valid_until=valid_until, status=status, profile=p,
                     credential_id=new_id()) for p in profiles}


# -- what a verifier learns ---------------------------------------------------------------


@attrs.frozen
class VerifiedClinician:
    """A credential that verified: who vouches (``issuer``, ``issuer_node``, ``issuer_name``)
    for which key, and what it discloses (None: not disclosed by this credential)."""

    credential_id: str
    issuer: str
    issuer_node: str
    issuer_name: str | None
    clinician_key: bytes
    role: str | None
    specialty: str | None
    specialty_name: str | None
    name: str | None
    npi: str | None
    valid_from: int
    valid_until: int
    status: StatusEntry

    def badge(self) -> str:
        """What a reader is shown, e.g. ``verified physician, Endocrinology, Hospital A
        (hospital-a.example)``. The node id is always there: the name is the issuer's own
        word, the node id is who signed."""
        parts = [f"verified {self.role}" if self.role else "verified clinician"]
        if self.specialty_name:
            parts.append(self.specialty_name)
        parts.append(f"{self.issuer_name} ({self.issuer_node})" if self.issuer_name else self.issuer_node)
        return ", ".join(parts)


def _shown(value: Any, where: str, max_length: int) -> str:
    """Text a reader will see: printable (no control or bidirectional-override characters that
    could disguise it), 1 to ``max_length`` characters."""
    if not isinstance(value, str) or not value.strip() or len(value) > max_length or not value.isprintable():
        raise MalformedCredential(f"{where} must be printable text of 1 to {max_length} characters")
    return value


def _issuer_of(doc: dict) -> tuple[str, str | None]:
    issuer = doc.get("issuer")
    name = None
    if isinstance(issuer, dict):
        if issuer.get("name") is not None:
            name = _shown(issuer["name"], "issuer.name", 200)
        issuer = issuer.get("id")
    if not isinstance(issuer, str):
        raise MalformedCredential("the credential names no issuer")
    return issuer, name


def _shape(doc: Any) -> None:
    """The parts of a clinician credential that must be there before anything is checked."""
    if not isinstance(doc, dict):
        raise MalformedCredential("a credential must be a JSON object")
    context = doc.get("@context")
    if not isinstance(context, list) or not context or context[0] != VC_CONTEXT:
        raise MalformedCredential(f"a Verifiable Credential 2.0 starts its @context with {VC_CONTEXT}")
    types = doc.get("type")
    if not isinstance(types, list) or "VerifiableCredential" not in types or CREDENTIAL_TYPE not in types:
        raise MalformedCredential(f"the credential's type must include VerifiableCredential and {CREDENTIAL_TYPE}")
    if not isinstance(doc.get("id"), str):
        raise MalformedCredential("the credential has no id")
    for field in ("validFrom", "validUntil"):
        if field not in doc:
            raise MalformedCredential(f"a clinician credential must state {field}")
        parse_time(doc[field], field)
    if not isinstance(doc.get("credentialSubject"), dict):
        raise MalformedCredential("credentialSubject must be one object")


def verify(document: Any, *, issuers: Mapping[str, IssuerKeys], now: int, status_lists: Mapping[str, Any],
           expected_issuer: str | None = None) -> VerifiedClinician:
    """Verify a clinician credential completely; the :class:`VerifiedClinician`, or the reason.

    ``issuers`` maps issuer ``did:web`` identifiers to the keys the verifier trusts for them
    (fetched from each issuing node itself); ``status_lists`` maps status list URLs to the
    documents fetched from there. Raises, in this order of checks: MalformedCredential,
    WrongIssuer (not ``expected_issuer``), IssuerKeysNeeded (fetch and call again),
    WrongCryptosuite, WrongIssuer (signed by another's key), UnknownIssuerKey, BadProof
    (forged or tampered), CredentialNotYetValid, CredentialExpired, StatusListNeeded (fetch
    and call again), StatusUnavailable, CredentialRevoked.
    """
    _shape(document)
    issuer, issuer_name = _issuer_of(document)
    node = node_of_did(issuer)
    if expected_issuer is not None and issuer != expected_issuer:
        raise WrongIssuer(f"the credential is issued by {issuer}, not by {expected_issuer}")
    keys = issuers.get(issuer)
    if keys is None:
        raise IssuerKeysNeeded(issuer)
    verified = verify_proof(document, keys.public_key_for, now=now)
    doc = verified.document
    valid_from = parse_time(doc["validFrom"], "validFrom")
    valid_until = parse_time(doc["validUntil"], "validUntil")
    # What bounds the credentials a key can make after it is retired: the key is checked at
    # the proof's ``created``, which is ``validFrom`` (spec/crypto.md §12.1), and a credential
    # is valid at most MAX_VALIDITY from then. Without both, whoever kept a retired key could
    # date a proof inside the key's validity and the credential's end years later.
    if verified.created != valid_from:
        raise MalformedCredential("the proof must be created at the credential's validFrom")
    if not 0 < valid_until - valid_from <= MAX_VALIDITY:
        raise MalformedCredential(f"a credential is valid for more than no time and at most "
                                  f"{MAX_VALIDITY // 86400} days (validFrom to validUntil)")
    if now < valid_from:
        raise CredentialNotYetValid(f"the credential is valid from {doc['validFrom']}")
    if now > valid_until:
        raise CredentialExpired(f"the credential expired at {doc['validUntil']}")
    subject = doc["credentialSubject"]
    clinician_key = key_of_did(subject.get("id"))
    role, specialty, specialty_name = subject.get("role"), None, None
    if role is not None and role not in ROLES:
        raise MalformedCredential(f"the role {role!r} is not one rxfed knows")
    if "specialty" in subject:
        s = subject["specialty"]
        if not isinstance(s, dict) or not nucc_valid(s.get("code")):
            raise MalformedCredential("specialty must be {code: a NUCC taxonomy code, name: text}")
        specialty, specialty_name = s["code"], _shown(s.get("name"), "specialty.name", 100)
    npi = subject.get("npi")
    if npi is not None and not npi_valid(npi):
        raise MalformedCredential("the credential's NPI fails its check digit")
    name = None if subject.get("name") is None else _shown(subject["name"], "the clinician's name", 200)
    if "credentialStatus" not in doc:
        raise MalformedCredential("a clinician credential must carry its revocation status entry")
    entry = StatusEntry.from_json(doc["credentialStatus"])
    if not _served_by(entry.list_url, node):
        raise StatusUnavailable(f"the status list {entry.list_url} is not on the issuing node {node}")
    if entry.list_url not in status_lists:
        raise StatusListNeeded(entry.list_url)
    check_status(entry, verify_status_list(status_lists[entry.list_url], keys, entry, now=now))
    return VerifiedClinician(doc["id"], issuer, node, issuer_name, clinician_key, role, specialty, specialty_name,
                             name, npi, valid_from, valid_until, entry)


def _served_by(url: str, node: str) -> bool:
    """A verifier fetches status lists only from the node that issued the credential, so a
    credential cannot send it to another address."""
    return url.startswith((f"https://{node}/", f"http://{node}/")) and ("http://" not in url or _loopback(node))


def _loopback(node: str) -> bool:
    host = node[1:node.index("]")] if node.startswith("[") else node.rsplit(":", 1)[0]
    return host in ("localhost", "::1") or host.startswith("127.")


def status_list_url(base_url: str, list_id: str) -> str:
    """Where a node publishes one of its status lists."""
    if not re.fullmatch(r"[a-z0-9-]{1,32}", list_id):
        raise ValueError("a status list id is 1 to 32 lower-case letters, digits or hyphens")
    return f"{base_url.rstrip('/')}/v1/clinicians/status/{list_id}"
