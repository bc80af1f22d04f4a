"""The live dashboard: one row per process of the cluster, refreshed every second.

    python -m tcpcopy.cluster.ops.top --hub ENDPOINT [--once] [--json] [--interval S]
    python -m tcpcopy.cluster.ops.top --stats ENDPOINT ...

It reads a stats hub's feed (cluster/ops/hub.py: beside the exporter and the report recorder), or
binds the stats endpoint itself (every process's StatsPublisher connects to it), and redraws a
plain-text frame with ANSI clear-screen codes, so it works over SSH and in any terminal;
q or Ctrl-C quits. ``--once`` collects for a few seconds and prints one frame; with
``--json`` it prints the aggregator's snapshot instead, for scripts.

``render`` is a pure function of that snapshot and the terminal's size. A column that does
not apply to a role (a capture worker has no sessions) is left empty; every figure shown is
a number. In a narrow terminal (80 columns over SSH) the least important columns are left
out rather than wrapped, and header lines break between their parts. When owners compare
answers (``tcpcopy --compare``), a header line says how many requests were compared, the
share of each verdict, how many were not captured, and each side's latency (p50/p99, the
slowest owner's: ``aggregator.compare_totals``).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from tcpcopy.cluster import wire
from tcpcopy.cluster.curve import ServerKeys, plain_warning
from tcpcopy.cluster.ops.hub import add_source_flags, aggregator_from_flags
from tcpcopy.cluster.process import CommandParser
from tcpcopy.cluster.ops.aggregator import Aggregator, figure, outcomes

PROG = "python -m tcpcopy.cluster.ops.top"
ONCE_WAIT = 2.5          # seconds --once listens: two snapshots of every process, so rates
SLICE = 0.1              # seconds between key checks while waiting for the next frame
CLEAR = "\x1b[H\x1b[2J"
ROLE_ORDER = ("capture", "owner", "intercept", "cluster", "hub")
MIN_IDENTITY = 8


@dataclass(frozen=True)
class Column:
    """One figure per row: the sum of ``names`` for the row's role, per second or as is."""

    title: str
    per_second: bool
    names: dict                                   # role -> names (aggregator.figure)
    outcome: dict = field(default_factory=dict)   # role -> outcome kind added (aggregator.outcomes)

    def value(self, role: str, counters: dict, rates: dict) -> float | None:
        if role not in self.names:
            return None
        source = rates if self.per_second else counters
        total = sum(figure(source, name) for name in self.names[role])
        if role in self.outcome:
            total += outcomes(source, self.outcome[role])
        return total


COLUMNS = (
    Column("capt/s", True, {"capture": ("captured",), "owner": ("client_packets",),
                            "intercept": ("all",)}),
    Column("sent/s", True, {"capture": ("packets_sent",), "owner": ("packets_sent",),
                            "intercept": ("resp_records",)}),
    Column("active", False, {"owner": ("sessions_active",), "intercept": ("routes",)}),
    Column("estab/s", True, {"owner": ("established",)}),
    Column("req/s", True, {"owner": ("requests_sent",)}),
    Column("resp/s", True, {"owner": ("responses",)}),
    Column("drops/s", True, {"capture": ("packets_dropped_full", "kernel_dropped"),
                             "owner": ("sessions_refused", "connections_shed", "register_drops"),
                             "intercept": ("records_dropped", "held_refused", "held_expired",
                                           "pcap_dropped")},
           outcome={"owner": "dropped"}),
    Column("senderr", False, {"owner": ("raw_send_failures",), "intercept": ("send_drops",)}),
)


# ---------------------------------------------------------------------- rendering

def number_text(value: float | None) -> str:
    """A figure for a six-character column: 0.4, 12, 3456, 123.5k, 4.5M, 1.2G; empty when it
    does not apply."""
    if value is None:
        return ""
    magnitude = abs(value)
    if magnitude >= 1e9:
        return f"{value / 1e9:.1f}G"
    if magnitude >= 1e6:
        return f"{value / 1e6:.1f}M"
    if magnitude >= 1e5:
        return f"{value / 1e3:.1f}k"
    if magnitude >= 10 or float(value).is_integer():
        return f"{value:.0f}"
    return f"{value:.1f}"


