"""How the benchmark suite judges its runs: medians per tool, the ratios of this project to the
C tool, the verdict of every target, the order of the runs, the tables, the C tool's closing
counters and the soak's RSS growth. The runs themselves need the lab and are the suite's own
business (``python -m tcpcopy.lab.benchmark``)."""

from __future__ import annotations

import pytest

from tcpcopy.lab import benchmark as bm
from tcpcopy.lab import ctool
from tcpcopy.lab.servers import ReceivedBody


def run(scenario: str = "short-2500", *, offered: float = 2500, online_rps: float = 2500,
        target_rps: float | None = None, loss: float = 0.0, copier_us: float = 200.0,
        intercept_us: float = 60.0, copies: int = 1, capture_drops: int = 0, failed: int = 0,
        online: int = 25000, tool: str = bm.OURS) -> bm.Run:
    target_rps = online_rps * copies if target_rps is None else target_rps
    return bm.Run(
        scenario=scenario, shape="1,1,1", seconds=10, copies=copies, offered_rps=offered,
        h2load_done=online, h2load_failed=failed, online_requests=online,
        target_requests=round(online * copies * (1 - loss)), online_rps=online_rps, target_rps=target_rps,
        loss_ratio=loss, copier_cpu_s=1.0, intercept_cpu_s=0.3, copier_us=copier_us,
        intercept_us=intercept_us, owner_rss_mb=40, capture_rss_mb=90, intercept_rss_mb=45,
        box_busy_s=12.0, other_busy_s=10.7, box_cpu_mean=60, box_cpu_max=70, loadavg_1m=1.2,
        capture_drops=capture_drops, sessions_dropped=0, restarts=0, outcomes={"closed:completed": online},
        tool=tool, copier_rss_mb=130)


def test_figures_are_medians_and_the_worst_loss_is_kept() -> None:
    runs = [run(loss=0.0, copier_us=190), run(loss=3e-4, copier_us=230), run(loss=1e-5, copier_us=200)]
    row = bm.summarize(runs)["short-2500"]
    assert row["runs"] == 3
    assert row["loss_ratio"] == 1e-5 and row["worst_loss"] == 3e-4
    assert row["copier_us"] == 200
    assert row["online_requests"] == 75000


def test_a_run_that_fell_behind_or_missed_its_load_is_not_sustained() -> None:
    assert run().offered_reached and run().kept_up
    assert not run(online_rps=2000).offered_reached          # h2load could not deliver the rate
    assert not run(failed=3).offered_reached
    assert not run(target_rps=2000).kept_up                   # the copy fell behind
    assert run(scenario="n3-1000", copies=3, online_rps=1000, offered=1000).kept_up
    assert not run(scenario="n3-1000", copies=3, online_rps=1000, offered=1000, target_rps=1000).kept_up


def test_keepalive_is_judged_at_10000_for_cpu_and_unthrottled_for_loss() -> None:
    runs = [run("keepalive-10000", offered=10000, online_rps=10000, copier_us=48, intercept_us=10),
            run("keepalive-10000", offered=10000, online_rps=10000, copier_us=30, intercept_us=6, tool=bm.C),
            run("keepalive-max", offered=0, online_rps=30000, loss=4e-3),
            run("keepalive-max", offered=0, online_rps=25000, loss=5e-3, tool=bm.C)]
    judged = {(v["scenario"], v["figure"]): v
              for v in bm.verdicts(bm.summarize(runs), bm.summarize(runs, bm.C))}
    cpu = judged[("keepalive-10000", "copier_us")]
    assert cpu["measured"] == pytest.approx(1.6) and cpu["met"] is True
    assert (cpu["ours"], cpu["c"]) == (48, 30)
    loss = judged[("keepalive-max", "loss_ratio")]
    assert loss["measured"] == 4e-3 and loss["met"] is True        # above 1e-3, but no more than C's
    worse = bm.verdicts(bm.summarize([run("keepalive-max", offered=0, loss=6e-3)]),
                        bm.summarize([run("keepalive-max", offered=0, loss=5e-3, tool=bm.C)], bm.C))
    assert {(v["scenario"], v["figure"]): v["met"] for v in worse}[("keepalive-max", "loss_ratio")] is False


