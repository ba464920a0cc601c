// The page's records against Python's: spec/vectors/records.json and fhir.json (written by
// spec/vectors/generate.py from rxfed/client and rxfed/vocabulary) pass in the web client's
// JavaScript, so each client reads what the other writes and a FHIR file gives the same
// records in both. Run with `node --test tests/web/`.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { rangeStart, timeline } from "../../rxfed/web/js/charts.mjs";
import { InvalidFhir, consentBundle, exportBundle, importBundle, parseJson } from "../../rxfed/web/js/fhir.mjs";
import { pyFloat, recordPlaintext } from "../../rxfed/web/js/protocol.mjs";
import { crisisResources, score } from "../../rxfed/web/js/questionnaires.mjs";
import * as rec from "../../rxfed/web/js/records.mjs";
import * as so from "../../rxfed/web/js/sodium.mjs";
import { searchConcepts, normaliseCode } from "../../rxfed/web/js/vocabulary.mjs";

await so.ready();
const text = (path) => readFileSync(new URL(`../../${path}`, import.meta.url), "utf8");
const vectors = (name) => JSON.parse(text(`spec/vectors/${name}`));

function outcome(work) {
  try {
    return { ok: work() };
  } catch (exc) {
    if (!exc.code) throw exc;
    return { error: exc.code };
  }
}
const withoutCode = (o) => ("error" in o ? { error: o.error } : o);

test("diagnosis codes are normalised and refused as in Python", () => {
  for (const c of vectors("records.json").codes) {
    assert.deepEqual(withoutCode(outcome(() => normaliseCode(c.system, c.code))), "ok" in c ? { ok: c.ok } : { error: c.error }, `${c.system} ${c.code}`);
  }
});

test("the label search finds a diagnosis by words of its name or by code", () => {
  const found = searchConcepts("type 2 diab");
  assert.ok(found.some((c) => c.system === "icd10" && c.code === "E11"), JSON.stringify(found));
  assert.ok(found.every((c) => /type 2/i.test(c.label)));
  assert.ok(searchConcepts("E11").length >= 1 && searchConcepts("E11")[0].code.startsWith("E11"));
  assert.deepEqual(searchConcepts("   "), []);
  for (const c of searchConcepts("a", 1000)) assert.equal(normaliseCode(c.system, c.code), c.code, `${c.system} ${c.code} is valid`);
});

test("PHQ-9 and GAD-7 score as in Python, and the crisis message is word for word", () => {
  const v = vectors("records.json");
  for (const s of v.scores) assert.deepEqual(withoutCode(outcome(() => score(s.instrument, s.answers))), "ok" in s ? { ok: s.ok } : { error: s.error });
  for (const [country, message] of Object.entries(v.crisis)) assert.equal(crisisResources(country === "" ? null : country), message);
});

test("conditions and journal entries are the data Python writes", () => {
  const v = vectors("records.json");
  for (const c of v.conditions) {
    const got = withoutCode(outcome(() => rec.condition(c.given)));
    if ("ok" in c) assert.deepEqual(got, { ok: c.ok });
    else assert.ok("error" in got, JSON.stringify(c.given));
  }
  for (const j of v.journal) {
    const given = { ...j.given, symptoms: Object.entries(j.given.symptoms || {}) };
    const got = withoutCode(outcome(() => rec.journal(given)));
    if ("ok" in j) assert.deepEqual(got, { ok: j.ok });
    else assert.equal(got.error, j.error);
  }
});

test("import keys, content keys and floats are Python's", () => {
  const v = vectors("records.json");
  for (const k of v.keys) assert.equal(rec.deriveKey(...k.parts), k.key);
  for (const k of v.content_keys) assert.equal(rec.contentKey(k.kind, k.data), k.key);
  for (const f of v.floats) assert.equal(pyFloat(f.value), f.python);
  const plain = new TextDecoder().decode(recordPlaintext({ kind: "observation", created: "x", data: { value: 19.124306358791486, n: 3 } }));
  assert.equal(plain, '{"created":"x","data":{"n":3,"value":19.124306358791486},"kind":"observation"}');
});

function imported(doc, floats) {
  try {
    const r = importBundle(doc, floats);
    return { records: r.records, skipped: r.skipped, skipped_why: r.skippedWhy, notes: r.notes };
  } catch (exc) {
    if (!exc.code) throw exc;
    return { error: exc.code };
  }
}

