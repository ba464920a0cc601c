// The page's pins of other nodes' keys against Python's: spec/vectors/node-key-rotation.json
// `pinning` (written by spec/vectors/generate.py from rxfed/protocol/federation.py
// NodeDocument.trusting, the rule a node applies to its peers' documents).

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { b64d, b64e } from "../../rxfed/web/js/encoding.mjs";
import { fingerprint, keyJson, listedKeys, pinDocument, untrustedError } from "../../rxfed/web/js/nodekeys.mjs";
import * as so from "../../rxfed/web/js/sodium.mjs";

await so.ready();
const r = JSON.parse(readFileSync(new URL("../../spec/vectors/node-key-rotation.json", import.meta.url), "utf8"));
const fromJson = (k) => ({ key: b64d(k.public_key, 32), validFrom: k.valid_from, validUntil: k.valid_until,
  successor: k.successor ? b64d(k.successor, 32) : null });

test("a document is trusted from the pins as Python trusts it (first contact, rotations, a changed key)", () => {
  assert.ok(r.pinning.some((c) => c.untrusted.length) && r.pinning.some((c) => c.pinned === null));
  for (const c of r.pinning) {
    const view = pinDocument(c.document, c.pinned === null ? null : c.pinned.map(fromJson));
    assert.deepEqual(view.trusted.map(keyJson), c.trusted, c.case);
    assert.deepEqual(view.untrusted.map(b64e).sort(), c.untrusted, c.case);
  }
});

test("pins written and read back trust the same keys, and a changed key is named by its fingerprint", () => {
  const [first, , , changed] = r.pinning;
  const pinned = pinDocument(first.document).trusted.map(keyJson);
  const again = pinDocument(first.document, pinned.map(fromJson));
  assert.deepEqual(again.trusted.map(keyJson), pinned);
  assert.deepEqual(again.untrusted, []);
  const key = b64d(changed.untrusted[0], 32);
  assert.equal(fingerprint(key), changed.document.keys[0].fingerprint);
  const error = untrustedError("a.example", [key]);
  assert.equal(error.code, "untrusted_key");
  assert.ok(error.message.includes(changed.document.keys[0].fingerprint));
});

test("a malformed key document is refused whole and pins nothing", () => {
  const doc = r.pinning[0].document;
  const bad = [
    { ...doc, keys: [] }, { ...doc, keys: "k" }, { ...doc, keys: [{ ...doc.keys[0], public_key: "AAAA" }] },
    { ...doc, keys: [...doc.keys, { ...doc.keys[0], valid_from: -1 }] }, { ...doc, keys: [{ ...doc.keys[0], extra: 1 }] },
    { ...doc, keys: [{ ...doc.keys[0], valid_until: "soon" }] }, null,
  ];
  for (const d of bad) assert.throws(() => listedKeys(d), (e) => e.code === "bad_document", JSON.stringify(d));
  for (const d of bad) assert.throws(() => pinDocument(d), (e) => e.code === "bad_document");
});
