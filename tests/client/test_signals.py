"""The built-in signal kinds: derivation from records, schemas, Safe Harbor on real exports."""

from __future__ import annotations

import copy
import csv
import datetime as dt
import functools
import importlib.resources
import itertools
import json
import re
import tomllib
from pathlib import Path

import pytest

import rxfed_plugins.signals as signals
from rxfed.client import records as rec
from rxfed.vocabulary.codes import normalise_code, verhoeff_valid
from rxfed.client.fhir import import_bundle
from rxfed.client.records import Record
from rxfed.consent.signals import SignalError
from rxfed.plugins import PluginError
from rxfed.testing import builtin_plugins

ROOT = Path(__file__).resolve().parents[2]
FHIR_DATA = ROOT.parent / "shared" / "data" / "fhir"
SYNTHEA = {
    "Alberto_Atencio_fc712d1f-5a2e-4407-9c55-a2a2bad623c2.json": {"G40"},
    "Edward_Gulgowski_43481611-2459-44f5-ab20-4b142dac160f.json": {"E66", "I10"},
}
TODAY = dt.date(2026, 11, 26)
KINDS = ("diagnosis.category", "treatment.outcome", "symptom.trend", "demographics.band")
_ids = itertools.count()


def record(kind: str, data: dict) -> Record:
    """A decrypted record; ``created`` follows the order records are made in."""
    n = next(_ids)
    return Record(f"rec-{n}", 1, kind, f"2026-01-01T00:00:00.{n:06d}Z", data)


def condition(code: str, system: str = "icd10", *, onset: str | None = None, **changes) -> Record:
    return record("condition", {**rec.condition(code, system, onset=onset), **changes})


def treatment(name: str, **fields) -> Record:
    code, status = fields.pop("code", None), fields.pop("status", None)
    return record("treatment", {**rec.treatment(name, **fields), "code": code, "status": status})


def journal(days_ago: int, **symptoms) -> Record:
    day = (TODAY - dt.timedelta(days=days_ago)).isoformat()
    return record("journal", rec.journal(symptoms=symptoms, date=day))


def profile(birth_date: str | None = "1980-05-17", gender: str | None = "female", **patient) -> Record:
    doc = {"resourceType": "Patient", "id": "p1", **patient}
    if birth_date is not None:
        doc["birthDate"] = birth_date
    if gender is not None:
        doc["gender"] = gender
    return record("profile", {"fhir_patient": doc})


def rxnorm(code: str) -> dict:
    return {"system": "rxnorm", "code": code}


@pytest.fixture(scope="module")
def plugins():
    manager = builtin_plugins()
    yield manager
    manager.close()


# -- diagnosis.category --------------------------------------------------------------------


def test_no_records_no_signals(plugins):
    for kind in KINDS:
        assert plugins.derive_signals(kind, [], TODAY) == []


def test_icd10_codes_give_their_category_once_with_the_earliest_onset_year():
    records = [condition("E11.65", onset="2015-03-01"), condition("E11.9", onset="2012-07-09"), condition("J45")]
    assert signals.categories(records, today=TODAY) == [
        {"system": "icd10", "category": "E11", "source": "icd10", "onset_year": 2012},
        {"system": "icd10", "category": "J45", "source": "icd10"},
    ]


def test_snomed_maps_through_the_table_and_icd10_wins_the_source():
    snomed_only = [condition("44054006", "snomed", onset="2010-01-01")]
    assert signals.categories(snomed_only, today=TODAY) == [
        {"system": "icd10", "category": "E11", "source": "snomed", "onset_year": 2010}]
    both = snomed_only + [condition("E11.9")]
    assert signals.categories(both, today=TODAY)[0]["source"] == "icd10"


def test_ended_conditions_are_left_out_but_remission_is_not():
    records = [
        condition("J20", abatement="2020-02-01"),                      # acute bronchitis, over
        condition("444814009", "snomed", status="resolved"),           # viral sinusitis, resolved
        condition("I10", status="inactive"),
        condition("24700007", "snomed", status="remission"),           # MS in remission is still MS
        condition("84757009", "snomed", status="active"),
        condition("E78", status=None),
    ]
    assert [b["category"] for b in signals.categories(records, today=TODAY)] == ["E78", "G35", "G40"]


def test_unmapped_snomed_concepts_give_nothing():
    # Valid concepts, absent from the table: a history-of situation and sleep apnea.
    records = [condition("703151001", "snomed"), condition("73430006", "snomed")]
    assert signals.categories(records, today=TODAY) == []


