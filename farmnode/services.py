"""A virtual service as the node runs it: its spec, switch state and data plane
(:class:`Running`, the planes by name in :data:`PLANES`), its real servers' probe targets,
the weight an agent's report asks for, what its plane counts, stale nftables chains, and its
part of the status document. The node (:mod:`farmnode.daemon`) owns the set of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from dispatcher.backends.health import Health, Prober, Target
from farmnode.dataplane.base import DataPlane
from farmnode.dataplane.nftables import NftablesPlane
from farmnode.dataplane.ruleset import count_flows
from farmnode.dataplane.userspace import UserspacePlane
from farmnode.spec import RealSpec, ServiceSpec
from farmnode.switch.service import VirtualService

log = logging.getLogger("webfarm.farmnode")  # the node's log: its lines

PlaneFactory = Callable[[ServiceSpec, VirtualService], DataPlane]
#: Data planes by the name a service's ``dataplane`` key gives.
PLANES: Mapping[str, PlaneFactory] = {"userspace": UserspacePlane, "nftables": NftablesPlane}


class Running:
    """One service as the node runs it: its spec, its switch state and its data plane."""

    __slots__ = ("on_fallback", "plane", "service", "spec", "started")

    def __init__(self, spec: ServiceSpec, service: VirtualService, plane: DataPlane) -> None:
        self.spec = spec
        self.service = service
        self.plane = plane
        self.started = False
        self.on_fallback = False

    @property
    def identity(self) -> tuple[str, str, int, str]:
        """What must stay the same for a reload to update the service in place."""
        spec = self.spec
        return spec.protocol, spec.host, spec.port, spec.dataplane

    @property
    def address(self) -> str:
        """Where the service listens (the bound port for a userspace plane)."""
        plane = self.plane
        if isinstance(plane, UserspacePlane) and plane.address is not None:
            return plane.where
        return self.spec.listen


def identity(spec: ServiceSpec) -> tuple[str, str, int, str]:
    return spec.protocol, spec.host, spec.port, spec.dataplane


def target_key(service: str, real: str) -> str:
    """The probe target's key for real server ``real`` (``host:port``) of ``service``."""
    return f"{service}/{real}"


def probe_targets(spec: ServiceSpec) -> list[Target]:
    """The probe targets of one service's real servers (none for ``check.kind = "none"``)."""
    check = spec.check
    if check.kind == "none":
        return []
    return [_target(spec, real) for real in spec.real]


def _target(spec: ServiceSpec, real: RealSpec) -> Target:
    check = spec.check
    common: dict[str, Any] = {
        "key": target_key(spec.name, real.key),
        "interval": check.interval,
        "timeout": check.timeout,
        "rise": check.rise,
        "fall": check.fall,
    }
    port = check.port if check.port is not None else real.port
    if check.kind == "http":
        where = RealSpec(real.host, port).key
        return Target(url=f"http://{where}{check.url}", expect=check.expect, **common)
    if check.kind == "agent":
        assert check.agent_port is not None  # the config requires it for agent checks
        return Target(
            url="", expect="", kind="agent", host=real.host, port=check.agent_port, **common
        )
    return Target(url="", expect="", kind="tcp", host=real.host, port=port, **common)


def agent_weight(health: Health, configured: int) -> int | None:
    """The weight an agent's standing report asks for, or ``None`` for the configured one."""
    report = health.last.agent if health.last is not None else None
    if report is None:
        return None
    if report.weight_percent is None and report.admin in (None, "ready"):
        return None
    return report.weight(configured)


async def open_connections(running: Running) -> int:
    """Open connections (TCP) or flows (UDP) of one service as its plane sees them."""
    plane = running.plane
    if not running.started:
        return 0
    if isinstance(plane, UserspacePlane):
        return plane.connections + plane.flows
    if isinstance(plane, NftablesPlane):
        text = await asyncio.to_thread(plane.nft.read, "/proc/net/nf_conntrack")
        return count_flows(text, running.spec) if text is not None else 0
    total = sum(server.active for server in running.service.servers.values())
    fallback = running.service.fallback
    return total + (fallback.active if fallback is not None else 0)


def prune_chains(plane: NftablesPlane, wanted: set[str]) -> None:
    """Blocking: delete chains not in ``wanted`` from ``plane``'s table, if it exists."""
    table = plane.options.table
    listing = plane.nft.run(["-j", "list", "table", "ip", table], check=False)
    if listing.returncode != 0:
        return  # no table yet
    items: list[Any] = json.loads(listing.stdout).get("nftables", [])
    names = {str(i["chain"]["name"]) for i in items if isinstance(i, dict) and "chain" in i}
    stale = sorted(names - wanted)
    if not stale:
        return
    log.info("nftables table %s: removing chains left by an earlier run: %s", table, stale)
    script = "".join(
        f"flush chain ip {table} {name}\ndelete chain ip {table} {name}\n" for name in stale
    )
    plane.nft.transact(script)


def service_status(
    running: Running, deferred: frozenset[str], prober: Prober | None
) -> dict[str, Any]:
    """One service's part of the status document (see :mod:`farmnode.status`)."""
    doc: dict[str, Any] = dict(running.service.status())
    doc["address"] = running.address
    doc["running"] = running.started
    doc["deferred"] = running.spec.name in deferred
    doc["check"] = running.spec.check.kind
    for real in doc["real"]:
        real["check"] = check_view(running.spec, str(real["address"]), prober)
    return doc


def check_view(spec: ServiceSpec, real: str, prober: Prober | None) -> dict[str, Any] | None:
    """What the prober knows of one real server, for the status document."""
    if spec.check.kind == "none" or prober is None:
        return None
    key = target_key(spec.name, real)
    health, tally = prober.health(key), prober.tally(key)
    last = health.last
    return {
        "health": health.state,
        "detail": last.detail if last is not None else None,
        "age": round(time.monotonic() - last.at, 3) if last is not None else None,
        "failures": tally.failures if tally is not None else 0,
        "up_down": tally.up_down if tally is not None else 0,
        "downtime": round(tally.downtime(prober.now()), 3) if tally is not None else 0.0,
    }
