// spec/vectors/community.json in the web client's JavaScript: the address, the commitment to
// name and condition, member events, sender keys, a sealed and franked message, host stamps,
// the history chain and a read proof, as Python makes them.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import * as cm from "../../rxfed/web/js/community.mjs";
import { b64d, b64e, concat, fromUtf8, utf8 } from "../../rxfed/web/js/encoding.mjs";
import * as p from "../../rxfed/web/js/protocol.mjs";
import * as so from "../../rxfed/web/js/sodium.mjs";

await so.ready();
const v = JSON.parse(readFileSync(new URL("../../spec/vectors/community.json", import.meta.url), "utf8"));
const admin = new so.SigningKeyPair(b64d(v.admin.seed, 32));
const adminBox = new so.BoxKeyPair(b64d(v.admin.box_secret, 32));
const member = new so.SigningKeyPair(b64d(v.member.seed, 32));
const memberBox = new so.BoxKeyPair(b64d(v.member.box_secret, 32));
const host = new so.SigningKeyPair(b64d(v.host.seed, 32));
const address = cm.parseAddress(v.address.address);
const [create, join, approve, distribution, message] = v.events.map((e) => e.event);

test("address, commitment and member events", () => {
  assert.equal(b64e(admin.public), v.admin.public_key);
  assert.equal(b64e(host.public), v.host.public_key);
  assert.equal(fromUtf8(cm.aboutCommitted(v.about)), v.about.committed);
  assert.equal(b64e(cm.commitment(b64d(v.about.key, 32), cm.aboutCommitted(v.about))), v.about.commitment);
  assert.equal(cm.checkAbout(v.about, create.body), v.about);
  assert.throws(() => cm.checkAbout({ ...v.about, name: "Something else" }, create.body), (e) => e.code === "bad_about");
  assert.equal(cm.communityId("c.example", create.body), v.address.id);
  assert.equal(address.id, v.address.id);
  assert.throws(() => cm.parseAddress("46db17ea@c.example"), (e) => e.code === "bad_address");
  assert.deepEqual(cm.makeCreate(admin, adminBox.public, "c.example", { about: v.about, approval: true, node: "c.example",
    now: create.body.created }), create);
  assert.deepEqual(cm.makeJoin(member, memberBox.public, address, "a.example", join.body.time), join);
  assert.deepEqual(cm.makeApprove(admin, address, member.public, approve.body.time), approve);
  assert.deepEqual(cm.makeReadProof(member, address, "a.example", v.read_proof.body.time), v.read_proof);
});

test("sender keys, sealed and signed for one member and epoch", () => {
  const key = { epoch: v.sender_key.epoch, key: b64d(v.sender_key.key, 32) };
  assert.equal(b64e(cm.senderKeyBytes(key)), v.sender_key.bytes);
  for (const r of v.sender_key.recipients) {
    const box = new so.BoxKeyPair(b64d(r.box_secret, 32));
    const recipient = b64d(r.member, 32);
    assert.equal(fromUtf8(cm.senderKeyContext(address, recipient, 1)), r.context);
    assert.equal(distribution.body.keys[r.member], r.sealed);
    assert.deepEqual(cm.openSenderKey(member.public, box, address, recipient, 1, b64d(r.sealed)), key);
    assert.equal(b64e(box.openSealed(b64d(r.sealed))), r.inner);
    // for another member, epoch or sender it does not open
    assert.throws(() => cm.openSenderKey(member.public, box, address, b64d(v.host.public_key, 32), 1, b64d(r.sealed)));
    assert.throws(() => cm.openSenderKey(member.public, box, address, recipient, 2, b64d(r.sealed)));
    assert.throws(() => cm.openSenderKey(admin.public, box, address, recipient, 1, b64d(r.sealed)));
    const mine = cm.sealSenderKey(member, box.public, address, recipient, key);
    assert.equal(mine.length, 148);
    assert.deepEqual(cm.openSenderKey(member.public, box, address, recipient, 1, mine), key);
  }
});