def test_extra_mappings_merge_over_the_table():
    records = [condition("73430006", "snomed")]
    assert signals.categories(records, {"73430006": "G47"}, today=TODAY)[0]["category"] == "G47"
    assert signals.derive("diagnosis.category", records, TODAY, {"73430006": "G47"})[0]["category"] == "G47"
    # Agreeing with the table is fine; contradicting it, or mapping to a non-diagnosis, is not.
    assert signals.snomed_map({"44054006": "E11"})["44054006"] == "E11"
    for bad in ({"44054006": "E10"}, {"73595000": "Z73"}, {"73430007": "G47"}, {"73430006": "sleep"}):
        with pytest.raises(PluginError):
            signals.categories(records, bad, today=TODAY)


def test_z_codes_and_external_causes_never_become_diagnosis_signals():
    records = [condition("Z59.0"), condition("Z56"), condition("W19"), condition("V43.5"), condition("U07.1")]
    assert [b["category"] for b in signals.categories(records, today=TODAY)] == ["U07"]


def test_implausible_onset_years_are_dropped():
    records = [condition("E11", onset="2027-01-01"), condition("J45", onset="1850-01-01")]
    assert all("onset_year" not in b for b in signals.categories(records, today=TODAY))


def test_no_years_at_all_for_patients_aged_90_or_over():
    congenital = [condition("Q90", onset="1931-02-02"), treatment("Metformin", started="1990-01-01")]
    old = congenital + [profile("1931-02-02")]
    young = congenital + [profile("1960-02-02")]
    assert "onset_year" not in signals.categories(old, today=TODAY)[0]
    assert "started_year" not in signals.treatment_outcomes(old, TODAY)[0]
    assert signals.categories(young, today=TODAY)[0]["onset_year"] == 1931
    assert signals.treatment_outcomes(young, TODAY)[0]["started_year"] == 1990


# -- treatment.outcome ---------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [
    ("Metformin hydrochloride 500 MG Oral Tablet", "metformin"),
    ("24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet", "metformin"),
    ("metformin", "metformin"),
    ("Clonazepam [Klonopin]", "clonazepam"),
    ("Carbamazepine[Tegretol]", "carbamazepine"),
    ("Hydrochlorothiazide 6.25 MG", "hydrochlorothiazide"),
    ("NDA020503 200 ACTUAT Albuterol 0.09 MG/ACTUAT Metered Dose Inhaler", "albuterol"),
    ("120 ACTUAT Fluticasone propionate 0.044 MG/ACTUAT Metered Dose Inhaler", "fluticasone propionate"),
    ("Acetaminophen 325 MG / Oxycodone Hydrochloride 5 MG Oral Tablet", "acetaminophen and oxycodone"),
    ("Insulin Glargine 100 UNT/ML Injectable Solution", "insulin glargine"),
    ("Sodium Chloride 9 MG/ML Injectable Solution", "sodium chloride"),
    ("Lévothyroxine Sodium 50 µg", "levothyroxine"),
    ("Vitamin B12 (self-bought)", "vitamin b12"),
    ("EPINEPHrine 0.3 MG/0.3ML Auto-Injector", "epinephrine"),
])
def test_treatment_names_are_normalised(name, expected):
    assert signals.normalise_name(name, drug=True) == expected


@pytest.mark.parametrize("name", [
    "500 MG Oral Tablet",
    "[Klonopin]",
    "x",
    "药物",
    "I stopped taking it when my neighbour Mary Jones said it was poison",
    "a" * 60,
    "   ",
    None,
    42,
])
def test_odd_treatment_names_give_no_signal(name):
    assert signals.normalise_name(name, drug=True) is None
    if isinstance(name, str) and name.strip():
        assert signals.treatment_outcomes([treatment(name)], TODAY) == []


def test_treatment_outcome_bands_and_fields():
    records = [condition("E11.9"), treatment("Metformin hydrochloride 500 MG Oral Tablet", started="2019-04-02",
                                             efficacy=7, adherence=3, side_effects=["Nausea (mild)", "diarrhoea"],
                                             code=rxnorm("861007"), status="active")]
    assert signals.treatment_outcomes(records, TODAY) == [{
        "treatment": "metformin", "status": "ongoing", "category": "E11", "rxnorm": "861007",
        "efficacy": "high", "adherence": "low", "side_effects": ["diarrhoea", "nausea"], "started_year": 2019,
    }]


@pytest.mark.parametrize(("score", "band"), [(0, "low"), (3, "low"), (4, "medium"), (6, "medium"),
                                              (7, "high"), (10, "high")])
def test_scores_are_banded(score, band):
    [body] = signals.treatment_outcomes([treatment("Sertraline", efficacy=score, adherence=score)], TODAY)
    assert body["efficacy"] == body["adherence"] == band


