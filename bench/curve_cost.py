"""What CurveZMQ costs on the owner <-> intercept channel: messages per second and CPU per
message, with and without keys, between two processes over tcp://127.0.0.1.

The intercept's side (a ROUTER, the CURVE server with its key gate, as ``intercept/worker.py``
sets it up) runs in a child process; the owner's side (a DEALER, as ``session/intercepts.py``
sets it up) in this one. Two loads, each the channel's busiest direction:

- responses: intercept -> owner, RESPONSES of 64 header records (64 bytes each), what every
  captured answer of the target costs the channel;
- registers: owner -> intercept, REGISTER messages of 16 endpoints, one per loop turn of a
  busy owner.

Printed per load and mode: messages/s and records/s at the receiver, and the CPU both
processes spent (every thread, ZeroMQ's I/O threads that encrypt included) per message.

    python bench/curve_cost.py [--responses 20000] [--registers 100000] [--repeat 3]

Figures from one machine compare keys with no keys; they are not the copier's throughput.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time

import zmq

from tcpcopy.cluster import curve, wire

RECORD = bytes(range(64))          # an IPv4 + TCP header with timestamps, 52 bytes, and some
RECORDS_PER_MESSAGE = 64           # intercept's BATCH_RECORDS
ENDPOINTS_PER_REGISTER = 16


def _endpoints(first: int) -> list:
    return [(bytes([198, 18, 3, 1]), 1024 + (first + n) % 60000, bytes([198, 18, 0, 2]), 8080)
            for n in range(ENDPOINTS_PER_REGISTER)]


def intercept_side(endpoint_file: str, keys_dir: str | None, load: str, count: int, out) -> None:
    """The ROUTER: binds, then sends ``count`` RESPONSES or receives ``count`` REGISTERs."""
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.SNDHWM, 4096)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)   # a full queue blocks the send (back-pressure), never drops
    gate = None
    if keys_dir:
        keys = curve.KeyLayout(keys_dir).intercept_keys()
        curve.listen_with_keys(sock, keys, curve.CONTROL_DOMAIN)
        gate = curve.KeyGate(sock, keys, curve.CONTROL_DOMAIN, "bench")
    sock.bind("tcp://127.0.0.1:*")
    with open(endpoint_file, "w") as file:
        file.write(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    owner, _hello = sock.recv_multipart()
    cpu = time.process_time()
    if load == "responses":
        message = wire.encode_responses([RECORD] * RECORDS_PER_MESSAGE)
        for _ in range(count):
            sock.send_multipart((owner, message))    # blocks at the high-water mark: back-pressure
        sock.recv_multipart()                         # the owner says it has them all
        out.send((None, time.process_time() - cpu))
    else:
        started = time.perf_counter()
        for _ in range(count):
            sock.recv_multipart()
        out.send((time.perf_counter() - started, time.process_time() - cpu))
    if gate is not None:
        gate.close()
    sock.close()
    context.term()


def run_once(load: str, count: int, keys_dir: str | None) -> dict:
    """One run of ``load``: messages/s at the receiver and CPU microseconds per message."""
    with tempfile.TemporaryDirectory() as scratch:
        endpoint_file = os.path.join(scratch, "endpoint")
        reader, writer = multiprocessing.Pipe(duplex=False)
        child = multiprocessing.Process(target=intercept_side, args=(endpoint_file, keys_dir, load, count, writer))
        child.start()
        while not os.path.exists(endpoint_file) or not open(endpoint_file).read():
            time.sleep(0.01)
        endpoint = open(endpoint_file).read()
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.RCVHWM, 10_000)
    sock.setsockopt(zmq.SNDHWM, 10_000)
    if keys_dir:
        curve.connect_with_keys(sock, curve.KeyLayout(keys_dir).owner_keys())
    sock.connect(endpoint)
    sock.send(wire.encode_hello(wire.Hello("owner", "bench", "b1")))
    cpu = time.process_time()
    if load == "responses":
        sock.recv()
        started = time.perf_counter()
        for _ in range(count - 1):
            wire.decode(sock.recv())
        elapsed = time.perf_counter() - started
        sock.send(b"done")
    else:
        for n in range(count):
            sock.send(wire.encode_register(_endpoints(n)))
    owner_cpu = time.process_time() - cpu
    child_elapsed, intercept_cpu = reader.recv()
    child.join(timeout=30)
    sock.close()
    context.term()
    seconds = elapsed if load == "responses" else child_elapsed
    messages = count - 1 if load == "responses" else count
    per = RECORDS_PER_MESSAGE if load == "responses" else ENDPOINTS_PER_REGISTER
    return {"messages_per_s": messages / seconds, "records_per_s": messages * per / seconds,
            "cpu_us_per_message": (owner_cpu + intercept_cpu) / count * 1e6}


def measure(load: str, count: int, keys_dir: str | None, repeat: int) -> dict:
    runs = [run_once(load, count, keys_dir) for _ in range(repeat)]
    return {name: statistics.median(run[name] for run in runs) for name in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--responses", type=int, default=20_000, help="RESPONSES messages per run (20000)")
    parser.add_argument("--registers", type=int, default=100_000, help="REGISTER messages per run (100000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure, the median is shown (3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as keys_dir:
        curve.keygen(keys_dir + "/keys")
        print(f"{'load':<10} {'keys':<6} {'messages/s':>12} {'records/s':>12} {'CPU us/message':>15}")
        for load, count in (("responses", args.responses), ("registers", args.registers)):
            figures = {mode: measure(load, count, keys, args.repeat)
                       for mode, keys in (("none", None), ("curve", keys_dir + "/keys"))}
            for mode, row in figures.items():
                print(f"{load:<10} {mode:<6} {row['messages_per_s']:>12,.0f} {row['records_per_s']:>12,.0f} "
                      f"{row['cpu_us_per_message']:>15.1f}")
            none, keyed = figures["none"], figures["curve"]
            print(f"{load:<10} curve/none: rate x{keyed['messages_per_s'] / none['messages_per_s']:.2f}, "
                  f"CPU x{keyed['cpu_us_per_message'] / none['cpu_us_per_message']:.2f}")


if __name__ == "__main__":
    main()
