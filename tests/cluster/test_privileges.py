"""Least privilege: naming the user, reading credentials back, and a real drop.

The pure parts (the user lookup's errors, /proc/PID/status parsing, the checks on what a
drop left) are tested directly. The drop itself is tested in a real child process (root
only): it opens a raw socket and a log file as root, drops to ``nobody``, and the test
reads the child's /proc/PID/status from outside, as an operator would, then rotates its log
with SIGHUP. The commands' --user flag is tested for a user that does not exist.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from tcpcopy.cluster import privileges
from tcpcopy.cluster.privileges import (CAP_NET_RAW, PrivilegeError, RunAs, check_can_switch, mask, names,
                                        parse_status, problems, resolve_user)

ROOT = os.geteuid() == 0
NOBODY = pwd.getpwnam("nobody")
RUN_AS_NOBODY = RunAs("nobody", NOBODY.pw_uid, NOBODY.pw_gid)

STATUS = textwrap.dedent("""\
    Name:\tpython
    Umask:\t0022
    State:\tS (sleeping)
    Uid:\t65534\t65534\t65534\t65534
    Gid:\t65534\t65534\t65534\t65534
    Groups:\t65534 
    CapInh:\t0000000000000000
    CapPrm:\t0000000000002000
    CapEff:\t0000000000002000
    CapBnd:\t0000000000002000
    CapAmb:\t0000000000000000
    NoNewPrivs:\t1
    """)


# ------------------------------------------------------------------------ pure parts

def test_status_text_is_read_into_ids_and_capability_sets() -> None:
    creds = parse_status(STATUS)
    assert creds.uids == (65534,) * 4 and creds.gids == (65534,) * 4 and creds.groups == (65534,)
    assert creds.effective == creds.permitted == creds.bounding == 1 << CAP_NET_RAW
    assert creds.inheritable == creds.ambient == 0 and creds.no_new_privs


def test_a_clean_drop_has_no_problems_and_each_leftover_is_named() -> None:
    keep = mask([CAP_NET_RAW])
    assert problems(parse_status(STATUS), RUN_AS_NOBODY, keep) == []
    root_left = STATUS.replace("Uid:\t65534\t65534\t65534", "Uid:\t65534\t0\t65534").replace(
        "CapEff:\t0000000000002000", "CapEff:\t0000000000002400")
    found = problems(parse_status(root_left), RUN_AS_NOBODY, keep)
    assert found == ["uids (65534, 0, 65534, 65534), not 65534",
                     "effective capabilities CAP_NET_BIND_SERVICE beyond CAP_NET_RAW"]


def test_capability_bits_read_as_names() -> None:
    assert names(mask([CAP_NET_RAW])) == "CAP_NET_RAW"
    assert names(0) == "none"
    assert names(1 << 21) == "cap21"


def test_status_text_of_something_else_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="/proc/PID/status"):
        parse_status("Name:\tpython\n")


def test_a_user_that_does_not_exist_is_named_with_the_fix() -> None:
    with pytest.raises(PrivilegeError) as error:
        resolve_user("tcpcopy-no-such-user")
    assert "--user tcpcopy-no-such-user: no such user on this host" in str(error.value)
    assert "useradd --system" in str(error.value)


def test_root_is_refused_by_name_and_by_number() -> None:
    for text in ("root", "0"):
        with pytest.raises(PrivilegeError, match="that is root"):
            resolve_user(text)


def test_a_user_is_found_by_name_and_by_uid() -> None:
    assert resolve_user("nobody") == RUN_AS_NOBODY
    assert resolve_user(str(NOBODY.pw_uid)) == RUN_AS_NOBODY


def test_switching_to_another_user_without_root_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(PrivilegeError, match="switching to another user needs root"):
        check_can_switch(RUN_AS_NOBODY)
    check_can_switch(RunAs("self", 1000, 1000))   # already that user: only capabilities are trimmed


@pytest.mark.parametrize("command", [["tcpcopy.session.main", "-x", "80-198.18.0.2:8080", "-s", "198.18.2.1"],
                                     ["tcpcopy.intercept.main", "-F", "tcp"],
                                     ["tcpcopy.capture.worker", "--iface", "lo", "--filter", "tcp",
                                      "--owner", "ipc:///nonexistent/owner"]])
def test_every_command_refuses_a_user_that_does_not_exist_with_exit_2(command) -> None:
    done = subprocess.run([sys.executable, "-m", *command, "--user", "tcpcopy-no-such-user"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "tcpcopy-no-such-user: no such user on this host" in done.stderr
    assert "Traceback" not in done.stderr


# ------------------------------------------------------------------------ a real drop

CHILD = textwrap.dedent("""\
    import logging, os, socket, sys, threading, time
    import zmq
    from tcpcopy.cluster import process
    from tcpcopy.cluster.privileges import resolve_user

    log_path, pid_path = sys.argv[1], sys.argv[2]
    run_as = resolve_user("nobody")
    process.setup_logging("child", log_path, owner_uid=run_as.uid)
    process.install_log_reopen()
    process.write_pid_file(pid_path)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    context = zmq.Context.instance()          # ZeroMQ's threads exist before the drop
    pull = context.socket(zmq.PULL)
    process.drop_to(run_as)
    # An ICMP echo to loopback through the raw socket opened as root.
    echo = bytes([8, 0, 0xf7, 0xfe, 0, 1, 0, 0])
    header = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1])
    logging.getLogger("tcpcopy").info("sent %d bytes after the drop", raw.sendto(header + echo, ("127.0.0.1", 0)))
    try:
        open("/etc/shadow").close()
        logging.getLogger("tcpcopy").info("read /etc/shadow")
    except PermissionError:
        logging.getLogger("tcpcopy").info("/etc/shadow refused")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not os.path.exists(log_path + ".stop"):
        process.reopen_logs_if_asked()
        time.sleep(0.05)
    process.remove_pid_file(pid_path)
    logging.getLogger("tcpcopy").info("bye")
