"""The -x, -s and -c flags as a TCPCopy user writes them, and the BPF filter they produce.

Every mistake must be an OptionError that names the flag and shows the form to use.
"""

from __future__ import annotations

import ipaddress

import pcap
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpcopy.capture import packet as pk
from tcpcopy.cluster.options import (DEFAULT_INTERCEPT_PORT, InterceptAddress, Mapping,
                                     OptionError, capture_filter, CARRIES_SOMETHING, parse_client_pool,
                                     parse_baselines, parse_intercepts, parse_mappings)

X_FORM = "[onlineIP:]onlinePort-targetIP:targetPort"
S_FORM = "ip[:port]"


# ================================================================= -x

def test_x_port_only_maps_any_online_address():
    assert parse_mappings("80-198.18.0.2:8080") == (Mapping(None, 80, "198.18.0.2", 8080),)


def test_x_with_online_ip():
    assert parse_mappings("198.18.1.1:80-198.18.0.2:8080") == (
        Mapping("198.18.1.1", 80, "198.18.0.2", 8080),)


def test_x_several_comma_separated_mappings_keep_their_order():
    assert parse_mappings("80-198.18.0.2:8080,198.18.1.1:443-198.18.0.3:8443, 3306-198.18.0.4:3306") == (
        Mapping(None, 80, "198.18.0.2", 8080),
        Mapping("198.18.1.1", 443, "198.18.0.3", 8443),
        Mapping(None, 3306, "198.18.0.4", 3306))


def test_x_ipv6_addresses_in_brackets():
    assert parse_mappings("[2001:2::10]:80-[2001:2::2]:8080") == (
        Mapping("2001:2::10", 80, "2001:2::2", 8080),)


def test_x_ipv6_target_with_any_online_address():
    assert parse_mappings("80-[2001:2::2]:8080") == (Mapping(None, 80, "2001:2::2", 8080),)


def test_x_ipv6_addresses_are_normalised():
    (m,) = parse_mappings("[2001:0002:0:0::0010]:80-[2001:2:0::2]:8080")
    assert (m.online_ip, m.target_ip) == ("2001:2::10", "2001:2::2")


@pytest.mark.parametrize("online", ["0", "0.0.0.0"])
def test_x_online_ip_zero_means_any_local_address(online):
    (m,) = parse_mappings(f"{online}:80-198.18.0.2:8080")
    assert m.online_ip is None
    assert m.matches("198.18.1.1", 80) and m.matches("10.1.2.3", 80)
    assert not m.matches("198.18.1.1", 81)


def test_x_mapping_with_online_ip_matches_only_that_address():
    (m,) = parse_mappings("198.18.1.1:80-198.18.0.2:8080")
    assert m.matches("198.18.1.1", 80)
    assert not m.matches("198.18.1.2", 80)
    assert not m.matches("198.18.1.1", 8080)


def test_x_ipv6_unspecified_online_ip_means_any_local_address():
    (m,) = parse_mappings("[::]:80-[2001:2::2]:8080")
    assert m.online_ip is None


X_ERRORS = [
    ("80:198.18.0.2:8080", "missing '-'"),
    ("80 198.18.0.2:8080", "missing '-'"),
    ("80-8080", "missing target address"),
    ("80-:8080", "empty target address"),
    ("80-198.18.0.2", "missing target port"),
    ("0-198.18.0.2:8080", "online port 0"),
    ("80-198.18.0.2:0", "target port 0"),
    ("65536-198.18.0.2:8080", "online port 65536"),
    ("80-198.18.0.2:65536", "target port 65536"),
    ("http-198.18.0.2:8080", "online port in letters"),
    ("80-198.18.0.2:http", "target port in letters"),
    ("80-198.18.0.2:-1", "negative port"),
    ("80-198.18.0.300:8080", "bad target address"),
    ("198.18.1:80-198.18.0.2:8080", "bad online address"),
    ("80-target.example:8080", "host name instead of address"),
    ("[2001:2::10]:80-[2001:2::zz]:8080", "bad IPv6 address"),
    ("[2001:2::10]-[2001:2::2]:8080", "IPv6 online address without port"),
    ("", "empty"),
    (" , ,", "only separators"),
]


