"""Substitution strings and test strings, pre-split into literal text and references.

The syntax is mod_rewrite's ``do_expand``: ``\\c`` is a literal ``c``; ``$N`` and ``%N``
(one digit) are back-references to the rule pattern and to the last matched condition;
``%{NAME}`` is a variable; ``${map:key|default}`` a map lookup whose key and default are
themselves expanded, with ``{...}`` nesting; a ``%{`` or ``${`` without its closing brace
(or a ``${`` without a colon) is literal text. Expansion is a single pass: text that an
expansion produces is never expanded again.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable

from dispatcher.redirect.maps import RewriteMap
from dispatcher.redirect.state import EvalState, NotApplicable
from dispatcher.redirect.target import (
    BACKREF,
    LITERAL,
    SITE,
    VARIABLE,
    join_target,
    needs_guard,
)
from dispatcher.redirect.variables import Getter, UnknownVariable, variable

#: Escapes a back-reference (the ``B`` flags), or None for no escaping.
Escaper = Callable[[str], str] | None
_DIGITS = "0123456789"


class TemplateError(ValueError):
    """A string references a variable or map that does not exist; the message says which."""


class Ref(ABC):
    """A part of a template that is computed per request."""

    __slots__ = ()

    @abstractmethod
    def expand(self, state: EvalState, escape: Escaper) -> str:
        """The text this reference stands for in ``state``."""


class RuleRef(Ref):
    """``$N``: group N of the rule pattern's match (empty if none)."""

    __slots__ = ("number",)

    def __init__(self, number: int) -> None:
        self.number = number

    def expand(self, state: EvalState, escape: Escaper) -> str:
        return _group(state.rule_match, self.number, escape)


class CondRef(Ref):
    """``%N``: group N of the last condition that matched a regex (empty if none)."""

    __slots__ = ("number",)

    def __init__(self, number: int) -> None:
        self.number = number

    def expand(self, state: EvalState, escape: Escaper) -> str:
        return _group(state.cond_match, self.number, escape)


def _group(match: re.Match[str] | None, number: int, escape: Escaper) -> str:
    if match is None or number > match.re.groups:
        return ""
    text = match.group(number)
    if not text:
        return ""
    return escape(text) if escape is not None else text


class VarRef(Ref):
    """``%{NAME}``: a server variable, header or environment variable."""

    __slots__ = ("getter", "name")

    def __init__(self, name: str, getter: Getter) -> None:
        self.name = name
        self.getter = getter

    def expand(self, state: EvalState, escape: Escaper) -> str:
        return self.getter(state)


class MapRef(Ref):
    """``${map:key|default}``; a ``site:`` lookup with no site and no default stops the rule."""

    __slots__ = ("default", "key", "map", "name")

    def __init__(
        self, name: str, rewrite_map: RewriteMap, key: Template, default: Template | None
    ) -> None:
        self.name = name
        self.map = rewrite_map
        self.key = key
        self.default = default

    def expand(self, state: EvalState, escape: Escaper) -> str:
        key = self.key.expand(state, escape)
        value = self.map.lookup(key, state)
        if value:
            return value
        default = self.default
        if default is not None:
            if default.guarded:  # ``${site:eu|http://%{HTTP_HOST}}``: guarded on its own
                return default.expand_checked(state, escape)[0]
            return default.expand(state, escape)
        if self.map.kind == "site":
            raise NotApplicable(key)
        return ""


Part = str | Ref


