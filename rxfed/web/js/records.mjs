// What a record is and says: the kinds the page writes, validated as
// rxfed/client/records.py validates them (so the CLI reads what the page wrote and the other
// way round), one line for people and the day a record is about (records.summary,
// clinical_date), so the browser shows every record the CLI, the SDK or an import wrote.

import { normaliseCode } from "./vocabulary.mjs";
import { hex, utf8 } from "./encoding.mjs";
import { pyNumber } from "./protocol.mjs";
import { fromStored } from "./questionnaires.mjs";
import { sha256 } from "./sodium.mjs";

/** What the patient typed is refused, with words for them; `code` is the CLI's error code. */
export class Invalid extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

export const MAX_NAME = 120;
export const MAX_TEXT = 4000;

/** The day a record is about (onset, start, the day measured or written), not the day it
 * was stored: an import stores years of history at once. */
export function clinicalDate(record) {
  const field = { condition: "onset", treatment: "started", journal: "date", observation: "date" }[record.kind];
  let value = field ? record.data[field] : null;
  if ((value === null || value === undefined) && record.kind === "treatment") value = record.data.stopped;
  return typeof value === "string" ? value : null;
}

/** Newest clinical date first, then the records without one; newest written first among equals. */
export function byClinicalDate(records) {
  return [...records].sort((a, b) => {
    const da = clinicalDate(a), db = clinicalDate(b);
    if ((da === null) !== (db === null)) return da === null ? 1 : -1;
    if (da !== db) return da < db ? 1 : -1;
    return a.created < b.created ? 1 : a.created > b.created ? -1 : 0;
  });
}

/** A measured value as people read it: at most four significant digits after the point. */
export function shownNumber(value) {
  if (typeof value !== "number" || Number.isInteger(value)) return String(value);
  const digits = String(Math.trunc(Math.abs(value))).length;
  return String(Number(value.toPrecision(Math.max(4, digits))));
}

const SYSTOLIC = "8480-6", DIASTOLIC = "8462-4";
const measured = (value, unit) => (unit ? `${shownNumber(value)} ${unit}` : shownNumber(value));

function observation(d) {
  const code = d.code || {};
  const name = code.display || code.code || "observation";
  if (d.value !== null && d.value !== undefined) return `${name}: ${measured(d.value, d.unit)}`;
  const parts = new Map();
  for (const c of d.components || []) if (c.value !== null && c.value !== undefined) parts.set((c.code || {}).code, c);
  const sys = parts.get(SYSTOLIC), dia = parts.get(DIASTOLIC);
  if (sys && dia && sys.unit === dia.unit) return `${name}: ${shownNumber(sys.value)}/${shownNumber(dia.value)}${sys.unit ? ` ${sys.unit}` : ""}`;
  const shown = [...parts.values()].map((c) => `${(c.code || {}).display || (c.code || {}).code} ${measured(c.value, c.unit)}`);
  return shown.length ? `${name}: ${shown.join(", ")}` : name;
}

/** One line: what a record says (records.summary), without the journal's note, which the
 * page shows on its own line. */
export function summary(record) {
  const d = record.data;
  switch (record.kind) {
    case "condition":
      if (d.system === null || d.system === undefined) return `${d.label} (no code)`;
      return `${d.system.toUpperCase()} ${d.code}${d.label ? ` ${d.label}` : ""}`;
    case "treatment": {
      const parts = [d.name];
      if (d.dose) parts.push(d.dose);
      if (d.efficacy !== null && d.efficacy !== undefined) parts.push(`efficacy ${d.efficacy}/10`);
      if (d.side_effects && d.side_effects.length) parts.push(`side effects: ${d.side_effects.join(", ")}`);
      return parts.join("; ");
    }
    case "journal": {
      const parts = Object.keys(d.symptoms || {}).sort().map((k) => `${k} ${d.symptoms[k]}/10`);
      if (d.feeling !== null && d.feeling !== undefined) parts.push(`feeling ${d.feeling}/10`);
      for (const q of d.questionnaires || []) parts.push(`${q.instrument.toUpperCase()} ${q.total} (${q.severity})`);
      return parts.join(" · ");
    }
    case "observation":
      return observation(d);
    case "profile":
      return "patient profile (demographics from an import)";
    default:
      return record.kind;
  }
}

