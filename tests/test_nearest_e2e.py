"""``policy = "nearest"`` end to end: a real ``farm-dispatcher serve`` with two worker
processes, three loopback sites with their region, country and coordinates, a prefix map
and a test-built ``.mmdb``, and clients on loopback source addresses (127.x.y.z).

- 127.10.0.0/16 is in the prefix map (region ``eu``, coordinates in Paris): the ``fra``
  site shares its region; with ``fra`` drained, ``nyc`` is the nearest by distance.
- 127.20.0.0/16 is in the database as the United States (no coordinates): ``nyc`` shares
  its country.
- 127.30.0.0/16 is in the database as Australia with Sydney's coordinates: no site shares
  its country or continent, ``tyo`` is the nearest by great-circle distance.
- 127.40.0.0/16 is in neither: the weights decide (``fra`` 1, ``nyc`` 2, ``tyo`` 3).

Which worker served a connection is read from ``/proc`` (the worker process holding the
accepted socket), so "through both workers" is checked, not hoped for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, LoopbackSite, dispatcher_table
from tests.geodata import city, write_mmdb
from tests.test_serve_processes import Serve, upgrade

pytestmark = pytest.mark.anyio

#: name -> (region, country, coordinates, weight)
SITES = {
    "fra": ("eu", "DE", (50.11, 8.68), 1),
    "nyc": ("us", "US", (40.71, -74.01), 2),
    "tyo": ("asia", "JP", (35.68, 139.69), 3),
}
PREFIX_MAPPED = "127.10.0.5"
IN_DATABASE_COUNTRY = "127.20.0.5"
IN_DATABASE_COORDINATES = "127.30.0.5"
NOWHERE = "127.40.0.5"
NEAREST = {PREFIX_MAPPED: "fra", IN_DATABASE_COUNTRY: "nyc", IN_DATABASE_COORDINATES: "tyo"}
CONNECTIONS = 16  # per client address: new connections, spread over the workers


def farm_config(directory: Path, sites: dict[str, LoopbackSite], extra: str = "") -> Path:
    write_mmdb(
        directory / "geo.mmdb",
        {
            "127.20.0.0/16": city("US", "NA"),
            "127.30.0.0/16": city("AU", "OC", -33.87, 151.21),
        },
    )
    blocks = "".join(
        f"""
[[sites]]
name = "{name}"
base_url = "{sites[name].url}"
weight = {weight}
region = "{region}"
country = "{country}"
coordinates = [{lat}, {lon}]
check = {{ url = "/health", expect = "OK", interval = 0.5, timeout = 2.0, rise = 1, fall = 3 }}
"""
        for name, (region, country, (lat, lon), weight) in SITES.items()
    )
    database = f"sqlite:///{directory / 'farm.db'}"
    settings = f'workers = 2\ngraceful_timeout = 1.0\ngeoip_database = "geo.mmdb"\n{extra}'
    config = directory / "farm.toml"
    config.write_text(
        f"""{dispatcher_table(database, settings)}
[pools.default]
policy = "nearest"

