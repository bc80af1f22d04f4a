"""ICMP and ICMPv6 errors that quote a TCP packet: which flow they are about and what they say.

The codec's second parser, for the one place that reads ICMP: ``tcpcopy --check``
(session/doctor.py) watches for errors about its probe. Pure: bytes in, a record or None out.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass


@dataclass
class IcmpError:
    """An ICMP(v6) error that quotes a TCP packet: who sent it, what it says, about which flow."""

    sender: str      # the address the error came from
    type: int
    code: int
    version: int
    src: bytes       # the quoted packet's addresses and ports
    dst: bytes
    sport: int
    dport: int

    def describe(self) -> str:
        names = ICMP4_NAMES if self.version == 4 else ICMP6_NAMES
        name = names.get((self.type, self.code)) or names.get((self.type, None)) or "error"
        kind = "ICMP" if self.version == 4 else "ICMPv6"
        return f"{kind} {name} (type {self.type} code {self.code}) from {self.sender}"


ICMP4_NAMES = {(3, 0): "net unreachable", (3, 1): "host unreachable", (3, 2): "protocol unreachable",
               (3, 3): "port unreachable", (3, 4): "fragmentation needed",
               (3, 9): "network administratively prohibited", (3, 10): "host administratively prohibited",
               (3, 13): "communication administratively prohibited", (3, None): "destination unreachable",
               (11, 0): "time exceeded in transit", (11, None): "time exceeded", (12, None): "parameter problem"}
ICMP6_NAMES = {(1, 0): "no route to destination", (1, 1): "administratively prohibited",
               (1, 3): "address unreachable", (1, 4): "port unreachable", (1, None): "destination unreachable",
               (2, None): "packet too big", (3, 0): "hop limit exceeded in transit", (3, None): "time exceeded",
               (4, None): "parameter problem"}


def parse_icmp_error(ip: bytes) -> IcmpError | None:
    """The ICMP(v6) error in the IP packet ``ip`` when it quotes a TCP packet, else None.

    Only destination unreachable, time exceeded, parameter problem (and ICMPv6's packet too
    big) quote the packet that caused them; anything else, or anything cut short, is None."""
    try:
        if ip[0] >> 4 == 4:
            ihl = (ip[0] & 0x0F) * 4
            if ip[9] != 1:
                return None
            icmp = ip[ihl:]
            if icmp[0] not in (3, 11, 12):
                return None
            inner = icmp[8:]
            inner_ihl = (inner[0] & 0x0F) * 4
            if inner[0] >> 4 != 4 or inner[9] != 6:
                return None
            sport, dport = struct.unpack_from("!HH", inner, inner_ihl)
            return IcmpError(_address(ip[12:16]), icmp[0], icmp[1], 4, inner[12:16], inner[16:20], sport, dport)
        if ip[0] >> 4 == 6:
            if ip[6] != 58:
                return None
            icmp = ip[40:]
            if icmp[0] not in (1, 2, 3, 4):
                return None
            inner = icmp[8:]
            if inner[0] >> 4 != 6 or inner[6] != 6:
                return None
            sport, dport = struct.unpack_from("!HH", inner, 40)
            return IcmpError(_address(ip[8:24]), icmp[0], icmp[1], 6, inner[8:24], inner[24:40], sport, dport)
    except (IndexError, struct.error):
        return None
    return None


def _address(raw: bytes) -> str:
    return str(ipaddress.ip_address(bytes(raw)))
