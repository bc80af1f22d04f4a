"""Random traces through one session: captured client packets, target responses and timers.

Hypothesis draws each step from the state of a small model of both peers (the client's next
sequence number and the online server's bytes seen, the target's next sequence number, what
the session has sent so far), so most traces are plausible conversations with the occasional
implausible packet: random sequence and acknowledgment numbers, random options, zero
windows, resets at odd moments. After every step the invariants of ``check_step`` hold.

Payload bytes are a function of their client sequence number, so every data byte the
session sends can be checked against what the client really sent at that number.
"""

from __future__ import annotations

import socket
import struct

from hypothesis import HealthCheck, event, given, note, settings, strategies as st

from tcpcopy.capture import packet as pk
from tcpcopy.session.engine import (
    Closed, Dropped, Established, Session, SessionConfig, SessionStats,
)
from tcpcopy.session.seqnum import seq_le
from tests.session.replay import (
    ENDPOINT, ONLINE, ONLINE_PORT, REAL_CLIENT, REAL_CLIENT_PORT,
)

MASK = 0xFFFFFFFF
C_ISN = 0xFFFFFF00   # close to the wrap, so long traces cross it
O_ISN = 7_000
T_ISN = 0xFFFFF000
DELTAS = (0.0, 0.0005, 0.003, 0.01, 0.03, 0.1, 0.25, 1.0, 2.5, 7.0)


def byte_at(seq: int) -> int:
    return (seq * 131 + (seq >> 8) * 7) & 0xFF


def stream(seq: int, n: int) -> bytes:
    """The bytes the client sent at sequence numbers seq .. seq+n-1 (mod 2**32)."""
    return bytes(byte_at((seq + i) & MASK) for i in range(n))


def sack_option(left: int, right: int) -> bytes:
    return bytes((1, 1, 5, 10)) + struct.pack("!II", left & MASK, right & MASK)


