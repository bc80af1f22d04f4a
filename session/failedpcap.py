"""A pcap file per failed session: what each session keeps, which sessions earn a file, what
the file is called and holds (``tcpcopy --pcap-failed DIR``).

While the feature is on, every session keeps its packets as the owner handles them: the
client's packets as they were captured, the packets the copier sent to the target (rewritten
and replayed), and the target's answers as intercept returned them (headers; whole, cut at
``--answer-bytes``, for compared sessions). A session keeps its first ``HEAD_PACKETS`` (the
handshake, the first requests) and a ring of its latest ones (where it went wrong); the
middle goes first, counted. What one session keeps fits its file (``max_file_bytes``), and
what all of them keep together is charged to one budget (``memory_bytes``): a packet beyond
it evicts the oldest of its own session's ring, or is not kept (counted).

A session earns a file when it ended abnormally (``failure_reason``) or the comparison judged
one of its requests different; it is decided when the owner frees the session (its last
answers are judged then too), so the file holds the packets of its linger time as well. At
most ``max_files`` files are written; the sessions beyond are counted. One classic pcap file
per session, raw IP (LINKTYPE_RAW), opened by Wireshark as it is; timestamps are the owner's
wall clock when it handled each packet (never going back within a file), so the file reads
in the order the copier acted.

Pure: no I/O and no clock; the owner passes wall-clock seconds in and writes the files
(``session/pcapfiles.py``).
"""

from __future__ import annotations

import ipaddress
import struct
from collections import deque
from dataclasses import dataclass

from tcpcopy.capture import packet as pk
from tcpcopy.capture.pcapfile import CLASSIC_HEADER_BYTES, RECORD_HEADER_BYTES, classic_header, classic_record

# Kinds of packets a session keeps.
CLIENT = 0        # captured from the real client, as captured
SENT = 1          # sent by the copier to the target
ANSWER = 2        # the target's answer, headers as intercept returned them (RESPONSES)
ANSWER_WHOLE = 3  # the same answer with its payload (ANSWERS, compared sessions only)
# Seconds a freed session waits for its late whole answers and verdicts: longer than the
# comparison's own wait for a baseline's answers (comparing.GRACE, 2 s).
LATE_FOR = 2.5

HEAD_PACKETS = 32     # a session's first packets, always kept (at most half its file)
PACKET_OVERHEAD = 128  # memory a kept packet costs beyond its bytes (tuple, list slot)
MAX_SNAPLEN = 65535   # the largest IP packet (IPv4 total length, IPv6 without jumbograms)
MIN_FILE_BYTES = 1 << 16

# Drop reasons (session/engine.py, session/table.py) that say nothing about the session:
# the owner stopped (``shutdown``: every live session ends so), the owner shed it while it
# was behind its input (``shed``: a decision about load, and writing files then would add
# to it), or the client reused its 4-tuple for a new connection (``superseded``). Every
# other drop is a failure of the replay: the target refused, stayed silent or kept losing
# segments (syn_timeout, target_refused, target_timeout, retransmit_limit,
# reconnect_limit), the capture lost client bytes (capture_gap), or a bound cut the session
# (buffer_full, memory_budget).
NOT_FAILURES = frozenset(("shutdown", "shed", "superseded"))
# Close reasons that are failures. A close has every captured client byte delivered; of
# them only ``target_reset`` says the target misbehaved: it aborted a connection the client
# had not closed (RFC 9293 §3.10.7.4: a RST in a synchronized state aborts it). The others
# are normal ends: ``completed`` (FINs exchanged), ``client_reset`` (the real client reset
# and the copy did the same), ``idle_timeout`` (-k: every request answered, nothing more).
FAILED_CLOSES = frozenset(("target_reset",))


def failure_reason(dropped: bool, reason: str) -> str | None:
    """Why a session's ending earns it a file (its reason), or None for a normal end."""
    if dropped:
        return None if reason in NOT_FAILURES else reason
    return reason if reason in FAILED_CLOSES else None


