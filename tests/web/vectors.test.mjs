// The shared test vectors of spec/vectors/ in the web client's JavaScript (run with
// `node --test tests/web/`; tests/test_web.py runs it under pytest).

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { canonical, canonicalText, loads } from "../../rxfed/web/js/canonical.mjs";
import { b64d, b64e, concat, fromUtf8, u32be, utf8 } from "../../rxfed/web/js/encoding.mjs";
import { keyfileAd, keyfileKey, openKeyfile, sealKeyfile } from "../../rxfed/web/js/keyfile.mjs";
import * as p from "../../rxfed/web/js/protocol.mjs";
import * as so from "../../rxfed/web/js/sodium.mjs";

await so.ready();
const vectors = (name) => JSON.parse(readFileSync(new URL(`../../spec/vectors/${name}`, import.meta.url), "utf8"));

/** The generator's deterministic bytes: SHA-256 in counter mode over a label. */
function fixedRandom(label) {
  let counter = 0;
  return (n) => {
    let out = new Uint8Array(0);
    while (out.length < n) out = concat(out, so.sha256(concat(utf8(label), u32be(counter++))));
    return out.slice(0, n);
  };
}

test("canonical JSON", () => {
  const v = vectors("canonical.json");
  for (const c of v.good) assert.equal(canonicalText(loads(c.input)), c.canonical);
  for (const c of v.bad) assert.throws(() => loads(c.input), (e) => e.code === c.error, c.input);
  assert.throws(() => canonical({ a: 1.5 }));
  assert.throws(() => canonical("\ud800"));
  assert.equal(Object.getPrototypeOf(loads('{"__proto__":{"x":1}}')), Object.prototype);
});

test("request signature", () => {
  const v = vectors("request-signature.json");
  const key = new so.SigningKeyPair(b64d(v.seed));
  const args = { method: v.method, target: v.target, destination: v.destination, origin: v.origin, body: utf8(v.body), now: v.created, nonce: b64d(v.nonce) };
  assert.deepEqual(p.signRequest(key, args), v.headers);
  assert.equal(fromUtf8(p.requestSigningBytes({ ...args, key: key.public, created: v.created })), v.signing_string);
});

test("signed statement", () => {
  const v = vectors("statement.json");
  const key = new so.SigningKeyPair(b64d(v.seed));
  assert.deepEqual(p.signStatement(key, v.body), v.statement);
  assert.deepEqual(p.openStatement(v.statement, v.body.type, key.public), v.body);
  assert.throws(() => p.openStatement({ ...v.statement, body: { ...v.body, time: 1 } }, v.body.type, key.public));
});

test("identity chain, device certificate, envelope", () => {
  const v = vectors("vault.json");
  const root = new so.SigningKeyPair(b64d(v.root_seed));
  assert.equal(p.patientId(root.public), v.patient);
  const chain = p.verifyIdentityChain(root.public, v.identity_chain);
  assert.equal(chain.length, 2);
  assert.throws(() => p.verifyIdentityChain(root.public, [v.identity_chain[1]]));
  assert.throws(() => p.verifyIdentityChain(root.public, [v.identity_chain[0], v.identity_chain[0]]));
  // pins: an older epoch or another statement for a pinned epoch is refused
  assert.throws(() => p.checkPins(chain.slice(0, 1), { epoch: 2, identity_hash: b64e(chain[1].hash) }), (e) => e.code === "rollback_detected");
  assert.throws(() => p.checkPins(chain, { epoch: 1, identity_hash: b64e(chain[1].hash) }));
  assert.deepEqual(p.checkPins(chain, { epoch: 1, identity_hash: b64e(chain[0].hash), counter: 3 }),
    { epoch: 2, identity_hash: b64e(chain[1].hash), counter: 3 });

  const secrets = p.EpochSecrets.fromBytes(utf8(v.secrets.bytes), loads);
  assert.equal(fromUtf8(secrets.toBytes()), v.secrets.bytes);
  assert.equal(b64e(secrets.signing.public), v.secrets.signing_public);

  const device = new so.SigningKeyPair(b64d(v.device_cert.sign_seed));
  const box = new so.BoxKeyPair(b64d(v.envelope.box_secret));
  const cert = p.deviceCert(secrets.signing, root, {
    patient: v.patient, epoch: 1, signKey: device.public, boxKey: box.public, deviceProof: p.deviceKeyProof(device, box.public),
    enrolledBy: "registration", now: v.device_cert.cert.body.issued,
  });
  assert.deepEqual(cert, v.device_cert.cert);
  const first = chain.slice(0, 1);
  assert.equal(p.verifyDeviceCert(cert, first).device, p.deviceId(device.public));
  const forged = structuredClone(cert);
  forged.body.proof.enroller = forged.body.proof.device;
  assert.throws(() => p.verifyDeviceCert(p.signStatement(secrets.signing, forged.body), first), (e) => e.code === "bad_enroller_proof");

  const opened = p.openSecrets(chain[0], v.envelope.holder, box, b64d(v.envelope.sealed), loads);
  assert.equal(fromUtf8(opened.toBytes()), v.secrets.bytes);
  assert.throws(() => p.openSecrets(chain[0], "e".repeat(32), box, b64d(v.envelope.sealed), loads));
  // our own envelope opens too (sealed boxes are random, so compare by opening)
  const mine = p.sealSecrets(secrets, v.envelope.holder, box.public);
  assert.equal(fromUtf8(p.openSecrets(chain[0], v.envelope.holder, box, mine, loads).toBytes()), v.secrets.bytes);
});

