// Consent in the page: the constructions of spec/crypto.md §10 and the objects of
// spec/consent.md (grants, tokens, deliveries, revocations, acknowledgements, the audit
// chain), made and checked exactly as rxfed/consent/grants.py, rxfed/consent/audit.py and
// rxfed/crypto/keys.py do. Sans-I/O: keys, time and randomness come in as arguments.

import { canonical } from "./canonical.mjs";
import { b64d, b64e, concat, equal, readU32be, utf8 } from "./encoding.mjs";
import { IntegrityError, openStatement, signStatement, statementHash } from "./protocol.mjs";
import { SigningKeyPair, blake2b, hashId, randomBytes, sealTo, sha256, toCurve25519 } from "./sodium.mjs";

export const GRANT = "rxfed.consent.grant";
export const TOKEN = "rxfed.consent.token";
export const DELIVERY = "rxfed.consent.delivery";
export const REVOKE = "rxfed.consent.revoke";
export const TOKEN_REVOKE = "rxfed.consent.token-revoke";
export const ACK = "rxfed.consent.ack";
export const HEAD = "rxfed.audit.head";
export const VERSION = 2;
export const DAY = 86400;
export const MAX_DURATION = 366 * DAY;
export const MAX_SEQ = 2 ** 53 - 1;
export const MAX_NODES = 64;
const NODE_ID = "[A-Za-z0-9.\\-]{1,253}(?::[0-9]{1,5})?";
const NAME = "[a-z][a-z0-9_.-]{0,39}";
export const PURPOSE = new RegExp(`^${NAME}$`);
const RECIPIENT = new RegExp(`^(?:node:(${NODE_ID})|(federation)|plugin:(${NODE_ID})/(${NAME}))$`);
const ID = /^[a-z0-9]{32}$/;

/** The patient's choice did not make a valid grant (grants.ConsentError). */
export class ConsentError extends Error {
  constructor(message, code = "bad_grant") {
    super(message);
    this.code = code;
  }
}

export const newId = () => hashId(randomBytes(32), "rxfed-consent-id");
/** A time every recipient of one grant sees: a whole UTC day (grants.day). */
export const day = (unix) => unix - (unix % DAY);
export const endOfDay = (unix) => day(unix) + DAY - 1;

/** `node:ID`, `federation` or `plugin:NODE_ID/NAME` (grants.Recipient). */
export function parseRecipient(value) {
  const m = typeof value === "string" ? RECIPIENT.exec(value) : null;
  if (m === null) throw new ConsentError("a recipient is node:NODE_ID, federation or plugin:NODE_ID/NAME", "bad_recipient");
  if (m[2]) return { kind: "federation", node: null, plugin: null, text: value };
  if (m[1]) return { kind: "node", node: m[1], plugin: null, text: value };
  return { kind: "plugin", node: m[3], plugin: m[4], text: value };
}

/** The nodes a grant to `recipient` reaches, given the home node first, then its peers. */
export const recipientNodes = (recipient, federated) => recipient.kind === "federation" ? [...new Set(federated)] : [recipient.node];
export const covers = (recipient, node, plugin) => recipient.kind === "plugin"
  ? recipient.node === node && recipient.plugin === plugin : recipient.kind === "federation" || recipient.node === node;

export function checkPurpose(value) {
  if (typeof value !== "string" || !PURPOSE.test(value)) {
    throw new ConsentError("a purpose is lower case letters, digits, '.', '_' or '-', at most 40 (e.g. research)", "bad_purpose");
  }
  return value;
}

// -- pairwise pseudonym keys (crypto.md §10) --------------------------------------------------
export const pseudonymLabel = (node, purpose, plugin) => `rxfed-pseudonym-v1|${node}|${purpose}|${plugin || ""}`;

/** seed = BLAKE2b-256(key = pseudonym secret, person = "rxfed-pseudonym1", label); an Ed25519 key from it. */
export function pseudonymKey(secret, label) {
  if (secret.length !== 32) throw new Error("the pseudonym secret is 32 bytes");
  return new SigningKeyPair(blake2b(utf8(label), { key: secret, size: 32, person: "rxfed-pseudonym1" }));
}