def age_text(seconds: float) -> str:
    """At most four characters, so "stale AGE" fits its column."""
    if seconds < 100:
        return f"{seconds:.0f}s"
    if seconds < 6000:
        return f"{seconds / 60:.0f}m"
    if seconds < 360000:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def percent(value: float) -> str:
    return f"{100 * value:.2f}%"


@dataclass(frozen=True)
class TableColumn:
    """One column of the process table: its title, its width (None: the identity's, which
    depends on the rows and the terminal) and the text of a row's cell."""

    title: str
    width: int | None
    text: Callable[[dict], str]
    left: bool = False


def _state(row: dict) -> str:
    return f"stale {age_text(row['age'])}" if row["stale"] else "ok"


def _busy(row: dict) -> str:
    value = row["counters"].get("loop_busy_percent")
    return "-" if value is None else f"{value:.0f}"


def _figure_column(column: Column) -> TableColumn:
    def text(row: dict) -> str:
        return number_text(column.value(row["role"], row["counters"], row["rates"]))
    return TableColumn(column.title, max(len(column.title), 6), text)


TABLE = (
    TableColumn("role", 9, lambda row: row["role"], left=True),
    # A publisher chose its identity: shown escaped, so it cannot drive the terminal.
    TableColumn("identity", None, lambda row: wire.printable(row["identity"]), left=True),
    TableColumn("state", 9, _state, left=True),
    TableColumn("pid", 7, lambda row: str(row["pid"])),
    TableColumn("cpu%", 5, lambda row: f"{row['cpu_percent']:.1f}"),
    # The share of the last second its loop worked rather than waited: a loop near 100%
    # has no headroom left, before anything is shed or dropped.
    TableColumn("busy%", 5, _busy),
    TableColumn("rssMB", 5, lambda row: f"{row['counters'].get('rss_bytes', 0) / 2**20:.0f}"),
    TableColumn("thr", 3, lambda row: number_text(row["counters"].get("num_threads", 0))),
    TableColumn("fds", 4, lambda row: number_text(row["counters"].get("num_fds", 0))),
    *(_figure_column(c) for c in COLUMNS),
)
# The columns a narrow terminal gives up, first to last. The role is early because cluster
# identities name it ("owner-3@online1"). The identity, CPU, memory, capt/s, sent/s, active
# and drops/s always stay.
DROP_ORDER = ("fds", "thr", "role", "pid", "senderr", "estab/s", "resp/s", "req/s", "state", "busy%")
IDENTITY_ROOM = 28       # identity characters worth a column; a longer one takes only spare room


def render(snapshot: dict, width: int = 120, height: int | None = None) -> str:
    """The dashboard frame for ``Aggregator.snapshot_json()`` in ``width`` columns and, when
    given, ``height`` lines: table columns that do not fit are left out (DROP_ORDER) and
    header lines break between their parts, so nothing wraps in a narrow terminal."""
    rows = sorted(snapshot["processes"], key=_row_order)
    columns, identity_width = _layout(rows, width)
    lines = [*_header(snapshot, width), ""]
    lines.append(_table_line(columns, [c.title for c in columns], identity_width))
    lines += [_table_line(columns, [c.text(row) for c in columns], identity_width) for row in rows]
    if height is not None and len(lines) > height:
        hidden = len(lines) - height + 1
        lines = lines[:height - 1] + [f"... {hidden} more lines: enlarge the terminal, or use --once --json"]
    return "\n".join(line[:width] for line in lines) + "\n"


def _role_order(role: str) -> int:
    return ROLE_ORDER.index(role) if role in ROLE_ORDER else len(ROLE_ORDER)


def _row_order(row: dict):
    shard = int(row["shard"]) if row["shard"].isdigit() else -1
    return _role_order(row["role"]), row["host"], shard, row["identity"]


def pack(parts: list[str], width: int, separator: str, indent: str = "  ") -> list[str]:
    """``parts`` joined by ``separator`` into lines of at most ``width`` columns, broken only
    between parts, later lines indented; a part longer than a line gets a line of its own."""
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + len(separator) + len(part) <= width:
            lines[-1] += separator + part
        else:
            lines.append(indent + part if lines else part)
    return lines