test("a FHIR Bundle gives the records Python gives, or the same refusal", () => {
  // parsed with the page's own parser, so the hand-made Bundles keep their floats ("25.0")
  const { doc, floats } = parseJson(text("spec/vectors/fhir.json"));
  for (const c of doc.imports) {
    const source = c.file ? parseJson(text(c.file)) : { doc: c.bundle, floats };
    const want = c.error ? { error: c.error } : { records: c.records, skipped: c.skipped, skipped_why: c.skipped_why, notes: c.notes };
    assert.deepEqual(imported(source.doc, source.floats), want, c.file || c.name);
  }
});

test("an export is the Bundle Python exports", async () => {
  for (const e of vectors("fhir.json").exports) {
    assert.deepEqual(await exportBundle(e.records, e.patient), e.bundle);
  }
});

test("the consent export is the Bundle of FHIR Consent resources Python makes of the same grants", async () => {
  const cases = vectors("fhir.json").consents;
  assert.ok(cases.some((c) => new Set(c.grants.map((g) => g.status)).size === 4), "every status is pinned");
  for (const c of cases) {
    assert.deepEqual(await consentBundle(c.patient, c.grants), c.bundle);
  }
  const [grant] = cases[0].grants;
  await assert.rejects(consentBundle("p1", [{ ...grant, created: "1764000000" }]), InvalidFhir);
});

test("the timeline: series by symptom, feeling, treatments as periods", () => {
  const r = (kind, data, created = "2026-01-01T00:00:00.000000Z") => ({ id: kind + JSON.stringify(data), kind, created, data });
  const data = timeline([
    r("journal", { date: "2024-01-03", symptoms: { pain: 4 }, feeling: 6 }),
    r("journal", { date: "2024-01-01", symptoms: { pain: 7, fatigue: 2 }, feeling: null }),
    r("journal", { date: "2024-01-03", symptoms: { pain: 5 }, feeling: null }, "2026-01-02T00:00:00.000000Z"),
    r("treatment", { name: "ibuprofen", started: "2024-01-02", stopped: null }),
    r("treatment", { name: "no start", started: null, stopped: "2024-01-02" }),
    r("condition", { system: "icd10", code: "M54.5", label: "Low back pain", onset: "2023-12-30" }),
  ], "2024-01-10");
  assert.equal(data.start, "2023-12-30");
  assert.equal(data.end, "2024-01-10");
  assert.deepEqual(data.series, [
    { name: "fatigue", points: [{ date: "2024-01-01", value: 2 }] },
    { name: "pain", points: [{ date: "2024-01-01", value: 7 }, { date: "2024-01-03", value: 5 }] },
    { name: "feeling", points: [{ date: "2024-01-03", value: 6 }] },
  ]);
  assert.deepEqual(data.treatments, [{ name: "ibuprofen", start: "2024-01-02", end: "2024-01-10", ongoing: true }]);
  assert.deepEqual(data.conditions, [{ label: "Low back pain", date: "2023-12-30" }]);
  assert.equal(timeline([], "2024-01-10"), null);
  // the last 7 days: the older entry and the onset drop out, the treatment is drawn from the range's start
  const since = rangeStart("7", "2024-01-10");
  assert.equal(since, "2024-01-03");
  const recent = timeline([
    r("journal", { date: "2024-01-01", symptoms: { pain: 7 }, feeling: null }),
    r("journal", { date: "2024-01-05", symptoms: { pain: 2 }, feeling: null }),
    r("treatment", { name: "ibuprofen", started: "2023-12-01", stopped: null }),
    r("treatment", { name: "stopped long ago", started: "2023-01-01", stopped: "2023-02-01" }),
    r("condition", { system: "icd10", code: "M54.5", label: "Low back pain", onset: "2023-12-30" }),
  ], "2024-01-10", since);
  assert.deepEqual([recent.start, recent.end], ["2024-01-03", "2024-01-10"]);
  assert.deepEqual(recent.series, [{ name: "pain", points: [{ date: "2024-01-05", value: 2 }] }]);
  assert.deepEqual(recent.treatments.map((t) => [t.name, t.start]), [["ibuprofen", "2024-01-03"]]);
  assert.deepEqual(recent.conditions, []);
  assert.equal(rangeStart("all", "2024-01-10"), null);
});

