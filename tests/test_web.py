"""The web client's files: what the node serves and with which headers, the published
manifest and Subresource Integrity (stale ones fail here), the vendored libsodium, and the
client's JavaScript against the shared test vectors (node's test runner)."""

from __future__ import annotations

import base64
import hashlib
import html.parser
import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest
import yarl

from rxfed.node import web as node_web

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "rxfed" / "web"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


manifest_script = _script("web-manifest")


async def raw_request(url: str, method: str, path: str) -> tuple[int, bytes, dict]:
    """(status, body, headers), the path sent exactly as written (no dot-segment cleanup)."""
    async with aiohttp.ClientSession() as session:
        async with session.request(method, yarl.URL(url + path, encoded=True)) as resp:
            return resp.status, await resp.read(), dict(resp.headers)


def sri(data: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def test_manifest_and_integrity_are_current():
    html, manifest = manifest_script.render()
    assert (WEB / "index.html").read_text() == html, "run python3 scripts/web-manifest.py"
    assert (WEB / "web-manifest.json").read_text() == manifest, "run python3 scripts/web-manifest.py"
    listed = json.loads(manifest)["files"]
    for name, entry in listed.items():
        assert sri((WEB / name).read_bytes()) == entry["integrity"], name


def test_precompressed_copies_are_current():
    html, _ = manifest_script.render()
    wanted = manifest_script.compressed(WEB, html)
    present = {p.relative_to(WEB).as_posix() for p in WEB.rglob("*.gz")}
    assert present == set(wanted), "run python3 scripts/web-manifest.py"
    for name, data in wanted.items():
        assert (WEB / name).read_bytes() == data, f"{name} is stale: run python3 scripts/web-manifest.py"
    assert "vendor/libsodium-sumo.mjs.gz" in wanted


def test_a_changed_file_makes_the_manifest_stale(tmp_path):
    copy = tmp_path / "web"
    shutil.copytree(WEB, copy)
    (copy / "js" / "encoding.mjs").write_text((copy / "js" / "encoding.mjs").read_text() + "\n// changed\n")
    html, manifest = manifest_script.render(copy)
    assert manifest != (WEB / "web-manifest.json").read_text()
    assert html != (WEB / "index.html").read_text()


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.scripts, self.links, self.inline, self.styles = [], [], [], []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "style" in attrs or any(a.startswith("on") for a in attrs):
            self.inline.append((tag, attrs))
        if tag == "script":
            self.scripts.append(attrs)
            self._in_script = True
        if tag == "style":
            self.styles.append(attrs)
        if tag == "link":
            self.links.append(attrs)

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline.append(("script", data))


def test_page_has_no_inline_code_and_integrity_on_every_script():
    page = _Page()
    page.feed((WEB / "index.html").read_text())
    assert not page.inline and not page.styles
    assert page.scripts and all(s.get("src") and s.get("integrity", "").startswith("sha384-") for s in page.scripts)
    preloads = [link for link in page.links if link.get("rel") in ("modulepreload", "stylesheet")]
    for tag in page.scripts + preloads:
        url = tag.get("src") or tag.get("href")
        assert url.startswith("/web/")
        assert tag["integrity"] == sri((WEB / url.removeprefix("/web/")).read_bytes()), url
    # every module the page can import is preloaded under its hash
    modules = {p.relative_to(WEB).as_posix() for p in WEB.rglob("*.mjs")}
    assert {link["href"].removeprefix("/web/") for link in preloads if link["rel"] == "modulepreload"} == \
        modules - {"js/app.mjs"}
    # no module reaches outside the origin or evaluates strings; URLs appear only as names:
    # the code systems of the generated tables (never fetched) and the SVG namespace
    for path in (WEB / "js").glob("*.mjs"):
        text = path.read_text()
        assert "eval(" not in text and "new Function" not in text and "innerHTML" not in text, path
        if path.name != "tables.mjs":
            # identifiers, never fetched: the SVG namespace, the VC 2.0 context a credential names
            text = text.replace('"http://www.w3.org/2000/svg"', "").replace('"https://www.w3.org/ns/credentials/v2"', "")
            assert "http://" not in text and "https://" not in text, path
    # another origin is reached only for the public documents of the peers the node allows,
    # through one function that refuses any other path (spec/web.md §2, "Other nodes' keys")
    code = "".join(p.read_text() for p in (WEB / "js").glob("*.mjs"))
    assert re.findall(r"\bfetch\(\s*[\"'`](?!/)", code) == ["fetch(`"]
    assert code.count("await fetch(`${origin}${path}`") == 1
    assert 'PUBLIC_PATHS = Object.freeze(["/.well-known/rxfed", "/v1/communities"])' in code
    assert "STATUS_LIST_PATH = /^\\/v1\\/clinicians\\/status\\/[a-z0-9-]{1,32}$/;" in code


def test_vendored_libsodium_matches_its_record():
    record = json.loads((WEB / "vendor" / "libsodium.json").read_text())
    assert record["version"] == "0.8.4"
    for name, entry in record["files"].items():
        data = (WEB / "vendor" / name).read_bytes()
        assert sri(data) == entry["vendored"], f"{name} differs from what scripts/refresh-libsodium.py vendored"
        assert record["packages"][entry["package"]]["integrity"].startswith("sha512-")
        assert record["packages"][entry["package"]]["license"] == "ISC"
    notice = (WEB / "vendor" / "LICENSE-libsodium.txt").read_text()
    assert "Permission to use, copy, modify, and/or distribute this software" in notice


async def test_node_serves_the_client_under_strict_headers(node):
    status, body, headers = await raw_request(node.url, "GET", "/")
    assert status == 200 and body == (WEB / "index.html").read_bytes()
    assert headers["Content-Type"].startswith("text/html")
    assert headers["Content-Security-Policy"] == node_web.CSP
    assert "script-src 'self' 'wasm-unsafe-eval';" in headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    manifest = json.loads((WEB / "web-manifest.json").read_text())
    for name, entry in manifest["files"].items():
        path = "/" if name == "index.html" else f"/web/{name}"
        status, body, headers = await raw_request(node.url, "GET", path)
        assert status == 200 and sri(body) == entry["integrity"], name
        assert headers["Content-Security-Policy"] == node_web.CSP
        if name.endswith(".mjs"):
            assert headers["Content-Type"].startswith("text/javascript")
    status, body, headers = await raw_request(node.url, "GET", "/web-manifest.json")
    assert status == 200 and json.loads(body) == manifest
    # a browser that accepts gzip gets the precompressed copy of a large file, same bytes decoded
    async with aiohttp.ClientSession() as session:
        async with session.get(node.url + "/web/vendor/libsodium-sumo.mjs", headers={"Accept-Encoding": "gzip"}) as resp:
            assert resp.headers.get("Content-Encoding") == "gzip"
            assert resp.headers["Content-Security-Policy"] == node_web.CSP
            assert resp.headers["Content-Type"].startswith("text/javascript")
            assert sri(await resp.read()) == manifest["files"]["vendor/libsodium-sumo.mjs"]["integrity"]


@pytest.mark.parametrize("path", ["/web/nothing.mjs", "/web/../pyproject.toml", "/web/%2e%2e/node/web.py",
                                  "/web/vendor/libsodium-sumo.mjs.gz",
                                  "/web/vendor/libsodium.json", "/web/web-manifest.json", "/web/"])
async def test_node_serves_nothing_outside_the_manifest(node, path):
    status, body, _ = await raw_request(node.url, "GET", path)
    assert status == 404
    assert json.loads(body)["error"] == "not_found"


def test_javascript_passes_the_shared_vectors():
    node_bin = shutil.which("node")
    if node_bin is None:
        pytest.skip("node is not installed: the web client's JavaScript tests need node's test runner")
    out = subprocess.run([node_bin, "--test", str(ROOT / "tests" / "web")], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "# fail 0" in out.stdout


async def test_web_check_passes_for_the_released_client_and_names_what_a_node_changed(node, tmp_path):
    import asyncio
    import sys

    from aiohttp import web

    from rxfed.cli.web import compare

    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "rxfed", "web", "check", "--node", node.url,
                                                "--json", stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    doc = json.loads(out)
    assert doc["same"] is True and doc["differs"] == doc["missing"] == doc["extra"] == []

    # a node serving a modified module (manifest regenerated to match, as a careful attacker
    # would) and one more file: caught against the installed manifest
    copy = tmp_path / "web"
    shutil.copytree(WEB, copy)
    (copy / "js" / "client.mjs").write_text((copy / "js" / "client.mjs").read_text() + "\n// exfiltrate\n")
    (copy / "js" / "extra.mjs").write_text("export const x = 1;\n")
    (copy / "vendor" / "LICENSE-libsodium.txt").unlink()
    html, manifest = manifest_script.render(copy)
    (copy / "index.html").write_text(html)
    (copy / "web-manifest.json").write_text(manifest)
    from rxfed.node.http import error_middleware

    app = web.Application(middlewares=[error_middleware])
    node_web.install(app, copy)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]
        released = json.loads((WEB / "web-manifest.json").read_text())
        result = await compare(f"http://127.0.0.1:{port}", released)
    finally:
        await runner.cleanup()
    assert result["same"] is False
    assert result["differs"] == ["index.html", "js/client.mjs"]
    assert result["missing"] == ["vendor/LICENSE-libsodium.txt"] and result["extra"] == ["js/extra.mjs"]


async def test_web_check_shows_no_terminal_escape_a_node_puts_in_its_manifest():
    """What a node says reaches the operator's terminal: an escape sequence in its version
    (here one that retitles the window) was written as it came."""
    import asyncio
    import sys

    from aiohttp import web

    async def manifest(request):
        return web.json_response({"software": {"version": "9.9\x1b]0;all files match\x07\x1b[2K"},
                                  "files": {"js/\u202eevil.mjs": {}}})

    app = web.Application()
    app.router.add_get("/web-manifest.json", manifest)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "rxfed", "web", "check", "--node",
                                                    f"http://127.0.0.1:{port}", stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
        out, err = await proc.communicate()
    finally:
        await runner.cleanup()
    assert proc.returncode == 1, err.decode()
    assert b"\x1b" not in out and b"\x07" not in out and "\u202e".encode() not in out
    assert "9.9\\x1b]0;all files match\\x07" in out.decode() and "\\u202eevil.mjs" in out.decode()


def test_an_error_message_is_shown_without_its_terminal_escapes(capsys):
    import pytest as _pytest

    from rxfed.cli import fail

    with _pytest.raises(SystemExit):
        fail("the node answered: \x1b[1A\x1b[2Krxfed: ok\r", 1)
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\r" not in err and "\\x1b[1A" in err
