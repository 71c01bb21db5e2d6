"""The evaluator: rules, conditions, back-references, query strings and the list flags."""

from __future__ import annotations

import pytest

from dispatcher.redirect import RewriteRequest, compile_rules
from tests.redirect.support import NOW, program, request, run


def test_rules_do_nothing_unless_the_engine_is_on() -> None:
    rules = "RewriteRule ^/a /b [R]\n"
    for text in (
        rules,
        "RewriteEngine off\n" + rules,
        "RewriteEngine on\nRewriteEngine off\n" + rules,
    ):
        outcome = compile_rules(text).evaluate(request("/a"))
        assert (outcome.action, outcome.path, outcome.location) == ("none", "/a", None)


def test_no_rule_matching_changes_nothing() -> None:
    outcome = run("RewriteRule ^/a /b\n", "/other%20page", "x=1")
    assert outcome.action == "none"
    assert (outcome.path, outcome.query_string) == ("/other%20page", "x=1")
    assert (outcome.status, outcome.location, outcome.cookies, dict(outcome.env)) == (
        None,
        None,
        (),
        {},
    )


def test_pattern_sees_the_decoded_path_without_query() -> None:
    outcome = run("RewriteRule ^/a\\ b$ /matched\n", "/a%20b", "q=1")
    assert (outcome.action, outcome.path, outcome.query_string) == ("rewrite", "/matched", "q=1")
    assert run("RewriteRule q=1 /matched\n", "/a", "q=1").action == "none"


def test_substitution_replaces_the_whole_path() -> None:
    assert run("RewriteRule old /new\n", "/very/old/page").path == "/new"


def test_dash_substitution_changes_nothing_but_applies_flags() -> None:
    outcome = run("RewriteRule ^/a - [E=seen:yes]\n", "/a", "q=1")
    assert (outcome.action, outcome.path, outcome.query_string) == ("none", "/a", "q=1")
    assert dict(outcome.env) == {"seen": "yes"}


def test_negated_pattern_applies_when_it_does_not_match_and_has_no_groups() -> None:
    rules = "RewriteRule !^/(keep) /elsewhere/$1x\n"
    assert run(rules, "/keep").action == "none"
    assert run(rules, "/other").path == "/elsewhere/x"


def test_rule_nocase() -> None:
    assert run("RewriteRule ^/ABC$ /x [NC]\n", "/abc").path == "/x"
    assert run("RewriteRule ^/ABC$ /x\n", "/abc").action == "none"


# --- conditions ------------------------------------------------------------------------------


def test_conditions_are_checked_only_after_the_pattern_matched() -> None:
    asked: list[str] = []

    def sites(pool: str, req: RewriteRequest) -> str | None:
        asked.append(pool)
        return "http://site"

    rules = "RewriteCond ${site:eu} ^http\nRewriteRule ^/match$ /x\n"
    assert run(rules, "/nomatch", sites=sites).action == "none"
    assert asked == []
    assert run(rules, "/match", sites=sites).path == "/x"
    assert asked == ["eu"]


def test_conditions_belong_to_the_next_rule_only() -> None:
    rules = "RewriteCond %{HTTP_HOST} ^nothing$\nRewriteRule ^/a /first\nRewriteRule ^/a /second\n"
    assert run(rules, "/a").path == "/second"


def test_all_conditions_must_hold() -> None:
    rules = "RewriteCond %{QUERY_STRING} a\nRewriteCond %{QUERY_STRING} b\nRewriteRule ^ /x\n"
    assert run(rules, "/", "ab").path == "/x"
    assert run(rules, "/", "a").action == "none"


def test_or_conditions() -> None:
    rules = (
        "RewriteCond %{QUERY_STRING} ^a$ [OR]\nRewriteCond %{QUERY_STRING} ^b$\n"
        "RewriteCond %{REQUEST_METHOD} GET\nRewriteRule ^ /x\n"
    )
    assert run(rules, "/", "a").path == "/x"
    assert run(rules, "/", "b").path == "/x"
    assert run(rules, "/", "c").action == "none"
    assert run(rules, "/", "a", method="POST").action == "none"


