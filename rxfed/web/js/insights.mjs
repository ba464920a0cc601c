// Treatment insights as a patient reads them (spec/privacy.md §6): the newest published table
// of a diagnosis category from the home node, checked, and the lines `rxfed insights` prints
// for it (spec/vectors/insights.json holds both, as Python makes them). Reading a table spends
// no privacy budget: the node answers a table it published before.

export const CATEGORY = /^[A-U][0-9][0-9A-Z]$/;
const KEYS = ["category", "computed", "epsilon", "ledger", "nodes", "period", "release", "suppressed_below", "table",
  "treatments"];

export class InsightsError extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

/** The node's answer, checked for its form (anything else is refused, never shown). */
export function checkInsights(doc, category) {
  if (!doc || typeof doc !== "object" || Array.isArray(doc)
      || JSON.stringify(Object.keys(doc).sort()) !== JSON.stringify(KEYS)
      || doc.category !== category || !Array.isArray(doc.treatments)
      || !Number.isSafeInteger(doc.computed) || !Number.isSafeInteger(doc.nodes)
      || !doc.ledger || !Array.isArray(doc.ledger.periods)) {
    throw new InsightsError("The node's insights table is not in the expected form.", "bad_insights");
  }
  return doc;
}

/** Only one treatment's row (the CLI's --treatment). */
export function forTreatment(doc, name) {
  return name ? { ...doc, treatments: doc.treatments.filter((t) => t.treatment === name) } : doc;
}

// The order bands are shown in (JSON objects have none: the node's answer is canonical JSON).
const ORDER = ["low", "medium", "high", "ongoing", "stopped", "improving", "stable", "worsening"];
const rank = (k) => (ORDER.includes(k) ? ORDER.indexOf(k) : ORDER.length);
const byName = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

function bands(values) {
  const keys = Object.keys(values || {}).sort((a, b) => rank(a) - rank(b) || byName(a, b));
  return keys.map((k) => `${k} ${values[k]}`).join(", ") || "-";
}

function when(unix) {
  return new Date(unix * 1000).toISOString().slice(0, 16).replace("T", " ");
}

/** The lines `rxfed insights` prints, exactly. */
export function insightsLines(doc) {
  const k = doc.suppressed_below;
  const out = [`${doc.category}, ${doc.period}: computed ${when(doc.computed)}Z from ${doc.nodes} node(s), epsilon `
    + `${doc.epsilon} spent (values under ${k} shown as <${k})`];
  for (const p of doc.ledger.periods) {
    out.push(`your node's privacy budget for ${p.period}: ${p.spent} of ${doc.ledger.budget} spent, ${p.remaining} left`);
  }
  if (!doc.treatments.length) out.push("no such treatment in this table");
  for (const t of doc.treatments) {
    const improved = t.share_improved !== null ? `${t.share_improved}% improved` : "share improved: -";
    out.push(`${t.treatment}: ${t.reports} reports, ${improved}`);
    out.push(`  efficacy: ${bands(t.efficacy)}`);
    out.push(`  adherence: ${bands(t.adherence)}`);
    out.push(`  status: ${bands(t.status)}`);
    if (t.side_effects.length) out.push(`  side effects: ${t.side_effects.map((e) => `${e.name} ${e.reports}`).join(", ")}`);
    for (const symptom of Object.keys(t.symptoms).sort(byName)) out.push(`  ${symptom}: ${bands(t.symptoms[symptom])}`);
  }
  return out;
}

/** The newest table of `category` from the patient's home node (a signed request). */
export async function fetchInsights(patient, category) {
  if (!CATEGORY.test(category)) {
    throw new InsightsError("A category is an ICD-10 three-character category, like E11.", "bad_category");
  }
  return checkInsights(await patient.node.call("GET", `/v1/insights/${category}`, null, patient.id.device), category);
}
