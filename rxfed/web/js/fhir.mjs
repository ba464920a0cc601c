// FHIR R4 import and export in the page: the port of rxfed/client/fhir.py, so a Bundle the
// patient picks gives the records the CLI would make of it (the same data, the same import
// keys, the same reasons for what it skips), and an export is a Bundle the CLI imports back
// losslessly. spec/fhir.md describes the mapping; spec/web.md §9 what the page checks less
// strictly than Python's R4B models.

import { pyFloat } from "./protocol.mjs";
import { INSTRUMENTS, fromStored, score } from "./questionnaires.mjs";
import * as rec from "./records.mjs";
import { FHIR, FHIR_ELEMENTS, FHIR_RESOURCE_TYPES, SYSTEM_URIS } from "./tables.mjs";
import { normaliseCode, systemFromUri } from "./vocabulary.mjs";

const { LOINC, RXNORM, CONDITION_CLINICAL, OBSERVATION_CATEGORY, MOTHERS_MAIDEN_NAME, IPS_ABSENT_UNKNOWN,
  DATA_ABSENT_REASON_CODES, DATA_ABSENT_REASON, JOURNAL, REPORTED, RECORD_KEY_SYSTEM, EXPORT_NAMESPACE } = FHIR;
export { RECORD_KEY_SYSTEM };

export const BUNDLE_TYPES = ["transaction", "collection", "batch", "searchset", "document"];
const RESOURCE_TYPES = new Set(FHIR_RESOURCE_TYPES);
const CLINICAL_STATUSES = ["active", "recurrence", "relapse", "inactive", "remission", "resolved"];
const VOID_STATUSES = ["entered-in-error", "refuted"];
const LOINC_ANSWERS = { "LA6568-5": 0, "LA6569-3": 1, "LA6570-1": 2, "LA6571-9": 3 };
const REQUEST_STATUS = { active: "active", "on-hold": "on-hold", cancelled: "not-taken", completed: "completed",
  stopped: "stopped", draft: "intended", unknown: "unknown" };
const ABSENT_SYSTEMS = [IPS_ABSENT_UNKNOWN, DATA_ABSENT_REASON_CODES];
const NOTHING_TO_RECORD = new Set(["160245001"]);
const FHIR_ID = /^[A-Za-z0-9\-.]{1,64}$/;
const NOT_KEPT = "rxfed keeps no records of this resource type";

/** The file is not a Bundle rxfed imports, or part of it is invalid: nothing is imported. */
export class InvalidFhir extends Error {
  constructor(message, code = "invalid_fhir") {
    super(message);
    this.code = code;
  }
}

const bad = (message) => new InvalidFhir(message);
const shown = (value) => {
  const text = value === undefined || value === null ? "None" : typeof value === "string" ? `'${value}'` : JSON.stringify(value);
  return text.length <= 40 ? text : text.slice(0, 37) + "...";
};
const has = (obj, key) => obj !== null && typeof obj === "object" && Object.hasOwn(obj, key) && obj[key] !== null && obj[key] !== undefined;
const list = (value) => (Array.isArray(value) ? value : []);
const isObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);

// -- reading the file: JSON as Python reads it ------------------------------------------------------

/** Parse a file's text as Python's json.loads does (duplicate keys: the last wins), noting
 * which numbers were written as floats, so a resource's content key is the one Python
 * derives from the same file (an integer-valued float is "1.0" there). Returns
 * {doc, floats}: floats maps each object or array to the keys (indices) holding floats. */
export function parseJson(text) {
  const floats = new WeakMap();
  let at = 0;
  const fail = (what) => { throw new InvalidFhir(`the file is not JSON: ${what} at character ${at}`, "bad_json"); };
  const space = () => { while (at < text.length && " \t\n\r".includes(text[at])) at++; };
  const value = (owner, key) => {
    space();
    const c = text[at];
    if (c === "{") {
      at++;
      const obj = {};
      space();
      if (text[at] === "}") { at++; return obj; }
      for (;;) {
        space();
        if (text[at] !== '"') fail("expected a key");
        const k = string();
        space();
        if (text[at] !== ":") fail("expected ':'");
        at++;
        Object.defineProperty(obj, k, { value: value(obj, k), enumerable: true, writable: true, configurable: true });
        space();
        if (text[at] === ",") { at++; continue; }
        if (text[at] === "}") { at++; return obj; }
        fail("expected ',' or '}'");
      }
    }
    if (c === "[") {
      at++;
      const arr = [];
      space();
      if (text[at] === "]") { at++; return arr; }
      for (;;) {
        arr.push(value(arr, arr.length));
        space();
        if (text[at] === ",") { at++; continue; }
        if (text[at] === "]") { at++; return arr; }
        fail("expected ',' or ']'");
      }
    }
    if (c === '"') return string();
    for (const [word, v] of [["true", true], ["false", false], ["null", null]]) {
      if (text.startsWith(word, at)) { at += word.length; return v; }
    }
    const m = /-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y;
    m.lastIndex = at;
    const found = m.exec(text);
    if (!found) fail("unexpected character");
    at += found[0].length;
    const number = Number(found[0]);
    if (found[1] !== undefined || found[2] !== undefined) {
      if (!Number.isFinite(number)) fail("a number too large");
      if (!floats.has(owner)) floats.set(owner, new Set());
      floats.get(owner).add(key);
    } else if (!Number.isSafeInteger(number)) fail("an integer too large for this page");
    return number;
  };
  const string = () => {
    const m = /"((?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*)"/y;
    m.lastIndex = at;
    const found = m.exec(text);
    if (!found) fail("a bad string");
    at += found[0].length;
    return JSON.parse(found[0]);
  };
  const doc = value(null, null);
  space();
  if (at !== text.length) fail("extra data");
  return { doc, floats };
}

