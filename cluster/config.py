"""The cluster config: one TOML file saying what to copy and how many of each process run.

``load_config(path)`` reads it once and returns frozen, typed data; the annotated example
is ``deploy/cluster-sample.toml``. Every fault is a ``ConfigError`` whose text names the
file, the key path (``copy.copies``) and the fix. Unknown sections and keys are errors, with
the closest known name offered, so a typo never falls back to a default silently.

Checks made at load: types (a TOML boolean is not a number, a float is not a count),
ranges, the ``-x``/``-s``/``-c`` values through the same parsers as the ``tcpcopy`` flags,
both BPF filters compiled, socket paths short enough for AF_UNIX, and ``copy.intercepts``
against ``[intercept]``: both describe the same intercept instances, instance ``i``
listening on ``intercept.bind:intercept.base_port + i`` and capturing shard ``i``.

``[compare]`` turns on answer comparison in every process at once: the owners compare
(``--compare``), the capture workers capture the online server's answers of their shard
sampled by the same rule, and the intercepts send watched answers whole
(``intercept.answer_bytes``, 65536 unless set). Its masks and ``fail_on`` are checked by the
comparison's own parsers where the programs start (``session/comparefiles.py``), so this
module stays below the roles.

Relative paths are taken from the config file's directory.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcpcopy.cluster.options import (DEFAULT_INTERCEPT_PORT, InterceptAddress, Mapping,
                                     OptionError, capture_filter, online_answers_capture_filter,
                                     parse_client_pool, parse_intercepts, parse_mappings)

MAX_INSTANCES = 64        # per role: capture workers, owners, intercepts
INTERCEPT_MAX_PAYLOAD = 1460   # the intercept's --payload limit (intercept.worker.MAX_PAYLOAD)
INTERCEPT_MAX_ANSWER_BYTES = 262_144   # its --answer-bytes limit (intercept.worker.MAX_ANSWER_BYTES)
INTERCEPT_WATCH_MAX = 4096     # its --watch-max default (intercept.routes.DEFAULT_MAX_WATCHED)
COMPARE_ANSWER_BYTES = 65536   # intercept.answer_bytes when [compare] is on and it is not set:
                               # a GRO super-packet's payload whole
COMPARE_MAX_BYTES = 1 << 24    # tcpcopy --compare-bytes limit
UNIX_PATH_MAX = 107       # bytes of an AF_UNIX socket path, without the terminating NUL
HOST_ROLES = ("online", "assistant")
WILDCARD_BINDS = ("0.0.0.0", "::")
# The annotated sample, shipped in the package (tcpcopy/deploy/), so messages name a file
# that exists wherever the package is installed.
SAMPLE = str(Path(__file__).resolve().parent.parent / "deploy" / "cluster-sample.toml")


class ConfigError(ValueError):
    """A config that cannot be used: ``path: key: fault: fix``."""

    def __init__(self, path: str, key: str, fault: str, fix: str):
        self.path, self.key, self.fault, self.fix = path, key, fault, fix
        super().__init__(f"{path}: {key}: {fault}: {fix}" if key else f"{path}: {fault}: {fix}")


# ------------------------------------------------------------------------- typed config

@dataclass(frozen=True, slots=True)
class CopyConfig:
    """What tcpcopy copies; field names follow SessionConfig and FanoutOptions."""

    mappings: tuple[Mapping, ...]                # -x
    intercepts: tuple[InterceptAddress, ...]     # -s, in shard order
    client_pool: tuple[str, ...] = ()            # -c
    copies: int = 1                              # -n
    port_offset: int = 0                         # -f
    instances: int = 1                           # --instances: copiers sharing client addresses
    sample_percent: int = 100                    # -r
    session_timeout: float = 600.0               # -t
    keepalive_timeout: float = 720.0             # -k
    only_full_sessions: bool = False             # -O
    no_wait: bool = False                        # -W
    lonely: bool = False                         # -L
    mtu: int = 1500                              # -M
    fake_syn_mss: int = 1460                     # -D
    memory_limit_mb: int | None = None           # -m (None: no limit)
    buffer_budget_mb: int = 1024                 # --buffer-budget
    shed_after: float = 10.0                     # --shed-after (0: never shed)


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    workers: int = 1
    interface: str = "any"
    filter: str = ""          # the user's -F, without the -x part or the shard part
    all_acks: bool = False    # --all-acks: the clients' pure ACKs are captured too
    buffer_mb: int = 64
    snaplen: int = 262144


@dataclass(frozen=True, slots=True)
class OwnersConfig:
    count: int = 1
    run_dir: str = "/run/tcpcopy"


@dataclass(frozen=True, slots=True)
class InterceptConfig:
    count: int
    interfaces: tuple[str, ...] = ("any",)
    filter: str = ""
    bind: str = "0.0.0.0"
    base_port: int = DEFAULT_INTERCEPT_PORT
    payload: int = 0
    answer_bytes: int = 0          # watched answers sent whole up to this many payload bytes (0: off)
    watch_max: int = INTERCEPT_WATCH_MAX


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    dir: str = "/run/tcpcopy-cluster"
    user: str = ""            # every program drops to this user once its sockets are open ("": stays root)


@dataclass(frozen=True, slots=True)
class StatsConfig:
    endpoint: str = ""        # where the stats hub binds and every process publishes ("": off)
    feed: str = ""            # where the hub re-publishes for top, the exporter, the recorder
                              # ("": ipc://<supervisor.dir>/stats-feed.sock)
    metrics: str = "127.0.0.1:9464"   # where the exporter serves /metrics ("": no exporter)


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """CurveZMQ keys on the control and stats channels (cluster/curve.py)."""

    curve: bool = True        # false: plain channels, each process warns once
    keys_dir: str = ""        # the keygen directory, absolute; "tcpcopy-cluster start" makes it if missing


@dataclass(frozen=True, slots=True)
class ComparisonConfig:
    """[compare]: the owners compare the target's answers with the online server's."""

    percent: int = 0                 # --compare: share of sessions compared (0: off)
    bytes: int = 65536               # --compare-bytes: answer bytes kept per request and side
    masks: tuple[str, ...] = ()      # --compare-mask: regexes masked in both answers
    log_dir: str = ""                # each owner's differences and summary ("": <supervisor.dir>/online/compare)
    fail_on: str = ""                # --fail-on: checked by `tcpcopy-cluster stop` and `compare` ("": no gate)

    @property
    def enabled(self) -> bool:
        return self.percent > 0


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    path: str                 # the file it was loaded from, absolute
    copy: CopyConfig
    capture: CaptureConfig
    owners: OwnersConfig
    intercept: InterceptConfig
    supervisor: SupervisorConfig
    stats: StatsConfig = StatsConfig()
    security: SecurityConfig = SecurityConfig()
    compare: ComparisonConfig = ComparisonConfig()

    def owner_endpoint(self, shard: int) -> str:
        """Where owner ``shard`` binds and every capture worker pushes its flows."""
        return f"ipc://{self.owners.run_dir}/owner-{shard}.sock"

    def owner_endpoints(self) -> tuple[str, ...]:
        return tuple(self.owner_endpoint(n) for n in range(self.owners.count))

    def capture_bpf(self) -> str:
        """The -x filter AND the user's filter; each worker adds its shard expression."""
        return capture_filter(self.copy.mappings, self.capture.filter or None, self.capture.all_acks)

    def intercept_endpoint(self, shard: int) -> str:
        """Where intercept ``shard`` binds its ROUTER."""
        bind = self.intercept.bind
        host = f"[{bind}]" if ":" in bind else bind
        return f"tcp://{host}:{self.intercept.base_port + shard}"

    def stats_feed(self) -> str:
        """Where the stats hub (run on the online host) re-publishes to its consumers."""
        return self.stats.feed or f"ipc://{self.supervisor.dir}/stats-feed.sock"

    def role_dir(self, host_role: str) -> str:
        """The supervisord directory of one host role (both roles may share a file system)."""
        return f"{self.supervisor.dir}/{host_role}"

    def compare_dir(self) -> str:
        """Where each owner writes its differing requests and its comparison summary."""
        return self.compare.log_dir or f"{self.role_dir('online')}/compare"

    def online_answers_bpf(self) -> str:
        """The capture workers' second filter, the online server's answers to the compared
        clients ("" when [compare] is off); each worker adds its shard expression."""
        if not self.compare.enabled:
            return ""
        return online_answers_capture_filter(self.copy.mappings, self.compare.percent)


