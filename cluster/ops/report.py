"""The run report of a live copy: its numbers (report.json), a picture (report.png) and one
page with both (report.html).

    python -m tcpcopy.cluster.ops.report record --hub|--stats ENDPOINT --out FILE [--seconds N] [--interval S]
    python -m tcpcopy.cluster.ops.report build [--samples FILE] [--online-log FILE] [--target-log FILE]
                                               [--tcpcopy-summary FILE] [-n COPIES] [--out-dir DIR]

``record`` reads a stats hub's feed (``--hub``, beside top and the exporter) or binds the stats
endpoint (``--stats``; an :class:`~tcpcopy.cluster.ops.aggregator.Aggregator`: every process started
with ``--stats ENDPOINT`` publishes there) and appends one
``snapshot_json()`` per interval to FILE as one JSON line, flushed at once, until N seconds
have passed or SIGINT/SIGTERM arrives; a last snapshot is written when it stops. A process
killed outright loses at most the line it was writing, and :func:`load_samples` skips that.

``build_report(samples, online_log, target_log, copies, processes, out_dir)`` writes the three
files from those samples, the online and target servers' access logs (parsed entries, the
dicts of ``Nginx.access_log_entries``), the number of copies (``-n``) and the processes'
CPU-seconds and peak RSS as the harness measured them. The data are pure functions
(:func:`build_series`, :func:`summarize`, :func:`render_html`); only :func:`draw_png` draws,
with matplotlib's Agg backend. matplotlib is the ``report`` extra: without it there is no
report.png (``ReportPaths.png`` is None) and report.html says how to get the picture
(:data:`PICTURE_HINT`). With no traffic and no samples the files still appear, and say that
nothing was recorded.

The picture opens with a title block of the run's totals (online, expected and arrived at the
target, missing, the loss ratio, the copier's own estimate, sessions) and has three panels
over one time axis (seconds since the first thing recorded), each with one y-axis and its
legend beside it: requests per second online, expected at the target (online x copies) and
arrived at the target, from the access logs' timestamps, with the copier's own requests sent
per second from the stats; the loss in percent over a sliding window (:func:`window_loss`),
from the access logs and from the copier's own counters (content segments not replayed);
and the CPU% of each role (capture, owner, intercept) from the stats.

When the run compared answers (``tcpcopy --compare``), the report has a *comparison*
section (:func:`comparison_section`), built from a comparison summary given as data: the
``compare`` object of tcpcopy's ``--summary-json`` (``Comparing.summary()``), or a cluster's
when one is given to :func:`build_report` as ``comparison``. It holds the requests compared
and the share of each verdict, those not captured, the first examples of each kind (the
request's first bytes, both answers' first bytes, the differences) and the latency
percentiles of both sides; the picture gets a row below the time panels: p50/p90/p99 of
each side side by side, and the share of each verdict.

Why not second by second: the copy reaches the target a little after the online server
logged the request, so comparing the two logs per second shows loss in the second a request
was online and a surplus in the next one, in a run that lost nothing. The window loss
compares what was expected with what arrived one copy lag later (the lag measured from the
two curves), never counts more lost than is still missing at any later second (so a run
whose total loss is 0 reads 0 throughout, whatever its lag), and is never below 0.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import importlib.util
import json
import math
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tcpcopy.cluster.ops.aggregator import PERCENTILES, ratio
from tcpcopy.cluster.ops.hub import add_source_flags, aggregator_from_flags
from tcpcopy.cluster.process import CommandParser
from tcpcopy.cluster.ops import accesscounts
from tcpcopy.session.compare import VERDICTS

PROG = "python -m tcpcopy.cluster.ops.report"
REPORT_VERSION = 1
ROLE_ORDER = ("capture", "owner", "intercept", "cluster")
NO_TRAFFIC = "no traffic was recorded: no request in either access log and no stats sample"
NO_REQUESTS = "no traffic: the copy's processes reported stats, but no request was logged or copied"
RATE_SHIFT = 0.5          # seconds a sample's rates are drawn before its time (see _centred)
LOSS_WINDOW_S = 5         # seconds of online requests each point of the loss line judges
LAG_QUANTILE = 0.25       # which of the per-second lags stands for the copy's (see copy_lag)
SLICE = 0.1               # seconds the recorder waits for stats between checks of the clock
EXAMPLES_SHOWN = 3        # examples of each verdict in the comparison section
EXAMPLE_CHARS = 400       # characters of an example's request or answer shown
LATENCY_MEASURES = {
    "online": "between capture times on the online host: the client segment that started the request "
              "and the online server's first answer byte",
    "target": "on the copier's clock: from sending the replayed request to taking intercept's message with "
              "the first answer byte, so intercept's return path (a few ms) is included; intercept's records "
              "carry no capture time",
}
PICTURE_HINT = ("no picture: matplotlib is not installed; for report.png: "
                "pip install 'tcpcopy[report]'")


class ReportPaths(NamedTuple):
    json: Path
    png: Path | None          # None without matplotlib (the report extra)
    html: Path


def can_draw() -> bool:
    """True when matplotlib (the ``report`` extra) is installed."""
    return importlib.util.find_spec("matplotlib") is not None


# ---------------------------------------------------------------------- samples

def load_samples(path: str | Path) -> list[dict]:
    """The snapshots a recorder wrote, in order; a line that is not a whole JSON object (the
    last one of a recorder killed mid-write) is skipped. A missing file is no samples."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return []
    samples = []
    for line in text.splitlines():
        try:
            sample = json.loads(line)
        except ValueError:
            continue
        if isinstance(sample, dict) and isinstance(sample.get("time"), (int, float)):
            samples.append(sample)
    return samples


def _rows(sample: Mapping) -> list[dict]:
    return [r for r in sample.get("processes", ()) if isinstance(r, dict)]


def role_order(role: str) -> tuple[int, str]:
    return (ROLE_ORDER.index(role) if role in ROLE_ORDER else len(ROLE_ORDER), role)


# ---------------------------------------------------------------------- series (pure)

