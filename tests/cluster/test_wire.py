"""Every cross-process message survives encode/decode, and anything else is a WireError.

A user who mixes versions across hosts, or points another program at a tcpcopy port, must
get a WireError that says what is wrong, never a traceback from deep inside msgpack.
"""

from __future__ import annotations

import ipaddress

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tcpcopy.cluster import wire
from tcpcopy.cluster.wire import Hello, WireError

FUZZ = settings(max_examples=200, deadline=None, derandomize=True)

V4_CLIENT = ipaddress.ip_address("198.18.0.5").packed
V4_TARGET = ipaddress.ip_address("198.18.0.2").packed
V6_CLIENT = ipaddress.ip_address("2001:2::5").packed
V6_TARGET = ipaddress.ip_address("2001:2::2").packed


def raw(version, kind, body) -> bytes:
    """A frame as some other program (or another build) might send it."""
    return msgpack.packb([version, kind, body], use_bin_type=True)


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("role", wire.ROLES)
def test_hello_round_trips_to_a_hello_for_every_role(role):
    hello = Hello(role, f"{role}-0@online1", "3f2a9c")
    assert wire.decode(wire.encode_hello(hello)) == (wire.HELLO, hello)


def test_packets_batch_keeps_timestamps_and_packet_bytes_exactly():
    batch = [[1717171717.123456, bytes(range(256))],
             [1717171717.123457, b"\x45\x00" + b"\x00" * 38],
             [0.0, b""],
             [1e-06, b"\xff" * 1500]]
    kind, body = wire.decode(wire.encode_packets(batch))
    assert kind == wire.PACKETS
    assert body == batch
    for (ts, data), (ts_in, data_in) in zip(body, batch):
        assert ts == ts_in and type(ts) is float   # no rounding through a 32-bit float
        assert data == data_in and type(data) is bytes


def test_empty_packets_batch_round_trips():
    assert wire.decode(wire.encode_packets([])) == (wire.PACKETS, [])


@pytest.mark.parametrize("encode, kind", [(wire.encode_register, wire.REGISTER),
                                          (wire.encode_unregister, wire.UNREGISTER)])
def test_register_and_unregister_give_tuples_with_bytes_addresses(encode, kind):
    endpoints = [(V4_CLIENT, 40000, V4_TARGET, 8080),
                 (V6_CLIENT, 1024, V6_TARGET, 443),
                 (V4_CLIENT, 0, V4_TARGET, 65535)]
    got_kind, body = wire.decode(encode(endpoints))
    assert got_kind == kind
    assert body == endpoints
    assert all(type(e) is tuple and type(e[0]) is bytes and type(e[2]) is bytes for e in body)


def test_register_accepts_endpoints_given_as_lists():
    endpoints = [[V4_CLIENT, 40000, V4_TARGET, 8080]]
    assert wire.decode(wire.encode_register(endpoints)) == (
        wire.REGISTER, [(V4_CLIENT, 40000, V4_TARGET, 8080)])


def test_responses_keep_header_bytes_exactly():
    headers = [bytes(range(40)), b"\x60" + b"\x00" * 59, b""]
    assert wire.decode(wire.encode_responses(headers)) == (wire.RESPONSES, headers)


def test_heartbeat_round_trips_its_send_time():
    assert wire.decode(wire.encode_heartbeat(1717171717.25)) == (wire.HEARTBEAT, 1717171717.25)


def test_stats_round_trip_with_nested_counters():
    counters = {"sessions_started": 12, "fanout": {"sampled_out": 3, "unmapped": 0},
                "loss_ratio": 0.125}
    assert wire.decode(wire.encode_stats("owner", "owner-0@online1", counters)) == (
        wire.STATS, ["owner", "owner-0@online1", counters])


def test_comparing_messages_round_trip():
    endpoint = (V4_CLIENT, 40000, V4_TARGET, 8080)
    assert wire.decode(wire.encode_watch([endpoint])) == (wire.WATCH, [endpoint])
    assert wire.decode(wire.encode_answers([b"\x45" * 3000])) == (wire.ANSWERS, [b"\x45" * 3000])
    batch = [[1.5, b"\x45" * 60]]
    assert wire.decode(wire.encode_online_answers(batch)) == (wire.ONLINE_ANSWERS, batch)
    # Only an owner that compares takes the large ANSWERS messages.
    assert wire.max_frame(wire.OWNER_TAKES_FROM_INTERCEPT) < wire.LIMITS[wire.ANSWERS].frame
    assert wire.max_frame(wire.OWNER_COMPARING_TAKES_FROM_INTERCEPT) == wire.LIMITS[wire.ANSWERS].frame


