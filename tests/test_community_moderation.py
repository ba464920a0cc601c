"""Reports to moderators and moderators' actions, in the community log (spec/moderation.md,
"Reports and moderator actions"): the fold's rules, and what each member's reading shows."""

from __future__ import annotations

import pytest

from rxfed.crypto import SigningKeyPair, b64e
from rxfed.errors import BadRequest, Conflict, Forbidden
from rxfed.protocol import community as pc
from test_community_protocol import Host, Person, refused


@pytest.fixture
def community():
    admin, alice, bob, carol = Person(), Person("a.example"), Person("b.example"), Person("c.example")
    host = Host(admin)
    for p in (alice, bob, carol):
        host.join(p)
    return host, admin, alice, bob, carol


def _act(host: Host, who: Person, action: str, member: bytes, *, seq: int = 0, reason: str = "spam") -> dict:
    return pc.make_action(who.key, host.address, action, member, seq=seq, reason=reason, now=host.tick())


def _reading(host: Host, person: Person) -> pc.Reading:
    return pc.read_history(host.log, person.key, person.box)


def _message(host: Host, reader: Person, seq: int) -> pc.Message:
    return next(m for m in _reading(host, reader).messages if m.seq == seq)


def test_a_franked_report_reaches_every_moderator_verified_and_names_nobody(community):
    host, admin, alice, bob, carol = community
    host.submit(_act(host, admin, "appoint", carol.public, reason="moderator"))
    bad = host.post(alice, "you should stop taking your insulin")
    report = pc.make_report(host.state, _message(host, bob, bad), "medication_change", host.tick())
    body = report["body"]
    assert set(body["reports"]) == {b64e(admin.public), b64e(carol.public)}
    # Nothing in the event names the reporter: not its member key, nor its box key or node.
    for value in (b64e(bob.public), b64e(bob.box.public), bob.node, "you should stop"):
        assert value not in str(report)
    at = host.submit(report)
    for moderator in (admin, carol):
        [received] = _reading(host, moderator).reports
        assert (received.status, received.seq, received.category, received.text) == (
            "verified", bad, "medication_change", "you should stop taking your insulin")
        assert received.sender == alice.public and received.report_seq == at
    # Members who are no moderator hold nothing of it.
    assert _reading(host, alice).reports == () and _reading(host, bob).reports == ()


@pytest.mark.parametrize("forgery", ["text", "key", "seq"])
def test_a_forged_report_is_refused_by_the_moderator(community, forgery):
    host, admin, alice, bob, _carol = community
    seq = host.post(alice, "hello everyone")
    other = host.post(bob, "nice to meet you")
    message = _message(host, bob, seq)
    kwargs = {"text": {"text": "buy my pills, DM me"}, "key": {"franking_key": bytes(32)},
              "seq": {}}[forgery]
    if forgery == "seq":  # the franking of one message offered as another's
        message = pc.Message(other, message.sender, message.text, message.sent, message.epoch,
                             message.franking_key, message.commitment)
    host.submit(pc.make_report(host.state, message, "spam", host.tick(), **kwargs))
    [received] = _reading(host, admin).reports
    assert received.status == "refused" and received.reason == "bad_franking"


def test_a_report_is_sealed_to_exactly_the_moderators_under_a_fresh_key(community):
    host, admin, alice, bob, carol = community
    seq = host.post(alice, "hello")
    message = _message(host, bob, seq)
    # Under a member's own key it would name the reporter.
    refused(host, pc.make_report(host.state, message, "spam", host.tick(), reporter=bob.key), Conflict,
            "reporter_is_member")
    # Leaving a moderator out (here: sealed before carol was appointed) is refused.
    early = pc.make_report(host.state, message, "spam", host.tick())
    host.submit(_act(host, admin, "appoint", carol.public, reason="moderator"))
    refused(host, early, Conflict, "wrong_recipients")
    reporter = SigningKeyPair.generate()
    host.submit(pc.make_report(host.state, message, "spam", host.tick(), reporter=reporter))
    refused(host, pc.make_report(host.state, message, "spam", host.tick(), reporter=reporter), Conflict,
            "duplicate_report")
    with pytest.raises(BadRequest):
        pc.make_report(host.state, message, "rude", host.tick())


