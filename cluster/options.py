"""Typed values of the command-line flags that TCPCopy users know, parsed and validated once.

``-x [onlineIP:]onlinePort-targetIP:targetPort[,...]``, ``-s ip[:port][,...]`` and
``-c ip[,a.b.c.x,...]`` keep the C tool's syntax; IPv6 addresses go in brackets
(``[2001:2::10]:80-[2001:2::2]:8080``). Every parse error is an ``OptionError`` whose text
names the flag, the bad value and the expected form.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from tcpcopy.cluster.shard import combine_filters, online_answers_filter

DEFAULT_INTERCEPT_PORT = 36524
MAX_CLIENT_POOL = 65536


class OptionError(ValueError):
    """A flag value that cannot be used; the message says which and how to fix it."""


@dataclass(frozen=True, slots=True)
class Mapping:
    """One ``-x`` entry: traffic to (online_ip or any local address, online_port) is copied
    to (target_ip, target_port)."""

    online_ip: str | None
    online_port: int
    target_ip: str
    target_port: int

    def matches(self, dst_ip: str, dst_port: int) -> bool:
        return dst_port == self.online_port and (self.online_ip is None or self.online_ip == dst_ip)


@dataclass(frozen=True, slots=True)
class InterceptAddress:
    host: str
    port: int

    @property
    def zmq_endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"

    def __str__(self) -> str:
        return self.zmq_endpoint[len("tcp://"):]


def _address(text: str, flag: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise OptionError(f"{flag}: {text!r} is not an IP address ({what})") from None


def _port(text: str, flag: str, what: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise OptionError(f"{flag}: {text!r} is not a port 1-65535 ({what})")
    return int(text)


def _split_host_port(text: str) -> tuple[str | None, str]:
    """'1.2.3.4:80' -> ('1.2.3.4', '80'); '[2001:2::1]:80' -> ('2001:2::1', '80'); '80' -> (None, '80')."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            return text, ""
        return host, port
    host, sep, port = text.rpartition(":")
    if not sep:
        return None, text
    return host, port


def parse_mappings(value: str, flag: str = "-x") -> tuple[Mapping, ...]:
    """``-x``: comma-separated ``[onlineIP:]onlinePort-targetIP:targetPort``."""
    form = "expected [onlineIP:]onlinePort-targetIP:targetPort, e.g. 80-198.18.0.2:8080"
    mappings = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        online, sep, target = _split_mapping(item)
        if not sep:
            raise OptionError(f"{flag}: {item!r}: {form}")
        online_host, online_port = _split_host_port(online)
        target_host, target_port = _split_host_port(target)
        if target_host is None:
            raise OptionError(f"{flag}: {item!r}: the target needs an address ({form})")
        mapping = Mapping(
            None if online_host in (None, "", "0", "0.0.0.0", "::") else _address(online_host, flag, form),
            _port(online_port, flag, form),
            _address(target_host, flag, form),
            _port(target_port, flag, form))
        if mapping.online_ip is not None and (":" in mapping.online_ip) != (":" in mapping.target_ip):
            raise OptionError(f"{flag}: {item!r}: online and target addresses must be the same IP version ({form})")
        mappings.append(mapping)
    if not mappings:
        raise OptionError(f"{flag}: no mapping given ({form})")
    return tuple(mappings)


def parse_baselines(value: str, mappings: tuple[Mapping, ...]) -> tuple[Mapping, ...]:
    """``--baseline``: where compared sessions are also replayed, written like ``-x``
    (``80-198.18.2.2:8081``): a server that runs the online build, whose differences from
    the online answers mark what is noise. Each names the online side of one ``-x`` mapping
    and a target of the same IP version that is not that mapping's own target."""
    baselines = parse_mappings(value, "--baseline")
    for baseline in baselines:
        mapping = next((m for m in mappings if (m.online_ip, m.online_port) == (baseline.online_ip,
                                                                                baseline.online_port)), None)
        shown = f"{baseline.online_ip + ':' if baseline.online_ip else ''}{baseline.online_port}"
        if mapping is None:
            raise OptionError(f"--baseline: {shown} is not the online side of any -x mapping: write it as "
                              f"the -x mapping's online part, e.g. -x 80-TARGET:8080 --baseline 80-BASELINE:8080")
        if (baseline.target_ip, baseline.target_port) == (mapping.target_ip, mapping.target_port):
            raise OptionError(f"--baseline: {baseline.target_ip}:{baseline.target_port} is the -x target itself: "
                              "the baseline is a second server running the online build")
        if (":" in baseline.target_ip) != (":" in mapping.target_ip):
            raise OptionError(f"--baseline: {baseline.target_ip} and the -x target {mapping.target_ip} must be "
                              "of the same IP version (the replayed clients have one address)")
    if len({(b.online_ip, b.online_port) for b in baselines}) != len(baselines):
        raise OptionError("--baseline: one baseline per -x mapping")
    return baselines


def _split_mapping(item: str) -> tuple[str, str, str]:
    """Split at the '-' between the online and target parts (IPv6 brackets hold no '-')."""
    depth = 0
    for i, char in enumerate(item):
        depth += char == "["
        depth -= char == "]"
        if char == "-" and depth == 0:
            return item[:i], "-", item[i + 1:]
    return item, "", ""


