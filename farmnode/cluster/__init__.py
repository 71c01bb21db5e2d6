"""Cluster membership for a site's farmnodes: heartbeat, election, takeover.

``protocol`` is the authenticated heartbeat message and the receiver that filters it;
``transports`` carries heartbeats over UDP unicast, UDP multicast and serial lines.
The wire format and its rules are described in ``docs/heartbeat.md``.
"""

from __future__ import annotations

from farmnode.cluster.protocol import (
    MAX_MESSAGE,
    STATES,
    Heartbeat,
    HeartbeatError,
    Receiver,
    Role,
    State,
    TransportError,
    decode,
    encode,
    new_incarnation,
)
from farmnode.cluster.runtime import ClusterRuntime
from farmnode.cluster.transports import (
    TRANSPORTS,
    OnDatagram,
    Serial,
    Transport,
    UdpMulticast,
    UdpUnicast,
)

__all__ = [
    "MAX_MESSAGE",
    "STATES",
    "TRANSPORTS",
    "ClusterRuntime",
    "Heartbeat",
    "HeartbeatError",
    "OnDatagram",
    "Receiver",
    "Role",
    "Serial",
    "State",
    "Transport",
    "TransportError",
    "UdpMulticast",
    "UdpUnicast",
    "decode",
    "encode",
    "new_incarnation",
]
