"""Communities in a real browser (headless Chromium, as tests/test_web_browser.py): a browser
patient on node A and a CLI patient on node B talk in a community hosted on node C. The page
reads the host's directory and keys from C itself, checks every event against C's stamps,
and refuses a history its own node forged; its report of a message verifies in Python."""

from __future__ import annotations

import json

import pytest

from conftest import MARKER
from rxfed.crypto import SigningKeyPair, b64d
from rxfed.node.config import rotate_node_key
from rxfed.protocol import community as pc
from rxfed.protocol.canonical import canonical, loads
from rxfed.protocol.statements import sign_statement
from rxfed.testing import start_federation
from test_communities import eventually
from test_web_devices_browser import cli_refused, register_in_page
from test_web_browser import ARTEFACTS, _browser_or_skip, axe_scan, cli, opened_page, unlock_by_keyboard

pytestmark = pytest.mark.browser


@pytest.fixture
async def trio(tmp_path):
    nodes = await start_federation(tmp_path, "a", "b", "c")
    yield nodes
    for n in nodes:
        await n.stop()


async def messages(page) -> str:
    return await page.text_content("#cv-messages")


async def test_a_browser_on_a_and_the_cli_on_b_talk_in_a_community_hosted_on_c(trio, tmp_path):
    _browser_or_skip()
    a, b, c = trio
    founder, bob = tmp_path / "founder", tmp_path / "bob"
    await cli("patient", "register", "--node", c.url, "--profile", str(founder), "--kdf", "min")
    await cli("patient", "register", "--node", b.url, "--profile", str(bob), "--kdf", "min")
    made = await cli("community", "create", "--profile", str(founder), "Epilepsy support", "--condition", "G40")
    address = made["address"]
    await cli("community", "join", "--profile", str(bob), address)
    said_by_cli = f"{MARKER} from the command line"
    await eventually(lambda: _joined(bob, address), timeout=20)
    await cli("community", "post", "--profile", str(bob), address, said_by_cli)

    async with opened_page(a.url + "/") as (page, watched):
        await register_in_page(page)
        await page.wait_for_selector("body[data-communities=ready]")
        # the directory comes from C itself (CORS), checked against each create event
        await page.select_option("#c-host", c.node_id)
        await page.click("#c-browse")
        await page.wait_for_selector(f"#directory li[data-address='{address}']", timeout=30_000)
        assert "Epilepsy support (G40), 2 members" in await page.text_content("#directory")
        await axe_scan(page, "communities directory")
        await page.click(f"#directory li[data-address='{address}'] button.join")
        await page.wait_for_selector("body[data-joined='1']", timeout=30_000)

        async def read_in_page():
            await page.click(f"#my-communities li[data-address='{address}'] button.open")
            await page.wait_for_selector("#community-view:not([hidden])", timeout=30_000)
            await page.wait_for_selector("#cv-refresh:not([disabled])")
            return said_by_cli in await messages(page)

        # the CLI posts again after the browser joined: the browser can read that one (not
        # the one before it joined: no sender key of that epoch was sealed to it)
        await eventually(lambda: _cli_sees_member(bob, address, 3), timeout=20)
        await cli("community", "post", "--profile", str(bob), address, said_by_cli)
        await eventually(read_in_page, timeout=30)
        assert await page.locator("#cv-messages li").count() == 1
        notice = await page.text_content("#presend-notice")
        assert "checks it with the signed moderation rules" in notice and "only in the rxfed command" in notice

        # the browser posts; the CLI on B reads it
        said_in_page = f"{MARKER} from the browser"
        await page.fill("#post-text", said_in_page)
        await page.click("#post-form button[type=submit]")
        await page.wait_for_selector("body[data-posted='1']", timeout=30_000)

        async def shown_in_page():  # once the host stamped it and A's copy has it
            await page.click("#cv-refresh")
            await page.wait_for_selector("#cv-refresh:not([disabled])")
            return said_in_page in await messages(page)

        await eventually(shown_in_page, timeout=30)
        await axe_scan(page, "a community")
        await page.screenshot(path=ARTEFACTS / "community-desktop.png", full_page=True)

        async def cli_reads_it():
            view = await cli("community", "read", "--profile", str(bob), address)
            return said_in_page in [m["text"] for m in view["messages"]]

        await eventually(cli_reads_it, timeout=30)

        # a report of the CLI's message made in the page verifies under C's keys in Python
        seq = int(await page.get_attribute("#cv-messages li:has-text('from the command line')", "data-seq"))
        await page.click(f"#cv-messages li[data-seq='{seq}'] button.report")
        await page.wait_for_selector("#report-wrap:not([hidden])")
        report = json.loads(await page.input_value("#report-out"))
        host_keys = [b64d(k["public_key"]) for k in c.state.published_keys()["keys"]]
        facts = pc.open_franking_report(report, host_keys)
        assert facts.text == said_by_cli and facts.seq == seq
        assert not pc.verify_franking_report({**report, "text": "something else"}, host_keys)

        # the host rotates its key: the page follows the rotation the old key signed, from
        # C's own document, and reads what C stamps under the new key
        first_key = c.state.signing_key().public
        rotate_node_key(c.data_dir, overlap=86400)
        c.state.reload_keys()
        new_key = c.state.signing_key().public
        assert new_key != first_key
        said_after_rotation = f"{MARKER} after the host's key rotation"
        await cli("community", "post", "--profile", str(bob), address, said_after_rotation)

        async def read_after_rotation():
            await page.click("#cv-refresh")
            await page.wait_for_selector("#cv-refresh:not([disabled])")
            return said_after_rotation in await messages(page)

        await eventually(read_after_rotation, timeout=30)
        assert await page.is_hidden("#communities-error")
        hosted = await c.app_store().community_events(*address.split("@"))
        newest = pc.verify_stamp([new_key], loads(hosted[-1].stamp), loads(hosted[-1].event))
        assert newest.seq == len(hosted)  # stamped under the key the page had never pinned

        # node A forges an event in its copy, stamped by a key of its own: the page refuses
        store = a.app_store()
        rows = await store._read(lambda conn: conn.execute(
            "SELECT seq, event, stamp FROM community_events ORDER BY seq").fetchall())
        last_seq, last_event, last_stamp = rows[-1]
        forged_stamp = loads(last_stamp)
        fake_host = SigningKeyPair.generate()
        forged = sign_statement(fake_host, forged_stamp["body"])
        await store._write(lambda conn: conn.execute("UPDATE community_events SET stamp=? WHERE seq=?",
                                                     (canonical(forged), last_seq)))
        await page.click("#cv-refresh")
        await page.wait_for_selector("#communities-error:not([hidden])", timeout=30_000)
        assert "did not stamp" in await page.text_content("#communities-error")
        await store._write(lambda conn: conn.execute("UPDATE community_events SET stamp=? WHERE seq=?",
                                                     (last_stamp, last_seq)))
        # and one that rolls the history back below what the page pinned
        await store._write(lambda conn: conn.execute("DELETE FROM community_events WHERE seq=?", (last_seq,)))
        await page.click("#cv-refresh")
        await page.wait_for_selector("#communities-error:has-text('seen')", timeout=30_000)
        await store._write(lambda conn: conn.execute(
            "INSERT INTO community_events (community_id, host, seq, event, stamp) SELECT community_id, host, ?, ?, ? "
            "FROM community_events LIMIT 1", (last_seq, last_event, last_stamp)))

        # the pins survive a reload, and the membership (in the vault) too
        await unlock_by_keyboard(page, a.url + "/")
        await page.wait_for_selector(f"#my-communities li[data-address='{address}']")
        await eventually(read_in_page, timeout=30)

        # leave: the page keeps no keys for it, and the CLI sees the member gone
        await page.click(f"#my-communities li[data-address='{address}'] button.leave")
        await page.wait_for_selector("#my-communities-empty:not([hidden])", timeout=30_000)
        await eventually(lambda: _cli_sees_member(bob, address, 2), timeout=20)
        assert watched.problems == []
        assert await watched.csp() == []

    # no node holds the plaintext of what was said
    for node in (a, b, c):
        for path in node.data_dir.rglob("*"):
            if path.is_file():
                assert MARKER.encode() not in path.read_bytes(), path


