"""Built-in node plugin: treatment outcomes reported by patients who consented to research.

It reads ``treatment.outcome`` signals granted for the ``research`` purpose and keeps, per
grant token, the latest (treatment, efficacy band) pairs. :func:`summary` tallies them per
treatment with every count below ``k`` shown as ``"<k"``. The tally stays on this node and
is shown to its operator (the demo prints it); releasing aggregates to other nodes needs
differential-privacy noise and a budget, which this plugin does not do, so it sends
nothing (its manifest says so).
"""

from __future__ import annotations

import threading
from collections import Counter

from rxfed import hookimpl
from rxfed.plugins import PluginManifest

NAME = "outcomes"


class Outcomes:
    """One node's tally (an instance per node, so in-process federations keep theirs apart)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: (token, subject) -> [(treatment, efficacy band)] from the latest delivery.
        self._held: dict[tuple[str, str], list[tuple[str, str]]] = {}

    @hookimpl
    def rxfed_plugin_manifest(self):
        return PluginManifest(name=NAME, version="1.0", reads=("treatment.outcome",), purposes=("research",),
                              sends=(), description="tallies reported treatment efficacy, small counts suppressed")

    @hookimpl
    def rxfed_signals_received(self, signals):
        latest: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for s in signals:
            latest.setdefault((s.grant, s.subject), []).append((s.body["treatment"], s.body.get("efficacy", "unknown")))
        with self._lock:
            self._held.update(latest)  # a delivery replaces the token's previous one

    @hookimpl
    def rxfed_consent_revoked(self, grant, subject):
        with self._lock:
            self._held.pop((grant, subject), None)

    def summary(self, k: int = 11) -> dict[str, dict[str, int | str]]:
        """Per treatment, how many patients reported each efficacy band; counts under ``k``
        are shown as ``"<k"``."""
        with self._lock:
            counts = Counter(pair for pairs in self._held.values() for pair in set(pairs))
        out: dict[str, dict[str, int | str]] = {}
        for (treatment, band), n in sorted(counts.items()):
            out.setdefault(treatment, {})[band] = n if n >= k else f"<{k}"
        return out

    def held(self) -> int:
        """How many grant tokens' signals the plugin holds."""
        with self._lock:
            return len(self._held)


#: The instance the ``rxfed`` entry point registers.
plugin = Outcomes()