# ------------------------------------------------------------------------------ schema

REQUIRED = object()


@dataclass(frozen=True, slots=True)
class Key:
    kind: type                 # int, float, bool, str or list (of strings)
    default: Any = REQUIRED
    low: float | None = None   # int: low..high; float: above low, at most high
    high: float | None = None
    example: str = ""          # right-hand side shown in fixes
    flag: str = ""             # the tcpcopy/intercept flag it stands for


SCHEMA: dict[str, dict[str, Key]] = {
    "copy": {
        "mappings": Key(list, example='["80-198.18.0.2:8080"]', flag="-x"),
        "intercepts": Key(list, example='["198.18.2.1:36524"]', flag="-s"),
        "client_pool": Key(list, (), example='["198.18.3.x"]', flag="-c"),
        "copies": Key(int, 1, 1, 64, flag="-n"),
        "port_offset": Key(int, 0, 0, 31, flag="-f"),
        "instances": Key(int, 1, 1, 32, flag="--instances"),
        "sample_percent": Key(int, 100, 1, 100, flag="-r"),
        "session_timeout": Key(float, 600.0, 0.0, 1e9, flag="-t"),
        "keepalive_timeout": Key(float, None, 0.0, 1e9, example="720.0", flag="-k"),
        "only_full_sessions": Key(bool, False, flag="-O"),
        "no_wait": Key(bool, False, flag="-W"),
        "lonely": Key(bool, False, flag="-L"),
        "mtu": Key(int, 1500, 576, 65535, flag="-M"),
        "fake_syn_mss": Key(int, 1460, 536, 65495, flag="-D"),
        "memory_limit_mb": Key(int, 0, 0, 1 << 20, example="2048", flag="-m"),
        "buffer_budget_mb": Key(int, 1024, 16, 1 << 20, flag="--buffer-budget"),
        "shed_after": Key(float, 10.0, 0.0, 3600.0, flag="--shed-after"),
    },
    "capture": {
        "workers": Key(int, 1, 1, MAX_INSTANCES),
        "interface": Key(str, "any", example='"eth0"', flag="-i"),
        "filter": Key(str, "", example='"not src net 198.18.9.0/24"', flag="-F"),
        "all_acks": Key(bool, False, flag="--all-acks"),
        "buffer_mb": Key(int, 64, 1, 4096, flag="-B"),
        "snaplen": Key(int, 262144, 128, 262144, flag="-S"),
    },
    "owners": {
        "count": Key(int, 1, 1, MAX_INSTANCES),
        "run_dir": Key(str, "/run/tcpcopy", example='"/run/tcpcopy"'),
    },
    "intercept": {
        "count": Key(int, None, 1, MAX_INSTANCES, example="2"),
        "interface": Key(str, "any", example='"eth0"', flag="intercept -i"),
        "filter": Key(str, "", example='"tcp and src port 8080"', flag="intercept -F"),
        "bind": Key(str, "0.0.0.0", example='"0.0.0.0"', flag="intercept -b"),
        "base_port": Key(int, DEFAULT_INTERCEPT_PORT, 1, 65535, flag="intercept -p"),
        "payload": Key(int, 0, 0, INTERCEPT_MAX_PAYLOAD, flag="intercept --payload"),
        "answer_bytes": Key(int, None, 0, INTERCEPT_MAX_ANSWER_BYTES, example=str(COMPARE_ANSWER_BYTES),
                            flag="intercept --answer-bytes"),
        "watch_max": Key(int, INTERCEPT_WATCH_MAX, 0, 100_000_000, flag="intercept --watch-max"),
    },
    "supervisor": {
        "dir": Key(str, "/run/tcpcopy-cluster", example='"/run/tcpcopy-cluster"'),
        "user": Key(str, "", example='"tcpcopy"', flag="--user"),
    },
    "stats": {
        "endpoint": Key(str, "", example='"tcp://198.18.2.2:36600"'),
        "feed": Key(str, "", example='"ipc:///run/tcpcopy-cluster/stats-feed.sock"'),
        "metrics": Key(str, "127.0.0.1:9464", example='"127.0.0.1:9464"'),
    },
    "security": {
        "curve": Key(bool, True),
        "keys_dir": Key(str, "keys", example='"/etc/tcpcopy/keys"'),
    },
    "compare": {
        "percent": Key(int, 0, 0, 100, example="10", flag="--compare"),
        "bytes": Key(int, 65536, 256, COMPARE_MAX_BYTES, flag="--compare-bytes"),
        "masks": Key(list, (), example=r'["[0-9]{10}", "id=[0-9a-f]+"]', flag="--compare-mask"),
        "log_dir": Key(str, "", example='"/var/log/tcpcopy/compare"'),
        "fail_on": Key(str, "", example='"differs>0.001,no_answer>0"', flag="--fail-on"),
    },
}