def test_targets_are_met_missed_or_not_run() -> None:
    summary = bm.summarize([run(copier_us=400, intercept_us=60, loss=2e-4)])
    c_summary = bm.summarize([run(copier_us=150, intercept_us=40, tool=bm.C)], bm.C)
    by_figure = {(v["scenario"], v["figure"]): v for v in bm.verdicts(summary, c_summary)}
    assert by_figure[("short-2500", "loss_ratio")]["met"] is False
    assert by_figure[("short-2500", "copier_us")]["met"] is False           # 2.67 x C
    assert by_figure[("short-2500", "intercept_us")]["met"] is True         # 1.5 x C
    assert by_figure[("short-2500", "intercept_us")]["measured"] == pytest.approx(1.5)
    assert by_figure[("n3-1000", "loss_ratio")]["met"] is None
    assert by_figure[("keepalive-max", "loss_ratio")]["met"] is None        # no keep-alive run
    lines = bm.verdict_lines(bm.verdicts(summary, c_summary))
    assert any(line.strip().startswith("MISSED") and "2,500/s" in line for line in lines)
    assert any(line.strip().startswith("MET") and "ours/C 1.50x (ours 60, C 40" in line for line in lines)
    assert any(line.strip().startswith("not run") and "-n 3" in line for line in lines)


def test_without_the_c_tool_ratios_are_not_judged_and_losses_are() -> None:
    results = bm.verdicts(bm.summarize([run(copier_us=400, loss=0.0)]))
    by_figure = {(v["scenario"], v["figure"]): v for v in results}
    assert by_figure[("short-2500", "copier_us")]["met"] is None
    assert by_figure[("short-2500", "loss_ratio")]["met"] is True
    assert any(line.strip().startswith("no C") and "copier CPU per short" in line for line in bm.verdict_lines(results))


def test_ratios_are_ours_over_c_and_need_a_positive_c_figure() -> None:
    assert bm.ratio(300, 150) == 2.0
    assert bm.ratio(300, None) is None and bm.ratio(None, 150) is None
    assert bm.ratio(300, 0) is None             # a C run that copied nothing costs nothing per copy


def test_the_comparison_puts_both_tools_side_by_side() -> None:
    ours = bm.summarize([run(copier_us=210, intercept_us=66), run("redis", copier_us=30, intercept_us=9)])
    theirs = bm.summarize([run(copier_us=105, intercept_us=60, tool=bm.C)], bm.C)
    comparison = bm.compare(ours, theirs)
    assert list(comparison) == ["short-2500", "redis"]
    row = comparison["short-2500"]
    assert row["copier_ratio"] == 2.0 and row["intercept_ratio"] == pytest.approx(1.1)
    assert (row["copier_mb_ours"], row["intercept_mb_c"]) == (130, 45)
    assert comparison["redis"]["copier_us_c"] is None and comparison["redis"]["copier_ratio"] is None
    line = bm.compare_row("short-2500", row)
    assert "2.00x" in line and "1.10x" in line
    assert bm.compare_row("redis", comparison["redis"]).split().count("-") >= 5
    assert len(line) == len(bm.COMPARE_HEADER)      # the columns line up


def test_both_tools_run_back_to_back_in_alternating_order() -> None:
    scenarios = bm._scenarios("short-2500,redis")
    order = [(s.name, attempt, tool) for s, attempt, tool in bm.plan(scenarios, 2, with_c=True)]
    assert order == [("short-2500", 1, bm.C), ("short-2500", 1, bm.OURS),
                     ("short-2500", 2, bm.OURS), ("short-2500", 2, bm.C),
                     ("redis", 1, bm.C), ("redis", 1, bm.OURS), ("redis", 2, bm.OURS), ("redis", 2, bm.C)]
    assert [tool for _s, _a, tool in bm.plan(scenarios, 2, with_c=False)] == [bm.OURS] * 4