test("text limits count characters as Python does, not UTF-16 units", () => {
  const sleepy = "\u{1f634}";
  assert.equal(rec.journal({ note: sleepy.repeat(4000), date: "2024-01-01" }).note.length, 8000);
  assert.throws(() => rec.journal({ note: sleepy.repeat(4001), date: "2024-01-01" }), (e) => e.code === "bad_text");
});

test("a malformed Bundle only ever gives InvalidFhir, never a crash", () => {
  // a seeded generator of JSON values, as tests/client/test_fhir.py's hypothesis strategy
  let seed = 42;
  const rand = (n) => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n; };
  const leaf = () => [null, true, false, rand(20) - 5, 2.5, "", "x", "2024-01-01", "Patient/p1", "#c"][rand(10)];
  const value = (depth) => {
    if (depth > 2 || rand(3) === 0) return leaf();
    if (rand(2)) return Array.from({ length: rand(3) }, () => value(depth + 1));
    const keys = ["code", "coding", "system", "text", "reference", "value", "valueInteger", "start", "item", "answer", "linkId", "resourceType"];
    return Object.fromEntries(Array.from({ length: rand(4) }, () => [keys[rand(keys.length)], value(depth + 1)]));
  };
  const fields = ["subject", "code", "status", "valueInteger", "valueQuantity", "item", "name", "onsetDateTime", "onsetPeriod",
    "medicationCodeableConcept", "medicationReference", "contained", "identifier", "component", "derivedFrom", "extension", "authored", "effectivePeriod"];
  const types = ["Patient", "Condition", "Observation", "MedicationRequest", "MedicationStatement", "QuestionnaireResponse", "Medication", "Claim", "Nope", 3, null];
  for (let i = 0; i < 2000; i++) {
    const resource = { resourceType: types[rand(types.length)] };
    for (let j = rand(4); j > 0; j--) resource[fields[rand(fields.length)]] = value(0);
    try {
      importBundle({ resourceType: "Bundle", type: "collection", entry: [{ resource }] });
    } catch (exc) {
      assert.ok(exc instanceof InvalidFhir, `${exc.stack}\n${JSON.stringify(resource)}`);
    }
  }
});

test("an edit changes the fields of the form and keeps every other one, as `record edit` does", () => {
  const imported = { name: "metformin", dose: "500 mg", started: "2020-01-01", stopped: null, efficacy: null, side_effects: [],
    adherence: null, code: { system: "rxnorm", code: "6809" }, status: "active", source: "fhir", import_key: "0".repeat(32) };
  assert.deepEqual(rec.edited("treatment", imported, { name: "metformin", dose: "1000 mg", started: "2020-01-01", stopped: "",
    efficacy: "7", sideEffects: ["nausea", " "], adherence: "" }),
  { ...imported, dose: "1000 mg", efficacy: 7, side_effects: ["nausea"] });
  const cond = { system: "snomed", code: "44054006", label: "Diabetes", onset: null, abatement: "2021-01-01", status: "resolved",
    source: "fhir", import_key: "1".repeat(32) };
  assert.deepEqual(rec.edited("condition", cond, { system: "icd10", code: "e119", label: "Type 2 diabetes", onset: "2019-03-01" }),
    { ...cond, system: "icd10", code: "E11.9", label: "Type 2 diabetes", onset: "2019-03-01" });
  const phq9 = { instrument: "phq9", answers: [1, 1, 1, 1, 1, 1, 1, 1, 1], total: 9, severity: "mild" };
  const entry = { date: "2024-01-01", symptoms: { pain: 3 }, feeling: null, note: null, questionnaires: [phq9], import_key: "2".repeat(32) };
  assert.deepEqual(rec.edited("journal", entry, { date: "2024-01-02", symptoms: [["pain", "4"], ["", ""]], feeling: "6", note: "",
    questionnaires: entry.questionnaires }), { ...entry, date: "2024-01-02", symptoms: { pain: 4 }, feeling: 6 });
  assert.throws(() => rec.edited("journal", entry, { symptoms: [["pain", "11"]], questionnaires: [] }), (e) => e.code === "out_of_range");
  assert.throws(() => rec.edited("observation", {}, {}), (e) => e.code === "not_editable");
});
