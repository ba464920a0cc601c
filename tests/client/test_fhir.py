"""FHIR import and export, against two real Synthea exports and hand-made edge cases."""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path

import pytest
from fhir.resources.R4B.bundle import Bundle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rxfed.client.fhir import REDACTED, export_bundle, import_bundle
from rxfed.client.questionnaires import score
from rxfed.errors import BadRequest, Conflict

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
    """The records of one kind, without their import keys (tested on their own)."""
    return [{k: v for k, v in data.items() if k != "import_key"} for kind_, data in result.records if kind_ == kind]


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
    # The source server's id is not kept: where the record came from is its import key.
    assert profile == {"fhir_patient": {k: v for k, v in patient.items() if k != "id"}}
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


def test_a_patient_whose_identifier_is_null_imports_like_one_without():
    """Found by the property test above: ``"identifier": null`` raised a TypeError."""
    with_null = import_bundle(bundle({"resourceType": "Patient", "id": "p1", "identifier": None, "gender": "female"}))
    without = import_bundle(bundle({"resourceType": "Patient", "id": "p1", "gender": "female"}))
    assert [r[1]["fhir_patient"] for r in with_null.records] == [r[1]["fhir_patient"] for r in without.records] \
        == [{"resourceType": "Patient", "gender": "female"}]


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
    observations = {o["code"]["coding"][0]["code"]: o for o in _resources(exported, "Observation")}
    assert observations["44261-6"]["valueInteger"] == 10
    assert observations["44261-6"]["derivedFrom"] == [
        {"reference": next(e["fullUrl"] for e in exported["entry"] if e["resource"] is response)}]
    journal_codes = "https://rxfed.org/fhir/CodeSystem/journal"
    assert observations["symptom"]["code"]["coding"][0]["system"] == journal_codes
    assert (observations["symptom"]["code"]["text"], observations["symptom"]["valueInteger"]) == ("fatigue", 7)
    assert (observations["feeling"]["effectiveDateTime"], observations["feeling"]["valueInteger"]) == ("2024-05-06", 4)
    # Every resource of the journal entry carries its key.
    keys = {json.dumps(r["identifier"]) for r in [response, *observations.values()]}
    assert len({k.strip("[]") for k in keys}) == 1
    taking, stopped = _resources(exported, "MedicationStatement")
    # Recorded without a status: "unknown", with the period that says the rest.
    assert (taking["status"], taking["effectivePeriod"], taking["dosage"]) == (
        "unknown", {"start": "2020-01-01"}, [{"text": "100 mg"}])
    assert taking["medicationCodeableConcept"]["coding"][0]["system"] == "http://www.nlm.nih.gov/research/umls/rxnorm"
    assert {e["url"].rsplit("-", 1)[-1]: e.get("valueInteger", e.get("valueString")) for e in taking["extension"]} == {
        "efficacy": 8, "adherence": 9, "effect": "rash"}
    assert (stopped["status"], stopped["effectivePeriod"]) == ("unknown", {"end": "2019-01-01"})
    again = import_bundle(exported)
    assert of_kind(again, "journal") == [{**records[0][1], "note": None}]


def test_export_refuses_a_tampered_questionnaire_or_a_bad_patient_ref():
    tampered = {**score("gad7", [0] * 7).to_dict(), "total": 21}
    journal = {"date": "2024-05-06", "symptoms": {}, "feeling": None, "note": None, "questionnaires": [tampered]}
    with pytest.raises(BadRequest):
        export_bundle([("journal", journal, "j1")], "p1")
    with pytest.raises(BadRequest, match="patient reference"):
        export_bundle([], "not a valid id!")


# -- exports shaped like real EHRs' (tests/data/fhir/, written for these tests) -------------

EHR_DATA = Path(__file__).resolve().parents[1] / "data" / "fhir"


def ehr(name: str) -> dict:
    return json.loads((EHR_DATA / name).read_text())


def reasons(result) -> dict[tuple[str, str], int]:
    return {(r.resource_type, r.reason): r.count for r in result.skipped_why}


