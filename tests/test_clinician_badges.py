"""Verified clinicians on nodes and badges on community posts, across three real nodes.

Hospital A vouches for a clinician whose profile is on node B; they post in a community
hosted on node C; a reader on A checks the badge itself against A's keys and status list.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from rxfed.client.clinician import BadgeChecker, clinician_key
from rxfed.client.community import PatientCommunities
from rxfed.client.sdk import NodeRefused
from rxfed.crypto import SigningKeyPair, b64e
from rxfed.errors import BadRequest, Forbidden, NotFound
from rxfed.node import clinician_admin as clinicians
from rxfed.protocol import badges
from rxfed.protocol import community as pc
from rxfed.protocol.credentials import did_key
from rxfed.protocol.data_integrity import IssuerKeys, did_web
from rxfed.protocol.federation import NodeKey
from rxfed.protocol.status_list import LIST_TTL, StatusEntry, verify_status_list
from rxfed.testing import start_federation

pytestmark = pytest.mark.usefixtures("rxfed_store_backend")

NPI = "1234567893"
ENDO = ("207RE0101X", "Endocrinology")


@pytest.fixture
async def fed(tmp_path):
    nodes = await start_federation(tmp_path, "hospital-a", "hospital-b", "community-c")
    yield nodes
    for n in nodes:
        await n.stop()


async def eventually(check, timeout=10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            if await check():
                return
        except (NodeRefused, AssertionError):
            pass
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def issue(node, clinician: bytes, **kw) -> dict:
    args = {"key": did_key(clinician), "role": "physician", "specialty": ENDO[0], "specialty_name": ENDO[1], "npi": NPI}
    return await asyncio.to_thread(lambda: clinicians.issue(node.data_dir, **{**args, **kw}))


async def community(make_patient, host, *members):
    admin = PatientCommunities(await make_patient(host))
    address = await admin.create("Type 1 diabetes")
    joined = []
    for node in members:
        member = PatientCommunities(await make_patient(node))
        await member.join(address)
        joined.append(member)

    async def all_joined():
        view = await joined[-1].read(address)
        return view.state is not None and len(view.state.joined()) == len(members) + 1

    await eventually(all_joined)
    return address, joined


async def badge_of(reader: PatientCommunities, address: str, text: str) -> dict | None:
    for m in (await reader.read(address)).to_json()["messages"]:
        if m["text"] == text:
            return m["badge"]
    raise AssertionError(f"{text!r} not read yet")


async def test_a_badge_verifies_across_three_nodes_and_is_refused_once_revoked(fed, make_patient):
    a, b, c = fed
    address, (doctor, reader) = await community(make_patient, c, b, a)
    key = await clinician_key(doctor.client, create=True)
    assert await clinician_key(doctor.client) == key  # kept in the vault
    issued = await issue(a, key.public)
    assert set(issued["credentials"]) == {"badge", "role", "full"}
    assert issued["state"] == "valid" and all(v["accepted"] for v in issued["verdicts"])
    badge = issued["credentials"]["badge"]
    assert "npi" not in badge["credentialSubject"] and "name" not in badge["credentialSubject"]

    await doctor.post(address, "Lows at night are common after exercise; ask your team about basal.", badge=badge)
    await _wait_message(doctor, address, "Lows at night are common after exercise; ask your team about basal.")
    await doctor.post(address, "A plain post.")
    shown = await _wait_badge(reader, address, "Lows at night are common after exercise; ask your team about basal.")
    assert shown["verified"] and shown["badge"] == f"verified physician, Endocrinology, hospital-a ({a.node_id})"
    assert shown["issuer"] == did_web(a.node_id) and shown["clinician"] == did_key(key.public)
    assert await _wait_badge(reader, address, "A plain post.") is None
    # The author's own client checks its badge as any reader does.
    assert (await _wait_badge(doctor, address, "Lows at night are common after exercise; ask your team about basal."
                              ))["verified"]

    revoked = await asyncio.to_thread(clinicians.revoke, a.data_dir, issued["id"], reason="left the hospital")
    assert revoked == {"id": issued["id"], "revoked": True, "changed": True}
    assert (await asyncio.to_thread(clinicians.revoke, a.data_dir, issued["id"]))["changed"] is False
    refused = await badge_of(reader, address, "Lows at night are common after exercise; ask your team about basal.")
    assert not refused["verified"] and refused["reason"] == "credential_revoked" and refused["badge"] is None
    # And the clinician is told before posting with it again.
    with pytest.raises(Forbidden, match="revoked"):
        await doctor.post(address, "again", badge=badge)
    listed = await asyncio.to_thread(clinicians.issued, a.data_dir)
    assert [(r["id"], r["state"], r["revoked_reason"]) for r in listed] == [(issued["id"], "revoked",
                                                                            "left the hospital")]


async def _wait_badge(reader, address, text):
    found = {}

    async def check():
        try:
            found["badge"] = await badge_of(reader, address, text)
            return True
        except AssertionError:
            return False

    await eventually(check)
    return found["badge"]


async def test_an_expired_credential_shows_no_badge(fed, make_patient, monkeypatch):
    a, b, c = fed
    address, (doctor, reader) = await community(make_patient, c, b, a)
    key = await clinician_key(doctor.client, create=True)
    issued = await issue(a, key.public, valid_days=30)
    await doctor.post(address, "Check your ketones when over 250.", badge=issued["credentials"]["role"])
    shown = await _wait_badge(reader, address, "Check your ketones when over 250.")
    assert shown["verified"] and shown["badge"] == f"verified physician, hospital-a ({a.node_id})"  # role: no specialty
    later = BadgeChecker.__init__

    def in_31_days(self, session, now, **kw):
        later(self, session, now + 31 * 86400, **kw)

    monkeypatch.setattr(BadgeChecker, "__init__", in_31_days)
    assert (await badge_of(reader, address, "Check your ketones when over 250."))["reason"] == "credential_expired"


async def test_a_badge_moved_to_another_post_or_member_is_refused(fed, make_patient, monkeypatch):
    """A member copies a clinician's badge (credential and binding signature) into their own
    post: the binding names the clinician's post, so readers refuse it. A member who signs
    a fresh binding with their own key is refused too: the credential names another key."""
    a, b, c = fed
    address, (doctor, impostor, reader) = await community(make_patient, c, b, b, a)
    key = await clinician_key(doctor.client, create=True)
    issued = await issue(a, key.public)
    await doctor.post(address, "Real advice.", badge=issued["credentials"]["badge"])
    copied = (await _wait_message(reader, address, "Real advice.")).badge
    assert copied is not None
    await _wait_message(impostor, address, "Real advice.")

    monkeypatch.setattr(badges, "make_badge", lambda *args, **kw: copied)
    own = await clinician_key(impostor.client, create=True)
    # The impostor's client would refuse the credential for its own key; post below that check.
    mine = await impostor.membership(address)
    await _raw_post(impostor, mine, "Stop your insulin, I am a doctor.", (own, issued["credentials"]["badge"]))
    moved = await _wait_badge(reader, address, "Stop your insulin, I am a doctor.")
    await _wait_message(impostor, address, "Stop your insulin, I am a doctor.")
    assert not moved["verified"] and moved["reason"] == "bad_badge_binding"

    monkeypatch.undo()
    forged = badges.make_badge(key, issued["credentials"]["badge"], community=address, sender=mine.member.public,
                               text="x", sent=1)  # the clinician's key, for another text and time
    monkeypatch.setattr(badges, "make_badge", lambda *args, **kw: forged)
    await _raw_post(impostor, mine, "Another claim.", (own, issued["credentials"]["badge"]))
    assert (await _wait_badge(reader, address, "Another claim."))["reason"] == "bad_badge_binding"
    monkeypatch.undo()

    # Own key, fresh binding: the credential vouches for the doctor's key, not the impostor's.
    with pytest.raises(BadRequest, match="another clinician key"):
        badges.make_badge(own, issued["credentials"]["badge"], community=address, sender=mine.member.public,
                          text="t", sent=1)


async def _wait_message(reader, address, text):
    found = {}

    async def check():
        for m in (await reader.read(address)).messages:
            if m.text == text:
                found["m"] = m
                return True
        return False

    await eventually(check)
    return found["m"]


async def _raw_post(communities: PatientCommunities, mine, text: str, badge) -> None:
    """Post as ``communities`` does, without the client's own check of the badge."""
    from rxfed.crypto.groups import SenderKey

    history = await communities.history(mine, messages=False)
    state = history.state
    key = pc.own_sender_key(state, history.events, mine.member, mine.box)
    if key is None or state.needs_sender_key(mine.member.public):
        key = SenderKey.generate(state.next_epoch(mine.member.public))
        await communities._submit(mine.address, pc.make_sender_key(mine.member, state, key))
    now = max(communities._now(), state.last_sent(mine.member.public))
    message, _ = pc.make_message(mine.member, key, mine.address, text, now, badge=badge)
    await communities._submit(mine.address, message)


