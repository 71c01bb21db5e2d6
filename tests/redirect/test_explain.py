"""Explanations: every rule tried, every condition, what happened next, and the outcome."""

from __future__ import annotations

from dispatcher.redirect import RewriteRequest, compile_rules
from tests.redirect.support import NOW, program, request

RULES = """RewriteCond %{HTTP_HOST} ^www\\.(.+)$ [NC]
RewriteRule ^/old/(.*) http://%1/new/$1 [R=301,L]
RewriteRule ^/a(.*) /b$1 [C]
RewriteRule ^/bx /c
RewriteRule ^/(\\w+) ${site:eu}/$1 [R]
RewriteRule ^ - [S=1]
RewriteRule ^ /never
RewriteRule ^/(.*) /final/$1?x=\\%C3\\%A9 [E=x:1,QSA]
"""


def no_site(pool: str, req: RewriteRequest) -> str | None:
    return None


def test_explanation_steps() -> None:
    explanation = program(RULES).explain(request("/ay", "q=1"), sites=no_site, now=NOW)
    assert explanation.outcome == program(RULES).evaluate(request("/ay", "q=1"), now=NOW)
    lines = [step.line for step in explanation.steps]
    assert lines == [3, 4, 5, 6, 7, 9]
    first, chained, broken, site, skip, final = explanation.steps
    assert (first.matched, first.applied, first.subject) == (False, False, "/ay")
    assert (chained.matched, chained.applied, chained.result, chained.query) == (
        True,
        True,
        "/by",
        "q=1",
    )
    assert (broken.matched, broken.subject) == (False, "/by")
    assert (site.matched, site.applied) == (True, False)
    assert site.notes == ("no site for pool 'eu' and no default: rule does not apply",)
    assert skip.notes == ("skipping rule(s) at line 8 (S=1)",)
    assert (final.result, final.query, final.flags) == (
        "/final/by",
        "x=%C3%A9&q=1",
        ("E=x:1", "QSA"),
    )


def test_explanation_records_conditions() -> None:
    explanation = program(RULES).explain(request("/old/x"), now=NOW)
    (step,) = explanation.steps
    (cond,) = step.conditions
    assert (cond.line, cond.test, cond.expanded, cond.pattern, cond.flags, cond.matched) == (
        2,
        "%{HTTP_HOST}",
        "www.example.com",
        "^www\\.(.+)$",
        ("NC",),
        True,
    )
    assert step.notes == ("stop (L)",)


def test_format_reads_as_a_story() -> None:
    text = program(RULES).explain(request("/ay", "q=1"), sites=no_site, now=NOW).format()
    assert text.splitlines() == [
        "request: GET http://www.example.com/ay?q=1 from 192.0.2.10",
        "line 3: RewriteRule ^/old/(.*) http://%1/new/$1 [R=301,L]",
        "  pattern '^/old/(.*)' against '/ay': no match",
        "line 4: RewriteRule ^/a(.*) /b$1 [C]",
        "  pattern '^/a(.*)' against '/ay': matched",
        "  substitution '/b$1' -> '/by' with query 'q=1'",
        "line 5: RewriteRule ^/bx /c",
        "  pattern '^/bx' against '/by': no match",
        "line 6: RewriteRule ^/(\\w+) ${site:eu}/$1 [R]",
        "  pattern '^/(\\w+)' against '/by': matched",
        "  no site for pool 'eu' and no default: rule does not apply",
        "line 7: RewriteRule ^ - [S=1]",
        "  pattern '^' against '/by': matched",
        "  skipping rule(s) at line 8 (S=1)",
        "line 9: RewriteRule ^/(.*) /final/$1?x=\\%C3\\%A9 [E=x:1,QSA]",
        "  pattern '^/(.*)' against '/by': matched",
        "  substitution '/final/$1?x=\\%C3\\%A9' -> '/final/by' with query 'x=%C3%A9&q=1'",
        "outcome: rewritten to /final/by?x=%C3%A9&q=1; env x=1",
    ]


def test_format_of_conditions_chains_and_statuses() -> None:
    rules = (
        "RewriteCond %{QUERY_STRING} ^secret$\nRewriteRule ^/a /x [C]\nRewriteRule ^ /chained\n"
        "RewriteRule ^/a - [F,CO=c:v:d]\n"
    )
    text = program(rules).explain(request("/a", "open"), now=NOW).format()
    assert "  condition line 2: '%{QUERY_STRING}' -> 'open' vs '^secret$': false" in text
    assert "  conditions not met: rule not applied" in text
    assert "  chain broken: skipping rule(s) at line 4" in text
    assert "  stop: answer status 403" in text
    assert text.endswith("outcome: 403 Forbidden; Set-Cookie: c=v; path=/; domain=d")


def test_format_of_redirects_loops_and_refusals() -> None:
    redirect = program("RewriteRule ^/(.*) https://x.example/$1 [R=308]").explain(request("/p"))
    assert redirect.format().endswith("outcome: redirect 308 to https://x.example/p")
    loop = program("RewriteRule ^/(a*)$ /a$1 [N=3]").explain(request("/a")).format()
    assert "restart from the first rule (N), round 2" in loop
    assert loop.endswith("500: N restarted the rules 3 times\noutcome: status 500")
    refused = program("RewriteRule ^ /x").explain(request("/a%zz")).format()
    assert "note: the path '/a%zz' is rejected before any rule runs (400)" in refused


def test_format_when_nothing_runs() -> None:
    assert compile_rules("RewriteRule ^ /x").explain(request("/")).format() == (
        "request: GET http://www.example.com/ from 192.0.2.10\n"
        "note: RewriteEngine is off\n"
        "outcome: no change: /"
    )
    assert compile_rules("RewriteEngine on").explain(request("/", "q")).notes == (
        "there are no rules",
    )


def test_format_shows_controls_and_utf8_readably() -> None:
    text = program("RewriteRule ^/(.*) /t/$1 [NE]").explain(request("/caf%C3%A9%0A")).format()
    assert "against '/café\\x0a'" in text
