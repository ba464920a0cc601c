"""Community events and state, two in-memory sides: a host that validates and stamps, and
members who build events and read messages. No network."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rxfed.crypto import BoxKeyPair, SigningKeyPair, b64d, b64e
from rxfed.crypto.groups import SenderKey, seal_message
from rxfed.errors import BadRequest, Conflict, Forbidden
from rxfed.protocol.community import (
    About,
    CommunityAddress,
    CommunityState,
    HistoryPin,
    HostStamp,
    MemberStatus,
    make_rekey,
    check_timely,
    franking_report,
    make_approve,
    make_create,
    make_join,
    make_leave,
    make_message,
    make_remove,
    make_sender_key,
    open_franking_report,
    parse_event,
    read_history,
    read_messages,
    stamp,
    verify_franking_report,
    verify_stamp,
)
from rxfed.protocol.statements import sign_statement

HOST = "127.0.0.1:8470"
HOST_KEY = SigningKeyPair.generate()


class Person:
    """A patient's client in one community: its member key, box key and home node."""

    def __init__(self, node: str = "home.example"):
        self.key = SigningKeyPair.generate()
        self.box = BoxKeyPair.generate()
        self.node = node
        self.sender_key: SenderKey | None = None

    @property
    def public(self) -> bytes:
        return self.key.public


class Host:
    """The host node's side: apply each event to the state, stamp it, keep the log."""

    def __init__(self, admin: Person, *, approval: bool = False):
        self.now = 1_700_000_000
        create = make_create(admin.key, admin.box.public, HOST, about=About.new("Epilepsy support", "G40"),
                             approval=approval, node=admin.node, now=self.now)
        self.address = parse_event(create).community
        self.state = CommunityState.empty(self.address)
        self.log: list[tuple[int, dict]] = []
        self.stamps: dict[int, dict] = {}
        self.submit(create)

    def tick(self) -> int:
        self.now += 1
        return self.now

    def submit(self, event: dict) -> int:
        state, parsed = self.state.step(event, seq=self.state.seq + 1)
        signer = state.meta.admin if parsed.author is None else None
        self.stamps[state.seq] = stamp(HOST_KEY, self.address, state.seq, event, self.tick(), signer=signer)
        self.state = state
        self.log.append((state.seq, event))
        return state.seq

    def join(self, person: Person) -> int:
        return self.submit(make_join(person.key, person.box.public, self.address, person.node, self.tick()))

    def rotate(self, person: Person) -> None:
        key = SenderKey.generate(self.state.next_epoch(person.public))
        self.submit(make_sender_key(person.key, self.state, key, self.address))
        person.sender_key = key

    def post(self, person: Person, text: str) -> int:
        if self.state.needs_sender_key(person.public):
            self.rotate(person)
        event, _ = make_message(person.key, person.sender_key, self.address, text, self.tick())
        return self.submit(event)

    def read(self, person: Person) -> list[str]:
        return [m.text for m in read_messages(self.log, person.key, person.box)]


def refused(host: Host, event: dict, error: type, code: str, *, seq: int | None = None) -> None:
    with pytest.raises(error) as info:
        host.state.apply(event, seq=seq or host.state.seq + 1)
    assert info.value.code == code


# -- scenario ------------------------------------------------------------------------------


def test_open_community_keys_follow_membership():
    admin, a, c = Person("hospital.example"), Person("a.example"), Person("c.example")
    host = Host(admin)
    assert host.state.members[b64e(admin.public)].status is MemberStatus.JOINED
    host.join(a)
    assert [m.member for m in host.state.joined()] == [admin.public, a.public]
    assert host.state.member_nodes() == {"hospital.example", "a.example"}

    host.post(admin, "welcome")
    host.post(a, "hello, new here")
    assert host.read(admin) == host.read(a) == ["welcome", "hello, new here"]

    host.submit(make_leave(a.key, host.address, host.tick()))
    assert host.state.member_nodes() == {"hospital.example"}
    # The admin's key was made for the old membership: it must rotate before posting.
    stale, _ = make_message(admin.key, admin.sender_key, host.address, "after A left", host.tick())
    refused(host, stale, Conflict, "rotate_sender_key")
    host.post(admin, "after A left")
    # A left: handed every event, it still reads only what was sent while it was a member.
    assert host.read(a) == ["welcome", "hello, new here"]

    host.join(c)
    host.post(admin, "welcome C")
    host.post(c, "hi all")
    # C joined late: it reads nothing from before.
    assert host.read(c) == ["welcome C", "hi all"]
    assert host.read(admin) == ["welcome", "hello, new here", "after A left", "welcome C", "hi all"]
    assert read_history(host.log, c.key, c.box).unreadable == ()


