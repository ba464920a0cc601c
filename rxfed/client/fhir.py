"""FHIR R4 import and export on the patient's device: Bundles to plaintext records and back.

A record here is ``(kind, data)``: the plaintext dict the client encrypts (see
:mod:`rxfed.client.records` for the kinds). Import takes what hospitals really export
(Synthea, Epic and Cerner "download my record" buttons, HL7 International Patient
Summaries): SNOMED CT as well as ICD-10 under any of their registered system URIs (OIDs
included), MedicationRequest as well as MedicationStatement, PHQ-9 and GAD-7
QuestionnaireResponses. Everything is validated with the R4B models of ``fhir.resources``
first, so a malformed file is refused as a whole with a readable
:class:`~rxfed.errors.BadRequest` and never half-imported; so is a Bundle about more than
one person (:class:`~rxfed.errors.Conflict`). What does not become a record is counted with
the reason why; IPS "absent or unknown" entries are not records; a condition a hospital
wrote as text only is kept by its label, without a code.

Every imported record keeps a stable key of the resource it came from
(``data["import_key"]``), so importing the same file twice adds nothing
(:meth:`rxfed.client.PatientClient.import_records`). Export writes each record's key
as an identifier and everything rxfed holds in FHIR's own terms or, where FHIR has none
(journal scores, what the patient reported about a treatment), in rxfed's: importing an
export gives back the same records (their ``source`` aside).

Identifying details (names, identifiers, addresses, phone numbers) stay in the ``profile``
record. No free text is copied from the Patient into other records, and any of those
details that a hospital wrote into a label or a dosage text are redacted from them,
because other records feed signals that leave the device.
"""

from __future__ import annotations

import copy
import datetime as dt
import decimal
import json
import re
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import attrs
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from rxfed.client import records as rec
from rxfed.vocabulary.codes import SYSTEM_URIS, normalise_code, system_from_uri
from rxfed.client.questionnaires import INSTRUMENTS, Instrument, Score, score
from rxfed.client.records import derive_key, is_record_key, record_key
from rxfed.errors import BadRequest, Conflict

BUNDLE_TYPES = ("transaction", "collection", "batch", "searchset", "document")
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
MOTHERS_MAIDEN_NAME = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"

_CLINICAL_STATUSES = ("active", "recurrence", "relapse", "inactive", "remission", "resolved")
# Records that say "this never happened" or "this was a mistake" must not become facts.
_VOID_STATUSES = ("entered-in-error", "refuted")
# LOINC answer codes of the PHQ/GAD frequency scale, for responses coded rather than scored.
_LOINC_ANSWERS = {"LA6568-5": 0, "LA6569-3": 1, "LA6570-1": 2, "LA6571-9": 3}
# A treatment record's status is a MedicationStatement status (or None); a MedicationRequest's
# is read as the nearest one, so the record exports and comes back as it is.
_REQUEST_STATUS = {"active": "active", "on-hold": "on-hold", "cancelled": "not-taken", "completed": "completed",
                   "stopped": "stopped", "draft": "intended", "unknown": "unknown"}
# HL7 IPS codes (and data-absent-reason) for "no information" and "nothing known": they say
# what a section of the summary lacks, never what the patient has or takes.
IPS_ABSENT_UNKNOWN = "http://hl7.org/fhir/uv/ips/CodeSystem/absent-unknown-uv-ips"
DATA_ABSENT_REASON_CODES = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
DATA_ABSENT_REASON = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
ABSENT_SYSTEMS = (IPS_ABSENT_UNKNOWN, DATA_ABSENT_REASON_CODES)
# SNOMED CT situations that record that there is nothing to record (earlier IPS versions).
_NOTHING_TO_RECORD = frozenset({"160245001"})  # No current problems or disability
#: rxfed's own vocabulary, for what FHIR has no code for: journal scores the patient gave,
#: and what they reported about a treatment.
JOURNAL = "https://rxfed.org/fhir/CodeSystem/journal"
REPORTED = "https://rxfed.org/fhir/StructureDefinition/patient-reported-"
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# Export ids are uuid5 under this namespace, so exporting the same records twice gives the
# same Bundle and a receiving system can recognise resources it already has.
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:rxfed:fhir-export")
REDACTED = "[redacted]"


@attrs.frozen
class Tally:
    """How many resources of one type one thing happened to, and why."""

    resource_type: str
    reason: str
    count: int

    def to_json(self) -> dict:
        return {"type": self.resource_type, "reason": self.reason, "count": self.count}


@attrs.frozen
class ImportResult:
    #: ``(kind, data)`` records, each with its ``data["import_key"]``.
    records: tuple[tuple[str, dict], ...]
    #: Resource type -> how many resources of that type did not become a record.
    skipped: dict[str, int]
    #: Why they did not, one entry per resource type and reason, in the order first met.
    skipped_why: tuple[Tally, ...] = ()
    #: Records kept with a caveat (a condition with a label but no code), and the caveat.
    notes: tuple[Tally, ...] = ()


