"""A real Redis server inside a lab host, and a bounded redis-benchmark load against it.

Redis is the common case of a small-message protocol on persistent connections: a command
of a few dozen bytes, an answer of a few bytes, many of them in turn (or pipelined) on each
connection. :class:`Redis` renders a minimal redis.conf into its own temporary directory
(no persistence, its log there too), runs ``redis-server`` in the foreground inside a lab
host (started with :meth:`Lab.popen`, so a lab teardown stops it too), and reads its own
counters back with ``redis-cli`` run in the same host: the calls of every command
(``INFO commandstats``) and the number of keys (``DBSIZE``). Those are what a user compares
between the online server and the target after a copy.

:func:`redis_benchmark` runs one ``redis-benchmark`` inside a lab host, bounded in count (a
fixed number of requests per test) and in time (the process is killed after ``timeout_s``
and :class:`KvLoadError` raised), and parses its CSV summary. Only lab addresses are
accepted.
"""

from __future__ import annotations

import csv
import ipaddress
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .netns import Lab, LabError, check_lab_address
from .load import MAX_REQUESTS
from .rundirs import remove_run_dir
from .servers import ServerError, _can_connect, _LabServer

REDIS_SERVER = "redis-server"
REDIS_CLI = "redis-cli"
REDIS_BENCHMARK = "redis-benchmark"
DEFAULT_MAXCLIENTS = 1024
CLI_TIMEOUT_S = 10.0
MAX_CLIENTS = 1000  # redis-benchmark connections per load
MAX_PIPELINE = 1000
MAX_SECONDS = 120.0  # one load at most
# redis-benchmark's own test names (``-t``); anything else would be silently ignored by it.
BENCHMARK_TESTS = frozenset({
    "ping_inline", "ping_mbulk", "set", "get", "incr", "lpush", "rpush", "lpop", "rpop", "sadd",
    "hset", "spop", "zadd", "zpopmin", "lrange", "lrange_100", "lrange_300", "lrange_500",
    "lrange_600", "mset",
})


class KvLoadError(RuntimeError):
    """redis-benchmark could not run, overran its time, or printed no results; the message says which."""


# --------------------------------------------------------------------------- the server


