// Community constructions in the page (spec/crypto.md §8, spec/federation.md §5): the
// self-certifying address, the commitment to name and condition, member events, sender keys
// sealed and signed for one member and epoch, sealed and franked messages, host stamps, the
// pinned history chain and read proofs, exactly as rxfed/protocol/community.py and
// rxfed/crypto/groups.py make them. Sans-I/O: keys, time and randomness come in.

import { canonical } from "./canonical.mjs";
import { b64d, b64e, concat, equal, fromUtf8, readU32be, u32be, utf8 } from "./encoding.mjs";
import { IntegrityError, bucketSize, openStatement, signStatement, statementHash } from "./protocol.mjs";
import { DecryptionFailed, aeadOpen, aeadSeal, blake2b, hmacSha256, openSigned, padTo, randomBytes, sealSigned, sha256,
  unpadAny } from "./sodium.mjs";

export const CREATE = "rxfed.community.create";
export const JOIN = "rxfed.community.join";
export const APPROVE = "rxfed.community.approve";
export const LEAVE = "rxfed.community.leave";
export const REMOVE = "rxfed.community.remove";
export const REKEY = "rxfed.community.rekey";
export const SENDER_KEY = "rxfed.community.sender-key";
export const MESSAGE = "rxfed.community.message";
export const READ = "rxfed.community.read";
export const HOST_STAMP = "rxfed.host-stamp";
const HEX_ID = /^[0-9a-f]{32}$/;
const NODE_ID = /^[A-Za-z0-9.-]{1,253}(?::[0-9]{1,5})?$/;

const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

/** `<id>@<host>`, parsed: {id, host, text}. */
export function parseAddress(value) {
  const at = typeof value === "string" ? value.indexOf("@") : -1;
  const id = at < 0 ? "" : value.slice(0, at), host = at < 0 ? "" : value.slice(at + 1);
  if (!HEX_ID.test(id) || !NODE_ID.test(host)) throw new IntegrityError("a community address is <32 hex digits>@<host>", "bad_address");
  return { id, host, text: `${id}@${host}` };
}

/** The id a create event's body certifies on `host` (pc.community_id). */
export function communityId(host, body) {
  const create = Object.fromEntries(Object.entries(body).filter(([k]) => k !== "community"));
  return hex(sha256(concat(utf8("rxfed-community-id|"), canonical({ create, host }))).subarray(0, 16));
}

// -- commitments (franking and the community's name and condition) ----------------------------
export const commitment = (key, message) => hmacSha256(key, message);
export const checkCommitment = (key, message, expected) => key.length === 32 && equal(commitment(key, message), expected);
export const aboutCommitted = ({ name, condition }) => canonical({ condition: condition ?? null, name });

/** The directory entry's name and condition, if they are what `create` committed to. */
export function checkAbout(about, createBody) {
  if (!checkCommitment(b64d(about.key, 32), aboutCommitted(about), b64d(createBody.about, 32))) {
    throw new IntegrityError("this name and condition are not the ones the community's creator committed to", "bad_about");
  }
  return about;
}

// -- events -------------------------------------------------------------------------------------
export function makeCreate(admin, adminBox, host, { about, approval, node, now }) {
  const body = { type: CREATE, about: b64e(commitment(b64d(about.key, 32), aboutCommitted(about))), approval,
    admin: b64e(admin.public), admin_box: b64e(adminBox), node, created: now };
  return signStatement(admin, { ...body, community: `${communityId(host, body)}@${host}` });
}

export const makeJoin = (member, boxPublic, address, node, now) =>
  signStatement(member, { type: JOIN, community: address.text, member: b64e(member.public), box_key: b64e(boxPublic), node, time: now });
export const makeApprove = (admin, address, member, now) => signStatement(admin, { type: APPROVE, community: address.text, member: b64e(member), time: now });
export const makeLeave = (member, address, now) => signStatement(member, { type: LEAVE, community: address.text, member: b64e(member.public), time: now });
export const makeRemove = (admin, address, member, now) => signStatement(admin, { type: REMOVE, community: address.text, member: b64e(member), time: now });

const rekeyBytes = (community, member, newMember, boxKey) => concat(utf8("rxfed-community-rekey|"),
  canonical({ community, member: b64e(member), new_member: b64e(newMember), box_key: b64e(boxKey) }));

export function makeRekey(member, newMember, boxPublic, address, node, now) {
  const proof = newMember.sign(rekeyBytes(address.text, member.public, newMember.public, boxPublic));
  return signStatement(member, { type: REKEY, community: address.text, member: b64e(member.public), new_member: b64e(newMember.public),
    box_key: b64e(boxPublic), node, proof: b64e(proof), time: now });
}

export const makeReadProof = (member, address, node, now) =>
  signStatement(member, { type: READ, community: address.text, member: b64e(member.public), node, time: now });

// -- sender keys --------------------------------------------------------------------------------
export const senderKeyBytes = ({ epoch, key }) => concat(u32be(epoch), key);
export const senderKeyContext = (address, recipient, epoch) =>
  concat(utf8("rxfed-sender-key|"), canonical({ community: address.text, recipient: b64e(recipient), epoch }));

