"""The ``tcpcopy-cluster`` command: run a host's share of a tcpcopy cluster under supervisord.

    tcpcopy-cluster render  CONFIG --role online|assistant [--python PATH]
    tcpcopy-cluster start   CONFIG --role online|assistant
    tcpcopy-cluster status  CONFIG --role online|assistant [--json]
    tcpcopy-cluster restart CONFIG --role online|assistant NAME
    tcpcopy-cluster stop    CONFIG --role online|assistant
    tcpcopy-cluster top     CONFIG [--once [--json]]

CONFIG is the cluster config (deploy/cluster-sample.toml explains every key); the online host
runs the session owners and capture workers, the assistant host the intercepts. Exit status:
0 done (for status: every process RUNNING), 1 status found a process not RUNNING, 2 a fault,
told in one line with its fix.
"""

from __future__ import annotations

import argparse
import json
import sys

from tcpcopy.cluster import supervisor
from tcpcopy.cluster.config import HOST_ROLES, ConfigError, load_config
from tcpcopy.cluster.process import CommandParser, version_text
from tcpcopy.cluster.top import run_top

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
             "stop": "stop every process of the role and supervisord"}
    for name, text in helps.items():
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("config", metavar="CONFIG", help="the cluster config (TOML)")
        action.add_argument("--role", required=True, choices=HOST_ROLES, help="which host this is")
    actions.choices["render"].add_argument("--python", metavar="PATH",
                                           help="interpreter named in the commands (default: this one)")
    actions.choices["status"].add_argument("--json", action="store_true", help="print JSON instead of a table")
    actions.choices["restart"].add_argument("name", metavar="NAME", help="e.g. capture-1, capture:capture-1, owner")
    top = actions.add_parser("top", help="live view of every process of the cluster (stats.endpoint)",
                             description="Bind [stats] endpoint and show every publishing process: CPU, "
                                         "memory, rates, sessions and the copier's loss estimate.")
    top.add_argument("config", metavar="CONFIG", help="the cluster config (TOML)")
    top.add_argument("--once", action="store_true", help="collect for a moment, print one frame, exit")
    top.add_argument("--json", action="store_true", help="with --once: print the snapshot as JSON")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        return ACTIONS[args.action](config, args)
    except (ConfigError, supervisor.ClusterError) as exc:
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


def _start(config, args) -> int:
    pid = supervisor.start(config, args.role)
    print(f"supervisord (pid {pid}) runs the {args.role} role from {supervisor.conf_path(config, args.role)}; "
          f"see `tcpcopy-cluster status {args.config} --role {args.role}`")
    return 0


def _stop(config, args) -> int:
    pid = supervisor.stop(config, args.role)
    print(f"the {args.role} role was not running" if pid is None
          else f"stopped supervisord (pid {pid}) and every process of the {args.role} role")
    return 0


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
    return run_top(config.stats.endpoint, once=args.once, json_out=args.json)


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
           "top": _top}


if __name__ == "__main__":
    sys.exit(main())
