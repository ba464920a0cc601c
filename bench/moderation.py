"""Precision and recall of the pre-send checks, per category, on a labelled message set.

Feeds every message of the set to ``rxfed moderation check --json`` (one process, the
installed plugins' checks, as ``rxfed community post`` runs them) and compares what was
flagged with the labels, separately for each split: ``dev`` (the rules were written
against it) and ``heldout`` (never tuned on). Prints a Markdown table per split, then one
JSON object (the last line).

    python bench/moderation.py [--set tests/data/moderation_eval.txt] [--python PYTHON] [--show-errors]

The set's format: ``SPLIT<TAB>LABELS<TAB>TEXT`` a line, ``#`` comments; LABELS are
categories separated by commas, ``testimony`` (benign personal testimony) or ``benign``.
Targets (spec/moderation.md): recall at least 0.9 per category, at most 5% of benign
testimony flagged, every crisis message flagged.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = ("medication_change", "dosing_advice", "miracle_cure", "drug_sourcing", "crisis")


def read_set(path: Path) -> list[tuple[str, list[str], str]]:
    cases = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("#") or not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3 or "\n" in parts[2]:
            raise SystemExit(f"{path}:{n}: expected SPLIT<TAB>LABELS<TAB>TEXT")
        cases.append((parts[0], parts[1].split(","), parts[2]))
    return cases


def check(python: str, texts: list[str]) -> list[set[str]]:
    proc = subprocess.run([python, "-m", "rxfed", "moderation", "check", "--json"], input="\n".join(texts) + "\n",
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"rxfed moderation check failed ({proc.returncode}): {proc.stderr.strip()}")
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    if len(results) != len(texts):
        raise SystemExit(f"{len(texts)} messages in, {len(results)} results out")
    return [set(r["categories"]) for r in results]


def figures(cases: list[tuple[str, list[str], str]], flagged: list[set[str]]) -> dict:
    out: dict = {"messages": len(cases), "categories": {}}
    for c in CATEGORIES:
        truth = [c in labels for _, labels, _ in cases]
        said = [c in f for f in flagged]
        tp = sum(t and s for t, s in zip(truth, said))
        out["categories"][c] = {"n": sum(truth), "flagged": sum(said), "true_positives": tp,
                                "recall": round(tp / sum(truth), 3) if sum(truth) else None,
                                "precision": round(tp / sum(said), 3) if sum(said) else None}
    testimony = [bool(f) for (_, labels, _), f in zip(cases, flagged) if labels == ["testimony"]]
    benign = [bool(f) for (_, labels, _), f in zip(cases, flagged) if labels == ["benign"]]
    crisis = [("crisis" in f) for (_, labels, _), f in zip(cases, flagged) if "crisis" in labels]
    out["testimony"] = {"n": len(testimony), "flagged": sum(testimony),
                        "rate": round(sum(testimony) / len(testimony), 3) if testimony else None}
    out["benign_other"] = {"n": len(benign), "flagged": sum(benign)}
    out["crisis_all_flagged"] = all(crisis)
    out["targets_met"] = (all(v["recall"] is None or v["recall"] >= 0.9 for v in out["categories"].values())
                          and (out["testimony"]["rate"] or 0) <= 0.05 and out["crisis_all_flagged"])
    return out


def table(name: str, doc: dict) -> list[str]:
    lines = [f"{name}: {doc['messages']} messages", "", "| category | messages | flagged | precision | recall |",
             "|---|---|---|---|---|"]
    for c, v in doc["categories"].items():
        fmt = (lambda x: "-" if x is None else f"{x:.2f}")
        lines.append(f"| {c} | {v['n']} | {v['flagged']} | {fmt(v['precision'])} | {fmt(v['recall'])} |")
    t = doc["testimony"]
    lines += [f"| benign testimony flagged | {t['n']} | {t['flagged']} | | {t['rate']:.1%} of it |",
              f"| other benign flagged | {doc['benign_other']['n']} | {doc['benign_other']['flagged']} | | |",
              "", f"every crisis message flagged: {doc['crisis_all_flagged']}; targets met: {doc['targets_met']}", ""]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", type=Path, default=ROOT / "tests" / "data" / "moderation_eval.txt")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--show-errors", action="store_true", help="list the messages flagged wrongly or missed")
    args = parser.parse_args()
    cases = read_set(args.set)
    flagged = check(args.python, [text for _, _, text in cases])
    result = {}
    for split in sorted({s for s, _, _ in cases}):
        chosen = [(case, f) for case, f in zip(cases, flagged) if case[0] == split]
        doc = figures([c for c, _ in chosen], [f for _, f in chosen])
        result[split] = doc
        print("\n".join(table(split, doc)))
        if args.show_errors:
            for (_, labels, text), f in chosen:
                truth = set(labels) - {"testimony", "benign"}
                if f != truth:
                    print(f"  labelled {','.join(sorted(truth)) or 'benign'}, flagged {','.join(sorted(f)) or 'nothing'}: {text}")
    result["complete"] = True
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
