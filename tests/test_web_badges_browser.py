"""Clinician badges in a real browser (headless Chromium): a clinician on node B, vouched for
by hospital A, posts with a badge in a community hosted on C; a browser patient on A sees the
badge the CLI sees, checked in the page against A's keys and status list, and the same
refusal once A revokes the credential."""

from __future__ import annotations

import asyncio

import pytest

from conftest import MARKER
from rxfed.node import clinician_admin
from rxfed.testing import start_federation
from test_communities import eventually
from test_web_browser import ARTEFACTS, _browser_or_skip, cli, opened_page
from test_web_community_browser import _cli_sees_member, _joined
from test_web_devices_browser import register_in_page

pytestmark = pytest.mark.browser


@pytest.fixture
async def trio(tmp_path):
    nodes = await start_federation(tmp_path, "hospital-a", "b", "c")
    yield nodes
    for n in nodes:
        await n.stop()


async def test_the_page_shows_the_badge_verdicts_the_cli_shows(trio, tmp_path):
    _browser_or_skip()
    a, b, c = trio
    founder, doctor = tmp_path / "founder", tmp_path / "doctor"
    await cli("patient", "register", "--node", c.url, "--profile", str(founder), "--kdf", "min")
    await cli("patient", "register", "--node", b.url, "--profile", str(doctor), "--kdf", "min")
    key = (await cli("patient", "clinician", "key", "--profile", str(doctor)))["key"]
    bundle = tmp_path / "credentials.json"
    issued = await asyncio.to_thread(lambda: clinician_admin.issue(
        a.data_dir, key=key, role="physician", specialty="207RE0101X", specialty_name="Endocrinology",
        npi="1234567893"))
    bundle.write_text(__import__("json").dumps({"clinician": key, "credentials": issued["credentials"]}))
    address = (await cli("community", "create", "--profile", str(founder), "Thyroid"))["address"]
    await cli("community", "join", "--profile", str(doctor), address)
    await eventually(lambda: _joined(doctor, address), timeout=20)
    said = f"{MARKER} TSH six weeks after a dose change"

    async with opened_page(a.url + "/") as (page, watched):
        await register_in_page(page)
        await page.wait_for_selector("body[data-communities=ready]")
        await page.select_option("#c-host", c.node_id)
        await page.click("#c-browse")
        await page.wait_for_selector(f"#directory li[data-address='{address}']", timeout=30_000)
        await page.click(f"#directory li[data-address='{address}'] button.join")
        await page.wait_for_selector("body[data-joined='1']", timeout=30_000)
        await eventually(lambda: _cli_sees_member(doctor, address, 3), timeout=30)
        await cli("community", "post", "--profile", str(doctor), address, said, "--badge", str(bundle))

        async def badge_in_page():
            await page.click(f"#my-communities li[data-address='{address}'] button.open")
            await page.wait_for_selector("#community-view:not([hidden])", timeout=30_000)
            await page.wait_for_selector("#cv-refresh:not([disabled])")
            item = page.locator("#cv-messages li", has_text=said)
            if not await item.count():
                return None
            badge = item.locator(".badge")
            return (await badge.get_attribute("data-badge"), await badge.text_content()) if await badge.count() else None

        async def cli_badge():
            view = await cli("community", "read", "--profile", str(founder), address)
            return next((m["badge"] for m in view["messages"] if m["text"] == said), None)

        shown = {}

        async def both():
            shown["page"], shown["cli"] = await badge_in_page(), await cli_badge()
            return shown["page"] is not None and shown["cli"] is not None

        await eventually(both, timeout=30)
        assert shown["cli"]["verified"] and shown["page"] == ("verified", f"✓ {shown['cli']['badge']}")
        await page.screenshot(path=ARTEFACTS / "community-badge.png", full_page=True)

        await asyncio.to_thread(clinician_admin.revoke, a.data_dir, issued["id"])
        await page.click("#cv-refresh")
        await page.wait_for_selector("#cv-refresh:not([disabled])")
        await eventually(both, timeout=30)
        assert shown["cli"]["reason"] == "credential_revoked"
        assert shown["page"] == ("credential_revoked", f"Clinician badge refused: {shown['cli']['explanation']}")
        assert not watched.problems, watched.problems
        assert not await watched.csp()


