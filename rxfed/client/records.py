"""Patient records as the client sees them (plaintext, never sent), and their validation.

A record is ``{"kind", "created", "data"}`` serialised to JSON, then sealed by
:mod:`rxfed.crypto.records`. The node stores only the sealed blob under a random id, so
neither its size (padded) nor its URL reveals the kind.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import attrs

from rxfed.crypto import sha256
from rxfed.errors import BadRequest

KINDS = ("profile", "condition", "journal", "treatment", "observation", "community", "clinician")
MAX_TEXT = 4000
MAX_NAME = 120


@attrs.frozen
class Record:
    id: str
    version: int
    kind: str
    #: When the record was written, ISO 8601 UTC with microseconds (sorts as text).
    created: str
    data: dict

    def to_plaintext(self) -> bytes:
        return json.dumps({"kind": self.kind, "created": self.created, "data": self.data},
                          sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_plaintext(cls, record_id: str, version: int, plaintext: bytes) -> Record:
        doc = json.loads(plaintext)
        return cls(record_id, version, doc["kind"], doc["created"], doc["data"])

    def to_json(self) -> dict:
        return {"id": self.id, "version": self.version, "kind": self.kind, "created": self.created, "data": self.data}


def timestamp(unix: float) -> str:
    return dt.datetime.fromtimestamp(unix, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- import keys ---------------------------------------------------------------------------
#
# An imported record keeps, in ``data["import_key"]``, a key of the resource it came from, so
# importing the same file again adds nothing. A record written on the device has none; its
# key is derived from its id, and an export writes it down, so it too is recognised when it
# comes back.

_KEY = re.compile(r"[0-9a-f]{32}")


def derive_key(*parts: str) -> str:
    """A key (32 hex digits) from text that names a thing."""
    return sha256(json.dumps(["rxfed import key", *parts], ensure_ascii=False).encode())[:16].hex()


def is_record_key(value: Any) -> bool:
    return isinstance(value, str) and _KEY.fullmatch(value) is not None


def record_key(record_id: str, data: dict) -> str:
    """The key a record is known by across imports and exports."""
    key = data.get("import_key") if isinstance(data, dict) else None
    return key if is_record_key(key) else derive_key("record", record_id)


def content_key(kind: str, data: dict) -> str:
    """A key of what an imported record says, for records imported before import keys
    existed: such a record is recognised when the same file gives the same record again."""
    said = {k: v for k, v in data.items() if k != "import_key"}
    return derive_key("content", kind, json.dumps(said, sort_keys=True, ensure_ascii=False))


def score(value: Any, what: str, lo: int = 0, hi: int = 10) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not (
        isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,6}\s*", value))
    ):
        raise BadRequest(f"{what} must be a whole number from {lo} to {hi}", code="out_of_range")
    number = int(value)
    if not lo <= number <= hi:
        raise BadRequest(f"{what} must be from {lo} to {hi}, not {number}", code="out_of_range")
    return number


def _date(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value).isoformat()
    except (TypeError, ValueError):
        raise BadRequest(f"{what} must be a date like 2026-01-31", code="bad_date") from None


def text(value: str | None, what: str, limit: int = MAX_TEXT) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if len(value) > limit or re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", value):
        raise BadRequest(f"{what} must be at most {limit} printable characters", code="bad_text")
    return value


def condition(code: str, system: str = "icd10", label: str | None = None, onset: str | None = None) -> dict:
    from rxfed.vocabulary.codes import normalise_code

    if system not in ("icd10", "snomed"):
        raise BadRequest("the code system must be icd10 or snomed", code="invalid_code")
    return {"system": system, "code": normalise_code(system, code), "label": text(label, "label", MAX_NAME),
            "onset": _date(onset, "onset"), "abatement": None, "status": None, "source": None}


def journal(*, symptoms: dict[str, Any] | None = None, feeling: Any = None, note: str | None = None,
            questionnaires: list[dict] | None = None, date: str | None = None, today: dt.date | None = None) -> dict:
    clean = {}
    for name, value in (symptoms or {}).items():
        key = text(name, "symptom name", MAX_NAME)
        if key is None:
            raise BadRequest("a symptom needs a name, as NAME=0..10", code="bad_symptom")
        clean[key.lower()] = score(value, f"symptom {key!r}")
    entry = {"date": _date(date, "date") or (today or dt.date.today()).isoformat(), "symptoms": clean,
             "feeling": score(feeling, "feeling"), "note": text(note, "note"), "questionnaires": questionnaires or []}
    if not clean and entry["feeling"] is None and entry["note"] is None and not entry["questionnaires"]:
        raise BadRequest("a journal entry needs a symptom, a feeling, a note or a questionnaire", code="empty_entry")
    return entry


def treatment(name: str, *, dose: str | None = None, started: str | None = None, stopped: str | None = None,
              efficacy: Any = None, side_effects: list[str] | None = None, adherence: Any = None) -> dict:
    clean_name = text(name, "treatment name", MAX_NAME)
    if clean_name is None:
        raise BadRequest("a treatment needs a name", code="bad_text")
    started, stopped = _date(started, "started"), _date(stopped, "stopped")
    if started and stopped and stopped < started:
        raise BadRequest("a treatment cannot stop before it started", code="bad_date")
    effects = [e for e in (text(s, "side effect", MAX_NAME) for s in side_effects or []) if e]
    return {"name": clean_name, "dose": text(dose, "dose", MAX_NAME), "started": started, "stopped": stopped,
            "efficacy": score(efficacy, "efficacy"), "side_effects": effects,
            "adherence": score(adherence, "adherence"), "code": None, "status": None, "source": None}


def clinical_date(record: Record) -> str | None:
    """The day a record is about (onset, start, the day measured or written), not the day it
    was stored: an import stores years of history at once."""
    field = {"condition": "onset", "treatment": "started", "journal": "date", "observation": "date"}.get(record.kind)
    value = record.data.get(field) if field else None
    if value is None and record.kind == "treatment":
        value = record.data.get("stopped")
    return value if isinstance(value, str) else None


def shown_number(value: Any) -> str:
    """A measured value as people read it: at most four significant digits after the point
    (``19.124306358791486`` -> ``19.12``), whole numbers as they are."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    digits = len(str(int(abs(value))))
    return f"{value:.{max(4, digits)}g}"


