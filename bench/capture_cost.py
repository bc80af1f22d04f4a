"""What the capture worker spends per captured packet, outside libpcap: routing a frame to
its owner (``Worker.on_frame``: link offset, IP bytes, client endpoint, shard), batching and
sending the batches over ZeroMQ to a local sink that drains them.

    python bench/capture_cost.py [--packets 200000] [--owners 2]

Prints microseconds per packet (best of 5 rounds). libpcap's own work and the callback from
pypcap are not in it: this is the Python share a faster path would cut.
"""

from __future__ import annotations

import argparse
import threading
import time

import zmq

from tcpcopy.capture import packet as pk
from tcpcopy.capture.worker import Worker

ETHERNET = bytes(12) + b"\x08\x00"


def frames(count: int) -> list[bytes]:
    """Keep-alive-like client packets of 200 connections: a request, then a pure ACK."""
    out = []
    for i in range(count):
        port = 40000 + i % 200
        payload = b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n" if i % 2 == 0 else b""
        ip = pk.build(bytes([198, 18, 1, 2]), bytes([198, 18, 1, 1]), port, 80, 1000 + i, 5000,
                      pk.ACK | (pk.PSH if payload else 0), 500, payload=payload).to_bytes()
        out.append(ETHERNET + ip)
    return out


def drain(context: zmq.Context, endpoint: str, stop: threading.Event) -> None:
    sock = context.socket(zmq.ROUTER)
    sock.bind(endpoint)
    while not stop.is_set():
        if sock.poll(50):
            while True:
                try:
                    sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
    sock.close(linger=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--owners", type=int, default=2)
    args = parser.parse_args()
    context = zmq.Context.instance()
    endpoints = [f"inproc://capture-cost-{n}" for n in range(args.owners)]
    stop = threading.Event()
    sinks = [threading.Thread(target=drain, args=(context, e, stop), daemon=True) for e in endpoints]
    for sink in sinks:
        sink.start()
    time.sleep(0.2)
    worker = Worker(endpoints, linktype=pk.LINKTYPE_ETHERNET)
    batch = frames(args.packets)
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for frame in batch:
            worker.on_frame(1.0, frame, time.monotonic())
        worker.batcher.flush_all()
        best = min(best, time.process_time() - started)
    stop.set()
    print(f"capture worker, Python share: {best / args.packets * 1e6:.2f} us per packet "
          f"({args.packets} packets, {args.owners} owners, best of 5; includes the sink thread's CPU)")


if __name__ == "__main__":
    main()
