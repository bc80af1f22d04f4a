"""Real servers inside a lab host, so end-to-end checks read outcomes from the servers' own logs.

:class:`Nginx` renders a minimal nginx.conf into its own temporary directory (pid, logs, temp
paths and the served files all live there), runs nginx in the foreground inside a lab host
(started with :meth:`Lab.popen`, so a lab teardown stops it too), and parses its access log,
one JSON object per request.
"""

from __future__ import annotations

import functools
import grp
import ipaddress
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from .lab import Lab, LabError, check_lab_address

INDEX_HTML = b"<!doctype html>\n<title>tcpcopy lab</title>\n<p>tcpcopy lab index</p>\n"
BIG_BIN_SIZE = 1 << 20


@functools.cache
def big_bin() -> bytes:
    """1 MiB of a fixed, position-dependent pattern (each 4-byte word is its own offset)."""
    return b"".join((offset).to_bytes(4, "big") for offset in range(0, BIG_BIN_SIZE, 4))


def default_site() -> dict[str, bytes]:
    """The files every lab nginx serves: ``/index.html`` (small) and ``/big.bin`` (1 MiB)."""
    return {"index.html": INDEX_HTML, "big.bin": big_bin()}


# Access log fields: request-body-independent only, so the log is the same whoever replays.
ACCESS_LOG_FIELDS = {
    "time": "$msec",
    "remote_addr": "$remote_addr",
    "remote_port": "$remote_port",
    "server_addr": "$server_addr",
    "server_port": "$server_port",
    "request_method": "$request_method",
    "request_uri": "$request_uri",
    "uri": "$uri",
    "server_protocol": "$server_protocol",
    "status": "$status",
    "request_length": "$request_length",
    "bytes_sent": "$bytes_sent",
    "body_bytes_sent": "$body_bytes_sent",
    "connection": "$connection",
    "connection_requests": "$connection_requests",
    "request_time": "$request_time",
    "user_agent": "$http_user_agent",
}
INT_FIELDS = frozenset({"remote_port", "server_port", "status", "request_length", "bytes_sent",
                        "body_bytes_sent", "connection", "connection_requests"})
FLOAT_FIELDS = frozenset({"time", "request_time"})

# Modules whose compiled-in temp paths must be moved into the server's directory.
TEMP_PATH_MODULES = ("proxy", "fastcgi", "uwsgi", "scgi")


class ServerError(RuntimeError):
    """A lab server failed to start or stop; the message carries its error log."""


