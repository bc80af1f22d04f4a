"""CurveZMQ on the control and stats channels.

- key files, the keygen layout and the ZAP decision (pure, with real files in tmp_path);
- the ``[security]`` section of the cluster config;
- the command lines: a bad key is one line naming the file and the fix, exit 2;
- a real ``intercept`` process with keys on loopback (its capture on ``lo`` sees nothing of
  ours): a real owner (InterceptLinks) with a listed key says HELLO and REGISTERs, peers
  without keys or with an unlisted key are refused and counted, and the intercept's
  counters reach a keyed stats listener (a real Aggregator) over CURVE too.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import zmq
from zmq.utils import z85

from tcpcopy.cluster import curve, wire
from tcpcopy.cluster.config import ConfigError, load_config
from tcpcopy.cluster.curve import KeyFileError, KeyLayout
from tcpcopy.cluster.options import InterceptAddress
from tcpcopy.cluster.ops.aggregator import Aggregator
from tcpcopy.cluster.stats import StatsPublisher
from tcpcopy.session.intercepts import InterceptLinks
from tests.intercept.test_worker import endpoint, hello_from

E = endpoint(40000)


@pytest.fixture
def keys(tmp_path) -> KeyLayout:
    curve.keygen(str(tmp_path / "keys"))
    return KeyLayout(str(tmp_path / "keys"))


# ---------------------------------------------------------------- key files

def test_keygen_writes_private_secrets_and_the_allowed_directories(keys):
    mode = lambda path: os.stat(path).st_mode & 0o777
    assert mode(keys.directory) == 0o700
    assert mode(keys.allowed_owners) == 0o700 and mode(keys.allowed_publishers) == 0o700
    for name in ("intercept", "stats", "online"):
        assert mode(keys.secret(name)) == 0o600 and mode(keys.public(name)) == 0o644
        pair = curve.load_secret(keys.secret(name))
        assert curve.load_public(keys.public(name)) == pair.public
    assert sorted(os.listdir(keys.allowed_owners)) == ["online.key"]
    assert sorted(os.listdir(keys.allowed_publishers)) == ["intercept.key", "online.key"]
    owner = keys.owner_keys()
    assert owner.server_public == curve.load_public(keys.public("intercept"))
    assert set(keys.intercept_keys().allowed) == {z85.decode(owner.pair.public)}


def test_keygen_files_are_zeromq_certificates(keys):
    import zmq.auth
    public, secret = zmq.auth.load_certificate(keys.secret("online"))
    assert curve.load_secret(keys.secret("online")) == curve.KeyPair(public, secret)


def test_keygen_refuses_to_overwrite_a_client_unless_forced_and_adds_new_clients(keys):
    before = Path(keys.secret("online")).read_text()
    with pytest.raises(KeyFileError, match="online.key_secret exists.*--force"):
        curve.keygen(keys.directory)
    assert Path(keys.secret("online")).read_text() == before
    intercept_before = Path(keys.secret("intercept")).read_text()
    said = curve.keygen(keys.directory, ("online2",))
    assert any("kept" in line and "intercept" in line for line in said)
    assert Path(keys.secret("intercept")).read_text() == intercept_before
    assert sorted(os.listdir(keys.allowed_owners)) == ["online.key", "online2.key"]
    curve.keygen(keys.directory, force=True)
    assert Path(keys.secret("online")).read_text() != before
    assert Path(keys.secret("intercept")).read_text() != intercept_before


@pytest.mark.parametrize("name", ["", "Online", "intercept", "../x", "a" * 40])
def test_keygen_refuses_bad_client_names(tmp_path, name):
    with pytest.raises(KeyFileError, match="--client"):
        curve.keygen(str(tmp_path / "k"), (name,))


def test_a_secret_key_open_to_others_is_refused(keys):
    os.chmod(keys.secret("online"), 0o644)
    with pytest.raises(KeyFileError, match=r"online.key_secret: .*open to other users \(mode 0644\): chmod 600"):
        curve.load_secret(keys.secret("online"))
    os.chmod(keys.secret("online"), 0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        curve.load_secret(keys.secret("online"))


@pytest.mark.parametrize(("content", "fault"), [
    ("hello\n", "not a CURVE key file"),
    ('curve\n    secret-key = "short"\n', "not 40 Z85 characters"),
    ("x" * 5000, "larger than 4096 bytes"),
])
def test_a_malformed_key_file_is_named_with_the_fix(tmp_path, content, fault):
    path = tmp_path / "bad.key_secret"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError) as caught:
        curve.load_secret(path)
    assert str(caught.value).startswith(f"{path}: ") and fault in str(caught.value)
    assert "keygen" in str(caught.value)


def test_missing_public_half_given_and_mismatched_pair_are_refused(keys, tmp_path):
    with pytest.raises(KeyFileError, match="no such file.*keygen"):
        curve.load_secret(tmp_path / "nope.key_secret")
    with pytest.raises(KeyFileError, match="holds no secret key.*public half"):
        curve.load_secret(keys.public("online"))
    mixed = tmp_path / "mixed.key_secret"
    other = curve.load_secret(keys.secret("stats"))
    text = Path(keys.secret("online")).read_text()
    mixed.write_text(re.sub(r'secret-key = "[^"]+"', f'secret-key = "{other.secret.decode()}"', text))
    mixed.chmod(0o600)
    with pytest.raises(KeyFileError, match="does not belong to its secret key"):
        curve.load_secret(mixed)
    with pytest.raises(KeyFileError, match="not a plain file"):
        curve.load_public(tmp_path)


def test_a_bare_z85_key_is_read_too(tmp_path):
    public, secret = zmq.curve_keypair()
    (tmp_path / "a.key").write_bytes(public + b"\n")
    (tmp_path / "a.key_secret").write_bytes(secret)
    (tmp_path / "a.key_secret").chmod(0o600)
    assert curve.load_public(tmp_path / "a.key") == public
    assert curve.load_secret(tmp_path / "a.key_secret") == curve.KeyPair(public, secret)


def test_allowed_directory_faults(keys, tmp_path):
    with pytest.raises(KeyFileError, match="no such file"):
        curve.load_allowed(tmp_path / "none")
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="holds no public key"):
        curve.load_allowed(empty)
    os.chmod(keys.allowed_owners, 0o777)
    with pytest.raises(KeyFileError, match="other users may write there.*chmod 700"):
        curve.load_allowed(keys.allowed_owners)
    os.chmod(keys.allowed_owners, 0o755)
    assert list(curve.load_allowed(keys.allowed_owners).values()) == ["online.key"]
    with pytest.raises(KeyFileError, match="a secret key in the allowed-keys directory"):
        curve.load_allowed(keys.directory)


def test_zap_admits_listed_curve_keys_only():
    listed, unlisted = os.urandom(32), os.urandom(32)
    allowed = {listed: "online.key"}
    request = [b"1.0", b"7", b"tcpcopy-control", b"127.0.0.1", b"", b"CURVE"]
    assert curve.zap_decision(allowed, b"tcpcopy-control", request + [listed]) == (b"200", b"OK", b"online.key")
    assert curve.zap_decision(allowed, b"tcpcopy-control", request + [unlisted])[0] == b"400"
    assert curve.zap_decision(allowed, b"tcpcopy-stats", request + [listed])[0] == b"400"
    assert curve.zap_decision(allowed, b"tcpcopy-control", request[:5] + [b"PLAIN", listed])[0] == b"400"
    assert curve.zap_decision(allowed, b"tcpcopy-control", request)[0] == b"400"


# ---------------------------------------------------------------- the cluster config

def write_config(tmp_path: Path, security: str = "") -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(textwrap.dedent("""\
        [copy]
        mappings = ["80-198.18.0.2:8080"]
        intercepts = ["198.18.2.1:36524"]
        """) + security)
    return path


def test_security_defaults_to_curve_with_keys_beside_the_config(tmp_path):
    config = load_config(write_config(tmp_path))
    assert config.security.curve is True and config.security.keys_dir == str(tmp_path / "keys")


def test_security_section_is_typed_and_checked(tmp_path):
    config = load_config(write_config(tmp_path, '[security]\ncurve = false\nkeys_dir = "/etc/tcpcopy/keys"\n'))
    assert config.security.curve is False and config.security.keys_dir == "/etc/tcpcopy/keys"
    with pytest.raises(ConfigError, match=r"security.curve: is a string, expected true or false"):
        load_config(write_config(tmp_path, '[security]\ncurve = "yes"\n'))
    with pytest.raises(ConfigError, match=r"security.key_dir: unknown key \(did you mean 'keys_dir'\?\)"):
        load_config(write_config(tmp_path, '[security]\nkey_dir = "k"\n'))
    with pytest.raises(ConfigError, match="security.keys_dir: is empty"):
        load_config(write_config(tmp_path, '[security]\nkeys_dir = ""\n'))


# ---------------------------------------------------------------- command lines

def run(module: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout)


def one_line_error(done: subprocess.CompletedProcess, *names: str) -> None:
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for name in names:
        assert name in lines[0], lines[0]


def test_intercept_key_faults_exit_2_naming_the_file_and_the_fix(keys, tmp_path):
    intercept = "tcpcopy.intercept.main"
    base = ["-F", "tcp", "-p", "1"]
    one_line_error(run(intercept, *base, "--key", keys.secret("intercept")), "--key and --allow-keys go together")
    one_line_error(run(intercept, *base, "--key", str(tmp_path / "gone"), "--allow-keys", keys.allowed_owners),
                   str(tmp_path / "gone"), "no such file", "keygen")
    os.chmod(keys.secret("intercept"), 0o604)
    one_line_error(run(intercept, *base, "--key", keys.secret("intercept"), "--allow-keys", keys.allowed_owners),
                   keys.secret("intercept"), "open to other users", "chmod 600")
    os.chmod(keys.secret("intercept"), 0o600)
    one_line_error(run(intercept, *base, "--key", keys.public("intercept"), "--allow-keys", keys.allowed_owners),
                   "holds no secret key")


def test_tcpcopy_key_faults_exit_2(keys, tmp_path):
    tcpcopy = "tcpcopy.session.main"
    base = ["-x", "80-198.18.0.2:8080", "-s", "127.0.0.1"]
    one_line_error(run(tcpcopy, *base, "--server-key", keys.public("intercept")), "--server-key needs --key")
    one_line_error(run(tcpcopy, *base, "--key", keys.secret("online")), "--key needs --server-key")
    (tmp_path / "junk.key").write_text("junk")
    one_line_error(run(tcpcopy, *base, "--key", keys.secret("online"), "--server-key", str(tmp_path / "junk.key")),
                   str(tmp_path / "junk.key"), "not a CURVE key file")


def test_cluster_keygen_command_refuses_a_second_run(tmp_path):
    first = run("tcpcopy.cluster.ops.main", "keygen", str(tmp_path / "k"))
    assert first.returncode == 0 and "made" in first.stdout and "allowed-owners" in first.stdout, first
    one_line_error(run("tcpcopy.cluster.ops.main", "keygen", str(tmp_path / "k")), "exists", "--force")


def test_cluster_start_makes_keys_that_every_role_can_read(tmp_path):
    from tcpcopy.cluster.ops.main import prepare_keys
    config = load_config(write_config(tmp_path, '[stats]\nendpoint = "ipc:///tmp/x"\n'))
    said = prepare_keys(config, "assistant")
    assert len(said) == 1 and "made CurveZMQ keys in" in said[0] and "copy that directory" in said[0]
    assert prepare_keys(config, "online") == []      # the same keys, not made again
    os.unlink(KeyLayout(config.security.keys_dir).secret("online"))
    with pytest.raises(KeyFileError, match="online.key_secret: no such file"):
        prepare_keys(config, "online")


# ---------------------------------------------------------------- real processes on loopback

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class InterceptProcess:
    """``python -m tcpcopy.intercept.main`` on 127.0.0.1, capturing on lo (for nothing of
    ours: the filter names a port no test uses), its log in a file."""

    def __init__(self, tmp_path: Path, *extra: str) -> None:
        self.port = free_port()
        self.log_path = tmp_path / f"intercept-{self.port}.log"
        argv = [sys.executable, "-m", "tcpcopy.intercept.main", "-i", "lo", "-F", "tcp and src port 9",
                "-b", "127.0.0.1", "-p", str(self.port), "--identity", "intercept-curve", *extra]
        with open(self.log_path, "w") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while "listening on" not in self.log():
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> dict[str, int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        lines = re.findall(r"stats: (.*)", self.log())
        return {name: int(value) for name, value in re.findall(r"(\w+)=(\d+)", lines[-1])} if lines else {}


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="intercept's live capture (on lo) needs root")


def dealer(context: zmq.Context, port: int, keys: curve.ClientKeys | None = None) -> zmq.Socket:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        curve.connect_with_keys(sock, keys)
    sock.connect(f"tcp://127.0.0.1:{port}")
    return sock


def stranger_keys(server_public: bytes) -> curve.ClientKeys:
    return curve.ClientKeys(curve.KeyPair(*zmq.curve_keypair()), server_public)


WAITED_FOR = ("registered", "curve_refused_plain", "curve_refused_handshake", "curve_refused_key")


def refused_strangers_counted(figures: dict) -> bool:
    """The plain peer shows as refused_plain, or as refused_handshake when it saw the mismatch
    first and hung up (then this side has only a broken pipe); the unlisted key as refused_key."""
    plain = figures.get("curve_refused_plain", 0) + figures.get("curve_refused_handshake", 0)
    return figures.get("registered") == 1 and plain >= 1 and figures.get("curve_refused_key", 0) >= 1


@needs_root
def test_curve_round_trip_between_real_processes_refuses_strangers(keys, tmp_path):
    context = zmq.Context()
    stats_endpoint = f"tcp://127.0.0.1:{free_port()}"
    aggregator = Aggregator(stats_endpoint, context=context, keys=keys.listener_keys())
    intercept = InterceptProcess(tmp_path, "--key", keys.secret("intercept"), "--allow-keys", keys.allowed_owners,
                                 "--stats", stats_endpoint, "--stats-server-key", keys.public("stats"))
    links = InterceptLinks(context, [InterceptAddress("127.0.0.1", intercept.port)], "owner-0@online1",
                           keys=keys.owner_keys())
    plain, unlisted = dealer(context, intercept.port), dealer(context, intercept.port, stranger_keys(
        keys.owner_keys().server_public))
    rogue = StatsPublisher(stats_endpoint, "owner", "rogue@attacker", context=context,
                           keys=stranger_keys(curve.load_public(keys.public("stats"))))
    try:
        links.say_hello()
        plain.send(hello_from("plain@attacker"))
        unlisted.send(hello_from("unlisted@attacker"))
        sock, now = links.links[0].socket, 0.0
        deadline = time.monotonic() + 10
        while not links.links[0].up:                      # the intercept's HELLO, over CURVE
            assert time.monotonic() < deadline, intercept.log()
            now += 1.0
            links.tick(now)                               # a link that is down says HELLO again
            if sock.poll(200):
                links.receive(sock, now, list)
        links.register(E)
        links.flush()
        figures = {}
        deadline = time.monotonic() + 30
        while not refused_strangers_counted(figures):
            assert time.monotonic() < deadline, ({name: figures.get(name) for name in WAITED_FOR},
                                                 [line for line in intercept.log().splitlines() if "WARN" in line])
            rogue.publish({"sessions_active": 666})
            aggregator.poll(0.2)
            rows = {row["identity"]: row for row in aggregator.snapshot_json()["processes"]}
            figures = rows.get("intercept-curve", {}).get("counters", {})
        assert figures["owners"] == 1 and figures["curve_admitted"] >= 1
        assert set(rows) == {"intercept-curve"}              # the rogue publisher was never heard
        assert aggregator.refused() >= 1
        assert not plain.poll(300) and not unlisted.poll(0)  # neither got a HELLO
    finally:
        counters = intercept.stop()
        for sock in (plain, unlisted):
            sock.close(linger=0)
        links.close("test over")
        rogue.close()
        aggregator.close()
        context.destroy(linger=0)
    log = intercept.log()
    assert counters["registers"] == 1 and counters["owners"] == 1, log
    assert counters["refused_key"] >= 1 and counters["refused_plain"] + counters["refused_handshake"] >= 1, log
    refused = [line for line in log.splitlines() if "is not in the allowed keys" in line]
    assert len(refused) == 1 and "127.0.0.1" in refused[0], log
    assert "owner owner-0@online1 connected from 127.0.0.1, key online.key" in log
    assert "neither authenticated nor encrypted" not in log


@needs_root
def test_without_keys_intercept_warns_once_and_a_keyed_owner_is_refused(keys, tmp_path):
    intercept = InterceptProcess(tmp_path)
    context = zmq.Context()
    keyed = dealer(context, intercept.port, keys.owner_keys())
    try:
        keyed.send(hello_from())
        assert not keyed.poll(1000)                   # a keyed owner cannot talk to a plain intercept
        plain = dealer(context, intercept.port)
        plain.send(hello_from())
        assert plain.poll(5000) and wire.decode(plain.recv())[0] == wire.HELLO   # the C tool's way works
        plain.close(linger=0)
    finally:
        intercept.stop()
        keyed.close(linger=0)
        context.destroy(linger=0)
    warnings = [line for line in intercept.log().splitlines() if "neither authenticated nor encrypted" in line]
    assert len(warnings) == 1 and "--allow-keys" in warnings[0] and "keygen" in warnings[0]


@needs_root
def test_tcpcopy_check_greets_a_keyed_intercept_with_its_keys_and_explains_a_refusal(keys, tmp_path):
    from tcpcopy.session.doctor import Doctor
    from tcpcopy.session.main import parse_args
    intercept = InterceptProcess(tmp_path, "--key", keys.secret("intercept"), "--allow-keys", keys.allowed_owners)
    flags = ["-x", "80-198.18.0.2:8080", "-s", f"127.0.0.1:{intercept.port}", "--check"]
    doctors = []
    try:
        keyed = Doctor(parse_args(flags + ["--server-key", keys.public("intercept"), "--key", keys.secret("online")]))
        doctors.append(keyed)
        assert keyed._intercepts() and keyed.steps[-1].status == "ok", keyed.steps
        plain = Doctor(parse_args(flags))
        doctors.append(plain)
        assert not plain._intercepts()
        assert "refuses a copier without --server-key and --key" in plain.steps[-1].detail
    finally:
        for doctor in doctors:
            for link in doctor.links:
                link.socket.close(linger=0)
            doctor.context.destroy(linger=0)
        intercept.stop()


def test_tcpcopy_without_keys_warns_once_naming_its_open_channels(keys, caplog):
    from tcpcopy.session.main import parse_args, warn_if_plain
    base = ["-x", "80-198.18.0.2:8080", "-s", "127.0.0.1"]
    caplog.set_level("WARNING", logger="tcpcopy")
    warn_if_plain(parse_args(base + ["--stats", "tcp://127.0.0.1:36600"]))
    line, = [r.getMessage() for r in caplog.records]
    assert line.startswith("the control channel to intercept and the stats channel are neither authenticated")
    assert "--server-key DIR/intercept.key --key DIR/online.key_secret" in line
    caplog.clear()
    warn_if_plain(parse_args(base + ["--server-key", keys.public("intercept"), "--key", keys.secret("online")]))
    assert caplog.records == []
