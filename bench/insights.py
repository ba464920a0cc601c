#!/usr/bin/env python3
"""Federated insights benchmark: the exact noise sampler beside OpenDP's, and one release
over three node processes with secure aggregation between them on loopback.

1. Sampler: N draws of discrete Laplace at one scale from rxfed.crypto.noise (the OS CSPRNG)
   and from OpenDP (``make_laplace`` over integers, vectorised and one call per draw), in the
   same run: microseconds per draw, mean and variance against the exact ones, chi-square of
   each against the exact pmf and of the two against each other. Also one node's noise share
   (a difference of two Polya(1/t) draws) at the release's scale.
2. Release: three processes, each a node holding ``--patients`` generated consenting
   patients (one to three ``treatment.outcome`` records each, of 40 declared treatments,
   2% of them delivered twice). Generating them is set-up, before the clock. On "go" each
   node runs the release: the ledger's rule (``plan_release``), bounded contribution
   (``bound_contributions``), its noise share (``noise_share``), then secure aggregation
   (``rxfed.protocol.aggregation``) with the first node as aggregator over TCP on 127.0.0.1:
   length-prefixed frames, each signed by the sending node's Ed25519 key and verified by the
   receiver (standing in for the federation's signed requests). The aggregator then
   publishes the table (suppression after noise). ``end_to_end_s`` is from "go" to the
   published table, measured by this parent process; each phase's cost is reported by the
   node that ran it. The release runs twice: ``release`` counts every record at release
   time; ``release_kept`` reads counts the node kept up to date as its records arrived
   (``TableCounts``, built during set-up, ``keep_counts_s``).

The last line of the output is one JSON object.

    python bench/insights.py                        # 3 x 100,000 patients, 20,000 sampler draws
    python bench/insights.py --patients 1000 --samples 2000   # a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rxfed.crypto import SigningKeyPair, verify_signature  # noqa: E402
from rxfed.crypto.noise import discrete_laplace, polya_difference  # noqa: E402
from rxfed.protocol import aggregation as agg  # noqa: E402
from rxfed.protocol import release as rel  # noqa: E402

PERIOD = "2026-11"
TREATMENTS = tuple(f"treatment-{i:02d}" for i in range(40))
SIDE_EFFECTS = ("nausea", "diarrhoea", "headache", "dizziness", "fatigue", "insomnia", "rash", "weight gain",
                "dry mouth", "constipation", "drowsiness", "anxiety", "muscle pain", "cough", "itching",
                "hair loss", "blurred vision", "palpitations", "tremor", "sweating")
LEVELS = ("low", "medium", "high")
SCHEMA = rel.TableSchema("treatment.outcome", groups=TREATMENTS, max_groups=3, measures=(
    rel.Measure("efficacy", LEVELS),
    rel.Measure("adherence", LEVELS),
    rel.Measure("status", ("ongoing", "stopped")),
    rel.Measure("side_effects", SIDE_EFFECTS, many=3),
))
PHASE_TIMEOUT = 30.0


# -- 1. the sampler beside OpenDP -------------------------------------------------------------


def laplace_pmf(scale: float):
    a = math.exp(-1 / scale)
    return lambda x: (1 - a) / (1 + a) * a ** abs(x)


def chi_square(draws, pmf, width: int) -> tuple[float, int]:
    n, seen = len(draws), Counter(draws)
    bins = [(n * pmf(x), seen.get(x, 0)) for x in range(-width, width + 1)]
    inside = sum(e for e, _ in bins)
    bins.append((n - inside, sum(c for x, c in seen.items() if abs(x) > width)))
    bins = [(e, o) for e, o in bins if e >= 5] or bins
    return sum((o - e) ** 2 / e for e, o in bins), len(bins) - 1


def sampler(samples: int, scale: int) -> dict:
    out: dict = {"scale": scale, "draws": samples}
    a = math.exp(-1 / scale)
    out["exact_variance"] = round(2 * a / (1 - a) ** 2, 3)
    t = time.perf_counter()
    ours = [discrete_laplace(scale) for _ in range(samples)]
    out["rxfed_us_per_draw"] = round((time.perf_counter() - t) / samples * 1e6, 2)
    out["rxfed_mean"], out["rxfed_variance"] = round(statistics.fmean(ours), 4), round(statistics.pvariance(ours), 3)
    width = int(6 * scale)
    stat, df = chi_square(ours, laplace_pmf(scale), width)
    out["rxfed_chi2"], out["chi2_df"] = round(stat, 1), df
    t = time.perf_counter()
    shares = [polya_difference(2, SCHEMA_GAMMA) for _ in range(samples // 4)]
    out["polya_share_us_per_draw"] = round((time.perf_counter() - t) / len(shares) * 1e6, 2)
    out["polya_share_scale"] = str(1 / SCHEMA_GAMMA)
    try:
        import opendp.prelude as dp
    except ImportError:
        out["opendp"] = "not installed"
        return out
    dp.enable_features("contrib")
    out["opendp"] = getattr(dp, "__version__", None) or __import__("opendp").__version__
    vector = dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int), scale=float(scale))
    t = time.perf_counter()
    theirs = vector([0] * samples)
    out["opendp_vector_us_per_draw"] = round((time.perf_counter() - t) / samples * 1e6, 2)
    scalar = dp.m.make_laplace(dp.atom_domain(T=int), dp.absolute_distance(T=int), scale=float(scale))
    n_scalar = min(samples, 5000)
    t = time.perf_counter()
    for _ in range(n_scalar):
        scalar(0)
    out["opendp_call_us_per_draw"] = round((time.perf_counter() - t) / n_scalar * 1e6, 2)
    out["opendp_mean"] = round(statistics.fmean(theirs), 4)
    out["opendp_variance"] = round(statistics.pvariance(theirs), 3)
    out["opendp_chi2"] = round(chi_square(theirs, laplace_pmf(scale), width)[0], 1)
    a_, b_ = Counter(ours), Counter(theirs)
    rows = [(a_[x], b_[x]) for x in range(-width, width + 1)]
    rows = [(x, y) for x, y in rows if x + y >= 10]
    out["two_sample_chi2"] = round(sum((x - (x + y) / 2) ** 2 / ((x + y) / 2) + (y - (x + y) / 2) ** 2 / ((x + y) / 2)
                                       for x, y in rows), 1)
    out["two_sample_df"] = len(rows) - 1
    return out


SCHEMA_GAMMA = rel.noise_gamma(SCHEMA, "1")


# -- 2. one node of the release ----------------------------------------------------------------


def generate(patients: int, seed: int) -> list[rel.Contribution]:
    """Consenting patients' treatment.outcome records, as a node's plugin would hold them
    (the subject is the patient's pseudonym for this node)."""
    r = random.Random(seed)
    out = []
    for p in range(patients):
        subject = f"s{seed}-{p}"
        for treatment in r.sample(TREATMENTS, r.choice((1, 1, 2, 2, 3))):
            body = {"treatment": treatment, "status": r.choice(("ongoing", "ongoing", "stopped")),
                    "efficacy": r.choice(LEVELS), "adherence": r.choice(LEVELS),
                    "side_effects": sorted(r.sample(SIDE_EFFECTS, r.choice((0, 0, 1, 2, 4))))}
            c = rel.Contribution(subject, treatment, PERIOD, body)
            out.append(c)
            if r.random() < 0.02:
                out.append(c)  # delivered twice
    return out


def frame(key: SigningKeyPair, data: bytes) -> bytes:
    signed = key.sign(data) + data
    return struct.pack(">I", len(signed)) + signed


async def read_frame(reader: asyncio.StreamReader, public: bytes, limit: int) -> bytes:
    (n,) = struct.unpack(">I", await reader.readexactly(4))
    if n > limit + 64:
        raise ValueError("frame too large")
    signed = await reader.readexactly(n)
    return verify_signature(public, signed[64:], signed[:64])


async def node_main(config: dict, index: int) -> dict:
    spec = agg.RoundSpec.from_json(config["spec"])
    me = spec.node_ids[index]
    key = SigningKeyPair.from_seed(bytes.fromhex(config["seeds"][index]))
    timings: dict[str, float] = {}
    t = time.perf_counter()
    records = generate(config["patients"], seed=index + 1)
    timings["generate_s"] = time.perf_counter() - t
    kept = None
    if config["counts"] == "kept":
        # the node's plugin keeps the counts as signals arrive (set-up here, not the release)
        t = time.perf_counter()
        kept = rel.TableCounts(SCHEMA, PERIOD)
        for c in records:
            kept.put(c)
        timings["keep_counts_s"] = time.perf_counter() - t
    ledger = rel.Ledger.new("2")
    server = None
    if index == 0:
        pending: dict[str, asyncio.StreamWriter] = {}
        arrived = asyncio.Queue()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            hello = (await reader.readexactly(struct.calcsize(">H")))
            (n,) = struct.unpack(">H", hello)
            node = (await reader.readexactly(n)).decode()
            if node not in spec.node_ids:
                writer.close()
                return
            pending[node] = writer
            try:
                while True:
                    data = await read_frame(reader, spec.key_of(node), spec.max_message)
                    await arrived.put((node, data))
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                pass  # the peer left, or the round is over and the loop is closing

        server = await asyncio.start_server(handle, "127.0.0.1", config["port"])
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "go"
    t0, c0 = time.perf_counter(), time.process_time()

    t = time.perf_counter()
    plan = rel.plan_release(ledger, config["epsilon"], PERIOD, release=config["release"], at=int(time.time()))
    assert plan.allowed
    timings["ledger_s"] = time.perf_counter() - t
    t, c = time.perf_counter(), time.process_time()
    bounded = kept.bounded() if kept is not None else rel.bound_contributions(SCHEMA, PERIOD, records)
    timings["bound_s"], timings["bound_cpu_s"] = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    noise = rel.noise_share(SCHEMA, config["epsilon"], spec.threshold)
    vector = [n + e for n, e in zip(bounded.counts, noise)]
    timings["noise_s"], timings["noise_cpu_s"] = time.perf_counter() - t, time.process_time() - c
    participant = agg.Participant(spec, me, key, vector)
    mask_cpu = 0.0

    def participant_receive(data: bytes) -> bytes | None:
        nonlocal mask_cpu
        t = time.perf_counter()
        reply = participant.receive(data)
        mask_cpu += time.perf_counter() - t
        return reply

    result = {"node": me, "patients": bounded.patients, "records": bounded.records, "dropped": bounded.dropped,
              "clipped": bounded.clipped, "cells": len(vector)}
    if index != 0:
        reader, writer = await asyncio.open_connection("127.0.0.1", config["port"])
        name = me.encode()
        writer.write(struct.pack(">H", len(name)) + name + frame(key, participant.advert()))
        await writer.drain()
        aggregator_key = spec.key_of(spec.aggregator)
        try:
            while participant.phase not in (agg.Phase.DONE, agg.Phase.ABANDONED):
                reply = participant_receive(await read_frame(reader, aggregator_key, spec.max_message))
                if reply is not None:
                    writer.write(frame(key, reply))
                    await writer.drain()
            # the aggregator may still send "abandon"; the round is over for this node
        finally:
            writer.close()
        timings["mask_and_reveal_s"] = mask_cpu
        timings["release_s"], timings["release_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
        result.update(timings)
        return result

    # the aggregator (which also takes part, in this process)
    aggregator = agg.Aggregator(spec)
    phases: dict[str, float] = {}
    agg_cpu = 0.0
    phase_start, phase = time.perf_counter(), aggregator.phase

    def take(node: str, data: bytes) -> list[tuple[str, bytes]]:
        nonlocal agg_cpu, phase_start, phase
        t = time.perf_counter()
        out = aggregator.receive(node, data)
        agg_cpu += time.perf_counter() - t
        if aggregator.phase != phase:
            now = time.perf_counter()
            phases[f"{phase}_s"] = now - phase_start
            phase_start, phase = now, aggregator.phase
        return out

    async def send(out: list[tuple[str, bytes]]) -> None:
        while out:
            nxt = []
            for node, data in out:
                if node == me:
                    reply = participant_receive(data)
                    if reply is not None:
                        nxt += take(me, reply)
                else:
                    pending[node].write(frame(key, data))
                    await pending[node].drain()
            out = nxt

    await send(take(me, participant.advert()))
    while aggregator.outcome is None:
        try:
            node, data = await asyncio.wait_for(arrived.get(), PHASE_TIMEOUT)
            await send(take(node, data))
        except TimeoutError:
            await send(aggregator.deadline())
    outcome = aggregator.outcome
    t = time.perf_counter()
    table = rel.publish(SCHEMA, PERIOD, list(outcome.total), epsilon=config["epsilon"], nodes=len(outcome.survivors),
                        computed=int(time.time())) if outcome.total else None
    timings["publish_s"] = time.perf_counter() - t
    timings["release_s"], timings["release_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
    timings["mask_and_reveal_s"] = mask_cpu
    timings["aggregator_cpu_s"] = agg_cpu
    result.update(timings)
    result["aggregation_phases"] = phases
    result["outcome"] = str(outcome.phase)
    if table:
        doc = table.to_json()
        row = doc["rows"][TREATMENTS[0]]
        result["sample_row"] = {TREATMENTS[0]: {"reports": row["reports"], "efficacy": row["efficacy"]}}
        result["suppressed_cells"] = sum(1 for v in outcome.total if v < rel.SUPPRESS_BELOW)
    print(json.dumps(result), flush=True)  # the parent's clock stops here, before the loop winds down
    server.close()
    for writer in pending.values():
        writer.close()
    return result


def run_release(args, counts: str) -> dict:
    keys = [SigningKeyPair.generate() for _ in range(args.nodes)]
    names = [f"node{i}.example" for i in range(args.nodes)]
    order = sorted(range(args.nodes), key=lambda i: names[i])
    release = "bench-" + os.urandom(6).hex()
    spec = agg.RoundSpec(round=agg.new_round_id(), aggregator=names[0],
                         nodes=tuple((names[i], keys[i].public) for i in order), cells=len(SCHEMA.cells),
                         table=rel.release_digest(SCHEMA, PERIOD, args.epsilon, release), collusion=1, dropouts=0)
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = {"spec": spec.to_json(), "seeds": [keys[i].seed.hex() for i in order], "patients": args.patients,
              "epsilon": args.epsilon, "release": release, "port": port, "counts": counts}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        os.chmod(f.name, 0o600)
        json.dump(config, f)
        path = f.name
    try:
        # the aggregator is the node whose id sorts first (index 0 in the spec's order)
        procs = [subprocess.Popen([sys.executable, __file__, "--node", str(i), "--config", path],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                 for i in range(args.nodes)]
        t = time.perf_counter()
        for p in procs[:1]:
            assert p.stdout.readline().strip() == "ready"
        for p in procs[1:]:
            assert p.stdout.readline().strip() == "ready"
        setup_s = time.perf_counter() - t
        t0 = time.perf_counter()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        first = json.loads(procs[0].stdout.readline())
        end_to_end = time.perf_counter() - t0
        others = [json.loads(p.stdout.readline()) for p in procs[1:]]
        for p in procs:
            p.wait(30)
    finally:
        os.unlink(path)
        for p in procs:
            if p.poll() is None:
                p.kill()
    return {"counts": counts, "nodes": args.nodes, "patients_per_node": args.patients, "epsilon": args.epsilon,
            "noise_shares": spec.threshold, "sensitivity": SCHEMA.sensitivity, "cells": len(SCHEMA.cells),
            "setup_s": round(setup_s, 3), "end_to_end_s": round(end_to_end, 3),
            "per_node": [_rounded(first)] + [_rounded(o) for o in others]}


def _rounded(d: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else _rounded(v) if isinstance(v, dict) and k != "sample_row"
                else v) for k, v in d.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=100_000, help="generated consenting patients per node")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--samples", type=int, default=20_000, help="sampler draws for the comparison")
    ap.add_argument("--scale", type=int, default=4, help="the compared discrete Laplace's scale")
    ap.add_argument("--epsilon", default="1", help="epsilon of the release (exact: 1, 0.5, 1/3)")
    ap.add_argument("--counts", default="recount,kept",
                    help="recount: the release counts every record; kept: the node kept its counts as signals "
                         "arrived (rxfed.protocol.release.TableCounts); both by default")
    ap.add_argument("--node", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.node is not None:
        with open(args.config) as f:
            config = json.load(f)
        result = asyncio.run(node_main(config, args.node))
        if args.node != 0:
            print(json.dumps(result), flush=True)
        return 0
    if args.nodes < 2 or args.patients < 1 or args.samples < 100:
        ap.exit(2, "--nodes >= 2, --patients >= 1, --samples >= 100\n")
    if not args.counts or not set(args.counts.split(",")) <= {"recount", "kept"}:
        ap.exit(2, "--counts: recount, kept or both (comma-separated)\n")
    try:
        rel.epsilon_of(args.epsilon)
    except Exception as exc:
        ap.exit(2, f"--epsilon: {exc}\n")
    result = {"sampler": sampler(args.samples, args.scale)}
    for counts in args.counts.split(","):
        result["release" if counts == "recount" else f"release_{counts}"] = run_release(args, counts)
    result["complete"] = all(r["per_node"][0].get("outcome") == "done"
                             for k, r in result.items() if k.startswith("release"))
    print(json.dumps(result))
    return 0 if result["complete"] else 3


if __name__ == "__main__":
    sys.exit(main())
