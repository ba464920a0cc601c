"""FHIR R4 import and export on the patient's device: Bundles to plaintext records and back.

A record here is ``(kind, data)``: the plaintext dict the client encrypts (see
:mod:`rxfed.client.records` for the kinds). Import takes what hospitals really export
(Synthea, EHR "download my record" buttons): SNOMED CT as well as ICD-10, MedicationRequest
as well as MedicationStatement, PHQ-9 and GAD-7 QuestionnaireResponses. Everything is
validated with the R4B models of ``fhir.resources`` first, so a malformed file is refused
as a whole with a readable :class:`~rxfed.errors.BadRequest` and never half-imported.

Identifying details (names, identifiers, addresses, phone numbers) stay in the ``profile``
record. No free text is copied from the Patient into other records, and any of those
details that a hospital wrote into a label or a dosage text are redacted from them,
because other records feed signals that leave the device.
"""

from __future__ import annotations

import copy
import datetime as dt
import decimal
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import attrs
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from rxfed.client.codes import SYSTEM_URIS, normalise_code, system_from_uri
from rxfed.client.questionnaires import INSTRUMENTS, Instrument, Score, score
from rxfed.errors import BadRequest

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
# MedicationRequest statuses that mean the medication is not being taken, as the nearest
# MedicationStatement status; anything else exports as "active".
_STATEMENT_STATUS = {"stopped": "stopped", "completed": "completed", "on-hold": "on-hold", "cancelled": "not-taken"}
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# Export ids are uuid5 under this namespace, so exporting the same records twice gives the
# same Bundle and a receiving system can recognise resources it already has.
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:rxfed:fhir-export")
REDACTED = "[redacted]"


@attrs.frozen
class ImportResult:
    records: tuple[tuple[str, dict], ...]
    #: Resource type -> how many resources of that type did not become a record.
    skipped: dict[str, int]


def _bad(message: str) -> BadRequest:
    return BadRequest(message, code="invalid_fhir")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- import ------------------------------------------------------------------------------


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


def _patient(resource: Any, raw: dict, medications: dict[str, Any]) -> tuple[str, dict]:
    return "profile", {"fhir_patient": copy.deepcopy(raw)}


