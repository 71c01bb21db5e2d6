"""Signed state in URLs: ``farm_state`` for clients without cookies, ``farm_handoff`` for a
session moving to another site. Query strings are edited item by item: everything but the
parameter concerned is kept byte for byte, in order, and so is the fragment.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

from dispatcher.errors import InvalidValue
from dispatcher.session.codec import Clock, SecretKeys, StateCodec
from dispatcher.session.tokens import HANDOFF_PARAM, HandoffToken

STATE_PARAM = "farm_state"
URL_STATE_SALT = "webfarm.url-state"


def url_state_codec(
    secret_keys: SecretKeys, *, max_age: int | None = None, clock: Clock = time.time
) -> StateCodec:
    """The codec of ``farm_state`` tokens (its own salt: a session cookie pasted into a URL,
    or URL state pasted into a cookie, does not verify)."""
    return StateCodec(secret_keys, salt=URL_STATE_SALT, max_age=max_age, clock=clock)


def with_state(url: str, session: Mapping[str, Any], codec: StateCodec) -> str:
    """``url`` carrying ``session`` as its ``farm_state`` parameter (replacing any there).

    ``codec`` must be the URL-state codec of the receiving middleware (``url_codec``), or
    one built by :func:`url_state_codec` from the same keys.
    """
    return with_param(url, STATE_PARAM, codec.dumps(dict(session)))


def handoff_url(
    target_base_url: str,
    path: str,
    session: Mapping[str, Any],
    *,
    tokens: HandoffToken,
    target: str,
) -> str:
    """The URL that moves ``session`` to the site ``target`` at ``target_base_url``.

    ``path`` is the request target to open there (``/cart?x=1``); it gets a fresh
    single-use ``farm_handoff`` token, which the target's middleware redeems and removes.
    """
    if not path.startswith("/"):
        raise InvalidValue("path", f"a request target starting with '/', got {path!r}")
    url = target_base_url.rstrip("/") + without_params(path, HANDOFF_PARAM)
    return with_param(url, HANDOFF_PARAM, tokens.encode(target, session))


def query_values(query: str, name: str) -> list[str]:
    """The decoded values of parameter ``name`` in a raw query string, in order."""
    values = []
    for item in query.split("&"):
        key, _, value = item.partition("=")
        if unquote_plus(key) == name:
            values.append(unquote_plus(value))
    return values


def with_param(url: str, name: str, value: str) -> str:
    """``url`` with every ``name`` parameter replaced by one ``name=value`` at the end.

    ``value`` is written as given: pass URL-safe text (tokens are).
    """
    base, hash_, fragment = without_params(url, name).partition("#")
    sep = "&" if "?" in base and not base.endswith(("?", "&")) else ("" if "?" in base else "?")
    return f"{base}{sep}{name}={value}{hash_}{fragment}"


def without_params(url: str, *names: str) -> str:
    """``url`` (or a request target) without any of the parameters ``names``."""
    base, hash_, fragment = url.partition("#")
    path, question, query = base.partition("?")
    if not question:
        return url
    kept = [item for item in query.split("&") if unquote_plus(item.partition("=")[0]) not in names]
    rest = "?" + "&".join(kept) if kept else ""
    return f"{path}{rest}{hash_}{fragment}"
