"""Consent in a real browser (headless Chromium, as tests/test_web_browser.py): a browser
patient on node A previews, grants and revokes in the page, a plugin on node B receives the
signals sealed to B, the page checks B's acknowledgement under the keys it fetches from B
itself, and the CLI on the same account reads what the page did (and the page what it did)."""

from __future__ import annotations

import pytest

from conftest import MARKER
from rxfed.consent import grants as consent_grants
from rxfed.crypto import SigningKeyPair
from rxfed.protocol.canonical import canonical
from test_communities import eventually
from test_web_browser import ARTEFACTS, PASSPHRASE, _browser_or_skip, axe_scan, cli, opened_page, unlock_by_keyboard

pytestmark = pytest.mark.browser

DRUG = MARKER.lower() + "ol"


async def link_browser(page, profile) -> str:
    """Link the page as a device of the CLI's account; the browser's device id."""
    await page.fill("#link-pass", PASSPHRASE)
    await page.fill("#link-pass2", PASSPHRASE)
    await page.click("#link-form button[type=submit]")
    await page.wait_for_selector("#link:not([hidden])", timeout=30_000)
    added = await cli("patient", "devices", "add", await page.text_content("#link-code"), "--profile", str(profile))
    await page.fill("#link-confirm", added["confirmation"])
    await page.click("#confirm-form button[type=submit]")
    await page.wait_for_selector("body[data-state=unlocked]", timeout=30_000)
    return added["device"]


async def grants_text(page) -> str:
    return await page.text_content("#grants")


