#!/usr/bin/env python3
"""Write the web client's Subresource Integrity and its published manifest.

    python3 scripts/web-manifest.py        # after any change under rxfed/web/

1. In rxfed/web/index.html, between `<!-- assets -->` and `<!-- /assets -->`: the
   stylesheet, a `<link rel="modulepreload">` for every module the page imports and the
   `<script type="module">` of the entry module, each with its SHA-384 `integrity`. (A
   browser checks SRI on the module a script tag names; the preloads, each with its own
   hash, put every imported module in the module map under its checked bytes.)
2. rxfed/web/web-manifest.json: the SHA-384 and size of every file the node serves,
   index.html included. The node serves exactly the files listed there, at /web/PATH and
   the page at /, and publishes the manifest at /web-manifest.json.
3. PATH.gz beside every served file of at least 4 KiB: gzip at level 9 with no time stamp
   (so the same file always gives the same bytes), which the node sends to browsers that
   accept gzip (aiohttp's FileResponse picks such a sibling); SRI and the manifest hash the
   file itself, which is what the browser checks after decoding.

tests/test_web.py fails when either is stale.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "rxfed" / "web"
MANIFEST = "web-manifest.json"
ENTRY = "js/app.mjs"
STYLE = "app.css"
#: Files kept beside the client that the node does not serve.
NOT_SERVED = {MANIFEST, "vendor/libsodium.json"}
#: Files at least this large get a precompressed .gz sibling.
GZIP_FROM = 4096
ASSETS = re.compile(r"(<!-- assets:[^\n]*-->\n)(.*?)(<!-- /assets -->)", re.S)


def sri(data: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def files(web: Path = WEB) -> list[str]:
    return sorted(p.relative_to(web).as_posix() for p in web.rglob("*")
                  if p.is_file() and not p.name.startswith(".") and p.suffix != ".gz"
                  and p.relative_to(web).as_posix() not in NOT_SERVED)


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


def compressed(web: Path, html: str) -> dict[str, bytes]:
    """PATH.gz -> its bytes, for every served file of at least GZIP_FROM bytes."""
    out = {}
    for name in files(web):
        data = html.encode() if name == "index.html" else (web / name).read_bytes()
        if len(data) >= GZIP_FROM:
            out[name + ".gz"] = gzipped(data)
    return out


def render(web: Path = WEB) -> tuple[str, str]:
    """(index.html, web-manifest.json) as they must be for the files under ``web``."""
    names = files(web)
    data = {name: (web / name).read_bytes() for name in names if name != "index.html"}
    modules = [n for n in names if n.endswith(".mjs") and n != ENTRY]
    lines = [f'<link rel="stylesheet" href="/web/{STYLE}" integrity="{sri(data[STYLE])}">']
    lines += [f'<link rel="modulepreload" href="/web/{n}" integrity="{sri(data[n])}">' for n in modules]
    lines.append(f'<script type="module" src="/web/{ENTRY}" integrity="{sri(data[ENTRY])}"></script>')
    html = (web / "index.html").read_text()
    if not ASSETS.search(html):
        sys.exit("index.html has no <!-- assets: ... --> ... <!-- /assets --> block")
    html = ASSETS.sub(lambda m: m.group(1) + "\n".join(lines) + "\n" + m.group(3), html, count=1)
    data["index.html"] = html.encode()
    sys.path.insert(0, str(ROOT))
    import rxfed

    vendor = json.loads((web / "vendor" / "libsodium.json").read_text())
    manifest = {
        "format": "rxfed-web-manifest-1",
        "software": {"name": "rxfed", "version": rxfed.__version__},
        "libsodium": vendor["version"],
        "files": {name: {"integrity": sri(data[name]), "bytes": len(data[name])} for name in names},
    }
    return html, json.dumps(manifest, indent=1, sort_keys=True) + "\n"


def main() -> None:
    html, manifest = render()
    (WEB / "index.html").write_text(html)
    (WEB / MANIFEST).write_text(manifest)
    wanted = compressed(WEB, html)
    for stale in WEB.rglob("*.gz"):
        if stale.relative_to(WEB).as_posix() not in wanted:
            stale.unlink()
    for name, data in wanted.items():
        (WEB / name).write_bytes(data)
    print(f"wrote rxfed/web/index.html, rxfed/web/{MANIFEST} and {len(wanted)} .gz files")


if __name__ == "__main__":
    main()
