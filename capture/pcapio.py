"""Thin adapters over libpcap (pypcap): live capture handles. (Files: capture/pcapfile.py.)

Everything here is I/O; decoding is capture/packet.py's job. Errors that a user can cause
(no such interface, no permission, a bad filter, a missing or corrupt file) come out as
``CaptureError`` with a message that names the fault and the fix.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

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


# Replacing a live filter without a gap -----------------------------------------------------

_SOL_SOCKET, _SO_ATTACH_FILTER = 1, 26
_PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
_RESULTS_KEPT = 64
# Link types whose kernel filter libpcap must rewrite (cooked captures: offsets move).
_COOKED = frozenset((113, 276))   # DLT_LINUX_SLL, DLT_LINUX_SLL2


class _BpfInsn(ctypes.Structure):        # struct bpf_insn, the layout of struct sock_filter
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint32)]


class _BpfProgram(ctypes.Structure):     # struct bpf_program
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn))]


class _SockFprog(ctypes.Structure):      # struct sock_fprog
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_BpfInsn))]


_native = None


def _libraries():
    """libpcap (the one pypcap uses) and libc, loaded once; None where they are not found."""
    global _native
    if _native is None:
        try:
            libpcap = ctypes.CDLL(ctypes.util.find_library("pcap") or "libpcap.so.0.8")
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libpcap.pcap_open_dead.restype = ctypes.c_void_p
            libpcap.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
            libpcap.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram), ctypes.c_char_p,
                                             ctypes.c_int, ctypes.c_uint32]
            libpcap.pcap_geterr.restype = ctypes.c_char_p
            libpcap.pcap_geterr.argtypes = [ctypes.c_void_p]
            libpcap.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
            libpcap.pcap_close.argtypes = [ctypes.c_void_p]
            libc.setsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint]
            _native = (libpcap, libc)
        except (OSError, AttributeError):
            _native = ()
    return _native or None


def _attach_compiled(native, fd: int, linktype: int, snaplen: int, bpf: str, where: str) -> None:
    """Compile ``bpf`` and attach it to the socket ``fd`` in one ``SO_ATTACH_FILTER``: the
    kernel replaces the old filter only once the new one is ready. (libpcap's own
    ``pcap_setfilter`` on Linux first attaches a filter that drops everything and empties the
    socket's queue: every packet that arrives while the kernel checks and compiles the new
    program is lost, and a copy cannot lose a live session's packet.)"""
    libpcap, libc = native
    dead = libpcap.pcap_open_dead(linktype, snaplen)
    if not dead:
        raise CaptureError(f"libpcap could not compile a filter for {where} (pcap_open_dead failed)")
    program = _BpfProgram()
    try:
        if libpcap.pcap_compile(dead, ctypes.byref(program), bpf.encode(), 1, _PCAP_NETMASK_UNKNOWN) != 0:
            reason = (libpcap.pcap_geterr(dead) or b"").decode(errors="replace")
            raise CaptureError(f"bad BPF filter for {where}: {reason} (see pcap-filter(7) for the syntax)")
        fprog = _SockFprog(program.bf_len, program.bf_insns)
        if libc.setsockopt(fd, _SOL_SOCKET, _SO_ATTACH_FILTER, ctypes.byref(fprog), ctypes.sizeof(fprog)) != 0:
            raise CaptureError(f"the kernel refused the filter for {where} ({program.bf_len} instructions): "
                               f"{os.strerror(ctypes.get_errno())}")
    finally:
        libpcap.pcap_freecode(ctypes.byref(program))
        libpcap.pcap_close(dead)


class FilterSwapper:
    """Changes a live handle's kernel filter without stalling the capture or losing a packet.

    libpcap's optimizer takes time that grows with the square of the program (a long skip
    list: tens of milliseconds), and a capture loop that stops reading that long lets the
    kernel's ring overflow. So the filters are compiled in a thread of its own (ctypes lets
    go of the GIL while libpcap works) and attached whole (``_attach_compiled``). Only the
    newest filter asked for is compiled; ``results()`` says, in the capture loop, which were
    attached and which refused (then ``fallback``, the filter the handle started with, is
    attached again). Cooked captures (``any``) need libpcap's rewriting of the program, and a
    host without the libraries has no ctypes path: both swap synchronously with
    ``set_filter``."""

    def __init__(self, handle, where: str, fallback: str):
        self.handle, self.where, self.fallback = handle, where, fallback
        linktype = handle.datalink()
        self._native = None if linktype in _COOKED else _libraries()
        self._socket = (handle.fileno(), linktype, handle.snaplen)
        self._lock = threading.Lock()
        self._wanted: str | None = None
        self._results: list[tuple[str, str | None]] = []   # (filter, None or the refusal)
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    def request(self, bpf: str) -> None:
        """Attach ``bpf`` as soon as it is compiled (a newer request replaces this one)."""
        if self._native is None:
            self._swap_synchronously(bpf)
            return
        with self._lock:
            self._wanted = bpf
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="filter-swapper", daemon=True)
            self._thread.start()
        self._wake.set()

    def results(self) -> list[tuple[str, str | None]]:
        with self._lock:
            done, self._results = self._results, []
        return done

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop:
                return
            with self._lock:
                bpf, self._wanted = self._wanted, None
            if bpf is not None:
                self._record(bpf, self._attach(bpf))

    def _attach(self, bpf: str) -> str | None:
        fd, linktype, snaplen = self._socket
        try:
            _attach_compiled(self._native, fd, linktype, snaplen, bpf, self.where)
            return None
        except CaptureError as exc:
            try:
                _attach_compiled(self._native, fd, linktype, snaplen, self.fallback, self.where)
            except CaptureError:
                pass   # the previous filter stays: it was attached whole
            return str(exc)

    def _record(self, bpf: str, refusal: str | None) -> None:
        with self._lock:
            if len(self._results) >= _RESULTS_KEPT:   # nobody asked for a while: the oldest go
                del self._results[0]
            self._results.append((bpf, refusal))

    def _swap_synchronously(self, bpf: str) -> None:
        try:
            set_filter(self.handle, bpf, self.where)
            self._record(bpf, None)
        except CaptureError as exc:
            set_filter(self.handle, self.fallback, self.where)
            self._record(bpf, str(exc))


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
