"""Maglev consistent hashing and the stable client hash: pure, shared by the dispatcher's
network affinity (:mod:`dispatcher.placement.ring`) and farmnode's switch (``mh``).

Deterministic across processes, machines and restarts (no ``hash()``, no random seed): two
dispatcher replicas, or the nftables data plane after a restart, build the same table from
the same servers. Errors are :class:`ValueError`; each caller wraps them in its own
package's error.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Sequence

_MASK32 = 0xFFFFFFFF

#: Maglev table size when none is given: the largest of IPVS's choices. Removing one of N
#: servers then remaps at most about 1.25/N of the clients up to N = 50 (IPVS's default
#: 4093 gives 1.4/N at N = 20 and 2.5/N at N = 50); building it takes ~30 ms.
MH_DEFAULT_SIZE = 65521


def client_hash(client: str, salt: int = 0) -> int:
    """A stable 32-bit hash of a client address (no per-process salt, unlike ``hash()``).

    CRC-32 spread by the murmur3 finaliser, so neighbouring addresses land far apart.
    ``salt`` gives an independent hash for fallback rounds.
    """
    h = zlib.crc32(client.encode(), salt & _MASK32)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK32
    return h ^ (h >> 16)


def is_prime(n: int) -> bool:
    """Trial division; table sizes are small enough for it."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    return all(n % d for d in range(3, math.isqrt(n) + 1, 2))


def check_entries(entries: Sequence[tuple[str, int]], size: int, what: str) -> None:
    """``ValueError`` unless ``size`` is a prime that fits ``entries``, every weight is
    above zero and no key repeats (``what`` names the table in the message)."""
    if not is_prime(size):
        raise ValueError(f"{what}: table size {size} is not a prime number")
    if len(entries) > size:
        raise ValueError(f"{what}: {len(entries)} servers do not fit a table of {size}")
    seen: set[str] = set()
    for key, weight in entries:
        if weight <= 0:
            raise ValueError(f"{what}: server {key} has weight {weight}; expected > 0")
        if key in seen:
            raise ValueError(f"{what}: server {key} appears twice")
        seen.add(key)


def turns(weights: Sequence[int], limit: int) -> list[int]:
    """Weights divided by their gcd, then halved together until the largest is <= ``limit``."""
    divisor = math.gcd(*weights)
    reduced = [w // divisor for w in weights]
    shift = max(0, max(reduced).bit_length() - max(1, limit).bit_length())
    return [max(1, t >> shift) for t in reduced]


def _permutation(key: str, size: int) -> tuple[int, int]:
    """Maglev's (offset, skip) for one server, from a keyed BLAKE2b of its key."""
    digest = hashlib.blake2b(key.encode(), digest_size=16, person=b"webfarm-maglev").digest()
    offset = int.from_bytes(digest[:8], "big") % size
    skip = int.from_bytes(digest[8:], "big") % (size - 1) + 1
    return offset, skip


def maglev_table(entries: Sequence[tuple[str, int]], size: int = MH_DEFAULT_SIZE) -> list[int]:
    """The Maglev lookup table: ``size`` indices into ``entries``.

    ``entries`` are ``(key, weight)`` with weight > 0 and distinct keys; ``size`` must be a
    prime at least ``len(entries)``. Each server walks its own permutation of the table
    (offset and skip from a keyed BLAKE2b of its key, so the table is the same in every
    process and after every restart) and claims its next free slot, ``turns`` slots per
    round, where turns are the gcd-reduced weights (scaled down together so the largest is
    at most ``sqrt(size)``, as IPVS does). Every server's share of slots is proportional to
    its turns, within one round. Returns ``[]`` for no entries.

    Raises :class:`ValueError` for a non-prime size, too many entries, a weight <= 0 or a
    repeated key.
    """
    check_entries(entries, size, "maglev")
    if not entries:
        return []
    perms = [_permutation(key, size) for key, _ in entries]
    rounds = turns([w for _, w in entries], math.isqrt(size))
    slots = [offset for offset, _ in perms]  # each server's next preferred slot
    table = [-1] * size
    filled = 0
    while True:
        for i, (_, skip) in enumerate(perms):
            slot = slots[i]
            for _ in range(rounds[i]):
                while table[slot] >= 0:  # taken: walk on along this server's permutation
                    slot += skip
                    if slot >= size:
                        slot -= size
                table[slot] = i
                slot += skip
                if slot >= size:
                    slot -= size
                filled += 1
                if filled == size:
                    return table
            slots[i] = slot
