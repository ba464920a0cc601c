// The built-in signal kinds derived in the page, exactly as the built-in plugin
// rxfed_plugins.signals derives them on the CLI's device (spec/signals.md): what a grant
// would share, shown before the patient signs it and sealed when it is shared.
// tests/test_web_consent.py derives every kind from the same records in Python and here.
// Plugins installed beside rxfed may derive other kinds or add SNOMED CT mappings; those run
// in Python only, and the page says so (spec/web.md §7).

import { SNOMED_ICD10 } from "./tables.mjs";

export const KINDS = ["diagnosis.category", "treatment.outcome", "symptom.trend", "demographics.band"];
const CATEGORY = /^[A-U][0-9][0-9A-Z]$/;
const NAME = /^(?=[a-z0-9 -]{2,})[a-z][a-z0-9-]*(?: [a-z][a-z0-9-]*){0,5}$/;
const NAME_LENGTH = 48;
const LEVELS = ["low", "medium", "high"];
const AGE_BANDS = ["0-17", "18-29", "30-39", "40-49", "50-59", "60-69", "70-79", "80-89", "90+"];
const ENTRY_BANDS = ["1-2", "3-9", "10+"];
const SEXES = ["female", "male", "other", "unknown"];
const WINDOW_WEEKS = 4;
const FIRST_YEAR = 1900, LAST_YEAR = 2100;
const ENDED = ["inactive", "resolved"];
const NOT_TAKEN = ["stopped", "completed", "cancelled", "not-taken", "on-hold", "entered-in-error"];
const COUNTRY_ALIASES = { UK: "GB", USA: "US", "UNITED STATES": "US", "UNITED STATES OF AMERICA": "US", "UNITED KINGDOM": "GB" };
// Python's str whitespace, in the ASCII range the names are folded to
const WS = "[\\t\\n\\v\\f\\r \\x1c-\\x1f]";

const words = (text) => text.split(/[\t\n\v\f\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/).filter(Boolean);
const byCodePoint = (a, b) => (a < b ? -1 : a > b ? 1 : 0); // the strings compared here are ASCII

// -- names ----------------------------------------------------------------------------------
const BRACKETED = /\[[^\]]*\]|\([^)]*\)|\{[^}]*\}/g;
const TOKEN = /[a-z0-9][a-z0-9./%-]*/g;
const UNITS = new Set(`mg mcg ug g kg ml l dl unt unit units iu meq mmol actuat actuation hr hrs h day days week weeks
  milligram milligrams microgram micrograms gram grams milliliter millilitre milliliters millilitres`.split(/\s+/));
const FORMS = new Set(`oral tablet tablets tab tabs capsule capsules cap caps solution suspension injection injectable
  syrup elixir cream ointment gel lotion patch patches transdermal inhaler inhalation spray nasal
  drops ophthalmic otic topical extended delayed release chewable disintegrating sublingual buccal
  rectal vaginal suppository powder prefilled syringe pen auto-injector cartridge metered dose
  film coated kit vial ampule intravenous subcutaneous intramuscular`.split(/\s+/));
const SALTS = new Set(`hydrochloride hcl dihydrochloride hydrobromide sodium potassium calcium magnesium sulfate
  sulphate maleate besylate besilate mesylate succinate tartrate bitartrate citrate acetate
  fumarate phosphate bromide monohydrate dihydrate trihydrate hyclate`.split(/\s+/));
const PRODUCT = new RegExp(`^${WS}*(?:medicinal${WS}+)?product${WS}+containing${WS}+(?:(?:only|precisely)${WS}+)*(.*)$`, "s");
const CONTAINING = new RegExp(`^${WS}*(.*?)-containing${WS}+product\\b.*$`, "s");
const isDigit = (ch) => ch >= "0" && ch <= "9";