class _Skipped(Exception):
    """A resource that does not become a record, and why (words for the patient)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _bad(message: str) -> BadRequest:
    return BadRequest(message, code="invalid_fhir")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- import: validation --------------------------------------------------------------------


def _describe(exc: Exception) -> str:
    if not isinstance(exc, ValidationError):
        # The models fail this way on a nested resource whose resourceType they cannot look up.
        return "a nested or contained resource has a missing or unknown resourceType"
    errors = exc.errors(include_url=False, include_input=False)
    # Locations and messages only: the offending values may be someone's health data.
    parts = [f"{'.'.join(str(p) for p in e['loc'] if p != 'root') or 'Bundle'}: {' '.join(e['msg'].split())}"
             for e in errors[:3]]
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


def _is_resource_type(name: str) -> bool:
    try:
        return get_fhir_model_class(name).has_resource_base()
    except ValueError:
        return False


def _validated(doc: Any) -> Bundle:
    if not isinstance(doc, dict):
        raise _bad("a FHIR import must be a JSON object: a Bundle")
    if doc.get("resourceType") != "Bundle":
        raise _bad(f"expected a FHIR Bundle, got resourceType {_shown(doc.get('resourceType'))}; "
                   "export the whole record as a Bundle")
    if doc.get("type") not in BUNDLE_TYPES:
        raise _bad(f"Bundle type {_shown(doc.get('type'))} is not importable: use one of {', '.join(BUNDLE_TYPES)}")
    entries = doc.get("entry", [])
    if not isinstance(entries, list):
        raise _bad("Bundle.entry must be a list")
    # The models take a resource without resourceType for an abstract Resource, and fail
    # with a bare KeyError or TypeError on an unknown one; say which entry is wrong instead.
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict):
            kind = resource.get("resourceType")
            if not isinstance(kind, str):
                raise _bad(f"entry {index}: the resource has no resourceType")
            if not _is_resource_type(kind):
                raise _bad(f"entry {index}: {_shown(kind)} is not a FHIR R4 resource type")
    try:
        return Bundle.model_validate(doc)
    except (ValueError, KeyError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        raise _bad(f"not a valid FHIR R4 Bundle: {_describe(exc)}") from None


# -- import: whose record is this ----------------------------------------------------------

_RELATIVE = re.compile(r"(?:(https?://\S+)/)?([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})")


def _server_base(full_url: str | None) -> str | None:
    """``https://x/fhir`` of an entry's RESTful ``https://x/fhir/Condition/1``, else None."""
    match = _RELATIVE.fullmatch(full_url.split("/_history/")[0]) if isinstance(full_url, str) else None
    return match.group(1) if match else None


def _target(reference: Any, base: str | None) -> tuple[str | None, str] | None:
    """``(resource type or None when unknown, canonical target)`` of a Reference, resolved
    against the referring entry's server base; None when it names nothing comparable (a
    display only, or a contained resource)."""
    if not isinstance(reference, dict):
        return None
    ref = reference.get("reference")
    if isinstance(ref, str) and ref.strip() and not ref.startswith("#"):
        ref = ref.strip().split("/_history/")[0]
        if ref.startswith("Patient?"):  # a conditional reference in a transaction
            identifier = urllib.parse.parse_qs(ref[len("Patient?"):]).get("identifier")
            return "Patient", f"identifier:{identifier[0]}" if identifier else ref
        if ref.lower().startswith(("urn:uuid:", "urn:oid:")):
            return None, ref.lower()
        match = _RELATIVE.fullmatch(ref)
        if match is None:
            return None, ref
        root, kind, rid = match.groups()
        root = root or base
        return kind, f"{root}/{kind}/{rid}" if root else f"{kind}/{rid}"
    identifier = reference.get("identifier")
    if isinstance(identifier, dict) and identifier.get("value"):
        kind = reference.get("type")
        return (kind if isinstance(kind, str) else None), f"identifier:{identifier.get('system') or ''}|{identifier['value']}"
    return None


def _urn_folded(url: str) -> str:
    return url.lower() if url[:4].lower() == "urn:" else url


def _check_one_patient(entries: list[_Entry]) -> None:
    """Refuse a Bundle whose Patients, or whose resources' subject and patient references,
    are more than one person: importing it would file someone else's record as the patient's."""
    names: dict[str, int] = {}  # every way the Bundle may name one of its Patients -> which one
    types: dict[str, str] = {}  # fullUrl -> resource type
    for entry in entries:
        kind = entry.raw["resourceType"]
        if entry.full_url:
            types[_urn_folded(entry.full_url)] = kind
        if kind != "Patient":
            continue
        aliases = {entry.full_url} if entry.full_url else set()
        if isinstance(entry.raw.get("id"), str):
            base = _server_base(entry.full_url)
            aliases |= {f"Patient/{entry.raw['id']}"} | ({f"{base}/Patient/{entry.raw['id']}"} if base else set())
        for identifier in entry.raw.get("identifier") or []:
            if isinstance(identifier, dict) and identifier.get("value"):
                aliases.add(f"identifier:{identifier.get('system') or ''}|{identifier['value']}")
        names.update(dict.fromkeys(map(_urn_folded, aliases), entry.index))
    people: set[Any] = {entry.index for entry in entries if entry.raw["resourceType"] == "Patient"}
    for entry in entries:
        base = _server_base(entry.full_url)
        for field in ("subject", "patient", "beneficiary"):
            found = _target(entry.raw.get(field), base)
            if found is not None:
                people.add(_person(*found, names, types))
    people.discard(None)
    if len(people) > 1:
        # Only the number: the references themselves may be record numbers.
        raise Conflict(f"the Bundle is about {len(people)} different patients (its Patients and the subjects "
                       "of its resources are not one person); export and import one person's record at a "
                       "time. Nothing was imported.", code="several_patients")


