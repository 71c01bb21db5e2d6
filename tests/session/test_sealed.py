"""The hot-path forms of the codec (seal/unseal) and of the affinity stamp (check): they must
give exactly the verdicts of the full forms (dumps/load, decode), for any input."""

from __future__ import annotations

import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.session import AffinityStamp, BadToken, StateCodec
from dispatcher.session.codec import _hmac_sha1, _pads, encode_payload
from dispatcher.session.tokens import AFFINITY_SALT

from .support import FakeClock

KEYS = ["old-key", "new-key"]
NOW = 1_700_000_000


def full_verdict(codec: StateCodec, token: str) -> tuple[object, int] | None:
    try:
        signed = codec.load(token)
    except BadToken:
        return None
    return signed.value, signed.issued_at


def fast_verdict(codec: StateCodec, token: str) -> tuple[object, int] | None:
    sealed = codec.unseal(token)
    if sealed is None:
        return None
    payload, issued_at = sealed
    try:
        value = codec.load(token).value  # a valid signature: the payload decodes like load's
    except BadToken:
        return None
    assert encode_payload(value) == payload or payload.startswith(".")
    return value, issued_at


@pytest.mark.parametrize("key", [b"", b"k", b"x" * 64, b"y" * 65, b"z" * 300])
def test_the_precomputed_hmac_is_hmac_sha1(key: bytes) -> None:
    for data in (b"", b"a", b"ImV1Ig.awb33g", bytes(range(256))):
        assert _hmac_sha1(_pads(key), data) == hmac.digest(key, data, "sha1")


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(), st.lists, max_leaves=8))
def test_seal_makes_the_token_dumps_makes(value: object) -> None:
    clock = FakeClock(NOW)
    codec = StateCodec(KEYS, salt="t", compress_over=None, clock=clock)
    assert codec.seal(encode_payload(value), NOW) == codec.dumps(value)
    assert codec.unseal(codec.dumps(value)) == (encode_payload(value), NOW)


def mutations(token: str) -> list[str]:
    """Every single-character deletion and a few substitutions, truncations and splices."""
    out = [token[:i] + token[i + 1 :] for i in range(len(token))]
    out += [token[:i] + c + token[i + 1 :] for i in range(len(token)) for c in "A-._="]
    out += [token[:i] for i in range(len(token))]
    out += [token + ".", "." + token, token.replace(".", ".."), token + "=", token.upper()]
    return out


@pytest.mark.parametrize("compress", [None, 4])
def test_unseal_agrees_with_load_on_every_mutation(compress: int | None) -> None:
    clock = FakeClock(NOW)
    codec = StateCodec(KEYS, salt="t", compress_over=compress, max_age=60, clock=clock)
    token = codec.dumps({"cart": ["a", "b", "c", "d", "e", "f"]})
    for candidate in [token, *mutations(token)]:
        assert (codec.unseal(candidate) is None) == (full_verdict(codec, candidate) is None), (
            candidate
        )


@given(st.text(max_size=80))
def test_unseal_never_raises_and_agrees_with_load(token: str) -> None:
    codec = StateCodec(KEYS, salt="t", max_age=60, clock=FakeClock(NOW))
    assert (codec.unseal(token) is None) == (full_verdict(codec, token) is None)


def test_unseal_checks_age_as_load_does() -> None:
    clock = FakeClock(NOW)
    codec = StateCodec(KEYS, salt="t", max_age=60, clock=clock)
    token = codec.dumps("eu")
    clock.now = NOW + 60
    assert codec.unseal(token) is not None
    assert codec.unseal(token, max_age=59) is None
    clock.now = NOW + 61
    assert codec.unseal(token) is None
    clock.now = NOW - 5
    assert codec.unseal(token) is not None  # within the clock-skew allowance
    clock.now = NOW - 6
    assert codec.unseal(token) is None


def test_unseal_verifies_every_key_and_only_those() -> None:
    old = StateCodec(["old-key"], salt="t", clock=FakeClock(NOW))
    both = StateCodec(KEYS, salt="t", clock=FakeClock(NOW))
    other = StateCodec(["other"], salt="t", clock=FakeClock(NOW))
    other_salt = StateCodec(KEYS, salt="u", clock=FakeClock(NOW))
    assert both.unseal(old.dumps("eu")) is not None
    assert both.unseal(other.dumps("eu")) is None
    assert both.unseal(other_salt.dumps("eu")) is None


def test_check_gives_what_decode_gives() -> None:
    clock = FakeClock(NOW)
    stamps = AffinityStamp(KEYS, lifetime=600, clock=clock)
    token = stamps.encode("eu")
    stamp = stamps.decode(token)
    assert stamps.check(token) == ("eu", NOW) == (stamp.site, stamp.issued_at)
    not_a_site = stamps.codec.dumps(["eu"])
    empty = stamps.codec.dumps("")
    for bad in (not_a_site, empty, None, "", *(m for m in mutations(token) if m != token)):
        assert stamps.check(bad) is None, bad
    clock.now = NOW + 601
    assert stamps.check(token) is None
    with pytest.raises(BadToken):
        stamps.decode(token)


@given(st.text(max_size=60))
def test_check_never_raises(token: str) -> None:
    assert AffinityStamp(KEYS).check(token) is None


def test_the_stamp_cookie_is_built_once_per_shape() -> None:
    stamps = AffinityStamp(KEYS, lifetime=600, clock=FakeClock(NOW))
    cookie = stamps.cookie("eu", secure=True, domain=".example.com")
    name_value, *attributes = cookie.split("; ")
    assert name_value == f"farm_site={stamps.encode('eu')}"
    assert attributes == [
        "Path=/",
        "Max-Age=600",
        "Domain=.example.com",
        "HttpOnly",
        "SameSite=Lax",
        "Secure",
    ]
    assert stamps.cookie("eu", secure=False).endswith("SameSite=Lax")
    assert stamps.codec.salt == AFFINITY_SALT