test("sealed record", () => {
  const v = vectors("vault.json").record;
  const keyring = new p.Keyring(new Map([[v.epoch, b64d(v.vault_key)]]));
  const ad = utf8(v.ad);
  assert.equal(fromUtf8(p.openRecord(keyring, ad, b64d(v.sealed))), v.plaintext);
  assert.equal(b64e(p.sealRecord(keyring, ad, utf8(v.plaintext), fixedRandom("record"))), v.sealed);
  assert.throws(() => p.openRecord(keyring, utf8(v.ad.replace('"version":1', '"version":2')), b64d(v.sealed)));
});

test("recovery code and bundle", () => {
  const v = vectors("vault.json");
  const code = p.RecoveryCode.parse(v.recovery.code);
  assert.equal(String(code), v.recovery.code);
  assert.equal(String(p.RecoveryCode.parse(v.recovery.code.toLowerCase().replace(/-/g, " "))), v.recovery.code);
  assert.throws(() => p.RecoveryCode.parse(v.recovery.code.replace(/^./, (c) => (c === "A" ? "B" : "A"))));
  assert.equal(b64e(code.bundleKey()), v.recovery.bundle_key);
  assert.equal(b64e(code.box().public), v.recovery.box_public);
  assert.equal(b64e(code.authKey().public), v.recovery.auth_public);
  assert.equal(b64e(so.aeadOpen(code.bundleKey(), utf8(v.recovery.bundle_ad), b64d(v.recovery.root_bundle))), v.root_seed);
  assert.equal(String(p.RecoveryCode.parse(String(p.RecoveryCode.generate()))).length, 44);
});

test("key file", () => {
  const v = vectors("keyfile.json");
  const cost = { opslimit: v.opslimit, memlimit: v.memlimit };
  assert.equal(b64e(keyfileKey(v.passphrase, b64d(v.salt), cost)), v.key);
  const doc = JSON.parse(v.file);
  assert.equal(fromUtf8(keyfileAd({ format: doc.format, kdf: doc.kdf })), v.ad);
  assert.equal(fromUtf8(openKeyfile(utf8(v.file), v.passphrase)), v.plaintext);
  assert.equal(fromUtf8(sealKeyfile(utf8(v.plaintext), v.passphrase, cost, { salt: b64d(v.salt), nonce: b64d(v.nonce) })), v.file);
  assert.throws(() => openKeyfile(utf8(v.tampered_file), v.passphrase), (e) => e.code === "wrong_passphrase");
  assert.throws(() => openKeyfile(utf8(v.file), v.passphrase + "!"), (e) => e.code === "wrong_passphrase");
});

test("client: ids, buckets, journal record, manifest", () => {
  const v = vectors("client.json");
  const root = new so.SigningKeyPair(b64d(v.root_seed));
  assert.equal(p.patientId(root.public), v.patient);
  assert.equal(p.deviceId(new so.SigningKeyPair(b64d(v.device_seed)).public), v.device);
  for (const [n, size] of v.buckets) assert.equal(p.bucketSize(n), size, `bucket of ${n}`);

  const j = v.journal;
  assert.equal(fromUtf8(p.recordPlaintext(j.record)), j.plaintext);
  assert.equal(fromUtf8(p.recordAd(v.patient, j.record.id, j.record.version)), j.ad);
  const keyring = p.Keyring.fromBytes(b64d(j.keyring));
  assert.equal(b64e(keyring.toBytes()), j.keyring);
  assert.equal(b64e(p.sealRecord(keyring, utf8(j.ad), utf8(j.plaintext), fixedRandom("journal"))), j.sealed);
  assert.deepEqual(JSON.parse(fromUtf8(p.openRecord(keyring, utf8(j.ad), b64d(j.sealed)))),
    { kind: j.record.kind, created: j.record.created, data: j.record.data });

  const m = v.manifest;
  const entries = new Map(Object.entries(m.blobs).map(([id, blob]) => [id, [1, so.sha256(b64d(blob))]]));
  assert.equal(b64e(p.manifestDigest(entries)), m.digest);
  const signer = new so.SigningKeyPair(b64d(m.signing_seed));
  assert.deepEqual(p.manifest(signer, { patient: v.patient, epoch: m.epoch, counter: m.counter, entries, now: m.statement.body.issued }), m.statement);
});

