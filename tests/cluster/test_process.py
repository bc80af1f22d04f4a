"""What every command does with files and log lines: -l and -P opened without following
symbolic links and only as this user's plain files, the pid file locked so a second process
with the same -P says so and stops, the ipc:// directory private, control characters in log
messages escaped."""

from __future__ import annotations

import argparse
import logging
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from tcpcopy.cluster import process
from tcpcopy.cluster.process import (PidFileBusy, UnsafePath, escape_controls, lock_pid_file, open_for_writing,
                                     private_directory, remove_pid_file, setup_logging, start_command,
                                     write_pid_file)


@pytest.fixture(autouse=True)
def no_leftovers(monkeypatch):
    """Each test has its own pid-file registry and root logger handlers."""
    monkeypatch.setattr(process, "_pid_files", {})
    root = logging.getLogger()
    handlers = list(root.handlers)
    yield
    for fd in process._pid_files.values():
        os.close(fd)
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)


@pytest.fixture
def victim(tmp_path):
    """A file another user cares about, and a symlink to it planted where -l or -P points."""
    target = tmp_path / "victim"
    target.write_text("precious\n")
    planted = tmp_path / "planted"
    planted.symlink_to(target)
    return target, planted


def args_for(tmp_path, **overrides) -> argparse.Namespace:
    values = {"log_file": None, "pid_file": str(tmp_path / "x.pid"), "daemon": False, "notes": [],
              "log_format": "text"}
    return argparse.Namespace(**{**values, **overrides})


# ---------------------------------------------------------------- symbolic links and odd files

def test_a_pid_file_that_is_a_symlink_is_refused_and_its_target_untouched(victim):
    target, planted = victim
    with pytest.raises(UnsafePath, match="symbolic link: remove it"):
        write_pid_file(str(planted))
    assert target.read_text() == "precious\n"


def test_a_log_file_that_is_a_symlink_is_refused_and_its_target_untouched(victim):
    target, planted = victim
    with pytest.raises(UnsafePath, match="symbolic link"):
        setup_logging("intercept", str(planted))
    assert target.read_text() == "precious\n"


def test_start_command_refuses_a_planted_symlink_in_one_line(tmp_path, victim, capsys):
    target, planted = victim
    assert start_command("intercept", args_for(tmp_path, log_file=str(planted))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "symbolic link" in err and "Traceback" not in err
    assert start_command("intercept", args_for(tmp_path, pid_file=str(planted))) == 2
    assert target.read_text() == "precious\n"


def test_a_fifo_a_directory_and_a_hard_link_are_refused(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UnsafePath, match="not a plain file"):
        open_for_writing(str(fifo), os.O_WRONLY | os.O_CREAT)   # no reader: must not hang
    with pytest.raises(OSError):
        open_for_writing(str(tmp_path), os.O_WRONLY | os.O_CREAT)
    original = tmp_path / "original"
    original.write_text("x")
    os.link(original, tmp_path / "second-name")
    with pytest.raises(UnsafePath, match="2 hard links"):
        open_for_writing(str(original), os.O_WRONLY)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_a_file_of_another_user_is_refused(tmp_path):
    foreign = tmp_path / "foreign.pid"
    foreign.write_text("1\n")
    os.chown(foreign, 65534, 65534)
    with pytest.raises(UnsafePath, match="belongs to uid 65534"):
        write_pid_file(str(foreign))
    assert foreign.read_text() == "1\n"


def test_new_files_are_created_0644_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        write_pid_file(str(tmp_path / "a.pid"))
        setup_logging("intercept", str(tmp_path / "a.log"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.pid").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "a.log").st_mode) == 0o644


def test_the_log_file_is_appended_to(tmp_path):
    path = tmp_path / "a.log"
    path.write_text("earlier line\n")
    setup_logging("intercept", str(path))
    logging.getLogger("tcpcopy.test").warning("now")
    logging.getLogger().handlers[-1].flush()
    lines = path.read_text().splitlines()
    assert lines[0] == "earlier line" and lines[-1].endswith("WARNING now")


# ---------------------------------------------------------------- the pid file's lock

def test_the_pid_file_holds_the_pid_and_is_removed_on_exit(tmp_path):
    path = str(tmp_path / "x.pid")
    write_pid_file(path)
    assert open(path).read() == f"{os.getpid()}\n"
    remove_pid_file(path)
    assert not os.path.exists(path)


def test_a_second_process_with_the_same_pid_file_says_who_holds_it(tmp_path):
    path = str(tmp_path / "x.pid")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from tcpcopy.cluster.process import write_pid_file
        write_pid_file({path!r})
        print("locked", flush=True)
        sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(PidFileBusy, match=f"pid {holder.pid} holds this pid file.*another -P"):
            lock_pid_file(path)
        assert open(path).read() == f"{holder.pid}\n"          # left as it was
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    lock_pid_file(path)                                        # free once the holder is gone


def test_start_command_says_another_instance_holds_the_pid_file_and_exits_2(tmp_path, capsys):
    pid_file = str(tmp_path / "x.pid")
    lock_pid_file(pid_file)
    fd = process._pid_files.pop(pid_file)                      # as if another process held it
    try:
        args = args_for(tmp_path, pid_file=pid_file, log_file=str(tmp_path / "x.log"))
        assert start_command("intercept", args) == 2
        err = capsys.readouterr().err
        assert err.startswith("intercept: error: -P ") and "holds this pid file" in err
        assert err.count("\n") == 1
    finally:
        os.close(fd)


def test_a_pid_file_replaced_by_someone_else_is_not_removed(tmp_path):
    path = tmp_path / "x.pid"
    write_pid_file(str(path))
    path.unlink()
    path.write_text("4242\n")                                  # someone else's now
    remove_pid_file(str(path))
    assert path.read_text() == "4242\n"


# ---------------------------------------------------------------- the ipc:// directory

def test_the_ipc_directory_is_made_0700_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        private_directory(str(tmp_path / "run" / "tcpcopy"))
        existing = tmp_path / "open"
        existing.mkdir(mode=0o777)
        private_directory(str(existing))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "run" / "tcpcopy").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(existing).st_mode) == 0o700


def test_an_ipc_directory_that_is_a_symlink_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "run").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePath, match="not a directory"):
        private_directory(str(tmp_path / "run"))


# ---------------------------------------------------------------- log lines

def test_control_characters_in_a_log_message_are_escaped(tmp_path):
    path = tmp_path / "a.log"
    setup_logging("intercept", str(path))
    logging.getLogger("tcpcopy.test").warning("owner %s connected", "x\n2030 intercept ERROR forged\x1b[2J")
    logging.getLogger().handlers[-1].flush()
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and "x\\n2030 intercept ERROR forged\\x1b[2J" in lines[0]


@pytest.mark.parametrize("text, escaped", [
    ("plain", "plain"), ("a\nb\r", "a\\nb\\r"), ("\x1b\x7f\x9b", "\\x1b\\x7f\\x9b"),
    ("tab\tkept", "tab\tkept"), ("\u2028", "\\u2028"), ("é", "é")])
def test_escape_controls(text, escaped):
    assert escape_controls(text) == escaped