def _person(kind: str | None, target: str, names: dict[str, int], types: dict[str, str]) -> Any:
    """Which person a reference target is: a Patient of the Bundle (its index), another one
    (the target), or None for a subject that is no person (a Group, a Device)."""
    if target in names:
        return names[target]
    kind = kind or types.get(target)
    if kind not in (None, "Patient"):
        return None
    if target.startswith("identifier:"):
        return target
    # "Patient/1" names the Bundle's Patient 1 whichever server base it was resolved against.
    tail = "/".join(target.split("/")[-2:])
    return names.get(tail, target) if kind == "Patient" else target


# -- import: keys --------------------------------------------------------------------------

#: The identifier rxfed exports a record's key under, so it is recognised when it comes back.
RECORD_KEY_SYSTEM = "https://rxfed.org/fhir/NamingSystem/record"


def _exported_key(raw: dict) -> str | None:
    identifiers = raw.get("identifier")
    identifiers = [identifiers] if isinstance(identifiers, dict) else identifiers or []
    for identifier in identifiers:
        if (isinstance(identifier, dict) and identifier.get("system") == RECORD_KEY_SYSTEM
                and is_record_key(identifier.get("value"))):
            return identifier["value"]
    return None


def _import_key(full_url: str | None, raw: dict) -> str:
    """The stable key of a source resource: the rxfed key it was exported under, else one
    derived from its absolute fullUrl (what a server or a document names it by, the same in
    every export of it), else from its content (the same file gives the same key)."""
    exported = _exported_key(raw)
    if exported is not None:
        return exported
    if isinstance(full_url, str) and re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", full_url):
        basis = ["url", raw["resourceType"], full_url.split("/_history/")[0]]
    else:
        basis = ["content", json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)]
    return derive_key(*basis)


# -- import: converters --------------------------------------------------------------------


@attrs.frozen
class _Entry:
    index: int
    full_url: str | None
    resource: Any = attrs.field(repr=False)
    raw: dict = attrs.field(repr=False)
    key: str


@attrs.define
class _Context:
    """What converters need from the rest of the Bundle, and the notes they leave."""

    #: MedicationRequests may name their drug by reference, by fullUrl or by type and id.
    medications: dict[str, Any]
    #: Every way the Bundle names a QuestionnaireResponse that becomes a journal entry.
    responses: set[str]
    notes: Counter = attrs.field(factory=Counter)


def _day(value: Any) -> str | None:
    if isinstance(value, dt.datetime):
        # The date as written, in the record's own offset: converting to UTC could move
        # an evening appointment to the next day.
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    # Partial dates ("2012", "2012-03") are dropped rather than padded: padding would
    # invent a precision that onset-based signals would then trust.
    return None


def _number(value: Any) -> int | float:
    if isinstance(value, decimal.Decimal):
        return int(value) if value.as_tuple().exponent >= 0 else float(value)
    return value


def _code_of(concept: Any) -> str | None:
    """The code of a CodeableConcept's first coding (statuses, categories)."""
    for coding in getattr(concept, "coding", None) or []:
        if coding.code:
            return coding.code
    return None


def _coded(concept: Any) -> dict | None:
    """``{"system", "code", "display"}`` from a CodeableConcept, preferring LOINC."""
    codings = [c for c in (concept.coding or []) if c.code] if concept is not None else []
    if not codings:
        return None
    coding = next((c for c in codings if c.system == LOINC), codings[0])
    return {"system": coding.system, "code": coding.code, "display": coding.display or concept.text}


def _concept_text(concept: Any) -> str | None:
    if concept is None:
        return None
    return concept.text or next((c.display or c.code for c in concept.coding or [] if c.display or c.code), None)


def _absence(concept: Any) -> str | None:
    """The codes of a concept that says only "absent or unknown" (HL7 IPS's
    absent-unknown-uv-ips, data-absent-reason, SNOMED CT's "no current problems"), else None."""
    if concept is None:
        return None
    codings = [c for c in concept.coding or [] if c.code]
    if codings and all(c.system in ABSENT_SYSTEMS or (system_from_uri(c.system) == "snomed"
                                                      and c.code in _NOTHING_TO_RECORD) for c in codings):
        return ", ".join(c.code for c in codings)
    if not codings and any(e.url == DATA_ABSENT_REASON for e in concept.extension or []):
        return "data-absent-reason"
    return None


def _not_absent(concept: Any) -> None:
    absent = _absence(concept)
    if absent is not None:
        raise _Skipped(f"it records only that the information is absent or unknown ({absent})")


def _value(element: Any) -> tuple[Any, str | None]:
    """An Observation's (or component's) value[x] as ``(value, unit)``."""
    quantity = element.valueQuantity
    if quantity is not None:
        return (_number(quantity.value) if quantity.value is not None else None), quantity.unit or quantity.code
    if element.valueCodeableConcept is not None:
        return _concept_text(element.valueCodeableConcept), None
    if element.valueInteger is not None:
        return element.valueInteger, None
    if element.valueBoolean is not None:
        return element.valueBoolean, None
    if element.valueString is not None:
        return element.valueString, None
    if element.valueDateTime is not None:
        return _day(element.valueDateTime), None
    return None, None


