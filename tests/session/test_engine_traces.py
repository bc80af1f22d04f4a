"""Session-engine traces: captured client packets and target responses in, packets out.

Every step names the time it happens at; the clock is the test's. The real client talks to
the online server (ISN C_ISN, the server's ISN O_ISN shows only in captured ACKs); the
replayed connection goes from REPLAY_CLIENT to TARGET, whose ISN is T_ISN.
"""

import socket
import struct

import pytest

from tcpcopy.capture import packet as pk
from tcpcopy.session.engine import (
    Closed, Dropped, Endpoint, Established, Reconnecting, RequestSent, ResponseCompleted,
    should_start_session, SessionConfig,
)
from tcpcopy.session.states import GAP_TIMER, RTO_TIMER
from tests.session.replay import (
    A, C_ISN, FA, O_ISN, ONLINE, PA, RA, REAL_CLIENT, REAL_CLIENT_PORT, SA, T_ISN, TARGET_PORT, Replay,
    seg,
)

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"          # 27 bytes
GET2 = b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n"        # 28 bytes
MSS = pk.opt_mss(1460)


def request(r: Replay, at: float, seq_offset: int, server_bytes: int, body: bytes = GET):
    """The client sends ``body`` at C_ISN+1+seq_offset, having seen ``server_bytes`` of the
    online server's data."""
    return r.client(at, PA, C_ISN + 1 + seq_offset, O_ISN + 1 + server_bytes, body)


# --- a whole connection ---------------------------------------------------------------


def test_short_http_session_keeps_client_seq_and_acknowledges_the_target():
    r = Replay()
    out = r.client(0.000, pk.SYN, C_ISN, options=MSS)
    assert [seg(p) for p in out] == [(pk.SYN, C_ISN, 0, b"")]
    assert out[0].mss == 1460
    assert r.deadline == pytest.approx(1.0)  # first SYN retransmission (RFC 6298 §2.1)

    out = r.target(0.010, SA, T_ISN, C_ISN + 1, options=MSS)
    assert [seg(p) for p in out] == [(A, C_ISN + 1, T_ISN + 1, b"")]
    assert r.events() == [Established(0.010, fabricated=False)]

    assert r.client(0.011, A, C_ISN + 1, O_ISN + 1) == []  # captured pure ACKs are ours to make

    out = request(r, 0.020, 0, 0)
    assert [seg(p) for p in out] == [(PA, C_ISN + 1, T_ISN + 1, GET)]
    assert r.events() == [RequestSent(0.020)]
    assert r.deadline == pytest.approx(0.220)  # RTO, at its 200 ms floor

    # The target acknowledges the request and answers 100 bytes: the ACK is delayed, and
    # the response is complete after a quiet period of two smoothed RTTs (2 x 10 ms).
    assert r.target(0.030, PA, T_ISN + 1, C_ISN + 1 + len(GET), data=100) == []
    assert r.deadline == pytest.approx(0.050)
    out = r.timer(0.050)
    assert [seg(p) for p in out] == [(A, C_ISN + 1 + len(GET), T_ISN + 101, b"")]
    assert r.events() == [ResponseCompleted(0.050, 100)]

    out = r.client(0.060, FA, C_ISN + 1 + len(GET), O_ISN + 1 + 100)
    assert [seg(p) for p in out] == [(FA, C_ISN + 1 + len(GET), T_ISN + 101, b"")]

    out = r.target(0.070, FA, T_ISN + 101, C_ISN + 2 + len(GET))
    assert [seg(p) for p in out] == [(A, C_ISN + 2 + len(GET), T_ISN + 102, b"")]
    assert r.events() == [Closed(0.070, "completed")]
    assert r.deadline == pytest.approx(6.070)  # linger
    r.timer(6.070)
    assert r.session.finished
    assert r.stats.closed == {"completed": 1}
    assert r.stats.requests_sent == 1 and r.stats.responses_completed == 1


