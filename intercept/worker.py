"""The intercept worker: libpcap in, ZeroMQ ROUTER out, a RouteTable in between.

One thread, one poll loop over three kinds of file descriptor:

- the ROUTER socket, where session owners (DEALER sockets) say HELLO, REGISTER and
  UNREGISTER their replayed connections, WATCH those they compare, send HEARTBEATs and
  leave with BYE;
- one live pcap handle per capture device, filtered in the kernel by the user's -F, seeing
  the target's answers to replayed clients;
- optionally a wake-up pipe, written by signal handlers so a stop is noticed at once.

Each captured answer becomes a record (its IP+TCP headers, plus the first ``payload`` bytes
of its payload when asked), looked up by its replayed 4-tuple and appended to its owner's
batch. A batch leaves as one RESPONSES message at ``BATCH_RECORDS`` records or
``BATCH_DELAY`` after its first record, whichever comes first: under load the messages are
full, when quiet an answer waits at most a millisecond (the C intercept adapts a count
threshold for the same trade, reference §2.5).

Watched routes (``answer_bytes`` > 0, the capture's snaplen grown to match): an answer of a
route its owner WATCHes goes as its usual header record in RESPONSES (the session engine
runs on those) and, when it carries payload, also whole, cut at ``answer_bytes`` of payload,
as a record of an ANSWERS message to the same owner, batched the same way (at most
``wire.ANSWERS_MAX_RECORDS`` records or ``ANSWER_BATCH_BYTES`` a message). An answer without
payload has nothing its header record lacks. Other answers cost what they always did: only
a frame's head (what the capture held before the snaplen grew) is decoded, the rest is read
for watched routes alone, and while something is watched each answer costs one more dict
lookup.

Peers are not trusted. Only a peer that said HELLO as an owner is one (at most
``max_owners`` of them); anything else it sends before is refused and counted. A route
belongs to the owner that registered it (``routes.py``): another owner can neither take nor
remove it, except once its owner has been silent for OWNER_SILENCE (then the owner is
forgotten with its routes). Owners pick random routing ids and the ROUTER has no handover,
so no peer can speak for another. Every message is bounded (ZMQ_MAXMSGSIZE and the wire's
limits), a wake-up reads control messages for at most CONTROL_SLICE, and what a peer chose
(its identity, its BYE reason) is logged through ``wire.printable``.

Sending never blocks: ROUTER_MANDATORY makes an owner that has gone raise EHOSTUNREACH
instead of swallowing messages silently, and SNDHWM bounds what waits for a slow owner
(``SEND_HWM`` messages of up to ``BATCH_RECORDS`` records, or ``ANSWER_BATCH_BYTES`` plus
one record, each); both are counted drops, so
a stalled owner costs its own answers, never the intercept's memory or the other owners.

Time comes from ``clock`` (monotonic seconds), read once per wake-up and passed down.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from tcpcopy.capture import packet as pk
from tcpcopy.capture.pcapio import CaptureError, open_live
from tcpcopy.cluster import wire
from tcpcopy.cluster.busy import LoopMeter
from tcpcopy.cluster.curve import CONTROL_DOMAIN, ClientKeys, KeyGate, ServerKeys, listen_with_keys
from tcpcopy.cluster.stats import StatsPublisher
from tcpcopy.intercept.routes import DEFAULT_MAX_PER_OWNER, DEFAULT_MAX_WATCHED, DEFAULT_TTL, RouteTable

log = logging.getLogger("tcpcopy.intercept")

DEFAULT_PORT = 36524
BATCH_RECORDS = 64         # records per RESPONSES message at most
BATCH_DELAY = 0.001        # seconds a record may wait for company
TICK = 1.0                 # heartbeats, expiry and owner checks, seconds
OWNER_SILENCE = 10.0       # an owner silent this long is gone, with its routes
SEND_HWM = 4096            # messages queued per owner before sends are dropped
CLOSE_LINGER_MS = 500      # time BYE messages get to leave on shutdown
CONTROL_BURST = 256        # control messages handled per wake-up before pcap's turn
CONTROL_SLICE = 0.02       # seconds of control messages per wake-up at most
PEER_HEARTBEAT_MS = 1000   # ZeroMQ's own pings, so a dead connection ends within
PEER_TIMEOUT_MS = 3000     #   seconds and its owner's reconnection (same id) is taken
DEFAULT_MAX_OWNERS = 256
HEADER_SNAPLEN = 256       # link + IP (with options or IPv6 extensions) + TCP with options
CAPTURE_BUFFER = 32 << 20  # the kernel's ring for answers not yet read
CAPTURE_TIMEOUT_MS = 1     # the kernel hands over its block of answers after this long
MAX_PAYLOAD = 1460
MAX_ANSWER_BYTES = wire.ANSWER_RECORD_MAX_BYTES   # --answer-bytes; the snaplen is capped there too
ANSWER_BATCH_BYTES = 64 << 10   # an ANSWERS message leaves once its records pass this size
PEER_LOG_MEMORY = 1024     # (peer, fault) pairs logged once, remembered at most
PEER_LOG_LINES = 20        # lines about peers logged per PEER_LOG_WINDOW at most: a peer
PEER_LOG_WINDOW = 60.0     #   that reconnects gets a new routing id, so "once" is per window

_SYN_OR_RST = pk.SYN | pk.RST
_GATE_COUNTS = ("admitted", "refused_key", "refused_plain", "refused_handshake")   # KeyGate.counts

COUNTERS = (
    "all",                  # answers captured and decoded
    "malformed",            # captured frames the codec rejected
    "unroutable",           # answers for no registered connection, neither SYN nor RST
    "resp_packs",           # RESPONSES messages sent
    "resp_records",         # records in them
    "send_drops",           # RESPONSES messages not sent: owner slow (HWM) or gone
    "records_dropped",      # records in those messages
    "control_unsent",       # HELLO/HEARTBEAT/BYE that could not be sent
    "peer_errors",          # messages from peers that could not be understood or used
    "before_hello",         # REGISTER/UNREGISTER/HEARTBEAT from a peer with no HELLO: refused
    "owners_refused",       # HELLOs beyond max_owners: refused
    "owners_forgotten",     # owners dropped after OWNER_SILENCE without a message
    "owners_restarted",     # an owner said HELLO with a new instance: old routes dropped
    "owners_replaced",      # a dead owner's replacement (same identity) took its routes
    "watch_off",            # WATCH endpoints refused: started without --answer-bytes
    "answer_packs",         # ANSWERS messages sent
    "answer_records",       # records in them (watched answers with payload)
    "answer_bytes",         # bytes of those records
    "answer_send_drops",    # ANSWERS messages not sent: owner slow (HWM) or gone
    "answer_drops",         # records in those messages, or in batches of owners gone
)
_WATCH_REFUSALS = ("watch_off", "watch_taken", "watch_unknown", "watch_over_quota")


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """What one intercept process does; built and validated by the ``intercept`` command."""

    endpoint: str = f"tcp://0.0.0.0:{DEFAULT_PORT}"   # where the ROUTER binds
    devices: tuple[str, ...] = ("any",)
    bpf: str = "tcp"
    payload: int = 0                 # payload bytes kept in each record, 0..MAX_PAYLOAD
    route_ttl: float = DEFAULT_TTL
    identity: str = "intercept"
    stats_every: float = 30.0
    stats_endpoint: str = ""         # publish counters there every second ("": off)
    max_owners: int = DEFAULT_MAX_OWNERS
    routes_per_owner: int = DEFAULT_MAX_PER_OWNER
    answer_bytes: int = 0            # payload bytes of watched answers sent whole (0: WATCH refused)
    watch_max: int = DEFAULT_MAX_WATCHED   # routes one owner may watch at once
    keys: ServerKeys | None = None   # CURVE: this intercept's pair and the owners it admits
    stats_keys: ClientKeys | None = None   # CURVE on the stats channel

    def __post_init__(self) -> None:
        if not 0 <= self.payload <= MAX_PAYLOAD:
            raise ValueError(f"payload {self.payload} out of range 0..{MAX_PAYLOAD}")
        if not 0 <= self.answer_bytes <= MAX_ANSWER_BYTES:
            raise ValueError(f"answer_bytes {self.answer_bytes} out of range 0..{MAX_ANSWER_BYTES}")
        if self.watch_max < 0:
            raise ValueError(f"watch_max ({self.watch_max}) must be at least 0")
        if self.max_owners < 1 or self.routes_per_owner < 1:
            raise ValueError(f"max_owners ({self.max_owners}) and routes_per_owner "
                             f"({self.routes_per_owner}) must be at least 1")

    @property
    def snaplen(self) -> int:
        """Headers, plus the payload bytes records may carry, within the wire's record limit."""
        return min(HEADER_SNAPLEN + max(self.payload, self.answer_bytes), wire.ANSWER_RECORD_MAX_BYTES)


