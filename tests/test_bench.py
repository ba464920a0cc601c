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
                       "--warmup", "4", "--mode", mode, "--profiles", str(tmp_path / "profiles"))
    assert result["complete"] and result["records_per_s_c4"] > 0


async def test_federation_script():
    result = await run(str(BENCH / "federation.py"), "--n", "100", "--rate", "100", "--seconds", "0.5")
    assert result["complete"] and result["events_per_s"] > 0
