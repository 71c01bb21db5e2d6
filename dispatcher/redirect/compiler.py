"""Parsed directives into the structures the evaluator runs: patterns compiled, strings split.

Everything that can be checked without a request is checked here, so a rule set either
compiles whole or raises :class:`RuleSyntaxError` naming the line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from dispatcher.redirect.cookies import CookieSpec
from dispatcher.redirect.errors import RuleSyntaxError
from dispatcher.redirect.escape import escape_backref, shown
from dispatcher.redirect.index import RuleIndex
from dispatcher.redirect.maps import Clock, InternalMap, RewriteMap, SiteMap, TextMap
from dispatcher.redirect.parser import CondDirective, MapDirective, RuleDirective, RuleFile
from dispatcher.redirect.regex import PatternError, compile_pattern, literal_prefix
from dispatcher.redirect.template import (
    Escaper,
    MapRef,
    Template,
    TemplateError,
    compile_template,
)

#: Apache's REWRITE_MAX_ROUNDS: how often ``N`` may restart the rules before a 500.
MAX_ROUNDS = 10000
#: The status codes Apache knows (http_protocol.c); ``R=`` accepts no others.
KNOWN_STATUS = frozenset(
    {*range(100, 104), *range(200, 209), 226, *range(300, 306), 307, 308}
    | {*range(400, 418), *range(421, 425), 426, 428, 429, 431, 451}
    | {*range(500, 509), 510, 511}
)
_REDIRECT_WORDS = {"permanent": 301, "temp": 302, "seeother": 303}
_T = TypeVar("_T")
_D = TypeVar("_D")


class _Invalid(ValueError):
    """A directive's meaning is wrong; the compiler adds file and line."""


