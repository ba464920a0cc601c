// Clinician credentials and post badges in the web client, as rxfed/protocol/credentials.py,
// data_integrity.py, status_list.py and badges.py check them (spec/crypto.md section 12):
// the eddsa-jcs-2022 proof, the issuer's keys at the proof's creation, the validity period,
// the claims, the Bitstring Status List fetched from the issuer, and the badge's binding to
// its post. A credential is canonicalised with rxfed's canonical JSON, which is JCS on every
// value without a float: a credential holding a float is refused here (rxfed never issues one).

import { canonical, canonicalText } from "./canonical.mjs";
import { b64d, b64e, concat, equal, utf8 } from "./encoding.mjs";
import { nodeOrigin } from "./sharing.mjs";
import { sha256, verifySignature } from "./sodium.mjs";

export const VC_CONTEXT = "https://www.w3.org/ns/credentials/v2";
const CLOCK_SKEW = 300;
const MAX_VALIDITY = 400 * 86400;
const MAX_LIST_VALIDITY = 7 * 86400;
const MIN_BITS = 131072;
const MAX_BITS = 2 ** 23;
const MAX_CREDENTIAL = 3000;
export const ROLES = ["physician", "nurse", "nurse-practitioner", "physician-assistant", "pharmacist", "psychologist",
  "dietitian", "therapist", "social-worker", "midwife"];
const NUCC = /^[0-9]{3}[0-9A-Z]{6}X$/;
const DATETIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$/;

/** Why a badge is not shown, by code (rxfed.protocol.badges.REASONS). */
export const REASONS = Object.freeze({
  bad_badge_binding: "the badge was not signed for this post by the clinician the credential names (moved from another post, or forged)",
  malformed_badge: "the badge is not a credential with a signature",
  malformed_credential: "the credential is malformed",
  bad_proof: "the credential's signature does not verify (forged or changed)",
  wrong_issuer: "the credential is signed by another node than the one it names",
  wrong_cryptosuite: "the credential uses a signature suite rxfed does not accept",
  unknown_issuer_key: "the issuer does not publish (or had retired) the key that signed the credential",
  credential_expired: "the credential has expired",
  credential_not_yet_valid: "the credential is not valid yet",
  credential_revoked: "the issuer has revoked the credential",
  status_unavailable: "the issuer's status list could not be checked, so revocation is unknown",
  issuer_unreachable: "the issuing node could not be reached to check the credential",
  issuer_not_federated: "the issuing node is not one your home node federates with, so your client does not contact it to check the credential",
});

export class CredentialError extends Error {
  constructor(code, message = REASONS[code] || code) {
    super(message);
    this.code = code;
  }
}

const refuse = (code, message) => {
  throw new CredentialError(code, message);
};

// -- encodings ----------------------------------------------------------------------------------
const B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/** The bytes of a base58btc multibase text ("z..."); Error when it is not one. */
export function base58btcDecode(text) {
  if (typeof text !== "string" || !text.startsWith("z") || text.length < 2 || text.length > 200) throw new Error("not base58btc");
  let n = 0n;
  for (const ch of text.slice(1)) {
    const d = B58.indexOf(ch);
    if (d < 0) throw new Error("not base58btc");
    n = n * 58n + BigInt(d);
  }
  const bytes = [];
  while (n > 0n) {
    bytes.unshift(Number(n & 255n));
    n >>= 8n;
  }
  let zeros = 0;
  while (text[1 + zeros] === "1") zeros++;
  return new Uint8Array([...new Array(zeros).fill(0), ...bytes]);
}

/** base58btc multibase ("z" then base58 with the Bitcoin alphabet) of `bytes`. */
export function base58btcEncode(bytes) {
  let n = 0n;
  for (const b of bytes) n = n * 256n + BigInt(b);
  let out = "";
  while (n > 0n) {
    out = B58[Number(n % 58n)] + out;
    n /= 58n;
  }
  let zeros = 0;
  while (zeros < bytes.length && bytes[zeros] === 0) zeros++;
  return "z" + "1".repeat(zeros) + out;
}

/** The did:key of an Ed25519 public key: how a credential names its clinician. */
export const didKey = (publicKey) => "did:key:" + base58btcEncode(concat(new Uint8Array([0xed, 0x01]), publicKey));

