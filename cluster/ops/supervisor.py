"""Launching a host's share of the cluster under supervisord, and controlling it.

``render`` turns the cluster config into a supervisord.conf for one host role:

- ``online``: ``owner`` (``owners.count`` session owners, priority 100) and ``capture``
  (``capture.workers`` capture workers, priority 200); with ``[stats] endpoint`` also
  ``stats-hub`` (cluster/ops/hub.py, priority 50) and, with ``[stats] metrics``, ``metrics``
  (the Prometheus exporter, priority 300), one process each, started as supervisor.user;
- ``assistant``: ``intercept`` (``intercept.count`` intercepts).

Each sharded program runs ``numprocs`` copies named ``<program>-<n>``, and copy ``n`` is started with
``--config CONFIG --shard n`` (supervisord's ``%(process_num)d``), so every process reads the
same file and knows its shard. supervisord spawns lower priorities first and stops them last:
owners are spawned before the capture workers (in the same tick: spawned, not yet bound; a
PUSH socket holds its batches until the owner binds) and outlive them on shutdown, so the
last batches are not pushed into nothing.

Everything of one role lives in ``<supervisor.dir>/<role>/``: supervisord.conf, the control
socket (``supervisorctl -c <dir>/supervisord.conf status`` works too), the pid file, the
supervisord log and one stdout and one stderr log per process.

``start``/``stop``/``status``/``restart_program`` talk to supervisord's XML-RPC interface over
its unix socket. Faults are ``ClusterError`` whose text names the fault and the fix.
"""

from __future__ import annotations

import http.client
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from tcpcopy.cluster.config import HOST_ROLES, SAMPLE, ClusterConfig, load_config
from tcpcopy.cluster.privileges import RunAs
from tcpcopy.cluster.process import private_directory, user_from_config

STOP_WAIT_SECS = 10
START_SECS = 1
RPC_TIMEOUT = 5.0
FAULT_BAD_NAME = 10        # supervisor.xmlrpc.Faults
FAULT_NOT_RUNNING = 70
SAMPLE_TOML = Path(SAMPLE)
SAMPLE_CONFIG_PATH = "/etc/tcpcopy/cluster.toml"   # where the sample says to install it


class ClusterError(RuntimeError):
    """supervisord cannot do what was asked; the message names the fault and the fix."""


@dataclass(frozen=True, slots=True)
class Program:
    name: str          # supervisord group; its processes are <name>-<n>
    numprocs: int
    priority: int      # lower starts first and stops last
    module: str        # python -m <module> --config CONFIG --shard n
    needs_root: bool = True   # opens raw sockets or captures, then drops to --user itself;
                              # False: supervisord starts it as supervisor.user (user=)
    sharded: bool = True      # started with --shard %(process_num)d; False: one process, no shard


@dataclass(frozen=True, slots=True)
class ProgramStatus:
    name: str          # group:process, e.g. capture:capture-1
    state: str         # RUNNING, STARTING, BACKOFF, STOPPED, EXITED, FATAL, ...
    pid: int | None
    uptime: float      # seconds in RUNNING (0 otherwise)
    description: str   # supervisord's note, e.g. "Exited too quickly (process log may have details)"

    def as_dict(self) -> dict:
        return asdict(self)


def programs(config: ClusterConfig, host_role: str) -> tuple[Program, ...]:
    _check_role(host_role)
    if host_role == "online":
        return (*_stats_programs(config)[:1],
                Program("owner", config.owners.count, 100, "tcpcopy.session.owner"),
                Program("capture", config.capture.workers, 200, "tcpcopy.capture.worker"),
                *_stats_programs(config)[1:])
    return (Program("intercept", config.intercept.count, 100, "tcpcopy.intercept.main"),)


def _stats_programs(config: ClusterConfig) -> tuple[Program, ...]:
    """With [stats] endpoint, the online host runs the stats hub (first up, last down, so no
    process publishes into nothing) and, with [stats] metrics, the Prometheus exporter."""
    if not config.stats.endpoint:
        return ()
    hub = Program("stats-hub", 1, 50, "tcpcopy.cluster.ops.hub", needs_root=False, sharded=False)
    exporter = Program("metrics", 1, 300, "tcpcopy.cluster.ops.metrics", needs_root=False, sharded=False)
    return (hub, exporter) if config.stats.metrics else (hub,)


def _check_role(host_role: str) -> None:
    if host_role not in HOST_ROLES:
        raise ClusterError(f"unknown host role {host_role!r}: use one of {', '.join(HOST_ROLES)}")


# ------------------------------------------------------------------------------ render

