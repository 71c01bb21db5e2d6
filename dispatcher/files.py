"""Reading a file named by configuration without trusting it: regular, bounded, never blocking.

Used for the configuration files themselves, rewrite rule files, ``txt:``/``rnd:`` maps and
the IP-location databases.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

MAX_RULES_BYTES = 16 * 1024 * 1024  # a rewrite rule file


def open_regular_file(path: Path | str, limit: int) -> int:
    """A file descriptor of ``path``, which must be a regular file of at most ``limit`` bytes.

    Opened with ``O_NONBLOCK`` (a FIFO never blocks the caller) and checked with ``fstat``
    before anything is read. Raise :class:`OSError` whose ``strerror`` says what is wrong.
    The caller closes the descriptor.
    """
    text = os.fspath(path)
    if "\0" in text:
        raise OSError(errno.EINVAL, "a path without NUL characters")
    fd = os.open(text, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        _check_regular(os.fstat(fd), limit)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_regular(info: os.stat_result, limit: int) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise OSError(errno.EINVAL, "not a regular file (a FIFO, device or directory?)")
    if info.st_size > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes")


def read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``limit`` bytes.

    Opened and checked as :func:`open_regular_file` does, and read with a bound (a file
    that grows past ``limit`` while it is read is refused too). Raise :class:`OSError`
    whose ``strerror`` says what is wrong.
    """
    fd = open_regular_file(path, limit)
    try:
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise OSError(errno.EFBIG, f"larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


__all__ = ["MAX_RULES_BYTES", "open_regular_file", "read_regular_file"]
