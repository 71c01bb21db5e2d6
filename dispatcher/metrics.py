"""``GET /metrics``: the dispatcher's state in the Prometheus text format.

Nothing is counted for metrics on the hot path: :class:`DispatcherCollector` reads, at
scrape time, what the daemon keeps anyway (the snapshot, the prober's counters, the
redirect totals the workers report, the worker slots) and renders it with
``prometheus-client``. Names follow HAProxy's exporter under a ``webfarm_`` prefix
(``docs/metrics.md`` lists them all). :class:`MetricsRoute` is plain ASGI middleware that
answers the path (GET and HEAD) and passes every other request on; farmnode's status
listener uses it too (:mod:`farmnode.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from dispatcher.access import AdminToken, authenticate, bearer, decide
from dispatcher.asgi import Receive, Scope, Send
from dispatcher.counts import REASONS
from dispatcher.dns.tally import TCP_CLOSINGS, query_labels
from dispatcher.vitals import send_json

if TYPE_CHECKING:
    from dispatcher.config import DispatcherSettings
    from dispatcher.farm import Farm

METRICS_PATH: Final = "/metrics"
#: The text format every Prometheus reads (the names here need none of 1.0.0's escaping).
CONTENT_TYPE: Final = b"text/plain; version=0.0.4; charset=utf-8"
#: ``webfarm_site_status``'s states, one-hot; ``drained`` wins over the health state.
SITE_STATES: Final = ("up", "down", "unknown", "drained")
SITE: Final = ("site", "pool")
#: ``webfarm_dns_unanswered_total``'s causes and the DNS counters they are.
UNANSWERED: Final = {
    "not_a_query": "silent",
    "udp_backlog": "udp_backlog",
    "udp_send_failed": "udp_send_failed",
}


def exposition(*collectors: Collector) -> Callable[[], bytes]:
    """A renderer of ``collectors`` and this process's ``process_*`` metrics."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    for collector in collectors:
        registry.register(collector)
    return lambda: generate_latest(registry)


def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"webfarm_{name}", doc, labels=list(labels))


