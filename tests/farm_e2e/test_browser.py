"""Journey 1 once in a real browser: headless Chromium keeps the cart across sites.

Same set-up as ``test_parent_domain.py`` (A = the ASGI site on ``eu.farm.test``, B = the
WSGI site on ``us.farm.test``, the dispatcher on ``www.farm.test``), but the client is
Debian's Chromium: it goes through the dispatcher's redirect, fills the shop page's form,
follows the ``303``, and its own cookie jar carries the ``.farm.test`` session cookie from
A to B when A is killed, and back to A when B is.
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import skip_or_fail
from tests.farm_e2e.browser import CHROMIUM, Browser, Page
from tests.farm_e2e.conftest import E2EFarm, StartCart
from tests.farm_e2e.hostmap import FARM_HOSTS

pytestmark = pytest.mark.anyio
DOMAIN = ".farm.test"


@pytest.fixture
def chromium() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        skip_or_fail(f"{CHROMIUM} is not installed (Debian package chromium)")
    return CHROMIUM


async def add(page: Page, shop: str, item: str) -> None:
    """Open the shop page at ``shop``, type ``item`` into the form and submit it."""
    assert await page.navigate(shop) == shop
    assert await page.submit("form", {"item": item}) == shop + "cart"


async def test_a_real_browser_keeps_its_cart_across_sites(
    chromium: str, start_cart: StartCart, farm: E2EFarm
) -> None:
    a = await start_cart("asgi", "eu", FARM_HOSTS["eu.farm.test"], domain=DOMAIN)
    b = await start_cart("wsgi", "us", FARM_HOSTS["us.farm.test"], domain=DOMAIN)
    shop_a, shop_b = f"http://eu.farm.test:{a.port}/", f"http://us.farm.test:{b.port}/"
    await farm.register(a, shop_a.rstrip("/"))
    await farm.register(b, shop_b.rstrip("/"))
    home = farm.url_as("www.farm.test") + "/"

    async with Browser(FARM_HOSTS, chromium) as browser:
        page = await browser.new_page()
        assert await page.navigate(home) == shop_a
        assert "site eu" in await page.text()
        await add(page, shop_a, "apple")
        await add(page, shop_a, "pear")
        assert await page.fetch_json("/cart") == {"site": "eu", "items": ["apple", "pear"]}
        sessions = [c for c in await browser.cookies() if c["name"] == "farm_session"]
        assert [(c["domain"], c["httpOnly"]) for c in sessions] == [(DOMAIN, True)]

        await farm.kill(a)
        assert await page.navigate(home) == shop_b
        assert (await page.text()).split("\n")[:3] == ["site us", "apple", "pear"]
        await add(page, shop_b, "plum")
        assert await page.fetch_json("/cart") == {"site": "us", "items": ["apple", "pear", "plum"]}

        await farm.revive(a)
        await farm.kill(b)
        assert await page.navigate(home) == shop_a
        assert await page.fetch_json("/cart") == {"site": "eu", "items": ["apple", "pear", "plum"]}

    assert a.stats["bad_cookie"] == b.stats["bad_cookie"] == 0