def test_category_only_when_the_patient_has_exactly_one():
    drug = treatment("Lisinopril 10 MG Oral Tablet")
    assert "category" not in signals.treatment_outcomes([drug], TODAY)[0]
    assert signals.treatment_outcomes([drug, condition("I10")], TODAY)[0]["category"] == "I10"
    assert "category" not in signals.treatment_outcomes([drug, condition("I10"), condition("E11")], TODAY)[0]


def test_records_of_one_treatment_merge():
    records = [
        treatment("Hydrochlorothiazide 6.25 MG", started="2011-03-27", code=rxnorm("316052"), status="stopped",
                  efficacy=2, side_effects=["dizziness"]),
        treatment("Hydrochlorothiazide 25 MG", started="2012-04-01", code=rxnorm("316049"), status="active",
                  side_effects=["Dizziness", "cramps"]),
    ]
    assert signals.treatment_outcomes(records, TODAY) == [{
        "treatment": "hydrochlorothiazide", "status": "ongoing", "rxnorm": "316049", "efficacy": "low",
        "side_effects": ["cramps", "dizziness"], "started_year": 2011,
    }]


@pytest.mark.parametrize(("fields", "status"), [
    ({}, "ongoing"),
    ({"stopped": "2026-11-26", "started": "2026-01-01"}, "stopped"),
    ({"stopped": "2027-01-01", "started": "2026-01-01"}, "ongoing"),  # planned end date
    ({"status": "stopped"}, "stopped"),
    ({"status": "completed"}, "stopped"),
    ({"status": "active"}, "ongoing"),
])
def test_treatment_status(fields, status):
    assert signals.treatment_outcomes([treatment("Ibuprofen", **fields)], TODAY)[0]["status"] == status


def test_side_effects_are_normalised_and_capped():
    effects = [f"effect {chr(97 + i)}{chr(97 + i)}" for i in range(12)] + ["Kopfschmerzen (2 Tage)", "x", "12"]
    [body] = signals.treatment_outcomes([treatment("Topiramate", side_effects=effects)], TODAY)
    assert len(body["side_effects"]) == 10
    assert body["side_effects"] == sorted(body["side_effects"])
    assert all(re.fullmatch(signals.NAME, e) for e in body["side_effects"])


def test_only_rxnorm_codes_are_sent():
    records = [treatment("Paracetamol", code={"system": "http://snomed.info/sct", "code": "387517004"})]
    assert "rxnorm" not in signals.treatment_outcomes(records, TODAY)[0]


# -- symptom.trend -------------------------------------------------------------------------


@pytest.mark.parametrize(("earlier", "recent", "direction"), [
    ([6, 6], [5, 5], "improving"),      # exactly one point lower counts
    ([6, 7], [6, 6], "stable"),         # half a point does not
    ([3], [4], "worsening"),
    ([8, 8, 8], [2], "improving"),
])
def test_trend_direction(earlier, recent, direction):
    records = [journal(20 + i, fatigue=s) for i, s in enumerate(earlier)]
    records += [journal(i, fatigue=s) for i, s in enumerate(recent)]
    [body] = signals.symptom_trends(records, TODAY)
    assert body["direction"] == direction
    assert body["symptom"] == "fatigue" and body["window_weeks"] == 4


@pytest.mark.parametrize(("scores", "level"), [([3], "low"), ([3, 4], "medium"), ([6, 7], "high"),
                                              ([6], "medium"), ([10], "high")])
def test_trend_level_is_the_recent_mean(scores, level):
    records = [journal(15, pain=5)] + [journal(1, pain=s) for s in scores]
    assert signals.symptom_trends(records, TODAY)[0]["level"] == level


@pytest.mark.parametrize(("count", "band"), [(2, "1-2"), (3, "3-9"), (9, "3-9"), (10, "10+"), (25, "10+")])
def test_entries_are_banded(count, band):
    records = [journal(i, nausea=4) for i in range(count - 1)] + [journal(27, nausea=4)]
    assert signals.symptom_trends(records, TODAY)[0]["entries"] == band


def test_trend_needs_both_halves_of_the_window():
    assert signals.symptom_trends([journal(0, pain=3), journal(5, pain=4)], TODAY) == []
    # 28 days ago is outside the window; tomorrow is not a journal date yet.
    assert signals.symptom_trends([journal(28, pain=3), journal(-1, pain=4), journal(1, pain=5)], TODAY) == []
    assert signals.symptom_trends([journal(27, pain=3), journal(0, pain=4)], TODAY) != []


