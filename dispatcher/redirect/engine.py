"""The evaluator: mod_rewrite's server-context engine on one request.

A port of ``hook_uri2file``, ``apply_rewrite_list``, ``apply_rewrite_rule`` and
``apply_rewrite_cond`` (modules/mappers/mod_rewrite.c), keeping their order of operations:
the rule pattern first, conditions only then, the substitution, ``E`` and ``CO``, the query
split, then the redirect decision; the list loop handles ``C``, ``S``, ``L``, ``END``, ``N``
and the status flags. Where Apache 2.4.71 behaves differently from that source (root prefix,
trailing ``?``, the AH10410 and AH10508 refusals), it follows 2.4.71; the deliberate
differences are in docs/rewrite.md. The tracer, when given, records each step.
"""

from __future__ import annotations

import datetime
import random
from bisect import bisect_left
from collections.abc import Sequence
from types import MappingProxyType

from dispatcher.redirect.compiler import CompiledRules, Condition, Rule, RuleFlags
from dispatcher.redirect.cookies import make_cookie
from dispatcher.redirect.escape import (
    decode_request_path,
    escape_uri,
    has_ctl_or_space,
    wire_query,
    wire_url,
)
from dispatcher.redirect.explain import ConditionStep, Tracer
from dispatcher.redirect.index import RuleIndex
from dispatcher.redirect.model import Action, Outcome
from dispatcher.redirect.request import RewriteRequest
from dispatcher.redirect.state import EvalState, NotApplicable, SiteSelector
from dispatcher.redirect.target import no_host
from dispatcher.redirect.variables import authority, scheme

#: Apache's limit on a rewritten URL (twice LimitRequestLine's default): beyond it, 500.
MAX_URI_LENGTH = 2 * 8190

_NOMATCH, _MATCH, _NOSUB, _FORBIDDEN = 0, 1, 2, 3
_UNCHANGED, _NORMAL, _NOESCAPE, _STATUS = 0, 1, 2, 3
_ACTIONS: dict[int, Action] = {403: "forbidden", 410: "gone"}
_EMPTY_ENV: MappingProxyType[str, str] = MappingProxyType({})


def evaluate(
    compiled: CompiledRules,
    request: RewriteRequest,
    *,
    sites: SiteSelector | None,
    now: datetime.datetime | None,
    rng: random.Random | None,
    tracer: Tracer | None = None,
) -> Outcome:
    """Run the rules on ``request``; never raises (errors become status outcomes)."""
    if not compiled.enabled or not compiled.rules:
        if tracer is not None:
            tracer.note("RewriteEngine is off" if not compiled.enabled else "there are no rules")
        return _unchanged(request, (), _EMPTY_ENV)
    uri = decode_request_path(request.path)
    if isinstance(uri, int):
        if tracer is not None:
            tracer.note(f"the path {request.path!r} is rejected before any rule runs ({uri})")
        return _status(request, uri, (), _EMPTY_ENV)
    state = EvalState(request, uri, sites, now, rng)
    index = compiled.index if tracer is None else None
    return _finish(state, _apply_list(compiled.rules, index, state, tracer), tracer)


def _apply_list(
    rules: tuple[Rule, ...], index: RuleIndex | None, state: EvalState, tracer: Tracer | None
) -> int:
    """``apply_rewrite_list``: 0 (unchanged), _NORMAL/_NOESCAPE (changed) or _STATUS.

    With an ``index``, rules that cannot match the current path are not even tried.
    """
    changed, rounds, count, i = _UNCHANGED, 1, len(rules), 0
    indexed_uri = ""
    candidates: Sequence[int] = range(count)
    while i < count:
        if index is not None:
            if state.uri is not indexed_uri:
                indexed_uri, candidates = state.uri, index.candidates(state.uri)
            position = bisect_left(candidates, i)
            if position == len(candidates):
                break
            i = candidates[position]
        rule = rules[i]
        rc = _apply_rule(rule, state, tracer)
        if rc == _NOMATCH:
            i = _skip_chain(rules, i, tracer) if rule.flags.chain else i + 1
            continue
        if _answers_status(rule, rc, state, tracer):
            return _STATUS
        flags = rule.flags
        if rc != _NOSUB:
            changed = _NOESCAPE if flags.noescape else _NORMAL
        if flags.end or flags.last:
            _note(tracer, "stop (END)" if flags.end else "stop (L)")
            break
        if flags.rounds is not None:
            rounds += 1
            if rounds >= flags.rounds:
                state.status = 500
                _note(tracer, f"500: N restarted the rules {flags.rounds} times")
                return _STATUS
            _note(tracer, f"restart from the first rule (N), round {rounds}")
            i = 0
            continue
        if flags.skip:
            _note(tracer, f"skipping {_lines(rules[i + 1 : i + 1 + flags.skip])} (S={flags.skip})")
        i += 1 + flags.skip
    return changed


