"""Rewrite rules inside the running dispatcher: config, hot path, admin API, explain, CLI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.redirect import RuleSyntaxError
from tests.conftest import LoopbackSite, RunningDispatcher, dispatcher_table, run_cli

pytestmark = pytest.mark.anyio

RULES = r"""
RewriteEngine on
# the two regional pools, picked by path prefix
RewriteRule ^/eu/(.*)$ ${site:europe|https://sorry.example.com/eu}/$1 [R=302,L]
RewriteRule ^/us/(.*)$ ${site:america}/$1 [R=307,L]
RewriteRule ^/admin - [F]
RewriteRule ^/old-shop - [G]
RewriteRule ^/legacy/(.*)$ /new/$1?from=legacy [QSA]
RewriteRule ^/track$ - [CO=seen:1:.example.com:60]
"""


def config_text(sites: dict[str, LoopbackSite], database_url: str, rules: str | None) -> str:
    rules_line = f'rules = "{rules}"' if rules else ""
    return f"""{dispatcher_table(database_url, rules_line)}
[pools.default]
[pools.europe]
[pools.america]
policy = "failover"

[[sites]]
name = "home"
base_url = "{sites["asia"].url}"
check = {{ url = "/health", expect = "OK", interval = 0.3, timeout = 0.3, rise = 1, fall = 1 }}

[[sites]]
name = "eu"
base_url = "{sites["eu"].url}"
pool = "europe"
check = {{ url = "/health", expect = "OK", interval = 0.3, timeout = 0.3, rise = 1, fall = 1 }}

[[sites]]
name = "us"
base_url = "{sites["us"].url}"
pool = "america"
check = {{ url = "/health", expect = "OK", interval = 0.3, timeout = 0.3, rise = 1, fall = 1 }}
"""


Start = Callable[..., Awaitable[RunningDispatcher]]


@pytest.fixture
async def start(
    sites: dict[str, LoopbackSite], database_url: str, tmp_path: Path
) -> AsyncIterator[Start]:
    running: list[RunningDispatcher] = []

    async def go(rules: str | None = RULES) -> RunningDispatcher:
        if rules is not None:
            (tmp_path / "rules.conf").write_text(rules)
        config_file = tmp_path / "farm.toml"
        config_file.write_text(
            config_text(sites, database_url, "rules.conf" if rules is not None else None)
        )
        running.append(RunningDispatcher(await RunningDispatcher.start_runner(config_file)))
        return running[-1]

    yield go
    for r in running:
        await r.close()


async def test_site_map_sends_each_prefix_to_its_pool(
    start: Start, sites: dict[str, LoopbackSite]
) -> None:
    farm = await start()
    eu = await farm.public.get("/eu/shop?item=1")
    assert (eu.status_code, eu.headers["location"]) == (302, f"{sites['eu'].url}/shop?item=1")
    us = await farm.public.post("/us/cart", content=b"x")
    assert (us.status_code, us.headers["location"]) == (307, f"{sites['us'].url}/cart")
    status = (await farm.admin.get("/api/v1/status")).json()
    redirects = {s["name"]: s["redirects"] for s in status["sites"]}
    assert redirects == {"home": 0, "eu": 1, "us": 1}
    assert (await farm.public.get("/legacy/page")).status_code == 302  # (the default pool's)
    assert await redirect_reasons(farm) == {
        ("home", "placed"): 1,
        ("eu", "rules"): 1,
        ("us", "rules"): 1,
    }


async def redirect_reasons(farm: RunningDispatcher) -> dict[tuple[str, str], float]:
    """``webfarm_redirects_total`` by site and reason, the samples that are not zero."""
    text = (await farm.admin.get("/metrics")).text
    return {
        (s.labels["site"], s.labels["reason"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "webfarm_redirects"
        for s in family.samples
        if s.name == "webfarm_redirects_total" and s.value
    }


async def test_unmatched_and_rewritten_requests_fall_through_to_the_default_pool(
    start: Start, sites: dict[str, LoopbackSite]
) -> None:
    farm = await start()
    plain = await farm.public.get("/about?x=%2F")
    assert plain.headers["location"] == f"{sites['asia'].url}/about?x=%2F"
    legacy = await farm.public.get("/legacy/page?a=1")
    assert legacy.status_code == 302
    assert legacy.headers["location"] == f"{sites['asia'].url}/new/page?from=legacy&a=1"


async def test_forbidden_gone_and_cookies(start: Start) -> None:
    farm = await start()
    assert (await farm.public.get("/admin/x")).status_code == 403
    assert (await farm.public.get("/old-shop")).status_code == 410
    tracked = await farm.public.get("/track")
    assert tracked.status_code == 302
    cookie = tracked.headers["set-cookie"]
    assert cookie.startswith("seen=1; path=/; domain=.example.com; expires=")


async def test_site_map_follows_health(start: Start, sites: dict[str, LoopbackSite]) -> None:
    farm = await start()
    sites["eu"].app.health_status = 503
    sites["us"].app.health_status = 503

    async def europe_down() -> bool:
        response = await farm.public.get("/eu/x")
        return response.headers["location"] == "https://sorry.example.com/eu/x"

    async def america_down() -> bool:
        # no default for america: the rule does not apply, so the default pool answers
        response = await farm.public.get("/us/cart")
        return response.headers["location"] == f"{sites['asia'].url}/us/cart"

    # (each site is probed at its own point of the interval: the two go down one by one)
    for _ in range(100):
        if await europe_down() and await america_down():
            break
        await asyncio.sleep(0.05)
    assert await europe_down()
    assert await america_down()


async def test_rules_over_the_admin_api(start: Start, sites: dict[str, LoopbackSite]) -> None:
    farm = await start()
    got = await farm.admin.get("/api/v1/rules")
    assert got.text == RULES
    assert got.headers["x-rules-origin"].endswith("rules.conf")

    bad = RULES + "RewriteRule ^/x /y [L]\nRewriteCond %{NOPE} x\nRewriteRule a b\n"
    response = await farm.admin.put("/api/v1/rules", content=bad)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_rules"
    assert error["field"] == "line 11"
    assert ":11:" in error["message"]
    assert (await farm.public.get("/admin")).status_code == 403  # the old rules still run
    assert (await farm.admin.get("/api/v1/rules")).text == RULES

    new = "RewriteEngine on\nRewriteRule ^/admin /dashboard [R=301,L]\n"
    response = await farm.admin.put("/api/v1/rules", content=new)
    assert response.status_code == 200
    assert response.json() == {"rules": 1, "enabled": True}
    moved = await farm.public.get("/admin")
    assert (moved.status_code, moved.headers["location"]) == (
        301,
        f"http://127.0.0.1:{farm.runner.public.port}/dashboard",  # type: ignore[union-attr]
    )
    assert (await farm.admin.get("/api/v1/rules")).headers["x-rules-origin"] == "admin API"

    # persisted: a restart keeps the API's rules, because the file did not change
    await farm.close()
    again = await start(rules=RULES)
    assert (await again.admin.get("/api/v1/rules")).text == new
    # an edited file wins at the next start
    await again.close()
    edited = RULES + "RewriteRule ^/help /faq [R,L]\n"
    third = await start(rules=edited)
    assert (await third.admin.get("/api/v1/rules")).text == edited


async def test_a_bad_rule_file_stops_the_start(start: Start) -> None:
    with pytest.raises(RuleSyntaxError) as info:
        await start(rules="RewriteEngine on\nRewriteRule ^/x /y [P]\n")
    assert info.value.line == 2
    assert info.value.filename.endswith("rules.conf")


async def test_explain_over_the_admin_api(start: Start, sites: dict[str, LoopbackSite]) -> None:
    farm = await start()

    async def redirects() -> dict[str, int]:
        status = (await farm.admin.get("/api/v1/status")).json()
        return {s["name"]: s["redirects"] for s in status["sites"]}

    before = await redirects()
    response = await farm.admin.post(
        "/api/v1/explain",
        json={
            "url": "http://www.example.com/eu/basket?id=7",
            "remote_addr": "203.0.113.9",
            "headers": {"User-Agent": "curl/8"},
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["outcome"]["action"] == "redirect"
    assert body["answer"]["location"] == f"{sites['eu'].url}/basket?id=7"
    assert "line 4: RewriteRule ^/eu/(.*)$" in body["text"]
    assert "from 203.0.113.9" in body["text"]
    assert "dispatcher answers: 302 Location: " in body["text"]
    assert body["client"] == {"remote_addr": "203.0.113.9", "subnet": None}
    (placement,) = body["placements"]
    assert placement["pool"] == "europe"
    assert placement["sites"] == ["eu"]
    assert placement["located"]["source"] == "none"
    assert {c["site"]: c["verdict"] for c in placement["considered"]} == {"eu": "taken"}
    located = await farm.admin.post(
        "/api/v1/explain", json={"url": "http://www.example.com/", "subnet": "198.51.100.0/24"}
    )
    assert located.status_code == 200, located.text
    assert located.json()["client"]["subnet"] == "198.51.100.0/24"
    assert "client subnet 198.51.100.0/24" in located.json()["text"]
    assert await redirects() == before  # explaining sends nobody anywhere

    for payload, field in (
        ({"url": "http://bücher.example/"}, "url"),
        ({"url": "ftp://x"}, "url"),
        ({}, "url"),
        ({"url": "http://x/", "headers": {"a": 1}}, "headers"),
        ({"url": "http://x/", "colour": 1}, "colour"),
        ({"url": "http://x/", "subnet": "198.51.100.0/33"}, "subnet"),
        ({"url": "http://x/", "subnet": 24}, "subnet"),
    ):
        bad = await farm.admin.post("/api/v1/explain", json=payload)
        assert bad.status_code == 422, payload
        assert bad.json()["error"]["field"] == field


def test_explain_command(tmp_path: Path) -> None:
    (tmp_path / "rules.conf").write_text(
        "RewriteEngine on\n"
        "RewriteCond %{HTTP:X-Region} ^us$ [NC]\n"
        "RewriteRule ^/(.*)$ ${site:america}/$1 [R,L]\n"
    )
    config = tmp_path / "farm.toml"
    config.write_text(
        '[dispatcher]\nlisten = "127.0.0.1:0"\nadmin_listen = "127.0.0.1:0"\n'
        'admin_tokens = ["t"]\nrules = "rules.conf"\n\n[pools.america]\n\n'
        '[[sites]]\nname = "home"\nbase_url = "http://home.example"\n\n'
        '[[sites]]\nname = "us"\nbase_url = "http://us.example"\npool = "america"\n'
    )
    result = run_cli(
        "explain",
        "-c",
        str(config),
        "--remote-addr",
        "198.51.100.7",
        "-H",
        "X-Region: US",
        "http://www.example.com/cart?x=1",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "all assumed healthy" in out
    assert "from 198.51.100.7" in out
    assert "'US'" in out
    assert "dispatcher answers: 302 Location: http://us.example/cart?x=1" in out

    assert "pool america:\n  us  taken" in out

    plain = run_cli(
        "explain", "-c", str(config), "--subnet", "203.0.113.0/24", "http://www.example.com/cart"
    )
    assert "dispatcher answers: 302 Location: http://home.example/cart" in plain.stdout
    assert "client 127.0.0.1 (client subnet 203.0.113.0/24): not located" in plain.stdout
    assert "pool default:\n  home  taken" in plain.stdout
    bad = run_cli("explain", "-c", str(config), "--subnet", "nope", "http://www.example.com/")
    assert bad.returncode == 2
    assert "subnet" in bad.stderr

    (tmp_path / "rules.conf").write_text("RewriteEngine on\nRewriteRule ^/(.*$ /x\n")
    broken = run_cli("check-config", "-c", str(config))
    assert broken.returncode == 2
    assert "rules.conf:2:" in broken.stderr
