"""What a running node counts for its operator: Prometheus metrics, counts only.

Every node application has its own :class:`prometheus_client.CollectorRegistry` (several
nodes run in one test process, and the demo runs three). Labels are bounded and name no one:
a route is its pattern (``/federation/v1/transactions/{txn}``, never the id in it), a
method one of the standard ones, a peer the host name its operator configured or a peer
whose keys the node holds (at most :data:`MAX_PEER_LABELS`; other destinations, which
patients name, count together as ``(other)``). No patient, device, record, grant or community id appears in a
label, so a scrape (or a monitoring system's retention) can link nothing to a patient.

The per-request cost is :meth:`NodeMetrics.observe`, called by the node's one middleware
(:func:`rxfed.node.http.node_middleware`): two clock reads, two dict lookups and a bisect
(``bench/metrics_overhead.py`` measures it). Everything else (store, outbox, breakers,
plugins, rate limits) is read when ``/metrics`` is scraped.
"""

from __future__ import annotations

import bisect
import time
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

import rxfed

#: Request latency buckets (seconds): a record write takes a few milliseconds; a client
#: gives up after a few seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))
#: Peers with a label of their own, at most (operator-configured ones first).
MAX_PEER_LABELS = 200
#: The label of every other destination together (see NodeCollector._federation).
OTHER_PEERS = "(other)"