def test_no_node_can_strip_or_add_a_badge_without_breaking_the_senders_signature():
    """The badge travels inside the ciphertext the sender signed: a node (or a member holding
    the sender key) that re-encrypts the post without the badge, or with another, changes the
    signed statement, and the event is refused."""
    from rxfed.crypto import b64d
    from rxfed.crypto.groups import SenderKey, open_message, seal_message
    from rxfed.protocol.canonical import canonical, loads
    from rxfed.protocol.statements import open_statement

    sender = SigningKeyPair.generate()
    address = pc.CommunityAddress("a" * 32, "host.example")
    sender_key = SenderKey.generate(1)
    clinician = SigningKeyPair.generate()
    credential = {"id": "urn:uuid:1", "credentialSubject": {"id": did_key(clinician.public)}}
    statement, _ = pc.make_message(sender, sender_key, address, "advice", 1000, badge=(clinician, credential))
    ad = pc._message_ad(address, sender.public, 1)
    inner = loads(open_message(sender_key, ad, b64d(statement["body"]["ciphertext"])))
    assert inner["badge"]["credential"] == credential
    bound = badges.open_badge(inner["badge"], community=str(address), sender=sender.public, text="advice", sent=1000)
    assert bound.clinician_key == clinician.public
    open_statement(statement, "event", pc.MESSAGE, sender.public)
    other = SigningKeyPair.generate()
    added = badges.make_badge(other, {"id": "urn:uuid:2", "credentialSubject": {"id": did_key(other.public)}},
                              community=str(address), sender=sender.public, text="advice", sent=1000)
    for changed in ({k: v for k, v in inner.items() if k != "badge"}, {**inner, "badge": added}):
        tampered = json.loads(json.dumps(statement))
        tampered["body"]["ciphertext"] = b64e(seal_message(sender_key, ad, canonical(changed)))
        with pytest.raises(Forbidden):
            open_statement(tampered, "event", pc.MESSAGE, sender.public)


