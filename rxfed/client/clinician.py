"""A clinician's side of verified-clinician badges, and every reader's check of them.

The clinician's key is an Ed25519 key kept in the patient's encrypted vault (a ``clinician``
record, so every device and a recovery have it); a hospital node vouches for its public key
(``rxfed patient clinician key`` prints it as a ``did:key``). Posting with a badge binds one
of the credentials the hospital issued to the post (rxfed.protocol.badges). Readers check a
badge themselves, offline but for two fetches from the issuing node itself, never from the
node relaying the post: its keys (``/.well-known/rxfed``) and the status list the
credential names (spec/crypto.md section 12).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rxfed.client import transport
from rxfed.client.sdk import PatientCore
from rxfed.crypto import SigningKeyPair, b64d, b64e
from rxfed.errors import BadRequest, RxfedError
from rxfed.protocol import badges
from rxfed.protocol import credentials as vc
from rxfed.protocol.data_integrity import CredentialError, IssuerKeys, IssuerKeysNeeded, did_web, node_of_did

KIND = "clinician"
#: The per-device file of issuers' pinned keys, in the profile directory.
PINS = "issuers.json"
#: Largest status list reply a reader accepts (a list of 2^23 bits compresses far below it).
MAX_LIST_BYTES = 256 * 1024


async def clinician_key(client: PatientCore, *, create: bool = False) -> SigningKeyPair | None:
    """This profile's clinician key (made and stored in the vault on first use when
    ``create``), or None when it has none."""
    for record in await client.records(KIND):
        try:
            return SigningKeyPair.from_seed(b64d(record.data["seed"], length=32))
        except (KeyError, TypeError, ValueError):
            continue
    if not create:
        return None
    key = SigningKeyPair.generate()
    await client.add_record(KIND, {"seed": b64e(key.seed), "did": vc.did_key(key.public)})
    return key


def load_credential(path: str | Path, profile: str = "badge") -> dict:
    """One credential from a file ``rxfed node clinicians issue`` wrote (its ``credentials``
    by profile: ``profile`` is taken), or a file holding one credential."""
    from rxfed.protocol.jcs import JcsError, load_document

    try:
        document = load_document(Path(path).read_bytes())
    except OSError as exc:
        raise BadRequest(f"{path}: cannot read it: {exc.strerror or exc}", code="bad_badge_file") from None
    except JcsError as exc:
        raise BadRequest(f"{path}: not a credential file: {exc.message}", code="bad_badge_file") from None
    if isinstance(document, dict) and isinstance(document.get("credentials"), dict):
        if profile not in document["credentials"]:
            raise BadRequest(f"{path} holds no {profile!r} credential (it has "
                             f"{', '.join(sorted(document['credentials']))})", code="bad_badge_file")
        document = document["credentials"][profile]
    if not isinstance(document, dict) or "credentialSubject" not in document:
        raise BadRequest(f"{path} holds no clinician credential", code="bad_badge_file")
    return document


class BadgeChecker:
    """Verifies post badges for one reading: each issuer's keys and each status list are
    fetched at most once, from the issuing node."""

    def __init__(self, session: Any, now: int, *, contactable: set[str] | None = None, pins: Path | None = None):
        self.session = session
        self.now = now
        #: This device's pins of issuers' keys (``issuers.json`` in the profile directory):
        #: the keys first seen for each issuer, and those they signed in as successors, so a
        #: later answer for an issuer's address cannot swap its keys (None: nothing kept).
        self.pins = pins
        #: The nodes this client may contact for a credential's keys and status list (None:
        #: any). A reader passes its home node and the peers it federates with, so a badge
        #: naming any other issuer cannot make every reader's client call an address of the
        #: poster's choosing (and so learn who reads the community, and when).
        self.contactable = contactable
        self.issuers: dict[str, IssuerKeys] = {}
        self.lists: dict[str, Any] = {}
        self.failed: dict[str, str] = {}

    async def _issuer_keys(self, issuer: str) -> None:
        from rxfed.protocol.federation import NodeDocument

        from rxfed.protocol.federation import keys_from_json, keys_json

        node = node_of_did(issuer)
        document = NodeDocument.from_json(await PatientCore.discover(self.session, transport.host_url(node)))
        if document.node_id != node:
            raise CredentialError(f"{node} says it is {document.node_id}")
        pins = self._load_pins()
        anchors = keys_from_json(b64d(pins[issuer])) if issuer in pins else document.keys
        trusted = document.trusting(anchors).keys
        self.issuers[issuer] = IssuerKeys(did_web(document.node_id), trusted)
        if self.pins is not None and b64e(keys_json(trusted)) != pins.get(issuer):
            from rxfed.client.profile import write_private

            write_private(self.pins, json.dumps({**pins, issuer: b64e(keys_json(trusted))}, sort_keys=True).encode())

    def _load_pins(self) -> dict[str, str]:
        if self.pins is None:
            return {}
        try:
            pins = json.loads(self.pins.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise CredentialError(f"{self.pins} cannot be read: {exc}") from None
        return pins if isinstance(pins, dict) else {}

    async def _status_list(self, url: str) -> None:
        from rxfed.protocol.jcs import load_document

        status, body = await transport.request(self.session, "GET", url, max_bytes=MAX_LIST_BYTES)
        if status != 200:
            raise CredentialError(f"the status list {url} answered {status}")
        self.lists[url] = load_document(body)

    async def verdict(self, badge: dict, *, community: str, sender: bytes, text: str, sent: int
                      ) -> badges.BadgeVerdict:
        try:
            bound = badges.open_badge(badge, community=community, sender=sender, text=text, sent=sent)
        except BadRequest:
            return badges.BadgeVerdict(False, reason="malformed_badge")
        except CredentialError as exc:
            return badges.BadgeVerdict(False, reason=exc.code)
        return await self.credential(bound.credential, bound.clinician_key)

    async def credential(self, credential: dict, clinician_key: bytes) -> badges.BadgeVerdict:
        """The verdict on a credential vouching for ``clinician_key``."""
        clinician = vc.did_key(clinician_key)
        for _ in range(3):  # the issuer's keys, then its status list, then the verdict
            try:
                verified = vc.verify(credential, issuers=self.issuers, now=self.now, status_lists=self.lists)
            except IssuerKeysNeeded as exc:
                if self.contactable is not None and node_of_did(exc.issuer) not in self.contactable:
                    return badges.BadgeVerdict(False, reason="issuer_not_federated", clinician=clinician,
                                               issuer=exc.issuer)
                if exc.issuer in self.failed or not await self._fetch(exc.issuer, self._issuer_keys):
                    return badges.BadgeVerdict(False, reason="issuer_unreachable", clinician=clinician,
                                               issuer=exc.issuer)
                continue
            except vc.StatusListNeeded as exc:
                if exc.url in self.failed or not await self._fetch(exc.url, self._status_list):
                    return badges.BadgeVerdict(False, reason="status_unavailable", clinician=clinician)
                continue
            except CredentialError as exc:
                return badges.BadgeVerdict(False, reason=exc.code, clinician=clinician)
            if verified.clinician_key != clinician_key:
                return badges.BadgeVerdict(False, reason="bad_badge_binding", clinician=clinician)
            return badges.BadgeVerdict(True, text=verified.badge(), clinician=clinician, issuer=verified.issuer)
        return badges.BadgeVerdict(False, reason="status_unavailable", clinician=clinician)  # pragma: no cover

    async def _fetch(self, what: str, fetch) -> bool:
        try:
            await fetch(what)
            return True
        except (RxfedError, OSError, ValueError) as exc:
            self.failed[what] = getattr(exc, "message", None) or str(exc)
            return False

