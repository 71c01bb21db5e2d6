"""The resource-agent contract: everything that moves on failover is an :class:`Agent`.

Modelled on OCF (the Open Cluster Framework resource-agent API that heartbeat and
Pacemaker use), so an operator's intuition carries over and Debian's ``resource-agents``
scripts fit behind the same contract (see :mod:`farmnode.agents.ocf`).

Contract of every agent:

- It is built from a mapping of parameters (one ``[[groups.resources]]`` table less its
  ``agent`` key). The parameters are checked there and then: an unknown, missing or
  ill-typed parameter raises :class:`AgentParamError` (a
  :class:`farmnode.errors.ConfigError`) naming the parameter. Nothing is touched on the
  system while constructing.
- :meth:`Agent.start`, :meth:`Agent.stop` and :meth:`Agent.monitor` return an
  :class:`OcfResult` and never raise for an operational failure (a missing interface, a
  script that fails, a netlink error): those become a result, with a one-line reason in
  :attr:`Agent.reason`.
- ``start`` on a started resource and ``stop`` on a stopped one succeed (idempotent).
- ``monitor`` returns ``SUCCESS`` when the resource runs here, ``NOT_RUNNING`` when it
  cleanly does not, and an error when it is broken (a failing monitor on the owner moves
  the group).
- Every action has a timeout (``start_timeout``, ``stop_timeout``, ``monitor_timeout``,
  seconds, 20 by default, common to all agents). :func:`run_action` applies it: an action
  that overruns is cancelled (subprocesses killed) and reported as ``ERR_GENERIC``.
- :meth:`Agent.close` frees what the agent object holds without touching the resource.
- :meth:`Agent.check` checks the system for what the resource needs (``farmnode
  check-config`` calls it) and raises :class:`AgentParamError` naming the parameter.
- :meth:`Agent.meta_data` describes the agent in OCF meta-data XML; it raises
  :class:`AgentError` when the agent cannot describe itself (an OCF script missing).
- :meth:`Agent.status` returns what the agent last saw of its resource, as JSON data for
  the status document and the metrics, or ``None`` when it keeps nothing (most agents). It
  reads only what the agent kept from its last action or background tick: it never blocks,
  never raises and touches nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import enum
import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar
from xml.sax.saxutils import escape, quoteattr

from farmnode.agents.context import ClusterContext, LocalContext
from farmnode.errors import ConfigError, FarmnodeError

log = logging.getLogger("farmnode.agents")
T = TypeVar("T")

NETNS_DIR = "/run/netns"
_CLONE_NEWNET = 0x40000000


class OcfResult(enum.IntEnum):
    """OCF exit codes (the same numbers LSB uses for actions other than ``status``)."""

    SUCCESS = 0
    ERR_GENERIC = 1
    ERR_ARGS = 2
    ERR_UNIMPLEMENTED = 3
    ERR_PERM = 4
    ERR_INSTALLED = 5
    ERR_CONFIGURED = 6
    NOT_RUNNING = 7

    @classmethod
    def from_exit_code(cls, code: int) -> OcfResult:
        """The result for a process exit code; codes outside OCF's are ``ERR_GENERIC``."""
        try:
            return cls(code)
        except ValueError:
            return cls.ERR_GENERIC


class Action(enum.StrEnum):
    START = "start"
    STOP = "stop"
    MONITOR = "monitor"


class AgentError(FarmnodeError):
    """An agent could not do something that is not an action (describe itself)."""

    def __init__(self, resource: str, detail: str) -> None:
        self.resource = resource
        self.detail = detail
        super().__init__(f"resource {resource}: {detail}")


class AgentParamError(ConfigError):
    """A resource's parameter is unknown, missing or invalid.

    ``source`` names the resource and its agent, ``path`` the parameter, ``expected`` what
    would have been accepted.
    """

    def __init__(self, resource: str, agent: str, param: str, expected: str) -> None:
        self.resource = resource
        self.agent = agent
        self.param = param
        super().__init__(f"resource {resource} (agent {agent})", param, expected)