class Template:
    """A compiled string: ``parts`` alternate literal text and references."""

    __slots__ = ("constant", "guarded", "kinds", "parts", "single", "source")

    def __init__(self, source: str, parts: tuple[Part, ...]) -> None:
        self.source = source
        self.parts = parts
        texts = [part for part in parts if isinstance(part, str)]
        self.constant: str | None = "".join(texts) if len(texts) == len(parts) else None
        only = parts[0] if len(parts) == 1 else None
        #: The one reference the template consists of, if so (the common test string).
        self.single: Ref | None = only if isinstance(only, Ref) else None
        #: Each part's kind for :func:`join_target`: literal, reference, ``${site:...}``.
        self.kinds = tuple(_kind(part) for part in parts)
        literals = tuple(part if isinstance(part, str) else None for part in parts)
        #: Whether, as a substitution, it needs :func:`join_target`'s guards.
        self.guarded = bool(parts) and needs_guard(self.kinds, literals)

    def expand(self, state: EvalState, escape: Escaper = None) -> str:
        """The text for ``state``; ``escape`` applies to ``$N``/``%N`` (the ``B`` flag)."""
        if self.constant is not None:
            return self.constant
        if self.single is not None:
            return self.single.expand(state, escape)
        return "".join([p if p.__class__ is str else p.expand(state, escape) for p in self.parts])  # type: ignore[union-attr]

    def expand_checked(
        self, state: EvalState, escape: Escaper, *, noescape: bool = False
    ) -> tuple[str, bool]:
        """(text, whether its first ``?`` came from an expansion rather than literal text).

        Apache 2.4.60+ refuses such a rewrite unless ``UnsafeAllow3F`` (CVE-2024-38474).
        The text is joined with :func:`join_target`'s guards (``noescape``: the rule's
        ``NE``); the ``?`` check looks at the expansions before they are escaped.
        """
        if self.constant is not None:
            return self.constant, False
        out: list[str] = []
        unsafe = seen = False
        for part in self.parts:
            text = part if isinstance(part, str) else part.expand(state, escape)
            if not seen and "?" in text:
                seen = True
                unsafe = not isinstance(part, str)
            out.append(text)
        if self.guarded:
            return join_target(out, self.kinds, noescape=noescape), unsafe
        return "".join(out), unsafe

    def references(self) -> tuple[Ref, ...]:
        """Every reference, nested ones (in map keys and defaults) included."""
        found: list[Ref] = []
        for part in self.parts:
            if isinstance(part, Ref):
                found.append(part)
            if isinstance(part, MapRef):
                found.extend(part.key.references())
                if part.default is not None:
                    found.extend(part.default.references())
        return tuple(found)


def _kind(part: Part) -> int:
    if isinstance(part, str):
        return LITERAL
    if isinstance(part, MapRef) and part.map.kind == "site":
        return SITE
    return BACKREF if isinstance(part, (RuleRef, CondRef)) else VARIABLE


MapResolver = Callable[[str], RewriteMap | None]


def compile_template(source: str, maps: MapResolver) -> Template:
    """Split ``source`` into parts; raise :class:`TemplateError` for unknown names."""
    return Template(source, tuple(_parse(source, maps)))


def _parse(text: str, maps: MapResolver) -> list[Part]:
    parts: list[Part] = []
    literal: list[str] = []

    def emit(ref: Ref) -> None:
        if literal:
            parts.append("".join(literal))
            literal.clear()
        parts.append(ref)

    i, n = 0, len(text)
    while i < n:
        c, nxt = text[i], text[i + 1 : i + 2]
        if c == "\\":
            literal.append(nxt or "\\")
            i += 2
        elif c in "$%" and nxt == "{" and (end := _closing_curly(text, i + 2)) >= 0:
            ref = _braced(c, text[i + 2 : end], maps)
            if ref is None:
                literal.append("${")
                i += 2
                continue
            emit(ref)
            i = end + 1
        elif c in "$%" and nxt and nxt in _DIGITS:
            emit(RuleRef(int(nxt)) if c == "$" else CondRef(int(nxt)))
            i += 2
        else:
            literal.append(c)
            i += 1
    if literal:
        parts.append("".join(literal))
    return parts


def _braced(sigil: str, inner: str, maps: MapResolver) -> Ref | None:
    """``%{inner}`` or ``${inner}``; None for a ``${`` that is literal text (no colon)."""
    if sigil == "%":
        try:
            return VarRef(inner, variable(inner))
        except UnknownVariable as exc:
            raise TemplateError(str(exc)) from None
    colon = _char_in_curlies(inner, ":")
    if colon < 0:
        return None
    name, rest = inner[:colon], inner[colon + 1 :]
    rewrite_map = maps(name)
    if rewrite_map is None:
        raise TemplateError(f"unknown map {name!r} in ${{{inner}}} (declare it with RewriteMap)")
    bar = _char_in_curlies(rest, "|")
    key, default = (rest, "") if bar < 0 else (rest[:bar], rest[bar + 1 :])
    key_template = compile_template(key, maps)
    default_template = compile_template(default, maps) if default else None
    return MapRef(name, rewrite_map, key_template, default_template)


def _closing_curly(text: str, start: int) -> int:
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        elif text[i] == "{":
            depth += 1
    return -1


def _char_in_curlies(text: str, wanted: str) -> int:
    depth = 1
    for i, c in enumerate(text):
        if c == wanted and depth == 1:
            return i
        if c == "}":
            depth -= 1
        elif c == "{":
            depth += 1
    return -1
