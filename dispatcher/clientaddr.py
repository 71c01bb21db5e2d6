"""Who the client is, when proxies stand between it and the dispatcher.

A request that reaches the dispatcher through an HTTP proxy or load balancer comes from the
proxy's address; the proxy names the client in a header. Anyone can write that header, so
it is believed only from the proxies the operator lists (``[dispatcher] trusted_proxies``)
and only as far as those proxies vouch for it:

- the peer (the connection's address, or the client a PROXY protocol header named: see
  :mod:`dispatcher.proxied`) must be in ``trusted_proxies``, else the headers are ignored;
- the header (``X-Forwarded-For``, or RFC 7239 ``Forwarded``: ``forwarded_header`` says which
  one the proxies write; the other is never read, since a proxy that writes one passes the
  other on from the client untouched) lists the hops, each proxy appending the address it
  received the request from. It is read **right to left**: the client is the right-most
  address that is not itself a trusted proxy (each trusted hop vouches for the one to its
  left, an untrusted one for nothing); when every address is trusted, the left-most. Several
  header lines are one list, in order;
- an item that is not an address (malformed, ``unknown``, an RFC 7239 obfuscated identifier
  such as ``_hidden``) where the walk stops leaves the client unknown: the peer stays the
  client. What a client wrote to the left of that point is never read, so a client cannot
  make the walk stop early;
- the scheme comes with the client: ``X-Forwarded-Proto`` (the value aligned with the client's
  position when it lists one value per hop, else its only value) or the ``proto=`` of the
  client's ``Forwarded`` element; only ``http`` and ``https`` count.

The result is written into the request's scope (``client``, ``scheme``), before the decision:
``%{REMOTE_ADDR}``, ``%{HTTPS}``, affinity's network key and the ``Secure`` cookie flag all
read it there. :func:`forwarded_client` is the pure core (any bytes in, an address or
``None`` out, never an exception); :class:`ForwardedFront` puts it in front of the decision
core for the public edge, :class:`TrustedProxyMiddleware` in front of an ASGI app.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Iterator
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from dispatcher.errors import InvalidValue

if TYPE_CHECKING:
    from dispatcher.app import Answer, WireAnswer
    from dispatcher.asgi import Receive, Scope, Send
    from dispatcher.config import DispatcherSettings
    from dispatcher.http1 import Decider

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: ``forwarded_header``'s values: which header the trusted proxies write.
FORWARDED_HEADERS: Final = ("x-forwarded-for", "forwarded")
#: At most this many ``trusted_proxies`` entries.
MAX_TRUSTED: Final = 4096
#: Peer addresses whose verdict :class:`TrustedProxies` remembers (then it starts again).
CACHE_SIZE: Final = 4096
#: Hops read from the right before giving up (a header is bounded by the edge's head limit).
MAX_HOPS: Final = 64
_SCHEMES: Final = {"http": "http", "https": "https"}


class Hop(NamedTuple):
    """What the headers say: the client's address and port (``None``: they do not name
    one; the peer stays the client) and the scheme (``None``: the connection's own)."""

    address: str | None
    port: int = 0
    scheme: str | None = None


NOBODY: Final = Hop(None)


# --- trust ---------------------------------------------------------------------------------


class TrustedProxies:
    """The networks whose requests may name the client; ``address in trusted`` is cheap
    (verdicts are remembered per peer address text). IPv4-mapped IPv6 addresses
    (``::ffff:10.0.0.1``, from a dual-stack listener) count as their IPv4 address."""

    __slots__ = ("_cache", "_prefixes", "networks")

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        self.networks = tuple(networks)
        self._cache: dict[str, bool] = {}
        # (version, prefix length) -> the networks' numbers, shifted: a look-up costs one
        # set probe per distinct prefix length, however many networks are listed
        prefixes: dict[tuple[int, int], set[int]] = {}
        for network in self.networks:
            shift = network.max_prefixlen - network.prefixlen
            key = (network.version, shift)
            prefixes.setdefault(key, set()).add(int(network.network_address) >> shift)
        self._prefixes = tuple((v, shift, frozenset(n)) for (v, shift), n in prefixes.items())

    @classmethod
    def parse(cls, values: Iterable[str]) -> TrustedProxies:
        """From CIDR texts already validated by :func:`parse_networks`."""
        return cls(ipaddress.ip_network(v) for v in values)

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, str):
            return False
        known = self._cache.get(address)
        if known is None:
            ip = _address(address)
            known = ip is not None and self.trusts(ip)
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[address] = known
        return known

    def trusts(self, ip: IPAddress) -> bool:
        number, version = int(ip), ip.version
        return any(v == version and number >> shift in n for v, shift, n in self._prefixes)

    def __bool__(self) -> bool:
        return bool(self.networks)


