"""The parts of :mod:`rxfed.protocol.community` a post never needs: a community's name and
condition (:class:`About`), its listing in the host's directory (:class:`Listing`), reports
to moderators, franking reports and their forwarding to a sender's home node. Loaded on first
use (``rxfed.protocol.community`` re-exports every name here), so a plain post does not build
these classes."""

from __future__ import annotations

from typing import Any

import attrs

from rxfed.crypto import BoxKeyPair, DecryptionFailed, SigningKeyPair, b64e, open_signed
from rxfed.crypto.groups import FRANKING_KEY_SIZE, check_commitment, commitment, new_franking_key
from rxfed.crypto.records import unpad
from rxfed.errors import BadRequest, Forbidden, RxfedError
from rxfed.protocol.canonical import canonical, loads
from rxfed.protocol.community import (
    _CONDITION,
    _NAME,
    _TEXT,
    _TIME,
    CREATE,
    FRANKING_REPORT,
    MAX_MEMBERS,
    MAX_NAME,
    MAX_SEQ,
    MESSAGE,
    REPORT_CATEGORIES,
    REPORT_FORWARD,
    CommunityAddress,
    Create,
    Message,
    MessagePosted,
    Report,
    _boolean,
    _franked,
    _report_context,
    parse_event,
    verify_stamp,
)
from rxfed.protocol.schema import anything, b64, const, fields, integer, text
from rxfed.protocol.statements import open_statement, sign_statement

__all__ = ['About', 'ReceivedReport', 'open_report', 'ForwardedReport', 'make_forward', 'open_forward', 'Listing', 'FrankingReport', 'franking_report', 'open_franking_report', 'verify_franking_report']


@attrs.frozen
class About:
    """A community's name and condition (an ICD-10 category, or None) with the key of the
    commitment to them in its create event: ``HMAC-SHA256(key, canonical({"condition",
    "name"}))``, the construction of franking commitments. The host lists all three; every
    other node holds only the commitment."""

    name: str
    condition: str | None
    key: bytes = attrs.field(repr=False)

    SCHEMA = {"name": text(MAX_NAME, _NAME), "key": b64(FRANKING_KEY_SIZE)}
    OPTIONAL = {"condition": text(3, _CONDITION)}

    @classmethod
    def new(cls, name: str, condition: str | None) -> About:
        """Fresh metadata with a random commitment key (the names are checked)."""
        return cls.from_json({"name": name, "condition": condition, "key": b64e(new_franking_key())})

    @classmethod
    def from_json(cls, obj: Any, where: str = "about") -> About:
        f = fields(obj, where, cls.SCHEMA, cls.OPTIONAL)
        return cls(f["name"], f["condition"], f["key"])

    def to_json(self) -> dict:
        return {"name": self.name, "condition": self.condition, "key": b64e(self.key)}

    def _committed(self) -> bytes:
        return canonical({"condition": self.condition, "name": self.name})

    def commitment(self) -> bytes:
        return commitment(self.key, self._committed())

    def check(self, create: Create) -> About:
        """This metadata, if it is what ``create`` committed to; Forbidden otherwise."""
        if not check_commitment(self.key, self._committed(), create.about):
            raise Forbidden("this name and condition are not the ones the community's creator committed to",
                            code="bad_about")
        return self


@attrs.frozen
class ReceivedReport:
    """A report as one moderator reads it: ``status`` is ``verified`` (the text and franking
    key open the commitment of message ``seq``, which the host stamped and its sender
    signed) or ``refused`` (``reason``: ``bad_franking``, ``not_a_message``,
    ``undecryptable``). ``report_seq`` is the report's own place in the log."""

    report_seq: int
    time: int
    seq: int
    category: str | None
    text: str | None
    sender: bytes | None
    sent: int | None
    status: str
    reason: str | None = None
    franking_key: bytes | None = attrs.field(default=None, repr=False)

    def to_json(self) -> dict:
        return {"report": self.report_seq, "time": self.time, "seq": self.seq, "category": self.category,
                "text": self.text, "sender": b64e(self.sender) if self.sender else None, "sent": self.sent,
                "status": self.status, "reason": self.reason}


def open_report(address: CommunityAddress, report_seq: int, event: Report, me: SigningKeyPair, my_box: BoxKeyPair,
                messages: dict[int, MessagePosted]) -> ReceivedReport | None:
    """``event`` as moderator ``me`` reads it, checked against the message it names
    (``messages``: the log's message events by seq); None if it holds nothing for ``me``."""
    sealed = event.reports.get(b64e(me.public))
    if sealed is None:
        return None
    try:
        inner = unpad(open_signed(event.reporter, my_box, _report_context(address, me.public, event.reporter), sealed))
        f = fields(loads(inner), "report", {"category": text(32), "franking_key": b64(FRANKING_KEY_SIZE),
                                            "seq": integer(1, MAX_SEQ), "text": _TEXT})
    except (DecryptionFailed, BadRequest):
        return ReceivedReport(report_seq, event.time, 0, None, None, None, None, "refused", "undecryptable")
    category = f["category"] if f["category"] in REPORT_CATEGORIES else "other"
    posted = messages.get(f["seq"])
    if posted is None:
        return ReceivedReport(report_seq, event.time, f["seq"], category, f["text"], None, None, "refused",
                              "not_a_message")
    ok = check_commitment(f["franking_key"], _franked(address, posted.sender, f["text"], posted.sent),
                          posted.commitment)
    return ReceivedReport(report_seq, event.time, f["seq"], category, f["text"], posted.sender, posted.sent,
                          "verified" if ok else "refused", None if ok else "bad_franking",
                          f["franking_key"] if ok else None)