class Redis(_LabServer):
    """redis-server listening on ``address:port`` inside lab host ``host``.

    ``with Redis(lab, "target", "198.18.0.2", 6379) as redis:`` starts it, waits until it
    answers PING, and stops it (by PID) on exit. Nothing is persisted; the temporary
    directory (config and log) is removed on stop unless ``keep_dir`` is set. Its command
    statistics are reset once it is ready, so only the traffic that comes afterwards counts.
    """

    def __init__(self, lab: Lab, host: str, address: str, port: int = 6379, *,
                 maxclients: int = DEFAULT_MAXCLIENTS, keep_dir: bool = False) -> None:
        if maxclients < 1:
            raise ValueError(f"maxclients must be positive, got {maxclients}")
        self._listen_on(lab, host, address, port, keep_dir)
        self.maxclients = maxclients

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> Redis:
        """Render the config and start redis-server in the foreground inside the host."""
        if self.proc is not None:
            raise ServerError("redis is already started")
        server = _program(REDIS_SERVER)
        self.dir = Path(tempfile.mkdtemp(prefix=f"tcl-redis-{self.lab.tag}-{self.host}-"))
        (self.dir / "redis.conf").write_text(self.render_config())
        self.lab.add_cleanup(self.stop)  # also on a lab teardown by signal or at exit
        output = (self.dir / "redis.out").open("wb")
        try:
            self.proc = self.lab.popen(self.host, [server, str(self.dir / "redis.conf")],
                                       stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            output.close()
        return self

    def wait_ready(self, timeout: float = 5.0) -> None:
        """Return once redis answers PING from inside the host (then reset its statistics);
        else raise ServerError."""
        if self.proc is None:
            raise ServerError("redis has not been started")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"redis-server exited with {self.proc.returncode}: {self.diagnostics()}")
            if self._try_cli("PING") == "PONG":
                self.reset_stats()
                return
            time.sleep(0.05)
        raise ServerError(f"redis in {self.host} not answering on {self.address}:{self.port} "
                          f"after {timeout} s: {self.diagnostics()}")

    def stop(self, grace_s: float = 5.0) -> int | None:
        """Stop redis-server by PID (SIGTERM, then SIGKILL after ``grace_s``); remove its directory.

        Returns its exit code (None if it never started)."""
        code = None
        if self.proc is not None:
            code = self.lab.stop(self.proc, grace_s, signal.SIGTERM)
            self.proc = None
        if self.dir is not None and not self.keep_dir:
            remove_run_dir(self.dir)
            self.dir = None
        return code

    # -- the server's own counters ---------------------------------------------------------

    def cli(self, *args: str) -> str:
        """Run one redis-cli command against this server from inside its host; its reply as
        text. An error reply or a failed connection raises ServerError."""
        if self.proc is None:
            raise ServerError("redis is not running: start it first")
        try:
            done = self.lab.run(self.host, self._cli_argv(args), check=False, timeout=CLI_TIMEOUT_S)
        except LabError as exc:
            raise ServerError(f"redis-cli {' '.join(args)}: {exc}") from None
        reply = done.stdout.strip()
        if done.returncode != 0 or reply.startswith(("ERR", "(error)")) or "Could not connect" in reply:
            raise ServerError(f"redis-cli {' '.join(args)} in {self.host} exited with {done.returncode}: "
                              f"{(done.stderr.strip() or reply)[-1500:]}")
        return reply

    def command_stats(self) -> dict[str, int]:
        """Calls per command since the last reset (``INFO commandstats``), e.g. ``{"set": 20000}``.

        Subcommands keep Redis's own names (``config|resetstat``); the INFO, DBSIZE and CONFIG
        calls of these methods count too."""
        return parse_command_stats(self.cli("INFO", "commandstats"))

    def key_count(self) -> int:
        """The number of keys in the current database (``DBSIZE``)."""
        reply = self.cli("DBSIZE")
        try:
            return int(reply.removeprefix("(integer)").strip())
        except ValueError:
            raise ServerError(f"DBSIZE answered {reply!r}, not a number") from None

    def reset_stats(self) -> None:
        """Zero the command statistics (``CONFIG RESETSTAT``)."""
        self.cli("CONFIG", "RESETSTAT")

    def flush(self) -> None:
        """Remove every key (``FLUSHALL``) and zero the statistics, for a fresh count."""
        self.cli("FLUSHALL")
        self.reset_stats()

    def diagnostics(self) -> str:
        """The tail of redis's log and console output, for error messages."""
        parts = []
        for name in ("redis.log", "redis.out"):
            try:
                text = (self.dir / name).read_text(errors="replace").strip() if self.dir else ""
            except FileNotFoundError:
                continue
            if text:
                parts.append(f"[{name}] {text[-1500:]}")
        return " ".join(parts) or "(no output)"

    # -- helpers ---------------------------------------------------------------------------

    def render_config(self) -> str:
        """The redis.conf text for this server (log and working directory inside its directory)."""
        if self.dir is None:
            raise ServerError("redis has not been started")
        return f"""# rendered by tcpcopy.lab.kvstore
bind {self.address}
port {self.port}
protected-mode no
daemonize no
supervised no
save ""
appendonly no
dir {self.dir}
logfile {self.dir}/redis.log
pidfile {self.dir}/redis.pid
maxclients {self.maxclients}
tcp-backlog 511
"""

    def _cli_argv(self, args: Sequence[str]) -> list[str]:
        return [_program(REDIS_CLI), "-h", self.address, "-p", str(self.port), *args]

    def _try_cli(self, *args: str) -> str | None:
        try:
            return self.cli(*args)
        except ServerError:
            return None


def parse_command_stats(info: str) -> dict[str, int]:
    """``{command: calls}`` of ``INFO commandstats`` text (lines ``cmdstat_NAME:calls=N,...``)."""
    stats = {}
    for line in info.splitlines():
        name, sep, fields = line.strip().partition(":")
        if not sep or not name.startswith("cmdstat_"):
            continue
        values = dict(field.split("=", 1) for field in fields.split(",") if "=" in field)
        try:
            stats[name.removeprefix("cmdstat_")] = int(values["calls"])
        except (KeyError, ValueError):
            raise ValueError(f"commandstats line without a number of calls: {line!r}") from None
    return stats


# --------------------------------------------------------------------------- the load


@dataclass(frozen=True, slots=True)
class RedisBenchmarkResult:
    """What :func:`redis_benchmark` asked for, and what it measured."""

    address: str
    port: int
    clients: int
    requests: int  # per test
    pipeline: int
    tests: tuple[str, ...]
    keyspace: int | None
    rates: Mapping[str, float]  # requests per second, per test (lower-case name)
    seconds: float  # wall time of the whole run
    output: str  # redis-benchmark's whole stdout, for reports

    @property
    def total_requests(self) -> int:
        return self.requests * len(self.tests)


