"""Signing and verifying client state: webfarm's codec next to stock itsdangerous.

Microbenchmark, no sockets: microseconds per operation, median of several timeit rounds,
for an affinity stamp and a small session, signed with the newest of two keys.
"""

from __future__ import annotations

import statistics
import timeit
from collections.abc import Callable

from itsdangerous import URLSafeTimedSerializer

from dispatcher.session import AffinityStamp, StateCodec

KEYS = ("old-key-0123456789abcdef", "new-key-0123456789abcdef")
SESSION = {"cart": [17, 42, 99], "user": "alice", "lang": "en"}


def _per_op(fn: Callable[[], object], number: int = 2000, rounds: int = 5) -> float:
    return statistics.median(timeit.repeat(fn, number=number, repeat=rounds)) / number * 1e6


def measure() -> dict[str, tuple[float, float]]:
    """name -> (sign µs, verify µs)."""
    stamp = AffinityStamp(KEYS, lifetime=3600)
    codec = StateCodec(KEYS, salt="webfarm.session")
    stock = URLSafeTimedSerializer(list(KEYS), salt="webfarm.session")
    stamp_token = stamp.encode("eu")
    session_token = codec.dumps(SESSION)
    stock_token = stock.dumps(SESSION)
    return {
        "affinity stamp, hot path (encode/check)": (
            _per_op(lambda: stamp.encode("eu")),
            _per_op(lambda: stamp.check(stamp_token)),
        ),
        "affinity stamp (webfarm)": (
            _per_op(lambda: stamp.encode("eu")),
            _per_op(lambda: stamp.decode(stamp_token)),
        ),
        "small session (webfarm)": (
            _per_op(lambda: codec.dumps(SESSION)),
            _per_op(lambda: codec.loads(session_token, max_age=3600)),
        ),
        "small session (itsdangerous, peer)": (
            _per_op(lambda: stock.dumps(SESSION)),
            _per_op(lambda: stock.loads(stock_token, max_age=3600)),
        ),
    }