/** What plugins see of a pseudonym key: "SHA256:" || b64url(SHA-256(key)). */
export const subjectOf = (key) => "SHA256:" + b64e(sha256(key));

// -- sealing to a node ------------------------------------------------------------------------
/** A sealed box to the X25519 key birationally equivalent to a node's Ed25519 identity key. */
export const sealToNode = (nodePublicKey, message) => sealTo(toCurve25519(nodePublicKey), message);

// -- grants and tokens -------------------------------------------------------------------------
function sortedNodes(nodes) {
  const out = [...new Set(nodes)].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  if (out.length < 1 || out.length > MAX_NODES) throw new ConsentError(`a grant names 1 to ${MAX_NODES} nodes`, "bad_recipient");
  return out;
}

/** A token for one recipient node, signed by the pseudonym key it names (grants.Token.create). */
export function makeToken(key, { node, home, kind, purpose, recipient, nodes, issued, notAfter, id = newId() }) {
  return signStatement(key, {
    type: TOKEN, v: VERSION, id, node, home, subject: b64e(key.public), kind, purpose, recipient: recipient.text,
    nodes: sortedNodes(nodes), issued: day(issued), not_after: notAfter,
  });
}

/** The grant, signed by this device (grants.Grant.create). */
export function makeGrant(deviceKey, { patient, device, kind, purpose, recipient, issued, notAfter, nodes, tokens, id = newId() }) {
  return signStatement(deviceKey, {
    type: GRANT, v: VERSION, id, patient, device, kind, purpose, recipient: recipient.text, issued, not_after: notAfter,
    nodes: sortedNodes(nodes), tokens: [...tokens],
  });
}

/** A token as listed, checked under the pseudonym key it names (grants.Token.from_json):
 * {id, node, home, subjectKey, kind, purpose, recipient, nodes, notAfter, v, signed}. */
export function parseToken(obj) {
  const body = obj && obj.body;
  let subjectKey;
  try {
    subjectKey = b64d(body.subject, 32);
  } catch {
    throw new IntegrityError("a token names no pseudonym key", "bad_token");
  }
  openStatement(obj, TOKEN, subjectKey, "token");
  if (![1, VERSION].includes(body.v) || typeof body.id !== "string" || !ID.test(body.id) || typeof body.node !== "string") {
    throw new IntegrityError("a token is malformed", "bad_token");
  }
  const recipient = parseRecipient(body.recipient);
  if (recipient.kind !== "federation" && recipient.node !== body.node) throw new IntegrityError("the token's node is not its recipient", "widened_grant");
  const nodes = Array.isArray(body.nodes) ? body.nodes : recipient.kind === "federation" ? null : [body.node];
  if (nodes !== null && !nodes.includes(body.node)) throw new IntegrityError("the token's node is not one its grant names", "widened_grant");
  return { id: body.id, node: body.node, home: body.home, subjectKey, kind: body.kind, purpose: body.purpose, recipient,
    nodes, notAfter: body.not_after, v: body.v, signed: obj };
}

// -- deliveries and sequence numbers ------------------------------------------------------------
/** last + 1 + uint32_be(4 random bytes) (grants.next_seq). */
export function nextSeq(last, random) {
  if (random.length !== 4) throw new Error("a sequence step takes 4 random bytes");
  const seq = last + 1 + readU32be(random, 0);
  if (seq > MAX_SEQ) throw new ConsentError("this grant has made all the deliveries it can; grant again", "seq_exhausted");
  return seq;
}

export const signDelivery = (key, { token, node, delivery, seq, signals }) =>
  signStatement(key, { type: DELIVERY, token, node, delivery, seq, signals });

// -- revocation and acknowledgements ----------------------------------------------------------
export const revokeGrant = (deviceKey, grant, now) => signStatement(deviceKey, { type: REVOKE, grant, revoked: now });
export const revokeToken = (key, token, now) => signStatement(key, { type: TOKEN_REVOKE, token, revoked: now });