def test_approval_community_pending_until_approved():
    admin, a, b = Person(), Person("a.example"), Person("b.example")
    host = Host(admin, approval=True)
    host.join(a)
    host.submit(make_approve(admin.key, host.address, a.public, host.tick()))
    host.join(b)
    assert host.state.status(b.public) is MemberStatus.PENDING
    assert "b.example" in host.state.member_nodes()  # pending members get events fanned out
    version = host.state.version

    host.post(a, "before B is approved")
    # A pending member receives no key, and may neither post nor distribute one.
    assert b64e(b.public) not in parse_event(host.log[-2][1]).keys
    b.sender_key = SenderKey.generate(1)
    refused(host, make_sender_key(b.key, host.state, b.sender_key), Forbidden, "not_a_member")
    # Only the admin approves: A's signature does not verify as the admin's.
    refused(host, sign_statement(a.key, parse_event(make_approve(admin.key, host.address, b.public, 1)).signed["body"]),
            Forbidden, "bad_statement_signature")

    host.submit(make_approve(admin.key, host.address, b.public, host.tick()))
    assert host.state.status(b.public) is MemberStatus.JOINED and host.state.version == version + 1
    host.post(a, "welcome B")
    host.post(b, "thanks")
    assert host.read(b) == ["welcome B", "thanks"]
    assert host.read(a) == ["before B is approved", "welcome B", "thanks"]
    refused(host, make_approve(admin.key, host.address, b.public, host.tick()), Conflict, "not_pending")


def test_removed_member_and_admin_rules():
    admin, a, b = Person(), Person(), Person()
    host = Host(admin)
    host.join(a)
    host.join(b)
    host.post(b, "spam")
    host.submit(make_remove(admin.key, host.address, b.public, host.tick()))
    host.post(a, "after removal")
    assert host.read(b) == ["spam"]
    assert host.state.status(b.public) is MemberStatus.REMOVED
    # A member key that left or was removed cannot join again; its client makes a new one.
    refused(host, make_join(b.key, b.box.public, host.address, b.node, host.tick()), Conflict, "already_member")
    refused(host, make_remove(admin.key, host.address, admin.public, host.tick()), Conflict,
            "admin_cannot_remove_self")
    # A member cannot remove another.
    body = parse_event(make_remove(admin.key, host.address, a.public, 1)).signed["body"]
    refused(host, sign_statement(a.key, body), Forbidden, "bad_statement_signature")

    host.submit(make_leave(admin.key, host.address, host.tick()))
    refused(host, make_remove(admin.key, host.address, a.public, host.tick()), Forbidden, "not_admin")
    host.post(a, "still here")
    assert host.read(a)[-1] == "still here"


def test_member_cannot_forge_another_members_message():
    admin, a = Person(), Person()
    host = Host(admin)
    host.join(a)
    host.post(admin, "real")
    host.post(a, "mine")
    # A holds the admin's sender key (every member does), so it can encrypt "as" the admin,
    # but the event must be signed by the sender it names.
    forged, _ = make_message(a.key, admin.sender_key, host.address, "stop your medication", host.tick())
    body = dict(parse_event(forged).signed["body"], sender=b64e(admin.public))
    refused(host, sign_statement(a.key, body), Forbidden, "bad_statement_signature")
    # Nor can it re-sign the admin's ciphertext as its own: the AD binds the sender.
    theirs = dict(host.log[-3][1]["body"], sender=b64e(a.public), epoch=a.sender_key.epoch, sent=host.tick())
    seq = host.submit(sign_statement(a.key, theirs))
    assert seq not in [m.seq for m in read_messages(host.log, admin.key, admin.box)]