def test_symptom_names_are_normalised_and_merge():
    records = [journal(20, **{"Fatigue (morning)": 8}), journal(2, fatigue=4), journal(2, **{"brain fog": 5}),
               journal(16, **{"Müdigkeit (abends)": 2}), journal(3, **{"müdigkeit": 2}),
               journal(16, **{"pain since 12 March": 2}), journal(3, **{"pain since": 9})]
    assert [(b["symptom"], b["direction"]) for b in signals.symptom_trends(records, TODAY)] == [
        ("fatigue", "improving"), ("mudigkeit", "stable"), ("pain since", "worsening")]


def test_symptoms_without_a_score_or_other_records_are_ignored():
    records = [journal(20, pain=None, cough=3), journal(1, pain=6, cough=3), record("journal", {"date": "bad"}),
               treatment("Ibuprofen"), condition("R52")]
    assert [b["symptom"] for b in signals.symptom_trends(records, TODAY)] == ["cough"]


# -- demographics.band ---------------------------------------------------------------------


@pytest.mark.parametrize(("born", "band"), [
    ("2026-01-01", "0-17"), ("2009", "0-17"), ("2008-12-31", "18-29"), ("1997-06", "18-29"),
    ("1996-01-01", "30-39"), ("1946-03-03", "80-89"), ("1937-12-31", "80-89"),  # 89
    ("1936-12-31", "90+"), ("1931-01-01", "90+"), ("1900-01-01", "90+"),        # 90, 95, 126
])
def test_age_bands_from_the_birth_year_only(born, band):
    [body] = signals.demographics([profile(born)], TODAY)
    assert body["age_band"] == band


def test_sex_and_country():
    home = {"use": "home", "line": ["1 Main St"], "city": "Springfield", "state": "IL",
            "postalCode": "62701", "country": "us"}
    old = {"use": "old", "country": "FR"}
    [body] = signals.demographics([profile(address=[old, {"use": "work", "country": "DE"}, home])], TODAY)
    assert body == {"age_band": "40-49", "sex": "female", "country": "US"}
    assert signals.demographics([profile(gender="male", address=[{"country": "USA"}])], TODAY)[0]["country"] == "US"
    for address in ([], [{"country": "Deutschland"}], [{"city": "Oslo"}]):
        assert "country" not in signals.demographics([profile(address=address)], TODAY)[0]
    for gender, sex in ((None, "unknown"), ("other", "other"), ("unknown", "unknown"), ("F", "unknown")):
        assert signals.demographics([profile(gender=gender)], TODAY)[0]["sex"] == sex


def test_demographics_need_a_birth_year_and_use_the_latest_profile():
    assert signals.demographics([], TODAY) == []
    assert signals.demographics([profile(None)], TODAY) == []
    assert signals.demographics([profile("2030-01-01")], TODAY) == []
    assert signals.demographics([profile("1950-01-01"), profile("1990-01-01")], TODAY)[0]["age_band"] == "30-39"


# -- schemas -------------------------------------------------------------------------------


def test_kinds_are_registered_and_closed(plugins):
    kinds = plugins.signal_kinds()
    assert set(KINDS) <= set(kinds)
    for name in KINDS:
        for field in kinds[name].fields.values():
            assert field.type in ("choice", "code", "int")
            if field.type == "code":
                assert field.max_length <= signals.NAME_LENGTH


def test_unknown_kinds_are_not_derived_here():
    assert signals.derive("sleep.band", [profile()], TODAY) is None
    assert signals.rxfed_derive_signals(kind="sleep.band", records=[], today=TODAY, snomed_map={}) is None


