"""The ``rxfed`` command as people and scripts use it: stdout, stderr, exit codes, --json."""

from __future__ import annotations

import json
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


@pytest.fixture(scope="module")
def node_url(tmp_path_factory):
    data = tmp_path_factory.mktemp("cli") / "node"
    port = free_port()
    init = rxfed("node", "init", str(data), "--name", "CLI test node", "--port", str(port), "--json")
    assert init.returncode == 0, init.stderr
    doc = json.loads(init.stdout)
    assert doc["node_id"] == f"127.0.0.1:{port}" and doc["fingerprint"].startswith("SHA256:")
    assert (data / "node-keys.json").stat().st_mode & 0o777 == 0o600
    config = (data / "rxfed.toml").read_text()
    (data / "rxfed.toml").write_text(config.replace("anonymous_per_minute = 30.0", "anonymous_per_minute = 6000.0"))
    proc = subprocess.Popen([sys.executable, "-m", "rxfed", "node", "run", str(data)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV)
    url = f"http://127.0.0.1:{port}"
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
    out = rxfed("patient", "passphrase", "--profile", str(new), env={**ENV, "RXFED_NEW_PASSPHRASE": "another one"})
    assert out.returncode == 0
    assert rxfed("patient", "show", "--profile", str(new), env={**ENV, "RXFED_PASSPHRASE": "another one"}).returncode == 0


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
    lines = rxfed("patient", "show", "--profile", str(profile)).stdout.splitlines()
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
    exported = rxfed("patient", "consent", "export", "--profile", str(profile), "--fhir", str(out))
    assert exported.returncode == 0 and json.loads(out.read_text())["resourceType"] == "Bundle"
