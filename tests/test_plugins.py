"""The plugin manager: loading, manifests, and isolation of plugins that raise, hang or lie."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from rxfed import hookimpl
from rxfed.consent.signals import Field, Signal, SignalKind
from rxfed.plugins import PluginManifest, PresendWarning, RxfedPlugins

KIND = "test.mood"
MOOD = SignalKind(KIND, {"mood": Field("choice", choices=("good", "bad", "ZQXSECRET"))}, description="a test kind")
#: Put in signal bodies and subjects; must never appear in a log line or a status.
SECRET = "ZQXSECRET"


def mood(subject: str = "subject-1", value: str = SECRET, *, purpose: str = "research") -> Signal:
    return Signal(kind=KIND, body={"mood": value}, subject=f"{subject}-{SECRET}", purpose=purpose, grant="g1",
                  origin="home.example", received=1_700_000_000)


class Receiver:
    """A node plugin reading ``test.mood`` for research; keeps what it is handed."""

    def __init__(self, name: str = "good"):
        self.name = name
        self.received: list[Signal] = []
        self.revoked: list[tuple[str, str]] = []

    @hookimpl
    def rxfed_plugin_manifest(self):
        return PluginManifest(name=self.name, version="1.0", reads=(KIND,), purposes=("research",))

    @hookimpl
    def rxfed_signals_received(self, signals):
        self.received.extend(signals)

    @hookimpl
    def rxfed_consent_revoked(self, grant, subject):
        self.revoked.append((grant, subject))


class Raiser(Receiver):
    @hookimpl
    def rxfed_signals_received(self, signals):
        raise ValueError(f"cannot handle {signals[0].body['mood']} from {signals[0].subject}")

    @hookimpl
    def rxfed_consent_revoked(self, grant, subject):
        raise KeyError(subject)


class Flaky(Receiver):
    """Fails while ``failing`` is set."""

    failing = True

    @hookimpl
    def rxfed_signals_received(self, signals):
        if self.failing:
            raise RuntimeError("flaky")
        self.received.extend(signals)


class SyncHang(Receiver):
    """Blocks a worker thread until released (or 5 s)."""

    def __init__(self, name: str = "hung"):
        super().__init__(name)
        self.release = threading.Event()
        self.entered = 0
        self._lock = threading.Lock()

    @hookimpl
    def rxfed_signals_received(self, signals):
        with self._lock:
            self.entered += 1
        self.release.wait(5)


class AsyncHang(Receiver):
    def __init__(self, name: str = "slow", *, stubborn: bool = False):
        super().__init__(name)
        self.stubborn = stubborn

    @hookimpl
    async def rxfed_signals_received(self, signals):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            if not self.stubborn:
                raise
            await asyncio.sleep(1)  # swallows the cancellation and carries on


class Kinds:
    """A vocabulary plugin defining the test kind, a SNOMED mapping and a pre-send check."""

    @hookimpl
    def rxfed_signal_kinds(self):
        return [MOOD]

    @hookimpl
    def rxfed_snomed_icd10_map(self):
        return {"44054006": "E11"}

    @hookimpl
    def rxfed_derive_signals(self, kind, records, today):
        return [{"mood": "good"}] if kind == KIND else None

    @hookimpl
    def rxfed_presend_check(self, text):
        return [PresendWarning("test", "careful")] if "stop" in text else []


class BrokenVocabulary:
    @hookimpl
    def rxfed_signal_kinds(self):
        raise RuntimeError("kinds exploded")

    @hookimpl
    def rxfed_snomed_icd10_map(self):
        return ["not", "a", "dict"]

    @hookimpl
    def rxfed_derive_signals(self, kind, records, today):
        return [{"mood": "terrible"}]  # does not fit the kind

    @hookimpl
    def rxfed_presend_check(self, text):
        raise RuntimeError(text)


class WrongKinds:
    @hookimpl
    def rxfed_signal_kinds(self):
        return {"name": KIND}


@pytest.fixture
def make_plugins():
    made: list[RxfedPlugins] = []
    hung: list[SyncHang] = []

    def make(*plugins: Receiver | object, **options) -> RxfedPlugins:
        manager = RxfedPlugins(entry_points=False, **{"timeout": 0.2, **options})
        for plugin in plugins:
            manager.register(plugin, getattr(plugin, "name", None))
            if isinstance(plugin, SyncHang):
                hung.append(plugin)
        made.append(manager)
        return manager

    yield make
    for plugin in hung:
        plugin.release.set()
    for manager in made:
        manager.close()


def status(plugins: RxfedPlugins, name: str):
    return next(row for row in plugins.status() if row.name == name)


def test_entry_points_load_third_party_and_builtin_plugins():
    plugins = RxfedPlugins()
    try:
        assert {"sqlite", "tally"} <= set(plugins.names())
        assert plugins.manifests()["tally"].reads == ("diagnosis.category",)
        assert "sqlite" in plugins.storage_backends()
    finally:
        plugins.close()


def test_disabled_plugins_are_blocked_by_entry_point_name():
    plugins = RxfedPlugins(disabled=["tally"])
    try:
        assert "tally" not in plugins.names() and "tally" not in plugins.manifests()
        row = status(plugins, "tally")
        assert not row.enabled and row.disabled_reason == "disabled in configuration"
    finally:
        plugins.close()


async def test_a_raising_plugin_fails_alone_and_its_error_never_quotes_signals(make_plugins, caplog):
    good, bad = Receiver("good"), Raiser("bad")
    plugins = make_plugins(good, bad)
    assert plugins.recipients(KIND, "research") == ["bad", "good"]
    with caplog.at_level(logging.DEBUG, logger="rxfed.plugins"):
        assert not await plugins.deliver_signals("bad", [mood()])
        assert not await plugins.consent_revoked("bad", "g1", f"s-{SECRET}")
    assert await plugins.deliver_signals("good", [mood()])
    assert len(good.received) == 1
    row = status(plugins, "bad")
    assert row.enabled and row.failures == 2 and row.calls == 3  # the manifest, then two calls
    assert row.last_error.startswith("KeyError (message withheld) at test_plugins.py:")
    assert SECRET not in caplog.text and SECRET not in repr(plugins.status())
    assert "ValueError (message withheld)" in caplog.text


async def test_a_plugin_cannot_change_what_the_next_one_sees(make_plugins):
    class Vandal(Receiver):
        @hookimpl
        def rxfed_signals_received(self, signals):
            signals[0].body["mood"] = "bad"

    vandal, good = Vandal("vandal"), Receiver("good")
    plugins = make_plugins(vandal, good)
    signals = [mood(value="good")]
    assert not await plugins.deliver_signals("vandal", signals)
    assert await plugins.deliver_signals("good", signals)
    assert good.received[0].body["mood"] == "good" and signals[0].body["mood"] == "good"


async def test_a_hung_sync_plugin_times_out_and_the_loop_stays_responsive(make_plugins):
    hung = SyncHang()
    plugins = make_plugins(hung)
    loop = asyncio.get_running_loop()

    async def ticker() -> float:
        worst = 0.0
        for _ in range(20):
            start = loop.time()
            await asyncio.sleep(0.01)
            worst = max(worst, loop.time() - start)
        return worst

    start = time.monotonic()
    delivered, worst_tick = await asyncio.gather(plugins.deliver_signals("hung", [mood()]), ticker())
    assert not delivered and 0.15 < time.monotonic() - start < 1.0
    assert worst_tick < 0.1
    assert status(plugins, "hung").last_error == "PluginTimeout: no answer within 0.2 s"


@pytest.mark.parametrize("stubborn", [False, True])
async def test_a_hung_async_plugin_times_out(make_plugins, stubborn):
    plugins = make_plugins(AsyncHang(stubborn=stubborn))
    start = time.monotonic()
    assert not await plugins.deliver_signals("slow", [mood()])
    assert time.monotonic() - start < 0.8
    assert status(plugins, "slow").failures == 1


async def test_repeated_failures_disable_a_plugin_while_the_others_keep_receiving(make_plugins, caplog):
    good, bad = Receiver("good"), Raiser("bad")
    plugins = make_plugins(good, bad, max_failures=3)
    for i in range(5):
        assert not await plugins.deliver_signals("bad", [mood()])
        assert await plugins.deliver_signals("good", [mood()])
    assert len(good.received) == 5
    row = status(plugins, "bad")
    assert not row.enabled and row.calls == 4 and row.failures == 3  # the manifest, then three
    assert row.disabled_reason.startswith("failed 3 times in a row (last: ValueError")
    assert plugins.recipients(KIND, "research") == ["good"]
    assert "bad" not in plugins.manifests()
    assert not await plugins.consent_revoked("bad", "g1", "s")  # cannot confirm a deletion any more
    assert "plugin 'bad' disabled" in caplog.text
    assert status(plugins, "good").to_json() == {
        "name": "good", "enabled": True, "disabled_reason": None, "failures": 0, "total_failures": 0,
        "calls": 6, "refused": 0, "last_error": None}


async def test_a_success_resets_the_failure_count(make_plugins):
    flaky = Flaky("flaky")
    plugins = make_plugins(flaky, max_failures=3)
    for failing in (True, True, False, True, True):
        flaky.failing = failing
        await plugins.deliver_signals("flaky", [mood()])
    row = status(plugins, "flaky")
    assert row.enabled and row.failures == 2 and row.total_failures == 4


async def test_a_hung_plugin_holds_no_more_threads_than_its_cap(make_plugins):
    hung, good = SyncHang(), Receiver("good")
    plugins = make_plugins(hung, good, workers=3, max_in_flight=2)
    start = time.monotonic()
    first = [asyncio.ensure_future(plugins.deliver_signals("hung", [mood()])) for _ in range(2)]
    await asyncio.sleep(0.05)
    # Over the cap: refused at once, and not charged (the calls in flight are not late yet).
    assert await asyncio.gather(*(plugins.deliver_signals("hung", [mood()]) for _ in range(3))) == [False] * 3
    assert time.monotonic() - start < 0.15
    assert hung.entered == 2
    assert await plugins.deliver_signals("good", [mood()])  # a thread is still free for others
    assert await asyncio.gather(*first) == [False, False]
    row = status(plugins, "hung")
    assert (row.failures, row.refused) == (2, 3)
    # Now its threads are overdue: a refusal counts against it.
    assert not await plugins.deliver_signals("hung", [mood()])
    assert status(plugins, "hung").failures == 3 and hung.entered == 2
    hung.release.set()
    await asyncio.sleep(0.1)
    assert await plugins.deliver_signals("hung", [mood()])  # its threads are back: it runs again
    assert hung.entered == 3


async def test_manifest_name_must_match_the_registered_name(make_plugins):
    class Impostor(Receiver):
        @hookimpl
        def rxfed_plugin_manifest(self):
            return PluginManifest(name="good", version="1.0", reads=(KIND,), purposes=("research",))

    impostor = Impostor("impostor")
    plugins = make_plugins(impostor)
    assert plugins.manifests() == {} and plugins.recipients(KIND, "research") == []
    row = status(plugins, "impostor")
    assert not row.enabled
    assert row.disabled_reason == ("misconfigured: manifest name 'good' differs from the plugin's "
                                   "entry-point name 'impostor'")
    assert not await plugins.deliver_signals("impostor", [mood()]) and impostor.received == []


async def test_a_broken_manifest_hook_is_skipped_and_reported(make_plugins):
    class NoManifest(Receiver):
        @hookimpl
        def rxfed_plugin_manifest(self):
            raise RuntimeError("manifest exploded")

    class NotAManifest(Receiver):
        @hookimpl
        def rxfed_plugin_manifest(self):
            return {"name": "dict"}

    plugins = make_plugins(NoManifest("broken"), NotAManifest("dict"), Receiver("good"))
    assert list(plugins.manifests()) == ["good"]
    assert status(plugins, "broken").last_error == "RuntimeError: manifest exploded"
    assert "not a PluginManifest" in status(plugins, "dict").disabled_reason
    assert not await plugins.deliver_signals("broken", [mood()])


def test_broken_vocabulary_plugins_are_skipped_and_reported(make_plugins):
    plugins = make_plugins(Kinds(), BrokenVocabulary(), WrongKinds())
    names = {type(p).__name__: name for name, p in plugins.pm.list_name_plugin()}
    assert list(plugins.signal_kinds()) == [KIND]
    assert plugins.snomed_icd10_map() == {"44054006": "E11"}
    assert plugins.derive_signals(KIND, [], None) == [{"mood": "good"}]
    assert plugins.presend_check("I will stop") == [PresendWarning("test", "careful")]
    broken = status(plugins, names["BrokenVocabulary"])
    assert broken.enabled and broken.failures == 4
    assert broken.last_error.startswith("RuntimeError (message withheld)")  # it could quote the text
    wrong = status(plugins, names["WrongKinds"])
    assert wrong.last_error == "TypeError: returned a dict, not a list of SignalKind"


async def test_signals_outside_the_manifest_are_refused(make_plugins):
    good = Receiver("good")
    plugins = make_plugins(good)
    assert plugins.recipients(KIND, "marketing") == [] and plugins.recipients("other.kind", "research") == []
    assert not await plugins.deliver_signals("good", [mood(purpose="marketing")])
    assert good.received == [] and status(plugins, "good").failures == 0


async def test_a_closed_manager_refuses_calls_without_charging_plugins(make_plugins):
    good = Receiver("good")
    plugins = make_plugins(good)
    plugins.close()
    assert not await plugins.deliver_signals("good", [mood()])
    row = status(plugins, "good")
    assert row.enabled and row.failures == 0 and row.refused == 1


def test_what_plugin_authors_import_comes_from_rxfed():
    import rxfed
    from rxfed import PluginManifest, StorageBackend, hookimpl
    from rxfed import plugins

    assert PluginManifest is plugins.PluginManifest and StorageBackend is plugins.StorageBackend
    assert hookimpl.project_name == "rxfed" and rxfed.hookimpl is hookimpl
    assert {"hookimpl", "PluginManifest", "StorageBackend"} <= set(rxfed.__all__)


def test_plugin_template_names(tmp_path):
    from rxfed.cli import main

    for bad in ("Tally", "1tally", "tally!", "-x", "x-"):
        with pytest.raises(SystemExit) as info:
            main(["plugins", "new", bad, "--dir", str(tmp_path)])
        assert info.value.code == 2
    assert list(tmp_path.iterdir()) == []
    assert main(["plugin", "new", "mood_trends", "--dir", str(tmp_path)]) == 0
    made = tmp_path / "rxfed-mood_trends"
    assert (made / "src" / "rxfed_mood_trends" / "__init__.py").read_text().count("class MoodTrends:") == 1
    with pytest.raises(SystemExit) as info:  # exists: refused
        main(["plugins", "new", "mood_trends", "--dir", str(tmp_path)])
    assert info.value.code == 1


@pytest.mark.slow
def test_the_plugin_template_installs_and_passes_its_own_tests(tmp_path):
    """``rxfed plugins new NAME`` as a plugin author uses it: generate, install (a real pip
    install, here into a folder of its own so this environment is left as it was), test."""
    import os
    import subprocess
    import sys

    made = subprocess.run([sys.executable, "-m", "rxfed", "plugins", "new", "symptom-trends", "--dir", str(tmp_path),
                           "--json"], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    package = tmp_path / "rxfed-symptom-trends"
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                              str(package)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    assert (site / "rxfed_symptom_trends").is_dir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=package,
                           capture_output=True, text=True, env=env, timeout=300)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert "4 passed" in tests.stdout


async def test_worker_threads_start_as_work_arrives(make_plugins):
    """A manager starts one thread for synchronous calls made one at a time (so a command
    making one plugin call starts one, not ``workers``), and more, up to ``workers``, only
    while every started thread is busy."""
    def plugin_threads():
        return {t for t in threading.enumerate() if t.name.startswith("rxfed-plugin-")}

    before = plugin_threads()
    hung, good = SyncHang(), Receiver("good")
    plugins = make_plugins(hung, good, workers=3, max_in_flight=3)
    for _ in range(3):
        assert await plugins.deliver_signals("good", [mood()])
    assert len(plugin_threads() - before) == 1
    first = [asyncio.ensure_future(plugins.deliver_signals("hung", [mood()])) for _ in range(2)]
    await asyncio.sleep(0.05)
    assert hung.entered == 2 and len(plugin_threads() - before) == 2  # the idle one took the first
    assert await plugins.deliver_signals("good", [mood()])  # a third thread, for the third call in flight
    assert len(plugin_threads() - before) == 3
    hung.release.set()
    assert await asyncio.gather(*first) == [True, True]
    assert len(plugin_threads() - before) == 3


def test_a_manager_that_offers_nothing_to_a_node_does_not_load_the_node_classes():
    """The node-only classes (StorageBackend, BackendVerdict, ClinicianVerifier, NodeContext)
    are built on first use: a patient's command with a plugin manager (a post's pre-send
    check) does not build them, and every public way to name them still works."""
    import subprocess
    import sys

    script = """
import sys
from rxfed.plugins import RxfedPlugins
manager = RxfedPlugins(entry_points=False)
manager.manifests()
print("rxfed.plugin_offers" in sys.modules)
import rxfed, rxfed.plugins, rxfed.plugin_offers as offers
from rxfed import BackendVerdict, ClinicianVerifier, StorageBackend
from rxfed.plugins import NodeContext
print(StorageBackend is rxfed.plugins.StorageBackend is offers.StorageBackend and BackendVerdict is offers.BackendVerdict
      and ClinicianVerifier is offers.ClinicianVerifier and NodeContext is offers.NodeContext
      and "NodeContext" in dir(rxfed.plugins))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]
