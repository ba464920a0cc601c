// The patient's devices from the page: enrol another device from its link code, revoke
// devices, recover the account on this browser with the recovery code, and change the
// recovery code, as rxfed/client/sdk.py does (add_device, revoke_devices, recover,
// rotate_recovery_code, after_revocation). Revoking, recovering and changing the code open
// the master key with the recovery code, in this page: a page the node modified would learn
// the code (spec/web.md §6); the view says so first.

import { loads } from "./canonical.mjs";
import { b64d, b64e, equal } from "./encoding.mjs";
import { KDF, Node, Patient, checkNewPassphrase, identityBytes, timings } from "./client.mjs";
import { sealKeyfile } from "./keyfile.mjs";
import * as p from "./protocol.mjs";
import { PageCommunities } from "./communities.mjs";
import { PageConsent } from "./sharing.mjs";
import { BoxKeyPair, SigningKeyPair, aeadOpen, pwhashCost, randomBytes, ready } from "./sodium.mjs";
import * as store from "./store.mjs";

/** (sign key, box key, device proof) of a link code (sdk.parse_link_code). */
export function parseLinkCode(text) {
  const clean = (text || "").trim();
  let raw = null;
  try {
    if (clean.startsWith(p.LINK_PREFIX)) raw = b64d(clean.slice(p.LINK_PREFIX.length), 128);
  } catch {
    raw = null;
  }
  if (raw === null) throw new p.IntegrityError("A link code starts with rxfed-link: and is shown by the new device (`rxfed patient link request`).", "bad_link_code");
  return { signKey: raw.slice(0, 32), boxKey: raw.slice(32, 64), proof: raw.slice(64) };
}

const rotated = (ring) => new p.Keyring(new Map([...ring.keys, [ring.currentEpoch + 1, randomBytes(32)]]));
/** Fresh secrets for the next epoch: a new signing key, vault key and pseudonym secret. */
export const nextSecrets = (s) => new p.EpochSecrets(s.epoch + 1, SigningKeyPair.generate(), rotated(s.keyring), rotated(s.pseudonyms));

/** A kept device certified again at `epoch`, with the proofs it had (DeviceCert.recertify). */
function recertify(cert, signer, epoch, now) {
  return p.signStatement(signer, {
    type: "rxfed.device-cert", patient: cert.patient, epoch, sign_key: cert.sign_key, box_key: cert.box_key,
    enrolled_by: cert.enrolled_by, enrolled_epoch: cert.enrolled_epoch, proof: cert.proof, issued: now,
  });
}

/** The body of POST /v1/identity for epoch nxt.epoch (sdk._rotation): the statement the
 * master key signs (naming `newMaster`, when given, as the next master key), every kept
 * device certified again with the new secrets sealed to it, the recovery material (the
 * next master key sealed under `code`) and the vault manifest re-signed (counter + 1).
 * `devices`: parsed certificates to keep, and signed certificates already of the new epoch. */
export function rotation(chain, nxt, master, code, devices, counter, entries, now, { newMaster = null } = {}) {
  const current = chain[chain.length - 1];
  const identity = p.identityStatement(master, {
    patient: current.patient, epoch: nxt.epoch, previous: current.hash, masterKey: newMaster ? newMaster.public : current.masterKey,
    signingKey: nxt.signing.public, recoveryAuth: code.authKey().public, recoveryBox: code.box().public, now,
  });
  const certified = devices.map((c) => {
    const signed = c.body ? c : recertify(c, nxt.signing, nxt.epoch, now);
    const device = p.deviceId(b64d(signed.body.sign_key, 32));
    return { device: signed, keyring: b64e(p.sealSecrets(nxt, device, b64d(signed.body.box_key, 32))) };
  });
  const manifest = p.manifest(nxt.signing, { patient: current.patient, epoch: nxt.epoch, counter: counter + 1, entries, now });
  const recovery = p.recoveryMaterial(newMaster || master, code, nxt, current.patient);
  return { body: { identity, devices: certified, recovery, manifest }, identity };
}

/** What the node keeps for `code`, checked (sdk._recovery_bundle): only the current code
 * opens anything, and the master key it holds must be the current epoch's. */