def test_sequence_numbers_wrap_around_on_both_sides():
    c_isn, o_isn, t_isn = 0xFFFFFFF0, 0xFFFFFFF8, 0xFFFFFFC0
    r = Replay()
    r.client(0.0, pk.SYN, c_isn, options=MSS)
    r.target(0.01, SA, t_isn, c_isn + 1)
    r.client(0.011, A, c_isn + 1, o_isn + 1)
    out = r.client(0.02, PA, c_isn + 1, o_isn + 1, GET)  # crosses 2**32 on the client side
    assert [seg(p) for p in out] == [(PA, 0xFFFFFFF1, 0xFFFFFFC1, GET)]
    # A 100-byte answer crosses 2**32 on the target side.
    r.target(0.03, PA, t_isn + 1, (c_isn + 1 + len(GET)) & 0xFFFFFFFF, data=100)
    out = r.client(0.04, PA, (c_isn + 1 + len(GET)) & 0xFFFFFFFF, (o_isn + 101) & 0xFFFFFFFF, GET2)
    assert [seg(p) for p in out] == [
        (PA, (c_isn + 1 + len(GET)) & 0xFFFFFFFF, (t_isn + 101) & 0xFFFFFFFF, GET2)]
    assert r.events()[-2:] == [ResponseCompleted(0.04, 100), RequestSent(0.04)]


# --- options: window scale, timestamps, SACK -------------------------------------------


def test_window_scaling_from_the_targets_syn_ack_limits_what_is_in_flight():
    r = Replay()
    r.handshake(syn_options=MSS + pk.opt_wscale(7), synack_options=MSS + pk.opt_wscale(2),
                window=100)  # a SYN-ACK's window is never scaled (RFC 7323 §2.2)
    body = b"x" * 200
    assert len(r.client(0.02, PA, C_ISN + 1, O_ISN + 1, body)) == 1  # nothing in flight: send
    assert r.client(0.021, PA, C_ISN + 201, O_ISN + 1, body) == []   # 400 in flight > 100
    # The target acknowledges the first 200 bytes with window 100 << 2 = 400.
    out = r.target(0.03, A, T_ISN + 1, C_ISN + 201, window=100)
    assert [p.seq for p in out] == [C_ISN + 201]
    out = r.client(0.031, PA, C_ISN + 401, O_ISN + 1, body)
    assert [p.seq for p in out] == [C_ISN + 401]                    # exactly 400 in flight
    assert r.client(0.032, PA, C_ISN + 601, O_ISN + 1, body) == []


def test_client_windows_pass_through_when_both_sides_scale():
    r = Replay()
    r.handshake(syn_options=MSS + pk.opt_wscale(7), synack_options=MSS + pk.opt_wscale(2))
    out = r.client(0.02, PA, C_ISN + 1, O_ISN + 1, GET, window=501)
    assert out[0].window == 501


def test_client_windows_are_opened_when_the_target_does_not_scale():
    r = Replay()
    r.handshake(syn_options=MSS + pk.opt_wscale(7), synack_options=MSS)
    out = r.client(0.02, PA, C_ISN + 1, O_ISN + 1, GET, window=501)
    assert out[0].window == 65535  # 501 unscaled would starve the target's sending


def test_timestamps_echo_the_target_and_never_go_backwards():
    r = Replay()
    r.client(0.0, pk.SYN, C_ISN, options=MSS + pk.opt_timestamps(1000, 0))
    out = r.target(0.01, SA, T_ISN, C_ISN + 1, options=MSS + pk.opt_timestamps(5000, 1000))
    assert (out[0].tsval, out[0].tsecr) == (1000, 5000)  # our ACK carries TS too
    r.client(0.011, A, C_ISN + 1, O_ISN + 1, options=pk.opt_timestamps(1001, 777))

    out = r.client(0.02, PA, C_ISN + 1, O_ISN + 1, GET, options=pk.opt_timestamps(1010, 778))
    assert (out[0].tsval, out[0].tsecr) == (1010, 5000)  # TSecr is the target's, not the online server's
    r.target(0.03, A, T_ISN + 1, C_ISN + 1 + len(GET), options=pk.opt_timestamps(5100, 1010))
    r.target(0.031, PA, T_ISN + 1, C_ISN + 1 + len(GET), data=10,
             options=pk.opt_timestamps(5101, 1010))
    # A pipelined segment whose captured TSval went backwards still goes out monotonic.
    out = r.client(0.032, PA, C_ISN + 1 + len(GET), O_ISN + 1, GET2,
                   options=pk.opt_timestamps(1005, 778))
    assert (out[0].tsval, out[0].tsecr) == (1010, 5101)


