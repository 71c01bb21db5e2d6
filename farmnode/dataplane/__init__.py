"""Data planes: what actually moves a virtual service's traffic to its real servers.

Chosen per service by name (``dataplane = "userspace" | "nftables"``) from the daemon's
registry, :data:`farmnode.services.PLANES`: :mod:`.userspace` (an asyncio proxy, every
scheduler, no root; its UDP flow table in :mod:`.udpflows`) and :mod:`.nftables` (kernel
DNAT rules, Linux and root; the rules rendered by the pure :mod:`.ruleset`).
"""

from __future__ import annotations

from farmnode.dataplane.base import DataPlane

__all__ = ["DataPlane"]
