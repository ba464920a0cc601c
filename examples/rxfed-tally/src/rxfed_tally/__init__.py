"""rxfed-tally: an example node plugin that counts diagnosis categories, for research.

It reads ``diagnosis.category`` signals granted for the ``research`` purpose, keeps the
categories each pseudonymous subject reported under each grant token in memory, forgets a
subject's entries the moment their grant is revoked, and offers :func:`counts`: how many
subjects have each category, with counts below ``k`` suppressed (``None``).

The counts stay on this node, for its operator. They are exact: a real aggregate leaving
the node needs differential-privacy noise from a discrete mechanism, charged against a
privacy budget, with small cells suppressed *after* the noise (DESIGN.md, threat model 4).
That is a later rxfed feature; until then this plugin sends nothing, and its manifest says so.

The ``rxfed`` entry point registers this module, which keeps one :class:`Tally`. To run
several nodes in one process (tests), register a fresh ``Tally()`` per node instead.
"""

from __future__ import annotations

import threading
from collections import Counter

from rxfed import PluginManifest, hookimpl

__version__ = "0.1.0"

#: The plugin's name: its entry-point name, repeated in its manifest.
NAME = "tally"
#: Counts below this are suppressed.
K = 11


class Tally:
    """One node's tally of diagnosis categories by subject."""

    def __init__(self) -> None:
        # Hooks may run on rxfed's worker threads, so the state is guarded.
        self._lock = threading.Lock()
        #: (grant token, subject) -> the categories received under that token.
        self._held: dict[tuple[str, str], set[str]] = {}

    @hookimpl
    def rxfed_plugin_manifest(self):
        return PluginManifest(name=NAME, version=__version__, reads=("diagnosis.category",),
                              purposes=("research",), sends=(),
                              description="counts subjects per ICD-10 category on this node, small counts suppressed")

    @hookimpl
    def rxfed_signals_received(self, signals):
        received: dict[tuple[str, str], set[str]] = {}
        for s in signals:
            received.setdefault((s.grant, s.subject), set()).add(s.body["category"])
        with self._lock:
            # A delivery under a grant token replaces the token's previous one (spec/consent.md).
            self._held.update(received)

    @hookimpl
    def rxfed_consent_revoked(self, grant, subject):
        with self._lock:
            self._held.pop((grant, subject), None)

    def counts(self, k: int = K) -> dict[str, int | None]:
        """Category -> number of distinct subjects with it; counts below ``k`` are None."""
        with self._lock:
            subjects: dict[str, set[str]] = {}
            for (_, subject), categories in self._held.items():
                for category in categories:
                    subjects.setdefault(category, set()).add(subject)
        totals = Counter({category: len(who) for category, who in subjects.items()})
        return {category: n if n >= k else None for category, n in sorted(totals.items())}

    def held(self) -> int:
        """How many (grant, subject) entries are held."""
        with self._lock:
            return len(self._held)


#: The tally the module-level hooks (the ``rxfed`` entry point) use.
tally = Tally()


@hookimpl
def rxfed_plugin_manifest():
    return tally.rxfed_plugin_manifest()


@hookimpl
def rxfed_signals_received(signals):
    tally.rxfed_signals_received(signals)


@hookimpl
def rxfed_consent_revoked(grant, subject):
    tally.rxfed_consent_revoked(grant, subject)


def counts(k: int = K) -> dict[str, int | None]:
    """The module tally's counts (see :meth:`Tally.counts`)."""
    return tally.counts(k)
