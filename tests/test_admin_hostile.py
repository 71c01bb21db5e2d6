"""The admin API against hostile bodies, for real on SQLite and PostgreSQL: never a 500.

Each case is answered with the JSON error shape and a 4xx naming the field (or the
problem), and changes nothing; the values at the edge of what the store holds are
accepted on both backends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LoopbackSite, RunningDispatcher, farm_toml

pytestmark = pytest.mark.anyio

RULES = "RewriteEngine on\nRewriteRule ^/old$ /new [R=301]\n"


@pytest.fixture
async def farm(
    sites: dict[str, LoopbackSite], database_url: str, tmp_path: Path
) -> AsyncIterator[RunningDispatcher]:
    config_file = tmp_path / "farm.toml"
    config_file.write_text(farm_toml({"eu": (sites["eu"], 1)}, database_url=database_url))
    running = RunningDispatcher(await RunningDispatcher.start_runner(config_file))
    try:
        assert (await running.admin.put("/api/v1/rules", content=RULES)).status_code == 200
        yield running
    finally:
        await running.close()


def _site(**fields: Any) -> dict[str, Any]:
    return {"name": "x", "base_url": "http://127.0.0.9:9", **fields}


# (method, path, raw body or JSON, status, error code, field)
HOSTILE: list[tuple[str, str, Any, int, str, str | None]] = [
    ("POST", "/api/v1/sites", b"[" * 100_000, 400, "invalid_json", None),
    ("POST", "/api/v1/sites", b'{"a":' * 50_000, 400, "invalid_json", None),
    ("POST", "/api/v1/sites", b"[" * 33 + b"]" * 33, 400, "invalid_json", None),
    ("PUT", "/api/v1/sites/eu/load", b'{"load": 0.5, "connections": ' + b"9" * 5000 + b"}",
     400, "invalid_json", None),
    ("PUT", "/api/v1/sites/eu/load", b'{"load": 0.' + b"1" * 5000 + b"}", 400, "invalid_json",
     None),
    ("PUT", "/api/v1/sites/eu/load", b'{"load": NaN}', 422, "invalid", "load"),
    ("PUT", "/api/v1/sites/eu/load", b'{"load": Infinity}', 422, "invalid", "load"),
    ("PUT", "/api/v1/sites/eu/load", b'{"load": 0.5, "connections": -Infinity}', 422,
     "invalid", "connections"),
    ("PUT", "/api/v1/sites/eu/load", {"load": 0.5, "connections": 2**64}, 422, "invalid",
     "connections"),
    ("PUT", "/api/v1/sites/eu/load", {"load": 0.5, "connections": 2**31}, 422, "invalid",
     "connections"),
    ("PUT", "/api/v1/sites/eu/load", {"load": 0.5, "connections": 1.5}, 422, "invalid",
     "connections"),
    ("PATCH", "/api/v1/sites/eu", b'{"check": {"interval": 1e999}}', 422, "invalid",
     "check.interval"),
    ("PATCH", "/api/v1/sites/eu", b'{"check": {"rise": NaN}}', 422, "invalid", "check.rise"),
    ("PATCH", "/api/v1/sites/eu", {"check": {"interval": 1e-9}}, 422, "invalid",
     "check.interval"),
    ("PATCH", "/api/v1/sites/eu", {"check": {"timeout": 0.001}}, 422, "invalid",
     "check.timeout"),
    ("PATCH", "/api/v1/sites/eu", {"weight": 2**70}, 422, "invalid", "weight"),
    ("POST", "/api/v1/sites", _site(base_url="http://127.0.0.9:9/" + "p" * 2030), 422, "invalid",
     "base_url"),
    ("POST", "/api/v1/sites", _site(base_url="http://127.0.0.9:9/\x00"), 422, "invalid",
     "base_url"),
    ("POST", "/api/v1/sites", _site(name="x\x00"), 422, "invalid", "name"),
    ("POST", "/api/v1/sites", _site(pool=""), 422, "invalid", "pool"),
    ("POST", "/api/v1/sites", _site(pool="nope"), 422, "invalid", "pool"),
    ("POST", "/api/v1/sites", _site(check={"expect": "OK\x00"}), 422, "invalid",
     "check.expect"),
    ("POST", "/api/v1/sites", _site(check={"url": "/" + "h" * 2048}), 422, "invalid",
     "check.url"),
    ("POST", "/api/v1/sites", b"\xff\xfe{", 400, "invalid_json", None),
    ("POST", "/api/v1/sites", b" " * (1024 * 1024 + 1), 413, "too_large", None),
    ("PUT", "/api/v1/rules", b"", 400, "invalid_rules", None),
    ("PUT", "/api/v1/rules", b"  \n\t\n", 400, "invalid_rules", None),
    ("PUT", "/api/v1/rules", b"# only a comment\n", 400, "invalid_rules", None),
    ("PUT", "/api/v1/rules", b"RewriteEngine on\n# a comment \x00 with a NUL\n", 400,
     "invalid_rules", "line 2"),
    ("PUT", "/api/v1/rules", b"RewriteEngine on\nRewriteMap m txt:/nonexistent/map\n", 400,
     "invalid_rules", "line 2"),
    ("POST", "/api/v1/explain", {"url": ""}, 422, "invalid", "url"),
    ("POST", "/api/v1/explain", {"url": "http://x/", "remote_addr": "x"}, 422, "invalid",
     "remote_addr"),
    ("POST", "/api/v1/explain", {"url": "http://x/", "method": "G T"}, 422, "invalid",
     "method"),
    ("POST", "/api/v1/explain", {"url": "http://x/", "headers": {"host": "h\u0100st"}}, 422,
     "invalid", "headers"),
]  # fmt: skip


async def test_hostile_bodies_get_a_json_4xx_and_change_nothing(farm: RunningDispatcher) -> None:
    before = (await farm.admin.get("/api/v1/sites")).json()
    rules = (await farm.admin.get("/api/v1/rules")).text
    for method, path, body, status, code, field in HOSTILE:
        case = f"{method} {path} {body!r:.80}"
        raw = body if isinstance(body, bytes) else None
        response = await farm.admin.request(
            method, path, content=raw, json=None if raw is not None else body
        )
        assert response.status_code == status, f"{case}: {response.text[:300]}"
        error = response.json()["error"]
        assert (error["code"], error["field"]) == (code, field), f"{case}: {error}"
        assert error["message"], case
        assert len(error["message"]) < 400, case  # a huge value is not echoed back whole
    after = (await farm.admin.get("/api/v1/sites")).json()
    for site in before["sites"] + after["sites"]:
        site.pop("last_probe")
    assert after == before
    assert (await farm.admin.get("/api/v1/rules")).text == rules


async def test_values_at_the_edge_of_the_store_are_kept(farm: RunningDispatcher) -> None:
    load = await farm.admin.put("/api/v1/sites/eu/load", json={"load": 1, "connections": 2**31 - 1})
    assert load.status_code == 200, load.text
    assert load.json()["connections"] == 2**31 - 1
    whole = await farm.admin.put(
        "/api/v1/sites/eu/load", content=b'{"load": 0.5, "connections": 191358.0}'
    )
    assert whole.status_code == 200, whole.text
    assert whole.json()["connections"] == 191358  # JSON Schema's integer: 191358.0 is one
    long_url = "http://127.0.0.9:9/" + "p" * (2048 - len("http://127.0.0.9:9/"))
    created = await farm.admin.post(
        "/api/v1/sites", json=_site(base_url=long_url, weight=2.0, check={"rise": 3.0})
    )
    assert created.status_code == 201, created.text
    assert (created.json()["base_url"], created.json()["weight"]) == (long_url, 2)
    assert created.json()["check"]["rise"] == 3
    off = await farm.admin.put("/api/v1/rules", content="RewriteEngine off\n")
    assert off.json() == {"rules": 0, "enabled": False}