export async function recoveryBundle(node, code, { pins = store.EMPTY_PINS, rootKey = null } = {}) {
  const auth = code.authKey();
  let found;
  try {
    found = await node.call("POST", "/v1/recovery/bundle", {}, auth);
  } catch (exc) {
    if (exc.code === "unknown_key") throw new p.IntegrityError("This recovery code is not the account's current one on this node.", "wrong_recovery_code");
    throw exc;
  }
  let foundRoot;
  try {
    foundRoot = b64d(found.root_key, 32);
  } catch {
    throw new p.IntegrityError("the node's recovery answer is malformed");
  }
  if (rootKey !== null && !equal(foundRoot, rootKey)) throw new p.IntegrityError("This recovery code belongs to another account.", "wrong_recovery_code");
  const patient = p.patientId(foundRoot);
  const chain = p.verifyIdentityChain(foundRoot, found.identity);
  const newer = p.checkPins(chain, pins);
  const current = chain[chain.length - 1];
  if (!equal(current.recoveryAuth, auth.public)) throw new p.IntegrityError("This recovery code is not the account's current one.", "wrong_recovery_code");
  let seed;
  try {
    seed = aeadOpen(code.bundleKey(), p.bundleAd(patient), b64d(found.root_bundle));
  } catch {
    throw new p.IntegrityError("the recovery bundle does not open with this code");
  }
  const master = new SigningKeyPair(seed);
  if (!equal(master.public, current.masterKey)) throw new p.IntegrityError("the recovery bundle holds another master key than the current epoch names");
  const secrets = p.openSecrets(current, "recovery", code.box(), b64d(found.keyring), loads);
  return { patient, rootKey: foundRoot, chain, pins: newer, master, secrets, devices: found.devices || [] };
}

/** The devices active now by their certificates: device id -> parsed certificate. */
export function activeDevices(chain, listing) {
  return new Map([...p.checkedDevices(chain, listing)].filter(([, c]) => c.active).map(([d, c]) => [d, c.cert]));
}

/** Enrol the device that showed `link` under the current epoch; returns {device,
 * confirmation} (the code to compare on the new device). */
export async function addDevice(patient, link) {
  const { signKey, boxKey, proof } = parseLinkCode(link);
  await patient.load();
  const { secrets, chain } = patient.state;
  let cert;
  try {
    cert = p.deviceCert(secrets.signing, patient.id.device, {
      patient: patient.id.patient, epoch: secrets.epoch, signKey, boxKey, deviceProof: proof, enrolledBy: patient.device, now: patient.node.now(),
    });
    p.parseDeviceCert(cert, chain);
  } catch {
    throw new p.IntegrityError("The link code's proof does not verify: copy it again from the new device.", "bad_link_code");
  }
  const device = p.deviceId(signKey);
  await patient.node.call("POST", "/v1/devices", { device: cert, keyring: b64e(p.sealSecrets(secrets, device, boxKey)) }, patient.id.device);
  const pins = (await store.get("state")) || store.EMPTY_PINS;
  await store.putAll({ state: { ...pins, devices: { ...pins.devices, [device]: "enrolled" } } });
  await patient.load();
  return { device, confirmation: p.confirmationCode(patient.state.chain[patient.state.chain.length - 1].hash, device) };
}

/** What a revoked device could still use, replaced (sdk.after_revocation): every
 * community's member keys rekeyed (keeping each seat), every live consent grant renewed
 * under the new epoch's pseudonym keys. Returns {communities: {address: outcome}, grants}. */
export async function afterRevocation(patient) {
  const communities = await new PageCommunities(patient).rekeyAll();
  const grants = await new PageConsent(patient).renew();
  return { communities, grants };
}

/** Revoke devices, and every device they enrolled, by starting a new identity epoch under
 * the master key the recovery code opens (sdk.revoke_devices). Returns the devices revoked. */
export async function revokeDevices(patient, targets, code) {
  await patient.load();
  const { chain, account, entries, counter } = patient.state;
  if (targets.includes(patient.device)) throw new p.IntegrityError("A device cannot revoke itself: revoke it from another device.", "revoke_self");
  const certs = activeDevices(chain, account.devices);
  const unknown = targets.filter((d) => !certs.has(d));
  if (unknown.length) throw new p.IntegrityError(`No active device ${unknown[0]}.`, "unknown_device");
  const dropped = new Set(targets);
  for (let grew = true; grew;) { // a revoked device's enrolments go with it (it may have enrolled a spare)
    grew = false;
    for (const [d, c] of certs) {
      if (!dropped.has(d) && dropped.has(c.enrolled_by)) {
        dropped.add(d);
        grew = true;
      }
    }
  }
  const pins = (await store.get("state")) || store.EMPTY_PINS;
  const access = await recoveryBundle(patient.node, code, { pins, rootKey: patient.id.rootKey });
  const kept = [...certs].filter(([d]) => !dropped.has(d)).map(([, c]) => c);
  if (!kept.some((c) => c.device === patient.device)) throw new p.IntegrityError("This browser's certificate does not verify; it cannot revoke devices.");
  const nxt = nextSecrets(patient.state.secrets);
  const { body, identity } = rotation(chain, nxt, access.master, code, kept, counter, entries, patient.node.now());
  const result = await patient.node.call("POST", "/v1/identity", body, patient.id.device);
  const revoked = result.revoked || [...dropped];
  await store.putAll({ state: { ...pins, epoch: nxt.epoch, identity_hash: b64e(p.statementHash(identity)), counter: counter + 1,
    devices: { ...pins.devices, ...Object.fromEntries(revoked.map((d) => [d, "revoked"])) } } });
  await patient.load();
  return { revoked, followups: await afterRevocation(patient) };
}