class Trace:
    """The session under test, the model of its peers, and the invariants."""

    def __init__(self, config: SessionConfig):
        self.config = config
        self.stats = SessionStats()
        self.session = Session(ENDPOINT, config, self.stats)
        self.now = 0.0
        self.last_timer = None     # the time of the last handle_timer call
        # The client (captured side).
        self.client_next = C_ISN + 1
        self.server_seen = 0       # bytes of the online server's the client acknowledged
        self.client_ts = 100
        # The target.
        self.target_next = T_ISN + 1
        self.target_ts = 9_000
        self.target_ends = set()   # every seq+len(+SYN/FIN) a response reported
        # What the session did.
        self.sent: list[pk.Packet] = []
        self.syn_seqs: list[int] = []
        self.ends: list = []       # Closed and Dropped events
        self.synchronized = False  # the connection's SYN-ACK came and no RST went since
        self.last_ack = None       # the ACK field last sent on this connection

    # -- inputs ---------------------------------------------------------------------

    def client(self, flags: int, seq: int, ack: int, payload: bytes, options: bytes,
               window: int) -> None:
        captured = pk.build(REAL_CLIENT, ONLINE, REAL_CLIENT_PORT, ONLINE_PORT, seq & MASK,
                            ack & MASK, flags, window, options=options, payload=payload)
        note(f"{self.now:.4f} client {captured!r} options={options.hex()}")
        self.run(lambda: self.session.handle_client(pk.decode(captured.to_bytes()), self.now))

    def target(self, flags: int, seq: int, ack: int, data: int, window: int,
               options: bytes) -> None:
        ep = ENDPOINT
        answer = pk.build(ep.target_ip, ep.client_ip, ep.target_port, ep.client_port,
                          seq & MASK, ack & MASK, flags, window, options=options,
                          payload=b"r" * data)
        note(f"{self.now:.4f} target {answer!r} options={options.hex()}")
        self.target_ends.add((seq + data + bool(flags & pk.SYN) + bool(flags & pk.FIN)) & MASK)
        headers = answer.to_bytes()[:answer.payload_off]
        self.run(lambda: self.session.handle_response(pk.decode(headers, headers_only=True),
                                                      self.now),
                 target_reset=bool(flags & pk.RST))

    def timer(self) -> None:
        note(f"{self.now:.4f} timer")
        self.run(lambda: self.session.handle_timer(self.now))
        self.last_timer = self.now
        if not self.session.finished:
            deadline = self.session.next_deadline()
            assert deadline is None or deadline > self.now, (
                "a timer at or before now survived handle_timer", deadline, self.now)

    # -- one step and its invariants ----------------------------------------------------

    def run(self, action, target_reset: bool = False) -> None:
        session = self.session
        state_before = session.state
        peak = [0]
        check_bounds = session._check_bounds

        def watched(now):
            peak[0] = max(peak[0], len(session._unsent) + len(session._unacked)
                          + len(session._stream.held))
            return check_bounds(now)

        try:
            session._check_bounds = watched
        except AttributeError:   # compiled with mypyc: methods cannot be replaced
            peak = None
        ts_before = session._ts_ok
        try:
            action()
        finally:
            if peak is not None:
                del session._check_bounds
        packets = [pk.decode(raw) for raw in session.take_packets()]
        events = session.take_events()
        for p in packets:
            note(f"       sent {p!r}")
        if events:
            note(f"       events {events} -> {session.state}")
        self.check_step(packets, events, None if peak is None else peak[0],
                        ts_before and session._ts_ok, state_before, target_reset)

    def check_step(self, packets, events, peak, ts_negotiated, state_before,
                   target_reset) -> None:
        session, cfg, ep = self.session, self.config, ENDPOINT
        already_ended = bool(self.ends)
        if any(isinstance(e, Established) for e in events):
            self.synchronized = True  # the SYN-ACK of this step: its ACK comes first
            self.last_ack = None
        for p in packets:
            # Well formed, and on the replayed connection's addresses.
            assert pk.tcp_checksum_ok(p) and pk.ipv4_checksum_ok(p), p
            assert (p.src, p.sport, p.dst, p.dport) == (
                ep.client_ip, ep.client_port, ep.target_ip, ep.target_port), p
            # SACK blocks of the online connection never reach the target.
            assert p.sack_blocks == (), p
            # Sequence numbers pass through: the bytes at seq are the client's bytes.
            assert p.payload == stream(p.seq, p.payload_len), p
            # The ACK field acknowledges only what the target reported sending.
            if p.flags & pk.ACK:
                assert p.ack in self.target_ends, (p, sorted(self.target_ends))
            if p.flags & pk.SYN:
                assert not p.flags & pk.ACK and p.payload_len == 0, p
                self.syn_seqs.append(p.seq)
                self.synchronized = False
            elif p.flags & pk.RST:
                self.synchronized = False
            elif p.payload_len or p.flags & pk.FIN:
                # Data and FINs only on a connection the target accepted.
                assert self.synchronized, p
            if p.flags & pk.ACK and self.synchronized:
                # What we acknowledge never moves backwards on one connection.
                if self.last_ack is not None:
                    assert seq_le(self.last_ack, p.ack), (self.last_ack, p)
                self.last_ack = p.ack
            if already_ended:
                # After the end only answers to late packets: RST or a bare ACK.
                assert not p.flags & (pk.SYN | pk.FIN) and p.payload_len == 0, p
        if ts_negotiated:
            # PAWS (RFC 7323 §5): TSval never goes backwards on the connection.
            before = [p.tsval for p in self.sent if p.tsval is not None][-1:]
            stamped = before + [p.tsval for p in packets if p.tsval is not None]
            for earlier, later in zip(stamped, stamped[1:]):
                assert seq_le(earlier, later), stamped
        self.sent.extend(packets)

        ends = [e for e in events if isinstance(e, (Closed, Dropped))]
        self.ends.extend(ends)
        assert len(self.ends) <= 1, self.ends
        if ends:
            assert session.over
            # An abnormal end of a connection that the target may still hold sends a RST
            # (unless the target's own RST ended it).
            if (isinstance(ends[0], Dropped) and state_before in ("syn-sent", "established")
                    and not target_reset):
                assert any(p.flags & pk.RST for p in packets), (ends, packets)

        # Buffers: at most one segment past the bound, and then the session is gone.
        segments = len(session._unsent) + len(session._unacked) + len(session._stream.held)
        assert segments <= cfg.max_segments, segments
        if peak is None:   # not observed (compiled): the bound after the step still holds
            peak = segments
        assert peak <= cfg.max_segments + 1, peak
        assert session._buffered_bytes <= cfg.max_bytes
        if peak > cfg.max_segments:
            assert ends and ends[0].reason in ("buffer_full",), ends
        if session.over:
            assert segments == 0 and session._buffered_bytes == 0

        # Deadlines never lie in the past of the last timer call.
        deadline = session.next_deadline()
        if deadline is not None and self.last_timer is not None:
            assert deadline > self.last_timer, (deadline, self.last_timer)
        if session.finished:
            assert deadline is None

    # -- the end --------------------------------------------------------------------------

    def finish(self) -> None:
        """Shut down and let the linger run out: exactly one end, then nothing."""
        self.run(lambda: self.session.abort(self.now, "shutdown"))
        assert len(self.ends) == 1, self.ends
        event(f"ended: {self.ends[0].reason}")
        stats = self.stats
        for name in ("established", "requests_sent", "responses_completed", "reconnects",
                     "retransmits", "fast_retransmits", "window_probes", "challenge_acks",
                     "segments_split"):
            if getattr(stats, name):
                event(f"reached: {name}")
        for _ in range(3):
            deadline = self.session.next_deadline()
            if deadline is None:
                break
            self.now = max(self.now, deadline)
            self.timer()
        assert self.session.finished
        assert self.session.next_deadline() is None