def test_the_time_left_follows_the_runs_so_far() -> None:
    assert bm.time_left([], 4, 10) == 4 * (10 + bm.RUN_OVERHEAD_S)
    assert bm.time_left([30.0, 50.0], 3, 10) == 120.0


def test_an_upload_counts_only_bodies_kept_whole() -> None:
    sent = [("/upload/b0", 100, "aa"), ("/upload/b1", 100, "bb")]
    kept = [ReceivedBody("/upload/b0", 100, "aa"), ReceivedBody("/upload/b1", 60, "cc"),
            ReceivedBody("/upload/other", 100, "aa")]
    assert bm.whole_bodies(kept, sent) == 1


C_TCPCOPY_LOG = """\
2026/12/07 16:04:10 +733 [notice] target:80-198.18.0.2:8080
2026/12/07 16:04:10 +733 [notice] session timeout:600
2026/12/07 16:04:17 +848 [warn] sig 2 received
2026/12/07 16:04:17 +848 [notice] active:5000,rel:0,obs del:0,tw:5000
2026/12/07 16:04:17 +848 [notice] conns:5000,resp:25007,c-resp:10007
2026/12/07 16:04:17 +848 [notice] send syn:5000, fin:5000,reset:0
2026/12/07 16:04:17 +848 [notice] syn cnt:5000,all clt:28532,clt cont:5000
2026/12/07 16:04:17 +848 [notice] total captured packets:48468
2026/12/07 16:04:17 +848 [info] session table, size:65536, total:5000
"""


def test_the_c_tools_closing_counters_are_read_from_its_log() -> None:
    counters = ctool.parse_counters(C_TCPCOPY_LOG)
    assert counters["conns"] == 5000 and counters["c-resp"] == 10007
    assert counters["send syn"] == 5000 and counters["fin"] == 5000 and counters["reset"] == 0
    assert counters["clt cont"] == 5000 and counters["total captured packets"] == 48468
    assert counters["obs del"] == 0
    assert "session timeout" not in counters          # a start-up setting, before the stop
    unstopped = ctool.parse_counters("x [notice] conns:3,resp:4\nx [notice] conns:7")
    assert unstopped == {"conns": 7, "resp": 4}


def test_a_c_tool_that_cannot_be_built_says_how_to_get_it(tmp_path, monkeypatch) -> None:
    script = tmp_path / "build.sh"
    with pytest.raises(ctool.CToolError, match="no build script"):
        ctool.build(tmp_path / "c", script)
    script.write_text("exit 1\n")
    monkeypatch.setattr(ctool.shutil, "which", lambda name: None)
    with pytest.raises(ctool.CToolError, match="apt-get install build-essential"):
        ctool.build(tmp_path / "c", script)


def test_a_built_c_tool_is_reused(tmp_path) -> None:
    for name in ("tcpcopy", "intercept"):
        (tmp_path / name).write_text("")
        (tmp_path / name).chmod(0o755)
    assert ctool.build(tmp_path, tmp_path / "no-script.sh") == ctool.CTool(tmp_path / "tcpcopy", tmp_path / "intercept")


def test_the_table_says_why_a_scenario_is_not_clean() -> None:
    summary = bm.summarize([run(target_rps=1000, capture_drops=17)])
    line = bm.table_row("short-2500", summary["short-2500"])
    assert "copy fell behind" in line and "capture drops 17" in line
    assert line.split()[1] == "ours" and bm.table_row("x", bm.summarize([run(tool=bm.C)], bm.C)["short-2500"]).split()[1] == "C"
    assert bm.table_row("short-2500", bm.summarize([run()])["short-2500"]).endswith("ok")
    assert len(line.split()) >= len(bm.HEADER.split()) - 4


