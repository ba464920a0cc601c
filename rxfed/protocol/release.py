"""Release rules for federated insights tables, as pure functions (spec/privacy.md).

A *table* (:class:`TableSchema`) is declared before any data is seen: its groups (treatment
names), its measures and each measure's values, and how many groups one patient may count
in per period. Declaring the cells in advance matters: a cell that exists only because some
patient reported it would itself give that patient away, whatever noise it carries.

* :func:`bound_contributions`: one record per patient, group and period (the last one given
  wins, so a signal delivered twice counts once), at most ``max_groups`` groups per patient,
  values outside the declared ones dropped, multi-valued measures capped; integer counts.
  So one patient changes each cell by at most 1 and at most :attr:`TableSchema.sensitivity`
  cells in all (the L1 sensitivity the noise is calibrated to). :class:`TableCounts` keeps
  the same counts as records arrive and patients are removed (a revoked grant).
* :func:`noise_share`: this node's share of the noise for every cell, exact (rxfed.crypto.noise).
* :func:`suppress` / :func:`publish`: after the noise, never before, values under ``k``
  (11) are shown as ``"<11"``.
* :func:`plan_release`: the privacy-budget ledger's rule: a release of ``epsilon`` in a
  period is allowed while the period's budget covers it, and refused once it is spent.

Epsilons are exact fractions (``"0.1"`` ten times is exactly ``1``), so rounding can never
let a ledger spend more than its budget.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import attrs

from rxfed.crypto import b64e, sha256
from rxfed.crypto.noise import CsprngSource, RandomSource, polya_difference, rational
from rxfed.errors import BadRequest, Conflict
from rxfed.protocol.canonical import canonical

#: Noisy values under this are shown as "<11" (DESIGN.md, threat model 4).
SUPPRESS_BELOW = 11
PERIOD = re.compile(r"(?:19|20)[0-9]{2}-(?:0[1-9]|1[0-2])")
_NAME = re.compile(r"[a-z0-9][a-z0-9 ._-]{0,63}")
_RELEASE = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Most cells one table declares (the secure aggregation round's limit).
MAX_CELLS = 1 << 16
#: The largest epsilon one release or one period's budget may name.
MAX_EPSILON = Fraction(100)


class BadTable(BadRequest):
    code = "bad_table"


def check_period(period: Any) -> str:
    """A period is a calendar month, ``YYYY-MM``."""
    if not isinstance(period, str) or not PERIOD.fullmatch(period):
        raise BadRequest("a period is a calendar month, YYYY-MM", code="bad_period")
    return period


def epsilon_of(value: Any, name: str = "epsilon") -> Fraction:
    """An epsilon as an exact fraction in (0, MAX_EPSILON]: an int, a Fraction or a decimal
    string such as ``"0.5"``; floats are refused."""
    try:
        eps = rational(value, name)
    except (TypeError, ValueError) as exc:
        raise BadRequest(str(exc), code="bad_epsilon") from None
    if not 0 < eps <= MAX_EPSILON:
        raise BadRequest(f"{name} must be above 0 and at most {MAX_EPSILON}", code="bad_epsilon")
    return eps


def epsilon_text(eps: Fraction) -> str:
    """An exact epsilon as text: ``"1/2"``, ``"3"``."""
    return str(eps)


def _names(values: Any, where: str) -> tuple[str, ...]:
    values = tuple(values)
    if not values or len(set(values)) != len(values) or not all(isinstance(v, str) and _NAME.fullmatch(v)
                                                                 for v in values):
        raise BadTable(f"{where}: distinct names (lower case, at most 64 characters)")
    return values


@attrs.frozen
class Measure:
    """One field of a record: its declared values each get a cell. ``many`` is 0 for a
    field with one value per record, else how many distinct values one record may count."""

    name: str
    values: tuple[str, ...] = attrs.field(converter=tuple)
    many: int = 0

    def __attrs_post_init__(self) -> None:
        _names([self.name], "measure name")
        _names(self.values, f"values of {self.name}")
        if isinstance(self.many, bool) or not isinstance(self.many, int) or not 0 <= self.many <= len(self.values):
            raise BadTable(f"many of {self.name}: 0, or up to the number of values")

    @property
    def weight(self) -> int:
        """Cells one record can add 1 to."""
        return self.many or 1


@attrs.frozen
class TableSchema:
    """The declared layout of a table: every group has a ``reports`` cell, then one cell per
    value of each measure, in the order given."""

    name: str
    groups: tuple[str, ...] = attrs.field(converter=tuple)
    measures: tuple[Measure, ...] = attrs.field(converter=tuple)
    max_groups: int = 1

    def __attrs_post_init__(self) -> None:
        _names([self.name], "table name")
        _names(self.groups, "groups")
        if len({m.name for m in self.measures}) != len(self.measures) or "reports" in {m.name for m in self.measures}:
            raise BadTable("measures: distinct names, none called reports")
        if isinstance(self.max_groups, bool) or not isinstance(self.max_groups, int) or not 1 <= self.max_groups:
            raise BadTable("max_groups: at least 1")
        if len(self.cells) > MAX_CELLS:
            raise BadTable(f"a table has at most {MAX_CELLS} cells")

    @property
    def cells(self) -> tuple[tuple[str, str, str], ...]:
        """(group, measure, value) for every cell, ``(group, "reports", "")`` first in each group."""
        return tuple(cell for group in self.groups for cell in
                     [(group, "reports", "")] + [(group, m.name, v) for m in self.measures for v in m.values])

    @property
    def sensitivity(self) -> int:
        """How many cells one patient's records can add 1 to (the L1 sensitivity)."""
        return min(self.max_groups, len(self.groups)) * (1 + sum(m.weight for m in self.measures))

    def to_json(self) -> dict:
        return {"name": self.name, "groups": list(self.groups), "max_groups": self.max_groups,
                "measures": [{"name": m.name, "values": list(m.values), "many": m.many} for m in self.measures]}

    @property
    def digest(self) -> str:
        return b64e(sha256(b"rxfed-table|" + canonical(self.to_json())))