# ----------------------------------------------------------------------------- loading

def load_config(path: str | Path) -> ClusterConfig:
    """Read, type-check and validate the cluster config at ``path``."""
    source = Path(path).absolute()
    document = _parse_toml(source)
    _check_sections(str(source), document)
    values = {name: _Section(str(source), name, document.get(name, {})).read() for name in SCHEMA}
    return _build(str(source), source.parent, values)


def _parse_toml(source: Path) -> dict:
    try:
        with open(source, "rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError(str(source), "", f"cannot read the cluster config ({exc.strerror})",
                          f"give the path of an existing file (an annotated example: {SAMPLE})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(source), "", f"not valid TOML ({exc})",
                          "fix the syntax there (see https://toml.io)") from None
    except UnicodeDecodeError:
        raise ConfigError(str(source), "", "not UTF-8 text", "save the file as UTF-8") from None


def _check_sections(source: str, document: dict) -> None:
    for name, value in document.items():
        if name not in SCHEMA:
            homes = [f"[{section}]" for section, keys in SCHEMA.items() if name in keys]
            fix = (f"move it under {' or '.join(homes)}" if homes
                   else "remove it; the sections are " + ", ".join(f"[{s}]" for s in SCHEMA))
            raise ConfigError(source, name, f"unknown section or top-level key{_did_you_mean(name, SCHEMA)}", fix)
        if not isinstance(value, dict):
            raise ConfigError(source, name, f"is {_toml_type(value)}, not a section",
                              f"write its keys under a [{name}] header")
    if "copy" not in document:
        raise ConfigError(source, "copy", "the [copy] section is missing",
                          "add it with at least mappings and intercepts, as in " + SAMPLE)


