"""Which shard owns a flow: one pure function, and the BPF expressions that compute it.

The function is chosen so a kernel BPF filter can compute it too (capture workers and
intercepts filter their slice in the kernel): the client port with its high byte folded
into the low one, plus the last two bytes of the client address, modulo the number of shards. Every packet of a connection, and every copy of
it, lands on the same owner.

Two sides look at the same client endpoint from opposite directions: a capture worker sees
client -> server packets, whose *source* is the client; an intercept sees the target's answers
to a replayed client, whose *destination* is that client. ``capture_shard_filter`` and
``intercept_shard_filter`` are the kernel-side twins of ``flow_shard`` for those two views.

The shard expressions of 0..count-1 partition every frame: each frame is matched by exactly
one of them.

- An IPv4 packet with protocol TCP and fragment offset 0 (a whole packet or a first fragment),
  or an IPv6 packet whose fixed header is followed directly by TCP (next header 6), goes to
  ``flow_shard`` of its endpoint, computed from the port and the address's last byte.
- Everything else goes to shard 0: non-IP frames, UDP, ICMP, later IPv4 fragments (they carry
  no ports), and IPv6 packets with extension headers (classic BPF cannot walk the header
  chain, so their ports are out of reach). Shard 0 keeps them from being lost, so the union
  of the shards always equals the unsharded filter. Only the IPv6 ones can be replayed (the
  decoder walks extension headers); capture worker 0 then routes them to their owner like
  any other packet, since a worker picks owners itself, in user space. An intercept
  therefore sees a target answer carrying IPv6 extension headers only on shard 0, whatever intercept its owner registered with; a Linux target adds none to TCP
  segments unless told to (IPsec, per-socket IPv6 options).
- A frame too short to hold the fields a shard expression reads (an IP header cut before the
  ports, by a too-small snaplen or on the wire) is rejected by every shard, because BPF
  rejects the whole packet when a load runs past the captured bytes. Such a packet is
  malformed for the decoder too; a snaplen of 128 or more always covers the ports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


def flow_shard(client_ip: bytes, client_port: int, count: int) -> int:
    """The shard (0..count-1) of a client endpoint.

    The port's high byte is folded into its low one before the sum: Linux clients pick even
    ephemeral ports for connect() (since 4.2), so the port alone would put every flow of a
    two-way split on one side. The address's last two bytes spread clients behind one port
    pattern."""
    if count <= 1:
        return 0
    return ((client_port ^ (client_port >> 8)) + client_ip[-2] + client_ip[-1]) % count


@dataclass(frozen=True, slots=True)
class _Endpoint:
    """Where one endpoint's port and address's last byte sit, in pcap-filter accessors.

    ``tcp[...]`` is relative to the IPv4 header length (options included) and brings its own
    guards: IPv4, protocol 6, fragment offset 0. ``tcp[...]`` is IPv4 only (pcap-filter(7)),
    so the IPv6 port is read at its fixed offset 40 after an explicit next-header check."""

    v4_port: str
    v4_bytes: str     # the address's last two bytes, as a sum
    v6_port: str
    v6_bytes: str

    def key(self, port: str, address_bytes: str) -> str:
        """flow_shard's sum before the modulo, in pcap-filter arithmetic."""
        return f"(({port} ^ ({port} >> 8)) + {address_bytes})"


_SOURCE = _Endpoint("tcp[0:2]", "ip[14] + ip[15]", "ip6[40:2]", "ip6[22] + ip6[23]")
_DESTINATION = _Endpoint("tcp[2:2]", "ip[18] + ip[19]", "ip6[42:2]", "ip6[38] + ip6[39]")

# Frames the shard expressions can place by their ports: exactly the ones ``tcp[...]``
# reads (IPv4, protocol 6, fragment offset 0) and IPv6 with TCP right after the fixed header.
_V4_TCP_WITH_PORTS = "(ip[9] = 6 and ip[6:2] & 0x1fff = 0)"
_V6_TCP_WITH_PORTS = "(ip6[6] = 6)"
_WITHOUT_PORTS = f"(not {_V4_TCP_WITH_PORTS} and not {_V6_TCP_WITH_PORTS})"


def capture_shard_filter(shard: int, count: int) -> str:
    """The pcap filter of capture worker ``shard`` of ``count``: client -> server packets
    whose source endpoint is in the shard ("" when there is a single worker)."""
    return _shard_filter(_SOURCE, shard, count)


def intercept_shard_filter(shard: int, count: int) -> str:
    """The pcap filter of intercept ``shard`` of ``count``: target answers whose destination
    (the replayed client) is in the shard ("" when there is a single intercept)."""
    return _shard_filter(_DESTINATION, shard, count)


def _shard_filter(endpoint: _Endpoint, shard: int, count: int) -> str:
    """``flow_shard`` as a pcap filter; shard 0 also takes what has no ports (module doc).

    ``%``, ``^`` and ``>>`` are libpcap arithmetic (pcap-filter(7)); the sum of a 16-bit
    value and two bytes never overflows BPF's 32-bit unsigned arithmetic, so the result
    equals ``flow_shard``'s. Every
    term is parenthesized because pcap-filter gives ``and`` and ``or`` the same precedence."""
    _check_shard(shard, count)
    if count == 1:
        return ""
    v4 = f"({endpoint.key(endpoint.v4_port, endpoint.v4_bytes)} % {count} = {shard})"
    v6 = (f"({_V6_TCP_WITH_PORTS} and "
          f"{endpoint.key(endpoint.v6_port, endpoint.v6_bytes)} % {count} = {shard})")
    terms = [v4, v6] if shard else [_WITHOUT_PORTS, v4, v6]
    return "(" + " or ".join(terms) + ")"


