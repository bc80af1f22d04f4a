"""The session's state table, timer table, stream ordering and RTT estimator, as units."""

import pytest

from tcpcopy.capture import packet as pk
from tcpcopy.session import states as st
from tcpcopy.session.rtt import RttEstimator
from tcpcopy.session.stream import AHEAD, IN_ORDER, OLD, ClientStream, Segment

LIVE = (st.IDLE, st.SYN_SENT, st.ESTABLISHED, st.RECONNECTING)


def reachable(start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        state = todo.pop()
        for (source, _trigger), target in st.TRANSITIONS.items():
            if source == state and target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_every_state_is_reachable_from_idle_and_every_live_state_can_end():
    assert reachable(st.IDLE) == set(st.STATES)
    for state in LIVE:
        assert st.next_state(state, st.END) == st.LINGER
        assert st.FINISHED in reachable(state)


def test_the_end_is_reported_once_and_finished_is_final():
    for state in (st.LINGER, st.FINISHED):
        with pytest.raises(st.StateError):
            st.next_state(state, st.END)
    assert not [key for key in st.TRANSITIONS if key[0] == st.FINISHED]


def test_a_move_the_table_lacks_is_refused_by_name():
    with pytest.raises(st.StateError, match="'idle' has no transition on 'synack'"):
        st.next_state(st.IDLE, st.SYNACK)
    with pytest.raises(st.StateError):
        st.next_state(st.ESTABLISHED, st.SEND_SYN)


def test_the_timer_table_names_each_slot():
    names = [name for name, _armed, _expiry in st.TIMERS]
    assert len(names) == st.TIMER_COUNT == len(set(names))
    slots = {"syn": st.SYN_TIMER, "reconnect": st.RECONNECT_TIMER, "rto": st.RTO_TIMER,
             "quiet": st.QUIET_TIMER, "delack": st.DELACK_TIMER, "persist": st.PERSIST_TIMER,
             "gap": st.GAP_TIMER, "close": st.CLOSE_TIMER, "watchdog": st.WATCHDOG_TIMER,
             "linger": st.LINGER_TIMER}
    assert [names[slot] for slot in slots.values()] == list(slots)
    assert st.LINGER_TIMER == st.TIMER_COUNT - 1   # handle_timer runs it apart, first
    assert st.GAP_TIMER not in st.CONNECTION_TIMERS and st.WATCHDOG_TIMER not in st.CONNECTION_TIMERS


def test_rtt_estimator_follows_rfc6298():
    rtt = RttEstimator(initial_rto=1.0, min_rto=0.2, max_rto=10.0)
    rtt.update_rto()
    assert rtt.rto == 1.0 and rtt.smoothed_or(0.01) == 0.01   # no sample yet
    rtt.sample(0.1)
    assert (rtt.srtt, rtt.rttvar) == (0.1, 0.05)
    rtt.update_rto()
    assert rtt.rto == pytest.approx(0.3)                       # SRTT + 4 RTTVAR
    rtt.sample(0.3)
    assert rtt.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.2)
    assert rtt.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.3)
    rtt.sample(-1.0)                                           # a clock step is no sample
    assert rtt.srtt == pytest.approx(0.125)
    for _ in range(8):
        rtt.back_off()
    assert rtt.rto == 10.0                                     # doubled up to max_rto
    rtt.restart()
    assert rtt.rto == 1.0


def test_rto_has_a_floor():
    rtt = RttEstimator(initial_rto=1.0, min_rto=0.2, max_rto=10.0)
    rtt.sample(0.001)
    rtt.update_rto()
    assert rtt.rto == 0.2


def segment(start: int, data: bytes = b"x" * 10, flags: int = pk.PSH | pk.ACK) -> Segment:
    pkt = pk.build(b"\xc6\x12\x00\x01", b"\xc6\x12\x00\x02", 1000, 80, start & 0xFFFFFFFF, 1,
                   flags, 65535, payload=data)
    return Segment(pkt, start)


def test_stream_places_segments_against_the_next_expected_byte():
    stream = ClientStream()
    stream.next_expected = 100
    assert stream.place(segment(100)) == IN_ORDER
    assert stream.place(segment(95)) == IN_ORDER    # overlaps: carries new bytes
    assert stream.place(segment(90)) == OLD         # ends at 100: a retransmission
    assert stream.place(segment(110)) == AHEAD
    fin = segment(100, b"", pk.FIN | pk.ACK)
    assert fin.end == 101 and stream.place(fin) == IN_ORDER


def test_stream_unwraps_across_the_32_bit_wrap():
    stream = ClientStream()
    stream.next_expected = (1 << 32) - 5
    assert stream.unwrap(5) == (1 << 32) + 5


def test_held_segments_come_back_in_order_once_reached():
    stream = ClientStream()
    stream.next_expected = 100
    assert stream.hold(segment(130)) and stream.hold(segment(110))
    assert not stream.hold(segment(110))            # held once
    assert stream.take_reached() == []
    stream.next_expected = 120
    assert [s.start for s in stream.take_reached()] == [110]
    stream.next_expected = 140
    assert [s.start for s in stream.take_reached()] == [130] and not stream.held
