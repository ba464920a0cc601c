// spec/vectors/consent.json in the web client's JavaScript: pseudonym keys, sealing to a
// node, tokens, grants, deliveries, acknowledgements and the audit chain, as Python makes them.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { canonical, canonicalText, loads } from "../../rxfed/web/js/canonical.mjs";
import * as c from "../../rxfed/web/js/consent.mjs";
import { b64d, b64e, fromUtf8, utf8 } from "../../rxfed/web/js/encoding.mjs";
import * as p from "../../rxfed/web/js/protocol.mjs";
import * as so from "../../rxfed/web/js/sodium.mjs";

await so.ready();
const v = JSON.parse(readFileSync(new URL("../../spec/vectors/consent.json", import.meta.url), "utf8"));

test("pairwise pseudonym key", () => {
  const secret = b64d(v.pseudonym_secret, 32);
  assert.equal(c.pseudonymLabel("c.example", "research", "outcomes"), v.pseudonym.label);
  const key = c.pseudonymKey(secret, v.pseudonym.label);
  assert.equal(b64e(key.seed), v.pseudonym.seed);
  assert.equal(b64e(key.public), v.pseudonym.public_key);
  assert.equal(c.subjectOf(key.public), v.pseudonym.subject);
  // another label, another key
  assert.notEqual(b64e(c.pseudonymKey(secret, c.pseudonymLabel("c.example", "research", "")).public), v.pseudonym.public_key);
});

test("token and grant statements", () => {
  const key = c.pseudonymKey(b64d(v.pseudonym_secret, 32), v.pseudonym.label);
  const t = v.token.body;
  const recipient = c.parseRecipient(t.recipient);
  assert.deepEqual(recipient, { kind: "plugin", node: "c.example", plugin: "outcomes", text: t.recipient });
  const token = c.makeToken(key, { node: t.node, home: t.home, kind: t.kind, purpose: t.purpose, recipient, nodes: t.nodes,
    issued: t.issued + 3600, notAfter: t.not_after, id: t.id });
  assert.deepEqual(token, v.token);
  assert.equal(c.parseToken(v.token).id, t.id);
  assert.throws(() => c.parseToken(v.widened_token.statement), (e) => e.code === v.widened_token.error);

  const g = v.grant.statement.body;
  const device = new so.SigningKeyPair(b64d(v.grant.device_seed, 32));
  assert.equal(b64e(device.public), v.grant.device_public_key);
  const grant = c.makeGrant(device, { patient: g.patient, device: g.device, kind: g.kind, purpose: g.purpose,
    recipient: c.parseRecipient(g.recipient), issued: g.issued, notAfter: g.not_after, nodes: g.nodes, tokens: g.tokens, id: g.id });
  assert.deepEqual(grant, v.grant.statement);
  assert.throws(() => c.parseRecipient("plugin:c.example/Outcomes"), (e) => e.code === "bad_recipient");
  assert.throws(() => c.checkPurpose("Research"), (e) => e.code === "bad_purpose");
  assert.equal(c.endOfDay(g.issued), g.not_after - 86400);
});

test("delivery and its sequence number", () => {
  const key = c.pseudonymKey(b64d(v.pseudonym_secret, 32), v.pseudonym.label);
  const d = v.delivery.statement.body;
  assert.equal(c.nextSeq(v.delivery.last_seq, b64d(v.delivery.random, 4)), v.delivery.seq);
  assert.throws(() => c.nextSeq(c.MAX_SEQ - 10, new Uint8Array([0, 0, 1, 0])), (e) => e.code === "seq_exhausted");
  const signed = c.signDelivery(key, { token: d.token, node: d.node, delivery: d.delivery, seq: d.seq, signals: d.signals });
  assert.deepEqual(signed, v.delivery.statement);
  assert.equal(canonicalText(signed), v.delivery.canonical);
});

