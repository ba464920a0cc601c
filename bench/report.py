#!/usr/bin/env python3
"""Report on one bench/run.sh results folder: medians over the rounds, ratios, targets.

Reads every ``*.json`` JSON line that bench/run.sh saved (``synapse-I.json``,
``ceiling-full-I.json``, ``rxfed-I.json``; the ``*.detail.json`` files and ``meta.json`` are
not JSON lines and are skipped), takes the median of each figure over the rounds that
completed, and prints Markdown: the comparison table, the targets, and the per-round
figures with each round's own ratios. A target is met only when its worst round meets it
(each round's ratio is taken within that round, peers and rxfed minutes apart); the median
is shown beside it.

  python bench/report.py [RESULTS_DIR]     # default: the newest folder in bench/results/
"""
from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

RXFED, SYNAPSE, CEILING = "rxfed", "synapse", "ceiling FULL"
POSTS, FED, SWEEP = "rxfed posts", "rxfed federation", "rxfed sweep"
NAMES = {RXFED: "rxfed", SYNAPSE: "Synapse", CEILING: "ceiling FULL", POSTS: "rxfed posts", FED: "rxfed federation",
         SWEEP: "rxfed sweep"}

# (label, rxfed key, peer key, decimals)
ROWS = [
    ("records or msgs/s, concurrency 1", "records_per_s_c1", "msgs_per_s_c1", 1),
    ("records or msgs/s, concurrency 16", "records_per_s_c16", "msgs_per_s_c16", 1),
    ("p50 latency, concurrency 1 (ms)", "p50_ms_c1", "p50_ms_c1", 2),
    ("p99 latency, concurrency 16 (ms)", "p99_ms_c16", "p99_ms_c16", 1),
    ("idle RSS (MiB)", "rss_idle_mib", "rss_idle_mib", 1),
    ("startup, empty database (s)", "startup_s", "startup_s", 2),
]


def classify(doc: dict) -> str | None:
    peer = doc.get("peer")
    if peer == "rxfed":
        return RXFED
    if peer == "rxfed-posts":
        return POSTS
    if peer == "rxfed-federation":
        return FED
    if peer == "rxfed-sweep":
        return SWEEP
    if peer == "synapse":
        return SYNAPSE
    if peer == "aiohttp-sqlite-ceiling" and "synchronous=FULL" in str(doc.get("version", "")):
        return CEILING
    return None


def load(folder: Path) -> dict[str, dict[int, dict]]:
    """{system: {round: json line}} from every saved JSON line in the folder."""
    found: dict[str, dict[int, dict]] = {RXFED: {}, SYNAPSE: {}, CEILING: {}, POSTS: {}, FED: {}, SWEEP: {}}
    for path in sorted(folder.glob("*.json")):
        if path.name == "meta.json" or path.name.endswith(".detail.json"):
            continue
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        try:
            doc = json.loads(lines[-1])
        except (IndexError, ValueError):
            print(f"warning: {path.name} holds no JSON line; skipped", file=sys.stderr)
            continue
        system = classify(doc) if isinstance(doc, dict) else None
        if system is None:
            continue
        m = re.search(r"-(\d+)\.json$", path.name)
        found[system][int(m.group(1)) if m else len(found[system]) + 1] = doc
    return found


def key_for(system: str, row) -> str:
    return row[1] if system == RXFED else row[2]


def usable(runs: dict[int, dict]) -> tuple[list[dict], str]:
    """The complete rounds (all rounds, with a warning, if none completed)."""
    done = [d for _, d in sorted(runs.items()) if d.get("complete")]
    if done:
        note = "" if len(done) == len(runs) else f"{len(done)} of {len(runs)} rounds complete"
        return done, note
    if runs:
        return [d for _, d in sorted(runs.items())], f"no complete round: median over {len(runs)} incomplete rounds"
    return [], "no rounds"


def median(docs: list[dict], key: str) -> float | None:
    values = [d[key] for d in docs if isinstance(d.get(key), (int, float))]
    return statistics.median(values) if values else None


def fmt(value: float | None, decimals: int) -> str:
    return "n/a" if value is None else f"{value:.{decimals}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def per_round(found: dict, a: str, a_key: str, b: str | None = None, b_key: str | None = None) -> list[float]:
    """Each complete round's value of ``a_key`` for system ``a``, or its ratio to ``b_key``
    of system ``b`` in the same round."""
    out = []
    for i, doc in sorted(found[a].items()):
        value = doc.get(a_key) if doc.get("complete") else None
        if b is not None:
            other = found[b].get(i)
            value = ratio(value, other.get(b_key)) if other and other.get("complete") else None
        if isinstance(value, (int, float)):
            out.append(value)
    return out