@dataclass(frozen=True)
class Series:
    """Everything the picture draws, as plain lists over one time axis.

    ``seconds`` are whole seconds since ``origin`` (epoch seconds): the request counts are per
    second (``online``, ``target``, ``expected`` = online x copies, ``shortfall`` = expected -
    target, ``cumulative_loss`` = the loss ratio of everything up to the end of that second).
    ``sample_times`` are the samples' times since ``origin``; per sample, ``cpu_percent`` by
    role (summed over its processes) and ``copier_loss`` (the aggregator's content-loss
    estimate, a ratio). ``copier_requests`` are the owners' requests sent per second between
    one sample and the next (the growth of their ``requests_sent`` over the time between the
    samples), at ``copier_times``, mid-way between the two.

    ``window_loss[j]`` is the loss ratio of the expected target requests of the
    ``loss_window`` seconds ending with second j (:func:`window_loss`; None where nothing was
    expected), with the copy's lag ``copy_lag`` seconds (:func:`copy_lag`);
    ``copier_window_loss`` the same from the owners' content segments expected and sent, with
    their own lag ``copier_lag``. A second whose copy is not due before the end is not judged:
    each list is shorter than ``seconds`` by its lag, rounded up.
    """

    origin: float
    copies: int
    seconds: list[int] = field(default_factory=list)
    online: list[int] = field(default_factory=list)
    target: list[int] = field(default_factory=list)
    expected: list[int] = field(default_factory=list)
    shortfall: list[int] = field(default_factory=list)
    cumulative_loss: list[float] = field(default_factory=list)
    sample_times: list[float] = field(default_factory=list)
    cpu_percent: dict[str, list[float]] = field(default_factory=dict)
    copier_times: list[float] = field(default_factory=list)
    copier_requests: list[float] = field(default_factory=list)
    copier_loss: list[float] = field(default_factory=list)
    loss_window: int = LOSS_WINDOW_S
    copy_lag: float = 0.0
    copier_lag: float = 0.0
    window_loss: list[float | None] = field(default_factory=list)
    copier_window_loss: list[float | None] = field(default_factory=list)

    @property
    def has_requests(self) -> bool:
        return any(self.online) or any(self.target)

    @property
    def has_samples(self) -> bool:
        return bool(self.sample_times)

    @property
    def empty(self) -> bool:
        return not (self.has_requests or self.has_samples)


def _times(entries: Iterable[Mapping]) -> list[float]:
    return [float(e["time"]) for e in entries if isinstance(e.get("time"), (int, float))]


def series_origin(samples: Sequence[Mapping], online_log: Iterable[Mapping],
                  target_log: Iterable[Mapping]) -> float:
    """The earliest time among the logged requests and the samples; 0.0 when there is none."""
    times = _times(online_log) + _times(target_log) + [float(s["time"]) for s in samples]
    return min(times) if times else 0.0


def per_second(entries: Iterable[Mapping], origin: float, length: int) -> list[int]:
    """Requests logged in each whole second ``0..length-1`` since ``origin``
    (:func:`accesscounts.by_second` with the gaps and both ends filled)."""
    counts = accesscounts.by_second([e for e in entries if isinstance(e.get("time"), (int, float))], origin)
    return [counts.get(second, 0) for second in range(length)]


