// What a record says, in one line for people, and the day it is about: the page's port of
// rxfed/client/records.py summary() and clinical_date(), so the browser shows every record
// the CLI, the SDK or an import wrote.

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
