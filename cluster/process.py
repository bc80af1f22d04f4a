"""What every tcpcopy command does the same way: its argument parser's error style, flags
kept from the C tool that no longer apply, logging, daemonizing, pid files, the version.

The commands run as root and their -l and -P files may sit in directories other users can
write (/tmp): every file is opened here, by ``open_for_writing``, which never follows a
symbolic link, refuses what is not a plain file of this user's with one link, and creates
files 0644; the pid file is also locked, so a second process given the same -P says so and
stops. ipc:// sockets live in a ``private_directory`` (0700).

With ``--user`` a command drops to that user once its raw sockets and captures are open
(``cluster/privileges.py``): the log file is given to the user at start, so SIGHUP (which
reopens log files, ``install_log_reopen``) still works; the pid file stays root's and is
emptied at exit when the user may not remove it.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import logging
import os
import re
import signal
import stat
import sys
from importlib import metadata

from tcpcopy.cluster import wire
from tcpcopy.cluster.config import ConfigError
from tcpcopy.cluster.privileges import (PrivilegeError, RunAs, check_can_switch, describe, drop_privileges,
                                        resolve_user)
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


_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """``text`` with its control characters (newlines, ESC, ...) escaped as repr does."""
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], text)


class TextLines(logging.Formatter):
    """One line per record for people: control characters in the message are escaped, so
    no value in it (a peer's name) can forge a line or drive a terminal."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


LOG_LEVELS = ("debug", "info", "warning", "error")


def setup_logging(command: str, path: str | None, log_format: str = "text", level: str = "info",
                  owner_uid: int | None = None) -> None:
    """Log lines to ``path`` (stderr when None): text for people, or JSON lines, from
    ``level`` up. ``owner_uid``: the user the process will drop to, who gets the file, so
    it can still reopen it on SIGHUP."""
    handler = ReopenableFileHandler(path, owner_uid) if path else logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines(command) if log_format == "json" else TextLines(
        f"%(asctime)s {command}[%(process)d] %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())


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


class UnsafePath(OSError):
    """A path this process refuses to use; the text names it and the fix."""

    def __init__(self, message: str):
        super().__init__(errno.EPERM, message)

    def __str__(self) -> str:
        return self.strerror


def open_for_writing(path: str, flags: int, mode: int = 0o644, owner_uid: int | None = None) -> int:
    """A descriptor of ``path`` (created ``mode``), never through a symbolic link planted
    there (O_NOFOLLOW), and only if it is a plain file of this user's (or of ``owner_uid``,
    the user this process drops to) with one link: root must never write through another
    user's file into a third one. Raises OSError."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"{path} is a symbolic link: remove it, or name the file itself") from None
        if exc.errno == errno.ENXIO:   # a FIFO nobody reads
            raise UnsafePath(f"{path} is not a plain file: remove it, or name another file") from None
        raise
    try:
        _check_own_plain_file(os.fstat(fd), path, owner_uid)
        os.set_blocking(fd, True)   # O_NONBLOCK only kept a FIFO from stalling the open
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_own_plain_file(info: os.stat_result, path: str, owner_uid: int | None = None) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePath(f"{path} is not a plain file: remove it, or name another file")
    if info.st_uid not in (os.geteuid(), owner_uid):
        raise UnsafePath(f"{path} belongs to uid {info.st_uid}, not to this user (uid {os.geteuid()}): "
                         "remove it, or keep the file in a directory only this user can write")
    if info.st_nlink != 1:
        raise UnsafePath(f"{path} has {info.st_nlink} hard links: remove it, or name another file")


class ReopenableFileHandler(logging.StreamHandler):
    """A log file that ``reopen`` opens again by its path (after logrotate moved it)."""

    def __init__(self, path: str, owner_uid: int | None = None):
        self.path, self.owner_uid = path, owner_uid
        super().__init__(self._open())

    def _open(self):
        fd = open_for_writing(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644, self.owner_uid)
        if self.owner_uid is not None and os.geteuid() == 0:
            os.fchown(fd, self.owner_uid, -1)   # the dropped process reopens it too
        return os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace")

    def reopen(self) -> None:
        """Write to the file now at the path; on failure keep the open one (and say so)."""
        try:
            stream = self._open()
        except OSError as exc:
            log.error("SIGHUP: cannot reopen the log file %s (%s): still writing to the one open before",
                      self.path, exc)
            return
        old = self.setStream(stream)
        if old is not None:
            old.close()
        log.info("SIGHUP: log file %s reopened", self.path)


_reopen_requested = False


def install_log_reopen() -> None:
    """SIGHUP asks for the log files to be reopened (log rotation), never stops the
    process; the loop calls ``reopen_logs_if_asked`` where writing is safe."""
    def on_hangup(_signum, _frame):
        global _reopen_requested
        _reopen_requested = True

    signal.signal(signal.SIGHUP, on_hangup)


def reopen_logs_if_asked() -> None:
    """Reopen every log file once SIGHUP asked for it (stderr has nothing to reopen)."""
    global _reopen_requested
    if not _reopen_requested:
        return
    _reopen_requested = False
    for handler in logging.getLogger().handlers:
        if isinstance(handler, ReopenableFileHandler):
            handler.reopen()


def private_directory(path: str, run_as: RunAs | None = None) -> None:
    """Create ``path`` (with its parents) for ipc:// sockets, or take the one there: a real
    directory of this user's, left mode 0700 whatever the umask, so no other user can
    connect to the sockets in it. With ``run_as`` (--user) it is that user's instead, so
    the processes still bind and reach their sockets after the drop. Raises OSError naming
    the fault and the fix."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePath(f"{path} is not a directory (a symbolic link?): remove it, or choose another")
    owners = (os.geteuid(),) if run_as is None else (os.geteuid(), run_as.uid)
    if info.st_uid not in owners:
        raise UnsafePath(f"{path} belongs to uid {info.st_uid}, not to this user: remove it, or choose "
                         "another directory")
    if run_as is not None and os.geteuid() == 0 and (info.st_uid, info.st_gid) != (run_as.uid, run_as.gid):
        os.chown(path, run_as.uid, run_as.gid, follow_symlinks=False)
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)


class PidFileBusy(OSError):
    """Another process holds the pid file's lock."""

    def __str__(self) -> str:
        return self.strerror


_pid_files: dict[str, int] = {}   # path -> descriptor holding its lock, for the process's life


def lock_pid_file(path: str | None) -> None:
    """Open and lock ``path`` (-P) before anything is written, so two processes never share
    one; raises PidFileBusy naming the holder. The lock lives as long as the process (a
    daemon's fork shares it)."""
    if not path or path in _pid_files:
        return
    fd = open_for_writing(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        who = f"pid {holder}" if holder.isdigit() else "another process"
        raise PidFileBusy(errno.EEXIST, f"-P {path}: {who} holds this pid file (is another instance "
                                        "running?): stop it first, or give this one another -P") from None
    _pid_files[path] = fd


def write_pid_file(path: str | None) -> None:
    """Lock ``path`` (unless done) and write this process's pid into it."""
    if not path:
        return
    lock_pid_file(path)
    fd = _pid_files[path]
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def remove_pid_file(path: str | None) -> None:
    """Remove the pid file this process locked, if the path still names it (someone may
    have removed it and another process made a new one), and release the lock."""
    fd = _pid_files.pop(path, None) if path else None
    if fd is None:
        return
    try:
        here, ours = os.stat(path, follow_symlinks=False), os.fstat(fd)
        if (here.st_dev, here.st_ino) == (ours.st_dev, ours.st_ino):
            os.unlink(path)
    except PermissionError:
        os.ftruncate(fd, 0)   # dropped to --user, which may not write the directory: emptied
    except OSError:
        pass
    finally:
        os.close(fd)


def add_log_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="log lines for people (text, the default) or one JSON object per line")
    add_log_level(parser)


def add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info", type=str.lower,
                        help="log lines of this level and above (info)")


