"""The dashboard: the frame drawn from a snapshot, and the command as a user runs it.

``render`` is checked on snapshots from a real Aggregator fed frames with a hand-driven
clock: four processes, one of them silent, and a ten-process cluster drawn at 80, 100 and
160 columns; the command runs as a subprocess against publishers in this test, once as
``--once --json`` for scripts and once live until Ctrl-C.
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time

import pytest
import zmq

from tcpcopy.cluster import wire
from tcpcopy.cluster.ops import top
from tcpcopy.cluster.ops.aggregator import Aggregator
from tcpcopy.cluster.stats import StatsPublisher
from tcpcopy.cluster.ops.top import CLEAR, _wait, main, number_text, render, run_top

MB = 2**20


class Clock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def feed(aggregator: Aggregator, role: str, identity: str, published_at: float, **counters) -> None:
    assert aggregator.ingest(wire.encode_stats(role, identity, {**counters, "published_at": published_at}))


@pytest.fixture
def snapshot(tmp_path):
    """capture-0, owner-0 and intercept-1 publish twice, 2 s apart; owner-1 once, 5 s ago."""
    clock = Clock()
    aggregator = Aggregator(f"ipc://{tmp_path}/stats", clock=clock)
    base = {"rss_bytes": 64 * MB, "num_threads": 3, "num_fds": 17}
    feed(aggregator, "owner", "owner-1@online1", 1.0, pid=202, cpu_user_s=1.0, cpu_system_s=0.0,
         sessions_active=5, requests_sent=50, **base)
    for step in (0, 1):
        clock.now = 103.0 + 2 * step
        t = 10.0 + 2 * step
        feed(aggregator, "capture", "capture-0@online1", t, pid=101, cpu_user_s=1.0 + 0.5 * step,
             cpu_system_s=0.0, captured=1000 + 2000 * step, packets_sent=1000 + 2000 * step,
             packets_dropped_full=4 * step, kernel_dropped=0, **base)
        feed(aggregator, "owner", "owner-0@online1", t, pid=201, cpu_user_s=2.0, cpu_system_s=0.2 * step,
             client_packets=500 + 1000 * step, packets_sent=600 + 1200 * step, sessions_active=37,
             established=10 + 20 * step, requests_sent=100 + 60 * step, responses=80 + 60 * step,
             client_content_packets=400, content_packets_sent=398, raw_send_failures={"EPERM": 3},
             outcomes={"closed:completed": 90, "dropped:syn_timeout": 2 + 2 * step},
             loop_busy_percent=40.0 + 53.0 * step, **base)
        feed(aggregator, "intercept", "intercept-1@assist1", t, pid=301, cpu_user_s=0.5,
             cpu_system_s=0.5, all=2000 + 4000 * step, resp_records=1900 + 3800 * step, routes=12,
             records_dropped=0, send_drops=1, **base)
    try:
        yield aggregator.snapshot_json()
    finally:
        aggregator.close()


@pytest.fixture
def cluster(tmp_path):
    """A cluster as the sample config runs it, mid-copy: four capture workers and four owners
    on online1, two intercepts on assist1, each publishing twice, one second apart."""
    clock = Clock()
    aggregator = Aggregator(f"ipc://{tmp_path}/stats", clock=clock)
    for step in (0, 1):
        clock.now = 100.0 + step
        t = 50.0 + step
        for n in range(4):
            resources = {"pid": 4100 + n, "cpu_user_s": 30.0 + 0.62 * step, "cpu_system_s": 9.0 + 0.2 * step,
                         "rss_bytes": 180 * MB, "num_threads": 4, "num_fds": 23}
            feed(aggregator, "capture", f"capture-{n}@online1", t, captured=9_000_000 + 131_072 * step,
                 packets_sent=8_999_000 + 131_000 * step, packets_dropped_full=12 + 3 * step,
                 kernel_dropped=7, **resources)
            feed(aggregator, "owner", f"owner-{n}@online1", t, **{**resources, "pid": 4200 + n},
                 engine={"client_packets": 8_000_000 + 130_000 * step, "packets_sent": 9_100_000 + 150_000 * step,
                         "established": 400_000 + 6_500 * step, "requests_sent": 1_200_000 + 19_800 * step,
                         "responses": 5_500_000 + 90_000 * step, "client_content_packets": 2_400_000,
                         "content_packets_sent": 2_399_000},
                 owner={"outcomes": {"closed:completed": 399_000, "dropped:syn_timeout": 130 + step}},
                 table={"sessions_refused": 0}, links={"register_drops": 1},
                 raw_send_failures={"ENOBUFS": 17}, sessions_active=15_234 + n)
        for n in range(2):
            feed(aggregator, "intercept", f"intercept-{n}@assist1", t, pid=5300 + n,
                 cpu_user_s=20.0 + 0.45 * step, cpu_system_s=5.0 + 0.1 * step, rss_bytes=95 * MB,
                 num_threads=3, num_fds=19, all=11_000_000 + 180_000 * step,
                 resp_records=10_990_000 + 179_500 * step, routes=30_512, held_refused=0,
                 records_dropped=4, held_expired=2, pcap_dropped=0, send_drops=1)
    try:
        yield aggregator.snapshot_json()
    finally:
        aggregator.close()


def table_of(text: str) -> list[list[str]]:
    """The process table: its title line and rows, split into words."""
    lines = text.splitlines()
    start = lines.index("") + 1
    return [line.split() for line in lines[start:]]


def row_of(text: str, identity: str) -> list[str]:
    line, = [line for line in text.splitlines() if f" {identity} " in line]
    return line.split()


def test_every_process_has_a_row_in_pipeline_order(snapshot):
    order = [row[1] for row in table_of(render(snapshot, 200))[1:]]
    assert order == ["capture-0@online1", "owner-0@online1", "owner-1@online1", "intercept-1@assist1"]


def test_rows_show_resources_and_the_key_rates(snapshot):
    text = render(snapshot, 200)
    assert row_of(text, "capture-0@online1") == [
        "capture", "capture-0@online1", "ok", "101", "25.0", "-", "64", "3", "17",
        "1000", "1000", "2"]                          # busy% not published; captured/s, sent/s, drops/s
    assert row_of(text, "owner-0@online1") == [
        "owner", "owner-0@online1", "ok", "201", "10.0", "93", "64", "3", "17",
        "500", "600", "37", "10", "30", "30", "1", "3"]  # cpu%, busy% (the last figure), ..., senderr
    assert row_of(text, "intercept-1@assist1") == [
        "intercept", "intercept-1@assist1", "ok", "301", "0.0", "-", "64", "3", "17",
        "2000", "1900", "12", "0", "1"]


def test_a_silent_process_is_marked_stale_with_its_age_and_its_last_figures(snapshot):
    assert row_of(render(snapshot, 200), "owner-1@online1")[:10] == [
        "owner", "owner-1@online1", "stale", "5s", "202", "0.0", "-", "64", "3", "17"]


def test_the_header_has_totals_and_the_loss_estimate(snapshot):
    first, totals, loss = render(snapshot, 300).splitlines()[:3]
    assert "processes 4 (1 stale)" in first and "bad stats messages 0" in first
    assert "capture x1: capt/s 1000 sent/s 1000 drops/s 2" in totals
    assert "owner x2:" in totals and "active 42" in totals
    assert loss.startswith("loss ~ 0.50% of content segments (398 sent of 400 expected)")
    assert "sessions dropped 4 of 94 (4.26%)" in loss


def test_the_frame_has_numbers_only(snapshot):
    text = render(snapshot, 200)
    for word in ("N/A", "None", "nan", "inf"):
        assert word not in text


@pytest.mark.parametrize("width", [60, 80, 100, 160])
def test_the_frame_fits_the_width(snapshot, width):
    assert max(len(line) for line in render(snapshot, width).splitlines()) <= width


@pytest.mark.parametrize("width", [80, 100, 160])
def test_a_cluster_frame_fits_the_width_with_one_line_per_process(cluster, width):
    text = render(cluster, width)
    assert max(len(line) for line in text.splitlines()) <= width
    assert len(table_of(text)) == 1 + 10


def test_a_wide_terminal_shows_every_column(cluster):
    titles = table_of(render(cluster, 160))[0]
    assert titles == ["role", "identity", "state", "pid", "cpu%", "busy%", "rssMB", "thr", "fds",
                      *(c.title for c in top.COLUMNS)]


def test_100_columns_keep_every_rate_of_a_cluster(cluster):
    """Send errors, a count that is 0 on a healthy copy, are the first figure to go."""
    titles = table_of(render(cluster, 100))[0]
    assert titles == ["identity", "state", "cpu%", "busy%", "rssMB",
                      *(c.title for c in top.COLUMNS if c.title != "senderr")]


def test_80_columns_keep_the_most_important_figures(cluster):
    text = render(cluster, 80)
    titles, *rows = table_of(text)
    assert {"identity", "cpu%", "rssMB", "capt/s", "sent/s", "active", "drops/s"} <= set(titles)
    assert not {"pid", "thr", "fds"} & set(titles)
    owner = dict(zip(titles, rows[4]))
    assert owner["identity"] == "owner-0@online1" and owner["cpu%"] == "82.0"
    assert owner["rssMB"] == "180" and owner["capt/s"] == "130.0k" and owner["sent/s"] == "150.0k"
    assert owner["active"] == "15234" and owner["drops/s"] == "1"
    for part in ("bad stats messages 0", "intercept x2:", "drops/s 12", "capture drops 88"):
        assert part in text, part         # header lines break between parts, never inside one


def test_a_long_identity_is_cut_not_wrapped(cluster):
    cluster["processes"][0]["identity"] = "capture-0@" + "a-very-long-host-name" * 3
    text = render(cluster, 80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "drops/s" in table_of(text)[0]


def test_the_frame_fits_the_height_and_says_what_it_cut(snapshot):
    whole = render(snapshot, 200).splitlines()
    lines = render(snapshot, 200, height=6).splitlines()
    assert len(lines) == 6 and lines[-1].startswith(f"... {len(whole) - 5} more lines")


def test_an_empty_cluster_says_so():
    empty = {"time": 0.0, "endpoint": "ipc://x", "stale_after": 3.0, "processes": [], "totals": {},
             "rates": {}, "last_error": "",
             "aggregator": {"messages": 0, "wire_errors": 0, "unexpected": 0, "bad_figures": 0,
                            "forgotten": 0},
             "loss": {"content_loss": 0.0, "expected_content": 0, "content_packets_sent": 0,
                      "client_content_packets": 0, "requests_sent": 0, "responses_completed": 0,
                      "sessions_closed": 0, "sessions_dropped": 0, "session_drop_ratio": 0.0,
                      "capture_dropped": 0, "owners": 0}}
    text = render(empty, 120)
    assert "no process has published stats yet" in text and "loss ~ 0.00%" in text


@pytest.mark.parametrize("value, text", [(None, ""), (0, "0"), (0.25, "0.2"), (7, "7"), (12.6, "13"),
                                         (99999, "99999"), (123456, "123.5k"), (4.5e6, "4.5M"),
                                         (1.25e9, "1.2G")])
def test_number_text(value, text):
    assert number_text(value) == text


# ---------------------------------------------------------------- the command

def publishing(endpoint: str, stop: threading.Event) -> None:
    """An owner and a capture worker publishing 5 times a second, their counters growing."""
    owner = StatsPublisher(endpoint, "owner", "owner-0@test", every=0.2)
    capture = StatsPublisher(endpoint, "capture", "capture-0@test", every=0.2)
    n = 0
    try:
        while not stop.is_set():
            n += 1
            now = time.monotonic()
            owner.maybe_publish(now, lambda: {"requests_sent": 10 * n, "sessions_active": 3})
            capture.maybe_publish(now, lambda: {"captured": 100 * n})
            time.sleep(0.05)
    finally:
        owner.close()
        capture.close()


@pytest.fixture
def publishers(tmp_path):
    endpoint = f"ipc://{tmp_path}/stats"
    stop = threading.Event()
    thread = threading.Thread(target=publishing, args=(endpoint, stop), daemon=True)
    thread.start()
    yield endpoint
    stop.set()
    thread.join()


def command(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tcpcopy.cluster.ops.top", *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def test_once_json_prints_a_snapshot_for_scripts(publishers):
    out, err = command("--stats", publishers, "--once", "--json").communicate(timeout=20)
    snapshot = json.loads(out)
    rows = {row["identity"]: row for row in snapshot["processes"]}
    assert set(rows) == {"owner-0@test", "capture-0@test"}, err
    owner, capture = rows["owner-0@test"], rows["capture-0@test"]
    assert owner["pid"] == os.getpid() and not owner["stale"]
    assert owner["counters"]["requests_sent"] > 0 and owner["rates"]["requests_sent"] > 0
    assert capture["rates"]["captured"] > 0
    assert snapshot["totals"]["owner"]["sessions_active"] == 3


def test_once_prints_one_frame(publishers, monkeypatch):
    monkeypatch.setattr(top, "ONCE_WAIT", 1.0)
    monkeypatch.setenv("COLUMNS", "150")
    out = io.StringIO()
    assert run_top(publishers, once=True, out=out) == 0
    frame = out.getvalue()
    assert "owner-0@test" in frame and "capture-0@test" in frame and CLEAR not in frame


def test_live_view_redraws_until_ctrl_c(publishers):
    proc = command("--stats", publishers, "--interval", "0.2", stdin=subprocess.DEVNULL,
                   env={**os.environ, "COLUMNS": "150", "LINES": "40"})
    seen = b""
    deadline = time.monotonic() + 10
    while seen.count(CLEAR.encode()) < 3 or b"owner-0@test" not in seen:
        assert time.monotonic() < deadline, seen
        if select.select([proc.stdout], [], [], 0.1)[0]:
            seen += os.read(proc.stdout.fileno(), 65536)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=5)
    assert proc.returncode == 0


def test_wait_returns_when_q_is_pressed(tmp_path):
    aggregator = Aggregator(f"ipc://{tmp_path}/stats")
    try:
        started = time.monotonic()
        assert _wait(aggregator, 5.0, lambda: True)
        assert time.monotonic() - started < 1
        assert not _wait(aggregator, 0.2, lambda: False)
    finally:
        aggregator.close()


def test_json_without_once_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--stats", "ipc:///nonexistent/x", "--json"])
    assert exit_.value.code == 2 and "add --once" in capsys.readouterr().err


def test_an_endpoint_already_bound_is_one_line_and_exit_2(capsys):
    taken = zmq.Context.instance().socket(zmq.SUB)
    taken.bind("tcp://127.0.0.1:*")
    try:
        endpoint = taken.getsockopt_string(zmq.LAST_ENDPOINT)
        assert main(["--stats", endpoint, "--once"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot bind" in err
    finally:
        taken.close(linger=0)


def compare_figures(same: int, body: int, online_p50: float, online_p99: float, target_p50: float) -> dict:
    """An owner's comparison figures as it publishes them (Comparing.stats_figures, flattened)."""
    counts = {"same": same, "status_differs": 0, "headers_differ": 0, "body_differs": body,
              "length_differs": 0, "no_answer": 0}
    return {"compare": {"compared": same + body, "counts": counts, "not_captured": 3,
                        "latency": {"online": {"p50": online_p50, "p90": online_p99, "p99": online_p99, "samples": 10},
                                    "target": {"p50": target_p50, "p90": target_p50, "p99": target_p50, "samples": 10}}}}


