"""W3C Data Integrity proofs with the ``eddsa-jcs-2022`` cryptosuite (W3C vc-di-eddsa 1.0).

A proof is an Ed25519 signature over ``SHA-256(JCS(proof configuration)) ||
SHA-256(JCS(document without its proof))``; the proof configuration is the proof's own
fields without ``proofValue`` and with the document's ``@context``. ``proofValue`` is the
signature in base58btc multibase. Nothing here fetches anything: the caller hands in the
issuer's keys (:class:`IssuerKeys`) and, when they are missing, is told whose to fetch
(:class:`IssuerKeysNeeded`), like the rest of the sans-I/O protocol core.

Issuers are rxfed nodes named as ``did:web`` identifiers (``did:web:hospital.example.org``,
a port as ``%3A8443``); a verification method is ``{issuer}#{Ed25519 Multikey}``, so the
key is named in the proof and a verifier only has to check that the issuer publishes it
(spec/crypto.md §12).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import attrs

from rxfed.crypto import BadSignature, SigningKeyPair, sha256, verify_signature
from rxfed.crypto.multikey import base58btc_decode, base58btc_encode, ed25519_from_multikey, ed25519_multikey
from rxfed.errors import RxfedError
from rxfed.protocol.federation import NodeDocument, NodeKey, node_id_ok
from rxfed.protocol.jcs import JcsError, jcs

CRYPTOSUITE = "eddsa-jcs-2022"
PROOF_TYPE = "DataIntegrityProof"
ASSERTION = "assertionMethod"


# -- errors: one type per reason a credential is refused ------------------------------------


class CredentialError(RxfedError):
    """Base of every reason a credential (or its status list) is not accepted."""

    status = 403
    code = "credential_refused"


class MalformedCredential(CredentialError):
    status = 400
    code = "malformed_credential"


class WrongCryptosuite(CredentialError):
    code = "wrong_cryptosuite"


class BadProof(CredentialError):
    """The signature does not verify: forged, or the document was changed after signing
    (the two cannot be told apart, and need not be)."""

    code = "bad_proof"


class WrongIssuer(CredentialError):
    code = "wrong_issuer"


class UnknownIssuerKey(CredentialError):
    code = "unknown_issuer_key"


class CredentialExpired(CredentialError):
    code = "credential_expired"


class CredentialNotYetValid(CredentialError):
    code = "credential_not_yet_valid"


class CredentialRevoked(CredentialError):
    code = "credential_revoked"


class StatusUnavailable(CredentialError):
    """The status list cannot be used (wrong issuer, expired, too short, index out of
    range): the credential's status is unknown, so it is not accepted."""

    code = "status_unavailable"


class IssuerKeysNeeded(CredentialError):
    """Not a refusal: fetch the keys of ``issuer`` from the issuing node and verify again."""

    status = 424
    code = "need_issuer_keys"

    def __init__(self, issuer: str):
        super().__init__(f"the keys of {issuer} are needed to verify this credential")
        self.issuer = issuer


# -- times (XML Schema dateTimeStamp, as VC 2.0 uses them) ------------------------------------

_DATETIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)")


def parse_time(value: Any, where: str) -> int:
    """Unix seconds of a dateTimeStamp (a time zone is required); MalformedCredential else."""
    if not isinstance(value, str) or not _DATETIME.fullmatch(value):
        raise MalformedCredential(f"{where} must be a date and time with a time zone, e.g. 2026-01-01T00:00:00Z")
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise MalformedCredential(f"{where} is not a valid date and time") from None
    return int(when.timestamp())


def format_time(when: int) -> str:
    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- issuers as did:web ----------------------------------------------------------------------


def did_web(node_id: str) -> str:
    """The ``did:web`` identifier of a node (its id, a port percent-encoded)."""
    if not node_id_ok(node_id):
        raise ValueError(f"{node_id!r} is not a node id")
    return "did:web:" + urllib.parse.quote(node_id, safe=".-")


