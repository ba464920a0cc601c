#!/usr/bin/env python3
"""PSI benchmark: two node processes intersect their sets, side by side with OpenMined PSI.

For each size N, two processes, an initiator and a responder, each hold N strings of the
peer benchmark's shape (``dx:E11.9|pid:00000001``; the first N // 2 shared), and run one
full session of ``rxfed/protocol/psi.py`` over a socket pair: hellos, blinded sets,
commitments, reveals, both sides learning the intersection, which is checked. The two
sides compute at once, one core each. ``seconds`` is the initiator's wall time from
opening the session to holding both sides' results (sets built and modules imported
before); ``bytes`` is every PSI message in both directions (the 4-byte framing of the
socket not counted), ``bytes_per_element`` is bytes / N. Best of ``--repeats`` runs.

Then, in the same run, the OpenMined PSI peer at the same N (``bash
$SHARED/peers/psi/run.sh N`` with ``R`` = ``--repeats``: ECDH-PSI over P-256 in C++, both
parties one after the other in one process, best of R), and the ratio of the two times.

Both are also given in CPU seconds (user + system, ``getrusage`` of the child processes):
``cpu_s`` for both of our processes in the best run, imports and set building included;
``openmined_cpu_s`` the peer's whole process divided by R. On a shared machine the wall
times depend on what else runs (Linux's autogroup scheduling gives the benchmark's two
processes together the share one process would get), the CPU seconds much less. The last
line of output is one JSON object.

    python bench/psi.py                                  # N = 10000 and 100000, best of 3, with the peer
    python bench/psi.py --n 2000 --repeats 1 --no-peer   # quick look, rxfed only
    python bench/psi.py --primitives                     # the group: rbcl ristretto255 vs PyNaCl edwards25519
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FEDERATION = "rxfed-bench"
INITIATOR, RESPONDER = "node-a.bench", "node-b.bench"


def make_set(n: int, side: str) -> set[bytes]:
    """The peer benchmark's sets: the first n // 2 strings shared, the rest this side's own."""
    k = n // 2
    shared = [f"dx:E11.9|pid:{i:08d}" for i in range(k)]
    own = [f"dx:E11.9|pid:{side}{i:08d}" for i in range(n - k)]
    return {s.encode() for s in shared + own}


class Channel:
    """Length-prefixed messages over a stream socket; counts the PSI bytes. Both sides send
    before they receive, so sending is a thread's: two full socket buffers would otherwise
    leave each side waiting for the other to read."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.sent = 0
        self.received = 0
        self._outbox: queue.Queue[bytes | None] = queue.Queue()
        self._writer = threading.Thread(target=self._write, daemon=True)
        self._writer.start()

    def _write(self) -> None:
        while (data := self._outbox.get()) is not None:
            self.sock.sendall(data)

    def send(self, data: bytes, *, psi: bool = True) -> None:
        self._outbox.put(struct.pack(">I", len(data)) + data)
        if psi:
            self.sent += len(data)

    def close(self) -> None:
        self._outbox.put(None)
        self._writer.join()

    def _exact(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = self.sock.recv(min(left, 1 << 20))
            if not chunk:
                raise ConnectionError("the other side closed the channel")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def recv(self, *, psi: bool = True) -> bytes:
        (length,) = struct.unpack(">I", self._exact(4))
        data = self._exact(length)
        if psi:
            self.received += len(data)
        return data


def side(role: str, fd: int, n: int) -> None:
    """One node's side of one session; prints its JSON summary (initiator: the run's)."""
    from rxfed.protocol import psi

    channel = Channel(socket.socket(fileno=fd))
    ours = make_set(n, "c" if role == "initiator" else "s")
    limits = psi.PsiLimits(max_elements=max(psi.DEFAULT_MAX_ELEMENTS, psi.padded_size(n)))
    steps: dict[str, float] = {}

    def timed(name, call, *args):
        t = time.perf_counter()
        out = call(*args)
        steps[name] = round(time.perf_counter() - t, 3)
        return out

    if role == "responder":
        channel.send(b"ready", psi=False)
        cpu = time.process_time()
        hello = channel.recv()
        session, reply = timed("accept", lambda: psi.accept(hello, federation=FEDERATION, me=RESPONDER,
                                                            peer=INITIATOR, elements=ours, limits=limits))
        channel.send(reply)
    else:
        channel.recv(psi=False)  # the responder has built its set
        cpu = time.process_time()
        t0 = time.perf_counter()
        context = psi.PsiContext.new(FEDERATION, INITIATOR, RESPONDER)
        session, hello = timed("start", lambda: psi.start(context, ours, limits=limits))
        channel.send(hello)
        session = session.receive_hello(channel.recv())
    session, blinded = timed("blind", session.blind)
    channel.send(blinded)
    session, commitment = timed("receive_blinded", session.receive_blinded, channel.recv())
    channel.send(commitment)
    session, reveal = timed("receive_commitment", session.receive_commitment, channel.recv())
    channel.send(reveal)
    session, result = timed("receive_reveal", session.receive_reveal, channel.recv())
    expected = {f"dx:E11.9|pid:{i:08d}".encode() for i in range(n // 2)}
    summary = {"role": role, "ok": result.common == expected, "common": len(result.common),
               "padded": result.own_padded, "sent": channel.sent, "received": channel.received,
               "cpu_s": round(time.process_time() - cpu, 3), "steps": steps}
    if role == "responder":
        channel.send(json.dumps(summary).encode(), psi=False)
        channel.close()
        return
    peer = json.loads(channel.recv(psi=False))
    channel.close()
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    summary["responder"] = peer
    print(json.dumps(summary))


def children_cpu() -> float:
    """CPU seconds (user + system) of every child process waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(n: int) -> dict:
    cpu = children_cpu()
    a, b = socket.socketpair()
    procs = [subprocess.Popen([sys.executable, __file__, "--side", role, "--fd", str(s.fileno()), "--n", str(n)],
                              pass_fds=[s.fileno()], stdout=subprocess.PIPE, text=True)
             for role, s in (("responder", b), ("initiator", a))]
    a.close()
    b.close()
    outs = [p.communicate(timeout=1800)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a side failed: {[p.returncode for p in procs]}")
    result = json.loads(outs[1].strip().splitlines()[-1])
    if not (result["ok"] and result["responder"]["ok"]):
        raise SystemExit(f"wrong intersection at n={n}: {result['common']} and {result['responder']['common']}")
    result["bytes"] = result["sent"] + result["received"]
    result["process_cpu_s"] = round(children_cpu() - cpu, 3)
    return result


def run_peer(shared: Path, n: int, repeats: int) -> dict | None:
    script = shared / "peers" / "psi" / "run.sh"
    if not script.exists():
        print(f"  no peer at {script}", flush=True)
        return None
    cpu = children_cpu()
    out = subprocess.run(["bash", str(script), str(n)], env={**os.environ, "R": str(repeats)},
                         capture_output=True, text=True, timeout=3600)
    cpu = children_cpu() - cpu
    for line in out.stdout.splitlines():
        if not line.startswith("{"):
            print("  | " + line, flush=True)
    if out.returncode:
        print(f"  the peer failed ({out.returncode}): {out.stderr[-500:]}", flush=True)
        return None
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # The peer runs its R repeats in one process: its CPU per run is the share of the whole.
    result["cpu_s_per_run"] = round(cpu / repeats, 3)
    return result


def primitives(count: int) -> dict:
    """Per-element costs of the two groups rxfed could use (best of 3 batches of ``count``)."""
    import hashlib

    import nacl.bindings as sodium

    from rxfed.crypto import ristretto

    def per_call(fn, items):
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for item in items:
                fn(item)
            best = min(best, (time.perf_counter() - t) / len(items))
        return round(best * 1e6, 2)

    inputs = [f"dx:E11.9|pid:{i:08d}".encode() for i in range(count)]
    key = ristretto.ExponentKey.generate()
    hasher = ristretto.GroupHasher(b"rxfed-bench", b"prefix")
    points = [hasher(x) for x in inputs]
    scalar = key.scalar

    def ed25519_hash(x):
        # The RO construction on edwards25519 from what PyNaCl binds: two Elligator 2 maps
        # (with cofactor clearing) of the two halves of 64 uniform bytes, added.
        u = ristretto.expand_message_xmd(x, b"rxfed-bench", 64)
        return sodium.crypto_core_ed25519_add(sodium.crypto_core_ed25519_from_uniform(u[:32]),
                                              sodium.crypto_core_ed25519_from_uniform(u[32:]))

    ed_points = [ed25519_hash(x) for x in inputs]
    return {
        "ristretto255_exponentiate_us": per_call(key.exponentiate, points),
        "ristretto255_hash_to_group_us": per_call(hasher, inputs),
        "ristretto255_base_us": per_call(lambda _: ristretto.base_exponentiate(scalar), inputs),
        "ed25519_noclamp_exponentiate_us": per_call(lambda p: sodium.crypto_scalarmult_ed25519_noclamp(scalar, p),
                                                    ed_points),
        "ed25519_hash_to_group_us": per_call(ed25519_hash, inputs),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", default="10000,100000", help="set sizes per side, comma-separated")
    ap.add_argument("--repeats", type=int, default=3, help="runs per size; the fastest is reported")
    ap.add_argument("--no-peer", action="store_true", help="skip the OpenMined PSI peer")
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared", help="the folder holding peers/")
    ap.add_argument("--primitives", action="store_true", help="measure the group operations only")
    ap.add_argument("--side", choices=["initiator", "responder"], help=argparse.SUPPRESS)
    ap.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.side:
        side(args.side, args.fd, int(args.n))
        return 0
    if args.primitives:
        result = primitives(2000)
        for name, value in result.items():
            print(f"  {name:34} {value:8.2f}")
        print(json.dumps({"bench": "psi-primitives", **result}))
        return 0
    try:
        sizes = [int(x) for x in args.n.split(",") if x.strip()]
    except ValueError:
        ap.exit(2, f"--n must be comma-separated integers, not {args.n!r}\n")
    if not sizes or min(sizes) < 2 or args.repeats < 1:
        ap.exit(2, "need sizes of at least 2 and --repeats of at least 1\n")
    rows = []
    for n in sizes:
        print(f"rxfed PSI, two processes: n={n} per side, best of {args.repeats}", flush=True)
        best = None
        for i in range(args.repeats):
            r = run_once(n)
            print(f"  run {i + 1}: {r['seconds']:.3f} s, {r['bytes'] / n:.1f} bytes per element "
                  f"(padded {r['padded']}), cpu {r['cpu_s']:.2f} s + {r['responder']['cpu_s']:.2f} s, "
                  f"steps {r['steps']}", flush=True)
            if best is None or r["seconds"] < best["seconds"]:
                best = r
        row = {"n": n, "seconds": best["seconds"], "bytes": best["bytes"],
               "bytes_per_element": round(best["bytes"] / n, 1), "padded": best["padded"],
               "session_cpu_s": [best["cpu_s"], best["responder"]["cpu_s"]], "cpu_s": best["process_cpu_s"]}
        if not args.no_peer:
            peer = run_peer(args.shared, n, args.repeats)
            if peer:
                row["openmined_seconds"] = peer["seconds"]
                row["openmined_bytes_per_element"] = round(peer["bytes"] / n, 1)
                row["openmined_version"] = peer.get("version")
                row["ratio"] = round(best["seconds"] / peer["seconds"], 3)
                row["openmined_cpu_s"] = peer["cpu_s_per_run"]
                row["cpu_ratio"] = round(best["process_cpu_s"] / peer["cpu_s_per_run"], 3)
        rows.append(row)
    print()
    print("| n per side | rxfed s | OpenMined s | rxfed / OpenMined | rxfed CPU s | OpenMined CPU s | CPU ratio "
          "| rxfed bytes/element | OpenMined bytes/element |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['n']} | {row['seconds']} | {row.get('openmined_seconds', '-')} | {row.get('ratio', '-')} | "
              f"{row['cpu_s']} | {row.get('openmined_cpu_s', '-')} | {row.get('cpu_ratio', '-')} | "
              f"{row['bytes_per_element']} | {row.get('openmined_bytes_per_element', '-')} |")
    print(json.dumps({"bench": "psi", "repeats": args.repeats, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
