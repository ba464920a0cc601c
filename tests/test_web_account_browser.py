"""Erasing the account from the page (headless Chromium, as tests/test_web_browser.py), as
`rxfed patient delete-account` does: the live consent grant revoked, the community left, the
tombstone signed by the patient, and nothing of the account left in the browser."""

from __future__ import annotations

import asyncio

import pytest

from rxfed.node import administer
from rxfed.protocol.canonical import loads
from test_web_browser import _browser_or_skip, axe_scan, cli, opened_page
from test_web_consent_browser import link_browser
from test_web_devices_browser import cli_refused

pytestmark = pytest.mark.browser


async def test_the_page_erases_the_account(node, tmp_path):
    _browser_or_skip()
    founder, profile = tmp_path / "founder", tmp_path / "cli"
    await cli("patient", "register", "--node", node.url, "--profile", str(founder), "--kdf", "min")
    address = (await cli("community", "create", "--profile", str(founder), "Morning walkers", "--condition", "E11"))["address"]
    registered = await cli("patient", "register", "--node", node.url, "--profile", str(profile), "--kdf", "min")
    patient = registered["patient"]
    await cli("patient", "treatment", "add", "--profile", str(profile), "metformin", "--efficacy", "8", "--started", "2024-01-10")
    await cli("patient", "consent", "grant", "--profile", str(profile), "--kind", "treatment.outcome",
                      "--purpose", "research", "--to", f"node:{node.node_id}", "--no-share")
    await cli("community", "join", "--profile", str(profile), address)
    (row,) = await asyncio.to_thread(administer.communities_list, node.data_dir)
    assert row["members"] == 2

    async with opened_page(node.url + "/") as (page, watched):
        await link_browser(page, profile)
        await page.wait_for_selector("body[data-communities=ready]")
        await page.click("#more-settings summary")
        await axe_scan(page, "settings with the erase form")
        # not without the tick: nothing changes
        await page.click("#erase-form button[type=submit]")
        await page.wait_for_selector("#error:not([hidden])")
        assert "Tick that you understand" in await page.text_content("#error")
        assert await node.app_store().tombstone(patient) is None
        await page.check("#erase-understood")
        await page.click("#erase-form button[type=submit]")
        await page.wait_for_selector("body[data-state=erased]", timeout=60_000)
        assert await page.is_visible("#welcome")
        shown = await page.text_content("#status")
        assert "Your account is erased: 1 consent grant revoked, 1 community left" in shown
        # the browser keeps nothing: a reload offers to register, not to unlock
        await page.reload()
        await page.wait_for_selector("body[data-state=ready]")
        assert await page.is_visible("#welcome") and await page.is_hidden("#unlock")
        assert watched.problems == []
        assert await watched.csp() == []

    tombstone = loads(await node.app_store().tombstone(patient))
    assert tombstone["body"]["type"] == "rxfed.tombstone" and tombstone["body"]["patient"] == patient
    (row,) = await asyncio.to_thread(administer.communities_list, node.data_dir)
    assert row["members"] == 1
    # the node refuses an erasure while a grant is live (live_grants): the page revoked it first
    assert not any(g.revoked is None for g, _ in await node.app_store().grants(patient))
    # the CLI's device was erased with the account: the node no longer knows it
    code, said = await cli_refused("patient", "consent", "list", "--profile", str(profile))
    assert code == 1 and said
