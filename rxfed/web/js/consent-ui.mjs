// The consent view: what a grant would share (derived here), grant, the grants with who
// acknowledged a revocation, revoke, the verified audit log, and the grants as a FHIR
// Consent download. The DOM only, text nodes
// only; the work is in sharing.mjs. app.mjs calls attach() once the vault is open and
// detach() when the page locks.

import { localDate } from "./records.mjs";
import { PageConsent } from "./sharing.mjs";
import * as ui from "./ui.mjs";

const $ = (id) => document.getElementById(id);
let consent = null;

const day = (unix) => new Date(unix * 1000).toISOString().slice(0, 10);
const KIND_NAMES = {
  "diagnosis.category": "your diagnosis categories (ICD-10, three characters)",
  "treatment.outcome": "how your treatments went (banded scores)",
  "symptom.trend": "your symptoms' trends over four weeks",
  "demographics.band": "your age band, sex and country",
};

const say = ui.statusLine("consent");

function item(text, extra = {}) {
  const li = document.createElement("li");
  li.textContent = text;
  Object.assign(li.dataset, extra);
  return li;
}

/** One signal as a patient reads it: its fields, in order, as `field: value`. */
export function signalText(body) {
  return Object.entries(body).map(([k, v]) => `${k.replace(/_/g, " ")}: ${Array.isArray(v) ? v.join(", ") : v}`).join("; ");
}

function showPreview(kind, list) {
  const bodies = consent.preview(kind);
  if (bodies === null) {
    list.replaceChildren(item("This kind is derived by a plugin the page cannot run: use the CLI to share it."));
  } else if (!bodies.length) {
    list.replaceChildren(item("Nothing: your records give no signal of this kind yet."));
  } else {
    list.replaceChildren(...bodies.map((b) => item(signalText(b), { signal: kind })));
  }
}

const guarded = (button, what, work) => ui.guarded(button, say, what, work);

function ackText(g) {
  if (g.status !== "revoked") return "";
  const parts = [];
  if (g.acknowledged.length) parts.push(`deleted, signed by ${g.acknowledged.join(", ")}`);
  const waiting = g.pending.filter((n) => !g.forged.includes(n));
  if (waiting.length) parts.push(`waiting for ${waiting.join(", ")} to confirm`);
  if (g.forged.length) parts.push(`${g.forged.join(", ")}: the confirmation is not signed by that node — it may still hold your signals`);
  return parts.length ? ` — ${parts.join("; ")}` : "";
}

async function renderGrants() {
  const grants = await consent.list();
  $("grants").replaceChildren(...grants.map((g) => {
    const li = document.createElement("li");
    li.dataset.grant = g.grant;
    li.dataset.status = g.status;
    const head = document.createElement("div");
    head.className = "meta";
    const where = g.nodes ? g.nodes.join(", ") : g.tokens.map((t) => t.node).join(", ");
    head.textContent = `${g.kind} for ${g.purpose}, to ${g.recipient} (${where}) · ${g.status}`
      + (g.status === "live" ? ` until ${day(g.not_after)}` : "") + ackText(g);
    if (g.forged.length || g.status === "foreign") li.className = "error";
    li.append(head);
    if (g.status === "foreign") {
      li.append(item("No device of yours signed this grant: the node lists something you never agreed to."));
    }
    const shares = document.createElement("ul");
    shares.setAttribute("aria-label", `What grant ${g.grant.slice(0, 8)} shares`);
    showPreview(g.kind, shares);
    li.append(shares);
    if (g.status === "live") {
      const revoke = document.createElement("button");
      revoke.type = "button";
      revoke.className = "revoke";
      revoke.textContent = `Stop sharing ${g.kind}`;
      revoke.addEventListener("click", () => guarded(revoke, "Revoking…", async () => {
        await consent.revoke(g.grant);
        await renderGrants();
        say("Revoked: your home node stops at once; each recipient confirms when it has deleted what it held.");
        document.body.dataset.revoked = String(Number(document.body.dataset.revoked || 0) + 1);
      }));
      li.append(revoke);
    }
    return li;
  }));
  $("grants-empty").hidden = grants.length > 0;
  return grants;
}

