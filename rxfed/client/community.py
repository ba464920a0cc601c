"""A patient's side of condition communities: per-community pseudonymous keys kept in the
encrypted vault, events built and signed on the device, messages read and decrypted here."""

from __future__ import annotations

import attrs

from rxfed.client.records import Record
from rxfed.client.sdk import PatientClient
from rxfed.crypto import BoxKeyPair, SigningKeyPair, b64d, b64e
from rxfed.crypto.groups import SenderKey
from rxfed.errors import BadRequest, NotFound
from rxfed.protocol import community as pc

KIND = "community"


@attrs.frozen
class Membership:
    """This patient's keys for one community (stored as a ``community`` record)."""

    address: pc.CommunityAddress
    member: SigningKeyPair = attrs.field(repr=False)
    box: BoxKeyPair = attrs.field(repr=False)
    name: str
    record_id: str

    @classmethod
    def from_record(cls, record: Record) -> Membership:
        d = record.data
        return cls(pc.CommunityAddress.parse(d["address"]), SigningKeyPair.from_seed(b64d(d["member_seed"])),
                   BoxKeyPair.from_secret(b64d(d["box_secret"])), d.get("name") or "", record.id)

    @staticmethod
    def data(address: pc.CommunityAddress, member: SigningKeyPair, box: BoxKeyPair, name: str) -> dict:
        return {"address": str(address), "member_seed": b64e(member.seed), "box_secret": b64e(box.secret),
                "name": name}

    @property
    def pseudonym(self) -> str:
        return b64e(self.member.public)


@attrs.frozen
class CommunityView:
    """What a member sees: the state, decrypted messages, and whether the node has caught up."""

    address: str
    name: str
    state: pc.CommunityState | None
    messages: tuple[pc.Message, ...]
    me: str

    def to_json(self) -> dict:
        members = []
        if self.state is not None:
            members = [{"member": m.member_b64, "node": m.node, "status": str(m.status), "me": m.member_b64 == self.me}
                       for m in self.state.members.values()]
        return {
            "address": self.address, "name": self.name, "me": self.me, "seq": self.state.seq if self.state else 0,
            "members": members,
            "messages": [{"seq": m.seq, "sender": b64e(m.sender), "mine": b64e(m.sender) == self.me, "text": m.text,
                          "sent": m.sent, "verified": m.verified} for m in self.messages],
        }


