"""PatientClient: register, recover, and read and write the encrypted vault."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import attrs

from rxfed.client import records as rec
from rxfed.client.profile import Identity, Profile
from rxfed.client.records import Record
from rxfed.crypto import (
    BoxKeyPair,
    DecryptionFailed,
    SigningKeyPair,
    b64d,
    b64e,
    open_signed,
    random_bytes,
    seal_signed,
    sha256,
)
from rxfed.crypto.keyfile import KdfCost
from rxfed.crypto.records import VaultKeyring, open_record, seal_record, secretbox_open, secretbox_seal
from rxfed.crypto.recovery import RecoveryCode
from rxfed.errors import BadRequest, Conflict, RxfedError, Unavailable
from rxfed.protocol import vault as pv
from rxfed.protocol.auth import sign_request
from rxfed.protocol.canonical import canonical, loads
from rxfed.protocol.statements import sign_statement

#: Records per commit when importing many at once (keeps each request well under the limit).
CHUNK = 64
PROTOCOL_VERSION = "1"


class NodeRefused(RxfedError):
    """The node answered with an error; ``status`` and ``code`` are the node's."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message, code=code)
        self.status = status


class IntegrityError(RxfedError):
    """The node served something the patient never signed: tampering or silent loss."""

    status = 502
    code = "integrity_error"


class RollbackDetected(IntegrityError):
    code = "rollback_detected"


def record_ad(patient: str, record_id: str, version: int) -> bytes:
    """Associated data binding a sealed record to its owner, id and version."""
    return canonical({"owner": patient, "record": record_id, "version": version})


def keyring_envelope(root: SigningKeyPair, holder: str, box_key: bytes, keyring: VaultKeyring) -> bytes:
    """The vault keyring sealed to one holder (a device or the recovery key), signed inside by
    the root key so the node cannot hand a device a keyring of its own making."""
    return seal_signed(root, box_key, b"rxfed-keyring|" + holder.encode() + b"|", keyring.to_bytes())


def open_keyring_envelope(root_key: bytes, holder: str, box: BoxKeyPair, sealed: bytes) -> VaultKeyring:
    try:
        return VaultKeyring.from_bytes(open_signed(root_key, box, b"rxfed-keyring|" + holder.encode() + b"|", sealed))
    except DecryptionFailed:
        raise IntegrityError("the vault keyring from the node is not one the patient sealed") from None


def _recovery_box(code: RecoveryCode) -> BoxKeyPair:
    return BoxKeyPair.from_secret(code.box_secret())


def recovery_setup(root: SigningKeyPair, code: RecoveryCode, keyring: VaultKeyring, now: int) -> pv.RecoverySetup:
    box = _recovery_box(code)
    auth = code.auth_key()
    patient = pv.patient_id(root.public)
    statement = pv.RecoverySetup.statement_for(root, auth.public, box.public, now)
    root_bundle = secretbox_seal(code.bundle_key(), b"rxfed-recovery|" + patient.encode(), root.seed)
    return pv.RecoverySetup(auth.public, box.public, statement, root_bundle,
                            keyring_envelope(root, "recovery", box.public, keyring))


@attrs.frozen
class VaultState:
    """The vault as the node served it, checked against the patient's signed manifest."""

    account: dict
    keyring: VaultKeyring = attrs.field(repr=False)
    counter: int
    entries: dict[str, tuple[int, bytes]]
    blobs: dict[str, tuple[int, bytes]] = attrs.field(repr=False)


@attrs.frozen
class DeviceInfo:
    device: str
    created: int
    revoked: int | None
    current: bool
    verified: bool


