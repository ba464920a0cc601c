"""What counting a request for the metrics costs (rxfed/node/metrics.py).

Two measurements, each as the best of several rounds, counting on and off in turn:

1. the node's middleware alone (``rxfed.node.http.node_middleware``): a mocked request
   through it around a handler that answers at once, with ``NodeMetrics.observe`` and
   without (microseconds per request);
2. a real node's ``GET /health`` over one keep-alive connection on loopback (requests a
   second), with the middleware counting and without.

    .venv/bin/python bench/metrics_overhead.py [--requests N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from aiohttp import ClientSession, web
from aiohttp.test_utils import make_mocked_request

from rxfed.node import metrics
from rxfed.node.config import Limits
from rxfed.node.http import node_middleware
from rxfed.node.listener import LISTENER, Listener
from rxfed.testing import NodeHarness


async def _direct(n: int) -> float:
    """Seconds per call of the middleware counting (minus the middleware without)."""
    app = web.Application()
    app[LISTENER] = Listener(Limits())

    async def handler(request):
        return web.Response(text="ok")

    resource = app.router.add_resource("/v1/vault")
    route = resource.add_route("POST", handler)
    request = make_mocked_request("POST", "/v1/vault", app=app)
    match = web.UrlMappingMatchInfo({}, route)
    match.add_app(app)
    request._match_info = match

    class _State:
        store = limiter = anonymous = plugins = None
        suspended: set = set()

    mw, plain = node_middleware(metrics.NodeMetrics(_State()).observe), node_middleware(None)
    bare, wrapped = [], []
    for _ in range(20):  # alternate in short runs, keep the fastest of each: the least disturbed
        started = time.perf_counter()
        for _ in range(n):
            await plain(request, handler)
        bare.append(time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(n):
            await mw(request, handler)
        wrapped.append(time.perf_counter() - started)
    return (min(wrapped) - min(bare)) / n


async def _http(base: Path, n: int, with_metrics: bool) -> float:
    node = await NodeHarness(base / ("on" if with_metrics else "off")).start()
    if not with_metrics:
        node.app._middlewares = type(node.app._middlewares)([node_middleware(None)])
        node.app._middlewares_handlers = node.app._prepare_middleware()
    try:
        async with ClientSession() as session:
            url = node.url + "/health"
            for _ in range(200):  # warm up
                async with session.get(url) as r:
                    await r.read()
            started = time.perf_counter()
            for _ in range(n):
                async with session.get(url) as r:
                    await r.read()
            return n / (time.perf_counter() - started)
    finally:
        await node.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    direct = [await _direct(5_000) for _ in range(args.rounds)]
    print(f"middleware alone: {min(direct) * 1e6:.2f} us per request (best of {args.rounds}; "
          f"median {statistics.median(direct) * 1e6:.2f} us)")
    with tempfile.TemporaryDirectory() as tmp:
        on, off = [], []
        for i in range(args.rounds):
            off.append(await _http(Path(tmp) / f"r{i}", args.requests, False))
            on.append(await _http(Path(tmp) / f"r{i}", args.requests, True))
    print(f"GET /health, one connection: {max(off):.0f} req/s without the middleware, {max(on):.0f} with "
          f"(best of {args.rounds}; medians {statistics.median(off):.0f} and {statistics.median(on):.0f})")


if __name__ == "__main__":
    asyncio.run(main())