/** json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False) of parsed JSON. */
function pythonDump(value, floats) {
  if (value === null || typeof value !== "object") return typeof value === "number" ? String(value) : JSON.stringify(value);
  const marked = floats.get(value);
  const item = (k, v) => (typeof v === "number" && marked && marked.has(k) ? pyFloat(v) : pythonDump(v, floats));
  if (Array.isArray(value)) return "[" + value.map((v, i) => item(i, v)).join(",") + "]";
  return "{" + Object.keys(value).sort(rec.byCodePoint).map((k) => JSON.stringify(k) + ":" + item(k, value[k])).join(",") + "}";
}

// -- the shape of what the page reads -----------------------------------------------------------------
//
// Python validates the whole Bundle against FHIR R4B's models first. The page checks the
// Bundle, every resource's type, and the type of every element it reads from the resources it
// keeps; a value of the wrong type or a date that does not exist refuses the file as a whole.

// FHIR date, dateTime and instant: a time has seconds and an offset
const DATE = /^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:Z|[+-](?:0\d|1[0-3]):[0-5]\d|[+-]14:00))?)?)?$/;

function checkDate(value, where) {
  const m = typeof value === "string" ? DATE.exec(value) : null;
  let ok = m !== null;
  if (ok && m[3]) {
    const d = new Date(Date.UTC(+m[1], +m[2] - 1, +m[3]));
    ok = d.getUTCMonth() === +m[2] - 1 && d.getUTCDate() === +m[3] && (m[4] === undefined || (+m[4] < 24 && +m[5] < 60 && +m[6] <= 60));
  } else if (ok && m[2]) ok = +m[2] >= 1 && +m[2] <= 12;
  if (!ok) throw bad(`not a valid FHIR R4 Bundle: ${where}: not a valid date or date-time`);
}

/** The day a FHIR date or dateTime is about, as written (in its own offset); partial dates
 * ("2012", "2012-03") give null rather than a precision nobody wrote. */
export function day(value) {
  if (typeof value !== "string") return null;
  const m = DATE.exec(value);
  return m && m[3] ? value.slice(0, 10) : null;
}

const SHAPES = {
  // FHIR's string is never empty; a code has no leading, trailing or doubled white space
  string: (v) => typeof v === "string" && /[ \r\n\t\S]/.test(v),
  code: (v) => typeof v === "string" && /^[^\s]+(\s[^\s]+)*$/.test(v),
  integer: (v) => Number.isInteger(v),
  decimal: (v) => typeof v === "number",
  boolean: (v) => typeof v === "boolean",
  object: isObject,
};

function checkShape(value, shape, where) {
  if (value === undefined || value === null) return;
  if (Array.isArray(shape)) {
    if (!Array.isArray(value)) throw bad(`not a valid FHIR R4 Bundle: ${where}: Input should be a valid list`);
    value.forEach((v, i) => checkShape(v, shape[0], `${where}.${i}`));
    return;
  }
  if (shape === "date") return checkDate(value, where);
  if (typeof shape === "string") {
    if (!SHAPES[shape](value)) throw bad(`not a valid FHIR R4 Bundle: ${where}: Input should be a valid ${shape}`);
    return;
  }
  if (!isObject(value)) throw bad(`not a valid FHIR R4 Bundle: ${where}: Input should be an object`);
  if (shape.$model) {
    const known = ELEMENTS.get(shape.$model);
    const extra = Object.keys(value).find((k) => !known.has(k));
    if (extra !== undefined) throw bad(`not a valid FHIR R4 Bundle: ${where}.${extra}: Extra inputs are not permitted`);
  }
  for (const [k, s] of Object.entries(shape)) if (k !== "$model") checkShape(value[k], s, `${where}.${k}`);
}

const ELEMENTS = new Map(Object.entries(FHIR_ELEMENTS).map(([k, v]) => [k, new Set(v)]));

const CODING = { $model: "Coding", system: "string", code: "code", display: "string" };
const EXTENSION = { url: "string", valueString: "string", valueInteger: "integer" };
const CONCEPT = { $model: "CodeableConcept", coding: [CODING], text: "string", extension: [EXTENSION] };
const REFERENCE = { $model: "Reference", reference: "string", display: "string", type: "string", identifier: { system: "string", value: "string" } };
const PERIOD = { $model: "Period", start: "date", end: "date" };
const QUANTITY = { $model: "Quantity", value: "decimal", unit: "string", code: "code" };
const VALUE = { valueQuantity: QUANTITY, valueCodeableConcept: CONCEPT, valueInteger: "integer", valueBoolean: "boolean",
  valueString: "string", valueDateTime: "date" };
const SUBJECTS = { subject: REFERENCE, patient: REFERENCE, beneficiary: REFERENCE, id: "string" };
const HUMAN_NAME = { family: "string", text: "string", given: ["string"] };
const ADDRESS = { city: "string", postalCode: "string", text: "string", line: ["string"] };
const MEDICATION_USE = {
  ...SUBJECTS, status: "code", medicationCodeableConcept: CONCEPT, medicationReference: REFERENCE, contained: [{ id: "string", code: CONCEPT }],
  extension: [EXTENSION], effectivePeriod: PERIOD, effectiveDateTime: "date", authoredOn: "date", dosage: [{ text: "string" }],
  dosageInstruction: [{ text: "string" }],
};
const ITEM = { linkId: "string", definition: "string", answer: [{ valueInteger: "integer", valueCoding: CODING }] };
ITEM.item = [ITEM];
const RESOURCE_SHAPES = {
  Patient: { ...SUBJECTS, identifier: [{ system: "string", value: "string" }], telecom: [{ value: "string" }], name: [HUMAN_NAME],
    address: [ADDRESS], contact: [{ name: HUMAN_NAME, telecom: [{ value: "string" }], address: ADDRESS }],
    extension: [{ url: "string", valueString: "string", valueAddress: ADDRESS }] },
  Condition: { ...SUBJECTS, verificationStatus: CONCEPT, clinicalStatus: CONCEPT, code: CONCEPT, onsetPeriod: PERIOD, onsetDateTime: "date",
    abatementPeriod: PERIOD, abatementDateTime: "date" },
  MedicationStatement: MEDICATION_USE,
  MedicationRequest: MEDICATION_USE,
  Medication: { ...SUBJECTS, code: CONCEPT },
  Observation: { ...SUBJECTS, ...VALUE, status: "code", code: CONCEPT, category: [CONCEPT], component: [{ ...VALUE, code: CONCEPT }],
    effectivePeriod: PERIOD, effectiveDateTime: "date", effectiveInstant: "date", derivedFrom: [REFERENCE] },
  QuestionnaireResponse: { ...SUBJECTS, questionnaire: "string", status: "code", authored: "date", item: [ITEM] },
};
const REQUIRED = { Observation: ["status", "code"], Condition: [], MedicationStatement: ["status"], MedicationRequest: ["status"],
  QuestionnaireResponse: ["status"] };