test("client: link code and confirmation code", () => {
  const v = vectors("client.json").link;
  const device = new so.SigningKeyPair(b64d(v.device_seed));
  const box = new so.BoxKeyPair(b64d(v.box_secret));
  assert.equal(p.linkCode(device, box.public), v.link_code);
  assert.equal(p.deviceId(device.public), v.device);
  assert.equal(p.confirmationCode(p.statementHash(v.identity), v.device), v.confirmation);
});

test("devices: certificates checked back through their enrollers (sdk.checked_devices)", () => {
  const v = vectors("vault.json");
  const root = new so.SigningKeyPair(b64d(v.root_seed));
  const chain = p.verifyIdentityChain(root.public, v.identity_chain).slice(0, 1);
  const secrets = p.EpochSecrets.fromBytes(utf8(v.secrets.bytes), loads);
  const first = new so.SigningKeyPair(b64d(v.device_cert.sign_seed));
  const firstId = p.deviceId(first.public);
  const enrol = (enroller, enrolledBy) => {
    const device = so.SigningKeyPair.generate(), box = so.BoxKeyPair.generate();
    return p.deviceCert(secrets.signing, enroller, { patient: v.patient, epoch: 1, signKey: device.public, boxKey: box.public,
      deviceProof: p.deviceKeyProof(device, box.public), enrolledBy, now: 1 });
  };
  const linked = enrol(first, firstId); // enrolled by the first device
  const orphan = enrol(so.SigningKeyPair.generate(), "e".repeat(32)); // by a device nobody lists
  const forged = enrol(so.SigningKeyPair.generate(), "registration"); // "registration" without the root key
  const listing = [v.device_cert.cert, linked, orphan, forged].map((cert) => ({
    device: p.deviceId(b64d(cert.body.sign_key)), cert, revoked: null,
  }));
  listing[1].revoked = 5;
  const good = p.checkedDevices(chain, listing);
  assert.deepEqual([...good.keys()].sort(), [firstId, listing[1].device].sort());
  assert.equal(good.get(firstId).active, true);
  assert.equal(good.get(listing[1].device).active, false); // the node's flag takes it out
  // a listing that names another device id for a certificate counts for nothing
  assert.equal(p.checkedDevices(chain, [{ ...listing[0], device: "f".repeat(32) }]).size, 0);
});

test("client: record summaries and clinical dates as records.py gives them", async () => {
  const { clinicalDate, summary, byClinicalDate } = await import("../../rxfed/web/js/records.mjs");
  const v = vectors("client.json").summaries;
  for (const c of v) {
    assert.equal(summary(c.record), c.summary, c.record.kind);
    assert.equal(clinicalDate(c.record), c.date, c.record.kind);
  }
  const order = byClinicalDate(v.map((c) => c.record)).map((r) => clinicalDate(r));
  assert.deepEqual(order, ["2024-02-01", "2020-05-06", "2020-05-05", "2019-03-01", null, null]);
  const journal = vectors("client.json").journal.record;
  assert.equal(summary(journal), "douleur épaule 3/10 · fatigue 6/10 · feeling 4/10");
});

test("client: a treatment's data validated as records.treatment makes it", async () => {
  const { treatment } = await import("../../rxfed/web/js/client.mjs");
  const v = vectors("client.json").treatment;
  const e = v.entered;
  assert.deepEqual(treatment({ name: v.name, dose: e.dose, started: e.started, stopped: e.stopped, efficacy: e.efficacy,
    sideEffects: e.side_effects, adherence: String(e.adherence) }), v.data);
  assert.throws(() => treatment({ name: "x", started: "2024-02-01", stopped: "2024-01-01" }), (x) => x.code === "bad_date");
  assert.throws(() => treatment({ name: "x", started: "2024-02-30" }), (x) => x.code === "bad_date");
  assert.throws(() => treatment({ name: " " }), (x) => x.code === "bad_text");
  assert.throws(() => treatment({ name: "x", efficacy: "11" }), (x) => x.code === "out_of_range");
});