def _did_you_mean(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _toml_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array",
             dict: "a table"}
    return next((label for kind, label in names.items() if isinstance(value, kind)), type(value).__name__)


class _Section:
    """The keys of one section, type- and range-checked against SCHEMA."""

    def __init__(self, source: str, name: str, table: dict):
        self.source, self.name, self.table, self.schema = source, name, table, SCHEMA[name]

    def fail(self, key: str, fault: str, fix: str):
        raise ConfigError(self.source, f"{self.name}.{key}", fault, fix)

    def read(self) -> dict[str, Any]:
        for key in self.table:
            if key not in self.schema:
                self.fail(key, f"unknown key{_did_you_mean(key, self.schema)}",
                          f"remove it; [{self.name}] takes " + ", ".join(self.schema))
        return {key: self.value(key, spec) for key, spec in self.schema.items()}

    def value(self, key: str, spec: Key) -> Any:
        if key not in self.table:
            if spec.default is REQUIRED:
                self.fail(key, "is required", f"add it to [{self.name}], e.g. {key} = {self.example(key, spec)}")
            return spec.default
        value = self.table[key]
        self.check_type(key, spec, value)
        if spec.kind in (int, float):
            self.check_range(key, spec, value)
        return float(value) if spec.kind is float else value

    def check_type(self, key: str, spec: Key, value: Any) -> None:
        kinds = {int: (int,), float: (int, float), bool: (bool,), str: (str,), list: (list,)}[spec.kind]
        wrong = not isinstance(value, kinds) or (spec.kind is not bool and isinstance(value, bool))
        if spec.kind is list and not wrong:
            wrong = not all(isinstance(item, str) for item in value)
        if wrong:
            want = {int: "a whole number", float: "a number", bool: "true or false", str: "a string",
                    list: "an array of strings"}[spec.kind]
            self.fail(key, f"is {_toml_type(value)}, expected {want}",
                      f"write it as {key} = {self.example(key, spec)}")
        if spec.kind is str and any(ord(char) < 32 for char in value):
            self.fail(key, "contains a control character (a newline?)", "write it on one line")

    def check_range(self, key: str, spec: Key, value: float) -> None:
        if spec.kind is int and spec.low <= value <= spec.high:
            return
        if spec.kind is float and math.isfinite(value) and spec.low < value <= spec.high:
            return
        span = f"{spec.low}..{spec.high}" if spec.kind is int else f"greater than {spec.low:g} (seconds)"
        flag = f" (like {spec.flag})" if spec.flag else ""
        self.fail(key, f"{value} is out of range", f"give a value {span}{flag}, e.g. {key} = {self.example(key, spec)}")

    @staticmethod
    def example(key: str, spec: Key) -> str:
        if spec.example:
            return spec.example
        if spec.kind is bool:
            return "true"
        default = spec.default if spec.default not in (REQUIRED, None) else spec.low
        return repr(default) if spec.kind is float else str(default)


