"""The contract every data plane keeps."""

from __future__ import annotations

from abc import ABC, abstractmethod

from farmnode.spec import ServiceSpec
from farmnode.switch.service import VirtualService


class DataPlane(ABC):
    """Moves one virtual service's traffic to the real servers its scheduler picks.

    The daemon owns the :class:`VirtualService` (scheduler, persistence, health, counters)
    and hands it to the plane; the plane reads it for every new connection or flow
    (userspace) or renders it into the kernel (nftables).

    Contract:
    - :meth:`start` opens the listener or installs the rules; it raises
      :class:`farmnode.errors.DataplaneError` (never a bare ``OSError``) when it cannot,
      and then leaves nothing behind.
    - :meth:`refresh` is called after the service's membership, weights or health changed
      (including a config reload that keeps the listen address). Established connections
      are never dropped by it.
    - :meth:`stop` closes the listener or removes the rules. With ``drain`` > 0 it waits up to
      that many seconds for established connections to finish before cutting them.
      Calling it twice is harmless.
    """

    name: str = ""

    def __init__(self, spec: ServiceSpec, service: VirtualService) -> None:
        self.spec = spec
        self.service = service

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def refresh(self) -> None: ...

    @abstractmethod
    async def stop(self, drain: float = 0.0) -> None: ...
