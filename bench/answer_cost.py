"""What sending watched answers whole costs intercept, per captured answer packet.

intercept's path for each captured answer: the frame (cut at the capture's snaplen) is
decoded, its route looked up, its header record batched for RESPONSES and, for a watched
route, the whole answer batched for ANSWERS; batches leave over ZeroMQ to an owner. This
drives a real Worker's ``on_frame`` (ROUTER on ipc://) with an owner DEALER that drains
between rounds, and prints process CPU microseconds per answer packet (the ZeroMQ I/O
thread included; libpcap's copy of each frame, which grows with the snaplen, is not) for:

- off: intercept without --answer-bytes (snaplen 256), nothing watched: the cost today;
- on, not watched: --answer-bytes N (snaplen 256 + N), another route watched, this one not;
- on, watched: --answer-bytes N, this route watched;

at a 1,400-byte answer (one MSS) and a 60,000-byte one (a GRO super-packet), each with the
ratio to "off".

    python bench/answer_cost.py [--packets 20000] [--answer-bytes 65536]

Figures from one machine are for comparing these cases with each other.
"""

from __future__ import annotations

import argparse
import ipaddress
import shutil
import tempfile
import time

import zmq

from tcpcopy.capture import packet as pk
from tcpcopy.cluster import wire
from tcpcopy.intercept.worker import Worker, WorkerConfig

ETHERNET = bytes(12) + b"\x08\x00"   # a captured frame's link header (MACs, IPv4's type)
TARGET, CLIENT = ipaddress.ip_address("198.18.0.2").packed, ipaddress.ip_address("198.18.3.5").packed
WATCHED, NOT_WATCHED = (CLIENT, 40000, TARGET, 8080), (CLIENT, 40001, TARGET, 8080)
SIZES = (1400, 60_000)
CHUNK = 1000
ROUNDS = 3


def answer_frame(client_port: int, payload_bytes: int) -> bytes:
    return ETHERNET + pk.build(TARGET, CLIENT, 8080, client_port, 5000, 1001, pk.PSH | pk.ACK, 501,
                    options=pk.opt_timestamps(7, 9), payload=bytes(payload_bytes)).to_bytes()


class Rig:
    """A Worker with ``answer_bytes`` and a greeted owner that registered both routes."""

    def __init__(self, directory: str, answer_bytes: int, watch: bool) -> None:
        self.context = zmq.Context()
        self.worker = Worker(WorkerConfig(endpoint=f"ipc://{directory}/bench-{answer_bytes}-{watch}.ipc",
                                          answer_bytes=answer_bytes), context=self.context)
        self.owner = self.context.socket(zmq.DEALER)
        self.owner.setsockopt(zmq.MAXMSGSIZE, wire.max_frame(wire.OWNER_COMPARING_TAKES_FROM_INTERCEPT))
        self.owner.connect(self.worker.bind())
        self.owner.send(wire.encode_hello(wire.Hello("owner", "bench", "1")))
        self.owner.send(wire.encode_register([WATCHED, NOT_WATCHED]))
        if watch:
            self.owner.send(wire.encode_watch([WATCHED]))
        while len(self.worker.routes) < 2 or (watch and not self.worker.routes.watched):
            self.worker.step(max_wait=0.05)
        self.drain()

    def drain(self) -> int:
        got = 0
        while self.owner.poll(50):
            got += len(self.owner.recv())
        return got

    def close(self) -> None:
        self.worker.close()
        self.owner.close(linger=0)
        self.context.term()


def cpu_per_packet(rig: Rig, frame: bytes, packets: int) -> float:
    """Best of ROUNDS: process CPU microseconds per packet, from the captured frame (bytes,
    as libpcap hands it over) to the send."""
    snap = frame[:rig.worker.config.snaplen]
    best = float("inf")
    for _ in range(ROUNDS):
        spent = 0.0
        for _ in range(packets // CHUNK):
            start = time.process_time()
            for _ in range(CHUNK):
                rig.worker.on_frame(snap, pk.LINKTYPE_ETHERNET, 0.0)
            rig.worker.flush_all()
            spent += time.process_time() - start
            rig.drain()
        best = min(best, spent / (packets // CHUNK * CHUNK))
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=20_000)
    parser.add_argument("--answer-bytes", type=int, default=65536)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="answer-cost-")
    cases = (("off", 0, False, NOT_WATCHED), ("on, not watched", args.answer_bytes, True, NOT_WATCHED),
             ("on, watched", args.answer_bytes, True, WATCHED))
    try:
        print(f"intercept CPU per answer packet (us), --answer-bytes {args.answer_bytes}, "
              f"{args.packets} packets, best of {ROUNDS}")
        for size in SIZES:
            base = None
            for name, answer_bytes, watch, route in cases:
                rig = Rig(directory, answer_bytes, watch)
                try:
                    cost = cpu_per_packet(rig, answer_frame(route[1], size), args.packets)
                finally:
                    rig.close()
                base = base or cost
                print(f"  payload {size:>6} B  {name:<16} {cost:7.2f} us  x{cost / base:.2f}")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
