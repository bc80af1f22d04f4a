"""CPU cost of the session layer alone (codec + engine + table), without I/O.

Drives a SessionTable with scripted HTTP sessions and prints microseconds per copied request:
short ones (SYN, ACK, request, FIN captured; SYN-ACK, ACK+response, FIN from the target) or,
with --keepalive, 100 connections of many requests each (request and ACK captured; the
response in two segments, headers then body, as nginx sends a file).
Run: .venv/bin/python bench/engine_cost.py [sessions] [--keepalive] [--profile]
(.venv-mypyc/bin/python for the hot path compiled with mypyc: ``make compiled``).
"""

from __future__ import annotations

import cProfile
import pstats
import socket
import sys
import time

from tcpcopy.capture import packet as pk
from tcpcopy.session.engine import Endpoint, SessionConfig
from tcpcopy.session.table import SessionTable

ONLINE = socket.inet_aton("198.18.1.1")
TARGET = socket.inet_aton("198.18.0.2")
GET = b"GET /index.html HTTP/1.1\r\nHost: 198.18.1.1\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"


def captured(client: bytes, port: int, seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
    options = pk.opt_mss(1460) if flags & pk.SYN else b""
    return pk.build(client, ONLINE, port, 80, seq, ack, flags, 502, options=options, payload=payload).to_bytes()


def answer(client: bytes, port: int, seq: int, ack: int, flags: int, data: int = 0) -> bytes:
    full = pk.build(TARGET, client, 8080, port, seq, ack, flags, 65535, payload=b"r" * data)
    return full.to_bytes()[:full.payload_off]


def scripted(n: int):
    """Per session: the captured client packets and the target's answers, as raw bytes."""
    for i in range(n):
        client = bytes([198, 18, 1, 2 + i % 200])
        port = 10000 + i % 50000
        c_isn, o_isn, t_isn = 1000 + i, 5000, 9000
        yield (client, port,
               [captured(client, port, c_isn, 0, pk.SYN),
                captured(client, port, c_isn + 1, o_isn + 1, pk.ACK),
                captured(client, port, c_isn + 1, o_isn + 1, pk.PSH | pk.ACK, GET),
                captured(client, port, c_isn + 1 + len(GET), o_isn + 300, pk.FIN | pk.ACK)],
               [answer(client, port, t_isn, c_isn + 1, pk.SYN | pk.ACK),
                answer(client, port, t_isn + 1, c_isn + 1 + len(GET), pk.PSH | pk.ACK, 299),
                answer(client, port, t_isn + 300, c_isn + 2 + len(GET), pk.FIN | pk.ACK)])


def run(sessions) -> tuple[float, int]:
    table = SessionTable(SessionConfig(), lambda p, now: [Endpoint(p.src, p.sport, TARGET, 8080)])
    now = 0.0
    sent = 0
    start = time.process_time()
    for client, port, client_packets, answers in sessions:
        now += 0.001
        table.client_packet(pk.decode(client_packets[0]), now)
        table.response(pk.decode(answers[0], headers_only=True), now + 0.0002)
        for raw in client_packets[1:3]:
            table.client_packet(pk.decode(raw), now + 0.0003)
        table.response(pk.decode(answers[1], headers_only=True), now + 0.0005)
        table.client_packet(pk.decode(client_packets[3]), now + 0.0006)
        table.response(pk.decode(answers[2], headers_only=True), now + 0.0007)
        table.run_timers(now + 0.0008)
        sent += len(table.take_packets())
        table.take_events()
    return time.process_time() - start, sent


KEEPALIVE_CONNECTIONS = 100
HEADERS, BODY = 250, 612


def keepalive_requests(requests: int):
    """Per request, in the order an owner sees them: (kind, raw bytes)."""
    for c in range(KEEPALIVE_CONNECTIONS):
        client, port = bytes([198, 18, 1, 2]), 20000 + 2 * c
        yield "client", captured(client, port, 1000, 0, pk.SYN)
        yield "target", answer(client, port, 9000, 1001, pk.SYN | pk.ACK)
        yield "client", captured(client, port, 1001, 5001, pk.ACK)
    for r in range(requests // KEEPALIVE_CONNECTIONS):
        for c in range(KEEPALIVE_CONNECTIONS):
            client, port = bytes([198, 18, 1, 2]), 20000 + 2 * c
            c_seq = 1001 + r * len(GET)
            o_ack = 5001 + r * (HEADERS + BODY)
            t_seq = 9001 + r * (HEADERS + BODY)
            yield "client", captured(client, port, c_seq, o_ack, pk.PSH | pk.ACK, GET)
            yield "target", answer(client, port, t_seq, c_seq + len(GET), pk.ACK, HEADERS)
            yield "target", answer(client, port, t_seq + HEADERS, c_seq + len(GET), pk.PSH | pk.ACK, BODY)
            yield "client", captured(client, port, c_seq + len(GET), o_ack + HEADERS + BODY, pk.ACK)


def run_keepalive(script) -> tuple[float, int]:
    table = SessionTable(SessionConfig(), lambda p, now: [Endpoint(p.src, p.sport, TARGET, 8080)])
    now = 0.0
    sent = 0
    start = time.process_time()
    for i, (kind, raw) in enumerate(script):
        now += 0.00002
        if kind == "client":
            table.client_packet(pk.decode(raw), now)
        else:
            table.response(pk.decode(raw, headers_only=True), now)
        if i % 16 == 15:
            table.run_timers(now)
            sent += len(table.take_packets())
            table.take_events()
    return time.process_time() - start, sent


def build_kind() -> str:
    """Whether the modules measured are the ones compiled by mypyc (setup.py) or plain Python."""
    return "pure Python" if pk.__file__.endswith(".py") else "compiled with mypyc"


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 20000
    keepalive = "--keepalive" in sys.argv
    work = list(keepalive_requests(n)) if keepalive else list(scripted(n))
    runner = run_keepalive if keepalive else run
    if "--profile" in sys.argv:
        cProfile.runctx("runner(work)", globals(), {"work": work, "runner": runner}, "/tmp/engine.prof")
        pstats.Stats("/tmp/engine.prof").sort_stats("tottime").print_stats(25)
        return
    seconds, sent = runner(work)
    kind = "keep-alive requests" if keepalive else "sessions (one request each)"
    print(f"{n} {kind}: {seconds:.2f} CPU s, {seconds / n * 1e6:.1f} us per copied request, "
          f"{sent / n:.1f} packets sent per request ({build_kind()})")


if __name__ == "__main__":
    main()
