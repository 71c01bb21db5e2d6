"""This node's own files around a pg_rewind (:meth:`Instance.kept_from_rewind`), without a
server: pg_rewind makes the data directory a copy of the source's, files outside the WAL
included, so the configuration, the server log and the agent's records would become the
source's or vanish. The rewind is played by a function that does to the files what
pg_rewind does; the real one runs in ``test_postgresql.py`` and ``test_pg_failover.py``."""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest

from farmnode.pg.instance import (
    FORCE_MARKER,
    LAST_PRIMARY,
    NODE_FILES,
    SERVER_LOG,
    Instance,
)

OWN = {
    "postgresql.conf": "port = 5432\t# n2's own\n",
    "pg_hba.conf": "local all all trust\t# n2's own\n",
    SERVER_LOG: "n2's server log\n",
    LAST_PRIMARY: '{"node": "n1", "role": "primary", "sync": ["n2"]}',
}
SOURCE = {
    "postgresql.conf": "port = 5432\t# n1's\n",
    "pg_hba.conf": "local all all trust\t# n1's\n",
    "postgresql.auto.conf": "work_mem = '9MB'\t# n1's\n",
    SERVER_LOG: "n1's server log\n",
    LAST_PRIMARY: '{"node": "n2", "role": "primary", "sync": []}',
    FORCE_MARKER: '{"node": "n1"}',
}


def node(tmp_path: Path) -> Instance:
    data = tmp_path / "n2"
    data.mkdir(mode=0o700)
    for name, text in OWN.items():
        (data / name).write_text(text)
    return Instance(str(data), "/nonexistent", getpass.getuser(), 5432, str(tmp_path))


def rewind_from_source(instance: Instance) -> None:
    """What pg_rewind does to files outside the WAL: the source's copy of every file it
    has, and what only the target has removed (here, one file of each kind)."""
    for name, text in SOURCE.items():
        instance.file(name).write_text(text)
    instance.remove_file("pg_ident.conf")


def files(instance: Instance) -> dict[str, str]:
    return {p.name: p.read_text() for p in instance.path.iterdir()}


def test_own_files_are_back_and_the_sources_are_gone(tmp_path: Path) -> None:
    instance = node(tmp_path)
    with instance.kept_from_rewind():
        # single-user recovery reads the configuration in place; the node's files are away
        assert instance.file("postgresql.conf").read_text() == OWN["postgresql.conf"]
        assert not any(instance.exists(name) for name in NODE_FILES)
        assert instance.aside.is_dir()
        rewind_from_source(instance)
    assert files(instance) == OWN
    assert not instance.aside.exists()


def test_a_failed_rewind_puts_them_back_too(tmp_path: Path) -> None:
    instance = node(tmp_path)

    def failing_rewind() -> None:
        with instance.kept_from_rewind():
            rewind_from_source(instance)
            raise TimeoutError("pg_rewind took too long")

    with pytest.raises(TimeoutError):
        failing_rewind()
    assert files(instance) == OWN
    assert not instance.aside.exists()


def test_a_rewind_that_farmnode_never_finished_is_mended_by_the_next(tmp_path: Path) -> None:
    instance = node(tmp_path)
    interrupted = instance.kept_from_rewind()
    interrupted.__enter__()
    rewind_from_source(instance)  # ... and farmnode dies here, its files still aside
    restarted = Instance(instance.data_dir, "/nonexistent", instance.user, 5432, "/tmp")
    with restarted.kept_from_rewind():  # the next rewind puts them back first
        assert not any(restarted.exists(name) for name in NODE_FILES)
        rewind_from_source(restarted)
    assert files(restarted) == OWN
    assert not restarted.aside.exists()


def test_an_aside_left_half_filled_removes_nothing_it_lacks(tmp_path: Path) -> None:
    """farmnode died while filling the aside directory, so no rewind ran: the configuration
    in place is the node's own and stays (not the half-written copy), what was moved aside
    goes back, and what is not there is not taken for a file that did not exist."""
    instance = node(tmp_path)
    instance.aside.mkdir()
    (instance.aside / "postgresql.conf").write_text("port = 54")  # cut short by the crash
    instance.file(SERVER_LOG).rename(instance.aside / SERVER_LOG)
    instance.put_back()
    assert files(instance) == OWN
    assert not instance.aside.exists()


def test_nothing_aside_is_nothing_to_do(tmp_path: Path) -> None:
    instance = node(tmp_path)
    instance.put_back()
    assert files(instance) == OWN
