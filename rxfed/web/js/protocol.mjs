// The rxfed constructions the page uses, exactly as the Python client makes them (spec/crypto.md):
// signed statements (§5), signed requests (§7), the identity chain and device certificates
// (§1), epoch secrets and their envelopes (§3), sealed records (§2), the manifest (§5),
// recovery codes (§6). Python: rxfed/protocol/, rxfed/client/identity.py, rxfed/client/sdk.py.

import { canonical } from "./canonical.mjs";
import { b32d, b32e, b64d, b64e, concat, equal, readU32be, u32be, utf8 } from "./encoding.mjs";
import {
  AEAD_KEY, AEAD_NONCE, AEAD_TAG, BoxKeyPair, DecryptionFailed, SigningKeyPair, aeadOpen, aeadSeal, blake2b, hashId,
  openSigned, padTo, randomBytes, sealSigned, sha256, unpadAny, verifySignature,
} from "./sodium.mjs";

/** The node served something the patient never signed: tampering or silent loss. */
export class IntegrityError extends Error {
  constructor(message, code = "integrity_error") {
    super(message);
    this.code = code;
  }
}

// -- ids -------------------------------------------------------------------------------------
export const patientId = (rootKey) => hashId(rootKey, "rxfed-patient");
export const deviceId = (signKey) => hashId(signKey, "rxfed-device");

// -- statements (§5) ----------------------------------------------------------------------------
const DOMAIN = utf8("rxfed-statement|");

export function signStatement(key, body) {
  return { body, sig: b64e(key.sign(concat(DOMAIN, canonical(body)))) };
}

/** The body of a statement of `kind` signed by `publicKey`, or IntegrityError. */
export function openStatement(obj, kind, publicKey, where = "statement") {
  if (!obj || typeof obj !== "object" || !obj.body || typeof obj.body !== "object" || obj.body.type !== kind) {
    throw new IntegrityError(`${where} is not a signed ${kind}`);
  }
  try {
    verifySignature(publicKey, concat(DOMAIN, canonical(obj.body)), b64d(obj.sig, 64));
  } catch {
    throw new IntegrityError(`${where}: signature does not verify`, "bad_statement_signature");
  }
  return obj.body;
}

export const statementHash = (obj) => sha256(canonical(obj));

// -- signed requests (§7) -----------------------------------------------------------------------
export function requestSigningBytes({ method, target, destination, origin = null, key, created, nonce, body }) {
  return canonical({
    v: "rxfed-request-1", method: method.toUpperCase(), target, destination, origin, key: b64e(key), created,
    nonce: b64e(nonce), digest: b64e(sha256(body)),
  });
}

/** RFC 9530's Content-Digest of a body: standard, padded base64 of its SHA-256. With it the
 * node checks the signature before it reads the body (spec/crypto.md §7). */
export function contentDigest(body) {
  const std = b64e(sha256(body)).replace(/-/g, "+").replace(/_/g, "/");
  return `sha-256=:${std}${"=".repeat((4 - (std.length % 4)) % 4)}:`;
}

/** The headers that sign a request; a retry signs again (a fresh nonce). */
export function signRequest(key, { method, target, destination, body, now, nonce = null, origin = null }) {
  nonce = nonce ?? randomBytes(16);
  const message = requestSigningBytes({ method, target, destination, origin, key: key.public, created: now, nonce, body });
  const headers = {
    "Rxfed-Key": b64e(key.public), "Rxfed-Created": String(now), "Rxfed-Nonce": b64e(nonce),
    "Rxfed-Signature": b64e(key.sign(message)), "Content-Digest": contentDigest(body),
  };
  if (origin !== null) headers["Rxfed-Origin"] = origin;
  return headers;
}

