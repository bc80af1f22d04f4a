"""Capture worker: packets from a live interface or a pcap file, batched to session owners.

One process, one source. Live: libpcap on an interface, inbound only (so the copier never
captures what it sends itself), with the filter built from the ``-x`` mappings and the
user's ``-F`` compiled into the kernel. Offline: a pcap file replayed at its own pace
(``-a`` speed-up, ``-I`` idle-gap compression, ``-T`` repeats). Each packet's IP bytes and
timestamp go to the owner of its flow (``cluster.shard``) in msgpack batches over ZeroMQ
(DEALER to each owner's ROUTER). A full owner queue never blocks capture: the batch is
dropped and counted. Owners answer with the connections they skip (SKIP); a live worker adds
those of its shard to its kernel filter, so their packets cost no capture at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import select
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field

import zmq

from tcpcopy.capture import packet as pk
from tcpcopy.capture.pcapfile import CaptureFileError, open_capture
from tcpcopy.capture.pcapio import CaptureError, FilterSwapper, open_live
from tcpcopy.cluster.collector import settle_collector
from tcpcopy.cluster import wire
from tcpcopy.cluster.busy import LoopMeter
from tcpcopy.cluster.config import load_config
from tcpcopy.cluster.curve import KeyFileError, KeyLayout, add_client_key_flags, client_keys_from_flags, plain_warning
from tcpcopy.cluster.privileges import PrivilegeError, describe, drop_privileges
from tcpcopy.cluster.process import add_user, resolve_shard, shard_of, user_from_config
from tcpcopy.cluster.progress import ReplayProgress
from tcpcopy.cluster.shard import (capture_shard_filter, combine_filters, flow_shard, intercept_shard_filter,
                                   skip_flows_filter)
from tcpcopy.cluster.stats import StatsPublisher

MAX_BATCH = 256          # packets per PACKETS message
MAX_BATCH_AGE = 0.002    # seconds a packet may wait for its batch to fill
SEND_HWM = 2000          # PACKETS messages queued per owner before drops
HELLO_EVERY = 1.0        # seconds between HELLOs: an owner that restarts learns the capture is live
CONTROL_EVERY = 0.1      # seconds between looks for owners' SKIP lists
REFILTER_EVERY = 0.5     # seconds between kernel filter changes (each is a compile)
KERNEL_SKIP_MAX = 256    # connections in the kernel filter, all owners together (~1,100 BPF instructions)


@dataclass(slots=True)
class CaptureStats:
    captured: int = 0
    malformed: int = 0
    batches_sent: int = 0
    packets_sent: int = 0
    packets_dropped_full: int = 0   # an owner's queue was full
    loop_busy_percent: float = 0.0  # share of the last second the loop worked (gauge)
    kernel_received: int = 0
    kernel_dropped: int = 0
    kernel_skips: int = 0           # skipped connections the kernel filter drops now (gauge)
    refilters: int = 0              # kernel filter changes
    refilter_failures: int = 0      # ... refused by libpcap (the filter without skips stays)
    control_malformed: int = 0      # owner messages not understood
    online_answers: int = 0         # the online server's answers captured (compared sessions)
    online_answers_sent: int = 0
    online_answers_dropped_full: int = 0

    def line(self) -> str:
        return (f"captured:{self.captured} malformed:{self.malformed} sent:{self.packets_sent} "
                f"dropped(owner full):{self.packets_dropped_full} "
                f"kernel recv:{self.kernel_received} kernel drop:{self.kernel_dropped} "
                f"kernel filter changes:{self.refilters} (refused:{self.refilter_failures})"
                + (f" online answers:{self.online_answers} sent:{self.online_answers_sent} "
                   f"dropped(owner full):{self.online_answers_dropped_full}" if self.online_answers else ""))


class SkipFilter:
    """The live capture filter: the base filter (``-x``, ``-F``, shard) and not the
    connections owners skip. Pure; the capture loop applies ``due``'s text to the handle.

    Each owner's latest list replaces its previous one. Only this worker's shard of them is
    kept (an owner sends its list to every worker), at most ``limit`` in all, and the filter
    changes at most once per ``every`` seconds."""

    def __init__(self, base: str, owners: int, shard: tuple[int, int] = (0, 1),
                 limit: int = KERNEL_SKIP_MAX, every: float = REFILTER_EVERY):
        self.base, self.shard, self.limit, self.every = base, shard, limit, every
        self.by_owner: list[list[bytes]] = [[] for _ in range(owners)]
        self.dirty = False
        self._next = 0.0

    def take(self, owner: int, flow_keys: list[bytes]) -> None:
        mine = [key for key in flow_keys if self._in_shard(key)]
        if mine != self.by_owner[owner]:
            self.by_owner[owner] = mine
            self.dirty = True

    def flows(self) -> list[bytes]:
        """The skipped connections, a fair share of the limit per owner first."""
        share = max(1, self.limit // max(1, len(self.by_owner)))
        chosen = [key for keys in self.by_owner for key in keys[:share]]
        rest = [key for keys in self.by_owner for key in keys[share:]]
        return (chosen + rest)[:self.limit]

    def due(self, now: float) -> str | None:
        """The filter to apply now, or None (nothing changed, or changed too recently)."""
        if not self.dirty or now < self._next:
            return None
        self.dirty = False
        self._next = now + self.every
        return combine_filters(self.base, skip_flows_filter(self.flows()))

    def _in_shard(self, key: bytes) -> bool:
        shard, count = self.shard
        address = key[:4] if len(key) == 12 else key[:16]
        return flow_shard(address, int.from_bytes(key[-4:-2], "big"), count) == shard


@dataclass
class Batcher:
    """Per-owner batches of [timestamp, ip_bytes], flushed when full or old."""

    sockets: list
    stats: CaptureStats
    encode: object = wire.encode_packets   # the message the batches go in
    answers: bool = False                  # counts as online answers (not client packets)
    batches: list = field(default_factory=list)
    started: list = field(default_factory=list)

    def __post_init__(self):
        self.batches = [[] for _ in self.sockets]
        self.started = [0.0 for _ in self.sockets]

    def add(self, owner: int, ts: float, ip: bytes, now: float) -> None:
        batch = self.batches[owner]
        if not batch:
            self.started[owner] = now
        batch.append([ts, ip])
        if len(batch) >= MAX_BATCH:
            self.flush_one(owner)

    def flush_due(self, now: float) -> None:
        for owner, batch in enumerate(self.batches):
            if batch and now - self.started[owner] >= MAX_BATCH_AGE:
                self.flush_one(owner)

    def flush_all(self) -> None:
        for owner, batch in enumerate(self.batches):
            if batch:
                self.flush_one(owner)

    def next_due(self) -> float | None:
        due = [self.started[i] + MAX_BATCH_AGE for i, b in enumerate(self.batches) if b]
        return min(due) if due else None

    def flush_one(self, owner: int) -> None:
        batch = self.batches[owner]
        self.batches[owner] = []
        try:
            self.sockets[owner].send(self.encode(batch), zmq.NOBLOCK)
        except zmq.Again:
            if self.answers:
                self.stats.online_answers_dropped_full += len(batch)
            else:
                self.stats.packets_dropped_full += len(batch)
            return
        if self.answers:
            self.stats.online_answers_sent += len(batch)
            return
        self.stats.batches_sent += 1
        self.stats.packets_sent += len(batch)


class Worker:
    def __init__(self, owner_endpoints: list[str], linktype: int | None = None):
        self.stats = CaptureStats()
        self.context = zmq.Context.instance()
        self.sockets = []
        for endpoint in owner_endpoints:
            sock = self.context.socket(zmq.DEALER)
            sock.setsockopt(zmq.SNDHWM, SEND_HWM)
            sock.setsockopt(zmq.RCVHWM, 16)
            sock.setsockopt(zmq.MAXMSGSIZE, wire.max_frame(wire.CAPTURE_TAKES))
            sock.setsockopt(zmq.LINGER, 2000)
            sock.connect(endpoint)
            self.sockets.append(sock)
        self.batcher = Batcher(self.sockets, self.stats)
        self.answer_batcher = Batcher(self.sockets, self.stats, wire.encode_online_answers, answers=True)
        self.linktype = linktype
        self.stopping = False
        self.publisher: StatsPublisher | None = None
        self._hello: bytes | None = None
        self._next_hello = 0.0
        self.run_as = None   # --user: dropped to once the capture is open
        self.skip_filter: SkipFilter | None = None   # live capture only
        self.answer_linktype: int | None = None
        self._next_control = 0.0

    def publish(self, now: float, refresh=None) -> None:
        """Counters to the stats channel when due; ``refresh()`` first updates what must be
        read from the kernel."""
        def counters():
            if refresh is not None:
                refresh()
            return dataclasses.asdict(self.stats)

        if self.publisher is not None:
            self.publisher.maybe_publish(now, counters)

    def on_frame(self, ts: float, frame, now: float) -> None:
        """Route one captured frame to its owner; a frame that is not IP+TCP is counted."""
        self.stats.captured += 1
        try:
            offset = pk.ip_offset(frame, self.linktype)
            ip = bytes(frame[offset:])
            src, sport = _client_endpoint(ip)
        except (pk.PacketError, IndexError):
            self.stats.malformed += 1
            return
        owner = flow_shard(src, sport, len(self.sockets))
        self.batcher.add(owner, ts, ip, now)

    def read_control(self, now: float) -> None:
        """Take the owners' SKIP lists (every CONTROL_EVERY seconds; live capture only)."""
        if self.skip_filter is None or now < self._next_control:
            return
        self._next_control = now + CONTROL_EVERY
        for owner, sock in enumerate(self.sockets):
            while True:
                try:
                    frame = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    kind, body = wire.decode(frame)
                except wire.WireError:
                    self.stats.control_malformed += 1
                    continue
                if kind == wire.SKIP:
                    self.skip_filter.take(owner, body)

    def on_online_answer(self, ts: float, frame, now: float) -> None:
        """Route one captured answer of the online server to the owner of its client (the
        destination); it is compared, never replayed."""
        self.stats.online_answers += 1
        try:
            offset = pk.ip_offset(frame, self.answer_linktype)
            ip = bytes(frame[offset:])
            dst, dport = _server_answer_client(ip)
        except (pk.PacketError, IndexError):
            self.stats.malformed += 1
            return
        self.answer_batcher.add(flow_shard(dst, dport, len(self.sockets)), ts, ip, now)

    def flush_due(self, now: float) -> None:
        self.batcher.flush_due(now)
        self.answer_batcher.flush_due(now)

    def announce(self, source: str) -> None:
        """Tell the owners the capture is open: from now on nothing is missed."""
        self._hello = wire.encode_hello(wire.Hello("capture", f"capture@{source}", uuid.uuid4().hex))
        self._next_hello = time.monotonic() + HELLO_EVERY
        for sock in self.sockets:
            sock.send(self._hello)

    def announce_again(self, now: float) -> None:
        """The HELLO once a second, for owners that started (or restarted) after the first;
        an owner logs each capture process once. A full queue skips it: the next one comes."""
        if self._hello is None or now < self._next_hello:
            return
        self._next_hello = now + HELLO_EVERY
        for sock in self.sockets:
            try:
                sock.send(self._hello, zmq.NOBLOCK)
            except zmq.Again:
                pass

    def end_of_input(self) -> None:
        self.batcher.flush_all()
        for sock in self.sockets:
            sock.send(wire.encode_bye("end of input"))

    def close(self) -> None:
        self.batcher.flush_all()
        self.answer_batcher.flush_all()
        for sock in self.sockets:
            sock.close()


