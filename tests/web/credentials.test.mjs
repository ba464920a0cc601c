// spec/vectors/credential.json and badge.json in the web client's JavaScript: the
// eddsa-jcs-2022 credentials, their status list before and after a revocation, and a badge
// bound to a post, with every refusal the Python verifier makes for the same changes.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import * as vc from "../../rxfed/web/js/credentials.mjs";
import { b64d, b64e, fromHex } from "../../rxfed/web/js/encoding.mjs";
import * as so from "../../rxfed/web/js/sodium.mjs";

await so.ready();
const load = (name) => JSON.parse(readFileSync(new URL(`../../spec/vectors/${name}`, import.meta.url), "utf8"));
const cv = load("credential.json");
const bv = load("badge.json");
const issuerKey = new so.SigningKeyPair(fromHex(cv.issuer.seed));
const keys = [{ key: issuerKey.public, validFrom: 0, validUntil: null }];
const issuers = () => ({ [cv.issuer.did]: vc.issuerKeys(cv.issuer.did, keys) });
const url = cv.credentials.badge.credentialStatus.statusListCredential;
const copy = (x) => JSON.parse(JSON.stringify(x));

test("the credentials verify, and are refused revoked, changed or from another key", async () => {
  for (const [profile, document] of Object.entries(cv.credentials)) {
    const got = await vc.verifyCredential(document, { issuers: issuers(), statusLists: { [url]: cv.status_lists.unrevoked }, now: cv.verify_at });
    assert.deepEqual([...got.clinicianKey], [...b64d(cv.clinician_public_key, 32)], profile);
    await assert.rejects(vc.verifyCredential(document, { issuers: issuers(), statusLists: { [url]: cv.status_lists.revoked }, now: cv.verify_at }),
      (e) => e.code === "credential_revoked");
    const tampered = copy(document);
    tampered.credentialSubject.role = "nurse";
    await assert.rejects(vc.verifyCredential(tampered, { issuers: issuers(), statusLists: { [url]: cv.status_lists.unrevoked }, now: cv.verify_at }),
      (e) => e.code === "bad_proof");
    const other = { [cv.issuer.did]: vc.issuerKeys(cv.issuer.did, [{ key: new so.SigningKeyPair(new Uint8Array(32).fill(9)).public, validFrom: 0, validUntil: null }]) };
    await assert.rejects(vc.verifyCredential(document, { issuers: other, statusLists: { [url]: cv.status_lists.unrevoked }, now: cv.verify_at }),
      (e) => e.code === "unknown_issuer_key");
    await assert.rejects(vc.verifyCredential(document, { issuers: issuers(), statusLists: { [url]: cv.status_lists.unrevoked }, now: cv.verify_at + 40 * 86400 }),
      (e) => e.code === "credential_expired");
    const renamed = copy(document);
    renamed.issuer.id = "did:web:hospital-b.example";
    await assert.rejects(vc.verifyCredential(renamed, { issuers: { "did:web:hospital-b.example": vc.issuerKeys("did:web:hospital-b.example", keys) },
      statusLists: {}, now: cv.verify_at }), (e) => e.code === "wrong_issuer");
  }
  const { badge } = await vc.verifyCredential(cv.credentials.badge, { issuers: issuers(), statusLists: { [url]: cv.status_lists.unrevoked }, now: cv.verify_at });
  assert.equal(badge, bv.shown);
});

test("a stale, foreign or broken status list leaves the status unknown", async () => {
  const stale = vc.verifyCredential(cv.credentials.badge, { issuers: issuers(), statusLists: { [url]: cv.status_lists.unrevoked }, now: cv.verify_at + 2 * 86400 });
  await assert.rejects(stale, (e) => e.code === "status_unavailable");
  const broken = copy(cv.status_lists.unrevoked);
  broken.credentialSubject.encodedList = "uAAAA";
  await assert.rejects(vc.verifyCredential(cv.credentials.badge, { issuers: issuers(), statusLists: { [url]: broken }, now: cv.verify_at }),
    (e) => e.code === "bad_proof" || e.code === "status_unavailable");
});

const post = { community: bv.community, sender: b64d(bv.sender_public_key, 32), text: bv.text, sent: bv.sent };

test("the badge binding is the bytes Python signs", () => {
  assert.equal(new TextDecoder().decode(vc.badgeBinding(post.community, post.sender, post.text, post.sent, bv.credential)), bv.signed_bytes);
  const clinician = new so.SigningKeyPair(b64d(bv.clinician_seed, 32));
  const opened = vc.openBadge(bv.badge, post);
  assert.deepEqual([...opened.clinicianKey], [...clinician.public]);
  assert.throws(() => vc.openBadge({ ...bv.badge, extra: 1 }, post), (e) => e.code === "malformed_badge");
});

test("the verdicts are the Python verifier's", async () => {
  const env = (lists = bv.status_list) => ({
    now: bv.verify_at,
    fetchKeys: async (node) => (node === cv.issuer.node_id ? keys : null),
    fetchList: async (u) => (u === url ? lists : null),
  });
  const ok = await vc.badgeVerdict(bv.badge, post, env());
  assert.equal(ok.verified, true);
  assert.equal(ok.badge, bv.shown);
  const clinician = new so.SigningKeyPair(b64d(bv.clinician_seed, 32));
  for (const c of bv.refused) {
    let badge = copy(bv.badge);
    const where = { ...post };
    if (c.sender_public_key) where.sender = b64d(c.sender_public_key, 32);
    if (c.text) where.text = c.text;
    if (c.sent) where.sent = c.sent;
    if (c.specialty_name) {
      badge.credential.credentialSubject.specialty.name = c.specialty_name;
      // a fresh binding by the clinician: only the issuer's proof is broken
      badge.signature = b64e(clinician.sign(vc.badgeBinding(post.community, post.sender, post.text, post.sent, badge.credential)));
    }
    const verdict = await vc.badgeVerdict(badge, where, env(c.status_list === "revoked" ? bv.revoked_status_list : bv.status_list));
    assert.equal(verdict.reason, c.reason, c.change);
    assert.equal(verdict.verified, false);
  }
  const unreachable = await vc.badgeVerdict(bv.badge, post, { ...env(), fetchKeys: async () => null });
  assert.equal(unreachable.reason, "issuer_unreachable");
});
