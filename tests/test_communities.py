"""Condition communities across a federation of three real nodes on loopback."""

from __future__ import annotations

import asyncio
import time

import attrs
import pytest

from conftest import MARKER
from rxfed.client.community import PatientCommunities
from rxfed.client.sdk import NodeRefused
from rxfed.errors import RxfedError
from rxfed.protocol import community as pc
from rxfed.testing import start_federation


#: Every test here runs with its nodes on SQLite and again on PostgreSQL (RXFED_TEST_PG_DSN).
pytestmark = pytest.mark.usefixtures("rxfed_store_backend")


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


async def texts(communities: PatientCommunities, address: str) -> list[str]:
    return [m.text for m in (await communities.read(address)).messages]


async def test_patients_on_two_nodes_talk_in_a_community_hosted_on_a_third(fed, make_patient):
    a, b, c = fed
    host_patient = await make_patient(c)
    alice, bob = await make_patient(a), await make_patient(b)
    host, ca, cb = PatientCommunities(host_patient), PatientCommunities(alice), PatientCommunities(bob)
    address = await host.create("Epilepsy support", condition="G40")
    assert address.endswith("@" + c.node_id)
    listed = await PatientCommunities.directory(c.url)
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
    assert view.unreadable == ()

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
    admin = PatientCommunities(await make_patient(host))
    address = await admin.create(name)
    member = PatientCommunities(await make_patient(home))
    await member.join(address)
    await eventually(lambda: _joined(admin, address, 2))
    await eventually(lambda: _seq_at_least(member, address, 2))
    return admin, member, address


async def _seq_at_least(communities: PatientCommunities, address: str, n: int) -> bool:
    view = await communities.read(address)
    return view.state is not None and view.state.seq >= n


async def _has(communities: PatientCommunities, address: str, text: str) -> bool:
    return text in await texts(communities, address)


async def test_leaver_cannot_read_later_messages_and_newcomer_no_history(fed, make_patient):
    a, b, c = fed
    admin, alice, address = await community_with_member(make_patient, c, a, "Diabetes type 2")
    await admin.post(address, "before leaving")
    await eventually(lambda: _has(alice, address, "before leaving"))
    membership = await alice.membership(address)
    await alice.leave(address)
    await eventually(lambda: _joined(admin, address, 1))

    async def refused_to_the_leaver():
        from helpers import signed

        target = pc.CommunityAddress.parse(address)
        proof = pc.make_read_proof(membership.member, target, a.node_id, int(time.time()))
        status, doc = await signed(alice.client, "POST", "/v1/communities/read", {"community": address, "proof": proof})
        return (status, doc.get("error")) == (403, "not_a_member")  # a 200 first: her node still serves

    await eventually(refused_to_the_leaver)  # her node's copy no longer serves her old key
    await admin.post(address, "after alice left")
    # Even handed every event by a node, the departed member's keys open nothing new.
    events = (await admin.history(address)).events
    texts_for_alice = [m.text for m in pc.read_messages(events, membership.member, membership.box)]
    assert texts_for_alice == ["before leaving"]
    # A newcomer reads what comes after joining, not before.
    bob = PatientCommunities(await make_patient(b))
    await bob.join(address)
    await eventually(lambda: _joined(admin, address, 2))
    await eventually(lambda: _seq_at_least(bob, address, 1))
    await admin.post(address, "welcome bob")
    await eventually(lambda: _has(bob, address, "welcome bob"))
    assert await texts(bob, address) == ["welcome bob"]


async def _joined(communities: PatientCommunities, address: str, n: int) -> bool:
    view = await communities.read(address)
    return view.state is not None and len(view.state.joined()) == n


async def test_approval_community_needs_admin(fed, make_patient):
    a, b, c = fed
    admin = PatientCommunities(await make_patient(c))
    address = await admin.create("Rare disease", approval=True)
    alice = PatientCommunities(await make_patient(a))
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
    admin = PatientCommunities(admin_client)
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
    events = (await admin.history(address)).events
    assert [m.text for m in pc.read_messages(events, membership.member, membership.box)] == ["before removal"]

    async def removal_reached_the_trolls_node():
        try:
            state = (await troll.history(address, messages=False)).state
        except RxfedError:
            return True
        return state is not None and state.status(membership.member.public) is not pc.MemberStatus.JOINED

    await eventually(removal_reached_the_trolls_node)
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
    admin = PatientCommunities(admin_client)
    address = await admin.create("Stable")
    before = (await admin.read(address)).state.seq
    status, doc = await signed(admin_client, "POST", "/v1/communities/events", body)
    assert 400 <= status < 500 and set(doc) == {"error", "message"}, doc
    assert (await admin.read(address)).state.seq == before
    unknown = pc.CommunityAddress("f" * 32, c.node_id)
    mine = await admin.membership(address)
    proof = pc.make_read_proof(mine.member, unknown, c.node_id, int(time.time()))
    status, doc = await signed(admin_client, "POST", "/v1/communities/read", {"community": str(unknown), "proof": proof})
    assert status == 404 and doc["error"] == "unknown_community"


