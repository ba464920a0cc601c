// The patient's consent in the page: grant, share the signals derived here, list, revoke,
// and read the verified audit log, with the same requests and checks as
// rxfed/client/consent.py. Whatever the home node relays about another node (its keys, its
// acknowledgements) is checked under the keys that node publishes itself, fetched from it
// directly: the page's connect-src names the peers the home node federates with, and their
// /.well-known/rxfed answers CORS (spec/web.md §2).

import { canonical, loads } from "./canonical.mjs";
import * as c from "./consent.mjs";
import { b64e, equal } from "./encoding.mjs";
import { consentBundle } from "./fhir.mjs";
import { trustNode, untrustedError } from "./nodekeys.mjs";
import { IntegrityError, checkedDevices, openStatement } from "./protocol.mjs";
import { derive, validateSignal } from "./signals.mjs";
import { randomBytes } from "./sodium.mjs";
import * as store from "./store.mjs";

/** How long a grant runs when the patient names no end: 180 days (as the CLI). */
export const DEFAULT_DURATION = 180 * 86400;
export const ACK_VERIFIED = "verified", ACK_FORGED = "forged", ACK_UNCHECKED = "unchecked";
const SEQ_STEP = 2 ** 32;
const EMPTY = Object.freeze({ grants: [], tokens: [], heads: [] });

/** Where a node answers: its id is the authority of its public URL, HTTPS off loopback
 * (client/consent.py node_url). */
export function nodeOrigin(nodeId) {
  const host = (nodeId.match(/:/g) || []).length === 1 ? nodeId.slice(0, nodeId.lastIndexOf(":")) : nodeId;
  const octet = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
  const loopback = host === "localhost" || new RegExp(`^127(?:\\.${octet}){3}$`).test(host);
  return `${loopback ? "http" : "https"}://${nodeId}`;
}

/** The only documents the page reads from another origin: what a node publishes to anyone,
 * without credentials (spec/web.md §2, "Other nodes' keys"). */
export const PUBLIC_PATHS = Object.freeze(["/.well-known/rxfed", "/v1/communities"]);

/** `path` (one of PUBLIC_PATHS) of the node at `origin` ("" for the home node), parsed;
 * null when the node cannot be reached or answers no JSON (the caller says what that means). */
export async function fetchPublic(origin, path) {
  if (!PUBLIC_PATHS.includes(path)) throw new Error(`the page reads only public documents from other nodes, not ${path}`);
  try {
    const response = await fetch(`${origin}${path}`, { mode: "cors", credentials: "omit", cache: "no-store", redirect: "error" });
    const doc = loads(new Uint8Array(await response.arrayBuffer()));
    return response.ok ? doc : null;
  } catch {
    return null;
  }
}

/** A node's /.well-known/rxfed, fetched from the node itself, never through the home node,
 * with its keys as this browser trusts them (`js/nodekeys.mjs`: pinned at first contact,
 * then only keys reached by rotations the pinned ones signed): {doc, keys, untrusted}. */
async function fetchDocument(url, nodeId) {
  const doc = await fetchPublic(url, "/.well-known/rxfed");
  if (doc === null) throw new c.ConsentError(`cannot reach ${nodeId} for its keys just now`, "unavailable");
  if (doc.node_id !== nodeId) throw new IntegrityError(`${url || "this node"} does not say it is ${nodeId}`);
  const { trusted, untrusted } = await trustNode(doc);
  return { doc, keys: trusted, untrusted };
}

/** What a node offers (grants.offered_plugins): the plugins that receive signals, or null. */
function offered(doc) {
  if (!Array.isArray(doc.plugins)) return null;
  return doc.plugins.filter((p) => p && typeof p.name === "string").slice(0, 200).map((p) => ({
    name: p.name, reads: Array.isArray(p.reads) ? p.reads.filter((x) => typeof x === "string") : [],
    purposes: Array.isArray(p.purposes) ? p.purposes.filter((x) => typeof x === "string") : [],
  }));
}

const accepts = (plugin, kind, purpose) => plugin.reads.includes(kind) && plugin.purposes.includes(purpose);

/** The plugins a grant would reach on each node, refused when the named plugin is not there
 * or no plugin reads the kind for the purpose (grants.grant_receivers). */
