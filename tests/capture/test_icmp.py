"""ICMP(v6) errors quoting a TCP packet, as ``tcpcopy --check`` reads them (capture/icmp.py)."""

from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6TimeExceeded, IPv6

from tcpcopy.capture.icmp import parse_icmp_error

PROBE = IP(src="198.18.1.10", dst="198.18.0.2") / TCP(sport=20001, dport=8080, flags="S")
PROBE6 = IPv6(src="2001:2::a", dst="2001:2:0:1::2") / TCP(sport=20001, dport=8080, flags="S")


def test_an_ipv4_unreachable_names_its_sender_and_the_quoted_flow():
    error = parse_icmp_error(bytes(IP(src="198.18.0.254", dst="198.18.1.10") / ICMP(type=3, code=13)
                                   / bytes(PROBE)[:28]))
    assert (error.sender, error.src, error.dst, error.sport, error.dport) == (
        "198.18.0.254", bytes([198, 18, 1, 10]), bytes([198, 18, 0, 2]), 20001, 8080)
    assert error.describe() == ("ICMP communication administratively prohibited (type 3 code 13) "
                                "from 198.18.0.254")


def test_ipv6_errors_are_read_too():
    unreachable = parse_icmp_error(bytes(IPv6(src="2001:2::fe", dst="2001:2::a")
                                         / ICMPv6DestUnreach(code=4) / bytes(PROBE6)[:48]))
    assert unreachable.describe() == "ICMPv6 port unreachable (type 1 code 4) from 2001:2::fe"
    assert (unreachable.sport, unreachable.dport) == (20001, 8080)
    hops = parse_icmp_error(bytes(IPv6(src="2001:2::fe", dst="2001:2::a") / ICMPv6TimeExceeded()
                                  / bytes(PROBE6)[:48]))
    assert hops.describe().startswith("ICMPv6 hop limit exceeded in transit")


def test_what_is_not_an_error_about_tcp_is_none():
    echo = IP(src="198.18.0.254", dst="198.18.1.10") / ICMP(type=8)
    about_udp = IP(src="198.18.0.254", dst="198.18.1.10") / ICMP(type=3, code=3) / bytes(
        IP(src="198.18.1.10", dst="198.18.0.2", proto=17) / (b"\0" * 8))
    for packet in (bytes(echo), bytes(about_udp), bytes(PROBE), b"", bytes(PROBE)[:1]):
        assert parse_icmp_error(packet) is None
    cut_short = bytes(IP(src="198.18.0.254", dst="198.18.1.10") / ICMP(type=3, code=1) / bytes(PROBE)[:21])
    assert parse_icmp_error(cut_short) is None
