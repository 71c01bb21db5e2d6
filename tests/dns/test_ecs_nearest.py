"""Client subnets placed on their nearest site, with the scope the prefix map justifies,
end to end: ``farm-dispatcher serve`` (one worker) with a ``nearest`` pool of two loopback
sites in two regions and a prefix map (10.1.0.0/16 in ``east``, 10.2.0.0/16 in ``west``,
10.1.5.0/24 in ``west`` inside the first), asked by Debian's ``dig`` and ``kdig`` on
loopback with ``+subnet``.

RFC 7871 (section 7.2.1): the SCOPE PREFIX-LENGTH says how many leading bits of the
client subnet the answer holds for. Here: the length of the map network that located the
subnet, raised past any longer network inside it that would place some of its addresses
elsewhere; the subnet's own length when nothing located it (then the weights decide), raised
likewise; 0 with a ``/0`` subnet; no option at all without ``+subnet`` (the resolver's own
address, 127.0.0.1, is located: it is in no map network, the weights decide).
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import LoopbackSite, dispatcher_table, skip_or_fail
from tests.dns.helpers import dns_toml
from tests.dns.test_real_clients import answers, dig, kdig, status
from tests.test_serve_processes import Serve, upgrade

pytestmark = pytest.mark.anyio

SITES = {"a": ("east", "192.0.2.1"), "b": ("west", "192.0.2.2")}
NETWORKS = (("10.1.0.0/16", "east"), ("10.1.5.0/24", "west"), ("10.2.0.0/16", "west"))


def config_text(sites: dict[str, LoopbackSite], database: str) -> str:
    blocks = "".join(
        f"""
[[sites]]
name = "{name}"
base_url = "{sites[name].url}"
region = "{region}"
addresses = ["{address}"]
check = {{ url = "/health", expect = "OK", interval = 0.2, timeout = 0.5, rise = 1, fall = 2 }}
"""
        for name, (region, address) in SITES.items()
    )
    networks = "".join(
        f'\n[[networks]]\nprefix = "{prefix}"\nregion = "{region}"\n' for prefix, region in NETWORKS
    )
    head = dispatcher_table(database, "workers = 1\ngraceful_timeout = 1.0\n")
    return f"""{head}
[pools.default]
policy = "nearest"
{networks}{blocks}{dns_toml(ttl=20)}"""


@pytest.fixture
async def port(tmp_path: Path) -> AsyncIterator[int]:
    if shutil.which("dig") is None or shutil.which("kdig") is None:
        skip_or_fail("dig and kdig are not installed (./.ci/system-deps)")
    sites = {name: LoopbackSite(name) for name in SITES}
    for site in sites.values():
        await site.start()
    config = tmp_path / "farm.toml"
    database = f"sqlite:///{tmp_path / 'farm.db'}"
    config.write_text(config_text(sites, database))
    await asyncio.to_thread(upgrade, database)
    serve = Serve(config)
    try:
        await serve.ready()
        await serve.wait_for("DNS on udp+tcp")
        found = re.search(r"DNS on udp\+tcp: port\(s\) (\d+)", serve.output)
        assert found is not None, serve.output
        yield int(found[1])
    finally:
        serve.close()
        for site in sites.values():
            await site.stop()


async def both(port: int, *args: str) -> list[tuple[list[str], str | None]]:
    """(addresses, ECS option as ``subnet/source/scope`` or None) from dig and from kdig."""
    said = []
    for text in (await dig(port, *args), await kdig(port, *args)):
        assert status(text) == "NOERROR", text
        option = re.search(r"; (?:CLIENT-SUBNET|ECS): (\S+)", text)
        found = [a for a in answers(text) if re.fullmatch(r"[\d.]+", a)]  # (not dig's echo)
        said.append((found, option[1] if option else None))
    return said


async def until_both_up(port: int) -> None:
    """Until the probes have found both sites up (each subnet then lands on its own)."""
    for _ in range(100):
        said = await both(port, "www.farm.example.", "A", "+subnet=10.2.3.0/24")
        if said[0][0] == ["192.0.2.2"]:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"site b was never answered: {said}")


async def test_subnets_land_on_their_nearest_site_with_the_scope_the_map_justifies(
    port: int,
) -> None:
    """In the map: the nearest site; outside it, and without a subnet: the weights."""
    await until_both_up(port)
    cases = {
        "10.1.2.0/24": (["192.0.2.1"], "10.1.2.0/24/22"),  # east; 10.1.5.0/24 left out
        "10.1.5.0/24": (["192.0.2.2"], "10.1.5.0/24/24"),  # west, by the longer network
        "10.1.5.128/25": (["192.0.2.2"], "10.1.5.128/25/24"),  # holds for the whole /24
        "10.2.3.0/24": (["192.0.2.2"], "10.2.3.0/24/16"),  # west, for the whole /16
        "10.2.3.4/32": (["192.0.2.2"], "10.2.3.4/32/16"),
    }
    for subnet, (wanted, option) in cases.items():
        for said in await both(port, "www.farm.example.", "A", f"+subnet={subnet}"):
            assert said == (wanted, option), (subnet, said)
    # (one server for both halves: each start costs seconds)
    await outside_the_map_and_without_a_subnet(port)


async def outside_the_map_and_without_a_subnet(port: int) -> None:
    """Not located: the weights decide."""
    seen: set[str] = set()
    for _ in range(4):  # not located: the weights decide (1:1, in turn)
        for found, option in await both(port, "www.farm.example.", "A", "+subnet=10.9.0.0/24"):
            assert option == "10.9.0.0/24/24"  # the subnet's own length
            assert len(found) == 1
            seen.update(found)
    assert seen == {"192.0.2.1", "192.0.2.2"}
    # a /8 is not located (10.0.0.0 is in no network), but the /16s inside it are: the
    # answer holds for 10.0.0.0/16 only, longer than the source (RFC 7871: ask again
    # with that many bits)
    for found, option in await both(port, "www.farm.example.", "A", "+subnet=10.0.0.0/8"):
        assert option == "10.0.0.0/8/16"
        assert len(found) == 1
    # /0: the resolver keeps its client private; answered for the resolver, scope 0
    for found, option in await both(port, "www.farm.example.", "A", "+subnet=0.0.0.0/0"):
        assert option == "0.0.0.0/0/0"
        assert len(found) == 1
    seen.clear()
    for _ in range(4):  # no subnet: 127.0.0.1 is located, in no network: the weights
        for found, option in await both(port, "www.farm.example.", "A"):
            assert option is None  # no ECS option in an answer to a query without one
            seen.update(found)
    assert seen == {"192.0.2.1", "192.0.2.2"}
