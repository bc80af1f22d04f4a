"""deploy/grafana-dashboard.json against the /metrics page it is drawn from.

The page is rendered from a snapshot of a realistic cluster: an Aggregator fed the counters
that capture workers, owners and an intercept publish, taken from their real counter objects
(CaptureStats, Owner.published_counters, intercept Worker.stats) and real psutil figures.
Every PromQL expression of the board must then select only metrics the page carries, with
labels those metrics have, and group by labels that exist; so renaming a counter breaks this
test instead of leaving a panel silently empty.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from tcpcopy.capture.worker import CaptureStats
from tcpcopy.cluster import wire
from tcpcopy.cluster.busy import LoopMeter
from tcpcopy.cluster.ops.hub import StatsHub
from tcpcopy.cluster.ops.metrics import render_metrics
from tcpcopy.cluster.ops.aggregator import Aggregator
from tcpcopy.cluster.stats import process_figures
from tcpcopy.intercept.routes import RouteTable
from tcpcopy.intercept.worker import COUNTERS as INTERCEPT_COUNTERS, Worker
from tcpcopy.session.engine import BufferBudget, SessionStats
from tcpcopy.session.intercepts import LinkStats
from tcpcopy.session.orphans import OrphanStats
from tcpcopy.session.owner import Owner, OwnerCounters
from tcpcopy.session.table import TableStats

BOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json"
PANEL_TYPES = {"row", "stat", "timeseries"}
VARIABLES = {"$host", "$role", "$__rate_interval"}

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
STRING = r'"(?:[^"\\]|\\.)*"'
SAMPLE = re.compile(rf"^({NAME})(?:\{{(.*)\}})? \S+$")
PAGE_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
SELECTOR = re.compile(rf"({NAME})?\{{([^}}]*)\}}")
MATCHER = re.compile(rf"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*({STRING})")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
LABEL_REPLACE = re.compile(rf'label_replace\(.*?,\s*"(\w+)"\s*,\s*{STRING}\s*,\s*"(\w+)"')
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right"}


# ---------------------------------------------------------------- the page

def capture_counters(n: int) -> dict:
    """What a capture worker publishes (Worker.publish)."""
    return dataclasses.asdict(CaptureStats(captured=3000 * n, batches_sent=30 * n, packets_sent=2990 * n,
                                           packets_dropped_full=4, kernel_received=3004 * n,
                                           kernel_dropped=2, malformed=1))


class OwnerParts(SimpleNamespace):
    """The parts of an Owner its published counters read, holding real counter objects."""

    summary = Owner.summary
    published_counters = Owner.published_counters


class SessionsHeld(SimpleNamespace):
    def __len__(self) -> int:
        return self.active


def owner_counters() -> dict:
    """What an owner publishes (Owner.published_counters), sessions closed and dropped."""
    engine = SessionStats(client_packets=1500, client_content_packets=400, packets_sent=1800,
                          content_packets_sent=398, established=96, requests_sent=160,
                          responses_completed=150, closed={"completed": 90, "target_reset": 1},
                          dropped={"syn_timeout": 4, "capture_gap": 1})
    table = SessionsHeld(active=37, stats=engine,
                         table_stats=TableStats(sessions_started=133, sessions_freed=96,
                                                sessions_refused=2, responses_unroutable=5))
    outcomes = {"closed:completed": 90, "closed:target_reset": 1, "dropped:syn_timeout": 4,
                "dropped:capture_gap": 1}
    parts = OwnerParts(counters=OwnerCounters(batches=15, client_packets=1500, outcomes=outcomes),
                       table=table, links=SimpleNamespace(stats=LinkStats(registered=133, register_drops=1)),
                       fanout=SimpleNamespace(sampled_out=0, unmapped=0),
                       sender=SimpleNamespace(sent=1800, failed={"EPERM": 3, "ENOBUFS": 1}),
                       budget=BufferBudget(), orphans=SimpleNamespace(stats=OrphanStats()), comparing=None, failed=None,
                       stop_reason="")
    return parts.published_counters()


def intercept_counters() -> dict:
    """What an intercept publishes (Worker.stats), with a real route table."""
    routes = RouteTable()
    online, clients = bytes([198, 18, 1, 1]), (bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]))
    routes.register((clients[0], 40000, online, 8080), b"owner-0", now=1.0)
    routes.hold((clients[1], 40002, online, 8080), b"record", now=1.0)
    counts = {name: 7 for name in INTERCEPT_COUNTERS}
    parts = SimpleNamespace(counts=counts, routes=routes, owners={b"owner-0": None}, gate=None,
                            _closed_pcap_drops=3, _captures=[], loop_meter=LoopMeter(0.0), clock=lambda: 0.5)
    return Worker.stats(parts)


PROCESSES = (
    ("capture", "capture-0@online1", capture_counters(1)),
    ("capture", "capture-1@online1", capture_counters(2)),
    ("owner", "owner-0@online1", owner_counters()),
    ("owner", "owner-1@online1", owner_counters()),
    ("intercept", "intercept-0@assist1", intercept_counters()),
)


def hub_counters(directory) -> dict:
    """What the stats hub publishes about itself (StatsHub.figures)."""
    hub = StatsHub(f"ipc://{directory}/hub-in", f"ipc://{directory}/hub-feed")
    try:
        return hub.figures()
    finally:
        hub.close()


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> dict:
    """{metric: {label: {values}}} of /metrics for the cluster above."""
    directory = tmp_path_factory.mktemp('board')
    aggregator = Aggregator(f"ipc://{directory}/stats")
    resources = process_figures(psutil.Process())
    try:
        for role, identity, counters in (*PROCESSES, ("hub", "hub@online1", hub_counters(directory))):
            figures = {**counters, **resources, "published_at": 1.0}
            assert aggregator.ingest(wire.encode_stats(role, identity, figures))
        text = render_metrics(aggregator.snapshot_json())
    finally:
        aggregator.close()
    return metric_labels(text)


def metric_labels(text: str) -> dict:
    metrics: dict[str, dict[str, set]] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, labels = SAMPLE.match(line).groups()
        family = metrics.setdefault(name, {})
        for label, value in PAGE_LABEL.findall(labels or ""):
            family.setdefault(label, set()).add(value)
    return metrics


# ---------------------------------------------------------------- the board

def load_board() -> dict:
    return json.loads(BOARD.read_text())


def queries(board: dict):
    """(panel title, target) of every panel that asks Prometheus."""
    for panel in board["panels"]:
        for target in panel.get("targets", ()):
            yield panel["title"], target


def selected(name: str | None, matchers: list, page: dict) -> list[str]:
    """The page's metrics a selector picks: by its name, or by its __name__ regex."""
    if name:
        return [name] if name in page else []
    patterns = [json.loads(value) for label, op, value in matchers if label == "__name__" and op == "=~"]
    return [m for m in page if patterns and all(re.fullmatch(p, m) for p in patterns)]


