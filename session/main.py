"""The ``tcpcopy`` command: copy live (or recorded) TCP traffic to a target server.

Flags follow the C tcpcopy (reference §1.2), so an existing command line works:

    tcpcopy -x 80-198.18.0.2:8080 -s 198.18.2.1 [-c 198.18.3.x] [-n 2 -f 1] [-r 50]
            [-i eth0 | --offline -i file.pcap [-a 2] [-I 500] [-T 3]] [-F filter]
            [-t 600] [-k 720] [-m MB] [-M 1500] [-D 1460] [-O] [-W] [-L]
            [-l file] [-P pidfile] [-d]
            [--server-key intercept.key --key online.key_secret]          (CurveZMQ)

It runs one capture worker process (libpcap on the interface, or the pcap file) and one
session owner (this process), joined by ZeroMQ over ipc://. A capture worker that something
kills is started again (``session/capturechild.py``). Exit status: 0 after SIGINT or
SIGTERM or the end of an offline file, 1 when the copy had to stop (every intercept lost
without -L, the capture failed, -m reached), 2 for a bad command line or an intercept that
is unreachable at start.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile

from tcpcopy.cluster.curve import KeyFileError, add_client_key_flags, client_keys_from_flags, plain_warning
from tcpcopy.cluster.options import (DEFAULT_INTERCEPT_PORT, OptionError, capture_filter, online_answers_capture_filter,
                                     parse_baselines, parse_client_pool, parse_intercepts,
                                     parse_mappings)
from tcpcopy.cluster.privileges import PrivilegeError
from tcpcopy.cluster.process import (CommandParser, absolute_paths, add_log_format, add_not_applicable, add_user,
                                     drop_to, install_log_reopen, open_for_writing, private_directory,
                                     remove_pid_file, reopen_logs_if_asked, start_command, version_text)
from tcpcopy.session.capturechild import CaptureChild, not_restartable_reason
from tcpcopy.session.compare import CompareConfig, GateSpecError, MaskError, compile_masks, evaluate_gate, parse_fail_on
from tcpcopy.session.comparing import CompareOptions
from tcpcopy.session.engine import SessionConfig
from tcpcopy.session.fanout import FanoutOptions
from tcpcopy.session.owner import Owner, OwnerError, OwnerOptions, shedding_config
from tcpcopy.session.pcapfiles import add_pcap_failed_flags, pcap_failed_options
from tcpcopy.session.rawsend import DualSender, RawSendError

log = logging.getLogger("tcpcopy")

EXAMPLE = "tcpcopy -x 80-198.18.0.2:8080 -s 198.18.2.1 -c 198.18.3.x"

NOT_APPLICABLE = {
    "-C": ("N", False, "one ZeroMQ connection per intercept carries everything"),
    "-R": ("MS", False, "the RTT is measured per session (the C flag was never applied either)"),
    "-U": ("KB", False, "there are no per-session memory pools to size"),
    "-o": ("DEV", True, "(pcap send) is not supported: replayed packets leave through raw IP sockets"),
}


def _positive_int(low: int, high: int, example: str):
    def parse(text: str) -> int:
        if not text.lstrip("-").isdigit() or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"{text!r}: give a whole number {low}..{high}, e.g. {example}")
        return int(text)
    return parse


def _positive_float(example: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not 0 < value < 1e9:
            raise argparse.ArgumentTypeError(f"{text!r}: give a positive number, e.g. {example}")
        return value
    return parse


def _seconds_or_zero(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds from 0 to 3600, e.g. --shed-after 10 "
                                         "(0 never sheds)")
    return value


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="tcpcopy", description="Copy live TCP traffic to a target server as "
                      "real TCP sessions; intercept on the assistant host sends back the target's answers.",
                      epilog=f"Example: {EXAMPLE}")
    p.add_argument("-x", dest="mappings", metavar="MAP[,MAP]",
                   help="[onlineIP:]onlinePort-targetIP:targetPort: copy traffic to the online port to the target (required)")
    p.add_argument("-s", dest="intercepts", metavar="IP[:PORT][,...]", help="intercept servers (required)")
    p.add_argument("-p", dest="intercept_port", type=_positive_int(1, 65535, "-p 36524"),
                   default=DEFAULT_INTERCEPT_PORT, help="default port of -s entries (36524)")
    p.add_argument("-c", dest="client_pool", metavar="IP[,a.b.c.x]",
                   help="source addresses of replayed sessions (a.b.c.x means .1-.254); each client is pinned to one")
    p.add_argument("-H", dest="localhost_ip", type=_address, metavar="IP",
                   help="replace source 127.0.0.1 with IP")
    p.add_argument("-n", dest="copies", type=_positive_int(1, 64, "-n 2"), default=1,
                   help="copy every session N times (1..64)")
    p.add_argument("-f", dest="port_offset", type=_positive_int(0, 31, "-f 1"), default=0,
                   help="port offset factor, so several tcpcopy instances never share client ports (0..31)")
    p.add_argument("--instances", type=_positive_int(1, 32, "--instances 2"), default=1,
                   help="copiers sharing client addresses and intercepts: with -f F of --instances N, "
                        "this one uses only client ports with port %% N == F, so none clash")
    p.add_argument("-r", dest="sample_percent", type=_positive_int(0, 100, "-r 50"), default=100,
                   help="copy this percentage of sessions, decided per session (1..100; 0 means all, as in TCPCopy)")
    p.add_argument("-g", dest="ramp", action="store_true",
                   help="ramp sampling up gradually: 1%% of sessions in the first second, one more each second, up to -r")
    p.add_argument("-i", dest="source", metavar="DEV|FILE", default="any",
                   help="capture interface (default any), or the pcap file with --offline")
    p.add_argument("--offline", action="store_true", help="-i names a pcap or pcapng file to replay")
    p.add_argument("-F", dest="user_filter", metavar="FILTER", help="pcap filter ANDed with the one built from -x")
    p.add_argument("--all-acks", action="store_true",
                   help="capture the clients' pure ACKs too (the kernel filter leaves them out, except on "
                        "ports where the server speaks first: 21 22 23 25 110 119 143 587 2525 3306 5900); "
                        "for another server-first port, or to follow a client's window updates")
    p.add_argument("-B", dest="buffer_mb", type=_positive_int(1, 4096, "-B 64"), default=64,
                   help="capture buffer in MB (64)")
    p.add_argument("-S", dest="snaplen", type=_positive_int(128, 262144, "-S 262144"), default=262144,
                   help="capture snaplen (262144: whole packets, GRO super-packets of 64 KiB too)")
    p.add_argument("-a", dest="speed", type=_positive_float("-a 2"), default=1.0, help="offline speed-up factor")
    p.add_argument("-I", dest="idle_gap_ms", type=_positive_float("-I 500"),
                   help="offline: cut idle gaps longer than this many ms")
    p.add_argument("-T", dest="repeat", type=_positive_int(1, 1000, "-T 3"), default=1,
                   help="offline: replay the file this many times")
    p.add_argument("-t", dest="session_timeout", type=_positive_float("-t 600"), default=600.0,
                   help="drop a session when the target is silent this long while it is waited on (600 s)")
    p.add_argument("-k", dest="keepalive_timeout", type=_positive_float("-k 720"),
                   help="end an idle session after this long (default -t + 120 s)")
    p.add_argument("-m", dest="memory_mb", type=_positive_int(16, 1 << 20, "-m 2048"),
                   help="stop when the peak RSS passes this many MB")
    p.add_argument("--buffer-budget", dest="buffer_budget_mb", type=_positive_int(16, 1 << 20, "--buffer-budget 1024"),
                   default=1024, metavar="MB",
                   help="client data all sessions may buffer together; the session that passes it is dropped (1024)")
    p.add_argument("--shed-after", dest="shed_after", type=_seconds_or_zero, default=10.0, metavar="SECONDS",
                   help="live copy only: when captured input waits this long before the copier gets to it, "
                        "shed whole sessions (new ones, and live ones in proportion to the shortfall) "
                        "until it catches up; 0 never sheds (10)")
    p.add_argument("-M", dest="mtu", type=_positive_int(576, 65535, "-M 1500"), default=1500,
                   help="split captured packets larger than this (1500)")
    p.add_argument("-D", dest="mss", type=_positive_int(536, 65495, "-D 1460"), default=1460,
                   help="MSS of fabricated SYNs (1460)")
    p.add_argument("-O", dest="only_full", action="store_true", help="copy only sessions whose SYN was captured")
    p.add_argument("-W", dest="no_wait", action="store_true", help="never hold a request for the previous response")
    p.add_argument("-L", dest="lonely", action="store_true",
                   help="keep copying while no intercept is reachable; resume when one comes back")
    p.add_argument("-l", dest="log_file", metavar="FILE", help="log to FILE (default: stderr)")
    p.add_argument("-P", dest="pid_file", metavar="FILE", help="write the pid to FILE, removed on exit")
    p.add_argument("-d", dest="daemon", action="store_true", help="run as a daemon (needs -l)")
    p.add_argument("-v", "--version", action="version", version=version_text("tcpcopy"), help="print the version and exit")
    p.add_argument("--stats", metavar="ENDPOINT", default="",
                   help="publish counters every second to the ZeroMQ ENDPOINT where "
                        "`python -m tcpcopy.cluster.ops.top --stats ENDPOINT` (or /metrics) listens")
    p.add_argument("--server-key", metavar="FILE",
                   help="CurveZMQ: the intercepts' public key (intercept.key from `tcpcopy-cluster keygen "
                        "DIR`); with --key the control channel is encrypted and only an intercept that holds "
                        "the secret half answers (default: no keys, one warning)")
    add_client_key_flags(p, "intercept", "keys/online.key_secret")
    p.add_argument("--summary-json", metavar="FILE", help="write the final counters as JSON to FILE")
    p.add_argument("--compare", dest="compare_percent", type=_positive_int(0, 100, "--compare 10"), default=0,
                   metavar="PERCENT",
                   help="compare the target's answer to each request with the online server's, for "
                        "PERCENT%% of the sessions (intercept needs --answer-bytes); 0 (default): off")
    p.add_argument("--compare-bytes", type=_positive_int(256, 1 << 24, "--compare-bytes 65536"),
                   default=65536, metavar="N", help="answer bytes kept and compared per request and side (65536)")
    p.add_argument("--compare-mask", action="append", default=[], metavar="REGEX",
                   help="a regular expression whose matches (timestamps, ids, tokens) are masked in both "
                        "answers before comparing; repeat for several")
    p.add_argument("--compare-log", metavar="FILE", help="write every differing request as a JSON line to FILE")
    p.add_argument("--baseline", metavar="MAP[,MAP]",
                   help="with --compare: replay each compared session also to a server running the online "
                        "build, written like -x (e.g. 80-198.18.2.2:8081; its answers must reach intercept "
                        "too); what differs between online and baseline is noise (timestamps, ids, tokens) "
                        "and only the target's other differences count")
    p.add_argument("--fail-on", metavar="SPEC",
                   help="exit 3 at the end when a threshold is crossed, e.g. 'differs>0.01,no_answer>0,"
                        "loss>0.001' (loss: sessions the copier dropped or shed, a share of those started)")
    add_pcap_failed_flags(p)
    p.add_argument("--identity", default=f"tcpcopy@{socket.gethostname()}",
                   help="name of this copier in intercept logs")
    p.add_argument("--check", action="store_true",
                   help="instead of copying, run one probe through the real path (capture, intercept, "
                        "SYN to the target, SYN-ACK back through intercept, assistant) and name the first "
                        "hop that fails, with the fix; exit 0 when all is well, 1 otherwise")
    p.add_argument("--check-wait", type=_positive_float("--check-wait 5"), default=5.0, metavar="S",
                   help="with --check: wait this long for a client packet on -i (5 s)")
    p.add_argument("--check-no-traffic", action="store_true",
                   help="with --check: do not wait for client traffic (the capture step only warns)")
    p.add_argument("--check-client-ip", type=_address, metavar="IP",
                   help="with --check: the probe's client address (default: the first -c address, else "
                        "the address of a captured client); the target must route it to the assistant")
    p.add_argument("--json", dest="check_json", action="store_true",
                   help="with --check: print the steps as a JSON list")
    add_log_format(p)
    add_user(p)
    add_not_applicable(p, NOT_APPLICABLE)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.mappings:
        parser.error(f"-x is required: say which traffic to copy where, e.g. {EXAMPLE}")
    if not args.intercepts:
        parser.error(f"-s is required: give the intercept address(es), e.g. {EXAMPLE}")
    try:
        args.mappings = parse_mappings(args.mappings)
        args.intercepts = parse_intercepts(args.intercepts, args.intercept_port)
        targets = {m.target_ip for m in args.mappings}
        args.client_pool = parse_client_pool(args.client_pool, targets) if args.client_pool else ()
    except OptionError as exc:
        parser.error(str(exc))
    if not args.offline and (args.speed != 1.0 or args.idle_gap_ms or args.repeat != 1):
        parser.error("-a, -I and -T are for replaying a file: add --offline -i FILE")
    if args.offline and not os.path.isfile(args.source):
        parser.error(f"--offline -i {args.source!r}: no such file")
    if args.daemon and not args.log_file:
        parser.error("-d needs -l FILE: a daemon has no terminal to log to")
    if args.instances > 1 and args.port_offset >= args.instances:
        parser.error(f"-f {args.port_offset} with --instances {args.instances}: give each copier its own "
                     f"-f below --instances, e.g. -f 0 and -f 1 with --instances 2")
    if args.sample_percent == 0:
        args.sample_percent = 100
    _check_compare_options(parser, args)
    args.pcap_failed_options = pcap_failed_options(parser, args)
    absolute_paths(args, "log_file", "pid_file", "summary_json", "key", "stats_server_key")
    try:   # read now, while this process may still read them (before any --user drop)
        args.keys, args.stats_keys = client_keys_from_flags(args.key, args.server_key, args.stats_server_key)
    except KeyFileError as exc:
        parser.error(str(exc))
    if args.offline:
        args.source = os.path.abspath(args.source)
    return args


def _check_compare_options(parser, args: argparse.Namespace) -> None:
    """--compare and its companions, checked before anything starts."""
    if args.compare_percent and args.offline:
        parser.error("--compare needs a live capture (the online server's answers are captured as "
                     "they leave): drop --offline, or --compare")
    if (args.compare_log or args.compare_mask or args.baseline) and not args.compare_percent:
        parser.error("--compare-log, --compare-mask and --baseline go with --compare PERCENT, e.g. --compare 10")
    try:
        args.baselines = parse_baselines(args.baseline, args.mappings) if args.baseline else ()
    except OptionError as exc:
        parser.error(str(exc))
    try:
        compile_masks(args.compare_mask)
        args.fail_on = parse_fail_on(args.fail_on) if args.fail_on else ()
    except (MaskError, GateSpecError) as exc:
        parser.error(str(exc))
    absolute_paths(args, "compare_log")


def compare_options(args: argparse.Namespace) -> CompareOptions:
    return CompareOptions(percent=args.compare_percent, max_bytes=args.compare_bytes,
                          config=CompareConfig(masks=tuple(args.compare_mask)),
                          baselines=frozenset((ipaddress.ip_address(b.target_ip).packed, b.target_port)
                                              for b in args.baselines))


def owner_options(args: argparse.Namespace, packet_endpoint: str) -> OwnerOptions:
    keepalive = args.keepalive_timeout or args.session_timeout + 120
    return OwnerOptions(
        fanout=FanoutOptions(args.mappings, args.client_pool, args.copies, args.port_offset,
                             args.sample_percent, args.localhost_ip, args.ramp,
                             baselines=args.baselines, compare_percent=args.compare_percent),
        session=SessionConfig(fake_syn_mss=args.mss, only_full_sessions=args.only_full,
                              no_wait=args.no_wait, session_timeout=args.session_timeout,
                              keepalive_timeout=keepalive, mtu=args.mtu),
        intercepts=args.intercepts, packet_endpoint=packet_endpoint, identity=args.identity,
        lonely=args.lonely, memory_limit_mb=args.memory_mb, buffer_budget_mb=args.buffer_budget_mb,
        # Offline replay is paced by the file: shedding would only lose what it holds.
        shedding=None if args.offline else shedding_config(args.shed_after),
        instance=args.port_offset if args.instances > 1 else 0, instances=args.instances,
        stats_endpoint=args.stats, keys=args.keys, stats_keys=args.stats_keys,
        compare=compare_options(args), compare_log_fd=args.compare_log_fd,
        pcap_failed=args.pcap_failed_options)


def capture_command(args: argparse.Namespace, packet_endpoint: str) -> list[str]:
    bpf = capture_filter(args.mappings, args.user_filter, args.all_acks)
    argv = [sys.executable, "-m", "tcpcopy.capture.worker", "--filter", bpf, "--owner", packet_endpoint]
    if args.stats:
        argv += ["--stats", args.stats]
        if args.stats_keys is not None:
            argv += ["--key", args.key, "--stats-server-key", args.stats_server_key]
    if args.user:
        argv += ["--user", args.user.name]
    if args.offline:
        argv += ["--offline", args.source, "--speed", str(args.speed), "--repeat", str(args.repeat)]
        if args.idle_gap_ms:
            argv += ["--idle-gap-ms", str(args.idle_gap_ms)]
    else:
        argv += ["--iface", args.source, "--snaplen", str(args.snaplen), "--buffer-mb", str(args.buffer_mb)]
        if args.compare_percent:
            argv += ["--online-answers", online_answers_capture_filter(args.mappings, args.compare_percent)]
    return argv


PLAIN_FIX = ("pass tcpcopy --server-key DIR/intercept.key --key DIR/online.key_secret (and --stats-server-key "
             "DIR/stats.key with --stats), and intercept --key DIR/intercept.key_secret --allow-keys "
             "DIR/allowed-owners")


def warn_if_plain(args: argparse.Namespace) -> None:
    """One warning for the channels this copier runs without keys."""
    plain = (["the control channel to intercept"] if args.keys is None else []) + (
        ["the stats channel"] if args.stats and args.stats_keys is None else [])
    if plain:
        log.warning("%s", plain_warning(plain, PLAIN_FIX))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.check:
        from tcpcopy.session.doctor import run_check
        return run_check(args)
    failed = start_command("tcpcopy", args)
    if failed is not None:
        return failed
    warn_if_plain(args)
    run_dir = tempfile.mkdtemp(prefix="tcpcopy-")
    summary = None
    try:
        private_directory(run_dir, args.user)   # --user: the owner binds its socket there after the drop
        try:
            summary = SummaryFile(args.summary_json, args.user)
        except OSError as exc:
            log.error("--summary-json %s: cannot open it: %s", args.summary_json, exc.strerror or exc)
            return 2
        args.compare_log_fd = None
        if args.compare_log:
            try:
                args.compare_log_fd = open_for_writing(args.compare_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                                                       0o644, args.user.uid if args.user else None)
            except OSError as exc:
                log.error("--compare-log %s: cannot open it: %s", args.compare_log, exc.strerror or exc)
                return 2
        return _run(args, f"ipc://{run_dir}/owner-0", summary)
    finally:
        if summary is not None:
            summary.close()
        if getattr(args, "compare_log_fd", None) is not None:
            os.close(args.compare_log_fd)
        shutil.rmtree(run_dir, ignore_errors=True)
        remove_pid_file(args.pid_file)


class SummaryFile:
    """--summary-json, opened at start so that it can be written at the end also after the
    drop to --user (the directory may be closed to that user); removed again when nothing
    was written into a file this run created."""

    def __init__(self, path: str | None, run_as):
        self.path, self.fd, self.written = path, None, False
        if path:
            created = not os.path.lexists(path)
            self.fd = open_for_writing(path, os.O_WRONLY | os.O_CREAT, 0o644, run_as.uid if run_as else None)
            self.created = created

    def write(self, counters: dict) -> None:
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(counters, indent=2, sort_keys=True).encode(), 0)
        self.written = True

    def close(self) -> None:
        if self.fd is None:
            return
        os.close(self.fd)
        self.fd = None
        if self.created and not self.written:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def _run(args: argparse.Namespace, packet_endpoint: str, summary: SummaryFile) -> int:
    """Raw sockets and the capture (its worker drops on its own) are opened first, then
    this process drops to --user and only then takes input from the network."""
    try:
        sender = DualSender()
    except RawSendError as exc:
        log.error("%s", exc)
        return 2
    capture = CaptureChild(capture_command(args, packet_endpoint), not_restartable_reason(args.offline, args.user))
    try:
        drop_to(args.user)
        owner = Owner(owner_options(args, packet_endpoint), sender)
        owner.wait_for_intercepts()
    except (OwnerError, PrivilegeError) as exc:
        log.error("%s", exc)
        capture.stop()
        sender.close()
        return 2
    owner.watch(capture.failure)
    owner.watch(reopen_logs_if_asked)
    _install_signal_handlers(owner)
    owner.ready_message = "copying {} to {} via intercept {} ({}, {} cop{})".format(
        ", ".join(f"{m.online_ip or '*'}:{m.online_port}" for m in args.mappings),
        ", ".join(f"{m.target_ip}:{m.target_port}" for m in args.mappings),
        ", ".join(map(str, args.intercepts)),
        f"file {args.source}" if args.offline else f"interface {args.source}",
        args.copies, "y" if args.copies == 1 else "ies") + "".join(
        f", compared sessions also to baseline {b.target_ip}:{b.target_port}" for b in args.baselines)
    try:
        owner.run()
    finally:
        capture.stop()
        log.info("%s", owner.stats_line())
        log.info("stopped: %s; outcomes %s", owner.stop_reason, json.dumps(owner.counters.outcomes, sort_keys=True))
        summary.write(owner.summary())
    if args.offline and owner.stop_reason == "input ended" and not owner.table.table_stats.sessions_started:
        log.error("%s", nothing_copied(owner, args))
        return 1
    if owner.comparing is not None:
        log.info("compared: %s", compare_line(owner.comparing.summary()))
    if args.fail_on:
        gate = evaluate_gate(args.fail_on, owner.comparing.comparator.counts if owner.comparing else {},
                             copier_loss(owner))
        if not gate.passed:
            log.error("--fail-on: %s", gate.describe())
            return 3
        log.info("--fail-on: no threshold crossed")
    return 0 if owner.stop_reason in ("input ended", "signal") else 1


def copier_loss(owner: Owner) -> float:
    """The copier's own loss figure: sessions it dropped or shed, a share of those it started."""
    started = owner.table.table_stats.sessions_started
    dropped = sum(n for key, n in owner.counters.outcomes.items() if key.startswith("dropped:"))
    return dropped / started if started else 0.0