async def test_franking_report_from_a_real_host(fed, make_patient):
    """A recipient proves to a moderator what a member sent, with the host's stamp, and a
    doctored report fails; the host never read the message."""
    a, b, c = fed
    admin = PatientCommunities(await make_patient(c))
    address = await admin.create("Reports")
    alice, bob = PatientCommunities(await make_patient(a)), PatientCommunities(await make_patient(b))
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
    """Node B stamps a create event for the id of a community hosted on C under its own
    name: C refuses it and its community is untouched."""
    from rxfed.crypto import BoxKeyPair, SigningKeyPair, b64e
    from rxfed.protocol.auth import sign_request
    from rxfed.protocol.canonical import canonical
    from rxfed.protocol.federation import WireEvent
    from rxfed.protocol.statements import sign_statement
    from helpers import raw_request

    a, b, c = fed
    admin = PatientCommunities(await make_patient(c))
    address = await admin.create("Genuine")
    target = pc.CommunityAddress.parse(address)
    forged_address = pc.CommunityAddress(target.id, b.node_id)
    key, box = SigningKeyPair.generate(), BoxKeyPair.generate()
    now = int(time.time())
    real = (await admin.history(address)).events[0][1]
    event = sign_statement(key, dict(real["body"], community=str(forged_address), admin=b64e(key.public),
                                     admin_box=b64e(box.public), node=b.node_id))
    stamp = _forged_stamp(b.state.signing_key(), str(forged_address), 1, event, key.public)
    wire = WireEvent("community.event", {"community": str(forged_address), "seq": 1, "event": event, "stamp": stamp})
    body = canonical({"origin": b.node_id, "destination": c.node_id, "seq": 1, "events": [wire.to_json()]})
    path = "/federation/v1/transactions/txn-forged-aaaaaaaaaaa"
    headers = sign_request(b.state.signing_key(), method="PUT", target=path, destination=c.node_id,
                           origin=b.node_id, body=body, now=now)
    status, reply = await raw_request(c.url, "PUT", path, body, {**headers, "Content-Type": "application/json"})
    # No create event of B's certifies that id: refused, and C's community is untouched.
    assert status == 200 and reply["results"][0]["ok"] is False
    assert reply["results"][0]["error"] == "bad_community_id"
    row = await c.app_store().community(target.id, c.node_id)
    assert (row.name, row.host, row.seq) == ("Genuine", c.node_id, 1)
    assert await c.app_store().community(target.id, b.node_id) is None
    await admin.post(address, "still works")  # the community goes on


async def test_revoked_device_is_refused_by_community_endpoints(fed, make_patient, tmp_path):
    from conftest import PASSPHRASE
    from helpers import signed
    from rxfed.client import PatientClient
    from rxfed.protocol.canonical import canonical

    a, b, c = fed
    old = await make_patient(c)
    address = await PatientCommunities(old).create("Devices")
    new = await PatientClient.recover(c.url, tmp_path / "new-device", old.recovery_code, PASSPHRASE, kdf="min")
    async with new:
        # recovering revoked the old device
        target = pc.CommunityAddress.parse(address)
        mine = await PatientCommunities(new).membership(address)
        proof = pc.make_read_proof(mine.member, target, c.node_id, int(time.time()))
        status, doc = await signed(old, "POST", "/v1/communities/read", {"community": address, "proof": proof})
        assert status == 401 and doc["error"] == "revoked_device"
        from rxfed.crypto import BoxKeyPair, SigningKeyPair

        join = pc.make_join(SigningKeyPair.generate(), BoxKeyPair.generate().public, target, c.node_id,
                            int(time.time()))
        status, doc = await signed(old, "POST", "/v1/communities/events", {"community": address, "event": join})
        assert status == 401 and doc["error"] == "revoked_device"
        for after in (-1, "1", None):
            body = canonical({"community": address, "proof": proof, "after": after})
            if after is None:
                body = body.replace(b'"after":null', b'"after":99999999999999999999')
            status, doc = await signed(new, "POST", "/v1/communities/read", body)
            assert status == 400, doc
        assert (await PatientCommunities(new).read(address)).state.seq == 2  # the create, and the recovery's rekey


