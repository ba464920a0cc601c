"""Other nodes' keys pinned in the page across views and visits (js/nodekeys.mjs), in a
real browser (headless Chromium, as tests/test_web_browser.py): a browser patient on node A
shares with a plugin on node B and joins a community B hosts; B rotates its key with a
signed rotation (followed), then changes it without one, and every view refuses it: no
grant is signed for B, no community of B is joined, B's acknowledgement under the new key
is not believed, until the patient forgets B's keys."""

from __future__ import annotations

import json
import time

import pytest

from conftest import MARKER
from rxfed.consent import grants as consent_grants
from rxfed.crypto import SigningKeyPair, fingerprint
from rxfed.node.config import NodeSigningKey, rotate_node_key, save_node_keys
from rxfed.protocol.canonical import canonical
from test_communities import eventually
from test_web_browser import _browser_or_skip, axe_scan, cli, opened_page, register_in_page, unlock_by_keyboard

pytestmark = pytest.mark.browser

DRUG = MARKER.lower() + "ine"


async def _grant(page, target: str, purpose: str = "research") -> None:
    await page.select_option("#g-kind", "treatment.outcome")
    await page.fill("#g-purpose", purpose)
    await page.select_option("#g-to", target)
    await page.click("#grant-form button[type=submit]")


async def _pins(page) -> dict[str, str]:
    """The pins as the view lists them, drawn again by opening it."""
    if await page.evaluate("document.getElementById('nodekeys').open"):
        await page.click("#nodekeys summary")
        await page.wait_for_selector("#nodekeys-list li", state="detached")
    await page.click("#nodekeys summary")
    await page.wait_for_selector("#nodekeys-list li", timeout=30_000)
    return dict(await page.eval_on_selector_all("#nodekeys-list li", "ls => ls.map(l => [l.dataset.node, l.textContent])"))