@attrs.frozen
class Contribution:
    """One record of one patient (a pseudonymous id local to this node) for a period: the
    group (treatment) and the measures' values as the signal carried them."""

    patient: str
    group: str
    period: str
    values: Mapping[str, str | Sequence[str]] = attrs.field(factory=dict)


@attrs.frozen
class BoundedCounts:
    """The true counts of one node, cell by cell in :attr:`TableSchema.cells` order, and what
    bounding did (for the operator: records kept, patients, records dropped or clipped)."""

    counts: tuple[int, ...]
    patients: int
    records: int
    dropped: int
    clipped: int


def _rank(*parts: str) -> bytes:
    # A fixed order that favours no treatment or value, for choosing which of a patient's
    # records (or values) to keep when they have more than the table counts.
    return hashlib.blake2b("\x00".join(parts).encode(), digest_size=8, person=b"rxfed-bound").digest()


class _Layout:
    """Where each record's values land: the offset of each group's cells, and per measure
    the offset of each declared value within its group."""

    def __init__(self, schema: TableSchema):
        self.schema = schema
        stride = 1 + sum(len(m.values) for m in schema.measures)
        self.size = stride * len(schema.groups)
        self.base = {group: i * stride for i, group in enumerate(schema.groups)}
        self.singles: list[tuple[str, dict[str, int]]] = []
        self.multis: list[tuple[str, int, dict[str, int]]] = []
        offset = 1
        for m in schema.measures:
            cell = {v: offset + j for j, v in enumerate(m.values)}
            if m.many:
                self.multis.append((m.name, m.many, cell))
            else:
                self.singles.append((m.name, cell))
            offset += len(m.values)

    def count(self, patient: str, records: Mapping[str, Mapping[str, Any]], counts: list[int],
              sign: int) -> tuple[int, int]:
        """Add ``sign`` (1 or -1) to every cell one patient's records count in, at most
        ``max_groups`` of them (chosen by a fixed order that favours no group); return how
        many records counted and how many records or values were clipped."""
        groups: Iterable[str] = records
        clipped = 0
        if len(records) > self.schema.max_groups:
            groups = sorted(records, key=lambda g: _rank(patient, g))[:self.schema.max_groups]
            clipped = len(records) - self.schema.max_groups
        n = 0
        for group in groups:
            n += 1
            values = records[group]
            at = self.base[group]
            counts[at] += sign
            for name, cell in self.singles:
                value = values.get(name)
                if value.__class__ is str and value in cell:
                    counts[at + cell[value]] += sign
            for name, many, cell in self.multis:
                value = values.get(name)
                if not isinstance(value, (list, tuple)):
                    continue
                chosen = sorted({v for v in value if v.__class__ is str and v in cell}, key=cell.__getitem__)
                if len(chosen) > many:
                    # ``many`` values in a row of the declared order, from a start fixed by
                    # the record: each value is as likely to be kept as any other
                    clipped += 1
                    start = int.from_bytes(_rank(patient, group), "big") % len(chosen)
                    chosen = (chosen[start:] + chosen[:start])[:many]
                for v in chosen:
                    counts[at + cell[v]] += sign
        return n, clipped