def test_forged_duplicated_and_out_of_order_events_refused():
    admin, a, other = Person(), Person(), Person()
    host = Host(admin)
    host.join(a)
    host.post(a, "one")
    message = host.log[-1][1]
    create = host.log[0][1]

    refused(host, make_leave(a.key, host.address, host.tick()), Conflict, "out_of_order", seq=host.state.seq + 2)
    refused(host, make_leave(a.key, host.address, host.tick()), Conflict, "out_of_order", seq=host.state.seq)
    refused(host, create, Conflict, "already_created")
    refused(host, make_join(a.key, a.box.public, host.address, a.node, host.tick()), Conflict, "already_member")
    refused(host, message, Conflict, "duplicate_message")
    refused(host, host.log[-2][1], Conflict, "stale_epoch")  # replayed sender key
    older, _ = make_message(a.key, a.sender_key, host.address, "older", host.now - 5)
    refused(host, older, Conflict, "stale_message")
    refused(host, make_leave(other.key, host.address, host.tick()), Conflict, "not_a_member")
    stranger, _ = make_message(other.key, a.sender_key, host.address, "hi", host.tick())
    refused(host, stranger, Forbidden, "not_a_member")

    elsewhere = CommunityAddress("f" * 32, HOST)
    refused(host, make_leave(a.key, elsewhere, host.tick()), BadRequest, "wrong_community")
    tampered = {"body": dict(message["body"], sent=message["body"]["sent"] + 1), "sig": message["sig"]}
    refused(host, tampered, Forbidden, "bad_statement_signature")
    refused(host, {"body": {"type": "rxfed.community.nope"}, "sig": message["sig"]}, BadRequest, "bad_event")
    with pytest.raises(Conflict) as info:
        CommunityState.empty(host.address).apply(host.log[1][1], seq=1)
    assert info.value.code == "not_created"


def test_sender_key_must_go_to_exactly_the_joined_members():
    admin, a, b = Person(), Person(), Person()
    host = Host(admin)
    host.join(a)
    key = SenderKey.generate(1)
    made_before_b = make_sender_key(a.key, host.state, key)
    host.join(b)
    refused(host, made_before_b, Conflict, "membership_changed")
    good = make_sender_key(a.key, host.state, key)
    body = good["body"]
    fewer = dict(body, keys={k: v for k, v in body["keys"].items() if k != b64e(b.public)})
    refused(host, sign_statement(a.key, fewer), Conflict, "wrong_recipients")
    host.submit(good)
    refused(host, make_sender_key(a.key, host.state, key), Conflict, "stale_epoch")


def test_message_ciphertext_must_be_padded_and_bounded():
    admin = Person()
    host = Host(admin)
    host.rotate(admin)
    event, _ = make_message(admin.key, admin.sender_key, host.address, "x", host.tick())
    body = event["body"]
    unpadded = seal_message(admin.sender_key, b"", b"x")[:-1]
    with pytest.raises(BadRequest) as info:
        parse_event(sign_statement(admin.key, dict(body, ciphertext=b64e(unpadded))))
    assert info.value.code == "unpadded_message"
    make_message(admin.key, admin.sender_key, host.address, "a" * 4000, host.tick())
    with pytest.raises(BadRequest):
        make_message(admin.key, admin.sender_key, host.address, "a" * 4001, host.tick())
    with pytest.raises(BadRequest) as info:
        make_message(admin.key, admin.sender_key, host.address, "\u00e9" * 4000, host.tick())
    assert info.value.code == "message_too_long"


# -- stamps and franking -------------------------------------------------------------------