def _patient(entry: _Entry, ctx: _Context) -> tuple[str, dict]:
    # The source server's id and rxfed's own key say where the resource came from, which
    # the record's import key keeps; the rest is the person's demographics, kept whole.
    patient = {k: v for k, v in copy.deepcopy(entry.raw).items() if k != "id"}
    if "identifier" in patient:  # a list of Identifiers, or null (the models read it as absent)
        found = patient["identifier"] if isinstance(patient["identifier"], list) else []
        patient["identifier"] = [i for i in found if not isinstance(i, dict) or i.get("system") != RECORD_KEY_SYSTEM]
        if not patient["identifier"]:
            del patient["identifier"]
    if set(patient) <= {"resourceType", "meta"}:
        raise _Skipped("it carries nothing but an id")
    return "profile", {"fhir_patient": patient}


def _condition(entry: _Entry, ctx: _Context) -> tuple[str, dict]:
    resource = entry.resource
    status = _code_of(resource.verificationStatus)
    if status in _VOID_STATUSES:
        raise _Skipped(f"marked {status}")
    _not_absent(resource.code)
    by_system: dict[str, Any] = {}
    others = []
    for coding in (resource.code.coding or []) if resource.code else []:
        system = system_from_uri(coding.system)
        if system and coding.code:
            by_system.setdefault(system, coding)
        elif coding.system:
            others.append(coding.system)
    # ICD-10 first: it is what most patients and registries know their diagnosis by.
    system = next((s for s in ("icd10", "snomed") if s in by_system), None)
    coded_in = f" (coded only in {', '.join(dict.fromkeys(others))})" if others else ""
    if system is None:
        concept = resource.code
        label = concept and (concept.text or next((c.display for c in concept.coding or [] if c.display), None))
        if not label:
            raise _Skipped(f"no ICD-10 or SNOMED CT code and no text{coded_in}" if others
                           else "it has neither a code nor a text")
        ctx.notes[("Condition", f"kept with its label only: no ICD-10 or SNOMED CT code{coded_in}, "
                                "so it gives no diagnosis signal")] += 1
        code, coding = None, None
    else:
        coding = by_system[system]
        code, label = normalise_code(system, coding.code), coding.display or resource.code.text
    onset = resource.onsetPeriod.start if resource.onsetPeriod else resource.onsetDateTime
    abatement = resource.abatementPeriod.start if resource.abatementPeriod else resource.abatementDateTime
    return "condition", {
        "system": system,
        "code": code,
        "label": label,
        "onset": _day(onset),
        "abatement": _day(abatement),
        "status": _code_of(resource.clinicalStatus),
        "source": "fhir",
    }


def _medication(resource: Any, medications: dict[str, Any]) -> Any:
    """The medication's CodeableConcept, following a reference to a Medication if need be."""
    if resource.medicationCodeableConcept is not None:
        return resource.medicationCodeableConcept
    reference = resource.medicationReference.reference if resource.medicationReference else None
    if reference and reference.startswith("#"):
        target = next((c for c in resource.contained or [] if c.id == reference[1:]), None)
    else:
        target = medications.get(reference)
    return getattr(target, "code", None)


def _reported(resource: Any) -> dict:
    """What the patient reported about a treatment, from rxfed's extensions."""
    found: dict[str, Any] = {"efficacy": None, "adherence": None, "side_effects": []}
    for extension in resource.extension or []:
        what = extension.url[len(REPORTED):] if extension.url.startswith(REPORTED) else None
        if what in ("efficacy", "adherence"):
            found[what] = rec.score(extension.valueInteger, what)
        elif what == "side-effect" and extension.valueString:
            found["side_effects"].append(rec.text(extension.valueString, "side effect", rec.MAX_NAME))
    return found


def _treatment(entry: _Entry, ctx: _Context) -> tuple[str, dict]:
    resource = entry.resource
    if resource.status == "entered-in-error":
        raise _Skipped("marked entered-in-error")
    concept = _medication(resource, ctx.medications)
    _not_absent(concept)
    name = _concept_text(concept) or (resource.medicationReference.display if resource.medicationReference else None)
    if name is None:
        raise _Skipped("it names no medication")
    codings = [c for c in (concept.coding or [] if concept else []) if c.system and c.code]
    rxnorm = next((c for c in codings if c.system == RXNORM), None)
    if rxnorm is not None:
        code = {"system": "rxnorm", "code": rxnorm.code}
    else:
        code = {"system": codings[0].system, "code": codings[0].code} if codings else None
    if resource.get_resource_type() == "MedicationStatement":
        period = resource.effectivePeriod
        started = _day(period.start) if period else _day(resource.effectiveDateTime)
        stopped = _day(period.end) if period else None
        dosage, status = resource.dosage, resource.status
    else:
        started, stopped, dosage = _day(resource.authoredOn), None, resource.dosageInstruction
        status = _REQUEST_STATUS.get(resource.status, "active")
    doses = [d.text for d in dosage or [] if d.text]
    return "treatment", {
        "name": name,
        "dose": "; ".join(doses) or None,
        "started": started,
        "stopped": stopped,
        **_reported(resource),
        "code": code,
        # Statuses are MedicationStatement's; "unknown" is what a record without one exports as.
        "status": None if status == "unknown" else status,
        "source": "fhir",
    }