def conf_path(config: ClusterConfig, host_role: str) -> str:
    return f"{config.role_dir(host_role)}/supervisord.conf"


def socket_path(config: ClusterConfig, host_role: str) -> str:
    return f"{config.role_dir(host_role)}/supervisor.sock"


def render(config: ClusterConfig, host_role: str, config_path: str | None = None, *,
           python: str | None = None, commands: Mapping[str, str] | None = None) -> str:
    """The supervisord.conf of one host role. ``config_path`` is the file every process
    reads (default: the one ``config`` came from); ``python`` the interpreter (default:
    this one); ``commands`` replaces program commands by name (stand-ins for tests), each
    still carrying ``%(process_num)d``."""
    config_path = config_path or config.path
    python = python or sys.executable
    directory = _literal(config.role_dir(host_role), "supervisor.dir")
    parts = [_header(config, host_role, config_path), _daemon_sections(directory)]
    for program in programs(config, host_role):
        command = (commands or {}).get(program.name) or _command(python, program.module, config_path,
                                                                 program.sharded)
        parts.append(_program_section(program, command, directory, config.supervisor.user))
    return "\n".join(parts)


def _header(config: ClusterConfig, host_role: str, config_path: str) -> str:
    return (f"; supervisord.conf of the {host_role} host of a tcpcopy cluster, rendered by tcpcopy-cluster\n"
            f"; from {config_path}. Do not edit: change that file and run\n"
            f";   tcpcopy-cluster start {config_path} --role {host_role}\n"
            f"; Inspect with: supervisorctl -c {conf_path(config, host_role)} status\n")


def _daemon_sections(directory: str) -> str:
    return (f"[unix_http_server]\nfile = {directory}/supervisor.sock\nchmod = 0700\n\n"
            f"[supervisord]\nlogfile = {directory}/supervisord.log\npidfile = {directory}/supervisord.pid\n"
            f"childlogdir = {directory}\ndirectory = {directory}\nnodaemon = false\n\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
            f"[supervisorctl]\nserverurl = unix://{directory}/supervisor.sock\n")


def _command(python: str, module: str, config_path: str, sharded: bool = True) -> str:
    argv = [python, "-m", module, "--config", config_path]
    command = " ".join(_literal(shlex.quote(arg), arg) for arg in argv)
    return command + " --shard %(process_num)d" if sharded else command


def _program_section(program: Program, command: str, directory: str, user: str = "") -> str:
    """supervisor.user: a program that opens raw sockets or captures starts as root and
    drops to the user itself (--user); any other is started as the user by supervisord."""
    if program.sharded and "%(process_num)d" not in command:
        raise ClusterError(f"the command of program {program.name} lacks %(process_num)d: "
                           "every process must be told its shard (--shard %(process_num)d)")
    log = f"{directory}/{program.name}-%(process_num)d"
    user = _literal(user, "supervisor.user")
    run_as = "" if not user else f" --user {user}" if program.needs_root else ""
    started_as = f"user = {user}\n" if user and not program.needs_root else ""
    return (f"[program:{program.name}]\ncommand = {command}{run_as}\n{started_as}"
            f"process_name = {program.name}-%(process_num)d\nnumprocs = {program.numprocs}\n"
            f"numprocs_start = 0\npriority = {program.priority}\n"
            f"autostart = true\nautorestart = true\nstartsecs = {START_SECS}\nstartretries = 3\n"
            f"stopsignal = INT\nstopwaitsecs = {STOP_WAIT_SECS}\nkillasgroup = true\n"
            'environment = PYTHONUNBUFFERED="1"\n'
            f"stdout_logfile = {log}.out.log\nstderr_logfile = {log}.err.log\n")


def _literal(text: str, what: str) -> str:
    """A value supervisord reads verbatim: '%' doubled (it expands %(name)s everywhere); no
    line break or inline comment (' ;' or ' #'), which its parser would cut."""
    if any(char in text for char in "\r\n") or any(f"{space}{mark}" in text
                                                  for space in " \t" for mark in ";#"):
        raise ClusterError(f"{what!r} cannot be written into supervisord.conf (a line break, or ';' or '#' "
                           "after a space): choose a path without them")
    return text.replace("%", "%%")


