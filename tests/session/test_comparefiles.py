"""A cluster's comparison on disk: each owner process's files, a run's totals over all of
them, the gate, and what ``tcpcopy-cluster compare`` prints and exits with."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from tcpcopy.cluster.config import load_config
from tcpcopy.cluster.ops import main as cli
from tcpcopy.session import comparefiles
from tcpcopy.session.comparing import Comparing, CompareOptions


def config(tmp_path, fail_on: str = "", percent: int = 10):
    path = tmp_path / "cluster.toml"
    gate = f'fail_on = "{fail_on}"\n' if fail_on else ""
    path.write_text('[copy]\nmappings = ["80-198.18.0.2:8080"]\nintercepts = ["198.18.2.1:36524"]\n'
                    f'[supervisor]\ndir = "{tmp_path}/sv"\n[compare]\npercent = {percent}\nlog_dir = "compare"\n'
                    f'masks = ["[0-9]{{10}}"]\n{gate}')
    return load_config(path)


def owner(counts: dict, started: int = 100, dropped: int = 0, sessions: int = 10):
    comparing = Comparing(CompareOptions(percent=10))
    comparing.comparator.counts.update(counts)
    comparing.counters.sessions_compared = sessions
    outcomes = {"closed:completed": started - dropped, **({"dropped:shed": dropped} if dropped else {})}
    return SimpleNamespace(comparing=comparing, table=SimpleNamespace(table_stats=SimpleNamespace(sessions_started=started)),
                           counters=SimpleNamespace(outcomes=outcomes))


def test_owner_options_come_from_the_compare_section(tmp_path):
    options = comparefiles.compare_options(config(tmp_path))
    assert (options.percent, options.max_bytes, options.config.masks) == (10, 65536, ("[0-9]{10}",))


def test_each_owner_writes_its_own_files_and_a_run_adds_them_up(tmp_path):
    cfg = config(tmp_path, "differs>0.01")
    directory = cfg.compare_dir()
    assert directory == str(tmp_path / "compare")
    first, second = comparefiles.OwnerFiles(directory, 0), comparefiles.OwnerFiles(directory, 1)
    assert first.differences_path != second.differences_path
    first.write_summary(owner({"same": 90, "body_differs": 10}), final=True)
    second.write_summary(owner({"same": 50}, dropped=2), final=False)
    os.write(first.differences_fd, b'{"verdict": "body_differs"}\n')
    for files in (first, second):
        files.close()
    assert (tmp_path / "compare" / "owner-0.differences.jsonl").read_text().count("\n") == 1

    run = comparefiles.totals(comparefiles.read_summaries(directory))
    assert run["compared"] == 150 and run["counts"]["body_differs"] == 10 and run["differs"] == 10
    assert run["sessions_compared"] == 20 and run["sessions"] == {"started": 200, "dropped": 2}
    assert run["loss"] == 0.01 and run["shares"]["body_differs"] == pytest.approx(10 / 150)
    assert sorted(row["owner"] for row in run["owners"]) == [0, 1]
    result = comparefiles.gate(comparefiles.fail_on(cfg), run)
    assert not result.passed and "differs>0.01" in result.describe()


def test_a_summary_is_rewritten_in_place_and_a_restarted_owner_adds_its_own(tmp_path):
    directory = str(tmp_path / "compare")
    files = comparefiles.OwnerFiles(directory, 0)
    files.every_while(owner({"same": 500}), 0.0)
    files.every_while(owner({"same": 5}), 1.0)    # not due yet: the figures of 0.0 stay
    files.write_summary(owner({"same": 7}))       # shorter than before: nothing of the old text is left
    summaries = comparefiles.read_summaries(directory)
    assert [s["compare"]["counts"]["same"] for s in summaries] == [7]
    files.close()
    restarted = comparefiles.OwnerFiles.__new__(comparefiles.OwnerFiles)   # another pid of owner 0
    restarted.shard, restarted.pid = 0, files.pid + 1
    restarted.summary_fd = os.open(os.path.join(directory, f"owner-0.{files.pid + 1}.summary.json"),
                                   os.O_WRONLY | os.O_CREAT, 0o644)
    restarted.write_summary(owner({"same": 3}))
    os.close(restarted.summary_fd)
    assert comparefiles.totals(comparefiles.read_summaries(directory))["compared"] == 10


def test_a_summary_cut_mid_write_is_skipped(tmp_path):
    (tmp_path / "owner-0.1.summary.json").write_text('{"compare": {"count')
    (tmp_path / "owner-1.2.summary.json").write_text(json.dumps({"owner": 1, "compare": {"compared": 4,
                                                                                          "counts": {"same": 4}}}))
    assert comparefiles.totals(comparefiles.read_summaries(str(tmp_path)))["compared"] == 4


def test_a_new_run_moves_the_files_of_the_one_before(tmp_path):
    directory = str(tmp_path / "compare")
    assert comparefiles.start_run(directory) == 0
    for run in (1, 2):
        files = comparefiles.OwnerFiles(directory, 0)
        files.write_summary(owner({"same": run}))
        files.close()
        moved = comparefiles.start_run(directory)
        assert moved == 2
        assert comparefiles.read_summaries(directory) == []
        previous = comparefiles.read_summaries(os.path.join(directory, "previous"))
        assert [s["compare"]["counts"]["same"] for s in previous] == [run], "only the run just before is kept"


def test_compare_command_prints_the_totals_and_exits_3_past_the_gate(tmp_path, capsys):
    cfg = config(tmp_path, "body_differs>0.05")
    files = comparefiles.OwnerFiles(cfg.compare_dir(), 0)
    files.write_summary(owner({"same": 90, "body_differs": 10}), final=True)
    files.close()
    assert cli.main(["compare", cfg.path]) == 3
    out = capsys.readouterr().out
    assert "compared: 100 requests in 10 sessions; same:90 status_differs:0 headers_differ:0 body_differs:10" in out
    assert "owner 0 (pid" in out and "differing {'body_differs': 10}" in out
    assert "fail_on body_differs>0.05: gate failed: body_differs = 0.1 (body_differs>0.05 crossed)" in out
    assert cli.main(["compare", cfg.path, "--json"]) == 3
    printed = json.loads(capsys.readouterr().out)
    assert printed["counts"]["body_differs"] == 10 and printed["gate"]["passed"] is False

    cfg = config(tmp_path, "body_differs>0.5")
    assert cli.main(["compare", cfg.path]) == 0
    assert "no threshold crossed" in capsys.readouterr().out


def test_compare_command_says_what_is_missing(tmp_path, capsys):
    cfg = config(tmp_path)
    assert cli.main(["compare", cfg.path]) == 2
    assert "no owner has written a comparison summary" in capsys.readouterr().err
    (tmp_path / "cluster.toml").write_text('[copy]\nmappings = ["80-198.18.0.2:8080"]\n'
                                           'intercepts = ["198.18.2.1:36524"]\n')
    assert cli.main(["compare", str(tmp_path / "cluster.toml")]) == 2
    assert "[compare] percent is 0" in capsys.readouterr().err