function validated(doc) {
  if (!isObject(doc)) throw bad("a FHIR import must be a JSON object: a Bundle");
  if (doc.resourceType !== "Bundle") {
    throw bad(`expected a FHIR Bundle, got resourceType ${shown(doc.resourceType)}; export the whole record as a Bundle`);
  }
  if (!BUNDLE_TYPES.includes(doc.type)) throw bad(`Bundle type ${shown(doc.type)} is not importable: use one of ${BUNDLE_TYPES.join(", ")}`);
  const entries = doc.entry === undefined ? [] : doc.entry;
  if (!Array.isArray(entries)) throw bad("Bundle.entry must be a list");
  entries.forEach((entry, index) => {
    if (!isObject(entry)) throw bad(`not a valid FHIR R4 Bundle: entry.${index}: Input should be an object`);
    const resource = entry.resource;
    if (isObject(resource)) {
      const kind = resource.resourceType;
      if (typeof kind !== "string") throw bad(`entry ${index}: the resource has no resourceType`);
      if (!RESOURCE_TYPES.has(kind)) throw bad(`entry ${index}: ${shown(kind)} is not a FHIR R4 resource type`);
      checkShape(entry.fullUrl, "string", `entry.${index}.fullUrl`);
      const shape = RESOURCE_SHAPES[kind];
      if (shape) checkShape(resource, { $model: kind, ...shape }, `entry.${index}.resource`);
      for (const [i, inner] of list(resource.contained).entries()) {
        if (!isObject(inner) || typeof inner.resourceType !== "string" || !RESOURCE_TYPES.has(inner.resourceType)) {
          throw bad("not a valid FHIR R4 Bundle: a nested or contained resource has a missing or unknown resourceType");
        }
        if (RESOURCE_SHAPES[inner.resourceType]) checkShape(inner, { $model: inner.resourceType, ...RESOURCE_SHAPES[inner.resourceType] }, `entry.${index}.resource.contained.${i}`);
      }
      for (const field of REQUIRED[kind] || []) {
        if (!has(resource, field)) throw bad(`not a valid FHIR R4 Bundle: entry.${index}.resource.${field}: Field required`);
      }
    } else if (resource !== undefined && resource !== null) {
      throw bad(`not a valid FHIR R4 Bundle: entry.${index}.resource: Input should be an object`);
    }
  });
  return entries;
}

// -- whose record is this -------------------------------------------------------------------------------

const RELATIVE = /^(?:(https?:\/\/\S+)\/)?([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})$/;

function serverBase(fullUrl) {
  const m = typeof fullUrl === "string" ? RELATIVE.exec(fullUrl.split("/_history/")[0]) : null;
  return m && m[1] !== undefined ? m[1] : null;
}

function target(reference, base) {
  if (!isObject(reference)) return null;
  let ref = reference.reference;
  if (typeof ref === "string" && ref.trim() && !ref.startsWith("#")) {
    ref = ref.trim().split("/_history/")[0];
    if (ref.startsWith("Patient?")) {
      const identifier = new URLSearchParams(ref.slice("Patient?".length)).getAll("identifier").filter((v) => v !== "");
      return ["Patient", identifier.length ? `identifier:${identifier[0]}` : ref];
    }
    if (/^urn:(uuid|oid):/i.test(ref)) return [null, ref.toLowerCase()];
    const m = RELATIVE.exec(ref);
    if (m === null) return [null, ref];
    const root = m[1] !== undefined ? m[1] : base;
    return [m[2], root ? `${root}/${m[2]}/${m[3]}` : `${m[2]}/${m[3]}`];
  }
  const identifier = reference.identifier;
  if (isObject(identifier) && identifier.value) {
    return [typeof reference.type === "string" ? reference.type : null, `identifier:${identifier.system || ""}|${identifier.value}`];
  }
  return null;
}

const urnFolded = (url) => (url.slice(0, 4).toLowerCase() === "urn:" ? url.toLowerCase() : url);

function person(kind, where, names, types) {
  if (names.has(where)) return names.get(where);
  kind = kind || types.get(where) || null;
  if (kind !== null && kind !== "Patient") return null;
  if (where.startsWith("identifier:")) return where;
  const tail = where.split("/").slice(-2).join("/");
  return kind === "Patient" ? (names.has(tail) ? names.get(tail) : where) : where;
}

function checkOnePatient(entries) {
  const names = new Map(), types = new Map();
  for (const entry of entries) {
    const kind = entry.raw.resourceType;
    if (entry.fullUrl) types.set(urnFolded(entry.fullUrl), kind);
    if (kind !== "Patient") continue;
    const aliases = entry.fullUrl ? [entry.fullUrl] : [];
    if (typeof entry.raw.id === "string") {
      const base = serverBase(entry.fullUrl);
      aliases.push(`Patient/${entry.raw.id}`, ...(base ? [`${base}/Patient/${entry.raw.id}`] : []));
    }
    for (const identifier of list(entry.raw.identifier)) {
      if (isObject(identifier) && identifier.value) aliases.push(`identifier:${identifier.system || ""}|${identifier.value}`);
    }
    for (const alias of aliases) names.set(urnFolded(alias), entry.index);
  }
  const people = new Set(entries.filter((e) => e.raw.resourceType === "Patient").map((e) => e.index));
  for (const entry of entries) {
    const base = serverBase(entry.fullUrl);
    for (const field of ["subject", "patient", "beneficiary"]) {
      const found = target(entry.raw[field], base);
      if (found !== null) people.add(person(found[0], found[1], names, types));
    }
  }
  people.delete(null);
  if (people.size > 1) {
    throw new InvalidFhir(`the Bundle is about ${people.size} different patients (its Patients and the subjects of its resources are not one person); export and import one person's record at a time. Nothing was imported.`, "several_patients");
  }
}

