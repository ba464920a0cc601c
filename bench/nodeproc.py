"""What the benchmark scripts share about a node they started: its rate limits raised, waiting
for it to answer, its store's group-commit counters."""

from __future__ import annotations

import http.client
import os
import re
import socket
import time
import tomllib
import urllib.request
from urllib.parse import urlsplit


def wait_health(url: str, *, tries: int = 200, pause: float = 0.05) -> bool:
    """Poll ``url``/health until it answers 200 (True) or ``tries`` run out (False)."""
    for _ in range(tries):
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return True
        except OSError:
            time.sleep(pause)
    return False


def check_target(ap, args, script: str) -> None:
    """The checks every load script makes of its arguments: a loopback ``--base`` and
    ``--conc`` levels (set as ``args.levels``); bad usage exits 2."""
    url = urlsplit(args.base)
    if url.scheme != "http" or url.hostname != "127.0.0.1":
        ap.exit(2, f"{script} talks to http://127.0.0.1 only (loopback); got --base {args.base}\n")
    try:
        args.levels = [int(x) for x in args.conc.split(",") if x.strip()]
    except ValueError:
        ap.exit(2, f"--conc must be comma-separated integers, not {args.conc!r}\n")
    args.base = args.base.rstrip("/")


#: The rate limits a benchmark's node runs with: out of the load's way.
RAISED_LIMITS = {"requests_per_second": 1e6, "burst": 1000000, "anonymous_per_minute": 1e6,
                 "anonymous_burst": 1000000, "anonymous_global_per_minute": 1e6, "anonymous_global_burst": 1000000}


def raise_limits(path: str) -> None:
    """Raise the ``[limits]`` rate limits that the ``rxfed.toml`` at ``path`` sets to
    :data:`RAISED_LIMITS`, keeping the rest of the file as it is (``rxfed node init`` writes
    every setting; an older node's file may lack some, which that node would refuse)."""
    out, section, seen = [], None, set()
    with open(path) as f:
        text = f.read()
    for line in text.splitlines(keepends=True):
        m = re.match(r"\s*\[([^\]]+)\]\s*(#.*)?$", line)
        if m:
            section = m.group(1).strip()
        else:
            m = re.match(r"(\s*)([A-Za-z0-9_]+)(\s*=\s*)", line)
            if section == "limits" and m and m.group(2) in RAISED_LIMITS:
                line = f"{m.group(1)}{m.group(2)}{m.group(3)}{RAISED_LIMITS[m.group(2)]!r}\n"
                seen.add(m.group(2))
        out.append(line)
    text = "".join(out)
    limits = tomllib.loads(text).get("limits", {})
    if not {"requests_per_second", "burst"} <= seen or any(float(limits[k]) != 1e6 for k in seen):
        raise SystemExit(f"could not raise the rate limits in {path}")
    with open(path, "w") as f:
        f.write(text)


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("node", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


_SERIES = {
    'rxfed_store_batches_total{where="event_loop"}': "batches_event_loop",
    'rxfed_store_batches_total{where="writer_thread"}': "batches_writer_thread",
    "rxfed_store_mode_switches_total": "switches",
    "rxfed_store_commit_seconds_sum": "commit_seconds_sum",
    "rxfed_store_commit_seconds_count": "commit_count",
    "rxfed_store_batch_operations_sum": "batch_ops_sum",
    "rxfed_store_batch_operations_count": "batch_count",
}


def store_counts(data_dir: str | None, timeout: float = 30.0) -> dict:
    """The store's group-commit counters of the node serving ``data_dir``, read from its
    control socket's ``/metrics``: batches by where they committed, mode switches, COMMIT
    seconds and operations summed over every batch (``{}`` when the node does not answer)."""
    if not data_dir:
        return {}
    conn = _UnixHTTP(os.path.join(data_dir, "admin.sock"), timeout)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    except OSError:
        return {}
    finally:
        conn.close()
    found = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in _SERIES:
            found[_SERIES[name]] = float(value)
    return found


def store_delta(before: dict, after: dict) -> dict:
    """What the store did between two :func:`store_counts`: batches (all, on the event loop,
    on the writer thread), mode switches, operations per batch and mean COMMIT ms."""
    d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    loop, thread = int(d.get("batches_event_loop", 0)), int(d.get("batches_writer_thread", 0))
    commits = d.get("commit_count", 0)
    return {"batches": loop + thread, "event_loop": loop, "writer_thread": thread,
            "switches": int(d.get("switches", 0)),
            "ops_per_batch": round(d.get("batch_ops_sum", 0) / d["batch_count"], 2) if d.get("batch_count") else None,
            "commit_ms": round(d.get("commit_seconds_sum", 0) * 1000 / commits, 3) if commits else None}