@dataclass(frozen=True, slots=True)
class Condition:
    """A compiled ``RewriteCond``; exactly one of ``regex`` and ``compare`` is set."""

    line: int
    test: Template
    pattern: str
    regex: re.Pattern[str] | None
    compare: Callable[[str], bool] | None
    negate: bool
    ornext: bool
    flags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RuleFlags:
    """What a rule's ``[...]`` asked for, resolved.

    ``status`` is set for ``F``, ``G`` and ``R=`` with a non-3xx code: the rule then answers
    that status and its substitution is never used. ``redirect`` is the ``R`` code.
    """

    redirect: int | None = None
    status: int | None = None
    last: bool = False
    end: bool = False
    chain: bool = False
    nocase: bool = False
    qsappend: bool = False
    qsdiscard: bool = False
    qslast: bool = False
    qsnone: bool = False
    noescape: bool = False
    allow3f: bool = False
    rounds: int | None = None
    skip: int = 0
    escape: Escaper = None
    env: tuple[Template, ...] = ()
    cookies: tuple[CookieSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class Rule:
    """A compiled ``RewriteRule``; ``substitution`` is None for ``-`` (and status rules)."""

    line: int
    pattern: str
    regex: re.Pattern[str]
    prefix: str | None
    negate: bool
    substitution: Template | None
    written: str
    conditions: tuple[Condition, ...]
    flags: RuleFlags
    flag_text: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CompiledRules:
    """The rule set: whether the engine is on, the rules in order, the maps, the prefix index."""

    enabled: bool
    rules: tuple[Rule, ...]
    maps: dict[str, RewriteMap]
    index: RuleIndex


@dataclass
class Compiler:
    """Compiles one parsed rule file; see :meth:`run`."""

    parsed: RuleFile
    base_dir: Path | None
    known_pools: Collection[str] | None
    clock: Clock
    maps: dict[str, RewriteMap] = field(default_factory=lambda: {"site": SiteMap()})

    def run(self) -> CompiledRules:
        """The compiled rules; raise :class:`RuleSyntaxError` at the first problem.

        Maps are declared before any rule is compiled, wherever they appear in the file.
        """
        for directive in self.parsed.maps:
            self.maps[directive.name] = self.guarded(directive.line, self.map, directive)
        rules = tuple(self.guarded(d.line, self.rule, d) for d in self.parsed.rules)
        return CompiledRules(self.parsed.engine_on, rules, self.maps, RuleIndex.build(rules))

    def guarded(self, line: int, build: Callable[[_D], _T], directive: _D) -> _T:
        try:
            return build(directive)
        except (_Invalid, PatternError, TemplateError) as exc:
            raise RuleSyntaxError(self.parsed.filename, line, str(exc)) from None

    def map(self, directive: MapDirective) -> RewriteMap:
        kind, colon, argument = directive.source.partition(":")
        kind = kind.lower() if colon else ""
        if directive.name == "site" and kind != "site":
            raise _Invalid("the map name 'site' is reserved for webfarm's site selection")
        if kind in ("txt", "rnd"):
            return self.text_map(argument, pick=kind == "rnd")
        if kind == "int":
            if argument not in InternalMap.FUNCTIONS:
                known = ", ".join(sorted(InternalMap.FUNCTIONS))
                raise _Invalid(f"RewriteMap: internal map not found: {argument!r} ({known})")
            return InternalMap(argument)
        if kind == "site":
            if argument:
                raise _Invalid("RewriteMap NAME site: takes nothing after the colon")
            return SiteMap()
        if kind in ("prg", "dbd", "fastdbd") or kind.startswith("dbm"):
            raise _Invalid(f"RewriteMap type {kind}: is not supported (use txt:, rnd:, int:)")
        raise _Invalid(
            f"RewriteMap: unknown map type in {shown(directive.source)!r} "
            "(expected txt:, rnd:, int: or site:)"
        )

    def text_map(self, argument: str, *, pick: bool) -> TextMap:
        path = Path(argument)
        if not argument:
            raise _Invalid("RewriteMap: a txt:/rnd: map needs a file path")
        if not path.is_absolute():
            if self.base_dir is None:
                raise _Invalid(f"RewriteMap: relative map path {argument!r} needs a base directory")
            path = self.base_dir / path
        try:
            return TextMap(path, self.clock, pick=pick)
        except OSError as exc:
            raise _Invalid(f"RewriteMap: cannot read map file {path}: {exc.strerror}") from None

    def template(self, source: str) -> Template:
        template = compile_template(source, self.maps.get)
        for ref in template.references():
            if isinstance(ref, MapRef) and ref.map.kind == "site":
                self.check_pool(ref.key)
        return template

    def check_pool(self, key: Template) -> None:
        pool = key.constant
        if self.known_pools is not None and pool is not None and pool not in self.known_pools:
            known = ", ".join(sorted(self.known_pools)) or "none"
            raise _Invalid(f"${{site:{pool}}} names an unknown pool (known: {known})")

    def rule(self, directive: RuleDirective) -> Rule:
        flags = self.rule_flags(directive.flags)
        negate = directive.pattern.startswith("!")
        pattern = directive.pattern[1:] if negate else directive.pattern
        regex = compile_pattern(pattern, nocase=flags.nocase)
        written = directive.substitution
        nosub = written == "-" or flags.status is not None
        if not nosub and written.endswith("?"):
            # Apache 2.4.64+: a trailing "?" drops the query and stops the split at any other
            # "?"; with QSA it is the (last) "?" the new path is split at.
            if flags.qsappend:
                flags = replace(flags, qslast=True)
            else:
                flags = replace(flags, qsnone=True)
                written = written[:-1]
        substitution = None if nosub else self.template(written)
        conditions = tuple(self.guarded(c.line, self.condition, c) for c in directive.conditions)
        return Rule(
            line=directive.line,
            pattern=directive.pattern,
            regex=regex,
            prefix=None if negate or flags.nocase else literal_prefix(pattern),
            negate=negate,
            substitution=substitution,
            written=directive.substitution,
            conditions=conditions,
            flags=flags,
            flag_text=tuple(f"{k}={v}" if v else k for k, v in directive.flags),
        )

    def condition(self, directive: CondDirective) -> Condition:
        if directive.test.lower() == "expr":
            raise _Invalid("RewriteCond expr (ap_expr expressions) is not supported")
        names = [key.lower() for key, _ in directive.flags]
        for key in names:
            if key not in ("nc", "nocase", "or", "ornext", "nv", "novary"):
                raise _Invalid(f"RewriteCond: unknown flag {key!r}")
        nocase = "nc" in names or "nocase" in names
        negate, regex, compare = condition_test(directive.pattern, nocase=nocase)
        return Condition(
            line=directive.line,
            test=self.template(directive.test),
            pattern=directive.pattern,
            regex=regex,
            compare=compare,
            negate=negate,
            ornext="or" in names or "ornext" in names,
            flags=tuple(f"{k}={v}" if v else k for k, v in directive.flags),
        )

    def rule_flags(self, raw: tuple[tuple[str, str], ...]) -> RuleFlags:
        builder = _FlagBuilder(self)
        for key, value in raw:
            builder.add(key, value)
        return builder.build()


def condition_test(
    written: str, *, nocase: bool
) -> tuple[bool, re.Pattern[str] | None, Callable[[str], bool] | None]:
    """``cmd_rewritecond``'s reading of a CondPattern: (negated, regex, comparison)."""
    negate = written.startswith("!")
    pattern = written[1:] if negate else written
    if len(pattern) >= 2 and pattern[0] == "-":
        if len(pattern) == 2:
            raise _Invalid(
                f"RewriteCond: the file test {shown(pattern)!r} is not supported "
                "(the dispatcher has no filesystem)"
            )
        operator = pattern[1:3]
        if len(pattern) > 3 and operator in _INTEGER_TESTS:
            flip, test = _INTEGER_TESTS[operator]
            return negate ^ flip, None, _integer(test, _atoi(pattern[3:]))
    elif len(pattern) >= 2 and pattern[0] in "<>=":
        return negate, None, _string_test(pattern, nocase=nocase)
    return negate, compile_pattern(pattern, nocase=nocase), None


_INTEGER_TESTS: dict[str, tuple[bool, Callable[[int, int], bool]]] = {
    "lt": (False, lambda a, b: a < b),
    "le": (False, lambda a, b: a <= b),
    "eq": (False, lambda a, b: a == b),
    "ne": (True, lambda a, b: a == b),
    "gt": (False, lambda a, b: a > b),
    "ge": (False, lambda a, b: a >= b),
}


def _integer(test: Callable[[int, int], bool], operand: int) -> Callable[[str], bool]:
    return lambda text: test(_atoi(text), operand)


def _string_test(pattern: str, *, nocase: bool) -> Callable[[str], bool]:
    operator = pattern[:2] if pattern[:2] in ("<=", ">=") else pattern[0]
    operand = pattern[len(operator) :]
    if operator == "=" and operand == '""':
        operand = ""
    fold = _fold if nocase else None
    wanted = _fold(operand) if nocase else operand
    if operator == "=":
        return (lambda text: _fold(text) == wanted) if fold else (lambda text: text == wanted)
    low, high = {"<": (-1, -1), "<=": (-1, 0), ">": (1, 1), ">=": (0, 1)}[operator]

    def test(text: str) -> bool:
        order = _order(_fold(text), wanted) if nocase else _apache_order(text, wanted)
        return low <= order <= high if operator in ("<=", ">=") else order == low

    return test


def _fold(text: str) -> str:
    return text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _order(a: str, b: str) -> int:
    return (a > b) - (a < b)


def _apache_order(a: str, b: str) -> int:
    """mod_rewrite's ``compare_lexicography``: the longer string is greater, whatever it holds."""
    if len(a) != len(b):
        return 1 if len(a) > len(b) else -1
    return _order(a, b)


def _atoi(text: str) -> int:
    """C ``atoi`` (glibc: ``(int) strtol``): leading space, sign, digits, then anything."""
    match = re.match(r"[ \t\n\v\f\r]*([+-]?)(\d*)", text, re.ASCII)
    assert match is not None
    sign, digits = match.groups()
    value = int(digits) if digits else 0
    value = min(value, 2**63 - 1 if sign != "-" else 2**63)
    value = -value if sign == "-" else value
    return (value + 2**31) % 2**32 - 2**31


_BOOLEAN_FLAGS = frozenset(
    {"chain", "end", "last", "nocase", "noescape", "qsappend", "qsdiscard", "qslast", "allow3f"}
)


class _FlagBuilder:
    """Accumulates one rule's flags (long and short names, any case) into RuleFlags."""

    def __init__(self, compiler: Compiler) -> None:
        self.compiler = compiler
        self.booleans: set[str] = set()
        self.forced: int | None = None
        self.is_status = False
        self.is_redirect = False
        self.rounds: int | None = None
        self.skip = 0
        self.escapes: str | None = None
        self.keeps: str | None = None
        self.backrefs: set[str] = set()
        self.env: list[Template] = []
        self.cookies: list[CookieSpec] = []

    def add(self, key: str, value: str) -> None:
        name = _FLAG_NAMES.get(key.lower())
        if name is None:
            raise _Invalid(f"RewriteRule: {_REJECTED.get(key.lower(), f'unknown flag {key!r}')}")
        if name in _BOOLEAN_FLAGS:
            self.booleans.add(name)
        elif name != "ignored":
            handlers: dict[str, Callable[[str], None]] = {
                "b": self.flag_b,
                "bnp": lambda _: self.backrefs.add("noplus"),
                "bctls": lambda _: self.backrefs.add("ctls"),
                "bne": self.flag_bne,
                "cookie": self.flag_cookie,
                "env": self.flag_env,
                "redirect": self.flag_redirect,
                "next": self.flag_next,
                "skip": self.flag_skip,
                "forbidden": lambda _: self.set_status(403),
                "gone": lambda _: self.set_status(410),
            }
            handlers[name](value)

    def set_status(self, code: int) -> None:
        """F, G and R=non-3xx: answer ``code``; as in Apache, the last code set wins."""
        self.forced = code
        self.is_status = True

    def flag_b(self, value: str) -> None:
        self.backrefs.add("b")
        self.escapes = value or None

    def flag_bne(self, value: str) -> None:
        if not value:
            raise _Invalid("RewriteRule: BNE needs the characters not to escape (BNE=chars)")
        self.keeps = value

    def flag_cookie(self, value: str) -> None:
        if not value:
            raise _Invalid("RewriteRule: CO needs NAME:VALUE:DOMAIN[:lifetime[:path...]]")
        self.cookies.append(CookieSpec(self.compiler.template(value)))

    def flag_env(self, value: str) -> None:
        if not value:
            raise _Invalid("RewriteRule: E needs VAR:VALUE or !VAR")
        self.env.append(self.compiler.template(value))

    def flag_redirect(self, value: str) -> None:
        code = _REDIRECT_WORDS.get(value.lower(), 302 if not value else None)
        if code is None and value.isascii() and value.isdigit():
            code = int(value)
        if code is None or code not in KNOWN_STATUS:
            raise _Invalid(f"RewriteRule: invalid HTTP response code {value!r} for flag R")
        if code < 200:
            raise _Invalid(f"RewriteRule: R={code}: a 1xx status cannot answer a request")
        self.is_redirect = True
        if not value:
            return
        if 300 <= code < 400:
            self.forced = code
        else:
            self.set_status(code)

    def flag_next(self, value: str) -> None:
        rounds = _number(value, "N") if value else MAX_ROUNDS
        if rounds < 1:
            raise _Invalid("RewriteRule: N=rounds must be at least 1")
        self.rounds = rounds

    def flag_skip(self, value: str) -> None:
        self.skip = _number(value, "S")

    def escaper(self) -> Escaper:
        if not self.backrefs & {"b", "ctls"}:
            return None
        escapes, keeps = self.escapes, self.keeps
        noplus, ctls = "noplus" in self.backrefs, "ctls" in self.backrefs

        def escape(text: str) -> str:
            return escape_backref(text, escapes, keeps, noplus=noplus, ctls=ctls)

        return escape

    def build(self) -> RuleFlags:
        flag = self.booleans.__contains__
        code = self.forced or 302
        return RuleFlags(
            redirect=code if self.is_redirect and not self.is_status else None,
            status=code if self.is_status else None,
            last=flag("last"),
            end=flag("end"),
            chain=flag("chain"),
            nocase=flag("nocase"),
            qsappend=flag("qsappend"),
            qsdiscard=flag("qsdiscard"),
            qslast=flag("qslast"),
            noescape=flag("noescape"),
            allow3f=flag("allow3f"),
            rounds=self.rounds,
            skip=self.skip,
            escape=self.escaper(),
            env=tuple(self.env),
            cookies=tuple(self.cookies),
        )


def _number(value: str, flag: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise _Invalid(f"RewriteRule: {flag}= needs a number, got {value!r}")
    return int(value)


_FLAG_NAMES = {
    "b": "b",
    "backrefescaping": "b",
    "bnp": "bnp",
    "backrefnoplus": "bnp",
    "bctls": "bctls",
    "bne": "bne",
    "c": "chain",
    "chain": "chain",
    "co": "cookie",
    "cookie": "cookie",
    "dpi": "ignored",
    "discardpath": "ignored",
    "e": "env",
    "env": "env",
    "end": "end",
    "f": "forbidden",
    "forbidden": "forbidden",
    "g": "gone",
    "gone": "gone",
    "l": "last",
    "last": "last",
    "n": "next",
    "next": "next",
    "ne": "noescape",
    "noescape": "noescape",
    "ns": "ignored",
    "nosubreq": "ignored",
    "nc": "nocase",
    "nocase": "nocase",
    "qsa": "qsappend",
    "qsappend": "qsappend",
    "qsd": "qsdiscard",
    "qsdiscard": "qsdiscard",
    "qsl": "qslast",
    "qslast": "qslast",
    "r": "redirect",
    "redirect": "redirect",
    "s": "skip",
    "skip": "skip",
    "unsafeallow3f": "allow3f",
    "unsafeprefixstat": "ignored",
}
_REJECTED = {
    "p": "flag P (proxy) is not supported: the dispatcher redirects, it does not proxy",
    "proxy": "flag proxy is not supported: the dispatcher redirects, it does not proxy",
    "pt": "flag PT (passthrough) is not supported: there is no URL-to-file mapping after it",
    "passthrough": "flag passthrough is not supported: there is no URL-to-file mapping",
    "h": "flag H (handler) is not supported: the dispatcher serves no content",
    "handler": "flag handler is not supported: the dispatcher serves no content",
    "t": "flag T (type) is not supported: the dispatcher serves no content",
    "type": "flag type is not supported: the dispatcher serves no content",
}
