"""The stats channel: publishers, the aggregator, rates, staleness and the loss estimate.

Pure parts (flatten, rates, the loss formula) are checked on plain dicts; the aggregator is
fed frames directly with a hand-driven clock; the round trip runs real PUB sockets over
ipc:// in a temporary directory, with the publishers' and the aggregator's clocks in hand.
"""

from __future__ import annotations

import json
import os
import time

import msgpack
import pytest
import zmq

from tcpcopy.cluster import stats, wire
from tcpcopy.cluster.ops import aggregator as aggregator_module
from tcpcopy.cluster.ops.aggregator import (Aggregator, Snapshot, figure, loss_estimate, outcomes,
                                            rates_between, split_identity)
from tcpcopy.cluster.stats import StatsPublisher, flatten


class Clock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def endpoint(tmp_path):
    return f"ipc://{tmp_path}/stats"


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def aggregator(endpoint, clock):
    agg = Aggregator(endpoint, clock=clock)
    yield agg
    agg.close()


def frame(role: str, identity: str, published_at: float, pid: int = 4242, **counters) -> bytes:
    return wire.encode_stats(role, identity, {**counters, "pid": pid, "published_at": published_at})


# ---------------------------------------------------------------- pure helpers

def test_flatten_joins_nested_names_with_dots_and_keeps_only_numbers():
    counters = {"established": 3, "outcomes": {"closed:completed": 5, "dropped:syn_timeout": 1},
                "engine": {"closed": {"completed": 5}}, "stop_reason": "input ended",
                "rtt": 0.25, "up": True, "list": [1, 2], "nan": float("nan")}
    assert flatten(counters) == {"established": 3, "outcomes.closed:completed": 5,
                                 "outcomes.dropped:syn_timeout": 1, "engine.closed.completed": 5,
                                 "rtt": 0.25, "up": 1}


def test_flatten_of_a_flat_dict_is_the_same_dict():
    assert flatten({"a": 1, "b": 2.5}) == {"a": 1, "b": 2.5}


@pytest.mark.parametrize("identity, expected", [
    ("owner-3@online1", ("online1", "3")), ("intercept@assist", ("assist", "")),
    ("capture-12", ("", "12")), ("tcpcopy", ("", ""))])
def test_host_and_shard_are_read_from_the_identity(identity, expected):
    assert split_identity(identity) == expected


def test_figure_finds_a_name_at_top_level_under_a_group_or_sums_a_group():
    figures = {"requests_sent": 7, "engine.responses": 4, "raw_send_failures.EPERM": 2,
               "raw_send_failures.ENOBUFS": 3}
    assert figure(figures, "requests_sent") == 7
    assert figure(figures, "responses") == 4
    assert figure(figures, "raw_send_failures") == 5
    assert figure(figures, "absent") == 0


def test_rates_use_the_publishers_interval_and_read_a_decrease_as_a_reset():
    older = Snapshot({"sent": 100, "reset": 50, "published_at": 10.0}, arrived=1000.0)
    newer = Snapshot({"sent": 400, "reset": 20, "new": 6, "published_at": 12.0}, arrived=1000.5)
    assert rates_between(older, newer, ["sent", "reset", "new"]) == {"sent": 150.0, "reset": 10.0,
                                                                     "new": 3.0}


def test_rates_fall_back_to_arrival_times_without_published_at():
    older, newer = Snapshot({"sent": 0}, arrived=10.0), Snapshot({"sent": 40}, arrived=14.0)
    assert rates_between(older, newer, ["sent"]) == {"sent": 10.0}


# ---------------------------------------------------------------- the loss estimate

def owner_figures(**overrides) -> dict:
    figures = {"client_content_packets": 1000, "segments_split": 10,
               "client_retransmits_skipped": 10, "content_packets_sent": 990,
               "requests_sent": 400, "responses_completed": 395,
               "outcomes.closed:completed": 95, "outcomes.dropped:syn_timeout": 3,
               "outcomes.dropped:target_timeout": 2}
    return {**figures, **overrides}


