"""The web client's consent, without a browser: the page derives the same signals as the
built-in plugin in Python, its SNOMED CT table is the plugin's, and a node's page may reach
exactly the peers it federates with, whose public documents answer it across origins."""

from __future__ import annotations

import copy
import datetime as dt
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from rxfed.client import records as rec
from rxfed.client.fhir import import_bundle
from rxfed.client.records import Record
from rxfed.node import web as node_web
from rxfed_plugins import signals as builtin_signals

ROOT = Path(__file__).resolve().parents[1]
FHIR = [*sorted((ROOT.parent / "shared" / "data" / "fhir").glob("*.json")), *sorted((ROOT / "tests" / "data" / "fhir").glob("*.json"))]
TODAY = dt.date(2026, 11, 26)
KINDS = ("diagnosis.category", "treatment.outcome", "symptom.trend", "demographics.band")


def script(name: str):
    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pages_snomed_table_is_the_plugins():
    """The page derives categories with the table the plugin loads (tables.mjs is checked for
    staleness against scripts/web-tables.py in tests/test_web_records.py)."""
    from rxfed_plugins.signals import load_table

    text = (ROOT / "rxfed" / "web" / "js" / "tables.mjs").read_text(encoding="utf-8")
    line = next(line for line in text.splitlines() if line.startswith("export const SNOMED_ICD10 = "))
    published = json.loads(line.removeprefix("export const SNOMED_ICD10 = Object.freeze(").removesuffix(");"))
    assert published == load_table(), "run python3 scripts/web-tables.py (then scripts/web-manifest.py)"


def _record(n: int, kind: str, data: dict) -> Record:
    return Record(f"rec-{n}", 1, kind, f"2026-01-01T00:00:00.{n:06d}Z", data)


def _days_ago(n: int) -> str:
    return (TODAY - dt.timedelta(days=n)).isoformat()