async def test_a_node_that_changes_its_key_without_a_signed_rotation_is_refused_in_every_view(pair, tmp_path):
    _browser_or_skip()
    a, b = pair
    bob = tmp_path / "bob"
    await cli("patient", "register", "--node", b.url, "--profile", str(bob), "--kdf", "min")
    first = (await cli("community", "create", "--profile", str(bob), "Before the change"))["address"]
    second = (await cli("community", "create", "--profile", str(bob), "After the change"))["address"]
    outcomes_b = b.state.plugins.pm.get_plugin("outcomes")
    target = f"plugin:{b.node_id}/outcomes"
    old_key = b.state.signing_key().public
    async with opened_page(a.url + "/") as (page, watched):
        await register_in_page(page)
        await page.fill("#t-name", DRUG)
        await page.fill("#t-efficacy", "8")
        await page.click("#treatment-form button[type=submit]")
        await page.wait_for_selector("body[data-saved='1']")
        await page.wait_for_selector("body[data-consent=ready]")
        # first contact: the consent view pinned A's and B's keys, kept for every view
        pins = await _pins(page)
        assert set(pins) == {a.node_id, b.node_id} and fingerprint(old_key) in pins[b.node_id]
        await axe_scan(page, "keys of other nodes")

        # the communities view uses the same pins: joining B's community checks them
        await page.wait_for_selector("body[data-communities=ready]")
        await page.select_option("#c-host", b.node_id)
        await page.click("#c-browse")
        await page.wait_for_selector(f"#directory li[data-address='{first}']", timeout=30_000)
        await page.click(f"#directory li[data-address='{first}'] button.join")
        await page.wait_for_selector("body[data-joined='1']", timeout=30_000)

        # B rotates its key with a rotation its old key signed: followed, pinned, across a reload
        rotate_node_key(b.data_dir, overlap=86400)
        b.state.reload_keys()
        rotated = b.state.signing_key().public
        await unlock_by_keyboard(page, a.url + "/")
        await page.wait_for_selector("body[data-consent=ready]")
        await _grant(page, target)
        await page.wait_for_selector("body[data-granted='1']", timeout=30_000)
        assert f"shared 1 signals with {b.node_id}" in await page.text_content("#consent-status")
        await eventually(lambda: _now(outcomes_b.summary(k=1) == {DRUG: {"high": 1}}))
        pins = await _pins(page)
        assert fingerprint(old_key) in pins[b.node_id] and fingerprint(rotated) in pins[b.node_id]
        grant = await page.get_attribute("#grants li[data-grant]", "data-grant")

        # B (or whoever now answers at its address) serves a new key that no trusted key introduced
        changed = SigningKeyPair.generate()
        save_node_keys(b.data_dir, [NodeSigningKey(changed, int(time.time()), None)])
        b.state.reload_keys()
        await unlock_by_keyboard(page, a.url + "/")
        await page.wait_for_selector("body[data-consent=ready]")
        options = await page.eval_on_selector_all("#g-to option", "os => os.map(o => o.textContent)")
        assert any(b.node_id in o and "refused" in o for o in options), options

        # consent: nothing is signed or sealed for B
        assert target not in await page.eval_on_selector_all("#g-to option", "os => os.map(o => o.value)")
        grants_before = await _grant_count(a)
        await _grant(page, f"node:{b.node_id}")
        await page.wait_for_selector("#consent-error:not([hidden])", timeout=30_000)
        said = await page.text_content("#consent-error")
        assert "never trusted" in said and fingerprint(changed.public) in said, said
        assert await _grant_count(a) == grants_before
        await _grant(page, "federation")
        await page.wait_for_selector("#consent-error:has-text('never trusted')", timeout=30_000)
        assert await _grant_count(a) == grants_before

        # communities: B's other community is not joined (nothing stored, nothing sent)
        await page.wait_for_selector("body[data-communities=ready]")
        await page.select_option("#c-host", b.node_id)
        await page.click("#c-browse")
        await page.wait_for_selector(f"#directory li[data-address='{second}']", timeout=30_000)
        await page.click(f"#directory li[data-address='{second}'] button.join")
        await page.wait_for_selector("#communities-error:has-text('never trusted')", timeout=30_000)
        assert await page.locator(f"#my-communities li[data-address='{second}']").count() == 0
        assert await page.locator(f"#my-communities li[data-address='{first}']").count() == 1

        # revoking: B's acknowledgement, signed by the changed key, is not believed
        await page.click(f"li[data-grant='{grant}'] button.revoke")
        await page.wait_for_selector("body[data-revoked='1']", timeout=30_000)
        await _acknowledge_with(a, grant, b.node_id, changed)
        await page.click("#grants-refresh")
        await page.wait_for_selector(f"li[data-grant='{grant}'].error", timeout=30_000)
        assert "may still hold your signals" in await page.text_content(f"li[data-grant='{grant}']")

        # the patient forgets B's keys (its operator gave the new fingerprint): trusted as at first contact
        pins = await _pins(page)
        assert fingerprint(changed.public) not in pins[b.node_id]
        await page.click(f"#nodekeys-list li[data-node='{b.node_id}'] button.forget")
        await page.wait_for_selector("#nodekeys-status:has-text('Forgotten')")
        assert b.node_id not in dict(await page.eval_on_selector_all(
            "#nodekeys-list li", "ls => ls.map(l => [l.dataset.node, l.textContent])"))
        await page.click("#grants-refresh")
        await page.wait_for_selector(f"#grants li[data-grant='{grant}']:has-text('deleted, signed by {b.node_id}')",
                                     timeout=30_000)
        pins = await _pins(page)
        assert pins[b.node_id].count("SHA256:") == 1 and fingerprint(changed.public) in pins[b.node_id]
        assert watched.problems == []
        assert await watched.csp() == []


async def _grant_count(node) -> int:
    return await node.app_store()._read(lambda c: c.execute("SELECT count(*) FROM grants").fetchone()[0])


async def _acknowledge_with(home, grant: str, node_id: str, key: SigningKeyPair) -> None:
    """What B's acknowledgement would be once home accepted B's new key: signed by it."""
    store = home.app_store()
    token, revocation = await store._read(lambda c: c.execute(
        "SELECT token, revocation FROM grant_tokens WHERE grant_id=?", (grant,)).fetchone())
    ack = consent_grants.Acknowledgement.create(key, token=token, node=node_id, revocation=json.loads(revocation),
                                                unconfirmed=[], now=int(time.time()))
    await store._write(lambda c: c.execute("UPDATE grant_tokens SET ack=?, acked=? WHERE token=?",
                                           (canonical(ack.signed), int(time.time()), token)))


async def _now(value):
    return value
