"""Who may do what on the admin API: named tokens, their roles, and the one decision.

An ``admin_tokens`` entry is a plain string (an ``admin`` token, named ``token-N`` after
its position) or a table::

    { name = "ops", token = "...", role = "operator", sites = ["eu"] }

Roles, each a fixed set of actions (see :data:`ROLE_ACTIONS`):

- ``admin``: everything;
- ``operator``: read, explain, drain, undrain, set a site's weight (a ``PATCH`` whose body
  has only ``weight`` and/or ``drained``) and report load;
- ``reader``: read (``GET``/``HEAD``) and explain (``POST /api/v1/explain`` changes
  nothing);
- ``reporter``: report load (``PUT /api/v1/sites/{name}/load``) and nothing else.

``sites`` narrows the site actions of an ``operator`` (empty: every site) and is required
for a ``reporter`` (a reporter reports for the sites it names, no others). Reads are never
narrowed: the registry is not secret from someone trusted to operate part of it.

Everything here is pure: :func:`parse_tokens` validates configuration, :func:`authenticate`
finds the token a request presents, :func:`decide` says yes or why not.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from dispatcher.backends.sites import check_name
from dispatcher.errors import InvalidValue

ROLES: Final = ("admin", "operator", "reader", "reporter")
#: Every action a route may declare. ``read`` covers GET and HEAD of every path.
ACTIONS: Final = (
    "read",
    "explain",
    "create",
    "modify",
    "weight",
    "delete",
    "drain",
    "undrain",
    "load",
    "rules",
)
ROLE_ACTIONS: Final[Mapping[str, frozenset[str]]] = {
    "admin": frozenset(ACTIONS),
    "operator": frozenset({"read", "explain", "weight", "drain", "undrain", "load"}),
    "reader": frozenset({"read", "explain"}),
    "reporter": frozenset({"load"}),
}
#: Actions that name one site, which ``sites`` narrows.
SITE_ACTIONS: Final = frozenset({"weight", "drain", "undrain", "load", "modify", "delete"})
#: The fields a ``PATCH`` may hold to count as ``weight`` rather than ``modify``.
OPERATOR_FIELDS: Final = frozenset({"weight", "drained"})
#: The shortest token a table entry may carry (plain strings keep their old rule: non-empty).
MIN_TOKEN_LENGTH: Final = 16
TABLE_KEYS: Final = frozenset({"name", "token", "role", "sites"})


@dataclass(frozen=True, slots=True)
class AdminToken:
    """One accepted bearer token. ``repr`` never shows :attr:`token`."""

    name: str
    token: str = field(repr=False)
    role: str = "admin"
    sites: frozenset[str] = frozenset()

    def covers(self, site: str | None) -> bool:
        """Whether this token's ``sites`` include ``site``: an empty set includes every
        site, except for a reporter (which reports for the sites it names, none else)."""
        if not self.sites:
            return self.role != "reporter"
        return site is not None and site in self.sites

    def describe(self) -> str:
        """``ops (operator, sites eu, us)``: for logs and 403 messages; never the token."""
        scope = f", sites {', '.join(sorted(self.sites))}" if self.sites else ""
        return f"{self.name} ({self.role}{scope})"


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer of :func:`decide`: allowed, or not with the reason (for the 403)."""

    allowed: bool
    reason: str = ""


# --- configuration ----------------------------------------------------------------------


def parse_tokens(raw: Any, path: str) -> tuple[AdminToken, ...]:
    """Validate an ``admin_tokens`` array (strings and tables) into tokens.

    ``path`` prefixes every error's key (``dispatcher.admin_tokens[2].role``). Names and
    token values must be unique; an error never quotes a token.
    """
    if not isinstance(raw, list | tuple):
        raise InvalidValue(path, f"an array of tokens or token tables, got {type(raw).__name__}")
    tokens = tuple(_entry(item, f"{path}[{i}]", i) for i, item in enumerate(raw))
    names: set[str] = set()
    values: set[str] = set()
    for i, token in enumerate(tokens):
        if token.name in names:
            raise InvalidValue(f"{path}[{i}].name", f"a unique name ({token.name!r} is used twice)")
        if token.token in values:
            raise InvalidValue(f"{path}[{i}].token", "a token no other entry uses")
        names.add(token.name)
        values.add(token.token)
    return tokens


