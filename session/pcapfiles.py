"""Failed sessions' pcap files on disk (``tcpcopy --pcap-failed DIR``): the directory is
checked at start by writing a probe file, so a missing or closed directory stops the command
there; later a file that cannot be written is reported to the caller, which counts it and
copies on. ``session/failedpcap.py`` decides which files and what they hold."""

from __future__ import annotations

import argparse
import errno
import os
import pwd

from tcpcopy.session.failedpcap import MIN_FILE_BYTES, PcapFailedOptions

PROBE = ".tcpcopy-write-probe"
SAME_NAME_TRIES = 10   # name-1 ... name-9 when a file of that name exists


class PcapDirectoryError(OSError):
    """The directory cannot take the files; the message names it and the fix."""


def _who() -> str:
    uid = os.geteuid()
    try:
        return f"user {pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"uid {uid}"


class PcapDirectory:
    def __init__(self, path: str):
        """Check that this process (after any --user drop) can create files in ``path``."""
        self.path = path
        if not os.path.isdir(path):
            raise PcapDirectoryError(f"--pcap-failed {path}: no such directory: create it first "
                                     f"(mkdir -p {path})")
        probe = os.path.join(path, f"{PROBE}-{os.getpid()}")
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise PcapDirectoryError(f"--pcap-failed {path}: {_who()} cannot create files there "
                                     f"({exc.strerror or exc}): give it write access (chown or chmod), "
                                     "or name another directory") from None

    def write(self, name: str, content: bytes) -> str | None:
        """Write one file (never over an existing one); None, or what went wrong. A file
        left half written (a full disk) is removed."""
        stem, dot, ext = name.rpartition(".")
        for attempt in range(SAME_NAME_TRIES):
            candidate = name if attempt == 0 else f"{stem}-{attempt}{dot}{ext}"
            path = os.path.join(self.path, candidate)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            except OSError as exc:
                if exc.errno == errno.EEXIST:
                    continue
                return f"{path}: {exc.strerror or exc}"
            try:
                _write_all(fd, content)
            except OSError as exc:
                os.close(fd)
                _remove(path)
                return f"{path}: {exc.strerror or exc}"
            os.close(fd)
            return None
        return f"{os.path.join(self.path, name)}: {SAME_NAME_TRIES} files of that name exist already"


def _write_all(fd: int, content: bytes) -> None:
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view):]


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# ---------------------------------------------------------------------- flags


def _whole_number(low: int, high: int, example: str):
    def parse(text: str) -> int:
        if not text.isdigit() or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"{text!r}: give a whole number {low}..{high}, e.g. {example}")
        return int(text)
    return parse


def add_pcap_failed_flags(parser: argparse.ArgumentParser) -> None:
    """--pcap-failed and its bounds (tcpcopy, and a cluster's owners)."""
    defaults = PcapFailedOptions()
    parser.add_argument("--pcap-failed", metavar="DIR",
                        help="write the packets of every session that ended abnormally, or whose answers "
                             "differed (--compare), to a pcap file of its own in DIR (client packets as "
                             "captured, packets sent to the target, the target's answers), for Wireshark")
    parser.add_argument("--pcap-failed-max", type=_whole_number(1, 1_000_000, "--pcap-failed-max 100"),
                        metavar="N",
                        help=f"write at most N such files; later failed sessions are counted only "
                             f"({defaults.max_files})")
    parser.add_argument("--pcap-failed-bytes", type=_whole_number(MIN_FILE_BYTES, 1 << 30, "--pcap-failed-bytes 1048576"),
                        metavar="BYTES",
                        help="each file at most this long: a long session keeps its first packets and its "
                             f"latest ones ({defaults.max_file_bytes})")
    parser.add_argument("--pcap-failed-memory", type=_whole_number(1, 1 << 20, "--pcap-failed-memory 64"),
                        metavar="MB",
                        help="what all sessions keep together for those files; packets beyond it are "
                             f"counted, not kept ({defaults.memory_bytes >> 20})")


def pcap_failed_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> PcapFailedOptions:
    """The options of the flags, checked before anything starts (a parser error otherwise)."""
    defaults = PcapFailedOptions()
    bounds = (args.pcap_failed_max, args.pcap_failed_bytes, args.pcap_failed_memory)
    if not args.pcap_failed:
        if any(bound is not None for bound in bounds):
            parser.error("--pcap-failed-max, --pcap-failed-bytes and --pcap-failed-memory go with "
                         "--pcap-failed DIR")
        return defaults
    directory = os.path.abspath(args.pcap_failed)
    if not os.path.isdir(directory):
        parser.error(f"--pcap-failed {args.pcap_failed}: no such directory: create it first (mkdir -p "
                     f"{args.pcap_failed})")
    files, size, memory_mb = bounds
    return PcapFailedOptions(directory,
                             defaults.max_files if files is None else files,
                             defaults.max_file_bytes if size is None else size,
                             defaults.memory_bytes if memory_mb is None else memory_mb << 20)
