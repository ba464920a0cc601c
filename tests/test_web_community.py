"""The page folds community histories as rxfed/protocol/community/ does: histories built in
Python with every event type (approval, leave, removal, rekey, sender keys, messages), read by
each member in both languages, and the same refusals for what a host must never stamp."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from rxfed.crypto import BoxKeyPair, SigningKeyPair, b64d, b64e
from rxfed.crypto.groups import SenderKey
from rxfed.errors import RxfedError
from rxfed.protocol import community as pc

ROOT = Path(__file__).resolve().parents[1]
T = 1764000000


def _keys(n: int):
    return SigningKeyPair.from_seed(bytes([n] * 32)), BoxKeyPair.from_secret(bytes([n + 100] * 32))


def _history():
    """(events, members' keys by name): a community that sees every kind of event."""
    admin, alice, bob, carol, alice2 = (_keys(i) for i in (1, 2, 3, 4, 5))
    about = pc.About("Lupus", "M32", bytes([9] * 32))
    events = [pc.make_create(admin[0], admin[1].public, "c.example", about=about, approval=True, node="c.example", now=T)]
    address = pc.parse_event(events[0]).community

    def add(event):
        events.append(event)
        return pc.CommunityState.from_events(list(enumerate(events, 1)))

    state = add(pc.make_join(alice[0], alice[1].public, address, "a.example", T + 1))
    state = add(pc.make_join(bob[0], bob[1].public, address, "b.example", T + 2))
    state = add(pc.make_join(carol[0], carol[1].public, address, "b.example", T + 3))
    state = add(pc.make_approve(admin[0], address, alice[0].public, T + 4))
    state = add(pc.make_approve(admin[0], address, bob[0].public, T + 5))
    state = add(pc.make_remove(admin[0], address, carol[0].public, T + 6))
    key = SenderKey.generate(1)
    state = add(pc.make_sender_key(admin[0], state, key))
    state = add(pc.make_message(admin[0], key, address, "welcome, alice and bob", T + 7)[0])
    alice_key = SenderKey.generate(1)
    state = add(pc.make_sender_key(alice[0], state, alice_key))
    state = add(pc.make_message(alice[0], alice_key, address, "hello from alice ✓", T + 8)[0])
    state = add(pc.make_leave(bob[0], address, T + 9))
    state = add(pc.make_rekey(alice[0], alice2[0], alice2[1].public, address, "a.example", T + 10))
    alice_key2 = SenderKey.generate(2)
    state = add(pc.make_sender_key(alice2[0], state, alice_key2))
    state = add(pc.make_message(alice2[0], alice_key2, address, "after bob left", T + 11)[0])
    return events, {"admin": admin, "alice": alice, "bob": bob, "carol": carol, "alice2": alice2}


def _python_view(events, keys):
    pairs = list(enumerate(events, 1))
    out = {}
    for name, (member, box) in keys.items():
        reading = pc.read_history(pairs, member, box)
        state = reading.state
        out[name] = {
            "seq": state.seq, "version": state.version, "admin": b64e(state.meta.admin),
            "members": [[m.member_b64, str(m.status), m.node] for m in state.members.values()],
            "senders": {k: list(v) for k, v in sorted(state.senders.items())},
            "messages": [[m.seq, b64e(m.sender), m.text, m.sent] for m in reading.messages],
            "unreadable": [[u.seq, u.reason] for u in reading.unreadable]}
    return out


def _run_js(script: str, tmp_path: Path) -> dict:
    node_bin = shutil.which("node")
    if node_bin is None:
        pytest.skip("node is not installed: the web client's JavaScript needs it")
    path = tmp_path / "fold.mjs"
    path.write_text(script)
    out = subprocess.run([node_bin, str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _js(events, keys, tmp_path, extra: str = "") -> dict:
    module = lambda name: json.dumps((ROOT / "rxfed" / "web" / "js" / name).as_uri())  # noqa: E731
    members = {name: [b64e(m.seed), b64e(b.secret)] for name, (m, b) in keys.items()}
    return _run_js(f"""
import * as cm from {module("community.mjs")};
import * as so from {module("sodium.mjs")};
import {{ b64d, b64e }} from {module("encoding.mjs")};
await so.ready();
const events = {json.dumps(events)}.map((e, i) => [i + 1, e]);
const members = {json.dumps(members)};
const out = {{}};
for (const [name, [seed, box]] of Object.entries(members)) {{
  const r = cm.readHistory(events, new so.SigningKeyPair(b64d(seed, 32)), new so.BoxKeyPair(b64d(box, 32)));
  out[name] = {{ seq: r.state.seq, version: r.state.version, admin: b64e(r.state.meta.admin),
    members: [...r.state.members.entries()].map(([k, m]) => [k, m.status, m.node]),
    senders: Object.fromEntries([...r.state.senders.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1))),
    messages: r.messages.map((m) => [m.seq, b64e(m.sender), m.text, m.sent]),
    unreadable: r.unreadable.map((u) => [u.seq, u.reason]) }};
}}
{extra}
process.stdout.write(JSON.stringify(out));
""", tmp_path)


def test_the_page_folds_and_reads_every_event_type_as_python(tmp_path):
    events, keys = _history()
    python = _python_view(events, keys)
    # the history does what it says: bob left, carol was removed, alice's seat moved
    assert [m[1] for m in python["admin"]["members"]] == ["joined", "left", "left", "removed", "joined"]
    assert [m[2] for m in python["alice"]["messages"]] == ["welcome, alice and bob", "hello from alice ✓"]
    assert [m[2] for m in python["alice2"]["messages"]] == ["after bob left"]
    assert python["bob"]["messages"][-1][2] == "hello from alice ✓"
    assert _js(events, keys, tmp_path) == python


def test_the_page_refuses_what_python_refuses(tmp_path):
    events, keys = _history()
    cases = {
        # a removed member leaves; a message under a sender key of an earlier membership; a
        # second create; an approval of a member already joined
        "removed member leaves": events[:7] + [pc.make_leave(keys["carol"][0], pc.parse_event(events[0]).community, T)],
        "stale sender key": events[:12] + [events[10]],
        "second create": events[:2] + [events[0]],
        "approve again": events[:5] + [events[4]],
    }
    expected = {}
    for name, history in cases.items():
        try:
            pc.CommunityState.from_events(list(enumerate(history, 1)))
        except RxfedError as exc:
            expected[name] = exc.code
        else:
            raise AssertionError(f"{name}: Python accepted it")
    extra = f"""
out.refused = {{}};
for (const [name, history] of Object.entries({json.dumps(cases)})) {{
  try {{
    cm.readHistory(history.map((e, i) => [i + 1, e]));
    out.refused[name] = null;
  }} catch (exc) {{
    out.refused[name] = exc.code;
  }}
}}
"""
    got = _js(events, {}, tmp_path, extra)
    assert got["refused"] == expected


def test_the_fold_vector_file_holds_in_python():
    """spec/vectors/community-fold.json (tests/web/fold.test.mjs checks the page against it)
    read back by rxfed/protocol/community/: the same states, readings and refusals."""
    v = json.loads((ROOT / "spec" / "vectors" / "community-fold.json").read_text())
    pairs = list(enumerate(v["events"], 1))
    state = pc.CommunityState.empty(pc.parse_event(v["events"][0]).community)
    for (seq, event), expected in zip(pairs, v["states"], strict=True):
        state = state.step(event, seq=seq)[0]
        assert [[m.member_b64, str(m.status), m.node] for m in state.members.values()] == expected["members"]
        assert (state.seq, state.version) == (expected["seq"], expected["version"])
    for name, m in v["members"].items():
        keys = {name: (SigningKeyPair.from_seed(b64d(m["seed"])), BoxKeyPair.from_secret(b64d(m["box_secret"])))}
        assert _python_view(v["events"], keys)[name] == v["readers"][name]
    for case in v["refused"]:
        with pytest.raises(RxfedError) as refused:
            pc.CommunityState.from_events(list(enumerate(v["events"][:case["kept"]] + case["extra"], 1)))
        assert refused.value.code == case["error"], case["case"]
def _moderated_history():
    """A community with moderators, a report (one genuine, one forged) and every action."""
    admin, alice, bob, carol = (_keys(i) for i in (11, 12, 13, 14))
    about = pc.About("Type 2 diabetes", "E11", bytes([7] * 32))
    events = [pc.make_create(admin[0], admin[1].public, "c.example", about=about, approval=False, node="c.example", now=T)]
    address = pc.parse_event(events[0]).community

    def add(event):
        events.append(event)
        return pc.CommunityState.from_events(list(enumerate(events, 1)))

    for i, (m, b) in enumerate((alice, bob, carol)):
        state = add(pc.make_join(m, b.public, address, "a.example", T + 1 + i))
    state = add(pc.make_action(admin[0], address, "appoint", carol[0].public, reason="moderator", now=T + 5))
    key = SenderKey.generate(1)
    state = add(pc.make_sender_key(alice[0], state, key))
    state = add(pc.make_message(alice[0], key, address, "cinnamon cures diabetes ✓", T + 6)[0])
    seq = state.seq
    message = next(m for m in pc.read_history(list(enumerate(events, 1)), bob[0], bob[1]).messages if m.seq == seq)
    state = add(pc.make_report(state, message, "miracle_cure", T + 7))
    state = add(pc.make_report(state, message, "spam", T + 8, text="something else"))
    state = add(pc.make_action(carol[0], address, "hide", alice[0].public, seq=seq, reason="miracle_cure", now=T + 9))
    state = add(pc.make_action(carol[0], address, "warn", alice[0].public, seq=seq, reason="miracle_cure", now=T + 9))
    state = add(pc.make_action(admin[0], address, "hide", bob[0].public, seq=seq, reason="not bob's", now=T + 10))
    state = add(pc.make_action(carol[0], address, "ban", alice[0].public, reason="spam", now=T + 11))
    state = add(pc.make_action(admin[0], address, "dismiss", carol[0].public, reason="term ended", now=T + 12))
    return events, {"admin": admin, "alice": alice, "bob": bob, "carol": carol}


def test_the_page_reads_reports_and_actions_as_python(tmp_path):
    events, keys = _moderated_history()
    python = _python_view(events, keys)
    pairs = list(enumerate(events, 1))
    for name, (member, box) in keys.items():
        reading = pc.read_history(pairs, member, box)
        python[name]["hidden"] = [[s, at] for s, (at, _a) in sorted(reading.hidden.items())]
        python[name]["actions"] = [[s, a.action, b64e(a.member), a.seq, a.reason] for s, a in reading.actions]
        python[name]["reports"] = [[r.report_seq, r.seq, r.category, r.text, r.status, r.reason] for r in reading.reports]
        python[name]["banned"] = sorted(reading.state.banned)
        python[name]["moderators"] = [m.member_b64 for m in reading.state.moderator_keys()]
    assert [r[4] for r in python["carol"]["reports"]] == ["verified", "refused"] == [r[4] for r in python["admin"]["reports"]]
    assert python["bob"]["reports"] == [] and python["bob"]["hidden"] == [[7, 10]]
    extra = """
for (const [name, [seed, box]] of Object.entries(members)) {
  const r = cm.readHistory(events, new so.SigningKeyPair(b64d(seed, 32)), new so.BoxKeyPair(b64d(box, 32)));
  Object.assign(out[name], {
    hidden: [...r.hidden.entries()].sort((a, b) => a[0] - b[0]).map(([s, [at]]) => [s, at]),
    actions: r.actions.map(([s, a]) => [s, a.action, b64e(a.member), a.seq, a.reason]),
    reports: r.reports.map((x) => [x.report, x.seq, x.category, x.text, x.status, x.reason]),
    banned: [...r.state.banned].sort(), moderators: cm.moderatorKeys(r.state).map((m) => b64e(m.member)) });
}
"""
    assert _js(events, keys, tmp_path, extra) == python
    # What the fold refuses, both languages alike: a replayed action, a non-moderator's action.
    address = pc.parse_event(events[0]).community
    cases = {"replayed action": events + [events[-1]],
             "non-moderator": events + [pc.make_action(keys["bob"][0], address, "warn", keys["bob"][0].public,
                                                        reason="x", now=T + 20)],
             "dismissed moderator": events + [pc.make_action(keys["carol"][0], address, "warn", keys["bob"][0].public,
                                                              reason="x", now=T + 20)]}
    expected = {}
    for name, history in cases.items():
        with pytest.raises(RxfedError) as info:
            pc.CommunityState.from_events(list(enumerate(history, 1)))
        expected[name] = info.value.code
    assert expected == {"replayed action": "duplicate_action", "non-moderator": "not_moderator",
                        "dismissed moderator": "not_moderator"}
    refused = _run_js(f"""
import * as cm from {json.dumps((ROOT / "rxfed" / "web" / "js" / "community.mjs").as_uri())};
import * as so from {json.dumps((ROOT / "rxfed" / "web" / "js" / "sodium.mjs").as_uri())};
await so.ready();
const out = {{}};
for (const [name, history] of Object.entries({json.dumps(cases)})) {{
  try {{ cm.readHistory(history.map((e, i) => [i + 1, e])); out[name] = null; }} catch (e) {{ out[name] = e.code; }}
}}
process.stdout.write(JSON.stringify(out));
""", tmp_path)
    assert refused == expected
