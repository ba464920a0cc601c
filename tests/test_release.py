"""Release rules (rxfed.protocol.release): bounded contribution, noise, suppression after
noise, and the privacy-budget ledger."""

from __future__ import annotations

from fractions import Fraction

import pytest
from dp_stats import SeededSource, assert_fits, laplace_cdf, laplace_pmf
from hypothesis import given, settings
from hypothesis import strategies as st

from rxfed.errors import BadRequest, Conflict
from rxfed.protocol import release as rel
from rxfed.protocol.canonical import canonical, loads
from rxfed.protocol.release import Contribution, Ledger, Measure, TableSchema


LEVELS = ("low", "medium", "high")
SCHEMA = TableSchema("treatment.outcome", groups=("metformin", "insulin", "sitagliptin"), max_groups=2, measures=(
    Measure("efficacy", LEVELS),
    Measure("adherence", LEVELS),
    Measure("status", ("ongoing", "stopped")),
    Measure("side_effects", ("nausea", "diarrhoea", "headache", "dizziness"), many=2),
))
P = "2026-11"


def cell(counts, group, measure, value=""):
    return counts[SCHEMA.cells.index((group, measure, value))]


def test_the_layout_and_the_sensitivity_follow_from_the_declaration():
    assert len(SCHEMA.cells) == 3 * (1 + 3 + 3 + 2 + 4)
    assert SCHEMA.cells[0] == ("metformin", "reports", "")
    # two groups a patient, each adding 1 to reports, one value of three measures, two side effects
    assert SCHEMA.sensitivity == 2 * (1 + 1 + 1 + 1 + 2)
    assert rel.noise_gamma(SCHEMA, "1/2") == Fraction(1, 24)


def test_a_patient_counts_once_per_group_and_period_even_when_signals_arrive_twice():
    first = Contribution("p1", "metformin", P, {"efficacy": "low"})
    again = Contribution("p1", "metformin", P, {"efficacy": "high"})
    b = rel.bound_contributions(SCHEMA, P, [first, again, again])
    assert cell(b.counts, "metformin", "reports") == 1
    assert cell(b.counts, "metformin", "efficacy", "high") == 1  # the last one given counts
    assert cell(b.counts, "metformin", "efficacy", "low") == 0
    assert (b.patients, b.records, b.dropped) == (1, 1, 2)


def test_records_outside_the_declaration_count_nowhere():
    b = rel.bound_contributions(SCHEMA, P, [
        Contribution("p1", "metformin", "2026-10", {"efficacy": "low"}),          # another period
        Contribution("p2", "aspirin", P, {"efficacy": "low"}),                    # undeclared group
        Contribution("p3", "insulin", P, {"efficacy": "great", "status": 3,       # undeclared values
                                          "side_effects": ["rash", "nausea"], "adherence": ["low"]}),
    ])
    assert sum(b.counts) == 2  # p3's report and its one declared side effect
    assert cell(b.counts, "insulin", "side_effects", "nausea") == 1
    assert b.dropped == 2


def test_groups_and_many_valued_measures_are_capped():
    b = rel.bound_contributions(SCHEMA, P, [
        Contribution("p1", g, P, {"side_effects": ["nausea", "diarrhoea", "headache", "dizziness", "nausea"]})
        for g in SCHEMA.groups
    ])
    assert sum(cell(b.counts, g, "reports") for g in SCHEMA.groups) == 2
    assert all(sum(cell(b.counts, g, "side_effects", v) for v in SCHEMA.measures[3].values) in (0, 2)
               for g in SCHEMA.groups)
    assert b.clipped == 1 + 2
    assert sum(b.counts) <= SCHEMA.sensitivity


contribution = st.builds(
    Contribution,
    patient=st.sampled_from(["p1", "p2", "p3", "p4"]),
    group=st.sampled_from(SCHEMA.groups + ("aspirin",)),
    period=st.sampled_from([P, "2026-12"]),
    values=st.fixed_dictionaries({}, optional={
        "efficacy": st.sampled_from(LEVELS + ("none",)),
        "status": st.sampled_from(("ongoing", "stopped")),
        "side_effects": st.lists(st.sampled_from(("nausea", "diarrhoea", "headache", "dizziness", "rash"))),
    }),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(contribution, max_size=30), st.sampled_from(["p1", "p2", "p3", "p4"]))
