"""The web client in a real browser: headless Chromium (Debian's package) driven by
Playwright, against a real node on loopback, with the CLI on the same account.

Marked ``browser``; CI runs them (.ci/run installs chromium when missing and sets
RXFED_REQUIRE_BROWSER, so there a missing browser fails instead of skipping). Every view is
scanned with axe-core (no serious or critical violation). Screenshots at desktop and phone
widths go to ``test-artefacts/web/`` (gitignored), or ``$RXFED_ARTEFACTS``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import MARKER

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("RXFED_CHROMIUM", "/usr/bin/chromium")
PASSPHRASE = "a browser passphrase of some length"
CLI_PASSPHRASE = "the command line passphrase"
SYMPTOM = "zqxsymptom"
ARTEFACTS = Path(os.environ.get("RXFED_ARTEFACTS") or ROOT / "test-artefacts" / "web")
#: Before any page script runs: record CSP violations where the test can read them.
WATCH_CSP = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));
"""


#: axe-core, the accessibility checker, fetched once with npm (tests only, never served)
#: and checked against the registry's integrity pinned here.
AXE = ("axe-core", "4.14.1",
       "sha512-FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJpZe37OgudVGtQ==")
AXE_CACHE = Path(os.environ.get("RXFED_TEST_CACHE") or Path.home() / ".cache" / "rxfed-tests")


def _requirement(missing: str):
    if os.environ.get("RXFED_REQUIRE_BROWSER"):
        pytest.fail(f"browser tests required (RXFED_REQUIRE_BROWSER) but {missing}")
    pytest.skip(missing)


def axe_source() -> str:
    name, version, integrity = AXE
    tarball = AXE_CACHE / f"{name}-{version}.tgz"
    if not tarball.exists():
        if shutil.which("npm") is None:
            _requirement("npm is not installed (it fetches axe-core for the accessibility scan)")
        AXE_CACHE.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(["npm", "pack", f"{name}@{version}", "--silent"], cwd=AXE_CACHE, capture_output=True,
                             text=True, timeout=120)
        if out.returncode != 0:
            _requirement(f"npm could not fetch {name}@{version}: {out.stderr.strip()[-300:]}")
    data = tarball.read_bytes()
    if "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode() != integrity:
        tarball.unlink()
        pytest.fail(f"{tarball} does not match the pinned integrity of {name}@{version}")
    with tarfile.open(tarball) as tar:
        return tar.extractfile("package/axe.min.js").read().decode()


async def axe_scan(page, view: str) -> None:
    """No serious or critical accessibility violation on the page as it is now. (axe is run
    through the DevTools protocol, which the page's CSP does not govern.)"""
    if not await page.evaluate("typeof window.axe === 'object'"):
        await page.evaluate(axe_source())
    found = await page.evaluate("axe.run(document, {resultTypes: ['violations']}).then(r => r.violations.map("
                                "v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join(' '))})))")
    bad = [v for v in found if v["impact"] in ("serious", "critical")]
    assert bad == [], f"accessibility violations on the {view} view: {bad}"


def _browser_or_skip():
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        async_playwright = None
    missing = ("playwright is not installed" if async_playwright is None
               else None if Path(CHROMIUM).exists() or shutil.which(CHROMIUM) else f"no chromium at {CHROMIUM}")
    if missing:
        _requirement(f"{missing} (apt-get install chromium; pip install playwright)")
    return async_playwright


async def cli(*args: str, code: str | None = None) -> dict:
    env = {**os.environ, "RXFED_PASSPHRASE": CLI_PASSPHRASE, "RXFED_AGENT_DISABLE": "1"}
    if code:
        env["RXFED_RECOVERY_CODE"] = code
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "rxfed", *args, "--json",
                                                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, (args, out.decode(), err.decode())
    return json.loads(out)


class Watched:
    """A page whose console errors, uncaught exceptions and CSP violations are collected."""

    def __init__(self, page):
        self.page = page
        self.problems: list[str] = []
        page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))

    async def csp(self) -> list[str]:
        return await self.page.evaluate("window.__csp || []")


@contextlib.asynccontextmanager
async def opened_page(url: str, viewport: dict | None = None):
    """A fresh browser profile with the client loaded and ready: (page, watched)."""
    async_playwright = _browser_or_skip()
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = await browser.new_context(viewport=viewport or {"width": 1280, "height": 900})
            await context.add_init_script(WATCH_CSP)
            page = await context.new_page()
            watched = Watched(page)
            await page.goto(url)
            await page.wait_for_selector("body[data-state=ready]")
            yield page, watched
        finally:
            await browser.close()


