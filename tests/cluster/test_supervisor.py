"""The supervisord.conf rendered for each host role, and a real supervisord running it.

The rendered text is parsed back with configparser: every process gets its shard through
%(process_num)d, owners start before capture workers. The real test runs supervisord on
harmless stand-ins in a temporary directory (no network, no root): it starts them, restarts
one that is killed, and leaves no process behind when stopped.
"""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from tcpcopy.cluster.ops import supervisor
from tcpcopy.cluster.config import load_config
from tcpcopy.cluster.ops.supervisor import ClusterError, pid_alive

SAMPLE_CONF = Path(__file__).resolve().parents[2] / "deploy" / "cluster-sample.supervisord.conf"

CONFIG = """
[copy]
mappings = ["80-198.18.0.2:8080"]
intercepts = ["198.18.2.1:36524", "198.18.2.1:36525", "198.18.2.1:36526"]

[capture]
workers = 3
interface = "lo"

[owners]
count = 2
run_dir = "run"

[intercept]
interface = "lo"

[supervisor]
dir = "sv"
"""


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "cluster.toml"
    path.write_text(CONFIG)
    return load_config(path)


def parsed(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"))
    parser.read_string(text)
    return parser


# ------------------------------------------------------------------------------ render

def test_online_role_runs_owners_then_capture_workers(config):
    conf = parsed(supervisor.render(config, "online"))
    owner, capture = conf["program:owner"], conf["program:capture"]
    assert [s for s in conf.sections() if s.startswith("program:")] == ["program:owner", "program:capture"]
    assert (owner["numprocs"], capture["numprocs"]) == ("2", "3")
    assert owner["process_name"] == "owner-%(process_num)d"
    assert capture["process_name"] == "capture-%(process_num)d"
    assert int(owner["priority"]) < int(capture["priority"])   # owners up first, down last


def test_commands_read_the_config_and_carry_the_shard(config):
    conf = parsed(supervisor.render(config, "online"))
    for program, module in (("owner", "tcpcopy.session.owner"), ("capture", "tcpcopy.capture.worker")):
        assert shlex.split(conf[f"program:{program}"]["command"]) == [
            sys.executable, "-m", module, "--config", config.path, "--shard", "%(process_num)d"]


def test_assistant_role_runs_one_intercept_per_shard(config):
    conf = parsed(supervisor.render(config, "assistant", "/etc/tcpcopy/cluster.toml", python="python3"))
    assert [s for s in conf.sections() if s.startswith("program:")] == ["program:intercept"]
    intercept = conf["program:intercept"]
    assert intercept["numprocs"] == "3"
    assert intercept["process_name"] == "intercept-%(process_num)d"
    assert intercept["command"] == ("python3 -m tcpcopy.intercept.main --config /etc/tcpcopy/cluster.toml "
                                    "--shard %(process_num)d")


@pytest.mark.parametrize("role", ["online", "assistant"])
def test_every_program_is_supervised_the_same_way(config, role):
    conf = parsed(supervisor.render(config, role))
    directory = config.role_dir(role)
    for section in (s for s in conf.sections() if s.startswith("program:")):
        program = conf[section]
        name = section.partition(":")[2]
        assert {k: program[k] for k in ("autorestart", "startsecs", "stopsignal", "stopwaitsecs", "killasgroup")} == {
            "autorestart": "true", "startsecs": "1", "stopsignal": "INT", "stopwaitsecs": "10", "killasgroup": "true"}
        assert program["stdout_logfile"] == f"{directory}/{name}-%(process_num)d.out.log"
        assert program["stderr_logfile"] == f"{directory}/{name}-%(process_num)d.err.log"


@pytest.mark.parametrize("role", ["online", "assistant"])
def test_supervisord_keeps_its_files_in_the_role_directory(config, role):
    conf = parsed(supervisor.render(config, role))
    directory = f"{config.supervisor.dir}/{role}"
    assert conf["unix_http_server"]["file"] == f"{directory}/supervisor.sock"
    assert conf["supervisord"]["pidfile"] == f"{directory}/supervisord.pid"
    assert conf["supervisord"]["logfile"] == f"{directory}/supervisord.log"
    assert conf["supervisord"]["nodaemon"] == "false"
    assert conf["supervisorctl"]["serverurl"] == f"unix://{directory}/supervisor.sock"
    assert "supervisor.rpcinterface_factory" in conf["rpcinterface:supervisor"]


def test_percent_in_a_path_is_escaped_for_supervisord(config):
    text = supervisor.render(config, "assistant", "/etc/tcp%copy/cluster.toml")
    assert "--config /etc/tcp%%copy/cluster.toml" in text


def test_a_path_supervisord_would_cut_is_refused(config):
    with pytest.raises(ClusterError, match="without them"):
        supervisor.render(config, "online", "/etc/tcpcopy ;old/cluster.toml")


def test_a_stand_in_command_must_still_carry_the_shard(config):
    with pytest.raises(ClusterError, match="process_num"):
        supervisor.render(config, "assistant", commands={"intercept": "sleep 60"})


def test_unknown_role_is_refused(config):
    with pytest.raises(ClusterError, match="online, assistant"):
        supervisor.render(config, "target")


def test_with_stats_the_online_host_runs_the_hub_first_and_the_exporter_last(tmp_path):
    path = tmp_path / "cluster.toml"
    path.write_text(CONFIG + '\n[stats]\nendpoint = "tcp://198.18.2.2:36600"\n')
    conf = parsed(supervisor.render(load_config(path), "online"))
    programs = [s for s in conf.sections() if s.startswith("program:")]
    assert programs == ["program:stats-hub", "program:owner", "program:capture", "program:metrics"]
    priorities = [int(conf[p]["priority"]) for p in programs]
    assert priorities == sorted(priorities)          # up first, down last: nothing publishes into nothing
    for program, module in (("stats-hub", "tcpcopy.cluster.ops.hub"), ("metrics", "tcpcopy.cluster.ops.metrics")):
        section = conf[f"program:{program}"]
        assert section["numprocs"] == "1"
        assert shlex.split(section["command"]) == [sys.executable, "-m", module, "--config", str(path)]
    path.write_text(CONFIG + '\n[stats]\nendpoint = "tcp://198.18.2.2:36600"\nmetrics = ""\n')
    assert "program:metrics" not in parsed(supervisor.render(load_config(path), "online")).sections()


def test_committed_example_is_a_fresh_render():
    assert SAMPLE_CONF.read_text() == supervisor.sample_text(), (
        "deploy/cluster-sample.supervisord.conf is stale: regenerate it with "
        "`.venv/bin/python -m tcpcopy.cluster.ops.supervisor > deploy/cluster-sample.supervisord.conf`")


# ----------------------------------------------------------------- a real supervisord

def stand_in(role: str) -> str:
    """A process that only sleeps, with its program and shard in argv."""
    code = "import time;time.sleep(60)"
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)} {role} %(process_num)d"


