#!/usr/bin/env python3
"""Write rxfed/web/js/tables.mjs: the tables the web client shares with the Python package.

    python3 scripts/web-tables.py && python3 scripts/web-manifest.py

* CONCEPTS: the diagnosis labels the page searches, from the SNOMED CT to ICD-10 table the
  signals plugin ships (plugins/data/snomed_icd10.csv): every SNOMED CT concept under its
  label and every ICD-10 category under its title.
* INSTRUMENTS, ANSWERS, ATTRIBUTION, CRISIS_LINES, COUNTRY_ALIASES, FALLBACK_LINE: PHQ-9 and
  GAD-7 as rxfed/client/questionnaires.py defines them (items, severity bands, LOINC codes)
  and the crisis lines shown for PHQ-9 item 9 and for crisis language in a post;
  CRISIS_NOTICE: where the lines come from (rxfed/vocabulary/data/crisis_lines.json).
* FHIR_RESOURCE_TYPES: the resource types of FHIR R4B (fhir.resources), which an import
  names or is refused; FHIR_ELEMENTS: the elements of the resources and data types the page
  reads (an element they lack refuses the file); FHIR: the code system, extension and naming system URIs of
  rxfed/client/fhir.py, and SYSTEM_URIS, SYSTEM_ALIASES: those of rxfed/vocabulary/codes.py.
  They are names, never fetched: this file is the only module that spells a URL.

The file is generated, never edited; tests/test_web_records.py fails when it is stale.
"""

from __future__ import annotations

import csv
import importlib.resources
import json
import pkgutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "rxfed" / "web" / "js" / "tables.mjs"
sys.path.insert(0, str(ROOT))


def concepts() -> list[dict]:
    path = ROOT / "plugins" / "data" / "snomed_icd10.csv"
    snomed, icd10 = {}, {}
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            snomed.setdefault(row["snomed_concept_id"], row["label"].strip())
            icd10.setdefault(row["icd10_category"], row["icd10_title"].strip())
    rows = [{"system": "icd10", "code": code, "label": label} for code, label in sorted(icd10.items())]
    rows += [{"system": "snomed", "code": code, "label": label} for code, label in sorted(snomed.items(), key=lambda kv: int(kv[0]))]
    return rows


def instruments() -> dict:
    from rxfed.client import questionnaires as q

    return {name: {"name": i.name, "title": i.title, "stem": i.stem, "items": list(i.items),
                   "bands": [list(b) for b in i.bands], "loinc_panel": i.loinc_panel, "loinc_total": i.loinc_total,
                   "item_codes": list(i.item_codes)} for name, i in q.INSTRUMENTS.items()}


def resource_types() -> list[str]:
    import fhir.resources.R4B as r4b
    from fhir.resources.R4B import get_fhir_model_class

    names = set()
    for module in pkgutil.iter_modules(r4b.__path__):
        if module.name.startswith("fhirtypes") or module.name.startswith("_"):
            continue
        module_obj = importlib.import_module(f"fhir.resources.R4B.{module.name}")
        for attr in dir(module_obj):
            value = getattr(module_obj, attr)
            if isinstance(value, type) and getattr(value, "__module__", None) == module_obj.__name__ \
                    and attr == getattr(value, "__resource_type__", None):
                try:
                    if get_fhir_model_class(attr).has_resource_base():
                        names.add(attr)
                except (ValueError, KeyError, AttributeError):
                    pass
    return sorted(names)


#: The FHIR types whose elements the page checks (the resources it keeps, and the data types
#: it reads in them): an element the R4B model does not have refuses the file, as in Python.
CHECKED_TYPES = ("Patient", "Condition", "MedicationStatement", "MedicationRequest", "Medication", "Observation",
                 "QuestionnaireResponse", "CodeableConcept", "Coding", "Reference", "Period", "Quantity")


