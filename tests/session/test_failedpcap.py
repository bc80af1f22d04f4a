"""The pure part of --pcap-failed: what sessions keep, which earn a file, its name and bytes.

Sessions are stand-ins (an object with an ``endpoint``), as the engine's sessions are to the
keeper: it only tells one session on an endpoint from the next by identity.
"""

from __future__ import annotations

import datetime
import socket
import struct

import pytest
from hypothesis import given, strategies as st

from tcpcopy.capture import packet as pk
from tcpcopy.session import engine
from tcpcopy.session.engine import Endpoint
from tcpcopy.session.failedpcap import (
    HEAD_PACKETS, LATE_FOR, MIN_FILE_BYTES, FailedSessions, PcapFailedOptions, failure_reason, file_name, utc_stamp,
)
from tcpcopy.session.table import SHED
from tests.fixtures.pcapfile import LINKTYPE_RAW, parse_pcap

CLIENT_IP, ONLINE_IP = socket.inet_aton("198.18.5.7"), socket.inet_aton("198.18.0.10")
REPLAYED_IP, TARGET_IP = socket.inet_aton("198.18.3.7"), socket.inet_aton("198.18.0.2")
ENDPOINT = Endpoint(REPLAYED_IP, 40321, TARGET_IP, 8080)
T0 = 1_747_131_302.123   # 2025-05-13 10:15:02.123 UTC
GET = b"GET /changed.html HTTP/1.1\r\nHost: a\r\n\r\n"


class Stub:
    def __init__(self, endpoint: Endpoint = ENDPOINT):
        self.endpoint = endpoint


def captured(flags: int, payload: bytes = b"", seq: int = 1000) -> bytes:
    return pk.build(CLIENT_IP, ONLINE_IP, 40321, 80, seq, 7, flags, 502, payload=payload).to_bytes()


def replayed(flags: int, payload: bytes = b"", seq: int = 1000, endpoint: Endpoint = ENDPOINT) -> bytes:
    return pk.build(endpoint.client_ip, endpoint.target_ip, endpoint.client_port, endpoint.target_port,
                    seq, 9, flags, 502, payload=payload).to_bytes()


def answer(flags: int, payload: bytes = b"", seq: int = 9000, ip_id: int = 1) -> bytes:
    """The target's answer whole, as ANSWERS carries it."""
    return pk.build(TARGET_IP, REPLAYED_IP, 8080, 40321, seq, 1001, flags, 65535, payload=payload,
                    ip_id=ip_id).to_bytes()


def headers_of(whole: bytes) -> bytes:
    """The same answer as RESPONSES carries it: IP and TCP headers only."""
    return whole[:pk.decode(whole).payload_off]


def one_session(keeper: FailedSessions, session: Stub, at: float = T0) -> None:
    keeper.client_packet([session], captured(pk.SYN), at)
    keeper.sent(session, [replayed(pk.SYN)], at + 0.001)
    keeper.answer(session, headers_of(answer(pk.SYN | pk.ACK)), at + 0.002)


def records(made) -> list:
    pcap = parse_pcap(made.content)
    assert pcap.linktype == LINKTYPE_RAW
    return pcap.records


# ---------------------------------------------------------------------- which endings fail


@pytest.mark.parametrize("reason", [engine.SYN_TIMEOUT, engine.TARGET_REFUSED, engine.TARGET_TIMEOUT,
                                    engine.RETRANSMIT_LIMIT, engine.RECONNECT_LIMIT, engine.CAPTURE_GAP,
                                    engine.BUFFER_FULL, engine.MEMORY_BUDGET])
def test_every_drop_of_the_replay_itself_is_a_failure(reason):
    assert failure_reason(True, reason) == reason


@pytest.mark.parametrize("reason", ["shutdown", SHED, "superseded"])
def test_drops_the_owner_or_a_reused_4_tuple_decided_are_not(reason):
    assert failure_reason(True, reason) is None


def test_of_the_closes_only_a_target_reset_is_a_failure():
    assert failure_reason(False, engine.TARGET_RESET) == engine.TARGET_RESET
    for normal in (engine.COMPLETED, engine.CLIENT_RESET, engine.IDLE_TIMEOUT):
        assert failure_reason(False, normal) is None


# ---------------------------------------------------------------------- files


def test_a_session_that_went_well_gets_no_file_and_gives_its_memory_back():
    keeper = FailedSessions(PcapFailedOptions("/d"))
    session = Stub()
    one_session(keeper, session)
    assert keeper.counters.memory_bytes > 0
    keeper.ended(ENDPOINT, False, engine.COMPLETED)
    assert keeper.freed(ENDPOINT) is None
    assert keeper.counters.memory_bytes == 0 and keeper.counters.written == 0
    assert keeper.summary()["sessions_kept"] == 0


