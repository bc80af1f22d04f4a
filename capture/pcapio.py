"""Thin adapters over libpcap (pypcap): live capture handles. (Files: capture/pcapfile.py.)

Everything here is I/O; decoding is capture/packet.py's job. Errors that a user can cause
(no such interface, no permission, a bad filter, a missing or corrupt file) come out as
``CaptureError`` with a message that names the fault and the fix.
"""

from __future__ import annotations

import pcap

from tcpcopy.capture import packet as pk


class CaptureError(RuntimeError):
    """A capture source cannot be opened or read."""


def open_live(iface: str, bpf: str, *, snaplen: int = 262144, promisc: bool = True,
              immediate: bool = True, buffer_bytes: int = 16 << 20, timeout_ms: int = 10,
              inbound_only: bool = False, outbound_only: bool = False):
    """A non-blocking live handle on ``iface`` with ``bpf`` compiled into the kernel.

    ``inbound_only`` keeps packets the host sends out of the capture (a copier must not
    capture its own replayed packets when the online and target ports are equal);
    ``outbound_only`` keeps only those (the online server's answers, for comparing).
    """
    try:
        handle = pcap.pcap(name=iface, snaplen=snaplen, promisc=promisc, immediate=immediate,
                           timeout_ms=timeout_ms, buffer_size=buffer_bytes)
    except OSError as exc:
        raise CaptureError(f"cannot capture on interface {iface!r}: {exc} "
                           "(check the name with 'ip link'; capturing needs root or CAP_NET_RAW)") from exc
    set_filter(handle, bpf, iface)
    if inbound_only or outbound_only:
        direction, name = (pcap.PCAP_D_IN, "inbound") if inbound_only else (pcap.PCAP_D_OUT, "outbound")
        try:
            handle.setdirection(direction)
        except OSError as exc:
            raise CaptureError(f"cannot limit capture on {iface!r} to {name} packets: {exc}") from exc
    handle.setnonblock(True)
    return handle


def set_filter(handle, bpf: str, where: str) -> None:
    try:
        handle.setfilter(bpf)
    except OSError as exc:
        raise CaptureError(f"bad BPF filter {bpf!r} for {where}: {exc} "
                           "(see pcap-filter(7) for the syntax)") from exc


def dispatch(handle, linktype: int, on_packet, *, headers_only: bool = False) -> tuple[int, int]:
    """Decode what a live handle has buffered and pass each packet to ``on_packet``.

    Returns (delivered, malformed): a frame the codec rejects is counted, never raised.
    """
    malformed = 0
    delivered = 0

    def each(ts, frame):
        nonlocal malformed, delivered
        try:
            packet = pk.decode_frame(frame, linktype, headers_only=headers_only)
        except pk.PacketError:
            malformed += 1
            return
        delivered += 1
        on_packet(packet)

    handle.dispatch(-1, each)
    return delivered, malformed
