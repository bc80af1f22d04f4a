"""Sending replayed packets: raw IP sockets with the IP header included.

IPv4 uses ``AF_INET/SOCK_RAW/IPPROTO_RAW`` (IP_HDRINCL implied, raw(7)); IPv6 uses
``AF_INET6/SOCK_RAW/IPPROTO_RAW``, which on Linux also takes the packet with its header.
A send error never ends the copy: TCPCopy exits on the first EPERM from a full conntrack
table (its issues #252 and #391); here each failure is counted by errno and the packet
dropped, and the session engine's retransmission recovers what it can.
"""

from __future__ import annotations

import errno
import socket

MAX_ADDRESSES = 1024   # destinations whose sendto address is remembered


class RawSendError(RuntimeError):
    """The raw socket cannot be opened (its message says why and what to do)."""


class RawSender:
    def __init__(self, ipv6: bool = False, sndbuf: int = 4 << 20):
        self.sent = 0
        self.failed: dict[str, int] = {}
        family = socket.AF_INET6 if ipv6 else socket.AF_INET
        try:
            self._sock = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
        except PermissionError as exc:
            raise RawSendError("opening a raw IP socket needs root or CAP_NET_RAW: "
                               "run as root or grant the capability") from exc
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        except OSError:
            pass  # the kernel's default buffer still works
        self._ipv6 = ipv6
        self._addresses: dict[bytes, tuple] = {}   # packed target address -> sendto's form

    def _address_of(self, dst: bytes) -> tuple:
        """sendto's address for a packed destination, remembered: copies go to few targets."""
        if len(self._addresses) >= MAX_ADDRESSES:
            self._addresses.clear()
        family = socket.AF_INET6 if self._ipv6 else socket.AF_INET
        address = self._addresses[dst] = (socket.inet_ntop(family, dst), 0)
        return address

    def send(self, packet: bytes) -> bool:
        """Send one IP packet; False (and counted) when the kernel refuses it."""
        dst = packet[24:40] if self._ipv6 else packet[16:20]
        address = self._addresses.get(dst)
        if address is None:
            address = self._address_of(dst)
        try:
            self._sock.sendto(packet, address)
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            self.failed[name] = self.failed.get(name, 0) + 1
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        self._sock.close()


class DualSender:
    """Routes each packet to the IPv4 or the IPv6 raw socket by its version nibble.

    Both sockets are opened at once, so a process that drops its privileges afterwards
    (``--user``) still has them. On a host without IPv6 the second cannot exist: its
    packets are then counted as failed under that errno."""

    def __init__(self) -> None:
        self._v4 = RawSender(ipv6=False)
        self._v6: RawSender | None = None
        self._v6_missing = ""   # errno name when the host has no IPv6 raw socket
        self._v6_failed = 0
        try:
            self._v6 = RawSender(ipv6=True)
        except RawSendError:
            self._v4.close()
            raise
        except OSError as exc:
            self._v6_missing = errno.errorcode.get(exc.errno or 0, str(exc.errno))

    def send(self, packet: bytes) -> bool:
        if packet[0] >> 4 == 6:
            if self._v6 is None:
                self._v6_failed += 1
                return False
            return self._v6.send(packet)
        return self._v4.send(packet)

    @property
    def sent(self) -> int:
        return self._v4.sent + (self._v6.sent if self._v6 else 0)

    @property
    def failed(self) -> dict[str, int]:
        merged = dict(self._v4.failed)
        v6_failed = self._v6.failed if self._v6 else {self._v6_missing: self._v6_failed} if self._v6_failed else {}
        for name, count in v6_failed.items():
            merged[name] = merged.get(name, 0) + count
        return merged

    def close(self) -> None:
        self._v4.close()
        if self._v6:
            self._v6.close()