def test_loss_compares_replayed_content_with_what_the_owners_were_given():
    loss = loss_estimate([owner_figures(), owner_figures(content_packets_sent=1000)],
                         [{"packets_dropped_full": 4, "kernel_dropped": 1}])
    assert loss["expected_content"] == 2000          # (1000 + 10 - 10) per owner
    assert loss["content_packets_sent"] == 1990
    assert loss["content_loss"] == pytest.approx(10 / 2000)
    assert (loss["sessions_closed"], loss["sessions_dropped"]) == (190, 10)
    assert loss["session_drop_ratio"] == pytest.approx(10 / 200)
    assert loss["capture_dropped"] == 5
    assert loss["requests_sent"] == 800


def test_loss_is_a_number_even_with_nothing_to_measure():
    loss = loss_estimate([], [])
    assert loss["content_loss"] == 0.0 and loss["session_drop_ratio"] == 0.0
    assert all(isinstance(v, (int, float)) for v in loss.values())


def test_loss_never_goes_negative_when_more_was_sent_than_expected():
    assert loss_estimate([owner_figures(content_packets_sent=5000)])["content_loss"] == 0.0


def test_outcomes_read_the_owners_names_or_else_the_engines():
    assert outcomes({"owner.outcomes.dropped:a": 2, "engine.dropped.a": 2}, "dropped") == 2
    assert outcomes({"engine.dropped.a": 2, "engine.dropped.b": 1, "closed.x": 7}, "dropped") == 3
    assert outcomes({"engine.closed.completed": 4}, "closed") == 4


def test_loss_reads_figures_published_under_a_group():
    grouped = {f"engine.{k}" if not k.startswith("outcomes") else k: v
               for k, v in owner_figures().items()}
    assert loss_estimate([grouped]) == loss_estimate([owner_figures()])


# ---------------------------------------------------------------- the aggregator, frames in hand

def test_rates_per_process_from_its_last_two_snapshots(aggregator, clock):
    aggregator.ingest(frame("capture", "capture-0@h", 10.0, captured=100))
    clock.now += 1
    aggregator.ingest(frame("capture", "capture-0@h", 11.0, captured=400))
    clock.now += 1
    aggregator.ingest(frame("capture", "capture-0@h", 12.0, captured=1000))
    assert aggregator.rates()[("capture", "capture-0@h")] == {"captured": 600.0}
    assert aggregator.rates(window=5)[("capture", "capture-0@h")] == {"captured": 450.0}


def test_a_process_heard_once_has_rates_of_zero(aggregator):
    aggregator.ingest(frame("owner", "owner-0@h", 1.0, requests_sent=10, sessions_active=3))
    assert aggregator.rates()[("owner", "owner-0@h")] == {"requests_sent": 0.0}


def test_a_silent_process_goes_stale_after_three_seconds_and_stays_listed(aggregator, clock):
    aggregator.ingest(frame("owner", "owner-0@h", 1.0, requests_sent=10))
    clock.now += 1
    aggregator.ingest(frame("owner", "owner-0@h", 2.0, requests_sent=20))
    clock.now += aggregator_module.STALE_AFTER
    row, = aggregator.snapshot_json()["processes"]
    assert not row["stale"] and row["rates"]["requests_sent"] == 10.0
    clock.now += 1.5
    row, = aggregator.snapshot_json()["processes"]
    assert row["stale"] and row["age"] == pytest.approx(4.5)
    assert row["rates"]["requests_sent"] == 0.0 and row["counters"]["requests_sent"] == 20


def test_a_restarted_process_starts_its_rates_again(aggregator, clock):
    aggregator.ingest(frame("owner", "owner-0@h", 1.0, pid=10, requests_sent=500))
    clock.now += 1
    aggregator.ingest(frame("owner", "owner-0@h", 0.5, pid=11, requests_sent=5))
    assert aggregator.rates()[("owner", "owner-0@h")] == {"requests_sent": 0.0}


