"""What an evaluation answers: the :class:`Outcome` of running the rules on one request."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, NamedTuple

Action = Literal["none", "rewrite", "redirect", "forbidden", "gone", "status"]


class Outcome(NamedTuple):
    """The result of the rules for one request.

    ``action``:

    - ``none``: no rule changed the URL (``path``/``query_string`` are the request's own);
    - ``rewrite``: the rules rewrote the URL internally, with no redirect;
    - ``redirect``: answer ``status`` (3xx) with ``Location: location``;
    - ``forbidden`` (403), ``gone`` (410), ``status`` (any other code in ``status``): answer
      that status. Besides ``F``/``G``/``R=4xx``, this is how the engine reports what Apache
      would answer with an error: 400 for a malformed path, 404 for an encoded slash or NUL,
      403 for an unsafe ``?`` (``UnsafeAllow3F``), 500 when ``N`` loops too often.

    ``location`` is an absolute ``http``/``https`` URL and never contains CR, LF, other
    controls or non-ASCII characters; under ``NE`` a space stays raw, as in Apache (a space
    is legal inside a header value). ``path`` and ``query_string`` are as they would
    go on the wire (%-encoded): for a redirect, those of ``location``. ``cookies`` are
    ``Set-Cookie`` values (``CO`` flags; send them whatever the action), ``env`` the
    variables ``E`` flags set.

    A ``NamedTuple`` rather than a frozen dataclass: one is built per request, and a frozen
    dataclass's ``__init__`` (``object.__setattr__`` per field) costs several times more.
    """

    action: Action
    status: int | None
    location: str | None
    path: str
    query_string: str
    cookies: tuple[str, ...]
    env: Mapping[str, str]
