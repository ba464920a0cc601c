"""Vault protocol objects: the identity chain, device certificates, manifests, tombstones,
and the bodies of the client API, each parsed strictly from JSON."""

from __future__ import annotations

from typing import Any

import attrs

from rxfed.crypto import BadSignature, SigningKeyPair, b64e, hash_id, sha256, verify_signature
from rxfed.errors import BadRequest, Conflict, Forbidden
from rxfed.protocol.canonical import canonical
from rxfed.protocol.statements import DOMAIN, open_statement, sign_statement, statement_hash
from rxfed.protocol.schema import HEX_ID, anything, array, b64, const, fields, integer, text

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
#
# The key hierarchy (spec/crypto.md section 1): a patient's *master key* signs only identity
# statements and lives only under the recovery code; each identity statement names the
# epoch's *signing key*, which active devices hold and which signs device certificates,
# manifests, keyring envelopes and tombstones. Revoking a device or rotating the recovery
# code starts a new epoch, which only the master key can sign.

IDENTITY = "rxfed.identity"
#: Identity epochs a chain may reach (each rotation is one; far beyond any real use).
MAX_EPOCH = 4096
ENROLLED_BY = r"registration|recovery|[0-9a-f]{32}"


@attrs.frozen
class IdentityStatement:
    """One epoch of a patient's identity, signed by the previous epoch's master key (the first
    by the root key itself, which is the first master key and names the patient).

    ``previous`` is the hash of the previous statement, so a chain cannot be spliced; the
    recovery keys are here too, so whoever reseals a keyring to the recovery holder takes the
    key from a statement only the master key could sign."""

    patient: str
    epoch: int
    previous: bytes | None
    master_key: bytes
    signing_key: bytes
    recovery_auth: bytes
    recovery_box: bytes
    issued: int
    signed: dict = attrs.field(eq=False, repr=False)

    @classmethod
    def issue(cls, signer: SigningKeyPair, *, patient: str, epoch: int, previous: bytes | None, master_key: bytes,
              signing_key: bytes, recovery_auth: bytes, recovery_box: bytes, now: int) -> IdentityStatement:
        body = {"type": IDENTITY, "patient": patient, "epoch": epoch,
                "previous": b64e(previous) if previous is not None else None,
                "master_key": b64e(master_key), "signing_key": b64e(signing_key),
                "recovery": {"auth_key": b64e(recovery_auth), "box_key": b64e(recovery_box)}, "issued": now}
        return cls(patient, epoch, previous, master_key, signing_key, recovery_auth, recovery_box, now,
                   sign_statement(signer, body))

    @classmethod
    def from_json(cls, obj: Any, where: str, signer_key: bytes | None) -> IdentityStatement:
        body = open_statement(obj, where, IDENTITY, signer_key)
        f = fields(body, where, {"type": const(IDENTITY), "patient": text(32, HEX_ID),
                                 "epoch": integer(1, MAX_EPOCH), "previous": anything, "master_key": b64(32),
                                 "signing_key": b64(32), "recovery": anything, "issued": integer(0, MAX_TIME)})
        r = fields(f["recovery"], f"{where}.recovery", {"auth_key": b64(32), "box_key": b64(32)})
        previous = None if f["previous"] is None else b64(32)(f["previous"], f"{where}.previous")
        if (previous is None) != (f["epoch"] == 1):
            raise BadRequest(f"{where}: only the first epoch has no previous statement")
        return cls(f["patient"], f["epoch"], previous, f["master_key"], f["signing_key"], r["auth_key"],
                   r["box_key"], f["issued"], obj)

    @property
    def hash(self) -> bytes:
        return statement_hash(self.signed)

    def next(self, master: SigningKeyPair, *, signing_key: bytes, now: int, master_key: bytes | None = None,
             recovery_auth: bytes | None = None, recovery_box: bytes | None = None) -> IdentityStatement:
        """The next epoch, signed by this epoch's ``master`` (which must be this epoch's
        master key); a new master key and recovery keys when the recovery code changes."""
        if master.public != self.master_key:
            raise Forbidden("the next identity epoch must be signed by the current master key",
                            code="wrong_master_key")
        return IdentityStatement.issue(
            master, patient=self.patient, epoch=self.epoch + 1, previous=self.hash,
            master_key=master_key or self.master_key, signing_key=signing_key,
            recovery_auth=recovery_auth or self.recovery_auth, recovery_box=recovery_box or self.recovery_box,
            now=now)