export const KIND_NAMES = { condition: "Condition", treatment: "Treatment", journal: "Journal", observation: "Measurement", profile: "Profile" };

// -- writing: the kinds the page makes, checked as records.py checks them --------------------------

export function localDate(d = new Date()) {
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
}

export function text(value, what, limit = MAX_TEXT) {
  const clean = (value ?? "").trim();
  if (!clean) return null;
  if ([...clean].length > limit || /[\x00-\x08\x0b\x0c\x0e-\x1f]/.test(clean)) {
    throw new Invalid(`${what} must be at most ${limit} printable characters.`, "bad_text");
  }
  return clean;
}

export function score(value, what) {
  if (value === null || value === undefined || String(value).trim() === "") return null;
  const s = String(value).trim();
  if (!/^-?\d{1,6}$/.test(s)) throw new Invalid(`${what} must be a whole number from 0 to 10.`, "out_of_range");
  const n = Number(s);
  if (n < 0 || n > 10) throw new Invalid(`${what} must be from 0 to 10, not ${n}.`, "out_of_range");
  return n;
}

/** A calendar date as YYYY-MM-DD, or null when empty; a day that does not exist is refused. */
export function isoDate(value, what) {
  const text = (value ?? "").trim();
  if (!text) return null;
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(text);
  const d = m ? new Date(Date.UTC(+m[1], +m[2] - 1, +m[3])) : null;
  if (!d || d.getUTCFullYear() !== +m[1] || d.getUTCMonth() !== +m[2] - 1 || d.getUTCDate() !== +m[3]) {
    throw new Invalid(`${what} must be a date like 2026-01-31.`, "bad_date");
  }
  return text;
}

/** A treatment's data, validated as rxfed/client/records.py treatment() does. */
export function treatment({ name, dose = null, started = null, stopped = null, efficacy = null, sideEffects = [], adherence = null }) {
  const clean = text(name, "The treatment's name", MAX_NAME);
  if (clean === null) throw new Invalid("A treatment needs a name.", "bad_text");
  const from = isoDate(started, "The start"), to = isoDate(stopped, "The end");
  if (from && to && to < from) throw new Invalid("A treatment cannot stop before it started.", "bad_date");
  const effects = sideEffects.map((e) => text(e, "A side effect", MAX_NAME)).filter((e) => e !== null);
  return { name: clean, dose: text(dose, "The dose", MAX_NAME), started: from, stopped: to, efficacy: score(efficacy, "Efficacy"),
    side_effects: effects, adherence: score(adherence, "Adherence"), code: null, status: null, source: null };
}

/** A journal entry's data, validated as rxfed/client/records.py journal() does;
 * `questionnaires` in their stored form (questionnaires.stored), each scored again. */
export function journal({ symptoms = [], feeling = null, note = null, date = null, questionnaires = [] }) {
  const clean = {};
  for (const [name, value] of symptoms) {
    const key = text(name, "A symptom name", MAX_NAME);
    const n = score(value, key ? `Symptom “${key}”` : "A symptom");
    if (key === null) {
      if (n !== null) throw new Invalid("A symptom score needs a name.", "bad_symptom");
      continue;
    }
    if (n === null) throw new Invalid(`Symptom “${key}” needs a score from 0 to 10.`, "out_of_range");
    clean[key.toLowerCase()] = n;
  }
  const scored = questionnaires.map((q) => {
    const s = fromStored(q);
    return { instrument: s.instrument, answers: s.answers, total: s.total, severity: s.severity };
  });
  const entry = { date: isoDate(date, "The date") || localDate(), symptoms: clean, feeling: score(feeling, "Feeling"),
    note: text(note, "The note", MAX_TEXT), questionnaires: scored };
  if (!Object.keys(clean).length && entry.feeling === null && entry.note === null && !scored.length) {
    throw new Invalid("A journal entry needs a symptom, a feeling, a note or a questionnaire.", "empty_entry");
  }
  return entry;
}

