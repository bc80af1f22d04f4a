"""What every tcpcopy command does the same way: its argument parser's error style, flags
kept from the C tool that no longer apply, logging, daemonizing, pid files, the version."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from importlib import metadata

from tcpcopy.cluster import wire
from tcpcopy.cluster.config import ConfigError
from tcpcopy.cluster.shard import parse_shard

log = logging.getLogger("tcpcopy")


class CommandParser(argparse.ArgumentParser):
    """One line naming the flag and the fix, exit 2 (argparse would add the whole usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} -h for help)\n")


def add_not_applicable(parser: argparse.ArgumentParser, flags: dict) -> None:
    """C flags with no meaning here, ``{flag: (metavar or None, fatal, why)}``: a fatal one
    stops with its explanation; the others are noted in ``args.notes`` and ignored, so
    existing scripts keep working."""

    class NotApplicable(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            _metavar, fatal, why = flags[option_string]
            if fatal:
                parser.error(f"{option_string} {why}")
            namespace.notes = [*namespace.notes, f"{option_string} ignored: {why}"]

    parser.set_defaults(notes=[])
    for flag, (metavar, _fatal, why) in flags.items():
        if metavar is None:
            extra = {"nargs": 0}
        elif metavar.startswith("["):
            extra = {"nargs": "?", "metavar": metavar.strip("[]")}
        else:
            extra = {"nargs": None, "metavar": metavar}
        parser.add_argument(flag, action=NotApplicable, dest="c_flag_" + flag.lstrip("-"),
                            help=f"(C flag) {why}", **extra)


def version_text(command: str) -> str:
    try:
        version = metadata.version("tcpcopy")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return f"{command} {version} (tcpcopy in Python, message format {wire.FORMAT_VERSION})"


class JsonLines(logging.Formatter):
    """One JSON object per line, for machines (``--log-format json``)."""

    def __init__(self, command: str):
        super().__init__()
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": round(record.created, 6), "command": self.command,
                           "pid": record.process, "level": record.levelname.lower(),
                           "message": record.getMessage()}, ensure_ascii=False)


def setup_logging(command: str, path: str | None, log_format: str = "text") -> None:
    """Log lines to ``path`` (stderr when None): text for people, or JSON lines."""
    handler = logging.FileHandler(path) if path else logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines(command) if log_format == "json" else logging.Formatter(
        f"%(asctime)s {command}[%(process)d] %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def daemonize() -> None:
    """Detach from the terminal (the classic double fork); stdio goes to /dev/null."""
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def write_pid_file(path: str | None) -> None:
    if path:
        with open(path, "w") as out:
            out.write(f"{os.getpid()}\n")


def remove_pid_file(path: str | None) -> None:
    """Remove the pid file if it is still ours (a newer process may have replaced it)."""
    if not path:
        return
    try:
        with open(path) as pid_in:
            if pid_in.read().strip() == str(os.getpid()):
                os.remove(path)
    except OSError:
        pass


def add_log_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="log lines for people (text, the default) or one JSON object per line")


def absolute_paths(args: argparse.Namespace, *names: str) -> None:
    """-l and -P paths made absolute before a daemon changes directory to /."""
    for name in names:
        path = getattr(args, name)
        if path is not None:
            setattr(args, name, os.path.abspath(path))


def start_command(command: str, args: argparse.Namespace) -> int | None:
    """Logging (-l), the notes about ignored C flags, daemonizing (-d) and the pid file (-P),
    in that order; an exit status when one of them fails, else None."""
    try:
        setup_logging(command, args.log_file, getattr(args, "log_format", "text"))
    except OSError as exc:
        print(f"{command}: error: -l {args.log_file}: cannot open the log file: {exc.strerror}",
              file=sys.stderr)
        return 2
    for note in args.notes:
        log.warning("%s", note)
    if args.daemon:
        daemonize()
    try:
        write_pid_file(args.pid_file)
    except OSError as exc:
        log.error("-P %s: cannot write the pid file: %s", args.pid_file, exc.strerror)
        return 2
    return None


def resolve_shard(parser: argparse.ArgumentParser, args: argparse.Namespace, from_config) -> None:
    """``--shard K/N`` on its own, or ``--config FILE --shard K`` where ``from_config(args)``
    fills the rest from the cluster config; a bad value stops with parser.error."""
    try:
        if args.config:
            from_config(args)
        else:
            args.shard = parse_shard(args.shard)
    except (ValueError, ConfigError) as exc:
        parser.error(str(exc))


def shard_of(text: str, count: int, what: str) -> tuple[int, int]:
    """With --config, --shard is just this process's number among ``count``."""
    if not text.isdigit():
        raise ValueError(f"--shard {text}: with --config give the {what} number, e.g. --shard 0")
    return parse_shard(f"{text}/{count}")