def parse_intercepts(value: str, default_port: int = DEFAULT_INTERCEPT_PORT) -> tuple[InterceptAddress, ...]:
    """``-s``: comma-separated ``ip[:port]``; the port defaults to ``-p``."""
    form = "expected ip[:port][,ip[:port]...], e.g. 198.18.2.1:36524"
    out = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        if item.startswith("[") or item.count(":") == 1:
            host, port = _split_host_port(item)
        else:
            host, port = item, ""  # a bare address, IPv4 or IPv6: the default port
        address = _address(host or "", "-s", form)
        out.append(InterceptAddress(address, _port(port, "-s", form) if port else default_port))
    if not out:
        raise OptionError(f"-s: no intercept given ({form})")
    if len(set(out)) != len(out):
        raise OptionError("-s: the same intercept is listed twice")
    return tuple(out)


def parse_client_pool(value: str, exclude: frozenset[str] | set[str] = frozenset()) -> tuple[str, ...]:
    """``-c``: addresses replayed sessions use as their source; ``a.b.c.x`` means
    a.b.c.1-a.b.c.254. Target addresses are left out, as TCPCopy does."""
    pool: list[str] = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        if item.endswith(".x"):
            prefix = item[:-2]
            try:
                ipaddress.IPv4Address(prefix + ".0")
            except ValueError:
                raise OptionError(f"-c: {item!r}: the .x form is for IPv4 (a.b.c.x, e.g. 198.18.3.x)") from None
            pool.extend(f"{prefix}.{i}" for i in range(1, 255))
        elif item == "*":
            raise OptionError("-c: '*' is not an address; list addresses or use a.b.c.x")
        else:
            pool.append(_address(item, "-c", "expected an address or a.b.c.x"))
    pool = [a for a in dict.fromkeys(pool) if a not in exclude]
    if not pool:
        raise OptionError("-c: no usable client address (target addresses are excluded)")
    if len(pool) > MAX_CLIENT_POOL:
        raise OptionError(f"-c: {len(pool)} addresses, at most {MAX_CLIENT_POOL}")
    return tuple(pool)


# Ports where the server speaks first (SMTP on 25, 587 and 2525, FTP, POP3, IMAP, NNTP,
# SSH, telnet, MySQL, VNC). There the client's pure ACK of the handshake tells how long the online server's
# greeting was, so that a replayed session waits for the target's before it speaks: the
# capture keeps every pure ACK on them.
SERVER_FIRST_PORTS = frozenset({21, 22, 23, 25, 110, 119, 143, 587, 2525, 3306, 5900})

# A client packet the copier replays: SYN, FIN or RST, or a payload (IP length minus the
# IP and TCP headers). A pure ACK matches none of them and never leaves the kernel: the
# copier acknowledges the target itself (RFC 9293 §3.10.7.4: an ACK that carries nothing
# needs no answer), and at up to half of a connection's client packets they were half of
# the capture's and much of the owner's work. libpcap's tcp[] does not reach into IPv6, so
# there the TCP header is read right after the fixed one (40 bytes); an IPv6 packet with
# extension headers always passes.
CARRIES_SOMETHING = ("((ip and (tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0"
                     " or ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2) != 0))"
                     " or (ip6 and (ip6[6] != 6 or ip6[53] & 0x07 != 0"
                     " or ip6[4:2] - ((ip6[52] & 0xf0) >> 2) != 0)))")


def capture_filter(mappings: tuple[Mapping, ...], user_filter: str | None = None,
                   all_acks: bool = False) -> str:
    """The BPF filter a capture worker compiles: client packets to any ``-x`` online
    address, AND the user's ``-F`` when given. Pure ACKs are left out (``CARRIES_SOMETHING``)
    unless ``all_acks`` (--all-acks) or the online port is one where the server speaks first."""
    every = tuple(m for m in mappings if all_acks or m.online_port in SERVER_FIRST_PORTS)
    content = tuple(m for m in mappings if m not in every)
    terms = []
    if content:
        terms.append(f"(({_online_terms(content, 'dst')}) and {CARRIES_SOMETHING})")
    if every:
        terms.append(f"({_online_terms(every, 'dst')})")
    auto = f"tcp and ({' or '.join(terms)})"
    return f"({auto}) and ({user_filter})" if user_filter else auto


def online_answers_capture_filter(mappings: tuple[Mapping, ...], percent: int) -> str:
    """The BPF filter of the online server's answers to the compared clients: packets from
    any ``-x`` online address and port, sampled on their destination (the client) by
    ``cluster.shard.compare_sampled``'s twin."""
    return combine_filters(_online_side_filter(mappings, "src"), online_answers_filter(percent))


def _online_side_filter(mappings: tuple[Mapping, ...], side: str) -> str:
    """TCP with the online address and port of any ``-x`` as its ``side`` ("dst": what
    clients send to the online server, "src": what it answers)."""
    return f"tcp and ({_online_terms(mappings, side)})"


def _online_terms(mappings: tuple[Mapping, ...], side: str) -> str:
    """``(side port P [and side host H]) or ...``, once each."""
    terms = []
    for m in mappings:
        term = f"{side} port {m.online_port}"
        if m.online_ip is not None:
            term += f" and {side} host {m.online_ip}"
        terms.append(f"({term})")
    return " or ".join(dict.fromkeys(terms))