def add_user(parser: argparse.ArgumentParser) -> None:
    """--user NAME: resolved at parse time, so a user that does not exist stops the command
    with exit 2 before anything is opened."""
    def user(text: str) -> RunAs:
        try:
            run_as = resolve_user(text)
            check_can_switch(run_as)
        except PrivilegeError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("--user ")) from None
        return run_as

    parser.add_argument("--user", type=user, metavar="NAME",
                        help="after opening the raw sockets and captures, run as this unprivileged user "
                             "with CAP_NET_RAW only (log and output files are given to it)")


def user_from_config(name: str) -> RunAs | None:
    """The config's supervisor.user (None when empty); ValueError naming the fault."""
    if not name:
        return None
    try:
        run_as = resolve_user(name, "supervisor.user")
        check_can_switch(run_as, "supervisor.user")
    except PrivilegeError as exc:
        raise ValueError(str(exc)) from None
    return run_as


def drop_to(run_as: RunAs | None) -> None:
    """Drop to ``run_as`` (nothing when None) and log what the process now runs as; raises
    PrivilegeError."""
    if run_as is None:
        return
    log.info("%s", describe(run_as, drop_privileges(run_as)))


def absolute_paths(args: argparse.Namespace, *names: str) -> None:
    """-l and -P paths made absolute before a daemon changes directory to /."""
    for name in names:
        path = getattr(args, name)
        if path is not None:
            setattr(args, name, os.path.abspath(path))


def start_command(command: str, args: argparse.Namespace) -> int | None:
    """Logging (-l), the notes about ignored C flags, daemonizing (-d) and the pid file (-P),
    in that order; an exit status when one of them fails, else None."""
    run_as = getattr(args, "user", None)
    try:
        setup_logging(command, args.log_file, getattr(args, "log_format", "text"),
                      getattr(args, "log_level", "info"), run_as.uid if run_as else None)
    except OSError as exc:
        print(f"{command}: error: -l {args.log_file}: cannot open the log file: {exc.strerror}",
              file=sys.stderr)
        return 2
    for note in args.notes:
        log.warning("%s", note)
    try:
        lock_pid_file(args.pid_file)   # before -d, so a second instance says so on the terminal
    except PidFileBusy as exc:
        return _start_failed(command, args, str(exc))
    except OSError as exc:
        return _start_failed(command, args, f"-P {args.pid_file}: cannot write the pid file: {exc.strerror}")
    if args.daemon:
        daemonize()
    try:
        write_pid_file(args.pid_file)
    except OSError as exc:
        log.error("-P %s: cannot write the pid file: %s", args.pid_file, exc.strerror)
        return 2
    return None


def _start_failed(command: str, args: argparse.Namespace, message: str) -> int:
    """Log why the command cannot start; also on stderr when the log goes to a file."""
    log.error("%s", message)
    if args.log_file:
        print(f"{command}: error: {message}", file=sys.stderr)
    return 2


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