// -- the identity chain and device certificates (§1) ---------------------------------------------
export function identityStatement(signer, { patient, epoch, previous, masterKey, signingKey, recoveryAuth, recoveryBox, now }) {
  return signStatement(signer, {
    type: "rxfed.identity", patient, epoch, previous: previous === null ? null : b64e(previous),
    master_key: b64e(masterKey), signing_key: b64e(signingKey),
    recovery: { auth_key: b64e(recoveryAuth), box_key: b64e(recoveryBox) }, issued: now,
  });
}

function parseIdentity(obj, signerKey, where) {
  const body = openStatement(obj, "rxfed.identity", signerKey, where);
  try {
    return {
      patient: body.patient, epoch: body.epoch, previous: body.previous === null ? null : b64d(body.previous, 32),
      masterKey: b64d(body.master_key, 32), signingKey: b64d(body.signing_key, 32),
      recoveryAuth: b64d(body.recovery.auth_key, 32), recoveryBox: b64d(body.recovery.box_key, 32),
      issued: body.issued, signed: obj, hash: statementHash(obj),
    };
  } catch {
    throw new IntegrityError(`${where} is malformed`);
  }
}

/** The identity chain from the root key, each epoch signed by the previous master key and
 * naming the previous statement's hash (pv.IdentityChain.verify). */
export function verifyIdentityChain(rootKey, statements) {
  if (!Array.isArray(statements) || statements.length === 0 || statements.length > 4096) {
    throw new IntegrityError("the identity chain must be a non-empty list");
  }
  const first = parseIdentity(statements[0], rootKey, "identity[0]");
  if (first.epoch !== 1 || first.previous !== null || !equal(first.masterKey, rootKey) || first.patient !== patientId(rootKey)) {
    throw new IntegrityError("identity[0] is not this patient's first identity epoch", "bad_identity_chain");
  }
  const chain = [first];
  for (let i = 1; i < statements.length; i++) {
    const prev = chain[i - 1];
    const next = parseIdentity(statements[i], prev.masterKey, `identity[${i}]`);
    if (next.patient !== prev.patient || next.epoch !== prev.epoch + 1 || next.previous === null || !equal(next.previous, prev.hash)) {
      throw new IntegrityError(`identity[${i}] does not extend epoch ${prev.epoch}`, "bad_identity_chain");
    }
    chain.push(next);
  }
  return chain;
}

/** The chain checked against what this browser pinned: never an older epoch than the newest
 * seen, never another statement for an epoch seen (client/identity.py verify_chain). */
export function checkPins(chain, pins) {
  const current = chain[chain.length - 1];
  if (current.epoch < pins.epoch) {
    throw new IntegrityError(`the node served identity epoch ${current.epoch}, older than epoch ${pins.epoch} this browser has seen`,
      "rollback_detected");
  }
  if (pins.identity_hash && b64e(chain[pins.epoch - 1].hash) !== pins.identity_hash) {
    throw new IntegrityError(`the node served another identity statement for epoch ${pins.epoch} than this browser saw`);
  }
  return current.epoch > pins.epoch ? { ...pins, epoch: current.epoch, identity_hash: b64e(current.hash) } : pins;
}

export const deviceKeyProof = (device, boxKey) => device.sign(concat(utf8("rxfed-device-key|"), device.public, boxKey));

function enrolmentBytes(patient, signKey, boxKey, enrolledBy, enrolledEpoch) {
  return concat(DOMAIN, canonical({
    type: "rxfed.device-enrolment", patient, sign_key: b64e(signKey), box_key: b64e(boxKey), enrolled_by: enrolledBy,
    enrolled_epoch: enrolledEpoch,
  }));
}

/** A certificate for a device enrolled now at `epoch`, with both proofs (sdk.new_device_cert). */
export function deviceCert(signer, enroller, { patient, epoch, signKey, boxKey, deviceProof, enrolledBy, now }) {
  const proof = enroller.sign(enrolmentBytes(patient, signKey, boxKey, enrolledBy, epoch));
  return signStatement(signer, {
    type: "rxfed.device-cert", patient, epoch, sign_key: b64e(signKey), box_key: b64e(boxKey), enrolled_by: enrolledBy,
    enrolled_epoch: epoch, proof: { device: b64e(deviceProof), enroller: b64e(proof) }, issued: now,
  });
}