async def register_in_page(page) -> str:
    """Register in the page at its defaults; returns the recovery code it showed once."""
    await page.fill("#reg-pass", PASSPHRASE)
    await page.fill("#reg-pass2", PASSPHRASE)
    await page.click("#register-form button[type=submit]")
    await page.wait_for_selector("#recovery:not([hidden])", timeout=30_000)
    code = (await page.text_content("#recovery-code")).strip()
    await page.check("#recovery-kept")
    await page.click("#recovery-form button[type=submit]")
    await page.wait_for_selector("body[data-state=unlocked]", timeout=30_000)
    return code


async def unlock_by_keyboard(page, url: str) -> None:
    await page.goto(url)
    await page.wait_for_selector("#unlock:not([hidden])")
    # The view's heading has focus: Tab reaches the passphrase, Enter submits.
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.id") == "unlock-pass"
    await page.keyboard.type(PASSPHRASE)
    await page.keyboard.press("Enter")
    await page.wait_for_selector("body[data-state=unlocked]", timeout=30_000)


async def unlock_expecting_error(page, url: str) -> str:
    """Reload, unlock with the right passphrase, and return the error the page shows."""
    await page.goto(url)
    await page.wait_for_selector("#unlock:not([hidden])")
    await page.fill("#unlock-pass", PASSPHRASE)
    await page.click("#unlock-form button[type=submit]")
    await page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    return await page.text_content("#error")


async def entries(page) -> str:
    return await page.text_content("#entries")


async def test_register_write_reload_unlock_and_the_cli_reads_it(node, tmp_path):
    url = node.url + "/"
    async with opened_page(url) as (page, watched):
        # register: keys made in the page, the recovery code shown once
        await axe_scan(page, "welcome")
        await page.fill("#reg-pass", PASSPHRASE)
        await page.fill("#reg-pass2", PASSPHRASE + " but different")
        await page.click("#register-form button[type=submit]")
        await page.wait_for_selector("#error:not([hidden])")
        assert "differ" in await page.text_content("#error")
        await page.fill("#reg-pass2", PASSPHRASE)
        await page.click("#register-form button[type=submit]")
        await page.wait_for_selector("#recovery:not([hidden])", timeout=30_000)
        code = (await page.text_content("#recovery-code")).strip()
        assert len(code) == 44
        await page.screenshot(path=ARTEFACTS / "recovery-code-desktop.png", full_page=True)
        await axe_scan(page, "recovery code")
        await page.check("#recovery-kept")
        await page.click("#recovery-form button[type=submit]")
        await page.wait_for_selector("body[data-state=unlocked]", timeout=30_000)
        assert await page.text_content("#recovery-code") == ""
        assert "recovery code" in await page.text_content("#storage")

        # a journal entry, then one the page refuses (nothing is sent)
        await page.fill("#j-s1", SYMPTOM)
        await page.fill("#j-v1", "7")
        await page.fill("#j-feeling", "4")
        await page.fill("#j-note", f"{MARKER} written in the browser")
        await page.click("#journal-form button[type=submit]")
        await page.wait_for_selector("body[data-saved='1']")
        assert f"{SYMPTOM} 7/10" in await entries(page) and MARKER in await entries(page)
        await page.fill("#j-v2", "11")
        await page.fill("#j-s2", "pain")
        await page.click("#journal-form button[type=submit]")
        await page.wait_for_selector("#error:not([hidden])")
        assert "0 to 10" in await page.text_content("#error")
        await axe_scan(page, "journal")
        await page.click("#lock")
        await page.wait_for_selector("#unlock:not([hidden])")
        assert await entries(page) == ""
        timings = await page.evaluate("window.rxfedTimings")

        # reload: the keys are only in IndexedDB under the passphrase; a wrong one opens nothing
        await page.goto(url)
        await page.wait_for_selector("#unlock:not([hidden])")
        await axe_scan(page, "unlock")
        await page.fill("#unlock-pass", "not the passphrase at all")
        await page.click("#unlock-form button[type=submit]")
        await page.wait_for_selector("#error:not([hidden])", timeout=30_000)
        assert "does not open" in await page.text_content("#error")
        await unlock_by_keyboard(page, url)
        assert MARKER in await entries(page)
        await page.screenshot(path=ARTEFACTS / "journal-desktop.png", full_page=True)

        # the CLI reads what the browser wrote (recovering into a profile of its own,
        # keeping the browser), and writes an entry of its own
        profile = tmp_path / "cli-profile"
        await cli("patient", "recover", "--node", node.url, "--profile", str(profile), "--kdf", "min",
                  "--keep-all", code=code)
        shown = await cli("patient", "show", "--profile", str(profile))
        journal = [r for r in shown["records"] if r["kind"] == "journal"]
        assert [r["data"]["note"] for r in journal] == [f"{MARKER} written in the browser"]
        assert journal[0]["data"]["symptoms"] == {SYMPTOM: 7} and journal[0]["data"]["feeling"] == 4
        await cli("patient", "journal", "add", "--profile", str(profile), "--symptom", "pain=2",
                  "--note", "written with the CLI")
        await cli("patient", "condition", "add", "--profile", str(profile), "E11.9", "--label", "type 2 diabetes",
                  "--onset", "2019-03-01")
        await cli("patient", "treatment", "add", "--profile", str(profile), "metformin", "--dose", "500 mg",
                  "--efficacy", "7")

        # the browser reads what the CLI wrote, at the identity epoch the recovery began
        await unlock_by_keyboard(page, url)
        listed = await entries(page)
        assert "written with the CLI" in listed and "pain 2/10" in listed and MARKER in listed
        assert "2019-03-01 · Condition · ICD10 E11.9 type 2 diabetes" in listed
        assert "no date · Treatment · metformin; 500 mg; efficacy 7/10" in listed
        devices = await page.text_content("#devices")
        assert "This browser" in devices and "made when you registered" in devices
        assert "added with the recovery code" in devices and "does not verify" not in devices
        await page.set_viewport_size({"width": 390, "height": 844})
        await page.screenshot(path=ARTEFACTS / "journal-phone.png", full_page=True)
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390

        assert watched.problems == []
        assert await watched.csp() == []

    # the node holds only ciphertext of what the browser wrote
    for path in node.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert MARKER.encode() not in data and SYMPTOM.encode() not in data, path
    print(f"\nweb client timings (ms): {timings}")