async def test_event_with_a_non_string_type_is_a_clean_400(fed, make_patient):
    from helpers import signed

    a, b, c = fed
    client = await make_patient(c)
    address = await PatientCommunities(client).create("Types")
    for junk in ({"body": {"type": []}, "sig": "A" * 86}, {"body": {"type": {}}}, {"body": []}):
        status, doc = await signed(client, "POST", "/v1/communities/events", {"community": address, "event": junk})
        assert status == 400, (junk, doc)


# -- attacks by a member's home node (not the host) ------------------------------------------


def _mirror_rows(node, community_id: str) -> list[tuple[int, dict, dict]]:
    """What ``node`` mirrors of a community, read from its database."""
    import json
    import sqlite3

    db = sqlite3.connect(f"file:{node.data_dir / 'rxfed.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT seq, event, stamp FROM community_events WHERE community_id=? ORDER BY seq",
                          (community_id,)).fetchall()
    finally:
        db.close()
    return [(seq, json.loads(event), json.loads(stamp)) for seq, event, stamp in rows]


def _forged_stamp(key, address: str, seq: int, event: dict, signer: bytes) -> dict:
    from rxfed.crypto import b64e
    from rxfed.protocol.statements import sign_statement, statement_hash

    return sign_statement(key, {"type": "rxfed.host-stamp", "community": address, "seq": seq,
                                "event": b64e(statement_hash(event)), "sender": b64e(signer),
                                "commitment": None, "time": int(time.time())})


def _serve_as_mirror(node, host, rows: list[tuple[int, dict, dict]], host_keys: str) -> None:
    """Make ``node`` serve ``rows`` as its copy of the community, and name the host's keys as
    it likes: the host's keys and its own beside them (``"own"``), or none (``"none"``)."""
    from rxfed.errors import Unavailable
    from rxfed.protocol.canonical import canonical
    from rxfed.protocol.federation import NodeDocument, NodeKey
    from rxfed.store import CommunityEvent

    served = [CommunityEvent(seq, canonical(event), canonical(stamp)) for seq, event, stamp in rows]

    async def community_events(*args, after=0, limit=1000, **kwargs):
        return [e for e in served if e.seq > after][:limit]

    keys = [NodeKey(k.key.public, 0, None) for k in host.state.keys] + [NodeKey(node.state.signing_key().public, 0, None)]
    own = NodeDocument(host.node_id, "", ("1",), tuple(keys))

    async def document(*args, **kwargs):
        if host_keys == "none":
            raise Unavailable("no key document")
        return own

    node.state.store.community_events = community_events
    node.state.federation.document = document


def _spy_on_requests(client) -> list[bytes]:
    """Every request body ``client`` sends from now on."""
    sent: list[bytes] = []
    original = client._call_raw

    async def spy(method, path, raw, **kwargs):
        sent.append(path.encode() + b" " + raw)
        return await original(method, path, raw, **kwargs)

    client._call_raw = spy
    return sent


@pytest.mark.parametrize("host_keys", ["own", "none"])
@pytest.mark.sqlite_only  # reads or writes the SQLite file itself
async def test_home_node_cannot_forge_a_private_community(fed, make_patient, host_keys):
    """Alice's home node rewrites its copy of an approval community: a create of its own
    making, an approval by its own admin key and a sock-puppet member. Alice's client
    refuses the history, and nothing she sends seals a key to the sock puppet."""
    from rxfed.client.sdk import IntegrityError
    from rxfed.crypto import BoxKeyPair, SigningKeyPair, b64e
    from rxfed.protocol.statements import sign_statement

    a, b, c = fed
    admin = PatientCommunities(await make_patient(c))
    address = await admin.create("Rare disease", approval=True)
    alice_client = await make_patient(a)
    alice = PatientCommunities(alice_client)
    await alice.join(address)
    waiting = await eventually(lambda: _pending(admin, address))
    await admin.approve(address, waiting[0].member_b64)
    await eventually(lambda: _joined(alice, address, 2))
    target = pc.CommunityAddress.parse(address)
    real = _mirror_rows(a, target.id)

    forger, forger_box = SigningKeyPair.generate(), BoxKeyPair.generate()
    puppet, puppet_box = SigningKeyPair.generate(), BoxKeyPair.generate()
    alice_key = (await alice.membership(address)).member.public
    now = int(time.time())
    create = sign_statement(forger, {"type": pc.CREATE, "community": address, "name": "Rare disease",
                                     "condition": None, "approval": True, "admin": b64e(forger.public),
                                     "admin_box": b64e(forger_box.public), "node": c.node_id, "created": now})
    join_alice = real[1][1]
    events = [
        (create, forger.public),
        (join_alice, alice_key),
        (sign_statement(forger, {"type": pc.APPROVE, "community": address, "member": b64e(alice_key),
                                 "time": now}), forger.public),
        (sign_statement(puppet, {"type": pc.JOIN, "community": address, "member": b64e(puppet.public),
                                 "box_key": b64e(puppet_box.public), "node": a.node_id, "time": now}),
         puppet.public),
        (sign_statement(forger, {"type": pc.APPROVE, "community": address, "member": b64e(puppet.public),
                                 "time": now}), forger.public),
    ]
    key = a.state.signing_key()
    forged = [(i, e, _forged_stamp(key, address, i, e, signer)) for i, (e, signer) in enumerate(events, 1)]
    _serve_as_mirror(a, c, forged, host_keys)
    sent = _spy_on_requests(alice_client)
    with pytest.raises(IntegrityError) as info:
        await alice.post(address, "only for the real members")
    assert info.value.code == "bad_stamp"
    assert not any(b64e(puppet.public).encode() in body for body in sent)