def _condition(resource: Any, raw: dict, medications: dict[str, Any]) -> tuple[str, dict] | None:
    if _code_of(resource.verificationStatus) in _VOID_STATUSES:
        return None
    by_system: dict[str, Any] = {}
    for coding in (resource.code.coding or []) if resource.code else []:
        system = system_from_uri(coding.system)
        if system and coding.code:
            by_system.setdefault(system, coding)
    # ICD-10 first: it is what most patients and registries know their diagnosis by.
    system = next((s for s in ("icd10", "snomed") if s in by_system), None)
    if system is None:
        return None
    coding = by_system[system]
    onset = resource.onsetPeriod.start if resource.onsetPeriod else resource.onsetDateTime
    abatement = resource.abatementPeriod.start if resource.abatementPeriod else resource.abatementDateTime
    return "condition", {
        "system": system,
        "code": normalise_code(system, coding.code),
        "label": coding.display or resource.code.text,
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


def _treatment(resource: Any, raw: dict, medications: dict[str, Any]) -> tuple[str, dict] | None:
    if resource.status == "entered-in-error":
        return None
    concept = _medication(resource, medications)
    name = _concept_text(concept) or (resource.medicationReference.display if resource.medicationReference else None)
    if name is None:
        return None
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
        dosage = resource.dosage
    else:
        started, stopped, dosage = _day(resource.authoredOn), None, resource.dosageInstruction
    doses = [d.text for d in dosage or [] if d.text]
    return "treatment", {
        "name": name,
        "dose": "; ".join(doses) or None,
        "started": started,
        "stopped": stopped,
        "efficacy": None,
        "side_effects": [],
        "adherence": None,
        "code": code,
        "status": resource.status,
        "source": "fhir",
    }


def _observation(resource: Any, raw: dict, medications: dict[str, Any]) -> tuple[str, dict] | None:
    code = _coded(resource.code)
    if resource.status == "entered-in-error" or code is None:
        return None
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


def _journal(resource: Any, raw: dict, medications: dict[str, Any]) -> tuple[str, dict] | None:
    instrument = _instrument_of(resource)
    date = _day(resource.authored)
    if instrument is None or date is None or resource.status not in ("completed", "amended"):
        return None
    answers: list[int | None] = [None] * len(instrument.items)
    for item in _leaves(resource.item or []):
        index = _item_index(instrument, item)
        if index is not None and answers[index] is None:
            answers[index] = _answer(item)
    # A questionnaire with an unanswered item has no valid total; it is skipped, not guessed.
    if None in answers:
        return None
    scored = score(instrument.name, answers)
    return "journal", {"date": date, "symptoms": {}, "feeling": None, "note": None,
                       "questionnaires": [scored.to_dict()]}


_IMPORTERS = {
    "Patient": _patient,
    "Condition": _condition,
    "MedicationStatement": _treatment,
    "MedicationRequest": _treatment,
    "Observation": _observation,
    "QuestionnaireResponse": _journal,
}


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
        # Code systems and codes are vocabulary, never free text; rewriting one breaks it.
        if isinstance(value, str) and key not in ("system", "code"):
            return self.pattern.sub(REDACTED, value)
        return value


def import_bundle(doc: Any) -> ImportResult:
    """Records from a FHIR R4 Bundle; BadRequest (nothing imported) if any of it is invalid."""
    bundle = _validated(doc)
    entries = [(index, entry.resource, raw["resource"])
               for index, (entry, raw) in enumerate(zip(bundle.entry or [], doc.get("entry", [])))
               if entry.resource is not None]
    patients = [resource for _, resource, _ in entries if resource.get_resource_type() == "Patient"]
    if len(patients) > 1:
        raise _bad(f"the Bundle holds {len(patients)} patients; import one person's record at a time")
    # MedicationRequests may name their drug by reference, by fullUrl or by type and id.
    medications = {}
    for entry in bundle.entry or []:
        if entry.resource is not None and entry.resource.get_resource_type() == "Medication":
            medications[entry.fullUrl] = medications[f"Medication/{entry.resource.id}"] = entry.resource
    redact = _Redactor.of(patients)
    records: list[tuple[str, dict]] = []
    skipped: Counter[str] = Counter()
    for index, resource, raw in entries:
        kind = resource.get_resource_type()
        convert = _IMPORTERS.get(kind)
        try:
            record = convert(resource, raw, medications) if convert else None
        except BadRequest as exc:
            raise BadRequest(f"entry {index} ({kind}): {exc.message}", code=exc.code) from None
        if record is None:
            skipped[kind] += 1
        elif record[0] == "profile":
            records.append(record)
        else:
            records.append((record[0], redact(record[1])))
    return ImportResult(tuple(records), dict(skipped))


# -- export ------------------------------------------------------------------------------


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


class _Exporter:
    """Builds the entries of one export Bundle."""

    def __init__(self, patient_url: str):
        self.subject = {"reference": patient_url}
        self.entries: list[dict] = []

    def add(self, key: uuid.UUID, resource: dict) -> str:
        url = f"urn:uuid:{key}"
        resource = {"resourceType": resource["resourceType"], "id": str(key), **resource}
        self.entries.append({"fullUrl": url, "resource": _prune(resource)})
        return url

    def observation(self, key: uuid.UUID, code: dict, date: str | None, category: str | None = None,
                    **fields: Any) -> str:
        return self.add(key, {
            "resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": category}]}] if category else [],
            "code": code, "subject": self.subject, "effectiveDateTime": date, **fields,
        })

    def condition(self, record_id: str, data: dict) -> None:
        system = data["system"]
        code = normalise_code(system, data["code"])
        status = data.get("status")
        self.add(_uuid(record_id), {
            "resourceType": "Condition",
            "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL, "code": status}]}
            if status in _CLINICAL_STATUSES else None,
            "code": {"coding": [{"system": SYSTEM_URIS[system], "code": code, "display": data.get("label")}],
                     "text": data.get("label")},
            "subject": self.subject,
            "onsetDateTime": data.get("onset"),
            "abatementDateTime": data.get("abatement"),
        })

    def treatment(self, record_id: str, data: dict) -> None:
        code = data.get("code") or {}
        system = RXNORM if code.get("system") == "rxnorm" else code.get("system")
        reported = [f"{what} {data[what]}/10" for what in ("efficacy", "adherence") if data.get(what) is not None]
        if data.get("side_effects"):
            reported.append("side effects: " + ", ".join(data["side_effects"]))
        self.add(_uuid(record_id), {
            "resourceType": "MedicationStatement",
            "status": "completed" if data.get("stopped") else _STATEMENT_STATUS.get(data.get("status"), "active"),
            "medicationCodeableConcept": _concept({"system": system, "code": code.get("code")}, data["name"]),
            "subject": self.subject,
            "effectivePeriod": {"start": data.get("started"), "end": data.get("stopped")},
            "dosage": [{"text": data.get("dose")}],
            "note": [{"text": "Patient-reported: " + "; ".join(reported)}] if reported else [],
        })

    def observation_record(self, record_id: str, data: dict) -> None:
        components = [{"code": _concept(c.get("code")), **_value_fields(c.get("value"), c.get("unit"))}
                      for c in data.get("components") or []]
        self.observation(_uuid(record_id), _concept(data.get("code")), data.get("date"), data.get("category"),
                         component=components, **_value_fields(data.get("value"), data.get("unit")))

    def journal(self, record_id: str, data: dict) -> None:
        date = data["date"]
        for index, stored in enumerate(data.get("questionnaires") or []):
            scored = Score.from_dict(stored)
            instrument = INSTRUMENTS[scored.instrument]
            response = self.add(_uuid(record_id, "questionnaire", str(index)), {
                "resourceType": "QuestionnaireResponse",
                "questionnaire": f"{LOINC}/q/{instrument.loinc_panel}",
                "status": "completed",
                "subject": self.subject,
                "authored": date,
                "item": [{"linkId": str(number), "text": text, "answer": [{"valueInteger": answer}]}
                         for number, (text, answer) in enumerate(zip(instrument.items, scored.answers), start=1)],
            })
            self.observation(
                _uuid(record_id, "questionnaire", str(index), "total"),
                {"coding": [{"system": LOINC, "code": instrument.loinc_total,
                             "display": f"{instrument.title} total score"}]},
                date, "survey", valueInteger=scored.total, interpretation=[{"text": scored.severity}],
                derivedFrom=[{"reference": response}],
            )
        for name, value in sorted((data.get("symptoms") or {}).items()):
            self.observation(_uuid(record_id, "symptom", name), {"text": f"{name} (0-10)"}, date, "survey",
                             valueInteger=value)
        if data.get("feeling") is not None:
            self.observation(_uuid(record_id, "feeling"), {"text": "overall feeling (0-10)"}, date, "survey",
                             valueInteger=data["feeling"])


