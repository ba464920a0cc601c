// The patient's communities in the page: per-community keys kept in the encrypted vault
// (`community` records, as the CLI keeps them, so each reads what the other joined), events
// made and signed here, histories checked under the host's own keys and pinned, messages
// read and decrypted here (rxfed/client/community.py). The host's keys and directory come
// from the host itself; the page's connect-src names the peers the home node federates
// with (spec/web.md §2), and a host it cannot reach is left to the CLI.

import { canonical } from "./canonical.mjs";
import * as cm from "./community.mjs";
import { b64d, b64e, hex } from "./encoding.mjs";
import { timestamp } from "./client.mjs";
import * as p from "./protocol.mjs";
import { followRotations, trustNode, untrustedError } from "./nodekeys.mjs";
import { badgeVerdict, didKey, makeBadge } from "./credentials.mjs";
import { fetchPublic, nodeOrigin } from "./sharing.mjs";
import { BoxKeyPair, SigningKeyPair, hashId, randomBytes, sealToNode } from "./sodium.mjs";
import * as store from "./store.mjs";

export const KIND = "community";
const PAGE = 1000;

/** Before a post is sealed the page runs the moderation plugin's check itself
 * (js/moderation.mjs); other client plugins' pre-send checks are Python, run by the CLI on
 * the patient's machine only (spec/web.md §7). */
export const PRESEND_NOTICE = "Before a post is sent, this page checks it with the signed moderation rules, here in your browser: "
  + "nothing about the check is uploaded. Checks from other client plugins, if any are installed, run only in the rxfed command.";

/** A membership from its vault record (community.Membership.from_record). */
export function membership(record) {
  const d = record.data;
  return {
    address: cm.parseAddress(d.address), member: new SigningKeyPair(b64d(d.member_seed, 32)), box: new BoxKeyPair(b64d(d.box_secret, 32)),
    name: d.name || "", condition: d.condition ?? null, create: d.create ? b64d(d.create, 32) : null, admin: d.admin ? b64d(d.admin, 32) : null,
    hostKeys: (d.host_keys || []).map((k) => b64d(k, 32)), record,
    previous: (d.previous || []).map((x) => [new SigningKeyPair(b64d(x.member_seed, 32)), new BoxKeyPair(b64d(x.box_secret, 32))]),
  };
}

function membershipData(m) {
  return {
    address: m.address.text, member_seed: b64e(m.member.seed), box_secret: b64e(m.box.secret), name: m.name, condition: m.condition,
    create: m.create ? b64e(m.create) : null, admin: m.admin ? b64e(m.admin) : null, host_keys: m.hostKeys.map(b64e),
    previous: m.previous.map(([member, box]) => ({ member_seed: b64e(member.seed), box_secret: b64e(box.secret) })),
  };
}

async function publicGet(origin, path, what) {
  const doc = await fetchPublic(origin, path);
  if (doc === null) {
    throw new p.IntegrityError(`cannot reach ${what} from this browser (its node may not federate with it): use the rxfed command`, "unavailable");
  }
  return doc;
}

export class PageCommunities {
  constructor(patient) {
    this.patient = patient;
  }

  now() {
    return this.patient.node.now();
  }

  hostUrl(host) {
    return host === this.patient.id.nodeId ? "" : nodeOrigin(host);
  }

  async memberships() {
    if (this.patient.state === null) await this.patient.load();
    return this.patient.state.records.filter((r) => r.kind === KIND).map(membership);
  }

  async membership(address) {
    const wanted = cm.parseAddress(address).text;
    const found = (await this.memberships()).find((m) => m.address.text === wanted);
    if (!found) throw new p.IntegrityError(`you are not a member of ${address}`, "not_a_member");
    return found;
  }

  submit(address, event, extra = {}) {
    return this.patient.node.call("POST", "/v1/communities/events", { community: address.text, event, ...extra }, this.patient.id.device);
  }

