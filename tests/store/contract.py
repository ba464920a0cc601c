"""The contract every storage backend passes. Backends are parametrised in conftest."""

from __future__ import annotations

import asyncio

import attrs
import pytest

from rxfed.consent.tokens import TokenOutcome
from rxfed.errors import BadRequest, Conflict, Forbidden, Gone, NotFound, QuotaExceeded, RateLimited, Unauthorized
from rxfed.protocol.canonical import canonical, loads
from rxfed.protocol.insights import outcome_table
from rxfed.store import (
    CommunityEvent,
    CommunityRow,
    GrantRow,
    Inbound,
    IssuedCredential,
    MatchingSession,
    NewPatient,
    Nonce,
    OperatorEntry,
    Quota,
    ReceivedToken,
    Recovery,
    Replayed,
    StoredRecord,
    TokenRow,
)

QUOTA = Quota(max_records=10, max_bytes=10_000)
_nonce = iter(range(10**9))


def nonce() -> Nonce:
    return Nonce(next(_nonce).to_bytes(16, "big"), 2**40)


def new_patient(n: int) -> NewPatient:
    b = bytes([n]) * 32
    return NewPatient(f"{n:032x}", b, f"d{n:031x}", b[:31] + b"d", b"cert", b"keyring",
                      Recovery(b[:31] + b"r", b"statement", b"root-bundle", b"recovery-keyring"), b"identity-1")


async def register(store, n: int, **kw) -> NewPatient:
    p = new_patient(n)
    await store.register_patient(p, invite_hash=kw.get("invite"), nonce=nonce(), now=1000)
    return p


async def commit(store, p: NewPatient, counter: int, puts=(), deletes=(), quota=QUOTA, n=None, epoch=1):
    return await store.commit(p.patient, signer=p.device, counter=counter, manifest=b"m%d" % counter,
                              puts=list(puts), deletes=list(deletes), quota=quota, nonce=n or nonce(), epoch=epoch)


class CommunityContract:
    """Communities in the store (mixed into :class:`StoreContract`)."""

    @staticmethod
    def row(host: str, name: str = "", about: bytes | None = None) -> CommunityRow:
        return CommunityRow("c" * 32, host, name, "G40" if name else None, False, bool(name), 0, 1000, about)

    async def test_communities_are_keyed_by_address(self, store):
        ev = [CommunityEvent(1, b"create", b"stamp1", ((b"A" * 32, True),)), CommunityEvent(2, b"msg", b"stamp2")]
        await store.append_community_events(self.row("host.example", "Group", b"k" * 32), ev, outbox=[], now=1)
        await store.apply_inbound("other.example", "txn-1", 1, results=b"[]",
                                  communities=[(self.row("other.example"), [CommunityEvent(5, b"x", b"s")])],
                                  outbox=[], nonce=nonce(), now=1)
        hosted = await store.community("c" * 32, "host.example")
        assert (hosted.name, hosted.condition, hosted.about, hosted.seq) == ("Group", "G40", b"k" * 32, 2)
        other = await store.community("c" * 32, "other.example")
        assert (other.name, other.condition, other.about, other.seq) == ("", None, None, 0)
        assert [e.event for e in await store.community_events("c" * 32, "host.example")] == [b"create", b"msg"]
        assert [e.event for e in await store.community_events("c" * 32, "other.example")] == [b"x"]
        assert [r.host for r in await store.communities(hosted_by="host.example")] == ["host.example"]
        # Later events leave the hosted row's name, condition and key as they were.
        await store.append_community_events(self.row("host.example"), [CommunityEvent(3, b"m", b"s")], outbox=[],
                                            now=2)
        hosted = await store.community("c" * 32, "host.example")
        assert (hosted.name, hosted.about, hosted.seq) == ("Group", b"k" * 32, 3)
        with pytest.raises(Conflict):
            await store.append_community_events(self.row("host.example"), [CommunityEvent(3, b"m", b"s")],
                                                outbox=[], now=2)

    async def test_who_may_read_a_copy_needs_no_order(self, store):
        row = self.row("host.example")
        leaver, stayer = b"L" * 32, b"S" * 32
        # The leave arrives before the join: the key may not read, whatever comes later.
        batches = [[CommunityEvent(4, b"leave", b"s", ((leaver, False),))],
                   [CommunityEvent(2, b"join", b"s", ((leaver, True),)),
                    CommunityEvent(3, b"join", b"s", ((stayer, True),))]]
        for i, events in enumerate(batches):
            await store.apply_inbound("host.example", f"txn-{i}", i + 1, results=b"[]",
                                      communities=[(row, events)], outbox=[], nonce=nonce(), now=1)
        assert await store.community_reader("c" * 32, "host.example", leaver) is False
        assert await store.community_reader("c" * 32, "host.example", stayer) is True
        assert await store.community_reader("c" * 32, "host.example", b"U" * 32) is None
        assert await store.community_reader("c" * 32, "other.example", stayer) is None


