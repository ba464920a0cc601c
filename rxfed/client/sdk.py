"""PatientCore: register, recover, and read and write the encrypted vault."""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs

from rxfed.client import records as rec
from rxfed.client import transport
from rxfed.client.identity import (
    EpochSecrets,
    IntegrityError,
    RollbackDetected,
    open_secrets,
    seal_secrets,
    verify_chain,
)
from rxfed.client.profile import Identity, LocalState, Profile
from rxfed.client.records import Record
from rxfed.client.restore import LostRecord, RestoreDetected, RestoreReport
from rxfed.client.vault_cache import VaultCache
from rxfed.crypto import BoxKeyPair, DecryptionFailed, SigningKeyPair, b64d, b64e, random_bytes, sha256
from rxfed.crypto.keyfile import KdfCost
from rxfed.crypto.records import open_record, seal_record, secretbox_open, secretbox_seal
from rxfed.crypto.recovery import RecoveryCode
from rxfed.errors import BadRequest, Conflict, Forbidden, NotFound, RxfedError, Unauthorized, Unavailable
from rxfed.protocol import vault as pv
from rxfed.protocol.auth import sign_request
from rxfed.protocol.canonical import canonical, loads

__all__ = ["IntegrityError", "NodeRefused", "PatientCore", "ProfileLocked", "RestoreDetected", "RestoreReport",
           "RollbackDetected"]

#: How the client talks HTTP: its own :class:`rxfed.client.transport.Http` by default, or an
#: ``aiohttp.ClientSession`` the caller brings.
Session = Any
#: ``progress(what, done, total)``: how far a long piece of work has come.
Progress = Callable[[str, int, int], None]

#: Records per commit when importing many at once (keeps each request well under the limit).
CHUNK = 64
PROTOCOL_VERSION = "1"


class NodeRefused(RxfedError):
    """The node answered with an error; ``status`` and ``code`` are the node's."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message, code=code)
        self.status = status


class ProfileLocked(Unauthorized):
    """No passphrase was given and no unlock agent holds the profile."""

    code = "profile_locked"


def record_ad(patient: str, record_id: str, version: int) -> bytes:
    """Associated data binding a sealed record to its owner, id and version."""
    return canonical({"owner": patient, "record": record_id, "version": version})


def _bundle_ad(patient: str) -> bytes:
    return b"rxfed-recovery|" + patient.encode()


def recovery_material(master: SigningKeyPair, code: RecoveryCode, secrets: EpochSecrets, patient: str) -> pv.RecoverySetup:
    """What the node keeps for a recovery code: the master key sealed under the code's bundle
    key, and the epoch's secrets sealed to the code's box key."""
    box = BoxKeyPair.from_secret(code.box_secret())
    return pv.RecoverySetup(secretbox_seal(code.bundle_key(), _bundle_ad(patient), master.seed),
                            seal_secrets(secrets, "recovery", box.public))


LINK_PREFIX = "rxfed-link:"


def link_code(device: SigningKeyPair, box_key: bytes) -> str:
    """What a new device shows so that an active device can enrol it: its two public keys and
    its own proof that they go together."""
    return LINK_PREFIX + b64e(device.public + box_key + pv.device_key_proof(device, box_key))


def parse_link_code(text: str) -> tuple[bytes, bytes, bytes]:
    """(sign key, box key, device proof) of a link code."""
    text = (text or "").strip()
    try:
        if not text.startswith(LINK_PREFIX):
            raise ValueError
        raw = b64d(text[len(LINK_PREFIX):], length=128)
    except ValueError:
        raise BadRequest("a link code starts with rxfed-link: and is printed by `rxfed patient link request`",
                         code="bad_link_code") from None
    return raw[:32], raw[32:64], raw[64:]


def new_device_cert(signer: SigningKeyPair, enroller: SigningKeyPair, *, patient: str, epoch: int, sign_key: bytes,
                    box_key: bytes, device_proof: bytes, enrolled_by: str, now: int) -> pv.DeviceCert:
    """A certificate for a device enrolled now, at ``epoch``, with the enroller's proof."""
    proof = pv.enrolment_proof(enroller, patient=patient, sign_key=sign_key, box_key=box_key, enrolled_by=enrolled_by,
                               enrolled_epoch=epoch)
    return pv.DeviceCert.issue(signer, patient=patient, epoch=epoch, sign_key=sign_key, box_key=box_key,
                               enrolled_by=enrolled_by, enrolled_epoch=epoch, device_proof=device_proof,
                               enroller_proof=proof, now=now)


def checked_devices(chain: pv.IdentityChain, listing: list) -> dict[str, tuple[pv.DeviceCert, bool]]:
    """Every device the node lists whose certificate verifies, by its certificates and not
    the node's word: certified at some epoch of the chain, with the device's own proof, and
    an enroller's proof that verifies under the root key, a recovery key of the chain, or a
    device that verifies in turn. Each with whether it is active: certified at the current
    epoch and not marked revoked (the node's flag can only take a device out)."""
    certs = {}
    for d in listing:
        try:
            cert = pv.DeviceCert.from_json(d["cert"], "device", chain)
        except (RxfedError, KeyError, TypeError):
            continue
        if cert.device == d.get("device"):
            certs[cert.device] = (cert, d.get("revoked"))
    keys = {device: cert.sign_key for device, (cert, _) in certs.items()}
    good: dict[str, tuple[pv.DeviceCert, bool]] = {}
    for device, (cert, revoked) in certs.items():
        seen, current = set(), cert
        try:  # walk the enrolment lineage back to registration or recovery
            while True:
                current.check_enroller(chain, keys)
                if current.enrolled_by in ("registration", "recovery"):
                    break
                if current.enrolled_by in seen:
                    raise Forbidden("an enrolment cycle")
                seen.add(current.enrolled_by)
                current = certs[current.enrolled_by][0]
        except (RxfedError, KeyError):
            continue
        good[device] = (cert, cert.epoch == chain.current.epoch and revoked is None)
    return good


def verified_devices(chain: pv.IdentityChain, listing: list) -> dict[str, pv.DeviceCert]:
    """The devices active at the current epoch by their certificates (:func:`checked_devices`)."""
    return {d: cert for d, (cert, active) in checked_devices(chain, listing).items() if active}


def confirmation_code(identity: pv.IdentityStatement, device: str) -> str:
    """A short code both devices show when one enrols the other: it binds the identity epoch
    the enrolling device signed under and the new device, so a node cannot hand the new
    device another identity (compare, or pass it to ``link finish --confirm``)."""
    text = base64.b32encode(sha256(b"rxfed-link-confirm|" + identity.hash + device.encode())[:10]).decode()
    return "-".join(text[i : i + 4] for i in range(0, 16, 4))


