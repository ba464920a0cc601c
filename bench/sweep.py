#!/usr/bin/env python3
"""Concurrency sweep for an rxfed node: signed record writes from 16 to 4096 clients at once.

Works against one running node on http://127.0.0.1 (it refuses any other host), like
bench/load.py, whose setup it shares: --patients patients (at least the largest level) are
registered and their vaults opened, untimed; every writer owns its own patients (a vault
is compare-and-swap on its manifest counter).

Then for each concurrency C in --conc: C writers, each sending its share of
max(--n, --per-writer * C) encrypted record writes (prepared and signed before the clock
starts, as in load.py) as raw ``POST /v1/vault`` requests on one shared connection pool. A
request the node sheds (``503`` with ``Retry-After``) is sent again, unchanged, by the
client's :class:`RetryPolicy`: never before the time ``Retry-After`` names, and later, at
random, the more often that write was shed (exponential backoff with full jitter above
``Retry-After``, capped), so the retries of one burst spread out instead of arriving
together; any other failure is counted. Per level it reports:

- ``records_per_s_cC``: successful writes / wall time of the phase;
- ``p50_ms_cC``, ``p99_ms_cC``: latency of the successful attempts;
- ``answer_max_ms_cC``: the longest any attempt waited for its answer (2xx or 503);
- ``late_cC``: answers that took more than --deadline seconds (2 s), ``timeouts_cC``:
  attempts with no answer within --timeout seconds, ``shed_cC``: 503s, each with
  Retry-After (a 503 without it is counted as an error), ``errors_cC``: anything else.

The last line of its output is one JSON object (``"peer": "rxfed-sweep"``) that
bench/report.py reads; --out FILE writes every detail.

  python bench/sweep.py --base http://127.0.0.1:PORT --pid NODE_PID --conc 16,64,256,1024,4096
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sys
import time
from collections import Counter

import aiohttp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nodeproc import check_target  # noqa: E402
import load  # noqa: E402  (bench/load.py: the same patients and journal entries)

from rxfed import __version__ as RXFED_VERSION  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="http://127.0.0.1:8470", help="the node's URL (http://127.0.0.1 only)")
    ap.add_argument("--pid", type=int, default=0, help="server PID, for RSS and CPU sampling")
    ap.add_argument("--conc", default="16,64,256,1024,4096", help="comma-separated concurrency levels")
    ap.add_argument("--n", type=int, default=4000, help="writes per level at least")
    ap.add_argument("--per-writer", type=int, default=4, help="writes per writer at least (so N >= this x C)")
    ap.add_argument("--patients", type=int, default=16, help="patients to register (at least the largest level)")
    ap.add_argument("--deadline", type=float, default=2.0, help="an answer later than this (s) counts as late")
    ap.add_argument("--timeout", type=float, default=30.0, help="an attempt unanswered this long (s) is a timeout")
    ap.add_argument("--retry-cap", type=float, default=8.0,
                    help="most seconds a shed write waits beyond Retry-After (see RetryPolicy)")
    ap.add_argument("--phase-timeout", type=float, default=300.0, help="max seconds per level (and for setup)")
    ap.add_argument("--profiles", default="", help="directory for the patients' profile dirs (default: a temp dir)")
    ap.add_argument("--rss-idle-mib", type=float, default=None, help="passed through to the JSON line")
    ap.add_argument("--startup-s", type=float, default=None, help="passed through to the JSON line")
    ap.add_argument("--out", default="", help="also write all details as JSON to this file")
    args = ap.parse_args(argv)
    check_target(ap, args, "sweep.py")
    if not args.levels or min(args.levels) < 1 or args.n < 1 or args.per_writer < 1:
        ap.exit(2, "--conc levels, --n and --per-writer must be at least 1\n")
    args.mode = "records"  # what load.setup reads
    return args


class RetryPolicy:
    """When a client sends a shed write again: never before ``Retry-After``, then a random
    wait above it whose range doubles with each time the write was shed, up to ``cap``
    seconds more (exponential backoff with full jitter, as AWS's architecture blog
    describes it, on top of what the server asked for)."""

    def __init__(self, cap: float = 8.0, rng: random.Random | None = None):
        self.cap = cap
        self.rng = rng or random.Random()

    def delay(self, retry_after: float, attempt: int) -> float:
        """Seconds to wait before sending again a write shed ``attempt`` times (1, 2, ...)."""
        return retry_after + self.rng.uniform(0, min(self.cap, retry_after * 2 ** (attempt - 1)))


def raise_own_fd_limit() -> None:
    """The load client holds a connection per writer: 4096 and more need more than the usual
    soft limit of 1024 file descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 16, hard))


