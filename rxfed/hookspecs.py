"""Every rxfed hook specification, grouped by where it runs.

* **Infrastructure hooks** provide machinery chosen by configured name (a storage backend).
* **Node hooks** receive consented signals on a node (matchers, moderation, verification).
* **Client hooks** run on the patient's device, with plaintext in reach.

Plugins implement hooks with :data:`rxfed.hookimpl` and are found through the ``rxfed``
entry-point group; the built-in plugins are registered the same way. ``spec/plugin_hooks.md``
documents each hook with its exact signature and an example, and a test keeps the two in step.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("rxfed")


# -- infrastructure hooks ------------------------------------------------------------------


@hookspec
def rxfed_storage_backends():
    """Offer storage backends the operator can name in ``[storage] backend``.

    :return: a list of :class:`rxfed.plugins.StorageBackend`; every implementation's lists
        are collected and the node picks one by name (never by hook order).

    Example::

        @hookimpl
        def rxfed_storage_backends():
            return [StorageBackend("sqlite", "embedded SQLite, WAL mode", open_sqlite)]
    """
