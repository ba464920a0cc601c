// A node's keys as the page trusts them: the keys it pinned, and every key reached from
// them by signed rotation statements (spec/crypto.md §7, rxfed/protocol/federation.py
// KeyRotation and trusted_keys), so a community host that rotates its key goes on being
// checked under keys the page can trace back to the ones it pinned when it joined.
// The pins of every node this browser read a key document from are kept in IndexedDB
// (`nodes`), across views and visits, as a node keeps its peers' trusted keys
// (spec/federation.md §2.2): first contact trusts the keys listed, afterwards only the keys
// reached from the pinned ones by rotations they signed (spec/web.md §2).

import { b64d, b64e } from "./encoding.mjs";
import { IntegrityError, openStatement } from "./protocol.mjs";
import { sha256 } from "./sodium.mjs";
import * as store from "./store.mjs";

export const ROTATION = "rxfed.node-key-rotation";
const CLOCK_SKEW = 300;
const MAX_TIME = 2 ** 40;
/** Keys, and rotation statements, read from one key document (federation.MAX_KEYS). */
export const MAX_KEYS = 64;
const PINS = "nodes";
const isTime = (v) => Number.isSafeInteger(v) && v >= 0 && v <= MAX_TIME;

/** {node, old, new, validFrom, oldValidUntil} of a rotation statement its old key signed. */
export function parseRotation(obj, where = "rotation") {
  const body = obj && obj.body;
  const keys = ["new", "node", "old", "old_valid_until", "type", "valid_from"];
  if (!body || typeof body !== "object" || Object.keys(body).sort().join() !== keys.join() || typeof body.node !== "string"
      || body.node.length > 255) {
    throw new IntegrityError(`${where} is not a key rotation`);
  }
  const time = (v) => Number.isSafeInteger(v) && v >= 0 && v <= MAX_TIME;
  let old, next;
  try {
    old = b64d(body.old, 32);
    next = b64d(body.new, 32);
  } catch {
    throw new IntegrityError(`${where} is not a key rotation`);
  }
  if (!time(body.valid_from) || !time(body.old_valid_until) || body.old === body.new || body.old_valid_until < body.valid_from) {
    throw new IntegrityError(`${where}: a rotation introduces another key and ends the old one no earlier`);
  }
  openStatement(obj, ROTATION, old, where);
  return { node: body.node, old, new: next, validFrom: body.valid_from, oldValidUntil: body.old_valid_until };
}

const validAt = (key, when) => key.validFrom - CLOCK_SKEW <= when && (key.validUntil === null || when <= key.validUntil);

/** The keys to accept: the anchors ({key, validFrom, validUntil, successor}) and every key
 * reached from them by a chain of rotations (trusted_keys): a rotation is followed when its
 * old key is trusted, was valid at its valid_from and introduced no other key; a key that
 * signed two different rotations is followed by neither. */
export function trustedKeys(anchors, rotations) {
  const trusted = new Map(anchors.map((k) => [b64e(k.key), { ...k }]));
  const byOld = new Map();
  for (const r of rotations) {
    const id = b64e(r.old);
    const seen = byOld.get(id) || new Map();
    seen.set(`${b64e(r.new)}|${r.validFrom}|${r.oldValidUntil}|${r.node}`, r);
    byOld.set(id, seen);
  }
  const pending = [...byOld.values()].filter((signed) => signed.size === 1).map((signed) => [...signed.values()][0]);
  for (let progress = true; progress;) {
    progress = false;
    for (const r of [...pending]) {
      const old = trusted.get(b64e(r.old));
      if (old === undefined) continue;
      pending.splice(pending.indexOf(r), 1);
      progress = true;
      if (!validAt(old, r.validFrom) || (old.successor !== null && b64e(old.successor) !== b64e(r.new))) continue;
      const end = old.validUntil === null ? r.oldValidUntil : Math.min(old.validUntil, r.oldValidUntil);
      trusted.set(b64e(r.old), { ...old, validUntil: end, successor: r.new });
      if (!trusted.has(b64e(r.new))) trusted.set(b64e(r.new), { key: r.new, validFrom: r.validFrom, validUntil: null, successor: null });
    }
  }
  return [...trusted.values()];
}

/** The keys of a node document reached from `pinned` (public keys) by its rotations. */
export function followRotations(doc, pinned) {
  const pins = new Set(pinned.map(b64e));
  const anchors = [];
  for (const k of Array.isArray(doc.keys) ? doc.keys : []) {
    if (!k || !pins.has(k.public_key)) continue;
    anchors.push({ key: b64d(k.public_key, 32), validFrom: k.valid_from, validUntil: k.valid_until ?? null, successor: null });
  }
  const rotations = [];
  for (const [i, statement] of (Array.isArray(doc.rotations) ? doc.rotations.slice(0, MAX_KEYS) : []).entries()) {
    try {
      const r = parseRotation(statement, `rotations[${i}]`);
      if (r.node === doc.node_id) rotations.push(r);
    } catch {
      // never followed: a rotation counts only if its old key signed it
    }
  }
  return anchors.length ? trustedKeys(anchors, rotations).map((k) => k.key) : [];
}