  /** The host's keys from its own /.well-known/rxfed, never from the home node, as this
   * browser trusts them (js/nodekeys.mjs: pinned at first contact, in any view, then
   * followed only by rotations the pinned keys signed); a host listing any other key is
   * refused. */
  async hostKeys(host) {
    return (await this.nodeKeys(host)).map((k) => k.key);
  }

  /** A node's keys ({key, validFrom, validUntil, successor}) as this browser trusts them,
   * from the node's own key document and the pins (hostKeys). */
  async nodeKeys(node) {
    const doc = await publicGet(this.hostUrl(node), "/.well-known/rxfed", node);
    if (doc.node_id !== node) throw new p.IntegrityError(`${node} says it is ${doc.node_id}`, "wrong_node");
    let view;
    try {
      view = await trustNode(doc);
    } catch (exc) {
      if (exc.code === "bad_document") throw new p.IntegrityError(`${node} publishes no key to check its stamps with`, "bad_stamp");
      throw exc;
    }
    if (view.untrusted.length) throw untrustedError(node, view.untrusted);
    return view.trusted;
  }

  /** The communities a node hosts, as it lists them (no account needed), each checked
   * against the create event its address certifies; a listing that is not is left out. */
  async directory(host = this.patient.id.nodeId) {
    const doc = await publicGet(this.hostUrl(host), "/v1/communities", host);
    const out = [];
    for (const entry of Array.isArray(doc.communities) ? doc.communities : []) {
      try {
        const listing = cm.checkListing(entry);
        if (listing.address.host === host) out.push(listing);
      } catch {
        // a listing that does not match its create event is not shown
      }
    }
    return out;
  }

  /** Seal and commit records (`puts`, each the next version of what the vault holds) and
   * deletions with the next signed manifest, once more after a reload if another device
   * wrote first (client.mjs commit and retried). */
  commit(puts, deletes = []) {
    return this.patient.retried(() => this.patient.commit(puts, deletes));
  }

  async pins() {
    return (await store.get("communities")) || {};
  }

  /** A pin per membership, named by a hash of its first member key (a rekey keeps it), so
   * IndexedDB does not say which communities the patient is in. */
  pinName(mine) {
    const first = mine.previous.length ? mine.previous[mine.previous.length - 1][0] : mine.member;
    return hashId(first.seed, "rxfed-pin");
  }

  async fetch(mine) {
    const keys = [[mine.member, mine.box], ...mine.previous];
    let proof = cm.makeReadProof(keys[0][0], mine.address, this.patient.id.nodeId, this.now());
    const out = [];
    for (;;) {
      let page;
      try {
        page = await this.patient.node.call("POST", "/v1/communities/read",
          { community: mine.address.text, after: out.length ? out[out.length - 1][0] : 0, limit: PAGE, proof }, this.patient.id.device);
      } catch (exc) {
        if (exc.code === "unknown_community" && !out.length) return [];
        if (exc.code === "not_a_member" && keys.length > 1 && !out.length) {
          keys.shift();
          proof = cm.makeReadProof(keys[0][0], mine.address, this.patient.id.nodeId, this.now());
          continue;
        }
        throw exc;
      }
      if (!page || !Array.isArray(page.events)) throw new p.IntegrityError("the node answered a community read with a malformed page");
      out.push(...page.events.map((e) => [e.seq, e.event, e.stamp]));
      if (page.events.length < PAGE) break;
    }
    const contiguous = [];
    for (const row of out) {
      if (row[0] !== contiguous.length + 1) break;
      contiguous.push(row);
    }
    return contiguous;
  }

