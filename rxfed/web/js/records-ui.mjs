// The journal's records in the page: the timeline and its table, conditions with a search
// over their labels, PHQ-9 and GAD-7, editing and deleting any record, FHIR import and
// export, and changing the passphrase. Builds its own nodes (text only, never markup from
// data); app.mjs mounts it and calls show() whenever the records change.

import { eraseAccount } from "./account.mjs";
import { Patient } from "./client.mjs";
import { chart, legend, rangeStart, table, timeline } from "./charts.mjs";
import { InvalidFhir, exportBundle, importBundle, parseJson } from "./fhir.mjs";
import { ANSWERS, ATTRIBUTION, INSTRUMENTS, browserCountry, crisisResources, score, stored } from "./questionnaires.mjs";
import { EDITABLE, Invalid, KIND_NAMES, clinicalDate, condition, edited, journal, localDate, summary } from "./records.mjs";
import { searchConcepts } from "./vocabulary.mjs";

const $ = (id) => document.getElementById(id);
let app = null; // {patient(), rendered(), busy(form, what, work), status(text)}

function node(tag, props = {}, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(n.dataset, v);
    else if (k in n && !k.startsWith("aria") && k !== "for") n[k] = v;
    else n.setAttribute(k, v);
  }
  n.append(...children.filter((c) => c !== null && c !== undefined));
  return n;
}

/** A labelled input (or select / textarea), appended to `parent`; returns the control. */
function field(parent, { id, label, type = "text", value = "", options = null, hint = null, ...attrs }) {
  parent.append(node("label", { for: id }, label));
  let control;
  if (options) {
    control = node("select", { id, name: attrs.name || id });
    for (const [v, text] of options) control.append(node("option", { value: v }, text));
  } else if (type === "textarea") control = node("textarea", { id, name: attrs.name || id, rows: 3 });
  else control = node("input", { id, name: attrs.name || id, type, autocomplete: "off" });
  for (const [k, v] of Object.entries(attrs)) if (k !== "name") control.setAttribute(k, v);
  if (hint) {
    const h = node("p", { className: "hint", id: `${id}-hint` }, hint);
    control.setAttribute("aria-describedby", h.id);
    parent.append(control, h);
  } else parent.append(control);
  if (!options || value) control.value = value ?? ""; // a select keeps its first option
  return control;
}

function saved() {
  document.body.dataset.saved = String(Number(document.body.dataset.saved || 0) + 1);
}

async function changed(message) {
  app.rendered();
  app.status(message);
  saved();
}

// -- the timeline ---------------------------------------------------------------------------------------

function timelineSection() {
  const section = node("section", { id: "timeline", "aria-labelledby": "timeline-h" });
  const toggle = node("button", { type: "button", id: "timeline-toggle", className: "secondary", "aria-expanded": "false", "aria-controls": "timeline-table" }, "Show as a table");
  toggle.addEventListener("click", () => {
    const open = toggle.getAttribute("aria-expanded") !== "true";
    toggle.setAttribute("aria-expanded", String(open));
    toggle.textContent = open ? "Hide the table" : "Show as a table";
    $("timeline-table").hidden = !open;
  });
  const range = node("div", { className: "range" });
  const pick = field(range, { id: "timeline-range", label: "Show", value: "all",
    options: [["all", "everything"], ["365", "the last year"], ["90", "the last 3 months"], ["30", "the last 30 days"]] });
  pick.addEventListener("change", () => showTimeline(shownRecords));
  section.append(node("h3", { id: "timeline-h" }, "Timeline"), range,
    node("p", { id: "timeline-empty" }, "Your symptoms, feeling and treatments appear here over time once you write them."),
    node("div", { id: "timeline-chart-box", className: "chart-box" }), node("div", { id: "timeline-legend" }), toggle,
    node("div", { id: "timeline-table", className: "table-box", hidden: true }));
  return section;
}

let shownRecords = [];

function showTimeline(records) {
  shownRecords = records;
  const today = localDate();
  const data = timeline(records, today, rangeStart($("timeline-range").value, today));
  $("timeline-empty").hidden = data !== null;
  $("timeline-toggle").hidden = data === null;
  if (data === null) {
    for (const id of ["timeline-chart-box", "timeline-legend", "timeline-table"]) $(id).replaceChildren();
    return;
  }
  // drawn at the width it is shown at, so its text stays readable on a phone
  const width = Math.max(320, Math.min(900, $("timeline-chart-box").clientWidth || 640));
  $("timeline-chart-box").replaceChildren(chart(data, { width }));
  $("timeline-legend").replaceChildren(legend(data));
  $("timeline-table").replaceChildren(table(data));
}

