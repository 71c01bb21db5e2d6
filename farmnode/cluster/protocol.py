"""The heartbeat wire protocol: one small authenticated binary message, and its receiver.

:func:`encode` turns a :class:`Heartbeat` into at most :data:`MAX_MESSAGE` bytes ending in an
HMAC-SHA256 over everything before it; :func:`decode` turns bytes back into a heartbeat or
raises :class:`HeartbeatError` with a ``reason`` code, and never anything else, whatever the
bytes. :class:`Receiver` is the pure, stateful filter in front of the election: it drops
(and counts) forged, foreign, replayed and stale messages, and records when each peer was
last heard on each transport. The layout, byte by byte, is in ``docs/heartbeat.md``.

Keys follow itsdangerous: one key or a sequence, signed with the last and verified with
each, last to first. A cluster rotates in three steps applied on every node in turn:
``[new, old]`` (accept new, sign old), ``[old, new]`` (sign new, accept old), ``[new]``.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Final, Literal, NamedTuple

from farmnode.agents.context import MAX_ATTRIBUTES, MAX_KEY, MAX_VALUE
from farmnode.errors import FarmnodeError

MAGIC: Final = b"FHB"
#: The version this node sends. Version 2 added node attributes after ``sees``; version 1
#: messages (no attributes) are still accepted, so a cluster can be upgraded node by node.
VERSION: Final = 2
#: The versions this node decodes.
VERSIONS: Final = frozenset({1, 2})
#: magic(3) version(1) length(2) flags(1) state(1) priority(1) reserved(1)
#: incarnation(8) sequence(8) sent(8): 34 bytes, all big-endian.
HEADER: Final = struct.Struct("!3sBHBBBBQQQ")
MAC_SIZE: Final = 32
MAX_NAME: Final = 63
MAX_GROUPS: Final = 64
#: Fits one UDP datagram without fragmentation on any sane path (IPv6 minimum MTU 1280).
MAX_MESSAGE: Final = 1200
#: header, cluster and node of one byte each, three empty name lists, MAC.
MIN_MESSAGE: Final = HEADER.size + 2 + 2 + 3 + MAC_SIZE
MAX_U64: Final = 2**64 - 1
FLAG_QUORUM: Final = 0x01
FLAG_WITNESS: Final = 0x02
FLAGS: Final = FLAG_QUORUM | FLAG_WITNESS
#: How many earlier incarnations per node the receiver remembers (against replays of them).
RETIRED_INCARNATIONS: Final = 8

State = Literal["starting", "active", "standby", "noquorum", "leaving"]
#: Wire code of each state is its index here; never reorder, only append (with a new version).
STATES: Final[tuple[State, ...]] = ("starting", "active", "standby", "noquorum", "leaving")
Role = Literal["member", "witness"]
#: The name lists after ``node``, in wire order.
LISTS: Final = ("groups", "failed", "sees")
_STATE_CODE: Final[dict[str, int]] = {state: code for code, state in enumerate(STATES)}

DecodeReason = Literal["short", "magic", "version", "length", "cluster", "mac", "malformed"]
#: Why :func:`encode` refused a heartbeat or key.
EncodeReason = Literal["invalid", "too_large", "key"]

Keys = bytes | Sequence[bytes]
#: Receiver outcomes that prove the sender alive on the transport that delivered it.
PROOFS: Final = frozenset({"accepted", "duplicate"})


class HeartbeatError(FarmnodeError):
    """A heartbeat could not be encoded or decoded.

    ``reason`` is a short code, stable for counting (:data:`DecodeReason`,
    :data:`EncodeReason`); ``detail`` says what exactly was wrong.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"heartbeat {reason}: {detail}")


class TransportError(FarmnodeError):
    """A heartbeat transport could not be started (bind, join, open the device...).

    ``transport`` names it (``udp:10.213.0.11:6940``); ``detail`` says what failed. Sending
    never raises this: a dead link is counted, not raised.
    """

    def __init__(self, transport: str, detail: str) -> None:
        self.transport = transport
        self.detail = detail
        super().__init__(f"heartbeat transport {transport}: {detail}")