""")


@pytest.fixture
def open_dir():
    """A directory every user may traverse (pytest's own are closed to others), removed after."""
    path = Path(tempfile.mkdtemp(prefix="tcpcopy-priv-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.mark.skipif(not ROOT, reason="dropping privileges needs root")
def test_a_real_process_drops_to_nobody_keeping_only_cap_net_raw_and_still_rotates_its_log(open_dir) -> None:
    logs = open_dir / "logs"      # like /var/log/tcpcopy: a directory the user may write
    logs.mkdir()
    os.chown(logs, NOBODY.pw_uid, NOBODY.pw_gid)
    log_path, pid_path = logs / "child.log", open_dir / "child.pid"   # the pid file's directory stays root's
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(log_path), str(pid_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: "/etc/shadow" in _text(log_path)), _text(log_path) + _out(child)
        status = privileges.read_credentials(child.pid)
        assert set(status.uids) == {NOBODY.pw_uid} and set(status.gids) == {NOBODY.pw_gid}
        assert status.effective == status.permitted == status.bounding == 1 << CAP_NET_RAW
        assert status.inheritable == status.ambient == 0 and status.no_new_privs
        for task in os.listdir(f"/proc/{child.pid}/task"):   # ZeroMQ's threads too
            assert set(privileges.read_credentials(child.pid, int(task)).uids) == {NOBODY.pw_uid}
        text = _text(log_path)
        assert "running as user nobody" in text and "with capabilities CAP_NET_RAW" in text
        assert "sent 28 bytes after the drop" in text and "/etc/shadow refused" in text
        assert os.stat(log_path).st_uid == NOBODY.pw_uid

        log_path.rename(logs / "child.log.1")          # what logrotate does, then SIGHUP
        child.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "reopened" in _text(log_path)), _out(child)
        assert child.poll() is None, "SIGHUP stopped the process"
        (logs / "child.log.stop").touch()
        assert child.wait(10) == 0, _out(child)
        assert "bye" in _text(log_path) and "bye" not in _text(logs / "child.log.1")
        assert pid_path.read_text() == "", "the pid file the user may not remove is emptied"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _out(child: subprocess.Popen) -> str:
    if child.poll() is None:
        return ""
    return child.stdout.read().decode(errors="replace")


# ------------------------------------------------------------------------ the cluster

CLUSTER_TOML = """\
[copy]
mappings = ["80-198.18.0.2:8080"]
intercepts = ["198.18.2.1:36524"]
[capture]
interface = "any"
[owners]
run_dir = "run"
[intercept]
interface = "any"
[supervisor]
dir = "sv"
user = "{user}"
[security]
curve = false
"""


def cluster_config(tmp_path: Path, user: str) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(CLUSTER_TOML.format(user=user))
    return path


def test_the_cluster_config_names_a_bad_user_name_with_its_key(tmp_path) -> None:
    from tcpcopy.cluster.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="supervisor.user: 'two words' is not a user name"):
        load_config(cluster_config(tmp_path, "two words"))
    assert load_config(cluster_config(tmp_path, "tcpcopy")).supervisor.user == "tcpcopy"


def test_rendered_programs_drop_to_the_configured_user_themselves(tmp_path) -> None:
    from tcpcopy.cluster.ops import supervisor
    from tcpcopy.cluster.config import load_config
    config = load_config(cluster_config(tmp_path, "tcpcopy"))
    for role in ("online", "assistant"):
        commands = [line for line in supervisor.render(config, role).splitlines() if line.startswith("command = ")]
        assert commands and all(line.endswith(" --user tcpcopy") for line in commands)
    # A program that needs no root at all is started as the user by supervisord instead.
    plain = supervisor._program_section(supervisor.Program("exporter", 1, 300, "x", needs_root=False),
                                        "python3 -m x --shard %(process_num)d", "/run/d", "tcpcopy")
    assert "\nuser = tcpcopy\n" in plain and "--user" not in plain


def test_cluster_start_with_a_user_that_does_not_exist_stops_before_supervisord(tmp_path) -> None:
    path = cluster_config(tmp_path, "tcpcopy-no-such-user")
    done = subprocess.run([sys.executable, "-m", "tcpcopy.cluster.ops.main", "start", str(path), "--role", "online"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    assert "supervisor.user tcpcopy-no-such-user: no such user on this host" in done.stderr
    assert not (tmp_path / "sv" / "online" / "supervisord.conf").exists()