def _everything() -> list[Record]:
    return [
        profile("1931-01-01", address=[{"country": "GB"}]), condition("E11.9", onset="2001-01-01"),
        condition("44054006", "snomed"),
        treatment("Metformin 500 MG Oral Tablet", efficacy=5, adherence=9, side_effects=["nausea"],
                  code=rxnorm("860975"), started="2001-02-03"),
        journal(20, pain=7, fatigue=2), journal(2, pain=3, fatigue=2),
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_every_derived_body_validates(plugins, kind):
    bodies = plugins.derive_signals(kind, _everything(), TODAY)
    assert bodies
    assert bodies == signals.derive(kind, _everything(), TODAY)


@pytest.mark.parametrize(("kind", "body"), [
    ("treatment.outcome", {"treatment": "I stopped it because Dr. Smith said so.", "status": "stopped"}),
    ("treatment.outcome", {"treatment": "metformin", "status": "stopped", "note": "felt fine"}),
    ("treatment.outcome", {"treatment": "metformin", "status": "paused"}),
    ("treatment.outcome", {"treatment": "metformin", "status": "ongoing", "side_effects": ["nausea"] * 11}),
    ("treatment.outcome", {"treatment": "metformin", "status": "ongoing", "side_effects": ["Nausea!"]}),
    ("treatment.outcome", {"treatment": "metformin", "status": "ongoing", "rxnorm": "RX861007"}),
    ("treatment.outcome", {"treatment": "metformin", "status": "ongoing", "started_year": 1850}),
    ("treatment.outcome", {"status": "ongoing"}),
    ("diagnosis.category", {"system": "icd10", "category": "E11.9", "source": "icd10"}),
    ("diagnosis.category", {"system": "icd10", "category": "Z59", "source": "icd10"}),
    ("diagnosis.category", {"system": "snomed", "category": "E11", "source": "snomed"}),
    ("diagnosis.category", {"system": "icd10", "category": "E11", "source": "icd10", "onset_year": 2101}),
    ("diagnosis.category", {"system": "icd10", "category": "E11", "source": "icd10", "onset": "2001-02-03"}),
    ("symptom.trend", {"symptom": "pain", "window_weeks": 0, "direction": "stable", "level": "low",
                       "entries": "1-2"}),
    ("symptom.trend", {"symptom": "pain", "window_weeks": 4, "direction": "better", "level": "low",
                       "entries": "1-2"}),
    ("demographics.band", {"age_band": "91", "sex": "male"}),
    ("demographics.band", {"age_band": "90+", "sex": "male", "country": "USA"}),
    ("demographics.band", {"age_band": "30-39", "sex": "male", "city": "Boston"}),
    ("demographics.band", {"age_band": "30-39", "sex": "male", "birth_year": 1990}),
])
def test_schemas_reject_free_text_and_unknown_fields(plugins, kind, body):
    with pytest.raises(SignalError):
        plugins.signal_kinds()[kind].validate(body)


def test_a_plugin_cannot_smuggle_text_through_the_built_in_kinds(plugins):
    from rxfed import hookimpl

    class Leaky:
        @hookimpl
        def rxfed_derive_signals(self, kind, records, today):
            return [{"treatment": "patient 999-61-3984", "status": "ongoing"}]

    leaky = builtin_plugins()
    leaky.register(Leaky(), "leaky")
    try:
        # The leaky plugin's body does not fit the kind, so it contributes nothing.
        assert leaky.derive_signals("treatment.outcome", [treatment("Metformin")], TODAY) == [
            {"treatment": "metformin", "status": "ongoing"}]
    finally:
        leaky.close()
    with pytest.raises(SignalError):
        plugins.signal_kinds()["treatment.outcome"].validate(Leaky().rxfed_derive_signals("", [], TODAY)[0])


# -- Safe Harbor on the real Synthea exports -----------------------------------------------


@functools.cache
def _raw(name: str) -> str:
    return (FHIR_DATA / name).read_text()


def synthea(name: str) -> dict:
    if not (FHIR_DATA / name).is_file():
        pytest.skip(f"the Synthea export {name} is not in {FHIR_DATA} (shared/ must sit beside the repo)")
    return json.loads(_raw(name))


def _identifiers(bundle: dict) -> set[str]:
    """Everything Safe Harbor calls identifying in the raw export, as strings to look for."""
    found: set[str] = set()
    for entry in bundle["entry"]:
        resource = entry["resource"]
        found |= {entry.get("fullUrl", ""), entry.get("fullUrl", "").removeprefix("urn:uuid:"), resource.get("id", "")}
        if resource["resourceType"] != "Patient":
            continue
        found.add(resource["birthDate"])
        for name in resource.get("name", []):
            found |= {name.get("family", ""), *name.get("given", []), *name.get("prefix", [])}
        found |= {ident["value"] for ident in resource.get("identifier", [])}
        found |= {t["value"] for t in resource.get("telecom", [])}
        for address in resource.get("address", []):
            found |= {*address.get("line", []), address.get("city", ""), address.get("postalCode", ""),
                      address.get("state", "")}
        for extension in resource.get("extension", []):
            found |= {extension.get("valueString", "")}
            found |= {v for v in (extension.get("valueAddress") or {}).values() if isinstance(v, str) and v != "US"}
    return {s for s in found if s}


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)


@pytest.fixture(params=sorted(SYNTHEA), ids=lambda name: name.split("_")[0])
def export(request):
    return request.param, synthea(request.param)


def _derive_all(plugins, bundle: dict) -> dict[str, list[dict]]:
    result = import_bundle(copy.deepcopy(bundle))
    records = [record(kind, data) for kind, data in result.records]
    return {kind: plugins.derive_signals(kind, records, TODAY) for kind in KINDS}