/** Throw unless `obj` is a token revocation for `tokenId` signed by the token's key. */
export function checkTokenRevocation(obj, tokenId, subjectKey) {
  const body = openStatement(obj, TOKEN_REVOKE, subjectKey, "token revocation");
  if (body.token !== tokenId || !Number.isSafeInteger(body.revoked)) throw new IntegrityError("the revocation is for another token", "bad_revocation");
  return body.revoked;
}

/** The body of a statement of `kind` signed by any of `keys`, or IntegrityError. */
export function openByAny(obj, kind, keys, where) {
  for (const key of keys) {
    try {
      return openStatement(obj, kind, key, where);
    } catch {
      // the next key: a node publishes several while it rotates
    }
  }
  throw new IntegrityError(`${where}: not signed by any of the expected keys`, "bad_statement_signature");
}

/** An acknowledgement signed by one of `nodeKeys` (fetched from the node itself) for this
 * token, node and revocation (grants.Acknowledgement.check); IntegrityError("bad_ack") otherwise. */
export function checkAck(obj, { token, node, revocation, nodeKeys }) {
  let body;
  try {
    body = openByAny(obj, ACK, nodeKeys, "acknowledgement");
  } catch {
    throw new IntegrityError(`the acknowledgement is not signed by a key ${node} publishes`, "bad_ack");
  }
  if (body.token !== token || body.node !== node || body.revocation !== b64e(statementHash(revocation))
      || !Number.isSafeInteger(body.acknowledged) || !Array.isArray(body.unconfirmed)) {
    throw new IntegrityError("the acknowledgement is for another token, node or revocation", "bad_ack");
  }
  return { token, node, acknowledged: body.acknowledged, unconfirmed: body.unconfirmed };
}

// -- the audit chain ----------------------------------------------------------------------------
export const GENESIS = new Uint8Array(32);
/** hash_n = BLAKE2b-256(person = "rxfed-audit-v1", hash_{n-1} || entry_n). */
export const auditLink = (previous, entry) => blake2b(concat(previous, entry), { size: 32, person: "rxfed-audit-v1" });

export class AuditTampered extends IntegrityError {
  constructor(message) {
    super(message, "audit_tampered");
  }
}

/** Check a log against its signed head and every head seen before (audit.verify); returns
 * the new head {seq, hash (b64)} or throws AuditTampered. */
export function verifyAudit(patient, entries, headStatement, nodeKeys, seen = []) {
  if (!Array.isArray(entries)) throw new AuditTampered("the audit log is not a list of entries");
  const hashes = [];
  let previous = GENESIS;
  entries.forEach((entry, i) => {
    if (!entry || typeof entry !== "object" || entry.seq !== i + 1) throw new AuditTampered(`audit entry ${i + 1} is missing or out of order`);
    previous = auditLink(previous, canonical(entry));
    hashes.push(previous);
  });
  let body;
  try {
    body = openByAny(headStatement, HEAD, nodeKeys, "head");
  } catch {
    throw new AuditTampered("the audit head is not signed by the home node");
  }
  if (body.patient !== patient || body.seq !== entries.length) throw new AuditTampered("the signed audit head does not match the log served");
  const top = hashes.length ? hashes[hashes.length - 1] : GENESIS;
  if (body.hash !== b64e(top)) throw new AuditTampered("the audit log does not hash to its signed head: an entry was changed");
  for (const old of seen) {
    if (old.seq > entries.length) {
      throw new AuditTampered(`the audit log is shorter than before (${entries.length} entries, ${old.seq} seen): history was truncated`);
    }
    if (old.seq && !equal(hashes[old.seq - 1], b64d(old.hash, 32))) {
      throw new AuditTampered(`audit entry ${old.seq} differs from what was seen before: history was rewritten`);
    }
  }
  return { seq: entries.length, hash: b64e(top) };
}
