// The page's moderation check under Node: verifying and compiling the shipped rules (once per
// page load), then checking every message of the evaluation set. R rounds, medians.
//
//     node bench/web-moderation.mjs          # R=5
//     R=3 node bench/web-moderation.mjs

import { readFileSync } from "node:fs";
import { execFileSync } from "node:child_process";

const rounds = Number(process.env.R || 5);
if (!process.argv.includes("--round")) {
  const load = [], check = [];
  for (let r = 0; r < rounds; r++) {
    // a fresh process each round: V8 caches compiled regular expressions within one
    const out = JSON.parse(execFileSync(process.execPath, [new URL(import.meta.url).pathname, "--round"], { encoding: "utf8" }));
    load.push(out.load_ms);
    check.push(out.check_ms);
  }
  const median = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  process.stdout.write(JSON.stringify({ rounds, load_ms: median(load), check_ms_per_message: median(check) }) + "\n");
} else {
  const so = await import("../rxfed/web/js/sodium.mjs");
  await so.ready();
  const m = await import("../rxfed/web/js/moderation.mjs");
  let t = performance.now();
  const rules = m.shippedRules();
  if (rules instanceof m.RulesRefused) throw rules;
  const load = performance.now() - t;
  const messages = readFileSync(new URL("../tests/data/moderation_eval.txt", import.meta.url), "utf8").split("\n")
    .filter((l) => l && !l.startsWith("#")).map((l) => l.split("\t")[2]);
  t = performance.now();
  for (const text of messages) rules.check(text);
  const check = (performance.now() - t) / messages.length;
  process.stdout.write(JSON.stringify({ load_ms: Math.round(load * 10) / 10, check_ms: Math.round(check * 100) / 100 }));
}
