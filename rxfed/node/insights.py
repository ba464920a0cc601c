"""Insights on a node: the ledger and table declarations as the operator sees them (``rxfed
node insights``, run by rxfed.node.administer), and the tables patients read (``GET
/v1/insights/{category}``).

A release reads only the store (the records plugins/insights.py keeps as signals arrive),
so an operator may run one while the node serves; each is charged to the privacy-budget
ledger in the same transaction that publishes it (rxfed.store.operations). A patient's query
reads a published table and spends nothing: asking twice gives the same answer.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from rxfed.errors import BadRequest, NotFound
from rxfed.node.http import NODE, authenticate, reply
from rxfed.protocol import insights as pin
from rxfed.protocol import release as prl
from rxfed.protocol.canonical import loads

routes = web.RouteTableDef()


def ledger_doc(ledger: prl.Ledger, period: str | None = None) -> dict:
    """The ledger as ``rxfed node insights DATA_DIR ledger --json`` shows it: the budget per
    period, and per period what was spent and what is left, with every release charged."""
    periods = sorted({e.period for e in ledger.entries} | ({period} if period else set()))
    return {"budget": prl.epsilon_text(ledger.budget),
            "periods": [{"period": p, "spent": prl.epsilon_text(ledger.spent(p)),
                         "remaining": prl.epsilon_text(ledger.remaining(p)),
                         "releases": [{"release": e.release, "epsilon": prl.epsilon_text(e.epsilon), "at": e.at}
                                      for e in ledger.entries if e.period == p]}
                        for p in periods if period is None or p == period]}


def release_row(row: tuple) -> dict:
    release, table, category, period, computed, body = row
    return {"release": release, "table": table, "category": category, "period": period, "computed": computed,
            "published": loads(body)}


def declared_table(category: str, declaration: Any) -> prl.TableSchema:
    """A category's table from the operator's declaration, a JSON object: ``treatments``
    (required), ``side_effects``, ``symptoms`` (lists of names) and ``max_groups``."""
    pin.check_category(category)
    if not isinstance(declaration, dict) or not set(declaration) <= {"treatments", "side_effects", "symptoms",
                                                                      "max_groups"} \
            or "treatments" not in declaration:
        raise BadRequest("a table declaration is {treatments, side_effects, symptoms, max_groups}",
                         code="bad_table")
    lists = {k: declaration.get(k, []) for k in ("treatments", "side_effects", "symptoms")}
    if not all(isinstance(v, list) for v in lists.values()):
        raise BadRequest("treatments, side_effects and symptoms are lists of names", code="bad_table")
    return pin.outcome_table(category, lists["treatments"], side_effects=lists["side_effects"],
                             symptoms=lists["symptoms"], max_groups=declaration.get("max_groups", 1))


# -- what patients read ----------------------------------------------------------------------


@routes.get("/v1/insights/{category}")
async def get_insights(request: web.Request) -> web.Response:
    """The newest published table of a category, as :func:`rxfed.protocol.insights.patient_view`
    shows it, with the ledger of its period. Only a patient of this node may read it; reading
    spends no budget."""
    state = request.app[NODE]
    caller = await authenticate(request, suspended_ok=True)
    await state.store.check_signer(caller.patient, caller.auth.device)
    category = pin.check_category(request.match_info["category"])
    rows = await state.store.insight_releases(category)
    if not rows:
        raise NotFound(f"no table has been released for {category} yet", code="no_release")
    row = release_row(rows[0])
    view = pin.patient_view(row["published"])
    return reply({"release": row["release"], "category": category, **view,
                  "ledger": ledger_doc(await state.store.insights_ledger(), row["period"])})
