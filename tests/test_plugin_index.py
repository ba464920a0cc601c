"""The plugin index: a command loads only the plugins it needs, and a changed plugin is seen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from rxfed import plugin_index
from rxfed.plugin_index import PluginIndex, any_implementing
from rxfed.plugins import RxfedPlugins

PLAIN = '''
from rxfed import PluginManifest, hookimpl

IMPORTS = []
IMPORTS.append(1)


@hookimpl
def rxfed_plugin_manifest():
    return PluginManifest("fakeplug", "1.0")
'''

WARNS = PLAIN + '''

@hookimpl
def rxfed_presend_check(text):
    from rxfed.plugins import PresendWarning
    return [PresendWarning("fake", "checked: " + text)]
'''


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    """A directory on sys.path holding one distribution with an ``rxfed`` entry point, as an
    editable install of a plugin under development looks, and an index of its own."""
    site = tmp_path / "site"
    dist = site / "fakeplug-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[rxfed]\nfakeplug = fakeplug_mod\n")
    (site / "fakeplug_mod.py").write_text(PLAIN)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("RXFED_PLUGIN_INDEX", str(tmp_path / "cache" / "plugins.json"))
    yield site
    sys.modules.pop("fakeplug_mod", None)


def rewrite(path, text):
    """Change a file so that its modification time surely moves (coarse file systems)."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    if path.stat().st_mtime_ns == before:
        os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


def test_the_index_learns_each_plugins_hooks_and_later_loads_only_those_a_hook_needs(fake_site):
    plugins = RxfedPlugins(hooks=["rxfed_presend_check"])  # first run: every plugin imported once
    try:
        assert plugins.names() == ["moderation"]  # the only one implementing the hook stays registered
    finally:
        plugins.close()
    index = PluginIndex.load("rxfed")
    assert index.entries["fakeplug"]["hooks"] == ["rxfed_plugin_manifest"]
    assert index.entries["signals"]["hooks"] == ["rxfed_derive_signals", "rxfed_signal_kinds"]
    assert index.entries["moderation"]["hooks"] == ["rxfed_plugin_manifest", "rxfed_presend_check"]
    assert not any_implementing(["rxfed_presend_check"], blocked=["moderation"])
    sys.modules.pop("fakeplug_mod")
    RxfedPlugins(hooks=["rxfed_presend_check"]).close()
    assert "fakeplug_mod" not in sys.modules  # known not to implement it: not imported again
    assert os.stat(plugin_index.cache_path()).st_mode & 0o777 == 0o600


def test_a_plugin_whose_code_changed_is_imported_again(fake_site):
    RxfedPlugins(hooks=["rxfed_presend_check"]).close()
    assert not any_implementing(["rxfed_presend_check"], blocked=["moderation"])
    rewrite(fake_site / "fakeplug_mod.py", WARNS)  # an editable install: the source changed
    sys.modules.pop("fakeplug_mod", None)
    assert any_implementing(["rxfed_presend_check"], blocked=["moderation"])
    plugins = RxfedPlugins(hooks=["rxfed_presend_check"])
    try:
        assert plugins.names() == ["fakeplug", "moderation"]
        assert [w.message for w in plugins.presend_check("hello")] == ["checked: hello"]
    finally:
        plugins.close()
    assert PluginIndex.load("rxfed").entries["fakeplug"]["hooks"] == ["rxfed_plugin_manifest",
                                                                       "rxfed_presend_check"]


def test_installing_or_removing_a_distribution_is_seen(fake_site, tmp_path):
    RxfedPlugins(hooks=["rxfed_presend_check"]).close()
    other = fake_site / "otherplug-0.1.dist-info"
    other.mkdir()
    (other / "METADATA").write_text("Metadata-Version: 2.1\nName: otherplug\nVersion: 0.1\n")
    (other / "entry_points.txt").write_text("[rxfed]\notherplug = otherplug_mod\n")
    (fake_site / "otherplug_mod.py").write_text(WARNS.replace("fakeplug", "otherplug"))
    try:
        assert any_implementing(["rxfed_presend_check"], blocked=["moderation"])  # new: its hooks are not known
        plugins = RxfedPlugins(hooks=["rxfed_presend_check"])
        try:
            assert plugins.names() == ["moderation", "otherplug"]
        finally:
            plugins.close()
        for item in other.iterdir():
            item.unlink()
        other.rmdir()
        assert "otherplug" not in PluginIndex.load("rxfed").entries
    finally:
        sys.modules.pop("otherplug_mod", None)


