"""The network-namespace lab: real kernels and real servers on fake hosts, nothing outside.

A lab is a declared :class:`Topology` (hosts, veth links, routes, sysctls) built into network
namespaces named ``<prefix><tag>-<host>``, e.g. ``tcl-3fa2-target``. The prefix marks every
namespace as the lab's, the tag marks one run, so ``python -m tcpcopy.lab.netns down`` can
find and remove what a crashed run left behind without touching anything else.

Safety rules the code enforces:

* Only namespaces the lab creates. Veth pairs are created directly inside them, never in the
  root namespace; the root namespace's routes, addresses and sysctls are never touched.
* Addresses, gateways and route prefixes only from 198.18.0.0/15 and 2001:2::/48 (the
  benchmarking ranges), checked when the spec is constructed.
* Only ``net.*`` sysctls: those are per namespace (a ``net.*`` key the kernel keeps global is
  absent inside a namespace, so setting it fails instead of changing the host).
* Every process started in the lab is recorded and stopped by PID (SIGTERM, then SIGKILL
  after a grace period) before the namespaces go; anything else still running inside the
  lab's namespaces is killed too (it can only have been started by the lab's user).
* Teardown on ``with`` exit, at interpreter exit (atexit), and on SIGTERM and SIGHUP (after
  which the signal takes its usual course and ends the process).

Ready topologies: :func:`two_host` (copier and target on one veth), :func:`four_host`
(client, online server, target and assistant: the advanced architecture, design §2) and
:func:`four_host_v6` (the same, dual-stack).

Typical use::

    with two_host() as lab:
        proc = lab.popen("target", ["nginx", ...])
        lab.run("copier", ["curl", "-s", "http://198.18.0.2/"])
        frames = lab.call("copier", capture_some_frames, "to-target")
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import functools
import ipaddress
import logging
import multiprocessing
import multiprocessing.connection
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LAB_PREFIX = "tcl-"
ALLOWED_NETWORKS = (
    ipaddress.ip_network("198.18.0.0/15"),
    ipaddress.ip_network("2001:2::/48"),
)
NETNS_RUN_DIR = Path("/var/run/netns")  # where `ip netns` keeps its namespace handles
DEFAULT_GRACE_S = 2.0
COMMAND_TIMEOUT_S = 30.0
# Offloads, as a real host has them: checksum offload leaves partial checksums in captured
# frames, TSO/GSO and GRO make captured segments larger than the MTU. A veth keeps the
# first two by default; GRO is off on a veth only, while physical and virtio NICs have it
# on, so the lab turns it on ("host"). "off" turns all of them off, as a lab that hides
# those conditions would; one test uses it to show a copy works both ways.
OFFLOAD_MODES = ("host", "off")
OFFLOADS_HOST = (("gro", "on"),)
OFFLOADS_OFF = (("gro", "off"), ("gso", "off"), ("tso", "off"), ("tx", "off"))
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)  # resolved before any fork: children only call it

_NAME_RE = re.compile(r"^[a-z][a-z0-9]*$")
_TAG_RE = re.compile(r"^[a-z0-9]{1,8}$")
_DEV_RE = re.compile(r"^[A-Za-z0-9_-]{1,15}$")
_SYSCTL_RE = re.compile(r"^net(\.[A-Za-z0-9_-]+)+$")


class LabError(RuntimeError):
    """The lab could not be built, used or removed; the message names the fault and the fix."""


# --------------------------------------------------------------------------- address rules


def check_lab_address(address: str, *, what: str = "address") -> None:
    """Raise ValueError unless ``address`` (an IP, optionally with /len) lies in the lab ranges."""
    try:
        iface = ipaddress.ip_interface(address)
    except ValueError:
        raise ValueError(f"{what} {address!r} is not an IP address") from None
    if not _inside_lab_ranges(iface.network):
        raise ValueError(
            f"{what} {address!r} is outside the lab ranges 198.18.0.0/15 and 2001:2::/48: "
            "use an address from those ranges"
        )


def check_lab_prefix(prefix: str, *, what: str = "route prefix") -> None:
    """Raise ValueError unless the network ``prefix`` lies wholly inside the lab ranges."""
    try:
        network = ipaddress.ip_network(prefix, strict=False)
    except ValueError:
        raise ValueError(f"{what} {prefix!r} is not an IP prefix") from None
    if not _inside_lab_ranges(network):
        raise ValueError(
            f"{what} {prefix!r} is outside the lab ranges 198.18.0.0/15 and 2001:2::/48: "
            "use a prefix inside those ranges"
        )


def _inside_lab_ranges(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    return any(
        network.version == allowed.version and network.subnet_of(allowed)  # type: ignore[arg-type]
        for allowed in ALLOWED_NETWORKS
    )


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True, slots=True)
class Nic:
    """One end of a veth link: the host it sits in, its addresses (``ip/len``), its name."""

    host: str
    addresses: tuple[str, ...] = ()
    name: str | None = None  # device name inside the host; default "to-<peer host>"

    def __post_init__(self) -> None:
        if isinstance(self.addresses, str):
            object.__setattr__(self, "addresses", (self.addresses,))
        for address in self.addresses:
            check_lab_address(address, what=f"address of {self.host}")
            if "/" not in address:
                raise ValueError(f"address {address!r} of {self.host} needs a prefix length, e.g. /24")
        if self.name is not None and not _DEV_RE.match(self.name):
            raise ValueError(f"device name {self.name!r}: use 1-15 characters from [A-Za-z0-9_-]")


@dataclass(frozen=True, slots=True)
class Link:
    """A veth pair between two hosts."""

    a: Nic
    b: Nic
    mtu: int | None = None

    def __post_init__(self) -> None:
        if self.a.host == self.b.host:
            raise ValueError(f"link from {self.a.host} to itself: a link joins two hosts")
        if self.mtu is not None and not 68 <= self.mtu <= 65535:
            raise ValueError(f"mtu {self.mtu} out of range 68..65535")

    def device(self, host: str) -> str:
        """The device name of this link's end in ``host``."""
        nic, peer = (self.a, self.b) if host == self.a.host else (self.b, self.a)
        return nic.name or f"to-{peer.host}"[:15]

    def ends(self) -> tuple[Nic, Nic]:
        return (self.a, self.b)