def _journal_observation(entry: _Entry, coding: Any) -> tuple[str, dict]:
    """A journal symptom or feeling score rxfed exported, as a journal entry of its own
    (merged with the rest of its entry, which shares its key, in :func:`_merged`)."""
    resource = entry.resource
    date = _day(resource.effectiveDateTime)
    if date is None:
        raise _Skipped("a journal score without a full date")
    value = resource.valueInteger
    if coding.code == "symptom":
        return "journal", rec.journal(symptoms={resource.code.text or "": value}, date=date)
    return "journal", rec.journal(feeling=value, date=date)


def _observation(entry: _Entry, ctx: _Context) -> tuple[str, dict]:
    resource = entry.resource
    if resource.status == "entered-in-error":
        raise _Skipped("marked entered-in-error")
    journal = next((c for c in resource.code.coding or [] if c.system == JOURNAL and c.code in ("symptom", "feeling")),
                   None)
    if journal is not None:
        return _journal_observation(entry, journal)
    totals = {instrument.loinc_total for instrument in INSTRUMENTS.values()}
    if (any(c.system == LOINC and c.code in totals for c in resource.code.coding or [])
            and any(d.reference in ctx.responses for d in resource.derivedFrom or [])):
        raise _Skipped("the total score of a questionnaire response imported with it (rxfed scores the answers)")
    _not_absent(resource.code)
    code = _coded(resource.code)
    if code is None:
        raise _Skipped("it has no code")
    components = []
    for component in resource.component or []:
        component_code = _coded(component.code)
        if component_code is not None:
            value, unit = _value(component)
            components.append({"code": component_code, "value": value, "unit": unit})
    value, unit = _value(resource)
    effective = resource.effectivePeriod.start if resource.effectivePeriod else (
        resource.effectiveDateTime or resource.effectiveInstant)
    category = next((c for c in (_code_of(cat) for cat in resource.category or []) if c), None)
    return "observation", {"code": code, "category": category, "date": _day(effective), "value": value,
                           "unit": unit, "components": components}


def _leaves(items: Iterable[Any]) -> Iterator[Any]:
    for item in items:
        yield item
        yield from _leaves(item.item or [])


def _instrument_of(resource: Any) -> Instrument | None:
    canonical = resource.questionnaire or ""
    for instrument in INSTRUMENTS.values():
        if instrument.loinc_panel in canonical:
            return instrument
    # No LOINC canonical: LOINC-based forms (LHC-Forms, many EHRs) name items by LOINC code.
    names = [f"{item.linkId} {item.definition or ''}" for item in _leaves(resource.item or [])]
    for instrument in INSTRUMENTS.values():
        if any(code in name for code in instrument.item_codes for name in names):
            return instrument
    return None


def _item_index(instrument: Instrument, item: Any) -> int | None:
    if item.linkId in {str(number) for number in range(1, len(instrument.items) + 1)}:
        return int(item.linkId) - 1
    name = f"{item.linkId} {item.definition or ''}"
    return next((index for index, code in enumerate(instrument.item_codes) if code in name), None)


def _answer(item: Any) -> int | None:
    for answer in item.answer or []:
        if answer.valueInteger is not None:
            return answer.valueInteger
        if answer.valueCoding is not None and answer.valueCoding.code in _LOINC_ANSWERS:
            return _LOINC_ANSWERS[answer.valueCoding.code]
    return None


def _questionnaire(entry: _Entry, ctx: _Context) -> tuple[str, dict]:
    resource = entry.resource
    instrument = _instrument_of(resource)
    if instrument is None:
        raise _Skipped(f"not a questionnaire rxfed scores ({', '.join(i.title for i in INSTRUMENTS.values())})")
    if resource.status not in ("completed", "amended"):
        raise _Skipped(f"not completed (its status is {resource.status})")
    date = _day(resource.authored)
    if date is None:
        raise _Skipped("it has no full date")
    answers: list[int | None] = [None] * len(instrument.items)
    for item in _leaves(resource.item or []):
        index = _item_index(instrument, item)
        if index is not None and answers[index] is None:
            answers[index] = _answer(item)
    # A questionnaire with an unanswered item has no valid total; it is skipped, not guessed.
    if None in answers:
        raise _Skipped(f"a {instrument.title} item is unanswered, so it has no valid total")
    scored = score(instrument.name, answers)
    return "journal", {"date": date, "symptoms": {}, "feeling": None, "note": None,
                       "questionnaires": [scored.to_dict()]}


def _medication_definition(entry: _Entry, ctx: _Context) -> tuple[str, dict]:
    raise _Skipped("a medication definition, read into the medication records that refer to it")


_IMPORTERS = {
    "Patient": _patient,
    "Condition": _condition,
    "MedicationStatement": _treatment,
    "MedicationRequest": _treatment,
    "Medication": _medication_definition,
    "Observation": _observation,
    "QuestionnaireResponse": _questionnaire,
}
_NOT_KEPT = "rxfed keeps no records of this resource type"


def _merged(first: dict, more: dict) -> dict:
    """One journal entry from two parts of it (see :func:`_journal_observation`)."""
    return {**first, "symptoms": {**first["symptoms"], **more["symptoms"]},
            "feeling": first["feeling"] if first["feeling"] is not None else more["feeling"],
            "questionnaires": first["questionnaires"] + more["questionnaires"]}


