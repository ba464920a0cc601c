"""What plugins offer a node, and what the node hands them: storage backends, clinician
verification backends and their verdicts, the context of ``rxfed_node_started``. Only a node
uses these, so they live apart from :mod:`rxfed.plugins` (which re-exports them) and a
patient's command does not build them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:  # pragma: no cover
    from rxfed.protocol.credentials import Clinician
    from rxfed.store.operations import Store

__all__ = ["StorageBackend", "BackendVerdict", "ClinicianVerifier", "NodeContext"]


@attrs.frozen
class StorageBackend:
    """A storage backend a plugin offers. ``open(data_dir, options)`` returns an unopened
    :class:`rxfed.store.operations.Store` over the plugin's :class:`rxfed.store.Backend`;
    ``options`` is the ``[storage]`` config section."""

    name: str
    description: str
    open: Callable[[Path, dict[str, Any]], Store]


@attrs.frozen
class BackendVerdict:
    """What one clinician verification backend says of a clinician: ``accepted`` and why
    (the reason is for the operator, e.g. "NPI 1234567893 is deactivated in the registry")."""

    backend: str
    accepted: bool
    reason: str


@attrs.frozen
class ClinicianVerifier:
    """A clinician verification backend a plugin offers. ``open(options)`` returns the
    check: a callable taking a :class:`rxfed.protocol.credentials.Clinician` and returning a
    :class:`BackendVerdict`; ``options`` is the backend's configuration section. ``open``
    may raise ``ValueError`` or ``OSError`` for a configuration it cannot use."""

    name: str
    description: str
    open: Callable[[dict[str, Any]], Callable[[Clinician], BackendVerdict]]


@attrs.frozen
class NodeContext:
    """What ``rxfed_node_started`` hands a plugin: the node's id, clock and store."""

    node_id: str
    now: Callable[[], int]
    store: Store
