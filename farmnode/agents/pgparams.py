"""The ``postgresql`` resource's parameters, checked, and the ``farmnode.conf`` they make.

:data:`PARAMS` is what :class:`farmnode.agents.postgresql.PostgresAgent` declares (the
table in ``docs/agents.md``); :func:`conf_settings` is what it writes into ``farmnode.conf``
on every role change: everything the roles need, the same on every node but the
``primary_conninfo``'s ``application_name`` and the primary's synchronous standbys.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any, Final

from farmnode.agents.base import Param
from farmnode.pg.formats import make_conninfo, render_sync_names
from farmnode.pg.health import parse_listen

MiB: Final = 1024 * 1024
_APP_NAME = re.compile(r"[A-Za-z0-9_.-]{1,63}")
_PG_SIZE = re.compile(r"\d+\s*(kB|MB|GB|TB)?")
_HOST = re.compile(r"[A-Za-z0-9_.:-]{1,253}")


def _absolute(value: str) -> str | None:
    return None if os.path.isabs(value) else "an absolute path"


def _port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else "a port 1-65535"


def _app_name(value: str) -> str | None:
    return None if _APP_NAME.fullmatch(value) else "1-63 letters, digits, '_', '.' or '-'"


def _host(value: str) -> str | None:
    return None if _HOST.fullmatch(value) else "a host name or address"


def _wal_size(value: str) -> str | None:
    return None if _PG_SIZE.fullmatch(value) else "a size such as 256MB or 1GB"


def _bytes(value: int) -> str | None:
    return None if value >= 0 else "a number of bytes >= 0"


def _listen(value: str) -> str | None:
    try:
        parse_listen(value)
    except ValueError as exc:
        return str(exc)
    return None


def _fence(value: object) -> str | None:
    expected = "a command: an argv list or a string, the program an absolute path"
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError:
            return expected
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        argv = list(value)
    else:
        return expected
    return None if argv and os.path.isabs(argv[0]) else expected


PARAMS: Final[tuple[Param, ...]] = (
    Param("data_dir", str, "the data directory", required=True, check=_absolute),
    Param("primary_host", str, "the primary's address (floating IP)", True, check=_host),
    Param("primary_port", int, "the primary's port (default: port)", check=_port),
    Param("bin_dir", str, "programs (/usr/lib/postgresql/VER/bin)", check=_absolute),
    Param("user", str, "OS user owning and running the cluster", default="postgres"),
    Param("port", int, "port PostgreSQL listens on", default=5432, check=_port),
    Param("listen", str, "listen_addresses", default="*"),
    Param("socket_dir", str, "unix socket directory", False, "/var/run/postgresql", _absolute),
    Param("replication_user", str, "role of standbys and pg_rewind", default="replicator"),
    Param("replication_password", str, "its password (none: trust, or ~/.pgpass)"),
    Param("application_name", str, "name on the primary (default: node)", check=_app_name),
    Param("synchronous", bool, "strict synchronous replication", default=True),
    Param("maximum_lag_on_failover", int, "bytes of lag still promoted", False, MiB, _bytes),
    Param("fence", object, "command run before promoting over a dead primary", check=_fence),
    Param("health_listen", str, "host:port of the HTTP health endpoints", check=_listen),
    Param("wal_keep_size", str, "WAL kept for standbys", default="256MB", check=_wal_size),
)


def conf_settings(
    v: Mapping[str, Any], app_name: str, sync_names: Sequence[str] = ()
) -> dict[str, str | int | bool]:
    """What ``farmnode.conf`` sets for the parameters ``v`` (checked, defaults filled in):
    everything the roles need."""
    conninfo = make_conninfo(
        host=v["primary_host"],
        port=v["primary_port"] or v["port"],
        user=v["replication_user"],
        password=v["replication_password"],
        application_name=app_name,
        connect_timeout=2,
    )
    return {
        "port": v["port"],
        "listen_addresses": v["listen"],
        "unix_socket_directories": v["socket_dir"],
        "wal_level": "replica",
        "hot_standby": True,
        "wal_log_hints": True,
        "full_page_writes": True,
        "wal_keep_size": v["wal_keep_size"],
        "max_wal_senders": 10,
        "synchronous_commit": "on",
        "synchronous_standby_names": render_sync_names(sync_names),
        "primary_conninfo": conninfo,
        "recovery_target_timeline": "latest",
        "wal_retrieve_retry_interval": "1s",
    }
