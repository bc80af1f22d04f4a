"""A cluster's answer comparison on disk: what each owner writes, and the totals read back.

In a cluster (``[compare]`` of the config) every owner process writes two files into the
comparison directory (``ClusterConfig.compare_dir()``), never one another's:

- ``owner-N.differences.jsonl``: each differing request of owner N, one JSON object a line
  (as ``tcpcopy --compare-log`` writes them); the processes of owner N in one run (a
  restart) append to the same file;
- ``owner-N.PID.summary.json``: the comparison counters of owner process PID and its
  session counts (for the gate's ``loss``), rewritten every ``SUMMARY_EVERY`` seconds and
  when it stops, so an owner killed and restarted leaves the figures it had up to then.

``tcpcopy-cluster start --role online`` moves the files of the run before into
``previous/`` (``start_run``), so a run's totals are its own; ``tcpcopy-cluster stop
--role online`` and ``tcpcopy-cluster compare`` add the summaries up (``totals``) and
check ``[compare] fail_on`` against them (``gate``).

The masks and ``fail_on`` of ``[compare]`` are parsed here by the comparison's own parsers
(``session/compare.py``), so a bad one is a ``ConfigError`` naming the key before any
program starts.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tcpcopy.cluster.config import ClusterConfig, ConfigError
from tcpcopy.cluster.process import open_for_writing
from tcpcopy.session.compare import (SAME, VERDICTS, CompareConfig, GateResult, GateSpecError, MaskError,
                                     Threshold, compile_masks, evaluate_gate, parse_fail_on)
from tcpcopy.session.comparing import CompareOptions

SUMMARY_EVERY = 5.0          # seconds between rewrites of an owner's summary
DIFFERENCES = "owner-{shard}.differences.jsonl"
SUMMARY = "owner-{shard}.{pid}.summary.json"
SUMMARY_GLOB = "owner-*.summary.json"
PREVIOUS = "previous"
FAIL_ON_EXAMPLE = 'fail_on = "differs>0.001,no_answer>0"'
# Counters of Comparing.summary() that add up across owners.
SUMMED = ("compared", "sessions_compared", "sessions_not_compared", "not_captured", "online_not_captured",
          "target_not_captured", "records_dropped", "answers_dropped", "early_answers_dropped", "noise_ignored")


# ------------------------------------------------------------------------ the config

def compare_options(config: ClusterConfig) -> CompareOptions:
    """The owners' comparison from ``[compare]`` (percent 0: off); a mask that is not a
    regular expression raises ConfigError naming it."""
    section = config.compare
    for i, mask in enumerate(section.masks):
        try:
            compile_masks([mask])
        except MaskError as exc:
            raise ConfigError(config.path, f"compare.masks[{i}]", str(exc),
                              "fix the expression (Python re syntax, matched on the answer bytes), "
                              r'e.g. masks = ["[0-9]{10}"]') from None
    return CompareOptions(percent=section.percent, max_bytes=section.bytes,
                          config=CompareConfig(masks=section.masks))


def fail_on(config: ClusterConfig) -> tuple[Threshold, ...]:
    """``[compare] fail_on`` parsed (empty: no gate); a bad one raises ConfigError."""
    if not config.compare.fail_on:
        return ()
    try:
        return parse_fail_on(config.compare.fail_on)
    except GateSpecError as exc:
        raise ConfigError(config.path, "compare.fail_on", str(exc).removeprefix("--fail-on").lstrip(": "),
                          f"write thresholds of loss, compared, differs or a verdict, e.g. {FAIL_ON_EXAMPLE}") from None


def check(config: ClusterConfig) -> None:
    """What load_config cannot check of ``[compare]`` from below the roles."""
    if config.compare.enabled:
        compare_options(config)
        fail_on(config)


# ------------------------------------------------------------------------ an owner's files

class OwnerFiles:
    """One owner process's differences file and summary file, opened before it drops to
    ``--user`` (given to that user), written through their descriptors after."""

    def __init__(self, directory: str, shard: int, run_as=None):
        self.shard, self.pid = shard, os.getpid()
        uid = run_as.uid if run_as else None
        os.makedirs(directory, mode=0o750, exist_ok=True)
        self.differences_path = os.path.join(directory, DIFFERENCES.format(shard=shard))
        self.summary_path = os.path.join(directory, SUMMARY.format(shard=shard, pid=self.pid))
        self.differences_fd = open_for_writing(self.differences_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                                               0o644, uid)
        try:
            self.summary_fd = open_for_writing(self.summary_path, os.O_WRONLY | os.O_CREAT, 0o644, uid)
        except BaseException:
            os.close(self.differences_fd)
            raise
        self._next = 0.0

    def summary(self, owner, final: bool) -> dict:
        started = owner.table.table_stats.sessions_started
        dropped = sum(n for key, n in owner.counters.outcomes.items() if key.startswith("dropped:"))
        return {"owner": self.shard, "pid": self.pid, "written": time.time(), "final": final,
                "sessions": {"started": started, "dropped": dropped},
                "compare": owner.comparing.summary() if owner.comparing is not None else {}}

    def write_summary(self, owner, final: bool = False) -> None:
        data = (json.dumps(self.summary(owner, final), sort_keys=True) + "\n").encode()
        os.ftruncate(self.summary_fd, 0)
        os.pwrite(self.summary_fd, data, 0)

    def every_while(self, owner, now: float) -> str:
        """For ``Owner.watch``: the summary rewritten every SUMMARY_EVERY seconds; a write
        that fails stops nothing (the next one tries again)."""
        if now >= self._next:
            self._next = now + SUMMARY_EVERY
            try:
                self.write_summary(owner)
            except OSError:
                pass
        return ""

    def close(self) -> None:
        for fd in (self.differences_fd, self.summary_fd):
            os.close(fd)


# ------------------------------------------------------------------------ a run's totals

def start_run(directory: str) -> int:
    """A new run: the files of the run before go to ``previous/`` (replacing what was
    there). Returns how many files were moved."""
    root = Path(directory)
    if not root.is_dir():
        return 0
    files = sorted([*root.glob("owner-*.differences.jsonl"), *root.glob(SUMMARY_GLOB)])
    if not files:
        return 0
    previous = root / PREVIOUS
    previous.mkdir(mode=0o750, exist_ok=True)
    for old in previous.glob("owner-*"):
        old.unlink()
    for path in files:
        path.rename(previous / path.name)
    return len(files)


def read_summaries(directory: str) -> list[dict]:
    """Every owner process's last summary in ``directory`` (a file cut mid-write, or not
    JSON, is skipped)."""
    summaries = []
    for path in sorted(Path(directory).glob(SUMMARY_GLOB)):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(summary, dict) and isinstance(summary.get("compare"), dict):
            summary["file"] = str(path)
            summaries.append(summary)
    return summaries


def totals(summaries: list[dict]) -> dict:
    """The run's comparison: counters and verdict counts added over every owner process,
    the shares, the sessions and the copier's loss (sessions dropped or shed of those
    started), and one row per owner process."""
    counts = {verdict: 0 for verdict in VERDICTS}
    summed = dict.fromkeys(SUMMED, 0)
    started = dropped = 0
    rows = []
    for summary in summaries:
        compare = summary["compare"]
        for verdict in VERDICTS:
            counts[verdict] += int(compare.get("counts", {}).get(verdict, 0))
        for key in SUMMED:
            summed[key] += int(compare.get(key, 0))
        sessions = summary.get("sessions", {})
        started += int(sessions.get("started", 0))
        dropped += int(sessions.get("dropped", 0))
        rows.append({"owner": summary.get("owner"), "pid": summary.get("pid"), "final": summary.get("final"),
                     "compared": int(compare.get("compared", 0)), "counts": compare.get("counts", {}),
                     "latency": compare.get("latency", {})})
    compared = sum(counts.values())
    return {**summed, "compared": compared, "counts": counts,
            "shares": {verdict: (n / compared if compared else 0.0) for verdict, n in counts.items()},
            "differs": compared - counts[SAME],
            "sessions": {"started": started, "dropped": dropped},
            "loss": dropped / started if started else 0.0,
            "owners": rows}


def gate(thresholds: tuple[Threshold, ...], run: dict) -> GateResult:
    return evaluate_gate(thresholds, run["counts"], run["loss"])


def totals_line(run: dict) -> str:
    """The counts in one line (an owner's own summary, or a run's totals)."""
    counts = " ".join(f"{verdict}:{run['counts'].get(verdict, 0)}" for verdict in VERDICTS)
    return (f"{run['compared']} requests in {run['sessions_compared']} sessions; {counts}; "
            f"not captured:{run['not_captured']}")
