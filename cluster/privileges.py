"""Running with least privilege: open what needs root, then become an ordinary user.

A copier needs root for two things only: opening raw IP sockets and opening libpcap
handles. Both stay usable once open, so every command opens them at start and then calls
``drop_privileges``: it switches to the ``--user`` (its groups, gid and uid) and keeps
CAP_NET_RAW alone, in the permitted and effective sets; the bounding set loses every other
capability, the inheritable and ambient sets are emptied, and no_new_privs is set, so no
program it could execute gains anything back.

What was measured, on Linux 6.x with libpcap 1.10: after the drop, sending on an open raw
socket (IPv4 and IPv6), reading an open pcap handle, its kernel counters and setting a
new BPF filter on it need no capability at all; opening a raw socket or a pcap handle
needs CAP_NET_RAW, which is why that one is kept (a capture on ``any`` or a raw socket
opened again after a fault). Binding the control port needs nothing above 1023.

The drop is made with ``prctl(PR_SET_KEEPCAPS)``, ``setgroups``/``setgid``/``setuid``
(glibc applies the ids to every thread) and ``capset`` through ctypes: no new dependency.
Capabilities are per thread; threads other than the caller (ZeroMQ's) lose all of theirs
when the uid changes, so ``verify`` checks every thread of the process.

A process that already runs as the user (systemd's ``User=`` with
``AmbientCapabilities=CAP_NET_RAW``) only trims its capabilities to the kept ones.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pwd
from dataclasses import dataclass

_CAP_SETPCAP = 8
CAP_NET_BIND_SERVICE = 10
CAP_NET_RAW = 13
CAP_NAMES = {CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE", CAP_NET_RAW: "CAP_NET_RAW"}
KEPT = (CAP_NET_RAW,)

_PR_SET_PDEATHSIG = 1
_PR_GET_PDEATHSIG = 2
_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAPABILITY_VERSION_3 = 0x20080522


class PrivilegeError(RuntimeError):
    """The user cannot be named or switched to; the text names the fault and the fix."""


@dataclass(frozen=True, slots=True)
class RunAs:
    """The unprivileged user a command drops to (``--user`` or the config's key)."""

    name: str
    uid: int
    gid: int


def resolve_user(text: str, what: str = "--user") -> RunAs:
    """The user named ``text`` (a name or a numeric uid) on this host; PrivilegeError when
    there is none, or when it is root (which would keep every privilege)."""
    if not text or text != text.strip():
        raise PrivilegeError(f"{what} {text!r}: give a user name, e.g. {what} tcpcopy")
    try:
        entry = pwd.getpwuid(int(text)) if text.isdigit() else pwd.getpwnam(text)
    except (KeyError, OverflowError):
        raise PrivilegeError(f"{what} {text}: no such user on this host: create one "
                             f"(useradd --system --no-create-home --shell /usr/sbin/nologin {text}) "
                             "or name an existing unprivileged user, e.g. nobody") from None
    if entry.pw_uid == 0:
        raise PrivilegeError(f"{what} {text}: that is root, which keeps every privilege: name an "
                             "unprivileged user, e.g. nobody, or leave it out")
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)


def check_can_switch(run_as: RunAs, what: str = "--user") -> None:
    """Switching users needs root: fail before anything is opened when it cannot work."""
    if os.geteuid() not in (0, run_as.uid):
        raise PrivilegeError(f"{what} {run_as.name}: switching to another user needs root, and this "
                             f"process runs as uid {os.geteuid()}: run it as root, or leave {what} out")


def mask(caps) -> int:
    """The bit mask of capability numbers ``caps``, as /proc/PID/status shows it."""
    bits = 0
    for cap in caps:
        bits |= 1 << cap
    return bits


def names(bits: int) -> str:
    """Capability bits as names (numbers for those this module does not name)."""
    found = [CAP_NAMES.get(cap, f"cap{cap}") for cap in range(64) if bits >> cap & 1]
    return ",".join(found) or "none"


@dataclass(frozen=True, slots=True)
class ProcessCredentials:
    """What /proc/PID/status says of a task's identity and capabilities."""

    uids: tuple[int, int, int, int]   # real, effective, saved, file system
    gids: tuple[int, int, int, int]
    groups: tuple[int, ...]
    effective: int
    permitted: int
    inheritable: int
    bounding: int
    ambient: int
    no_new_privs: bool


def parse_status(text: str) -> ProcessCredentials:
    """The credentials in the text of /proc/PID/status (or /proc/PID/task/TID/status)."""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    try:
        return ProcessCredentials(
            uids=tuple(int(v) for v in fields["Uid"].split()),
            gids=tuple(int(v) for v in fields["Gid"].split()),
            groups=tuple(int(v) for v in fields.get("Groups", "").split()),
            effective=int(fields["CapEff"], 16), permitted=int(fields["CapPrm"], 16),
            inheritable=int(fields["CapInh"], 16), bounding=int(fields["CapBnd"], 16),
            ambient=int(fields.get("CapAmb", "0"), 16), no_new_privs=fields.get("NoNewPrivs") == "1")
    except (KeyError, ValueError) as exc:
        raise ValueError(f"not the text of /proc/PID/status ({exc})") from None


