"""FHIR import and export, against two real Synthea exports and hand-made edge cases."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import pytest
from fhir.resources.R4B.bundle import Bundle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rxfed.client.fhir import REDACTED, export_bundle, import_bundle
from rxfed.client.questionnaires import score
from rxfed.errors import BadRequest

# The repo is cloned with shared/ beside it, locally and in CI.
FHIR_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fhir"
ALBERTO = "Alberto_Atencio_fc712d1f-5a2e-4407-9c55-a2a2bad623c2.json"
EDWARD = "Edward_Gulgowski_43481611-2459-44f5-ab20-4b142dac160f.json"
SNOMED = "http://snomed.info/sct"


@functools.cache
def _load(name: str) -> dict:
    return json.loads((FHIR_DATA / name).read_text())


def synthea(name: str) -> dict:
    if not (FHIR_DATA / name).is_file():
        pytest.skip(f"the Synthea export {name} is not in {FHIR_DATA} (shared/ must sit beside the repo)")
    return copy.deepcopy(_load(name))


def of_kind(result, kind: str) -> list[dict]:
    return [data for k, data in result.records if k == kind]


def bundle(*resources: dict, kind: str = "collection") -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": [{"resource": r} for r in resources]}


PATIENT = {
    "resourceType": "Patient", "id": "p1",
    "name": [{"family": "Quartermaine", "given": ["Zebedee", "Al"]}],
    "identifier": [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-12-3456"}],
    "telecom": [{"system": "phone", "value": "555-010-7788"}],
    "address": [{"line": ["12 Juniper Lane"], "city": "Springfield", "postalCode": "01824"}],
}


def condition(*codings: tuple[str, str], **extra) -> dict:
    return {"resourceType": "Condition", "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": s, "code": c} for s, c in codings]}, **extra}


# -- the real exports ----------------------------------------------------------------------


def test_alberto_imports_his_conditions_treatments_and_observations():
    result = import_bundle(synthea(ALBERTO))
    conditions = of_kind(result, "condition")
    assert sorted(c["code"] for c in conditions) == ["128613002", "703151001", "84757009"]
    assert {c["system"] for c in conditions} == {"snomed"}
    epilepsy = next(c for c in conditions if c["code"] == "84757009")
    assert epilepsy == {"system": "snomed", "code": "84757009", "label": "Epilepsy", "onset": "2007-06-04",
                        "abatement": None, "status": "active", "source": "fhir"}
    treatments = of_kind(result, "treatment")
    assert [(t["name"], t["code"], t["started"]) for t in treatments] == [
        ("Clonazepam [Klonopin]", {"system": "rxnorm", "code": "1153378"}, "2007-06-04"),
        ("Carbamazepine[Tegretol]", {"system": "rxnorm", "code": "308971"}, "2007-08-20"),
    ]
    assert all(t["source"] == "fhir" and t["side_effects"] == [] for t in treatments)
    assert len(of_kind(result, "observation")) == 35
    assert len(of_kind(result, "profile")) == 1
    assert result.skipped == {"Organization": 2, "Practitioner": 2, "Encounter": 6, "Claim": 8,
                              "ExplanationOfBenefit": 6, "Immunization": 7, "Procedure": 3, "DiagnosticReport": 1}


def test_edward_imports_resolved_conditions_and_stopped_prescriptions():
    result = import_bundle(synthea(EDWARD))
    conditions = {c["code"]: c for c in of_kind(result, "condition")}
    assert len(conditions) == 4
    assert conditions["38341003"]["label"] == "Hypertension"
    sinusitis = conditions["444814009"]
    assert (sinusitis["status"], sinusitis["onset"], sinusitis["abatement"]) == ("resolved", "2016-03-16", "2016-04-06")
    assert [t["status"] for t in of_kind(result, "treatment")] == ["stopped", "active", "stopped"]
    assert len(of_kind(result, "observation")) == 32
    assert result.skipped["Claim"] == 9 and result.skipped["CarePlan"] == 1


def test_observations_keep_values_units_and_components():
    observations = of_kind(import_bundle(synthea(ALBERTO)), "observation")
    height = next(o for o in observations if o["code"]["code"] == "8302-2")
    assert height["code"] == {"system": "http://loinc.org", "code": "8302-2", "display": "Body Height"}
    assert (height["category"], height["date"], height["unit"]) == ("vital-signs", "2012-02-27", "cm")
    assert height["value"] == pytest.approx(178.88023499217553)
    pressure = next(o for o in observations if o["code"]["code"] == "55284-4")
    assert pressure["value"] is None
    assert {c["code"]["code"]: c["unit"] for c in pressure["components"]} == {"8462-4": "mm[Hg]", "8480-6": "mm[Hg]"}
    smoking = next(o for o in observations if o["code"]["code"] == "72166-2")
    assert smoking["value"] == "Former smoker"


def _identifiers(patient: dict) -> set[str]:
    found = {i["value"] for i in patient["identifier"]} | {t["value"] for t in patient["telecom"]}
    for name in patient["name"]:
        found |= {name["family"], *name["given"]}
    for address in patient["address"]:
        found |= {address["city"], *address["line"]}
    return found


@pytest.mark.parametrize("name", [ALBERTO, EDWARD])
def test_identifiers_stay_in_the_profile(name):
    doc = synthea(name)
    patient = doc["entry"][0]["resource"]
    identifiers = _identifiers(patient)
    # SSN, driver's licence, passport, MRN; family and given name; street, city; phone.
    assert len(identifiers) >= 9
    result = import_bundle(doc)
    [profile] = of_kind(result, "profile")
    assert profile == {"fhir_patient": patient}
    profile_text = json.dumps(profile)
    assert all(value in profile_text for value in identifiers)
    others = json.dumps([data for kind, data in result.records if kind != "profile"]).lower()
    leaked = [value for value in identifiers if value.lower() in others]
    assert leaked == []


@pytest.mark.parametrize("name", [ALBERTO, EDWARD])
def test_round_trip_keeps_the_conditions(name):
    imported = import_bundle(synthea(name))
    records = [(kind, data, f"record-{i}") for i, (kind, data) in enumerate(imported.records)]
    exported = export_bundle(records, "0123456789abcdef0123456789abcdef")
    Bundle.model_validate(json.loads(json.dumps(exported)))
    assert exported["type"] == "collection"
    entries = exported["entry"]
    patient = entries[0]
    assert patient["resource"]["resourceType"] == "Patient"
    assert patient["resource"]["name"] == imported.records[0][1]["fhir_patient"]["name"]
    assert len({e["fullUrl"] for e in entries}) == len(entries)
    for entry in entries:
        assert entry["fullUrl"] == f"urn:uuid:{entry['resource']['id']}"
        if entry is not patient:
            assert entry["resource"]["subject"] == {"reference": patient["fullUrl"]}
    exported_codes = sorted((c["code"]["coding"][0]["system"], c["code"]["coding"][0]["code"])
                            for c in (e["resource"] for e in entries) if c["resourceType"] == "Condition")
    assert exported_codes == sorted((SNOMED, c["code"]) for c in of_kind(imported, "condition"))
    again = import_bundle(exported)
    assert of_kind(again, "condition") == of_kind(imported, "condition")
    assert len(of_kind(again, "observation")) == len(of_kind(imported, "observation"))
    # A stopped prescription without an end date must not come back as active.
    assert [t["status"] for t in of_kind(again, "treatment")] == [
        "stopped" if t["status"] == "stopped" else "active" for t in of_kind(imported, "treatment")]


def test_export_is_deterministic():
    records = [(kind, data, f"r{i}") for i, (kind, data) in enumerate(import_bundle(synthea(EDWARD)).records)]
    assert export_bundle(records, "abc") == export_bundle(records, "abc")


# -- import edge cases ---------------------------------------------------------------------


def test_icd10_is_preferred_and_normalised():
    result = import_bundle(bundle(condition((SNOMED, "44054006"), ("http://hl7.org/fhir/sid/icd-10-cm", "e119"))))
    [found] = of_kind(result, "condition")
    assert (found["system"], found["code"]) == ("icd10", "E11.9")


def test_conditions_without_a_known_code_or_that_never_were_are_skipped_and_counted():
    result = import_bundle(bundle(
        condition(("http://loinc.org", "8302-2")),
        condition(),
        condition((SNOMED, "44054006"),
                  verificationStatus={"coding": [{"code": "refuted"}]}),
        condition((SNOMED, "84757009"), onsetDateTime="2012", abatementDateTime="2019-05-01T23:30:00-05:00"),
    ))
    [kept] = of_kind(result, "condition")
    # A partial onset is not padded; a timestamp keeps the day it was written in.
    assert (kept["code"], kept["onset"], kept["abatement"]) == ("84757009", None, "2019-05-01")
    assert result.skipped == {"Condition": 3}


def test_an_invalid_code_names_its_entry():
    with pytest.raises(BadRequest, match=r"entry 1 \(Condition\): '44054007' .*check digit") as caught:
        import_bundle(bundle(PATIENT, condition((SNOMED, "44054007"))))
    assert caught.value.code == "invalid_code"


def test_identifying_free_text_is_redacted_outside_the_profile():
    labelled = condition((SNOMED, "84757009"))
    labelled["code"]["text"] = "Epilepsy (Zebedee QUARTERMAINE, 12 Juniper Lane, tel 555-010-7788)"
    medication = {"resourceType": "MedicationStatement", "status": "active", "subject": {"reference": "Patient/p1"},
                  "medicationCodeableConcept": {"text": "Lamotrigine"},
                  "dosage": [{"text": "Al: 100 mg twice daily, ask Springfield pharmacy (ref 999-12-3456)"}]}
    result = import_bundle(bundle(PATIENT, labelled, medication))
    [found] = of_kind(result, "condition")
    assert found["label"] == f"Epilepsy ({REDACTED} {REDACTED}, {REDACTED}, tel {REDACTED})"
    [treatment] = of_kind(result, "treatment")
    # Whole words only: "Al" goes, "Lamotrigine" and the dose stay.
    assert treatment["dose"] == f"{REDACTED}: 100 mg twice daily, ask {REDACTED} pharmacy (ref {REDACTED})"
    assert treatment["name"] == "Lamotrigine"


def test_medication_statements_and_referenced_medications():
    medication = {"resourceType": "Medication", "id": "m1",
                  "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "6809",
                                       "display": "metformin"}]}}
    request = {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
               "subject": {"reference": "Patient/p1"}, "medicationReference": {"reference": "Medication/m1"},
               "authoredOn": "2020-02-03", "dosageInstruction": [{"text": "500 mg"}, {"text": "with food"}]}
    statement = {"resourceType": "MedicationStatement", "status": "completed", "subject": {"reference": "Patient/p1"},
                 "medicationCodeableConcept": {"coding": [{"system": "urn:oid:1.2.3", "code": "X1"}]},
                 "effectivePeriod": {"start": "2019-01-01", "end": "2019-06-30"}}
    unnamed = {**request, "medicationReference": {"reference": "Medication/missing"}}
    result = import_bundle(bundle(medication, request, statement, unnamed))
    first, second = of_kind(result, "treatment")
    assert (first["name"], first["code"], first["dose"], first["started"]) == (
        "metformin", {"system": "rxnorm", "code": "6809"}, "500 mg; with food", "2020-02-03")
    assert (second["name"], second["code"], second["started"], second["stopped"], second["status"]) == (
        "X1", {"system": "urn:oid:1.2.3", "code": "X1"}, "2019-01-01", "2019-06-30", "completed")
    assert result.skipped == {"Medication": 1, "MedicationRequest": 1}


def _response(linked_answers: list[tuple[str, dict]], **extra) -> dict:
    return {"resourceType": "QuestionnaireResponse", "status": "completed", "authored": "2024-03-01T09:00:00+01:00",
            "item": [{"linkId": link, "answer": [answer]} for link, answer in linked_answers], **extra}


def test_questionnaire_responses_become_scored_journal_entries():
    phq9 = _response([(str(i), {"valueInteger": 2}) for i in range(1, 10)],
                     questionnaire="http://loinc.org/vs/44249-1")
    gad7_items = ["69725-0", "68509-9", "69733-4", "69734-2", "69735-9", "69689-8", "69736-7"]
    gad7 = _response([(f"/{code}", {"valueCoding": {"system": "http://loinc.org", "code": "LA6569-3"}})
                      for code in gad7_items])
    incomplete = _response([(str(i), {"valueInteger": 1}) for i in range(1, 9)],
                           questionnaire="http://loinc.org/q/44249-1")
    unknown = _response([("1", {"valueInteger": 1})], questionnaire="http://example.org/Questionnaire/mood")
    result = import_bundle(bundle(phq9, gad7, incomplete, unknown))
    assert of_kind(result, "journal") == [
        {"date": "2024-03-01", "symptoms": {}, "feeling": None, "note": None,
         "questionnaires": [score("phq9", [2] * 9).to_dict()]},
        {"date": "2024-03-01", "symptoms": {}, "feeling": None, "note": None,
         "questionnaires": [score("gad7", [1] * 7).to_dict()]},
    ]
    assert result.skipped == {"QuestionnaireResponse": 2}


def test_a_questionnaire_answer_out_of_range_is_refused():
    phq9 = _response([(str(i), {"valueInteger": 5}) for i in range(1, 10)], questionnaire="http://loinc.org/q/44249-1")
    with pytest.raises(BadRequest, match=r"entry 0 \(QuestionnaireResponse\): phq9 answer 1"):
        import_bundle(bundle(phq9))


@pytest.mark.parametrize("kind", ["transaction", "collection", "batch", "searchset", "document"])
def test_every_bundle_type_a_hospital_sends_is_accepted(kind):
    assert of_kind(import_bundle(bundle(PATIENT, kind=kind)), "profile")


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(("doc", "message"), [
    ([], "JSON object"),
    ("{}", "JSON object"),
    (None, "JSON object"),
    (PATIENT, "expected a FHIR Bundle, got resourceType 'Patient'"),
    ({"type": "collection"}, "expected a FHIR Bundle"),
    ({"resourceType": "Bundle"}, "Bundle type None"),
    (bundle(kind="history"), "Bundle type 'history'"),
    ({"resourceType": "Bundle", "type": "collection", "entry": {}}, "must be a list"),
    (bundle({"resourceType": "Condition", "code": {"text": "x"}}), r"entry\.0\.resource\.subject: Field required"),
    (bundle({**PATIENT, "birthDate": "1990-02-30"}), r"entry\.0\.resource\.birthDate"),
    (bundle({**PATIENT, "name": "Zebedee"}), r"entry\.0\.resource\.name"),
    (bundle({**PATIENT, "shoeSize": 44}), "Extra inputs are not permitted"),
    (bundle({"resourceType": "Nope"}), "entry 0: 'Nope' is not a FHIR R4 resource type"),
    (bundle({"resourceType": "Coding"}), "entry 0: 'Coding' is not a FHIR R4 resource type"),
    (bundle({"id": "x"}), "entry 0: the resource has no resourceType"),
    (bundle({**PATIENT, "contained": [{"resourceType": "Nope"}]}), "missing or unknown resourceType"),
    ({"resourceType": "Bundle", "type": "collection", "entry": [7]}, r"entry\.0"),
    (bundle(PATIENT, {**PATIENT, "id": "p2"}), "holds 2 patients"),
])
def test_bad_input_is_refused_clearly(doc, message):
    with pytest.raises(BadRequest, match=message) as caught:
        import_bundle(doc)
    assert caught.value.code == "invalid_fhir"
    assert "Zebedee" not in caught.value.message


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_fields = st.sampled_from(["subject", "code", "status", "valueInteger", "item", "name", "onsetDateTime",
                           "medicationCodeableConcept", "contained", "entry", "type", "identifier"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["Patient", "Condition", "Observation", "MedicationRequest", "QuestionnaireResponse",
                        "Bundle", "Claim", "Nope", 3, None]),
       st.dictionaries(_fields, _json, max_size=4))
def test_malformed_resources_only_ever_raise_bad_request(resource_type, fields):
    try:
        import_bundle(bundle({"resourceType": resource_type, **fields}))
    except BadRequest:
        pass


# -- export --------------------------------------------------------------------------------


def _resources(exported: dict, kind: str) -> list[dict]:
    return [e["resource"] for e in exported["entry"] if e["resource"]["resourceType"] == kind]


def test_export_without_a_profile_makes_a_minimal_patient():
    exported = export_bundle([("condition", {"system": "icd10", "code": "g40909", "label": "Epilepsy",
                                             "onset": "2010-01-01", "abatement": None, "status": "active",
                                             "source": None}, "c1")], "p-1")
    [patient] = _resources(exported, "Patient")
    assert patient == {"resourceType": "Patient", "id": "p-1"}
    [found] = _resources(exported, "Condition")
    assert found["code"]["coding"] == [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "G40.909",
                                        "display": "Epilepsy"}]
    assert found["clinicalStatus"]["coding"][0]["code"] == "active"
    assert found["onsetDateTime"] == "2010-01-01"
    assert "abatementDateTime" not in found


def test_export_journal_and_treatments():
    phq9 = score("phq9", [1, 1, 1, 1, 1, 1, 1, 1, 2]).to_dict()
    records = [
        ("journal", {"date": "2024-05-06", "symptoms": {"fatigue": 7}, "feeling": 4, "note": "private thoughts",
                     "questionnaires": [phq9]}, "j1"),
        ("treatment", {"name": "Lamotrigine", "dose": "100 mg", "started": "2020-01-01", "stopped": None,
                       "efficacy": 8, "side_effects": ["rash"], "adherence": 9,
                       "code": {"system": "rxnorm", "code": "28439"}, "status": None, "source": None}, "t1"),
        ("treatment", {"name": "Valproate", "dose": None, "started": None, "stopped": "2019-01-01", "efficacy": None,
                       "side_effects": [], "adherence": None, "code": None, "status": None, "source": None}, "t2"),
        ("message", {"text": "not FHIR"}, "m1"),
    ]
    exported = export_bundle(records, "p1")
    assert "private thoughts" not in json.dumps(exported)
    [response] = _resources(exported, "QuestionnaireResponse")
    assert "44249-1" in response["questionnaire"]
    assert [(i["linkId"], i["answer"]) for i in response["item"]] == [
        (str(n), [{"valueInteger": a}]) for n, a in enumerate(phq9["answers"], start=1)]
    observations = {(o["code"].get("text") or o["code"]["coding"][0]["code"]): o
                    for o in _resources(exported, "Observation")}
    assert observations["44261-6"]["valueInteger"] == 10
    assert observations["44261-6"]["derivedFrom"] == [
        {"reference": next(e["fullUrl"] for e in exported["entry"] if e["resource"] is response)}]
    assert observations["fatigue (0-10)"]["valueInteger"] == 7
    assert observations["overall feeling (0-10)"]["effectiveDateTime"] == "2024-05-06"
    taking, stopped = _resources(exported, "MedicationStatement")
    assert (taking["status"], taking["effectivePeriod"], taking["dosage"]) == (
        "active", {"start": "2020-01-01"}, [{"text": "100 mg"}])
    assert taking["medicationCodeableConcept"]["coding"][0]["system"] == "http://www.nlm.nih.gov/research/umls/rxnorm"
    assert (stopped["status"], stopped["effectivePeriod"]) == ("completed", {"end": "2019-01-01"})
    again = import_bundle(exported)
    assert of_kind(again, "journal")[0]["questionnaires"] == [phq9]


def test_export_refuses_a_tampered_questionnaire_or_a_bad_patient_ref():
    tampered = {**score("gad7", [0] * 7).to_dict(), "total": 21}
    journal = {"date": "2024-05-06", "symptoms": {}, "feeling": None, "note": None, "questionnaires": [tampered]}
    with pytest.raises(BadRequest):
        export_bundle([("journal", journal, "j1")], "p1")
    with pytest.raises(BadRequest, match="patient reference"):
        export_bundle([], "not a valid id!")
