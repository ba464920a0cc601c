// The page's fold of a community history (js/community.mjs step, readHistory) against
// Python's: spec/vectors/community-fold.json, written by spec/vectors/generate.py from
// rxfed/protocol/community/ (every event type, the state after each, what each member
// reads, and the histories a host must never stamp, with Python's error codes).

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import * as cm from "../../rxfed/web/js/community.mjs";
import { b64d, b64e } from "../../rxfed/web/js/encoding.mjs";
import * as so from "../../rxfed/web/js/sodium.mjs";

await so.ready();
const v = JSON.parse(readFileSync(new URL("../../spec/vectors/community-fold.json", import.meta.url), "utf8"));
const pairs = (events) => events.map((e, i) => [i + 1, e]);
const members = (state) => [...state.members.entries()].map(([k, m]) => [k, m.status, m.node]);

test("the fold vector holds every event type", () => {
  const types = new Set(v.events.map((e) => e.body.type));
  for (const t of [cm.CREATE, cm.JOIN, cm.APPROVE, cm.LEAVE, cm.REMOVE, cm.REKEY, cm.SENDER_KEY, cm.MESSAGE]) assert.ok(types.has(t), t);
  const reasons = new Set(Object.values(v.readers).flatMap((r) => r.unreadable.map(([, why]) => why)));
  assert.ok(reasons.has("undecryptable") && reasons.has("bad_franking"));
});

test("each event folds to the state Python folds it to", () => {
  let state = cm.emptyState(cm.parseAddress(v.address));
  assert.equal(v.states.length, v.events.length);
  for (const [i, expected] of v.states.entries()) {
    [state] = cm.step(state, v.events[i], i + 1);
    assert.deepEqual({ seq: state.seq, version: state.version, type: v.events[i].body.type, members: members(state) }, expected, `event ${i + 1}`);
  }
});

test("every member reads what Python reads: messages, unreadable ones, senders", () => {
  for (const [name, expected] of Object.entries(v.readers)) {
    const m = v.members[name];
    const me = new so.SigningKeyPair(b64d(m.seed, 32));
    assert.equal(b64e(me.public), m.public_key);
    const r = cm.readHistory(pairs(v.events), me, new so.BoxKeyPair(b64d(m.box_secret, 32)));
    assert.deepEqual({
      seq: r.state.seq, version: r.state.version, admin: b64e(r.state.meta.admin), members: members(r.state),
      senders: Object.fromEntries([...r.state.senders.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1))),
      messages: r.messages.map((x) => [x.seq, b64e(x.sender), x.text, x.sent]),
      unreadable: r.unreadable.map((u) => [u.seq, u.reason]),
    }, expected, name);
  }
});

test("a history Python refuses is refused with the same code", () => {
  assert.ok(v.refused.length >= 8);
  for (const c of v.refused) {
    assert.throws(() => cm.readHistory(pairs([...v.events.slice(0, c.kept), ...c.extra])), (e) => e.code === c.error, c.case);
  }
});
