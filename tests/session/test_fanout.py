"""From a captured client flow to the connections tcpcopy replays: -x, -n, -f, -r, -c, -H.

Each test builds the first packet of a captured flow and asks ``Fanout.endpoints`` what
the target will see.
"""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpcopy.capture import packet as pk
from tcpcopy.cluster.options import parse_client_pool, parse_mappings
from tcpcopy.session.engine import Endpoint
from tcpcopy.session.fanout import Fanout, FanoutOptions, copy_port, sampled_in

ONLINE = "198.18.1.1"
TARGET = "198.18.0.2"


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def syn(src: str, sport: int, dst: str = ONLINE, dport: int = 80) -> pk.Packet:
    return pk.build(ip(src), ip(dst), sport, dport, 1000, 0, pk.SYN, 65535)


def fanout(x: str = f"80-{TARGET}:8080", **options) -> Fanout:
    return Fanout(FanoutOptions(parse_mappings(x), **options))


def random_clients(n: int, seed: int) -> list[tuple[bytes, int]]:
    """n client endpoints in 198.18.0.0/15 with Linux ephemeral ports."""
    rng = random.Random(seed)
    base = int(ipaddress.ip_address("198.18.0.0"))
    return [((base + rng.randrange(1 << 17)).to_bytes(4, "big"), rng.randint(32768, 60999))
            for _ in range(n)]


# ---------------------------------------------------------------- -x

def test_one_copy_replays_to_the_mapped_target_from_the_captured_endpoint():
    assert fanout().endpoints(syn("198.18.5.5", 40000)) == [
        Endpoint(ip("198.18.5.5"), 40000, ip(TARGET), 8080)]


def test_packet_to_an_unmapped_port_is_not_copied_and_counted_as_unmapped():
    f = fanout()
    assert f.endpoints(syn("198.18.5.5", 40000, dport=81)) == []
    assert f.endpoints(syn("198.18.5.5", 40001, dport=8080)) == []
    assert f.unmapped == 2
    assert f.sampled_out == 0


def test_packet_to_another_address_of_a_mapping_with_online_ip_is_unmapped():
    f = fanout(f"{ONLINE}:80-{TARGET}:8080")
    assert f.endpoints(syn("198.18.5.5", 40000, dst="198.18.1.2")) == []
    assert f.unmapped == 1


@pytest.mark.parametrize("x", [f"80-198.18.0.3:9000,{ONLINE}:80-{TARGET}:8080",
                               f"{ONLINE}:80-{TARGET}:8080,80-198.18.0.3:9000"],
                         ids=["any-first", "online-ip-first"])
def test_mapping_with_online_ip_wins_over_any_ip_mapping_for_the_same_port(x):
    f = fanout(x)
    (to_online,) = f.endpoints(syn("198.18.5.5", 40000, dst=ONLINE))
    (to_other,) = f.endpoints(syn("198.18.5.5", 40000, dst="198.18.1.9"))
    assert (to_online.target_ip, to_online.target_port) == (ip(TARGET), 8080)
    assert (to_other.target_ip, to_other.target_port) == (ip("198.18.0.3"), 9000)


def test_ipv6_client_replays_to_ipv6_target():
    f = fanout("[2001:2::10]:80-[2001:2::2]:8080")
    assert f.endpoints(syn("2001:2::5", 40000, dst="2001:2::10")) == [
        Endpoint(ip("2001:2::5"), 40000, ip("2001:2::2"), 8080)]


@pytest.mark.parametrize("x, client, online", [
    ("80-[2001:2::2]:8080", "198.18.5.5", ONLINE),
    (f"80-{TARGET}:8080", "2001:2::5", "2001:2::10"),
], ids=["v4-client-v6-target", "v6-client-v4-target"])
def test_replayed_endpoint_never_mixes_ipv4_and_ipv6(x, client, online):
    for e in fanout(x).endpoints(syn(client, 40000, dst=online)):
        assert len(e.client_ip) == len(e.target_ip)


# ---------------------------------------------------------------- -n, -f

def test_three_copies_use_three_distinct_ports_and_copy_0_keeps_the_captured_port():
    endpoints = fanout(copies=3).endpoints(syn("198.18.5.5", 40000))
    assert len(endpoints) == 3
    assert endpoints[0].client_port == 40000
    assert len({e.client_port for e in endpoints}) == 3
    assert {(e.client_ip, e.target_ip, e.target_port) for e in endpoints} == {
        (ip("198.18.5.5"), ip(TARGET), 8080)}


def test_port_offset_1_shifts_copy_0_too():
    endpoints = fanout(copies=3, port_offset=1).endpoints(syn("198.18.5.5", 40000))
    assert endpoints[0].client_port != 40000
    assert len({e.client_port for e in endpoints}) == 3


