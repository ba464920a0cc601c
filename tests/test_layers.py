"""The layering of ../shared/DESIGN.md, enforced over the import graph.

Every ``import`` and ``from ... import`` in rxfed/ and in the built-in plugins is read with
:mod:`ast` (imports inside functions and under ``TYPE_CHECKING`` included: a hidden import is
still a dependency), mapped to its layer, and checked against :data:`ALLOWED`. An import
that goes up a layer fails here, naming the module and the line.

:data:`KNOWN` lists the upward imports that exist today and are being removed (issue 12: the
store keeps domain rules, the node's modules reach back into the app). The list may only
shrink: an entry that no longer occurs fails too, so it is deleted with the code it names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Which layers each layer may import (besides itself). Read down: a layer never imports one
#: that lists it. ``errors`` is the exception hierarchy every layer raises.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "crypto": {"errors"},
    "vocabulary": {"errors"},
    "store": {"errors"},
    "protocol": {"errors", "crypto"},
    "consent": {"errors", "crypto", "protocol", "vocabulary"},
    # rxfed.store.operations: the domain operations over a backend's rows, calling the rules
    "operations": {"errors", "crypto", "protocol", "consent", "vocabulary", "store"},
    "plugins": {"errors", "crypto", "protocol", "consent", "vocabulary", "store", "operations"},
    "builtin_plugins": {"errors", "crypto", "protocol", "consent", "vocabulary", "store", "operations", "plugins"},
    "node": {"errors", "crypto", "protocol", "consent", "vocabulary", "store", "operations", "plugins"},
    "client": {"errors", "crypto", "protocol", "consent", "vocabulary", "plugins"},
    "testing": {"errors", "crypto", "protocol", "consent", "vocabulary", "store", "operations", "plugins", "node",
                "builtin_plugins", "client"},
    "cli": {"errors", "crypto", "protocol", "consent", "vocabulary", "store", "operations", "plugins", "node",
            "client"},
}

#: Upward imports that exist today, as (importing module, imported module); the list may only shrink.
KNOWN: set[tuple[str, str]] = set()


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "rxfed_plugins":
        return "builtin_plugins"
    if len(parts) == 1:
        return "plugins"  # rxfed/__init__.py: the plugin author's API (hookimpl, PluginManifest)
    if parts[1:3] == ["store", "operations"]:
        return "operations"  # above the rules it calls; the backends below them (spec/store.md)
    return {"hookspecs": "plugins", "plugin_index": "plugins", "plugin_offers": "plugins", "__main__": "cli"}.get(parts[1], parts[1])


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in ((ROOT / "rxfed", "rxfed"), (ROOT / "plugins", "rxfed_plugins")):
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def imports(module: str, path: Path, known: dict[str, Path]):
    """(imported module, line) for each rxfed module that ``module`` imports."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            # ``from a import b``: module a.b when it is one, else a (b is a name in a).
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        seen = set()
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and name not in seen:
                seen.add(name)
                yield name, node.lineno


def upward_imports() -> list[tuple[str, str, int]]:
    known = modules()
    found = []
    for module, path in sorted(known.items()):
        for imported, line in imports(module, path, known):
            a, b = layer_of(module), layer_of(imported)
            if a != b and b not in ALLOWED[a]:
                found.append((module, imported, line))
    return found


def test_every_module_has_a_layer():
    unknown = {layer_of(m) for m in modules()} - ALLOWED.keys()
    assert not unknown, f"modules outside every layer: {sorted(unknown)}; add the layer to ALLOWED"


def test_no_new_upward_import():
    new = [f"{m}:{line} imports {i} ({layer_of(m)} -> {layer_of(i)})"
           for m, i, line in upward_imports() if (m, i) not in KNOWN]
    assert not new, "upward imports (see tests/test_layers.py ALLOWED):\n" + "\n".join(new)


def test_known_violations_still_exist():
    """An entry of KNOWN that is gone must be deleted, so the list only shrinks."""
    present = {(m, i) for m, i, _ in upward_imports()}
    assert not KNOWN - present, f"fixed, delete from KNOWN: {sorted(KNOWN - present)}"


#: Libraries of cryptographic primitives: only rxfed/crypto/ composes them (DESIGN.md).
CRYPTO_LIBRARIES = {"nacl", "cryptography", "rbcl"}


def test_only_the_crypto_layer_imports_crypto_libraries():
    found = []
    for module, path in sorted(modules().items()):
        if layer_of(module) == "crypto":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{module}:{node.lineno} imports {name}" for name in names
                      if name.split(".")[0] in CRYPTO_LIBRARIES]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("source, expected", [
    ("from rxfed.node.app import NODE\n", [("rxfed.node.app", 1)]),
    ("def f():\n    from rxfed.client import sdk\n", [("rxfed.client.sdk", 2)]),
    ("from . import grants\n", [("rxfed.consent.grants", 1)]),
])
def test_the_scanner_sees_every_form_of_import(tmp_path, source, expected):
    path = tmp_path / "audit.py"
    path.write_text(source)
    known = modules()
    assert list(imports("rxfed.consent.audit", path, known)) == expected


def cycles() -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (Tarjan's
    strongly connected components over every import, function-level ones included)."""
    known = modules()
    graph = {m: {i for i, _ in imports(m, p, known)} for m, p in known.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(found)


#: Import cycles that exist today (issue 12 breaks them); the list may only shrink.
KNOWN_CYCLES: list[list[str]] = [
]


def test_no_new_import_cycle():
    """A package's ``__init__`` importing its own modules, which import it back, is how a
    package exports its API, not a cycle; everything else is."""
    def is_export(group):
        return len(group) == 2 and (group[0] == group[1].rpartition(".")[0] or group[1] == group[0].rpartition(".")[0])

    found = [group for group in cycles() if not is_export(group)]
    assert found == KNOWN_CYCLES, f"import cycles: {found}"