# --- parameters ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter an agent accepts.

    ``kind`` is the Python type a value must have (``int`` accepts no ``bool``; ``float``
    accepts ``int``); ``check`` may reject a value by returning what was expected instead.
    """

    name: str
    kind: type
    description: str
    required: bool = False
    default: Any = None
    check: Callable[[Any], str | None] | None = None

    def ocf_type(self) -> str:
        return {bool: "boolean", int: "integer"}.get(self.kind, "string")


def positive(value: float) -> str | None:
    return None if value > 0 else "a number > 0"


def not_negative(value: float) -> str | None:
    return None if value >= 0 else "a number >= 0"


COMMON_PARAMS: tuple[Param, ...] = tuple(
    Param(f"{action}_timeout", float, f"seconds {action} may take", default=20.0, check=positive)
    for action in Action
)


def _type_name(kind: type) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return names.get(kind, "a table" if kind is dict else kind.__name__)


def _check_value(param: Param, value: Any) -> str | None:
    """What was expected, when ``value`` does not fit ``param``; ``None`` when it does."""
    if param.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) and param.kind is not bool:
        return _type_name(param.kind)
    if not isinstance(value, param.kind):
        return _type_name(param.kind)
    return param.check(value) if param.check is not None else None


# --- the contract --------------------------------------------------------------------------


class Agent(ABC):
    """One resource, managed through start / stop / monitor (see the module docstring)."""

    kind: ClassVar[str] = ""
    description: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()

    def __init__(self, params: Mapping[str, Any], *, name: str = "") -> None:
        self.name = name or self.kind
        self.reason = ""
        self.values = self._validate(params)
        self.timeouts = {action: float(self.values[f"{action}_timeout"]) for action in Action}
        self.context: ClusterContext = LocalContext(name or self.kind)

    def _validate(self, given: Mapping[str, Any]) -> dict[str, Any]:
        declared = {param.name: param for param in (*self.params, *COMMON_PARAMS)}
        for key in given:
            if key not in declared:
                known = ", ".join(sorted(declared))
                raise self.param_error(key, f"a known parameter ({known})")
        values: dict[str, Any] = {}
        for param in declared.values():
            if param.name not in given:
                if param.required:
                    raise self.param_error(param.name, f"required: {param.description}")
                values[param.name] = param.default
                continue
            value = given[param.name]
            expected = _check_value(param, value)
            if expected is not None:
                raise self.param_error(param.name, f"{expected}, not {value!r}")
            values[param.name] = float(value) if param.kind is float else value
        return values

    def param_error(self, param: str, expected: str) -> AgentParamError:
        return AgentParamError(self.name, self.kind, param, expected)

    def check(self) -> None:
        """Check what the resource needs on this system (directories, programs, versions)
        without touching it; raise :class:`AgentParamError` naming the parameter at fault.
        ``farmnode check-config`` calls it; most agents need nothing beyond their
        parameters."""
        return

    def bind(self, context: ClusterContext) -> None:
        """Give the agent its cluster's view (node attributes; see
        :mod:`farmnode.agents.context`). The cluster runtime binds every agent of every group
        before the first action; until then, and on a node without a cluster, the agent has a
        :class:`~farmnode.agents.context.LocalContext`."""
        self.context = context

    def fail(self, result: OcfResult, reason: str) -> OcfResult:
        """Record ``reason`` for a result other than ``SUCCESS`` and return ``result``."""
        self.reason = reason
        return result

    @abstractmethod
    async def start(self) -> OcfResult:
        """Make the resource run here. Idempotent."""

    @abstractmethod
    async def stop(self) -> OcfResult:
        """Make the resource not run here. Idempotent: stopped already is ``SUCCESS``."""

    @abstractmethod
    async def monitor(self) -> OcfResult:
        """``SUCCESS`` running, ``NOT_RUNNING`` cleanly stopped, an error when broken."""

    async def close(self) -> None:
        """Free what this object holds (sockets, background tasks) and leave the resource as
        it is: for a daemon that exits without releasing. Idempotent; never raises."""
        return  # most agents hold nothing between actions

    def status(self) -> Mapping[str, Any] | None:
        """What the agent last saw of its resource (JSON data: the cluster runtime puts it
        in the group's ``resources`` in ``GET /status``, and :mod:`farmnode.metrics` renders
        what it knows), or ``None``: nothing kept. Never blocks, never raises."""
        return None

    def meta_data(self) -> str:
        """OCF meta-data XML describing this agent and its parameters."""
        return render_meta_data(self.kind, self.description, (*self.params, *COMMON_PARAMS))


def render_meta_data(kind: str, description: str, params: Sequence[Param]) -> str:
    """The OCF ``<resource-agent>`` document for an agent."""
    lines = [
        '<?xml version="1.0"?>',
        '<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">',
        f'<resource-agent name={quoteattr(kind)} version="1.0">',
        "  <version>1.0</version>",
        f'  <longdesc lang="en">{escape(description)}</longdesc>',
        f'  <shortdesc lang="en">{escape(description.split(".", maxsplit=1)[0])}</shortdesc>',
        "  <parameters>",
    ]
    for param in params:
        required = "1" if param.required else "0"
        default = "" if param.default is None else f" default={quoteattr(str(param.default))}"
        lines += [
            f'    <parameter name={quoteattr(param.name)} required="{required}">',
            f'      <longdesc lang="en">{escape(param.description)}</longdesc>',
            f'      <shortdesc lang="en">{escape(param.description)}</shortdesc>',
            f'      <content type="{param.ocf_type()}"{default}/>',
            "    </parameter>",
        ]
    lines += ["  </parameters>", "  <actions>"]
    for action in (*Action, "meta-data"):
        lines.append(f'    <action name="{action}" timeout="20s"/>')
    lines += ["  </actions>", "</resource-agent>", ""]
    return "\n".join(lines)


# --- running actions -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one action of one resource came to; ``reason`` is empty on success."""

    resource: str
    action: Action
    result: OcfResult
    reason: str
    elapsed: float

    @property
    def ok(self) -> bool:
        return self.result is OcfResult.SUCCESS


