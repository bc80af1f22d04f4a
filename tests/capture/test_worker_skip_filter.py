"""A live capture worker's filter: the base filter and not the connections owners skip."""

from __future__ import annotations

import ipaddress

from tcpcopy.capture import packet as pk
from tcpcopy.capture.worker import SkipFilter
from tcpcopy.cluster.shard import flow_shard

BASE = "tcp dst port 80"


def key(client: str, port: int) -> bytes:
    return pk.flow_key_bytes(ipaddress.ip_address(client).packed, port,
                             ipaddress.ip_address("198.18.1.2").packed, 80)


def test_a_changed_list_changes_the_filter_once_then_waits_its_turn():
    skips = SkipFilter(BASE, owners=1, every=1.0)
    assert skips.due(0.0) is None
    skips.take(0, [key("198.18.0.5", 40000)])
    text = skips.due(0.0)
    assert text.startswith(f"({BASE}) and (not ") and "tcp[0:4] = 2621440080" in text
    skips.take(0, [])
    assert skips.due(0.5) is None          # changed, but the last change is too recent
    assert skips.due(1.0) == f"({BASE})"   # the list emptied: back to the base filter
    assert skips.due(5.0) is None


def test_the_same_list_again_changes_nothing():
    skips = SkipFilter(BASE, owners=1)
    skips.take(0, [key("198.18.0.5", 40000)])
    skips.due(0.0)
    skips.take(0, [key("198.18.0.5", 40000)])
    assert skips.due(10.0) is None


def test_only_the_workers_own_shard_of_each_list_is_kept():
    flows = [key("198.18.0.5", port) for port in range(40000, 40040)]
    skips = SkipFilter(BASE, owners=2, shard=(1, 3))
    skips.take(0, flows)
    kept = skips.flows()
    assert kept and len(kept) < len(flows)
    assert all(flow_shard(k[:4], int.from_bytes(k[8:10], "big"), 3) == 1 for k in kept)


def test_owners_share_the_limit_fairly_and_no_list_grows_it():
    skips = SkipFilter(BASE, owners=2, limit=10)
    skips.take(0, [key("198.18.0.5", port) for port in range(40000, 40050)])
    skips.take(1, [key("198.18.0.6", port) for port in range(40000, 40003)])
    flows = skips.flows()
    assert len(flows) == 10
    assert sum(1 for k in flows if k[:4] == ipaddress.ip_address("198.18.0.6").packed) == 3