def sample_text() -> str:
    """deploy/cluster-sample.supervisord.conf: both roles rendered from the sample config,
    machine independent (python3, the sample's install path)."""
    config = load_config(SAMPLE_TOML)
    heading = ("; What `tcpcopy-cluster start` writes for deploy/cluster-sample.toml installed as\n"
               f"; {SAMPLE_CONFIG_PATH}, one file per host role (python3 stands for the interpreter\n"
               "; that ran tcpcopy-cluster). Regenerate: python -m tcpcopy.cluster.ops.supervisor\n")
    roles = [f";;;;;;;;;; {role} host: {conf_path(config, role)}\n\n"
             + render(config, role, SAMPLE_CONFIG_PATH, python="python3") for role in HOST_ROLES]
    return heading + "\n" + "\n".join(roles)


# ------------------------------------------------------------------------------ control

def start(config: ClusterConfig, host_role: str, config_path: str | None = None, *,
          commands: Mapping[str, str] | None = None, timeout: float = 10.0) -> int:
    """Render this role's supervisord.conf, launch supervisord and wait until it answers.
    Returns supervisord's pid."""
    _check_role(host_role)
    supervisord_binary()          # missing: said before anything is written
    _check_interfaces(config, host_role)
    run_as = _check_user(config)
    rpc = _proxy(config, host_role)
    if _answers(rpc):
        raise ClusterError(f"supervisord of the {host_role} role already runs on {socket_path(config, host_role)}: "
                           f"see `tcpcopy-cluster status {config.path} --role {host_role}`, or stop it "
                           f"first with `tcpcopy-cluster stop {config.path} --role {host_role}`")
    text = render(config, host_role, config_path, commands=commands)
    _prepare_dirs(config, host_role, run_as)
    _write(conf_path(config, host_role), text)
    _launch(config, host_role, timeout)
    return _wait_answering(config, host_role, rpc, timeout)


def _check_interfaces(config: ClusterConfig, host_role: str) -> None:
    if host_role == "online":
        names, key = (config.capture.interface,), "capture.interface"
    else:
        names, key = config.intercept.interfaces, "intercept.interface"
    for name in names:
        if name == "any":
            continue
        try:
            socket.if_nametoindex(name)
        except OSError:
            present = ", ".join(sorted(n for _, n in socket.if_nameindex()))
            raise ClusterError(f"{config.path}: {key}: this host has no interface {name!r} (it has {present}): "
                               "set the interface the traffic arrives on") from None


def _check_user(config: ClusterConfig) -> RunAs | None:
    """supervisor.user exists and is not root; None when the programs stay root."""
    try:
        return user_from_config(config.supervisor.user)
    except ValueError as exc:
        raise ClusterError(f"{config.path}: {exc}") from None


def _prepare_dirs(config: ClusterConfig, host_role: str, run_as: RunAs | None = None) -> None:
    """The role's directory, and on the online host the owners' ipc:// directory (0700,
    the programs' user's)."""
    dirs = [config.role_dir(host_role)] + ([config.owners.run_dir] if host_role == "online" else [])
    for directory in dirs:
        try:
            if directory == config.owners.run_dir:
                private_directory(directory, run_as)
            else:
                os.makedirs(directory, mode=0o750, exist_ok=True)
        except OSError as exc:
            raise ClusterError(f"cannot create {directory}: {exc.strerror}: run as a user who may, "
                               "or change supervisor.dir / owners.run_dir") from None


def _write(path: str, text: str) -> None:
    partial = f"{path}.new"
    with open(partial, "w") as out:
        out.write(text)
    os.replace(partial, path)


def supervisord_binary() -> str:
    """supervisord next to this interpreter (a virtualenv's), else on PATH."""
    beside = Path(sys.executable).with_name("supervisord")
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which("supervisord")
    if not found:
        raise ClusterError("supervisord is not installed: pip install 'tcpcopy[cluster]' "
                           "(or apt-get install supervisor)")
    return found


def _launch(config: ClusterConfig, host_role: str, timeout: float) -> None:
    """supervisord checks its config and binds its socket, then daemonizes: the launcher's
    exit status tells whether that worked."""
    argv = [supervisord_binary(), "-c", conf_path(config, host_role)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"supervisord did not detach within {timeout:g} s: "
                           f"see {config.role_dir(host_role)}/supervisord.log") from None
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip() or "no message").splitlines()[-1]
        raise ClusterError(f"supervisord refused {conf_path(config, host_role)}: {said}: "
                           f"see {config.role_dir(host_role)}/supervisord.log")