@pytest.mark.sqlite_only  # reads or writes the SQLite file itself
async def test_home_node_cannot_add_a_sock_puppet_with_its_own_stamp(fed, make_patient):
    """In an open community the home node appends a sock puppet's join to the real history,
    stamped with its own key: the client checks stamps against the host's own key."""
    from rxfed.client.sdk import IntegrityError
    from rxfed.crypto import BoxKeyPair, SigningKeyPair, b64e

    a, b, c = fed
    admin, alice, address = await community_with_member(make_patient, c, a, "Open group")
    target = pc.CommunityAddress.parse(address)
    real = _mirror_rows(a, target.id)
    puppet, puppet_box = SigningKeyPair.generate(), BoxKeyPair.generate()
    join = pc.make_join(puppet, puppet_box.public, target, a.node_id, int(time.time()))
    seq = real[-1][0] + 1
    _serve_as_mirror(a, c, real + [(seq, join, _forged_stamp(a.state.signing_key(), address, seq, join,
                                                             puppet.public))], "own")
    sent = _spy_on_requests(alice.client)
    with pytest.raises(IntegrityError) as info:
        await alice.post(address, "only for the real members")
    assert info.value.code == "bad_stamp"
    assert not any(b64e(puppet.public).encode() in body for body in sent)


@pytest.mark.sqlite_only  # reads or writes the SQLite file itself
async def test_home_node_cannot_roll_a_community_back(fed, make_patient):
    """Once a device has seen event n, a history shorter than n (say, hiding a removal) is
    refused."""
    from rxfed.client.sdk import IntegrityError

    a, b, c = fed
    admin, alice, address = await community_with_member(make_patient, c, a, "Rollback")
    await admin.post(address, "seen")
    await eventually(lambda: _has(alice, address, "seen"))
    target = pc.CommunityAddress.parse(address)
    pins = (alice.client.profile.path / "communities.json").read_text()
    assert target.id not in pins and '"seq": 4' in pins  # what it saw, not which community
    real = _mirror_rows(a, target.id)
    _serve_as_mirror(a, c, real[:2], "own")
    with pytest.raises(IntegrityError) as info:
        await alice.read(address)
    assert info.value.code == "rolled_back"


@pytest.mark.sqlite_only  # reads or writes the SQLite file itself
async def test_home_node_cannot_pass_off_another_community(fed, make_patient):
    """The home node serves the genuine, stamped history of another community of the same
    host under this one's address: refused."""
    from rxfed.client.sdk import IntegrityError

    a, b, c = fed
    admin, alice, address = await community_with_member(make_patient, c, a, "Small")
    _admin, _alice, other = await community_with_member(make_patient, c, a, "Other")
    _serve_as_mirror(a, c, _mirror_rows(a, pc.CommunityAddress.parse(other).id), "own")
    with pytest.raises(IntegrityError) as info:
        await alice.read(address)
    assert info.value.code == "stamp_mismatch"


async def _pending(communities: PatientCommunities, address: str):
    state = (await communities.read(address)).state
    return [m for m in state.members.values() if m.status is pc.MemberStatus.PENDING]


