"""Session-table traces: captured client packets of many connections and target responses
in, packets, events and one deadline out.

Real clients live in 198.18.5.0/24 and 198.18.6.0/24 and talk to the online server
198.18.0.10:80. The replayed client of 198.18.5.x:port (and of 198.18.6.x:port) is
198.18.3.x:port, and the target is 198.18.0.2:8080, so two real clients with the same last
octet and port map to one replayed endpoint. With two copies (-n 2), the second copy's
client is 198.18.4.x:port.
"""

import socket

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tcpcopy.capture import packet as pk
from tcpcopy.session.engine import (
    Closed, Dropped, Endpoint, Established, RequestSent, SessionConfig,
)
from tcpcopy.session.table import SessionFreed, SessionStarted, SessionTable
from tests.session.replay import A, FA, PA, RA, SA, seg

ONLINE = socket.inet_aton("198.18.0.10")
ONLINE_PORT = 80
TARGET = socket.inet_aton("198.18.0.2")
TARGET_PORT = 8080
C_ISN = 1_000
O_ISN = 50_000
T_ISN = 900_000
GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
MSS = pk.opt_mss(1460)


def real_client(host: int, net: int = 5) -> bytes:
    return socket.inet_aton(f"198.18.{net}.{host}")


def endpoints_for(copies: int):
    """-c style mapping: the client IP's last octet is kept in the replay net (one net per
    copy), the port too; packets to anything but the online service are not replayed."""
    def endpoints(pkt: pk.Packet, now: float) -> list[Endpoint]:
        if (pkt.dst, pkt.dport) != (ONLINE, ONLINE_PORT):
            return []
        return [endpoint(pkt.src[3], pkt.sport, copy) for copy in range(copies)]
    return endpoints


def endpoint(host: int, port: int, copy: int = 0) -> Endpoint:
    return Endpoint(socket.inet_aton(f"198.18.{3 + copy}.{host}"), port, TARGET, TARGET_PORT)


class TableReplay:
    """A session table under test, with trace helpers like tests.session.replay's."""

    def __init__(self, max_sessions: int = 100, copies: int = 1, **config):
        self.config = SessionConfig(**config)
        self.table = SessionTable(self.config, endpoints_for(copies), max_sessions=max_sessions)

    def client(self, at: float, host: int, port: int, flags: int, seq: int, ack: int = 0,
               payload: bytes = b"", options: bytes = b"", net: int = 5,
               dport: int = ONLINE_PORT) -> list[pk.Packet]:
        captured = pk.build(real_client(host, net), ONLINE, port, dport, seq & 0xFFFFFFFF,
                            ack & 0xFFFFFFFF, flags, 29200, options=options, payload=payload)
        self.table.client_packet(pk.decode(captured.to_bytes()), at)
        return self.sent()

    def syn(self, at: float, host: int, port: int, isn: int = C_ISN, **kw) -> list[pk.Packet]:
        return self.client(at, host, port, pk.SYN, isn, options=MSS, **kw)

    def target(self, at: float, ep: Endpoint, flags: int, seq: int, ack: int = 0,
               data: int = 0, window: int = 65535) -> list[pk.Packet]:
        answer = pk.build(ep.target_ip, ep.client_ip, ep.target_port, ep.client_port,
                          seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, flags, window,
                          options=MSS if flags & pk.SYN else b"", payload=b"r" * data)
        headers = answer.to_bytes()[:answer.payload_off]
        self.table.response(pk.decode(headers, headers_only=True), at)
        return self.sent()

    def timers(self, at: float) -> list[pk.Packet]:
        self.table.run_timers(at)
        return self.sent()

    def sent(self) -> list[pk.Packet]:
        packets = [pk.decode(raw) for raw in self.table.take_packets()]
        for p in packets:
            assert pk.tcp_checksum_ok(p) and pk.ipv4_checksum_ok(p), p
            assert (p.dst, p.dport) == (TARGET, TARGET_PORT), p
        return packets

    def events(self) -> list:
        return self.table.take_events()

    @property
    def deadline(self):
        return self.table.next_deadline()

    def live_deadlines(self) -> list[float]:
        return [d for d in (s.next_deadline() for s in self.table.sessions()) if d is not None]

    def open(self, at: float, host: int, port: int) -> Endpoint:
        """SYN captured, SYN-ACK from the target 10 ms later, the client's ACK captured."""
        ep = endpoint(host, port)
        self.syn(at, host, port)
        self.target(at + 0.01, ep, SA, T_ISN, C_ISN + 1)
        self.client(at + 0.011, host, port, A, C_ISN + 1, O_ISN + 1)
        return ep


