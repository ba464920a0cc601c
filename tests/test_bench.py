"""The benchmark scripts still run against the current code (tiny sizes; figures are not
checked here: performance is measured by bench/run.sh, not by tests)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


async def run(*args: str) -> dict:
    proc = await asyncio.create_subprocess_exec(sys.executable, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-2000:]
    return json.loads(out.decode().strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["records", "posts"])
async def test_load_script(node, tmp_path, mode):
    result = await run(str(BENCH / "load.py"), "--base", node.url, "--n", "40", "--conc", "1,4", "--patients", "4",
                       "--warmup", "4", "--mode", mode, "--profiles", str(tmp_path / "profiles"),
                       "--data-dir", str(node.data_dir))
    assert result["complete"] and result["records_per_s_c4"] > 0
    # the store's group commits of each phase, from the node's control socket
    assert result["store_ops_per_batch_c1"] == 1 and 1 <= result["store_ops_per_batch_c4"] <= 4
    assert result["store_commit_ms_c4"] > 0 and result["store_switches_c4"] >= 0


def test_report_shows_each_rounds_cpu_and_commits(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_report", BENCH / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    for i, ops in enumerate((15.5, 5.2), 1):
        (tmp_path / f"rxfed-{i}.json").write_text(json.dumps(
            {"peer": "rxfed", "complete": True, "records_per_s_c16": 2000, "server_cpu_ms_per_record_c16": 0.3,
             "store_ops_per_batch_c16": ops, "store_commit_ms_c16": 0.4, "store_writer_thread_c16": 0,
             "store_switches_c16": 0}) + "\n")
    assert report.main(["report.py", str(tmp_path)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| 1 | 2000", "| 2 | 2000"))]
    assert len(rows) == 2 and "n/a / 15.50" in rows[0] and "n/a / 5.20" in rows[1]


async def test_federation_script():
    result = await run(str(BENCH / "federation.py"), "--n", "100", "--rate", "100", "--seconds", "0.5")
    assert result["complete"] and result["events_per_s"] > 0


async def test_matching_script():
    result = await run(str(BENCH / "matching.py"), "--k", "5", "--repeats", "1", "--interval", "0.2")
    assert result["bench"] == "matching" and result["consent_to_first_suggestion_s"]["max"] > 0


async def test_psi_script():
    """Two processes intersect 300 elements a side; the script checks the intersection."""
    result = await run(str(BENCH / "psi.py"), "--n", "300", "--repeats", "1", "--no-peer")
    (row,) = result["rows"]
    assert row["n"] == 300 and row["padded"] == 320 and row["seconds"] > 0
    assert row["bytes"] == 2 * (23 + 36 + 32 * 320) + 2 * (23 + 32) + 2 * (23 + 4 + 12 * 320) + 2 * 66


def test_report_counts_a_target_met_only_when_the_worst_round_meets_it(tmp_path, capsys):
    """Two rounds at 30x Synapse and one at 20x: the median passes, the worst round does not."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_report", BENCH / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    for i, rxfed_c16 in enumerate((3000, 3000, 2000), 1):
        lines = {
            f"synapse-{i}.json": {"peer": "synapse", "complete": True, "msgs_per_s_c16": 100, "msgs_per_s_c1": 50,
                                  "rss_idle_mib": 100},
            f"ceiling-full-{i}.json": {"peer": "aiohttp-sqlite-ceiling", "version": "synchronous=FULL",
                                       "complete": True, "msgs_per_s_c16": 1500},
            f"rxfed-{i}.json": {"peer": "rxfed", "complete": True, "records_per_s_c16": rxfed_c16, "p50_ms_c1": 0.7,
                                "rss_idle_mib": 40},
        }
        for name, doc in lines.items():
            (tmp_path / name).write_text(json.dumps(doc) + "\n")
    assert report.main(["report.py", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line.startswith("| rxfed c16 throughput >= 25x")]
    assert row.split(" | ")[1:] == ["30.0x", "20.0x", "NOT MET |"]
    (row,) = [line for line in out.splitlines() if line.startswith("| rxfed c16 throughput >= 1.0x")]
    assert row.endswith("| met |")


@pytest.mark.slow
async def test_cli_latency_script():
    result = await run(str(BENCH / "cli_latency.py"), "--n", "1")
    assert result["complete"] and result["commands"]["patient show"]["own_ms_p50"] > 0


def test_sweep_retries_never_before_retry_after_and_spread_out_more_each_time():
    import random

    sys.path.insert(0, str(BENCH))
    try:
        import sweep
    finally:
        sys.path.remove(str(BENCH))
    policy = sweep.RetryPolicy(cap=8.0, rng=random.Random(7))
    for attempt, widest in ((1, 1.0), (2, 2.0), (3, 4.0), (5, 8.0), (12, 8.0)):
        waits = [policy.delay(1.0, attempt) for _ in range(2000)]
        assert min(waits) >= 1.0 and max(waits) <= 1.0 + widest  # never before Retry-After; capped
        assert max(waits) - min(waits) > 0.9 * widest  # spread over the whole range
    assert min(policy.delay(3.0, 1) for _ in range(100)) >= 3.0


async def test_sweep_script(node, tmp_path):
    result = await run(str(BENCH / "sweep.py"), "--base", node.url, "--conc", "2,8", "--n", "16", "--per-writer", "2",
                       "--profiles", str(tmp_path / "profiles"))
    assert result["complete"] and result["records_per_s_c8"] > 0 and result["timeouts_c8"] == 0


async def test_sweep_resends_a_shed_write_after_retry_after(node, tmp_path):
    """Once the patients are registered the node gets one slot and no queue, so it sheds most
    of 8 writers' requests; each is sent again after its Retry-After and every write lands."""
    from rxfed.node.listener import Admission

    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(BENCH / "sweep.py"), "--base", node.url, "--conc", "8", "--n", "16", "--per-writer", "2",
        "--profiles", str(tmp_path / "profiles"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    while not (line := await asyncio.wait_for(proc.stderr.readline(), 60)).startswith(b"setup:"):
        assert line, "sweep.py ended before its setup"
    node.state.listener.admission = Admission(1, 0, 0.5)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-2000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["complete"] and result["shed_c8"] > 0 and result["errors_c8"] == 0


def test_report_sweep_targets(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_report", BENCH / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    line = {"peer": "rxfed-sweep", "complete": True, "levels": [16, 1024], "records_per_s_c16": 2000,
            "records_per_s_c1024": 1500, "answer_max_ms_c16": 80, "answer_max_ms_c1024": 2300, "late_c1024": 3,
            "late_c16": 0, "timeouts_c16": 0, "timeouts_c1024": 0, "errors_c16": 0, "errors_c1024": 0}
    (tmp_path / "sweep-1.json").write_text(json.dumps(line) + "\n")
    assert report.main(["report.py", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    (row,) = [r for r in out.splitlines() if r.startswith("| c1024 throughput >= 0.8x c16")]
    assert row.split(" | ")[1:] == ["0.750x", "0.750x", "NOT MET |"]
    (row,) = [r for r in out.splitlines() if r.startswith("| every attempt answered")]
    assert row.endswith("| NOT MET |")
    assert "| 1024 | 1500.0 | 0.750 |" in out