def compare_line(summary: dict) -> str:
    counts = " ".join(f"{verdict}:{n}" for verdict, n in summary["counts"].items())
    line = (f"{summary['compared']} requests in {summary['sessions_compared']} sessions; {counts}; "
            f"not captured:{summary['not_captured']}")
    if summary.get("baseline_sessions"):
        line += (f"; baseline: {summary['baseline_sessions']} sessions, {summary['noise_ignored']} noisy "
                 f"differences ignored, {summary['without_baseline']} requests judged without its answer")
    return line


def nothing_copied(owner: Owner, args: argparse.Namespace) -> str:
    """Why an offline replay copied no session, and what to check."""
    packets = owner.counters.client_packets
    if not packets:
        return (f"nothing copied: no packet of {args.source} passed the filter built from -x "
                f"{','.join(str(m.online_port) for m in args.mappings)}"
                f"{' and -F' if args.user_filter else ''}: check the port and that the file holds "
                "the clients' side (packets to the online server)")
    return (f"nothing copied: {packets} client packets, none began a session "
            f"(not mapped by -x: {owner.fanout.unmapped}, sampled out by -r: {owner.fanout.sampled_out}, "
            f"malformed: {owner.counters.malformed_client}; -O copies only sessions whose SYN is in the file)")


def _install_signal_handlers(owner: Owner) -> None:
    """SIGINT and SIGTERM stop the copy; SIGHUP reopens the log file (log rotation)."""
    def on_signal(signum, _frame):
        log.info("%s: stopping (every live session gets a RST)", signal.Signals(signum).name)
        owner.stop("signal")

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    install_log_reopen()


if __name__ == "__main__":
    sys.exit(main())
