"""Explanations: "what would this client get, and why?", rule by rule.

The evaluator reports to a :class:`Tracer` as it goes (only when explaining; the hot path
passes none); the tracer builds an :class:`Explanation`, whose :meth:`Explanation.format`
is the plain text the CLI and the admin API show.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dispatcher.redirect.escape import shown
from dispatcher.redirect.model import Outcome


@dataclass(frozen=True, slots=True)
class ConditionStep:
    """One ``RewriteCond`` evaluated: its test string as written and as expanded, the result."""

    line: int
    test: str
    expanded: str
    pattern: str
    flags: tuple[str, ...]
    matched: bool


@dataclass(frozen=True, slots=True)
class RuleStep:
    """One ``RewriteRule`` tried.

    ``subject`` is the URL-path the pattern was matched against; ``matched`` whether the
    pattern (with its ``!``) held; ``applied`` whether the conditions held too. ``result`` and
    ``query`` are the path and query string after the substitution (None when it did not
    run); ``notes`` say what happened next (skips, chains, stops, restarts, statuses).
    """

    line: int
    pattern: str
    substitution: str
    flags: tuple[str, ...]
    subject: str
    matched: bool
    conditions: tuple[ConditionStep, ...]
    applied: bool
    result: str | None
    query: str | None
    notes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Explanation:
    """The outcome, the request it is for, and every step that led to it."""

    request: str
    outcome: Outcome
    steps: tuple[RuleStep, ...]
    notes: tuple[str, ...]

    def format(self) -> str:
        """Plain text, one line per fact, for people."""
        lines = [f"request: {self.request}"]
        lines += [f"note: {note}" for note in self.notes]
        for step in self.steps:
            lines += _format_step(step)
        lines.append(f"outcome: {describe(self.outcome)}")
        return "\n".join(lines)


def describe(outcome: Outcome) -> str:
    """One line saying what the client gets."""
    query = f"?{outcome.query_string}" if outcome.query_string else ""
    text = {
        "none": f"no change: {outcome.path}{query}",
        "rewrite": f"rewritten to {outcome.path}{query}",
        "redirect": f"redirect {outcome.status} to {outcome.location}",
        "forbidden": "403 Forbidden",
        "gone": "410 Gone",
        "status": f"status {outcome.status}",
    }[outcome.action]
    extras = [f"Set-Cookie: {cookie}" for cookie in outcome.cookies]
    extras += [f"env {name}={shown(value)}" for name, value in outcome.env.items()]
    return "; ".join([text, *extras])


def _quoted(text: str) -> str:
    """``'text'`` for people: UTF-8 shown as such, controls as ``\\xNN``, nothing doubled."""
    readable = "".join(c if c >= " " and c != "\x7f" else f"\\x{ord(c):02x}" for c in shown(text))
    return f"'{readable}'"


def _format_step(step: RuleStep) -> list[str]:
    flags = f" [{','.join(step.flags)}]" if step.flags else ""
    lines = [
        f"line {step.line}: RewriteRule {shown(step.pattern)} {shown(step.substitution)}{flags}",
        f"  pattern {_quoted(step.pattern)} against {_quoted(step.subject)}: "
        + ("matched" if step.matched else "no match"),
    ]
    for cond in step.conditions:
        cond_flags = f" [{','.join(cond.flags)}]" if cond.flags else ""
        lines.append(
            f"  condition line {cond.line}: {_quoted(cond.test)} -> {_quoted(cond.expanded)} "
            f"vs {_quoted(cond.pattern)}{cond_flags}: " + ("true" if cond.matched else "false")
        )
    if step.matched and not step.applied and step.conditions and not step.conditions[-1].matched:
        lines.append("  conditions not met: rule not applied")
    if step.result is not None:
        query = f" with query {_quoted(step.query)}" if step.query is not None else ""
        lines.append(
            f"  substitution {_quoted(step.substitution)} -> {_quoted(step.result)}{query}"
        )
    lines += [f"  {note}" for note in step.notes]
    return lines


@dataclass
class _Open:
    line: int
    pattern: str
    substitution: str
    flags: tuple[str, ...]
    subject: str
    matched: bool
    conditions: list[ConditionStep] = field(default_factory=list)
    applied: bool = False
    result: str | None = None
    query: str | None = None
    notes: list[str] = field(default_factory=list)


class Tracer:
    """Collects the steps of one evaluation; the evaluator calls these as it goes."""

    def __init__(self) -> None:
        self.steps: list[RuleStep] = []
        self.notes: list[str] = []
        self.current: _Open | None = None

    def note(self, text: str) -> None:
        """A fact about the whole evaluation, or about the rule being tried."""
        if self.current is not None:
            self.current.notes.append(text)
        else:
            self.notes.append(text)

    def rule(
        self,
        line: int,
        pattern: str,
        substitution: str,
        flags: tuple[str, ...],
        subject: str,
        *,
        matched: bool,
    ) -> None:
        """A rule's pattern was tried against ``subject``."""
        self.close()
        self.current = _Open(line, pattern, substitution, flags, subject, matched)

    def condition(self, step: ConditionStep) -> None:
        """A condition of the current rule was evaluated."""
        if self.current is not None:
            self.current.conditions.append(step)

    def applied(self, result: str | None, query: str | None) -> None:
        """The current rule's conditions held; ``result`` is the path after substitution."""
        if self.current is not None:
            self.current.applied = True
            self.current.result = result
            self.current.query = query

    def close(self) -> None:
        """Finish the current rule's step."""
        open_step, self.current = self.current, None
        if open_step is None:
            return
        self.steps.append(
            RuleStep(
                line=open_step.line,
                pattern=open_step.pattern,
                substitution=open_step.substitution,
                flags=open_step.flags,
                subject=open_step.subject,
                matched=open_step.matched,
                conditions=tuple(open_step.conditions),
                applied=open_step.applied,
                result=open_step.result,
                query=open_step.query,
                notes=tuple(open_step.notes),
            )
        )

    def finish(self, request: str, outcome: Outcome) -> Explanation:
        """The explanation of ``outcome``."""
        self.close()
        return Explanation(request, outcome, tuple(self.steps), tuple(self.notes))