def test_a_dropped_session_gets_a_file_of_its_client_replayed_and_answer_packets_in_order():
    keeper = FailedSessions(PcapFailedOptions("/d"))
    session = Stub()
    one_session(keeper, session)
    keeper.ended(ENDPOINT, True, engine.TARGET_TIMEOUT)
    made = keeper.freed(ENDPOINT)
    assert made.name == "20250513T101502.123Z_198.18.3.7.40321-198.18.0.2.8080_target_timeout.pcap"
    kept = records(made)
    assert [pk.decode(r.data).dport for r in kept] == [80, 8080, 40321]
    assert pk.decode(kept[0].data).src == CLIENT_IP          # as captured
    assert pk.decode(kept[1].data).src == REPLAYED_IP        # as replayed
    assert pk.decode(kept[2].data).flags == pk.SYN | pk.ACK  # the target's answer
    assert [round(r.ts, 3) for r in kept] == [round(T0 + d, 3) for d in (0, 0.001, 0.002)]
    assert keeper.counters.written == 1 and keeper.counters.memory_bytes == 0


def test_a_session_answered_differently_gets_a_file_named_by_the_verdict_and_its_ending_too():
    keeper = FailedSessions(PcapFailedOptions("/d"))
    other = Endpoint(REPLAYED_IP, 40322, TARGET_IP, 8080)
    one_session(keeper, Stub())
    one_session(keeper, Stub(other))
    keeper.differs(ENDPOINT, "body_differs")
    keeper.differs(ENDPOINT, "status_differs")   # the first verdict names it
    keeper.differs(other, "status_differs")
    keeper.ended(ENDPOINT, False, engine.COMPLETED)
    keeper.ended(other, True, engine.RETRANSMIT_LIMIT)
    assert keeper.freed(ENDPOINT).name.endswith("_body_differs.pcap")
    assert keeper.freed(other).name.endswith("_retransmit_limit+status_differs.pcap")


def test_files_stop_at_the_cap_and_the_sessions_beyond_are_counted():
    keeper = FailedSessions(PcapFailedOptions("/d", max_files=2))
    made = []
    for port in range(5):
        endpoint = Endpoint(REPLAYED_IP, 1000 + port, TARGET_IP, 8080)
        keeper.sent(Stub(endpoint), [replayed(pk.SYN, endpoint=endpoint)], T0)
        keeper.ended(endpoint, True, engine.SYN_TIMEOUT)
        made.append(keeper.freed(endpoint))
    assert [m is not None for m in made] == [True, True, False, False, False]
    assert (keeper.counters.written, keeper.counters.not_written) == (2, 3)


def test_a_file_that_could_not_be_written_is_counted_as_not_written_and_frees_its_slot():
    keeper = FailedSessions(PcapFailedOptions("/d", max_files=1))
    one_session(keeper, Stub())
    keeper.ended(ENDPOINT, True, engine.SYN_TIMEOUT)
    assert keeper.freed(ENDPOINT) is not None
    keeper.write_failed()
    counters = keeper.counters
    assert (counters.written, counters.not_written, counters.write_errors) == (0, 1, 1)


def test_at_the_end_every_failed_or_differing_session_still_kept_gets_its_file():
    keeper = FailedSessions(PcapFailedOptions("/d"))
    endpoints = [Endpoint(REPLAYED_IP, 2000 + i, TARGET_IP, 8080) for i in range(3)]
    for endpoint in endpoints:
        keeper.sent(Stub(endpoint), [replayed(pk.SYN, endpoint=endpoint)], T0)
    keeper.ended(endpoints[0], True, engine.TARGET_REFUSED)
    keeper.differs(endpoints[1], "length_differs")
    for endpoint in endpoints:
        keeper.ended(endpoint, True, "shutdown")
    names = sorted(made.name for made in keeper.finish_all())
    assert len(names) == 2
    assert any("2000-" in n and n.endswith("_target_refused.pcap") for n in names)
    assert any("2001-" in n and n.endswith("_length_differs.pcap") for n in names)
    assert keeper.counters.memory_bytes == 0


def test_an_answer_kept_as_headers_and_whole_appears_once_whole_where_its_headers_came():
    keeper = FailedSessions(PcapFailedOptions("/d"))
    session = Stub()
    body = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo"
    whole = answer(pk.PSH | pk.ACK, body, ip_id=7)
    keeper.sent(session, [replayed(pk.PSH | pk.ACK, GET, seq=1001)], T0)
    keeper.answer(session, headers_of(whole), T0 + 0.01)
    keeper.answer(session, headers_of(answer(pk.ACK, seq=9000 + len(body), ip_id=8)), T0 + 0.02)
    keeper.whole_answer(ENDPOINT, whole, T0 + 0.03)
    keeper.differs(ENDPOINT, "body_differs")
    kept = records(keeper.freed(ENDPOINT))
    assert [r.data for r in kept[1:]] == [whole, headers_of(answer(pk.ACK, seq=9000 + len(body), ip_id=8))]
    assert round(kept[1].ts, 3) == round(T0 + 0.01, 3)


