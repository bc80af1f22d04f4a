"""The BPF shard expressions, compiled by the real libpcap and run on real frames.

A capture worker and an intercept keep only their slice of the traffic with a kernel filter,
and that filter must agree with ``flow_shard`` exactly: two workers seeing one packet would
copy it twice, none seeing it would lose it, and an intercept that filters a response away
from the owner's registration loses the session's feedback. So for every shard count the
filters are checked to be disjoint and covering, and to pick ``flow_shard``'s shard, on
Ethernet, raw-IP and Linux cooked (SLL, SLL2) link types.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections import Counter
from functools import lru_cache

import pcap
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1Q, Ether

from tcpcopy.cluster.shard import (capture_shard_filter, combine_filters, flow_shard,
                                   intercept_shard_filter, parse_shard)

DLT_LINUX_SLL2 = 276
LINKS = {"ethernet": pcap.DLT_EN10MB, "raw": pcap.DLT_RAW,
         "sll": pcap.DLT_LINUX_SLL, "sll2": DLT_LINUX_SLL2}
COUNTS = range(1, 9)
SIDES = {"capture": capture_shard_filter, "intercept": intercept_shard_filter}

V4_NET = ipaddress.ip_network("198.18.0.0/15")
V6_NET = ipaddress.ip_network("2001:2::/48")
EDGE_PORTS = (0, 1023, 1024, 65535)
EDGE_LAST_BYTES = (0, 255)
MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


# --- frames ---------------------------------------------------------------------------------

def ether(l3) -> bytes:
    return bytes(Ether(**MAC) / l3)


def tcp_frame(src: str, dst: str, sport: int, dport: int, *, ip_options: bool = False) -> bytes:
    """An Ethernet frame of one TCP segment; IPv4 options move the TCP header (IHL 6)."""
    if ":" in src:
        return ether(IPv6(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="S"))
    options = [IPOption_NOP()] * 4 if ip_options else []
    return ether(IP(src=src, dst=dst, options=options) / TCP(sport=sport, dport=dport, flags="S"))


def on_link(frame: bytes, dlt: int) -> bytes:
    """The same IP packet as a capture on ``dlt`` would hold it."""
    ethertype, ip = frame[12:14], frame[14:]
    if dlt == pcap.DLT_EN10MB:
        return frame
    if dlt == pcap.DLT_RAW:
        return ip
    if dlt == pcap.DLT_LINUX_SLL:   # packet type, ARPHRD_ETHER, address length, address, protocol
        return struct.pack("!HHH8s", 0, 1, 6, frame[6:12]) + ethertype + ip
    if dlt == DLT_LINUX_SLL2:       # protocol, reserved, ifindex, ARPHRD_ETHER, type, len, addr
        return ethertype + struct.pack("!HIHBB8s", 0, 2, 1, 0, 6, frame[6:12]) + ip
    raise AssertionError(dlt)


def address(rng: random.Random, net, last_byte: int | None = None) -> str:
    value = int(net.network_address) + rng.randrange(net.num_addresses)
    if last_byte is not None:
        value = (value & ~0xFF) | last_byte
    return str(ipaddress.ip_address(value))


def endpoints(rng: random.Random, net, n: int):
    """Every edge port with every edge last byte on both ends, then ``n`` random ones."""
    edges = [(p, b) for p in EDGE_PORTS for b in EDGE_LAST_BYTES]
    for (sport, sbyte), (dport, dbyte) in zip(edges, reversed(edges)):
        yield address(rng, net, sbyte), address(rng, net, dbyte), sport, dport
    for _ in range(n):
        yield (address(rng, net), address(rng, net),
               rng.choice(EDGE_PORTS + (rng.randrange(65536),)), rng.randrange(65536))


def packed(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


# --- filters --------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def compiled(expr: str, dlt: int):
    return pcap.bpf(expr.encode(), dlt)


def matches(expr: str, frame: bytes, dlt: int) -> bool:
    """Whether libpcap's filter for ``expr`` passes ``frame`` ("" passes everything)."""
    return not expr or bool(compiled(expr, dlt).filter(frame))


def shards_matching(side: str, count: int, frame: bytes, dlt: int) -> list[int]:
    return [k for k in range(count) if matches(SIDES[side](k, count), frame, dlt)]


