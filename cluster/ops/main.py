"""The ``tcpcopy-cluster`` command: run a host's share of a tcpcopy cluster under supervisord.

    tcpcopy-cluster render  CONFIG --role online|assistant [--python PATH]
    tcpcopy-cluster start   CONFIG --role online|assistant
    tcpcopy-cluster status  CONFIG --role online|assistant [--json]
    tcpcopy-cluster restart CONFIG --role online|assistant NAME
    tcpcopy-cluster stop    CONFIG --role online|assistant
    tcpcopy-cluster top     CONFIG [--once [--json]]
    tcpcopy-cluster compare CONFIG [--json]
    tcpcopy-cluster keygen  DIR [--client NAME]... [--force]

CONFIG is the cluster config (deploy/cluster-sample.toml explains every key); the online host
runs the session owners and capture workers, the assistant host the intercepts. With
``[compare]``, ``stop --role online`` ends the run with the comparison's totals over every
owner and checks ``[compare] fail_on``; ``compare`` does the same while the cluster runs.
Exit status: 0 done (for status: every process RUNNING), 1 status found a process not
RUNNING, 2 a fault, told in one line with its fix, 3 a ``fail_on`` threshold was crossed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from tcpcopy.cluster.ops import supervisor
from tcpcopy.cluster.config import HOST_ROLES, ClusterConfig, ConfigError, load_config
from tcpcopy.cluster.curve import DEFAULT_CLIENT, KeyFileError, KeyLayout, keygen
from tcpcopy.cluster.ops.hub import consumer_keys
from tcpcopy.cluster.process import CommandParser, version_text
from tcpcopy.cluster.ops.aggregator import Aggregator
from tcpcopy.cluster.ops.top import run_top
from tcpcopy.session import comparefiles
from tcpcopy.session.compare import SAME

GATE_FAILED = 3

EXAMPLE = "tcpcopy-cluster start /etc/tcpcopy/cluster.toml --role online"


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="tcpcopy-cluster", epilog=f"Example: {EXAMPLE}",
                           description="Run this host's share of a tcpcopy cluster under supervisord: "
                                       "session owners and capture workers (online), or intercepts (assistant).")
    parser.add_argument("-v", "--version", action="version", version=version_text("tcpcopy-cluster"), help="print the version and exit")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    helps = {"render": "print the supervisord.conf of the role",
             "start": "render it into supervisor.dir/ROLE/ and launch supervisord",
             "status": "list every process of the role: state, pid, uptime",
             "restart": "restart one process (capture-1) or every process of a program (capture)",
             "stop": "stop every process of the role and supervisord; online, with [compare]: print the "
                     "comparison's totals and exit 3 past [compare] fail_on"}
    for name, text in helps.items():
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("config", metavar="CONFIG", help="the cluster config (TOML)")
        action.add_argument("--role", required=True, choices=HOST_ROLES, help="which host this is")
    actions.choices["render"].add_argument("--python", metavar="PATH",
                                           help="interpreter named in the commands (default: this one)")
    actions.choices["status"].add_argument("--json", action="store_true", help="print JSON instead of a table")
    actions.choices["restart"].add_argument("name", metavar="NAME", help="e.g. capture-1, capture:capture-1, owner")
    top = actions.add_parser("top", help="live view of every process of the cluster (the stats hub's feed)",
                             description="Read the feed of the stats hub that the online host runs "
                                         "([stats] feed) and show every publishing process: CPU, "
                                         "memory, rates, sessions and the copier's loss estimate.")
    top.add_argument("config", metavar="CONFIG", help="the cluster config (TOML)")
    top.add_argument("--once", action="store_true", help="collect for a moment, print one frame, exit")
    top.add_argument("--json", action="store_true", help="with --once: print the snapshot as JSON")
    compare = actions.add_parser("compare", help="the answer comparison of the run so far, over every owner",
                                 description="Add up what every owner of this host wrote into the comparison "
                                             "directory ([compare] log_dir): requests compared, the verdicts "
                                             "and their shares; with [compare] fail_on, exit 3 when a "
                                             "threshold is crossed. `stop --role online` does it at the end.")
    compare.add_argument("config", metavar="CONFIG", help="the cluster config (TOML)")
    compare.add_argument("--json", action="store_true", help="print the totals as JSON")
    keys = actions.add_parser("keygen", help="make the CurveZMQ key pairs of a cluster in DIR",
                              description="Make the CurveZMQ key pairs and allowed-keys directories in DIR "
                                          "(0700; secret keys 0600): intercept.key* (assistant host), "
                                          f"{DEFAULT_CLIENT}.key* (online host), stats.key* (where top or "
                                          "metrics runs), allowed-owners/ and allowed-publishers/. "
                                          "Existing keys are kept; a client that exists is refused "
                                          "without --force.")
    keys.add_argument("directory", metavar="DIR", help="where to write them, e.g. /etc/tcpcopy/keys")
    keys.add_argument("--client", action="append", metavar="NAME",
                      help=f"a client key pair to make and admit (repeat; default {DEFAULT_CLIENT}): "
                           "one per online host")
    keys.add_argument("--force", action="store_true",
                      help="replace every key pair named (each host then needs its new files)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.action == "keygen":
            return _keygen(args)
        config = load_config(args.config)
        comparefiles.check(config)
        return ACTIONS[args.action](config, args)
    except (ConfigError, supervisor.ClusterError, KeyFileError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{exc.filename or args.config}: {exc.strerror}: check the path and its permissions")
    except KeyboardInterrupt:
        return _fail("interrupted: run the same command again, or `status` to see where it stopped")


def _fail(message: str) -> int:
    print(f"tcpcopy-cluster: error: {message}", file=sys.stderr)
    return 2


def _render(config, args) -> int:
    sys.stdout.write(supervisor.render(config, args.role, python=args.python))
    return 0


def _keygen(args) -> int:
    for line in keygen(args.directory, tuple(args.client or (DEFAULT_CLIENT,)), force=args.force):
        print(line)
    layout = KeyLayout(args.directory.rstrip("/") or "/")
    print(f"the assistant host needs {layout.secret('intercept')} and {layout.allowed_owners}/; each online "
          f"host its NAME.key_secret and {layout.public('intercept')}; with [stats], the publishers "
          f"{layout.public('stats')} and the listener {layout.secret('stats')} and {layout.allowed_publishers}/")
    return 0


def prepare_keys(config: ClusterConfig, host_role: str) -> list[str]:
    """With [security] curve = true, the keys this role's processes will read: made in
    keys_dir when that directory does not exist yet, then checked; what was done, said."""
    if not config.security.curve:
        return ["[security] curve = false: the control and stats channels run without keys "
                "(every process warns once)"]
    directory, said = config.security.keys_dir, []
    if not os.path.exists(directory):
        keygen(directory)
        said.append(f"made CurveZMQ keys in {directory} (there were none): a cluster on two hosts needs the "
                    "same keys on both: copy that directory to the other host before starting it there")
    layout = KeyLayout(directory)
    stats = bool(config.stats.endpoint)
    if host_role == "online":
        layout.owner_keys()
        if stats:
            layout.publisher_keys(DEFAULT_CLIENT)
    else:
        layout.intercept_keys()
        if stats:
            layout.publisher_keys("intercept")
    return said


def _start(config, args) -> int:
    supervisor.supervisord_binary()      # missing: said before any key is made
    for line in prepare_keys(config, args.role):
        print(line)
    if args.role == "online" and config.compare.enabled:
        moved = comparefiles.start_run(config.compare_dir())
        if moved:
            print(f"the comparison files of the run before ({moved}) are now in "
                  f"{config.compare_dir()}/{comparefiles.PREVIOUS}/")
    pid = supervisor.start(config, args.role)
    print(f"supervisord (pid {pid}) runs the {args.role} role from {supervisor.conf_path(config, args.role)}; "
          f"see `tcpcopy-cluster status {args.config} --role {args.role}`")
    return 0


def _stop(config, args) -> int:
    pid = supervisor.stop(config, args.role)
    print(f"the {args.role} role was not running" if pid is None
          else f"stopped supervisord (pid {pid}) and every process of the {args.role} role")
    if pid is None or args.role != "online" or not config.compare.enabled:
        return 0
    if not comparefiles.read_summaries(config.compare_dir()) and not config.compare.fail_on:
        print(f"no owner wrote a comparison summary into {config.compare_dir()}: nothing was compared")
        return 0
    return _report_comparison(config, json_out=False)


def _compare(config, args) -> int:
    if not config.compare.enabled:
        return _fail(f"{args.config}: [compare] percent is 0: nothing is compared; set e.g. "
                     "[compare] percent = 10 and start the cluster again")
    return _report_comparison(config, json_out=args.json)


def _report_comparison(config: ClusterConfig, json_out: bool) -> int:
    """The run's comparison over every owner process's summary, and the gate."""
    directory = config.compare_dir()
    summaries = comparefiles.read_summaries(directory)
    if not summaries:
        return _fail(f"no owner has written a comparison summary into {directory} yet: the owners write one "
                     f"every {comparefiles.SUMMARY_EVERY:g} s (see `tcpcopy-cluster status {config.path} "
                     "--role online`)")
    run = comparefiles.totals(summaries)
    thresholds = comparefiles.fail_on(config)
    result = comparefiles.gate(thresholds, run) if thresholds else None
    if json_out:
        gate = None if result is None else {"passed": result.passed, "text": result.describe(),
                                            "values": dict(result.values)}
        print(json.dumps({**run, "directory": directory, "gate": gate}, indent=2, sort_keys=True))
    else:
        print(comparison_text(run, directory))
        if result is not None:
            print(f"fail_on {config.compare.fail_on}: "
                  f"{'no threshold crossed' if result.passed else result.describe()}")
    return GATE_FAILED if result is not None and not result.passed else 0


def comparison_text(run: dict, directory: str) -> str:
    """The totals, a line per owner process, and where the differences are."""
    shares = ", ".join(f"{verdict} {share:.2%}" for verdict, share in run["shares"].items() if share)
    lines = [f"compared: {comparefiles.totals_line(run)}",
             f"  shares: {shares or 'none (nothing compared)'}; sessions dropped or shed "
             f"{run['sessions']['dropped']} of {run['sessions']['started']} (loss {run['loss']:.2e})"]
    for row in run["owners"]:
        differ = {verdict: n for verdict, n in row["counts"].items() if n and verdict != SAME}
        lines.append(f"  owner {row['owner']} (pid {row['pid']}{'' if row['final'] else ', still running or killed'}): "
                     f"{row['compared']} compared, differing {differ or 'none'}")
    lines.append(f"  differing requests: {directory}/owner-N.differences.jsonl")
    return "\n".join(lines)


def _status(config, args) -> int:
    rows = supervisor.status(config, args.role)
    if args.json:
        print(json.dumps([row.as_dict() for row in rows], indent=2))
    else:
        print(format_table(rows))
    return 0 if rows and all(row.state == "RUNNING" for row in rows) else 1


def _top(config, args) -> int:
    if not config.stats.endpoint:
        return _fail(f"{args.config}: [stats] endpoint is not set: add e.g. "
                     '[stats] endpoint = "tcp://198.18.2.2:36600" so every process publishes there')
    if args.json and not args.once:
        return _fail("--json goes with --once (the live view is for people)")
    keys = consumer_keys(KeyLayout(config.security.keys_dir).secret("stats")) if config.security.curve else None
    feed = config.stats_feed()
    aggregator = Aggregator(feed, hub=True, hub_keys=keys)
    return run_top(feed, once=args.once, json_out=args.json, aggregator=aggregator)


def _restart(config, args) -> int:
    names = supervisor.restart_program(config, args.role, args.name)
    print("restarted " + ", ".join(names))
    return 0


def format_table(rows: list[supervisor.ProgramStatus]) -> str:
    lines = [("NAME", "STATE", "PID", "UPTIME", "")]
    for row in rows:
        note = "" if row.state == "RUNNING" else row.description
        lines.append((row.name, row.state, str(row.pid or "-"), _duration(row.uptime) if row.pid else "-", note))
    widths = [max(len(line[i]) for line in lines) for i in range(4)] + [0]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def _duration(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


ACTIONS = {"render": _render, "start": _start, "status": _status, "restart": _restart, "stop": _stop,
           "top": _top, "compare": _compare}


if __name__ == "__main__":
    sys.exit(main())
