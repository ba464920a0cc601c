"""Vault protocol objects: signed statements (device certificates, manifests, revocations,
tombstones) and the bodies of the client API, each parsed strictly from JSON."""

from __future__ import annotations

from typing import Any

import attrs

from rxfed.crypto import SigningKeyPair, b64e, hash_id, sha256
from rxfed.errors import BadRequest, Forbidden
from rxfed.protocol.statements import open_statement, sign_statement
from rxfed.protocol.schema import HEX_ID, anything, array, b64, const, fields, integer, mapping, text

MAX_VERSION = 2**31 - 1
MAX_TIME = 2**40
#: Largest sealed record accepted in one commit entry (padded ciphertext, bytes).
MAX_BLOB = 512 * 1024
MAX_RECORDS_PER_COMMIT = 256


def patient_id(root_key: bytes) -> str:
    return hash_id(root_key, person=b"rxfed-patient")


def device_id(device_sign_key: bytes) -> str:
    return hash_id(device_sign_key, person=b"rxfed-device")


# -- statements ----------------------------------------------------------------------------


@attrs.frozen
class DeviceCert:
    """A root-signed statement that a device's signing and box keys belong to a patient."""

    patient: str
    sign_key: bytes
    box_key: bytes
    issued: int
    signed: dict = attrs.field(eq=False, repr=False)

    TYPE = "rxfed.device-cert"

    @property
    def device(self) -> str:
        return device_id(self.sign_key)

    @classmethod
    def issue(cls, root: SigningKeyPair, sign_key: bytes, box_key: bytes, now: int) -> DeviceCert:
        body = {"type": cls.TYPE, "patient": patient_id(root.public), "sign_key": b64e(sign_key),
                "box_key": b64e(box_key), "issued": now}
        return cls(body["patient"], sign_key, box_key, now, sign_statement(root, body))

    @classmethod
    def from_json(cls, obj: Any, where: str, root_key: bytes | None) -> DeviceCert:
        body = open_statement(obj, where, cls.TYPE, root_key)
        f = fields(body, where, {"type": const(cls.TYPE), "patient": text(32, HEX_ID), "sign_key": b64(32),
                                 "box_key": b64(32), "issued": integer(0, MAX_TIME)})
        if root_key is not None and f["patient"] != patient_id(root_key):
            raise Forbidden(f"{where} certifies a device for another patient")
        return cls(f["patient"], f["sign_key"], f["box_key"], f["issued"], obj)


@attrs.frozen
class Manifest:
    """The patient's signed view of their vault: a counter that only grows, and a digest of
    every (record id, version, ciphertext hash). It lets a client detect a node that rolls
    the vault back, drops a record or serves an old version."""

    patient: str
    counter: int
    count: int
    digest: bytes
    issued: int
    signed: dict = attrs.field(eq=False, repr=False)

    TYPE = "rxfed.manifest"

    @staticmethod
    def digest_of(entries: dict[str, tuple[int, bytes]]) -> bytes:
        """``entries`` maps record id to (version, SHA-256 of the sealed blob)."""
        lines = [f"{rid}:{ver}:{b64e(h)}" for rid, (ver, h) in sorted(entries.items())]
        return sha256("\n".join(lines).encode())

    @classmethod
    def issue(cls, root: SigningKeyPair, counter: int, entries: dict[str, tuple[int, bytes]], now: int) -> Manifest:
        digest = cls.digest_of(entries)
        body = {"type": cls.TYPE, "patient": patient_id(root.public), "counter": counter, "count": len(entries),
                "digest": b64e(digest), "issued": now}
        return cls(body["patient"], counter, len(entries), digest, now, sign_statement(root, body))

    @classmethod
    def from_json(cls, obj: Any, where: str, root_key: bytes | None) -> Manifest:
        body = open_statement(obj, where, cls.TYPE, root_key)
        f = fields(body, where, {"type": const(cls.TYPE), "patient": text(32, HEX_ID),
                                 "counter": integer(1, MAX_VERSION), "count": integer(0, MAX_VERSION),
                                 "digest": b64(32), "issued": integer(0, MAX_TIME)})
        if root_key is not None and f["patient"] != patient_id(root_key):
            raise Forbidden(f"{where} belongs to another patient")
        return cls(f["patient"], f["counter"], f["count"], f["digest"], f["issued"], obj)


