"""The kernel skip filter, compiled by the real libpcap and run on real frames.

A capture worker adds the connections its owners skip to its kernel filter: their packets
must be dropped there, except SYN, FIN and RST (the owner learns from those that the
connection ended or its 4-tuple came back), and nothing of any other connection may be
dropped, not even one that differs in a single field.
"""

from __future__ import annotations

import ipaddress

import pcap
import pytest
from scapy.layers.inet import IP, TCP, IPOption_NOP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from tcpcopy.capture import packet as pk
from tcpcopy.cluster.shard import combine_filters, skip_flows_filter

BASE = "tcp and (dst port 80 or dst port 6379)"


def frame(src: str, dst: str, sport: int, dport: int, flags: str = "A", options: bool = False) -> bytes:
    if ":" in src:
        l3 = IPv6(src=src, dst=dst)
    else:
        l3 = IP(src=src, dst=dst, options=[IPOption_NOP()] * 4 if options else [])
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / l3 / TCP(sport=sport, dport=dport, flags=flags)
                 / b"GET / HTTP/1.1\r\n")


def key(src: str, dst: str, sport: int, dport: int) -> bytes:
    return pk.flow_key_bytes(ipaddress.ip_address(src).packed, sport, ipaddress.ip_address(dst).packed, dport)


def passes(flt: str, data: bytes) -> bool:
    return bool(pcap.bpf(flt.encode(), pcap.DLT_EN10MB).filter(data))


SKIPPED = [("198.18.0.10", "198.18.1.2", 40001, 80), ("2001:2::10", "2001:2::2", 40002, 80)]
FILTER = combine_filters(BASE, skip_flows_filter([key(*flow) for flow in SKIPPED]))


@pytest.mark.parametrize("flow", SKIPPED, ids=["v4", "v6"])
@pytest.mark.parametrize("flags", ["A", "PA"])
def test_data_and_acks_of_a_skipped_connection_are_dropped(flow, flags):
    assert passes(BASE, frame(*flow, flags))
    assert not passes(FILTER, frame(*flow, flags))


@pytest.mark.parametrize("flow", SKIPPED, ids=["v4", "v6"])
@pytest.mark.parametrize("flags", ["S", "FA", "R", "RA"])
def test_syn_fin_and_rst_of_a_skipped_connection_still_pass(flow, flags):
    assert passes(FILTER, frame(*flow, flags))


@pytest.mark.parametrize("other", [
    ("198.18.0.11", "198.18.1.2", 40001, 80),    # another client address
    ("198.18.0.10", "198.18.1.3", 40001, 80),    # another server address
    ("198.18.0.10", "198.18.1.2", 40003, 80),    # another client port
    ("198.18.0.10", "198.18.1.2", 40001, 6379),  # another server port
    ("2001:2::11", "2001:2::2", 40002, 80),
    ("2001:2::10", "2001:2::2", 40002, 6379),
], ids=["v4-client", "v4-server", "v4-port", "v4-server-port", "v6-client", "v6-server-port"])
def test_a_connection_that_differs_in_one_field_is_kept(other):
    assert passes(FILTER, frame(*other, "PA"))


def test_ipv4_options_do_not_hide_a_skipped_connections_ports():
    flow = SKIPPED[0]
    assert passes(BASE, frame(*flow, "PA", options=True))
    assert not passes(FILTER, frame(*flow, "PA", options=True))


def test_no_skipped_connection_leaves_the_filter_unchanged():
    assert skip_flows_filter([]) == ""
    assert combine_filters(BASE, skip_flows_filter([])) == f"({BASE})"


def test_the_largest_skip_list_compiles_within_the_kernels_program_limit():
    """KERNEL_SKIP_MAX connections, IPv4 and IPv6 mixed: libpcap compiles it (and the
    kernel takes programs up to 4,096 instructions)."""
    from tcpcopy.capture.worker import KERNEL_SKIP_MAX
    keys = [key(f"198.18.{i // 250}.{i % 250 + 1}", "198.18.1.2", 30000 + i, 80) for i in range(KERNEL_SKIP_MAX // 2)]
    keys += [key(f"2001:2::{i + 1:x}", "2001:2::2", 30000 + i, 80) for i in range(KERNEL_SKIP_MAX // 2)]
    flt = combine_filters(BASE, skip_flows_filter(keys))
    assert not passes(flt, frame("198.18.0.1", "198.18.1.2", 30000, 80, "PA"))
    assert passes(flt, frame("198.18.0.1", "198.18.1.2", 30001, 80, "PA"))


def test_a_key_of_another_length_is_refused():
    with pytest.raises(ValueError, match="12 .IPv4. or 36 .IPv6. bytes"):
        skip_flows_filter([b"\x00" * 8])


# --- the sample of compared sessions ------------------------------------------------------

@pytest.mark.parametrize("percent", [1, 10, 50, 99])
def test_the_online_answers_filter_picks_exactly_the_sampled_clients(percent):
    """The capture worker keeps the online server's answers to a client (the destination)
    exactly when the owner compares that client's connection."""
    from tcpcopy.cluster.shard import compare_sampled, online_answers_filter
    program = pcap.bpf(combine_filters("tcp src port 80", online_answers_filter(percent)).encode(),
                       pcap.DLT_EN10MB)
    picked = total = 0
    for i in range(150):
        port = 1024 + i * 397
        for address in (f"198.18.{i % 3}.{(i * 7) % 256}", f"2001:2::{i * 13 % 65536:x}"):
            packed = ipaddress.ip_address(address).packed
            server = "2001:2::2" if ":" in address else "198.18.1.2"
            sampled = compare_sampled(packed, port, percent)
            assert bool(program.filter(frame(server, address, 80, port, "PA"))) == sampled, (address, port)
            picked, total = picked + sampled, total + 1
    assert abs(picked / total - percent / 100) < 0.12


def test_no_sample_and_every_session():
    from tcpcopy.cluster.shard import compare_sampled, online_answers_filter
    assert online_answers_filter(100) == "" and compare_sampled(b"\x01\x02", 5, 100)
    assert not passes(combine_filters("tcp", online_answers_filter(0)), frame("198.18.0.1", "198.18.0.2", 80, 4000))
    assert not compare_sampled(b"\x01\x02", 5, 0)