export function grantReceivers(recipient, kind, purpose, offers) {
  const receivers = {};
  for (const [node, plugins] of Object.entries(offers)) {
    receivers[node] = plugins === null ? null : plugins.filter((p) => accepts(p, kind, purpose) && c.covers(recipient, node, p.name)).map((p) => p.name);
  }
  if (recipient.kind === "plugin") {
    const plugins = offers[recipient.node];
    if (plugins == null) return receivers;
    const named = plugins.find((p) => p.name === recipient.plugin);
    if (!named) throw new c.ConsentError(`${recipient.node} has no plugin “${recipient.plugin}”`, "unknown_plugin");
    if (!accepts(named, kind, purpose)) {
      throw new c.ConsentError(`plugin “${recipient.plugin}” on ${recipient.node} does not read ${kind} for ${purpose}`, "unknown_plugin");
    }
    return receivers;
  }
  const found = Object.values(receivers);
  if (found.length && found.every((x) => x !== null && x.length === 0)) {
    throw new c.ConsentError(`no plugin on ${Object.keys(offers).sort().join(", ")} reads ${kind} for ${purpose}`, "no_recipient");
  }
  return receivers;
}

/** A UTC date YYYY-MM-DD of a Unix time. */
export const utcDate = (unix) => new Date(unix * 1000).toISOString().slice(0, 10);

export class PageConsent {
  /** `patient`: a loaded client.mjs Patient (its state holds the epoch secrets and records). */
  constructor(patient) {
    this.patient = patient;
    this.tokens = new Map(); // token statements as list() last parsed them, by id
    this.documents = new Map(); // node id -> {doc, keys}, for one view of the page
  }

  now() {
    return this.patient.node.now();
  }

  call(method, path, body = null) {
    return this.patient.node.call(method, path, body, this.patient.id.device);
  }

  /** The pseudonym key for (node, purpose, plugin): the current epoch's, or the earlier
   * epoch's whose key `subjectKey` is (tokens made before a rotation keep theirs). */
  key(node, purpose, plugin, subjectKey = null) {
    const label = c.pseudonymLabel(node, purpose, plugin);
    const ring = this.patient.state.secrets.pseudonyms;
    const current = c.pseudonymKey(ring.current, label);
    if (subjectKey === null || equal(current.public, subjectKey)) return current;
    for (const secret of ring.keys.values()) {
      const key = c.pseudonymKey(secret, label);
      if (equal(key.public, subjectKey)) return key;
    }
    return current;
  }

  async remembered() {
    return { ...EMPTY, ...((await store.get("consent")) || {}) };
  }

  async remember(change) {
    await store.putAll({ consent: { ...(await this.remembered()), ...change } });
  }

  /** A node's keys and document, from the node itself (cached for this view). */
  async document(node) {
    if (!this.documents.has(node)) {
      const url = node === this.patient.id.nodeId ? "" : nodeOrigin(node);
      this.documents.set(node, await fetchDocument(url, node));
    }
    return this.documents.get(node);
  }

  /** A node's document when every key it lists is one this browser trusts for it; a node
   * that changed keys without a rotation its trusted keys signed is refused (untrusted_key). */
  async trusted(node) {
    const found = await this.document(node);
    if (found.untrusted.length) throw untrustedError(node, found.untrusted);
    return found;
  }

  async offers(nodes) {
    const docs = await Promise.all(nodes.map((n) => this.trusted(n)));
    return Object.fromEntries(nodes.map((n, i) => [n, offered(docs[i].doc)]));
  }

  /** What the page would share under a grant of `kind`: derived from the decrypted records
   * here, nothing sent; null for a kind only a plugin in Python derives. */
  preview(kind) {
    return derive(kind, this.patient.state.records, utcDate(this.now()));
  }

  /** The kinds and nodes a grant can reach, each node with what it says it offers. */
  async recipients() {
    const reachable = await this.call("GET", "/v1/consent/nodes");
    const ids = reachable.nodes.map((n) => n.node_id);
    const offers = {}, refused = {};
    for (const node of ids) {
      try {
        offers[node] = offered((await this.trusted(node)).doc);
      } catch (exc) {
        offers[node] = undefined; // unreachable from this browser, or refused
        if (exc.code === "untrusted_key") refused[node] = exc.message;
      }
    }
    return { home: reachable.home, kinds: reachable.kinds.map((k) => k.name).sort(),
      nodes: ids.map((node) => ({ node, plugins: offers[node], ...(refused[node] ? { refused: refused[node] } : {}) })) };
  }

