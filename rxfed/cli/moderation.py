"""``rxfed moderation``: the client plugins' pre-send checks, on messages read in bulk, and the
check ``rxfed community post`` runs on the device before a message is sealed and sent."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from rxfed.cli import EXIT_REFUSED, HELP, Output, StdoutClosed, UsageError, fail, json_flag, note

#: The code a plugin's warning carries when it could not check the message (hookspecs).
UNCHECKED = "unchecked"


def add_parser(sub, words: list[str] | None = None) -> None:
    p = sub.add_parser("moderation", help=HELP["moderation"])
    msub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = msub.add_parser("check", help="run the pre-send checks on messages read from standard input, one a line")
    country_option(check)
    json_flag(check)
    check.set_defaults(func=cmd_check)


def country_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--country", metavar="CC", type=country_code, default=None,
                   help="your two-letter country code, for the crisis line shown (default: $RXFED_COUNTRY)")


def country_code(text: str) -> str:
    value = text.strip().upper()
    if not re.fullmatch(r"[A-Z]{2}", value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a two-letter country code (ISO 3166), e.g. GB or US")
    return value


def chosen_country(args: argparse.Namespace) -> str | None:
    if args.country:
        return args.country
    given = os.environ.get("RXFED_COUNTRY", "").strip()
    if not given:
        return None
    try:
        return country_code(given)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"RXFED_COUNTRY: {exc}") from None


class PresendCheck:
    """The installed client plugins' pre-send checks. Only the plugins that implement the
    check are loaded, and none when no installed plugin does (rxfed.plugin_index)."""

    def __init__(self):
        from rxfed.plugin_index import GROUP, PluginIndex

        self.plugins = None
        index = PluginIndex.load(GROUP)
        if any(True for _ in index.wanted(["rxfed_presend_check"])):
            from rxfed.plugins import RxfedPlugins

            self.plugins = RxfedPlugins(hooks=["rxfed_presend_check"], plugin_index=index)
        else:
            index.save()

    @property
    def available(self) -> bool:
        return self.plugins is not None and bool(self.plugins.names())

    def __call__(self, text: str, country: str | None) -> list:
        return [] if self.plugins is None else self.plugins.presend_check(text, country)

    def failed(self) -> list[str]:
        """``plugin: error`` for each plugin whose check raised, timed out or answered wrongly."""
        if self.plugins is None:
            return []
        return [f"{row.name}: {row.last_error}" for row in self.plugins.status() if row.total_failures]

    def close(self) -> None:
        if self.plugins is not None:
            self.plugins.close()


def _messages() -> list[str]:
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UsageError(f"standard input, line {line}: not UTF-8 text") from None
    return text.splitlines()


def cmd_check(args: argparse.Namespace) -> int:
    country = chosen_country(args)
    if sys.stdin.isatty():
        note("reading messages, one a line; end with Ctrl-D")
    messages = _messages()
    check = PresendCheck()
    try:
        if not check.available:
            fail("no installed plugin checks messages (rxfed_presend_check); see `rxfed plugins list`", EXIT_REFUSED)
        results = []
        for text in messages:
            warnings = check(text, country)
            refused = [w for w in warnings if w.code == UNCHECKED]
            if refused:
                fail(refused[0].message, EXIT_REFUSED)
            if check.failed():
                fail("a pre-send check failed, so the results would be incomplete: " + "; ".join(check.failed()),
                     EXIT_REFUSED)
            categories = list(dict.fromkeys(w.code for w in warnings))
            results.append({"flagged": bool(warnings), "categories": categories,
                            "warnings": [w.to_json() for w in warnings]})
    finally:
        check.close()
    _write(results, args.json)
    return 0


def _write(results: list[dict], as_json: bool) -> None:
    """JSON Lines with ``--json`` (one object a message, in input order), else one line a
    message: ``ok`` or ``flagged: CATEGORY, ...``."""
    if not as_json:
        Output(False).result({}, [("flagged: " + ", ".join(r["categories"])) if r["flagged"] else "ok"
                                  for r in results])
        return
    try:
        for r in results:
            sys.stdout.write(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        raise StdoutClosed from None