def test_a_failing_trailing_or_condition_does_not_stop_the_rule() -> None:
    # Apache's loop quirk: [OR] on the last condition makes its failure harmless.
    assert run("RewriteCond %{QUERY_STRING} ^never$ [ornext]\nRewriteRule ^ /x\n").path == "/x"


def test_novary_is_accepted() -> None:
    assert run("RewriteCond %{HTTP_HOST} example [NV,NC]\nRewriteRule ^ /x\n").path == "/x"


@pytest.mark.parametrize(
    ("pattern", "text", "holds"),
    [
        ("abc", "xabcx", True),
        ("!abc", "xabcx", False),
        ("^ABC$", "abc", False),
        ("=abc", "abc", True),
        ("=abc", "abcd", False),
        ("!=abc", "abcd", True),
        ('=""', "", True),
        ('=""', "x", False),
        ("<b", "a", True),
        ("<b", "aa", False),  # mod_rewrite: the longer string is the greater one
        (">aa", "b", False),
        (">aa", "aaa", True),
        ("<=abc", "abc", True),
        (">=abc", "abd", True),
        (">=abd", "abc", False),
        ("-eq12", "12", True),
        ("-eq12", "12abc", True),  # atoi
        ("-eq12", "  +12", True),
        ("-ne12", "13", True),
        ("!-ne12", "12", True),
        ("-lt5", "4", True),
        ("-lt5", "5", False),
        ("-le5", "5", True),
        ("-gt5", "6", True),
        ("-ge5", "5", True),
        ("-ge5", "abc", False),
        ("-lt", "-lt", True),  # too short for an operator: a regex
    ],
)
def test_condition_patterns(pattern: str, text: str, holds: bool) -> None:
    rules = f"RewriteCond %{{ENV:t}} {pattern}\nRewriteRule ^ /yes\n"
    outcome = run(rules, "/", env={"t": text})
    assert (outcome.action == "rewrite") is holds


def test_nocase_on_string_comparisons() -> None:
    rules = "RewriteCond %{ENV:t} =ABC [NC]\nRewriteRule ^ /yes\n"
    assert run(rules, env={"t": "abc"}).path == "/yes"
    rules = "RewriteCond %{ENV:t} <b [NC]\nRewriteRule ^ /yes\n"
    assert run(rules, env={"t": "AA"}).path == "/yes"  # strcasecmp: no length-first rule


# --- back-references -------------------------------------------------------------------------


def test_rule_and_condition_back_references() -> None:
    rules = "RewriteCond %{HTTP_HOST} ^(www)\\.(.*)$\nRewriteRule ^/(\\w+)/(\\w+) /$2/$1/%2/%1/$0\n"
    assert run(rules, "/a/b").path == "/b/a/example.com/www//a/b"


def test_percent_n_comes_from_the_last_matched_regex_condition() -> None:
    rules = (
        "RewriteCond %{ENV:a} (x)\nRewriteCond %{ENV:b} (y)\nRewriteCond %{ENV:b} !(z)\n"
        "RewriteCond %{ENV:b} =y\nRewriteRule ^ /%1\n"
    )
    assert run(rules, env={"a": "x", "b": "y"}).path == "/y"


def test_missing_groups_expand_to_nothing() -> None:
    assert run("RewriteRule ^/(a)(b)?$ /$1-$2-$7-%1\n", "/a").path == "/a---"


def test_conditions_see_earlier_condition_and_rule_groups() -> None:
    rules = "RewriteCond %{ENV:a} (.+)\nRewriteCond %1-$1 ^x-y$\nRewriteRule ^/(y) /ok\n"
    assert run(rules, "/y", env={"a": "x"}).path == "/ok"


def test_expansion_is_a_single_pass() -> None:
    # A back-reference that holds expansion syntax is copied, never expanded again.
    rules = "RewriteCond %{QUERY_STRING} (.*)\nRewriteRule ^/(.*) /x?a=$1&b=%1 [NE,R]\n"
    outcome = run(rules, "/%25%7BHTTP_HOST%7D", "%251")
    assert outcome.location == "http://www.example.com/x?a=%{HTTP_HOST}&b=%251"


