"""CurveZMQ keys for the control channel (owner <-> intercept) and the stats channel.

With keys, a channel is encrypted and both ends are authenticated: the listening side (an
intercept's ROUTER, the stats listener's SUB) is a CURVE server whose public key its peers
must know, and it admits only the peers whose public keys sit in its allowed-keys directory;
a ``KeyGate`` answers ZeroMQ's authentication requests (ZAP) for it in a thread of its own,
so a handshake never waits for the I/O loop and the loop never waits for a handshake. ZAP is
enforced: with no answer the handshake fails, never passes.

Key files are ZeroMQ's certificate format (what ``zmq.auth.create_certificates`` and czmq's
zcert write): ``NAME.key`` holds the public key, ``NAME.key_secret`` both halves. A secret
key file must be readable by its owner only; an allowed-keys directory must not be writable
by others. ``KeyLayout`` is the directory ``tcpcopy-cluster keygen`` writes:

    intercept.key, intercept.key_secret    the intercepts' pair (CURVE server of the control channel)
    stats.key, stats.key_secret            the stats listener's pair (top, metrics)
    online.key, online.key_secret          the online host's pair (owners, capture workers); more
                                           clients with --client NAME
    allowed-owners/NAME.key                the owners an intercept admits
    allowed-publishers/NAME.key            the processes the stats listener admits (clients and
                                           the intercepts, which publish with their own pair)

Every fault is a ``KeyFileError`` naming the file and the fix.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import zmq
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

log = logging.getLogger("tcpcopy.curve")

KEY_FILE_MAX = 4096          # bytes read from a key file at most
MAX_ALLOWED_KEYS = 1024      # public keys one allowed-keys directory may hold
ZAP_ENDPOINT = "inproc://zeromq.zap.01"   # fixed by ZeroMQ (RFC 27), one per context
ZAP_BIND_WAIT = 2.0   # seconds a gate waits for the endpoint a closed gate releases
GATE_LOG_LINES = 20          # lines about refused peers per GATE_LOG_WINDOW at most
GATE_LOG_WINDOW = 60.0
GATE_REMEMBERED = 1024       # refused keys logged once per window, remembered at most
CONTROL_DOMAIN = b"tcpcopy-control"
STATS_DOMAIN = b"tcpcopy-stats"
KEYGEN_HINT = "tcpcopy-cluster keygen DIR"
DEFAULT_CLIENT = "online"

_Z85_KEY = re.compile(r"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")
_KEY_LINE = re.compile(r'^\s*(public|secret)-key\s*=\s*"([^"]*)"\s*$')
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")

_HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


class KeyFileError(ValueError):
    """A key file or directory that cannot be used; the text names it and the fix."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    public: bytes              # Z85, 40 bytes
    secret: bytes              # Z85, 40 bytes


@dataclass(frozen=True, slots=True)
class ServerKeys:
    """A listening side: its own pair and the peers it admits (raw 32-byte key -> name)."""

    pair: KeyPair
    allowed: Mapping[bytes, str]


@dataclass(frozen=True, slots=True)
class ClientKeys:
    """A connecting side: its own pair and the public key of the server it talks to."""

    pair: KeyPair
    server_public: bytes       # Z85


# ------------------------------------------------------------------ reading key files

def load_secret(path: str | os.PathLike) -> KeyPair:
    """The pair in a secret key file (NAME.key_secret), readable by its owner only."""
    path = str(path)
    text, info = _read(path)
    keys = _parse(path, text)
    if "secret" not in keys:
        raise KeyFileError(f"{path}: holds no secret key (is it the public half? give the "
                           "NAME.key_secret file)")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise KeyFileError(f"{path}: the secret key is open to other users (mode "
                           f"{stat.S_IMODE(info.st_mode):04o}): chmod 600 {path}")
    public = zmq.curve_public(keys["secret"])
    if keys.get("public", public) != public:
        raise KeyFileError(f"{path}: its public key does not belong to its secret key: make a new "
                           f"pair with {KEYGEN_HINT}")
    return KeyPair(public, keys["secret"])


