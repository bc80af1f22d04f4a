"""Session owner: the I/O loop around the session table.

It takes batches of captured client packets from capture workers (ZeroMQ ROUTER), runs one
engine per replayed connection (``SessionTable``), registers each replayed endpoint with the
intercepts before its SYN leaves, takes the target's response headers back from them, and
sends the engines' packets through raw IP sockets. A send error is counted, never fatal.
It tells the capture workers which skipped connections their kernel filter may drop
(``session/kernelskip.py``).

Time inside the table is seconds since the owner started (monotonic).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import resource
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

import zmq

from tcpcopy.capture import packet as pk
from tcpcopy.cluster.collector import settle_collector
from tcpcopy.cluster import wire
from tcpcopy.cluster.config import ConfigError, load_config
from tcpcopy.cluster.curve import ClientKeys, KeyLayout, plain_warning
from tcpcopy.cluster.options import InterceptAddress
from tcpcopy.cluster.privileges import PrivilegeError
from tcpcopy.cluster.process import (CommandParser, add_log_level, add_user, drop_to, install_log_reopen,
                                     private_directory, reopen_logs_if_asked, setup_logging, user_from_config)
from tcpcopy.cluster.busy import LoopMeter
from tcpcopy.cluster.shard import parse_shard
from tcpcopy.cluster.stats import StatsPublisher, flatten
from tcpcopy.session import comparefiles
from tcpcopy.session.comparing import CompareOptions, Comparing
from tcpcopy.session.engine import REQUEST_HEAD, BufferBudget, Closed, Dropped, Endpoint, RequestSent, SessionConfig
from tcpcopy.session.failedpcap import FailedSessions, PcapFailedOptions
from tcpcopy.session.fanout import Fanout, FanoutOptions
from tcpcopy.session.intercepts import InterceptLinks
from tcpcopy.session.kernelskip import KernelSkips
from tcpcopy.session.orphans import OrphanReaper
from tcpcopy.session.pcapfiles import PcapDirectory, PcapDirectoryError, add_pcap_failed_flags, pcap_failed_options
from tcpcopy.session.ports import PortAllocator
from tcpcopy.session.rawsend import DualSender, RawSendError
from tcpcopy.session.shedding import LoadShedder, SheddingConfig
from tcpcopy.session.table import SessionFreed, SessionStarted, SessionTable

log = logging.getLogger("tcpcopy")

MAX_MESSAGES_PER_TURN = 64   # packet batches taken per loop turn, so responses are not starved
# Captured input taken per loop turn, in seconds of work: a flood of input (a 100 MB body,
# 50,000 commands a second) must not keep the target's answers waiting, or a request/answer
# protocol advances one request per turn.
INPUT_SLICE = 0.005
CAPTURE_HWM = 2000           # packet batches queued per capture worker
CAPTURE_PEER_TIMEOUT = 5.0   # seconds without a HELLO after which a capture worker is gone
STATS_EVERY = 30.0
# Housekeeping (shedding steps, kernel skip lists, watches, link health, stats) runs at
# most this often: the loop wakes for every batch, and these need no finer clock.
HOUSEKEEPING_EVERY = 0.01
STARTUP_WAIT = 5.0
KEYS_HINT = ("; with keys, also check that the server key is the intercept's public key and that this "
             "copier's public key is in the intercept's allowed keys (intercept logs each peer it refuses)")
PLAIN_HINT = "; an intercept started with keys refuses a copier without them (intercept logs it)"
MAX_CAPTURES_REMEMBERED = 1024


@dataclass(frozen=True)
class OwnerOptions:
    fanout: FanoutOptions
    session: SessionConfig
    intercepts: tuple[InterceptAddress, ...]
    packet_endpoint: str                 # where capture workers connect to (we bind)
    identity: str = "owner-0"
    lonely: bool = False                 # -L: keep going while no intercept is reachable
    memory_limit_mb: int | None = None   # -m
    max_sessions: int = 200_000
    drain_timeout: float = 30.0          # after the input ends, wait this long for sessions
    shard: int = 0                       # this owner's number among `shards` owners
    shards: int = 1
    intercepts_sharded: bool = False     # intercept i sees only the answers of shard i
    instance: int = 0                    # -f, when --instances copiers share client addresses
    instances: int = 1
    stats_endpoint: str = ""             # publish counters there every second ("": off)
    keys: ClientKeys | None = None       # CURVE with the intercepts (None: plain)
    stats_keys: ClientKeys | None = None  # CURVE on the stats channel
    buffer_budget_mb: int = 1024         # client data all sessions may buffer together
    shedding: SheddingConfig | None = SheddingConfig()   # None: never shed (offline replay)
    compare: CompareOptions = CompareOptions()           # answer comparison (percent 0: off)
    compare_log_fd: int | None = None    # differing requests written here as JSON lines
    pcap_failed: PcapFailedOptions = PcapFailedOptions()  # a pcap file per failed session (directory "": off)


class OwnerError(RuntimeError):
    """The owner cannot start or must stop; the message says why."""


@dataclass
class OwnerCounters:
    batches: int = 0
    client_packets: int = 0
    malformed_client: int = 0
    malformed_responses: int = 0
    input_lag_ms: float = 0.0            # age of the captured input last taken (gauge)
    input_lag_max_ms: float = 0.0
    shedding: int = 0                    # 1 while the owner sheds sessions (gauge)
    kernel_skips: int = 0                # connections the capture kernel filters drop (gauge)
    kernel_skip_updates: int = 0         # changed lists sent to the capture workers
    kernel_skip_unsent: int = 0          # ... not delivered (a worker's queue was full)
    capture_frames_malformed: int = 0    # capture-channel messages not of one frame
    loop_busy_percent: float = 0.0       # share of the last second the loop worked (gauge)
    outcomes: dict = field(default_factory=dict)


class Owner:
    def __init__(self, options: OwnerOptions, sender: DualSender | None = None):
        """``sender``: raw sockets opened before this process dropped its privileges."""
        self.options = options
        self.context = zmq.Context.instance()
        self.captures = self.context.socket(zmq.ROUTER)
        self.captures.setsockopt(zmq.RCVHWM, CAPTURE_HWM)
        self.captures.setsockopt(zmq.LINGER, 0)
        self.captures.setsockopt(zmq.ROUTER_MANDATORY, 1)   # an undelivered skip list is counted
        self.captures.setsockopt(zmq.MAXMSGSIZE, wire.max_frame(wire.OWNER_TAKES_FROM_CAPTURE))
        self.captures.bind(options.packet_endpoint)
        self._capture_peers: dict[bytes, float] = {}   # routing id -> last HELLO
        self.kernel_skips = KernelSkips()
        self.comparing = Comparing(options.compare) if options.compare.enabled else None
        self.failed, self.pcap_directory = self._failed_sessions(options.pcap_failed)
        self.links = InterceptLinks(self.context, options.intercepts, options.identity,
                                    sharded=options.intercepts_sharded, keys=options.keys,
                                    comparing=self.comparing is not None)
        self.fanout = Fanout(options.fanout)
        self.budget = BufferBudget(options.buffer_budget_mb << 20)
        self.table = SessionTable(options.session, self.fanout.endpoints, options.max_sessions,
                                  ports=PortAllocator(options.shard, options.shards,
                                                      instance=options.instance, instances=options.instances),
                                  budget=self.budget)
        self.shedder = LoadShedder(options.shedding) if options.shedding is not None else None
        self.sender = sender or DualSender()
        self.orphans = OrphanReaper(random32=lambda: secrets.randbits(32))   # a dead predecessor's connections
        self.counters = OwnerCounters()
        self.stopping = False
        self.stop_reason = ""
        self._compare_log_failed = False
        self.input_ended_at: float | None = None
        self._origin = time.monotonic()
        self._wall_offset = time.time() - self.now()   # owner time -> wall clock, for pcap timestamps
        self._pcap_failed_logged = False
        self._last_stats = 0.0
        self._housekept_at = float("-inf")
        self._watches = []
        self.publisher = (StatsPublisher(options.stats_endpoint, "owner", options.identity,
                                         keys=options.stats_keys)
                          if options.stats_endpoint else None)
        self.capture_ready = False
        self.loop_meter: LoopMeter | None = None   # set while run() loops
        self._captures_seen: set[str] = set()   # HELLO instances of capture processes logged
        self.ready_message = ""   # logged when the capture worker says it is running

    def now(self) -> float:
        return time.monotonic() - self._origin

    def _failed_sessions(self, options: PcapFailedOptions):
        """--pcap-failed: its directory is checked now, as the user this process runs as."""
        if not options.enabled:
            return None, None
        try:
            directory = PcapDirectory(options.directory)
        except PcapDirectoryError as exc:
            self.captures.close(linger=0)
            raise OwnerError(str(exc)) from None
        if self.comparing is not None:
            self.comparing.differing = {}
        return FailedSessions(options), directory

    # ------------------------------------------------------------------ life cycle

    def wait_for_intercepts(self) -> None:
        """Greet every intercept and wait for its answer; unreachable ones are an error
        unless -L (lonely) is set."""
        self.links.say_hello()
        poller = zmq.Poller()
        for sock in self.links.sockets():
            poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + STARTUP_WAIT
        while self.links.down_links() and time.monotonic() < deadline:
            for sock, _ in poller.poll(100):
                self._responses(sock, self.now())
            self.links.tick(self.now())
        missing = ", ".join(str(link.address) for link in self.links.down_links())
        if missing and not self.options.lonely:
            raise OwnerError(f"intercept {missing} unreachable: start intercept there first "
                             "(and open its port), or pass -L to copy anyway and wait for it"
                             + (KEYS_HINT if self.options.keys is not None else PLAIN_HINT))
        if missing:
            log.warning("intercept %s unreachable; -L: copying anyway, its sessions will "
                        "wait until it answers", missing)
        self._log_notices()

    def run(self) -> None:
        settle_collector()   # start-up objects are permanent; collections come less often
        poller = zmq.Poller()
        poller.register(self.captures, zmq.POLLIN)
        for sock in self.links.sockets():
            poller.register(sock, zmq.POLLIN)
        meter = self.loop_meter = LoopMeter(time.monotonic())
        while not self.stopping:
            timeout_ms = self._poll_timeout_ms()
            waiting = time.monotonic()
            ready = dict(poller.poll(timeout_ms))
            meter.waited(time.monotonic() - waiting)
            now = self.now()
            # The target's answers first: they are what lets sessions progress.
            for sock in self.links.sockets():
                if sock in ready:
                    self._responses(sock, now)
            if self.captures in ready:
                self._client_batches(now)
            self.table.run_timers(now)
            self.orphans.run_timers(now)
            self._flush()
            if now - self._housekept_at >= HOUSEKEEPING_EVERY:
                self._housekept_at = now
                self._housekeeping(now)
        self.shutdown()

    def shutdown(self) -> None:
        now = self.now()
        self.table.shutdown(now)
        self._flush()
        if self.comparing is not None:
            self.comparing.finish_all()
            self._write_differences()
        if self.failed is not None:
            self._note_differences()
            for made in self.failed.finish_all():
                self._write_pcap(made)
        self.links.close(self.stop_reason or "owner stopped")
        if self.publisher is not None:
            self.publisher.publish(self.published_counters())
            self.publisher.close()
        self.captures.close(linger=0)
        self.sender.close()

    def watch(self, check) -> None:
        """``check()`` runs every loop turn; a non-empty string it returns stops the owner
        with that reason (e.g. the capture worker died)."""
        self._watches.append(check)

    def stop(self, reason: str) -> None:
        if not self.stopping:
            self.stopping = True
            self.stop_reason = reason

    # ------------------------------------------------------------------ inputs

    def _client_batches(self, now: float) -> None:
        until = time.monotonic() + INPUT_SLICE
        for _ in range(MAX_MESSAGES_PER_TURN):
            if time.monotonic() > until:
                return
            try:
                frames = self.captures.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                if self.shedder is not None:
                    self.shedder.caught_up()   # the owner keeps up with what reaches it
                return
            if len(frames) != 2:
                self.counters.capture_frames_malformed += 1
                continue
            peer, frame = frames
            try:
                kind, body = wire.decode(frame)
            except wire.WireError as exc:
                log.error("capture channel: %s", exc)
                continue
            if kind == wire.HELLO:
                self._capture_hello(peer, body, now)
                continue
            if kind == wire.BYE:
                self.input_ended_at = now
                log.info("capture: %s; waiting up to %.0f s for open sessions",
                         body, self.options.drain_timeout)
                continue
            if kind == wire.ONLINE_ANSWERS:
                self._online_answers(body, now)
                continue
            if kind != wire.PACKETS:
                continue
            self.counters.batches += 1
            self._client_packets(body, now)

    def _online_answers(self, batch: list, now: float) -> None:
        """The online server's answers to compared sessions (never replayed). The table's
        events of this turn go first: the sessions and requests they answer may have begun
        in a batch taken just before. Each packet's capture time goes with it: the online
        side's latency is measured between capture times, not at the owner."""
        if self.comparing is None:
            return
        self._flush()
        for captured, ip in batch:
            try:
                packet = pk.decode(ip)
            except pk.PacketError:
                self.counters.malformed_client += 1
                continue
            self.comparing.online_answer(packet, now, captured)

    def _target_answers(self, now: float) -> None:
        """Watched routes' answers from intercept, payload included."""
        for record in self.links.take_answers():
            try:
                packet = pk.decode(record)
            except pk.PacketError:
                self.counters.malformed_responses += 1
                continue
            self.comparing.target_answer(packet, now)
            if self.failed is not None:
                endpoint = Endpoint(packet.dst, packet.dport, packet.src, packet.sport)
                self.failed.whole_answer(endpoint, record, self._wall_offset + now)

    def _capture_hello(self, peer: bytes, hello: wire.Hello, now: float) -> None:
        """Capture workers repeat their HELLO every second; each process is logged once.
        A worker new on this socket gets the kernel skip list at once (an empty one clears
        what a predecessor of this owner left in its filter)."""
        self.capture_ready = True
        if peer not in self._capture_peers and len(self._capture_peers) < MAX_CAPTURES_REMEMBERED:
            self._send_skips(self.kernel_skips.current(), [peer])
        self._capture_peers[peer] = now
        if hello.instance in self._captures_seen:
            return
        if len(self._captures_seen) >= MAX_CAPTURES_REMEMBERED:
            self._captures_seen.clear()
        self._captures_seen.add(hello.instance)
        log.info("%s", self.ready_message or f"capture {hello.identity} is running")

    def _client_packets(self, batch: list, now: float) -> None:
        """One batch of [timestamp, ip bytes] into the table (the per-packet path: local
        names, no call that is not needed)."""
        decode, feed, skips = pk.decode, self.table.client_packet, self.table.skips
        self.counters.client_packets += len(batch)
        if self.shedder is not None and batch:
            self._observe_lag(batch[-1][0], now)
        comparing, failed = self.comparing, self.failed
        for captured, ip in batch:
            if skips(ip):
                continue
            try:
                packet = decode(ip)
            except pk.PacketError:
                self.counters.malformed_client += 1
                continue
            if comparing is not None and packet.payload_len:
                sessions = self._compared_client_packet(packet, now, captured)
            else:
                sessions = feed(packet, now)
            if failed is not None and sessions:
                failed.client_packet(sessions, ip, self._wall_offset + now)

    def _compared_client_packet(self, packet: pk.Packet, now: float, captured: float) -> list:
        """A client segment with data while comparing (``captured``: its capture time): what
        the comparison needs is read before the engine rewrites the packet, and a session it
        starts is known to the comparison before its first request is."""
        flow = (packet.src, packet.sport, packet.dst, packet.dport)
        comparing = self.comparing
        if not comparing.sampled(flow):
            return self.table.client_packet(packet, now)
        ack, head = packet.ack, bytes(packet.buf[packet.payload_off:packet.payload_off + REQUEST_HEAD])
        sessions = self.table.client_packet(packet, now)
        if not comparing.knows(flow) and self.table.has_events():
            self._flush()   # the session this or an earlier packet of the batch started
        comparing.client_segment(flow, ack, head, now, captured)
        return sessions

    def _observe_lag(self, captured_at: float, now: float) -> None:
        """How far behind its input the owner is: the capture time of the newest packet of
        a batch against this host's clock."""
        shedder, counters = self.shedder, self.counters
        shedder.observe(max(0.0, time.time() - captured_at), now)
        counters.input_lag_ms = round(shedder.lag * 1000, 1)
        counters.input_lag_max_ms = round(shedder.max_lag * 1000, 1)
        counters.shedding = int(shedder.shedding)
        if shedder.shedding != self.table.refuse_new:
            self.table.refuse_new = shedder.shedding
            log.warning("%s", f"behind the input by {shedder.lag:.1f} s: shedding new sessions"
                        if shedder.shedding else "caught up with the input: copying new sessions again")

    def _responses(self, sock, now: float) -> None:
        decode, feed, orphans, failed = pk.decode, self.table.response, self.orphans, self.failed
        for record in self.links.receive(sock, now, self._live_endpoints):
            try:
                packet = decode(record, headers_only=True)
            except pk.PacketError:
                self.counters.malformed_responses += 1
                continue
            session = feed(packet, now)
            if session is None:
                if orphans:
                    orphans.answer(packet)
            elif failed is not None:
                failed.answer(session, record, self._wall_offset + now)
        if self.links.handed_over:
            self._adopt_orphans(now)
        if self.comparing is not None:
            self._target_answers(now)

    def _adopt_orphans(self, now: float) -> None:
        """intercept handed over the routes of this owner's dead predecessor: reset those
        connections on the target (``session/orphans.py``)."""
        endpoints, self.links.handed_over = self.links.handed_over, []
        self.orphans.adopt(endpoints, now)
        log.info("%d connections of a dead predecessor handed over by intercept: resetting them on the "
                 "target", len(endpoints))

    def _live_endpoints(self) -> list:
        return [_endpoint_tuple(s.endpoint) for s in self.table.sessions() if not s.over]

    # ------------------------------------------------------------------ outputs

    def _flush(self) -> None:
        """Registrations first, then packets: an endpoint is registered before its SYN."""
        failed = self.failed
        for item in self.table.take_events():
            kind = type(item)
            if kind is tuple:
                ending = item[1]
                if type(ending) in _ENDINGS:
                    key = f"{_ENDINGS[type(ending)]}:{ending.reason}"
                    self.counters.outcomes[key] = self.counters.outcomes.get(key, 0) + 1
                    if failed is not None:
                        failed.ended(item[0], type(ending) is Dropped, ending.reason)
                elif type(ending) is RequestSent and self.comparing is not None:
                    self.comparing.request_sent(item[0], ending)
            elif kind is SessionStarted:
                self.links.register(_endpoint_tuple(item.endpoint))
                if self.orphans:
                    self.orphans.taken_by_session(_endpoint_tuple(item.endpoint))
                if self.comparing is not None and self.comparing.session_started(item.endpoint, item.flow):
                    self.links.watch(_endpoint_tuple(item.endpoint))
            elif kind is SessionFreed:
                self.links.unregister(_endpoint_tuple(item.endpoint))
                if self.comparing is not None:
                    self.comparing.session_ended(item.endpoint, item.at)
                if failed is not None:
                    self._pcap_session_freed(item.endpoint)
        for endpoint in self.orphans.take_done():
            self.links.unregister(endpoint)
        self.links.flush()
        send = self.sender.send
        if failed is not None:
            self._send_kept()
        else:
            for raw in self.table.take_packets():
                send(raw)
        for raw in self.orphans.take_packets():
            send(raw)

    def _send_kept(self) -> None:
        """--pcap-failed: every session keeps what it sends."""
        send, keep, at = self.sender.send, self.failed.sent, self._wall_offset + self.now()
        for session, packets in self.table.take_packets_by_session():
            if packets:
                keep(session, packets, at)
                for raw in packets:
                    send(raw)

    def _pcap_session_freed(self, endpoint) -> None:
        """A freed session's packets go to a file when it failed, 2.5 s later (its late
        whole answers and the comparison's last verdicts included: ``FailedSessions.freed``)."""
        self._note_differences()
        made = self.failed.freed(endpoint, self.now())
        if made is not None:
            self._write_pcap(made)

    def _write_due_pcaps(self, now: float) -> None:
        """--pcap-failed: the files of freed sessions whose late answers had their time."""
        self._note_differences()
        for made in self.failed.due(now):
            self._write_pcap(made)

    def _note_differences(self) -> None:
        comparing = self.comparing
        if comparing is None or not comparing.differing:
            return
        differing, comparing.differing = comparing.differing, {}
        for key, verdict in differing.items():
            self.failed.differs(Endpoint(*key), verdict)

    def _write_pcap(self, made) -> None:
        """One failed session's file. A write that fails is counted and logged once; the
        copy goes on."""
        error = self.pcap_directory.write(made.name, made.content)
        if error is None:
            return
        self.failed.write_failed()
        if not self._pcap_failed_logged:
            self._pcap_failed_logged = True
            log.error("--pcap-failed: cannot write %s; failed sessions are still counted "
                      "(pcap_failed.not_written)", error)

    # ------------------------------------------------------------------ periodic work

    def _poll_timeout_ms(self) -> int:
        deadline = min((d for d in (self.table.next_deadline(), self.orphans.next_deadline()) if d is not None),
                       default=None)
        wait = 0.25 if deadline is None else min(0.25, max(0.0, deadline - self.now()))
        return int(wait * 1000) + (1 if wait > 0 else 0)

    def _housekeeping(self, now: float) -> None:
        if self.shedder is not None:
            self._shed_live_sessions(now)
        self._update_kernel_skips(now)
        for check in self._watches:
            reason = check()
            if reason:
                log.error("%s", reason)
                self.stop(reason)
        self.links.tick(now)
        self._log_notices()
        if self.links.all_down() and not self.options.lonely:
            self.stop("no intercept is reachable (pass -L to keep copying and wait for it)")
        if self.input_ended_at is not None:
            idle = all(s.over for s in self.table.sessions())
            if idle or now - self.input_ended_at > self.options.drain_timeout:
                self.stop("input ended")
        if self.comparing is not None:
            self.comparing.tick(now)
            self._write_differences()
        if self.failed is not None:
            self._write_due_pcaps(now)
            if self.failed is not None:
                self._note_differences()
        if self.loop_meter is not None:
            self.counters.loop_busy_percent = self.loop_meter.sample(time.monotonic())
        if self.publisher is not None:
            self.publisher.maybe_publish(now, self.published_counters)
        if now - self._last_stats >= STATS_EVERY:
            self._last_stats = now
            log.info("%s", self.stats_line())
            self._check_memory()

    def _shed_live_sessions(self, now: float) -> None:
        count = self.shedder.sessions_to_shed(now, self.table.live)
        if count:
            shed = self.table.shed(count, now)
            self.kernel_skips.admit(shed, now)
            log.warning("still %.1f s behind the input: shed %d live sessions", self.shedder.lag, len(shed))

    def _update_kernel_skips(self, now: float) -> None:
        """Hand the busiest skipped connections to the capture workers' kernel filters."""
        if not self.kernel_skips.due(now):
            return
        flows = self.kernel_skips.update(self.table.skipping, self.table.take_skip_hits(), now)
        if flows is None:
            return
        gone = [peer for peer, seen in self._capture_peers.items() if now - seen > CAPTURE_PEER_TIMEOUT]
        for peer in gone:
            del self._capture_peers[peer]
        self.counters.kernel_skips = len(flows)
        self.counters.kernel_skip_updates = self.kernel_skips.changes
        self._send_skips(flows, list(self._capture_peers))

    def _send_skips(self, flows: list[bytes], peers: list[bytes]) -> None:
        message = wire.encode_skip(flows)
        for peer in peers:
            try:
                self.captures.send_multipart([peer, message], zmq.NOBLOCK)
            except zmq.ZMQError:   # the worker's queue is full (or it is gone): the next list heals
                self.counters.kernel_skip_unsent += 1

    def _write_differences(self) -> None:
        """Differing requests to the --compare-log file, one JSON object a line. A write
        that fails is counted and logged once; the copy goes on."""
        records = self.comparing.take_records()
        fd = self.options.compare_log_fd
        if not records or fd is None:
            return
        text = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records)
        try:
            os.write(fd, text.encode())
        except OSError as exc:
            self.comparing.counters.records_dropped += len(records)
            if not self._compare_log_failed:
                self._compare_log_failed = True
                log.error("--compare-log: cannot write: %s; differences are still counted", exc.strerror or exc)

    def _check_memory(self) -> None:
        limit = self.options.memory_limit_mb
        if limit is None:
            return
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if peak_mb > limit:
            self.stop(f"memory limit reached: peak RSS {peak_mb:.0f} MB > -m {limit} MB")

    def _log_notices(self) -> None:
        for notice in self.links.notices:
            log.warning("%s", notice)
        self.links.notices.clear()

    # ------------------------------------------------------------------ reporting

    def stats_line(self) -> str:
        e, t = self.table.stats, self.table.table_stats
        return (f"active:{len(self.table)} started:{t.sessions_started} freed:{t.sessions_freed} "
                f"refused:{t.sessions_refused} | conns:{e.established} syn sent:{e.syns_sent} "
                f"for no syn:{e.fabricated_syns} reconnect:{e.reconnects} | "
                f"clt packets:{e.client_packets} clt cont:{e.client_content_packets} "
                f"send:{e.packets_sent} send content:{e.content_packets_sent} "
                f"retransmit:{e.retransmits} | resp:{e.responses} c-resp:{e.responses_with_payload} "
                f"resp fin:{e.response_fins} resp rst:{e.response_resets} | "
                f"raw send failures:{sum(self.sender.failed.values())} "
                f"unroutable resp:{t.responses_unroutable} | shed new:{t.connections_shed} "
                f"shed live:{self.counters.outcomes.get('dropped:shed', 0)} "
                f"skipped after drop:{t.packets_skipped} checksums completed:{t.checksums_completed}"
                + (self._pcap_failed_stats() if self.failed is not None else ""))

    def _pcap_failed_stats(self) -> str:
        c = self.failed.counters
        return (f" | pcap failed written:{c.written} not written:{c.not_written} "
                f"packets evicted:{c.packets_evicted} over budget:{c.packets_over_budget}")

    def published_counters(self) -> dict:
        """What the stats channel carries: the summary's numbers (the comparison's as
        ``Comparing.stats_figures`` gives them) and the live session count."""
        compare = {"compare": self.comparing.stats_figures()} if self.comparing is not None else {}
        return {**flatten({**self.summary(compare=False), **compare}), "sessions_active": len(self.table)}

    def summary(self, compare: bool = True) -> dict:
        """Every counter, JSON-ready (``--summary-json``); with ``compare`` the comparison's
        summary too, examples included."""
        return {
            "owner": dataclasses.asdict(self.counters),
            "table": dataclasses.asdict(self.table.table_stats),
            "engine": dataclasses.asdict(self.table.stats),
            "links": dataclasses.asdict(self.links.stats),
            "fanout": {"sampled_out": self.fanout.sampled_out, "unmapped": self.fanout.unmapped},
            "buffers": {"budget_bytes": self.budget.limit, "used_bytes": self.budget.used,
                        "peak_bytes": self.budget.peak, "budget_drops": self.budget.bites},
            "orphans": dataclasses.asdict(self.orphans.stats),
            "raw_sent": self.sender.sent,
            "raw_send_failures": self.sender.failed,
            **({"compare": self.comparing.summary()} if compare and self.comparing is not None else {}),
            **({"pcap_failed": self.failed.summary()} if self.failed is not None else {}),
            "stop_reason": self.stop_reason,
        }