def addresses(p: pk.Packet) -> Endpoint:
    return Endpoint(p.src, p.sport, p.dst, p.dport)


# --- starting sessions -------------------------------------------------------------------


def test_a_captured_syn_starts_a_session_on_the_mapped_endpoint():
    r = TableReplay()
    out = r.syn(0.0, 7, 41000)
    ep = endpoint(7, 41000)
    assert [(addresses(p), seg(p)) for p in out] == [(ep, (pk.SYN, C_ISN, 0, b""))]
    assert r.events() == [SessionStarted(0.0, ep)]
    assert len(r.table) == 1
    assert r.table.table_stats.sessions_started == 1
    assert r.deadline == pytest.approx(1.0)  # the SYN retransmission


def test_a_mid_stream_segment_starts_a_session_with_a_fabricated_syn():
    r = TableReplay()
    out = r.client(0.0, 7, 41000, PA, C_ISN + 1, O_ISN + 1, GET)
    assert [seg(p) for p in out] == [(pk.SYN, C_ISN, 0, b"")]
    assert r.events() == [SessionStarted(0.0, endpoint(7, 41000))]


def test_pure_acks_fins_and_resets_of_unknown_flows_start_nothing():
    r = TableReplay()
    for i, flags in enumerate((A, FA, RA, pk.RST)):
        assert r.client(0.1 * i, 7, 41000 + i, flags, C_ISN + 1, O_ISN + 1) == []
    assert len(r.table) == 0
    assert r.events() == []
    assert r.deadline is None
    stats = r.table.table_stats
    assert (stats.client_packets_ignored, stats.sessions_started) == (4, 0)


def test_only_full_sessions_ignores_mid_stream_segments():
    r = TableReplay(only_full_sessions=True)
    assert r.client(0.0, 7, 41000, PA, C_ISN + 1, O_ISN + 1, GET) == []
    assert len(r.table) == 0
    assert r.table.table_stats.client_packets_ignored == 1


def test_packets_the_mapping_does_not_replay_are_ignored():
    r = TableReplay()
    assert r.client(0.0, 7, 41000, pk.SYN, C_ISN, options=MSS, dport=443) == []
    assert len(r.table) == 0
    assert r.table.table_stats.client_packets_ignored == 1


# --- routing responses -------------------------------------------------------------------


def test_responses_route_by_the_replayed_endpoint():
    r = TableReplay()
    r.syn(0.0, 7, 41000)
    r.syn(0.001, 8, 41000)
    r.syn(0.002, 7, 41001)
    r.events()
    b = endpoint(8, 41000)
    out = r.target(0.01, b, SA, T_ISN, C_ISN + 1)
    assert [(addresses(p), seg(p)) for p in out] == [(b, (A, C_ISN + 1, T_ISN + 1, b""))]
    assert r.events() == [(b, Established(0.01, fabricated=False))]
    states = {s.endpoint: s.state for s in r.table.sessions()}
    assert states == {endpoint(7, 41000): "syn-sent", b: "established",
                      endpoint(7, 41001): "syn-sent"}
    # The client's data goes to its own session, with that session's ACK.
    r.client(0.011, 8, 41000, A, C_ISN + 1, O_ISN + 1)
    out = r.client(0.02, 8, 41000, PA, C_ISN + 1, O_ISN + 1, GET)
    assert [(addresses(p), seg(p)) for p in out] == [(b, (PA, C_ISN + 1, T_ISN + 1, GET))]


def test_responses_for_no_session_are_counted_unroutable():
    r = TableReplay()
    r.syn(0.0, 7, 41000)
    assert r.target(0.01, endpoint(7, 41999), SA, T_ISN, C_ISN + 1) == []
    assert r.target(0.01, endpoint(9, 41000), A, T_ISN, C_ISN + 1) == []
    other_target = Endpoint(endpoint(7, 41000).client_ip, 41000, TARGET, 9090)
    assert r.target(0.01, other_target, SA, T_ISN, C_ISN + 1) == []
    assert r.table.table_stats.responses_unroutable == 3
    assert [s.state for s in r.table.sessions()] == ["syn-sent"]


