"""The main job: a live copy in the four-host lab, ending in a report.

It builds the lab (client, online server, target server, assistant), runs nginx on the
online host (port 80) and on the target (port 8080), starts ``intercept`` on the assistant
and ``tcpcopy`` on the online host, drives real HTTP load from the client with h2load
(short connections at a fixed rate, then keep-alive connections), and reports what the
servers' own access logs say beside what the copier counted, with the CPU and memory of
every process. The lab is torn down afterwards, also on failure.

Both commands also publish their counters each second (``--stats``) to a recorder in the
online host, and the run report is written as files into ``--report-dir``
(``./tcpcopy-report/``): report.json (the figures), report.png (requests per second online
and at the target, loss, CPU per role over time) and report.html (both on one page). Their
paths are printed after the text report. On SIGINT or SIGTERM the copy stops, the lab is torn
down and the report is written with what was collected until then; a second signal ends the
demo at once (the lab is still torn down). The run's own folder (the commands' logs, the
stats samples, the servers' access logs) is removed once the report is written; with
``TCPCOPY_KEEP_RUNS=1`` it is kept and named on stderr.

    python -m tcpcopy.lab.demo [--rate 500] [--seconds 5] [--keepalive 20x50] [-n 1] [--json]
                                  [--report-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tcpcopy.cluster.ops.report import PICTURE_HINT, ReportPaths, build_report
from tcpcopy.lab import load
from tcpcopy.lab.netns import CLIENT, LabError, four_host
from tcpcopy.lab.livecopy import STATS_ENDPOINT, CopyReport, LiveCopy, LiveCopyError
from tcpcopy.lab.servers import ServerError

DEFAULT_REPORT_DIR = "tcpcopy-report"


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived while the copy ran (a BaseException, like KeyboardInterrupt,
    so no ``except Exception`` on the way swallows it). ``files`` are the report written with
    what was collected, when there was a report directory."""

    def __init__(self, signum: int, files: ReportPaths | None = None):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum
        self.files = files


@dataclass
class DemoRun:
    """What a demo run produced: the client loads that finished, the copy's report (None when
    it was interrupted before the copy began), the report files (None without a report
    directory), the signal that cut it short (None when it ran to the end) and the run
    folder it used (gone by now unless kept on request)."""

    loads: list = field(default_factory=list)
    report: CopyReport | None = None
    files: ReportPaths | None = None
    interrupted: int | None = None
    run_dir: Path | None = None


