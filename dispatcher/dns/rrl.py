"""Response rate limiting (RRL), as BIND and Knot do it, against reflection attacks.

A forged query makes a server send its answer to the victim whose address was forged; an
authoritative server answers any name it holds, so it is a good reflector. RRL counts
*identical responses* sent to one *client network* (the address cut to ``/24`` for IPv4,
``/56`` for IPv6, by default) and, beyond ``rate`` per second, stops sending them: each
such response is dropped, except every ``slip``-th, which is sent as an empty answer with
TC set (small, so useless for amplification; a real client behind the forged address
asks again over TCP, which cannot be forged, and gets its answer). ``slip = 0`` never
slips, ``1`` slips every one.

Two responses are identical when they have the same rcode class and key: the name and
type for answers (and NODATA), the zone for NXDOMAIN (a flood of random names under the
zone is one stream), the rcode for errors (REFUSED, FORMERR...). Each (network, key) has a
token bucket holding at most ``rate`` tokens (one second's worth), refilled at ``rate``
per second; a response takes one token.

The table is bounded (``size`` entries): when it is full, the entry created first is
forgotten (an attacker that fills it with forged networks only makes room for itself).
Only UDP responses are limited. Pure: time is passed in.
"""

from __future__ import annotations

import ipaddress

SEND, DROP, SLIP = 0, 1, 2


class RateLimiter:
    """The token buckets, and what they decided (``dropped``, ``slipped``, ``forgotten``)."""

    def __init__(
        self, rate: int, slip: int, size: int, *, ipv4_prefix: int = 24, ipv6_prefix: int = 56
    ) -> None:
        if rate < 1 or slip < 0 or size < 1:
            raise ValueError("rate and size must be >= 1, slip >= 0")
        self.rate = float(rate)
        self.slip = slip
        self.size = size
        self.ipv4_shift = 32 - ipv4_prefix
        self.ipv6_shift = 128 - ipv6_prefix
        self._dot_cut = ipv4_prefix == 24
        self._buckets: dict[tuple[object, object], list[float]] = {}
        self.dropped = 0
        self.slipped = 0
        self.forgotten = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def network(self, address: str) -> object:
        """The client's network, as a key (``"192.0.2"`` for a /24; an integer else)."""
        if self._dot_cut and ":" not in address:
            return address[: address.rfind(".")]
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address
        shift = self.ipv4_shift if ip.version == 4 else self.ipv6_shift
        return (ip.version, int(ip) >> shift)

    def decide(self, address: str, key: object, now: float) -> int:
        """:data:`SEND`, :data:`DROP` or :data:`SLIP` for a response ``key`` to ``address``
        at monotonic time ``now``."""
        slot: tuple[object, object]
        if self._dot_cut and ":" not in address:
            slot = (address[: address.rfind(".")], key)
        else:
            slot = (self.network(address), key)
        buckets = self._buckets
        bucket = buckets.get(slot)
        if bucket is None:
            if len(buckets) >= self.size:
                del buckets[next(iter(buckets))]
                self.forgotten += 1
            buckets[slot] = [self.rate - 1.0, now, 0.0]
            return SEND
        rate = self.rate
        tokens = bucket[0] + (now - bucket[1]) * rate
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = (tokens if tokens < rate else rate) - 1.0
            return SEND
        bucket[0] = tokens
        bucket[2] += 1.0
        if self.slip and bucket[2] % self.slip == 0:
            self.slipped += 1
            return SLIP
        self.dropped += 1
        return DROP