/** A device certificate checked against the chain: signed by the signing key of the epoch
 * it names, for this patient, with the device's own proof of its keys (pv.DeviceCert.from_json).
 * The enroller's proof is for checkEnroller. */
export function parseDeviceCert(obj, chain) {
  const body = obj && obj.body;
  if (!body || !Number.isInteger(body.epoch) || body.epoch < 1 || body.epoch > chain.length) {
    throw new IntegrityError("a device certificate names an unknown epoch");
  }
  openStatement(obj, "rxfed.device-cert", chain[body.epoch - 1].signingKey, "device certificate");
  let signKey, boxKey, deviceProof, enrollerProof;
  try {
    signKey = b64d(body.sign_key, 32);
    boxKey = b64d(body.box_key, 32);
    deviceProof = b64d(body.proof.device, 64);
    enrollerProof = b64d(body.proof.enroller, 64);
  } catch {
    throw new IntegrityError("a device certificate is malformed");
  }
  if (body.patient !== chain[0].patient || !Number.isInteger(body.enrolled_epoch) || body.enrolled_epoch < 1
      || body.enrolled_epoch > body.epoch) {
    throw new IntegrityError("a device certificate is not this patient's");
  }
  try {
    verifySignature(signKey, concat(utf8("rxfed-device-key|"), signKey, boxKey), deviceProof);
  } catch {
    throw new IntegrityError("a device's own proof of its keys does not verify", "bad_device_proof");
  }
  return { ...body, signKey, boxKey, enrollerProof, device: deviceId(signKey) };
}

/** Throw unless the enroller's proof verifies: the root key for registration, the recovery
 * key of the enrolment's epoch for recovery, or the enrolling device's signing key
 * (`deviceKeys`: device id -> signing key). */
export function checkEnroller(cert, chain, deviceKeys = new Map()) {
  let key = null;
  if (cert.enrolled_by === "registration") key = cert.enrolled_epoch === 1 ? chain[0].masterKey : null;
  else if (cert.enrolled_by === "recovery") key = chain[cert.enrolled_epoch - 1].recoveryAuth;
  else key = deviceKeys.get(cert.enrolled_by) ?? null;
  try {
    if (key === null) throw new Error("unknown enroller");
    verifySignature(key, enrolmentBytes(cert.patient, cert.signKey, cert.boxKey, cert.enrolled_by, cert.enrolled_epoch),
      cert.enrollerProof);
  } catch {
    throw new IntegrityError("the enroller's proof does not verify", "bad_enroller_proof");
  }
}

/** A certificate enrolled by registration or recovery, fully checked. */
export function verifyDeviceCert(obj, chain) {
  const cert = parseDeviceCert(obj, chain);
  checkEnroller(cert, chain);
  return cert;
}

/** Every device the node lists whose certificate verifies by itself and through its
 * enrollers back to registration or recovery, with whether it is active (certified at the
 * current epoch and not marked revoked: the node's flag can only take a device out), as
 * sdk.checked_devices. */
export function checkedDevices(chain, listing) {
  const certs = new Map();
  for (const d of listing || []) {
    try {
      const cert = parseDeviceCert(d.cert, chain);
      if (cert.device === d.device) certs.set(cert.device, { cert, revoked: d.revoked });
    } catch {
      // left out: a certificate that does not verify is not a device of this patient
    }
  }
  const keys = new Map([...certs].map(([device, { cert }]) => [device, cert.signKey]));
  const good = new Map();
  for (const [device, { cert, revoked }] of certs) {
    try {
      const seen = new Set();
      for (let current = cert; ;) {
        checkEnroller(current, chain, keys);
        if (current.enrolled_by === "registration" || current.enrolled_by === "recovery") break;
        if (seen.has(current.enrolled_by) || !certs.has(current.enrolled_by)) throw new Error("lineage");
        seen.add(current.enrolled_by);
        current = certs.get(current.enrolled_by).cert;
      }
    } catch {
      continue;
    }
    good.set(device, { cert, active: cert.epoch === chain.length && revoked == null });
  }
  return good;
}