def test_totals_by_role_sum_the_latest_snapshots_and_count_stale_processes(aggregator, clock):
    aggregator.ingest(frame("owner", "owner-0@h", 1.0, pid=1, requests_sent=10, sessions_active=4))
    clock.now += 10
    aggregator.ingest(frame("owner", "owner-1@h", 1.0, pid=2, requests_sent=5, sessions_active=1))
    aggregator.ingest(frame("capture", "capture-0@h", 1.0, pid=3, captured=7))
    totals = aggregator.totals_by_role()
    assert totals["owner"] == {"processes": 2, "stale": 1, "requests_sent": 15, "sessions_active": 5}
    assert totals["capture"] == {"processes": 1, "stale": 0, "captured": 7}


def test_anything_but_stats_is_counted_never_raised(aggregator):
    assert not aggregator.ingest(b"GET / HTTP/1.0\r\n\r\n")
    assert not aggregator.ingest(wire.encode_heartbeat(1.0))
    assert not aggregator.ingest(msgpack.packb([wire.FORMAT_VERSION, wire.STATS, ["nobody", "x", {}]]))
    assert aggregator.ingest(wire.encode_stats("owner", "owner-0", {"ok": 1, "text": "no", "n": None}))
    assert aggregator.counts == {"messages": 1, "wire_errors": 2, "unexpected": 1, "bad_figures": 2,
                                 "too_deep": 0, "forgotten": 0, "duplicates": 0}
    assert aggregator.last_error.startswith("malformed STATS message")


def test_the_number_of_processes_kept_is_bounded(aggregator, clock, monkeypatch):
    monkeypatch.setattr(aggregator_module, "MAX_PROCESSES", 3)
    for i in range(5):
        clock.now += 1
        aggregator.ingest(frame("owner", f"owner-{i}", 1.0))
    assert sorted(identity for _, identity in aggregator.processes) == ["owner-2", "owner-3", "owner-4"]
    assert aggregator.counts["forgotten"] == 2


def test_snapshot_json_is_plain_json_with_numbers_everywhere(aggregator):
    aggregator.ingest(frame("owner", "owner-0@h", 1.0, **owner_figures()))
    snapshot = json.loads(json.dumps(aggregator.snapshot_json()))
    assert snapshot["loss"]["content_loss"] == pytest.approx(10 / 1000)
    row, = snapshot["processes"]
    assert (row["host"], row["shard"], row["pid"]) == ("h", "0", 4242)
    assert all(isinstance(v, (int, float)) for v in row["counters"].values())


# ---------------------------------------------------------------- real sockets

def wait_for(aggregator: Aggregator, key: tuple, published_at: float, resend) -> None:
    """Wait for the message; PUB drops when a queue is full (a loaded machine), so the same
    message (same clock, same counters) is sent again every half second."""
    deadline = time.monotonic() + 10
    next_resend = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        process = aggregator.processes.get(key)
        if process and process.latest.figures.get("published_at") == published_at:
            return
        aggregator.poll(0.02)
        if time.monotonic() >= next_resend:
            resend()
            next_resend = time.monotonic() + 0.5
    raise AssertionError(f"{key} never arrived with published_at={published_at}")


def join(aggregator: Aggregator, publisher: StatsPublisher) -> None:
    """Publish until the first message gets through (a PUB drops until it is connected)."""
    key = (publisher.role, publisher.identity)
    deadline = time.monotonic() + 3
    while key not in aggregator.processes:
        assert time.monotonic() < deadline, f"{key} never connected"
        publisher.publish({})
        aggregator.poll(0.02)