async def run_action(agent: Agent, action: Action, timeout: float | None = None) -> Outcome:
    """Run ``action`` on ``agent`` within its timeout (or ``timeout``); log and return it.

    Never raises except :class:`asyncio.CancelledError` when the caller is cancelled: a
    timeout is ``ERR_GENERIC`` ("timed out after N s") and an unexpected exception from an
    agent is ``ERR_GENERIC`` with the exception as its reason.
    """
    limit = agent.timeouts[action] if timeout is None else timeout
    agent.reason = ""
    began = time.monotonic()
    try:
        async with asyncio.timeout(limit):
            result = await getattr(agent, action.value)()
        reason = "" if result is OcfResult.SUCCESS else agent.reason or result.name
    except TimeoutError:
        result, reason = OcfResult.ERR_GENERIC, f"timed out after {limit:g} s"
    except Exception as exc:  # noqa: BLE001 - an agent's bug must not take the node down
        result, reason = OcfResult.ERR_GENERIC, f"{type(exc).__name__}: {exc}"
    outcome = Outcome(agent.name, action, OcfResult(result), reason, time.monotonic() - began)
    _log_outcome(outcome)
    return outcome


def _log_outcome(outcome: Outcome) -> None:
    quiet = outcome.action is Action.MONITOR and outcome.result in (
        OcfResult.SUCCESS,
        OcfResult.NOT_RUNNING,
    )
    level = logging.DEBUG if quiet else logging.INFO if outcome.ok else logging.WARNING
    log.log(
        level,
        "resource %s %s: %s (%d)%s in %.3f s",
        outcome.resource,
        outcome.action.value,
        outcome.result.name,
        outcome.result.value,
        f": {outcome.reason}" if outcome.reason else "",
        outcome.elapsed,
    )


# --- subprocesses and namespaces (shared by the agents) -----------------------------------


_LIBC: list[ctypes.CDLL] = []


def _setns(netns: str) -> None:
    if not _LIBC:
        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    fd = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY)
    try:
        if _LIBC[0].setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({netns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh thread inside network namespace ``netns`` (``None``: this one).

    Sockets ``fn`` creates belong to that namespace for their whole life and may be used
    from any thread afterwards. The thread ends with ``fn``, so no pooled thread is ever
    left in a foreign namespace. Raises what ``fn`` raised, or :class:`OSError` when the
    namespace does not exist.
    """
    if netns is None:
        return fn()
    box: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            _setns(netns)
            box.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return box[0]


async def in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """:func:`call_in_netns` without blocking the event loop."""
    return await asyncio.to_thread(call_in_netns, netns, fn)