def _client_endpoint(ip: bytes) -> tuple[bytes, int]:
    """Source address and port, just enough to pick the owner (the owner decodes fully)."""
    if ip[0] >> 4 == 4:
        header = (ip[0] & 0x0F) * 4
        return ip[12:16], int.from_bytes(ip[header:header + 2], "big")
    # IPv6: the shard uses the port right after the fixed header; a packet with extension
    # headers still reaches one consistent owner, only perhaps not the BPF-computed one.
    return ip[8:24], int.from_bytes(ip[40:42], "big")


def _server_answer_client(ip: bytes) -> tuple[bytes, int]:
    """Destination address and port of an online server's answer: its client."""
    if ip[0] >> 4 == 4:
        header = (ip[0] & 0x0F) * 4
        return ip[16:20], int.from_bytes(ip[header + 2:header + 4], "big")
    return ip[24:40], int.from_bytes(ip[42:44], "big")


def open_online_answers(worker: Worker, iface: str, bpf: str, snaplen: int, buffer_mb: int):
    """The second live handle, outbound only: the online server's answers to the compared
    clients (``bpf`` samples them in the kernel)."""
    handle = open_live(iface, bpf, snaplen=snaplen, immediate=False,
                       buffer_bytes=buffer_mb << 20, timeout_ms=2, outbound_only=True)
    worker.answer_linktype = handle.datalink()
    return handle