/** The Ed25519 key of a Multikey ("z6Mk..."): 0xed 0x01 then 32 bytes. */
export function ed25519FromMultikey(text) {
  const data = base58btcDecode(text);
  if (data.length !== 34 || data[0] !== 0xed || data[1] !== 0x01) throw new Error("not an Ed25519 Multikey");
  return data.slice(2);
}

export function keyOfDid(did) {
  if (typeof did !== "string" || !did.startsWith("did:key:")) refuse("malformed_credential", "credentialSubject.id must be a did:key");
  try {
    return ed25519FromMultikey(did.slice("did:key:".length));
  } catch {
    return refuse("malformed_credential", "credentialSubject.id is not an Ed25519 did:key");
  }
}

const NODE_ID = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$/;

/** The node id a did:web issuer names (did:web:HOST%3APORT). */
export function nodeOfDid(did) {
  if (typeof did !== "string" || !did.startsWith("did:web:") || did.slice(8).includes(":")) {
    refuse("malformed_credential", "the issuer must be a did:web identifier of a node");
  }
  let node;
  try {
    node = decodeURIComponent(did.slice(8));
  } catch {
    return refuse("malformed_credential", "the issuer does not name a node");
  }
  if (!NODE_ID.test(node) || didWeb(node) !== did) refuse("malformed_credential", "the issuer does not name a node");
  return node;
}

export const didWeb = (nodeId) => "did:web:" + encodeURIComponent(nodeId).replace(/%2E/g, ".");

function parseTime(value, where) {
  if (typeof value !== "string" || !DATETIME.test(value)) refuse("malformed_credential", `${where} must be a date and time with a time zone`);
  const ms = Date.parse(value);
  if (Number.isNaN(ms)) refuse("malformed_credential", `${where} is not a valid date and time`);
  return Math.floor(ms / 1000);
}

function jcs(value) {
  try {
    return canonical(value);
  } catch {
    return refuse("malformed_credential", "the credential has no JCS form rxfed checks (a float, say)");
  }
}

const shown = (value, where, max) => {
  // printable: no control, format (bidirectional overrides) or separator characters but the space
  if (typeof value !== "string" || !value.trim() || value.length > max || /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}\p{Co}\p{Cn}]|[^\P{Zs} ]/u.test(value)) {
    refuse("malformed_credential", `${where} must be printable text of 1 to ${max} characters`);
  }
  return value;
};

// -- the proof (vc-di-eddsa 3.3, eddsa-jcs-2022) ------------------------------------------------
/** {document, method, publicKey, created} of a verified proof; CredentialError otherwise.
 * `publicKeyFor(method, created)` returns the key or throws. */
export function verifyProof(secured, publicKeyFor) {
  if (!secured || typeof secured !== "object" || Array.isArray(secured)) refuse("malformed_credential");
  const proof = secured.proof;
  if (Array.isArray(proof)) refuse("malformed_credential", "one proof per credential");
  if (!proof || typeof proof !== "object") refuse("malformed_credential", "the credential carries no proof");
  if (proof.type !== "DataIntegrityProof" || proof.cryptosuite !== "eddsa-jcs-2022") refuse("wrong_cryptosuite");
  if (proof.proofPurpose !== "assertionMethod") refuse("malformed_credential", "the proof's purpose must be assertionMethod");
  if (typeof proof.verificationMethod !== "string" || proof.verificationMethod.length > 1024) refuse("malformed_credential");
  let signature;
  try {
    signature = base58btcDecode(proof.proofValue);
  } catch {
    signature = null;
  }
  if (!signature || signature.length !== 64) refuse("malformed_credential", "proofValue is not an Ed25519 signature");
  const created = "created" in proof ? parseTime(proof.created, "proof.created") : null;
  const document = Object.fromEntries(Object.entries(secured).filter(([k]) => k !== "proof"));
  const options = Object.fromEntries(Object.entries(proof).filter(([k]) => k !== "proofValue"));
  if ("@context" in options) {
    const theirs = [options["@context"]].flat();
    const ours = [document["@context"]].flat();
    if (canonicalText(ours.slice(0, theirs.length)) !== canonicalText(theirs)) refuse("bad_proof");
    document["@context"] = options["@context"];
  }
  const config = { ...options };
  if ("@context" in document) config["@context"] = document["@context"];
  const hash = concat(sha256(jcs(config)), sha256(jcs(document)));
  const publicKey = publicKeyFor(proof.verificationMethod, created);
  try {
    verifySignature(publicKey, hash, signature);
  } catch {
    refuse("bad_proof");
  }
  return { document, method: proof.verificationMethod, publicKey, created };
}