const asciiLower = (text) => text.normalize("NFKD").replace(/[^\x00-\x7f]/g, "").toLowerCase().replace(/'/g, "");
const isUnit = (token) => UNITS.has(token) || token.split("/").filter(Boolean).every((part) => UNITS.has(part));

function nameWords(segment, drug) {
  let tokens = (segment.match(TOKEN) || []).map((t) => t.replace(/[./-]+$/, "")).filter(Boolean);
  if (drug) {
    while (tokens.length && ([...tokens[0]].some(isDigit) || isUnit(tokens[0]))) tokens = tokens.slice(1);
  }
  const out = [];
  for (const token of tokens) {
    if (isDigit(token[0]) || (drug && (isUnit(token) || FORMS.has(token)))) break;
    out.push(token);
  }
  if (drug) while (out.length > 1 && SALTS.has(out[out.length - 1])) out.pop();
  return out;
}

function ingredients(cleaned) {
  const product = PRODUCT.exec(cleaned) || CONTAINING.exec(cleaned);
  if (product !== null) return product[1].split(new RegExp(`${WS}(?:and|/)${WS}`));
  return cleaned.split(new RegExp(`${WS}/${WS}`));
}

const fits = (name) => name.length <= NAME_LENGTH && NAME.test(name);

/** A treatment, side-effect or symptom name as it may leave the device, else null
 * (rxfed_plugins.signals.normalise_name). */
export function normaliseName(text, { drug = false } = {}) {
  if (typeof text !== "string") return null;
  const cleaned = asciiLower(text).replace(BRACKETED, " ");
  const names = [...new Set((drug ? ingredients(cleaned) : [cleaned]).map((part) => nameWords(part, drug).join(" ")).filter(Boolean))]
    .sort(byCodePoint);
  if (!names.length) return null;
  const whole = names.join(" and ");
  if (fits(whole) || names.length === 1) return fits(whole) ? whole : null;
  const short = names.map((name) => name.split(" ")[0]).join(" ");
  return fits(short) ? short : null;
}

// -- dates: as Python's date.fromisoformat reads them -------------------------------------------
function dayNumber(year, month, day) {
  if (year < 1 || month < 1 || month > 12 || day < 1) return null;
  const d = new Date(0);
  d.setUTCFullYear(year, month - 1, day);
  if (d.getUTCFullYear() !== year || d.getUTCMonth() !== month - 1 || d.getUTCDate() !== day) return null;
  return Math.round(d.getTime() / 86400000);
}

function weekDate(year, week, weekday) {
  const jan1 = dayNumber(year, 1, 1);
  if (jan1 === null || weekday < 1 || weekday > 7) return null;
  const jan1Weekday = ((jan1 % 7) + 7 + 3) % 7; // Monday 0 (day 0, 1970-01-01, was a Thursday)
  const leap = dayNumber(year, 2, 29) !== null;
  if (!(week > 0 && week < 53) && !(week === 53 && (jan1Weekday === 3 || (jan1Weekday === 2 && leap)))) return null;
  const jan4 = jan1 + 3;
  const monday1 = jan4 - (((jan4 % 7) + 7 + 3) % 7);
  return monday1 + (week - 1) * 7 + (weekday - 1);
}

/** {day (days since 1970-01-01), year} for what Python's date.fromisoformat accepts, else null. */
export function isoDay(value) {
  if (typeof value !== "string") return null;
  let m, day = null;
  if ((m = /^([0-9]{4})-([0-9]{2})-([0-9]{2})$/.exec(value)) || (m = /^([0-9]{4})([0-9]{2})([0-9]{2})$/.exec(value))) {
    day = dayNumber(+m[1], +m[2], +m[3]);
  } else if ((m = /^([0-9]{4})-W([0-9]{2})(?:-([0-9]))?$/.exec(value)) || (m = /^([0-9]{4})W([0-9]{2})([0-9])?$/.exec(value))) {
    day = weekDate(+m[1], +m[2], m[3] === undefined ? 1 : +m[3]);
  }
  if (day === null) return null;
  return { day, year: new Date(day * 86400000).getUTCFullYear() };
}

const todayOf = (today) => isoDay(today);

// -- helpers ----------------------------------------------------------------------------------
const isObject = (x) => x !== null && typeof x === "object" && !Array.isArray(x);
/** Python's truth of a JSON value: empty lists and objects are false too. */
const truthy = (x) => (Array.isArray(x) ? x.length > 0 : isObject(x) ? Object.keys(x).length > 0 : Boolean(x));
function ofKind(records, kind) {
  return records.filter((r) => r.kind === kind && isObject(r.data))
    .map((r, i) => [String(r.created ?? ""), i, r]).sort((a, b) => byCodePoint(a[0], b[0]) || a[1] - b[1]).map((x) => x[2]);
}

function yearWithin(value, today) {
  const d = isoDay(value);
  return d !== null && FIRST_YEAR <= d.year && d.year <= Math.min(today.year, LAST_YEAR) ? d.year : null;
}

/** 0-3 low, 4-6 medium, 7-10 high, for a mean num/den rounded half up. */
function level(num, den = 1) {
  const rounded = Math.floor((2 * num + den) / (2 * den));
  return rounded <= 3 ? LEVELS[0] : rounded <= 6 ? LEVELS[1] : LEVELS[2];
}

const score = (value) => (Number.isInteger(value) && value >= 0 && value <= 10 ? value : null);

function fhirPatient(records) {
  const profiles = ofKind(records, "profile");
  const patient = profiles.length ? profiles[profiles.length - 1].data.fhir_patient : null;
  return isObject(patient) ? patient : {};
}

const yearOf = (value) => {
  const m = typeof value === "string" ? /^([0-9]{4})/.exec(value) : null;
  return m ? +m[1] : null;
};

function age(records, today) {
  const patient = fhirPatient(records);
  const born = yearOf(patient.birthDate);
  if (patient.deceasedBoolean === true) return null;
  const died = yearOf(patient.deceasedDateTime);
  const until = died !== null ? Math.min(died, today.year) : today.year;
  return born !== null && born <= until ? until - born : null;
}

function yearsAllowed(records, today) {
  const a = age(records, today);
  if (a === null) return yearOf(fhirPatient(records).birthDate) === null;
  return a < 90;
}

// -- derivations ------------------------------------------------------------------------------
function category(data) {
  if (typeof data.code !== "string") return null;
  const code = data.code.replace(/^[\s\x1c-\x1f\x85]+|[\s\x1c-\x1f\x85]+$/g, "");
  let found = null;
  if (data.system === "icd10") {
    const m = /^[\x00-\x7f]*$/.test(code) ? /^([A-Z][0-9][0-9A-Z])(?:\.?([0-9A-Z]{1,4}))?$/.exec(code.toUpperCase()) : null;
    found = m ? m[1] : null;
  } else if (data.system === "snomed") {
    found = Object.hasOwn(SNOMED_ICD10, code) ? SNOMED_ICD10[code] : null; // every id in the table is a valid concept id
  }
  return found !== null && CATEGORY.test(found) ? found : null;
}

export function categories(records, today) {
  const found = new Map();
  for (const record of ofKind(records, "condition")) {
    const data = record.data;
    if (truthy(data.abatement) || ENDED.includes(data.status)) continue;
    const cat = category(data);
    if (cat === null) continue;
    if (!found.has(cat)) found.set(cat, { system: "icd10", category: cat, source: "snomed" });
    const body = found.get(cat);
    if (data.system === "icd10") body.source = "icd10";
    const onset = yearWithin(data.onset, today);
    if (onset !== null && onset < (body.onset_year ?? LAST_YEAR + 1)) body.onset_year = onset;
  }
  if (!yearsAllowed(records, today)) for (const body of found.values()) delete body.onset_year;
  return [...found.keys()].sort(byCodePoint).map((c) => found.get(c));
}

function rxnorm(data) {
  const code = data.code;
  if (isObject(code) && code.system === "rxnorm" && typeof code.code === "string") return /^[0-9]{1,10}$/.test(code.code) ? code.code : null;
  return null;
}

const last = (values) => {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null && values[i] !== undefined) return values[i];
  return null;
};

