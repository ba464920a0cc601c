// The patient's device in the page: register, unlock, load and check the vault, write
// journal entries. The same requests and checks as rxfed/client/sdk.py; nothing readable
// leaves the page.

import { canonical, loads } from "./canonical.mjs";
import { b64d, b64e, fromUtf8, hex, utf8 } from "./encoding.mjs";
import { MIN_PASSPHRASE, openKeyfile, sealKeyfile } from "./keyfile.mjs";
import * as p from "./protocol.mjs";
import { BoxKeyPair, SigningKeyPair, pwhashCost, randomBytes, ready, sha256 } from "./sodium.mjs";
import * as store from "./store.mjs";

/** The node answered with an error; `status` and `code` are the node's. */
export class NodeRefused extends Error {
  constructor(status, code, message) {
    super(message);
    Object.assign(this, { status, code });
  }
}

export class Invalid extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

/** Argon2id cost of the browser's key file: libsodium's interactive cost (64 MiB), which
 * phones can afford; spec/web.md says why it is not the CLI's moderate. */
export const KDF = "interactive";
export const timings = {};

async function http(method, path, { body = null, headers = {} } = {}) {
  let response;
  try {
    response = await fetch(path, { method, headers: body ? { ...headers, "Content-Type": "application/json" } : headers, body,
      cache: "no-store", credentials: "omit", redirect: "error" });
  } catch (exc) {
    throw new NodeRefused(0, "unavailable", "cannot reach the node: check the connection and try again");
  }
  const raw = new Uint8Array(await response.arrayBuffer());
  let doc = null;
  try {
    doc = raw.length ? loads(raw) : null;
  } catch {
    throw new p.IntegrityError(`the node answered ${response.status} with a body that is not JSON`);
  }
  if (!response.ok) {
    const code = doc && doc.error ? doc.error : "error";
    throw new NodeRefused(response.status, code, (doc && doc.message) || code);
  }
  return { doc, date: response.headers.get("Date") };
}

export class Node {
  constructor(info, offset) {
    this.info = info;
    this.offset = offset; // seconds to add to this browser's clock to get the node's
  }
  /** The node's /.well-known/rxfed, and how far this browser's clock is from the node's
   * (signed requests must be within the node's window). */
  static async discover() {
    const { doc, date } = await http("GET", "/.well-known/rxfed");
    if (!doc || !Array.isArray(doc.protocol_versions) || !doc.protocol_versions.includes("1")) {
      throw new Invalid("this node does not speak rxfed protocol 1", "incompatible_node");
    }
    const served = date ? Date.parse(date) : NaN;
    const offset = Number.isFinite(served) && Math.abs(served - Date.now()) > 30_000 ? Math.round((served - Date.now()) / 1000) : 0;
    return new Node(doc, offset);
  }
  now() {
    return Math.floor(Date.now() / 1000) + this.offset;
  }
  async call(method, path, body, key) {
    const raw = body === null ? new Uint8Array(0) : canonical(body);
    const headers = p.signRequest(key, { method, target: path, destination: this.info.node_id, body: raw, now: this.now() });
    return (await http(method, path, { body: raw.length ? raw : null, headers })).doc;
  }
}

export const hasProfile = async () => (await store.get("keyfile")) !== undefined;

export function identityBytes(id) {
  // The CLI's Identity format 2 (rxfed/client/profile.py), so both hold the same secrets;
  // patient and root key are null on a device waiting to be linked.
  return utf8(JSON.stringify({
    format: 2, patient: id.patient, node_url: id.nodeUrl, node_id: id.nodeId, root_key: id.rootKey ? b64e(id.rootKey) : null,
    device: b64e(id.device.seed), box: b64e(id.box.secret),
  }));
}

function identityFrom(bytes) {
  const doc = JSON.parse(fromUtf8(bytes));
  if (doc.format !== 2) throw new Invalid("this browser's key file is not one this client can use", "bad_profile");
  return {
    patient: doc.patient, nodeUrl: doc.node_url, nodeId: doc.node_id, rootKey: doc.root_key ? b64d(doc.root_key, 32) : null,
    device: new SigningKeyPair(b64d(doc.device, 32)), box: new BoxKeyPair(b64d(doc.box, 32)),
  };
}

function timed(name, work) {
  const t0 = performance.now();
  const out = work();
  timings[name] = Math.round((performance.now() - t0) * 10) / 10;
  return out;
}

export function checkNewPassphrase(passphrase, again) {
  if ((passphrase || "").length < MIN_PASSPHRASE) {
    throw new Invalid(`The passphrase must be at least ${MIN_PASSPHRASE} characters (a few words work well); this one has ${(passphrase || "").length}.`, "weak_passphrase");
  }
  if (again !== undefined && passphrase !== again) throw new Invalid("The two passphrases differ.", "passphrase_mismatch");
}