def _entry(item: Any, path: str, index: int) -> AdminToken:
    if isinstance(item, str):
        return AdminToken(f"token-{index + 1}", _secret(item, path, 1), "admin")
    if not isinstance(item, Mapping):
        raise InvalidValue(path, "a token string or a table with name, token, role (and sites)")
    for key in item:
        if key not in TABLE_KEYS:
            raise InvalidValue(
                f"{path}.{key}", f"no such key (allowed: {', '.join(sorted(TABLE_KEYS))})"
            )
    for key in ("name", "token", "role"):
        if key not in item:
            raise InvalidValue(f"{path}.{key}", "a value (this key is required)")
    name = check_name(item["name"], f"{path}.name")
    role = item["role"]
    if role not in ROLES:
        raise InvalidValue(f"{path}.role", f"one of {', '.join(ROLES)}, got {role!r}")
    sites = _sites(item.get("sites", []), f"{path}.sites")
    if sites and role not in ("operator", "reporter"):
        raise InvalidValue(f"{path}.sites", f"only for an operator or a reporter, not {role!r}")
    if role == "reporter" and not sites:
        raise InvalidValue(f"{path}.sites", "the sites this reporter reports for (at least one)")
    return AdminToken(name, _secret(item["token"], f"{path}.token", MIN_TOKEN_LENGTH), role, sites)


def _secret(value: Any, path: str, minimum: int) -> str:
    """A token: visible ASCII (no spaces), at least ``minimum`` characters. Never echoed."""
    if not isinstance(value, str):
        raise InvalidValue(path, f"a token string, got {type(value).__name__}")
    if not value or not all("!" <= c <= "~" for c in value):
        raise InvalidValue(path, "a non-empty token of visible ASCII characters, no spaces")
    if len(value) < minimum:
        raise InvalidValue(path, f"a token of at least {minimum} characters, got {len(value)}")
    return value


def _sites(value: Any, path: str) -> frozenset[str]:
    if not isinstance(value, list):
        raise InvalidValue(path, f"an array of site names, got {value!r}")
    return frozenset(check_name(site, f"{path}[{i}]") for i, site in enumerate(value))


# --- requests ---------------------------------------------------------------------------


def authenticate(tokens: Sequence[tuple[bytes, AdminToken]], given: bytes) -> AdminToken | None:
    """The token whose value is ``given``, or None.

    Every token is compared in constant time, and all of them every time, so neither a
    token nor which one matched leaks through timing.
    """
    found: AdminToken | None = None
    for value, token in tokens:
        if hmac.compare_digest(given, value):
            found = token
    return found


def bearer(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The credentials of the (last) ``Authorization: Bearer ...`` header, or None."""
    header = b""
    for name, value in headers:
        if name == b"authorization":
            header = value
    scheme, _, given = header.partition(b" ")
    given = given.strip()
    return given if scheme.lower() == b"bearer" and given else None


def decide(
    token: AdminToken,
    action: str,
    site: str | None = None,
    fields: frozenset[str] | None = None,
) -> Decision:
    """May ``token`` do ``action`` (on ``site``)? ``fields`` are a ``PATCH`` body's keys
    (None when the body is not an object): a ``modify`` of only :data:`OPERATOR_FIELDS`
    is a ``weight`` action."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    allowed = ROLE_ACTIONS[token.role]
    if action == "modify" and "modify" not in allowed and fields and fields <= OPERATOR_FIELDS:
        action = "weight"
    if action not in allowed:
        return Decision(False, f"token {token.describe()} may not {_WORDS[action]}")
    if action in SITE_ACTIONS and not token.covers(site):
        return Decision(False, f"token {token.describe()} may not act on site {site!r}")
    return Decision(True)


_WORDS: Final[Mapping[str, str]] = {
    "read": "read",
    "explain": "explain",
    "create": "create sites",
    "modify": "change a site (an operator may PATCH only weight and drained)",
    "weight": "change weights",
    "delete": "delete sites",
    "drain": "drain sites",
    "undrain": "undrain sites",
    "load": "report load",
    "rules": "replace the rewrite rules",
}

__all__ = [
    "ACTIONS",
    "MIN_TOKEN_LENGTH",
    "ROLES",
    "ROLE_ACTIONS",
    "AdminToken",
    "Decision",
    "authenticate",
    "bearer",
    "decide",
    "parse_tokens",
]