def read_credentials(pid: int | str = "self", task: int | None = None) -> ProcessCredentials:
    path = f"/proc/{pid}/status" if task is None else f"/proc/{pid}/task/{task}/status"
    with open(path) as status:
        return parse_status(status.read())


def problems(creds: ProcessCredentials, run_as: RunAs, keep: int) -> list[str]:
    """What is wrong with a task's credentials after a drop to ``run_as`` keeping the
    capability bits ``keep`` (empty when all is well)."""
    found = []
    if set(creds.uids) != {run_as.uid}:
        found.append(f"uids {creds.uids}, not {run_as.uid}")
    if set(creds.gids) != {run_as.gid}:
        found.append(f"gids {creds.gids}, not {run_as.gid}")
    if 0 in creds.groups and run_as.gid != 0:
        found.append("still in group 0")
    for label, bits in (("effective", creds.effective), ("permitted", creds.permitted),
                        ("inheritable", creds.inheritable), ("ambient", creds.ambient)):
        if bits & ~keep:
            found.append(f"{label} capabilities {names(bits & ~keep)} beyond {names(keep)}")
    return found


# ------------------------------------------------------------------------- the drop

class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _prctl(libc, option: int, arg: int = 0, arg3: int = 0) -> None:
    if libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(arg3),
                  ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl({option}, {arg}): {os.strerror(error)}")


def _capset(libc, effective: int, permitted: int, inheritable: int = 0) -> None:
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for word in (0, 1):
        shift = 32 * word
        data[word].effective = effective >> shift & 0xFFFFFFFF
        data[word].permitted = permitted >> shift & 0xFFFFFFFF
        data[word].inheritable = inheritable >> shift & 0xFFFFFFFF
    if libc.capset(ctypes.byref(header), data) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"capset: {os.strerror(error)}")


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as last:
            return int(last.read())
    except (OSError, ValueError):
        return 40


def drop_privileges(run_as: RunAs, keep=KEPT) -> ProcessCredentials:
    """Become ``run_as`` keeping only the capabilities ``keep`` (numbers), then check it.
    Call it once the raw sockets and pcap handles are open. Returns the credentials read
    back; raises PrivilegeError when the drop cannot be made or did not hold."""
    check_can_switch(run_as)
    libc = _libc()
    try:
        death_signal = _death_signal(libc)
        if os.geteuid() == 0:
            _switch_user(libc, run_as, keep)
        if death_signal:   # the kernel forgets it when the credentials change: set it again
            _prctl(libc, _PR_SET_PDEATHSIG, death_signal)
        current = read_credentials()
        _capset(libc, mask(keep) & current.permitted, mask(keep) & current.permitted)
        _prctl(libc, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
        _prctl(libc, _PR_SET_NO_NEW_PRIVS, 1)
    except OSError as exc:
        raise PrivilegeError(f"cannot drop to user {run_as.name}: {exc.strerror}") from None
    return verify(run_as, keep)


def _death_signal(libc) -> int:
    """The signal this process gets when its parent dies (PR_SET_PDEATHSIG), or 0."""
    signal_number = ctypes.c_int(0)
    if libc.prctl(ctypes.c_int(_PR_GET_PDEATHSIG), ctypes.byref(signal_number), ctypes.c_ulong(0),
                  ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        return 0
    return signal_number.value


def _switch_user(libc, run_as: RunAs, keep) -> None:
    """Root to ``run_as``: the bounding set cut to ``keep`` first (that needs
    CAP_SETPCAP, which root has outside a container), ids changed with the permitted set
    kept (KEEPCAPS; needs CAP_SETUID and CAP_SETGID)."""
    if read_credentials().effective & mask([_CAP_SETPCAP]):   # a container may not grant it:
        for cap in range(_last_cap() + 1):                     # its runtime cut the bounding set
            if cap not in keep:
                _prctl(libc, _PR_CAPBSET_DROP, cap)
    _prctl(libc, _PR_SET_KEEPCAPS, 1)
    os.initgroups(run_as.name, run_as.gid)
    os.setresgid(run_as.gid, run_as.gid, run_as.gid)
    os.setresuid(run_as.uid, run_as.uid, run_as.uid)
    _prctl(libc, _PR_SET_KEEPCAPS, 0)


def verify(run_as: RunAs, keep=KEPT) -> ProcessCredentials:
    """Every thread of this process runs as ``run_as`` with no capability beyond ``keep``."""
    bits = mask(keep)
    for task in sorted(int(name) for name in os.listdir("/proc/self/task")):
        try:
            creds = read_credentials("self", task)
        except FileNotFoundError:   # the thread ended meanwhile
            continue
        wrong = problems(creds, run_as, bits)
        if wrong:
            raise PrivilegeError(f"dropping to user {run_as.name} did not hold in thread {task}: "
                                 + "; ".join(wrong))
    return read_credentials()


def describe(run_as: RunAs, creds: ProcessCredentials) -> str:
    """The log line saying what this process now runs as."""
    return (f"running as user {run_as.name} (uid {run_as.uid}, gid {run_as.gid}) with capabilities "
            f"{names(creds.effective)}")
