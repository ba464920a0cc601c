#!/usr/bin/env python3
"""Load client for an rxfed node: encrypted record writes through the rxfed SDK.

Works against one running node on http://127.0.0.1 (it refuses any other host).

Setup (not timed): register --patients patients (more if a concurrency level is larger)
with ``PatientClient.register(url, DIR/pN, PASSPHRASE, kdf="min", session=...)`` on one shared
aiohttp session, open each vault once (``client.open_vault()``), then send --warmup writes.

Then for each concurrency C in --conc: N encrypted record writes -- each a ~300-byte journal
entry sealed on the client and sent as one signed ``POST /v1/vault`` with a newly signed
manifest -- with C writers in flight. Sealing, manifest and request signing
(``OpenVault.prepare(..., sign=True)``, the patient device's work, each request with its own
fresh nonce) happen just before the phase's clock starts; the timed part is
``OpenVault.send``: the signed request and the node's work.
Writes are compare-and-swap on each vault's manifest counter, so a patient is only ever
written by one writer: the patients are split between the C writers round robin, and each
writer cycles through its own. ``records_per_s_cC`` is successful writes divided by the
phase's wall time; ``p50_ms_cC`` and ``p99_ms_cC`` are latencies measured around ``send``. A failed write is counted, never fatal; that
patient's vault is then re-opened so its next write starts from the node's state.

With --pid the server's VmRSS (/proc/PID/status) is read before and after, and its CPU time
(utime + stime from /proc/PID/stat) per record for each phase.

Prints progress to stderr; a readable summary and, as the LAST line, one JSON object to
stdout. --out FILE writes every detail as JSON. Exit code 3 if any write failed or a phase
ran out of time ("complete": false in the JSON line).

  python bench/load.py --base http://127.0.0.1:PORT --pid SERVER_PID --n 2000 --conc 1,16
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter

import aiohttp
from nodeproc import check_target, store_counts, store_delta

from rxfed import __version__ as RXFED_VERSION
from rxfed.client import NodeRefused, PatientClient

TICK = os.sysconf("SC_CLK_TCK")
#: The load patients' key-file passphrase (long enough for the minimum; the KDF cost is "min").
PASSPHRASE = "bench pass phrase"

SYMPTOMS = ("fatigue", "joint pain", "headache", "brain fog", "nausea", "dizziness", "sleep quality", "anxiety")
NOTES = (
    "Slept about six hours, woke twice. Stiffness in both hands until mid-morning; walked "
    "20 minutes after lunch, which helped. Took the evening dose late.",
    "Bad night, pain 3am. Skipped the morning walk, rested most of the day; appetite low but "
    "kept fluids up. Rash on the left forearm looks a little smaller.",
    "Good day overall. Worked a full shift, mild headache in the afternoon that went away with "
    "water and a short rest. No nausea after the new dose so far.",
    "Flare started in the evening: knees swollen, hard to climb stairs. Used the ice pack twice "
    "and took the rescue medication at 21:30 as the clinic advised.",
)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="http://127.0.0.1:8470", help="the node's URL (http://127.0.0.1 only)")
    ap.add_argument("--pid", type=int, default=0, help="server PID, for RSS and CPU sampling")
    ap.add_argument("--n", type=int, default=2000, help="record writes per concurrency level")
    ap.add_argument("--conc", default="1,16", help="comma-separated concurrency levels")
    ap.add_argument("--patients", type=int, default=16,
                    help="patients to register (at least the largest concurrency level is used)")
    ap.add_argument("--warmup", type=int, default=50, help="warm-up writes before the timed phases")
    ap.add_argument("--timeout", type=float, default=300.0, help="max seconds per phase (and for setup)")
    ap.add_argument("--profiles", default="",
                    help="directory for the patients' profile dirs (default: a fresh temp dir, removed at exit)")
    ap.add_argument("--rss-idle-mib", type=float, default=None,
                    help="server idle RSS measured by the caller, passed through to the JSON line")
    ap.add_argument("--startup-s", type=float, default=None, help="server startup time, passed through")
    ap.add_argument("--peer", default=None, help="name put in the JSON line (default rxfed or rxfed-posts)")
    ap.add_argument("--mode", choices=("records", "posts"), default="records",
                    help="records: encrypted vault writes; posts: end-to-end encrypted posts to one community "
                         "hosted on the node, by its members")
    ap.add_argument("--data-dir", default="",
                    help="the node's data directory: its store's group commits per phase (batches, operations "
                         "per batch, COMMIT ms, where they ran) are read from its control socket")
    ap.add_argument("--out", default="", help="also write all details as JSON to this file")
    args = ap.parse_args(argv)
    check_target(ap, args, "load.py")
    if args.peer is None:
        args.peer = "rxfed" if args.mode == "records" else "rxfed-posts"
    if not args.levels or min(args.levels) < 1 or args.n < 1 or args.patients < 1:
        ap.exit(2, "--conc levels, --n and --patients must be at least 1\n")
    return args


def proc_rss_kb(pid: int) -> dict | None:
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            d = dict(line.split(":", 1) for line in f if ":" in line)
        return {"VmRSS_kB": int(d["VmRSS"].split()[0]), "VmHWM_kB": int(d["VmHWM"].split()[0])}
    except (OSError, KeyError, ValueError):
        return None


def proc_cpu_s(pid: int) -> float | None:
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / TICK  # utime + stime
    except (OSError, IndexError, ValueError):
        return None


def mib(rss: dict | None) -> float | None:
    return round(rss["VmRSS_kB"] / 1024, 1) if rss else None


def journal_entry(i: int) -> dict:
    """A realistic journal entry (~300 bytes as JSON), different for every write."""
    names = [SYMPTOMS[(i + k) % len(SYMPTOMS)] for k in range(5)]
    return {
        "date": f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}",
        "symptoms": {name: (i * 7 + k * 3) % 11 for k, name in enumerate(names)},
        "feeling": (i * 5) % 11,
        "note": NOTES[i % len(NOTES)],
        "questionnaires": [],
    }


class Patient:
    """One registered patient with its open vault; written by one writer at a time."""

    def __init__(self, client: PatientClient, vault):
        self.client = client
        self.vault = vault

    async def reopen(self) -> None:
        if not hasattr(self.vault, "state"):
            return  # a community poster keeps no vault state to reload
        try:
            self.vault = await self.client.open_vault()
        except Exception:  # noqa: BLE001 - the next write will fail and be counted again
            pass


def error_name(exc: BaseException) -> str:
    if isinstance(exc, NodeRefused):
        return f"{exc.status} {exc.code}"
    return type(exc).__name__


class CommunityPoster:
    """One member of the benchmark community, with the same prepare/send shape as a vault."""

    def __init__(self, client: PatientClient, membership, sender_key, state):
        self.client, self.membership, self.key = client, membership, sender_key
        self.sent = max(int(time.time()), state.last_sent(membership.member.public))
        self.count = 0

    def prepare(self, kind: str, data: dict, *, sign: bool = False):
        from rxfed.protocol import community as pc
        from rxfed.protocol.canonical import canonical

        self.count += 1
        sent = self.sent + self.count // 50  # a busy member: fifty posts a second
        event, _franking = pc.make_message(self.membership.member, self.key, self.membership.address,
                                           data["note"], sent)
        body = canonical({"community": str(self.membership.address), "event": event})
        return body, self.client._sign("POST", "/v1/communities/events", body) if sign else None

    async def send(self, prepared) -> None:
        body, headers = prepared
        await self.client._call_raw("POST", "/v1/communities/events", body, headers=headers)


async def setup_posts(args, session: aiohttp.ClientSession, root: str) -> list[Patient]:
    """An organiser creates a community on the node; members join; each hands out a sender key."""
    from rxfed.client.community import PatientCommunities
    from rxfed.crypto.groups import SenderKey
    from rxfed.protocol import community as pc

    count = max(args.patients, max(args.levels))
    organiser, _ = await PatientClient.register(args.base, os.path.join(root, "organiser"), PASSPHRASE, kdf="min",
                                                session=session)
    address = await PatientCommunities(organiser).create("bench community")
    members = [organiser]
    for i in range(count - 1):
        client, _ = await PatientClient.register(args.base, os.path.join(root, f"m{i}"), PASSPHRASE, kdf="min",
                                                 session=session)
        await PatientCommunities(client).join(address)
        members.append(client)
    out = []
    for client in members:
        communities = PatientCommunities(client)
        mine = await communities.membership(address)
        state = (await communities.history(mine)).state
        key = SenderKey.generate(state.next_epoch(mine.member.public))
        await communities._submit(mine.address, pc.make_sender_key(mine.member, state, key))
        out.append(Patient(client, CommunityPoster(client, mine, key, state)))
    return out


async def setup(args, session: aiohttp.ClientSession, root: str) -> list[Patient]:
    if args.mode == "posts":
        return await setup_posts(args, session, root)
    count = max(args.patients, max(args.levels))
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> Patient:
        async with sem:
            client, _code = await PatientClient.register(args.base, os.path.join(root, f"p{i}"), PASSPHRASE,
                                                         kdf="min", session=session)
            return Patient(client, await client.open_vault())

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def write_phase(args, patients: list[Patient], n: int, conc: int, seq: list[int]) -> dict:
    """n writes with conc writers; writer w owns patients[w::conc] and cycles through them.

    What a patient's device does before it talks to the node (sealing the record, signing the
    next manifest and the request, each with its own fresh nonce) is prepared before the
    clock starts, seconds before sending, well inside the node's time window; the timed part
    is what the node is measured on: each signed request sent, verified, stored durably and
    answered."""
    lat: list[float] = []
    errors: Counter = Counter()
    owned = [patients[w::conc] for w in range(conc)]
    plans: list[list[tuple[Patient, object]]] = []
    for w, mine in enumerate(owned):
        count = n // conc + (1 if w < n % conc else 0)
        plan = []
        for k in range(count):
            p = mine[k % len(mine)]
            seq[0] += 1
            plan.append((p, p.vault.prepare("journal", journal_entry(seq[0]), sign=True)))
        plans.append(plan)

    async def writer(plan) -> None:
        void: set[int] = set()
        for p, prepared in plan:
            if id(p) in void:  # an earlier write of this patient failed: its later ones are void
                errors["skipped after failure"] += 1
                continue
            t0 = time.perf_counter()
            try:
                await p.vault.send(prepared)
                ok = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                errors[error_name(exc)] += 1
                ok = False
            dt = time.perf_counter() - t0
            if ok:
                lat.append(dt)
            else:
                void.add(id(p))
        for p in {id(p): p for p, _ in plan if id(p) in void}.values():
            await p.reopen()

    store0 = store_counts(getattr(args, "data_dir", None))
    cpu0, ccpu0 = proc_cpu_s(args.pid), time.process_time()
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(writer(plan)) for plan in plans]
    _done, pending = await asyncio.wait(tasks, timeout=args.timeout)
    wall = time.perf_counter() - t0
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    cpu1, ccpu = proc_cpu_s(args.pid), time.process_time() - ccpu0
    lat.sort()
    q = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None  # noqa: E731
    ok = len(lat)
    res = {
        "concurrency": conc, "patients": len(patients), "ok": ok, "errors": sum(errors.values()),
        "error_kinds": dict(errors), "timed_out": bool(pending), "wall_s": round(wall, 3),
        "records_per_s": round(ok / wall, 1) if wall > 0 else None,
        "p50_ms": q(0.50), "p90_ms": q(0.90), "p99_ms": q(0.99),
        "max_ms": round(lat[-1] * 1000, 2) if lat else None,
        "mean_ms": round(statistics.mean(lat) * 1000, 2) if lat else None,
        "client_cpu_s": round(ccpu, 2), "client_cpu_ms_per_record": round(ccpu * 1000 / max(1, ok), 3),
    }
    if cpu0 is not None and cpu1 is not None:
        res["server_cpu_s"] = round(cpu1 - cpu0, 2)
        res["server_cpu_ms_per_record"] = round((cpu1 - cpu0) * 1000 / max(1, ok), 3)
    if store0:
        res["store"] = store_delta(store0, store_counts(args.data_dir))
    return res


def report(args, result: dict) -> None:
    """Readable summary, then the one-line JSON that scripts compare (the last line)."""
    runs = result.get("runs", [])
    print(f"rxfed {RXFED_VERSION}: {args.n} encrypted record writes per concurrency level, {args.base}, "
          f"{result.get('patients', 0)} patients")
    if args.startup_s is not None:
        print(f"  startup (launch to /health 200)  {args.startup_s:.2f} s")
    if args.pid:
        idle = args.rss_idle_mib if args.rss_idle_mib is not None else mib(result.get("rss_before"))
        print(f"  RSS idle / before load / after setup / after writes  {idle} / {mib(result.get('rss_before'))} / "
              f"{mib(result.get('rss_after_setup'))} / {mib(result.get('rss_after'))} MiB")
    if "setup_s" in result:
        print(f"  setup (register + open vaults, not timed)  {result['setup_s']} s")
    if result.get("setup_error"):
        print(f"  SETUP FAILED: {result['setup_error']}")
    for r in runs:
        cpu = f"  server CPU {r['server_cpu_ms_per_record']:.2f} ms/rec" if "server_cpu_ms_per_record" in r else ""
        flag = "" if r["errors"] == 0 and not r["timed_out"] else \
            f"  [{r['errors']} errors {r['error_kinds']}{', timed out' if r['timed_out'] else ''}]"
        st = r.get("store")
        store = (f"  store: {st['batches']} batches, {st['ops_per_batch']} ops each, COMMIT {st['commit_ms']} ms, "
                 f"{st['writer_thread']} on the writer thread") if st else ""
        print(f"  c={r['concurrency']:<3} {r['records_per_s']:8.1f} records/s  p50 {r['p50_ms']} ms  "
              f"p99 {r['p99_ms']} ms{cpu}  client CPU {r['client_cpu_ms_per_record']:.2f} ms/rec{store}{flag}")
    line: dict = {"peer": args.peer, "mode": args.mode}
    for key in ("records_per_s", "p50_ms", "p99_ms"):
        for r in runs:
            line[f"{key}_c{r['concurrency']}"] = r[key]
    for r in runs:
        if "server_cpu_ms_per_record" in r:
            line[f"server_cpu_ms_per_record_c{r['concurrency']}"] = r["server_cpu_ms_per_record"]
    for r in runs:
        line[f"client_cpu_ms_per_record_c{r['concurrency']}"] = r["client_cpu_ms_per_record"]
    for r in runs:  # the store's group commits in the phase (with --data-dir)
        st = r.get("store") or {}
        for key in ("ops_per_batch", "commit_ms", "writer_thread", "switches"):
            if st.get(key) is not None:
                line[f"store_{key}_c{r['concurrency']}"] = st[key]
    rss_idle = args.rss_idle_mib if args.rss_idle_mib is not None else mib(result.get("rss_before"))
    line.update(rss_idle_mib=rss_idle, rss_after_mib=mib(result.get("rss_after")), startup_s=args.startup_s,
                n=args.n, patients=result.get("patients"), version=RXFED_VERSION, complete=result["complete"])
    print(json.dumps(line), flush=True)


async def run(args, root: str) -> dict:
    result: dict = {"base": args.base, "n": args.n, "conc": args.levels, "rxfed_version": RXFED_VERSION,
                    "rss_before": proc_rss_kb(args.pid), "runs": [], "complete": False}
    conn = aiohttp.TCPConnector(limit=max(64, 2 * max(args.levels)))
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as session:
        t0 = time.perf_counter()
        try:
            patients = await asyncio.wait_for(setup(args, session, root), args.timeout)
        except Exception as exc:  # noqa: BLE001 - reported in the JSON line as incomplete
            result["setup_error"] = f"{error_name(exc)}: {exc}"
            print(f"setup failed: {result['setup_error']}", file=sys.stderr, flush=True)
            return result
        result["setup_s"] = round(time.perf_counter() - t0, 2)
        result["patients"] = len(patients)
        result["rss_after_setup"] = proc_rss_kb(args.pid)
        print(f"setup: {len(patients)} patients registered, vaults open, {result['setup_s']} s",
              file=sys.stderr, flush=True)
        seq = [0]
        if args.warmup:
            result["warmup"] = await write_phase(args, patients, args.warmup, min(4, len(patients)), seq)
        for c in args.levels:
            r = await write_phase(args, patients, args.n, c, seq)
            result["runs"].append(r)
            print(f"c={c}: {r['records_per_s']} records/s, {r['ok']} ok, {r['errors']} errors, {r['wall_s']} s",
                  file=sys.stderr, flush=True)
        result["rss_after"] = proc_rss_kb(args.pid)
        for p in patients:
            await p.client.close()  # the shared session is ours; this closes nothing else
    result["complete"] = bool(result["runs"]) and all(
        r["ok"] == args.n and r["errors"] == 0 and not r["timed_out"] for r in result["runs"])
    return result


def main(argv=None) -> int:
    return run_main(parse_args(argv), run, report, "rxfed-bench-profiles.")


def run_main(args, run, report, prefix: str) -> int:
    """Run ``run(args, root)`` with the patients' profiles under ``root`` (a temp dir unless
    --profiles names one), write --out, print ``report``; exit code 0 if complete, else 3.
    Shared with bench/sweep.py."""
    # SIGTERM (from bench/run.sh's trap) unwinds like Ctrl-C, so the temp profiles are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    own_root = not args.profiles
    root = tempfile.mkdtemp(prefix=prefix) if own_root else args.profiles
    os.makedirs(root, exist_ok=True)
    try:
        try:
            import uvloop  # the load generator shares the machine's two cores with the node

            result = uvloop.run(run(args, root))
        except ImportError:
            result = asyncio.run(run(args, root))
    finally:
        if own_root:
            shutil.rmtree(root, ignore_errors=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    report(args, result)
    return 0 if result["complete"] else 3


if __name__ == "__main__":
    sys.exit(main())