class OperatorContract:
    """Operator actions: account states, operator erasure, removed communities, the log
    (mixed into :class:`StoreContract`)."""

    @staticmethod
    def entry(action: str, subject: str) -> OperatorEntry:
        return OperatorEntry(7, action, subject, "alice", '{"why":"test"}')

    async def test_block_lists_cover_subdomains_and_keep_only_hashes(self, store):
        from rxfed.protocol import blocklists as pbl

        blocks = [pbl.domain_block("example.org", "silence", public_comment="spam, \"ads\""),
                  pbl.domain_block("bad.example.org", "suspend", reject_reports=True),
                  pbl.domain_block("other.example:8443", "noop", reject_media=True)]
        await store.put_domain_blocks(blocks, now=10, log=self.entry("block-import", "3 blocks"))
        assert await store.domain_blocks() == sorted(blocks, key=lambda b: b.domain)
        worst = await store.block_for("a.bad.example.org:8470")
        assert (worst.severity, worst.reject_reports, set(worst.domains)) == ("suspend", True,
                                                                                {"bad.example.org", "example.org"})
        assert (await store.block_for("example.org")).severity == "silence"
        assert await store.block_for("other.example") is None  # a block with a port covers that port only
        assert (await store.block_for("other.example:8443")).reject_media
        assert await store.block_for("notexample.org") is None
        await store.put_domain_blocks([pbl.domain_block("example.org", "suspend")], now=11)
        assert (await store.block_for("example.org")).severity == "suspend"  # replaced
        assert await store.delete_domain_block("example.org", log=self.entry("unblock", "example.org"))
        assert not await store.delete_domain_block("example.org")
        assert [e.action for e in await store.operator_log()][-2:] == ["block-import", "unblock"]
        entry = pbl.ban_entry("A" * 43, "spam")
        await store.put_ban_entries([entry], now=12)
        assert await store.banned([entry.hash, pbl.ban_hash("B" * 42 + "A")]) == [entry.hash]
        assert await store.ban_entries() == [entry]
        assert await store.delete_ban_entry(entry.hash) and await store.banned([entry.hash]) == []
        report = {"id": "r1", "received": 5, "community_id": "c" * 32, "host": "h.example", "seq": 7, "sender": "S",
                  "category": "spam", "text": "buy ✓", "sent": 4, "moderator": "M", "origin": "m.example"}
        assert await store.keep_forwarded_report(report)
        assert not await store.keep_forwarded_report({**report, "text": "other"})  # kept once
        assert await store.forwarded_reports() == [report]

    async def test_suspension_is_kept_logged_and_changes_once(self, store):
        p, q = await register(store, 1), await register(store, 2)
        assert await store.suspended_accounts() == set()
        assert await store.set_suspended(p.patient, since=5, reason="spam", log=self.entry("suspend", p.patient))
        assert not await store.set_suspended(p.patient, since=6, reason="again", log=self.entry("suspend", p.patient))
        assert await store.suspended_accounts() == {p.patient}
        listed = {a.patient: a for a in await store.accounts(now=0)}
        assert (listed[p.patient].suspended, listed[p.patient].suspended_reason) == (5, "spam")
        assert listed[q.patient].suspended is None and listed[q.patient].devices == 1
        assert await store.set_suspended(p.patient, since=None, reason=None, log=self.entry("unsuspend", p.patient))
        assert await store.suspended_accounts() == set()
        with pytest.raises(NotFound):
            await store.set_suspended("f" * 32, since=1, reason=None, log=self.entry("suspend", "f" * 32))
        log = await store.operator_log()
        assert [(e.action, e.subject, e.by) for e in log] == [("suspend", p.patient, "alice"),
                                                              ("unsuspend", p.patient, "alice")]
        assert log[0].seq < log[1].seq and log[0].detail == '{"why":"test"}'

    async def test_operator_erasure_erases_and_is_logged(self, store):
        p = await register(store, 1)
        await commit(store, p, 1, [StoredRecord("a" * 32, 1, b"to-be-erased")])
        await store.operator_erase(p.patient, tombstone=b"node-tomb", now=9, log=self.entry("erase", p.patient))
        assert await store.account(p.patient) is None and await store.auth_key(p.device_sign_key) is None
        assert await store.tombstone(p.patient) == b"node-tomb"
        with pytest.raises(NotFound, match="erased"):
            await store.operator_erase(p.patient, tombstone=b"t", now=9, log=self.entry("erase", p.patient))
        with pytest.raises(Gone):
            await register(store, 1)
        assert [e.action for e in await store.operator_log()] == ["erase"]

    async def test_a_removed_community_leaves_nothing(self, store):
        ev = [CommunityEvent(1, b"create", b"stamp1", ((b"A" * 32, True),))]
        await store.append_community_events(CommunityContract.row("host.example", "Group", b"k" * 32), ev,
                                            outbox=[], now=1)
        assert await store.remove_community("c" * 32, "other.example", log=self.entry("remove", "x")) is False
        assert await store.remove_community("c" * 32, "host.example", log=self.entry("remove", "x")) is True
        assert await store.communities() == [] and await store.community_events("c" * 32, "host.example") == []
        assert await store.community_reader("c" * 32, "host.example", b"A" * 32) is None
        assert [e.action for e in await store.operator_log()] == ["remove"]


class MatchingContract:
    """Matching sessions, peer counts and the schedule (mixed into :class:`StoreContract`)."""

    @staticmethod
    def answered(sid: str, peer: str = "a.example", started: int = 10_000) -> MatchingSession:
        return MatchingSession(sid, "responder", peer, started, step=1, own_size=1, own_padded=64, peer_padded=64,
                               state=b"secret state")

    async def test_a_session_steps_once_and_ends_without_its_state(self, store):
        await store.open_matching_session(self.answered("s1"), per_day=10, nonce=nonce())
        await store.advance_matching_session("s1", "responder", step=1, state=b"next", nonce=nonce())
        with pytest.raises(Conflict):  # a second request for the same step
            await store.advance_matching_session("s1", "responder", step=1, state=b"other", nonce=nonce())
        row = await store.matching_session("s1", "responder")
        assert (row.step, row.state) == (2, b"next")
        done = attrs.evolve(row, finished=10_005, outcome="matched", step=3, common=1, state=None)
        await store.finish_matching_session(done, counts={"icd10:G40": 15}, nonce=nonce())
        with pytest.raises(Conflict):
            await store.finish_matching_session(done, counts={"icd10:E11": 20})
        assert (await store.matching_session("s1", "responder")).state is None
        assert [s.to_json()["outcome"] for s in await store.matching_sessions()] == ["matched"]
        assert await store.matching_common() == [("a.example", "icd10:G40", 15, 10_005)]
        assert await store.matching_common(["icd10:E11"]) == []

    async def test_a_peer_has_one_open_session_and_a_daily_budget(self, store):
        await store.open_matching_session(self.answered("s1"), per_day=2, nonce=nonce())
        with pytest.raises(RateLimited):  # one open at a time
            await store.open_matching_session(self.answered("s2"), per_day=2, nonce=nonce())
        row = await store.matching_session("s1", "responder")
        await store.finish_matching_session(attrs.evolve(row, finished=10_001, outcome="failed:x", state=None))
        await store.open_matching_session(self.answered("s2", started=10_002), per_day=2, nonce=nonce())
        assert await store.expire_matching_sessions(10_003, 10_003) == 1
        with pytest.raises(RateLimited):  # two today
            await store.open_matching_session(self.answered("s3", started=10_004), per_day=2, nonce=nonce())
        await store.open_matching_session(self.answered("s3", peer="b.example"), per_day=2, nonce=nonce())
        # a day later the budget is back
        await store.open_matching_session(self.answered("s4", started=10_000 + 86_401), per_day=2, nonce=nonce())
        assert await store.matching_budget("a.example", "responder", 10_000) == (3, 1)
        with pytest.raises(Conflict):  # an id in use
            await store.open_matching_session(self.answered("s4", peer="c.example"), per_day=2, nonce=nonce())
        expired = await store.matching_session("s2", "responder")
        assert expired.outcome == "failed:expired" and expired.state is None

    async def test_a_replayed_nonce_opens_nothing(self, store):
        n = nonce()
        await store.open_matching_session(self.answered("s1"), per_day=5, nonce=n)
        row = await store.matching_session("s1", "responder")
        await store.finish_matching_session(attrs.evolve(row, finished=10_001, outcome="failed:x", state=None))
        with pytest.raises(Replayed):
            await store.open_matching_session(self.answered("s2"), per_day=5, nonce=n)
        assert await store.matching_session("s2", "responder") is None

    async def test_one_caller_claims_a_due_run(self, store):
        assert await store.claim_matching_run("b.example", now_ms=1000, next_ms=5000)
        assert not await store.claim_matching_run("b.example", now_ms=2000, next_ms=6000)
        assert await store.claim_matching_run("b.example", now_ms=5000, next_ms=9000)
        claims = await asyncio.gather(*(store.claim_matching_run("b.example", now_ms=9000, next_ms=20_000)
                                        for _ in range(4)))
        assert sorted(claims) == [False, False, False, True]