_ENDINGS = {Closed: "closed", Dropped: "dropped"}   # session outcome kinds, by event type


def _endpoint_tuple(endpoint) -> wire.EndpointTuple:
    return (endpoint.client_ip, endpoint.client_port, endpoint.target_ip, endpoint.target_port)


# ---------------------------------------------------------------------- cluster entry point


def options_from_config(config, shard: int) -> OwnerOptions:
    """The options of owner ``shard`` of a cluster config (cluster/config.py)."""
    copy = config.copy
    return OwnerOptions(
        fanout=FanoutOptions(copy.mappings, copy.client_pool, copy.copies, copy.port_offset,
                             copy.sample_percent),
        session=SessionConfig(fake_syn_mss=copy.fake_syn_mss, only_full_sessions=copy.only_full_sessions,
                              no_wait=copy.no_wait, session_timeout=copy.session_timeout,
                              keepalive_timeout=copy.keepalive_timeout, mtu=copy.mtu),
        intercepts=copy.intercepts, packet_endpoint=config.owner_endpoint(shard),
        identity=f"owner-{shard}@{socket.gethostname()}", lonely=copy.lonely,
        memory_limit_mb=copy.memory_limit_mb, shard=shard, shards=config.owners.count,
        buffer_budget_mb=copy.buffer_budget_mb, shedding=shedding_config(copy.shed_after),
        intercepts_sharded=True, instance=copy.port_offset if copy.instances > 1 else 0,
        instances=copy.instances, stats_endpoint=config.stats.endpoint,
        compare=comparefiles.compare_options(config), **cluster_keys(config))