def check_extends(current: IdentityStatement, nxt: IdentityStatement, where: str) -> None:
    """Refuse ``nxt`` unless it is the epoch after ``current``, signed by its master key and
    naming it as previous (its signature must already have been checked against
    ``current.master_key``)."""
    if nxt.patient != current.patient or nxt.epoch != current.epoch + 1 or nxt.previous != current.hash:
        raise Forbidden(f"{where} does not extend identity epoch {current.epoch}", code="bad_identity_chain")


@attrs.frozen
class IdentityChain:
    """A patient's identity epochs from the first, each checked against the one before."""

    statements: tuple[IdentityStatement, ...]

    @classmethod
    def verify(cls, root_key: bytes, objs: Any, where: str = "identity") -> IdentityChain:
        if not isinstance(objs, list) or not objs or len(objs) > MAX_EPOCH:
            raise BadRequest(f"{where} must be a non-empty list of identity statements")
        first = IdentityStatement.from_json(objs[0], f"{where}[0]", root_key)
        if first.epoch != 1 or first.master_key != root_key or first.patient != patient_id(root_key):
            raise Forbidden(f"{where}[0] is not this patient's first identity epoch", code="bad_identity_chain")
        chain = [first]
        for i, obj in enumerate(objs[1:], 1):
            nxt = IdentityStatement.from_json(obj, f"{where}[{i}]", chain[-1].master_key)
            check_extends(chain[-1], nxt, f"{where}[{i}]")
            chain.append(nxt)
        return cls(tuple(chain))

    @property
    def current(self) -> IdentityStatement:
        return self.statements[-1]

    def signing_key(self, epoch: int) -> bytes:
        if not 1 <= epoch <= len(self.statements):
            raise Forbidden(f"unknown identity epoch {epoch}", code="unknown_epoch")
        return self.statements[epoch - 1].signing_key

    def to_json(self) -> list:
        return [s.signed for s in self.statements]


def device_key_proof(device: SigningKeyPair, box_key: bytes) -> bytes:
    """The device's own signature binding its box key to its signing key: without it, whoever
    holds an epoch's signing key could certify another device's signing key with a box key
    of their own, and receive that device's next envelope."""
    return device.sign(b"rxfed-device-key|" + device.public + box_key)


def _enrolment_bytes(patient: str, sign_key: bytes, box_key: bytes, enrolled_by: str, enrolled_epoch: int) -> bytes:
    return DOMAIN + canonical({"type": "rxfed.device-enrolment", "patient": patient, "sign_key": b64e(sign_key),
                               "box_key": b64e(box_key), "enrolled_by": enrolled_by, "enrolled_epoch": enrolled_epoch})


def enrolment_proof(enroller: SigningKeyPair, *, patient: str, sign_key: bytes, box_key: bytes, enrolled_by: str,
                    enrolled_epoch: int) -> bytes:
    """The enroller's signature over a device's enrolment: the root key for ``registration``,
    the recovery auth key of ``enrolled_epoch`` for ``recovery``, or the enrolling device's
    own signing key. An epoch's signing key alone (which a stolen device holds) cannot make
    one, so a certificate cannot name an enroller it was not made by."""
    return enroller.sign(_enrolment_bytes(patient, sign_key, box_key, enrolled_by, enrolled_epoch))