async def test_a_cli_patient_links_the_browser_and_each_reads_what_the_other_wrote(node, tmp_path):
    _browser_or_skip()
    profile = tmp_path / "cli-profile"
    await cli("patient", "register", "--node", node.url, "--profile", str(profile), "--kdf", "min")
    await cli("patient", "journal", "add", "--profile", str(profile), "--symptom", "pain=3",
              "--note", "written before the browser")
    url = node.url + "/"
    async with opened_page(url, {"width": 390, "height": 844}) as (page, watched):
        await page.fill("#link-pass", PASSPHRASE)
        await page.fill("#link-pass2", PASSPHRASE)
        await page.click("#link-form button[type=submit]")
        await page.wait_for_selector("#link:not([hidden])", timeout=30_000)
        link = await page.text_content("#link-code")
        assert link.startswith("rxfed-link:")
        await page.screenshot(path=ARTEFACTS / "link-phone.png", full_page=True)
        await axe_scan(page, "link")

        # finishing before a device enrolled the browser says so, and adopts nothing
        await page.fill("#link-confirm", "AAAA-AAAA-AAAA-AAAA")
        await page.click("#confirm-form button[type=submit]")
        await page.wait_for_selector("#error:not([hidden])")
        assert "No device has enrolled this browser yet" in await page.text_content("#error")
        # Chromium logs the node's 401 (unknown key) itself; that one is expected
        assert [p for p in watched.problems if "401 (Unauthorized)" not in p] == []
        watched.problems.clear()

        added = await cli("patient", "devices", "add", link, "--profile", str(profile))
        confirmation = added["confirmation"]
        wrong = ("B" if confirmation[0] == "A" else "A") + confirmation[1:]
        await page.fill("#link-confirm", wrong)
        await page.click("#confirm-form button[type=submit]")
        await page.wait_for_selector("#error:has-text('does not match')")
        assert await page.get_attribute("body", "data-state") == "linking"

        # the right code: the browser adopts the account and reads what the CLI wrote
        await page.fill("#link-confirm", confirmation.lower())
        await page.click("#confirm-form button[type=submit]")
        await page.wait_for_selector("body[data-state=unlocked]", timeout=30_000)
        assert "written before the browser" in await entries(page)
        listed = (await cli("patient", "devices", "list", "--profile", str(profile)))["devices"]
        cli_device = next(d["device"] for d in listed if d["current"])
        devices = await page.text_content("#devices")
        assert f"This browser ({added['device'][:8]}), added by device {cli_device[:8]}" in devices
        assert "does not verify" not in devices
        await page.fill("#j-note", f"{MARKER} written in the linked browser")
        await page.fill("#j-feeling", "8")
        await page.click("#journal-form button[type=submit]")
        await page.wait_for_selector("body[data-saved='1']")
        # a treatment from the keyboard (the dates through the date pickers' own input), after
        # one the page refuses (it stops before it starts)
        await page.fill("#t-started", "2025-03-01")
        await page.fill("#t-stopped", "2025-02-01")
        await page.focus("#t-name")
        for field, value in (("name", "lamotrigine"), ("dose", "50 mg"), ("efficacy", "6"),
                             ("effects", "rash, dizziness"), ("adherence", "9")):
            await page.focus(f"#t-{field}")
            await page.keyboard.type(value)
        await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.textContent") == "Save treatment"
        await page.keyboard.press("Enter")
        await page.wait_for_selector("#error:has-text('cannot stop before it started')")
        await page.fill("#t-stopped", "")
        await page.focus("#treatment-form button[type=submit]")
        await page.keyboard.press("Enter")
        await page.wait_for_selector("body[data-saved='2']")
        assert "2025-03-01 · Treatment · lamotrigine; 50 mg; efficacy 6/10; side effects: rash, dizziness" \
            in await entries(page)

        # linked for good: a reload asks for the passphrase and opens the journal
        await unlock_by_keyboard(page, url)
        assert MARKER in await entries(page) and "written before the browser" in await entries(page)
        await page.screenshot(path=ARTEFACTS / "linked-journal-phone.png", full_page=True)
        await axe_scan(page, "journal at phone width")
        assert watched.problems == []
        assert await watched.csp() == []

    shown = (await cli("patient", "show", "--profile", str(profile)))["records"]
    notes = {r["data"].get("note") for r in shown}
    assert {f"{MARKER} written in the linked browser", "written before the browser"} <= notes
    assert [r["data"] for r in shown if r["kind"] == "treatment"] == [
        {"name": "lamotrigine", "dose": "50 mg", "started": "2025-03-01", "stopped": None, "efficacy": 6,
         "side_effects": ["rash", "dizziness"], "adherence": 9, "code": None, "status": None, "source": None}]
    devices = (await cli("patient", "devices", "list", "--profile", str(profile)))["devices"]
    assert len(devices) == 2 and all(d["verified"] for d in devices)
    for path in node.data_dir.rglob("*"):
        if path.is_file():
            assert MARKER.encode() not in path.read_bytes(), path


