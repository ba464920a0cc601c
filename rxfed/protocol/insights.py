"""Treatment insights tables: from consented signals to a released table and back to what a
patient reads (pure; spec/privacy.md section 6).

* :func:`record_of`: the record a ``treatment.outcome`` or ``symptom.trend`` signal is held
  as (its group: the treatment or the symptom), or None for a body that is neither.
* :func:`outcome_table`: the declared layout of one diagnosis category's table. Every cell is
  named before any data is seen: the treatments, the side effects and the symptoms come from
  the operator's declaration, never from what patients reported.
* :func:`contributions`: one :class:`~rxfed.protocol.release.Contribution` per patient and
  treatment of the category, with the patient's symptom trends of the period attached, so a
  table shows "symptom trends for people on that treatment". Bounded by
  :func:`~rxfed.protocol.release.bound_contributions`.
* :func:`patient_view`: a published table as the patient reads it (shares computed from the
  published noisy values only: post-processing spends no budget).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rxfed.errors import BadRequest
from rxfed.protocol.release import Contribution, Measure, ReleasedTable, TableSchema

TREATMENT = "treatment.outcome"
SYMPTOM = "symptom.trend"
KINDS = (TREATMENT, SYMPTOM)
#: The purpose a grant names for its signals to count in insights tables.
PURPOSE = "insights"
LEVELS = ("low", "medium", "high")
STATUSES = ("ongoing", "stopped")
DIRECTIONS = ("improving", "stable", "worsening")
#: Side effects one report counts at most (the ``many`` of the side_effects measure).
MAX_SIDE_EFFECTS = 3
CATEGORY = re.compile(r"[A-U][0-9][0-9A-Z]")
#: A symptom's measure is called "symptom NAME".
SYMPTOM_PREFIX = "symptom "


def check_category(category: Any) -> str:
    if not isinstance(category, str) or not CATEGORY.fullmatch(category):
        raise BadRequest("a category is an ICD-10 three-character category such as E11", code="bad_category")
    return category


def period_of(now: int) -> str:
    """The calendar month (UTC) a time falls in, ``YYYY-MM``: records are held per period."""
    t = time.gmtime(now)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}"


def table_name(category: str) -> str:
    return f"outcomes-{check_category(category).lower()}"


def record_of(kind: str, body: Mapping[str, Any]) -> str | None:
    """The group a signal's record is held under: its treatment or its symptom."""
    key = "treatment" if kind == TREATMENT else "symptom" if kind == SYMPTOM else None
    value = body.get(key) if key is not None and isinstance(body, Mapping) else None
    return value if isinstance(value, str) else None


def outcome_table(category: str, treatments: Sequence[str], *, side_effects: Sequence[str] = (),
                  symptoms: Sequence[str] = (), max_groups: int = 1) -> TableSchema:
    """One category's table: per treatment, reports, efficacy, adherence and status bands,
    the declared side effects (each report counts at most :data:`MAX_SIDE_EFFECTS`), and
    the direction of each declared symptom among people on the treatment."""
    measures = [Measure("efficacy", LEVELS), Measure("adherence", LEVELS), Measure("status", STATUSES)]
    if side_effects:
        measures.append(Measure("side_effects", tuple(side_effects), many=min(MAX_SIDE_EFFECTS, len(side_effects))))
    measures += [Measure(SYMPTOM_PREFIX + s, DIRECTIONS) for s in symptoms]
    return TableSchema(table_name(category), tuple(treatments), tuple(measures), max_groups)


def table_from_json(obj: Any) -> TableSchema:
    """A declared table (:meth:`TableSchema.to_json`); BadRequest for anything else."""
    if not isinstance(obj, dict) or set(obj) != {"name", "groups", "max_groups", "measures"} \
            or not isinstance(obj["groups"], list) or not isinstance(obj["measures"], list):
        raise BadRequest("a table is {name, groups, max_groups, measures}", code="bad_table")
    try:
        measures = []
        for m in obj["measures"]:
            if not isinstance(m, dict) or set(m) != {"name", "values", "many"} or not isinstance(m["values"], list):
                raise BadRequest("a measure is {name, values, many}", code="bad_table")
            measures.append(Measure(m["name"], tuple(m["values"]), m["many"]))
        return TableSchema(obj["name"], tuple(obj["groups"]), tuple(measures), obj["max_groups"])
    except TypeError as exc:
        raise BadRequest(f"bad table: {exc}", code="bad_table") from None