def parse_networks(raw: Any, field: str) -> tuple[str, ...]:
    """``trusted_proxies``: a list of networks in CIDR notation (``10.0.0.0/8``,
    ``2001:db8::/32``) or single addresses; returned normalized, or :class:`InvalidValue`."""
    if not isinstance(raw, list | tuple):
        raise InvalidValue(field, f'a list of networks such as ["10.0.0.0/8"], got {raw!r}')
    if len(raw) > MAX_TRUSTED:
        raise InvalidValue(field, f"at most {MAX_TRUSTED} networks, got {len(raw)}")
    networks: list[str] = []
    for index, value in enumerate(raw):
        where = f"{field}[{index}]"
        if not isinstance(value, str) or not value.isascii() or not value.strip():
            raise InvalidValue(where, f"a network such as 10.0.0.0/8 or ::1/128, got {value!r}")
        try:
            network = ipaddress.ip_network(value.strip())
        except ValueError as exc:
            hint = "host bits set: " if "host bits" in str(exc) else ""
            raise InvalidValue(
                where,
                f"a network in CIDR notation (10.0.0.0/8, 2001:db8::/32) or an address "
                f"({hint}got {value!r})",
            ) from None
        networks.append(str(network))
    return tuple(networks)


@lru_cache(maxsize=8)
def trusted_proxies(networks: tuple[str, ...]) -> TrustedProxies | None:
    """The :class:`TrustedProxies` for validated CIDR texts; ``None`` for none."""
    return TrustedProxies.parse(networks) if networks else None


# --- the pure core ---------------------------------------------------------------------------


def forwarded_client(
    headers: Iterable[tuple[bytes, bytes]], trusted: TrustedProxies, header: str
) -> Hop:
    """The client the headers name, read right to left over ``trusted`` hops (see the
    module's text). ``header`` is ``"x-forwarded-for"`` or ``"forwarded"``; names in
    ``headers`` are lower-case. Any bytes in; never raises."""
    lists: list[bytes] = []
    protos: list[bytes] = []
    if header == "forwarded":
        for name, value in headers:
            if name == b"forwarded":
                lists.append(value)
        return _walk_forwarded(_joined(lists), trusted) if lists else NOBODY
    for name, value in headers:
        if name == b"x-forwarded-for":
            lists.append(value)
        elif name == b"x-forwarded-proto":
            protos.append(value)
    if not lists:
        return NOBODY
    return _walk_xff(_joined(lists), _joined(protos), trusted)


def _joined(values: list[bytes]) -> bytes:
    return values[0] if len(values) == 1 else b",".join(values)


# (The walks are pure functions of the header bytes and the trusted networks, and the same
# proxies send the same clients' headers again and again: remembered, a request from a
# trusted proxy costs a header scan and a cache look-up, not an address parse per hop.)