def load_public(path: str | os.PathLike) -> bytes:
    """The public key (Z85) in NAME.key (or in a secret key file, which holds it too)."""
    path = str(path)
    text, _info = _read(path)
    keys = _parse(path, text)
    if "public" in keys:
        return keys["public"]
    return zmq.curve_public(keys["secret"])


def load_allowed(directory: str | os.PathLike) -> dict[bytes, str]:
    """{raw 32-byte public key: file name} of every NAME.key in ``directory``."""
    directory = str(directory)
    try:
        info = os.stat(directory)
    except OSError as exc:
        raise KeyFileError(f"{directory}: {_reason(exc)}: give the directory of allowed public keys "
                           f"({KEYGEN_HINT} makes allowed-owners/ and allowed-publishers/)") from None
    if not stat.S_ISDIR(info.st_mode):
        raise KeyFileError(f"{directory}: not a directory: give the directory that holds the allowed "
                           "public keys (NAME.key files)")
    if stat.S_IMODE(info.st_mode) & 0o022:
        raise KeyFileError(f"{directory}: other users may write there (mode {stat.S_IMODE(info.st_mode):04o}) "
                           f"and so add a key of their own: chmod 700 {directory}")
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise KeyFileError(f"{directory}: cannot list it ({_reason(exc)}): run as its owner") from None
    secret = [name for name in names if name.endswith(".key_secret")]
    if secret:
        raise KeyFileError(f"{directory}/{secret[0]}: a secret key in the allowed-keys directory: move it "
                           "out; only public keys (NAME.key) belong there")
    public = [name for name in names if name.endswith(".key")]
    if not public:
        raise KeyFileError(f"{directory}: holds no public key (NAME.key): copy the public keys of the "
                           "peers to admit there, e.g. online.key")
    if len(public) > MAX_ALLOWED_KEYS:
        raise KeyFileError(f"{directory}: holds {len(public)} keys, more than {MAX_ALLOWED_KEYS}: "
                           "keep one key per host")
    return {z85.decode(load_public(os.path.join(directory, name))): name for name in public}


