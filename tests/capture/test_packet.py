"""The packet codec against scapy: decode, rewrite, build, split, malformed input."""

import socket
import struct

import pytest
from scapy.layers.inet import IP, TCP, IPOption_NOP, IPOption_Router_Alert
from scapy.layers.inet6 import (IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.packet import Padding, Raw

from tcpcopy.capture import packet as P
from tcpcopy.capture.packet import (ACK, FIN, PSH, SYN, PacketError, build, decode,
                                    decode_frame, ip_offset, ipv4_checksum_ok, split,
                                    tcp_checksum_ok)

V4_SRC, V4_DST = "198.18.0.1", "198.19.255.254"
V6_SRC, V6_DST = "2001:2::1", "2001:2:0:ffff::fffe"

OPTION_SETS = {
    "none": [],
    "mss": [("MSS", 1460)],
    "syn": [("MSS", 1440), ("NOP", None), ("WScale", 7), ("SAckOK", b""),
            ("Timestamp", (0xFFFFFFFF, 0))],
    "ts": [("NOP", None), ("NOP", None), ("Timestamp", (123456789, 987654321))],
    "ts_odd": [("NOP", None), ("Timestamp", (0xFFFF0000, 0x0000FFFF)), ("NOP", None)],
    "sack": [("NOP", None), ("NOP", None), ("SAck", (1000, 2000, 3000, 4000))],
    "sack_ts": [("NOP", None), ("NOP", None), ("Timestamp", (7, 8)), ("NOP", None),
                ("NOP", None), ("SAck", (0xFFFFFFF0, 16))],
    "sack_odd": [("NOP", None), ("SAck", (5, 6)), ("NOP", None)],
    "eol_early": [("MSS", 536), ("EOL", None)],
}

PAYLOAD = bytes(range(256)) * 2 + b"odd"   # odd length on purpose


def v4(options=(), payload=PAYLOAD, flags="PA", ip_options=None, **tcp):
    ip = IP(src=V4_SRC, dst=V4_DST, id=0xBEEF, ttl=63, flags="DF")
    if ip_options:
        ip.options = ip_options
    return ip / TCP(sport=40000, dport=80, seq=0xFFFFFFF0, ack=0x12345678, flags=flags,
                    window=0xFFFF, options=list(options), **tcp) / Raw(payload)


def v6(options=(), payload=PAYLOAD, flags="PA", ext=None, **tcp):
    ip = IPv6(src=V6_SRC, dst=V6_DST, hlim=61)
    if ext is not None:
        ip = ip / ext
    return ip / TCP(sport=40001, dport=443, seq=1, ack=0xFFFFFFFF, flags=flags,
                    window=1024, options=list(options), **tcp) / Raw(payload)


def scapy_tcp(raw):
    """Parse IP bytes with scapy, whichever the version."""
    return (IP if raw[0] >> 4 == 4 else IPv6)(bytes(raw))


def expected_options(tcp_layer):
    found = {"mss": None, "wscale": None, "sack_permitted": False, "tsval": None,
             "tsecr": None, "sack_blocks": ()}
    for name, value in tcp_layer.options:
        if name == "MSS":
            found["mss"] = value
        elif name == "WScale":
            found["wscale"] = value
        elif name == "SAckOK":
            found["sack_permitted"] = True
        elif name == "Timestamp":
            found["tsval"], found["tsecr"] = value
        elif name == "SAck":
            found["sack_blocks"] += tuple(zip(value[::2], value[1::2]))
    return found


def assert_matches_scapy(pkt, raw=None):
    """Every decoded field equals scapy's reading of the same bytes."""
    sp = scapy_tcp(raw if raw is not None else pkt.buf)
    tcp = sp[TCP]
    if pkt.version == 4:
        assert (pkt.src, pkt.dst) == (socket.inet_aton(sp.src), socket.inet_aton(sp.dst))
        assert pkt.ip_id == sp.id
        assert pkt.ttl == sp.ttl
    else:
        assert pkt.src == socket.inet_pton(socket.AF_INET6, sp.src)
        assert pkt.dst == socket.inet_pton(socket.AF_INET6, sp.dst)
        assert pkt.ip_id == 0
        assert pkt.ttl == sp.hlim
    assert (pkt.sport, pkt.dport, pkt.seq, pkt.ack) == (tcp.sport, tcp.dport, tcp.seq, tcp.ack)
    assert pkt.flags == int(tcp.flags)
    assert pkt.window == tcp.window
    assert pkt.payload_off - pkt.tcp_off == tcp.dataofs * 4
    assert pkt.payload == bytes(tcp.payload)
    assert pkt.payload_len == len(bytes(tcp.payload))
    opts = expected_options(tcp)
    assert pkt.mss == opts["mss"]
    assert pkt.wscale == opts["wscale"]
    assert pkt.sack_permitted == opts["sack_permitted"]
    assert (pkt.tsval, pkt.tsecr) == (opts["tsval"], opts["tsecr"])
    assert pkt.sack_blocks == opts["sack_blocks"]
    if pkt.ts_off is not None:
        assert struct.unpack_from("!II", pkt.buf, pkt.ts_off) == (pkt.tsval, pkt.tsecr)


def assert_checksums_agree_with_scapy(pkt):
    """scapy recomputes both checksums from scratch; ours must be the same values."""
    sp = scapy_tcp(pkt.buf)
    ours_tcp = sp[TCP].chksum
    del sp[TCP].chksum
    if pkt.version == 4:
        ours_ip = sp[IP].chksum
        del sp[IP].chksum
    fresh = scapy_tcp(bytes(sp))
    assert ours_tcp == fresh[TCP].chksum
    if pkt.version == 4:
        assert ours_ip == fresh[IP].chksum
    assert tcp_checksum_ok(pkt)
    assert ipv4_checksum_ok(pkt)


# ---------------------------------------------------------------- decode round trips

def sample_packets():
    cases = {}
    for name, options in OPTION_SETS.items():
        cases[f"v4-{name}"] = v4(options)
        cases[f"v6-{name}"] = v6(options)
    cases["v4-ipopts"] = v4(OPTION_SETS["ts"], ip_options=[IPOption_Router_Alert()])
    cases["v4-ipopts-nop"] = v4(OPTION_SETS["ts_odd"],
                                ip_options=[IPOption_NOP(), IPOption_NOP(), IPOption_NOP(),
                                            IPOption_NOP(), IPOption_Router_Alert()])
    cases["v4-empty"] = v4(payload=b"", flags="A")
    cases["v4-syn"] = v4(OPTION_SETS["syn"], payload=b"", flags="S")
    cases["v6-hbh"] = v6(OPTION_SETS["ts"], ext=IPv6ExtHdrHopByHop())
    cases["v6-hbh-dst"] = v6(OPTION_SETS["sack_ts"],
                             ext=IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt())
    cases["v6-routing"] = v6(OPTION_SETS["ts_odd"],
                             ext=IPv6ExtHdrRouting(addresses=[V6_DST], segleft=0))
    cases["v6-atomic-frag"] = v6(OPTION_SETS["mss"],
                                 ext=IPv6ExtHdrDestOpt() / IPv6ExtHdrFragment(offset=0, m=0))
    return cases


SAMPLES = sample_packets()


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_decode_matches_scapy(name):
    raw = bytes(SAMPLES[name])
    pkt = decode(raw)
    assert pkt.version == (4 if name.startswith("v4") else 6)
    assert bytes(pkt.buf) == raw
    assert_matches_scapy(pkt, raw)
    assert_checksums_agree_with_scapy(pkt)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_decode_accepts_any_buffer_and_owns_a_copy(kind):
    raw = bytearray(bytes(SAMPLES["v4-ts"]))
    pkt = decode(kind(raw) if kind is not bytearray else raw)
    raw[40] ^= 0xFF
    assert bytes(pkt.buf) == bytes(SAMPLES["v4-ts"])


def test_ts_offset_odd_alignment():
    pkt = decode(bytes(SAMPLES["v4-ts_odd"]))
    assert pkt.ts_off == pkt.tcp_off + 20 + 1 + 2   # after one NOP, kind and length
    assert pkt.ts_off % 2 == 1


def test_ipv6_extension_headers_walked():
    pkt = decode(bytes(SAMPLES["v6-hbh-dst"]))
    assert pkt.tcp_off == 40 + 8 + 8
    assert pkt.payload_len == len(PAYLOAD)


def eth(**fields):
    """Ethernet with fixed addresses, so scapy does no neighbour lookup."""
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", **fields)


def frames():
    inner4 = IP(src=V4_SRC, dst=V4_DST) / TCP(sport=1, dport=2, options=OPTION_SETS["ts"])
    inner6 = IPv6(src=V6_SRC, dst=V6_DST) / TCP(sport=3, dport=4) / Raw(b"hello")
    return {
        "ether-v4": (P.LINKTYPE_ETHERNET, eth() / inner4, 14),
        "ether-v6": (P.LINKTYPE_ETHERNET, eth() / inner6, 14),
        "ether-padding": (P.LINKTYPE_ETHERNET,
                          eth() / IP(src=V4_SRC, dst=V4_DST) / TCP() / Padding(b"\0" * 6), 14),
        "dot1q": (P.LINKTYPE_ETHERNET, eth() / Dot1Q(vlan=42) / inner4, 18),
        "dot1ad": (P.LINKTYPE_ETHERNET, eth(type=0x88A8) / Dot1AD(vlan=7) / inner6, 18),
        "sll-v4": (P.LINKTYPE_LINUX_SLL, CookedLinux() / inner4, 16),
        "sll-v6": (P.LINKTYPE_LINUX_SLL, CookedLinux(proto=0x86DD) / inner6, 16),
        "sll2": (P.LINKTYPE_LINUX_SLL2, CookedLinuxV2() / inner4, 20),
        "raw": (P.LINKTYPE_RAW, inner4, 0),
        "raw-bsd": (12, inner6, 0),
        "raw-openbsd": (14, inner4, 0),
        "raw-ipv4": (P.LINKTYPE_IPV4, inner4, 0),
        "raw-ipv6": (P.LINKTYPE_IPV6, inner6, 0),
    }


FRAMES = frames()


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_decode_frame(name):
    linktype, frame, offset = FRAMES[name]
    raw = bytes(frame)
    assert ip_offset(raw, linktype) == offset
    pkt = decode_frame(raw, linktype)
    ip_layer = frame[IP] if IP in frame else frame[IPv6]
    ip_bytes = bytes(ip_layer)
    if Padding in frame:
        ip_bytes = ip_bytes[:-len(frame[Padding])]
        assert len(raw) > offset + len(pkt.buf)   # trailing padding dropped
    assert bytes(pkt.buf) == ip_bytes
    assert_matches_scapy(pkt, ip_bytes)


def routed_by_decode(frame: bytes, linktype: int, payload: int):
    """What route_head must give, from the full decoder."""
    pkt = decode_frame(frame, linktype, headers_only=True)
    record = bytes(pkt.buf[:pkt.payload_off + payload])
    return (pkt.dst, pkt.dport, pkt.src, pkt.sport), record, pkt.flags, pkt.payload_len


@pytest.mark.parametrize("payload", [0, 3, 1000])
@pytest.mark.parametrize("name", sorted(FRAMES) + sorted(SAMPLES))
def test_route_head_reads_what_the_decoder_reads(name, payload):
    linktype, frame = (FRAMES[name][0], bytes(FRAMES[name][1])) if name in FRAMES else (
        P.LINKTYPE_RAW, bytes(SAMPLES[name]))
    assert P.route_head(frame, linktype, payload) == routed_by_decode(frame, linktype, payload)


@pytest.mark.parametrize("name", ["v4-ts", "v4-ipopts", "v6-hbh-dst", "v6-atomic-frag", "v4-syn"])
def test_route_head_fails_where_the_decoder_fails_on_every_cut(name):
    """Each prefix of a well-formed answer: both refuse it, or both read the same."""
    raw = bytes(SAMPLES[name])
    for cut in range(len(raw) + 1):
        try:
            expected = routed_by_decode(raw[:cut], P.LINKTYPE_RAW, 8)
        except PacketError:
            with pytest.raises(PacketError):
                P.route_head(raw[:cut], P.LINKTYPE_RAW, 8)
            continue
        assert P.route_head(raw[:cut], P.LINKTYPE_RAW, 8) == expected, cut


@pytest.mark.parametrize("mangle, fault", [
    (lambda b: b"\x35" + b[1:], "not IP"),
    (lambda b: b[:9] + b"\x11" + b[10:], "not TCP"),
    (lambda b: b[:6] + b"\x20\x00" + b[8:], "fragment"),
    (lambda b: b[:32] + b"\x30" + b[33:], "data offset"),
    (lambda b: b"\x43" + b[1:], "header length"),
])
def test_route_head_names_the_fault(mangle, fault):
    with pytest.raises(PacketError, match=fault):
        P.route_head(mangle(bytes(v4(payload=b"x", flags="PA"))), P.LINKTYPE_RAW, 0)


def test_headers_only_accepts_missing_payload():
    raw = bytes(SAMPLES["v4-ts"])
    cut = raw[:decode(raw).payload_off + 10]
    with pytest.raises(PacketError, match="beyond"):
        decode(cut)
    pkt = decode(cut, headers_only=True)
    assert pkt.payload_len == len(PAYLOAD)
    assert pkt.payload == PAYLOAD[:10]
    assert len(pkt.buf) == len(cut)
    assert not tcp_checksum_ok(pkt)
    assert ipv4_checksum_ok(pkt)
    full = decode(raw)
    pkt.set_ack(5)
    pkt.set_timestamps(1, 2)
    full.set_ack(5)
    full.set_timestamps(1, 2)
    assert bytes(pkt.buf) == bytes(full.buf[:len(cut)])


def test_headers_only_v6_with_extensions():
    raw = bytes(SAMPLES["v6-hbh-dst"])
    full = decode(raw)
    pkt = decode_frame(raw[:full.payload_off], P.LINKTYPE_RAW, headers_only=True)
    assert pkt.payload_len == full.payload_len
    assert pkt.payload == b""
    assert (pkt.seq, pkt.ack, pkt.tsval, pkt.sack_blocks) == (
        full.seq, full.ack, full.tsval, full.sack_blocks)


def test_headers_only_still_needs_tcp_header():
    raw = bytes(SAMPLES["v4-ts"])
    pkt = decode(raw)
    with pytest.raises(PacketError, match="TCP options"):
        decode(raw[:pkt.payload_off - 1], headers_only=True)


def test_derived_helpers():
    syn = decode(bytes(SAMPLES["v4-syn"]))
    assert syn.seg_len == 1
    fin = decode(bytes(v4(payload=b"abc", flags="FA")))
    assert fin.seg_len == 4
    data = decode(bytes(SAMPLES["v6-ts"]))
    assert data.seg_len == len(PAYLOAD)
    assert isinstance(data.payload, bytes)
    assert data.to_bytes() == bytes(SAMPLES["v6-ts"])
    assert "2001:2::1:40001" in repr(data) and "[P.]" in repr(data)


def test_copy_is_independent():
    pkt = decode(bytes(SAMPLES["v4-sack_ts"]))
    twin = pkt.copy()
    twin.set_seq(1)
    twin.set_timestamps(9, 9)
    twin.blank_sack()
    assert pkt.seq == 0xFFFFFFF0 and pkt.tsval == 7 and pkt.sack_blocks
    assert bytes(pkt.buf) == bytes(SAMPLES["v4-sack_ts"])
    for name in P.Packet.__slots__:
        if name not in ("buf", "seq", "tsval", "tsecr", "sack_blocks"):
            assert getattr(twin, name) == getattr(pkt, name), name
    assert tcp_checksum_ok(twin)


# ---------------------------------------------------------------- in-place rewrites

REWRITE_SAMPLES = ["v4-ts", "v4-ts_odd", "v4-syn", "v4-ipopts-nop", "v6-ts_odd",
                   "v6-hbh-dst", "v6-routing", "v4-empty", "v6-sack_odd"]

WORD_EDGES = [0, 1, 0xFF, 0x100, 0xFFFE, 0xFFFF]
LONG_EDGES = [0, 1, 0xFFFF, 0x10000, 0xFFFF0000, 0x0000FFFF, 0xFFFFFFFE, 0xFFFFFFFF]


def other_address(pkt, last):
    return pkt.src[:-1] + bytes([last]) if pkt.version == 4 else pkt.src[:-2] + bytes([0xFF, last])


def rewrites(pkt):
    """(name, call, attribute, expected value) for every setter, with carry-heavy values."""
    yield from (("seq", pkt.set_seq, "seq", v) for v in LONG_EDGES)
    yield from (("ack", pkt.set_ack, "ack", v) for v in LONG_EDGES)
    yield from (("sport", pkt.set_sport, "sport", v) for v in WORD_EDGES)
    yield from (("dport", pkt.set_dport, "dport", v) for v in WORD_EDGES)
    yield from (("window", pkt.set_window, "window", v) for v in WORD_EDGES)
    yield from (("flags", pkt.set_flags, "flags", v) for v in (0, ACK, 0xFF, SYN | ACK))
    yield from (("ttl", pkt.set_ttl, "ttl", v) for v in (0, 1, 255, 64))
    if pkt.version == 4:
        yield from (("ip_id", pkt.set_ip_id, "ip_id", v) for v in WORD_EDGES)
        addresses = [b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", bytes([198, 18, 0xFF, 0])]
    else:
        addresses = [b"\xff" * 16, b"\x00" * 16, socket.inet_pton(socket.AF_INET6, "2001:2::ffff")]
    yield from (("src", pkt.set_src, "src", a) for a in addresses)
    yield from (("dst", pkt.set_dst, "dst", a) for a in addresses)


@pytest.mark.parametrize("name", REWRITE_SAMPLES)
def test_each_rewrite_keeps_checksums(name):
    pkt = decode(bytes(SAMPLES[name]))
    for what, call, attribute, value in rewrites(pkt):
        call(value)
        assert getattr(pkt, attribute) == value, what
        assert_checksums_agree_with_scapy(pkt)
        assert_matches_scapy(pkt)


@pytest.mark.parametrize("name", ["v4-ts", "v4-ts_odd", "v6-ts_odd", "v6-hbh-dst",
                                  "v4-ipopts-nop"])
def test_set_timestamps_any_alignment(name):
    pkt = decode(bytes(SAMPLES[name]))
    for tsval, tsecr in [(0, 0), (0xFFFFFFFF, 0xFFFFFFFF), (0xFFFF, 0xFFFF0000),
                         (0x01020304, 0xFEFDFCFB), (2**32 + 5, -1)]:
        pkt.set_timestamps(tsval, tsecr)
        assert (pkt.tsval, pkt.tsecr) == (tsval & 0xFFFFFFFF, tsecr & 0xFFFFFFFF)
        assert_matches_scapy(pkt)
        assert_checksums_agree_with_scapy(pkt)


def test_set_timestamps_without_option():
    pkt = decode(bytes(SAMPLES["v4-mss"]))
    with pytest.raises(ValueError, match="timestamps"):
        pkt.set_timestamps(1, 2)


def test_sequence_values_wrap():
    pkt = decode(bytes(SAMPLES["v4-ts"]))
    pkt.set_seq(0xFFFFFFFF + 3)
    pkt.set_ack(-1)
    assert (pkt.seq, pkt.ack) == (2, 0xFFFFFFFF)
    assert_checksums_agree_with_scapy(pkt)


def test_rewrite_landing_on_zero_checksum():
    """The incremental result must be the canonical 0x0000, as a full sum gives."""
    pkt = decode(bytes(SAMPLES["v4-ts"]))
    csum = struct.unpack_from("!H", pkt.buf, pkt.tcp_off + 16)[0]
    window = (csum + pkt.window) % 0xFFFF
    pkt.set_window(window)
    assert struct.unpack_from("!H", pkt.buf, pkt.tcp_off + 16)[0] == 0
    assert_checksums_agree_with_scapy(pkt)
    ip_csum = struct.unpack_from("!H", pkt.buf, 10)[0]
    pkt.set_ip_id((ip_csum + pkt.ip_id) % 0xFFFF)
    assert struct.unpack_from("!H", pkt.buf, 10)[0] == 0
    assert_checksums_agree_with_scapy(pkt)


@pytest.mark.parametrize("name", ["v4-sack", "v4-sack_ts", "v4-sack_odd", "v6-sack_odd",
                                  "v6-hbh-dst"])
def test_blank_sack(name):
    pkt = decode(bytes(SAMPLES[name]))
    before = bytes(pkt.buf)
    assert pkt.sack_blocks
    pkt.blank_sack()
    assert pkt.sack_blocks == ()
    assert len(pkt.buf) == len(before)
    assert_checksums_agree_with_scapy(pkt)
    again = decode(bytes(pkt.buf))
    assert again.sack_blocks == ()
    assert (again.tsval, again.tsecr) == (pkt.tsval, pkt.tsecr)
    assert all(name != "SAck" for name, _ in scapy_tcp(pkt.buf)[TCP].options)


def test_blank_sack_without_sack_is_harmless():
    pkt = decode(bytes(SAMPLES["v4-syn"]))
    before = bytes(pkt.buf)
    pkt.blank_sack()
    assert bytes(pkt.buf) == before


def test_rewrite_rejects_bad_values():
    pkt = decode(bytes(SAMPLES["v4-ts"]))
    before = bytes(pkt.buf)
    with pytest.raises(ValueError):
        pkt.set_dst(b"\x00" * 16)
    with pytest.raises(ValueError):
        pkt.set_dport(65536)
    with pytest.raises(ValueError):
        pkt.set_window(-1)
    with pytest.raises(ValueError):
        pkt.set_flags(256)
    with pytest.raises(ValueError):
        pkt.set_ttl(300)
    assert bytes(pkt.buf) == before


def test_set_ip_id_is_noop_on_ipv6():
    pkt = decode(bytes(SAMPLES["v6-ts"]))
    before = bytes(pkt.buf)
    pkt.set_ip_id(77)
    assert bytes(pkt.buf) == before and pkt.ip_id == 0


# ---------------------------------------------------------------- build

BUILD_OPTIONS = {
    "none": b"",
    "syn": P.opt_mss(1460) + P.opt_sack_permitted() + P.opt_timestamps(0xFFFFFFFF, 0)
    + P.opt_wscale(14),
    "ts": P.opt_timestamps(1, 2),
    "unpadded": P.opt_mss(536) + b"\x01",
}


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("options", sorted(BUILD_OPTIONS))
@pytest.mark.parametrize("payload", [b"", b"x", PAYLOAD])
def test_build_matches_scapy(family, options, payload):
    if family == 4:
        src, dst = socket.inet_aton(V4_SRC), socket.inet_aton(V4_DST)
    else:
        src, dst = (socket.inet_pton(socket.AF_INET6, a) for a in (V6_SRC, V6_DST))
    pkt = build(src, dst, 50000, 8080, 0xFFFFFFFF, 0x80000000, PSH | ACK, 29200,
                options=BUILD_OPTIONS[options], payload=payload, ip_id=4242, ttl=33)
    assert (pkt.tcp_off, pkt.payload_off % 4) == (20 if family == 4 else 40, 0)
    assert_matches_scapy(pkt)
    assert_checksums_agree_with_scapy(pkt)
    sp = scapy_tcp(pkt.buf)
    if family == 4:
        assert sp.flags == "DF" and sp.id == 4242 and sp.ttl == 33 and sp.len == len(pkt.buf)
    else:
        assert sp.plen == len(pkt.buf) - 40 and sp.nh == 6 and sp.hlim == 33
    assert pkt.payload == payload


def test_build_options_helpers():
    assert P.opt_mss(1460) == b"\x02\x04\x05\xb4"
    assert P.opt_wscale(7) == b"\x01\x03\x03\x07"
    assert P.opt_sack_permitted() == b"\x01\x01\x04\x02"
    ts = P.opt_timestamps(0x01020304, 0x05060708)
    assert len(ts) == 12 and ts[:4] == b"\x01\x01\x08\x0a"
    assert ts[4:] == bytes(range(1, 9))


def test_build_without_df_and_rejects_bad_input():
    pkt = build(b"\x01\x02\x03\x04", b"\x05\x06\x07\x08", 1, 2, 3, 4, SYN, 5, df=False)
    assert scapy_tcp(pkt.buf).flags == 0
    with pytest.raises(ValueError):
        build(b"\x01\x02\x03\x04", b"\x00" * 16, 1, 2, 3, 4, SYN, 5)
    with pytest.raises(ValueError):
        build(b"\x01\x02\x03\x04", b"\x05\x06\x07\x08", 70000, 2, 3, 4, SYN, 5)
    with pytest.raises(ValueError):
        build(b"\x01\x02\x03\x04", b"\x05\x06\x07\x08", 1, 2, 3, 4, SYN, 5, options=b"\x01" * 41)


# ---------------------------------------------------------------- split

@pytest.mark.parametrize("name", ["v4-ts", "v6-ts_odd", "v6-hbh-dst", "v4-ipopts"])
@pytest.mark.parametrize("mtu", [150, 333, 500])
def test_split(name, mtu):
    source = SAMPLES[name].copy()
    source[TCP].flags = "FPA"
    pkt = decode(bytes(source))
    pieces = split(pkt, mtu)
    assert len(pieces) > 1
    assert b"".join(p.payload for p in pieces) == pkt.payload
    seq = pkt.seq
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1
        assert len(piece.buf) <= mtu
        assert piece.seq == seq & 0xFFFFFFFF
        seq += piece.payload_len
        assert bool(piece.flags & FIN) == last and bool(piece.flags & PSH) == last
        assert piece.flags & ACK
        assert bytes(piece.buf[:piece.payload_off])[piece.tcp_off + 20:] == \
            bytes(pkt.buf[pkt.tcp_off + 20:pkt.payload_off])   # options kept
        assert piece.ip_id == ((pkt.ip_id + index) & 0xFFFF if pkt.version == 4 else 0)
        assert (piece.tsval, piece.ack, piece.window) == (pkt.tsval, pkt.ack, pkt.window)
        assert_matches_scapy(piece)
        assert_checksums_agree_with_scapy(piece)


def test_split_within_mtu_and_too_small():
    pkt = decode(bytes(SAMPLES["v4-ts"]))
    assert split(pkt, len(pkt.buf)) == [pkt]
    with pytest.raises(ValueError, match="mtu"):
        split(pkt, pkt.payload_off)


def test_split_syn_with_data():
    pkt = build(b"\x01\x02\x03\x04", b"\x05\x06\x07\x08", 1, 2, 100, 0, SYN, 5,
                payload=b"a" * 50)
    first, second = split(pkt, pkt.payload_off + 25)
    assert first.flags == SYN and second.flags == 0
    assert (first.seq, second.seq) == (100, 126)


# ---------------------------------------------------------------- malformed input

GOOD4 = bytes(v4(OPTION_SETS["ts"], payload=b"data"))
GOOD6 = bytes(v6(OPTION_SETS["ts"], payload=b"data"))


def patched(raw, offset, value, fmt="!B"):
    raw = bytearray(raw)
    struct.pack_into(fmt, raw, offset, value)
    return bytes(raw)


MALFORMED = {
    "empty": (b"", "empty"),
    "not-ip": (b"\x50" + GOOD4[1:], "version 5"),
    "short-ipv4": (GOOD4[:19], "truncated IPv4 header"),
    "short-ipv6": (GOOD6[:39], "truncated IPv6 header"),
    "ihl-below-5": (patched(GOOD4, 0, 0x44), "header length 16"),
    "ihl-beyond": (patched(GOOD4, 0, 0x4F)[:40], "IPv4 options"),
    "total-below-ihl": (patched(GOOD4, 2, 10, "!H"), "shorter than its header"),
    "total-beyond": (patched(GOOD4, 2, len(GOOD4) + 1, "!H"), "beyond"),
    "ipv6-plen-beyond": (patched(GOOD6, 4, len(GOOD6), "!H"), "beyond"),
    "no-room-for-tcp": (patched(GOOD4, 2, 30, "!H"), "no room for a TCP header"),
    "truncated-tcp": (GOOD4[:30], "beyond"),
    "doff-below-5": (patched(GOOD4, 32, 0x40), "data offset 16"),
    "doff-beyond": (patched(GOOD4, 32, 0xF0), "TCP header length 60"),
    "option-len-0": (patched(GOOD4, 43, 0), "option length 0"),
    "option-len-beyond": (patched(GOOD4, 43, 11), "option length 11"),
    "option-no-len": (patched(bytes(v4([("NOP", None)] * 4, payload=b"")), 43, 2),
                      "no length byte"),
    "udp": (bytes(IP(src=V4_SRC, dst=V4_DST, proto=17) / Raw(b"\0" * 20)), "IPv4 protocol 17"),
    "ipv6-udp": (bytes(IPv6(nh=17) / Raw(b"\0" * 20)), "next header 17"),
    "ipv6-esp": (bytes(IPv6(nh=50) / Raw(b"\0" * 20)), "next header 50"),
    "ipv6-no-next": (bytes(IPv6(nh=59)), "next header 59"),
    "ipv4-fragment-mf": (patched(GOOD4, 6, 0x2000, "!H"), "fragment"),
    "ipv4-fragment-offset": (patched(GOOD4, 6, 0x0010, "!H"), "fragment"),
    "ipv6-fragment": (bytes(v6(ext=IPv6ExtHdrFragment(offset=0, m=1))), "fragment"),
    "ipv6-later-fragment": (bytes(v6(ext=IPv6ExtHdrFragment(offset=10, m=0))), "fragment"),
    "ipv6-ext-truncated": (patched(bytes(v6(ext=IPv6ExtHdrHopByHop())), 4, 4, "!H"),
                           "truncated IPv6 extension header"),
    "ipv6-ext-beyond": (patched(patched(bytes(v6(ext=IPv6ExtHdrHopByHop())), 4, 8, "!H"),
                                41, 1), "beyond the packet"),
    "ipv6-hbh-not-first": (bytes(v6(ext=IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop())),
                           "hop-by-hop"),
    "ipv6-routing-in-transit": (bytes(v6(ext=IPv6ExtHdrRouting(addresses=[V6_DST],
                                                               segleft=1))), "segments left"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed(name):
    data, message = MALFORMED[name]
    with pytest.raises(PacketError, match=message):
        decode(data)


FRAME_FAULTS = {
    "unknown-linktype": (bytes(eth() / IP() / TCP()), 9999, "link type 9999"),
    "short-ethernet": (bytes(eth() / IP() / TCP())[:13], P.LINKTYPE_ETHERNET, "short Ethernet"),
    "short-vlan": (bytes(eth() / Dot1Q() / IP() / TCP())[:16], P.LINKTYPE_ETHERNET, "802.1Q"),
    "arp": (bytes(eth(type=0x0806) / Raw(b"\0" * 28)), P.LINKTYPE_ETHERNET, "ethertype 0x0806"),
    "double-tag": (bytes(eth() / Dot1Q() / Dot1Q() / IP() / TCP()), P.LINKTYPE_ETHERNET,
                   "stacked"),
    "short-sll": (bytes(CookedLinux() / IP() / TCP())[:15], P.LINKTYPE_LINUX_SLL, "SLL"),
    "sll-arp": (bytes(CookedLinux(proto=0x0806) / Raw(b"\0" * 28)), P.LINKTYPE_LINUX_SLL,
                "protocol 0x0806"),
    "short-sll2": (bytes(CookedLinuxV2() / IP() / TCP())[:19], P.LINKTYPE_LINUX_SLL2, "SLL2"),
    "raw-empty": (b"", P.LINKTYPE_RAW, "empty"),
    "raw-not-ip": (b"\x20" * 40, P.LINKTYPE_RAW, "version 2"),
    "ether-udp": (bytes(eth() / IP(proto=17) / Raw(b"\0" * 20)), P.LINKTYPE_ETHERNET,
                  "protocol 17"),
}


@pytest.mark.parametrize("name", sorted(FRAME_FAULTS))
def test_malformed_frames(name):
    frame, linktype, message = FRAME_FAULTS[name]
    with pytest.raises(PacketError, match=message):
        decode_frame(frame, linktype)


def test_packet_error_is_value_error():
    assert issubclass(PacketError, ValueError)


def test_known_option_with_wrong_length_is_skipped():
    raw = bytearray(bytes(v4([("NOP", None)] * 4, payload=b"")))
    raw[40:44] = b"\x02\x03\x05\x01"   # MSS with length 3 (skipped), then a NOP
    pkt = decode(bytes(raw))
    assert pkt.mss is None


# ---------------------------------------------------------------- captured checksums

def with_partial_checksum(pkt):
    """The packet as a host with checksum offload captures it: the TCP checksum field
    holds only the folded pseudo-header sum (what Linux leaves for the NIC to finish)."""
    raw = bytearray(pkt.to_bytes())
    csum_off = pkt.tcp_off + 16
    raw[csum_off:csum_off + 2] = b"\x00\x00"
    pseudo = P._pseudo_sum(raw, pkt.tcp_off) % 0xFFFF
    raw[csum_off:csum_off + 2] = struct.pack("!H", pseudo)
    return decode(bytes(raw))


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("payload_len", [0, 1, 600, 1447, 60000])
def test_partial_checksum_completed_and_survives_rewrites(version, payload_len):
    src, dst = ((bytes([198, 18, 5, 7]), bytes([198, 18, 0, 10])) if version == 4 else
                (bytes.fromhex("20010002000000000000000000000005"),
                 bytes.fromhex("2001000200000000000000000000000a")))
    sent = build(src, dst, 40000, 80, 1000, 2000, PSH | ACK, 502,
                 options=P.opt_timestamps(7, 9), payload=bytes(range(256)) * (payload_len // 256)
                 + b"x" * (payload_len % 256))
    captured = with_partial_checksum(sent)
    assert not P.tcp_checksum_ok(captured)
    assert P.repair_checksums(captured) == P.CHECKSUM_COMPLETED
    assert P.tcp_checksum_ok(captured)
    assert captured.to_bytes() == sent.to_bytes()
    # What the engine does next (RFC 1624 updates) keeps it right.
    captured.set_dst(src)
    captured.set_ack(123456789)
    captured.set_timestamps(11, 12)
    assert P.tcp_checksum_ok(captured)
    assert_checksums_agree_with_scapy(captured)


def test_complete_checksum_left_alone():
    pkt = build(bytes(4), bytes([198, 18, 0, 2]), 1, 2, 3, 4, ACK, 5, payload=b"abc")
    before = pkt.to_bytes()
    assert P.repair_checksums(pkt) == P.CHECKSUM_COMPLETE
    assert pkt.to_bytes() == before


def test_a_complete_checksum_that_equals_the_pseudo_header_sum_stays_right():
    """One valid segment in 65,535 has a checksum equal to its pseudo-header sum: it is
    "completed", which leaves it as it was."""
    for seq in range(200_000):
        pkt = build(bytes([198, 18, 5, 1]), bytes([198, 18, 0, 2]), 1, 2, seq, 4, PSH | ACK, 5,
                    payload=b"hello world")
        field = struct.unpack_from("!H", pkt.buf, pkt.tcp_off + 16)[0]
        if (field - P._pseudo_sum(pkt.buf, pkt.tcp_off)) % 0xFFFF == 0:
            break
    else:
        pytest.fail("no such segment among the sequence numbers tried")
    before = pkt.to_bytes()
    P.repair_checksums(pkt)
    assert pkt.to_bytes() == before and P.tcp_checksum_ok(pkt)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_raw_flow_key_agrees_with_decode(name):
    raw = bytes(SAMPLES[name])
    pkt = decode(raw)
    found = P.raw_flow_key(raw)
    if name.startswith("v6-") and pkt.tcp_off != 40:
        assert found is None   # extension headers: the full decode finds TCP
        return
    assert found == (P.flow_key_bytes(pkt.src, pkt.sport, pkt.dst, pkt.dport), pkt.flags)


@pytest.mark.parametrize("raw", [b"", b"\x45" * 20, bytes(SAMPLES["v4-empty"])[:30],
                                 bytes(IP(dst="198.18.0.2", proto=17) / (b"x" * 40))])
def test_raw_flow_key_declines_what_it_cannot_read(raw):
    assert P.raw_flow_key(raw) is None