// -- conditions -------------------------------------------------------------------------------------------

const SYSTEMS = [["icd10", "ICD-10"], ["snomed", "SNOMED CT"]];

function conditionFields(parent, prefix, data = {}) {
  const search = field(parent, { id: `${prefix}-search`, label: "Find a diagnosis by name or code", type: "search",
    hint: "Pick one from the list, or type its ICD-10 or SNOMED CT code below.", "aria-controls": `${prefix}-found` });
  const found = node("ul", { id: `${prefix}-found`, className: "found", "aria-live": "polite", "aria-label": "Diagnoses found" });
  parent.append(found);
  const system = field(parent, { id: `${prefix}-system`, label: "Code system", options: SYSTEMS, value: data.system || "icd10" });
  const code = field(parent, { id: `${prefix}-code`, label: "Code", value: data.code || "", spellcheck: "false", maxlength: "24" });
  const label = field(parent, { id: `${prefix}-label`, label: "Name (as you call it)", value: data.label || "", maxlength: "120" });
  const onset = field(parent, { id: `${prefix}-onset`, label: "Since (onset)", type: "date", value: data.onset || "" });
  search.addEventListener("input", () => {
    const hits = searchConcepts(search.value);
    found.replaceChildren(...hits.map((c) => {
      const pick = node("button", { type: "button", className: "pick", dataset: { code: c.code, system: c.system } },
        `${c.label} (${c.system === "icd10" ? "ICD-10" : "SNOMED CT"} ${c.code})`);
      pick.addEventListener("click", () => {
        system.value = c.system;
        code.value = c.code;
        label.value = c.label;
        found.replaceChildren();
        search.value = "";
        onset.focus();
      });
      return node("li", {}, pick);
    }));
    if (search.value.trim() && !hits.length) found.replaceChildren(node("li", {}, "Nothing found: type the code itself below."));
  });
  return () => ({ system: system.value, code: code.value, label: label.value, onset: onset.value });
}

function conditionForm() {
  const form = node("form", { id: "condition-form", noValidate: true });
  const fs = node("fieldset");
  fs.append(node("legend", {}, "A condition (diagnosis)"));
  const values = conditionFields(fs, "c");
  fs.append(node("button", { type: "submit" }, "Save condition"));
  form.append(fs);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    app.busy(form, "Saving…", async () => {
      const record = await app.patient().addRecord("condition", condition(values()));
      form.reset();
      await changed(`Saved the condition ${summary(record)}.`);
    });
  });
  return form;
}

// -- questionnaires ---------------------------------------------------------------------------------------

function crisisBox() {
  return node("div", { id: "crisis", className: "crisis", role: "alert", hidden: true });
}

function showCrisis(box, country) {
  box.replaceChildren(node("strong", {}, "If you are thinking about death or hurting yourself: "), document.createTextNode(crisisResources(country)));
  box.hidden = false;
}

function questionnaireForm() {
  const form = node("form", { id: "questionnaire-form", noValidate: true });
  const fs = node("fieldset");
  fs.append(node("legend", {}, "A questionnaire (PHQ-9 or GAD-7)"));
  const which = field(fs, { id: "q-instrument", label: "Questionnaire", options: Object.values(INSTRUMENTS).map((i) => [i.name, i.title]) });
  const date = field(fs, { id: "q-date", label: "Date", type: "date" });
  const country = field(fs, { id: "q-country", label: "Your country (two letters, for a helpline if you need one)", value: browserCountry() || "",
    maxlength: "2", autocapitalize: "characters" });
  const items = node("div", { id: "q-items" });
  const crisis = crisisBox();
  fs.append(items, crisis);
  const result = node("p", { id: "q-result", className: "notice", hidden: true });
  fs.append(node("button", { type: "submit" }, "Save questionnaire"), result, node("p", { className: "hint", id: "q-attribution" }, ATTRIBUTION));
  form.append(fs);
  const answers = () => INSTRUMENTS[which.value].items.map((_, i) => {
    const picked = form.querySelector(`input[name="q-${i}"]:checked`);
    return picked ? Number(picked.value) : null;
  });
  const draw = () => {
    const inst = INSTRUMENTS[which.value];
    items.replaceChildren(node("p", { className: "stem" }, inst.stem), ...inst.items.map((text, i) => {
      const item = node("fieldset", { className: "item" });
      item.append(node("legend", {}, `${i + 1}. ${text}`));
      for (const [value, words] of ANSWERS) {
        const id = `q-${i}-${value}`;
        item.append(node("span", { className: "answer" }, node("input", { type: "radio", id, name: `q-${i}`, value: String(value) }),
          node("label", { for: id, className: "inline" }, words)));
      }
      return item;
    }));
    crisis.hidden = true;
  };
  which.addEventListener("change", draw);
  // PHQ-9 item 9: the resources show as soon as it is answered above "Not at all"
  items.addEventListener("change", () => {
    const a = answers();
    if (which.value === "phq9" && a[8] !== null && a[8] > 0) showCrisis(crisis, country.value);
    else crisis.hidden = true;
  });
  draw();
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    app.busy(form, "Saving…", async () => {
      const given = answers(), cc = country.value;
      const missing = given.findIndex((a) => a === null);
      if (missing >= 0) throw new Invalid(`Answer question ${missing + 1}: every question needs an answer for a valid score.`, "bad_questionnaire");
      const s = score(which.value, given);
      const record = await app.patient().addRecord("journal", journal({ date: date.value, questionnaires: [stored(s)] }));
      const inst = which.value;
      form.reset();
      which.value = inst;
      country.value = cc;
      draw();
      if (s.crisis) showCrisis(crisis, cc);
      result.textContent = `${s.instrument.toUpperCase()} score ${s.total}: ${s.severity} (saved for ${record.data.date}).`;
      result.hidden = false;
      await changed(`Saved the ${s.instrument.toUpperCase()} of ${record.data.date}.`);
    });
  });
  return form;
}

