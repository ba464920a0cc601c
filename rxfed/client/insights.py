"""A patient's view of the federation's treatment insights (``rxfed insights``).

The home node serves the newest published table of a diagnosis category; reading it spends
no privacy budget, so asking twice gives the same answer until the next scheduled release.
Every figure was noised before it was published and values under 11 arrive as ``"<11"``.
"""

from __future__ import annotations

from typing import Any

from rxfed.errors import BadRequest
from rxfed.protocol import insights as pin

#: The keys of the table the node answers with (``--json`` shows the same).
KEYS = {"release", "category", "table", "period", "epsilon", "nodes", "computed", "suppressed_below", "treatments",
        "ledger"}


async def insights(client, category: str, treatment: str | None = None) -> dict:
    """The newest table of ``category`` (of one ``treatment`` when given)."""
    pin.check_category(category)
    doc: Any = await client._call("GET", f"/v1/insights/{category}")
    if not isinstance(doc, dict) or set(doc) != KEYS or doc["category"] != category \
            or not isinstance(doc["treatments"], list):
        raise BadRequest("the node's insights table is not in the expected form", code="bad_insights")
    if treatment is not None:
        doc = {**doc, "treatments": [t for t in doc["treatments"] if t.get("treatment") == treatment]}
    return doc
