"""The heartbeat wire protocol and the receiver's drop rules, without sockets."""

from __future__ import annotations

import hashlib
import hmac
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farmnode.agents.context import KEY_PATTERN
from farmnode.cluster.protocol import (
    HEADER,
    MAC_SIZE,
    MAX_MESSAGE,
    MIN_MESSAGE,
    STATES,
    Heartbeat,
    HeartbeatError,
    Receiver,
    decode,
    encode,
    new_incarnation,
)
from farmnode.errors import FarmnodeError

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
CLUSTER = "eu-front"
U64 = st.integers(min_value=0, max_value=2**64 - 1)
NAME = st.text(min_size=1, max_size=20).filter(lambda s: 1 <= len(s.encode()) <= 63)
VALUE = st.text(max_size=30).filter(lambda s: len(s.encode("utf-8", "replace")) <= 120)


def hb(node: str = "n1", incarnation: int = 1, sequence: int = 1, **kw: Any) -> Heartbeat:
    base = Heartbeat(CLUSTER, node, incarnation, sequence, 123, "active", 150, ("front",))
    return base._replace(**kw)


@st.composite
def heartbeats(draw: st.DrawFn) -> Heartbeat:
    return Heartbeat(
        cluster=draw(NAME),
        node=draw(NAME),
        incarnation=draw(U64),
        sequence=draw(U64),
        sent=draw(U64),
        state=draw(st.sampled_from(STATES)),
        priority=draw(st.integers(0, 255)),
        groups=tuple(draw(st.lists(NAME, max_size=12, unique=True))),
        quorum=draw(st.booleans()),
        role=draw(st.sampled_from(["member", "witness"])),
        failed=tuple(draw(st.lists(NAME, max_size=4, unique=True))),
        sees=tuple(draw(st.lists(NAME, max_size=6, unique=True))),
        attributes=tuple(
            draw(
                st.lists(
                    st.tuples(st.from_regex(KEY_PATTERN, fullmatch=True), VALUE),
                    max_size=3,
                    unique_by=lambda pair: pair[0],
                )
            )
        ),
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- encode / decode ------------------------------------------------------------------------


@given(heartbeats())
def test_round_trip(message: Heartbeat) -> None:
    data = encode(message, KEY)
    assert MIN_MESSAGE <= len(data) <= MAX_MESSAGE
    assert decode(data, KEY, message.cluster) == message


@given(heartbeats(), st.data())
def test_any_single_bit_flip_is_rejected(message: Heartbeat, data: st.DataObject) -> None:
    wire = bytearray(encode(message, KEY))
    bit = data.draw(st.integers(0, len(wire) * 8 - 1))
    wire[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(HeartbeatError):
        decode(bytes(wire), KEY, message.cluster)


@given(st.binary(max_size=2000))
def test_decode_raises_only_the_typed_error_on_garbage(data: bytes) -> None:
    with pytest.raises(HeartbeatError) as caught:
        decode(data, KEY, CLUSTER)
    assert caught.value.reason in {"short", "magic", "version", "length", "cluster", "mac"}


@given(heartbeats(), st.binary(max_size=64), st.integers(0, 2000))
def test_decode_of_spliced_messages_raises_only_the_typed_error(
    message: Heartbeat, junk: bytes, cut: int
) -> None:
    wire = encode(message, KEY)
    for data in (wire[:cut] + junk, junk + wire, wire + junk, wire[:cut]):
        try:
            decoded = decode(data, KEY, message.cluster)
        except HeartbeatError:
            continue
        assert decoded == message  # only the intact message itself decodes


def _resign(body: bytes | bytearray, key: bytes = KEY) -> bytes:
    """A message with a valid MAC over ``body``: tests the checks behind the MAC."""
    body = bytearray(body)
    struct.pack_into("!H", body, 4, len(body) + MAC_SIZE)
    return bytes(body) + hmac.digest(key, bytes(body), hashlib.sha256)


def test_error_reasons_name_what_was_wrong() -> None:
    wire = encode(hb(), KEY)
    cases = {
        "short": wire[: MIN_MESSAGE - 1],
        "magic": b"XYZ" + wire[3:],
        "version": wire[:3] + b"\x03" + wire[4:],
        "length": wire + b"\x00",
        "mac": wire[:-1] + bytes((wire[-1] ^ 1,)),
        "cluster": encode(hb(cluster="us-front"), KEY),
    }
    for reason, data in cases.items():
        with pytest.raises(HeartbeatError) as caught:
            decode(data, KEY, CLUSTER)
        assert caught.value.reason == reason, (reason, caught.value)
        assert isinstance(caught.value, FarmnodeError)
        assert caught.value.detail in str(caught.value)


def test_foreign_cluster_is_reported_even_with_a_foreign_key() -> None:
    with pytest.raises(HeartbeatError, match="us-front") as caught:
        decode(encode(hb(cluster="us-front"), OTHER_KEY), KEY, CLUSTER)
    assert caught.value.reason == "cluster"


def test_fields_behind_a_valid_mac_are_still_checked() -> None:
    body = encode(hb(version=1), KEY)[:-MAC_SIZE]
    unknown_state = bytearray(body)
    unknown_state[7] = len(STATES)
    unknown_flag = bytearray(body)
    unknown_flag[6] = 0x80
    reserved = bytearray(body)
    reserved[9] = 1
    assert body.endswith(b"\x01\x05front\x00\x00")  # groups, then empty failed and sees
    repeated = body[:-9] + b"\x02\x05front\x05front\x00\x00"
    invalid_utf8 = body[:-7] + b"\xff\xfe\xfd\xfc\xfb\x00\x00"
    missing_sees = body[:-1]
    too_many = body[:-1] + b"\x41" + b"\x01x" * 65
    overrun = body[:-2] + b"\x00\x05ab"
    malformed = (unknown_state, unknown_flag, reserved, repeated, invalid_utf8, missing_sees)
    for data in (*malformed, too_many, overrun, body + b"x"):
        with pytest.raises(HeartbeatError) as caught:
            decode(_resign(data), KEY, CLUSTER)
        assert caught.value.reason == "malformed"


def test_layout_is_the_documented_one() -> None:
    message = Heartbeat(
        CLUSTER, "n1", 7, 9, 11, "standby", 150, ("front", "db"), quorum=True,
        failed=("mail",), sees=("n2",), version=1,
    )  # fmt: skip
    wire = encode(message, KEY)
    assert wire[:3] == b"FHB"
    assert HEADER.unpack_from(wire) == (b"FHB", 1, len(wire), 1, 2, 150, 0, 7, 9, 11)
    assert wire[34:43] == b"\x08eu-front"
    assert wire[43:46] == b"\x02n1"
    assert wire[46:56] == b"\x02\x05front\x02db"
    assert wire[56:62] == b"\x01\x04mail"
    assert wire[62:66] == b"\x01\x02n2"
    assert len(wire) == 66 + MAC_SIZE
    witness = encode(message._replace(role="witness", quorum=False), KEY)
    assert witness[6] == 0x02
    v2 = encode(message._replace(version=2, attributes=(("pg.role", "primary"),)), KEY)
    assert v2[3] == 2
    assert v2[62:66] == b"\x01\x02n2"
    assert v2[66:83] == b"\x01\x07pg.role\x07primary"
    assert len(v2) == 83 + MAC_SIZE
    assert wire[-MAC_SIZE:] == hmac.digest(KEY, wire[:-MAC_SIZE], hashlib.sha256)


def test_the_example_in_the_docs_is_what_encode_writes() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "heartbeat.md").read_text(encoding="utf-8")
    block = doc[doc.index("    46 48 42 01") :].split("    ..")[0]
    documented = bytes.fromhex(" ".join(ln.strip().split("   ")[0] for ln in block.splitlines()))
    message = Heartbeat(
        CLUSTER, "n1", 7, 9, 11, "standby", 150, ("front", "db"), quorum=True, version=1
    )  # fmt: skip
    assert encode(message, KEY)[:-MAC_SIZE] == documented
    assert (
        encode(message._replace(version=2), KEY)[:-MAC_SIZE]
        == documented[:3] + bytes([2, 0, 91]) + documented[6:] + b"\x00"
    )


def test_encode_refuses_what_the_wire_cannot_carry() -> None:
    too_many = tuple(f"g{i}" for i in range(65))
    long_names = tuple(f"{i:02d}" + "x" * 61 for i in range(20))
    cases = {
        "invalid": [
            hb(priority=256),
            hb(priority=-1),
            hb(sequence=2**64),
            hb(incarnation=-1),
            hb(node=""),
            hb(node="x" * 64),
            hb(node="\ud800"),
            hb(cluster="é" * 32),  # 64 bytes of UTF-8
            hb(groups=("a", "a")),
            hb(groups=too_many),
            hb(failed=("a", "a")),
            hb(sees=("",)),
            hb(role="leader"),
            hb(state="master"),
            hb(version=3),
            hb(version=1, attributes=(("pg.role", "primary"),)),
            hb(attributes=(("pg.role", "a"), ("pg.role", "b"))),
            hb(attributes=tuple((f"k{i}", "") for i in range(9))),
            hb(attributes=(("k" * 33, "v"),)),
            hb(attributes=(("", "v"),)),
            hb(attributes=(("pg.lsn", "x" * 121),)),
            hb(attributes=(("pg.lsn", "\ud800"),)),
        ],
        "too_large": [hb(groups=long_names)],
    }
    for reason, messages in cases.items():
        for message in messages:
            with pytest.raises(HeartbeatError) as caught:
                encode(message, KEY)
            assert caught.value.reason == reason, message


def test_version_1_is_still_understood_and_has_no_attributes() -> None:
    """A node of the previous release (version 1, no attributes) stays a member: a cluster
    is upgraded one node at a time."""
    old = hb(version=1)
    assert old.attributes == ()
    assert decode(encode(old, KEY), KEY, CLUSTER) == old
    new = hb(attributes=(("pg.role", "primary"), ("pg.lsn", "83886080")))
    assert new.version == 2
    assert decode(encode(new, KEY), KEY, CLUSTER).attributes == new.attributes


def test_attribute_section_garbage_is_malformed() -> None:
    """Bad attribute bytes, correctly signed, are ``malformed``: count, key, value length."""
    base = encode(hb(), KEY)[:-MAC_SIZE]  # ends with the attribute count 0
    bodies = {
        "count over the limit": base[:-1] + b"\x09",
        "key missing": base[:-1] + b"\x01",
        "value missing": base[:-1] + b"\x01\x01k",
        "value past the end": base[:-1] + b"\x01\x01k\x05ab",
        "value not UTF-8": base[:-1] + b"\x01\x01k\x01\xff",
        "key twice": base[:-1] + b"\x02\x01k\x00\x01k\x00",
    }
    for what, body in bodies.items():
        with pytest.raises(HeartbeatError) as caught:
            decode(_resign(body), KEY, CLUSTER)
        assert caught.value.reason == "malformed", what


def test_keys_rotate_sign_with_newest_verify_any() -> None:
    old, new = b"old-key-0123456789", b"new-key-0123456789"
    signed_old = encode(hb(), old)
    signed_new = encode(hb(), [old, new])
    assert decode(signed_new, new, CLUSTER) == hb()
    assert decode(signed_old, [old, new], CLUSTER) == hb()
    with pytest.raises(HeartbeatError, match="MAC"):
        decode(signed_new, old, CLUSTER)
    for bad in (b"", [], [b""]):
        with pytest.raises(HeartbeatError) as caught:
            encode(hb(), bad)
        assert caught.value.reason == "key"


def test_new_incarnation_grows() -> None:
    first = new_incarnation()
    assert 0 < first <= new_incarnation() < 2**64


# --- receiver -------------------------------------------------------------------------------


def receiver(forget_after: float | None = None) -> tuple[Receiver, Clock]:
    clock = Clock()
    return Receiver(KEY, CLUSTER, "me", forget_after=forget_after, clock=clock), clock


def test_fresh_duplicate_and_replay_across_transports() -> None:
    rx, clock = receiver()
    one, two = encode(hb(sequence=1), KEY), encode(hb(sequence=2), KEY)
    assert rx.accept(one, "udp") == hb(sequence=1)
    clock.now = 100.01
    assert rx.accept(one, "serial") is None  # the same heartbeat over the second path
    assert rx.last_heard == {("n1", "udp"): 100.0, ("n1", "serial"): 100.0}
    clock.now = 102.0
    assert rx.accept(one, "serial") is None  # again on the same path: a replay
    assert rx.accept(one, "udp") is None
    assert rx.last_heard[("n1", "serial")] == 100.0
    assert rx.accept(two, "serial") == hb(sequence=2)
    assert rx.accept(one, "multicast") is None  # older than the newest: a replay
    assert rx.heard("n1") == {"udp": 100.0, "serial": 102.0}
    assert rx.stats == {"accepted": 2, "duplicate": 1, "replay": 3}
    assert rx.latest["n1"] == hb(sequence=2)


def test_a_replayed_last_heartbeat_cannot_keep_a_dead_node_alive() -> None:
    rx, clock = receiver()
    last = encode(hb(sequence=5), KEY)
    rx.accept(last, "udp")
    for step in range(1, 20):  # the node died; someone replays its last message
        clock.now = 100.0 + step
        for transport in ("udp", "serial", "multicast"):
            rx.accept(last, transport)
    # the other paths count as heard once, as of the real message: the node dies on time
    assert rx.heard("n1") == {"udp": 100.0, "serial": 100.0, "multicast": 100.0}
    assert rx.stats["replay"] == 19 * 3 - 2


def test_restart_and_stale_incarnation() -> None:
    rx, clock = receiver()
    assert rx.accept(encode(hb(incarnation=10, sequence=50), KEY), "udp") is not None
    rx.accept(encode(hb(incarnation=10, sequence=50), KEY), "serial")
    clock.now = 105.0
    restarted = hb(incarnation=11, sequence=1)
    assert rx.accept(encode(restarted, KEY), "udp") == restarted
    assert rx.restarts == {"n1": 1}
    assert rx.last_heard == {("n1", "udp"): 105.0}  # the old run's transports are forgotten
    assert rx.accept(encode(hb(incarnation=10, sequence=51), KEY), "udp") is None
    assert rx.accept(encode(hb(incarnation=11, sequence=2), KEY), "serial") is not None
    assert rx.stats == {"accepted": 3, "duplicate": 1, "stale_incarnation": 1}


def test_older_incarnation_replaces_a_silent_one_only_with_forget_after() -> None:
    rx, clock = receiver(forget_after=1.0)
    rx.accept(encode(hb(incarnation=10, sequence=1), KEY), "udp")
    clock.now = 100.5
    assert rx.accept(encode(hb(incarnation=9, sequence=1), KEY), "udp") is None
    clock.now = 101.0  # incarnation 10 silent for forget_after: a clock-stepped restart
    assert rx.accept(encode(hb(incarnation=9, sequence=1), KEY), "udp") is not None
    assert rx.stats == {"accepted": 2, "stale_incarnation": 1}


def test_a_retired_incarnation_cannot_be_replayed_after_a_swap() -> None:
    rx, clock = receiver(forget_after=1.0)
    rx.accept(encode(hb(incarnation=10, sequence=7), KEY), "udp")
    clock.now = 102.0
    assert rx.accept(encode(hb(incarnation=9, sequence=1), KEY), "udp") is not None
    # incarnation 10 is newer, but its recorded messages up to 7 were already seen
    assert rx.accept(encode(hb(incarnation=10, sequence=7), KEY), "udp") is None
    assert rx.stats["replay"] == 1
    assert rx.accept(encode(hb(incarnation=10, sequence=8), KEY), "udp") is not None
    assert rx.restarts == {"n1": 2}


def test_receive_hands_out_every_proof_of_life() -> None:
    rx, _ = receiver()
    one = encode(hb(sequence=1), KEY)
    assert rx.receive(one, "udp") == ("accepted", hb(sequence=1))
    assert rx.receive(one, "serial") == ("duplicate", hb(sequence=1))
    assert rx.receive(one, "serial") == ("replay", None)
    assert rx.receive(b"junk", "serial") == ("short", None)
    assert rx.receive(encode(hb(node="me"), KEY), "udp") == ("self", None)


def test_drops_are_counted_by_reason_and_change_nothing() -> None:
    rx, _ = receiver()
    good = encode(hb(sequence=3), KEY)
    forged = encode(hb(sequence=4), OTHER_KEY)
    foreign = encode(hb(cluster="us-front", sequence=5), KEY)
    own = encode(hb(node="me", sequence=6), KEY)
    for data in (b"", b"garbage" * 10, forged, foreign, own, good[:-1]):
        assert rx.accept(data, "udp") is None
    assert rx.last_heard == {}
    assert rx.latest == {}
    assert rx.stats == {"short": 2, "mac": 1, "cluster": 1, "self": 1, "length": 1}
    assert rx.accept(good, "udp") is not None


def test_forget_drops_a_node() -> None:
    rx, _ = receiver()
    rx.accept(encode(hb(), KEY), "udp")
    rx.forget("n1")
    assert (rx.last_heard, rx.latest, rx.heard("n1")) == ({}, {}, {})
    assert rx.accept(encode(hb(), KEY), "udp") is not None  # known afresh


MESSAGES = st.builds(
    lambda node, inc, seq: encode(hb(node=node, incarnation=inc, sequence=seq), KEY),
    st.sampled_from(["n1", "n2", "me"]),
    st.integers(0, 3),
    st.integers(0, 5),
)


@given(
    st.lists(
        st.tuples(
            st.one_of(MESSAGES, st.binary(max_size=120)),
            st.sampled_from(["udp", "serial", "multicast"]),
            st.floats(0, 2),
        ),
        max_size=40,
    )
)
def test_receiver_never_raises_and_counts_every_datagram(
    stream: list[tuple[bytes, str, float]],
) -> None:
    rx, clock = receiver(forget_after=1.0)
    accepted: dict[tuple[str, int], int] = {}
    last: dict[str, Heartbeat] = {}
    accepted_at: dict[str, float] = {}
    results = []
    for data, transport, step in stream:
        clock.now += step
        result = rx.accept(data, transport)
        results.append(result)
        if result is not None:
            key = (result.node, result.incarnation)
            assert result.sequence > accepted.get(key, -1)  # never the same message twice
            accepted[key] = result.sequence
            last[result.node] = result
            accepted_at[result.node] = clock.now
    assert sum(rx.stats.values()) == len(stream)
    assert rx.stats["accepted"] == len([r for r in results if r is not None])
    assert rx.latest == last
    assert "me" not in last
    for node, at in accepted_at.items():  # nothing but a fresh heartbeat moves liveness
        assert max(rx.heard(node).values()) == at
