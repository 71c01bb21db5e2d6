"""The PROXY protocol decoder and encoder (dispatcher.proxyproto), without sockets: worked
examples of both versions, every refusal, and properties over arbitrary bytes cut anywhere."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.errors import ProxyHeaderError
from dispatcher.proxyproto import (
    V1_MAX,
    V2_MAX,
    V2_SIGNATURE,
    ProxyHeader,
    decode,
    encode,
    encode_local,
    encode_unknown,
)


def v2(command: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


INET = bytes([192, 0, 2, 1, 198, 51, 100, 7]) + struct.pack("!HH", 56324, 443)


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


# --- version 1 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\nGET / HTTP/1.1\r\n",
            ProxyHeader(1, 45, ("192.0.2.1", 56324), ("198.51.100.7", 443)),
        ),
        (
            b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n",
            ProxyHeader(1, 44, ("2001:db8::1", 1), ("2001:db8::2", 65535)),
        ),
        # an IPv4-mapped client is the IPv4 client it maps
        (
            b"PROXY TCP6 ::ffff:192.0.2.1 ::1 0 80\r\n",
            ProxyHeader(1, 38, ("192.0.2.1", 0), ("::1", 80)),
        ),
        (b"PROXY UNKNOWN\r\n", ProxyHeader(1, 15)),
        (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", ProxyHeader(1, 35)),
    ],
)
def test_v1_headers(data: bytes, expected: ProxyHeader) -> None:
    assert decode(data) == expected


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "signature"),
        (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "signature"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "v1"),  # LF alone
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "v1"),  # two spaces
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "v1"),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "v1"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "v1"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "v1"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "v1"),
        (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "v1"),  # a leading zero
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "v1"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "v1"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "v1"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n", "v1"),  # not ASCII digits
        (b"PROXY TCP4 1.2.3.4\x005.6.7.8 1 2\r\n", "v1"),
        (b"PROXY \r\n", "v1"),
        (b"PROXY " + b"A" * 101, "too long"),  # 107 bytes and no CRLF
    ],
)
def test_v1_refusals(data: bytes, kind: str) -> None:
    with pytest.raises(ProxyHeaderError) as caught:
        decode(data)
    assert caught.value.kind == kind


def test_v1_is_at_most_107_bytes_crlf_included() -> None:
    longest = b"PROXY UNKNOWN " + b"x" * (V1_MAX - 16) + b"\r\n"
    assert len(longest) == V1_MAX
    assert decode(longest) == ProxyHeader(1, V1_MAX)
    with pytest.raises(ProxyHeaderError, match="at most 107"):
        decode(longest[:-2] + b"x\r\n")


def test_v1_bad_bytes_are_refused_before_the_line_ends() -> None:
    """A wrong byte is refused when it arrives, not at the timeout."""
    assert decode(b"PROXY TCP4 1.2.3.4") is None
    assert decode(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r") is None
    with pytest.raises(ProxyHeaderError):
        decode(b"PROXY TCP4 1.2\n")
    with pytest.raises(ProxyHeaderError):
        decode(b"PROXY TCP4 1.2\r.3")


# --- version 2 ------------------------------------------------------------------------------


def test_v2_inet_with_the_bytes_that_follow() -> None:
    data = v2(1, 0x11, INET) + b"GET /"
    assert decode(data) == ProxyHeader(2, 28, ("192.0.2.1", 56324), ("198.51.100.7", 443))


def test_v2_inet6() -> None:
    src = bytes.fromhex("20010db8000000000000000000000001")
    dst = bytes.fromhex("00000000000000000000ffffc0000201")  # ::ffff:192.0.2.1
    header = decode(v2(1, 0x21, src + dst + struct.pack("!HH", 1, 2)))
    assert header == ProxyHeader(2, 52, ("2001:db8::1", 1), ("192.0.2.1", 2))


@pytest.mark.parametrize(
    "data",
    [
        v2(0, 0x11, INET),  # LOCAL: the proxy's own connection
        v2(0, 0x77, b"anything"),  # LOCAL: the family and the block are ignored
        v2(1, 0x00, b""),  # AF_UNSPEC
        v2(1, 0x31, b"\x00" * 216),  # AF_UNIX
        encode_local(),
        encode_unknown(2),
    ],
)
def test_v2_without_a_usable_address_names_no_client(data: bytes) -> None:
    header = decode(data)
    assert header is not None
    assert (header.source, header.destination, header.length) == (None, None, len(data))


def test_v2_ssl_tlv_with_the_client_ssl_flag_means_https() -> None:
    ssl = tlv(0x20, b"\x01" + b"\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3"))
    assert decode(v2(1, 0x11, INET + tlv(0x04, b"") + ssl)) == ProxyHeader(
        2, 16 + 12 + 3 + len(ssl), ("192.0.2.1", 56324), ("198.51.100.7", 443), ssl=True
    )
    plain = tlv(0x20, b"\x00" + b"\x00" * 4)  # the TLV, without the client-SSL bit
    header = decode(v2(1, 0x11, INET + plain))
    assert header is not None
    assert not header.ssl
    local = decode(v2(0, 0x11, INET + ssl))  # LOCAL: nothing of the block is read
    assert local is not None
    assert not local.ssl


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (V2_SIGNATURE + b"\x11\x11\x00\x00", "v2"),  # version 1 in the v2 format
        (V2_SIGNATURE + b"\x22\x11\x00\x00", "v2"),  # command 2
        (V2_SIGNATURE + b"\x21\x41\x00\x00", "v2"),  # family 4
        (V2_SIGNATURE + b"\x21\x13\x00\x00", "v2"),  # transport 3
        (v2(1, 0x11, INET[:11]), "v2"),  # shorter than an IPv4 block
        (v2(1, 0x21, INET), "v2"),  # shorter than an IPv6 block
        (v2(1, 0x11, INET + b"\x20\x00"), "v2"),  # a TLV cut inside its length
        (v2(1, 0x11, INET + b"\x20\x00\x09abc"), "v2"),  # a TLV longer than the header
        (v2(1, 0x11, INET + tlv(0x20, b"\x01")), "v2"),  # an SSL TLV too short
        (V2_SIGNATURE + b"\x21\x11\xff\xff", "too long"),  # 64 KiB announced
        (V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", V2_MAX - 15), "too long"),
    ],
)
def test_v2_refusals(data: bytes, kind: str) -> None:
    with pytest.raises(ProxyHeaderError) as caught:
        decode(data)
    assert caught.value.kind == kind


def test_v2_length_limit_is_the_whole_header() -> None:
    body = INET + tlv(0xE0, b"x" * (V2_MAX - 16 - 12 - 3))
    header = decode(v2(1, 0x11, body))
    assert header is not None
    assert header.length == V2_MAX
    assert decode(v2(1, 0x11, body)[:-1]) is None  # all but the last byte: need more
    with pytest.raises(ProxyHeaderError):
        decode(v2(1, 0x11, body + b"x"))


def test_v2_bad_bytes_are_refused_before_the_header_is_complete() -> None:
    assert decode(V2_SIGNATURE[:5]) is None
    with pytest.raises(ProxyHeaderError):
        decode(V2_SIGNATURE + b"\x13")  # version 1 is known at the 13th byte
    assert decode(V2_SIGNATURE + b"\x21\x11\x00\x0c" + INET[:5]) is None


# --- encoding ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "destination", "v1"),
    [
        (("192.0.2.1", 5), ("10.0.0.1", 80), b"PROXY TCP4 192.0.2.1 10.0.0.1 5 80\r\n"),
        (("2001:db8::1", 5), ("::1", 80), b"PROXY TCP6 2001:db8::1 ::1 5 80\r\n"),
        # a dual-stack listener: IPv4-mapped addresses are written as IPv4
        (
            ("::ffff:192.0.2.1", 5),
            ("::ffff:10.0.0.1", 80),
            b"PROXY TCP4 192.0.2.1 10.0.0.1 5 80\r\n",
        ),
        (("fe80::1%eth0", 5), ("fe80::2%eth0", 80), b"PROXY TCP6 fe80::1 fe80::2 5 80\r\n"),
    ],
)
def test_encoding_both_versions(
    source: tuple[str, int], destination: tuple[str, int], v1: bytes
) -> None:
    assert encode(1, source, destination) == v1
    header = decode(encode(2, source, destination))
    assert header is not None
    assert header.source == decode(v1).source  # type: ignore[union-attr]
    assert header.destination == decode(v1).destination  # type: ignore[union-attr]


def test_mixed_families_are_written_as_ipv6() -> None:
    data = encode(1, ("2001:db8::1", 5), ("10.0.0.1", 80))
    assert data.startswith(b"PROXY TCP6 2001:db8::1 ::ffff:")
    assert decode(data) == ProxyHeader(1, len(data), ("2001:db8::1", 5), ("10.0.0.1", 80))


addresses = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))
ports = st.integers(0, 65535)


@given(addresses, ports, addresses, ports, st.sampled_from([1, 2]), st.binary(max_size=64))
def test_what_is_encoded_decodes_to_the_same_client(
    src: str, sport: int, dst: str, dport: int, version: int, rest: bytes
) -> None:
    data = encode(version, (src, sport), (dst, dport))  # type: ignore[arg-type]
    header = decode(data + rest)
    assert header is not None
    assert header.version == version
    assert header.length == len(data)
    assert header.source is not None
    assert header.source[1] == sport
    assert header.destination is not None
    assert header.destination[1] == dport


# --- any bytes, cut anywhere ---------------------------------------------------------------


def outcome(data: bytes) -> ProxyHeader | str | None:
    try:
        return decode(data)
    except ProxyHeaderError as exc:
        return f"error: {exc.kind}"


def fed(chunks: list[bytes]) -> ProxyHeader | str | None:
    """What a connection decides when the bytes come in these pieces (as ProxiedConnection
    feeds the decoder: everything so far, after each piece)."""
    buffer = b""
    result: ProxyHeader | str | None = None
    for chunk in chunks:
        buffer += chunk
        result = outcome(buffer)
        if result is not None:
            return result
    return result


headerish = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda b: b"PROXY " + b, st.binary(max_size=120)),
    st.builds(lambda b: V2_SIGNATURE + b, st.binary(max_size=300)),
    st.builds(
        lambda s, d, sp, dp, v, tail: encode(v, (s, sp), (d, dp)) + tail,
        addresses,
        addresses,
        ports,
        ports,
        st.sampled_from([1, 2]),
        st.binary(max_size=20),
    ),
)


@given(headerish)
def test_any_bytes_give_a_header_need_more_or_a_typed_error(data: bytes) -> None:
    result = outcome(data)  # (anything else raised fails the test)
    if isinstance(result, ProxyHeader):
        assert 0 < result.length <= len(data)
        assert result.length <= (V1_MAX if result.version == 1 else V2_MAX)
        assert outcome(data[: result.length]) == result  # the header alone says the same
    elif result is None:
        assert len(data) < V2_MAX


@given(headerish, st.lists(st.integers(0, 400), max_size=6))
def test_the_answer_does_not_depend_on_how_the_bytes_were_cut(data: bytes, cuts: list[int]) -> None:
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    whole, pieces = outcome(data), fed(chunks)
    # the same header, or both refused (a prefix is refused for a byte the whole has too)
    assert pieces == whole or (isinstance(whole, str) and isinstance(pieces, str))


@given(headerish)
def test_a_prefix_of_a_header_needs_more_or_is_refused(data: bytes) -> None:
    whole = outcome(data)
    for end in range(len(data)):
        part = outcome(data[:end])
        if isinstance(whole, ProxyHeader) and end < whole.length:
            assert part is None
        if isinstance(part, ProxyHeader):
            assert part == whole