def test_bye_round_trips_its_reason():
    assert wire.decode(wire.encode_bye("shutting down: SIGTERM")) == (
        wire.BYE, "shutting down: SIGTERM")


def test_skip_list_round_trips_ipv4_and_ipv6_flow_keys():
    keys = [V4_CLIENT + V4_TARGET + b"\xc0\x01\x00\x50", V6_CLIENT + V6_TARGET + b"\xc0\x01\x1f\x90"]
    assert wire.decode(wire.encode_skip(keys)) == (wire.SKIP, keys)
    assert wire.decode(wire.encode_skip([])) == (wire.SKIP, [])


def test_handover_round_trips_its_endpoints():
    endpoints = [(V4_CLIENT, 40000, V4_TARGET, 8080), (V6_CLIENT, 40001, V6_TARGET, 8080)]
    assert wire.decode(wire.encode_handover(endpoints)) == (wire.HANDOVER, endpoints)
    assert wire.max_frame(wire.OWNER_TAKES_FROM_INTERCEPT) >= wire.LIMITS[wire.HANDOVER].frame


# ---------------------------------------------------------------- version mismatch

@pytest.mark.parametrize("other", [wire.FORMAT_VERSION + 1, 0, "2.0"])
def test_other_format_version_names_both_versions_and_says_run_same_version(other):
    with pytest.raises(WireError) as err:
        wire.decode(raw(other, wire.HELLO, ["owner", "owner-0", "x"]))
    text = str(err.value)
    assert repr(other) in text
    assert str(wire.FORMAT_VERSION) in text
    assert "same tcpcopy version" in text


def test_newer_peer_with_unknown_kind_is_reported_as_a_version_mismatch():
    with pytest.raises(WireError, match="same tcpcopy version"):
        wire.decode(raw(wire.FORMAT_VERSION + 1, 99, None))


# ---------------------------------------------------------------- rejects

@pytest.mark.parametrize("frame", [
    b"",
    b"GET / HTTP/1.1\r\nHost: online1\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc",    # a TLS ClientHello
    b"\xc1",                                    # msgpack's never-used byte
    b"\x93\x01",                                # a truncated array
    raw(1, 1, ["owner", "a", "b"]) + b"\x00",   # trailing bytes after a message
], ids=["empty", "http", "tls", "reserved-byte", "truncated", "trailing-bytes"])
def test_garbage_bytes_are_a_wire_error(frame):
    with pytest.raises(WireError, match="not a tcpcopy message"):
        wire.decode(frame)


@pytest.mark.parametrize("value", [
    None, 1, "hello", b"bytes", {"version": 1}, [], [1, 1], [1, 1, None, None],
], ids=repr)
def test_msgpack_value_that_is_not_a_three_element_array_is_a_wire_error(value):
    with pytest.raises(WireError, match="not a tcpcopy message"):
        wire.decode(msgpack.packb(value, use_bin_type=True))


@pytest.mark.parametrize("kind", [0, max(wire.KIND_NAMES) + 1, 255, -1, "HELLO", None])
def test_unknown_message_kind_is_a_wire_error(kind):
    with pytest.raises(WireError, match="unknown message kind"):
        wire.decode(raw(wire.FORMAT_VERSION, kind, None))


@pytest.mark.parametrize("kind", [[], {}], ids=["list", "map"])
def test_message_kind_that_is_a_list_or_map_is_a_wire_error(kind):
    with pytest.raises(WireError):
        wire.decode(raw(wire.FORMAT_VERSION, kind, None))


