"""The one placement step, for every front: which site takes this client, and why.

    the remembered site, if the pool can take the client there;
    else the site the client's network hashes to (network affinity), if it can;
    else the policy's pick (the client located first if the policy reads where it is);
    never the site at the address the request came to (``client.host``: a loop).

:func:`pick` is that step (the HTTP hot path, ``${site:POOL}``, the rules' default pool);
:func:`pick_plain` the same for a :attr:`~PoolView.plain` pool and a client with nothing
remembered, without a :class:`Client` to build; :func:`place` and :func:`order` answer a
:class:`Placement` (DNS answers several sites); :func:`explain` adds every site of the pool
with its verdict. Pure: no I/O, nothing that raises on client input; a policy's rotation
advances with each call (``explain`` is called on a copy of the policy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from dispatcher.placement.model import (
    DOWN,
    DRAINED,
    FAILING_OPEN,
    IS_HOST,
    LOWER_TIER,
    NOT_PICKED,
    NOWHERE,
    OVER_WATERMARK,
    REMEMBERED,
    TAKEN,
    WEIGHT_ZERO,
    Candidate,
    Client,
    Considered,
    Location,
    Placement,
)
from dispatcher.placement.pool import PoolView

#: Every verdict ``explain`` may give a site (:class:`Considered`), as the API documents them.
VERDICTS = (
    TAKEN,
    REMEMBERED,
    FAILING_OPEN,
    DOWN,
    DRAINED,
    WEIGHT_ZERO,
    OVER_WATERMARK,
    LOWER_TIER,
    NOT_PICKED,
    IS_HOST,
)

#: The client a policy that reads none of it is handed (see :attr:`PoolView.plain`).
ANYONE = Client()


def pick(pool: PoolView, client: Client) -> Candidate | None:
    """The site for ``client`` in ``pool``, or None when no site can take it."""
    site = _recalled(pool, client)
    if site is not None:
        return site
    located = pool.where.locate(client) if pool.policy.locates else NOWHERE
    return _chosen(pool, client, located, client.host)


def pick_plain(pool: PoolView, host: bytes) -> Candidate | None:
    """:func:`pick` for a ``plain`` pool and a client with nothing remembered (the policy
    reads nothing of the client, there is no ring): only the Host matters. (The hot path's
    common case: :func:`_chosen` written out, one call fewer.)"""
    policy = pool.policy
    site = policy.choose(pool.candidates, ANYONE, NOWHERE)
    if site is not None and host and site.netloc == host:
        site = policy.choose(_not_at(pool.candidates, host), ANYONE, NOWHERE)
    return site


def place(pool: PoolView, client: Client) -> Placement:
    """:func:`pick` as a :class:`Placement` (with the location, when placement located)."""
    site = _recalled(pool, client)
    located = NOWHERE
    if site is None:
        if pool.policy.locates:
            located = pool.where.locate(client)
        site = _chosen(pool, client, located, client.host)
    return Placement(pool.name, () if site is None else (site,), located)


def order(pool: PoolView, client: Client, count: int) -> Placement:
    """Up to ``count`` sites in preference order: :func:`pick`'s first, then the policy's
    order of the rest (never the site at ``client.host``)."""
    if count <= 0:
        return Placement(pool.name, ())
    located = pool.where.locate(client) if pool.policy.locates else NOWHERE
    others = _not_at(pool.candidates, client.host)
    first = _recalled(pool, client)
    if first is None:
        sites = pool.policy.order(others, client, located, count)
    else:
        rest = [c for c in others if c is not first]
        sites = (first, *pool.policy.order(rest, client, located, count - 1))
    return Placement(pool.name, tuple(sites), located)


def explain(pool: PoolView, client: Client) -> Placement:
    """:func:`place`, with every site of the pool and its verdict, in configured order,
    and the client located whatever the policy (to show where placement thinks it is).
    Call it with a copy of the pool's policy: it advances the rotation as a request would."""
    located = pool.where.locate(client)
    host = client.host
    others = _not_at(pool.candidates, host)
    weighed = {v.site: v for v in pool.policy.consider(others, client, located)}
    taken = _recalled(pool, client)
    if taken is not None:
        for site, verdict in weighed.items():
            if verdict.verdict == TAKEN:
                weighed[site] = replace(verdict, verdict=NOT_PICKED)
        how = (
            "the client's affinity stamp names it"
            if client.remembered == taken.name
            else f"network {pool.ring.network(client) if pool.ring else '?'} hashes to it"
        )
        base = weighed.get(taken.name) or Considered(taken.name, REMEMBERED)
        weighed[taken.name] = replace(base, verdict=REMEMBERED, detail=how)
    else:
        first = next((n for n, v in weighed.items() if v.verdict == TAKEN), None)
        taken = pool.by_name.get(first) if first is not None else None
    if taken is not None and pool.failing_open:
        verdict = weighed[taken.name]
        detail = "every site is down and the pool fails open"
        weighed[taken.name] = replace(
            verdict, verdict=FAILING_OPEN, detail=f"{verdict.detail}; {detail}".lstrip("; ")
        )
    at_host = {c.name for c in pool.candidates if host and c.netloc == host}
    considered = tuple(
        _with_rtt(_verdict_of(name, pool, weighed, at_host), located) for name in pool.members
    )
    return Placement(pool.name, () if taken is None else (taken,), located, considered)


def _recalled(pool: PoolView, client: Client) -> Candidate | None:
    """The site the client is remembered on (its affinity stamp) or hashed to (network
    affinity), if the pool can take it there and it is not the request's Host."""
    host = client.host
    name = client.remembered
    if name is not None:
        site = pool.by_name.get(name)
        if site is not None and not (host and site.netloc == host):
            return site
    ring = pool.ring
    if ring is not None:
        site = ring.site(client, pool.by_name, pool.candidates)
        if site is not None and not (host and site.netloc == host):
            return site
    return None


def _chosen(pool: PoolView, client: Client, located: Location, host: bytes) -> Candidate | None:
    """The policy's pick, never the site at ``host``."""
    policy, candidates = pool.policy, pool.candidates
    site = policy.choose(candidates, client, located)
    if site is not None and host and site.netloc == host:
        site = policy.choose(_not_at(candidates, host), client, located)
    return site


def _not_at(candidates: Sequence[Candidate], host: bytes) -> Sequence[Candidate]:
    if not host:
        return candidates
    return [c for c in candidates if c.netloc != host]


def _verdict_of(
    name: str, pool: PoolView, weighed: dict[str, Considered], at_host: set[str]
) -> Considered:
    excluded = pool.excluded.get(name)
    if excluded is not None:
        return Considered(name, excluded)
    if name in at_host:
        return Considered(name, IS_HOST, detail="the request came to this site's address")
    return weighed.get(name) or Considered(name, NOT_PICKED)


def _with_rtt(verdict: Considered, located: Location) -> Considered:
    if verdict.rtt is None:
        sample = located.rtt.get(verdict.site)
        if sample is not None:
            return replace(verdict, rtt=sample[0])
    return verdict