/** The keys a verifier trusts for one issuer (a node's keys from its own /.well-known/rxfed). */
export function issuerKeys(issuer, keys) {
  return {
    issuer,
    publicKeyFor(method, created) {
      if (created === null) refuse("malformed_credential", "the proof must state when it was created");
      const hashAt = method.indexOf("#");
      const controller = hashAt < 0 ? method : method.slice(0, hashAt);
      if (controller !== issuer) refuse("wrong_issuer");
      let key;
      try {
        key = ed25519FromMultikey(method.slice(hashAt + 1));
      } catch {
        refuse("malformed_credential", "the verification method does not end in an Ed25519 Multikey");
      }
      const found = keys.find((k) => equal(k.key, key));
      if (!found) refuse("unknown_issuer_key");
      if (!(found.validFrom - CLOCK_SKEW <= created && (found.validUntil === null || created <= found.validUntil))) refuse("unknown_issuer_key");
      return key;
    },
  };
}

// -- the status list ------------------------------------------------------------------------------
function statusEntry(obj) {
  if (!obj || typeof obj !== "object" || obj.type !== "BitstringStatusListEntry") refuse("malformed_credential");
  if ("statusSize" in obj && obj.statusSize !== 1) refuse("malformed_credential");
  const { statusPurpose: purpose, statusListIndex: index, statusListCredential: url } = obj;
  if (purpose !== "revocation" || typeof index !== "string" || !/^(0|[1-9][0-9]{0,15})$/.test(index)) refuse("malformed_credential");
  if (typeof url !== "string" || !/^https?:\/\//.test(url) || url.length > 2048) refuse("malformed_credential");
  return { url, index: Number(index), purpose };
}

// On the issuing node only (https, or http on loopback), so a credential cannot send the page elsewhere.
const servedBy = (url, node) => url.startsWith(`${nodeOrigin(node)}/`);

async function gunzip(data) {
  const stream = new Blob([data]).stream().pipeThrough(new DecompressionStream("gzip"));
  const reader = stream.getReader();
  const parts = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.length;
    if (size > MAX_BITS / 8) {
      await reader.cancel();
      refuse("status_unavailable", `the status list has more than ${MAX_BITS} bits`);
    }
    parts.push(value);
  }
  return concat(...parts);
}

/** The bits of a status list credential, checked as status_list.verify_status_list does. */
export async function verifyStatusList(document, keys, entry, now) {
  let verified;
  try {
    verified = verifyProof(document, keys.publicKeyFor);
  } catch (e) {
    if (e.code === "malformed_credential") refuse("status_unavailable", `the status list is malformed: ${e.message}`);
    throw e;
  }
  const doc = verified.document;
  if (!Array.isArray(doc.type) || !doc.type.includes("BitstringStatusListCredential")) refuse("status_unavailable");
  if (doc.issuer !== keys.issuer) refuse("wrong_issuer", "the status list is another issuer's");
  if (doc.id !== entry.url) refuse("status_unavailable", "the status list is not the one the credential names");
  let from, until;
  try {
    from = parseTime(doc.validFrom, "validFrom");
    until = parseTime(doc.validUntil, "validUntil");
  } catch {
    refuse("status_unavailable", "the status list names no validity period");
  }
  if (verified.created !== from || !(0 < until - from && until - from <= MAX_LIST_VALIDITY)) refuse("status_unavailable");
  if (now < from || now > until) refuse("status_unavailable", "the status list is not valid now: fetch a fresh one");
  const subject = doc.credentialSubject;
  if (!subject || subject.type !== "BitstringStatusList") refuse("status_unavailable");
  if (![subject.statusPurpose].flat().includes(entry.purpose)) refuse("status_unavailable");
  let compressed;
  try {
    if (typeof subject.encodedList !== "string" || !subject.encodedList.startsWith("u")) throw new Error();
    compressed = b64d(subject.encodedList.slice(1));
  } catch {
    refuse("status_unavailable", "the status list's encodedList is not base64url multibase");
  }
  let bits;
  try {
    bits = await gunzip(compressed);
  } catch (e) {
    if (e instanceof CredentialError) throw e;
    refuse("status_unavailable", "the status list's encodedList is not GZIP data");
  }
  if (bits.length * 8 < MIN_BITS) refuse("status_unavailable", "the status list is shorter than the minimum");
  if (entry.index >= bits.length * 8) refuse("status_unavailable", "the index is outside the status list");
  return bits;
}

