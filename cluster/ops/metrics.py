"""The cluster's stats for Prometheus: GET /metrics, through ``prometheus_client``.

    tcpcopy-metrics --hub ENDPOINT --listen HOST:PORT      (beside a stats hub, cluster/ops/hub.py)
    tcpcopy-metrics --stats ENDPOINT --listen HOST:PORT    (the only consumer: binds the endpoint)
    tcpcopy-metrics --config CONFIG                        (a cluster's: its [stats] feed and metrics)

A custom collector (``ClusterCollector``) turns each scrape's ``Aggregator.snapshot_json()``
into metric families, per Prometheus's conventions: base units (seconds, bytes), counters
ending in ``_total``, and what varies within one family in labels, never in the name:

- every process's series carry ``role``, ``identity``, ``host`` and ``shard`` (the last two
  read from identities such as "owner-3@online1");
- session outcomes: ``tcpcopy_session_outcomes_total{outcome="closed|dropped", reason}`` (the
  owner's count) and ``tcpcopy_engine_session_outcomes_total`` (its engine's);
- raw socket send failures: ``tcpcopy_raw_send_failures_total{errno}``;
- answer comparison (owners with ``--compare``): requests by verdict,
  ``tcpcopy_compare_requests_total{verdict="same|status_differs|headers_differ|body_differs|
  length_differs|no_answer|not_captured"}``; each side's latency to the first answer byte,
  ``tcpcopy_compare_latency_seconds{side="online|target", quantile="0.5|0.9|0.99"}`` (gauges,
  over the owner's latency sample) and ``tcpcopy_compare_latency_samples_total{side}``;
- CPU: ``tcpcopy_process_cpu_seconds_total{mode="user|system"}``; memory, threads and file
  descriptors as ``tcpcopy_process_*`` gauges; a figure in milliseconds is exported in seconds;
- any other figure ``tcpcopy_<group>_<name>`` (a counter with ``_total``, or a gauge for
  current sizes: ``aggregator.is_gauge``).

``tcpcopy_up`` is 1 while a process publishes and 0 once it is stale; a stale process keeps
its last values, so counters never go backwards. The copier's own loss estimate
(cluster.ops.aggregator.loss_estimate) is exported as two ratios. A series whose name another figure
already took with other labels or another type is left out of the page and counted in
``tcpcopy_metrics_series_left_out`` (the page always parses).

``collect_families`` is a pure function of the snapshot (``render_metrics`` its page); ``serve_metrics`` answers scrapes
from a thread (bounded: MAX_CONNECTIONS at once, idle ones closed) while the caller polls
the aggregator.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.exposition import choose_encoder, generate_latest
    from prometheus_client.registry import CollectorRegistry
except ImportError:          # the metrics extra is missing: main() says how to get it
    CollectorRegistry = None
import zmq

from tcpcopy.cluster.curve import KeyLayout, plain_warning
from tcpcopy.cluster.ops.hub import add_source_flags, aggregator_from_flags
from tcpcopy.cluster.process import CommandParser, version_text
from tcpcopy.cluster.ops.aggregator import Aggregator, is_gauge
from tcpcopy.cluster.ops.top import LISTENER_FIX

PROG = "tcpcopy-metrics"
INSTALL_HINT = "prometheus_client is not installed: pip install 'tcpcopy[metrics]'"
POLL_SLICE = 0.5
IDLE_TIMEOUT = 10.0      # seconds a scrape connection may idle before it is closed
MAX_CONNECTIONS = 32     # connections served at once; more are closed at once
PROCESS_LABELS = ("role", "identity", "host", "shard")
COMPARE_HELP = ("requests whose answers were compared, by verdict (not_captured: one side's answer "
                "bytes never reached the owner, not judged)")

# Resource figures of every process: figure -> (metric, type, help, labels of its own).
PROCESS_METRICS = {
    "cpu_user_s": ("tcpcopy_process_cpu_seconds", "counter", "CPU time of the process", {"mode": "user"}),
    "cpu_system_s": ("tcpcopy_process_cpu_seconds", "counter", "CPU time of the process", {"mode": "system"}),
    "rss_bytes": ("tcpcopy_process_resident_memory_bytes", "gauge", "resident memory", {}),
    "num_threads": ("tcpcopy_process_threads", "gauge", "threads of the process", {}),
    "num_fds": ("tcpcopy_process_open_fds", "gauge", "open file descriptors", {}),
}
NOT_EXPORTED = frozenset({"pid", "published_at"})


def _quantile(percentile: str) -> str:
    """"p99"'s number as Prometheus writes a quantile: "99" -> "0.99"."""
    return f"{int(percentile) / 100:g}"


