"""CPU cost of comparing answers in the owner, without I/O (session/comparing.py).

Drives one compared keep-alive session per round with scripted HTTP answers (the online and
the target answer of each request, split into segments as a server sends them) and prints
microseconds per compared request: what ``tcpcopy --compare 100`` adds to each copied
request; at ``--compare 10`` a tenth of it on average.
Run: .venv/bin/python bench/compare_cost.py [requests] [--body BYTES] [--differ]
"""

from __future__ import annotations

import argparse
import socket
import time

from tcpcopy.capture import packet as pk
from tcpcopy.session.comparing import CompareOptions, Comparing
from tcpcopy.session.engine import Endpoint, RequestSent

CLIENT, ONLINE = socket.inet_aton("198.18.0.5"), socket.inet_aton("198.18.1.2")
REPLAYED, TARGET = socket.inet_aton("198.18.3.5"), socket.inet_aton("198.18.2.2")
FLOW = (CLIENT, 40000, ONLINE, 80)
ENDPOINT = Endpoint(REPLAYED, 40000, TARGET, 8080)
HEAD = b"GET /index.html HTTP/1.1\r\nHost: 198.18.1.2\r\nUser-Agent: bench\r\n\r\n"
SEGMENT = 1448


def answer(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Mon, 07 Dec 2026 19:00:53 GMT\r\n"
            b"Content-Type: text/html\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n" % len(body) + body)


def segments(src: bytes, dst: bytes, sport: int, dport: int, seq: int, data: bytes) -> list[pk.Packet]:
    return [pk.build(src, dst, sport, dport, seq + i, 1, pk.ACK | pk.PSH, 500, payload=data[i:i + SEGMENT])
            for i in range(0, len(data), SEGMENT)]


def run(requests: int, body_bytes: int, differ: bool) -> float:
    online_answer = answer(b"x" * body_bytes)
    target_answer = answer((b"y" if differ else b"x") * body_bytes)
    online_packets, target_packets, on, tg = [], [], 1_000, 900_000
    for _ in range(requests):
        online_packets.append((on, segments(ONLINE, CLIENT, 80, 40000, on, online_answer)))
        target_packets.append((tg, segments(TARGET, REPLAYED, 8080, 40000, tg, target_answer)))
        on, tg = on + len(online_answer), tg + len(target_answer)
    comparing = Comparing(CompareOptions(percent=100))
    comparing.session_started(ENDPOINT, FLOW)
    started = time.process_time()
    for i in range(requests):
        at = i * 0.001
        (on, online_segments), (tg, target_segments) = online_packets[i], target_packets[i]
        comparing.client_segment(FLOW, on, HEAD, at, at)
        for packet in online_segments:
            comparing.online_answer(packet, at, at)
        comparing.request_sent(ENDPOINT, RequestSent(at, on, tg, HEAD))
        for packet in target_segments:
            comparing.target_answer(packet, at)
    comparing.session_ended(ENDPOINT)
    spent = time.process_time() - started
    assert comparing.summary()["compared"] == requests, comparing.summary()
    return spent / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("requests", type=int, nargs="?", default=5000)
    parser.add_argument("--body", type=int, default=612, help="body bytes of each answer (612: nginx's index)")
    parser.add_argument("--differ", action="store_true", help="the target's bodies differ (a diff per request)")
    args = parser.parse_args()
    figures = sorted(run(args.requests, args.body, args.differ) for _ in range(3))
    print(f"{args.requests} requests, {args.body} B bodies, {'differing' if args.differ else 'same'}: "
          f"{figures[1]:.1f} us CPU per compared request (median of 3; min {figures[0]:.1f})")


if __name__ == "__main__":
    main()
