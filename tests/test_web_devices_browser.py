"""Devices and recovery in a real browser (headless Chromium, as tests/test_web_browser.py):
the page enrols a CLI device from its link code, removes it with the recovery code (its
consent grants renewed under the new epoch's keys), and recovers an account the CLI made,
which revokes the CLI's device; each time the CLI sees what the page did."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from conftest import MARKER
from rxfed.crypto.recovery import RecoveryCode
from test_web_browser import (ARTEFACTS, CLI_PASSPHRASE, PASSPHRASE, _browser_or_skip, axe_scan, cli, entries,
                              opened_page, register_in_page, unlock_by_keyboard)

pytestmark = pytest.mark.browser


async def cli_refused(*args: str, code: str | None = None) -> tuple[int, str]:
    """Run the CLI expecting a refusal: (exit code, what it said on stderr)."""
    env = {**os.environ, "RXFED_PASSPHRASE": CLI_PASSPHRASE, "RXFED_AGENT_DISABLE": "1"}
    if code:
        env["RXFED_RECOVERY_CODE"] = code
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "rxfed", *args, "--json",
                                                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode != 0, out.decode()
    return proc.returncode, err.decode()


async def test_the_page_adds_a_cli_device_and_removes_it_with_the_recovery_code(node, tmp_path):
    _browser_or_skip()
    profile = tmp_path / "cli"
    async with opened_page(node.url + "/") as (page, watched):
        code = await register_in_page(page)
        await page.fill("#j-note", f"{MARKER} written in the browser")
        await page.click("#journal-form button[type=submit]")
        await page.wait_for_selector("body[data-saved='1']")
        await page.fill("#t-name", "metformin")
        await page.fill("#t-efficacy", "7")
        await page.click("#treatment-form button[type=submit]")
        await page.wait_for_selector("body[data-saved='2']")
        await page.wait_for_selector("body[data-consent=ready]")

        # a link code that is not one is refused, and nothing is enrolled
        await page.fill("#add-link", "rxfed-link:AAAA")
        await page.click("#add-device-form button[type=submit]")
        await page.wait_for_selector("#devices-error:not([hidden])")
        assert "starts with rxfed-link:" in await page.text_content("#devices-error")

        # the CLI asks to be linked; the page enrols it and shows the confirmation code
        link = (await cli("patient", "link", "request", "--node", node.url, "--profile", str(profile), "--kdf", "min"))
        await page.fill("#add-link", link["link_code"])
        await page.click("#add-device-form button[type=submit]")
        await page.wait_for_selector("#add-done:not([hidden])", timeout=30_000)
        confirmation = (await page.text_content("#add-confirm")).strip()
        finished = await cli("patient", "link", "finish", "--profile", str(profile), "--confirm", confirmation)
        assert finished["confirmation"] == confirmation
        cli_device = finished["device"]
        devices = await page.text_content("#devices")
        assert f"Device {cli_device[:8]}, added by this browser" in devices and "does not verify" not in devices
        shown = await cli("patient", "show", "--profile", str(profile))
        assert f"{MARKER} written in the browser" in {r["data"].get("note") for r in shown["records"]}
        listed = (await cli("patient", "devices", "list", "--profile", str(profile)))["devices"]
        assert len(listed) == 2 and all(d["verified"] for d in listed)
        await axe_scan(page, "journal with the devices forms")

        # a community the CLI device created: its keys are the account's, rekeyed too
        made = await cli("community", "create", "--profile", str(profile), "Lamotrigine users")

        # a grant made now is renewed when the epoch changes
        await page.select_option("#g-kind", "treatment.outcome")
        await page.select_option("#g-to", f"node:{node.node_id}")
        await page.click("#grant-form button[type=submit]")
        await page.wait_for_selector("body[data-granted='1']", timeout=30_000)
        before = (await cli("patient", "consent", "list", "--profile", str(profile)))["grants"]
        assert [g["status"] for g in before] == ["live"]

        # removing needs the patient to say they understand, and the account's current code
        assert await page.eval_on_selector_all("#revoke-device option", "os => os.map(o => o.value)") == [cli_device]
        await page.fill("#revoke-code", code)
        await page.click("#revoke-form button[type=submit]")
        await page.wait_for_selector("#devices-error:has-text('you understand')")
        await page.check("#revoke-understood")
        await page.fill("#revoke-code", str(RecoveryCode.generate()))
        await page.click("#revoke-form button[type=submit]")
        await page.wait_for_selector("#devices-error:has-text('not the account')", timeout=30_000)
        assert (await cli("patient", "devices", "list", "--profile", str(profile)))["devices"][0]["revoked"] is None
        await page.fill("#revoke-code", code.lower().replace("-", " "))
        await page.click("#revoke-form button[type=submit]")
        await page.wait_for_selector("body[data-devices-revoked='1']", timeout=30_000)
        said = await page.text_content("#devices-status")
        assert f"Removed {cli_device[:8]}" in said and "1 consent grant renewed" in said and "1 community rekeyed" in said
        assert "removed" in await page.text_content(f"#devices li[data-device='{cli_device}']")

        # the removed device is refused by the node; the page reads on at the new epoch
        status, error = await cli_refused("patient", "show", "--profile", str(profile))
        assert status == 1 and "revoked" in error
        await unlock_by_keyboard(page, node.url + "/")
        assert MARKER in await entries(page)
        await page.wait_for_selector("body[data-consent=ready]")
        grants = await page.eval_on_selector_all("#grants li[data-grant]", "ls => ls.map(l => l.dataset.status)")
        assert sorted(grants) == ["live", "revoked"]
        # the community folds with the rekey: the seat (the admin's) went to the new keys
        await page.wait_for_selector(f"#my-communities li[data-address='{made['address']}']")
        await page.click(f"#my-communities li[data-address='{made['address']}'] button.open")
        await page.wait_for_selector("#community-view:not([hidden])", timeout=30_000)
        assert (await page.text_content("#cv-members")).startswith("1 member;")
        events = await node.app_store().community_events(*made["address"].split("@"))
        assert [json.loads(e.event)["body"]["type"] for e in events][-1] == "rxfed.community.rekey"
        # Chromium logs the node's 401 for the code that is not the account's; nothing else
        assert [p for p in watched.problems if "401 (Unauthorized)" not in p] == []
        assert len(watched.problems) == 1
        assert await watched.csp() == []


async def test_the_page_recovers_an_account_the_cli_made(node, tmp_path):
    _browser_or_skip()
    profile = tmp_path / "cli"
    made = await cli("patient", "register", "--node", node.url, "--profile", str(profile), "--kdf", "min")
    code = made["recovery_code"]
    await cli("patient", "journal", "add", "--profile", str(profile), "--note", f"{MARKER} written with the CLI")
    await cli("patient", "treatment", "add", "--profile", str(profile), "metformin", "--efficacy", "4")
    granted = await cli("patient", "consent", "grant", "--profile", str(profile), "--kind", "treatment.outcome",
                        "--purpose", "research", "--to", f"node:{node.node_id}")
    async with opened_page(node.url + "/", {"width": 390, "height": 844}) as (page, watched):
        await axe_scan(page, "welcome with the recovery form")
        assert "trusts that page with your" in await page.text_content("#recover-warning")
        await page.fill("#recover-code", code)
        await page.fill("#recover-pass", PASSPHRASE)
        await page.fill("#recover-pass2", PASSPHRASE)
        await page.click("#recover-form button[type=submit]")
        await page.wait_for_selector("#error:has-text('you understand')")
        await page.check("#recover-understood")
        await page.fill("#recover-code", ("A" if code[0] != "A" else "B") + code[1:])
        await page.click("#recover-form button[type=submit]")
        await page.wait_for_selector("#error:has-text('checksum')")
        await page.fill("#recover-code", code)
        await page.click("#recover-form button[type=submit]")
        await page.wait_for_selector("body[data-state=unlocked]", timeout=30_000)
        assert f"{MARKER} written with the CLI" in await entries(page)
        status = await page.text_content("#status")
        # the CLI's device is not kept, so the grant it made is revoked, not renewed
        assert "Recovered" in status and "1 consent grant made by a removed device revoked" in status
        await page.screenshot(path=ARTEFACTS / "recovered-phone.png", full_page=True)
        devices = await page.text_content("#devices")
        assert "added with the recovery code" in devices and "removed" in devices

        # the CLI's device was not kept: it is revoked, and so is the grant it made
        code_status, _ = await cli_refused("patient", "show", "--profile", str(profile))
        assert code_status == 1
        await page.wait_for_selector("body[data-consent=ready]")
        grants = {g: s for g, s in await page.eval_on_selector_all(
            "#grants li[data-grant]", "ls => ls.map(l => [l.dataset.grant, l.dataset.status])")}
        assert grants == {granted["grant"]: "revoked"}

        # a browser that holds an account refuses a second recovery into it; the key file
        # written by the recovery opens with the new passphrase
        await unlock_by_keyboard(page, node.url + "/")
        assert MARKER in await entries(page)
        assert watched.problems == []
        assert await watched.csp() == []

    # the CLI recovers in turn, keeping the browser: the browser is a verified device
    again = tmp_path / "again"
    await cli("patient", "recover", "--node", node.url, "--profile", str(again), "--kdf", "min", "--keep-all",
              code=code)
    listed = (await cli("patient", "devices", "list", "--profile", str(again)))["devices"]
    assert sum(1 for d in listed if d["revoked"] is None) == 2 and all(d["verified"] for d in listed)
    for path in node.data_dir.rglob("*"):
        if path.is_file():
            assert MARKER.encode() not in path.read_bytes(), path


async def test_the_page_changes_the_recovery_code_and_the_cli_recovers_only_with_the_new_one(node, tmp_path):
    _browser_or_skip()
    profile = tmp_path / "cli"
    async with opened_page(node.url + "/") as (page, watched):
        old = await register_in_page(page)
        await page.fill("#j-note", f"{MARKER} written before the change")
        await page.click("#journal-form button[type=submit]")
        await page.wait_for_selector("body[data-saved='1']")
        # a CLI device of the same account, enrolled by the page: it must be kept
        link = await cli("patient", "link", "request", "--node", node.url, "--profile", str(profile), "--kdf", "min")
        await page.fill("#add-link", link["link_code"])
        await page.click("#add-device-form button[type=submit]")
        await page.wait_for_selector("#add-done:not([hidden])", timeout=30_000)
        await cli("patient", "link", "finish", "--profile", str(profile),
                  "--confirm", (await page.text_content("#add-confirm")).strip())
        await page.wait_for_selector("body[data-consent=ready]")
        await page.select_option("#g-kind", "treatment.outcome")
        await page.select_option("#g-to", f"node:{node.node_id}")
        await page.click("#grant-form button[type=submit]")
        await page.wait_for_selector("body[data-granted='1']", timeout=30_000)

        # the same warnings as the CLI's and the other code forms: nothing changes without the tick
        assert "rxfed patient recovery-code rotate" in await page.text_content("#rotate-code-form")
        await page.fill("#rotate-code", old)
        await page.click("#rotate-code-form button[type=submit]")
        await page.wait_for_selector("#devices-error:has-text('you understand')")
        await page.check("#rotate-understood")
        await page.fill("#rotate-code", str(RecoveryCode.generate()))
        await page.click("#rotate-code-form button[type=submit]")
        await page.wait_for_selector("#devices-error:has-text('not the account')", timeout=30_000)
        assert await page.is_hidden("#rotate-done")
        await page.fill("#rotate-code", old)
        await page.click("#rotate-code-form button[type=submit]")
        await page.wait_for_selector("body[data-recovery-rotated='1']", timeout=30_000)
        new = (await page.text_content("#rotate-new-code")).strip()
        assert str(RecoveryCode.parse(new)) == new and RecoveryCode.parse(new) != RecoveryCode.parse(old)
        said = await page.text_content("#devices-status")
        assert "old one no longer works" in said and "1 consent grant renewed" in said
        assert "shown only now" in await page.text_content("#rotate-done")
        await axe_scan(page, "journal with the new recovery code shown")
        await page.screenshot(path=ARTEFACTS / "recovery-code-changed.png", full_page=True)
        await page.click("#rotate-kept")
        assert await page.is_hidden("#rotate-done") and (await page.text_content("#rotate-new-code")) == ""

        # the page itself refuses the old code from now on
        await page.check("#rotate-understood")
        await page.fill("#rotate-code", old)
        await page.click("#rotate-code-form button[type=submit]")
        await page.wait_for_selector("#devices-error:has-text('not the account')", timeout=30_000)

        # the CLI device was kept: it reads on at the new epoch, the grant renewed under its keys
        shown = await cli("patient", "show", "--profile", str(profile))
        assert f"{MARKER} written before the change" in {r["data"].get("note") for r in shown["records"]}
        grants = (await cli("patient", "consent", "list", "--profile", str(profile)))["grants"]
        assert sorted(g["status"] for g in grants) == ["live", "revoked"]

        # a CLI recovery with the old code is refused; with the page's new code it works
        status, error = await cli_refused("patient", "recover", "--node", node.url, "--profile",
                                          str(tmp_path / "old"), "--kdf", "min", "--keep-all", code=old)
        assert status == 1 and "not the patient's current one" in error, error
        assert not (tmp_path / "old" / "keys.json").exists()
        again = tmp_path / "again"
        await cli("patient", "recover", "--node", node.url, "--profile", str(again), "--kdf", "min", "--keep-all",
                  code=new)
        listed = (await cli("patient", "devices", "list", "--profile", str(again)))["devices"]
        assert sum(1 for d in listed if d["revoked"] is None) == 3 and all(d["verified"] for d in listed)

        # and the other way round: the CLI changes the page's code; the page follows the epochs
        newest = (await cli("patient", "recovery-code", "rotate", "--profile", str(again), code=new))["recovery_code"]
        await unlock_by_keyboard(page, node.url + "/")
        assert MARKER in await entries(page)
        await page.check("#rotate-understood")
        await page.fill("#rotate-code", new)
        await page.click("#rotate-code-form button[type=submit]")
        await page.wait_for_selector("#devices-error:has-text('not the account')", timeout=30_000)

        # the node makes the change but its answer is lost: the page still shows the new code,
        # which is then the one that works
        async def lose_the_answer(route):
            await route.fetch()
            await route.abort()

        await page.route("**/v1/identity", lose_the_answer)
        await page.fill("#rotate-code", newest)
        await page.click("#rotate-code-form button[type=submit]")
        await page.wait_for_selector("#devices-error:has-text('No clear answer')", timeout=30_000)
        assert await page.is_visible("#rotate-done")
        pending = (await page.text_content("#rotate-new-code")).strip()
        await page.unroute("**/v1/identity")
        status, _ = await cli_refused("patient", "recover", "--node", node.url, "--profile", str(tmp_path / "newest"),
                                      "--kdf", "min", "--keep-all", code=newest)
        assert status == 1
        await cli("patient", "recover", "--node", node.url, "--profile", str(tmp_path / "pending"), "--kdf", "min",
                  "--keep-all", code=pending)
        # Chromium logs the node's 401 for each code that is not the account's, and the lost
        # answer; nothing else
        assert [p for p in watched.problems if "401 (Unauthorized)" not in p and "ERR_FAILED" not in p] == []
        assert await watched.csp() == []
    # no recovery code the page made or was given reaches the node's storage
    for path in node.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for code in (old, new, newest, pending):
                assert code.encode() not in data and code.replace("-", "").encode() not in data, path
            assert MARKER.encode() not in data, path
