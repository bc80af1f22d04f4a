"""Fuzzing every decoder a peer can reach: ``wire.decode`` and the stats aggregator.

Whatever bytes arrive, ``wire.decode`` returns a known kind or raises WireError (never
another exception, never a RecursionError), and the aggregator counts what it cannot use
(it never raises). The default run tries a few thousand inputs in all; ``make fuzz`` runs
these same fuzzers with 10^6 inputs each (ten rounds of TCPCOPY_FUZZ_EXAMPLES=100000, each
with its own seed).
"""

from __future__ import annotations

import os

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpcopy.cluster import wire
from tcpcopy.cluster.ops.aggregator import Aggregator
from tcpcopy.cluster.stats import flatten_counted
from tcpcopy.cluster.ops.top import render
from tcpcopy.cluster.wire import WireError

EXAMPLES = int(os.environ.get("TCPCOPY_FUZZ_EXAMPLES", "800"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))

SCALARS = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats()
           | st.text(max_size=12) | st.binary(max_size=24))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=6)
                      | st.dictionaries(SCALARS.filter(lambda v: v == v), inner, max_size=5), max_leaves=30)


def _seeds() -> list[bytes]:
    """One well-formed message of every kind, for the mutation fuzzer to start from."""
    v4, v6 = b"\xc6\x12\x00\x05", b"\x20\x01\x00\x02" + bytes(11) + b"\x05"
    return [wire.encode_hello(wire.Hello("owner", "owner-0@online1", "3f2a")),
            wire.encode_packets([[1.5, b"\x45" + bytes(39)], [2.0, b""]]),
            wire.encode_register([(v4, 40000, v4, 8080), (v6, 1, v6, 2)]),
            wire.encode_unregister([(v4, 40000, v4, 8080)]),
            wire.encode_responses([bytes(40), b"\x60" + bytes(59)]),
            wire.encode_heartbeat(1717171717.25),
            wire.encode_stats("owner", "owner-0", {"a": 1, "g": {"b": 2.5, "c": {"d": 3}}}),
            wire.encode_bye("stopping")]


SEEDS = _seeds()


def decodes_or_wire_error(frame: bytes) -> None:
    try:
        kind, _body = wire.decode(frame)
    except WireError as exc:
        assert str(exc).isprintable()
        return
    assert kind in wire.KIND_NAMES


def _mutate(seed: bytes, edits: list) -> bytes:
    data = bytearray(seed)
    for op, position, value in edits:
        at = position % (len(data) + 1)
        if op == "set" and data:
            data[at % len(data)] = value
        elif op == "insert":
            data[at:at] = bytes([value]) * (1 + value % 7)
        elif op == "delete":
            del data[at:at + 1 + value % 5]
        else:
            data = data[:at]
    return bytes(data)


EDITS = st.lists(st.tuples(st.sampled_from(["set", "insert", "delete", "cut"]),
                           st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=6)


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes(frame):
    decodes_or_wire_error(frame)


@FUZZ
@given(st.sampled_from(SEEDS), EDITS)
def test_fuzz_mutated_messages(seed, edits):
    decodes_or_wire_error(_mutate(seed, edits))


@FUZZ
@given(st.sampled_from(sorted(wire.KIND_NAMES)) | SCALARS, VALUES)
def test_fuzz_well_framed_messages_with_any_body(kind, body):
    decodes_or_wire_error(msgpack.packb([wire.FORMAT_VERSION, kind, body], use_bin_type=True))


@FUZZ
@given(st.sampled_from(sorted(wire.KIND_NAMES)), st.integers(1, 1200), st.sampled_from([b"\x91", b"\x81\x01"]))
def test_fuzz_deep_nesting(kind, depth, opener):
    decodes_or_wire_error(b"\x93\x01" + bytes([kind]) + opener * depth + b"\xc0")


@pytest.fixture(scope="module")
def aggregator():
    made = Aggregator("inproc://fuzz-stats")
    yield made
    made.close()


COUNTERS = st.recursive(st.dictionaries(st.text(max_size=8), SCALARS, max_size=4),
                        lambda inner: st.dictionaries(st.text(max_size=8), inner | SCALARS, max_size=4),
                        max_leaves=40)


@FUZZ
@given(st.text(max_size=40), COUNTERS)
def test_fuzz_stats_are_kept_or_counted_and_always_render(aggregator, identity, counters):
    aggregator.processes.clear()   # one process per example: the render stays cheap
    aggregator.ingest(wire.encode_stats("owner", identity, counters))
    flat, not_numbers, too_deep = flatten_counted(counters)
    assert all(isinstance(v, (int, float)) for v in flat.values()) and not_numbers >= 0 <= too_deep
    frame = render(aggregator.snapshot_json(), 100)
    assert all(line.isprintable() for line in frame.splitlines())