def _wait_answering(config: ClusterConfig, host_role: str, rpc, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if rpc.supervisor.getState()["statename"] == "RUNNING":
                return rpc.supervisor.getPID()
        except (OSError, xmlrpc.client.Error, http.client.HTTPException):
            pass
        time.sleep(0.05)
    raise ClusterError(f"supervisord did not answer on {socket_path(config, host_role)} within {timeout:g} s: "
                       f"see {config.role_dir(host_role)}/supervisord.log")


def stop(config: ClusterConfig, host_role: str, timeout: float | None = None) -> int | None:
    """Shut supervisord down (it stops the programs, highest priority first) and wait for it
    to exit. Returns its pid, or None when it was not running."""
    _check_role(host_role)
    rpc = _proxy(config, host_role)
    if not _answers(rpc):
        _refuse_mute_daemon(config, host_role)
        return None
    pid = _call(config, host_role, rpc.supervisor.getPID)
    _call(config, host_role, rpc.supervisor.shutdown)
    # programs stop one priority group after another, each allowed stopwaitsecs
    timeout = timeout or STOP_WAIT_SECS * len(programs(config, host_role)) + 5
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise ClusterError(f"supervisord (pid {pid}) still runs {timeout:g} s after shutdown: see "
                               f"{config.role_dir(host_role)}/supervisord.log; end it with kill -TERM {pid}")
        time.sleep(0.05)
    return pid


def _refuse_mute_daemon(config: ClusterConfig, host_role: str) -> None:
    """A live supervisord that no longer answers on its socket must not pass for stopped."""
    try:
        pid = int(Path(config.role_dir(host_role), "supervisord.pid").read_text())
    except (OSError, ValueError):
        return
    if pid_alive(pid) and "supervisord" in _cmdline(pid):
        raise ClusterError(f"supervisord (pid {pid}) runs but does not answer on {socket_path(config, host_role)}: "
                           f"end it with kill -TERM {pid}")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped by its parent) is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def status(config: ClusterConfig, host_role: str) -> list[ProgramStatus]:
    """Every process supervisord runs for this role, in its order."""
    _check_role(host_role)
    rpc = _proxy(config, host_role)
    return [_program_status(info) for info in _call(config, host_role, rpc.supervisor.getAllProcessInfo)]


def _program_status(info: dict) -> ProgramStatus:
    running = info["statename"] == "RUNNING"
    return ProgramStatus(f"{info['group']}:{info['name']}", info["statename"], info["pid"] or None,
                         float(info["now"] - info["start"]) if running else 0.0, info["description"])


def restart_program(config: ClusterConfig, host_role: str, name: str) -> list[str]:
    """Stop and start one process (``capture-1`` or ``capture:capture-1``) or every process
    of a program (``capture``). Returns the full names restarted."""
    _check_role(host_role)
    rpc = _proxy(config, host_role)
    names = _resolve(name, [s.name for s in status(config, host_role)], host_role)
    for full in names:
        try:
            rpc.supervisor.stopProcess(full, True)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != FAULT_NOT_RUNNING:
                raise ClusterError(f"cannot stop {full}: {fault.faultString}") from None
        _call(config, host_role, lambda: rpc.supervisor.startProcess(full, True))
    return names


def _resolve(name: str, known: list[str], host_role: str) -> list[str]:
    matches = [full for full in known if name in (full, *full.split(":"))]
    if not matches:
        groups = sorted({full.partition(":")[0] for full in known})
        processes = [full.partition(":")[2] for full in known]
        raise ClusterError(f"no program or process {name!r} in the {host_role} role: give one of "
                           + ", ".join(groups + processes))
    return matches


# -------------------------------------------------------------------------- XML-RPC

class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    """XML-RPC over supervisord's unix socket."""

    def __init__(self, path: str, timeout: float):
        super().__init__()
        self.unix_path, self.timeout = path, timeout

    def make_connection(self, host):
        return _UnixConnection(self.unix_path, self.timeout)


def _proxy(config: ClusterConfig, host_role: str) -> xmlrpc.client.ServerProxy:
    transport = _UnixTransport(socket_path(config, host_role), RPC_TIMEOUT)
    return xmlrpc.client.ServerProxy("http://localhost/RPC2", transport=transport)


def _answers(rpc) -> bool:
    try:
        rpc.supervisor.getPID()
        return True
    except (OSError, xmlrpc.client.Error, http.client.HTTPException):
        return False


def _call(config: ClusterConfig, host_role: str, method):
    try:
        return method()
    except xmlrpc.client.Fault as fault:
        raise ClusterError(f"supervisord of the {host_role} role: {fault.faultString}") from None
    except (OSError, xmlrpc.client.ProtocolError, http.client.HTTPException) as exc:
        raise ClusterError(f"supervisord of the {host_role} role does not answer on {socket_path(config, host_role)} "
                           f"({exc}): start it with `tcpcopy-cluster start {config.path} --role {host_role}`") from None


if __name__ == "__main__":
    sys.stdout.write(sample_text())