def counter(name: str, doc: str, labels: Sequence[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(f"webfarm_{name}", doc, labels=list(labels))


class WorkerCounts(Protocol):
    """What the metrics read of a worker (:class:`dispatcher.control.WorkerView`)."""

    @property
    def index(self) -> int: ...
    @property
    def ready(self) -> bool: ...
    @property
    def restarts(self) -> int: ...
    @property
    def connections(self) -> int: ...
    @property
    def refused(self) -> int: ...
    @property
    def shed(self) -> int: ...
    @property
    def dns_tcp(self) -> int: ...


@dataclass(frozen=True, slots=True)
class WorkerSample:
    """A :class:`WorkerCounts` for the public edge running in the control process."""

    index: int
    ready: bool
    restarts: int
    connections: int
    refused: int
    shed: int
    dns_tcp: int = 0


class DispatcherCollector(Collector):
    """The farm's metrics; ``workers()`` lists the public side's workers (the worker
    processes, or the in-process edge as worker 0)."""

    def __init__(self, farm: Farm, workers: Callable[[], Iterable[WorkerCounts]]) -> None:
        self.farm = farm
        self.workers = workers

    def collect(self) -> Iterator[Metric]:
        yield from self._sites()
        yield from self._workers()
        yield from self._farm()
        if self.farm.config.dns is not None:
            yield from self._dns()

    def _sites(self) -> Iterator[Metric]:
        farm, prober = self.farm, self.farm.prober
        now = prober.now()
        status = gauge("site_status", "The site's state, one-hot.", [*SITE, "state"])
        check_up = gauge("site_check_up", "1 if the health check finds the site up.", SITE)
        failures = counter("site_check_failures", "Failed health checks counted.", SITE)
        up_down = counter("site_check_up_down", "Transitions from up to down.", SITE)
        duration = gauge("site_check_duration_seconds", "The last check's duration.", SITE)
        downtime = counter("site_downtime_seconds", "Time spent down.", SITE)
        weight = gauge("site_weight", "The site's configured weight.", SITE)
        drained = gauge("site_drained", "1 if the site is drained.", SITE)
        eligible = gauge("site_eligible", "1 if the site takes new clients.", SITE)
        load = gauge("site_load", "The load the site last reported.", SITE)
        conns = gauge("site_reported_connections", "Connections the site reported.", SITE)
        age = gauge("site_load_age_seconds", "Age of the site's last load report.", SITE)
        redirects = counter(  # (every reason of every site, zero or not: docs/metrics.md)
            "redirects",
            "Clients sent to the site, summed over workers, by why it was chosen: placed "
            "(placement), affinity (the client's affinity stamp), rules (a rule's ${site:POOL}).",
            [*SITE, "reason"],
        )
        for name, site in farm.snapshot.sites.items():
            labels = [name, site.spec.pool]
            health = prober.health(name)
            state = "drained" if site.spec.drained else health.state
            for one in SITE_STATES:
                status.add_metric([*labels, one], float(one == state))
            check_up.add_metric(labels, float(health.state == "up"))
            tally = prober.tally(name)
            if tally is not None:
                failures.add_metric(labels, tally.failures)
                up_down.add_metric(labels, tally.up_down)
                downtime.add_metric(labels, tally.downtime(now))
            if health.last is not None:
                duration.add_metric(labels, health.last.duration)
            weight.add_metric(labels, site.spec.weight)
            drained.add_metric(labels, float(site.spec.drained))
            eligible.add_metric(labels, float(site.eligible))
            if site.load is not None:
                report = site.load.report
                load.add_metric(labels, report.load)
                if report.connections is not None:
                    conns.add_metric(labels, report.connections)
                age.add_metric(labels, max(0.0, now - site.load.received))
            for reason, count in zip(REASONS, farm.redirects.split(name), strict=True):
                redirects.add_metric([*labels, reason], count)
        yield from (status, check_up, failures, up_down, duration, downtime, weight, drained)
        yield from (eligible, load, conns, age, redirects)

    def _workers(self) -> Iterator[Metric]:
        labels = ["worker"]
        up = gauge("worker_up", "1 if the worker serves.", labels)
        restarts = counter("worker_restarts", "Times the worker was replaced.", labels)
        conns = gauge("worker_connections", "Public connections open.", labels)
        refused = counter("worker_limit_hits", "Connections refused at max_connections.", labels)
        shed = counter("worker_shed_connections", "Idle connections closed for room.", labels)
        dns_tcp = gauge("worker_dns_tcp_connections", "DNS TCP connections open.", labels)
        for worker in self.workers():
            index = [str(worker.index)]
            up.add_metric(index, float(worker.ready))
            restarts.add_metric(index, worker.restarts)
            conns.add_metric(index, worker.connections)
            refused.add_metric(index, worker.refused)
            shed.add_metric(index, worker.shed)
            dns_tcp.add_metric(index, worker.dns_tcp)
        yield from (up, restarts, conns, refused, shed)
        if self.farm.config.dns is not None:
            yield dns_tcp

    def _dns(self) -> Iterator[Metric]:
        """The DNS front's counters, summed over the workers (:mod:`dispatcher.dns.tally`)."""
        totals = self.farm.dns.totals()
        counts = totals.counts
        requests = counter("dns_requests", "DNS messages received.", ["transport"])
        for transport in ("udp", "tcp"):
            requests.add_metric([transport], counts.get(transport, 0))
        queries = counter(
            "dns_queries", "Queries answered, by question type and rcode.", ["qtype", "rcode"]
        )
        for key, count in sorted(totals.queries.items()):
            queries.add_metric(list(query_labels(key)), count)
        answers = counter("dns_answers", "Address answers that placed the site first.", SITE)
        for name, site in self.farm.snapshot.sites.items():
            answers.add_metric([name, site.spec.pool], totals.answers.get(name, 0))
        fallbacks = counter(
            "dns_fallback_answers", "Answers from all_down: no site placed.", ["pool", "how"]
        )
        for key, count in sorted(totals.fallbacks.items()):
            pool, _, how = key.rpartition("/")
            fallbacks.add_metric([pool, how], count)
        yield from (requests, queries, answers, fallbacks)
        yield from _dns_counts(counts)

    def _farm(self) -> Iterator[Metric]:
        farm = self.farm
        now = farm.prober.now()
        late = counter("probe_late_results", "Probe results not counted: the prober was late.")
        late.add_metric([], farm.prober.late_results)
        revision = gauge("registry_revision", "The registry revision the snapshot holds.")
        revision.add_metric([], farm.snapshot.revision)
        yield from (late, revision)
        for name, at, doc in (
            ("registry_refresh_age_seconds", farm.refreshed_at, "Since the registry was read."),
            (
                "database_answer_age_seconds",
                farm.database_answered,
                "Since the database last answered.",
            ),
        ):
            if at is not None:
                metric = gauge(name, doc)
                metric.add_metric([], max(0.0, now - at))
                yield metric


def _dns_counts(counts: Mapping[str, int]) -> Iterator[Metric]:
    """The DNS front's flat counters (:class:`~dispatcher.dns.service.DnsService`)."""
    rrl = counter("dns_rrl_responses", "Responses rate limiting dropped or slipped.", ["action"])
    for action in ("dropped", "slipped"):
        rrl.add_metric([action], counts.get(f"rrl_{action}", 0))
    truncated = counter("dns_truncated_answers", "Answers sent truncated (TC set).")
    truncated.add_metric([], counts.get("truncated", 0))
    unanswered = counter("dns_unanswered", "Messages not answered.", ["cause"])
    for cause, key in UNANSWERED.items():
        unanswered.add_metric([cause], counts.get(key, 0))
    tcp = counter("dns_tcp_connections", "DNS TCP connections accepted.")
    tcp.add_metric([], counts.get("tcp_connections", 0))
    closed = counter("dns_tcp_closed", "DNS TCP connections closed by the server.", ["cause"])
    for key, cause in TCP_CLOSINGS.items():
        closed.add_metric([cause], counts.get(key, 0))
    yield from (rrl, truncated, unanswered, tcp, closed)


# --- serving ---------------------------------------------------------------------------


Gate = Callable[[Scope], tuple[int, str, str] | None]
"""Who may scrape: ``None`` to answer, else (status, error code, message) to refuse."""


def open_gate(scope: Scope) -> None:
    return None


def token_gate(settings: Callable[[], DispatcherSettings]) -> Gate:
    """Public when ``metrics_public``, else a bearer token whose role may ``read``."""

    def gate(scope: Scope) -> tuple[int, str, str] | None:
        current = settings()
        if current.metrics_public:
            return None
        given = bearer(scope["headers"])
        tokens: list[tuple[bytes, AdminToken]] = [
            (t.token.encode(), t) for t in current.admin_tokens
        ]
        token = None if given is None else authenticate(tokens, given)
        if token is None:
            return 401, "unauthorized", "a valid bearer token is required"
        decision = decide(token, "read")
        return None if decision.allowed else (403, "forbidden", decision.reason)

    return gate


class MetricsRoute:
    """Answers ``GET``/``HEAD /metrics`` with ``render()`` when ``gate`` lets the request
    through; every other path goes to ``app``. Query strings and ``Accept`` are ignored
    (always the text format); another method is a JSON 405."""

    def __init__(self, app: Any, render: Callable[[], bytes], gate: Gate = open_gate) -> None:
        self.app = app
        self.render = render
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != METRICS_PATH:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            message = f"{method} {METRICS_PATH}: only GET and HEAD are allowed"
            await _error(send, 405, "method_not_allowed", message, [(b"allow", b"GET, HEAD")])
            return
        refused = self.gate(scope)
        if refused is not None:
            status, code, message = refused
            extra = [(b"www-authenticate", b'Bearer realm="webfarm"')] if status == 401 else []
            await _error(send, status, code, message, extra)
            return
        body = self.render()
        headers = [
            (b"content-type", CONTENT_TYPE),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


async def _error(
    send: Send, status: int, code: str, message: str, extra: list[tuple[bytes, bytes]]
) -> None:
    body = {"error": {"code": code, "message": message, "field": None}}
    await send_json(send, status, body, head=False, extra=extra)


__all__ = [
    "CONTENT_TYPE",
    "METRICS_PATH",
    "SITE_STATES",
    "DispatcherCollector",
    "MetricsRoute",
    "WorkerCounts",
    "WorkerSample",
    "counter",
    "exposition",
    "gauge",
    "open_gate",
    "token_gate",
]