@pytest.mark.parametrize("value, why", X_ERRORS, ids=[why for _, why in X_ERRORS])
def test_x_error_names_the_flag_and_shows_the_expected_form(value, why):
    with pytest.raises(OptionError) as err:
        parse_mappings(value)
    assert str(err.value).startswith("-x: ")
    assert X_FORM in str(err.value)


@pytest.mark.parametrize("value", ["198.18.1.1:80-[2001:2::2]:8080",
                                   "[2001:2::10]:80-198.18.0.2:8080"])
def test_x_mixed_ip_versions_are_rejected(value):
    with pytest.raises(OptionError, match=r"^-x: .*same IP version"):
        parse_mappings(value)


def test_x_mixed_ip_versions_error_shows_the_expected_form():
    with pytest.raises(OptionError, match=r"\[onlineIP:\]onlinePort-targetIP:targetPort"):
        parse_mappings("198.18.1.1:80-[2001:2::2]:8080")


def test_x_port_with_superscript_digit_is_an_option_error():
    with pytest.raises(OptionError, match="^-x: "):
        parse_mappings("8²-198.18.0.2:8080")


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(alphabet=st.sampled_from("0123456789abcdefx.:-,[] "), max_size=40))
def test_x_any_ascii_text_gives_mappings_or_an_option_error(value):
    try:
        mappings = parse_mappings(value)
    except OptionError as err:
        assert str(err).startswith("-x: ")
        return
    assert mappings and all(isinstance(m, Mapping) for m in mappings)
    for m in mappings:
        assert 0 < m.online_port < 65536 and 0 < m.target_port < 65536
        ipaddress.ip_address(m.target_ip)


# ================================================================= -s

def test_s_bare_ipv4_gets_the_default_port():
    assert parse_intercepts("198.18.2.1") == (InterceptAddress("198.18.2.1", 36524),)
    assert DEFAULT_INTERCEPT_PORT == 36524


def test_s_ipv4_with_port():
    assert parse_intercepts("198.18.2.1:5000") == (InterceptAddress("198.18.2.1", 5000),)


def test_s_bare_ipv6_gets_the_default_port():
    assert parse_intercepts("2001:2::1") == (InterceptAddress("2001:2::1", 36524),)


def test_s_bracketed_ipv6_with_port():
    assert parse_intercepts("[2001:2::1]:5000") == (InterceptAddress("2001:2::1", 5000),)


def test_s_bracketed_ipv6_without_port_gets_the_default_port():
    assert parse_intercepts("[2001:2::1]") == (InterceptAddress("2001:2::1", 36524),)


def test_s_custom_default_port_applies_only_where_no_port_is_given():
    assert parse_intercepts("198.18.2.1,198.18.2.2:5000,2001:2::1", default_port=40000) == (
        InterceptAddress("198.18.2.1", 40000),
        InterceptAddress("198.18.2.2", 5000),
        InterceptAddress("2001:2::1", 40000))


@pytest.mark.parametrize("value", [
    "198.18.2.1,198.18.2.1",
    "198.18.2.1,198.18.2.1:36524",
    "[2001:2::1]:5000,[2001:2:0::1]:5000",
])
def test_s_the_same_intercept_twice_is_rejected(value):
    with pytest.raises(OptionError, match="^-s: .*twice"):
        parse_intercepts(value)


def test_s_same_address_on_two_ports_is_two_intercepts():
    assert len(parse_intercepts("198.18.2.1:5000,198.18.2.1:5001")) == 2