def link(a_host: str, a_address: str | Sequence[str], b_host: str, b_address: str | Sequence[str],
         *, a_name: str | None = None, b_name: str | None = None, mtu: int | None = None) -> Link:
    """Shorthand: ``link("copier", "198.18.0.1/24", "target", "198.18.0.2/24")``."""
    return Link(
        Nic(a_host, _as_tuple(a_address), a_name),
        Nic(b_host, _as_tuple(b_address), b_name),
        mtu,
    )


def _as_tuple(addresses: str | Sequence[str]) -> tuple[str, ...]:
    return (addresses,) if isinstance(addresses, str) else tuple(addresses)


@dataclass(frozen=True, slots=True)
class Route:
    """``prefix via gateway`` inside one host; without a gateway, a blackhole route (packets
    to ``prefix`` are dropped there, and no error goes back)."""

    prefix: str
    via: str | None = None

    def __post_init__(self) -> None:
        check_lab_prefix(self.prefix)
        if self.via is None:
            return
        check_lab_address(self.via, what="gateway")
        if ipaddress.ip_network(self.prefix, strict=False).version != ipaddress.ip_address(self.via).version:
            raise ValueError(f"route {self.prefix} via {self.via}: prefix and gateway differ in IP version")


@dataclass(frozen=True, slots=True)
class Host:
    """A namespace: its routes and its sysctls (``net.*`` keys, applied in order after links)."""

    name: str
    routes: tuple[Route, ...] = ()
    sysctls: Mapping[str, str | int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name) or len(self.name) > 12:
            raise ValueError(f"host name {self.name!r}: use 1-12 characters [a-z0-9], starting with a letter")
        object.__setattr__(self, "routes", tuple(self.routes))
        for key, value in self.sysctls.items():
            if not _SYSCTL_RE.match(key):
                raise ValueError(
                    f"sysctl {key!r} of {self.name}: only per-namespace net.* keys may be set in the lab"
                )
            if not re.match(r"^[A-Za-z0-9 ._-]*$", str(value)):
                raise ValueError(f"sysctl {key}={value!r} of {self.name}: value has unexpected characters")


@dataclass(frozen=True, slots=True)
class Topology:
    """Hosts and the links between them. Checked for consistency at construction."""

    hosts: tuple[Host, ...]
    links: tuple[Link, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "hosts", tuple(self.hosts))
        object.__setattr__(self, "links", tuple(self.links))
        names = [host.name for host in self.hosts]
        if len(set(names)) != len(names):
            raise ValueError(f"host names repeat: {names}")
        for each in self.links:
            for nic in each.ends():
                if nic.host not in names:
                    raise ValueError(f"link end names unknown host {nic.host!r}; hosts are {names}")
        for name in names:
            devices = self.devices(name)
            if len(set(devices)) != len(devices):
                raise ValueError(f"device names repeat in {name}: {devices}; name the link ends")

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(f"no host {name!r} in this topology; hosts are {[h.name for h in self.hosts]}")

    def devices(self, host: str) -> list[str]:
        return [each.device(host) for each in self.links if host in (each.a.host, each.b.host)]


# --------------------------------------------------------------------------- ready topologies

COPIER = "copier"
TARGET = "target"
COPIER_ADDRESS = "198.18.0.1"
TARGET_ADDRESS = "198.18.0.2"
FAKE_CLIENT_NET = "198.18.3.0/24"