def test_hide_warn_remove_ban_are_applied_in_every_members_reading(community):
    host, admin, alice, bob, carol = community
    host.submit(_act(host, admin, "appoint", carol.public, reason="moderator"))
    bad = host.post(alice, "this tea cures diabetes")
    fine = host.post(bob, "my A1c is down")
    host.submit(_act(host, carol, "hide", alice.public, seq=bad, reason="miracle_cure"))
    host.submit(_act(host, carol, "warn", alice.public, seq=bad, reason="miracle_cure"))
    for reader in (admin, alice, bob, carol):
        reading = _reading(host, reader)
        assert set(reading.hidden) == {bad} and {m.seq for m in reading.messages} == {bad, fine}
        assert [a.action for _, a in reading.actions] == ["appoint", "hide", "warn"]
    host.submit(_act(host, carol, "ban", alice.public, reason="spam"))
    assert host.state.status(alice.public) is pc.MemberStatus.REMOVED
    assert b64e(alice.public) in host.state.banned
    assert pc.membership_change(pc.parse_event(host.log[-1][1])) == ((alice.public, False),)
    # A banned (removed) member cannot post, and later keys go to the others only.
    host.post(bob, "after the ban")
    assert "after the ban" not in [m.text for m in _reading(host, alice).messages]
    host.submit(_act(host, carol, "remove", bob.public, reason="harassment"))
    assert host.state.status(bob.public) is pc.MemberStatus.REMOVED


def test_a_hide_of_a_message_by_someone_else_hides_nothing(community):
    host, admin, alice, bob, _carol = community
    seq = host.post(alice, "hello")
    host.submit(_act(host, admin, "hide", bob.public, seq=seq, reason="spam"))
    assert _reading(host, bob).hidden == {}


def test_only_moderators_act_and_only_the_admin_appoints(community):
    host, admin, alice, bob, carol = community
    seq = host.post(alice, "hello")
    refused(host, _act(host, bob, "hide", alice.public, seq=seq), Forbidden, "not_moderator")
    refused(host, _act(host, bob, "appoint", bob.public), Forbidden, "not_moderator")
    host.submit(_act(host, admin, "appoint", carol.public, reason="moderator"))
    refused(host, _act(host, carol, "appoint", bob.public), Forbidden, "not_admin")
    refused(host, _act(host, carol, "ban", admin.public), Conflict, "cannot_act_on_admin")
    refused(host, _act(host, admin, "hide", alice.public, seq=host.state.seq + 5), Conflict, "bad_action")
    refused(host, _act(host, admin, "remove", alice.public, seq=seq), Conflict, "bad_action")
    # A forged signature: carol's action body signed by bob.
    forged = _act(host, carol, "hide", alice.public, seq=seq)
    from rxfed.protocol.statements import sign_statement

    refused(host, sign_statement(bob.key, forged["body"]), Forbidden, "bad_statement_signature")
    # A dismissed moderator acts no more; one who leaves neither.
    host.submit(_act(host, admin, "dismiss", carol.public, reason="term ended"))
    refused(host, _act(host, carol, "hide", alice.public, seq=seq), Forbidden, "not_moderator")


def test_a_replayed_action_is_refused(community):
    host, admin, alice, _bob, _carol = community
    seq = host.post(alice, "hello")
    action = _act(host, admin, "warn", alice.public, seq=seq, reason="be kind")
    host.submit(action)
    refused(host, action, Conflict, "duplicate_action")
    old = pc.make_action(admin.key, host.address, "warn", alice.public, seq=seq, reason="again", now=host.now - 100)
    refused(host, old, Conflict, "stale_action")
    # In another community the signed address differs: refused as another community's event.
    other = Host(admin)
    with pytest.raises(BadRequest) as info:
        other.state.apply(action, seq=other.state.seq + 1)
    assert info.value.code == "wrong_community"