async def test_a_clinician_posts_with_a_badge_from_the_page(trio, tmp_path):
    """The clinician's key is made in the page (a `clinician` vault record, the CLI's), the
    hospital vouches for it, and the page posts with the badge; the CLI verifies it. A
    credential for another key is refused in the page before anything is sent."""
    _browser_or_skip()
    a, b, c = trio
    founder, other = tmp_path / "founder", tmp_path / "other"
    await cli("patient", "register", "--node", c.url, "--profile", str(founder), "--kdf", "min")
    await cli("patient", "register", "--node", b.url, "--profile", str(other), "--kdf", "min")
    address = (await cli("community", "create", "--profile", str(founder), "Thyroid"))["address"]
    said = f"{MARKER} from a clinician's browser"

    async with opened_page(b.url + "/") as (page, watched):
        await register_in_page(page)
        await page.wait_for_selector("body[data-communities=ready]")
        await page.select_option("#c-host", c.node_id)
        await page.click("#c-browse")
        await page.wait_for_selector(f"#directory li[data-address='{address}']", timeout=30_000)
        await page.click(f"#directory li[data-address='{address}'] button.join")
        await page.wait_for_selector("body[data-joined='1']", timeout=30_000)
        await page.click(f"#my-communities li[data-address='{address}'] button.open")
        await page.wait_for_selector("#community-view:not([hidden])", timeout=30_000)
        await page.click("#post-badge-box summary")
        await page.click("#clinician-key")
        await page.wait_for_selector("#clinician-key-out:not([hidden])", timeout=30_000)
        key = (await page.text_content("#clinician-key-out")).strip()
        assert key.startswith("did:key:z6Mk")
        await page.click("#clinician-key")  # the same key again, from the vault
        await page.wait_for_selector("#clinician-key:not([disabled])")
        assert (await page.text_content("#clinician-key-out")).strip() == key

        def issued_for(did):
            return clinician_admin.issue(a.data_dir, key=did, role="nurse-practitioner", specialty="363LF0000X",
                                         specialty_name="Family Health", npi="1234567893")

        mine = await asyncio.to_thread(issued_for, key)
        theirs = await asyncio.to_thread(issued_for, (await cli("patient", "clinician", "key", "--profile",
                                                                str(other)))["key"])
        good, wrong = tmp_path / "mine.json", tmp_path / "theirs.json"
        good.write_text(__import__("json").dumps({"clinician": key, "credentials": mine["credentials"]}))
        wrong.write_text(__import__("json").dumps({"clinician": "x", "credentials": theirs["credentials"]}))

        await page.set_input_files("#post-badge", str(wrong))
        await page.fill("#post-text", f"{MARKER} not mine")
        await page.click("#post-form button[type=submit]")
        await page.wait_for_selector("#post-form button[type=submit]:not([disabled])", timeout=30_000)
        await eventually(lambda: _status_says(page, "another clinician key"), timeout=10)
        await page.set_input_files("#post-badge", str(good))
        await page.fill("#post-text", said)
        await page.click("#post-form button[type=submit]")
        await page.wait_for_selector("body[data-posted='1']", timeout=30_000)

        async def cli_badge():
            view = await cli("community", "read", "--profile", str(founder), address)
            return next((m["badge"] for m in view["messages"] if m["text"] == said), None)

        await eventually(cli_badge, timeout=30)
        verdict = await cli_badge()
        assert verdict["verified"] and verdict["clinician"] == key
        assert verdict["badge"] == f"verified nurse-practitioner, Family Health, hospital-a ({a.node_id})"
        view = await cli("community", "read", "--profile", str(founder), address)
        assert f"{MARKER} not mine" not in [m["text"] for m in view["messages"]]
        assert not watched.problems, watched.problems


async def _status_says(page, words: str) -> bool:
    return words in (await page.text_content("body"))


