"""Reading rule files: lines, quoting, every directive, and every syntax error with its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatcher.errors import DispatcherError
from dispatcher.redirect import (
    RewriteError,
    RuleFileError,
    RuleSyntaxError,
    compile_rules,
    load_rules,
)
from dispatcher.redirect.parser import getword_conf, logical_lines, parse, parseargline, words


def syntax_error(text: str) -> RuleSyntaxError:
    with pytest.raises(RuleSyntaxError) as caught:
        compile_rules(text, filename="site.rules")
    return caught.value


# --- lines --------------------------------------------------------------------------------


def test_logical_lines_skip_comments_and_blanks_and_keep_first_line_numbers() -> None:
    text = "# comment\n\n   RewriteEngine on   \n\t# indented comment\nRewriteRule a b\n"
    assert list(logical_lines(text)) == [(3, "RewriteEngine on"), (5, "RewriteRule a b")]


def test_backslash_newline_continues_the_directive() -> None:
    text = "RewriteRule ^/a \\\n  /b \\\r\n [L]\nRewriteEngine on"
    assert list(logical_lines(text)) == [(1, "RewriteRule ^/a   /b  [L]"), (4, "RewriteEngine on")]


def test_backslash_on_the_last_line_without_newline_stays() -> None:
    assert list(logical_lines("RewriteRule a b\\")) == [(1, "RewriteRule a b\\")]


def test_backslash_followed_by_space_does_not_continue() -> None:
    assert list(logical_lines("RewriteRule a b \\ \nRewriteEngine on")) == [
        (1, "RewriteRule a b \\"),
        (2, "RewriteEngine on"),
    ]


def test_a_continued_comment_swallows_the_next_line() -> None:
    assert list(logical_lines("# note \\\nRewriteEngine on\nRewriteEngine off")) == [
        (3, "RewriteEngine off")
    ]


# --- argument splitting --------------------------------------------------------------------


def test_getword_conf_quotes_and_backslashes() -> None:
    assert getword_conf('  "a b\\" c" rest') == ('a b" c', "rest")
    assert getword_conf("'x\\\\y' z") == ("x\\y", "z")
    assert getword_conf("plain\\\\word next") == ("plain\\word", "next")
    assert getword_conf("   ") == ("", "")
    assert words('one "two three" four') == ["one", "two three", "four"]


def test_parseargline_splits_like_mod_rewrite() -> None:
    assert parseargline("\"^/a b$\" '/c d' [R]") == ("^/a b$", "/c d", "[R]", "")
    assert parseargline("^/a\\ b /c") == ("^/a\\ b", "/c", None, "")
    assert parseargline("a b [L] # comment") == ("a", "b", "[L]", "# comment")
    with pytest.raises(ValueError, match="at least two arguments"):
        parseargline("onlyone")


def test_quoted_arguments_reach_the_engine() -> None:
    parsed = parse('RewriteRule "^/with space$" "/x y" [R=301]', "f")
    rule = parsed.rules[0]
    assert (rule.pattern, rule.substitution, rule.flags) == (
        "^/with space$",
        "/x y",
        (("R", "301"),),
    )


# --- directives ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "enabled"),
    [
        ("RewriteEngine on", True),
        ("RewriteEngine On", True),
        ("rewriteengine ON", True),
        ("RewriteEngine off", False),
        ("RewriteEngine on\nRewriteEngine Off", False),
        ("", False),
    ],
)
def test_rewrite_engine(text: str, enabled: bool) -> None:
    assert parse(text, "f").engine_on is enabled


def test_rewrite_options_known_ones_are_accepted() -> None:
    parsed = parse("RewriteOptions Inherit InheritBefore AllowAnyURI MaxRedirects=10", "f")
    assert parsed.options == ("Inherit", "InheritBefore", "AllowAnyURI", "MaxRedirects=10")


def test_conditions_belong_to_the_next_rule_only() -> None:
    parsed = parse(
        "RewriteCond %{HTTP_HOST} a\nRewriteCond %{HTTP_HOST} b [OR]\nRewriteRule x y\n"
        "RewriteRule z w\n",
        "f",
    )
    first, second = parsed.rules
    assert [(c.line, c.pattern, c.flags) for c in first.conditions] == [
        (1, "a", ()),
        (2, "b", (("OR", ""),)),
    ]
    assert second.conditions == ()
    assert (first.line, second.line) == (3, 4)


def test_rewrite_map_directive() -> None:
    parsed = parse("RewriteMap lower int:tolower", "f")
    assert [(m.line, m.name, m.source) for m in parsed.maps] == [(1, "lower", "int:tolower")]


# --- errors, each with its line -------------------------------------------------------------


def test_error_carries_file_line_and_message() -> None:
    error = syntax_error("RewriteEngine on\n\nRewriteEngine maybe\n")
    assert (error.filename, error.line, error.message) == (
        "site.rules",
        3,
        "RewriteEngine must be On or Off",
    )
    assert str(error) == "site.rules:3: RewriteEngine must be On or Off"
    assert isinstance(error, RewriteError)
    assert isinstance(error, DispatcherError)


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("RewriteEngine", 1, "must be On or Off"),
        ("RewriteEngine on off", 1, "must be On or Off"),
        ("\nRewriteOptions Frobnicate", 2, "unknown option 'Frobnicate'"),
        ("RewriteOptions", 1, "at least one option"),
        ("RewriteMap onlyname", 1, "takes two arguments"),
        ("RewriteMap a b c d", 1, "takes two arguments"),
        ("RewriteRule onlyone", 1, "at least two arguments required"),
        ("RewriteCond onlyone", 1, "at least two arguments required"),
        ("RewriteRule a b L", 1, "bad flag delimiters"),
        ("RewriteRule a b [L", 1, "bad flag delimiters"),
        ("RewriteRule a b []", 1, "empty flag"),
        ("RewriteRule a b [L,,R]", 1, "empty flag"),
        ("RewriteRule a b [L] extra", 1, "unexpected text after the flags"),
        ('RewriteRule "" b', 1, "empty pattern"),
        ('RewriteRule a ""', 1, "empty second argument"),
        ("RewriteEngine on\nRewriteCond a b\n", 2, "not followed by a RewriteRule"),
        ("RewriteBase /", 1, "per-directory"),
        ("RewriteLog /tmp/x", 1, "removed in Apache 2.4"),
        ("Redirect / http://x/", 1, "unknown directive 'Redirect'"),
        ("<IfModule mod_rewrite.c>", 1, "sections such as <IfModule"),
        ("RewriteRule a \\\n  b \\\n c", 1, "bad flag delimiters"),
    ],
)
def test_syntax_errors_name_their_line(text: str, line: int, fragment: str) -> None:
    error = syntax_error(text)
    assert error.line == line
    assert fragment in error.message


def test_trailing_comment_after_flags_is_allowed() -> None:
    rules = compile_rules("RewriteEngine on\nRewriteRule ^/a /b [L] # moved")
    assert rules.rule_count == 1


# --- files ----------------------------------------------------------------------------------


def test_load_rules_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "site.rules"
    path.write_text("RewriteEngine on\nRewriteRule ^/a /b [Q]\n", encoding="utf-8")
    with pytest.raises(RuleSyntaxError) as caught:
        load_rules(path)
    assert str(caught.value).startswith(f"{path}:2: ")


def test_load_rules_keeps_source_and_filename(tmp_path: Path) -> None:
    path = tmp_path / "site.rules"
    text = "RewriteEngine on\nRewriteRule ^/a /b\n"
    path.write_text(text, encoding="utf-8")
    loaded = load_rules(path)
    assert (loaded.source, loaded.filename, loaded.enabled) == (text, str(path), True)


def test_missing_rule_file(tmp_path: Path) -> None:
    with pytest.raises(RuleFileError) as caught:
        load_rules(tmp_path / "absent.rules")
    assert caught.value.filename == str(tmp_path / "absent.rules")
    assert "No such file" in caught.value.reason


def test_rule_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.rules"
    path.write_bytes(b"RewriteRule ^/caf\xe9 /x\n")
    with pytest.raises(RuleFileError, match="not UTF-8"):
        load_rules(path)