def two_host_topology() -> Topology:
    """The first real-kernel check: a copier and a target on one veth.

    ``copier`` has ip_forward=0, so answers the target sends to fake client addresses (which
    are not the copier's own) reach its veth, can be captured there, and then die without an
    RST or ICMP. ``target`` routes the fake client network via the copier, with rp_filter off.
    """
    target_dev = "to-copier"
    return Topology(
        hosts=(
            Host(COPIER, sysctls={"net.ipv4.ip_forward": 0}),
            Host(
                TARGET,
                routes=(Route(FAKE_CLIENT_NET, COPIER_ADDRESS),),
                sysctls={
                    "net.ipv4.conf.all.rp_filter": 0,
                    "net.ipv4.conf.default.rp_filter": 0,
                    f"net.ipv4.conf.{target_dev}.rp_filter": 0,
                },
            ),
        ),
        links=(link(COPIER, f"{COPIER_ADDRESS}/24", TARGET, f"{TARGET_ADDRESS}/24", b_name=target_dev),),
    )


def two_host(tag: str | None = None, *, offloads: str = "host") -> Lab:
    """A :class:`Lab` (not yet up) of :func:`two_host_topology`."""
    return Lab(two_host_topology(), tag, offloads=offloads)


# The four hosts of the advanced architecture (design §2, §6).
CLIENT = "client"
ONLINE = "online"
ASSISTANT = "assistant"
CLIENT_ADDRESS = "198.18.1.2"          # the real client, on the client link
ONLINE_ADDRESS = "198.18.1.1"          # the online server, as the client sees it
ONLINE_TARGET_SIDE = "198.18.0.1"      # the online host on the replay link (copier's source side)
ONLINE_CONTROL_SIDE = "198.18.2.2"     # the online host on the control link
ASSISTANT_ADDRESS = "198.18.2.1"       # intercept's control channel listens here
ASSISTANT_TARGET_SIDE = "198.18.4.1"   # where the target routes its answers to clients
TARGET_ASSISTANT_SIDE = "198.18.4.2"
CLIENT_NET = "198.18.1.0/24"
# TARGET_ADDRESS (198.18.0.2) and FAKE_CLIENT_NET (198.18.3.0/24, the -c pool) as in two_host.

# The IPv6 twins of the four-host addresses (four_host_v6): 198.18.N.H is 2001:2:0:N::H.
CLIENT_V6 = "2001:2:0:1::2"
ONLINE_V6 = "2001:2:0:1::1"
ONLINE_TARGET_SIDE_V6 = "2001:2::1"
TARGET_V6 = "2001:2::2"
ONLINE_CONTROL_SIDE_V6 = "2001:2:0:2::2"
ASSISTANT_V6 = "2001:2:0:2::1"
ASSISTANT_TARGET_SIDE_V6 = "2001:2:0:4::1"
TARGET_ASSISTANT_SIDE_V6 = "2001:2:0:4::2"
CLIENT_NET_V6 = "2001:2:0:1::/64"
FAKE_CLIENT_NET_V6 = "2001:2:0:3::/64"   # a -c pool for IPv6 clients


def _rp_filter_off(*devices: str) -> dict[str, int]:
    """rp_filter 0 on all, default and each named device (the kernel takes the maximum)."""
    return {f"net.ipv4.conf.{scope}.rp_filter": 0 for scope in ("all", "default", *devices)}


def four_host_topology() -> Topology:
    """Client, online server, target and assistant: TCPCopy's advanced architecture.

    ::

        client 198.18.1.2 ── 198.18.1.1 online 198.18.0.1 ── 198.18.0.2 target
                                        198.18.2.2              198.18.4.2
                                            │                       │
                                        198.18.2.1 assistant 198.18.4.1

    * ``client`` (198.18.1.2/24): the real user. Its only peer, the online server, is on its
      link, so it needs no route (the lab allows no default route).
    * ``online`` (198.18.1.1 to the client, 198.18.0.1 to the target, 198.18.2.2 to the
      assistant): runs the live service and the copier. ip_forward=0 (a server, not a
      router: the client can reach nothing behind it); rp_filter 0.
    * ``target`` (198.18.0.2, 198.18.4.2): the server under test. It routes the client
      network 198.18.1.0/24 and the -c pool 198.18.3.0/24 via the assistant (198.18.4.1),
      so its answers to replayed clients never reach them. rp_filter 0 everywhere, since a
      replayed packet from 198.18.1.2 arrives on the online link while the route back
      points to the assistant.
    * ``assistant`` (198.18.2.1 for the control channel, 198.18.4.1 to the target): the
      black hole. ip_forward=0 and no route to the clients, so answers addressed to them are
      captured on its target-facing veth by intercept and then dropped without RST or ICMP.
    """
    return _four_host_topology(ipv6=False)


def four_host_v6_topology() -> Topology:
    """The four-host lab, dual-stack: every link also has an IPv6 address from 2001:2::/48.

    ::

        client 2001:2:0:1::2 ── 2001:2:0:1::1 online 2001:2::1 ── 2001:2::2 target
                                       2001:2:0:2::2              2001:2:0:4::2
                                            │                          │
                                    2001:2:0:2::1 assistant 2001:2:0:4::1

    The IPv4 side is :func:`four_host_topology`'s; the IPv6 side follows the same idea. The
    target routes the client network 2001:2:0:1::/64 and the -c pool 2001:2:0:3::/64 via the
    assistant (2001:2:0:4::1). The online host and the assistant do not forward
    (``net.ipv6.conf.all.forwarding=0``). Unlike IPv4, a host that does not forward still
    answers a packet it has no route for with an ICMPv6 "no route" error, so the assistant
    has blackhole routes for both client prefixes: answers addressed to clients are captured
    by intercept and dropped without a word. IPv6 has no rp_filter, so a replayed packet
    from 2001:2:0:1::2 on the target's online link is accepted as it is.
    """
    return _four_host_topology(ipv6=True)