def test_two_processes_round_trip_over_ipc(endpoint, aggregator, clock):
    owner_clock, capture_clock = Clock(10.0), Clock(50.0)
    owner = StatsPublisher(endpoint, "owner", "owner-0@online1", clock=owner_clock)
    capture = StatsPublisher(endpoint, "capture", "capture-1@online1", clock=capture_clock)
    try:
        join(aggregator, owner)
        join(aggregator, capture)
        for step, (sent, captured) in enumerate([(100, 1000), (300, 1500), (600, 3000)]):
            owner_clock.now, capture_clock.now = 10.0 + 2 * step, 50.0 + step
            owner_counters = {"content_packets_sent": sent, "outcomes": {"closed:completed": step}}
            owner.publish(owner_counters)
            capture.publish({"captured": captured})
            wait_for(aggregator, ("owner", "owner-0@online1"), owner_clock.now,
                     lambda: owner.publish(owner_counters))
            wait_for(aggregator, ("capture", "capture-1@online1"), capture_clock.now,
                     lambda: capture.publish({"captured": captured}))
        rates = aggregator.rates()
        assert rates[("owner", "owner-0@online1")]["content_packets_sent"] == 150.0
        assert rates[("owner", "owner-0@online1")]["outcomes.closed:completed"] == 0.5
        assert rates[("capture", "capture-1@online1")]["captured"] == 1500.0
        latest = aggregator.processes[("owner", "owner-0@online1")].latest.figures
        assert latest["pid"] == os.getpid() and latest["rss_bytes"] > 0 and latest["num_threads"] >= 1
        assert latest["num_fds"] > 0 and latest["cpu_user_s"] >= 0

        clock.now += 2
        owner_clock.now += 1
        owner.publish({"content_packets_sent": 700})
        wait_for(aggregator, ("owner", "owner-0@online1"), owner_clock.now,
                 lambda: owner.publish({"content_packets_sent": 700}))
        clock.now += 1.5   # the capture worker has been silent 3.5 s, the owner 1.5 s
        rows = {row["identity"]: row for row in aggregator.snapshot_json()["processes"]}
        assert not rows["owner-0@online1"]["stale"]
        assert rows["capture-1@online1"]["stale"] and rows["capture-1@online1"]["age"] == 3.5
        assert rows["capture-1@online1"]["counters"]["captured"] == 3000
    finally:
        owner.close()
        capture.close()


def test_garbage_on_the_stats_socket_is_counted_and_stats_still_flow(endpoint, aggregator):
    rogue = zmq.Context.instance().socket(zmq.PUB)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue.connect(endpoint)
    try:
        deadline = time.monotonic() + 3
        while aggregator.counts["wire_errors"] == 0 or aggregator.counts["unexpected"] == 0:
            assert time.monotonic() < deadline
            rogue.send(b"\xc1 not msgpack")
            rogue.send_multipart([b"two", b"frames"])
            rogue.send(wire.encode_heartbeat(1.0))
            aggregator.poll(0.02)
        rogue.send(wire.encode_stats("intercept", "intercept-0@a", {"all": 9}))
        aggregator.poll(1.0)
        assert aggregator.processes[("intercept", "intercept-0@a")].latest.figures == {"all": 9}
        assert aggregator.counts["wire_errors"] >= 2
    finally:
        rogue.close()


def test_publishing_with_no_aggregator_neither_blocks_nor_fails(tmp_path):
    publisher = StatsPublisher(f"ipc://{tmp_path}/nobody", "capture", "capture-0")
    try:
        started = time.monotonic()
        for _ in range(200):
            publisher.publish({"captured": 1})
        assert time.monotonic() - started < 2
        assert publisher.sent + publisher.unsent == 200
    finally:
        publisher.close()


def test_a_figure_msgpack_cannot_carry_is_counted_not_raised(tmp_path):
    publisher = StatsPublisher(f"ipc://{tmp_path}/nobody", "owner", "owner-0")
    try:
        publisher.publish({"huge": 2**70})
        assert (publisher.sent, publisher.unsent) == (0, 1)
    finally:
        publisher.close()


def test_maybe_publish_keeps_to_its_interval(tmp_path):
    publisher = StatsPublisher(f"ipc://{tmp_path}/nobody", "owner", "owner-0", every=1.0)
    calls = []

    def counters():
        calls.append(1)
        return {"n": len(calls)}
    try:
        published = [publisher.maybe_publish(now, counters) for now in (5.0, 5.5, 5.99, 6.0, 6.5, 7.2)]
        assert published == [True, False, False, True, False, True]
        assert len(calls) == 3
    finally:
        publisher.close()


