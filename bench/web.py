#!/usr/bin/env python3
"""Benchmark: the patient web client in headless Chromium against a node on loopback.

    python bench/web.py            # R=5 rounds, N=20 journal entries per round
    R=3 N=10 python bench/web.py

Each round, in a fresh browser profile: the first load (everything transferred, nothing
cached), registration, N journal entries, then a reload with the HTTP cache cleared and an
unlock. Reported, as medians over the rounds (issue 13's targets in brackets):

* first load to an unlocked timeline [< 1 s]: from navigation start to the journal shown,
  Argon2id excluded (page ready + unlock - Argon2id); Argon2id at the interactive cost
  reported beside it;
* bytes transferred by the first load, libsodium included [< 1.5 MB];
* a journal entry saved, in page time after unlock [< 50 ms]: seal, sign the manifest,
  the node's commit, the reply.

Needs Debian's chromium (RXFED_CHROMIUM, default /usr/bin/chromium) and the playwright
package; run it on an idle machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rxfed.testing import NodeHarness  # noqa: E402

CHROMIUM = os.environ.get("RXFED_CHROMIUM", "/usr/bin/chromium")
PASSPHRASE = "a benchmark passphrase, long enough"
TRANSFERRED = """() => [performance.getEntriesByType('navigation')[0], ...performance.getEntriesByType('resource')]
  .reduce((n, e) => n + (e.transferSize || 0), 0)"""


async def round_(browser, url: str, entries: int) -> dict:
    context = await browser.new_context()
    page = await context.new_page()
    cdp = await context.new_cdp_session(page)
    await page.goto(url)
    await page.wait_for_selector("body[data-state=ready]")
    transferred = await page.evaluate(TRANSFERRED)
    await page.fill("#reg-pass", PASSPHRASE)
    await page.fill("#reg-pass2", PASSPHRASE)
    await page.click("#register-form button[type=submit]")
    await page.wait_for_selector("#recovery:not([hidden])", timeout=60_000)
    await page.check("#recovery-kept")
    await page.click("#recovery-form button[type=submit]")
    await page.wait_for_selector("body[data-state=unlocked]", timeout=60_000)
    saves = []
    for i in range(entries):
        await page.fill("#j-s1", "fatigue")
        await page.fill("#j-v1", str(i % 11))
        await page.fill("#j-note", f"entry {i}")
        await page.click("#journal-form button[type=submit]")
        await page.wait_for_selector(f"body[data-saved='{i + 1}']")
        saves.append((await page.evaluate("window.rxfedTimings"))["save_ms"])
    await cdp.send("Network.clearBrowserCache")
    await page.goto(url)
    await page.wait_for_selector("#unlock:not([hidden])")
    await page.fill("#unlock-pass", PASSPHRASE)
    await page.click("#unlock-form button[type=submit]")
    await page.wait_for_selector("body[data-state=unlocked]", timeout=60_000)
    t = await page.evaluate("window.rxfedTimings")
    await context.close()
    return {"first_load_ms": t["ready_ms"] + t["unlock_ms"] - t["argon2_ms"], "argon2_ms": t["argon2_ms"],
            "ready_ms": t["ready_ms"], "load_ms": t["load_ms"], "transferred_bytes": transferred,
            "save_ms": statistics.median(saves), "save_max_ms": max(saves), "entries": entries}


async def main() -> None:
    from playwright.async_api import async_playwright

    rounds, entries = int(os.environ.get("R", "5")), int(os.environ.get("N", "20"))
    with tempfile.TemporaryDirectory() as tmp:
        node = await NodeHarness(Path(tmp) / "node").start()
        try:
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                results = [await round_(browser, node.url + "/", entries) for _ in range(rounds)]
                await browser.close()
        finally:
            await node.stop()
    median = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print(json.dumps({"rounds": results, "median": median}, indent=1))
    print(f"\nfirst load to unlocked timeline, Argon2id excluded: {median['first_load_ms']:.0f} ms (target < 1000)")
    print(f"Argon2id (interactive, 64 MiB): {median['argon2_ms']:.0f} ms")
    print(f"first load transferred: {median['transferred_bytes'] / 1e6:.2f} MB (target < 1.5)")
    print(f"journal entry saved: {median['save_ms']:.1f} ms median of {entries} per round (target < 50)")


if __name__ == "__main__":
    asyncio.run(main())