def test_a_rekeyed_moderator_keeps_the_role(community):
    host, admin, alice, _bob, carol = community
    host.submit(_act(host, admin, "appoint", carol.public, reason="moderator"))
    new = SigningKeyPair.generate()
    from rxfed.crypto import BoxKeyPair

    host.submit(pc.make_rekey(carol.key, new, BoxKeyPair.generate().public, host.address, carol.node, host.tick()))
    assert host.state.is_moderator(new.public) and not host.state.is_moderator(carol.public)


def test_action_and_report_shapes_are_checked(community):
    host, admin, alice, _bob, _carol = community
    good = _act(host, admin, "warn", alice.public)
    for change in ({"action": "delete"}, {"reason": ""}, {"seq": -1}, {"extra": 1}):
        from rxfed.protocol.statements import sign_statement

        with pytest.raises(BadRequest):
            pc.parse_event(sign_statement(admin.key, {**good["body"], **change}))


# -- across nodes ----------------------------------------------------------------------------

import asyncio  # noqa: E402
import time  # noqa: E402

from rxfed.client.community import PatientCommunities  # noqa: E402
from rxfed.client.sdk import NodeRefused  # noqa: E402
from rxfed.errors import RxfedError  # noqa: E402


async def _eventually(check, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await check():
                return
        except (NodeRefused, AssertionError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def _at_seq(communities: PatientCommunities, address: str, seq: int) -> bool:
    view = await communities.read(address)
    return view.state is not None and view.state.seq >= seq


@pytest.mark.usefixtures("rxfed_store_backend")
async def test_reports_and_actions_across_three_nodes(rxfed_federation, make_patient):
    """The admin hosts on C, the moderator and the poster live on A, the reporter on B. A
    report reaches both moderators verified and names nobody; the moderator's hide, warn and
    ban reach every member's node and every member's client applies them; a non-moderator's
    action and a replayed one are refused by the host."""
    a, b, c = await rxfed_federation("node-a", "node-b", "node-c")
    admin = PatientCommunities(await make_patient(c))
    address = await admin.create("Type 2 diabetes")
    mod, poster = PatientCommunities(await make_patient(a)), PatientCommunities(await make_patient(a))
    reporter = PatientCommunities(await make_patient(b))
    for member in (mod, poster, reporter):
        await member.join(address)
    await _eventually(lambda: _at_seq(admin, address, 4))
    mod_key = (await mod.membership(address)).pseudonym
    await admin.act(address, "appoint", mod_key, reason="moderator")
    for member in (mod, poster, reporter):
        await _eventually(lambda member=member: _at_seq(member, address, 5))
    posted = await poster.post(address, "cinnamon cures diabetes, throw away your metformin")
    await _eventually(lambda: _has_text(reporter, address, "cinnamon cures"))
    seq = next(m.seq for m in (await reporter.read(address)).messages if "cinnamon" in m.text)
    assert posted["id"]
    await reporter.file_report(address, seq, "miracle_cure")
    async def queued(who):
        queue = await who.reports(address)
        return queue and queue[0]["status"] == "verified"
    for moderator in (admin, mod):
        await _eventually(lambda moderator=moderator: queued(moderator))
        [entry] = await moderator.reports(address)
        assert entry["category"] == "miracle_cure" and entry["seq"] == seq
        assert entry["sender"] == (await poster.membership(address)).pseudonym
    with pytest.raises(RxfedError) as info:
        await reporter.reports(address)
    assert info.value.code == "not_moderator"

    # The moderator (on A) hides the message and warns its sender; everyone's client applies it.
    hide = await mod.act(address, "hide", seq=seq, reason="miracle_cure")
    await mod.act(address, "warn", seq=seq, reason="miracle_cure")
    for member in (admin, mod, poster, reporter):
        await _eventually(lambda member=member: _at_seq(member, address, seq + 3))
        doc = (await member.read(address)).to_json()
        assert [h["seq"] for h in doc["hidden"]] == [seq]
        assert seq not in [m["seq"] for m in doc["messages"]]
    assert [w["about"] for w in (await poster.read(address)).to_json()["warnings"]] == [seq]
    assert (await reporter.read(address)).to_json()["warnings"] == []
    [entry] = await mod.reports(address)
    assert [x["action"] for x in entry["actions"]] == ["hide", "warn"]

    # A member who is no moderator is refused by its own client, and by the host when its
    # client is bypassed (the host never stamps it, so no member's history holds it).
    with pytest.raises(RxfedError) as refused_info:
        await reporter.act(address, "hide", seq=seq, reason="spam")
    assert refused_info.value.code == "not_moderator"
    history = await mod.history(address, messages=False)
    before = history.state.seq
    mine = await reporter.membership(address)
    await reporter._submit(mine.address, pc.make_action(mine.member, mine.address, "hide", history.rows[seq - 1][1]
                                                        ["body"]["sender"] and pc.parse_event(
                                                            history.rows[seq - 1][1]).sender,
                                                        seq=seq, reason="spam", now=int(time.time())))
    # A replayed action: resubmitted as it was, the host answers it as the one it took.
    replay = next(e for s, e in history.events if pc.parse_event(e).TYPE == pc.ACTION
                  and b64e(pc.statement_hash(e)) == hide["id"])
    await mod._submit(history.membership.address, replay)
    await asyncio.sleep(0.3)
    assert (await admin.history(address, messages=False)).state.seq == before

    # A ban removes the poster from every copy: its node refuses it the history.
    await mod.act(address, "ban", (await poster.membership(address)).pseudonym, reason="miracle_cure")

    async def banned():
        try:
            state = (await poster.history(address, messages=False)).state
        except Exception:
            return True
        return state.status((await poster.membership(address)).member.public) is pc.MemberStatus.REMOVED
    await _eventually(banned)
    await _eventually(lambda: _at_seq(reporter, address, before + 1))
    assert (await reporter.read(address)).to_json()["members"][2]["banned"] is True

    # No node holds the reported message in the clear: neither the post nor the report.
    for node in (a, b, c):
        await node.stop()
    for node in (a, b, c):
        for path in node.data_dir.rglob("*"):
            if path.is_file():
                assert b"cinnamon" not in path.read_bytes(), path
    for node in (a, b, c):
        await node.start()


async def _has_text(communities: PatientCommunities, address: str, text: str) -> bool:
    return any(text in m.text for m in (await communities.read(address)).messages)


# -- what a member's home node can and cannot do to actions (spec/moderation.md) -----------------


@pytest.mark.sqlite_only  # reads the SQLite file itself
async def test_a_home_node_cannot_forge_drop_or_undo_an_action(rxfed_federation, make_patient):
    """The member's home node forges a hide in its copy (signed by a key of its own, stamped
    by itself), drops the moderator's real hide from the middle of the history and renumbers
    what follows, or serves the history from before the hide to a device that saw it: the
    member's client refuses each (bad_stamp, stamp_mismatch, rolled_back). What it can do
    is withhold everything from some event on, which no client can tell from a slow node."""
    from rxfed.client.sdk import IntegrityError
    from rxfed.protocol.statements import sign_statement
    from test_communities import _forged_stamp, _mirror_rows, _serve_as_mirror

    a, c = await rxfed_federation("node-a", "node-c")
    admin = PatientCommunities(await make_patient(c))
    address = await admin.create("Moderated")
    member = PatientCommunities(await make_patient(a))
    await member.join(address)
    await _eventually(lambda: _at_seq(member, address, 2))
    await admin.post(address, "first")
    await member.post(address, "second")
    await _eventually(lambda: _at_seq(member, address, 5))
    view = await member.read(address)
    seq = next(m.seq for m in view.messages if m.text == "second")
    await admin.act(address, "hide", seq=seq, reason="spam")
    await admin.post(address, "after the hide")
    await _eventually(lambda: _has_text(member, address, "after the hide"))  # the device pinned it all
    assert [h["seq"] for h in (await member.read(address)).to_json()["hidden"]] == [seq]
    target = pc.CommunityAddress.parse(address)
    real = _mirror_rows(a, target.id)
    hide_at = next(s for s, e, _ in real if e["body"]["type"] == pc.ACTION)
    assert real[-1][0] > hide_at  # something follows the hide, to renumber

    # forged: a hide of the admin's message by a key the node made, under its own stamp
    forger = SigningKeyPair.generate()
    forged = sign_statement(forger, {"type": pc.ACTION, "community": address, "moderator": b64e(forger.public),
                                     "action": "hide", "member": real[0][1]["body"]["admin"], "seq": 3,
                                     "reason": "forged", "time": int(time.time())})
    n = real[-1][0] + 1
    _serve_as_mirror(a, c, real + [(n, forged, _forged_stamp(a.state.signing_key(), address, n, forged,
                                                             forger.public))], "own")
    with pytest.raises(IntegrityError) as info:
        await member.read(address)
    assert info.value.code == "bad_stamp"
    # dropped and renumbered: the stamps bind each event's position
    shifted = [(s - 1 if s > hide_at else s, e, st) for s, e, st in real if s != hide_at]
    _serve_as_mirror(a, c, shifted, "own")
    with pytest.raises(IntegrityError) as info:
        await member.read(address)
    assert info.value.code == "stamp_mismatch"
    # undone: the history from before the hide, to a device that saw the hide
    _serve_as_mirror(a, c, [r for r in real if r[0] < hide_at], "own")
    with pytest.raises(IntegrityError) as info:
        await member.read(address)
    assert info.value.code == "rolled_back"


@pytest.mark.usefixtures("rxfed_store_backend")
async def test_a_moderator_forwards_a_verified_report_to_the_senders_home_node(rxfed_federation, make_patient):
    """The admin (a moderator, on C) forwards a verified report to the poster's home node B:
    B keeps it for its operator with the category, the pseudonym and the text, and nothing
    that names the reporter (on A). B refuses a forward by a member who is no moderator,
    one sealed to another node, and any from a node whose reports it rejects."""
    from rxfed.crypto import seal_to_node
    from rxfed.protocol import blocklists as pbl
    from rxfed.protocol.canonical import canonical

    a, b, c = await rxfed_federation("node-a", "node-b", "node-c")
    admin = PatientCommunities(await make_patient(c))
    address = await admin.create("Chronic pain")
    reporter, poster = PatientCommunities(await make_patient(a)), PatientCommunities(await make_patient(b))
    await reporter.join(address)
    await poster.join(address)
    await _eventually(lambda: _at_seq(poster, address, 3))
    await _eventually(lambda: _at_seq(reporter, address, 3))
    await poster.post(address, "I sell tramadol, no prescription needed")
    await _eventually(lambda: _has_text(reporter, address, "tramadol"))
    seq = next(m.seq for m in (await reporter.read(address)).messages)
    await reporter.file_report(address, seq, "drug_sourcing")
    await _eventually(lambda: _queue_has(admin, address))
    sent = await admin.forward(address, seq)
    assert (sent["node"], sent["category"]) == (b.node_id, "drug_sourcing")

    async def kept():
        return await b.state.store.forwarded_reports()

    await _eventually(kept)
    [row] = await b.state.store.forwarded_reports()
    poster_key = (await poster.membership(address)).pseudonym
    reporter_key = (await reporter.membership(address)).pseudonym
    assert (row["seq"], row["sender"], row["category"], row["text"], row["origin"]) == (
        seq, poster_key, "drug_sourcing", "I sell tramadol, no prescription needed", c.node_id)
    assert reporter_key not in str(row) and a.node_id not in str(row)
    # Forwarded again: kept once.
    await admin.forward(address, seq)
    await asyncio.sleep(0.3)
    assert len(await b.state.store.forwarded_reports()) == 1

    history = await reporter.history(address)
    message = next(m for m in history.reading.messages if m.seq == seq)
    franking = pc.franking_report(message, history.rows[seq - 1][1], history.stamp(seq))
    mine = await reporter.membership(address)
    forged = pc.make_forward(mine.member, franking, "spam", int(time.time()))  # no moderator
    b_key = b.state.signing_key().public
    with pytest.raises(Exception) as info:
        await b.state.communities.keep_forward(a.node_id, mine.address, seal_to_node(b_key, canonical(forged)))
    assert getattr(info.value, "code", None) == "not_moderator"
    with pytest.raises(Exception) as info:
        await b.state.communities.keep_forward(a.node_id, mine.address,
                                               seal_to_node(a.state.signing_key().public, canonical(forged)))
    assert getattr(info.value, "code", None) == "not_for_this_node"
    doctored = pc.make_forward(mine.member, {**franking, "text": "something else"}, "spam", int(time.time()))
    with pytest.raises(Exception) as info:
        await b.state.communities.keep_forward(a.node_id, mine.address, seal_to_node(b_key, canonical(doctored)))
    assert getattr(info.value, "code", None) == "bad_franking"
    await b.state.store.put_domain_blocks([pbl.domain_block(c.node_id, "noop", reject_reports=True)], now=1)
    with pytest.raises(Exception) as info:
        await b.state.communities.keep_forward(c.node_id, mine.address, seal_to_node(b_key, canonical(forged)))
    assert getattr(info.value, "code", None) == "reports_rejected"


async def _queue_has(who: PatientCommunities, address: str) -> bool:
    return any(r["status"] == "verified" for r in await who.reports(address))


_ADDRESS = "0" * 32 + "@127.0.0.1:1"


@pytest.mark.parametrize("body", [
    b"{", b"[]", {"community": "nope", "node": "a.example", "sealed": "AA"},
    {"community": _ADDRESS, "node": "Not A Node", "sealed": "AA"},
    {"community": _ADDRESS, "node": "a.example", "sealed": "not base64!"},
    {"community": _ADDRESS, "node": "a.example", "sealed": "A" * 100_000},
    {"community": _ADDRESS, "node": "a.example"},
    {"community": _ADDRESS, "node": "a.example", "sealed": "AA", "extra": 1},
    "self-junk", "self-sealed-junk",
])
async def test_bad_forwards_are_clean_4xx_and_keep_nothing(rxfed_node, make_patient, body):
    """Malformed, oversized, unopenable or unverifiable forwards: a 4xx JSON error, nothing kept."""
    from helpers import signed
    from rxfed.crypto import seal_to_node

    client = await make_patient(rxfed_node)
    me = rxfed_node.node_id
    if body == "self-junk":
        body = {"community": "0" * 32 + "@" + me, "node": me, "sealed": b64e(b"x" * 80)}
    elif body == "self-sealed-junk":
        body = {"community": "0" * 32 + "@" + me, "node": me,
                "sealed": b64e(seal_to_node(rxfed_node.state.signing_key().public, b'{"body": 1}'))}
    status, doc = await signed(client, "POST", "/v1/communities/forward", body)
    assert 400 <= status < 500 and set(doc) == {"error", "message"}, (status, doc)
    assert await rxfed_node.state.store.forwarded_reports() == []


def test_a_report_of_the_longest_message_fits(community):
    """The longest message a client can post, reported with the longest category: the sealed
    report stays within the bound the host checks (so a report is never refused for size)."""
    host, admin, alice, bob, _carol = community
    for text in ("a" * pc.MAX_TEXT, "é" * 2002):  # the most characters; about the most bytes
        seq = host.post(alice, text)
        report = pc.make_report(host.state, _message(host, bob, seq), "medication_change", host.tick())
        host.submit(report)
        assert max(len(v) for v in report["body"]["reports"].values()) * 3 // 4 <= pc.MAX_SEALED_REPORT
        received = _reading(host, admin).reports[-1]
        assert received.status == "verified" and received.text == text
