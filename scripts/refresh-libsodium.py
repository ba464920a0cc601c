#!/usr/bin/env python3
"""Vendor libsodium for the web client: libsodium-wrappers-sumo and libsodium-sumo, pinned.

    python3 scripts/refresh-libsodium.py            # fetch VERSION, check, copy, record
    python3 scripts/refresh-libsodium.py 0.8.5      # move the pin to another version

Each tarball is fetched with npm (`npm pack`), and its SHA-512 checked against the
registry's `dist.integrity` (`npm view`) before anything is extracted. From each the browser
ESM build is copied into rxfed/web/vendor/, with one edit: the wrappers import libsodium by
its package name, which a browser cannot resolve without an import map (an inline script
the page's CSP forbids), so that one specifier is rewritten to the relative file. Version,
integrity, the upstream and the vendored SHA-384 of each file go to
rxfed/web/vendor/libsodium.json, which tests/test_web.py checks the files against. The
license (ISC) allows this copy; its notice is kept in rxfed/web/vendor/LICENSE-libsodium.txt.
Run scripts/web-manifest.py afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.8.4"
ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "rxfed" / "web" / "vendor"
#: package -> (file in its tarball, vendored name)
FILES = {
    "libsodium-sumo": ("package/dist/modules-sumo-esm/libsodium-sumo.mjs", "libsodium-sumo.mjs"),
    "libsodium-wrappers-sumo": ("package/dist/modules-sumo-esm/libsodium-wrappers.mjs", "libsodium-wrappers.mjs"),
}
IMPORT_FROM, IMPORT_TO = b'from"libsodium-sumo"', b'from"./libsodium-sumo.mjs"'


def sri(data: bytes, alg: str = "sha384") -> str:
    return f"{alg}-" + base64.b64encode(hashlib.new(alg, data).digest()).decode()


def npm(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["npm", *args], check=True, capture_output=True, text=True, cwd=cwd).stdout


def fetch(name: str, version: str, tmp: Path) -> tuple[bytes, str, str]:
    """(tarball bytes, integrity, license) of name@version, the tarball checked."""
    meta = json.loads(npm("view", f"{name}@{version}", "dist", "license", "--json"))
    integrity, license_ = meta["dist"]["integrity"], meta["license"]
    tarball = tmp / npm("pack", f"{name}@{version}", "--silent", cwd=tmp).strip().splitlines()[-1]
    data = tarball.read_bytes()
    alg = integrity.split("-", 1)[0]
    if sri(data, alg) != integrity:
        sys.exit(f"{name}@{version}: the tarball does not match the registry's integrity {integrity}")
    return data, integrity, license_


def main(version: str = VERSION) -> None:
    record = {"version": version, "packages": {}, "files": {},
              "edit": "libsodium-wrappers.mjs: the import of 'libsodium-sumo' names ./libsodium-sumo.mjs"}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (member, target) in FILES.items():
            data, integrity, license_ = fetch(name, version, Path(tmp))
            if license_ != "ISC":
                sys.exit(f"{name}@{version} is licensed {license_}, not ISC: check before vendoring")
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                upstream = tar.extractfile(member).read()
                notice = tar.extractfile("package/LICENSE").read()
            vendored = upstream.replace(IMPORT_FROM, IMPORT_TO) if name == "libsodium-wrappers-sumo" else upstream
            if name == "libsodium-wrappers-sumo" and upstream.count(IMPORT_FROM) != 1:
                sys.exit("libsodium-wrappers.mjs no longer imports libsodium-sumo the way this script rewrites")
            (VENDOR / target).write_bytes(vendored)
            record["packages"][name] = {"version": version, "integrity": integrity, "license": license_}
            record["files"][target] = {"package": name, "from": member, "upstream": sri(upstream),
                                       "vendored": sri(vendored)}
    (VENDOR / "LICENSE-libsodium.txt").write_bytes(
        b"libsodium.js (libsodium-wrappers-sumo, libsodium-sumo) " + version.encode() + b", ISC license:\n\n" + notice)
    (VENDOR / "libsodium.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    print(f"vendored libsodium.js {version} into {VENDOR.relative_to(ROOT)}; now run scripts/web-manifest.py")


if __name__ == "__main__":
    main(*sys.argv[1:2])