// -- editing and deleting -----------------------------------------------------------------------------------

function journalFields(parent, prefix, d) {
  const date = field(parent, { id: `${prefix}-date`, label: "Date", type: "date", value: d.date || "" });
  const rows = [...Object.entries(d.symptoms || {}), ["", ""]].map(([name, value], i) => {
    const row = node("div", { className: "row" });
    const n = field(row, { id: `${prefix}-s${i}`, label: "Symptom", value: name });
    const v = field(row, { id: `${prefix}-v${i}`, label: "Score", type: "number", value: value === "" ? "" : String(value), min: "0", max: "10" });
    parent.append(node("div", { className: "symptoms" }, row));
    return [n, v];
  });
  const feeling = field(parent, { id: `${prefix}-feeling`, label: "Feeling overall (0–10)", type: "number", value: d.feeling ?? "", min: "0", max: "10" });
  const note = field(parent, { id: `${prefix}-note`, label: "Note", type: "textarea", value: d.note || "", maxlength: "4000" });
  return () => ({ date: date.value, symptoms: rows.map(([n, v]) => [n.value, v.value]), feeling: feeling.value, note: note.value,
    questionnaires: d.questionnaires || [] });
}

function treatmentFields(parent, prefix, d) {
  const f = (name, label, type = "text", value = d[name] ?? "", extra = {}) => field(parent, { id: `${prefix}-${name}`, label, type, value, ...extra });
  const name = f("name", "Name"), dose = f("dose", "Dose"), started = f("started", "Started", "date"), stopped = f("stopped", "Stopped", "date");
  const efficacy = f("efficacy", "How well it works (0–10)", "number", d.efficacy ?? "", { min: "0", max: "10" });
  const effects = f("effects", "Side effects (separated by commas)", "text", (d.side_effects || []).join(", "));
  const adherence = f("adherence", "How often you take it as planned (0–10)", "number", d.adherence ?? "", { min: "0", max: "10" });
  return () => ({ name: name.value, dose: dose.value, started: started.value, stopped: stopped.value, efficacy: efficacy.value,
    sideEffects: effects.value.split(","), adherence: adherence.value });
}

function editForm(li, record) {
  const prefix = `e-${record.id.slice(0, 12)}`;
  const form = node("form", { className: "edit", noValidate: true, "aria-label": `Edit this ${KIND_NAMES[record.kind].toLowerCase()}` });
  const fs = node("fieldset");
  fs.append(node("legend", {}, `Edit: ${summary(record) || KIND_NAMES[record.kind]}`));
  const values = record.kind === "condition" ? conditionFields(fs, prefix, record.data)
    : record.kind === "journal" ? journalFields(fs, prefix, record.data) : treatmentFields(fs, prefix, record.data);
  const cancel = node("button", { type: "button", className: "secondary" }, "Cancel");
  fs.append(node("button", { type: "submit" }, "Save changes"), cancel);
  form.append(fs);
  cancel.addEventListener("click", () => {
    form.remove();
    li.querySelector("button.edit-record").focus();
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    app.busy(form, "Saving…", async () => {
      const fields = values();
      const record2 = await app.patient().editRecord(record.id, (current) => edited(current.kind, current.data, fields));
      await changed(`Changed the ${KIND_NAMES[record2.kind].toLowerCase()} (version ${record2.version}).`);
    });
  });
  return form;
}