  /** The community's events from the home node, each checked against the host's stamp
   * under the keys this membership pinned, the first the pinned create event, the whole
   * extending what this browser saw; then folded and read with every key the membership
   * has had (Communities.history). */
  async history(mine, { messages = true } = {}) {
    if (mine.create === null || !mine.hostKeys.length) {
      throw new p.IntegrityError(`the membership of ${mine.address.text} pins nothing to check its history against`, "unpinned");
    }
    const rows = await this.fetch(mine);
    const pins = await this.pins();
    const saved = pins[this.pinName(mine)];
    const pin = saved ? { seq: saved.seq, head: b64d(saved.head, 32) } : { seq: 0, head: cm.HISTORY_START };
    let after, reading = null;
    try {
      const hashes = [];
      for (const [seq, event, stamp] of rows) {
        let body;
        try {
          body = cm.checkStamp(mine.hostKeys, stamp, event, mine.address, seq);
        } catch (exc) {
          if (exc.code !== "bad_stamp") throw exc;
          mine = await this.refreshHostKeys(mine);
          body = cm.checkStamp(mine.hostKeys, stamp, event, mine.address, seq);
        }
        hashes.push(b64d(body.event, 32));
      }
      if (hashes.length && b64e(hashes[0]) !== b64e(mine.create)) {
        throw new p.IntegrityError("the first event is not the create event this membership pinned", "forked_history");
      }
      after = cm.extendPin(pin, hashes);
      if (rows.length) {
        const events = rows.map(([seq, event]) => [seq, event]);
        reading = messages ? this.readWith(mine, events) : { state: cm.readHistory(events).state, messages: [], unreadable: [] };
        if (mine.admin !== null && b64e(cm.parseEvent(rows[0][1]).admin) !== b64e(mine.admin)) {
          throw new p.IntegrityError("the community's admin is not the one this membership pinned", "forked_history");
        }
      }
    } catch (exc) {
      if (exc.status !== undefined) throw exc;
      throw new p.IntegrityError(`the node served a history of ${mine.address.text} that the host did not stamp or that does not extend what this browser saw: ${exc.message}`, exc.code);
    }
    if (after.seq > pin.seq) await store.putAll({ communities: { ...pins, [this.pinName(mine)]: { seq: after.seq, head: b64e(after.head) } } });
    return { mine, rows, reading };
  }

  readWith(mine, events) {
    const reading = cm.readHistory(events, mine.member, mine.box);
    if (!mine.previous.length) return reading;
    const messages = new Map(reading.messages.map((m) => [m.seq, m]));
    const unreadable = new Map(reading.unreadable.map((u) => [u.seq, u]));
    for (const [member, box] of mine.previous) {
      const earlier = cm.readHistory(events, member, box, events.length);
      for (const m of earlier.messages) if (!messages.has(m.seq)) messages.set(m.seq, m);
      for (const u of earlier.unreadable) if (!unreadable.has(u.seq)) unreadable.set(u.seq, u);
    }
    const reports = new Map(reading.reports.map((r) => [r.report, r]));
    for (const [member, box] of mine.previous) {
      for (const r of cm.readHistory(events, member, box, events.length).reports) if (!reports.has(r.report)) reports.set(r.report, r);
    }
    const sorted = (map) => [...map.keys()].sort((a, b) => a - b).map((k) => map.get(k));
    return { ...reading, messages: sorted(messages), unreadable: sorted(unreadable).filter((u) => !messages.has(u.seq)), reports: sorted(reports) };
  }

  /** After a stamp by a key not pinned: the host's keys reached from the pinned ones by
   * signed rotations, added to the pins (hosts rotate keys and list the ones that ended);
   * a key the document merely lists beside them adds nothing (Communities._refresh_host_keys). */
  async refreshHostKeys(mine) {
    const host = mine.address.host;
    const doc = await publicGet(this.hostUrl(host), "/.well-known/rxfed", host);
    if (doc.node_id !== host) throw new p.IntegrityError(`${host} says it is ${doc.node_id}`, "wrong_node");
    try {
      await trustNode(doc); // the browser's pins follow the same rotations
    } catch {
      // a document the pins cannot read adds no key to the membership either
      return mine;
    }
    const pinned = new Set(mine.hostKeys.map(b64e));
    const added = followRotations(doc, mine.hostKeys).filter((k) => !pinned.has(b64e(k)));
    if (!added.length) return mine;
    const updated = { ...mine, hostKeys: [...mine.hostKeys, ...added] };
    await this.commit([{ ...mine.record, data: membershipData(updated) }]);
    return updated;
  }