def test_host_stamp():
    admin, a = Person(), Person()
    host = Host(admin, approval=True)
    host.join(a)
    seq = host.submit(make_approve(admin.key, host.address, a.public, host.tick()))
    event, stamped = host.log[-1][1], host.stamps[seq]
    rotated = SigningKeyPair.generate().public
    parsed = verify_stamp([rotated, HOST_KEY.public], stamped, event)
    assert (parsed.seq, parsed.sender, parsed.commitment) == (seq, admin.public, None)
    with pytest.raises(Forbidden):
        verify_stamp([rotated], stamped, event)
    with pytest.raises(Forbidden):
        verify_stamp([HOST_KEY.public], stamped, host.log[0][1])
    # a key retired before the stamp's time stamps nothing (member nodes check validity)
    from rxfed.protocol.community import check_stamped

    when = stamped["body"]["time"]
    check_stamped([HOST_KEY.public], stamped, event, lambda key, t: t <= when)
    with pytest.raises(Forbidden) as info:
        check_stamped([HOST_KEY.public], stamped, event, lambda key, t: t < when)
    assert info.value.code == "bad_stamp"
    with pytest.raises(BadRequest):  # the admin signed it; the host must say so
        stamp(HOST_KEY, host.address, seq, event, host.now)
    with pytest.raises(Forbidden):
        stamp(HOST_KEY, host.address, seq, event, host.now, signer=a.public)
    assert HostStamp.from_json(stamped, "stamp", [HOST_KEY.public]).event == parsed.event
    # Stamps are always checked: no key to check against is a refusal, never a pass.
    with pytest.raises(Forbidden):
        HostStamp.from_json(stamped, "stamp", [])
    with pytest.raises(Forbidden):
        verify_stamp([], stamped, event)


@pytest.fixture
def reported():
    admin, a = Person(), Person()
    host = Host(admin)
    host.join(a)
    seq = host.post(admin, "stop taking your insulin, cinnamon cures it")
    (message,) = read_messages(host.log, a.key, a.box)
    assert message.seq == seq
    return franking_report(message, host.log[-1][1], host.stamps[seq]), admin, host, message


def test_franking_report_verifies(reported):
    report, admin, _, _ = reported
    assert verify_franking_report(report, [HOST_KEY.public])
    facts = open_franking_report(report, [HOST_KEY.public])
    assert facts.sender == admin.public and facts.text.startswith("stop taking")


@pytest.mark.parametrize("tamper", [
    lambda r: dict(r, text="something else"),
    lambda r: dict(r, franking_key=b64e(b"\1" * 32)),
    lambda r: dict(r, stamp=sign_statement(SigningKeyPair.generate(), r["stamp"]["body"])),
    lambda r: dict(r, event={"body": dict(r["event"]["body"], sent=1), "sig": r["event"]["sig"]}),
    lambda r: {k: v for k, v in r.items() if k != "stamp"},
])
def test_tampered_franking_report_fails(reported, tamper):
    report, _, _, _ = reported
    assert not verify_franking_report(tamper(report), [HOST_KEY.public])


def test_franking_report_of_another_event_refused(reported):
    _, _, host, message = reported
    with pytest.raises(BadRequest):
        franking_report(message, host.log[0][1], host.stamps[1])
    # A report pairing the message with another event's stamp does not verify either.
    mixed = franking_report(message, host.log[-1][1], host.stamps[1])
    assert not verify_franking_report(mixed, [HOST_KEY.public])


def test_a_message_whose_commitment_does_not_open_is_not_a_message():
    """Shown, it could never be reported: a reader gets it as an unreadable item instead."""
    admin, a = Person(), Person()
    host = Host(admin)
    host.join(a)
    host.rotate(admin)
    event, _ = make_message(admin.key, admin.sender_key, host.address, "hello", host.tick())
    body = dict(event["body"], commitment=b64e(b"\0" * 32))
    seq = host.submit(sign_statement(admin.key, body))
    host.post(admin, "fine")
    assert [m.text for m in read_messages(host.log, a.key, a.box)] == ["fine"]
    reading = read_history(host.log, a.key, a.box)
    assert [m.text for m in reading.messages] == ["fine"]
    assert [(u.seq, u.sender, u.reason) for u in reading.unreadable] == [(seq, admin.public, "bad_franking")]


# -- addresses and time --------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "0123456789abcdef0123456789abcdef@127.0.0.1:8470",
    "0123456789abcdef0123456789abcdef@hospital.example",
    "0123456789abcdef0123456789abcdef@[::1]:8470",
    "0123456789abcdef0123456789abcdef@node-1.example.org:443",
])
def test_address_parse(text):
    assert str(CommunityAddress.parse(text)) == text