def build_series(samples: Sequence[Mapping], online_log: Sequence[Mapping], target_log: Sequence[Mapping],
                 copies: int = 1, origin: float | None = None) -> Series:
    """The time series of a run, from the samples and the two servers' access logs."""
    if copies < 1:
        raise ValueError(f"copies must be at least 1, got {copies}")
    samples = sorted(samples, key=lambda s: s["time"])
    if origin is None:
        origin = series_origin(samples, online_log, target_log)
    ends = _times(online_log) + _times(target_log) + [float(s["time"]) for s in samples]
    length = math.floor(max(ends) - origin) + 1 if ends else 0
    online = per_second(online_log, origin, length)
    target = per_second(target_log, origin, length)
    expected = [n * copies for n in online]
    cumulative, sum_expected, sum_target = [], 0, 0
    for e, t in zip(expected, target):
        sum_expected += e
        sum_target += t
        cumulative.append(accesscounts.loss_ratio(sum_expected // copies, sum_target, copies))
    roles = sorted({r.get("role", "?") for s in samples for r in _rows(s)}, key=role_order)
    cpu = {role: [_cpu(s, role) for s in samples] for role in roles}
    copier_times, copier_requests = copier_rate(samples, origin)
    requests_expected, requests_arrived = _running(expected), _running(target)
    content_expected, content_sent = (per_second_totals(samples, origin, length, name)
                                      for name in ("expected_content", "content_packets_sent"))
    lag, copier_lag = copy_lag(requests_expected, requests_arrived), copy_lag(content_expected, content_sent)
    return Series(
        origin=origin, copies=copies, seconds=list(range(length)), online=online, target=target,
        expected=expected, shortfall=[e - t for e, t in zip(expected, target)],
        cumulative_loss=cumulative, sample_times=[float(s["time"]) - origin for s in samples],
        cpu_percent=cpu, copier_times=copier_times, copier_requests=copier_requests,
        copier_loss=[float(s.get("loss", {}).get("content_loss", 0.0)) for s in samples],
        loss_window=LOSS_WINDOW_S, copy_lag=lag, copier_lag=copier_lag,
        window_loss=window_loss(requests_expected, requests_arrived, LOSS_WINDOW_S, lag),
        copier_window_loss=window_loss(content_expected, content_sent, LOSS_WINDOW_S, copier_lag))


def window_loss(expected: Sequence[float], arrived: Sequence[float], window: int,
                lag: float) -> list[float | None]:
    """The loss ratio over a sliding window, allowing for the copy's lag; never below 0.

    ``expected`` and ``arrived`` are running totals at the end of each second; ``lag`` is the
    copy's lag in seconds (:func:`copy_lag`). How many of the requests expected up to second
    j are lost, ``lost(j)``, is taken as what had not arrived ``lag`` seconds later, and held
    to what can be known from the counts alone:

    - at most what is still missing at second j or at any later one (a copy arrives after its
      request, so what arrived by second k came from requests expected by k): a run whose
      total loss is 0 reads 0 in every window, whatever its lag;
    - never less than at an earlier second (a lost request stays lost): requests that arrive
      later than the lag show as loss where they were due and are not subtracted again.

    Point j is ``(lost(j) - lost(j - window)) / (expected[j] - expected[j - window])``: None
    where the window expected nothing; there is no point for a second whose copy is not due
    before the end (the last ``ceil(lag)`` seconds).
    """
    judged = max(0, len(expected) - math.ceil(lag))
    ceiling = _still_missing(expected, arrived)
    lost, highest = [], 0.0
    for j in range(judged):
        highest = max(highest, expected[j] - _at(arrived, j + lag))
        lost.append(min(ceiling[j], highest))
    points: list[float | None] = []
    for j in range(judged):
        before = j - window
        due = expected[j] - (expected[before] if before >= 0 else 0)
        gone = lost[j] - (lost[before] if before >= 0 else 0.0)
        points.append(min(1.0, max(0.0, gone) / due) if due > 0 else None)
    return points


def _still_missing(expected: Sequence[float], arrived: Sequence[float]) -> list[float]:
    """Per second j: the least shortfall (expected - arrived, at least 0) at j or after."""
    out, least = [0.0] * len(expected), math.inf
    for j in range(len(expected) - 1, -1, -1):
        least = min(least, max(0.0, expected[j] - arrived[j]))
        out[j] = least
    return out


def _at(totals: Sequence[float], position: float) -> float:
    """A running total at a fractional second (``totals[i]`` at position i, 0 at -1, straight
    lines between; the last total after the end)."""
    if position >= len(totals) - 1:
        return totals[-1]
    i = math.floor(position)
    low = totals[i] if i >= 0 else 0.0
    return low + (position - i) * (totals[i + 1] - low)


def copy_lag(expected: Sequence[float], arrived: Sequence[float]) -> float:
    """How many seconds the copy arrives after its request: per second j, how much later the
    arrived total reached the total expected by j; of those, the ``LAG_QUANTILE`` one (a loss
    makes later seconds look later, so a low one is the copy's own). 0 with nothing to go by."""
    lags, i = [], 0
    for j, due in enumerate(expected):
        if due <= 0 or not arrived or due > arrived[-1]:
            continue
        while arrived[i] < due:      # both totals only grow: i never goes back
            i += 1
        low = arrived[i - 1] if i > 0 else 0.0
        reached = (i - 1) + (due - low) / (arrived[i] - low)
        lags.append(max(0.0, reached - j))
    if not lags:
        return 0.0
    lags.sort()
    return lags[int(LAG_QUANTILE * (len(lags) - 1))]


def _running(counts: Iterable[float]) -> list[float]:
    total, out = 0.0, []
    for count in counts:
        total += count
        out.append(total)
    return out


def per_second_totals(samples: Sequence[Mapping], origin: float, length: int, name: str) -> list[float]:
    """The copier's running total ``name`` (from each sample's loss estimate) at the end of
    each second ``0..length-1``: the last sample taken within or before that second, 0 before
    the first."""
    totals, value, index = [], 0.0, 0
    for second in range(length):
        while index < len(samples) and float(samples[index]["time"]) - origin < second + 1:
            value = float((samples[index].get("loss") or {}).get(name, value))
            index += 1
        totals.append(value)
    return totals


def _cpu(sample: Mapping, role: str) -> float:
    return sum(float(r.get("cpu_percent", 0.0)) for r in _rows(sample) if r.get("role") == role)


def copier_rate(samples: Sequence[Mapping], origin: float, name: str = "requests_sent") -> tuple[list[float], list[float]]:
    """(times since ``origin``, per second) of the owners' counter ``name`` between
    consecutive samples, each at the middle of its interval. Per owner the growth since its
    previous sample counts; a counter that went down (a restarted owner) grew by its whole new
    value, and an owner first heard from brings all it counted."""
    times, rates = [], []
    previous: dict[tuple[str, str], float] = {}
    last_time = None
    for sample in samples:
        now = float(sample["time"])
        grown = 0.0
        current = {}
        for row in _rows(sample):
            if row.get("role") != "owner":
                continue
            key = (row.get("role", ""), row.get("identity", ""))
            value = float(_counter(row.get("counters", {}), name))
            current[key] = value
            before = previous.get(key, 0.0)
            grown += value if value < before else value - before
        previous.update(current)
        if last_time is not None and now > last_time:
            times.append((last_time + now) / 2 - origin)
            rates.append(grown / (now - last_time))
        last_time = now
    return times, rates


def _counter(counters: Mapping, name: str) -> float:
    """``name`` at the top level or under one group ("engine.requests_sent"), else 0."""
    if name in counters:
        return counters[name]
    return next((v for k, v in sorted(counters.items()) if k.endswith("." + name)), 0)


# ---------------------------------------------------------------------- the numbers (pure)

def process_figures(processes: Iterable[Any]) -> list[dict]:
    """``ProcessFigures`` (or dicts with name, cpu_seconds, peak_rss_mb) as plain dicts."""
    out = []
    for p in processes:
        d = dataclasses.asdict(p) if dataclasses.is_dataclass(p) else dict(p)
        out.append({"name": str(d.get("name", "?")), "cpu_seconds": round(float(d.get("cpu_seconds", 0.0)), 3),
                    "peak_rss_mb": round(float(d.get("peak_rss_mb", 0.0)), 1)})
    return out


def published_processes(samples: Sequence[Mapping]) -> list[dict]:
    """Per process that published stats: its last CPU-seconds, the peak RSS and CPU% seen
    over the samples, and its mean CPU% while it was heard from."""
    seen: dict[tuple[str, str], dict] = {}
    for sample in samples:
        for row in _rows(sample):
            key = (row.get("role", "?"), row.get("identity", "?"))
            counters = row.get("counters", {})
            entry = seen.setdefault(key, {"role": key[0], "identity": key[1], "pid": 0, "cpu_seconds": 0.0,
                                          "peak_rss_mb": 0.0, "peak_cpu_percent": 0.0, "_cpu": []})
            entry["pid"] = int(row.get("pid", 0))
            entry["cpu_seconds"] = round(float(counters.get("cpu_user_s", 0.0)) + float(counters.get("cpu_system_s", 0.0)), 3)
            entry["peak_rss_mb"] = max(entry["peak_rss_mb"], round(float(counters.get("rss_bytes", 0)) / 2**20, 1))
            if not row.get("stale"):
                cpu = float(row.get("cpu_percent", 0.0))
                entry["peak_cpu_percent"] = max(entry["peak_cpu_percent"], round(cpu, 1))
                entry["_cpu"].append(cpu)
    out = []
    for key in sorted(seen, key=lambda k: (role_order(k[0]), k[1])):
        entry = seen[key]
        cpus = entry.pop("_cpu")
        entry["mean_cpu_percent"] = round(sum(cpus) / len(cpus), 1) if cpus else 0.0
        out.append(entry)
    return out


_ENGINE_OUTCOME = re.compile(r"(?:^|\.)(closed|dropped)\.([^.]+)$")


def sample_outcomes(samples: Sequence[Mapping]) -> dict[str, int]:
    """Session outcomes ("closed:REASON", "dropped:REASON") summed over the owners of the
    last sample: ``outcomes.KIND:REASON`` as the owners publish them, else the engine's
    ``KIND.REASON``."""
    if not samples:
        return {}
    found: Counter[str] = Counter()
    for row in _rows(samples[-1]):
        if row.get("role") != "owner":
            continue
        counters = row.get("counters", {})
        owner = {k.split("outcomes.", 1)[1]: v for k, v in counters.items()
                 if ("outcomes.closed:" in k or "outcomes.dropped:" in k)}
        if not owner:
            owner = {f"{m.group(1)}:{m.group(2)}": v for k, v in counters.items()
                     if (m := _ENGINE_OUTCOME.search(k))}
        found.update(owner)
    return dict(sorted(found.items()))


def summarize(series: Series, samples: Sequence[Mapping], online_log: Sequence[Mapping],
              target_log: Sequence[Mapping], processes: Iterable[Any] = (),
              tcpcopy_summary: Mapping | None = None, meta: Mapping | None = None,
              comparison: Mapping | None = None) -> dict:
    """The contents of report.json.

    ``totals``: requests online, expected and arrived at the target, status codes, the peak
    rates. ``loss``: ``from_access_logs`` (the ratio users quote: (online x copies - target) /
    (online x copies)) and ``from_copier`` (the aggregator's estimate in the last sample: content
    segments not replayed, sessions dropped; None without samples). ``sessions``: started,
    established, ended by outcome, from tcpcopy's summary when given, else from the last
    sample. ``processes``: CPU-seconds and peak RSS as the harness measured them;
    ``published``: the same from the processes' own stats, with their CPU%.
    ``comparison``: :func:`comparison_section` of ``comparison`` (a comparison summary),
    else of tcpcopy's summary's ``compare``; None when the run compared nothing.
    """
    copies = series.copies
    online_n, target_n = len(online_log), len(target_log)
    samples = sorted(samples, key=lambda s: s["time"])
    last = samples[-1] if samples else None
    summary = dict(tcpcopy_summary or {})
    engine, table = summary.get("engine", {}) or {}, summary.get("table", {}) or {}
    outcomes = dict(summary.get("owner", {}).get("outcomes", {}) or {}) if summary else {}
    outcome_source = "tcpcopy summary"
    if not outcomes:
        outcomes, outcome_source = sample_outcomes(samples), "stats samples"
    owner_totals = (last or {}).get("totals", {}).get("owner", {})

    def engine_figure(name: str) -> int:
        if name in engine:
            return int(engine[name])
        return int(next((v for k, v in owner_totals.items() if k.endswith("." + name) or k == name), 0))

    traffic = series.has_requests or any(v for k, v in owner_totals.items() if k.endswith("requests_sent"))
    note = "" if traffic else NO_TRAFFIC if not samples else NO_REQUESTS
    report = {
        "version": REPORT_VERSION,
        "generated_at": time.time(),
        "meta": dict(meta or {}),
        "traffic": bool(traffic),
        "note": note,
        "copies": copies,
        "origin": series.origin,
        "duration_s": len(series.seconds),
        "samples": len(samples),
        "totals": {
            "online_requests": online_n,
            "expected_target_requests": online_n * copies,
            "target_requests": target_n,
            "missing_requests": online_n * copies - target_n,
            "online_status": _status_counts(online_log),
            "target_status": _status_counts(target_log),
            "peak_online_rps": max(series.online, default=0),
            "peak_target_rps": max(series.target, default=0),
        },
        "loss": {
            "from_access_logs": accesscounts.loss_ratio(online_n, target_n, copies),
            "from_copier": dict(last["loss"]) if last and isinstance(last.get("loss"), dict) else None,
        },
        "sessions": {
            "started": int(table.get("sessions_started", 0)) or engine_figure("sessions_started"),
            "established": engine_figure("established"),
            "closed": sum(v for k, v in outcomes.items() if k.startswith("closed:")),
            "dropped": sum(v for k, v in outcomes.items() if k.startswith("dropped:")),
            "outcomes": outcomes,
            "outcomes_from": outcome_source if outcomes else "",
        },
        "processes": process_figures(processes),
        "published": published_processes(samples),
        "comparison": comparison_section(comparison if comparison is not None else summary.get("compare")),
        "series": {
            "seconds": series.seconds, "online": series.online, "target": series.target,
            "expected": series.expected, "shortfall": series.shortfall,
            "cumulative_loss": series.cumulative_loss, "sample_times": series.sample_times,
            "cpu_percent": series.cpu_percent, "copier_times": series.copier_times,
            "copier_requests": series.copier_requests,
            "copier_loss": series.copier_loss,
            "loss_window_s": series.loss_window, "copy_lag_s": series.copy_lag, "copier_lag_s": series.copier_lag,
            "window_loss": series.window_loss, "copier_window_loss": series.copier_window_loss,
        },
    }
    return report


def comparison_section(compare: Mapping | None) -> dict | None:
    """The report's comparison from a comparison summary (``Comparing.summary()``: counts by
    verdict, latency per side, examples), or None without one.

    ``verdicts``: per verdict its count and share of the requests compared (the shares come
    from the counts); ``not_captured``: requests one side's answer bytes never reached (not
    judged); ``latency``: p50, p90 and p99 in seconds and the samples, per side, with what
    each side's figure measures (``LATENCY_MEASURES``); ``examples``: the first
    ``EXAMPLES_SHOWN`` of each verdict that has some, in the summary's order."""
    if not isinstance(compare, Mapping):
        return None
    counts = compare.get("counts") if isinstance(compare.get("counts"), Mapping) else {}
    counts = {verdict: _whole(counts.get(verdict)) for verdict in VERDICTS}
    compared = sum(counts.values())
    latency = compare.get("latency") if isinstance(compare.get("latency"), Mapping) else {}
    return {
        "compared": compared,
        "sessions_compared": _whole(compare.get("sessions_compared")),
        "not_captured": _whole(compare.get("not_captured")),
        "verdicts": [{"verdict": verdict, "count": count, "share": ratio(count, compared)}
                     for verdict, count in counts.items()],
        "latency": {side: _latency_figures(latency.get(side)) for side in LATENCY_MEASURES},
        "latency_measures": dict(LATENCY_MEASURES),
        "examples": _examples(compare.get("examples")),
    }


def _whole(value) -> int:
    return int(value) if isinstance(value, (int, float)) and math.isfinite(value) and value > 0 else 0


def _seconds(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0 else None


def _latency_figures(figures) -> dict:
    figures = figures if isinstance(figures, Mapping) else {}
    return {**{p: _seconds(figures.get(p)) for p in PERCENTILES}, "samples": _whole(figures.get("samples"))}


def _examples(examples) -> dict[str, list[dict]]:
    """The first EXAMPLES_SHOWN examples of each verdict, each cut to EXAMPLE_CHARS."""
    shown: dict[str, list[dict]] = {}
    for example in examples if isinstance(examples, list) else ():
        if not isinstance(example, Mapping) or example.get("verdict") not in VERDICTS:
            continue
        kept = shown.setdefault(example["verdict"], [])
        if len(kept) < EXAMPLES_SHOWN:
            kept.append(_example(example))
    return {verdict: shown[verdict] for verdict in VERDICTS if verdict in shown}


def _example(example: Mapping) -> dict:
    def side(name: str) -> dict:
        answer = example.get(name) if isinstance(example.get(name), Mapping) else {}
        return {"first_bytes": _cut(answer.get("first_bytes")), "length": _whole(answer.get("length")),
                "latency": _seconds(answer.get("latency"))}
    differences = example.get("differences") if isinstance(example.get("differences"), list) else []
    return {"request": _cut(example.get("request")), "online": side("online"), "target": side("target"),
            "differences": [_cut(d) for d in differences[:16]]}


def _cut(text) -> str:
    return str(text)[:EXAMPLE_CHARS] if text is not None else ""


def headline(report: Mapping) -> list[str]:
    """The picture's title block below its title: the totals and the loss of the run, the
    copier's own estimate and the sessions, and a note when the run was cut short or idle."""
    totals, loss, sessions = report["totals"], report["loss"], report["sessions"]
    missing = totals["missing_requests"]
    shortfall = f"{_count(missing)} missing" if missing >= 0 else f"{_count(-missing)} more than expected"
    lines = [f"online {_count(totals['online_requests'])} requests x {report['copies']} "
             f"cop{'y' if report['copies'] == 1 else 'ies'} = {_count(totals['expected_target_requests'])} "
             f"expected at the target, {_count(totals['target_requests'])} arrived: {shortfall}, "
             f"loss {_percent(loss['from_access_logs'])}"]
    copier = loss.get("from_copier")
    second = [f"copier's estimate {_percent(copier.get('content_loss', 0.0))} of content segments not replayed"
              if copier else "no stats from the copier"]
    if sessions["started"] or sessions["closed"] or sessions["dropped"]:
        second.append(f"sessions {_count(sessions['started'])} started, {_count(sessions['dropped'])} dropped")
    second.append(f"{report['duration_s']} s")
    lines.append(", ".join(second))
    if report.get("comparison"):
        lines.append(_comparison_line(report["comparison"]))
    interrupted = report.get("meta", {}).get("interrupted")
    if interrupted or report.get("note"):
        lines.append(f"interrupted {interrupted}" if interrupted else report["note"])
    return lines


def _comparison_line(comparison: Mapping) -> str:
    """"compared 1,150 requests: 87% same, 13% differ; latency p50 online 1.2 ms, target 2.3 ms"."""
    same = next(v["share"] for v in comparison["verdicts"] if v["verdict"] == "same")
    line = (f"compared {_count(comparison['compared'])} requests: {_percent(same)} same, "
            f"{_percent(1 - same if comparison['compared'] else 0.0)} differ")
    if comparison["not_captured"]:
        line += f" ({_count(comparison['not_captured'])} not captured)"
    p50 = [(side, figures["p50"]) for side, figures in comparison["latency"].items()]
    return line + "; latency p50 " + ", ".join(f"{side} {_ms(value)}" for side, value in p50)


def _ms(seconds: float | None) -> str:
    return "not measured" if seconds is None else f"{1000 * seconds:.3g} ms"


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _percent(ratio: float) -> str:
    """A loss ratio in percent: 0 exactly as "0%", else three significant digits."""
    return "0%" if ratio == 0 else f"{100 * ratio:.3g}%"


def _status_counts(entries: Iterable[Mapping]) -> dict[str, int]:
    counts = accesscounts.by_status(e for e in entries if "status" in e)
    return {str(k): v for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))}


# ---------------------------------------------------------------------- the page (pure)

def render_html(report: Mapping, png: bytes | None, png_name: str = "report.png") -> str:
    """One self-contained page: the picture (embedded as base64, linked by name) and the
    report's tables."""
    esc = html.escape
    totals, loss, sessions = report["totals"], report["loss"], report["sessions"]
    copier = loss.get("from_copier")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>tcpcopy run report</title>',
        "<style>body{font-family:sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse;margin:0 0 1.5em}"
        "td,th{border:1px solid #bbb;padding:.25em .7em;text-align:right}"
        "th{background:#eee}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%;border:1px solid #ccc}.note{font-weight:bold;color:#a40}"
        ".example td{text-align:left}.example pre{margin:0;white-space:pre-wrap;max-width:60em}</style>",
        "</head><body>",
        "<h1>tcpcopy run report</h1>",
        f"<p>generated {esc(time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(report['generated_at'])))}"
        f"; copies {report['copies']}; {report['duration_s']} s; {report['samples']} stats samples</p>",
    ]
    if report.get("meta"):
        parts.append(_table("run", [(str(k), str(v)) for k, v in report["meta"].items()], ("what", "value")))
    if report.get("note"):
        parts.append(f'<p class="note">{esc(report["note"])}</p>')
    if png:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<p><a href="{esc(png_name)}"><img id="report-png" alt="requests, loss and CPU over time" '
                     f'src="data:image/png;base64,{data}"></a></p>')
    else:
        parts.append(f'<p class="note" id="no-picture">{esc(PICTURE_HINT)}</p>')
    parts.append(_table("requests", [
        ("online", totals["online_requests"]),
        ("expected at the target (online x copies)", totals["expected_target_requests"]),
        ("at the target", totals["target_requests"]),
        ("missing", totals["missing_requests"]),
        ("peak online req/s", totals["peak_online_rps"]),
        ("peak target req/s", totals["peak_target_rps"]),
        ("online status codes", _codes(totals["online_status"])),
        ("target status codes", _codes(totals["target_status"])),
    ], ("requests", "count")))
    loss_rows = [("from the servers' access logs", f"{loss['from_access_logs']:.6f}")]
    if copier:
        loss_rows += [
            ("copier: content segments not replayed", f"{copier.get('content_loss', 0.0):.6f}"),
            ("copier: content segments sent / expected",
             f"{_num(copier.get('content_packets_sent', 0))} / {_num(copier.get('expected_content', 0))}"),
            ("copier: sessions dropped / ended",
             f"{_num(copier.get('sessions_dropped', 0))} / "
             f"{_num(copier.get('sessions_closed', 0) + copier.get('sessions_dropped', 0))}"),
            ("copier: capture drops", _num(copier.get("capture_dropped", 0))),
        ]
    else:
        loss_rows.append(("copier's own estimate", "no stats samples"))
    parts.append(_table("loss", loss_rows, ("loss", "ratio")))
    session_rows = [("started", sessions["started"]), ("established", sessions["established"]),
                    ("closed", sessions["closed"]), ("dropped", sessions["dropped"])]
    session_rows += [(f"outcome {k}", v) for k, v in sessions["outcomes"].items()]
    parts.append(_table("sessions" + (f" (from the {sessions['outcomes_from']})" if sessions.get("outcomes_from") else ""),
                        session_rows, ("sessions", "count")))
    if report.get("comparison"):
        parts.append(_comparison_html(report["comparison"]))
    if report["processes"]:
        parts.append(_table("processes, measured by the harness",
                            [(p["name"], f"{p['cpu_seconds']:.2f}", f"{p['peak_rss_mb']:.1f}") for p in report["processes"]],
                            ("process", "CPU s", "peak RSS MB")))
    if report["published"]:
        parts.append(_table("processes, from their own stats",
                            [(f"{p['role']} {p['identity']}", p["pid"], f"{p['cpu_seconds']:.2f}",
                              f"{p['mean_cpu_percent']:.1f}", f"{p['peak_cpu_percent']:.1f}", f"{p['peak_rss_mb']:.1f}")
                             for p in report["published"]],
                            ("process", "pid", "CPU s", "mean CPU%", "peak CPU%", "peak RSS MB")))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _comparison_html(comparison: Mapping) -> str:
    """The comparison: shares by verdict, latency side by side, the first examples of each
    verdict (each request and both answers' first bytes, and the differences)."""
    esc = html.escape
    verdicts = [(v["verdict"], v["count"], f"{100 * v['share']:.2f}%") for v in comparison["verdicts"]]
    verdicts.append(("not captured (not judged)", comparison["not_captured"], ""))
    latency = comparison["latency"]
    parts = ['<section id="comparison">', "<h2>comparison</h2>",
             f"<p>{comparison['compared']} requests compared in {comparison['sessions_compared']} "
             f"session{'' if comparison['sessions_compared'] == 1 else 's'}</p>",
             _table("answers by verdict", verdicts, ("verdict", "requests", "share of compared"), 3),
             _table("latency to the first answer byte",
                    [(p, _ms(latency["online"][p]), _ms(latency["target"][p])) for p in PERCENTILES]
                    + [("samples", latency["online"]["samples"], latency["target"]["samples"])],
                    ("percentile", "online", "target"), 3),
             "<ul>" + "".join(f"<li>{esc(side)}: {esc(text)}</li>"
                              for side, text in comparison["latency_measures"].items()) + "</ul>"]
    for verdict, examples in comparison["examples"].items():
        parts.append(f"<h3>first examples: {esc(verdict)}</h3>")
        for example in examples:
            parts.append(_table_rows([
                ("request", _pre(example["request"])),
                (f"online answer ({example['online']['length']} bytes, {_ms(example['online']['latency'])})",
                 _pre(example["online"]["first_bytes"])),
                (f"target answer ({example['target']['length']} bytes, {_ms(example['target']['latency'])})",
                 _pre(example["target"]["first_bytes"])),
                ("differences", _pre("\n".join(example["differences"]) or "(none listed)")),
            ], 'class="example"'))
    parts.append("</section>")
    return "\n".join(parts)