@dataclass(frozen=True)
class Labelled:
    """Figures whose name carries values that belong in labels: ``pattern``'s groups, in
    order (each through its ``convert``, when given), become the ``labels``."""

    pattern: re.Pattern
    metric: str
    help: str
    labels: tuple[str, ...]
    kind: str = "counter"
    convert: tuple = ()

    def values(self, match: re.Match) -> dict:
        groups = match.groups()
        converts = self.convert or (str,) * len(groups)
        return {label: convert(value) for label, convert, value in zip(self.labels, converts, groups)}


LABELLED = (
    Labelled(re.compile(r"(?:^|\.)outcomes\.(closed|dropped):(.+)$"), "tcpcopy_session_outcomes",
             "sessions ended, by outcome and reason (the owner's count)", ("outcome", "reason")),
    Labelled(re.compile(r"^(?:engine\.)?(closed|dropped)\.([^.]+)$"), "tcpcopy_engine_session_outcomes",
             "sessions ended, by outcome and reason (the engine's count)", ("outcome", "reason")),
    Labelled(re.compile(r"(?:^|\.)raw_send_failures\.([^.]+)$"), "tcpcopy_raw_send_failures",
             "raw socket sends that failed, by errno", ("errno",)),
    Labelled(re.compile(r"(?:^|\.)compare\.counts\.([a-z_]+)$"), "tcpcopy_compare_requests",
             COMPARE_HELP, ("verdict",)),
    Labelled(re.compile(r"(?:^|\.)compare\.(not_captured)$"), "tcpcopy_compare_requests",
             COMPARE_HELP, ("verdict",)),
    Labelled(re.compile(r"(?:^|\.)compare\.latency\.([a-z]+)\.p(\d+)$"), "tcpcopy_compare_latency_seconds",
             "first answer byte after the request, per side (online: between capture times; target: "
             "on the owner's clock, intercept's return path included), a percentile of the owner's sample",
             ("side", "quantile"), kind="gauge", convert=(str, _quantile)),
    Labelled(re.compile(r"(?:^|\.)compare\.latency\.([a-z]+)\.samples$"), "tcpcopy_compare_latency_samples",
             "answers whose latency was measured, per side", ("side",)),
)


@dataclass(frozen=True)
class Series:
    """Where one published figure goes: family name (without ``_total``), type, help, the
    labels it adds to the process's, and the factor to its base unit."""

    metric: str
    kind: str
    help: str
    labels: dict = field(default_factory=dict)
    scale: float = 1.0


def sanitize(name: str) -> str:
    """A figure name as a metric name fragment: [a-zA-Z0-9_] only."""
    return re.sub(r"[^a-zA-Z0-9_]+", "_", name).strip("_") or "unnamed"


def series_for(name: str) -> Series:
    """The family, type, labels and unit of one published figure."""
    if name in PROCESS_METRICS:
        metric, kind, help_text, labels = PROCESS_METRICS[name]
        return Series(metric, kind, help_text, dict(labels))
    for rule in LABELLED:
        match = rule.pattern.search(name)
        if match:
            return Series(rule.metric, rule.kind, rule.help, rule.values(match))
    kind = "gauge" if is_gauge(name) else "counter"
    base, scale = "tcpcopy_" + sanitize(name), 1.0
    if base.endswith("_ms"):
        base, scale = base[:-3] + "_seconds", 0.001
    elif base.endswith("_s"):
        base += "econds"
    if kind == "counter" and base.endswith("_total"):
        base = base[:-6]
    return Series(base, kind, f"{name} ({'current value' if kind == 'gauge' else 'count'})", scale=scale)


