"""Built-in node plugin: cross-node diagnosis matching ("find patients like me").

It reads ``diagnosis.category`` signals a node's own patients granted for the ``matching``
purpose and names the category each puts its patient in (``icd10:G40``). The node does the
rest (rxfed/node/matching.py, spec/federation.md "Matching"): it counts consenting patients
per category in its store, offers a category to its allowed peers only with at least ``k``
of them, compares offers by private set intersection (spec/crypto.md §13), and tells a
consenting patient how many patients on each node share their categories, never fewer than
``k``. The plugin keeps nothing itself: a revoked grant leaves the node's counts at once.
"""

from __future__ import annotations

from rxfed import hookimpl
from rxfed.plugins import PluginManifest

NAME = "matching"
KIND = "diagnosis.category"


@hookimpl
def rxfed_plugin_manifest():
    return PluginManifest(
        name=NAME, version="1.0", reads=(KIND,), purposes=("matching",),
        sends=("diagnosis categories held by at least k consenting patients, blinded for private set intersection "
               "with allowed peers", "for categories both nodes offer: a bucketed count of consenting patients"),
        description="finds categories shared with other nodes' patients; suggestions for consenting patients")


@hookimpl
def rxfed_signals_received(signals):
    """The node keeps the signals in its store and counts from there; nothing to keep here."""


@hookimpl
def rxfed_matching_categories(signals):
    return [[f"{s.body.get('system', 'icd10')}:{s.body['category']}"] if s.kind == KIND else [] for s in signals]
