"""The patient's matching suggestions: who else, on which node, shares a category.

The home node answers ``GET /v1/matching/suggestions`` only to a patient holding a live
``matching`` grant for their diagnosis categories, and only for categories the patient
holds. The client checks the answer's shape and shows no count below the threshold,
whatever the node says (spec/federation.md, "Matching").
"""

from __future__ import annotations

from rxfed.errors import RxfedError
from rxfed.protocol.matching import MIN_K, valid_category

PATH = "/v1/matching/suggestions"


class BadSuggestions(RxfedError):
    status = 502
    code = "bad_suggestions"


def _entries(items, k: int) -> list[dict]:
    if not isinstance(items, list):
        raise BadSuggestions("the node's suggestions are not a list")
    out = []
    for item in items:
        if not (isinstance(item, dict) and valid_category(item.get("category")) and isinstance(item.get("node"), str)
                and isinstance(item.get("count"), int) and not isinstance(item.get("count"), bool)):
            raise BadSuggestions("the node sent a suggestion of another shape")
        if item["count"] >= k:
            out.append({key: item[key] for key in ("id", "category", "node", "count", "updated") if key in item})
    return out


def checked(found) -> dict:
    """The node's answer as the patient sees it: counts below ``k`` left out."""
    if not isinstance(found, dict) or not isinstance(found.get("k"), int) or found["k"] < MIN_K:
        raise BadSuggestions("the node's suggestions name no threshold of at least 5")
    k = found["k"]
    return {"node": found.get("node"), "k": k, "own": _entries(found.get("own"), k),
            "suggestions": _entries(found.get("suggestions"), k)}


async def suggestions(client) -> dict:
    return checked(await client._call("GET", PATH))


def code_of(category: str) -> str:
    return category.split(":", 1)[1]


def sentence(suggestion: dict, own: dict[str, int]) -> str:
    """``14 patients on hospital-b (and 11 on your own node) share category G40``."""
    category = suggestion["category"]
    mine = f" (and {own[category]} on your own node)" if category in own else ""
    return f"{suggestion['count']} patients on {suggestion['node']}{mine} share category {code_of(category)}"


def lines(view: dict) -> list[str]:
    """Every line a patient reads (the CLI and the page's Matches view): the suggestions,
    then own-node counts no other node shares yet."""
    own = {o["category"]: o["count"] for o in view["own"]}
    out = [sentence(s, own) for s in view["suggestions"]]
    out += [f"{n} patients on your own node share category {code_of(c)}; no other node shares it yet"
            for c, n in own.items() if not any(s["category"] == c for s in view["suggestions"])]
    return out
