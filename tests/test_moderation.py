"""The built-in moderation plugin: signed rules, the pre-send check in `rxfed community post`,
`rxfed moderation check`, and the evaluation set's targets (spec/moderation.md)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from rxfed.crypto import SigningKeyPair, b64e
from rxfed.plugins import RxfedPlugins
from rxfed.protocol.statements import sign_statement
from rxfed_plugins import moderation
from rxfed_plugins.moderation import ModerationRules, RulesRefused
from test_cli import ENV, node_url, profile, rxfed  # noqa: F401  (node_url and profile are fixtures)

EVAL = Path(__file__).parent / "data" / "moderation_eval.txt"
CATEGORIES = ("medication_change", "dosing_advice", "miracle_cure", "drug_sourcing", "crisis")
#: dev: the rules were written against it; heldout*: each evaluated once before it was tuned
#: on (spec/moderation.md, "Evaluation").
SPLITS = ("dev", "heldout", "heldout2", "heldout3")


def shipped() -> dict:
    return json.loads(moderation.shipped_rules_bytes())


def write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@pytest.fixture
def plugins():
    """Exactly the moderation plugin, registered as its entry point names it."""
    manager = RxfedPlugins(entry_points=False)
    manager.register(moderation, "moderation")
    yield manager
    manager.close()


# -- signed rules --------------------------------------------------------------------------


def test_the_shipped_rules_verify_under_the_publishers_key():
    rules = ModerationRules.from_bytes(moderation.shipped_rules_bytes(), moderation.PUBLISHERS)
    assert rules.publisher == "rxfed" and rules.version >= 1
    assert [c.code for c in rules.categories] == list(CATEGORIES)


def test_a_tampered_rules_file_is_refused():
    doc = shipped()
    doc["body"]["categories"][0]["patterns"] = []  # one category's patterns removed after signing
    with pytest.raises(RulesRefused, match="signature does not verify"):
        ModerationRules.from_bytes(json.dumps(doc).encode(), moderation.PUBLISHERS)


def test_an_unsigned_rules_file_is_refused():
    with pytest.raises(RulesRefused, match="not signed"):
        ModerationRules.from_bytes(json.dumps(shipped()["body"]).encode(), moderation.PUBLISHERS)
    with pytest.raises(RulesRefused, match="not a rules file"):
        ModerationRules.from_bytes(b"{not json", moderation.PUBLISHERS)


def test_rules_signed_by_another_key_are_refused_and_verify_under_that_key():
    other = SigningKeyPair.generate()
    data = json.dumps(sign_statement(other, shipped()["body"])).encode()
    with pytest.raises(RulesRefused, match="signature does not verify"):
        ModerationRules.from_bytes(data, moderation.PUBLISHERS)  # claims publisher rxfed, signed by another
    assert ModerationRules.from_bytes(data, {"rxfed": b64e(other.public)}).version == shipped()["body"]["version"]
    body = dict(shipped()["body"], publisher="someone")
    with pytest.raises(RulesRefused, match="not one this plugin trusts"):
        ModerationRules.from_bytes(json.dumps(sign_statement(other, body)).encode(), moderation.PUBLISHERS)


def test_a_rules_file_of_another_statement_type_is_refused():
    other = SigningKeyPair.generate()
    body = dict(shipped()["body"], type="community.event")
    with pytest.raises(RulesRefused, match="signed moderation.rules"):
        ModerationRules.from_bytes(json.dumps(sign_statement(other, body)).encode(), {"rxfed": b64e(other.public)})


def test_refused_rules_check_nothing_and_say_so(plugins, tmp_path, monkeypatch):
    doc = shipped()
    doc["body"]["version"] += 1
    monkeypatch.setenv("RXFED_MODERATION_RULES", str(write(tmp_path / "rules.json", doc)))
    moderation._rules.cache_clear()
    try:
        [warning] = plugins.presend_check("You should stop taking your metformin")
    finally:
        moderation._rules.cache_clear()
    assert warning.code == "unchecked" and not warning.confirm
    assert "signature does not verify" in warning.message


def test_the_rules_in_force_are_checked_once_per_process(plugins, monkeypatch):
    calls = []
    real = ModerationRules.from_bytes
    monkeypatch.setattr(ModerationRules, "from_bytes", classmethod(lambda cls, *a, **k: calls.append(1) or real(*a, **k)))
    moderation._rules.cache_clear()
    try:
        for _ in range(3):
            plugins.presend_check("hello")
    finally:
        moderation._rules.cache_clear()
    assert len(calls) == 1


# -- what is flagged -----------------------------------------------------------------------


@pytest.mark.parametrize("text, codes", [
    ("I stopped taking it and felt better", []),
    ("What worked for me was taking it with food", []),
    ("You should stop taking your metformin", ["medication_change"]),
    ("Don't stop taking your meds without talking to your doctor", []),
    ("Take 3 of them at night", ["dosing_advice"]),
    ("Should I take 3 at night?", []),
    ("Use cinnamon instead of your insulin", ["miracle_cure"]),
    ("Selling my spare oxycodone, DM me", ["drug_sourcing"]),
    ("I want to die", ["crisis"]),
])
def test_categories(plugins, text, codes):
    assert [w.code for w in plugins.presend_check(text)] == codes


def test_crisis_shows_the_line_of_the_patients_country_and_never_asks(plugins):
    [gb] = plugins.presend_check("I can't go on anymore, I want to end my life", "GB")
    assert gb.code == "crisis" and gb.confirm is False
    assert "Samaritans 116 123" in gb.resources[0] and "samaritans.org" in gb.resources[1]
    [us] = plugins.presend_check("I can't go on anymore, I want to end my life", "us")
    assert "988" in us.resources[0]
    [nowhere] = plugins.presend_check("I want to die", None)
    assert "findahelpline.com" in nowhere.resources[0]


def test_other_warnings_ask_before_sending(plugins):
    [w] = plugins.presend_check("Double your dose if the seizures come back")
    assert w.code == "dosing_advice" and w.confirm is True and w.resources == ()


# -- the evaluation set --------------------------------------------------------------------


def evaluation_cases() -> list[tuple[str, list[str], str]]:
    cases = []
    for line in EVAL.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        split, labels, text = line.split("\t")
        assert split in SPLITS and text.strip(), line
        cases.append((split, labels.split(","), text))
    return cases


def figures(cases, flagged) -> dict:
    """Recall and precision per category, and the share of benign testimony flagged."""
    out = {}
    for c in CATEGORIES:
        truth = [c in labels for _, labels, _ in cases]
        said = [c in flagged[text] for _, _, text in cases]
        tp = sum(t and s for t, s in zip(truth, said))
        out[c] = {"recall": tp / max(sum(truth), 1), "precision": tp / max(sum(said), 1), "n": sum(truth)}
    testimony = [text for _, labels, text in cases if labels == ["testimony"]]
    out["testimony_flagged"] = sum(bool(flagged[t]) for t in testimony) / max(len(testimony), 1)
    return out


def test_the_evaluation_set_is_large_enough_and_half_testimony():
    cases = evaluation_cases()
    assert len(cases) >= 200
    testimony = [c for c in cases if c[1] == ["testimony"]]
    assert len(testimony) * 2 >= len(cases)
    for c in CATEGORIES:
        assert sum(c in labels for _, labels, _ in cases) >= 20, c
    assert {split for split, _, _ in cases} == set(SPLITS)
    known = set(CATEGORIES) | {"testimony", "benign"}
    assert all(set(labels) <= known for _, labels, _ in cases)


@pytest.mark.parametrize("split", SPLITS)
def test_the_targets_are_met(plugins, split):
    cases = [c for c in evaluation_cases() if c[0] == split]
    flagged = {text: {w.code for w in plugins.presend_check(text)} for _, _, text in cases}
    got = figures(cases, flagged)
    for c in CATEGORIES:
        assert got[c]["recall"] >= 0.9, (c, got[c], [t for _, labels, t in cases if c in labels and c not in flagged[t]])
    assert got["testimony_flagged"] <= 0.05, [t for _, labels, t in cases if labels == ["testimony"] and flagged[t]]
    assert all("crisis" in flagged[t] for _, labels, t in cases if "crisis" in labels)
    benign = [t for _, labels, t in cases if labels == ["benign"] and flagged[t]]
    assert len(benign) <= 0.1 * sum(labels == ["benign"] for _, labels, _ in cases), benign


# -- `rxfed moderation check` --------------------------------------------------------------


def test_check_prints_one_json_object_per_line():
    lines = ["I stopped taking it and felt better", "You should stop taking your metformin", "", "I want to die"]
    out = rxfed("moderation", "check", "--json", "--country", "GB", input="\n".join(lines) + "\n")
    assert out.returncode == 0, out.stderr
    docs = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(d["flagged"], d["categories"]) for d in docs] == [
        (False, []), (True, ["medication_change"]), (False, []), (True, ["crisis"])]
    assert "Samaritans" in docs[3]["warnings"][0]["resources"][0] and docs[3]["warnings"][0]["confirm"] is False
    human = rxfed("moderation", "check", input="\n".join(lines))
    assert human.returncode == 0 and human.stdout.splitlines() == [
        "ok", "flagged: medication_change", "ok", "flagged: crisis"]


def test_check_bad_usage_is_exit_2():
    for args in (["moderation", "check", "extra"], ["moderation", "check", "--country", "Narnia"], ["moderation"]):
        out = rxfed(*args, input="hello\n")
        assert out.returncode == 2 and out.stdout == "" and "Traceback" not in out.stderr, args
    out = subprocess.run([sys.executable, "-m", "rxfed", "moderation", "check"], input=b"ok\n\xff\xfe\n",
                         capture_output=True, env=ENV, timeout=60)
    assert out.returncode == 2 and b"line 2: not UTF-8" in out.stderr and out.stdout == b""
    out = rxfed("moderation", "check", env={**ENV, "RXFED_COUNTRY": "nowhere"}, input="hi\n")
    assert out.returncode == 2 and "RXFED_COUNTRY" in out.stderr


def test_check_refuses_tampered_rules(tmp_path):
    doc = shipped()
    doc["body"]["categories"][4]["patterns"] = []  # crisis patterns removed
    env = {**ENV, "RXFED_MODERATION_RULES": str(write(tmp_path / "rules.json", doc))}
    out = rxfed("moderation", "check", "--json", env=env, input="I want to die\n")
    assert out.returncode == 1 and out.stdout == ""
    assert "signature does not verify" in out.stderr and "Traceback" not in out.stderr
    env["RXFED_MODERATION_RULES"] = str(tmp_path / "nope.json")
    out = rxfed("moderation", "check", env=env, input="hi\n")
    assert out.returncode == 1 and "nope.json" in out.stderr


def test_rules_older_than_the_shipped_ones_are_refused(plugins, tmp_path, monkeypatch):
    publisher = SigningKeyPair.generate()
    newer = dict(shipped()["body"], version=5)
    monkeypatch.setattr(moderation, "PUBLISHERS", {"rxfed": b64e(publisher.public)})
    monkeypatch.setattr(moderation, "shipped_rules_bytes", lambda: json.dumps(sign_statement(publisher, newer)).encode())
    older = write(tmp_path / "older.json", sign_statement(publisher, dict(newer, version=4)))
    same = write(tmp_path / "same.json", sign_statement(publisher, newer))
    moderation._rules.cache_clear()
    try:
        monkeypatch.setenv("RXFED_MODERATION_RULES", str(older))
        [w] = plugins.presend_check("I want to die")
        assert w.code == "unchecked" and "older than the shipped version 5" in w.message
        monkeypatch.setenv("RXFED_MODERATION_RULES", str(same))
        assert [w.code for w in plugins.presend_check("I want to die")] == ["crisis"]
    finally:
        moderation._rules.cache_clear()


# -- the pre-send check in `rxfed community post` ------------------------------------------


@pytest.fixture
def community(profile, node_url, tmp_path):  # noqa: F811 (fixtures)
    p = str(profile)
    address = json.loads(rxfed("community", "create", "--profile", p, "Moderated", "--json").stdout)["address"]
    reader = tmp_path / "reader"
    assert rxfed("patient", "register", "--node", node_url, "--profile", str(reader)).returncode == 0
    assert rxfed("community", "join", "--profile", str(reader), address).returncode == 0
    return p, address, str(reader)


def read_texts(reader: str, address: str) -> list[str]:
    out = rxfed("community", "read", "--profile", reader, address, "--json")
    assert out.returncode == 0, out.stderr
    return [m["text"] for m in json.loads(out.stdout)["messages"]]


def test_a_warned_post_is_not_sent_without_a_terminal_unless_sent_anyway(community):
    p, address, reader = community
    text = "You should stop taking your lamotrigine MARKERCLI"
    out = rxfed("community", "post", "--profile", p, address, text, "--json")
    assert out.returncode == 1 and out.stdout == ""
    assert "warning: This reads as advice to stop or change" in out.stderr
    assert "not sent" in out.stderr and "--send-anyway" in out.stderr
    assert read_texts(reader, address) == []  # nothing left the device
    out = rxfed("community", "post", "--profile", p, address, text, "--send-anyway", "--json")
    assert out.returncode == 0, out.stderr
    [warning] = json.loads(out.stdout)["warnings"]
    assert warning["code"] == "medication_change" and warning["confirm"] is True
    assert read_texts(reader, address) == [text]  # the text as written; the warning stays on the device


def test_the_check_runs_before_anything_is_sent(tmp_path):
    """A refused post never opens the profile or reaches a node: here there is neither."""
    out = rxfed("community", "post", "--profile", str(tmp_path / "none"), "a@b", "Take 3 pills at night")
    assert out.returncode == 1 and "not sent" in out.stderr and "no profile" not in out.stderr


def test_crisis_language_shows_resources_at_once_and_is_posted(community):
    p, address, reader = community
    text = "I don't want to be here anymore MARKERCLI"
    out = rxfed("community", "post", "--profile", p, address, text, "--country", "GB", "--json")
    assert out.returncode == 0, out.stderr
    assert out.stderr.startswith("note: It sounds like") and "Samaritans 116 123" in out.stderr
    [warning] = json.loads(out.stdout)["warnings"]
    assert warning["code"] == "crisis" and warning["confirm"] is False
    assert read_texts(reader, address) == [text]
    out = rxfed("community", "post", "--profile", p, address, "I want to die", env={**ENV, "RXFED_COUNTRY": "US"})
    assert out.returncode == 0 and "988" in out.stderr


def test_personal_testimony_posts_without_a_warning(community):
    p, address, reader = community
    out = rxfed("community", "post", "--profile", p, address, "I stopped taking it and felt better", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["warnings"] == [] and out.stderr == ""


@pytest.mark.parametrize("answer, sent", [(b"y\n", True), (b"n\n", False)])
def test_on_a_terminal_the_author_is_asked(community, answer, sent):
    p, address, reader = community
    text = "Double your dose tonight"
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "rxfed", "community", "post", "--profile", p, address, text],
                                stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
        os.write(controller, answer)
        _, err = proc.communicate(timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    assert b"Send it anyway? [y/N]" in err
    assert proc.returncode == (0 if sent else 1)
    assert read_texts(reader, address) == ([text] if sent else [])
