"""bench/insights.py still runs against the current code (tiny sizes; its figures are not
checked here: performance is measured by the benchmark, not by tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_insights_script_releases_a_table_over_three_processes():
    proc = subprocess.run([sys.executable, str(BENCH / "insights.py"), "--patients", "300", "--samples", "400"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["complete"]
    release = result["release"]
    assert release["nodes"] == 3 and release["noise_shares"] == 2
    nodes = release["per_node"]
    assert [n["patients"] for n in nodes] == [300, 300, 300]
    assert nodes[0]["outcome"] == "done" and release["end_to_end_s"] > 0
    # a table of 3 x 300 patients over 1160 cells at epsilon 1: the sample row is noisy counts
    # or "<11", never more reports than patients plus a wide noise margin
    reports = nodes[0]["sample_row"]["treatment-00"]["reports"]
    assert reports == "<11" or 11 <= reports < 900 + 2000
    assert result["sampler"]["rxfed_us_per_draw"] > 0
    kept = result["release_kept"]["per_node"]
    assert kept[0]["outcome"] == "done"
    # counts kept as records arrived are the same records' counts: the same bounding figures
    assert [(n["patients"], n["records"], n["dropped"], n["clipped"]) for n in kept] == \
        [(n["patients"], n["records"], n["dropped"], n["clipped"]) for n in nodes]
