"""Name resolution for httpx without DNS: the farm's test names map to loopback addresses.

The client keeps speaking to ``http://eu.farm.test:PORT``: the URL, the ``Host`` header, the
cookie jar's domain matching and redirects all see the name. Only the TCP connect is
redirected, by an httpcore network backend that turns the name into its mapped address
just before it connects (``httpcore.AsyncConnectionPool(network_backend=...)``), wrapped in
a small httpx transport so that ``httpx.AsyncClient(transport=...)`` works.

Network rule: every connect goes to a loopback address or nowhere. A name that is not in
the map is refused (no DNS lookup ever happens), and so is an address literal or a mapped
address outside 127.0.0.0/8 and ::1: :class:`NotLoopback` is raised before any socket
is opened. Unix sockets are refused too (nothing here needs them).
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

import httpcore
import httpx

FARM_HOSTS: Mapping[str, str] = {
    "www.farm.test": "127.0.0.1",
    "eu.farm.test": "127.0.0.2",
    "us.farm.test": "127.0.0.3",
}

# httpx's own exception for each httpcore one (httpx maps them the same way internally).
_ERRORS: dict[type[Exception], type[httpx.TransportError]] = {
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.ProtocolError: httpx.ProtocolError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.ProxyError: httpx.ProxyError,
}


class NotLoopback(Exception):
    """A connect to somewhere that is not a loopback address was refused."""

    def __init__(self, host: str, detail: str) -> None:
        super().__init__(f"refusing to connect to {host!r}: {detail} (loopback only)")
        self.host = host


def loopback_address(host: str) -> str:
    """``host`` if it is a loopback address literal, else :class:`NotLoopback`."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise NotLoopback(host, "not an address and not in the name map") from None
    if not address.is_loopback:
        raise NotLoopback(host, "not a loopback address")
    return str(address)


class HostMap:
    """Names to loopback addresses; checked when built, so a bad map fails at once."""

    def __init__(self, hosts: Mapping[str, str]) -> None:
        self.hosts = {name.lower(): loopback_address(address) for name, address in hosts.items()}

    def resolve(self, host: str) -> str:
        """The loopback address to connect to for ``host`` (a mapped name or a loopback
        literal); :class:`NotLoopback` for anything else."""
        mapped = self.hosts.get(host.lower().rstrip("."))
        return mapped if mapped is not None else loopback_address(host)


class HostMapBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects to ``hosts.resolve(host)`` instead of
    resolving ``host`` itself; the TCP work is done by ``backend`` (anyio's by default)."""

    def __init__(self, hosts: HostMap, backend: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.hosts = hosts
        self.backend = backend or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        address = self.hosts.resolve(host)
        return await self.backend.connect_tcp(
            address,
            port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise NotLoopback(path, "a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self.backend.sleep(seconds)


class HostMapTransport(httpx.AsyncBaseTransport):
    """An httpx transport over an httpcore pool that uses :class:`HostMapBackend`.

    It does what ``httpx.AsyncHTTPTransport`` does (which cannot be given a network backend
    in httpx 0.28): turn the httpx request into an httpcore one, and the answer back.
    """

    def __init__(self, hosts: Mapping[str, str] = FARM_HOSTS) -> None:
        self.hosts = HostMap(hosts)
        self._pool = httpcore.AsyncConnectionPool(network_backend=HostMapBackend(self.hosts))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, AsyncIterable)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors():
            response = await self._pool.handle_async_request(core_request)
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


class _Body(httpx.AsyncByteStream):
    """An httpcore response body as an httpx stream, with httpcore errors mapped."""

    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close: Any = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for kind in type(exc).__mro__:
            if kind in _ERRORS:
                raise _ERRORS[kind](str(exc)) from exc
        raise


def farm_client(hosts: Mapping[str, str] = FARM_HOSTS, **options: Any) -> httpx.AsyncClient:
    """An httpx client (with its own cookie jar) that reaches ``hosts`` on loopback only;
    proxies from the environment are ignored. ``options`` go to ``httpx.AsyncClient``."""
    options.setdefault("timeout", 10.0)
    return httpx.AsyncClient(transport=HostMapTransport(hosts), trust_env=False, **options)