@attrs.frozen
class DeviceCert:
    """A statement by an epoch's signing key that a device's signing and box keys belong to
    the patient, carrying the device's own proof of its keys and its enroller's proof
    (``registration``, ``recovery`` or a device id, at ``enrolled_epoch``). A rotation
    certifies a kept device again under the new epoch with the same proofs."""

    patient: str
    epoch: int
    sign_key: bytes
    box_key: bytes
    enrolled_by: str
    enrolled_epoch: int
    device_proof: bytes = attrs.field(repr=False)
    enroller_proof: bytes = attrs.field(repr=False)
    issued: int
    signed: dict = attrs.field(eq=False, repr=False)

    TYPE = "rxfed.device-cert"

    @property
    def device(self) -> str:
        return device_id(self.sign_key)

    @classmethod
    def issue(cls, signer: SigningKeyPair, *, patient: str, epoch: int, sign_key: bytes, box_key: bytes,
              enrolled_by: str, enrolled_epoch: int, device_proof: bytes, enroller_proof: bytes,
              now: int) -> DeviceCert:
        body = {"type": cls.TYPE, "patient": patient, "epoch": epoch, "sign_key": b64e(sign_key),
                "box_key": b64e(box_key), "enrolled_by": enrolled_by, "enrolled_epoch": enrolled_epoch,
                "proof": {"device": b64e(device_proof), "enroller": b64e(enroller_proof)}, "issued": now}
        return cls(patient, epoch, sign_key, box_key, enrolled_by, enrolled_epoch, device_proof, enroller_proof, now,
                   sign_statement(signer, body))

    def recertify(self, signer: SigningKeyPair, epoch: int, now: int) -> DeviceCert:
        return DeviceCert.issue(signer, patient=self.patient, epoch=epoch, sign_key=self.sign_key, box_key=self.box_key,
                                enrolled_by=self.enrolled_by, enrolled_epoch=self.enrolled_epoch,
                                device_proof=self.device_proof, enroller_proof=self.enroller_proof, now=now)

    @classmethod
    def from_json(cls, obj: Any, where: str, chain: IdentityChain | None) -> DeviceCert:
        """Parse, and with ``chain`` check the signature by the signing key of the epoch the
        certificate names and the device's own proof (whether that epoch is current, and the
        enroller's proof, are for :meth:`check_enroller`)."""
        body = open_statement(obj, where, cls.TYPE, None)
        f = fields(body, where, {"type": const(cls.TYPE), "patient": text(32, HEX_ID), "epoch": integer(1, MAX_EPOCH),
                                 "sign_key": b64(32), "box_key": b64(32), "enrolled_by": text(32, ENROLLED_BY),
                                 "enrolled_epoch": integer(1, MAX_EPOCH), "proof": anything,
                                 "issued": integer(0, MAX_TIME)})
        proof = fields(f["proof"], f"{where}.proof", {"device": b64(64), "enroller": b64(64)})
        cert = cls(f["patient"], f["epoch"], f["sign_key"], f["box_key"], f["enrolled_by"], f["enrolled_epoch"],
                   proof["device"], proof["enroller"], f["issued"], obj)
        if chain is not None:
            if f["patient"] != chain.current.patient:
                raise Forbidden(f"{where} certifies a device for another patient")
            if cert.enrolled_epoch > cert.epoch:
                raise Forbidden(f"{where} was enrolled after the epoch it is certified for")
            open_statement(obj, where, cls.TYPE, chain.signing_key(f["epoch"]))
            try:
                verify_signature(cert.sign_key, b"rxfed-device-key|" + cert.sign_key + cert.box_key, cert.device_proof)
            except BadSignature:
                raise Forbidden(f"{where}: the device's own proof of its keys does not verify",
                                code="bad_device_proof") from None
        return cert

    def enroller_key(self, chain: IdentityChain, device_keys: dict[str, bytes]) -> bytes | None:
        """The key that must have signed this enrolment, or None when it is unknown (a device
        enroller the caller cannot name)."""
        if self.enrolled_by == "registration":
            return chain.statements[0].master_key if self.enrolled_epoch == 1 else None
        if self.enrolled_by == "recovery":
            return chain.statements[self.enrolled_epoch - 1].recovery_auth
        return device_keys.get(self.enrolled_by)

    def check_enroller(self, chain: IdentityChain, device_keys: dict[str, bytes], where: str = "device") -> None:
        """Raise Forbidden unless the enroller's proof verifies (``device_keys``: device id
        to signing key of the devices the caller knows)."""
        key = self.enroller_key(chain, device_keys)
        message = _enrolment_bytes(self.patient, self.sign_key, self.box_key, self.enrolled_by, self.enrolled_epoch)
        try:
            if key is None:
                raise BadSignature()
            verify_signature(key, message, self.enroller_proof)
        except BadSignature:
            raise Forbidden(f"{where}: the enroller's proof does not verify", code="bad_enroller_proof") from None


