"""Vectors of what the patient's clients make of records (generate.py writes them):

* records.json: diagnosis codes normalised or refused (rxfed/vocabulary/codes.py), PHQ-9 and
  GAD-7 scores and the crisis message by country (rxfed/client/questionnaires.py), journal
  and condition data, import and content keys, and floats as Python writes them in a
  record's plaintext (rxfed/client/records.py);
* fhir.json: FHIR Bundles and the records rxfed/client/fhir.py imports from them (or the
  error code it refuses them with), records with the Bundle it exports of them, and consent
  grants (as `PatientConsent.list` gives them) with the Bundle of FHIR Consent resources
  `consent_bundle` makes of them (`rxfed patient consent export`). The import Bundles are
  the files of tests/data/fhir/ (named by path) and the hand-made ones here.

The web client (rxfed/web/js/) gives the same results: tests/web/records.test.mjs.
"""

from __future__ import annotations

import json
from pathlib import Path

from rxfed.client import questionnaires as q
from rxfed.client import records as rec
from rxfed.client.fhir import consent_bundle, export_bundle, import_bundle
from rxfed.errors import RxfedError
from rxfed.vocabulary.codes import normalise_code

ROOT = Path(__file__).resolve().parents[2]
FHIR_FILES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tests" / "data" / "fhir").glob("*.json"))

CODES = [("icd10", "e119"), ("icd10", " G40.909 "), ("icd10", "S72001A"), ("icd10", "E11"), ("icd10", "C4A.1"),
         ("snomed", "44054006"), ("snomed", "73211009"), ("icd10", "E1"), ("icd10", "ı11"), ("icd10", "11.9"),
         ("snomed", "44054007"), ("snomed", "04405400"), ("snomed", "12345"), ("snomed", "900000000000003001"),
         ("snomed", "44054006x"), ("loinc", "1234-5")]
ANSWERS = [("phq9", [0] * 9), ("phq9", [1, 1, 1, 1, 1, 1, 1, 1, 1]), ("phq9", [3] * 9), ("phq9", [2, 2, 2, 2, 2, 2, 1, 0, 0]),
           ("gad7", [0, 1, 2, 3, 0, 1, 2]), ("gad7", [3] * 7), ("gad7", [1] * 7), ("phq9", [0] * 8), ("phq9", [4] + [0] * 8),
           ("mood", [0])]
FLOATS = [19.124306358791486, 0.1, 70.5, 1e-05, 0.0001, 1e16, 1234567890123456.7, -2.5, 1.5e300, 123456789012345680000.0]


def _outcome(work):
    try:
        return {"ok": work()}
    except RxfedError as exc:
        return {"error": exc.code}


def records_vectors() -> dict:
    return {
        "codes": [{"system": s, "code": c, **_outcome(lambda s=s, c=c: normalise_code(s, c))} for s, c in CODES],
        "scores": [{"instrument": name, "answers": answers,
                    **_outcome(lambda n=name, a=answers: {**q.score(n, a).to_dict(), "crisis": q.score(n, a).crisis})}
                   for name, answers in ANSWERS],
        "crisis": {country or "": q.crisis_resources(country) for country in ("US", "gb", "UK", " de ", "JP", None)},
        "keys": [
            {"parts": ["record", "0123456789abcdef0123456789abcdef"], "key": rec.derive_key("record", "0123456789abcdef0123456789abcdef")},
            {"parts": ["url", "Condition", "urn:uuid:\u00e9t\u00e9"], "key": rec.derive_key("url", "Condition", "urn:uuid:\u00e9t\u00e9")},
        ],
        "content_keys": [{"kind": k, "data": d, "key": rec.content_key(k, d)} for k, d in (
            ("journal", rec.journal(symptoms={"Douleur \u00e9paule": 3, "fatigue": 6}, feeling=4, date="2024-01-02")),
            ("observation", {"code": {"code": "39156-5"}, "value": 19.124306358791486, "unit": "kg/m2", "import_key": "x"}),
        )],
        "floats": [{"value": v, "python": json.dumps(v)} for v in FLOATS],
        "conditions": [{"given": given, **_outcome(lambda g=given: rec.condition(**g))} for given in (
            {"code": "g40909", "label": " Epilepsy ", "onset": "2010-01-01"},
            {"code": "84757009", "system": "snomed"},
            {"code": "E11.9", "system": "icd9"},
            {"code": "E11.9", "onset": "2010-02-30"},
        )],
        "journal": [{"given": given, **_outcome(lambda g=given: rec.journal(**g))} for given in (
            {"date": "2024-05-06", "questionnaires": [q.score("phq9", [1] * 9).to_dict()]},
            {"date": "2024-05-06", "symptoms": {"Fatigue": 7}, "feeling": 4, "note": " tired "},
            {"date": "2024-05-06"},
        )],
    }


