"""farmnode's layer-4 switch core: virtual services over real servers, IPVS-style.

Pure: schedulers (:mod:`.schedulers`), their hash tables (:mod:`.tables`), persistence
templates (:mod:`.persistence`) and the virtual service that ties them to health, weights
and counters (:mod:`.service`). The data planes in :mod:`farmnode.dataplane` move the
traffic.
"""

from __future__ import annotations

from farmnode.switch.persistence import PersistenceTable
from farmnode.switch.schedulers import SCHEDULERS, RealServer, Scheduler, make_scheduler
from farmnode.switch.service import VirtualService
from farmnode.switch.tables import maglev_table, sh_table

__all__ = [
    "SCHEDULERS",
    "PersistenceTable",
    "RealServer",
    "Scheduler",
    "VirtualService",
    "maglev_table",
    "make_scheduler",
    "sh_table",
]