// -- linking a device from an active one (§1) ------------------------------------------------------
export const LINK_PREFIX = "rxfed-link:";

/** What a new device shows so that an active device can enrol it (sdk.link_code). */
export const linkCode = (device, boxKey) => LINK_PREFIX + b64e(concat(device.public, boxKey, deviceKeyProof(device, boxKey)));

/** The code both devices show when one enrols the other: it binds the identity epoch the
 * enrolling device signed under and the new device (sdk.confirmation_code). */
export function confirmationCode(identityHash, device) {
  const text = b32e(sha256(concat(utf8("rxfed-link-confirm|"), identityHash, utf8(device))).subarray(0, 10));
  return text.match(/.{4}/g).join("-");
}

// -- vault keyrings and epoch secrets (§3) ----------------------------------------------------------
/** Keys by epoch: `epoch (uint32 BE) || key (32)` for each (crypto/records.py VaultKeyring). */
export class Keyring {
  constructor(keys) {
    this.keys = keys; // Map epoch -> key
  }
  static generate() {
    return new Keyring(new Map([[1, randomBytes(32)]]));
  }
  get currentEpoch() {
    return Math.max(...this.keys.keys());
  }
  get current() {
    return this.keys.get(this.currentEpoch);
  }
  toBytes() {
    return concat(...[...this.keys.entries()].sort((a, b) => a[0] - b[0]).flatMap(([e, k]) => [u32be(e), k]));
  }
  static fromBytes(data) {
    if (data.length === 0 || data.length % 36) throw new IntegrityError("a keyring is malformed");
    const keys = new Map();
    for (let i = 0; i < data.length; i += 36) keys.set(readU32be(data, i), data.slice(i + 4, i + 36));
    return new Keyring(keys);
  }
}

export class EpochSecrets {
  constructor(epoch, signing, keyring, pseudonyms) {
    Object.assign(this, { epoch, signing, keyring, pseudonyms });
  }
  static first() {
    return new EpochSecrets(1, SigningKeyPair.generate(), Keyring.generate(), Keyring.generate());
  }
  toBytes() {
    return canonical({
      epoch: this.epoch, signing: b64e(this.signing.seed), keyring: b64e(this.keyring.toBytes()),
      pseudonyms: b64e(this.pseudonyms.toBytes()),
    });
  }
  static fromBytes(data, parse) {
    try {
      const doc = parse(data);
      return new EpochSecrets(doc.epoch, new SigningKeyPair(b64d(doc.signing, 32)), Keyring.fromBytes(b64d(doc.keyring)),
        Keyring.fromBytes(b64d(doc.pseudonyms)));
    } catch {
      throw new IntegrityError("the epoch secrets from the node are malformed");
    }
  }
}

const keyringContext = (holder, epoch) => utf8(`rxfed-keyring|${holder}|${epoch}|`);

export const sealSecrets = (secrets, holder, boxKey) => sealSigned(secrets.signing, boxKey, keyringContext(holder, secrets.epoch), secrets.toBytes());

/** Open an envelope for the current epoch of the chain: signed by that epoch's signing key
 * for this holder and holding exactly that epoch's secrets (identity.py open_secrets). */
export function openSecrets(identity, holder, box, sealed, parse) {
  let data;
  try {
    data = openSigned(identity.signingKey, box, keyringContext(holder, identity.epoch), sealed);
  } catch {
    throw new IntegrityError(`the keyring from the node is not one the patient sealed for this device and epoch ${identity.epoch}`);
  }
  const secrets = EpochSecrets.fromBytes(data, parse);
  if (secrets.epoch !== identity.epoch || !equal(secrets.signing.public, identity.signingKey)
      || secrets.keyring.currentEpoch !== identity.epoch || secrets.pseudonyms.currentEpoch !== identity.epoch) {
    throw new IntegrityError("the keyring from the node does not belong to the current identity epoch");
  }
  return secrets;
}