# ---------------------------------------------------------------------------- building

def _build(source: str, base: Path, values: dict[str, dict[str, Any]]) -> ClusterConfig:
    copy = _copy(source, values["copy"])
    owners = OwnersConfig(values["owners"]["count"],
                          _directory(source, base, "owners.run_dir", values["owners"]["run_dir"]))
    supervisor = SupervisorConfig(_directory(source, base, "supervisor.dir", values["supervisor"]["dir"]),
                                  _user_name(source, values["supervisor"]["user"]))
    compare = _compare(source, base, values["compare"])
    config = ClusterConfig(source, copy, _capture(source, values["capture"]), owners,
                           _intercept(source, copy, values["intercept"], compare), supervisor,
                           StatsConfig(**values["stats"]), _security(source, base, values["security"]), compare)
    _check_filters(source, config)
    _check_socket_paths(source, config)
    _check_intercepts_match(source, config)
    return config


def _copy(source: str, raw: dict[str, Any]) -> CopyConfig:
    mappings = tuple(_one(source, f"copy.mappings[{i}]", text, parse_mappings)
                     for i, text in enumerate(raw["mappings"]))
    if not mappings:
        raise ConfigError(source, "copy.mappings", "is empty",
                          'list what to copy where, e.g. mappings = ["80-198.18.0.2:8080"]')
    intercepts = tuple(_one(source, f"copy.intercepts[{i}]", text, parse_intercepts)
                       for i, text in enumerate(raw["intercepts"]))
    if not intercepts:
        raise ConfigError(source, "copy.intercepts", "is empty",
                          'list the intercept instances, e.g. intercepts = ["198.18.2.1:36524"]')
    if len(set(intercepts)) != len(intercepts):
        raise ConfigError(source, "copy.intercepts", "lists the same intercept twice",
                          "give each intercept instance its own address:port")
    pool = _client_pool(source, raw["client_pool"], {m.target_ip for m in mappings})
    session_timeout = raw["session_timeout"]
    keepalive = raw["keepalive_timeout"] or session_timeout + 120
    if raw["instances"] > 1 and raw["port_offset"] >= raw["instances"]:
        raise ConfigError(source, "copy.port_offset", f"{raw['port_offset']} is not below copy.instances "
                          f"({raw['instances']})", "give each copier sharing the client addresses its own "
                          "port_offset 0..instances-1")
    return CopyConfig(mappings, intercepts, pool, raw["copies"], raw["port_offset"], raw["instances"], raw["sample_percent"],
                      session_timeout, keepalive, raw["only_full_sessions"], raw["no_wait"], raw["lonely"],
                      raw["mtu"], raw["fake_syn_mss"], raw["memory_limit_mb"] or None,
                      raw["buffer_budget_mb"], raw["shed_after"])