  /** Grant `kind` for `purpose` to `recipient` and (with `share`) share at once (Consent.grant). */
  async grant(kind, purpose, recipientText, { until = null, nodes = null, share = true } = {}) {
    const now = this.now();
    const recipient = c.parseRecipient(recipientText);
    c.checkPurpose(purpose);
    if (until !== null && until <= now) throw new c.ConsentError("a grant ends in the future", "bad_date");
    let notAfter = c.endOfDay(until ?? now + DEFAULT_DURATION);
    if (notAfter - now > c.MAX_DURATION) notAfter -= c.DAY;
    if (notAfter <= now || notAfter - now > c.MAX_DURATION) throw new c.ConsentError("a grant ends in the future and runs for at most a year", "bad_date");
    const reachable = await this.call("GET", "/v1/consent/nodes");
    const known = reachable.kinds.map((k) => k.name);
    if (!known.includes(kind)) throw new c.ConsentError(`unknown signal kind ${kind} (known: ${known.sort().join(", ")})`, "unknown_kind");
    const federated = reachable.nodes.map((n) => n.node_id);
    const reached = [...new Set(c.recipientNodes(recipient, federated))].sort();
    for (const node of reached) {
      if (!federated.includes(node)) throw new c.ConsentError(`${node} is not a node your home node federates with`, "unknown_node");
    }
    if (nodes !== null && (nodes.length !== reached.length || nodes.some((n) => !reached.includes(n)))) {
      throw new c.ConsentError(`the grant would reach other nodes than you named: ${reached.join(", ")}`, "nodes_differ");
    }
    const receivers = grantReceivers(recipient, kind, purpose, await this.offers(reached));
    const home = this.patient.id.nodeId;
    const tokens = reached.map((node) => c.makeToken(this.key(node, purpose, recipient.plugin), {
      node, home, kind, purpose, recipient, nodes: reached, issued: now, notAfter,
    }));
    const grant = c.makeGrant(this.patient.id.device, {
      patient: this.patient.id.patient, device: this.patient.device, kind, purpose, recipient, issued: now, notAfter,
      nodes: reached, tokens: tokens.map((t) => t.body.id),
    });
    const result = await this.call("POST", "/v1/consent/grants", { grant, tokens });
    const out = { grant: result.grant, kind, purpose, recipient: recipient.text, not_after: notAfter, nodes: reached, receivers, shared: [] };
    if (share) out.shared = await this.share(result.grant);
    return out;
  }

  /** (device, grant body, active) when a device of this patient whose certificate verifies
   * signed the grant the node lists, and it says what the listing says; else null. */
  signedBy(listed, devices) {
    try {
      const body = listed.statement.body;
      const found = devices.get(body.device);
      if (!found) return null;
      openStatement(listed.statement, c.GRANT, found.cert.signKey, "grant");
      const tokens = new Set(listed.tokens.map((t) => t.token));
      if (body.id !== listed.grant || body.patient !== this.patient.id.patient || body.kind !== listed.kind
          || body.purpose !== listed.purpose || body.recipient !== listed.recipient || !body.tokens.every((t) => tokens.has(t))) {
        return null;
      }
      return { device: body.device, body, active: found.active };
    } catch {
      return null;
    }
  }

  /** The token as listed, if this browser's keys made it for this grant's scope and node. */
  mine(grant, listed) {
    let token;
    try {
      token = c.parseToken(listed.statement);
    } catch {
      return null;
    }
    this.tokens.set(token.id, token);
    let recipient;
    try {
      recipient = c.parseRecipient(grant.recipient);
    } catch {
      return null;
    }
    if (token.id !== listed.token || token.node !== listed.node || token.kind !== grant.kind || token.purpose !== grant.purpose
        || token.recipient.text !== recipient.text
        || !equal(this.key(token.node, token.purpose, recipient.plugin, token.subjectKey).public, token.subjectKey)) {
      return null;
    }
    return token;
  }

  async checkAck(token, revocation, ack) {
    let keys;
    try {
      keys = (await this.document(token.node)).keys.map((k) => k.key);
    } catch {
      return ACK_UNCHECKED;
    }
    try {
      c.checkTokenRevocation(revocation, token.id, token.subjectKey);
      c.checkAck(ack, { token: token.id, node: token.node, revocation, nodeKeys: keys });
    } catch {
      return ACK_FORGED;
    }
    return ACK_VERIFIED;
  }

  /** Every grant as a FHIR R4B Consent resource, in a collection Bundle, the one `rxfed
   * patient consent export` writes (Consent.fhir_bundle). */
  async fhirBundle() {
    return consentBundle(this.patient.id.patient, await this.list());
  }