[[networks]]
prefix = "127.10.0.0/16"
region = "eu"
coordinates = [48.86, 2.35]
{blocks}"""
    )
    upgrade(database)
    return config


@pytest.fixture
async def three_sites() -> AsyncIterator[dict[str, LoopbackSite]]:
    started = {name: LoopbackSite(name) for name in SITES}
    for site in started.values():
        await site.start()
    try:
        yield started
    finally:
        for site in started.values():
            await site.stop()


class Farm:
    """A running ``serve`` and an admin client for it."""

    def __init__(self, serve: Serve, sites: dict[str, LoopbackSite]) -> None:
        self.serve = serve
        self.sites = sites
        self.admin = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{serve.admin}",
            trust_env=False,
            headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=10,
        )

    def site_of(self, location: str) -> str:
        for name, site in self.sites.items():
            if location.startswith(site.url + "/"):
                return name
        raise AssertionError(f"{location!r} is no site's")

    async def all_up(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            status = (await self.admin.get("/api/v1/status")).json()
            if {s["name"]: s["eligible"] for s in status["sites"]} == dict.fromkeys(SITES, True):
                return
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.1)

    async def explain(self, remote_addr: str, **extra: object) -> Any:
        body = {"url": "http://www.example.com/page", "remote_addr": remote_addr, **extra}
        response = await self.admin.post("/api/v1/explain", json=body)
        assert response.status_code == 200, response.text
        return response.json()


@contextlib.asynccontextmanager
async def serving(
    directory: Path, sites: dict[str, LoopbackSite], extra: str = ""
) -> AsyncIterator[Farm]:
    config = await asyncio.to_thread(farm_config, directory, sites, extra)
    running = Serve(config)
    farm = None
    try:
        await running.ready()
        farm = Farm(running, sites)
        await farm.all_up()
        yield farm
    finally:
        if farm is not None:
            await farm.admin.aclose()
        running.close()


@pytest.fixture
async def farm(tmp_path: Path, three_sites: dict[str, LoopbackSite]) -> AsyncIterator[Farm]:
    async with serving(tmp_path, three_sites) as started:
        yield started


# --- clients on their own source addresses, and which worker took each ------------------


@dataclass(frozen=True)
class Answer:
    source: str
    port: int  # the client's source port: which worker holds the connection is read by it
    location: str


async def request_from(
    source: str, port: int, path: str = "/page", headers: str = ""
) -> tuple[Answer, asyncio.StreamWriter]:
    """One request on a new connection from ``source``; the connection is left open (the
    caller closes the writer) so the worker that accepted it can be found."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: www.example.com\r\n{headers}\r\n".encode("latin-1"))
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].split()[1] == "302", head
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    location = {k.lower(): v for k, v in fields.items()}["location"]
    return Answer(source, writer.get_extra_info("sockname")[1], location), writer


def connection_owners(public_port: int, workers: set[int]) -> dict[tuple[str, int], int]:
    """(client address, client port) -> pid of the worker holding the accepted connection,
    for every established connection to ``public_port``."""
    inodes: dict[int, tuple[str, int]] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
        if state != "01" or not local.endswith(f":{public_port:04X}"):
            continue
        address, port = remote.split(":")
        ip = socket.inet_ntoa(struct.pack("<I", int(address, 16)))
        inodes[inode] = (ip, int(port, 16))
    owners = {}
    for pid in workers:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except FileNotFoundError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in inodes:
                    owners[inodes[inode]] = pid
    return owners


async def spread_requests(
    farm: Farm, sources: list[str], connections: int = CONNECTIONS
) -> list[tuple[Answer, int]]:
    """``connections`` new connections from each source, each with one request;
    every answer with the pid of the worker that served it."""
    opened = await asyncio.gather(
        *(
            request_from(source, farm.serve.public, f"/page{i}")
            for source in sources
            for i in range(connections)
        )
    )
    try:
        owners = connection_owners(farm.serve.public, farm.serve.workers())
        return [(answer, owners[(answer.source, answer.port)]) for answer, _ in opened]
    finally:
        for _, writer in opened:
            writer.close()


# --- the tests -------------------------------------------------------------------------


async def test_each_client_lands_on_its_nearest_site_through_both_workers(farm: Farm) -> None:
    answers = await spread_requests(farm, list(NEAREST))
    workers = farm.serve.workers()
    assert len(workers) == 2
    by_worker: dict[str, dict[int, set[str]]] = {}
    for answer, pid in answers:
        by_worker.setdefault(answer.source, {}).setdefault(pid, set()).add(
            farm.site_of(answer.location)
        )
    for source, site in NEAREST.items():
        assert by_worker[source] == {pid: {site} for pid in workers}, (source, by_worker[source])
    # nowhere in the prefix map or the database: the weights, 1 : 2 : 3. Each worker runs
    # its own smooth weighted round-robin (period tyo nyc fra tyo nyc tyo), so any run of n
    # of its picks holds each site n * weight / 6 times, give or take one.
    answers = await spread_requests(farm, [NOWHERE], 36)
    assert {pid for _, pid in answers} == workers
    elsewhere = Counter(farm.site_of(a.location) for a, _ in answers)
    assert set(elsewhere) == set(SITES), elsewhere
    for name, (_, _, _, weight) in SITES.items():
        assert abs(elsewhere[name] - 36 * weight / 6) <= 2, elsewhere