@dataclass(slots=True)
class Owner:
    """A session owner that said HELLO."""

    identity: str
    instance: str
    address: str | None
    last_seen: float


class Worker:
    """The intercept's I/O loop. ``bind`` and ``open_captures``, then ``serve`` or ``step``."""

    def __init__(self, config: WorkerConfig, *, clock: Callable[[], float] = time.monotonic,
                 context: zmq.Context | None = None) -> None:
        self.config = config
        self.clock = clock
        self.routes = RouteTable(ttl=config.route_ttl, max_per_owner=config.routes_per_owner,
                                 max_watched_per_owner=config.watch_max)
        self.hello = wire.Hello("intercept", config.identity, secrets.token_hex(8))
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.loop_meter = LoopMeter(self.clock())   # the share of time step() works (stats)
        self._payload = config.payload
        self._answer_bytes = config.answer_bytes
        self._linktype = 0                              # of the capture being read
        self._watched = self.routes.watched      # the table keeps this dict: tested per answer
        self._said_watch_off = False
        self.owners: dict[bytes, Owner] = {}
        self._batches: dict[bytes, list] = {}   # owner -> [due, records]; earliest due first
        self._answer_batches: dict[bytes, list] = {}   # owner -> [due, records, bytes]; likewise
        self._captures: list = []                # (device, handle, linktype)
        self._closed_pcap_drops = 0
        self._logged: set[tuple[bytes, str]] = set()   # (peer, fault) pairs logged
        self._greeted: dict[bytes, float] = {}           # peers without HELLO: last greeting
        self._peer_lines = self._unlogged = 0            # lines about peers in this window
        self._log_window = clock()
        self._now = clock()
        self._next_tick = self._now + TICK
        self._next_stats = self._now + config.stats_every
        self._wake_fd: int | None = None
        self._context = context or zmq.Context.instance()
        self.socket = self._router()
        self.gate = (KeyGate(self.socket, config.keys, CONTROL_DOMAIN, "intercept control channel",
                             self._context) if config.keys is not None else None)
        self._poller = zmq.Poller()
        self._poller.register(self.socket, zmq.POLLIN)
        self.publisher = (StatsPublisher(config.stats_endpoint, "intercept", config.identity,
                                         context=self._context, keys=config.stats_keys)
                          if config.stats_endpoint else None)

    # -- set-up

    def _router(self) -> zmq.Socket:
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)   # a gone owner is an error, not a silent sink
        # No ROUTER_HANDOVER: a connection that claims a routing id in use is refused, so no
        # peer takes over an owner's; ZeroMQ's pings end a dead connection within seconds,
        # after which the owner's reconnection with its id is accepted.
        sock.setsockopt(zmq.HEARTBEAT_IVL, PEER_HEARTBEAT_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, PEER_TIMEOUT_MS)
        sock.setsockopt(zmq.MAXMSGSIZE, wire.max_frame(wire.INTERCEPT_TAKES))
        sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IPV6, 1)                # dual-stack: IPv4 and IPv6 owners alike
        if self.config.keys is not None:
            listen_with_keys(sock, self.config.keys, CONTROL_DOMAIN)
        return sock

    def bind(self) -> str:
        """Bind the ROUTER; the endpoint actually bound (``*`` ports resolved)."""
        self.socket.bind(self.config.endpoint)
        return self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def open_captures(self) -> None:
        """One live handle per device; raises CaptureError naming the device and the fix.

        Not in immediate mode: the kernel wakes us once per block of answers (full, or
        CAPTURE_TIMEOUT_MS old) instead of once per answer, which costs an answer at most a
        millisecond and saves a poll and a read per packet under load."""
        for device in self.config.devices:
            handle = open_live(device, self.config.bpf, snaplen=self.config.snaplen, immediate=False,
                               timeout_ms=CAPTURE_TIMEOUT_MS, buffer_bytes=CAPTURE_BUFFER)
            self._captures.append((device, handle, handle.datalink()))
            self._poller.register(handle.fileno(), zmq.POLLIN)

    def add_wake_fd(self, fd: int) -> None:
        """Poll ``fd`` too (a signal wake-up pipe); whatever arrives on it is discarded."""
        self._wake_fd = fd
        self._poller.register(fd, zmq.POLLIN)

    # -- the loop

    def serve(self, should_stop: Callable[[], bool]) -> None:
        while not should_stop():
            self.step()

    def step(self, max_wait: float = TICK) -> None:
        """Wait for input or the next deadline (at most ``max_wait`` s), then handle it all."""
        waiting = self.clock()
        events = dict(self._poller.poll(self._timeout_ms(waiting, max_wait)))
        now = self._now = self.clock()
        self.loop_meter.waited(now - waiting)
        if self.socket in events:
            self._receive_control(now)
        for capture in tuple(self._captures):   # a failed capture leaves the list
            if capture[1].fileno() in events:
                self._read_capture(capture)
        if self._wake_fd is not None and self._wake_fd in events:
            _drain(self._wake_fd)
        self.flush_due(now)
        if now >= self._next_tick:
            self.tick(now)

    def _timeout_ms(self, now: float, max_wait: float) -> int:
        due = min(self._next_tick, now + max_wait)
        for batches in (self._batches, self._answer_batches):
            if batches:
                due = min(due, next(iter(batches.values()))[0])
        return max(0, math.ceil((due - now) * 1000))

    # -- control channel

    def _receive_control(self, now: float) -> None:
        """At most CONTROL_BURST messages or CONTROL_SLICE seconds, so a flood of control
        messages never holds back the captured answers, heartbeats and expiry."""
        until = time.monotonic() + CONTROL_SLICE
        for _ in range(CONTROL_BURST):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.on_control(frames, now)
            if time.monotonic() >= until:
                return

    def on_control(self, frames: list, now: float) -> None:
        """One message from a peer: [routing id, frame] as zmq Frames (or bytes)."""
        routing_id = _bytes(frames[0])
        if len(frames) != 2:
            self._peer_fault(routing_id, frames[-1], f"sent a message of {len(frames) - 1} frames, "
                             "expected exactly one (is it a tcpcopy session owner?)")
            return
        try:
            kind, body = wire.decode(_bytes(frames[1]))
        except wire.WireError as exc:
            self._peer_fault(routing_id, frames[1], str(exc))
            return
        if kind == wire.HELLO:
            self._on_hello(routing_id, body, frames[1], now)
            return
        handler = self._HANDLERS.get(kind)
        if handler is None:
            self._peer_fault(routing_id, frames[1], f"sent {wire.KIND_NAMES[kind]}, which an intercept "
                             "does not take (is another role connected to the intercept port?)")
            return
        owner = self.owners.get(routing_id)
        if owner is None:
            self._before_hello(routing_id, kind, frames[1], now)
            return
        owner.last_seen = now
        handler(self, routing_id, body, now)

    def _before_hello(self, routing_id: bytes, kind: int, frame, now: float) -> None:
        """A message from a peer that has not said HELLO: refused (a BYE has nothing to end).
        The peer is greeted, at most once a second: an owner that knew an earlier instance
        of this intercept answers with HELLO and registers its live endpoints again."""
        if kind == wire.BYE:
            return
        self.counts["before_hello"] += 1
        if self._first_time(routing_id, "before_hello"):
            log.info("peer %s: %s before HELLO refused (an owner that knew an earlier intercept says "
                     "HELLO when greeted; further ones are only counted)",
                     self._peer_name(routing_id, frame), wire.KIND_NAMES[kind])
        if now - self._greeted.get(routing_id, -math.inf) >= TICK:
            if len(self._greeted) >= PEER_LOG_MEMORY:
                self._greeted.clear()
            self._greeted[routing_id] = now
            self._send_control(routing_id, wire.encode_hello(self.hello))

    def _on_hello(self, routing_id: bytes, hello: wire.Hello, frame, now: float) -> None:
        if hello.role != "owner":
            self._peer_fault(routing_id, frame, f"says it is a {hello.role!r} "
                             f"({wire.printable(hello.identity)}); only session owners talk to an intercept")
            return
        owner = self.owners.get(routing_id)
        if owner is None:
            owner = self._new_owner(routing_id, hello, frame, now)
            if owner is None:
                return
        elif owner.instance != hello.instance:
            self.routes.drop_owner(routing_id)   # a restarted owner knows nothing of them
            self._batches.pop(routing_id, None)
            self._drop_answer_batch(routing_id)
            self.counts["owners_restarted"] += 1
            log.info("owner %s restarted: its old routes are dropped", wire.printable(hello.identity))
        owner.identity, owner.instance, owner.last_seen = hello.identity, hello.instance, now
        self._greeted.pop(routing_id, None)
        self._send_control(routing_id, wire.encode_hello(self.hello))

    def _new_owner(self, routing_id: bytes, hello: wire.Hello, frame, now: float) -> Owner | None:
        """Admit a peer as an owner, up to max_owners; beyond, refuse it (counted) with a BYE."""
        limit = self.config.max_owners
        if len(self.owners) >= limit:
            self.counts["owners_refused"] += 1
            if self._first_time(b"", "owners_refused"):
                log.warning("%d owners connected, the limit: HELLO from %s refused, and further ones "
                            "(counted as owners_refused); raise intercept --max-owners if they are all "
                            "real", limit, self._peer_name(routing_id, frame, hello.identity))
            self._send_control(routing_id, wire.encode_bye(
                f"refused: this intercept serves {limit} owners at most (intercept --max-owners)"))
            return None
        self._replace_dead_namesakes(routing_id, hello.identity, now)
        owner = self.owners[routing_id] = Owner(hello.identity, hello.instance, _peer_address(frame), now)
        if self._may_log():
            log.info("owner %s connected from %s%s", wire.printable(hello.identity), owner.address or "?",
                     _key_note(frame))
        return owner

    def _replace_dead_namesakes(self, routing_id: bytes, identity: str, now: float) -> None:
        """An owner that supervisord restarted after a crash says HELLO under its old name
        from a new connection. An owner of that name whose connection is gone is dead: its
        routes pass to the newcomer, which is told them (HANDOVER) to reset those connections
        on the target; else they would stay open there, half open, for minutes. A namesake
        still connected keeps its routes (another peer cannot take them by a name)."""
        for old_id, old in list(self.owners.items()):
            if old_id != routing_id and old.identity == identity and not self._connected(old_id):
                self._hand_over(old_id, routing_id, identity, now)

    def _connected(self, routing_id: bytes) -> bool:
        """The ROUTER still has a connection for ``routing_id`` (a HEARTBEAT to it is taken)."""
        try:
            self.socket.send_multipart((routing_id, wire.encode_heartbeat(time.time())), zmq.NOBLOCK)
        except zmq.Again:
            return True   # connected, only slow
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                return False
            raise
        return True

    def _hand_over(self, old_id: bytes, new_id: bytes, identity: str, now: float) -> None:
        keys = self.routes.hand_over(old_id, new_id, now)
        self._forget(old_id)
        self.counts["owners_replaced"] += 1
        for part in wire.endpoint_batches(keys):
            self._send_control(new_id, wire.encode_handover(part))
        if self._may_log():
            log.info("owner %s replaced its dead predecessor: %d routes handed over, to be reset on the "
                     "target", wire.printable(identity), len(keys))

    def _on_register(self, routing_id: bytes, endpoints: list, now: float) -> None:
        for key in endpoints:
            self._free_if_silent(key, routing_id, now)
            if self.routes.register(key, routing_id, now):
                for record in self.routes.release(key):
                    self._add(routing_id, record, now)
            else:
                self._register_refused(routing_id, key)

    def _free_if_silent(self, key, routing_id: bytes, now: float) -> None:
        """A route whose owner has been silent for OWNER_SILENCE goes to whoever registers it:
        that owner is forgotten now, with its routes, as the next tick would."""
        holder = self.routes.holder(key)
        if holder is None or holder == routing_id:
            return
        owner = self.owners.get(holder)
        if owner is None or now - owner.last_seen >= OWNER_SILENCE:
            self._forget_silent(holder, owner, now)

    def _register_refused(self, routing_id: bytes, key) -> None:
        """Log the first refusal of each kind for each owner (the counters have them all)."""
        holder = self.routes.holder(key)
        if holder is not None and holder != routing_id:
            why = (f"another owner ({self._owner_name(holder)}) holds {_endpoint_text(key)} "
                   "(two copiers replaying the same client addresses? give each its own -c or -f)",
                   "register_taken")
        elif self.routes.routes_of(routing_id) >= self.routes.max_per_owner:
            why = (f"it holds {self.routes.max_per_owner} routes, its limit (raise intercept "
                   "--routes-per-owner if it really keeps that many connections)", "register_over_quota")
        else:
            why = (f"the route table is full ({self.routes.max_routes} routes)", "register_table_full")
        if self._first_time(routing_id, why[1]):
            log.warning("owner %s: REGISTER refused: %s; further refusals are only counted (%s)",
                        self._owner_name(routing_id), why[0], why[1])

    def _on_watch(self, routing_id: bytes, endpoints: list, now: float) -> None:
        if not self._answer_bytes:
            self.counts["watch_off"] += len(endpoints)
            if not self._said_watch_off:
                self._said_watch_off = True
                log.warning("owner %s asked for whole answers (WATCH) to compare them, but this intercept "
                            "sends headers only: start intercept with --answer-bytes N (e.g. 65536; "
                            "answer_bytes in a cluster config's [intercept]); refusals are counted (watch_off)",
                            self._owner_name(routing_id))
            return
        for key in endpoints:
            if not self.routes.watch(key, routing_id):
                self._watch_refused(routing_id, key)

    def _watch_refused(self, routing_id: bytes, key) -> None:
        """Log the first refusal of each kind for each owner (the counters have them all)."""
        holder = self.routes.holder(key)
        if holder is None:
            why = (f"{_endpoint_text(key)} has no route (a WATCH comes after the REGISTER of its endpoint)",
                   "watch_unknown")
        elif holder != routing_id:
            why = f"another owner ({self._owner_name(holder)}) holds {_endpoint_text(key)}", "watch_taken"
        else:
            why = (f"it watches {self.routes.max_watched_per_owner} routes, its limit (raise intercept "
                   "--watch-max, or compare fewer sessions)", "watch_over_quota")
        if self._first_time(routing_id, why[1]):
            log.warning("owner %s: WATCH refused: %s; further refusals are only counted (%s)",
                        self._owner_name(routing_id), why[0], why[1])

    def _on_unregister(self, routing_id: bytes, endpoints: list, now: float) -> None:
        for key in endpoints:
            self.routes.unregister(key, routing_id)

    def _on_heartbeat(self, routing_id: bytes, sent_at: float, now: float) -> None:
        pass   # on_control did the work: the owner is alive

    def _on_bye(self, routing_id: bytes, reason: str, now: float) -> None:
        name = self._owner_name(routing_id)
        dropped = self._forget(routing_id)
        if self._may_log():
            log.info("owner %s left (%s): %d routes dropped", name, wire.printable(reason), dropped)

    _HANDLERS = {wire.REGISTER: _on_register, wire.UNREGISTER: _on_unregister,
                 wire.HEARTBEAT: _on_heartbeat, wire.BYE: _on_bye, wire.WATCH: _on_watch}

    def _forget(self, routing_id: bytes) -> int:
        """Drop an owner, its routes and its unsent batch; the number of routes dropped."""
        self.owners.pop(routing_id, None)
        batch = self._batches.pop(routing_id, None)
        if batch is not None:
            self.counts["records_dropped"] += len(batch[1])
        self._drop_answer_batch(routing_id)
        return self.routes.drop_owner(routing_id)

    def _drop_answer_batch(self, routing_id: bytes) -> None:
        batch = self._answer_batches.pop(routing_id, None)
        if batch is not None:
            self.counts["answer_drops"] += len(batch[1])

    def _forget_silent(self, routing_id: bytes, owner: Owner | None, now: float) -> None:
        """Forget an owner silent for OWNER_SILENCE; a namesake connected since (its
        replacement, when the dead one's connection seemed alive at its HELLO) takes its routes."""
        heir = owner and next((rid for rid, o in self.owners.items()
                               if rid != routing_id and o.identity == owner.identity), None)
        if heir is not None:
            self._hand_over(routing_id, heir, owner.identity, now)
            return
        dropped = self._forget(routing_id)
        if owner is None:
            return
        self.counts["owners_forgotten"] += 1
        if self._may_log():
            log.warning("owner %s silent for %.0f s: forgotten with its %d routes",
                        self._name_of(owner, routing_id), now - owner.last_seen, dropped)

    def _first_time(self, routing_id: bytes, fault: str) -> bool:
        """True the first time ``fault`` is seen from a peer (memory bounded) and the log
        budget lasts, so each is logged once while the counters keep every one."""
        key = (routing_id, fault)
        if key in self._logged:
            return False
        if len(self._logged) >= PEER_LOG_MEMORY:
            self._logged.clear()
        self._logged.add(key)
        return self._may_log()

    def _may_log(self) -> bool:
        """True while this window's budget of lines about peers lasts; the rest are counted
        and summed up once the window ends (``tick``)."""
        if self._peer_lines < PEER_LOG_LINES:
            self._peer_lines += 1
            return True
        self._unlogged += 1
        return False

    def _log_window_ends(self, now: float) -> None:
        if now - self._log_window < PEER_LOG_WINDOW:
            return
        if self._unlogged:
            log.warning("%d more lines about peers were not logged in the last %.0f s (the counters "
                        "have every fault)", self._unlogged, now - self._log_window)
        self._log_window, self._peer_lines, self._unlogged = now, 0, 0

    def _peer_fault(self, routing_id: bytes, frame, problem: str) -> None:
        """Count a message we cannot use; log the first one from each peer, naming it."""
        self.counts["peer_errors"] += 1
        if self._first_time(routing_id, "fault"):
            log.warning("peer %s: %s; message dropped (further faults from this peer are only counted)",
                        self._peer_name(routing_id, frame), problem)

    def _peer_name(self, routing_id: bytes, frame, claimed: str | None = None) -> str:
        owner = self.owners.get(routing_id)
        name = owner.identity if owner else claimed
        shown = wire.printable(name) if name is not None else "(no HELLO yet)"
        address = (owner.address if owner else None) or _peer_address(frame) or "?"
        return f"{shown} at {address}, routing id {routing_id.hex()}"

    def _owner_name(self, routing_id: bytes) -> str:
        return self._name_of(self.owners.get(routing_id), routing_id)

    @staticmethod
    def _name_of(owner: Owner | None, routing_id: bytes) -> str:
        return wire.printable(owner.identity) if owner else routing_id.hex()

    # -- captured answers

    def _read_capture(self, capture: tuple) -> None:
        _device, handle, self._linktype = capture
        try:
            handle.dispatch(-1, self._on_captured)
        except OSError as exc:   # the device went away or went down
            self._drop_capture(capture, exc)

    def _drop_capture(self, capture: tuple, exc: OSError) -> None:
        device, handle, _linktype = capture
        self._poller.unregister(handle.fileno())
        self._captures.remove(capture)
        self._close_capture(handle)
        if not self._captures:
            raise CaptureError(f"capture on {device!r} failed: {exc}; no capture device is left "
                               "(is the interface still up?)")
        log.error("capture on %r failed: %s; it is closed, the other devices go on", device, exc)

    def _on_captured(self, _timestamp, frame: bytes) -> None:
        self.on_frame(frame, self._linktype, self._now)

    def on_frame(self, frame: bytes, linktype: int, now: float) -> None:
        """One captured frame (per-packet path): only what routing needs is read
        (``pk.route_head``, no Packet made); a frame the codec rejects is counted."""
        try:
            key, record, flags, payload_len = pk.route_head(frame, linktype, self._payload)
        except pk.PacketError:
            self.counts["malformed"] += 1
            return
        self._route(key, record, flags, payload_len, now, frame, linktype)

    def on_packet(self, pkt: pk.Packet, now: float) -> None:
        """Route one decoded answer of the target (``pkt.buf`` holds it all)."""
        record = bytes(pkt.buf[:pkt.payload_off + self._payload])
        key = (pkt.dst, pkt.dport, pkt.src, pkt.sport)
        self._route(key, record, pkt.flags, pkt.payload_len, now, pkt.buf, pk.LINKTYPE_RAW)

    def _route(self, key: pk.RouteKey, record: bytes, flags: int, payload_len: int, now: float,
               frame: bytes | bytearray, linktype: int) -> None:
        """To the owner of ``key``, held if it may be a route's first answer, else counted
        (per-packet path). ``frame``: the whole capture, for a watched answer."""
        self.counts["all"] += 1
        owner = self.routes.lookup(key, now)
        if owner is not None:
            self._add(owner, record, now)
            if self._watched and key in self._watched and payload_len:
                self._add_answer(owner, frame, linktype, now)
        elif flags & _SYN_OR_RST:
            self.routes.hold(key, record, now)   # counted there, also when full
        else:
            self.counts["unroutable"] += 1

    def _add(self, owner: bytes, record: bytes, now: float) -> None:
        batch = self._batches.get(owner)
        if batch is None:
            self._batches[owner] = [now + BATCH_DELAY, [record]]
        else:
            batch[1].append(record)
            if len(batch[1]) >= BATCH_RECORDS:
                self._flush(owner)

    def _add_answer(self, owner: bytes, frame: bytes | bytearray, linktype: int, now: float) -> None:
        """A watched answer, from its IP header to ``answer_bytes`` of its payload (what the
        capture holds of it; never link padding), into its owner's ANSWERS batch."""
        start = pk.ip_offset(frame, linktype)
        pkt = pk.decode(memoryview(frame)[start:], headers_only=True)
        size = min(pkt.payload_off + min(self._answer_bytes, pkt.payload_len), MAX_ANSWER_BYTES)
        record = bytes(pkt.buf[:size])
        batch = self._answer_batches.get(owner)
        if batch is None:
            batch = self._answer_batches[owner] = [now + BATCH_DELAY, [], 0]
        batch[1].append(record)
        batch[2] += len(record)
        if len(batch[1]) >= wire.ANSWERS_MAX_RECORDS or batch[2] >= ANSWER_BATCH_BYTES:
            self._flush_answers(owner)

    def flush_due(self, now: float) -> None:
        """Send every batch whose first record has waited BATCH_DELAY."""
        for batches, flush in ((self._batches, self._flush), (self._answer_batches, self._flush_answers)):
            while batches:
                owner, batch = next(iter(batches.items()))
                if batch[0] > now:
                    break
                flush(owner)

    def flush_all(self) -> None:
        for owner in list(self._batches):
            self._flush(owner)
        for owner in list(self._answer_batches):
            self._flush_answers(owner)

    def _flush_answers(self, owner: bytes) -> None:
        _due, records, size = self._answer_batches.pop(owner)
        if self._send(owner, wire.encode_answers(records)):
            self.counts["answer_packs"] += 1
            self.counts["answer_records"] += len(records)
            self.counts["answer_bytes"] += size
        else:
            self.counts["answer_send_drops"] += 1
            self.counts["answer_drops"] += len(records)

    def _flush(self, owner: bytes) -> None:
        _due, records = self._batches.pop(owner)
        if self._send(owner, wire.encode_responses(records)):
            self.counts["resp_packs"] += 1
            self.counts["resp_records"] += len(records)
        else:
            self.counts["send_drops"] += 1
            self.counts["records_dropped"] += len(records)

    # -- sending

    def _send(self, routing_id: bytes, message: bytes) -> bool:
        """Non-blocking send; False if the owner's queue is full or the owner is gone."""
        try:
            self.socket.send_multipart((routing_id, message), zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                return False
            raise

    def _send_control(self, routing_id: bytes, message: bytes) -> None:
        if not self._send(routing_id, message):
            self.counts["control_unsent"] += 1

    # -- time

    def tick(self, now: float) -> None:
        """Once a second: expire routes, heartbeat live owners, forget silent ones, stats."""
        self._next_tick = now + TICK
        self.routes.expire(now)
        self._log_window_ends(now)
        heartbeat = wire.encode_heartbeat(time.time())
        for routing_id, owner in list(self.owners.items()):
            if now - owner.last_seen >= OWNER_SILENCE:
                self._forget_silent(routing_id, owner, now)
            else:
                self._send_control(routing_id, heartbeat)
        if self.publisher is not None:
            self.publisher.maybe_publish(now, self.stats)
        if now >= self._next_stats:
            self._next_stats = now + self.config.stats_every
            log.info("%s", self.stats_line())

    # -- shutdown and numbers

    def close(self, reason: str = "intercept stopping") -> None:
        """Flush what is batched, say BYE to every owner, close the socket and the captures."""
        self.flush_all()
        bye = wire.encode_bye(reason)
        for routing_id in list(self.owners):
            self._send_control(routing_id, bye)
        if self.gate is not None:
            self.gate.close()
        self.socket.close(linger=CLOSE_LINGER_MS)
        if self.publisher is not None:
            self.publisher.publish(self.stats())
            self.publisher.close()
        for _device, handle, _linktype in self._captures:
            self._close_capture(handle)
        self._captures.clear()

    def _close_capture(self, handle) -> None:
        self._closed_pcap_drops += _kernel_drops(handle)
        handle.close()

    def stats(self) -> dict[str, int]:
        """Every counter of the worker and its route table, and the capture's kernel drops."""
        numbers = {**self.counts, **self.routes.counters(), "owners": len(self.owners)}
        gate = self.gate.counts if self.gate is not None else dict.fromkeys(_GATE_COUNTS, 0)
        numbers.update((f"curve_{name}", gate[name]) for name in _GATE_COUNTS)
        numbers["pcap_dropped"] = self._closed_pcap_drops + sum(
            _kernel_drops(handle) for _device, handle, _linktype in self._captures)
        numbers["watch_refused"] = sum(numbers[name] for name in _WATCH_REFUSALS)
        numbers["loop_busy_percent"] = self.loop_meter.sample(self.clock())
        return numbers

    def stats_line(self) -> str:
        """The periodic summary, in the C tool's spirit (resp packs, all, ...)."""
        s = self.stats()
        fields = (("resp_packs", s["resp_packs"]), ("all", s["all"]), ("sent", s["resp_records"]),
                  ("routes", s["routes"]), ("registers", s["registered"]),
                  ("unroutable", s["unroutable"]), ("held", s["held"]), ("released", s["released"]),
                  ("hold_expired", s["held_expired"]), ("hold_refused", s["held_refused"]),
                  ("send_drops", s["send_drops"]), ("records_dropped", s["records_dropped"]),
                  ("malformed", s["malformed"]), ("peer_errors", s["peer_errors"]),
                  ("before_hello", s["before_hello"]), ("register_taken", s["register_taken"]),
                  ("over_quota", s["register_over_quota"]), ("table_full", s["register_table_full"]),
                  ("owners", s["owners"]), ("owners_refused", s["owners_refused"]),
                  ("watched", s["watched_routes"]), ("answers", s["answer_records"]),
                  ("answer_bytes", s["answer_bytes"]), ("watch_refused", s["watch_refused"]),
                  ("answer_drops", s["answer_drops"]),
                  ("refused_key", s["curve_refused_key"]), ("refused_plain", s["curve_refused_plain"]),
                  ("refused_handshake", s["curve_refused_handshake"]),
                  ("pcap_dropped", s["pcap_dropped"]))
        return "stats: " + " ".join(f"{name}={value}" for name, value in fields)


def _bytes(frame) -> bytes:
    return frame if isinstance(frame, bytes) else frame.bytes


def _peer_address(frame) -> str | None:
    """The remote address of the connection a frame came over (tcp:// only), if known. The
    ROUTER is dual-stack, so IPv4 peers come as IPv4-mapped IPv6 (::ffff:a.b.c.d): shown
    as the IPv4 address they are."""
    try:
        address = frame.get("Peer-Address")
    except (AttributeError, zmq.ZMQError):
        return None
    if address and address.startswith("::ffff:") and "." in address:
        return address[len("::ffff:"):]
    return address


def _key_note(frame) -> str:
    """", key NAME.key" for an owner admitted by its CURVE key (the gate's User-Id), else ""."""
    try:
        name = frame.get("User-Id")
    except (AttributeError, zmq.ZMQError):
        return ""
    return f", key {wire.printable(name)}" if name else ""


def _endpoint_text(key) -> str:
    """A replayed connection as client -> target, for log lines."""
    client_ip, client_port, target_ip, target_port = key
    client, target = ipaddress.ip_address(client_ip), ipaddress.ip_address(target_ip)
    if client.version == 6:
        return f"[{client}]:{client_port} -> [{target}]:{target_port}"
    return f"{client}:{client_port} -> {target}:{target_port}"


def _kernel_drops(handle) -> int:
    try:
        return int(handle.stats()[1])
    except OSError:
        return 0


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, InterruptedError):
        pass
