// The communities view: a host's directory, join, your communities, read, post, leave,
// reports to the moderators (and a franking report to copy), messages a moderator hid, and
// for moderators the queue of reports with its actions. The DOM only, text nodes only; the work
// is in communities.mjs. app.mjs calls attach() once the vault is open and detach() on lock.

import { PRESEND_NOTICE, PageCommunities } from "./communities.mjs";
import { b64e } from "./encoding.mjs";
import { UNREADABLE, isModerator } from "./community.mjs";
import { credentialFromFile, didKey } from "./credentials.mjs";
import { presendWarnings, shippedRules } from "./moderation.mjs";
import { IntegrityError } from "./protocol.mjs";
import { browserCountry } from "./questionnaires.mjs";
import * as ui from "./ui.mjs";

const $ = (id) => document.getElementById(id);
let communities = null;
let open = null; // the address shown
let held = null; // the text the pre-send check warned about, until the author edits it or sends it anyway

const say = ui.statusLine("communities");
const guarded = (button, what, work) => ui.guarded(button, say, what, work);

function button(text, className, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = text;
  b.addEventListener("click", () => onClick(b));
  return b;
}

const when = (unix) => new Date(unix * 1000).toISOString().slice(0, 16).replace("T", " ");
const short = (key) => b64e(key).slice(0, 8);

async function renderMine() {
  const mine = await communities.memberships();
  $("my-communities").replaceChildren(...mine.map((m) => {
    const li = document.createElement("li");
    li.dataset.address = m.address.text;
    li.append(`${m.name}${m.condition ? ` (${m.condition})` : ""} on ${m.address.host} `,
      button(`Open ${m.name}`, "open", (b) => guarded(b, "Reading…", () => show(m.address.text))),
      " ", button(`Leave ${m.name}`, "leave", (b) => guarded(b, "Leaving…", async () => {
        await communities.leave(m.address.text);
        if (open === m.address.text) hideView();
        await renderMine();
        say(`You left ${m.name}: you read nothing posted there from now on.`);
      })));
    return li;
  }));
  $("my-communities-empty").hidden = mine.length > 0;
}

async function renderDirectory() {
  const host = $("c-host").value;
  const listed = await communities.directory(host);
  const mine = new Set((await communities.memberships()).map((m) => m.address.text));
  $("directory").replaceChildren(...listed.map((l) => {
    const li = document.createElement("li");
    li.dataset.address = l.address.text;
    li.append(`${l.name}${l.condition ? ` (${l.condition})` : ""}, ${l.members} member${l.members === 1 ? "" : "s"}`
      + (l.create.approval ? ", joins approved by its admin " : " "));
    if (!mine.has(l.address.text)) {
      li.append(button(`Join ${l.name}`, "join", (b) => guarded(b, "Joining…", async () => {
        await communities.join(l.address.text);
        await renderMine();
        await renderDirectory();
        say(`You joined ${l.name}${l.create.approval ? " (pending until its admin approves)" : ""}.`);
        document.body.dataset.joined = String(Number(document.body.dataset.joined || 0) + 1);
      })));
    }
    return li;
  }));
  $("directory-empty").hidden = listed.length > 0;
}

function clearPresend() {
  held = null;
  $("presend-warning").hidden = true;
  $("presend-warnings").replaceChildren();
  $("presend-crisis").hidden = true;
  $("presend-crisis").replaceChildren();
}

function hideView() {
  clearPresend();
  open = null;
  $("community-view").hidden = true;
  $("cv-messages").replaceChildren();
  $("report-out").value = "";
  $("report-wrap").hidden = true;
}

