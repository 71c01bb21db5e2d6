"""The evaluator's fast path: each rule compiled to one specialised Python function.

:mod:`engine` is the reference: an interpreter that walks the compiled rules, checks every
flag of every rule and reports to a tracer. This module compiles each :class:`Rule` once
(when the rule set is compiled) into Python source with everything known in advance baked
in (its prefix, pattern, negation, conditions and their ``OR`` chains, how each part of each
string expands, the query-split flags, the redirect code), ``exec``-s it, and runs those
functions in a list loop equal to :func:`engine._apply_list` without the tracer. Whatever is
rare or intricate (map lookups, ``E`` and ``CO`` values, the outcome) still goes through the
interpreter's own helpers, so there is one implementation of each.

The fast path must answer exactly as the interpreter does: tests/redirect/test_fastpath.py
checks that on generated rule sets and requests (and ``explain()``, which always takes the
interpreter, checks it on every explained request there and in the differential suite).
"""

from __future__ import annotations

import datetime
import random
from bisect import bisect_left
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from dispatcher.redirect import engine
from dispatcher.redirect.compiler import CompiledRules, Condition, Rule
from dispatcher.redirect.escape import decode_request_path, octets
from dispatcher.redirect.model import Outcome
from dispatcher.redirect.request import RewriteRequest
from dispatcher.redirect.state import EvalState, NotApplicable, SiteSelector
from dispatcher.redirect.target import join_target
from dispatcher.redirect.template import (
    CondRef,
    Escaper,
    MapRef,
    RuleRef,
    Template,
    VarRef,
    _group,
)
from dispatcher.redirect.variables import authority, inline_form, scheme

RuleFunction = Callable[[EvalState], int]
_NOMATCH, _MATCH, _NOSUB, _FORBIDDEN = engine._NOMATCH, engine._MATCH, engine._NOSUB, 3
_UNCHANGED, _NORMAL, _NOESCAPE, _STATUS = 0, 1, 2, 3
_EMPTY_ENV: MappingProxyType[str, str] = MappingProxyType({})
_new = tuple.__new__


def _escaped(text: str | None, escape: Callable[[str], str]) -> str:
    return escape(text) if text else ""


class FastRules:
    """A rule set compiled to Python functions; :meth:`evaluate` is ``engine.evaluate``."""

    __slots__ = ("_after_fail", "_functions", "_index", "_post", "_rules")

    def __init__(self, compiled: CompiledRules) -> None:
        rules = compiled.rules
        self._rules = rules
        self._index = compiled.index
        self._functions = tuple(_compile_rule(rule) for rule in rules)
        after: list[int] = []
        for i, rule in enumerate(rules):
            if not rule.flags.chain:
                after.append(i + 1)
                continue
            j = i + 1
            while j < len(rules) and rules[j - 1].flags.chain:
                j += 1
            after.append(j)
        self._after_fail = tuple(after)
        #: Per rule: (answer status or None, noescape, stops (L/END), N rounds or None, S).
        self._post = tuple(
            (
                rule.flags.status,
                rule.flags.noescape,
                rule.flags.end or rule.flags.last,
                rule.flags.rounds,
                rule.flags.skip,
            )
            for rule in rules
        )

    def evaluate(
        self,
        request: RewriteRequest,
        sites: SiteSelector | None,
        now: datetime.datetime | None,
        rng: random.Random | None,
    ) -> Outcome:
        """What ``request`` gets: the same as :func:`engine.evaluate` (the engine is on)."""
        path = request.path
        if path.isascii() and path[:1] == "/" and not ("%" in path or "/." in path or "//" in path):
            uri = path  # decode_request_path's common case: nothing to decode
        else:
            decoded = decode_request_path(path)
            if isinstance(decoded, int):
                return engine._status(request, decoded, (), _EMPTY_ENV)
            uri = decoded
        state = EvalState(request, uri, sites, now, rng)
        result = self._apply_list(state)
        if result == _UNCHANGED and not state.env_set and not state.cookies:
            # engine._finish's first answer, built directly (the common case)
            return _new(
                Outcome, ("none", None, None, request.path, request.query_string, (), _EMPTY_ENV)
            )
        return engine._finish(state, result, None)

    def _apply_list(self, state: EvalState) -> int:
        """:func:`engine._apply_list` with the index, without the tracer.

        A rule that does not apply leaves the URL as it was, so only one that applied can
        make the candidates change.
        """
        functions, post, after_fail = self._functions, self._post, self._after_fail
        candidates_of = self._index.candidates
        changed, rounds = _UNCHANGED, 1
        indexed_uri = state.uri
        candidates = candidates_of(indexed_uri)
        count = len(candidates)
        position = 0
        while position < count:
            i = candidates[position]
            rc = functions[i](state)
            position += 1
            if rc == _NOMATCH:
                following = after_fail[i]
                while position < count and candidates[position] < following:
                    position += 1
                continue
            status, noescape, stops, max_rounds, skip = post[i]
            if _answers_status(rc, status, state):
                return _STATUS
            if rc != _NOSUB:
                changed = _NOESCAPE if noescape else _NORMAL
            if stops:
                break
            if max_rounds is not None:
                rounds += 1
                if rounds >= max_rounds:
                    state.status = 500
                    return _STATUS
                following = position = 0
            else:
                following = i + 1 + skip
            uri = state.uri
            if uri is not indexed_uri:
                indexed_uri, candidates = uri, candidates_of(uri)
                count = len(candidates)
                position = bisect_left(candidates, following)
            else:
                while position < count and candidates[position] < following:
                    position += 1
        return changed