  /** Every grant with its status from what the patient signed and did, where each token
   * went, and who acknowledged a revocation under its own published keys (Consent.list). */
  async list() {
    const now = this.now();
    const { chain, account } = this.patient.state;
    const devices = checkedDevices(chain, account.devices);
    const here = await this.remembered();
    const out = [];
    for (const g of (await this.call("GET", "/v1/consent/grants")).grants) {
      const signed = this.signedBy(g, devices);
      const mine = new Map();
      if (signed !== null) {
        for (const t of g.tokens) {
          const token = this.mine(g, t);
          if (token !== null) mine.set(t.token, token);
        }
      }
      const named = new Set([...mine.values()].map((t) => JSON.stringify(t.nodes)));
      const signedNodes = named.size === 1 ? JSON.parse([...named][0]) : null;
      const tokens = [];
      for (const t of g.tokens) {
        const token = mine.get(t.token) ?? null;
        const ack = g.revoked && token !== null && t.ack != null ? await this.checkAck(token, t.revocation, t.ack) : null;
        tokens.push({ token: t.token, node: t.node, shared: t.shared, seq: t.seq ?? null,
          acknowledged: ack === ACK_VERIFIED ? t.acknowledged : null, ack, verified: token !== null,
          named: token !== null && signedNodes !== null && signedNodes.includes(token.node) });
      }
      const notAfter = signed ? signed.body.not_after : g.not_after;
      const revoked = g.revoked || here.grants.includes(g.grant);
      const status = signed === null ? "foreign" : revoked ? "revoked" : notAfter <= now ? "expired" : "live";
      out.push({ grant: g.grant, kind: g.kind, purpose: g.purpose, recipient: g.recipient, not_after: notAfter, created: g.created,
        revoked: g.revoked, status, tokens, device: signed ? signed.device : null, device_active: Boolean(signed && signed.active),
        nodes: signedNodes, acknowledged: tokens.filter((t) => t.ack === ACK_VERIFIED).map((t) => t.node).sort(),
        pending: tokens.filter((t) => g.revoked && t.ack !== ACK_VERIFIED).map((t) => t.node).sort(),
        forged: tokens.filter((t) => t.ack === ACK_FORGED).map((t) => t.node).sort() });
    }
    return out;
  }

  /** The newest key without an end date of a node: what deliveries are sealed to. */
  async sealKey(node) {
    const { keys } = await this.trusted(node);
    return keys.reduce((a, b) => {
      const rank = (k) => [k.validUntil === null ? 1 : 0, k.validFrom];
      const [x, y] = [rank(a), rank(b)];
      return y[0] > x[0] || (y[0] === x[0] && y[1] > x[1]) ? b : a;
    }).key;
  }

  /** Send the current signals under every live grant (or one), each delivery signed by the
   * token's pseudonym key and sealed to its node's own key (Consent.share). */
  async share(grantId = null) {
    const grants = (await this.list()).filter((g) => g.status === "live" && (grantId === null || g.grant === grantId));
    if (grantId !== null && !grants.length) throw new c.ConsentError("no live grant with that id", "unknown_grant");
    const revokedHere = (await this.remembered()).tokens;
    const kinds = grants.length ? new Map((await this.call("GET", "/v1/consent/nodes")).kinds.map((k) => [k.name, k])) : new Map();
    const out = [];
    for (const grant of grants) {
      const target = c.parseRecipient(grant.recipient);
      for (const token of grant.tokens) {
        const skip = (reason) => out.push({ grant: grant.grant, node: token.node, sent: false, reason });
        if (!grant.device_active) {
          skip("made by a device that is no longer active: grant again (not sent)");
          continue;
        }
        const parsed = this.tokens.get(token.token);
        if (parsed && (revokedHere.includes(token.token) || !equal(this.key(parsed.node, parsed.purpose, target.plugin).public, parsed.subjectKey))) {
          skip("this token is revoked or of an earlier identity epoch (not sent)");
          continue;
        }
        if (!token.verified || !token.named) {
          skip(!token.verified ? "this token was not made by this browser's account (not sent)" : "this token's node is not one the grant names (not sent)");
          continue;
        }
        let sealKey;
        try {
          sealKey = await this.sealKey(parsed.node);
        } catch (exc) {
          skip(`cannot get the node's key: ${exc.message}`);
          continue;
        }
        const key = this.key(parsed.node, parsed.purpose, target.plugin);
        const bodies = this.preview(parsed.kind);
        if (bodies === null) {
          skip(`${parsed.kind} is derived by a plugin this page cannot run: share it with the CLI (not sent)`);
          continue;
        }
        try {
          // validated before anything leaves the page, as the CLI does (spec/signals.md)
          if (!kinds.has(parsed.kind)) throw new Error(`the home node no longer knows ${parsed.kind}`);
          bodies.forEach((body) => validateSignal(kinds.get(parsed.kind), body));
        } catch (exc) {
          skip(`a signal does not fit its kind: ${exc.message} (not sent)`);
          continue;
        }
        const delivery = c.newId();
        const last = token.seq !== null ? token.seq : token.shared ? Date.now() + this.patient.node.offset * 1000 + SEQ_STEP : 0;
        const seq = c.nextSeq(last, randomBytes(4));
        const signed = c.signDelivery(key, { token: parsed.id, node: parsed.node, delivery, seq,
          signals: bodies.map((body) => ({ kind: parsed.kind, body })) });
        const result = await this.call("POST", "/v1/consent/signals", {
          token: parsed.id, delivery, seq, count: bodies.length, sealed: b64e(c.sealToNode(sealKey, canonical(signed))),
        });
        out.push({ grant: grant.grant, node: token.node, sent: true, signals: bodies.length, queued: result.queued ?? false,
          plugins: result.plugins ?? [] });
      }
    }
    return out;
  }

