"""``GET /metrics`` on farmnode's status listener: the node in the Prometheus text format.

:class:`NodeCollector` renders, at scrape time, the status document the node builds anyway
(:meth:`farmnode.daemon.Node.status`, see :mod:`farmnode.status`): virtual services as
HAProxy's backends, real servers as its servers (status, connections, sessions, bytes,
check results), the heartbeat (members, last heard per transport, messages by outcome,
each group's owner), and the truth tier's PostgreSQL in Patroni's names
(``webfarm_postgres_primary`` for ``patroni_primary``...: :func:`postgres`, from what each
``postgresql`` agent last saw, :mod:`farmnode.pg.view`). Nothing is counted for it on the
data path. ``docs/metrics.md`` lists
every name. The route itself is :class:`dispatcher.metrics.MetricsRoute` (no token: the
status listener has none, and ``/status`` shows more).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dispatcher.metrics import counter, gauge

#: ``webfarm_server_status``'s states (:attr:`RealServer.state`), one-hot.
SERVER_STATES: Final = ("up", "quiescent", "down")
#: ``webfarm_server_check_status``'s states (the prober's), one-hot.
CHECK_STATES: Final = ("up", "down", "unknown")
SERVICE: Final = ("service",)
SERVER: Final = ("service", "server")
RESOURCE: Final = ("group", "resource")


class NodeCollector(Collector):
    """The node's metrics from ``document()`` (the status document)."""

    def __init__(self, document: Callable[[], Mapping[str, Any]]) -> None:
        self.document = document

    def collect(self) -> Iterator[Metric]:
        doc = self.document()
        uptime = gauge("node_uptime_seconds", "Seconds since the node started.")
        uptime.add_metric([], float(doc.get("uptime") or 0.0))
        reloads = counter("node_reloads", "Configuration reloads applied.")
        reloads.add_metric([], int(doc.get("reloads") or 0))
        yield from (uptime, reloads)
        yield from services(doc.get("services") or [])
        cluster = doc.get("cluster")
        if cluster:
            yield from heartbeat(cluster)


def services(docs: list[Mapping[str, Any]]) -> Iterator[Metric]:
    up = gauge("service_up", "1 if the virtual service runs here.", SERVICE)
    deferred = gauge("service_deferred", "1 if a cluster group opens it elsewhere.", SERVICE)
    fallback = gauge("service_fallback_in_use", "1 if no real server is available.", SERVICE)
    current = gauge("service_current_connections", "Connections open.", SERVICE)
    sessions = counter("service_sessions", "Connections taken since start.", SERVICE)
    bytes_in = counter("service_bytes_in", "Bytes from clients.", SERVICE)
    bytes_out = counter("service_bytes_out", "Bytes to clients.", SERVICE)
    server = ServerFamilies()
    for doc in docs:
        name = [str(doc["name"])]
        reals = doc.get("real") or []
        up.add_metric(name, float(bool(doc.get("running")) and not doc.get("deferred")))
        deferred.add_metric(name, float(bool(doc.get("deferred"))))
        spare = doc.get("fallback") or {}
        fallback.add_metric(name, float(bool(spare.get("in_use"))))
        current.add_metric(name, _sum(reals, "active") + int(spare.get("active", 0)))
        sessions.add_metric(name, _sum(reals, "total") + int(spare.get("total", 0)))
        bytes_in.add_metric(name, _sum(reals, "bytes_in"))
        bytes_out.add_metric(name, _sum(reals, "bytes_out"))
        for real in reals:
            server.add(name[0], real)
    yield from (up, deferred, fallback, current, sessions, bytes_in, bytes_out)
    yield from server.families()