async function show(address) {
  const { mine, reading, badges } = await communities.read(address);
  open = address;
  $("cv-h").textContent = mine.name;
  $("community-view").hidden = false;
  const me = b64e(mine.member.public);
  if (reading === null) {
    $("cv-members").textContent = "Your home node has not received this community yet; try again shortly.";
    $("cv-messages").replaceChildren();
    say("");
    return;
  }
  const members = [...reading.state.members.values()].filter((m) => m.status === "joined" || m.status === "pending");
  $("cv-members").textContent = `${members.length} member${members.length === 1 ? "" : "s"}; you are ${me.slice(0, 8)}`
    + (reading.state.members.get(me)?.status === "pending" ? " (pending approval)" : "");
  // the admin approves and removes members and names moderators; a moderator removes or bans a member
  const admin = b64e(reading.state.meta.admin) === me;
  const moderating = isModerator(reading.state, mine.member.public);
  $("cv-admin").hidden = !moderating;
  $("cv-admin-h").textContent = admin ? "Members (you are the admin)" : "Members (you are a moderator)";
  $("cv-admin-list").replaceChildren(...(moderating ? members.filter((m) => b64e(m.member) !== me) : []).map((m) => {
    const key = b64e(m.member);
    const li = document.createElement("li");
    li.dataset.member = key;
    li.append(`${key.slice(0, 8)} from ${m.node}, ${m.status} `);
    const act = (action, label) => button(`${label} ${key.slice(0, 8)}`, action, (b) => guarded(b, `${label}…`, async () => {
      await communities.moderate(address, key, action);
      await show(address);
      say(action === "approve" ? `Approved ${key.slice(0, 8)}.` : `Removed ${key.slice(0, 8)}: the next messages are sealed to the others only.`);
    }));
    // a moderator's signed action on the member (community act ... remove|ban MEMBER), the
    // category chosen beside the messages its reason, as members are shown it
    const moderate = (action, label) => button(`${label} ${key.slice(0, 8)}`, `mod-${action}`, (b) => guarded(b, `${label}…`, async () => {
      await communities.act(address, action, key, { reason: $("report-category").value });
      await show(address);
      say(`${label}: signed and sent; every member's client applies it.`);
    }));
    if (!admin) {
      // no action removes or bans the admin (the fold refuses it): not offered
      if (key !== b64e(reading.state.meta.admin)) li.append(moderate("remove", "Remove"), " ", moderate("ban", "Ban"));
      return li;
    }
    if (m.status === "pending") li.append(act("approve", "Approve"), " ");
    li.append(act("remove", "Remove"), " ", moderate("ban", "Ban"));
    if (m.status === "joined" && !reading.state.moderators.has(key)) {
      li.append(" ", button(`Make ${key.slice(0, 8)} a moderator`, "appoint", (b) => guarded(b, "Appointing…", async () => {
        await communities.act(address, "appoint", key, { reason: "moderator" });
        await show(address);
        say(`${key.slice(0, 8)} is a moderator: reports are sealed to them too from now on.`);
      })));
    }
    if (reading.state.moderators.has(key)) {
      li.append(" ", button(`Dismiss ${key.slice(0, 8)} as a moderator`, "dismiss", (b) => guarded(b, "Dismissing…", async () => {
        await communities.act(address, "dismiss", key, { reason: "moderator" });
        await show(address);
        say(`${key.slice(0, 8)} is no moderator now: reports are no longer sealed to them.`);
      })));
    }
    return li;
  }));
  const myKeys = new Set([me, ...mine.previous.map(([m]) => b64e(m.public))]);
  $("cv-messages").replaceChildren(...reading.messages.map((m) => {
    const li = document.createElement("li");
    li.dataset.seq = String(m.seq);
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = `${b64e(m.sender) === me ? "You" : short(m.sender)} · ${when(m.sent)}`;
    const hidden = reading.hidden.get(m.seq);
    if (hidden) {
      // A moderator hid it: every member's client applies the signed action, and says so.
      li.className = "hidden-msg";
      const note = document.createElement("div");
      note.className = "note";
      note.textContent = `Hidden by a moderator: ${hidden[1].reason}`;
      li.append(meta, note);
      return li;
    }
    const text = document.createElement("div");
    text.className = "note";
    text.textContent = m.text;
    li.append(meta, text);
    const verdict = badges.get(m.seq);
    if (verdict) {
      // the reader's own check of the clinician badge (spec/crypto.md 12.8): what it says, or why not
      const badge = document.createElement("div");
      badge.className = verdict.verified ? "badge verified" : "badge refused";
      badge.dataset.badge = verdict.verified ? "verified" : verdict.reason;
      badge.textContent = verdict.verified ? `✓ ${verdict.badge}` : `Clinician badge refused: ${verdict.explanation}`;
      li.append(badge);
    }
    li.append(button(`Report message ${m.seq} to the moderators`, "report-mods", (b) => guarded(b, "Reporting…", async () => {
      await communities.fileReport(address, m.seq, $("report-category").value);
      say("Reported: only the community's moderators can read the report, and it does not say who made it.");
    })), " ", button(`Report message ${m.seq}`, "report", (b) => guarded(b, "Making the report…", async () => {
      const report = await communities.report(address, m.seq);
      $("report-out").value = JSON.stringify(report);
      $("report-wrap").hidden = false;
      say("The report proves who sent this message and what it said; send it to the community's moderator. It reveals no other message.");
    })));
    return li;
  }));
  const warnings = reading.actions.filter(([, a]) => a.action === "warn" && myKeys.has(b64e(a.member)));
  $("cv-warnings").textContent = warnings.map(([, a]) => `A moderator warned you${a.seq ? ` about message ${a.seq}` : ""}: ${a.reason}.`).join(" ");
  $("cv-warnings").hidden = warnings.length === 0;
  const moderator = isModerator(reading.state, mine.member.public);
  $("cv-queue").hidden = !moderator;
  if (moderator) await renderQueue(address);
  $("cv-unreadable").textContent = reading.unreadable.map((u) => `Message ${u.seq} from ${short(u.sender)} is not shown: ${UNREADABLE[u.reason]}.`).join(" ");
  $("cv-unreadable").hidden = reading.unreadable.length === 0;
  $("cv-empty").hidden = reading.messages.length > 0;
  say("");
  document.body.dataset.read = String(Number(document.body.dataset.read || 0) + 1);
}