def _one(source: str, key: str, text: str, parse):
    """One entry of a list parsed by a flag parser; one value per entry."""
    try:
        parsed = parse(text)
    except OptionError as exc:
        raise ConfigError(source, key, str(exc), "correct this entry") from None
    if len(parsed) != 1:
        raise ConfigError(source, key, f"{text!r} holds {len(parsed)} values",
                          "put each one in its own string of the array")
    return parsed[0]


def _client_pool(source: str, items: list[str], targets: set[str]) -> tuple[str, ...]:
    if not items:
        return ()
    try:
        return parse_client_pool(",".join(items), targets)
    except OptionError as exc:
        raise ConfigError(source, "copy.client_pool", str(exc), "correct the list") from None


def _directory(source: str, base: Path, key: str, text: str) -> str:
    """An absolute directory; a relative one is taken from the config file's directory."""
    if not text:
        section, name = key.split(".")
        raise ConfigError(source, key, "is empty", f"give a directory, e.g. {name} = {SCHEMA[section][name].example}")
    return str(base / text)


def _user_name(source: str, text: str) -> str:
    """A user name as useradd accepts it (or a uid); whether it exists is checked where the
    programs run (tcpcopy-cluster start, and each program)."""
    if text and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?", text):
        raise ConfigError(source, "supervisor.user", f"{text!r} is not a user name",
                          'name an unprivileged user, e.g. user = "tcpcopy", or "" to keep root')
    return text


def _capture(source: str, raw: dict[str, Any]) -> CaptureConfig:
    if not raw["interface"]:
        raise ConfigError(source, "capture.interface", "is empty",
                          'give the interface the client traffic arrives on, e.g. interface = "eth0" (or "any")')
    return CaptureConfig(**raw)


def _intercept(source: str, copy: CopyConfig, raw: dict[str, Any], compare: ComparisonConfig) -> InterceptConfig:
    interfaces = tuple(name.strip() for name in raw["interface"].split(","))
    if not all(interfaces):
        raise ConfigError(source, "intercept.interface", f"{raw['interface']!r} has an empty device name",
                          'give device names separated by commas, e.g. interface = "eth0,eth1" (or "any")')
    bind = _bind_address(source, raw["bind"])
    count = raw["count"] or len(copy.intercepts)
    if raw["base_port"] + count - 1 > 65535:
        raise ConfigError(source, "intercept.base_port", f"{count} instances from port {raw['base_port']} "
                          "go past 65535", "lower base_port or intercept.count")
    bpf = raw["filter"] or _response_filter(copy.mappings)
    answer_bytes = raw["answer_bytes"]
    if answer_bytes is None:
        answer_bytes = COMPARE_ANSWER_BYTES if compare.enabled else 0
    elif compare.enabled and answer_bytes == 0:
        raise ConfigError(source, "intercept.answer_bytes", "0 keeps the target's answers from the owners, "
                          f"but compare.percent is {compare.percent}",
                          f"remove the line (with [compare] it is {COMPARE_ANSWER_BYTES}) or give the payload "
                          f"bytes a packet, e.g. answer_bytes = {COMPARE_ANSWER_BYTES}")
    if compare.enabled and raw["watch_max"] == 0:
        raise ConfigError(source, "intercept.watch_max", f"0 refuses every session the owners compare, but "
                          f"compare.percent is {compare.percent}",
                          f"remove the line (default {INTERCEPT_WATCH_MAX}) or give the sessions one owner may "
                          "compare at once, e.g. watch_max = 4096")
    return InterceptConfig(count, interfaces, bpf, bind, raw["base_port"], raw["payload"],
                           answer_bytes, raw["watch_max"])


