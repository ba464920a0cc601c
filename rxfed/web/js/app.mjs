// The page: which view shows, forms, and what the patient is told. All cryptography is in
// client.mjs and below; this module only handles the DOM, writing text nodes only (never markup from data).

import { Invalid, NodeRefused, Patient, checkNewPassphrase, hasProfile, timings } from "./client.mjs";
import * as communitiesView from "./community-ui.mjs";
import * as consentView from "./consent-ui.mjs";
import * as matchesView from "./matches-ui.mjs";
import * as devicesView from "./devices-ui.mjs";
import * as nodeKeysView from "./nodekeys-ui.mjs";
import { KIND_NAMES, byClinicalDate, clinicalDate, summary } from "./records.mjs";
import * as recordsUi from "./records-ui.mjs";
import { ready } from "./sodium.mjs";

const $ = (id) => document.getElementById(id);
const VIEWS = ["loading", "welcome", "recovery", "link", "unlock", "journal"];
let patient = null;
let pendingPatient = null;
window.rxfedTimings = timings;

function show(view) {
  for (const v of VIEWS) $(v).hidden = v !== view;
  $("lock").hidden = view !== "journal";
  const heading = $(`${view}-h`);
  if (heading) heading.focus();
}

function status(text) {
  $("status").textContent = text;
}

function error(exc) {
  const box = $("error");
  if (exc === null) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  let message = exc.message || String(exc);
  if (exc instanceof NodeRefused && exc.code === "revoked_device") {
    message = "This browser was removed from your account (revoked). Use your recovery code to get back in.";
  } else if (exc instanceof NodeRefused) message = `The node refused: ${message}`;
  else if (exc.code === "wrong_passphrase") message = "That passphrase does not open this browser's keys.";
  else if (!(exc instanceof Invalid) && !(exc instanceof NodeRefused)) message = `Something is wrong: ${message}`;
  box.textContent = message;
  box.hidden = false;
  status("");
}

async function busy(form, what, work, button = form.querySelector("button[type=submit]")) {
  button.disabled = true;
  error(null);
  status(what);
  try {
    await work();
  } catch (exc) {
    error(exc);
  } finally {
    button.disabled = false;
  }
}

async function storageNotice() {
  let persisted = false;
  try {
    persisted = navigator.storage && (await navigator.storage.persisted() || await navigator.storage.persist());
  } catch {
    persisted = false;
  }
  $("storage").textContent = persisted
    ? "This browser has agreed to keep your keys. If you ever clear this site's data, your recovery code brings your journal back."
    : "This browser may clear your keys: when it runs low on space, or when you clear browsing data or use a private window. "
      + "Your journal stays safe on the node, and your recovery code is the way back to it. Keep the code somewhere safe.";
}

function entryItem(r) {
  const li = document.createElement("li");
  li.dataset.kind = r.kind;
  const meta = document.createElement("div");
  meta.className = "meta";
  const said = summary(r);
  const kind = r.kind === "journal" ? [] : [KIND_NAMES[r.kind] || r.kind];
  meta.textContent = [clinicalDate(r) || "no date", ...kind, ...(said ? [said] : [])].join(" · ");
  li.append(meta);
  if (r.kind === "journal" && r.data.note) {
    const note = document.createElement("div");
    note.className = "note";
    note.textContent = r.data.note;
    li.append(note);
  }
  recordsUi.decorateEntry(li, r);
  return li;
}

function render(records) {
  // every record but the community memberships (their keys), as `rxfed patient show`
  const shown = byClinicalDate(records.filter((r) => r.kind !== "community"));
  $("entries").replaceChildren(...shown.map(entryItem));
  $("empty").hidden = shown.length > 0;
  recordsUi.show(records);
}

function day(unix) {
  return new Date(unix * 1000).toISOString().slice(0, 10);
}

function renderDevices() {
  const short = (id) => id.slice(0, 8);
  $("devices").replaceChildren(...patient.devices().map((d) => {
    const li = document.createElement("li");
    const by = d.enrolledBy === null ? "" : d.enrolledBy === "registration" ? ", made when you registered"
      : d.enrolledBy === "recovery" ? ", added with the recovery code"
      : d.enrolledBy === patient.device ? ", added by this browser" : `, added by device ${short(d.enrolledBy)}`;
    li.textContent = `${d.current ? `This browser (${short(d.device)})` : `Device ${short(d.device)}`}${by}, since ${day(d.created)}`
      + (d.revoked ? `, removed ${day(d.revoked)}` : "") + (d.verified ? "" : " — its certificate does not verify: treat it as unknown");
    if (!d.verified) li.className = "error";
    li.dataset.device = d.device;
    return li;
  }));
}

async function opened(p) {
  patient = p;
  render(await patient.load());
  renderDevices();
  devicesView.attach(patient, renderDevices);
  show("journal");
  status("Unlocked.");
  performance.mark("rxfed-unlocked");
  document.body.dataset.state = "unlocked";
  await storageNotice();
  // each with its own status line; the journal does not wait for them
  communitiesView.attach(patient);
  consentView.attach(patient);
  nodeKeysView.attach();
  matchesView.attach(patient);
}

