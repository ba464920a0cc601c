"""Condition communities across a federation of three real nodes on loopback."""

from __future__ import annotations

import asyncio
import time

import pytest

from conftest import MARKER
from rxfed.client.community import Communities
from rxfed.client.sdk import NodeRefused
from rxfed.protocol import community as pc
from rxfed.testing import start_federation


async def eventually(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = await check()
            if result:
                return result
        except (NodeRefused, AssertionError):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


@pytest.fixture
async def fed(tmp_path):
    nodes = await start_federation(tmp_path, "hospital-a", "hospital-b", "community-c")
    yield nodes
    for n in nodes:
        await n.stop()


async def texts(communities: Communities, address: str) -> list[str]:
    return [m.text for m in (await communities.read(address)).messages]


async def test_patients_on_two_nodes_talk_in_a_community_hosted_on_a_third(fed, make_patient):
    a, b, c = fed
    host_patient = await make_patient(c)
    alice, bob = await make_patient(a), await make_patient(b)
    host, ca, cb = Communities(host_patient), Communities(alice), Communities(bob)
    address = await host.create("Epilepsy support", condition="G40")
    assert address.endswith("@" + c.node_id)
    listed = await Communities.directory(c.url)
    assert [x["address"] for x in listed] == [address] and listed[0]["condition"] == "G40"

    await ca.join(address)
    await cb.join(address)

    async def both_joined():
        state = (await host.read(address)).state
        return len(state.joined()) == 3

    await eventually(both_joined)
    await eventually(lambda: ca.read(address))  # the mirror on A has the history
    await eventually(lambda: _seq_at_least(cb, address, 3))
    await ca.post(address, f"hello from A {MARKER}")
    await eventually(lambda: _has(cb, address, f"hello from A {MARKER}"))
    await cb.post(address, "hi A, B here")
    await eventually(lambda: _has(ca, address, "hi A, B here"))
    await host.post(address, "welcome both")
    await eventually(lambda: _has(ca, address, "welcome both"))
    await eventually(lambda: _has(cb, address, "welcome both"))
    view = await cb.read(address)
    assert [m.text for m in view.messages] == [f"hello from A {MARKER}", "hi A, B here", "welcome both"]
    assert all(m.verified for m in view.messages)

    # No node holds plaintext: the marker is nowhere in any node's files.
    for node in fed:
        await node.stop()
    for node in fed:
        for path in node.data_dir.rglob("*"):
            if path.is_file():
                assert MARKER.encode() not in path.read_bytes(), path
    for node in fed:
        await node.start()


async def community_with_member(make_patient, host, home, name: str):
    """An admin on ``host`` with a community, and a member on ``home`` who joined and whose
    node has caught up: the setup most tests here start from."""
    admin = Communities(await make_patient(host))
    address = await admin.create(name)
    member = Communities(await make_patient(home))
    await member.join(address)
    await eventually(lambda: _joined(admin, address, 2))
    await eventually(lambda: _seq_at_least(member, address, 2))
    return admin, member, address


async def _seq_at_least(communities: Communities, address: str, n: int) -> bool:
    view = await communities.read(address)
    return view.state is not None and view.state.seq >= n


async def _has(communities: Communities, address: str, text: str) -> bool:
    return text in await texts(communities, address)


async def test_leaver_cannot_read_later_messages_and_newcomer_no_history(fed, make_patient):
    a, b, c = fed
    admin, alice, address = await community_with_member(make_patient, c, a, "Diabetes type 2")
    await admin.post(address, "before leaving")
    await eventually(lambda: _has(alice, address, "before leaving"))
    membership = await alice.membership(address)
    await alice.leave(address)
    await eventually(lambda: _joined(admin, address, 1))
    await admin.post(address, "after alice left")
    # Even handed every event by a node, the departed member's keys open nothing new.
    events, _ = await admin.events(pc.CommunityAddress.parse(address))
    texts_for_alice = [m.text for m in pc.read_messages(events, membership.member, membership.box)]
    assert texts_for_alice == ["before leaving"]
    # A newcomer reads what comes after joining, not before.
    bob = Communities(await make_patient(b))
    await bob.join(address)
    await eventually(lambda: _joined(admin, address, 2))
    await eventually(lambda: _seq_at_least(bob, address, 1))
    await admin.post(address, "welcome bob")
    await eventually(lambda: _has(bob, address, "welcome bob"))
    assert await texts(bob, address) == ["welcome bob"]


async def _joined(communities: Communities, address: str, n: int) -> bool:
    view = await communities.read(address)
    return view.state is not None and len(view.state.joined()) == n


async def test_approval_community_needs_admin(fed, make_patient):
    a, b, c = fed
    admin = Communities(await make_patient(c))
    address = await admin.create("Rare disease", approval=True)
    alice = Communities(await make_patient(a))
    await alice.join(address)

    async def pending():
        state = (await admin.read(address)).state
        return [m for m in state.members.values() if m.status is pc.MemberStatus.PENDING]

    waiting = await eventually(pending)
    await eventually(lambda: _seq_at_least(alice, address, 2))
    with pytest.raises(Exception):
        await alice.post(address, "can I post yet?")
    await admin.approve(address, waiting[0].member_b64)
    await eventually(lambda: _joined(alice, address, 2))
    await alice.post(address, "approved, thanks")
    await eventually(lambda: _has(admin, address, "approved, thanks"))


async def test_host_refuses_forged_and_misrouted_events(fed, make_patient):
    a, b, c = fed
    admin_client = await make_patient(c)
    admin = Communities(admin_client)
    address = await admin.create("Open group")
    intruder = await make_patient(c)
    target = pc.CommunityAddress.parse(address)
    from rxfed.crypto import BoxKeyPair, SigningKeyPair

    # a join claiming another home node is refused: members join through their own node
    key, box = SigningKeyPair.generate(), BoxKeyPair.generate()
    event = pc.make_join(key, box.public, target, a.node_id, int(time.time()))
    with pytest.raises(NodeRefused) as info:
        await intruder._call("POST", "/v1/communities/events", {"community": address, "event": event})
    assert info.value.status == 403
    # a message signed by a non-member is refused
    from rxfed.crypto.groups import SenderKey

    msg, _ = pc.make_message(key, SenderKey.generate(1), target, "spam", int(time.time()))
    with pytest.raises(NodeRefused) as info:
        await intruder._call("POST", "/v1/communities/events", {"community": address, "event": msg})
    assert info.value.status in (403, 409)
    # tampering with a signed event breaks its signature
    event = pc.make_join(key, box.public, target, c.node_id, int(time.time()))
    event["body"]["time"] += 1
    with pytest.raises(NodeRefused) as info:
        await intruder._call("POST", "/v1/communities/events", {"community": address, "event": event})
    assert info.value.status == 403
    state = (await admin.read(address)).state
    assert state.seq == 1


async def test_remote_member_survives_host_outage(fed, make_patient):
    """The host is down while a member posts: the post waits in the home node's outbox and
    arrives exactly once when the host is back."""
    a, b, c = fed
    admin, alice, address = await community_with_member(make_patient, c, a, "Migraine")
    await c.stop()
    result = await alice.post(address, "posted while the host was down")
    assert result["queued"] is True
    await asyncio.sleep(0.3)
    await c.start()
    await eventually(lambda: _has(admin, address, "posted while the host was down"))
    await asyncio.sleep(0.3)
    assert await texts(admin, address) == ["posted while the host was down"]


async def test_removed_member_cannot_decrypt_later_messages(fed, make_patient):
    a, b, c = fed
    admin, troll, address = await community_with_member(make_patient, c, b, "Moderated")
    await admin.post(address, "before removal")
    await eventually(lambda: _has(troll, address, "before removal"))
    membership = await troll.membership(address)
    await admin.remove(address, membership.pseudonym)
    await admin.post(address, "after removal")
    events, _ = await admin.events(pc.CommunityAddress.parse(address))
    assert [m.text for m in pc.read_messages(events, membership.member, membership.box)] == ["before removal"]
    with pytest.raises(Exception):  # a removed member cannot post either
        await troll.post(address, "still here?")


@pytest.mark.parametrize("body", [
    b"{", b"[]", b'{"community": "nope", "event": {}}', b'{"community": "' + b"0" * 32 + b'@x.example"}',
    b'{"community": "' + b"0" * 32 + b'@x.example", "event": {"body": {}, "sig": "AA"}}',
])
async def test_bad_community_submissions_change_nothing(fed, make_patient, body):
    from helpers import signed

    a, b, c = fed
    admin_client = await make_patient(c)
    admin = Communities(admin_client)
    address = await admin.create("Stable")
    before = (await admin.read(address)).state.seq
    status, doc = await signed(admin_client, "POST", "/v1/communities/events", body)
    assert 400 <= status < 500 and set(doc) == {"error", "message"}, doc
    assert (await admin.read(address)).state.seq == before
    status, doc = await signed(admin_client, "GET", "/v1/communities/" + "f" * 32 + "/events")
    assert status == 404


async def test_franking_report_from_a_real_host(fed, make_patient):
    """A recipient proves to a moderator what a member sent, with the host's stamp, and a
    doctored report fails; the host never read the message."""
    a, b, c = fed
    admin = Communities(await make_patient(c))
    address = await admin.create("Reports")
    alice, bob = Communities(await make_patient(a)), Communities(await make_patient(b))
    await alice.join(address)
    await bob.join(address)
    await eventually(lambda: _joined(admin, address, 3))
    await eventually(lambda: _joined(alice, address, 3))
    await alice.post(address, "stop taking your insulin, it is poison")
    await eventually(lambda: _has(bob, address, "stop taking your insulin, it is poison"))
    seq = next(m.seq for m in (await bob.read(address)).messages)
    report = await bob.report(address, seq)
    host_keys = [k.key.public for k in c.state.keys]
    assert pc.verify_franking_report(report, host_keys)
    opened = pc.open_franking_report(report, host_keys)
    assert opened.text == "stop taking your insulin, it is poison"
    assert opened.sender == (await alice.membership(address)).member.public
    doctored = {**report, "text": "something else"}
    assert not pc.verify_franking_report(doctored, host_keys)
    from rxfed.crypto import SigningKeyPair

    assert not pc.verify_franking_report(report, [SigningKeyPair.generate().public])


async def test_a_peer_cannot_write_into_a_community_it_does_not_host(fed, make_patient):
    """Node B stamps events for the id of a community hosted on C under its own name: C
    refuses them and its community is untouched."""
    from rxfed.crypto import BoxKeyPair, SigningKeyPair
    from rxfed.protocol.auth import sign_request
    from rxfed.protocol.canonical import canonical
    from rxfed.protocol.federation import WireEvent
    from helpers import raw_request

    a, b, c = fed
    admin = Communities(await make_patient(c))
    address = await admin.create("Genuine")
    target = pc.CommunityAddress.parse(address)
    forged_address = pc.CommunityAddress(target.id, b.node_id)
    key, box = SigningKeyPair.generate(), BoxKeyPair.generate()
    now = int(time.time())
    event = pc.make_create(key, box.public, forged_address, name="PWNED", condition=None, approval=True,
                           node=b.node_id, now=now)
    stamp = pc.stamp(b.state.signing_key(), forged_address, 1, event, now)
    wire = WireEvent("community.event", {"community": str(forged_address), "seq": 1, "event": event, "stamp": stamp})
    body = canonical({"origin": b.node_id, "destination": c.node_id, "seq": 1, "events": [wire.to_json()]})
    path = "/federation/v1/transactions/txn-forged-aaaaaaaaaaa"
    headers = sign_request(b.state.signing_key(), method="PUT", target=path, destination=c.node_id,
                           origin=b.node_id, body=body, now=now)
    status, reply = await raw_request(c.url, "PUT", path, body, {**headers, "Content-Type": "application/json"})
    assert status == 200 and reply["results"][0]["ok"] is False and reply["results"][0]["error"] == "not_host"
    row = await c.app_store().community(target.id)
    assert (row.name, row.host, row.seq) == ("Genuine", c.node_id, 1)
    await admin.post(address, "still works")  # the community goes on


async def test_revoked_device_is_refused_by_community_endpoints(fed, make_patient, tmp_path):
    from conftest import PASSPHRASE
    from helpers import signed
    from rxfed.client import PatientClient

    a, b, c = fed
    old = await make_patient(c)
    address = await Communities(old).create("Devices")
    new = await PatientClient.recover(c.url, tmp_path / "new-device", old.recovery_code, PASSPHRASE, kdf="min")
    async with new:
        # recovering revoked the old device
        target = pc.CommunityAddress.parse(address)
        status, doc = await signed(old, "GET", f"/v1/communities/{target.id}/events")
        assert status == 401 and doc["error"] == "revoked_device"
        from rxfed.crypto import BoxKeyPair, SigningKeyPair

        join = pc.make_join(SigningKeyPair.generate(), BoxKeyPair.generate().public, target, c.node_id,
                            int(time.time()))
        status, doc = await signed(old, "POST", "/v1/communities/events", {"community": address, "event": join})
        assert status == 401 and doc["error"] == "revoked_device"
        status, doc = await signed(new, "GET", f"/v1/communities/{target.id}/events?after=99999999999999999999")
        assert status == 400
        status, doc = await signed(new, "GET", f"/v1/communities/{target.id}/events?after=-1")
        assert status == 400
        assert (await Communities(new).read(address)).state.seq == 1


async def test_event_with_a_non_string_type_is_a_clean_400(fed, make_patient):
    from helpers import signed

    a, b, c = fed
    client = await make_patient(c)
    address = await Communities(client).create("Types")
    for junk in ({"body": {"type": []}, "sig": "A" * 86}, {"body": {"type": {}}}, {"body": []}):
        status, doc = await signed(client, "POST", "/v1/communities/events", {"community": address, "event": junk})
        assert status == 400, (junk, doc)