class Heartbeat(NamedTuple):
    """One heartbeat, as sent by ``node`` of ``cluster``.

    ``incarnation`` is new on every start of the node and larger than the previous one
    (:func:`new_incarnation`); ``sequence`` grows by one per message within an incarnation.
    ``sent`` is the sender's ``time.monotonic_ns()``: comparable only with the same node's
    other messages (gaps, stalls), never with the receiver's clock. ``priority`` is 0-255,
    ``groups`` the resource groups the sender claims (acquiring, owning or still stopping),
    ``quorum`` whether it sees a majority, ``role`` ``witness`` for a voter that owns
    nothing, ``failed`` the groups whose monitor failed on the sender, ``sees`` the peers
    it heard within deadtime. Each of the three lists holds distinct names.
    ``attributes`` are the node's attributes (``(key, value)`` pairs, distinct keys; see
    :mod:`farmnode.agents.context`): version 2 only.
    """

    cluster: str
    node: str
    incarnation: int
    sequence: int
    sent: int
    state: State
    priority: int
    groups: tuple[str, ...] = ()
    quorum: bool = False
    role: Role = "member"
    failed: tuple[str, ...] = ()
    sees: tuple[str, ...] = ()
    attributes: tuple[tuple[str, str], ...] = ()
    version: int = VERSION


def new_incarnation() -> int:
    """A fresh incarnation: wall-clock nanoseconds, so a restart outranks the run before it."""
    return time.time_ns()


# --- encoding -------------------------------------------------------------------------------


def encode(hb: Heartbeat, key: Keys) -> bytes:
    """``hb`` on the wire, signed with the newest key; :class:`HeartbeatError` if invalid."""
    signing = _keys(key)[-1]
    _check(hb)
    body = bytearray(HEADER.size)
    body += _name(hb.cluster, "cluster")
    body += _name(hb.node, "node")
    for what, names in zip(LISTS, (hb.groups, hb.failed, hb.sees), strict=True):
        body.append(len(names))
        for index, name in enumerate(names):
            body += _name(name, f"{what}[{index}]")
    if hb.version >= 2:
        body.append(len(hb.attributes))
        for name, value in hb.attributes:
            body += _name(name, "attribute key", MAX_KEY)
            body += _value(value, name)
    total = len(body) + MAC_SIZE
    if total > MAX_MESSAGE:
        raise HeartbeatError("too_large", f"{total} bytes, at most {MAX_MESSAGE}")
    flags = (FLAG_QUORUM if hb.quorum else 0) | (FLAG_WITNESS if hb.role == "witness" else 0)
    code = _STATE_CODE[hb.state]
    HEADER.pack_into(
        body, 0, MAGIC, hb.version, total, flags, code, hb.priority, 0,
        hb.incarnation, hb.sequence, hb.sent,
    )  # fmt: skip
    return bytes(body) + hmac.digest(signing, bytes(body), hashlib.sha256)


def _keys(key: Keys) -> Sequence[bytes]:
    keys = (key,) if isinstance(key, bytes | bytearray) else key
    if not keys or not all(isinstance(k, bytes | bytearray) and k for k in keys):
        raise HeartbeatError("key", "a cluster key must be non-empty bytes")
    return keys


def _check(hb: Heartbeat) -> None:
    if hb.version not in VERSIONS:
        raise HeartbeatError("invalid", f"version {hb.version}: one of {sorted(VERSIONS)}")
    if hb.attributes and hb.version < 2:
        raise HeartbeatError("invalid", "attributes need version 2")
    if len(hb.attributes) > MAX_ATTRIBUTES:
        raise HeartbeatError(
            "invalid", f"{len(hb.attributes)} attributes, at most {MAX_ATTRIBUTES}"
        )
    if len({key for key, _ in hb.attributes}) != len(hb.attributes):
        raise HeartbeatError("invalid", "an attribute key repeats")
    if hb.state not in _STATE_CODE:
        raise HeartbeatError("invalid", f"state {hb.state!r}: one of {', '.join(STATES)}")
    if not 0 <= hb.priority <= 255:
        raise HeartbeatError("invalid", f"priority {hb.priority}: 0-255")
    for field in ("incarnation", "sequence", "sent"):
        value = getattr(hb, field)
        if not 0 <= value <= MAX_U64:
            raise HeartbeatError("invalid", f"{field} {value}: an unsigned 64-bit integer")
    if hb.role not in ("member", "witness"):
        raise HeartbeatError("invalid", f"role {hb.role!r}: member or witness")
    for what, names in zip(LISTS, (hb.groups, hb.failed, hb.sees), strict=True):
        if len(names) > MAX_GROUPS:
            raise HeartbeatError("invalid", f"{len(names)} {what}, at most {MAX_GROUPS}")
        if len(set(names)) != len(names):
            raise HeartbeatError("invalid", f"{what} {names!r} repeat a name")