/** `SHA256:` and the base64url of a key's SHA-256, as the CLI and the node print it. */
export const fingerprint = (key) => `SHA256:${b64e(sha256(key))}`;

function badDocument(message) {
  return new IntegrityError(message, "bad_document");
}

/** One key entry, as a key document lists it (`published`) or as the pins keep it
 * (NodeKey.from_json): {key, validFrom, validUntil, successor}. */
function parseKey(k, where, published) {
  const allowed = published ? ["public_key", "valid_from", "valid_until", "key_id", "alg", "fingerprint"]
    : ["public_key", "valid_from", "valid_until", "successor"];
  if (!k || typeof k !== "object" || Array.isArray(k)) throw badDocument(`${where} must be a JSON object`);
  const unknown = Object.keys(k).find((f) => !allowed.includes(f));
  if (unknown !== undefined) throw badDocument(`${where}: unknown field ${unknown}`);
  let key, successor = null;
  try {
    key = b64d(k.public_key, 32);
    if (!published && k.successor != null) successor = b64d(k.successor, 32);
  } catch {
    throw badDocument(`${where}: not a 32-byte key`);
  }
  if (!isTime(k.valid_from) || (k.valid_until != null && !isTime(k.valid_until))) throw badDocument(`${where}: not a time`);
  return { key, validFrom: k.valid_from, validUntil: k.valid_until ?? null, successor };
}

/** The keys a node's document lists, refused whole when one entry is malformed, as
 * NodeDocument.from_json refuses it. */
export function listedKeys(doc) {
  if (!doc || typeof doc !== "object" || !Array.isArray(doc.keys)) throw badDocument("the node document needs a list of keys");
  const keys = doc.keys.slice(0, MAX_KEYS).map((k, i) => parseKey(k, `keys[${i}]`, true));
  if (!keys.length) throw badDocument("the node document lists no key");
  return keys;
}

/** The rotation statements of a document that the old key signed, for this node. */
function documentRotations(doc) {
  const out = [];
  for (const [i, statement] of (Array.isArray(doc.rotations) ? doc.rotations.slice(0, MAX_KEYS) : []).entries()) {
    try {
      const r = parseRotation(statement, `rotations[${i}]`);
      if (r.node === doc.node_id) out.push(r);
    } catch {
      // never followed: a rotation counts only if its old key signed it
    }
  }
  return out;
}

/** A key as the pins keep it (NodeKey.to_json). */
export const keyJson = (k) => ({ public_key: b64e(k.key), valid_from: k.validFrom, valid_until: k.validUntil,
  successor: k.successor === null ? null : b64e(k.successor) });

/** A document as trusted from `pinned` (the keys trusted before; null at first contact,
 * when the keys it lists are the anchors): {trusted, untrusted} (NodeDocument.trusting, as
 * a node trusts a peer's keys). `trusted`: the anchors and every key reached from them by
 * rotations their keys signed; `untrusted`: the keys the document lists beside those,
 * which nothing the page trusts introduced. */
export function pinDocument(doc, pinned = null) {
  const listed = listedKeys(doc);
  const trusted = trustedKeys(pinned === null ? listed : pinned, documentRotations(doc));
  const known = new Set(trusted.map((k) => b64e(k.key)));
  return { trusted, untrusted: listed.filter((k) => !known.has(b64e(k.key))).map((k) => k.key) };
}

/** `doc` (checked to be `nodeId`'s own document, fetched from it) as this browser trusts
 * it, its pins updated in the same IndexedDB transaction: {trusted, untrusted, first}. */
export async function trustNode(doc) {
  listedKeys(doc); // a malformed document changes no pin
  let view = null, first = false, failure = null;
  await store.update(PINS, (pins) => {
    const all = pins && typeof pins === "object" ? pins : {};
    try {
      const before = Object.hasOwn(all, doc.node_id) ? all[doc.node_id].map((k, i) => parseKey(k, `pin[${i}]`, false)) : null;
      first = before === null;
      view = pinDocument(doc, before);
    } catch (exc) {
      failure = exc; // written back unchanged: nothing may throw inside the transaction
      return all;
    }
    return { ...all, [doc.node_id]: view.trusted.map(keyJson) };
  });
  if (failure !== null) throw failure;
  return { ...view, first };
}

/** The error of a node that lists keys nothing this browser trusts for it introduced. */
export function untrustedError(node, untrusted) {
  return new IntegrityError(`${node} now publishes a key this browser never trusted for it (${untrusted.map(fingerprint).join(", ")}), `
    + "and no key it trusted signed a rotation to it: it is refused. If its operator confirms that it changed keys, "
    + "compare the fingerprint and forget its old keys (“Keys of other nodes”).", "untrusted_key");
}

/** The nodes whose keys this browser pinned: [{node, keys: [fingerprint]}], by node id. */
export async function pinnedNodes() {
  const pins = (await store.get(PINS)) || {};
  return Object.keys(pins).sort().map((node) => ({ node, keys: pins[node].map((k) => fingerprint(b64d(k.public_key, 32))) }));
}

/** Forget the keys pinned for `node`: the next document read from it is trusted as at first contact. */
export function forgetNode(node) {
  return store.update(PINS, (pins) => {
    const rest = { ...(pins || {}) };
    delete rest[node];
    return rest;
  });
}