def _handmade() -> list[list[tuple[str, dict]]]:
    """Record sets that walk every rule of spec/signals.md (names, dates, bands, merges)."""
    def t(name, *, started=None, stopped=None, code=None, status=None, **fields):
        # dates as a record may hold them (an import or another client), not only as typed here
        return ("treatment", {**rec.treatment(name, **fields), "started": started, "stopped": stopped, "code": code,
                              "status": status})

    treatments = [
        t("Metformin hydrochloride 500 MG Oral Tablet", started="2019-03-01", efficacy=7, adherence=9,
          side_effects=["Nausea (mild)", "nausea", "Stomach ache 2 days"], code={"system": "rxnorm", "code": "860975"}),
        t("metformin", started="2021-W05-3", efficacy=3, status="stopped"),
        t("Clonazepam [Klonopin]", stopped=_days_ago(3)),
        t("Acetaminophen 325 MG / Oxycodone Hydrochloride 5 MG Oral Tablet", started="18991231"),
        t("Amlodipine 5 MG / Hydrochlorothiazide 12.5 MG / Olmesartan medoxomil 20 MG Oral Tablet", efficacy=5,
          status="on-hold"),
        t("Product containing anastrozole (medicinal product)", started="2025-02-29"),
        t("Sodium Chloride 9 MG/ML Injectable Solution", code={"system": "rxnorm", "code": "12345678901"}),
        t("NDA020503 200 ACTUAT Albuterol 0.09 MG/ACTUAT Metered Dose Inhaler", stopped=TODAY.isoformat()),
        t("Ibuprofène 400 mg", efficacy=10, stopped="2099-01-01"),
        t("a sentence that is far too long to be the name of any medicine"),
        t("Lithium-containing product in oral dose form", started="2020W101"),
    ]
    journals = [("journal", rec.journal(symptoms=symptoms, date=_days_ago(ago))) for ago, symptoms in [
        (0, {"fatigue": 8, "Headache (left)": 2, "joint pain": 5}), (3, {"fatigue": 7, "brain fog": 4}),
        (13, {"fatigue": 6}), (14, {"fatigue": 3, "headache": 5, "joint pain": 5}), (20, {"fatigue": 4, "brain fog": 4}),
        (27, {"fatigue": 2, "joint pain": 4}), (28, {"fatigue": 10}), (-1, {"fatigue": 0}), (10, {"2nd symptom": 3}),
    ]]
    conditions = [("condition", {**rec.condition(code, system, onset=onset), **extra}) for code, system, onset, extra in [
        ("E11.9", "icd10", "2019-03-01", {}), ("e119", "icd10", "2015-06-01", {}), ("44054006", "snomed", "2012-01-01", {}),
        ("J45.909", "icd10", None, {"status": "resolved"}), ("195967001", "snomed", "2020-02-02", {"abatement": "2021-01-01"}),
        ("G40.909", "icd10", "1890-01-01", {}), ("I10", "icd10", "2030-01-01", {"status": "remission"}),
    ]] + [("condition", {"system": system, "code": code, "label": None, "onset": onset, "abatement": abatement,
                         "status": None}) for system, code, onset, abatement in [
        ("snomed", "160903007", None, None), ("icd10", " j45 ", "20190101", []), ("icd10", "Z59.0", None, None),
        ("snomed", "44054007", None, None), ("icd10", "ı10", None, None), ("snomed", " 38341003 ", "2001-W01", {}),
    ]]
    profile = ("profile", {"fhir_patient": {"resourceType": "Patient", "birthDate": "1980-05-17", "gender": "female",
                                            "address": [{"use": "old", "country": "FR"},
                                                        {"use": "work", "country": "united  kingdom"},
                                                        {"use": "home", "country": "USA"}]}})
    old = ("profile", {"fhir_patient": {"resourceType": "Patient", "birthDate": "1930", "gender": "other",
                                        "deceasedDateTime": "2021-04-01"}})
    very_old = ("profile", {"fhir_patient": {"resourceType": "Patient", "birthDate": "1931-02-03", "gender": "x"}})
    dead = ("profile", {"fhir_patient": {"resourceType": "Patient", "birthDate": "1950", "deceasedBoolean": True}})
    one_category = [("condition", rec.condition("G40.909", "icd10", onset="2010-01-01")), *treatments[:3]]
    return [treatments + journals + conditions + [profile], conditions + [old], conditions + treatments + [very_old],
            conditions + [dead], one_category, journals, []]


def _record_sets() -> list[list[tuple[str, dict]]]:
    sets = _handmade()
    for path in FHIR:
        try:
            result = import_bundle(json.loads(path.read_text()))
        except Exception:  # a file the importer refuses (two patients) is not a record set
            continue
        sets.append([(kind, data) for kind, data in result.records])
    return sets


