"""Journey 2, for real: sites on unrelated domains (plain ``http://127.0.0.2:PORT`` and
``http://127.0.0.3:PORT``: no cookie is shared) hand the session over through the dispatcher.

The client fills its cart on A, the first site the dispatcher sends it to. A is drained
(the operator drains it through the admin API, and A's own ``send_elsewhere`` starts
sending clients to the dispatcher). The client's next request on A is answered with a
``307`` to the dispatcher carrying ``farm_handoff``, a token bound to ``dispatcher``; the
dispatcher redeems it and re-issues it (``HandoffToken.retarget``) for the site it chooses,
B, keeping the rest of the URL; B installs the session as its own cookie and ``307``s to
the clean URL, where the cart is. The dispatcher-bound token is single use.
"""

from __future__ import annotations

import httpx
import pytest

from dispatcher.session import HANDOFF_PARAM, HandoffTarget
from tests.farm_e2e.carts import CartServer, Kind
from tests.farm_e2e.conftest import E2EFarm, StartCart
from tests.farm_e2e.hostmap import farm_client

pytestmark = pytest.mark.anyio


@pytest.fixture(params=[("asgi", "wsgi"), ("wsgi", "asgi")], ids=["asgi-to-wsgi", "wsgi-to-asgi"])
async def sites(
    request: pytest.FixtureRequest, start_cart: StartCart, farm: E2EFarm
) -> tuple[CartServer, CartServer]:
    """Site A (``eu``, first in failover order) and site B (``us``) on bare addresses, each
    sending clients to the dispatcher while draining; registered and up."""
    kind_a: Kind
    kind_b: Kind
    kind_a, kind_b = request.param
    a = await start_cart(kind_a, "eu", "127.0.0.2")
    b = await start_cart(kind_b, "us", "127.0.0.3")
    for site in (a, b):
        site.elsewhere = HandoffTarget("dispatcher", farm.url)
        await farm.register(site, site.address)
    return a, b


def handoff_tokens(response: httpx.Response) -> list[str]:
    """The ``farm_handoff`` tokens in ``response``'s ``Location``, if any."""
    location = response.headers.get("location", "")
    return httpx.URL(location).params.get_list(HANDOFF_PARAM)


async def add(client: httpx.AsyncClient, site: CartServer, item: str) -> object:
    response = await client.post(
        f"{site.address}/cart/add", data={"item": item}, follow_redirects=True
    )
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_drained_site_hands_the_cart_over_through_the_dispatcher(
    farm: E2EFarm, sites: tuple[CartServer, CartServer]
) -> None:
    a, b = sites
    async with farm_client() as client:
        landed = await client.get(f"{farm.url}/cart", follow_redirects=True)
        assert landed.url == f"{a.address}/cart"
        await add(client, a, "apple")
        assert await add(client, a, "pear") == {"site": "eu", "items": ["apple", "pear"]}

        a.draining.set()
        drained = await farm.admin.post("/api/v1/sites/eu/drain")
        assert drained.status_code == 200, drained.text
        await farm.wait_site("eu", "drained", True)
        assert (await farm.site("eu"))["eligible"] is False

        moved = await client.get(f"{a.address}/cart?page=2", follow_redirects=True)
        assert len(moved.history) == 3, [(r.status_code, str(r.url)) for r in moved.history]
        from_a, from_dispatcher, from_b = moved.history
        # A: 307 to the same target on the dispatcher, with a token bound to it
        assert from_a.status_code == 307
        to_dispatcher = httpx.URL(from_a.headers["location"])
        assert (to_dispatcher.host, to_dispatcher.port, to_dispatcher.path) == (
            "127.0.0.1",
            farm.port,
            "/cart",
        )
        assert to_dispatcher.params.get("page") == "2"
        [token] = handoff_tokens(from_a)
        # the dispatcher: redeemed, and re-issued for B, the rest of the URL kept
        assert from_dispatcher.url == to_dispatcher
        assert from_dispatcher.is_redirect
        to_b = httpx.URL(from_dispatcher.headers["location"])
        assert (to_b.host, to_b.port, to_b.path) == ("127.0.0.3", b.port, "/cart")
        assert to_b.params.get("page") == "2"
        [fresh] = handoff_tokens(from_dispatcher)
        assert fresh != token
        # B: installs the session, then 307 to the clean URL
        assert from_b.status_code == 307
        assert "set-cookie" in from_b.headers
        assert moved.url == f"{b.address}/cart?page=2"
        assert HANDOFF_PARAM not in str(moved.url)
        assert moved.json() == {"site": "us", "items": ["apple", "pear"]}
        assert b.stats["handoff_accepted"] == 1
        assert a.stats["sent_elsewhere"] == 1

        # the client stays on B, with its cart, as a cookie of B's own
        again = await client.get(f"{b.address}/cart")
        assert again.json() == {"site": "us", "items": ["apple", "pear"]}

    # replaying the dispatcher-bound token installs no cart anywhere
    async with farm_client() as stranger:
        replay = await stranger.get(str(to_dispatcher), follow_redirects=True)
        reissued = [t for r in replay.history for t in handoff_tokens(r) if t != token]
        assert reissued == [], "the dispatcher re-issued a replayed token"
        assert b.stats["handoff_accepted"] == 1
        assert [c.name for c in stranger.cookies.jar if c.name == "farm_session"] == []
        cart = await stranger.get(f"{b.address}/cart")
        assert cart.json() == {"site": "us", "items": []}
