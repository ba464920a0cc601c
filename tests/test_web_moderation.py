"""The page's moderation check (rxfed/web/js/moderation.mjs) against the moderation plugin: the
generated rules module is current, every pattern compiles in JavaScript and matches what it
matches in Python, the page flags every message of the evaluation set exactly as the plugin
does, refuses the rules files the plugin refuses, and shows the same crisis line."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rxfed.crypto import SigningKeyPair, b64e
from rxfed.protocol.canonical import canonical, loads
from rxfed.protocol.statements import sign_statement
from rxfed_plugins import moderation

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "rxfed" / "web" / "js"
EVAL = ROOT / "tests" / "data" / "moderation_eval.txt"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_js(body: str, tmp_path: Path, data) -> object:
    node_bin = shutil.which("node")
    if node_bin is None:
        pytest.skip("node is not installed: the web client's JavaScript needs it")
    module = lambda name: json.dumps((JS / name).as_uri())  # noqa: E731
    (tmp_path / "input.json").write_text(json.dumps(data), encoding="utf-8")
    path = tmp_path / "moderation.mjs"
    path.write_text(f"""
import {{ readFileSync }} from "node:fs";
import * as so from {module("sodium.mjs")};
import * as m from {module("moderation.mjs")};
await so.ready();
const input = JSON.parse(readFileSync({json.dumps(str(tmp_path / "input.json"))}, "utf8"));
let out;
{body}
process.stdout.write(JSON.stringify(out));
""", encoding="utf-8")
    done = subprocess.run([node_bin, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _messages() -> list[str]:
    rows = [line.split("\t", 2) for line in EVAL.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]
    return [text for _split, _labels, text in rows]


#: Text where JavaScript's and Python's regular expressions part ways unless translated:
#: letters outside ASCII, accents, astral characters before a match, a "?" then a dash, a
#: newline at the end, invisible characters, digits of other scripts.
EDGES = [
    "Stop taking your métformin, it's poison.",
    "STOP TAKING YOUR METFORMIN",
    "😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀 i never said you should stop your meds",
    "why don't you just stop your meds?—seriously",
    "I want to kill myself\n",
    "you should stop\u200b taking your insulin",
    "take \u0663\u0660\u0660 mg of sertraline, trust me",
    "I stopped taking my meds. You should too.",
    "Naïve question: should I stop my statins?",
    "sooooo tired of my inhaler, you should ditch ur inhaler",
    "Ich will nicht mehr leben",
    "ｙｏｕ ｓｈｏｕｌｄ ｓｔｏｐ ｔａｋｉｎｇ ｙｏｕｒ ｍｅｔｆｏｒｍｉｎ",
    "",
    "   ",
]


def test_generated_rules_module_is_current():
    generator = _script("web-moderation")
    assert generator.OUT.read_text(encoding="utf-8") == generator.render(), \
        "run python3 scripts/web-moderation.py (then scripts/web-manifest.py)"


def _all_patterns() -> list[str]:
    """Every pattern the plugin compiles from the shipped rules (lexicon expanded), and its own two."""
    seen: list[str] = []

    def record(text: str):
        seen.append(text)
        return re.compile(text)

    moderation.ModerationRules._compile(loads(moderation.shipped_rules_bytes())["body"], record)
    return seen + [moderation._CLAUSE.pattern, moderation._OPENS_ADVICE.pattern]


def test_every_pattern_compiles_in_the_page_and_matches_as_in_python(tmp_path):
    patterns = _all_patterns()
    assert len(patterns) > 200
    texts = [moderation.rules().normalise(t) for t in _messages()[::7]]
    # for each pattern, where it matches first in a sample of normalised messages
    python = [[(m.start(), m.end()) if (m := re.compile(p).search(t)) else None for t in texts] for p in patterns]
    got = _run_js("""
out = input.patterns.map((src) => {
  let compiled;
  try { compiled = new m.PyPattern(src); } catch (exc) { return { error: exc.message }; }
  return input.texts.map((t) => {
    const found = compiled.search(t);
    if (found === null) return null;
    // Python counts code points
    return [[...t.slice(0, found.index)].length, [...t.slice(0, found.index + found[0].length)].length];
  });
});
""", tmp_path, {"patterns": patterns, "texts": texts})
    errors = [(p, g["error"]) for p, g in zip(patterns, got) if isinstance(g, dict)]
    assert errors == []
    differ = [(p, t, py, js) for p, row, js_row in zip(patterns, python, got)
              for t, py, js in zip(texts, row, js_row) if (list(py) if py else None) != js]
    assert differ == []


#: Python patterns and texts where a literal JavaScript reading would match differently.
TRANSLATIONS = [
    (r"\bcafe\b", "a café cafe"),
    (r"\w+", "naïve 東京 ٣٠٠ x_y"),
    (r"\d+", "take ٣٠٠ or 300"),
    (r"\s+", "a\x1cb\u3000c\ufeffd"),
    (r"end$", "the end\n"),
    (r"a.b", "a\nb a\rb"),
    (r"x{,2}y", "xxxy"),
    (r"x{", "x{"),
    (r"(?P<w>o)(?P=w)", "foo"),
    (r"[]a]+", "]a]"),
    (r"[\w'-]+", "don't-stop"),
    (r"\$\d", "costs $5"),
    (r"(?<=\?)|\s+", "why?—ok now"),
    (r"x*", "abxd"),
]


def test_pattern_translation_matches_python_on_awkward_text(tmp_path):
    python = [[[m.start(), m.end()] for m in re.finditer(p, t)] for p, t in TRANSLATIONS]
    got = _run_js("""