# LOINC blood pressure components, shown as "systolic/diastolic".
_SYSTOLIC, _DIASTOLIC = "8480-6", "8462-4"


def _measured(value: Any, unit: str | None) -> str:
    return f"{shown_number(value)} {unit}" if unit else shown_number(value)


def _observation_summary(d: dict) -> str:
    code = d.get("code") or {}
    name = code.get("display") or code.get("code") or "observation"
    if d.get("value") is not None:
        return f"{name}: {_measured(d['value'], d.get('unit'))}"
    parts = {(c.get("code") or {}).get("code"): c for c in d.get("components") or [] if c.get("value") is not None}
    systolic, diastolic = parts.get(_SYSTOLIC), parts.get(_DIASTOLIC)
    if systolic and diastolic and systolic.get("unit") == diastolic.get("unit"):
        return (f"{name}: {shown_number(systolic['value'])}/{shown_number(diastolic['value'])}"
                + (f" {systolic['unit']}" if systolic.get("unit") else ""))
    shown = [f"{(c.get('code') or {}).get('display') or (c.get('code') or {}).get('code')} "
             f"{_measured(c['value'], c.get('unit'))}" for c in parts.values()]
    return f"{name}: {', '.join(shown)}" if shown else name


def summary(record: Record) -> str:
    """One line for people: what a record says."""
    d = record.data
    if record.kind == "condition":
        if d.get("system") is None:  # kept by its label: the hospital wrote no code
            return f"{d.get('label')} (no code)"
        return f"{d['system'].upper()} {d['code']}" + (f" {d['label']}" if d.get("label") else "")
    if record.kind == "treatment":
        parts = [d["name"]]
        if d.get("dose"):
            parts.append(d["dose"])
        if d.get("efficacy") is not None:
            parts.append(f"efficacy {d['efficacy']}/10")
        if d.get("side_effects"):
            parts.append("side effects: " + ", ".join(d["side_effects"]))
        return "; ".join(parts)
    if record.kind == "journal":
        parts = [d["date"]]
        parts += [f"{k} {v}/10" for k, v in sorted(d.get("symptoms", {}).items())]
        if d.get("feeling") is not None:
            parts.append(f"feeling {d['feeling']}/10")
        parts += [f"{q['instrument'].upper()} {q['total']} ({q['severity']})" for q in d.get("questionnaires", [])]
        if d.get("note"):
            parts.append(repr(d["note"]))
        return "; ".join(parts)
    if record.kind == "observation":
        return _observation_summary(d)
    if record.kind == "profile":
        return "patient profile (demographics from an import)"
    if record.kind == "community":
        return f"member of {d.get('name') or 'community'} {d['address']}"
    if record.kind == "clinician":
        return f"clinician key {d.get('did')}"
    return record.kind
