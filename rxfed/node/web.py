"""The patient web client's static files, served by every node under strict headers.

The files live in ``rxfed/web/`` inside the package (a plain ``pip install`` serves them; no
build step on the operator's machine). Only the files that ``rxfed/web/web-manifest.json``
lists are served, each with the Content-Security-Policy and the other headers below, so
what a node serves is exactly the released client (spec/web.md says what a modified one
could still do). ``/`` is the page itself; ``/web-manifest.json`` publishes the SHA-384 of
every file so anyone can compare a node's client with a release.

The page checks what its home node relays (host stamps, acknowledgements) under keys it
fetches from the host or recipient itself, so the page's ``connect-src`` names the peers
this node federates with (the allowed ones), and the public documents a browser on another
node's page needs (``/.well-known/rxfed``, the community directory) answer CORS for any
origin, without credentials (spec/web.md §2).
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

from aiohttp import web

from rxfed.errors import NotFound
from rxfed.node.http import NODE

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
MANIFEST = "web-manifest.json"

#: The policy of spec/web.md: scripts only from this origin (libsodium's WebAssembly needs
#: 'wasm-unsafe-eval', nothing else is evaluated), no inline script or style, no plugin, no
#: framing, no other origin to talk to.
CSP = ("default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
#: The most peers the page's connect-src names (a grant names at most 64 nodes too).
MAX_CONNECT = 64
#: A node id as the protocol accepts it (rxfed.consent.grants.NODE_ID): nothing that could
#: end a CSP directive or a header gets into one.
_NODE_ID = re.compile(r"[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?")
#: Unauthenticated documents another node's page reads from this one (a recipient's or a
#: community host's keys, the public directory): CORS for any origin, never credentials.
PUBLIC = ("/.well-known/rxfed", "/v1/communities", "/.well-known/did.json")
#: Public documents under a prefix: the clinician status lists a node publishes.
PUBLIC_PREFIXES = ("/v1/clinicians/status/",)


def peer_origin(node_id: str) -> str | None:
    """The origin the page reaches a node at: its id is the authority of its public URL,
    HTTPS off loopback, plain HTTP for a loopback node (as rxfed.client.consent.node_url)."""
    if _NODE_ID.fullmatch(node_id) is None:
        return None
    host = node_id.rsplit(":", 1)[0]
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    return f"{'http' if loopback else 'https'}://{node_id.lower()}"


def page_csp(peers: list[str]) -> str:
    """The page's policy: ``connect-src`` is this origin and the peers this node federates
    with (their public documents only answer a page across origins; every request it signs
    still goes to its own node)."""
    origins = sorted({o for o in map(peer_origin, peers) if o is not None})[:MAX_CONNECT]
    return CSP.replace("connect-src 'self';", " ".join(["connect-src 'self'", *origins]) + ";")
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

    def respond(path: Path, csp: str = CSP) -> web.StreamResponse:
        headers = {**HEADERS, "Content-Security-Policy": csp,
                   "Content-Type": TYPES.get(path.suffix, "application/octet-stream")}
        return web.FileResponse(path, headers=headers)

    async def page(request: web.Request) -> web.StreamResponse:
        if "index.html" not in files:
            raise NotFound("this node was installed without the web client", code="not_found")
        # Only the document's policy governs what the page may fetch.
        state = request.app.get(NODE)
        peers = (await state.consent.federated())[1:] if state is not None else []
        return respond(files["index.html"], page_csp(peers))

    async def asset(request: web.Request) -> web.StreamResponse:
        path = files.get(request.match_info["path"])
        if path is None:
            raise NotFound("no such file in the web client", code="not_found")
        return respond(path)

    async def manifest(request: web.Request) -> web.StreamResponse:
        if not files:
            raise NotFound("this node was installed without the web client", code="not_found")
        return respond(web_dir / MANIFEST)

    async def cors(request: web.Request, response: web.StreamResponse) -> None:
        if request.method in ("GET", "HEAD") and (request.path in PUBLIC or request.path.startswith(PUBLIC_PREFIXES)):
            response.headers["Access-Control-Allow-Origin"] = "*"

    app.on_response_prepare.append(cors)
    app.router.add_get("/", page)
    app.router.add_get("/web/{path:.+}", asset)
    app.router.add_get("/" + MANIFEST, manifest)