/** Edit and delete buttons on a record of the list (app.mjs entryItem). */
export function decorateEntry(li, record) {
  if (record.kind === "community") return;
  const what = `${KIND_NAMES[record.kind] || record.kind} of ${clinicalDate(record) || "no date"}`;
  const tools = node("div", { className: "tools" });
  if (EDITABLE.includes(record.kind)) {
    const edit = node("button", { type: "button", className: "secondary edit-record", "aria-label": `Edit the ${what.toLowerCase()}` }, "Edit");
    edit.addEventListener("click", () => {
      const open = li.querySelector("form.edit");
      if (open) return open.querySelector("input, select, textarea").focus();
      const form = editForm(li, record);
      li.append(form);
      form.querySelector("input, select, textarea").focus();
    });
    tools.append(edit);
  }
  const del = node("button", { type: "button", className: "secondary delete-record", "aria-label": `Delete the ${what.toLowerCase()}` }, "Delete");
  del.addEventListener("click", () => {
    if (li.querySelector(".confirm")) return;
    const yes = node("button", { type: "button", className: "danger confirm-delete" }, "Delete it for good");
    const no = node("button", { type: "button", className: "secondary" }, "Keep it");
    const box = node("div", { className: "confirm", role: "group", "aria-label": "Confirm deletion" },
      node("span", {}, "Delete this record from your vault and every device? "), yes, no);
    no.addEventListener("click", () => { box.remove(); del.focus(); });
    yes.addEventListener("click", () => {
      app.busy(box, "Deleting…", async () => {
        const gone = await app.patient().deleteRecord(record.id);
        await changed(`Deleted the ${KIND_NAMES[gone.kind] ? KIND_NAMES[gone.kind].toLowerCase() : gone.kind}.`);
      }, yes);
    });
    tools.after(box);
    yes.focus();
  });
  tools.append(del);
  li.append(tools);
}

// -- FHIR import and export ---------------------------------------------------------------------------------

function fhirSection() {
  const section = node("section", { id: "fhir", "aria-labelledby": "fhir-h" });
  const form = node("form", { id: "import-form", noValidate: true });
  const fs = node("fieldset");
  fs.append(node("legend", {}, "Import a record from a hospital (FHIR)"));
  field(fs, { id: "import-file", label: "A FHIR R4 Bundle (.json) you downloaded from your hospital's patient portal", type: "file", accept: ".json,application/json,application/fhir+json" });
  fs.append(node("p", { className: "hint" }, "It is read and encrypted here; importing the same file again adds nothing."),
    node("button", { type: "submit" }, "Import"), node("ul", { id: "import-report", "aria-live": "polite" }));
  form.append(fs);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    app.busy(form, "Importing…", async () => {
      const file = $("import-file").files[0];
      if (!file) throw new Invalid("Pick a file first.", "no_file");
      let parsed;
      try {
        parsed = parseJson(await file.text());
      } catch (exc) {
        throw new Invalid(`${file.name} is not JSON: ${exc.message}.`, "bad_json");
      }
      let result;
      try {
        result = importBundle(parsed.doc, parsed.floats);
      } catch (exc) {
        if (exc instanceof InvalidFhir) throw new Invalid(`${file.name}: ${exc.message}`, exc.code);
        throw exc;
      }
      const { stored: added, held } = await app.patient().importRecords(result.records);
      const counts = {};
      for (const r of added) counts[r.kind] = (counts[r.kind] || 0) + 1;
      const lines = [added.length || !held.length
        ? `Imported ${added.length} records` + (added.length ? ": " + Object.entries(counts).sort().map(([k, n]) => `${n} ${k}`).join(", ") : "") + "."
        : `Nothing new: all ${held.length} records of this file were imported before.`];
      if (held.length && added.length) lines.push(`${held.length} records of this file were imported before and are left as they are.`);
      for (const t of result.skippedWhy) lines.push(`Skipped ${t.count} ${t.type}: ${t.reason}.`);
      for (const t of result.notes) lines.push(`${t.count} ${t.type} ${t.reason}.`);
      $("import-report").replaceChildren(...lines.map((l) => node("li", {}, l)));
      form.reset();
      await changed(lines[0]);
    });
  });
  const out = node("form", { id: "export-form", noValidate: true });
  const fs2 = node("fieldset");
  fs2.append(node("legend", {}, "Export your records (FHIR)"),
    node("p", { className: "hint" }, "A FHIR R4 Bundle of your conditions, treatments, measurements and journal scores (notes stay out), for a doctor or another app. The file is not encrypted: keep it safe."),
    node("button", { type: "submit" }, "Download the export"), node("p", { id: "export-done" }));
  out.append(fs2);
  out.addEventListener("submit", (ev) => {
    ev.preventDefault();
    app.busy(out, "Exporting…", async () => {
      const patient = app.patient();
      const bundle = await exportBundle(patient.state.records.map((r) => [r.kind, r.data, r.id]), patient.id.patient);
      const text = JSON.stringify(bundle, null, 2) + "\n";
      const url = URL.createObjectURL(new Blob([text], { type: "application/fhir+json" }));
      const link = node("a", { href: url, download: `rxfed-export-${localDate()}.json` }, "download");
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
      $("export-done").textContent = `Exported ${bundle.entry.length} FHIR resources.`;
      app.status(`Exported ${bundle.entry.length} FHIR resources.`);
    });
  });
  section.append(node("h3", { id: "fhir-h" }, "Import and export"), form, out);
  return section;
}

