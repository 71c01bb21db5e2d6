"""A small TOML writer for tests: any document of TOML values, strings escaped (NUL and
control characters survive), everything written as inline values under the top-level keys."""

from __future__ import annotations

import math
from typing import Any


def toml_string(text: str) -> str:
    out = []
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    raise TypeError(type(value))


def dumps(doc: dict[str, Any]) -> str:
    """``doc`` as TOML text that parses back to ``doc``."""
    return "".join(f"{toml_string(key)} = {toml_value(value)}\n" for key, value in doc.items())