def test_one_patient_moves_each_cell_by_at_most_one_and_all_cells_by_at_most_the_sensitivity(records, patient):
    """The bound the noise is calibrated to: removing every record of one patient."""
    with_p = rel.bound_contributions(SCHEMA, P, records).counts
    without = rel.bound_contributions(SCHEMA, P, [c for c in records if c.patient != patient]).counts
    diffs = [a - b for a, b in zip(with_p, without)]
    assert all(d in (0, 1) for d in diffs)
    assert sum(diffs) <= SCHEMA.sensitivity


operation = st.one_of(contribution.map(lambda c: ("put", c)),
                      st.sampled_from(["p1", "p2", "p3", "p4"]).map(lambda p: ("remove", p)))


@settings(max_examples=150, deadline=None)
@given(st.lists(operation, max_size=40))
def test_counts_kept_up_to_date_equal_a_recount(ops):
    """TableCounts after any sequence of records and removals holds what bound_contributions
    gives for the records still held."""
    live = rel.TableCounts(SCHEMA, P)
    held: list[Contribution] = []
    for kind, x in ops:
        if kind == "put":
            live.put(x)
            held.append(x)
        else:
            live.remove(x)
            held = [c for c in held if c.patient != x]
    a, b = live.bounded(), rel.bound_contributions(SCHEMA, P, held)
    assert (a.counts, a.patients, a.records, a.clipped) == (b.counts, b.patients, b.records, b.clipped)


def test_a_removed_patient_is_in_no_later_count():
    live = rel.TableCounts(SCHEMA, P)
    live.put(Contribution("p1", "metformin", P, {"efficacy": "high", "side_effects": ["nausea"]}))
    live.put(Contribution("p2", "metformin", P, {"efficacy": "high"}))
    assert cell(live.bounded().counts, "metformin", "efficacy", "high") == 2
    live.remove("p1")
    counts = live.bounded().counts
    assert cell(counts, "metformin", "efficacy", "high") == 1 and cell(counts, "metformin", "reports") == 1
    assert cell(counts, "metformin", "side_effects", "nausea") == 0
    assert not live.put(Contribution("p3", "metformin", "2026-10", {}))  # another period: not held


def test_noise_shares_of_the_round_sum_to_discrete_laplace_at_the_declared_scale():
    schema = TableSchema("t", groups=("a",), measures=())  # one cell, sensitivity 1
    rng = SeededSource(11)
    draws = [sum(rel.noise_share(schema, "1/3", 2, rng)[0] for _ in range(2)) for _ in range(15_000)]
    assert_fits(draws, laplace_pmf(3.0), range(-45, 46), laplace_cdf(3.0))


def test_suppression_comes_after_the_noise():
    """A true 5 that the noise made 23 is shown as 23; a true 40 that came out 10 is "<11";
    the publishing step never sees a true count."""
    schema = TableSchema("t", groups=("a", "b"), measures=(Measure("efficacy", LEVELS),))
    table = rel.publish(schema, P, [23, 10, 11, -4, 0, 11, 12, 13], epsilon="1/2", nodes=3, computed=1764547200)
    assert table.rows["a"] == {"reports": 23, "efficacy": {"low": "<11", "medium": 11, "high": "<11"}}
    assert table.rows["b"] == {"reports": "<11", "efficacy": {"low": 11, "medium": 12, "high": 13}}
    doc = table.to_json()
    assert doc["epsilon"] == "1/2" and doc["nodes"] == 3 and doc["suppressed_below"] == 11
    assert loads(canonical(doc)) == doc
    assert rel.suppress(10) == "<11" and rel.suppress(11) == 11 and rel.suppress(-1) == "<11"
    with pytest.raises(BadRequest):
        rel.publish(schema, P, [1, 2], epsilon="1/2", nodes=3, computed=0)


# -- the ledger ------------------------------------------------------------------------------