async function renderQueue(address) {
  const queue = await communities.reports(address);
  $("cv-queue-list").replaceChildren(...queue.map((r) => {
    const li = document.createElement("li");
    li.dataset.report = String(r.report);
    li.dataset.status = r.status;
    if (r.status !== "verified") {
      li.append(`Report ${r.report}: refused (${r.reason}): it does not prove what was sent.`);
      return li;
    }
    const done = r.actions.map((a) => a.action).join(", ");
    li.append(`Report ${r.report}: message ${r.seq} from ${r.sender.slice(0, 8)} [${r.category}], verified${done ? `; done: ${done}` : ""}: `);
    const text = document.createElement("q");
    text.textContent = r.text;
    li.append(text, " ");
    const act = (action, label, member = null) => button(`${label} (report ${r.report})`, action, (b) => guarded(b, `${label}…`, async () => {
      await communities.act(address, action, member, { seq: member ? 0 : r.seq, reason: r.category });
      await show(address);
      say(`${label}: signed and sent; every member's client applies it.`);
    }));
    li.append(act("hide", "Hide the message"), " ", act("warn", "Warn the sender"), " ", act("remove", "Remove the sender", r.sender),
      " ", act("ban", "Ban the sender", r.sender), " ",
      button(`Forward to the sender's home node (report ${r.report})`, "forward", (b) => guarded(b, "Forwarding…", async () => {
        const sent = await communities.forward(address, r.seq);
        say(`Forwarded to ${sent.node} [${sent.category}], sealed to its key: it learns the message and its sender, never who reported it.`);
        document.body.dataset.forwarded = String(Number(document.body.dataset.forwarded || 0) + 1);
      })));
    return li;
  }));
  $("cv-queue-empty").hidden = queue.length > 0;
}

export async function attach(patient) {
  communities = new PageCommunities(patient);
  $("communities").hidden = false;
  $("presend-notice").textContent = PRESEND_NOTICE;
  if (!$("post-country").value) $("post-country").value = browserCountry() || "";
  await guarded(null, "Loading your communities…", async () => {
    const reachable = await patient.node.call("GET", "/v1/consent/nodes", null, patient.id.device);
    const hosts = [reachable.home, ...reachable.nodes.map((n) => n.node_id).filter((n) => n !== reachable.home)];
    $("c-host").replaceChildren(...hosts.map((h) => {
      const o = document.createElement("option");
      o.value = h;
      o.textContent = h === reachable.home ? `${h} (your node)` : h;
      return o;
    }));
    await renderMine();
    say("");
  });
  document.body.dataset.communities = "ready";
}

export function detach() {
  communities = null;
  hideView();
  for (const id of ["directory", "my-communities", "c-host"]) $(id).replaceChildren();
  $("communities").hidden = true;
  say("");
  delete document.body.dataset.communities;
}