def test_backslash_escapes_in_substitutions() -> None:
    assert run("RewriteRule ^/(a) /\\$1\\%1\\\\\n", "/a").path == "/$1%251%5c"


def test_unclosed_braces_are_literal() -> None:
    assert run("RewriteRule ^/a /x%{HTTP_HOST\n", "/a").path == "/x%25%7bHTTP_HOST"
    assert run("RewriteRule ^/a /x${nocolon}\n", "/a").path == "/x$%7bnocolon%7d"


# --- query strings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("substitution", "flags", "query", "path", "final"),
    [
        ("/x", "", "a=1", "/x", "a=1"),
        ("/x?b=2", "", "a=1", "/x", "b=2"),
        ("/x?b=2", "[QSA]", "a=1", "/x", "b=2&a=1"),
        ("/x?b=2", "[QSA]", "", "/x", "b=2"),
        ("/x?", "", "a=1", "/x", ""),
        ("/x?", "[QSA]", "a=1", "/x", "a=1"),
        ("/x", "[QSD]", "a=1", "/x", ""),
        ("/x?b=2", "[QSD]", "a=1", "/x", "b=2"),
        ("/x?b=2", "[QSA,QSD]", "a=1", "/x", "b=2"),
        ("/x?a?b", "", "", "/x", "a?b"),
        ("/x?a?b", "[QSL]", "", "/x%3fa", "b"),
        ("/x?a=1&b=2?", "", "q=9", "/x%3fa=1&b=2", ""),
        ("/x?a=1?", "[QSA]", "q=9", "/x%3fa=1", "q=9"),
        ("/x?a=1&", "", "", "/x", "a=1"),
        ("/x?&", "[QSA]", "q=9&", "/x", "&&q=9"),
    ],
)
def test_query_string_handling(
    substitution: str, flags: str, query: str, path: str, final: str
) -> None:
    outcome = run(f"RewriteRule ^/a {substitution} {flags}\n", "/a", query)
    assert (outcome.action, outcome.path, outcome.query_string) == ("rewrite", path, final)


def test_later_rules_see_the_rewritten_query() -> None:
    rules = "RewriteRule ^/a /b?x=1\nRewriteCond %{QUERY_STRING} ^x=1$\nRewriteRule ^/b /c\n"
    assert (run(rules, "/a", "y").path, run(rules, "/a", "y").query_string) == ("/c", "x=1")


def test_a_query_with_spaces_after_an_internal_rewrite_is_forbidden() -> None:
    # Apache 2.4.56+ (AH10410): only an escaped redirect may carry it.
    rules = "RewriteRule ^/i/(.*) /x?v=$1\nRewriteRule ^/r/(.*) /x?v=$1 [R]\n"
    assert run(rules, "/i/a%20b").action == "forbidden"
    assert run(rules, "/r/a%20b").location == "http://www.example.com/x?v=a%20b"
    assert run(rules + "RewriteRule ^/n/(.*) /x?v=$1 [R,NE]\n", "/n/a%09b").status == 403


def test_a_question_mark_from_an_expansion_is_forbidden_unless_allowed() -> None:
    # Apache 2.4.60+ (CVE-2024-38474): a "?" that is not literal text in the substitution.
    assert run("RewriteRule ^/(.*) /x/$1\n", "/a%3Fb").action == "forbidden"
    assert run("RewriteRule ^/(.*) /x?q=$1\n", "/a%3Fb").query_string == "q=a?b"
    allowed = run("RewriteRule ^/(.*) /x/$1 [UnsafeAllow3F]\n", "/a%3Fb")
    assert (allowed.path, allowed.query_string) == ("/x/a", "b")
    assert run("RewriteRule ^/(.*) /x\\?$1\n", "/a").path == "/x"


# --- redirects ---------------------------------------------------------------------------------


def test_redirect_defaults_to_302_and_qualifies_relative_targets() -> None:
    outcome = run("RewriteRule ^/old$ /new [R]\n", "/old", "q=1")
    assert (outcome.action, outcome.status) == ("redirect", 302)
    assert outcome.location == "http://www.example.com/new?q=1"
    assert (outcome.path, outcome.query_string) == ("/new", "q=1")


