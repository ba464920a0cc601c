"""Built-in plugin: the built-in signal kinds and their derivation on the patient's device.

Four kinds, every field a closed vocabulary (spec/signals.md):

* ``diagnosis.category``: one per ICD-10 three-character category the patient has;
* ``treatment.outcome``: one per treatment (normalised drug name), with banded scores;
* ``symptom.trend``: one per journal symptom, comparing the two halves of a four-week window;
* ``demographics.band``: age band (90 and over grouped), sex, country.

Generalisation: dates become years (or nothing), ages bands, scores low/medium/high;
state, city, postal code and every smaller geographic unit are dropped. For a patient
aged 90 or over no year at all is sent, since an onset dating from birth would give the
age away (HIPAA Safe Harbor treats any date element indicative of such an age as
identifying).

SNOMED CT concepts become ICD-10 categories only through the curated table shipped in
``data/snomed_icd10.csv`` (plus mappings plugins add through ``rxfed_snomed_icd10_map``);
an unmapped concept gives no signal, never a guess. The table leaves out concepts whose
category is a Z code ("factors influencing health status": employment, stress, a criminal
record, violence, abuse, housing, education) or a V-Y external cause: they are social facts
rather than diagnoses, often more stigmatising than one, and no condition community forms
around them; ``diagnosis.category`` refuses those categories outright. Concepts whose
category differs between WHO ICD-10 and ICD-10-CM (stroke: I64 or I63; HIV disease: B24
or B20) are left out too, so a category means the same thing on every node.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import importlib.resources
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

from rxfed import hookimpl
from rxfed.vocabulary.codes import normalise_code
from rxfed.consent.signals import Field, SignalKind
from rxfed.errors import BadRequest
from rxfed.plugins import PluginError

#: An ICD-10 category in chapters I-XIX and XXII: diagnoses, never V-Y (external causes)
#: or Z (factors influencing health status, social circumstances among them).
CATEGORY = r"[A-U][0-9][0-9A-Z]"
#: A name with more words than this is a sentence, not a drug or a symptom.
MAX_WORDS = 6
#: A normalised treatment, side-effect or symptom name: 2 to 48 characters, one to six
#: words of lower-case ASCII letters, digits and hyphens, each word starting with a letter
#: (so no number, date, phone number or record number can travel as a word of its own).
NAME = rf"(?=[a-z0-9 -]{{2,}})[a-z][a-z0-9-]*(?: [a-z][a-z0-9-]*){{0,{MAX_WORDS - 1}}}"
NAME_LENGTH = 48
LEVELS = ("low", "medium", "high")
AGE_BANDS = ("0-17", "18-29", "30-39", "40-49", "50-59", "60-69", "70-79", "80-89", "90+")
ENTRY_BANDS = ("1-2", "3-9", "10+")
SEXES = ("female", "male", "other", "unknown")
WINDOW_WEEKS = 4
#: Smallest difference of mean scores (0-10) between the halves of the window that counts.
TREND_STEP = 1
FIRST_YEAR, LAST_YEAR = 1900, 2100

DIAGNOSIS = SignalKind("diagnosis.category", {
    "system": Field("choice", choices=("icd10",), description="the code system the category belongs to"),
    "category": Field("code", pattern=CATEGORY, max_length=3, description="ICD-10 three-character category"),
    "source": Field("choice", choices=("icd10", "snomed"), description="what the patient's record was coded in"),
    "onset_year": Field("int", lo=FIRST_YEAR, hi=LAST_YEAR, required=False, description="earliest onset, year only"),
}, description="an ICD-10 category the patient has (active, or without a status)")

TREATMENT = SignalKind("treatment.outcome", {
    "category": Field("code", pattern=CATEGORY, max_length=3, required=False,
                      description="the patient's category, only when they have exactly one"),
    "treatment": Field("code", pattern=NAME, max_length=NAME_LENGTH, description="normalised drug name"),
    "rxnorm": Field("code", pattern=r"[0-9]{1,10}", max_length=10, required=False, description="RxNorm code"),
    "efficacy": Field("choice", choices=LEVELS, required=False, description="0-3 low, 4-6 medium, 7-10 high"),
    "side_effects": Field("code", pattern=NAME, max_length=NAME_LENGTH, many=True, max_items=10, required=False,
                          description="normalised side-effect names"),
    "adherence": Field("choice", choices=LEVELS, required=False, description="0-3 low, 4-6 medium, 7-10 high"),
    "started_year": Field("int", lo=FIRST_YEAR, hi=LAST_YEAR, required=False, description="year first started"),
    "status": Field("choice", choices=("ongoing", "stopped")),
}, description="how a treatment went, as the patient reported it")

SYMPTOM = SignalKind("symptom.trend", {
    "symptom": Field("code", pattern=NAME, max_length=NAME_LENGTH, description="normalised symptom name"),
    "window_weeks": Field("int", lo=1, hi=52, description="the window the trend covers, ending today"),
    "direction": Field("choice", choices=("improving", "stable", "worsening")),
    "level": Field("choice", choices=LEVELS, description="mean score of the recent half of the window"),
    "entries": Field("choice", choices=ENTRY_BANDS, description="journal entries in the window"),
}, description="a journal symptom's trend over the last weeks")

DEMOGRAPHICS = SignalKind("demographics.band", {
    "age_band": Field("choice", choices=AGE_BANDS, description="from the birth year only; 90 and over grouped"),
    "sex": Field("choice", choices=SEXES),
    "country": Field("code", pattern=r"[A-Z]{2}", max_length=2, required=False,
                     description="ISO 3166 alpha-2; nothing smaller than a country"),
}, description="the patient's age band, sex and country")

KINDS = (DIAGNOSIS, TREATMENT, SYMPTOM, DEMOGRAPHICS)

# Conditions with these clinical statuses are over; "remission" is not (relapsing-remitting
# MS in remission is still MS).
_ENDED = ("inactive", "resolved")
# Treatment statuses (MedicationStatement, MedicationRequest) that mean not being taken.
_NOT_TAKEN = ("stopped", "completed", "cancelled", "not-taken", "on-hold", "entered-in-error")
_COUNTRY_ALIASES = {"UK": "GB", "USA": "US", "UNITED STATES": "US", "UNITED STATES OF AMERICA": "US",
                    "UNITED KINGDOM": "GB"}

# -- names ---------------------------------------------------------------------------------

_BRACKETED = re.compile(r"\[[^\]]*\]|\([^)]*\)|\{[^}]*\}")
_TOKEN = re.compile(r"[a-z0-9][a-z0-9./%-]*")
_UNITS = frozenset("""
    mg mcg ug g kg ml l dl unt unit units iu meq mmol actuat actuation hr hrs h day days week weeks
    milligram milligrams microgram micrograms gram grams milliliter millilitre milliliters millilitres