def assert_partition(frame: bytes, dlt: int, src: str, sport: int, dst: str, dport: int):
    """Exactly one shard per side, for every count, and it is ``flow_shard``'s."""
    for count in COUNTS:
        assert shards_matching("capture", count, frame, dlt) == [
            flow_shard(packed(src), sport, count)], (src, sport, count)
        assert shards_matching("intercept", count, frame, dlt) == [
            flow_shard(packed(dst), dport, count)], (dst, dport, count)


# --- TCP: disjoint, covering, and the same as flow_shard ------------------------------------

V4_CASES = [(s, d, sp, dp, i % 5 == 0)
            for i, (s, d, sp, dp) in enumerate(endpoints(random.Random(4), V4_NET, 200))]
V6_CASES = [(s, d, sp, dp, False) for s, d, sp, dp in endpoints(random.Random(6), V6_NET, 200)]
V4_FRAMES = [(tcp_frame(s, d, sp, dp, ip_options=o), s, sp, d, dp) for s, d, sp, dp, o in V4_CASES]
V6_FRAMES = [(tcp_frame(s, d, sp, dp), s, sp, d, dp) for s, d, sp, dp, _ in V6_CASES]


@pytest.mark.parametrize("link", LINKS)
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_each_tcp_packet_is_in_exactly_the_flow_shard_of_each_side(family, link):
    dlt = LINKS[link]
    for frame, src, sport, dst, dport in V4_FRAMES if family == "ipv4" else V6_FRAMES:
        assert_partition(on_link(frame, dlt), dlt, src, sport, dst, dport)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.sampled_from([V4_NET, V6_NET]), st.randoms(use_true_random=False),
       st.integers(0, 65535), st.integers(0, 65535), st.integers(0, 255), st.integers(0, 255))
def test_any_endpoints_partition_on_ethernet(net, rng, sport, dport, sbyte, dbyte):
    src, dst = address(rng, net, sbyte), address(rng, net, dbyte)
    assert_partition(tcp_frame(src, dst, sport, dport), pcap.DLT_EN10MB, src, sport, dst, dport)


def test_a_first_ipv4_fragment_goes_by_its_ports():
    """Offset 0 holds the TCP header, so the shard reads its ports like a whole packet's."""
    frame = ether(IP(src="198.18.1.7", dst="198.18.2.9", flags="MF") / TCP(sport=40000, dport=80))
    assert_partition(frame, pcap.DLT_EN10MB, "198.18.1.7", 40000, "198.18.2.9", 80)


# --- packets without reachable ports: all on shard 0 ----------------------------------------

V4 = {"src": "198.18.1.7", "dst": "198.18.2.9"}
V6 = {"src": "2001:2::1:7", "dst": "2001:2::2:9"}
WITHOUT_PORTS = {
    "udp": IP(**V4) / UDP(sport=40001, dport=53),
    "icmp": IP(**V4) / ICMP(),
    "ipv4 later fragment of tcp": IP(**V4, proto=6, frag=1) / (b"\x9c\x41\x00\x50" + bytes(4)),
    "ipv6 udp": IPv6(**V6) / UDP(sport=40001, dport=53),
    "icmpv6": IPv6(**V6) / ICMPv6EchoRequest(),
    "ipv6 no next header, empty": IPv6(**V6, nh=59),
    "ipv6 fragment header then tcp": IPv6(**V6) / IPv6ExtHdrFragment() / TCP(sport=40001),
    "ipv6 hop-by-hop then tcp": IPv6(**V6) / IPv6ExtHdrHopByHop() / TCP(sport=40001),
}
ETHERNET_ONLY = {
    "arp": ARP(psrc=V4["src"], pdst=V4["dst"]),
    "vlan-tagged tcp": Dot1Q(vlan=7) / IP(**V4) / TCP(sport=40001, dport=80),
}


def assert_only_shard_0(frame: bytes, dlt: int):
    for side in SIDES:
        for count in COUNTS:
            assert shards_matching(side, count, frame, dlt) == [0], (side, count)