# --- one heap for every session's timers -------------------------------------------------


def test_the_heap_runs_the_timers_of_many_sessions_in_deadline_order():
    r = TableReplay(syn_retries=2)
    starts = {41000: 0.0, 41001: 0.3, 41002: 0.1, 41003: 0.7}
    for port, at in sorted(starts.items(), key=lambda item: item[1]):
        r.syn(at, 7, port)
    r.events()
    fired = []  # (time, port, what) in the order packets come out
    while len(r.table):
        deadline = r.deadline
        assert deadline == min(r.live_deadlines())
        for p in r.timers(deadline):
            fired.append((round(deadline, 6), p.sport, pk.flags_text(p.flags)))
        freed = [e for e in r.events() if isinstance(e, SessionFreed)]
        assert all(e.at == deadline for e in freed)
    assert r.deadline is None
    # Each session: SYN again after 1 s and 2 s more, then the RST 4 s later; freed after
    # the 6 s linger. Across sessions, strictly by deadline.
    expected = []
    for port, at in starts.items():
        expected += [(round(at + 1.0, 6), port, "S"), (round(at + 3.0, 6), port, "S"),
                     (round(at + 7.0, 6), port, "R")]
    assert fired == sorted(expected)
    assert r.table.table_stats.sessions_freed == 4
    assert r.table.stats.dropped == {"syn_timeout": 4}


def test_an_earlier_deadline_of_a_session_is_picked_up_at_once():
    r = TableReplay()
    ep = r.open(0.0, 7, 41000)
    r.timers(1.0)  # the SYN retransmission timer is gone; only the keep-alive remains
    assert r.deadline == pytest.approx(720.011)  # -k from the client's ACK
    r.client(2.0, 7, 41000, PA, C_ISN + 1, O_ISN + 1, GET)
    assert r.deadline == min(r.live_deadlines()) == pytest.approx(2.2)  # the RTO
    out = r.timers(2.2)
    assert [(addresses(p), seg(p)) for p in out] == [(ep, (PA, C_ISN + 1, T_ISN + 1, GET))]


def test_a_later_deadline_costs_at_most_one_early_wake_up():
    r = TableReplay()
    r.syn(0.0, 7, 41000)
    r.target(0.01, endpoint(7, 41000), SA, T_ISN, C_ISN + 1)
    # The session's next deadline moved from 1 s (SYN) to the -k time; the heap still
    # holds the old entry, which is never later than the session's real deadline.
    assert r.deadline <= min(r.live_deadlines())
    assert r.timers(r.deadline) == []
    assert r.deadline == min(r.live_deadlines())


def _target_silent_until_a_rounded_deadline() -> tuple[TableReplay, Endpoint]:
    r = TableReplay(session_timeout=600.0)
    ep = r.open(0.0, 7, 41000)
    r.client(0.02, 7, 41000, PA, C_ISN + 1, O_ISN + 1, GET)
    r.target(635.570762, ep, A, T_ISN + 1, C_ISN + 1 + len(GET))
    return r, ep


def test_running_timers_exactly_at_a_deadline_terminates():
    """A session whose timer would not fire at its own deadline keeps re-arming it in the
    past, and the table would run it forever. 635.570762 + 600 rounds down in floating
    point, which used to do that with the -t timer."""
    # The session alone first, so that the fault fails here instead of hanging the table.
    alone, _ = _target_silent_until_a_rounded_deadline()
    session = next(iter(alone.table.sessions()))
    due = session.next_deadline()
    session.handle_timer(due)
    later = session.next_deadline()
    assert later is None or later > due, "the timer re-armed itself at its own deadline"
    r, ep = _target_silent_until_a_rounded_deadline()
    deadline = r.deadline
    assert deadline == 635.570762 + 600.0
    out = r.timers(deadline)
    assert [p.flags for p in out] == [RA]
    assert (ep, Dropped(deadline, "target_timeout")) in r.events()


# --- ending and freeing --------------------------------------------------------------------


