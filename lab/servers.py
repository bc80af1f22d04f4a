"""Real servers inside a lab host, so end-to-end checks read outcomes from the servers' own logs.

:class:`Nginx` renders a minimal nginx.conf into its own temporary directory (pid, logs, temp
paths and the served files all live there), runs nginx in the foreground inside a lab host
(started with :meth:`Lab.popen`, so a lab teardown stops it too), and parses its access log,
one JSON object per request. Under ``/upload/`` it accepts request bodies (any method, up to
``MAX_BODY_BYTES``) and keeps each one in a file of its own, so a test can check the exact bytes
a request carried (:meth:`Nginx.received_bodies`).

:class:`Greeter` is a server-first line protocol (a greeting, then one reply per line) built
on socat, logging every line it receives with the peer and a connection id.
"""

from __future__ import annotations

import functools
import grp
import hashlib
import ipaddress
import json
import os
import re
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from .netns import Lab, LabError, check_lab_address
from .rundirs import remove_run_dir

INDEX_HTML = b"<!doctype html>\n<title>tcpcopy lab</title>\n<p>tcpcopy lab index</p>\n"
BIG_BIN_SIZE = 1 << 20


@functools.cache
def big_bin() -> bytes:
    """1 MiB of a fixed, position-dependent pattern (each 4-byte word is its own offset)."""
    return b"".join((offset).to_bytes(4, "big") for offset in range(0, BIG_BIN_SIZE, 4))


def default_site() -> dict[str, bytes]:
    """The files every lab nginx serves: ``/index.html`` (small) and ``/big.bin`` (1 MiB)."""
    return {"index.html": INDEX_HTML, "big.bin": big_bin()}


# Access log fields. Nothing depends on the body's content, so the log reads the same whoever
# replays; ``request_body_file`` names where a body under UPLOAD_PREFIX was kept ("" otherwise).
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
    "pipe": "$pipe",
    "request_time": "$request_time",
    "user_agent": "$http_user_agent",
    "content_length": "$content_length",
    "request_body_file": "$request_body_file",
}
INT_FIELDS = frozenset({"remote_port", "server_port", "status", "request_length", "bytes_sent",
                        "body_bytes_sent", "connection", "connection_requests", "content_length"})
FLOAT_FIELDS = frozenset({"time", "request_time"})

UPLOAD_PREFIX = "/upload/"
MAX_BODY_BYTES = 128 << 20
UPLOAD_STATUS = 201

# Modules whose compiled-in temp paths must be moved into the server's directory.
TEMP_PATH_MODULES = ("proxy", "fastcgi", "uwsgi", "scgi")


class ServerError(RuntimeError):
    """A lab server failed to start or stop; the message carries its error log."""


class _LabServer:
    """``with Server(...) as server:`` starts it, waits until it accepts connections, and
    stops it on exit (also when it never became ready)."""

    def _listen_on(self, lab: Lab, host: str, address: str, port: int, keep_dir: bool) -> None:
        """The fields of a server listening on ``address:port`` in lab host ``host``, checked."""
        _check_listen_address(address)
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} out of range 1..65535")
        self.lab = lab
        self.host = host
        self.address = address
        self.port = port
        self.keep_dir = keep_dir
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self):
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


