"""Whether this system can run a data directory: the checks of ``farmnode check-config``
(the directory, its owner, ``PG_VERSION``, the programs of that major version, the socket
directory), made before any server runs. :class:`CheckFailed` names the parameter that does
not fit."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

from dispatcher.files import read_regular_file
from farmnode.errors import FarmnodeError
from farmnode.pg.formats import postgres_major
from farmnode.process import child_environment


class CheckFailed(FarmnodeError):
    """The system does not fit a parameter: ``param`` and what was ``expected``."""

    def __init__(self, param: str, expected: str) -> None:
        self.param = param
        self.expected = expected
        super().__init__(f"{param}: {expected}")


def pg_version(data_dir: str) -> str:
    """The data directory's ``PG_VERSION``: a small regular file, read without blocking (a
    FIFO there must not hang ``check-config``); :class:`OSError` when it is not one."""
    data = read_regular_file(Path(data_dir, "PG_VERSION"), 64)
    return data.decode("ascii", "replace").strip()


def default_bin_dir(data_dir: str, bin_dir: str | None) -> str:
    """``bin_dir``, or ``/usr/lib/postgresql/<PG_VERSION>/bin``; :class:`CheckFailed` when
    PG_VERSION cannot be read."""
    if bin_dir:
        return bin_dir
    try:
        version = pg_version(data_dir)
    except OSError:
        raise CheckFailed(
            "data_dir",
            f"a data directory with PG_VERSION ({data_dir}/PG_VERSION cannot be read: "
            "not made by initdb?)",
        ) from None
    return f"/usr/lib/postgresql/{version}/bin"


def check_system(data_dir: str, user: str, bin_dir: str | None, socket_dir: str) -> None:
    """Raise :class:`CheckFailed` unless ``data_dir`` is a data directory owned by ``user``
    with ``PG_VERSION`` and ``postgresql.conf``, ``bin_dir`` (or the default) holds the
    programs of that major version, and ``socket_dir`` exists."""
    data = Path(data_dir)
    if not data.is_dir():
        raise CheckFailed("data_dir", f"an existing data directory ({data_dir} does not exist)")
    try:
        owner = pwd.getpwnam(user)
    except KeyError:
        raise CheckFailed("user", f"an OS user ({user!r} does not exist)") from None
    uid = data.stat().st_uid
    if uid != owner.pw_uid:
        raise CheckFailed(
            "data_dir", f"a data directory owned by {user} ({data_dir} is owned by {_user(uid)})"
        )
    programs = default_bin_dir(data_dir, bin_dir)
    version = pg_version(data_dir)
    if not data.joinpath("postgresql.conf").is_file():
        raise CheckFailed(
            "data_dir",
            f"a data directory holding postgresql.conf ({data_dir} has none; farmnode manages "
            "clusters whose configuration lives in the data directory, as initdb makes them)",
        )
    for program in ("postgres", "pg_ctl", "pg_rewind", "pg_controldata"):
        if not os.access(Path(programs, program), os.X_OK):
            raise CheckFailed(
                "bin_dir",
                f"PostgreSQL {version}'s programs ({programs}/{program} is missing; the data "
                f"directory is version {version})",
            )
    major = _binary_major(Path(programs, "postgres"))
    if major != version:
        raise CheckFailed(
            "bin_dir",
            f"PostgreSQL {version}, the version of {data_dir} (PG_VERSION), but "
            f"{programs}/postgres is version {major or 'unknown'}",
        )
    if not Path(socket_dir).is_dir():
        raise CheckFailed("socket_dir", f"an existing directory ({socket_dir} does not exist)")


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _binary_major(postgres: Path) -> str | None:
    try:
        done = subprocess.run(  # noqa: S603 - a fixed argv
            [str(postgres), "--version"],
            capture_output=True,
            text=True,
            env=child_environment(),
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return postgres_major(done.stdout)