  /** A new community hosted on this node, with this patient as its admin
   * (Communities.create); returns its address. */
  async create(name, { condition = null, approval = false } = {}) {
    const clean = (name || "").trim();
    if (!clean || clean.length > 80 || /[\x00-\x1f\x7f]/.test(clean)) throw new p.IntegrityError("A community's name is 1 to 80 printable characters.", "bad_name");
    const code = condition ? condition.trim().toUpperCase().slice(0, 3) : null;
    if (code !== null && !/^[A-Z][0-9][0-9A-Z]$/.test(code)) throw new p.IntegrityError("A condition is an ICD-10 category, like G40.", "invalid_code");
    const host = this.patient.id.nodeId;
    const about = { name: clean, condition: code, key: b64e(randomBytes(32)) };
    const member = SigningKeyPair.generate(), box = BoxKeyPair.generate();
    const event = cm.makeCreate(member, box.public, host, { about, approval, node: host, now: this.now() });
    const address = cm.parseAddress(event.body.community);
    const mine = { address, member, box, name: clean, condition: code, create: p.statementHash(event), admin: member.public,
      hostKeys: await this.hostKeys(host), previous: [] };
    await this.commit([{ id: hex(randomBytes(16)), kind: KIND, created: timestamp(Date.now() + this.patient.node.offset * 1000), data: membershipData(mine) }]);
    await this.submit(address, event, { about });
    return address.text;
  }

  /** Approve a pending member, or remove a member (the admin's actions). */
  async moderate(address, member, action) {
    const mine = await this.membership(address);
    const make = action === "approve" ? cm.makeApprove : cm.makeRemove;
    return this.submit(mine.address, make(mine.member, mine.address, b64d(member, 32), this.now()));
  }

  /** Join through the home node after checking the community with its host: its keys and
   * its listing, whose create event the address certifies (Communities.join). */
  async join(address) {
    const target = cm.parseAddress(address);
    if ((await this.memberships()).some((m) => m.address.text === target.text)) {
      throw new p.IntegrityError(`you are already a member of ${address}`, "already_member");
    }
    const hostKeys = await this.hostKeys(target.host);
    const listing = (await this.directory(target.host)).find((l) => l.address.text === target.text);
    if (!listing) throw new p.IntegrityError(`${target.host} lists no community ${address}`, "unknown_community");
    const member = SigningKeyPair.generate(), box = BoxKeyPair.generate();
    const event = cm.makeJoin(member, box.public, target, this.patient.id.nodeId, this.now());
    const mine = { address: target, member, box, name: listing.name, condition: listing.condition,
      create: p.statementHash(listing.create.signed), admin: listing.create.admin, hostKeys, previous: [] };
    // The keys are stored first: a join the node accepted must never lack them.
    const record = { id: hex(randomBytes(16)), kind: KIND, created: timestamp(Date.now() + this.patient.node.offset * 1000), data: membershipData(mine) };
    await this.commit([record]);
    try {
      return await this.submit(target, event);
    } catch (exc) {
      if (exc.status !== undefined) await this.commit([], [record.id]); // refused: nothing was sent
      throw exc;
    }
  }

  async leave(address) {
    const mine = await this.membership(address);
    const result = await this.submit(mine.address, cm.makeLeave(mine.member, mine.address, this.now()));
    await this.commit([], [mine.record.id]);
    const pins = await this.pins();
    delete pins[this.pinName(mine)];
    await store.putAll({ communities: pins });
    return result;
  }

