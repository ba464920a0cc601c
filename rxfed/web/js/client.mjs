// The patient's device in the page: register, unlock, load and check the vault, write
// journal entries. The same requests and checks as rxfed/client/sdk.py; nothing readable
// leaves the page.

import { canonical, loads } from "./canonical.mjs";
import { b64d, b64e, fromUtf8, hex, utf8 } from "./encoding.mjs";
import { MIN_PASSPHRASE, openKeyfile, sealKeyfile } from "./keyfile.mjs";
import * as p from "./protocol.mjs";
import { BoxKeyPair, SigningKeyPair, pwhashCost, randomBytes, ready, sha256 } from "./sodium.mjs";
import { Invalid, contentKey, journal, recordKey, treatment } from "./records.mjs";
import * as store from "./store.mjs";

export { Invalid, journal, treatment };

/** The node answered with an error; `status` and `code` are the node's. */
export class NodeRefused extends Error {
  constructor(status, code, message) {
    super(message);
    Object.assign(this, { status, code });
  }
}

/** Argon2id cost of the browser's key file: libsodium's interactive cost (64 MiB), which
 * phones can afford; spec/web.md says why it is not the CLI's moderate. */
export const KDF = "interactive";
/** Records per commit, as the SDK writes them (sdk.CHUNK). */
export const CHUNK = 64;
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

function identityBytes(id) {
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
    return (await this.addRecords([[kind, data]]))[0];
  }

  /** Seal `puts` (records; a record the vault holds becomes its next version) and drop
   * `deletes` (ids) in one commit under the next signed manifest (sdk._prepare_commit). */
  async commit(puts, deletes = []) {
    const t0 = performance.now();
    const { secrets, counter } = this.state;
    const entries = new Map(this.state.entries);
    const body = { put: [], delete: [], manifest: null };
    const stored = [];
    for (const record of puts) {
      const version = entries.has(record.id) ? entries.get(record.id)[0] + 1 : 1;
      const blob = p.sealRecord(secrets.keyring, p.recordAd(this.id.patient, record.id, version), p.recordPlaintext(record));
      entries.set(record.id, [version, sha256(blob)]);
      body.put.push({ id: record.id, version, blob: b64e(blob) });
      stored.push({ ...record, version });
    }
    for (const rid of deletes) {
      body.delete.push({ id: rid, version: entries.get(rid)[0] });
      entries.delete(rid);
    }
    body.manifest = p.manifest(secrets.signing, { patient: this.id.patient, epoch: secrets.epoch, counter: counter + 1, entries, now: this.node.now() });
    await this.node.call("POST", "/v1/vault", body, this.id.device);
    timings.save_ms = Math.round((performance.now() - t0) * 10) / 10;
    const changed = new Set([...stored.map((r) => r.id), ...deletes]);
    const records = [...stored, ...this.state.records.filter((r) => !changed.has(r.id))];
    records.sort((a, b) => (a.created < b.created ? 1 : a.created > b.created ? -1 : 0));
    this.state = { ...this.state, entries, counter: counter + 1, records };
    const pins = (await store.get("state")) || store.EMPTY_PINS;
    await store.putAll({ state: { ...pins, counter: counter + 1 } });
    return stored;
  }

  /** Run `work` (which commits) on the vault as it is; once more after a reload when another
   * device committed in between (the node answers stale_manifest or stale_record) or a
   * recovery started a new identity epoch since this page loaded (stale_identity): a tab
   * stays open for days. */
  async retried(work) {
    for (let attempt = 0; ; attempt++) {
      if (this.state === null) await this.load();
      try {
        return await work();
      } catch (exc) {
        if (exc instanceof NodeRefused && ["stale_manifest", "stale_record", "stale_identity"].includes(exc.code) && attempt === 0) {
          this.state = null;
          continue;
        }
        throw exc;
      }
    }
  }

  /** New records, `items` [kind, data] pairs, stored in commits of at most CHUNK; with
   * `skipKnown` (an import) those whose import key (or, for records imported before keys
   * were kept, whose content) the vault already holds are left out and returned as held
   * (sdk._add_records). Returns {stored, held}. */
  async addRecords(items, { skipKnown = false } = {}) {
    const now = Date.now() + this.node.offset * 1000;
    // one microsecond apart, so "newest first" keeps the order they were given in
    const fresh = items.map(([kind, data], i) => ({ id: hex(randomBytes(16)), version: 1, kind, created: timestamp(now, i), data }));
    const written = [];
    const held = await this.retried(async () => {
      let todo = fresh.filter((r) => !this.state.entries.has(r.id)), found = [];
      if (skipKnown) {
        const known = new Map();
        for (const r of this.state.records) {
          known.set(recordKey(r.id, r.data), r);
          if (!("import_key" in r.data)) known.set(contentKey(r.kind, r.data), r);
        }
        const match = todo.map((r) => known.get(r.data.import_key) || known.get(contentKey(r.kind, r.data)) || null);
        found = match.filter((r) => r !== null);
        todo = todo.filter((r, i) => match[i] === null);
      }
      for (let i = 0; i < todo.length; i += CHUNK) written.push(...await this.commit(todo.slice(i, i + CHUNK)));
      return found;
    });
    return skipKnown ? { stored: written, held } : written;
  }

  /** Store imported records (each with data.import_key) the vault does not hold yet. */
  importRecords(items) {
    return this.addRecords(items, { skipKnown: true });
  }

  /** The record's next version with new data (`change`: a function from the record as
   * stored to its new data, applied again if another device changed the vault meanwhile),
   * sealed under the current vault key and covered by the next signed manifest; kind and
   * creation time stay (sdk.edit_record). */
  editRecord(recordId, change) {
    return this.changeRecord(recordId, change);
  }

  /** Delete a record: the next signed manifest no longer lists it (sdk.delete_record). */
  deleteRecord(recordId) {
    return this.changeRecord(recordId, null);
  }

  changeRecord(recordId, change) {
    return this.retried(async () => {
      const record = this.state.records.find((r) => r.id === recordId);
      if (record === undefined) throw new Invalid("That record is no longer in your vault.", "unknown_record");
      if (record.kind === "community") {
        throw new Invalid("A community record holds the membership's keys: leave the community instead.", "community_record");
      }
      if (change === null) {
        await this.commit([], [recordId]);
        return record;
      }
      return (await this.commit([{ ...record, data: change(record) }]))[0];
    });
  }

  /** Seal this browser's key file again under a new passphrase, at the browser's Argon2id
   * cost; the current passphrase must open it first (sdk.change_passphrase). */
  static async changePassphrase(current, next, again) {
    checkNewPassphrase(next, again);
    await ready();
    const keyfile = await store.get("keyfile");
    if (keyfile === undefined) throw new Invalid("This browser holds no account for this node.", "no_profile");
    const secrets = timed("argon2_ms", () => openKeyfile(keyfile, current));
    const sealed = sealKeyfile(secrets, next, pwhashCost(KDF));
    secrets.fill(0);
    await store.putAll({ keyfile: sealed });
  }
}

/** When a record was written: ISO 8601 UTC with microseconds, as the CLI writes it. */
export function timestamp(ms, micro = 0) {
  const us = Math.floor(ms) * 1000 + micro;
  const seconds = Math.floor(us / 1e6);
  return new Date(seconds * 1000).toISOString().replace(/\.\d{3}Z$/, `.${String(us - seconds * 1e6).padStart(6, "0")}Z`);
}