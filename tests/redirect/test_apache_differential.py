"""Differential test: the rewrite engine against the real Apache httpd.

Every rule set of the corpus (`tests/redirect/corpus/*.toml`) becomes a virtual host of one
Apache started for this module on 127.0.0.1. Each case's request goes to Apache, and the
same rules, compiled by `dispatcher.redirect`, evaluate the same request (its ASGI scope
built as uvicorn builds it from the bytes that were sent). Apache is the oracle; the engine
must give the same answer:

- a redirect: the same status and `Location`;
- an answer of mod_rewrite's own (F, G, R=4xx/5xx, errors): the same status;
- a request handed on to be served: both rewrote it, to the same path and query string
  (compared %-decoded, as Apache keeps them), or neither did;

and always the same `Set-Cookie` headers (an expiry compared as minutes from now).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

import pytest

from dispatcher.redirect import (
    Outcome,
    RewriteProgram,
    RewriteRequest,
    RuleSyntaxError,
    compile_rules,
)
from tests.redirect.apache import ApacheServer, Exchange, VirtualHost, find_apache, require_apache
from tests.redirect.corpus import Case, RuleSet, corpus_features, load_corpus

MIN_CASES = 150
RULESETS = load_corpus()
RULESETS_BY_NAME = {ruleset.name: ruleset for ruleset in RULESETS}
CASES = [case for ruleset in RULESETS for case in ruleset.cases]
CASE_PARAMS = [
    pytest.param(
        case,
        id=case.full_id,
        marks=[pytest.mark.xfail(reason=case.differs, strict=True)] if case.differs else [],
    )
    for case in CASES
]
# Cases whose comparison ran in this session (filled by test_engine_matches_apache).
_COMPARED: set[str] = set()

SANITY = VirtualHost(
    "sanity.test",
    """RewriteEngine On
RewriteRule ^/old$ /new [R=301,L]
RewriteRule ^/forbid - [F]
RewriteRule ^/inside$ /target?x=1 [L]
RewriteRule ^/addr$ /addr/%{REMOTE_ADDR} [L]
RewriteRule ^/cookie$ - [CO=k:v:sanity.test]
""",
)
_EXPIRES = re.compile(r"(?i)(;\s*expires=)([^;]*)")


def rule_text(ruleset: RuleSet) -> str:
    """The rule set as one virtual host's directives (placeholders still in)."""
    return "RewriteEngine On\n" + ruleset.rules


@pytest.fixture(scope="module")
def apache() -> Iterator[ApacheServer]:
    binary = require_apache()
    vhosts = [SANITY, *(VirtualHost(r.vhost, rule_text(r)) for r in RULESETS)]
    files = {name: text for ruleset in RULESETS for name, text in ruleset.files}
    with ApacheServer.running(binary, vhosts, files) as server:
        yield server


class Programs:
    """The engine's compiled rule sets, compiled once each, on first use."""

    def __init__(self, base_dir: Path, port: int) -> None:
        self._base_dir = base_dir
        self._port = port
        self._compiled: dict[str, RewriteProgram | RuleSyntaxError] = {}

    def text(self, ruleset: RuleSet) -> str:
        return ruleset.render(rule_text(ruleset), self._port)

    def get(self, ruleset: RuleSet) -> RewriteProgram:
        if ruleset.name not in self._compiled:
            try:
                self._compiled[ruleset.name] = compile_rules(
                    self.text(ruleset), filename=f"case-{ruleset.name}", base_dir=self._base_dir
                )
            except RuleSyntaxError as exc:
                self._compiled[ruleset.name] = exc
        program = self._compiled[ruleset.name]
        if isinstance(program, RuleSyntaxError):
            pytest.fail(
                f"the engine rejects rules Apache accepts: {program}\n{self.text(ruleset)}",
                pytrace=False,
            )
        return program


@pytest.fixture(scope="module")
def programs(apache: ApacheServer) -> Programs:
    # Relative map paths resolve against Apache's ServerRoot, which holds the map files.
    return Programs(apache.root, apache.port)


@dataclass(frozen=True, slots=True)
class Answer:
    """What a request got, in the terms both sides share."""

    kind: Literal["redirect", "status", "rewrite", "pass"]  # pass: no rule changed the URL
    status: int | None = None
    location: str | None = None
    path: str | None = None
    query: str | None = None
    cookies: tuple[str, ...] = ()

    def describe(self) -> str:
        shown = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)]
        return " ".join(s for s in shown if not s.endswith("=None"))