def _name(text: str, what: str, longest: int = MAX_NAME) -> bytes:
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raw = b""  # a lone surrogate: not UTF-8 text
    if not 1 <= len(raw) <= longest:
        raise HeartbeatError("invalid", f"{what} {text!r}: 1-{longest} bytes of UTF-8")
    return bytes((len(raw),)) + raw


def _value(text: str, key: str) -> bytes:
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise HeartbeatError("invalid", f"attribute {key!r}: value is not UTF-8 text") from None
    if len(raw) > MAX_VALUE:
        raise HeartbeatError("invalid", f"attribute {key!r}: value over {MAX_VALUE} bytes")
    return bytes((len(raw),)) + raw


# --- decoding -------------------------------------------------------------------------------


def decode(data: bytes, key: Keys, cluster: str) -> Heartbeat:
    """The heartbeat in ``data`` if it is well formed, of ``cluster`` and signed with ``key``.

    Checks, in order: size, magic, version, the length field, the cluster name (a
    diagnostic only: it is read before the MAC so that a neighbouring cluster is counted as
    ``cluster`` and not as forgery), the MAC, then every other field. Raises
    :class:`HeartbeatError` and nothing else, for any ``data``.
    """
    keys = _keys(key)
    view = memoryview(data)
    size = len(view)
    if size < MIN_MESSAGE:
        raise HeartbeatError("short", f"{size} bytes, at least {MIN_MESSAGE}")
    fields = HEADER.unpack_from(view)
    if fields[0] != MAGIC:
        raise HeartbeatError("magic", f"starts {bytes(view[:3])!r}, not {MAGIC!r}")
    if fields[1] not in VERSIONS:
        raise HeartbeatError("version", f"version {fields[1]}, this node speaks {sorted(VERSIONS)}")
    if fields[2] != size or size > MAX_MESSAGE:
        raise HeartbeatError("length", f"{size} bytes, length field says {fields[2]}")
    name, at = _read_name(view, HEADER.size, size - MAC_SIZE, "cluster")
    if name != cluster:
        raise HeartbeatError("cluster", f"from cluster {name!r}, this is {cluster!r}")
    _verify(view, keys)
    return _parse(view, fields, name, at)


def _verify(view: memoryview, keys: Sequence[bytes]) -> None:
    body, mac = view[:-MAC_SIZE], view[-MAC_SIZE:]
    for key in reversed(keys):
        if hmac.compare_digest(hmac.digest(key, body, hashlib.sha256), mac):
            return
    raise HeartbeatError("mac", "the MAC does not match any cluster key")


def _parse(view: memoryview, fields: tuple[int, ...], cluster: str, at: int) -> Heartbeat:
    _, version, _, flags, code, priority, reserved, incarnation, sequence, sent = fields
    end = len(view) - MAC_SIZE
    if flags & ~FLAGS or reserved:
        raise HeartbeatError("malformed", f"unknown flags {flags:#04x} or reserved {reserved}")
    if code >= len(STATES):
        raise HeartbeatError("malformed", f"unknown state code {code}")
    node, at = _read_name(view, at, end, "node")
    groups, at = _read_names(view, at, end, "groups")
    failed, at = _read_names(view, at, end, "failed")
    sees, at = _read_names(view, at, end, "sees")
    attributes: tuple[tuple[str, str], ...] = ()
    if version >= 2:
        attributes, at = _read_attributes(view, at, end)
    if at != end:
        raise HeartbeatError("malformed", f"{end - at} stray bytes before the MAC")
    quorum = bool(flags & FLAG_QUORUM)
    role: Role = "witness" if flags & FLAG_WITNESS else "member"
    state = STATES[code]
    return Heartbeat(
        cluster, node, incarnation, sequence, sent, state, priority, groups, quorum, role,
        failed, sees, attributes, version,
    )  # fmt: skip


def _read_count(view: memoryview, at: int, end: int, what: str, most: int) -> tuple[int, int]:
    """The count byte of a list at ``at`` (at most ``most``) and the offset after it."""
    if at >= end:
        raise HeartbeatError("malformed", f"the {what} count is missing")
    count = view[at]
    if count > most:
        raise HeartbeatError("malformed", f"{count} {what}, at most {most}")
    return count, at + 1


