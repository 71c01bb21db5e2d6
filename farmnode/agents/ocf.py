"""The ``ocf`` agent: runs a standard OCF resource-agent script unchanged.

The script is named by ``type`` (``heartbeat/IPaddr2`` is
``$OCF_ROOT/resource.d/heartbeat/IPaddr2``) or by an absolute ``path``. Its parameters come
from the ``params`` table and reach it as ``OCF_RESKEY_<name>``, beside what every OCF
script expects: ``OCF_ROOT``, ``OCF_FUNCTIONS_DIR``, ``OCF_RA_VERSION_MAJOR/MINOR``,
``OCF_RESOURCE_INSTANCE`` (the resource name), ``OCF_RESOURCE_TYPE``,
``OCF_RESOURCE_PROVIDER`` and ``OCF_RESKEY_CRM_meta_timeout`` (the action's timeout in ms).

``<script> start|stop|monitor`` runs as a subprocess, killed with its process group when
the action's timeout expires; its exit code is the result. A script that is not there is
``ERR_INSTALLED`` on start, and cannot be running: stop is ``SUCCESS``, monitor
``NOT_RUNNING``. With ``netns`` the script runs under ``ip netns exec NAME``.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from farmnode.agents.base import (
    Action,
    Agent,
    AgentError,
    OcfResult,
    Param,
)
from farmnode.process import child_environment, last_line, run_process

DEFAULT_OCF_ROOT = "/usr/lib/ocf"
_TYPE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SCALARS = (str, int, float, bool)
META_DATA_TIMEOUT = 10.0


def _type(value: str) -> str | None:
    ok = _TYPE.match(value) is not None and ".." not in value
    return None if ok else "provider/type, e.g. heartbeat/IPaddr2"


def _path(value: str) -> str | None:
    return None if os.path.isabs(value) else "an absolute path to an OCF script"


def _params(value: Mapping[str, Any]) -> str | None:
    for key, item in value.items():
        if not isinstance(key, str) or _KEY.match(key) is None:
            return f"a table of names made of letters, digits and _ (not {key!r})"
        if not isinstance(item, _SCALARS):
            return f"a table of strings, numbers or booleans ({key} is {type(item).__name__})"
    return None


def env_value(value: str | float | bool) -> str:
    """A parameter as the shell sees it (booleans as ``true``/``false``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def ocf_runner_argv(netns: str | None, script: str, action: str) -> list[str]:
    """The command line that runs ``script action`` (inside ``netns`` when set)."""
    argv = [script, action]
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


class OcfAgent(Agent):
    """Any OCF resource-agent script, e.g. Debian's ``resource-agents`` ``heartbeat/IPaddr2``."""

    kind: ClassVar[str] = "ocf"
    description: ClassVar[str] = (
        "Runs a standard OCF resource-agent script with its parameters as OCF_RESKEY_*."
    )
    params: ClassVar[tuple[Param, ...]] = (
        Param("type", str, "provider/type under $OCF_ROOT/resource.d", check=_type),
        Param("path", str, "absolute path of the script (instead of type)", check=_path),
        Param("params", dict, "the script's parameters (OCF_RESKEY_*)", default={}, check=_params),
        Param("ocf_root", str, "OCF_ROOT", default=DEFAULT_OCF_ROOT, check=_path),
        Param("netns", str, "network namespace (name in /run/netns) to run the script in"),
    )

    def __init__(self, params: Mapping[str, Any], *, name: str = "") -> None:
        super().__init__(params, name=name)
        kind, path = self.values["type"], self.values["path"]
        if (kind is None) == (path is None):
            raise self.param_error("type", "exactly one of type (provider/type) or path")
        self.ocf_root: str = self.values["ocf_root"]
        if kind is not None:
            self.provider, self.type = kind.split("/")
            self.script = str(Path(self.ocf_root, "resource.d", kind))
        else:
            self.provider, self.type = "", Path(path).name
            self.script = path
        self.netns: str | None = self.values["netns"]
        self.reskeys: dict[str, str] = {
            f"OCF_RESKEY_{key}": env_value(value) for key, value in self.values["params"].items()
        }

    def environment(self, action: str, timeout: float) -> dict[str, str]:
        """The environment the script runs with for ``action``."""
        env = child_environment()
        env.update(
            OCF_ROOT=self.ocf_root,
            OCF_FUNCTIONS_DIR=str(Path(self.ocf_root, "lib", "heartbeat")),
            OCF_RA_VERSION_MAJOR="1",
            OCF_RA_VERSION_MINOR="0",
            OCF_RESOURCE_INSTANCE=self.name,
            OCF_RESOURCE_TYPE=self.type,
            OCF_RESKEY_CRM_meta_timeout=str(int(timeout * 1000)),
        )
        if self.provider:
            env["OCF_RESOURCE_PROVIDER"] = self.provider
        env.update(self.reskeys)
        return env

    async def _run(self, action: Action) -> OcfResult:
        if not os.access(self.script, os.X_OK):
            missing = f"{self.script} is missing or not executable"
            absent = {Action.STOP: OcfResult.SUCCESS, Action.MONITOR: OcfResult.NOT_RUNNING}
            return self.fail(absent.get(action, OcfResult.ERR_INSTALLED), missing)
        argv = ocf_runner_argv(self.netns, self.script, action.value)
        try:
            code, output = await run_process(
                argv, self.environment(action.value, self.timeouts[action])
            )
        except OSError as exc:
            return self.fail(OcfResult.ERR_INSTALLED, f"cannot run {self.script}: {exc}")
        result = OcfResult.from_exit_code(code)
        if result is not OcfResult.SUCCESS:
            said = last_line(output)
            self.fail(
                result, f"{self.type} {action.value} exited {code}{': ' if said else ''}{said}"
            )
        return result

    async def start(self) -> OcfResult:
        return await self._run(Action.START)

    async def stop(self) -> OcfResult:
        return await self._run(Action.STOP)

    async def monitor(self) -> OcfResult:
        return await self._run(Action.MONITOR)

    def meta_data(self) -> str:
        """The script's own ``meta-data`` output (runs it, at most 10 s)."""
        argv = ocf_runner_argv(None, self.script, "meta-data")
        try:
            done = subprocess.run(  # noqa: S603 - argv list from the config, no shell
                argv,
                env=self.environment("meta-data", META_DATA_TIMEOUT),
                capture_output=True,
                text=True,
                timeout=META_DATA_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AgentError(self.name, f"{self.script} meta-data: {exc}") from exc
        if done.returncode != 0:
            detail = last_line(done.stderr or done.stdout)
            raise AgentError(
                self.name, f"{self.script} meta-data exited {done.returncode}: {detail}"
            )
        return done.stdout