async def test_consent_granted_and_revoked_in_the_page_and_the_cli_reads_it(pair, tmp_path):
    _browser_or_skip()
    a, b = pair
    profile = tmp_path / "cli"
    await cli("patient", "register", "--node", a.url, "--profile", str(profile), "--kdf", "min")
    await cli("patient", "treatment", "add", "--profile", str(profile), DRUG, "--efficacy", "8", "--started", "2024-01-10")
    # the CLI grants too (not shared yet, so node A holds no signal in the clear): the page
    # lists it, and may revoke it
    by_cli = await cli("patient", "consent", "grant", "--profile", str(profile), "--kind", "treatment.outcome",
                       "--purpose", "research", "--to", f"node:{a.node_id}", "--no-share")
    outcomes_b = b.state.plugins.pm.get_plugin("outcomes")
    target = f"plugin:{b.node_id}/outcomes"
    async with opened_page(a.url + "/") as (page, watched):
        browser_device = await link_browser(page, profile)
        await page.wait_for_selector("body[data-consent=ready]")
        assert f"treatment.outcome for research, to node:{a.node_id}" in await grants_text(page)
        assert await page.get_attribute(f"li[data-grant='{by_cli['grant']}']", "data-status") == "live"

        # what a grant would share, derived in the page from the decrypted vault: nothing sent
        assert target in await page.eval_on_selector_all("#g-to option", "os => os.map(o => o.value)")
        await page.select_option("#g-kind", "treatment.outcome")
        await page.fill("#g-purpose", "research")
        await page.select_option("#g-to", target)
        await page.click("#g-preview")
        preview = await page.text_content("#g-preview-list")
        assert f"treatment: {DRUG}; status: ongoing; efficacy: high; started year: 2024" == preview
        assert outcomes_b.held() == 0
        await axe_scan(page, "consent")

        # a grant the recipient cannot serve is refused before anything is signed
        await page.fill("#g-purpose", "marketing")
        await page.click("#grant-form button[type=submit]")
        await page.wait_for_selector("#consent-error:not([hidden])")
        assert "does not read treatment.outcome for marketing" in await page.text_content("#consent-error")

        await page.fill("#g-purpose", "research")
        await page.click("#grant-form button[type=submit]")
        await page.wait_for_selector("body[data-granted='1']", timeout=30_000)
        assert f"shared 1 signals with {b.node_id}" in await page.text_content("#consent-status")
        await eventually(lambda: _async(outcomes_b.summary(k=1) == {DRUG: {"high": 1}}))
        await page.screenshot(path=ARTEFACTS / "consent-desktop.png", full_page=True)

        # the CLI lists the page's grant as the patient's, made by the browser, tokens its own
        listed = (await cli("patient", "consent", "list", "--profile", str(profile)))["grants"]
        mine = next(g for g in listed if g["recipient"] == target)
        assert mine["status"] == "live" and mine["nodes"] == [b.node_id]
        assert mine.get("device", browser_device) == browser_device
        assert all(t["verified"] and t["named"] and t["shared"] for t in mine["tokens"])

        # revoke in the page: B deletes, acknowledges, and the page checks B's signature
        # under the keys it fetches from B itself (the home node only relays it)
        await page.click(f"li[data-grant='{mine['grant']}'] button.revoke")
        await page.wait_for_selector("body[data-revoked='1']", timeout=30_000)
        await eventually(lambda: _async(outcomes_b.held() == 0))

        async def acknowledged():
            await page.click("#grants-refresh")
            await page.wait_for_selector("#grants-refresh:not([disabled])")
            return f"deleted, signed by {b.node_id}" in await grants_text(page)

        await eventually(acknowledged, timeout=20)
        # and the CLI's grant, revoked from the page: the pseudonym keys are the account's
        await page.click(f"li[data-grant='{by_cli['grant']}'] button.revoke")
        await page.wait_for_selector("body[data-revoked='2']", timeout=30_000)

        # the audit log, verified in the page: chain, signed head, each acknowledgement
        await page.click("#audit-load")
        await page.wait_for_selector("body[data-audit=verified]", timeout=30_000)
        audit = await page.text_content("#audit")
        for event in ("granted", "shared", "used", "revoked", "acknowledged"):
            assert event in audit
        assert "(signed by that node)" in audit
        await axe_scan(page, "consent with a revoked grant and the audit log")
        await page.set_viewport_size({"width": 390, "height": 844})
        await page.screenshot(path=ARTEFACTS / "consent-phone.png", full_page=True)
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390

        listed = {g["grant"]: g for g in (await cli("patient", "consent", "list", "--profile", str(profile)))["grants"]}
        assert listed[mine["grant"]]["status"] == "revoked" and listed[mine["grant"]]["acknowledged"] == [b.node_id]

        # the page's FHIR Consent export is the file the CLI writes of the same grants, byte for byte
        async with page.expect_download() as info:
            await page.click("#grants-export")
        download = await info.value
        assert download.suggested_filename.startswith("rxfed-consent-")
        exported = tmp_path / "page-consent.json"
        await download.save_as(exported)
        await page.wait_for_selector("#consent-status:has-text('Exported 2 FHIR Consent resources')")
        by_cli_file = tmp_path / "cli-consent.json"
        assert (await cli("patient", "consent", "export", "--profile", str(profile), "--fhir",
                          str(by_cli_file)))["consents"] == 2
        assert exported.read_bytes() == by_cli_file.read_bytes()
        bundle = __import__("json").loads(exported.read_text())
        assert {e["resource"]["identifier"][0]["value"]: e["resource"]["status"] for e in bundle["entry"][1:]} \
            == {mine["grant"]: "inactive", by_cli["grant"]: "inactive"}
        assert listed[by_cli["grant"]]["status"] == "revoked"
        assert (await cli("patient", "audit", "--profile", str(profile)))["verified"]

        # the home node swaps B's acknowledgement for one it signed itself: the page says so
        store = a.app_store()
        token = mine["tokens"][0]["token"]
        revocation = await store._read(lambda c: c.execute("SELECT revocation FROM grant_tokens WHERE token=?",
                                                           (token,)).fetchone()[0])
        forged = consent_grants.Acknowledgement.create(SigningKeyPair.generate(), token=token, node=b.node_id,
                                           revocation=__import__("json").loads(revocation), unconfirmed=[], now=0)
        await store._write(lambda c: c.execute("UPDATE grant_tokens SET ack=? WHERE token=?",
                                               (canonical(forged.signed), token)))
        await page.click("#grants-refresh")
        await page.wait_for_selector(f"li[data-grant='{mine['grant']}'].error", timeout=30_000)
        assert "may still hold your signals" in await grants_text(page)

        # a reload and unlock keep what the page saw (the audit heads), and list the same
        await unlock_by_keyboard(page, a.url + "/")
        await page.wait_for_selector("body[data-consent=ready]")
        assert await page.get_attribute(f"li[data-grant='{mine['grant']}']", "data-status") == "revoked"
        assert watched.problems == []
        assert await watched.csp() == []

    # the home node relayed the signals sealed to B: no plaintext of them, nor of the record
    for path in a.data_dir.rglob("*"):
        if path.is_file():
            assert DRUG.encode() not in path.read_bytes(), path


async def _async(value):
    return value