def test_a_badge_binds_the_community_sender_text_time_and_credential():
    clinician, sender = SigningKeyPair.generate(), SigningKeyPair.generate()
    credential = {"id": "urn:uuid:1", "credentialSubject": {"id": did_key(clinician.public)}}
    where = {"community": "c" * 32 + "@host.example", "sender": sender.public, "text": "advice", "sent": 1000}
    badge = badges.make_badge(clinician, credential, **where)
    assert badges.open_badge(badge, **where).clinician_key == clinician.public
    for change in ({"community": "d" * 32 + "@host.example"}, {"sender": SigningKeyPair.generate().public},
                   {"text": "advice!"}, {"sent": 1001}):
        with pytest.raises(badges.BadgeRefused):
            badges.open_badge(badge, **{**where, **change})
    with pytest.raises(badges.BadgeRefused):
        badges.open_badge({**badge, "credential": {**credential, "id": "urn:uuid:2"}}, **where)
    for malformed in (None, [], {"credential": credential}, {**badge, "extra": 1}, {**badge, "signature": 5}):
        with pytest.raises(BadRequest):
            badges.open_badge(malformed, **where)


async def get(url: str, path: str) -> tuple[int, dict, bytes]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(url + path) as resp:
            return resp.status, dict(resp.headers), await resp.read()


