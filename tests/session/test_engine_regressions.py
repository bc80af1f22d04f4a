"""Session-engine traces that pin down defects found by review and by the random traces.

Same conventions as test_engine_traces: every step names its time, the clock is the test's.
"""

import pytest

from tcpcopy.capture import packet as pk
from tcpcopy.session.engine import Closed, Dropped, RequestSent, ResponseCompleted
from tests.session.replay import A, C_ISN, FA, O_ISN, PA, RA, SA, T_ISN, Replay, seg

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"          # 27 bytes
MSS = pk.opt_mss(1460)


# --- timers fire at their own deadline ------------------------------------------------


def test_session_timeout_fires_when_called_exactly_at_its_deadline():
    """In floating point, last + t <= now does not imply now - last >= t: with the target's
    last packet at 635.570762 s, 635.570762 + 600 == 1235.5707619999998, and at that time
    now - last < 600. The timer must still fire, or it is re-armed at a deadline already
    past and an owner that runs timers up to now never gets past it."""
    r = Replay(session_timeout=600.0)
    r.handshake()
    r.client(0.02, PA, C_ISN + 1, O_ISN + 1, GET)
    r.target(635.570762, A, T_ISN + 1, C_ISN + 1 + len(GET))  # acknowledged, never answered
    deadline = r.deadline
    assert deadline == 635.570762 + 600.0
    assert deadline - 635.570762 < 600.0  # the rounding this trace depends on
    out = r.timer(deadline)
    assert [p.flags for p in out] == [RA]
    assert r.events()[-1] == Dropped(deadline, "target_timeout")


def test_keepalive_timeout_fires_when_called_exactly_at_its_deadline():
    r = Replay(session_timeout=5.0, keepalive_timeout=600.0)
    r.handshake()
    r.client(0.02, PA, C_ISN + 1, O_ISN + 1, GET)
    r.target(0.03, PA, T_ISN + 1, C_ISN + 1 + len(GET), data=100)
    r.timer(0.05)  # response complete
    r.target(635.570762, A, T_ISN + 101, C_ISN + 1 + len(GET))  # a pure ACK from the target
    deadline = r.deadline
    assert deadline == 635.570762 + 600.0
    out = r.timer(deadline)
    assert [p.flags for p in out] == [RA]
    assert r.events()[-1] == Closed(deadline, "idle_timeout")
    assert r.deadline > deadline


# --- resets before the connection is synchronized -------------------------------------


def test_a_late_syn_ack_after_the_syn_timed_out_is_reset_without_an_ack():
    """The target's SYN-ACKs were lost before intercept; the session gave up. When one gets
    through, the target's socket is in SYN-RECEIVED, which checks a segment's ACK before its
    RST bit (Linux tcp_check_req): a RST carrying ACK 0 would be ignored and leave the
    half-open connection. RFC 9293 §3.10.7.1: <SEQ=SEG.ACK><CTL=RST>."""
    r = Replay(syn_retries=0)
    r.client(0.0, pk.SYN, C_ISN, options=MSS)
    assert [seg(p) for p in r.timer(1.0)] == [(pk.RST, C_ISN + 1, 0, b"")]
    assert r.events() == [Dropped(1.0, "syn_timeout")]
    out = r.target(1.2, SA, T_ISN, C_ISN + 1)
    assert [seg(p) for p in out] == [(pk.RST, C_ISN + 1, 0, b"")]


def test_a_late_syn_ack_of_a_reconnect_is_reset_without_the_old_connections_ack():
    r = Replay(syn_retries=0)
    r.handshake()
    r.client(0.02, PA, C_ISN + 1, O_ISN + 1, GET)
    r.client(0.021, PA, C_ISN + 1 + len(GET), O_ISN + 101, GET)  # held for the response
    r.target(0.025, A, T_ISN + 1, C_ISN + 1 + len(GET))
    r.target(0.03, RA, T_ISN + 1, C_ISN + 1 + len(GET))           # the target resets: reconnect
    assert [seg(p) for p in r.timer(0.04)] == [(pk.SYN, C_ISN + len(GET), 0, b"")]
    assert [seg(p) for p in r.timer(1.04)] == [(pk.RST, C_ISN + 1 + len(GET), 0, b"")]
    assert r.events()[-1] == Dropped(1.04, "syn_timeout")
    out = r.target(1.1, SA, 5_000_000, C_ISN + 1 + len(GET))
    assert [seg(p) for p in out] == [(pk.RST, C_ISN + 1 + len(GET), 0, b"")]


def test_a_late_packet_of_an_established_connection_is_still_reset_with_its_ack():
    r = Replay()
    r.handshake()
    r.session.abort(0.02, "shutdown")
    r.sent()
    out = r.target(0.03, PA, T_ISN + 1, C_ISN + 1, data=10)
    assert [seg(p) for p in out] == [(RA, C_ISN + 1, T_ISN + 1, b"")]