_LINES: dict[tuple[str, int, bytes], str] = {}


def _manifest_line(rid: str, version: int, digest: bytes) -> str:
    """One line of a manifest digest, remembered: a client signs a manifest per write over
    every record, and each line but the new one is the same as last time."""
    key = (rid, version, digest)
    line = _LINES.get(key)
    if line is None:
        if len(_LINES) > 200_000:
            _LINES.clear()
        line = _LINES[key] = f"{rid}:{version}:{b64e(digest)}"
    return line


@attrs.frozen
class Manifest:
    """The patient's signed view of their vault: a counter that only grows, and a digest of
    every (record id, version, ciphertext hash). It lets a client detect a node that rolls
    the vault back, drops a record or serves an old version. Signed by the signing key of
    ``epoch``, which must be the current epoch when the manifest is made."""

    patient: str
    epoch: int
    counter: int
    count: int
    digest: bytes
    issued: int
    signed: dict = attrs.field(eq=False, repr=False)

    TYPE = "rxfed.manifest"

    @staticmethod
    def digest_of(entries: dict[str, tuple[int, bytes]]) -> bytes:
        """``entries`` maps record id to (version, SHA-256 of the sealed blob)."""
        lines = [_manifest_line(rid, ver, h) for rid, (ver, h) in sorted(entries.items())]
        return sha256("\n".join(lines).encode())

    @classmethod
    def issue(cls, signer: SigningKeyPair, *, patient: str, epoch: int, counter: int,
              entries: dict[str, tuple[int, bytes]], now: int) -> Manifest:
        digest = cls.digest_of(entries)
        body = {"type": cls.TYPE, "patient": patient, "epoch": epoch, "counter": counter, "count": len(entries),
                "digest": b64e(digest), "issued": now}
        return cls(patient, epoch, counter, len(entries), digest, now, sign_statement(signer, body))

    def canonical_bytes(self) -> bytes:
        """``canonical(self.signed)``, written out. Every field of a manifest is validated
        (issued or parsed by :meth:`from_json`: exactly these keys, a hex patient id,
        canonical base64url, integers in range), so none needs escaping and the keys' order
        is fixed (tests/test_vault.py compares the two)."""
        return (_MANIFEST_CANONICAL % (self.count, self.counter, b64e(self.digest), self.epoch, self.issued,
                                       self.patient, self.signed["sig"])).encode("ascii")

    @classmethod
    def from_json(cls, obj: Any, where: str, signing_key: bytes | None) -> Manifest:
        body = open_statement(obj, where, cls.TYPE, signing_key)
        f = fields(body, where, _MANIFEST_FIELDS)
        return cls(f["patient"], f["epoch"], f["counter"], f["count"], f["digest"], f["issued"], obj)


_MANIFEST_CANONICAL = ('{"body":{"count":%d,"counter":%d,"digest":"%s","epoch":%d,"issued":%d,"patient":"%s",'
                       '"type":"' + Manifest.TYPE + '"},"sig":"%s"}')
_MANIFEST_FIELDS = {"type": const(Manifest.TYPE), "patient": text(32, HEX_ID), "epoch": integer(1, MAX_EPOCH),
                    "counter": integer(1, MAX_VERSION), "count": integer(0, MAX_VERSION), "digest": b64(32),
                    "issued": integer(0, MAX_TIME)}

#: A statement by the current signing key that the patient erased their account.
TOMBSTONE = "rxfed.tombstone"


def parse_tombstone(obj: Any, where: str, identity: IdentityStatement) -> dict:
    body = open_statement(obj, where, TOMBSTONE, identity.signing_key)
    f = fields(body, where, {"type": const(TOMBSTONE), "patient": text(32, HEX_ID), "epoch": integer(1, MAX_EPOCH),
                             "deleted": integer(0, MAX_TIME)})
    if f["patient"] != identity.patient or f["epoch"] != identity.epoch:
        raise Forbidden(f"{where} is not signed by this patient's current key", code="stale_identity")
    return f


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


