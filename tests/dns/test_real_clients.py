"""Real clients no one here wrote, against ``farm-dispatcher serve`` (control process, two
worker processes, real probes of real loopback sites): Debian's ``dig`` (BIND) and
``kdig`` (Knot) over UDP and TCP, with and without a client subnet, ``+norec``, ANY,
unknown types, names outside the zone, truncation and the fall-back to TCP; dnspython for
the weights over real sockets; a drained site and a dead one leaving the answers."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import dns.asyncquery
import dns.message
import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, LoopbackSite, farm_toml, skip_or_fail
from tests.dns.helpers import dns_toml
from tests.test_serve_processes import Serve, upgrade

pytestmark = pytest.mark.anyio

DIG, KDIG = shutil.which("dig"), shutil.which("kdig")
LONG = ".".join(["a" * 60] * 3) + ".farm.example."
MANY = [f"2001:db8::{i:x}" for i in range(1, 17)]
ADDRESSES = {"eu": "192.0.2.1", "us": "192.0.2.2", "asia": "192.0.2.3"}
SIX = {"eu": "2001:db8::1", "us": "2001:db8::2"}
WEIGHTS = {"eu": 10, "us": 5, "asia": 1}
INTERVAL, FALL = 0.2, 2
BROKEN = ("malformed", "bad packet", "communications error", "parser", "no servers")


def config_text(sites: dict[str, LoopbackSite], database: str) -> str:
    text = farm_toml(
        {name: (site, WEIGHTS[name]) for name, site in sites.items()},
        database_url=database,
        extra="workers = 2\ngraceful_timeout = 1.0\n",
        check=f"interval = {INTERVAL}, timeout = 0.5, rise = 1, fall = {FALL}",
    )
    for name, address in ADDRESSES.items():  # each site answered by its own addresses
        own = [address, *([SIX[name]] if name in SIX else [])]
        listed = ", ".join(f'"{a}"' for a in own)
        text = text.replace(f'name = "{name}"\n', f'name = "{name}"\naddresses = [{listed}]\n')
    fixed = [
        {"name": "ns1.farm.example.", "addresses": ["192.0.2.53"]},
        {"name": LONG, "addresses": MANY},
    ]
    return text + dns_toml(ttl="20/5", names=fixed)


class Running:
    def __init__(self, serve: Serve, sites: dict[str, LoopbackSite]) -> None:
        self.serve = serve
        self.sites = sites
        found = re.search(r"DNS on udp\+tcp: port\(s\) (\d+)", serve.output)
        assert found is not None, serve.output
        self.port = int(found[1])


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    if DIG is None or KDIG is None:
        skip_or_fail("dig and kdig are not installed (./.ci/system-deps)")
    sites = {name: LoopbackSite(name) for name in WEIGHTS}
    for site in sites.values():
        await site.start()
    config = tmp_path / "farm.toml"
    config.write_text(config_text(sites, "sqlite:///farm.db"))
    await asyncio.to_thread(upgrade, f"sqlite:///{tmp_path / 'farm.db'}")
    serve = Serve(config)
    try:
        await serve.ready()
        await serve.wait_for("DNS on udp+tcp")
        yield Running(serve, sites)
    finally:
        serve.close()
        for site in sites.values():
            await site.stop()


async def tool(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode()
    assert not any(word in text.lower() for word in BROKEN), text
    return text


async def dig(port: int, *args: str) -> str:
    assert DIG is not None
    return await tool(DIG, "@127.0.0.1", "-p", str(port), "+tries=1", "+time=5", *args)


async def kdig(port: int, *args: str) -> str:
    assert KDIG is not None
    return await tool(KDIG, "@127.0.0.1", "-p", str(port), "+retry=0", "+time=5", *args)


def status(text: str) -> str:
    found = re.search(r"status: (\w+)", text)
    assert found is not None, text
    return found[1]


def flags(text: str) -> set[str]:
    found = re.search(r"[Ff]lags: ([a-z ]*);", text)
    assert found is not None, text
    return set(found[1].split())


def answers(text: str, rdtype: str = "A") -> list[str]:
    return re.findall(rf"\s{rdtype}\s+(\S+)\s*$", text, re.MULTILINE)


async def test_dig_and_kdig_over_udp_and_tcp(running: Running) -> None:
    port = running.port
    for client in (dig, kdig):
        for transport in ("+notcp", "+tcp"):
            for extra in ((), ("+subnet=198.51.100.0/24",)):
                text = await client(port, "+norec", transport, *extra, "www.farm.example", "A")
                assert status(text) == "NOERROR", text
                assert "aa" in flags(text)
                assert "ra" not in flags(text)
                assert "rd" not in flags(text)
                assert answers(text)[0] in ADDRESSES.values(), text
                assert ("(TCP)" in text) == (transport == "+tcp"), text
                if extra:
                    assert "CLIENT-SUBNET: 198.51.100.0/24/0" in text, text
        six = await client(port, "www.farm.example", "AAAA")
        assert set(answers(six, "AAAA")) <= set(SIX.values()), six


async def test_any_unknown_types_nxdomain_out_of_zone_and_the_apex(running: Running) -> None:
    port = running.port
    for client in (dig, kdig):
        text = await client(port, "+notcp", "www.farm.example", "ANY")
        assert (status(text), len(answers(text))) == ("NOERROR", 1), text
        text = await client(port, "www.farm.example", "TYPE65280")
        assert (status(text), "SOA" in text, answers(text)) == ("NOERROR", True, []), text
        text = await client(port, "nope.farm.example", "A")
        assert status(text) == "NXDOMAIN", text
        assert re.search(r"\s60\s+IN\s+SOA", text), text
        text = await client(port, "www.example.com", "A")
        assert (status(text), "aa" in flags(text)) == ("REFUSED", False), text
        text = await client(port, "farm.example", "NS")
        assert all(part in text for part in ("ns1.farm.example.", "192.0.2.53")), text
        text = await client(port, "FaRm.ExAmPlE", "SOA")
        assert status(text) == "NOERROR", text
        assert "hostmaster.farm.example." in text.lower(), text


async def test_truncation_and_the_fall_back_to_tcp(running: Running) -> None:
    port = running.port
    name = LONG.rstrip(".")
    for args in (("+noedns",), ("+bufsize=512",)):
        text = await dig(port, *args, name, "AAAA")  # dig retries over TCP on TC
        assert "Truncated, retrying in TCP mode" in text, text
        assert sorted(answers(text, "AAAA")) == sorted(MANY), text
        text = await kdig(port, *args, name, "AAAA")  # kdig too
        assert sorted(answers(text, "AAAA")) == sorted(MANY), text
        ignored = await dig(port, *args, "+ignore", name, "AAAA")
        assert ("tc" in flags(ignored), answers(ignored, "AAAA")) == (True, []), ignored
    text = await dig(port, "+bufsize=1232", name, "AAAA")
    assert ("Truncated" in text, len(answers(text, "AAAA"))) == (False, 16), text


async def _count(port: int, queries: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    message = dns.message.make_query("www.farm.example.", "A")
    for _ in range(queries):
        reply = await dns.asyncquery.udp(message, "127.0.0.1", port=port, timeout=2)
        seen.update(rdata.to_text() for rrset in reply.answer for rdata in rrset)
    return seen


async def test_weights_over_real_sockets(running: Running) -> None:
    seen = await _count(running.port, 3200)
    total = sum(seen.values())
    for name, weight in WEIGHTS.items():
        share = seen[ADDRESSES[name]] / total
        # two workers, each exact over its own queries; the kernel spreads the queries
        assert abs(share - weight / 16) < 0.02, seen


async def test_a_drained_site_leaves_at_once_a_dead_one_within_fall_times_interval(
    running: Running,
) -> None:
    port = running.port
    admin = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{running.serve.admin}",
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        trust_env=False,
    )
    async with admin:
        response = await admin.post("/api/v1/sites/eu/drain")
        assert response.status_code == 200
        drained = time.monotonic()
        while ADDRESSES["eu"] in await _count(port, 20):
            assert time.monotonic() - drained < 1.0
        took = time.monotonic() - drained
        print(f"drained: last answered {took * 1000:.0f} ms after the admin call returned")
        assert ADDRESSES["eu"] not in await _count(port, 200)
        await asyncio.sleep(0.7)  # the workers report their counters every 0.5 s
        status = (await admin.get("/api/v1/status")).json()
        assert min(status["dns"]["udp"], status["dns"]["noerror"]) >= 200, status
    await running.sites["us"].stop()
    died = time.monotonic()
    bound = FALL * INTERVAL + INTERVAL
    while ADDRESSES["us"] in await _count(port, 5):
        assert time.monotonic() - died < bound + 1.0, running.serve.output
    took = time.monotonic() - died
    print(f"dead: last answered {took:.2f} s after the site stopped (bound {bound:.2f} s)")
    assert took <= bound + 0.3  # (the answer path, and a busy shared machine)
    assert set(await _count(port, 50)) == {ADDRESSES["asia"]}


def _udp_sockets(port: int) -> int:
    """How many UDP sockets are bound to ``port`` (one per serving worker)."""
    lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[1].endswith(f":{port:04X}"))


async def _ttls(port: int, queries: int) -> Counter[int]:
    seen: Counter[int] = Counter()
    message = dns.message.make_query("www.farm.example.", "A")
    for _ in range(queries):
        reply = await dns.asyncquery.udp(message, "127.0.0.1", port=port, timeout=2)
        seen.update(rrset.ttl for rrset in reply.answer)
    return seen


async def test_a_worker_restarted_after_a_change_answers_with_the_short_ttl(
    running: Running,
) -> None:
    # www's ttl is "20/5": short for 20 s after a change. A worker started within those
    # 20 s learns of the change from the control process (the others saw it happen).
    port, serve = running.port, running.serve
    admin = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{serve.admin}",
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        trust_env=False,
    )
    async with admin:
        assert (await admin.post("/api/v1/sites/eu/drain")).status_code == 200
    changed = time.monotonic()
    while ADDRESSES["eu"] in await _count(port, 20):
        assert time.monotonic() - changed < 2.0
    assert set(await _ttls(port, 40)) == {5}
    workers = serve.workers()
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    while len(serve.workers() - {victim}) < 2 or _udp_sockets(port) < 2:
        assert time.monotonic() - changed < 12, serve.output
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # (the new worker's first state applied)
    ttls = await _ttls(port, 200)  # the kernel spreads them over both workers
    print(f"after the restart, {time.monotonic() - changed:.1f} s after the change: {ttls}")
    assert time.monotonic() - changed < 20 - 1  # (still inside the window)
    assert set(ttls) == {5}, ttls
