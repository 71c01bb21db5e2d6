"""PostgreSQL's text notations, read and written without a server: LSNs, quoted
``postgresql.conf`` values and libpq connection strings, ``synchronous_standby_names``, the
output of ``pg_controldata`` and ``postgres --version``, and why a server's log says it
stopped. Pure functions: :mod:`farmnode.pg.instance` and the agent use them on what the
server and its programs print."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from farmnode.process import last_line

_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")
_SYNC = re.compile(r"\s*(?:(?:FIRST|ANY)\s+(\d+)\s*\((.*)\)|(.*))\s*", re.IGNORECASE | re.DOTALL)


def log_reason(log: str) -> str:
    """Why a server that would not start stopped, from the end of its log: the last
    ``FATAL``/``PANIC`` line (its last line is only "database system is shut down"), else
    the last line."""
    for line in reversed(log.splitlines()):
        if "FATAL:" in line or "PANIC:" in line:
            return line.strip()[:300]
    return last_line(log) or "no output"


def parse_lsn(text: str) -> int:
    """``'0/3000060'`` -> 50331744. Raises :class:`ValueError` for anything else."""
    match = _LSN.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an LSN: {text!r}")
    return int(match[1], 16) << 32 | int(match[2], 16)


def format_lsn(value: int) -> str:
    """50331744 -> ``'0/3000060'`` (PostgreSQL's notation)."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def conf_quote(value: str) -> str:
    """``value`` as a quoted string of ``postgresql.conf`` (quotes doubled, backslashes
    escaped: the configuration parser reads backslash escapes in quoted strings)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def conninfo_quote(value: str) -> str:
    """``value`` as a libpq connection-string value (``'...'`` with ``\\'`` and ``\\\\``)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def make_conninfo(**fields: str | int | None) -> str:
    """A libpq connection string of the fields that are not ``None``."""
    return " ".join(
        f"{key}={conninfo_quote(str(value))}" for key, value in fields.items() if value is not None
    )


def render_sync_names(names: Sequence[str]) -> str:
    """``synchronous_standby_names`` naming ``names`` in priority order: ``FIRST 1 ("n2")``;
    empty (asynchronous) without names."""
    if not names:
        return ""
    quoted = ", ".join('"' + name.replace('"', '""') + '"' for name in names)
    return f"FIRST 1 ({quoted})"


def parse_sync_names(value: str) -> list[str]:
    """The standby names of a ``synchronous_standby_names`` value (any of PostgreSQL's three
    forms: ``FIRST n (...)``, ``ANY n (...)``, ``a, b``); ``*`` stays ``*``."""
    match = _SYNC.fullmatch(value)
    body = "" if match is None else (match[2] if match[2] is not None else match[3] or "")
    names: list[str] = []
    item, quoted, i = "", False, 0
    while i < len(body):
        char = body[i]
        if quoted and char == '"':
            if body[i + 1 : i + 2] == '"':
                item, i = item + '"', i + 2
                continue
            quoted = False
        elif char == '"' and not quoted:
            quoted = True
        elif char == "," and not quoted:
            names.append(item.strip())
            item = ""
        else:
            item += char
        i += 1
    names.append(item.strip())
    return [name for name in names if name]


def render_conf(settings: Mapping[str, str | int | bool], header: str) -> str:
    """A configuration file of ``settings`` (strings quoted, booleans ``on``/``off``)."""
    lines = [f"# {line}" for line in header.splitlines()]
    for key, value in settings.items():
        if isinstance(value, bool):
            text = "on" if value else "off"
        elif isinstance(value, int):
            text = str(value)
        else:
            text = conf_quote(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def parse_controldata(output: str) -> dict[str, str]:
    """``pg_controldata`` output (in the C locale) as a mapping of its labels."""
    fields: dict[str, str] = {}
    for line in output.splitlines():
        label, sep, value = line.partition(":")
        if sep:
            fields[label.strip()] = value.strip()
    return fields


def postgres_major(version_output: str) -> str | None:
    """``'postgres (PostgreSQL) 15.8 (Debian ...)'`` -> ``'15'``."""
    match = re.search(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?", version_output)
    if match is None:
        return None
    major = int(match[1])
    return f"{major}.{match[2]}" if major < 10 and match[2] is not None else str(major)