class Nginx:
    """nginx listening on ``address:port`` inside lab host ``host``.

    ``with Nginx(lab, "target", "198.18.0.2", 8080) as web:`` starts it, waits until it
    accepts connections, and stops it on exit. The temporary directory is removed on stop
    unless ``keep_dir`` is set (the access log is read before that).
    """

    def __init__(self, lab: Lab, host: str, address: str, port: int = 80, *,
                 files: Mapping[str, bytes] | None = None, keepalive_requests: int = 1_000_000,
                 keepalive_timeout_s: int = 65, keep_dir: bool = False) -> None:
        _check_listen_address(address)
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} out of range 1..65535")
        self.lab = lab
        self.host = host
        self.address = address
        self.port = port
        self.files = dict(default_site() if files is None else files)
        self.keepalive_requests = keepalive_requests
        self.keepalive_timeout_s = keepalive_timeout_s
        self.keep_dir = keep_dir
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._cached_log: list[dict[str, Any]] = []

    # -- paths ---------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        if self.dir is None:
            raise ServerError("nginx has not been started")
        return self.dir / name

    @property
    def access_log_path(self) -> Path:
        return self._path("access.log")

    @property
    def error_log_path(self) -> Path:
        return self._path("error.log")

    def url(self, path: str = "/") -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}{path}"

    # -- life cycle ------------------------------------------------------------------------

    def __enter__(self) -> Nginx:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> Nginx:
        """Render the config and start nginx in the foreground inside the host."""
        if self.proc is not None:
            raise ServerError("nginx is already started")
        nginx = shutil.which("nginx") or _sbin("nginx")
        self.dir = Path(tempfile.mkdtemp(prefix=f"tcl-nginx-{self.lab.tag}-{self.host}-"))
        self._write_site()
        self._path("nginx.conf").write_text(self.render_config())
        self.lab.add_cleanup(self.stop)  # also on a lab teardown by signal or at exit
        output = self._path("nginx.out").open("wb")
        try:
            self.proc = self.lab.popen(
                self.host,
                [nginx, "-p", str(self.dir), "-c", str(self._path("nginx.conf")), "-e", str(self.error_log_path)],
                stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        finally:
            output.close()
        return self

    def wait_ready(self, timeout: float = 5.0) -> None:
        """Return once a TCP connect from inside the host succeeds; else raise ServerError."""
        if self.proc is None:
            raise ServerError("nginx has not been started")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"nginx exited with {self.proc.returncode}: {self.diagnostics()}")
            if self.lab.call(self.host, _can_connect, self.address, self.port, 0.2, timeout=5.0):
                return
            time.sleep(0.02)
        raise ServerError(f"nginx in {self.host} not accepting on {self.address}:{self.port} "
                          f"after {timeout} s: {self.diagnostics()}")

    def stop(self, grace_s: float = 5.0) -> int | None:
        """Stop nginx by PID (SIGTERM, then SIGKILL after ``grace_s``); remove its directory.

        Returns nginx's exit code (None if it never started). The access log is cached first,
        so :meth:`access_log_entries` still works after a stop.
        """
        code = None
        if self.proc is not None:
            code = self.lab.stop(self.proc, grace_s, signal.SIGTERM)
            self.proc = None
        if self.dir is not None:
            self._cached_log = self._read_access_log()
            if not self.keep_dir:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None
        return code

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- logs --------------------------------------------------------------------------------

    def access_log_entries(self) -> list[dict[str, Any]]:
        """One dict per logged request, numbers as int/float (fields: ``ACCESS_LOG_FIELDS``)."""
        if self.dir is None:
            return list(self._cached_log)
        return self._read_access_log()

    def _read_access_log(self) -> list[dict[str, Any]]:
        try:
            text = self.access_log_path.read_text()
        except FileNotFoundError:
            return []
        return [parse_access_log_line(line) for line in text.splitlines() if line.strip()]

    def diagnostics(self) -> str:
        """The tail of nginx's error log and console output, for error messages."""
        parts = []
        for name in ("error.log", "nginx.out"):
            try:
                text = self._path(name).read_text(errors="replace").strip()
            except (FileNotFoundError, ServerError):
                continue
            if text:
                parts.append(f"[{name}] {text[-1500:]}")
        return " ".join(parts) or "(no output)"

    # -- rendering -----------------------------------------------------------------------------

    def _write_site(self) -> None:
        assert self.dir is not None
        self.dir.chmod(0o755)  # workers run as an unprivileged user and must reach the site
        site = self._path("site")
        site.mkdir()
        for name, content in self.files.items():
            target = (site / name.lstrip("/")).resolve()
            if site.resolve() not in target.parents:
                raise ValueError(f"file name {name!r} escapes the site directory")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            target.chmod(0o644)
        self._path("tmp").mkdir()

    def render_config(self) -> str:
        """The nginx.conf text for this server (paths inside its directory)."""
        d = self._path("")
        log_format = "{" + ",".join(f'"{k}":"{v}"' for k, v in ACCESS_LOG_FIELDS.items()) + "}"
        temp_paths = "\n".join(f"    {m}_temp_path {d}/tmp/{m};" for m in TEMP_PATH_MODULES
                               if m in _nginx_http_modules_with_temp_paths())
        listen = f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"
        return f"""# rendered by tcpcopy.deploy.servers
daemon off;
master_process on;
worker_processes 1;
{_user_directive()}
pid {d}/nginx.pid;
error_log {d}/error.log notice;

events {{
    worker_connections 1024;
}}

http {{
    log_format tcpcopy_json escape=json '{log_format}';
    access_log {d}/access.log tcpcopy_json;
    client_body_temp_path {d}/tmp/client_body;
{temp_paths}
    types {{
        text/html html;
        text/plain txt;
        application/octet-stream bin;
    }}
    default_type application/octet-stream;
    server_tokens off;
    sendfile on;
    keepalive_requests {self.keepalive_requests};
    keepalive_timeout {self.keepalive_timeout_s}s;

    server {{
        listen {listen};
        server_name _;
        root {d}/site;
        location / {{
        }}
    }}
}}
"""


def parse_access_log_line(line: str) -> dict[str, Any]:
    """One access-log JSON line as a dict, numeric fields converted (left as text if not numeric)."""
    entry: dict[str, Any] = json.loads(line)
    for key in INT_FIELDS & entry.keys():
        entry[key] = _number(entry[key], int)
    for key in FLOAT_FIELDS & entry.keys():
        entry[key] = _number(entry[key], float)
    return entry


def _number(text: str, kind: type) -> Any:
    try:
        return kind(text)
    except (TypeError, ValueError):
        return text


def _can_connect(address: str, port: int, timeout: float) -> bool:
    """Runs inside the host: does a TCP connect to address:port succeed?"""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def _check_listen_address(address: str) -> None:
    ip = ipaddress.ip_address(address)
    if ip.is_unspecified or ip.is_loopback:
        return
    check_lab_address(address, what="listen address")


def _sbin(name: str) -> str:
    for directory in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        candidate = Path(directory) / name
        if candidate.exists():
            return str(candidate)
    raise LabError(f"{name} is not installed: apt-get install nginx-light")


@functools.cache
def _nginx_http_modules_with_temp_paths() -> frozenset[str]:
    """Temp-path modules compiled into this nginx (``nginx -V`` lists the ones left out)."""
    nginx = shutil.which("nginx") or _sbin("nginx")
    version = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=10).stderr
    return frozenset(m for m in TEMP_PATH_MODULES if f"--without-http_{m}_module" not in version)


def _user_directive() -> str:
    """As root, run workers as nobody (the master needs root only to start)."""
    if os.geteuid() != 0:
        return ""
    try:
        nobody = pwd.getpwnam("nobody")
        return f"user nobody {grp.getgrgid(nobody.pw_gid).gr_name};"
    except KeyError:
        return "user root root;"