def test_synthea_signals_carry_no_identifier(plugins, export):
    name, bundle = export
    derived = _derive_all(plugins, bundle)
    text = json.dumps(derived, sort_keys=True)
    identifiers = _identifiers(bundle)
    assert len(identifiers) > 20  # names, ids, SSN, licence, passport, phone, address, birth date...
    values = {v.lower() for bodies in derived.values() for body in bodies for v in _strings(body)}
    # Long identifiers must not occur anywhere; short ones (a birthplace country code such
    # as "PA") would match inside innocent words, so they must only not be a value.
    leaked = sorted(s for s in identifiers if (s.lower() in text.lower() if len(s) >= 4 else s.lower() in values))
    assert leaked == []
    assert name.split("_")[-1].removesuffix(".json") not in text
    assert re.search(r"\d{4}-\d{2}-\d{2}", text) is None
    # No diagnosis label or drug brand travels either: codes and normalised names only.
    for label in ("Seizure", "Epilepsy", "Hypertension", "obesity", "Klonopin", "Tegretol", "MG"):
        assert label not in text
    kinds = plugins.signal_kinds()
    for kind, bodies in derived.items():
        for body in bodies:
            assert kinds[kind].validate(body) == body
            for field, value in body.items():
                for string in _strings(value):
                    assert len(string) <= kinds[kind].fields[field].max_length


def test_synthea_signals_are_not_vacuous(plugins, export):
    name, bundle = export
    derived = _derive_all(plugins, bundle)
    assert {b["category"] for b in derived["diagnosis.category"]} == SYNTHEA[name]
    assert derived["treatment.outcome"]
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    age = TODAY.year - int(patient["birthDate"][:4])
    assert 30 <= age <= 39
    assert derived["demographics.band"] == [{"age_band": "30-39", "sex": patient["gender"], "country": "US"}]


def test_synthea_treatments(plugins):
    name = "Alberto_Atencio_fc712d1f-5a2e-4407-9c55-a2a2bad623c2.json"
    derived = _derive_all(plugins, synthea(name))
    assert derived["treatment.outcome"] == [
        {"category": "G40", "treatment": "carbamazepine", "rxnorm": "308971", "started_year": 2007,
         "status": "ongoing"},
        {"category": "G40", "treatment": "clonazepam", "rxnorm": "1153378", "started_year": 2007,
         "status": "ongoing"},
    ]


# -- the curated SNOMED CT to ICD-10 table -------------------------------------------------

# Social-determinant findings Synthea (and EHRs) code as conditions; all map to Z codes.
SOCIAL_FINDINGS = {
    "160903007",  # Full-time employment
    "160904001",  # Part-time employment
    "73595000",   # Stress
    "266948004",  # Has a criminal record
    "424393004",  # Reports of violence in the environment
    "706893006",  # Victim of intimate partner abuse
    "422650009",  # Social isolation
    "423315002",  # Limited social contact
    "32911000",   # Homeless
    "105531004",  # Housing unsatisfactory
    "741062008",  # Not in labor force
    "224299000",  # Received higher education
    "473461003",  # Educated to high school level
    "314529007",  # Medication review due
}
# Synthea condition codes deliberately left out of the table, and why.
LEFT_OUT = {"703151001": "History of single seizure: a personal-history situation (Z86), not a diagnosis"}