class Families:
    """The page's metric families in the order first seen. A series already present, or a
    family name used again with another type or other label names, is left out and counted,
    so the page always parses."""

    def __init__(self):
        self.by_name: dict = {}
        self.seen: set = set()
        self.left_out = 0

    def add(self, name: str, kind: str, help_text: str, labels: dict, value) -> None:
        family = self.by_name.get(name)
        if family is None:
            make = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = self.by_name[name] = make(name, help_text, labels=list(labels))
            family.label_names = tuple(labels)
        key = (name, tuple(labels.values()))
        if family.type != kind or family.label_names != tuple(labels) or key in self.seen:
            self.left_out += 1
            return
        self.seen.add(key)
        family.add_metric([str(value) for value in labels.values()], float(value))

    def families(self) -> list:
        left_out = GaugeMetricFamily("tcpcopy_metrics_series_left_out",
                                     "series left out of this page: their name was taken with other labels or type",
                                     value=self.left_out)
        return [*self.by_name.values(), left_out]


def collect_families(snapshot: dict) -> list:
    """The metric families of ``Aggregator.snapshot_json()``."""
    out = Families()
    for row in snapshot["processes"]:
        _process(out, row)
    _cluster(out, snapshot)
    return out.families()


def _process(out: Families, row: dict) -> None:
    labels = {name: row[name] for name in PROCESS_LABELS}
    out.add("tcpcopy_up", "gauge", "1 while the process publishes stats, 0 once it is stale",
            labels, 0 if row["stale"] else 1)
    out.add("tcpcopy_stats_age_seconds", "gauge", "seconds since the process's last stats",
            labels, row["age"])
    for name in sorted(row["counters"], key=_plain_names_first):
        if name not in NOT_EXPORTED:
            series = series_for(name)
            out.add(series.metric, series.kind, series.help, {**labels, **series.labels},
                    row["counters"][name] * series.scale)


def _plain_names_first(name: str) -> tuple:
    """A name that needs no sanitizing keeps its metric when another sanitizes into it."""
    return sanitize(name) != name, name


def _cluster(out: Families, snapshot: dict) -> None:
    loss = snapshot["loss"]
    out.add("tcpcopy_content_loss_ratio", "gauge",
            "content segments the owners did not replay, of those expected (copier's estimate)",
            {}, loss["content_loss"])
    out.add("tcpcopy_session_drop_ratio", "gauge", "sessions that ended dropped, of those ended",
            {}, loss["session_drop_ratio"])
    counts = snapshot["aggregator"]
    out.add("tcpcopy_stats_messages", "counter", "STATS messages taken by the aggregator",
            {}, counts["messages"])
    for reason in ("wire_errors", "unexpected", "bad_figures", "too_deep"):
        out.add("tcpcopy_stats_rejected", "counter",
                "stats messages or figures the aggregator could not use", {"reason": reason},
                counts[reason])


class ClusterCollector:
    """A custom collector: each scrape takes ``snapshot()`` (the aggregator's at that moment)."""

    def __init__(self, snapshot):
        self.snapshot = snapshot

    def collect(self):
        yield from collect_families(self.snapshot())

    def describe(self):
        return []    # the families depend on what the cluster publishes: none to declare


def cluster_registry(snapshot):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(snapshot))
    return registry


def render_metrics(snapshot: dict) -> str:
    """The page a scrape in the text format gets for ``Aggregator.snapshot_json()``."""
    return generate_latest(cluster_registry(lambda: snapshot)).decode()


# ---------------------------------------------------------------------- HTTP

class _Handler(BaseHTTPRequestHandler):
    registry = None  # set on the subclass serve_metrics makes
    timeout = IDLE_TIMEOUT  # a connection that sends nothing for this long is closed

    def do_GET(self):
        if self.path.split("?", 1)[0] != "/metrics":
            self._answer(404, "text/plain; charset=utf-8", b"not found: the metrics are at /metrics\n")
            return
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        self._answer(200, content_type, encoder(self.registry))

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # scrapes every few seconds are not news
        pass


