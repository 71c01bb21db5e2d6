"""Running a program and reading what it said: shared by the resource agents, the truth
tier's PostgreSQL instance and the cluster's notify command. Outside ``farmnode.agents`` so
that :mod:`farmnode.pg` imports without the agents' registry (which imports it).

Every child process farmnode starts gets its environment from :func:`child_environment`:
a short allowlist of farmnode's own variables (:data:`INHERITED`: ``PATH``, the locale,
``HOME``, ``USER``, ...) plus what the caller adds for that child (``OCF_*`` for an OCF
agent, ``PGPASSWORD`` for ``pg_rewind``, ``FARM_CLUSTER_EVENT`` for a notify command).
Nothing else is inherited: not ``FARM_CLUSTER_KEY``, not ``FARMNODE_REPORT_TOKEN``, not
whatever else the service manager put in farmnode's environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
from collections.abc import Mapping, Sequence
from typing import Final

#: The variables of farmnode's own environment a child inherits (when they are set).
INHERITED: Final = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR"}
)
#: ... and every variable whose name starts with one of these (the locale categories).
INHERITED_PREFIXES: Final = ("LC_",)
#: Secrets: never in a child's environment, even when a caller asks (a bug, raised).
SECRETS: Final = frozenset(
    {
        "FARM_CLUSTER_KEY",
        "FARMNODE_REPORT_TOKEN",
        "FARM_ADMIN_TOKENS",
        "FARM_SECRET_KEYS",
        "FARM_DATABASE_URL",
    }
)
DEFAULT_PATH: Final = "/usr/sbin:/usr/bin:/sbin:/bin"


def child_environment(
    extra: Mapping[str, str] | None = None, *, parent: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a child process: :data:`INHERITED` variables of ``parent``
    (default :data:`os.environ`), ``PATH`` always, and ``extra`` on top.

    Raises :class:`ValueError` when ``extra`` names a secret (:data:`SECRETS`, or any
    ``FARMNODE_*``): that is a bug in the caller, never something to pass on.
    """
    source = os.environ if parent is None else parent
    env = {
        key: value
        for key, value in source.items()
        if key in INHERITED or key.startswith(INHERITED_PREFIXES)
    }
    env.setdefault("PATH", DEFAULT_PATH)
    for key, value in (extra or {}).items():
        if key in SECRETS or key.startswith("FARMNODE_"):
            raise ValueError(f"{key} is a secret: it is never given to a child process")
        env[key] = value
    return env


async def run_process(
    argv: Sequence[str], env: Mapping[str, str] | None = None, *, limit: int = 65536
) -> tuple[int, str]:
    """Run ``argv``; return its exit code and the first ``limit`` bytes of its output.

    Its environment is :func:`child_environment` with ``env`` added (variables for this
    child only); nothing else of farmnode's environment reaches it.

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
            env=child_environment(env),
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