# ---------------------------------------------------------------------------------------
# Strategies for one step


def pick(draw, **weights: int) -> str:
    """One of the keyword names, drawn with the given weights (shrinks to the first)."""
    n = draw(st.integers(0, sum(weights.values()) - 1))
    for name, weight in weights.items():
        if n < weight:
            return name
        n -= weight
    raise AssertionError("unreachable")


def client_options(draw, trace: Trace) -> bytes:
    kind = pick(draw, none=4, ts=6, ts_back=1, sack=1, sack_ts=1, mss=1, wscale=1, nops=1)
    trace.client_ts += 7
    ts = pk.opt_timestamps(trace.client_ts, trace.client_ts * 2_654_435_761)  # any TSecr
    if kind == "ts":
        return ts
    if kind == "ts_back":
        return pk.opt_timestamps(trace.client_ts - draw(st.integers(1, 1000)), 5)
    if kind in ("sack", "sack_ts"):
        left = O_ISN + draw(st.integers(0, 1 << 20))
        sack = sack_option(left, left + draw(st.integers(1, 5000)))
        return sack + (ts if kind == "sack_ts" else b"")
    if kind == "mss":
        return pk.opt_mss(draw(st.integers(0, 0xFFFF)))
    if kind == "wscale":
        return pk.opt_wscale(draw(st.integers(0, 14)))
    if kind == "nops":
        return b"\x01" * draw(st.integers(1, 12))
    return b""


def client_step(draw, trace: Trace, first: bool = False) -> None:
    if first:
        # An owner creates a session for a packet that starts one: a SYN, or data
        # (a mid-stream start) unless only full sessions are replayed.
        kind = "syn" if trace.config.only_full_sessions else pick(draw, syn=3, data=1)
    else:
        kind = pick(draw, data=12, ack=4, fin=2, rst=1, syn=1)
    options = client_options(draw, trace)
    window = draw(st.sampled_from((29200, 229, 65535, 0)))
    ack_choice = pick(draw, same=6, more=4, random=1)
    if ack_choice == "more":
        # The client saw more of the online server's answer: a new request.
        trace.server_seen += draw(st.sampled_from((100, 1, 1460, 3000)))
    ack = O_ISN + 1 + trace.server_seen
    if ack_choice == "random":
        ack = draw(st.integers(0, MASK))
    if kind == "syn":
        isn = C_ISN if pick(draw, same=6, other=1) == "same" else (C_ISN + 12345) & MASK
        syn_options = draw(st.sampled_from((
            pk.opt_mss(1460) + pk.opt_wscale(7) + pk.opt_sack_permitted()
            + pk.opt_timestamps(trace.client_ts, 0),
            pk.opt_mss(1460), pk.opt_mss(1460) + pk.opt_wscale(7) + pk.opt_sack_permitted(),
            pk.opt_mss(1460) + pk.opt_timestamps(trace.client_ts, 0))))
        trace.client(pk.SYN, isn, 0, b"", syn_options, 29200)
        return
    where = "next" if first else pick(draw, next=12, gap=2, old=2, random=1)
    seq = trace.client_next
    if where == "gap":
        seq += draw(st.integers(1, 4000))
    elif where == "old":
        seq -= draw(st.integers(1, 400))
    elif where == "random":
        seq = draw(st.integers(0, MASK))
    if kind == "data":
        n = draw(st.integers(1, 120)) if pick(draw, small=6, large=1) == "small" else draw(
            st.integers(1200, 3000))
        fin = pick(draw, no=9, yes=1) == "yes"
        flags = pk.PSH | pk.ACK | (pk.FIN if fin else 0)
        trace.client(flags, seq, ack, stream(seq, n), options, window)
        if where == "next":
            trace.client_next += n + fin
        elif where == "gap" and draw(st.booleans()):
            # The missing piece shows up later (reordered capture) or never (loss).
            trace.client_next = seq + n + fin
    elif kind == "fin":
        trace.client(pk.FIN | pk.ACK, seq, ack, b"", options, window)
        if where == "next":
            trace.client_next += 1
    elif kind == "rst":
        trace.client(draw(st.sampled_from((pk.RST | pk.ACK, pk.RST))), seq, ack, b"",
                     b"", window)
    else:
        trace.client(pk.ACK, seq, ack, b"", options, window)


def target_options(draw, trace: Trace) -> bytes:
    kind = pick(draw, ts=6, none=1, ts_back=1)
    trace.target_ts += 13
    if kind == "ts":
        return pk.opt_timestamps(trace.target_ts, trace.client_ts)
    if kind == "ts_back":
        return pk.opt_timestamps(trace.target_ts - draw(st.integers(1, 100)), trace.client_ts)
    return b""