def target_row(name: str, values: list[float], limit: float, *, higher: bool, unit: str = "x") -> tuple:
    """(name, median, worst round, result): met when the worst round meets ``limit``."""
    if not values:
        return name, "n/a", "n/a", "n/a"
    worst = min(values) if higher else max(values)
    ok = worst >= limit if higher else worst < limit
    show = (lambda v: f"{fmt_ratio(v)}{unit}") if unit == "x" else (lambda v: f"{v:.2f}{unit}")
    return name, show(statistics.median(values)), show(worst), "met" if ok else "NOT MET"


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "n/a"
    return f"{r:.3f}" if r < 1 else f"{r:.2f}" if r < 10 else f"{r:.1f}"


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        folder = Path(argv[1])
    else:
        results = Path(__file__).resolve().parent / "results"
        folders = sorted(p for p in results.glob("*") if p.is_dir()) if results.is_dir() else []
        if not folders:
            print(f"no results in {results}; run bench/run.sh first", file=sys.stderr)
            return 2
        folder = folders[-1]
    if not folder.is_dir():
        print(f"{folder} is not a folder", file=sys.stderr)
        return 2
    found = load(folder)
    meta = {}
    if (folder / "meta.json").is_file():
        meta = json.loads((folder / "meta.json").read_text())

    if found[SWEEP] and not any(found[s] for s in (RXFED, SYNAPSE, CEILING, POSTS, FED)):
        return sweep_report(folder, found[SWEEP], meta)
    docs, notes = {}, {}
    for system in (RXFED, SYNAPSE, CEILING):
        docs[system], notes[system] = usable(found[system])
    med = {s: {row[0]: median(docs[s], key_for(s, row)) for row in ROWS} for s in docs}

    print(f"## rxfed encrypted record writes vs peers, {folder.name}")
    print()
    if meta:
        print(f"N={meta.get('N')} per concurrency level, concurrency {meta.get('conc')}, "
              f"{meta.get('patients')} patients, R={meta.get('R')} rounds; Python {meta.get('python')}, "
              f"rxfed {meta.get('rxfed')}, {meta.get('cpus')} CPUs ({meta.get('cpu')}), commit "
              f"{(meta.get('commit') or '?')[:12]}.")
    counts = ", ".join(f"{NAMES[s]} {len(docs[s])}" + (f" ({notes[s]})" if notes[s] else "") for s in docs)
    print(f"Medians over the rounds: {counts}. Synapse and the ceiling count `m.room.encrypted` messages,")
    print("rxfed counts sealed journal records (each with a newly signed manifest). Latency ratios below 1 and")
    print("RSS/startup ratios below 1 favour rxfed.")
    print()
    print("| | rxfed (median) | Synapse (median) | ceiling FULL (median) | rxfed / Synapse | rxfed / ceiling |")
    print("|---|---|---|---|---|---|")
    for label, _rk, _pk, dec in ROWS:
        r, s, c = med[RXFED][label], med[SYNAPSE][label], med[CEILING][label]
        print(f"| {label} | {fmt(r, dec)} | {fmt(s, dec)} | {fmt(c, dec)} | {fmt_ratio(ratio(r, s))} | "
              f"{fmt_ratio(ratio(r, c))} |")
    print()

    targets = [
        target_row("rxfed c16 throughput >= 25x Synapse c16",
                   per_round(found, RXFED, "records_per_s_c16", SYNAPSE, "msgs_per_s_c16"), 25, higher=True),
        target_row("rxfed c16 throughput >= 1.0x ceiling FULL c16",
                   per_round(found, RXFED, "records_per_s_c16", CEILING, "msgs_per_s_c16"), 1.0, higher=True),
        target_row("rxfed p50 latency c1 < 3 ms", per_round(found, RXFED, "p50_ms_c1"), 3, higher=False, unit=" ms"),
        target_row("rxfed idle RSS <= 0.5x Synapse idle RSS",
                   per_round(found, RXFED, "rss_idle_mib", SYNAPSE, "rss_idle_mib"), 0.5 + 1e-9, higher=False),
    ]
    print("### Targets (met when the worst round meets them)")
    print()
    print("| target | median | worst round | result |")
    print("|---|---|---|---|")
    for row in targets:
        print("| " + " | ".join(row) + " |")
    print()

    cpu = [median(docs[RXFED], f"server_cpu_ms_per_record_c{c}") for c in (1, 16)]
    ccpu = [median(docs[RXFED], f"client_cpu_ms_per_record_c{c}") for c in (1, 16)]
    if any(v is not None for v in cpu + ccpu):
        print(f"rxfed CPU per record (median): node {fmt(cpu[0], 2)} ms at c1, {fmt(cpu[1], 2)} ms at c16; "
              f"load client (sending, reading replies, saving the vault counter) {fmt(ccpu[0], 2)} ms at c1, "
              f"{fmt(ccpu[1], 2)} ms at c16.")
        print()

    print("### Per round")
    print()
    print("| round | system | c1 /s | c16 /s | p50 c1 ms | p99 c16 ms | idle RSS MiB | startup s | complete "
          "| rxfed/Synapse c16 | rxfed/ceiling c16 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rounds = sorted(set().union(*(found[s].keys() for s in found)))
    for i in rounds:
        for system in (RXFED, SYNAPSE, CEILING):
            d = found[system].get(i)
            if d is None:
                print(f"| {i} | {NAMES[system]} | missing | | | | | | | | |")
                continue
            vals = [fmt(d.get(key_for(system, row)), row[3]) for row in ROWS]
            extra = ["", ""]
            if system == RXFED:
                s, c = found[SYNAPSE].get(i), found[CEILING].get(i)
                extra = [fmt_ratio(ratio(d.get("records_per_s_c16"), (s or {}).get("msgs_per_s_c16"))),
                         fmt_ratio(ratio(d.get("records_per_s_c16"), (c or {}).get("msgs_per_s_c16")))]
            print(f"| {i} | {NAMES[system]} | " + " | ".join(vals) + f" | {'yes' if d.get('complete') else 'NO'} | "
                  + " | ".join(extra) + " |")
    store_report(found[RXFED])
    communities_report(found, docs)
    return 0


def store_report(rounds: dict[int, dict]) -> None:
    """What each rxfed round cost and how its store committed (issue 17: a round slower than
    the others shows whether its batches were smaller, its commits slower, or its CPU per
    record higher)."""
    if not any("store_ops_per_batch_c16" in d or "server_cpu_ms_per_record_c16" in d for d in rounds.values()):
        return
    print()
    print("### rxfed per round: CPU per record and the store's group commits")
    print()
    print("| round | c16 /s | node CPU ms/record c16 | client CPU ms/record c16 | ops per batch c1 / c16 "
          "| COMMIT ms c1 / c16 | batches on the writer thread c16 | moves c16 |")
    print("|---|---|---|---|---|---|---|---|")
    for i, d in sorted(rounds.items()):
        print(f"| {i} | {fmt(d.get('records_per_s_c16'), 1)} | {fmt(d.get('server_cpu_ms_per_record_c16'), 3)} | "
              f"{fmt(d.get('client_cpu_ms_per_record_c16'), 3)} | {fmt(d.get('store_ops_per_batch_c1'), 2)} / "
              f"{fmt(d.get('store_ops_per_batch_c16'), 2)} | {fmt(d.get('store_commit_ms_c1'), 3)} / "
              f"{fmt(d.get('store_commit_ms_c16'), 3)} | {fmt(d.get('store_writer_thread_c16'), 0)} | "
              f"{fmt(d.get('store_switches_c16'), 0)} |")


def sweep_report(folder: Path, rounds: dict[int, dict], meta: dict) -> int:
    """The concurrency sweep (bench/sweep.py): per level the median over the complete
    rounds, and its targets, each met only when its worst round meets it."""
    docs, note = usable(rounds)
    levels = sorted({c for d in docs for c in d.get("levels", [])})
    print(f"## rxfed concurrency sweep, signed record writes, {folder.name}")
    print()
    if meta:
        print(f"At least {meta.get('sweep_n')} writes per level, R={meta.get('R')} rounds; Python {meta.get('python')}, "
              f"rxfed {meta.get('rxfed')}, {meta.get('cpus')} CPUs ({meta.get('cpu')}), commit "
              f"{(meta.get('commit') or '?')[:12]}.")
    print(f"Medians over {len(docs)} round(s){' (' + note + ')' if note else ''}. A shed write (503 with "
          "Retry-After) is sent again after the time it names; `answer max` is the longest any attempt waited for "
          "its answer (2xx or 503).")
    print()
    print("| concurrency | records/s | x c16 | p50 ms | p99 ms | answer max ms | shed (503) | late (> 2 s) | timeouts "
          "| errors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    base = median(docs, "records_per_s_c16")
    for c in levels:
        rate = median(docs, f"records_per_s_c{c}")
        counts = [fmt(median(docs, f"{k}_c{c}"), 0) for k in ("shed", "late", "timeouts", "errors")]
        print(f"| {c} | {fmt(rate, 1)} | {fmt_ratio(ratio(rate, base))} | {fmt(median(docs, f'p50_ms_c{c}'), 1)} | "
              f"{fmt(median(docs, f'p99_ms_c{c}'), 1)} | {fmt(median(docs, f'answer_max_ms_c{c}'), 1)} | "
              + " | ".join(counts) + " |")
    print()
    ratios = [ratio(d.get("records_per_s_c1024"), d.get("records_per_s_c16")) for d in docs]
    slowest = [max((d.get(f"answer_max_ms_c{c}") or 0) for c in d.get("levels", [])) / 1000 for d in docs]
    unanswered = [sum((d.get(f"late_c{c}") or 0) + (d.get(f"timeouts_c{c}") or 0) + (d.get(f"errors_c{c}") or 0)
                      for c in d.get("levels", [])) for d in docs]
    rows = [
        target_row("c1024 throughput >= 0.8x c16", [r for r in ratios if r is not None], 0.8, higher=True),
        target_row("every attempt answered (2xx or 503 + Retry-After) within 2 s", slowest, 2.0, higher=False,
                   unit=" s"),
        target_row("late answers, timeouts and errors, all levels", [float(u) for u in unanswered], 0.5,
                   higher=False, unit=""),
    ]
    print("| target | median | worst round | result |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


def communities_report(found: dict[str, dict[int, dict]], docs: dict[str, list[dict]]) -> None:
    """Community posts against Synapse's messages, and node-to-node delivery."""
    posts, posts_note = usable(found[POSTS])
    fed, fed_note = usable(found[FED])
    if not posts and not fed:
        return
    print()
    print("## Community posts and federation delivery")
    print()
    print(f"Medians over {len(posts)} posts round(s){' (' + posts_note + ')' if posts_note else ''} and "
          f"{len(fed)} federation round(s){' (' + fed_note + ')' if fed_note else ''}. A post is an end-to-end")
    print("encrypted, member-signed message to a community hosted on the node: verified, sequenced, stamped")
    print("with the node's key and stored durably; Synapse's figure is its `m.room.encrypted` send.")
    print()
    print("| | rxfed posts (median) | Synapse (median) | rxfed / Synapse |")
    print("|---|---|---|---|")
    for label, rk, pk, dec in ROWS[:4]:
        r, sy = median(posts, rk), median(docs[SYNAPSE], pk)
        print(f"| {label.replace('records or msgs', 'posts or msgs')} | {fmt(r, dec)} | {fmt(sy, dec)} | "
              f"{fmt_ratio(ratio(r, sy))} |")
    delivered, e2e = median(fed, "events_per_s"), median(fed, "end_to_end_events_per_s")
    p50, p99 = median(fed, "p50_ms"), median(fed, "p99_ms")
    rate = median(fed, "rate")
    print()
    print("| federation, host node to member node | median |")
    print("|---|---|")
    print(f"| signed events delivered per second (batched transactions) | {fmt(delivered, 1)} |")
    print(f"| events accepted and delivered per second (host validating, stamping and delivering) | {fmt(e2e, 1)} |")
    print(f"| delivery latency p50 at {fmt(rate, 0)} events/s (ms) | {fmt(p50, 2)} |")
    print(f"| delivery latency p99 at {fmt(rate, 0)} events/s (ms) | {fmt(p99, 2)} |")
    print()
    rows = [
        target_row("posts c16 >= 15x Synapse c16", per_round(found, POSTS, "records_per_s_c16", SYNAPSE,
                                                            "msgs_per_s_c16"), 15, higher=True),
        target_row("signed events delivered between two nodes >= 2000/s", per_round(found, FED, "events_per_s"),
                   2000, higher=True, unit="/s"),
        target_row("p99 delivery latency < 50 ms at 100 events/s", per_round(found, FED, "p99_ms"), 50,
                   higher=False, unit=" ms"),
    ]
    print("| target | median | worst round | result |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
