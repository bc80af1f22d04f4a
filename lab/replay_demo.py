"""Replay a recorded HTTP session to a real nginx in a two-namespace lab, and report.

What runs: a lab of two network namespaces (``copier`` 198.18.0.1, ``target`` 198.18.0.2,
the target routing the replayed client network 198.18.3.0/24 back to the copier, whose
kernel drops those answers since it neither owns nor forwards that network), nginx on the
target at 198.18.0.2:8080 with its access log on, and ``tcpcopy.session.standalone`` in the
copier replaying the client side of the recording through the session engine. The report
sets what nginx logged beside what the engine did; the lab is torn down afterwards, also on
failure.

    python -m tcpcopy.lab.replay_demo [--pcap FILE] [--client-ip 198.18.3.5] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tcpcopy.lab.netns import LabError, two_host
from tcpcopy.lab.servers import Nginx, ServerError

CHECKOUT = Path(__file__).resolve().parents[1]
DEFAULT_PCAP = CHECKOUT / "tests" / "fixtures" / "http_keepalive.pcap"
TARGET_ADDRESS = "198.18.0.2"
TARGET_PORT = 8080
ONLINE_PORT = 80


def replay(pcap: Path, client_ip: str, max_seconds: float = 20.0) -> dict:
    """Run the replay in a fresh lab and return the report (dict)."""
    with two_host() as lab:
        with Nginx(lab, "target", TARGET_ADDRESS, TARGET_PORT) as nginx:
            done = lab.run("copier", [
                sys.executable, "-m", "tcpcopy.session.standalone",
                "--pcap", str(pcap), "--online-port", str(ONLINE_PORT),
                "--target", f"{TARGET_ADDRESS}:{TARGET_PORT}", "--client-ip", client_ip,
                "--iface", lab.interface("copier"), "--max-seconds", str(max_seconds),
            ], timeout=max_seconds + 30)
            copier = json.loads(done.stdout)
            nginx.stop()
            served = nginx.access_log_entries()
    return {"pcap": str(pcap), "client_ip": client_ip, "copier": copier, "target_log": served}


def render(report: dict) -> str:
    copier, served = report["copier"], report["target_log"]
    engine = copier["engine"]
    lines = [
        f"replayed {report['pcap']} as {report['client_ip']} -> {TARGET_ADDRESS}:{TARGET_PORT}",
        f"  client packets in file   {copier['client_packets_in_file']}",
        f"  sessions started         {copier['table']['sessions_started']}",
        f"  established              {engine['established']}",
        f"  requests sent            {engine['requests_sent']}",
        f"  responses completed      {engine['responses_completed']}",
        f"  packets sent             {copier['raw_sent']} (send failures {sum(copier['raw_send_failures'].values())})",
        f"  retransmits              {engine['retransmits']} (+{engine['syn_retransmits']} SYN)",
        f"  outcomes                 {copier['outcomes'] or 'none'}",
        f"target nginx logged {len(served)} request(s):",
    ]
    for entry in served:
        lines.append(f"  {entry['remote_addr']}:{entry['remote_port']} {entry['request_method']} "
                     f"{entry['request_uri']} -> {entry['status']} ({entry['bytes_sent']} bytes, "
                     f"request {entry['connection_requests']} on connection {entry['connection']})")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcpcopy.lab.replay_demo",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--pcap", type=Path, default=DEFAULT_PCAP, help="recording to replay")
    parser.add_argument("--client-ip", default="198.18.3.5",
                        help="replayed client address (inside 198.18.3.0/24)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        report = replay(args.pcap, args.client_ip)
    except (LabError, ServerError) as exc:
        print(f"replay_demo: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