def test_sack_blocks_of_the_online_connection_are_blanked():
    sack = bytes([1, 1, 5, 10]) + struct.pack("!II", O_ISN + 500, O_ISN + 900)
    r = Replay()
    r.handshake()
    out = r.client(0.02, PA, C_ISN + 1, O_ISN + 1, GET, options=sack)
    assert out[0].sack_blocks == ()
    assert out[0].payload == GET


# --- starting: captured SYN, mid-stream, -O ---------------------------------------------


def test_mid_stream_session_starts_with_a_fabricated_syn():
    r = Replay()
    out = r.client(0.0, PA, C_ISN + 1, O_ISN + 1, GET, window=229)
    assert [seg(p) for p in out] == [(pk.SYN, C_ISN, 0, b"")]
    syn = out[0]
    assert (syn.mss, syn.wscale, syn.tsval, syn.sack_permitted, syn.window) == (1460, None, None, False, 65535)

    out = r.target(0.01, SA, T_ISN, C_ISN + 1)
    assert [seg(p) for p in out] == [(A, C_ISN + 1, T_ISN + 1, b""), (PA, C_ISN + 1, T_ISN + 1, GET)]
    assert out[1].window == 65535  # the client's window scale is unknown
    assert r.events() == [Established(0.01, fabricated=True), RequestSent(0.01)]
    assert r.stats.fabricated_syns == 1


def test_fabricated_syn_carries_the_configured_mss():
    r = Replay(fake_syn_mss=1200)
    out = r.client(0.0, PA, C_ISN + 1, O_ISN + 1, GET)
    assert out[0].mss == 1200


def test_only_full_sessions_ignores_a_connection_joined_mid_stream():
    captured = pk.decode(pk.build(b"\xc6\x12\x05\x05", b"\xc6\x12\x00\x0a", 51000, 80,
                                  C_ISN + 1, O_ISN + 1, PA, 1000, payload=GET).to_bytes())
    assert should_start_session(captured, SessionConfig())
    assert not should_start_session(captured, SessionConfig(only_full_sessions=True))
    r = Replay(only_full_sessions=True)
    assert r.client(0.0, PA, C_ISN + 1, O_ISN + 1, GET) == []
    assert r.deadline is None


def test_pure_acks_fins_and_resets_start_no_session():
    cfg = SessionConfig()
    for flags in (A, FA, RA, pk.RST):
        p = pk.decode(pk.build(b"\xc6\x12\x05\x05", b"\xc6\x12\x00\x0a", 51000, 80, 5, 6, flags, 1000).to_bytes())
        assert not should_start_session(p, cfg), flags


# --- retransmission ----------------------------------------------------------------------


def test_syn_is_retransmitted_with_backoff_then_the_session_is_dropped():
    r = Replay()
    r.client(0.0, pk.SYN, C_ISN, options=MSS)
    times = []
    for _ in range(3):
        times.append(r.deadline)
        out = r.timer(r.deadline)
        assert [seg(p) for p in out] == [(pk.SYN, C_ISN, 0, b"")]
    assert times == [pytest.approx(1.0), pytest.approx(3.0), pytest.approx(7.0)]
    assert r.deadline == pytest.approx(15.0)
    out = r.timer(15.0)
    assert [seg(p) for p in out] == [(pk.RST, C_ISN + 1, 0, b"")]  # in case a SYN-ACK got lost
    assert r.events() == [Dropped(15.0, "syn_timeout")]
    assert r.stats.syn_retransmits == 3


