"""Files named by configuration are read as bounded regular files: never a hang, never a
memory blow-up, a clear reason otherwise (``dispatcher.files`` and the rewrite maps)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dispatcher.files import read_regular_file
from dispatcher.redirect.maps import CHECK_INTERVAL, TextMap


def test_a_regular_file_is_read_up_to_its_limit(tmp_path: Path) -> None:
    path = tmp_path / "m"
    path.write_bytes(b"a" * 100)
    assert read_regular_file(path, 100) == b"a" * 100
    with pytest.raises(OSError, match="larger than 99 bytes"):
        read_regular_file(path, 99)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_special_files_are_refused_at_once(tmp_path: Path, kind: str) -> None:
    path = {"fifo": tmp_path / "fifo", "dev-zero": Path("/dev/zero"), "directory": tmp_path}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    started = time.monotonic()
    with pytest.raises(OSError, match="not a regular file"):
        read_regular_file(path, 1 << 20)
    assert time.monotonic() - started < 1.0


def test_a_nul_or_a_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="without NUL"):
        read_regular_file(Path("a\x00b"), 10)
    with pytest.raises(FileNotFoundError):
        read_regular_file(tmp_path / "absent", 10)


def test_a_map_replaced_by_a_fifo_at_run_time_empties_without_blocking(tmp_path: Path) -> None:
    now = [0.0]
    path = tmp_path / "sites.map"
    path.write_text("eu http://127.0.0.2:9001\n", encoding="latin-1")
    text_map = TextMap(path, lambda: now[0], pick=False)
    assert text_map.entries == {"eu": "http://127.0.0.2:9001"}
    path.unlink()
    os.mkfifo(path)
    now[0] += CHECK_INTERVAL
    started = time.monotonic()
    text_map.refresh()
    assert time.monotonic() - started < 1.0
    assert text_map.entries == {}
    path.unlink()
    path.write_text("us http://127.0.0.3:9001\n", encoding="latin-1")
    now[0] += CHECK_INTERVAL
    text_map.refresh()
    assert text_map.entries == {"us": "http://127.0.0.3:9001"}
