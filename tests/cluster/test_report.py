"""The run report: series from access logs and stats samples, report.json, the picture, the
page, empty inputs, and the recorder as the demo runs it.

Samples are real ``Aggregator.snapshot_json()`` output: an aggregator fed STATS frames with
a hand-driven clock (an owner, a capture worker and an intercept publishing once a second),
with each snapshot's wall-clock ``time`` set to where the synthetic access logs put it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tcpcopy.cluster import wire
from tcpcopy.cluster.ops import report
from tcpcopy.cluster.ops.report import (NO_REQUESTS, NO_TRAFFIC, ReportPaths, build_report, build_series,
                                    load_samples, render_html, summarize)
from tcpcopy.cluster.ops.aggregator import Aggregator
from tcpcopy.cluster.stats import StatsPublisher

T0 = 1_700_000_000.0
MB = 2**20
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Clock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def entry(t: float, status: int = 200, connection: int = 1) -> dict:
    return {"time": t, "status": status, "request_method": "GET", "uri": "/index.html",
            "request_uri": "/index.html", "connection": connection, "connection_requests": 1,
            "remote_addr": "198.18.1.2", "remote_port": 40000 + connection}


def log(per_second: list[int], start: float = T0, offset: float = 0.1) -> list[dict]:
    """``per_second[i]`` requests spread over second i after ``start``."""
    entries = []
    for second, count in enumerate(per_second):
        for k in range(count):
            entries.append(entry(start + second + offset + 0.8 * k / max(count, 1), connection=len(entries)))
    return entries


def make_samples(tmp_path, seconds: int = 4, requests_per_s: int = 100, lost_segments: int = 0) -> list[dict]:
    """One snapshot per second; from second 1 on, the owner sends ``requests_per_s`` requests
    a second at 0.3 CPU-seconds a second, the capture worker 0.1, the intercept 0.2."""
    clock = Clock()
    aggregator = Aggregator(f"ipc://{tmp_path}/stats-test", clock=clock)
    samples = []
    try:
        for step in range(seconds):
            clock.now = 100.0 + step
            sent = requests_per_s * step
            _feed(aggregator, "owner", "tcpcopy@lab", step, pid=11, cpu_user_s=0.3 * step, rss_bytes=30 * MB,
                  engine={"requests_sent": sent, "client_content_packets": sent,
                          "content_packets_sent": sent - (lost_segments if step == seconds - 1 else 0),
                          "established": sent, "closed": {"completed": sent}},
                  owner={"outcomes": {"closed:completed": sent, "dropped:syn_timeout": step // 2}},
                  table={"sessions_started": sent})
            _feed(aggregator, "capture", "capture-0@lab", step, pid=12, cpu_user_s=0.1 * step,
                  rss_bytes=90 * MB + step * MB, captured=7 * sent)
            _feed(aggregator, "intercept", "intercept@lab", step, pid=13, cpu_system_s=0.2 * step,
                  rss_bytes=45 * MB, resp_records=5 * sent)
            sample = aggregator.snapshot_json()
            sample["time"] = T0 + step + 0.5
            samples.append(json.loads(json.dumps(sample)))   # as a recorder's line reads back
    finally:
        aggregator.close()
    return samples


def _feed(aggregator, role, identity, published_at, **counters) -> None:
    assert aggregator.ingest(wire.encode_stats(role, identity, {**counters, "published_at": float(published_at)}))


# ---------------------------------------------------------------------- series

def test_requests_per_second_online_and_at_the_target_on_one_axis(tmp_path):
    online = log([50, 100, 100])
    target = log([50, 98, 100], offset=0.15)
    series = build_series([], online, target)
    assert series.origin == T0 + 0.1
    assert series.seconds == [0, 1, 2]
    assert series.online == [50, 100, 100]
    assert series.target == [50, 98, 100]
    assert series.shortfall == [0, 2, 0]
    assert series.cumulative_loss == pytest.approx([0.0, 2 / 150, 2 / 250])


def test_a_quiet_second_is_zero_not_missing():
    series = build_series([], log([10, 0, 0, 10]), log([10, 0, 0, 10]))
    assert series.online == [10, 0, 0, 10]
    assert series.target == [10, 0, 0, 10]


def test_copies_multiply_what_the_target_should_see():
    series = build_series([], log([10, 10]), log([20, 19]), copies=2)
    assert series.expected == [20, 20]
    assert series.shortfall == [0, 1]
    assert series.cumulative_loss[-1] == pytest.approx(1 / 40)


def test_cpu_per_role_copier_rate_and_loss_estimate_come_from_the_samples(tmp_path):
    samples = make_samples(tmp_path, lost_segments=3)
    series = build_series(samples, log([100, 100, 100], start=T0 + 0.5), [])
    assert series.origin == T0 + 0.5           # the first sample comes first
    assert series.sample_times == [0.0, 1.0, 2.0, 3.0]
    assert list(series.cpu_percent) == ["capture", "owner", "intercept"]   # pipeline order
    assert series.cpu_percent["owner"] == pytest.approx([0.0, 30.0, 30.0, 30.0])
    assert series.cpu_percent["capture"] == pytest.approx([0.0, 10.0, 10.0, 10.0])
    assert series.cpu_percent["intercept"] == pytest.approx([0.0, 20.0, 20.0, 20.0])
    assert series.copier_times == [0.5, 1.5, 2.5]                   # between the samples
    assert series.copier_requests == pytest.approx([100.0, 100.0, 100.0])
    assert series.copier_loss[:3] == [0.0, 0.0, 0.0]
    assert series.copier_loss[3] == pytest.approx(3 / 300)


def owner_sample(t: float, **sent_by_identity) -> dict:
    return {"time": t, "processes": [{"role": "owner", "identity": identity,
                                      "counters": {"engine.requests_sent": sent}}
                                     for identity, sent in sent_by_identity.items()]}


def test_the_copier_rate_sums_owners_and_survives_a_restart():
    samples = [owner_sample(T0, a=0), owner_sample(T0 + 1, a=100, b=50),
               owner_sample(T0 + 3, a=300, b=20),        # b restarted: counted from 0 again
               owner_sample(T0 + 4, a=300, b=20)]        # nothing sent
    times, rates = report.copier_rate(samples, T0)
    assert times == [0.5, 2.0, 3.5]
    assert rates == pytest.approx([150.0, 110.0, 0.0])


def test_samples_alone_make_a_time_axis():
    series = build_series([{"time": T0, "processes": []}, {"time": T0 + 2.2, "processes": []}], [], [])
    assert series.seconds == [0, 1, 2] and series.online == [0, 0, 0]
    assert series.has_samples and not series.has_requests


def test_copies_below_one_are_refused():
    with pytest.raises(ValueError, match="copies"):
        build_series([], [], [], copies=0)


# ---------------------------------------------------------------------- the window loss

def lagged(entries: list[dict], delay: float) -> list[dict]:
    """The same requests, each logged ``delay`` seconds later (the copy's lag)."""
    return [{**e, "time": e["time"] + delay} for e in entries]


def test_a_lagged_copy_that_lost_nothing_shows_no_loss_in_any_window():
    online = log([50, 100, 100, 100, 100, 100, 50, 0, 0], offset=0.5)
    series = build_series([], online, lagged(online, 0.7))    # most requests land a second later
    assert sum(series.online) == sum(series.target) == 600
    assert max(series.shortfall) > 0 and max(series.cumulative_loss) > 0.3   # per second, it looks lost
    assert 0.3 < series.copy_lag < 1.2
    assert len(series.window_loss) == len(series.seconds) - 1
    assert series.window_loss == [0.0] * len(series.window_loss)


@pytest.mark.parametrize("lag", [0, 1, 3])
def test_no_window_shows_loss_when_nothing_was_lost_whatever_the_lag(lag):
    expected = [0, 20, 80, 10, 0, 200, 5, 0, 0, 0, 0]
    arrived = [0] * lag + expected[:len(expected) - lag]
    points = report.window_loss(_totals(expected), _totals(arrived), window=3, lag=0.0)
    assert all(p in (None, 0.0) for p in points)


def test_the_window_loss_shows_a_real_loss_in_the_windows_that_hold_it():
    expected = [10] * 10
    arrived = [0] + [10] * 9            # a second behind
    arrived[5] = 5                       # five requests of second 4 never arrive
    lag = report.copy_lag(_totals(expected), _totals(arrived))
    assert lag == pytest.approx(1.0)
    points = report.window_loss(_totals(expected), _totals(arrived), window=3, lag=lag)
    assert points == pytest.approx([0, 0, 0, 0, 5 / 30, 5 / 30, 5 / 30, 0, 0])


def test_late_requests_that_come_are_not_loss_and_the_window_loss_is_never_below_zero():
    expected = [10] * 8
    came_late = [10, 10, 0, 0, 10, 40, 10, 10]    # second 2's requests 3 s late, and 10 extra
    assert report.window_loss(_totals(expected), _totals(came_late), window=2, lag=0.0) == [0.0] * 8
    half_lost = [10, 10, 0, 10, 10, 15, 10, 10]    # of second 2's, 5 come 3 s late, 5 never
    points = report.window_loss(_totals(expected), _totals(half_lost), window=2, lag=0.0)
    assert points == pytest.approx([0, 0, 0.25, 0.25, 0, 0, 0, 0])   # where they were due, not later


def test_nothing_expected_is_no_point_and_a_short_run_has_none_to_judge():
    assert report.window_loss(_totals([0, 0, 5, 0]), _totals([0, 0, 0, 5]), window=1, lag=1.0) == [None, None, 0.0]
    assert report.window_loss(_totals([5]), _totals([0]), window=5, lag=2.0) == []
    assert report.copy_lag([], []) == 0.0 and report.copy_lag(_totals([5, 5]), _totals([0, 0])) == 0.0


def test_the_copiers_window_loss_comes_from_its_content_counters(tmp_path):
    samples = make_samples(tmp_path, seconds=4, lost_segments=30)    # 30 not replayed, at the end
    assert report.per_second_totals(samples, T0, 5, "expected_content") == [0, 100, 200, 300, 300]
    assert report.per_second_totals(samples, T0, 5, "content_packets_sent") == [0, 100, 200, 270, 270]

    def sample(second: int, expected: int, sent: int) -> dict:
        return {"time": T0 + second + 0.5, "processes": [],
                "loss": {"expected_content": expected, "content_packets_sent": sent}}

    sent = [0, 100, 200, 250, 350, 450, 550]                 # 50 segments of second 3 never replayed
    series = build_series([sample(i, 100 * i, n) for i, n in enumerate(sent)], [], [])
    assert series.copier_lag == 0.0
    assert series.copier_window_loss == pytest.approx([None, 0, 0, 50 / 300, 50 / 400, 50 / 500, 50 / 500])


def _totals(counts: list[int]) -> list[int]:
    out, total = [], 0
    for count in counts:
        total += count
        out.append(total)
    return out


# ---------------------------------------------------------------------- report.json

def test_report_json_has_totals_both_losses_sessions_and_processes(tmp_path):
    samples = make_samples(tmp_path, lost_segments=3)
    online, target = log([100, 100, 100]), log([100, 100, 99], offset=0.2)
    target[-1]["status"] = 502
    processes = [report_process("tcpcopy", 0.9, 28.0), report_process("intercept", 0.6, 46.5)]
    paths = build_report(samples, online, target, 1, processes, tmp_path / "out")
    data = json.loads(paths.json.read_text())
    assert data["traffic"] is True and data["note"] == ""
    assert data["totals"] == {
        "online_requests": 300, "expected_target_requests": 300, "target_requests": 299,
        "missing_requests": 1, "online_status": {"200": 300}, "target_status": {"200": 298, "502": 1},
        "peak_online_rps": 100, "peak_target_rps": 100}
    assert data["loss"]["from_access_logs"] == pytest.approx(1 / 300)
    copier = data["loss"]["from_copier"]
    assert copier["content_loss"] == pytest.approx(3 / 300)
    assert copier["sessions_closed"] == 300 and copier["sessions_dropped"] == 1
    assert data["sessions"]["outcomes"] == {"closed:completed": 300, "dropped:syn_timeout": 1}
    assert data["sessions"]["outcomes_from"] == "stats samples"
    assert data["sessions"]["closed"] == 300 and data["sessions"]["dropped"] == 1
    assert data["sessions"]["established"] == 300 and data["sessions"]["started"] == 300
    assert data["processes"] == [{"name": "tcpcopy", "cpu_seconds": 0.9, "peak_rss_mb": 28.0},
                                 {"name": "intercept", "cpu_seconds": 0.6, "peak_rss_mb": 46.5}]
    published = {p["role"]: p for p in data["published"]}
    assert [p["role"] for p in data["published"]] == ["capture", "owner", "intercept"]
    assert published["owner"]["cpu_seconds"] == pytest.approx(0.9)
    assert published["owner"]["peak_cpu_percent"] == pytest.approx(30.0)
    assert published["capture"]["peak_rss_mb"] == pytest.approx(93.0)   # the largest seen
    assert published["intercept"]["pid"] == 13
    assert data["samples"] == 4
    assert data["series"]["online"] == [100, 100, 100, 0]    # to the last sample


def report_process(name: str, cpu: float, rss: float):
    from tcpcopy.lab.livecopy import ProcessFigures
    return ProcessFigures(name, cpu, rss)


def test_the_tcpcopy_summary_is_preferred_for_sessions(tmp_path):
    samples = make_samples(tmp_path)
    summary = {"owner": {"outcomes": {"closed:completed": 7, "dropped:reset": 1}},
               "engine": {"established": 8}, "table": {"sessions_started": 9}}
    series = build_series(samples, [], [])
    data = summarize(series, samples, [], [], [], summary)
    assert data["sessions"] == {"started": 9, "established": 8, "closed": 7, "dropped": 1,
                                "outcomes": {"closed:completed": 7, "dropped:reset": 1},
                                "outcomes_from": "tcpcopy summary"}


def test_the_engine_outcome_names_are_read_when_the_owner_has_none(tmp_path):
    sample = {"time": T0, "processes": [{"role": "owner", "identity": "o", "counters": {
        "engine.closed.completed": 5, "engine.dropped.syn_timeout": 2, "engine.closed_total": 9}}]}
    assert report.sample_outcomes([sample]) == {"closed:completed": 5, "dropped:syn_timeout": 2}


# ---------------------------------------------------------------------- picture and page

def test_the_picture_is_a_real_png_of_some_size(tmp_path):
    paths = build_report(make_samples(tmp_path), log([100, 100, 100]), log([100, 99, 100]), 1, [],
                         tmp_path / "out")
    assert isinstance(paths, ReportPaths) and [p.name for p in paths] == ["report.json", "report.png", "report.html"]
    png = paths.png.read_bytes()
    assert png[:8] == PNG_MAGIC
    assert len(png) > 10_000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width >= 800 and height >= 600


def drawn_picture(tmp_path, copies: int = 1):
    """The figure of a lossy run with samples, laid out as it is saved, and its report."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    samples = make_samples(tmp_path, seconds=6, lost_segments=3)
    online = log([100, 300, 300, 300, 100, 0], start=T0 + 0.5)
    target = [e for e in lagged(online, 0.6) for _ in range(copies)][:-9]
    series = build_series(samples, online, target, copies)
    data = summarize(series, samples, online, target)
    figure = report.build_figure(series, "tcpcopy live copy", report.headline(data))
    FigureCanvasAgg(figure).draw()
    return figure, data


def test_the_title_block_has_the_totals_and_the_loss(tmp_path):
    figure, data = drawn_picture(tmp_path, copies=2)
    head = figure.subfigs[0]
    lines = [t.get_text() for t in head.texts]
    assert lines[0] == "tcpcopy live copy"
    assert lines[1] == ("online 1,100 requests x 2 copies = 2,200 expected at the target, 2,191 arrived: "
                        "9 missing, loss 0.409%")
    assert lines[2] == "copier's estimate 0.6% of content segments not replayed, sessions 500 started, 2 dropped, 6 s"


def test_the_title_block_says_when_a_run_was_cut_short_or_saw_nothing(tmp_path):
    series = build_series([], log([3]), log([3]))
    data = summarize(series, [], log([3]), log([3]), meta={"interrupted": "by SIGTERM: what was collected"})
    assert report.headline(data)[-1] == "interrupted by SIGTERM: what was collected"
    empty = summarize(build_series([], [], []), [], [], [])
    assert report.headline(empty)[-1] == NO_TRAFFIC
    assert "no stats from the copier" in report.headline(empty)[1]


def test_one_y_axis_per_panel_every_mark_in_its_legend_beside_it_and_nothing_clipped(tmp_path):
    figure, _data = drawn_picture(tmp_path)
    panels = figure.subfigs[1].axes
    assert len(panels) == 3                                  # no twin axes
    canvas = figure.bbox
    for axes in panels:
        marks = [*axes.get_lines(), *axes.patches, *axes.collections]
        labels = [m.get_label() for m in marks]
        assert marks and all(not label.startswith("_") for label in labels), labels
        legend = axes.get_legend()
        assert sorted(t.get_text() for t in legend.get_texts()) == sorted(labels)
        box = legend.get_window_extent()
        assert not box.overlaps(axes.get_window_extent())    # beside the panel: no line runs into it
        texts = [legend, axes.title, axes.yaxis.label, axes.xaxis.label, *axes.get_yticklabels()]
        for artist in texts:
            if artist.get_visible() and getattr(artist, "get_text", lambda: "x")():
                extent = artist.get_window_extent()
                assert canvas.x0 <= extent.x0 and extent.x1 <= canvas.x1, artist
                assert canvas.y0 <= extent.y0 and extent.y1 <= canvas.y1, artist
    for text in figure.subfigs[0].texts:
        extent = text.get_window_extent()
        assert canvas.x0 <= extent.x0 and extent.x1 <= canvas.x1, text.get_text()


def test_the_loss_panel_is_in_percent_from_zero_up(tmp_path):
    figure, data = drawn_picture(tmp_path)
    loss = figure.subfigs[1].axes[1]
    low, high = loss.get_ylim()
    assert low <= 0 < high and -low < 0.05 * high             # 0 just above the frame, nothing below
    assert loss.yaxis.get_major_formatter()(0.01, 0).endswith("%")
    for line in loss.get_lines():
        assert all(y >= 0 for y in line.get_ydata() if y == y)    # NaN: nothing to judge
    assert max(y for line in loss.get_lines() for y in line.get_ydata() if y == y) > 0
    assert data["series"]["window_loss"] and data["series"]["loss_window_s"] == report.LOSS_WINDOW_S


def test_the_page_embeds_the_picture_and_has_the_tables(tmp_path):
    processes = [report_process("tcpcopy/worker", 0.37, 90.4)]
    paths = build_report(make_samples(tmp_path), log([100, 100]), log([100, 100]), 1, processes, tmp_path / "out",
                         meta={"load": "200/s <for> 3 s"})
    page = paths.html.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert 'src="data:image/png;base64,' in page and 'href="report.png"' in page
    import base64
    embedded = page.split('src="data:image/png;base64,', 1)[1].split('"', 1)[0]
    assert base64.b64decode(embedded) == paths.png.read_bytes()
    for title in ("<h2>requests</h2>", "<h2>loss</h2>", "<h2>processes, measured by the harness</h2>",
                  "<h2>processes, from their own stats</h2>"):
        assert title in page
    assert page.count("<table>") >= 5
    assert "<td>tcpcopy/worker</td><td>0.37</td><td>90.4</td>" in page
    assert "<td>at the target</td><td>200</td>" in page
    assert "200/s &lt;for&gt; 3 s" in page     # text is escaped


def test_render_html_without_a_picture_still_has_the_tables(tmp_path):
    series = build_series([], log([3]), log([3]))
    page = render_html(summarize(series, [], log([3]), log([3])), None)
    assert "<img" not in page and "<h2>requests</h2>" in page and "no stats samples" in page


def test_without_matplotlib_the_report_is_tables_and_says_how_to_get_the_picture(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "can_draw", lambda: False)   # matplotlib is an extra
    paths = build_report([], log([3]), log([3]), 1, [], tmp_path / "out")
    assert paths.png is None and not (tmp_path / "out" / "report.png").exists()
    page = paths.html.read_text()
    assert "<img" not in page and "<h2>requests</h2>" in page
    assert "pip install &#x27;tcpcopy[report]&#x27;" in page


# ---------------------------------------------------------------------- empty inputs

def test_no_traffic_at_all_still_makes_the_three_files_and_says_so(tmp_path):
    paths = build_report([], [], [], 1, [], tmp_path / "empty")
    data = json.loads(paths.json.read_text())
    assert data["traffic"] is False and data["note"] == NO_TRAFFIC
    assert data["totals"]["online_requests"] == 0 and data["loss"]["from_access_logs"] == 0.0
    assert data["loss"]["from_copier"] is None
    assert data["series"]["seconds"] == [] and data["published"] == [] and data["processes"] == []
    assert paths.png.read_bytes()[:8] == PNG_MAGIC
    page = paths.html.read_text()
    assert NO_TRAFFIC in page and "data:image/png;base64," in page


def test_samples_without_requests_say_the_copy_saw_none(tmp_path):
    samples = make_samples(tmp_path, requests_per_s=0)
    paths = build_report(samples, [], [], 1, [], tmp_path / "idle")
    data = json.loads(paths.json.read_text())
    assert data["traffic"] is False and data["note"] == NO_REQUESTS
    assert paths.png.read_bytes()[:8] == PNG_MAGIC
    assert len(data["series"]["cpu_percent"]["owner"]) == 4


def test_entries_without_a_time_are_not_counted_per_second():
    series = build_series([], [{"status": 200}, entry(T0)], [])
    assert series.online == [1]


# ---------------------------------------------------------------------- samples on disk and the recorder

def test_load_samples_skips_a_torn_last_line_and_a_missing_file(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps({"time": 1.0, "processes": []}) + "\n" + '{"time": 2.0, "proc')
    assert [s["time"] for s in load_samples(path)] == [1.0]
    assert load_samples(tmp_path / "none.jsonl") == []


def test_the_recorder_writes_a_snapshot_a_second_and_a_last_one_on_sigterm(tmp_path):
    endpoint, out = f"ipc://{tmp_path}/stats", tmp_path / "samples.jsonl"
    recorder = subprocess.Popen([sys.executable, "-m", "tcpcopy.cluster.ops.report", "record", "--stats", endpoint,
                                 "--out", str(out), "--interval", "0.5"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    publisher = StatsPublisher(endpoint, "owner", "owner-0@test", every=0.2)
    try:
        assert recorder.stdout.readline().startswith(f"recording {endpoint} to {out}")
        deadline = time.monotonic() + 2.2
        n = 0
        while time.monotonic() < deadline:
            n += 1
            publisher.publish({"engine": {"requests_sent": 10 * n}})
            time.sleep(0.1)
    finally:
        publisher.close()
        recorder.send_signal(signal.SIGTERM)
        rest, err = recorder.communicate(timeout=10)
    assert recorder.returncode == 0, err
    samples = load_samples(out)
    assert 4 <= len(samples) <= 7, [s["time"] for s in samples]
    assert f"recorded {len(samples)} snapshots" in rest
    last = samples[-1]
    owner, = last["processes"]
    assert owner["role"] == "owner" and owner["counters"]["engine.requests_sent"] >= 100
    assert all(b["time"] > a["time"] for a, b in zip(samples, samples[1:]))


def test_the_recorder_stops_by_itself_after_its_seconds(tmp_path):
    out = tmp_path / "s.jsonl"
    written = report.record(f"ipc://{tmp_path}/stats", out, seconds=0.6, interval=0.25)
    assert written == len(load_samples(out)) >= 3


def test_the_build_command_makes_a_report_from_files(tmp_path):
    online, target = tmp_path / "online.log", tmp_path / "target.log"
    online.write_text("".join(json.dumps({**e, "time": f"{e['time']:.3f}", "status": str(e["status"])}) + "\n"
                              for e in log([5, 5])))
    target.write_text("".join(json.dumps(e) + "\n" for e in log([5, 4])))
    done = subprocess.run([sys.executable, "-m", "tcpcopy.cluster.ops.report", "build", "--online-log", str(online),
                           "--target-log", str(target), "--out-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(tmp_path / "r" / n) for n in ("report.json", "report.png", "report.html")]
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["totals"]["online_requests"] == 10 and data["loss"]["from_access_logs"] == pytest.approx(0.1)


# ---------------------------------------------------------------------- the comparison

def comparison_summary() -> dict:
    """A comparison summary as tcpcopy's --summary-json holds it (Comparing.summary()):
    90 same, 6 bodies and 4 statuses differ, 2 not captured; the online side answered a
    slow path in 250 ms."""
    def example(verdict: str, path: str, online: str, target: str, difference: str) -> dict:
        return {"verdict": verdict, "key": f"GET {path}", "request": f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n",
                "online": {"first_bytes": online, "length": 120, "latency": 0.25},
                "target": {"first_bytes": target, "length": 121, "latency": 0.004},
                "differences": [difference], "notes": []}
    examples = [example("status_differs", f"/gone/{i}", "HTTP/1.1 200 OK\r\n", "HTTP/1.1 404 Not Found\r\n",
                        "status: '200' != '404'") for i in range(4)]
    examples.append(example("body_differs", "/changed", "HTTP/1.1 200 OK\r\n\r\nversion <one>",
                            "HTTP/1.1 200 OK\r\n\r\nversion two", "body: 'one' != 'two'"))
    return {"compared": 100, "sessions_compared": 7, "not_captured": 2,
            "counts": {"same": 90, "status_differs": 4, "headers_differ": 0, "body_differs": 6,
                       "length_differs": 0, "no_answer": 0},
            "shares": {"same": 0.9}, "latency": {
                "online": {"p50": 0.0012, "p90": 0.25, "p99": 0.26, "samples": 100, "kept": 100},
                "target": {"p50": 0.0031, "p90": 0.005, "p99": 0.009, "samples": 100, "kept": 100}},
            "examples": examples}


def test_the_comparison_section_has_the_shares_the_first_examples_and_both_latencies(tmp_path):
    paths = build_report([], [], [], 1, [], tmp_path / "out", tcpcopy_summary={"compare": comparison_summary()})
    section = json.loads(paths.json.read_text())["comparison"]
    assert section["compared"] == 100 and section["not_captured"] == 2 and section["sessions_compared"] == 7
    shares = {v["verdict"]: (v["count"], v["share"]) for v in section["verdicts"]}
    assert shares == {"same": (90, 0.9), "status_differs": (4, 0.04), "headers_differ": (0, 0.0),
                      "body_differs": (6, 0.06), "length_differs": (0, 0.0), "no_answer": (0, 0.0)}
    assert [e["request"].split()[1] for e in section["examples"]["status_differs"]] == ["/gone/0", "/gone/1", "/gone/2"]
    changed, = section["examples"]["body_differs"]
    assert changed["online"]["first_bytes"].endswith("version <one>") and changed["differences"] == ["body: 'one' != 'two'"]
    assert section["latency"] == {"online": {"p50": 0.0012, "p90": 0.25, "p99": 0.26, "samples": 100},
                                  "target": {"p50": 0.0031, "p90": 0.005, "p99": 0.009, "samples": 100}}
    assert "capture" in section["latency_measures"]["online"] and "intercept" in section["latency_measures"]["target"]
    page = paths.html.read_text()
    assert '<section id="comparison">' in page
    assert "<tr><td>body_differs</td><td>6</td><td>6.00%</td></tr>" in page
    assert "<tr><td>p90</td><td>250 ms</td><td>5 ms</td></tr>" in page
    assert "<h3>first examples: status_differs</h3>" in page and "version &lt;one&gt;" in page
    assert page.count('<table class="example">') == 4


def test_the_comparison_is_in_the_title_block_and_has_its_own_row_in_the_picture(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    samples = make_samples(tmp_path)
    series = build_series(samples, log([100, 100]), log([100, 100]))
    data = summarize(series, samples, log([100, 100]), log([100, 100]), comparison=comparison_summary())
    lines = report.headline(data)
    assert "compared 100 requests: 90% same, 10% differ (2 not captured); latency p50 online 1.2 ms, target 3.1 ms" in lines
    figure = report.build_figure(series, "t", lines, data["comparison"])
    FigureCanvasAgg(figure).draw()
    assert len(figure.subfigs[1].axes) == 3                   # the time panels as they were
    latency, verdicts = figure.subfigs[2].axes
    bars = {c.get_label().split("\n")[0]: [round(b.get_height(), 3) for b in c] for c in latency.containers}
    assert bars == {"online": [1.2, 250.0, 260.0], "target": [3.1, 5.0, 9.0]}         # p50, p90, p99 in ms
    widths = {t.get_text(): b.get_width() for t, b in zip(verdicts.get_yticklabels(), verdicts.patches)}
    assert widths["same"] == pytest.approx(0.9) and widths["body_differs"] == pytest.approx(0.06)
    canvas = figure.bbox
    for axes in (latency, verdicts):
        for artist in (axes.title, axes.get_legend() or axes.title, *axes.texts):
            extent = artist.get_window_extent()
            assert canvas.x0 <= extent.x0 and extent.x1 <= canvas.x1, artist


def test_a_run_that_compared_nothing_has_no_comparison_section(tmp_path):
    paths = build_report([], log([3]), log([3]), 1, [], tmp_path / "out", tcpcopy_summary={"engine": {}})
    assert json.loads(paths.json.read_text())["comparison"] is None
    assert 'id="comparison"' not in paths.html.read_text()


def test_a_malformed_comparison_summary_gives_zeros_not_a_traceback():
    section = report.comparison_section({"counts": {"same": "many", "no_answer": -3}, "latency": [],
                                         "examples": [{"verdict": "nonsense"}, 7]})
    assert section["compared"] == 0 and all(v["share"] == 0.0 for v in section["verdicts"])
    assert section["latency"]["online"] == {"p50": None, "p90": None, "p99": None, "samples": 0}
    assert section["examples"] == {}


def test_the_build_command_takes_tcpcopys_summary_for_the_comparison(tmp_path):
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"compare": comparison_summary()}))
    done = subprocess.run([sys.executable, "-m", "tcpcopy.cluster.ops.report", "build", "--tcpcopy-summary",
                           str(summary), "--out-dir", str(tmp_path / "r")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "r" / "report.json").read_text())["comparison"]["compared"] == 100
    summary.write_text("{not json")
    done = subprocess.run([sys.executable, "-m", "tcpcopy.cluster.ops.report", "build", "--tcpcopy-summary",
                           str(summary), "--out-dir", str(tmp_path / "r")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"--tcpcopy-summary {summary}: not JSON" in done.stderr and "--summary-json" in done.stderr
