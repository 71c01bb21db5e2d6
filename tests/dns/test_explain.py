"""explain for the DNS front: the pure function, ``farm-dispatcher explain-dns``, and the
admin API's ``{"dns": ...}`` variant on a running dispatcher."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest

from dispatcher.dns.explain import explain_dns
from dispatcher.errors import InvalidValue
from tests.conftest import LoopbackSite, RunningDispatcher, farm_toml, run_cli
from tests.dns.helpers import WWW, Source, dns_toml, make_config


def test_what_a_resolver_is_told_and_why() -> None:
    config = make_config()
    drained = [replace(s, drained=True) if s.name == "asia" else s for s in config.sites]
    source = Source(config, health=lambda name: "down" if name == "us" else "up")
    snapshot = source.rebuild(drained)
    explained = explain_dns(snapshot, config, "WWW.farm.example", "A", subnet="198.51.100.7/24")
    assert explained.rcode == "NOERROR"
    assert explained.answer == ("WWW.farm.example. 20 IN A 192.0.2.1",)
    verdicts = {s.site: s.verdict for s in explained.sites}
    assert verdicts == {"eu": "answered (placed 1)", "us": "down: not placed", "asia": "drained"}
    text = explained.format()
    assert "client: subnet 198.51.100.7/24 (EDNS client subnet)" in text
    assert "pool default (policy weighted)" in text
    assert "ttl 20: the pool is stable" in text
    assert explained.as_dict()["dns"]["rcode"] == "NOERROR"


def test_explaining_leaves_the_rotation_alone() -> None:
    config = make_config()
    snapshot = Source(config).snapshot
    before = copy.deepcopy(snapshot.pools["default"].policy.__dict__)
    for _ in range(5):
        explain_dns(snapshot, config, WWW)
    assert snapshot.pools["default"].policy.__dict__ == before


def test_names_outside_unknown_names_and_fixed_ones() -> None:
    config = make_config()
    snapshot = Source(config).snapshot
    refused = explain_dns(snapshot, config, "www.example.com")
    assert refused.rcode == "REFUSED"
    assert "not in any zone (farm.example.)" in refused.format()
    missing = explain_dns(snapshot, config, "nope.farm.example", "AAAA")
    assert missing.rcode == "NXDOMAIN"
    assert "no such name" in missing.format()
    assert missing.authority[0].startswith("farm.example. 60 IN SOA")
    fixed = explain_dns(snapshot, config, "ns1.farm.example", "AAAA")
    assert fixed.answer == ("ns1.farm.example. 20 IN AAAA 2001:db8::53",)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "a" * 64 + ".example."}, "name"),
        ({"name": WWW, "rdtype": "NOSUCHTYPE"}, "type"),
        ({"name": WWW, "resolver": "nowhere"}, "resolver"),
        ({"name": WWW, "subnet": "198.51.100.0/33"}, "subnet"),
    ],
)
def test_bad_questions_are_named(args: dict[str, str], field: str) -> None:
    config = make_config()
    snapshot = Source(config).snapshot
    name = args.pop("name")
    with pytest.raises(InvalidValue) as caught:
        explain_dns(snapshot, config, name, **args)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "farm.toml"
    config.write_text(
        f"""
[dispatcher]
database_url = "sqlite:///{tmp_path / "none.db"}"
admin_tokens = ["change-me"]

[[sites]]
name = "eu"
base_url = "http://192.0.2.10"
"""
        + dns_toml(listen="127.0.0.1:5353"),
        encoding="utf-8",
    )
    done = run_cli(
        "explain-dns", "-c", str(config), "www.farm.example", "A", "--subnet", "198.51.100.0/24"
    )
    assert done.returncode == 0, done.stderr
    assert "www.farm.example. 20 IN A 192.0.2.10" in done.stdout
    assert "all assumed healthy" in done.stdout
    bad = run_cli("explain-dns", "-c", str(config), "www.farm.example", "NOPE")
    assert bad.returncode == 2
    assert "type: a record type" in bad.stderr


@pytest.mark.anyio
async def test_the_admin_api(sites: dict[str, LoopbackSite], tmp_path: Path) -> None:
    config_file = tmp_path / "farm.toml"
    text = farm_toml({"eu": (sites["eu"], 1)}, database_url=f"sqlite:///{tmp_path / 'farm.db'}")
    config_file.write_text(text + dns_toml())
    running = RunningDispatcher(await RunningDispatcher.start_runner(config_file))
    try:
        body = {"dns": {"name": "www.farm.example.", "type": "A", "subnet": "198.51.100.0/24"}}
        response = await running.admin.post("/api/v1/explain", json=body)
        assert response.status_code == 200, response.text
        explained = response.json()["dns"]
        assert explained["answer"] == ["www.farm.example. 20 IN A 127.0.0.1"]
        assert explained["sites"][0]["verdict"] == "answered (placed 1)"
        for bad, field in (
            ({"dns": {"name": "www.farm.example.", "type": "NOPE"}}, "dns.type"),
            ({"dns": {"name": "www.farm.example.", "resolver": "x"}}, "dns.resolver"),
            ({"dns": {"type": "A"}}, "dns.name"),
            ({"dns": {"name": "x.", "extra": 1}}, "dns.extra"),
            ({"dns": {"name": "x."}, "url": "http://x/"}, "url"),
            ({"dns": "www"}, "dns"),
        ):
            response = await running.admin.post("/api/v1/explain", json=bad)
            assert response.status_code == 422, response.text
            assert response.json()["error"]["field"] == field
        assert running.runner.dns_ports  # the front runs in this process too
    finally:
        await running.close()