def test_data_is_retransmitted_on_rto_with_exponential_backoff():
    r = Replay()
    r.handshake()
    sent = request(r, 0.02, 0, 0)
    assert r.deadline == pytest.approx(0.22)
    assert [seg(p) for p in r.timer(0.22)] == [seg(sent[0])]
    assert r.deadline == pytest.approx(0.62)   # 0.4 s: doubled
    assert [seg(p) for p in r.timer(0.62)] == [seg(sent[0])]
    assert r.deadline == pytest.approx(1.42)   # 0.8 s
    r.target(1.0, A, T_ISN + 1, C_ISN + 1 + len(GET))
    assert r.session.deadline(RTO_TIMER) is None
    assert r.stats.retransmits == 2


def test_retransmission_budget_ends_the_session():
    r = Replay(max_retransmits=2)
    r.handshake()
    request(r, 0.02, 0, 0)
    r.timer(0.22)
    r.timer(0.62)
    out = r.timer(1.42)
    assert [p.flags for p in out] == [RA]
    assert r.events()[-1] == Dropped(1.42, "retransmit_limit")


def test_three_duplicate_acks_trigger_a_fast_retransmit():
    r = Replay()
    r.handshake()
    chunk = b"y" * 100
    for i in range(4):  # one request in four segments (same captured ACK)
        r.client(0.02 + i / 1000, PA, C_ISN + 1 + 100 * i, O_ISN + 1, chunk)
    r.target(0.03, A, T_ISN + 1, C_ISN + 101)
    assert r.target(0.031, A, T_ISN + 1, C_ISN + 101) == []
    assert r.target(0.032, A, T_ISN + 1, C_ISN + 101) == []
    out = r.target(0.033, A, T_ISN + 1, C_ISN + 101)
    assert [seg(p) for p in out] == [(PA, C_ISN + 101, T_ISN + 1, chunk)]
    assert r.target(0.034, A, T_ISN + 1, C_ISN + 101) == []  # once per loss
    assert r.stats.fast_retransmits == 1


# --- pacing: requests, responses, pipelining, greetings ----------------------------------


def test_a_new_request_waits_until_the_target_sent_as_much_as_the_online_server():
    r = Replay()
    r.handshake()
    request(r, 0.02, 0, 0)
    # The client's second request acknowledges 100 bytes of online response: hold it.
    assert request(r, 0.021, len(GET), 100, GET2) == []
    assert r.target(0.03, PA, T_ISN + 1, C_ISN + 1 + len(GET), data=60) == []
    out = r.target(0.031, PA, T_ISN + 61, C_ISN + 1 + len(GET), data=40)
    assert [seg(p) for p in out] == [(PA, C_ISN + 1 + len(GET), T_ISN + 101, GET2)]
    assert r.events() == [RequestSent(0.02), ResponseCompleted(0.031, 100), RequestSent(0.031)]


def test_a_shorter_target_response_completes_after_a_quiet_period():
    r = Replay()
    r.handshake()
    request(r, 0.02, 0, 0)
    request(r, 0.021, len(GET), 100, GET2)
    assert r.target(0.03, PA, T_ISN + 1, C_ISN + 1 + len(GET), data=80) == []
    assert r.deadline == pytest.approx(0.05)  # 2 x srtt (10 ms) after the last response byte
    out = r.timer(0.05)
    assert [seg(p) for p in out] == [(PA, C_ISN + 1 + len(GET), T_ISN + 81, GET2)]


def test_no_wait_sends_a_new_request_at_once():
    r = Replay(no_wait=True)
    r.handshake()
    request(r, 0.02, 0, 0)
    out = request(r, 0.021, len(GET), 100, GET2)
    assert [p.payload for p in out] == [GET2]


