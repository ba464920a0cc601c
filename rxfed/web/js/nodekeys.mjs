// A node's keys as the page trusts them: the keys it pinned, and every key reached from
// them by signed rotation statements (spec/crypto.md §7, rxfed/protocol/federation.py
// KeyRotation and trusted_keys), so a community host that rotates its key goes on being
// checked under keys the page can trace back to the ones it pinned when it joined.

import { b64d, b64e } from "./encoding.mjs";
import { IntegrityError, openStatement } from "./protocol.mjs";

export const ROTATION = "rxfed.node-key-rotation";
const CLOCK_SKEW = 300;
const MAX_TIME = 2 ** 40;

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
  for (const [i, statement] of (Array.isArray(doc.rotations) ? doc.rotations : []).entries()) {
    try {
      const r = parseRotation(statement, `rotations[${i}]`);
      if (r.node === doc.node_id) rotations.push(r);
    } catch {
      // never followed: a rotation counts only if its old key signed it
    }
  }
  return anchors.length ? trustedKeys(anchors, rotations).map((k) => k.key) : [];
}
