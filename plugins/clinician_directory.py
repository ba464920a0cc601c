"""Built-in plugin: the ``hospital-directory`` clinician verification backend.

The hospital's staff export (CSV with a header row, or JSON: a list of objects, or an object
with a ``staff`` list) is the source of truth: the clinician must be in it, matched by
``staff_id`` (or by NPI when no staff id is given), active, and with the role, specialty
(NUCC code), NPI and name the credential would state. ``columns`` maps these fields to the
export's own column names, e.g. ``{staff_id = "Employee ID", specialty = "Taxonomy"}``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from rxfed import BackendVerdict, ClinicianVerifier, hookimpl
from rxfed.protocol.credentials import Clinician

NAME = "hospital-directory"
FIELDS = ("staff_id", "name", "npi", "role", "specialty", "active")
_YES = {"1", "true", "yes", "y", "active"}
_NO = {"0", "false", "no", "n", "inactive", "left", ""}


def _rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        if isinstance(data, dict):
            data = data.get("staff")
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ValueError(f"{path}: a JSON staff export is a list of objects, or an object with a 'staff' list")
        return data
    return list(csv.DictReader(text.splitlines()))


def load_directory(path: Path, columns: dict[str, str]) -> list[dict[str, str]]:
    """The staff as dicts of :data:`FIELDS` (text, stripped; missing fields empty)."""
    staff = []
    for row in _rows(path):
        entry = {}
        for field in FIELDS:
            value = row.get(columns.get(field, field))
            if isinstance(value, bool):
                value = "true" if value else "false"
            entry[field] = "" if value is None else str(value).strip()
        if entry["active"].lower() not in _YES | _NO:
            raise ValueError(f"{path}: staff {entry['staff_id'] or '?'} has active = {entry['active']!r}, "
                             "not yes/no")
        staff.append(entry)
    return staff


def _same_name(a: str, b: str) -> bool:
    return " ".join(a.casefold().replace(",", " ").split()) == " ".join(b.casefold().replace(",", " ").split())


def check(clinician: Clinician, staff: list[dict[str, str]], source: str) -> BackendVerdict:
    if clinician.staff_id is not None:
        found = [s for s in staff if s["staff_id"] == clinician.staff_id]
        who = f"staff id {clinician.staff_id}"
    elif clinician.npi is not None:
        found = [s for s in staff if s["npi"] == clinician.npi]
        who = f"NPI {clinician.npi}"
    else:
        return BackendVerdict(NAME, False, "neither a staff id nor an NPI was given to find the clinician by")
    if not found:
        return BackendVerdict(NAME, False, f"{who} is not in the staff directory {source}")
    if len(found) > 1:
        return BackendVerdict(NAME, False, f"{who} is in the staff directory {source} {len(found)} times")
    row = found[0]
    if row["active"].lower() not in _YES:
        return BackendVerdict(NAME, False, f"{who} is not active in the staff directory")
    if row["role"] != clinician.role:
        return BackendVerdict(NAME, False, f"the directory gives {who} the role {row['role']!r}, not {clinician.role!r}")
    if row["specialty"] != clinician.specialty:
        return BackendVerdict(NAME, False, f"the directory gives {who} the specialty {row['specialty']!r}, "
                                           f"not {clinician.specialty!r}")
    if row["npi"] and clinician.npi is not None and row["npi"] != clinician.npi:
        return BackendVerdict(NAME, False, f"the directory gives {who} another NPI")
    if row["name"] and clinician.name is not None and not _same_name(row["name"], clinician.name):
        return BackendVerdict(NAME, False, f"the directory gives {who} another name")
    return BackendVerdict(NAME, True, f"{who} is active in the staff directory {source} with this role and specialty")


def open_directory(options: dict[str, Any]):
    unknown = set(options) - {"path", "columns"}
    if unknown:
        raise ValueError(f"unknown option {sorted(unknown)[0]!r} (the hospital-directory backend takes: path, columns)")
    if not options.get("path"):
        raise ValueError("the hospital-directory backend needs path = the staff export (CSV or JSON)")
    columns = options.get("columns") or {}
    if not isinstance(columns, dict) or not set(columns) <= set(FIELDS):
        raise ValueError(f"columns maps some of {', '.join(FIELDS)} to the export's column names")
    path = Path(options["path"])
    try:
        staff = load_directory(path, columns)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    return lambda clinician: check(clinician, staff, path.name)


@hookimpl
def rxfed_clinician_verifiers():
    return [ClinicianVerifier(NAME, "the hospital's staff export (CSV or JSON)", open_directory)]