def _four_host_topology(ipv6: bool) -> Topology:
    online_dev, assistant_dev = "to-online", "to-assistant"

    def addresses(v4: str, v6: str) -> tuple[str, ...]:
        return (f"{v4}/24", f"{v6}/64") if ipv6 else (f"{v4}/24",)

    no_forwarding = {"net.ipv4.ip_forward": 0, **({"net.ipv6.conf.all.forwarding": 0} if ipv6 else {})}
    target_routes = (Route(CLIENT_NET, ASSISTANT_TARGET_SIDE), Route(FAKE_CLIENT_NET, ASSISTANT_TARGET_SIDE))
    assistant_routes: tuple[Route, ...] = ()
    if ipv6:
        target_routes += (Route(CLIENT_NET_V6, ASSISTANT_TARGET_SIDE_V6),
                          Route(FAKE_CLIENT_NET_V6, ASSISTANT_TARGET_SIDE_V6))
        assistant_routes = (Route(CLIENT_NET_V6), Route(FAKE_CLIENT_NET_V6))
    return Topology(
        hosts=(
            Host(CLIENT),
            Host(ONLINE, sysctls={**no_forwarding, **_rp_filter_off("to-client", "to-target", "to-assistant")}),
            Host(TARGET, routes=target_routes, sysctls=_rp_filter_off(online_dev, assistant_dev)),
            Host(ASSISTANT, routes=assistant_routes, sysctls=no_forwarding),
        ),
        links=(
            link(CLIENT, addresses(CLIENT_ADDRESS, CLIENT_V6), ONLINE, addresses(ONLINE_ADDRESS, ONLINE_V6)),
            link(ONLINE, addresses(ONLINE_TARGET_SIDE, ONLINE_TARGET_SIDE_V6),
                 TARGET, addresses(TARGET_ADDRESS, TARGET_V6)),
            link(ONLINE, addresses(ONLINE_CONTROL_SIDE, ONLINE_CONTROL_SIDE_V6),
                 ASSISTANT, addresses(ASSISTANT_ADDRESS, ASSISTANT_V6)),
            link(TARGET, addresses(TARGET_ASSISTANT_SIDE, TARGET_ASSISTANT_SIDE_V6),
                 ASSISTANT, addresses(ASSISTANT_TARGET_SIDE, ASSISTANT_TARGET_SIDE_V6)),
        ),
    )


def four_host(tag: str | None = None, *, offloads: str = "host") -> Lab:
    """A :class:`Lab` (not yet up) of :func:`four_host_topology`."""
    return Lab(four_host_topology(), tag, offloads=offloads)


def four_host_v6(tag: str | None = None, *, offloads: str = "host") -> Lab:
    """A :class:`Lab` (not yet up) of :func:`four_host_v6_topology`."""
    return Lab(four_host_v6_topology(), tag, offloads=offloads)


TOPOLOGIES: dict[str, Callable[[], Topology]] = {
    "two-host": two_host_topology,
    "four-host": four_host_topology,
    "four-host-v6": four_host_v6_topology,
}


# --------------------------------------------------------------------------- the lab


