"""Built-in plugin: the ``npi`` clinician verification backend.

It checks the clinician's National Provider Identifier offline: ten digits, the first 1 or
2, and the Luhn check digit over ``80840`` and the first nine (CMS's rule). With a
``registry`` (a CSV file with NPPES column names, e.g. the operator's extract of the NPPES
data dissemination file, or the short names ``npi,last_name,taxonomy,deactivated``), the
number must also be listed, for an individual, not deactivated, with the clinician's
taxonomy code and, when both are known, their last name. It never looks anything up on the
network: a live NPPES lookup would be a further plugin the operator chooses to enable.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import attrs

from rxfed import BackendVerdict, ClinicianVerifier, hookimpl
from rxfed.protocol.credentials import Clinician, npi_valid

NAME = "npi"
#: NPPES column names and the short ones, to the field each gives.
COLUMNS = {
    "npi": "npi",
    "entity type code": "entity", "entity_type": "entity",
    "provider last name (legal name)": "last_name", "last_name": "last_name",
    "npi deactivation date": "deactivated", "deactivated": "deactivated",
    "npi reactivation date": "reactivated", "reactivated": "reactivated",
    "taxonomy": "taxonomy",
}


@attrs.frozen
class RegistryEntry:
    npi: str
    entity: str
    last_name: str
    deactivated: str
    reactivated: str
    taxonomies: frozenset[str]


def load_registry(path: Path) -> dict[str, RegistryEntry]:
    """The registry file's entries by NPI; ValueError when it has no NPI column."""
    entries = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        headers = {h: h.strip().lower() for h in reader.fieldnames or ()}
        if "npi" not in headers.values():
            raise ValueError(f"{path}: the registry needs an NPI column")
        for row in reader:
            values: dict[str, Any] = {"taxonomies": set()}
            for header, key in headers.items():
                cell = (row.get(header) or "").strip()
                if key.startswith("healthcare provider taxonomy code_") or key == "taxonomy":
                    values["taxonomies"].update(c for c in cell.split(";") if c)
                elif key in COLUMNS:
                    values[COLUMNS[key]] = cell
            npi = values.get("npi", "")
            entries[npi] = RegistryEntry(npi, values.get("entity", ""), values.get("last_name", ""),
                                         values.get("deactivated", ""), values.get("reactivated", ""),
                                         frozenset(values["taxonomies"]))
    return entries


def _mdy_or_iso(text: str) -> tuple[int, ...]:
    """NPPES writes dates as MM/DD/YYYY; the short format as YYYY-MM-DD."""
    if "/" in text:
        month, day, year = text.split("/")
        return int(year), int(month), int(day)
    return tuple(int(p) for p in text.split("-"))


def check(clinician: Clinician, registry: dict[str, RegistryEntry] | None, source: str) -> BackendVerdict:
    npi = clinician.npi
    if npi is None:
        return BackendVerdict(NAME, False, "no NPI was given")
    if not npi_valid(npi):
        return BackendVerdict(NAME, False, f"{npi} is not a valid NPI (format or check digit)")
    if registry is None:
        return BackendVerdict(NAME, True, f"NPI {npi}: format and check digit valid (no registry configured)")
    entry = registry.get(npi)
    if entry is None:
        return BackendVerdict(NAME, False, f"NPI {npi} is not in the registry {source}")
    if entry.entity and entry.entity != "1":
        return BackendVerdict(NAME, False, f"NPI {npi} belongs to an organisation, not a person")
    if entry.deactivated and not (entry.reactivated and _mdy_or_iso(entry.reactivated) >= _mdy_or_iso(entry.deactivated)):
        return BackendVerdict(NAME, False, f"NPI {npi} is deactivated in the registry (since {entry.deactivated})")
    if entry.taxonomies and clinician.specialty not in entry.taxonomies:
        return BackendVerdict(NAME, False, f"the registry lists NPI {npi} with taxonomy "
                                           f"{', '.join(sorted(entry.taxonomies))}, not {clinician.specialty}")
    if entry.last_name and clinician.name is not None:
        if entry.last_name.casefold() not in clinician.name.casefold().replace(",", " ").split():
            return BackendVerdict(NAME, False, f"the registry's last name for NPI {npi} is not in {clinician.name!r}")
    return BackendVerdict(NAME, True, f"NPI {npi} is listed in the registry {source} and matches")


def open_npi(options: dict[str, Any]):
    unknown = set(options) - {"registry"}
    if unknown:
        raise ValueError(f"unknown option {sorted(unknown)[0]!r} (the npi backend takes: registry)")
    registry = None
    source = ""
    if options.get("registry"):
        path = Path(options["registry"])
        registry, source = load_registry(path), path.name
    return lambda clinician: check(clinician, registry, source)


@hookimpl
def rxfed_clinician_verifiers():
    return [ClinicianVerifier(NAME, "NPI format and check digit; an offline registry file if configured", open_npi)]
