"""Property tests for the packet codec: hostile bytes only ever raise PacketError, build and
decode agree, and any sequence of rewrites keeps the checksums equal to a full sum."""

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, IPOption_Router_Alert
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1Q, Ether
from scapy.packet import Raw

from tcpcopy.capture import packet as P
from tcpcopy.capture.packet import (PacketError, build, decode, decode_frame,
                                    ipv4_checksum_ok, tcp_checksum_ok)

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

LINKTYPES = [P.LINKTYPE_ETHERNET, P.LINKTYPE_RAW, P.LINKTYPE_LINUX_SLL, P.LINKTYPE_LINUX_SLL2,
             12, 14, P.LINKTYPE_IPV4, P.LINKTYPE_IPV6, 0, 9999]

TS_ODD = [("NOP", None), ("Timestamp", (1, 2)), ("NOP", None)]
SACK_TS = [("NOP", None), ("NOP", None), ("Timestamp", (3, 4)), ("NOP", None), ("NOP", None),
           ("SAck", (5, 6, 7, 8))]
SYN_OPTS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (9, 0)), ("NOP", None),
            ("WScale", 7)]

SEEDS = [
    (P.LINKTYPE_RAW, IP(src="198.18.0.1", dst="198.18.0.2") / TCP(options=TS_ODD) / Raw(b"ab")),
    (P.LINKTYPE_RAW, IP(options=[IPOption_Router_Alert()]) / TCP(options=SYN_OPTS, flags="S")),
    (P.LINKTYPE_RAW, IPv6(src="2001:2::1", dst="2001:2::2") / IPv6ExtHdrHopByHop()
     / IPv6ExtHdrDestOpt() / TCP(options=SACK_TS) / Raw(b"xyz")),
    (P.LINKTYPE_ETHERNET, Ether() / Dot1Q() / IP() / TCP(options=SACK_TS) / Raw(b"q" * 9)),
    (P.LINKTYPE_LINUX_SLL, CookedLinux() / IP() / TCP(flags="FA")),
    (P.LINKTYPE_LINUX_SLL2, CookedLinuxV2(proto=0x86DD) / IPv6() / TCP(options=TS_ODD)),
]
SEED_FRAMES = [(linktype, bytes(frame)) for linktype, frame in SEEDS]


def decode_all_ways(data):
    """Feed ``data`` to every entry point; anything but PacketError fails the test."""
    for headers_only in (False, True):
        try:
            check_invariants(decode(data, headers_only=headers_only), headers_only)
        except PacketError:
            pass
        for linktype in LINKTYPES:
            try:
                check_invariants(decode_frame(data, linktype, headers_only=headers_only),
                                 headers_only)
            except PacketError:
                pass


def check_invariants(pkt, headers_only):
    assert pkt.version in (4, 6)
    assert pkt.tcp_off + 20 <= pkt.payload_off <= len(pkt.buf)
    assert pkt.payload_len >= 0
    if headers_only:
        assert len(pkt.buf) <= pkt.payload_off + pkt.payload_len
    else:
        assert len(pkt.buf) == pkt.payload_off + pkt.payload_len
        assert len(pkt.payload) == pkt.payload_len
    again = decode(bytes(pkt.buf), headers_only=headers_only)
    assert (again.seq, again.ack, again.flags, again.tsval, again.sack_blocks) == (
        pkt.seq, pkt.ack, pkt.flags, pkt.tsval, pkt.sack_blocks)


@FUZZ
@given(st.binary(max_size=120))
def test_arbitrary_bytes_raise_only_packet_error(data):
    decode_all_ways(data)


@st.composite
def mutated_frames(draw):
    linktype, frame = draw(st.sampled_from(SEED_FRAMES))
    frame = bytearray(frame)
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(frame) - 1))
        frame[at] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(frame)))
    return linktype, bytes(frame[:cut] if draw(st.booleans()) else frame)


@FUZZ
@given(mutated_frames())
def test_mutated_packets_raise_only_packet_error(case):
    linktype, frame = case
    decode_all_ways(frame)
    for headers_only in (False, True):
        try:
            decode_frame(frame, linktype, headers_only=headers_only)
        except PacketError:
            pass
    route_like_the_decoder(frame, linktype)


def route_like_the_decoder(frame, linktype):
    """intercept's route_head accepts what the decoder accepts (headers only) and reads the
    same; where the decoder refuses, it raises PacketError or reads a frame whose only fault
    is in the TCP options, which it does not read."""
    try:
        routed = P.route_head(frame, linktype, 16)
    except PacketError:
        routed = None
    try:
        pkt = decode_frame(frame, linktype, headers_only=True)
    except PacketError:
        return
    assert routed == ((pkt.dst, pkt.dport, pkt.src, pkt.sport), bytes(pkt.buf[:pkt.payload_off + 16]),
                      pkt.flags, pkt.payload_len)


# ---------------------------------------------------------------- build/decode round trip

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
addresses = st.one_of(
    st.tuples(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4)),
    st.tuples(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16)))