def _pre(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>"


def _table_rows(rows: Iterable[tuple[str, str]], attributes: str) -> str:
    """A two-column table whose second cells are HTML already (escaped by the caller)."""
    body = "".join(f"<tr><th>{html.escape(name)}</th><td>{cell}</td></tr>" for name, cell in rows)
    return f"<table {attributes}>{body}</table>"


def _table(title: str, rows: Iterable[Sequence[Any]], header: Sequence[str], level: int = 2) -> str:
    esc = html.escape
    lines = [f"<h{level}>{esc(title)}</h{level}>", "<table>",
             "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        lines.append("<tr>" + "".join(f"<td>{esc(str(cell))}</td>" for cell in row) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _codes(status: Mapping) -> str:
    return ", ".join(f"{k}: {v}" for k, v in status.items()) or "none"


def _num(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


# ---------------------------------------------------------------------- the picture

ROLE_COLOURS = {"capture": "tab:purple", "owner": "tab:blue", "intercept": "tab:orange", "cluster": "tab:gray"}


def draw_png(series: Series, path: str | Path, title: str = "tcpcopy live copy",
             lines: Sequence[str] = (), comparison: Mapping | None = None) -> Path:
    """Draw the picture (:func:`build_figure`) into a PNG at ``path``."""
    path = Path(path)
    build_figure(series, title, lines, comparison).savefig(path, format="png")
    return path


COMPARISON_HEIGHT = 3.4   # inches of the comparison row


def build_figure(series: Series, title: str = "tcpcopy live copy", lines: Sequence[str] = (),
                 comparison: Mapping | None = None):
    """The title block (``title`` over the ``lines`` of :func:`headline`) and three panels:
    requests/s, the window loss in percent and CPU% per role, one y-axis each, every drawn
    series in the legend beside its panel (outside the plot, so no line runs into it). With
    a ``comparison`` (:func:`comparison_section`), a third row: each side's latency
    percentiles side by side, and the share of each verdict."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    body_height = 2.0 if series.empty else 9.4
    heights = [0.45 + 0.25 * len(lines), body_height] + ([COMPARISON_HEIGHT] if comparison else [])
    figure = Figure(figsize=(11, 0.65 + sum(heights)), dpi=100, layout="constrained")
    head, body, *rest = figure.subfigures(len(heights), 1, height_ratios=heights)
    _title_block(head, title, lines)
    if rest:
        _comparison_row(rest[0], comparison)
    if series.empty:
        axes = body.subplots()
        axes.axis("off")
        axes.text(0.5, 0.5, "nothing to draw", ha="center", va="center", fontsize=13, color="gray")
        return figure
    top, middle, bottom = body.subplots(3, 1, sharex=True)
    _requests_panel(top, series)
    _loss_panel(middle, series)
    _cpu_panel(bottom, series)
    for axes in (top, middle, bottom):
        axes.grid(True, alpha=0.3)
        _legend(axes)
    return figure


def _title_block(head, title: str, lines: Sequence[str]) -> None:
    step = 1 / (len(lines) + 1.6)
    head.text(0.5, 1 - 0.8 * step, title, ha="center", va="center", fontsize=15, fontweight="bold")
    for i, line in enumerate(lines):
        head.text(0.5, 1 - (i + 1.8) * step, line, ha="center", va="center", fontsize=11)


def _requests_panel(top, series: Series) -> None:
    x = [s + 0.5 for s in series.seconds]   # a count belongs to the middle of its second
    top.set_title("requests per second (servers' access logs; copier's own count from its stats)", fontsize=10)
    if series.has_requests:
        top.plot(x, series.online, "-o", color="tab:green", markersize=3, label="online")
        if series.copies > 1:
            top.plot(x, series.expected, ":", color="tab:green", label=f"expected at target\n(online x {series.copies})")
        top.plot(x, series.target, "--s", color="tab:red", markersize=3, label="copied\n(at the target)")
    else:
        top.text(0.5, 0.5, "no request in the access logs", transform=top.transAxes, ha="center", va="center")
    if any(series.copier_requests):
        top.plot(series.copier_times, series.copier_requests, "-", color="tab:blue", alpha=0.5, linewidth=1,
                 label="copier's requests\nsent/s (stats)")
    top.set_ylabel("requests / s")
    top.set_ylim(bottom=0)


def _loss_panel(middle, series: Series) -> None:
    from matplotlib.ticker import PercentFormatter

    middle.set_title(f"loss over the last {series.loss_window} s: what had not arrived one copy lag later "
                     f"(access logs: {series.copy_lag:.2f} s)", fontsize=10)
    x = [j + 0.5 for j in range(len(series.window_loss))]
    drawn = [v for v in (*series.window_loss, *series.copier_window_loss) if v is not None]
    if series.has_requests and any(v is not None for v in series.window_loss):
        middle.plot(x, _gaps(series.window_loss), "-", color="tab:red", linewidth=1.8, label="access logs")
    if series.has_samples and any(v is not None for v in series.copier_window_loss):
        middle.plot([j + 0.5 for j in range(len(series.copier_window_loss))], _gaps(series.copier_window_loss),
                    "--", color="tab:blue", label="copier's estimate\n(content segments)")
    if not drawn:
        middle.text(0.5, 0.5, "nothing to judge: no request was due at the target before the end",
                    transform=middle.transAxes, ha="center", va="center")
    elif max(drawn) == 0:
        middle.text(0.5, 0.5, "no loss in any window", transform=middle.transAxes, ha="center", va="center",
                    color="tab:green", fontsize=11)
    top_of_axis = max(0.01, 1.15 * max(drawn, default=0.0))
    middle.set_ylim(-0.03 * top_of_axis, top_of_axis)   # a line at 0 stays clear of the frame
    middle.yaxis.set_major_formatter(PercentFormatter(1.0))
    middle.set_ylabel("loss")


def _gaps(values: Sequence[float | None]) -> list[float]:
    """None (nothing to judge) as NaN: matplotlib leaves a gap there."""
    return [math.nan if v is None else v for v in values]


def _cpu_panel(bottom, series: Series) -> None:
    bottom.set_title("CPU per role (sum over its processes, from their stats)", fontsize=10)
    for role, values in series.cpu_percent.items():
        points = [(t, v) for t, v in zip(_centred(series.sample_times), values) if t >= 0]
        bottom.plot([t for t, _ in points], [v for _, v in points], "-o", markersize=3,
                    color=ROLE_COLOURS.get(role), label=role)
    if not series.has_samples:
        bottom.text(0.5, 0.5, "no stats samples", transform=bottom.transAxes, ha="center", va="center")
    bottom.set_ylabel("CPU %")
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel(f"seconds since {time.strftime('%H:%M:%S', time.localtime(series.origin))}"
                      if series.origin else "seconds")
    bottom.set_xlim(left=0)


def _centred(times: Sequence[float]) -> list[float]:
    """A rate in a sample was measured over about the second before it: drawn mid-way (one
    measured before the time axis begins is left out)."""
    return [t - RATE_SHIFT for t in times]


SIDE_COLOURS = {"online": "tab:green", "target": "tab:red"}


def _comparison_row(row, comparison: Mapping) -> None:
    """Latency p50/p90/p99 of both sides as bars side by side (in ms), and the share of each
    verdict of the requests compared."""
    latency_axes, verdict_axes = row.subplots(1, 2, width_ratios=[1.1, 1])
    _latency_panel(latency_axes, comparison)
    _verdict_panel(verdict_axes, comparison)
    _legend(latency_axes)


def _latency_panel(axes, comparison: Mapping) -> None:
    axes.set_title("latency to the first answer byte\n(online: capture times; target: copier's clock)",
                   fontsize=10)
    width = 0.38
    for offset, (side, figures) in zip((-width / 2, width / 2), comparison["latency"].items()):
        values = [1000 * figures[p] if figures[p] is not None else 0.0 for p in PERCENTILES]
        bars = axes.bar([i + offset for i in range(len(PERCENTILES))], values, width,
                        color=SIDE_COLOURS.get(side), label=f"{side}\n({figures['samples']:,} answers)")
        axes.bar_label(bars, labels=[_ms(figures[p]).replace(" ms", "") for p in PERCENTILES], fontsize=8,
                       padding=2)
    axes.set_xticks(range(len(PERCENTILES)), PERCENTILES)
    axes.set_ylabel("ms")
    axes.set_ylim(0, 1.18 * max([*axes.get_ylim()[1:], 0.001]))   # room for the labels
    axes.grid(True, axis="y", alpha=0.3)


def _verdict_panel(axes, comparison: Mapping) -> None:
    from matplotlib.ticker import PercentFormatter

    verdicts = comparison["verdicts"][::-1]   # 'same' on top
    axes.set_title(f"share of each verdict\n({comparison['compared']:,} requests compared, "
                   f"{comparison['not_captured']:,} not captured)", fontsize=10)
    bars = axes.barh([v["verdict"] for v in verdicts], [v["share"] for v in verdicts],
                     color=["tab:green" if v["verdict"] == "same" else "tab:red" for v in verdicts])
    axes.bar_label(bars, labels=[f"{100 * v['share']:.3g}% ({v['count']:,})" for v in verdicts], fontsize=8,
                   padding=2)
    axes.set_xlim(0, 1.3)    # room for the labels of a bar at 100%
    axes.xaxis.set_major_formatter(PercentFormatter(1.0))
    axes.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    axes.grid(True, axis="x", alpha=0.3)


def _legend(axes) -> None:
    """The panel's legend outside it, on the right: a line never runs under it."""
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


# ---------------------------------------------------------------------- all three

def build_report(samples: Sequence[Mapping], online_log: Sequence[Mapping], target_log: Sequence[Mapping],
                 copies: int, processes: Iterable[Any], out_dir: str | Path, *,
                 tcpcopy_summary: Mapping | None = None, meta: Mapping | None = None,
                 comparison: Mapping | None = None) -> ReportPaths:
    """Write report.json, report.png (with matplotlib) and report.html into ``out_dir``
    (made if missing). ``comparison``: a comparison summary (``Comparing.summary()``'s form)
    when it does not come in ``tcpcopy_summary``'s ``compare``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "report.png" if can_draw() else None
    paths = ReportPaths(out / "report.json", png, out / "report.html")
    series = build_series(samples, online_log, target_log, copies)
    report = summarize(series, samples, online_log, target_log, processes, tcpcopy_summary, meta, comparison)
    paths.json.write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")
    if png is not None:
        draw_png(series, png, lines=headline(report), comparison=report["comparison"])
    paths.html.write_text(render_html(report, png.read_bytes() if png else None, "report.png"))
    return paths


# ---------------------------------------------------------------------- the recorder

def record(endpoint: str, out: str | Path, seconds: float | None = None, interval: float = 1.0,
           ready=None, aggregator=None) -> int:
    """Bind ``endpoint`` (or read ``aggregator``, e.g. one on a stats hub's feed) and append
    one snapshot per ``interval`` to ``out`` until ``seconds`` have passed or SIGINT/SIGTERM
    (from the main thread); how many snapshots were written."""
    from tcpcopy.cluster.ops.aggregator import Aggregator

    stop = []

    def on_signal(signum, _frame):
        stop.append(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, on_signal)
    aggregator = aggregator or Aggregator(endpoint)
    written = 0
    try:
        with open(out, "a", encoding="utf-8") as sink:
            if ready is not None:
                ready()
            start = time.monotonic()
            due = start + interval
            end = math.inf if seconds is None else start + seconds
            while not stop:
                now = time.monotonic()
                if now >= due:
                    written += _write(sink, aggregator)
                    due += interval * max(1, math.floor((now - due) / interval) + 1)
                if now >= end:
                    break
                aggregator.poll(max(0.0, min(SLICE, due - now, end - now)))
            aggregator.poll(0)
            written += _write(sink, aggregator)
    finally:
        aggregator.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return written


def _write(sink, aggregator) -> int:
    sink.write(json.dumps(aggregator.snapshot_json(), sort_keys=True, separators=(",", ":")) + "\n")
    sink.flush()
    return 1


def build_parser() -> CommandParser:
    parser = CommandParser(prog=PROG, description="Record a copy's stats; build its run report.")
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record", help="read a stats hub's feed (--hub) or bind the stats endpoint "
                                             "(--stats) and write one snapshot per second (JSON lines)")
    add_source_flags(rec)
    rec.add_argument("--out", required=True, metavar="FILE", help="JSON-lines file to append the snapshots to")
    rec.add_argument("--seconds", type=float, default=None, metavar="N",
                     help="stop after N seconds (default: at SIGINT or SIGTERM)")
    rec.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between snapshots (1)")
    build = commands.add_parser("build", help="write report.json, report.png and report.html from recorded files")
    build.add_argument("--samples", metavar="FILE", help="the recorder's JSON-lines file")
    build.add_argument("--online-log", metavar="FILE", help="the online server's JSON access log")
    build.add_argument("--target-log", metavar="FILE", help="the target server's JSON access log")
    build.add_argument("--tcpcopy-summary", metavar="FILE",
                       help="tcpcopy's --summary-json file: sessions, and with --compare the comparison section")
    build.add_argument("-n", dest="copies", type=int, default=1, help="copies of each session (tcpcopy -n)")
    build.add_argument("--out-dir", default="tcpcopy-report", metavar="DIR", help="where to write (tcpcopy-report)")
    return parser


def _read_access_log(path: str | None) -> list[dict]:
    if not path:
        return []
    entries = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            for name in ("time", "request_time"):
                try:
                    entry[name] = float(entry[name])
                except (KeyError, TypeError, ValueError):
                    pass
            try:
                entry["status"] = int(entry["status"])
            except (KeyError, TypeError, ValueError):
                pass
            entries.append(entry)
    return entries


class SummaryFileError(ValueError):
    """A --tcpcopy-summary file that cannot be read as tcpcopy's summary."""


def read_tcpcopy_summary(path: str | None) -> dict | None:
    """tcpcopy's ``--summary-json`` file as a dict (None without a path)."""
    if not path:
        return None
    try:
        summary = json.loads(Path(path).read_text(errors="replace"))
    except OSError as exc:
        raise SummaryFileError(f"--tcpcopy-summary {path}: cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise SummaryFileError(f"--tcpcopy-summary {path}: not JSON ({exc}); give the file tcpcopy wrote "
                               "with --summary-json") from None
    if not isinstance(summary, dict):
        raise SummaryFileError(f"--tcpcopy-summary {path}: a JSON object was expected; give the file "
                               "tcpcopy wrote with --summary-json")
    return summary


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "record":
        if args.interval <= 0:
            parser.error(f"--interval {args.interval:g}: give a positive number of seconds")
        if args.seconds is not None and args.seconds <= 0:
            parser.error(f"--seconds {args.seconds:g}: give a positive number of seconds")
        import zmq
        source = args.hub or args.stats
        try:
            aggregator = aggregator_from_flags(args, PROG, "pass --key and --allow-keys as to top")
        except ValueError as exc:   # KeyFileError too
            parser.error(str(exc))
        except zmq.ZMQError as exc:
            print(f"{PROG}: error: --stats {source}: cannot bind: {exc} (another consumer bound there? "
                  "read a stats hub with --hub)", file=sys.stderr)
            return 2
        written = record(source, args.out, args.seconds, args.interval, aggregator=aggregator,
                         ready=lambda: print(f"recording {source} to {args.out}", flush=True))
        print(f"recorded {written} snapshots", flush=True)
        return 0
    if args.copies < 1:
        parser.error(f"-n {args.copies}: give 1 or more copies")
    try:
        paths = build_report(load_samples(args.samples) if args.samples else [],
                             _read_access_log(args.online_log), _read_access_log(args.target_log),
                             args.copies, [], args.out_dir, tcpcopy_summary=read_tcpcopy_summary(args.tcpcopy_summary))
    except SummaryFileError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        if path is not None:
            print(path)
    if paths.png is None:
        print(f"{PROG}: {PICTURE_HINT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