def selector_problems(expr: str, page: dict) -> tuple[list[str], set]:
    """Problems of every selector in ``expr``, and the labels its metrics carry."""
    problems, labels = [], set()
    for name, body in SELECTOR.findall(expr):
        matchers = MATCHER.findall(body)
        metrics = selected(name, matchers, page)
        if not metrics:
            problems.append(f"no metric on the page for {name or ''}{{{body}}}")
            continue
        have = {label: values for m in metrics for label, values in page[m].items()}
        labels |= set(have)
        for label, op, value in matchers:
            if label == "__name__":
                continue
            if label not in have:
                problems.append(f"{name or metrics}: no label {label}")
            elif op == "=" and json.loads(value) not in have[label]:
                problems.append(f"{name or metrics}: no series with {label}={value}")
    return problems, labels


def bare_names(expr: str) -> set[str]:
    """Metric names written without braces, after strings, selectors, ranges and grouping
    clauses are cut out; functions (a name before "(") and keywords are not metrics."""
    rest = re.sub(STRING, '""', expr)
    rest = GROUPING.sub(" ", re.sub(r"\[[^\]]*\]", " ", re.sub(r"\{[^}]*\}", " ", rest)))
    return {n for n in re.findall(rf"{NAME}(?![a-zA-Z0-9_:]|\s*\()", rest)
            if n not in KEYWORDS and not n.startswith("$")}