def test_pipelined_requests_go_out_back_to_back():
    r = Replay()
    r.handshake()
    assert [p.payload for p in request(r, 0.02, 0, 0)] == [GET]
    assert [p.payload for p in request(r, 0.0201, len(GET), 0, GET2)] == [GET2]  # same ACK
    assert r.events() == [RequestSent(0.02)]
    # The next request acknowledges both responses (100 + 120 bytes).
    third = request(r, 0.05, len(GET) + len(GET2), 220)
    assert third == []
    r.target(0.06, PA, T_ISN + 1, C_ISN + 1 + len(GET) + len(GET2), data=100)
    out = r.target(0.061, PA, T_ISN + 101, C_ISN + 1 + len(GET) + len(GET2), data=120)
    assert [p.payload for p in out] == [GET]


def test_a_server_first_protocol_waits_for_the_targets_greeting():
    r = Replay()
    r.handshake()  # captured third ACK: O_ISN + 1
    # The client speaks after a 20-byte greeting: its ACK is 20 bytes further on.
    assert request(r, 0.02, 0, 20, b"EHLO a\r\n") == []
    out = r.target(0.025, PA, T_ISN + 1, C_ISN + 1, data=20)
    assert [seg(p) for p in out] == [(PA, C_ISN + 1, T_ISN + 21, b"EHLO a\r\n")]


def test_a_greeting_that_arrived_first_lets_the_client_speak_at_once():
    r = Replay()
    r.handshake()
    r.target(0.015, PA, T_ISN + 1, C_ISN + 1, data=25)  # the target's greeting is longer
    r.timer(r.deadline)  # quiet period: greeting complete
    out = request(r, 0.05, 0, 20, b"EHLO a\r\n")
    assert [seg(p) for p in out] == [(PA, C_ISN + 1, T_ISN + 26, b"EHLO a\r\n")]


def test_a_client_first_protocol_is_not_held_by_the_handshake():
    r = Replay()
    r.handshake()
    assert len(request(r, 0.02, 0, 0)) == 1


# --- capture order, loss and retransmission ---------------------------------------------


def test_reordered_capture_is_sent_in_order():
    r = Replay()
    r.handshake()
    chunk = b"z" * 100
    assert r.client(0.02, PA, C_ISN + 101, O_ISN + 1, chunk) == []  # the gap holds it
    out = r.client(0.021, PA, C_ISN + 1, O_ISN + 1, chunk)
    assert [p.seq for p in out] == [C_ISN + 1, C_ISN + 101]
    assert r.session.deadline(GAP_TIMER) is None


def test_a_capture_gap_waits_a_bounded_time_then_drops_the_session():
    r = Replay(gap_timeout=2.0)
    r.handshake()
    assert r.client(0.02, PA, C_ISN + 101, O_ISN + 1, b"z" * 100) == []
    assert r.deadline == pytest.approx(2.02)
    out = r.timer(2.02)
    assert [seg(p) for p in out] == [(RA, C_ISN + 1, T_ISN + 1, b"")]
    assert r.events() == [Dropped(2.02, "capture_gap")]
    assert r.stats.dropped == {"capture_gap": 1}


def test_client_retransmissions_are_not_sent_twice():
    r = Replay()
    r.handshake()
    request(r, 0.02, 0, 0)
    assert request(r, 0.3, 0, 0) == []
    assert r.stats.client_retransmits_skipped == 1


def test_a_client_retransmission_replaces_a_copy_damaged_on_the_wire():
    """The first capture of a segment was damaged (the online server dropped it and the
    client sent it again): resends to the target carry the fresh copy."""
    r = Replay()
    r.handshake()
    damaged = pk.build(REAL_CLIENT, ONLINE, REAL_CLIENT_PORT, 80, C_ISN + 1, O_ISN + 1, PA, 29200,
                       payload=GET)
    damaged.buf[-1] ^= 0x20
    r.session.handle_client(pk.decode(damaged.to_bytes()), 0.02)
    first = [pk.decode(raw) for raw in r.session.take_packets()]
    assert [p.payload for p in first] == [GET[:-1] + bytes([GET[-1] ^ 0x20])]
    assert not pk.tcp_checksum_ok(first[0])
    assert request(r, 0.1, 0, 0) == []          # the client's retransmission, whole
    out = r.timer(r.deadline)                      # our RTO resend
    assert [(seg(p), pk.tcp_checksum_ok(p)) for p in out] == [((PA, C_ISN + 1, T_ISN + 1, GET), True)]
    assert r.stats.client_retransmits_skipped == 1