@pytest.mark.parametrize(
    ("scheme", "port", "expected"),
    [
        ("http", None, "http://www.example.com/new"),
        ("http", 80, "http://www.example.com/new"),
        ("http", 8080, "http://www.example.com:8080/new"),
        ("https", None, "https://www.example.com/new"),
        ("https", 443, "https://www.example.com/new"),
        ("https", 80, "https://www.example.com:80/new"),
    ],
)
def test_relative_redirects_use_scheme_name_and_non_default_port(
    scheme: str, port: int | None, expected: str
) -> None:
    assert (
        run("RewriteRule ^/old$ new [R]\n", "/old", scheme=scheme, port=port).location == expected
    )


def test_redirect_to_an_ipv6_server_name() -> None:
    outcome = run("RewriteRule ^/a /b [R]\n", "/a", host="::1", port=8080)
    assert outcome.location == "http://[::1]:8080/b"


@pytest.mark.parametrize(
    ("flag", "status"),
    [("R", 302), ("R=301", 301), ("R=permanent", 301), ("R=seeother", 303), ("R=307", 307)],
)
def test_redirect_codes(flag: str, status: int) -> None:
    assert run(f"RewriteRule ^/a /b [{flag}]\n", "/a").status == status


def test_absolute_url_substitution_redirects_even_to_this_host() -> None:
    for target in ("http://other.example/x", "https://www.example.com/x", "HTTP://Other/x"):
        outcome = run(f"RewriteRule ^/a {target}\n", "/a")
        assert (outcome.action, outcome.status, outcome.location) == ("redirect", 302, target)


def test_other_schemes_are_local_paths_never_redirects() -> None:
    assert run("RewriteRule ^/a javascript:alert(1)\n", "/a").path == "/javascript:alert(1)"
    assert run("RewriteRule ^/a ftp://x/y\n", "/a").path == "/ftp://x/y"
    outcome = run("RewriteRule ^/a javascript:alert(1) [R]\n", "/a")
    assert outcome.location == "http://www.example.com/javascript:alert(1)"


def test_redirect_without_l_keeps_processing_on_the_absolute_url() -> None:
    rules = (
        "RewriteRule ^/a /b [R=301]\nRewriteRule ^/b /never\n"
        "RewriteRule ^http://www\\.example\\.com/b$ /c [R]\n"
    )
    outcome = run(rules, "/a")
    assert (outcome.status, outcome.location) == (302, "http://www.example.com/c")


def test_a_later_internal_rewrite_of_a_redirected_url() -> None:
    rules = "RewriteRule ^/a /b [R=301]\nRewriteRule ^http:// /local\n"
    outcome = run(rules, "/a")
    assert (outcome.action, outcome.path) == ("rewrite", "/local")


def test_non_redirect_r_codes_answer_the_status_and_stop() -> None:
    rules = "RewriteRule ^/a /ignored [R=404]\nRewriteRule ^ /never\n"
    outcome = run(rules, "/a", "q")
    assert (outcome.action, outcome.status, outcome.location) == ("status", 404, None)
    assert (outcome.path, outcome.query_string) == ("/a", "q")
    assert run("RewriteRule ^/a - [R=503]\n", "/a").status == 503


def test_forbidden_and_gone() -> None:
    assert (
        run("RewriteRule ^/a - [F]\n", "/a").action,
        run("RewriteRule ^/a - [F]\n", "/a").status,
    ) == (
        "forbidden",
        403,
    )
    gone = run("RewriteRule ^/a /x [G]\nRewriteRule ^ /never\n", "/a")
    assert (gone.action, gone.status) == ("gone", 410)


def test_flag_combinations_follow_apache() -> None:
    # The last status code set wins; a status rule never redirects.
    assert run("RewriteRule ^/a /b [G,R=301]\n", "/a").status == 301
    assert run("RewriteRule ^/a /b [G,R=301]\n", "/a").location is None
    assert run("RewriteRule ^/a /b [F,R]\n", "/a").status == 403


# --- the list flags ------------------------------------------------------------------------------