def normalise_cookies(values: tuple[str, ...], now: datetime) -> tuple[str, ...]:
    """Set-Cookie values with an `expires=` date written as minutes from `now`."""

    def relative(m: re.Match[str]) -> str:
        try:
            when = datetime.strptime(m[2].strip(), "%a, %d-%b-%Y %H:%M:%S GMT")
        except ValueError:
            return m[0]  # any other format shows up as a difference
        minutes = round((when.replace(tzinfo=UTC) - now).total_seconds() / 60)
        return f"{m[1]}<now{minutes:+d}min>"

    return tuple(_EXPIRES.sub(relative, value) for value in values)


def apache_answer(exchange: Exchange) -> Answer:
    response = exchange.response
    date = response.get("Date")
    now = parsedate_to_datetime(date) if date else datetime.now(UTC)
    cookies = normalise_cookies(response.get_all("Set-Cookie"), now)
    if handed_on := exchange.handed_on:
        kind, path = handed_on
        # A URL no rule changed is the request's own: Apache's copy is normalised, the
        # engine's as sent, so only the query is compared.
        shown = path if kind == "rewrite" else None
        return Answer(kind, path=shown, query=exchange.query, cookies=cookies)
    location = response.get("Location")
    if location is not None:
        return Answer("redirect", response.status, location, cookies=cookies)
    return Answer("status", response.status, cookies=cookies)


def engine_answer(outcome: Outcome, now: datetime) -> Answer:
    cookies = normalise_cookies(tuple(outcome.cookies), now)
    if outcome.action == "none":
        return Answer("pass", query=outcome.query_string, cookies=cookies)
    if outcome.action == "rewrite":
        path = unquote(outcome.path, encoding="latin-1")  # the engine's is %-encoded
        return Answer("rewrite", path=path, query=outcome.query_string, cookies=cookies)
    if outcome.action == "redirect" and outcome.location is not None:
        return Answer("redirect", outcome.status, outcome.location, cookies=cookies)
    status = {"forbidden": 403, "gone": 410}.get(outcome.action, outcome.status)
    return Answer("status", status, cookies=cookies)


def asgi_scope(exchange: Exchange, port: int) -> dict[str, Any]:
    """The ASGI scope uvicorn builds for the request that was sent to Apache."""
    request = exchange.request
    raw_path, _, query = request.target.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": request.protocol.removeprefix("HTTP/"),
        "server": ("127.0.0.1", port),
        "client": exchange.client,
        "scheme": "http",
        "method": request.method,
        "root_path": "",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode("latin-1"),
        "query_string": query.encode("latin-1"),
        "headers": [
            (name.lower().encode("latin-1"), value.strip(" \t").encode("latin-1"))
            for name, value in request.headers
        ],
    }


def send(apache: ApacheServer, ruleset: RuleSet, case: Case) -> Exchange:
    host = ruleset.render(case.host, apache.port)
    return apache.request(case.method, case.target, host, case.headers, case.protocol, case.source)


def mismatch_report(
    case: Case,
    program: RewriteProgram,
    exchange: Exchange,
    request: RewriteRequest,
    expected: Answer,
    actual: Answer,
) -> str:
    differing = [
        f"{f.name}: apache={getattr(expected, f.name)!r} engine={getattr(actual, f.name)!r}"
        for f in fields(Answer)
        if getattr(expected, f.name) != getattr(actual, f.name)
    ]
    sent = exchange.request.encode().decode("latin-1").rstrip().replace("\r\n", "\n    ")
    rules = program.source.rstrip().replace("\n", "\n    ")
    trace = "\n    ".join(exchange.trace) or "(none)"
    explained = program.explain(request).format().rstrip().replace("\n", "\n    ")
    return (
        f"{case.full_id}: the engine differs from Apache\n"
        f"  differs in:\n    " + "\n    ".join(differing) + "\n"
        f"  apache: {expected.describe()}\n"
        f"  engine: {actual.describe()}\n"
        f"  sent from {exchange.client[0]}:{exchange.client[1]}:\n    {sent}\n"
        f"  rules:\n    {rules}\n"
        f"  mod_rewrite trace:\n    {trace}\n"
        f"  engine request: {request}\n"
        f"  engine explanation:\n    {explained}"
    )


def test_corpus_has_enough_cases() -> None:
    assert len(CASES) >= MIN_CASES, f"the corpus has {len(CASES)} cases, fewer than {MIN_CASES}"


