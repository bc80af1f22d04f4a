"""CPU cost of ``tcpcopy --pcap-failed``, without I/O (session/failedpcap.py).

Drives a SessionTable with the short HTTP sessions of ``engine_cost.py`` (4 captured
packets, 3 answers, the packets the engine sends) as the owner does: once as it runs without
the flag, once keeping every session's packets (freed sessions' packets dropped, as for
sessions that went well), and prints microseconds per session and what keeping adds. Then
the cost of making one failed session's file (its bytes; the write is the disk's).
Run: .venv/bin/python bench/pcap_failed_cost.py [sessions] [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import time

from engine_cost import TARGET, scripted

from tcpcopy.capture import packet as pk
from tcpcopy.session.engine import Dropped, Endpoint, SessionConfig
from tcpcopy.session.failedpcap import (ANSWER, CLIENT, SENT, FailedSessions, PcapFailedOptions, file_name,
                                         pcap_bytes)
from tcpcopy.session.table import SessionFreed, SessionTable

WALL = 1_800_000_000.0


def drive(sessions: list, failed: FailedSessions | None) -> float:
    """CPU seconds for the sessions, the owner's per-packet path with or without keeping."""
    table = SessionTable(SessionConfig(), lambda p, now: [Endpoint(p.src, p.sport, TARGET, 8080)],
                         max_sessions=1_000_000)
    now = 0.0
    started = time.process_time()
    for _client, _port, client_packets, answers in sessions:
        now += 0.001
        steps = [("c", client_packets[0]), ("a", answers[0]), ("c", client_packets[1]), ("c", client_packets[2]),
                 ("a", answers[1]), ("c", client_packets[3]), ("a", answers[2])]
        for kind, raw in steps:
            if kind == "c":
                kept = table.client_packet(pk.decode(raw), now)
                if failed is not None and kept:
                    failed.client_packet(kept, raw, WALL + now)
            else:
                session = table.response(pk.decode(raw, headers_only=True), now)
                if failed is not None and session is not None:
                    failed.answer(session, raw, WALL + now)
        table.run_timers(now)
        flush(table, failed, now)
    return time.process_time() - started


def flush(table: SessionTable, failed: FailedSessions | None, now: float) -> None:
    """What the owner's _flush does with events and packets (the sends left out)."""
    for item in table.take_events():
        if failed is None:
            continue
        if type(item) is tuple and type(item[1]) is Dropped:
            failed.ended(item[0], True, item[1].reason)
        elif type(item) is SessionFreed:
            failed.freed(item.endpoint)
    if failed is None:
        table.take_packets()
        return
    for session, packets in table.take_packets_by_session():
        if packets:
            failed.sent(session, packets, WALL + now)


class _Stub:
    __slots__ = ("endpoint",)

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint


def keeping_alone(sessions: list, sent_each: int) -> tuple[float, int]:
    """CPU seconds of the keeper's own calls for the sessions (the table left out), each
    freed 6,000 sessions later as the linger frees them; and the packets kept."""
    failed = FailedSessions(PcapFailedOptions("/bench"))
    stubs = [_Stub(Endpoint(client, port, TARGET, 8080)) for client, port, _c, _a in sessions]
    sent = [b"s" * 52] * sent_each
    packets = 0
    started = time.process_time()
    for i, (_client, _port, client_packets, answers) in enumerate(sessions):
        stub, at = stubs[i], WALL + i * 0.001
        for raw in client_packets:
            failed.client_packet([stub], raw, at)
        for raw in answers:
            failed.answer(stub, raw, at)
        failed.sent(stub, sent, at)
        packets += len(client_packets) + len(answers) + sent_each
        if i >= 6000:
            failed.ended(stubs[i - 6000].endpoint, False, "completed")
            failed.freed(stubs[i - 6000].endpoint)
    return time.process_time() - started, packets


def file_cost(sessions: list, files: int) -> tuple[float, int]:
    """CPU seconds to make ``files`` files (name and bytes) of one short session, and its size."""
    table = SessionTable(SessionConfig(), lambda p, now: [Endpoint(p.src, p.sport, TARGET, 8080)])
    _client, _port, client_packets, answers = sessions[0]
    kept = [(WALL, CLIENT, raw) for raw in client_packets] + [(WALL, ANSWER, raw) for raw in answers]
    for raw in client_packets:
        table.client_packet(pk.decode(raw), 0.0)
    kept += [(WALL, SENT, raw) for raw in table.take_packets()]
    endpoint = Endpoint(TARGET, 40000, TARGET, 8080)
    snaplen = PcapFailedOptions("/bench").snaplen
    started = time.process_time()
    for _ in range(files):
        file_name(endpoint, WALL, "target_timeout")
        content = pcap_bytes(kept, snaplen)
    return time.process_time() - started, len(content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sessions", type=int, nargs="?", default=20_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, interleaved (median)")
    args = parser.parse_args()
    sessions = list(scripted(args.sessions))
    off, on, peak = [], [], 0
    for _ in range(args.repeat):
        off.append(drive(sessions, None))
        failed = FailedSessions(PcapFailedOptions("/bench"))
        on.append(drive(sessions, failed))
        peak = failed.counters.memory_peak_bytes
    per = 1e6 / args.sessions
    off_us, on_us = statistics.median(off) * per, statistics.median(on) * per
    print(f"{args.sessions} short sessions (7 captured/answer packets and the engine's own each), "
          f"median of {args.repeat}:")
    print(f"  without --pcap-failed   {off_us:7.1f} us per session")
    print(f"  keeping every session   {on_us:7.1f} us per session  (+{on_us - off_us:.1f} us, "
          f"x{on_us / off_us:.2f}); peak kept {peak / 1e6:.1f} MB")
    seconds, packets = keeping_alone(sessions, 6)
    print(f"  the keeping alone        {seconds / packets * 1e6:7.2f} us per packet kept "
          f"({packets / args.sessions:.0f} a session)")
    seconds, size = file_cost(sessions, 2_000)
    print(f"  one failed session's file: {seconds / 2_000 * 1e6:.1f} us to make ({size} bytes)")


if __name__ == "__main__":
    main()
