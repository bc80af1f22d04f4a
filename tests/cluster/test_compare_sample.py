"""In a cluster, one session is compared only if every process agrees: the capture worker of
its shard keeps the online server's answers to it (kernel filter), routes them to the owner
that replays it, and that owner compares it, every copy of it (``-n``).

Each check runs the real pieces: the capture worker's filters as ``--config F --shard k``
builds them, compiled by libpcap and run on frames; its owner routing; and the owner's
session table and comparison started from the same config.
"""

from __future__ import annotations

import ipaddress

import pcap
import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from tcpcopy.capture import packet as pk
from tcpcopy.capture import worker as capture_worker
from tcpcopy.cluster.config import load_config
from tcpcopy.cluster.shard import compare_sampled, flow_shard
from tcpcopy.session.comparing import Comparing
from tcpcopy.session.fanout import Fanout
from tcpcopy.session.owner import options_from_config
from tcpcopy.session.ports import PortAllocator
from tcpcopy.session.table import SessionStarted, SessionTable

ONLINE_V4, ONLINE_V6 = "198.18.1.2", "2001:2::1:2"


def config_file(tmp_path, workers: int, owners: int, copies: int, percent: int):
    path = tmp_path / "cluster.toml"
    path.write_text(f"""
[copy]
mappings = ["198.18.1.2:80-198.18.0.2:8080", "[2001:2::1:2]:80-[2001:2::2]:8080"]
intercepts = ["198.18.2.1:36524", "198.18.2.1:36525"]
copies = {copies}
[capture]
workers = {workers}
[owners]
count = {owners}
run_dir = "{tmp_path}/run"
[supervisor]
dir = "{tmp_path}/sv"
[security]
curve = false
[compare]
percent = {percent}
""")
    return str(path)


def frame(src: str, dst: str, sport: int, dport: int, flags: str) -> bytes:
    l3 = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / l3
                 / TCP(sport=sport, dport=dport, flags=flags, seq=1000, ack=2000))


def clients(count: int):
    for i in range(count):
        port = 1024 + (i * 7919) % 64000
        if i % 4 == 3:
            yield f"2001:2::{(i * 13) % 65536:x}", port, ONLINE_V6
        else:
            yield f"198.18.{i % 2}.{(i * 37) % 256}", port, ONLINE_V4


@pytest.mark.parametrize("workers, owners, copies, percent", [(2, 2, 1, 10), (3, 2, 3, 50), (1, 3, 2, 100),
                                                              (4, 4, 2, 30)])
def test_every_process_samples_the_same_sessions(tmp_path, workers, owners, copies, percent):
    path = config_file(tmp_path, workers, owners, copies, percent)
    config = load_config(path)
    filters = []
    for k in range(workers):
        args = capture_worker.parse_args(["--config", path, "--shard", str(k)])
        filters.append((pcap.bpf(args.filter.encode(), pcap.DLT_EN10MB),
                        pcap.bpf(args.online_answers.encode(), pcap.DLT_EN10MB)))
    owner_sides = []
    for m in range(owners):
        options = options_from_config(config, m)
        table = SessionTable(options.session, Fanout(options.fanout).endpoints,
                             ports=PortAllocator(options.shard, options.shards))
        owner_sides.append((table, Comparing(options.compare)))

    sampled_count = total = 0
    for client, port, online in clients(300):
        packed = ipaddress.ip_address(client).packed
        sampled = compare_sampled(packed, port, percent)
        request, answer = frame(client, online, port, 80, "S"), frame(online, client, 80, port, "SA")
        takes_request = [k for k, (flt, _) in enumerate(filters) if flt.filter(request)]
        takes_answer = [k for k, (_, flt) in enumerate(filters) if flt.filter(answer)]
        assert takes_request == [flow_shard(packed, port, workers)], (client, port)
        assert takes_answer == (takes_request if sampled else []), (client, port, sampled)

        # the worker routes both directions to one owner
        owner = flow_shard(*capture_worker._client_endpoint(request[14:]), owners)
        if sampled:
            assert flow_shard(*capture_worker._server_answer_client(answer[14:]), owners) == owner

        table, comparing = owner_sides[owner]
        table.client_packet(pk.decode(request[14:]), 0.0)
        started = [e for e in table.take_events() if type(e) is SessionStarted]
        assert len(started) == copies
        compared = [comparing.session_started(e.endpoint, e.flow) for e in started]
        assert compared == [sampled] * copies, "every copy of a sampled session is compared, no other"
        sampled_count, total = sampled_count + sampled, total + 1
    assert abs(sampled_count / total - percent / 100) < 0.1