def test_a_blocked_plugin_is_never_imported_to_learn_its_hooks(fake_site):
    plugins = RxfedPlugins(disabled=["fakeplug"])
    try:
        assert "fakeplug" not in plugins.names()
    finally:
        plugins.close()
    assert "fakeplug_mod" not in sys.modules
    assert PluginIndex.load("rxfed").entries["fakeplug"]["hooks"] is None


def test_an_index_anyone_else_could_write_is_ignored(fake_site):
    RxfedPlugins(hooks=["rxfed_presend_check"]).close()
    path = plugin_index.cache_path()
    doc = json.loads(open(path).read())
    doc["entries"]["fakeplug"]["hooks"] = ["rxfed_presend_check"]
    with open(path, "w") as f:
        json.dump(doc, f)
    os.chmod(path, 0o666)
    assert PluginIndex.load("rxfed").entries["fakeplug"]["hooks"] is None  # read again, not believed
    with open(path, "w") as f:
        f.write("{not json")
    os.chmod(path, 0o600)
    assert "fakeplug" in PluginIndex.load("rxfed").entries


def test_an_unwritable_index_is_not_an_error(fake_site, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("RXFED_PLUGIN_INDEX", str(blocker / "plugins.json"))  # under a file: cannot exist
    plugins = RxfedPlugins()
    try:
        assert {"fakeplug", "sqlite"} <= set(plugins.names())
    finally:
        plugins.close()


def test_community_post_loads_only_the_plugins_that_check_messages(tmp_path):
    """The `rxfed community post` pre-send check, as a new process runs it: once the index
    knows the installed plugins, only those implementing the check are imported (the
    built-in moderation plugin), and importlib.metadata is not."""
    env = {**os.environ, "RXFED_PLUGIN_INDEX": str(tmp_path / "plugins.json")}
    probe = textwrap.dedent("""
        import sys
        from rxfed.cli.community import _presend_warnings
        assert _presend_warnings("hello") == []
        loaded = [m for m in ("importlib.metadata", "rxfed_plugins.signals", "rxfed_plugins.outcomes",
                              "rxfed_plugins.sqlite_store", "rxfed_plugins.moderation") if m in sys.modules]
        print(loaded)
    """)
    first = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert first.returncode == 0, first.stderr
    then = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert then.returncode == 0, then.stderr
    assert then.stdout.strip() == "['rxfed_plugins.moderation']"


def test_the_index_is_kept_across_working_directories(fake_site, monkeypatch, tmp_path):
    """``python -m rxfed`` puts the working directory first on sys.path: what was learnt of
    unchanged distributions is kept when it changes, so no plugin is imported again."""
    RxfedPlugins(hooks=["rxfed_presend_check"]).close()
    monkeypatch.syspath_prepend(str(tmp_path / "elsewhere"))
    index = PluginIndex.load("rxfed")
    assert index.entries["fakeplug"]["hooks"] == ["rxfed_plugin_manifest"]


def test_a_relative_xdg_cache_home_is_ignored(monkeypatch, tmp_path):
    """The XDG base directory specification ignores a relative $XDG_CACHE_HOME: it would put
    the plugin index (which names modules to import) and the moderation patterns under
    whatever directory a command is run from."""
    from rxfed.plugin_index import cache_dir
    from rxfed_plugins import moderation

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert cache_dir() == str(tmp_path / ".cache" / "rxfed")
    assert moderation._cache_path().startswith(str(tmp_path / ".cache" / "rxfed") + "/")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "abs"))
    assert cache_dir() == str(tmp_path / "abs" / "rxfed")