def _read(path: str) -> tuple[str, os.stat_result]:
    try:
        with open(path, "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise KeyFileError(f"{path}: not a plain file: give the key file itself")
            data = file.read(KEY_FILE_MAX + 1)
    except OSError as exc:
        if exc.errno == errno.EISDIR:
            raise KeyFileError(f"{path}: not a plain file: give the key file itself") from None
        fix = {errno.ENOENT: f"give the path of an existing key file (make keys with {KEYGEN_HINT})",
               errno.EACCES: "run as the user who owns it, or fix its owner"}.get(exc.errno, "check the path")
        raise KeyFileError(f"{path}: {_reason(exc)}: {fix}") from None
    if len(data) > KEY_FILE_MAX:
        raise KeyFileError(f"{path}: larger than {KEY_FILE_MAX} bytes, not a key file: give the "
                           f"NAME.key or NAME.key_secret file that {KEYGEN_HINT} wrote")
    return data.decode("utf-8", "replace"), info


def _parse(path: str, text: str) -> dict[str, bytes]:
    """{"public": Z85, "secret": Z85} from certificate lines, or one bare Z85 key (a secret
    key when the file is a .key_secret)."""
    keys: dict[str, bytes] = {}
    for line in text.splitlines():
        match = _KEY_LINE.match(line)
        if match:
            keys[match.group(1)] = _z85_key(path, match.group(2))
    bare = text.strip()
    if not keys and _Z85_KEY.match(bare):
        keys["secret" if path.endswith("_secret") else "public"] = _z85_key(path, bare)
    if not keys:
        raise KeyFileError(f"{path}: not a CURVE key file (no public-key or secret-key line of 40 Z85 "
                           f"characters): give a file that {KEYGEN_HINT} wrote")
    return keys


def _z85_key(path: str, text: str) -> bytes:
    if not _Z85_KEY.match(text):
        raise KeyFileError(f"{path}: a key of {len(text)} characters, not 40 Z85 characters: the file "
                           f"is damaged; copy it again or make new keys with {KEYGEN_HINT}")
    return text.encode("ascii")


def _reason(exc: OSError) -> str:
    return {errno.ENOENT: "no such file", errno.EACCES: "permission denied"}.get(exc.errno, exc.strerror or str(exc))


# ------------------------------------------------------------------ the key directory

@dataclass(frozen=True, slots=True)
class KeyLayout:
    """Where ``tcpcopy-cluster keygen`` puts each file under ``directory``."""

    directory: str

    def public(self, name: str) -> str:
        return f"{self.directory}/{name}.key"

    def secret(self, name: str) -> str:
        return f"{self.directory}/{name}.key_secret"

    @property
    def allowed_owners(self) -> str:
        return f"{self.directory}/allowed-owners"

    @property
    def allowed_publishers(self) -> str:
        return f"{self.directory}/allowed-publishers"

    # The keys each process of a cluster uses (cluster config [security]).

    def intercept_keys(self) -> ServerKeys:
        return ServerKeys(load_secret(self.secret("intercept")), load_allowed(self.allowed_owners))

    def owner_keys(self) -> ClientKeys:
        return ClientKeys(load_secret(self.secret(DEFAULT_CLIENT)), load_public(self.public("intercept")))

    def publisher_keys(self, own: str) -> ClientKeys:
        """A stats publisher: the online host's pair (``own`` = "online") or the intercepts'."""
        return ClientKeys(load_secret(self.secret(own)), load_public(self.public("stats")))

    def listener_keys(self) -> ServerKeys:
        return ServerKeys(load_secret(self.secret("stats")), load_allowed(self.allowed_publishers))


def keygen(directory: str, clients: tuple[str, ...] = (DEFAULT_CLIENT,), force: bool = False) -> list[str]:
    """Write the key pairs under ``directory`` (0700): the intercepts' and the stats
    listener's (kept if they exist), each client's, and the allowed-keys directories.
    A client pair that exists is an error unless ``force``, which replaces every pair.
    Returns the lines that say what was made and kept."""
    for name in clients:
        if not _NAME.match(name) or name in ("intercept", "stats"):
            raise KeyFileError(f"--client {name!r}: give a name of 1-32 characters a-z 0-9 _ -, "
                               "other than intercept and stats, e.g. online2")
    layout = KeyLayout(directory.rstrip("/") or "/")
    if not force:
        taken = [layout.secret(name) for name in clients if os.path.lexists(layout.secret(name))]
        if taken:
            raise KeyFileError(f"{taken[0]} exists: keep it, name a new client with --client NAME, or "
                               "pass --force to replace every key (each host then needs its new files)")
    for path in (layout.directory, layout.allowed_owners, layout.allowed_publishers):
        _private_dir(path)
    said = []
    for name in ("intercept", "stats", *clients):
        if os.path.lexists(layout.secret(name)) and not force:
            load_secret(layout.secret(name))   # a damaged or open one is said now, not at start
            said.append(f"kept {layout.secret(name)}")
            continue
        pair = KeyPair(*zmq.curve_keypair())
        _write(layout.secret(name), _certificate(pair, secret=True), 0o600)
        _write(layout.public(name), _certificate(pair, secret=False), 0o644)
        said.append(f"made {layout.public(name)} and {layout.secret(name)}")
    for name in clients:
        _copy_public(layout, name, layout.allowed_owners)
        _copy_public(layout, name, layout.allowed_publishers)
    _copy_public(layout, "intercept", layout.allowed_publishers)
    return said


def _private_dir(path: str) -> None:
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode):
            raise KeyFileError(f"{path}: not a directory (a symbolic link?): remove it or choose another")
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.chmod(path, 0o700)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create it ({_reason(exc)}): choose a directory this user "
                           "may write") from None


def _copy_public(layout: KeyLayout, name: str, directory: str) -> None:
    text = _certificate(KeyPair(load_public(layout.public(name)), b""), secret=False)
    _write(f"{directory}/{name}.key", text, 0o644)