async def test_node_routes_serve_the_did_document_and_the_issuers_status_list_only(fed, make_patient):
    a, b, _c = fed
    status, headers, body = await get(a.url, "/v1/clinicians/status/1")
    assert status == 404 and json.loads(body)["error"] == "unknown_status_list"
    status, _h, body = await get(a.url, "/v1/clinicians/status/NOT_AN_ID")
    assert status == 400 and "error" in json.loads(body)
    status, headers, body = await get(a.url, "/.well-known/did.json")
    did = json.loads(body)
    assert status == 200 and headers["Content-Type"].startswith("application/did+json")
    assert did["id"] == did_web(a.node_id) and len(did["assertionMethod"]) == len(a.state.keys)

    doctor = await make_patient(b)
    key = await clinician_key(doctor, create=True)
    issued = await issue(a, key.public)
    url = issued["credentials"]["badge"]["credentialStatus"]["statusListCredential"]
    assert url == f"{a.url}/v1/clinicians/status/1"
    status, headers, body = await get(a.url, "/v1/clinicians/status/1")
    assert status == 200 and headers["Content-Type"] == "application/vc"
    assert headers["Cache-Control"] == f"public, max-age={LIST_TTL}"
    keys = IssuerKeys(did_web(a.node_id), tuple(NodeKey(k.key.public, k.valid_from, k.valid_until)
                                                for k in a.state.keys))
    entry = StatusEntry(url, issued["status_index"])
    import time

    bits = verify_status_list(json.loads(body), keys, entry, now=int(time.time()))
    assert not bits.get(entry.index)
    # The same document for every requester, until something changes.
    assert (await get(a.url, "/v1/clinicians/status/1"))[2] == body
    await asyncio.to_thread(clinicians.revoke, a.data_dir, issued["id"])
    after = (await get(a.url, "/v1/clinicians/status/1"))[2]
    assert verify_status_list(json.loads(after), keys, entry, now=int(time.time())).get(entry.index)
    # Node B issued nothing: it serves no list (a verifier asks only the issuer anyway).
    assert (await get(b.url, "/v1/clinicians/status/1"))[0] == 404


async def test_bad_issue_and_revoke_input_changes_nothing(fed, make_patient):
    a, b, _c = fed
    doctor = await make_patient(b)
    key = (await clinician_key(doctor, create=True)).public
    bad = [
        ({"key": "not-a-key"}, BadRequest),
        ({"key": "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2Qt"}, BadRequest),
        ({"role": "wizard"}, BadRequest),
        ({"specialty": "207re0101x"}, BadRequest),
        ({"specialty_name": "Endo\u202e"}, BadRequest),
        ({"npi": "1234567890"}, BadRequest),
        ({"npi": None}, Forbidden),  # the npi backend needs one
        ({"valid_days": 401}, BadRequest),
        ({"valid_days": 0}, BadRequest),
    ]
    for change, error in bad:
        with pytest.raises(error):
            await issue(a, key, **change)
    with pytest.raises(BadRequest):
        await asyncio.to_thread(clinicians.revoke, a.data_dir, "../../etc")
    with pytest.raises(NotFound):
        await asyncio.to_thread(clinicians.revoke, a.data_dir, "0123456789abcdef")
    assert await asyncio.to_thread(clinicians.issued, a.data_dir) == []
    assert [e.action for e in await a.app_store().operator_log()] == []


# -- the commands, as an operator and a clinician run them ------------------------------------


