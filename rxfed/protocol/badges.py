"""Clinician badges on community posts: a credential bound to one post by the clinician's key.

A post's plaintext (inside the end-to-end encrypted message, spec/crypto.md section 8) may
carry ``badge = {credential, signature}``: one clinician credential of the profile the
clinician chose (section 12.6) and the signature of the key that credential vouches for
(``credentialSubject.id``) over

    "rxfed-badge|" || canonical({community, sender, sent, text: SHA-256(text),
                                 credential: credential id, credential_hash: SHA-256(JCS(credential))})

so the badge belongs to this text, sent at this time by this member pseudonym in this
community, and to this exact credential. Pure functions: the reader's client fetches the
issuer's keys and status list and calls :func:`rxfed.protocol.credentials.verify`.
"""

from __future__ import annotations

from typing import Any

import attrs

from rxfed.crypto import BadSignature, SigningKeyPair, b64d, b64e, sha256, verify_signature
from rxfed.errors import BadRequest
from rxfed.protocol.canonical import canonical
from rxfed.protocol.credentials import key_of_did
from rxfed.protocol.data_integrity import CredentialError, MalformedCredential
from rxfed.protocol.jcs import JcsError, jcs

DOMAIN = b"rxfed-badge|"
#: A badge's credential, as JCS bytes, at most this long (a `full` credential is ~1.5 KB).
MAX_CREDENTIAL = 3000

#: Why a badge is not shown, by code: the credential's own refusals (rxfed.protocol.data_integrity)
#: and the binding's.
REASONS = {
    "bad_badge_binding": "the badge was not signed for this post by the clinician the credential names "
                         "(moved from another post, or forged)",
    "malformed_badge": "the badge is not a credential with a signature",
    "malformed_credential": "the credential is malformed",
    "bad_proof": "the credential's signature does not verify (forged or changed)",
    "wrong_issuer": "the credential is signed by another node than the one it names",
    "wrong_cryptosuite": "the credential uses a signature suite rxfed does not accept",
    "unknown_issuer_key": "the issuer does not publish (or had retired) the key that signed the credential",
    "credential_expired": "the credential has expired",
    "credential_not_yet_valid": "the credential is not valid yet",
    "credential_revoked": "the issuer has revoked the credential",
    "status_unavailable": "the issuer's status list could not be checked, so revocation is unknown",
    "issuer_unreachable": "the issuing node could not be reached to check the credential",
    "issuer_not_federated": "the issuing node is not one your home node federates with, so your client does not "
                            "contact it to check the credential",
}


class BadgeRefused(CredentialError):
    code = "bad_badge_binding"


def _binding(community: str, sender: bytes, text: str, sent: int, credential: dict) -> bytes:
    try:
        credential_hash = sha256(jcs(credential))
    except JcsError as exc:
        raise MalformedCredential(exc.message) from None
    return DOMAIN + canonical({"community": community, "sender": b64e(sender), "sent": sent,
                               "text": b64e(sha256(text.encode("utf-8"))), "credential": credential.get("id"),
                               "credential_hash": b64e(credential_hash)})


def make_badge(clinician: SigningKeyPair, credential: dict, *, community: str, sender: bytes, text: str,
               sent: int) -> dict:
    """The ``badge`` field of a post: ``credential`` bound to it by ``clinician``, the key the
    credential vouches for (BadRequest when it vouches for another)."""
    if not isinstance(credential, dict) or not isinstance(credential.get("credentialSubject"), dict):
        raise BadRequest("a badge needs one clinician credential (a JSON object)", code="malformed_badge")
    if key_of_did(credential["credentialSubject"].get("id")) != clinician.public:
        raise BadRequest("this credential vouches for another clinician key than this profile's",
                         code="wrong_clinician_key")
    if len(jcs(credential)) > MAX_CREDENTIAL:
        raise BadRequest(f"a badge's credential is at most {MAX_CREDENTIAL} bytes", code="malformed_badge")
    signature = clinician.sign(_binding(community, sender, text, sent, credential))
    return {"credential": credential, "signature": b64e(signature)}


def badge_shape(value: Any, where: str = "badge") -> dict:
    """Validator for the optional ``badge`` of a message's plaintext: an object with a
    credential object and a signature string. What they say is checked by :func:`open_badge`
    (a badge that fails there is shown as refused, the message is still shown)."""
    if (not isinstance(value, dict) or set(value) != {"credential", "signature"}
            or not isinstance(value["credential"], dict) or not isinstance(value["signature"], str)):
        raise BadRequest(f"{where} must be {{credential, signature}}", code="malformed_badge")
    return value


@attrs.frozen
class BoundBadge:
    """A badge whose binding verified: ``credential`` was signed for this post by
    ``clinician_key``, the key it names (the credential itself is not checked yet)."""

    credential: dict
    clinician_key: bytes


def open_badge(badge: dict, *, community: str, sender: bytes, text: str, sent: int) -> BoundBadge:
    """Check the binding of a post's badge; BadgeRefused (or MalformedCredential) otherwise."""
    badge = badge_shape(badge)
    credential = badge["credential"]
    if len(jcs(credential)) > MAX_CREDENTIAL:
        raise MalformedCredential(f"a badge's credential is at most {MAX_CREDENTIAL} bytes")
    subject = credential.get("credentialSubject")
    key = key_of_did(subject.get("id") if isinstance(subject, dict) else None)
    try:
        signature = b64d(badge["signature"], length=64)
    except ValueError:
        raise BadgeRefused("the badge's signature is not 64 bytes of base64") from None
    try:
        verify_signature(key, _binding(community, sender, text, sent, credential), signature)
    except BadSignature:
        raise BadgeRefused(REASONS["bad_badge_binding"]) from None
    return BoundBadge(credential, key)


@attrs.frozen
class BadgeVerdict:
    """What a reader is shown for a post's badge: ``verified`` with the badge's text, or the
    code of the reason it was refused and what it means."""

    verified: bool
    text: str | None = None
    reason: str | None = None
    clinician: str | None = None
    issuer: str | None = None

    @property
    def explanation(self) -> str | None:
        return None if self.reason is None else REASONS.get(self.reason, self.reason)

    def to_json(self) -> dict:
        return {"verified": self.verified, "badge": self.text, "reason": self.reason,
                "explanation": self.explanation, "clinician": self.clinician, "issuer": self.issuer}
