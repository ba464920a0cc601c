"""The ``rxfed`` command as people and scripts use it: stdout, stderr, exit codes, --json."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rxfed.testing import free_port

FHIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fhir"
ENV = {**os.environ, "RXFED_PASSPHRASE": "cli pass phrase", "RXFED_KDF": "min"}


def rxfed(*args: str, env: dict | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rxfed", *args], capture_output=True, text=True,
                          env=env or ENV, input=input, timeout=60, stdin=None if input is not None else subprocess.DEVNULL)


#: The data directory of each node serve_node started, by URL.
NODE_DIRS: dict[str, Path] = {}


def serve_node(data: Path, name: str):
    """``rxfed node init`` and ``rxfed node run`` in ``data``: yields the node's URL."""
    port = free_port()
    init = rxfed("node", "init", str(data), "--name", name, "--port", str(port), "--json")
    assert init.returncode == 0, init.stderr
    doc = json.loads(init.stdout)
    assert doc["node_id"] == f"127.0.0.1:{port}" and doc["fingerprint"].startswith("SHA256:")
    assert (data / "node-keys.json").stat().st_mode & 0o777 == 0o600
    config = (data / "rxfed.toml").read_text()
    (data / "rxfed.toml").write_text(config.replace("anonymous_per_minute = 30.0", "anonymous_per_minute = 6000.0"))
    proc = subprocess.Popen([sys.executable, "-m", "rxfed", "node", "run", str(data)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV)
    url = f"http://127.0.0.1:{port}"
    NODE_DIRS[url] = data
    for _ in range(100):
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("node did not start: " + proc.stderr.read().decode())
    yield url
    proc.terminate()
    proc.wait(20)
    log = (data / "node.log").read_text()
    assert "MARKERCLI" not in log and "Traceback" not in log


@pytest.fixture(scope="module")
def node_url(tmp_path_factory):
    yield from serve_node(tmp_path_factory.mktemp("cli") / "node", "CLI test node")


class ProfilePath(type(Path())):
    recovery_code: str
    patient: str


@pytest.fixture
def profile(node_url, tmp_path):
    path = ProfilePath(tmp_path / "profile")
    out = rxfed("patient", "register", "--node", node_url, "--profile", str(path), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert set(doc) == {"patient", "device", "recovery_code", "node"}
    path.recovery_code = doc["recovery_code"]
    path.patient = doc["patient"]
    return path


def test_register_prints_id_last(node_url, tmp_path):
    out = rxfed("patient", "register", "--node", node_url, "--profile", str(tmp_path / "p"))
    assert out.returncode == 0
    lines = out.stdout.strip().splitlines()
    assert len(lines[-1]) == 32 and "recovery code" in out.stdout
    assert "tests only" in out.stderr  # the min KDF warning


def test_records_and_show(profile):
    p = str(profile)
    assert rxfed("patient", "condition", "add", "--profile", p, "e119", "--label", "MARKERCLI").returncode == 0
    out = rxfed("patient", "journal", "add", "--profile", p, "--symptom", "pain=4", "--feeling", "6",
                "--phq9", "1,1,0,0,1,0,0,0,1", "--country", "GB")
    assert out.returncode == 0, out.stderr
    assert "116 123" in out.stderr and "Pfizer" in out.stderr  # item 9 > 0: crisis resources; attribution
    out = rxfed("patient", "treatment", "add", "--profile", p, "metformin", "--dose", "500 mg", "--efficacy", "7",
                "--side-effect", "nausea", "--started", "2025-01-02", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["kind"] == "treatment"
    out = rxfed("patient", "show", "--profile", p, "--json")
    records = json.loads(out.stdout)["records"]
    # Newest first by the day each is about; the condition has no onset, so it comes last.
    assert [r["kind"] for r in records] == ["journal", "treatment", "condition"]
    assert records[1]["date"] == "2025-01-02" and records[2]["date"] is None
    assert records[2]["data"]["code"] == "E11.9"
    assert records[0]["data"]["questionnaires"][0]["total"] == 4
    human = rxfed("patient", "show", "--profile", p).stdout
    assert "ICD10 E11.9 MARKERCLI" in human


@pytest.mark.parametrize("args", [
    ["patient", "condition", "add", "X"],
    ["patient", "journal", "add", "--feeling", "12"],
    ["patient", "journal", "add", "--symptom", "pain"],
    ["patient", "journal", "add", "--phq9", "1,2"],
    ["patient", "treatment", "add", "x", "--adherence", "high"],
])
def test_bad_usage_exits_2(profile, args):
    out = rxfed(*args[:3], "--profile", str(profile), *args[3:])
    assert out.returncode == 2, out
    assert out.stdout == "" and out.stderr.startswith("rxfed: error:")


def test_no_passphrase_without_terminal_exits_2(profile):
    env = {k: v for k, v in ENV.items() if k != "RXFED_PASSPHRASE"}
    out = rxfed("patient", "show", "--profile", str(profile), env=env)
    assert out.returncode == 2 and "RXFED_PASSPHRASE" in out.stderr


def test_wrong_passphrase_exits_1(profile):
    out = rxfed("patient", "show", "--profile", str(profile), env={**ENV, "RXFED_PASSPHRASE": "nope"})
    assert out.returncode == 1 and "passphrase" in out.stderr and "Traceback" not in out.stderr


def test_unreachable_node_exits_1(tmp_path):
    out = rxfed("patient", "register", "--node", f"http://127.0.0.1:{free_port()}", "--profile", str(tmp_path / "x"))
    assert out.returncode == 1 and "cannot reach" in out.stderr
    assert not (tmp_path / "x" / "keys.json").exists()


def test_argparse_usage_exits_2():
    assert rxfed("patient").returncode == 2
    assert rxfed("nonsense").returncode == 2


def test_devices_recover_rotate_passphrase(profile, node_url, tmp_path):
    new = tmp_path / "new"
    env = {**ENV, "RXFED_RECOVERY_CODE": profile.recovery_code}
    (old,) = [d["device"] for d in json.loads(rxfed("patient", "devices", "list", "--profile", str(profile),
                                                     "--json").stdout)["devices"]]
    out = rxfed("patient", "recover", "--node", node_url, "--profile", str(new), "--keep", old, "--json", env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["patient"] == profile.patient
    devices = json.loads(rxfed("patient", "devices", "list", "--profile", str(new), "--json").stdout)["devices"]
    assert len(devices) == 2 and all(d["verified"] and d["revoked"] is None for d in devices)
    assert rxfed("patient", "devices", "revoke", old, "--profile", str(new)).returncode == 2  # no code, no tty
    assert rxfed("patient", "devices", "revoke", old, "--profile", str(new), env=env).returncode == 0
    assert rxfed("patient", "show", "--profile", str(profile)).returncode == 1  # revoked device is refused
    rotated = rxfed("patient", "recovery-code", "rotate", "--profile", str(new), "--json", env=env)
    assert rotated.returncode == 0, rotated.stderr
    env = {**ENV, "RXFED_RECOVERY_CODE": profile.recovery_code}
    stale = rxfed("patient", "recover", "--node", node_url, "--profile", str(tmp_path / "again"), env=env)
    assert stale.returncode == 1  # the old code stopped working
    out = rxfed("patient", "passphrase", "--profile", str(new), env={**ENV, "RXFED_NEW_PASSPHRASE": "another pass phrase"})
    assert out.returncode == 0
    assert rxfed("patient", "show", "--profile", str(new), env={**ENV, "RXFED_PASSPHRASE": "another pass phrase"}).returncode == 0


def test_link_a_device_from_an_active_one(profile, node_url, tmp_path):
    new = tmp_path / "laptop"
    out = rxfed("patient", "link", "request", "--node", node_url, "--profile", str(new), "--json")
    assert out.returncode == 0, out.stderr
    link = json.loads(out.stdout)["link_code"]
    assert rxfed("patient", "link", "finish", "--profile", str(new)).returncode == 2  # --confirm, no terminal
    early = rxfed("patient", "link", "finish", "--profile", str(new), "--confirm", "AAAA-AAAA-AAAA-AAAA")
    assert early.returncode == 1 and "no active device has enrolled" in early.stderr
    assert rxfed("patient", "show", "--profile", str(new)).returncode == 1  # not linked yet
    assert rxfed("patient", "devices", "add", "rxfed-link:nonsense", "--profile", str(profile)).returncode == 2
    added = rxfed("patient", "devices", "add", link, "--profile", str(profile), "--json")
    assert added.returncode == 0, added.stderr
    doc = json.loads(added.stdout)
    wrong = rxfed("patient", "link", "finish", "--profile", str(new), "--confirm", "AAAA-AAAA-AAAA-AAAA")
    assert wrong.returncode == 1
    out = rxfed("patient", "link", "finish", "--profile", str(new), "--confirm", doc["confirmation"], "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["patient"] == profile.patient
    assert rxfed("patient", "show", "--profile", str(new)).returncode == 0
    devices = json.loads(rxfed("patient", "devices", "list", "--profile", str(profile), "--json").stdout)["devices"]
    laptop = next(d for d in devices if d["device"] == doc["device"])
    assert laptop["known"] == "enrolled" and laptop["verified"]


def test_delete_account(profile):
    assert rxfed("patient", "delete-account", "--profile", str(profile)).returncode == 2  # needs --yes without a tty
    out = rxfed("patient", "delete-account", "--profile", str(profile), "--yes", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["erased"] is True
    assert not (profile / "keys.json").exists()


@pytest.mark.skipif(not FHIR.is_dir(), reason="shared/data/fhir not present")
def test_fhir_import_export(profile, tmp_path):
    src = next(FHIR.glob("Alberto*.json"))
    out = rxfed("patient", "import", "--profile", str(profile), "--fhir", str(src), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["imported"]["condition"] == 3 and doc["imported"]["treatment"] == 2
    dest = tmp_path / "out.json"
    out = rxfed("patient", "export", "--profile", str(profile), "--fhir", str(dest))
    assert out.returncode == 0, out.stderr
    bundle = json.loads(dest.read_text())
    types = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert {"Patient", "Condition", "MedicationStatement", "Observation"} <= types
    bad = tmp_path / "bad.json"
    bad.write_text('{"resourceType": "Patient"}')
    out = rxfed("patient", "import", "--profile", str(profile), "--fhir", str(bad))
    assert out.returncode == 2 and "Traceback" not in out.stderr


EHR = Path(__file__).resolve().parent / "data" / "fhir"


@pytest.mark.skipif(not FHIR.is_dir(), reason="shared/data/fhir not present")
def test_importing_a_file_again_adds_nothing_and_says_so(profile):
    src = str(next(FHIR.glob("Edward*.json")))
    first = json.loads(rxfed("patient", "import", "--profile", str(profile), "--fhir", src, "--json").stdout)
    assert first["records"] >= 40 and first["already_imported"] == 0
    assert {"type": "Claim", "reason": "rxfed keeps no records of this resource type", "count": 9} in first["skipped_why"]
    again = rxfed("patient", "import", "--profile", str(profile), "--fhir", src)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == f"nothing new: all {first['records']} records of this file were imported before"
    assert "were imported before and are left as they are" in again.stderr
    assert "skipped 9 Claim: rxfed keeps no records of this resource type" in again.stderr
    shown = json.loads(rxfed("patient", "show", "--profile", str(profile), "--json").stdout)["records"]
    assert len(shown) == first["records"]


def test_import_says_what_it_skipped_and_why(profile):
    out = rxfed("patient", "import", "--profile", str(profile), "--fhir", str(EHR / "text-only-conditions.json"), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["skipped"] == {"Condition": 3} and sum(t["count"] for t in doc["skipped_why"]) == 3
    assert "skipped 1 Condition: marked entered-in-error" in out.stderr
    assert "1 Condition kept with its label only" in out.stderr
    assert [n["type"] for n in doc["notes"]] == ["Condition", "Condition"]


def test_a_file_about_two_patients_is_refused_and_nothing_imported(profile):
    out = rxfed("patient", "import", "--profile", str(profile), "--fhir", str(EHR / "searchset-two-patients.json"))
    assert out.returncode == 1 and "2 different patients" in out.stderr and "Traceback" not in out.stderr
    assert rxfed("patient", "show", "--profile", str(profile)).stdout.strip() == "no records yet"


def test_export_to_standard_output_and_to_a_private_file(profile, tmp_path):
    assert rxfed("patient", "import", "--profile", str(profile), "--fhir", str(EHR / "epic-problem-list.json")).returncode == 0
    out = subprocess.run([sys.executable, "-m", "rxfed", "patient", "export", "--profile", str(profile), "--fhir", "-"],
                         capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["resourceType"] == "Bundle" and not (tmp_path / "-").exists()
    dest = tmp_path / "mine.json"
    dest.write_text("old")
    dest.chmod(0o644)
    assert rxfed("patient", "export", "--profile", str(profile), "--fhir", str(dest)).returncode == 0
    assert dest.stat().st_mode & 0o777 == 0o600 and json.loads(dest.read_text())["resourceType"] == "Bundle"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.json", "profile"]  # no temporary file left


def test_show_prints_clinical_dates_blood_pressure_and_rounded_values(profile):
    assert rxfed("patient", "import", "--profile", str(profile), "--fhir",
                 str(EHR / "cerner-medications-and-vitals.json")).returncode == 0
    shown = rxfed("patient", "show", "--profile", str(profile)).stdout.splitlines()
    assert all(re.search(r"  \[[0-9a-f]{8}\]$", line) for line in shown)  # each with its id, for record edit
    lines = [re.sub(r"  \[[0-9a-f]{8}\]$", "", line) for line in shown]
    assert "2024-02-27  observation Blood pressure: 148/91 mmHg" in lines
    assert "2024-02-27  observation Body mass index: 31.29 kg/m2" in lines
    assert "2009-06-01  condition   ICD10 I10 Essential (primary) hypertension" in lines
    assert "no date     condition   Chronic right knee pain since fall at work (no code)" in lines
    assert lines[0].startswith("2024-02-27") and lines[-1].startswith("no date")
    records = json.loads(rxfed("patient", "show", "--profile", str(profile), "--json").stdout)["records"]
    assert [r["date"] for r in records][:3] == ["2024-02-27"] * 3


def test_invite_only_node(tmp_path):
    data = tmp_path / "inv"
    port = free_port()
    assert rxfed("node", "init", str(data), "--name", "inv", "--port", str(port), "--registration", "invite").returncode == 0
    out = rxfed("node", "invite", str(data), "--count", "2", "--json")
    codes = json.loads(out.stdout)["codes"]
    assert len(codes) == 2 and len(set(codes)) == 2
    assert rxfed("node", "init", str(data), "--name", "again").returncode == 1  # exists: refused


def test_plugins_list(tmp_path):
    out = rxfed("plugins", "list", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert "sqlite" in doc["storage_backends"]
    rows = {row["name"]: row for row in doc["plugins"]}
    assert rows["sqlite"]["enabled"] and rows["sqlite"]["manifest"] is None
    assert all(set(row) >= {"name", "enabled", "disabled_reason", "manifest"} for row in rows.values())
    assert all(set(kind) >= {"name", "plugin"} for kind in doc["signal_kinds"])
    if "tally" in rows:  # the example plugin, when installed
        assert rows["tally"]["manifest"]["reads"] == ["diagnosis.category"]
    # Disabled by a node's configuration: listed, not loaded.
    data = tmp_path / "node"
    assert rxfed("node", "init", str(data), "--name", "plugins", "--port", "18998").returncode == 0
    config = (data / "rxfed.toml").read_text()
    (data / "rxfed.toml").write_text(config.replace("[plugins]\ndisabled = []", '[plugins]\ndisabled = ["sqlite"]'))
    doc = json.loads(rxfed("plugins", "list", "--node-dir", str(data), "--json").stdout)
    row = next(row for row in doc["plugins"] if row["name"] == "sqlite")
    assert not row["enabled"] and row["disabled_reason"] == "disabled in configuration"
    assert "sqlite" not in doc["storage_backends"]
    assert "sqlite\tdisabled" in rxfed("plugins", "list", "--disable", "sqlite").stdout


def test_demo_json():
    out = rxfed("demo", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert len(doc["patients"]) == 2
    for p in doc["patients"]:
        assert len(p["patient_sees"]) == 3 and len(p["node_stores"]) == 3
    consent = doc["consent"]
    assert consent["plugin_summary_before"] == {"lamotrigine": {"medium": "<11"}, "levetiracetam": {"high": "<11"}}
    assert consent["plugin_summary_after"] == {"lamotrigine": {"medium": "<11"}} and consent["plugin_holds_after"] == 1
    assert [e["event"] for e in consent["audit"]["amara"]["entries"]] == \
        ["granted", "shared", "used", "revoked", "acknowledged"]
    assert all(view["verified"] for view in consent["audit"].values())
    moderation = doc["moderation"]
    assert (moderation["status"], moderation["category"], moderation["reporter_named"]) == (
        "verified", "drug_sourcing", False)
    # A verified clinician answers: issued by her hospital after its NPI backend accepted her,
    # checked by a reader on another node itself, refused once the hospital revoked it.
    clinician = doc["clinician"]
    hospital = doc["nodes"][clinician["node"]]["node_id"]
    assert clinician["node"] == "hospital-a" and clinician["reader_node"] == "hospital-b"
    assert [(v["backend"], v["accepted"]) for v in clinician["verdicts"]] == [("npi", True)]
    assert clinician["did"].startswith("did:key:z6Mk") and clinician["specialty"] == "2084N0400X"
    assert clinician["badge_claims"] == ["id", "role", "specialty"]  # no name, no NPI on a post
    seen = clinician["reader_sees"]
    assert seen["verified"] and seen["reason"] is None and seen["clinician"] == clinician["did"]
    assert seen["badge"] == f"verified physician, Neurology, hospital-a ({hospital})"
    assert seen["issuer"] == "did:web:" + hospital.replace(":", "%3A")
    refused = clinician["reader_sees_after_revoke"]
    assert clinician["revoked"] and not refused["verified"] and refused["badge"] is None
    assert refused["reason"] == "credential_revoked"
    assert "1234567893" not in json.dumps([seen, refused]) and "Okafor" not in json.dumps([seen, refused])
    from rxfed.cli.demo import _lines

    text = "\n".join(_lines(doc))
    assert f"[{seen['badge']}]" in text and "[clinician badge REFUSED: the issuer has revoked the credential]" in text
    seen = doc["insights"]["amara_reads"]
    assert seen["nodes"] == 3 and seen["epsilon"] == "1/2" and seen["release"] == doc["insights"]["round"]
    assert [t["treatment"] for t in seen["treatments"]] == ["lamotrigine", "levetiracetam"]
    assert all(t["reports"] == "<11" or t["reports"] >= 11 for t in seen["treatments"])
    devices = doc["devices"]
    assert devices["revoked"] == [devices["laptop"]] and devices["epoch"] == 2
    assert list(devices["community_rekeyed"].values()) == ["rekeyed"]
    assert devices["old_member_key"] != devices["new_member_key"]


def test_community_commands(node_url, profile, tmp_path):
    p = str(profile)
    out = rxfed("community", "create", "--profile", p, "Test group", "--condition", "G40", "--json")
    assert out.returncode == 0, out.stderr
    address = json.loads(out.stdout)["address"]
    listed = json.loads(rxfed("community", "list", "--node", node_url, "--json").stdout)["communities"]
    assert [c["address"] for c in listed] == [address]
    other = tmp_path / "other"
    assert rxfed("patient", "register", "--node", node_url, "--profile", str(other)).returncode == 0
    assert rxfed("community", "join", "--profile", str(other), address).returncode == 0
    posted = rxfed("community", "post", "--profile", p, address, "hello MARKERCLI", "--json")
    assert posted.returncode == 0 and json.loads(posted.stdout)["warnings"] == []
    out = rxfed("community", "read", "--profile", str(other), address, "--json")
    doc = json.loads(out.stdout)
    assert [m["text"] for m in doc["messages"]] == ["hello MARKERCLI"] and len(doc["members"]) == 2
    assert "hello MARKERCLI" in rxfed("community", "read", "--profile", str(other), address).stdout
    assert rxfed("community", "leave", "--profile", str(other), address).returncode == 0
    assert rxfed("community", "read", "--profile", str(other), address).returncode == 1  # no longer a member
    assert rxfed("community", "join", "--profile", p, "not-an-address").returncode == 2
    assert rxfed("community", "create", "--profile", p, "x", "--condition", "nonsense").returncode == 2


def test_node_admin_commands(tmp_path):
    data = tmp_path / "adm"
    assert rxfed("node", "init", str(data), "--name", "adm", "--port", "18999").returncode == 0
    for bad in ("SHA256:wrongwrong", "SHA256:abc", "sha256:" + "A" * 43, "SHA256:" + "A" * 42 + "B", "SHA256:" + "A" * 44):
        refused = rxfed("node", "peers", str(data), "allow", "partner.example", "--fingerprint", bad)
        assert refused.returncode == 2 and "fingerprint" in refused.stderr, (bad, refused.stderr)
    assert rxfed("node", "peers", str(data), "list", "--json").stdout.count("partner.example") == 0  # nothing stored
    from rxfed.crypto import SigningKeyPair, fingerprint

    fp = fingerprint(SigningKeyPair.generate().public)
    assert rxfed("node", "peers", str(data), "allow", "partner.example", "--fingerprint", fp).returncode == 0
    assert rxfed("node", "peers", str(data), "block", "rogue.example").returncode == 0
    accepted = rxfed("node", "peers", str(data), "accept-key", "partner.example", "--json")
    assert accepted.returncode == 0 and json.loads(accepted.stdout) == {"peer": "partner.example", "pinned": fp}
    assert rxfed("node", "peers", str(data), "accept-key", "stranger.example").returncode == 2
    assert rxfed("node", "peers", str(data), "accept-key").returncode == 2
    peers = json.loads(rxfed("node", "peers", str(data), "list", "--json").stdout)["peers"]
    assert {(p["node_id"], p["policy"]) for p in peers} == {("partner.example", "allowed"), ("rogue.example", "blocked")}
    assert [p["trusted_keys"] for p in peers] == [[], []]
    assert rxfed("node", "peers", str(data), "allow").returncode == 2  # needs a PEER
    assert rxfed("node", "peers", str(data), "allow", "Not A Node!").returncode == 2
    outbox = json.loads(rxfed("node", "outbox", str(data), "list", "--json").stdout)
    assert outbox == {"destinations": [], "dead_letters": []}
    assert json.loads(rxfed("node", "outbox", str(data), "replay", "--json").stdout) == {"replayed": 0}
    rotated = json.loads(rxfed("node", "rotate-key", str(data), "--overlap-days", "2", "--json").stdout)
    status = json.loads(rxfed("node", "status", str(data), "--json").stdout)
    assert len(status["keys"]) == 2 and status["keys"][1]["fingerprint"] == rotated["fingerprint"]
    assert status["keys"][0]["expires_in_days"] == pytest.approx(2, abs=0.1)
    assert {p["node_id"] for p in status["peers"]} == {"partner.example", "rogue.example"}
    assert status["queued_events"] == 0 and status["dead_letters"] == 0


def test_consent_commands(node_url, profile, tmp_path):
    node_id = node_url.removeprefix("http://")
    assert rxfed("patient", "treatment", "add", "--profile", str(profile), "Metformin 500 mg", "--efficacy", "8").returncode == 0
    preview = rxfed("patient", "signals", "--profile", str(profile), "--kind", "treatment.outcome", "--json")
    assert preview.returncode == 0, preview.stderr
    assert {"kind": "treatment.outcome", "body": {"treatment": "metformin", "efficacy": "high", "status": "ongoing"}} \
        in json.loads(preview.stdout)["signals"]
    granted = rxfed("patient", "consent", "grant", "--profile", str(profile), "--kind", "treatment.outcome",
                    "--purpose", "research", "--to", f"plugin:{node_id}/outcomes", "--until", "2099-01-01")
    assert granted.returncode == 2 and "at most a year" in granted.stderr
    granted = rxfed("patient", "consent", "grant", "--profile", str(profile), "--kind", "treatment.outcome",
                    "--purpose", "research", "--to", f"plugin:{node_id}/outcomes")
    assert granted.returncode == 0, granted.stderr
    grant_id = granted.stdout.strip().splitlines()[-1]
    assert "sent 1 signal(s)" in granted.stdout
    bad = rxfed("patient", "consent", "grant", "--profile", str(profile), "--kind", "sleep.band",
                "--purpose", "research", "--to", "federation")
    assert bad.returncode == 2 and "unknown signal kind" in bad.stderr and bad.stdout == ""
    other = rxfed("patient", "consent", "grant", "--profile", str(profile), "--kind", "treatment.outcome",
                  "--purpose", "matching", "--to", "federation", "--nodes", f"{node_id},partner.example")
    assert other.returncode == 2 and "not partner.example" in other.stderr and other.stdout == ""
    listed = json.loads(rxfed("patient", "consent", "list", "--profile", str(profile), "--json").stdout)
    assert [g["grant"] for g in listed["grants"]] == [grant_id] and listed["grants"][0]["status"] == "live"
    assert listed["grants"][0]["nodes"] == [node_id] and listed["grants"][0]["forged"] == []
    revoked = rxfed("patient", "consent", "revoke", "--profile", str(profile), grant_id, "--json")
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["pending"] == []
    audit = json.loads(rxfed("patient", "audit", "--profile", str(profile), "--json").stdout)
    assert audit["verified"] and [e["event"] for e in audit["entries"]] == \
        ["granted", "shared", "used", "revoked", "acknowledged"]
    assert audit["acknowledgements"] == {"5": "verified"}
    out = tmp_path / "consent.json"
    out.write_text("old")
    out.chmod(0o644)
    exported = rxfed("patient", "consent", "export", "--profile", str(profile), "--fhir", str(out))
    assert exported.returncode == 0 and json.loads(out.read_text())["resourceType"] == "Bundle"
    assert out.stat().st_mode & 0o777 == 0o600  # what the patient shares, and with whom: private
    piped = subprocess.run([sys.executable, "-m", "rxfed", "patient", "consent", "export", "--profile", str(profile),
                            "--fhir", "-"], capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=60,
                           stdin=subprocess.DEVNULL)
    assert piped.returncode == 0 and json.loads(piped.stdout)["resourceType"] == "Bundle"
    assert not (tmp_path / "-").exists() and "wrote 1 FHIR Consent resources" in piped.stderr


# -- records a patient can fix ------------------------------------------------------------


def test_record_edit_and_delete(profile):
    p = str(profile)
    added = rxfed("patient", "condition", "add", "--profile", p, "E11.9", "--label", "diabetis", "--json")
    record = json.loads(added.stdout)
    edited = rxfed("patient", "record", "edit", record["id"][:10], "--profile", p, "--label", "type 2 diabetes",
                   "--onset", "2019-03-01", "--json")
    assert edited.returncode == 0, edited.stderr
    doc = json.loads(edited.stdout)
    assert set(doc) == {"id", "kind", "version", "data"}
    assert doc["id"] == record["id"] and doc["version"] == 2 and doc["kind"] == "condition"
    assert doc["data"]["label"] == "type 2 diabetes" and doc["data"]["onset"] == "2019-03-01"
    assert doc["data"]["code"] == "E11.9"
    human = rxfed("patient", "record", "edit", record["id"], "--profile", p, "--label", "")  # clears the label
    assert human.returncode == 0 and human.stdout.strip().splitlines()[-1] == record["id"]
    shown = json.loads(rxfed("patient", "show", "--profile", p, "--json").stdout)["records"]
    assert [(r["id"], r["version"], r["data"]["label"]) for r in shown] == [(record["id"], 3, None)]
    # Fields of another kind, nothing to change, an invalid value: bad usage, nothing changed.
    for extra in (["--feeling", "5"], [], ["--code", "nonsense"], ["--onset", "yesterday"]):
        out = rxfed("patient", "record", "edit", record["id"], "--profile", p, *extra)
        assert out.returncode == 2 and out.stdout == "", (extra, out.stderr)
    assert rxfed("patient", "record", "edit", "0" * 32, "--profile", p, "--label", "x").returncode == 1
    assert rxfed("patient", "record", "edit", "abc", "--profile", p, "--label", "x").returncode == 2  # too short
    journal = json.loads(rxfed("patient", "journal", "add", "--profile", p, "--symptom", "pain=4", "--symptom",
                               "fatigue=2", "--feeling", "6", "--json").stdout)
    out = rxfed("patient", "record", "edit", journal["id"], "--profile", p, "--symptom", "pain=", "--symptom",
                "nausea=3", "--feeling", "", "--note", "felt better after lunch", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)["data"]
    assert data["symptoms"] == {"fatigue": 2, "nausea": 3} and data["feeling"] is None
    assert data["note"] == "felt better after lunch"
    deleted = rxfed("patient", "record", "delete", journal["id"], "--profile", p, "--json")
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout) == {"id": journal["id"], "kind": "journal", "deleted": True}
    shown = json.loads(rxfed("patient", "show", "--profile", p, "--json").stdout)["records"]
    assert [r["id"] for r in shown] == [record["id"]]
    assert rxfed("patient", "record", "delete", journal["id"], "--profile", p).returncode == 1  # gone


def test_treatment_edit_keeps_what_is_not_changed(profile):
    p = str(profile)
    t = json.loads(rxfed("patient", "treatment", "add", "--profile", p, "metformim", "--dose", "500 mg",
                         "--efficacy", "7", "--side-effect", "nausea", "--json").stdout)
    out = rxfed("patient", "record", "edit", t["id"], "--profile", p, "--name", "metformin", "--side-effect", "",
                "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)["data"]
    assert (data["name"], data["dose"], data["efficacy"], data["side_effects"]) == ("metformin", "500 mg", 7, [])


# -- the profile: default path, RXFED_PROFILE, passphrase length ---------------------------


def test_profile_from_rxfed_profile_and_default(node_url, tmp_path):
    env = {**ENV, "RXFED_PROFILE": str(tmp_path / "via-env")}
    out = rxfed("patient", "register", "--node", node_url, env=env)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "via-env" / "keys.json").exists()
    assert rxfed("patient", "condition", "add", "I10", env=env).returncode == 0
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in ENV.items() if k != "RXFED_PROFILE"} | {"HOME": str(home)}
    assert rxfed("patient", "register", "--node", node_url, env=env).returncode == 0
    assert (home / ".rxfed" / "keys.json").exists()
    assert rxfed("patient", "condition", "add", "E11", env=env).returncode == 0
    shown = json.loads(rxfed("patient", "show", "--json", env=env).stdout)["records"]
    assert [r["data"]["code"] for r in shown] == ["E11"]
    missing = rxfed("patient", "show", env={**env, "HOME": str(tmp_path / "nobody")})
    assert missing.returncode == 1 and "no profile in" in missing.stderr and "RXFED_PROFILE" in missing.stderr


def test_a_short_passphrase_is_refused(node_url, tmp_path):
    out = rxfed("patient", "register", "--node", node_url, "--profile", str(tmp_path / "p"),
                env={**ENV, "RXFED_PASSPHRASE": "x"})
    assert out.returncode == 2 and "at least 15 characters" in out.stderr
    assert not (tmp_path / "p" / "keys.json").exists()
    out = rxfed("patient", "register", "--node", node_url, "--profile", str(tmp_path / "q"),
                env={**ENV, "RXFED_PASSPHRASE": "fourteen chars"})
    assert out.returncode == 2


def test_a_short_new_passphrase_is_refused(profile):
    out = rxfed("patient", "passphrase", "--profile", str(profile), env={**ENV, "RXFED_NEW_PASSPHRASE": "short"})
    assert out.returncode == 2 and "at least 15 characters" in out.stderr
    assert rxfed("patient", "show", "--profile", str(profile)).returncode == 0  # the old one still opens it


# -- usage and exit codes -------------------------------------------------------------------


@pytest.mark.parametrize("url", ["127.0.0.1:8472", "localhost:8472", "rxfed.example.org", "ftp://example.org"])
def test_node_url_without_scheme_is_bad_usage(url, tmp_path):
    out = rxfed("patient", "register", "--node", url, "--profile", str(tmp_path / "p"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "scheme" in out.stderr or "not a URL" in out.stderr
    assert not (tmp_path / "p").exists()
    assert rxfed("community", "list", "--node", url).returncode == 2


def test_node_url_hint_names_the_scheme():
    out = rxfed("community", "list", "--node", "127.0.0.1:8472")
    assert "http://127.0.0.1:8472" in out.stderr


def test_show_into_a_closed_pipe_ends_quietly(profile):
    """``rxfed patient show | head -1``: the conventional end by SIGPIPE, not an error."""
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "rxfed", "patient", "show", "--profile", str(profile)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=ENV)
    proc.stdout.close()  # the reader is gone before the command writes
    err = proc.stderr.read().decode()
    assert proc.wait(60) == -signal.SIGPIPE
    assert err == ""


def test_export_to_a_closed_pipe_ends_quietly_too(profile):
    """``export --fhir -`` writes the Bundle to standard output itself."""
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "rxfed", "patient", "export", "--profile", str(profile), "--fhir",
                             "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=ENV)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(60) == -signal.SIGPIPE and err == ""


def test_invite_on_an_open_node_is_a_refusal(tmp_path):
    data = tmp_path / "open"
    assert rxfed("node", "init", str(data), "--name", "open", "--port", str(free_port())).returncode == 0
    out = rxfed("node", "invite", str(data))
    assert out.returncode == 1 and "invite" in out.stderr


def test_missing_and_non_json_import_files_are_both_bad_usage(profile, tmp_path):
    missing = rxfed("patient", "import", "--profile", str(profile), "--fhir", str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    garbage = tmp_path / "garbage.json"
    garbage.write_text("this is not JSON")
    out = rxfed("patient", "import", "--profile", str(profile), "--fhir", str(garbage))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert rxfed("patient", "import", "--profile", str(profile), "--fhir", str(tmp_path)).returncode == 2  # a dir


def test_actions_are_named_when_missing_or_wrong(profile):
    out = rxfed("patient", "recovery-code", "--profile", str(profile))
    assert out.returncode == 2 and "invalid choice" not in out.stderr and "rotate" in out.stderr
    out = rxfed("patient", "recovery-code", "turn", "--profile", str(profile))
    assert out.returncode == 2 and "'turn' is not an action" in out.stderr and "rotate" in out.stderr
    # --profile before the action is taken too
    out = rxfed("patient", "devices", "--profile", str(profile), "list", "--json")
    assert out.returncode == 0, out.stderr


def test_community_post_prints_its_id_last(profile):
    p = str(profile)
    address = json.loads(rxfed("community", "create", "--profile", p, "Ids", "--json").stdout)["address"]
    out = rxfed("community", "post", "--profile", p, address, "hello")
    assert out.returncode == 0, out.stderr
    post_id = out.stdout.strip().splitlines()[-1]
    doc = json.loads(rxfed("community", "post", "--profile", p, address, "again", "--json").stdout)
    assert len(post_id) == 43 and doc["id"] != post_id and len(doc["id"]) == 43


def test_delete_account_leaves_communities_first(profile, node_url, tmp_path):
    organiser = tmp_path / "organiser"
    assert rxfed("patient", "register", "--node", node_url, "--profile", str(organiser)).returncode == 0
    address = json.loads(rxfed("community", "create", "--profile", str(organiser), "Leavers", "--json").stdout)["address"]
    assert rxfed("community", "join", "--profile", str(profile), address).returncode == 0
    out = rxfed("patient", "delete-account", "--profile", str(profile), "--yes", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["left"] == [address]
    members = json.loads(rxfed("community", "read", "--profile", str(organiser), address, "--json").stdout)["members"]
    assert [m["status"] for m in members if not m["me"]] == ["left"]


# -- shell completion and progress -----------------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_shell_completion_scripts(shell):
    out = rxfed("completion", shell)
    assert out.returncode == 0, out.stderr
    assert "patient" in out.stdout and "unlock" in out.stdout and "recovery-code" in out.stdout
    if shell == "zsh":
        assert out.stdout.startswith("#compdef rxfed")
    else:
        import shutil

        if shutil.which("bash"):
            check = subprocess.run(["bash", "-c", 'eval "$(cat)"; complete -p rxfed'], input=out.stdout,
                                   capture_output=True, text=True, timeout=30)
            assert check.returncode == 0 and "rxfed" in check.stdout, check.stderr


def _observations(n: int, prefix: str = "obs") -> dict:
    """A hospital export of ``n`` vital-sign Observations for one patient."""
    entries = [{"fullUrl": "urn:uuid:patient-1", "resource": {"resourceType": "Patient", "id": "patient-1",
                                                             "birthDate": "1970-05-01", "gender": "female"}}]
    for i in range(n):
        entries.append({"fullUrl": f"urn:uuid:{prefix}-{i}", "resource": {
            "resourceType": "Observation", "id": f"{prefix}-{i}", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
            "subject": {"reference": "urn:uuid:patient-1"},
            "effectiveDateTime": f"2020-01-{1 + i % 28:02d}T08:00:00Z",
            "valueQuantity": {"value": 60 + i % 30, "unit": "/min", "system": "http://unitsofmeasure.org",
                              "code": "/min"}}})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def test_progress_on_a_terminal_only(profile, tmp_path):
    import pty

    def import_args(name: str) -> list[str]:  # two exports (importing one again adds nothing)
        bundle = tmp_path / f"{name}.json"
        bundle.write_text(json.dumps(_observations(150, name)))
        return [sys.executable, "-m", "rxfed", "patient", "import", "--profile", str(profile), "--fhir", str(bundle)]

    piped = subprocess.run(import_args("piped"), capture_output=True, text=True, env=ENV, timeout=60,
                           stdin=subprocess.DEVNULL)
    assert piped.returncode == 0, piped.stderr
    assert "storing records" not in piped.stderr
    leader, follower = pty.openpty()
    proc = subprocess.Popen(import_args("terminal"), stdout=subprocess.PIPE, stderr=follower,
                            stdin=subprocess.DEVNULL, env=ENV)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    assert proc.wait(60) == 0
    os.close(leader)
    assert b"storing records: 64/" in shown and b"(100%)" in shown
    assert b"imported" in proc.stdout.read()


def test_join_through_a_node_that_will_not_deliver_says_why(profile, tmp_path):
    """The host answers the patient's device, but the patient's home node never contacts a
    loopback peer its operator did not allow: the join is refused, saying so, not "sent"."""
    nodes = serve_node(tmp_path / "host", "CLI host node")
    host = next(nodes)
    try:
        organiser = tmp_path / "organiser"
        assert rxfed("patient", "register", "--node", host, "--profile", str(organiser)).returncode == 0
        created = rxfed("community", "create", "--profile", str(organiser), "Elsewhere", "--json")
        address = json.loads(created.stdout)["address"]
        out = rxfed("community", "join", "--profile", str(profile), address)
        assert out.returncode == 1 and "join sent" not in out.stdout
        assert f"will not deliver to {host.removeprefix('http://')}" in out.stderr
        assert "private address" in out.stderr and "rxfed node peers" in out.stderr
        shown = json.loads(rxfed("patient", "show", "--profile", str(profile), "--kind", "community", "--json").stdout)
        assert shown["records"] == []
    finally:
        next(nodes, None)


def test_a_grant_is_checked_against_what_its_recipients_publish(profile, node_url, tmp_path):
    """A plugin the other node does not have, or a purpose no node serves, is refused before
    anything is signed, from what each node publishes itself; a grant to a plugin that is
    there is made and says who receives it."""
    home = node_url.removeprefix("http://")
    nodes = serve_node(tmp_path / "other", "CLI other node")
    other_url = next(nodes)
    other = other_url.removeprefix("http://")
    try:
        assert rxfed("node", "peers", str(tmp_path / "other"), "allow", home, "--url", node_url).returncode == 0
        allowed = rxfed("node", "peers", str(NODE_DIRS[node_url]), "allow", other, "--url", other_url)
        assert allowed.returncode == 0, allowed.stderr
        assert rxfed("patient", "treatment", "add", "--profile", str(profile), "Metformin", "--efficacy", "8"
                     ).returncode == 0
        for _ in range(50):  # the running node sees the operator's `peers allow` within moments
            offered = json.loads(rxfed("patient", "consent", "recipients", "--profile", str(profile), "--json").stdout)
            by_node = {n["node_id"]: n["plugins"] for n in offered["nodes"]}
            if other in by_node:
                break
            time.sleep(0.2)
        assert set(by_node) == {home, other} and "treatment.outcome" in offered["kinds"]
        assert {"name": "outcomes", "reads": ["treatment.outcome"], "purposes": ["research"]}.items() <= \
            next(p for p in by_node[other] if p["name"] == "outcomes").items()

        def grant(*args):
            return rxfed("patient", "consent", "grant", "--profile", str(profile), "--kind", "treatment.outcome",
                         *args)

        nosuch = grant("--purpose", "research", "--to", f"plugin:{other}/nosuch")
        assert nosuch.returncode == 2 and nosuch.stdout == ""
        assert f"{other} has no plugin 'nosuch'" in nosuch.stderr and "outcomes (treatment.outcome for research)" \
            in nosuch.stderr and "rxfed plugins list" not in nosuch.stderr
        wrong = grant("--purpose", "matching", "--to", f"plugin:{other}/outcomes")
        assert wrong.returncode == 2 and "reads treatment.outcome for research, not treatment.outcome for matching" \
            in wrong.stderr
        advertising = grant("--purpose", "advertising", "--to", "federation")
        assert advertising.returncode == 2 and advertising.stdout == ""
        assert "no plugin on" in advertising.stderr and "for advertising" in advertising.stderr
        assert "purposes served there for treatment.outcome: insights, research" in advertising.stderr
        listed = json.loads(rxfed("patient", "consent", "list", "--profile", str(profile), "--json").stdout)
        assert listed["grants"] == []  # nothing was signed or sent
        made = grant("--purpose", "research", "--to", f"plugin:{other}/outcomes", "--json")
        assert made.returncode == 0, made.stderr
        doc = json.loads(made.stdout)
        assert doc["receivers"] == {other: ["outcomes"]} and doc["nodes"] == [other]
        shown = grant("--purpose", "research", "--to", "federation")
        assert shown.returncode == 0, shown.stderr
        line = next(x for x in shown.stdout.splitlines() if x.startswith("received by: "))
        assert sorted(line.removeprefix("received by: ").split(", ")) == sorted([f"{home}/outcomes",
                                                                                 f"{other}/outcomes"])
    finally:
        next(nodes, None)


def test_community_report_queue_and_actions(node_url, profile, tmp_path):
    """report, reports and act through the CLI: the admin (a moderator) sees the verified
    report, hides the message; the member's read says the message was hidden and shows no text."""
    p = str(profile)
    address = json.loads(rxfed("community", "create", "--profile", p, "Moderated", "--json").stdout)["address"]
    other = tmp_path / "member"
    assert rxfed("patient", "register", "--node", node_url, "--profile", str(other)).returncode == 0
    assert rxfed("community", "join", "--profile", str(other), address).returncode == 0
    posted = rxfed("community", "post", "--profile", str(other), address, "selling my spare oxycodone, DM me",
                   "--send-anyway", "--json")
    assert posted.returncode == 0, posted.stderr
    seq = json.loads(posted.stdout)["seq"]
    assert rxfed("community", "report", "--profile", p, address, str(seq), "--category", "nonsense").returncode == 2
    reported = rxfed("community", "report", "--profile", p, address, str(seq), "--category", "drug_sourcing", "--json")
    assert reported.returncode == 0, reported.stderr
    assert set(json.loads(reported.stdout)) == {"address", "seq", "category", "report", "queued", "id"}
    queue = json.loads(rxfed("community", "reports", "--profile", p, address, "--json").stdout)["reports"]
    assert [(r["status"], r["seq"], r["category"]) for r in queue] == [("verified", seq, "drug_sourcing")]
    assert set(queue[0]) == {"report", "time", "seq", "category", "text", "sender", "sent", "status", "reason",
                             "actions"}
    refused = rxfed("community", "reports", "--profile", str(other), address)
    assert refused.returncode == 1 and "moderator" in refused.stderr
    assert rxfed("community", "act", "--profile", p, address, "hide", "--reason", "x").returncode == 2
    assert rxfed("community", "act", "--profile", p, address, "explode", "--seq", str(seq), "--reason", "x").returncode == 2
    not_mod = rxfed("community", "act", "--profile", str(other), address, "hide", "--seq", str(seq), "--reason", "spam")
    assert not_mod.returncode == 1 and "moderator" in not_mod.stderr
    acted = rxfed("community", "act", "--profile", p, address, "hide", "--seq", str(seq), "--reason", "drug_sourcing",
                  "--json")
    assert acted.returncode == 0, acted.stderr
    assert set(json.loads(acted.stdout)) == {"address", "action", "member", "about", "reason", "seq", "queued", "id"}
    doc = json.loads(rxfed("community", "read", "--profile", str(other), address, "--json").stdout)
    assert doc["messages"] == [] and [h["seq"] for h in doc["hidden"]] == [seq] and doc["hidden"][0]["mine"]
    text = rxfed("community", "read", "--profile", str(other), address).stdout
    assert "hidden by a moderator: drug_sourcing" in text and "oxycodone" not in text
    warned = rxfed("community", "act", "--profile", p, address, "warn", "--seq", str(seq), "--reason", "no selling")
    assert warned.returncode == 0
    assert "a moderator warned you about message" in rxfed("community", "read", "--profile", str(other), address).stdout
    assert rxfed("community", "act", "--profile", str(other), address, "ban", "--seq", str(seq),
                 "--reason", "x").returncode == 1  # no moderator
    # The moderator forwards the report to the sender's home node (here this node itself),
    # whose operator lists it: the pseudonym, the category and the text, no reporter.
    assert rxfed("community", "act", "--profile", p, address, "forward", "--reason", "spam").returncode == 2
    sent = rxfed("community", "act", "--profile", p, address, "forward", "--seq", str(seq), "--json")
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["reason"] == "drug_sourcing"
    kept = json.loads(rxfed("node", "reports", str(NODE_DIRS[node_url]), "--json").stdout)["reports"]
    assert [(r["seq"], r["category"], r["text"]) for r in kept] == [(seq, "drug_sourcing",
                                                                     "selling my spare oxycodone, DM me")]
    assert kept[0]["sender"] == doc["hidden"][0]["sender"]
    banned = rxfed("community", "act", "--profile", p, address, "ban", "--seq", str(seq), "--reason", "drug_sourcing",
                   "--json")
    assert banned.returncode == 0, banned.stderr
    assert json.loads(banned.stdout)["member"] == kept[0]["sender"]
    members = json.loads(rxfed("community", "read", "--profile", p, address, "--json").stdout)["members"]
    assert [m["banned"] for m in members if m["member"] == kept[0]["sender"]] == [True]