def _header(snapshot: dict, width: int) -> list[str]:
    processes = snapshot["processes"]
    stale = sum(p["stale"] for p in processes)
    bad = snapshot["aggregator"]["wire_errors"] + snapshot["aggregator"]["unexpected"]
    clock = time.strftime("%H:%M:%S", time.localtime(snapshot["time"]))
    first = ["tcpcopy cluster", clock, f"stats {snapshot['endpoint']}",
             f"processes {len(processes)} ({stale} stale)", f"bad stats messages {bad}"]
    compare = snapshot.get("compare")
    return [*pack(first, width, "  "), *_totals_lines(snapshot, width),
            *pack(_loss_parts(snapshot["loss"]), width, "  "),
            *(pack(_compare_parts(compare), width, " ") if compare else [])]


def _totals_lines(snapshot: dict, width: int) -> list[str]:
    """Every role's totals on one line, or when that is too wide, each role on its own."""
    roles = [_role_totals(snapshot, role) for role in sorted(snapshot["totals"], key=_role_order)]
    if not roles:
        return ["no process has published stats yet"]
    line = " | ".join(" ".join(parts) for parts in roles)
    if len(line) <= width:
        return [line]
    return [text for parts in roles for text in pack(parts, width, " ")]


def _role_totals(snapshot: dict, role: str) -> list[str]:
    totals, rates = snapshot["totals"][role], snapshot["rates"].get(role, {})
    return [f"{role} x{totals['processes']}:",
            *(f"{c.title} {number_text(c.value(role, totals, rates))}" for c in COLUMNS if role in c.names)]


def _loss_parts(loss: dict) -> list[str]:
    ended = loss["sessions_closed"] + loss["sessions_dropped"]
    return [f"loss ~ {percent(loss['content_loss'])} of content segments "
            f"({number_text(loss['content_packets_sent'])} sent of "
            f"{number_text(loss['expected_content'])} expected)",
            f"sessions dropped {number_text(loss['sessions_dropped'])} of {number_text(ended)} "
            f"({percent(loss['session_drop_ratio'])})",
            f"requests {number_text(loss['requests_sent'])}",
            f"capture drops {number_text(loss['capture_dropped'])}"]


VERDICT_TITLES = {"same": "same", "status_differs": "status", "headers_differ": "headers",
                  "body_differs": "body", "length_differs": "length", "no_answer": "no answer"}


def _compare_parts(compare: dict) -> list[str]:
    """The comparison in short parts (a narrow terminal breaks between them): requests
    compared, each verdict's share, those not captured, and both sides' latency."""
    shares = [f"{title} {100 * compare['shares'].get(verdict, 0.0):.1f}%"
              for verdict, title in VERDICT_TITLES.items()]
    latency = [f"online {_latency_text(compare['latency']['online'])},",
               f"target {_latency_text(compare['latency']['target'])}"]
    return [f"compared {number_text(compare['compared'])}:", *shares,
            f"| not captured {number_text(compare['not_captured'])}", "| latency p50/p99", *latency]


def _latency_text(figures: dict) -> str:
    """"1.2/8.0 ms" from a side's percentiles in seconds; "-" for one not measured yet."""
    def ms(value) -> str:
        return "-" if value is None else f"{1000 * value:.1f}"
    return f"{ms(figures.get('p50'))}/{ms(figures.get('p99'))} ms"


def _layout(rows: list, width: int) -> tuple[list, int]:
    """The table columns that fit ``width``, and the identity's width: up to IDENTITY_ROOM
    characters of the longest identity push out the columns of DROP_ORDER, beyond that
    the identity takes what is left, never less than MIN_IDENTITY."""
    longest = max([MIN_IDENTITY, *(len(wire.printable(row["identity"])) for row in rows)])
    columns = list(TABLE)
    for title in DROP_ORDER:
        if _fixed_width(columns) + min(longest, IDENTITY_ROOM) <= width:
            break
        columns = [c for c in columns if c.title != title]
    return columns, max(MIN_IDENTITY, min(longest, width - _fixed_width(columns)))


def _fixed_width(columns: list) -> int:
    """Columns of a table line but the identity's own: the other cells and the spaces."""
    return sum(c.width or 0 for c in columns) + len(columns) - 1


def _table_line(columns: list, cells: list, identity_width: int) -> str:
    out = []
    for column, cell in zip(columns, cells):
        width = column.width or identity_width
        text = cell[:width]
        out.append(text.ljust(width) if column.left else text.rjust(width))
    return " ".join(out).rstrip()


