"""What every patient-side command shares: the ``--profile`` option, the passphrase, the
patient's client (from the unlock agent, else opened with the passphrase), and private files.

Kept apart from the commands so that ``rxfed community`` and ``rxfed patient consent`` use it
without importing every ``rxfed patient`` command (import time is most of an unlocked
command's cost)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rxfed.cli import COMPLETE_DIRECTORY, COMPLETE_FILE, TerminalProgress, UsageError, run_async, secret_input


def profile_option(p: argparse.ArgumentParser) -> None:
    # SUPPRESS, so that a --profile given before the action (`recovery-code --profile DIR
    # rotate`) is not overwritten by the action's own default.
    p.add_argument("--profile", metavar="DIR", default=argparse.SUPPRESS,
                   help="the patient's profile directory (default: $RXFED_PROFILE, else ~/.rxfed)"
                   ).complete = COMPLETE_DIRECTORY
    p.add_argument("--ca-bundle", metavar="FILE", default=argparse.SUPPRESS,
                   help="trust only these CAs (PEM) for the node's HTTPS (default: $RXFED_CA_BUNDLE, else the "
                        "system's)").complete = COMPLETE_FILE


def profile_path(args: argparse.Namespace) -> Path:
    """``--profile``, else ``$RXFED_PROFILE``, else ``~/.rxfed``."""
    from rxfed.client.profile import default_profile

    given = getattr(args, "profile", None)
    return Path(given).expanduser() if given else default_profile()


def ask_passphrase(*, new: bool = False) -> str:
    passphrase = secret_input("RXFED_PASSPHRASE", "Key-file passphrase: ", confirm=new)
    if new:
        check_new_passphrase(passphrase)
    return passphrase


def check_new_passphrase(passphrase: str) -> None:
    from rxfed.client import profile

    try:
        profile.check_new_passphrase(passphrase)
    except profile.WeakPassphrase as exc:
        raise UsageError(exc.message) from None


def open_client(args: argparse.Namespace, *, passphrase: bool = False):
    """The patient's client: from the unlock agent if one holds the profile, else opened
    with the passphrase (always with it when ``passphrase``: the command rewrites the key
    file)."""
    from rxfed.client import PatientClient, Profile
    from rxfed.client.sdk import ProfileLocked
    from rxfed.errors import NotFound

    path = profile_path(args)
    if not Profile(path).exists:
        raise NotFound(f"no profile in {path}; register or recover first (or name one with --profile or "
                       "RXFED_PROFILE)", code="no_profile")
    progress = TerminalProgress.if_terminal()
    if not passphrase:
        try:
            return PatientClient.open(path, progress=progress)
        except ProfileLocked:
            pass
    return PatientClient.open(path, ask_passphrase(), progress=progress)


def with_client(args: argparse.Namespace, action):
    client = open_client(args)

    async def go():
        async with client:
            return await action(client)

    return run_async(go())


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (plaintext health records, like the profile
    directory), whole or not at all: a new file beside it, renamed over the old one."""
    import tempfile  # here, not at import: every other command would pay for it

    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