def test_a_finished_session_is_freed_after_linger_and_its_endpoint_reused():
    r = TableReplay(linger=6.0)
    ep = r.open(0.0, 7, 41000)
    r.client(0.02, 7, 41000, PA, C_ISN + 1, O_ISN + 1, GET)
    r.target(0.03, ep, PA, T_ISN + 1, C_ISN + 1 + len(GET), data=100)
    r.client(0.04, 7, 41000, FA, C_ISN + 1 + len(GET), O_ISN + 101)
    r.target(0.05, ep, FA, T_ISN + 101, C_ISN + 2 + len(GET))
    assert r.events()[-1] == (ep, Closed(0.05, "completed"))
    assert len(r.table) == 1 and r.deadline == pytest.approx(6.05)
    assert r.timers(6.0) == [] and len(r.table) == 1
    r.timers(6.05)
    assert r.events() == [SessionFreed(6.05, ep)]
    assert len(r.table) == 0 and r.deadline is None
    assert r.table.table_stats.sessions_freed == 1
    # Late answers now have nowhere to go.
    assert r.target(6.1, ep, FA, T_ISN + 101, C_ISN + 2 + len(GET)) == []
    assert r.table.table_stats.responses_unroutable == 1
    # Another real client that maps to the same endpoint may use it now.
    out = r.syn(7.0, 7, 41000, isn=5_000_000, net=6)
    assert [(addresses(p), seg(p)) for p in out] == [(ep, (pk.SYN, 5_000_000, 0, b""))]
    assert r.events() == [SessionStarted(7.0, ep)]


def test_max_sessions_refuses_new_sessions_and_counts_them():
    r = TableReplay(max_sessions=2)
    r.syn(0.0, 7, 41000)
    r.syn(0.0, 7, 41001)
    r.events()
    assert r.syn(0.1, 7, 41002) == []
    assert r.client(0.2, 7, 41003, PA, C_ISN + 1, O_ISN + 1, GET) == []
    assert len(r.table) == 2
    assert r.events() == []
    stats = r.table.table_stats
    assert (stats.sessions_started, stats.sessions_refused) == (2, 2)
    # Room again once a session is freed.
    r.table.shutdown(0.3)
    r.sent()
    r.timers(0.3 + r.config.linger)
    assert len(r.table) == 0
    assert [p.flags for p in r.syn(7.0, 7, 41002)] == [pk.SYN]


# --- 4-tuple reuse ----------------------------------------------------------------------


def test_a_new_isn_on_the_same_flow_supersedes_the_session():
    r = TableReplay()
    ep = r.open(0.0, 7, 41000)
    r.client(0.02, 7, 41000, PA, C_ISN + 1, O_ISN + 1, GET)
    r.events()
    # The client's SYN retransmission is not a new connection.
    assert r.syn(0.03, 7, 41000) == []
    assert r.table.table_stats.sessions_superseded == 0
    out = r.syn(5.0, 7, 41000, isn=123_456_789)
    assert [(addresses(p), seg(p)) for p in out] == [
        (ep, (RA, C_ISN + 1 + len(GET), T_ISN + 1, b"")),  # the old connection, reset
        (ep, (pk.SYN, 123_456_789, 0, b""))]               # the new one
    assert r.events() == [(ep, Dropped(5.0, "superseded")), SessionFreed(5.0, ep),
                          SessionStarted(5.0, ep)]
    assert r.table.table_stats.sessions_superseded == 1
    assert len(r.table) == 1
    # The target's answers now belong to the new connection.
    out = r.target(5.01, ep, SA, 4_000_000, 123_456_790)
    assert [seg(p) for p in out] == [(A, 123_456_790, 4_000_001, b"")]
    assert r.events() == [(ep, Established(5.01, fabricated=False))]
    # The old session's timers (its linger ends at 11 s) are gone with it.
    assert r.timers(12.0) == [] and r.events() == []
    assert len(r.table) == 1 and r.deadline == min(r.live_deadlines())