async def test_joining_a_lookalike_address_reads_nothing(fed, make_patient):
    """Mallory, on Alice's home node, joins ``<id>@nowhere.invalid`` for the id of a private
    community hosted on C: she must not read that community's log from the node's copy."""
    from helpers import signed
    from rxfed.errors import RxfedError

    a, b, c = fed
    admin = PatientCommunities(await make_patient(c))
    address = await admin.create("Private group", approval=True)
    alice = PatientCommunities(await make_patient(a))
    await alice.join(address)
    waiting = await eventually(lambda: _pending(admin, address))
    await admin.approve(address, waiting[0].member_b64)
    await eventually(lambda: _joined(alice, address, 2))
    target = pc.CommunityAddress.parse(address)

    mallory_client = await make_patient(a)
    mallory = PatientCommunities(mallory_client)
    lookalike = f"{target.id}@nowhere.invalid"
    try:
        await mallory.join(lookalike)
    except RxfedError:
        pass
    leaked = None
    try:
        leaked = (await mallory.read(lookalike)).state
    except RxfedError:
        pass
    assert leaked is None
    status, _ = await signed(mallory_client, "GET", f"/v1/communities/{target.id}/events")
    assert status in (404, 405)
    # Reads need a member key the node's copy lets read, under the exact address.
    from rxfed.crypto import SigningKeyPair

    stranger = SigningKeyPair.generate()
    for claimed in (lookalike, address):
        proof = pc.make_read_proof(stranger, pc.CommunityAddress.parse(claimed), a.node_id, int(time.time()))
        status, doc = await signed(mallory_client, "POST", "/v1/communities/read",
                                   {"community": claimed, "proof": proof})
        assert (status, doc["error"]) == (404, "unknown_community")
    alice_key = (await alice.membership(address)).member
    proof = pc.make_read_proof(alice_key, pc.CommunityAddress.parse(lookalike), a.node_id, int(time.time()))
    status, doc = await signed(mallory_client, "POST", "/v1/communities/read", {"community": lookalike, "proof": proof})
    assert status == 404
    # The admin never saw a request from her.
    assert len((await admin.read(address)).state.members) == 2


@pytest.mark.sqlite_only  # reads or writes the SQLite file itself
async def test_home_node_keeps_no_diagnosis_and_no_patient_link(fed, make_patient, monkeypatch, caplog):
    """What a member's home node keeps or logs names no condition, no community name, and
    links no patient (or address) to a community."""
    import functools
    import io
    import logging
    import sqlite3

    from aiohttp import web

    from rxfed.node.admin import AccessLog

    access = io.StringIO()
    monkeypatch.setattr(AccessLog, "stream", access)
    monkeypatch.setattr(web, "AppRunner", functools.partial(web.AppRunner, access_log_class=AccessLog))
    caplog.set_level(logging.DEBUG)
    a, b, c = fed
    for node in fed:  # serve again, now with the node's access log
        await node.stop()
        await node.start()
    name = f"Epilepsy support {MARKER}"
    admin = PatientCommunities(await make_patient(c))
    address = await admin.create(name, condition="G40")
    alice_client = await make_patient(a)
    alice = PatientCommunities(alice_client)
    await alice.join(address)
    await eventually(lambda: _joined(alice, address, 2))
    await alice.post(address, "hello")
    await eventually(lambda: _has(admin, address, "hello"))
    await alice.read(address)
    target = pc.CommunityAddress.parse(address)

    assert target.id not in access.getvalue() and access.getvalue()
    assert not [r.getMessage() for r in caplog.records if target.id in r.getMessage()]
    await a.stop()
    for path in a.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert name.encode() not in data and b'"G40"' not in data, path
    db = sqlite3.connect(a.data_dir / "rxfed.db")
    try:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in db.execute(f"SELECT * FROM {table}"):
                values = [v.decode("latin-1") if isinstance(v, bytes) else str(v) for v in row]
                assert "G40" not in values, table
                linked = any(alice_client.patient in v for v in values) and any(target.id in v for v in values)
                assert not linked, table
    finally:
        db.close()
    await a.start()


async def test_a_message_that_cannot_be_reported_is_not_shown(fed, make_patient):
    """A sender posts a message whose franking commitment does not open: readers do not see
    it as a message (they are told it was tampered with), and every message they see can be
    reported."""
    from rxfed.crypto import b64e
    from rxfed.crypto.groups import SenderKey
    from rxfed.protocol.statements import sign_statement

    a, b, c = fed
    admin, alice, address = await community_with_member(make_patient, c, a, "Reportable")
    await admin.post(address, "a fair message")
    mine = await admin.membership(address)
    events = (await admin.history(mine)).events
    state = pc.CommunityState.from_events(events)
    key = pc.own_sender_key(state, events, mine.member, mine.box)
    assert isinstance(key, SenderKey)
    event, _ = pc.make_message(mine.member, key, mine.address, "deniable abuse", int(time.time()) + 1)
    body = dict(event["body"], commitment=b64e(b"\0" * 32))
    await admin.client._call("POST", "/v1/communities/events",
                             {"community": address, "event": sign_statement(mine.member, body)})
    await eventually(lambda: _has(alice, address, "a fair message"))

    async def seen_both():
        view = await alice.read(address)
        return view if view.state.seq >= 5 else None

    view = await eventually(seen_both)
    assert [m.text for m in view.messages] == ["a fair message"]
    shown = view.to_json()
    assert [m["text"] for m in shown["messages"]] == ["a fair message"]
    assert len(shown["unreadable"]) == 1 and shown["unreadable"][0]["reason"] == "bad_franking"
    for message in view.messages:
        assert pc.verify_franking_report(await alice.report(address, message.seq),
                                         [k.key.public for k in c.state.keys])


