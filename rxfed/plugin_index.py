"""Which installed plugins implement which hooks, remembered per environment, so that a command
imports only the plugins it needs and never scans the installed distributions twice.

Finding entry points means importing ``importlib.metadata`` and reading every installed
distribution's metadata (about 20 ms), and finding which hooks a plugin implements means
importing it (the built-in ``signals`` plugin alone takes about 10 ms). The ``rxfed`` command
pays neither on every run: this index keeps, in the user's cache directory, each entry point
of the ``rxfed`` group with the hooks its plugin implemented when it was last imported, and
the files that import read.

It is trusted only while nothing it rests on changed:

* the environment: the interpreter, ``sys.path``, the ``*.dist-info`` and ``*.egg-info``
  directories in each ``sys.path`` directory with their modification times (installing,
  upgrading, reinstalling or removing a distribution, editable installs included, adds,
  rewrites or removes one) and each indexed distribution's ``entry_points.txt``; any change
  and the entry points are read again;
* a plugin's files: every module file its import loaded, except those of the standard
  library and of installed distributions (which change only with a reinstall), so an
  editable install's source counts, and the file of each of its hook implementations, by
  modification time and size; any change and that plugin is imported again, whatever the
  caller asked for.

A plugin never imported yet (a blocked plugin, say: blocking means not importing) has no
known hooks, and is imported by the first caller that does not block it. A cache that cannot
be read or written (a read-only home, a file of another user) is not an error: the entry
points are then found the slow way. See spec/plugin_hooks.md ("Finding plugins").
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator

#: The entry-point group plugins register in.
GROUP = "rxfed"
#: Bump when the file's layout changes (an older index is then ignored).
FORMAT = 1
_STDLIB = os.path.dirname(os.__file__)


def cache_path() -> str:
    """The index of this interpreter, in ``$XDG_CACHE_HOME/rxfed``
    (default ``~/.cache/rxfed``); ``RXFED_PLUGIN_INDEX`` names the file instead, or is
    ``off`` for none."""
    chosen = os.environ.get("RXFED_PLUGIN_INDEX")
    if chosen:
        return chosen
    import hashlib

    # One file per interpreter; sys.path (which `python -m` starts with the working
    # directory) is checked inside it.
    digest = hashlib.sha256(json.dumps([sys.executable, sys.prefix]).encode()).hexdigest()[:16]
    return os.path.join(cache_dir(), f"plugins-{digest}.json")


def cache_dir() -> str:
    """rxfed's folder in the user's cache: ``$XDG_CACHE_HOME/rxfed`` if that is an absolute
    path (the XDG base directory specification ignores a relative one, which would name a
    folder under whatever the working directory is), else ``~/.cache/rxfed``."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rxfed")


def _stamp(path: str) -> list | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


def _distributions_in(entry: str) -> list | None:
    """The distributions' metadata directories in one ``sys.path`` entry, each with its
    modification time (a reinstall writes a new one), or None if it is not a directory."""
    try:
        with os.scandir(entry or ".") as found:
            return sorted([e.name, e.stat().st_mtime_ns] for e in found
                          if e.name.endswith((".dist-info", ".egg-info")))
    except OSError:
        return None


def _environment() -> dict:
    return {"executable": sys.executable, "version": sys.version,
            "path": [[entry, _distributions_in(entry)] for entry in sys.path]}


