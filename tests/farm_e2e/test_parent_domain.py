"""Journey 1, for real: sites under one parent domain share the session cookie.

``www.farm.test`` is the dispatcher (127.0.0.1), ``eu.farm.test`` site A (127.0.0.2) and
``us.farm.test`` site B (127.0.0.3); both sites set their session cookie on ``.farm.test``.
A client with a cookie jar, following redirects, fills its cart on A; A is killed (its
server stops, the dispatcher's probes see it down); the client goes back to the dispatcher,
lands on B, and its cart is there. Then the reverse: A comes back, B is killed, and the
client lands on A with everything it added on B. Run both ways round: A is the ASGI site
and B the WSGI one, then the other way.
"""

from __future__ import annotations

import httpx
import pytest

from dispatcher.session import AffinityStamp
from tests.farm_e2e.carts import CartServer, Kind
from tests.farm_e2e.conftest import E2EFarm, StartCart
from tests.farm_e2e.hostmap import FARM_HOSTS, HostMap, NotLoopback, farm_client

pytestmark = pytest.mark.anyio
DOMAIN = ".farm.test"


@pytest.fixture(params=[("asgi", "wsgi"), ("wsgi", "asgi")], ids=["asgi-to-wsgi", "wsgi-to-asgi"])
async def sites(
    request: pytest.FixtureRequest, start_cart: StartCart, farm: E2EFarm
) -> tuple[CartServer, CartServer]:
    """Site A (``eu``, first in failover order) and site B (``us``), registered and up."""
    kind_a: Kind
    kind_b: Kind
    kind_a, kind_b = request.param
    a = await start_cart(kind_a, "eu", FARM_HOSTS["eu.farm.test"], domain=DOMAIN)
    b = await start_cart(kind_b, "us", FARM_HOSTS["us.farm.test"], domain=DOMAIN)
    await farm.register(a, f"http://eu.farm.test:{a.port}")
    await farm.register(b, f"http://us.farm.test:{b.port}")
    return a, b


async def visit(client: httpx.AsyncClient, farm: E2EFarm) -> httpx.Response:
    """Go to the dispatcher's ``/cart`` and follow it to a site; check the hop."""
    response = await client.get(farm.url_as("www.farm.test") + "/cart", follow_redirects=True)
    assert response.status_code == 200, response.text
    [hop] = response.history
    assert hop.status_code == 302
    assert hop.url.host == "www.farm.test"
    return response


async def add(client: httpx.AsyncClient, where: httpx.URL, item: str, form: bool = True) -> object:
    """Add ``item`` to the cart of the site at ``where`` (a form post, or a plain link);
    the cart it redirects to."""
    url = where.join("/cart/add")
    if form:
        response = await client.post(url, data={"item": item}, follow_redirects=True)
    else:
        response = await client.get(url, params={"item": item}, follow_redirects=True)
    assert [r.status_code for r in response.history] == [303]
    assert response.url == where.join("/cart")
    return response.json()


def session_cookie_domains(client: httpx.AsyncClient) -> list[str]:
    return [c.domain for c in client.cookies.jar if c.name == "farm_session"]


@pytest.fixture
def cookie_domain() -> str:
    """The dispatcher scopes its affinity stamp to the parent domain, as the sites do."""
    return DOMAIN


def stamped_site(client: httpx.AsyncClient, secret_keys: list[str]) -> str | None:
    """The site the client's ``farm_site`` stamp (on the parent domain) names."""
    stamps = [c for c in client.cookies.jar if c.name == "farm_site"]
    assert [c.domain for c in stamps] == [DOMAIN]
    return AffinityStamp(secret_keys).site_of(stamps[0].value)


async def test_the_cart_follows_the_client_when_its_site_dies(
    farm: E2EFarm, sites: tuple[CartServer, CartServer], secret_keys: list[str]
) -> None:
    a, b = sites
    async with farm_client() as client:
        landed = await visit(client, farm)
        assert landed.url == f"http://eu.farm.test:{a.port}/cart"
        assert landed.json() == {"site": "eu", "items": []}
        await add(client, landed.url, "apple")
        assert await add(client, landed.url, "pear") == {"site": "eu", "items": ["apple", "pear"]}
        assert session_cookie_domains(client) == [DOMAIN]
        assert stamped_site(client, secret_keys) == "eu"

        await farm.kill(a)
        landed = await visit(client, farm)
        assert landed.url == f"http://us.farm.test:{b.port}/cart"
        assert landed.json() == {"site": "us", "items": ["apple", "pear"]}
        assert stamped_site(client, secret_keys) == "us"  # re-placed and re-stamped

        await farm.revive(a)  # failover would prefer eu; the stamp keeps the client on us
        landed = await visit(client, farm)
        assert landed.url == f"http://us.farm.test:{b.port}/cart"
        assert await add(client, landed.url, "plum", form=False) == {
            "site": "us",
            "items": ["apple", "pear", "plum"],
        }

        await farm.kill(b)
        landed = await visit(client, farm)
        assert landed.url == f"http://eu.farm.test:{a.port}/cart"
        assert landed.json() == {"site": "eu", "items": ["apple", "pear", "plum"]}
        assert session_cookie_domains(client) == [DOMAIN]

    # the sites saw their names, not their addresses: the Host header went through intact
    assert a.seen_hosts == {f"eu.farm.test:{a.port}"}
    assert b.seen_hosts == {f"us.farm.test:{b.port}"}
    # the session moved in the shared cookie alone: no hand-off token was needed
    for site in (a, b):
        assert site.stats["handoff_accepted"] == 0
        assert site.stats["bad_cookie"] == 0


async def test_the_name_map_refuses_anything_but_loopback() -> None:
    hosts = HostMap(FARM_HOSTS)
    assert hosts.resolve("EU.farm.test") == "127.0.0.2"
    assert hosts.resolve("127.0.0.9") == "127.0.0.9"
    assert hosts.resolve("[::1]") == "::1"
    for host in ("example.com", "shop.farm.test", "192.0.2.1", "10.213.0.1", "localhost"):
        with pytest.raises(NotLoopback):
            hosts.resolve(host)
    with pytest.raises(NotLoopback):
        HostMap({"www.farm.test": "192.0.2.1"})
    async with farm_client() as client:  # refused before any socket is opened
        with pytest.raises(NotLoopback):
            await client.get("http://example.com/")