@attrs.frozen
class ForwardedReport:
    """A report a moderator forwarded to the sender's home node, checked: the host stamped
    message ``seq`` from ``sender``, its text is ``text``, and ``moderator`` (a member key)
    signed the decision to forward it, as ``category``. It names no reporter."""

    community: CommunityAddress
    seq: int
    sender: bytes
    text: str
    sent: int
    category: str
    moderator: bytes
    time: int


def make_forward(moderator: SigningKeyPair, report: dict, category: str, now: int) -> dict:
    """A moderator's decision to show a verified report to the sender's home node: the
    franking report (text, franking key, the sender-signed event and the host's stamp) and
    its category, signed by the moderator's member key. Sealed to that node's key
    (``seal_to_node``) before it leaves the device, so the nodes relaying it read nothing."""
    if category not in REPORT_CATEGORIES:
        raise BadRequest(f"category must be one of {', '.join(REPORT_CATEGORIES)}", code="bad_category")
    community = str(parse_event(report["event"]).community)
    return sign_statement(moderator, {"type": REPORT_FORWARD, "community": community, "category": category,
                                      "report": report, "moderator": b64e(moderator.public), "time": now})


def open_forward(obj: Any, host_public_keys: list[bytes]) -> ForwardedReport:
    """The facts of a forwarded report, if its moderator signed it and its franking report
    verifies under the host's keys; Forbidden or BadRequest otherwise. Whether the signer is
    a moderator of the community is for the receiver to check against its copy."""
    body = open_statement(obj, "forward", REPORT_FORWARD, None)
    f = fields(body, "forward", {"type": const(REPORT_FORWARD), "community": CommunityAddress.parse,
                                 "category": text(32, "|".join(REPORT_CATEGORIES)), "report": anything,
                                 "moderator": b64(32), "time": _TIME})
    open_statement(obj, "forward", REPORT_FORWARD, f["moderator"])
    facts = open_franking_report(f["report"], host_public_keys)
    if facts.community != f["community"]:
        raise BadRequest("the forwarded report is of another community's message", code="wrong_community")
    return ForwardedReport(facts.community, facts.seq, facts.sender, facts.text, facts.sent, f["category"],
                           f["moderator"], f["time"])


# -- the host's directory ------------------------------------------------------------------


@attrs.frozen
class Listing:
    """A community in its host's public directory: its create event, the name and
    condition it committed to, and how many members have joined. A client checks a listing
    before it joins (:meth:`from_json`), so it learns the admin and the rules from the event
    the address certifies, never from a node's say-so."""

    create: Create
    about: About
    members: int
    listed: int

    @property
    def address(self) -> CommunityAddress:
        return self.create.community

    @classmethod
    def from_json(cls, obj: Any, where: str = "community") -> Listing:
        f = fields(obj, where, {"address": CommunityAddress.parse, "name": anything, "condition": anything,
                                "about": anything, "approval": _boolean, "members": integer(0, MAX_MEMBERS),
                                "created": _TIME, "create": anything})
        create = parse_event(f["create"], f"{where}.create")
        if not isinstance(create, Create) or create.community != f["address"] or create.approval != f["approval"]:
            raise BadRequest(f"{where}.create is not the create event of {f['address']}", code="bad_listing")
        open_statement(f["create"], f"{where}.create", CREATE, create.admin)
        about = About.from_json({"name": f["name"], "condition": f["condition"], "key": f["about"]}, where)
        return cls(create, about.check(create), f["members"], f["created"])

    def to_json(self) -> dict:
        return {"address": str(self.address), "name": self.about.name, "condition": self.about.condition,
                "about": b64e(self.about.key), "approval": self.create.approval, "members": self.members,
                "created": self.listed, "create": self.create.signed}


# -- franking reports ----------------------------------------------------------------------


@attrs.frozen
class FrankingReport:
    """A verified report: the host stamped this message from ``sender`` at ``stamped``, and
    its committed text is ``text``."""

    community: CommunityAddress
    seq: int
    sender: bytes
    text: str
    sent: int
    stamped: int


def franking_report(message: Message, event: dict, stamp: dict) -> dict:
    """What a recipient hands a moderator: the text and franking key of ``message``, with the
    signed event and its host stamp. It reveals this one message and nothing else."""
    if getattr(parse_event(event), "commitment", None) != message.commitment:
        raise BadRequest("this event is not the reported message")
    return {"type": FRANKING_REPORT, "text": message.text, "franking_key": b64e(message.franking_key),
            "event": event, "stamp": stamp}


def open_franking_report(report: Any, host_public_keys: list[bytes]) -> FrankingReport:
    """The report's facts, if the host stamped the event, its sender signed it, and the text
    and franking key open its commitment; Forbidden or BadRequest otherwise."""
    f = fields(report, "report", {"type": const(FRANKING_REPORT), "text": _TEXT,
                                  "franking_key": b64(FRANKING_KEY_SIZE), "event": anything, "stamp": anything})
    stamped = verify_stamp(host_public_keys, f["stamp"], f["event"])
    event = parse_event(f["event"], "report.event")
    if not isinstance(event, MessagePosted):
        raise BadRequest("report.event is not a message", code="bad_event")
    open_statement(f["event"], "report.event", MESSAGE, event.sender)
    if not check_commitment(f["franking_key"], _franked(event.community, event.sender, f["text"], event.sent),
                            event.commitment):
        raise Forbidden("the reported text does not open the message's commitment", code="bad_franking")
    return FrankingReport(event.community, stamped.seq, event.sender, f["text"], event.sent, stamped.time)


def verify_franking_report(report: Any, host_public_keys: list[bytes]) -> bool:
    try:
        open_franking_report(report, host_public_keys)
    except RxfedError:
        return False
    return True
