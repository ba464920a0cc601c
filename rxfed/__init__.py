"""rxfed: a privacy-preserving federated plugin framework for patient peer networks.

What plugin authors import comes from here: ``hookimpl`` (marks hook implementations),
``PluginManifest`` (what a plugin declares), ``StorageBackend`` (what a storage plugin
offers) and ``ClinicianVerifier`` with ``BackendVerdict`` (what a clinician verification
backend offers and answers). They load on first use, so that ``import rxfed`` stays cheap for the ``rxfed``
command, which needs none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["hookimpl", "PluginManifest", "StorageBackend", "ClinicianVerifier", "BackendVerdict", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    import pluggy

    from rxfed.plugins import BackendVerdict, ClinicianVerifier, PluginManifest, StorageBackend

    #: Plugins mark their hook implementations with this, built-in ones included.
    hookimpl: pluggy.HookimplMarker


def __getattr__(name: str) -> Any:
    if name == "hookimpl":
        import pluggy

        marker = pluggy.HookimplMarker("rxfed")
        globals()["hookimpl"] = marker
        return marker
    if name in ("PluginManifest", "StorageBackend", "ClinicianVerifier", "BackendVerdict"):
        from rxfed import plugins

        value = getattr(plugins, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rxfed' has no attribute {name!r}")