def _simple_statement(kind: str, extra: dict):
    def from_json(obj: Any, where: str, root_key: bytes | None) -> dict:
        body = open_statement(obj, where, kind, root_key)
        f = fields(body, where, {"type": const(kind), "patient": text(32, HEX_ID), **extra})
        if root_key is not None and f["patient"] != patient_id(root_key):
            raise Forbidden(f"{where} belongs to another patient")
        return f

    return from_json


#: A root-signed revocation of one device.
REVOCATION = "rxfed.device-revocation"
parse_revocation = _simple_statement(REVOCATION, {"device": text(32, HEX_ID), "revoked": integer(0, MAX_TIME)})
#: A root-signed statement that the patient erased their account.
TOMBSTONE = "rxfed.tombstone"
parse_tombstone = _simple_statement(TOMBSTONE, {"deleted": integer(0, MAX_TIME)})
parse_recovery_statement = _simple_statement(
    "rxfed.recovery-key", {"auth_key": b64(32), "box_key": b64(32), "issued": integer(0, MAX_TIME)})


# -- client API bodies ---------------------------------------------------------------------


@attrs.frozen
class RecordPut:
    id: str
    version: int
    blob: bytes = attrs.field(repr=False)


@attrs.frozen
class RecordDelete:
    id: str
    version: int


_put = lambda v, w: RecordPut(**fields(v, w, {"id": text(32, HEX_ID), "version": integer(1, MAX_VERSION),  # noqa: E731
                                              "blob": b64(max_length=MAX_BLOB)}))
_delete = lambda v, w: RecordDelete(**fields(v, w, {"id": text(32, HEX_ID), "version": integer(1, MAX_VERSION)}))  # noqa: E731


@attrs.frozen
class Commit:
    """One atomic change to a vault: records written and deleted, and the new manifest."""

    puts: tuple[RecordPut, ...]
    deletes: tuple[RecordDelete, ...]
    manifest: Manifest

    @classmethod
    def from_json(cls, obj: Any, patient: str) -> Commit:
        """Parse a commit for ``patient``. The manifest's signature is the client's to check
        (on every read): every device of the patient holds the root key that signs it, so
        the node checking it would stop nothing a device could not do anyway; the node
        checks what it enforces, that the manifest is the patient's and its counter."""
        f = fields(obj, "commit", {"manifest": anything},
                   {"put": array(_put, MAX_RECORDS_PER_COMMIT), "delete": array(_delete, MAX_RECORDS_PER_COMMIT)})
        puts, deletes = tuple(f["put"] or ()), tuple(f["delete"] or ())
        ids = [p.id for p in puts] + [d.id for d in deletes]
        if len(ids) != len(set(ids)):
            raise BadRequest("commit names the same record twice")
        manifest = Manifest.from_json(f["manifest"], "commit.manifest", None)
        if manifest.patient != patient:
            raise Forbidden("commit.manifest belongs to another patient")
        return cls(puts, deletes, manifest)

    def to_json(self) -> dict:
        return {
            "put": [{"id": p.id, "version": p.version, "blob": b64e(p.blob)} for p in self.puts],
            "delete": [{"id": d.id, "version": d.version} for d in self.deletes],
            "manifest": self.manifest.signed,
        }


_KEYRING = b64(max_length=8192)


