"""The signed-token codec: round trips, every kind of tampering, expiry, rotation, size."""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from itsdangerous import URLSafeTimedSerializer

from dispatcher.errors import DispatcherError, InvalidValue
from dispatcher.session import (
    MAX_COOKIE_BYTES,
    BadToken,
    StateCodec,
    TokenExpired,
    TokenTooLarge,
    UnserializableState,
    key_list,
    secret_keys_from_env,
)

from .support import FakeClock

KEYS = ["old-key", "new-key"]
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(st.characters(exclude_categories=["Cs"])), inner, max_size=5)
    ),
    max_leaves=20,
)


def codec(keys: Any = KEYS, clock: FakeClock | None = None, **options: Any) -> StateCodec:
    return StateCodec(keys, salt="test.purpose", clock=clock or FakeClock(), **options)


# --- round trips ------------------------------------------------------------------------


@SETTINGS
@given(json_values)
def test_any_json_value_round_trips(value: Any) -> None:
    c = codec()
    assert c.loads(c.dumps(value)) == value


def test_token_is_url_and_cookie_safe_and_compact() -> None:
    token = codec().dumps({"user": "alice", "cart": [1, 2]})
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    assert token.count(".") == 2
    assert json.loads(_b64(token.split(".")[0])) == {"user": "alice", "cart": [1, 2]}


def test_large_payloads_are_compressed_and_small_ones_are_not() -> None:
    c = codec(compress_over=64)
    big, small = {"text": "a" * 500}, {"text": "a" * 10}
    assert c.dumps(big).startswith(".")
    assert len(c.dumps(big)) < 100
    assert not c.dumps(small).startswith(".")
    assert c.loads(c.dumps(big)) == big
    assert not codec(compress_over=None).dumps(big).startswith(".")


def test_itsdangerous_reads_our_tokens() -> None:
    token = codec(clock=FakeClock(time.time())).dumps({"a": "é" * 300})
    reader = URLSafeTimedSerializer(KEYS, salt="test.purpose")
    assert reader.loads(token, max_age=60) == {"a": "é" * 300}


def test_load_returns_the_issue_time() -> None:
    clock = FakeClock(1_700_000_000.7)
    signed = codec(clock=clock).load(codec(clock=clock).dumps([1]))
    assert (signed.value, signed.issued_at) == ([1], 1_700_000_000)


def test_unserializable_state_is_a_typed_error() -> None:
    with pytest.raises(UnserializableState):
        codec().dumps({"when": object()})
    with pytest.raises(UnserializableState):
        codec().dumps({"x": float("nan")})


# --- tampering --------------------------------------------------------------------------


def _flip(token: str, index: int) -> str:
    char = token[index]
    return token[:index] + ("A" if char != "A" else "B") + token[index + 1 :]


@pytest.mark.parametrize("part", [0, 1, 2], ids=["payload", "timestamp", "signature"])
def test_a_flipped_character_anywhere_is_rejected(part: int) -> None:
    c = codec()
    token = c.dumps({"user": "alice", "admin": False})
    start = sum(len(p) + 1 for p in token.split(".")[:part])
    for offset in range(len(token.split(".")[part])):
        with pytest.raises(BadToken):
            c.loads(_flip(token, start + offset))


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1],
        lambda t: t[: len(t) // 2],
        lambda t: t.rpartition(".")[0],
        lambda t: t.partition(".")[2],
        lambda t: t + "A",
        lambda t: t.replace(".", "", 1),
        lambda t: t + "." + t.rpartition(".")[2],
        lambda t: "",
        lambda t: ".",
        lambda t: "..",
        lambda t: "garbage",
        lambda t: "a.b.c",
        lambda t: "é." + t,
        lambda t: t.replace("-", "+").replace("_", "/") + "+/",
    ],
    ids=[
        "last-char",
        "half",
        "no-signature",
        "no-payload",
        "extra-char",
        "merged-parts",
        "extra-part",
        "empty",
        "dot",
        "dots",
        "garbage",
        "three-parts",
        "non-ascii",
        "std-base64",
    ],
)
def test_truncated_or_malformed_tokens_are_rejected(mangle: Any) -> None:
    c = codec()
    token = c.dumps({"user": "alice"})
    with pytest.raises(BadToken) as caught:
        c.loads(mangle(token))
    assert caught.value.purpose == "test.purpose"
    assert caught.value.reason


def test_forged_payload_with_the_old_signature_is_rejected() -> None:
    c = codec()
    _, stamp, sig = c.dumps({"admin": False}).split(".")
    forged = _b64e(json.dumps({"admin": True}).encode())
    with pytest.raises(BadToken, match="signature does not match"):
        c.loads(f"{forged}.{stamp}.{sig}")


def test_wrong_salt_is_rejected() -> None:
    token = StateCodec(KEYS, salt="one.purpose").dumps({"a": 1})
    with pytest.raises(BadToken, match=r"bad other\.purpose token"):
        StateCodec(KEYS, salt="other.purpose").loads(token)


def test_signed_but_undecodable_payloads_are_typed_errors() -> None:
    c = codec()
    signer = c._signer
    for payload in (b"!!!!", b".AAAA", _b64e(b"{not json").encode(), _b64e(b"\xff").encode()):
        stamp = c.dumps(1).split(".")[1].encode()
        token = signer.sign(payload + b"." + stamp).decode()
        with pytest.raises(BadToken, match="undecodable payload"):
            c.loads(token)