def node_of_did(did: str) -> str:
    """The node id a ``did:web`` issuer names; MalformedCredential when it names none."""
    if not isinstance(did, str) or not did.startswith("did:web:") or ":" in did[len("did:web:"):]:
        raise MalformedCredential("the issuer must be a did:web identifier of a node (did:web:HOST[%3APORT])")
    node_id = urllib.parse.unquote(did[len("did:web:"):])
    if not node_id_ok(node_id) or did_web(node_id) != did:
        raise MalformedCredential(f"the issuer {did!r} does not name a node")
    return node_id


@attrs.frozen
class Issuer:
    """A node signing credentials with its identity key."""

    node_id: str
    name: str
    key: SigningKeyPair = attrs.field(repr=False)

    @property
    def did(self) -> str:
        return did_web(self.node_id)

    @property
    def verification_method(self) -> str:
        return f"{self.did}#{ed25519_multikey(self.key.public)}"


@attrs.frozen
class IssuerKeys:
    """The keys a verifier trusts for one issuer, each with its validity (a node's trusted
    keys, spec/federation.md §2.2). A proof is accepted from a key valid at its ``created``."""

    issuer: str
    keys: tuple[NodeKey, ...]

    @classmethod
    def from_node_document(cls, document: NodeDocument) -> IssuerKeys:
        """The keys of the node that published ``document`` (already checked by the caller:
        fetched from the node itself, and, where keys are pinned, as trusted)."""
        return cls(did_web(document.node_id), document.keys)

    def public_key_for(self, verification_method: str, created: int | None) -> bytes:
        if created is None:
            # Without it the key's validity cannot be checked: a retired key could sign.
            raise MalformedCredential("the proof must state when it was created")
        controller, _, fragment = verification_method.partition("#")
        if controller != self.issuer:
            raise WrongIssuer(f"the proof is made by a key of {controller}, not of the issuer {self.issuer}")
        try:
            public_key = ed25519_from_multikey(fragment)
        except ValueError as exc:
            raise MalformedCredential(f"the verification method does not end in an Ed25519 Multikey: {exc}") from None
        for key in self.keys:
            if key.public_key == public_key:
                if not key.valid_at(created):
                    raise UnknownIssuerKey(f"the key that signed was not valid for {self.issuer} when the proof was made")
                return public_key
        raise UnknownIssuerKey(f"the key that signed is not one {self.issuer} publishes")


def did_document(node_id: str, keys: tuple[NodeKey, ...]) -> dict:
    """The controller document a node may serve at ``/.well-known/did.json``, so that a
    verifier that knows nothing of rxfed resolves its ``did:web`` issuer to the same keys."""
    did = did_web(node_id)
    methods = [{"id": f"{did}#{ed25519_multikey(k.public_key)}", "type": "Multikey", "controller": did,
                "publicKeyMultibase": ed25519_multikey(k.public_key)} for k in keys]
    return {"@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"], "id": did,
            "verificationMethod": methods, "assertionMethod": [m["id"] for m in methods]}


# -- the cryptosuite -------------------------------------------------------------------------


def proof_configuration(document: Mapping[str, Any], options: Mapping[str, Any]) -> bytes:
    """JCS of the proof options with the document's ``@context`` (vc-di-eddsa §3.3.5)."""
    if options.get("type") != PROOF_TYPE or options.get("cryptosuite") != CRYPTOSUITE:
        raise WrongCryptosuite(f"the proof must be a {PROOF_TYPE} with cryptosuite {CRYPTOSUITE}")
    if "created" in options:
        parse_time(options["created"], "proof.created")
    config = dict(options)
    if "@context" in document:
        config["@context"] = document["@context"]
    return jcs(config)


def hash_data(canonical_document: bytes, canonical_config: bytes) -> bytes:
    """``SHA-256(proof configuration) || SHA-256(document)`` (vc-di-eddsa §3.3.4)."""
    return sha256(canonical_config) + sha256(canonical_document)


