"""What a node is told to do: frozen, validated descriptions of its virtual services.

``farmnode.config`` builds these from ``node.toml``; the switch core, the data planes and
the daemon only ever read them. Validation happens when the config is parsed, so every
object here is already consistent (a scheduler name exists, ports are in range...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Protocol = Literal["tcp", "udp"]
PlaneName = Literal["userspace", "nftables"]
CheckKind = Literal["http", "tcp", "agent", "none"]
NatMode = Literal["stateful", "stateless"]
#: A PROXY protocol version (``send_proxy``: HAProxy's ``send-proxy`` and ``send-proxy-v2``).
ProxyVersion = Literal[1, 2]
#: Schedulers whose choice is a pure function of the packet (the client address): the only
#: ones stateless NAT can run, since every packet of a connection is chosen for again.
STATELESS_SCHEDULERS = ("sh", "mh", "fo")


@dataclass(frozen=True, slots=True)
class RealSpec:
    """One real server of a virtual service. ``weight`` 0 is quiescent (drained)."""

    host: str
    port: int
    weight: int = 1

    @property
    def key(self) -> str:
        """``host:port`` (``[v6]:port`` for IPv6): the server's identity everywhere."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """How real servers are health-checked (ldirectord semantics).

    ``http``: GET ``url`` (a path, joined to each real server), a 2xx whose body contains
    ``expect``. ``tcp``: a connect. ``agent``: connect to ``agent_port`` on the real server and
    read one line of HAProxy agent-check words: a weight percentage (``75%``), ``drain``,
    ``maint``, ``ready``, ``up``, or ``down``/``fail``/``stopped``. ``none``: every real server
    is always up.
    """

    kind: CheckKind = "tcp"
    url: str = "/"
    expect: str = ""
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    agent_port: int | None = None
    #: ``http`` and ``tcp``: probe this port of each real server instead of its service port
    #: (ldirectord's ``checkport``, HAProxy's ``check port``): a database's health endpoint.
    port: int | None = None


@dataclass(frozen=True, slots=True)
class PersistenceSpec:
    """IPVS persistence: same client network -> same real server while the template lives."""

    timeout: float = 300.0
    netmask: int = 32  # IPv4 prefix length that identifies a client
    netmask6: int = 128  # IPv6 prefix length


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One virtual service: where it listens, how it schedules, and its real servers."""

    name: str
    protocol: Protocol
    host: str
    port: int
    scheduler: str = "wlc"
    real: tuple[RealSpec, ...] = ()
    persistence: PersistenceSpec | None = None
    fallback: RealSpec | None = None
    check: CheckSpec = field(default_factory=CheckSpec)
    dataplane: PlaneName = "userspace"
    quiescent: bool = False  # a failed server is quiesced (weight 0) instead of removed
    expire_quiescent: bool = False  # drop persistence templates of quiescent servers
    udp_idle: float = 30.0  # seconds a UDP flow lives without datagrams
    connect_timeout: float = 3.0  # userspace plane: seconds to connect to a real server
    nat: NatMode = "stateful"  # nftables plane: conntrack NAT, or per-packet rewriting
    #: userspace TCP: the PROXY header (v1 or v2) sent to the real server first, or none
    send_proxy: ProxyVersion | None = None

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