class Lab:
    """A topology built into network namespaces; a context manager (up on enter, down on exit)."""

    def __init__(self, topology: Topology, tag: str | None = None, *, prefix: str = LAB_PREFIX,
                 offloads: str = "host", grace_s: float = DEFAULT_GRACE_S) -> None:
        if tag is not None and not _TAG_RE.match(tag):
            raise ValueError(f"tag {tag!r}: use 1-8 characters [a-z0-9]")
        if not prefix.startswith(LAB_PREFIX):
            raise ValueError(f"prefix {prefix!r} must start with {LAB_PREFIX!r} so `down` can find it")
        self.topology = topology
        self.prefix = prefix
        self.tag = tag or secrets.token_hex(2)
        if offloads not in OFFLOAD_MODES:
            raise ValueError(f"offloads {offloads!r}: use one of {', '.join(OFFLOAD_MODES)}")
        self.offloads = offloads
        self.grace_s = grace_s
        self._owner_pid = os.getpid()
        self._namespaces: list[str] = []  # created by us, in creation order
        self._procs: list[subprocess.Popen[Any]] = []
        self._children: list[multiprocessing.process.BaseProcess] = []
        self._cleanups: list[Callable[[], object]] = []
        self._lock = threading.RLock()

    # -- names -------------------------------------------------------------------------

    def netns(self, host: str) -> str:
        """The namespace name of ``host``."""
        self.topology.host(host)
        return f"{self.prefix}{self.tag}-{host}"

    @property
    def namespaces(self) -> list[str]:
        return [self.netns(host.name) for host in self.topology.hosts]

    def interface(self, host: str, peer: str | None = None) -> str:
        """The device in ``host`` that links to ``peer`` (or its only device)."""
        for each in self.topology.links:
            ends = (each.a.host, each.b.host)
            if host in ends and (peer is None or peer in ends):
                if peer is None and len(self.topology.devices(host)) > 1:
                    raise ValueError(f"{host} has several devices {self.topology.devices(host)}: name the peer")
                return each.device(host)
        raise KeyError(f"no link from {host!r} to {peer!r}")

    def addresses(self, host: str) -> list[str]:
        """All addresses (``ip/len``) configured on ``host``'s devices."""
        return [a for each in self.topology.links for nic in each.ends() if nic.host == host for a in nic.addresses]

    def address(self, host: str, version: int = 4) -> str:
        """The first address of ``host`` of IP ``version``, without the prefix length."""
        for address in self.addresses(host):
            iface = ipaddress.ip_interface(address)
            if iface.version == version:
                return str(iface.ip)
        raise KeyError(f"{host} has no IPv{version} address")

    # -- life cycle ----------------------------------------------------------------------

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc_info: object) -> None:
        self.down()

    def up(self) -> Lab:
        """Build every host, link, sysctl and route; on any failure remove what was built."""
        require_lab_privileges()
        if self._namespaces:
            raise LabError(f"lab {self.prefix}{self.tag} is already up")
        _register_cleanup(self)
        try:
            self._refuse_existing_namespaces()
            for host in self.topology.hosts:
                self._add_host(host)
            for each in self.topology.links:
                self._add_link(each)
            for host in self.topology.hosts:
                self._apply_sysctls(host)
                self._add_routes(host)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Stop the lab's processes, then delete its namespaces (with their veths and routes).

        Idempotent and tolerant of partial builds; raises LabError after trying everything if
        a namespace could not be removed.
        """
        if os.getpid() != self._owner_pid:
            return  # a forked child never tears down its parent's lab
        with self._lock:
            self._stop_children()
            self._stop_processes()
            self._run_cleanups()
            leftovers: list[str] = []
            for ns in reversed(list(self._namespaces)):
                kill_namespace_processes(ns, self.grace_s)
                if delete_namespace(ns):
                    if ns in self._namespaces:  # a signal handler's teardown may have run meanwhile
                        self._namespaces.remove(ns)
                else:
                    leftovers.append(ns)
            if not leftovers:
                _unregister_cleanup(self)
        if leftovers:
            raise LabError(f"could not delete namespaces {leftovers}: run `python -m tcpcopy.lab.netns down`")

    def add_cleanup(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` at ``down()``, after the lab's processes stopped (last added, first run)."""
        with self._lock:
            self._cleanups.append(callback)

    def detach(self) -> None:
        """Leave the lab up after this process exits (remove it later with the CLI ``down``)."""
        with self._lock:
            self._procs.clear()
            self._children.clear()
            self._cleanups.clear()
            self._namespaces.clear()
            _unregister_cleanup(self)

    # -- running things inside hosts --------------------------------------------------------

    def argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside ``host``."""
        return ["ip", "netns", "exec", self.netns(host), *map(str, argv)]

    def exec(self, host: str, argv: Sequence[str], **run_kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run`` of ``argv`` inside ``host``, with the caller's keyword arguments."""
        return subprocess.run(self.argv(host, argv), **run_kwargs)

    def run(self, host: str, argv: Sequence[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT_S,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``host`` to completion, capturing text output.

        With ``check`` a non-zero exit raises LabError quoting stderr; a command that outlives
        ``timeout`` is killed and raises LabError.
        """
        try:
            done = subprocess.run(self.argv(host, argv), input=input, capture_output=True, text=True, errors="replace",
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LabError(f"`{' '.join(map(str, argv))}` in {host} did not finish within {timeout} s") from None
        if check and done.returncode != 0:
            raise LabError(
                f"`{' '.join(map(str, argv))}` in {host} exited with {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()[-2000:]}"
            )
        return done

    def popen(self, host: str, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in the background inside ``host``; ``down()`` stops it.

        The process leads a new session (its own process group), so a stop reaches its
        children too, and a terminal's Ctrl-C does not race the lab's own teardown. Started
        from the main thread, it also gets SIGTERM if this process dies without cleaning up
        (SIGKILL), so no server outlives its lab's owner.
        """
        self._require_up()
        popen_kwargs.setdefault("start_new_session", True)
        if "preexec_fn" not in popen_kwargs and threading.current_thread() is threading.main_thread():
            popen_kwargs["preexec_fn"] = functools.partial(die_with_parent, os.getpid())
        proc = subprocess.Popen(self.argv(host, argv), **popen_kwargs)
        with self._lock:
            self._procs = [p for p in self._procs if p.poll() is None]
            self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], grace_s: float | None = None,
             sig: signal.Signals = signal.SIGTERM) -> int:
        """Stop a process from :meth:`popen`: ``sig``, then SIGKILL after the grace period."""
        code = stop_process(proc, self.grace_s if grace_s is None else grace_s, sig)
        with self._lock:
            if proc in self._procs:
                self._procs.remove(proc)
        return code

    def spawn(self, host: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> NetnsCall:
        """Run ``func(*args, **kwargs)`` in a forked child that has entered ``host``'s namespace.

        The child sees the parent's memory (no pickling of ``func``); only the result travels
        back, pickled. Use it for work that needs sockets or pcap inside the host.
        """
        self._require_up()
        call = NetnsCall(self.netns(host), func, args, kwargs)
        with self._lock:
            self._children = [c for c in self._children if c.is_alive()]
            self._children.append(call.process)
        return call

    def call(self, host: str, func: Callable[..., Any], *args: Any, timeout: float = COMMAND_TIMEOUT_S,
             **kwargs: Any) -> Any:
        """:meth:`spawn` and wait for the result."""
        return self.spawn(host, func, *args, **kwargs).result(timeout)

    # -- building steps ------------------------------------------------------------------------

    def _require_up(self) -> None:
        if not self._namespaces:
            raise LabError("the lab is not up: call up() or use it as a context manager")

    def _refuse_existing_namespaces(self) -> None:
        taken = [ns for ns in self.namespaces if ns in list_namespaces()]
        if taken:
            raise LabError(f"namespaces {taken} already exist: pick another tag, or remove them with "
                           f"`python -m tcpcopy.lab.netns down --tag {self.tag}`")

    def _add_host(self, host: Host) -> None:
        ns = self.netns(host.name)
        _ip("netns", "add", ns)
        self._namespaces.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def _add_link(self, each: Link) -> None:
        a_ns, b_ns = self.netns(each.a.host), self.netns(each.b.host)
        a_dev, b_dev = each.device(each.a.host), each.device(each.b.host)
        _ip("-n", a_ns, "link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", b_ns)
        ends = ((each.a, a_ns, a_dev), (each.b, b_ns, b_dev))
        for nic, ns, dev in ends:
            self._prepare_nic(nic, ns, dev, each.mtu)
        for _nic, ns, dev in ends:
            _ip("-n", ns, "link", "set", dev, "up")
        # Addresses go on once both ends are up: an IPv6 address added to a link without
        # carrier joins its solicited-node group only about a second after carrier comes,
        # and neighbour solicitations for it are dropped until then.
        for nic, ns, dev in ends:
            for address in nic.addresses:
                extra = ["nodad"] if ipaddress.ip_interface(address).version == 6 else []
                _ip("-n", ns, "addr", "add", address, "dev", dev, *extra)

    def _prepare_nic(self, nic: Nic, ns: str, dev: str, mtu: int | None) -> None:
        if mtu is not None:
            _ip("-n", ns, "link", "set", dev, "mtu", str(mtu))
        if any(ipaddress.ip_interface(a).version == 6 for a in nic.addresses):
            # No duplicate address detection (also for the link-local address) on a link the
            # lab owns both ends of; the kernel skips it only when "all" says so too.
            for scope in ("all", dev):
                self._sysctl(ns, f"net.ipv6.conf.{scope}.accept_dad", 0)
        else:
            # Quiet wire: no router solicitations, MLD or ND on links without IPv6 addresses.
            self._sysctl(ns, f"net.ipv6.conf.{dev}.disable_ipv6", 1)
        set_offloads(ns, dev, OFFLOADS_HOST if self.offloads == "host" else OFFLOADS_OFF)

    def _apply_sysctls(self, host: Host) -> None:
        for key, value in host.sysctls.items():
            self._sysctl(self.netns(host.name), key, value)

    def _sysctl(self, ns: str, key: str, value: str | int) -> None:
        path = "/proc/sys/" + key.replace(".", "/")
        done = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", 'printf "%s\\n" "$1" > "$2"', "sh",
                               str(value), path], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        if done.returncode != 0:
            raise LabError(f"sysctl {key}={value} in {ns} failed: {done.stderr.strip()} "
                           "(is the key per-namespace and the device name right?)")

    def _add_routes(self, host: Host) -> None:
        for route in host.routes:
            spec = ["blackhole", route.prefix] if route.via is None else [route.prefix, "via", route.via]
            _ip("-n", self.netns(host.name), "route", "add", *spec)

    # -- teardown steps ------------------------------------------------------------------------

    def _stop_children(self) -> None:
        for child in reversed(self._children):
            if child.is_alive():
                child.terminate()
                child.join(self.grace_s)
            if child.is_alive():
                child.kill()
                child.join(self.grace_s)
        self._children.clear()

    def _stop_processes(self) -> None:
        for proc in reversed(self._procs):
            stop_process(proc, self.grace_s)
        self._procs.clear()

    def _run_cleanups(self) -> None:
        while self._cleanups:
            cleanup = self._cleanups.pop()
            try:
                cleanup()
            except Exception as exc:  # one failed cleanup must not keep the namespaces alive
                log.error("lab %s cleanup %r: %s", self.tag, cleanup, exc)

    def __repr__(self) -> str:
        state = "up" if self._namespaces else "down"
        return f"<Lab {self.prefix}{self.tag} {[h.name for h in self.topology.hosts]} {state}>"


