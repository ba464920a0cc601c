"""What the benchmark scripts share about a node they started: waiting for it to answer."""

from __future__ import annotations

import time
import urllib.request


def wait_health(url: str, *, tries: int = 200, pause: float = 0.05) -> bool:
    """Poll ``url``/health until it answers 200 (True) or ``tries`` run out (False)."""
    for _ in range(tries):
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return True
        except OSError:
            time.sleep(pause)
    return False