@pytest.mark.parametrize("link", LINKS)
@pytest.mark.parametrize("name", WITHOUT_PORTS)
def test_ip_packets_without_reachable_ports_go_to_shard_0_on_both_sides(name, link):
    """Never lost: the union of the shards stays the unsharded filter. Non-TCP packets and
    later fragments are not replayed anyway; IPv6 extension headers are out of BPF's reach,
    so such TCP packets go to shard 0 whatever their ports."""
    dlt = LINKS[link]
    assert_only_shard_0(on_link(ether(WITHOUT_PORTS[name]), dlt), dlt)


@pytest.mark.parametrize("name", ETHERNET_ONLY)
def test_non_ip_and_tagged_frames_go_to_shard_0(name):
    assert_only_shard_0(ether(ETHERNET_ONLY[name]), pcap.DLT_EN10MB)


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_a_packet_cut_before_its_ports_is_rejected_by_every_shard(family):
    """BPF rejects a packet when a load runs past the captured bytes, even under ``not``: a
    TCP packet cut before its ports (malformed, or a snaplen below the headers) reaches no
    shard when there are several. The unsharded filter ("", one shard) still passes it."""
    l3 = IP(**V4) / TCP(sport=40001) if family == "ipv4" else IPv6(**V6) / TCP(sport=40001)
    cut = ether(l3)[:14 + (20 if family == "ipv4" else 40)]
    for side in SIDES:
        assert shards_matching(side, 1, cut, pcap.DLT_EN10MB) == [0]
        for count in range(2, 9):
            assert shards_matching(side, count, cut, pcap.DLT_EN10MB) == [], (side, count)


# --- even spread on realistic traffic -------------------------------------------------------

def realistic_frames(family: str, n: int = 10_000, seed: int = 20240611) -> list[tuple]:
    """``n`` client flows (many addresses, Linux ephemeral ports 32768-60999), each as a
    client -> server frame and the server's answer. One scapy template is patched with
    struct: BPF reads only the bytes it is told to, so checksums do not matter."""
    rng = random.Random(seed)
    net, server = (V4_NET, "198.18.255.1") if family == "ipv4" else (V6_NET, "2001:2::ff:1")
    request = bytearray(tcp_frame(address(rng, net), server, 1, 80))
    answer = bytearray(tcp_frame(server, address(rng, net), 80, 1))
    src_at, dst_at, tcp_at = (26, 30, 34) if family == "ipv4" else (22, 38, 54)
    size = 4 if family == "ipv4" else 16
    flows = []
    for _ in range(n):
        client, port = packed(address(rng, net)), rng.randint(32768, 60999)
        port_bytes = port.to_bytes(2, "big")
        request[src_at:src_at + size], request[tcp_at:tcp_at + 2] = client, port_bytes
        answer[dst_at:dst_at + size], answer[tcp_at + 2:tcp_at + 4] = client, port_bytes
        flows.append((client, port, bytes(request), bytes(answer)))
    return flows


REALISTIC = {family: realistic_frames(family) for family in ("ipv4", "ipv6")}


@pytest.mark.parametrize("family", REALISTIC)
@pytest.mark.parametrize("count", range(2, 9))
def test_realistic_traffic_spreads_within_10_percent_of_even(count, family):
    flows = REALISTIC[family]
    for side, frame_of in (("capture", 2), ("intercept", 3)):
        per_shard = Counter()
        for flow in flows:
            [shard] = shards_matching(side, count, flow[frame_of], pcap.DLT_EN10MB)
            assert shard == flow_shard(flow[0], flow[1], count)
            per_shard[shard] += 1
        even = len(flows) / count
        assert sorted(per_shard) == list(range(count))
        assert all(0.9 <= n / even <= 1.1 for n in per_shard.values()), (side, per_shard)


# --- combined with the -x auto filter and a user -F -----------------------------------------

def test_combine_filters_ands_the_non_empty_ones_in_parentheses():
    assert combine_filters() == ""
    assert combine_filters("", "  ") == ""
    assert combine_filters("tcp") == "(tcp)"
    assert combine_filters("tcp", "", "port 80 or port 81") == "(tcp) and (port 80 or port 81)"


def test_combined_parentheses_keep_a_users_or_from_swallowing_the_rest():
    udp_81 = ether(IP(**V4) / UDP(sport=40001, dport=81))
    assert matches("tcp and port 80 or port 81", udp_81, pcap.DLT_EN10MB)   # the trap
    assert not matches(combine_filters("tcp", "port 80 or port 81"), udp_81, pcap.DLT_EN10MB)