def test_times_in_a_file_never_go_back():
    keeper = FailedSessions(PcapFailedOptions("/d"))
    session = Stub()
    keeper.sent(session, [replayed(pk.SYN)], T0 + 1)
    keeper.client_packet([session], captured(pk.ACK), T0)   # the turn's time, before the send's
    keeper.ended(ENDPOINT, True, engine.SYN_TIMEOUT)
    assert [r.ts for r in records(keeper.freed(ENDPOINT))] == [pytest.approx(T0 + 1)] * 2


def test_a_header_record_says_how_long_the_answer_was_on_the_wire():
    keeper = FailedSessions(PcapFailedOptions("/d"))
    whole = answer(pk.PSH | pk.ACK, b"x" * 500)
    keeper.answer(Stub(), headers_of(whole), T0)
    keeper.ended(ENDPOINT, False, engine.TARGET_RESET)
    (record,) = records(keeper.freed(ENDPOINT))
    assert len(record.data) == 40 and record.orig_len == len(whole)


def test_a_long_session_keeps_its_first_packets_and_its_latest_within_the_file_size():
    options = PcapFailedOptions("/d", max_file_bytes=MIN_FILE_BYTES)
    keeper = FailedSessions(options)
    session = Stub()
    for n in range(400):
        keeper.sent(session, [replayed(pk.ACK | pk.PSH, n.to_bytes(4, "big") + b"." * 496, seq=1000 + n * 500)],
                    T0 + n)
    keeper.ended(ENDPOINT, True, engine.TARGET_TIMEOUT)
    made = keeper.freed(ENDPOINT)
    assert len(made.content) <= options.max_file_bytes
    numbers = [int.from_bytes(pk.decode(r.data).buf[40:44], "big") for r in records(made)]
    assert numbers[:HEAD_PACKETS] == list(range(HEAD_PACKETS))
    assert numbers[-1] == 399 and numbers == sorted(numbers)
    assert numbers[HEAD_PACKETS:] == list(range(400 - len(numbers) + HEAD_PACKETS, 400))
    assert keeper.counters.packets_evicted == 400 - len(numbers)


def test_a_packet_longer_than_a_quarter_of_the_file_is_kept_cut():
    options = PcapFailedOptions("/d", max_file_bytes=MIN_FILE_BYTES)
    keeper = FailedSessions(options)
    big = replayed(pk.ACK, b"z" * 60_000)
    keeper.sent(Stub(), [big], T0)
    keeper.ended(ENDPOINT, True, engine.BUFFER_FULL)
    (record,) = records(keeper.freed(ENDPOINT))
    assert len(record.data) == options.snaplen < len(big) == record.orig_len


def test_the_memory_budget_bounds_what_all_sessions_keep_and_counts_the_rest():
    keeper = FailedSessions(PcapFailedOptions("/d", memory_bytes=20_000))
    for port in range(50):
        endpoint = Endpoint(REPLAYED_IP, 3000 + port, TARGET_IP, 8080)
        keeper.sent(Stub(endpoint), [replayed(pk.ACK, b"p" * 832, endpoint=endpoint)], T0)
    counters = keeper.counters   # each packet costs 1000 bytes: 40 of headers, 832, 128 of keeping
    assert counters.memory_bytes == counters.memory_peak_bytes == 20_000
    assert counters.packets_over_budget == 30


def test_over_the_budget_a_session_makes_room_from_its_own_middle():
    keeper = FailedSessions(PcapFailedOptions("/d", memory_bytes=60_000))
    session = Stub()
    for n in range(100):
        keeper.sent(session, [replayed(pk.ACK, b"p" * 832, seq=1000 + n * 832)], T0 + n)
    assert keeper.counters.packets_over_budget == 0 and keeper.counters.packets_evicted == 100 - 60