function ongoing(data, today) {
  const stopped = isoDay(data.stopped);
  return (stopped === null || stopped.day > today.day) && !NOT_TAKEN.includes(data.status);
}

export function treatmentOutcomes(records, today) {
  const found = new Set(categories(records, today).map((b) => b.category));
  const only = found.size === 1 ? [...found][0] : null;
  const years = yearsAllowed(records, today);
  const byName = new Map();
  for (const record of ofKind(records, "treatment")) {
    const name = normaliseName(record.data.name, { drug: true });
    if (name !== null) byName.set(name, [...(byName.get(name) || []), record.data]);
  }
  const bodies = [];
  for (const name of [...byName.keys()].sort(byCodePoint)) {
    const group = byName.get(name).map((d, i) => [String(d.started || ""), i, d])
      .sort((a, b) => byCodePoint(a[0], b[0]) || a[1] - b[1]).map((x) => x[2]);
    const body = { treatment: name, status: group.some((d) => ongoing(d, today)) ? "ongoing" : "stopped" };
    if (only !== null) body.category = only;
    const code = last(group.map(rxnorm));
    if (code !== null) body.rxnorm = code;
    for (const field of ["efficacy", "adherence"]) {
      const s = last(group.map((d) => score(d[field])));
      if (s !== null) body[field] = level(s);
    }
    const effects = [...new Set(group.flatMap((d) => (Array.isArray(d.side_effects) ? d.side_effects : [])).map((e) => normaliseName(e)).filter(Boolean))]
      .sort(byCodePoint);
    if (effects.length) body.side_effects = effects.slice(0, 10);
    const started = group.map((d) => yearWithin(d.started, today)).filter((y) => y !== null);
    if (started.length && years) body.started_year = Math.min(...started);
    bodies.push(body);
  }
  return bodies;
}

const entriesBand = (n) => (n <= 2 ? ENTRY_BANDS[0] : n <= 9 ? ENTRY_BANDS[1] : ENTRY_BANDS[2]);