def _identifying_strings(patient: Any) -> set[str]:
    """Every name, identifier, phone number and address part in a Patient."""
    names = list(patient.name or [])
    telecoms = list(patient.telecom or [])
    addresses = list(patient.address or [])
    for contact in patient.contact or []:
        names += [contact.name] if contact.name else []
        telecoms += contact.telecom or []
        addresses += [contact.address] if contact.address else []
    found = {ident.value for ident in patient.identifier or []} | {t.value for t in telecoms}
    for name in names:
        found |= {name.family, name.text, *(name.given or [])}
    for extension in patient.extension or []:
        if extension.url == MOTHERS_MAIDEN_NAME:
            found.add(extension.valueString)
        addresses += [extension.valueAddress] if extension.valueAddress else []
    for address in addresses:
        found |= {address.city, address.postalCode, address.text, *(address.line or [])}
    # Initials and short numbers would also match innocent words and doses.
    return {s.strip() for s in found
            if isinstance(s, str) and len(s.strip()) >= 2 and not (s.strip().isdigit() and len(s.strip()) < 4)}


@attrs.frozen
class _Redactor:
    pattern: re.Pattern | None

    @classmethod
    def of(cls, patients: list[Any]) -> _Redactor:
        strings = set().union(*(_identifying_strings(p) for p in patients))
        if not strings:
            return cls(None)
        # Longest first, so "Koch Crossroad" goes whole rather than leaving a fragment.
        alternatives = "|".join(re.escape(s) for s in sorted(strings, key=len, reverse=True))
        return cls(re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE))

    def __call__(self, value: Any, key: str | None = None) -> Any:
        if self.pattern is None:
            return value
        if isinstance(value, dict):
            return {k: self(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self(v) for v in value]
        # Code systems, codes and keys are vocabulary, never free text; rewriting one breaks it.
        if isinstance(value, str) and key not in ("system", "code", "import_key"):
            return self.pattern.sub(REDACTED, value)
        return value


def _context(entries: list[_Entry]) -> _Context:
    medications, responses = {}, set()
    for entry in entries:
        kind, rid = entry.raw["resourceType"], entry.raw.get("id")
        names = {entry.full_url, f"{kind}/{rid}" if rid else None} - {None}
        if kind == "Medication":
            medications.update(dict.fromkeys(names, entry.resource))
        elif kind == "QuestionnaireResponse":
            responses |= names
    return _Context(medications, responses)


def import_bundle(doc: Any) -> ImportResult:
    """Records from a FHIR R4 Bundle; BadRequest (nothing imported) if any of it is invalid,
    Conflict (code ``several_patients``) if it is about more than one person."""
    bundle = _validated(doc)
    entries = [_Entry(index, entry.fullUrl, entry.resource, raw["resource"], _import_key(entry.fullUrl, raw["resource"]))
               for index, (entry, raw) in enumerate(zip(bundle.entry or [], doc.get("entry", [])))
               if entry.resource is not None]
    _check_one_patient(entries)
    ctx = _context(entries)
    redact = _Redactor.of([e.resource for e in entries if e.raw["resourceType"] == "Patient"])
    records: dict[str, tuple[str, dict]] = {}
    why: Counter[tuple[str, str]] = Counter()
    for entry in entries:
        kind = entry.raw["resourceType"]
        convert = _IMPORTERS.get(kind)
        try:
            if convert is None:
                raise _Skipped(_NOT_KEPT)
            record_kind, data = convert(entry, ctx)
            earlier = records.get(entry.key)
            if earlier is not None and not (earlier[0] == record_kind == "journal"):
                raise _Skipped("it appears twice in the Bundle")
        except _Skipped as skipped:
            why[(kind, skipped.reason)] += 1
            continue
        except BadRequest as exc:
            raise BadRequest(f"entry {entry.index} ({kind}): {exc.message}", code=exc.code) from None
        if record_kind != "profile":
            data = redact(data)
        if earlier is not None:
            data = _merged(earlier[1], data)
        records[entry.key] = (record_kind, {**data, "import_key": entry.key})
    skipped: Counter[str] = Counter()
    for (kind, _), count in why.items():
        skipped[kind] += count
    return ImportResult(tuple(records.values()), dict(skipped),
                        tuple(Tally(kind, reason, n) for (kind, reason), n in why.items()),
                        tuple(Tally(kind, note, n) for (kind, note), n in ctx.notes.items()))


# -- export ------------------------------------------------------------------------------

_STATEMENT_STATUSES = ("active", "completed", "entered-in-error", "intended", "stopped", "on-hold", "unknown",
                       "not-taken")


def _uuid(record_id: str, *parts: str) -> uuid.UUID:
    # Chained rather than joined, so ("a/b", "c") and ("a", "b/c") cannot collide.
    value = uuid.uuid5(_NAMESPACE, record_id)
    for part in parts:
        value = uuid.uuid5(value, part)
    return value


def _prune(resource: dict) -> dict:
    """Drop None values and empty containers: FHIR forbids empty elements."""
    pruned = {}
    for key, value in resource.items():
        if isinstance(value, dict):
            value = _prune(value)
        elif isinstance(value, list):
            value = [_prune(v) if isinstance(v, dict) else v for v in value]
            value = [v for v in value if v not in (None, "", {}, [])]
        if value not in (None, "", {}, []):
            pruned[key] = value
    return pruned


def _concept(code: dict | None, text: str | None = None) -> dict:
    code = code or {}
    coding = {"system": code.get("system"), "code": code.get("code"), "display": code.get("display")}
    return {"coding": [coding] if code.get("code") else [], "text": text or code.get("display")}


def _value_fields(value: Any, unit: str | None) -> dict:
    if value is None:
        return {}
    if isinstance(value, bool):
        return {"valueBoolean": value}
    if isinstance(value, int) and unit is None:
        return {"valueInteger": value}
    if isinstance(value, (int, float)):
        return {"valueQuantity": {"value": value, "unit": unit}}
    return {"valueString": str(value)}


def _key_identifier(key: str) -> dict:
    return {"system": RECORD_KEY_SYSTEM, "value": key}


class _Exporter:
    """Builds the entries of one export Bundle. Every resource carries its record's key as an
    identifier, so importing the export (here or into another profile) recognises it."""

    def __init__(self, patient_url: str):
        self.subject = {"reference": patient_url}
        self.entries: list[dict] = []

    def add(self, key: uuid.UUID, record: str, resource: dict) -> str:
        url = f"urn:uuid:{key}"
        # QuestionnaireResponse has one identifier; the other resources a list of them.
        identifier = _key_identifier(record)
        resource = {"resourceType": resource["resourceType"], "id": str(key),
                    "identifier": identifier if resource["resourceType"] == "QuestionnaireResponse" else [identifier],
                    **resource}
        self.entries.append({"fullUrl": url, "resource": _prune(resource)})
        return url

    def observation(self, key: uuid.UUID, record: str, code: dict, date: str | None, category: str | None = None,
                    **fields: Any) -> str:
        return self.add(key, record, {
            "resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": category}]}] if category else [],
            "code": code, "subject": self.subject, "effectiveDateTime": date, **fields,
        })

    def condition(self, record_id: str, data: dict) -> None:
        system, label, status = data.get("system"), data.get("label"), data.get("status")
        # A condition kept by its label only (a hospital wrote no code) exports as text.
        coding = [{"system": SYSTEM_URIS[system], "code": normalise_code(system, data["code"]), "display": label}
                  ] if system is not None else []
        self.add(_uuid(record_id), record_key(record_id, data), {
            "resourceType": "Condition",
            "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL, "code": status}]}
            if status in _CLINICAL_STATUSES else None,
            "code": {"coding": coding, "text": label},
            "subject": self.subject,
            "onsetDateTime": data.get("onset"),
            "abatementDateTime": data.get("abatement"),
        })

    def treatment(self, record_id: str, data: dict) -> None:
        code = data.get("code") or {}
        system = RXNORM if code.get("system") == "rxnorm" else code.get("system")
        status = data.get("status")
        # Older records may hold a MedicationRequest status.
        status = status if status in _STATEMENT_STATUSES else _REQUEST_STATUS.get(status, "unknown")
        reported = [f"{what} {data[what]}/10" for what in ("efficacy", "adherence") if data.get(what) is not None]
        if data.get("side_effects"):
            reported.append("side effects: " + ", ".join(data["side_effects"]))
        self.add(_uuid(record_id), record_key(record_id, data), {
            "resourceType": "MedicationStatement",
            "extension": [{"url": REPORTED + what, "valueInteger": data[what]}
                          for what in ("efficacy", "adherence") if data.get(what) is not None]
            + [{"url": REPORTED + "side-effect", "valueString": effect} for effect in data.get("side_effects") or []],
            # A treatment the patient recorded without a status exports as "unknown" with its
            # period, and comes back without one: the status is never inferred from dates.
            "status": status,
            "medicationCodeableConcept": _concept({"system": system, "code": code.get("code")}, data["name"]),
            "subject": self.subject,
            "effectivePeriod": {"start": data.get("started"), "end": data.get("stopped")},
            "dosage": [{"text": data.get("dose")}],
            "note": [{"text": "Patient-reported: " + "; ".join(reported)}] if reported else [],
        })

    def observation_record(self, record_id: str, data: dict) -> None:
        components = [{"code": _concept(c.get("code")), **_value_fields(c.get("value"), c.get("unit"))}
                      for c in data.get("components") or []]
        self.observation(_uuid(record_id), record_key(record_id, data), _concept(data.get("code")), data.get("date"),
                         data.get("category"), component=components,
                         **_value_fields(data.get("value"), data.get("unit")))

    def journal(self, record_id: str, data: dict) -> None:
        # One journal entry becomes several resources, all under its key; import joins them.
        date, key = data["date"], record_key(record_id, data)
        for index, stored in enumerate(data.get("questionnaires") or []):
            scored = Score.from_dict(stored)
            instrument = INSTRUMENTS[scored.instrument]
            response = self.add(_uuid(record_id, "questionnaire", str(index)), key, {
                "resourceType": "QuestionnaireResponse",
                "questionnaire": f"{LOINC}/q/{instrument.loinc_panel}",
                "status": "completed",
                "subject": self.subject,
                "authored": date,
                "item": [{"linkId": str(number), "text": text, "answer": [{"valueInteger": answer}]}
                         for number, (text, answer) in enumerate(zip(instrument.items, scored.answers), start=1)],
            })
            self.observation(
                _uuid(record_id, "questionnaire", str(index), "total"), key,
                {"coding": [{"system": LOINC, "code": instrument.loinc_total,
                             "display": f"{instrument.title} total score"}]},
                date, "survey", valueInteger=scored.total, interpretation=[{"text": scored.severity}],
                derivedFrom=[{"reference": response}],
            )
        for name, value in sorted((data.get("symptoms") or {}).items()):
            self.observation(_uuid(record_id, "symptom", name), key,
                             {"coding": [{"system": JOURNAL, "code": "symptom",
                                          "display": "Symptom severity the patient reported, 0 to 10"}],
                              "text": name}, date, "survey", valueInteger=value)
        if data.get("feeling") is not None:
            self.observation(_uuid(record_id, "feeling"), key,
                             {"coding": [{"system": JOURNAL, "code": "feeling",
                                          "display": "How the patient felt overall, 0 to 10"}],
                              "text": "overall feeling"}, date, "survey", valueInteger=data["feeling"])