async def _joined(profile, address) -> bool:
    view = await cli("community", "read", "--profile", str(profile), address)
    return any(m["me"] and m["status"] == "joined" for m in view["members"])


async def _cli_sees_member(profile, address, count: int) -> bool:
    view = await cli("community", "read", "--profile", str(profile), address)
    return sum(m["status"] in ("joined", "pending") for m in view["members"]) == count


async def test_a_browser_patient_creates_a_community_and_admits_and_removes_a_cli_member(pair, tmp_path):
    _browser_or_skip()
    a, b = pair
    bob = tmp_path / "bob"
    await cli("patient", "register", "--node", b.url, "--profile", str(bob), "--kdf", "min")
    async with opened_page(a.url + "/", {"width": 390, "height": 844}) as (page, watched):
        await register_in_page(page)
        await page.wait_for_selector("body[data-communities=ready]")
        # a name the host would refuse is refused here first, and nothing is kept
        await page.fill("#cc-name", "")
        await page.click("#create-form button[type=submit]")
        await page.wait_for_selector("#communities-error:has-text('1 to 80')")
        await page.fill("#cc-name", "Migraine circle")
        await page.fill("#cc-condition", "g43")
        await page.check("#cc-approval")
        await page.click("#create-form button[type=submit]")
        await page.wait_for_selector("body[data-created='1']", timeout=30_000)
        address = (await page.get_attribute("#my-communities li", "data-address"))
        listed = (await cli("community", "list", "--node", a.url))["communities"]
        assert [(c["address"], c["name"], c["condition"], c["approval"]) for c in listed] == \
            [(address, "Migraine circle", "G43", True)]

        # the CLI on B joins and waits for the admin: the page approves it
        await cli("community", "join", "--profile", str(bob), address)

        async def pending_in_page():
            await page.click(f"#my-communities li[data-address='{address}'] button.open")
            await page.wait_for_selector("#cv-refresh:not([disabled])")
            return await page.locator("#cv-admin-list button.approve").count() == 1

        await eventually(pending_in_page, timeout=30)
        await axe_scan(page, "a community its admin sees")
        await page.click("#cv-admin-list button.approve")
        await page.wait_for_selector("#cv-admin-list li:has-text('joined')", timeout=30_000)
        await eventually(lambda: _joined(bob, address), timeout=30)
        said = f"{MARKER} to the admin"
        await cli("community", "post", "--profile", str(bob), address, said)

        async def read_it():
            await page.click("#cv-refresh")
            await page.wait_for_selector("#cv-refresh:not([disabled])")
            return said in await messages(page)

        await eventually(read_it, timeout=30)

        # the admin appoints the CLI member a moderator, then dismisses it (community act appoint|dismiss)
        async def bob_moderates(expected):
            view = await cli("community", "read", "--profile", str(bob), address)
            return [m["moderator"] for m in view["members"] if m["me"]] == [expected]

        await page.click("#cv-admin-list button.appoint")
        await page.wait_for_selector("#cv-admin-list button.dismiss", timeout=30_000)
        await eventually(lambda: bob_moderates(True), timeout=30)
        await page.click("#cv-admin-list button.dismiss")
        await page.wait_for_selector("#cv-admin-list button.appoint", timeout=30_000)
        await eventually(lambda: bob_moderates(False), timeout=30)

        # removed, the CLI member is told so and posts nothing more
        await page.click("#cv-admin-list button.remove")
        await page.wait_for_selector("#communities-status:has-text('Removed')", timeout=30_000)

        async def removed():
            _, error = await cli_refused("community", "read", "--profile", str(bob), address)
            return "left the community or was removed" in error

        await eventually(removed, timeout=30)
        await page.screenshot(path=ARTEFACTS / "community-admin-phone.png", full_page=True)
        assert watched.problems == []
        assert await watched.csp() == []


