"""Compiled rule sets: :func:`compile_rules`, :func:`load_rules` and :class:`RewriteProgram`."""

from __future__ import annotations

import datetime
import random
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from dispatcher.files import MAX_RULES_BYTES, read_regular_file
from dispatcher.redirect import engine
from dispatcher.redirect.compiler import CompiledRules, Compiler
from dispatcher.redirect.errors import RuleFileError
from dispatcher.redirect.explain import Explanation, Tracer
from dispatcher.redirect.fastpath import FastRules
from dispatcher.redirect.maps import Clock, RewriteMap, monotonic
from dispatcher.redirect.model import Outcome
from dispatcher.redirect.parser import parse
from dispatcher.redirect.request import RewriteRequest
from dispatcher.redirect.state import SiteSelector
from dispatcher.redirect.variables import scheme

__all__ = ["Outcome", "RewriteProgram", "SiteSelector", "compile_rules", "load_rules"]


class RewriteProgram:
    """A rule set compiled once and run for every request; immutable once built.

    ``source`` is the text it was compiled from, ``filename`` where that came from.
    Evaluation never raises: whatever Apache would answer with an error status comes back as
    an :class:`Outcome` carrying that status. The one exception is a site selector that
    raises: its exception propagates unchanged.
    """

    __slots__ = ("_compiled", "_fast", "filename", "source")

    def __init__(self, source: str, filename: str, compiled: CompiledRules) -> None:
        self.source = source
        self.filename = filename
        self._compiled = compiled
        # The rules as specialised functions (see fastpath.py); explain() and a rule set
        # that cannot change anything take the reference interpreter in engine.py.
        self._fast = FastRules(compiled) if compiled.enabled and compiled.rules else None

    @property
    def enabled(self) -> bool:
        """Whether ``RewriteEngine on`` was given (otherwise every outcome is ``none``)."""
        return self._compiled.enabled

    @property
    def rule_count(self) -> int:
        """How many ``RewriteRule`` directives the program holds."""
        return len(self._compiled.rules)

    @property
    def maps(self) -> dict[str, RewriteMap]:
        """The maps by name, the implicit ``site`` map included."""
        return dict(self._compiled.maps)

    def evaluate(
        self,
        request: RewriteRequest,
        *,
        sites: SiteSelector | None = None,
        now: datetime.datetime | None = None,
        rng: random.Random | None = None,
    ) -> Outcome:
        """What ``request`` gets.

        ``sites`` answers ``${site:POOL}`` (None: no pool has a site); ``now`` is the request
        time for ``%{TIME...}`` and cookie lifetimes (default: the local time; a naive value
        is taken as local time); ``rng`` drives ``rnd:`` maps (default: the ``random`` module).
        """
        if self._fast is not None:
            return self._fast.evaluate(request, sites, now, rng)
        return engine.evaluate(self._compiled, request, sites=sites, now=now, rng=rng)

    def evaluate_scope(self, scope: Mapping[str, Any], sites: SiteSelector | None) -> Outcome:
        """``evaluate(RewriteRequest.from_scope(scope), sites=sites)``: the dispatcher's way in.

        The same answer, with less in between (one request view, no keyword passing).
        """
        request = RewriteRequest.from_scope(scope)
        fast = self._fast
        if fast is not None:
            return fast.evaluate(request, sites, None, None)
        return engine.evaluate(self._compiled, request, sites=sites, now=None, rng=None)

    def explain(
        self,
        request: RewriteRequest,
        *,
        sites: SiteSelector | None = None,
        now: datetime.datetime | None = None,
        rng: random.Random | None = None,
    ) -> Explanation:
        """:meth:`evaluate`, recording every step; ``.format()`` renders it as text."""
        tracer = Tracer()
        outcome = engine.evaluate(
            self._compiled, request, sites=sites, now=now, rng=rng, tracer=tracer
        )
        return tracer.finish(_describe_request(request), outcome)


def compile_rules(
    text: str,
    *,
    filename: str = "<rules>",
    base_dir: Path | None = None,
    known_pools: Collection[str] | None = None,
    clock: Clock = monotonic,
) -> RewriteProgram:
    """Compile rule-file text; raise :class:`RuleSyntaxError` (naming the line) if invalid.

    ``base_dir`` resolves relative ``txt:``/``rnd:`` map paths (without it they are an error);
    ``known_pools``, when given, makes ``${site:NAME}`` with a literal unknown NAME an error;
    ``clock`` (monotonic seconds) paces the map files' change checks.
    """
    parsed = parse(text, filename)
    compiled = Compiler(parsed, base_dir, known_pools, clock).run()
    return RewriteProgram(text, filename, compiled)


def load_rules(
    path: Path, *, known_pools: Collection[str] | None = None, clock: Clock = monotonic
) -> RewriteProgram:
    """Read and compile the rule file at ``path`` (map paths relative to its directory).

    Raise :class:`RuleFileError` if it cannot be read (or is not UTF-8),
    :class:`RuleSyntaxError` if it is invalid; both name the file.
    """
    try:
        text = read_regular_file(path, MAX_RULES_BYTES).decode("utf-8")
    except OSError as exc:
        raise RuleFileError(str(path), exc.strerror or str(exc)) from None
    except UnicodeDecodeError as exc:
        raise RuleFileError(
            str(path), f"not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    return compile_rules(
        text,
        filename=str(path),
        base_dir=path.parent,
        known_pools=known_pools,
        clock=clock,
    )


def _describe_request(request: RewriteRequest) -> str:
    query = f"?{request.query_string}" if request.query_string else ""
    host = request.host or request.server_name
    return (
        f"{request.method} {scheme(request)}://{host}{request.path}{query} "
        f"from {request.remote_addr or 'unknown'}"
    )
