"""The log formats: one line per record whatever the message, timestamps always, the
request id and the process's fields on every line (dispatcher.logsetup)."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.logsetup import (
    MAX_MESSAGE,
    JsonFormatter,
    TextFormatter,
    configure_logging,
    escaped,
    request_id,
    timestamp,
)

RFC3339_MS = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
HOSTILE = (
    "evil\n2025-01-01T00:00:00.000Z ERROR   webfarm.server: forged\r\x1b[31mred\x00\u2028\u0085"
)


def record(message: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError(HOSTILE)
        except ValueError:
            exc_info = sys.exc_info()
    made = logging.LogRecord("webfarm.test", logging.WARNING, __file__, 1, message, args, exc_info)
    made.__dict__.update(extra)
    return made


def test_timestamps_are_rfc3339_utc_with_milliseconds() -> None:
    assert timestamp(0.0) == "1970-01-01T00:00:00.000Z"
    assert timestamp(1_700_000_000.9999) == "2023-11-14T22:13:20.999Z"
    created = 1_746_091_800.123
    stamp = timestamp(created)
    assert RFC3339_MS.fullmatch(stamp)
    parsed = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(parsed.timestamp() - created) < 0.001


def test_a_json_line_has_the_documented_keys() -> None:
    line = JsonFormatter({"worker": 3}).format(record("hello %s", "world", fields={"site": "eu"}))
    doc = json.loads(line)
    assert RFC3339_MS.fullmatch(doc.pop("time"))
    assert doc == {
        "level": "warning",
        "logger": "webfarm.test",
        "message": "hello world",
        "pid": doc["pid"],
        "worker": 3,
        "site": "eu",
    }
    assert isinstance(doc["pid"], int)


def test_extra_fields_cannot_replace_the_core_keys() -> None:
    fields = {"message": "forged", "time": "then", "level": "debug", "x": 1}
    doc = json.loads(JsonFormatter().format(record("real", fields=fields)))
    assert (doc["message"], doc["level"], doc["x"]) == ("real", "warning", 1)
    assert doc["time"] != "then"


def test_the_request_id_is_on_the_lines_of_its_request() -> None:
    token = request_id.set("abc-123")
    try:
        doc = json.loads(JsonFormatter().format(record("inside")))
        text = TextFormatter().format(record("inside"))
    finally:
        request_id.reset(token)
    assert doc["request_id"] == "abc-123"
    assert " webfarm.test [request_id=abc-123]: inside" in text
    assert "request_id" not in JsonFormatter().format(record("outside"))


def test_a_text_line_reads_as_before_with_a_timestamp() -> None:
    line = TextFormatter().format(record("plain %d", 5))
    stamp, rest = line.split(" ", 1)
    assert RFC3339_MS.fullmatch(stamp)
    assert rest == "WARNING webfarm.test: plain 5"


def test_a_hostile_message_stays_on_its_line_in_both_formats() -> None:
    text = TextFormatter().format(record("%s", HOSTILE))
    assert len(text.splitlines()) == 1
    assert "\x1b" not in text
    assert "\\x1b" in text
    assert "\\n2025" in text
    line = JsonFormatter().format(record("%s", HOSTILE))
    assert len(line.splitlines()) == 1
    assert line.isascii()
    assert json.loads(line)["message"] == HOSTILE


def test_a_traceback_follows_on_marked_continuation_lines() -> None:
    text = TextFormatter().format(record("failed", exc=True))
    first, *rest = text.splitlines()
    assert first.endswith("webfarm.test: failed")
    assert rest
    assert all(line.startswith("  | ") for line in rest)
    # the exception's own line breaks continue the traceback: marked, never a forged line
    assert "  | 2025-01-01T00:00:00.000Z ERROR   webfarm.server: forged" in rest
    assert "\x1b" not in text
    doc = json.loads(JsonFormatter().format(record("failed", exc=True)))
    assert "Traceback" in doc["exception"]
    assert HOSTILE.rstrip() in doc["exception"]


def test_a_huge_message_is_cut_and_says_so() -> None:
    huge = "x" * 1_000_000
    doc = json.loads(JsonFormatter().format(record("%s", huge)))
    assert len(doc["message"]) < MAX_MESSAGE + 100
    assert doc["message"].endswith("[cut: 1000000 characters in all]")
    assert len(TextFormatter().format(record("%s", "\x00" * 100_000))) < 5 * MAX_MESSAGE


def test_a_lone_surrogate_or_any_unicode_is_written_as_ascii_json() -> None:
    line = JsonFormatter().format(record("%s", "caf\u00e9 \udcff \U0001f600"))
    assert line.isascii()
    assert json.loads(line)["message"] == "caf\u00e9 \udcff \U0001f600"


@given(st.text(max_size=300), st.text(max_size=20))
def test_any_message_is_one_parseable_line(message: str, field: str) -> None:
    made = record("%s", message, fields={"f": field})
    line = JsonFormatter().format(made)
    assert len(line.splitlines()) == 1
    doc = json.loads(line)
    assert (doc["message"], doc["f"]) == (message, field)
    text = TextFormatter().format(made)
    assert len(text.splitlines()) == 1
    assert text.isprintable()


@given(st.text(max_size=200))
def test_escaped_text_is_printable_and_unchanged_when_it_was(text: str) -> None:
    out = escaped(text)
    assert out.isprintable()
    if text.isprintable():
        assert out == text


def test_configure_logging_leaves_a_root_logger_others_set_up_alone() -> None:
    # pytest's own handlers are on the root logger: a test run is not ours to change
    assert logging.getLogger().handlers
    level = logging.getLogger().level
    assert configure_logging("debug", "json") is False
    assert logging.getLogger().level == level


def test_configure_logging_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match="verbose"):
        configure_logging("verbose", "text")
