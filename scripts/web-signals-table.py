#!/usr/bin/env python3
"""Write rxfed/web/js/snomed-icd10.mjs: the built-in plugin's SNOMED CT to ICD-10 table
(plugins/data/snomed_icd10.csv) as a module the page derives diagnosis categories with.

    python3 scripts/web-signals-table.py    # after changing the table; then scripts/web-manifest.py

tests/test_web_consent.py fails when the module is stale.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "plugins" / "data" / "snomed_icd10.csv"
MODULE = ROOT / "rxfed" / "web" / "js" / "snomed-icd10.mjs"


def module_text(table: Path = TABLE) -> str:
    with table.open(encoding="utf-8", newline="") as f:
        rows = {row["snomed_concept_id"]: row["icd10_category"] for row in csv.DictReader(f)}
    lines = [f"  {json.dumps(concept)}: {json.dumps(rows[concept])}," for concept in sorted(rows, key=int)]
    return ("// The built-in plugin's SNOMED CT concept -> ICD-10 category table (plugins/data/snomed_icd10.csv,\n"
            "// spec/signals.md), written by scripts/web-signals-table.py: do not edit by hand.\n\n"
            "export const SNOMED_ICD10 = Object.freeze({\n" + "\n".join(lines) + "\n});\n")


def main() -> None:
    MODULE.write_text(module_text())
    print(f"wrote {MODULE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