def _compare(source: str, base: Path, raw: dict[str, Any]) -> ComparisonConfig:
    """[compare]: the companions of percent need it; the masks and the gate are parsed where
    the comparison runs (session/comparefiles.py)."""
    if not raw["percent"]:
        for key in ("masks", "fail_on", "log_dir"):
            if raw[key]:
                raise ConfigError(source, f"compare.{key}", "is set but compare.percent is 0 (comparison off)",
                                  "set percent, the share of sessions compared, e.g. percent = 10, "
                                  f"or remove {key}")
    log_dir = str(base / raw["log_dir"]) if raw["log_dir"].strip() else ""
    return ComparisonConfig(raw["percent"], raw["bytes"], tuple(raw["masks"]), log_dir, raw["fail_on"].strip())


def _security(source: str, base: Path, raw: dict[str, Any]) -> SecurityConfig:
    if not raw["keys_dir"].strip():
        raise ConfigError(source, "security.keys_dir", "is empty",
                          'name the key directory, e.g. keys_dir = "/etc/tcpcopy/keys", or set curve = false')
    return SecurityConfig(raw["curve"], str((base / raw["keys_dir"]).absolute()))


def _bind_address(source: str, text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ConfigError(source, "intercept.bind", f"{text!r} is not an IP address",
                          'give one of the assistant host\'s addresses, or "0.0.0.0" for all') from None


def _response_filter(mappings: tuple[Mapping, ...]) -> str:
    """The default intercept filter: what the targets send (their address and port)."""
    terms = dict.fromkeys(f"(src host {m.target_ip} and src port {m.target_port})" for m in mappings)
    return "tcp and (" + " or ".join(terms) + ")"


def _check_filters(source: str, config: ClusterConfig) -> None:
    if not _compiles(config.capture_bpf()):
        raise ConfigError(source, "capture.filter", f"{config.capture.filter!r} is not a valid pcap filter "
                          "(it is ANDed with the filter built from copy.mappings)",
                          "fix the expression (see pcap-filter(7)), e.g. filter = \"not src net 198.18.9.0/24\"")
    if not _compiles(config.intercept.filter):
        raise ConfigError(source, "intercept.filter", f"{config.intercept.filter!r} is not a valid pcap filter",
                          "fix the expression (see pcap-filter(7)), e.g. filter = \"tcp and src port 8080\"")


def _compiles(bpf: str) -> bool:
    """The filter compiles for a link type a capture device can have (no device opened)."""
    from tcpcopy.cluster.bpfcheck import filter_compiles   # needs libpcap: imported when used

    return filter_compiles(bpf)


def _check_socket_paths(source: str, config: ClusterConfig) -> None:
    longest = {"owners.run_dir": config.owner_endpoint(config.owners.count - 1)[len("ipc://"):],
               "supervisor.dir": f"{config.role_dir('assistant')}/supervisor.sock"}
    for key, path in longest.items():
        if len(path.encode()) > UNIX_PATH_MAX:
            raise ConfigError(source, key, f"the socket path {path!r} is longer than {UNIX_PATH_MAX} bytes "
                              "(the AF_UNIX limit)", "choose a shorter directory")


def _check_intercepts_match(source: str, config: ClusterConfig) -> None:
    """copy.intercepts and [intercept] describe the same instances: address i is instance i."""
    listed, spec = config.copy.intercepts, config.intercept
    same = ("they describe the same intercept instances (copy.intercepts[i] is instance i, "
            "listening on intercept.bind:intercept.base_port+i)")
    if len(listed) != spec.count:
        raise ConfigError(source, "copy.intercepts", f"lists {len(listed)} address(es) but intercept.count is "
                          f"{spec.count}; {same}", "list one address per instance, or set intercept.count = "
                          f"{len(listed)}")
    for shard, address in enumerate(listed):
        if address.port != spec.base_port + shard:
            raise ConfigError(source, f"copy.intercepts[{shard}]", f"port {address.port} is not "
                              f"intercept.base_port+{shard} = {spec.base_port + shard}; {same}",
                              f"use port {spec.base_port + shard} or change intercept.base_port")
        if spec.bind not in WILDCARD_BINDS and address.host != spec.bind:
            raise ConfigError(source, f"copy.intercepts[{shard}]", f"address {address.host} is not "
                              f"intercept.bind = {spec.bind}; {same}",
                              f"use {spec.bind}, or set intercept.bind = \"0.0.0.0\"")