def test_the_header_shows_the_comparison_over_all_owners(tmp_path):
    """Two owners compare: counts add up, shares come from the sums, each percentile is the
    slower owner's."""
    aggregator = Aggregator(f"ipc://{tmp_path}/stats", clock=Clock())
    try:
        feed(aggregator, "owner", "owner-0@online1", 1.0, pid=1, **compare_figures(90, 10, 0.002, 0.250, 0.004))
        feed(aggregator, "owner", "owner-1@online1", 1.0, pid=2, **compare_figures(100, 0, 0.003, 0.010, 0.001))
        snapshot = aggregator.snapshot_json()
    finally:
        aggregator.close()
    compare = snapshot["compare"]
    assert compare["compared"] == 200 and compare["counts"]["body_differs"] == 10 and compare["not_captured"] == 6
    assert compare["shares"]["same"] == pytest.approx(0.95)
    assert compare["latency"]["online"]["p99"] == 0.250 and compare["latency"]["target"]["p50"] == 0.004
    text = render(snapshot, 200)
    line, = [line for line in text.splitlines() if line.startswith("compared ")]
    assert "compared 200: same 95.0% status 0.0% headers 0.0% body 5.0%" in line
    assert "not captured 6" in line and "online 3.0/250.0 ms, target 4.0/4.0 ms" in line
    narrow = render(snapshot, 80)
    assert max(len(line) for line in narrow.splitlines()) <= 80 and "no answer 0.0%" in narrow


def test_no_comparison_line_when_no_owner_compares(snapshot):
    assert snapshot["compare"] is None
    assert "compared" not in render(snapshot, 200)