class ClinicianContract:
    """Clinician credentials: issuances on random status indexes, never one index twice,
    revocation once and logged (mixed into :class:`StoreContract`)."""

    @staticmethod
    def issued(index: int, issuance: str = "0123456789abcdef") -> IssuedCredential:
        return IssuedCredential(issuance, "did:key:z6Mk", "physician", "207RE0101X", '{"badge":"urn:uuid:1"}', "1",
                                index, 100, 200)

    async def test_issuances_take_free_indexes_and_revoke_once(self, store):
        entry = OperatorContract.entry
        seen = []

        def draw(taken):
            seen.append(set(taken))
            return 7 if 7 not in taken else 9

        first = await store.issue_credentials("1", draw=draw, make=self.issued,
                                              log=lambda r: entry("clinician-issue", r.id))
        second = await store.issue_credentials("1", draw=draw, make=lambda i: self.issued(i, "fedcba9876543210"),
                                               log=lambda r: entry("clinician-issue", r.id))
        assert (first.index, second.index) == (7, 9) and seen == [set(), {7}]
        assert await store.status_list("1") == ([7, 9], [])
        assert await store.status_list("2") == ([], [])
        with pytest.raises(Conflict):  # the same index again: refused, nothing written
            await store.issue_credentials("1", draw=lambda taken: 7, make=lambda i: self.issued(i, "aaaaaaaaaaaaaaaa"),
                                          log=lambda r: entry("clinician-issue", r.id))
        assert [r.id for r in await store.issued_credentials()] == [first.id, second.id]
        assert await store.revoke_credential(first.id, when=150, reason="left", log=entry("clinician-revoke", first.id))
        assert not await store.revoke_credential(first.id, when=160, reason=None, log=entry("clinician-revoke", first.id))
        with pytest.raises(NotFound):
            await store.revoke_credential("bbbbbbbbbbbbbbbb", when=1, reason=None, log=entry("clinician-revoke", "b"))
        assert await store.status_list("1") == ([7, 9], [7])
        rows = {r.id: r for r in await store.issued_credentials()}
        assert (rows[first.id].revoked, rows[first.id].revoked_reason) == (150, "left")
        assert rows[second.id].revoked is None
        assert [e.action for e in await store.operator_log()] == ["clinician-issue", "clinician-issue",
                                                                  "clinician-revoke"]


