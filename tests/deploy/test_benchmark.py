"""How the benchmark suite judges its runs: medians, the keep-alive rate it calls the box's
maximum, the verdict of every target, the table's notes and the soak's RSS growth. The runs
themselves need the lab and are the suite's own business (``python -m tcpcopy.deploy.benchmark``)."""

from __future__ import annotations

import pytest

from tcpcopy.deploy import benchmark as bm


def run(scenario: str = "short-2500", *, offered: float = 2500, online_rps: float = 2500,
        target_rps: float | None = None, loss: float = 0.0, copier_us: float = 200.0,
        intercept_us: float = 60.0, copies: int = 1, capture_drops: int = 0, failed: int = 0,
        online: int = 25000) -> bm.Run:
    target_rps = online_rps * copies if target_rps is None else target_rps
    return bm.Run(
        scenario=scenario, shape="1,1,1", seconds=10, copies=copies, offered_rps=offered,
        h2load_done=online, h2load_failed=failed, online_requests=online,
        target_requests=round(online * copies * (1 - loss)), online_rps=online_rps, target_rps=target_rps,
        loss_ratio=loss, copier_cpu_s=1.0, intercept_cpu_s=0.3, copier_us=copier_us,
        intercept_us=intercept_us, owner_rss_mb=40, capture_rss_mb=90, intercept_rss_mb=45,
        box_busy_s=12.0, other_busy_s=10.7, box_cpu_mean=60, box_cpu_max=70, loadavg_1m=1.2,
        capture_drops=capture_drops, sessions_dropped=0, restarts=0, outcomes={"closed:completed": online})


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


def test_the_box_maximum_is_the_fastest_keepalive_rate_sustained() -> None:
    runs = [run("keepalive-10000", offered=10000, online_rps=10000, copier_us=48, intercept_us=10),
            run("keepalive-15000", offered=15000, online_rps=15000, copier_us=44, intercept_us=9,
                loss=1e-4),
            run("keepalive-20000", offered=20000, online_rps=20000, target_rps=15000)]
    summary = bm.summarize(runs)
    assert bm.best_keepalive(summary) == "keepalive-15000"
    judged = {(v["scenario"], v["figure"]): v for v in bm.verdicts(summary)}
    assert judged[("keepalive-15000", "loss_ratio")]["met"] is True
    assert judged[("keepalive-15000", "copier_us")]["measured"] == 44


def test_targets_are_met_missed_or_not_run() -> None:
    summary = bm.summarize([run(copier_us=400, loss=2e-4)])
    by_figure = {(v["scenario"], v["figure"]): v for v in bm.verdicts(summary)}
    assert by_figure[("short-2500", "loss_ratio")]["met"] is False
    assert by_figure[("short-2500", "copier_us")]["met"] is False
    assert by_figure[("short-2500", "intercept_us")]["met"] is True
    assert by_figure[("n3-1000", "loss_ratio")]["met"] is None
    assert by_figure[(bm.KEEPALIVE_BEST, "loss_ratio")]["met"] is None   # no keep-alive run
    lines = bm.verdict_lines(bm.verdicts(summary))
    assert any(line.strip().startswith("MISSED") and "2,500/s" in line for line in lines)
    assert any(line.strip().startswith("not run") and "-n 3" in line for line in lines)


def test_the_table_says_why_a_scenario_is_not_clean() -> None:
    summary = bm.summarize([run(target_rps=1000, capture_drops=17)])
    line = bm.table_row("short-2500", summary["short-2500"])
    assert "copy fell behind" in line and "capture drops 17" in line
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
    assert failures == [{"scenario": "short-2500", "run": 2,
                         "error": "h2load in client killed: did not finish within 75 s"}]
    assert "short-2500 run 2: failed: h2load in client killed" in capsys.readouterr().out
