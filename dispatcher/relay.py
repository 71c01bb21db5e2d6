"""The dispatcher's relay of hand-off tokens between sites on unrelated domains.

A site that must let a client go (it is being drained, say) sends it back to the dispatcher
with its session in a single-use ``farm_handoff`` token bound to the dispatcher's name
(``[dispatcher] handoff_name``). The dispatcher redeems that token, places the client on a
site as it would any client, and issues a fresh token bound to that site, which the site's
session middleware redeems. A token that does not verify (forged, expired, replayed, bound
to another name) is dropped: the client is placed all the same, without the state.
"""

from __future__ import annotations

import logging
from collections import Counter

from dispatcher.session import HandoffToken, ReplayGuard, SessionError
from dispatcher.session.tokens import HANDOFF_PARAM
from dispatcher.throttle import Throttle, ThrottledLog

log = logging.getLogger("webfarm.dispatcher")

_PARAM = HANDOFF_PARAM.encode("ascii") + b"="


def has_handoff(query: bytes) -> bool:
    """Whether a raw query string may carry a hand-off token (cheap, for the hot path)."""
    return query.find(_PARAM) >= 0


def split_handoff(query: bytes) -> tuple[str | None, bytes]:
    """The first non-empty ``farm_handoff`` value of a raw query string (or None), and the
    query without any ``farm_handoff`` parameter (every other byte kept, in order)."""
    token: str | None = None
    kept: list[bytes] = []
    for part in query.split(b"&"):
        if part.startswith(_PARAM) or part == _PARAM[:-1]:
            if token is None and len(part) > len(_PARAM):
                token = part[len(_PARAM) :].decode("latin-1")
            continue
        kept.append(part)
    return token, b"&".join(kept)


class HandoffRelay:
    """Redeems tokens bound to ``name`` and re-issues them for the site chosen.

    ``stats`` counts ``relayed`` and ``dropped`` (with the reason's error class).
    The replay guard is per process, as the sites' are. A dropped token is logged at
    WARNING at most once per error class per 10 s (:mod:`dispatcher.throttle`).
    """

    def __init__(
        self,
        tokens: HandoffToken,
        *,
        name: str,
        guard: ReplayGuard | None = None,
        throttle: Throttle | None = None,
    ):
        self.tokens = tokens
        self.name = name
        self.guard = guard or ReplayGuard.for_tokens(tokens)
        self.stats: Counter[str] = Counter()
        # any client can send a bogus token: one line per cause per 10 s, with a count
        self.warnings = ThrottledLog(log, throttle)

    def forward(self, token: str, site: str) -> str | None:
        """A fresh token carrying the session in ``token`` to ``site``, or None (logged and
        counted) if ``token`` is not a live, unused token bound to this relay."""
        try:
            fresh = self.tokens.retarget(token, via=self.name, to=site, guard=self.guard)
        except SessionError as exc:
            self.stats["dropped"] += 1
            self.stats[f"dropped_{type(exc).__name__}"] += 1
            cause = type(exc).__name__
            self.warnings.report(cause, "hand-off token dropped (%s): %s", cause, exc)
            return None
        self.stats["relayed"] += 1
        return fresh