  /** Encrypt and post `text`; first hands a fresh sender key to exactly the current members
   * if the membership changed since this member's last key (Communities.post). */
  async post(address, text, { credential = null } = {}) {
    if (typeof text !== "string" || !text.trim() || text.length > 4000) throw new p.IntegrityError("A message is 1 to 4000 characters.", "bad_text");
    const clinician = credential === null ? null : await this.clinicianKey();
    if (credential !== null && clinician === null) {
      throw new p.IntegrityError("This account has no clinician key yet: show it (below), and have your hospital issue a credential for it.", "no_clinician_key");
    }
    const mine = await this.membership(address);
    const { rows, reading } = await this.history(mine, { messages: false });
    if (reading === null) throw new p.IntegrityError("this node has not received the community yet; try again shortly", "not_ready");
    const state = reading.state;
    if (cm.statusOf(state, mine.member.public) !== "joined") throw new p.IntegrityError("you are not (yet) a joined member of this community", "not_joined");
    const events = rows.map(([seq, event]) => [seq, event]);
    const mineKey = b64e(mine.member.public), sent = state.senders.get(mineKey);
    const now = Math.max(this.now(), state.recent.get(mineKey)?.[0] ?? 0);
    let badge = null;
    if (credential !== null) {
      try {
        badge = makeBadge(clinician, credential, { community: mine.address.text, sender: mine.member.public, text, sent: now });
      } catch (exc) {
        throw new p.IntegrityError(`The badge cannot go on this post: ${exc.message}.`, exc.code || "malformed_badge");
      }
      // checked as every reader will check it, before anything (a sender key) is sent
      const verdict = await badgeVerdict(badge, { community: mine.address.text, sender: mine.member.public, text, sent: now },
        { now: this.now(), fetchKeys: (node) => this.issuerKeys(node), fetchList: (url, node) => this.statusList(url, node) });
      if (!verdict.verified) throw new p.IntegrityError(`The badge would not show: ${verdict.explanation}.`, verdict.reason);
    }
    let key = cm.ownSenderKey(state, events, mine.member, mine.box);
    if (key === null || !sent || sent[1] !== state.version) {
      key = { epoch: (sent?.[0] ?? 0) + 1, key: randomBytes(32) };
      await this.submit(mine.address, cm.makeSenderKey(mine.member, state, key));
    }
    const { statement } = cm.makeMessage(mine.member, key, mine.address, text, now, { badge });
    const result = await this.submit(mine.address, statement);
    return { ...result, id: b64e(p.statementHash(statement)) };
  }

  /** Replace this membership's member and box keys, keeping its seat (after a device was
   * revoked: it held the old ones). The new keys are in the vault before the host hears of
   * them; a rekey that did not reach the host is sent again by the next call
   * (Communities.rekey). */
  async rekey(mine) {
    const { reading } = await this.history(mine, { messages: false });
    if (reading === null) throw new p.IntegrityError("this node has not received the community yet; try again shortly", "not_ready");
    const current = cm.statusOf(reading.state, mine.member.public);
    if (current === "joined" || current === "pending") {
      const renewed = { ...mine, member: SigningKeyPair.generate(), box: BoxKeyPair.generate(), previous: [[mine.member, mine.box], ...mine.previous] };
      await this.commit([{ ...mine.record, data: membershipData(renewed) }]);
      mine = renewed;
    } else if (!mine.previous.length || current !== null) {
      throw new p.IntegrityError("this membership's key is no current member: it cannot be rekeyed", "not_a_member");
    }
    const event = cm.makeRekey(mine.previous[0][0], mine.member, mine.box.public, mine.address, this.patient.id.nodeId, this.now());
    return this.submit(mine.address, event);
  }