def test_a_session_whose_client_fin_was_captured_finishes_its_close_when_the_4_tuple_is_reused():
    """A loaded owner can see a client's new SYN on a reused 4-tuple before the old
    connection's close was replayed. Every client byte and the FIN are in hand, so the old
    session finishes on its own endpoint and the new connection gets another port."""
    r = TableReplay()
    ep = r.open(0.0, 7, 41000)
    r.client(0.02, 7, 41000, PA, C_ISN + 1, O_ISN + 1, GET)
    # The online server answered 300 bytes and the client closed; the FIN waits for the
    # target's answer to the request.
    assert r.client(0.03, 7, 41000, FA, C_ISN + 1 + len(GET), O_ISN + 301) == []
    r.events()
    out = r.syn(0.04, 7, 41000, isn=123_456_789)
    assert [seg(p) for p in out] == [(pk.SYN, 123_456_789, 0, b"")], "no RST for the old connection"
    moved = addresses(out[0])
    assert moved.client_port != ep.client_port
    assert r.events() == [SessionStarted(0.04, moved)]
    assert r.table.table_stats.sessions_superseded == 1 and len(r.table) == 2
    # The target answers the old request: the old session sends its FIN and closes cleanly.
    out = r.target(0.05, ep, PA, T_ISN + 1, C_ISN + 1 + len(GET), data=300)
    fin = C_ISN + 1 + len(GET)
    assert [(addresses(p), seg(p)) for p in out] == [(ep, (FA, fin, T_ISN + 301, b""))]
    r.target(0.06, ep, FA, T_ISN + 301, fin + 1)
    assert (ep, Closed(0.06, "completed")) in r.events()
    assert r.table.stats.dropped == {} and r.table.stats.closed == {"completed": 1}
    # The new connection is untouched and carries on; the old one is freed after its linger.
    out = r.target(0.07, moved, SA, 4_000_000, 123_456_790)
    assert [seg(p) for p in out] == [(A, 123_456_790, 4_000_001, b"")]
    r.timers(0.06 + r.config.linger)
    assert SessionFreed(0.06 + r.config.linger, ep) in r.events()
    assert len(r.table) == 1


def test_new_data_on_a_lingering_flow_starts_a_new_session():
    r = TableReplay()
    ep = r.open(0.0, 7, 41000)
    r.client(0.02, 7, 41000, RA, C_ISN + 1, O_ISN + 1)  # the client resets
    assert r.events()[-1] == (ep, Closed(0.02, "client_reset"))
    r.sent()
    # A late retransmission belongs to the old connection: nothing happens.
    assert r.client(0.03, 7, 41000, PA, C_ISN - 9, O_ISN + 1, b"0123456789") == []
    assert r.events() == []
    # Data beyond anything the old connection sent: the client reused the 4-tuple, and
    # the new connection is joined mid-stream.
    out = r.client(0.5, 7, 41000, PA, 7_000_001, 8_000_001, GET)
    assert [seg(p) for p in out] == [(pk.SYN, 7_000_000, 0, b"")]
    assert r.events() == [SessionFreed(0.5, ep), SessionStarted(0.5, ep)]
    assert r.table.table_stats.sessions_superseded == 1
    assert r.table.stats.closed == {"client_reset": 1} and r.table.stats.dropped == {}


def test_the_rest_of_a_dropped_connection_is_skipped_until_its_fin():
    """An upload whose session is dropped (here its buffer bound) must not have the rest of
    its body joined mid-stream as a new session: the target would take body bytes for a
    request. The rest is skipped and counted up to the client's FIN."""
    r = TableReplay(max_bytes=4000)
    ep = r.open(0.0, 7, 41000)
    chunk = b"b" * 1400
    seq = C_ISN + 1
    for i in range(3):   # the target acknowledges nothing: the buffer fills
        r.client(0.02 + i / 1000, 7, 41000, PA, seq, O_ISN + 1, chunk)
        seq += len(chunk)
    assert r.events()[-1] == (ep, Dropped(0.022, "buffer_full"))
    r.sent()
    for i in range(5):   # the rest of the body, during the linger and after it
        at = 0.03 + i * 3
        r.timers(at)
        assert r.client(at, 7, 41000, PA, seq, O_ISN + 1, chunk) == []
        seq += len(chunk)
    # What the owner may hand to the kernel filter: the connection and how busy it was.
    [flow] = r.table.skipping
    assert r.table.take_skip_hits() == {flow: 5} and r.table.take_skip_hits() == {}
    assert r.client(15.1, 7, 41000, FA, seq, O_ISN + 1) == []
    assert not r.table.skipping   # the FIN ended the skipping
    stats = r.table.table_stats
    assert stats.flows_skipped == 1 and stats.packets_skipped == 6
    assert stats.sessions_started == 1
    # The 4-tuple reused for a new connection: its SYN starts a session as usual.
    assert [seg(p)[0] for p in r.syn(20.0, 7, 41000, isn=5_000_000)] == [pk.SYN]
    assert stats.sessions_started == 2