def _check_shard(shard: int, count: int) -> None:
    if count < 1:
        raise ValueError(f"shard count {count}: there must be at least one shard")
    if not 0 <= shard < count:
        raise ValueError(f"shard {shard} of {count}: the shard number must be 0..{count - 1}")


def combine_filters(*exprs: str) -> str:
    """The AND of the non-empty filters, each parenthesized ("" when none is left).

    Parentheses keep a user's ``a or b`` from swallowing the terms after it. Put the shard
    expression last: a ``vlan`` or ``mpls`` in an earlier term shifts the offsets of every
    later accessor, so the shard then reads the ports inside the tag as it should."""
    kept = [e.strip() for e in exprs if e and e.strip()]
    return " and ".join(f"({e})" for e in kept)


def compare_sampled(client_ip: bytes, client_port: int, percent: int) -> bool:
    """Whether the connection of this client endpoint is one whose answers are compared
    (``percent`` of 100 of them). Another mix than ``flow_shard``'s, so a two-way shard and
    a 50% sample do not pick the same half."""
    if percent >= 100:
        return True
    if percent <= 0:
        return False
    return _sample_mix(client_port, client_ip[-2], client_ip[-1]) % 100 < percent


def _sample_mix(port: int, high: int, low: int) -> int:
    return (port ^ (port >> 8)) * 31 + high * 7 + low


def online_answers_filter(percent: int) -> str:
    """``compare_sampled`` of the destination endpoint as a pcap filter: the online server's
    answers to the compared clients ("" for all). BPF arithmetic is 32-bit unsigned, and the
    mix stays far below that."""
    if percent >= 100:
        return ""
    if percent <= 0:
        return "less 0"   # matches nothing
    mix = "((tcp[2:2] ^ (tcp[2:2] >> 8)) * 31 + ip[18] * 7 + ip[19])"
    mix6 = "((ip6[42:2] ^ (ip6[42:2] >> 8)) * 31 + ip6[38] * 7 + ip6[39])"
    return f"(({mix} % 100 < {percent}) or ({_V6_TCP_WITH_PORTS} and {mix6} % 100 < {percent}))"


# TCP flags FIN, SYN and RST: the packets of a skipped connection that still reach the
# owner, which learns from them that the connection ended or its 4-tuple was reused.
_NO_SYN_FIN_RST_V4 = "tcp[13] & 7 = 0"
_NO_SYN_FIN_RST_V6 = "ip6[53] & 7 = 0"


def skip_flows_filter(flow_keys) -> str:
    """A pcap filter that drops the packets of the given client connections, all but their
    SYN, FIN and RST ("" for none): what an owner skips anyway (a shed or failed session's
    rest) then costs no capture. ``flow_keys`` are ``pk.flow_key_bytes`` of captured packets:
    source and destination address, then source and destination port.

    Each connection is matched on all four fields as 32-bit words, the cheapest test classic
    BPF has: about four instructions an IPv4 connection once libpcap has optimized it.
    ``tcp[...]`` guards the IPv4 terms (protocol 6, fragment offset 0); IPv6 is read at fixed
    offsets after a next-header check, as the shard expressions do."""
    v4, v6 = [], []
    for key in flow_keys:
        words = [int.from_bytes(key[i:i + 4], "big") for i in range(0, len(key), 4)]
        if len(key) == 12:
            v4.append(f"(ip[12:4] = {words[0]} and ip[16:4] = {words[1]} and tcp[0:4] = {words[2]})")
        elif len(key) == 36:
            fields = [f"ip6[{8 + 4 * i}:4] = {word}" for i, word in enumerate(words[:8])]
            v6.append("(" + " and ".join(fields + [f"ip6[40:4] = {words[8]}"]) + ")")
        else:
            raise ValueError(f"a flow key is 12 (IPv4) or 36 (IPv6) bytes, not {len(key)}")
    groups = []
    if v4:
        groups.append(f"({_NO_SYN_FIN_RST_V4} and ({' or '.join(v4)}))")
    if v6:
        groups.append(f"({_V6_TCP_WITH_PORTS} and {_NO_SYN_FIN_RST_V6} and ({' or '.join(v6)}))")
    return f"not ({' or '.join(groups)})" if groups else ""


_SHARD_TEXT = re.compile(r"\s*(-?[0-9]+)\s*/\s*(-?[0-9]+)\s*", re.ASCII)


def parse_shard(text: str) -> tuple[int, int]:
    """``"k/K"`` (shard k of K, as every launched process gets it) -> ``(k, K)``.

    The message names the option and a value that works, so a hand-edited config is fixed
    at once."""
    match = _SHARD_TEXT.fullmatch(text)
    if match is None:
        raise ValueError(f"--shard {text}: expected SHARD/COUNT, two whole numbers such as "
                         f"0/2 (shard 0 of 2)")
    shard, count = int(match[1]), int(match[2])
    if count < 1:
        raise ValueError(f"--shard {text}: the count must be 1 or more, e.g. 0/1 for a "
                         f"single process")
    if shard < 0:
        raise ValueError(f"--shard {text}: the shard number must be 0 or more, e.g. 0/{count}")
    if shard >= count:
        raise ValueError(f"--shard {text}: the shard number must be below the count, "
                         f"e.g. 0/{count}")
    return shard, count