def run_live(worker: Worker, iface: str, bpf: str, snaplen: int, buffer_mb: int,
             shard: tuple[int, int] = (0, 1), answers_bpf: str = "") -> None:
    handle = open_live(iface, bpf, snaplen=snaplen, immediate=False,
                       buffer_bytes=buffer_mb << 20, timeout_ms=2, inbound_only=True)
    answers = open_online_answers(worker, iface, answers_bpf, snaplen, buffer_mb) if answers_bpf else None
    drop_privileges_to(worker.run_as)   # the handle is open: reading and refiltering it need no privilege
    worker.linktype = handle.datalink()
    worker.skip_filter = SkipFilter(bpf, len(worker.sockets), shard)
    swapper = FilterSwapper(handle, iface, bpf)
    settle_collector()   # start-up objects are permanent; collections come less often
    worker.announce(iface)
    fd = handle.fileno()

    def each(ts, frame):
        worker.on_frame(ts, frame, time.monotonic())

    def each_answer(ts, frame):
        worker.on_online_answer(ts, frame, time.monotonic())

    fds = [fd] if answers is None else [fd, answers.fileno()]
    meter = LoopMeter(time.monotonic())
    while not worker.stopping:
        due = worker.batcher.next_due()
        waiting = time.monotonic()
        timeout = 0.05 if due is None else max(0.0, due - waiting)
        select.select(fds, [], [], timeout)
        meter.waited(time.monotonic() - waiting)
        handle.dispatch(-1, each)
        if answers is not None:
            answers.dispatch(-1, each_answer)
        now = time.monotonic()
        worker.flush_due(now)
        worker.announce_again(now)
        worker.read_control(now)
        _apply_skip_filter(worker, swapper, now)
        worker.stats.loop_busy_percent = meter.sample(now)
        worker.publish(now, lambda: _read_kernel_counters(worker, handle))
    swapper.close()
    _read_kernel_counters(worker, handle)


