"""End to end: a sharded cluster under supervisord compares what the target answered with what
the online server answered, and ``tcpcopy-cluster stop`` ends the run with the totals over
every owner and the ``[compare] fail_on`` gate.

The online nginx and the target nginx serve the same site but for two paths: one whose body
changed (same status, same length) and one the target no longer has (404). Every request to
those two paths, and only those, must be reported, by more than one owner, each owner into
its own file; ``stop`` exits 3. With half the sessions sampled, exactly the requests of the
sessions ``compare_sampled`` picks are compared: the capture workers' kernel filters, the
owners and the intercepts agree on the sample.
"""

from __future__ import annotations

import ipaddress
import time

import pytest

from tcpcopy.cluster.shard import compare_sampled, flow_shard
from tcpcopy.lab import load
from tcpcopy.lab.netns import CLIENT, CLIENT_ADDRESS
from tests.e2e.sites import CHANGED, GONE, ONLINE_SITE, SAME, TARGET_SITE

pytestmark = pytest.mark.lab

FIRST_PORT = 20_000      # curl's client ports: below the client host's ephemeral range


def settle(copy, made: int) -> int:
    copy.wait_for_target(made, timeout=60)
    time.sleep(3)   # the last answers reach the owners
    return made


def drive(copy, loads) -> int:
    """``loads``: (path, connections, requests each), keep-alive with h2load; returns the
    requests made."""
    made = 0
    for path, connections, requests in loads:
        result = load.keepalive(copy.lab, CLIENT, f"{copy.url}{path}", connections, requests)
        assert result.summary.done == connections * requests, result.summary.output
        made += connections * requests
    return made


def ports_of_shards(count: int, shards: int) -> list[int]:
    """``count`` client ports taking turns over the shards: a load tool's connections come
    from consecutive even ports, which mostly share a shard."""
    packed = bytes(int(part) for part in CLIENT_ADDRESS.split("."))
    by_shard = {shard: [] for shard in range(shards)}
    port = FIRST_PORT
    while min(len(ports) for ports in by_shard.values()) < count // shards + 1:
        by_shard[flow_shard(packed, port, shards)].append(port)
        port += 1
    return [by_shard[i % shards][i // shards] for i in range(count)]


def curl_sessions(copy, paths: list[str], connections: int, shards: int) -> int:
    """``connections`` keep-alive connections, over every shard, each asking for ``paths``
    in turn; returns the requests made."""
    for port in ports_of_shards(connections, shards):
        argv = ["curl", "-sS", "--max-time", "20", "--local-port", str(port), "-w", "%{http_code} "]
        for path in paths:
            argv += ["-o", "/dev/null", f"{copy.url}{path}"]
        copy.lab.run(CLIENT, argv, timeout=30)
    return connections * len(paths)


def test_the_cluster_reports_exactly_the_requests_answered_differently_and_stop_fails_the_gate(cluster_copy):
    copy = cluster_copy(2, 2, 2, compare={"percent": 100, "fail_on": "differs>0"},
                        online_files=ONLINE_SITE, target_files=TARGET_SITE)
    assert copy.config.intercept.answer_bytes == 65536
    made = drive(copy, [(SAME, 10, 50)])
    made += curl_sessions(copy, [SAME, CHANGED, CHANGED, GONE, SAME], 40, shards=2)
    settle(copy, made)
    copy.stop()
    status, said = copy.stopped["online"]
    totals = copy.compare_totals()
    differences = copy.differences()
    print(f"\n{said}")

    assert totals["counts"]["body_differs"] == 80
    assert totals["counts"]["status_differs"] == 40
    assert totals["counts"]["same"] == 580
    assert totals["compared"] == made and totals["not_captured"] == 0
    assert all(row["final"] for row in totals["owners"]), "every owner writes its final summary when it stops"
    by_path = {}
    for records in differences.values():
        for record in records:
            by_path.setdefault(record["request"].split()[1], set()).add(record["verdict"])
    assert by_path == {CHANGED: {"body_differs"}, GONE: {"status_differs"}}
    assert sum(len(records) for records in differences.values()) == 120
    assert len([shard for shard, records in differences.items() if records]) == 2, \
        f"differences from one owner only: {({s: len(r) for s, r in differences.items()})}"
    assert status == 3, "a difference past fail_on differs>0 must fail `tcpcopy-cluster stop`"
    assert "compared: 700 requests" in said and "gate failed: differs" in said


def test_with_half_the_sessions_sampled_every_process_compares_the_same_half(cluster_copy):
    copy = cluster_copy(2, 2, 2, {"copies": 2}, compare={"percent": 50, "fail_on": "differs>0"})
    settle(copy, 2 * drive(copy, [("/index.html", 40, 5)]))
    copy.stop()
    status, said = copy.stopped["online"]
    totals = copy.compare_totals()
    peers = {(e["remote_addr"], e["remote_port"]) for e in copy.online.access_log_entries()}
    sampled = [peer for peer in peers if compare_sampled(ipaddress.ip_address(peer[0]).packed, peer[1], 50)]
    print(f"\n{said}\n{len(sampled)} of {len(peers)} sessions sampled")

    assert 0 < len(sampled) < len(peers), "the load's client ports give no sample to judge by"
    assert totals["sessions_compared"] == 2 * len(sampled), "each copy of each sampled session, and no other"
    assert totals["compared"] == 2 * 5 * len(sampled) == totals["counts"]["same"]
    assert totals["not_captured"] == 0
    assert status == 0 and "no threshold crossed" in said
