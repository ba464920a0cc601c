// spec/vectors/moderation.json in the web client's JavaScript: the fold of moderator
// actions and reports, a report opened and checked for each moderator, a forged one refused,
// and the action statements made byte for byte as Python makes them.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import * as cm from "../../rxfed/web/js/community.mjs";
import { b64d, b64e, fromUtf8, utf8 } from "../../rxfed/web/js/encoding.mjs";
import * as so from "../../rxfed/web/js/sodium.mjs";

await so.ready();
const v = JSON.parse(readFileSync(new URL("../../spec/vectors/moderation.json", import.meta.url), "utf8"));
const base = JSON.parse(readFileSync(new URL("../../spec/vectors/community.json", import.meta.url), "utf8"));
const keys = {
  [base.admin.public_key]: [new so.SigningKeyPair(b64d(base.admin.seed, 32)), new so.BoxKeyPair(b64d(base.admin.box_secret, 32))],
  [base.member.public_key]: [new so.SigningKeyPair(b64d(base.member.seed, 32)), new so.BoxKeyPair(b64d(base.member.box_secret, 32))],
};
const events = v.events.map((e) => [e.seq, e.event]);

test("every moderator reads the reports and the hide as Python does", () => {
  for (const [key, [member, box]] of Object.entries(keys)) {
    const r = cm.readHistory(events, member, box);
    assert.deepEqual(cm.moderatorKeys(r.state).map((m) => b64e(m.member)), v.expected.moderators);
    assert.deepEqual([...r.hidden.keys()], v.expected.hidden);
    assert.deepEqual(r.reports.map((x) => [x.report, x.seq, x.category, x.text, x.status]), v.expected.reports);
    const report = v.events[v.report.seq - 1].event.body;
    const inner = so.openSigned(b64d(v.reporter.public_key, 32), box, utf8(v.report.contexts[key]), b64d(report.reports[key]));
    assert.equal(fromUtf8(so.unpadAny(inner)), v.report.payload);
  }
});

test("actions are made as Python makes them, and the fold refuses a replay", () => {
  const member = keys[base.member.public_key][0];
  const address = cm.parseAddress(base.address.address);
  const hide = v.events.find((e) => e.event.body.type === cm.ACTION && e.event.body.action === "hide").event;
  assert.deepEqual(cm.makeAction(member, address, "hide", member.public, { seq: hide.body.seq, reason: hide.body.reason, now: hide.body.time }), hide);
  assert.throws(() => cm.readHistory([...events, [events.length + 1, hide]]), (e) => e.code === "duplicate_action");
});

test("a forward is made as Python makes it, from the report the queue opened, and sealed to a node's key", async () => {
  const [admin, adminBox] = keys[base.admin.public_key];
  const r = cm.readHistory(events, admin, adminBox);
  const report = r.reports.find((x) => x.status === "verified");
  const franking = cm.frankingReport({ text: report.text, frankingKey: report.frankingKey }, v.events[report.seq - 1].event,
    base.events[report.seq - 1].stamp);
  assert.deepEqual(cm.makeForward(admin, franking, "miracle_cure", v.forward.body.time), v.forward);
  assert.throws(() => cm.makeForward(admin, franking, "gossip", v.forward.body.time), (e) => e.code === "bad_category");
  // sealed to the Ed25519 key of a node: only that node's key opens it (rxfed.crypto.open_as_node)
  const { default: sodium } = await import("../../rxfed/web/vendor/libsodium-wrappers.mjs");
  const node = new so.SigningKeyPair(new Uint8Array(32).fill(7));
  const sealed = so.sealToNode(node.public, utf8("the forward"));
  const secret = sodium.crypto_sign_ed25519_sk_to_curve25519(concatKey(node));
  assert.equal(fromUtf8(sodium.crypto_box_seal_open(sealed, so.toCurve25519(node.public), secret)), "the forward");
  const other = new so.SigningKeyPair(new Uint8Array(32).fill(8));
  assert.throws(() => sodium.crypto_box_seal_open(sealed, so.toCurve25519(other.public),
    sodium.crypto_sign_ed25519_sk_to_curve25519(concatKey(other))));
});

/** libsodium's 64-byte Ed25519 secret key: the seed, then the public key. */
const concatKey = (k) => {
  const out = new Uint8Array(64);
  out.set(k.seed);
  out.set(k.public, 32);
  return out;
};
