"""What the control process and its workers say to each other, and how it is framed.

Each direction is a stream of frames on one ``AF_UNIX`` socketpair: a 4-byte big-endian
length, then the payload. The two directions are not equally trusted:

- control -> worker: pickles (:class:`Setup`, then :class:`WorkerState` after every change).
  The worker is our own child process, started by the control process; it trusts its parent.
- worker -> control: JSON objects (``ready``, ``ack``, ``counts``), checked field by field.
  A worker parses what strangers send; if one were ever subverted, it must not be able to
  run code in the control process, which holds the database and the admin tokens.

:func:`worker_snapshot` is how a worker turns a :class:`WorkerState` into the
:class:`~dispatcher.snapshot.Snapshot` its hot path reads (the rewrite rules travel
as text: a compiled program does not pickle, so each worker compiles them itself).
"""

from __future__ import annotations

import asyncio
import json
import pickle
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from dispatcher.backends.health import Health, State
from dispatcher.backends.sites import SiteSpec
from dispatcher.backends.snapshot import Load
from dispatcher.config import Config
from dispatcher.counts import PLACED, REASONS, Split
from dispatcher.dns.tally import QTYPE_NAMES, RCODE_NAMES, DnsReport
from dispatcher.placement.rtt import RttView

HEADER = struct.Struct(">I")
#: The largest frame either side accepts (rules up to the admin API's 1 MiB, many sites).
MAX_FRAME = 64 * 1024 * 1024
#: The largest frame a worker may send (acks and counters are small).
MAX_REPORT = 1024 * 1024
#: What a worker's ``counts`` report says of its public edge and its DNS front's TCP
#: connections open (a missing one counts 0).
EDGE_COUNTS = ("connections", "refused", "shed", "dns_tcp")
#: The most DNS counters a report may carry (there are about twenty kinds).
MAX_DNS_COUNTERS = 64
#: The most DNS (qtype, rcode) pairs and (pool, how) pairs a report may carry.
MAX_DNS_QUERY_KINDS = (len(QTYPE_NAMES) + 1) * (len(RCODE_NAMES) + 1)
MAX_DNS_FALLBACKS = 4096


class WireError(Exception):
    """A frame that cannot be read: too large, cut short, or not what was expected."""


@dataclass(frozen=True, slots=True)
class Setup:
    """The first frame a worker reads: where to listen, and who it is. ``dns`` lists the
    DNS front's addresses (``host:port``, ports already picked), UDP and TCP on each."""

    index: int
    host: str
    port: int
    dns: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RulesText:
    """The rewrite rules the control process runs, as text, and where they came from."""

    text: str
    origin: str


@dataclass(frozen=True, slots=True)
class WorkerState:
    """The inputs of a snapshot; ``generation`` counts the states shipped, for acks.

    ``config`` is the running configuration without what workers never need (admin tokens,
    the database URL); ``health`` holds each site's up/down state only. ``rtt`` pickles
    cheaply, and a worker that already decoded the same view gets it back (see
    :class:`~dispatcher.placement.rtt.RttView`).
    """

    generation: int
    config: Config
    revision: int
    sites: tuple[SiteSpec, ...]
    health: Mapping[str, State]
    loads: Mapping[str, Load]
    rules: RulesText | None
    rtt: RttView | None = None
    reloads: int = 0
    """The control process's count of applied reloads: when it moves, the worker loads its
    TLS files again (a certificate renewed at the same paths), even if nothing else changed."""
    dns_history: Mapping[str, float] = field(default_factory=dict)
    """When the control process saw each pool change last (monotonic): the DNS front's TTL
    (:mod:`dispatcher.dns.ttl`) of a worker that started after a change follows it too."""


def for_workers(config: Config) -> Config:
    """``config`` without the secrets a worker has no use for."""
    settings = replace(config.dispatcher, admin_tokens=(), database_url="")
    return replace(config, dispatcher=settings)


def health_of(states: Mapping[str, State]) -> Any:
    """The ``health`` callable :func:`~dispatcher.snapshot.build_snapshot` wants."""

    def health(name: str) -> Health:
        return Health(states.get(name, "unknown"), None)

    return health