""".split())
_FORMS = frozenset("""
    oral tablet tablets tab tabs capsule capsules cap caps solution suspension injection injectable
    syrup elixir cream ointment gel lotion patch patches transdermal inhaler inhalation spray nasal
    drops ophthalmic otic topical extended delayed release chewable disintegrating sublingual buccal
    rectal vaginal suppository powder prefilled syringe pen auto-injector cartridge metered dose
    film coated kit vial ampule intravenous subcutaneous intramuscular
""".split())
# Salts and esters dropped from the end of a drug name, so "Metformin hydrochloride 500 MG"
# and a patient's "metformin" are one treatment. Never the first word ("sodium chloride").
_SALTS = frozenset("""
    hydrochloride hcl dihydrochloride hydrobromide sodium potassium calcium magnesium sulfate
    sulphate maleate besylate besilate mesylate succinate tartrate bitartrate citrate acetate
    fumarate phosphate bromide monohydrate dihydrate trihydrate hyclate
""".split())


def _ascii_lower(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower().replace("'", "")


def _is_unit(token: str) -> bool:
    return token in _UNITS or all(part in _UNITS for part in token.split("/") if part)


def _words(segment: str, drug: bool) -> list[str]:
    tokens = [t.rstrip("./-") for t in _TOKEN.findall(segment)]
    tokens = [t for t in tokens if t]
    if drug:
        # RxNorm names may start with a pack quantity or an application number:
        # "24 HR Metformin ...", "NDA020503 200 ACTUAT Albuterol ...".
        while tokens and (any(c.isdigit() for c in tokens[0]) or _is_unit(tokens[0])):
            tokens.pop(0)
    words: list[str] = []
    for token in tokens:
        if token[0].isdigit() or (drug and (_is_unit(token) or token in _FORMS)):
            break
        words.append(token)
    if drug:
        while len(words) > 1 and words[-1] in _SALTS:
            words.pop()
    return words


# SNOMED CT names medicinal products "Product containing (only|precisely) X and Y ..." and
# "X-containing product ...".
_PRODUCT = re.compile(r"\s*(?:medicinal\s+)?product\s+containing\s+(?:(?:only|precisely)\s+)*(?P<rest>.*)", re.S)
_CONTAINING = re.compile(r"\s*(?P<rest>.*?)-containing\s+product\b.*", re.S)


def _ingredients(cleaned: str) -> list[str]:
    product = _PRODUCT.fullmatch(cleaned) or _CONTAINING.fullmatch(cleaned)
    if product is not None:
        return re.split(r"\s(?:and|/)\s", product["rest"])
    return re.split(r"\s/\s", cleaned)  # RxNorm: "A 5 MG / B 10 MG Oral Tablet"


def _fits(name: str) -> bool:
    return len(name) <= NAME_LENGTH and re.fullmatch(NAME, name) is not None


def normalise_name(text: Any, *, drug: bool = False) -> str | None:
    """A treatment, side-effect or symptom name as it may leave the device, else None.

    ASCII lower case; anything in brackets dropped (brand names, notes); each part cut at
    the first word starting with a digit (a strength, a date). Drug names (``drug=True``)
    also lose leading pack quantities, units, dose forms and trailing salts, and SNOMED CT's
    "Product containing ..." wording; the ingredients of a combination (RxNorm's " / ",
    SNOMED CT's " and ") are sorted and joined with "and", or, when that is longer than a
    name may be, named by the first word of each, space-separated:
    ``"Metformin hydrochloride 500 MG Oral Tablet"`` -> ``"metformin"``,
    ``"Clonazepam [Klonopin]"`` -> ``"clonazepam"``, ``"Product containing anastrozole
    (medicinal product)"`` -> ``"anastrozole"``, ``"Amlodipine 5 MG / Hydrochlorothiazide
    12.5 MG / Olmesartan medoxomil 20 MG Oral Tablet"`` -> ``"amlodipine hydrochlorothiazide
    olmesartan"``. None unless what remains fits :data:`NAME` (at most six words, 48
    characters): a sentence is not a name.
    """
    if not isinstance(text, str):
        return None
    cleaned = _BRACKETED.sub(" ", _ascii_lower(text))
    names = sorted({name for name in (" ".join(_words(part, drug))
                                      for part in (_ingredients(cleaned) if drug else [cleaned])) if name})
    if not names:
        return None
    whole = " and ".join(names)
    if _fits(whole) or len(names) == 1:
        return whole if _fits(whole) else None
    short = " ".join(name.split()[0] for name in names)
    return short if _fits(short) else None


# -- the SNOMED CT to ICD-10 table ---------------------------------------------------------


def _is_concept(value: Any) -> bool:
    try:
        return isinstance(value, str) and normalise_code("snomed", value) == value
    except BadRequest:
        return False


def _check_mapping(concept: Any, category: Any) -> None:
    if not _is_concept(concept):
        raise ValueError(f"{concept!r} is not a SNOMED CT concept id")
    if not isinstance(category, str) or re.fullmatch(CATEGORY, category) is None:
        raise ValueError(f"SNOMED CT {concept} maps to {category!r}, not an ICD-10 category A00-U99")


@functools.cache
def _shipped() -> tuple[tuple[str, str], ...]:
    path = importlib.resources.files("rxfed_plugins") / "data" / "snomed_icd10.csv"
    with path.open("r", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    seen: set[str] = set()
    for row in rows:
        concept, category = row["snomed_concept_id"], row["icd10_category"]
        _check_mapping(concept, category)
        if concept in seen:
            raise ValueError(f"SNOMED CT {concept} is in the shipped table twice")
        seen.add(concept)
    return tuple((row["snomed_concept_id"], row["icd10_category"]) for row in rows)


def load_table() -> dict[str, str]:
    """The shipped curated table: SNOMED CT concept id -> ICD-10 three-character category."""
    return dict(_shipped())


def snomed_map(extra_map: Mapping[str, str] | None = None) -> dict[str, str]:
    """The shipped table with ``extra_map`` (e.g. ``RxfedPlugins.snomed_icd10_map()``)
    merged over it; an extra entry that contradicts the table is a PluginError."""
    merged = load_table()
    for concept, category in (extra_map or {}).items():
        try:
            _check_mapping(concept, category)
        except ValueError as exc:
            raise PluginError(str(exc)) from None
        if merged.get(concept, category) != category:
            raise PluginError(f"SNOMED CT {concept} maps to {merged[concept]} in the shipped table, "
                              f"not {category}")
        merged[concept] = category
    return merged


# -- helpers -------------------------------------------------------------------------------


def _of_kind(records: Iterable[Any], kind: str) -> list[Any]:
    found = [r for r in records if getattr(r, "kind", None) == kind and isinstance(getattr(r, "data", None), dict)]
    return sorted(found, key=lambda r: str(getattr(r, "created", "")))


def _date(value: Any) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _year(value: Any, today: dt.date) -> int | None:
    day = _date(value)
    return day.year if day is not None and FIRST_YEAR <= day.year <= min(today.year, LAST_YEAR) else None


def _level(score: Fraction | int) -> str:
    rounded = int(Fraction(score) + Fraction(1, 2))  # half up: a mean of 3.5 is medium
    return LEVELS[0] if rounded <= 3 else LEVELS[1] if rounded <= 6 else LEVELS[2]


def _score(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 10 else None


def _day(today: dt.date) -> dt.date:
    return today.date() if isinstance(today, dt.datetime) else today


def _patient(records: Iterable[Any]) -> dict:
    profiles = _of_kind(records, "profile")
    patient = profiles[-1].data.get("fhir_patient") if profiles else None
    return patient if isinstance(patient, dict) else {}


def _year_of(value: Any) -> int | None:
    match = re.match(r"([0-9]{4})", value) if isinstance(value, str) else None
    return int(match.group(1)) if match else None


def _age(records: Iterable[Any], today: dt.date) -> int | None:
    """Years from the birth year to this year, or to the year of death: a patient who died
    is as old as they were then. None without a birth year, or for a patient known to have
    died on an unknown date (their age is unknown)."""
    patient = _patient(records)
    born = _year_of(patient.get("birthDate"))
    if patient.get("deceasedBoolean") is True:
        return None
    died = _year_of(patient.get("deceasedDateTime"))
    until = min(died, today.year) if died is not None else today.year
    return until - born if born is not None and born <= until else None


def _years_allowed(records: Iterable[Any], today: dt.date) -> bool:
    age = _age(records, today)
    if age is None:
        # Without a birth year a year says nothing of an age; with one but an unknown date
        # of death, the patient may have been 90 or over.
        return _year_of(_patient(records).get("birthDate")) is None
    return age < 90


# -- derivations ---------------------------------------------------------------------------


def _category(data: dict, table: Mapping[str, str]) -> str | None:
    try:
        code = normalise_code(data.get("system"), data.get("code"))
    except BadRequest:
        return None
    category = code[:3] if data.get("system") == "icd10" else table.get(code)
    return category if category is not None and re.fullmatch(CATEGORY, category) else None


def categories(records: Iterable[Any], extra_map: Mapping[str, str] | None = None, *,
               today: dt.date | None = None) -> list[dict]:
    """``diagnosis.category`` bodies, one per distinct category, sorted by category.

    A condition counts unless it has an abatement date or its clinical status is inactive or
    resolved. ICD-10 codes give their category; SNOMED CT concepts go through the shipped
    table merged with ``extra_map``, and unmapped ones give nothing. ``source`` is "icd10"
    when any of the category's records was ICD-10 coded; ``onset_year`` is the earliest.
    """
    records = list(records)
    today = _day(today or dt.date.today())
    table = snomed_map(extra_map)
    found: dict[str, dict] = {}
    for record in _of_kind(records, "condition"):
        data = record.data
        if data.get("abatement") or data.get("status") in _ENDED:
            continue
        category = _category(data, table)
        if category is None:
            continue
        body = found.setdefault(category, {"system": "icd10", "category": category, "source": "snomed"})
        if data.get("system") == "icd10":
            body["source"] = "icd10"
        onset = _year(data.get("onset"), today)
        if onset is not None and onset < body.get("onset_year", LAST_YEAR + 1):
            body["onset_year"] = onset
    if not _years_allowed(records, today):
        for body in found.values():
            body.pop("onset_year", None)
    return [found[c] for c in sorted(found)]


def _rxnorm(data: dict) -> str | None:
    code = data.get("code")
    if isinstance(code, dict) and code.get("system") == "rxnorm" and isinstance(code.get("code"), str):
        return code["code"] if re.fullmatch(r"[0-9]{1,10}", code["code"]) else None
    return None


def _last(values: Iterable[Any]) -> Any:
    """The last value that is not None (of values sorted oldest first)."""
    return next((value for value in reversed(list(values)) if value is not None), None)


def _ongoing(data: dict, today: dt.date) -> bool:
    stopped = _date(data.get("stopped"))
    return (stopped is None or stopped > today) and data.get("status") not in _NOT_TAKEN


def treatment_outcomes(records: Iterable[Any], today: dt.date,
                       extra_map: Mapping[str, str] | None = None) -> list[dict]:
    """``treatment.outcome`` bodies, one per normalised treatment name, sorted by name.

    Records naming the same treatment merge: ongoing when any of them is, the earliest
    start year, and the latest record's (by start date) RxNorm code, efficacy and adherence;
    side effects are pooled (at most ten, sorted). ``category`` is set only when the patient
    has exactly one diagnosis category, so an outcome is never tied to a guess among several.
    """
    records = list(records)
    today = _day(today)
    found = {body["category"] for body in categories(records, extra_map, today=today)}
    category = next(iter(found)) if len(found) == 1 else None
    years = _years_allowed(records, today)
    by_name: dict[str, list[dict]] = defaultdict(list)
    for record in _of_kind(records, "treatment"):
        name = normalise_name(record.data.get("name"), drug=True)
        if name is not None:
            by_name[name].append(record.data)
    bodies = []
    for name in sorted(by_name):
        group = sorted(by_name[name], key=lambda d: d.get("started") or "")
        body: dict[str, Any] = {"treatment": name,
                                "status": "ongoing" if any(_ongoing(d, today) for d in group) else "stopped"}
        if category is not None:
            body["category"] = category
        rxnorm = _last(map(_rxnorm, group))
        if rxnorm is not None:
            body["rxnorm"] = rxnorm
        for field in ("efficacy", "adherence"):
            score = _last(_score(d.get(field)) for d in group)
            if score is not None:
                body[field] = _level(score)
        effects = sorted({n for d in group for n in map(normalise_name, d.get("side_effects") or []) if n})
        if effects:
            body["side_effects"] = effects[:10]
        started = [y for y in (_year(d.get("started"), today) for d in group) if y is not None]
        if started and years:
            body["started_year"] = min(started)
        bodies.append(body)
    return bodies


def _entries_band(count: int) -> str:
    return ENTRY_BANDS[0] if count <= 2 else ENTRY_BANDS[1] if count <= 9 else ENTRY_BANDS[2]


def symptom_trends(records: Iterable[Any], today: dt.date) -> list[dict]:
    """``symptom.trend`` bodies over the last :data:`WINDOW_WEEKS` weeks (today included),
    one per normalised symptom name with journal scores in both halves of the window.

    The mean score of the recent half minus that of the earlier half: at most -1 is
    improving (lower scores are milder), at least +1 worsening, else stable. ``level``
    bands the recent mean (rounded half up) as 0-3 low, 4-6 medium, 7-10 high.
    """
    today = _day(today)
    half = WINDOW_WEEKS * 7 // 2
    scores: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for record in _of_kind(records, "journal"):
        day = _date(record.data.get("date"))
        ago = (today - day).days if day is not None else -1
        if not 0 <= ago < 2 * half:
            continue
        for raw, value in (record.data.get("symptoms") or {}).items():
            name, score = normalise_name(raw), _score(value)
            if name is not None and score is not None:
                scores[name][0 if ago < half else 1].append(score)
    bodies = []
    for name in sorted(scores):
        recent, earlier = scores[name]
        if not recent or not earlier:
            continue
        now, before = Fraction(sum(recent), len(recent)), Fraction(sum(earlier), len(earlier))
        direction = ("improving" if now - before <= -TREND_STEP else
                     "worsening" if now - before >= TREND_STEP else "stable")
        bodies.append({"symptom": name, "window_weeks": WINDOW_WEEKS, "direction": direction,
                       "level": _level(now), "entries": _entries_band(len(recent) + len(earlier))})
    return bodies


def _age_band(age: int) -> str:
    if age < 18:
        return AGE_BANDS[0]
    if age < 30:
        return AGE_BANDS[1]
    return AGE_BANDS[min(age // 10 - 1, len(AGE_BANDS) - 1)]


def _country(patient: dict) -> str | None:
    addresses = [a for a in patient.get("address") or [] if isinstance(a, dict) and a.get("use") != "old"]
    addresses.sort(key=lambda a: a.get("use") != "home")
    for address in addresses:
        country = address.get("country")
        if isinstance(country, str):
            code = " ".join(country.upper().split())
            code = _COUNTRY_ALIASES.get(code, code)
            if re.fullmatch(r"[A-Z]{2}", code):
                return code
    return None


def demographics(records: Iterable[Any], today: dt.date) -> list[dict]:
    """A ``demographics.band`` body from the latest profile record, or none without a birth year.

    The age is today's year (or the year of death) minus the birth year (the full dates are
    never read), so it may be one more than the true age and "90+" errs towards grouping; a
    patient who died on an unknown date gives none. Only the country of the home (else
    first current) address is kept.
    """
    records = list(records)
    today = _day(today)
    age = _age(records, today)
    if age is None:
        return []
    patient = _patient(records)
    gender = patient.get("gender")
    body = {"age_band": _age_band(age), "sex": gender if gender in SEXES else "unknown"}
    country = _country(patient)
    if country is not None:
        body["country"] = country
    return [body]


def derive(kind: str, records: Iterable[Any], today: dt.date,
           extra_map: Mapping[str, str] | None = None) -> list[dict] | None:
    """Bodies of a built-in ``kind`` derived from ``records``; None for any other kind."""
    records = list(records)
    if kind == DIAGNOSIS.name:
        return categories(records, extra_map, today=today)
    if kind == TREATMENT.name:
        return treatment_outcomes(records, today, extra_map)
    if kind == SYMPTOM.name:
        return symptom_trends(records, today)
    if kind == DEMOGRAPHICS.name:
        return demographics(records, today)
    return None


# -- hooks ---------------------------------------------------------------------------------


@hookimpl
def rxfed_signal_kinds():
    return list(KINDS)


@hookimpl
def rxfed_derive_signals(kind, records, today, snomed_map):
    # snomed_map: the mappings other plugins add (rxfed_snomed_icd10_map), merged here over
    # the shipped table.
    return derive(kind, records, today, snomed_map)