def test_epic_oid_code_systems_are_read():
    result = import_bundle(ehr("epic-problem-list.json"))
    conditions = of_kind(result, "condition")
    assert [(c["system"], c["code"]) for c in conditions] == [
        ("icd10", "E11.9"), ("icd10", "I10"), ("icd10", "E78.2"), ("icd10", "J45.40"), ("icd10", "K21.9"),
        ("icd10", "M17.11"), ("icd10", "J01.00")]
    assert conditions[-1]["status"] == "resolved" and conditions[-1]["abatement"] == "2023-01-30"
    assert result.skipped == {"OperationOutcome": 1}


def test_what_is_skipped_says_why():
    result = import_bundle(ehr("text-only-conditions.json"))
    why = reasons(result)
    assert why == {
        ("Condition", "it has neither a code nor a text"): 1,
        ("Condition", "no ICD-10 or SNOMED CT code and no text (coded only in "
                      "urn:oid:1.2.840.114350.1.13.9001.2.7.2.728286)"): 1,
        ("Condition", "marked entered-in-error"): 1,
    }
    assert sum(why.values()) == result.skipped["Condition"] == 3
    synthea_why = reasons(import_bundle(synthea(ALBERTO)))
    assert synthea_why[("Claim", "rxfed keeps no records of this resource type")] == 8


@pytest.mark.parametrize("doc", [
    ehr("searchset-two-patients.json"),
    bundle(PATIENT, {**PATIENT, "id": "p2"}),
    bundle(PATIENT, condition((SNOMED, "84757009")),
           {**condition((SNOMED, "195967001")), "subject": {"reference": "Patient/p2"}}),
    bundle(condition((SNOMED, "84757009")),
           {**condition((SNOMED, "195967001")), "subject": {"reference": "urn:uuid:5e0d3c1a-57f8-4bb1-9a0b-3df0e2ee4a11"}}),
    bundle(condition((SNOMED, "84757009")),
           {**condition((SNOMED, "195967001")),
            "subject": {"identifier": {"system": "urn:oid:2.16.840.1.113883.3.13.6", "value": "4471"}}}),
    bundle(condition((SNOMED, "84757009")),
           {"resourceType": "Claim", "status": "active", "use": "claim", "created": "2020-01-01",
            "type": {"coding": [{"code": "professional"}]}, "priority": {"coding": [{"code": "normal"}]},
            "provider": {"display": "x"}, "insurance": [{"sequence": 1, "focal": True, "coverage": {"display": "y"}}],
            "patient": {"reference": "Patient/p9"}}),
])
def test_a_bundle_about_more_than_one_patient_is_refused(doc):
    with pytest.raises(Conflict, match="different patients") as caught:
        import_bundle(doc)
    assert caught.value.code == "several_patients"
    assert "4471" not in caught.value.message and "Zebedee" not in caught.value.message


@pytest.mark.parametrize("doc", [
    ehr("epic-problem-list.json"),   # Patient/ID relative to absolute fullUrls
    ehr("cerner-medications-and-vitals.json"),
    ehr("ips-patient-summary.json"),  # urn:uuid references, a Practitioner, a Composition
    bundle(condition((SNOMED, "84757009")), condition((SNOMED, "195967001"))),
    bundle({**PATIENT, "identifier": [{"system": "urn:x", "value": "7"}]},
           {**condition((SNOMED, "84757009")), "subject": {"identifier": {"system": "urn:x", "value": "7"}}},
           {**condition((SNOMED, "195967001")), "subject": {"reference": "Group/g1"}},
           {**condition((SNOMED, "38341003")), "subject": {"display": "the patient"}}),
])
def test_one_patient_referred_to_in_different_ways_is_one_patient(doc):
    assert import_bundle(doc).records


def test_ips_absent_and_unknown_codes_are_not_records():
    result = import_bundle(ehr("ips-patient-summary.json"))
    assert [(c["code"], c["label"]) for c in of_kind(result, "condition")] == [
        ("254837009", "Malignant neoplasm of breast")]
    treatments = of_kind(result, "treatment")
    assert [t["name"] for t in treatments] == ["Product containing anastrozole (medicinal product)"]
    why = reasons(result)
    assert why[("Condition", "it records only that the information is absent or unknown (no-problem-info)")] == 1
    assert why[("MedicationStatement",
                "it records only that the information is absent or unknown (no-medication-info)")] == 1
    # A coded "nothing to record" and a data-absent-reason are the same thing.
    nothing = import_bundle(bundle(
        condition((SNOMED, "160245001")),
        condition(("http://terminology.hl7.org/CodeSystem/data-absent-reason", "asked-unknown")),
        {**condition(), "code": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                                                "valueCode": "unknown"}]}},
    ))
    assert nothing.records == () and nothing.skipped == {"Condition": 3}