@pytest.mark.parametrize("text", [
    "", "@", "0123456789abcdef0123456789abcdef", "0123456789ABCDEF0123456789abcdef@h.example",
    "0123456789abcdef0123456789abcde@h.example", "0123456789abcdef0123456789abcdef@",
    "0123456789abcdef0123456789abcdef@Hospital.example", "0123456789abcdef0123456789abcdef@h.example:0",
    "0123456789abcdef0123456789abcdef@h.example:65536", "0123456789abcdef0123456789abcdef@[::g]:1",
    "0123456789abcdef0123456789abcdef@a@b", "0123456789abcdef0123456789abcdef@-h.example",
    "0123456789abcdef0123456789abcdef@h..example", "0123456789abcdef0123456789abcdef@h.example/x", None, 7,
])
def test_address_junk_refused(text):
    with pytest.raises(BadRequest) as info:
        CommunityAddress.parse(text)
    assert info.value.code == "bad_address"


@given(st.text(max_size=60))
def test_address_parse_never_crashes(text):
    try:
        assert str(CommunityAddress.parse(text)) == text
    except BadRequest:
        pass


def test_check_timely():
    admin = Person()
    host = Host(admin)
    event = make_leave(admin.key, host.address, 1000)
    check_timely(event, 1200)
    with pytest.raises(BadRequest):
        check_timely(event, 1400)


# -- property: who can read what -----------------------------------------------------------

_ops = st.lists(st.tuples(st.sampled_from(["join", "leave", "post"]), st.integers(0, 3)), max_size=14)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ops)
def test_members_read_exactly_what_was_sent_while_they_were_joined(ops):
    admin = Person()
    people = [Person() for _ in range(4)]
    host = Host(admin)
    expected: dict[int, list[str]] = {i: [] for i in range(4)}
    admin_expected: list[str] = []
    for n, (op, i) in enumerate(ops):
        person, status = people[i], host.state.status(people[i].public)
        if op == "join" and status is None:
            host.join(person)
        elif op == "leave" and status is MemberStatus.JOINED:
            host.submit(make_leave(person.key, host.address, host.tick()))
        elif op == "post":
            sender = person if status is MemberStatus.JOINED else admin
            text = f"message {n}"
            host.post(sender, text)
            admin_expected.append(text)
            for j, p in enumerate(people):
                if host.state.status(p.public) is MemberStatus.JOINED:
                    expected[j].append(text)
    assert host.read(admin) == admin_expected
    for i, person in enumerate(people):
        assert host.read(person) == expected[i]


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=20),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["body", "sig", "type", "text", "event",
                                                                         "stamp", "franking_key", "community"]),
                                                        c, max_size=4),
    max_leaves=12,
)


@settings(max_examples=60)
@given(_json)
def test_junk_is_refused_cleanly(junk):
    assert not verify_franking_report(junk, [HOST_KEY.public])
    with pytest.raises(BadRequest):
        parse_event(junk)
    with pytest.raises((BadRequest, Forbidden)):
        verify_stamp([HOST_KEY.public], junk, junk)


# -- self-certifying addresses, listings, pins, read proofs ---------------------------------


def test_a_create_event_certifies_its_address():
    from rxfed.protocol.community import community_id

    admin = Person()
    host = Host(admin, approval=True)
    create = host.log[0][1]
    body = create["body"]
    assert host.address.id == community_id(HOST, body) and host.address.host == HOST
    # The admin re-signs another creation under the same address: refused, by the id alone.
    for changed in (dict(body, approval=False), dict(body, created=body["created"] + 1),
                    dict(body, admin_box=b64e(BoxKeyPair.generate().public)),
                    dict(body, community=f"{host.address.id}@other.example")):
        with pytest.raises(BadRequest) as info:
            parse_event(sign_statement(admin.key, changed))
        assert info.value.code == "bad_community_id"
    # Somebody else's key under the address is refused the same way.
    forger = SigningKeyPair.generate()
    with pytest.raises(BadRequest):
        parse_event(sign_statement(forger, dict(body, admin=b64e(forger.public))))


def test_the_create_event_names_no_condition():
    admin = Person()
    create = Host(admin).log[0][1]
    assert "condition" not in create["body"] and "name" not in create["body"]
    assert "G40" not in str(create) and "Epilepsy" not in str(create)


