"""The cluster's stats for Prometheus: GET /metrics in the text exposition format (0.0.4).

    python -m tcpcopy.cluster.metrics --stats ENDPOINT --listen HOST:PORT

Every process's counters become ``tcpcopy_<name>_total``, its current sizes (sessions
active, routes, ``*_now``) and resource figures gauges, all labelled with ``role``,
``identity``, ``host`` and ``shard`` (the last two read from identities such as
"owner-3@online1"). ``tcpcopy_up`` is 1 while a process publishes and 0 once it is stale;
a stale process keeps its last values, so counters never go backwards. The copier's own
loss estimate (cluster.stats.loss_estimate) is exported as two ratios.

``render_metrics`` is a pure function of ``Aggregator.snapshot_json()``; ``serve_metrics``
answers scrapes from a thread while the caller polls the aggregator.
"""

from __future__ import annotations

import re
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import zmq

from tcpcopy.cluster.curve import add_server_key_flags, plain_warning, server_keys_from_flags
from tcpcopy.cluster.process import CommandParser
from tcpcopy.cluster.stats import Aggregator, is_gauge
from tcpcopy.cluster.top import LISTENER_FIX

PROG = "python -m tcpcopy.cluster.metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
POLL_SLICE = 0.5
IDLE_TIMEOUT = 10.0      # seconds a scrape connection may idle before it is closed
MAX_CONNECTIONS = 32     # connections served at once; more are closed at once

# Resource figures of every process: figure -> (metric, type, help).
PROCESS_METRICS = {
    "cpu_user_s": ("tcpcopy_cpu_user_seconds_total", "counter", "CPU time in user mode"),
    "cpu_system_s": ("tcpcopy_cpu_system_seconds_total", "counter", "CPU time in kernel mode"),
    "rss_bytes": ("tcpcopy_resident_memory_bytes", "gauge", "resident memory"),
    "num_threads": ("tcpcopy_threads", "gauge", "threads of the process"),
    "num_fds": ("tcpcopy_open_fds", "gauge", "open file descriptors"),
}
NOT_EXPORTED = frozenset({"pid", "published_at"})


def sanitize(name: str) -> str:
    """A figure name as a metric name fragment: [a-zA-Z0-9_] only."""
    return re.sub(r"[^a-zA-Z0-9_]+", "_", name).strip("_") or "unnamed"


def metric_for(name: str) -> tuple[str, str, str]:
    """(metric name, type, help) of one published figure."""
    if name in PROCESS_METRICS:
        return PROCESS_METRICS[name]
    base = "tcpcopy_" + sanitize(name)
    if is_gauge(name):
        return base, "gauge", f"{name} (current value)"
    return (base if base.endswith("_total") else base + "_total"), "counter", f"{name} (count)"


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def labels_text(labels: dict) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{escape(str(value))}"' for key, value in labels.items()) + "}"


def value_text(value) -> str:
    return str(int(value)) if isinstance(value, int) or float(value).is_integer() else repr(float(value))


class Exposition:
    """Metric families in the order first seen; a series already present, or a name used
    with another type, is skipped so the output always parses."""

    def __init__(self):
        self.families: dict[str, tuple[str, str, dict]] = {}

    def add(self, name: str, kind: str, help_text: str, labels: dict, value) -> None:
        family = self.families.setdefault(name, (kind, help_text, {}))
        if family[0] != kind:
            return
        family[2].setdefault(labels_text(labels), value)

    def text(self) -> str:
        lines = []
        for name, (kind, help_text, series) in self.families.items():
            lines += [f"# HELP {name} {_help(help_text)}", f"# TYPE {name} {kind}"]
            lines += [f"{name}{labels} {value_text(value)}" for labels, value in series.items()]
        return "\n".join(lines) + "\n"


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def render_metrics(snapshot: dict) -> str:
    """The /metrics page for ``Aggregator.snapshot_json()``."""
    out = Exposition()
    for row in snapshot["processes"]:
        _process(out, row)
    _cluster(out, snapshot)
    return out.text()


def _process(out: Exposition, row: dict) -> None:
    labels = {"role": row["role"], "identity": row["identity"], "host": row["host"],
              "shard": row["shard"]}
    out.add("tcpcopy_up", "gauge", "1 while the process publishes stats, 0 once it is stale",
            labels, 0 if row["stale"] else 1)
    out.add("tcpcopy_stats_age_seconds", "gauge", "seconds since the process's last stats",
            labels, row["age"])
    for name in sorted(row["counters"], key=_plain_names_first):
        if name not in NOT_EXPORTED:
            out.add(*metric_for(name), labels, row["counters"][name])


def _plain_names_first(name: str) -> tuple:
    """A name that needs no sanitizing keeps its metric when another sanitizes into it."""
    return sanitize(name) != name, name


def _cluster(out: Exposition, snapshot: dict) -> None:
    loss = snapshot["loss"]
    out.add("tcpcopy_content_loss_ratio", "gauge",
            "content segments the owners did not replay, of those expected (copier's estimate)",
            {}, loss["content_loss"])
    out.add("tcpcopy_session_drop_ratio", "gauge", "sessions that ended dropped, of those ended",
            {}, loss["session_drop_ratio"])
    counts = snapshot["aggregator"]
    out.add("tcpcopy_stats_messages_total", "counter", "STATS messages taken by the aggregator",
            {}, counts["messages"])
    for reason in ("wire_errors", "unexpected", "bad_figures", "too_deep"):
        out.add("tcpcopy_stats_rejected_total", "counter",
                "stats messages or figures the aggregator could not use", {"reason": reason},
                counts[reason])


# ---------------------------------------------------------------------- HTTP

class _Handler(BaseHTTPRequestHandler):
    aggregator: Aggregator  # set on the subclass serve_metrics makes
    timeout = IDLE_TIMEOUT  # a connection that sends nothing for this long is closed

    def do_GET(self):
        if self.path.split("?", 1)[0] != "/metrics":
            self._answer(404, "text/plain; charset=utf-8", "not found: the metrics are at /metrics\n")
            return
        self._answer(200, CONTENT_TYPE, render_metrics(self.aggregator.snapshot_json()))

    def _answer(self, status: int, content_type: str, text: str) -> None:
        body = text.encode()
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
        handler = type("MetricsHandler", (_Handler,), {"aggregator": aggregator})
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
                           epilog=f"Example: {PROG} --stats ipc:///run/tcpcopy/stats --listen 127.0.0.1:9108")
    parser.add_argument("--stats", required=True, metavar="ENDPOINT",
                        help="the stats endpoint to bind, where every process publishes")
    parser.add_argument("--listen", required=True, metavar="HOST:PORT", help="where to serve /metrics")
    add_server_key_flags(parser, "publishers", "keys/stats.key_secret")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        host, port = listen_address(args.listen)
        keys = server_keys_from_flags(args.key, args.allow_keys)
    except ValueError as exc:   # KeyFileError too
        parser.error(str(exc))
    try:
        aggregator = Aggregator(args.stats, keys=keys)
    except zmq.ZMQError as exc:
        return _fail(f"--stats {args.stats}: cannot bind: {exc} (is another aggregator bound there?)")
    if keys is None:
        print(f"{PROG}: warning: " + plain_warning(["the stats channel"], LISTENER_FIX), file=sys.stderr)
    try:
        server = serve_metrics(aggregator, host, port)
    except OSError as exc:
        aggregator.close()
        return _fail(f"--listen {args.listen}: {exc.strerror}: pick a free port on an address of this host")
    return _serve(aggregator, server)


def _serve(aggregator: Aggregator, server: MetricsServer) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
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