def test_a_segment_larger_than_the_mtu_is_split_with_fin_on_the_last_piece():
    r = Replay(mtu=600)
    r.handshake()
    body = bytes(range(256)) * 5  # 1280 bytes
    out = r.client(0.02, PA | pk.FIN, C_ISN + 1, O_ISN + 1, body)
    assert [len(p.buf) <= 600 for p in out] == [True] * len(out)
    assert b"".join(p.payload for p in out) == body
    assert [bool(p.flags & pk.FIN) for p in out] == [False] * (len(out) - 1) + [True]
    assert [p.seq for p in out] == [C_ISN + 1 + sum(len(q.payload) for q in out[:i]) for i in range(len(out))]


# --- endings -----------------------------------------------------------------------------


def test_target_closing_with_client_data_unsent_reconnects_and_continues():
    r = Replay()
    r.handshake()
    request(r, 0.02, 0, 0)
    request(r, 0.021, len(GET), 100, GET2)  # held: waits for the response
    # The target answers and closes in one segment (Connection: close).
    out = r.target(0.03, PA | pk.FIN, T_ISN + 1, C_ISN + 1 + len(GET), data=100)
    assert [seg(p) for p in out] == [
        (A, C_ISN + 1 + len(GET), T_ISN + 102, b""),      # ACK of data and FIN
        (RA, C_ISN + 1 + len(GET), T_ISN + 102, b"")]     # free the target's socket
    assert r.events()[-1] == Reconnecting(0.03)
    assert r.deadline == pytest.approx(0.04)
    out = r.timer(0.04)
    assert [seg(p) for p in out] == [(pk.SYN, C_ISN + len(GET), 0, b"")]  # first unsent byte - 1
    t2 = 7_000_000
    out = r.target(0.05, SA, t2, C_ISN + 1 + len(GET))
    assert [seg(p) for p in out] == [(A, C_ISN + 1 + len(GET), t2 + 1, b""),
                                     (PA, C_ISN + 1 + len(GET), t2 + 1, GET2)]
    assert r.events() == [Established(0.05, fabricated=True), RequestSent(0.05)]
    assert r.stats.reconnects == 1


def test_target_reset_with_client_data_unsent_reconnects():
    r = Replay()
    r.handshake()
    request(r, 0.02, 0, 0)
    request(r, 0.021, len(GET), 100, GET2)
    assert r.target(0.03, RA, T_ISN + 1, C_ISN + 1 + len(GET)) == []  # no RST owed
    assert r.events()[-1] == Reconnecting(0.03)
    assert [p.flags for p in r.timer(0.04)] == [pk.SYN]


def test_reconnects_are_bounded():
    r = Replay(max_reconnects=0)
    r.handshake()
    request(r, 0.02, 0, 0)
    request(r, 0.021, len(GET), 100, GET2)
    r.target(0.03, RA, T_ISN + 1, C_ISN + 1 + len(GET))
    assert r.events()[-1] == Dropped(0.03, "reconnect_limit")


def test_target_fin_first_then_client_fin_closes_cleanly():
    r = Replay()
    r.handshake()
    request(r, 0.02, 0, 0)
    out = r.target(0.03, PA | pk.FIN, T_ISN + 1, C_ISN + 1 + len(GET), data=100)
    assert [p.flags for p in out] == [A]
    assert r.deadline == pytest.approx(5.03)  # close_wait: the client's FIN is awaited
    out = r.client(0.04, FA, C_ISN + 1 + len(GET), O_ISN + 102)
    assert [seg(p) for p in out] == [(FA, C_ISN + 1 + len(GET), T_ISN + 102, b"")]
    assert r.target(0.05, A, T_ISN + 102, C_ISN + 2 + len(GET)) == []
    assert r.events()[-1] == Closed(0.05, "completed")