  /** Rekey every membership: what became of each (`rekeyed`, or the error). */
  async rekeyAll() {
    const out = {};
    for (const mine of await this.memberships()) {
      try {
        await this.rekey(mine);
        out[mine.address.text] = "rekeyed";
      } catch (exc) {
        out[mine.address.text] = `${exc.code || "error"}: ${exc.message}`;
      }
    }
    return out;
  }

  /** What a member sees: the members, the messages it can read, and those it cannot show. */
  async read(address) {
    const mine = await this.membership(address);
    const { reading } = await this.history(mine);
    const badges = new Map();
    const badged = reading ? reading.messages.filter((m) => m.badge !== null && m.badge !== undefined) : [];
    if (badged.length) {
      // Each badge checked here, against the issuer's keys and status list fetched from the
      // issuing node itself, never from the home node that relays the post (spec/crypto.md 12.8).
      const cache = { issuers: {}, lists: {}, failed: new Set() };
      for (const m of badged) {
        badges.set(m.seq, await badgeVerdict(m.badge, { community: mine.address.text, sender: m.sender, text: m.text, sent: m.sent },
          { now: this.now(), cache, fetchKeys: (node) => this.issuerKeys(node), fetchList: (url, node) => this.statusList(url, node) }));
      }
    }
    return { mine, reading, badges };
  }

  /** This account's clinician key (a `clinician` record in the vault, the CLI's: `rxfed
   * patient clinician key`), made and stored on first use with `create`, else null. */
  async clinicianKey({ create = false } = {}) {
    if (this.patient.state === null) await this.patient.load();
    for (const r of this.patient.state.records.filter((x) => x.kind === "clinician")) {
      try {
        return new SigningKeyPair(b64d(r.data.seed, 32));
      } catch {
        // a record that holds no key names none
      }
    }
    if (!create) return null;
    const key = SigningKeyPair.generate();
    await this.commit([{ id: hex(randomBytes(16)), kind: "clinician", created: timestamp(Date.now() + this.patient.node.offset * 1000),
      data: { seed: b64e(key.seed), did: didKey(key.public) } }]);
    await this.patient.load();
    return key;
  }

  /** A credential issuer's keys with their validity, from its own /.well-known/rxfed, as
   * this browser trusts them (js/nodekeys.mjs: pinned at the first reading, then followed
   * only by rotations the pinned keys signed, as the CLI's issuers.json), so keys swapped
   * later at the issuer's address make no badge verify; null when this page cannot reach it
   * (its node does not federate with the issuer, say) or it lists no key. */
  async issuerKeys(node) {
    const doc = await fetchPublic(this.hostUrl(node), "/.well-known/rxfed");
    if (doc === null || doc.node_id !== node) return null;
    let view;
    try {
      view = await trustNode(doc);
    } catch {
      return null; // a malformed document: no key, and no pin changed
    }
    const keys = view.trusted.slice(0, 16).map((k) => ({ key: k.key, validFrom: k.validFrom, validUntil: k.validUntil }));
    return keys.length ? keys : null;
  }

  /** A status list from the issuing node at the URL the credential names (the credential
   * check has made sure it is on that node). */
  async statusList(url, node) {
    const origin = this.hostUrl(node);
    const base = origin || nodeOrigin(node);
    if (!url.startsWith(`${base}/`)) return null;
    return fetchPublic(origin, url.slice(base.length));
  }

  /** Report message `seq` to the community's moderators as `category`, sealed to each of
   * them under a fresh key that names nobody (Communities.file_report). */
  async fileReport(address, seq, category) {
    const mine = await this.membership(address);
    const { reading } = await this.history(mine);
    const message = reading && reading.messages.find((m) => m.seq === seq);
    if (!message) throw new p.IntegrityError(`no message ${seq} you can read in ${address}`, "unknown_message");
    return this.submit(mine.address, cm.makeReport(reading.state, message, category, this.now(), SigningKeyPair.generate()));
  }

