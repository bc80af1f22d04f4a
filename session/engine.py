"""The sans-IO session engine: one emulated TCP client per replayed connection.

Theory of operation
===================

The online server's real client talks to the online server; we only *watch* that
conversation (captured client packets) and replay the client's side of it to a target server.
The target answers a client that does not exist: its packets are routed to an assistant host,
captured there by intercept, and their headers are handed back to us (``handle_response``).
With both halves, a ``Session`` behaves like a believable TCP client towards the target:

* **Sequence numbers pass through.** The target sees the real client's ISN and sequence
  numbers; only the ACK field is ours: it acknowledges what the target has actually sent
  (``rcv_nxt``), never what the online server had sent. A session that was first seen in the
  middle of a stream starts with a *fabricated* SYN whose sequence number is the first
  captured byte minus one.
* **The client stream is an ordered queue.** Captured segments are unwrapped to plain
  integers (see ``seqnum``), checked against the next expected byte, held aside when a capture
  gap precedes them, skipped when they are client retransmissions, and queued for the target.
  Sent segments stay queued until the target acknowledges them: the queue is also the
  retransmission queue.
* **Pacing follows the client.** The captured ACK of a content segment says how much the
  online server had sent when the client sent it. A segment whose captured ACK differs from
  the previous content segment's starts a *new request*: the real client had seen a response
  first, so the segment is held until the target's response to the previous request is
  complete (unless ``no_wait``). Segments with the same captured ACK are continuations or
  pipelined requests and go out back to back. A response is complete when the target has sent
  at least as many bytes as the online server had (known from the two captured ACKs), when it
  has gone quiet for a period tied to the measured RTT, or when the target closes.
  The handshake counts as request zero, so a server-first protocol (a greeting before the
  client speaks) waits for the target's greeting instead of deadlocking.
* **The target is a real TCP peer.** Its window (scaled as negotiated) limits what is in
  flight; a zero window pauses sending and a persist probe asks for updates. Data is
  retransmitted on RTO with exponential backoff (RFC 6298) and on three duplicate ACKs; the
  SYN is retransmitted with backoff too. Timestamps are rewritten so the target's PAWS check
  (RFC 7323 §5) never drops a replayed segment; SACK blocks, which describe the online
  server's sequence space, are blanked.
* **Endings are explicit.** FIN and RST from either side end the session; a target that
  closes while captured client data is still unsent gets a RST and a new connection
  (fabricated SYN) that carries on from the first unacknowledged byte. Every abnormal end
  sends a RST so the target is not left holding a half-open connection. A finished session
  lingers briefly to answer late packets, then reports ``finished``.
* **Everything is bounded.** Per-session segment and byte limits, a bounded wait for capture
  gaps, a SYN retry budget, a retransmission budget, a reconnect budget, the session timeout
  (``-t``: the target silent while we wait on it) and the idle keep-alive timeout (``-k``:
  nothing to do for that long). Each end is reported once, with its reason.

The states, the moves between them and the timers are tables in ``session/states.py``,
with their rules at its top; the engine changes state only through them. The client
stream's order (``session/stream.py``) and the RTT estimator (``session/rtt.py``) are small
units of their own.

The engine does no I/O and reads no clock: every input carries ``now`` (seconds, any
monotonic origin), packets to send are collected for ``take_packets``, notable moments for
``take_events``, and ``next_deadline`` tells the owner when to call ``handle_timer``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Final

from tcpcopy.capture import packet as pk
from tcpcopy.session.rtt import RttEstimator
from tcpcopy.session.seqnum import unwrap, wrap, seq_le
from tcpcopy.session.states import (
    CLOSE_TIMER, CONNECTED, CONNECTION_TIMERS, DELACK_TIMER, END, ESTABLISHED, FINISHED,
    GAP_TIMER, IDLE, LINGER, LINGER_OVER, LINGER_TIMER, PERSIST_TIMER, QUIET_TIMER, RECONNECT,
    RECONNECT_TIMER, RTO_TIMER, SEND_SYN, SYN_SENT, SYN_TIMER, SYNACK, TIMER_COUNT, TRANSITIONS,
    WATCHDOG_TIMER, no_transition,
)
from tcpcopy.session.stream import AHEAD, OLD, ClientStream, Segment

MAX_WINDOW_UNSCALED: Final = 65535
# What a buffered segment costs beyond its payload (packet object, buffer, queue entry),
# charged with it so that the byte bounds hold for floods of tiny segments too.
SEGMENT_OVERHEAD: Final = 256
REQUEST_HEAD: Final = 256   # bytes of a request kept in its RequestSent event (what comparing reports)


class BufferBudget:
    """The memory every session of an owner may buffer together, in bytes (payload plus
    SEGMENT_OVERHEAD per segment). Sessions charge and release it as they queue and deliver;
    the session that pushes it past ``limit`` is dropped (MEMORY_BUDGET), which frees its
    share. ``bites`` counts those drops."""

    __slots__ = ("limit", "used", "peak", "bites")

    def __init__(self, limit: int = 1 << 30):
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.bites = 0



@dataclass(frozen=True, slots=True)
class Endpoint:
    """The replayed connection as the target sees it: the client address and port we send
    from (after -c/-n/-f) and the target address and port (from -x)."""

    client_ip: bytes
    client_port: int
    target_ip: bytes
    target_port: int


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Tunables of every session; the command-line flag that sets each is named."""

    fake_syn_mss: int = 1460          # -D: MSS option of fabricated SYNs
    only_full_sessions: bool = False  # -O: replay only sessions whose SYN was captured
    no_wait: bool = False             # -W: never hold a request for the previous response
    session_timeout: float = 600.0    # -t: target silent this long while we wait on it
    keepalive_timeout: float = 720.0  # -k: nothing happening this long on a healthy session
    mtu: int = 1500                   # -M: captured segments above this are split
    max_segments: int = 1 << 20       # per-session buffered client segments
    max_bytes: int = 256 << 20        # per-session buffered bytes (payload + SEGMENT_OVERHEAD each)
    syn_rto: float = 1.0              # first SYN retransmission (RFC 6298 §2.1)
    syn_retries: int = 3
    min_rto: float = 0.2
    max_rto: float = 10.0
    max_retransmits: int = 8          # consecutive RTO expiries before the session is dropped
    delayed_ack: float = 0.02         # ACK at the latest this long after target data
    quiet_min: float = 0.01           # response-complete quiet period: at least this,
    quiet_rtt_factor: float = 2.0     # ... this many smoothed RTTs,
    quiet_max: float = 1.0            # ... at most this
    gap_timeout: float = 3.0          # how long a capture gap may block the stream
    conflict_jump: int = 1 << 24      # a sequence jump this large means a reused 4-tuple
    reconnect_delay: float = 0.01     # pause between the RST and the new SYN of a reconnect
    max_reconnects: int = 3
    close_wait: float = 5.0           # half-closed this long: finish with a RST
    linger: float = 6.0               # answer late packets this long after the end