// -- keys -----------------------------------------------------------------------------------------------------

function exportedKey(raw) {
  const ids = isObject(raw.identifier) ? [raw.identifier] : list(raw.identifier);
  for (const identifier of ids) {
    if (isObject(identifier) && identifier.system === RECORD_KEY_SYSTEM && rec.isRecordKey(identifier.value)) return identifier.value;
  }
  return null;
}

function importKey(fullUrl, raw, floats) {
  const exported = exportedKey(raw);
  if (exported !== null) return exported;
  if (typeof fullUrl === "string" && /^[A-Za-z][A-Za-z0-9+.-]*:/.test(fullUrl)) {
    return rec.deriveKey("url", raw.resourceType, fullUrl.split("/_history/")[0]);
  }
  return rec.deriveKey("content", pythonDump(raw, floats));
}

// -- converters -----------------------------------------------------------------------------------------------

class Skipped extends Error {
  constructor(reason) {
    super(reason);
    this.reason = reason;
  }
}

const codeOf = (concept) => (list(concept && concept.coding).find((c) => c.code) || {}).code || null;

function coded(concept) {
  const codings = concept ? list(concept.coding).filter((c) => c.code) : [];
  if (!codings.length) return null;
  const c = codings.find((x) => x.system === LOINC) || codings[0];
  return { system: c.system ?? null, code: c.code, display: c.display || concept.text || null };
}

function conceptText(concept) {
  if (!concept) return null;
  if (concept.text) return concept.text;
  const c = list(concept.coding).find((x) => x.display || x.code);
  return c ? c.display || c.code : null;
}

function absence(concept) {
  if (!concept) return null;
  const codings = list(concept.coding).filter((c) => c.code);
  if (codings.length && codings.every((c) => ABSENT_SYSTEMS.includes(c.system) || (systemFromUri(c.system) === "snomed" && NOTHING_TO_RECORD.has(c.code)))) {
    return codings.map((c) => c.code).join(", ");
  }
  if (!codings.length && list(concept.extension).some((e) => e.url === DATA_ABSENT_REASON)) return "data-absent-reason";
  return null;
}

function notAbsent(concept) {
  const absent = absence(concept);
  if (absent !== null) throw new Skipped(`it records only that the information is absent or unknown (${absent})`);
}

function valueOf(element) {
  if (has(element, "valueQuantity")) {
    const q = element.valueQuantity;
    return [has(q, "value") ? q.value : null, q.unit || q.code || null];
  }
  if (has(element, "valueCodeableConcept")) return [conceptText(element.valueCodeableConcept), null];
  for (const k of ["valueInteger", "valueBoolean", "valueString"]) if (has(element, k)) return [element[k], null];
  if (has(element, "valueDateTime")) return [day(element.valueDateTime), null];
  return [null, null];
}

/** BadRequest of records.py, with its code, as the page raises it. */
const refused = (exc) => new InvalidFhir(exc.message, exc.code || "invalid_fhir");

function pyScore(value, what) {
  if (value === null || value === undefined) return null;
  if (!Number.isInteger(value) && !(typeof value === "string" && /^\s*-?\d{1,6}\s*$/.test(value))) {
    throw new InvalidFhir(`${what} must be a whole number from 0 to 10`, "out_of_range");
  }
  const n = Number(value);
  if (n < 0 || n > 10) throw new InvalidFhir(`${what} must be from 0 to 10, not ${n}`, "out_of_range");
  return n;
}

function pyText(value, what, limit = rec.MAX_TEXT) {
  if (value === null || value === undefined) return null;
  const clean = value.trim();
  if (!clean) return null;
  if ([...clean].length > limit || /[\x00-\x08\x0b\x0c\x0e-\x1f]/.test(clean)) {
    throw new InvalidFhir(`${what} must be at most ${limit} printable characters`, "bad_text");
  }
  return clean;
}

function patientRecord(entry) {
  const patient = structuredClone(entry.raw);
  delete patient.id;
  if ("identifier" in patient) {
    patient.identifier = list(patient.identifier).filter((i) => i.system !== RECORD_KEY_SYSTEM);
    if (!patient.identifier.length) delete patient.identifier;
  }
  if (Object.keys(patient).every((k) => k === "resourceType" || k === "meta")) throw new Skipped("it carries nothing but an id");
  return ["profile", { fhir_patient: patient }];
}

function conditionRecord(entry, ctx) {
  const r = entry.raw;
  const status = codeOf(r.verificationStatus);
  if (VOID_STATUSES.includes(status)) throw new Skipped(`marked ${status}`);
  notAbsent(r.code);
  const bySystem = new Map(), others = [];
  for (const coding of r.code ? list(r.code.coding) : []) {
    const system = systemFromUri(coding.system);
    if (system && coding.code) {
      if (!bySystem.has(system)) bySystem.set(system, coding);
    } else if (coding.system) others.push(coding.system);
  }
  const system = ["icd10", "snomed"].find((s) => bySystem.has(s)) || null;
  const codedIn = others.length ? ` (coded only in ${[...new Set(others)].join(", ")})` : "";
  let code = null, label;
  if (system === null) {
    const concept = r.code;
    label = concept ? concept.text || (list(concept.coding).find((c) => c.display) || {}).display || null : null;
    if (!label) throw new Skipped(others.length ? `no ICD-10 or SNOMED CT code and no text${codedIn}` : "it has neither a code nor a text");
    ctx.note("Condition", `kept with its label only: no ICD-10 or SNOMED CT code${codedIn}, so it gives no diagnosis signal`);
  } else {
    const coding = bySystem.get(system);
    try {
      code = normaliseCode(system, coding.code);
    } catch (exc) {
      throw refused(exc);
    }
    label = coding.display || r.code.text || null;
  }
  const onset = r.onsetPeriod ? r.onsetPeriod.start : r.onsetDateTime;
  const abatement = r.abatementPeriod ? r.abatementPeriod.start : r.abatementDateTime;
  return ["condition", { system, code, label, onset: day(onset), abatement: day(abatement), status: codeOf(r.clinicalStatus), source: "fhir" }];
}

