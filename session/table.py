"""The session table: every replayed connection of one owner, and one heap of deadlines.

Pure like the engine: the owner's I/O loop feeds it captured client packets and response
headers with ``now``, sends what ``take_packets`` returns, and sleeps until
``next_deadline``. The table decides which captured packet starts a session, which one
belongs to a new connection on a reused 4-tuple, and which response belongs to which
session; it frees finished sessions and refuses new ones beyond its bound, counting both.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Callable, Final

from tcpcopy.capture import packet as pk
from tcpcopy.session.engine import (BufferBudget, Dropped, Endpoint, Session, SessionConfig, SessionStats,
                                    should_start_session)
from tcpcopy.session.ports import PortAllocator

# Segments that may be sent to the target as captured: data, SYN and FIN. Pure ACKs and
# RSTs are never replayed byte for byte (the engine builds its own).
_REPLAYED_CONTROL: Final = pk.SYN | pk.FIN

FlowKey = tuple  # (src, sport, dst, dport) of a captured client packet
# The replayed endpoints of a new flow at a time, one per copy (-n); [] when it is not copied.
EndpointsFor = Callable[[pk.Packet, float], "list[Endpoint]"]


@dataclass(frozen=True, slots=True)
class SessionStarted:
    at: float
    endpoint: Endpoint
    flow: FlowKey = field(default=(), compare=False)   # the captured connection it copies


@dataclass(frozen=True, slots=True)
class SessionFreed:
    at: float
    endpoint: Endpoint


@dataclass(slots=True)
class TableStats:
    sessions_started: int = 0
    sessions_freed: int = 0
    sessions_refused: int = 0        # the table was full
    sessions_superseded: int = 0     # the client reused a 4-tuple
    sessions_left_closing: int = 0   # ... while a session replayed its close: it finished alone
    client_packets_ignored: int = 0  # no session and none to start (or not mapped)
    checksums_completed: int = 0     # captured with a partial checksum (offload), completed
    responses_unroutable: int = 0    # no session for the response's endpoint
    flows_skipped: int = 0           # connections whose rest is skipped after their session ended abnormally
    packets_skipped: int = 0         # ... the captured packets skipped so
    skipped_flows_forgotten: int = 0  # skip entries evicted at the bound (their rest may start a session)
    connections_shed: int = 0        # new connections skipped whole while the owner was behind
                                     # (live sessions shed end as outcome dropped:shed)


# Ends that a new connection on the 4-tuple or the owner decided; the client connection
# itself did not end abnormally, so nothing of it is skipped.
_NOT_SKIPPED: Final = frozenset(("superseded", "shutdown"))
SHED: Final = "shed"   # the drop reason of a live session shed under overload


class SessionTable:
    def __init__(self, config: SessionConfig, endpoints_for: EndpointsFor,
                 max_sessions: int = 100_000, stats: SessionStats | None = None,
                 ports: PortAllocator | None = None, budget: BufferBudget | None = None):
        self.config = config
        self.stats = stats or SessionStats()
        self.table_stats = TableStats()
        self.budget = budget or BufferBudget()
        self.max_sessions = max_sessions
        # Client connections whose replay ended abnormally before the client was done: the
        # rest of each is skipped up to its FIN, RST or a new SYN, never joined mid-stream
        # as a new session (that would feed, say, the middle of an upload to the target as
        # a request). Keyed by pk.raw_flow_key, so an owner can skip a packet before it
        # decodes it. Insertion-ordered and bounded: the oldest entry goes first.
        self._skipping: dict[bytes, None] = {}
        # Packets skipped per connection since the owner last asked (``take_skip_hits``):
        # which connections are busy enough to be worth skipping in the kernel instead.
        self._skip_hits: dict[bytes, int] = {}
        self.refuse_new = False   # overload: connections that would start a session are shed
        self._endpoints_for = endpoints_for
        self.ports = ports or PortAllocator()
        self._by_flow: dict[FlowKey, list[Session]] = {}   # one session per copy
        self._by_endpoint: dict[tuple, tuple[FlowKey, Session]] = {}
        self._heap: list[tuple[float, int, FlowKey, Session]] = []
        self._scheduled: dict[int, float] = {}   # id(session) -> earliest deadline in heap
        self._tiebreak = 0
        self._touched: list[Session] = []
        self._events: list = []

    def __len__(self) -> int:
        return len(self._by_endpoint)

    def live(self) -> int:
        """Sessions not over yet (the table also holds lingering ones): O(sessions)."""
        return sum(1 for _flow, session in self._by_endpoint.values() if not session.over)

    def sessions(self):
        return (entry[1] for entry in self._by_endpoint.values())

    # ------------------------------------------------------------------ inputs

    def client_packet(self, pkt: pk.Packet, now: float) -> list[Session]:
        """Feed a captured client packet to every copy of its flow (starting them if the
        packet begins a session); returns the sessions it went to."""
        if (pkt.payload_len or pkt.flags & _REPLAYED_CONTROL) and pk.repair_checksums(pkt):
            self.table_stats.checksums_completed += 1
        key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        if self._skipping and self._skipped(pk.flow_key_bytes(*key), pkt.flags):
            return []
        sessions = self._by_flow.get(key)
        if sessions:
            # A copy still running judges: after one copy's target ended it, in-order data
            # is not a new connection (the copies that ended ignore it).
            judge = sessions[0]
            if judge.over and len(sessions) > 1:
                judge = next((s for s in sessions if not s.over), judge)
            if judge.superseded_by(pkt):
                self._supersede(key, sessions, now)
                sessions = None
        if not sessions:
            sessions = self._start(key, pkt, now)
            if not sessions:
                self.table_stats.client_packets_ignored += 1
                return []
        # Each engine rewrites its packet in place: every copy but the last gets its own.
        for session in sessions[:-1]:
            session.handle_client(pkt.copy(), now)
            self._after(session, now)
        session = sessions[-1]
        session.handle_client(pkt, now)
        self._after(session, now)
        return sessions

    def response(self, pkt: pk.Packet, now: float) -> Session | None:
        entry = self._by_endpoint.get((pkt.dst, pkt.dport, pkt.src, pkt.sport))
        if entry is None:
            self.table_stats.responses_unroutable += 1
            return None
        session = entry[1]
        session.handle_response(pkt, now)
        self._after(session, now)
        return session

    def run_timers(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, key, session = heapq.heappop(heap)
            if self._scheduled.get(id(session)) != deadline or not self._holds(session):
                continue  # a stale entry: the session moved its deadline or is gone
            del self._scheduled[id(session)]
            session.handle_timer(now)
            self._after(session, now)
            if session.finished:
                self._free(key, session, now)

    def shed(self, count: int, now: float) -> list[bytes]:
        """Overload: end ``count`` live sessions, the youngest first, and skip the rest of
        their connections. Returns the flow keys (``pk.flow_key_bytes``) of those shed."""
        victims: list[Session] = []
        for _flow, session in reversed(self._by_endpoint.values()):
            if len(victims) >= count:
                break
            if not session.over:
                victims.append(session)
        keys = [pk.flow_key_bytes(*self._flow_of(session)) for session in victims]
        for session in victims:
            session.abort(now, SHED)
            self._after(session, now)
        return keys

    def shutdown(self, now: float) -> None:
        """Reset every live session (TCPCopy does the same on exit)."""
        for session in list(self.sessions()):
            session.abort(now, "shutdown")
            self._after(session, now)

    # ------------------------------------------------------------------ outputs

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            deadline, _, key, session = heap[0]
            if self._scheduled.get(id(session)) == deadline and self._holds(session):
                return deadline
            heapq.heappop(heap)
        return None

    def take_packets(self) -> list[bytes]:
        packets: list[bytes] = []
        for session in self._touched:
            packets.extend(session.take_packets())
        self._touched.clear()
        return packets

    def take_packets_by_session(self) -> list[tuple[Session, list[bytes]]]:
        """What ``take_packets`` returns, with the session that sent each (for
        --pcap-failed, which keeps every session's packets)."""
        taken = [(session, session.take_packets()) for session in self._touched]
        self._touched.clear()
        return taken

    def has_events(self) -> bool:
        return bool(self._events)

    def take_events(self) -> list:
        events, self._events = self._events, []
        return events

    # ------------------------------------------------------------------ internals

    def skips(self, ip) -> bool:
        """Whether the raw IP packet ``ip`` belongs to a skipped connection (and is counted
        skipped): the cheap test an owner makes before decoding, since under overload most
        of its input belongs to shed sessions. False for anything it cannot tell cheaply;
        the packet then takes the usual way."""
        if not self._skipping:
            return False
        found = pk.raw_flow_key(ip)
        return found is not None and self._skipped(*found)

    def _skipped(self, key: bytes, flags: int) -> bool:
        """Whether a packet of a skipped connection is skipped. Its FIN or RST is the last
        one skipped; a new SYN (the 4-tuple reused) ends the skipping and is not."""
        if key not in self._skipping:
            return False
        if flags & pk.SYN and not flags & pk.ACK:
            del self._skipping[key]
            return False
        if flags & (pk.FIN | pk.RST):
            del self._skipping[key]
        self.table_stats.packets_skipped += 1
        hits = self._skip_hits
        hits[key] = hits.get(key, 0) + 1
        return True

    @property
    def skipping(self) -> dict:
        """The flow keys (``pk.flow_key_bytes``) of the connections being skipped (read only)."""
        return self._skipping

    def take_skip_hits(self) -> dict[bytes, int]:
        """Packets skipped per connection since the last call."""
        hits, self._skip_hits = self._skip_hits, {}
        return hits

    def _skip_rest_of_flow(self, session: Session) -> None:
        """After an abnormal end: once no copy of the flow is live and the client has not
        finished, skip the rest of the client connection."""
        if session.drop_reason in _NOT_SKIPPED:
            return
        key = self._flow_of(session)
        sessions = self._by_flow.get(key)
        if not sessions:
            return
        if any(not s.over or s.client_done for s in sessions):
            return
        self._skip(key)

    def _skip(self, flow: FlowKey) -> None:
        key = pk.flow_key_bytes(*flow)
        if key in self._skipping:
            return
        if len(self._skipping) >= self.max_sessions:
            del self._skipping[next(iter(self._skipping))]
            self.table_stats.skipped_flows_forgotten += 1
        self._skipping[key] = None
        self.table_stats.flows_skipped += 1

    def _holds(self, session: Session) -> bool:
        """The session is still in the table (a freed one may have stale heap entries)."""
        ep = session.endpoint
        entry = self._by_endpoint.get((ep.client_ip, ep.client_port, ep.target_ip, ep.target_port))
        return entry is not None and entry[1] is session

    def _supersede(self, key: FlowKey, sessions: list[Session], now: float) -> None:
        """The client reused the flow's 4-tuple for a new connection: the flow's sessions
        leave it. One that has every client byte up to the FIN (a loaded owner can see the
        new SYN before the old close was replayed) finishes on its own endpoint, still
        reached by its responses and timers; the others are reset."""
        self.table_stats.sessions_superseded += 1
        del self._by_flow[key]
        for session in sessions:
            if session.client_done and not session.over:
                self.table_stats.sessions_left_closing += 1
                continue
            session.abort(now, "superseded")
            self._after(session, now)
            self._free(key, session, now)

    def _start(self, key: FlowKey, pkt: pk.Packet, now: float) -> list[Session]:
        """A session per copy whose endpoint is free; a copy whose endpoint is busy, or
        beyond max_sessions, is refused and counted."""
        if not should_start_session(pkt, self.config):
            return []
        copies = self._endpoints_for(pkt, now)
        if copies and self.refuse_new:
            self._skip(key)
            self.table_stats.connections_shed += 1
            return []
        sessions = []
        for wanted in copies:
            endpoint = self._allocate(wanted, now)
            if endpoint is None:
                self.table_stats.sessions_refused += 1
                continue
            ep_key = (endpoint.client_ip, endpoint.client_port, endpoint.target_ip, endpoint.target_port)
            session = Session(endpoint, self.config, self.stats, self.budget)
            self._by_endpoint[ep_key] = (key, session)
            self.table_stats.sessions_started += 1
            self._events.append(SessionStarted(now, endpoint, key))
            sessions.append(session)
        if sessions:
            self._by_flow[key] = sessions
        return sessions

    def _allocate(self, wanted: Endpoint, now: float) -> Endpoint | None:
        """The wanted endpoint, or the same with a free port; None when the table is full or
        no port is free (the copy is refused, never given an endpoint in use)."""
        if len(self._by_endpoint) >= self.max_sessions:
            return None
        target = (wanted.target_ip, wanted.target_port)
        port = self.ports.allocate(wanted.client_ip, wanted.client_port, target, now)
        if port is None:
            return None
        if port == wanted.client_port:
            return wanted
        return Endpoint(wanted.client_ip, port, wanted.target_ip, wanted.target_port)

    def _after(self, session: Session, now: float) -> None:
        """Collect what a session produced and (re)schedule its next deadline."""
        if session.outbox:
            self._touched.append(session)
        events = session.take_events()
        if events:
            endpoint = session.endpoint
            self._events.extend((endpoint, event) for event in events)
            if session.drop_reason is not None and type(events[-1]) is Dropped:
                self._skip_rest_of_flow(session)
        deadline = session.next_deadline()
        if deadline is None:
            return
        scheduled = self._scheduled.get(id(session))
        if scheduled is not None and now < scheduled <= deadline:
            return  # an earlier wake-up is already queued; it will reschedule
        self._scheduled[id(session)] = deadline
        self._tiebreak += 1
        key = self._flow_of(session)
        heapq.heappush(self._heap, (deadline, self._tiebreak, key, session))

    def _flow_of(self, session: Session) -> FlowKey:
        ep = session.endpoint
        return self._by_endpoint[(ep.client_ip, ep.client_port, ep.target_ip, ep.target_port)][0]

    def _free(self, key: FlowKey, session: Session, now: float) -> None:
        ep = session.endpoint
        sessions = self._by_flow.get(key)
        if sessions is not None and session in sessions:
            sessions.remove(session)
            if not sessions:
                del self._by_flow[key]
        if self._by_endpoint.pop((ep.client_ip, ep.client_port, ep.target_ip, ep.target_port), None):
            self.ports.release(ep.client_ip, ep.client_port, (ep.target_ip, ep.target_port), now,
                               hold=session.target_closed_first)
        self._scheduled.pop(id(session), None)
        self.table_stats.sessions_freed += 1
        self._events.append(SessionFreed(now, ep))