def test_a_publisher_refuses_a_role_the_wire_does_not_know(tmp_path):
    with pytest.raises(ValueError, match="stats role"):
        StatsPublisher(f"ipc://{tmp_path}/x", "dashboard", "d-0")


def test_the_same_message_twice_is_counted_once(aggregator, clock):
    aggregator.ingest(frame("owner", "owner-0", 5.0))
    clock.now += 1
    aggregator.ingest(frame("owner", "owner-0", 5.0))
    assert len(aggregator.processes[("owner", "owner-0")].history) == 1
    assert aggregator.counts["duplicates"] == 1


# ---------------------------------------------------------------- hostile publishers

def nested(depth: int, leaf=1) -> dict:
    counters = {"n": leaf}
    for _ in range(depth - 1):
        counters = {"g": counters}
    return counters


def test_flatten_walks_without_recursion_and_counts_groups_too_deep():
    flat, not_numbers, too_deep = stats.flatten_counted({"ok": 1, "deep": nested(50_000), "t": "x"})
    assert flat == {"ok": 1} and (not_numbers, too_deep) == (1, 1)
    flat, _, too_deep = stats.flatten_counted(nested(stats.MAX_DEPTH))
    assert flat == {".".join(["g"] * (stats.MAX_DEPTH - 1) + ["n"]): 1} and too_deep == 0


def test_flatten_keeps_depth_first_order():
    counters = {"a": 1, "b": {"c": 2, "d": {"e": 3}, "f": 4}, "g": 5}
    assert list(flatten(counters)) == ["a", "b.c", "b.d.e", "b.f", "g"]


def test_a_stats_message_nested_600_deep_is_counted_and_everything_still_renders(endpoint, aggregator):
    """The reported 1.8 KB message that killed the metrics server and top."""
    from tcpcopy.cluster.ops.metrics import render_metrics
    from tcpcopy.cluster.ops.top import render
    frame = wire.encode_stats("owner", "owner-0@h", {**nested(600), "ok": 7})
    assert len(frame) < 2000
    publish_until_taken(endpoint, aggregator, frame)
    assert aggregator.counts["too_deep"] >= 1
    assert aggregator.processes[("owner", "owner-0@h")].latest.figures == {"ok": 7}
    snapshot = aggregator.snapshot_json()
    assert "owner-0@h" in render(snapshot) and "tcpcopy_ok_total" in render_metrics(snapshot)
    assert 'tcpcopy_stats_rejected_total{reason="too_deep"}' in render_metrics(snapshot)


def publish_until_taken(endpoint: str, aggregator, *frames: bytes) -> None:
    """A rogue publisher sends ``frames`` again and again until the aggregator has taken a
    message (a SUB misses what is published before its subscription is through)."""
    rogue = zmq.Context.instance().socket(zmq.PUB)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue.connect(endpoint)
    try:
        deadline = time.monotonic() + 5
        while not aggregator.counts["messages"]:
            assert time.monotonic() < deadline
            for frame in frames:
                rogue.send(frame)
            aggregator.poll(0.05)
    finally:
        rogue.close()


def test_a_stats_frame_over_the_size_limit_never_reaches_the_aggregator(endpoint, aggregator):
    publish_until_taken(endpoint, aggregator,
                        bytes(wire.LIMITS[wire.STATS].frame + 1),   # the socket drops this peer
                        wire.encode_stats("capture", "capture-0@h", {"captured": 1}))
    assert aggregator.counts["wire_errors"] == 0 and aggregator.processes[("capture", "capture-0@h")]


def test_an_identity_with_control_characters_reaches_top_escaped(aggregator):
    from tcpcopy.cluster.ops.top import render
    aggregator.ingest(frame("owner", "evil\x1b[2J\x1b]0;title\x07\nforged-row", 1.0, requests_sent=1))
    text = render(aggregator.snapshot_json(), width=160)
    assert "\x1b" not in text and "\x07" not in text
    assert text.splitlines()[-1].startswith("owner     evil\\x1b[2J\\x1b]0;title\\x07\\nforged-row ok")