def test_a_dropped_connection_that_the_client_had_finished_is_not_skipped():
    r = TableReplay(session_timeout=1.0)
    ep = r.open(0.0, 7, 41000)
    r.client(0.02, 7, 41000, FA | pk.PSH, C_ISN + 1, O_ISN + 1, GET)
    r.timers(5.0)
    assert r.events()[-1] == (ep, Dropped(5.0, "target_timeout"))
    assert r.table.table_stats.flows_skipped == 0


# --- shutdown and conflicts -------------------------------------------------------------


def test_shutdown_resets_every_live_session():
    r = TableReplay()
    a = r.open(0.0, 7, 41000)
    r.syn(0.1, 7, 41001)  # still in SYN-SENT
    c = r.open(0.2, 7, 41002)
    r.client(0.3, 7, 41002, RA, C_ISN + 1, O_ISN + 1)  # already over: lingering
    r.sent()
    r.events()
    r.table.shutdown(1.0)
    out = r.sent()
    assert sorted((p.sport, seg(p)) for p in out) == [
        (41000, (RA, C_ISN + 1, T_ISN + 1, b"")),
        (41001, (pk.RST, C_ISN + 1, 0, b"")),
    ]
    ends = sorted((ep.client_port, e) for ep, e in r.events())
    assert ends == [(41000, Dropped(1.0, "shutdown")), (41001, Dropped(1.0, "shutdown"))]
    assert r.table.stats.dropped == {"shutdown": 2}
    assert a != c
    # Everything is freed once the linger is over.
    r.timers(1.0 + r.config.linger)
    assert len(r.table) == 0


def test_two_flows_wanting_one_endpoint_get_different_ports_and_are_never_mixed():
    r = TableReplay()
    ep = r.open(0.0, 7, 41000)               # 198.18.5.7:41000
    out = r.syn(0.1, 7, 41000, isn=777, net=6)  # 198.18.6.7:41000 wants the same endpoint
    assert len(out) == 1 and out[0].sport != 41000 and out[0].seq == 777
    moved = Endpoint(ep.client_ip, out[0].sport, ep.target_ip, ep.target_port)
    assert r.table.ports.stats.moved == 1
    assert len(r.table) == 2
    # Each flow's data goes to its own session, on its own endpoint.
    out = r.client(0.3, 7, 41000, PA, C_ISN + 1, O_ISN + 1, GET)
    assert [(p.sport, seg(p)) for p in out] == [(41000, (PA, C_ISN + 1, T_ISN + 1, GET))]
    assert r.events()[-1] == (ep, RequestSent(0.3))
    assert moved.client_port != ep.client_port


# --- copies (-n): one session per copy of a flow -----------------------------------------


def test_each_copy_of_a_flow_gets_its_own_session_and_endpoint():
    r = TableReplay(copies=2)
    out = r.syn(0.0, 7, 41000)
    first, second = endpoint(7, 41000, 0), endpoint(7, 41000, 1)
    assert [(addresses(p), seg(p)) for p in out] == [
        (first, (pk.SYN, C_ISN, 0, b"")), (second, (pk.SYN, C_ISN, 0, b""))]
    assert r.events() == [SessionStarted(0.0, first), SessionStarted(0.0, second)]
    assert len(r.table) == 2
    # Each copy follows its own target: only the second one is answered yet.
    out = r.target(0.01, second, SA, 7_000_000, C_ISN + 1)
    assert [(addresses(p), seg(p)) for p in out] == [(second, (A, C_ISN + 1, 7_000_001, b""))]
    r.client(0.011, 7, 41000, A, C_ISN + 1, O_ISN + 1)
    out = r.client(0.02, 7, 41000, PA, C_ISN + 1, O_ISN + 1, GET)
    assert [(addresses(p), seg(p)) for p in out] == [(second, (PA, C_ISN + 1, 7_000_001, GET))]
    # The first copy held the request (its connection is not up) and sends it now, from
    # its own address and with its own target's sequence numbers.
    out = r.target(0.03, first, SA, 9_000_000, C_ISN + 1)
    assert [(addresses(p), seg(p)) for p in out] == [
        (first, (A, C_ISN + 1, 9_000_001, b"")), (first, (PA, C_ISN + 1, 9_000_001, GET))]