def test_rss_growth_is_measured_after_the_warm_up() -> None:
    samples = [[5.0, {"owner-0": 30.0, "capture-0": 90.0}],
               [60.0, {"owner-0": 41.0, "capture-0": 90.0}],
               [300.0, {"owner-0": 41.5, "capture-0": 90.0}],
               [600.0, {"owner-0": 42.0, "capture-0": 90.2}]]
    growth = bm.rss_growth(samples)
    assert growth == {"owner-0": 1.0, "capture-0": pytest.approx(0.2)}
    result = bm.SoakResult(600, 1000, 600000, 600000, 0.0, samples, growth)
    assert result.steady
    assert not bm.SoakResult(600, 1000, 1, 1, 0.0, samples, {"owner-0": 50.0}).steady
    assert bm.rss_growth(samples[:2]) == {}   # nothing after the warm-up to compare


def test_unknown_scenarios_and_bad_shapes_are_named() -> None:
    parser = bm.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--only", "short-999"])
    with pytest.raises(bm.argparse.ArgumentTypeError, match="short-999.*choose from.*short-1000"):
        bm._scenarios("short-999")
    with pytest.raises(bm.argparse.ArgumentTypeError, match="K,M,I"):
        bm._shape("2,2")
    assert [s.name for s in bm._scenarios("n3-1000, keepalive-max")] == ["n3-1000", "keepalive-max"]
    assert parser.parse_args([]).only == list(bm.SCENARIOS)
    assert parser.parse_args(["--no-c"]).no_c and not parser.parse_args([]).no_c


def test_a_failed_run_is_named_and_the_suite_goes_on(monkeypatch, capsys) -> None:
    calls = []

    def one_run(scenario, shape, seconds):
        calls.append(scenario.name)
        if len(calls) == 2:
            raise bm.load.LoadError("h2load in client killed: did not finish within 75 s")
        return run(scenario.name)

    monkeypatch.setattr(bm, "one_run", one_run)
    scenarios = bm._scenarios("short-2500,n3-1000")
    runs, failures = bm.run_all(scenarios, 2, (1, 1, 1), 15)
    assert calls == ["short-2500", "short-2500", "n3-1000", "n3-1000"]
    assert len(runs) == 3
    assert failures == [{"scenario": "short-2500", "tool": bm.OURS, "run": 2,
                         "error": "h2load in client killed: did not finish within 75 s"}]
    out, err = capsys.readouterr()
    assert "short-2500 run 2 ours: failed: h2load in client killed" in out
    assert "run 1/4: short-2500 run 1 ours, 0 s elapsed, about 2 min 20 s left" in err   # 4 x (15 + 20) s
    assert "run 4/4: n3-1000 run 2 ours, 0 s elapsed, about 0 s left" in err         # the runs took no time
    assert "run 1/4" not in out                                                        # results only


def test_the_soak_says_where_it_stands_with_each_processs_rss() -> None:
    samples = [[5.0, {"owner-0": 30.0}], [60.0, {"owner-0": 31.25, "capture-0": 92.0, "intercept-0": 45.5}]]
    assert bm.soak_progress(90, 600, 89_000, samples) == (
        "soak: 1 min 30 s of 10 min 00 s, about 8 min 30 s left; 89,000 requests; "
        "RSS MB: capture-0 92.0, intercept-0 45.5, owner-0 31.2")
    assert bm.soak_progress(700, 600, 1, []).endswith("about 0 s left; 1 requests; RSS MB: not sampled yet")


def test_with_the_c_tool_each_run_is_made_by_both(monkeypatch) -> None:
    calls = []

    def one_run(scenario, shape, seconds, c_tool=None):
        calls.append((scenario.name, "c" if c_tool else "ours"))
        return run(scenario.name, tool=bm.C if c_tool else bm.OURS)

    monkeypatch.setattr(bm, "one_run", one_run)
    runs, failures = bm.run_all(bm._scenarios("short-2500"), 2, (1, 1, 1), 15, c_tool=object())
    assert calls == [("short-2500", "c"), ("short-2500", "ours"), ("short-2500", "ours"), ("short-2500", "c")]
    assert not failures and [r.tool for r in runs] == [bm.C, bm.OURS, bm.OURS, bm.C]