def _answers_status(rc: int, status: int | None, state: EvalState) -> bool:
    """``engine._answers_status``: whether the rule that applied ends the request."""
    if rc == _FORBIDDEN:
        state.status = 403
    elif len(state.uri) > engine.MAX_URI_LENGTH:
        state.status = 500
    elif status is not None:
        state.status = status
    else:
        return False
    return True


class _Source:
    """Python source for one rule function, with the objects it refers to."""

    def __init__(self) -> None:
        self.names: dict[str, Any] = {
            "NotApplicable": NotApplicable,
            "_group": _group,
            "_escaped": _escaped,
            "_set_env": engine._set_env,
            "_add_cookies": engine._add_cookies,
            "_absolute": engine._absolute,
            "_scheme": scheme,
            "_authority": authority,
            "_octets": octets,
            "_join_target": join_target,
        }
        self.lines: list[str] = []

    def constant(self, value: object) -> str:
        name = f"_k{len(self.names)}"
        self.names[name] = value
        return name

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)


def _compile_rule(rule: Rule) -> RuleFunction:
    """``engine._apply_rule`` for this one rule, without the tracer."""
    src = _Source()
    flags = rule.flags
    src.emit(0, "def rule(st):")
    src.emit(1, "uri = st.uri")
    if rule.prefix is not None:
        src.emit(1, f"if not uri.startswith({src.constant(rule.prefix)}):")
        src.emit(2, "return 0")
    matched = _match(src, rule)
    src.emit(1, f"m = {matched}")
    if rule.negate:
        src.emit(1, "if m is not None:")
        src.emit(2, "return 0")
    elif ".search(" in matched:  # (a constant match, for ``^``, always matches)
        src.emit(1, "if m is None:")
        src.emit(2, "return 0")
    src.emit(1, "st.cond_match = None")
    src.emit(1, "st.rule_match = m")
    groups = rule.regex.groups
    match = "None" if rule.negate else "m"
    src.emit(1, "try:")
    opened = len(src.lines)
    _conditions(src, rule.conditions, match, groups)
    substitution = rule.substitution
    if substitution is not None:
        _substitution(
            src,
            substitution,
            flags.escape,
            match,
            groups,
            check=not flags.allow3f,
            noescape=flags.noescape,
        )
    env = [_expression(src, t, None, match, groups) for t in flags.env]
    cookies = [f"{src.constant(spec)}.expand(st)" for spec in flags.cookies]
    if env:
        src.emit(2, f"env = [{', '.join(env)}]")
    if cookies:
        src.emit(2, f"cookies = [{', '.join(cookies)}]")
    if len(src.lines) == opened:
        src.emit(2, "pass")
    src.emit(1, "except NotApplicable:")
    src.emit(2, "return 0")
    if env:
        src.emit(1, "_set_env(env, st)")
    if cookies:
        src.emit(1, "_add_cookies(cookies, st)")
    if substitution is None:
        src.emit(1, "return 2")
    else:
        _substitute(src, rule)
        src.emit(1, "return 1")
    code = "\n".join(src.lines) + "\n"
    exec(compile(code, f"<rule at line {rule.line}>", "exec"), src.names)  # noqa: S102 - our own source
    function: RuleFunction = src.names["rule"]
    return function