$("create-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (communities === null) return;
  const form = ev.target;
  guarded(form.querySelector("button[type=submit]"), "Creating the community…", async () => {
    const address = await communities.create($("cc-name").value, { condition: $("cc-condition").value || null, approval: $("cc-approval").checked });
    form.reset();
    await renderMine();
    say(`Created: give people its address, ${address}, or let them find it in this node's directory.`);
    document.body.dataset.created = String(Number(document.body.dataset.created || 0) + 1);
  });
});

$("c-browse").addEventListener("click", (ev) => {
  if (communities !== null) guarded(ev.target, "Asking the host…", async () => {
    await renderDirectory();
    say("");
  });
});

/** Send `text` to the community shown, sealed here; the check has run. */
/** The credential the author chose to show, from the picked credentials file, or null. */
async function chosenCredential() {
  const file = $("post-badge").files[0];
  if (!file) return null;
  let doc;
  try {
    doc = JSON.parse(await file.text());
  } catch {
    throw new IntegrityError(`${file.name} is not a credentials file.`, "bad_badge_file");
  }
  try {
    return credentialFromFile(doc, $("post-badge-profile").value);
  } catch (exc) {
    throw new IntegrityError(`${file.name}: ${exc.message}.`, "bad_badge_file");
  }
}

async function send(text) {
  const credential = await chosenCredential();
  const result = await communities.post(open, text, { credential });
  $("post-text").value = "";
  held = null;
  $("presend-warning").hidden = true;
  await show(open);
  say(result.queued ? "Posted, end to end encrypted: it shows here once the community's host has taken it (Read again)."
    : "Posted, end to end encrypted.");
  document.body.dataset.posted = String(Number(document.body.dataset.posted || 0) + 1);
}

/** The moderation check, here, before anything is sent: crisis support at once and never in
 * the way; a warning holds the post until the author edits it or sends it anyway. */
function presend(text) {
  const warnings = presendWarnings(text, $("post-country").value);
  const notes = warnings.filter((w) => !w.confirm);
  $("presend-crisis").replaceChildren(...notes.map((w) => {
    const p = document.createElement("p");
    const strong = document.createElement("strong");
    strong.textContent = w.message;
    p.append(strong, ...w.resources.flatMap((r) => [document.createElement("br"), r]));
    return p;
  }));
  $("presend-crisis").hidden = notes.length === 0;
  const asking = warnings.filter((w) => w.confirm);
  $("presend-warnings").replaceChildren(...asking.map((w) => {
    const li = document.createElement("li");
    li.dataset.code = w.code;
    li.textContent = w.message;
    return li;
  }));
  $("presend-warning").hidden = asking.length === 0;
  document.body.dataset.presend = warnings.map((w) => w.code).join(" ") || "none";
  return asking.length === 0;
}

$("post-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (communities === null || open === null) return;
  const form = ev.target;
  guarded(form.querySelector("button[type=submit]"), "Checking the message…", async () => {
    const text = $("post-text").value;
    if (!presend(text)) {
      held = text;
      say("Not sent yet: read the warning, then edit the message or send it anyway.");
      $("presend-send").focus();
      return;
    }
    say("Posting…");
    await send(text);
  });
});

$("clinician-key").addEventListener("click", (ev) => {
  if (communities === null) return;
  guarded(ev.target, "Opening your clinician key…", async () => {
    const key = await communities.clinicianKey({ create: true });
    $("clinician-key-out").textContent = didKey(key.public);
    $("clinician-key-out").hidden = false;
    say("Give this key to your hospital: it issues your credentials for it ('rxfed node clinicians issue --key').");
  });
});

// compiling the rules takes a few hundred milliseconds: done when the author starts to write
$("post-text").addEventListener("focus", () => shippedRules(), { once: true });

$("post-text").addEventListener("input", () => {
  if (held !== null && $("post-text").value !== held) {
    held = null;
    $("presend-warning").hidden = true;
  }
});

$("presend-edit").addEventListener("click", () => {
  held = null;
  $("presend-warning").hidden = true;
  say("");
  $("post-text").focus();
});

$("presend-send").addEventListener("click", (ev) => {
  if (communities === null || open === null || held === null) return;
  const text = held;
  guarded(ev.target, "Posting…", () => send(text));
});

$("cv-refresh").addEventListener("click", (ev) => {
  if (communities !== null && open !== null) guarded(ev.target, "Reading…", () => show(open));
});
