"""Data planes: what actually moves a virtual service's traffic to its real servers.

Chosen per service by name (``dataplane = "userspace" | "nftables"``) from :data:`PLANES`.
"""

from __future__ import annotations

from farmnode.dataplane.base import DataPlane

__all__ = ["DataPlane"]
