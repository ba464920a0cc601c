"""The documentation keeps up with the code: every hook documented with its signature."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from rxfed import hookspecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS = [name for name, fn in vars(hookspecs).items() if name.startswith("rxfed_") and callable(fn)]


@pytest.mark.parametrize("name", HOOKS)
def test_hook_documented_with_signature(name):
    doc = (ROOT / "spec" / "plugin_hooks.md").read_text()
    params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
    assert f"### `{name}({params})`" in doc


@pytest.mark.parametrize("name", HOOKS)
def test_hookspec_has_docstring_with_example(name):
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    assert ":return:" in doc and "Example" in doc


def test_no_stale_hooks_in_docs():
    doc = (ROOT / "spec" / "plugin_hooks.md").read_text()
    assert set(re.findall(r"^### `(rxfed_\w+)\(", doc, re.M)) == set(HOOKS)


def test_builtin_plugins_declared_as_entry_points():
    import tomllib

    entry_points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["rxfed"]
    assert entry_points["sqlite"] == "rxfed_plugins.sqlite_store"


def test_core_never_imports_builtin_plugins_or_crypto_libraries():
    for path in (ROOT / "rxfed").rglob("*.py"):
        text = path.read_text()
        assert "rxfed_plugins" not in text or path.name == "testing.py", path
        if "crypto" not in path.parts:
            assert not re.search(r"^\s*(import|from) (nacl|cryptography)\b", text, re.M), path


def test_protocol_is_sans_io():
    for path in (ROOT / "rxfed" / "protocol").rglob("*.py"):
        assert not re.search(r"^\s*(import|from) (aiohttp|rxfed\.store|rxfed\.node|asyncio|sqlite3)", path.read_text(), re.M), path


def test_the_readme_plugin_and_its_test_run_as_written(tmp_path):
    """README, "Write a plugin": the plugin, the pytest settings and the complete test are
    copied as they stand and run."""
    import os
    import subprocess
    import sys

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Write a plugin"):readme.index("## Security")]
    blocks = re.findall(r"```(\w+)\n(.*?)```", section, re.S)
    plugin = next(code for lang, code in blocks if lang == "python" and "class Counts" in code)
    test = next(code for lang, code in blocks if lang == "python" and "async def test_" in code)
    settings = next(code for lang, code in blocks if lang == "toml")
    (tmp_path / "rxfed_counts.py").write_text(plugin)
    (tmp_path / "test_counts.py").write_text(test)
    (tmp_path / "pyproject.toml").write_text(settings)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_counts.py"],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "1 passed" in out.stdout


def test_patient_actions_listed_with_the_help_their_parsers_have():
    """``rxfed patient --help`` lists actions from a table (their parsers are built only when
    run); the table must say what the parsers say."""
    import argparse

    from rxfed.cli import Parser
    from rxfed.cli import patient

    parser = Parser(prog="rxfed")
    patient.add_parser(parser.add_subparsers(dest="command"), None)
    actions = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub = next(a for a in actions.choices["patient"]._actions if isinstance(a, argparse._SubParsersAction))
    built = {c.dest: c.help for c in sub._choices_actions}
    assert built == patient.ACTIONS