// -- sealed records (§2) ----------------------------------------------------------------------------
const MAGIC = utf8("R1");
const WRAPPED = AEAD_NONCE + AEAD_KEY + AEAD_TAG;

export function bucketSize(length) {
  let size = 256;
  while (size <= length && size < 65536) size *= 2;
  if (size <= length) size = (Math.floor(length / 65536) + 1) * 65536;
  return size;
}

export const recordAd = (patient, recordId, version) => canonical({ owner: patient, record: recordId, version });

export function sealRecord(keyring, ad, plaintext, random = randomBytes) {
  const epoch = keyring.currentEpoch;
  const recordKey = random(AEAD_KEY);
  const wrapped = aeadSeal(keyring.keys.get(epoch), concat(utf8("rxfed-key|"), ad), recordKey, random);
  const body = aeadSeal(recordKey, concat(utf8("rxfed-body|"), ad), padTo(plaintext, bucketSize(plaintext.length)), random);
  return concat(MAGIC, u32be(epoch), wrapped, body);
}

export function openRecord(keyring, ad, sealed) {
  if (sealed.length < 6 + WRAPPED || !equal(sealed.subarray(0, 2), MAGIC)) throw new DecryptionFailed();
  const key = keyring.keys.get(readU32be(sealed, 2));
  if (key === undefined) throw new DecryptionFailed();
  const recordKey = aeadOpen(key, concat(utf8("rxfed-key|"), ad), sealed.subarray(6, 6 + WRAPPED));
  return unpadAny(aeadOpen(recordKey, concat(utf8("rxfed-body|"), ad), sealed.subarray(6 + WRAPPED)));
}

/** A record's plaintext as Python's Record.to_plaintext writes it: JSON with keys sorted by
 * code point, no spaces, non-ASCII as it is. */
export function recordPlaintext({ kind, created, data }) {
  return utf8(pyCompact({ kind, created, data }));
}

/** A float as Python's repr() writes it: the shortest digits that read back the same, in
 * exponent form below 1e-4 and from 1e16, else with a point ("70.0"). */
export function pyFloat(value) {
  if (!Number.isFinite(value)) throw new Error("NaN and infinities have no JSON form");
  const [mantissa, exp] = value.toExponential().split("e");
  const e = Number(exp), negative = mantissa.startsWith("-");
  const digits = mantissa.replace(/^-/, "").replace(".", "");
  let out;
  if (e < -4 || e >= 16) {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    out = `${m}e${e < 0 ? "-" : "+"}${String(Math.abs(e)).padStart(2, "0")}`;
  } else if (e >= 0) {
    out = `${digits.slice(0, e + 1).padEnd(e + 1, "0")}.${digits.slice(e + 1) || "0"}`;
  } else {
    out = `0.${"0".repeat(-e - 1)}${digits}`;
  }
  return negative ? `-${out}` : out;
}

/** A number as Python's json.dumps writes what it reads back as the same value: integers as
 * they are, any other number as a float (an imported measurement may be one). */
export const pyNumber = (value) => (Number.isSafeInteger(value) ? String(value) : pyFloat(value));

function pyCompact(value) {
  if (value === null || typeof value !== "object") return typeof value === "number" ? pyNumber(value) : JSON.stringify(value);
  if (Array.isArray(value)) return "[" + value.map(pyCompact).join(",") + "]";
  const byCodePoint = (a, b) => {
    const x = [...a], y = [...b];
    for (let i = 0; i < Math.min(x.length, y.length); i++) {
      if (x[i] !== y[i]) return x[i].codePointAt(0) - y[i].codePointAt(0);
    }
    return x.length - y.length;
  };
  return "{" + Object.keys(value).sort(byCodePoint).map((k) => JSON.stringify(k) + ":" + pyCompact(value[k])).join(",") + "}";
}

