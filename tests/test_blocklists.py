"""Operators' block lists (spec/moderation.md, "Operators"): instance blocks with Mastodon's
severities, imported and exported as Mastodon's domain-block CSV, and hashed ban lists of
pseudonyms (MSC4205's idea) that name nobody and are enforced on join and post."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rxfed.client.community import PatientCommunities
from rxfed.client.sdk import NodeRefused
from rxfed.errors import BadRequest
from rxfed.protocol import blocklists as pbl
from rxfed.protocol import community as pc
from rxfed.protocol.federation import WireEvent

#: As Mastodon 4.x's /admin/export_domain_blocks writes it.
MASTODON = """#domain,#severity,#reject_media,#reject_reports,#public_comment,#obfuscate
bad.example,suspend,true,true,"Spam, harassment",false
limited.example.org,silence,false,false,,true
media.example,noop,true,false,Large files,false
"""


def rxfed(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rxfed", *args], capture_output=True, text=True, timeout=60,
                          input=input, stdin=None if input is not None else subprocess.DEVNULL)


def test_mastodon_csv_round_trip():
    blocks = pbl.parse_csv(MASTODON.encode())
    assert [(b.domain, b.severity, b.reject_media, b.reject_reports, b.public_comment, b.obfuscate) for b in blocks] == [
        ("bad.example", "suspend", True, True, "Spam, harassment", False),
        ("limited.example.org", "silence", False, False, "", True),
        ("media.example", "noop", True, False, "Large files", False)]
    assert pbl.to_csv(blocks) == MASTODON
    # Without the '#', in another column order, with a BOM and CRLF line ends: the same blocks.
    other = "\ufeffdomain,severity,public_comment\r\nBAD.example,Suspend,x\r\n"
    assert pbl.parse_csv(other.encode())[0].domain == "bad.example"


@pytest.mark.parametrize("text, code", [
    ("", "bad_header"),
    ("domain,severity\n", None),  # a header alone: nothing to import, not an error
    ("#domain,#flavour\nx.example,silence\n", "bad_header"),
    (MASTODON + "evil.example,nuke,false,false,,false\n", "bad_row"),
    (MASTODON + "Not A Domain!,silence,false,false,,false\n", "bad_row"),
    (MASTODON + "x.example,silence,maybe,false,,false\n", "bad_row"),
    (MASTODON + "x.example,silence,false\n", "bad_row"),
    (MASTODON + "bad.example,silence,false,false,,false\n", "bad_row"),
    ('#domain,#severity\n"x.example,silence\n', "bad_csv"),
])
def test_bad_csv_is_refused_whole(text, code):
    if code is None:
        assert pbl.parse_csv(text) == []
        return
    with pytest.raises(BadRequest) as info:
        pbl.parse_csv(text.encode())
    assert info.value.code in (code, "bad_csv")


def test_a_block_covers_subdomains_and_ports():
    assert pbl.candidates("a.b.example.org:8443") == ["a.b.example.org:8443", "a.b.example.org", "b.example.org",
                                                      "example.org", "org"]
    assert pbl.candidates("[::1]:8470") == ["[::1]:8470", "[::1]"]
    assert pbl.candidates("10.0.0.1") == ["10.0.0.1"]


def test_a_block_covers_the_host_written_with_a_trailing_dot():
    """``evil.example.`` is the same host as ``evil.example`` (the absolute form of the
    name, which DNS and TLS accept) and a valid federation node id: a suspended node
    renaming itself so must still be covered by its block, and so must its subdomains."""
    assert "evil.example" in pbl.candidates("evil.example.")
    assert pbl.candidates("a.evil.example.:8443")[:3] == ["a.evil.example:8443", "a.evil.example", "evil.example"]
    assert "example" in pbl.candidates("evil.example..")
    assert pbl.candidates("10.0.0.1.") == ["10.0.0.1"]


def test_cli_import_export_and_peers_show_the_severity(tmp_path):
    data = tmp_path / "node"
    assert rxfed("node", "init", str(data), "--name", "blocks", "--port", "18997").returncode == 0
    assert rxfed("node", "peers", str(data), "allow", "x.limited.example.org").returncode == 0
    bad = tmp_path / "bad.csv"
    bad.write_text(MASTODON + "evil.example,nuke,false,false,,false\n")
    refused = rxfed("node", "peers", str(data), "import", str(bad))
    assert refused.returncode == 2 and "line 5" in refused.stderr and "severity" in refused.stderr
    assert json.loads(rxfed("node", "peers", str(data), "list", "--json").stdout)["domain_blocks"] == []  # nothing
    good = tmp_path / "good.csv"
    good.write_text(MASTODON)
    done = rxfed("node", "peers", str(data), "import", str(good), "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["imported"] == 3
    doc = json.loads(rxfed("node", "peers", str(data), "list", "--json").stdout)
    [peer] = doc["peers"]
    assert (peer["node_id"], peer["block"], peer["blocked_by"]) == ("x.limited.example.org", "silence",
                                                                     ["limited.example.org"])
    assert [b["domain"] for b in doc["domain_blocks"]] == ["bad.example", "limited.example.org", "media.example"]
    assert "SILENCE (block of limited.example.org)" in rxfed("node", "peers", str(data), "list").stdout
    exported = rxfed("node", "peers", str(data), "export")
    assert exported.returncode == 0 and exported.stdout == MASTODON
    assert rxfed("node", "peers", str(data), "suspend", "limited.example.org", "--comment", "worse").returncode == 0
    assert json.loads(rxfed("node", "peers", str(data), "list", "--json").stdout)["peers"][0]["block"] == "suspend"
    assert rxfed("node", "peers", str(data), "unblock", "limited.example.org").returncode == 0
    assert rxfed("node", "peers", str(data), "unblock", "limited.example.org").returncode == 1
    assert json.loads(rxfed("node", "peers", str(data), "list", "--json").stdout)["peers"][0]["block"] is None
    assert rxfed("node", "peers", str(data), "silence", "x.example", "--fingerprint", "SHA256:x").returncode == 2
    assert rxfed("node", "peers", str(data), "allow", "y.example", "--comment", "hi").returncode == 2
    assert rxfed("node", "peers", str(data), "silence", "Not A Domain").returncode == 2
    out = tmp_path / "out.csv"
    assert rxfed("node", "peers", str(data), "export", str(out)).returncode == 0
    assert pbl.parse_csv(out.read_bytes()) == [b for b in pbl.parse_csv(MASTODON) if b.domain != "limited.example.org"]
    assert rxfed("node", "peers", str(data), "export", str(out)).returncode == 1  # never overwrites


def test_cli_ban_list_holds_no_pseudonym(tmp_path):
    data, other = tmp_path / "node", tmp_path / "other"
    for d, port in ((data, "18996"), (other, "18995")):
        assert rxfed("node", "init", str(d), "--name", "bans", "--port", port).returncode == 0
    pseudonym = "Q" * 42 + "A"
    assert rxfed("node", "bans", str(data), "add", pseudonym).returncode == 2  # --reason needed
    assert rxfed("node", "bans", str(data), "add", "not-a-key", "--reason", "spam").returncode == 2
    added = rxfed("node", "bans", str(data), "add", pseudonym, "--reason", "spam", "--json")
    assert added.returncode == 0 and json.loads(added.stdout)["hashes"]["sha256"] == pbl.ban_hash(pseudonym)
    listed = tmp_path / "bans.json"
    assert rxfed("node", "bans", str(data), "export", str(listed)).returncode == 0
    assert pseudonym not in listed.read_text() and pbl.ban_hash(pseudonym) in listed.read_text()
    # Neither the store nor the operator log holds it in the clear.
    assert pseudonym.encode() not in (data / "rxfed.db").read_bytes()
    assert pseudonym not in rxfed("node", "log", str(data), "--json").stdout
    assert rxfed("node", "bans", str(other), "import", str(listed)).returncode == 0
    assert [b["hashes"]["sha256"] for b in json.loads(rxfed("node", "bans", str(other), "list", "--json").stdout)
            ["bans"]] == [pbl.ban_hash(pseudonym)]
    # A list that names a pseudonym in the clear, or is not a list, imports nothing.
    clear = tmp_path / "clear.json"
    clear.write_text(json.dumps({"type": "rxfed.ban-list", "version": 1, "entries": [
        {"hashes": {"sha256": pbl.ban_hash("B" * 42 + "A")}, "recommendation": "ban", "reason": "x",
         "pseudonym": "B" * 42 + "A"}]}))
    assert rxfed("node", "bans", str(other), "import", str(clear)).returncode == 2
    assert rxfed("node", "bans", str(other), "import", str(tmp_path / "missing.json")).returncode == 2
    assert len(json.loads(rxfed("node", "bans", str(other), "list", "--json").stdout)["bans"]) == 1
    assert rxfed("node", "bans", str(other), "remove", pseudonym).returncode == 0
    assert rxfed("node", "bans", str(other), "remove", pbl.ban_hash(pseudonym)).returncode == 1


# -- enforced by nodes -------------------------------------------------------------------------


async def _joined(communities: PatientCommunities, address: str, n: int) -> bool:
    view = await communities.read(address)
    return view.state is not None and len(view.state.joined()) >= n


@pytest.mark.usefixtures("rxfed_store_backend")
async def test_a_hashed_ban_stops_the_pseudonym_on_its_home_node_and_the_host(rxfed_federation, make_patient):
    from test_community_moderation import _eventually

    a, c = await rxfed_federation("node-a", "node-c")
    admin = PatientCommunities(await make_patient(c))
    address = await admin.create("Lupus")
    member = PatientCommunities(await make_patient(a))
    await member.join(address)
    await _eventually(lambda: _joined(member, address, 2))
    mine = await member.membership(address)
    await a.state.store.put_ban_entries([pbl.ban_entry(mine.pseudonym, "spam")], now=1)
    # Its home node relays nothing for it (leaving stays open)...
    with pytest.raises(NodeRefused) as info:
        await member.post(address, "buy my pills")
    assert info.value.code == "banned_pseudonym"
    # ...and a host with the shared list refuses it too, whichever node submits.
    await a.state.store.delete_ban_entry(pbl.ban_hash(mine.pseudonym))
    await c.state.store.put_ban_entries(pbl.parse_ban_list(pbl.to_ban_list([pbl.ban_entry(mine.pseudonym, "spam")])),
                                        now=1)
    hosted = await c.state.communities.hosted(pc.CommunityAddress.parse(address))
    event = pc.make_leave(mine.member, mine.address, int(c.state.now()))
    from rxfed.crypto.groups import SenderKey

    key = SenderKey.generate(hosted.state.next_epoch(mine.member.public))
    distribution = pc.make_sender_key(mine.member, hosted.state, key)
    results, _ = await c.state.communities.on_submit(a.node_id, [WireEvent("community.submit", {
        "community": address, "event": distribution})])
    assert (results[0].ok, results[0].error) == (False, "banned_pseudonym")
    results, _ = await c.state.communities.on_submit(a.node_id, [WireEvent("community.submit", {
        "community": address, "event": event})])
    assert results[0].ok  # a banned member may always leave


@pytest.mark.usefixtures("rxfed_store_backend")
async def test_silenced_and_suspended_nodes(rxfed_federation, make_patient):
    a, c = await rxfed_federation("node-a", "node-c")
    admin = PatientCommunities(await make_patient(c))
    address = await admin.create("Asthma")
    a_host = a.node_id.rsplit(":", 1)[0]
    await c.state.store.put_domain_blocks([pbl.domain_block(a_host, "silence")], now=1)
    # A member of a silenced node joins nothing hosted here; the node still talks to it.
    from rxfed.crypto import BoxKeyPair, SigningKeyPair

    join = pc.make_join(SigningKeyPair.generate(), BoxKeyPair.generate().public, pc.CommunityAddress.parse(address),
                        a.node_id, int(c.state.now()))
    results, _ = await c.state.communities.on_submit(a.node_id, [WireEvent("community.submit", {
        "community": address, "event": join})])
    assert (results[0].ok, results[0].error) == (False, "silenced")
    await c.state.federation.check_inbound(a.node_id)  # accepted
    # Suspended: no traffic either way, and its patients are told at once.
    await c.state.store.put_domain_blocks([pbl.domain_block(a_host, "suspend")], now=2)
    with pytest.raises(Exception) as info:
        await c.state.federation.check_inbound(a.node_id)
    assert getattr(info.value, "code", None) == "peer_refused"
    await a.state.store.put_domain_blocks([pbl.domain_block(c.node_id, "suspend")], now=2)
    member = PatientCommunities(await make_patient(a))
    with pytest.raises(NodeRefused) as refused:
        await member.join(address)
    assert "suspends" in refused.value.message