class PluginIndex:
    """The ``rxfed`` entry points of this environment and what is known of each plugin.

    ``entries`` maps an entry-point name to ``{"value": "module:attr", "hooks": [...] or
    None, "files": [[path, mtime_ns, size], ...]}``, in the order the entry points were
    found (the first distribution to name a plugin wins, as with pluggy)."""

    def __init__(self, group: str, path: str | None):
        self.group = group
        self.path = path
        self.entries: dict[str, dict] = {}
        self._metadata_files: list[list] = []
        self._changed = False

    # -- reading ---------------------------------------------------------------------------

    @classmethod
    def load(cls, group: str) -> PluginIndex:
        path = cache_path()
        index = cls(group, None if path == "off" else path)
        environment = _environment()
        doc = index._read()
        if (doc is not None and doc.get("format") == FORMAT and doc.get("group") == group
                and doc.get("environment") == environment
                and all(_stamp(f) == stamp for f, stamp in doc["metadata_files"])):
            index.entries = doc["entries"]
            index._metadata_files = doc["metadata_files"]
            for entry in index.entries.values():
                if entry["hooks"] is not None and any(_stamp(f) != [m, s] for f, m, s in entry["files"]):
                    entry["hooks"], entry["files"] = None, []  # its code changed: import it again
                    index._changed = True
        else:
            index._scan(doc["entries"] if doc is not None and doc.get("format") == FORMAT else None)
        index._environment = environment
        return index

    def _read(self) -> dict | None:
        if self.path is None:
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            # Only a file of this user that nobody else may write: it names modules to import.
            if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o022):
                return None
            with os.fdopen(fd, "rb", closefd=False) as f:
                doc = json.loads(f.read(1 << 20))
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)
        if not isinstance(doc, dict) or not isinstance(doc.get("entries"), dict):
            return None
        def stamped(item) -> bool:
            return (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                    and all(isinstance(v, int) for v in item[1:]))

        for entry in doc["entries"].values():
            if not (isinstance(entry, dict) and isinstance(entry.get("value"), str)
                    and (entry.get("hooks") is None or isinstance(entry["hooks"], list))
                    and isinstance(entry.get("files"), list) and all(stamped(f) for f in entry["files"])):
                return None
        metadata = doc.get("metadata_files")
        if not isinstance(metadata, list) or not all(isinstance(m, list) and len(m) == 2 for m in metadata):
            return None
        return doc

    def _scan(self, known: dict | None = None) -> None:
        """Read the entry points from the installed distributions' metadata. What ``known``
        (the entries of an index of another environment) learnt of a plugin is kept when its
        distribution's metadata directory and its files are unchanged (``python -m rxfed``
        and the ``rxfed`` script start ``sys.path`` differently, and would otherwise
        re-import every plugin whenever one follows the other)."""
        import importlib.metadata

        known = known or {}
        self.entries, self._metadata_files, seen_files = {}, [], set()
        for dist in importlib.metadata.distributions():
            located = getattr(dist, "_path", None)  # PathDistribution: its .dist-info directory
            origin = None if located is None else [os.path.abspath(located), _stamp(str(located))]
            for ep in dist.entry_points:
                if ep.group != self.group or ep.name in self.entries:
                    continue
                entry = {"value": ep.value, "dist": origin, "hooks": None, "files": []}
                before = known.get(ep.name)
                # Kept for the same distribution, or for source files outside any installed
                # distribution (a checkout's own metadata directory and its editable install
                # name the same files), as long as those files are unchanged.
                if (isinstance(before, dict) and before.get("value") == ep.value and before.get("hooks") is not None
                        and (origin is not None and before.get("dist") == origin
                             or before["files"] and not any(_installed(f) for f, _, _ in before["files"]))
                        and all(_stamp(f) == [m, s] for f, m, s in before["files"])):
                    entry["hooks"], entry["files"] = before["hooks"], before["files"]
                self.entries[ep.name] = entry
                if origin is not None:
                    metadata = os.path.join(origin[0], "entry_points.txt")
                    if metadata not in seen_files:
                        seen_files.add(metadata)
                        self._metadata_files.append([metadata, _stamp(metadata)])
        self._changed = True

    # -- using -----------------------------------------------------------------------------

    def wanted(self, hooks: Iterable[str] | None, blocked: Iterable[str] = ()) -> Iterator[tuple[str, str]]:
        """``(name, value)`` of the plugins to import for ``hooks`` (None: every hook):
        those known to implement one of them and those whose hooks are not known; never a
        blocked one."""
        hooks = None if hooks is None else set(hooks)
        blocked = set(blocked)
        for name, entry in self.entries.items():
            if name in blocked:
                continue
            if hooks is None or entry["hooks"] is None or hooks.intersection(entry["hooks"]):
                yield name, entry["value"]

    def learnt(self, name: str, hooks: Iterable[str], modules: Iterable[object], functions: Iterable[object]) -> None:
        """Remember the hooks plugin ``name`` implements, and the files its import read
        (``modules``: the modules it loaded; ``functions``: its hook implementations)."""
        entry = self.entries.get(name)
        if entry is None:
            return
        files = set()
        for module in modules:
            filename = getattr(module, "__file__", None)
            if isinstance(filename, str) and not _installed(filename):
                files.add(filename)
        for function in functions:
            code = getattr(function, "__code__", None)
            if code is not None and os.path.isabs(code.co_filename):
                files.add(code.co_filename)
        stamped = sorted([f, *stamp] for f in files if (stamp := _stamp(f)) is not None)
        hooks = sorted(hooks)
        if entry["hooks"] != hooks or entry["files"] != stamped:
            entry["hooks"], entry["files"] = hooks, stamped
            self._changed = True

    def save(self) -> None:
        """Write the index if it changed (atomically, mode 0600); silently not, if it cannot."""
        if not self._changed or self.path is None:
            return
        doc = {"format": FORMAT, "group": self.group, "environment": self._environment,
               "metadata_files": self._metadata_files, "entries": self.entries}
        directory = os.path.dirname(self.path)
        temporary = f"{self.path}.{os.getpid()}.tmp"
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f)
            os.replace(temporary, self.path)
            self._changed = False
        except OSError:
            try:
                os.unlink(temporary)
            except OSError:
                pass


def any_implementing(hooks: Iterable[str], blocked: Iterable[str] = ()) -> bool:
    """Whether an installed plugin (not ``blocked``) implements one of ``hooks``, or may (its
    hooks are not known yet): when not, a caller can skip loading plugins altogether."""
    index = PluginIndex.load(GROUP)
    index.save()
    return any(True for _ in index.wanted(hooks, blocked))


def _installed(filename: str) -> bool:
    """A file of the standard library or of an installed (not editable) distribution: it
    changes only with the interpreter or a reinstall, which the environment check sees."""
    parts = filename.split(os.sep)
    return filename.startswith(_STDLIB + os.sep) or "site-packages" in parts or "dist-packages" in parts


def load_object(value: str) -> object:
    """What an entry point's ``module:attr.attr`` names, imported as ``EntryPoint.load`` does."""
    import importlib

    module_name, _, attrs_path = value.partition(":")
    obj = importlib.import_module(module_name.strip())
    for attr in filter(None, attrs_path.strip().split(".")):
        obj = getattr(obj, attr)
    return obj