STAND_INS = {name: stand_in(name) for name in ("owner", "capture", "intercept")}


@pytest.fixture
def running(config):
    if shutil.which("supervisord") is None:
        pytest.skip("supervisord is missing: apt-get install supervisor (deploy/install-deps.sh)")
    pid = supervisor.start(config, "online", commands=STAND_INS)
    try:
        yield pid
    finally:
        try:
            supervisor.stop(config, "online")
        finally:
            end_supervisord(pid)


def end_supervisord(pid: int) -> None:
    """After a failed stop: SIGTERM (supervisord stops its programs), then SIGKILL."""
    for signum, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 0.0)):
        if not pid_alive(pid):
            return
        os.kill(pid, signum)
        deadline = time.monotonic() + grace
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def wait_all_running(config, count: int, timeout: float = 8.0, gone: int | None = None) -> list[supervisor.ProgramStatus]:
    """Every process RUNNING (and none of them still the process ``gone``)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = supervisor.status(config, "online")
        if len(rows) == count and all(row.state == "RUNNING" and row.pid != gone for row in rows):
            return rows
        assert time.monotonic() < deadline, f"not all RUNNING after {timeout} s: {rows}"
        time.sleep(0.1)


def argv_of(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def test_supervisord_runs_restarts_and_stops_every_shard(config, running):
    rows = wait_all_running(config, 5)
    assert sorted(row.name for row in rows) == [
        "capture:capture-0", "capture:capture-1", "capture:capture-2", "owner:owner-0", "owner:owner-1"]
    pids = {row.name: row.pid for row in rows}
    assert len(set(pids.values())) == 5
    for name, pid in pids.items():   # each process was told its own shard
        program, _, process = name.partition(":")
        assert argv_of(pid)[-2:] == [program, process.rpartition("-")[2]]

    os.kill(pids["capture:capture-1"], signal.SIGKILL)
    rows = wait_all_running(config, 5, gone=pids["capture:capture-1"])
    restarted = {row.name: row.pid for row in rows}
    assert restarted["capture:capture-1"] != pids["capture:capture-1"]
    assert {k: v for k, v in restarted.items() if k != "capture:capture-1"} == {
        k: v for k, v in pids.items() if k != "capture:capture-1"}

    assert supervisor.stop(config, "online") == running
    assert not pid_alive(running)
    assert not [pid for pid in restarted.values() if pid_alive(pid)]
    assert supervisor.stop(config, "online") is None   # a second stop finds nothing to stop


def test_restart_program_gives_new_processes(config, running):
    before = {row.name: row.pid for row in wait_all_running(config, 5)}
    assert supervisor.restart_program(config, "online", "owner") == ["owner:owner-0", "owner:owner-1"]
    after = {row.name: row.pid for row in wait_all_running(config, 5)}
    assert after["owner:owner-0"] != before["owner:owner-0"] and after["owner:owner-1"] != before["owner:owner-1"]
    assert after["capture:capture-0"] == before["capture:capture-0"]
    with pytest.raises(ClusterError, match="no program or process 'owner-7'"):
        supervisor.restart_program(config, "online", "owner-7")


def test_a_second_start_is_refused_while_running(config, running):
    with pytest.raises(ClusterError, match="already runs"):
        supervisor.start(config, "online", commands=STAND_INS)


def test_status_without_supervisord_says_how_to_start_it(config):
    with pytest.raises(ClusterError, match="tcpcopy-cluster start .* --role assistant"):
        supervisor.status(config, "assistant")


def test_start_refuses_an_interface_this_host_lacks(tmp_path):
    path = tmp_path / "cluster.toml"
    path.write_text(CONFIG.replace('interface = "lo"', 'interface = "nosuch0"', 1))
    with pytest.raises(ClusterError, match=r"capture.interface: this host has no interface 'nosuch0' \(it has .*lo"):
        supervisor.start(load_config(path), "online", commands=STAND_INS)
    assert not (tmp_path / "sv").exists()
