"""``rxfed patient matches``: other nodes' patients who share your diagnosis categories."""

from __future__ import annotations

import argparse

from rxfed.cli import Output, json_flag


def add_parsers(psub, profile) -> None:
    ma = psub.add_parser("matches", help="patients on other nodes who share your diagnosis categories")
    profile(ma)
    json_flag(ma)
    ma.set_defaults(func=cmd_matches)


def cmd_matches(args: argparse.Namespace) -> None:
    from rxfed.cli.profile import with_client
    from rxfed.client import matching

    found = with_client(args, matching.suggestions)
    own = {o["category"]: o["count"] for o in found["own"]}

    def lines() -> list[str]:
        out = [matching.sentence(s, own) for s in found["suggestions"]]
        out += [f"{n} patients on your own node share category {matching.code_of(c)}; no other node shares it yet"
                for c, n in own.items() if not any(s["category"] == c for s in found["suggestions"])]
        return out or [f"no suggestions yet: a category shows once at least {found['k']} consenting patients on a "
                       "node share it"]

    Output(args.json).result(found, lines)