test("sealed box to a node's identity key", async () => {
  const node = new so.SigningKeyPair(b64d(v.sealed_box.node_seed, 32));
  assert.equal(b64e(node.public), v.sealed_box.node_public_key);
  assert.equal(b64e(so.toCurve25519(node.public)), v.sealed_box.node_x25519_public_key);
  // the node opens with the X25519 secret its Ed25519 seed converts to (libsodium)
  const lib = await so.ready();
  const pair = lib.crypto_sign_seed_keypair(node.seed);
  const secret = lib.crypto_sign_ed25519_sk_to_curve25519(pair.privateKey);
  const box = new so.BoxKeyPair(secret);
  assert.equal(fromUtf8(box.openSealed(b64d(v.sealed_box.sealed))), v.sealed_box.plaintext);
  const mine = c.sealToNode(node.public, utf8(v.sealed_box.plaintext));
  assert.equal(mine.length, utf8(v.sealed_box.plaintext).length + 48);
  assert.equal(fromUtf8(box.openSealed(mine)), v.sealed_box.plaintext);
});

test("acknowledgement of a revocation", () => {
  const node = new so.SigningKeyPair(b64d(v.ack.node_seed, 32));
  const key = c.pseudonymKey(b64d(v.pseudonym_secret, 32), v.pseudonym.label);
  const revocation = c.revokeToken(key, v.ack.revocation.body.token, v.ack.revocation.body.revoked);
  assert.deepEqual(revocation, v.ack.revocation);
  assert.equal(b64e(p.statementHash(revocation)), v.ack.revocation_sha256);
  assert.equal(c.checkTokenRevocation(revocation, v.ack.revocation.body.token, key.public), v.ack.revocation.body.revoked);
  assert.throws(() => c.checkTokenRevocation(revocation, "1".repeat(32), key.public), (e) => e.code === "bad_revocation");
  const args = { token: v.ack.statement.body.token, node: "c.example", revocation, nodeKeys: [key.public, node.public] };
  assert.deepEqual(c.checkAck(v.ack.statement, args).unconfirmed, ["outcomes"]);
  // under another key, for another node, or for another revocation: refused
  assert.throws(() => c.checkAck(v.ack.statement, { ...args, nodeKeys: [key.public] }), (e) => e.code === "bad_ack");
  assert.throws(() => c.checkAck(v.ack.statement, { ...args, node: "d.example" }), (e) => e.code === "bad_ack");
  const other = c.revokeToken(key, v.ack.revocation.body.token, v.ack.revocation.body.revoked + 86400);
  assert.throws(() => c.checkAck(v.ack.statement, { ...args, revocation: other }), (e) => e.code === "bad_ack");
});

test("audit chain and its signed head", () => {
  const entries = v.audit.entries;
  entries.forEach((e, i) => assert.equal(canonicalText(e), v.audit.canonical[i]));
  let previous = c.GENESIS;
  entries.forEach((e, i) => {
    previous = c.auditLink(previous, canonical(e));
    assert.equal(b64e(previous), v.audit.hashes[i]);
  });
  const node = new so.SigningKeyPair(b64d(v.ack.node_seed, 32));
  const patient = "3".repeat(32);
  const head = p.signStatement(node, { type: c.HEAD, patient, seq: 2, hash: v.audit.hashes[1], signed: 1764000100 });
  const ok = c.verifyAudit(patient, entries, head, [node.public], [{ seq: 1, hash: v.audit.hashes[0] }]);
  assert.deepEqual(ok, { seq: 2, hash: v.audit.hashes[1] });
  const changed = structuredClone(entries);
  changed[0].time += 1;
  assert.throws(() => c.verifyAudit(patient, changed, head, [node.public]), /hash to its signed head/);
  assert.throws(() => c.verifyAudit(patient, entries, head, [node.public], [{ seq: 1, hash: v.audit.hashes[1] }]), /rewritten/);
  assert.throws(() => c.verifyAudit(patient, entries, head, [node.public], [{ seq: 3, hash: v.audit.hashes[1] }]), /truncated/);
  const other = new so.SigningKeyPair(new Uint8Array(32).fill(9));
  assert.throws(() => c.verifyAudit(patient, entries, head, [other.public]), /not signed by the home node/);
  assert.equal(loads(canonical(head)).body.seq, 2);
});