/** A sender key sealed to one member's box key, signed by the sender's member key. */
export const sealSenderKey = (sender, recipientBox, address, recipient, senderKey) =>
  sealSigned(sender, recipientBox, senderKeyContext(address, recipient, senderKey.epoch), senderKeyBytes(senderKey));

/** The sender key of `sealed`, if `senderPublic` sealed it to this member for this epoch. */
export function openSenderKey(senderPublic, box, address, recipient, epoch, sealed) {
  const data = openSigned(senderPublic, box, senderKeyContext(address, recipient, epoch), sealed);
  if (data.length !== 36 || readU32be(data, 0) === 0 || readU32be(data, 0) !== epoch) throw new DecryptionFailed();
  return { epoch, key: data.slice(4) };
}

// -- messages -----------------------------------------------------------------------------------
export const messageAd = (address, sender, epoch) => concat(utf8("rxfed-msg|"), canonical({ community: address.text, sender: b64e(sender), epoch }));
export const franked = (address, sender, text, sent) => canonical({ community: address.text, sender: b64e(sender), text, sent });

/** A message statement under `senderKey` and its franking key (pc.make_message). */
export function makeMessage(sender, senderKey, address, text, now, { frankingKey = randomBytes(32), random = randomBytes } = {}) {
  const plaintext = canonical({ text, franking_key: b64e(frankingKey), sent: now });
  const sealed = aeadSeal(senderKey.key, messageAd(address, sender.public, senderKey.epoch), padTo(plaintext, bucketSize(plaintext.length)), random);
  const statement = signStatement(sender, { type: MESSAGE, community: address.text, sender: b64e(sender.public), epoch: senderKey.epoch,
    ciphertext: b64e(sealed), commitment: b64e(commitment(frankingKey, franked(address, sender.public, text, now))), sent: now });
  return { statement, frankingKey };
}

/** {text, sent, frankingKey} of a message event under `senderKey`; DecryptionFailed when it
 * does not open, IntegrityError("bad_franking") when its commitment does not open with its
 * text or its inner time differs from the event's. */
export function openMessage(address, body, senderKey) {
  const sender = b64d(body.sender, 32);
  const plaintext = unpadAny(aeadOpen(senderKey.key, messageAd(address, sender, body.epoch), b64d(body.ciphertext)));
  let doc;
  try {
    doc = JSON.parse(fromUtf8(plaintext));
  } catch {
    throw new DecryptionFailed();
  }
  const key = b64d(doc.franking_key, 32);
  if (doc.sent !== body.sent || !checkCommitment(key, franked(address, sender, doc.text, doc.sent), b64d(body.commitment, 32))) {
    throw new IntegrityError("the message's commitment does not open with its text", "bad_franking");
  }
  return { text: doc.text, sent: doc.sent, frankingKey: key };
}

// -- host stamps and the pinned history -----------------------------------------------------------
/** The stamp's body if one of the host's keys (fetched from the host itself) signed it for
 * exactly this event at position `seq` of `address` (pc.check_stamped); IntegrityError otherwise. */
export function checkStamp(hostKeys, stamp, event, address, seq, signer = null) {
  let body = null;
  for (const key of hostKeys) {
    try {
      body = openStatement(stamp, HOST_STAMP, key, "stamp");
      break;
    } catch {
      // the next key: hosts keep listing the keys they retired
    }
  }
  if (body === null) throw new IntegrityError("no key the host publishes verifies its stamp", "bad_stamp");
  const e = event && event.body;
  const commitmentOf = e && e.type === MESSAGE ? e.commitment : null;
  const author = e && (e.type === APPROVE || e.type === REMOVE) ? null : e && (e.member ?? e.sender ?? e.admin);
  if (body.event !== b64e(statementHash(event)) || body.community !== address.text || body.seq !== seq
      || (author != null && body.sender !== author) || (signer !== null && body.sender !== b64e(signer))
      || (body.commitment ?? null) !== commitmentOf) {
    throw new IntegrityError(`the stamp of event ${seq} is for another event`, "stamp_mismatch");
  }
  return body;
}

export const HISTORY_START = new Uint8Array(32);
/** The next head of a history chain: BLAKE2b-256(person "rxfed-history-v1", head || event hash). */
export const historyLink = (previous, eventHash) => blake2b(concat(previous, eventHash), { size: 32, person: "rxfed-history-v1" });

/** The pin after events 1..n with these statement hashes, if they extend `pin` ({seq, head});
 * IntegrityError("rolled_back" | "forked_history") otherwise (pc.HistoryPin.extend). */
export function extendPin(pin, eventHashes) {
  if (eventHashes.length < pin.seq) {
    throw new IntegrityError(`the node now serves ${eventHashes.length} events of a community this browser has seen ${pin.seq} of`, "rolled_back");
  }
  let head = HISTORY_START;
  eventHashes.forEach((digest, i) => {
    head = historyLink(head, digest);
    if (i + 1 === pin.seq && !equal(head, pin.head)) {
      throw new IntegrityError(`the community's history differs from what this browser saw up to event ${i + 1}`, "forked_history");
    }
  });
  return { seq: eventHashes.length, head };
}