class ServerFamilies:
    """A real server's metrics (HAProxy's ``haproxy_server_*``)."""

    def __init__(self) -> None:
        self.status = gauge(
            "server_status", "The real server's state, one-hot.", [*SERVER, "state"]
        )
        self.weight = gauge("server_weight", "The configured weight.", SERVER)
        self.effective = gauge("server_effective_weight", "The weight scheduling uses.", SERVER)
        self.current = gauge("server_current_connections", "Connections open.", SERVER)
        self.inactive = gauge("server_inactive_connections", "Connections closing.", SERVER)
        self.sessions = counter("server_sessions", "Connections sent to it.", SERVER)
        self.bytes_in = counter("server_bytes_in", "Bytes from clients.", SERVER)
        self.bytes_out = counter("server_bytes_out", "Bytes to clients.", SERVER)
        self.check = gauge(
            "server_check_status", "The check's verdict, one-hot.", [*SERVER, "state"]
        )
        self.check_age = gauge("server_check_age_seconds", "Age of the last check.", SERVER)
        self.failures = counter("server_check_failures", "Failed checks counted.", SERVER)
        self.up_down = counter("server_check_up_down", "Transitions from up to down.", SERVER)
        self.downtime = counter("server_downtime_seconds", "Time spent down.", SERVER)

    def add(self, service: str, real: Mapping[str, Any]) -> None:
        labels = [service, str(real["address"])]
        for state in SERVER_STATES:
            self.status.add_metric([*labels, state], float(real.get("state") == state))
        for family, key in (
            (self.weight, "weight"),
            (self.effective, "effective_weight"),
            (self.current, "active"),
            (self.inactive, "inactive"),
            (self.sessions, "total"),
            (self.bytes_in, "bytes_in"),
            (self.bytes_out, "bytes_out"),
        ):
            family.add_metric(labels, float(real.get(key) or 0))
        check = real.get("check")
        if not check:
            return
        for state in CHECK_STATES:
            self.check.add_metric([*labels, state], float(check.get("health") == state))
        for family, key in (
            (self.check_age, "age"),
            (self.failures, "failures"),
            (self.up_down, "up_down"),
            (self.downtime, "downtime"),
        ):
            if check.get(key) is not None:
                family.add_metric(labels, float(check[key]))

    def families(self) -> tuple[Metric, ...]:
        return (
            self.status,
            self.weight,
            self.effective,
            self.current,
            self.inactive,
            self.sessions,
            self.bytes_in,
            self.bytes_out,
            self.check,
            self.check_age,
            self.failures,
            self.up_down,
            self.downtime,
        )


def heartbeat(cluster: Mapping[str, Any]) -> Iterator[Metric]:
    """Members, quorum, groups and the heartbeat's counters."""
    member = ["member"]
    alive = gauge("cluster_member_alive", "1 if the peer is heard (alive or late).", member)
    fresh = gauge("cluster_member_fresh", "1 if the peer's view is fresh.", member)
    heard = gauge(
        "cluster_member_last_heard_seconds", "Seconds since heard.", [*member, "transport"]
    )
    for name, peer in (cluster.get("members") or {}).items():
        alive.add_metric([name], float(bool(peer.get("alive"))))
        fresh.add_metric([name], float(bool(peer.get("fresh"))))
        for transport, ago in (peer.get("last_heard") or {}).items():
            heard.add_metric([name, transport], float(ago))
    quorum = cluster.get("quorum") or {}
    quorate = gauge("cluster_quorate", "1 if this node sees a quorum.")
    quorate.add_metric([], float(bool(quorum.get("quorate"))))
    voters = gauge("cluster_voters", "Voting members configured.")
    voters.add_metric([], float(quorum.get("voters") or 0))
    seen = gauge("cluster_voters_seen", "Voting members seen, this node included.")
    seen.add_metric([], float(quorum.get("seen") or 0))
    yield from (alive, fresh, heard, quorate, voters, seen)
    yield from groups(cluster.get("groups") or {}, str(cluster.get("node") or ""))
    yield from heartbeat_counters(cluster.get("counters") or {})
    yield from postgres(cluster.get("groups") or {})


def groups(docs: Mapping[str, Mapping[str, Any]], node: str) -> Iterator[Metric]:
    owner = gauge("cluster_group_owner", "1 for the node that owns the group.", ["group", "owner"])
    here = gauge("cluster_group_owned_here", "1 if this node runs the group.", ["group"])
    for name, group in docs.items():
        who = group.get("owner")
        if who:
            owner.add_metric([name, str(who)], 1.0)
        here.add_metric([name], float(who == node and group.get("local") == "running"))
    yield from (owner, here)


def heartbeat_counters(counters: Mapping[str, Any]) -> Iterator[Metric]:
    sent = counter("cluster_heartbeats_sent", "Heartbeats sent.")
    sent.add_metric([], int(counters.get("heartbeats_sent") or 0))
    errors = counter("cluster_heartbeat_encode_errors", "Heartbeats that could not be encoded.")
    errors.add_metric([], int(counters.get("encode_errors") or 0))
    received = counter(
        "cluster_messages_received", "Messages received, by outcome or drop cause.", ["outcome"]
    )
    for outcome, count in (counters.get("receiver") or {}).items():
        received.add_metric([outcome], int(count))
    restarts = counter("cluster_peer_restarts", "Peers seen restarting.", ["member"])
    for name, count in (counters.get("restarts") or {}).items():
        restarts.add_metric([name], int(count))
    transport = counter(
        "cluster_transport_events", "Transport events by kind.", ["transport", "event"]
    )
    for name, stats in (counters.get("transports") or {}).items():
        for event, count in stats.items():
            transport.add_metric([name, event], int(count))
    yield from (sent, errors, received, restarts, transport)