$("register-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const form = ev.target;
  busy(form, "Making your keys…", async () => {
    checkNewPassphrase(form.passphrase.value, form.again.value);
    const { patient: p, code } = await Patient.register(form.passphrase.value, { invite: form.invite.value.trim() || null });
    form.reset();
    pendingPatient = p;
    $("recovery-code").textContent = code;
    show("recovery");
    status("Your account is made.");
  });
});

function showLink(p) {
  patient = p;
  $("link-code").textContent = p.linkCode;
  show("link");
  document.body.dataset.state = "linking";
}

$("link-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const form = ev.target;
  busy(form, "Making this browser's keys…", async () => {
    checkNewPassphrase(form.passphrase.value, form.again.value);
    const p = await Patient.requestLink(form.passphrase.value);
    form.reset();
    showLink(p);
    status("Waiting for a device of yours to add this browser.");
  });
});

$("link-copy").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText($("link-command").textContent);
    status("The command is copied.");
  } catch {
    status("Copying is not allowed here: select the command and copy it.");
  }
});

$("confirm-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const form = ev.target;
  busy(form, "Checking…", async () => {
    await patient.finishLink(form.confirm.value);
    form.reset();
    $("link-code").textContent = "";
    await opened(patient);
  });
});

$("recovery-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  busy(ev.target, "Opening your journal…", async () => {
    $("recovery-code").textContent = ""; // shown once
    const p = pendingPatient;
    pendingPatient = null;
    await opened(p);
  });
});

$("unlock-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const form = ev.target;
  const t0 = performance.now();
  busy(form, "Unlocking…", async () => {
    const p = await Patient.unlock(form.passphrase.value);
    form.reset();
    if (!p.linked) {
      showLink(p);
      status("This browser still waits to be linked.");
      return;
    }
    await opened(p);
    timings.unlock_ms = Math.round(performance.now() - t0); // Argon2id included (timings.argon2_ms)
  });
});

$("journal-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const form = ev.target;
  busy(form, "Saving…", async () => {
    const symptoms = [1, 2, 3].map((i) => [form[`s${i}`].value, form[`v${i}`].value]);
    const record = await patient.addJournal({ symptoms, feeling: form.feeling.value, note: form.note.value, date: form.date.value });
    form.reset();
    render(patient.state.records);
    status(`Saved the entry of ${record.data.date}.`);
    document.body.dataset.saved = String(Number(document.body.dataset.saved || 0) + 1);
  });
});

$("treatment-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const form = ev.target;
  busy(form, "Saving…", async () => {
    const field = (id) => $(`t-${id}`).value;
    const record = await patient.addTreatment({
      name: field("name"), dose: field("dose"), started: field("started"), stopped: field("stopped"),
      efficacy: field("efficacy"), sideEffects: field("effects").split(","), adherence: field("adherence"),
    });
    form.reset();
    render(patient.state.records);
    status(`Saved the treatment ${record.data.name}.`);
    document.body.dataset.saved = String(Number(document.body.dataset.saved || 0) + 1);
  });
});

/** Drop the keys and every view of the account (they are only in this page's memory). */
function closeAccount() {
  patient = null;
  communitiesView.detach();
  consentView.detach();
  matchesView.detach();
  devicesView.detach();
  nodeKeysView.detach();
  $("entries").replaceChildren();
  $("devices").replaceChildren();
  recordsUi.show(null);
}

$("lock").addEventListener("click", () => {
  closeAccount();
  document.body.dataset.state = "locked";
  show("unlock");
  status("Locked.");
});

function erased(result) {
  closeAccount();
  document.body.dataset.state = "erased";
  show("welcome");
  const notLeft = result.notLeft.map((n) => `${n.address} (${n.reason})`).join(", ");
  status(`Your account is erased: ${result.revoked.length} consent grant${result.revoked.length === 1 ? "" : "s"} revoked, `
    + `${result.left.length} communit${result.left.length === 1 ? "y" : "ies"} left`
    + (notLeft ? `; not left, because the host refused: ${notLeft}` : "") + ". This browser keeps nothing of it.");
}

recordsUi.mount({ patient: () => patient, rendered: () => render(patient.state.records), busy, status, erased });

devicesView.onRecovered(async (p, message) => {
  await opened(p);
  status(message);
});

async function start() {
  try {
    await ready();
    const info = await fetch("/.well-known/rxfed", { cache: "no-store" }).then((r) => r.json());
    $("node-name").textContent = info.name ? `· ${info.name}` : "";
    show((await hasProfile()) ? "unlock" : "welcome");
    document.body.dataset.state = "ready";
    timings.ready_ms = Math.round(performance.now()); // from navigation start
  } catch (exc) {
    show("welcome");
    error(exc);
  }
}

start();