@pytest.mark.parametrize("value, endpoint, text", [
    ("198.18.2.1", "tcp://198.18.2.1:36524", "198.18.2.1:36524"),
    ("198.18.2.1:5000", "tcp://198.18.2.1:5000", "198.18.2.1:5000"),
    ("2001:2::1", "tcp://[2001:2::1]:36524", "[2001:2::1]:36524"),
    ("[2001:2::1]:5000", "tcp://[2001:2::1]:5000", "[2001:2::1]:5000"),
])
def test_s_zmq_endpoint_and_display_text(value, endpoint, text):
    (address,) = parse_intercepts(value)
    assert address.zmq_endpoint == endpoint
    assert str(address) == text


@pytest.mark.parametrize("value", ["", ",", "198.18.2.1:0", "198.18.2.1:65536",
                                   "198.18.2.1:port", "198.18.2", "intercept.example",
                                   "[2001:2::1]:x"])
def test_s_error_names_the_flag_and_shows_the_expected_form(value):
    with pytest.raises(OptionError) as err:
        parse_intercepts(value)
    assert str(err.value).startswith("-s: ")
    assert S_FORM in str(err.value)


# ================================================================= -c

def test_c_single_addresses_keep_their_order():
    assert parse_client_pool("198.18.3.7,198.18.3.5,2001:3::9") == (
        "198.18.3.7", "198.18.3.5", "2001:3::9")


def test_c_dot_x_expands_to_1_through_254():
    pool = parse_client_pool("198.18.3.x")
    assert len(pool) == 254
    assert pool[0] == "198.18.3.1" and pool[-1] == "198.18.3.254"
    assert pool == tuple(f"198.18.3.{i}" for i in range(1, 255))


def test_c_target_addresses_are_excluded():
    pool = parse_client_pool("198.18.0.x,198.18.9.9", exclude={"198.18.0.2", "198.18.9.9"})
    assert len(pool) == 253
    assert "198.18.0.2" not in pool and "198.18.9.9" not in pool


def test_c_duplicates_are_folded_keeping_first_position():
    assert parse_client_pool("198.18.3.5,198.18.3.x,198.18.3.5") == tuple(
        ["198.18.3.5"] + [f"198.18.3.{i}" for i in range(1, 255) if i != 5])


def test_c_ipv6_addresses_are_normalised_so_duplicates_fold():
    assert parse_client_pool("2001:3::9,2001:3:0::9,[2001:3::9]") == ("2001:3::9",)


def test_c_star_is_rejected_with_a_message_saying_what_to_use():
    with pytest.raises(OptionError, match=r"^-c: '\*'.*a\.b\.c\.x"):
        parse_client_pool("198.18.3.1,*")


@pytest.mark.parametrize("value", ["::ffff:198.18.3.x", "2001:db8::x", "2001:db8::1.x"])
def test_c_dot_x_on_ipv6_is_rejected(value):
    with pytest.raises(OptionError, match="^-c: "):
        parse_client_pool(value)


def test_c_dot_x_on_an_ipv4_mapped_ipv6_address_says_it_is_for_ipv4():
    with pytest.raises(OptionError, match="for IPv4"):
        parse_client_pool("::ffff:198.18.3.x")


@pytest.mark.parametrize("value, exclude", [
    ("", set()),
    (" , ", set()),
    ("198.18.0.2", {"198.18.0.2"}),
])
def test_c_empty_result_is_rejected(value, exclude):
    with pytest.raises(OptionError, match="^-c: no usable client address"):
        parse_client_pool(value, exclude=exclude)


@pytest.mark.parametrize("value", ["198.18.3.256", "client.example", "198.18.3.y"])
def test_c_bad_address_names_the_flag_and_the_accepted_forms(value):
    with pytest.raises(OptionError, match=r"^-c: .*a\.b\.c\.x"):
        parse_client_pool(value)


def test_c_malformed_dot_x_entry_is_named_as_typed():
    with pytest.raises(OptionError, match="198.18.x"):
        parse_client_pool("198.18.x")


# ================================================================= capture filter