export class Patient {
  constructor(node, identity) {
    this.node = node;
    this.id = identity;
    this.state = null; // the checked vault: chain, secrets, entries, counter, records
    this.passphrase = null;
  }

  get device() {
    return p.deviceId(this.id.device.public);
  }

  /** Whether this browser still waits to be linked to an account (requestLink). */
  get linked() {
    return this.id.patient !== null;
  }

  /** The link code an active device enrols this browser with (`rxfed patient devices add`). */
  get linkCode() {
    return p.linkCode(this.id.device, this.id.box.public);
  }

  /** Make this browser's keys and keep them (sealed) waiting to be linked to an existing
   * account from one of its active devices; nothing is sent to the node. */
  static async requestLink(passphrase) {
    checkNewPassphrase(passphrase);
    await ready();
    if (await hasProfile()) throw new Invalid("This browser already holds an account for this node.", "profile_exists");
    const node = await Node.discover();
    const id = { patient: null, nodeUrl: location.origin, nodeId: node.info.node_id, rootKey: null,
      device: SigningKeyPair.generate(), box: BoxKeyPair.generate() };
    const keyfile = timed("argon2_ms", () => sealKeyfile(identityBytes(id), passphrase, pwhashCost(KDF)));
    await store.putAll({ keyfile, state: store.EMPTY_PINS });
    const patient = new Patient(node, id);
    patient.passphrase = passphrase;
    return patient;
  }

  /** Once an active device has enrolled this browser, adopt the account. `confirm` is the
   * confirmation code the enrolling device showed: it must match what this browser computes
   * from the identity the node serves, or nothing is adopted (sdk.finish_link). */
  async finishLink(confirm) {
    if (this.linked) throw new Invalid("This browser is already linked to an account.", "already_linked");
    let account;
    try {
      account = await this.node.call("GET", "/v1/account", null, this.id.device);
    } catch (exc) {
      if (exc instanceof NodeRefused && ["unknown_key", "unknown_account"].includes(exc.code)) {
        throw new Invalid("No device has enrolled this browser yet: run `rxfed patient devices add` with the link code first.", "not_linked");
      }
      throw exc;
    }
    const rootKey = b64d(account.root_key, 32);
    const chain = p.verifyIdentityChain(rootKey, account.identity);
    const pins = p.checkPins(chain, store.EMPTY_PINS);
    const current = chain[chain.length - 1];
    p.openSecrets(current, this.device, this.id.box, b64d(account.keyring), loads);
    const code = p.confirmationCode(current.hash, this.device);
    if ((confirm || "").replace(/[\s-]/g, "").toUpperCase() !== code.replace(/-/g, "")) {
      throw new p.IntegrityError("The confirmation code does not match: the node may be serving another identity. This browser was not linked.");
    }
    const id = { ...this.id, patient: p.patientId(rootKey), rootKey };
    const keyfile = timed("argon2_ms", () => sealKeyfile(identityBytes(id), this.passphrase, pwhashCost(KDF)));
    await store.putAll({ keyfile, state: { ...pins, devices: { [this.device]: "registered" } } });
    this.id = id;
    this.passphrase = null;
    return code;
  }

  /** Make keys in the page, register their public halves, keep the key file in IndexedDB;
   * returns the patient and the recovery code (shown once; the node never sees it). */
  static async register(passphrase, { invite = null } = {}) {
    checkNewPassphrase(passphrase);
    await ready();
    if (await hasProfile()) throw new Invalid("This browser already holds an account for this node.", "profile_exists");
    const node = await Node.discover();
    const now = node.now();
    const root = SigningKeyPair.generate(), device = SigningKeyPair.generate(), box = BoxKeyPair.generate();
    const secrets = p.EpochSecrets.first(), code = p.RecoveryCode.generate();
    const patient = p.patientId(root.public);
    const identity = p.identityStatement(root, {
      patient, epoch: 1, previous: null, masterKey: root.public, signingKey: secrets.signing.public,
      recoveryAuth: code.authKey().public, recoveryBox: code.box().public, now,
    });
    const cert = p.deviceCert(secrets.signing, root, {
      patient, epoch: 1, signKey: device.public, boxKey: box.public, deviceProof: p.deviceKeyProof(device, box.public),
      enrolledBy: "registration", now,
    });
    const deviceId = p.deviceId(device.public);
    const body = {
      root_key: b64e(root.public), identity, device: cert, keyring: b64e(p.sealSecrets(secrets, deviceId, box.public)),
      recovery: p.recoveryMaterial(root, code, secrets, patient), invite,
    };
    const id = { patient, nodeUrl: location.origin, nodeId: node.info.node_id, rootKey: root.public, device, box };
    const keyfile = timed("argon2_ms", () => sealKeyfile(identityBytes(id), passphrase, pwhashCost(KDF)));
    // The key file is stored first: a registered device must never lack its keys.
    const pins = { ...store.EMPTY_PINS, epoch: 1, identity_hash: b64e(p.statementHash(identity)), devices: { [deviceId]: "registered" } };
    await store.putAll({ keyfile, state: pins });
    try {
      await node.call("POST", "/v1/patients", body, device);
    } catch (exc) {
      await store.clear();
      throw exc;
    }
    return { patient: new Patient(node, id), code: String(code) };
  }