class NodeMetrics:
    """One node's metrics: plain counters the request path updates (the event loop is one
    thread: no locks, one dict lookup and a bisect per request, about a fifth of what
    prometheus-client's locked Counter and Histogram cost), and a collector that turns them,
    and the node's state, into metric families when scraped."""

    def __init__(self, state: Any):
        self.state = state
        self.started = time.time()
        self.registry = CollectorRegistry(auto_describe=False)
        #: (route, method, status) -> requests answered.
        self.requests: dict[tuple[str, str, int], int] = {}
        #: route -> [count per latency bucket (the last: above every bound), sum of seconds].
        self.latency: dict[str, list] = {}
        #: What the last scrape read from the store (outbox per peer, peers).
        self._snapshot: tuple[list, list, int] = ([], [], 0)
        #: The metrics listener's addresses while it serves (``rxfed node status``).
        self.listening: list = []
        self.registry.register(_NodeCollector(self))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        # A client names any method it likes: keys stay bounded (and so does memory).
        key = (route, method if method in _METHODS else "other", status)
        try:
            self.requests[key] += 1
        except KeyError:
            self.requests[key] = 1
        timed = self.latency.get(route)
        if timed is None:
            timed = self.latency[route] = [[0] * (len(LATENCY_BUCKETS) + 1), 0.0]
        timed[0][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        timed[1] += seconds

    async def refresh(self) -> None:
        """Read what lives in the store (outbox depth, peers' breakers) before a scrape."""
        store = self.state.store
        self._snapshot = (await store.outbox_summary(), await store.peers(), self.state.now())

    async def render(self) -> bytes:
        await self.refresh()
        return generate_latest(self.registry)


def _histogram(name: str, doc: str, bounds: tuple, counts: list[int], total: float, labels: dict | None = None,
               family: HistogramMetricFamily | None = None) -> HistogramMetricFamily:
    """Per-bucket counts (the last: above every bound) as a Prometheus histogram's
    cumulative buckets."""
    cumulative, buckets = 0, []
    for bound, count in zip((*(repr(float(b)) for b in bounds), "+Inf"), counts):
        cumulative += count
        buckets.append((bound, cumulative))
    if family is None:
        family = HistogramMetricFamily(name, doc, labels=list(labels) if labels else None)
    family.add_metric(list(labels.values()) if labels else [], buckets, total)
    return family


class _NodeCollector:
    """Read at each scrape: the store's commits, the outbox and breakers (as the last
    refresh read them), plugin health, rate-limit refusals, accounts suspended."""

    def __init__(self, metrics: NodeMetrics):
        self.metrics = metrics

    def collect(self):
        state = self.metrics.state
        info = GaugeMetricFamily("rxfed_node_info", "This node's software", labels=["version"])
        info.add_metric([rxfed.__version__], 1)
        yield info
        yield GaugeMetricFamily("rxfed_node_start_time_seconds", "When the node started (Unix time)",
                                value=self.metrics.started)
        requests = CounterMetricFamily("rxfed_http_requests", "HTTP requests answered, by route pattern, method "
                                       "and status", labels=["route", "method", "status"])
        for (route, method, status), n in list(self.metrics.requests.items()):
            requests.add_metric([route, method, str(status)], n)
        yield requests
        latency = HistogramMetricFamily("rxfed_http_request_duration_seconds", "Time from a request's handler "
                                        "start to its reply, by route pattern", labels=["route"])
        for route, (counts, total) in list(self.metrics.latency.items()):
            _histogram("", "", LATENCY_BUCKETS, counts, total, {"route": route}, latency)
        yield latency
        yield from self._store(state.store)
        yield from self._federation(*self.metrics._snapshot)
        refused = CounterMetricFamily("rxfed_rate_limited", "Requests refused by a rate limit (429)",
                                      labels=["limit"])
        for name, limiter in (("signed", state.limiter), ("anonymous", state.anonymous)):
            refused.add_metric([name], limiter.refused)
        yield refused
        yield GaugeMetricFamily("rxfed_accounts_suspended", "Accounts the operator suspended",
                                value=len(state.suspended))
        yield from self._plugins(state.plugins.status())

    @staticmethod
    def _store(store):
        status = getattr(store, "commit_status", None)
        if status is None:
            return
        s = status()
        if s.get("backend") == "postgresql":
            yield GaugeMetricFamily("rxfed_store_connections", "The PostgreSQL pool's open connections",
                                    value=s["connections"])
            yield CounterMetricFamily("rxfed_store_retries", "PostgreSQL transactions run again after a collision "
                                      "with a concurrent writer", value=s["retries"])
            return
        yield GaugeMetricFamily("rxfed_store_commit_inline", "1 when the last store batch ran inline (statements "
                                "on the event loop, COMMIT on the committer thread), 0 when on the writer thread",
                                value=1 if s["mode"] == "event loop" else 0)
        batches = CounterMetricFamily("rxfed_store_batches", "Store batches committed, by where their statements "
                                      "ran", labels=["where"])
        batches.add_metric(["event_loop"], s["inline_batches"])
        batches.add_metric(["writer_thread"], s["thread_batches"])
        yield batches
        yield CounterMetricFamily("rxfed_store_mode_switches", "Times a store batch ran elsewhere than the one "
                                  "before it (event loop or writer thread)", value=s["switches"])
        histograms = getattr(store, "commit_histograms", None)
        if histograms is None:
            return
        h = histograms()
        for name, doc, key in (("rxfed_store_commit_seconds", "Store COMMIT times", "commit_seconds"),
                               ("rxfed_store_batch_operations", "Operations per committed store batch",
                                "batch_operations")):
            yield _histogram(name, doc, *h[key])

    @staticmethod
    def _federation(summary, peers, now):
        # A patient names the hosts of the communities it joins and of the nodes it grants to,
        # so the outbox and the peer table hold destinations a client chose: only a peer the
        # operator configured or one this node holds keys for (it answered, or contacted us)
        # is a label of its own, at most MAX_PEER_LABELS of them; the rest count together as
        # OTHER_PEERS, so no client can grow the series a scrape returns.
        configured = sorted(p.node_id for p in peers if p.policy != "known")
        keyed = sorted(p.node_id for p in peers if p.policy == "known" and p.trusted_keys is not None)
        named = set((configured + keyed)[:MAX_PEER_LABELS])

        def label(node_id: str) -> str:
            return node_id if node_id in named else OTHER_PEERS

        pending = GaugeMetricFamily("rxfed_outbox_queued_events", "Events queued for a peer, not yet sent",
                                    labels=["peer"])
        in_flight = GaugeMetricFamily("rxfed_outbox_in_flight_events", "Events sent to a peer, not yet acknowledged",
                                      labels=["peer"])
        dead = GaugeMetricFamily("rxfed_outbox_dead_letters", "Events given up on, by peer (rxfed node outbox)",
                                 labels=["peer"])
        oldest = GaugeMetricFamily("rxfed_outbox_oldest_age_seconds", "Age of the oldest event queued for a peer",
                                   labels=["peer"])
        by_peer: dict[str, list] = {}
        for s in summary:
            row = by_peer.setdefault(label(s.destination), [0, 0, 0, None])
            row[0] += s.pending
            row[1] += s.in_flight
            row[2] += s.dead
            if s.oldest is not None:
                row[3] = s.oldest if row[3] is None else min(row[3], s.oldest)
        for peer, (n_pending, n_in_flight, n_dead, first) in by_peer.items():
            pending.add_metric([peer], n_pending)
            in_flight.add_metric([peer], n_in_flight)
            dead.add_metric([peer], n_dead)
            if first is not None:
                oldest.add_metric([peer], max(0, now - first))
        yield from (pending, in_flight, dead, oldest)
        yield GaugeMetricFamily("rxfed_dead_letters", "Dead letters held, all peers", value=sum(s.dead for s in summary))
        breaker = GaugeMetricFamily("rxfed_peer_breaker_open", "1 while deliveries to a peer wait out its circuit "
                                    f"breaker ({OTHER_PEERS}: how many of those peers)", labels=["peer"])
        failures = GaugeMetricFamily("rxfed_peer_consecutive_failures", "Failed deliveries to a peer in a row "
                                     f"({OTHER_PEERS}: their sum)", labels=["peer"])
        by_peer = {}
        for p in peers:
            row = by_peer.setdefault(label(p.node_id), [0, 0])
            row[0] += 1 if p.breaker_until and p.breaker_until > now else 0
            row[1] += p.failures
        for peer, (n_open, n_failures) in by_peer.items():
            breaker.add_metric([peer], n_open)
            failures.add_metric([peer], n_failures)
        yield from (breaker, failures)

    @staticmethod
    def _plugins(statuses):
        calls = CounterMetricFamily("rxfed_plugin_calls", "Hook calls made to a plugin", labels=["plugin"])
        failed = CounterMetricFamily("rxfed_plugin_failures", "Hook calls that raised or timed out", labels=["plugin"])
        refused = CounterMetricFamily("rxfed_plugin_refused", "Hook calls not made: the plugin was busy",
                                      labels=["plugin"])
        enabled = GaugeMetricFamily("rxfed_plugin_enabled", "1 while a plugin is enabled, 0 once disabled (by "
                                    "configuration or after failing in a row)", labels=["plugin"])
        for s in statuses:
            calls.add_metric([s.name], s.calls)
            failed.add_metric([s.name], s.total_failures)
            refused.add_metric([s.name], s.refused)
            enabled.add_metric([s.name], 1 if s.enabled else 0)
        yield from (calls, failed, refused, enabled)


METRICS = web.AppKey("metrics", NodeMetrics)


async def serve_metrics(request: web.Request) -> web.Response:
    body = await request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def metrics_app(metrics: NodeMetrics) -> web.Application:
    """The metrics listener's application: ``GET /metrics`` and nothing else."""
    app = web.Application()
    app[METRICS] = metrics
    app.router.add_get("/metrics", serve_metrics)
    return app


def metrics_ctx(metrics: NodeMetrics, listen: str):
    """A cleanup context for the node's application: serve :func:`metrics_app` on
    ``listen`` (``host:port``) while the node runs."""

    async def ctx(_app: web.Application):
        from rxfed.node.config import ConfigFileError, split_listen

        host, port = split_listen(listen)
        runner = web.AppRunner(metrics_app(metrics), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigFileError([f"[metrics] listen: cannot listen on {listen}: {exc.strerror or exc}"]) from None
        metrics.listening = runner.addresses
        yield
        await runner.cleanup()

    return ctx