def _read_attributes(
    view: memoryview, at: int, end: int
) -> tuple[tuple[tuple[str, str], ...], int]:
    """The counted ``(key, value)`` pairs at ``at`` (distinct keys) and the offset after."""
    count, at = _read_count(view, at, end, "attributes", MAX_ATTRIBUTES)
    pairs = []
    for index in range(count):
        key, at = _read_name(view, at, end, f"attribute[{index}] key")
        if len(key.encode()) > MAX_KEY:
            raise HeartbeatError("malformed", f"attribute[{index}] key over {MAX_KEY} bytes")
        if at >= end:
            raise HeartbeatError("malformed", f"attribute {key!r}: value is missing")
        length, at = view[at], at + 1
        stop = at + length
        if length > MAX_VALUE or stop > end:
            raise HeartbeatError("malformed", f"attribute {key!r}: bad value length {length}")
        try:
            value = str(view[at:stop], "utf-8")
        except UnicodeDecodeError:
            raise HeartbeatError("malformed", f"attribute {key!r}: value is not UTF-8") from None
        pairs.append((key, value))
        at = stop
    if len({key for key, _ in pairs}) != count:
        raise HeartbeatError("malformed", "an attribute key is listed twice")
    return tuple(pairs), at


def _read_names(view: memoryview, at: int, end: int, what: str) -> tuple[tuple[str, ...], int]:
    """The counted list of distinct names at ``at`` and the offset after it."""
    count, at = _read_count(view, at, end, what, MAX_GROUPS)
    names = []
    for index in range(count):
        name, at = _read_name(view, at, end, f"{what}[{index}]")
        names.append(name)
    if len(set(names)) != count:
        raise HeartbeatError("malformed", f"a name is listed twice in {what}")
    return tuple(names), at


def _read_name(view: memoryview, at: int, end: int, what: str) -> tuple[str, int]:
    """The length-prefixed UTF-8 name at ``at`` (not past ``end``) and the offset after it."""
    if at >= end:
        raise HeartbeatError("malformed", f"{what} is missing")
    length = view[at]
    stop = at + 1 + length
    if not 1 <= length <= MAX_NAME or stop > end:
        raise HeartbeatError("malformed", f"{what}: bad length {length}")
    try:
        return str(view[at + 1 : stop], "utf-8"), stop
    except UnicodeDecodeError:
        raise HeartbeatError("malformed", f"{what} is not UTF-8") from None


# --- receiving ------------------------------------------------------------------------------


class _Peer:
    """What the receiver remembers of one node's current incarnation."""

    __slots__ = ("fresh_at", "incarnation", "retired", "sequence", "via")

    def __init__(
        self, incarnation: int, sequence: int, now: float, retired: dict[int, int]
    ) -> None:
        self.incarnation = incarnation
        self.sequence = sequence  # highest sequence seen, on any transport
        self.fresh_at = now  # when the last fresh (newer) message arrived
        self.via: dict[str, int] = {}  # transport -> highest sequence it delivered
        #: earlier incarnations -> their highest sequence (so they cannot be replayed)
        self.retired = retired