// -- the credential ---------------------------------------------------------------------------------
/** A verified clinician credential ({issuer, node, issuerName, clinicianKey, role, specialty,
 * specialtyName, badge}), or CredentialError with the reason (credentials.verify, in its
 * order). `issuers` maps did:web to issuerKeys(); `statusLists` maps URLs to documents;
 * `{need: "keys"|"list", ...}` is thrown (not a refusal) when one is missing. */
export async function verifyCredential(document, { issuers, statusLists, now }) {
  if (!document || typeof document !== "object" || Array.isArray(document)) refuse("malformed_credential");
  const context = document["@context"];
  if (!Array.isArray(context) || context[0] !== VC_CONTEXT) refuse("malformed_credential");
  if (!Array.isArray(document.type) || !document.type.includes("VerifiableCredential") || !document.type.includes("ClinicianCredential")) {
    refuse("malformed_credential");
  }
  if (typeof document.id !== "string") refuse("malformed_credential");
  for (const f of ["validFrom", "validUntil"]) parseTime(document[f], f);
  if (!document.credentialSubject || typeof document.credentialSubject !== "object" || Array.isArray(document.credentialSubject)) {
    refuse("malformed_credential");
  }
  let issuer = document.issuer;
  let issuerName = null;
  if (issuer && typeof issuer === "object") {
    if (issuer.name != null) issuerName = shown(issuer.name, "issuer.name", 200);
    issuer = issuer.id;
  }
  if (typeof issuer !== "string") refuse("malformed_credential");
  const node = nodeOfDid(issuer);
  const keys = issuers[issuer];
  if (!keys) throw Object.assign(new Error("issuer keys needed"), { need: "keys", issuer, node });
  const verified = verifyProof(document, keys.publicKeyFor);
  const doc = verified.document;
  const from = parseTime(doc.validFrom, "validFrom");
  const until = parseTime(doc.validUntil, "validUntil");
  if (verified.created !== from) refuse("malformed_credential", "the proof must be created at validFrom");
  if (!(0 < until - from && until - from <= MAX_VALIDITY)) refuse("malformed_credential");
  if (now < from) refuse("credential_not_yet_valid");
  if (now > until) refuse("credential_expired");
  const subject = doc.credentialSubject;
  const clinicianKey = keyOfDid(subject.id);
  const role = subject.role ?? null;
  if (role !== null && !ROLES.includes(role)) refuse("malformed_credential");
  let specialty = null;
  let specialtyName = null;
  if ("specialty" in subject) {
    const s = subject.specialty;
    if (!s || typeof s !== "object" || typeof s.code !== "string" || !NUCC.test(s.code)) refuse("malformed_credential");
    specialty = s.code;
    specialtyName = shown(s.name, "specialty.name", 100);
  }
  if (!("credentialStatus" in doc)) refuse("malformed_credential");
  const entry = statusEntry(doc.credentialStatus);
  if (!servedBy(entry.url, node)) refuse("status_unavailable", "the status list is not on the issuing node");
  if (!(entry.url in statusLists)) throw Object.assign(new Error("status list needed"), { need: "list", url: entry.url, node });
  const bits = await verifyStatusList(statusLists[entry.url], keys, entry, now);
  if (bits[Math.floor(entry.index / 8)] & (0x80 >> (entry.index % 8))) refuse("credential_revoked");
  const parts = [role ? `verified ${role}` : "verified clinician"];
  if (specialtyName) parts.push(specialtyName);
  parts.push(issuerName ? `${issuerName} (${node})` : node);
  return { issuer, node, issuerName, clinicianKey, role, specialty, specialtyName, badge: parts.join(", ") };
}

// -- the badge ----------------------------------------------------------------------------------------
/** The bytes a clinician signs to bind `credential` to one post (badges._binding). */
export function badgeBinding(community, sender, text, sent, credential) {
  return concat(utf8("rxfed-badge|"), canonical({ community, sender: b64e(sender), sent, text: b64e(sha256(utf8(text))),
    credential: credential.id ?? null, credential_hash: b64e(sha256(jcs(credential))) }));
}

/** The `badge` of a post: `credential` bound to it by `clinician`, the key it vouches for
 * (badges.make_badge); CredentialError("wrong_clinician_key") for a credential of another key. */