async def test_the_page_pins_the_issuers_keys_as_the_cli_does(trio, tmp_path):
    """The page pins an issuer's keys at the first badge it checks (as the CLI's issuers.json)
    and follows only rotations they sign: a credential under keys swapped later at the
    issuer's address is refused in the page, as by the CLI that read the first badge."""
    import json
    import time

    from rxfed.crypto import SigningKeyPair
    from rxfed.node.config import NodeSigningKey, save_node_keys

    _browser_or_skip()
    a, b, c = trio
    founder, doctor = tmp_path / "founder", tmp_path / "doctor"
    await cli("patient", "register", "--node", c.url, "--profile", str(founder), "--kdf", "min")
    await cli("patient", "register", "--node", b.url, "--profile", str(doctor), "--kdf", "min")
    key = (await cli("patient", "clinician", "key", "--profile", str(doctor)))["key"]

    def bundle(name):
        issued = clinician_admin.issue(a.data_dir, key=key, role="physician", specialty="207RE0101X",
                                       specialty_name="Endocrinology", npi="1234567893")
        path = tmp_path / name
        path.write_text(json.dumps({"clinician": key, "credentials": issued["credentials"]}))
        return path

    first = await asyncio.to_thread(bundle, "first.json")
    address = (await cli("community", "create", "--profile", str(founder), "Thyroid"))["address"]
    await cli("community", "join", "--profile", str(doctor), address)
    await eventually(lambda: _joined(doctor, address), timeout=20)
    before, after = f"{MARKER} under the issuer's keys", f"{MARKER} under swapped keys"

    async with opened_page(b.url + "/") as (page, watched):
        await register_in_page(page)
        await page.wait_for_selector("body[data-communities=ready]")
        await page.select_option("#c-host", c.node_id)
        await page.click("#c-browse")
        await page.wait_for_selector(f"#directory li[data-address='{address}']", timeout=30_000)
        await page.click(f"#directory li[data-address='{address}'] button.join")
        await page.wait_for_selector("body[data-joined='1']", timeout=30_000)
        await eventually(lambda: _cli_sees_member(doctor, address, 3), timeout=30)

        async def badge_in_page(said):
            await page.click(f"#my-communities li[data-address='{address}'] button.open")
            await page.wait_for_selector("#community-view:not([hidden])", timeout=30_000)
            await page.click("#cv-refresh")
            await page.wait_for_selector("#cv-refresh:not([disabled])")
            item = page.locator("#cv-messages li", has_text=said)
            if not await item.count():
                return None
            badge = item.locator(".badge")
            return await badge.get_attribute("data-badge") if await badge.count() else None

        async def cli_badge(said):
            view = await cli("community", "read", "--profile", str(founder), address)
            return next((m["badge"] for m in view["messages"] if m["text"] == said), None)

        async def shown(said, into):
            into["page"], into["cli"] = await badge_in_page(said), await cli_badge(said)
            return into["page"] is not None and into["cli"] is not None

        await cli("community", "post", "--profile", str(doctor), address, before, "--badge", str(first))
        seen: dict = {}
        await eventually(lambda: shown(before, seen), timeout=30)
        assert seen["page"] == "verified" and seen["cli"]["verified"]

        # the issuer's address now answers with another key, no rotation signed to it
        save_node_keys(a.data_dir, [NodeSigningKey(SigningKeyPair.generate(), int(time.time()) - 60, None)])
        a.state.reload_keys()
        swapped = await asyncio.to_thread(bundle, "swapped.json")
        (doctor / "issuers.json").unlink()  # a poster who never pinned the old keys
        await cli("community", "post", "--profile", str(doctor), address, after, "--badge", str(swapped))
        seen = {}
        await eventually(lambda: shown(after, seen), timeout=30)
        assert seen["cli"]["reason"] == "unknown_issuer_key"
        assert seen["page"] == "unknown_issuer_key"
        assert not await watched.csp()