async def test_the_page_reports_to_moderators_keeps_a_queue_and_hides_what_a_moderator_hid(trio, tmp_path):
    """A browser on A is made a moderator by the CLI admin on C. A report made in the page
    reaches the admin's queue verified; the report the admin files reaches the page's queue;
    the page's hide reaches every member: the CLI reads it as hidden, the page shows it so."""
    _browser_or_skip()
    a, b, c = trio
    founder, bob = tmp_path / "founder", tmp_path / "bob"
    await cli("patient", "register", "--node", c.url, "--profile", str(founder), "--kdf", "min")
    await cli("patient", "register", "--node", b.url, "--profile", str(bob), "--kdf", "min")
    address = (await cli("community", "create", "--profile", str(founder), "Diabetes"))["address"]
    await cli("community", "join", "--profile", str(bob), address)
    await eventually(lambda: _joined(bob, address), timeout=20)

    async with opened_page(a.url + "/") as (page, watched):
        await register_in_page(page)
        await page.wait_for_selector("body[data-communities=ready]")
        await page.select_option("#c-host", c.node_id)
        await page.click("#c-browse")
        await page.wait_for_selector(f"#directory li[data-address='{address}']", timeout=30_000)
        await page.click(f"#directory li[data-address='{address}'] button.join")
        await page.wait_for_selector("body[data-joined='1']", timeout=30_000)
        await eventually(lambda: _cli_sees_member(founder, address, 3), timeout=20)
        view = await cli("community", "read", "--profile", str(founder), address)
        browser_key = next(m["member"] for m in view["members"] if m["node"] == a.node_id)
        await cli("community", "act", "--profile", str(founder), address, "appoint", browser_key, "--reason", "moderator")
        bad = "selling my spare oxycodone, DM me"
        await eventually(lambda: _cli_sees_member(bob, address, 3), timeout=20)
        await cli("community", "post", "--profile", str(bob), address, bad, "--send-anyway")

        async def shown(text):
            await page.click(f"#my-communities li[data-address='{address}'] button.open")
            await page.wait_for_selector("#community-view:not([hidden])", timeout=30_000)
            await page.wait_for_selector("#cv-refresh:not([disabled])")
            return text in await messages(page)

        await eventually(lambda: shown(bad), timeout=30)
        assert await page.is_visible("#cv-queue")  # the page is a moderator now
        seq = int(await page.get_attribute(f"#cv-messages li:has-text('{bad}')", "data-seq"))
        # the page reports it to the moderators; the admin's CLI queue has it, verified
        await page.select_option("#report-category", "drug_sourcing")
        await page.click(f"#cv-messages li[data-seq='{seq}'] button.report-mods")

        async def admin_queue():
            doc = await cli("community", "reports", "--profile", str(founder), address)
            return [(r["status"], r["seq"], r["category"], r["text"]) for r in doc["reports"]]

        await eventually(lambda: admin_queue(), timeout=30)
        assert await admin_queue() == [("verified", seq, "drug_sourcing", bad)]
        # a report the CLI files reaches the page's queue, verified; the page hides the message
        await cli("community", "report", "--profile", str(founder), address, str(seq), "--category", "spam")

        async def in_queue():
            await page.click("#cv-refresh")
            await page.wait_for_selector("#cv-refresh:not([disabled])")
            return await page.locator("#cv-queue-list li[data-status=verified]").count() == 2

        await eventually(in_queue, timeout=30)
        assert bad in await page.text_content("#cv-queue-list")
        await axe_scan(page, "the moderator queue")
        await page.locator("#cv-queue-list li button.hide").first.click()

        async def hidden_for_bob():
            doc = await cli("community", "read", "--profile", str(bob), address)
            return [h["seq"] for h in doc["hidden"]] == [seq] and bad not in [m["text"] for m in doc["messages"]]

        await eventually(hidden_for_bob, timeout=30)
        await eventually(lambda: _hidden_in_page(page, seq), timeout=30)
        assert bad not in await messages(page)
        assert "Hidden by a moderator: drug_sourcing" in await messages(page)
        await page.screenshot(path=ARTEFACTS / "community-moderation.png", full_page=True)
        assert await watched.csp() == []