def bound_contributions(schema: TableSchema, period: str, contributions: Iterable[Contribution]) -> BoundedCounts:
    """Count ``contributions`` into the table's cells with each patient's influence bounded
    (see the module's docstring). Records of another period or an undeclared group are
    dropped; values outside the declared ones count in no cell. :class:`TableCounts` keeps
    the same counts up to date one record at a time."""
    check_period(period)
    layout = _Layout(schema)
    by_patient: dict[str, dict[str, Mapping[str, Any]]] = {}
    dropped = 0
    for c in contributions:
        if c.period != period or c.group not in layout.base:
            dropped += 1
            continue
        mine = by_patient.get(c.patient)
        if mine is None:
            mine = by_patient[c.patient] = {}
        elif c.group in mine:
            dropped += 1  # a second record of one patient, group and period: the last counts
        mine[c.group] = c.values
    counts = [0] * layout.size
    records = clipped = 0
    for patient, mine in by_patient.items():
        n, k = layout.count(patient, mine, counts, 1)
        records += n
        clipped += k
    return BoundedCounts(tuple(counts), patients=len(by_patient), records=records, dropped=dropped, clipped=clipped)


class TableCounts:
    """One node's counts for a table and period, kept up to date as records arrive and
    patients leave: :meth:`put` a record (a patient's later record of a group replaces the
    earlier one), :meth:`remove` a patient (a revoked grant), and :meth:`bounded` gives what
    :func:`bound_contributions` would give for the records held, so a release reads its
    counts instead of recounting every record."""

    def __init__(self, schema: TableSchema, period: str):
        self.schema, self.period = schema, check_period(period)
        self._layout = _Layout(schema)
        self._counts = [0] * self._layout.size
        self._records: dict[str, dict[str, Mapping[str, Any]]] = {}
        self._counted: dict[str, tuple[int, int]] = {}  # patient -> records counted, clipped
        self._dropped = 0

    def put(self, c: Contribution) -> bool:
        """Hold one record; False (and counted as dropped) when it is of another period or
        an undeclared group."""
        if c.period != self.period or c.group not in self._layout.base:
            self._dropped += 1
            return False
        mine = self._records.get(c.patient)
        if mine is None:
            mine = self._records[c.patient] = {}
        else:
            self._layout.count(c.patient, mine, self._counts, -1)  # take the patient out ...
            if c.group in mine:
                self._dropped += 1
        mine[c.group] = c.values
        self._counted[c.patient] = self._layout.count(c.patient, mine, self._counts, 1)  # ... and back in
        return True

    def remove(self, patient: str) -> None:
        """Take every record of ``patient`` out of the counts (a revoked grant)."""
        mine = self._records.pop(patient, None)
        if mine is not None:
            self._layout.count(patient, mine, self._counts, -1)
            del self._counted[patient]

    def bounded(self) -> BoundedCounts:
        return BoundedCounts(tuple(self._counts), patients=len(self._counted),
                             records=sum(r for r, _ in self._counted.values()), dropped=self._dropped,
                             clipped=sum(c for _, c in self._counted.values()))