class _StubLab:
    tag = "t1"

    def add_cleanup(self, callback) -> None:
        pass

    def interface(self, host: str, peer: str) -> str:
        return f"to-{peer}"


def test_the_c_tool_is_run_as_its_documentation_says(tmp_path) -> None:
    tool = ctool.CTool(tmp_path / "tcpcopy", tmp_path / "intercept")
    redis = bm._scenarios("redis")[0]
    copy = ctool.CCopy(_StubLab(), tool, bm.copied_ports(redis), copies=3)
    try:
        assert copy.intercept_argv()[:5] == [str(tool.intercept), "-i", "to-target", "-F", "tcp and (src port 6379)"]
        argv = copy.tcpcopy_argv()
        assert argv[:5] == [str(tool.tcpcopy), "-x", "6379-198.18.0.2:6379", "-s", "198.18.2.1"]
        assert argv[-2:] == ["-n", "3"] and "-l" in argv
        plain = ctool.CCopy(_StubLab(), tool, bm.copied_ports(bm._scenarios("short-2500")[0]))
        assert "-n" not in plain.tcpcopy_argv() and "80-198.18.0.2:8080" in plain.tcpcopy_argv()
        plain.remove_dir()
    finally:
        copy.remove_dir()


def test_the_comparison_scenarios_take_turns_and_run_without_the_c_tool() -> None:
    scenarios = bm._scenarios("short-2500,compare-off,compare-10,compare-100")
    order = [(s.name, attempt, tool) for s, attempt, tool in bm.plan(scenarios, 2, with_c=True)]
    assert order[4:] == [("compare-off", 1, bm.OURS), ("compare-10", 1, bm.OURS), ("compare-100", 1, bm.OURS),
                         ("compare-off", 2, bm.OURS), ("compare-10", 2, bm.OURS), ("compare-100", 2, bm.OURS)]
    percents = {s.name: s.compare for s in scenarios}
    assert percents == {"short-2500": None, "compare-off": 0, "compare-10": 10, "compare-100": 100}
    assert all(s.load_seconds(10) == bm.COMPARE_SECONDS for s in scenarios[1:])
    assert scenarios[0].load_seconds(10) == 10 and scenarios[1].load_seconds(3) == 3


def test_the_cost_of_comparing_is_a_ratio_to_comparison_off() -> None:
    def compared(name: str, percent: int, copier_us: float, intercept_us: float, share: float) -> bm.Run:
        r = run(name, offered=2000, online_rps=2000, copier_us=copier_us, intercept_us=intercept_us, online=10000)
        r.compare_percent, r.compared = percent, round(share * r.target_requests)
        return r

    runs = [compared("compare-off", 0, 100, 20, 0), compared("compare-10", 10, 115, 21, 0.11),
            compared("compare-100", 100, 250, 30, 1.0), run()]
    costs = bm.compare_cost(bm.summarize(runs))
    assert list(costs) == ["compare-off", "compare-10", "compare-100"]
    assert costs["compare-100"]["copier_ratio"] == 2.5 and costs["compare-100"]["intercept_ratio"] == 1.5
    assert costs["compare-10"]["compared_share"] == pytest.approx(0.11)
    assert costs["compare-off"]["copier_ratio"] == 1.0
    line = bm.compare_cost_row("compare-100", costs["compare-100"])
    assert "2.50x" in line and "100.0%" in line and line.endswith("ok")
    assert line.index("2.50x") + 5 == bm.COMPARE_COST_HEADER.index("ratio") + 5   # the columns line up
    alone = bm.compare_cost(bm.summarize(runs[1:]))
    assert alone["compare-10"]["copier_ratio"] is None and "-" in bm.compare_cost_row("compare-10", alone["compare-10"])
