"""Reading a file named by configuration without trusting it: regular, bounded, never blocking.

Used for the configuration files themselves, rewrite rule files, ``txt:``/``rnd:`` maps and
the IP-location databases.
"""

from __future__ import annotations

import errno
import os
import stat
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

MAX_RULES_BYTES = 16 * 1024 * 1024  # a rewrite rule file
#: The largest configuration file read (bytes).
MAX_CONFIG_BYTES = 4 * 1024 * 1024


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


def read_toml(file: Path, error: Callable[[str, str, str], Exception]) -> dict[str, Any]:
    """The TOML document in ``file``; ``error(file, "", expectation)`` is raised when it
    cannot be read or parsed (each package passes its own ``ConfigError``). The file must be
    a regular file of at most :data:`MAX_CONFIG_BYTES` (a FIFO or a device never hangs this)."""
    try:
        return tomllib.loads(read_regular_file(file, MAX_CONFIG_BYTES).decode("utf-8"))
    except FileNotFoundError:
        raise error(str(file), "", "a readable TOML file (no such file)") from None
    except OSError as exc:
        raise error(str(file), "", f"a readable TOML file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise error(str(file), "", f"UTF-8 text ({exc.reason})") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(str(file), "", f"valid TOML ({exc})") from None
    except RecursionError:
        raise error(str(file), "", "valid TOML (nested too deeply)") from None


def printable(text: str) -> str:
    """``text`` (a key path, a message quoting a value) fit for a terminal and a log line:
    characters that are not printable (NUL, ESC, a newline) are written as Python escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_RULES_BYTES",
    "open_regular_file",
    "printable",
    "read_regular_file",
    "read_toml",
]