def _apply_skip_filter(worker: Worker, swapper: FilterSwapper, now: float) -> None:
    """The owners' skipped connections into the kernel filter, when they changed (compiled
    and swapped in without stalling the capture: ``FilterSwapper``). A filter refused is
    counted and the base filter stays: skipping is an economy, the owner still skips those
    packets itself."""
    text = worker.skip_filter.due(now)
    if text is not None:
        swapper.request(text)
    for _text, refusal in swapper.results():
        if refusal is None:
            worker.stats.refilters += 1
            worker.stats.kernel_skips = len(worker.skip_filter.flows())
            continue
        worker.stats.refilter_failures += 1
        worker.stats.kernel_skips = 0
        if worker.stats.refilter_failures == 1:
            print(f"capture: kernel skip filter refused, owners keep skipping instead: {refusal}",
                  file=sys.stderr)


def drop_privileges_to(run_as) -> None:
    """--user: become that user with CAP_NET_RAW only, and say so on stderr."""
    if run_as is not None:
        print(f"capture: {describe(run_as, drop_privileges(run_as))}", file=sys.stderr)


def _read_kernel_counters(worker: Worker, handle) -> None:
    received, dropped, _ = handle.stats()
    worker.stats.kernel_received, worker.stats.kernel_dropped = received, dropped