def expr_problems(expr: str, page: dict, legend: str = "") -> list[str]:
    """Everything in one PromQL expression that the page cannot answer."""
    problems, labels = selector_problems(expr, page)
    problems += [f"no metric {n} on the page" for n in sorted(bare_names(expr)) if n not in page]
    for name in bare_names(expr) & set(page):
        labels |= set(page[name])
    for made, source in LABEL_REPLACE.findall(expr):
        if source != "__name__" and source not in labels:
            problems.append(f"label_replace from a label that does not exist: {source}")
        labels.add(made)
    grouped = {label.strip() for clause in GROUPING.findall(expr) for label in clause.split(",") if label.strip()}
    problems += [f"grouped by a label that does not exist: {label}" for label in sorted(grouped - labels)]
    shown = grouped if re.search(r"\bby\s*\(", expr) else labels
    problems += [f"legend shows a label the result lacks: {label}"
                 for label in sorted(set(LEGEND_LABEL.findall(legend)) - shown)]
    problems += [f"unknown variable {v}" for v in sorted(set(re.findall(r"\$\w+", expr)) - VARIABLES)
                 if not re.fullmatch(r"\$\d+", v)]
    return problems


# ---------------------------------------------------------------- tests

def test_the_page_has_every_role_and_the_hub(page):
    assert page["tcpcopy_up"]["role"] == {"capture", "owner", "intercept", "hub"}
    assert "tcpcopy_engine_requests_sent_total" in page and "tcpcopy_resp_records_total" in page


def test_the_checker_catches_stale_names_and_labels(page):
    assert expr_problems("rate(tcpcopy_no_such_thing_total[5m])", page)
    assert expr_problems('sum(tcpcopy_sessions_active{colour="blue"})', page)
    assert expr_problems('sum(tcpcopy_sessions_active{role="capture"})', page)
    assert expr_problems("sum by (colour) (tcpcopy_sessions_active)", page)
    assert expr_problems('sum({__name__=~"tcpcopy_nothing_(.+)_total"})', page)
    assert not expr_problems('sum by (host) (rate(tcpcopy_captured_total{role="capture"}[5m]))', page)


def test_every_panel_asks_only_for_what_metrics_serves(page):
    problems = [f"{title}: {problem}" for title, target in queries(load_board())
                for problem in expr_problems(target["expr"], page, target.get("legendFormat", ""))]
    assert not problems, "\n".join(problems)


def test_the_board_watches_every_bound(page):
    exprs = " ".join(target["expr"] for _, target in queries(load_board()))
    for metric in ("tcpcopy_content_loss_ratio", "tcpcopy_sessions_active",
                   "tcpcopy_packets_dropped_full_total", "tcpcopy_kernel_dropped_total",
                   "tcpcopy_links_register_drops_total", "tcpcopy_records_dropped_total",
                   "tcpcopy_held_refused_total", "tcpcopy_held_expired_total",
                   "tcpcopy_pcap_dropped_total", "tcpcopy_send_drops_total", "raw_send_failures",
                   "tcpcopy_process_cpu_seconds_total", "tcpcopy_process_resident_memory_bytes",
                   "tcpcopy_resp_records_total", "tcpcopy_unroutable_total", "tcpcopy_session_outcomes_total",
                   "tcpcopy_raw_send_failures_total", "tcpcopy_feed_dropped_total"):
        assert metric in exprs, metric


def test_the_template_variables_exist_on_the_page(page):
    variables = {v["name"]: v for v in load_board()["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    for name in ("host", "role"):
        metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variables[name]["query"]["query"]).groups()
        assert label == name and label in page[metric]


def test_the_board_is_an_importable_dashboard():
    board = load_board()
    assert 36 <= board["schemaVersion"] <= 41
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}" and panel["targets"], panel["title"]
    for title, target in queries(board):
        assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", title


def test_every_loop_says_how_busy_it_is(page):
    """The headroom of each process: the share of the last second its loop worked, a gauge."""
    busy = {name: labels for name, labels in page.items() if name.endswith("loop_busy_percent")}
    roles = set().union(*(labels.get("role", set()) for labels in busy.values()))
    assert roles == {"capture", "owner", "intercept"}, busy
