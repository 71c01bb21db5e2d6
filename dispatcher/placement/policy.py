"""The policy contract: a policy is a registry entry that declares its own options.

A pool's table in the configuration names its policy (``policy = "nearest"``) and may set
the options that policy declares, and no others; the configuration knows no policy names of
its own (:data:`REGISTRY` is the list). A policy picks among the pool's *candidates*: the
sites that may take new clients (healthy, not drained, weight above zero; or, while a
``fail-open`` pool has every site down, those that would be eligible if health were
ignored), in configured order. It receives the client and, for policies that set
:attr:`Policy.locates`, where the client is. Pure: no I/O, never blocks, never raises on
client input; it may keep a little state between calls (rotations, hysteresis), as IPVS
schedulers do, because one instance serves a pool for as long as its configuration names it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

from dispatcher.placement.model import (
    NOT_PICKED,
    TAKEN,
    Candidate,
    Client,
    Considered,
    Location,
)


class Option(NamedTuple):
    """An option a policy declares: ``parse(raw, where)`` turns the TOML value into the
    setting or raises :class:`~dispatcher.errors.ConfigError` naming ``where`` (e.g.
    ``"pools.eu.high_watermark"``); ``default`` applies when the pool does not set it."""

    parse: Callable[[Any, str], Any]
    default: Any
    doc: str


class Policy:
    """Chooses sites for a new client.

    ``settings`` holds every declared option, parsed (defaults filled in). ``failing_open``
    is the pool's one other piece of running state, set when snapshots are built, so that a
    pool entering or leaving fail-open is logged once, not on every rebuild.
    """

    name: ClassVar[str] = ""
    options: ClassVar[Mapping[str, Option]] = {}
    #: True when the policy reads :class:`Location`: only then does placement locate the
    #: client (prefix map, IP database, learned RTT) before calling it.
    locates: ClassVar[bool] = False
    #: False when :meth:`choose` reads nothing of the client (not its time, address or
    #: host): the hot path then passes a placeholder instead of building a :class:`Client`
    #: for every request. True unless a policy says otherwise.
    reads_client: ClassVar[bool] = True

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings: Mapping[str, Any] = dict(settings or {})
        self.failing_open = False

    def choose(
        self, candidates: Sequence[Candidate], client: Client, located: Location
    ) -> Candidate | None:
        """The site for this client; ``None`` only when ``candidates`` is empty."""
        raise NotImplementedError

    def order(
        self, candidates: Sequence[Candidate], client: Client, located: Location, count: int
    ) -> tuple[Candidate, ...]:
        """Up to ``count`` sites in preference order (DNS answers several): by default the
        choice, then the other candidates in configured order."""
        first = self.choose(candidates, client, located)
        if first is None:
            return ()
        rest = [c for c in candidates if c is not first]
        return (first, *rest)[: max(count, 0)]

    def consider(
        self, candidates: Sequence[Candidate], client: Client, located: Location
    ) -> list[Considered]:
        """A verdict for every candidate, for ``explain``: by default the choice is
        :data:`TAKEN` and the others :data:`NOT_PICKED`. (Explaining may advance a rotation,
        as a real request would.)"""
        chosen = self.choose(candidates, client, located)
        return [Considered(c.name, TAKEN if c is chosen else NOT_PICKED) for c in candidates]


#: Every policy by name; :func:`register` adds one.
REGISTRY: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make ``cls`` available to pools as ``policy = cls.name``."""
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"policy name {cls.name!r} is empty or already registered")
    REGISTRY[cls.name] = cls
    return cls