@pytest.mark.parametrize("endpoint", [
    [b"\xc6\x12\x00", 40000, b"\xc6\x12\x00\x02", 8080],           # 3-byte client address
    [V4_CLIENT + b"\x00", 40000, V4_TARGET + b"\x00", 8080],      # 5-byte addresses
    [V4_CLIENT, 65536, V4_TARGET, 8080],                          # client port too big
    [V4_CLIENT, -1, V4_TARGET, 8080],                             # negative port
    [V4_CLIENT, 40000, V4_TARGET, 70000],                         # target port too big
    [V4_CLIENT, 40000, V6_TARGET, 8080],                          # IPv4 client, IPv6 target
    [V6_CLIENT, 40000, V4_TARGET, 8080],                          # IPv6 client, IPv4 target
    ["198.18.0.5", 40000, "198.18.0.2", 8080],                    # text addresses
    [V4_CLIENT, "40000", V4_TARGET, 8080],                        # text port
    [V4_CLIENT, 40000, V4_TARGET],                                # missing field
    [V4_CLIENT, 40000, V4_TARGET, 8080, 0],                       # extra field
    42,                                                           # not a list
], ids=["addr3", "addr5", "cport65536", "cport-1", "tport70000", "v4-to-v6", "v6-to-v4",
        "text-addr", "text-port", "short", "long", "int"])
@pytest.mark.parametrize("kind", [wire.REGISTER, wire.UNREGISTER])
def test_bad_endpoint_tuple_is_a_wire_error(kind, endpoint):
    with pytest.raises(WireError, match="malformed"):
        wire.decode(raw(wire.FORMAT_VERSION, kind, [endpoint]))


def test_endpoint_list_that_is_not_a_list_is_a_wire_error():
    with pytest.raises(WireError, match="malformed REGISTER"):
        wire.decode(raw(wire.FORMAT_VERSION, wire.REGISTER, {"a": 1}))


@pytest.mark.parametrize("body", [
    ["tcpcopy", "x", "y"],          # unknown role
    ["OWNER", "x", "y"],            # roles are exact
    ["owner", 7, "y"],              # identity not text
    ["owner", "x", b"y"],           # instance not text
    ["owner", "x"],                 # too short
    "owner",                        # not a list
], ids=["unknown-role", "role-case", "identity-int", "instance-bytes", "short", "text"])
def test_bad_hello_is_a_wire_error(body):
    with pytest.raises(WireError, match="malformed HELLO"):
        wire.decode(raw(wire.FORMAT_VERSION, wire.HELLO, body))


@pytest.mark.parametrize("kind, body", [
    (wire.PACKETS, "not a list"),
    (wire.PACKETS, [[1.0, "text, not bytes"]]),
    (wire.PACKETS, [[1.0]]),
    (wire.PACKETS, [b"\x45"]),
    (wire.RESPONSES, [b"\x45", "text"]),
    (wire.RESPONSES, b"\x45"),
    (wire.HEARTBEAT, "now"),
    (wire.HEARTBEAT, None),
    (wire.STATS, ["owner", "owner-0"]),
    (wire.STATS, ["nobody", "owner-0", {}]),
    (wire.STATS, ["owner", "owner-0", [1, 2]]),
    (wire.BYE, 3),
    (wire.BYE, None),
    (wire.SKIP, b"\x00" * 12),
    (wire.SKIP, [b"\x00" * 13]),
    (wire.SKIP, ["\x00" * 12]),
], ids=lambda v: repr(v)[:30])
def test_body_of_the_wrong_shape_is_a_wire_error(kind, body):
    with pytest.raises(WireError, match=f"malformed {wire.KIND_NAMES[kind]}"):
        wire.decode(raw(wire.FORMAT_VERSION, kind, body))


@pytest.mark.parametrize("timestamp", ["yesterday", None, b"\x00"])
def test_packets_batch_with_a_timestamp_that_is_not_a_number_is_a_wire_error(timestamp):
    with pytest.raises(WireError):
        wire.decode(raw(wire.FORMAT_VERSION, wire.PACKETS, [[timestamp, b"\x45"]]))


# ---------------------------------------------------------------- fuzz

def decodes_or_wire_error(frame: bytes) -> None:
    try:
        kind, _ = wire.decode(frame)
    except WireError:
        return
    assert kind in wire.KIND_NAMES


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_wire_error(frame):
    decodes_or_wire_error(frame)


SCALARS = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1)
           | st.floats(allow_nan=False) | st.text(max_size=10) | st.binary(max_size=20))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(SCALARS, inner, max_size=4),
    max_leaves=20)
VERSIONS = st.just(wire.FORMAT_VERSION) | VALUES
KINDS_ALL = st.sampled_from(sorted(wire.KIND_NAMES)) | VALUES
KINDS_SCALAR = st.sampled_from(sorted(wire.KIND_NAMES)) | SCALARS
BODIES = st.builds(list, st.tuples(VALUES, VALUES, VALUES)) | st.lists(VALUES, max_size=5) | VALUES


