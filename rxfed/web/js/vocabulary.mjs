// Diagnosis codes in the page: ICD-10 and SNOMED CT checked as rxfed/vocabulary/codes.py
// checks them (format, Verhoeff check digit, concept partition), the FHIR system URIs of
// both, and a search over the labels of tables.mjs (generated from the package's data).

import { CONCEPTS, SYSTEM_ALIASES, SYSTEM_URIS } from "./tables.mjs";

export class InvalidCode extends Error {
  constructor(message) {
    super(message);
    this.code = "invalid_code";
  }
}

/** The URI rxfed writes for each code system it knows; every name HL7 registers for them
 * (codes.py SYSTEM_URIS and _ALIASES, through tables.mjs). */
export { SYSTEM_URIS };
const URI_SYSTEMS = new Map(Object.entries(SYSTEM_ALIASES).flatMap(([name, uris]) => uris.map((u) => [u, name])));

const ICD10 = /^([A-Z][0-9][0-9A-Z])(?:\.?([0-9A-Z]{1,4}))?$/;
const ICD10_SHAPE = "a letter, a digit, a digit or letter, then optionally a dot and 1 to 4 letters or digits "
  + "(e.g. E11, E11.9, G40.909, S72.001A)";
const SNOMED = /^[1-9][0-9]{5,17}$/;
const CONCEPT_PARTITIONS = ["00", "10"];

// Verhoeff's tables (codes.py): multiplication in D5, the position permutation, the inverse.
const D = [
  [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
  [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
  [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
  [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
];
const P = [
  [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4], [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
  [8, 9, 1, 6, 0, 4, 3, 5, 2, 7], [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
  [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
];

export function verhoeffValid(number) {
  if (!/^[0-9]+$/.test(number)) return false;
  let check = 0;
  [...number].reverse().forEach((digit, position) => { check = D[check][P[position % 8][Number(digit)]]; });
  return check === 0;
}

// Python's repr() of a short string, as codes.py quotes a wrong code back.
const shown = (code) => `'${code.length <= 40 ? code : code.slice(0, 40) + "..."}'`;

/** The canonical form of a diagnosis code (codes.normalise_code), or InvalidCode saying what
 * shape was expected: ICD-10 upper case with its dot, SNOMED CT as given once checked. */
export function normaliseCode(system, code) {
  if (typeof code !== "string") throw new InvalidCode("a diagnosis code must be text");
  code = code.trim();
  if (system === "icd10") {
    // only ASCII is upper-cased: "ı".toUpperCase() is "I"
    const m = /^[\x00-\x7f]*$/.test(code) ? ICD10.exec(code.toUpperCase()) : null;
    if (m === null) throw new InvalidCode(`${shown(code)} is not an ICD-10 code: expected ${ICD10_SHAPE}`);
    return m[2] ? `${m[1]}.${m[2]}` : m[1];
  }
  if (system === "snomed") {
    if (!SNOMED.test(code)) {
      throw new InvalidCode(`${shown(code)} is not a SNOMED CT concept id: expected 6 to 18 digits, not starting with 0 (e.g. 44054006)`);
    }
    if (!verhoeffValid(code)) {
      throw new InvalidCode(`${shown(code)} is not a SNOMED CT concept id: its check digit is wrong; look for a mistyped or swapped digit`);
    }
    const partition = code.slice(-3, -1);
    if (!CONCEPT_PARTITIONS.includes(partition)) {
      throw new InvalidCode(`${shown(code)} is a SNOMED CT identifier but not a concept id (its partition digits are '${partition}', a concept has '00' or '10'); is it a description id?`);
    }
    return code;
  }
  throw new InvalidCode(`unknown code system ${JSON.stringify(system)}: use icd10 or snomed`);
}

/** "icd10" or "snomed" for a FHIR Coding.system naming either by any registered URI, else null. */
export function systemFromUri(uri) {
  if (typeof uri !== "string") return null;
  uri = uri.trim();
  if (uri.slice(0, 8).toLowerCase() === "urn:oid:") uri = "urn:oid:" + uri.slice(8);
  return URI_SYSTEMS.get(uri) ?? null;
}

const fold = (text) => text.normalize("NFKD").replace(/\p{M}/gu, "").toLowerCase();

/** Concepts whose label (or ICD-10 title, or code) matches every word of `query`, best
 * first: a code or a label that starts with the query, then any match; at most `limit`.
 * Each is {system, code, label} as a condition record takes them. */
export function searchConcepts(query, limit = 12) {
  const words = fold(query || "").split(/\s+/).filter(Boolean);
  if (!words.length) return [];
  const found = [];
  for (const c of CONCEPTS) {
    const text = fold(`${c.code} ${c.label}`);
    if (!words.every((w) => text.includes(w))) continue;
    const rank = fold(c.code).startsWith(words[0]) ? 0 : fold(c.label).startsWith(words[0]) ? 1 : 2;
    found.push([rank, c]);
  }
  found.sort((a, b) => a[0] - b[0] || a[1].label.localeCompare(b[1].label) || (a[1].system < b[1].system ? -1 : 1));
  return found.slice(0, limit).map(([, c]) => c);
}
