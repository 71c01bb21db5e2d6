"""The fast path (fastpath.py) answers exactly as the reference interpreter (engine.py).

``RewriteProgram.evaluate`` runs the rule set's compiled functions; ``engine.evaluate`` on the
same compiled rules is the interpreter ``explain()`` uses. On generated rule sets and
requests both must give the same outcome and ask the site selector the same questions in
the same order.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, reject
from hypothesis import strategies as st

from dispatcher.redirect import (
    Outcome,
    RewriteError,
    RewriteProgram,
    RewriteRequest,
    compile_rules,
    engine,
    load_rules,
)
from tests.redirect.support import NOW, request
from tests.redirect.test_properties import (
    SETTINGS,
    SITE_ANSWERS,
    prefix_programs,
    requests,
    rule_sets,
)

RULES50 = Path(__file__).parents[2] / "bench" / "rules50.conf"


def both(
    program: RewriteProgram, req: RewriteRequest, site: str | None, seed: int
) -> tuple[tuple[Outcome, list[str]], tuple[Outcome, list[str]]]:
    """(fast outcome, pools asked), (reference outcome, pools asked)."""
    answers = []
    for fast in (True, False):
        asked: list[str] = []

        def sites(pool: str, request: RewriteRequest, asked: list[str] = asked) -> str | None:
            asked.append(pool)
            return site

        rng = random.Random(seed)
        if fast:
            outcome = program.evaluate(req, sites=sites, now=NOW, rng=rng)
        else:
            compiled = program._compiled
            outcome = engine.evaluate(compiled, req, sites=sites, now=NOW, rng=rng)
        answers.append((outcome, asked))
    return answers[0], answers[1]


@SETTINGS
@given(rule_sets(), requests(), st.sampled_from(SITE_ANSWERS), st.integers(0, 2**32))
def test_fast_path_equals_the_interpreter(
    rules: str, req: RewriteRequest, site: str | None, seed: int
) -> None:
    try:
        program = compile_rules(rules)
    except RewriteError:
        reject()
    fast, reference = both(program, req, site, seed)
    assert fast == reference


@SETTINGS
@given(prefix_programs(), st.text(alphabet="/abz", max_size=8))
def test_fast_path_equals_the_interpreter_on_prefixes(program: RewriteProgram, path: str) -> None:
    req = RewriteRequest("GET", "http", "h", "h", 80, "/" + path, "a=1", "192.0.2.1")
    fast, reference = both(program, req, None, 0)
    assert fast == reference


CONDITION_LISTS = [
    ("%{HTTP_HOST} ^a [OR]", "%{HTTP_HOST} ^b [OR]", "%{QUERY_STRING} x"),
    ("%{HTTP_HOST} ^a [OR]", "%{QUERY_STRING} (x)"),
    ("%{QUERY_STRING} (x) [OR]",),
    ("%{QUERY_STRING} !x [OR]", "%{HTTP_HOST} ^(a)", "%{QUERY_STRING} =ax [NC,OR]"),
    ("%{QUERY_STRING} ^(.)(.)", "$1%2 -gt3 [OR]", "%{HTTP_HOST} >b"),
]


@SETTINGS
@given(
    st.lists(st.sampled_from(CONDITION_LISTS), min_size=1, max_size=3),
    st.sampled_from(["a", "b", "ab"]),
    st.sampled_from(["", "x", "ax", "X12", "9x"]),
)
def test_condition_chains_agree(chains: list[tuple[str, ...]], host: str, query: str) -> None:
    lines = ["RewriteEngine on"]
    for n, chain in enumerate(chains):
        lines += [f"RewriteCond {cond}" for cond in chain]
        lines.append(f"RewriteRule ^/(.*) /r{n}/%1-%2-$1?q=%1 [QSA]")
    program = compile_rules("\n".join(lines))
    fast, reference = both(program, request("/p", query, host=host), None, 0)
    assert fast == reference


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/bench/path", "x=1"),
        ("/shop4/basket", "region=us4"),
        ("/shop4/basket", "region=eu4"),
        ("/retired/section17/old/page", ""),
        ("/campaign/7/spring", "utm=mail"),
        ("/campaign/7/Spring", ""),
        ("/wp-admin/x", ""),
        ("/index.html", ""),
        ("/Docs/ReadMe", "a=%20"),
        ("/favicon.ico", ""),
        ("/caf%C3%A9/%2e%2e/x", ""),
    ],
)
@pytest.mark.parametrize("site", [None, "http://eu.example:8080/"])
def test_the_benchmark_rules_agree(path: str, query: str, site: str | None) -> None:
    program = load_rules(RULES50)
    fast, reference = both(program, request(path, query), site, 0)
    assert fast == reference


SCOPE_HEADERS = [
    [(b"host", b"www.example.com"), (b"user-agent", b"wrk")],
    [(b"Host", b"Example.COM:8080"), (b"user-agent", b"BadBot/1.0")],
    [(b"host", b"a"), (b"HOST", b"b"), (b"x-dup", b"1"), (b"X-Dup", b"2")],
    [(b"host", b""), (b"host", b"example.com")],
    [(b"user-agent", b"evilcrawler")],
    [],
]


@pytest.mark.parametrize("headers", SCOPE_HEADERS)
@pytest.mark.parametrize(
    ("method", "raw_path", "query"),
    [
        ("GET", b"/bench/path", b"x=1"),
        ("TRACE", b"/bench/path", b""),
        ("GET", b"/shop1/a", b"region=us1"),
        ("GET", b"/index.html", b""),
        ("GET", b"/retired/section3/x?y", b"z=%20"),
        ("GET", b"/Docs/ReadMe", b""),
    ],
)
@pytest.mark.parametrize("site", [None, "http://eu.example:8080/"])
def test_evaluate_scope_equals_evaluate_from_scope(
    headers: list[tuple[bytes, bytes]], method: str, raw_path: bytes, query: bytes, site: str | None
) -> None:
    """The dispatcher's entry point answers as the view built from the scope, interpreted."""
    program = load_rules(RULES50)
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": raw_path.decode(),
        "raw_path": raw_path,
        "query_string": query,
        "server": ("10.0.0.5", 8000),
        "client": ("192.0.2.7", 51515),
        "headers": headers,
    }
    answers = []
    for entry in ("scope", "interpreter"):
        asked: list[str] = []

        def sites(pool: str, request: RewriteRequest, asked: list[str] = asked) -> str | None:
            asked.append(pool)
            return site

        if entry == "scope":
            outcome = program.evaluate_scope(scope, sites)
        else:
            req = RewriteRequest.from_scope(scope)
            outcome = engine.evaluate(program._compiled, req, sites=sites, now=None, rng=None)
        answers.append((outcome, asked))
    assert answers[0] == answers[1]


@SETTINGS
@given(prefix_programs(), st.text(alphabet="/abz", max_size=8))
def test_index_candidates_are_the_rules_that_could_match(
    program: RewriteProgram, path: str
) -> None:
    """Every rule without a prefix (or chained), and those whose prefix starts the path."""
    uri = "/" + path
    rules = program._compiled.rules
    expected = [
        i
        for i, rule in enumerate(rules)
        if rule.prefix is None or rule.flags.chain or uri.startswith(rule.prefix)
    ]
    assert list(program._compiled.index.candidates(uri)) == expected
