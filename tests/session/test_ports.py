"""Conflict-free client ports: a busy endpoint is never handed out twice."""

import random

import pytest

from tcpcopy.cluster.shard import flow_shard
from tcpcopy.session.ports import PortAllocator

CLIENT = bytes([198, 18, 3, 7])
TARGET = (bytes([198, 18, 0, 2]), 8080)


def test_the_wanted_port_is_given_when_free():
    ports = PortAllocator()
    assert ports.allocate(CLIENT, 40000, TARGET, 0.0) == 40000
    assert ports.stats.moved == 0


def test_a_busy_port_is_never_given_again_while_its_session_lives():
    ports = PortAllocator()
    given = [ports.allocate(CLIENT, 40000, TARGET, 0.0) for _ in range(500)]
    assert len(set(given)) == 500
    assert all(1024 <= p <= 65535 for p in given)
    assert ports.stats.moved == 499


def test_the_same_port_is_free_for_another_client_address_or_target():
    ports = PortAllocator()
    assert ports.allocate(CLIENT, 40000, TARGET, 0.0) == 40000
    assert ports.allocate(bytes([198, 18, 3, 8]), 40000, TARGET, 0.0) == 40000
    assert ports.allocate(CLIENT, 40000, (TARGET[0], 8081), 0.0) == 40000


def test_a_released_port_is_reused_at_once_unless_the_target_keeps_time_wait():
    ports = PortAllocator(time_wait=60.0)
    ports.allocate(CLIENT, 40000, TARGET, 0.0)
    ports.release(CLIENT, 40000, TARGET, 1.0, hold=False)
    assert ports.allocate(CLIENT, 40000, TARGET, 1.0) == 40000
    ports.release(CLIENT, 40000, TARGET, 2.0, hold=True)       # the target closed first
    assert ports.allocate(CLIENT, 40000, TARGET, 30.0) != 40000
    assert ports.allocate(CLIENT, 40000, TARGET, 62.0) == 40000  # TIME_WAIT is over


def test_when_no_port_is_free_the_copy_is_refused_and_counted():
    ports = PortAllocator(max_probes=4)
    given = [ports.allocate(CLIENT, 40000, TARGET, 0.0) for _ in range(6)]
    assert given[:4] == sorted(set(given[:4]), key=given.index) and None not in given[:4]
    assert given[4:] == [None, None]
    assert ports.stats.exhausted == 2


@pytest.mark.parametrize("owners", [2, 3, 5, 8])
def test_owners_never_hand_out_the_same_endpoint(owners):
    allocators = [PortAllocator(shard=m, shards=owners) for m in range(owners)]
    rng = random.Random(owners)
    seen = set()
    for _ in range(3000):
        m = rng.randrange(owners)
        port = allocators[m].allocate(CLIENT, rng.randrange(1024, 65536), TARGET, 0.0)
        assert port is not None
        assert flow_shard(CLIENT, port, owners) == m   # the owner's own shard
        assert port not in seen
        seen.add(port)


def test_a_bad_shard_is_refused():
    with pytest.raises(ValueError, match="below the shard count"):
        PortAllocator(shard=2, shards=2)


def test_copier_instances_sharing_addresses_use_disjoint_ports():
    first = PortAllocator(instance=0, instances=2)
    second = PortAllocator(instance=1, instances=2)
    ports_first = {first.allocate(CLIENT, 40000 + 2 * i, TARGET, 0.0) for i in range(300)}
    ports_second = {second.allocate(CLIENT, 40000 + 2 * i, TARGET, 0.0) for i in range(300)}
    assert not ports_first & ports_second
    assert all(p % 2 == 1 for p in ports_second)
    assert 40000 in ports_first  # instance 0 keeps the even captured ports it is given
