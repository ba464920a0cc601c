"""Sign, verify or make a key for a moderation rules file (plugins/data/moderation_rules.json).

A rules file is a signed statement (spec/moderation.md): ``{"body": {...}, "sig": ...}``, the
signature Ed25519 over ``rxfed-statement|`` and the body's canonical JSON. Edit the body,
raise its ``version``, then sign it again with the publisher's key, which is kept outside the
repository:

    python scripts/moderation-rules.py keygen KEYFILE          # a new publisher key (prints the public key)
    python scripts/moderation-rules.py sign KEYFILE RULES.json  # re-sign the body in place
    python scripts/moderation-rules.py verify RULES.json        # as the plugin checks it

KEYFILE holds the 32-byte Ed25519 seed, base64url, and is written mode 0600.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rxfed.crypto import SigningKeyPair, b64d, b64e, random_bytes
from rxfed.protocol.canonical import loads
from rxfed.protocol.statements import sign_statement


def keygen(path: Path) -> None:
    seed = random_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(b64e(seed) + "\n")
    print(b64e(SigningKeyPair.from_seed(seed).public))


def sign(keyfile: Path, rules: Path) -> None:
    key = SigningKeyPair.from_seed(b64d(keyfile.read_text().strip(), length=32))
    doc = loads(rules.read_bytes())
    body = doc["body"] if isinstance(doc, dict) and "body" in doc else doc
    signed = sign_statement(key, body)
    rules.write_text(json.dumps(signed, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"signed version {body['version']} as {body['publisher']} ({b64e(key.public)})")


def verify(rules: Path) -> int:
    from rxfed_plugins.moderation import PUBLISHERS, ModerationRules, RulesRefused

    try:
        found = ModerationRules.from_bytes(rules.read_bytes(), PUBLISHERS, where=str(rules))
    except RulesRefused as exc:
        print(exc.message, file=sys.stderr)
        return 1
    print(f"{rules}: version {found.version} of {found.issued}, signed by {found.publisher}, "
          f"{len(found.categories)} categories")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("keygen").add_argument("keyfile", type=Path)
    s = sub.add_parser("sign")
    s.add_argument("keyfile", type=Path)
    s.add_argument("rules", type=Path)
    sub.add_parser("verify").add_argument("rules", type=Path)
    args = parser.parse_args()
    if args.action == "keygen":
        keygen(args.keyfile)
    elif args.action == "sign":
        sign(args.keyfile, args.rules)
    else:
        return verify(args.rules)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