def test_half_closed_target_without_a_client_fin_is_reset_after_close_wait():
    r = Replay(close_wait=1.0)
    r.handshake()
    request(r, 0.02, 0, 0)
    r.target(0.03, PA | pk.FIN, T_ISN + 1, C_ISN + 1 + len(GET), data=100)
    out = r.timer(1.03)
    assert [p.flags for p in out] == [RA]
    assert r.events()[-1] == Closed(1.03, "completed")


def test_client_reset_is_sent_once_the_response_is_complete():
    r = Replay()
    r.handshake()
    request(r, 0.02, 0, 0)
    assert r.client(0.021, RA, C_ISN + 1 + len(GET), O_ISN + 1) == []  # response pending
    r.target(0.03, PA, T_ISN + 1, C_ISN + 1 + len(GET), data=100)
    out = r.timer(0.05)
    assert [seg(p) for p in out] == [(RA, C_ISN + 1 + len(GET), T_ISN + 101, b"")]
    assert r.events()[-1] == Closed(0.05, "client_reset")


def test_target_reset_with_nothing_pending_ends_the_session():
    r = Replay()
    r.handshake()
    request(r, 0.02, 0, 0)
    r.target(0.03, PA, T_ISN + 1, C_ISN + 1 + len(GET), data=100)
    r.timer(0.05)
    assert r.target(0.06, RA, T_ISN + 101, C_ISN + 1 + len(GET)) == []
    assert r.events()[-1] == Closed(0.06, "target_reset")


def test_target_refusing_the_syn_drops_the_session_without_a_reset():
    r = Replay()
    r.client(0.0, pk.SYN, C_ISN, options=MSS)
    assert r.target(0.01, RA, 0, C_ISN + 1) == []
    assert r.events() == [Dropped(0.01, "target_refused")]


def test_a_stale_connection_on_the_target_is_reset_and_the_syn_retried():
    r = Replay()
    r.client(0.0, pk.SYN, C_ISN, options=MSS)
    # The target still holds an old connection on this 4-tuple: it answers with an ACK.
    out = r.target(0.01, A, 4242, 77777)
    assert [seg(p) for p in out] == [(pk.RST, 77777, 0, b"")]  # RFC 9293 §3.10.7.3
    assert r.deadline == pytest.approx(0.02)
    assert [p.flags for p in r.timer(0.02)] == [pk.SYN]
    assert r.stats.challenge_acks == 1


def test_late_target_packets_after_the_end_are_answered():
    r = Replay()
    r.handshake()
    request(r, 0.02, 0, 0)
    r.target(0.03, PA, T_ISN + 1, C_ISN + 1 + len(GET), data=100)
    r.timer(0.05)
    r.client(0.06, FA, C_ISN + 1 + len(GET), O_ISN + 101)
    r.target(0.07, FA, T_ISN + 101, C_ISN + 2 + len(GET))
    assert r.events()[-1] == Closed(0.07, "completed")
    # Our last ACK was lost: the target retransmits its FIN; ACK it once, then reset.
    assert [p.flags for p in r.target(0.3, FA, T_ISN + 101, C_ISN + 2 + len(GET))] == [A]
    out = r.target(0.9, FA, T_ISN + 101, C_ISN + 2 + len(GET))
    assert [seg(p) for p in out] == [(RA, C_ISN + 2 + len(GET), T_ISN + 102, b"")]


# --- 4-tuple reuse, bounds, timeouts -----------------------------------------------------


