#!/usr/bin/env python3
"""Records and posts at one concurrency with 1 and 2 workers on PostgreSQL against one
SQLite worker, side by side in one run (issue 12's comparison).

For each round and each configuration (``sqlite-1``: SQLite, one process; ``pg-1``:
PostgreSQL, one process; ``pg-W``: PostgreSQL, ``rxfed node run --workers W``), and for each
mode (``records``: encrypted vault writes; ``posts``: community posts, bench/load.py's two
modes), the script makes a fresh node (``rxfed node init`` in a temp dir; for PostgreSQL a
fresh database made through ``--pg-dsn``, dropped afterwards), raises its rate limits as
bench/run.sh does, starts it, runs ``bench/load.py --n N --conc C --mode MODE`` against it
and stops it (SIGTERM). It reports per configuration and mode the median over the rounds
of records (or posts) per second, p50/p99, and the CPU time per write of the node's
processes (supervisor and workers) and of the PostgreSQL server's processes (every process
named ``postgres`` this machine shows: run it where no other database works), measured
around the whole load run (its set-up of 16 patients and warm-up included).

The configurations run one after the other, interleaved by round, so a machine that
slows down hurts them alike. The last line of the output is one JSON object.

    python bench/workers.py --pg-dsn postgresql://postgres@127.0.0.1:5432/postgres \\
        --n 2000 --conc 16 --rounds 3 --workers 2

Run it on a quiet machine (the lead does); ``--n 100 --rounds 1`` checks that it works.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from nodeproc import raise_limits, wait_health  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0.0


def postgres_cpu_s() -> float:
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() != "postgres":
                        continue
            except OSError:
                continue
            total += cpu_s(int(entry))
    return total


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _database(admin_dsn: str, name: str, create: bool) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_dsn)
    try:
        if create:
            await conn.execute(f'CREATE DATABASE "{name}"')
        else:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _with_database(dsn: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


def node_pids(data: Path, supervisor: int) -> list[int]:
    """The supervisor's pid and its workers' (as its control socket lists them)."""
    from rxfed.node import control

    try:
        status = control.ask(data, "GET", "/status", timeout=5) or {}
    except control.NodeUnreachable:
        status = {}
    return [supervisor, *(w["pid"] for w in status.get("workers") or [] if w.get("pid"))]


def run_one(args, config: str, mode: str, root: Path) -> dict:
    backend, _, workers = config.partition("-")
    workers = int(workers)
    data = root / f"{config}-{mode}"
    port = free_port()
    database = None
    init = [sys.executable, "-m", "rxfed", "node", "init", str(data), "--name", "bench", "--port", str(port)]
    if backend == "pg":
        database = f"rxfed_bench_{uuid.uuid4().hex[:12]}"
        asyncio.run(_database(args.pg_dsn, database, True))
        init += ["--db", _with_database(args.pg_dsn, database)]
    proc = None
    try:
        subprocess.run(init, check=True, capture_output=True, timeout=120)
        raise_limits(str(data / "rxfed.toml"))
        run = [sys.executable, "-m", "rxfed", "node", "run", str(data)]
        if workers > 1:
            run += ["--workers", str(workers)]
        proc = subprocess.Popen(run, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        if not wait_health(url, tries=600, pause=0.1):
            raise RuntimeError(f"{config}: the node did not start: {proc.stderr.read().decode()[-500:]}")
        time.sleep(1.0 if workers > 1 else 0.2)  # every worker answering
        pids = node_pids(data, proc.pid)
        node0, db0 = sum(map(cpu_s, pids)), postgres_cpu_s()
        load = subprocess.run([sys.executable, str(BENCH / "load.py"), "--base", url, "--n", str(args.n), "--conc",
                               str(args.conc), "--mode", mode, "--patients", str(args.patients), "--warmup",
                               str(args.warmup)], capture_output=True, text=True, timeout=args.timeout)
        node1, db1 = sum(map(cpu_s, pids)), postgres_cpu_s()
        try:
            line = json.loads(load.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            raise RuntimeError(f"{config} {mode}: load.py printed no result: {load.stderr[-500:]}") from None
        c = args.conc
        done = max(1, args.n)
        errors = [l for l in load.stdout.splitlines() if "errors" in l and "[" in l]
        return {"config": config, "mode": mode, "per_s": line.get(f"records_per_s_c{c}"),
                "p50_ms": line.get(f"p50_ms_c{c}"), "p99_ms": line.get(f"p99_ms_c{c}"),
                "complete": line.get("complete", load.returncode == 0), "errors": errors,
                "node_cpu_ms_per_write": round((node1 - node0) * 1000 / done, 3),
                "db_cpu_ms_per_write": round((db1 - db0) * 1000 / done, 3) if backend == "pg" else None}
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if database:
            asyncio.run(_database(args.pg_dsn, database, False))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pg-dsn", default=os.environ.get("RXFED_TEST_PG_DSN"),
                    help="a PostgreSQL server whose user may create databases (default $RXFED_TEST_PG_DSN)")
    ap.add_argument("--n", type=int, default=2000, help="writes per run")
    ap.add_argument("--conc", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="the workers of the last configuration (pg-W)")
    ap.add_argument("--patients", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--modes", default="records,posts")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds one load run may take")
    args = ap.parse_args(argv)
    if not args.pg_dsn:
        ap.exit(2, "workers.py needs --pg-dsn (or RXFED_TEST_PG_DSN)\n")
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in ("records", "posts") for m in modes) or args.workers < 2 or args.rounds < 1:
        ap.exit(2, "--modes is records and/or posts, --workers at least 2, --rounds at least 1\n")
    configs = ["sqlite-1", "pg-1", f"pg-{args.workers}"]
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="rxfed-workers-") as tmp:
        for r in range(args.rounds):
            for mode in modes:
                for config in configs:
                    res = run_one(args, config, mode, Path(tmp) / f"r{r}")
                    results.append(res)
                    print(f"round {r + 1} {mode:7} {config:8} {res['per_s']}/s p50 {res['p50_ms']} ms "
                          f"p99 {res['p99_ms']} ms node CPU {res['node_cpu_ms_per_write']} ms/write"
                          + (f" db CPU {res['db_cpu_ms_per_write']} ms/write" if res["db_cpu_ms_per_write"] else "")
                          + ("" if res["complete"] else f" INCOMPLETE {' '.join(res['errors'])}"), file=sys.stderr,
                          flush=True)
    summary: dict = {"n": args.n, "conc": args.conc, "rounds": args.rounds, "workers": args.workers}
    for mode in modes:
        base = None
        for config in configs:
            runs = [r for r in results if r["config"] == config and r["mode"] == mode]
            per_s = statistics.median(r["per_s"] or 0 for r in runs)
            key = f"{mode}_{config.replace('-', '_')}"
            summary[f"{key}_per_s"] = round(per_s, 1)
            summary[f"{key}_node_cpu_ms"] = statistics.median(r["node_cpu_ms_per_write"] for r in runs)
            if config != "sqlite-1":
                summary[f"{key}_db_cpu_ms"] = statistics.median(r["db_cpu_ms_per_write"] or 0 for r in runs)
            if base is None:
                base = per_s
            else:
                summary[f"{key}_vs_sqlite"] = round(per_s / base, 2) if base else None
            print(f"{mode:7} {config:8} {per_s:8.1f}/s" + (f"  {per_s / base:.2f}x sqlite-1" if config != "sqlite-1"
                                                          and base else ""))
    summary["complete"] = all(r["complete"] for r in results)
    print(json.dumps(summary), flush=True)
    return 0 if summary["complete"] else 3


if __name__ == "__main__":
    sys.exit(main())
