"""The owner's side of the control channel: one ZeroMQ DEALER per intercept.

Each link says HELLO, registers replayed client endpoints before their SYN leaves,
unregisters them when their session is freed, sends a HEARTBEAT every second and takes back
RESPONSES. A link that has heard nothing for ``DOWN_AFTER`` seconds is down; when it answers
again with a new instance (the intercept restarted and lost its routes), every endpoint still
live is registered again. Registrations are batched per loop turn; a full send queue drops
the batch and counts it, it never blocks the owner. An intercept that hands this owner the
routes of a dead predecessor (HANDOVER) leaves them in ``handed_over`` for the owner to reset.

An owner that compares answers (``comparing``) also WATCHes the endpoints of the sessions it
compares, after their REGISTER in the same turn, and intercept sends those answers whole
(ANSWERS): ``take_answers`` hands them over. Only such an owner takes ANSWERS' larger
messages (ZMQ_MAXMSGSIZE); another ignores ANSWERS, counted.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import zmq

from tcpcopy.cluster import wire
from tcpcopy.cluster.curve import ClientKeys, connect_with_keys
from tcpcopy.cluster.options import InterceptAddress
from tcpcopy.cluster.shard import flow_shard

HEARTBEAT_EVERY = 1.0
DOWN_AFTER = 3.0
SEND_HWM = 10_000
ANSWERS_KEPT = 16_384              # ANSWERS records waiting for take_answers, at most
ANSWER_BYTES_KEPT = 64 << 20       # and their bytes
WATCHED_KEPT = 262_144             # watched endpoints remembered, to watch again after a restart


@dataclass(slots=True)
class LinkStats:
    registered: int = 0
    unregistered: int = 0
    register_drops: int = 0
    responses: int = 0
    malformed_messages: int = 0
    went_down: int = 0
    came_back: int = 0
    handed_over: int = 0
    watched: int = 0           # endpoints sent in WATCH messages
    watch_drops: int = 0       # WATCH endpoints not sent: the send queue was full
    answers: int = 0           # ANSWERS records taken
    answers_dropped: int = 0   # ANSWERS records dropped: take_answers' list was full
    answers_ignored: int = 0   # ANSWERS records of an owner that does not compare


@dataclass(eq=False)
class InterceptLink:
    address: InterceptAddress
    socket: zmq.Socket
    instance: str | None = None
    last_heard: float | None = None
    up: bool = False
    pending_register: list = field(default_factory=list)
    pending_unregister: list = field(default_factory=list)
    pending_watch: list = field(default_factory=list)


class InterceptLinks:
    """All intercept links of one owner."""

    def __init__(self, context: zmq.Context, addresses, identity: str, sharded: bool = False,
                 keys: ClientKeys | None = None, comparing: bool = False):
        """``sharded``: intercept i captures only the answers to replayed endpoints of shard
        i (cluster.shard), so each endpoint is registered with that one intercept; otherwise
        with every intercept, as TCPCopy does. ``keys``: CURVE with every intercept.
        ``comparing``: this owner watches endpoints and takes their whole answers."""
        self.identity = identity
        self.sharded = sharded
        self.comparing = comparing
        self.instance = uuid.uuid4().hex
        self.stats = LinkStats()
        self.links: list[InterceptLink] = []
        self.notices: list[str] = []   # state changes, for the owner's log
        self.handed_over: list = []    # a dead predecessor's endpoints, for the owner to take
        self._answers: list[bytes] = []   # ANSWERS records until take_answers
        self._answer_bytes = 0
        self._watched: set = set()        # endpoints watched and not unregistered since
        takes = wire.OWNER_COMPARING_TAKES_FROM_INTERCEPT if comparing else wire.OWNER_TAKES_FROM_INTERCEPT
        self._last_heartbeat = 0.0
        for address in addresses:
            sock = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.SNDHWM, SEND_HWM)
            sock.setsockopt(zmq.RCVHWM, SEND_HWM)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing for a peer not connected
            sock.setsockopt(zmq.IPV6, 1)       # -s may name the intercept by an IPv6 address
            sock.setsockopt(zmq.ROUTING_ID, wire.new_routing_id())   # no other peer can claim it
            sock.setsockopt(zmq.MAXMSGSIZE, wire.max_frame(takes))
            if keys is not None:
                connect_with_keys(sock, keys)
            sock.connect(address.zmq_endpoint)
            self.links.append(InterceptLink(address, sock))
        self._by_socket = {link.socket: link for link in self.links}

    # ------------------------------------------------------------------ sockets

    def sockets(self) -> list[zmq.Socket]:
        return [link.socket for link in self.links]

    def link_of(self, sock: zmq.Socket) -> InterceptLink:
        return self._by_socket[sock]

    def say_hello(self) -> None:
        hello = wire.encode_hello(wire.Hello("owner", self.identity, self.instance))
        for link in self.links:
            self._send(link, hello)

    def close(self, reason: str) -> None:
        bye = wire.encode_bye(reason)
        for link in self.links:
            self._send(link, bye)
            link.socket.close(linger=200)

    # ------------------------------------------------------------------ registrations

    def register(self, endpoint: wire.EndpointTuple) -> None:
        for link in self._links_for(endpoint):
            link.pending_register.append(endpoint)

    def unregister(self, endpoint: wire.EndpointTuple) -> None:
        self._watched.discard(endpoint)
        for link in self._links_for(endpoint):
            link.pending_unregister.append(endpoint)

    def watch(self, endpoint: wire.EndpointTuple) -> None:
        """Ask for ``endpoint``'s answers whole (ANSWERS), from the intercept(s) it is
        registered with; sent in ``flush`` after that turn's REGISTERs. A restarted intercept
        is told again, with the registrations."""
        if not self.comparing:
            raise ValueError("watch() needs InterceptLinks(comparing=True): only an owner that "
                             "compares takes ANSWERS messages")
        if len(self._watched) < WATCHED_KEPT:
            self._watched.add(endpoint)
        for link in self._links_for(endpoint):
            link.pending_watch.append(endpoint)

    def _links_for(self, endpoint: wire.EndpointTuple) -> list[InterceptLink]:
        if not self.sharded:
            return self.links
        return [self.links[flow_shard(endpoint[0], endpoint[1], len(self.links))]]

    def flush(self) -> None:
        """Send the registrations of this loop turn; REGISTER goes before any SYN is sent.

        UNREGISTER goes first: when a client reuses a 4-tuple, the session that ends and the
        one that starts on the same endpoint fall in one turn, and the other order would
        remove the route just made."""
        for link in self.links:
            if link.pending_unregister:
                batch, link.pending_unregister = link.pending_unregister, []
                for part in wire.endpoint_batches(batch):
                    if self._send(link, wire.encode_unregister(part)):
                        self.stats.unregistered += len(part)
            if link.pending_register:
                batch, link.pending_register = link.pending_register, []
                for part in wire.endpoint_batches(batch):
                    if self._send(link, wire.encode_register(part)):
                        self.stats.registered += len(part)
                    else:
                        self.stats.register_drops += len(part)
            if link.pending_watch:
                batch, link.pending_watch = link.pending_watch, []
                for part in wire.endpoint_batches(batch):
                    if self._send(link, wire.encode_watch(part)):
                        self.stats.watched += len(part)
                    else:
                        self.stats.watch_drops += len(part)

    # ------------------------------------------------------------------ receiving

    def receive(self, sock: zmq.Socket, now: float, live_endpoints) -> list[bytes]:
        """Drain one link; returns the response header records it delivered (whole answers
        of watched endpoints wait for ``take_answers``).

        ``live_endpoints`` is called (no arguments) when a restarted intercept must be told
        every endpoint again.
        """
        link = self._by_socket[sock]
        records: list[bytes] = []
        while True:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return records
            try:
                kind, body = wire.decode(frame)
            except wire.WireError as exc:
                self.stats.malformed_messages += 1
                self.notices.append(f"intercept {link.address}: {exc}")
                continue
            self._heard(link, now)
            if kind == wire.RESPONSES:
                self.stats.responses += len(body)
                records.extend(body)
            elif kind == wire.HELLO:
                self._hello(link, body, now, live_endpoints)
            elif kind == wire.BYE:
                self._down(link, f"intercept {link.address} is shutting down ({body})")
            elif kind == wire.HANDOVER:
                self.stats.handed_over += len(body)
                self.handed_over.extend(body)
            elif kind == wire.ANSWERS:
                self._keep_answers(body)

    def _keep_answers(self, records: list[bytes]) -> None:
        if not self.comparing:
            self.stats.answers_ignored += len(records)
            return
        for record in records:
            if len(self._answers) >= ANSWERS_KEPT or self._answer_bytes + len(record) > ANSWER_BYTES_KEPT:
                self.stats.answers_dropped += 1
                continue
            self._answers.append(record)
            self._answer_bytes += len(record)
            self.stats.answers += 1

    def take_answers(self) -> list[bytes]:
        """The ANSWERS records received since the last call: watched endpoints' answer
        packets, IP header to the end of the payload kept (the IP lengths say what was cut)."""
        answers, self._answers, self._answer_bytes = self._answers, [], 0
        return answers

    def _hello(self, link: InterceptLink, hello: wire.Hello, now: float, live_endpoints) -> None:
        restarted = link.instance is not None and link.instance != hello.instance
        link.instance = hello.instance
        if restarted:   # it takes REGISTERs only from an owner that said HELLO to it
            self._send(link, wire.encode_hello(wire.Hello("owner", self.identity, self.instance)))
            link.pending_register.extend(e for e in live_endpoints() if link in self._links_for(e))
            link.pending_watch.extend(e for e in self._watched if link in self._links_for(e))
            self.notices.append(f"intercept {link.address} restarted: registered "
                                f"{len(link.pending_register)} live endpoints again")

    def _heard(self, link: InterceptLink, now: float) -> None:
        link.last_heard = now
        if not link.up:
            link.up = True
            if link.instance is not None:
                self.stats.came_back += 1
                self.notices.append(f"intercept {link.address} is reachable again")

    def _down(self, link: InterceptLink, why: str) -> None:
        if link.up:
            link.up = False
            self.stats.went_down += 1
            self.notices.append(why)

    # ------------------------------------------------------------------ liveness

    def tick(self, now: float) -> None:
        """Heartbeats out; links silent too long are marked down (and greeted again)."""
        if now - self._last_heartbeat < HEARTBEAT_EVERY:
            return
        self._last_heartbeat = now
        beat = wire.encode_heartbeat(now)
        for link in self.links:
            if link.up and link.last_heard is not None and now - link.last_heard > DOWN_AFTER:
                self._down(link, f"intercept {link.address} unreachable: nothing heard for "
                                 f"{now - link.last_heard:.0f} s (is intercept running, and the port open?)")
            if link.up:
                self._send(link, beat)
            else:
                self._send(link, wire.encode_hello(wire.Hello("owner", self.identity, self.instance)))

    def all_down(self) -> bool:
        return not any(link.up for link in self.links)

    def down_links(self) -> list[InterceptLink]:
        return [link for link in self.links if not link.up]

    def _send(self, link: InterceptLink, frame: bytes) -> bool:
        try:
            link.socket.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True
