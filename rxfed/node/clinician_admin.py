"""``rxfed node clinicians DATA_DIR issue|list|revoke``: the credentials a hospital node issues.

Each writes the store directly (like ``rxfed node accounts``, also while the node runs), each
change with its line in the operator log; the running node publishes the status list from
the store (:mod:`rxfed.node.clinicians`), so a revocation shows in the next list it signs.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path

from rxfed.crypto.multikey import ed25519_from_multikey
from rxfed.errors import BadRequest, Forbidden
from rxfed.node.clinicians import LIST_ID
from rxfed.node.config import NodeConfig, current_key, load_node_keys
from rxfed.protocol import credentials as vc
from rxfed.protocol.data_integrity import Issuer
from rxfed.protocol.status_list import MIN_BITS, StatusEntry, random_index
from rxfed.store import IssuedCredential

#: How long a credential is valid unless the operator says otherwise.
DEFAULT_VALID_DAYS = 365
_ISSUANCE = re.compile(r"[0-9a-f]{16}")


def parse_clinician_key(value: str) -> bytes:
    """The clinician's Ed25519 public key from what ``rxfed patient clinician key`` prints:
    its ``did:key`` or its bare Multikey (``z6Mk...``)."""
    text = value.strip() if isinstance(value, str) else ""
    try:
        if text.startswith("did:key:"):
            return vc.key_of_did(text)
        return ed25519_from_multikey(text)
    except (ValueError, vc.MalformedCredential):
        raise vc.BadClinician(f"{value!r} is not a clinician key: give the did:key:z6Mk... that "
                              "'rxfed patient clinician key' prints") from None


def _issuer(config: NodeConfig) -> Issuer:
    return Issuer(config.node_id, config.name, current_key(load_node_keys(config.data_dir)).key)


def _summary(row: IssuedCredential, now: int) -> dict:
    state = "revoked" if row.revoked is not None else "expired" if now > row.valid_until else "valid"
    return {"id": row.id, "clinician": row.clinician, "role": row.role, "specialty": row.specialty,
            "profiles": json.loads(row.profiles), "status_list": row.list_id, "status_index": row.index,
            "issued": row.issued, "valid_until": row.valid_until, "revoked": row.revoked,
            "revoked_reason": row.revoked_reason, "state": state}


def issue(data_dir: str | Path, *, key: str, role: str, specialty: str, specialty_name: str, name: str | None = None,
          npi: str | None = None, staff_id: str | None = None, valid_days: float = DEFAULT_VALID_DAYS,
          now: int | None = None) -> dict:
    """Vouch for a clinician once every configured verification backend accepts them: one
    signed credential per disclosure profile, sharing one random status bit. Returns the
    issuance (as ``list`` shows it) with ``credentials`` (profile -> signed document) and
    ``verdicts`` (what each backend said). Forbidden when a backend refuses."""
    from rxfed.node.administer import _entry, _run
    from rxfed.plugins import RxfedPlugins

    config = NodeConfig.load(data_dir)
    clinician = vc.Clinician.create(parse_clinician_key(key), role, specialty, specialty_name, name=name, npi=npi,
                                    staff_id=staff_id)
    if not 0 < valid_days <= vc.MAX_VALIDITY / 86400:
        raise BadRequest(f"--valid-days must be more than 0 and at most {vc.MAX_VALIDITY // 86400}",
                         code="bad_validity")
    if not config.clinician_verifiers:
        raise Forbidden("no verification backend is configured ([clinicians.verifiers] in rxfed.toml): the node "
                        "vouches for nobody it has not checked", code="no_verifier")
    plugins = RxfedPlugins(disabled=config.disabled_plugins)
    try:
        verdicts = plugins.vet_clinician(clinician, config.clinician_verifiers)
    finally:
        plugins.close()
    refused = [v for v in verdicts if not v.accepted]
    if refused:
        raise Forbidden("not issued: " + "; ".join(f"{v.backend}: {v.reason}" for v in refused),
                        code="clinician_not_verified")
    now = int(time.time()) if now is None else now
    valid_until = now + int(valid_days * 86400)
    issuer = _issuer(config)
    list_url = vc.status_list_url(config.public_url, LIST_ID)
    issuance = secrets.token_hex(8)
    signed: dict[str, dict] = {}

    def draw(taken: set[int]) -> int:
        return random_index(taken, MIN_BITS, secrets.randbelow)

    def make(index: int) -> IssuedCredential:
        signed.clear()
        signed.update(vc.issue_profiles(issuer, clinician, valid_from=now, valid_until=valid_until,
                                        status=StatusEntry(list_url, index), new_id=vc.new_credential_id))
        return IssuedCredential(issuance, vc.did_key(clinician.public_key), clinician.role, clinician.specialty,
                                json.dumps({p: d["id"] for p, d in signed.items()}, sort_keys=True), LIST_ID, index,
                                now, valid_until)

    def log(row: IssuedCredential):
        return _entry("clinician.issue", row.id, clinician=row.clinician, role=row.role, specialty=row.specialty,
                      valid_until=row.valid_until, backends=[v.backend for v in verdicts])

    _config, row = _run(data_dir, lambda store: store.issue_credentials(LIST_ID, draw=draw, make=make, log=log))
    return {**_summary(row, now), "credentials": dict(signed),
            "verdicts": [{"backend": v.backend, "accepted": v.accepted, "reason": v.reason} for v in verdicts]}


def issued(data_dir: str | Path, *, now: int | None = None) -> list[dict]:
    from rxfed.node.administer import _run

    now = int(time.time()) if now is None else now
    _config, rows = _run(data_dir, lambda store: store.issued_credentials())
    return [_summary(r, now) for r in rows]


def revoke(data_dir: str | Path, issuance: str, *, reason: str | None = None) -> dict:
    """Set the status bit of one issuance: every profile's credential is refused by verifiers
    once they fetch the list again (within its ``ttl``, at most its validity, a day)."""
    from rxfed.node.administer import _entry, _reason, _run

    if not isinstance(issuance, str) or not _ISSUANCE.fullmatch(issuance):
        raise BadRequest(f"{issuance!r} is not a credential id (16 hex characters, as 'rxfed node clinicians "
                         "DATA_DIR list' shows them)", code="bad_credential_id")
    reason = _reason(reason)
    now = int(time.time())
    _config, changed = _run(data_dir, lambda store: store.revoke_credential(
        issuance, when=now, reason=reason, log=_entry("clinician.revoke", issuance, reason=reason)))
    return {"id": issuance, "revoked": True, "changed": changed}
