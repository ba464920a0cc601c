// spec/vectors/insights.json in the web client: the page prints what `rxfed insights` prints
// for the same table, and refuses an answer not in the table's form.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { checkInsights, forTreatment, insightsLines } from "../../rxfed/web/js/insights.mjs";

const v = JSON.parse(readFileSync(new URL("../../spec/vectors/insights.json", import.meta.url), "utf8"));

test("the page's lines are the CLI's", () => {
  assert.deepEqual(insightsLines(checkInsights(v.view, "E11")), v.lines);
  assert.deepEqual(insightsLines(forTreatment(v.view, "metformin")), v.metformin_lines);
  assert.deepEqual(insightsLines(forTreatment(v.view, "nosuch")).slice(-1), ["no such treatment in this table"]);
  assert.match(v.lines[1], /^your node.s privacy budget for 2026-11: 1\/2 of 1 spent, 1\/2 left$/);
});

test("an answer in another form, or for another category, is refused", () => {
  assert.throws(() => checkInsights(v.view, "G40"), /expected form/);
  for (const bad of [null, [], "x", { ...v.view, extra: 1 }, { ...v.view, treatments: {} },
    { ...v.view, computed: "soon" }]) {
    assert.throws(() => checkInsights(bad, "E11"), /expected form/);
  }
});