out = input.map(([src, t]) => [...new m.PyPattern(src).finditer(t)].map((found) =>
  [[...t.slice(0, found.index)].length, [...t.slice(0, found.index + found[0].length)].length]));
""", tmp_path, TRANSLATIONS)
    assert dict(zip([p for p, _ in TRANSLATIONS], got)) == dict(zip([p for p, _ in TRANSLATIONS], python))
    subs = [(r"(\w)\1{2,}", r"\1\1", "soooo goood"), (r"\bu\b", "you", "u and ur u"), (r"\s+", "$1", "a b")]
    got = _run_js("out = input.map(([src, repl, t]) => new m.PyPattern(src).sub(repl, t));", tmp_path, subs)
    assert got == [re.sub(p, r, t) for p, r, t in subs]


def test_the_page_flags_the_evaluation_set_as_the_plugin(tmp_path):
    rules = moderation.rules()
    messages = _messages() + EDGES
    python = [[f.code for f in rules.check(t)] for t in messages]
    got = _run_js("""
const rules = m.shippedRules();
if (rules instanceof m.RulesRefused) throw rules;
out = input.map((t) => rules.check(t).map((f) => f.code));
""", tmp_path, messages)
    assert len(got) == len(messages) > 1000
    differ = [(t, py, js) for t, py, js in zip(messages, python, got) if py != js]
    assert differ == []
    # the set holds every category, testimony and benign messages, so the comparison is not vacuous
    assert {code for codes in python for code in codes} == {c.code for c in rules.categories}
    assert sum(1 for codes in python if not codes) > 100


@pytest.mark.parametrize("country", ["GB", "us", "UK", "NZ", "ZZ", None])
def test_the_page_warns_as_the_plugin_with_the_crisis_line(tmp_path, country):
    texts = ["I want to kill myself", "You should stop taking your metformin, it's just poison.",
             "I stopped my meds and felt better, talk to your doctor first though.",
             "Nobody would miss me. Stop taking your insulin, it's a scam."]
    python = [[w.to_json() for w in moderation.warnings_for(t, country)] for t in texts]
    got = _run_js("out = input.texts.map((t) => m.presendWarnings(t, input.country));", tmp_path,
                  {"texts": texts, "country": country})
    assert got == python
    assert got[0][0]["code"] == "crisis" and got[0][0]["confirm"] is False and got[0][0]["resources"]
    assert [w["code"] for w in got[2]] == []


def test_the_page_refuses_the_rules_the_plugin_refuses(tmp_path):
    doc = loads(moderation.shipped_rules_bytes())
    other = SigningKeyPair.from_seed(bytes([7] * 32))
    tampered = json.loads(json.dumps(doc))
    tampered["body"]["categories"][0]["patterns"] = []
    unknown = sign_statement(other, {**doc["body"], "publisher": "someone"})
    wrong_key = sign_statement(other, doc["body"])
    bad_pattern = sign_statement(other, {**doc["body"], "negator": "(?i)no"})
    cases = {"tampered": tampered, "unsigned": doc["body"], "unknown publisher": unknown,
             "another key": wrong_key, "not an object": [1, 2]}
    for name, case in cases.items():
        with pytest.raises(moderation.RulesRefused):
            moderation.ModerationRules.from_bytes(canonical(case), moderation.PUBLISHERS)
    got = _run_js("""
out = {};
for (const [name, doc] of Object.entries(input.cases)) {
  try { m.ModerationRules.fromStatement(doc); out[name] = "accepted"; }
  catch (exc) { out[name] = exc instanceof m.RulesRefused ? exc.message : `threw ${exc}`; }
}
// signed by a key the page is told to trust, but a pattern it cannot translate
try { m.ModerationRules.fromStatement(input.badPattern, { rxfed: input.otherKey }); out.pattern = "accepted"; }
catch (exc) { out.pattern = exc instanceof m.RulesRefused ? exc.message : `threw ${exc}`; }
out.unchecked = m.presendWarnings("You should stop taking your metformin", "GB",
  (() => { try { return m.ModerationRules.fromStatement(input.cases.tampered); } catch (exc) { return exc; } })());
""", tmp_path, {"cases": cases, "badPattern": bad_pattern, "otherKey": b64e(other.public)})
    assert "signature does not verify" in got["tampered"] and "changed after it was signed" in got["tampered"]
    assert "not signed" in got["unsigned"] and "not signed" in got["not an object"]
    assert "'someone'" not in got["unknown publisher"] and "is not one this page trusts" in got["unknown publisher"]
    assert "signature does not verify" in got["another key"]
    assert "not rules this page can apply" in got["pattern"]
    assert [w["code"] for w in got["unchecked"]] == ["unchecked"] and got["unchecked"][0]["confirm"] is False


def test_the_benchmark_still_runs():
    """bench/web-moderation.mjs runs against the current page code (figures are not checked)."""
    node_bin = shutil.which("node")
    if node_bin is None:
        pytest.skip("node is not installed")
    done = subprocess.run([node_bin, str(ROOT / "bench" / "web-moderation.mjs")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "R": "1"})
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)) == {"rounds", "load_ms", "check_ms_per_message"}