test("a sealed and franked message", () => {
  const key = { epoch: 1, key: b64d(v.sender_key.key, 32) };
  const m = v.message;
  assert.equal(fromUtf8(cm.messageAd(address, member.public, 1)), m.ad);
  assert.equal(fromUtf8(cm.franked(address, member.public, m.text, m.sent)), m.franked);
  const nonce = b64d(m.nonce, 24);
  const made = cm.makeMessage(member, key, address, m.text, m.sent, { frankingKey: b64d(m.franking_key, 32), random: () => nonce });
  assert.deepEqual(made.statement, message);
  const opened = cm.openMessage(address, message.body, key);
  assert.equal(opened.text, m.text);
  assert.equal(b64e(opened.frankingKey), m.franking_key);
  assert.throws(() => cm.openMessage(address, { ...message.body, sent: m.sent + 1 }, key), (e) => e.code === "bad_franking");
  assert.throws(() => cm.openMessage(address, { ...message.body, epoch: 2 }, key), (e) => e.code === "decryption_failed");
  assert.throws(() => cm.openMessage(cm.parseAddress("0".repeat(32) + "@c.example"), message.body, key));
});

test("host stamps and the pinned history", () => {
  let pin = { seq: 0, head: cm.HISTORY_START };
  const hashes = [];
  for (const e of v.events) {
    const signer = e.seq === 3 ? admin.public : null; // the approval is the admin's
    const body = cm.checkStamp([b64d(v.admin.public_key, 32), host.public], e.stamp, e.event, address, e.seq, signer);
    assert.equal(body.seq, e.seq);
    hashes.push(p.statementHash(e.event));
    pin = cm.extendPin(pin, hashes);
    assert.equal(b64e(pin.head), e.head);
  }
  // under a key the host does not publish, for another position, another event: refused
  assert.throws(() => cm.checkStamp([admin.public], v.events[0].stamp, create, address, 1), (e) => e.code === "bad_stamp");
  assert.throws(() => cm.checkStamp([host.public], v.events[0].stamp, create, address, 2), (e) => e.code === "stamp_mismatch");
  assert.throws(() => cm.checkStamp([host.public], v.events[1].stamp, create, address, 2), (e) => e.code === "stamp_mismatch");
  assert.throws(() => cm.checkStamp([], v.events[0].stamp, create, address, 1), (e) => e.code === "bad_stamp");
  // fewer events than pinned, or another history up to the pin
  assert.throws(() => cm.extendPin(pin, hashes.slice(0, 4)), (e) => e.code === "rolled_back");
  const swapped = [hashes[0], hashes[2], hashes[1], hashes[3], hashes[4]];
  assert.throws(() => cm.extendPin(pin, swapped), (e) => e.code === "forked_history");
  // a message's stamp binds its commitment: a stamp without it is not this message's
  const bare = p.signStatement(host, { ...v.events[4].stamp.body, commitment: null });
  assert.throws(() => cm.checkStamp([host.public], bare, message, address, 5), (e) => e.code === "stamp_mismatch");
});

test("a rekey event carries the new key's proof", () => {
  const next = new so.SigningKeyPair(new Uint8Array(32).fill(0x23));
  const event = cm.makeRekey(member, next, memberBox.public, address, "a.example", 1764000300);
  assert.equal(p.openStatement(event, cm.REKEY, member.public).new_member, b64e(next.public));
  const proof = concat(utf8("rxfed-community-rekey|"), utf8(JSON.stringify({ box_key: b64e(memberBox.public),
    community: address.text, member: b64e(member.public), new_member: b64e(next.public) })));
  so.verifySignature(next.public, proof, b64d(event.body.proof, 64));
});