@lru_cache(maxsize=CACHE_SIZE)
def _walk_xff(raw: bytes, raw_protos: bytes, trusted: TrustedProxies) -> Hop:
    items = raw.decode("latin-1").split(",")
    protos = raw_protos.decode("latin-1")
    last = len(items) - 1
    for index in range(last, max(-1, last - MAX_HOPS), -1):
        node = _node(items[index].strip(" \t"))
        if node is None:
            return NOBODY  # malformed where it matters: the peer stays the client
        address, port = node
        if address is None or index == 0 or address not in trusted:
            return Hop(address, port, _aligned(protos, index, len(items)))
    return NOBODY


def _aligned(protos: str, index: int, count: int) -> str | None:
    """The X-Forwarded-Proto value for the hop at ``index`` of ``count``: the aligned one
    when there is one per hop, the only one when there is one, else none."""
    if not protos:
        return None
    values = protos.split(",")
    if len(values) == count:
        value = values[index]
    elif len(values) == 1:
        value = values[0]
    else:
        return None
    return _SCHEMES.get(value.strip(" \t").lower())


@lru_cache(maxsize=CACHE_SIZE)
def _walk_forwarded(raw: bytes, trusted: TrustedProxies) -> Hop:
    for hops, element in enumerate(_elements_from_right(raw.decode("latin-1"))):
        pairs = _pairs(element)
        if pairs is None or hops >= MAX_HOPS:
            return NOBODY
        proto = _SCHEMES.get(pairs.get("proto", "").lower())
        node = _node(pairs["for"]) if "for" in pairs else (None, 0)
        if node is None:
            return NOBODY
        address, port = node
        if address is None or address not in trusted or element.last:
            return Hop(address, port, proto)
    return NOBODY


class _Element(NamedTuple):
    text: str
    last: bool  # the left-most element


def _elements_from_right(text: str) -> Iterator[_Element]:
    """The comma-separated elements of a ``Forwarded`` list, right-most first. Commas in
    quoted strings do not split; quotes are paired from the right, so whatever a client
    wrote on the left cannot change how the proxies' elements on the right are read."""
    end, quoted, at = len(text), False, len(text) - 1
    while at >= 0:
        char = text[at]
        if char == '"':
            slashes = 0
            while at - 1 - slashes >= 0 and text[at - 1 - slashes] == "\\":
                slashes += 1
            if not (quoted and slashes % 2):  # (an escaped quote stays inside)
                quoted = not quoted
        elif char == "," and not quoted:
            yield _Element(text[at + 1 : end], False)
            end = at
        at -= 1
    yield _Element(text[:end], True)


def _pairs(element: _Element) -> dict[str, str] | None:
    """``for=...;proto=...`` as a dict (names lower-case, quoted values unquoted); ``None``
    for a malformed element (a repeated name, a bad quoted string, a bare word)."""
    pairs: dict[str, str] = {}
    for raw in _split_pairs(element.text):
        if raw is None:
            return None
        pair = raw.strip(" \t")
        if not pair:
            continue
        name, equals, value = pair.partition("=")
        name = name.lower()
        if not equals or not name or not _TOKEN.issuperset(name) or name in pairs:
            return None
        unquoted = _value(value)
        if unquoted is None:
            return None
        pairs[name] = unquoted
    return pairs


def _split_pairs(text: str) -> Iterator[str | None]:
    """The ``;``-separated pairs of one element, left to right; ``None`` for an unclosed
    quoted string."""
    start, quoted, escaped = 0, False, False
    for at, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted:
            if char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == ";":
            yield text[start:at]
            start = at + 1
    yield None if quoted else text[start:]


_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_BARE = _TOKEN | frozenset(":[]")  # unquoted values: tokens, leniently with ':' and brackets


def _value(value: str) -> str | None:
    if value[:1] != '"':
        return value if value and _BARE.issuperset(value) else None
    if len(value) < 2 or value[-1] != '"':
        return None
    out: list[str] = []
    escaped = False
    for char in value[1:-1]:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            return None
        else:
            out.append(char)
    return None if escaped else "".join(out)