function medication(r, medications) {
  if (has(r, "medicationCodeableConcept")) return r.medicationCodeableConcept;
  const reference = r.medicationReference ? r.medicationReference.reference : null;
  let found;
  if (reference && reference.startsWith("#")) found = list(r.contained).find((c) => c.id === reference.slice(1));
  else found = medications.get(reference);
  return found && has(found, "code") ? found.code : null;
}

function reported(r) {
  const found = { efficacy: null, adherence: null, side_effects: [] };
  for (const extension of list(r.extension)) {
    const what = typeof extension.url === "string" && extension.url.startsWith(REPORTED) ? extension.url.slice(REPORTED.length) : null;
    if (what === "efficacy" || what === "adherence") found[what] = pyScore(extension.valueInteger ?? null, what);
    else if (what === "side-effect" && extension.valueString) found.side_effects.push(pyText(extension.valueString, "side effect", rec.MAX_NAME));
  }
  return found;
}

function treatmentRecord(entry, ctx) {
  const r = entry.raw;
  if (r.status === "entered-in-error") throw new Skipped("marked entered-in-error");
  const concept = medication(r, ctx.medications);
  notAbsent(concept);
  const name = conceptText(concept) || (r.medicationReference ? r.medicationReference.display || null : null);
  if (name === null) throw new Skipped("it names no medication");
  const codings = list(concept && concept.coding).filter((c) => c.system && c.code);
  const rxnorm = codings.find((c) => c.system === RXNORM);
  const code = rxnorm ? { system: "rxnorm", code: rxnorm.code } : codings.length ? { system: codings[0].system, code: codings[0].code } : null;
  let started, stopped, dosage, status;
  if (r.resourceType === "MedicationStatement") {
    const period = r.effectivePeriod;
    started = period ? day(period.start) : day(r.effectiveDateTime);
    stopped = period ? day(period.end) : null;
    [dosage, status] = [r.dosage, r.status];
  } else {
    [started, stopped, dosage] = [day(r.authoredOn), null, r.dosageInstruction];
    status = Object.hasOwn(REQUEST_STATUS, r.status) ? REQUEST_STATUS[r.status] : "active";
  }
  const doses = list(dosage).filter((d) => d.text).map((d) => d.text);
  return ["treatment", { name, dose: doses.join("; ") || null, started, stopped, ...reported(r), code,
    status: status === "unknown" ? null : status ?? null, source: "fhir" }];
}

/** records.journal() for what an import gives (a score may be absent there, as in Python). */
function pyJournal({ symptoms = {}, feeling = null, date }) {
  const clean = {};
  for (const [name, value] of Object.entries(symptoms)) {
    const key = pyText(name, "symptom name", rec.MAX_NAME);
    if (key === null) throw new InvalidFhir("a symptom needs a name, as NAME=0..10", "bad_symptom");
    clean[key.toLowerCase()] = pyScore(value, `symptom '${key}'`);
  }
  const entry = { date, symptoms: clean, feeling: pyScore(feeling, "feeling"), note: null, questionnaires: [] };
  if (!Object.keys(clean).length && entry.feeling === null) {
    throw new InvalidFhir("a journal entry needs a symptom, a feeling, a note or a questionnaire", "empty_entry");
  }
  return entry;
}

function journalObservation(entry, coding) {
  const r = entry.raw;
  const date = day(r.effectiveDateTime);
  if (date === null) throw new Skipped("a journal score without a full date");
  const value = r.valueInteger ?? null;
  if (coding.code === "symptom") return ["journal", pyJournal({ symptoms: { [r.code.text || ""]: value }, date })];
  return ["journal", pyJournal({ feeling: value, date })];
}

function observationRecord(entry, ctx) {
  const r = entry.raw;
  if (r.status === "entered-in-error") throw new Skipped("marked entered-in-error");
  const journal = list(r.code.coding).find((c) => c.system === JOURNAL && (c.code === "symptom" || c.code === "feeling"));
  if (journal) return journalObservation(entry, journal);
  const totals = new Set(Object.values(INSTRUMENTS).map((i) => i.loinc_total));
  if (list(r.code.coding).some((c) => c.system === LOINC && totals.has(c.code))
      && list(r.derivedFrom).some((d) => ctx.responses.has(d.reference))) {
    throw new Skipped("the total score of a questionnaire response imported with it (rxfed scores the answers)");
  }
  notAbsent(r.code);
  const code = coded(r.code);
  if (code === null) throw new Skipped("it has no code");
  const components = [];
  for (const component of list(r.component)) {
    const componentCode = coded(component.code);
    if (componentCode !== null) {
      const [value, unit] = valueOf(component);
      components.push({ code: componentCode, value, unit });
    }
  }
  const [value, unit] = valueOf(r);
  const effective = r.effectivePeriod ? r.effectivePeriod.start : r.effectiveDateTime || r.effectiveInstant;
  const category = list(r.category).map(codeOf).find((c) => c) || null;
  return ["observation", { code, category, date: day(effective), value, unit, components }];
}

function* leaves(items) {
  for (const item of items) {
    yield item;
    yield* leaves(list(item.item));
  }
}

function instrumentOf(r) {
  const canonical = r.questionnaire || "";
  for (const inst of Object.values(INSTRUMENTS)) if (canonical.includes(inst.loinc_panel)) return inst;
  const names = [...leaves(list(r.item))].map((item) => `${item.linkId} ${item.definition || ""}`);
  for (const inst of Object.values(INSTRUMENTS)) {
    if (inst.item_codes.some((code) => names.some((n) => n.includes(code)))) return inst;
  }
  return null;
}

function itemIndex(inst, item) {
  const n = Number(item.linkId);
  if (/^[1-9][0-9]*$/.test(item.linkId) && n <= inst.items.length) return n - 1;
  const name = `${item.linkId} ${item.definition || ""}`;
  const i = inst.item_codes.findIndex((code) => name.includes(code));
  return i < 0 ? null : i;
}

