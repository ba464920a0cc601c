"""rxfed-tally against rxfed's plugin manager and a real node, with rxfed's pytest fixtures."""

from __future__ import annotations

import pytest

from rxfed.consent.signals import Signal
from rxfed_tally import NAME, Tally


def diagnosis(subject: str, category: str, *, grant: str = "g1", purpose: str = "research",
              kind: str = "diagnosis.category") -> Signal:
    return Signal(kind=kind, body={"system": "icd10", "category": category, "source": "icd10"}, subject=subject,
                  purpose=purpose, grant=grant, origin="home.example", received=1_700_000_000)


@pytest.fixture
def tally():
    return Tally()


@pytest.fixture
def plugins(rxfed_plugins_factory, tally):
    return rxfed_plugins_factory(tally)


async def test_counts_with_small_cells_suppressed(plugins, tally):
    assert plugins.recipients("diagnosis.category", "research") == [NAME]
    signals = [diagnosis(f"s{i}", "E11") for i in range(12)] + [diagnosis(f"t{i}", "G40") for i in range(3)]
    assert await plugins.deliver_signals(NAME, signals)
    assert tally.counts() == {"E11": 12, "G40": None}
    assert tally.counts(k=1) == {"E11": 12, "G40": 3}


async def test_a_subject_counts_once_per_category(plugins, tally):
    assert await plugins.deliver_signals(NAME, [diagnosis("s1", "E11"), diagnosis("s1", "E11", grant="g2")])
    assert tally.counts(k=1) == {"E11": 1}


async def test_revocation_deletes_the_subjects_entries(plugins, tally):
    await plugins.deliver_signals(NAME, [diagnosis(f"s{i}", "E11") for i in range(11)])
    await plugins.deliver_signals(NAME, [diagnosis("s0", "J45", grant="g2")])
    assert tally.counts() == {"E11": 11, "J45": None}
    assert await plugins.consent_revoked(NAME, "g1", "s0")
    assert tally.counts() == {"E11": None, "J45": None}  # s0 still counts for J45 under g2
    assert tally.counts(k=1) == {"E11": 10, "J45": 1}
    assert await plugins.consent_revoked(NAME, "g2", "s0")
    assert tally.counts(k=1) == {"E11": 10} and tally.held() == 10


async def test_other_kinds_and_purposes_are_never_handed_to_it(plugins, tally):
    assert NAME not in plugins.recipients("treatment.outcome", "research")
    assert NAME not in plugins.recipients("diagnosis.category", "marketing")
    assert plugins.recipients("diagnosis.category", "research", only="someone-else") == []
    # Even a caller that skips recipients() cannot hand it signals outside its manifest.
    assert not await plugins.deliver_signals(NAME, [diagnosis("s1", "E11", purpose="marketing")])
    assert not await plugins.deliver_signals(NAME, [diagnosis("s1", "E11", kind="treatment.outcome")])
    assert tally.held() == 0


@pytest.fixture
def rxfed_test_plugins(tally):
    return [tally]


async def test_a_node_loads_it(rxfed_node):
    plugins = rxfed_node.state.plugins
    assert plugins.manifests()[NAME].reads == ("diagnosis.category",)
    assert plugins.recipients("diagnosis.category", "research", only=NAME) == [NAME]


def test_the_module_is_the_entry_point_plugin():
    import rxfed_tally

    assert rxfed_tally.rxfed_plugin_manifest().name == NAME
    assert rxfed_tally.counts() == {}


async def test_each_node_of_a_federation_keeps_its_own_tally(rxfed_federation):
    a, b = await rxfed_federation("a", "b", plugins=lambda node: [Tally()])
    tallies = [node.state.plugins.pm.get_plugin(NAME) for node in (a, b)]
    assert all(isinstance(t, Tally) for t in tallies) and tallies[0] is not tallies[1]
    signal = diagnosis("s1", "E11")
    assert await a.state.plugins.deliver_signals(NAME, [signal])
    assert tallies[0].counts(k=1) == {"E11": 1} and tallies[1].counts(k=1) == {}


async def test_a_patient_grants_and_revokes_across_two_nodes(rxfed_federation, tmp_path):
    """The whole path a plugin author relies on: a patient on node a grants diagnosis
    categories for research to the tally on node b, then revokes."""
    import asyncio

    from rxfed.client import PatientClient
    from rxfed.client.consent import PatientConsent
    from rxfed.testing import builtin_plugins

    a, b = await rxfed_federation("a", "b", plugins=lambda node: [Tally()])
    tally_b = b.state.plugins.pm.get_plugin(NAME)

    async def until(check):
        for _ in range(200):
            if check():
                return
            await asyncio.sleep(0.05)
        raise AssertionError("not in time")

    patient, _code = await PatientClient.register(a.url, tmp_path / "patient", "a long pass phrase", kdf="min")
    async with patient:
        await patient.add_condition("E11.9")
        consent = PatientConsent(patient, plugins=builtin_plugins())
        granted = await consent.grant("diagnosis.category", "research", f"plugin:{b.node_id}/tally")
        await until(lambda: tally_b.counts(k=1) == {"E11": 1})
        for _ in range(200):  # b reports the use to a in its own transaction, after counting
            if "used" in [e["event"] for e in (await consent.audit()).entries]:
                break
            await asyncio.sleep(0.05)
        await consent.revoke(granted["grant"])
        await until(lambda: tally_b.held() == 0)
        events = [e["event"] for e in (await consent.audit()).entries]
        assert events[:3] == ["granted", "shared", "used"] and "revoked" in events