def _certificate(pair: KeyPair, secret: bool) -> str:
    """ZeroMQ's certificate text (ZPL), as zmq.auth and czmq write and read it."""
    kind = "**Secret** Certificate" if secret else "Certificate"
    lines = [f"#   ZeroMQ CURVE {kind}, made by tcpcopy-cluster keygen",
             "#   " + ("Keep it on its host, mode 0600; never copy it elsewhere." if secret
                       else "Public: copy it to the hosts that talk to its owner."),
             "", "metadata", "curve", f'    public-key = "{pair.public.decode()}"']
    if secret:
        lines.append(f'    secret-key = "{pair.secret.decode()}"')
    return "\n".join(lines) + "\n"


def _write(path: str, text: str, mode: int) -> None:
    """Write ``path`` whole with ``mode`` whatever the umask: a fresh file beside it (never
    through a link), then renamed over it."""
    partial = f"{path}.{secrets.token_hex(4)}.new"
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        os.replace(partial, path)
    except OSError as exc:
        try:
            os.unlink(partial)
        except OSError:
            pass
        raise KeyFileError(f"{path}: cannot write it ({_reason(exc)}): choose a directory this user may write") from None


# ------------------------------------------------------------------ sockets

def listen_with_keys(sock: zmq.Socket, keys: ServerKeys, domain: bytes) -> None:
    """Make ``sock`` (before it binds) a CURVE server whose peers ZAP must admit."""
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.pair.secret)
    sock.setsockopt(zmq.ZAP_DOMAIN, domain)
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)   # no ZAP answer: the handshake fails