def test_a_new_isn_on_the_same_4_tuple_supersedes_the_session():
    r = Replay()
    r.handshake()
    request(r, 0.02, 0, 0)
    retransmitted_syn = pk.decode(pk.build(b"\xc6\x12\x05\x05", b"\xc6\x12\x00\x0a", 51000, 80,
                                           C_ISN, 0, pk.SYN, 1000).to_bytes())
    new_syn = pk.decode(pk.build(b"\xc6\x12\x05\x05", b"\xc6\x12\x00\x0a", 51000, 80,
                                 123456789, 0, pk.SYN, 1000).to_bytes())
    far_segment = pk.decode(pk.build(b"\xc6\x12\x05\x05", b"\xc6\x12\x00\x0a", 51000, 80,
                                     C_ISN + (1 << 26), O_ISN, PA, 1000, payload=GET).to_bytes())
    assert not r.session.superseded_by(retransmitted_syn)
    assert r.session.superseded_by(new_syn)
    assert r.session.superseded_by(far_segment)
    r.session.abort(0.5, "superseded")
    assert [p.flags for p in r.sent()] == [RA]
    assert r.events()[-1] == Dropped(0.5, "superseded")


def test_buffers_are_bounded_and_overflow_is_counted():
    r = Replay(max_segments=4)
    r.handshake()
    request(r, 0.02, 0, 0)
    for i in range(1, 4):  # each acknowledges more response: all held behind the first
        assert request(r, 0.02 + i / 1000, len(GET) * i, 100 * i) == []
    out = request(r, 0.024, len(GET) * 4, 400)  # the fifth buffered segment
    assert [p.flags for p in out] == [RA]
    assert r.events()[-1] == Dropped(0.024, "buffer_full")
    assert r.stats.dropped == {"buffer_full": 1}


def test_session_timeout_fires_when_the_target_goes_silent_on_a_request():
    r = Replay(session_timeout=5.0, keepalive_timeout=10.0)
    r.handshake()
    request(r, 0.02, 0, 0)
    r.target(0.03, A, T_ISN + 1, C_ISN + 1 + len(GET))  # acknowledged, never answered
    assert r.deadline == pytest.approx(5.03)
    out = r.timer(5.03)
    assert [p.flags for p in out] == [RA]
    assert r.events()[-1] == Dropped(5.03, "target_timeout")


def test_keepalive_timeout_ends_an_idle_healthy_session_later():
    r = Replay(session_timeout=5.0, keepalive_timeout=10.0)
    r.handshake()
    request(r, 0.02, 0, 0)
    r.target(0.03, PA, T_ISN + 1, C_ISN + 1 + len(GET), data=100)
    r.timer(0.05)  # response complete; nothing more to do
    assert r.deadline == pytest.approx(10.03)  # not waiting on the target: -k, not -t
    out = r.timer(10.03)
    assert [p.flags for p in out] == [RA]
    assert r.events()[-1] == Closed(10.03, "idle_timeout")


def test_zero_window_pauses_sending_and_a_window_update_resumes_it():
    r = Replay()
    r.handshake()
    request(r, 0.02, 0, 0)
    r.target(0.03, A, T_ISN + 1, C_ISN + 1 + len(GET), window=0)
    assert request(r, 0.031, len(GET), 0, GET2) == []  # pipelined, but the window is shut
    assert r.deadline == pytest.approx(0.231)
    out = r.timer(0.231)  # persist probe: an old sequence number makes the target answer
    assert [seg(p) for p in out] == [(A, C_ISN + len(GET), T_ISN + 1, b"")]
    out = r.target(0.24, A, T_ISN + 1, C_ISN + 1 + len(GET), window=65535)  # window update only
    assert [p.payload for p in out] == [GET2]
    assert r.stats.window_probes == 1


def test_ipv6_sessions_replay_like_ipv4():
    v6 = Endpoint(socket.inet_pton(socket.AF_INET6, "2001:2::3:5"), 41000,
                  socket.inet_pton(socket.AF_INET6, "2001:2::2"), TARGET_PORT)
    r = Replay(endpoint=v6)
    out = r.client(0.0, pk.SYN, C_ISN, options=MSS)
    assert out[0].version == 6
    r.target(0.01, SA, T_ISN, C_ISN + 1)
    out = request(r, 0.02, 0, 0)
    assert [seg(p) for p in out] == [(PA, C_ISN + 1, T_ISN + 1, GET)]