def noise_gamma(schema: TableSchema, epsilon: Any) -> Fraction:
    """The noise parameter: discrete Laplace with scale sensitivity / epsilon, so P(x) is
    proportional to exp(-gamma |x|) with gamma = epsilon / sensitivity."""
    return epsilon_of(epsilon) / schema.sensitivity


def noise_share(schema: TableSchema, epsilon: Any, shares: int, rng: RandomSource | None = None) -> list[int]:
    """This node's noise for every cell: NB(1/shares) - NB(1/shares) each, so that any
    ``shares`` nodes' noise sums to exactly discrete Laplace (sensitivity / epsilon)."""
    gamma = noise_gamma(schema, epsilon)
    rng = rng or CsprngSource()
    return [polya_difference(shares, gamma, rng) for _ in schema.cells]


def suppress(value: int, k: int = SUPPRESS_BELOW) -> int | str:
    """A noisy value as shown: itself, or ``"<k"`` when under ``k`` (negative ones too)."""
    return value if value >= k else f"<{k}"


@attrs.frozen
class ReleasedTable:
    """A published table: per group, ``reports`` and each measure's values, suppressed."""

    name: str
    period: str
    epsilon: Fraction
    nodes: int
    computed: int
    rows: Mapping[str, Mapping[str, Any]]
    k: int = SUPPRESS_BELOW

    def to_json(self) -> dict:
        return {"table": self.name, "period": self.period, "epsilon": epsilon_text(self.epsilon),
                "nodes": self.nodes, "computed": self.computed, "suppressed_below": self.k,
                "rows": {g: dict(r) for g, r in self.rows.items()}}


def publish(schema: TableSchema, period: str, noisy_total: Sequence[int], *, epsilon: Any, nodes: int,
            computed: int, k: int = SUPPRESS_BELOW) -> ReleasedTable:
    """The table as shown from the federation's noisy totals: suppression comes here, after
    the noise, so no true count is ever compared with ``k``."""
    cells = schema.cells
    if len(noisy_total) != len(cells) or not all(type(v) is int for v in noisy_total):
        raise BadTable(f"the totals are {len(cells)} integers")
    rows: dict[str, dict[str, Any]] = {}
    for (group, measure, value), total in zip(cells, noisy_total):
        row = rows.setdefault(group, {})
        if measure == "reports":
            row["reports"] = suppress(total, k)
        else:
            row.setdefault(measure, {})[value] = suppress(total, k)
    return ReleasedTable(schema.name, check_period(period), epsilon_of(epsilon), nodes, computed, rows, k)


def is_published(schema: TableSchema, table: Any, *, period: str, epsilon: Any, max_nodes: int) -> bool:
    """Whether ``table`` (a published table's JSON, from another node) is one :func:`publish`
    makes for ``schema``, ``period`` and ``epsilon`` from some noisy totals: every declared
    cell and nothing else, each a count of at least ``SUPPRESS_BELOW`` or suppressed, of at
    most ``max_nodes`` nodes. A node keeps for its patients only such a table, so a hostile
    aggregator can make them read no count below k and nothing the page cannot show."""
    if not isinstance(table, dict) or not isinstance(table.get("rows"), dict):
        return False
    nodes, computed = table.get("nodes"), table.get("computed")
    if type(nodes) is not int or not 1 <= nodes <= max_nodes or type(computed) is not int or computed < 0:
        return False
    hidden = suppress(0)
    totals = []
    for group, measure, value in schema.cells:
        row = table["rows"].get(group)
        cell = row.get(measure) if isinstance(row, dict) else None
        if measure != "reports":
            cell = cell.get(value) if isinstance(cell, dict) else None
        if cell == hidden:
            totals.append(0)
        elif type(cell) is int and cell >= SUPPRESS_BELOW:
            totals.append(cell)
        else:
            return False
    try:
        again = publish(schema, period, totals, epsilon=epsilon, nodes=nodes, computed=computed)
    except BadRequest:
        return False
    return again.to_json() == table