@FUZZ
@given(VALUES)
def test_arbitrary_msgpack_values_decode_or_raise_wire_error(value):
    decodes_or_wire_error(msgpack.packb(value, use_bin_type=True))


@FUZZ
@given(VERSIONS, KINDS_SCALAR, BODIES)
def test_arbitrary_three_element_messages_decode_or_raise_wire_error(version, kind, body):
    decodes_or_wire_error(raw(version, kind, body))


@FUZZ
@given(VERSIONS, KINDS_ALL, BODIES)
@example(wire.FORMAT_VERSION, [], None)
def test_arbitrary_three_element_messages_with_any_kind_decode_or_raise_wire_error(version, kind, body):
    decodes_or_wire_error(raw(version, kind, body))


# ---------------------------------------------------------------- limits

def test_every_limit_holds_the_largest_legitimate_message():
    """What the processes really send fits, with the sizes they really use."""
    from tcpcopy.capture.worker import MAX_BATCH
    from tcpcopy.intercept.worker import BATCH_RECORDS, HEADER_SNAPLEN, MAX_PAYLOAD
    assert MAX_BATCH <= wire.PACKETS_MAX_ITEMS and BATCH_RECORDS <= wire.RESPONSES_MAX_RECORDS
    assert HEADER_SNAPLEN + MAX_PAYLOAD <= wire.RECORD_MAX_BYTES
    packets = wire.encode_packets([[1717171717.123456, bytes(wire.PACKET_MAX_BYTES)]] * MAX_BATCH)
    endpoints = wire.encode_register([(V6_CLIENT, 65535, V6_TARGET, 65535)] * wire.ENDPOINTS_MAX)
    responses = wire.encode_responses([bytes(wire.RECORD_MAX_BYTES)] * wire.RESPONSES_MAX_RECORDS)
    hello = wire.encode_hello(Hello("capture", "c" * wire.TEXT_MAX, "i" * wire.TEXT_MAX))
    stats = wire.encode_stats("owner", "o" * wire.STATS_TEXT_MAX,
                              {f"{'n' * 200}{i}": 2**63 - 1 for i in range(wire.STATS_MAX_FIGURES)})
    from tcpcopy.capture.worker import KERNEL_SKIP_MAX
    from tcpcopy.session.kernelskip import KernelSkipConfig
    assert KernelSkipConfig().capacity <= KERNEL_SKIP_MAX <= wire.SKIP_MAX_FLOWS
    skips = wire.encode_skip([bytes(36)] * wire.SKIP_MAX_FLOWS)
    for frame in (packets, endpoints, responses, hello, stats, wire.encode_bye("b" * wire.TEXT_MAX),
                  wire.encode_heartbeat(1717171717.123456), skips,
                  wire.encode_answers([bytes(wire.ANSWER_RECORD_MAX_BYTES)] * wire.ANSWERS_MAX_RECORDS),
                  wire.encode_online_answers([[1717171717.123456, bytes(wire.PACKET_MAX_BYTES)]] * MAX_BATCH),
                  wire.encode_watch([(V6_CLIENT, 65535, V6_TARGET, 65535)] * wire.ENDPOINTS_MAX)):
        kind, _ = wire.decode(frame)
        assert len(frame) <= wire.LIMITS[kind].frame
    assert wire.max_frame(wire.INTERCEPT_TAKES) == wire.LIMITS[wire.REGISTER].frame
    assert wire.max_frame(wire.OWNER_TAKES_FROM_CAPTURE) == wire.PACKETS_MAX_FRAME
    assert wire.max_frame(wire.CAPTURE_TAKES) == wire.LIMITS[wire.SKIP].frame