async def _transaction(sender, receiver, wires: list) -> dict:
    """Send ``wires`` from node ``sender`` to node ``receiver`` in one signed transaction."""
    import secrets

    from helpers import raw_request
    from rxfed.protocol.auth import sign_request
    from rxfed.protocol.canonical import canonical

    body = canonical({"origin": sender.node_id, "destination": receiver.node_id, "seq": 1,
                      "events": [w.to_json() for w in wires]})
    path = "/federation/v1/transactions/txn-" + secrets.token_hex(12)
    headers = sign_request(sender.state.signing_key(), method="PUT", target=path, destination=receiver.node_id,
                           origin=sender.node_id, body=body, now=int(time.time()))
    status, reply = await raw_request(receiver.url, "PUT", path, body, {**headers, "Content-Type": "application/json"})
    assert status == 200, reply
    return reply


async def test_a_squatted_id_does_not_block_the_real_copy(fed, make_patient):
    """Node B sends Alice's home node events for ``<id>@B``, with the id of a community hosted
    on C, before Alice joins: her node keeps them apart and its copy of the real one fills."""
    from rxfed.crypto import SigningKeyPair
    from rxfed.protocol.federation import WireEvent

    a, b, c = fed
    admin = PatientCommunities(await make_patient(c))
    address = await admin.create("Squatted")
    target = pc.CommunityAddress.parse(address)
    squat = pc.CommunityAddress(target.id, b.node_id)
    key = SigningKeyPair.generate()
    leave = pc.make_leave(key, squat, int(time.time()))
    stamp = _forged_stamp(b.state.signing_key(), str(squat), 2, leave, key.public)
    await _transaction(b, a, [WireEvent("community.event", {"community": str(squat), "seq": 2, "event": leave,
                                                            "stamp": stamp})])
    alice = PatientCommunities(await make_patient(a))
    await alice.join(address)
    await eventually(lambda: _joined(alice, address, 2))


async def test_a_host_key_rotation_is_learned_from_the_host(fed, make_patient):
    """The host rotates its key: members' clients take the new key from the host itself and
    keep it beside the old one in the membership record (older stamps stay checkable)."""
    from rxfed.node.config import rotate_node_key

    a, b, c = fed
    admin, alice, address = await community_with_member(make_patient, c, a, "Rotating")
    before = (await alice.membership(address)).host_keys
    rotate_node_key(c.data_dir, overlap=3600)
    c.state.reload_keys()
    await admin.post(address, "signed under the new key")
    await eventually(lambda: _has(alice, address, "signed under the new key"))
    after = (await alice.membership(address)).host_keys
    assert len(before) == 1 and len(after) == 2 and after[0] == before[0]


async def test_a_create_comes_with_the_about_it_commits_to(fed, make_patient):
    """The host keeps a community's name and condition only if they open the create event's
    commitment; its directory lists them with the create event, and a client checks both."""
    from helpers import signed
    from rxfed.crypto import BoxKeyPair, SigningKeyPair

    a, b, c = fed
    client = await make_patient(c)
    about = pc.About.new("Migraine", "G43")
    key = SigningKeyPair.generate()
    create = pc.make_create(key, BoxKeyPair.generate().public, c.node_id, about=about, approval=False,
                            node=c.node_id, now=int(time.time()))
    address = str(pc.parse_event(create).community)
    other = pc.About("Migraine", "G40", about.key).to_json()
    for extra, status, code in (({}, 400, "missing_field"), ({"about": other}, 403, "bad_about")):
        reply = await signed(client, "POST", "/v1/communities/events", {"community": address, "event": create,
                                                                        **extra})
        assert reply[0] == status and reply[1]["error"] == code
    assert await PatientCommunities.directory(c.url) == []
    status, _ = await signed(client, "POST", "/v1/communities/events",
                             {"community": address, "event": create, "about": about.to_json()})
    assert status == 200
    (listed,) = await PatientCommunities.directory(c.url)
    assert (listed["address"], listed["name"], listed["condition"]) == (address, "Migraine", "G43")
    assert pc.Listing.from_json(listed).create.admin == key.public
    leave = pc.make_leave(key, pc.CommunityAddress.parse(address), int(time.time()))
    status, doc = await signed(client, "POST", "/v1/communities/events",
                               {"community": address, "event": leave, "about": about.to_json()})
    assert (status, doc["error"]) == (400, "unknown_field")


