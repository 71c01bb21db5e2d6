"""Property-based tests: no input text and no request makes the engine misbehave.

- compiling any text raises nothing but RewriteError subclasses;
- evaluating any request against generated rule sets raises nothing, answers a coherent
  Outcome, never a Location with CR/LF, controls or a scheme other than http(s), never a
  Set-Cookie with controls, and gives the same outcome with and without the prefix index.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from dispatcher.redirect import (
    Outcome,
    RewriteError,
    RewriteProgram,
    RewriteRequest,
    compile_rules,
)
from tests.redirect.support import NOW

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- any text ---------------------------------------------------------------------------------

DIRECTIVES = ["RewriteEngine", "RewriteRule", "RewriteCond", "RewriteMap", "RewriteOptions", "#"]
TOKENS = [
    "on", "off", "^/(.*)$", "/x/$1", "-", "[R=301,L]", "[NC,OR]", "[", "]", "\"", "'", "\\",
    "%{HTTP_HOST}", "%{ENV:x}", "${site:eu|d}", "${lc:$1}", "int:tolower", "txt:rel.txt",
    "site:", "[CO=a:b:c:5]", "[E=a:1]", "[S=1,C]", "=x", "-gt3", "!-f", "(?i)a", "[[:alpha:]]",
    "\\Q", "(?<n>a)", "[B=&,BNE=/]", "[R=299]", "${", "%{", "}", "\n", "\\\n", " ",
]  # fmt: skip


def rule_like_text() -> st.SearchStrategy[str]:
    token = st.sampled_from(DIRECTIVES + TOKENS) | st.text(max_size=6)
    line = st.lists(token, max_size=6).map(" ".join)
    return st.lists(line, max_size=8).map("\n".join)


@SETTINGS
@given(st.text() | rule_like_text())
def test_compiling_any_text_raises_only_rewrite_errors(text: str) -> None:
    result: RewriteProgram | RewriteError
    try:
        result = compile_rules(text)
    except RewriteError as error:
        result = error
    if isinstance(result, RewriteError):
        assert str(result)
    else:
        assert result.source == text


# --- generated rule sets and requests -------------------------------------------------------

PATTERNS = ["^/(.*)$", "^/a", "!^/b", "(.*)", "^/(\\w+)/(.*)", "^$", "x", "^/[^/]+$", "^/A(.)"]
TESTS = [
    "%{HTTP_HOST}", "%{QUERY_STRING}", "%{REQUEST_URI}", "%{HTTP:X-Test}", "$1", "%1",
    "${site:eu|none}", "${lc:$1}", "%{ENV:e}", "%{THE_REQUEST}", "%{TIME_HOUR}",
]  # fmt: skip
COND_PATTERNS = ["^www", "!^$", "=abc", "<m", ">=b", "-gt5", "(.*)", "^(\\w+)=(.*)$", "!x"]
COND_FLAGS = ["", "[NC]", "[OR]", "[NC,OR]", "[NV]"]
PIECES = [
    "/", "$1", "$2", "%1", "?", "?a=1", "http://", "https://h.example", "javascript:", "#",
    "${site:eu}", "${site:eu|http://fb.example}", "%{HTTP:X-Test}", "%{QUERY_STRING}", "\\?",
    "${lc:$1|d}", "\\ ", "%{ENV:e}", "ftp://x", "x", "&b=2", "..", "%",
]  # fmt: skip
FLAGS = [
    "R", "R=301", "R=404", "L", "END", "NC", "QSA", "QSD", "QSL", "NE", "B", "BNP", "BCTLS",
    "B=/", "C", "S=1", "N=3", "F", "G", "E=e:$1", "E=!e", "CO=c:$1:d:5", "UnsafeAllow3F",
]  # fmt: skip


@st.composite
def rule_sets(draw: st.DrawFn) -> str:
    lines = ["RewriteEngine on", "RewriteMap lc int:tolower"]
    for _ in range(draw(st.integers(1, 6))):
        for _ in range(draw(st.integers(0, 2))):
            test = draw(st.sampled_from(TESTS))
            pattern = draw(st.sampled_from(COND_PATTERNS))
            lines.append(f"RewriteCond {test} {pattern} {draw(st.sampled_from(COND_FLAGS))}")
        pattern = draw(st.sampled_from(PATTERNS))
        substitution = "".join(draw(st.lists(st.sampled_from(PIECES), min_size=1, max_size=4)))
        flags = draw(st.lists(st.sampled_from(FLAGS), max_size=3, unique=True))
        field = f" [{','.join(flags)}]" if flags else ""
        lines.append(f'RewriteRule {pattern} "{substitution}"{field}')
    return "\n".join(lines) + "\n"


NASTY = "aAbBxw/.?#&=+ \r\n\t\x7f\xe9é€\U0001f600\ud800:;@[]{}$\\\"'<>|~^`"
ESCAPES = ["%0d%0a", "%3F", "%2F", "%20", "%25", "%C3%A9", "/a", "/b"]
REFUSED = ["/..", "%00", "%zz", "%"]  # Apache answers 400 or 404 before any rule
ALPHABET = st.sampled_from(list(NASTY) * 3 + ESCAPES * 3 + REFUSED)


@st.composite
def requests(draw: st.DrawFn) -> RewriteRequest:
    start = draw(st.sampled_from(["/"] * 7 + [""]))  # a path must start with "/"
    path = start + "".join(draw(st.lists(ALPHABET, max_size=8)))
    query = "".join(draw(st.lists(ALPHABET, max_size=8)))
    host = draw(st.sampled_from(["www.example.com", "EVIL\r\nX: y", "", "::1", "h:8080"]))
    return RewriteRequest(
        method=draw(st.sampled_from(["GET", "POST", "G\r\nET"])),
        scheme=draw(st.sampled_from(["http", "https", "javascript", ""])),
        host=host,
        server_name=host.split(":")[0] if host.count(":") == 1 else host,
        server_port=draw(st.sampled_from([80, 443, 8080, 0])),
        path=path,
        query_string=query,
        remote_addr=draw(st.sampled_from(["192.0.2.1", "2001:db8::1", ""])),
        remote_port=draw(st.integers(0, 65535)),
        headers={"x-test": draw(st.text(max_size=8))},
        env={"e": draw(st.text(max_size=6))},
    )


SITE_ANSWERS = [None, "http://127.0.0.2:9001", "https://eu.example", "javascript:alert(1)"]
SITE_ANSWERS += ["http://evil\r\nSet-Cookie: x", ""]


def check(outcome: Outcome) -> None:
    """Everything an outcome promises, whatever the input."""
    statuses = {"redirect": range(300, 400), "forbidden": [403], "gone": [410]}
    if outcome.action in ("none", "rewrite"):
        assert (outcome.status, outcome.location) == (None, None)
    elif outcome.action in statuses:
        assert outcome.status in statuses[outcome.action]
    else:
        assert outcome.action == "status"
        assert outcome.status is not None
    if outcome.location is not None:
        assert outcome.action == "redirect"
        assert outcome.location.split("://", 1)[0].lower() in ("http", "https")
        assert outcome.location.isascii()
        assert not any(c < " " or c == "\x7f" for c in outcome.location)
    if outcome.action == "rewrite":
        assert outcome.path.startswith("/")
        assert not any(c <= " " or c == "\x7f" or c > "~" for c in outcome.query_string)
    for cookie in outcome.cookies:
        assert cookie.isascii()
        assert not any(c < " " or c == "\x7f" for c in cookie)


@SETTINGS
@given(rule_sets(), requests(), st.sampled_from(SITE_ANSWERS), st.integers(0, 2**32))
def test_any_request_gives_a_safe_coherent_outcome(
    rules: str, req: RewriteRequest, site: str | None, seed: int
) -> None:
    try:
        program = compile_rules(rules)
    except RewriteError:
        reject()

    def sites(pool: str, request: RewriteRequest) -> str | None:
        return site

    outcome = program.evaluate(req, sites=sites, now=NOW, rng=random.Random(seed))
    check(outcome)
    explained = program.explain(req, sites=sites, now=NOW, rng=random.Random(seed))
    assert explained.outcome == outcome  # the prefix index never changes an answer
    assert explained.format()


def prefix_programs() -> st.SearchStrategy[RewriteProgram]:
    prefixes = st.text(alphabet="/ab", min_size=1, max_size=4).map(lambda p: "^/" + p)
    rule = st.tuples(
        prefixes, st.sampled_from(["", "(.*)", "x$"]), st.sampled_from(["/$1z", "-", "/a"])
    )
    flags = st.sampled_from(["", " [C]", " [L]", " [N=4]", " [S=1]", " [E=x:$0]"])
    line = st.tuples(rule, flags).map(
        lambda rf: f"RewriteRule {''.join(rf[0][:2])} {rf[0][2]}{rf[1]}"
    )
    return st.lists(line, min_size=1, max_size=10).map(
        lambda lines: compile_rules("RewriteEngine on\n" + "\n".join(lines))
    )


@SETTINGS
@given(prefix_programs(), st.text(alphabet="/abz", max_size=8))
def test_prefix_index_agrees_with_trying_every_rule(program: RewriteProgram, path: str) -> None:
    req = RewriteRequest("GET", "http", "h", "h", 80, "/" + path, "", "192.0.2.1")
    outcome = program.evaluate(req, now=NOW)
    check(outcome)
    assert program.explain(req, now=NOW).outcome == outcome