def export_bundle(records: list[tuple[str, dict, str]], patient_ref: str) -> dict:
    """A FHIR R4 collection Bundle of ``(kind, data, record_id)`` records, as plain JSON data.

    The Patient is the first profile's imported resource, or a bare Patient with id
    ``patient_ref``. Kinds without a FHIR form are left out. Journal notes are left out
    too: free text the patient wrote for themselves does not belong in a clinical export.
    """
    if not isinstance(patient_ref, str) or _FHIR_ID.fullmatch(patient_ref) is None:
        raise _bad("the patient reference must be 1 to 64 letters, digits, '-' or '.'")
    profile = next(((data, record_id) for kind, data, record_id in records if kind == "profile"), None)
    if profile is not None:
        key = _uuid(profile[1])
        patient = {**copy.deepcopy(profile[0]["fhir_patient"]), "id": str(key)}
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


def _instant(unix: int) -> str:
    return dt.datetime.fromtimestamp(unix, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def consent_bundle(patient_ref: str, grants: list[dict]) -> dict:
    """rxfed consent grants (as :meth:`rxfed.client.consent.Consent.list` gives them) as FHIR
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
            "identifier": [{"system": "https://rxfed.org/fhir/NamingSystem/grant", "value": g["grant"]}],
            "status": "active" if g["status"] == "live" else "inactive",
            "scope": {"coding": [_CONSENT_SCOPE]}, "category": [{"coding": [_CONSENT_CATEGORY]}],
            "patient": {"reference": patient_url}, "dateTime": _instant(g["created"]),
            "policyRule": {"text": "rxfed consent grant: signed by the patient, revocable at any time"},
            "provision": {
                "type": "permit", "period": {"start": _instant(g["created"]), "end": _instant(end)},
                "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                                "code": "IRCP", "display": "information recipient"}]},
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