def test_a_new_session_on_the_endpoint_before_the_last_was_freed_keeps_apart():
    """A 4-tuple reused at once: the old session's ending and freeing come after the new
    one's first packet (the owner sees the events later), and still find the old one."""
    keeper = FailedSessions(PcapFailedOptions("/d"))
    old, new = Stub(), Stub()
    keeper.sent(old, [replayed(pk.SYN, seq=1)], T0)
    keeper.client_packet([new], captured(pk.SYN, seq=500), T0 + 1)
    keeper.ended(ENDPOINT, True, engine.SYN_TIMEOUT)
    first = records(keeper.freed(ENDPOINT))
    assert [pk.decode(r.data).seq for r in first] == [1]
    keeper.sent(new, [replayed(pk.SYN, seq=500)], T0 + 1.001)
    keeper.ended(ENDPOINT, True, engine.TARGET_REFUSED)
    second = keeper.freed(ENDPOINT)
    assert second.name.endswith("_target_refused.pcap")
    assert [pk.decode(r.data).seq for r in records(second)] == [500, 500]
    assert keeper.counters.memory_bytes == 0


def test_packets_of_sessions_it_never_kept_are_ignored():
    keeper = FailedSessions(PcapFailedOptions("/d"))
    keeper.whole_answer(ENDPOINT, answer(pk.ACK, b"x"), T0)
    keeper.ended(ENDPOINT, True, engine.SYN_TIMEOUT)
    keeper.differs(ENDPOINT, "body_differs")
    assert keeper.freed(ENDPOINT) is None and keeper.counters.memory_bytes == 0


def test_a_file_size_below_the_minimum_is_refused():
    with pytest.raises(ValueError, match="below"):
        FailedSessions(PcapFailedOptions("/d", max_file_bytes=1000))


# ---------------------------------------------------------------------- names


def test_an_ipv6_session_is_named_by_its_addresses_as_tcpdump_writes_them():
    endpoint = Endpoint(socket.inet_pton(socket.AF_INET6, "2001:2::3:7"), 5555,
                        socket.inet_pton(socket.AF_INET6, "2001:2::2"), 8080)
    assert file_name(endpoint, 0.0, "syn_timeout") == \
        "19700101T000000.000Z_2001:2::3:7.5555-2001:2::2.8080_syn_timeout.pcap"


def test_a_reason_with_odd_characters_cannot_leave_the_directory():
    assert "/" not in file_name(ENDPOINT, T0, "../x y")


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_the_utc_stamp_agrees_with_datetime(seconds):
    millis = int(seconds * 1000)
    expected = datetime.datetime.fromtimestamp(millis // 1000, datetime.timezone.utc)
    assert utc_stamp(seconds) == expected.strftime("%Y%m%dT%H%M%S") + f".{millis % 1000:03d}Z"


def test_the_file_is_a_classic_microsecond_pcap_that_wireshark_opens():
    keeper = FailedSessions(PcapFailedOptions("/d"))
    one_session(keeper, Stub())
    keeper.ended(ENDPOINT, True, engine.SYN_TIMEOUT)
    content = keeper.freed(ENDPOINT).content
    magic, major, minor, _zone, _sigfigs, snaplen, linktype = struct.unpack_from("<IHHiIII", content)
    assert (magic, major, minor, linktype) == (0xA1B2C3D4, 2, 4, 101) and snaplen == 65535


def test_a_freed_session_waits_a_moment_for_its_late_whole_answers_and_verdicts():
    """intercept sends a compared answer's payload in a batch of its own, which may come
    after the table freed the session: the file is made LATE_FOR seconds later, with it and
    with a verdict the comparison gave meanwhile."""
    keeper, session = FailedSessions(PcapFailedOptions(directory="/x")), Stub()
    one_session(keeper, session)
    whole = answer(pk.ACK | pk.PSH, b"HTTP/1.1 200 OK\r\n\r\nversion two", seq=9001)
    keeper.answer(session, headers_of(whole), T0 + 0.003)
    assert keeper.freed(ENDPOINT, 10.0) is None
    keeper.whole_answer(ENDPOINT, whole, T0 + 0.004)
    keeper.differs(ENDPOINT, "body_differs")
    assert keeper.due(10.0 + LATE_FOR / 2) == []
    [made] = keeper.due(10.0 + LATE_FOR)
    assert made.name.endswith("_body_differs.pcap")
    assert any(record.data == whole for record in records(made))
    assert keeper.counters.memory_bytes == 0 and keeper.summary()["sessions_kept"] == 0


def test_a_session_still_held_is_filed_at_once_when_its_endpoint_is_freed_again():
    keeper = FailedSessions(PcapFailedOptions(directory="/x"))
    first = Stub()
    one_session(keeper, first)
    keeper.ended(ENDPOINT, True, engine.TARGET_REFUSED)
    assert keeper.freed(ENDPOINT, 10.0) is None
    one_session(keeper, Stub(), T0 + 0.5)
    made = keeper.freed(ENDPOINT, 10.3)
    assert made is not None and made.name.endswith("_target_refused.pcap")
    assert keeper.due(20.0) == []                    # the second one went well
