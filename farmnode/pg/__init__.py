"""The truth tier's PostgreSQL: one data directory (:mod:`farmnode.pg.instance`), the text
PostgreSQL reads and prints (:mod:`farmnode.pg.formats`), the checks of ``farmnode
check-config`` (:mod:`farmnode.pg.system`) and the Patroni-compatible HTTP health endpoints
(:mod:`farmnode.pg.health`). The resource agent that moves the primary role is
:mod:`farmnode.agents.postgresql`; what it decides with lives here: the promotion rules
(:mod:`farmnode.pg.promotion`), the other nodes' attributes (:mod:`farmnode.pg.peers`),
halting and rewinding (:mod:`farmnode.pg.lifecycle`) and the document of what it saw
(:mod:`farmnode.pg.view`)."""

from farmnode.pg.health import HealthServer, HealthState, parse_size
from farmnode.pg.instance import Instance, InstanceError, Snapshot

__all__ = ["HealthServer", "HealthState", "Instance", "InstanceError", "Snapshot", "parse_size"]
