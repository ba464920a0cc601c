"""Diagnosis code validation: ICD-10 (and ICD-10-CM) and SNOMED CT concept identifiers.

Codes are checked on the patient's device before anything is derived from them, so a typo
never becomes a signal: a mistyped ICD-10 code fails the format check, and a mistyped
SNOMED CT identifier fails its Verhoeff check digit (which catches every single-digit error
and every swap of two adjacent digits).
"""

from __future__ import annotations

import re

from rxfed.errors import BadRequest

#: The URI rxfed writes for each code system it knows.
SYSTEM_URIS = {"icd10": "http://hl7.org/fhir/sid/icd-10", "snomed": "http://snomed.info/sct"}

# Every name HL7 registers for these code systems (FHIR's list of external code systems and
# the HL7 Terminology NamingSystems): the http URIs and the OIDs, which EHRs that grew out of
# CDA (Epic among them) still write as urn:oid:. ICD-10-CM and the national editions of
# ICD-10 keep the WHO categories and add detail after the dot, so one system covers them all.
# ICD-10-PCS (procedures, OID .6.4) is deliberately absent: its codes are not diagnoses.
_ALIASES = {
    "icd10": (
        "http://hl7.org/fhir/sid/icd-10", "http://terminology.hl7.org/CodeSystem/icd10",
        "urn:oid:2.16.840.1.113883.6.3",                                      # WHO ICD-10
        "http://hl7.org/fhir/sid/icd-10-cm", "http://terminology.hl7.org/CodeSystem/icd10CM",
        "urn:oid:2.16.840.1.113883.6.90",                                     # ICD-10-CM
        "http://hl7.org/fhir/sid/icd-10-nl", "http://terminology.hl7.org/CodeSystem/ICD10dut",
        "urn:oid:2.16.840.1.113883.6.3.2",                                    # Dutch edition
        "http://hl7.org/fhir/sid/icd-10-de", "http://terminology.hl7.org/CodeSystem/dmdICD10",
        "urn:oid:2.16.840.1.113883.6.3.3",                                    # German edition
    ),
    "snomed": ("http://snomed.info/sct", "urn:oid:2.16.840.1.113883.6.96"),
}
_URI_SYSTEMS = {uri: name for name, uris in _ALIASES.items() for uri in uris}

# Category: a letter, a digit, then a digit or (C4A, C7A, D3A, M1A, Z3A) a letter; then up to
# four characters of detail, letters included for ICD-10-CM placeholders and 7th characters.
_ICD10 = re.compile(r"([A-Z][0-9][0-9A-Z])(?:\.?([0-9A-Z]{1,4}))?")
_ICD10_SHAPE = ("a letter, a digit, a digit or letter, then optionally a dot and 1 to 4 letters or digits "
                "(e.g. E11, E11.9, G40.909, S72.001A)")

_SNOMED = re.compile(r"[1-9][0-9]{5,17}")
# The partition identifier (2nd and 3rd digits from the right) says what an SCTID names;
# only these two name concepts, the others descriptions, relationships or extensions' items.
_CONCEPT_PARTITIONS = ("00", "10")

# Verhoeff's tables: multiplication in the dihedral group D5, the position permutation, and
# the inverse, as published by Verhoeff (1969).
_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
    (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
    (9, 4, 5, 3, 1, 2, 6, 8, 7, 0),
    (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5),
    (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)
_INV = (0, 4, 3, 2, 1, 5, 6, 7, 8, 9)


def _verhoeff(digits: str, offset: int) -> int:
    check = 0
    for position, digit in enumerate(reversed(digits), start=offset):
        check = _D[check][_P[position % 8][int(digit)]]
    return check


def verhoeff_check_digit(payload: str) -> str:
    """The Verhoeff check digit to append to a string of decimal digits."""
    if not payload.isascii() or not payload.isdigit():
        raise ValueError("the Verhoeff payload must be decimal digits")
    # Position 0 is reserved for the check digit itself, so the payload starts at 1.
    return str(_INV[_verhoeff(payload, 1)])


def verhoeff_valid(number: str) -> bool:
    """True when the last digit of ``number`` is its Verhoeff check digit."""
    return number.isascii() and number.isdigit() and _verhoeff(number, 0) == 0


def _shown(code: str) -> str:
    return repr(code if len(code) <= 40 else code[:40] + "...")


def _icd10(code: str) -> str:
    # Only ASCII may be upper-cased: "ı".upper() is "I", which would turn junk into a code.
    match = _ICD10.fullmatch(code.upper()) if code.isascii() else None
    if match is None:
        raise BadRequest(f"{_shown(code)} is not an ICD-10 code: expected {_ICD10_SHAPE}", code="invalid_code")
    category, detail = match.groups()
    return f"{category}.{detail}" if detail else category


def _snomed(code: str) -> str:
    if _SNOMED.fullmatch(code) is None:
        raise BadRequest(f"{_shown(code)} is not a SNOMED CT concept id: expected 6 to 18 digits, "
                         "not starting with 0 (e.g. 44054006)", code="invalid_code")
    # The check digit first: a typo is likelier than a valid id of the wrong kind.
    if not verhoeff_valid(code):
        raise BadRequest(f"{_shown(code)} is not a SNOMED CT concept id: its check digit is wrong; "
                         "look for a mistyped or swapped digit", code="invalid_code")
    if code[-3:-1] not in _CONCEPT_PARTITIONS:
        raise BadRequest(f"{_shown(code)} is a SNOMED CT identifier but not a concept id (its partition "
                         f"digits are {code[-3:-1]!r}, a concept has '00' or '10'); is it a description id?",
                         code="invalid_code")
    return code


def normalise_code(system: str, code: str) -> str:
    """The canonical form of a diagnosis code, or BadRequest saying what shape was expected.

    ICD-10 comes back upper case with its dot (``e119`` -> ``E11.9``); SNOMED CT comes back
    as given once its length, partition and check digit are right.
    """
    if not isinstance(code, str):
        raise BadRequest("a diagnosis code must be text", code="invalid_code")
    code = code.strip()
    if system == "icd10":
        return _icd10(code)
    if system == "snomed":
        return _snomed(code)
    raise BadRequest(f"unknown code system {system!r}: use icd10 or snomed", code="invalid_code")


def system_from_uri(uri: str | None) -> str | None:
    """``"icd10"`` or ``"snomed"`` for a FHIR ``Coding.system`` naming ICD-10 (any edition)
    or SNOMED CT by any of its registered URIs, else None."""
    if not isinstance(uri, str):
        return None
    uri = uri.strip()
    # The urn and oid scheme names are case-insensitive (RFC 8141); the URLs are not.
    if uri[:8].lower() == "urn:oid:":
        uri = "urn:oid:" + uri[8:]
    return _URI_SYSTEMS.get(uri)
