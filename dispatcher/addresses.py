"""Listener addresses and "is this URL the dispatcher itself?", without touching the network.

:func:`parse_address` reads a ``host:port`` listener. :func:`points_at` decides whether a
URL's authority reaches one of the dispatcher's own listeners, comparing resolved addresses
and ports rather than spellings:

- numeric hosts are read the way a client's resolver reads them (``getaddrinfo`` with
  ``AI_NUMERICHOST``, so ``inet_aton``'s forms: ``127.1``, ``0x7f000001``, ``2130706433``,
  ``017700000001``), with one trailing dot dropped; IPv4-mapped IPv6 (``::ffff:127.0.0.1``)
  counts as its IPv4 address;
- names are never looked up (no DNS, no ``/etc/hosts``: validation must not depend on the
  network nor hang). ``localhost``, any ``*.localhost`` (RFC 6761), ``localhost.localdomain``,
  ``ip6-localhost`` and ``ip6-loopback`` are the loopback addresses by rule; the machine's own
  host name is "this machine"; any other name is compared with the listener's name as text;
- a listener on a wildcard (``0.0.0.0``; ``::`` also takes IPv4) is reached through every
  loopback address, the unspecified address and every address assigned to this machine
  (found by binding a UDP socket to it: no packet is sent).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from dispatcher.errors import ListenError

#: The backlog of a listening socket :func:`bind` makes.
LISTEN_BACKLOG = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.IGNORECASE)
_LOOPBACK4 = ipaddress.IPv4Address("127.0.0.1")
_LOOPBACK6 = ipaddress.IPv6Address("::1")


def parse_address(value: str) -> tuple[str, int]:
    """Split a listener's ``host:port`` into host and port, or raise ``ValueError``.

    The host is an IPv4 address (dotted quad), an IPv6 address in brackets (``[::1]:8080``,
    returned without them) or a host name; the port 0-65535 (0 picks a free port). No scheme,
    path, spaces or control characters.
    """
    if not value.isascii() or not value.isprintable() or " " in value:
        raise ValueError("printable ASCII without spaces")
    if "/" in value or "@" in value:
        raise ValueError("host and port only, no scheme or path (not a URL)")
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError("[IPv6]:port")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("an IPv6 address inside the brackets") from None
    else:
        host, colon, port_text = value.rpartition(":")
        if not colon or not host:
            raise ValueError("a host and a port")
        if ":" in host:
            raise ValueError("an IPv6 address in brackets, such as [::1]:8080")
        if not _is_ipv4(host) and not _is_hostname(host):
            raise ValueError("an IPv4 address (dotted quad) or a host name")
    if not (port_text.isdigit() and len(port_text) <= 5 and int(port_text) <= 65535):
        raise ValueError("a port from 0 to 65535")
    return host, int(port_text)


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _is_hostname(host: str) -> bool:
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    return (
        0 < len(name) <= 253
        and all(_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )


@dataclass(frozen=True, slots=True)
class Host:
    """What a host spelling stands for: addresses, and/or a name that was not resolved."""

    addresses: frozenset[IPAddress] = frozenset()
    name: str | None = None  # lowercased, no trailing dot: a name compared as text
    this_machine: bool = False  # the machine's own host name


def resolve_host(text: str) -> Host:
    """The addresses ``text`` (a URL's host, brackets allowed) stands for, without network."""
    host = text.strip("[]").lower()
    if host.endswith(".") and not host.endswith(".."):
        host = host[:-1]
    if not host:
        return Host()
    numeric = _numeric(host)
    if numeric is not None:
        return Host(frozenset({numeric}))
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return Host(frozenset({_LOOPBACK4, _LOOPBACK6}), host)
    own = _own_hostname()
    return Host(name=host, this_machine=bool(own) and host in (own, own.split(".")[0]))


def _numeric(host: str) -> IPAddress | None:
    """``host`` read as a numeric address the way ``getaddrinfo`` does, mapped v6 unwrapped."""
    if "\0" in host or not host.isascii():
        return None
    try:
        infos = socket.getaddrinfo(host, None, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    except (OSError, UnicodeError, ValueError):
        return None
    text = str(infos[0][4][0]).split("%", 1)[0]
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@lru_cache(maxsize=1)
def _own_hostname() -> str:
    return socket.gethostname().lower().rstrip(".")


def is_local(address: IPAddress) -> bool:
    """Whether connecting to ``address`` reaches this machine (loopback, unspecified, or an
    address assigned to one of its interfaces: a UDP socket can bind it; nothing is sent)."""
    if address.is_loopback or address.is_unspecified:
        return True
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(address), 0))
    except OSError:
        return False
    return True


def points_at(url_host: str, url_port: int, listeners: Iterable[str]) -> str | None:
    """The first of ``listeners`` (``host:port``) that ``url_host:url_port`` reaches, or None."""
    target = resolve_host(url_host)
    for listen in listeners:
        try:
            own_host, own_port = parse_address(listen)
        except ValueError:
            continue
        if own_port == url_port and _reaches(target, resolve_host(own_host)):
            return listen
    return None


def _reaches(target: Host, own: Host) -> bool:
    if target.name is not None and target.name == own.name:
        return True
    wildcard = [a for a in own.addresses if a.is_unspecified]
    if wildcard:
        if target.this_machine:
            return True
        families = {6, 4} if any(a.version == 6 for a in wildcard) else {4}
        return any(a.version in families and is_local(a) for a in target.addresses)
    for address in target.addresses:
        if address in own.addresses:
            return True
        if address.is_unspecified and any(a.version == address.version for a in own.addresses):
            return True  # connecting to 0.0.0.0 (or ::) reaches the local listener
    return False


__all__ = ["Host", "parse_address", "points_at", "resolve_host"]


def bind(address: str, *, reuseport: bool = False, listen: bool = True) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0 picks a free one), listening unless told
    not to; with ``reuseport``, other processes of ours can bind the same address
    (``SO_REUSEPORT``: the kernel spreads new connections over the listening ones)."""
    host, port = parse_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ListenError(address, exc.strerror or str(exc)) from None
    sock.setblocking(False)
    return sock