class _Interrupts:
    """SIGINT and SIGTERM, while the copy runs, end it early: the first one raises
    :class:`Interrupted` where the demo is (once :meth:`disarm` is called, it is only
    remembered, so stopping the copy, tearing the lab down and writing the report are not
    cut short). A second signal gets the handler that was there before: the lab's own teardown
    for SIGTERM, KeyboardInterrupt for SIGINT. Only from the main thread; elsewhere it does
    nothing and the signals keep their handlers."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self.armed = True
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "_Interrupts":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def disarm(self) -> None:
        self.armed = False

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signum
            if self.armed:
                self.armed = False
                raise Interrupted(signum)
            return
        previous = self._previous.get(signum, signal.SIG_DFL)
        self.restore()
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            os.kill(os.getpid(), signum)


def run_demo(rate: int, seconds: float, keepalive: tuple[int, int], copies: int,
             report_dir: str | Path | None = None) -> DemoRun:
    """The live copy under load; with ``report_dir`` the commands publish stats, a recorder
    keeps them and the report files are written there (after the lab is torn down).

    SIGINT and SIGTERM (from the main thread) end the copy early: the result then has
    ``interrupted`` set and reports what was collected until then."""
    flags = ["-n", str(copies)] if copies > 1 else []
    stats = STATS_ENDPOINT if report_dir is not None else None
    result = DemoRun()
    copy = None
    with four_host() as lab, _Interrupts() as interrupts:
        try:
            copy = LiveCopy(lab, tcpcopy_flags=flags, copies=copies, stats_endpoint=stats)
            copy.__enter__()
            _drive(lab, copy, rate, seconds, keepalive, copies, result.loads)
        except Interrupted:
            pass  # stopped early: what was collected is reported below
        finally:
            interrupts.disarm()
            if copy is not None:
                # tcpcopy, intercept, the recorder, then the servers (their logs are kept);
                # also after a start cut short, where ``with`` would not call __exit__
                copy.__exit__(None, None, None)
    result.interrupted = interrupts.received
    if copy is not None:
        result.report = copy.report()
    if report_dir is not None:
        result.files = write_report(copy, result, rate, seconds, keepalive, copies, report_dir)
    if copy is not None:
        result.run_dir = copy.dir
        copy.remove_dir()
    return result


def _drive(lab, copy: LiveCopy, rate: int, seconds: float, keepalive: tuple[int, int], copies: int,
           loads: list) -> None:
    loads.append(load.short_connections(lab, CLIENT, f"{copy.url}/index.html", rate, seconds))
    connections, per_connection = keepalive
    if connections:
        loads.append(load.keepalive(lab, CLIENT, f"{copy.url}/index.html", connections, per_connection))
    expected = sum(r.summary.done for r in loads) * copies
    copy.wait_for_target(expected)


def write_report(copy: LiveCopy | None, result: DemoRun, rate: int, seconds: float,
                 keepalive: tuple[int, int], copies: int, report_dir: str | Path) -> ReportPaths:
    """The report files from what ``copy`` collected (nothing, if it never started)."""
    meta = {"command": "python -m tcpcopy.lab.demo",
            "load": f"{rate} short connections/s for {seconds:g} s, then keep-alive "
                    f"{keepalive[0]}x{keepalive[1]}",
            "copies (-n)": copies}
    if result.interrupted is not None:
        meta["interrupted"] = (f"by {signal.Signals(result.interrupted).name}: "
                               "the report covers what was collected until then")
    if copy is None:
        return build_report([], [], [], copies, [], report_dir, meta=meta)
    report = result.report
    return build_report(copy.samples(), copy.online.access_log_entries(), copy.target.access_log_entries(),
                        copies, report.processes if report else list(copy.figures.values()), report_dir,
                        tcpcopy_summary=report.tcpcopy_summary if report else None, meta=meta)


def run(rate: int, seconds: float, keepalive: tuple[int, int], copies: int,
        report_dir: str | Path | None = None) -> tuple[list, object]:
    """(loads, CopyReport) of a demo run; with ``report_dir`` the report files are written
    there too (report.json, report.png, report.html). Raises :class:`Interrupted` (carrying
    the files written) when SIGINT or SIGTERM cut it short."""
    result = run_demo(rate, seconds, keepalive, copies, report_dir)
    if result.interrupted is not None:
        raise Interrupted(result.interrupted, result.files)
    return result.loads, result.report


def _keepalive(text: str) -> tuple[int, int]:
    connections, sep, requests = text.partition("x")
    if not sep or not connections.isdigit() or not requests.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give CONNECTIONSxREQUESTS, e.g. 20x50 (0x0 for none)")
    return int(connections), int(requests)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcpcopy.lab.demo", description=__doc__.split("\n\n")[0],
                                     epilog="The run folder (logs, stats samples, access logs) is removed at the end; "
                                            "TCPCOPY_KEEP_RUNS=1 keeps it and names it on stderr.")
    parser.add_argument("--rate", type=int, default=500, help="short connections per second (500)")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long the short-connection load runs (5)")
    parser.add_argument("--keepalive", type=_keepalive, default=(20, 50),
                        help="keep-alive load as CONNECTIONSxREQUESTS (20x50)")
    parser.add_argument("-n", dest="copies", type=int, default=1, help="tcpcopy -n: copies of each session")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--report-dir", default=DEFAULT_REPORT_DIR, metavar="DIR",
                        help=f"where to write report.json, report.png and report.html (./{DEFAULT_REPORT_DIR}/)")
    args = parser.parse_args(argv)
    try:
        demo = run_demo(args.rate, args.seconds, args.keepalive, args.copies, args.report_dir)
    except (LabError, ServerError, LiveCopyError, load.LoadError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:  # before the copy was set up: nothing to report
        print(f"demo: {exc}", file=sys.stderr)
        return 128 + exc.signum
    loads, report, files = demo.loads, demo.report, demo.files
    if demo.interrupted is not None:
        print(f"demo: interrupted by {signal.Signals(demo.interrupted).name}: "
              "the report covers what was collected until then", file=sys.stderr)
    if args.json:
        print(json.dumps({"report": asdict(report) if report else None,
                          "files": {k: str(v) for k, v in files._asdict().items()} if files else {}},
                         indent=2, default=str))
        return 0 if demo.interrupted is None else 128 + demo.interrupted
    print("load from the client (h2load):")
    for result in loads:
        s = result.summary
        print(f"  {type(result).__name__:<24} {s.done} requests, {s.succeeded} succeeded, {s.requests_per_s:.0f} req/s")
    if demo.interrupted is not None and len(loads) < (2 if args.keepalive[0] else 1):
        print("  (interrupted: a load did not finish, h2load's summary is missing)")
    print("copy, from the servers' access logs and the copier's counters:")
    print(report.render() if report else "  nothing: the copy had not started")
    if files:
        print("report files:")
        for path in (p for p in files if p is not None):
            print(f"  {path.resolve()}")
        if files.png is None:
            print(f"  ({PICTURE_HINT})")
    return _exit_code(demo)


def _exit_code(demo: DemoRun) -> int:
    if demo.interrupted is not None:
        return 128 + demo.interrupted
    return 0 if demo.report is not None and demo.report.loss_ratio == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
