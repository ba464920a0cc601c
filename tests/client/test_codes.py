"""Diagnosis code validation: ICD-10 shapes, SNOMED CT check digits and partitions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxfed.vocabulary.codes import (
    SYSTEM_URIS,
    normalise_code,
    system_from_uri,
    verhoeff_check_digit,
    verhoeff_valid,
)
from rxfed.errors import BadRequest

FHIR_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fhir"

REAL_SNOMED = ["44054006", "84757009", "128613002", "703151001", "38341003", "195662009"]


@pytest.mark.parametrize("code", REAL_SNOMED)
def test_real_snomed_concepts_pass(code):
    assert normalise_code("snomed", code) == code
    assert verhoeff_valid(code)


def test_every_snomed_condition_in_the_synthea_exports_passes():
    files = sorted(FHIR_DATA.glob("*.json"))
    if not files:
        pytest.skip(f"no Synthea exports in {FHIR_DATA}")
    codes = [
        coding["code"]
        for path in files
        for entry in json.loads(path.read_text())["entry"]
        if entry["resource"]["resourceType"] == "Condition"
        for coding in entry["resource"]["code"]["coding"]
        if system_from_uri(coding["system"]) == "snomed"
    ]
    assert len(codes) == 7
    for code in codes:
        assert normalise_code("snomed", code) == code


@pytest.mark.parametrize(("payload", "check"), [("236", "3"), ("12345", "1"), ("142857", "0"), ("4405400", "6")])
def test_verhoeff_known_vectors(payload, check):
    assert verhoeff_check_digit(payload) == check
    assert verhoeff_valid(payload + check)


@given(st.text(alphabet="0123456789", min_size=1, max_size=17), st.data())
def test_verhoeff_catches_every_single_digit_error_and_adjacent_swap(payload, data):
    number = payload + verhoeff_check_digit(payload)
    assert verhoeff_valid(number)
    position = data.draw(st.integers(0, len(number) - 1))
    wrong = data.draw(st.sampled_from([d for d in "0123456789" if d != number[position]]))
    assert not verhoeff_valid(number[:position] + wrong + number[position + 1:])
    if position + 1 < len(number) and number[position] != number[position + 1]:
        swapped = number[:position] + number[position + 1] + number[position] + number[position + 2:]
        assert not verhoeff_valid(swapped)


@given(st.integers(1, 10**12), st.sampled_from(["00", "10"]))
def test_any_concept_id_with_a_valid_check_digit_passes(item, partition):
    payload = f"{item}{partition}"
    code = payload + verhoeff_check_digit(payload)
    if 6 <= len(code) <= 18:
        assert normalise_code("snomed", code) == code


def _with_check(payload: str) -> str:
    return payload + verhoeff_check_digit(payload)


@pytest.mark.parametrize(("code", "message"), [
    ("44054007", "check digit"),
    ("44054060", "check digit"),  # last two digits swapped
    ("044054006", "6 to 18 digits"),
    ("12340", "6 to 18 digits"),
    ("1" * 19, "6 to 18 digits"),
    ("4405400X", "6 to 18 digits"),
    ("44054006 x", "6 to 18 digits"),
    ("", "6 to 18 digits"),
    ("\u0664\u0664\u0660\u0665\u0664\u0660\u0660\u0666", "6 to 18 digits"),  # Arabic-Indic digits
    (_with_check("1234501"), "not a concept id"),  # a description id
    (_with_check("1234502"), "not a concept id"),  # a relationship id
    (_with_check("1234511"), "not a concept id"),  # an extension description id
])
def test_bad_snomed_codes_are_refused_with_a_reason(code, message):
    with pytest.raises(BadRequest, match=message) as caught:
        normalise_code("snomed", code)
    assert caught.value.code == "invalid_code"


@pytest.mark.parametrize(("code", "canonical"), [
    ("E11", "E11"),
    ("E11.9", "E11.9"),
    ("e119", "E11.9"),
    (" e11.9 ", "E11.9"),
    ("G40.909", "G40.909"),
    ("g40909", "G40.909"),
    ("S72.001A", "S72.001A"),
    ("s72001a", "S72.001A"),
    ("T36.0X1A", "T36.0X1A"),
    ("C7A", "C7A"),
    ("c7a010", "C7A.010"),
    ("U07.1", "U07.1"),
    ("F32.A", "F32.A"),
])
def test_icd10_codes_are_normalised(code, canonical):
    assert normalise_code("icd10", code) == canonical


@pytest.mark.parametrize("code", [
    "E1", "E11.", "E11..9", "11.9", "EE1.9", "EA1", "E11.12345", "E11-9", "E 11", ".E11", "\u0131" + "10", "",
])
def test_bad_icd10_codes_show_the_expected_shape(code):
    with pytest.raises(BadRequest, match=r"expected a letter, a digit.*e\.g\. E11") as caught:
        normalise_code("icd10", code)
    assert caught.value.code == "invalid_code"


_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@given(
    st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), st.sampled_from("0123456789"), st.sampled_from(_ALNUM),
    st.text(alphabet=_ALNUM, max_size=4), st.booleans(), st.booleans(),
)
def test_icd10_normalisation_is_canonical_and_idempotent(letter, digit, third, detail, dotted, lower):
    canonical = f"{letter}{digit}{third}" + (f".{detail}" if detail else "")
    written = canonical if dotted else canonical.replace(".", "")
    assert normalise_code("icd10", written.lower() if lower else written) == canonical
    assert normalise_code("icd10", canonical) == canonical


@given(st.sampled_from(["icd10", "snomed"]), st.text(max_size=30))
def test_junk_only_ever_raises_bad_request(system, junk):
    try:
        normalise_code(system, junk)
    except BadRequest as exc:
        assert exc.code == "invalid_code"


@pytest.mark.parametrize("code", [None, 44054006, b"E11"])
def test_non_text_codes_are_refused(code):
    with pytest.raises(BadRequest, match="must be text"):
        normalise_code("icd10", code)


def test_unknown_system_is_refused():
    with pytest.raises(BadRequest, match="icd10 or snomed"):
        normalise_code("loinc", "8302-2")


@pytest.mark.parametrize(("uri", "system"), [
    ("http://hl7.org/fhir/sid/icd-10", "icd10"),
    ("http://hl7.org/fhir/sid/icd-10-cm", "icd10"),
    ("http://snomed.info/sct", "snomed"),
    # The OID forms EHRs (Epic among them) write, and the other URIs HL7 registers.
    ("urn:oid:2.16.840.1.113883.6.3", "icd10"),
    ("urn:oid:2.16.840.1.113883.6.90", "icd10"),
    ("urn:oid:2.16.840.1.113883.6.96", "snomed"),
    ("URN:OID:2.16.840.1.113883.6.96", "snomed"),
    ("http://terminology.hl7.org/CodeSystem/icd10", "icd10"),
    ("http://terminology.hl7.org/CodeSystem/icd10CM", "icd10"),
    ("http://hl7.org/fhir/sid/icd-10-nl", "icd10"),
    ("http://terminology.hl7.org/CodeSystem/ICD10dut", "icd10"),
    ("urn:oid:2.16.840.1.113883.6.3.2", "icd10"),
    ("http://terminology.hl7.org/CodeSystem/dmdICD10", "icd10"),
    ("urn:oid:2.16.840.1.113883.6.3.3", "icd10"),
    (" http://snomed.info/sct ", "snomed"),
    # Procedures, not diagnoses; other code systems; an OID of something else.
    ("http://www.cms.gov/Medicare/Coding/ICD10", None),
    ("urn:oid:2.16.840.1.113883.6.4", None),
    ("urn:oid:2.16.840.1.113883.6.1", None),
    ("urn:oid:2.16.840.1.113883.6.9", None),
    ("http://loinc.org", None),
    ("http://www.nlm.nih.gov/research/umls/rxnorm", None),
    ("urn:oid:1.2.840.114350.1.13.0.1.7.2.728286", None),
    (None, None),
    (7, None),
])
def test_system_from_uri(uri, system):
    assert system_from_uri(uri) == system


def test_system_uris_round_trip():
    for system, uri in SYSTEM_URIS.items():
        assert system_from_uri(uri) == system