def _skip_chain(rules: tuple[Rule, ...], i: int, tracer: Tracer | None) -> int:
    """After chained rule ``i`` failed: the index past the rest of its chain."""
    start = i = i + 1
    while i < len(rules) and rules[i - 1].flags.chain:
        i += 1
    _note(tracer, f"chain broken: skipping {_lines(rules[start:i])}")
    return i


def _answers_status(rule: Rule, rc: int, state: EvalState, tracer: Tracer | None) -> bool:
    """Whether the rule that applied ends the request with a status (set in ``state``)."""
    if rc == _FORBIDDEN:
        state.status = 403
        _note(tracer, "403: a '?' produced by an expansion (add UnsafeAllow3F)")
    elif len(state.uri) > MAX_URI_LENGTH:
        state.status = 500
        _note(tracer, f"500: the URL grew beyond {MAX_URI_LENGTH} characters")
    elif rule.flags.status is not None:
        state.status = rule.flags.status
        _note(tracer, f"stop: answer status {rule.flags.status}")
    else:
        return False
    return True


def _apply_rule(rule: Rule, state: EvalState, tracer: Tracer | None) -> int:
    """``apply_rewrite_rule``: _NOMATCH, _MATCH, _NOSUB or _FORBIDDEN (unsafe ``?``)."""
    uri = state.uri
    prefix = rule.prefix
    match = None if prefix is not None and not uri.startswith(prefix) else rule.regex.search(uri)
    matched = (match is not None) is not rule.negate
    if tracer is not None:
        tracer.rule(rule.line, rule.pattern, rule.written, rule.flag_text, uri, matched=matched)
    if not matched:
        return _NOMATCH
    state.cond_match = None
    state.rule_match = None if rule.negate else match
    try:
        if rule.conditions and not _conditions(rule.conditions, state, tracer):
            return _NOMATCH
        new_uri, unsafe = None, False
        if rule.substitution is not None:
            new_uri, unsafe = rule.substitution.expand_checked(
                state, rule.flags.escape, noescape=rule.flags.noescape
            )
        if unsafe and not rule.flags.allow3f:
            return _FORBIDDEN
        env = [template.expand(state) for template in rule.flags.env]
        cookies = [spec.expand(state) for spec in rule.flags.cookies]
    except NotApplicable as missing:
        _note(tracer, f"no site for pool {missing.pool!r} and no default: rule does not apply")
        return _NOMATCH
    _set_env(env, state)
    _add_cookies(cookies, state)
    if new_uri is None:
        if tracer is not None:
            tracer.applied(None, None)
        return _NOSUB
    _substitute(rule, new_uri, state)
    if tracer is not None:
        tracer.applied(state.uri, state.args)
    return _MATCH


def _conditions(conditions: tuple[Condition, ...], state: EvalState, tracer: Tracer | None) -> bool:
    """The condition loop of ``apply_rewrite_rule``, ``OR`` chains included."""
    i, count = 0, len(conditions)
    while i < count:
        cond = conditions[i]
        ok = _condition(cond, state, tracer)
        if cond.ornext:
            if ok:
                while i < count and conditions[i].ornext:
                    i += 1
            i += 1
        elif not ok:
            return False
        else:
            i += 1
    return True


def _condition(cond: Condition, state: EvalState, tracer: Tracer | None) -> bool:
    """``apply_rewrite_cond``: only a regex that matched (unnegated) sets ``%N``."""
    text = cond.test.expand(state)
    if cond.regex is not None:
        match = cond.regex.search(text)
        rc = match is not None
        if rc and not cond.negate:
            state.cond_match = match
    else:
        assert cond.compare is not None
        rc = cond.compare(text)
    result = rc != cond.negate
    if tracer is not None:
        tracer.condition(
            ConditionStep(cond.line, cond.test.source, text, cond.pattern, cond.flags, result)
        )
    return result


def _set_env(values: list[str], state: EvalState) -> None:
    for text in values:
        if text.startswith("!"):
            state.set_env(text[1:], None)
        else:
            name, _, value = text.partition(":")
            state.set_env(name, value)


def _add_cookies(values: list[list[str]], state: EvalState) -> None:
    for fields in values:
        made = make_cookie(fields, state.now)
        if made is None:
            continue
        cookies = state.cookies
        if cookies is None:
            cookies = state.cookies = {}
        if made[0] not in cookies:
            cookies[made[0]] = made[1]