function answerOf(item) {
  for (const answer of list(item.answer)) {
    if (has(answer, "valueInteger")) return answer.valueInteger;
    if (has(answer, "valueCoding") && Object.hasOwn(LOINC_ANSWERS, answer.valueCoding.code)) return LOINC_ANSWERS[answer.valueCoding.code];
  }
  return null;
}

function questionnaireRecord(entry) {
  const r = entry.raw;
  const inst = instrumentOf(r);
  if (inst === null) throw new Skipped(`not a questionnaire rxfed scores (${Object.values(INSTRUMENTS).map((i) => i.title).join(", ")})`);
  if (r.status !== "completed" && r.status !== "amended") throw new Skipped(`not completed (its status is ${r.status})`);
  const date = day(r.authored);
  if (date === null) throw new Skipped("it has no full date");
  const answers = inst.items.map(() => null);
  for (const item of leaves(list(r.item))) {
    const index = itemIndex(inst, item);
    if (index !== null && answers[index] === null) answers[index] = answerOf(item);
  }
  if (answers.includes(null)) throw new Skipped(`a ${inst.title} item is unanswered, so it has no valid total`);
  let s;
  try {
    s = score(inst.name, answers);
  } catch (exc) {
    throw refused(exc);
  }
  return ["journal", { date, symptoms: {}, feeling: null, note: null,
    questionnaires: [{ instrument: s.instrument, answers: s.answers, total: s.total, severity: s.severity }] }];
}

const IMPORTERS = {
  Patient: patientRecord,
  Condition: conditionRecord,
  MedicationStatement: treatmentRecord,
  MedicationRequest: treatmentRecord,
  Medication: () => { throw new Skipped("a medication definition, read into the medication records that refer to it"); },
  Observation: observationRecord,
  QuestionnaireResponse: questionnaireRecord,
};

const merged = (first, more) => ({ ...first, symptoms: { ...first.symptoms, ...more.symptoms },
  feeling: first.feeling !== null ? first.feeling : more.feeling, questionnaires: [...first.questionnaires, ...more.questionnaires] });

// -- identifying details stay in the profile -------------------------------------------------------------

function identifyingStrings(patient) {
  const names = [...list(patient.name)], telecoms = [...list(patient.telecom)], addresses = [...list(patient.address)];
  for (const contact of list(patient.contact)) {
    if (contact.name) names.push(contact.name);
    telecoms.push(...list(contact.telecom));
    if (contact.address) addresses.push(contact.address);
  }
  const found = [...list(patient.identifier).map((i) => i.value), ...telecoms.map((t) => t.value)];
  for (const name of names) found.push(name.family, name.text, ...list(name.given));
  for (const extension of list(patient.extension)) {
    if (extension.url === MOTHERS_MAIDEN_NAME) found.push(extension.valueString);
    if (extension.valueAddress) addresses.push(extension.valueAddress);
  }
  for (const address of addresses) found.push(address.city, address.postalCode, address.text, ...list(address.line));
  // initials and short numbers would also match innocent words and doses
  return new Set(found.filter((s) => typeof s === "string").map((s) => s.trim())
    .filter((s) => [...s].length >= 2 && !(/^\p{Nd}+$/u.test(s) && [...s].length < 4)));
}

const escapeRegExp = (s) => s.replace(/[\\^$.*+?()[\]{}|/]/g, "\\$&");

function redactor(patients) {
  const strings = new Set(patients.flatMap((p) => [...identifyingStrings(p)]));
  if (!strings.size) return (value) => value;
  const alternatives = [...strings].sort((a, b) => [...b].length - [...a].length).map(escapeRegExp).join("|");
  const pattern = new RegExp(`(?<![\\p{L}\\p{N}_])(?:${alternatives})(?![\\p{L}\\p{N}_])`, "giu");
  const redact = (value, key = null) => {
    if (Array.isArray(value)) return value.map((v) => redact(v));
    if (isObject(value)) return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, redact(v, k)]));
    if (typeof value === "string" && !["system", "code", "import_key"].includes(key)) return value.replace(pattern, "[redacted]");
    return value;
  };
  return redact;
}

// -- import -------------------------------------------------------------------------------------------------

/** Records from a FHIR R4 Bundle (parsed with parseJson): {records: [kind, data] with
 * data.import_key, skipped: {type: n}, skippedWhy, notes: [{type, reason, count}]}, or
 * InvalidFhir (code invalid_fhir, several_patients, or the records' own) and nothing. */
export function importBundle(doc, floats = new WeakMap()) {
  const all = validated(doc);
  const entries = [];
  all.forEach((entry, index) => {
    if (isObject(entry.resource)) {
      entries.push({ index, fullUrl: entry.fullUrl ?? null, raw: entry.resource, key: importKey(entry.fullUrl ?? null, entry.resource, floats) });
    }
  });
  checkOnePatient(entries);
  const notes = new Map();
  const ctx = { medications: new Map(), responses: new Set(),
    note: (type, reason) => notes.set(`${type}\u0000${reason}`, (notes.get(`${type}\u0000${reason}`) || 0) + 1) };
  for (const e of entries) {
    const kind = e.raw.resourceType, rid = e.raw.id;
    const names = [e.fullUrl, rid ? `${kind}/${rid}` : null].filter((n) => n !== null);
    if (kind === "Medication") for (const n of names) ctx.medications.set(n, e.raw);
    else if (kind === "QuestionnaireResponse") for (const n of names) ctx.responses.add(n);
  }
  const redact = redactor(entries.filter((e) => e.raw.resourceType === "Patient").map((e) => e.raw));
  const records = new Map(), why = new Map();
  for (const entry of entries) {
    const kind = entry.raw.resourceType;
    let recordKind, data, earlier;
    try {
      const convert = IMPORTERS[kind];
      if (!convert) throw new Skipped(NOT_KEPT);
      [recordKind, data] = convert(entry, ctx);
      earlier = records.get(entry.key);
      if (earlier !== undefined && !(earlier[0] === "journal" && recordKind === "journal")) throw new Skipped("it appears twice in the Bundle");
    } catch (exc) {
      if (exc instanceof Skipped) {
        const k = `${kind}\u0000${exc.reason}`;
        why.set(k, (why.get(k) || 0) + 1);
        continue;
      }
      if (exc instanceof InvalidFhir && exc.code !== "invalid_fhir") throw new InvalidFhir(`entry ${entry.index} (${kind}): ${exc.message}`, exc.code);
      throw exc;
    }
    if (recordKind !== "profile") data = redact(data);
    if (earlier !== undefined) data = merged(earlier[1], data);
    records.set(entry.key, [recordKind, { ...data, import_key: entry.key }]);
  }
  const tallies = (counts) => [...counts].map(([k, count]) => {
    const [type, reason] = k.split("\u0000");
    return { type, reason, count };
  });
  const skippedWhy = tallies(why);
  const skipped = {};
  for (const t of skippedWhy) skipped[t.type] = (skipped[t.type] || 0) + t.count;
  return { records: [...records.values()], skipped, skippedWhy, notes: tallies(notes) };
}

