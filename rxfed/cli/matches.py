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

    def lines() -> list[str]:
        return matching.lines(found) or [f"no suggestions yet: a category shows once at least {found['k']} "
                                         "consenting patients on a node share it"]

    Output(args.json).result(found, lines)