@st.composite
def option_blocks(draw):
    """Options in any order and alignment, with what decode should report for them."""
    parts, expect = [], {"mss": None, "wscale": None, "sack_permitted": False,
                         "ts": None, "sack_blocks": ()}
    for kind in draw(st.lists(st.sampled_from(["nop", "mss", "ws", "sackok", "ts", "sack"]),
                              max_size=5, unique=True)):
        if kind == "nop":
            parts.append(b"\x01" * draw(st.integers(1, 3)))
        elif kind == "mss":
            expect["mss"] = draw(u16)
            parts.append(struct.pack("!BBH", 2, 4, expect["mss"]))
        elif kind == "ws":
            expect["wscale"] = draw(st.integers(0, 14))
            parts.append(bytes((3, 3, expect["wscale"])))
        elif kind == "sackok":
            expect["sack_permitted"] = True
            parts.append(b"\x04\x02")
        elif kind == "ts":
            expect["ts"] = (draw(u32), draw(u32))
            parts.append(struct.pack("!BBII", 8, 10, *expect["ts"]))
        else:
            blocks = tuple(draw(st.lists(st.tuples(u32, u32), min_size=1, max_size=2)))
            expect["sack_blocks"] = blocks
            parts.append(bytes((5, 2 + 8 * len(blocks)))
                         + b"".join(struct.pack("!II", *b) for b in blocks))
    return b"".join(parts), expect


@FUZZ
@given(addresses, u16, u16, u32, u32, st.integers(0, 255), u16, option_blocks(),
       st.binary(max_size=64), u16, st.integers(0, 255), st.booleans())
def test_build_decode_round_trip(addrs, sport, dport, seq, ack, flags, window, opts, payload,
                                 ip_id, ttl, df):
    src, dst = addrs
    options, expect = opts
    pkt = build(src, dst, sport, dport, seq, ack, flags, window, options=options,
                payload=payload, ip_id=ip_id, ttl=ttl, df=df)
    got = decode(bytes(pkt.buf))
    assert (got.src, got.dst, got.sport, got.dport, got.seq, got.ack) == (
        src, dst, sport, dport, seq, ack)
    assert (got.flags, got.window, got.ttl, got.payload) == (flags, window, ttl, payload)
    assert got.ip_id == (ip_id if len(src) == 4 else 0)
    assert (got.mss, got.wscale, got.sack_permitted) == (
        expect["mss"], expect["wscale"], expect["sack_permitted"])
    assert ((got.tsval, got.tsecr) if got.ts_off is not None else None) == expect["ts"]
    assert got.sack_blocks == expect["sack_blocks"]
    assert tcp_checksum_ok(got) and ipv4_checksum_ok(got)
    assert_checksums_canonical(got)


# ---------------------------------------------------------------- rewrite sequences

def rfc1071_checksum(data: bytes) -> int:
    """Reference Internet checksum, word by word with end-around carry (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def assert_checksums_canonical(pkt):
    """The checksum fields equal what a full sum from scratch gives."""
    buf = bytearray(pkt.buf)
    tcp = buf[pkt.tcp_off:]
    stored = struct.unpack_from("!H", tcp, 16)[0]
    tcp[16:18] = b"\0\0"
    if pkt.version == 4:
        pseudo = bytes(buf[12:20]) + struct.pack("!BBH", 0, 6, len(tcp))
        header = bytearray(buf[:pkt.tcp_off])
        stored_ip = struct.unpack_from("!H", header, 10)[0]
        header[10:12] = b"\0\0"
        assert stored_ip == rfc1071_checksum(bytes(header))
    else:
        pseudo = bytes(buf[8:40]) + struct.pack("!I3xB", len(tcp), 6)
    assert stored == rfc1071_checksum(pseudo + bytes(tcp))


def rewrite_steps(family):
    address = st.binary(min_size=family, max_size=family)
    return st.lists(st.one_of(
        st.tuples(st.just("set_src"), address), st.tuples(st.just("set_dst"), address),
        st.tuples(st.just("set_sport"), u16), st.tuples(st.just("set_dport"), u16),
        st.tuples(st.just("set_window"), u16), st.tuples(st.just("set_ip_id"), u16),
        st.tuples(st.just("set_seq"), u32), st.tuples(st.just("set_ack"), u32),
        st.tuples(st.just("set_flags"), st.integers(0, 255)),
        st.tuples(st.just("set_ttl"), st.integers(0, 255)),
        st.tuples(st.just("set_timestamps"), st.tuples(u32, u32)),
        st.tuples(st.just("blank_sack"), st.none()),
    ), max_size=12)


@st.composite
def packets_and_steps(draw):
    family = draw(st.sampled_from([4, 16]))
    lead = b"\x01" * draw(st.integers(0, 3))   # moves the TS option to any alignment
    options = lead + struct.pack("!BBII", 8, 10, draw(u32), draw(u32))
    if draw(st.booleans()):
        options += struct.pack("!BBII", 5, 10, draw(u32), draw(u32))
    pkt = build(bytes(range(1, family + 1)), bytes(range(101, 101 + family)), draw(u16),
                draw(u16), draw(u32), draw(u32), draw(st.integers(0, 255)), draw(u16),
                options=options, payload=draw(st.binary(max_size=41)), ip_id=draw(u16))
    return pkt, draw(rewrite_steps(family))


@FUZZ
@given(packets_and_steps())
def test_rewrite_sequences_keep_checksums(case):
    pkt, steps = case
    for name, value in steps:
        method = getattr(pkt, name)
        if name == "set_timestamps":
            method(*value)
        elif name == "blank_sack":
            method()
        else:
            method(value)
        assert tcp_checksum_ok(pkt) and ipv4_checksum_ok(pkt), name
    assert_checksums_canonical(pkt)
    fresh = decode(bytes(pkt.buf))
    for field in ("src", "dst", "sport", "dport", "seq", "ack", "flags", "window", "ip_id",
                  "ttl", "tsval", "tsecr", "ts_off", "sack_blocks"):
        assert getattr(fresh, field) == getattr(pkt, field), field