async def test_the_page_pins_issuers_keys_and_refuses_a_badge_under_keys_swapped_without_a_signed_rotation(tmp_path):
    """The first badge the page checks pins the issuer's keys in IndexedDB (the pins of
    js/nodekeys.mjs); a signed rotation is followed; keys the issuer's address publishes
    later without one are not, so a credential under them is refused in the page as in the
    CLI (unknown_issuer_key), though a device that never pinned that issuer would trust it."""
    import json
    import time

    from rxfed.client.clinician import PINS
    from rxfed.crypto import SigningKeyPair
    from rxfed.node.config import NodeSigningKey, rotate_node_key, save_node_keys

    _browser_or_skip()
    nodes = await start_federation(tmp_path, "hospital-a", "b", "c", "p")
    try:
        a, b, c, p = nodes
        founder, doctor = tmp_path / "founder", tmp_path / "doctor"
        await cli("patient", "register", "--node", c.url, "--profile", str(founder), "--kdf", "min")
        await cli("patient", "register", "--node", b.url, "--profile", str(doctor), "--kdf", "min")
        key = (await cli("patient", "clinician", "key", "--profile", str(doctor)))["key"]

        async def bundle(name):
            issued = await asyncio.to_thread(lambda: clinician_admin.issue(
                a.data_dir, key=key, role="physician", specialty="207RE0101X", specialty_name="Endocrinology",
                npi="1234567893"))
            path = tmp_path / f"{name}.json"
            path.write_text(json.dumps({"clinician": key, "credentials": issued["credentials"]}))
            ids[name] = issued["id"]
            return path

        ids = {}

        address = (await cli("community", "create", "--profile", str(founder), "Thyroid"))["address"]
        await cli("community", "join", "--profile", str(doctor), address)
        await eventually(lambda: _joined(doctor, address), timeout=20)

        async with opened_page(p.url + "/") as (page, watched):
            await register_in_page(page)
            await page.wait_for_selector("body[data-communities=ready]")
            await page.select_option("#c-host", c.node_id)
            await page.click("#c-browse")
            await page.wait_for_selector(f"#directory li[data-address='{address}']", timeout=30_000)
            await page.click(f"#directory li[data-address='{address}'] button.join")
            await page.wait_for_selector("body[data-joined='1']", timeout=30_000)
            await eventually(lambda: _cli_sees_member(doctor, address, 3), timeout=30)

            async def verdicts(said):
                """The badge of `said` in the page and in the founder's CLI, once both show it."""
                await page.click(f"#my-communities li[data-address='{address}'] button.open")
                await page.wait_for_selector("#community-view:not([hidden])", timeout=30_000)
                await page.wait_for_selector("#cv-refresh:not([disabled])")
                item = page.locator("#cv-messages li", has_text=said)
                badge = item.locator(".badge")
                if not await item.count() or not await badge.count():
                    return None
                view = await cli("community", "read", "--profile", str(founder), address)
                cli_badge = next((m["badge"] for m in view["messages"] if m["text"] == said), None)
                return (await badge.get_attribute("data-badge"), cli_badge) if cli_badge else None

            async def posted(said, path):
                await cli("community", "post", "--profile", str(doctor), address, said, "--badge", str(path))
                found = {}

                async def shown():
                    found["v"] = await verdicts(said)
                    return found["v"] is not None

                await eventually(shown, timeout=30)
                return found["v"]

            page_says, cli_says = await posted(f"{MARKER} before the rotation", await bundle("first"))
            assert page_says == "verified" and cli_says["verified"]
            # a rotation A's pinned key signed is followed, in the page as in the CLI
            rotate_node_key(a.data_dir, overlap=3600)
            a.state.reload_keys()
            page_says, cli_says = await posted(f"{MARKER} after a signed rotation", await bundle("rotated"))
            assert page_says == "verified" and cli_says["verified"]
            # keys swapped with no rotation: the doctor's device forgets its pins, so it posts;
            # the page and the founder's CLI pinned A's keys, and refuse the badge
            save_node_keys(a.data_dir, [NodeSigningKey(SigningKeyPair.generate(), int(time.time()) - 60, None)])
            a.state.reload_keys()
            # (a revocation makes A sign its status list again, now under the swapped key)
            await asyncio.to_thread(clinician_admin.revoke, a.data_dir, ids["first"])
            (doctor / PINS).unlink()
            page_says, cli_says = await posted(f"{MARKER} under swapped keys", await bundle("swapped"))
            assert (page_says, cli_says["verified"], cli_says["reason"]) == ("unknown_issuer_key", False, "unknown_issuer_key")
            assert not watched.problems, watched.problems
            assert not await watched.csp()
    finally:
        for n in nodes:
            await n.stop()