// -- export -------------------------------------------------------------------------------------------------

const STATEMENT_STATUSES = ["active", "completed", "entered-in-error", "intended", "stopped", "on-hold", "unknown", "not-taken"];

function uuidBytes(text) {
  const hex = text.replace(/-/g, "");
  return Uint8Array.from({ length: 16 }, (_, i) => parseInt(hex.slice(2 * i, 2 * i + 2), 16));
}

/** A name-based UUID (RFC 4122 version 5, SHA-1), as Python's uuid.uuid5. */
async function uuid5(namespace, name) {
  const data = new Uint8Array([...uuidBytes(namespace), ...new TextEncoder().encode(name)]);
  const hash = new Uint8Array(await crypto.subtle.digest("SHA-1", data)).slice(0, 16);
  hash[6] = (hash[6] & 0x0f) | 0x50;
  hash[8] = (hash[8] & 0x3f) | 0x80;
  const h = [...hash].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

async function exportId(recordId, ...parts) {
  let value = await uuid5(EXPORT_NAMESPACE, recordId);
  for (const part of parts) value = await uuid5(value, part);
  return value;
}

const EMPTY = (v) => v === null || v === undefined || v === "" || (Array.isArray(v) && !v.length) || (isObject(v) && !Object.keys(v).length);

/** Drop empty values and containers: FHIR forbids empty elements. */
function prune(resource) {
  const out = {};
  for (let [key, value] of Object.entries(resource)) {
    if (isObject(value)) value = prune(value);
    else if (Array.isArray(value)) value = value.map((v) => (isObject(v) ? prune(v) : v)).filter((v) => !EMPTY(v));
    if (!EMPTY(value)) out[key] = value;
  }
  return out;
}

function concept(code, text = null) {
  code = code || {};
  const coding = { system: code.system ?? null, code: code.code ?? null, display: code.display ?? null };
  return { coding: code.code ? [coding] : [], text: text || code.display || null };
}

function valueFields(value, unit) {
  if (value === null || value === undefined) return {};
  if (typeof value === "boolean") return { valueBoolean: value };
  if (Number.isInteger(value) && (unit === null || unit === undefined)) return { valueInteger: value };
  if (typeof value === "number") return { valueQuantity: { value, unit: unit ?? null } };
  return { valueString: String(value) };
}

const keyIdentifier = (key) => ({ system: RECORD_KEY_SYSTEM, value: key });

class Exporter {
  constructor(patientUrl) {
    this.subject = { reference: patientUrl };
    this.entries = [];
  }

  add(key, record, resource) {
    const url = `urn:uuid:${key}`;
    const identifier = keyIdentifier(record);
    const full = { resourceType: resource.resourceType, id: key,
      identifier: resource.resourceType === "QuestionnaireResponse" ? identifier : [identifier], ...resource };
    this.entries.push({ fullUrl: url, resource: prune(full) });
    return url;
  }

  observation(key, record, code, date, category = null, fields = {}) {
    return this.add(key, record, { resourceType: "Observation", status: "final",
      category: category ? [{ coding: [{ system: OBSERVATION_CATEGORY, code: category }] }] : [],
      code, subject: this.subject, effectiveDateTime: date ?? null, ...fields });
  }

  async condition(id, data) {
    const { system, label = null, status = null } = data;
    const coding = system !== null && system !== undefined
      ? [{ system: SYSTEM_URIS[system], code: normaliseCode(system, data.code), display: label }] : [];
    this.add(await exportId(id), rec.recordKey(id, data), {
      resourceType: "Condition",
      clinicalStatus: CLINICAL_STATUSES.includes(status) ? { coding: [{ system: CONDITION_CLINICAL, code: status }] } : null,
      code: { coding, text: label }, subject: this.subject, onsetDateTime: data.onset ?? null, abatementDateTime: data.abatement ?? null,
    });
  }

  async treatment(id, data) {
    const code = data.code || {};
    const system = code.system === "rxnorm" ? RXNORM : code.system ?? null;
    let status = data.status ?? null;
    status = STATEMENT_STATUSES.includes(status) ? status : Object.hasOwn(REQUEST_STATUS, status) ? REQUEST_STATUS[status] : "unknown";
    const reportedText = ["efficacy", "adherence"].filter((w) => has(data, w)).map((w) => `${w} ${data[w]}/10`);
    if (list(data.side_effects).length) reportedText.push("side effects: " + data.side_effects.join(", "));
    this.add(await exportId(id), rec.recordKey(id, data), {
      resourceType: "MedicationStatement",
      extension: [...["efficacy", "adherence"].filter((w) => has(data, w)).map((w) => ({ url: REPORTED + w, valueInteger: data[w] })),
        ...list(data.side_effects).map((effect) => ({ url: REPORTED + "side-effect", valueString: effect }))],
      status,
      medicationCodeableConcept: concept({ system, code: code.code ?? null }, data.name),
      subject: this.subject,
      effectivePeriod: { start: data.started ?? null, end: data.stopped ?? null },
      dosage: [{ text: data.dose ?? null }],
      note: reportedText.length ? [{ text: "Patient-reported: " + reportedText.join("; ") }] : [],
    });
  }

  async observationRecord(id, data) {
    const components = list(data.components).map((c) => ({ code: concept(c.code), ...valueFields(c.value, c.unit) }));
    this.observation(await exportId(id), rec.recordKey(id, data), concept(data.code), data.date ?? null, data.category ?? null,
      { component: components, ...valueFields(data.value, data.unit) });
  }

  async journal(id, data) {
    const date = data.date, key = rec.recordKey(id, data);
    for (const [index, storedScore] of list(data.questionnaires).entries()) {
      const s = fromStored(storedScore);
      const inst = INSTRUMENTS[s.instrument];
      const response = this.add(await exportId(id, "questionnaire", String(index)), key, {
        resourceType: "QuestionnaireResponse", questionnaire: `${LOINC}/q/${inst.loinc_panel}`, status: "completed",
        subject: this.subject, authored: date,
        item: inst.items.map((text, i) => ({ linkId: String(i + 1), text, answer: [{ valueInteger: s.answers[i] }] })),
      });
      this.observation(await exportId(id, "questionnaire", String(index), "total"), key,
        { coding: [{ system: LOINC, code: inst.loinc_total, display: `${inst.title} total score` }] }, date, "survey",
        { valueInteger: s.total, interpretation: [{ text: s.severity }], derivedFrom: [{ reference: response }] });
    }
    for (const name of Object.keys(data.symptoms || {}).sort(rec.byCodePoint)) {
      this.observation(await exportId(id, "symptom", name), key,
        { coding: [{ system: JOURNAL, code: "symptom", display: "Symptom severity the patient reported, 0 to 10" }], text: name },
        date, "survey", { valueInteger: data.symptoms[name] });
    }
    if (has(data, "feeling")) {
      this.observation(await exportId(id, "feeling"), key,
        { coding: [{ system: JOURNAL, code: "feeling", display: "How the patient felt overall, 0 to 10" }], text: "overall feeling" },
        date, "survey", { valueInteger: data.feeling });
    }
  }
}

/** A FHIR R4 collection Bundle of [kind, data, id] records (fhir.export_bundle): the
 * Patient is the first profile's imported resource, or a bare one with id `patientRef`;
 * kinds without a FHIR form and journal notes are left out. */
export async function exportBundle(records, patientRef) {
  if (typeof patientRef !== "string" || !FHIR_ID.test(patientRef)) throw bad("the patient reference must be 1 to 64 letters, digits, '-' or '.'");
  const profile = records.find(([kind]) => kind === "profile");
  let key, patient;
  if (profile !== undefined) {
    key = await exportId(profile[2]);
    patient = { ...structuredClone(profile[1].fhir_patient), id: key };
    patient.identifier = [...list(patient.identifier), keyIdentifier(rec.recordKey(profile[2], profile[1]))];
  } else {
    key = await exportId(patientRef);
    patient = { resourceType: "Patient", id: patientRef };
  }
  const exporter = new Exporter(`urn:uuid:${key}`);
  exporter.entries.push({ fullUrl: `urn:uuid:${key}`, resource: patient });
  const converters = { condition: "condition", treatment: "treatment", observation: "observationRecord", journal: "journal" };
  for (const [kind, data, id] of records) {
    if (Object.hasOwn(converters, kind)) await exporter[converters[kind]](id, data);
  }
  return { resourceType: "Bundle", type: "collection", entry: exporter.entries };
}

// -- consent --------------------------------------------------------------------------------------------------

const { CONSENT_SCOPE, CONSENT_CATEGORY, CONSENT_ROLE, CONSENT_GRANT, CONSENT_PURPOSE, CONSENT_KIND, CONSENT_RECIPIENT } = FHIR;

/** A FHIR instant of a Unix time in whole seconds, as Python's strftime("%Y-%m-%dT%H:%M:%SZ"). */
function instant(unix) {
  if (!Number.isSafeInteger(unix)) throw bad("a grant's time is not a whole number of seconds");
  return new Date(unix * 1000).toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** The patient's consent grants (as PageConsent.list gives them, the CLI's `consent list`)
 * as FHIR R4B Consent resources in a collection Bundle (fhir.consent_bundle, what `rxfed
 * patient consent export` writes): status active / inactive (revoked, expired or signed by
 * no device of the patient's), the signal kind as provision.class, the purpose as
 * provision.purpose, the recipient as an actor identifier, the grant's period as
 * provision.period (to its revocation, if revoked). */
export async function consentBundle(patientRef, grants) {
  const key = await exportId(patientRef);
  const patientUrl = `urn:uuid:${key}`;
  const entries = [{ fullUrl: patientUrl, resource: { resourceType: "Patient", id: key } }];
  for (const g of grants) {
    const consentId = await exportId(patientRef, "consent", g.grant);
    const end = g.revoked ? g.revoked : g.not_after;
    const resource = {
      resourceType: "Consent", id: consentId,
      identifier: [{ system: CONSENT_GRANT, value: g.grant }],
      status: g.status === "live" ? "active" : "inactive",
      scope: { coding: [{ ...CONSENT_SCOPE }] }, category: [{ coding: [{ ...CONSENT_CATEGORY }] }],
      patient: { reference: patientUrl }, dateTime: instant(g.created),
      policyRule: { text: "rxfed consent grant: signed by the patient, revocable at any time" },
      provision: {
        type: "permit", period: { start: instant(g.created), end: instant(end) },
        actor: [{ role: { coding: [{ ...CONSENT_ROLE }] },
          reference: { identifier: { system: CONSENT_RECIPIENT, value: g.recipient }, display: g.recipient } }],
        purpose: [{ system: CONSENT_PURPOSE, code: g.purpose }],
        class: [{ system: CONSENT_KIND, code: g.kind }],
      },
    };
    entries.push({ fullUrl: `urn:uuid:${consentId}`, resource });
  }
  return { resourceType: "Bundle", type: "collection", entry: entries };
}