@dataclass(frozen=True, slots=True)
class OfflinePacing:
    """How a recording is replayed: ``speed`` (-a), ``idle_gap`` seconds (-I), ``repeat`` (-T)."""

    speed: float = 1.0
    idle_gap: float | None = None
    repeat: int = 1


class OfflineClock:
    """Replay offsets (seconds from the start of a round) for recorded timestamps: scaled by
    the speed, each gap longer than ``idle_gap`` cut out exactly once (TCPCopy's -I can cut
    the same gap twice). The first packet of the round is offset 0."""

    def __init__(self, pacing: OfflinePacing):
        self.pacing = pacing
        self._first: float | None = None
        self._prev = 0.0
        self._skipped = 0.0

    def offset(self, ts: float) -> float:
        if self._first is None:
            self._first = self._prev = ts
        gap = ts - self._prev
        if self.pacing.idle_gap is not None and gap > self.pacing.idle_gap:
            self._skipped += gap
        self._prev = max(self._prev, ts)
        return max(0.0, ts - self._first - self._skipped) / self.pacing.speed


def run_offline(worker: Worker, path: str, bpf: str, pacing: OfflinePacing,
                round_pause: float = 2.0, progress: ReplayProgress | None = None) -> None:
    """Replay the file ``pacing.repeat`` times, then tell the owners the input has ended;
    ``progress`` is told where the replay stands after each packet."""
    worker.announce(path)
    read_before = 0
    for round_no in range(pacing.repeat):
        if round_no:
            _sleep_flushing(worker, time.monotonic() + round_pause)
        with open_capture(path, bpf) as frames:
            worker.linktype = frames.linktype
            clock = OfflineClock(pacing)
            start = time.monotonic()
            for frame in frames:
                _sleep_flushing(worker, start + clock.offset(frame.ts))
                if worker.stopping:
                    break
                worker.on_frame(frame.ts, frame.data, time.monotonic())
                if progress is not None:
                    progress.update(read_before + frames.frames_read, frames.position, round_no, time.monotonic())
            read_before += frames.frames_read
        worker.batcher.flush_all()
        if worker.stopping:
            break
    if progress is not None:
        progress.finish(read_before, time.monotonic(), stopped=worker.stopping)
    worker.end_of_input()


def replay_progress(path: str, rounds: int) -> ReplayProgress | None:
    """Progress lines on stderr while it is a terminal; None (quiet) otherwise."""
    if not sys.stderr.isatty():
        return None
    size = os.path.getsize(path) if os.path.isfile(path) else 0   # a bad path is named by open_capture
    return ReplayProgress(path, size, rounds, time.monotonic(),
                          lambda line: (sys.stderr.write(line), sys.stderr.flush()))