def redis_benchmark(lab: Lab, host: str, address: str, port: int = 6379, *, clients: int = 100,
                    requests: int = 20_000, pipeline: int = 1, tests: Sequence[str] = ("set", "get"),
                    keyspace: int | None = 100_000, timeout_s: float = 60.0) -> RedisBenchmarkResult:
    """``requests`` commands of each test over ``clients`` connections (``-P pipeline``
    commands in flight on each), from inside ``host`` against ``address:port``.

    redis-benchmark runs the tests one after the other, each on fresh connections; with
    ``keyspace`` the keys are drawn from that many (``-r``). Killed after ``timeout_s``.
    """
    tests = _check_benchmark(address, port, clients, requests, pipeline, tests, keyspace, timeout_s)
    argv = [_program(REDIS_BENCHMARK), "-h", address, "-p", str(port), "-c", str(clients), "-n", str(requests),
            "-P", str(pipeline), "-t", ",".join(tests), "--csv"]
    if keyspace is not None:
        argv += ["-r", str(keyspace)]
    # redis-benchmark retries a refused connection for ever: fail fast with the reason instead.
    if not lab.call(host, _can_connect, address, port, 2.0, timeout=CLI_TIMEOUT_S):
        raise KvLoadError(f"nothing accepts connections on {address}:{port} from {host}: is the Redis server up?")
    started = time.monotonic()
    try:
        done = lab.run(host, argv, check=False, timeout=timeout_s)
    except LabError as exc:
        raise KvLoadError(f"redis-benchmark in {host} killed: {exc}") from None
    seconds = time.monotonic() - started
    rates = _rates_or_error(done, host, tests)
    return RedisBenchmarkResult(address, port, clients, requests, pipeline, tests, keyspace,
                                MappingProxyType(rates), seconds, done.stdout)


def _rates_or_error(done: subprocess.CompletedProcess[str], host: str, tests: tuple[str, ...]) -> dict[str, float]:
    """The per-test rates of a finished run; KvLoadError if it failed or a test is missing."""
    rates = parse_benchmark_csv(done.stdout)
    missing = [t for t in tests if t not in rates]
    if done.returncode != 0 or missing:
        detail = f"no result for {', '.join(missing)}" if missing else "an error"
        raise KvLoadError(f"redis-benchmark in {host} exited with {done.returncode} and {detail}: "
                          f"{(done.stderr.strip() + ' ' + done.stdout.strip()).strip()[-1500:]}")
    return rates


def parse_benchmark_csv(output: str) -> dict[str, float]:
    """``{test: requests per second}`` of redis-benchmark's ``--csv`` output (header skipped)."""
    rates = {}
    for row in csv.reader(line for line in output.splitlines() if line.startswith('"')):
        if len(row) < 2 or row[0] == "test":
            continue
        try:
            rates[row[0].split()[0].lower()] = float(row[1])
        except ValueError:
            continue
    return rates


def _check_benchmark(address: str, port: int, clients: int, requests: int, pipeline: int,
                     tests: Sequence[str], keyspace: int | None, timeout_s: float) -> tuple[str, ...]:
    """Raise ValueError for anything outside the lab's bounds; the tests as a tuple."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"address {address!r}: use a literal lab IP address, not a name") from None
    check_lab_address(address, what="redis-benchmark address")
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} out of range 1..65535")
    for name, value, bound in (("clients", clients, MAX_CLIENTS), ("requests", requests, MAX_REQUESTS),
                               ("pipeline", pipeline, MAX_PIPELINE), ("timeout_s", timeout_s, MAX_SECONDS)):
        if not 0 < value <= bound:
            raise ValueError(f"{name} must be in 1..{bound} (the lab's bound), got {value}")
    if keyspace is not None and keyspace < 1:
        raise ValueError(f"keyspace must be positive, got {keyspace}")
    tests = tuple(t.lower() for t in ([tests] if isinstance(tests, str) else tests))
    unknown = sorted(set(tests) - BENCHMARK_TESTS)
    if not tests or unknown:
        raise ValueError(f"tests {unknown or '(none)'}: use redis-benchmark's own names, "
                         f"e.g. {', '.join(sorted(BENCHMARK_TESTS))}")
    return tests


def _program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise LabError(f"{name} is not installed: apt-get install redis-server redis-tools "
                       "(or run deploy/install-deps.sh)")
    return path


def wait_until_quiet(read: Callable[[], Any], timeout: float, quiet: float) -> tuple[Any, float]:
    """Poll ``read()`` (e.g. a server's command counts) until its value has not changed for
    ``quiet`` seconds, or ``timeout`` passed: the value then, and when it last changed
    (monotonic). A copy that lags behind the load is over when the target stops gaining."""
    deadline = time.monotonic() + timeout
    value, last_change = read(), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - last_change < quiet:
        time.sleep(0.1)
        now = read()
        if now != value:
            value, last_change = now, time.monotonic()
    return value, last_change