def cluster_keys(config) -> dict:
    """The owners' keys from the cluster config's [security] (the online host's pair, the
    intercepts' and the stats listener's public keys), or none when curve = false."""
    if not config.security.curve:
        return {}
    layout = KeyLayout(config.security.keys_dir)
    return {"keys": layout.owner_keys(),
            "stats_keys": layout.publisher_keys("online") if config.stats.endpoint else None}


PLAIN_CLUSTER_FIX = "set [security] curve = true in the cluster config"


def shedding_config(shed_after: float) -> SheddingConfig | None:
    """--shed-after / copy.shed_after: new connections and then live sessions are shed past
    it, until the owner is back under a fifth of it; 0 never sheds."""
    if shed_after <= 0:
        return None
    return SheddingConfig(lag_high=shed_after, lag_low=shed_after / 5)


def main(argv=None) -> int:
    """``python -m tcpcopy.session.owner --config TOML --shard N``: one owner of a cluster,
    as supervisord starts it. Its capture workers and intercepts run as their own programs."""
    parser = CommandParser(prog="tcpcopy-owner", description=main.__doc__)
    parser.add_argument("--config", required=True, metavar="TOML", help="cluster config")
    parser.add_argument("--shard", required=True, metavar="N", help="this owner's number (0..owners.count-1)")
    add_pcap_failed_flags(parser)
    add_user(parser)
    add_log_level(parser)
    args = parser.parse_args(argv)
    pcap_failed = pcap_failed_options(parser, args)
    setup_logging(f"tcpcopy-owner-{args.shard}", None, level=args.log_level)
    install_log_reopen()
    try:
        config = load_config(args.config)
        shard, _ = parse_shard(f"{args.shard}/{config.owners.count}")
        args.user = args.user or user_from_config(config.supervisor.user)
        private_directory(config.owners.run_dir, args.user)   # 0700: only the owners' user reaches the sockets
        options = dataclasses.replace(options_from_config(config, shard),   # reads the key files: before the drop
                                      pcap_failed=pcap_failed)
        files = _compare_files(config, shard, args.user)
        if files is not None:
            options = dataclasses.replace(options, compare_log_fd=files.differences_fd)
        sender = DualSender()   # raw sockets first: the only thing that needs root
        drop_to(args.user)
        owner = Owner(options, sender)
        owner.wait_for_intercepts()
    except (ConfigError, ValueError) as exc:
        parser.error(str(exc))
    except (OwnerError, RawSendError, PrivilegeError, zmq.ZMQError, OSError) as exc:
        log.error("%s", exc)
        return 2
    owner.watch(reopen_logs_if_asked)
    if files is not None:
        owner.watch(lambda: files.every_while(owner, owner.now()))
        log.info("comparing %d%% of the sessions: differences to %s, the summary to %s", config.compare.percent,
                 files.differences_path, files.summary_path)
    if options.keys is None:
        plain = ["the control channel to the intercepts"] + (["the stats channel"] if options.stats_endpoint else [])
        log.warning("%s", plain_warning(plain, PLAIN_CLUSTER_FIX))
    owner.ready_message = f"owner {shard} of {config.owners.count}: a capture worker is feeding it"

    def on_signal(signum, _frame):
        owner.stop("signal")

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    log.info("owner %d of %d ready on %s", shard, config.owners.count, options.packet_endpoint)
    try:
        owner.run()
    finally:
        log.info("%s", owner.stats_line())
        log.info("stopped: %s; outcomes %s", owner.stop_reason,
                 json.dumps(owner.counters.outcomes, sort_keys=True))
        if files is not None:
            _close_compare_files(owner, files)
    return 0 if owner.stop_reason == "signal" else 1


def _compare_files(config, shard: int, run_as) -> comparefiles.OwnerFiles | None:
    """With [compare], this owner's differences and summary files, opened before the drop."""
    if not config.compare.enabled:
        return None
    try:
        return comparefiles.OwnerFiles(config.compare_dir(), shard, run_as)
    except OSError as exc:
        raise OSError(f"compare.log_dir {config.compare_dir()}: cannot write there ({exc.strerror or exc}): "
                      "choose a directory this host's root may create files in") from None


def _close_compare_files(owner: Owner, files: comparefiles.OwnerFiles) -> None:
    """The final summary (every compared session judged by the owner's shutdown)."""
    try:
        files.write_summary(owner, final=True)
    except OSError as exc:
        log.error("cannot write the comparison summary %s: %s", files.summary_path, exc.strerror or exc)
    if owner.comparing is not None:
        log.info("compared: %s", comparefiles.totals_line(owner.comparing.summary()))
    files.close()


if __name__ == "__main__":
    sys.exit(main())
