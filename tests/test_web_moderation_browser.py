"""The moderation check in a real browser (headless Chromium, as tests/test_web_browser.py): a
warned post is held until the author sends it anyway, crisis language shows the crisis line
for the patient's country at once and posts, testimony posts with no warning, and nothing
about the check reaches the node."""

from __future__ import annotations

import pytest

from conftest import MARKER
from test_web_browser import ARTEFACTS, _browser_or_skip, axe_scan, opened_page, register_in_page

pytestmark = pytest.mark.browser

WARNED = "You should stop taking your metformin, it's just poison."
CRISIS = "I want to kill myself, nobody would miss me."
TESTIMONY = "I stopped taking it and felt better within a week."


async def test_the_page_runs_the_moderation_check_before_a_post(node, tmp_path):
    _browser_or_skip()
    async with opened_page(node.url + "/") as (page, watched):
        sent = []
        page.on("request", lambda r: sent.append((r.method, r.url, r.post_data or "")))
        await register_in_page(page)
        await page.wait_for_selector("body[data-communities=ready]")
        await page.fill("#cc-name", "Diabetes circle")
        await page.click("#create-form button[type=submit]")
        await page.wait_for_selector("body[data-created='1']", timeout=30_000)
        await page.click("#my-communities li button.open")
        await page.wait_for_selector("#community-view:not([hidden])", timeout=30_000)
        await page.wait_for_selector("#cv-refresh:not([disabled])")

        # a warning: shown with its message, the post held, nothing sent
        await page.fill("#post-country", "GB")
        await page.fill("#post-text", f"{WARNED} {MARKER}")
        before = len(sent)
        await page.click("#post-form button[type=submit]")
        await page.wait_for_selector("#presend-warning:not([hidden])")
        assert await page.get_attribute("#presend-warnings li", "data-code") == "medication_change"
        assert "someone else's medication" in await page.text_content("#presend-warnings")
        assert await page.is_hidden("#presend-crisis")
        await axe_scan(page, "a pre-send warning")
        await page.screenshot(path=ARTEFACTS / "moderation-warning.png", full_page=True)
        assert sent[before:] == []  # the check ran here: no request at all
        assert await page.get_attribute("body", "data-posted") is None
        # editing dismisses it; the same text is held again
        await page.click("#presend-edit")
        assert await page.is_hidden("#presend-warning")
        assert await page.evaluate("document.activeElement.id") == "post-text"
        await page.click("#post-form button[type=submit]")
        await page.wait_for_selector("#presend-warning:not([hidden])")
        assert await page.get_attribute("body", "data-posted") is None
        await page.click("#presend-send")
        await page.wait_for_selector("body[data-posted='1']", timeout=30_000)
        assert WARNED in await page.text_content("#cv-messages")
        assert await page.is_hidden("#presend-warning")
        posted = [d for m, u, d in sent[before:] if m == "POST"]
        assert posted and not any("medication_change" in d or "presend" in d or MARKER in d for d in posted)

        # crisis language: the line for the patient's country at once, and the post goes
        await page.fill("#post-text", CRISIS)
        await page.click("#post-form button[type=submit]")
        await page.wait_for_selector("#presend-crisis:not([hidden])")
        crisis = await page.text_content("#presend-crisis")
        assert "Samaritans 116 123" in crisis and "findahelpline.com" in crisis
        await page.wait_for_selector("body[data-posted='2']", timeout=30_000)
        assert await page.is_hidden("#presend-warning")
        await axe_scan(page, "the crisis line after a post")

        # testimony: no warning, posted
        await page.fill("#post-text", TESTIMONY)
        await page.click("#post-form button[type=submit]")
        await page.wait_for_selector("body[data-posted='3']", timeout=30_000)
        assert await page.get_attribute("body", "data-presend") == "none"
        assert await page.is_hidden("#presend-warning") and await page.is_hidden("#presend-crisis")
        text = await page.text_content("#cv-messages")
        assert CRISIS in text and TESTIMONY in text
        assert watched.problems == []
        assert await watched.csp() == []

    for path in node.data_dir.rglob("*"):
        if path.is_file():
            assert MARKER.encode() not in path.read_bytes(), path