def test_instances_with_different_port_offsets_do_not_pick_the_same_ports():
    for port in (1024, 32768, 40000, 60999, 65535):
        used = [copy_port(port, copy, offset) for offset in range(4) for copy in range(8)]
        assert len(set(used)) == len(used), port


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.integers(1, 65535), st.integers(1, 16), st.integers(0, 31))
def test_shifted_copy_ports_stay_in_1024_to_65535_and_are_distinct(port, copies, offset):
    ports = [copy_port(port, i, offset) for i in range(copies)]
    for i, p in enumerate(ports):
        if i == 0 and offset == 0:
            assert p == port
        else:
            assert 1024 <= p <= 65535
    assert len(set(ports)) == copies


@pytest.mark.parametrize("port", [65535, 65534, 65000, 64000, 1024, 1023, 443, 80, 1])
@pytest.mark.parametrize("offset", [0, 1, 31])
def test_copy_ports_near_65535_and_below_1024_stay_in_range(port, offset):
    endpoints = fanout(copies=8, port_offset=offset).endpoints(syn("198.18.5.5", port))
    shifted = endpoints[1:] if offset == 0 else endpoints
    assert all(1024 <= e.client_port <= 65535 for e in shifted)
    assert len({e.client_port for e in endpoints}) == 8


def test_copy_ports_of_one_copy_never_collide_for_different_captured_ports():
    # ports >= 1024 map one-to-one, so two sessions of one client stay apart in every copy
    for copy, offset in ((1, 0), (2, 0), (0, 1), (3, 5)):
        mapped = {copy_port(p, copy, offset) for p in range(1024, 65536)}
        assert len(mapped) == 65536 - 1024


# ---------------------------------------------------------------- -r

def test_sampling_decision_is_deterministic_per_client_endpoint():
    for client_ip, client_port in random_clients(500, seed=1):
        first = sampled_in(client_ip, client_port, 50)
        assert all(sampled_in(client_ip, client_port, 50) == first for _ in range(3))


def test_all_copies_and_all_packets_of_a_session_share_the_sampling_decision():
    f = fanout(copies=3, sample_percent=50)
    outcomes = []
    for client_ip, client_port in random_clients(300, seed=2):
        src = str(ipaddress.ip_address(client_ip))
        first = f.endpoints(syn(src, client_port))
        again = f.endpoints(syn(src, client_port))
        assert len(first) in (0, 3)
        assert first == again
        outcomes.append(bool(first))
    assert any(outcomes) and not all(outcomes)
    assert f.sampled_out == 2 * outcomes.count(False)


@pytest.mark.parametrize("percent", [10, 50, 90])
def test_sample_percent_admits_that_share_of_20k_random_sessions_within_2_points(percent):
    clients = random_clients(20_000, seed=percent)
    admitted = sum(sampled_in(client_ip, port, percent) for client_ip, port in clients)
    assert abs(admitted / len(clients) - percent / 100) <= 0.02


def test_sample_percent_100_admits_every_session():
    assert all(sampled_in(client_ip, port, 100) for client_ip, port in random_clients(20_000, seed=3))


def test_sample_percent_0_admits_no_session_unlike_tcpcopy_where_0_means_all():
    # TCPCopy treats -r 0 as "everything"; this module treats 0 literally. A command line
    # that wants TCPCopy's meaning must map -r 0 to 100 before it reaches Fanout.
    assert not any(sampled_in(client_ip, port, 0) for client_ip, port in random_clients(20_000, seed=4))
    f = fanout(sample_percent=0)
    assert f.endpoints(syn("198.18.5.5", 40000)) == []
    assert f.sampled_out == 1


def test_sampling_uses_the_original_client_so_the_c_pool_does_not_change_it():
    plain = fanout(sample_percent=50)
    pooled = fanout(sample_percent=50, client_pool=parse_client_pool("198.18.3.x"))
    for client_ip, client_port in random_clients(300, seed=5):
        packet = syn(str(ipaddress.ip_address(client_ip)), client_port)
        assert bool(plain.endpoints(packet)) == bool(pooled.endpoints(packet))


# ---------------------------------------------------------------- -c

def test_each_original_client_is_pinned_to_one_pool_address_across_its_flows():
    f = fanout(client_pool=parse_client_pool("198.18.3.x"))
    first = {}
    for n in range(200):
        client = f"198.18.5.{n % 20}"
        (e,) = f.endpoints(syn(client, 40000 + n))
        first.setdefault(client, e.client_ip)
        assert e.client_ip == first[client]
        assert e.client_port == 40000 + n            # -c changes the address, not the port
    assert len(set(first.values())) == 20


def test_new_clients_are_given_pool_addresses_round_robin():
    f = fanout(client_pool=("198.18.3.1", "198.18.3.2", "198.18.3.3"))
    clients = [f"198.18.5.{n}" for n in range(1, 8)]
    got = [f.endpoints(syn(c, 40000))[0].client_ip for c in clients]
    assert got == [ip(a) for a in ("198.18.3.1", "198.18.3.2", "198.18.3.3",
                                   "198.18.3.1", "198.18.3.2", "198.18.3.3", "198.18.3.1")]
    # a client seen before keeps its address, and does not advance the rotation
    assert f.endpoints(syn("198.18.5.2", 50000))[0].client_ip == ip("198.18.3.2")
    assert f.endpoints(syn("198.18.5.8", 40000))[0].client_ip == ip("198.18.3.2")