def _substitute(rule: Rule, new_uri: str, state: EvalState) -> None:
    """The part of ``apply_rewrite_rule`` after expansion: query split, root prefix, redirect.

    Apache would also reduce a URL naming this very server to its path; it does so only for
    URLs naming the virtual host's address and port, so in practice a URL redirects. Here it
    always does (see docs/rewrite.md).
    """
    flags = rule.flags
    state.uri = new_uri
    _split_query(state, flags)
    absolute = _absolute(state.uri)
    if not absolute and not state.uri.startswith("/"):
        state.uri = "/" + state.uri
    if flags.redirect is not None:
        if not absolute:
            state.uri = f"{scheme(state.request)}://{authority(state.request)}{state.uri}"
        state.status = flags.redirect
    elif absolute:
        state.status = 302


def _split_query(state: EvalState, flags: RuleFlags) -> None:
    """``splitout_queryargs``: a ``?`` in the new URL replaces (QSA: prefixes) the query.

    A substitution written with a trailing ``?`` (and no QSA) drops the query and is not
    split at all (Apache 2.4.64+): its other ``?`` stay in the path.
    """
    if flags.qsdiscard or flags.qsnone:
        state.args = None
    if flags.qsnone:
        return
    qsappend = flags.qsappend
    uri = state.uri
    mark = uri.rfind("?") if flags.qslast else uri.find("?")
    if mark < 0:
        return
    state.uri, query = uri[:mark], uri[mark + 1 :]
    if not qsappend:
        state.args = query
    elif query:
        state.args = f"{query}&{state.args or ''}"
    if state.args is not None:
        state.args = state.args.removesuffix("&") or None


def _absolute(uri: str) -> int:
    """Length of the ``http://``/``https://`` prefix, or 0: the only URLs this engine follows."""
    if uri[:1] not in ("h", "H"):
        return 0
    head = uri[:8].lower()
    if head.startswith("http://"):
        return 7
    return 8 if head == "https://" else 0


def _finish(state: EvalState, result: int, tracer: Tracer | None) -> Outcome:
    """``hook_uri2file`` after the rules: the outcome for the client."""
    env = MappingProxyType(dict(state.env_set.values())) if state.env_set else _EMPTY_ENV
    cookies = tuple(state.cookies.values()) if state.cookies else ()
    request = state.request
    if result == _STATUS:
        return _status(request, state.status, cookies, env)
    if result == _UNCHANGED:
        return _unchanged(request, cookies, env)
    noescape = result == _NOESCAPE
    scheme_length = _absolute(state.uri)
    escaped = scheme_length and not noescape
    if state.args is not None and not escaped and has_ctl_or_space(state.args):
        _note(tracer, "403: the rewritten query string holds spaces or control characters")
        return _status(request, 403, cookies, env)
    if scheme_length and no_host(state.uri, scheme_length):
        # ``https://%{HTTP_HOST}%{REQUEST_URI}`` without a Host: a browser would take the
        # path's first segment for the host (Apache sends it; see docs/rewrite.md)
        _note(tracer, f"400: the redirect target {state.uri!r} names no host")
        return _status(request, 400, cookies, env)
    if scheme_length:
        return _redirect(state, scheme_length, cookies, env, noescape=noescape)
    path = wire_url(state.uri if noescape else escape_uri(state.uri))
    query = wire_query(state.args) if state.args is not None else ""
    return Outcome("rewrite", None, None, path, query, cookies, env)


def _redirect(
    state: EvalState,
    scheme_length: int,
    cookies: tuple[str, ...],
    env: MappingProxyType[str, str],
    *,
    noescape: bool,
) -> Outcome:
    """The redirect branch of ``hook_uri2file``: escape the path part, append the query.

    The query is copied when unchanged or under ``NE``, else ``ap_escape_uri``-d.
    """
    uri, args = state.uri, state.args
    slash = uri.find("/", scheme_length)
    head, path = (uri, "") if slash < 0 else (uri[: slash + 1], uri[slash + 1 :])
    path = wire_url(path if noescape else escape_uri(path))
    location = wire_url(head) + path
    query = None
    if args is not None:
        query = wire_url(args if noescape or args == state.original_args else escape_uri(args))
        location = f"{location}?{query}"
    status = state.status if 300 <= state.status < 400 else 302
    return Outcome("redirect", status, location, "/" + path, query or "", cookies, env)


def _unchanged(
    request: RewriteRequest, cookies: tuple[str, ...], env: MappingProxyType[str, str]
) -> Outcome:
    return Outcome("none", None, None, request.path, request.query_string, cookies, env)


def _status(
    request: RewriteRequest, code: int, cookies: tuple[str, ...], env: MappingProxyType[str, str]
) -> Outcome:
    action = _ACTIONS.get(code, "status")
    return Outcome(action, code, None, request.path, request.query_string, cookies, env)


def _note(tracer: Tracer | None, text: str) -> None:
    if tracer is not None:
        tracer.note(text)


def _lines(rules: tuple[Rule, ...]) -> str:
    if not rules:
        return "no further rules"
    return "rule(s) at line " + ", ".join(str(rule.line) for rule in rules)
