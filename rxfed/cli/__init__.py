"""The ``rxfed`` command: results on stdout, errors on stderr, exit 0 / 1 (refused) / 2 (usage)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from rxfed.errors import BadRequest, RxfedError

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad usage detected after argparse: exit 2 with the message."""


class StdoutClosed(Exception):
    """Whoever reads our standard output stopped reading (``rxfed patient show | head -1``)."""


#: Characters a terminal acts on rather than shows (C0/C1 controls but tab and newline;
#: bidirectional overrides and isolates, which reorder what is shown).
_UNSHOWN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def shown(line: str) -> str:
    """``line`` as a terminal may print it: what other nodes and files say (an error's
    message, a version, a name) reaches the operator's terminal, and an escape sequence in
    it must not retitle the window, hide a line or forge one. Each such character is shown
    as its escape (``\\x1b``, ``\\u202e``) instead."""
    return _UNSHOWN.sub(lambda m: m.group().encode("unicode_escape").decode(), line)


class Output:
    """Writes a command's result: human lines, or one JSON document with ``--json``."""

    def __init__(self, as_json: bool):
        self.as_json = as_json

    def result(self, doc: dict, lines: list[str] | Callable[[], list[str]]) -> None:
        try:
            if self.as_json:
                sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
            else:
                for line in lines() if callable(lines) else lines:
                    sys.stdout.write(shown(line) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            raise StdoutClosed from None


def note(message: str) -> None:
    """Information for the person at the terminal (stderr, so stdout stays the result)."""
    try:
        sys.stderr.write(shown(message) + "\n")
    except BrokenPipeError:
        pass


class TerminalProgress:
    """``progress(what, done, total)`` on standard error, only when it is a terminal (a
    script or a log file gets no progress lines, only the result)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.shown = 0.0

    @classmethod
    def if_terminal(cls) -> TerminalProgress | None:
        try:
            return cls() if sys.stderr.isatty() else None
        except (AttributeError, ValueError):
            return None

    def __call__(self, what: str, done: int, total: int) -> None:
        import time

        now = time.monotonic()
        if done < total and now - self.shown < 0.1:
            return
        self.shown = now
        try:
            self.stream.write(f"\r{what}: {done}/{total} ({100 * done // max(total, 1)}%)")
            if done >= total:
                self.stream.write("\r\x1b[K")  # the line is cleared once the work is done
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            pass


#: shtab's completion hints, spelled out so that building the parser needs no shtab.
COMPLETE_DIRECTORY = {"bash": "_shtab_compgen_dirs", "zsh": "_files -/", "tcsh": "d"}
COMPLETE_FILE = {"bash": "_shtab_compgen_files", "zsh": "_files", "tcsh": "f"}


def node_url(text: str) -> str:
    """``--node``: an http(s) URL; anything else is bad usage, said clearly."""
    from urllib.parse import urlsplit

    value = text.strip()
    parts = urlsplit(value)
    if parts.scheme in ("http", "https") and parts.hostname:
        try:
            parts.port
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} has an invalid port") from None
        return value.rstrip("/")
    local = value.split(":")[0] in ("127.0.0.1", "localhost", "[::1]")
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a URL: write it with its scheme, e.g. {'http' if local else 'https'}://{value}")


def port_number(text: str) -> int:
    """``--port``: a whole number from 1 to 65535, or bad usage."""
    try:
        port = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port: ports are from 1 to 65535")
    return port


def input_file(text: str) -> str:
    """A file the command reads: one that is missing or unreadable is bad usage (exit 2),
    like one that is not in the format the command reads."""
    if text == "-":
        return text
    path = os.path.expanduser(text)
    if not os.path.exists(path):
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f"{text}: not a file")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text}: cannot be read (permission denied)")
    return text


class Parser(argparse.ArgumentParser):
    """argparse, with errors that name the actions a command has instead of "invalid
    choice" for whatever word came first."""

    def error(self, message: str) -> NoReturn:
        actions = next((a for a in self._actions if isinstance(a, argparse._SubParsersAction)), None)
        if actions is not None and actions.dest != argparse.SUPPRESS:
            choices = ", ".join(actions.choices)
            if "invalid choice" in message:
                word = message.split("invalid choice: ", 1)[1].split(" (choose", 1)[0].strip("'\"")
                what = "command" if actions.dest == "command" else "action"
                message = f"{word!r} is not {'a' if what == 'command' else 'an'} {what} of `{self.prog}`; choose one " \
                          f"of: {choices}"
            elif message.startswith("the following arguments are required") and actions.metavar in message:
                message = f"`{self.prog}` needs an action: {choices} (`{self.prog} ACTION --help` for more)"
        super().error(message)


def secret_input(env: str, prompt: str, *, confirm: bool = False) -> str:
    """A secret from the environment, or from a prompt when there is a terminal; never a
    prompt without one."""
    value = os.environ.get(env)
    if value:
        return value
    if not sys.stdin.isatty():
        raise UsageError(f"no terminal to ask on: set {env}")
    import getpass

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
    import asyncio  # not at import: `rxfed --help` and the node's admin commands do without it

    return asyncio.run(coro)


#: The commands: name -> (module, one-line help). Only the module of the command being run is
#: imported and its parsers built: building every parser of every command costs more than
#: most commands take to run.
COMMANDS = {
    "node": "rxfed.cli.node",
    "patient": "rxfed.cli.patient",
    "community": "rxfed.cli.community",
    "moderation": "rxfed.cli.moderation",
    "plugins": "rxfed.cli.plugins",
    "demo": "rxfed.cli.demo",
    "web": "rxfed.cli.web",
}
HELP = {
    "node": "run and administer a node",
    "patient": "a patient's keys, records and account",
    "community": "condition communities",
    "moderation": "check messages as the pre-send checks do, in bulk",
    "plugins": "list installed plugins, or start a new one from the template",
    "demo": "run a three-node federation on loopback and show what nodes store",
    "web": "check that a node serves the released patient web client",
    "completion": "print a shell completion script: eval \"$(rxfed completion bash)\"",
}
#: Other names a command answers to.
ALIASES = {"plugins": ["plugin"]}


def wanted_word(words: list[str] | None, options_with_values: tuple[str, ...] = ()) -> str | None:
    """The first word of ``words`` that is not an option (nor an option's value)."""
    skip = False
    for word in words or ():
        if skip:
            skip = False
        elif word in options_with_values:
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def add_actions(sub, helps: dict[str, str], builders: dict, words: list[str] | None, *,
                options_with_values: tuple[str, ...] = ()) -> None:
    """Add the actions ``helps`` names to ``sub``: in full (``builders[name](sub)``; a key
    may be a tuple of names one builder adds together) for the action ``words`` picks, or
    for all when ``words`` is None; the others by name and help only, which is all that
    ``--help`` and an error message need."""
    wanted = None if words is None else wanted_word(words, options_with_values)
    built: set[str] = set()
    for key, build in builders.items():
        names = key if isinstance(key, tuple) else (key,)
        if words is None or wanted in names or any(wanted in ALIASES.get(n, ()) for n in names):
            build(sub)
            built.update(names)
    for name, text in helps.items():
        if name not in built:
            sub.add_parser(name, help=text, aliases=ALIASES.get(name, []))


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``rxfed`` parser: for ``argv``'s command only, or every command's when None."""
    import importlib

    parser = Parser(prog="rxfed", description="Federated, end-to-end encrypted patient networks.")
    parser.add_argument("--version", action="version", version=f"rxfed {__import__('rxfed').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = wanted_word(argv)
    rest = None if argv is None else argv[argv.index(wanted) + 1:] if wanted in argv else []

    def command(name: str):
        return lambda sub: importlib.import_module(COMMANDS[name]).add_parser(sub, rest)

    def completion(sub) -> None:
        comp = sub.add_parser("completion", help=HELP["completion"])
        comp.add_argument("shell", choices=("bash", "zsh"))
        comp.set_defaults(func=cmd_completion)

    builders = {name: command(name) for name in COMMANDS} | {"completion": completion}
    add_actions(sub, HELP, builders, argv)
    return parser


def cmd_completion(args: argparse.Namespace) -> None:
    import shtab

    script = shtab.complete(build_parser(None), shell=args.shell)
    Output(False).result({}, [script.rstrip("\n")])


def json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON (keys in spec/cli.md)")


def fail(message: str, code: int) -> NoReturn:
    for line in message.splitlines() or [""]:  # one line per problem (a config file's, say)
        sys.stderr.write(f"rxfed: error: {shown(line)}\n")
    raise SystemExit(code)


def write_export(data: str | bytes, path: str | None) -> None:
    """An exported list on stdout (no path, or -), or written to ``path``."""
    raw = data.encode() if isinstance(data, str) else data + b"\n"
    if path in (None, "-"):
        sys.stdout.buffer.write(raw)
        sys.stdout.flush()
        return
    try:
        with open(path, "xb") as f:
            f.write(raw)
    except FileExistsError:
        fail(f"{path} exists; export to a new file", EXIT_REFUSED)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror}", EXIT_REFUSED)
    note(f"wrote {path}")


def _stdout_gone() -> bool:
    """Whether standard output is a pipe or socket whose reader has gone (as opposed to a
    connection to the node that broke)."""
    try:
        import select

        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def _stdout_closed() -> NoReturn:
    """The reader of our output went away: end as Unix tools do, killed by SIGPIPE (exit
    status 141 in a shell), with no message; where there is no SIGPIPE, exit 1 quietly."""
    import signal

    try:  # what is still buffered must not fail again at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGPIPE)
    raise SystemExit(EXIT_REFUSED)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "ca_bundle", None):  # a patient-side command's --ca-bundle: the transport reads it
        os.environ["RXFED_CA_BUNDLE"] = args.ca_bundle
    try:
        result = args.func(args)
    except StdoutClosed:
        _stdout_closed()
    except UsageError as exc:
        fail(str(exc), EXIT_USAGE)
    except RxfedError as exc:
        from rxfed.client.sdk import NodeRefused

        local_bad_input = isinstance(exc, BadRequest) and not isinstance(exc, NodeRefused)
        fail(exc.message, EXIT_USAGE if local_bad_input else EXIT_REFUSED)
    except KeyboardInterrupt:
        fail("interrupted", EXIT_REFUSED)
    except BrokenPipeError as exc:  # a command that wrote to stdout itself (`export --fhir -`)
        if _stdout_gone():
            _stdout_closed()
        fail(f"{exc.strerror or exc}", EXIT_REFUSED)
    except OSError as exc:
        fail(f"{exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}", EXIT_REFUSED)
    return result or EXIT_OK