def test_a_new_isn_supersedes_every_copy_of_the_flow():
    r = TableReplay(copies=2)
    first, second = endpoint(7, 41000, 0), endpoint(7, 41000, 1)
    r.syn(0.0, 7, 41000)
    r.target(0.01, first, SA, T_ISN, C_ISN + 1)
    r.events()
    out = r.syn(1.0, 7, 41000, isn=555_555)
    assert [(addresses(p), seg(p)) for p in out] == [
        (first, (RA, C_ISN + 1, T_ISN + 1, b"")),   # established: reset with its ACK
        (second, (pk.RST, C_ISN + 1, 0, b"")),      # SYN-SENT: a bare reset
        (first, (pk.SYN, 555_555, 0, b"")), (second, (pk.SYN, 555_555, 0, b""))]
    assert r.table.table_stats.sessions_superseded == 1
    assert r.table.stats.dropped == {"superseded": 2}
    assert len(r.table) == 2


def test_a_copy_beyond_max_sessions_is_refused_while_the_others_start():
    r = TableReplay(copies=2, max_sessions=3)
    r.syn(0.0, 7, 41000)
    out = r.syn(0.1, 8, 41000)
    assert [addresses(p) for p in out] == [endpoint(8, 41000, 0)]
    stats = r.table.table_stats
    assert (stats.sessions_started, stats.sessions_refused, stats.client_packets_ignored) == (3, 1, 0)


def test_copies_end_and_are_freed_independently():
    r = TableReplay(copies=2, linger=1.0)
    first, second = endpoint(7, 41000, 0), endpoint(7, 41000, 1)
    r.syn(0.0, 7, 41000)
    r.target(0.01, first, SA, T_ISN, C_ISN + 1)
    r.target(0.01, second, SA, T_ISN, C_ISN + 1)
    r.client(0.011, 7, 41000, A, C_ISN + 1, O_ISN + 1)
    r.target(0.02, second, RA, T_ISN + 1, C_ISN + 1)  # the second target resets
    r.events()
    r.timers(1.02)
    assert r.events() == [SessionFreed(1.02, second)]
    assert len(r.table) == 1
    # The flow goes on in the first copy alone.
    out = r.client(2.0, 7, 41000, PA, C_ISN + 1, O_ISN + 1, GET)
    assert [(addresses(p), seg(p)) for p in out] == [(first, (PA, C_ISN + 1, T_ISN + 1, GET))]


def test_a_copy_that_ended_does_not_reset_the_copies_still_running():
    """In-order data after one copy's target reset is not a reused 4-tuple: the copies
    still running judge whether a packet starts a new connection."""
    r = TableReplay(copies=2)
    first, second = endpoint(7, 41000, 0), endpoint(7, 41000, 1)
    r.syn(0.0, 7, 41000)
    r.target(0.01, first, SA, T_ISN, C_ISN + 1)
    r.target(0.01, second, SA, T_ISN, C_ISN + 1)
    r.client(0.011, 7, 41000, A, C_ISN + 1, O_ISN + 1)
    r.target(0.02, first, RA, T_ISN + 1, C_ISN + 1)  # the first copy's target resets
    assert r.events()[-1] == (first, Closed(0.02, "target_reset"))
    r.sent()
    out = r.client(0.03, 7, 41000, PA, C_ISN + 1, O_ISN + 1, GET)
    assert [(addresses(p), seg(p)) for p in out] == [(second, (PA, C_ISN + 1, T_ISN + 1, GET))]
    assert r.events() == [(second, RequestSent(0.03))]
    assert r.table.table_stats.sessions_superseded == 0
    # A real reuse of the 4-tuple still supersedes every copy.
    out = r.syn(1.0, 7, 41000, isn=555_555)
    assert [(addresses(p), p.flags) for p in out] == [
        (second, RA), (first, pk.SYN), (second, pk.SYN)]
    assert r.table.table_stats.sessions_superseded == 1