export function makeBadge(clinician, credential, { community, sender, text, sent }) {
  if (!credential || typeof credential !== "object" || !credential.credentialSubject) refuse("malformed_badge");
  if (!equal(keyOfDid(credential.credentialSubject.id), clinician.public)) {
    refuse("wrong_clinician_key", "this credential vouches for another clinician key than this profile's");
  }
  if (jcs(credential).length > MAX_CREDENTIAL) refuse("malformed_badge");
  return { credential, signature: b64e(clinician.sign(badgeBinding(community, sender, text, sent, credential))) };
}

/** One credential from a credentials file `rxfed node clinicians issue` wrote (its
 * `credentials` by profile), or from a file of one credential; CredentialError otherwise. */
export function credentialFromFile(doc, profile = "badge") {
  if (doc && typeof doc === "object" && doc.credentials && typeof doc.credentials === "object") {
    if (!(profile in doc.credentials)) refuse("bad_badge_file", `the file holds no ${profile} credential`);
    return doc.credentials[profile];
  }
  if (!doc || typeof doc !== "object" || !doc.credentialSubject) refuse("bad_badge_file", "the file holds no clinician credential");
  return doc;
}

/** The credential of a badge whose binding verifies ({credential, clinicianKey}); CredentialError otherwise. */
export function openBadge(badge, { community, sender, text, sent }) {
  if (!badge || typeof badge !== "object" || Object.keys(badge).sort().join() !== "credential,signature"
      || !badge.credential || typeof badge.credential !== "object" || Array.isArray(badge.credential) || typeof badge.signature !== "string") {
    refuse("malformed_badge");
  }
  if (jcs(badge.credential).length > MAX_CREDENTIAL) refuse("malformed_credential");
  const subject = badge.credential.credentialSubject;
  const key = keyOfDid(subject && typeof subject === "object" ? subject.id : null);
  let signature;
  try {
    signature = b64d(badge.signature, 64);
  } catch {
    refuse("bad_badge_binding");
  }
  try {
    verifySignature(key, badgeBinding(community, sender, text, sent, badge.credential), signature);
  } catch {
    refuse("bad_badge_binding");
  }
  return { credential: badge.credential, clinicianKey: key };
}

/** The verdict a reader is shown for a post's badge: {verified, badge, reason, explanation,
 * clinician, issuer}. `fetchKeys(node)` returns the issuer's keys ([{key, validFrom,
 * validUntil}]) from the node itself, `fetchList(url)` the status list document; either
 * returns null when it cannot. Both are asked at most once per issuer or list (`cache`). */
export async function badgeVerdict(badge, post, { now, fetchKeys, fetchList, cache = { issuers: {}, lists: {}, failed: new Set() } }) {
  const no = (reason, extra = {}) => ({ verified: false, badge: null, reason, explanation: REASONS[reason] || reason, clinician: null, issuer: null, ...extra });
  let bound;
  try {
    bound = openBadge(badge, post);
  } catch (e) {
    return no(e.code || "malformed_badge");
  }
  const clinician = didKey(bound.clinicianKey);
  for (let i = 0; i < 3; i++) {
    try {
      const got = await verifyCredential(bound.credential, { issuers: cache.issuers, statusLists: cache.lists, now });
      if (!equal(got.clinicianKey, bound.clinicianKey)) return no("bad_badge_binding", { clinician });
      return { verified: true, badge: got.badge, reason: null, explanation: null, clinician, issuer: got.issuer };
    } catch (e) {
      if (e.need === "keys") {
        const keys = cache.failed.has(e.issuer) ? null : await fetchKeys(e.node);
        if (!keys) {
          cache.failed.add(e.issuer);
          return no("issuer_unreachable", { clinician, issuer: e.issuer });
        }
        cache.issuers[e.issuer] = issuerKeys(e.issuer, keys);
      } else if (e.need === "list") {
        const list = cache.failed.has(e.url) ? null : await fetchList(e.url, e.node);
        if (!list) {
          cache.failed.add(e.url);
          return no("status_unavailable", { clinician });
        }
        cache.lists[e.url] = list;
      } else if (e instanceof CredentialError) {
        return no(e.code, { clinician });
      } else {
        return no("malformed_credential", { clinician });
      }
    }
  }
  return no("status_unavailable", { clinician });
}