def test_all_copies_of_a_session_use_the_clients_pool_address():
    f = fanout(copies=4, client_pool=("198.18.3.1", "198.18.3.2"))
    assert {e.client_ip for e in f.endpoints(syn("198.18.5.5", 40000))} == {ip("198.18.3.1")}


def test_ipv6_clients_are_not_given_ipv4_pool_addresses():
    f = fanout("[2001:2::10]:80-[2001:2::2]:8080", client_pool=parse_client_pool("198.18.3.x"))
    (e,) = f.endpoints(syn("2001:2::5", 40000, dst="2001:2::10"))
    assert e.client_ip == ip("2001:2::5")


def test_ipv6_clients_are_given_ipv6_pool_addresses_from_a_mixed_pool():
    f = fanout(f"80-{TARGET}:8080,[2001:2::10]:80-[2001:2::2]:8080",
               client_pool=("198.18.3.1", "2001:3::1", "198.18.3.2", "2001:3::2"))
    (v6,) = f.endpoints(syn("2001:2::5", 40000, dst="2001:2::10"))
    (v4,) = f.endpoints(syn("198.18.5.5", 40000))
    assert v6.client_ip in (ip("2001:3::1"), ip("2001:3::2"))
    assert v4.client_ip in (ip("198.18.3.1"), ip("198.18.3.2"))


def test_ipv4_clients_rotate_through_all_ipv4_pool_addresses_when_ipv6_clients_interleave():
    f = fanout(f"80-{TARGET}:8080,[2001:2::10]:80-[2001:2::2]:8080",
               client_pool=("198.18.3.1", "198.18.3.2", "2001:3::1", "2001:3::2"))
    v4_given = set()
    for n in range(1, 9):
        v4_given.add(f.endpoints(syn(f"198.18.5.{n}", 40000))[0].client_ip)
        f.endpoints(syn(f"2001:2::{n}", 40000, dst="2001:2::10"))
    assert v4_given == {ip("198.18.3.1"), ip("198.18.3.2")}


# ---------------------------------------------------------------- -H

def test_localhost_source_becomes_the_h_address():
    f = fanout(localhost_ip="198.18.4.4", copies=2)
    endpoints = f.endpoints(syn("127.0.0.1", 40000, dst="127.0.0.1"))
    assert [e.client_ip for e in endpoints] == [ip("198.18.4.4")] * 2


def test_h_leaves_other_sources_alone():
    f = fanout(localhost_ip="198.18.4.4")
    assert f.endpoints(syn("198.18.5.5", 40000))[0].client_ip == ip("198.18.5.5")


def test_without_h_a_localhost_source_is_kept():
    assert fanout().endpoints(syn("127.0.0.1", 40000, dst="127.0.0.1"))[0].client_ip == ip("127.0.0.1")


def test_ramp_admits_one_percent_more_each_second_up_to_the_sample_percent():
    from tcpcopy.cluster.options import parse_mappings
    from tcpcopy.session.fanout import Fanout, FanoutOptions
    fanout = Fanout(FanoutOptions(parse_mappings("80-198.18.0.2:8080"), sample_percent=60, ramp=True))
    assert [fanout.sample_percent(t) for t in (5.0, 5.5, 6.0, 30.0, 64.0, 200.0)] == [1, 1, 2, 26, 60, 60]


# ---------------------------------------------------------------- --baseline

def test_a_compared_session_also_goes_to_the_baseline_from_a_port_of_its_own():
    f = fanout(copies=2, baselines=parse_mappings(f"80-{TARGET}:8081"), compare_percent=100)
    endpoints = f.endpoints(syn("198.18.5.5", 40000))
    assert endpoints[:2] == [Endpoint(ip("198.18.5.5"), copy_port(40000, i, 0), ip(TARGET), 8080) for i in (0, 1)]
    assert endpoints[2] == Endpoint(ip("198.18.5.5"), copy_port(40000, 2, 0), ip(TARGET), 8081)
    assert len({e.client_port for e in endpoints}) == 3


def test_only_compared_sessions_go_to_the_baseline():
    from tcpcopy.cluster.shard import compare_sampled
    f = fanout(baselines=parse_mappings(f"80-{TARGET}:8081"), compare_percent=10)
    clients = random_clients(2000, seed=7)
    with_baseline = [len(f.endpoints(syn(str(ipaddress.ip_address(c)), port))) == 2 for c, port in clients]
    assert with_baseline == [compare_sampled(c, port, 10) for c, port in clients]
    assert 100 < sum(with_baseline) < 300
    assert fanout(baselines=parse_mappings(f"80-{TARGET}:8081")).endpoints(syn("198.18.5.5", 1)) == [
        Endpoint(ip("198.18.5.5"), 1, ip(TARGET), 8080)]   # no --compare: no baseline