class Nginx(_LabServer):
    """nginx listening on ``address:port`` inside lab host ``host``.

    ``with Nginx(lab, "target", "198.18.0.2", 8080) as web:`` starts it, waits until it
    accepts connections, and stops it on exit. The temporary directory is removed on stop
    unless ``keep_dir`` is set (the access log and the kept bodies are read before that).

    It serves ``files`` (by default ``/index.html`` and the 1 MiB ``/big.bin``) and keeps the
    body of every request under ``UPLOAD_PREFIX`` (answered with ``UPLOAD_STATUS``). With
    ``upstream`` (an nginx server address, e.g. ``unix:/path:``) every other request is
    proxied there instead of served from the files. With ``token`` every occurrence of that
    text in a page is replaced by a random token of its own per answer (nginx's
    ``$request_id``, 32 hex digits), as pages with session ids or CSRF tokens have.
    """

    def __init__(self, lab: Lab, host: str, address: str, port: int = 80, *,
                 files: Mapping[str, bytes] | None = None, keepalive_requests: int = 1_000_000,
                 keepalive_timeout_s: int = 65, keep_dir: bool = False, upstream: str | None = None,
                 token: str | None = None) -> None:
        if token is not None and not re.fullmatch(r"[A-Za-z0-9_]{4,64}", token):
            raise ValueError(f"token {token!r}: use 4-64 letters, digits or '_' (it goes into nginx.conf)")
        self._listen_on(lab, host, address, port, keep_dir)
        self.token = token
        self.files = dict(default_site() if files is None else files)
        self.keepalive_requests = keepalive_requests
        self.keepalive_timeout_s = keepalive_timeout_s
        self.upstream = upstream
        self._cached_log: list[dict[str, Any]] = []
        self._cached_bodies: list[ReceivedBody] = []

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

    def start(self) -> Nginx:
        """Render the config and start nginx in the foreground inside the host."""
        if self.proc is not None:
            raise ServerError("nginx is already started")
        self.dir = Path(tempfile.mkdtemp(prefix=f"tcl-nginx-{self.lab.tag}-{self.host}-"))
        self._write_site()
        self._path("nginx.conf").write_text(self.render_config())
        self.lab.add_cleanup(self.stop)  # also on a lab teardown by signal or at exit
        self._launch()
        return self

    def _launch(self) -> None:
        nginx = shutil.which("nginx") or _sbin("nginx")
        output = self._path("nginx.out").open("ab")
        try:
            self.proc = self.lab.popen(
                self.host,
                [nginx, "-p", str(self.dir), "-c", str(self._path("nginx.conf")), "-e", str(self.error_log_path)],
                stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        finally:
            output.close()

    def restart(self, down_s: float = 0.0) -> None:
        """Stop nginx by PID (SIGTERM: it closes every connection) and, ``down_s`` seconds
        later, start it again in the same directory, so its access log goes on: a server
        restarted while it is copied to. Returns once it accepts connections again."""
        if self.proc is None:
            raise ServerError("nginx has not been started")
        self.lab.stop(self.proc, 5.0, signal.SIGTERM)
        self.proc = None
        time.sleep(down_s)
        self._launch()
        self.wait_ready()

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
            self._cached_bodies = bodies_of(self._cached_log)
            if not self.keep_dir:
                remove_run_dir(self.dir)
                self.dir = None
        return code

    # -- logs --------------------------------------------------------------------------------

    def access_log_entries(self) -> list[dict[str, Any]]:
        """One dict per logged request, numbers as int/float (fields: ``ACCESS_LOG_FIELDS``)."""
        if self.dir is None:
            return list(self._cached_log)
        return self._read_access_log()

    def access_log_count(self) -> int:
        """How many requests are logged (complete lines), without parsing them: cheap enough
        to poll while a copy of hundreds of thousands of requests drains."""
        if self.dir is None:
            return len(self._cached_log)
        try:
            with open(self.access_log_path, "rb") as log:
                return sum(chunk.count(b"\n") for chunk in iter(lambda: log.read(1 << 20), b""))
        except FileNotFoundError:
            return 0

    def wait_for_requests(self, expected: int, timeout: float, quiet: float = 3.0) -> int:
        """Wait until ``expected`` requests are logged, or none came for ``quiet`` seconds, or
        ``timeout`` passed; the count logged then."""
        deadline = time.monotonic() + timeout
        count, last_change = 0, time.monotonic()
        while time.monotonic() < deadline:
            now_count = self.access_log_count()
            if now_count != count:
                count, last_change = now_count, time.monotonic()
            if count >= expected or time.monotonic() - last_change > quiet:
                break
            time.sleep(0.2)
        return count

    def received_bodies(self) -> list[ReceivedBody]:
        """Per request that sent a body under ``UPLOAD_PREFIX``, in log order: the bytes kept.

        A request with an empty body keeps no file and is not listed. Still available after
        :meth:`stop` (hashed before the directory goes).
        """
        if self.dir is None:
            return list(self._cached_bodies)
        return bodies_of(self._read_access_log())

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
        return f"""# rendered by tcpcopy.lab.servers
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
        location / {{{self._upstream_directives()}{self._token_directives()}
        }}
        # nginx stores a request body only for a handler that reads it; the proxy module is
        # the core one that does. Each body stays in a file of its own (named in the access
        # log); the sink behind it gets only the headers and answers {UPLOAD_STATUS}.
        location {UPLOAD_PREFIX} {{
            client_max_body_size {MAX_BODY_BYTES};
            client_body_in_file_only on;
            proxy_pass http://unix:{d}/body-sink.sock:/;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}

    server {{
        listen unix:{d}/body-sink.sock;
        access_log off;
        location / {{
            return {UPLOAD_STATUS} "stored\\n";
        }}
    }}
}}
"""

    def _token_directives(self) -> str:
        if self.token is None:
            return ""
        return (f"\n            sub_filter '{self.token}' '$request_id';\n            sub_filter_once off;"
                "\n            sub_filter_types *;")

    def _upstream_directives(self) -> str:
        """With an ``upstream``, ``location /`` proxies to it instead of serving the site."""
        if self.upstream is None:
            return ""
        return f"\n            proxy_pass http://{self.upstream};"


class ReceivedBody(NamedTuple):
    """A request body nginx kept: its URI, its stored length and the SHA-256 of its bytes."""

    uri: str
    length: int
    sha256: str


def bodies_of(entries: list[dict[str, Any]]) -> list[ReceivedBody]:
    """The kept bodies of the access-log ``entries`` that name a body file.

    A body file that is missing (nginx could not keep it) is a fault, not an empty body.
    """
    bodies = []
    for entry in entries:
        path = entry.get("request_body_file")
        if not path:
            continue
        try:
            length, digest = _file_sha256(Path(path))
        except FileNotFoundError:
            raise ServerError(f"body file {path} of {entry.get('request_method')} {entry.get('uri')} "
                              "is gone: read bodies before the server's directory is removed") from None
        bodies.append(ReceivedBody(entry["uri"], length, digest))
    return bodies


def _file_sha256(path: Path) -> tuple[int, str]:
    """The length and SHA-256 of a file, read in chunks (bodies go up to ``MAX_BODY_BYTES``)."""
    digest, length = hashlib.sha256(), 0
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
            length += len(chunk)
    return length, digest.hexdigest()


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


# --------------------------------------------------------------------------- greeter

GREETING = "220 lab greeter ready"
GREETER_BACKLOG = 1024
GREETER_MAX_CHILDREN = 2000

# One connection: socat (EXEC with nofork) makes the accepted socket this script's stdin and
# stdout. Every event is one append of one short line to the shared log, so the lines of
# concurrent connections never interleave: time, connection id, peer address, peer port,
# event (open, line, close), text (the line received, or who closed).
GREETER_SCRIPT = r"""#!/bin/bash
# rendered by tcpcopy.lab.servers: one connection of the lab greeter
conn="$$-${EPOCHREALTIME/./}"
note() {
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$EPOCHREALTIME" "$conn" "$SOCAT_PEERADDR" "$SOCAT_PEERPORT" "$1" "$2" \
    >> "$GREETER_LOG"
}
note open ""
printf '%s\r\n' "$GREETER_GREETING"
n=0
while IFS= read -r line || [ -n "$line" ]; do
  line=${line%$'\r'}
  n=$((n + 1))
  note line "$line"
  if [ "$line" = QUIT ]; then
    printf '221 bye\r\n'
    note close server
    exit 0
  fi
  printf '250 %d %s\r\n' "$n" "$line"
done
note close client
"""


@dataclass(frozen=True, slots=True)
class GreeterEntry:
    """One logged greeter event: ``open``, ``line`` (with the line's text) or ``close``.

    ``connection`` is unique per accepted connection; ``text`` of a ``close`` says who closed
    (``client`` at end of input, ``server`` after QUIT).
    """

    time: float
    connection: str
    peer_addr: str
    peer_port: int
    event: str
    text: str


class Greeter(_LabServer):
    """A server-first line service on ``address:port`` inside lab host ``host`` (socat + bash).

    On connect it sends ``greeting`` and CRLF; it answers each line with ``250 <n> <line>``
    (``n`` counting the connection's lines) and ``QUIT`` with ``221 bye``, closing after it.
    socat forks one handler per connection, so many connections run concurrently (up to
    ``max_children``). ``with Greeter(lab, "target", "198.18.0.2", 2525) as greeter:``
    starts it, waits until it listens, and stops it (by PID, with its handlers) on exit.
    """

    def __init__(self, lab: Lab, host: str, address: str, port: int, *, greeting: str = GREETING,
                 max_children: int = GREETER_MAX_CHILDREN, keep_dir: bool = False) -> None:
        if any(ch in greeting for ch in "\r\n\0"):
            raise ValueError("the greeting is one line: no CR, LF or NUL in it")
        self._listen_on(lab, host, address, port, keep_dir)
        self.greeting = greeting
        self.max_children = max_children
        self._cached_log: list[GreeterEntry] = []

    @property
    def log_path(self) -> Path:
        if self.dir is None:
            raise ServerError("the greeter has not been started")
        return self.dir / "greeter.log"

    def start(self) -> Greeter:
        """Write the handler script and start socat inside the host."""
        if self.proc is not None:
            raise ServerError("the greeter is already started")
        socat = shutil.which("socat")
        if socat is None:
            raise LabError("socat is not installed: apt-get install socat")
        self.dir = Path(tempfile.mkdtemp(prefix=f"tcl-greeter-{self.lab.tag}-{self.host}-"))
        script = self.dir / "greeter.sh"
        script.write_text(GREETER_SCRIPT)
        self.log_path.touch()
        env = {**os.environ, "LC_ALL": "C", "GREETER_LOG": str(self.log_path), "GREETER_GREETING": self.greeting}
        self.lab.add_cleanup(self.stop)
        output = (self.dir / "socat.out").open("wb")
        try:
            self.proc = self.lab.popen(self.host, [socat, "-d", self._listen_spec(), f"EXEC:/bin/bash {script},nofork"],
                                       stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        finally:
            output.close()
        return self

    def _listen_spec(self) -> str:
        ipv6 = ":" in self.address
        kind, bind = ("TCP6-LISTEN", f"[{self.address}]") if ipv6 else ("TCP4-LISTEN", self.address)
        return (f"{kind}:{self.port},bind={bind},reuseaddr,fork,backlog={GREETER_BACKLOG},"
                f"max-children={self.max_children}")

    def wait_ready(self, timeout: float = 5.0) -> None:
        """Return once socat listens (seen with ``ss``, so no connection enters the log)."""
        if self.proc is None:
            raise ServerError("the greeter has not been started")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"socat exited with {self.proc.returncode}: {self.diagnostics()}")
            listening = self.lab.run(self.host, ["ss", "-Hltn", f"sport = :{self.port}"], check=False).stdout
            if listening.strip():
                return
            time.sleep(0.02)
        raise ServerError(f"greeter in {self.host} not listening on {self.address}:{self.port} "
                          f"after {timeout} s: {self.diagnostics()}")

    def stop(self, grace_s: float = 2.0) -> int | None:
        """Stop socat and its connection handlers (its process group) by PID; keep the log.

        Returns once the handlers are gone too (SIGKILL for those left after ``grace_s``).
        """
        code = None
        if self.proc is not None:
            group = self.proc.pid  # popen made socat the leader of its own process group
            code = self.lab.stop(self.proc, grace_s, signal.SIGTERM)
            _reap_group(group, grace_s)
            self.proc = None
        if self.dir is not None:
            self._cached_log = self._read_log()
            if not self.keep_dir:
                remove_run_dir(self.dir)
                self.dir = None
        return code

    def log_entries(self) -> list[GreeterEntry]:
        """Every logged event in log order (still available after :meth:`stop`)."""
        if self.dir is None:
            return list(self._cached_log)
        return self._read_log()

    def _read_log(self) -> list[GreeterEntry]:
        try:
            text = self.log_path.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return [parse_greeter_line(line) for line in text.split("\n") if line]

    def diagnostics(self) -> str:
        """socat's own messages (bind errors and the like), for error messages."""
        text = ""
        if self.dir is not None:
            try:
                text = (self.dir / "socat.out").read_text(errors="replace").strip()
            except FileNotFoundError:
                pass
        return text[-1500:] or "(no output)"


def _reap_group(group: int, grace_s: float) -> None:
    """Wait until no process of ``group`` (ours, already sent SIGTERM) is left; SIGKILL after ``grace_s``."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass


def parse_greeter_line(line: str) -> GreeterEntry:
    """One greeter log line (six tab-separated fields; the text may itself hold tabs)."""
    stamp, connection, peer_addr, peer_port, event, text = line.split("\t", 5)
    return GreeterEntry(float(stamp), connection, peer_addr.strip("[]"), int(peer_port), event, text)