def test_the_ledger_allows_releases_until_the_period_is_spent_then_refuses():
    ledger = Ledger.new("1")
    for i in range(10):
        plan = rel.plan_release(ledger, "0.1", P, release=f"r{i}", at=i)
        assert plan.allowed, plan.reason
        ledger = plan.ledger
    assert ledger.spent(P) == 1 and ledger.remaining(P) == 0  # exactly: ten times 0.1 is 1
    refused = rel.plan_release(ledger, "0.1", P, release="r10", at=10)
    assert not refused.allowed and refused.code == "budget_exhausted"
    assert refused.ledger is ledger and "0.1" not in refused.reason  # the ledger is unchanged
    assert "1/10" in refused.reason
    assert rel.plan_release(ledger, "1/1000", P, release="r11", at=11).allowed is False
    assert rel.plan_release(ledger, "0.5", "2026-12", release="r12", at=12).allowed  # another period


def test_a_release_larger_than_what_is_left_is_refused_even_on_a_fresh_period():
    ledger = Ledger.new("1/2")
    assert not rel.plan_release(ledger, "0.6", P, release="r", at=0).allowed
    plan = rel.plan_release(ledger, "1/2", P, release="r", at=0)
    assert plan.allowed and plan.remaining == 0


@pytest.mark.parametrize("epsilon, period, release, code", [
    (0.1, P, "r", "bad_epsilon"),
    ("0", P, "r", "bad_epsilon"),
    ("-1", P, "r", "bad_epsilon"),
    ("nan", P, "r", "bad_epsilon"),
    ("1e400", P, "r", "bad_epsilon"),
    ("1/2", "2026-13", "r", "bad_period"),
    ("1/2", "november", "r", "bad_period"),
    ("1/2", P, "", "bad_release"),
    ("1/2", P, "a/b", "bad_release"),
])
def test_bad_input_is_a_clear_error_and_changes_nothing(epsilon, period, release, code):
    ledger = Ledger.new("1")
    with pytest.raises(BadRequest) as info:
        rel.plan_release(ledger, epsilon, period, release=release, at=0)
    assert info.value.code == code and info.value.status == 400
    assert ledger.entries == ()


def test_a_release_id_is_charged_once():
    plan = rel.plan_release(Ledger.new("1"), "1/4", P, release="r1", at=0)
    with pytest.raises(Conflict):
        rel.plan_release(plan.ledger, "1/4", P, release="r1", at=1)


def test_the_ledger_round_trips_through_json_exactly():
    ledger = rel.plan_release(Ledger.new("2"), "1/3", P, release="r1", at=5).ledger
    doc = loads(canonical(ledger.to_json()))
    assert doc == {"budget": "2", "entries": [{"release": "r1", "period": P, "epsilon": "1/3", "at": 5}]}
    assert Ledger.from_json(doc) == ledger
    for bad in ({}, {"budget": "1", "entries": [{"release": "r"}]}, {"budget": 0.5, "entries": []}):
        with pytest.raises(BadRequest):
            Ledger.from_json(bad)


def test_the_release_digest_binds_table_period_epsilon_and_release():
    base = rel.release_digest(SCHEMA, P, "1/2", "r1")
    assert base == rel.release_digest(SCHEMA, P, "0.5", "r1")
    others = {rel.release_digest(SCHEMA, "2026-12", "1/2", "r1"), rel.release_digest(SCHEMA, P, "1/3", "r1"),
              rel.release_digest(SCHEMA, P, "1/2", "r2"),
              rel.release_digest(TableSchema("t", groups=("a",), measures=()), P, "1/2", "r1")}
    assert base not in others and len(others) == 4


@pytest.mark.parametrize("build", [
    lambda: TableSchema("t", groups=(), measures=()),
    lambda: TableSchema("t", groups=("a", "a"), measures=()),
    lambda: TableSchema("t", groups=("A",), measures=()),
    lambda: TableSchema("t", groups=("a",), measures=(Measure("reports", ("x",)),)),
    lambda: TableSchema("t", groups=("a",), measures=(), max_groups=0),
    lambda: Measure("m", ("x",), many=2),
    lambda: TableSchema("t", groups=tuple(f"g{i}" for i in range(5000)), measures=(Measure("m", LEVELS * 1),
                                                                                  Measure("n", ("a", "b", "c", "d",
                                                                                                "e", "f", "g", "h",
                                                                                                "i", "j", "k")))),
])
def test_a_bad_declaration_is_refused(build):
    with pytest.raises(BadRequest):
        build()
