"""State that lives with the client, not the server: signed cookies and URL tokens with key
rotation, the site-affinity stamp, the cross-domain hand-off token, and session middleware
for ASGI and WSGI apps. See ``docs/sessions.md``.
"""

from dispatcher.session.asgi import SessionMiddleware
from dispatcher.session.codec import (
    MAX_COOKIE_BYTES,
    SecretKeys,
    Signed,
    StateCodec,
    key_list,
    secret_keys_from_env,
)
from dispatcher.session.core import (
    HandoffTarget,
    RequestInfo,
    SessionCore,
    SessionOptions,
    SessionSettings,
)
from dispatcher.session.errors import (
    BadToken,
    SessionError,
    TokenExpired,
    TokenReplayed,
    TokenTooLarge,
    UnserializableState,
    WrongTarget,
)
from dispatcher.session.tokens import (
    AFFINITY_COOKIE,
    HANDOFF_PARAM,
    AffinityStamp,
    Handoff,
    HandoffToken,
    ReplayGuard,
    Stamp,
)
from dispatcher.session.urls import STATE_PARAM, handoff_url, url_state_codec, with_state
from dispatcher.session.wsgi import ENVIRON_KEY, WSGISessionMiddleware

__all__ = [
    "AFFINITY_COOKIE",
    "ENVIRON_KEY",
    "HANDOFF_PARAM",
    "MAX_COOKIE_BYTES",
    "STATE_PARAM",
    "AffinityStamp",
    "BadToken",
    "Handoff",
    "HandoffTarget",
    "HandoffToken",
    "ReplayGuard",
    "RequestInfo",
    "SecretKeys",
    "SessionCore",
    "SessionError",
    "SessionMiddleware",
    "SessionOptions",
    "SessionSettings",
    "Signed",
    "Stamp",
    "StateCodec",
    "TokenExpired",
    "TokenReplayed",
    "TokenTooLarge",
    "UnserializableState",
    "WSGISessionMiddleware",
    "WrongTarget",
    "handoff_url",
    "key_list",
    "secret_keys_from_env",
    "url_state_codec",
    "with_state",
]