def _table_rows() -> list[dict]:
    path = importlib.resources.files("rxfed_plugins") / "data" / "snomed_icd10.csv"
    with path.open("r", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["snomed_concept_id", "icd10_category", "label", "icd10_title", "source"]
        return list(reader)


def test_table_rows_are_well_formed():
    rows = _table_rows()
    assert 250 <= len(rows) <= 1000
    concepts = [row["snomed_concept_id"] for row in rows]
    assert len(concepts) == len(set(concepts))
    titles = {}
    for row in rows:
        concept, category = row["snomed_concept_id"], row["icd10_category"]
        assert verhoeff_valid(concept), concept
        assert concept[-3:-1] in ("00", "10"), concept
        assert normalise_code("snomed", concept) == concept
        assert re.fullmatch(r"[A-Z][0-9][0-9A-Z]", category), row
        assert normalise_code("icd10", category) == category
        for field in ("label", "icd10_title"):
            assert row[field].strip() and row[field] == row[field].strip(), row
        # Where the category comes from, in both WHO ICD-10 and ICD-10-CM (spec/signals.md).
        assert row["source"] in ("title", "inclusion", "index"), row
        # One title per category.
        assert titles.setdefault(category, row["icd10_title"]) == row["icd10_title"], row
    assert signals.load_table() == {row["snomed_concept_id"]: row["icd10_category"] for row in rows}


def _synthea_conditions() -> list[dict]:
    with open(ROOT / "tests" / "data" / "synthea_conditions.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_table_covers_every_non_z_condition_synthea_modules_generate():
    """tests/data/synthea_conditions.csv lists the condition concepts of Synthea's modules;
    each is mapped, or left out for a stated reason (spec/signals.md reports the counts)."""
    table, listed = signals.load_table(), _synthea_conditions()
    assert len(listed) >= 250 and len({c["snomed_concept_id"] for c in listed}) == len(listed)
    for concept in listed:
        code, why = concept["snomed_concept_id"], concept["left_out_because"]
        assert verhoeff_valid(code) and code[-3:-1] in ("00", "10"), code
        assert (code in table) != bool(why), concept
    mapped = [c for c in listed if not c["left_out_because"]]
    assert len(mapped) >= 190
    # The two real exports' concepts are in the list too.
    assert set(LEFT_OUT) | {"84757009", "128613002", "38341003", "444814009"} <= {c["snomed_concept_id"] for c in listed}


def test_signals_spec_reports_the_coverage():
    listed = _synthea_conditions()
    by_design = [c for c in listed if re.search(r"\(Z\d|external cause|a death", c["left_out_because"])
                 and "F17" not in c["left_out_because"]]
    mapped = [c for c in listed if not c["left_out_because"]]
    spec = (ROOT / "spec" / "signals.md").read_text()
    others = len(listed) - len(by_design)
    assert (f"{len(listed)} condition concepts" in spec and f"{len(mapped)} of the {others}" in spec
            and f"{len(by_design)} are" in spec), (len(listed), len(by_design), len(mapped), others)


def test_table_holds_no_social_finding_or_z_code():
    table = signals.load_table()
    assert not SOCIAL_FINDINGS & set(table)
    assert all(not category.startswith(("V", "W", "X", "Y", "Z")) for category in table.values())


def test_table_covers_every_synthea_condition_code():
    seen = set()
    for name in SYNTHEA:
        for entry in synthea(name)["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] == "Condition":
                seen |= {c["code"] for c in resource["code"]["coding"] if c["system"] == "http://snomed.info/sct"}
    assert seen
    assert seen - set(signals.load_table()) == set(LEFT_OUT)


def test_table_examples():
    table = signals.load_table()
    for concept, category in (("44054006", "E11"), ("46635009", "E10"), ("38341003", "I10"), ("59621000", "I10"),
                              ("195662009", "J02"), ("10509002", "J20"), ("162864005", "E66"), ("15777000", "R73"),
                              ("271737000", "D64"), ("55822004", "E78"), ("40055000", "J32"), ("444814009", "J01"),
                              ("84757009", "G40"), ("24700007", "G35"), ("254837009", "C50")):
        assert table[concept] == category


def test_signals_plugin_is_a_declared_entry_point():
    entry_points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["rxfed"]
    assert entry_points["signals"] == "rxfed_plugins.signals"
    assert "sqlite" in entry_points


def test_plugins_extend_the_snomed_table_through_the_hook():
    from rxfed import hookimpl
    from rxfed.vocabulary.codes import verhoeff_check_digit
    from rxfed.client.records import Record

    concept = "9999900" + verhoeff_check_digit("9999900")  # a concept id the shipped table lacks

    class Extra:
        @hookimpl
        def rxfed_snomed_icd10_map(self):
            return {concept: "G35"}

    plugins = builtin_plugins()
    record = Record("r1", 1, "condition", "2026-01-01T00:00:00.000000Z",
                    {"system": "snomed", "code": concept, "label": None, "onset": None, "abatement": None,
                     "status": None, "source": None})
    today = dt.date(2026, 11, 26)
    assert plugins.derive_signals("diagnosis.category", [record], today) == []
    plugins.register(Extra(), "extra")
    assert plugins.derive_signals("diagnosis.category", [record], today) == [
        {"system": "icd10", "category": "G35", "source": "snomed"}]


# -- held-out style exports: long and SNOMED CT product names, the deceased, text-only -----

EHR_DATA = ROOT / "tests" / "data" / "fhir"


@pytest.mark.parametrize(("name", "expected"), [
    # Too long joined with "and": the first word of each ingredient, in alphabetical order.
    ("Amlodipine 5 MG / Hydrochlorothiazide 12.5 MG / Olmesartan medoxomil 20 MG Oral Tablet",
     "amlodipine hydrochlorothiazide olmesartan"),
    ("amLODIPine 10 mg / olmesartan medoxomil 40 mg / hydroCHLOROthiazide 25 mg oral tablet",
     "amlodipine hydrochlorothiazide olmesartan"),
    ("Acetaminophen 21.7 MG/ML / Dextromethorphan Hydrobromide 1 MG/ML / doxylamine succinate 0.417 MG/ML "
     "Oral Solution", "acetaminophen dextromethorphan doxylamine"),
    ("Elvitegravir 150 MG / Cobicistat 150 MG / Emtricitabine 200 MG / Tenofovir alafenamide 10 MG Oral Tablet",
     "cobicistat elvitegravir emtricitabine tenofovir"),
    # Short enough: every ingredient whole, and the order they are written in does not matter.
    ("Oxycodone Hydrochloride 5 MG / Acetaminophen 325 MG Oral Tablet", "acetaminophen and oxycodone"),
    # SNOMED CT product and clinical drug names.
    ("Product containing anastrozole (medicinal product)", "anastrozole"),
    ("Product containing only anastrozole (medicinal product)", "anastrozole"),
    ("Product containing precisely anastrozole 1 milligram/1 each conventional release oral tablet (clinical drug)",
     "anastrozole"),
    ("Anastrozole-containing product", "anastrozole"),
    ("Metformin-containing product in oral dose form", "metformin"),
    ("Product containing amlodipine and olmesartan (medicinal product)", "amlodipine and olmesartan"),
    ("Product containing precisely amlodipine (as amlodipine besilate) 5 milligram and olmesartan medoxomil "
     "20 milligram/1 each conventional release oral tablet (clinical drug)", "amlodipine and olmesartan medoxomil"),
])
def test_long_and_snomed_product_drug_names_are_generalised(name, expected):
    assert signals.normalise_name(name, drug=True) == expected
    # Imported names may be longer than those a patient types (records.MAX_NAME).
    imported = record("treatment", {**rec.treatment("x"), "name": name, "source": "fhir"})
    assert [b["treatment"] for b in signals.treatment_outcomes([imported], TODAY)] == [expected]


def test_seven_ingredients_are_not_a_name():
    vitamins = " / ".join(f"Vitamin {x} 1 MG" for x in "ACDEK") + " / Folic Acid 1 MG / Biotin 1 MG Oral Tablet"
    assert signals.normalise_name(vitamins, drug=True) is None


@pytest.mark.parametrize(("patient", "band"), [
    ({"deceasedDateTime": "1989-07-14T03:20:00-05:00"}, "18-29"),   # died aged 24, not 61 today
    ({"deceasedDateTime": "1989"}, "18-29"),
    ({"deceasedBoolean": False}, "60-69"),
])
def test_the_age_band_of_a_deceased_patient_is_their_age_at_death(patient, band):
    [body] = signals.demographics([profile("1965-03-02", **patient)], TODAY)
    assert body["age_band"] == band


def test_a_deceased_patient_without_a_date_of_death_has_no_age_band_and_no_years():
    records = [profile("1930-03-02", deceasedBoolean=True), condition("I10", onset="1975-02-09")]
    assert signals.demographics(records, TODAY) == []
    assert signals.categories(records, today=TODAY) == [{"system": "icd10", "category": "I10", "source": "icd10"}]


def test_onset_years_of_a_patient_who_died_at_90_or_over_are_not_sent():
    records = [profile("1900-01-01", deceasedDateTime="1995-01-01"), condition("I10", onset="1990-01-01")]
    assert signals.demographics(records, TODAY)[0]["age_band"] == "90+"
    assert signals.categories(records, today=TODAY) == [{"system": "icd10", "category": "I10", "source": "icd10"}]
    # Born 1930, died at 50: 96 today, but the onset year says nothing of an age over 89.
    died_at_50 = [profile("1930-03-02", deceasedDateTime="1980-07-14"), condition("I10", onset="1975-02-09")]
    assert signals.categories(died_at_50, today=TODAY)[0]["onset_year"] == 1975
    assert signals.demographics(died_at_50, TODAY)[0]["age_band"] == "50-59"


def test_text_only_conditions_give_no_signal(plugins):
    result = import_bundle(json.loads((EHR_DATA / "text-only-conditions.json").read_text()))
    records = [record(kind, data) for kind, data in result.records]
    assert plugins.derive_signals("diagnosis.category", records, TODAY) == [
        {"system": "icd10", "category": "I10", "source": "snomed", "onset_year": 1987}]
    assert plugins.derive_signals("demographics.band", records, TODAY) == [
        {"age_band": "18-29", "sex": "female", "country": "US"}]


def test_ips_and_cerner_treatments_give_signals(plugins):
    for name, expected in (("ips-patient-summary.json", ["anastrozole"]),
                           ("cerner-medications-and-vitals.json", ["amlodipine", "amlodipine hydrochlorothiazide olmesartan"])):
        result = import_bundle(json.loads((EHR_DATA / name).read_text()))
        records = [record(kind, data) for kind, data in result.records]
        assert [b["treatment"] for b in plugins.derive_signals("treatment.outcome", records, TODAY)] == expected