# -- the privacy-budget ledger ---------------------------------------------------------------


@attrs.frozen
class LedgerEntry:
    release: str
    period: str
    epsilon: Fraction
    at: int


@attrs.frozen
class Ledger:
    """A node's privacy budget: ``budget`` epsilon per period, and every release charged."""

    budget: Fraction
    entries: tuple[LedgerEntry, ...] = ()

    @classmethod
    def new(cls, budget: Any) -> Ledger:
        return cls(epsilon_of(budget, "budget"))

    def spent(self, period: str) -> Fraction:
        return sum((e.epsilon for e in self.entries if e.period == period), Fraction(0))

    def remaining(self, period: str) -> Fraction:
        return max(self.budget - self.spent(period), Fraction(0))

    def to_json(self) -> dict:
        return {"budget": epsilon_text(self.budget),
                "entries": [{"release": e.release, "period": e.period, "epsilon": epsilon_text(e.epsilon), "at": e.at}
                            for e in self.entries]}

    @classmethod
    def from_json(cls, obj: Any) -> Ledger:
        if not isinstance(obj, dict) or set(obj) != {"budget", "entries"} or not isinstance(obj["entries"], list):
            raise BadRequest("a ledger is {budget, entries}", code="bad_ledger")
        entries = []
        for e in obj["entries"]:
            if not isinstance(e, dict) or set(e) != {"release", "period", "epsilon", "at"} or type(e["at"]) is not int:
                raise BadRequest("a ledger entry is {release, period, epsilon, at}", code="bad_ledger")
            entries.append(LedgerEntry(e["release"], check_period(e["period"]), epsilon_of(e["epsilon"]), e["at"]))
        return cls(epsilon_of(obj["budget"], "budget"), tuple(entries))


@attrs.frozen
class ReleasePlan:
    """The ledger's answer: ``allowed`` with the ledger that records the release, or refused
    (``code``, ``reason``) with the ledger unchanged."""

    allowed: bool
    ledger: Ledger
    remaining: Fraction
    code: str | None = None
    reason: str | None = None


def plan_release(ledger: Ledger, epsilon: Any, period: str, *, release: str, at: int) -> ReleasePlan:
    """May this node take part in a release of ``epsilon`` for ``period``? Charged when the
    node commits to it (before it sends its masked input), so a round abandoned later still
    counts: the noise it drew may have been seen in part (spec/privacy.md §4)."""
    eps = epsilon_of(epsilon)
    check_period(period)
    if not isinstance(release, str) or not _RELEASE.fullmatch(release):
        raise BadRequest("a release id is 1 to 64 characters of base64url", code="bad_release")
    if type(at) is not int or at < 0:
        raise BadRequest("at is a time in seconds", code="bad_release")
    if any(e.release == release for e in ledger.entries):
        raise Conflict(f"release {release} is already in the ledger", code="release_exists")
    remaining = ledger.remaining(period)
    if eps > remaining:
        return ReleasePlan(False, ledger, remaining, code="budget_exhausted",
                           reason=f"period {period} has {epsilon_text(remaining)} of its budget "
                                  f"{epsilon_text(ledger.budget)} left, the release needs {epsilon_text(eps)}")
    entry = LedgerEntry(release, period, eps, at)
    return ReleasePlan(True, attrs.evolve(ledger, entries=ledger.entries + (entry,)), remaining - eps)


def release_digest(schema: TableSchema, period: str, epsilon: Any, release: str) -> str:
    """What a secure aggregation round sums (its spec's ``table``): the table's layout, the
    period, the epsilon and the release id, so every node agrees on all four."""
    return b64e(sha256(b"rxfed-release|" + canonical({"table": schema.digest, "period": check_period(period),
                                                      "epsilon": epsilon_text(epsilon_of(epsilon)),
                                                      "release": release})))
