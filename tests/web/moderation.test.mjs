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