def test_listing_is_checked_against_the_create_event():
    from rxfed.protocol.community import Listing

    admin = Person()
    host = Host(admin, approval=True)
    about = About.new("Epilepsy support", "G40")
    create = make_create(admin.key, admin.box.public, HOST, about=about, approval=True, node=admin.node,
                         now=host.now)
    listing = Listing(parse_event(create), about, 3, host.now)
    doc = listing.to_json()
    again = Listing.from_json(doc)
    assert (again.about.name, again.about.condition, again.address) == ("Epilepsy support", "G40", listing.address)
    for doctored, code in ((dict(doc, name="Diabetes support"), "bad_about"), (dict(doc, condition="E11"), "bad_about"),
                           (dict(doc, about=b64e(b"\1" * 32)), "bad_about"),
                           (dict(doc, approval=False), "bad_listing"),
                           (dict(doc, address=str(host.address)), "bad_listing")):
        with pytest.raises((BadRequest, Forbidden)) as info:
            Listing.from_json(doctored)
        assert info.value.code == code
    forged = {"body": doc["create"]["body"], "sig": sign_statement(SigningKeyPair.generate(), {})["sig"]}
    with pytest.raises(Forbidden):
        Listing.from_json(dict(doc, create=forged))


def test_history_pin_accepts_only_extensions():
    from rxfed.crypto import sha256
    from rxfed.protocol.community import HistoryPin

    hashes = [sha256(bytes([i])) for i in range(5)]
    pin = HistoryPin().extend(hashes[:3])
    assert pin.seq == 3
    assert pin.extend(hashes[:3]) == pin
    longer = pin.extend(hashes)
    assert longer.seq == 5 and longer.extend(hashes) == longer
    with pytest.raises(Forbidden) as info:
        longer.extend(hashes[:4])
    assert info.value.code == "rolled_back"
    with pytest.raises(Forbidden) as info:
        longer.extend(hashes[:1] + [sha256(b"other")] + hashes[2:])
    assert info.value.code == "forked_history"
    with pytest.raises(Forbidden) as info:  # same length, another last event
        pin.extend(hashes[:2] + [sha256(b"other")])
    assert info.value.code == "forked_history"


def test_read_proof():
    from rxfed.errors import Unauthorized
    from rxfed.protocol.community import make_read_proof, open_read_proof

    admin = Person()
    host = Host(admin)
    proof = make_read_proof(admin.key, host.address, "home.example", 1000)
    assert open_read_proof(proof, host.address, node="home.example", now=1100) == admin.public
    with pytest.raises(Forbidden):
        open_read_proof(proof, host.address, node="other.example", now=1100)
    with pytest.raises(Unauthorized):
        open_read_proof(proof, host.address, node="home.example", now=2000)
    with pytest.raises(BadRequest):
        open_read_proof(proof, CommunityAddress("f" * 32, HOST), node="home.example", now=1100)
    other = SigningKeyPair.generate()
    with pytest.raises(Forbidden):  # signed by another key than the member it names
        open_read_proof(sign_statement(other, proof["body"]), host.address, node="home.example", now=1100)


def test_membership_change_for_mirrors():
    from rxfed.protocol.community import membership_change

    admin, a = Person(), Person()
    host = Host(admin)
    host.join(a)
    host.post(a, "hi")
    host.submit(make_leave(a.key, host.address, host.tick()))
    changes = [membership_change(parse_event(e)) for _, e in host.log]
    assert changes == [((admin.public, True),), ((a.public, True),), (), (), ((a.public, False),)]
    b, fresh = Person(), Person()
    host.join(b)
    host.submit(make_rekey(b.key, fresh.key, fresh.box.public, host.address, b.node, host.tick()))
    assert membership_change(parse_event(host.log[-1][1])) == ((b.public, False), (fresh.public, True))


