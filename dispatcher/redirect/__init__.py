"""The rewrite language: a faithful subset of Apache mod_rewrite, compiled once, run per request.

See docs/rewrite.md for the supported subset and every deliberate difference from Apache.
"""

from dispatcher.redirect.errors import RewriteError, RuleFileError, RuleSyntaxError
from dispatcher.redirect.explain import ConditionStep, Explanation, RuleStep
from dispatcher.redirect.program import (
    Outcome,
    RewriteProgram,
    SiteSelector,
    compile_rules,
    load_rules,
)
from dispatcher.redirect.request import RewriteRequest

__all__ = [
    "ConditionStep",
    "Explanation",
    "Outcome",
    "RewriteError",
    "RewriteProgram",
    "RewriteRequest",
    "RuleFileError",
    "RuleStep",
    "RuleSyntaxError",
    "SiteSelector",
    "compile_rules",
    "load_rules",
]