def test_the_page_derives_the_same_signals_as_the_builtin_plugin(tmp_path):
    node_bin = shutil.which("node")
    if node_bin is None:
        pytest.skip("node is not installed: the web client's JavaScript needs it")
    sets = [[_record(n, kind, copy.deepcopy(data)) for n, (kind, data) in enumerate(s)] for s in _record_sets()]
    assert len(sets) >= 9
    python = [{kind: builtin_signals.derive(kind, records, TODAY) for kind in KINDS} for records in sets]
    # every kind gives something somewhere, so each derivation is compared on real output
    assert all(any(result[kind] for result in python) for kind in KINDS)
    data = tmp_path / "records.json"
    data.write_text(json.dumps([[{"id": r.id, "version": r.version, "kind": r.kind, "created": r.created,
                                  "data": r.data} for r in records] for records in sets]))
    runner = tmp_path / "derive.mjs"
    runner.write_text(
        f"import {{ readFileSync }} from 'node:fs';\n"
        f"import {{ derive }} from {json.dumps((ROOT / 'rxfed' / 'web' / 'js' / 'signals.mjs').as_uri())};\n"
        f"const sets = JSON.parse(readFileSync({json.dumps(str(data))}, 'utf8'));\n"
        f"const kinds = {json.dumps(list(KINDS))};\n"
        f"process.stdout.write(JSON.stringify(sets.map((records) => Object.fromEntries("
        f"kinds.map((k) => [k, derive(k, records, {json.dumps(TODAY.isoformat())})])))));\n")
    out = subprocess.run([node_bin, str(runner)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    javascript = json.loads(out.stdout)
    for i, (py, js) in enumerate(zip(python, javascript)):
        for kind in KINDS:
            assert js[kind] == py[kind], (i, kind)


def test_the_page_validates_signals_against_the_kinds_schema(tmp_path):
    """Every body the built-in kinds derive fits (in JS, under the schema the node
    publishes); a body that does not is refused naming its field, as SignalKind.validate."""
    node_bin = shutil.which("node")
    if node_bin is None:
        pytest.skip("node is not installed")
    kinds = {k.name: k.to_json() for k in builtin_signals.KINDS}
    sets = [[_record(n, kind, copy.deepcopy(data)) for n, (kind, data) in enumerate(s)] for s in _record_sets()]
    good = [[kind, body] for records in sets for kind in KINDS for body in builtin_signals.derive(kind, records, TODAY)]
    bad = [["treatment.outcome", {"treatment": "Metformin 500 MG", "status": "ongoing"}],
           ["treatment.outcome", {"treatment": "metformin", "status": "ongoing", "note": "free text"}],
           ["symptom.trend", {"symptom": "fatigue", "window_weeks": 53, "direction": "stable", "level": "low",
                              "entries": "1-2"}],
           ["diagnosis.category", {"system": "icd10", "category": "Z59", "source": "icd10"}],
           ["treatment.outcome", {"treatment": "metformin", "status": "ongoing", "side_effects": ["a"] * 11}],
           ["demographics.band", {"age_band": "18-29"}]]
    runner = tmp_path / "validate.mjs"
    runner.write_text(
        f"import {{ validateSignal }} from {json.dumps((ROOT / 'rxfed' / 'web' / 'js' / 'signals.mjs').as_uri())};\n"
        f"const kinds = {json.dumps(kinds)};\n"
        "const run = (cases) => cases.map(([k, b]) => { try { validateSignal(kinds[k], b); return null; } "
        "catch (e) { return e.message; } });\n"
        f"process.stdout.write(JSON.stringify({{good: run({json.dumps(good)}), bad: run({json.dumps(bad)})}}));\n")
    out = subprocess.run([node_bin, str(runner)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    js = json.loads(out.stdout)
    assert len(good) > 50 and js["good"] == [None] * len(good)
    for (kind, body), message in zip(bad, js["bad"]):
        with pytest.raises(Exception):
            builtin_signals.KINDS[[k.name for k in builtin_signals.KINDS].index(kind)].validate(body)
        assert message is not None, body


def test_the_pages_names_and_dates_follow_python(tmp_path):
    """Name normalisation and date reading one value at a time, the corners included."""
    node_bin = shutil.which("node")
    if node_bin is None:
        pytest.skip("node is not installed")
    names = ["Metformin hydrochloride 500 MG Oral Tablet", "Clonazepam [Klonopin]", "  ", "ÉPÎ-PEN'S auto-injector",
             "24 HR Metformin", "hydrochloride", "A / B / C / D / E / F / G", "x", "ab", "Ab 1", "naïve\x1c/\x1cthing",
             "medicinal product containing only precisely aspirin and caffeine", "one two three four five six seven",
             "vitamin d3 (cholecalciferol) 1000 unt", "{brand} name", "tab/cap", "mg/ml oral"]
    dates = ["2019-03-01", "20190301", "2019-W09-5", "2019W095", "2019-W09", "2019W09", "2019-3-1", "2020-W53-1",
             "2021-W53-1", "2019-02-29", "2020-02-29", "0001-01-01", "0000-01-01", "2019-03-01T00:00", "2019-W09-8",
             "2019-W00", "2019-W096", "１９９９-01-01", "2015-W53-7"]
    runner = tmp_path / "names.mjs"
    runner.write_text(
        f"import {{ normaliseName, isoDay }} from {json.dumps((ROOT / 'rxfed' / 'web' / 'js' / 'signals.mjs').as_uri())};\n"
        f"const names = {json.dumps(names)}, dates = {json.dumps(dates)};\n"
        "process.stdout.write(JSON.stringify({plain: names.map((n) => normaliseName(n)), "
        "drug: names.map((n) => normaliseName(n, {drug: true})), "
        "dates: dates.map((d) => { const x = isoDay(d); return x === null ? null : new Date(x.day * 86400000)"
        ".toISOString().slice(0, 10).replace(/^\\+?0*(?=\\d{4})/, ''); })}));\n")
    out = subprocess.run([node_bin, str(runner)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    js = json.loads(out.stdout)
    assert js["plain"] == [builtin_signals.normalise_name(n) for n in names]
    assert js["drug"] == [builtin_signals.normalise_name(n, drug=True) for n in names]

    def python_date(value):
        try:
            return dt.date.fromisoformat(value).isoformat()
        except ValueError:
            return None

    assert js["dates"] == [python_date(d) for d in dates]


def test_peer_origins_for_the_pages_policy():
    assert node_web.peer_origin("127.0.0.1:8443") == "http://127.0.0.1:8443"
    assert node_web.peer_origin("localhost:80") == "http://localhost:80"
    assert node_web.peer_origin("Rxfed.Example.org") == "https://rxfed.example.org"
    assert node_web.peer_origin("10.0.0.1:443") == "https://10.0.0.1:443"
    for bad in ("evil.example; script-src *", "a b", "", "x" * 300, "host:123456", "https://x"):
        assert node_web.peer_origin(bad) is None
    csp = node_web.page_csp(["b.example", "127.0.0.1:9", "bad; x", "b.example"])
    assert "connect-src 'self' http://127.0.0.1:9 https://b.example;" in csp
    assert csp.replace("connect-src 'self' http://127.0.0.1:9 https://b.example;", "connect-src 'self';") == node_web.CSP
    many = node_web.page_csp([f"n{i}.example" for i in range(100)])
    assert many.count("https://") == node_web.MAX_CONNECT


async def test_the_page_may_reach_the_allowed_peers_and_their_documents_answer_it(pair, tmp_path):
    a, b = pair
    async with aiohttp.ClientSession() as session:
        async with session.get(a.url + "/") as resp:
            csp = resp.headers["Content-Security-Policy"]
        assert f"connect-src 'self' {node_web.peer_origin(b.node_id)};" in csp
        # a module's policy governs nothing the page fetches: it stays the plain one
        async with session.get(a.url + "/web/js/app.mjs") as resp:
            assert resp.headers["Content-Security-Policy"] == node_web.CSP
        # a peer that is denied is no longer named
        await a.app_store().set_peer_policy(b.node_id, "denied")
        async with session.get(a.url + "/") as resp:
            assert resp.headers["Content-Security-Policy"] == node_web.CSP
        # the public documents answer any origin, and never with credentials
        for path in node_web.PUBLIC:
            async with session.get(b.url + path, headers={"Origin": a.url}) as resp:
                assert resp.status == 200, path
                assert resp.headers["Access-Control-Allow-Origin"] == "*"
                assert "Access-Control-Allow-Credentials" not in resp.headers
        # nothing that needs a patient's signature does
        async with session.get(b.url + "/v1/account", headers={"Origin": a.url}) as resp:
            assert resp.status == 401 and "Access-Control-Allow-Origin" not in resp.headers