def test_a_rekey_moves_the_seat_and_the_old_key_reads_nothing_later():
    """After a device is revoked its patient's member keys are replaced: the old key (which
    the revoked device held) leaves, the new one holds the seat (the admin's seat too), and
    the next sender keys go to the new key only."""
    admin, a = Person(), Person()
    host = Host(admin, approval=True)
    host.join(a)
    host.submit(make_approve(admin.key, host.address, a.public, host.tick()))
    host.post(a, "before")
    new_a, new_admin = Person(), Person()
    host.submit(make_rekey(a.key, new_a.key, new_a.box.public, host.address, a.node, host.tick()))
    host.submit(make_rekey(admin.key, new_admin.key, new_admin.box.public, host.address, admin.node, host.tick()))
    assert host.state.status(a.public) is MemberStatus.LEFT and host.state.status(new_a.public) is MemberStatus.JOINED
    assert host.state.meta.admin == new_admin.public
    host.post(new_a, "after")
    assert host.read(new_admin) == ["after"]  # a new key holds no sender key from before it
    assert "after" not in host.read(a)  # the old key holds no sender key of the new version
    assert "after" not in host.read(admin)
    # the old admin key can approve or remove nobody; the new one can
    b = Person()
    host.join(b)
    refused(host, make_approve(admin.key, host.address, b.public, host.tick()), Forbidden, "bad_statement_signature")
    host.submit(make_approve(new_admin.key, host.address, b.public, host.tick()))
    # a rekey needs the new key's proof, a current member, a new key and the same home node
    c = Person()
    forged = make_rekey(b.key, c.key, c.box.public, host.address, b.node, host.tick())
    forged["body"]["new_member"] = b64e(Person().public)
    forged = sign_statement(b.key, forged["body"])
    refused(host, forged, Forbidden, "bad_rekey_proof")
    refused(host, make_rekey(a.key, c.key, c.box.public, host.address, a.node, host.tick()), Conflict, "not_a_member")
    refused(host, make_rekey(b.key, new_a.key, new_a.box.public, host.address, b.node, host.tick()), Conflict,
            "already_member")
    refused(host, make_rekey(b.key, c.key, c.box.public, host.address, "elsewhere.example", host.tick()), Conflict,
            "rekey_moves_node")


def test_unreadable_messages_say_why():
    admin, a = Person(), Person()
    host = Host(admin)
    host.join(a)
    host.rotate(admin)
    # A ciphertext under another key: it does not decrypt.
    event, _ = make_message(admin.key, SenderKey.generate(admin.sender_key.epoch), host.address, "x", host.tick())
    undecryptable = host.submit(event)
    # A sender key sealed to A that does not open (garbage of the right length).
    body = parse_event(make_sender_key(admin.key, host.state, SenderKey.generate(2))).signed["body"]
    body = dict(body, keys={**body["keys"], b64e(a.public): b64e(b"\0" * len(b64d(body["keys"][b64e(a.public)])))})
    host.submit(sign_statement(admin.key, body))
    admin.sender_key = None
    broken, _ = make_message(admin.key, SenderKey.generate(2), host.address, "y", host.tick())
    broken_seq = host.submit(broken)
    reading = read_history(host.log, a.key, a.box)
    assert reading.messages == ()
    assert [(u.seq, u.reason) for u in reading.unreadable] == [(undecryptable, "undecryptable"),
                                                                 (broken_seq, "bad_sender_key")]
    assert all(u.explanation for u in reading.unreadable)


def test_a_pin_covers_exactly_the_history_it_folded():
    """What lets a device skip re-checking events it saw: the hash chain of the served
    prefix must end at the pinned head; any other event, order or length does not."""
    one, two, other = (bytes([i]) * 32 for i in (1, 2, 3))
    pin = HistoryPin().extend([one, two])
    assert pin.covers([one, two]) and HistoryPin().covers([])
    assert not pin.covers([one, other]) and not pin.covers([two, one]) and not pin.covers([one])
    assert not pin.covers([one, two, other])


def test_a_plain_post_does_not_load_the_report_and_directory_code():
    """Making a post never imports rxfed.protocol.community.extra (metadata, the directory,
    reports, franking reports, forwards): its classes stay off every post's start-up time,
    and the names are still reachable through rxfed.protocol.community."""
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
print("rxfed.protocol.community.extra" in sys.modules)
from rxfed.protocol.community import extra
names = ("About", "Listing", "ReceivedReport", "open_report", "ForwardedReport", "make_forward", "open_forward",
         "FrankingReport", "franking_report", "open_franking_report", "verify_franking_report")
print(all(getattr(pc, n) is getattr(extra, n) for n in names), sorted(set(names) - set(dir(pc))))
try:
    pc.NoSuchThing
except AttributeError:
    print("missing")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["False", "True []", "missing"]
