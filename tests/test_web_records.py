"""The web client's records against the Python package: the generated tables are current,
and the page's FHIR mapping gives Python's records on the real Synthea exports (the vectors
of spec/vectors/fhir.json cover tests/data/fhir/ and the hand-made cases in
tests/web/records.test.mjs)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from rxfed.client.fhir import export_bundle, import_bundle

ROOT = Path(__file__).resolve().parents[1]
SYNTHEA = ROOT.parent / "shared" / "data" / "fhir"
SYNTHEA_FILES = ["Alberto_Atencio_fc712d1f-5a2e-4407-9c55-a2a2bad623c2.json",
                 "Edward_Gulgowski_43481611-2459-44f5-ab20-4b142dac160f.json"]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_tables_are_current():
    tables = _script("web-tables")
    assert tables.OUT.read_text(encoding="utf-8") == tables.render(), "run python3 scripts/web-tables.py"


def test_generated_tables_name_every_label_and_instrument():
    tables = _script("web-tables")
    concepts = tables.concepts()
    assert {"system": "snomed", "code": "44054006", "label": "Diabetes mellitus type 2"} in concepts
    assert any(c["system"] == "icd10" and c["code"] == "E11" for c in concepts)
    assert {"Bundle", "Condition", "Observation", "QuestionnaireResponse", "Patient"} <= set(tables.resource_types())
    assert "Coding" not in tables.resource_types()


def _node(*args: str) -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the web client's JavaScript tests need it")
    out = subprocess.run([node, str(ROOT / "tests" / "web" / "fhir-cli.mjs"), *args], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.mark.parametrize("name", SYNTHEA_FILES)
def test_the_page_imports_a_synthea_record_as_python_does(name, tmp_path):
    path = SYNTHEA / name
    if not path.is_file():
        pytest.skip(f"the Synthea export {name} is not in {SYNTHEA} (shared/ must sit beside the repo)")
    python = import_bundle(json.loads(path.read_text()))
    page = _node("import", str(path))
    assert page.get("error") is None, page
    assert page["skipped"] == python.skipped
    assert page["skipped_why"] == [t.to_json() for t in python.skipped_why]
    assert page["notes"] == [t.to_json() for t in python.notes]
    # numbers compare by value: JSON gives the page no way to tell 70 from 70.0
    assert [tuple(r) for r in page["records"]] == list(python.records)

    # and exports them as Python does
    records = [[kind, data, f"record-{i}"] for i, (kind, data) in enumerate(python.records)]
    (tmp_path / "records.json").write_text(json.dumps(records))
    assert _node("export", str(tmp_path / "records.json"), "p1") == export_bundle([tuple(r) for r in records], "p1")