def _sleep_flushing(worker: Worker, until: float) -> None:
    """Wait until ``until``, flushing batches as they come due."""
    while not worker.stopping:
        now = time.monotonic()
        worker.batcher.flush_due(now)
        worker.announce_again(now)
        worker.publish(now)
        if now >= until:
            return
        due = worker.batcher.next_due()
        time.sleep(max(0.0, min(until, due if due is not None else until) - now))


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m tcpcopy.capture.worker",
        description="Capture client packets (live or from a pcap file) and batch them to "
                    "session owners over ZeroMQ. Normally started by the tcpcopy command.")
    parser.add_argument("--config", metavar="TOML",
                        help="cluster config: take interface, filters (with [compare] the online answers' "
                             "too) and owners from it (with --shard N)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--iface", help="capture on this interface")
    source.add_argument("--offline", metavar="PCAP", help="replay this pcap file")
    parser.add_argument("--filter", help="BPF filter (built by tcpcopy from -x and -F)")
    parser.add_argument("--owner", action="append",
                        help="ZeroMQ endpoint of a session owner (repeat for several)")
    parser.add_argument("--online-answers", metavar="BPF", default="",
                        help="also capture the online server's answers matching this filter "
                             "(outbound; built by tcpcopy for --compare)")
    parser.add_argument("--snaplen", type=int, default=262144)
    parser.add_argument("--buffer-mb", type=int, default=64)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--idle-gap-ms", type=float)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--stats", metavar="ENDPOINT", default="",
                        help="publish counters every second to this ZeroMQ endpoint")
    parser.add_argument("--shard", default="0/1", metavar="K/N",
                        help="capture only flows of shard K of N (the kernel filters the rest); "
                             "with --config just K")
    add_user(parser)
    add_client_key_flags(parser, "stats listener", "keys/online.key_secret")
    args = parser.parse_args(argv)
    args.stats_keys = None
    resolve_shard(parser, args, _from_cluster_config)
    try:   # read now, before any --user drop
        if not args.config:
            args.stats_keys = client_keys_from_flags(args.key, None, args.stats_server_key)[1]
    except KeyFileError as exc:
        parser.error(str(exc))
    if not (args.iface or args.offline) or not args.filter or not args.owner:
        parser.error("give --config TOML --shard N, or --iface/--offline with --filter and --owner")
    args.filter = combine_filters(args.filter, capture_shard_filter(*args.shard))
    # The answers to this shard's clients: their destination is in the shard.
    args.online_answers = (combine_filters(args.online_answers, intercept_shard_filter(*args.shard))
                           if args.online_answers else "")
    return args


def _from_cluster_config(args) -> None:
    """Interface, filters, owners and buffer from the cluster config; --shard is this
    worker's number among capture.workers."""
    config = load_config(args.config)
    args.shard = shard_of(args.shard, config.capture.workers, "worker's")
    args.iface = args.iface or config.capture.interface
    args.filter = config.capture_bpf()
    args.online_answers = args.online_answers or config.online_answers_bpf()   # [compare]: this shard's part is added
    args.owner = list(config.owner_endpoints())
    args.buffer_mb, args.snaplen = config.capture.buffer_mb, config.capture.snaplen
    args.stats = args.stats or config.stats.endpoint
    args.user = args.user or user_from_config(config.supervisor.user)
    if args.stats and config.security.curve:
        args.stats_keys = KeyLayout(config.security.keys_dir).publisher_keys("online")


def main(argv=None) -> int:
    args = parse_args(argv)
    worker = Worker(args.owner)
    if args.stats:
        identity = f"capture-{args.shard[0]}@{socket.gethostname()}"
        worker.publisher = StatsPublisher(args.stats, "capture", identity, keys=args.stats_keys)
        if args.stats_keys is None:
            print("capture: warning: " + plain_warning(["the stats channel"], "pass --key and --stats-server-key "
                                                       "(or [security] curve = true in a cluster config)"),
                  file=sys.stderr)

    def stop(signum, frame):
        worker.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # It writes only to stderr, which tcpcopy or supervisord holds: SIGHUP (log rotation
    # sent to every process) has nothing to reopen here and must not stop the capture.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    worker.run_as = args.user
    try:
        if args.iface:
            run_live(worker, args.iface, args.filter, args.snaplen, args.buffer_mb, args.shard, args.online_answers)
        else:
            drop_privileges_to(args.user)   # a file needs no privilege; the user must be able to read it
            pacing = OfflinePacing(args.speed, None if args.idle_gap_ms is None else args.idle_gap_ms / 1000,
                                   args.repeat)
            run_offline(worker, args.offline, args.filter, pacing, progress=replay_progress(args.offline, args.repeat))
    except (CaptureError, CaptureFileError, PrivilegeError) as exc:
        print(f"capture: {exc}", file=sys.stderr)
        return 2
    finally:
        worker.close()
        print(f"capture: {worker.stats.line()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
