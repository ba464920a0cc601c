"""How long an unlocked ``rxfed`` command takes, start to exit, against a node on loopback.

Starts a node (``rxfed node init`` + ``rxfed node run`` in a temporary directory, on a free
127.0.0.1 port), registers a patient whose key file has the default Argon2id cost
(``moderate``), adds a few records, runs ``rxfed patient unlock``, then runs each command
``--n`` times as a new process, the way a person or a script does, and reports per command
the median and 90th percentile of

* ``own_ms``: the command's own CPU time (user + system, from ``wait4``): interpreter start,
  imports, signing, sealing and opening records; not the node's time, nor waiting for it;
* ``wall_ms``: launch to exit, the node's answers on loopback included.

Bytecode is cached as on an installed system (``PYTHONDONTWRITEBYTECODE`` is dropped for the
commands, and each is run once before it is timed).

One command is also run locked (passphrase from the environment) to show what the unlock
saves. The last line of output is one JSON object; the lines before it a table.

    python bench/cli_latency.py [--n 20] [--python PYTHON]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nodeproc import wait_health

PASSPHRASE = "a benchmark pass phrase"

COMMANDS = {
    "patient show": ["patient", "show"],
    "patient journal add": ["patient", "journal", "add", "--symptom", "fatigue=4", "--feeling", "6"],
    "patient condition add": ["patient", "condition", "add", "G40.909", "--label", "epilepsy"],
    "patient devices list": ["patient", "devices", "list"],
    "community post": None,  # filled in once the community exists
    "rxfed --version": ["--version"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(python: str, args: list[str], env: dict) -> tuple[float, float, int]:
    """(own CPU ms, wall ms, exit status) of one ``rxfed`` process."""
    start = time.perf_counter()
    proc = subprocess.Popen([python, "-m", "rxfed", *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (usage.ru_utime + usage.ru_stime) * 1000, wall * 1000, proc.returncode


def run(python: str, args: list[str], env: dict) -> str:
    out = subprocess.run([python, "-m", "rxfed", *args], capture_output=True, text=True, env=env, timeout=120,
                         stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise SystemExit(f"rxfed {' '.join(args)} failed: {out.stderr}")
    return out.stdout


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="runs per command (default 20)")
    parser.add_argument("--python", default=sys.executable, help="an interpreter with rxfed installed")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rxfed-cli-bench-"))
    run_dir = Path(tempfile.mkdtemp(prefix="rxb-"))  # the agent's socket: a short, private path
    env = {**os.environ, "RXFED_PROFILE": str(work / "profile"), "XDG_RUNTIME_DIR": str(run_dir)}
    env.pop("RXFED_KDF", None)
    env.pop("RXFED_PASSPHRASE", None)
    # As installed: modules' bytecode cached (pip compiles it at install; a checkout caches it
    # on first run), so what is measured is the command, not the compiler.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    port = free_port()
    node = None
    try:
        run(args.python, ["node", "init", str(work / "node"), "--name", "bench", "--port", str(port)], env)
        node = subprocess.Popen([args.python, "-m", "rxfed", "node", "run", str(work / "node")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        url = f"http://127.0.0.1:{port}"
        wait_health(url)
        locked_env = {**env, "RXFED_PASSPHRASE": PASSPHRASE}
        run(args.python, ["patient", "register", "--node", url], locked_env)  # the default cost: moderate
        for i in range(10):
            run(args.python, ["patient", "journal", "add", "--feeling", str(i)], locked_env)
        address = json.loads(run(args.python, ["community", "create", "Bench", "--json"], locked_env))["address"]
        COMMANDS["community post"] = ["community", "post", address, "hello from the benchmark"]
        locked = [timed(args.python, COMMANDS["patient show"], locked_env) for _ in range(3)]
        run(args.python, ["patient", "unlock", "--for", "15m"], locked_env)
        results = {}
        for name, command in COMMANDS.items():
            timed(args.python, command, env)  # warm the page cache
            runs = [timed(args.python, command, env) for _ in range(args.n)]
            if any(status != 0 for *_, status in runs):
                raise SystemExit(f"rxfed {' '.join(command)} failed while unlocked")
            own, wall = [r[0] for r in runs], [r[1] for r in runs]
            results[name] = {"own_ms_p50": round(statistics.median(own), 1),
                             "own_ms_p90": round(percentile(own, 0.9), 1),
                             "wall_ms_p50": round(statistics.median(wall), 1),
                             "wall_ms_p90": round(percentile(wall, 0.9), 1)}
        run(args.python, ["patient", "lock"], env)
        results["patient show, locked (Argon2id moderate)"] = {
            "own_ms_p50": round(statistics.median(r[0] for r in locked), 1),
            "wall_ms_p50": round(statistics.median(r[1] for r in locked), 1)}
    finally:
        if node is not None:
            node.terminate()
            node.wait(20)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)

    print(f"{'command':<44} {'own p50':>8} {'own p90':>8} {'wall p50':>9} {'wall p90':>9}")
    for name, r in results.items():
        print(f"{name:<44} {r['own_ms_p50']:>6.1f}ms {r.get('own_ms_p90', float('nan')):>6.1f}ms "
              f"{r['wall_ms_p50']:>7.1f}ms {r.get('wall_ms_p90', float('nan')):>7.1f}ms")
    print(json.dumps({"n": args.n, "python": sys.version.split()[0], "commands": results,
                      "complete": True}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
