"""The ``script`` agent: an LSB-style init script, ``path start|stop|status``.

Exit codes of ``start`` and ``stop`` are OCF's (LSB uses the same numbers for them).
``status`` speaks LSB: 0 running; 1 (dead, pid file left), 2 (dead, lock file left) and 3
(not running) are ``NOT_RUNNING``; 4 (unknown) and anything else ``ERR_GENERIC``, as
Pacemaker maps them. The contract's idempotence is enforced for scripts that do not keep
it: a ``stop`` that fails is checked with ``status``, and a service that is not running
counts as stopped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

from farmnode.agents.base import Agent, OcfResult, Param
from farmnode.process import last_line, run_process

LSB_STATUS: dict[int, OcfResult] = {
    0: OcfResult.SUCCESS,
    1: OcfResult.NOT_RUNNING,
    2: OcfResult.NOT_RUNNING,
    3: OcfResult.NOT_RUNNING,
}


def lsb_status(code: int) -> OcfResult:
    """The result for an LSB ``status`` exit code."""
    return LSB_STATUS.get(code, OcfResult.ERR_GENERIC)


def _path(value: str) -> str | None:
    return None if os.path.isabs(value) else "an absolute path to an executable script"


class ScriptAgent(Agent):
    """An LSB init-style script (``/etc/init.d/apache2``) as a resource."""

    kind: ClassVar[str] = "script"
    description: ClassVar[str] = "An LSB-style script run as 'path start|stop|status'."
    params: ClassVar[tuple[Param, ...]] = (
        Param("path", str, "absolute path of the script", required=True, check=_path),
        Param("netns", str, "network namespace (name in /run/netns) to run the script in"),
    )

    def __init__(self, params: Mapping[str, Any], *, name: str = "") -> None:
        super().__init__(params, name=name)
        self.path: str = self.values["path"]
        self.netns: str | None = self.values["netns"]

    async def _run(self, verb: str) -> tuple[int, str] | None:
        """The exit code and output of ``path verb``; ``None`` (reason set) when it cannot run."""
        if not os.access(self.path, os.X_OK):
            self.reason = f"{self.path} is missing or not executable"
            return None
        argv = [self.path, verb]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        try:
            return await run_process(argv)
        except OSError as exc:
            self.reason = f"cannot run {self.path}: {exc}"
            return None

    def _failed(self, verb: str, code: int, output: str) -> str:
        said = last_line(output)
        return f"{self.path} {verb} exited {code}{': ' if said else ''}{said}"

    async def start(self) -> OcfResult:
        ran = await self._run("start")
        if ran is None:
            return OcfResult.ERR_INSTALLED
        code, output = ran
        result = OcfResult.from_exit_code(code)
        if result is not OcfResult.SUCCESS:
            return self.fail(result, self._failed("start", code, output))
        return result

    async def stop(self) -> OcfResult:
        ran = await self._run("stop")
        if ran is None:
            return OcfResult.SUCCESS  # a script that is not there runs nothing
        code, output = ran
        if code == 0:
            return OcfResult.SUCCESS
        reason = self._failed("stop", code, output)
        if await self.monitor() is OcfResult.NOT_RUNNING:
            self.reason = ""
            return OcfResult.SUCCESS
        return self.fail(OcfResult.from_exit_code(code), reason)

    async def monitor(self) -> OcfResult:
        ran = await self._run("status")
        if ran is None:
            return OcfResult.NOT_RUNNING
        code, output = ran
        result = lsb_status(code)
        if result is not OcfResult.SUCCESS:
            return self.fail(result, self._failed("status", code, output))
        return result