/** A condition's data (records.condition): an ICD-10 or SNOMED CT code, checked and
 * normalised, with an optional label and onset. */
export function condition({ code, system = "icd10", label = null, onset = null }) {
  if (system !== "icd10" && system !== "snomed") throw new Invalid("The code system must be ICD-10 or SNOMED CT.", "invalid_code");
  let normal;
  try {
    normal = normaliseCode(system, code ?? "");
  } catch (exc) {
    throw new Invalid(exc.message.charAt(0).toUpperCase() + exc.message.slice(1) + ".", "invalid_code");
  }
  return { system, code: normal, label: text(label, "The label", MAX_NAME), onset: isoDate(onset, "The onset"),
    abatement: null, status: null, source: null };
}

/** The kinds a patient edits field by field (the CLI's `record edit`); the rest are deleted. */
export const EDITABLE = ["condition", "journal", "treatment"];

/** A record's data with the fields of a form changed, checked as a new record of its kind
 * is, every other field kept (as the CLI's `record edit` builds the next version). `fields`
 * are what the add form of the kind takes. */
export function edited(kind, old, fields) {
  if (kind === "condition") {
    const built = condition(fields);
    return { ...old, system: built.system, code: built.code, label: built.label, onset: built.onset };
  }
  if (kind === "journal") return { ...old, ...journal(fields) };
  if (kind === "treatment") {
    const built = treatment(fields);
    const keep = {};
    for (const k of ["name", "dose", "started", "stopped", "efficacy", "side_effects", "adherence"]) keep[k] = built[k];
    return { ...old, ...keep };
  }
  throw new Invalid(`A ${kind} record cannot be edited field by field; delete it instead.`, "not_editable");
}

// -- import keys (records.py derive_key, record_key, content_key) ----------------------------------

/** Python's order of strings: by code point (JavaScript's sort compares UTF-16 units). */
export const byCodePoint = (a, b) => {
  const x = [...a], y = [...b];
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    if (x[i] !== y[i]) return x[i].codePointAt(0) - y[i].codePointAt(0);
  }
  return x.length - y.length;
};

/** `value` as Python's json.dumps(value, ensure_ascii=False) writes it, with `sort_keys`
 * and its default separators (", " and ": ") unless `compact`. */
export function pythonJson(value, { sortKeys = true, compact = false } = {}) {
  const [comma, colon] = compact ? [",", ":"] : [", ", ": "];
  const write = (v) => {
    if (v === null || typeof v !== "object") return typeof v === "number" ? pyNumber(v) : JSON.stringify(v);
    if (Array.isArray(v)) return "[" + v.map(write).join(comma) + "]";
    const keys = sortKeys ? Object.keys(v).sort(byCodePoint) : Object.keys(v);
    return "{" + keys.map((k) => JSON.stringify(k) + colon + write(v[k])).join(comma) + "}";
  };
  return write(value);
}

/** A key (32 hex digits) from text that names a thing. */
export const deriveKey = (...parts) => hex(sha256(utf8(pythonJson(["rxfed import key", ...parts])))).slice(0, 32);

export const isRecordKey = (value) => typeof value === "string" && /^[0-9a-f]{32}$/.test(value);

/** The key a record is known by across imports and exports. */
export function recordKey(recordId, data) {
  const key = data && typeof data === "object" ? data.import_key : null;
  return isRecordKey(key) ? key : deriveKey("record", recordId);
}

/** A key of what an imported record says, for records imported before import keys existed. */
export function contentKey(kind, data) {
  const said = Object.fromEntries(Object.entries(data).filter(([k]) => k !== "import_key"));
  return deriveKey("content", kind, pythonJson(said));
}