@SETTINGS
@given(st.text(max_size=200))
def test_arbitrary_strings_raise_only_bad_token(text: str) -> None:
    with contextlib.suppress(BadToken):  # anything else fails the test
        codec().loads(text)


@SETTINGS
@given(st.integers(min_value=0, max_value=200), st.text(alphabet="AZaz09-_.", max_size=3))
def test_arbitrary_edits_of_a_valid_token_raise_only_bad_token(index: int, text: str) -> None:
    c = codec()
    token = c.dumps({"user": "alice", "n": 1})
    edited = token[:index] + text + token[index + len(text) :]
    if edited == token:
        return
    with pytest.raises(BadToken):
        c.loads(edited)


# --- expiry -----------------------------------------------------------------------------


def test_expiry_with_an_injected_clock() -> None:
    clock = FakeClock(1_700_000_000)
    c = codec(clock=clock, max_age=60)
    token = c.dumps("x")
    clock.advance(60)
    assert c.loads(token) == "x"
    clock.advance(1)
    with pytest.raises(TokenExpired) as caught:
        c.loads(token)
    assert caught.value.age == 61
    assert caught.value.max_age == 60
    assert caught.value.date_signed.timestamp() == 1_700_000_000
    assert isinstance(caught.value, BadToken)


def test_per_call_max_age_overrides_the_codec_default() -> None:
    clock = FakeClock()
    c = codec(clock=clock)
    token = c.dumps("x")
    clock.advance(10)
    assert c.loads(token) == "x"
    with pytest.raises(TokenExpired):
        c.loads(token, max_age=5)


def test_tokens_from_the_future_are_tolerated_within_the_leeway_only() -> None:
    clock = FakeClock()
    c = codec(clock=clock, max_age=60, leeway=5)
    future = codec(clock=FakeClock(clock.now + 5)).dumps("x")
    far_future = codec(clock=FakeClock(clock.now + 6)).dumps("x")
    assert c.loads(future) == "x"
    with pytest.raises(BadToken, match="in the future"):
        c.loads(far_future)


# --- key rotation -----------------------------------------------------------------------


def test_newest_key_is_the_last_one_and_signs() -> None:
    token = codec(["old-key", "new-key"]).dumps("x")
    assert codec(["new-key"]).loads(token) == "x"
    with pytest.raises(BadToken):
        codec(["old-key"]).loads(token)


def test_old_key_verifies_until_it_is_removed() -> None:
    signed_with_old = codec(["old-key"]).dumps("x")
    assert codec(["old-key", "new-key"]).loads(signed_with_old) == "x"
    assert codec(["older", "old-key", "new-key"]).loads(signed_with_old) == "x"
    with pytest.raises(BadToken):
        codec(["new-key"]).loads(signed_with_old)


def test_a_single_key_is_one_key_not_a_list_of_characters() -> None:
    assert key_list("abc") == (b"abc",)
    assert key_list(b"abc") == (b"abc",)
    assert codec("abc").loads(codec(["abc"]).dumps(1)) == 1


@pytest.mark.parametrize("keys", [[], "", [""], ["ok", ""], [b""], [1]])
def test_missing_or_empty_keys_are_refused_when_built(keys: Any) -> None:
    with pytest.raises(InvalidValue) as caught:
        codec(keys)
    assert caught.value.field.startswith("secret_keys")


def test_keys_from_the_environment_newest_last() -> None:
    env = {"FARM_SECRET_KEYS": " old , new ,"}
    assert secret_keys_from_env(env) == ("old", "new")
    with pytest.raises(InvalidValue, match="FARM_SECRET_KEYS"):
        secret_keys_from_env({"FARM_SECRET_KEYS": " , "})
    with pytest.raises(InvalidValue, match="FARM_SECRET_KEYS"):
        secret_keys_from_env({})


def test_keys_never_appear_in_errors_or_reprs() -> None:
    c = codec(["super-secret-1", "super-secret-2"])
    with pytest.raises(BadToken) as caught:
        c.loads("x.y.z")
    assert "super-secret" not in str(caught.value)


# --- size -------------------------------------------------------------------------------


def test_a_token_over_the_limit_is_refused_at_write_time() -> None:
    c = codec()
    with pytest.raises(TokenTooLarge) as caught:
        c.dumps({"blob": secrets.token_urlsafe(4000)})
    assert caught.value.limit == MAX_COOKIE_BYTES == 4093
    assert caught.value.size > 4093
    assert "4093" in str(caught.value)
    assert isinstance(caught.value, DispatcherError)


def test_the_largest_token_under_the_limit_is_written_whole() -> None:
    c = codec(max_size=200, compress_over=None)
    fits = next(c.dumps("a" * n) for n in range(200, 0, -1) if _fits(c, "a" * n))
    assert len(fits) <= 200
    assert c.loads(fits).startswith("a")


def test_compression_that_brings_a_token_under_the_limit_counts() -> None:
    value = {"text": "abc" * 3000}
    assert len(codec().dumps(value)) < MAX_COOKIE_BYTES
    with pytest.raises(TokenTooLarge):
        codec(compress_over=None).dumps(value)


def test_no_limit_when_max_size_is_none() -> None:
    assert len(codec(max_size=None).dumps(secrets.token_urlsafe(6000))) > 6000


def _fits(c: StateCodec, value: str) -> bool:
    try:
        c.dumps(value)
    except TokenTooLarge:
        return False
    return True


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