def _node(text: str) -> tuple[str | None, int] | None:
    """One hop: ``(address, port)``; ``(None, 0)`` for ``unknown`` or an obfuscated
    identifier (``_abc``); ``None`` when malformed. Accepts ``1.2.3.4``, ``1.2.3.4:80``,
    ``2001:db8::1``, ``[2001:db8::1]``, ``[2001:db8::1]:80`` (a port may be obfuscated)."""
    if not text or len(text) > 64:
        return None
    if text.lower() == "unknown" or (text[0] == "_" and _TOKEN.issuperset(text)):
        return None, 0
    port = 0
    if text[0] == "[":
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            return None
        if rest and (rest[0] != ":" or (port := _port(rest[1:])) < 0):
            return None
    elif text.count(":") == 1:
        host, _, rest = text.partition(":")
        if (port := _port(rest)) < 0:
            return None
    else:
        host = text
    ip = _address(host)
    if ip is None:
        return None
    return str(ip), port


def _port(text: str) -> int:
    if text[:1] == "_" and _TOKEN.issuperset(text):
        return 0  # obfuscated
    if not (1 <= len(text) <= 5 and text.isascii() and text.isdigit()) or int(text) > 65535:
        return -1
    return int(text)


def _address(text: str) -> IPAddress | None:
    """The IP address in ``text`` (IPv4-mapped IPv6 as IPv4), or ``None``; no scoped IPv6."""
    if "%" in text or not text.isascii():
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


# --- in front of the decision ----------------------------------------------------------------


def resolve(scope: Scope, trusted: TrustedProxies, header: str) -> bool:
    """Put the client and scheme the headers name into ``scope`` (in place) when its
    ``client`` is a trusted proxy; whether anything changed."""
    client = scope.get("client")
    if not client or client[0] not in trusted:
        return False
    hop = forwarded_client(scope.get("headers") or (), trusted, header)
    changed = False
    if hop.address is not None:
        scope["client"] = (hop.address, hop.port)
        changed = True
    if hop.scheme is not None and hop.scheme != scope.get("scheme"):
        scope["scheme"] = hop.scheme
        changed = True
    return changed


class ForwardedFront:
    """A decision core behind trusted proxies: each request's scope gets the client the
    proxies name (:func:`resolve`), then the core answers. The public edge uses it only when
    ``trusted_proxies`` is set, so without it a request pays nothing."""

    __slots__ = ("core", "header", "trusted")

    def __init__(self, core: Decider, trusted: TrustedProxies, header: str) -> None:
        self.core = core
        self.trusted = trusted
        self.header = header

    def answer(self, scope: Scope) -> Answer:
        scope = dict(scope)
        resolve(scope, self.trusted, self.header)
        return self.core.answer(scope)

    def answer_wire(self, scope: Scope, url: bytes, host: bytes | None) -> WireAnswer:
        # (the edge's scope is this request's own copy: changed in place)
        resolve(scope, self.trusted, self.header)
        return self.core.answer_wire(scope, url, host)


def front(core: Decider, settings: DispatcherSettings) -> Decider:
    """``core`` as the public edge should call it: behind :class:`ForwardedFront` when the
    settings trust proxies, else ``core`` itself."""
    trusted = trusted_proxies(settings.trusted_proxies)
    if trusted is None:
        return core
    return ForwardedFront(core, trusted, settings.forwarded_header)


class TrustedProxyMiddleware:
    """ASGI middleware: an ``http`` request from a trusted proxy gets the client (and
    scheme) the proxies name in its scope; everything else passes through untouched."""

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        trusted: TrustedProxies,
        header: str = FORWARDED_HEADERS[0],
    ) -> None:
        self.app = app
        self.trusted = trusted
        self.header = header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = dict(scope)
            resolve(scope, self.trusted, self.header)
        await self.app(scope, receive, send)


__all__ = [
    "FORWARDED_HEADERS",
    "ForwardedFront",
    "Hop",
    "TrustedProxies",
    "TrustedProxyMiddleware",
    "forwarded_client",
    "front",
    "parse_networks",
    "resolve",
    "trusted_proxies",
]