async function renderRecipients() {
  const { kinds, nodes } = await consent.recipients();
  const kind = $("g-kind");
  kind.replaceChildren(...kinds.map((k) => {
    const o = document.createElement("option");
    o.value = k;
    o.textContent = KIND_NAMES[k] ? `${k}: ${KIND_NAMES[k]}` : k;
    return o;
  }));
  const to = $("g-to");
  const options = [["federation", "every node your home node federates with"]];
  const purposes = new Set();
  for (const { node, plugins, refused } of nodes) {
    options.push([`node:${node}`, `node ${node}`]);
    for (const p of plugins || []) {
      options.push([`plugin:${node}/${p.name}`, `${p.name} on ${node} (reads ${p.reads.join(", ") || "nothing"} for ${p.purposes.join(", ") || "no purpose"})`]);
      p.purposes.forEach((x) => purposes.add(x));
    }
    if (plugins === undefined) {
      options.push([`node:${node}`, `node ${node} (${refused ? "refused: it changed its keys without a signed rotation" : "this browser cannot reach it now"})`]);
    }
  }
  to.replaceChildren(...options.map(([value, text]) => {
    const o = document.createElement("option");
    o.value = value;
    o.textContent = text;
    return o;
  }));
  $("g-purposes").replaceChildren(...[...purposes].sort().map((p) => {
    const o = document.createElement("option");
    o.value = p;
    return o;
  }));
}

async function renderAudit() {
  const { entries, head, acknowledgements } = await consent.audit();
  const forged = Object.values(acknowledgements).filter((s) => s === "forged").length;
  $("audit").replaceChildren(...entries.map((e) => {
    const what = [e.kind, e.purpose, e.recipient, e.node, e.plugin, e.count !== undefined ? `${e.count} signals` : null].filter(Boolean);
    const ack = acknowledgements[e.seq];
    const li = item(`${e.seq}. ${new Date(e.time * 1000).toISOString().slice(0, 16).replace("T", " ")} ${e.event}`
      + (what.length ? `: ${what.join(", ")}` : "")
      + (ack === "verified" ? " (signed by that node)" : ack === "forged" ? " — NOT signed by that node" : ack === "unchecked" ? " (that node cannot be reached to check)" : ""),
    { event: e.event });
    if (ack === "forged") li.className = "error";
    return li;
  }));
  $("audit-result").textContent = forged
    ? `The log is intact (${head.seq} entries), but ${forged} acknowledgement${forged > 1 ? "s are" : " is"} not signed by the node named.`
    : `Checked: ${head.seq} entries, each chained to the head your home node signed, and consistent with what this browser saw before.`;
  document.body.dataset.audit = forged ? "forged" : "verified";
}

export async function attach(patient) {
  consent = new PageConsent(patient);
  $("consent").hidden = false;
  await guarded(null, "Loading your consent…", async () => {
    await renderRecipients();
    await renderGrants();
    say("");
  });
  document.body.dataset.consent = "ready";
}

export function detach() {
  consent = null;
  for (const id of ["grants", "audit", "g-preview-list", "g-kind", "g-to", "g-purposes"]) $(id).replaceChildren();
  $("audit-result").textContent = "";
  $("consent").hidden = true;
  say("");
  delete document.body.dataset.consent;
}

$("g-preview").addEventListener("click", () => {
  if (consent === null) return;
  showPreview($("g-kind").value, $("g-preview-list"));
  $("g-preview-h").hidden = false;
});

$("grant-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (consent === null) return;
  const form = ev.target;
  guarded(form.querySelector("button[type=submit]"), "Granting…", async () => {
    const out = await consent.grant($("g-kind").value, $("g-purpose").value.trim(), $("g-to").value);
    const sent = out.shared.filter((s) => s.sent);
    const receivers = Object.entries(out.receivers).map(([node, names]) => `${node}: ${names === null ? "not said" : names.join(", ") || "no plugin"}`);
    await renderGrants();
    say(`Granted until ${day(out.not_after)}; shared ${sent.reduce((n, s) => n + s.signals, 0)} signals with ${sent.map((s) => s.node).join(", ") || "nobody yet"} (who receives them: ${receivers.join("; ")}).`);
    document.body.dataset.granted = String(Number(document.body.dataset.granted || 0) + 1);
  });
});

$("audit-load").addEventListener("click", (ev) => {
  if (consent === null) return;
  guarded(ev.target, "Checking the audit log…", async () => {
    await renderAudit();
    say("");
  });
});

$("grants-refresh").addEventListener("click", (ev) => {
  if (consent === null) return;
  guarded(ev.target, "Checking your grants…", async () => {
    consent.documents.clear(); // fetch each recipient's keys again
    await renderGrants();
    say("");
  });
});

$("grants-export").addEventListener("click", (ev) => {
  if (consent === null) return;
  guarded(ev.target, "Exporting your grants…", async () => {
    const bundle = await consent.fhirBundle();
    const text = JSON.stringify(bundle, null, 2) + "\n"; // as the CLI writes it
    const url = URL.createObjectURL(new Blob([text], { type: "application/fhir+json" }));
    const link = document.createElement("a");
    link.href = url;
    link.download = `rxfed-consent-${localDate()}.json`;
    link.textContent = "download";
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
    const consents = bundle.entry.length - 1;
    say(`Exported ${consents} FHIR Consent resource${consents === 1 ? "" : "s"}.`);
  });
});