  /** The moderator queue: the reports sealed to this member, checked, with the actions a
   * moderator took on each message since (Communities.reports). */
  async reports(address) {
    const mine = await this.membership(address);
    const { reading } = await this.history(mine);
    if (!reading) return [];
    return reading.reports.map((r) => ({ ...r, actions: reading.actions.filter(([seq, a]) => seq > r.report
      && ((r.seq && a.seq === r.seq && (a.action === "hide" || a.action === "warn"))
        || (r.sender && b64e(a.member) === r.sender && (a.action === "remove" || a.action === "ban"))))
      .map(([seq, a]) => ({ seq, action: a.action, reason: a.reason })) }));
  }

  /** Forward the verified report of message `seq` to its sender's home node
   * (Communities.forward): the franking report and its category (the report's own unless
   * `category` says otherwise), signed by this moderator, sealed here to the home node's key
   * from that node's own key document as this browser trusts it (nodeKeys). The reporter is
   * named nowhere in it; the nodes relaying it read nothing. */
  async forward(address, seq, category = null) {
    const mine = await this.membership(address);
    const { rows, reading } = await this.history(mine);
    const found = (reading ? reading.reports : []).filter((r) => r.seq === seq && r.status === "verified");
    if (!found.length) throw new p.IntegrityError(`no verified report of message ${seq} in your queue`, "unknown_report");
    const report = found[found.length - 1];
    const chosen = category || report.category;
    const franking = cm.frankingReport({ text: report.text, frankingKey: report.frankingKey }, rows[seq - 1][1], rows[seq - 1][2]);
    const sender = reading.state.members.get(report.sender);
    if (!sender) throw new p.IntegrityError(`the sender of message ${seq} is no member`, "unknown_report");
    const keys = await this.nodeKeys(sender.node);
    // the key the node signs with now: one with no end, else the latest (Communities.forward)
    const key = keys.reduce((a, b) => ((a.validUntil === null) !== (b.validUntil === null)
      ? (a.validUntil === null ? a : b) : (b.validFrom > a.validFrom ? b : a))).key;
    const statement = cm.makeForward(mine.member, franking, chosen, this.now());
    const sealed = sealToNode(key, canonical(statement));
    const result = await this.patient.node.call("POST", "/v1/communities/forward",
      { community: mine.address.text, node: sender.node, sealed: b64e(sealed) }, this.patient.id.device);
    return { ...(result || {}), node: sender.node, member: report.sender, category: chosen };
  }

  /** A moderator's signed action (Communities.act): `member` a pseudonym, or null for the
   * sender of message `seq` (hide, warn). Checked against the fold before it is sent. */
  async act(address, action, member, { seq = 0, reason }) {
    const mine = await this.membership(address);
    const { rows, reading } = await this.history(mine, { messages: false });
    if (!reading) throw new p.IntegrityError("this node has not received the community yet", "not_ready");
    let target = member ? b64d(member, 32) : null;
    if (!target) {
      const event = rows[seq - 1] ? cm.parseEvent(rows[seq - 1][1]) : null;
      if (!event || event.type !== cm.MESSAGE) throw new p.IntegrityError(`event ${seq} is not a message`, "not_a_message");
      target = event.sender;
    }
    const statement = cm.makeAction(mine.member, mine.address, action, target, { seq, reason, now: this.now() });
    cm.step(reading.state, statement, reading.state.seq + 1);
    return this.submit(mine.address, statement);
  }

  /** A franking report of message `seq`: its text and franking key with the sender-signed
   * event and the host's stamp, for a moderator to check (Communities.report). */
  async report(address, seq) {
    const mine = await this.membership(address);
    const { rows, reading } = await this.history(mine);
    const message = reading && reading.messages.find((m) => m.seq === seq);
    if (!message) throw new p.IntegrityError(`no message ${seq} you can read in ${address}`, "unknown_message");
    return cm.frankingReport(message, rows[seq - 1][1], rows[seq - 1][2]);
  }
}
