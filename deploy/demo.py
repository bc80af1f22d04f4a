"""The main job: a live copy in the four-host lab, ending in a report.

It builds the lab (client, online server, target server, assistant), runs nginx on the
online host (port 80) and on the target (port 8080), starts ``intercept`` on the assistant
and ``tcpcopy`` on the online host, drives real HTTP load from the client with h2load
(short connections at a fixed rate, then keep-alive connections), and reports what the
servers' own access logs say beside what the copier counted, with the CPU and memory of
every process. The lab is torn down afterwards, also on failure.

    python -m tcpcopy.deploy.demo [--rate 500] [--seconds 5] [--keepalive 20x50] [-n 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from tcpcopy.deploy import load
from tcpcopy.deploy.lab import CLIENT, LabError, four_host
from tcpcopy.deploy.livecopy import LiveCopy, LiveCopyError
from tcpcopy.deploy.servers import ServerError


def run(rate: int, seconds: float, keepalive: tuple[int, int], copies: int) -> tuple[list, object]:
    flags = ["-n", str(copies)] if copies > 1 else []
    with four_host() as lab, LiveCopy(lab, tcpcopy_flags=flags, copies=copies) as copy:
        loads = [load.short_connections(lab, CLIENT, f"{copy.url}/index.html", rate, seconds)]
        connections, per_connection = keepalive
        if connections:
            loads.append(load.keepalive(lab, CLIENT, f"{copy.url}/index.html", connections, per_connection))
        expected = sum(r.summary.done for r in loads) * copies
        copy.wait_for_target(expected)
        copy.stop_tcpcopy()
        copy.stop_intercept()
        return loads, copy.report()


def _keepalive(text: str) -> tuple[int, int]:
    connections, sep, requests = text.partition("x")
    if not sep or not connections.isdigit() or not requests.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give CONNECTIONSxREQUESTS, e.g. 20x50 (0x0 for none)")
    return int(connections), int(requests)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcpcopy.deploy.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=500, help="short connections per second (500)")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long the short-connection load runs (5)")
    parser.add_argument("--keepalive", type=_keepalive, default=(20, 50),
                        help="keep-alive load as CONNECTIONSxREQUESTS (20x50)")
    parser.add_argument("-n", dest="copies", type=int, default=1, help="tcpcopy -n: copies of each session")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        loads, report = run(args.rate, args.seconds, args.keepalive, args.copies)
    except (LabError, ServerError, LiveCopyError, load.LoadError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"report": asdict(report)}, indent=2, default=str))
        return 0
    print("load from the client (h2load):")
    for result in loads:
        s = result.summary
        print(f"  {type(result).__name__:<24} {s.done} requests, {s.succeeded} succeeded, {s.requests_per_s:.0f} req/s")
    print("copy, from the servers' access logs and the copier's counters:")
    print(report.render())
    return 0 if report.loss_ratio == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