class Communities:
    """Community operations for one patient client."""

    def __init__(self, client: PatientClient):
        self.client = client

    def _now(self) -> int:
        return int(self.client.clock())

    async def memberships(self) -> list[Membership]:
        return [Membership.from_record(r) for r in await self.client.records(KIND)]

    async def membership(self, address: str) -> Membership:
        wanted = pc.CommunityAddress.parse(address)
        for m in await self.memberships():
            if m.address == wanted:
                return m
        raise NotFound(f"you are not a member of {address}", code="not_a_member")

    async def _submit(self, address: pc.CommunityAddress, event: dict) -> dict:
        return await self.client._call("POST", "/v1/communities/events", {"community": str(address), "event": event})

    async def events(self, address: pc.CommunityAddress) -> tuple[list[tuple[int, dict]], list[bytes]]:
        """Every event of the community the home node holds, in order, and the host's keys."""
        out: list[tuple[int, dict]] = []
        host_keys: list[bytes] = []
        while True:
            page = await self.client._call("GET", f"/v1/communities/{address.id}/events?after={out[-1][0] if out else 0}")
            host_keys = [b64d(k) for k in page["host_keys"]]
            for e in page["events"]:
                if host_keys:
                    pc.verify_stamp(host_keys, e["stamp"], e["event"])
                out.append((e["seq"], e["event"]))
            if len(page["events"]) < 1000:
                break
        # A mirror can hold a gap while the host catches it up: fold only the contiguous part.
        contiguous = [e for i, e in enumerate(out) if e[0] == i + 1]
        return contiguous, host_keys

    async def create(self, name: str, *, condition: str | None = None, approval: bool = False) -> str:
        node = self.client.identity.node_id
        address = pc.CommunityAddress.generate(node)
        member, box = SigningKeyPair.generate(), BoxKeyPair.generate()
        event = pc.make_create(member, box.public, address, name=name, condition=condition, approval=approval,
                               node=node, now=self._now())
        await self.client.add_record(KIND, Membership.data(address, member, box, name))
        await self._submit(address, event)
        return str(address)

    async def join(self, address: str, name: str = "") -> dict:
        target = pc.CommunityAddress.parse(address)
        for m in await self.memberships():
            if m.address == target:
                raise BadRequest(f"you are already a member of {address}", code="already_member")
        member, box = SigningKeyPair.generate(), BoxKeyPair.generate()
        event = pc.make_join(member, box.public, target, self.client.identity.node_id, self._now())
        await self.client.add_record(KIND, Membership.data(target, member, box, name))
        return await self._submit(target, event)

    async def approve(self, address: str, member: str) -> dict:
        mine = await self.membership(address)
        event = pc.make_approve(mine.member, mine.address, b64d(member, length=32), self._now())
        return await self._submit(mine.address, event)

    async def remove(self, address: str, member: str) -> dict:
        """Remove a member (admins): the next posts are sealed to the remaining members only."""
        mine = await self.membership(address)
        event = pc.make_remove(mine.member, mine.address, b64d(member, length=32), self._now())
        return await self._submit(mine.address, event)

    async def leave(self, address: str) -> dict:
        mine = await self.membership(address)
        result = await self._submit(mine.address, pc.make_leave(mine.member, mine.address, self._now()))
        state = await self.client.open_vault()
        await self.client._commit(state.state, [], deletes=[mine.record_id])
        return result

    async def post(self, address: str, text: str) -> dict:
        """Encrypt and post ``text``; first hands a fresh sender key to exactly the current
        members if the membership changed since this member's last key."""
        mine = await self.membership(address)
        events, _keys = await self.events(mine.address)
        if not events:
            raise NotFound("this node has not received the community yet; try again shortly", code="not_ready")
        state = pc.CommunityState.from_events(events)
        if state.status(mine.member.public) is not pc.MemberStatus.JOINED:
            raise BadRequest("you are not (yet) a joined member of this community", code="not_joined")
        key = await self._my_sender_key(state, events, mine)
        if key is None or state.needs_sender_key(mine.member.public):
            key = SenderKey.generate(state.next_epoch(mine.member.public))
            await self._submit(mine.address, pc.make_sender_key(mine.member, state, key))
        now = max(self._now(), state.last_sent(mine.member.public))
        message, _franking = pc.make_message(mine.member, key, mine.address, text, now)
        return await self._submit(mine.address, message)

    async def _my_sender_key(self, state: pc.CommunityState, events, mine: Membership) -> SenderKey | None:
        """My latest sender key, read back from my own distribution (sealed to me too), so
        any of my devices can go on posting with it."""
        return pc.own_sender_key(state, events, mine.member, mine.box)

    async def read(self, address: str) -> CommunityView:
        mine = await self.membership(address)
        events, _keys = await self.events(mine.address)
        if not events:
            return CommunityView(str(mine.address), mine.name, None, (), mine.pseudonym)
        state = pc.CommunityState.from_events(events)
        messages = pc.read_messages(events, mine.member, mine.box)
        return CommunityView(str(mine.address), state.meta.name, state, tuple(messages), mine.pseudonym)

    async def report(self, address: str, seq: int) -> dict:
        """A franking report of message ``seq`` this member received: its text and franking
        key with the sender-signed event and the host's stamp, so a moderator can check who
        sent what (:func:`rxfed.protocol.community.verify_franking_report`) while the node
        never learns any other message."""
        mine = await self.membership(address)
        events, _keys = await self.events(mine.address)
        message = next((m for m in pc.read_messages(events, mine.member, mine.box) if m.seq == seq), None)
        if message is None:
            raise NotFound(f"no message {seq} you can read in {address}", code="unknown_message")
        page = await self.client._call("GET", f"/v1/communities/{mine.address.id}/events?after={seq - 1}&limit=1")
        stored = page["events"][0]
        return pc.franking_report(message, stored["event"], stored["stamp"])

    @staticmethod
    async def directory(node_url: str) -> list[dict]:
        """The public communities a node hosts (no account needed)."""
        async with PatientClient._new_session() as session:
            doc = await PatientClient._http(session, "GET", node_url.rstrip("/") + "/v1/communities")
        return doc["communities"]