def test_last_and_end_stop_the_rules() -> None:
    for flag in ("L", "last", "END"):
        assert run(f"RewriteRule ^/a /b [{flag}]\nRewriteRule ^/b /c\n", "/a").path == "/b"
    assert run("RewriteRule ^/a /b\nRewriteRule ^/b /c\n", "/a").path == "/c"


def test_skip() -> None:
    rules = (
        "RewriteRule ^/a - [S=2]\nRewriteRule ^ /one\nRewriteRule ^ /two\nRewriteRule ^/a /three\n"
    )
    assert run(rules, "/a").path == "/three"
    assert run(rules, "/b").path == "/two"
    assert run("RewriteRule ^/a /b [S=99]\nRewriteRule ^ /never\n", "/a").path == "/b"


def test_chain_skips_the_rest_of_the_chain_when_a_link_fails() -> None:
    rules = (
        "RewriteRule ^/a(.*) /b$1 [C]\nRewriteRule ^/bx /c [C]\nRewriteRule ^ /chained\n"
        "RewriteRule ^(.*) $1-after\n"
    )
    assert run(rules, "/ax").path == "/chained-after"  # every link held
    assert run(rules, "/ay").path == "/by-after"  # the first held (and stays), the second not
    assert run(rules, "/z").path == "/z-after"  # the first failed: the whole chain is skipped


def test_next_restarts_until_nothing_matches() -> None:
    assert run("RewriteRule ^/(.*)_(.*)$ /$1-$2 [N]\n", "/a_b_c_d").path == "/a-b-c-d"


def test_next_loop_cap_answers_500() -> None:
    outcome = run("RewriteRule ^/(.*)$ /$1 [N=5]\n", "/a")
    assert (outcome.action, outcome.status) == ("status", 500)
    assert run("RewriteRule ^/a$ /a [N]\n", "/a").status == 500


def test_a_url_that_grows_without_bound_answers_500() -> None:
    assert run("RewriteRule ^/(.*)$ /x$1 [N]\n", "/a").status == 500


# --- paths Apache refuses before mod_rewrite runs -----------------------------------------------


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/a%zz", 400),
        ("/a%2", 400),
        ("/../etc", 400),
        ("/a/../../x", 400),
        ("/a%00b", 404),
        ("x", 400),
    ],
)
def test_paths_apache_refuses(path: str, status: int) -> None:
    outcome = run("RewriteRule ^ /x\n", path)
    assert (outcome.status, outcome.path) == (status, path)


@pytest.mark.parametrize(
    ("path", "seen"),
    [
        ("//a//b", "/a/b"),
        ("/a/./b/../c", "/a/c"),
        ("/a/%2e%2E/b", "/b"),
        ("/%41%7e", "/A~"),
        ("/a%2Fb", "/a/b"),
        ("/a%2F..%2Fb", "/b"),
        ("/a%25b", "/a%b"),
    ],
)
def test_rules_see_the_normalized_decoded_path(path: str, seen: str) -> None:
    outcome = run("RewriteRule ^(.*)$ - [E=seen:$1]\n", path)
    assert outcome.env["seen"] == seen


# --- environment ----------------------------------------------------------------------------


def test_env_flags_set_and_unset_and_are_seen_later() -> None:
    rules = (
        "RewriteRule ^ - [E=One:1,E=two:2,E=empty]\nRewriteRule ^ - [E=!two,E=three:%{ENV:one}x]\n"
        "RewriteCond %{ENV:ONE} =1\nRewriteRule ^ /ok\n"
    )
    outcome = run(rules, "/")
    assert outcome.path == "/ok"
    assert dict(outcome.env) == {"One": "1", "empty": "", "three": "1x"}


def test_env_reads_the_callers_environment() -> None:
    assert run("RewriteRule ^ /%{ENV:Pool}\n", env={"POOL": "eu"}).path == "/eu"


def test_program_source_is_kept() -> None:
    rules = "RewriteRule ^ /x\n"
    assert program(rules).source == "RewriteEngine on\n" + rules
    assert program(rules).evaluate(request("/"), now=NOW).path == "/x"