export function symptomTrends(records, today) {
  const half = (WINDOW_WEEKS * 7) / 2;
  const scores = new Map();
  for (const record of ofKind(records, "journal")) {
    const d = isoDay(record.data.date);
    const ago = d !== null ? today.day - d.day : -1;
    if (!(ago >= 0 && ago < 2 * half)) continue;
    const symptoms = isObject(record.data.symptoms) ? record.data.symptoms : {};
    for (const [raw, value] of Object.entries(symptoms)) {
      const name = normaliseName(raw), s = score(value);
      if (name === null || s === null) continue;
      if (!scores.has(name)) scores.set(name, [[], []]);
      scores.get(name)[ago < half ? 0 : 1].push(s);
    }
  }
  const bodies = [];
  const sum = (xs) => xs.reduce((a, b) => a + b, 0);
  for (const name of [...scores.keys()].sort(byCodePoint)) {
    const [recent, earlier] = scores.get(name);
    if (!recent.length || !earlier.length) continue;
    // (mean recent - mean earlier) compared with ±1, exactly: scaled by both counts
    const diff = sum(recent) * earlier.length - sum(earlier) * recent.length, unit = recent.length * earlier.length;
    const direction = diff <= -unit ? "improving" : diff >= unit ? "worsening" : "stable";
    bodies.push({ symptom: name, window_weeks: WINDOW_WEEKS, direction, level: level(sum(recent), recent.length),
      entries: entriesBand(recent.length + earlier.length) });
  }
  return bodies;
}

function ageBand(a) {
  if (a < 18) return AGE_BANDS[0];
  if (a < 30) return AGE_BANDS[1];
  return AGE_BANDS[Math.min(Math.floor(a / 10) - 1, AGE_BANDS.length - 1)];
}

function country(patient) {
  const addresses = (Array.isArray(patient.address) ? patient.address : []).filter((a) => isObject(a) && a.use !== "old")
    .map((a, i) => [a.use !== "home" ? 1 : 0, i, a]).sort((x, y) => x[0] - y[0] || x[1] - y[1]).map((x) => x[2]);
  for (const address of addresses) {
    if (typeof address.country !== "string") continue;
    let code = words(address.country.toUpperCase()).join(" ");
    code = COUNTRY_ALIASES[code] ?? code;
    if (/^[A-Z]{2}$/.test(code)) return code;
  }
  return null;
}

export function demographics(records, today) {
  const a = age(records, today);
  if (a === null) return [];
  const patient = fhirPatient(records);
  const body = { age_band: ageBand(a), sex: SEXES.includes(patient.gender) ? patient.gender : "unknown" };
  const c = country(patient);
  if (c !== null) body.country = c;
  return [body];
}

/** The bodies of a built-in `kind` from the page's decrypted records ({kind, created, data}),
 * on `today` (YYYY-MM-DD, UTC); null for a kind only a plugin in Python derives. */
export function derive(kind, records, today) {
  const t = todayOf(today);
  if (t === null) throw new Error("today must be a date like 2026-01-31");
  if (kind === "diagnosis.category") return categories(records, t);
  if (kind === "treatment.outcome") return treatmentOutcomes(records, t);
  if (kind === "symptom.trend") return symptomTrends(records, t);
  if (kind === "demographics.band") return demographics(records, t);
  return null;
}

/** The body if it fits `kind` exactly (SignalKind.validate, from the schema a node publishes
 * in GET /v1/consent/nodes), else an Error naming the field: every field a closed
 * vocabulary, no field the kind does not have. */
export function validateSignal(kind, body) {
  if (!isObject(body)) throw new Error(`a ${kind.name} signal must be an object`);
  const unknown = Object.keys(body).filter((k) => !Object.hasOwn(kind.fields, k)).sort();
  if (unknown.length) throw new Error(`a ${kind.name} signal has no field ${unknown[0]}`);
  const one = (spec, value, where) => {
    if (spec.type === "int") {
      if (!Number.isSafeInteger(value) || value < spec.lo || value > spec.hi) throw new Error(`${where} must be a whole number from ${spec.lo} to ${spec.hi}`);
    } else if (spec.type === "choice") {
      if (!spec.choices.includes(value)) throw new Error(`${where} must be one of ${spec.choices.join(", ")}`);
    } else if (typeof value !== "string" || value.length > spec.max_length || !new RegExp(`^(?:${spec.pattern})$`).test(value)) {
      throw new Error(`${where} must match ${spec.pattern}`);
    }
  };
  const out = {};
  for (const [name, spec] of Object.entries(kind.fields)) {
    const value = body[name] ?? null, where = `${kind.name}.${name}`;
    if (value === null) {
      if (spec.required) throw new Error(`${where} is required`);
      continue;
    }
    if (spec.many) {
      if (!Array.isArray(value) || value.length > spec.max_items) throw new Error(`${where} must be a list of at most ${spec.max_items} items`);
      value.forEach((item, i) => one(spec, item, `${where}[${i}]`));
    } else {
      one(spec, value, where);
    }
    out[name] = value;
  }
  return out;
}
