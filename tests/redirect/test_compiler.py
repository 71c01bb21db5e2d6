"""Compiling: flags, conditions, maps and references resolved once, every mistake named."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatcher.redirect import RuleSyntaxError, compile_rules
from dispatcher.redirect.compiler import MAX_ROUNDS, Compiler, RuleFlags
from dispatcher.redirect.maps import InternalMap, SiteMap, TextMap
from dispatcher.redirect.parser import parse
from dispatcher.redirect.template import CondRef, MapRef, RuleRef, VarRef


def flags_of(flag_field: str) -> RuleFlags:
    parsed = parse(f"RewriteRule ^/a /b {flag_field}", "f")
    return Compiler(parsed, None, None, lambda: 0.0).run().rules[0].flags


def error_of(text: str, **kwargs: object) -> RuleSyntaxError:
    with pytest.raises(RuleSyntaxError) as caught:
        compile_rules("RewriteEngine on\n" + text, **kwargs)  # type: ignore[arg-type]
    return caught.value


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("[L]", RuleFlags(last=True)),
        ("[last]", RuleFlags(last=True)),
        ("[END]", RuleFlags(end=True)),
        ("[C]", RuleFlags(chain=True)),
        ("[chain]", RuleFlags(chain=True)),
        ("[NC]", RuleFlags(nocase=True)),
        ("[nocase]", RuleFlags(nocase=True)),
        ("[QSA]", RuleFlags(qsappend=True)),
        ("[qsappend]", RuleFlags(qsappend=True)),
        ("[QSD]", RuleFlags(qsdiscard=True)),
        ("[qsdiscard]", RuleFlags(qsdiscard=True)),
        ("[QSL]", RuleFlags(qslast=True)),
        ("[NE]", RuleFlags(noescape=True)),
        ("[noescape]", RuleFlags(noescape=True)),
        ("[UnsafeAllow3F]", RuleFlags(allow3f=True)),
        ("[R]", RuleFlags(redirect=302)),
        ("[redirect]", RuleFlags(redirect=302)),
        ("[R=301]", RuleFlags(redirect=301)),
        ("[R=permanent]", RuleFlags(redirect=301)),
        ("[R=temp]", RuleFlags(redirect=302)),
        ("[redirect=seeother]", RuleFlags(redirect=303)),
        ("[R=308]", RuleFlags(redirect=308)),
        ("[R=404]", RuleFlags(status=404)),
        ("[R=503]", RuleFlags(status=503)),
        ("[R=204]", RuleFlags(status=204)),
        ("[F]", RuleFlags(status=403)),
        ("[forbidden]", RuleFlags(status=403)),
        ("[G]", RuleFlags(status=410)),
        ("[gone]", RuleFlags(status=410)),
        ("[F,R]", RuleFlags(status=403)),
        ("[G,R=301]", RuleFlags(status=301)),
        ("[R=301,G]", RuleFlags(status=410)),
        ("[N]", RuleFlags(rounds=MAX_ROUNDS)),
        ("[next=5]", RuleFlags(rounds=5)),
        ("[S=2]", RuleFlags(skip=2)),
        ("[skip=3]", RuleFlags(skip=3)),
        ("[NS,DPI,UnsafePrefixStat]", RuleFlags()),
        ("[l, r = 301 ]", None),
        ("[r=301, l]", None),
        ("[r=301,l]", RuleFlags(redirect=301, last=True)),
        ('"[R=301, L]"', RuleFlags(redirect=301, last=True)),
    ],
)
def test_rule_flags(field: str, expected: RuleFlags | None) -> None:
    if expected is None:
        with pytest.raises(RuleSyntaxError):
            flags_of(field)
    else:
        assert flags_of(field) == expected


def escaped(field: str, text: str) -> str | None:
    escape = flags_of(field).escape
    return None if escape is None else escape(text)


def test_b_flags_build_an_escaper() -> None:
    assert escaped("[L]", "a b") is None
    assert escaped("[BNP]", "a b") is None
    assert escaped("[B]", "a b/c") == "a+b%2fc"
    assert escaped("[B,BNP]", "a b") == "a%20b"
    assert escaped("[B=/]", "a b/c") == "a b%2fc"
    assert escaped("[B,BNE=/]", "a b/c") == "a+b/c"
    assert escaped("[BCTLS]", "a b\n/\xe9") == "a+b%0a/\xe9"


def test_env_and_cookie_flags_keep_their_order() -> None:
    flags = flags_of("[E=a:1,env=b:2,CO=n:v:d,cookie=m:w:d]")
    assert [t.source for t in flags.env] == ["a:1", "b:2"]
    assert [t.source for t in flags.cookies] == ["n:v:d", "m:w:d"]


@pytest.mark.parametrize(
    ("field", "fragment"),
    [
        ("[P]", "proxy"),
        ("[proxy]", "proxy"),
        ("[PT]", "passthrough"),
        ("[H=foo]", "handler"),
        ("[T=text/plain]", "type"),
        ("[Q]", "unknown flag 'Q'"),
        ("[R=299]", "invalid HTTP response code '299'"),
        ("[R=306]", "invalid HTTP response code '306'"),
        ("[R=418]", "invalid HTTP response code '418'"),
        ("[R=abc]", "invalid HTTP response code 'abc'"),
        ("[R=103]", "1xx status"),
        ("[S=x]", "S= needs a number"),
        ("[N=0]", "at least 1"),
        ("[N=-1]", "N= needs a number"),
        ("[E]", "E needs"),
        ("[CO]", "CO needs"),
        ("[BNE]", "BNE needs"),
    ],
)
def test_bad_flags_are_named(field: str, fragment: str) -> None:
    error = error_of(f"\nRewriteRule ^/a /b {field}")
    assert error.line == 3
    assert fragment in error.message


@pytest.mark.parametrize(
    ("cond", "fragment"),
    [
        ("%{REQUEST_FILENAME} -f", "file test '-f'"),
        ("%{REQUEST_FILENAME} !-d", "file test '-d'"),
        ("%{REQUEST_FILENAME} -s", "file test"),
        ("%{REQUEST_FILENAME} -l", "file test"),
        ("%{REQUEST_FILENAME} -L", "file test"),
        ("%{REQUEST_FILENAME} -h", "file test"),
        ("%{REQUEST_FILENAME} -x", "file test"),
        ("%{REQUEST_URI} -F", "file test"),
        ("%{REQUEST_URI} -U", "file test"),
        ('expr "%{REQUEST_URI} =~ /x/"', "ap_expr"),
        ("%{HTTP_HOST} x [XYZ]", "unknown flag 'xyz'"),
        ("%{NO_SUCH_THING} x", "unknown variable %{NO_SUCH_THING}"),
        ("%{HTTP_X_FORWARDED_FOR} x", "use %{HTTP:Header-Name}"),
        ("%{SSL:SSL_CIPHER} x", "TLS layer"),
        ("%{LA-U:REMOTE_USER} x", "look-ahead"),
        ("%{DOCUMENT_ROOT} x", "no filesystem"),
        ("%{ENV:} x", "needs a name"),
        ("%{HTTP_HOST} (unclosed", "cannot compile"),
    ],
)
def test_bad_conditions_are_named_at_their_own_line(cond: str, fragment: str) -> None:
    error = error_of(f"RewriteCond {cond}\nRewriteRule ^/a /b")
    assert error.line == 2
    assert fragment in error.message


@pytest.mark.parametrize(
    ("substitution", "fragment"),
    [
        ("/x/%{BOGUS}", "unknown variable %{BOGUS}"),
        ("/x/${nomap:key}", "unknown map 'nomap'"),
        ("/x/${lc:${nomap:k}}", "unknown map 'nomap'"),
    ],
)
def test_unknown_names_in_substitutions(substitution: str, fragment: str) -> None:
    error = error_of(f"RewriteMap lc int:tolower\nRewriteRule ^/a {substitution}")
    assert error.line == 3
    assert fragment in error.message


def test_rule_pattern_errors_are_named() -> None:
    error = error_of("RewriteRule ^/a(b /c")
    assert error.line == 2
    assert "cannot compile regular expression" in error.message


def test_substitution_references_are_precompiled() -> None:
    parsed = parse(
        "RewriteMap lc int:tolower\n"
        "RewriteRule ^/(.*) /x/$1/%2/%{HTTP_HOST}/${lc:$1|%{REQUEST_URI}}",
        "f",
    )
    rule = Compiler(parsed, None, None, lambda: 0.0).run().rules[0]
    assert rule.substitution is not None
    kinds = [type(ref) for ref in rule.substitution.references()]
    assert kinds == [RuleRef, CondRef, VarRef, MapRef, RuleRef, VarRef]


def test_maps_by_type(tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text("a 1\n", encoding="utf-8")
    program = compile_rules(
        "RewriteMap t txt:m.txt\nRewriteMap r rnd:m.txt\nRewriteMap i int:toupper\n"
        "RewriteMap s site:\n",
        base_dir=tmp_path,
    )
    maps = program.maps
    assert [type(maps[name]) for name in ("t", "r", "i", "s", "site")] == [
        TextMap,
        TextMap,
        InternalMap,
        SiteMap,
        SiteMap,
    ]
    assert [maps[name].describe() for name in ("t", "r", "i", "s")] == [
        f"txt:{tmp_path / 'm.txt'}",
        f"rnd:{tmp_path / 'm.txt'}",
        "int:toupper",
        "site:",
    ]
    assert isinstance(maps["site"], SiteMap)


@pytest.mark.parametrize(
    ("declaration", "fragment"),
    [
        ("RewriteMap p prg:/bin/cat", "prg: is not supported"),
        ("RewriteMap d dbm:/etc/map.db", "dbm: is not supported"),
        ("RewriteMap d dbm=db:/etc/map.db", "is not supported"),
        ("RewriteMap q dbd:SELECT 1", "dbd: is not supported"),
        ("RewriteMap q fastdbd:SELECT 1", "fastdbd: is not supported"),
        ("RewriteMap x ldap:whatever", "unknown map type"),
        ("RewriteMap x /plain/path", "unknown map type"),
        ("RewriteMap i int:rot13", "internal map not found: 'rot13'"),
        ("RewriteMap t txt:/no/such/file", "cannot read map file /no/such/file"),
        ("RewriteMap t txt:relative.txt", "needs a base directory"),
        ("RewriteMap t txt:", "needs a file path"),
        ("RewriteMap site int:tolower", "reserved"),
        ("RewriteMap s site:eu", "takes nothing after the colon"),
    ],
)
def test_bad_maps_are_named(declaration: str, fragment: str) -> None:
    error = error_of(f"\n{declaration}")
    assert error.line == 3
    assert fragment in error.message


def test_later_map_declaration_wins(tmp_path: Path) -> None:
    program = compile_rules("RewriteMap m int:tolower\nRewriteMap m int:toupper\n")
    assert program.maps["m"].describe() == "int:toupper"


def test_known_pools_check_literal_site_keys() -> None:
    rules = "RewriteEngine on\nRewriteRule ^/(.*) ${site:eu}/$1 [R]\n"
    assert compile_rules(rules, known_pools={"eu", "us"}).rule_count == 1
    assert compile_rules(rules).rule_count == 1
    with pytest.raises(RuleSyntaxError) as caught:
        compile_rules(rules, known_pools={"us"})
    assert caught.value.line == 2
    assert "${site:eu} names an unknown pool (known: us)" in caught.value.message


def test_known_pools_cannot_check_computed_keys() -> None:
    rules = "RewriteEngine on\nRewriteRule ^/(\\w+)/ ${site:$1|/fallback} [R]\n"
    assert compile_rules(rules, known_pools=set()).rule_count == 1


def test_a_bad_rule_rejects_the_whole_set() -> None:
    text = "RewriteEngine on\n" + "RewriteRule ^/ok /fine\n" * 5 + "RewriteRule ^/bad /x [Z]\n"
    with pytest.raises(RuleSyntaxError) as caught:
        compile_rules(text)
    assert caught.value.line == 7