_PUT_FIELDS = {"id": text(32, HEX_ID), "version": integer(1, MAX_VERSION), "blob": b64(max_length=MAX_BLOB)}
_DELETE_FIELDS = {"id": text(32, HEX_ID), "version": integer(1, MAX_VERSION)}
_put = lambda v, w: RecordPut(**fields(v, w, _PUT_FIELDS))  # noqa: E731
_delete = lambda v, w: RecordDelete(**fields(v, w, _DELETE_FIELDS))  # noqa: E731


_COMMIT_REQUIRED = {"manifest": anything}
_COMMIT_OPTIONAL = {"put": array(_put, MAX_RECORDS_PER_COMMIT), "delete": array(_delete, MAX_RECORDS_PER_COMMIT),
                    "base": integer(0, MAX_VERSION)}


@attrs.frozen
class Commit:
    """One atomic change to a vault: records written and deleted, and the new manifest."""

    puts: tuple[RecordPut, ...]
    deletes: tuple[RecordDelete, ...]
    manifest: Manifest
    #: The counter this commit was made from (the compare-and-swap's expected value); by
    #: default the manifest's counter minus one. A device that accepted a restore names the
    #: restored counter here and signs a manifest above every counter it saw before, so no
    #: counter names two different vaults.
    base: int | None = None

    @classmethod
    def from_json(cls, obj: Any, patient: str) -> Commit:
        """Parse a commit for ``patient``. The manifest's signature is the client's to check
        (on every read); the node checks what it enforces: that the manifest is the
        patient's, its counter (a compare-and-swap on ``base``) and its epoch (the current one)."""
        f = fields(obj, "commit", _COMMIT_REQUIRED, _COMMIT_OPTIONAL)
        puts, deletes = tuple(f["put"] or ()), tuple(f["delete"] or ())
        ids = [p.id for p in puts] + [d.id for d in deletes]
        if len(ids) != len(set(ids)):
            raise BadRequest("commit names the same record twice")
        manifest = Manifest.from_json(f["manifest"], "commit.manifest", None)
        if manifest.patient != patient:
            raise Forbidden("commit.manifest belongs to another patient")
        if f["base"] is not None and f["base"] >= manifest.counter:
            raise BadRequest("commit.base must be below the manifest's counter")
        return cls(puts, deletes, manifest, f["base"])

    def to_json(self) -> dict:
        out = {
            "put": [{"id": p.id, "version": p.version, "blob": b64e(p.blob)} for p in self.puts],
            "delete": [{"id": d.id, "version": d.version} for d in self.deletes],
            "manifest": self.manifest.signed,
        }
        if self.base is not None:
            out["base"] = self.base
        return out


_KEYRING = b64(max_length=8192)
_BUNDLE = b64(max_length=1024)


@attrs.frozen
class RecoverySetup:
    """What the node keeps so that a recovery code can restore a patient's access: the
    current master key sealed under a key derived from the code (``root_bundle``), and the
    epoch's device secrets sealed to the recovery box key (``keyring``). The auth and box
    keys themselves are named by the identity statement."""

    root_bundle: bytes = attrs.field(repr=False)
    keyring: bytes = attrs.field(repr=False)

    @classmethod
    def from_json(cls, obj: Any, where: str) -> RecoverySetup:
        f = fields(obj, where, {"root_bundle": _BUNDLE, "keyring": _KEYRING})
        return cls(f["root_bundle"], f["keyring"])

    def to_json(self) -> dict:
        return {"root_bundle": b64e(self.root_bundle), "keyring": b64e(self.keyring)}


def _first_epoch(root_key: bytes, obj: Any, where: str) -> IdentityChain:
    return IdentityChain.verify(root_key, [obj], where)