@attrs.frozen
class RecoverySetup:
    """What the node keeps so that a recovery code can restore a patient's access.

    ``statement`` is root-signed and names the recovery auth key (signs the request for the
    bundle) and the recovery box key (receives the vault keyring, like a device does), so
    any device can reseal a rotated keyring to it without knowing the code, and the node
    cannot substitute its own key. ``root_bundle`` is the root seed sealed under a key
    derived from the code; ``keyring`` is the vault keyring sealed to the box key.
    """

    auth_key: bytes
    box_key: bytes
    statement: dict = attrs.field(repr=False)
    root_bundle: bytes = attrs.field(repr=False)
    keyring: bytes = attrs.field(repr=False)

    TYPE = "rxfed.recovery-key"

    @staticmethod
    def statement_for(root: SigningKeyPair, auth_key: bytes, box_key: bytes, now: int) -> dict:
        return sign_statement(root, {"type": RecoverySetup.TYPE, "patient": patient_id(root.public),
                                     "auth_key": b64e(auth_key), "box_key": b64e(box_key), "issued": now})

    @classmethod
    def from_json(cls, obj: Any, where: str, root_key: bytes) -> RecoverySetup:
        f = fields(obj, where, {"statement": anything, "root_bundle": b64(max_length=1024), "keyring": _KEYRING})
        key = parse_recovery_statement(f["statement"], f"{where}.statement", root_key)
        return cls(key["auth_key"], key["box_key"], f["statement"], f["root_bundle"], f["keyring"])

    def to_json(self) -> dict:
        return {"statement": self.statement, "root_bundle": b64e(self.root_bundle), "keyring": b64e(self.keyring)}




@attrs.frozen
class Registration:
    root_key: bytes
    device: DeviceCert
    keyring: bytes = attrs.field(repr=False)
    recovery: RecoverySetup
    invite: str | None

    @classmethod
    def from_json(cls, obj: Any) -> Registration:
        f = fields(obj, "registration",
                   {"root_key": b64(32), "device": anything, "keyring": _KEYRING, "recovery": anything},
                   {"invite": text(64)})
        device = DeviceCert.from_json(f["device"], "registration.device", f["root_key"])
        recovery = RecoverySetup.from_json(f["recovery"], "registration.recovery", f["root_key"])
        return cls(f["root_key"], device, f["keyring"], recovery, f["invite"])


@attrs.frozen
class DeviceEnrolment:
    """A new device, certified by the root key, with the vault keyring sealed to it."""

    device: DeviceCert
    keyring: bytes = attrs.field(repr=False)

    @classmethod
    def from_json(cls, obj: Any, root_key: bytes) -> DeviceEnrolment:
        f = fields(obj, "enrolment", {"device": anything, "keyring": _KEYRING})
        return cls(DeviceCert.from_json(f["device"], "enrolment.device", root_key), f["keyring"])

    @staticmethod
    def claimed_patient(obj: Any) -> str:
        """The patient a not-yet-verified enrolment names, to look up the root key."""
        f = fields(obj, "enrolment", {"device": anything, "keyring": _KEYRING})
        return DeviceCert.from_json(f["device"], "enrolment.device", None).patient


@attrs.frozen
class DeviceRevocation:
    """A root-signed revocation plus the rotated keyring sealed to every remaining device."""

    device: str
    revoked: int
    keyrings: dict[str, bytes] = attrs.field(repr=False)
    recovery_keyring: bytes = attrs.field(repr=False)
    signed: dict = attrs.field(eq=False, repr=False)

    @classmethod
    def from_json(cls, obj: Any, root_key: bytes) -> DeviceRevocation:
        f = fields(obj, "revocation", {"revocation": anything, "keyrings": mapping(text(32, HEX_ID), _KEYRING, 64),
                                       "recovery_keyring": _KEYRING})
        r = parse_revocation(f["revocation"], "revocation.revocation", root_key)
        return cls(r["device"], r["revoked"], f["keyrings"], f["recovery_keyring"], f["revocation"])

    def to_json(self) -> dict:
        return {"revocation": self.signed, "keyrings": {d: b64e(k) for d, k in self.keyrings.items()},
                "recovery_keyring": b64e(self.recovery_keyring)}