  /** Open this browser's key file with the passphrase. */
  static async unlock(passphrase) {
    await ready();
    const keyfile = await store.get("keyfile");
    if (keyfile === undefined) throw new Invalid("This browser holds no account for this node.", "no_profile");
    const node = await Node.discover();
    const opened = timed("argon2_ms", () => openKeyfile(keyfile, passphrase));
    const patient = new Patient(node, identityFrom(opened));
    // Kept only while a link is unfinished: finishing seals the key file again with it.
    patient.passphrase = patient.linked ? null : passphrase;
    return patient;
  }

  /** The account and vault as the node serves them, checked against the identity chain,
   * this browser's pins and the patient's signed manifest; every record decrypted. */
  async load() {
    const t0 = performance.now();
    const account = await this.node.call("GET", "/v1/account", null, this.id.device);
    const pins = (await store.get("state")) || store.EMPTY_PINS;
    const chain = p.verifyIdentityChain(this.id.rootKey, account.identity);
    let newer = p.checkPins(chain, pins);
    if (account.patient !== this.id.patient) throw new p.IntegrityError("the node's account answer names another patient");
    const current = chain[chain.length - 1];
    const secrets = p.openSecrets(current, this.device, this.id.box, b64d(account.keyring), loads);
    const vault = await this.node.call("GET", "/v1/vault", null, this.id.device);
    const { entries, blobs, counter } = p.checkedVault(vault, this.id.patient, chain, pins.counter);
    if (counter > newer.counter) newer = { ...newer, counter };
    if (JSON.stringify(newer) !== JSON.stringify(pins)) await store.putAll({ state: newer });
    const records = [];
    for (const [rid, [version, blob]] of blobs) {
      let plaintext;
      try {
        plaintext = p.openRecord(secrets.keyring, p.recordAd(this.id.patient, rid, version), blob);
      } catch {
        throw new p.IntegrityError(`record ${rid} does not decrypt: it was tampered with`);
      }
      const doc = JSON.parse(fromUtf8(plaintext));
      records.push({ id: rid, version, kind: doc.kind, created: doc.created, data: doc.data });
    }
    records.sort((a, b) => (a.created < b.created ? 1 : a.created > b.created ? -1 : 0));
    this.state = { chain, secrets, entries, counter, records, account };
    timings.load_ms = Math.round(performance.now() - t0);
    return records;
  }

  /** The devices the node lists, each checked by its certificate (not the node's word),
   * with what this browser knows of it (sdk.devices). `verified`: the certificate verifies
   * and the node's "revoked" agrees with the epoch it names. */
  devices() {
    const { chain, account } = this.state;
    const good = p.checkedDevices(chain, account.devices);
    return (account.devices || []).map((d) => {
      const cert = good.get(d.device);
      return {
        device: d.device, created: d.created, revoked: d.revoked, current: d.device === this.device,
        enrolledBy: cert ? cert.cert.enrolled_by : null, verified: (cert !== undefined && cert.active) === (d.revoked == null),
      };
    });
  }

  /** Seal a new journal entry and commit it with the next signed manifest. */
  addJournal(entry) {
    return this.addRecord("journal", journal(entry));
  }

  /** A treatment tried (records.treatment). */
  addTreatment(entry) {
    return this.addRecord("treatment", treatment(entry));
  }