COMBINED = {  # side: (-x auto filter, user -F, which frames pass both)
    "capture": ("tcp and (dst port 80)", "src net 198.18.0.0/16 or src net 2001:2::/48",
                lambda src, dst, sport, dport, proto: proto == "tcp" and dport == 80
                and (src.startswith("198.18.") or ":" in src)),
    "intercept": ("tcp and (src port 80)", "src host 198.19.0.80 or src host 2001:2::80",
                  lambda src, dst, sport, dport, proto: proto == "tcp" and sport == 80
                  and src in ("198.19.0.80", "2001:2::80")),
}


def mixed_frames(side: str, seed: int = 7, n: int = 60):
    """TCP and UDP, to and from port 80 or not, from inside and outside the user's -F."""
    rng = random.Random(seed)
    servers = ("198.19.0.80", "198.19.0.81") if side == "intercept" else ("198.19.0.80",)
    for i in range(n):
        v6 = i % 2 == 1
        net = V6_NET if v6 else V4_NET
        server = "2001:2::80" if v6 and rng.random() < 0.7 else (
            "2001:2::81" if v6 else rng.choice(servers))
        client, client_port = address(rng, net), rng.choice(EDGE_PORTS + (rng.randrange(65536),))
        server_port, proto = rng.choice((80, 80, 81)), rng.choice(("tcp", "tcp", "udp"))
        src, dst, sport, dport = ((client, server, client_port, server_port) if side == "capture"
                                  else (server, client, server_port, client_port))
        l3 = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
        l4 = (TCP if proto == "tcp" else UDP)(sport=sport, dport=dport)
        yield ether(l3 / l4), (client, client_port), (src, dst, sport, dport, proto)


@pytest.mark.parametrize("side", SIDES)
def test_shards_combined_with_the_auto_and_user_filters_keep_the_partition(side):
    auto, user, passes = COMBINED[side]
    for count in COUNTS:
        filters = [combine_filters(auto, user, SIDES[side](k, count)) for k in range(count)]
        seen = 0
        for frame, (client, port), fields in mixed_frames(side):
            hits = [k for k, f in enumerate(filters) if matches(f, frame, pcap.DLT_EN10MB)]
            wanted = [flow_shard(packed(client), port, count)] if passes(*fields) else []
            assert hits == wanted, (count, fields)
            seen += bool(hits)
        assert seen >= 10  # the mix does reach every branch


# --- arguments ------------------------------------------------------------------------------

def test_a_single_shard_has_no_restriction():
    assert capture_shard_filter(0, 1) == intercept_shard_filter(0, 1) == ""


@pytest.mark.parametrize("shard, count", [(4, 4), (-1, 4), (0, 0)])
def test_filters_refuse_a_shard_outside_the_count(shard, count):
    for make in SIDES.values():
        with pytest.raises(ValueError, match="shard"):
            make(shard, count)


@pytest.mark.parametrize("count", [16, 64, 255])
def test_large_counts_compile_on_every_link(count):
    for make in SIDES.values():
        for shard in (0, 1, count - 1):
            for dlt in LINKS.values():
                compiled(make(shard, count), dlt)


@pytest.mark.parametrize("text, expected", [("0/1", (0, 1)), ("3/8", (3, 8)), (" 1 / 2 ", (1, 2))])
def test_parse_shard_accepts_k_of_n(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text, fix", [
    ("8/8", "must be below the count, e.g. 0/8"),
    ("3/2", "must be below the count, e.g. 0/2"),
    ("-1/2", "must be 0 or more, e.g. 0/2"),
    ("a/b", "SHARD/COUNT, two whole numbers such as 0/2"),
    ("1", "SHARD/COUNT, two whole numbers such as 0/2"),
    ("", "SHARD/COUNT"),
    ("0/0", "count must be 1 or more, e.g. 0/1"),
])
def test_parse_shard_rejects_with_the_fix(text, fix):
    with pytest.raises(ValueError) as err:
        parse_shard(text)
    assert str(err.value).startswith(f"--shard {text}: ") and fix in str(err.value)
