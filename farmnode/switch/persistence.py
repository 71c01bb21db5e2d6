"""IPVS persistence templates: the same client network goes to the same real server.

A template maps a client *network* (the client address masked to ``netmask`` bits, or
``netmask6`` for IPv6) to a real server's key. It lives ``timeout`` seconds after it was
last used, where "used" means a new connection was sent by it (:meth:`PersistenceTable.bind`)
or a connection it sent is still open (:meth:`PersistenceTable.hold` /
:meth:`PersistenceTable.unhold`, when the caller tracks them): while any held connection
stays open the template does not expire, and the timeout counts from when the last one
closes, as in IPVS. A caller that never holds gets the simpler rule: ``timeout`` after the
last new connection.

Time comes from ``clock`` (``time.monotonic`` unless a test passes a fake one).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from farmnode.errors import SchedulerError

_V4_MAPPED = "::ffff:"


class _Template:
    __slots__ = ("expires", "held", "server")

    def __init__(self, server: str, expires: float) -> None:
        self.server = server
        self.expires = expires
        self.held = 0


class PersistenceTable:
    """Persistence templates keyed by client network, with lazy and periodic expiry.

    ``timeout`` > 0 seconds; ``netmask`` 0..32 and ``netmask6`` 0..128 (prefix lengths that
    identify one client; 32 and 128 mean one address). Raises :class:`SchedulerError` for
    values outside those ranges, and for a client that is not an IP address when a mask
    shorter than a full address needs it parsed.
    """

    __slots__ = ("_clock", "_next_sweep", "_templates", "netmask", "netmask6", "timeout")

    def __init__(
        self,
        timeout: float,
        netmask: int = 32,
        netmask6: int = 128,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not timeout > 0:
            raise SchedulerError(f"persistence timeout must be > 0 seconds, not {timeout!r}")
        if not 0 <= netmask <= 32:
            raise SchedulerError(f"persistence netmask must be 0..32, not {netmask!r}")
        if not 0 <= netmask6 <= 128:
            raise SchedulerError(f"persistence netmask6 must be 0..128, not {netmask6!r}")
        self.timeout = timeout
        self.netmask = netmask
        self.netmask6 = netmask6
        self._clock = clock
        self._templates: dict[str, _Template] = {}
        self._next_sweep = clock() + timeout

    def network(self, client: str) -> str:
        """The template key of ``client``: its network as ``address/prefix`` text.

        IPv4-mapped IPv6 addresses (``::ffff:192.0.2.1``, from dual-stack sockets) count as
        the IPv4 address. Full-length masks skip parsing: the key is the address itself.
        """
        if "%" in client:  # a scoped IPv6 address (fe80::1%eth0): the scope is no part of it
            client = client.partition("%")[0]
        if client.startswith(_V4_MAPPED) and "." in client:
            client = client[len(_V4_MAPPED) :]
        if ":" in client:
            return self._masked(socket.AF_INET6, client, self.netmask6, 128)
        return self._masked(socket.AF_INET, client, self.netmask, 32)

    @staticmethod
    def _masked(family: socket.AddressFamily, client: str, bits: int, full: int) -> str:
        if bits == full:
            return client
        try:
            packed = socket.inet_pton(family, client)
        except OSError:
            raise SchedulerError(f"persistence: {client!r} is not an IP address") from None
        value = int.from_bytes(packed, "big") >> (full - bits) << (full - bits)
        address = socket.inet_ntop(family, value.to_bytes(len(packed), "big"))
        return f"{address}/{bits}"

    def lookup(self, client: str) -> str | None:
        """The server key of ``client``'s live template, or ``None``. Refreshes nothing."""
        return self.lookup_network(self.network(client))

    def lookup_network(self, network: str) -> str | None:
        """:meth:`lookup` by template key (from :meth:`network`), to mask a client once."""
        template = self._templates.get(network)
        if template is None:
            return None
        if template.held or template.expires > self._clock():
            return template.server
        return None

    def bind(self, client: str, server_key: str) -> None:
        """Create or refresh ``client``'s template: ``server_key`` for another ``timeout``.

        Rebinding a live template to another server keeps its held-connection count (the
        connections it sent earlier are still open, wherever they went).
        """
        self.bind_network(self.network(client), server_key)

    def bind_network(self, network: str, server_key: str) -> None:
        """:meth:`bind` by template key (from :meth:`network`)."""
        now = self._clock()
        template = self._templates.get(network)
        if template is None:
            self._templates[network] = _Template(server_key, now + self.timeout)
        else:
            template.server = server_key
            template.expires = now + self.timeout
        if now >= self._next_sweep:
            self.expire()

    def hold(self, client: str) -> None:
        """A connection sent by ``client``'s template opened: it cannot expire meanwhile."""
        template = self._templates.get(self.network(client))
        if template is not None:
            template.held += 1

    def unhold(self, client: str) -> None:
        """A held connection closed; the last one starts the ``timeout`` again."""
        template = self._templates.get(self.network(client))
        if template is not None and template.held:
            template.held -= 1
            if not template.held:
                template.expires = self._clock() + self.timeout

    def forget_server(self, server_key: str) -> int:
        """Drop every template that points to ``server_key``; returns how many."""
        doomed = [net for net, t in self._templates.items() if t.server == server_key]
        for network in doomed:
            del self._templates[network]
        return len(doomed)

    def expire(self) -> int:
        """Drop every expired, unheld template; returns how many. Runs itself now and then."""
        now = self._clock()
        doomed = [n for n, t in self._templates.items() if not t.held and t.expires <= now]
        for network in doomed:
            del self._templates[network]
        self._next_sweep = now + self.timeout
        return len(doomed)

    def servers(self) -> dict[str, int]:
        """How many templates point to each server key (expired ones included until swept)."""
        counts: dict[str, int] = {}
        for template in self._templates.values():
            counts[template.server] = counts.get(template.server, 0) + 1
        return counts

    def __len__(self) -> int:
        """Templates stored, including expired ones not yet swept (call :meth:`expire`)."""
        return len(self._templates)
