"""What the benchmark scripts share about a node they started: waiting for it to answer."""

from __future__ import annotations

import time
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