  /** Revoke a grant: the device's revocation for the home node, each token's for its
   * recipient, remembered here before it is sent (Consent.revoke). */
  async revoke(grantId) {
    const grant = (await this.call("GET", "/v1/consent/grants")).grants.find((g) => g.grant === grantId);
    if (!grant) throw new c.ConsentError("no such grant", "unknown_grant");
    const now = this.now();
    const target = c.parseRecipient(grant.recipient);
    const tokens = {};
    for (const t of grant.tokens) {
      const token = c.parseToken(t.statement);
      tokens[t.token] = c.revokeToken(this.key(token.node, token.purpose, target.plugin, token.subjectKey), t.token, c.day(now));
    }
    const here = await this.remembered();
    await this.remember({ grants: [...new Set([...here.grants, grantId])], tokens: [...new Set([...here.tokens, ...Object.keys(tokens)])] });
    return this.call("POST", "/v1/consent/revoke", { grant: grantId, revocation: c.revokeGrant(this.patient.id.device, grantId, now), tokens });
  }

  /** After an identity rotation: every live grant whose tokens were made under an earlier
   * epoch's pseudonym secret (which a revoked device knew) is granted again under the
   * current one, then revoked; one made by a device no longer active is only revoked
   * (Consent.renew). Call with the patient's state loaded at the new epoch. */
  async renew() {
    const out = [];
    for (const grant of await this.list()) {
      if (grant.status !== "live") continue;
      const target = c.parseRecipient(grant.recipient);
      const stale = grant.tokens.filter((t) => t.verified
        && !equal(this.key(t.node, grant.purpose, target.plugin).public, this.tokens.get(t.token).subjectKey));
      if (!stale.length && grant.device_active) continue;
      try {
        if (!grant.device_active) {
          await this.revoke(grant.grant);
          out.push({ grant: grant.grant, revoked: "made by a device that is no longer active" });
          continue;
        }
        // grant first: if the new grant is refused, the old one still stands
        const again = await this.grant(grant.kind, grant.purpose, grant.recipient, { until: grant.not_after - 1, nodes: grant.nodes });
        await this.revoke(grant.grant);
        out.push({ grant: grant.grant, renewed: again.grant });
      } catch (exc) {
        out.push({ grant: grant.grant, error: `${exc.code || "error"}: ${exc.message}` });
      }
    }
    return out;
  }

  /** The audit log, verified against the head the home node signed and every head this
   * browser saw; each acknowledgement it records checked under the recipient's own keys. */
  async audit() {
    const doc = await this.call("GET", "/v1/consent/audit");
    const home = await this.document(this.patient.id.nodeId);
    const seen = (await this.remembered()).heads;
    const head = c.verifyAudit(this.patient.id.patient, doc.entries, doc.head, home.keys.map((k) => k.key), seen);
    const top = seen[seen.length - 1];
    if (!top || top.seq !== head.seq || top.hash !== head.hash) await this.remember({ heads: [...seen, head].slice(-1000) });
    const acknowledgements = {};
    const acked = doc.entries.filter((e) => e.event === "acknowledged");
    if (acked.length) {
      const grants = (await this.call("GET", "/v1/consent/grants")).grants;
      const byToken = new Map(grants.flatMap((g) => g.tokens.map((t) => [t.token, [g, t]])));
      for (const entry of acked) {
        const body = entry.ack && typeof entry.ack === "object" ? entry.ack.body : null;
        const found = body && typeof body.token === "string" ? byToken.get(body.token) : undefined;
        const token = found ? this.mine(found[0], found[1]) : null;
        if (token === null || found[0].grant !== entry.grant || token.node !== entry.node || !found[0].revoked) {
          acknowledgements[entry.seq] = ACK_FORGED;
          continue;
        }
        acknowledgements[entry.seq] = await this.checkAck(token, found[1].revocation, entry.ack);
      }
    }
    return { entries: doc.entries, head, acknowledgements };
  }
}