// -- the manifest (§5) ---------------------------------------------------------------------------------
/** `entries`: Map record id -> [version, SHA-256 of the sealed blob]. */
export function manifestDigest(entries) {
  const lines = [...entries.keys()].sort().map((id) => `${id}:${entries.get(id)[0]}:${b64e(entries.get(id)[1])}`);
  return sha256(utf8(lines.join("\n")));
}

export function manifest(signer, { patient, epoch, counter, entries, now }) {
  return signStatement(signer, {
    type: "rxfed.manifest", patient, epoch, counter, count: entries.size, digest: b64e(manifestDigest(entries)), issued: now,
  });
}

/** (entries, counter) of the vault the node served, checked against the current epoch's
 * signed manifest and the highest counter this browser saw (sdk._checked_vault). */
export function checkedVault(vault, patient, chain, lastSeen) {
  const current = chain[chain.length - 1];
  const entries = new Map();
  const blobs = new Map();
  for (const r of vault.records || []) {
    const blob = b64d(r.blob);
    entries.set(r.id, [r.version, sha256(blob)]);
    blobs.set(r.id, [r.version, blob]);
  }
  let counter = 0;
  if (vault.manifest == null) {
    if (entries.size) throw new IntegrityError("the node holds records but no manifest the patient signed");
  } else {
    const body = openStatement(vault.manifest, "rxfed.manifest", current.signingKey, "the vault manifest");
    if (body.patient !== patient || body.epoch !== current.epoch) {
      throw new IntegrityError("the vault manifest is not this patient's for the current identity epoch");
    }
    if (body.digest !== b64e(manifestDigest(entries)) || body.count !== entries.size) {
      throw new IntegrityError("the records the node served do not match the patient's signed manifest: a record was dropped, replaced or rolled back");
    }
    counter = body.counter;
  }
  if (counter < lastSeen) {
    throw new IntegrityError(`the node served vault version ${counter}, older than version ${lastSeen} this browser has seen`, "rollback_detected");
  }
  return { entries, blobs, counter };
}

// -- recovery codes (§6) -----------------------------------------------------------------------------
export class RecoveryCode {
  constructor(secret) {
    this.secret = secret;
  }
  static generate() {
    return new RecoveryCode(randomBytes(20));
  }
  static checksum(secret) {
    return blake2b(secret, { size: 2, person: "rxfed-rc-check" });
  }
  static parse(text) {
    const cleaned = (text || "").replace(/[\s-]/g, "").toUpperCase();
    if (!/^[A-Z2-7]{36}$/.test(cleaned)) throw new Error("a recovery code is 36 letters and digits 2-7, in groups of four");
    const raw = b32d(cleaned).subarray(0, 22);
    const secret = raw.slice(0, 20);
    if (!equal(RecoveryCode.checksum(secret), raw.subarray(20))) throw new Error("recovery code checksum does not match: check for a typo");
    return new RecoveryCode(secret);
  }
  toString() {
    const text = b32e(concat(this.secret, RecoveryCode.checksum(this.secret)));
    return text.match(/.{1,4}/g).join("-");
  }
  derive(purpose) {
    return blake2b(new Uint8Array(0), { key: this.secret, size: 32, person: purpose });
  }
  bundleKey() {
    return this.derive("rxfed-rc-bundle");
  }
  box() {
    return new BoxKeyPair(this.derive("rxfed-rc-box"));
  }
  authKey() {
    return new SigningKeyPair(this.derive("rxfed-rc-auth"));
  }
}

export const bundleAd = (patient) => utf8(`rxfed-recovery|${patient}`);

/** What the node keeps for a recovery code (sdk.recovery_material). */
export function recoveryMaterial(master, code, secrets, patient) {
  return {
    root_bundle: b64e(aeadSeal(code.bundleKey(), bundleAd(patient), master.seed)),
    keyring: b64e(sealSecrets(secrets, "recovery", code.box().public)),
  };
}