async def rxfed(*args: str, expect: int = 0) -> tuple[str, str]:
    import os
    import sys

    env = {**os.environ, "RXFED_PASSPHRASE": "the command line passphrase", "RXFED_AGENT_DISABLE": "1"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "rxfed", *args, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == expect, (args, out.decode(), err.decode())
    return out.decode(), err.decode()


@pytest.mark.slow
async def test_the_commands_issue_post_read_and_revoke(fed, tmp_path):
    a, b, c = fed
    doctor, reader, founder = tmp_path / "doctor", tmp_path / "reader", tmp_path / "founder"
    for profile, node in ((doctor, b), (reader, a), (founder, c)):
        await rxfed("patient", "register", "--node", node.url, "--profile", str(profile), "--kdf", "min", "--json")
    key = json.loads((await rxfed("patient", "clinician", "key", "--profile", str(doctor), "--json"))[0])["key"]
    assert (await rxfed("patient", "clinician", "key", "--profile", str(doctor)))[0].strip() == key  # the same
    shown = json.loads((await rxfed("patient", "show", "--profile", str(doctor), "--json"))[0])["records"]
    assert [r["data"] for r in shown if r["kind"] == "clinician"] == [{"did": key}]  # never the secret

    node = str(a.data_dir)
    issue = ("node", "clinicians", node, "issue", "--key", key, "--role", "physician", "--specialty", ENDO[0],
             "--specialty-name", ENDO[1], "--npi", NPI)
    _out, err = await rxfed(*issue[:-2], expect=1)  # no NPI: the npi backend refuses
    assert "not issued" in err and "npi" in err
    for wrong in (("--specialty", "endo"), ("--key", "z6Mk"), ("--role", "wizard"), ("--valid-days", "500")):
        await rxfed(*issue, *wrong, expect=2)
    await rxfed(*issue, "--bogus", expect=2)
    await rxfed(*issue, "--out", str(tmp_path / "no-such-dir" / "c.json"), expect=2)
    assert json.loads((await rxfed("node", "clinicians", node, "list", "--json"))[0]) == {"credentials": []}
    bundle = tmp_path / "credentials.json"
    made = json.loads((await rxfed(*issue, "--out", str(bundle), "--json"))[0])
    assert set(made) >= {"id", "clinician", "role", "specialty", "status_index", "valid_until", "state", "file",
                         "verdicts"} and made["clinician"] == key and "credentials" not in made
    assert (bundle.stat().st_mode & 0o777) == 0o600
    await rxfed(*issue, "--out", str(bundle), expect=2)  # never written over
    stdout_bundle = json.loads((await rxfed(*issue))[0])
    assert set(stdout_bundle["credentials"]) == {"badge", "role", "full"}

    address = json.loads((await rxfed("community", "create", "--profile", str(founder), "Thyroid", "--json"))[0])[
        "address"]
    for profile in (doctor, reader):
        await rxfed("community", "join", "--profile", str(profile), address, "--json")

    async def members():
        view = json.loads((await rxfed("community", "read", "--profile", str(doctor), address, "--json"))[0])
        return len([m for m in view["members"] if m["status"] == "joined"]) == 3

    await eventually(members, timeout=30)
    await rxfed("community", "post", "--profile", str(doctor), address, "x", "--badge", str(tmp_path / "none.json"),
                expect=2)
    await rxfed("community", "post", "--profile", str(doctor), address, "x", "--badge", str(bundle),
                "--badge-profile", "nope", expect=2)
    await rxfed("community", "post", "--profile", str(reader), address, "x", "--badge", str(bundle), expect=1)
    posted = json.loads((await rxfed("community", "post", "--profile", str(doctor), address,
                                     "TSH is best checked six weeks after a dose change.", "--badge", str(bundle),
                                     "--json"))[0])
    assert posted["badge"] is True

    async def badge():
        view = json.loads((await rxfed("community", "read", "--profile", str(reader), address, "--json"))[0])
        return next((m["badge"] for m in view["messages"]), None)

    await eventually(badge, timeout=30)
    assert (await badge())["verified"]
    text = (await rxfed("community", "read", "--profile", str(reader), address))[0]
    assert f"[verified physician, Endocrinology, hospital-a ({a.node_id})]" in text

    await rxfed("node", "clinicians", node, "revoke", "nothex", expect=2)
    await rxfed("node", "clinicians", node, "revoke", "0123456789abcdef", expect=1)
    out, _ = await rxfed("node", "clinicians", node, "revoke", made["id"], "--reason", "left", "--json")
    assert json.loads(out) == {"id": made["id"], "revoked": True, "changed": True}
    listed = json.loads((await rxfed("node", "clinicians", node, "list", "--json"))[0])["credentials"]
    assert {r["id"]: r["state"] for r in listed}[made["id"]] == "revoked" and len(listed) == 2
    assert (await badge())["reason"] == "credential_revoked"
    text = (await rxfed("community", "read", "--profile", str(reader), address))[0]
    assert "clinician badge REFUSED: the issuer has revoked the credential" in text


async def test_a_reader_contacts_no_issuer_its_home_node_does_not_federate_with(fed, make_patient, tmp_path,
                                                                             monkeypatch):
    """A badge names its issuer, which every reader's client would contact: a member posting
    a badge from a node of their own choosing could learn who reads the community, and when.
    Readers contact only their home node and its peers; any other issuer is refused unasked."""
    from rxfed.testing import NodeHarness

    a, b, c = fed
    stranger = await NodeHarness(tmp_path / "stranger", name="stranger").start()
    try:
        address, (doctor, reader) = await community(make_patient, c, b, a)
        key = await clinician_key(doctor.client, create=True)
        issued = await issue(stranger, key.public)
        await doctor.post(address, "From a node nobody federates with.", badge=issued["credentials"]["badge"])
        asked = []
        fetch = BadgeChecker._issuer_keys

        async def recorded(self, issuer):
            asked.append(issuer)
            return await fetch(self, issuer)

        monkeypatch.setattr(BadgeChecker, "_issuer_keys", recorded)
        shown = await _wait_badge(reader, address, "From a node nobody federates with.")
        assert shown["reason"] == "issuer_not_federated" and not shown["verified"]
        assert asked == []
        # The same credential from a peer's issuance is checked as usual.
        issued_by_a = await issue(a, key.public)
        await _wait_message(doctor, address, "From a node nobody federates with.")
        await doctor.post(address, "From hospital A.", badge=issued_by_a["credentials"]["badge"])
        assert (await _wait_badge(reader, address, "From hospital A."))["verified"]
        assert set(asked) == {did_web(a.node_id)}  # once per reading, only the peer
    finally:
        await stranger.stop()


async def test_a_status_list_answer_is_read_no_further_than_its_limit():
    """A hostile issuer's endless status list costs a reader at most MAX_LIST_BYTES."""
    from aiohttp import web as aioweb

    from rxfed.client import transport
    from rxfed.client.clinician import MAX_LIST_BYTES

    sent = {"bytes": 0}

    async def endless(request):
        response = aioweb.StreamResponse()
        await response.prepare(request)
        for _ in range(64):
            await response.write(b"0" * 64 * 1024)
            sent["bytes"] += 64 * 1024
        return response

    app = aioweb.Application()
    app.router.add_get("/v1/clinicians/status/1", endless)
    runner = aioweb.AppRunner(app)
    await runner.setup()
    site = aioweb.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    checker = BadgeChecker(transport.Http(), 0)
    try:
        assert not await checker._fetch(f"http://127.0.0.1:{port}/v1/clinicians/status/1", checker._status_list)
        assert "larger than" in next(iter(checker.failed.values()))
        assert MAX_LIST_BYTES < 64 * 64 * 1024
    finally:
        await checker.session.close()
        await runner.cleanup()


async def test_a_reader_pins_the_issuers_keys_and_follows_only_signed_rotations(fed, make_patient):
    """The first reading pins the issuer's keys on this device; a signed rotation is followed;
    keys swapped without one (whoever answers for the issuer's address later) are not, so a
    credential under them shows no badge for this reader, though a fresh one would trust it."""
    from rxfed.client.clinician import PINS
    from rxfed.crypto import SigningKeyPair as Keys
    from rxfed.node.config import NodeSigningKey, rotate_node_key, save_node_keys

    a, b, c = fed
    address, (doctor, reader) = await community(make_patient, c, b, a)
    key = await clinician_key(doctor.client, create=True)
    first = await issue(a, key.public)
    await doctor.post(address, "Before the rotation.", badge=first["credentials"]["badge"])
    assert (await _wait_badge(reader, address, "Before the rotation."))["verified"]
    pins = reader.client.profile.path / PINS
    assert did_web(a.node_id) in json.loads(pins.read_text()) and (pins.stat().st_mode & 0o777) == 0o600

    rotate_node_key(a.data_dir, overlap=3600)
    a.state.reload_keys()
    rotated = await issue(a, key.public)
    await _wait_message(doctor, address, "Before the rotation.")
    await doctor.post(address, "After a signed rotation.", badge=rotated["credentials"]["badge"])
    assert (await _wait_badge(reader, address, "After a signed rotation."))["verified"]

    import time

    save_node_keys(a.data_dir, [NodeSigningKey(Keys.generate(), int(time.time()) - 60, None)])
    a.state.reload_keys()
    swapped = await issue(a, key.public)
    await _wait_message(doctor, address, "After a signed rotation.")
    with pytest.raises(Forbidden, match="does not publish"):  # the doctor's device pinned the keys too
        await doctor.post(address, "Under swapped keys.", badge=swapped["credentials"]["badge"])
    await _raw_post(doctor, await doctor.membership(address), "Under swapped keys.", (key, swapped["credentials"]["badge"]))
    refused = await _wait_badge(reader, address, "Under swapped keys.")
    assert not refused["verified"] and refused["reason"] == "unknown_issuer_key"


def test_a_post_without_a_badge_does_not_load_the_credential_code():
    """Making and reading a post without a badge never imports the credential code (badges,
    credentials, data integrity, status lists): it stays off every post's start-up time."""
    import subprocess
    import sys

    script = """
import sys, time
from rxfed.crypto import SigningKeyPair
from rxfed.crypto.groups import SenderKey
from rxfed.protocol import community as pc
key, sender_key = SigningKeyPair.generate(), SenderKey.generate(1)
address = pc.CommunityAddress.parse("0123456789abcdef0123456789abcdef@node.example")
statement, _ = pc.make_message(key, sender_key, address, "hello", int(time.time()))
loaded = sorted(m for m in ("rxfed.protocol.badges", "rxfed.protocol.credentials",
                            "rxfed.protocol.data_integrity", "rxfed.protocol.status_list") if m in sys.modules)
print(",".join(loaded))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


async def test_the_status_list_is_signed_again_under_the_nodes_new_key(fed, make_patient):
    """A node whose key changed (a rotation without overlap, a compromised key replaced)
    serves its status list signed by the new key at once: a copy signed by the old one,
    kept for up to LIST_TTL, made every badge it issued unverifiable (unknown_issuer_key)."""
    import time

    from rxfed.node.config import NodeSigningKey, save_node_keys

    a, b, _c = fed
    doctor = await make_patient(b)
    key = await clinician_key(doctor, create=True)
    issued = await issue(a, key.public)
    entry = StatusEntry(issued["credentials"]["badge"]["credentialStatus"]["statusListCredential"],
                        issued["status_index"])
    assert (await get(a.url, "/v1/clinicians/status/1"))[0] == 200  # signed and kept by the old key
    save_node_keys(a.data_dir, [NodeSigningKey(SigningKeyPair.generate(), int(time.time()) - 60, None)])
    a.state.reload_keys()
    keys = IssuerKeys(did_web(a.node_id), tuple(NodeKey(k.key.public, k.valid_from, k.valid_until)
                                                for k in a.state.keys))
    status, _h, body = await get(a.url, "/v1/clinicians/status/1")
    assert status == 200
    assert not verify_status_list(json.loads(body), keys, entry, now=int(time.time())).get(entry.index)
