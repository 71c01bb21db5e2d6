"""What an agent may know of its cluster: node attributes, shared through the heartbeat.

Some agents decide with facts from other nodes: the PostgreSQL agent may promote a standby
only if the old primary last named it synchronous, or if its lag behind the primary's last
advertised position is small. Pacemaker keeps such facts as *node attributes*; farmnode does
the same: an agent :meth:`~ClusterContext.publish`-es a short string under a key, every
heartbeat of this node carries it from then on, and every node records the last value each
peer advertised — also after that peer died, which is exactly when it matters.

:class:`ClusterContext` is the agent's view; the cluster runtime implements it for a node in
a cluster, :class:`LocalContext` for a node without one (and for tests of agents alone).
Agents receive it through :meth:`farmnode.agents.base.Agent.bind`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from farmnode.errors import FarmnodeError

#: A key: lower-case words joined by ``.``, ``-`` or ``_`` (``pg.sync``), at most 32 bytes.
KEY_PATTERN: Final = re.compile(r"[a-z][a-z0-9_.-]{0,31}")
#: Longest key, in bytes (the heartbeat's limit; :data:`KEY_PATTERN` keeps keys ASCII).
MAX_KEY: Final = 32
#: Longest value, in UTF-8 bytes (the heartbeat must stay one small datagram).
MAX_VALUE: Final = 120
#: Most keys one node may publish.
MAX_ATTRIBUTES: Final = 8


class AttributeRefused(FarmnodeError):
    """An attribute that cannot be published: a bad key, a value too long, too many keys."""


def check_attribute(key: str, value: str) -> None:
    """Raise :class:`AttributeRefused` unless ``key`` and ``value`` can go in a heartbeat."""
    if not KEY_PATTERN.fullmatch(key):
        raise AttributeRefused(
            f"attribute key {key!r}: expected lower-case letters, digits, '.', '-' or '_', "
            "starting with a letter, at most 32 characters"
        )
    if len(value.encode()) > MAX_VALUE:
        raise AttributeRefused(f"attribute {key!r}: value longer than {MAX_VALUE} bytes")


@dataclass(frozen=True, slots=True)
class Observation:
    """The last value ``node`` advertised under a key: ``age`` seconds ago (0 for this node),
    ``alive`` whether the node is alive now (this node always is)."""

    node: str
    value: str
    age: float
    alive: bool


class ClusterContext(Protocol):
    """An agent's view of its cluster (see the module docstring)."""

    @property
    def node(self) -> str:
        """This node's name."""
        ...

    def publish(self, key: str, value: str | None) -> None:
        """Advertise ``value`` under ``key`` from the next heartbeat on; ``None`` withdraws it.

        Raises :class:`AttributeRefused` for a key or value that cannot be advertised.
        """
        ...

    def observed(self, key: str) -> Mapping[str, Observation]:
        """Every node's last advertised value of ``key`` (this node's own included), by node
        name; a dead peer's last value stays here until it advertises again."""
        ...

    def alive(self, node: str) -> bool:
        """Whether ``node`` (this one or a peer) is alive now."""
        ...


class LocalContext:
    """The context of a node alone: only its own attributes; no peer is ever alive."""

    __slots__ = ("_node", "_values")

    def __init__(self, node: str = "local") -> None:
        self._node = node
        self._values: dict[str, tuple[str, float]] = {}

    @property
    def node(self) -> str:
        return self._node

    def publish(self, key: str, value: str | None) -> None:
        if value is None:
            self._values.pop(key, None)
            return
        check_attribute(key, value)
        if key not in self._values and len(self._values) >= MAX_ATTRIBUTES:
            raise AttributeRefused(f"attribute {key!r}: at most {MAX_ATTRIBUTES} keys per node")
        self._values[key] = (value, time.monotonic())

    def observed(self, key: str) -> Mapping[str, Observation]:
        if key not in self._values:
            return {}
        value, _ = self._values[key]
        return {self._node: Observation(self._node, value, 0.0, alive=True)}

    def alive(self, node: str) -> bool:
        return node == self._node

    @property
    def published(self) -> Mapping[str, str]:
        """What this node advertises now."""
        return {key: value for key, (value, _) in self._values.items()}


__all__ = [
    "MAX_ATTRIBUTES",
    "MAX_KEY",
    "MAX_VALUE",
    "AttributeRefused",
    "ClusterContext",
    "LocalContext",
    "Observation",
    "check_attribute",
]