async def test_the_page_refuses_what_the_node_swapped_and_a_revoked_browser_is_told(node, tmp_path):
    url = node.url + "/"
    store = node.app_store()
    rows = lambda: store._read(lambda c: c.execute("SELECT id, blob FROM records ORDER BY id").fetchall())  # noqa: E731
    async with opened_page(url) as (page, watched):
        await page.fill("#reg-pass", PASSPHRASE)
        await page.fill("#reg-pass2", PASSPHRASE)
        await page.click("#register-form button[type=submit]")
        await page.wait_for_selector("#recovery:not([hidden])", timeout=30_000)
        code = (await page.text_content("#recovery-code")).strip()
        await page.check("#recovery-kept")
        await page.click("#recovery-form button[type=submit]")
        await page.wait_for_selector("body[data-state=unlocked]", timeout=30_000)
        for i, note in enumerate(("first entry", "second entry"), 1):
            await page.fill("#j-note", note)
            await page.click("#journal-form button[type=submit]")
            await page.wait_for_selector(f"body[data-saved='{i}']")

        # the node swaps the two sealed records: the signed manifest no longer matches
        (a, blob_a), (b, blob_b) = await rows()
        swap = "UPDATE records SET blob=? WHERE id=?"
        await store._write(lambda c: (c.execute(swap, (blob_b, a)), c.execute(swap, (blob_a, b))))
        assert "signed manifest" in await unlock_expecting_error(page, url)
        assert await page.get_attribute("body", "data-state") != "unlocked" and await entries(page) == ""
        await store._write(lambda c: (c.execute(swap, (blob_a, a)), c.execute(swap, (blob_b, b))))

        # a recovery that keeps no other device revokes the browser: it is told so
        await cli("patient", "recover", "--node", node.url, "--profile", str(tmp_path / "cli"), "--kdf", "min",
                  code=code)
        assert "removed from your account" in await unlock_expecting_error(page, url)
        # Chromium logs the node's 401 (revoked device) itself; nothing else went wrong
        assert [p for p in watched.problems if "401 (Unauthorized)" not in p] == []
        assert await watched.csp() == []