def test_text_only_conditions_are_kept_with_a_label_and_no_code():
    result = import_bundle(ehr("text-only-conditions.json"))
    conditions = of_kind(result, "condition")
    assert [(c["system"], c["code"], c["label"], c["onset"]) for c in conditions] == [
        (None, None, "Chronic migraine with visual aura", "1983-05-01"),
        (None, None, "Rheumatoid arthritis", "1986-11-20"),
        ("snomed", "38341003", "Hypertension", "1987-02-09"),
    ]
    assert [(n.resource_type, n.count) for n in result.notes] == [("Condition", 1), ("Condition", 1)]
    assert "http://hl7.org/fhir/sid/icd-9-cm" in result.notes[1].reason
    [cerner] = [c for c in of_kind(import_bundle(ehr("cerner-medications-and-vitals.json")), "condition")
                if c["code"] is None]
    assert cerner["label"] == "Chronic right knee pain since fall at work"


def test_every_record_has_a_stable_import_key():
    doc = ehr("cerner-medications-and-vitals.json")
    first, again = import_bundle(doc), import_bundle(copy.deepcopy(doc))
    keys = [data["import_key"] for _, data in first.records]
    assert keys == [data["import_key"] for _, data in again.records]
    assert len(set(keys)) == len(keys) and all(re.fullmatch(r"[0-9a-f]{32}", k) for k in keys)
    # Without a fullUrl the key comes from the content, so the same file still gives the same keys.
    plain = bundle(condition((SNOMED, "84757009")), condition((SNOMED, "195967001")))
    assert [d["import_key"] for _, d in import_bundle(plain).records] == [
        d["import_key"] for _, d in import_bundle(copy.deepcopy(plain)).records]
    # The same resource listed twice in one Bundle is one record.
    doubled = import_bundle(bundle(condition((SNOMED, "84757009")), condition((SNOMED, "84757009"))))
    assert len(doubled.records) == 1 and reasons(doubled) == {("Condition", "it appears twice in the Bundle"): 1}


async def test_importing_the_same_file_twice_adds_nothing(make_patient):
    patient = await make_patient()
    imported = import_bundle(synthea(EDWARD))
    stored, present = await patient.import_records(list(imported.records))
    assert len(stored) == len(imported.records) and present == []
    stored, present = await patient.import_records(list(import_bundle(synthea(EDWARD)).records))
    assert stored == [] and len(present) == len(imported.records)
    assert len(await patient.records()) == len(imported.records)
    # A record written on the device and exported comes back as itself, not as a copy.
    own = await patient.add_condition("G40.909", label="epilepsy")
    records = await patient.records()
    exported = export_bundle([(r.kind, r.data, r.id) for r in records], "p1")
    stored, present = await patient.import_records(list(import_bundle(exported).records))
    assert stored == [] and own.id in {r.id for r in present}


async def test_records_imported_before_import_keys_are_recognised_by_what_they_say(make_patient):
    patient = await make_patient()
    imported = import_bundle(synthea(ALBERTO))
    # As the client stored them before it kept import keys, with the Patient's server id.
    keyless = [(kind, {k: v for k, v in data.items() if k != "import_key"}) for kind, data in imported.records]
    keyless[0] = ("profile", {"fhir_patient": synthea(ALBERTO)["entry"][0]["resource"]})
    await patient.add_records(keyless)
    stored, present = await patient.import_records(list(imported.records))
    # Only the profile differs (the Patient's server id is no longer kept), so only it is new.
    assert [r.kind for r in stored] == ["profile"] and len(present) == len(imported.records) - 1


