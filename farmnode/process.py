"""Running a program and reading what it said: shared by the resource agents, the truth
tier's PostgreSQL instance and the cluster's notify command. Outside ``farmnode.agents`` so
that :mod:`farmnode.pg` imports without the agents' registry (which imports it)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
from collections.abc import Mapping, Sequence


async def run_process(
    argv: Sequence[str], env: Mapping[str, str] | None = None, *, limit: int = 65536
) -> tuple[int, str]:
    """Run ``argv``; return its exit code and the first ``limit`` bytes of its output.

    The result comes when the process exits, not when its output closes: a script that
    starts a daemon which inherits its stdout (many init scripts do) does not hold the
    action up. Output goes to a temporary file for that reason. The process runs in its own
    session; when the caller is cancelled (a timeout) the whole process group is killed and
    reaped before the cancellation propagates. Raises :class:`OSError` when the program
    cannot be executed.
    """
    with tempfile.TemporaryFile() as output:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
            env=None if env is None else dict(env),
            start_new_session=True,
        )
        try:
            code = await process.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await asyncio.shield(process.wait())
            raise
        output.seek(0)
        return code, output.read(limit).decode(errors="replace")


def last_line(output: str) -> str:
    """The last non-empty line of ``output`` (what a failing script said last)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""
