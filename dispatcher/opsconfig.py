"""Operational settings of ``[dispatcher]``: the audit trail's retention and TLS files.

Kept apart from :mod:`dispatcher.config` (which calls :func:`ops_settings`) so that
neither module grows past a readable size.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from dispatcher.errors import InvalidValue
from dispatcher.tlsfiles import ReloadableTls, TlsFiles, server_context, tls_files

DEFAULT_AUDIT_RETENTION = 90 * 86_400.0
MIN_RETENTION = 60.0
MAX_RETENTION = 10 * 366 * 86_400.0
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}
DURATION = re.compile(r"\A(?:\d{1,9}(?:\.\d{1,6})?[smhdw])+\Z")
_PART = re.compile(r"(\d{1,9}(?:\.\d{1,6})?)([smhdw])")

TLS_KEYS = (
    "tls_certificate",
    "tls_key",
    "admin_tls_certificate",
    "admin_tls_key",
    "admin_tls_client_ca",
)


def duration(value: Any, field_name: str, low: float, high: float) -> float:
    """Seconds from a number, or a string like ``"90d"``, ``"12h"``, ``"1h30m"``
    (units s, m, h, d, w), from ``low`` to ``high``."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and DURATION.match(value.strip()):
        seconds = sum(float(n) * UNITS[u] for n, u in _PART.findall(value.strip()))
    if seconds is None or not math.isfinite(seconds) or not low <= seconds <= high:
        raise InvalidValue(
            field_name,
            f'seconds, or a duration like "90d" or "12h" (units s m h d w), from {low:g} s'
            f" to {high:g} s, got {value!r}"[:300],
        )
    return seconds


def ops_settings(raw: Mapping[str, Any], path: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The values of :data:`TLS_KEYS` and ``audit_retention``; ``FARM_AUDIT_RETENTION``
    wins over the file."""
    if "FARM_AUDIT_RETENTION" in env:
        retention = duration(
            _number_or_text(env["FARM_AUDIT_RETENTION"]),
            "FARM_AUDIT_RETENTION",
            MIN_RETENTION,
            MAX_RETENTION,
        )
    else:
        retention = duration(
            raw.get("audit_retention", DEFAULT_AUDIT_RETENTION),
            f"{path}.audit_retention",
            MIN_RETENTION,
            MAX_RETENTION,
        )
    values: dict[str, Any] = {"audit_retention": retention}
    for key in TLS_KEYS:
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise InvalidValue(f"{path}.{key}", f"the path of a PEM file, got {value!r}"[:300])
        values[key] = None if value is None else Path(value)
    return values


def _number_or_text(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text.strip()


def anchor_tls(settings: Any, base_dir: Path) -> Any:
    """``settings`` (:class:`~dispatcher.config.DispatcherSettings`) with its TLS paths
    relative to ``base_dir``, each listener's files checked (:func:`listener_tls`)."""
    anchored = {
        key: base_dir / getattr(settings, key)
        for key in TLS_KEYS
        if getattr(settings, key) is not None
    }
    settings = replace(settings, **anchored)
    for listener in ("public", "admin"):
        files = listener_tls(settings, listener)
        if files is not None:
            server_context(files)  # raises InvalidValue naming the setting
    return settings


def listener_tls(settings: Any, listener: str) -> TlsFiles | None:
    """The TLS files of the ``public`` or ``admin`` listener, or ``None`` (plain HTTP)."""
    p = "dispatcher"
    if listener == "public":
        return tls_files(
            settings.tls_certificate,
            settings.tls_key,
            f"{p}.tls_certificate",
            f"{p}.tls_key",
        )
    return tls_files(
        settings.admin_tls_certificate,
        settings.admin_tls_key,
        f"{p}.admin_tls_certificate",
        f"{p}.admin_tls_key",
        settings.admin_tls_client_ca,
        f"{p}.admin_tls_client_ca",
    )


def admin_tls(settings: Any) -> ReloadableTls | None:
    """The admin listener's reloadable TLS context, or ``None`` (plain HTTP)."""
    files = listener_tls(settings, "admin")
    return None if files is None else ReloadableTls(files)