# ---------------------------------------------------------------------------------------
# Events (past tense, reported through take_events)


@dataclass(frozen=True, slots=True)
class Established:
    at: float
    fabricated: bool  # the SYN was fabricated (mid-stream start or reconnect)


@dataclass(frozen=True, slots=True)
class RequestSent:
    """A new request went to the target. Where each side's answer to it starts: the online
    server's sequence number the client had acknowledged (the captured ACK) and the
    target's (rcv_nxt, unwrapped); ``head``: the request's first bytes (``REQUEST_HEAD``)."""

    at: float
    online_seq: int = field(default=0, compare=False)
    target_seq: int = field(default=0, compare=False)
    head: bytes = field(default=b"", compare=False)


@dataclass(frozen=True, slots=True)
class ResponseCompleted:
    at: float
    response_bytes: int


@dataclass(frozen=True, slots=True)
class Reconnecting:
    at: float


@dataclass(frozen=True, slots=True)
class Closed:
    """The session ended with every captured client byte delivered."""

    at: float
    reason: str


@dataclass(frozen=True, slots=True)
class Dropped:
    """The session ended abnormally; captured client data may not have reached the target."""

    at: float
    reason: str


# Drop reasons, also the keys of SessionStats.dropped.
SYN_TIMEOUT: Final = "syn_timeout"
TARGET_REFUSED: Final = "target_refused"
TARGET_TIMEOUT: Final = "target_timeout"
RETRANSMIT_LIMIT: Final = "retransmit_limit"
RECONNECT_LIMIT: Final = "reconnect_limit"
CAPTURE_GAP: Final = "capture_gap"
BUFFER_FULL: Final = "buffer_full"
MEMORY_BUDGET: Final = "memory_budget"
# Close reasons.
COMPLETED: Final = "completed"
CLIENT_RESET: Final = "client_reset"
TARGET_RESET: Final = "target_reset"
IDLE_TIMEOUT: Final = "idle_timeout"


@dataclass(slots=True)
class SessionStats:
    """Counters shared by every session of one owner (TCPCopy's notice-line figures)."""

    client_packets: int = 0
    client_content_packets: int = 0
    client_syns: int = 0
    client_retransmits_skipped: int = 0
    segments_split: int = 0
    packets_sent: int = 0
    content_packets_sent: int = 0
    syns_sent: int = 0
    fabricated_syns: int = 0
    syn_retransmits: int = 0
    fins_sent: int = 0
    resets_sent: int = 0
    retransmits: int = 0
    fast_retransmits: int = 0
    window_probes: int = 0
    reconnects: int = 0
    challenge_acks: int = 0
    responses: int = 0
    responses_with_payload: int = 0
    response_fins: int = 0
    response_resets: int = 0
    established: int = 0
    requests_sent: int = 0
    responses_completed: int = 0
    closed: dict = field(default_factory=dict)
    dropped: dict = field(default_factory=dict)


def should_start_session(pkt: pk.Packet, config: SessionConfig) -> bool:
    """Whether a captured client packet with no session yet begins one.

    A SYN always does. A segment with payload does unless only full sessions are wanted
    (``-O``): the session is joined mid-stream with a fabricated SYN. Pure ACKs, FINs and
    RSTs of connections we never saw start nothing.
    """
    flags = pkt.flags
    if flags & pk.SYN:
        return not flags & pk.ACK
    if flags & pk.RST:
        return False
    return pkt.payload_len > 0 and not config.only_full_sessions