async def test_joining_refuses_a_listing_the_creator_did_not_commit_to(fed, make_patient, monkeypatch):
    from rxfed.client.sdk import IntegrityError

    a, b, c = fed
    admin = PatientCommunities(await make_patient(c))
    address = await admin.create("Epilepsy support", condition="G40")
    real = PatientCommunities.directory

    async def doctored(url):
        return [dict(entry, name="Diabetes support", condition="E11") for entry in await real(url)]

    monkeypatch.setattr(PatientCommunities, "directory", staticmethod(doctored))
    alice = PatientCommunities(await make_patient(a))
    with pytest.raises(IntegrityError) as info:
        await alice.join(address)
    assert info.value.code == "bad_about"
    assert await alice.memberships() == []


async def test_a_revoked_device_reads_no_later_community_message(fed, make_patient, tmp_path):
    """The revoked device held the patient's member keys (they live in the vault). Revoking
    it rekeys every community of the patient, keeping the seat: later posts are sealed to
    the new keys only, so even a node that hands the revoked device every event gives it
    nothing readable; the patient still reads everything, before and after."""
    from conftest import PASSPHRASE
    from rxfed.client import PatientClient

    a, b, c = fed
    admin, member, address = await community_with_member(make_patient, c, a, "Rekeyed")
    patient = member.client
    await member.post(address, "before the theft")
    code = await PatientClient.request_link(a.url, tmp_path / "laptop", PASSPHRASE, kdf="min")
    _device, confirm = await patient.add_device(code)
    laptop = PatientClient.open(tmp_path / "laptop", PASSPHRASE)
    await laptop.finish_link(confirm)
    stolen = await PatientCommunities(laptop).membership(address)  # what the thief holds
    await laptop.close()
    await patient.revoke_device(laptop.device, patient.recovery_code)
    assert patient.followups["communities"] == {address: "rekeyed"}
    await eventually(lambda: _joined(admin, address, 2))
    mine = await member.membership(address)
    assert mine.member.public != stolen.member.public and mine.previous[0][0].public == stolen.member.public
    await eventually(lambda: _seq_at_least(admin, address, 5))
    await admin.post(address, "after the revocation")
    await member.post(address, "me too, with new keys")
    await eventually(lambda: _has(member, address, "me too, with new keys"))
    view = await member.read(address)
    assert [m.text for m in view.messages] == ["before the theft", "after the revocation", "me too, with new keys"]
    # everything the host holds, handed to the thief: only what it could read before
    from rxfed.protocol.canonical import loads

    events = [(e.seq, loads(e.event)) for e in await c.app_store().community_events(
        pc.CommunityAddress.parse(address).id, c.node_id)]
    read = pc.read_history(events, stolen.member, stolen.box)
    assert [m.text for m in read.messages] == ["before the theft"]
    # and the old key reads nothing from the patient's home node either
    from helpers import signed

    proof = pc.make_read_proof(stolen.member, pc.CommunityAddress.parse(address), a.node_id, int(time.time()))
    status, doc = await signed(patient, "POST", "/v1/communities/read", {"community": address, "proof": proof})
    assert status == 403


async def test_a_host_key_listed_without_a_signed_rotation_is_not_learned(fed, make_patient, monkeypatch):
    """Whoever can answer for the host's URL lists a key of their own beside the pinned one:
    the client learns only keys the pinned ones signed in as successors."""
    import attrs

    from rxfed.crypto import SigningKeyPair
    from rxfed.protocol.federation import NodeKey

    a, b, c = fed
    admin, alice, address = await community_with_member(make_patient, c, a, "Pinned host")
    mine = await alice.membership(address)
    real = alice._host_document
    intruder = SigningKeyPair.generate()

    async def doctored(host):
        doc = await real(host)
        return attrs.evolve(doc, keys=doc.keys + (NodeKey(intruder.public, 0, None),))

    monkeypatch.setattr(alice, "_host_document", doctored)
    assert await alice._refresh_host_keys(mine) is mine  # nothing new to pin
    assert (await alice.membership(address)).host_keys == mine.host_keys