def add_proof(document: Mapping[str, Any], key: SigningKeyPair, *, verification_method: str, created: int,
              proof_purpose: str = ASSERTION) -> dict:
    """``document`` secured with an ``eddsa-jcs-2022`` proof by ``key``."""
    if "proof" in document:
        raise ValueError("the document already carries a proof (proof sets are not made here)")
    options = {"type": PROOF_TYPE, "cryptosuite": CRYPTOSUITE, "created": format_time(created),
               "verificationMethod": verification_method, "proofPurpose": proof_purpose}
    proof = dict(options)
    if "@context" in document:
        proof["@context"] = document["@context"]
    signature = key.sign(hash_data(jcs(dict(document)), proof_configuration(document, options)))
    return {**document, "proof": {**proof, "proofValue": base58btc_encode(signature)}}


@attrs.frozen
class VerifiedProof:
    """What a verified proof vouches for: ``document`` (without its proof), signed by
    ``public_key`` through ``verification_method`` at ``created`` (Unix seconds, if given)."""

    document: dict
    verification_method: str
    public_key: bytes
    created: int | None
    proof_purpose: str


def verify_proof(secured: Any, public_key_for: Callable[[str, int | None], bytes], *, now: int,
                 proof_purpose: str = ASSERTION) -> VerifiedProof:
    """Verify the ``eddsa-jcs-2022`` proof of ``secured`` (vc-di-eddsa §3.3.2).

    ``public_key_for(verification_method, created)`` returns the Ed25519 key the method
    names, or raises (:class:`UnknownIssuerKey`, :class:`WrongIssuer`, :class:`IssuerKeysNeeded`).
    Returns a :class:`VerifiedProof` or raises a :class:`CredentialError`; never a bool."""
    if not isinstance(secured, dict):
        raise MalformedCredential("a credential must be a JSON object")
    proof = secured.get("proof")
    if isinstance(proof, list):
        raise MalformedCredential("proof sets and chains are not accepted: one proof per credential")
    if not isinstance(proof, dict):
        raise MalformedCredential("the credential carries no proof")
    if proof.get("type") != PROOF_TYPE or proof.get("cryptosuite") != CRYPTOSUITE:
        raise WrongCryptosuite(f"the proof is {proof.get('type')!r} / {proof.get('cryptosuite')!r}; "
                               f"only {PROOF_TYPE} with {CRYPTOSUITE} is accepted")
    if proof.get("proofPurpose") != proof_purpose:
        raise MalformedCredential(f"the proof's purpose must be {proof_purpose!r}")
    method = proof.get("verificationMethod")
    if not isinstance(method, str) or len(method) > 1024:
        raise MalformedCredential("the proof names no verification method")
    try:
        signature = base58btc_decode(proof.get("proofValue"), length=64)
    except ValueError as exc:
        raise MalformedCredential(f"proofValue is not a base58btc Ed25519 signature: {exc}") from None
    created = parse_time(proof["created"], "proof.created") if "created" in proof else None
    if "expires" in proof and now > parse_time(proof["expires"], "proof.expires"):
        raise CredentialExpired(f"the proof expired at {proof['expires']}")
    document = {k: v for k, v in secured.items() if k != "proof"}
    options = {k: v for k, v in proof.items() if k != "proofValue"}
    if "@context" in options:
        # The document's @context must start with the proof's (vc-di-eddsa §3.3.2 step 4).
        theirs, ours = options["@context"], document.get("@context")
        theirs = theirs if isinstance(theirs, list) else [theirs]
        ours = ours if isinstance(ours, list) else [ours]
        if ours[:len(theirs)] != theirs:
            raise BadProof("the document's @context does not start with the proof's")
        document["@context"] = options["@context"]
    try:
        canonical_document = jcs(document)
        config = proof_configuration(document, options)
    except JcsError as exc:
        raise MalformedCredential(exc.message) from None
    public_key = public_key_for(method, created)
    try:
        verify_signature(public_key, hash_data(canonical_document, config), signature)
    except BadSignature:
        raise BadProof("the proof does not verify: the credential was changed after it was signed, "
                       "or was not signed by the key it names") from None
    return VerifiedProof(document, method, public_key, created, proof_purpose)
