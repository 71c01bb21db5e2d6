"""What a process imports before it does anything: the light entry points stay light.

Every ``farmnode`` and ``farm-dispatcher`` command and every dispatcher worker is a fresh
interpreter, and the suite starts hundreds of them. These are structural guards, not
timings: a fresh interpreter imports the entry point and reports which of the heavy
packages it pulled in (SQLAlchemy and Alembic cost more than everything else together).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = frozenset(
    {"sqlalchemy", "alembic", "starlette", "uvicorn", "httpx", "prometheus_client", "psycopg"}
)

PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def imported_by(*modules: str) -> set[str]:
    """The heavy top-level packages a fresh interpreter has after importing ``modules``."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *modules],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(done.stdout)) & HEAVY


@pytest.mark.parametrize(
    ("modules", "allowed"),
    [
        # `farmnode status`, `check-config`, `promote` and the parser itself
        (("farmnode.__main__",), set()),
        (("farmnode.config",), set()),
        # `farm-dispatcher check-config` and the parser; each other command imports its own
        (("dispatcher.__main__",), set()),
        # a worker answers from the snapshot it is sent: no database, no admin API, no
        # uvicorn (its HTTP/1.1 edge is its own); httpx comes with the probes' Health type
        (("dispatcher.worker",), {"httpx"}),
        # the ASGI aliases and the config readers both packages share
        (("dispatcher.asgi", "dispatcher.files"), set()),
    ],
    ids=["farmnode-cli", "farmnode-config", "dispatcher-cli", "worker", "shared"],
)
def test_a_light_entry_point_imports_no_heavy_package(
    modules: tuple[str, ...], allowed: set[str]
) -> None:
    assert imported_by(*modules) <= allowed


def test_the_probe_sees_a_heavy_import() -> None:
    """The guard above can fail: the store does import SQLAlchemy (and Alembic does not
    come with it: it is imported where the schema is read or changed)."""
    store = imported_by("dispatcher.backends.store")
    assert "sqlalchemy" in store
    assert "alembic" not in store
    assert imported_by("farmnode.daemon") >= {"prometheus_client", "httpx"}