class Receiver:
    """The filter between the transports and the election: pure, clock injected.

    :meth:`accept` takes every datagram from every transport. Per node it keeps the current
    incarnation and the highest sequence seen across all transports:

    - newer sequence (or first message, or a newer incarnation: a restart) -> *fresh*:
      returned, counted ``accepted``, refreshes ``last_heard[(node, transport)]``;
    - the newest sequence again, on a transport that had not delivered it -> ``duplicate``:
      the same heartbeat over a redundant path, not an attack; it is not returned but it
      sets that transport's ``last_heard`` to when the first copy arrived (it proves that
      path alive, and a copy replayed late cannot stretch the peer's life);
    - anything older, or the newest again on the same transport -> ``replay`` (a copy
      that lags a whole sequence behind on a slow path counts here too);
    - an older incarnation -> ``stale_incarnation`` (unless the current one has been silent
      for ``forget_after`` seconds: then it counts as a restart, for a sender whose wall
      clock stepped back across its restart; the last sequences of the node's previous
      :data:`RETIRED_INCARNATIONS` incarnations are kept, so none of them can be replayed);
    - a message carrying this node's own name -> ``self`` (multicast loop, or a clash);
    - anything :func:`decode` rejects -> its ``reason``.

    Each datagram adds exactly one count to ``stats``. Replayed messages never move a peer's
    latest ``last_heard`` past the arrival of its newest fresh heartbeat.
    ``restarts`` counts incarnation changes per node. :meth:`accept` (fresh heartbeats only)
    and :meth:`receive` (every outcome) never raise.
    """

    __slots__ = (
        "_clock",
        "_peers",
        "cluster",
        "forget_after",
        "key",
        "last_heard",
        "latest",
        "node",
        "restarts",
        "stats",
    )

    def __init__(
        self,
        key: Keys,
        cluster: str,
        node: str | None = None,
        *,
        forget_after: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key = _keys(key)
        self.cluster = cluster
        self.node = node
        self.forget_after = forget_after
        self._clock = clock
        self._peers: dict[str, _Peer] = {}
        self.stats: Counter[str] = Counter()
        self.restarts: Counter[str] = Counter()
        #: (node, transport name) -> receiver's monotonic time of the last live proof.
        self.last_heard: dict[tuple[str, str], float] = {}
        #: node -> its last fresh heartbeat.
        self.latest: dict[str, Heartbeat] = {}

    def accept(self, data: bytes, transport: str) -> Heartbeat | None:
        """The heartbeat in ``data`` if it is fresh, else ``None``; every outcome is counted."""
        outcome, hb = self.receive(data, transport)
        return hb if outcome == "accepted" else None

    def receive(self, data: bytes, transport: str) -> tuple[str, Heartbeat | None]:
        """The outcome for ``data`` (a ``stats`` key) and its heartbeat if it proves life.

        The heartbeat is set for ``accepted`` and ``duplicate``: both prove that its sender
        is alive on ``transport`` (a membership that tracks each transport wants both; the
        election only the ``accepted`` ones). Never raises.
        """
        try:
            hb = decode(data, self.key, self.cluster)
        except HeartbeatError as exc:
            self.stats[exc.reason] += 1
            return exc.reason, None
        outcome = self._classify(hb, transport, self._clock())
        self.stats[outcome] += 1
        return outcome, hb if outcome in PROOFS else None

    def heard(self, node: str) -> dict[str, float]:
        """Transport name -> when ``node`` was last heard on it (empty if never)."""
        return {via: at for (name, via), at in self.last_heard.items() if name == node}

    def forget(self, node: str) -> None:
        """Drop everything known about ``node`` (it left the cluster configuration)."""
        self._peers.pop(node, None)
        self.latest.pop(node, None)
        for pair in [pair for pair in self.last_heard if pair[0] == node]:
            del self.last_heard[pair]

    def _classify(self, hb: Heartbeat, transport: str, now: float) -> str:
        if hb.node == self.node:
            return "self"
        peer = self._peers.get(hb.node)
        if peer is None:
            peer = self._peers[hb.node] = _Peer(hb.incarnation, hb.sequence, now, {})
        elif hb.incarnation != peer.incarnation:
            if not self._replaces(peer, hb, now):
                return "stale_incarnation"
            if hb.sequence <= peer.retired.get(hb.incarnation, -1):
                return "replay"
            peer = self._restart(peer, hb, now)
        elif hb.sequence > peer.sequence:
            peer.sequence, peer.fresh_at = hb.sequence, now
        elif hb.sequence == peer.sequence and peer.via.get(transport, -1) < hb.sequence:
            peer.via[transport] = hb.sequence
            self.last_heard[(hb.node, transport)] = peer.fresh_at
            return "duplicate"
        else:
            return "replay"
        peer.via[transport] = hb.sequence
        self.last_heard[(hb.node, transport)] = now
        self.latest[hb.node] = hb
        return "accepted"

    def _restart(self, old: _Peer, hb: Heartbeat, now: float) -> _Peer:
        """``hb`` starts a new incarnation of its node; the old one is retired."""
        retired = dict(old.retired)
        retired[old.incarnation] = old.sequence
        retired.pop(hb.incarnation, None)
        while len(retired) > RETIRED_INCARNATIONS:
            del retired[min(retired)]
        self.restarts[hb.node] += 1
        for pair in [pair for pair in self.last_heard if pair[0] == hb.node]:
            del self.last_heard[pair]
        peer = self._peers[hb.node] = _Peer(hb.incarnation, hb.sequence, now, retired)
        return peer

    def _replaces(self, peer: _Peer, hb: Heartbeat, now: float) -> bool:
        if hb.incarnation > peer.incarnation:
            return True
        return self.forget_after is not None and now - peer.fresh_at >= self.forget_after