@dataclass(frozen=True, slots=True)
class PcapFailedOptions:
    directory: str = ""                 # where the files go ("": off)
    max_files: int = 100                # files written at most (per owner)
    max_file_bytes: int = 1 << 20       # one file at most this long
    memory_bytes: int = 64 << 20        # what all sessions keep together

    @property
    def enabled(self) -> bool:
        return bool(self.directory)

    @property
    def snaplen(self) -> int:
        """A packet is kept cut to this many bytes, so a file holds at least four."""
        return min(MAX_SNAPLEN, self.max_file_bytes // 4 - RECORD_HEADER_BYTES)


@dataclass
class PcapFailedCounters:
    written: int = 0                    # files written
    not_written: int = 0                # sessions that earned a file: the cap was reached or writing failed
    write_errors: int = 0               # ... writing failed (the directory, the disk)
    packets_evicted: int = 0            # a session's oldest middle packets, to fit its file or the budget
    packets_over_budget: int = 0        # not kept: the memory budget was full
    memory_bytes: int = 0               # kept now (gauge)
    memory_peak_bytes: int = 0


@dataclass(frozen=True, slots=True)
class SessionPcap:
    """A file to write: its name (no directory) and its bytes."""

    name: str
    content: bytes
    packets: int


Kept = tuple   # (wall-clock seconds, kind, bytes)


class _Session:
    """What one session keeps: its head, the ring of its latest packets, why it failed."""

    __slots__ = ("token", "started", "last", "head", "tail", "head_bytes", "bytes", "memory", "failure",
                 "differs")

    def __init__(self, token: object, started: float):
        self.token = token                  # the engine object: a new session on the endpoint has another
        self.started = started
        self.last = started                 # the latest time kept: a file's times never go back
        self.head: list[Kept] = []
        self.tail: deque[Kept] = deque()
        self.head_bytes = 0                 # file bytes of the head
        self.bytes = 0                      # file bytes of all (records with their headers)
        self.memory = 0                     # charged to the budget
        self.failure: str | None = None     # the ending's reason, when it failed
        self.differs: str | None = None     # the verdict of its first differing request

    def reason(self) -> str | None:
        return "+".join(r for r in (self.failure, self.differs) if r) or None


class FailedSessions:
    """The packets of every live session, and the files of the failed ones."""

    def __init__(self, options: PcapFailedOptions):
        if options.max_file_bytes < MIN_FILE_BYTES:
            raise ValueError(f"max_file_bytes {options.max_file_bytes} is below {MIN_FILE_BYTES}")
        self.options = options
        self.counters = PcapFailedCounters()
        self._snaplen = options.snaplen
        self._room = options.max_file_bytes - CLASSIC_HEADER_BYTES   # for a session's records
        self._by_session: dict = {}  # engine session -> _Session (an identity lookup per packet)
        self._sessions: dict = {}    # endpoint -> _Session (the events name sessions by endpoint)
        self._previous: dict = {}    # endpoint -> _Session ended, not yet freed, its endpoint reused
        # endpoint -> (_Session freed, when its file is made): intercept's whole answers and
        # the comparison's last verdicts may still come after the table frees a session.
        self._closing: dict = {}

    # ------------------------------------------------------------------ packets (per packet)

    def client_packet(self, sessions: list, data: bytes, at: float) -> None:
        """A captured client packet went to these sessions (engine objects; -n copies)."""
        by_session = self._by_session
        for session in sessions:
            self._keep(by_session.get(session) or self._session(session, at), CLIENT, data, at)

    def sent(self, session, packets: list, at: float) -> None:
        """The copier sent these packets of the session to the target."""
        kept = self._by_session.get(session) or self._session(session, at)
        for data in packets:
            self._keep(kept, SENT, data, at)

    def answer(self, session, data: bytes, at: float) -> None:
        """A header record of the target's answer, routed to the session."""
        self._keep(self._by_session.get(session) or self._session(session, at), ANSWER, data, at)

    def whole_answer(self, endpoint, data: bytes, at: float) -> None:
        """A compared session's answer with its payload (its headers came as ``answer``)."""
        kept = self._sessions.get(endpoint) or self._closing_session(endpoint)
        if kept is not None:
            self._keep(kept, ANSWER_WHOLE, data, at)

    def _session(self, session, at: float) -> _Session:
        """A session seen for the first time."""
        endpoint = session.endpoint
        last = self._sessions.get(endpoint)
        if last is not None:   # the endpoint's next session began before the last one was freed
            self._release(self._previous.pop(endpoint, None))
            self._previous[endpoint] = last
        kept = self._sessions[endpoint] = self._by_session[session] = _Session(session, at)
        return kept

    def _keep(self, kept: _Session, kind: int, data: bytes, at: float) -> None:
        """Times come from two places in the owner's turn (the turn's start, the moment it
        sends); a packet kept later never reads earlier."""
        if at < kept.last:
            at = kept.last
        kept.last = at
        if len(data) > self._snaplen:
            data = data[:self._snaplen]
        size = len(data) + RECORD_HEADER_BYTES
        memory = len(data) + PACKET_OVERHEAD
        counters = self.counters
        if len(kept.head) < HEAD_PACKETS and kept.head_bytes + size <= self._room // 2:
            if counters.memory_bytes + memory > self.options.memory_bytes:
                counters.packets_over_budget += 1
                return
            kept.head.append((at, kind, data))
            kept.head_bytes += size
        else:
            tail = kept.tail
            while tail and (kept.bytes + size > self._room
                            or counters.memory_bytes + memory > self.options.memory_bytes):
                self._evict(kept)
            if kept.bytes + size > self._room or counters.memory_bytes + memory > self.options.memory_bytes:
                counters.packets_over_budget += 1
                return
            tail.append((at, kind, data))
        kept.bytes += size
        kept.memory += memory
        counters.memory_bytes += memory
        if counters.memory_bytes > counters.memory_peak_bytes:
            counters.memory_peak_bytes = counters.memory_bytes

    def _evict(self, kept: _Session) -> None:
        _at, _kind, data = kept.tail.popleft()
        memory = len(data) + PACKET_OVERHEAD
        kept.bytes -= len(data) + RECORD_HEADER_BYTES
        kept.memory -= memory
        self.counters.memory_bytes -= memory
        self.counters.packets_evicted += 1

    def _release(self, kept: _Session | None) -> None:
        if kept is not None:
            self.counters.memory_bytes -= kept.memory
            self._by_session.pop(kept.token, None)

    # ------------------------------------------------------------------ sessions

    def ended(self, endpoint, dropped: bool, reason: str) -> None:
        """The session on ``endpoint`` ended (``Dropped`` or ``Closed`` with ``reason``)."""
        kept = self._previous.get(endpoint) or self._sessions.get(endpoint)
        if kept is not None and kept.failure is None:
            kept.failure = failure_reason(dropped, reason)

    def differs(self, endpoint, verdict: str) -> None:
        """The comparison judged a request of the session on ``endpoint`` different."""
        kept = self._previous.get(endpoint) or self._sessions.get(endpoint) or self._closing_session(endpoint)
        if kept is not None and kept.differs is None:
            kept.differs = verdict

    def freed(self, endpoint, now: float | None = None) -> SessionPcap | None:
        """The session on ``endpoint`` is gone: its file, when it earned one and the cap
        allows. With ``now`` the file is made ``LATE_FOR`` seconds later instead (``due``; a
        file of the endpoint's previous session still held is returned now):
        intercept sends a compared answer's payload in a batch of its own, which may reach
        the owner after the table freed the session, and a file made at once would hold
        only that answer's headers. The caller reports how writing went (``write_failed``)."""
        kept = self._previous.pop(endpoint, None) or self._sessions.pop(endpoint, None)
        if kept is None:
            return None
        if now is None:
            self._release(kept)
            return self._file(endpoint, kept)
        earlier = self._closing.pop(endpoint, None)   # the endpoint's last session: its file now
        self._closing[endpoint] = (kept, now + LATE_FOR)
        if earlier is None:
            return None
        self._release(earlier[0])
        return self._file(endpoint, earlier[0])

    def due(self, now: float) -> list[SessionPcap]:
        """The files of freed sessions whose late answers had their time."""
        files = []
        closing = self._closing
        while closing:
            endpoint = next(iter(closing))
            kept, at = closing[endpoint]
            if at > now:
                break
            del closing[endpoint]
            self._release(kept)
            made = self._file(endpoint, kept)
            if made is not None:
                files.append(made)
        return files

    def _closing_session(self, endpoint) -> _Session | None:
        held = self._closing.get(endpoint)
        return held[0] if held is not None else None

    def finish_all(self) -> list[SessionPcap]:
        """The owner stops: the files of every session still kept that earned one."""
        files = []
        held = {endpoint: kept for endpoint, (kept, _at) in self._closing.items()}
        self._closing.clear()
        for table in (held, self._previous, self._sessions):
            for endpoint, kept in table.items():
                self._release(kept)
                made = self._file(endpoint, kept)
                if made is not None:
                    files.append(made)
            table.clear()
        self._by_session.clear()
        return files

    def write_failed(self) -> None:
        """A file ``freed`` returned could not be written."""
        self.counters.written -= 1
        self.counters.not_written += 1
        self.counters.write_errors += 1

    def _file(self, endpoint, kept: _Session) -> SessionPcap | None:
        reason = kept.reason()
        if reason is None:
            return None
        if self.counters.written >= self.options.max_files:
            self.counters.not_written += 1
            return None
        self.counters.written += 1
        packets = [*kept.head, *kept.tail]
        return SessionPcap(file_name(endpoint, kept.started, reason), pcap_bytes(packets, self._snaplen),
                           len(packets))

    def summary(self) -> dict:
        return dict(self.counters.__dict__,
                    sessions_kept=len(self._sessions) + len(self._previous) + len(self._closing))


# ---------------------------------------------------------------------- the file


def pcap_bytes(packets: list, snaplen: int) -> bytes:
    """A classic pcap file (LINKTYPE_RAW) of ``(seconds, kind, bytes)``, in their order; a
    target's answer kept both as headers and whole appears once, whole, where its headers
    came."""
    parts = [classic_header(pk.LINKTYPE_RAW, snaplen)]
    for at, data in _answers_merged(packets):
        parts.append(classic_record(round(at * 1e9), data, max(len(data), ip_length(data))))
    return b"".join(parts)


def _answers_merged(packets: list) -> list[tuple[float, bytes]]:
    """Each whole answer in place of its header record (same IP and TCP header bytes)."""
    wholes: dict[bytes, deque] = {}
    for _at, kind, data in packets:
        if kind == ANSWER_WHOLE:
            wholes.setdefault(_headers(data), deque()).append(data)
    placed: dict[bytes, int] = {}
    merged = []
    for at, kind, data in packets:
        if kind == ANSWER and wholes:
            header = _headers(data)
            waiting = wholes.get(header)
            if waiting:
                data = waiting.popleft()
                placed[header] = placed.get(header, 0) + 1
        elif kind == ANSWER_WHOLE:
            header = _headers(data)
            if placed.get(header):
                placed[header] -= 1
                continue   # already written where its header record was
            waiting = wholes.get(header)
            if waiting:
                waiting.popleft()
        merged.append((at, data))
    return merged


def _headers(data: bytes) -> bytes:
    try:
        return bytes(data[:pk.decode(data, headers_only=True).payload_off])
    except pk.PacketError:
        return bytes(data)


def ip_length(data: bytes) -> int:
    """The packet's length on the wire by its IP header (0 when it cannot tell)."""
    if len(data) >= 4 and data[0] >> 4 == 4:
        return struct.unpack_from("!H", data, 2)[0]
    if len(data) >= 6 and data[0] >> 4 == 6:
        return 40 + struct.unpack_from("!H", data, 4)[0]
    return 0


def file_name(endpoint, started: float, reason: str) -> str:
    """``<UTC start>_<client>.<port>-<target>.<port>_<reason>.pcap``, e.g.
    ``20250513T101502.123Z_198.18.3.7.40321-198.18.0.2.8080_target_timeout.pcap``: sorted
    by time, found by the endpoint (what ``--compare-log`` names a session by) or the reason."""
    client = f"{ipaddress.ip_address(endpoint.client_ip)}.{endpoint.client_port}"
    target = f"{ipaddress.ip_address(endpoint.target_ip)}.{endpoint.target_port}"
    safe = "".join(c if c.isalnum() or c in "_+-." else "_" for c in reason)
    return f"{utc_stamp(started)}_{client}-{target}_{safe}.pcap"


def utc_stamp(seconds: float) -> str:
    """Seconds since the epoch as ``YYYYMMDDTHHMMSS.mmmZ`` (UTC), computed without a clock
    module (days to a civil date: H. Hinnant's algorithm)."""
    millis = int(seconds * 1000)
    days, millis = divmod(millis, 86_400_000)
    year, month, day = _civil_from_days(days)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{year:04d}{month:02d}{day:02d}T{hours:02d}{minutes:02d}{secs:02d}.{millis:03d}Z"


def _civil_from_days(days: int) -> tuple[int, int, int]:
    days += 719_468
    era = days // 146_097
    day_of_era = days - era * 146_097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    shifted_month = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * shifted_month + 2) // 5 + 1
    month = shifted_month + 3 if shifted_month < 10 else shifted_month - 9
    return year_of_era + era * 400 + (month <= 2), month, day