async def test_explain_shows_how_each_client_was_located_and_every_verdict(farm: Farm) -> None:
    expected = {
        PREFIX_MAPPED: ("prefix-map", "127.10.0.0/16", "fra", "region"),
        IN_DATABASE_COUNTRY: ("database", "127.20.0.0/16", "nyc", "country"),
        IN_DATABASE_COORDINATES: ("database", "127.30.0.0/16", "tyo", "distance"),
    }
    for address, (source, prefix, site, tier) in expected.items():
        answer = await farm.explain(address)
        assert answer["client"] == {"remote_addr": address, "subnet": None}
        (placement,) = answer["placements"]
        located = placement["located"]
        assert (located["source"], located["prefix"]) == (source, prefix), located
        verdicts = {c["site"]: (c["verdict"], c["tier"]) for c in placement["considered"]}
        assert verdicts[site] == ("taken", tier), verdicts
        assert {v for s, (v, _) in verdicts.items() if s != site} == {"lower-tier"}, verdicts
        assert placement["sites"][0] == site
        assert answer["answer"]["location"].startswith(farm.sites[site].url)
        assert f"located by {source}" in answer["text"]
    located = await farm.explain(IN_DATABASE_COORDINATES)
    (placement,) = located["placements"]
    assert placement["located"]["country"] == "AU"
    assert placement["located"]["coordinates"] == [-33.87, 151.21]
    distances = {c["site"]: c["distance_km"] for c in placement["considered"]}
    assert 7000 < distances["tyo"] < 8500 < distances["nyc"], distances
    nowhere = await farm.explain(NOWHERE)
    (placement,) = nowhere["placements"]
    assert placement["located"]["source"] == "none"
    assert {c["verdict"] for c in placement["considered"]} <= {"taken", "not-picked"}
    assert "not located" in nowhere["text"]


async def test_draining_the_nearest_site_moves_its_clients_to_the_next_tier_at_once(
    farm: Farm,
) -> None:
    assert {farm.site_of(a.location) for a, _ in await spread_requests(farm, [PREFIX_MAPPED])} == {
        "fra"
    }
    status = (await farm.admin.get("/api/v1/status")).json()
    before = max(w["generation"] for w in status["workers"])
    response = await farm.admin.post("/api/v1/sites/fra/drain")
    assert response.status_code == 200, response.text
    drained = time.monotonic()
    while min(w["generation"] for w in status["workers"]) <= before:
        assert time.monotonic() - drained < 1.0, status  # every worker has it within ms
        await asyncio.sleep(0.005)
        status = (await farm.admin.get("/api/v1/status")).json()
    assert "fra" not in status["pools"]["default"]["eligible"]
    answers = await spread_requests(farm, [PREFIX_MAPPED, IN_DATABASE_COUNTRY])
    assert {pid for _, pid in answers} == farm.serve.workers()
    assert {farm.site_of(a.location) for a, _ in answers} == {"nyc"}
    explained = await farm.explain(PREFIX_MAPPED)
    (placement,) = explained["placements"]
    verdicts = {c["site"]: (c["verdict"], c["tier"]) for c in placement["considered"]}
    assert verdicts["fra"][0] == "drained"
    assert verdicts["nyc"] == ("taken", "distance"), verdicts


async def test_the_address_a_trusted_proxy_forwards_is_the_one_located(
    tmp_path: Path, three_sites: dict[str, LoopbackSite]
) -> None:
    async with serving(tmp_path, three_sites, 'trusted_proxies = ["127.0.0.1/32"]') as farm:
        port = farm.serve.public
        for client, site in NEAREST.items():  # from the trusted proxy: the forwarded client
            answers = await asyncio.gather(
                *(
                    request_from("127.0.0.1", port, "/page", f"X-Forwarded-For: {client}\r\n")
                    for _ in range(CONNECTIONS)
                )
            )
            for _, writer in answers:
                writer.close()
            assert {farm.site_of(a.location) for a, _ in answers} == {site}, client
        # from an untrusted peer (in the prefix map itself), the header is ignored: the
        # peer's own address is located
        answers = await asyncio.gather(
            *(
                request_from(PREFIX_MAPPED, port, "/page", "X-Forwarded-For: 127.30.0.5\r\n")
                for _ in range(CONNECTIONS)
            )
        )
        for _, writer in answers:
            writer.close()
        assert {farm.site_of(a.location) for a, _ in answers} == {"fra"}
        explained = await farm.explain(
            "127.0.0.1", headers={"x-forwarded-for": IN_DATABASE_COORDINATES}
        )
        assert explained["client"]["remote_addr"] == IN_DATABASE_COORDINATES
        assert explained["placements"][0]["sites"] == ["tyo"]
