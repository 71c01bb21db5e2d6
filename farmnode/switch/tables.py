"""Hash tables for the hashing schedulers, and the stable client hash they use.

Pure functions, deterministic across processes and restarts (no ``hash()``): the nftables
data plane renders these tables into the kernel, so a restart must give the same table.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Sequence

from farmnode.errors import SchedulerError

_MASK32 = 0xFFFFFFFF

#: Maglev table size when none is given: the largest of IPVS's choices. Removing one of N
#: servers then remaps at most about 1.25/N of the clients up to N = 50 (IPVS's default
#: 4093 gives 1.4/N at N = 20 and 2.5/N at N = 50); building it takes ~30 ms.
MH_DEFAULT_SIZE = 65521
#: Source-hash bucket count when none is given (a prime, so ``hash % size`` spreads evenly).
SH_DEFAULT_SIZE = 4093


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
    if not is_prime(size):
        raise SchedulerError(f"{what}: table size {size} is not a prime number")
    if len(entries) > size:
        raise SchedulerError(f"{what}: {len(entries)} servers do not fit a table of {size}")
    seen: set[str] = set()
    for key, weight in entries:
        if weight <= 0:
            raise SchedulerError(f"{what}: server {key} has weight {weight}; expected > 0")
        if key in seen:
            raise SchedulerError(f"{what}: server {key} appears twice")
        seen.add(key)


def _turns(weights: Sequence[int], limit: int) -> list[int]:
    """Weights divided by their gcd, then halved together until the largest is <= ``limit``."""
    divisor = math.gcd(*weights)
    turns = [w // divisor for w in weights]
    shift = max(0, max(turns).bit_length() - max(1, limit).bit_length())
    return [max(1, t >> shift) for t in turns]


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

    Raises :class:`SchedulerError` for a non-prime size, too many entries, a weight <= 0 or
    a repeated key.
    """
    check_entries(entries, size, "maglev")
    if not entries:
        return []
    perms = [_permutation(key, size) for key, _ in entries]
    turns = _turns([w for _, w in entries], math.isqrt(size))
    slots = [offset for offset, _ in perms]  # each server's next preferred slot
    table = [-1] * size
    filled = 0
    while True:
        for i, (_, skip) in enumerate(perms):
            slot = slots[i]
            for _ in range(turns[i]):
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


def sh_table(entries: Sequence[tuple[str, int]], size: int = SH_DEFAULT_SIZE) -> list[int]:
    """The source-hash bucket table: ``size`` indices into ``entries``, IPVS ``sh`` style.

    Buckets are dealt out in order, each server taking as many consecutive buckets as its
    gcd-reduced weight before the next one's turn, cycling until the table is full. Same
    preconditions and errors as :func:`maglev_table`; ``[]`` for no entries.
    """
    check_entries(entries, size, "sh")
    if not entries:
        return []
    turns = _turns([w for _, w in entries], size)
    table: list[int] = []
    while len(table) < size:
        for i, t in enumerate(turns):
            table.extend([i] * t)
    return table[:size]
