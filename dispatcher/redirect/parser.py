"""Reading rule files in Apache's server-context syntax into directives.

Lines are read as Apache's config reader does: a backslash right before the line end
continues the directive on the next line, leading and trailing white space goes, lines
whose first character is ``#`` are comments. ``RewriteRule`` and ``RewriteCond`` split
their arguments as mod_rewrite's own ``parseargline`` does (``"..."`` or ``'...'`` quote,
``\\<space>`` keeps a space inside an argument); the other directives use the general
``ap_getword_conf`` rules (quotes, ``\\"`` and ``\\\\`` inside them).

This module checks the shape of each directive; :mod:`compiler` checks the meaning.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from dispatcher.redirect.errors import RuleSyntaxError
from dispatcher.redirect.escape import shown, text_octets

_SPACE = " \t\n\v\f\r"
_PER_DIRECTORY = {
    "rewritebase": "RewriteBase is per-directory (.htaccess) only; rules here run in server "
    "context, where the substitution is already a URL-path",
}
_GONE = {
    "rewritelog": "RewriteLog was removed in Apache 2.4 and is not supported",
    "rewriteloglevel": "RewriteLogLevel was removed in Apache 2.4 and is not supported",
    "rewritelock": "RewriteLock was removed in Apache 2.4 and is not supported",
}
_DIRECTIVES = "RewriteEngine, RewriteOptions, RewriteMap, RewriteCond and RewriteRule"


@dataclass(frozen=True, slots=True)
class CondDirective:
    """One ``RewriteCond``: the test string, the pattern as written, the raw flags."""

    line: int
    test: str
    pattern: str
    flags: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class RuleDirective:
    """One ``RewriteRule`` with the ``RewriteCond`` lines that precede it."""

    line: int
    pattern: str
    substitution: str
    flags: tuple[tuple[str, str], ...]
    conditions: tuple[CondDirective, ...]


@dataclass(frozen=True, slots=True)
class MapDirective:
    """One ``RewriteMap NAME TYPE:SOURCE``."""

    line: int
    name: str
    source: str


@dataclass(frozen=True, slots=True)
class RuleFile:
    """Everything a rule file says, in order, still uninterpreted."""

    filename: str
    engine_on: bool
    options: tuple[str, ...]
    maps: tuple[MapDirective, ...]
    rules: tuple[RuleDirective, ...]


def parse(text: str, filename: str) -> RuleFile:
    """Parse rule-file text; raise :class:`RuleSyntaxError` at the first bad directive."""
    state = _State(filename)
    for line, content in logical_lines(text_octets(text)):
        state.directive(line, content)
    if state.pending:
        raise state.error(state.pending[0].line, "RewriteCond is not followed by a RewriteRule")
    return RuleFile(
        filename,
        state.engine_on,
        tuple(state.options),
        tuple(state.maps),
        tuple(state.rules),
    )


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, content) of each directive line, continuations joined.

    A line whose last character before the newline is a backslash continues; the
    backslash and the newline go. Comments and blank lines are skipped.
    """
    physical = text.split("\n")
    index = 0
    while index < len(physical):
        start = index + 1
        parts: list[str] = []
        while index < len(physical):
            piece = physical[index].removesuffix("\r")
            index += 1
            has_newline = index < len(physical)
            if has_newline and piece.endswith("\\"):
                parts.append(piece[:-1])
                continue
            parts.append(piece)
            break
        content = "".join(parts).strip(_SPACE)
        if content and not content.startswith("#"):
            yield start, content


def getword_conf(line: str) -> tuple[str, str]:
    """``ap_getword_conf``: the first word of ``line`` and the rest, white space skipped."""
    line = line.lstrip(_SPACE)
    if not line:
        return "", ""
    quote = line[0]
    if quote in "\"'":
        end = 1
        while end < len(line) and line[end] != quote:
            end += 2 if line[end] == "\\" and line[end + 1 : end + 2] in (quote, "\\") else 1
        word = _unescape_conf(line[1:end], quote)
        rest = line[end + 1 :]
    else:
        end = 0
        while end < len(line) and line[end] not in _SPACE:
            end += 1
        word = _unescape_conf(line[:end], "")
        rest = line[end:]
    return word, rest.lstrip(_SPACE)