def _match(src: _Source, rule: Rule) -> str:
    """The expression for the rule pattern's match on ``uri``.

    ``^`` matches every path, empty, at its start: one such match serves every request
    (only its groups are read, through ``_group``: it has none, and ``$0`` is ``""``).
    """
    if rule.regex.pattern == "^" and not rule.negate:
        return src.constant(rule.regex.search(""))
    return f"{src.constant(rule.regex)}.search(uri)"


def _conditions(src: _Source, conditions: tuple[Condition, ...], match: str, groups: int) -> None:
    """``engine._conditions``: each ``OR`` chain nested; a failed chain ends the rule.

    A chain that ends the list with ``OR`` cannot fail (as in the interpreter).
    """
    i = 0
    while i < len(conditions):
        chain = [conditions[i]]
        while chain[-1].ornext and i + len(chain) < len(conditions):
            chain.append(conditions[i + len(chain)])
        i += len(chain)
        depth = 2
        for position, cond in enumerate(chain):
            if position:
                src.emit(depth, "if not ok:")
                depth += 1
            _condition(src, depth, cond, match, groups)
        if not chain[-1].ornext:
            src.emit(2, "if not ok:")
            src.emit(3, "return 0")


def _condition(src: _Source, depth: int, cond: Condition, match: str, groups: int) -> None:
    """``engine._condition``: sets ``ok``; only a regex that matched (unnegated) sets ``%N``."""
    if not _inline_variable(src, depth, cond.test):
        src.emit(depth, f"text = {_expression(src, cond.test, None, match, groups)}")
    if cond.regex is not None:
        src.emit(depth, f"c = {src.constant(cond.regex)}.search(text)")
        if cond.negate:
            src.emit(depth, "ok = c is None")
        else:
            src.emit(depth, "ok = c is not None")
            src.emit(depth, "if ok:")
            src.emit(depth + 1, "st.cond_match = c")
    else:
        test = src.constant(cond.compare)
        src.emit(depth, f"ok = not {test}(text)" if cond.negate else f"ok = bool({test}(text))")


def _inline_variable(src: _Source, depth: int, test: Template) -> bool:
    """``text = <a request header, the Host or the method>`` without calling its getter, for
    a test string that is that one variable (the common ``%{HTTP_USER_AGENT}``); else False.
    The same value as the getter's (:mod:`variables`): octets, ``""`` when absent."""
    if test.constant is not None or len(test.parts) != 1:
        return False
    part = test.parts[0]
    form = inline_form(part.getter) if isinstance(part, VarRef) else None
    if form is None:
        return False
    kind, name = form
    if kind == "header":
        src.emit(depth, f'text = st.request.headers.get({src.constant(name)}, "")')
    elif kind == "host":
        src.emit(depth, 'text = st.request.host or st.request.headers.get("host", "")')
    else:
        src.emit(depth, "text = st.request.method")
    src.emit(depth, "if not text.isascii():")
    src.emit(depth + 1, "text = _octets(text)")
    return True