  /** Seal a new record of `kind` (its data already validated) and commit it with the next
   * signed manifest; once more after a reload if another device wrote first. */
  async addRecord(kind, data) {
    for (let attempt = 0; ; attempt++) {
      if (this.state === null) await this.load();
      const t0 = performance.now();
      const record = { id: hex(randomBytes(16)), version: 1, kind, created: timestamp(Date.now() + this.node.offset * 1000), data };
      const { secrets, counter } = this.state;
      const entries = new Map(this.state.entries);
      const blob = p.sealRecord(secrets.keyring, p.recordAd(this.id.patient, record.id, 1), p.recordPlaintext(record));
      entries.set(record.id, [1, sha256(blob)]);
      const manifest = p.manifest(secrets.signing, { patient: this.id.patient, epoch: secrets.epoch, counter: counter + 1, entries, now: this.node.now() });
      try {
        await this.node.call("POST", "/v1/vault", { put: [{ id: record.id, version: 1, blob: b64e(blob) }], delete: [], manifest }, this.id.device);
      } catch (exc) {
        if (exc instanceof NodeRefused && exc.code === "stale_manifest" && attempt === 0) {
          this.state = null; // another device wrote first: reload and try once more
          continue;
        }
        throw exc;
      }
      timings.save_ms = Math.round((performance.now() - t0) * 10) / 10;
      this.state = { ...this.state, entries, counter: counter + 1, records: [record, ...this.state.records] };
      const pins = (await store.get("state")) || store.EMPTY_PINS;
      await store.putAll({ state: { ...pins, counter: counter + 1 } });
      return record;
    }
  }
}

/** When a record was written: ISO 8601 UTC with microseconds, as the CLI writes it. */
export function timestamp(ms) {
  return new Date(ms).toISOString().replace(/\.(\d{3})Z$/, ".$1000Z");
}

function localDate(d = new Date()) {
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
}

function text(value, what, limit) {
  const clean = (value ?? "").trim();
  if (!clean) return null;
  if (clean.length > limit || /[\x00-\x08\x0b\x0c\x0e-\x1f]/.test(clean)) {
    throw new Invalid(`${what} must be at most ${limit} printable characters.`, "bad_text");
  }
  return clean;
}

function score(value, what) {
  if (value === null || value === undefined || String(value).trim() === "") return null;
  const s = String(value).trim();
  if (!/^-?\d{1,6}$/.test(s)) throw new Invalid(`${what} must be a whole number from 0 to 10.`, "out_of_range");
  const n = Number(s);
  if (n < 0 || n > 10) throw new Invalid(`${what} must be from 0 to 10, not ${n}.`, "out_of_range");
  return n;
}

/** A calendar date as YYYY-MM-DD, or null when empty; a day that does not exist is refused. */
function isoDate(value, what) {
  const text = (value ?? "").trim();
  if (!text) return null;
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(text);
  const d = m ? new Date(Date.UTC(+m[1], +m[2] - 1, +m[3])) : null;
  if (!d || d.getUTCFullYear() !== +m[1] || d.getUTCMonth() !== +m[2] - 1 || d.getUTCDate() !== +m[3]) {
    throw new Invalid(`${what} must be a date like 2026-01-31.`, "bad_date");
  }
  return text;
}

/** A treatment's data, validated as rxfed/client/records.py treatment() does. */
export function treatment({ name, dose = null, started = null, stopped = null, efficacy = null, sideEffects = [], adherence = null }) {
  const clean = text(name, "The treatment's name", 120);
  if (clean === null) throw new Invalid("A treatment needs a name.", "bad_text");
  const from = isoDate(started, "The start"), to = isoDate(stopped, "The end");
  if (from && to && to < from) throw new Invalid("A treatment cannot stop before it started.", "bad_date");
  const effects = sideEffects.map((e) => text(e, "A side effect", 120)).filter((e) => e !== null);
  return { name: clean, dose: text(dose, "The dose", 120), started: from, stopped: to, efficacy: score(efficacy, "Efficacy"),
    side_effects: effects, adherence: score(adherence, "Adherence"), code: null, status: null, source: null };
}

/** A journal entry's data, validated as rxfed/client/records.py journal() does. */
export function journal({ symptoms = [], feeling = null, note = null, date = null }) {
  const clean = {};
  for (const [name, value] of symptoms) {
    const key = text(name, "A symptom name", 120);
    const n = score(value, key ? `Symptom “${key}”` : "A symptom");
    if (key === null) {
      if (n !== null) throw new Invalid("A symptom score needs a name.", "bad_symptom");
      continue;
    }
    if (n === null) throw new Invalid(`Symptom “${key}” needs a score from 0 to 10.`, "out_of_range");
    clean[key.toLowerCase()] = n;
  }
  const entry = { date: isoDate(date, "The date") || localDate(), symptoms: clean, feeling: score(feeling, "Feeling"),
    note: text(note, "The note", 4000), questionnaires: [] };
  if (!Object.keys(clean).length && entry.feeling === null && entry.note === null) {
    throw new Invalid("A journal entry needs a symptom, a feeling or a note.", "empty_entry");
  }
  return entry;
}