class InsightsContract:
    """Insights records, the privacy-budget ledger and releases (mixed into :class:`StoreContract`)."""

    TABLE = outcome_table("E11", ["metformin", "insulin"], side_effects=["nausea"], symptoms=["fatigue"])

    @staticmethod
    def body(treatment: str, **fields) -> bytes:
        return canonical({"treatment": treatment, "category": "E11", "status": "ongoing", **fields})

    async def _granted(self, store, n: int, token: str) -> NewPatient:
        p = await register(store, n)
        gid = token[:31] + "g"
        grant = GrantRow(gid, p.patient, "treatment.outcome", "insights", "plugin:a/insights", 5000, 1000, b"grant")
        await store.add_grant(grant, [TokenRow(token, gid, "a", b"token", b"voucher")], signer=p.device,
                              audit=[{"event": "granted", "grant": gid}], nonce=nonce(), now=1000)
        return p

    async def test_a_tokens_records_are_replaced_held_once_and_dropped(self, store):
        t = "t" * 32
        await store.put_insight_records(t, "2026-12", [("s1", "treatment.outcome", "metformin", self.body("metformin"))])
        # the same delivery twice, then a newer one: one record per subject, kind and group
        for _ in range(2):
            await store.put_insight_records(t, "2026-12", [
                ("s1", "treatment.outcome", "insulin", self.body("insulin")),
                ("s1", "treatment.outcome", "insulin", self.body("insulin", efficacy="high"))])
        rows = await store.insight_records("2026-12")
        assert [(s, k, g, tok) for s, k, g, tok, _ in rows] == [("s1", "treatment.outcome", "insulin", t)]
        assert loads(rows[0][4])["efficacy"] == "high"
        await store.put_insight_records(t, "2026-11", [("s1", "treatment.outcome", "insulin", self.body("insulin"))])
        assert await store.drop_insight_records(t) == 2
        assert await store.insight_records("2026-12") == [] and await store.insight_records("2026-11") == []

    async def test_a_release_is_charged_published_and_audited_and_refused_once_spent(self, store):
        tokens = [f"{i:031x}t" for i in range(3)]
        patients = [await self._granted(store, i + 1, t) for i, t in enumerate(tokens)]
        for i, t in enumerate(tokens):
            await store.put_insight_records(t, "2026-12", [(f"s{i}", "treatment.outcome", "metformin",
                                                            self.body("metformin", efficacy="high"))])
        await store.set_insights_budget("1")
        table = await store.release_insights("r1", self.TABLE, "E11", "2026-12", "1/2", 2000)
        assert table.nodes == 1 and set(table.rows) == {"metformin", "insulin"}
        (row,) = await store.insight_releases("E11")
        assert row[:5] == ("r1", "outcomes-e11", "E11", "2026-12", 2000) and loads(row[5]) == table.to_json()
        for p in patients:
            (entry,) = [loads(a.entry) for a in await store.audit(p.patient) if b"released" in a.entry]
            assert {k: entry[k] for k in ("event", "release", "table", "period", "epsilon", "nodes")} == {
                "event": "released", "release": "r1", "table": "outcomes-e11", "period": "2026-12",
                "epsilon": "1/2", "nodes": 1}
        await store.release_insights("r2", self.TABLE, "E11", "2026-12", "0.5", 2001)  # exactly the budget
        with pytest.raises(Forbidden) as refused:
            await store.release_insights("r3", self.TABLE, "E11", "2026-12", "1/1000", 2002)
        assert refused.value.code == "budget_exhausted"
        ledger = await store.insights_ledger()
        assert ledger.budget == 1 and [e.release for e in ledger.entries] == ["r1", "r2"]
        assert len(await store.insight_releases()) == 2  # the refused release published nothing
        # another period has its own budget; a release id is never reused
        await store.release_insights("r4", self.TABLE, "E11", "2027-01", "1", 2003)
        with pytest.raises(Conflict):
            await store.release_insights("r4", self.TABLE, "E11", "2027-02", "1", 2004)

    async def test_a_revoked_patient_is_in_no_later_release(self, store):
        t1, t2 = "a" * 31 + "t", "b" * 31 + "t"
        p1, p2 = await self._granted(store, 1, t1), await self._granted(store, 2, t2)
        for t, s in ((t1, "s1"), (t2, "s2")):
            await store.put_insight_records(t, "2026-12", [(s, "treatment.outcome", "metformin", self.body("metformin"))])
        await store.drop_insight_records(t1)
        await store.release_insights("r1", self.TABLE, "E11", "2026-12", "1/4", 2000)
        assert not [a for a in await store.audit(p1.patient) if b"released" in a.entry]
        assert [a for a in await store.audit(p2.patient) if b"released" in a.entry]

    async def test_concurrent_releases_never_overspend(self, store):
        await store.set_insights_budget("1")
        results = await asyncio.gather(*(store.release_insights(f"r{i}", self.TABLE, "E11", "2026-12", "1/3", 2000 + i)
                                         for i in range(6)), return_exceptions=True)
        assert sum(not isinstance(r, Exception) for r in results) == 3
        assert all(isinstance(r, Forbidden) for r in results if isinstance(r, Exception))
        assert (await store.insights_ledger()).spent("2026-12") == 1

    async def test_a_patient_under_two_pseudonyms_counts_once(self, store, monkeypatch):
        """A patient whose grants to the plugin carry two pseudonyms (one made before an
        identity rotation, one after) is one patient: bounded once, so the release's
        sensitivity is what its epsilon assumes."""
        from rxfed.protocol import release as prl

        monkeypatch.setattr(prl, "noise_share", lambda schema, epsilon, threshold, rng=None: [0] * len(schema.cells))
        t1, t2 = "c" * 31 + "t", "d" * 31 + "t"
        p = await self._granted(store, 1, t1)
        gid = t2[:31] + "g"
        await store.add_grant(GrantRow(gid, p.patient, "treatment.outcome", "insights", "plugin:a/insights", 5000, 1000,
                                       b"grant"), [TokenRow(t2, gid, "a", b"token", b"voucher")], signer=p.device,
                              audit=[{"event": "granted", "grant": gid}], nonce=nonce(), now=1000)
        for t, s in ((t1, "old-epoch"), (t2, "new-epoch")):
            await store.put_insight_records(t, "2026-12", [(s, "treatment.outcome", "metformin",
                                                            self.body("metformin", efficacy="high"))])
        seen = []

        def make(vector):
            seen.append(vector)
            return b"state", b"advert"

        rid = "e" * 32
        await store.join_insights_round((rid, "participant", rid, "E11", "2026-12", "agg.example"), self.TABLE, 2,
                                        "1/8", 3, make, None, 2000)
        (reports,) = [i for i, (g, m, _) in enumerate(self.TABLE.cells) if g == "metformin" and m == "reports"]
        assert seen[0][reports] == 1, (seen[0][reports], self.TABLE.cells[reports])
        released = [loads(a.entry) for a in await store.audit(p.patient) if b"released" in a.entry]
        assert sorted(e["grant"] for e in released) == sorted([t1[:31] + "g", gid])

    async def test_bad_budgets_are_refused(self, store):
        for bad in ("0", "-1", "0.1.2", "nan", 0.5, "101"):
            with pytest.raises(BadRequest):
                await store.set_insights_budget(bad)
        assert (await store.insights_ledger()).budget == 1