class PatientClient:
    """One patient device talking to its home node. Use as an async context manager."""

    def __init__(self, profile: Profile, identity: Identity, *, session: aiohttp.ClientSession | None = None,
                 clock: Callable[[], float] = time.time):
        self.profile = profile
        self.identity = identity
        self.clock = clock
        self._session = session
        self._own_session = session is None

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    def open(cls, profile_dir: str | Path, passphrase: str, **kwargs: Any) -> PatientClient:
        profile = Profile(Path(profile_dir))
        return cls(profile, profile.unlock(passphrase), **kwargs)

    async def __aenter__(self) -> PatientClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def patient(self) -> str:
        return self.identity.patient

    @property
    def device(self) -> str:
        return pv.device_id(self.identity.device.public)

    def _now(self) -> int:
        return int(self.clock())

    # -- HTTP ------------------------------------------------------------------------------
    @staticmethod
    async def _http(session: aiohttp.ClientSession, method: str, url: str, *, body: bytes = b"",
                    headers: dict[str, str] | None = None) -> Any:
        headers = dict(headers or {})
        if body:
            headers["Content-Type"] = "application/json"
        try:
            async with session.request(method, url, data=body or None, headers=headers) as resp:
                payload = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise Unavailable(f"cannot reach the node at {url.split('/v1')[0]}: {exc or type(exc).__name__}") from None
        try:
            doc = loads(payload) if payload else None
        except RxfedError:
            raise IntegrityError(f"the node answered {status} with a body that is not JSON") from None
        if status >= 400:
            code = doc.get("error", "error") if isinstance(doc, dict) else "error"
            message = doc.get("message", "") if isinstance(doc, dict) else ""
            raise NodeRefused(status, code, f"the node refused: {message or code} ({status})")
        return doc

    @staticmethod
    def _new_session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60), raise_for_status=False)

    def _session_or_new(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = self._new_session()
        return self._session

    async def _call(self, method: str, path: str, body: Any = None, *, key: SigningKeyPair | None = None) -> Any:
        return await self._call_raw(method, path, canonical(body) if body is not None else b"", key=key)

    def _sign(self, method: str, path: str, raw: bytes, key: SigningKeyPair | None = None) -> dict[str, str]:
        return sign_request(key or self.identity.device, method=method, target=path,
                            destination=self.identity.node_id, body=raw, now=self._now())

    async def _call_raw(self, method: str, path: str, raw: bytes, *, key: SigningKeyPair | None = None,
                        headers: dict[str, str] | None = None) -> Any:
        headers = headers or self._sign(method, path, raw, key)
        return await self._http(self._session_or_new(), method, self.identity.node_url.rstrip("/") + path,
                                body=raw, headers=headers)

    @classmethod
    async def discover(cls, session: aiohttp.ClientSession, node_url: str) -> dict:
        """The node's ``/.well-known/rxfed`` document, checked for a protocol we speak."""
        doc = await cls._http(session, "GET", node_url.rstrip("/") + "/.well-known/rxfed")
        if not isinstance(doc, dict) or PROTOCOL_VERSION not in doc.get("protocol_versions", []):
            raise BadRequest(f"{node_url} does not speak rxfed protocol {PROTOCOL_VERSION}", code="incompatible_node")
        return doc

    # -- registration and recovery ---------------------------------------------------------
    @classmethod
    @contextlib.asynccontextmanager
    async def _new_device(cls, profile_dir: str | Path, session: aiohttp.ClientSession | None):
        """A fresh profile directory and an HTTP session (closed again if setting up fails)."""
        profile = Profile(Path(profile_dir))
        if profile.exists:
            raise Conflict(f"{profile.path} already holds a profile; choose another --profile", code="profile_exists")
        own = session is None
        session = session or cls._new_session()
        try:
            yield profile, session, own
        except BaseException:
            if own:
                await session.close()
            raise

    @classmethod
    async def _enrol(cls, profile: Profile, identity: Identity, passphrase: str, kdf: str, session, own: bool,
                     clock, path: str, body: dict) -> PatientClient:
        """Write the profile, then make the request that registers this device with the
        node; the profile is removed again if the node refuses. (The profile comes first: a
        registered device must never lack its keys.)"""
        profile.create(identity, passphrase, KdfCost.named(kdf))
        client = cls(profile, identity, session=session, clock=clock)
        client._own_session = own
        try:
            await client._call("POST", path, body)
        except BaseException:
            profile.remove()
            raise
        return client

    @classmethod
    async def register(cls, node_url: str, profile_dir: str | Path, passphrase: str, *, invite: str | None = None,
                       kdf: str = "moderate", clock: Callable[[], float] = time.time,
                       session: aiohttp.ClientSession | None = None) -> tuple[PatientClient, RecoveryCode]:
        """Create keys locally, register their public halves, and return the client and the
        recovery code (shown to the patient once; the node never sees it)."""
        KdfCost.named(kdf)
        async with cls._new_device(profile_dir, session) as (profile, session, own):
            node = await cls.discover(session, node_url)
            now = int(clock())
            root, device, box = SigningKeyPair.generate(), SigningKeyPair.generate(), BoxKeyPair.generate()
            keyring, code = VaultKeyring.generate(), RecoveryCode.generate()
            cert = pv.DeviceCert.issue(root, device.public, box.public, now)
            identity = Identity(pv.patient_id(root.public), node_url.rstrip("/"), node["node_id"], root, device, box)
            body = {
                "root_key": b64e(root.public),
                "device": cert.signed,
                "keyring": b64e(keyring_envelope(root, cert.device, box.public, keyring)),
                "recovery": recovery_setup(root, code, keyring, now).to_json(),
                "invite": invite,
            }
            client = await cls._enrol(profile, identity, passphrase, kdf, session, own, clock, "/v1/patients", body)
            return client, code

    @classmethod
    async def recover(cls, node_url: str, profile_dir: str | Path, code: RecoveryCode, passphrase: str, *,
                      kdf: str = "moderate", clock: Callable[[], float] = time.time,
                      session: aiohttp.ClientSession | None = None) -> PatientClient:
        """Restore access on a new device from the recovery code alone."""
        KdfCost.named(kdf)
        async with cls._new_device(profile_dir, session) as (profile, session, own):
            node = await cls.discover(session, node_url)
            auth = code.auth_key()
            raw = canonical({})
            headers = sign_request(auth, method="POST", target="/v1/recovery/bundle", destination=node["node_id"],
                                   body=raw, now=int(clock()))
            found = await cls._http(session, "POST", node_url.rstrip("/") + "/v1/recovery/bundle", body=raw,
                                    headers=headers)
            root_key = b64d(found["root_key"], length=32)
            patient = pv.patient_id(root_key)
            if found["patient"] != patient:
                raise IntegrityError("the node's recovery answer names another patient")
            try:
                seed = secretbox_open(code.bundle_key(), b"rxfed-recovery|" + patient.encode(), b64d(found["root_bundle"]))
            except DecryptionFailed:
                raise IntegrityError("the recovery bundle does not open with this code") from None
            root = SigningKeyPair.from_seed(seed)
            if root.public != root_key:
                raise IntegrityError("the recovery bundle holds another identity key")
            keyring = open_keyring_envelope(root_key, "recovery", _recovery_box(code), b64d(found["keyring"]))
            device, box = SigningKeyPair.generate(), BoxKeyPair.generate()
            cert = pv.DeviceCert.issue(root, device.public, box.public, int(clock()))
            identity = Identity(patient, node_url.rstrip("/"), node["node_id"], root, device, box)
            body = {"device": cert.signed, "keyring": b64e(keyring_envelope(root, cert.device, box.public, keyring))}
            return await cls._enrol(profile, identity, passphrase, kdf, session, own, clock, "/v1/devices", body)

    # -- the vault -------------------------------------------------------------------------
    async def _load(self) -> VaultState:
        root = self.identity.root
        account = await self._call("GET", "/v1/account")
        keyring = open_keyring_envelope(root.public, self.device, self.identity.box, b64d(account["keyring"]))
        vault = await self._call("GET", "/v1/vault")
        blobs = {r["id"]: (r["version"], b64d(r["blob"])) for r in vault["records"]}
        entries = {rid: (ver, sha256(blob)) for rid, (ver, blob) in blobs.items()}
        last_seen = self.profile.counter()
        if vault["manifest"] is None:
            counter = 0
            if entries:
                raise IntegrityError("the node holds records but no manifest the patient signed")
        else:
            try:
                manifest = pv.Manifest.from_json(vault["manifest"], "manifest", root.public)
            except RxfedError:
                raise IntegrityError("the vault manifest is not signed by this patient") from None
            if manifest.digest != pv.Manifest.digest_of(entries) or manifest.count != len(entries):
                raise IntegrityError("the records the node served do not match the patient's signed manifest: "
                                     "a record was dropped, replaced or rolled back")
            counter = manifest.counter
        if counter < last_seen:
            raise RollbackDetected(f"the node served vault version {counter}, older than version {last_seen} "
                                   "this device has already seen")
        if counter > last_seen:
            self.profile.set_counter(counter)
        return VaultState(account, keyring, counter, entries, blobs)

    def _decrypt(self, state: VaultState) -> list[Record]:
        out = []
        for rid, (version, blob) in state.blobs.items():
            try:
                plaintext = open_record(state.keyring, record_ad(self.patient, rid, version), blob)
            except DecryptionFailed:
                raise IntegrityError(f"record {rid} does not decrypt: it was tampered with") from None
            out.append(Record.from_plaintext(rid, version, plaintext))
        out.sort(key=lambda r: (r.created, r.id), reverse=True)
        return out

    async def records(self, kind: str | None = None) -> list[Record]:
        """Every record, decrypted and verified, newest first."""
        found = self._decrypt(await self._load())
        return [r for r in found if kind is None or r.kind == kind]

    def _prepare_commit(self, state: VaultState, puts: list[Record], deletes: Iterable[str] = ()) -> tuple[dict, VaultState]:
        """Seal the records and sign the next manifest: the body of one commit, and the vault
        state once the node has accepted it."""
        entries, counter = dict(state.entries), state.counter
        body_puts = []
        for record in puts:
            version = entries[record.id][0] + 1 if record.id in entries else 1
            blob = seal_record(state.keyring, record_ad(self.patient, record.id, version), record.to_plaintext())
            entries[record.id] = (version, sha256(blob))
            body_puts.append({"id": record.id, "version": version, "blob": b64e(blob)})
        body_deletes = []
        for rid in deletes:
            body_deletes.append({"id": rid, "version": entries.pop(rid)[0]})
        manifest = pv.Manifest.issue(self.identity.root, counter + 1, entries, self._now())
        body = {"put": body_puts, "delete": body_deletes, "manifest": manifest.signed}
        return body, attrs.evolve(state, counter=manifest.counter, entries=entries)

    async def _commit(self, state: VaultState, puts: list[Record], deletes: Iterable[str] = ()) -> VaultState:
        body, after = self._prepare_commit(state, puts, deletes)
        await self._call("POST", "/v1/vault", body)
        self.profile.set_counter(after.counter)
        return after

    async def add_records(self, items: list[tuple[str, dict]]) -> list[Record]:
        """Encrypt and store new records (in chunks, each an atomic commit)."""
        now = self.clock()
        # One microsecond apart, so "newest first" keeps the order they were given in.
        new = [Record(random_bytes(16).hex(), 1, kind, rec.timestamp(now + i / 1e6), data)
               for i, (kind, data) in enumerate(items)]
        for attempt in range(2):
            state = await self._load()
            try:
                for i in range(0, len(new), CHUNK):
                    state = await self._commit(state, new[i : i + CHUNK])
                return new
            except NodeRefused as exc:
                # Another device committed in between: reload once and try again.
                if exc.code != "stale_manifest" or attempt:
                    raise
                new = [r for r in new if r.id not in state.entries]
        return new  # pragma: no cover

    async def open_vault(self) -> OpenVault:
        """Load and verify the vault once, then write record after record without reloading
        it (for bulk writers; another device writing meanwhile makes the next write fail with
        ``stale_manifest``, after which open the vault again)."""
        return OpenVault(self, await self._load())

    async def add_record(self, kind: str, data: dict) -> Record:
        return (await self.add_records([(kind, data)]))[0]

    async def add_condition(self, code: str, system: str = "icd10", label: str | None = None) -> Record:
        return await self.add_record("condition", rec.condition(code, system, label))

    async def add_journal(self, **kwargs: Any) -> Record:
        return await self.add_record("journal", rec.journal(**kwargs))

    async def add_treatment(self, name: str, **kwargs: Any) -> Record:
        return await self.add_record("treatment", rec.treatment(name, **kwargs))

    # -- devices, passphrase, recovery, erasure ---------------------------------------------
    async def devices(self) -> list[DeviceInfo]:
        account = await self._call("GET", "/v1/account")
        out = []
        for d in account["devices"]:
            try:
                cert = pv.DeviceCert.from_json(d["cert"], "device", self.identity.root.public)
                verified = cert.device == d["device"]
            except RxfedError:
                verified = False
            out.append(DeviceInfo(d["device"], d["created"], d["revoked"], d["device"] == self.device, verified))
        return out

    async def revoke_device(self, device: str) -> None:
        """Revoke a device and rotate the vault key: records written from now on are sealed
        under a key the revoked device never had."""
        state = await self._load()
        root = self.identity.root
        keyring = state.keyring.rotated()
        remaining = {}
        for d in state.account["devices"]:
            if d["revoked"] is None and d["device"] != device:
                cert = pv.DeviceCert.from_json(d["cert"], "device", root.public)
                remaining[cert.device] = b64e(keyring_envelope(root, cert.device, cert.box_key, keyring))
        if not any(d["device"] == device and d["revoked"] is None for d in state.account["devices"]):
            raise BadRequest(f"no active device {device}", code="unknown_device")
        statement = state.account["recovery"]
        recovery = pv.parse_recovery_statement(statement, "recovery", root.public)
        revocation = sign_statement(root, {"type": pv.REVOCATION, "patient": self.patient, "device": device,
                                              "revoked": self._now()})
        await self._call("POST", "/v1/devices/revoke", {
            "revocation": revocation, "keyrings": remaining,
            "recovery_keyring": b64e(keyring_envelope(root, "recovery", recovery["box_key"], keyring)),
        })

    def change_passphrase(self, new_passphrase: str, kdf: str | None = None) -> None:
        from rxfed.crypto.keyfile import keyfile_cost

        cost = KdfCost.named(kdf) if kdf else keyfile_cost((self.profile.path / "keys.json").read_bytes())
        self.profile.save(self.identity, new_passphrase, cost)

    async def rotate_recovery_code(self) -> RecoveryCode:
        """A new recovery code; the old one stops working at once."""
        state = await self._load()
        code = RecoveryCode.generate()
        setup = recovery_setup(self.identity.root, code, state.keyring, self._now())
        await self._call("PUT", "/v1/recovery", setup.to_json())
        return code

    async def erase_account(self, *, remove_profile: bool = True) -> dict:
        """Erase every record, device and key of this patient on the node; the node keeps a
        tombstone signed by the patient. Live consent grants are revoked first, so every
        node that received signals deletes them. Then remove the local key file."""
        from rxfed.client.consent import Consent

        consent = Consent(self, plugins=False)
        for grant in await consent.list():
            if grant["status"] == "live":
                await consent.revoke(grant["grant"])
        tombstone = sign_statement(self.identity.root, {"type": pv.TOMBSTONE, "patient": self.patient,
                                                           "deleted": self._now()})
        result = await self._call("POST", "/v1/account/erase", {"tombstone": tombstone})
        if remove_profile:
            self.profile.remove()
        return result


@attrs.frozen
class PreparedWrite:
    """A sealed record and its signed commit, ready to send (see :meth:`OpenVault.prepare`)."""

    record: Record
    body: bytes = attrs.field(repr=False)
    counter: int
    #: Request signature made at prepare time (valid for the node's time window), or None
    #: to sign when sending.
    headers: dict[str, str] | None = attrs.field(default=None, repr=False)


class OpenVault:
    """A verified vault kept in memory between writes; see :meth:`PatientClient.open_vault`."""

    def __init__(self, client: PatientClient, state: VaultState):
        self.client = client
        self.state = state

    @property
    def counter(self) -> int:
        return self.state.counter

    def prepare(self, kind: str, data: dict, *, sign: bool = False) -> PreparedWrite:
        """Seal a new record and sign the commit that adds it, without sending it; with
        ``sign``, sign the request too (it must then be sent within the node's time window).
        Prepared writes must be sent in the order they were prepared; after a failed send,
        open the vault again (the prepared ones after it are void)."""
        record = Record(random_bytes(16).hex(), 1, kind, rec.timestamp(self.client.clock()), data)
        body, self.state = self.client._prepare_commit(self.state, [record])
        raw = canonical(body)
        headers = self.client._sign("POST", "/v1/vault", raw) if sign else None
        return PreparedWrite(record, raw, self.state.counter, headers)

    async def send(self, prepared: PreparedWrite) -> Record:
        await self.client._call_raw("POST", "/v1/vault", prepared.body, headers=prepared.headers)
        self.client.profile.set_counter(prepared.counter)
        return prepared.record

    async def add(self, kind: str, data: dict) -> Record:
        return await self.send(self.prepare(kind, data))