@attrs.frozen
class RecoveryAccess:
    """What the recovery code opens, checked (see ``PatientCore._recovery_bundle``)."""

    patient: str
    root_key: bytes
    chain: pv.IdentityChain
    master: SigningKeyPair = attrs.field(repr=False)
    secrets: EpochSecrets = attrs.field(repr=False)
    devices: list


def _verified_vault(vault: Any, patient: str,
                    chain: pv.IdentityChain) -> tuple[dict[str, tuple[int, bytes]], int, pv.Manifest | None]:
    """(entries, counter, manifest) of the vault the node served, checked against the
    current epoch's signed manifest."""
    try:
        entries = {r["id"]: (r["version"], sha256(b64d(r["blob"]))) for r in vault["records"]}
    except (KeyError, TypeError, ValueError):
        raise IntegrityError("the node's vault answer is malformed") from None
    if vault.get("manifest") is None:
        if entries:
            raise IntegrityError("the node holds records but no manifest the patient signed")
        return entries, 0, None
    try:
        manifest = pv.Manifest.from_json(vault["manifest"], "manifest", chain.current.signing_key)
    except RxfedError:
        raise IntegrityError("the vault manifest is not signed by this patient's current key") from None
    if manifest.patient != patient or manifest.epoch != chain.current.epoch:
        raise IntegrityError("the vault manifest is not this patient's for the current identity epoch")
    if manifest.digest != pv.Manifest.digest_of(entries) or manifest.count != len(entries):
        raise IntegrityError("the records the node served do not match the patient's signed manifest: "
                             "a record was dropped, replaced or rolled back")
    return entries, manifest.counter, manifest


def manifest_pin(manifest: dict | None) -> str | None:
    """What a device pins of the manifest it saw besides its counter: the digest of the
    records it lists (two manifests with one counter and one digest describe the same vault)."""
    return None if manifest is None else manifest["body"]["digest"]


def _rollback_check(counter: int, manifest: pv.Manifest | None, last_seen: int, seen_hash: str | None) -> None:
    """RollbackDetected when the vault is older than the one this device saw, or is another
    vault under the same counter."""
    if counter < last_seen:
        raise RollbackDetected(f"the node served vault version {counter}, older than version {last_seen} "
                               "this device has already seen")
    if (counter == last_seen and seen_hash is not None and manifest is not None
            and manifest_pin(manifest.signed) != seen_hash):
        raise RollbackDetected(f"the node served another vault version {counter} than the one this device saw")


def _checked_vault(vault: Any, patient: str, chain: pv.IdentityChain,
                   last_seen: int) -> tuple[dict[str, tuple[int, bytes]], int]:
    """(entries, counter) of the vault the node served, checked against the current epoch's
    signed manifest and the highest counter this device saw."""
    entries, counter, manifest = _verified_vault(vault, patient, chain)
    _rollback_check(counter, manifest, last_seen, None)
    return entries, counter


def _rotation(chain: pv.IdentityChain, nxt: EpochSecrets, master: SigningKeyPair, code: RecoveryCode,
              devices: list[pv.DeviceCert], counter: int, entries: dict, now: int, *,
              new_master: SigningKeyPair | None = None) -> tuple[dict, pv.IdentityStatement]:
    """The body of ``POST /v1/identity`` for epoch ``nxt.epoch``: the statement signed by
    ``master`` (naming ``new_master`` and ``code``'s recovery keys), ``devices`` certified
    again under the new signing key with the new secrets sealed to each, the recovery
    material, and the vault manifest re-signed (counter + 1)."""
    box = BoxKeyPair.from_secret(code.box_secret())
    identity = chain.current.next(master, signing_key=nxt.signing.public, now=now,
                                  master_key=new_master.public if new_master else None,
                                  recovery_auth=code.auth_key().public, recovery_box=box.public)
    certified = []
    for c in devices:
        cert = c if c.epoch == nxt.epoch else c.recertify(nxt.signing, nxt.epoch, now)
        certified.append({"device": cert.signed, "keyring": b64e(seal_secrets(nxt, cert.device, cert.box_key))})
    patient = chain.current.patient
    manifest = pv.Manifest.issue(nxt.signing, patient=patient, epoch=nxt.epoch, counter=counter + 1, entries=entries,
                                 now=now)
    body = {"identity": identity.signed, "devices": certified,
            "recovery": recovery_material(new_master or master, code, nxt, patient).to_json(),
            "manifest": manifest.signed}
    return body, identity


@attrs.frozen
class VaultState:
    """The vault as the node served it, checked against the patient's identity chain and
    signed manifest."""

    account: dict
    chain: pv.IdentityChain
    secrets: EpochSecrets = attrs.field(repr=False)
    counter: int
    entries: dict[str, tuple[int, bytes]]
    blobs: dict[str, tuple[int, bytes]] = attrs.field(repr=False)


@attrs.frozen
class DeviceInfo:
    device: str
    created: int
    revoked: int | None
    current: bool
    #: The certificate verifies, and the node's "revoked" agrees with the epoch it names.
    verified: bool
    enrolled_by: str | None
    #: What this device itself did: "registered", "enrolled", "revoked", or None.
    known: str | None