def _unescape_conf(text: str, quote: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        nxt = text[i + 1 : i + 2]
        if text[i] == "\\" and nxt and (nxt == "\\" or (quote and nxt == quote)):
            out.append(nxt)
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def words(line: str) -> list[str]:
    """Every ``ap_getword_conf`` word of ``line``."""
    found: list[str] = []
    while line:
        word, line = getword_conf(line)
        found.append(word)
    return found


def parseargline(line: str) -> tuple[str, str, str | None, str]:
    """mod_rewrite's ``parseargline``: (first, second, optional third argument, rest).

    Raises ValueError with Apache's wording when there are fewer than two arguments.
    ``rest`` is whatever follows the third argument (Apache ignores it silently).
    """
    first, after_first = _argument(line.lstrip(_SPACE))
    if after_first is None:
        raise ValueError("bad argument line: at least two arguments required")
    second, after_second = _argument(after_first.lstrip(_SPACE))
    if after_second is None or not after_second.lstrip(_SPACE):
        return first, second, None, ""
    third, rest = _argument(after_second.lstrip(_SPACE))
    return first, second, third, (rest or "").strip(_SPACE)


def _argument(line: str) -> tuple[str, str | None]:
    """One argument and what follows its terminator; None when the line ended instead."""
    quote = line[0] if line[:1] in ("'", '"') else ""
    i = 1 if quote else 0
    start = i
    while i < len(line):
        c = line[i]
        if (c in _SPACE and not quote) or (quote and c == quote):
            return line[start:i], line[i + 1 :]
        i += 2 if c == "\\" and line[i + 1 : i + 2] in tuple(_SPACE) else 1
    return line[start:], None


class _State:
    """What has been read so far; ``directive`` dispatches one line."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.engine_on = False
        self.options: list[str] = []
        self.maps: list[MapDirective] = []
        self.rules: list[RuleDirective] = []
        self.pending: list[CondDirective] = []

    def error(self, line: int, message: str) -> RuleSyntaxError:
        return RuleSyntaxError(self.filename, line, message)

    def directive(self, line: int, content: str) -> None:
        name, rest = getword_conf(content)
        key = name.lower()
        handler = {
            "rewriteengine": self.engine,
            "rewriteoptions": self.rewrite_options,
            "rewritemap": self.rewrite_map,
            "rewritecond": self.condition,
            "rewriterule": self.rule,
        }.get(key)
        if handler is not None:
            handler(line, rest)
            return
        if name.startswith("<"):
            message = f"sections such as {shown(name)}> are not supported; use only {_DIRECTIVES}"
        elif key in _PER_DIRECTORY or key in _GONE:
            message = _PER_DIRECTORY.get(key) or _GONE[key]
        else:
            message = f"unknown directive {shown(name)!r}; a rule file holds only {_DIRECTIVES}"
        raise self.error(line, message)

    def engine(self, line: int, rest: str) -> None:
        args = words(rest)
        if len(args) != 1 or args[0].lower() not in ("on", "off"):
            raise self.error(line, "RewriteEngine must be On or Off")
        self.engine_on = args[0].lower() == "on"

    def rewrite_options(self, line: int, rest: str) -> None:
        args = words(rest)
        if not args:
            raise self.error(line, "RewriteOptions needs at least one option")
        self.options.extend(args)
        for option in args:
            if option.lower() not in _OPTIONS and not option.lower().startswith("maxredirects="):
                raise self.error(line, f"RewriteOptions: unknown option {shown(option)!r}")

    def rewrite_map(self, line: int, rest: str) -> None:
        args = words(rest)
        if len(args) not in (2, 3):
            raise self.error(line, "RewriteMap takes two arguments: NAME TYPE:SOURCE")
        self.maps.append(MapDirective(line, args[0], args[1]))

    def condition(self, line: int, rest: str) -> None:
        test, pattern, flags = self.arguments(line, rest, "RewriteCond")
        self.pending.append(CondDirective(line, test, pattern, flags))

    def rule(self, line: int, rest: str) -> None:
        pattern, substitution, flags = self.arguments(line, rest, "RewriteRule")
        self.rules.append(RuleDirective(line, pattern, substitution, flags, tuple(self.pending)))
        self.pending = []

    def arguments(
        self, line: int, rest: str, directive: str
    ) -> tuple[str, str, tuple[tuple[str, str], ...]]:
        try:
            first, second, third, extra = parseargline(rest)
        except ValueError as exc:
            raise self.error(line, f"{directive}: {exc}") from None
        flags = self.flag_field(line, third, directive)
        if extra and not extra.startswith("#"):
            raise self.error(
                line, f"{directive}: unexpected text after the flags: {shown(extra)!r}"
            )
        if not first or not second:
            what = "pattern" if not first else "second argument"
            raise self.error(line, f"{directive}: empty {what}")
        return first, second, flags

    def flag_field(
        self, line: int, field: str | None, directive: str
    ) -> tuple[tuple[str, str], ...]:
        """``cmd_parseflagfield``: ``[a,b=c]`` into ((a, ""), (b, c))."""
        if field is None:
            return ()
        if not field.startswith("[") or not field.endswith("]") or len(field) < 2:
            raise self.error(
                line,
                f"{directive}: bad flag delimiters: the flags {shown(field)!r} must be written "
                "[FLAG,...] (too many arguments or stray white space?)",
            )
        flags = []
        for item in field[1:-1].split(","):
            key, _, value = item.strip(_SPACE).partition("=")
            if not key:
                raise self.error(line, f"{directive}: empty flag in {shown(field)}")
            flags.append((key, value))
        return tuple(flags)


_OPTIONS = frozenset(
    {
        "inherit",
        "inheritbefore",
        "inheritdown",
        "inheritdownbefore",
        "ignoreinherit",
        "allownoslash",
        "allowanyuri",
        "mergebase",
        "ignorecontextinfo",
        "legacyprefixdocroot",
        "longurloptimization",
    }
)
