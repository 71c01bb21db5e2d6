"""The admin API's body bounds, pure: the nesting scan agrees with the JSON it measures."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dispatcher.admin_input import MAX_DEPTH, json_depth

TRICKY = st.text(alphabet='[]{}"\\ ab\n\u00e9', max_size=12)  # brackets, quotes, escapes
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TRICKY
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY, inner, max_size=3),
    max_leaves=60,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


def nest(value: Any, levels: int) -> Any:
    for i in range(levels):
        value = [value] if i % 2 else {"[{": value}
    return value


@given(VALUES, st.integers(0, 2 * MAX_DEPTH), st.booleans())
def test_the_scan_measures_what_json_nests(value: Any, levels: int, ascii_only: bool) -> None:
    nested = nest(value, levels)
    body = json.dumps(nested, ensure_ascii=ascii_only).encode()
    scanned = json_depth(body)
    if depth(nested) > MAX_DEPTH:
        assert scanned == depth(nested)
    else:
        assert scanned <= MAX_DEPTH


def test_a_hundred_thousand_brackets_are_measured_not_parsed() -> None:
    assert json_depth(b"[" * 100_000) == 100_000
    assert json_depth(b'["' + b"[" * 100_000 + b'"]') == 1  # inside a string: not nesting
    assert json_depth(b'["\\"' + b"[" * 100 + b'\\\\", [[]]]') == 3  # escaped quotes
