"""Pools' options come from the policy registry: the configuration lists no policy names,
validates each pool's keys against what its policy declares, and the docs agree."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.backends.health import Health
from dispatcher.backends.sites import SiteSpec
from dispatcher.config import build_config
from dispatcher.errors import ConfigError
from dispatcher.placement.catalog import REGISTRY
from dispatcher.placement.policies import LeastLoad
from dispatcher.snapshot import build_snapshot

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def config(pools: dict[str, Any], **dispatcher: Any) -> Any:
    return build_config(
        {"dispatcher": {"admin_tokens": ["t"], **dispatcher}, "pools": pools}, environ={}
    )


def test_the_built_in_policies_are_registered() -> None:
    assert {"weighted", "least-load", "failover"} <= set(REGISTRY)


def test_a_pool_takes_the_options_its_policy_declares() -> None:
    pools = config({"shop": {"policy": "least-load", "load_max_age": 5}}).pools
    assert pools["shop"].options == {"load_max_age": 5.0}
    assert pools["default"].options == {}


def test_an_unset_option_takes_the_dispatcher_setting_of_the_same_name() -> None:
    pools = config({"shop": {"policy": "least-load"}}, load_max_age=12.5).pools
    assert pools["shop"].options == {"load_max_age": 12.5}
    assert config({"shop": {"policy": "least-load"}}).pools["shop"].options == {
        "load_max_age": 30.0
    }


@pytest.mark.parametrize(
    ("pool", "path", "words"),
    [
        ({"policy": "weighted", "load_max_age": 5}, "pools.p.load_max_age", "of least-load"),
        ({"policy": "least-load", "colour": 1}, "pools.p.colour", "no such key"),
        ({"policy": "least-load", "load_max_age": 0}, "pools.p.load_max_age", "0.1 to 86400"),
        ({"policy": "least-load", "load_max_age": "5"}, "pools.p.load_max_age", "seconds"),
        ({"policy": "least-load", "load_max_age": True}, "pools.p.load_max_age", "seconds"),
        ({"policy": "random"}, "pools.p.policy", "weighted"),
    ],
)
def test_a_bad_pool_key_is_named(pool: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config({"p": pool})
    assert caught.value.path == path
    assert words in caught.value.expected


KNOWN = {"policy", "fallback", "redirect_status", "all_down"} | {
    option for cls in REGISTRY.values() for option in cls.options
}


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=12).filter(lambda key: key not in KNOWN),
        st.integers() | st.text(),
        max_size=4,
    )
)
def test_an_unknown_pool_key_is_refused_by_name(extra: dict[str, Any]) -> None:
    for policy in REGISTRY:
        if not extra:
            assert set(config({"p": {"policy": policy}}).pools["p"].options) == set(
                REGISTRY[policy].options
            )
            continue
        with pytest.raises(ConfigError) as caught:
            config({"p": {"policy": policy, **extra}})
        assert caught.value.path.startswith("pools.p.")
        assert "no such key" in caught.value.expected


def test_a_changed_option_gives_the_pool_a_new_policy_and_an_unchanged_one_keeps_it() -> None:
    sites = [SiteSpec("a", "http://a.example")]

    def snap(max_age: float, previous: Any = None) -> Any:
        return build_snapshot(
            config({"default": {"policy": "least-load", "load_max_age": max_age}}),
            revision=1,
            sites=sites,
            health=lambda name: Health("up", None),
            loads={},
            previous=previous,
        )

    first = snap(5)
    same = snap(5, first)
    other = snap(6, same)
    assert same.default_pool.policy is first.default_pool.policy
    assert other.default_pool.policy is not first.default_pool.policy
    assert isinstance(other.default_pool.policy, LeastLoad)
    assert other.default_pool.policy.max_age == 6.0


def documented() -> dict[str, set[str]]:
    """The docs' table of policies: policy -> the options it lists."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("### Policies and their options", 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[str]] = {}
    for policy, option in re.findall(
        r"^\| `([a-z0-9-]+)` \|\s*(`[a-z0-9_]+`)?\s*\|", section, re.M
    ):
        table.setdefault(policy, set())
        if option:
            table[policy].add(option.strip("`"))
    return table


def test_the_docs_list_every_policy_and_option_of_the_registry() -> None:
    assert documented() == {name: set(cls.options) for name, cls in REGISTRY.items()}