def target_ack(draw, trace: Trace) -> int:
    """An acknowledgment of something the session sent, mostly the latest; sometimes an
    older one (a duplicate ACK), sometimes anything."""
    ends = [(p.seq + p.seg_len) & MASK for p in trace.sent if p.seg_len and not p.flags & pk.RST]
    choice = pick(draw, latest=6, some=3, random=1)
    if choice == "random" or not ends:
        return draw(st.integers(0, MASK))
    if choice == "latest":
        return ends[-1]
    return draw(st.sampled_from(ends[-8:]))


def target_step(draw, trace: Trace) -> None:
    syn_unanswered = bool(trace.sent) and trace.sent[-1].flags & pk.SYN
    if syn_unanswered:
        kind = pick(draw, synack=12, ack=1, data=1, fin=1, rst=1, window0=1)
    else:
        kind = pick(draw, ack=6, data=8, fin=2, rst=1, window0=1, synack=1)
    window = draw(st.sampled_from((65535, 1000, 100, 0)))
    options = target_options(draw, trace)
    where = pick(draw, next=12, old=2, random=1)
    seq = trace.target_next
    if where == "old":
        seq -= draw(st.integers(1, 3000))
    elif where == "random":
        seq = draw(st.integers(0, MASK))
    if kind == "synack":
        isn = T_ISN if pick(draw, same=3, other=1) == "same" else (T_ISN + 777_777) & MASK
        syns = trace.syn_seqs
        right = syns and pick(draw, right=6, wrong=1) == "right"
        ack = (syns[-1] + 1) & MASK if right else draw(st.integers(0, MASK))
        synack_options = draw(st.sampled_from((
            pk.opt_mss(1460) + pk.opt_wscale(7) + pk.opt_sack_permitted()
            + pk.opt_timestamps(trace.target_ts, trace.client_ts),
            b"", pk.opt_mss(1460), pk.opt_mss(1460) + pk.opt_wscale(2),
            pk.opt_mss(1460) + pk.opt_timestamps(trace.target_ts, trace.client_ts))))
        trace.target(pk.SYN | pk.ACK, isn, ack, 0, window, synack_options)
        trace.target_next = isn + 1
        return
    ack = target_ack(draw, trace)
    if kind in ("ack", "window0"):
        trace.target(pk.ACK, seq, ack, 0, 0 if kind == "window0" else window, options)
    elif kind == "data":
        n = draw(st.sampled_from((100, 1, 1448, 1460)))
        trace.target(pk.PSH | pk.ACK, seq, ack, n, window, options)
        if where == "next":
            trace.target_next += n
    elif kind == "fin":
        n = draw(st.sampled_from((0, 50)))
        trace.target(pk.FIN | pk.ACK, seq, ack, n, window, options)
        if where == "next":
            trace.target_next += n + 1
    else:
        trace.target(draw(st.sampled_from((pk.RST | pk.ACK, pk.RST))), seq, ack, 0, 0, b"")


def timer_step(draw, trace: Trace) -> None:
    deadline = trace.session.next_deadline()
    if deadline is not None and draw(st.booleans()):
        trace.now = max(trace.now, deadline)  # exactly at the deadline, as a virtual clock does
    else:
        trace.now += draw(st.sampled_from(DELTAS))
    trace.timer()


configs = st.builds(
    SessionConfig,
    only_full_sessions=st.booleans(),
    no_wait=st.booleans(),
    session_timeout=st.sampled_from((600.0, 2.0)),
    keepalive_timeout=st.sampled_from((720.0, 4.0)),
    mtu=st.sampled_from((1500, 300)),
    max_segments=st.sampled_from((8192, 4)),
    max_bytes=st.sampled_from((32 << 20, 6000)),
    syn_retries=st.integers(0, 3),
    max_retransmits=st.integers(0, 4),
    gap_timeout=st.sampled_from((0.3, 3.0)),
    max_reconnects=st.integers(0, 3),
    close_wait=st.sampled_from((0.5, 5.0)),
    linger=st.sampled_from((0.2, 6.0)),
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs, data=st.data())
def test_random_traces_keep_the_session_invariants(config, data):
    trace = Trace(config)
    client_step(data.draw, trace, first=True)
    steps = data.draw(st.integers(5, 80), label="steps")
    for _ in range(steps):
        kind = pick(data.draw, client=4, target=4, timer=2)
        if kind == "client":
            client_step(data.draw, trace)
        elif kind == "target":
            target_step(data.draw, trace)
        else:
            timer_step(data.draw, trace)
        trace.now += data.draw(st.sampled_from((0.0, 0.0, 0.001, 0.02)))
    trace.finish()