def contributions(category: str, period: str, rows: Iterable[tuple[str, str, str, Mapping[str, Any]]]
                  ) -> tuple[list[Contribution], dict[str, set[str]]]:
    """The contributions of ``rows`` (``(subject, kind, group, body)`` held for ``period``)
    to ``category``'s table, and per subject the groups of the rows they drew on (to log the
    release in those patients' audit). A treatment counts only when its report names the
    category (a patient with several categories names none, so is in no table)."""
    check_category(category)
    treatments: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    trends: dict[str, dict[str, str]] = {}
    for subject, kind, group, body in rows:
        if kind == TREATMENT and body.get("category") == category:
            treatments.setdefault(subject, []).append((group, body))
        elif kind == SYMPTOM and isinstance(body.get("direction"), str):
            trends.setdefault(subject, {})[SYMPTOM_PREFIX + group] = body["direction"]
    out: list[Contribution] = []
    used: dict[str, set[str]] = {}
    for subject, reports in treatments.items():
        symptoms = trends.get(subject, {})
        used[subject] = {TREATMENT + "|" + g for g, _ in reports} | {SYMPTOM + "|" + s[len(SYMPTOM_PREFIX):]
                                                                       for s in symptoms}
        for group, body in reports:
            values: dict[str, Any] = dict(symptoms)
            for field in ("efficacy", "adherence", "status"):
                if isinstance(body.get(field), str):
                    values[field] = body[field]
            if isinstance(body.get("side_effects"), list):
                values["side_effects"] = tuple(body["side_effects"])
            out.append(Contribution(subject, group, period, values))
    return out, used


def _share(part: Sequence[Any], whole: Sequence[Any]) -> str | None:
    """``sum(part) / sum(whole)`` as a percentage with one decimal, rounded half up in
    integers (``"87.5"``), clamped to 0-100 (noisy values may be negative); None when a value
    it needs was suppressed or the whole is not positive."""
    if not all(type(v) is int for v in (*part, *whole)) or sum(whole) <= 0:
        return None
    p, w = sum(part), sum(whole)
    tenths = min(max((2000 * p + w) // (2 * w), 0), 1000)
    return f"{tenths // 10}.{tenths % 10}"


def patient_view(table: ReleasedTable | Mapping[str, Any], treatment: str | None = None) -> dict:
    """What ``rxfed insights`` shows of a published table: per treatment, ``reports``,
    ``efficacy`` and ``adherence`` bands, ``status``, ``share_improved`` (the share of
    efficacy reports that are medium or high, a percentage), ``side_effects`` (most reported
    first, suppressed ones last) and ``symptoms`` (each declared symptom's directions), with
    the release's ``nodes``, ``epsilon``, ``computed`` and ``period``."""
    obj = table.to_json() if isinstance(table, ReleasedTable) else dict(table)
    rows = obj["rows"]
    out = []
    for name in sorted(rows):
        if treatment is not None and name != treatment:
            continue
        row = rows[name]
        efficacy = row.get("efficacy", {})
        effects = sorted(row.get("side_effects", {}).items(),
                         key=lambda kv: (not isinstance(kv[1], int), -kv[1] if isinstance(kv[1], int) else 0, kv[0]))
        out.append({
            "treatment": name, "reports": row["reports"], "efficacy": efficacy,
            "adherence": row.get("adherence", {}), "status": row.get("status", {}),
            "share_improved": _share([efficacy.get(b) for b in ("medium", "high")],
                                     [efficacy.get(b) for b in LEVELS]),
            "side_effects": [{"name": k, "reports": v} for k, v in effects],
            "symptoms": {k[len(SYMPTOM_PREFIX):]: v for k, v in row.items() if k.startswith(SYMPTOM_PREFIX)},
        })
    return {"table": obj["table"], "period": obj["period"], "epsilon": obj["epsilon"], "nodes": obj["nodes"],
            "computed": obj["computed"], "suppressed_below": obj["suppressed_below"], "treatments": out}