test("the fold: membership, sender keys and messages, read by each member", () => {
  const events = v.events.map((e) => [e.seq, e.event]);
  const asMember = cm.readHistory(events, member, memberBox);
  assert.equal(asMember.state.seq, 5);
  assert.deepEqual(cm.joinedMembers(asMember.state).map((m) => b64e(m.member)), [v.admin.public_key, v.member.public_key]);
  assert.deepEqual(asMember.messages.map((m) => [m.seq, m.text]), [[5, v.message.text]]);
  assert.deepEqual(asMember.unreadable, []);
  assert.deepEqual(cm.readHistory(events, admin, adminBox).messages.map((m) => m.text), [v.message.text]);
  assert.deepEqual(cm.ownSenderKey(asMember.state, events, member, memberBox), { epoch: 1, key: b64d(v.sender_key.key, 32) });
  // before the approval the member is pending and reads nothing
  const pending = cm.readHistory(events.slice(0, 2), member, memberBox).state;
  assert.equal(cm.statusOf(pending, member.public), "pending");
  // what the host must never have stamped is refused
  const again = [...events.slice(0, 3), [4, approve]];
  assert.throws(() => cm.readHistory(again), (e) => e.code === "not_pending");
  assert.throws(() => cm.readHistory([events[0], events[2]]), (e) => e.code === "out_of_order");
  assert.throws(() => cm.readHistory([...events.slice(0, 3), [4, message]]), (e) => e.code === "rotate_sender_key");
  const forged = structuredClone(join);
  forged.body.node = "b.example";
  assert.throws(() => cm.readHistory([events[0], [2, forged]]), (e) => e.code === "bad_statement_signature");
  const unknown = structuredClone(create);
  unknown.body.extra = 1;
  assert.throws(() => cm.parseEvent(unknown), (e) => e.code === "unknown_field");
  assert.throws(() => cm.parseEvent({ ...create, body: { ...create.body, admin: v.member.public_key } }), (e) => e.code === "bad_community_id");
  // a message whose ciphertext was changed is shown as unreadable, not as a message
  const tampered = structuredClone(message);
  const raw = b64d(tampered.body.ciphertext);
  raw[30] ^= 1;
  tampered.body.ciphertext = b64e(raw);
  const signedAgain = p.signStatement(member, tampered.body);
  const read = cm.readHistory([...events.slice(0, 4), [5, signedAgain]], member, memberBox);
  assert.deepEqual(read.unreadable.map((u) => [u.seq, u.reason]), [[5, "undecryptable"]]);
  assert.deepEqual(read.messages, []);
});

test("a listing is checked against the create event its address certifies", () => {
  const entry = { address: v.address.address, name: v.about.name, condition: v.about.condition, about: v.about.key, approval: true,
    members: 2, created: 1764000000, create };
  assert.equal(cm.checkListing(entry).address.text, v.address.address);
  assert.throws(() => cm.checkListing({ ...entry, name: "Another name" }), (e) => e.code === "bad_about");
  assert.throws(() => cm.checkListing({ ...entry, approval: false }), (e) => e.code === "bad_listing");
  assert.throws(() => cm.checkListing({ ...entry, address: "0".repeat(32) + "@c.example" }), (e) => e.code === "bad_listing");
});

test("node key rotations (spec/vectors/node-key-rotation.json)", async () => {
  const { parseRotation, trustedKeys } = await import("../../rxfed/web/js/nodekeys.mjs");
  const r = JSON.parse(readFileSync(new URL("../../spec/vectors/node-key-rotation.json", import.meta.url), "utf8"));
  for (const [name, seed] of Object.entries(r.seeds)) assert.equal(b64e(new so.SigningKeyPair(b64d(seed, 32)).public), r.public_keys[name]);
  assert.throws(() => parseRotation(r.statements.forged, "forged"), (e) => e.code === "bad_statement_signature");
  const asJson = (k) => ({ public_key: b64e(k.key), valid_from: k.validFrom, valid_until: k.validUntil,
    successor: k.successor === null ? null : b64e(k.successor) });
  for (const c of r.cases) {
    const anchors = c.anchors.map((k) => ({ key: b64d(k.public_key, 32), validFrom: k.valid_from, validUntil: k.valid_until,
      successor: k.successor ? b64d(k.successor, 32) : null }));
    const rotations = c.rotations.flatMap((name) => {
      try {
        return [parseRotation(r.statements[name], name)];
      } catch {
        return [];
      }
    });
    assert.deepEqual(trustedKeys(anchors, rotations).map(asJson), c.trusted, c.case);
  }
});
