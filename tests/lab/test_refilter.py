"""A live capture's kernel filter is swapped, again and again, without losing a packet.

The capture worker puts the connections owners skip into its kernel filter at run time.
libpcap's own ``pcap_setfilter`` on Linux attaches a drop-everything filter while it swaps:
the packets that arrive meanwhile are lost and counted nowhere, and a lost packet of a live
session breaks its copy. ``FilterSwapper`` compiles off the capture loop and attaches each
program whole: every packet the kernel did not count as dropped reaches the capture.
"""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path

import pytest

from tcpcopy.capture import pcapio
from tcpcopy.capture.worker import combine_filters
from tcpcopy.cluster.shard import skip_flows_filter
from tcpcopy.lab.netns import COPIER, TARGET, TARGET_ADDRESS

pytestmark = pytest.mark.lab

BASE = "udp and dst port 9999"
PACKETS = 40_000
SWAP_EVERY = 0.02      # seconds: far more often than a worker does (at most twice a second)
QUIET = 1.5            # seconds without a packet: the load is over
LATE = 100


def skip_list(seed: int) -> str:
    """The base filter and not 256 made-up TCP connections: the largest list a worker keeps."""
    rng = random.Random(seed)
    flows = [bytes([198, 19, rng.randrange(256), rng.randrange(256), 198, 18, 0, 2])
             + rng.randrange(1024, 65535).to_bytes(2, "big") + (80).to_bytes(2, "big") for _ in range(256)]
    return combine_filters(BASE, skip_flows_filter(flows))


def udp_port(frame: bytes) -> int:
    """The UDP destination port of an Ethernet + IPv4 frame."""
    header = (frame[14] & 0x0F) * 4
    return int.from_bytes(frame[14 + header + 2:14 + header + 4], "big")


def swap_and_count(iface: str, ready: str) -> dict:
    """In the target: capture BASE, swapping 256-connection skip lists in every SWAP_EVERY s
    until the load has been quiet a while; then swap to a filter of another port, say so in
    the file ``ready``, and count what arrives on either port."""
    handle = pcapio.open_live(iface, BASE, immediate=False, timeout_ms=2, inbound_only=True)
    swapper = pcapio.FilterSwapper(handle, iface, BASE)
    filters = [skip_list(seed) for seed in range(4)]   # built before: only the swap is measured
    counts = {9998: 0, 9999: 0}
    swaps, refused = 0, []

    def each(_ts, frame):
        port = udp_port(bytes(frame))
        counts[port] = counts.get(port, 0) + 1

    started = last = last_packet = time.monotonic()
    while time.monotonic() - started < 30:
        before = counts[9999]
        handle.dispatch(-1, each)
        now = time.monotonic()
        if counts[9999] != before:
            last_packet = now
        elif counts[9999] and now - last_packet > QUIET:
            break
        if now - last >= SWAP_EVERY:
            swapper.request(filters[swaps % len(filters)])
            last = now
        for _text, refusal in swapper.results():
            swaps += 1
            refused += [refusal] if refusal else []
        time.sleep(0.0005)
    _received, dropped, _ = handle.stats()
    swapper.request("udp and dst port 9998")
    while not swapper.results():
        time.sleep(0.01)
    loaded = counts[9999]
    Path(ready).write_text("swapped")
    deadline = time.monotonic() + 10
    while counts[9998] < LATE and time.monotonic() < deadline:
        handle.dispatch(-1, each)
        time.sleep(0.01)
    swapper.close()
    return {"captured": loaded, "dropped": dropped, "swaps": swaps, "refused": refused,
            "after_swap_9999": counts[9999] - loaded, "after_swap_9998": counts[9998]}


def send_udp(count: int, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(count):
        sock.sendto(b"tcpcopy lab", (TARGET_ADDRESS, port))
        if i % 50 == 0:
            time.sleep(0.001)   # about 40,000 packets a second: a busy capture, not a flood
    sock.close()


def test_swapping_skip_filters_loses_no_packet(two_host_lab, tmp_path):
    lab = two_host_lab
    ready = tmp_path / "swapped"
    capture = lab.spawn(TARGET, swap_and_count, lab.interface(TARGET), str(ready))
    time.sleep(1.0)                       # the capture is open
    lab.call(COPIER, send_udp, PACKETS, 9999, timeout=60)
    deadline = time.monotonic() + 40
    while not ready.exists():
        assert time.monotonic() < deadline, "the capture never swapped to its last filter"
        time.sleep(0.05)
    lab.call(COPIER, send_udp, LATE, 9999, timeout=10)
    lab.call(COPIER, send_udp, LATE, 9998, timeout=10)
    result = capture.result(timeout=60)
    print(f"\n{result}")
    assert result["refused"] == []
    assert result["swaps"] >= 10, "the load ended before the filter was swapped often"
    # Every packet the kernel did not count as dropped reached the capture: none vanished.
    assert result["captured"] + result["dropped"] == PACKETS, result
    # The last filter took: the other port's packets come, this port's no longer do.
    assert (result["after_swap_9998"], result["after_swap_9999"]) == (LATE, 0), result


def refusal_of(iface: str, bpf: str) -> str | None:
    handle = pcapio.open_live(iface, BASE, immediate=False, timeout_ms=2, inbound_only=True)
    swapper = pcapio.FilterSwapper(handle, iface, BASE)
    swapper.request(bpf)
    deadline = time.monotonic() + 10
    results = []
    while not results and time.monotonic() < deadline:
        results = swapper.results()
        time.sleep(0.01)
    swapper.close()
    return results[0][1] if results else "no result"


def test_a_filter_libpcap_refuses_is_reported_and_the_capture_goes_on(two_host_lab):
    refusal = two_host_lab.call(TARGET, refusal_of, two_host_lab.interface(TARGET), "udp and dst port")
    assert refusal is not None and "bad BPF filter" in refusal and "pcap-filter(7)" in refusal
