// Community constructions in the page (spec/crypto.md §8, spec/federation.md §5): the
// self-certifying address, the commitment to name and condition, member events, sender keys
// sealed and signed for one member and epoch, sealed and franked messages, host stamps, the
// pinned history chain and read proofs, exactly as rxfed/protocol/community.py and
// rxfed/crypto/groups.py make them. Sans-I/O: keys, time and randomness come in.

import { canonical } from "./canonical.mjs";
import { b64d, b64e, concat, equal, fromUtf8, readU32be, u32be, utf8 } from "./encoding.mjs";
import { IntegrityError, bucketSize, openStatement, signStatement, statementHash } from "./protocol.mjs";
import { DecryptionFailed, aeadOpen, aeadSeal, blake2b, hmacSha256, openSigned, padTo, randomBytes, sealSigned, sha256,
  unpadAny, verifySignature } from "./sodium.mjs";

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
export const ACTION = "rxfed.community.action";
export const REPORT = "rxfed.community.report";
export const REPORT_FORWARD = "rxfed.report-forward";
export const ACTIONS = ["hide", "warn", "remove", "ban", "appoint", "dismiss"];
export const REPORT_CATEGORIES = ["medication_change", "dosing_advice", "miracle_cure", "drug_sourcing", "crisis", "harassment",
  "spam", "privacy", "other"];
