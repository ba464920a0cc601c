"""The patient web client's static files, served by every node under strict headers.

The files live in ``rxfed/web/`` inside the package (a plain ``pip install`` serves them; no
build step on the operator's machine). Only the files that ``rxfed/web/web-manifest.json``
lists are served, each with the Content-Security-Policy and the other headers below, so
what a node serves is exactly the released client (spec/web.md says what a modified one
could still do). ``/`` is the page itself; ``/web-manifest.json`` publishes the SHA-384 of
every file so anyone can compare a node's client with a release.
"""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web

from rxfed.errors import NotFound

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
MANIFEST = "web-manifest.json"

#: The policy of spec/web.md: scripts only from this origin (libsodium's WebAssembly needs
#: 'wasm-unsafe-eval', nothing else is evaluated), no inline script or style, no plugin, no
#: framing, no other origin to talk to.
CSP = ("default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    # Revalidate every time: after an upgrade the page and its modules must change together.
    "Cache-Control": "no-cache",
}
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}


def served_files(web_dir: Path = WEB_DIR) -> dict[str, Path]:
    """Path below ``/web/`` -> file, for exactly the files the manifest lists."""
    try:
        manifest = json.loads((web_dir / MANIFEST).read_text())
        names = list(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {name: web_dir / name for name in names if (web_dir / name).is_file()}


def install(app: web.Application, web_dir: Path = WEB_DIR) -> None:
    """Add ``/``, ``/web/{path}`` and ``/web-manifest.json`` to a node application."""
    files = served_files(web_dir)

    def respond(path: Path) -> web.StreamResponse:
        headers = {**HEADERS, "Content-Type": TYPES.get(path.suffix, "application/octet-stream")}
        return web.FileResponse(path, headers=headers)

    async def page(request: web.Request) -> web.StreamResponse:
        if "index.html" not in files:
            raise NotFound("this node was installed without the web client", code="not_found")
        return respond(files["index.html"])

    async def asset(request: web.Request) -> web.StreamResponse:
        path = files.get(request.match_info["path"])
        if path is None:
            raise NotFound("no such file in the web client", code="not_found")
        return respond(path)

    async def manifest(request: web.Request) -> web.StreamResponse:
        if not files:
            raise NotFound("this node was installed without the web client", code="not_found")
        return respond(web_dir / MANIFEST)

    app.router.add_get("/", page)
    app.router.add_get("/web/{path:.+}", asset)
    app.router.add_get("/" + MANIFEST, manifest)