async def phase(args, session: aiohttp.ClientSession, patients: list, conc: int, seq: list[int]) -> dict:
    n = max(args.n, args.per_writer * conc)
    url = args.base + "/v1/vault"
    retries = RetryPolicy(args.retry_cap)
    ok_lat: list[float] = []
    answer_max = [0.0]
    counts: Counter = Counter()
    plans = []
    for w in range(conc):
        mine = patients[w::conc]
        plan = []
        for k in range(n // conc + (1 if w < n % conc else 0)):
            p = mine[k % len(mine)]
            seq[0] += 1
            plan.append((p, p.vault.prepare("journal", load.journal_entry(seq[0]), sign=True)))
        plans.append(plan)

    async def attempt(prepared) -> tuple[int, float | None]:
        t0 = time.perf_counter()
        headers = {**prepared.headers, "Content-Type": "application/json"}
        try:
            async with session.post(url, data=prepared.body, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=args.timeout)) as resp:
                await resp.read()
                status, retry = resp.status, resp.headers.get("Retry-After")
        except asyncio.TimeoutError:
            counts["timeouts"] += 1
            return -1, None
        except aiohttp.ClientError as exc:
            counts[f"error {type(exc).__name__}"] += 1
            return -1, None
        dt = time.perf_counter() - t0
        answer_max[0] = max(answer_max[0], dt)
        if dt > args.deadline:
            counts["late"] += 1
        if 200 <= status < 300:
            ok_lat.append(dt)
            return status, None
        if status == 503 and retry and retry.isdigit():
            counts["shed"] += 1
            return status, float(retry)
        counts[f"error {status}"] += 1
        return status, None

    async def writer(plan) -> None:
        for p, prepared in plan:
            shed = 0
            while True:
                status, retry = await attempt(prepared)
                if retry is None:
                    break
                # shed before its nonce was recorded: the same signed request goes again
                shed += 1
                await asyncio.sleep(retries.delay(retry, shed))
            if 200 <= status < 300:
                p.client.profile.set_counter(prepared.counter)
            else:
                break  # this writer's later writes would conflict on the vault counter

    # One open connection per writer before the clock starts: a level measures requests, not a
    # burst of thousands of TCP handshakes at its first millisecond.
    async def health() -> None:
        async with session.get(args.base + "/health") as resp:
            await resp.read()

    await asyncio.gather(*(health() for _ in range(conc)), return_exceptions=True)
    cpu0 = load.proc_cpu_s(args.pid)
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(writer(plan)) for plan in plans]
    _done, pending = await asyncio.wait(tasks, timeout=args.phase_timeout)
    wall = time.perf_counter() - t0
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    cpu1 = load.proc_cpu_s(args.pid)
    ok_lat.sort()
    q = lambda f: round(ok_lat[min(len(ok_lat) - 1, int(f * len(ok_lat)))] * 1000, 1) if ok_lat else None  # noqa: E731
    errors = sum(v for k, v in counts.items() if k.startswith("error"))
    res = {"concurrency": conc, "n": n, "ok": len(ok_lat), "wall_s": round(wall, 3),
           "records_per_s": round(len(ok_lat) / wall, 1) if wall > 0 else None, "p50_ms": q(0.5), "p99_ms": q(0.99),
           "answer_max_ms": round(answer_max[0] * 1000, 1), "late": counts["late"], "timeouts": counts["timeouts"],
           "shed": counts["shed"], "errors": errors, "error_kinds": {k: v for k, v in counts.items() if "error" in k},
           "timed_out": bool(pending)}
    if cpu0 is not None and cpu1 is not None:
        res["server_cpu_ms_per_record"] = round((cpu1 - cpu0) * 1000 / max(1, len(ok_lat)), 3)
    return res


async def run(args, root: str) -> dict:
    result: dict = {"base": args.base, "conc": args.levels, "rxfed_version": RXFED_VERSION,
                    "rss_before": load.proc_rss_kb(args.pid), "runs": [], "complete": False}
    args.patients = max(args.patients, max(args.levels))
    conn = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as session:
        t0 = time.perf_counter()
        try:
            patients = await asyncio.wait_for(load.setup(args, session, root), args.phase_timeout)
        except Exception as exc:  # noqa: BLE001 - reported in the JSON line as incomplete
            result["setup_error"] = f"{load.error_name(exc)}: {exc}"
            print(f"setup failed: {result['setup_error']}", file=sys.stderr, flush=True)
            return result
        result["setup_s"] = round(time.perf_counter() - t0, 2)
        result["patients"] = len(patients)
        print(f"setup: {len(patients)} patients registered, vaults open, {result['setup_s']} s", file=sys.stderr,
              flush=True)
        seq = [0]
        await phase(args, session, patients, min(16, len(patients)), seq)  # warm-up, not reported
        for c in args.levels:
            r = await phase(args, session, patients, c, seq)
            result["runs"].append(r)
            print(f"c={c}: {r['records_per_s']} records/s, {r['ok']}/{r['n']} ok, p99 {r['p99_ms']} ms, answer max "
                  f"{r['answer_max_ms']} ms, {r['shed']} shed, {r['late']} late, {r['timeouts']} timeouts, "
                  f"{r['errors']} errors", file=sys.stderr, flush=True)
        result["rss_after"] = load.proc_rss_kb(args.pid)
        for p in patients:
            await p.client.close()
    result["complete"] = bool(result["runs"]) and all(
        r["ok"] == r["n"] and r["errors"] == 0 and r["timeouts"] == 0 and not r["timed_out"] for r in result["runs"])
    return result


def report(args, result: dict) -> None:
    print(f"rxfed {RXFED_VERSION}: concurrency sweep of signed record writes, {args.base}, "
          f"{result.get('patients', 0)} patients")
    for r in result["runs"]:
        print(f"  c={r['concurrency']:<5} {r['records_per_s']:8.1f} records/s  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms"
              f"  answer max {r['answer_max_ms']} ms  shed {r['shed']}  late {r['late']}  timeouts {r['timeouts']}"
              f"  errors {r['errors']}")
    line: dict = {"peer": "rxfed-sweep"}
    for key in ("records_per_s", "p50_ms", "p99_ms", "answer_max_ms", "shed", "late", "timeouts", "errors"):
        for r in result["runs"]:
            line[f"{key}_c{r['concurrency']}"] = r[key]
    line.update(levels=[r["concurrency"] for r in result["runs"]], deadline_s=args.deadline,
                rss_idle_mib=args.rss_idle_mib, rss_after_mib=load.mib(result.get("rss_after")),
                startup_s=args.startup_s, patients=result.get("patients"), version=RXFED_VERSION,
                complete=result["complete"])
    print(json.dumps(line), flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    raise_own_fd_limit()
    return load.run_main(args, run, report, "rxfed-sweep-profiles.")


if __name__ == "__main__":
    sys.exit(main())