# --- -t counts only while we wait on the target ---------------------------------------


def test_a_request_after_a_long_idle_keepalive_is_not_timed_out_at_once():
    """-t is the target's silence while we wait on it; an idle keep-alive connection (-k)
    waits on nobody. A request after 10 s of idleness (more than -t) gets -t from when it
    was sent, not from the target's last packet before the idle time."""
    r = Replay(session_timeout=5.0, keepalive_timeout=60.0)
    r.handshake()
    r.client(0.02, PA, C_ISN + 1, O_ISN + 1, GET)
    r.target(0.03, PA, T_ISN + 1, C_ISN + 1 + len(GET), data=100)
    r.timer(0.05)  # response complete: idle, only -k runs
    assert r.deadline == pytest.approx(60.03)
    r.events()
    out = r.client(10.0, PA, C_ISN + 1 + len(GET), O_ISN + 101, GET)
    assert [p.payload for p in out] == [GET]
    assert r.deadline == pytest.approx(10.2)  # the RTO, not a -t already past
    assert r.timer(10.005) == [] and r.events() == [RequestSent(10.0)]
    r.target(10.01, A, T_ISN + 101, C_ISN + 1 + 2 * len(GET))  # acknowledged, not answered
    assert r.deadline == pytest.approx(15.01)
    assert r.timer(10.5) == [] and r.events() == []
    out = r.timer(15.01)
    assert [p.flags for p in out] == [RA]
    assert r.events() == [Dropped(15.01, "target_timeout")]


def test_a_request_to_a_silent_target_after_idleness_times_out_from_the_request():
    r = Replay(session_timeout=5.0, keepalive_timeout=60.0)
    r.handshake()
    r.client(0.02, PA, C_ISN + 1, O_ISN + 1, GET)
    r.target(0.03, PA, T_ISN + 1, C_ISN + 1 + len(GET), data=100)
    r.timer(0.05)
    r.client(10.0, PA, C_ISN + 1 + len(GET), O_ISN + 101, GET)  # the target never answers
    r.events()
    while not r.session.over:  # RTO retransmissions, then -t from the request
        r.timer(r.deadline)
    assert r.stats.retransmits == 4
    assert r.events() == [Dropped(15.0, "target_timeout")]


# --- timestamps: TSecr echoes the target's latest TSval --------------------------------


def test_tsecr_echoes_the_tsval_of_the_targets_pure_acks_and_fins():
    """RFC 7323 §4.3: TS.Recent follows every segment of the target's, not only those with
    data; echoing a stale TSval skews the target's RTT measurement."""
    r = Replay()
    r.client(0.0, pk.SYN, C_ISN, options=MSS + pk.opt_timestamps(1000, 0))
    r.target(0.01, SA, T_ISN, C_ISN + 1, options=MSS + pk.opt_timestamps(5000, 1000))
    r.client(0.011, A, C_ISN + 1, O_ISN + 1, options=pk.opt_timestamps(1001, 777))
    r.client(0.02, PA, C_ISN + 1, O_ISN + 1, GET, options=pk.opt_timestamps(1010, 778))
    r.target(0.03, A, T_ISN + 1, C_ISN + 1 + len(GET), options=pk.opt_timestamps(5100, 1010))
    out = r.client(0.031, PA, C_ISN + 1 + len(GET), O_ISN + 1, GET,
                   options=pk.opt_timestamps(1011, 778))  # pipelined: goes at once
    assert (out[0].tsval, out[0].tsecr) == (1011, 5100)
    out = r.target(0.04, FA, T_ISN + 1, C_ISN + 1 + 2 * len(GET),
                   options=pk.opt_timestamps(5200, 1011))
    assert [(p.flags, p.tsecr) for p in out] == [(A, 5200)]


# --- the target's keep-alive probes are answered ---------------------------------------


def test_a_keepalive_probe_from_the_target_is_acknowledged():
    """A keep-alive probe carries seq = RCV.NXT - 1 and no data (RFC 9293 §3.8.4); an
    unacceptable segment must be answered with an ACK (§3.10.7.4), or the target's
    keep-alive gives up on a healthy idle connection."""
    r = Replay()
    r.handshake()
    r.client(0.02, PA, C_ISN + 1, O_ISN + 1, GET)
    r.target(0.03, PA, T_ISN + 1, C_ISN + 1 + len(GET), data=100)
    r.timer(0.05)
    out = r.target(300.0, A, T_ISN + 100, C_ISN + 1 + len(GET))
    assert [seg(p) for p in out] == [(A, C_ISN + 1 + len(GET), T_ISN + 101, b"")]
    # An in-order pure ACK is not answered: that would ping-pong.
    assert r.target(300.1, A, T_ISN + 101, C_ISN + 1 + len(GET)) == []


# --- window scale ------------------------------------------------------------------------


