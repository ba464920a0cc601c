"""Insights in a real browser (headless Chromium, as tests/test_web_browser.py): patients of
the CLI grant their node's insights plugin, the operator releases a table, and a patient
registered in the page reads it: the same lines `rxfed insights` prints, without spending
budget, under the page's strict CSP."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from rxfed.cli.insights import lines
from test_web_browser import CLI_PASSPHRASE, _browser_or_skip, axe_scan, cli, opened_page, register_in_page

pytestmark = pytest.mark.browser

TABLE = {"treatments": ["metformin", "insulin"], "side_effects": ["nausea"], "symptoms": ["fatigue"]}


async def page_lines(page) -> list[str]:
    out = [(await page.text_content("#insights-summary")).strip()]  # the heading line and the budget
    for item in await page.query_selector_all("#insights-table > li"):
        out.append((await (await item.query_selector(".meta")).text_content()).strip())
        out += ["  " + (await sub.text_content()).strip() for sub in await item.query_selector_all("ul > li")]
    return out


def _as_shown(printed: list[str]) -> list[str]:
    """The CLI's lines as the page lays them out: the budget line joins the heading."""
    budget = [line for line in printed if line.startswith("your node's privacy budget")]
    rest = [line for line in printed if line not in budget]
    return [" ".join([rest[0], *budget]), *rest[1:]]


async def test_a_released_table_is_read_in_the_page_as_the_cli_shows_it(node, tmp_path):
    _browser_or_skip()
    profile = tmp_path / "cli"
    await cli("patient", "register", "--node", node.url, "--profile", str(profile), "--kdf", "min")
    await cli("patient", "condition", "add", "--profile", str(profile), "E11.9")
    await cli("patient", "treatment", "add", "--profile", str(profile), "Metformin 500 mg", "--efficacy", "8")
    await cli("patient", "consent", "grant", "--profile", str(profile), "--kind", "treatment.outcome",
              "--purpose", "insights", "--to", f"plugin:{node.node_id}/insights")
    (tmp_path / "t.json").write_text(json.dumps(TABLE))
    released = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "rxfed", "node", "insights", str(node.data_dir), "release", "E11", "--table",
        str(tmp_path / "t.json"), "--epsilon", "1/2", "--json"], capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL, env={**os.environ, "RXFED_PASSPHRASE": CLI_PASSPHRASE})
    assert released.returncode == 0, released.stderr
    by_cli = await cli("insights", "--profile", str(profile), "E11")
    async with opened_page(node.url + "/") as (page, watched):
        await register_in_page(page)
        await page.wait_for_selector("#insights:not([hidden])")
        await page.fill("#i-category", "e11")
        await page.click("#insights-form button[type=submit]")
        await page.wait_for_selector(f"body[data-insights='{by_cli['release']}']", timeout=30_000)
        assert await page_lines(page) == _as_shown(lines(by_cli))
        assert [await li.get_attribute("data-treatment") for li in await page.query_selector_all(
            "#insights-table > li")] == ["insulin", "metformin"]
        await axe_scan(page, "insights")
        # one treatment, asked again: the same table (no budget spent)
        await page.fill("#i-treatment", "Metformin")
        await page.click("#insights-form button[type=submit]")
        await page.wait_for_selector("body[data-insights-rows='1']")
        assert await page_lines(page) == _as_shown(lines({**by_cli, "treatments": [
            t for t in by_cli["treatments"] if t["treatment"] == "metformin"]}))
        assert "1/2 of 1 spent, 1/2 left" in await page.text_content("#insights-summary")
        # a category that is none is refused in words, and the node is not asked
        await page.fill("#i-category", "Z99")
        await page.click("#insights-form button[type=submit]")
        await page.wait_for_selector("#insights-error:not([hidden])")
        assert "ICD-10" in await page.text_content("#insights-error")
        assert watched.problems == [] and await watched.csp() == []
    ledger = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "rxfed", "node", "insights", str(node.data_dir), "ledger", "--json"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert json.loads(ledger.stdout)["periods"][0]["spent"] == "1/2"