REQUIRED = {
    "rule flag": {"R", "L", "END", "NC", "QSA", "QSD", "NE", "B", "CO", "E", "F", "G", "S", "C",
                  "N"},
    "redirect form": {"R", "R=temp", "R=permanent", "R=seeother", "R=3xx", "R=4xx", "R=5xx"},
    "cond flag": {"NC", "OR", "NV"},
    "cond operator": {"regex", "!", "=", "<", ">", "<=", ">=", "-eq", "-ne", "-lt", "-le", "-gt",
                      "-ge"},
    "variable": {"HTTP_HOST", "HTTP_USER_AGENT", "HTTP_COOKIE", "HTTP_REFERER", "HTTP:",
                 "REQUEST_URI", "REQUEST_METHOD", "QUERY_STRING", "REMOTE_ADDR", "HTTPS",
                 "REQUEST_SCHEME", "SERVER_NAME", "SERVER_PORT", "THE_REQUEST", "TIME",
                 "TIME_YEAR", "TIME_MON", "TIME_DAY", "TIME_HOUR", "TIME_MIN", "TIME_SEC",
                 "TIME_WDAY", "ENV:"},
    "map type": {"txt", "rnd", "int:tolower", "int:toupper", "int:escape", "int:unescape"},
}  # fmt: skip


def test_corpus_covers_every_feature() -> None:
    found = corpus_features(RULESETS)
    missing = {kind: sorted(REQUIRED[kind] - found[kind]) for kind in REQUIRED}
    assert not any(missing.values()), f"the corpus never uses: {missing}"


def test_apache_answers_hand_checked_cases(apache: ApacheServer) -> None:
    """Apache itself behaves as expected, so a broken set-up cannot pass vacuously."""
    host = f"sanity.test:{apache.port}"

    moved = apache.request("GET", "/old?q=1", host)
    assert (moved.response.status, moved.response.get("Location")) == (
        301,
        f"http://{host}/new?q=1",
    )
    assert apache_answer(moved).kind == "redirect"

    assert apache_answer(apache.request("GET", "/forbid", host)) == Answer("status", 403)

    inside = apache.request("GET", "/inside?y=2", host)
    assert inside.response.status == 404
    assert apache_answer(inside) == Answer("rewrite", path="/target", query="x=1")

    other = apache.request("GET", "/elsewhere?z", host)
    assert other.handed_on == ("pass", "/elsewhere")
    assert apache_answer(other) == Answer("pass", query="z")

    aliased = apache.request("GET", "/addr", host, source="127.0.0.2")
    assert aliased.client[0] == "127.0.0.2"
    assert aliased.handed_on == ("rewrite", "/addr/127.0.0.2")

    cookie = apache.request("GET", "/cookie", host)
    assert cookie.response.get_all("Set-Cookie") == ("k=v; path=/; domain=sanity.test",)

    # A name no rule set claims lands on the default host, where mod_rewrite is off.
    stray = apache.request("GET", "/old", f"nobody.invalid:{apache.port}")
    assert stray.response.status == 404
    assert stray.trace == ()


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_engine_matches_apache(apache: ApacheServer, programs: Programs, case: Case) -> None:
    ruleset = RULESETS_BY_NAME[case.ruleset]
    exchange = send(apache, ruleset, case)
    expected = apache_answer(exchange)
    _COMPARED.add(case.full_id)  # from here on, any failure is a verdict on the engine
    program = programs.get(ruleset)
    request = RewriteRequest.from_scope(asgi_scope(exchange, apache.port))
    now = datetime.now(UTC)
    actual = engine_answer(program.evaluate(request), now)
    if actual != expected:
        report = mismatch_report(case, program, exchange, request, expected, actual)
        pytest.fail(report, pytrace=False)


def test_every_selected_case_was_compared(request: pytest.FixtureRequest) -> None:
    """Runs last: every selected case reached its comparison, and a full run had 150+."""
    if find_apache() is None:
        require_apache()  # skips, or fails under CI
    selected = {
        item.callspec.id
        for item in request.session.items
        if isinstance(item, pytest.Function) and item.originalname == "test_engine_matches_apache"
    }
    missing = sorted(selected - _COMPARED)
    assert not missing, f"{len(missing)} selected cases never reached the comparison: {missing}"
    if len(selected) == len(CASES):
        assert len(_COMPARED) >= MIN_CASES, f"only {len(_COMPARED)} cases were compared"
