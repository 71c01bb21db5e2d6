"""A virtual service: its real servers, scheduler, persistence, fallback and counters.

The daemon owns one :class:`VirtualService` per configured service; the health checker
tells it about health and agent weights, the data plane asks it where each new connection
goes (userspace) or renders :meth:`VirtualService.eligible` into the kernel (nftables).
Pure: no sockets, no tasks, no I/O; time only from the ``clock`` it is given.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection

from farmnode.errors import SchedulerError
from farmnode.rtt import RttTable
from farmnode.spec import RealSpec, ServiceSpec
from farmnode.switch.persistence import PersistenceTable
from farmnode.switch.schedulers import SCHEDULERS, RealServer, Scheduler, make_scheduler


class VirtualService:
    """One virtual service's scheduling state.

    **Start.** Real servers begin ``up`` when ``spec.check.kind`` is ``"none"``; otherwise
    they begin *down* until the health checker reports them (the daemon probes every server
    once before it opens the listener or installs the rules, as the dispatcher does). So a
    service never sends a connection to a server nobody has looked at. The fallback server
    is never health-checked and is always up.

    **Choosing** (:meth:`choose`): a live persistence template wins while its server is up
    (a quiescent server keeps its persistent clients until their templates expire, unless
    ``spec.expire_quiescent``); then the scheduler; then the fallback, only while *no* real
    server is available (every one down or quiescent). The fallback is never bound to a
    persistence template, so a client goes back to the real servers as soon as one is
    available again.

    **Failure.** A failed server (``set_health(key, False)``) leaves scheduling. With
    ``spec.quiescent`` it is reported with effective weight 0 instead (IPVS's quiesced
    server); either way no new connection goes to it and established ones are the data
    plane's business (this object never drops anything).

    **Reload** (:meth:`reload`): servers that stay keep their :class:`RealServer` object
    (counters, active connections, health, agent weight); new servers start as at start;
    removed servers leave scheduling and lose their templates, while their established
    connections go on (the plane holds references to the old objects).

    **Learned latency.** ``rtt`` is the node's :class:`~farmnode.rtt.RttTable` (one for all
    services), or ``None``: the userspace plane tells :meth:`observe_rtt` the kernel's RTT
    of each client connection as it ends, and the load reporter sends the table on.
    """

    __slots__ = (
        "_clock",
        "_persistence",
        "_rng",
        "_scheduler",
        "fallback",
        "rtt",
        "servers",
        "spec",
    )

    def __init__(
        self,
        spec: ServiceSpec,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        rtt: RttTable | None = None,
    ) -> None:
        self.spec = spec
        self.rtt = rtt
        self._clock = clock
        self._rng = rng
        self.servers: dict[str, RealServer] = {}
        self.fallback: RealServer | None = None
        self._persistence: PersistenceTable | None = None
        self._scheduler = self._make_scheduler(spec.scheduler)
        self._apply(spec)

    # -- the hot path ---------------------------------------------------------------------

    def choose(self, client: str, exclude: Collection[str] = ()) -> RealServer | None:
        """The server for a new connection from ``client``, or ``None`` when there is none.

        ``exclude`` holds keys of servers that just failed to connect (the userspace plane
        retries with them excluded). Binds or refreshes the client's persistence template
        to the chosen real server. Does not count the connection: call :meth:`connected`.
        """
        table = self._persistence
        if table is None:
            server = self._scheduler.pick_excluding(client, exclude)
        else:
            network = table.network(client)
            server = self._persistent(table, network, exclude)
            if server is not None:
                return server
            server = self._scheduler.pick_excluding(client, exclude)
            if server is not None:
                table.bind_network(network, server.key)
        if server is not None:
            return server
        fallback = self.fallback
        if self._scheduler.available or fallback is None or fallback.key in exclude:
            return None
        return fallback

    def _persistent(
        self, table: PersistenceTable, network: str, exclude: Collection[str]
    ) -> RealServer | None:
        key = table.lookup_network(network)
        if key is None or key in exclude:
            return None
        server = self.servers.get(key)
        if server is None or not server.up:
            return None
        if server.effective_weight <= 0 and self.spec.expire_quiescent:
            return None
        table.bind_network(network, key)
        return server

    def connected(self, server: RealServer, client: str | None = None) -> None:
        """A connection to ``server`` opened (the fallback's too).

        Pass ``client`` to keep its persistence template alive while the connection is open
        (IPVS semantics); then pass it to :meth:`released` as well.
        """
        server.active += 1
        server.total += 1
        if client is not None and self._persistence is not None:
            self._persistence.hold(client)

    def released(self, server: RealServer, client: str | None = None) -> None:
        """A connection to ``server`` closed; ``client`` as given to :meth:`connected`."""
        if server.active > 0:
            server.active -= 1
        if client is not None and self._persistence is not None:
            self._persistence.unhold(client)

    def observe_rtt(self, client: str, seconds: float | None) -> None:
        """A connection of ``client`` ended with the kernel's smoothed RTT ``seconds``
        (``None``: none was read); kept in :attr:`rtt`, the node's table, when there is one."""
        if seconds is not None and self.rtt is not None:
            self.rtt.add(client, seconds)

    @staticmethod
    def add_bytes(server: RealServer, inbound: int, outbound: int) -> None:
        """Count bytes: ``inbound`` from the client to the server, ``outbound`` back."""
        server.bytes_in += inbound
        server.bytes_out += outbound

    # -- what the health checker reports ----------------------------------------------------

    def set_health(self, key: str, up: bool) -> bool:
        """Mark a real server up or down; ``True`` when that changed something.

        An unknown key (a server removed by a reload while its probe ran) is ignored.
        """
        server = self.servers.get(key)
        if server is None or server.up == up:
            return False
        server.up = up
        self._scheduler.update(tuple(self.servers.values()))
        return True

    def set_agent_weight(self, key: str, weight: int | None) -> bool:
        """Set the weight an agent reported (0 = drain), or ``None`` to use the configured one.

        Returns ``True`` when that changed something; an unknown key is ignored. Raises
        :class:`SchedulerError` for a negative weight. The agent's weight overrides the
        configured weight, even a configured 0.
        """
        if weight is not None and weight < 0:
            raise SchedulerError(f"{self.spec.name}: agent weight {weight} for {key} is < 0")
        server = self.servers.get(key)
        if server is None or server.agent_weight == weight:
            return False
        server.agent_weight = weight
        self._changed_weights()
        return True

    # -- what the data plane and the admin see --------------------------------------------

    def eligible(self) -> list[RealServer]:
        """Where new connections may go now: the available real servers (configuration
        order), else ``[fallback]`` when there is one, else ``[]``."""
        available = self._scheduler.available
        if available:
            return list(available)
        return [self.fallback] if self.fallback is not None else []

    @property
    def scheduler(self) -> Scheduler:
        """The current scheduler (replaced by :meth:`reload` when the name changes)."""
        return self._scheduler

    @property
    def persistence(self) -> PersistenceTable | None:
        """The persistence templates, or ``None`` when the service has no persistence."""
        return self._persistence

    def status(self) -> dict[str, object]:
        """A JSON-able snapshot for the admin API and ``farmnode status``."""
        spec, table = self.spec, self._persistence
        if table is not None:
            table.expire()
        persistence = None
        if spec.persistence is not None:
            p = spec.persistence
            persistence = {"timeout": p.timeout, "netmask": p.netmask, "netmask6": p.netmask6}
        return {
            "name": spec.name,
            "protocol": spec.protocol,
            "listen": spec.listen,
            "scheduler": spec.scheduler,
            "dataplane": spec.dataplane,
            "persistence": persistence,
            "real": [_real_status(s) for s in self.servers.values()],
            "fallback": self._fallback_status(),
            "templates": len(table) if table is not None else 0,
        }

    def _fallback_status(self) -> dict[str, object] | None:
        fallback = self.fallback
        if fallback is None:
            return None
        return {
            "address": fallback.key,
            "in_use": not self._scheduler.available,
            "active": fallback.active,
            "total": fallback.total,
        }

    # -- configuration ----------------------------------------------------------------------

    def reload(self, spec: ServiceSpec) -> None:
        """Apply a new configuration of this service (SIGHUP), keeping what stays.

        Raises :class:`SchedulerError` (and changes nothing) for an unknown scheduler name.
        """
        scheduler = self._scheduler
        if spec.scheduler != self.spec.scheduler:
            scheduler = self._make_scheduler(spec.scheduler)
        removed = set(self.servers) - {r.key for r in spec.real}
        self.spec = spec
        self._scheduler = scheduler
        self._apply(spec)
        if self._persistence is not None:
            for key in removed:
                self._persistence.forget_server(key)

    def _apply(self, spec: ServiceSpec) -> None:
        """(Re)build servers, fallback and persistence from ``spec``; update the scheduler."""
        self.servers = {r.key: self._real(r, spec) for r in spec.real}
        self.fallback = self._fallback(spec.fallback)
        self._persistence = self._table(spec)
        self._changed_weights()

    def _real(self, real: RealSpec, spec: ServiceSpec) -> RealServer:
        always_up = spec.check.kind == "none"
        server = self.servers.get(real.key)
        if server is None:
            server = RealServer(real.host, real.port, real.weight, up=always_up)
        server.weight = real.weight
        server.quiesce_on_failure = spec.quiescent
        if always_up:
            server.up = True
        if spec.check.kind != "agent":
            server.agent_weight = None
        return server

    def _fallback(self, real: RealSpec | None) -> RealServer | None:
        if real is None:
            return None
        old = self.fallback
        if old is not None and old.key == real.key:
            old.weight = real.weight
            return old
        return RealServer(real.host, real.port, real.weight)

    def _table(self, spec: ServiceSpec) -> PersistenceTable | None:
        p, old = spec.persistence, self._persistence
        if p is None:
            return None
        if old is not None and (old.netmask, old.netmask6) == (p.netmask, p.netmask6):
            old.timeout = p.timeout
            return old
        return PersistenceTable(p.timeout, p.netmask, p.netmask6, clock=self._clock)

    def _make_scheduler(self, name: str) -> Scheduler:
        cls = SCHEDULERS.get(name)
        if cls is not None and "rng" in cls.params and self._rng is not None:
            return make_scheduler(name, rng=self._rng)
        return make_scheduler(name)

    def _changed_weights(self) -> None:
        self._scheduler.update(tuple(self.servers.values()))
        table = self._persistence
        if table is not None and self.spec.expire_quiescent:
            for server in self.servers.values():
                if server.up and server.effective_weight <= 0:
                    table.forget_server(server.key)


def _real_status(server: RealServer) -> dict[str, object]:
    return {
        "address": server.key,
        "state": server.state,
        "weight": server.weight,
        "agent_weight": server.agent_weight,
        "effective_weight": server.effective_weight,
        "active": server.active,
        "inactive": server.inactive,
        "total": server.total,
        "bytes_in": server.bytes_in,
        "bytes_out": server.bytes_out,
    }
