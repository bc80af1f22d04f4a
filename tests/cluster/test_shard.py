"""flow_shard: which owner a client endpoint belongs to.

Capture workers and owners must agree on it, so it is checked for range and determinism,
and on realistic traffic it must spread flows evenly over the owners.
"""

from __future__ import annotations

import ipaddress
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpcopy.cluster.shard import flow_shard

ADDRESSES = st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16)
PORTS = st.integers(0, 65535)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(ADDRESSES, PORTS, st.integers(1, 8))
def test_shard_is_in_range_and_deterministic(client_ip, client_port, count):
    shard = flow_shard(client_ip, client_port, count)
    assert 0 <= shard < count
    assert flow_shard(bytes(client_ip), client_port, count) == shard


@settings(max_examples=100, deadline=None, derandomize=True)
@given(ADDRESSES, PORTS)
def test_single_owner_always_gets_shard_0(client_ip, client_port):
    assert flow_shard(client_ip, client_port, 1) == 0


def realistic_clients(n: int, seed: int = 20240611) -> list[tuple[bytes, int]]:
    """n client endpoints in 198.18.0.0/15 with Linux ephemeral ports (32768-60999)."""
    rng = random.Random(seed)
    base = int(ipaddress.ip_address("198.18.0.0"))
    return [((base + rng.randrange(1 << 17)).to_bytes(4, "big"), rng.randint(32768, 60999))
            for _ in range(n)]


CLIENTS = realistic_clients(10_000)


@pytest.mark.parametrize("count", range(2, 9))
def test_realistic_traffic_spreads_within_10_percent_of_even(count):
    per_shard = Counter(flow_shard(ip, port, count) for ip, port in CLIENTS)
    even = len(CLIENTS) / count
    assert sorted(per_shard) == list(range(count))
    assert all(abs(n - even) <= 0.10 * even for n in per_shard.values()), per_shard


@pytest.mark.parametrize("count", range(2, 9))
def test_many_connections_from_one_nat_address_spread_within_10_percent_of_even(count):
    rng = random.Random(count)
    nat = ipaddress.ip_address("198.18.7.1").packed
    per_shard = Counter(flow_shard(nat, rng.randint(32768, 60999), count) for _ in range(10_000))
    even = 10_000 / count
    assert all(abs(n - even) <= 0.10 * even for n in per_shard.values()), per_shard


@pytest.mark.parametrize("count", range(2, 9))
def test_linux_clients_even_ephemeral_ports_still_spread_evenly(count):
    """Linux picks even ports for connect(): one client address, 10k connections."""
    rng = random.Random(count)
    client = bytes([198, 18, 1, 2])
    shards = Counter(flow_shard(client, rng.randrange(32768, 61000, 2), count) for _ in range(10_000))
    even = 10_000 / count
    assert all(0.9 * even <= shards[s] <= 1.1 * even for s in range(count)), shards