class PatientCore:
    """One patient device talking to its home node: keys, identity, devices and records. Use as
    an async context manager. :class:`rxfed.client.PatientClient` is what applications use: it
    adds the steps that span the patient's communities and consent grants, which this module
    does not import (they build on it)."""

    def __init__(self, profile: Profile, identity: Identity, *, session: Session | None = None,
                 clock: Callable[[], float] = time.time, progress: Progress | None = None):
        self.profile = profile
        self.identity = identity
        self.clock = clock
        #: Told how long work goes (``progress(what, done, total)``): storing many records.
        self.progress = progress
        self._session = session
        self._own_session = session is None
        self._secrets: EpochSecrets | None = None
        self._passphrase: str | None = None
        #: What the last revocation or recovery replaced (see :meth:`after_revocation`).
        self.followups: dict = {}

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    def open(cls, profile_dir: str | Path, passphrase: str | None = None, **kwargs: Any) -> PatientCore:
        """Open the profile in ``profile_dir`` (``~`` is expanded) with its passphrase, or,
        without one, from the unlock agent holding it (``rxfed patient unlock``; raises
        :class:`ProfileLocked` when none does)."""
        profile = Profile(Path(profile_dir).expanduser())
        if passphrase is None:
            from rxfed.client import agent

            opened = agent.identity_bytes(profile.path)
            if opened is None:
                raise ProfileLocked(f"no passphrase given and no unlock agent holds {profile.path}: give the "
                                    "passphrase, or run `rxfed patient unlock` first")
            return cls(profile, Identity.from_bytes(opened), **kwargs)
        client = cls(profile, profile.unlock(passphrase), **kwargs)
        client._passphrase = passphrase
        return client

    async def __aenter__(self) -> PatientCore:
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
    def root_key(self) -> bytes:
        return self.identity.root_key

    @property
    def device(self) -> str:
        return pv.device_id(self.identity.device.public)

    def _now(self) -> int:
        return int(self.clock())

    # -- HTTP ------------------------------------------------------------------------------
    @staticmethod
    async def _http(session: Session, method: str, url: str, *, body: bytes = b"",
                    headers: dict[str, str] | None = None) -> Any:
        headers = dict(headers or {})
        if body:
            headers["Content-Type"] = "application/json"
        try:
            status, payload = await transport.request(session, method, url, body=body, headers=headers)
        except OSError as exc:  # refused, reset, timed out, malformed HTTP
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
    def _new_session() -> transport.Http:
        return transport.Http()

    def _session_or_new(self) -> Session:
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
    async def discover(cls, session: Session, node_url: str) -> dict:
        """The node's ``/.well-known/rxfed`` document, checked for a protocol we speak."""
        doc = await cls._http(session, "GET", node_url.rstrip("/") + "/.well-known/rxfed")
        if not isinstance(doc, dict) or PROTOCOL_VERSION not in doc.get("protocol_versions", []):
            raise BadRequest(f"{node_url} does not speak rxfed protocol {PROTOCOL_VERSION}", code="incompatible_node")
        return doc

    # -- registration and recovery ---------------------------------------------------------
    @classmethod
    @contextlib.asynccontextmanager
    async def _new_device(cls, profile_dir: str | Path, session: Session | None):
        """A fresh profile directory and an HTTP session (closed again if setting up fails)."""
        profile = Profile(Path(profile_dir).expanduser())
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
                     clock, path: str, body: dict, *, key: SigningKeyPair | None = None,
                     pins: LocalState | None = None) -> PatientCore:
        """Write the profile, then make the request that registers this device with the
        node; the profile is removed again if the node refuses. (The profile comes first: a
        registered device must never lack its keys.)"""
        profile.create(identity, passphrase, KdfCost.named(kdf))
        if pins is not None:
            profile.save_state(pins)
        client = cls(profile, identity, session=session, clock=clock)
        client._own_session = own
        try:
            await client._call("POST", path, body, key=key)
        except BaseException:
            profile.remove()
            raise
        return client

    @staticmethod
    def _pins(identity: pv.IdentityStatement, device: str, how: str) -> LocalState:
        return LocalState(epoch=identity.epoch, identity_hash=b64e(identity.hash), devices={device: how})

    @classmethod
    async def register(cls, node_url: str, profile_dir: str | Path, passphrase: str, *, invite: str | None = None,
                       kdf: str = "moderate", clock: Callable[[], float] = time.time,
                       session: Session | None = None) -> tuple[PatientCore, RecoveryCode]:
        """Create keys locally, register their public halves, and return the client and the
        recovery code (shown to the patient once; the node never sees it). The master key
        is sealed under the code and then forgotten: no device keeps it."""
        KdfCost.named(kdf)
        async with cls._new_device(profile_dir, session) as (profile, session, own):
            node = await cls.discover(session, node_url)
            now = int(clock())
            root, device, box = SigningKeyPair.generate(), SigningKeyPair.generate(), BoxKeyPair.generate()
            secrets, code = EpochSecrets.first(), RecoveryCode.generate()
            patient = pv.patient_id(root.public)
            ident = pv.IdentityStatement.issue(
                root, patient=patient, epoch=1, previous=None, master_key=root.public,
                signing_key=secrets.signing.public, recovery_auth=code.auth_key().public,
                recovery_box=BoxKeyPair.from_secret(code.box_secret()).public, now=now)
            cert = new_device_cert(secrets.signing, root, patient=patient, epoch=1, sign_key=device.public,
                                   box_key=box.public, device_proof=pv.device_key_proof(device, box.public),
                                   enrolled_by="registration", now=now)
            identity = Identity(patient, node_url.rstrip("/"), node["node_id"], root.public, device, box)
            body = {
                "root_key": b64e(root.public),
                "identity": ident.signed,
                "device": cert.signed,
                "keyring": b64e(seal_secrets(secrets, cert.device, box.public)),
                "recovery": recovery_material(root, code, secrets, patient).to_json(),
                "invite": invite,
            }
            client = await cls._enrol(profile, identity, passphrase, kdf, session, own, clock, "/v1/patients", body,
                                      pins=cls._pins(ident, cert.device, "registered"))
            return client, code

    @classmethod
    async def _recovery_bundle(cls, session: Session, node_url: str, node_id: str, code: RecoveryCode,
                               now: int, pins: LocalState | None = None, root_key: bytes | None = None):
        """What the node keeps for ``code``, checked: (patient, root key, chain, master key,
        epoch secrets). Only the current code opens anything: the node answers only to the
        current recovery key, and the master key it holds must be the current epoch's."""
        auth = code.auth_key()
        raw = canonical({})
        headers = sign_request(auth, method="POST", target="/v1/recovery/bundle", destination=node_id, body=raw,
                               now=now)
        try:
            found = await cls._http(session, "POST", node_url.rstrip("/") + "/v1/recovery/bundle", body=raw,
                                    headers=headers)
        except NodeRefused as exc:
            if exc.code == "unknown_key":
                raise Forbidden("this recovery code is not the patient's current one on this node",
                                code="wrong_recovery_code") from None
            raise
        try:
            found_root = b64d(found["root_key"], length=32)
        except (KeyError, TypeError, ValueError):
            raise IntegrityError("the node's recovery answer is malformed") from None
        if root_key is not None and found_root != root_key:
            raise Forbidden("this recovery code belongs to another account", code="wrong_recovery_code")
        patient = pv.patient_id(found_root)
        chain, pins = verify_chain(found_root, found.get("identity"), pins or LocalState())
        current = chain.current
        if current.recovery_auth != auth.public:
            raise Forbidden("this recovery code is not the patient's current one", code="wrong_recovery_code")
        try:
            seed = secretbox_open(code.bundle_key(), _bundle_ad(patient), b64d(found["root_bundle"]))
        except (DecryptionFailed, KeyError, TypeError, ValueError):
            raise IntegrityError("the recovery bundle does not open with this code") from None
        master = SigningKeyPair.from_seed(seed)
        if master.public != current.master_key:
            raise IntegrityError("the recovery bundle holds another master key than the current epoch names")
        secrets = open_secrets(current, "recovery", BoxKeyPair.from_secret(code.box_secret()), b64d(found["keyring"]))
        return RecoveryAccess(patient, found_root, chain, master, secrets, found.get("devices") or [])

    @classmethod
    async def recover(cls, node_url: str, profile_dir: str | Path, code: RecoveryCode, passphrase: str, *,
                      kdf: str = "moderate", clock: Callable[[], float] = time.time,
                      session: Session | None = None, keep: Iterable[str] | str = ()) -> PatientCore:
        """Restore access on a new device from the recovery code alone. Recovery always starts
        a new identity epoch, sealed to this device and to the devices in ``keep`` (device
        ids, or ``"all"`` for every device whose certificate verifies): so even a node that
        serves an old backup of the account cannot make this device write under secrets a
        revoked device holds. Every other device is revoked."""
        KdfCost.named(kdf)
        async with cls._new_device(profile_dir, session) as (profile, session, own):
            node = await cls.discover(session, node_url)
            access = await cls._recovery_bundle(session, node_url, node["node_id"], code, int(clock()))
            now = int(clock())
            auth = code.auth_key()
            # the vault as it stands, checked against the current epoch's manifest
            raw = canonical({})
            headers = sign_request(auth, method="GET", target="/v1/vault", destination=node["node_id"], body=b"",
                                   now=now)
            vault = await cls._http(session, "GET", node_url.rstrip("/") + "/v1/vault", headers=headers)
            del raw
            entries, counter = _checked_vault(vault, access.patient, access.chain, 0)
            active = verified_devices(access.chain, access.devices)
            if keep == "all":
                kept = list(active.values())
            else:
                unknown = set(keep) - set(active)
                if unknown:
                    raise BadRequest(f"no active device {sorted(unknown)[0]} to keep", code="unknown_device")
                kept = [active[d] for d in keep]
            device, box = SigningKeyPair.generate(), BoxKeyPair.generate()
            nxt = access.secrets.next()
            cert = new_device_cert(nxt.signing, auth, patient=access.patient, epoch=nxt.epoch, sign_key=device.public,
                                   box_key=box.public, device_proof=pv.device_key_proof(device, box.public),
                                   enrolled_by="recovery", now=now)
            body, identity = _rotation(access.chain, nxt, access.master, code, kept + [cert], counter, entries, now)
            ident = Identity(access.patient, node_url.rstrip("/"), node["node_id"], access.root_key, device, box)
            pins = attrs.evolve(cls._pins(identity, cert.device, "registered"), counter=counter + 1)
            client = await cls._enrol(profile, ident, passphrase, kdf, session, own, clock, "/v1/identity", body,
                                      key=auth, pins=pins)
            client.followups = await client.after_revocation()
            return client

    # -- linking a new device from an active one -------------------------------------------
    @classmethod
    async def request_link(cls, node_url: str, profile_dir: str | Path, passphrase: str, *,
                           kdf: str = "moderate", session: Session | None = None) -> str:
        """Make this device's keys and a profile waiting to be linked; return the link code
        to enter on an active device (``add_device``). Nothing is sent to the node."""
        KdfCost.named(kdf)
        async with cls._new_device(profile_dir, session) as (profile, session, own):
            try:
                node = await cls.discover(session, node_url)
                device, box = SigningKeyPair.generate(), BoxKeyPair.generate()
                profile.create(Identity(None, node_url.rstrip("/"), node["node_id"], None, device, box), passphrase,
                               KdfCost.named(kdf))
                return link_code(device, box.public)
            finally:
                if own:
                    await session.close()

    async def finish_link(self, confirm: str) -> str:
        """On a device that requested a link: once an active device enrolled it, adopt the
        account. ``confirm`` is the confirmation code the enrolling device showed: it must
        match, or the node is serving another identity and nothing is adopted."""
        if self.identity.patient is not None:
            raise Conflict("this device is already linked to an account", code="already_linked")
        try:
            account = await self._call("GET", "/v1/account")
        except NodeRefused as exc:
            if exc.code in ("unknown_key", "unknown_account"):
                raise NotFound("no active device has enrolled this one yet: run `rxfed patient devices add` "
                               "with this device's link code on one", code="not_linked") from None
            raise
        try:
            root_key = b64d(account["root_key"], length=32)
        except (KeyError, TypeError, ValueError):
            raise IntegrityError("the node's account answer is malformed") from None
        chain, pins = verify_chain(root_key, account.get("identity"), LocalState())
        open_secrets(chain.current, self.device, self.identity.box, b64d(account["keyring"]))
        code = confirmation_code(chain.current, self.device)
        if (confirm or "").replace("-", "").strip().upper() != code.replace("-", ""):
            raise IntegrityError("the confirmation code does not match: the node may be serving another identity; "
                                 "this device was not linked")
        identity = attrs.evolve(self.identity, patient=pv.patient_id(root_key), root_key=root_key)
        from rxfed.crypto.keyfile import keyfile_cost

        self._passphrase_save(identity, keyfile_cost((self.profile.path / "keys.json").read_bytes()))
        self.profile.save_state(attrs.evolve(pins, devices={self.device: "registered"}))
        return code

    def _passphrase_save(self, identity: Identity, cost: KdfCost) -> None:
        if self._passphrase is None:
            raise BadRequest("open the profile with its passphrase to finish linking", code="passphrase_required")
        self.profile.save(identity, self._passphrase, cost)
        self.identity = identity

    async def add_device(self, link: str) -> tuple[str, str]:
        """Enrol the device that showed ``link`` (its link code) under the current epoch;
        returns (device id, confirmation code to compare on the new device)."""
        sign_key, box_key, proof = parse_link_code(link)
        state = await self._load()
        secrets = state.secrets
        try:
            cert = new_device_cert(secrets.signing, self.identity.device, patient=self.patient, epoch=secrets.epoch,
                                   sign_key=sign_key, box_key=box_key, device_proof=proof, enrolled_by=self.device,
                                   now=self._now())
            pv.DeviceCert.from_json(cert.signed, "link code", state.chain)
        except RxfedError:
            raise BadRequest("the link code's proof does not verify: copy it again from the new device",
                             code="bad_link_code") from None
        await self._call("POST", "/v1/devices", {"device": cert.signed,
                                                 "keyring": b64e(seal_secrets(secrets, cert.device, box_key))})
        self._remember_devices({cert.device: "enrolled"})
        return cert.device, confirmation_code(state.chain.current, cert.device)

    def _remember_devices(self, devices: dict[str, str]) -> None:
        pins = self.profile.state()
        self.profile.save_state(attrs.evolve(pins, devices={**pins.devices, **devices}))

    # -- the vault -------------------------------------------------------------------------
    async def _account(self) -> tuple[dict, pv.IdentityChain, EpochSecrets]:
        """The account as the node serves it, with the identity chain checked against this
        device's pins (saved when it moved on) and this device's epoch secrets opened."""
        if self.identity.patient is None:
            raise Conflict("this device is waiting to be linked to an account: run `rxfed patient link finish`",
                           code="not_linked")
        try:
            account = await self._call("GET", "/v1/account")
        except NodeRefused as exc:
            if exc.code != "unknown_key":
                raise
            raise await self._unknown_after_restore(exc) from None
        pins = self.profile.state()
        try:
            chain, newer = verify_chain(self.root_key, account.get("identity"), pins)
        except RollbackDetected as exc:
            restore = account.get("restore") if isinstance(account, dict) else None
            if not isinstance(restore, dict):
                raise
            # Never accepted: the identity epochs since the backup (a device revoked, a recovery
            # code changed) cannot be uploaded again from a device (spec/crypto.md section 11).
            raise RollbackDetected(f"{exc.message}. The node says it was restored from a backup taken before that "
                                   "epoch, so a device revocation or recovery-code change made since is undone on "
                                   "the node; this device does not go on under the older identity. Make the change "
                                   "again by recovering with `rxfed patient recover` and the recovery code that was "
                                   "current at the backup") from None
        if account.get("patient") != self.patient:
            raise IntegrityError("the node's account answer names another patient")
        secrets = open_secrets(chain.current, self.device, self.identity.box, b64d(account["keyring"]))
        if newer != pins:
            self.profile.save_state(newer)
        self._secrets = secrets
        return account, chain, secrets

    async def secrets(self) -> EpochSecrets:
        """This epoch's secrets (loaded from the node once per client)."""
        if self._secrets is None:
            await self._account()
        return self._secrets

    def pseudonym_secret(self, epoch: int | None = None) -> bytes:
        """The pseudonym secret of ``epoch`` (the current one by default); call
        :meth:`secrets` first."""
        if self._secrets is None:
            raise RuntimeError("load the account first (await client.secrets())")
        keys = self._secrets.pseudonyms.keys
        return keys[self._secrets.epoch if epoch is None else epoch]

    def pseudonym_secrets(self) -> list[bytes]:
        """Every epoch's pseudonym secret, newest first."""
        if self._secrets is None:
            raise RuntimeError("load the account first (await client.secrets())")
        keys = self._secrets.pseudonyms.keys
        return [keys[e] for e in sorted(keys, reverse=True)]

    async def _fetch_vault(self) -> tuple[VaultState, dict, pv.Manifest | None]:
        """The account and the vault as the node serves them, each verified (not yet against
        this device's vault pins), with the raw vault reply and its manifest."""
        account, chain, secrets = await self._account()
        vault = await self._call("GET", "/v1/vault")
        try:
            blobs = {r["id"]: (r["version"], b64d(r["blob"])) for r in vault["records"]}
        except (KeyError, TypeError, ValueError):
            raise IntegrityError("the node's vault answer is malformed") from None
        entries, counter, manifest = _verified_vault(vault, self.patient, chain)
        return VaultState(account, chain, secrets, counter, entries, blobs), vault, manifest

    async def _load(self) -> VaultState:
        state, vault, manifest = await self._fetch_vault()
        secrets, counter, blobs = state.secrets, state.counter, state.blobs
        pins = self.profile.state()
        try:
            _rollback_check(counter, manifest, pins.counter, pins.manifest_hash)
        except RollbackDetected as exc:
            raise RestoreDetected(await self._restore_report(vault, blobs, counter, manifest, secrets, pins,
                                                             exc)) from None
        self._seen(pins, counter, manifest, blobs)
        return state

    def _seen(self, pins: LocalState, counter: int, manifest: pv.Manifest | None,
              blobs: dict[str, tuple[int, bytes]]) -> None:
        """Pin the vault just verified, and bring the local copy up to it (unless a restore's
        re-upload is unfinished: the copy still holds what it must upload)."""
        cached = None
        if pins.cached != counter and pins.restore_pending is None:
            VaultCache(self.profile.path).rewrite(blobs)
            cached = counter
        self.profile.set_counter(counter, manifest_pin(manifest.signed if manifest else None), synced=self._now(),
                                 cached=cached)

    # -- restores (spec/crypto.md section 11) ----------------------------------------------
    async def _unknown_after_restore(self, refused: NodeRefused) -> NodeRefused:
        """The node does not know this device: when it says it was restored from a backup
        taken after this device last synced there, say why and what to do."""
        try:
            doc = await self.discover(self._session_or_new(), self.identity.node_url)
            taken = doc["restore"]["body"]["backup_taken"]
        except (RxfedError, KeyError, TypeError):
            return refused
        synced = self.profile.state().synced
        if not isinstance(taken, int) or (synced is not None and synced < taken):
            return refused
        from rxfed.client.restore import _utc

        return NodeRefused(refused.status, refused.code,
                           f"{refused.message}: the node says it was restored from a backup taken {_utc(taken)}, "
                           "before this device (or the account) was enrolled there. Link this device again from "
                           "another of your devices (`rxfed patient link`), or recover with the recovery code "
                           "(`rxfed patient recover`); this device's sealed copy of the vault is kept in its "
                           "profile")
    async def _restore_report(self, vault: dict, blobs: dict[str, tuple[int, bytes]], counter: int,
                              manifest: pv.Manifest | None, secrets: EpochSecrets, pins: LocalState,
                              rollback: RollbackDetected) -> RestoreReport:
        """The report on a rolled-back vault that a valid restore statement accounts for; the
        rollback itself (with why the statement is refused, if there is one) otherwise."""
        raw = vault.get("restore")
        if raw is None:
            raise rollback
        from rxfed.protocol.federation import NodeDocument
        from rxfed.protocol.restore import RestoreStatement, check_restore

        try:
            claimed = raw["body"]["restored"]
            doc = NodeDocument.from_json(await self.discover(self._session_or_new(), self.identity.node_url))
            if doc.node_id != self.identity.node_id:
                raise IntegrityError(f"the node says it is {doc.node_id!r}, not {self.identity.node_id}")
            keys = [k.public_key for k in doc.keys if isinstance(claimed, int) and k.valid_at(claimed)]
            statement = RestoreStatement.from_json(raw, "restore", keys)
            check_restore(statement, node=self.identity.node_id, synced=pins.synced,
                          served_issued=manifest.issued if manifest else 0,
                          accepted=tuple(r for r in pins.restores if r != pins.restore_pending), now=self._now())
        except (RxfedError, KeyError, TypeError) as exc:
            reason = exc.message if isinstance(exc, RxfedError) else "it is malformed"
            raise RollbackDetected(f"{rollback.message}; the node's restore statement does not account for it: "
                                   f"{reason}") from None
        lost, reappeared = self._compare(VaultCache(self.profile.path).load(), blobs, secrets)
        complete = pins.cached == pins.counter
        return RestoreReport(statement.node, statement.restore_id, statement.backup_taken, statement.restored,
                             pins.counter, counter, tuple(lost), tuple(reappeared) if complete else (), complete)

    def _open_cached(self, secrets: EpochSecrets, rid: str, version: int, blob: bytes) -> Record | None:
        try:
            return Record.from_plaintext(rid, version, open_record(secrets.keyring,
                                                                   record_ad(self.patient, rid, version), blob))
        except (DecryptionFailed, ValueError, KeyError, TypeError):
            return None

    def _compare(self, cache: dict[str, tuple[int, bytes]], blobs: dict[str, tuple[int, bytes]],
                 secrets: EpochSecrets) -> tuple[list[LostRecord], list[str]]:
        """What this device's copy holds that the node does not (by content: a record the
        device uploaded again after a restore is sealed anew), and what the node holds that
        the copy does not."""
        lost = []
        for rid, (version, blob) in sorted(cache.items()):
            served = blobs.get(rid)
            if served is not None and served[1] == blob:
                continue
            mine = self._open_cached(secrets, rid, version, blob)
            if served is not None and mine is not None:
                theirs = self._open_cached(secrets, rid, served[0], served[1])
                if theirs is not None and (theirs.kind, theirs.created, theirs.data) == (mine.kind, mine.created,
                                                                                          mine.data):
                    continue
            lost.append(LostRecord(rid, mine.kind if mine else None, version, served[0] if served else None,
                                   mine is not None))
        return lost, sorted(rid for rid in blobs if rid not in cache)

    async def restore_report(self) -> RestoreReport | None:
        """The restore this device has not accepted yet, if the node serves an older vault
        under a valid restore statement; None when the vault is in step. Raises
        :class:`RollbackDetected` for a rollback no valid statement accounts for."""
        try:
            await self._load()
        except RestoreDetected as exc:
            return exc.report
        return None

    async def accept_restore(self, restore_id: str) -> dict:
        """Accept the restore ``restore_id`` (the patient's consent, after seeing its report):
        upload again every lost record version this device holds (sealed anew as the node's
        next version), delete again what was deleted since the backup, and sign a manifest
        above every vault version this device saw, so no version number names two vaults.
        Resumes an upload cut short. Returns ``{"restore", "reuploaded", "deleted",
        "not_recoverable"}`` (record ids)."""
        state, vault, manifest = await self._fetch_vault()
        secrets, counter, blobs = state.secrets, state.counter, state.blobs
        pins = self.profile.state()
        served = vault.get("restore")
        if pins.restore_pending == restore_id and not (
                isinstance(served, dict) and isinstance(served.get("body"), dict)
                and served["body"].get("restore") == restore_id):
            raise Conflict(f"the node no longer shows restore {restore_id}: see `rxfed patient sync`",
                           code="other_restore")
        if pins.restore_pending != restore_id:
            try:
                _rollback_check(counter, manifest, pins.counter, pins.manifest_hash)
            except RollbackDetected as exc:
                report = await self._restore_report(vault, blobs, counter, manifest, secrets, pins, exc)
            else:
                raise Conflict("the node serves the vault this device saw: there is no restore to accept",
                               code="no_restore")
            if report.restore_id != restore_id:
                raise Conflict(f"the node shows restore {report.restore_id}, not {restore_id}: see "
                               "`rxfed patient sync`", code="other_restore")
            pins = attrs.evolve(pins, restore_pending=restore_id, restores=(*pins.restores, restore_id)[-64:])
            self.profile.save_state(pins)
        cache = VaultCache(self.profile.path).load()
        lost, reappeared = self._compare(cache, blobs, secrets)
        records = [self._open_cached(secrets, r.id, r.seen_version, cache[r.id][1])
                   for r in lost if r.recoverable]
        records = [r for r in records if r is not None]
        deletes = reappeared if pins.cached == pins.counter else []
        # deletions first: they are known only while the copy is complete, that is before the first commit
        ops: list[tuple[str, Any]] = [("delete", rid) for rid in deletes] + [("put", r) for r in records]
        first = True
        while first or ops:
            chunk, ops = ops[:CHUNK], ops[CHUNK:]
            jump = max(pins.counter, state.counter) + 1 if first else None
            state = await self._commit(state, [r for k, r in chunk if k == "put"],
                                       [rid for k, rid in chunk if k == "delete"], next_counter=jump)
            first = False
        self.profile.save_state(attrs.evolve(self.profile.state(), restore_pending=None))
        await self._load()  # the local copy follows the vault again
        return {"restore": restore_id, "reuploaded": [r.id for r in records], "deleted": list(deletes),
                "not_recoverable": [r.id for r in lost if not r.recoverable]}

    def _decrypt_one(self, state: VaultState, rid: str) -> Record:
        version, blob = state.blobs[rid]
        try:
            plaintext = open_record(state.secrets.keyring, record_ad(self.patient, rid, version), blob)
        except DecryptionFailed:
            raise IntegrityError(f"record {rid} does not decrypt: it was tampered with") from None
        return Record.from_plaintext(rid, version, plaintext)

    def _decrypt(self, state: VaultState) -> list[Record]:
        if self.progress is None or len(state.blobs) <= 4 * CHUNK:
            out = [self._decrypt_one(state, rid) for rid in state.blobs]
        else:  # a whole large vault, as a new device or `show` reads it: say how far it is
            out = []
            for rid in state.blobs:
                out.append(self._decrypt_one(state, rid))
                self.progress("opening records", len(out), len(state.blobs))
        out.sort(key=lambda r: (r.created, r.id), reverse=True)
        return out

    async def records(self, kind: str | None = None) -> list[Record]:
        """Every record, decrypted and verified, newest first."""
        found = self._decrypt(await self._load())
        return [r for r in found if kind is None or r.kind == kind]

    def _prepare_commit(self, state: VaultState, puts: list[Record], deletes: Iterable[str] = (), *,
                        next_counter: int | None = None) -> tuple[dict, VaultState]:
        """Seal the records and sign the next manifest (counter ``next_counter``, by default
        one more than the state's): the body of one commit, and the vault state once the node
        has accepted it."""
        entries, counter = dict(state.entries), state.counter
        body_puts = []
        for record in puts:
            version = entries[record.id][0] + 1 if record.id in entries else 1
            blob = seal_record(state.secrets.keyring, record_ad(self.patient, record.id, version), record.to_plaintext())
            entries[record.id] = (version, sha256(blob))
            body_puts.append({"id": record.id, "version": version, "blob": b64e(blob)})
        body_deletes = []
        for rid in deletes:
            body_deletes.append({"id": rid, "version": entries.pop(rid)[0]})
        manifest = pv.Manifest.issue(state.secrets.signing, patient=self.patient, epoch=state.secrets.epoch,
                                     counter=next_counter or counter + 1, entries=entries, now=self._now())
        body = {"put": body_puts, "delete": body_deletes, "manifest": manifest.signed}
        if next_counter is not None:
            body["base"] = counter
        return body, attrs.evolve(state, counter=manifest.counter, entries=entries)

    async def _commit(self, state: VaultState, puts: list[Record], deletes: Iterable[str] = (), *,
                      next_counter: int | None = None) -> VaultState:
        body, after = self._prepare_commit(state, puts, deletes, next_counter=next_counter)
        await self._call("POST", "/v1/vault", body)
        self._committed(state.counter, body)
        return after

    def _committed(self, base: int, body: dict) -> None:
        """After the node accepted ``body``: pin its manifest, and add it to the local copy
        when the copy reflected the vault it was made from."""
        pins = self.profile.state()
        manifest = body["manifest"]
        cached = None
        if pins.cached == base and pins.restore_pending is None:
            VaultCache(self.profile.path).append_encoded(body["put"], [d["id"] for d in body["delete"]])
            cached = manifest["body"]["counter"]
        self.profile.set_counter(manifest["body"]["counter"], manifest_pin(manifest), synced=self._now(),
                                 cached=cached, state=pins)

    async def add_records(self, items: list[tuple[str, dict]]) -> list[Record]:
        """Encrypt and store new records (in chunks, each an atomic commit)."""
        return (await self._add_records(items, skip_known=False))[0]

    async def import_records(self, items: list[tuple[str, dict]]) -> tuple[list[Record], list[Record]]:
        """Store the imported records (``data["import_key"]``, as :func:`rxfed.client.fhir.import_bundle`
        gives them) that the vault does not hold yet; returns ``(stored, already held)``, the
        latter the records already there that the items' keys name, so importing a file again
        adds nothing. A record written on a device is known by the key its export carries."""
        return await self._add_records(items, skip_known=True)

    async def _add_records(self, items: list[tuple[str, dict]], *, skip_known: bool) -> tuple[list[Record], list[Record]]:
        now = self.clock()
        # One microsecond apart, so "newest first" keeps the order they were given in.
        new = [Record(random_bytes(16).hex(), 1, kind, rec.timestamp(now + i / 1e6), data)
               for i, (kind, data) in enumerate(items)]
        ours = {r.id for r in new}
        written: list[Record] = []
        for attempt in range(2):
            state = await self._load()
            todo, held = [r for r in new if r.id not in state.entries], []
            if skip_known:
                known = {}
                for r in self._decrypt(state):
                    if r.id not in ours:
                        known[rec.record_key(r.id, r.data)] = r
                        if "import_key" not in r.data:
                            # Imported before keys were kept (or written here): known by what it says.
                            known[rec.content_key(r.kind, r.data)] = r
                found = [known.get(r.data.get("import_key")) or known.get(rec.content_key(r.kind, r.data))
                         for r in todo]
                held = [r for r in found if r is not None]
                todo = [r for r, there in zip(todo, found) if there is None]
            try:
                for i in range(0, len(todo), CHUNK):
                    state = await self._commit(state, todo[i : i + CHUNK])
                    written += todo[i : i + CHUNK]
                    if self.progress is not None and len(todo) > CHUNK:
                        self.progress("storing records", len(written), len(todo))
                return written, held
            except NodeRefused as exc:
                # Another device committed in between: reload once and try again.
                if exc.code != "stale_manifest" or attempt:
                    raise
        return written, []  # pragma: no cover

    async def edit_record(self, record_id: str, data: dict | Callable[[Record], dict]) -> Record:
        """Replace the data of record ``record_id`` (a typo, a wrong date, a better label):
        ``data`` is the new data, or a function from the record as stored to its new data
        (called again if another device changed the vault meanwhile). The change is the record's next version, sealed under the current vault key (its
        associated data names the new version) and covered by a newly signed manifest, so a
        node that serves the old version afterwards is caught like any rollback. Kind and
        creation time stay. Returns the record as stored now."""
        return await self._change_record(record_id, data)

    async def delete_record(self, record_id: str) -> Record:
        """Delete record ``record_id`` (a duplicate, a mistake). The next signed manifest no
        longer lists it, so a node that keeps serving it is caught. Returns the record as it
        was."""
        return await self._change_record(record_id, None)

    async def _change_record(self, record_id: str, data: dict | Callable[[Record], dict] | None) -> Record:
        for attempt in range(2):
            state = await self._load()
            if record_id not in state.blobs:
                raise NotFound(f"no record {record_id}", code="unknown_record")
            record = self._decrypt_one(state, record_id)
            if record.kind == "community":
                raise BadRequest("a community record holds the membership's keys: use `rxfed community leave`",
                                 code="community_record")
            if record.kind == "clinician":
                raise BadRequest("the clinician record holds the key your hospital's credentials vouch for",
                                 code="clinician_record")
            new_data = data(record) if callable(data) else data
            changed = record if data is None else attrs.evolve(record, version=record.version + 1, data=new_data)
            try:
                if data is None:
                    await self._commit(state, [], deletes=[record_id])
                else:
                    await self._commit(state, [changed])
                return changed
            except NodeRefused as exc:
                # Another device committed in between: reload once and apply the change again.
                if exc.code not in ("stale_manifest", "stale_record") or attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

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
        """Every device the node lists, each certificate checked against the identity chain,
        with what this device itself knows of it."""
        account, chain, _ = await self._account()
        known = self.profile.state().devices
        good = verified_devices(chain, account["devices"])
        out = []
        for d in account["devices"]:
            enrolled_by = None
            try:
                enrolled_by = pv.DeviceCert.from_json(d["cert"], "device", None).enrolled_by
            except (RxfedError, KeyError, TypeError):
                pass
            # active by certificate exactly when the node says active; revoked ones are
            # whatever the node says (they hold nothing current either way)
            verified = (d["device"] in good) == (d["revoked"] is None)
            out.append(DeviceInfo(d["device"], d["created"], d["revoked"], d["device"] == self.device, verified,
                                  enrolled_by, known.get(d["device"])))
        return out

    async def revoke_device(self, device: str, code: RecoveryCode) -> list[str]:
        """Revoke a device; see :meth:`revoke_devices`."""
        return await self.revoke_devices([device], code)

    async def revoke_devices(self, devices: Iterable[str], code: RecoveryCode) -> list[str]:
        """Revoke devices, and every device they enrolled, by starting a new identity epoch
        (which needs the recovery code: only it opens the master key). The revoked devices
        hold nothing of the new epoch: not its signing key (so they can enrol, revoke and
        change nothing), nor its vault key (so they read nothing written from now on).
        Returns the devices revoked."""
        state = await self._load()
        targets = set(devices)
        if self.device in targets:
            raise BadRequest("a device cannot revoke itself: revoke it from another device, or recover on a new "
                             "one with the recovery code (which revokes the devices it does not keep)",
                             code="revoke_self")
        certs = verified_devices(state.chain, state.account["devices"])
        unknown = targets - set(certs)
        if unknown:
            raise BadRequest(f"no active device {sorted(unknown)[0]}", code="unknown_device")
        dropped = set(targets)
        while True:  # a revoked device's enrolments go with it (it may have enrolled a spare)
            more = {d for d, c in certs.items() if c.enrolled_by in dropped} - dropped
            if not more:
                break
            dropped |= more
        access = await self._recovery_bundle(self._session_or_new(), self.identity.node_url, self.identity.node_id,
                                             code, self._now(), self.profile.state(), self.root_key)
        kept = [c for d, c in certs.items() if d not in dropped]
        result = await self._rotate(state, access.master, kept, code)
        self._remember_devices({d: "revoked" for d in result["revoked"]})
        self.followups = await self.after_revocation()
        return result["revoked"]

    async def after_revocation(self) -> dict:
        """Replace what a revoked device could still use (community member keys, consent
        pseudonyms): see :meth:`rxfed.client.PatientClient.after_revocation`, which knows the
        communities and consent services this core does not import."""
        raise NotImplementedError("use rxfed.client.PatientClient, which rekeys communities and renews grants")

    async def devices_by_certificate(self) -> dict[str, tuple[pv.DeviceCert, bool]]:
        """:func:`checked_devices` for this patient, as the node lists them now."""
        account, chain, _ = await self._account()
        return checked_devices(chain, account["devices"])

    async def _rotate(self, state: VaultState, master: SigningKeyPair, kept: list[pv.DeviceCert],
                      code: RecoveryCode, *, new_master: SigningKeyPair | None = None) -> dict:
        """Start the next identity epoch from this device (which must be among ``kept``)."""
        if self.device not in {c.device for c in kept}:
            raise IntegrityError("this device's certificate does not verify; it cannot rotate the identity")
        nxt = state.secrets.next()
        body, identity = _rotation(state.chain, nxt, master, code, kept, state.counter, state.entries, self._now(),
                                   new_master=new_master)
        result = await self._call("POST", "/v1/identity", body)
        pins = self.profile.state()
        self.profile.save_state(attrs.evolve(pins, epoch=identity.epoch, identity_hash=b64e(identity.hash),
                                             counter=state.counter + 1, manifest_hash=manifest_pin(body["manifest"])))
        self._secrets = nxt
        return result

    def change_passphrase(self, new_passphrase: str, kdf: str | None = None) -> None:
        from rxfed.client.profile import check_new_passphrase
        from rxfed.crypto.keyfile import keyfile_cost

        check_new_passphrase(new_passphrase)

        cost = KdfCost.named(kdf) if kdf else keyfile_cost((self.profile.path / "keys.json").read_bytes())
        self.profile.save(self.identity, new_passphrase, cost)

    async def rotate_recovery_code(self, code: RecoveryCode) -> RecoveryCode:
        """A new recovery code, given the current one. It starts a new identity epoch under a
        new master key: the old code opens only the retired master key and secrets of epochs
        before, which no device that has seen the new epoch accepts. Returns the new code."""
        state = await self._load()
        access = await self._recovery_bundle(self._session_or_new(), self.identity.node_url, self.identity.node_id,
                                             code, self._now(), self.profile.state(), self.root_key)
        new = RecoveryCode.generate()
        await self._rotate(state, access.master, list(verified_devices(state.chain, state.account["devices"]).values()),
                           new, new_master=SigningKeyPair.generate())
        # what the old code opened (the old epochs' secrets, in old backups) is replaced too
        self.followups = await self.after_revocation()
        return new

