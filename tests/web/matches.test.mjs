// spec/vectors/matching.json in the web client's JavaScript: suggestions checked and worded
// as rxfed/client/matching.py does.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import * as m from "../../rxfed/web/js/matches.mjs";

const v = JSON.parse(readFileSync(new URL("../../spec/vectors/matching.json", import.meta.url), "utf8"));

test("suggestions are checked and worded as in Python", () => {
  for (const c of v.cases) {
    const view = m.checked(c.answer);
    assert.deepEqual(view, c.checked);
    assert.deepEqual(m.lines(view), c.lines);
  }
});

test("answers of another shape are refused", () => {
  for (const r of v.refused) {
    assert.throws(() => m.checked(r.answer), (e) => e.code === r.code);
  }
});