/** A new recovery code, given the current one (sdk.rotate_recovery_code): a new identity
 * epoch under a new master key, signed by the old one, every device whose certificate
 * verifies kept. The old code then opens only the retired master key and the secrets of the
 * epochs before, which no device that has seen the new epoch accepts; what those secrets
 * reached (communities, consent grants) is replaced by the follow-ups. Returns {code,
 * followups}: the new code is in this page's memory only, to be shown once. */
export async function rotateRecoveryCode(patient, code) {
  await patient.load();
  const { chain, account, entries, counter } = patient.state;
  const pins = (await store.get("state")) || store.EMPTY_PINS;
  const access = await recoveryBundle(patient.node, code, { pins, rootKey: patient.id.rootKey });
  const kept = [...activeDevices(chain, account.devices).values()];
  if (!kept.some((c) => c.device === patient.device)) throw new p.IntegrityError("This browser's certificate does not verify; it cannot change the recovery code.");
  const fresh = p.RecoveryCode.generate();
  const nxt = nextSecrets(patient.state.secrets);
  const { body, identity } = rotation(chain, nxt, access.master, fresh, kept, counter, entries, patient.node.now(),
    { newMaster: SigningKeyPair.generate() });
  try {
    await patient.node.call("POST", "/v1/identity", body, patient.id.device);
  } catch (exc) {
    // Refused (4xx): nothing changed, the old code still works. No clear answer (the
    // network, 5xx): the node may have made the change, and the new code must not be lost.
    if (!(exc.status >= 400 && exc.status < 500)) exc.pendingCode = fresh;
    throw exc;
  }
  await store.putAll({ state: { ...pins, epoch: nxt.epoch, identity_hash: b64e(p.statementHash(identity)), counter: counter + 1 } });
  await patient.load();
  return { code: fresh, followups: await afterRevocation(patient) };
}

/** Recover the account on this browser from the recovery code alone (sdk.recover): always a
 * new identity epoch, sealed to this browser and, with `keepAll`, to every device whose
 * certificate verifies; every other device is revoked. */
export async function recover(codeText, passphrase, { keepAll = false } = {}) {
  checkNewPassphrase(passphrase);
  await ready();
  if (await store.get("keyfile") !== undefined) throw new p.IntegrityError("This browser already holds an account for this node.", "profile_exists");
  const code = p.RecoveryCode.parse(codeText);
  const node = await Node.discover();
  const access = await recoveryBundle(node, code);
  const auth = code.authKey();
  const vault = await node.call("GET", "/v1/vault", null, auth);
  const { entries, counter } = p.checkedVault(vault, access.patient, access.chain, 0);
  const kept = keepAll ? [...activeDevices(access.chain, access.devices).values()] : [];
  const device = SigningKeyPair.generate(), box = BoxKeyPair.generate();
  const nxt = nextSecrets(access.secrets);
  const now = node.now();
  const cert = p.deviceCert(nxt.signing, auth, {
    patient: access.patient, epoch: nxt.epoch, signKey: device.public, boxKey: box.public, deviceProof: p.deviceKeyProof(device, box.public),
    enrolledBy: "recovery", now,
  });
  const { body, identity } = rotation(access.chain, nxt, access.master, code, [...kept, cert], counter, entries, now);
  const id = { patient: access.patient, nodeUrl: location.origin, nodeId: node.info.node_id, rootKey: access.rootKey, device, box };
  const t0 = performance.now();
  const keyfile = sealKeyfile(identityBytes(id), passphrase, pwhashCost(KDF));
  timings.argon2_ms = Math.round((performance.now() - t0) * 10) / 10;
  const deviceId = p.deviceId(device.public);
  // The key file first, as at registration: an enrolled device must never lack its keys.
  await store.putAll({ keyfile, state: { ...store.EMPTY_PINS, epoch: nxt.epoch, identity_hash: b64e(p.statementHash(identity)),
    counter: counter + 1, devices: { [deviceId]: "registered" } } });
  try {
    await node.call("POST", "/v1/identity", body, auth);
  } catch (exc) {
    await store.clear();
    throw exc;
  }
  const patient = new Patient(node, id);
  await patient.load();
  return { patient, followups: await afterRevocation(patient) };
}