@attrs.frozen
class PreparedWrite:
    """A sealed record and its signed commit, ready to send (see :meth:`OpenVault.prepare`)."""

    record: Record
    body: bytes = attrs.field(repr=False)
    counter: int
    #: Request signature made at prepare time (valid for the node's time window), or None
    #: to sign when sending.
    headers: dict[str, str] | None = attrs.field(default=None, repr=False)
    #: The counter the commit was made from, and the commit itself (for the local copy).
    base: int = 0
    commit: dict = attrs.field(factory=dict, repr=False)


class OpenVault:
    """A verified vault kept in memory between writes; see :meth:`PatientCore.open_vault`."""

    def __init__(self, client: PatientCore, state: VaultState):
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
        base = self.state.counter
        body, self.state = self.client._prepare_commit(self.state, [record])
        raw = canonical(body)
        headers = self.client._sign("POST", "/v1/vault", raw) if sign else None
        return PreparedWrite(record, raw, self.state.counter, headers, base, body)

    async def send(self, prepared: PreparedWrite) -> Record:
        await self.client._call_raw("POST", "/v1/vault", prepared.body, headers=prepared.headers)
        self.client._committed(prepared.base, prepared.commit)
        return prepared.record

    async def add(self, kind: str, data: dict) -> Record:
        return await self.send(self.prepare(kind, data))
