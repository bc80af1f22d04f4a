"""What libpcap takes to compile a capture worker's skip filter, by the number of skipped
connections in it (the worker keeps at most 256): the time the capture loop would stand
still if it compiled the filter itself, which is why ``capture/pcapio.FilterSwapper``
compiles in a thread of its own.

    python bench/skipfilter_cost.py

Prints milliseconds per compile (best of 3).
"""

from __future__ import annotations

import random
import time

import pcap

from tcpcopy.cluster.shard import combine_filters, skip_flows_filter

BASE = "tcp and dst port 80"


def flows(count: int, seed: int = 1) -> list[bytes]:
    """Made-up IPv4 client connections (flow keys: addresses, then ports)."""
    rng = random.Random(seed)
    return [bytes([198, 19, rng.randrange(256), rng.randrange(256), 198, 18, 0, 2])
            + rng.randrange(1024, 65535).to_bytes(2, "big") + (80).to_bytes(2, "big") for _ in range(count)]


def main() -> None:
    for count in (16, 64, 128, 256):
        text = combine_filters(BASE, skip_flows_filter(flows(count))).encode()
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            pcap.bpf(text, pcap.DLT_EN10MB)
            best = min(best, time.perf_counter() - started)
        print(f"{count:4d} connections: {best * 1000:6.1f} ms to compile")


if __name__ == "__main__":
    main()