class StoreContract(CommunityContract, OperatorContract, MatchingContract, ClinicianContract, InsightsContract):
    """Subclass with a ``store`` fixture yielding an opened, empty store (communities: see
    :class:`CommunityContract`, which it includes)."""

    async def test_register_and_lookup(self, store):
        p = await register(store, 1)
        key = await store.auth_key(p.device_sign_key)
        assert (key.kind, key.patient, key.device) == ("device", p.patient, p.device)
        rkey = await store.auth_key(p.recovery.auth_key)
        assert (rkey.kind, rkey.patient) == ("recovery", p.patient)
        assert await store.auth_key(b"x" * 32) is None
        account = await store.account(p.patient)
        assert (account.counter, account.records, account.root_key) == (0, 0, p.root_key)

    async def test_a_commit_may_name_its_base_and_jump_the_counter(self, store):
        p = await register(store, 1)
        await commit(store, p, 1, [StoredRecord("a" * 32, 1, b"x")])
        for base, counter in ((0, 9), (2, 9), (1, 1)):  # the base must be the stored counter, the counter above it
            with pytest.raises(Conflict):
                await store.commit(p.patient, signer=p.device, counter=counter, manifest=b"m", puts=[], deletes=[],
                                   quota=QUOTA, nonce=nonce(), epoch=1, base=base)
        assert await store.commit(p.patient, signer=p.device, counter=9, manifest=b"m9", puts=[], deletes=[],
                                  quota=QUOTA, nonce=nonce(), epoch=1, base=1) == 9
        assert (await store.account(p.patient)).counter == 9
        await commit(store, p, 10)  # and on from there as before

    async def test_register_twice_conflicts(self, store):
        await register(store, 1)
        with pytest.raises(Conflict):
            await register(store, 1)

    async def test_invites_are_single_use(self, store):
        await store.add_invites([b"h" * 32], now=1)
        assert await store.open_invites() == 1
        await register(store, 1, invite=b"h" * 32)
        assert await store.open_invites() == 0
        with pytest.raises(Forbidden):
            await register(store, 2, invite=b"h" * 32)
        assert await store.account(new_patient(2).patient) is None

    async def test_replayed_nonce_refused_and_nothing_changes(self, store):
        p = await register(store, 1)
        n = nonce()
        await commit(store, p, 1, [StoredRecord("a" * 32, 1, b"blob")], n=n)
        with pytest.raises(Replayed):
            await commit(store, p, 2, [StoredRecord("b" * 32, 1, b"blob")], n=n)
        assert [r.id for r in (await store.vault(p.patient, p.device)).records] == ["a" * 32]
        assert n.value in {x.value for x in await store.load_nonces(now=0)}

    async def test_commit_versions_and_counter(self, store):
        p = await register(store, 1)
        rid = "a" * 32
        assert await commit(store, p, 1, [StoredRecord(rid, 1, b"v1")]) == 1
        with pytest.raises(Conflict):  # stale counter
            await commit(store, p, 1, [StoredRecord(rid, 2, b"v2")])
        with pytest.raises(Conflict):  # skipped version
            await commit(store, p, 2, [StoredRecord(rid, 3, b"v3")])
        assert await commit(store, p, 2, [StoredRecord(rid, 2, b"v2")]) == 2
        vault = await store.vault(p.patient, p.device)
        assert [(r.id, r.version, r.blob) for r in vault.records] == [(rid, 2, b"v2")]
        assert vault.manifest == b"m2"
        assert await commit(store, p, 3, deletes=[(rid, 2)]) == 3
        account = await store.account(p.patient)
        assert (account.records, account.bytes, account.counter) == (0, 0, 3)

    async def test_failed_commit_changes_nothing(self, store):
        p = await register(store, 1)
        await commit(store, p, 1, [StoredRecord("a" * 32, 1, b"x")])
        with pytest.raises(Conflict):  # the second put is stale, so the first must not land
            await commit(store, p, 2, [StoredRecord("b" * 32, 1, b"y"), StoredRecord("a" * 32, 5, b"z")])
        vault = await store.vault(p.patient, p.device)
        assert [(r.id, r.blob) for r in vault.records] == [("a" * 32, b"x")]
        assert (await store.account(p.patient)).counter == 1

    async def test_quota(self, store):
        p = await register(store, 1)
        with pytest.raises(QuotaExceeded):
            await commit(store, p, 1, [StoredRecord("a" * 32, 1, b"x" * 20_000)])
        puts = [StoredRecord(f"{i:032x}", 1, b"x") for i in range(11)]
        with pytest.raises(QuotaExceeded):
            await commit(store, p, 1, puts)
        assert (await store.account(p.patient)).records == 0

    async def test_patients_are_isolated(self, store):
        a, b = await register(store, 1), await register(store, 2)
        await commit(store, a, 1, [StoredRecord("a" * 32, 1, b"secret-a")])
        with pytest.raises(Unauthorized):  # b's device cannot sign for a
            await store.commit(a.patient, signer=b.device, counter=2, manifest=b"m", puts=[], deletes=[],
                               quota=QUOTA, nonce=nonce(), epoch=1)
        with pytest.raises(Unauthorized):
            await store.vault(a.patient, b.device)
        assert (await store.vault(b.patient, b.device)).records == ()

    async def _enrol(self, store, p, device="e" * 32, epoch=1, signer=None):
        await store.enrol_device(p.patient, signer=signer or p.device, epoch=epoch, device=device,
                                 sign_key=device.encode()[:32], cert=b"c2", keyring=b"k2", nonce=nonce(), now=2000,
                                 max_devices=4)

    async def test_identity_chain_and_enrolment(self, store):
        p = await register(store, 1)
        assert await store.identity_chain(p.patient) == [b"identity-1"]
        assert (await store.account(p.patient)).epoch == 1
        with pytest.raises(Conflict) as exc:  # a certificate of another epoch
            await self._enrol(store, p, epoch=2)
        assert exc.value.code == "stale_identity"
        await self._enrol(store, p)
        with pytest.raises(Unauthorized):  # by a recovery key that is not the patient's
            await store.enrol_device(p.patient, signer=None, epoch=1, device="f" * 32, sign_key=b"f" * 32,
                                     cert=b"c", keyring=b"k", nonce=nonce(), now=2000, max_devices=4,
                                     recovery_key=b"x" * 32)
        await store.enrol_device(p.patient, signer=None, epoch=1, device="f" * 32, sign_key=b"f" * 32,
                                 cert=b"c", keyring=b"k", nonce=nonce(), now=2000, max_devices=4,
                                 recovery_key=p.recovery.auth_key)  # by the recovery key
        assert {d.device for d in await store.devices(p.patient)} == {p.device, "e" * 32, "f" * 32}
        with pytest.raises(Conflict):  # a device key may not be a recovery key
            await store.enrol_device(p.patient, signer=p.device, epoch=1, device="g" * 32,
                                     sign_key=p.recovery.auth_key, cert=b"c", keyring=b"k", nonce=nonce(), now=2000,
                                     max_devices=4)
        await self._enrol(store, p, device="h" * 32)
        with pytest.raises(Forbidden) as exc:
            await self._enrol(store, p, device="i" * 32)
        assert exc.value.code == "too_many_devices"

    async def test_rotation_revokes_devices_left_out(self, store):
        p = await register(store, 1)
        await self._enrol(store, p)
        await commit(store, p, 1, [StoredRecord("a" * 32, 1, b"x")])
        rec = Recovery(b"n" * 32, b"identity-2", b"rb2", b"rk2")
        with pytest.raises(Conflict) as exc:  # epochs follow each other
            await store.rotate_identity(p.patient, signer="e" * 32, epoch=3, identity=b"identity-3",
                                        devices={"e" * 32: (b"c3", b"k3")}, added={}, recovery=rec, manifest=(2, b"m2"),
                                        nonce=nonce(), now=3000)
        assert exc.value.code == "stale_identity"
        with pytest.raises(Conflict):  # the signing device must stay
            await store.rotate_identity(p.patient, signer=p.device, epoch=2, identity=b"identity-2",
                                        devices={"e" * 32: (b"c3", b"k3")}, added={}, recovery=rec, manifest=(2, b"m2"),
                                        nonce=nonce(), now=3000)
        with pytest.raises(Conflict):  # the manifest counter is a compare-and-swap
            await store.rotate_identity(p.patient, signer="e" * 32, epoch=2, identity=b"identity-2",
                                        devices={"e" * 32: (b"c3", b"k3")}, added={}, recovery=rec, manifest=(5, b"m"),
                                        nonce=nonce(), now=3000)
        revoked = await store.rotate_identity(p.patient, signer="e" * 32, epoch=2, identity=b"identity-2",
                                              devices={"e" * 32: (b"c3", b"k3")},
                                              added={"j" * 32: (b"j" * 32, b"cj", b"kj")}, recovery=rec,
                                              manifest=(2, b"m2"), nonce=nonce(), now=3000)
        assert revoked == [p.device]
        assert await store.identity_chain(p.patient) == [b"identity-1", b"identity-2"]
        devices = {d.device: d for d in await store.devices(p.patient)}
        assert devices[p.device].revoked == 3000 and (devices["e" * 32].cert, devices["e" * 32].keyring) == (b"c3", b"k3")
        assert devices["j" * 32].revoked is None and (await store.auth_key(b"j" * 32)).device == "j" * 32
        assert (await store.recovery(p.patient)).keyring == b"rk2"
        assert await store.recovery_by_key(p.recovery.auth_key) is None  # the old recovery key is gone
        patient, root, found = await store.recovery_by_key(b"n" * 32)
        assert (patient, root, found.root_bundle) == (p.patient, p.root_key, b"rb2")
        assert (await store.vault(p.patient, None)).manifest == b"m2"
        with pytest.raises(Unauthorized):
            await commit(store, p, 3, epoch=2)
        with pytest.raises(Unauthorized):
            await store.check_signer(p.patient, p.device)
        with pytest.raises(Conflict) as exc:  # a manifest of the old epoch
            await store.commit(p.patient, signer="e" * 32, counter=3, manifest=b"m", puts=[], deletes=[],
                               quota=QUOTA, nonce=nonce(), epoch=1)
        assert exc.value.code == "stale_identity"
        with pytest.raises(Conflict):  # nor may an enrolment use it
            await self._enrol(store, p, device="g" * 32, epoch=1, signer="e" * 32)

    async def test_erase(self, store):
        p = await register(store, 1)
        await commit(store, p, 1, [StoredRecord("a" * 32, 1, b"to-be-erased")])
        await store.erase_patient(p.patient, signer=p.device, tombstone=b"tomb", nonce=nonce(), now=5)
        assert await store.account(p.patient) is None
        assert await store.auth_key(p.device_sign_key) is None
        assert await store.tombstone(p.patient) == b"tomb"
        with pytest.raises(Gone):
            await register(store, 1)

    async def test_concurrent_commits_are_serialised(self, store):
        p = await register(store, 1)
        results = await asyncio.gather(
            *(commit(store, p, 1, [StoredRecord(f"{i:032x}", 1, b"x")]) for i in range(8)), return_exceptions=True)
        assert sum(r == 1 for r in results) == 1
        assert all(isinstance(r, Conflict) for r in results if r != 1)

    async def test_prune_nonces(self, store):
        await register(store, 1)
        await store.prune_nonces(now=2**41)
        assert await store.load_nonces(now=0) == []

    # -- consent ---------------------------------------------------------------------------
    async def _grant(self, store, p, gid="g" * 32, nodes=("a", "b")):
        grant = GrantRow(gid, p.patient, "diagnosis.category", "research", "federation", 5000, 1000, b"grant")
        tokens = [TokenRow(f"{gid[:30]}t{i}", gid, node, b"token", b"voucher") for i, node in enumerate(nodes)]
        await store.add_grant(grant, tokens, signer=p.device, audit=[{"event": "granted", "grant": gid}],
                              nonce=nonce(), now=1000)
        return grant, tokens

    async def test_grants_tokens_and_revocation(self, store):
        p, q = await register(store, 1), await register(store, 2)
        grant, tokens = await self._grant(store, p)
        assert await store.grants(q.patient) == []
        ((row, stored),) = await store.grants(p.patient)
        assert row == grant and [t.node for t in stored] == ["a", "b"]
        assert await store.grant_of_token(tokens[0].token) == (grant, tokens[0])
        with pytest.raises(Conflict):  # ids are never reused
            await self._grant(store, p)
        await store.mark_shared(tokens[1].token, patient=p.patient, signer=p.device, delivery="d1", seq=10,
                                outbox=[("b", b"{}")], audit=[{"event": "shared"}], nonce=nonce(), now=1100)
        with pytest.raises(Conflict):  # a delivery id is used once
            await store.mark_shared(tokens[1].token, patient=p.patient, signer=p.device, delivery="d1", seq=11,
                                    outbox=[], audit=[], nonce=nonce(), now=1100)
        for seq in (10, 9):  # a device that did not see the last delivery's number shares again
            with pytest.raises(Conflict) as stale:
                await store.mark_shared(tokens[1].token, patient=p.patient, signer=p.device, delivery="d5",
                                        seq=seq, outbox=[("b", b"{}")], audit=[], nonce=nonce(), now=1100)
            assert stale.value.code == "stale_delivery"
        with pytest.raises(Gone):  # another patient's token
            await store.mark_shared(tokens[1].token, patient=q.patient, signer=q.device, delivery="d2", seq=12,
                                    outbox=[], audit=[], nonce=nonce(), now=1100)
        # a use is logged once, for a delivery that was made, reported by the token's node
        used = [{"event": "used"}]
        assert not await store.delivery_used(tokens[1].token, "a", "d1", used, now=1150)  # wrong node
        assert not await store.delivery_used(tokens[1].token, "b", "d9", used, now=1150)  # no such delivery
        assert await store.delivery_used(tokens[1].token, "b", "d1", used, now=1150)
        assert not await store.delivery_used(tokens[1].token, "b", "d1", used, now=1151)
        with pytest.raises(Gone):
            await store.revoke_grant(q.patient, grant.id, signer=q.device, revocation=b"r", token_revocations={},
                                     outbox=[], audit=[], nonce=nonce(), now=1200)
        await store.revoke_grant(p.patient, grant.id, signer=p.device, revocation=b"r",
                                 token_revocations={t.token: b"tr" for t in tokens}, outbox=[("b", b"{}")],
                                 audit=[{"event": "revoked"}], nonce=nonce(), now=1200)
        with pytest.raises(Gone):  # revoked: no more sharing, no second revocation
            await store.mark_shared(tokens[1].token, patient=p.patient, signer=p.device, delivery="d3", seq=20,
                                    outbox=[], audit=[], nonce=nonce(), now=1300)
        ack = [{"event": "acknowledged"}]
        assert not await store.token_acknowledged(tokens[0].token, "b", ack=b"ack", audit=ack, now=1300)  # wrong node
        assert await store.token_acknowledged(tokens[0].token, "a", ack=b"ack", audit=ack, now=1300)
        assert not await store.token_acknowledged(tokens[0].token, "a", ack=b"2nd", audit=ack, now=1301)  # once
        ((row, stored),) = await store.grants(p.patient)
        assert row.revoked == 1200 and [t.acked for t in stored] == [1300, None]
        assert [t.ack for t in stored] == [b"ack", None]
        assert [t.shared for t in stored] == [None, 1100] and [t.seq for t in stored] == [None, 10]
        assert [t.revocation for t in stored] == [b"tr", b"tr"]
        assert [row.seq for row in await store.audit(p.patient)] == [1, 2, 3, 4, 5]

    async def test_audit_chain(self, store):
        from rxfed.consent.audit import chain

        p, q = await register(store, 1), await register(store, 2)
        grant, tokens = await self._grant(store, p)
        await store.mark_shared(tokens[0].token, patient=p.patient, signer=p.device, delivery="d1", seq=1, outbox=[],
                                audit=[{"event": "shared", "n": 1}, {"event": "shared", "n": 2}], nonce=nonce(),
                                now=1007)
        await self._grant(store, q, gid="h" * 32)  # another patient's chain is separate
        rows = await store.audit(p.patient)
        assert [r.seq for r in rows] == [1, 2, 3] and len(await store.audit(q.patient)) == 1
        assert [r.hash for r in rows] == chain(r.entry for r in rows)
        assert b'"time":1000' in rows[0].entry and b'"seq":3' in rows[2].entry and b'"time":1007' in rows[2].entry

    async def test_received_signals_replace_dedupe_and_revoke(self, store):
        token = ReceivedToken("t" * 32, "home", "SHA256:x", b"k" * 32, "diagnosis.category", "research",
                              "federation", 5000, b"statement", b"voucher", 1000)
        assert await store.receive_signals(token, "d1", [("diagnosis.category", b"1"), ("diagnosis.category", b"2")]) is TokenOutcome.NEW
        assert await store.receive_signals(token, "d1", [("diagnosis.category", b"1")]) is TokenOutcome.DUPLICATE
        assert await store.receive_signals(token, "d2", [("diagnosis.category", b"3")], seq=5) is TokenOutcome.NEW
        assert await store.receive_signals(token, "d4", [("diagnosis.category", b"9")], seq=5) is TokenOutcome.STALE
        with pytest.raises(Forbidden):  # the same token id from another home, or under another key
            await store.receive_signals(attrs.evolve(token, origin="other"), "d5", [], seq=9)
        with pytest.raises(Forbidden):
            await store.revoke_received(attrs.evolve(token, subject_key=b"x" * 32), None, now=1500)
        assert await store.received_signals() == [(token.token, "diagnosis.category", b"3")]
        assert await store.revoke_received(token, b"revocation", now=2000)
        assert await store.received_signals(token.token) == []
        assert await store.receive_signals(token, "d3", [("diagnosis.category", b"4")]) is TokenOutcome.REVOKED
        assert (await store.received_token(token.token)).revoked == 2000
        # a revocation that arrives before any signal still bars the token
        early = attrs.evolve(token, token="u" * 32)
        assert not await store.revoke_received(early, None, now=2000)
        assert await store.receive_signals(early, "d1", [("diagnosis.category", b"5")]) is TokenOutcome.REVOKED

    async def test_a_delivery_waits_in_the_outbox_until_its_time(self, store):
        p = await register(store, 1)
        grant, tokens = await self._grant(store, p)
        await store.enqueue([("b", b"now")], now=1000)
        await store.mark_shared(tokens[1].token, patient=p.patient, signer=p.device, delivery="d1", seq=1,
                                outbox=[("b", b"later")], not_before=1060, audit=[], nonce=nonce(), now=1000)
        await store.mark_shared(tokens[0].token, patient=p.patient, signer=p.device, delivery="d2", seq=1,
                                outbox=[("a", b"later")], not_before=1030, audit=[], nonce=nonce(), now=1000)
        assert await store.due_destinations() == [("a", 1030_000), ("b", 0)]
        txn = await store.next_transaction("b", max_events=10, now=1059, dead_after=86400)
        assert txn.events == (b"now",)
        await store.transaction_delivered(txn.txn_id)
        assert await store.due_destinations() == [("a", 1030_000), ("b", 1060_000)]
        assert await store.next_transaction("b", max_events=10, now=1059, dead_after=86400) is None
        assert (await store.next_transaction("b", max_events=10, now=1060, dead_after=86400)).events == (b"later",)
        assert [s.pending + s.in_flight for s in await store.outbox_summary()] == [1, 1]

    async def test_expired_signals_are_deleted(self, store):
        token = ReceivedToken("t" * 32, "home", "SHA256:x", b"k" * 32, "diagnosis.category", "research",
                              "federation", 5000, None, None, 1000)
        await store.receive_signals(token, "d1", [("diagnosis.category", b"1")])
        assert await store.expire_received(4999) == []
        assert [t.token for t in await store.expire_received(5000)] == [token.token]
        assert await store.received_signals() == []
        assert await store.expire_received(6000) == []

    async def test_erase_removes_grants_and_audit(self, store):
        p = await register(store, 1)
        await self._grant(store, p)
        await store.erase_patient(p.patient, signer=p.device, tombstone=b"t", nonce=nonce(), now=3000)
        assert await store.grants(p.patient) == [] and await store.audit(p.patient) == []

    async def test_peer_trust_kept_replaced_by_a_new_pin_and_forgotten(self, store):
        await store.save_peer_document("a.example", b"{}", 100, b"[keys]")
        peer = await store.peer("a.example")
        assert (peer.document, peer.fetched, peer.trusted_keys, peer.fingerprint) == (b"{}", 100, b"[keys]", None)
        await store.set_peer_policy("a.example", "allowed", url="https://a.example")
        assert (await store.peer("a.example")).trusted_keys == b"[keys]"  # no pin given: trust kept
        await store.set_peer_policy("a.example", "allowed", fingerprint="SHA256:one")
        peer = await store.peer("a.example")
        assert peer.trusted_keys is None and peer.fingerprint == "SHA256:one"  # a new pin replaces it
        await store.save_peer_document("a.example", b"{}", 200, b"[pinned]")
        await store.set_peer_policy("a.example", "allowed", fingerprint="SHA256:one")
        assert (await store.peer("a.example")).trusted_keys == b"[pinned]"  # the same pin: kept
        assert await store.forget_peer_keys("a.example")
        peer = await store.peer("a.example")
        assert (peer.document, peer.fetched, peer.trusted_keys, peer.fingerprint) == (None, None, None, "SHA256:one")
        assert not await store.forget_peer_keys("nobody.example")

    async def test_expired_events_die_as_the_rule_says_and_transactions_whole(self, store):
        keep = lambda event: not event.startswith(b"log")  # noqa: E731 (the delivery policy's rule)
        await store.enqueue([("b", b"log-1"), ("b", b"note-1"), ("b", b"note-2")], now=1000)
        txn = await store.next_transaction("b", max_events=2, now=1000, dead_after=100, may_die=keep)
        assert txn.events == (b"log-1", b"note-1")
        # past dead_after: the unformed note dies, the transaction holding a log event waits whole
        again = await store.next_transaction("b", max_events=2, now=1200, dead_after=100, may_die=keep)
        assert again.txn_id == txn.txn_id and again.events == txn.events
        assert [d.event for d in await store.dead_letters()] == [b"note-2"]
        # a transaction of events that may die dies whole
        await store.transaction_delivered(txn.txn_id)
        await store.enqueue([("c", b"note-3"), ("c", b"note-4")], now=1200)
        formed = await store.next_transaction("c", max_events=5, now=1200, dead_after=100, may_die=keep)
        assert await store.next_transaction("c", max_events=5, now=1400, dead_after=100, may_die=keep) is None
        assert [d.event for d in await store.dead_letters("c")] == [b"note-3", b"note-4"] and formed

    async def test_a_recovered_peer_has_no_breaker_and_its_transactions_are_due(self, store):
        await store.enqueue([("b", b"e")], now=1000)
        txn = await store.next_transaction("b", max_events=5, now=1000, dead_after=86400)
        await store.transaction_failed(txn.txn_id, error="down", next_attempt_ms=9_000_000)
        await store.peer_delivery("b", ok=False, now=1000, error="down", breaker_until=9000)
        assert await store.due_destinations() == [("b", 9_000_000)]
        await store.peer_recovered("b", now=1001)
        peer = await store.peer("b")
        assert (peer.failures, peer.breaker_until) == (0, None)
        assert await store.due_destinations() == [("b", 0)]

    async def test_due_time_is_the_oldest_transactions(self, store):
        await store.enqueue([("b", b"1"), ("b", b"2")], now=1000)
        first = await store.next_transaction("b", max_events=1, now=1000, dead_after=86400)
        second = await store.next_transaction("b", max_events=1, now=1000, dead_after=86400, exclude=[first.txn_id])
        await store.transaction_failed(first.txn_id, error="x", next_attempt_ms=5000)
        await store.transaction_failed(second.txn_id, error="x", next_attempt_ms=2000)
        assert await store.due_destinations() == [("b", 5000)]  # the one sent first

    async def test_inbox_pruned_by_age(self, store):
        for i, when in enumerate([1000, 2000]):
            await store.apply_inbound("a.example", f"txn-{i}", i + 1, results=b"[]",
                                      communities=[], outbox=[], nonce=nonce(), now=when)
        assert await store.prune_inbox(1000) == 0
        assert await store.prune_inbox(1500) == 1
        assert await store.inbox_reply("a.example", "txn-0") is None
        assert await store.inbox_reply("a.example", "txn-1") == Inbound(b"[]", ())

    async def test_an_inbound_transaction_is_applied_once_and_its_reply_kept(self, store):
        row = CommunityContract.row("host.example")
        first = await store.apply_inbound("a.example", "txn-3", 3, results=b'[{"ok":true}]',
                                          communities=[(row, [CommunityEvent(1, b"e", b"s")])],
                                          outbox=[("c.example", b"onward")], nonce=nonce(), now=1)
        assert first == Inbound(b'[{"ok":true}]', (1, 2))  # numbers 1 and 2 were not seen
        again = await store.apply_inbound("a.example", "txn-3", 3, results=b"[]", communities=[],
                                          outbox=[("c.example", b"twice")], nonce=nonce(), now=2)
        assert again == first and await store.inbox_reply("a.example", "txn-3") == first
        assert [s.pending for s in await store.outbox_summary()] == [1]  # queued once
        later = await store.apply_inbound("a.example", "txn-1", 1, results=b"[]", communities=[], outbox=[],
                                          nonce=nonce(), now=3)
        assert later.missing == (2,)

    async def test_reschedule_every_transaction_of_a_destination(self, store):
        await store.enqueue([("b", b"1"), ("b", b"2"), ("c", b"3")], now=1000)
        first = await store.next_transaction("b", max_events=1, now=1000, dead_after=86400)
        await store.next_transaction("b", max_events=1, now=1000, dead_after=86400, exclude=[first.txn_id])
        third = await store.next_transaction("c", max_events=1, now=1000, dead_after=86400)
        await store.transaction_failed(first.txn_id, error="x", next_attempt_ms=900_000)
        await store.transaction_failed(third.txn_id, error="x", next_attempt_ms=5000)
        await store.reschedule_transactions("b", next_attempt_ms=40_000)
        assert await store.due_destinations() == [("b", 40_000), ("c", 5000)]

    # -- state several worker processes share ----------------------------------------------
    async def test_a_spent_nonce_is_claimed_once_and_a_write_does_not_store_it_again(self, store):
        n = nonce()
        claimed = await store.spend(n, now=1000.0)
        assert claimed.claimed and claimed.value == n.value
        with pytest.raises(Replayed):
            await store.spend(n, now=1000.0)
        p = new_patient(90)
        await store.register_patient(p, invite_hash=None, nonce=claimed, now=1000)  # claimed: not stored again
        assert await store.account(p.patient) is not None
        with pytest.raises(Replayed):  # the same nonce unclaimed is a replay of a write
            await commit(store, p, 1, n=n)

    async def test_a_signers_budget_is_spent_in_the_store_and_refills(self, store):
        from rxfed.errors import RateLimited

        key = b"k" * 32
        for _ in range(3):
            await store.spend(nonce(), key, now=100.0, rate=1.0, burst=3)
        refused = nonce()
        with pytest.raises(RateLimited) as info:
            await store.spend(refused, key, now=100.0, rate=1.0, burst=3)
        assert 0 < info.value.retry_after <= 1.0
        # refused: its nonce is not stored, the same request may come again once refilled
        await store.spend(refused, key, now=101.5, rate=1.0, burst=3)
        await store.spend(nonce(), b"other" * 6, now=101.5, rate=1.0, burst=3)  # budgets are per signer
        assert await store.prune_budgets(50.0) == 0
        assert await store.prune_budgets(200.0) == 2

    async def test_an_outbox_lease_is_held_by_one_holder_until_it_lapses(self, store):
        assert await store.take_lease("b.example", "w1", now=1000, seconds=15)
        assert not await store.take_lease("b.example", "w2", now=1010, seconds=15)
        assert await store.take_lease("b.example", "w1", now=1010, seconds=15)  # renewed to 1025
        assert await store.take_lease("c.example", "w2", now=1010, seconds=15)  # another destination
        assert not await store.take_lease("b.example", "w2", now=1025, seconds=15)
        assert await store.take_lease("b.example", "w2", now=1026, seconds=15)  # lapsed: taken over
        await store.drop_lease("b.example", "w1")  # not its holder any more: nothing changes
        assert not await store.take_lease("b.example", "w1", now=1030, seconds=15)
        await store.drop_lease("b.example", "w2")
        assert await store.take_lease("b.example", "w1", now=1030, seconds=15)