def export_bundle(records: list[tuple[str, dict, str]], patient_ref: str) -> dict:
    """A FHIR R4 collection Bundle of ``(kind, data, record_id)`` records, as plain JSON data.

    The Patient is the first profile's imported resource, or a bare Patient with id
    ``patient_ref``. Kinds without a FHIR form are left out. Journal notes are left out
    too: free text the patient wrote for themselves does not belong in a clinical export.
    :func:`import_bundle` reads everything else back as it was (the records' ``source`` aside).
    """
    if not isinstance(patient_ref, str) or _FHIR_ID.fullmatch(patient_ref) is None:
        raise _bad("the patient reference must be 1 to 64 letters, digits, '-' or '.'")
    profile = next(((data, record_id) for kind, data, record_id in records if kind == "profile"), None)
    if profile is not None:
        key = _uuid(profile[1])
        patient = {**copy.deepcopy(profile[0]["fhir_patient"]), "id": str(key)}
        patient["identifier"] = [*patient.get("identifier", []), _key_identifier(record_key(profile[1], profile[0]))]
    else:
        key = _uuid(patient_ref)
        patient = {"resourceType": "Patient", "id": patient_ref}
    exporter = _Exporter(f"urn:uuid:{key}")
    exporter.entries.append({"fullUrl": f"urn:uuid:{key}", "resource": patient})
    converters = {"condition": exporter.condition, "treatment": exporter.treatment,
                  "observation": exporter.observation_record, "journal": exporter.journal}
    for kind, data, record_id in records:
        if kind in converters:
            converters[kind](record_id, data)
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": exporter.entries}
    # Our own output failing validation is a bug, so let the ValidationError propagate.
    Bundle.model_validate(bundle)
    return bundle


