"""Matching in a real browser (headless Chromium, as tests/test_web_browser.py): a browser
patient on hospital-a grants their diagnosis categories for matching in the page, the nodes
run a session, and the page's Matches view shows the counts the CLI shows."""

from __future__ import annotations

import pytest

from rxfed.node.config import MatchingSettings
from test_matching import K, consenting
from test_web_browser import ARTEFACTS, axe_scan, cli, opened_page
from test_web_consent_browser import link_browser

pytestmark = pytest.mark.browser


async def test_the_page_grants_for_matching_and_shows_patients_like_me(rxfed_federation, make_patient, tmp_path):
    a, b = await rxfed_federation("hospital-a", "hospital-b", matching=MatchingSettings(interval=7 * 86400))
    for node, n in ((a, K - 1), (b, K)):
        for _ in range(n):
            await consenting(make_patient, node, "G40.9")
    profile = tmp_path / "cli"
    await cli("patient", "register", "--node", a.url, "--profile", str(profile), "--kdf", "min")
    await cli("patient", "condition", "add", "--profile", str(profile), "G40.909")
    async with opened_page(a.url + "/") as (page, watched):
        await link_browser(page, profile)
        await page.wait_for_selector("body[data-consent=ready]")
        await page.wait_for_selector("#matches:not([hidden])")
        # without the grant the node answers 403 and the page says what to grant
        await page.click("#matches-load")
        await page.wait_for_selector("body[data-matches=no-grant]", timeout=30_000)
        assert "matching" in await page.text_content("#matches-status")

        await page.select_option("#g-kind", "diagnosis.category")
        await page.fill("#g-purpose", "matching")
        await page.select_option("#g-to", f"plugin:{a.node_id}/matching")
        await page.click("#grant-form button[type=submit]")
        await page.wait_for_selector("body[data-granted='1']", timeout=30_000)
        assert (await a.state.matching.offer()).counts == {"icd10:G40": K}
        assert (await a.state.matching.run_session(b.node_id)).common == 1

        await page.click("#matches-load")
        await page.wait_for_selector("body[data-matches='1']", timeout=30_000)
        shown = await page.text_content("#matches-list")
        assert shown == f"{K} patients on {b.node_id} (and {K} on your own node) share category G40"
        # the CLI on the same account reads the same
        assert (await cli("patient", "matches", "--profile", str(profile)))["suggestions"][0]["count"] == K
        await axe_scan(page, "matches")
        await page.screenshot(path=ARTEFACTS / "matches-desktop.png", full_page=True)
        assert [p for p in watched.problems if "403 (Forbidden)" not in p] == []
        assert await watched.csp() == []