def test_a_window_scale_above_14_is_taken_as_14():
    """RFC 7323 §2.3: a shift count larger than 14 MUST be used as 14."""
    r = Replay(mtu=65535)  # no splitting
    r.handshake(syn_options=MSS + pk.opt_wscale(7), synack_options=MSS + pk.opt_wscale(20))
    r.target(0.015, A, T_ISN + 1, C_ISN + 1, window=1)  # 1 << 14 bytes, not 1 << 20
    body = b"x" * 10_000
    assert len(r.client(0.02, PA, C_ISN + 1, O_ISN + 1, body)) == 1
    assert r.client(0.021, PA, C_ISN + 10_001, O_ISN + 1, body) == []  # 20000 > 16384


# --- handle_timer leaves no deadline in the past ----------------------------------------


def test_a_late_timer_call_that_ends_a_wait_runs_the_expired_keepalive_at_once():
    """Timers called late (an owner's loop was busy): the quiet period ends the response,
    the session stops waiting on the target, and -k, counted from the last packet, has
    already run out. The same call ends the session instead of leaving a deadline in the
    past behind."""
    r = Replay(keepalive_timeout=4.0)
    r.handshake()
    r.client(0.02, PA, C_ISN + 1, O_ISN + 1, GET)
    r.target(0.03, PA, T_ISN + 1, C_ISN + 1 + len(GET), data=100)
    r.events()
    out = r.timer(7.0)
    assert [p.flags for p in out] == [A, RA]
    assert r.events() == [ResponseCompleted(7.0, 100), Closed(7.0, "idle_timeout")]
    assert r.deadline == pytest.approx(13.0)  # linger


# --- zero-window probes back off --------------------------------------------------------


def test_zero_window_probes_back_off_exponentially():
    """RFC 9293 §3.8.6.1: a target whose window stays shut is probed at exponentially
    growing intervals, not at a fixed rate for as long as it answers."""
    r = Replay()
    r.handshake()
    r.client(0.02, PA, C_ISN + 1, O_ISN + 1, GET)
    r.target(0.03, A, T_ISN + 1, C_ISN + 1 + len(GET), window=0)
    r.client(0.031, PA, C_ISN + 1 + len(GET), O_ISN + 1, GET)  # pipelined, window shut
    probes = []
    for _ in range(4):
        at = r.deadline
        out = r.timer(at)
        assert [seg(p) for p in out] == [(A, C_ISN + len(GET), T_ISN + 1, b"")]
        probes.append(at)
        r.target(at + 0.01, A, T_ISN + 1, C_ISN + 1 + len(GET), window=0)  # still shut
    gaps = [round(b - a, 6) for a, b in zip(probes, probes[1:])]
    assert gaps == [0.4, 0.8, 1.6]
    out = r.target(probes[-1] + 0.5, A, T_ISN + 1, C_ISN + 1 + len(GET), window=65535)
    assert [p.payload for p in out] == [GET]
    assert r.stats.window_probes == 4


def test_a_stray_pure_ack_far_from_the_stream_does_not_supersede_the_session():
    r = Replay()
    r.handshake()
    r.client(0.02, PA, C_ISN + 1, O_ISN + 1, b"GET / HTTP/1.1\r\n\r\n")
    far = C_ISN + (1 << 26)
    stray_ack = pk.decode(pk.build(b"\xc6\x12\x05\x05", b"\xc6\x12\x00\x0a", 51000, 80,
                                   far, O_ISN, A, 1000).to_bytes())
    stray_rst = pk.decode(pk.build(b"\xc6\x12\x05\x05", b"\xc6\x12\x00\x0a", 51000, 80,
                                   far, O_ISN, pk.RST, 1000).to_bytes())
    assert not r.session.superseded_by(stray_ack)
    assert not r.session.superseded_by(stray_rst)


def test_fins_that_cross_leave_the_target_in_time_wait():
    r = Replay()
    r.handshake()
    r.client(0.02, PA, C_ISN + 1, O_ISN + 1, b"GET / HTTP/1.1\r\n\r\n")
    r.target(0.03, PA, T_ISN + 1, C_ISN + 19, data=100)
    r.timer(0.05)                                        # response complete by the quiet timer
    r.client(0.06, FA, C_ISN + 19, O_ISN + 102)          # our FIN goes out...
    r.target(0.061, FA, T_ISN + 101, C_ISN + 19)         # ...while the target's, not acking it, comes in
    assert r.session.target_closed_first


def test_a_target_fin_that_answers_ours_leaves_no_time_wait_at_the_target():
    r = Replay()
    r.handshake()
    r.client(0.02, PA, C_ISN + 1, O_ISN + 1, b"GET / HTTP/1.1\r\n\r\n")
    r.target(0.03, PA, T_ISN + 1, C_ISN + 19, data=100)
    r.timer(0.05)
    r.client(0.06, FA, C_ISN + 19, O_ISN + 101)
    r.target(0.07, FA, T_ISN + 101, C_ISN + 20)          # acknowledges our FIN
    assert not r.session.target_closed_first