# --------------------------------------------------------------------------- forked calls


class NetnsCall:
    """A forked child running one function inside a namespace; :meth:`result` collects it."""

    def __init__(self, ns: str, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.ns = ns
        self.name = getattr(func, "__qualname__", repr(func))
        context = multiprocessing.get_context("fork")
        self._receiver, sender = context.Pipe(duplex=False)
        self.process = context.Process(target=_child_main, args=(os.getpid(), ns, func, args, kwargs, sender),
                                       name=f"netns-{ns}", daemon=True)
        self.process.start()
        sender.close()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def result(self, timeout: float = COMMAND_TIMEOUT_S) -> Any:
        """The function's return value; raises LabError if it raised, crashed or overran."""
        try:
            if not self._receiver.poll(timeout):
                self._kill()
                raise LabError(f"{self.name} in {self.ns} did not finish within {timeout} s")
            ok, payload = self._receiver.recv()
        except EOFError:
            self.process.join(1.0)
            raise LabError(f"{self.name} in {self.ns} died (exit code {self.process.exitcode})") from None
        finally:
            self._receiver.close()
        self.process.join(DEFAULT_GRACE_S)
        if not ok:
            raise LabError(f"{self.name} in {self.ns} raised:\n{payload}")
        return payload

    def _kill(self) -> None:
        self.process.terminate()
        self.process.join(DEFAULT_GRACE_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(DEFAULT_GRACE_S)


def _child_main(parent_pid: int, ns: str, func: Callable[..., Any], args: tuple[Any, ...],
                kwargs: dict[str, Any], sender: multiprocessing.connection.Connection) -> None:
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    die_with_parent(parent_pid)
    try:
        enter_namespace(ns)
        outcome: tuple[bool, Any] = (True, func(*args, **kwargs))
    except BaseException:  # report everything, including KeyboardInterrupt, to the parent
        outcome = (False, traceback.format_exc())
    try:
        sender.send(outcome)
    except Exception:  # the result did not pickle
        sender.send((False, traceback.format_exc()))
    sender.close()


def die_with_parent(parent_pid: int, sig: signal.Signals = signal.SIGTERM) -> None:
    """In a child: have the kernel send ``sig`` when the parent dies (also if it already has)."""
    _libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


def enter_namespace(ns: str) -> None:
    """Move the calling process (single-threaded child) into the named network namespace."""
    fd = os.open(NETNS_RUN_DIR / ns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if hasattr(os, "setns"):  # Python >= 3.12
            os.setns(fd, CLONE_NEWNET)
            return
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {ns}: {os.strerror(errno)}")
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- system helpers


def require_lab_privileges() -> None:
    """Raise LabError unless this process can create network namespaces."""
    if os.geteuid() != 0:
        raise LabError("ip netns needs root: run as root")
    if shutil.which("ip") is None:
        raise LabError("iproute2's `ip` is missing: apt-get install iproute2")


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    if done.returncode != 0:
        raise LabError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout


def list_namespaces(prefix: str = LAB_PREFIX) -> list[str]:
    """Names of existing network namespaces that start with ``prefix``."""
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    return sorted(name for name in names if name.startswith(prefix))


def namespace_pids(ns: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    return [int(word) for word in done.stdout.split() if word.isdigit() and int(word) != os.getpid()]


def kill_namespace_processes(ns: str, grace_s: float = DEFAULT_GRACE_S) -> list[int]:
    """SIGTERM every process inside ``ns``, SIGKILL those still there after ``grace_s``."""
    pids = namespace_pids(ns)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while namespace_pids(ns) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in namespace_pids(ns):
        _signal(pid, signal.SIGKILL)
    return pids


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def delete_namespace(ns: str) -> bool:
    """``ip netns del``; True once the namespace is gone (also if it never existed)."""
    if ns not in list_namespaces(ns):
        return True
    done = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    if done.returncode != 0:
        log.warning("ip netns del %s: %s", ns, done.stderr.strip())
    return ns not in list_namespaces(ns)


def stop_process(proc: subprocess.Popen[Any], grace_s: float = DEFAULT_GRACE_S,
                 sig: signal.Signals = signal.SIGTERM) -> int:
    """Stop a process we started (and its process group if it leads one); its exit code."""
    if proc.poll() is None:
        _signal_group_or_pid(proc.pid, sig)
        try:
            return proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            _signal_group_or_pid(proc.pid, signal.SIGKILL)
    return proc.wait()


def _signal_group_or_pid(pid: int, sig: signal.Signals) -> None:
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def set_offloads(ns: str, dev: str, settings: Iterable[tuple[str, str]]) -> None:
    """``ethtool -K dev feature on|off`` for each setting; skip (with a note) what ethtool or
    the driver lacks."""
    if shutil.which("ethtool") is None:
        _warn_once("ethtool is missing, offloads stay as the kernel set them (apt-get install ethtool)")
        return
    for feature, value in settings:
        done = subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-K", dev, feature, value],
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        if done.returncode != 0:
            log.info("ethtool -K %s %s %s in %s not supported: %s", dev, feature, value, ns,
                     done.stderr.strip())


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def remove_stale(prefix: str = LAB_PREFIX, tag: str | None = None,
                 grace_s: float = DEFAULT_GRACE_S) -> list[str]:
    """Remove namespaces named ``prefix[tag-]*`` and kill what runs inside them.

    Only names with the lab prefix are touched; processes inside them were started there by
    a lab, so they are ours.
    """
    require_lab_privileges()
    if not prefix.startswith(LAB_PREFIX):
        raise ValueError(f"prefix {prefix!r} must start with {LAB_PREFIX!r}")
    match = f"{prefix}{tag}-" if tag else prefix
    removed = []
    for ns in list_namespaces(match):
        kill_namespace_processes(ns, grace_s)
        if delete_namespace(ns):
            removed.append(ns)
        else:
            log.warning("could not delete namespace %s", ns)
    return removed


# --------------------------------------------------------------------------- cleanup hooks

_live_labs: dict[int, Lab] = {}
_hooks_installed = False
_previous_handlers: dict[int, Any] = {}


def _register_cleanup(lab: Lab) -> None:
    global _hooks_installed
    _live_labs[id(lab)] = lab
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_tear_down_live_labs)
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous = signal.getsignal(signum)
            if previous is signal.SIG_IGN:
                continue  # whoever ignores the signal does not want it to end the process
            _previous_handlers[signum] = previous
            signal.signal(signum, _on_terminating_signal)


def _unregister_cleanup(lab: Lab) -> None:
    _live_labs.pop(id(lab), None)


def _tear_down_live_labs() -> None:
    for lab in list(_live_labs.values()):
        try:
            lab.down()
        except Exception as exc:  # keep going: the other labs must still go
            log.error("lab %s teardown: %s", lab.tag, exc)


def _on_terminating_signal(signum: int, frame: Any) -> None:
    """Tear the labs down, then let the signal do what it did before: usually end the process."""
    _tear_down_live_labs()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signum, previous)
    os.kill(os.getpid(), signum)


# --------------------------------------------------------------------------- CLI


def _status() -> str:
    names = list_namespaces()
    if not names:
        return "no lab namespaces"
    lines = []
    for ns in names:
        pids = namespace_pids(ns)
        lines.append(f"{ns}  processes: {' '.join(map(str, pids)) or '-'}")
        brief = subprocess.run(["ip", "-n", ns, "-br", "addr"], capture_output=True, text=True,
                               timeout=COMMAND_TIMEOUT_S).stdout
        lines.extend("    " + line for line in brief.splitlines() if not line.startswith("lo "))
    return "\n".join(lines)


def _cmd_up(args: argparse.Namespace) -> int:
    lab = Lab(TOPOLOGIES[args.topology](), args.tag)
    lab.up()
    print(f"lab {lab.prefix}{lab.tag} up:")
    print(_status_of(lab))
    if args.detach:
        lab.detach()
        print(f"left up; remove with: python -m tcpcopy.lab.netns down --tag {lab.tag}")
        return 0
    print("Ctrl-C or SIGTERM tears it down")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        lab.down()
    return 0


def _status_of(lab: Lab) -> str:
    return "\n".join(f"  {host.name:10s} {lab.netns(host.name):24s} "
                     f"{' '.join(lab.addresses(host.name))}" for host in lab.topology.hosts)


def _cmd_down(args: argparse.Namespace) -> int:
    removed = remove_stale(tag=args.tag)
    print("removed: " + (" ".join(removed) if removed else "nothing"))
    left = list_namespaces(f"{LAB_PREFIX}{args.tag}-" if args.tag else LAB_PREFIX)
    if left:
        print(f"still present: {' '.join(left)}", file=sys.stderr)
        return 1
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    print(_status())
    return 0


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcpcopy.lab.netns",
                                     description="Network-namespace lab for tcpcopy (namespaces named tcl-*).")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build a lab; stays up until Ctrl-C unless --detach")
    up.add_argument("--topology", choices=sorted(TOPOLOGIES), default="two-host")
    up.add_argument("--tag", help="run tag (1-8 of [a-z0-9]); random by default")
    up.add_argument("--detach", action="store_true", help="leave the lab up and exit")
    up.set_defaults(func=_cmd_up)
    down = sub.add_parser("down", help=f"remove every {LAB_PREFIX}* namespace and what runs in it")
    down.add_argument("--tag", help="only the lab with this tag")
    down.add_argument("--topology", help=argparse.SUPPRESS)  # accepted for symmetry with up
    down.set_defaults(func=_cmd_down)
    status = sub.add_parser("status", help="list lab namespaces, their processes and addresses")
    status.add_argument("--topology", help=argparse.SUPPRESS)
    status.set_defaults(func=_cmd_status)
    args = parser.parse_args(None if argv is None else list(argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        require_lab_privileges()
        return int(args.func(args))
    except (LabError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
