// The page's FHIR mapping from the command line, for tests/test_web_records.py to compare
// with Python's on files outside the repository (the Synthea exports):
//   node tests/web/fhir-cli.mjs import FILE        -> {records, skipped, skipped_why, notes} | {error}
//   node tests/web/fhir-cli.mjs export FILE PATIENT -> the Bundle of FILE's [kind, data, id] records

import { readFileSync } from "node:fs";

import { exportBundle, importBundle, parseJson } from "../../rxfed/web/js/fhir.mjs";
import * as so from "../../rxfed/web/js/sodium.mjs";

await so.ready();
const [what, file, patient] = process.argv.slice(2);
const { doc, floats } = parseJson(readFileSync(file, "utf8"));
let out;
if (what === "import") {
  try {
    const r = importBundle(doc, floats);
    out = { records: r.records, skipped: r.skipped, skipped_why: r.skippedWhy, notes: r.notes };
  } catch (exc) {
    if (!exc.code) throw exc;
    out = { error: exc.code, message: exc.message };
  }
} else {
  out = await exportBundle(doc, patient);
}
process.stdout.write(JSON.stringify(out));