@pytest.mark.parametrize("policy", [None, "blocked", "denied", "allowlist"])
async def test_a_join_the_home_node_will_not_deliver_is_refused_with_the_reason(tmp_path, make_patient, policy):
    """The patient's home node will not contact the host (a loopback peer it was never told
    to allow, a blocked or denied one, or a stranger in allowlist mode): the join is refused
    at once, saying why, instead of "sent" and then "try again shortly" forever."""
    from rxfed.testing import NodeHarness

    home = await NodeHarness(tmp_path / "home", name="home").start()
    host = await NodeHarness(tmp_path / "host", name="host").start()
    try:
        if policy in ("blocked", "denied"):
            await home.app_store().set_peer_policy(host.node_id, policy, url=host.url)
            await home.state.federation.policy_changed()
        elif policy == "allowlist":
            home.state.federation.settings = attrs.evolve(home.state.federation.settings, mode="allowlist")
        address = await PatientCommunities(await make_patient(host)).create("Elsewhere")
        patient = await make_patient(home)
        with pytest.raises(NodeRefused) as info:
            await PatientCommunities(patient).join(address)
        assert info.value.status == 403 and info.value.code == "peer_refused"
        assert f"will not deliver to {host.node_id}" in info.value.message
        reason = {None: "private address", "blocked": "blocks", "denied": "refuses its traffic",
                  "allowlist": "allowed peers only"}[policy]
        assert reason in info.value.message
        assert await patient.records("community") == []  # no membership left behind
        assert await home.state.store.due_destinations() == []  # nothing queued
    finally:
        await home.stop()
        await host.stop()


async def test_posting_checks_only_the_events_this_device_has_not_seen(make_patient, node, monkeypatch):
    """A community's history grows with every message: a device checks each host stamp
    once, and what it pinned is recognised by its hash chain, not verified again (posting
    stays fast in a busy community); posting opens no message. (A node that serves another
    past is still caught: the rolled-back and forked history tests above.)"""
    admin = PatientCommunities(await make_patient(node))
    address = await admin.create("Busy")
    for i in range(20):
        await admin.post(address, f"message {i}")
    checked, signatures, opened = [], [], []
    verify_stamp, read_history, open_statement = pc.verify_stamp, pc.read_history, pc.open_statement
    monkeypatch.setattr(pc, "verify_stamp", lambda *a: checked.append(1) or verify_stamp(*a))
    monkeypatch.setattr(pc, "read_history", lambda *a, **k: opened.append(1) or read_history(*a, **k))

    def counted(obj, where, kind, key):
        if key is not None and where == "event":  # the node in this process checks events too
            signatures.append(kind)
        return open_statement(obj, where, kind, key)

    monkeypatch.setattr(pc, "open_statement", counted)
    await admin.post(address, "one more")
    # the post before this one, at most (and the node's check of the new one): no message opened
    assert len(checked) <= 2 and len(signatures) <= 3 and opened == [], signatures
    checked.clear()
    signatures.clear()
    view = await admin.read(address)
    assert [m.text for m in view.messages][-1] == "one more" and len(checked) == 1 and opened == [1]
    assert signatures == ["rxfed.community.message"] and len(view.messages) == 21


async def test_the_community_directory_costs_one_build_however_often_strangers_ask(node, make_patient, monkeypatch):
    """Anyone may ask for the directory, with no budget: each request used to read the store
    and list every hosted community again. One build answers them all until it is two
    seconds old or a community changes."""
    from helpers import raw_request

    admin = await make_patient(node)
    await PatientCommunities(admin).create("Morning walkers", condition="E11")
    store = node.state.store
    reads = []
    real = store.communities

    async def counted(*args, **kwargs):
        reads.append(1)
        return await real(*args, **kwargs)

    monkeypatch.setattr(store, "communities", counted)
    replies = await asyncio.gather(*(raw_request(node.url, "GET", "/v1/communities") for _ in range(30)))
    assert all(status == 200 and len(body["communities"]) == 1 for status, body in replies)
    assert len(reads) == 1
    await PatientCommunities(admin).create("Evening walkers", condition="E11")  # a change: built again
    status, body = await raw_request(node.url, "GET", "/v1/communities")
    assert status == 200 and len(body["communities"]) == 2 and len(reads) == 2


async def test_concurrent_events_of_one_community_are_all_accepted_on_every_backend(tmp_path, make_patient):
    """Each event is sequenced and stamped at once and its write started at once, the next
    one building on it. On PostgreSQL those writes used to run side by side on the pool's
    connections, and one whose transaction began before the previous had committed failed
    its sequence check: concurrent joins (or posts) were refused with 409 stale_community."""
    from rxfed.testing import NodeHarness

    node = await NodeHarness(tmp_path / "host").start()
    try:
        admin = await make_patient(node)
        address = await PatientCommunities(admin).create("Walkers", condition="E11")
        members = [await make_patient(node) for _ in range(8)]
        results = await asyncio.gather(*(PatientCommunities(p).join(address) for p in members),
                                       return_exceptions=True)
        assert not [r for r in results if isinstance(r, BaseException)], results
        assert sorted(r["seq"] for r in results) == list(range(2, 10))
        view = await PatientCommunities(admin).read(address)
        assert len(view.state.joined()) == 9
    finally:
        await node.stop()
