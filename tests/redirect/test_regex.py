"""PCRE patterns on Python's re: translations, Apache's default options, clear rejections."""

from __future__ import annotations

import pytest

from dispatcher.redirect.regex import PatternError, compile_pattern, literal_prefix, translate


def matches(pattern: str, text: str, *, nocase: bool = False) -> bool:
    return compile_pattern(pattern, nocase=nocase).search(text) is not None


def test_dollar_matches_only_at_the_very_end() -> None:
    # Apache's default RegexDefaultOptions include DOLLAR_ENDONLY.
    assert matches("^/a$", "/a")
    assert not matches("^/a$", "/a\n")


def test_dot_matches_newline() -> None:
    # ... and DOTALL.
    assert matches("^/a.b$", "/a\nb")


def test_classes_and_case_folding_are_ascii_only() -> None:
    assert not matches(r"^\w+$", "caf\xe9")
    assert matches("^CAF", "caf", nocase=True)
    assert not matches("^\xc9", "\xe9", nocase=True)


@pytest.mark.parametrize(
    ("pcre", "text", "expected"),
    [
        ("[[:alpha:]]+$", "abc", True),
        ("^[[:digit:][:upper:]]+$", "A1", True),
        ("^[[:punct:]]$", "!", True),
        (r"\z", "", True),
        (r"^a\Z", "a\n", True),
        (r"^\Qa.b\E$", "a.b", True),
        (r"^\Qa.b\E$", "axb", False),
        (r"^(?<word>\w+)-\k<word>$", "ab-ab", True),
        (r"^(?'w'\w)\k{w}$", "aa", True),
        (r"^(a)\g1$", "aa", True),
        (r"^(a)\g{1}$", "aa", True),
        (r"^\x41\x{42}$", "AB", True),
        (r"^\o{101}$", "A", True),
        (r"^\cA$", "\x01", True),
        (r"^\e$", "\x1b", True),
        (r"^\h$", "\t", True),
        (r"^\N$", "x", True),
        (r"^\N$", "\n", False),
        (r"^\R$", "\r\n", True),
        ("^a{,2}$", "a{,2}", True),
        (r"^[\d-z]+$", "1-z", True),
        (r"^[]a]+$", "]a", True),
        (r"^[^]a]$", "b", True),
        ("^[a-]$", "-", True),
        ("^[&&~~||]+$", "&~|", True),
        (r"^[\x41-\x43]+$", "ABC", True),
        (r"^[\101]$", "A", True),
        ("^(?>a+)b", "aab", True),
        ("^a++b", "aab", True),
        ("^a(?i)bc", "aBC", True),
        ("^a(?i)bc", "ABC", False),
        ("^x(?i)b|c", "C", True),
        ("(?i)^abc", "ABC", True),
        ("^(?i:a)b", "Ab", True),
        ("^(?:a(?i)b|c)d", "aBd", True),
        ("^(?#comment)a$", "a", True),
        ("^(a)?(?(1)b|c)$", "ab", True),
    ],
)
def test_pcre_spellings(pcre: str, text: str, expected: bool) -> None:
    assert matches(pcre, text) is expected


def test_case_insensitive_inline_flag_can_be_turned_off_again() -> None:
    assert matches("^(?-i)a", "a", nocase=True)
    assert not matches("^(?-i)a", "A", nocase=True)


@pytest.mark.parametrize(
    ("pcre", "fragment"),
    [
        ("(?R)", "recursion"),
        ("(a)(?1)", "recursion"),
        ("(?&name)", "recursion"),
        (r"\p{L}", "Unicode property"),
        (r"\X", "grapheme"),
        (r"a\Kb", r"\K"),
        (r"\G", r"\G"),
        ("(*FAIL)", "backtracking verb"),
        ("(?|a|b)", "branch reset"),
        ("(?Ca)", "callout"),
        ("(?U)a", "inline option 'U'"),
        ("[[:nope:]]", "unknown POSIX class"),
        ("[[:^alpha:]]", "negated POSIX class"),
        ("a\\", "ends with a backslash"),
        (r"\u0041", r"\u"),
        (r"\q", r"unknown escape \q"),
        ("(?<=a|bc)x", "look-behind requires fixed-width"),
        ("(a", "missing )"),
        ("a)", "unmatched )"),
        ("[a", "missing ]"),
        ("[z-a]", "range out of order"),
        (r"\g{-1}", "relative reference"),
        (r"\x{1F600}", "patterns work on bytes"),
        (r"[\p]", "inside a character class"),
        ("a{99999999999}", "cannot compile"),
    ],
)
def test_unsupported_constructs_are_rejected_by_name(pcre: str, fragment: str) -> None:
    with pytest.raises(PatternError) as caught:
        compile_pattern(pcre, nocase=False)
    assert fragment in str(caught.value)


def test_translation_is_plain_where_python_agrees() -> None:
    assert translate(r"^/shop/(\d+)-([a-z]+)\.html$") == r"^/shop/(\d+)-([a-z]+)\.html\Z"


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [
        ("^/shop/(.*)$", "/shop/"),
        (r"^/a\.b", "/a.b"),
        ("^/abc?", "/ab"),
        ("^/x{2}", "/"),
        ("^/a|^/b", None),
        ("/anywhere", None),
        ("^(/x)", None),
        ("^.", None),
    ],
)
def test_literal_prefix(pattern: str, prefix: str | None) -> None:
    assert literal_prefix(pattern) == prefix