async def _hidden_in_page(page, seq: int) -> bool:
    await page.click("#cv-refresh")
    await page.wait_for_selector("#cv-refresh:not([disabled])")
    return await page.locator(f"#cv-messages li.hidden-msg[data-seq='{seq}']").count() == 1


async def test_a_moderator_in_the_page_forwards_a_verified_report_to_the_senders_home_node(trio, tmp_path):
    """A browser on A, a moderator of a community hosted on C, forwards the verified report of
    a message the CLI patient on B posted: sealed in the page to B's key from B's own key
    document, B keeps it, and `rxfed node reports` on B lists the sender's pseudonym, the
    category and the text, and nothing that names the reporter (the admin on C)."""
    _browser_or_skip()
    a, b, c = trio
    founder, bob = tmp_path / "founder", tmp_path / "bob"
    await cli("patient", "register", "--node", c.url, "--profile", str(founder), "--kdf", "min")
    await cli("patient", "register", "--node", b.url, "--profile", str(bob), "--kdf", "min")
    address = (await cli("community", "create", "--profile", str(founder), "Chronic pain"))["address"]
    await cli("community", "join", "--profile", str(bob), address)
    await eventually(lambda: _joined(bob, address), timeout=20)

    async with opened_page(a.url + "/") as (page, watched):
        await register_in_page(page)
        await page.wait_for_selector("body[data-communities=ready]")
        await page.select_option("#c-host", c.node_id)
        await page.click("#c-browse")
        await page.wait_for_selector(f"#directory li[data-address='{address}']", timeout=30_000)
        await page.click(f"#directory li[data-address='{address}'] button.join")
        await page.wait_for_selector("body[data-joined='1']", timeout=30_000)
        await eventually(lambda: _cli_sees_member(founder, address, 3), timeout=20)
        view = await cli("community", "read", "--profile", str(founder), address)
        browser_key = next(m["member"] for m in view["members"] if m["node"] == a.node_id)
        bob_key = next(m["member"] for m in view["members"] if m["node"] == b.node_id)
        founder_key = next(m["member"] for m in view["members"] if m["node"] == c.node_id)
        await cli("community", "act", "--profile", str(founder), address, "appoint", browser_key, "--reason", "moderator")
        bad = "I sell tramadol, no prescription needed"
        await eventually(lambda: _cli_sees_member(bob, address, 3), timeout=20)
        await cli("community", "post", "--profile", str(bob), address, bad, "--send-anyway")
        seq = None

        async def seen():
            nonlocal seq
            doc = await cli("community", "read", "--profile", str(founder), address)
            seq = next((m["seq"] for m in doc["messages"] if m["text"] == bad), None)
            return seq is not None

        await eventually(seen, timeout=30)
        await cli("community", "report", "--profile", str(founder), address, str(seq), "--category", "drug_sourcing")

        async def in_queue():
            await page.click(f"#my-communities li[data-address='{address}'] button.open")
            await page.wait_for_selector("#community-view:not([hidden])", timeout=30_000)
            await page.wait_for_selector("#cv-refresh:not([disabled])")
            return await page.locator("#cv-queue-list li[data-status=verified]").count() == 1

        await eventually(in_queue, timeout=30)
        await page.locator("#cv-queue-list li button.forward").click()
        await page.wait_for_selector("body[data-forwarded='1']", timeout=30_000)
        assert b.node_id in await page.text_content("#communities-status")

        async def kept():
            doc = await cli("node", "reports", str(tmp_path / "b"))
            return doc["reports"]

        await eventually(kept, timeout=30)
        [row] = await kept()
        assert (row["seq"], row["sender"], row["category"], row["text"]) == (seq, bob_key, "drug_sourcing", bad)
        # the reporter (the admin on C) is named nowhere; the page's node A forwarded it
        assert founder_key not in json.dumps(row)
        assert (row["from"], row["moderator"]) == (a.node_id, browser_key)

        # a moderator who is not the admin bans a member by pseudonym, as `community act ban MEMBER` does
        assert await page.text_content("#cv-admin-h") == "Members (you are a moderator)"
        assert await page.locator(f"#cv-admin-list li[data-member='{founder_key}'] button").count() == 0  # the admin
        await page.select_option("#report-category", "drug_sourcing")
        await page.click(f"#cv-admin-list li[data-member='{bob_key}'] button.mod-ban")
        await page.wait_for_selector("#communities-status:has-text('Ban')", timeout=30_000)

        async def banned():
            view = await cli("community", "read", "--profile", str(founder), address)
            return [m["banned"] for m in view["members"] if m["member"] == bob_key] == [True]

        await eventually(banned, timeout=30)

        # B's keys swapped with no rotation its pinned key signed: the page refuses to seal to
        # the key it never trusted for B, and B keeps nothing more
        import time

        from rxfed.node.config import NodeSigningKey, save_node_keys

        save_node_keys(tmp_path / "b", [NodeSigningKey(SigningKeyPair.generate(), int(time.time()) - 60, None)])
        b.state.reload_keys()
        await page.locator("#cv-queue-list li button.forward").click()
        await page.wait_for_selector("#communities-error:has-text('never trusted')", timeout=30_000)
        assert await page.get_attribute("body", "data-forwarded") == "1"
        assert len(await kept()) == 1
        assert await watched.csp() == []