class Session:
    """One replayed connection. See the module docstring for how it works."""

    def __init__(self, endpoint: Endpoint, config: SessionConfig, stats: SessionStats,
                 budget: BufferBudget | None = None):
        self.endpoint = endpoint
        self.config = config
        self.stats = stats
        self.budget = budget if budget is not None else BufferBudget(1 << 62)
        self.drop_reason: str | None = None        # why the session ended abnormally
        self.state = IDLE                          # changed only by _enter (session/states.py)
        self.outbox: list[bytes] = []             # packets to send, oldest first (take_packets)
        self._events: list = []
        self._ip_id = 0
        self._ipv6 = len(endpoint.client_ip) == 16
        # Client (captured) side, unwrapped.
        self._client_isn: int | None = None      # raw 32-bit ISN of a captured SYN
        self._syn: pk.Packet | None = None       # the captured SYN, kept for retransmission
        self._fabricated = False                 # our SYN is fabricated
        self._stream = ClientStream()            # the client's bytes in order, gaps held
        self._unsent: deque[Segment] = deque()
        self._unacked: deque[Segment] = deque()
        self._buffered_bytes = 0
        self._handshake_ack: int | None = None   # captured ACK of the client's third packet
        self._client_window = MAX_WINDOW_UNSCALED
        self._client_wscale: int | None = None
        self._client_rst = False                 # the client reset; send it when allowed
        self._client_fin = False                 # the client's FIN is queued (in order)
        self._last_tsval: int | None = None      # highest TSval sent (kept monotonic)
        # Our sending side (client sequence space, unwrapped).
        self._iss = 0                            # sequence number of our SYN
        self._snd_una = 0
        self._snd_nxt = 0
        self._snd_wnd = 0
        self._fin_sent = False
        self._dupacks = 0
        self._fast_retransmitted = False
        # Target side (target sequence space, unwrapped).
        self._rcv_nxt = 0
        self._target_wscale = 0
        self._window_forced = False              # client windows cannot be passed through
        self._ts_ok = False                      # timestamps negotiated (RFC 7323 §3.2)
        self._ts_recent = 0
        self._target_fin = False
        self._target_fin_first = False
        self._unacked_responses = 0
        # Request / response pacing.
        self._awaiting_response = False
        self._request_ack: int | None = None     # captured ACK of the last request sent
        self._response_mark = 0                  # rcv_nxt when that request went out
        self._content_sent = False               # on the current connection
        self._rtt = RttEstimator(config.syn_rto, config.min_rto, config.max_rto)
        self._syn_sent_at = 0.0
        self._synchronized = False               # the current connection's SYN-ACK came
        self._ack_packet: pk.Packet | None = None  # the last pure ACK, patched for the next
        self._syn_attempts = 0
        self._retransmit_count = 0
        self._reconnects = 0
        # Liveness.
        self._last_response_at: float | None = None
        self._last_activity_at = 0.0
        self._late_packets = 0
        # One deadline per timer of session/states.py (absolute, None when unarmed).
        self._deadlines: list[float | None] = [None] * TIMER_COUNT

    # ------------------------------------------------------------------ public interface

    @property
    def finished(self) -> bool:
        """The session is over and its linger time has passed: the owner may free it."""
        return self.state == FINISHED

    @property
    def target_closed_first(self) -> bool:
        """The target sent its FIN before ours: it keeps the 4-tuple in TIME_WAIT."""
        return self._target_fin_first

    @property
    def over(self) -> bool:
        """The session has ended (it may still be lingering)."""
        return self.state in (LINGER, FINISHED)

    @property
    def client_done(self) -> bool:
        """Every client byte of this connection is in hand, up to its FIN or RST: the
        session can finish without another captured packet."""
        return self._client_fin or self._client_rst

    def take_packets(self) -> list[bytes]:
        """IP packets to send to the target, oldest first."""
        packets, self.outbox = self.outbox, []
        return packets

    def take_events(self) -> list:
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` must be called next (None: nothing pending)."""
        earliest = None
        for deadline in self._deadlines:
            if deadline is not None and (earliest is None or deadline < earliest):
                earliest = deadline
        return earliest

    def deadline(self, timer: int) -> float | None:
        """The deadline of one timer of session/states.py (None: not armed)."""
        return self._deadlines[timer]

    def superseded_by(self, pkt: pk.Packet) -> bool:
        """Whether a captured client packet belongs to a new connection on this 4-tuple.

        A SYN with another ISN, a SYN after the session ended, or a sequence number far from
        anything this connection could send means the client reused the 4-tuple: the owner
        aborts this session and starts a new one with the packet.
        """
        if pkt.flags & pk.SYN:
            if self.over:
                return True
            if self._client_isn is None:
                return self._stream.next_expected is not None  # a SYN for a session joined mid-stream
            return pkt.seq != self._client_isn
        expected = self._stream.next_expected
        if expected is None or pkt.payload_len == 0:
            return False  # only data can show a new connection; a stray ACK or RST cannot
        if self.over:
            return unwrap(pkt.seq, expected) >= expected
        distance = abs(unwrap(pkt.seq, expected) - expected)
        return distance > self.config.conflict_jump

    def handle_client(self, pkt: pk.Packet, now: float) -> None:
        """A client packet captured on the online server (addresses as captured)."""
        if self.over:
            return
        self._client_packet(pkt, now)
        if not self.over:
            self._arm_watchdog()

    def handle_response(self, pkt: pk.Packet, now: float) -> None:
        """Headers of a packet the target sent to our client address (from intercept)."""
        self.stats.responses += 1
        if pkt.payload_len:
            self.stats.responses_with_payload += 1
        if self.state == FINISHED:
            return
        if self.state == LINGER:
            self._late_response(pkt)
            return
        self._last_response_at = now
        self._last_activity_at = now
        if self.state == SYN_SENT:
            self._response_in_syn_sent(pkt, now)
        elif self.state == ESTABLISHED:
            self._response_established(pkt, now)
        # IDLE and RECONNECTING: nothing of ours is on the wire; a stray answer is ignored.
        if not self.over:
            self._arm_watchdog()

    def handle_timer(self, now: float) -> None:
        """Run every timer whose deadline has passed."""
        linger = self._deadlines[LINGER_TIMER]
        if linger is not None and now >= linger:
            self._deadlines[LINGER_TIMER] = None
            self._enter(LINGER_OVER)
            return
        if self.over:
            return
        self._run_timers(now)
        if not self.over:
            self._arm_watchdog()
            watchdog = self._deadlines[WATCHDOG_TIMER]
            if watchdog is not None and now >= watchdog:
                self._deadlines[WATCHDOG_TIMER] = None
                self._watchdog(now)  # a wait that just ended left -k already expired

    def abort(self, now: float, reason: str) -> None:
        """End the session from outside (shutdown, 4-tuple reuse, table eviction)."""
        if not self.over:
            self._drop(now, reason)

    def _enter(self, trigger: str) -> None:
        """The one place the state changes: by TRANSITIONS in session/states.py (next_state,
        inlined: it runs a few times in every session)."""
        new = TRANSITIONS.get((self.state, trigger))
        if new is None:
            no_transition(self.state, trigger)
        self.state = new

    # ------------------------------------------------------------------ client side

    def _client_packet(self, pkt: pk.Packet, now: float) -> None:
        self.stats.client_packets += 1
        self._last_activity_at = now
        if self._last_response_at is None or not self._waiting_on_target():
            # -t counts the target's silence while we wait on it: from the start of the
            # session, or from this packet if it ends an idle time (which is -k's).
            self._last_response_at = now
        flags = pkt.flags
        if flags & pk.SYN:
            self._client_syn(pkt, now)
            return
        if self._stream.next_expected is None:
            if pkt.payload_len > 0 and not flags & pk.RST and not self.config.only_full_sessions:
                self._start_mid_stream(pkt, now)
            else:
                return
        if flags & pk.RST:
            self._client_rst = True
            self._pump(now)
            return
        if pkt.payload_len == 0 and not flags & pk.FIN:
            self._client_pure_ack(pkt)
            return
        self.stats.client_content_packets += pkt.payload_len > 0
        if len(pkt.buf) > self.config.mtu:
            pieces = pk.split(pkt, self.config.mtu)
            self.stats.segments_split += len(pieces) - 1
        else:
            pieces = [pkt]
        for piece in pieces:
            self._accept_client_segment(piece, now)
            if self.over:
                return
        self._pump(now)

    def _run_timers(self, now: float) -> None:
        """Every expired timer but the linger timer, in the order of session/states.py;
        each is disarmed before its handler runs (which re-arms it if it must)."""
        deadlines = self._deadlines
        for timer in range(LINGER_TIMER):
            deadline = deadlines[timer]
            if deadline is not None and now >= deadline:
                deadlines[timer] = None
                self._fire(timer, now)

    def _fire(self, timer: int, now: float) -> None:
        """What each timer does when it expires (TIMERS in session/states.py)."""
        if timer == SYN_TIMER:
            self._syn_timer(now)
        elif timer == RECONNECT_TIMER:
            self._send_fabricated_syn(now)
        elif timer == RTO_TIMER:
            self._rto_timer(now)
        elif timer == QUIET_TIMER:
            self._response_complete(now)
            self._pump(now)  # a request sent now carries the ACK the delayed ACK would
        elif timer == DELACK_TIMER:
            self._send_ack()
        elif timer == PERSIST_TIMER:
            self._persist_timer(now)
        elif timer == GAP_TIMER:
            if self._stream.held:
                self._drop(now, CAPTURE_GAP)
        elif timer == CLOSE_TIMER:
            self._send_rst()
            self._close(now, COMPLETED)
        elif timer == WATCHDOG_TIMER:
            self._watchdog(now)

    def _client_syn(self, pkt: pk.Packet, now: float) -> None:
        self.stats.client_syns += 1
        if self._client_isn is not None or self._stream.next_expected is not None:
            if pkt.seq == self._client_isn:
                self.stats.client_retransmits_skipped += 1  # we retransmit SYNs ourselves
            return
        self._client_isn = pkt.seq
        self._client_wscale = pkt.wscale
        self._client_window = pkt.window
        self._iss = pkt.seq
        self._stream.next_expected = pkt.seq + 1
        self._rewrite_addresses(pkt)
        self._syn = pkt
        self._fabricated = False
        self._send_syn(now)

    def _start_mid_stream(self, pkt: pk.Packet, now: float) -> None:
        """Join a connection whose SYN we never saw (RFC 9293 needs one: we fabricate it)."""
        self._stream.next_expected = pkt.seq
        self._iss = pkt.seq - 1
        self._fabricated = True
        self._send_fabricated_syn(now)

    def _client_pure_ack(self, pkt: pk.Packet) -> None:
        """Captured pure ACKs are not replayed (we acknowledge the target ourselves); the
        first one after the SYN records the ACK the client's first request is compared with."""
        if self._handshake_ack is None and self._client_isn is not None:
            self._handshake_ack = pkt.ack
            if self._request_ack is None and self.state == ESTABLISHED and not self._fabricated:
                self._request_ack = pkt.ack
        self._client_window = pkt.window

    def _accept_client_segment(self, pkt: pk.Packet, now: float) -> None:
        stream = self._stream
        seg = Segment(pkt, stream.unwrap(pkt.seq))
        place = stream.place(seg)
        if place == AHEAD:
            self._hold_behind_gap(seg, now)
            return
        if place == OLD:
            self.stats.client_retransmits_skipped += 1
            self._take_fresh_copy(seg)
            return
        # A partial overlap is queued whole: the target trims what it already has
        # (RFC 9293 §3.10.7.4), so the new bytes need no copy.
        self._queue(seg)
        if stream.held:
            self._release_held()
        self._check_bounds(now)

    def _take_fresh_copy(self, fresh: Segment) -> None:
        """A client retransmission of a segment still waiting for the target's ACK replaces
        the queued copy. The client retransmits when the online server did not take the
        segment, so the first capture may have been damaged on the wire (its checksum is
        not verified), and the target would drop every resend of it."""
        for queue in (self._unacked, self._unsent):
            for seg in queue:
                if seg.start == fresh.start and seg.data_len == fresh.data_len and seg.fin == fresh.fin:
                    self._rewrite_addresses(fresh.pkt)
                    if fresh.pkt.sack_blocks:
                        fresh.pkt.blank_sack()
                    seg.pkt = fresh.pkt
                    return

    def _queue(self, seg: Segment) -> None:
        pkt = seg.pkt
        self._rewrite_addresses(pkt)
        if pkt.sack_blocks:
            pkt.blank_sack()  # they describe the online server's sequence space
        self._client_window = pkt.window
        self._unsent.append(seg)
        self._stream.next_expected = seg.end
        self._charge(seg.data_len)
        self._client_fin = self._client_fin or seg.fin

    def _hold_behind_gap(self, seg: Segment, now: float) -> None:
        if self._stream.hold(seg):
            self._charge(seg.data_len)
        if self._deadlines[GAP_TIMER] is None:
            self._deadlines[GAP_TIMER] = now + self.config.gap_timeout
        self._check_bounds(now)

    def _release_held(self) -> None:
        """Move held segments that the stream has now reached into the queue."""
        stream = self._stream
        while True:
            expected = stream.next_expected
            assert expected is not None   # segments are held only behind a known position
            reached = stream.take_reached()
            if not reached:
                return
            for seg in reached:
                self._release(seg.data_len)
                if seg.end > expected:
                    self._queue(seg)
                else:
                    self.stats.client_retransmits_skipped += 1
            if not stream.held:
                self._deadlines[GAP_TIMER] = None

    def _charge(self, data_len: int) -> None:
        cost = data_len + SEGMENT_OVERHEAD
        self._buffered_bytes += cost
        budget = self.budget
        budget.used += cost
        if budget.used > budget.peak:
            budget.peak = budget.used

    def _release(self, data_len: int) -> None:
        cost = data_len + SEGMENT_OVERHEAD
        self._buffered_bytes -= cost
        self.budget.used -= cost

    def _check_bounds(self, now: float) -> bool:
        """Drop the session when its buffers pass their bounds, its own or the owner's
        memory budget; True if it was dropped."""
        segments = len(self._unsent) + len(self._unacked) + len(self._stream.held)
        if segments > self.config.max_segments or self._buffered_bytes > self.config.max_bytes:
            self.abort(now, BUFFER_FULL)
            return True
        if self.budget.used > self.budget.limit:
            self.budget.bites += 1
            self.abort(now, MEMORY_BUDGET)
            return True
        return False

    def _rewrite_addresses(self, pkt: pk.Packet) -> None:
        ep = self.endpoint
        if pkt.src != ep.client_ip:
            pkt.set_src(ep.client_ip)
        if pkt.dst != ep.target_ip:
            pkt.set_dst(ep.target_ip)
        if pkt.sport != ep.client_port:
            pkt.set_sport(ep.client_port)
        if pkt.dport != ep.target_port:
            pkt.set_dport(ep.target_port)

    # ------------------------------------------------------------------ handshake

    def _send_syn(self, now: float) -> None:
        self._enter(SEND_SYN)
        self._synchronized = False
        self._syn_attempts = 0
        self._rtt.restart()
        self._snd_una = self._snd_nxt = self._iss
        self._emit_syn(now)

    def _emit_syn(self, now: float) -> None:
        if self._fabricated:
            syn = pk.build(self.endpoint.client_ip, self.endpoint.target_ip,
                           self.endpoint.client_port, self.endpoint.target_port,
                           wrap(self._iss), 0, pk.SYN, MAX_WINDOW_UNSCALED,
                           options=pk.opt_mss(self.config.fake_syn_mss), ip_id=self._next_ip_id())
            self.outbox.append(syn.to_bytes())
        else:
            assert self._syn is not None   # a SYN not fabricated is the captured one
            self.outbox.append(self._syn.to_bytes())
        self.stats.syns_sent += 1
        self.stats.packets_sent += 1
        self._syn_sent_at = now
        self._snd_nxt = self._iss + 1
        self._deadlines[SYN_TIMER] = now + self._rtt.rto

    def _send_fabricated_syn(self, now: float) -> None:
        self.stats.fabricated_syns += 1
        self._fabricated = True
        self._send_syn(now)

    def _syn_timer(self, now: float) -> None:
        if self._syn_attempts >= self.config.syn_retries:
            self._deadlines[SYN_TIMER] = None
            self._drop(now, SYN_TIMEOUT)  # its RST covers a SYN-ACK lost before intercept
            return
        self._syn_attempts += 1
        self._rtt.back_off()
        self.stats.syn_retransmits += 1
        self._emit_syn(now)

    def _response_in_syn_sent(self, pkt: pk.Packet, now: float) -> None:
        """RFC 9293 §3.10.7.3, the SYN-SENT state."""
        flags = pkt.flags
        acceptable = bool(flags & pk.ACK) and pkt.ack == wrap(self._iss + 1)
        if flags & pk.RST:
            if acceptable:
                self.stats.response_resets += 1
                self._deadlines[SYN_TIMER] = None
                self._drop(now, TARGET_REFUSED, reset=False)
            return
        if flags & pk.ACK and not acceptable:
            # The target holds an older connection on this 4-tuple and answers with a
            # challenge ACK: reset it with the sequence number it expects, then retry.
            self.stats.challenge_acks += 1
            self._send_rst(seq=pkt.ack)
            self._deadlines[SYN_TIMER] = now + self.config.reconnect_delay
            return
        if flags & pk.SYN and acceptable:
            self._established(pkt, now)

    def _established(self, synack: pk.Packet, now: float) -> None:
        self._deadlines[SYN_TIMER] = None
        if self._syn_attempts == 0:
            self._rtt.sample(now - self._syn_sent_at)
        self._rtt.update_rto()
        self._snd_una = self._snd_nxt = self._iss + 1
        self._rcv_nxt = synack.seq + 1
        # Window scaling and timestamps hold when both SYNs carried them (a fabricated SYN
        # carries neither).
        genuine = not self._fabricated
        wscale = synack.wscale if genuine and self._client_wscale is not None else None
        self._target_wscale = min(wscale, 14) if wscale is not None else 0  # RFC 7323 §2.3
        self._window_forced = self._fabricated or (self._client_wscale is not None and wscale is None)
        target_tsval = synack.tsval
        client_tsval = self._syn.tsval if genuine and self._syn is not None else None
        self._ts_ok = target_tsval is not None and client_tsval is not None
        if target_tsval is not None and client_tsval is not None:
            self._ts_recent = target_tsval
            self._last_tsval = client_tsval
        self._snd_wnd = synack.window  # never scaled in a SYN (RFC 7323 §2.2)
        self._dupacks = 0
        self._target_fin = False
        self._enter(SYNACK)
        self._synchronized = True
        self._ack_packet = None                  # this connection's options may differ
        self.stats.established += 1
        self._events.append(Established(now, self._fabricated))
        self._send_ack()
        # The handshake is request zero: a server-first protocol's greeting is its response.
        self._response_mark = self._rcv_nxt
        self._content_sent = False
        if self._fabricated:
            self._awaiting_response = False
            self._request_ack = None
        else:
            self._awaiting_response = True
            self._request_ack = self._handshake_ack
        self._pump(now)

    # ------------------------------------------------------------------ target side

    def _response_established(self, pkt: pk.Packet, now: float) -> None:
        flags = pkt.flags
        if flags & pk.RST:
            self.stats.response_resets += 1
            self._target_reset(now)
            return
        if self._ts_ok and pkt.tsval is not None and seq_le(self._ts_recent, pkt.tsval):
            self._ts_recent = pkt.tsval  # from every segment, not only data (RFC 7323 §4.3)
        if flags & pk.SYN:
            self._send_ack()  # a retransmitted SYN-ACK: our ACK was lost
            return
        if flags & pk.ACK:
            self._process_ack(pkt, now)
        if self.over:
            return
        if pkt.payload_len:
            self._process_response_data(pkt, now)
        elif not flags & pk.FIN and unwrap(pkt.seq, self._rcv_nxt) < self._rcv_nxt:
            # A keep-alive probe (RFC 9293 §3.8.4) or an old duplicate: an unacceptable
            # segment gets an ACK (§3.10.7.4), or the target's keep-alive gives up.
            self._send_ack()
        if flags & pk.FIN:
            self._process_target_fin(pkt, now)
            return
        self._maybe_finish_close(now)
        if self.over:
            return
        self._pump(now)
        if self._unacked_responses >= 2:
            self._send_ack()  # every second segment at once (RFC 9293 §3.8.6.3), unless
            # a request just sent carried the ACK

    def _process_ack(self, pkt: pk.Packet, now: float) -> None:
        ack = unwrap(pkt.ack, self._snd_una)
        window = pkt.window << self._target_wscale
        if ack > self._snd_nxt:
            return  # acknowledges what we never sent: not for this connection
        if ack > self._snd_una:
            self._ack_advanced(ack, now)
            self._snd_wnd = window
            return
        if ack == self._snd_una:
            duplicate = (self._unacked and not pkt.payload_len and not pkt.flags & (pk.FIN | pk.SYN)
                         and window == self._snd_wnd)
            self._snd_wnd = window
            if duplicate:
                self._duplicate_ack(now)
            elif window and self._deadlines[PERSIST_TIMER] is not None:
                self._deadlines[PERSIST_TIMER] = None

    def _ack_advanced(self, ack: int, now: float) -> None:
        self._snd_una = ack
        self._dupacks = 0
        self._fast_retransmitted = False
        self._retransmit_count = 0
        self._deadlines[PERSIST_TIMER] = None
        while self._unacked and self._unacked[0].end <= ack:
            seg = self._unacked.popleft()
            self._release(seg.data_len)
            if not seg.retransmitted and seg.sent_at is not None and seg.end == ack:
                self._rtt.sample(now - seg.sent_at)  # Karn: never from a retransmission
        self._rtt.update_rto()
        self._deadlines[RTO_TIMER] = now + self._rtt.rto if self._unacked else None

    def _duplicate_ack(self, now: float) -> None:
        """Three duplicate ACKs: the segment at snd_una was lost (RFC 5681 §3.2)."""
        self._dupacks += 1
        if self._dupacks >= 3 and not self._fast_retransmitted:
            self._fast_retransmitted = True
            self.stats.fast_retransmits += 1
            self._retransmit_first(now)

    def _process_response_data(self, pkt: pk.Packet, now: float) -> None:
        end = unwrap(pkt.seq, self._rcv_nxt) + pkt.payload_len
        if end <= self._rcv_nxt:
            self._send_ack()  # the target retransmitted: it missed our ACK
            return
        # Everything the target sent is acknowledged, even past a segment that intercept did
        # not see: the replay needs the target's answer to move on, not its bytes.
        self._rcv_nxt = end
        if self._awaiting_response:
            self._deadlines[QUIET_TIMER] = now + self._quiet_period()
        self._unacked_responses += 1
        if self._deadlines[DELACK_TIMER] is None:
            self._deadlines[DELACK_TIMER] = now + self.config.delayed_ack

    def _process_target_fin(self, pkt: pk.Packet, now: float) -> None:
        self.stats.response_fins += 1
        fin_seq = unwrap(pkt.seq, self._rcv_nxt) + pkt.payload_len
        if fin_seq + 1 > self._rcv_nxt:
            self._rcv_nxt = fin_seq + 1
        self._target_fin = True
        # The target keeps TIME_WAIT unless its FIN answered ours: it closed first, or the
        # FINs crossed (simultaneous close, RFC 9293 §3.6: both sides wait).
        answered_ours = self._fin_sent and self._snd_una >= self._snd_nxt
        self._target_fin_first = self._target_fin_first or not answered_ours
        self._send_ack()
        self._response_complete(now)
        if self._fin_sent:
            self._maybe_finish_close(now)
            return
        if self._has_client_data_pending():
            self._reconnect(now, send_reset=True)
            return
        # The target closed first and the client has nothing more to say yet: wait for the
        # client's own FIN (or more data, which reconnects), but not forever.
        self._deadlines[CLOSE_TIMER] = now + self.config.close_wait
        self._pump(now)

    def _target_reset(self, now: float) -> None:
        if self._has_client_data_pending():
            self._reconnect(now, send_reset=False)
        elif self._fin_sent or self._client_rst:
            self._close(now, COMPLETED)
        else:
            self._close(now, TARGET_RESET)

    def _late_response(self, pkt: pk.Packet) -> None:
        """Target packets after the end: re-ACK a retransmitted FIN once, else reset with the
        exact sequence number the target expects (RFC 5961 §3.2 makes anything else a
        challenge)."""
        if pkt.flags & pk.RST:
            return
        self._late_packets += 1
        if pkt.flags & pk.FIN and self._late_packets == 1 and self._target_fin:
            self._send_ack()
        elif pkt.flags & pk.ACK:
            self._send_rst(seq=pkt.ack)

    def _has_client_data_pending(self) -> bool:
        return any(s.data_len for s in self._unacked) or any(s.data_len for s in self._unsent)

    def _reconnect(self, now: float, send_reset: bool) -> None:
        """The target ended the connection with client data undelivered: start a new one
        from the first unacknowledged byte (TCPCopy's reconnect)."""
        if self._reconnects >= self.config.max_reconnects:
            self._drop(now, RECONNECT_LIMIT, reset=send_reset)
            return
        if send_reset:
            self._send_rst()
        self._reconnects += 1
        self._retransmit_count = 0  # a new connection gets a fresh retransmission budget
        self.stats.reconnects += 1
        self._events.append(Reconnecting(now))
        while self._unacked:
            seg = self._unacked.pop()
            seg.retransmitted = True
            self._unsent.appendleft(seg)
        # The new connection starts at the first byte the target has not acknowledged;
        # a partly acknowledged segment is sent whole and the target trims it.
        self._iss = self._snd_una - 1
        self._fin_sent = False
        self._awaiting_response = False
        for timer in CONNECTION_TIMERS:
            self._deadlines[timer] = None
        self._enter(RECONNECT)
        self._deadlines[RECONNECT_TIMER] = now + self.config.reconnect_delay

    # ------------------------------------------------------------------ sending

    def _pump(self, now: float) -> None:
        """Send what the client sent, as far as pacing and the target's window allow."""
        if self.state != ESTABLISHED:
            return
        while self._unsent:
            seg = self._unsent[0]
            if self._starts_new_request(seg):
                if self._awaiting_response and not self.config.no_wait:
                    if not self._response_reached(seg):
                        break
                    self._response_complete(now)
            if not self._window_allows(seg, now):
                break
            self._unsent.popleft()
            self._send_segment(seg, now)
        if not self._unsent and self._client_rst and not self._request_outstanding():
            self._send_rst()
            self._close(now, CLIENT_RESET)

    def _starts_new_request(self, seg: Segment) -> bool:
        """A content segment whose captured ACK moved: the client had seen a response."""
        if seg.data_len == 0 and not seg.fin:
            return False
        return self._request_ack is not None and seg.captured_ack != self._request_ack

    def _response_reached(self, seg: Segment) -> bool:
        """The target has sent at least as much as the online server had when the client
        sent ``seg``: the response is complete, no need to wait for the quiet period."""
        request_ack = self._request_ack
        assert request_ack is not None   # seg starts a new request, so one was sent
        expected = (seg.captured_ack - request_ack) & 0xFFFFFFFF
        return expected < (1 << 31) and self._rcv_nxt - self._response_mark >= expected

    def _window_allows(self, seg: Segment, now: float) -> bool:
        in_flight = self._snd_nxt - self._snd_una
        if self._snd_wnd == 0:
            if self._deadlines[PERSIST_TIMER] is None:
                self._deadlines[PERSIST_TIMER] = now + self._rtt.rto
            return False
        if in_flight and seg.end - self._snd_una > self._snd_wnd:
            return False
        return True

    def _send_segment(self, seg: Segment, now: float) -> None:
        new_request = bool(seg.data_len) and (not self._content_sent or self._starts_new_request(seg))
        self._transmit(seg, now)
        self._snd_nxt = max(self._snd_nxt, seg.end)
        self._unacked.append(seg)
        self.stats.packets_sent += 1
        if seg.data_len:
            self.stats.content_packets_sent += 1
        if seg.fin:
            self._fin_sent = True
            self._deadlines[CLOSE_TIMER] = None
            self.stats.fins_sent += 1
        if seg.data_len or seg.fin:
            if new_request:
                self._content_sent = True
                self.stats.requests_sent += 1
                self._events.append(RequestSent(now, seg.captured_ack, self._rcv_nxt, seg.head(REQUEST_HEAD)))
                self._awaiting_response = True
                self._response_mark = self._rcv_nxt
            self._request_ack = seg.captured_ack
        if self._deadlines[RTO_TIMER] is None:
            self._deadlines[RTO_TIMER] = now + self._rtt.rto

    def _transmit(self, seg: Segment, now: float) -> None:
        """Stamp our view of the connection into a client segment and send it."""
        pkt = seg.pkt
        pkt.set_ack(wrap(self._rcv_nxt))
        if not pkt.flags & pk.ACK:
            pkt.set_flags(pkt.flags | pk.ACK)
        if self._window_forced and pkt.window != MAX_WINDOW_UNSCALED:
            pkt.set_window(MAX_WINDOW_UNSCALED)
        if self._ts_ok and pkt.ts_off is not None:
            pkt.set_timestamps(self._monotonic_tsval(pkt.tsval), self._ts_recent)
        self._unacked_responses = 0
        self._deadlines[DELACK_TIMER] = None
        seg.sent_at = now
        self.outbox.append(pkt.to_bytes())

    def _retransmit_first(self, now: float) -> None:
        if not self._unacked:
            return
        seg = self._unacked[0]
        seg.retransmitted = True
        self.stats.retransmits += 1
        self._transmit(seg, now)

    def _rto_timer(self, now: float) -> None:
        """RFC 6298 §5: retransmit the oldest unacknowledged segment and back off."""
        if not self._unacked:
            self._deadlines[RTO_TIMER] = None
            return
        if self._retransmit_count >= self.config.max_retransmits:
            self._deadlines[RTO_TIMER] = None
            self._drop(now, RETRANSMIT_LIMIT)
            return
        self._retransmit_count += 1
        self._rtt.back_off()
        self._retransmit_first(now)
        self._deadlines[RTO_TIMER] = now + self._rtt.rto

    def _persist_timer(self, now: float) -> None:
        """Zero window: probe with an out-of-window ACK so the target reports its window
        (RFC 9293 §3.8.6.1), backing off like the RTO."""
        if self._snd_wnd:
            self._deadlines[PERSIST_TIMER] = None
            self._pump(now)
            return
        self.stats.window_probes += 1
        self._send_ack(seq=self._snd_una - 1)
        self._rtt.back_off()  # undone when an ACK advances
        self._deadlines[PERSIST_TIMER] = now + self._rtt.rto

    def _send_ack(self, seq: int | None = None) -> None:
        self._unacked_responses = 0
        self._deadlines[DELACK_TIMER] = None
        if self._synchronized:
            self._emit_ack(self._snd_nxt if seq is None else seq)
        else:
            self._emit_control(pk.ACK, self._snd_nxt if seq is None else seq)

    def _emit_ack(self, seq: int) -> None:
        """A pure ACK on an established connection, the packet sent most often: the first
        one is built, later ones patch that packet's fields (RFC 1624 checksum updates)."""
        ack = self._ack_packet
        if ack is None:
            self._ack_packet = self._emit_control(pk.ACK, seq)
            return
        ack.set_seq(wrap(seq))
        ack.set_ack(wrap(self._rcv_nxt))
        ack.set_window(MAX_WINDOW_UNSCALED if self._window_forced else min(self._client_window, 0xFFFF))
        ack.set_ip_id(self._next_ip_id())
        if self._ts_ok:
            ack.set_timestamps(self._monotonic_tsval(None), self._ts_recent)
        self.stats.packets_sent += 1
        self.outbox.append(ack.to_bytes())

    def _send_rst(self, seq: int | None = None) -> None:
        self.stats.resets_sent += 1
        self._emit_control(pk.RST | pk.ACK, self._snd_nxt if seq is None else seq)

    def _emit_control(self, flags: int, seq: int) -> pk.Packet:
        """A packet of our own: ACK, RST or probe, with timestamps when negotiated. The
        packet is returned; what was queued to send is a copy of its bytes."""
        ep = self.endpoint
        options = b""
        if self._ts_ok:
            options = pk.opt_timestamps(self._monotonic_tsval(None), self._ts_recent)
        window = MAX_WINDOW_UNSCALED if self._window_forced else min(self._client_window, 0xFFFF)
        ack = 0
        if not self._synchronized:
            # Nothing of the target's to acknowledge yet, also after the end: a target in
            # SYN-RECEIVED checks a segment's ACK before its RST bit, so a RST with a wrong
            # ACK would leave its half-open connection in place (RFC 9293 §3.10.7.1 and
            # §3.5.3: <SEQ=SEG.ACK><CTL=RST>).
            flags &= ~pk.ACK
        else:
            ack = wrap(self._rcv_nxt)
        pkt = pk.build(ep.client_ip, ep.target_ip, ep.client_port, ep.target_port,
                       wrap(seq), ack, flags, window, options=options, ip_id=self._next_ip_id())
        self.stats.packets_sent += 1
        self.outbox.append(pkt.to_bytes())
        return pkt

    def _monotonic_tsval(self, captured: int | None) -> int:
        """TSval never goes backwards (RFC 7323 §5.3), whatever the captured clock did."""
        last = self._last_tsval
        if captured is None:
            return last if last is not None else 0
        if last is None or seq_le(last, captured):
            self._last_tsval = captured
            return captured
        return last

    def _next_ip_id(self) -> int:
        self._ip_id = (self._ip_id + 1) & 0xFFFF
        return self._ip_id

    # ------------------------------------------------------------------ pacing

    def _response_complete(self, now: float) -> None:
        self._deadlines[QUIET_TIMER] = None
        if not self._awaiting_response:
            return
        self._awaiting_response = False
        self.stats.responses_completed += 1
        self._events.append(ResponseCompleted(now, self._rcv_nxt - self._response_mark))

    def _quiet_period(self) -> float:
        cfg = self.config
        srtt = self._rtt.smoothed_or(cfg.quiet_min)
        return min(max(cfg.quiet_rtt_factor * srtt, cfg.quiet_min), cfg.quiet_max)

    # ------------------------------------------------------------------ endings

    def _maybe_finish_close(self, now: float) -> None:
        """Both FINs sent and acknowledged: a clean close."""
        if self._fin_sent and self._target_fin and self._snd_una >= self._snd_nxt:
            self._close(now, COMPLETED)
        elif self._fin_sent and self._snd_una >= self._snd_nxt and self._deadlines[CLOSE_TIMER] is None:
            self._deadlines[CLOSE_TIMER] = now + self.config.close_wait

    def _watchdog(self, now: float) -> None:
        """-t: the target has been silent too long while we wait on it.
        -k: nothing at all has happened for too long on an otherwise healthy session."""
        cfg = self.config
        waiting = self._waiting_on_target()
        last_response_at = self._last_response_at
        assert last_response_at is not None   # the first client packet set it
        # Compared as the deadline was computed: in floating point, last + t <= now does
        # not imply now - last >= t, and a timer that does not fire would be re-armed at
        # the same past deadline.
        if waiting and now >= last_response_at + cfg.session_timeout:
            self._drop(now, TARGET_TIMEOUT)
            return
        if not waiting and now >= self._last_activity_at + cfg.keepalive_timeout:
            self._send_rst()
            self._close(now, IDLE_TIMEOUT)
            return
        self._arm_watchdog()

    def _waiting_on_target(self) -> bool:
        """Client data is queued, unacknowledged or held, a request awaits its response,
        or the connection is not up yet."""
        return bool(self._unsent or self._unacked or self._stream.held or self._request_outstanding()
                    or self.state != ESTABLISHED)

    def _request_outstanding(self) -> bool:
        return self._awaiting_response and self._content_sent

    def _arm_watchdog(self) -> None:
        """-t counts from the target's last packet while we wait on it, -k from the last
        packet of either side otherwise."""
        if self.state == IDLE:
            self._deadlines[WATCHDOG_TIMER] = None  # nothing started, nothing to time out
        elif self._waiting_on_target():
            assert self._last_response_at is not None   # the first client packet set it
            self._deadlines[WATCHDOG_TIMER] = self._last_response_at + self.config.session_timeout
        else:
            self._deadlines[WATCHDOG_TIMER] = self._last_activity_at + self.config.keepalive_timeout

    def _close(self, now: float, reason: str) -> None:
        self.stats.closed[reason] = self.stats.closed.get(reason, 0) + 1
        self._events.append(Closed(now, reason))
        self._linger(now)

    def _drop(self, now: float, reason: str, reset: bool = True) -> None:
        """An abnormal end. The RST frees the target's socket (TCPCopy leaves half-open
        connections behind when it forgets it)."""
        if reset and self.state in CONNECTED:
            self._send_rst()
        self.stats.dropped[reason] = self.stats.dropped.get(reason, 0) + 1
        self.drop_reason = reason
        self._events.append(Dropped(now, reason))
        self._linger(now)

    def _linger(self, now: float) -> None:
        deadlines = self._deadlines
        for timer in range(TIMER_COUNT):
            deadlines[timer] = None
        self._unsent.clear()
        self._unacked.clear()
        self._stream.held.clear()
        self.budget.used -= self._buffered_bytes
        self._buffered_bytes = 0
        self._enter(END)
        self._deadlines[LINGER_TIMER] = now + self.config.linger