# -- consent -------------------------------------------------------------------------------

_CONSENT_SCOPE = {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy",
                  "display": "Privacy Consent"}
_CONSENT_CATEGORY = {"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}
_RXFED_PURPOSE = "https://rxfed.org/fhir/CodeSystem/purpose"
_RXFED_KIND = "https://rxfed.org/fhir/CodeSystem/signal-kind"
_RXFED_RECIPIENT = "https://rxfed.org/fhir/NamingSystem/recipient"
_RXFED_GRANT = "https://rxfed.org/fhir/NamingSystem/grant"
_CONSENT_ROLE = {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP",
                 "display": "information recipient"}


def _instant(unix: int) -> str:
    return dt.datetime.fromtimestamp(unix, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def consent_bundle(patient_ref: str, grants: list[dict]) -> dict:
    """rxfed consent grants (as :meth:`rxfed.client.consent.PatientConsent.list` gives them) as FHIR
    R4B Consent resources in a collection Bundle: status active / inactive (revoked or
    expired), the signal kind as ``provision.class``, the purpose as ``provision.purpose``,
    the recipient as an actor identifier, the grant's period as ``provision.period``."""
    key = _uuid(patient_ref)
    patient_url = f"urn:uuid:{key}"
    entries: list[dict] = [{"fullUrl": patient_url, "resource": {"resourceType": "Patient", "id": str(key)}}]
    for g in grants:
        consent_id = str(_uuid(patient_ref, "consent", g["grant"]))
        end = g["revoked"] if g.get("revoked") else g["not_after"]
        resource = {
            "resourceType": "Consent", "id": consent_id,
            "identifier": [{"system": _RXFED_GRANT, "value": g["grant"]}],
            "status": "active" if g["status"] == "live" else "inactive",
            "scope": {"coding": [_CONSENT_SCOPE]}, "category": [{"coding": [_CONSENT_CATEGORY]}],
            "patient": {"reference": patient_url}, "dateTime": _instant(g["created"]),
            "policyRule": {"text": "rxfed consent grant: signed by the patient, revocable at any time"},
            "provision": {
                "type": "permit", "period": {"start": _instant(g["created"]), "end": _instant(end)},
                "actor": [{"role": {"coding": [dict(_CONSENT_ROLE)]},
                           "reference": {"identifier": {"system": _RXFED_RECIPIENT, "value": g["recipient"]},
                                         "display": g["recipient"]}}],
                "purpose": [{"system": _RXFED_PURPOSE, "code": g["purpose"]}],
                "class": [{"system": _RXFED_KIND, "code": g["kind"]}],
            },
        }
        entries.append({"fullUrl": f"urn:uuid:{consent_id}", "resource": resource})
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    Bundle.model_validate(bundle)
    return bundle