# --- the heap under random traffic --------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_heap_never_misses_a_deadline_under_random_traffic(data):
    """Random SYNs (new ISNs too), data, target answers and timer runs over three flows with
    two copies each: the table never reports a deadline later than a session's own, leaves
    no session with an overdue timer after run_timers, and holds no finished session."""
    r = TableReplay(copies=2, max_sessions=5, syn_retries=1, linger=0.5, gap_timeout=0.3,
                    session_timeout=2.0, keepalive_timeout=3.0)
    now = 0.0
    isns = {host: C_ISN for host in (7, 8, 9)}
    for _ in range(data.draw(st.integers(1, 40))):
        host = data.draw(st.sampled_from((7, 8, 9)))
        kind = data.draw(st.sampled_from(("syn", "data", "synack", "answer", "reset", "timers")))
        now += data.draw(st.sampled_from((0.0, 0.01, 0.2, 1.0)))
        if kind == "syn":
            if data.draw(st.booleans()):
                isns[host] += 1_000_000  # the client reuses the 4-tuple
            r.syn(now, host, 41000, isn=isns[host])
        elif kind == "data":
            offset = data.draw(st.sampled_from((0, 0, 500)))  # in order, or behind a gap
            r.client(now, host, 41000, PA, isns[host] + 1 + offset, O_ISN + 1, GET)
        else:
            ep = endpoint(host, 41000, data.draw(st.integers(0, 1)))
            if kind == "synack":
                r.target(now, ep, SA, T_ISN, isns[host] + 1)
            elif kind == "answer":
                r.target(now, ep, PA, T_ISN + 1, isns[host] + 1 + len(GET), data=100)
            elif kind == "reset":
                r.target(now, ep, RA, T_ISN + 1, isns[host] + 1)
            else:
                if data.draw(st.booleans()) and r.deadline is not None:
                    now = max(now, r.deadline)
                r.timers(now)
                for s in r.table.sessions():
                    assert not s.finished
                    assert s.next_deadline() is None or s.next_deadline() > now
                assert r.deadline is None or r.deadline > now
        r.events()
        deadlines = r.live_deadlines()
        if deadlines:
            assert r.deadline is not None and r.deadline <= min(deadlines)
        endpoints = [s.endpoint for s in r.table.sessions()]
        assert len(endpoints) == len(set(endpoints)) == len(r.table) <= 5


def _partial(pkt: pk.Packet) -> pk.Packet:
    raw = bytearray(pkt.to_bytes())
    off = pkt.tcp_off + 16
    raw[off:off + 2] = b"\0\0"
    raw[off:off + 2] = (pk._pseudo_sum(raw, pkt.tcp_off) % 0xFFFF).to_bytes(2, "big")
    return pk.decode(bytes(raw))


@pytest.mark.parametrize("copies", [1, 3])
def test_partial_checksums_from_an_offloading_host_are_sent_complete(copies):
    """A capture on a host with checksum offload (veth, virtio-net, containers) carries
    partial TCP checksums: every copy of every replayed segment must verify anyway."""
    replay = TableReplay(copies=copies)
    table = replay.table
    client = real_client(7)
    syn = pk.build(client, ONLINE, 40000, ONLINE_PORT, C_ISN, 0, pk.SYN, 29200, options=MSS)
    table.client_packet(_partial(syn), 0.0)
    sent = replay.sent()
    assert len(sent) == copies and all(pk.tcp_checksum_ok(p) for p in sent)
    for copy in range(copies):
        ep = endpoint(7, 40000, copy)
        replay.target(0.001, ep, SA, T_ISN, C_ISN + 1)
    body = pk.build(client, ONLINE, 40000, ONLINE_PORT, C_ISN + 1, O_ISN + 1, PA, 29200,
                    payload=GET * 40)
    table.client_packet(_partial(body), 0.002)
    data = [p for p in replay.sent() if p.payload_len]
    assert len(data) == copies
    assert all(pk.tcp_checksum_ok(p) for p in data)
    assert table.table_stats.checksums_completed == 2