def elements() -> dict:
    from fhir.resources.R4B import get_fhir_model_class

    out = {}
    for name in CHECKED_TYPES:
        fields = get_fhir_model_class(name).model_fields
        out[name] = sorted({f.alias or k for k, f in fields.items()} - {"fhir_comments"}
                           | ({"resourceType"} if name[0].isupper() and get_fhir_model_class(name).has_resource_base() else set()))
    return out


def fhir_names() -> dict:
    from rxfed.client import fhir

    names = ("LOINC", "RXNORM", "CONDITION_CLINICAL", "OBSERVATION_CATEGORY", "MOTHERS_MAIDEN_NAME",
             "IPS_ABSENT_UNKNOWN", "DATA_ABSENT_REASON_CODES", "DATA_ABSENT_REASON", "JOURNAL", "REPORTED",
             "RECORD_KEY_SYSTEM")
    out = {name: getattr(fhir, name) for name in names}
    out["EXPORT_NAMESPACE"] = str(fhir._NAMESPACE)
    # the consent export (fhir.consent_bundle)
    out.update({"CONSENT_SCOPE": fhir._CONSENT_SCOPE, "CONSENT_CATEGORY": fhir._CONSENT_CATEGORY,
                "CONSENT_ROLE": fhir._CONSENT_ROLE, "CONSENT_GRANT": fhir._RXFED_GRANT,
                "CONSENT_PURPOSE": fhir._RXFED_PURPOSE, "CONSENT_KIND": fhir._RXFED_KIND,
                "CONSENT_RECIPIENT": fhir._RXFED_RECIPIENT})
    return out


def snomed_icd10() -> dict[str, str]:
    """The signals plugin's SNOMED CT concept -> ICD-10 category table, as the plugin loads
    it (the page derives diagnosis categories with it)."""
    from rxfed_plugins.signals import load_table

    return dict(sorted(load_table().items(), key=lambda kv: int(kv[0])))


def render() -> str:
    from rxfed.client import questionnaires as q

    def const(name: str, value) -> str:
        return f"export const {name} = {json.dumps(value, ensure_ascii=False)};\n"

    lines = ["// Generated by scripts/web-tables.py from the Python package: do not edit.\n",
             "// Labels and the SNOMED CT -> ICD-10 table from plugins/data/snomed_icd10.csv; questionnaires from rxfed/client/questionnaires.py;\n",
             "// FHIR R4B resource types from fhir.resources.\n\n",
             "export const CONCEPTS = [\n"]
    lines += [f"  {json.dumps(c, ensure_ascii=False)},\n" for c in concepts()]
    lines.append("];\n\n")
    lines.append(const("INSTRUMENTS", instruments()))
    lines.append(const("ANSWERS", [list(a) for a in q.ANSWERS]))
    lines.append(const("PHQ9_SELF_HARM_ITEM", q.PHQ9_SELF_HARM_ITEM))
    lines.append(const("ATTRIBUTION", q.ATTRIBUTION))
    from rxfed.vocabulary import crisis

    lines.append(const("CRISIS_LINES", crisis.crisis_lines()))
    lines.append(const("COUNTRY_ALIASES", crisis._table()["aliases"]))
    lines.append(const("FALLBACK_LINE", crisis._table()["fallback"]))
    lines.append(const("CRISIS_NOTICE", crisis.crisis_notice()))
    from rxfed.vocabulary import codes

    lines.append("\n" + const("SYSTEM_URIS", codes.SYSTEM_URIS))
    lines.append(const("SYSTEM_ALIASES", {k: list(v) for k, v in codes._ALIASES.items()}))
    lines.append(const("FHIR", fhir_names()))
    lines.append(const("FHIR_RESOURCE_TYPES", resource_types()))
    lines.append(const("FHIR_ELEMENTS", elements()))
    lines.append("\nexport const SNOMED_ICD10 = Object.freeze(" + json.dumps(snomed_icd10()) + ");\n")
    return "".join(lines)


def main() -> None:
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