@pytest.mark.parametrize("frame, message", [
    (raw(1, wire.HELLO, ["owner", "x" * (wire.TEXT_MAX + 1), "i"]), "malformed HELLO"),
    (wire.encode_hello(Hello("owner", "x", "i")) + bytes(20_000), "HELLO message of 20"),
    (raw(1, wire.REGISTER, [[V4_CLIENT, 1, V4_TARGET, 2]] * (wire.ENDPOINTS_MAX + 1)), "max_array_len"),
    (raw(1, wire.RESPONSES, [bytes(wire.RECORD_MAX_BYTES + 1)]), "max_bin_len"),
    (raw(1, wire.PACKETS, [[0.0, b""]] * (wire.PACKETS_MAX_ITEMS + 1)), "max_array_len"),
    (raw(1, wire.STATS, ["owner", "o", {str(i): i for i in range(wire.STATS_MAX_FIGURES + 1)}]), "max_map_len"),
    (raw(1, wire.HEARTBEAT, 1.0) + b"\x00" * 100, "HEARTBEAT message of"),
    (b"\x93\x01\x03\xdd\xff\xff\xff\xff", "max_array_len"),          # 4 billion items, 8 bytes
    (b"\x93\x01\x02\xc6\xff\xff\xff\xff", "malformed PACKETS"),      # a 4 GB bin, 8 bytes
    (b"\x93\x01\x07\x93\xa5owner\xa1o\xdf\xff\xff\xff\xff", "max_map_len"),
    (b"\x93\x01\x08\xd4\x01\x00", "max_ext_len"),                  # ext types are refused
    (raw(1, wire.SKIP, [bytes(12)] * (wire.SKIP_MAX_FLOWS + 1)), "max_array_len"),
], ids=["long-identity", "padded-hello", "endpoints", "record", "packets", "figures", "heartbeat",
        "array-header", "bin-header", "map-header", "ext", "skips"])
def test_a_message_over_its_kinds_limits_is_a_wire_error(frame, message):
    with pytest.raises(WireError, match=message):
        wire.decode(frame)


def test_a_frame_that_declares_no_kind_is_unpacked_under_small_limits():
    with pytest.raises(WireError, match="not a tcpcopy message"):
        wire.decode(msgpack.packb([[0] * 100, 1, None]))
    with pytest.raises(WireError, match="not a tcpcopy message"):
        wire.decode(bytes(wire.UNKNOWN.frame + 1))


def test_another_version_is_named_before_its_body_is_unpacked():
    with pytest.raises(WireError, match="format 2, .* same tcpcopy version"):
        wire.decode(b"\x93\x02\x01" + b"\xdd\xff\xff\xff\xff")


def test_a_huge_frame_is_refused_without_being_unpacked():
    import time
    frame = b"\x93\x01\x03" + b"\x90" * (10 << 20)        # the reported 10 MB REGISTER
    started = time.process_time()
    with pytest.raises(WireError, match="over its limit"):
        wire.decode(frame)
    assert time.process_time() - started < 0.05


@pytest.mark.parametrize("kind", sorted(wire.KIND_NAMES))
def test_deep_nesting_in_any_body_is_a_wire_error_never_a_recursion_error(kind):
    for depth in (50, 900, 1100):
        frame = b"\x93\x01" + bytes([kind]) + b"\x91" * depth + b"\x90"
        try:
            wire.decode(frame)
        except WireError:
            continue
        assert kind == wire.STATS, depth  # never reached: a nested list is no STATS body


def test_endpoint_lists_are_split_to_fit_one_message_each():
    endpoints = [(V4_CLIENT, n, V4_TARGET, 80) for n in range(2 * wire.ENDPOINTS_MAX + 1)]
    parts = wire.endpoint_batches(endpoints)
    assert [len(p) for p in parts] == [wire.ENDPOINTS_MAX, wire.ENDPOINTS_MAX, 1]
    assert [e for part in parts for e in wire.decode(wire.encode_register(part))[1]] == endpoints
    assert wire.endpoint_batches([]) == []


def test_routing_ids_are_16_random_bytes_never_starting_with_zero():
    ids = {wire.new_routing_id() for _ in range(2000)}
    assert len(ids) == 2000 and all(len(i) == 16 and i[0] != 0 for i in ids)


@pytest.mark.parametrize("text, shown", [
    ("owner-0@online1", "owner-0@online1"),
    ("a\nb", "a\\nb"),
    ("\x1b[2J\x07", "\\x1b[2J\\x07"),
    ("back\\slash", "back\\\\slash"),
    ("\u202egnp.exe", "\\u202egnp.exe"),
    ("é", "é"),
    ("x" * 300, "x" * 200 + "..."),
    (b"\x00bytes", "b'\\x00bytes'"),
])
def test_printable_escapes_what_a_peer_chose(text, shown):
    assert wire.printable(text) == shown
    assert wire.printable(text).isprintable()
