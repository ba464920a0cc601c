#!/usr/bin/env python3
"""What one signed record write costs the node: CPU time and instructions per request.

Wall-clock throughput on a shared two-core machine moves with whatever else runs; these
figures do not (or much less). The script starts a fresh node of its own (``rxfed node init``
in a temp dir, rate limits raised as bench/run.sh raises them, ``rxfed node run``), with
``--callgrind`` under valgrind's callgrind with instrumentation off until each measured
phase, registers the patients and warms up (bench/load.py's setup, untimed), then for each
concurrency C sends --n record writes with C writers (load.py's ``write_phase``) and reports
per successful write:

- ``cpu_ms``: the node process's CPU time (user + system, all its threads);
- ``instructions`` (with --callgrind): instructions the node executed, all threads, counted
  by callgrind between the phase's start and end (repeatable to a fraction of a percent,
  whatever else the machine runs);
- the store's group commits during the phase (from the node's ``/metrics`` on its control
  socket): batches, operations per batch, mean COMMIT time, where they ran.

``PYTHONPATH`` reaches the node too, so an older checkout can be measured with the same
script (``git worktree add /tmp/ab-REV REV``, ``PYTHONPATH=/tmp/ab-REV``).

    python bench/cost.py --n 2000 --conc 1,16 [--callgrind] [--rounds 3]

The last line of its output is one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import aiohttp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (bench/load.py: patients, journal entries, one phase of writes)
from nodeproc import raise_limits, store_counts, store_delta, wait_health  # noqa: E402

from rxfed import __version__ as RXFED_VERSION  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="record writes per concurrency level")
    ap.add_argument("--conc", default="1,16", help="comma-separated concurrency levels")
    ap.add_argument("--patients", type=int, default=16, help="patients (at least the largest level)")
    ap.add_argument("--warmup", type=int, default=200, help="untimed writes before the phases")
    ap.add_argument("--rounds", type=int, default=1, help="fresh nodes, one after the other")
    ap.add_argument("--callgrind", action="store_true", help="run the node under valgrind --tool=callgrind")
    ap.add_argument("--cprofile", default="", help="run the node under cProfile, its stats written to this file "
                    "when it stops (setup included; the event loop's thread only)")
    ap.add_argument("--keep", default="", help="keep the callgrind output files in this directory")
    ap.add_argument("--python", default=sys.executable, help="the node's interpreter")
    args = ap.parse_args(argv)
    try:
        args.levels = [int(x) for x in args.conc.split(",") if x.strip()]
    except ValueError:
        ap.exit(2, f"--conc must be comma-separated integers, not {args.conc!r}\n")
    if not args.levels or min(args.levels) < 1 or args.n < 1 or args.rounds < 1:
        ap.exit(2, "--conc levels, --n and --rounds must be at least 1\n")
    if args.callgrind and not shutil.which("valgrind"):
        ap.exit(2, "--callgrind needs valgrind (apt-get install valgrind)\n")
    args.timeout, args.mode = 3600.0, "records"  # what load.py's functions read
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def callgrind(pid: int, *flags: str) -> None:
    subprocess.run(["callgrind_control", *flags, str(pid)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def dumped_instructions(out_prefix: str, before: set[str]) -> tuple[int, set[str]]:
    """Instructions in the dump files written since ``before`` (one per thread, or one)."""
    files = set(glob.glob(out_prefix + "*"))
    total = 0
    for path in files - before:
        with open(path, errors="replace") as f:
            found = re.findall(r"(?m)^totals:\s+(\d+)", f.read())  # the last line of a dump
        total += int(found[-1]) if found else 0
    return total, files


async def measure(args, node_pid: int, data_dir: str, root: str, out_prefix: str) -> list[dict]:
    runs = []
    conn = aiohttp.TCPConnector(limit=max(64, 2 * max(args.levels)))
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as session:
        patients = await load.setup(args, session, root)
        seq = [0]
        if args.warmup:
            await load.write_phase(args, patients, args.warmup, min(16, len(patients)), seq)
        files = set(glob.glob(out_prefix + "*"))
        for c in args.levels:
            counts0 = store_counts(data_dir)
            if args.callgrind:
                callgrind(node_pid, "-z")
                callgrind(node_pid, "-i", "on")
            r = await load.write_phase(args, patients, args.n, c, seq)
            if args.callgrind:
                callgrind(node_pid, "-i", "off")
                callgrind(node_pid, "-d")
                ir, files = dumped_instructions(out_prefix, files)
                r["instructions"] = ir
                r["instructions_per_record"] = round(ir / max(1, r["ok"]))
            r["store"] = store_delta(counts0, store_counts(data_dir))
            runs.append(r)
            print(f"c={c}: {r['ok']} ok, node CPU {r.get('server_cpu_ms_per_record')} ms/record"
                  + (f", {r['instructions_per_record']:,} instructions/record" if args.callgrind else "")
                  + f", store {r['store']}", file=sys.stderr, flush=True)
        for p in patients:
            await p.client.close()
    return runs


def one_round(args) -> list[dict]:
    tmp = tempfile.mkdtemp(prefix="rxfed-cost.")
    data_dir, port = os.path.join(tmp, "node"), free_port()
    node = None
    try:
        subprocess.run([args.python, "-m", "rxfed", "node", "init", data_dir, "--name", "rxfed cost", "--port",
                        str(port)], check=True, stdout=subprocess.DEVNULL, cwd=tmp)
        raise_limits(os.path.join(data_dir, "rxfed.toml"))
        cmd = [args.python, "-m", "rxfed", "node", "run", data_dir]
        if args.cprofile:
            cmd[1:1] = ["-m", "cProfile", "-o", os.path.abspath(args.cprofile)]
        out_prefix = os.path.join(tmp, "callgrind.out")
        if args.callgrind:
            cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_prefix}.%p",
                   "--dump-instr=no", "--compress-strings=no", *cmd]
        log = open(os.path.join(tmp, "node.log"), "w")
        # run from the temp dir: ``python -m`` puts the working directory first on sys.path
        node = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
        if not wait_health(f"http://127.0.0.1:{port}", tries=3000, pause=0.1):
            raise SystemExit(f"the node did not answer; see {tmp}/node.log")
        args.base, args.pid = f"http://127.0.0.1:{port}", node.pid
        runs = asyncio.run(measure(args, node.pid, data_dir, os.path.join(tmp, "profiles"), out_prefix))
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
            for path in glob.glob(out_prefix + "*"):
                shutil.copy(path, args.keep)
        return runs
    finally:
        if node is not None and node.poll() is None:
            node.send_signal(signal.SIGTERM)
            try:
                node.wait(60)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    rounds = []
    for i in range(args.rounds):
        print(f"round {i + 1} of {args.rounds}", file=sys.stderr, flush=True)
        rounds.append(one_round(args))
    line: dict = {"peer": "rxfed-cost", "version": RXFED_VERSION, "n": args.n, "rounds": args.rounds,
                  "callgrind": args.callgrind}
    for k, c in enumerate(args.levels):
        runs = [r[k] for r in rounds]
        cpu = [r["server_cpu_ms_per_record"] for r in runs if "server_cpu_ms_per_record" in r]
        line[f"cpu_ms_per_record_c{c}"] = round(statistics.median(cpu), 3) if cpu else None
        line[f"cpu_ms_per_record_c{c}_rounds"] = cpu
        if args.callgrind:
            line[f"instructions_per_record_c{c}"] = round(statistics.median(r["instructions_per_record"] for r in runs))
        line[f"ops_per_batch_c{c}"] = [r["store"]["ops_per_batch"] for r in runs]
        line[f"commit_ms_c{c}"] = [r["store"]["commit_ms"] for r in runs]
        line[f"records_per_s_c{c}"] = [r["records_per_s"] for r in runs]
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
