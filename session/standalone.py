"""Replay a recorded pcap to a target through the session engine, all in one process.

The smallest real adapter over the engine: client packets come from a pcap file (paced by
their own timestamps), replayed packets leave through a raw IP socket, and the target's
answers are captured on a local interface with libpcap instead of arriving from an
intercept. It proves the engine's packets against a real kernel, and it is handy for
trying a recording against a server by hand:

    python -m tcpcopy.session.standalone --pcap session.pcap --online-port 80 \\
        --target 198.18.0.2:8080 --client-ip 198.18.3.5 --iface veth0

The host it runs on must not answer for the client address (it is not one of its own) and
the target must route that address back to this host: the kernel then drops the answers
after pcap has seen them.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import select
import sys
import time

from tcpcopy.capture import packet as pk
from tcpcopy.capture.pcapfile import CaptureFileError, open_capture
from tcpcopy.capture.pcapio import CaptureError, dispatch, open_live
from tcpcopy.session.engine import Closed, Dropped, Endpoint, SessionConfig
from tcpcopy.session.rawsend import DualSender, RawSendError
from tcpcopy.session.table import SessionTable

MAX_WAIT = 0.05  # seconds between looks at the clock when nothing is due


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m tcpcopy.session.standalone",
        description="Replay the client side of the TCP sessions in a pcap file to a target "
                    "server, capturing its answers on a local interface.")
    parser.add_argument("--pcap", required=True, help="recorded capture (pcap or pcapng)")
    parser.add_argument("--online-port", type=int, required=True,
                        help="server port in the recording; packets to it are the client's")
    parser.add_argument("--target", required=True, type=_address_port,
                        help="target server as IP:PORT ([IPv6]:PORT for IPv6)")
    parser.add_argument("--client-ip", type=_address,
                        help="source address of replayed packets (default: as recorded)")
    parser.add_argument("--iface", required=True, help="interface the target's answers arrive on")
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed-up factor")
    parser.add_argument("--max-seconds", type=float, default=30.0,
                        help="stop after this long even if sessions are still open")
    return parser.parse_args(argv)


def _address(text: str) -> bytes:
    try:
        return ipaddress.ip_address(text).packed
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 or IPv6 address") from None


def _address_port(text: str) -> tuple[bytes, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not IP:PORT")
    return _address(host.strip("[]")), int(port)


def load_client_packets(path: str, online_port: int):
    """The recording's client-to-server packets, decoded, with their timestamps."""
    packets, malformed = [], 0
    with open_capture(path, f"tcp and dst port {online_port}") as frames:
        for frame in frames:
            try:
                packets.append((frame.ts, pk.decode_frame(frame.data, frames.linktype)))
            except pk.PacketError:
                malformed += 1
    return packets, malformed


def run(args) -> dict:
    target_ip, target_port = args.target
    packets, malformed = load_client_packets(args.pcap, args.online_port)

    def endpoints_for(pkt: pk.Packet, now: float) -> list[Endpoint]:
        return [Endpoint(args.client_ip or pkt.src, pkt.sport, target_ip, target_port)]

    table = SessionTable(SessionConfig(), endpoints_for)
    family = 6 if len(target_ip) == 16 else 4
    answers = open_live(args.iface, f"ip{'6' if family == 6 else ''} and tcp and "
                                    f"src host {ipaddress.ip_address(target_ip)} and src port {target_port}")
    linktype = answers.datalink()
    sender = DualSender()
    outcomes: dict[str, int] = {}
    start = time.monotonic()
    first_ts = packets[0][0] if packets else 0.0
    next_index = 0
    now = 0.0
    try:
        while True:
            now = time.monotonic() - start
            while next_index < len(packets) and (packets[next_index][0] - first_ts) / args.speed <= now:
                table.client_packet(packets[next_index][1], now)
                next_index += 1
            dispatch(answers, linktype, lambda p: table.response(p, now), headers_only=True)
            table.run_timers(now)
            _flush(table, sender, outcomes)
            done = next_index == len(packets) and all(s.over for s in table.sessions())
            if done or now >= args.max_seconds:
                break
            _wait(answers, table, packets, next_index, first_ts, args.speed, now)
    finally:
        table.shutdown(now)
        _flush(table, sender, outcomes)
        sender.close()
    return {
        "client_packets_in_file": len(packets),
        "malformed_in_file": malformed,
        "seconds": round(now, 3),
        "outcomes": outcomes,
        "table": dataclasses.asdict(table.table_stats),
        "engine": dataclasses.asdict(table.stats),
        "raw_sent": sender.sent,
        "raw_send_failures": sender.failed,
    }


def _flush(table: SessionTable, sender: DualSender, outcomes: dict) -> None:
    for raw in table.take_packets():
        sender.send(raw)
    for item in table.take_events():
        if isinstance(item, tuple) and isinstance(item[1], (Closed, Dropped)):
            kind = "closed" if isinstance(item[1], Closed) else "dropped"
            key = f"{kind}:{item[1].reason}"
            outcomes[key] = outcomes.get(key, 0) + 1


def _wait(answers, table, packets, next_index, first_ts, speed, now) -> None:
    """Sleep until an answer arrives, a timer is due or the next recorded packet is."""
    due = [now + MAX_WAIT]
    deadline = table.next_deadline()
    if deadline is not None:
        due.append(deadline)
    if next_index < len(packets):
        due.append((packets[next_index][0] - first_ts) / speed)
    timeout = max(0.0, min(due) - now)
    select.select([answers.fileno()], [], [], timeout)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        summary = run(args)
    except (CaptureError, CaptureFileError, RawSendError) as exc:
        print(f"standalone: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
