"""Parsers for the options policies declare (:class:`~dispatcher.placement.policy.Option`).

Each returns a ``parse(raw, where)`` that gives the setting or raises
:class:`~dispatcher.errors.InvalidValue` naming ``where`` (``"pools.eu.load_max_age"``);
the configuration turns that into a :class:`~dispatcher.errors.ConfigError` naming the file.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from dispatcher.errors import InvalidValue


def number(low: float, high: float, what: str = "a number") -> Callable[[Any, str], float]:
    """A finite number from ``low`` to ``high`` (TOML integers accepted), as a float."""

    def parse(raw: Any, where: str) -> float:
        if (
            isinstance(raw, bool)
            or not isinstance(raw, int | float)
            or not math.isfinite(raw)
            or not low <= raw <= high
        ):
            raise InvalidValue(where, f"{what} from {low:g} to {high:g}, got {raw!r}")
        return float(raw)

    return parse


def seconds(low: float, high: float) -> Callable[[Any, str], float]:
    """A number of seconds from ``low`` to ``high``."""
    return number(low, high, "a number of seconds")