@attrs.frozen
class Registration:
    root_key: bytes
    identity: IdentityStatement
    device: DeviceCert
    keyring: bytes = attrs.field(repr=False)
    recovery: RecoverySetup
    invite: str | None

    @classmethod
    def from_json(cls, obj: Any) -> Registration:
        f = fields(obj, "registration",
                   {"root_key": b64(32), "identity": anything, "device": anything, "keyring": _KEYRING,
                    "recovery": anything},
                   {"invite": text(64)})
        chain = _first_epoch(f["root_key"], f["identity"], "registration.identity")
        device = DeviceCert.from_json(f["device"], "registration.device", chain)
        if device.epoch != 1 or device.enrolled_by != "registration":
            raise Forbidden("registration.device must be certified at epoch 1 by registration")
        device.check_enroller(chain, {}, "registration.device")
        recovery = RecoverySetup.from_json(f["recovery"], "registration.recovery")
        return cls(f["root_key"], chain.current, device, f["keyring"], recovery, f["invite"])


@attrs.frozen
class DeviceEnrolment:
    """A new device, certified by the current epoch's signing key, with the epoch's device
    secrets sealed to it. The request is signed by an active device or the recovery key,
    which the certificate must name as its enroller and whose proof it must carry."""

    device: DeviceCert
    keyring: bytes = attrs.field(repr=False)

    @classmethod
    def from_json(cls, obj: Any, identity: IdentityChain, enrolled_by: str, enroller_key: bytes) -> DeviceEnrolment:
        f = fields(obj, "enrolment", {"device": anything, "keyring": _KEYRING})
        cert = DeviceCert.from_json(f["device"], "enrolment.device", identity)
        if cert.epoch != identity.current.epoch or cert.enrolled_epoch != cert.epoch:
            raise Conflict("enrolment.device is certified for an earlier identity epoch; sync and retry",
                           code="stale_identity")
        if cert.enrolled_by != enrolled_by:
            raise Forbidden("the certificate must name the device or recovery key that signs the enrolment",
                            code="wrong_enroller")
        cert.check_enroller(identity, {enrolled_by: enroller_key}, "enrolment.device")
        return cls(cert, f["keyring"])


@attrs.frozen
class KeptDevice:
    cert: DeviceCert
    keyring: bytes = attrs.field(repr=False)


@attrs.frozen
class IdentityRotation:
    """A new identity epoch: the statement (signed by the current master key), every device
    that stays active certified again under the new signing key with the new epoch's secrets
    sealed to it (and, when the recovery key signs, a device it enrols in the same step),
    the recovery material for the epoch, and the vault manifest re-signed under the new key.
    Active devices left out are revoked."""

    identity: IdentityStatement
    devices: tuple[KeptDevice, ...]
    recovery: RecoverySetup
    manifest: Manifest

    @classmethod
    def from_json(cls, obj: Any, current: IdentityChain, device_keys: dict[str, bytes]) -> IdentityRotation:
        """``device_keys``: device id to signing key of every device the node lists, to
        check enrollers' proofs."""
        f = fields(obj, "rotation", {"identity": anything, "devices": array(anything, 64), "recovery": anything,
                                     "manifest": anything})
        nxt = IdentityStatement.from_json(f["identity"], "rotation.identity", current.current.master_key)
        check_extends(current.current, nxt, "rotation.identity")
        chain = IdentityChain(current.statements + (nxt,))
        kept = []
        for i, d in enumerate(f["devices"]):
            where = f"rotation.devices[{i}]"
            g = fields(d, where, {"device": anything, "keyring": _KEYRING})
            cert = DeviceCert.from_json(g["device"], f"{where}.device", chain)
            if cert.epoch != nxt.epoch:
                raise Forbidden(f"{where} is not certified for epoch {nxt.epoch}")
            cert.check_enroller(chain, device_keys, f"{where}.device")
            kept.append(KeptDevice(cert, g["keyring"]))
        if len({k.cert.device for k in kept}) != len(kept):
            raise BadRequest("rotation.devices names a device twice")
        manifest = Manifest.from_json(f["manifest"], "rotation.manifest", nxt.signing_key)
        if manifest.patient != nxt.patient or manifest.epoch != nxt.epoch:
            raise Forbidden("rotation.manifest is not for the new epoch")
        return cls(nxt, tuple(kept), RecoverySetup.from_json(f["recovery"], "rotation.recovery"), manifest)