class _BoundedHTTPServer(ThreadingHTTPServer):
    """One thread per connection, at most MAX_CONNECTIONS of them: a connection beyond is
    closed at once, and each handler's socket times out after IDLE_TIMEOUT, so connections
    that say nothing never pile up threads."""

    daemon_threads = True

    def __init__(self, *args, **kwargs):
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class MetricsServer:
    """An HTTP server answering /metrics from a thread; ``close`` stops it."""

    def __init__(self, aggregator: Aggregator, host: str, port: int):
        handler = type("MetricsHandler", (_Handler,), {"registry": cluster_registry(aggregator.snapshot_json)})
        server_class = type("MetricsHTTPServer", (_BoundedHTTPServer,),
                            {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
        self.httpd = server_class((host, port), handler)
        self.host, self.port = host, self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="tcpcopy-metrics",
                                       daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def serve_metrics(aggregator: Aggregator, host: str, port: int) -> MetricsServer:
    """Serve /metrics on ``host``:``port`` (0: any free port, see ``.port``)."""
    return MetricsServer(aggregator, host, port)


# ---------------------------------------------------------------------- the command

def listen_address(text: str) -> tuple[str, int]:
    """HOST:PORT or [IPV6]:PORT."""
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", text)
    if not match:
        raise ValueError(f"--listen {text}: give HOST:PORT, e.g. 127.0.0.1:9108 or [::1]:9108")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise ValueError(f"--listen {text}: port {port} is above 65535")
    return host, port


def build_parser() -> CommandParser:
    parser = CommandParser(prog=PROG, description="Serve a tcpcopy cluster's stats to Prometheus at /metrics.",
                           epilog=f"Example: {PROG} --hub ipc:///run/tcpcopy-cluster/stats-feed.sock "
                                  "--listen 127.0.0.1:9464")
    parser.add_argument("-v", "--version", action="version", version=version_text(PROG),
                        help="print the version and exit")
    parser.add_argument("--config", metavar="CONFIG",
                        help="a cluster config: read its hub's feed, serve at its [stats] metrics address")
    parser.add_argument("--listen", metavar="HOST:PORT", help="where to serve /metrics, e.g. 127.0.0.1:9464")
    add_source_flags(parser, required=False)   # --config stands for them
    return parser


def _from_config(args):
    """(aggregator, listen address) of a cluster config's exporter."""
    from tcpcopy.cluster.config import load_config
    from tcpcopy.cluster.ops.hub import consumer_keys
    config = load_config(args.config)
    if not (config.stats.endpoint and config.stats.metrics):
        raise ValueError(f"{args.config}: [stats] endpoint and metrics must both be set for the exporter")
    keys = consumer_keys(KeyLayout(config.security.keys_dir).secret("stats")) if config.security.curve else None
    if keys is None:
        print(f"{PROG}: warning: " + plain_warning(["the stats channel"], "set [security] curve = true"),
              file=sys.stderr)
    return Aggregator(config.stats_feed(), hub=True, hub_keys=keys), args.listen or config.stats.metrics


def _source(parser, args):
    """(aggregator, listen address) from --config, or from --hub/--stats and --listen."""
    if args.config:
        if args.hub or args.stats:
            raise ValueError("--config names the hub's feed itself: leave out --hub and --stats")
        return _from_config(args)
    if not (args.hub or args.stats):
        raise ValueError("give --hub ENDPOINT (or --stats ENDPOINT) and --listen HOST:PORT, or --config CONFIG")
    if not args.listen:
        raise ValueError("--listen HOST:PORT is missing: where to serve /metrics, e.g. 127.0.0.1:9464")
    return aggregator_from_flags(args, PROG, LISTENER_FIX), args.listen


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if CollectorRegistry is None:
        return _fail(INSTALL_HINT)
    from tcpcopy.cluster.config import ConfigError
    try:
        listen_address(args.listen) if args.listen else None
        aggregator, listen = _source(parser, args)
    except (ValueError, ConfigError) as exc:   # KeyFileError too
        parser.error(str(exc))
    except zmq.ZMQError as exc:
        where = args.hub or args.stats or args.config
        return _fail(f"{where}: cannot bind or connect: {exc} (is another consumer bound there? "
                     "run a stats hub and read it with --hub)")
    stop = threading.Event()
    # Before the first scrape can be answered: a SIGTERM right after it still stops cleanly.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        host, port = listen_address(listen)
        server = serve_metrics(aggregator, host, port)
    except ValueError as exc:
        aggregator.close()
        return _fail(str(exc))
    except OSError as exc:
        aggregator.close()
        return _fail(f"--listen {listen}: {exc.strerror}: pick a free port on an address of this host")
    print(f"{PROG}: serving {server.url} (pid {os.getpid()})", file=sys.stderr, flush=True)
    return _serve(aggregator, server, stop)


def _serve(aggregator: Aggregator, server: MetricsServer, stop: threading.Event) -> int:
    try:
        while not stop.is_set():
            aggregator.poll(POLL_SLICE)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        aggregator.close()
    return 0


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