def postgres(docs: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    """Each ``postgresql`` resource of each group (labels ``group``, ``resource``) as
    Patroni's ``/metrics`` names it, under ``webfarm_postgres_``; positions in bytes from
    ``0/0``, 0 where Patroni says 0 (not that role, not running). Series of a value that is
    not known (a lag without a primary to measure against) are left out."""
    pg = PostgresFamilies()
    for group, doc in docs.items():
        for resource, seen in (doc.get("resources") or {}).items():
            if isinstance(seen, Mapping) and seen.get("agent") == "postgresql":
                pg.add([str(group), str(resource)], seen)
    return iter(pg.families())


class PostgresFamilies:
    """One ``postgresql`` resource's metrics (Patroni's ``patroni_*``, plus the lag)."""

    FLAGS: Final = (
        ("running", "running", "1 if PostgreSQL runs and answers SQL."),
        ("primary", "primary", "1 if this node holds the primary role and accepts writes."),
        ("replica", "replica", "1 if PostgreSQL runs as a standby."),
        ("streaming", "streaming", "1 if the standby's WAL receiver streams."),
        ("sync_standby", "sync_standby", "1 if the primary names this standby synchronous."),
    )
    POSITIONS: Final = (
        ("xlog_location", "location", "The primary's WAL flush position, 0 if not primary."),
        ("xlog_received_location", "received_location", "WAL received, 0 if not a replica."),
        ("xlog_replayed_location", "replayed_location", "WAL replayed, 0 if not a replica."),
    )

    def __init__(self) -> None:
        self.flags = [(gauge(f"postgres_{n}", h, RESOURCE), k) for n, k, h in self.FLAGS]
        self.positions = [(gauge(f"postgres_{n}", h, RESOURCE), k) for n, k, h in self.POSITIONS]
        self.timeline = gauge("postgres_timeline", "The timeline, 0 if not running.", RESOURCE)
        self.lag_bytes = gauge(
            "postgres_replication_lag_bytes", "Bytes behind the primary's position.", RESOURCE
        )
        self.lag_seconds = gauge(
            "postgres_replication_lag_seconds", "Seconds replay is behind.", RESOURCE
        )
        standby = [*RESOURCE, "standby"]
        self.standby_bytes = gauge(
            "postgres_standby_lag_bytes", "Bytes a standby has yet to replay.", standby
        )
        self.standby_seconds = gauge(
            "postgres_standby_lag_seconds", "A standby's replay lag.", standby
        )
        self.age = gauge(
            "postgres_observed_age_seconds", "Seconds since PostgreSQL was last asked.", RESOURCE
        )

    def add(self, labels: list[str], seen: Mapping[str, Any]) -> None:
        for family, key in self.flags:
            family.add_metric(labels, float(bool(seen.get(key))))
        xlog = seen.get("xlog") or {}
        for family, key in self.positions:
            family.add_metric(labels, float(xlog.get(key) or 0))
        self.timeline.add_metric(labels, float(seen.get("timeline") or 0))
        lag = seen.get("lag") or {}
        _known(self.lag_bytes, labels, lag.get("bytes"))
        _known(self.lag_seconds, labels, lag.get("seconds"))
        for standby in seen.get("standbys") or []:
            named = [*labels, str(standby.get("name"))]
            _known(self.standby_bytes, named, standby.get("lag_bytes"))
            _known(self.standby_seconds, named, standby.get("lag_seconds"))
        _known(self.age, labels, seen.get("age"))

    def families(self) -> list[Metric]:
        return [
            *(family for family, _ in self.flags),
            self.timeline,
            *(family for family, _ in self.positions),
            self.lag_bytes,
            self.lag_seconds,
            self.standby_bytes,
            self.standby_seconds,
            self.age,
        ]


def _known(family: GaugeMetricFamily, labels: list[str], value: object) -> None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        family.add_metric(labels, float(value))


def _sum(reals: list[Mapping[str, Any]], key: str) -> int:
    return sum(int(r.get(key) or 0) for r in reals)


__all__ = ["CHECK_STATES", "SERVER_STATES", "NodeCollector"]