// -- the passphrase -------------------------------------------------------------------------------------------

function passphraseForm() {
  const form = node("form", { id: "passphrase-form", noValidate: true });
  const fs = node("fieldset");
  fs.append(node("legend", {}, "Change this browser's passphrase"));
  fs.append(node("input", { type: "text", name: "username", autocomplete: "username", value: "rxfed patient", hidden: true }));
  const current = field(fs, { id: "pp-current", label: "Current passphrase", type: "password", autocomplete: "current-password" });
  const next = field(fs, { id: "pp-new", label: "New passphrase (at least 15 characters)", type: "password", autocomplete: "new-password" });
  const again = field(fs, { id: "pp-again", label: "The new passphrase again", type: "password", autocomplete: "new-password" });
  fs.append(node("button", { type: "submit" }, "Change passphrase"));
  form.append(fs);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    app.busy(form, "Changing the passphrase…", async () => {
      await Patient.changePassphrase(current.value, next.value, again.value);
      form.reset();
      app.status("The passphrase is changed: this browser's keys now open with the new one only.");
      document.body.dataset.passphrase = "changed";
    });
  });
  return form;
}

// -- erasing the account ---------------------------------------------------------------------------------------

function eraseForm() {
  const form = node("form", { id: "erase-form", noValidate: true });
  const fs = node("fieldset");
  fs.append(node("legend", {}, "Erase this account"));
  fs.append(node("p", { className: "hint" }, "Your consent grants are revoked first (every node that received signals "
    + "deletes them), you leave every community, then your node erases every record, device and key of this account and "
    + "keeps only a note, signed by you, that it was erased. Your other devices stop working too. This cannot be undone: "
    + "export your records first if you want to keep them."));
  const label = node("label", { htmlFor: "erase-understood" });
  const understood = node("input", { type: "checkbox", id: "erase-understood" });
  label.append(understood, " I understand: erase this account and everything in it");
  fs.append(label, node("button", { type: "submit" }, "Erase the account"));
  form.append(fs);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    app.busy(form, "Erasing the account…", async () => {
      if (!understood.checked) throw new Invalid("Tick that you understand first: erasing cannot be undone.");
      const result = await eraseAccount(app.patient());
      app.erased(result);
    });
  });
  return form;
}

/** Build the views into #records-ui; `hooks`: {patient(), rendered(), busy(form, what, work, button), status(text),
 * erased(result)}. */
export function mount(hooks) {
  app = hooks;
  // the less frequent forms fold away (a details element: keyboard and screen readers know it)
  const folded = (id, title, ...content) => node("details", { id }, node("summary", {}, title), ...content);
  $("records-ui").replaceChildren(timelineSection(),
    folded("more-condition", "Add a condition (diagnosis)", conditionForm()),
    folded("more-questionnaire", "Fill in a questionnaire (PHQ-9, GAD-7)", questionnaireForm()),
    folded("more-fhir", "Import or export (FHIR)", fhirSection()),
    folded("more-settings", "Settings", node("section", { id: "settings", "aria-labelledby": "settings-h" },
      node("h3", { id: "settings-h" }, "Change the passphrase"), passphraseForm(),
      node("h3", { id: "erase-h" }, "Erase the account"), eraseForm())));
}

/** The records changed (loaded, written, locked: `records` null): draw the timeline again. */
export function show(records) {
  if (records === null) {
    shownRecords = [];
    for (const id of ["timeline-chart-box", "timeline-legend", "timeline-table", "import-report"]) $(id).replaceChildren();
    $("crisis").hidden = true;
    $("q-result").hidden = true;
    return;
  }
  showTimeline(records);
}