# ---------------------------------------------------------------------- the command

LISTENER_FIX = ("pass --key DIR/stats.key_secret --allow-keys DIR/allowed-publishers here and "
                "--key and --stats-server-key DIR/stats.key to the publishers; in a cluster config, "
                "[security] curve = true")


def collect(aggregator: Aggregator, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        aggregator.poll(left)


def run_top(endpoint: str, once: bool = False, json_out: bool = False, interval: float = 1.0,
            out=None, keys: ServerKeys | None = None, aggregator: Aggregator | None = None) -> int:
    """Bind ``endpoint`` (or read ``aggregator``, e.g. one on a stats hub's feed) and show the
    dashboard until q or Ctrl-C (or one frame ``once``); with ``keys`` only the publishers
    they admit are heard (CURVE)."""
    out = out or sys.stdout
    if aggregator is None:
        aggregator = Aggregator(endpoint, keys=keys)
        if keys is None:
            print(f"{PROG}: warning: " + plain_warning(["the stats channel"], LISTENER_FIX), file=sys.stderr)
    try:
        if once:
            collect(aggregator, ONCE_WAIT)
            snapshot = aggregator.snapshot_json()
            out.write(json.dumps(snapshot, indent=2, sort_keys=True) + "\n" if json_out
                      else render(snapshot, shutil.get_terminal_size().columns))
            return 0
        return _live(aggregator, interval, out)
    finally:
        aggregator.close()


def _live(aggregator: Aggregator, interval: float, out) -> int:
    with _keys() as quit_pressed:
        try:
            while True:
                size = shutil.get_terminal_size()
                out.write(CLEAR + render(aggregator.snapshot_json(), size.columns, size.lines - 1))
                out.flush()
                if _wait(aggregator, interval, quit_pressed):
                    return 0
        except KeyboardInterrupt:
            return 0


def _wait(aggregator: Aggregator, interval: float, quit_pressed) -> bool:
    """Take stats until the next frame is due; True when the user asked to quit."""
    deadline = time.monotonic() + interval
    while (left := deadline - time.monotonic()) > 0:
        aggregator.poll(min(SLICE, left))
        if quit_pressed():
            return True
    return False


@contextlib.contextmanager
def _keys():
    """A check for q on a terminal's stdin (cbreak mode, restored on exit); never true
    when stdin is not a terminal."""
    if not sys.stdin.isatty():
        yield lambda: False
        return
    import termios
    import tty
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield lambda: _q_pressed(fd)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        sys.stdout.write("\n")


def _q_pressed(fd: int) -> bool:
    while select.select([fd], [], [], 0)[0]:
        key = os.read(fd, 1)
        if key in (b"q", b"Q") or not key:
            return True
    return False


def build_parser() -> CommandParser:
    parser = CommandParser(prog=PROG, description="Live view of a tcpcopy cluster's stats: one row per process.",
                           epilog=f"Example: {PROG} --hub ipc:///run/tcpcopy-cluster/stats-feed.sock")
    parser.add_argument("--once", action="store_true",
                        help=f"listen {ONCE_WAIT:g} s, print one frame and exit")
    parser.add_argument("--json", action="store_true", help="with --once: print the snapshot as JSON")
    parser.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between frames")
    add_source_flags(parser)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.json and not args.once:
        parser.error("--json prints one snapshot: add --once")
    if args.interval <= 0:
        parser.error(f"--interval {args.interval:g}: give a positive number of seconds")
    try:
        aggregator = aggregator_from_flags(args, PROG, LISTENER_FIX)
    except ValueError as exc:   # KeyFileError too
        parser.error(str(exc))
    except zmq.ZMQError as exc:
        print(f"{PROG}: error: --stats {args.stats}: cannot bind: {exc} "
              "(is another consumer bound there? run a stats hub, python -m tcpcopy.cluster.ops.hub, "
              "and read it with --hub; is the path's directory there?)", file=sys.stderr)
        return 2
    return run_top(args.hub or args.stats, once=args.once, json_out=args.json, interval=args.interval,
                   aggregator=aggregator)


if __name__ == "__main__":
    sys.exit(main())