def connect_with_keys(sock: zmq.Socket, keys: ClientKeys) -> None:
    """Make ``sock`` (before it connects) a CURVE client of the server with that public key."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.pair.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.pair.secret)


def zap_decision(allowed: Mapping[bytes, str], domain: bytes, frames: list[bytes]) -> tuple[bytes, bytes, bytes]:
    """(status, text, user id) for one ZAP request (RFC 27): 200 for a CURVE peer whose key
    is listed, 400 otherwise. The user id (the key's file name) reaches the socket's
    messages as their "User-Id" property."""
    if len(frames) < 7 or frames[0] != b"1.0" or frames[5] != b"CURVE" or frames[2] != domain:
        return b"400", b"not a CURVE request of this domain", b""
    name = allowed.get(frames[6])
    if name is None:
        return b"400", b"key not allowed", b""
    return b"200", b"OK", name.encode()


class KeyGate:
    """The ZAP handler of one CURVE server socket, and the counter of the peers it refuses.

    Runs in its own thread with its own sockets: the ZAP socket (one per context, so one
    gate per context) and a monitor of the server socket, whose failed handshakes are the
    peers that ZAP never sees (no keys at all, a wrong server key). Counts, read by the
    owner of the server socket at any time:

    - ``admitted``: peers whose listed key passed;
    - ``refused_key``: peers with a key that is not listed (logged with the key, once each);
    - ``refused_plain``: peers without keys (plain ZeroMQ, or a command without its key flags);
    - ``refused_handshake``: other failed handshakes (a wrong server key, garbage).
    """

    def __init__(self, sock: zmq.Socket, keys: ServerKeys, domain: bytes, what: str,
                 context: zmq.Context | None = None) -> None:
        self.what = what
        self.domain = domain
        self.allowed = dict(keys.allowed)
        self.counts = {"admitted": 0, "refused_key": 0, "refused_plain": 0, "refused_handshake": 0}
        self._context = context or sock.context
        self._lines = 0
        self._window = time.monotonic()
        self._logged: set[bytes] = set()
        self._zap = self._context.socket(zmq.REP)
        self._zap.setsockopt(zmq.LINGER, 0)
        self._bind_zap()
        tag = secrets.token_hex(6)
        self._monitor_address = f"inproc://tcpcopy-gate-{tag}"
        sock.monitor(self._monitor_address, _HANDSHAKE_EVENTS)
        self._sock = sock
        self._monitor = self._context.socket(zmq.PAIR)
        self._monitor.connect(self._monitor_address)
        self._stop_address = f"inproc://tcpcopy-gate-stop-{tag}"
        self._stop = self._context.socket(zmq.PAIR)
        self._stop.bind(self._stop_address)
        self._stopped = self._context.socket(zmq.PAIR)
        self._stopped.connect(self._stop_address)
        self._thread = threading.Thread(target=self._run, name=f"keygate-{what}", daemon=True)
        self._thread.start()

    def _bind_zap(self) -> None:
        """The context's ZAP endpoint. A gate closed just before (a restarted worker on the
        same context) releases it only once libzmq's reaper has closed its socket, a moment
        later: a bind refused meanwhile is tried again for up to ZAP_BIND_WAIT seconds."""
        deadline = time.monotonic() + ZAP_BIND_WAIT
        while True:
            try:
                self._zap.bind(ZAP_ENDPOINT)
                return
            except zmq.ZMQError:
                if time.monotonic() >= deadline:
                    self._zap.close()
                    raise RuntimeError("a ZeroMQ context holds one KeyGate at most (its ZAP endpoint)") from None
                time.sleep(0.01)

    def close(self) -> None:
        """Stop the thread (before the server socket closes)."""
        if self._thread.is_alive():
            try:
                self._stop.send(b"stop")
            except zmq.ZMQError:
                pass
            self._thread.join(timeout=10)   # it stops at once unless a backlog of handshakes holds it
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self._stop.close(linger=0)

    def _run(self) -> None:
        poller = zmq.Poller()
        for sock in (self._zap, self._monitor, self._stopped):
            poller.register(sock, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if self._stopped in ready:
                    return
                if self._zap in ready:
                    self._answer(self._zap.recv_multipart())
                if self._monitor in ready:
                    self._on_event(parse_monitor_message(self._monitor.recv_multipart()))
        except zmq.ZMQError:   # the context was terminated under us: nothing left to guard
            return
        finally:
            for sock in (self._zap, self._monitor, self._stopped):
                sock.close(linger=0)

    def _answer(self, frames: list[bytes]) -> None:
        status, text, user = zap_decision(self.allowed, self.domain, frames)
        if status == b"200":
            self.counts["admitted"] += 1
        elif len(frames) >= 7:
            self.counts["refused_key"] += 1
            self._log_refused(frames[6], _shown_address(frames[3].decode("ascii", "replace")))
        self._zap.send_multipart([b"1.0", frames[1] if len(frames) > 1 else b"", status, text, user, b""])

    def _on_event(self, event: dict) -> None:
        if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return   # a ZAP refusal, counted in _answer
        if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and \
                event["value"] == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            self.counts["refused_plain"] += 1
            if self._may_log(b"plain"):
                log.warning("%s: a peer without CURVE keys was refused (a tcpcopy without --key and "
                            "--server-key, or not tcpcopy at all); further ones are counted as "
                            "refused_plain", self.what)
            return
        self.counts["refused_handshake"] += 1
        if self._may_log(b"handshake"):
            log.warning("%s: a CURVE handshake failed (%s); further ones are counted as refused_handshake",
                        self.what, _handshake_failure(event))

    def _log_refused(self, key: bytes, address: str) -> None:
        if self._may_log(key):
            shown = z85.encode(key).decode() if len(key) == 32 else key[:64].hex()
            log.warning("%s: peer at %s refused: its public key %s is not in the allowed keys; further "
                        "refusals of this key are counted as refused_key (add its NAME.key to the "
                        "allowed-keys directory if it is one of yours)", self.what, address, shown)

    def _may_log(self, what: bytes) -> bool:
        now = time.monotonic()
        if now - self._window >= GATE_LOG_WINDOW:
            self._window, self._lines = now, 0
            self._logged.clear()
        if what in self._logged or self._lines >= GATE_LOG_LINES or len(self._logged) >= GATE_REMEMBERED:
            return False
        self._logged.add(what)
        self._lines += 1
        return True


def _handshake_failure(event: dict) -> str:
    """What a failed handshake most likely was, for the log.

    A peer without keys is usually seen as a mechanism mismatch, but both sides check the
    greeting: when the peer notices first and hangs up, this side sees only a broken pipe or a
    reset (ZeroMQ's "no detail" event with the errno), and the peer does not come back."""
    if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and event["value"] in (errno.EPIPE, errno.ECONNRESET):
        return ("the peer hung up during it: a peer without CURVE keys, or with the wrong server key, "
                "that noticed first")
    return f"a peer with the wrong server key? ZeroMQ event {event['event']:#x}, value {event['value']:#x}"


def _shown_address(address: str) -> str:
    """A dual-stack listener's IPv4 peers (::ffff:a.b.c.d) shown as the IPv4 address they are."""
    if address.startswith("::ffff:") and "." in address:
        return address[len("::ffff:"):]
    return address


# ------------------------------------------------------------------ command-line flags

def client_keys_from_flags(key: str | None, server_key: str | None,
                           stats_server_key: str | None = None) -> tuple[ClientKeys | None, ClientKeys | None]:
    """(control channel keys, stats channel keys) from a client's --key, --server-key and
    --stats-server-key; raises KeyFileError naming the fault and the fix."""
    if server_key and not key:
        raise KeyFileError("--server-key needs --key FILE, this side's secret key (e.g. --key keys/online.key_secret)")
    if key and not (server_key or stats_server_key):
        raise KeyFileError("--key needs --server-key FILE, the public key of the side it connects to "
                           "(e.g. --server-key keys/intercept.key)")
    if stats_server_key and not key:
        raise KeyFileError("--stats-server-key needs --key FILE, this side's secret key "
                           "(e.g. --key keys/online.key_secret)")
    pair = load_secret(key) if key else None
    control = ClientKeys(pair, load_public(server_key)) if server_key else None
    stats = ClientKeys(pair, load_public(stats_server_key)) if stats_server_key else None
    return control, stats


def server_keys_from_flags(key: str | None, allow_keys: str | None) -> ServerKeys | None:
    """A listening side's keys from its --key and --allow-keys (both or neither)."""
    if bool(key) != bool(allow_keys):
        raise KeyFileError("--key and --allow-keys go together: this side's secret key and the "
                           "directory of the public keys it admits (e.g. --key keys/intercept.key_secret "
                           "--allow-keys keys/allowed-owners)")
    if not key:
        return None
    return ServerKeys(load_secret(key), load_allowed(allow_keys))


def add_client_key_flags(parser, server: str, example: str) -> None:
    """--key and --stats-server-key of a process that connects (tcpcopy, a capture worker)."""
    parser.add_argument("--key", metavar="FILE",
                        help=f"CurveZMQ: this process's secret key file (mode 0600, e.g. {example}); its "
                             f"public half must be in the {server}'s --allow-keys directory")
    parser.add_argument("--stats-server-key", metavar="FILE",
                        help="CurveZMQ on the stats channel (--stats): the stats listener's public key "
                             "(stats.key); needs --key")


def add_server_key_flags(parser, peers: str, example: str) -> None:
    """--key and --allow-keys of a process that listens (intercept, the stats listener)."""
    parser.add_argument("--key", metavar="FILE",
                        help=f"CurveZMQ: this process's secret key file (mode 0600, e.g. {example}); "
                             "its peers must hold the public half; needs --allow-keys")
    parser.add_argument("--allow-keys", metavar="DIR",
                        help=f"CurveZMQ: admit only the {peers} whose public key (NAME.key) is in DIR; "
                             "the others are refused and counted")


# ------------------------------------------------------------------ without keys

def plain_warning(channels: list[str], fix: str) -> str:
    """The one warning a process logs for the channels it runs without keys."""
    named = " and ".join(channels)
    verb, pronoun = ("are", "them") if len(channels) > 1 else ("is", "it")
    return (f"{named} {verb} neither authenticated nor encrypted: any host that reaches {pronoun} can "
            f"connect and read what crosses {pronoun}; to turn keys on, make them with {KEYGEN_HINT} "
            f"and {fix} (README: Security)")
