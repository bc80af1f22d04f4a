"""The ``intercept`` command: run one intercept on the assistant host.

Flags follow the C intercept (reference §1.3) where they still mean something:

    intercept -F 'tcp and src port 8080' [-i dev[,dev]] [-p 36524] [-b ip]
              [-l file] [-P pidfile] [-d] [--payload N] [--answer-bytes N] [--watch-max N]
              [--route-ttl S] [--identity NAME]
              [--key intercept.key_secret --allow-keys allowed-owners/]   (CurveZMQ)

C flags that belong to its other builds or wire format (-n, -s, -x, -q, -c) are accepted,
explained and ignored, so existing scripts keep working; -t (which the C intercept rejects)
and -D (not supported) stop with an explanation. Exit status: 0 after SIGINT/SIGTERM,
2 for a bad command line, 1 when the capture or the control port cannot be opened.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import socket
import sys

import zmq

from tcpcopy.capture.pcapio import CaptureError
from tcpcopy.cluster.collector import settle_collector
from tcpcopy.cluster.bpfcheck import filter_compiles
from tcpcopy.cluster.config import WILDCARD_BINDS, load_config
from tcpcopy.cluster.curve import (KeyFileError, KeyLayout, add_server_key_flags, client_keys_from_flags,
                                   plain_warning, server_keys_from_flags)
from tcpcopy.cluster.privileges import PrivilegeError
from tcpcopy.cluster.process import (CommandParser, absolute_paths, add_log_format, add_not_applicable, add_user,
                                     drop_to, install_log_reopen, remove_pid_file, reopen_logs_if_asked,
                                     resolve_shard, shard_of, start_command, user_from_config, version_text)
from tcpcopy.cluster.shard import combine_filters, intercept_shard_filter
from tcpcopy.intercept.routes import DEFAULT_MAX_PER_OWNER, DEFAULT_MAX_WATCHED
from tcpcopy.intercept.worker import (DEFAULT_MAX_OWNERS, DEFAULT_PORT, MAX_ANSWER_BYTES, MAX_PAYLOAD, Worker,
                                      WorkerConfig)

log = logging.getLogger("tcpcopy.intercept")

FILTER_EXAMPLE = "-F 'tcp and src port 8080'"

# C flags with no meaning here: (metavar, or None for no value; fatal; explanation).
NOT_APPLICABLE = {
    "-n": ("K", False, "combined-mode threshold does not apply: batching is adaptive "
                        "(a RESPONSES message leaves at 64 records or 1 ms after its first)"),
    "-s": ("N", False, "the delay-table hash size does not apply: answers that beat their "
                        "registration wait in a bounded queue (65536 records, 2 s)"),
    "-x": ("IP,...", False, "belongs to the C tool's iptables (traditional) mode: this intercept "
                        "only captures, and ip_forward=0 on the assistant drops the answers"),
    "-q": ("N", False, "belongs to the C tool's nfqueue mode: this intercept captures with libpcap"),
    "-c": (None, False, "belongs to the C tool's --single build: owners here register "
                         "every connection, so one intercept serves many copiers"),
    "-t": ("[S]", True, "is not an intercept option (the C intercept rejects it too): idle routes "
                       "expire after --route-ttl SECONDS (default 120)"),
    "-D": ("DST-ORIG", True, "(Docker address rewrite) is not supported: run intercept where the target's "
                       "answers still carry the replayed client address"),
}


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: use 1..65535, e.g. -p {DEFAULT_PORT}")
    return int(text)


def _bind_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address: give one of this host's "
                                         "addresses, e.g. -b 10.0.0.2, or omit -b for all") from None


def _devices(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r}: give device names separated by commas, "
                                         "e.g. -i eth0,eth1 (or -i any)")
    return names


def _payload(text: str) -> int:
    if not text.isdigit() or int(text) > MAX_PAYLOAD:
        raise argparse.ArgumentTypeError(f"{text!r}: give a byte count 0..{MAX_PAYLOAD}, e.g. --payload 128")
    return int(text)


def _answer_bytes(text: str) -> int:
    if not text.isdigit() or int(text) > MAX_ANSWER_BYTES:
        raise argparse.ArgumentTypeError(f"{text!r}: give a byte count 0..{MAX_ANSWER_BYTES}, "
                                         "e.g. --answer-bytes 65536 (0: headers only)")
    return int(text)


def _watch_max(text: str) -> int:
    if not text.isdigit() or int(text) > 100_000_000:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of routes, e.g. --watch-max "
                                         f"{DEFAULT_MAX_WATCHED}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1e9:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of seconds, e.g. --route-ttl 120")
    return value


def _count(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 100_000_000:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive whole number, e.g. 256")
    return int(text)


def _identity(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the identity is empty: give a name, e.g. --identity intercept-0@assist1")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="intercept",
        description="Capture the target's answers to replayed clients and send their headers "
                    "back to the tcpcopy session owners that registered them.",
        epilog=f"Example: intercept -i eth0 {FILTER_EXAMPLE}")
    parser.add_argument("-F", dest="bpf", metavar="FILTER",
                        help=f"pcap filter matching the target's answers (required), e.g. {FILTER_EXAMPLE}")
    parser.add_argument("-i", dest="devices", type=_devices, default=("any",), metavar="DEV[,DEV]",
                        help="capture devices (default: any, i.e. all)")
    parser.add_argument("-p", dest="port", type=_port, default=DEFAULT_PORT,
                        help=f"control port the session owners connect to (default {DEFAULT_PORT})")
    parser.add_argument("-b", dest="bind", type=_bind_address, default="0.0.0.0", metavar="IP",
                        help="address to listen on (default: all, IPv4 and IPv6)")
    parser.add_argument("-l", dest="log_file", metavar="FILE", help="log to FILE (default: stderr)")
    parser.add_argument("-P", dest="pid_file", metavar="FILE", help="write the pid to FILE, removed on exit")
    parser.add_argument("-d", dest="daemon", action="store_true", help="run as a daemon (needs -l)")
    parser.add_argument("-v", "--version", action="version", version=version_text("intercept"), help="print the version and exit")
    parser.add_argument("--payload", type=_payload, default=0, metavar="N",
                        help=f"also send the first N payload bytes of each answer (0..{MAX_PAYLOAD}; "
                             "like the C tool's TC_PAYLOAD build)")
    parser.add_argument("--answer-bytes", type=_answer_bytes, default=0, metavar="N",
                        help="send the answers of routes an owner WATCHes (the sessions it compares) whole, "
                             f"up to N payload bytes a packet (0..{MAX_ANSWER_BYTES}; default 0: WATCH is "
                             "refused); the capture's snaplen grows by N, headers still go as before")
    parser.add_argument("--watch-max", type=_watch_max, default=DEFAULT_MAX_WATCHED, metavar="N",
                        help=f"routes one owner may watch at once (default {DEFAULT_MAX_WATCHED}); "
                             "further WATCHes are refused and counted")
    parser.add_argument("--route-ttl", type=_seconds, default=120.0, metavar="SECONDS",
                        help="drop a route idle this long (default 120; owners also unregister)")
    parser.add_argument("--max-owners", type=_count, default=DEFAULT_MAX_OWNERS, metavar="N",
                        help=f"session owners served at once (default {DEFAULT_MAX_OWNERS}); "
                             "further HELLOs are refused and counted")
    parser.add_argument("--routes-per-owner", type=_count, default=DEFAULT_MAX_PER_OWNER, metavar="N",
                        help=f"connections one owner may register at once (default {DEFAULT_MAX_PER_OWNER}); "
                             "further REGISTERs are refused and counted")
    parser.add_argument("--identity", type=_identity, default=f"intercept@{socket.gethostname()}",
                        metavar="NAME", help="name in HELLO messages and logs (default intercept@HOSTNAME)")
    parser.add_argument("--shard", default="0/1", metavar="K/N",
                        help="capture only the answers to replayed endpoints of shard K of N "
                             "(several intercepts share one assistant host); with --config just K")
    add_log_format(parser)
    add_user(parser)
    parser.add_argument("--stats", metavar="ENDPOINT", default="",
                        help="publish counters every second to this ZeroMQ endpoint (tcpcopy-cluster top)")
    add_server_key_flags(parser, "session owners", "keys/intercept.key_secret")
    parser.add_argument("--stats-server-key", metavar="FILE",
                        help="CurveZMQ on the stats channel (--stats): the stats listener's public key "
                             "(stats.key); this intercept publishes with its --key")
    parser.add_argument("--config", metavar="TOML",
                        help="cluster config: take -i, -F, -b, -p (base_port + K), --payload, --answer-bytes "
                             "and --watch-max from its [intercept] section, with --shard K")
    add_not_applicable(parser, NOT_APPLICABLE)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.keys = args.stats_keys = None
    resolve_shard(parser, args, _from_cluster_config)
    if not args.config:
        absolute_paths(args, "key", "allow_keys", "stats_server_key")
        try:   # read now, before any --user drop
            args.keys = server_keys_from_flags(args.key, args.allow_keys)
            if args.stats_server_key:
                args.stats_keys = client_keys_from_flags(args.key, None, args.stats_server_key)[1]
        except KeyFileError as exc:
            parser.error(str(exc))
    if not args.bpf:
        parser.error(f"-F is required: give the pcap filter that matches the target's answers, "
                     f"e.g. {FILTER_EXAMPLE}")
    if not filter_compiles(args.bpf):
        parser.error(f"-F {args.bpf!r} is not a valid pcap filter: see pcap-filter(7), e.g. {FILTER_EXAMPLE}")
    if args.daemon and not args.log_file:
        parser.error("-d needs -l FILE: a daemon has no terminal to log to, e.g. -d -l /var/log/intercept.log")
    absolute_paths(args, "log_file", "pid_file")
    return args


def _from_cluster_config(args: argparse.Namespace) -> None:
    config = load_config(args.config)
    section = config.intercept
    args.shard = shard_of(args.shard, section.count, "instance")
    args.bpf = section.filter
    args.devices = section.interfaces
    args.bind = section.bind
    args.port = section.base_port + args.shard[0]
    args.payload = section.payload
    args.answer_bytes = section.answer_bytes
    args.watch_max = section.watch_max
    args.identity = f"intercept-{args.shard[0]}@{socket.gethostname()}"
    args.stats = args.stats or config.stats.endpoint
    args.user = args.user or user_from_config(config.supervisor.user)
    if config.security.curve:
        layout = KeyLayout(config.security.keys_dir)
        args.keys = layout.intercept_keys()
        args.stats_keys = layout.publisher_keys("intercept") if args.stats else None


def config_from(args: argparse.Namespace) -> WorkerConfig:
    # A wildcard listens on IPv4 and IPv6 both (the ROUTER is dual-stack), so owners can
    # name this host by either address with -s.
    host = "*" if args.bind in WILDCARD_BINDS else f"[{args.bind}]" if ":" in args.bind else args.bind
    bpf = combine_filters(args.bpf, intercept_shard_filter(*args.shard))
    return WorkerConfig(endpoint=f"tcp://{host}:{args.port}", devices=args.devices, bpf=bpf,
                        payload=args.payload, route_ttl=args.route_ttl, identity=args.identity,
                        stats_endpoint=args.stats, max_owners=args.max_owners,
                        routes_per_owner=args.routes_per_owner, answer_bytes=args.answer_bytes,
                        watch_max=args.watch_max, keys=args.keys, stats_keys=args.stats_keys)


PLAIN_FIX = ("pass intercept --key DIR/intercept.key_secret --allow-keys DIR/allowed-owners (and "
             "--stats-server-key DIR/stats.key with --stats), and tcpcopy --server-key DIR/intercept.key "
             "--key DIR/online.key_secret; in a cluster config, [security] curve = true")


def warn_if_plain(args: argparse.Namespace) -> None:
    """One warning for the channels this intercept runs without keys."""
    plain = (["the control channel (owners to this intercept)"] if args.keys is None else []) + (
        ["the stats channel"] if args.stats and args.stats_keys is None else [])
    if plain:
        log.warning("%s", plain_warning(plain, PLAIN_FIX))


def main(argv=None) -> int:
    args = parse_args(argv)
    failed = start_command("intercept", args)
    if failed is not None:
        return failed
    warn_if_plain(args)
    try:
        return _run(config_from(args), args.user)
    finally:
        remove_pid_file(args.pid_file)


def _run(config: WorkerConfig, run_as=None) -> int:
    worker = Worker(config)
    try:
        worker.open_captures()   # before bind: an answered HELLO means the capture is on
        endpoint = worker.bind()
        drop_to(run_as)          # captures open, port bound: nothing more needs root
    except (CaptureError, PrivilegeError) as exc:
        log.error("%s", exc)
        worker.close()
        return 1
    except zmq.ZMQError as exc:
        log.error("cannot listen on %s: %s (is another intercept running there? pick another -p or -b)",
                  config.endpoint, exc)
        worker.close()
        return 1
    stop = _install_signal_handlers(worker)
    log.info("%s (%s) listening on %s, capturing on %s with filter %r, payload %d bytes, "
             "watched answers %s", config.identity, worker.hello.instance, endpoint, ",".join(config.devices),
             config.bpf, config.payload,
             f"up to {config.answer_bytes} bytes" if config.answer_bytes else "off (--answer-bytes)")
    settle_collector()   # start-up objects are permanent; collections come less often
    code = 0
    try:
        worker.serve(lambda: reopen_logs_if_asked() or stop)
    except CaptureError as exc:
        log.error("%s", exc)
        code = 1
    finally:
        worker.close()
        log.info("%s", worker.stats_line())
    return code


def _install_signal_handlers(worker: Worker) -> list:
    """SIGINT/SIGTERM end the loop at once: a flag, plus a byte on a pipe the loop polls.
    SIGHUP reopens the log file."""
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    worker.add_wake_fd(read_fd)
    stop: list = []

    def on_signal(signum, _frame):
        if not stop:
            log.info("%s: stopping", signal.Signals(signum).name)
        stop.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    install_log_reopen()   # SIGHUP: the wake-up pipe ends the poll, the loop reopens the log file
    return stop


if __name__ == "__main__":
    sys.exit(main())