PATIENT = {
    "resourceType": "Patient", "id": "p1",
    "name": [{"family": "Quartermaine", "given": ["Zebedee", "Al"]}],
    "identifier": [{"system": "urn:oid:1.2.3.4", "value": "999-12-3456"}],
    "telecom": [{"system": "phone", "value": "555-010-7788"}],
    "address": [{"line": ["12 Juniper Lane"], "city": "Springfield", "postalCode": "01824"}],
}
SUBJECT = {"reference": "Patient/p1"}
LOINC = "http://loinc.org"


def _bundle(*resources: dict, kind: str = "collection", urls: bool = False) -> dict:
    entries = [{"resource": r} for r in resources]
    if urls:
        for i, e in enumerate(entries):
            e["fullUrl"] = f"urn:uuid:00000000-0000-4000-8000-{i:012d}"
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def _response(answers: list, **extra) -> dict:
    return {"resourceType": "QuestionnaireResponse", "status": "completed", "subject": SUBJECT, "authored": "2024-03-01T09:00:00+01:00",
            "item": [{"linkId": link, "answer": [answer]} for link, answer in answers], **extra}


def _cases() -> list[tuple[str, dict]]:
    gad7 = ["69725-0", "68509-9", "69733-4", "69734-2", "69735-9", "69689-8", "69736-7"]
    return [
        ("patient and conditions, no fullUrl (content keys, floats)", _bundle(
            PATIENT,
            {"resourceType": "Condition", "subject": SUBJECT, "onsetDateTime": "2012-03", "code": {"coding": [
                {"system": "http://snomed.info/sct", "code": "44054006", "display": "Diabetes of Zebedee Quartermaine"},
                {"system": "urn:oid:2.16.840.1.113883.6.90", "code": "e119"}]}},
            {"resourceType": "Condition", "subject": SUBJECT, "verificationStatus": {"coding": [{"code": "refuted"}]},
             "code": {"text": "Asthma"}},
            {"resourceType": "Condition", "subject": SUBJECT, "code": {"text": "Long covid"}, "onsetPeriod": {"start": "2021-11-30T23:30:00-05:00"}},
            {"resourceType": "Condition", "subject": SUBJECT, "code": {"coding": [{"system": "urn:x", "code": "1"}]}},
            {"resourceType": "Observation", "status": "final", "subject": SUBJECT, "effectiveDateTime": "2020-05-05",
             "code": {"coding": [{"system": LOINC, "code": "39156-5", "display": "BMI"}]},
             "valueQuantity": {"value": 25.0, "unit": "kg/m2"}},
            {"resourceType": "Observation", "status": "final", "subject": SUBJECT, "effectiveDateTime": "2020-05-05T08:00:00Z",
             "code": {"coding": [{"system": LOINC, "code": "85354-9"}], "text": "Blood pressure"},
             "component": [{"code": {"coding": [{"system": LOINC, "code": "8480-6", "display": "Systolic"}]}, "valueQuantity": {"value": 120, "code": "mm[Hg]"}},
                           {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, "valueQuantity": {"value": 80.5, "unit": "mm[Hg]"}}]},
            {"resourceType": "Observation", "status": "entered-in-error", "subject": SUBJECT, "code": {"text": "x"}},
            {"resourceType": "Observation", "status": "final", "subject": SUBJECT, "code": {"text": "no coding"}},
            {"resourceType": "Immunization", "status": "completed", "patient": SUBJECT,
             "vaccineCode": {"text": "flu"}, "occurrenceDateTime": "2020-01-01"},
        )),
        ("medications by reference, contained and requested", _bundle(
            {"resourceType": "Medication", "id": "m1", "code": {"coding": [
                {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "6809", "display": "metformin"}]}},
            {"resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": SUBJECT,
             "medicationReference": {"reference": "Medication/m1"}, "authoredOn": "2020-02-03",
             "dosageInstruction": [{"text": "500 mg"}, {"text": "with food"}]},
            {"resourceType": "MedicationStatement", "status": "completed", "subject": SUBJECT,
             "contained": [{"resourceType": "Medication", "id": "c", "code": {"coding": [{"system": "urn:oid:1.2.3", "code": "X1"}]}}],
             "medicationReference": {"reference": "#c"}, "effectivePeriod": {"start": "2019-01-01", "end": "2019-06-30"},
             "extension": [{"url": "https://rxfed.org/fhir/StructureDefinition/patient-reported-efficacy", "valueInteger": 6},
                           {"url": "https://rxfed.org/fhir/StructureDefinition/patient-reported-side-effect", "valueString": "rash"}]},
            {"resourceType": "MedicationRequest", "status": "entered-in-error", "intent": "order", "subject": SUBJECT,
             "medicationCodeableConcept": {"text": "x"}},
            {"resourceType": "MedicationStatement", "status": "unknown", "subject": SUBJECT, "medicationReference": {"display": "Aspirin"},
             "effectiveDateTime": "2018-07-01T10:00:00+02:00"},
            urls=True,
        )),
        ("questionnaires", _bundle(
            _response([(str(i), {"valueInteger": 2}) for i in range(1, 10)], questionnaire=LOINC + "/vs/44249-1"),
            _response([(f"/{code}", {"valueCoding": {"system": LOINC, "code": "LA6569-3"}}) for code in gad7]),
            _response([(str(i), {"valueInteger": 1}) for i in range(1, 9)], questionnaire=LOINC + "/q/44249-1"),
            _response([("1", {"valueInteger": 1})], questionnaire="urn:example:mood"),
            _response([(str(i), {"valueInteger": 0}) for i in range(1, 10)], questionnaire=LOINC + "/q/44249-1", status="in-progress"),
            urls=True,
        )),
        ("a questionnaire answer out of range", _bundle(_response([(str(i), {"valueInteger": 5}) for i in range(1, 10)],
                                                                  questionnaire=LOINC + "/q/44249-1"))),
        ("two patients", _bundle(PATIENT, {"resourceType": "Condition", "subject": {"reference": "Patient/p2"}, "code": {"text": "x"}})),
        ("one patient named two ways", _bundle(PATIENT, {"resourceType": "Condition", "code": {"text": "x"},
                                                        "subject": {"identifier": {"system": "urn:oid:1.2.3.4", "value": "999-12-3456"}}})),
        ("not a Bundle", PATIENT),
        ("a Bundle type not imported", _bundle(kind="history")),
        ("entry not a list", {"resourceType": "Bundle", "type": "collection", "entry": {}}),
        ("an unknown resource type", _bundle({"resourceType": "Nope"})),
        ("a resource without resourceType", _bundle({"id": "x"})),
        ("a date that does not exist", _bundle({"resourceType": "Condition", "subject": SUBJECT, "code": {"text": "x"},
                                                 "onsetDateTime": "2010-02-30"})),
        ("a name that is not a list", _bundle({**PATIENT, "name": "Zebedee"})),
        ("an invalid ICD-10 code", _bundle({"resourceType": "Condition", "subject": SUBJECT,
                                            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E1"}]}})),
        ("a time without an offset", _bundle({"resourceType": "Condition", "subject": SUBJECT, "code": {"text": "x"},
                                               "onsetDateTime": "2012-03-01T10:00:00"})),
        ("hour 24", _bundle({"resourceType": "Condition", "subject": SUBJECT, "code": {"text": "x"},
                             "onsetDateTime": "2012-03-01T24:00:00Z"})),
        ("a code with spaces around it", _bundle({"resourceType": "Condition", "subject": SUBJECT,
                                                  "code": {"coding": [{"system": "http://snomed.info/sct", "code": " 195967001 "}]}})),
        ("an empty text", _bundle({"resourceType": "Condition", "subject": SUBJECT, "code": {"text": ""}})),
        ("dates: a year, an instant, white space kept", _bundle(
            {"resourceType": "Condition", "subject": SUBJECT, "code": {"text": "  Asthma  "}, "onsetDateTime": "2012"},
            {"resourceType": "Observation", "status": "final", "subject": SUBJECT, "code": {"coding": [{"code": "a"}]},
             "effectiveInstant": "2015-02-07T13:28:17.239+02:00", "valueBoolean": False})),
        ("an element FHIR does not have", _bundle({**PATIENT, "shoeSize": 44})),
        ("an element FHIR does not have, in a coding", _bundle({"resourceType": "Condition", "subject": SUBJECT,
                                                                "code": {"coding": [{"code": "x", "colour": "red"}]}})),
        ("a contained resource of no type", _bundle({**PATIENT, "contained": [{"resourceType": "Nope"}]})),
        ("an observation without code", _bundle({"resourceType": "Observation", "status": "final", "subject": SUBJECT})),
    ]


def _imported(doc) -> dict:
    try:
        result = import_bundle(doc)
    except RxfedError as exc:
        return {"error": exc.code}
    return {"records": [list(r) for r in result.records], "skipped": result.skipped,
            "skipped_why": [t.to_json() for t in result.skipped_why], "notes": [t.to_json() for t in result.notes]}


def _export_records() -> list:
    phq9 = q.score("phq9", [1, 1, 1, 1, 1, 1, 1, 1, 2]).to_dict()
    return [
        ["profile", {"fhir_patient": {"resourceType": "Patient", "name": [{"family": "Quartermaine"}], "birthDate": "1980-01-02"}}, "r0"],
        ["condition", rec.condition("g40909", label="Epilepsy", onset="2010-01-01"), "r1"],
        ["condition", {**rec.condition("84757009", "snomed"), "status": "remission", "abatement": "2020-02-02"}, "r2"],
        ["condition", {"system": None, "code": None, "label": "Chronic migraine", "onset": None, "abatement": None,
                       "status": "active", "source": "fhir", "import_key": "0123456789abcdef0123456789abcdef"}, "r3"],
        ["journal", rec.journal(symptoms={"fatigue": 7, "\u00e9paule": 2, "Zeal": 1}, feeling=4, note="private",
                                questionnaires=[phq9], date="2024-05-06"), "r4"],
        ["treatment", rec.treatment("Lamotrigine", dose="100 mg", started="2020-01-01", efficacy=8,
                                    side_effects=["rash"], adherence=9), "r5"],
        ["treatment", {**rec.treatment("Valproate", stopped="2030-01-01"), "code": {"system": "rxnorm", "code": "40254"},
                       "status": "cancelled"}, "r6"],
        ["observation", {"code": {"system": LOINC, "code": "39156-5", "display": "BMI"}, "category": None, "date": "2020-01-01",
                         "value": 19.124306358791486, "unit": "kg/m2", "components": []}, "r7"],
        ["observation", {"code": {"system": LOINC, "code": "72166-2", "display": "Smoking"}, "category": "social-history",
                         "date": None, "value": "Never smoker", "unit": None, "components": [
                             {"code": {"system": LOINC, "code": "x"}, "value": True, "unit": None}]}, "r8"],
        ["community", {"address": "c@x"}, "r9"],
    ]


def _consent_grants() -> list[dict]:
    """Grants in each status, as the patient's clients list them (fields the export does not
    read included, as the list has them)."""
    node = "b.example"
    base = {"tokens": [], "device": "d" * 32, "device_active": True, "nodes": [node], "acknowledged": [], "pending": [],
            "forged": []}
    return [
        {**base, "grant": "0" * 31 + "1", "kind": "treatment.outcome", "purpose": "research",
         "recipient": f"node:{node}", "created": 1764000000, "not_after": 1795536000, "revoked": None, "status": "live"},
        {**base, "grant": "0" * 31 + "2", "kind": "diagnosis.category", "purpose": "trial-matching",
         "recipient": f"plugin:{node}/matcher", "created": 1764000123, "not_after": 1795536000, "revoked": 1764086399,
         "status": "revoked", "acknowledged": [node]},
        {**base, "grant": "0" * 31 + "3", "kind": "symptom.trend", "purpose": "public-health", "recipient": "federation",
         "created": 1700000000, "not_after": 1731542400, "revoked": None, "status": "expired", "nodes": None},
        # revoked from this device, before the node's listing says so
        {**base, "grant": "0" * 31 + "4", "kind": "demographics.band", "purpose": "research",
         "recipient": f"node:{node}", "created": 1764000000, "not_after": 1795536000, "revoked": None,
         "status": "revoked"},
        # listed by the node, signed by no device of the patient's
        {**base, "grant": "f" * 32, "kind": "treatment.outcome", "purpose": "marketing", "recipient": "federation",
         "created": 1764001000, "not_after": 1795536000, "revoked": None, "status": "foreign", "device": None,
         "device_active": False, "nodes": None},
    ]


def fhir_vectors() -> dict:
    imports = [{"file": path, **_imported(json.loads((ROOT / path).read_text()))} for path in FHIR_FILES]
    imports += [{"name": name, "bundle": doc, **_imported(doc)} for name, doc in _cases()]
    records = _export_records()
    exports = [
        {"patient": "0123456789abcdef0123456789abcdef", "records": records,
         "bundle": export_bundle([tuple(r) for r in records], "0123456789abcdef0123456789abcdef")},
        {"patient": "p1", "records": records[1:3], "bundle": export_bundle([tuple(r) for r in records[1:3]], "p1")},
    ]
    # an export imported again: what comes back (the records, their keys) is pinned too
    imports.append({"name": "the first export", "bundle": exports[0]["bundle"], **_imported(exports[0]["bundle"])})
    grants = _consent_grants()
    consents = [{"patient": "p" + "a" * 31, "grants": grants, "bundle": consent_bundle("p" + "a" * 31, grants)},
                {"patient": "p1", "grants": [], "bundle": consent_bundle("p1", [])}]
    return {"imports": imports, "exports": exports, "consents": consents}