def _every_kind() -> list[tuple[str, dict, str]]:
    from rxfed.client import records as rec

    phq9 = score("phq9", [1, 1, 1, 1, 1, 1, 1, 1, 2]).to_dict()
    gad7 = score("gad7", [0, 1, 2, 3, 0, 1, 2]).to_dict()
    profile = {"fhir_patient": {"resourceType": "Patient", "name": [{"family": "Quartermaine"}],
                                "birthDate": "1980-01-02", "gender": "female"}}
    return [
        ("profile", profile, "r0"),
        ("condition", rec.condition("g40909", label="Epilepsy", onset="2010-01-01"), "r1"),
        ("condition", {**rec.condition("84757009", "snomed"), "status": "remission", "abatement": "2020-02-02"}, "r2"),
        ("condition", {"system": None, "code": None, "label": "Chronic migraine with aura", "onset": None,
                       "abatement": None, "status": "active", "source": "fhir"}, "r3"),
        ("journal", rec.journal(symptoms={"fatigue": 7, "headache": 0}, feeling=4, questionnaires=[phq9, gad7],
                                date="2024-05-06"), "r4"),
        ("journal", rec.journal(symptoms={"aura": 3}, date="2024-05-07"), "r5"),
        ("journal", rec.journal(feeling=9, date="2024-05-08"), "r6"),
        ("treatment", rec.treatment("Lamotrigine", dose="100 mg twice daily", started="2020-01-01", efficacy=8,
                                    side_effects=["rash", "dizziness"], adherence=9), "r7"),
        ("treatment", {**rec.treatment("Valproate", stopped="2030-01-01"),
                       "code": {"system": "rxnorm", "code": "40254"}}, "r8"),
        ("treatment", {**rec.treatment("Carbamazepine", started="2001-01-01", stopped="2003-01-01"),
                       "status": "stopped", "code": {"system": "urn:oid:1.2.3", "code": "X1"}, "source": "fhir"}, "r9"),
        ("observation", {"code": {"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure"},
                         "category": "vital-signs", "date": "2024-02-27", "value": None, "unit": None,
                         "components": [
                             {"code": {"system": "http://loinc.org", "code": "8480-6", "display": "Systolic"},
                              "value": 148, "unit": "mm[Hg]"},
                             {"code": {"system": "http://loinc.org", "code": "8462-4", "display": "Diastolic"},
                              "value": 91.5, "unit": "mm[Hg]"}]}, "r10"),
        ("observation", {"code": {"system": "http://loinc.org", "code": "72166-2", "display": "Tobacco smoking status"},
                         "category": "social-history", "date": "2019-03-04", "value": "Never smoker", "unit": None,
                         "components": []}, "r11"),
        ("observation", {"code": {"system": "http://loinc.org", "code": "39156-5", "display": "BMI"},
                         "category": None, "date": None, "value": 19.124306358791486, "unit": "kg/m2",
                         "components": []}, "r12"),
    ]


def _without_provenance(data: dict) -> dict:
    return {k: v for k, v in data.items() if k not in ("source", "import_key")}


def test_export_then_import_is_lossless():
    from rxfed.client.records import record_key

    records = _every_kind()
    back = import_bundle(json.loads(json.dumps(export_bundle(records, "p1"))))
    # The questionnaires' total scores: rxfed scores the answers, which come back.
    assert back.skipped == {"Observation": 2}
    assert [(k, _without_provenance(d)) for k, d in back.records] == [
        (kind, _without_provenance(data)) for kind, data, _ in records]
    # Each record comes back under the key its export gave it: importing it again is a no-op.
    assert [d["import_key"] for _, d in back.records] == [record_key(rid, data) for _, data, rid in records]
    again = import_bundle(export_bundle([(k, d, f"other-{i}") for i, (k, d) in enumerate(back.records)], "p1"))
    assert [d["import_key"] for _, d in again.records] == [d["import_key"] for _, d in back.records]


@pytest.mark.parametrize("name", [ALBERTO, EDWARD])
def test_export_then_import_of_a_synthea_record_is_lossless(name):
    imported = import_bundle(synthea(name))
    records = [(kind, data, f"record-{i}") for i, (kind, data) in enumerate(imported.records)]
    back = import_bundle(export_bundle(records, "p1"))
    assert back.records == imported.records