const MAX_MODERATORS = 10;
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
export function makeMessage(sender, senderKey, address, text, now, { frankingKey = randomBytes(32), random = randomBytes, badge = null } = {}) {
  // `badge`: {credential, signature} bound to this text and time (credentials.mjs makeBadge)
  const plaintext = canonical(badge === null ? { text, franking_key: b64e(frankingKey), sent: now }
    : { text, franking_key: b64e(frankingKey), sent: now, badge });
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
  // `badge` is optional: a clinician's credential bound to the post (spec/crypto.md 12.8),
  // checked by the reader's page after the message opens (credentials.mjs badgeVerdict).
  const fields = doc && typeof doc === "object" ? Object.keys(doc).sort().join() : "";
  const badge = doc && typeof doc === "object" ? doc.badge ?? null : null;
  const badgeShaped = badge === null || (typeof badge === "object" && !Array.isArray(badge) && Object.keys(badge).sort().join() === "credential,signature"
    && badge.credential !== null && typeof badge.credential === "object" && !Array.isArray(badge.credential) && typeof badge.signature === "string");
  if (!(fields === "franking_key,sent,text" || (fields === "badge,franking_key,sent,text" && badgeShaped))
      || typeof doc.text !== "string" || doc.text.length > 4000 || !Number.isSafeInteger(doc.sent)) {
    throw new DecryptionFailed();
  }
  let key;
  try {
    key = b64d(doc.franking_key, 32);
  } catch {
    throw new DecryptionFailed();
  }
  if (doc.sent !== body.sent || !checkCommitment(key, franked(address, sender, doc.text, doc.sent), b64d(body.commitment, 32))) {
    throw new IntegrityError("the message's commitment does not open with its text", "bad_franking");
  }
  return { text: doc.text, sent: doc.sent, frankingKey: key, badge };
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
  const author = e && (e.type === APPROVE || e.type === REMOVE) ? null
    : e && (e.type === ACTION ? e.moderator : e.type === REPORT ? e.reporter : e.member ?? e.sender ?? e.admin);
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

// -- events and the fold (pc.parse_event, pc.CommunityState): what a history may contain ----------
const MAX_TIME = 2 ** 40, MAX_SEQ = 2 ** 53 - 1, MAX_VERSION = 2 ** 31 - 1, MAX_EPOCH = 2 ** 32 - 1, MAX_MEMBERS = 1000;
const MAX_CIPHERTEXT = 8 * 1024, MESSAGE_OVERHEAD = 40, SEALED_SENDER_KEY = 148;
const bad = (message, code = "bad_event") => new IntegrityError(message, code);

const check = {
  key: (n) => (v, where) => {
    try {
      return b64d(v, n);
    } catch {
      throw bad(`${where} is not ${n} bytes of base64url`);
    }
  },
  int: (lo, hi) => (v, where) => {
    if (!Number.isSafeInteger(v) || v < lo || v > hi) throw bad(`${where} must be a whole number from ${lo} to ${hi}`);
    return v;
  },
  bool: (v, where) => {
    if (typeof v !== "boolean") throw bad(`${where} must be true or false`);
    return v;
  },
  node: (v, where) => {
    if (typeof v !== "string" || v.length > 261 || !NODE_ID.test(v) || v !== v.toLowerCase()) throw bad(`${where} is not a node id`);
    return v;
  },
  ciphertext: (v, where) => {
    const data = check.key(null)(v, where);
    const padded = data.length - MESSAGE_OVERHEAD;
    if (data.length > MAX_CIPHERTEXT || padded <= 0 || bucketSize(padded - 1) !== padded) throw bad(`${where} is not a padded message`, "unpadded_message");
    return data;
  },
  keys: (v, where) => {
    if (!v || typeof v !== "object" || Array.isArray(v) || Object.keys(v).length > MAX_MEMBERS) throw bad(`${where} must map members to sealed keys`);
    const out = new Map();
    for (const [k, sealed] of Object.entries(v)) out.set(b64e(check.key(32)(k, where)), check.key(SEALED_SENDER_KEY)(sealed, where));
    return out;
  },
};
check.text = (max, pattern) => (v, where) => {
  if (typeof v !== "string" || !v || [...v].length > max || (pattern && !pattern.test(v))) throw bad(`${where} is not well formed`);
  return v;
};
check.reports = (v, where) => {
  if (!v || typeof v !== "object" || Array.isArray(v) || Object.keys(v).length > MAX_MODERATORS) throw bad(`${where} must map moderators to sealed reports`);
  const out = new Map();
  for (const [k, sealed] of Object.entries(v)) {
    const data = check.key(null)(sealed, where);
    if (data.length > 48 + 64 + MAX_CIPHERTEXT) throw bad(`${where} is too long`);
    out.set(b64e(check.key(32)(k, where)), data);
  }
  return out;
};
const TIME = check.int(0, MAX_TIME);
const EVENTS = {
  [CREATE]: { about: check.key(32), approval: check.bool, admin: check.key(32), admin_box: check.key(32), node: check.node, created: TIME },
  [JOIN]: { member: check.key(32), box_key: check.key(32), node: check.node, time: TIME },
  [APPROVE]: { member: check.key(32), time: TIME },
  [LEAVE]: { member: check.key(32), time: TIME },
  [REMOVE]: { member: check.key(32), time: TIME },
  [REKEY]: { member: check.key(32), new_member: check.key(32), box_key: check.key(32), node: check.node, proof: check.key(64), time: TIME },
  [SENDER_KEY]: { sender: check.key(32), epoch: check.int(1, MAX_EPOCH), version: check.int(1, MAX_VERSION), keys: check.keys },
  [MESSAGE]: { sender: check.key(32), epoch: check.int(1, MAX_EPOCH), ciphertext: check.ciphertext, commitment: check.key(32), sent: TIME },
  [ACTION]: { moderator: check.key(32), action: check.text(16, new RegExp(`^(?:${ACTIONS.join("|")})$`)), member: check.key(32),
    seq: check.int(0, MAX_SEQ), reason: check.text(200, /^[^\x00-\x1f\x7f]+$/u), time: TIME },
  [REPORT]: { reporter: check.key(32), reports: check.reports, time: TIME },
};

/** The typed event of a statement, shape checked (its signature is checked by the fold). */
export function parseEvent(obj, where = "event") {
  const body = obj && typeof obj === "object" ? obj.body : null;
  const spec = body && typeof body === "object" ? EVENTS[body.type] : undefined;
  if (!spec || typeof obj.sig !== "string") throw bad(`${where} is not a community event`);
  const extra = Object.keys(body).filter((k) => k !== "type" && k !== "community" && !(k in spec));
  if (extra.length) throw bad(`${where}: unknown field ${extra.sort()[0]}`, "unknown_field");
  const e = { type: body.type, community: parseAddress(body.community), signed: obj };
  for (const [name, validate] of Object.entries(spec)) {
    if (!(name in body)) throw bad(`${where}: missing field ${name}`, "missing_field");
    e[name] = validate(body[name], `${where}.${name}`);
  }
  if (e.type === CREATE && communityId(e.community.host, body) !== e.community.id) {
    throw bad(`${where}: the community id is not the one this create event certifies`, "bad_community_id");
  }
  e.author = e.type === CREATE ? e.admin : e.type === APPROVE || e.type === REMOVE ? null : e.type === SENDER_KEY || e.type === MESSAGE ? e.sender
    : e.type === ACTION ? e.moderator : e.type === REPORT ? e.reporter : e.member;
  return e;
}

const MEMBERSHIP = {
  [JOIN]: [[null], "pending", "already_member", "this member key has already joined"],
  [APPROVE]: [["pending"], "joined", "not_pending", "only a pending member can be approved"],
  [LEAVE]: [["joined", "pending"], "left", "not_a_member", "not a current member"],
  [REMOVE]: [["joined", "pending"], "removed", "not_a_member", "not a current member"],
};

/** An empty community state for `address`: {address, seq, version, meta, members (Map in
 * join order: member b64 -> {member, boxKey, node, status}), senders, recent}. */
export const emptyState = (address) => ({ address, seq: 0, version: 0, meta: null, members: new Map(), senders: new Map(), recent: new Map(),
  moderators: new Set(), banned: new Set(), acted: new Map(), reporters: new Set() });
export const joinedMembers = (state) => [...state.members.values()].filter((m) => m.status === "joined");
/** The moderators who can act now: the admin and the appointed ones still joined (CommunityState.moderator_keys). */
export const moderatorKeys = (state) => joinedMembers(state).filter((m) => (state.meta && equal(m.member, state.meta.admin)) || state.moderators.has(b64e(m.member)));
export const isModerator = (state, member) => moderatorKeys(state).some((m) => equal(m.member, member));
export const statusOf = (state, member) => state.members.get(b64e(member))?.status ?? null;

function foldAction(state, e) {
  const s = { ...state, members: new Map(state.members), acted: new Map(state.acted), moderators: new Set(state.moderators), banned: new Set(state.banned) };
  const key = b64e(e.moderator);
  if (statusOf(state, e.moderator) !== "joined") throw bad("only a joined member may do this", "not_a_member");
  const isAdmin = equal(e.moderator, state.meta.admin);
  if (!isModerator(state, e.moderator)) throw bad("only a moderator of this community may act", "not_moderator");
  const [last, seen] = state.acted.get(key) ?? [0, new Set()];
  const digest = b64e(statementHash(e.signed));
  if (e.time < last) throw bad("an action may not be older than its moderator's last", "stale_action");
  if (e.time === last && seen.has(digest)) throw bad("this action was already taken", "duplicate_action");
  s.acted.set(key, [e.time, e.time === last ? new Set([...seen, digest]) : new Set([digest])]);
  const target = b64e(e.member), current = state.members.get(target);
  if (!current) throw bad("no member of this community has that key", "not_a_member");
  if (e.action === "hide" || e.action === "warn") {
    if (!(e.seq > 0 && e.seq <= state.seq) && !(e.action === "warn" && e.seq === 0)) throw bad("the action names no earlier event", "bad_action");
    return s;
  }
  if (e.seq !== 0) throw bad(`a ${e.action} names no message (seq 0)`, "bad_action");
  if ((e.action === "appoint" || e.action === "dismiss") && !isAdmin) throw bad("only the admin appoints or dismisses moderators", "not_admin");
  if (equal(e.member, state.meta.admin)) throw bad("no action removes, bans, appoints or dismisses the admin", "cannot_act_on_admin");
  if (e.action === "appoint") {
    if (current.status !== "joined") throw bad("only a joined member can be a moderator", "not_a_member");
    if (state.moderators.has(target)) throw bad("already a moderator", "already_moderator");
    if (moderatorKeys(state).length >= MAX_MODERATORS) throw bad(`a community has at most ${MAX_MODERATORS} moderators`, "too_many_moderators");
    s.moderators.add(target);
    return s;
  }
  if (e.action === "dismiss") {
    if (!state.moderators.has(target)) throw bad("not a moderator", "not_moderator");
    s.moderators.delete(target);
    return s;
  }
  if (state.moderators.has(target) && !isAdmin) throw bad("only the admin removes or bans a moderator", "not_admin");
  if (e.action === "ban") {
    if (state.banned.has(target)) throw bad("already banned", "already_banned");
    s.banned.add(target);
  }
  if (current.status !== "joined" && current.status !== "pending") {
    if (e.action === "remove") throw bad("not a current member", "not_a_member");
    return s;
  }
  s.moderators.delete(target);
  s.members.set(target, { ...current, status: "removed" });
  s.version += 1;
  return s;
}

function foldReport(state, e) {
  const key = b64e(e.reporter);
  if (state.members.has(key)) throw bad("a report is filed under a fresh key, never a member key", "reporter_is_member");
  if (state.reporters.has(key)) throw bad("this reporter key has filed a report already", "duplicate_report");
  const mods = new Set(moderatorKeys(state).map((m) => b64e(m.member)));
  if (e.reports.size !== mods.size || [...e.reports.keys()].some((k) => !mods.has(k))) throw bad("a report is sealed to exactly the current moderators", "wrong_recipients");
  return { ...state, reporters: new Set([...state.reporters, key]) };
}

function fold(state, e) {
  if (e.type === ACTION) return foldAction(state, e);
  if (e.type === REPORT) return foldReport(state, e);
  const s = { ...state, members: new Map(state.members), senders: new Map(state.senders), recent: new Map(state.recent) };
  if (e.type === CREATE) {
    s.meta = { about: e.about, approval: e.approval, admin: e.admin, host: state.address.host, create: e.signed };
    s.members.set(b64e(e.admin), { member: e.admin, boxKey: e.admin_box, node: e.node, status: "joined" });
    s.version += 1;
  } else if (e.type in MEMBERSHIP) {
    const key = b64e(e.member), current = state.members.get(key);
    const [sources, target, code, message] = MEMBERSHIP[e.type];
    if (!sources.includes(current ? current.status : null)) throw bad(message, code);
    if (e.author === null) {
      if (statusOf(state, state.meta.admin) !== "joined") throw bad("the admin has left this community", "not_admin");
      if (equal(e.member, state.meta.admin)) throw bad("the admin leaves rather than removing themselves", "admin_cannot_remove_self");
    }
    if (e.type === JOIN) {
      if ([...state.members.values()].filter((m) => m.status === "joined" || m.status === "pending").length >= MAX_MEMBERS) {
        throw bad(`a community has at most ${MAX_MEMBERS} members`, "community_full");
      }
      s.members.set(key, { member: e.member, boxKey: e.box_key, node: e.node, status: state.meta.approval ? target : "joined" });
    } else {
      s.members.set(key, { ...current, status: target });
    }
    s.version += 1;
  } else if (e.type === REKEY) {
    const old = state.members.get(b64e(e.member));
    if (!old || !["joined", "pending"].includes(old.status)) throw bad("not a current member", "not_a_member");
    if (state.members.has(b64e(e.new_member))) throw bad("this member key has already joined", "already_member");
    if (e.node !== old.node) throw bad("a rekey keeps the member's home node", "rekey_moves_node");
    try {
      verifySignature(e.new_member, rekeyBytes(e.community.text, e.member, e.new_member, e.box_key), e.proof);
    } catch {
      throw bad("the new member key's proof does not verify", "bad_rekey_proof");
    }
    s.members.set(b64e(e.member), { ...old, status: "left" });
    s.members.set(b64e(e.new_member), { member: e.new_member, boxKey: e.box_key, node: e.node, status: old.status });
    if (equal(e.member, state.meta.admin)) s.meta = { ...state.meta, admin: e.new_member };
    if (state.moderators.has(b64e(e.member))) {
      s.moderators = new Set(state.moderators);
      s.moderators.delete(b64e(e.member));
      s.moderators.add(b64e(e.new_member));
    }
    s.version += 1;
  } else {
    const key = b64e(e.sender);
    if (statusOf(state, e.sender) !== "joined") throw bad("only a joined member may do this", "not_a_member");
    if (e.type === SENDER_KEY) {
      if (e.epoch < (state.senders.get(key)?.[0] ?? 0) + 1) throw bad("a sender key's epoch must be above the sender's last", "stale_epoch");
      if (e.version !== state.version) throw bad("membership changed since this sender key was made", "membership_changed");
      const joined = new Set(joinedMembers(state).map((m) => b64e(m.member)));
      if (e.keys.size !== joined.size || [...e.keys.keys()].some((k) => !joined.has(k))) throw bad("a sender key goes to exactly the joined members", "wrong_recipients");
      s.senders.set(key, [e.epoch, e.version]);
    } else {
      const sent = state.senders.get(key);
      if (!sent || sent[0] !== e.epoch || sent[1] !== state.version) throw bad("membership changed: distribute a new sender key first", "rotate_sender_key");
      const [last, seen] = state.recent.get(key) ?? [0, new Set()];
      const c = b64e(e.commitment);
      if (e.sent < last) throw bad("a message may not be older than its sender's last", "stale_message");
      if (e.sent === last && seen.has(c)) throw bad("this message was already posted", "duplicate_message");
      s.recent.set(key, [e.sent, e.sent === last ? new Set([...seen, c]) : new Set([c])]);
    }
  }
  return s;
}

/** The state after `statement` as number `seq`, and the parsed event (CommunityState.step);
 * `checked`: this very statement's signature was verified before (it is in the pinned history). */
export function step(state, statement, seq, checked = false) {
  if (seq !== state.seq + 1) throw bad(`expected event ${state.seq + 1}, got ${seq}`, "out_of_order");
  const e = parseEvent(statement);
  if (e.community.text !== state.address.text) throw bad("event is for another community", "wrong_community");
  if ((state.meta === null) !== (e.type === CREATE)) throw bad("a community starts with exactly one create event", state.meta === null ? "not_created" : "already_created");
  if (!checked) openStatement(statement, e.type, e.author ?? state.meta.admin, "event");
  return [{ ...fold(state, e), seq }, e];
}

export const UNREADABLE = {
  undecryptable: "it does not decrypt under its sender's key",
  bad_franking: "its franking commitment does not match its text, so it could never be reported",
  bad_sender_key: "the sender key it was sent under, sealed to you, does not open",
};

/** Fold events from the create event on and open every message `me` holds a sender key
 * for (pc.read_history): {state, messages: [{seq, sender, text, sent, epoch, frankingKey,
 * commitment}], unreadable: [{seq, sender, reason}]}. An invalid event throws. `me` null: the
 * state alone. */
export function readHistory(events, me = null, myBox = null, checked = 0) {
  if (!events.length) throw bad("a community starts with its create event");
  let state = emptyState(parseEvent(events[0][1]).community);
  const keys = new Map(), broken = new Set(), messages = [], unreadable = [];
  const posted = new Map(), actions = [], hidden = new Map(), reports = [];
  const mine = me ? b64e(me.public) : null;
  for (const [seq, statement] of events) {
    let e;
    [state, e] = step(state, statement, seq, seq <= checked);
    if (e.type === ACTION) {
      actions.push([seq, e]);
      const target = posted.get(e.seq);
      if (e.action === "hide" && target && equal(target.sender, e.member) && !hidden.has(e.seq)) hidden.set(e.seq, [seq, e]);
      continue;
    }
    if (e.type === MESSAGE) posted.set(seq, e);
    if (mine === null) continue;
    if (e.type === REPORT) {
      const received = openReport(state.address, seq, e, me, myBox, posted);
      if (received) reports.push(received);
      continue;
    }
    const id = (sender, epoch) => `${b64e(sender)}/${epoch}`;
    if (e.type === SENDER_KEY && e.keys.has(mine)) {
      try {
        keys.set(id(e.sender, e.epoch), openSenderKey(e.sender, myBox, state.address, me.public, e.epoch, e.keys.get(mine)));
      } catch {
        broken.add(id(e.sender, e.epoch));
      }
    } else if (e.type === MESSAGE) {
      const key = keys.get(id(e.sender, e.epoch));
      if (key) {
        try {
          const m = openMessage(state.address, statement.body, key);
          messages.push({ seq, sender: e.sender, text: m.text, sent: m.sent, epoch: e.epoch, frankingKey: m.frankingKey, commitment: e.commitment,
            badge: m.badge });
        } catch (exc) {
          unreadable.push({ seq, sender: e.sender, reason: exc.code === "bad_franking" ? "bad_franking" : "undecryptable" });
        }
      } else if (broken.has(id(e.sender, e.epoch))) {
        unreadable.push({ seq, sender: e.sender, reason: "bad_sender_key" });
      }
    }
  }
  return { state, messages, unreadable, actions, hidden, reports };
}

const reportContext = (address, moderator, reporter) =>
  concat(utf8("rxfed-report|"), canonical({ community: address.text, moderator: b64e(moderator), reporter: b64e(reporter) }));

/** A report sealed to moderator `me`, checked against the message it names (pc.open_report):
 * {report, time, seq, category, text, sender, sent, status ("verified" or "refused"), reason}, or null. */
export function openReport(address, reportSeq, e, me, myBox, posted) {
  const sealed = e.reports.get(b64e(me.public));
  if (!sealed) return null;
  const refused = (reason, extra = {}) => ({ report: reportSeq, time: e.time, seq: 0, category: null, text: null, sender: null, sent: null,
    status: "refused", reason, ...extra });
  let doc;
  try {
    doc = JSON.parse(fromUtf8(unpadAny(openSigned(e.reporter, myBox, reportContext(address, me.public, e.reporter), sealed))));
    if (!doc || typeof doc !== "object" || Object.keys(doc).sort().join() !== "category,franking_key,seq,text" || typeof doc.text !== "string"
        || typeof doc.category !== "string" || !Number.isSafeInteger(doc.seq) || doc.seq < 1) throw new DecryptionFailed();
    doc.key = b64d(doc.franking_key, 32);
  } catch {
    return refused("undecryptable");
  }
  const category = REPORT_CATEGORIES.includes(doc.category) ? doc.category : "other";
  const message = posted.get(doc.seq);
  if (!message) return refused("not_a_message", { seq: doc.seq, category, text: doc.text });
  const ok = checkCommitment(doc.key, franked(address, message.sender, doc.text, message.sent), message.commitment);
  return { report: reportSeq, time: e.time, seq: doc.seq, category, text: doc.text, sender: b64e(message.sender), sent: message.sent,
    status: ok ? "verified" : "refused", reason: ok ? null : "bad_franking", frankingKey: doc.key };
}

/** A moderator's decision to show a verified franking report (`report`, as frankingReport
 * makes it) to the sender's home node, with its category, signed by the moderator's member
 * key (pc.make_forward); sealed to that node's key (sealToNode) before it leaves the page. */
export function makeForward(moderator, report, category, now) {
  if (!REPORT_CATEGORIES.includes(category)) throw bad(`category must be one of ${REPORT_CATEGORIES.join(", ")}`, "bad_category");
  return signStatement(moderator, { type: REPORT_FORWARD, community: parseEvent(report.event).community.text, category, report,
    moderator: b64e(moderator.public), time: now });
}

/** A moderator's signed action (pc.make_action). */
export const makeAction = (moderator, address, action, member, { seq = 0, reason, now }) =>
  signStatement(moderator, { type: ACTION, community: address.text, moderator: b64e(moderator.public), action, member: b64e(member), seq, reason, time: now });

/** A report of `message` as `category`, sealed to each current moderator under a fresh
 * `reporter` key (pc.make_report). */
export function makeReport(state, message, category, now, reporter) {
  if (!REPORT_CATEGORIES.includes(category)) throw bad(`category must be one of ${REPORT_CATEGORIES.join(", ")}`, "bad_category");
  const payload = canonical({ category, franking_key: b64e(message.frankingKey), seq: message.seq, text: message.text });
  const padded = padTo(payload, bucketSize(payload.length));
  const reports = {};
  for (const m of moderatorKeys(state)) reports[b64e(m.member)] = b64e(sealSigned(reporter, m.boxKey, reportContext(state.address, m.member, reporter.public), padded));
  return signStatement(reporter, { type: REPORT, community: state.address.text, reporter: b64e(reporter.public), reports, time: now });
}

/** `me`'s current sender key, opened from its own latest distribution, or null. */
export function ownSenderKey(state, events, me, myBox) {
  const mine = b64e(me.public), epoch = state.senders.get(mine)?.[0] ?? 0;
  for (let i = events.length - 1; i >= 0; i--) {
    const body = events[i][1]?.body;
    if (body && body.type === SENDER_KEY && body.sender === mine && body.epoch === epoch) {
      try {
        return openSenderKey(me.public, myBox, state.address, me.public, epoch, b64d(body.keys[mine]));
      } catch {
        return null;
      }
    }
  }
  return null;
}

/** A sender key for the current membership, sealed to every joined member (pc.make_sender_key). */
export function makeSenderKey(sender, state, senderKey) {
  const keys = {};
  for (const m of joinedMembers(state)) keys[b64e(m.member)] = b64e(sealSenderKey(sender, m.boxKey, state.address, m.member, senderKey));
  return signStatement(sender, { type: SENDER_KEY, community: state.address.text, sender: b64e(sender.public), epoch: senderKey.epoch,
    version: state.version, keys });
}

/** A listing in the host's directory, checked against the create event its address
 * certifies and the commitment to its name and condition (pc.Listing.from_json). */
export function checkListing(entry) {
  const create = parseEvent(entry && entry.create, "listing.create");
  if (create.type !== CREATE || create.community.text !== entry.address || create.approval !== entry.approval) {
    throw bad("the listing's create event is not its community's", "bad_listing");
  }
  openStatement(entry.create, CREATE, create.admin, "listing.create");
  if (typeof entry.name !== "string" || !entry.name || entry.name.length > 80 || /[\x00-\x1f\x7f]/.test(entry.name)
      || (entry.condition !== null && !/^[A-Z][0-9][0-9A-Z]$/.test(entry.condition))) {
    throw bad("the listing's name or condition is malformed", "bad_listing");
  }
  checkAbout({ name: entry.name, condition: entry.condition, key: entry.about }, entry.create.body);
  return { create, name: entry.name, condition: entry.condition, members: entry.members, address: create.community };
}

/** What a recipient hands a moderator about one message (pc.franking_report). */
export const frankingReport = (message, event, stamp) =>
  ({ type: "rxfed.franking-report", text: message.text, franking_key: b64e(message.frankingKey), event, stamp });
