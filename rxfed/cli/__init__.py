"""The ``rxfed`` command: results on stdout, errors on stderr, exit 0 / 1 (refused) / 2 (usage)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from rxfed.errors import BadRequest, RxfedError

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad usage detected after argparse: exit 2 with the message."""


class Output:
    """Writes a command's result: human lines, or one JSON document with ``--json``."""

    def __init__(self, as_json: bool):
        self.as_json = as_json

    def result(self, doc: dict, lines: list[str] | Callable[[], list[str]]) -> None:
        if self.as_json:
            sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        else:
            for line in lines() if callable(lines) else lines:
                sys.stdout.write(line + "\n")
        sys.stdout.flush()


def note(message: str) -> None:
    """Information for the person at the terminal (stderr, so stdout stays the result)."""
    sys.stderr.write(message + "\n")


def secret_input(env: str, prompt: str, *, confirm: bool = False) -> str:
    """A secret from the environment, or from a prompt when there is a terminal; never a
    prompt without one."""
    value = os.environ.get(env)
    if value:
        return value
    if not sys.stdin.isatty():
        raise UsageError(f"no terminal to ask on: set {env}")
    value = getpass.getpass(prompt)
    if confirm and getpass.getpass("Again, to confirm: ") != value:
        raise UsageError("the two entries differ")
    if not value:
        raise UsageError("an empty answer is not allowed")
    return value


def kdf_choice(args: argparse.Namespace) -> str:
    kdf = getattr(args, "kdf", None) or os.environ.get("RXFED_KDF") or "moderate"
    if kdf == "min":
        note("warning: key-file protection 'min' is for tests only; use moderate or sensitive for real profiles")
    return kdf


def run_async(coro) -> Any:
    return asyncio.run(coro)


def build_parser() -> argparse.ArgumentParser:
    from rxfed.cli import community, demo, node, patient, plugins

    parser = argparse.ArgumentParser(prog="rxfed", description="Federated, end-to-end encrypted patient networks.")
    parser.add_argument("--version", action="version", version=f"rxfed {__import__('rxfed').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    node.add_parser(sub)
    patient.add_parser(sub)
    community.add_parser(sub)
    plugins.add_parser(sub)
    demo.add_parser(sub)
    return parser


def json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON (keys in spec/cli.md)")


def fail(message: str, code: int) -> NoReturn:
    sys.stderr.write(f"rxfed: error: {message}\n")
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except UsageError as exc:
        fail(str(exc), EXIT_USAGE)
    except RxfedError as exc:
        from rxfed.client.sdk import NodeRefused

        local_bad_input = isinstance(exc, BadRequest) and not isinstance(exc, NodeRefused)
        fail(exc.message, EXIT_USAGE if local_bad_input else EXIT_REFUSED)
    except KeyboardInterrupt:
        fail("interrupted", EXIT_REFUSED)
    except OSError as exc:
        fail(f"{exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}", EXIT_REFUSED)
    return result or EXIT_OK