# --- framing ----------------------------------------------------------------------------


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def encode_state(message: Setup | WorkerState) -> bytes:
    return frame(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def encode_report(message: Mapping[str, Any]) -> bytes:
    return frame(json.dumps(message, separators=(",", ":")).encode())


async def read_frame(reader: asyncio.StreamReader, limit: int) -> bytes | None:
    """The next frame's payload, or ``None`` at a clean end of stream."""
    try:
        head = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise WireError("the stream ended inside a frame header") from None
        return None
    (size,) = HEADER.unpack(head)
    if size > limit:
        raise WireError(f"a frame of {size} bytes (at most {limit})")
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise WireError("the stream ended inside a frame") from None


def decode_state(payload: bytes) -> Setup | WorkerState:
    """A control -> worker message (trusted: our parent wrote it)."""
    message = pickle.loads(payload)  # noqa: S301 - from our own parent process, see above
    if not isinstance(message, Setup | WorkerState):
        raise WireError(f"unexpected message {type(message).__name__}")
    return message


@dataclass(frozen=True, slots=True)
class Report:
    """A worker -> control message, checked: ``kind`` is ready, ack or counts (``dns``:
    the DNS front's counters since the last report, see :mod:`dispatcher.dns.tally`; on
    the wire ``dns`` holds the flat counts, ``dns_queries``, ``dns_answers`` and
    ``dns_fallbacks`` the rest)."""

    kind: str
    generation: int = 0
    pid: int = 0
    redirects: Mapping[str, Split] | None = None
    """With ``counts``: the redirects since the last report, per site and reason (by slot
    of :data:`~dispatcher.counts.REASONS`; see :func:`encode_redirects` for the wire)."""
    edge: Mapping[str, int] | None = None
    """With ``counts``: the worker's public edge now (``connections``) and its totals since
    it started (``refused``, ``shed``), see :data:`EDGE_COUNTS`."""
    dns: DnsReport | None = None


def encode_redirects(splits: Mapping[str, Split]) -> dict[str, object]:
    """Redirect counts per site and reason (:meth:`~dispatcher.counts.RedirectCounts.take`)
    in a worker's ``counts`` report: ``redirects`` the total per site (all that a report
    carried before the reasons were told apart), ``redirect_reasons`` its split per site,
    ``{reason: count}`` for the reasons with a count."""
    return {
        "redirects": {name: sum(split) for name, split in splits.items()},
        "redirect_reasons": {
            name: {REASONS[slot]: n for slot, n in enumerate(split) if n}
            for name, split in splits.items()
        },
    }


def encode_dns(report: DnsReport) -> dict[str, object]:
    """A :class:`DnsReport`'s fields in a worker's ``counts`` report."""
    return {
        "dns": dict(report.counts),
        "dns_queries": dict(report.queries),
        "dns_answers": dict(report.answers),
        "dns_fallbacks": dict(report.fallbacks),
    }


def decode_report(payload: bytes) -> Report:
    """Parse and check a worker's JSON report; :class:`WireError` if it is not one."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise WireError(f"a report that is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise WireError("a report that is not a JSON object")
    kind = data.get("type")
    if kind in ("ready", "ack"):
        return Report(kind, _count(data, "generation"), pid=_count(data, "pid"))
    if kind == "counts":
        edge = data.get("edge")
        if edge is not None and not isinstance(edge, dict):
            raise WireError("counts with an edge that is not an object")
        return Report(
            kind,
            redirects=_redirects(data),
            edge=None if edge is None else {k: _count(edge, k) for k in EDGE_COUNTS},
            dns=DnsReport(
                _counts(data, "dns", MAX_DNS_COUNTERS),
                _counts(data, "dns_queries", MAX_DNS_QUERY_KINDS),
                _counts(data, "dns_answers", None),  # (sites, as redirects)
                _counts(data, "dns_fallbacks", MAX_DNS_FALLBACKS),
            ),
        )
    raise WireError(f"an unknown report type {kind!r}")


def _redirects(data: Mapping[str, Any]) -> dict[str, Split]:
    """A report's redirect counts per site and reason (:func:`encode_redirects`). Without
    ``redirect_reasons`` (a worker from before the reasons), every redirect is ``placed``;
    with it, it splits each site's total exactly, in known reasons only."""
    totals = data.get("redirects")
    if not isinstance(totals, dict):
        raise WireError("counts without a redirects object")
    reasons = data.get("redirect_reasons")
    if reasons is None:
        return {name: _only(PLACED, _count(totals, name)) for name in totals}
    if not isinstance(reasons, dict) or not reasons.keys() <= totals.keys():
        raise WireError("counts with redirect_reasons that is not an object of their sites")
    splits = {}
    for name in totals:
        total, split = _count(totals, name), reasons.get(name, {})
        if not isinstance(split, dict) or not split.keys() <= set(REASONS):
            raise WireError(f"redirect_reasons of {name[:64]!r}: an object of {', '.join(REASONS)}")
        counts = tuple(_count(split, reason) for reason in REASONS)
        if sum(counts) != total:
            added = sum(counts)
            raise WireError(f"redirect_reasons of {name[:64]!r} add up to {added}, not {total}")
        splits[name] = counts
    return splits


def _only(slot: int, count: int) -> Split:
    """``count`` redirects, all for the reason in ``slot``."""
    return tuple(count if i == slot else 0 for i in range(len(REASONS)))


def _counts(data: Mapping[str, Any], key: str, most: int | None) -> dict[str, int]:
    """An object of whole numbers (``{}`` when missing), at most ``most`` of them."""
    counts = data.get(key, {})
    if not isinstance(counts, dict) or (most is not None and len(counts) > most):
        raise WireError(f"counts with a {key} object of at most {most} counters")
    return {str(k)[:128]: _count(counts, k) for k in counts}


def _count(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 62:
        raise WireError(f"{key}: a whole number >= 0, got {value!r}")
    return value
