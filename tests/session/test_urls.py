"""Signed state in URLs: ``farm_state`` and ``farm_handoff`` added and removed exactly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.errors import InvalidValue
from dispatcher.session import HandoffToken, url_state_codec, with_state
from dispatcher.session.urls import handoff_url, query_values, with_param, without_params

KEYS = ["k"]

query_items = st.lists(
    st.text(alphabet="abcxyz=%20+_-.~", min_size=0, max_size=8).filter(lambda s: "&" not in s),
    max_size=6,
)


def test_with_state_adds_a_verifiable_parameter_and_keeps_the_rest() -> None:
    codec = url_state_codec(KEYS)
    url = with_state("https://eu.example.com/a/b?x=1&y=%20#top", {"user": "bob"}, codec)
    head, _, rest = url.partition("farm_state=")
    assert head == "https://eu.example.com/a/b?x=1&y=%20&"
    token, _, fragment = rest.partition("#")
    assert fragment == "top"
    assert codec.loads(token) == {"user": "bob"}


def test_with_state_replaces_an_old_state() -> None:
    codec = url_state_codec(KEYS)
    once = with_state("/p?a=1", {"n": 1}, codec)
    twice = with_state(once, {"n": 2}, codec)
    assert twice.count("farm_state=") == 1
    assert codec.loads(query_values(twice.partition("?")[2], "farm_state")[0]) == {"n": 2}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/p", "/p?k=v"),
        ("/p?", "/p?k=v"),
        ("/p?a=1", "/p?a=1&k=v"),
        ("/p?a=1&", "/p?a=1&k=v"),
        ("/p?k=old&a=1", "/p?a=1&k=v"),
        ("/p#f", "/p?k=v#f"),
        ("https://h/p?k=1&k=2#f?k=3", "https://h/p?k=v#f?k=3"),
    ],
)
def test_with_param(url: str, expected: str) -> None:
    assert with_param(url, "k", "v") == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/p", "/p"),
        ("/p?farm_handoff=t", "/p"),
        ("/p?a=1&farm_handoff=t&b=2", "/p?a=1&b=2"),
        ("/p?a=1&farm_handoff=t&farm_handoff=u", "/p?a=1"),
        ("/p?farm%5Fhandoff=t&a", "/p?a"),
        ("/p?farm_handoff&a=%41", "/p?a=%41"),
        ("/p?farm_handoffx=1", "/p?farm_handoffx=1"),
        ("/p?a=1&farm_handoff=t#frag", "/p?a=1#frag"),
        ("/p?a=1&&b", "/p?a=1&&b"),
    ],
)
def test_without_params(url: str, expected: str) -> None:
    assert without_params(url, "farm_handoff") == expected


@settings(max_examples=200, deadline=None)
@given(query_items, st.integers(min_value=0, max_value=6))
def test_removing_a_param_keeps_every_other_item_byte_for_byte(
    items: list[str], position: int
) -> None:
    others = [item for item in items if not item.startswith("farm_")]
    with_token = [*others[:position], "farm_handoff=TOKEN", *others[position:]]
    cleaned = without_params("/p?" + "&".join(with_token), "farm_handoff")
    assert cleaned == ("/p?" + "&".join(others) if others else "/p")


def test_query_values_decodes() -> None:
    assert query_values("a=1&b=x+y&a=%32&c", "a") == ["1", "2"]
    assert query_values("a=1&b=x+y", "b") == ["x y"]
    assert query_values("", "a") == []


def test_handoff_url_targets_the_site_and_keeps_the_request() -> None:
    tokens = HandoffToken(KEYS)
    url = handoff_url("https://us.example.net/", "/cart?id=7", {"u": 1}, tokens=tokens, target="us")
    assert url.startswith("https://us.example.net/cart?id=7&farm_handoff=")
    token = query_values(url.partition("?")[2], "farm_handoff")[0]
    assert tokens.decode(token, target="us").session == {"u": 1}


def test_handoff_url_replaces_a_stale_token_and_needs_an_absolute_path() -> None:
    tokens = HandoffToken(KEYS)
    url = handoff_url("http://h", "/?farm_handoff=old", {}, tokens=tokens, target="us")
    assert url.count("farm_handoff=") == 1
    assert "old" not in url
    with pytest.raises(InvalidValue):
        handoff_url("http://h", "cart", {}, tokens=tokens, target="us")