def ethernet(src: str, dst: str, sport: int, dport: int, flags: int = pk.SYN, *,
             payload: bytes = b"", options: bytes = b"", pad_to: int = 0) -> bytes:
    """An Ethernet frame of a TCP packet (a SYN unless told), as libpcap hands it to the
    filter; ``pad_to`` pads the frame as a NIC pads a short one (60 bytes)."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    ethertype = b"\x08\x00" if s.version == 4 else b"\x86\xdd"
    packet = pk.build(s.packed, d.packed, sport, dport, 1000, 0, flags, 65535, payload=payload, options=options)
    frame = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + ethertype + packet.to_bytes()
    return frame + b"\x00" * max(0, pad_to - len(frame))


def compiles(expr: str) -> pcap.bpf:
    return pcap.bpf(expr.encode(), 1)   # 1: DLT_EN10MB (Ethernet)


def content(terms: str) -> str:
    """A mapping term of the capture filter, pure ACKs left out."""
    return f"(({terms}) and {CARRIES_SOMETHING})"


def test_filter_for_one_mapping_without_online_ip():
    assert capture_filter(parse_mappings("80-198.18.0.2:8080")) == f"tcp and ({content('(dst port 80)')})"


def test_filter_for_one_mapping_with_online_ip():
    assert capture_filter(parse_mappings("198.18.1.1:80-198.18.0.2:8080")) == (
        f"tcp and ({content('(dst port 80 and dst host 198.18.1.1)')})")


def test_filter_for_several_mappings_ors_them_once_each():
    mappings = parse_mappings("80-198.18.0.2:8080,198.18.1.1:443-198.18.0.3:8443,"
                              "80-198.18.0.4:8080,[2001:2::10]:80-[2001:2::2]:8080")
    assert capture_filter(mappings) == (
        "tcp and (" + content("(dst port 80) or (dst port 443 and dst host 198.18.1.1)"
                              " or (dst port 80 and dst host 2001:2::10)") + ")")


def test_filter_ands_the_user_filter():
    mappings = parse_mappings("80-198.18.0.2:8080")
    assert capture_filter(mappings, "src net 10.0.0.0/8 or vlan") == (
        f"(tcp and ({content('(dst port 80)')})) and (src net 10.0.0.0/8 or vlan)")


def test_server_first_ports_and_all_acks_keep_every_pure_ack():
    mappings = parse_mappings("80-198.18.0.2:8080,25-198.18.0.2:2525")
    assert capture_filter(mappings) == f"tcp and ({content('(dst port 80)')} or ((dst port 25)))"
    assert capture_filter(mappings, all_acks=True) == "tcp and (((dst port 80) or (dst port 25)))"


@pytest.mark.parametrize("src, dst", [("198.18.5.5", "198.18.1.7"), ("2001:2::5", "2001:2::10")],
                         ids=["ipv4", "ipv6"])
def test_pure_client_acks_stay_in_the_kernel_and_everything_replayed_passes(src, dst):
    bpf = compiles(capture_filter(parse_mappings("80-198.18.0.2:8080,[2001:2::10]:80-[2001:2::2]:8080,"
                                                 "3306-198.18.0.2:3306")))
    timestamps = b"\x01\x01\x08\x0a" + bytes(8)
    assert not bpf.filter(ethernet(src, dst, 40000, 80, pk.ACK))
    assert not bpf.filter(ethernet(src, dst, 40000, 80, pk.ACK, options=timestamps))
    assert not bpf.filter(ethernet(src, dst, 40000, 80, pk.ACK, pad_to=60))       # padding is no payload
    assert bpf.filter(ethernet(src, dst, 40000, 80, pk.SYN))
    assert bpf.filter(ethernet(src, dst, 40000, 80, pk.FIN | pk.ACK))
    assert bpf.filter(ethernet(src, dst, 40000, 80, pk.RST))
    assert bpf.filter(ethernet(src, dst, 40000, 80, pk.ACK, payload=b"G"))
    assert bpf.filter(ethernet(src, dst, 40000, 80, pk.ACK | pk.PSH, payload=b"GET /", options=timestamps))
    assert bpf.filter(ethernet("198.18.5.5", "198.18.1.7", 40000, 3306, pk.ACK))  # the server speaks first


@pytest.mark.parametrize("x, user", [
    ("80-198.18.0.2:8080", None),
    ("198.18.1.1:80-198.18.0.2:8080", None),
    ("80-198.18.0.2:8080,198.18.1.1:443-198.18.0.3:8443,3306-198.18.0.4:3306", None),
    ("[2001:2::10]:80-[2001:2::2]:8080,80-198.18.0.2:8080", None),
    ("80-198.18.0.2:8080", "src net 10.0.0.0/8 or src net 2001:db8::/32"),
    ("198.18.1.1:80-198.18.0.2:8080,443-198.18.0.3:8443", "not src host 198.18.1.9"),
    (",".join(f"{p}-198.18.0.2:{p}" for p in range(8000, 8100)), None),
], ids=["port", "online-ip", "several", "ipv6", "user-F", "online-ip+user-F", "100-maps"])
def test_libpcap_compiles_every_produced_filter(x, user):
    compiles(capture_filter(parse_mappings(x), user))


def test_filter_keeps_client_packets_and_drops_responses_and_other_ports():
    bpf = compiles(capture_filter(parse_mappings("80-198.18.0.2:8080,198.18.1.1:443-198.18.0.3:8443,"
                                                 "[2001:2::10]:22-[2001:2::2]:2222")))
    assert bpf.filter(ethernet("198.18.5.5", "198.18.1.7", 40000, 80))          # any address
    assert bpf.filter(ethernet("198.18.5.5", "198.18.1.1", 40000, 443))         # its address
    assert not bpf.filter(ethernet("198.18.5.5", "198.18.1.7", 40000, 443))     # other address
    assert not bpf.filter(ethernet("198.18.1.7", "198.18.5.5", 80, 40000))      # a response
    assert not bpf.filter(ethernet("198.18.5.5", "198.18.1.7", 40000, 81))      # other port
    assert bpf.filter(ethernet("2001:2::5", "2001:2::10", 40000, 22))
    assert not bpf.filter(ethernet("2001:2::5", "2001:2::11", 40000, 22))


def test_user_filter_narrows_what_is_captured():
    bpf = compiles(capture_filter(parse_mappings("80-198.18.0.2:8080"), "src net 198.18.5.0/24"))
    assert bpf.filter(ethernet("198.18.5.5", "198.18.1.7", 40000, 80))
    assert not bpf.filter(ethernet("198.18.6.5", "198.18.1.7", 40000, 80))


# ================================================================= --baseline

@pytest.mark.parametrize("value, fault", [
    ("81-198.18.2.2:8081", "not the online side of any -x mapping"),
    ("80-198.18.2.2:8080", "is the -x target itself"),
    ("80-[2001:2::2]:8081", "same IP version"),
    ("80-198.18.2.2:8081,80-198.18.2.3:8081", "one baseline per -x mapping"),
    ("80-:8081", "is not an IP address"),
    ("80-8081", "needs an address"),
])
def test_a_baseline_that_cannot_be_used_is_named_with_the_fix(value, fault):
    with pytest.raises(OptionError, match=fault) as caught:
        parse_baselines(value, parse_mappings("80-198.18.2.2:8080"))
    assert str(caught.value).startswith("--baseline")


def test_a_baseline_names_the_online_side_of_its_mapping():
    mappings = parse_mappings("80-198.18.2.2:8080,198.18.1.1:6379-198.18.2.2:6379")
    assert parse_baselines("80-198.18.2.2:8081,198.18.1.1:6379-198.18.2.3:6379", mappings) == (
        Mapping(None, 80, "198.18.2.2", 8081), Mapping("198.18.1.1", 6379, "198.18.2.3", 6379))
