"""``rxfed web check``: does a node serve the web client this installation released?

The node publishes the SHA-384 of every file of its web client (``/web-manifest.json``), but
a manifest a node publishes about itself proves nothing; this command compares what the node
serves, file by file, with the manifest inside the installed package (spec/web.md §2, §6).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json

from rxfed.cli import HELP, Output, json_flag, node_url, run_async


def add_parser(sub, words: list[str] | None = None) -> None:
    p = sub.add_parser("web", help=HELP["web"])
    wsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = wsub.add_parser("check", help="compare the web client a node serves with the one installed here "
                                          "(exit 1 when any file differs)")
    check.add_argument("--node", required=True, metavar="URL", type=node_url)
    json_flag(check)
    check.set_defaults(func=cmd_check)


def _sri(data: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


async def compare(url: str, released: dict) -> dict:
    """What ``url`` serves against the ``released`` manifest: every released file fetched and
    hashed (``differs``: a different file; ``missing``: not served), and the files the node's
    own manifest lists beyond the release (``extra``)."""
    from rxfed.client import transport

    http = transport.Http()
    try:
        differs, missing = [], []
        for name, entry in sorted(released["files"].items()):
            path = "/" if name == "index.html" else f"/web/{name}"
            status, body = await transport.request(http, "GET", url + path)
            if status != 200:
                missing.append(name)
            elif _sri(body) != entry["integrity"]:
                differs.append(name)
        status, body = await transport.request(http, "GET", url + "/web-manifest.json")
        try:
            served = json.loads(body) if status == 200 else {}
            extra = sorted(set(served.get("files", {})) - set(released["files"]))
            version = (served.get("software") or {}).get("version")
        except (ValueError, AttributeError, TypeError):
            extra, version = [], None
    except OSError as exc:
        from rxfed.errors import Unavailable

        raise Unavailable(f"cannot reach the node at {url}: {exc or type(exc).__name__}") from None
    finally:
        await http.close()
    same = not (differs or missing or extra)
    return {"node": url, "same": same, "version": released["software"]["version"], "served_version": version,
            "files": len(released["files"]), "differs": differs, "missing": missing, "extra": extra}


def cmd_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    import rxfed

    # the installed release's manifest (read here, not through rxfed.node: no aiohttp import)
    released = json.loads((Path(rxfed.__file__).parent / "web" / "web-manifest.json").read_text())
    result = run_async(compare(args.node, released))

    def lines() -> list[str]:
        if result["same"]:
            return [f"{args.node} serves the web client of rxfed {result['version']}: all {result['files']} files match"]
        out = [f"{args.node} does NOT serve the web client of rxfed {result['version']} installed here"
               + (f" (it says {result['served_version']})" if result["served_version"] else "")]
        out += [f"  differs: {n}" for n in result["differs"]] + [f"  not served: {n}" for n in result["missing"]]
        out += [f"  not in the release: {n}" for n in result["extra"]]
        return out

    Output(args.json).result(result, lines)
    return 0 if result["same"] else 1