def _part(src: _Source, part: str | object, escape: Escaper, match: str, groups: int) -> str | None:
    """A Python expression for one part of a template; None for an always empty one."""
    if isinstance(part, str):
        return src.constant(part) if part else None
    esc = "None" if escape is None else src.constant(escape)
    if isinstance(part, RuleRef):
        # $N is group N of this rule's own match (None for a negated pattern).
        if match == "None" or part.number > groups:
            return None
        if escape is None:
            return f'(m.group({part.number}) or "")'
        return f"_escaped(m.group({part.number}), {esc})"
    if isinstance(part, CondRef):
        return f"_group(st.cond_match, {part.number}, {esc})"
    if isinstance(part, VarRef):
        return f"{src.constant(part.getter)}(st)"
    assert isinstance(part, MapRef)
    return f"{src.constant(part)}.expand(st, {esc})"


def _expression(src: _Source, template: Template, escape: Escaper, match: str, groups: int) -> str:
    """``template.expand(st, escape)`` as a Python expression."""
    if template.constant is not None:
        return src.constant(template.constant)
    parts = [_part(src, part, escape, match, groups) for part in template.parts]
    present = [p for p in parts if p is not None]
    if not present:
        return '""'
    return " + ".join(present)


def _substitution(
    src: _Source,
    template: Template,
    escape: Escaper,
    match: str,
    groups: int,
    *,
    check: bool,
    noescape: bool,
) -> None:
    """``new = template.expand_checked(...)``; with ``check``, 403 for an unsafe ``?``.

    The first ``?`` came from an expansion exactly when an expanded part before the first
    literal part holding a ``?`` holds one.
    """
    if template.constant is not None:
        src.emit(2, f"new = {src.constant(template.constant)}")
        return
    names: list[str] = []
    kinds: list[int] = []
    watched: list[str] = []
    literal_mark = False
    for number, (part, kind) in enumerate(zip(template.parts, template.kinds, strict=True)):
        expression = _part(src, part, escape, match, groups)
        if expression is None:
            continue
        kinds.append(kind)
        if isinstance(part, str):
            names.append(expression)
            literal_mark = literal_mark or "?" in part
            continue
        name = f"p{number}"
        src.emit(2, f"{name} = {expression}")
        names.append(name)
        if not literal_mark:
            watched.append(name)
    if template.guarded and names:
        parts, guard_kinds = ", ".join(names), src.constant(tuple(kinds))
        src.emit(2, f"new = _join_target(({parts},), {guard_kinds}, noescape={noescape})")
    else:
        src.emit(2, f"new = {' + '.join(names) if names else repr('')}")
    if check and watched:
        unsafe = " or ".join(f'"?" in {name}' for name in watched)
        src.emit(2, f"if {unsafe}:")
        src.emit(3, "return 3")


def _substitute(src: _Source, rule: Rule) -> None:
    """``engine._substitute`` (and ``_split_query``) with the rule's flags baked in."""
    flags = rule.flags
    if flags.qsdiscard or flags.qsnone:
        src.emit(1, "st.args = None")
    if not flags.qsnone:
        src.emit(1, f"mark = new.{'rfind' if flags.qslast else 'find'}('?')")
        src.emit(1, "if mark >= 0:")
        src.emit(2, "query = new[mark + 1 :]")
        src.emit(2, "new = new[:mark]")
        if not flags.qsappend:
            src.emit(2, "args = query")
        else:
            src.emit(2, "args = st.args")
            src.emit(2, "if query:")
            src.emit(3, "args = f\"{query}&{args or ''}\"")
        src.emit(2, "if args is not None:")
        src.emit(3, 'args = args.removesuffix("&") or None')
        src.emit(2, "st.args = args")
    src.emit(1, "absolute = _absolute(new)")
    src.emit(1, 'if not absolute and not new.startswith("/"):')
    src.emit(2, 'new = "/" + new')
    if flags.redirect is not None:
        src.emit(1, "if not absolute:")
        src.emit(2, 'new = f"{_scheme(st.request)}://{_authority(st.request)}{new}"')
        src.emit(1, f"st.status = {flags.redirect}")
    else:
        src.emit(1, "if absolute:")
        src.emit(2, "st.status = 302")
    src.emit(1, "st.uri = new")
