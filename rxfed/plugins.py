"""The plugin manager: a typed facade over ``pm.hook`` (one method per hook)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
import pluggy

from rxfed import hookspecs
from rxfed.errors import RxfedError
from rxfed.store import Store

ENTRY_POINT_GROUP = "rxfed"


class PluginError(RxfedError):
    status = 500
    code = "plugin_error"


@attrs.frozen
class StorageBackend:
    """A storage backend a plugin offers. ``open(data_dir, options)`` returns an unopened
    :class:`rxfed.store.Store`; ``options`` is the ``[storage]`` config section."""

    name: str
    description: str
    open: Callable[[Path, dict[str, Any]], Store]


async def await_me_maybe(value: Any) -> Any:
    """Hooks may return a value or an awaitable; core awaits through this one helper."""
    if inspect.isawaitable(value):
        return await value
    return value


class RxfedPlugins:
    """Loads plugins (entry points unless told not to), blocks disabled ones by name, and
    gives each hook one typed method."""

    def __init__(self, *, entry_points: bool = True, disabled: Iterable[str] = ()):
        self.pm = pluggy.PluginManager("rxfed")
        self.pm.add_hookspecs(hookspecs)
        self.disabled = frozenset(disabled)
        for name in self.disabled:
            self.pm.set_blocked(name)
        if entry_points:
            self.pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        self.pm.check_pending()

    def register(self, plugin: object, name: str | None = None) -> None:
        if name is not None and self.pm.is_blocked(name):
            return
        self.pm.register(plugin, name)
        self.pm.check_pending()

    def names(self) -> list[str]:
        return sorted(name for name, _ in self.pm.list_name_plugin() if name)

    def storage_backends(self) -> dict[str, StorageBackend]:
        found: dict[str, StorageBackend] = {}
        for backends in self.pm.hook.rxfed_storage_backends():
            for backend in backends:
                if backend.name in found:
                    raise PluginError(f"two plugins offer a storage backend named {backend.name!r}")
                found[backend.name] = backend
        return found

    def storage_backend(self, name: str) -> StorageBackend:
        backends = self.storage_backends()
        if name not in backends:
            known = ", ".join(sorted(backends)) or "none"
            raise PluginError(
                f"storage backend {name!r} not found (installed: {known}); is the plugin that provides it installed?"
            )
        return backends[name]
