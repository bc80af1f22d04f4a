"""Answer comparison inside an owner: which sessions are compared, and both answers of each
of their requests, cut and judged (``session/compare.py`` does the judging).

A compared session's two answer streams are fed from two places: the online server's answers
from the capture worker (the outbound direction of the copied port, sampled in its kernel
filter by ``cluster.shard.compare_sampled``, the same rule the owner samples by) and the
target's answers from intercept (the routes the owner asked it to WATCH). Both streams are
cut at the same requests, by the engine's rule (a content segment whose captured ACK moved
starts a new request): the online stream as the client's segments are captured (the captured
ACK is where the online server's answer starts), the target stream as the engine replays them
(``RequestSent``: the replayed connection's rcv_nxt). Cutting the online side at capture time
keeps it in step with the online answers however far the replay lags behind; the answers of
request k on both sides are judged together. The last answers end when the session does.

Every copy of a captured connection (``-n``) is compared with the same online answers, so each
copy keeps its own online stream.

With a baseline (``--baseline``: a server running the online build, to which compared sessions
are also replayed), its answers are a third stream, cut by its own replay like the target's.
A request is then judged when the baseline's answer to it is there too (or the baseline's
session is over, or the candidate's ended ``GRACE`` seconds ago): what differs between online
and baseline is noise (``session/compare.py`` learns it per request key), and only the
differences between online and target outside it count. A request whose answer bytes never reached the owner on
one side (intercept not started with ``--answer-bytes``, a capture drop) is not judged but
counted as ``not_captured``, so a transport gap never reads as a regression.

Bounded: at most ``max_sessions`` compared sessions at a time (more are not compared,
counted), ``max_bytes`` kept per answer, ``max_records`` difference records waiting for the
owner to write. Pure: no I/O, times are passed in.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from tcpcopy.capture import packet as pk
from tcpcopy.cluster.shard import compare_sampled
from tcpcopy.session.compare import SAME, Answer, AnswerStream, CompareConfig, Comparator
from tcpcopy.session.engine import Endpoint, RequestSent

EndpointKey = tuple   # (client_ip, client_port, target_ip, target_port) of a replayed session
FlowKey = tuple       # (src, sport, dst, dport) of a captured client connection


@dataclass(frozen=True, slots=True)
class CompareOptions:
    percent: int = 0                  # share of sessions compared (0: off)
    max_bytes: int = 64 << 10         # answer bytes kept per request and side
    max_sessions: int = 4096          # compared sessions at a time
    max_records: int = 10_000         # difference records waiting to be written
    config: CompareConfig = field(default_factory=CompareConfig)
    baselines: frozenset = frozenset()   # (target ip packed, port) of the --baseline servers

    @property
    def enabled(self) -> bool:
        return self.percent > 0


@dataclass
class CompareCounters:
    sessions_compared: int = 0
    sessions_not_compared: int = 0    # sampled, but max_sessions were being compared
    not_captured: int = 0             # requests one side's answer bytes never reached
    online_not_captured: int = 0      # ... the online side's
    target_not_captured: int = 0      # ... the target's
    records_dropped: int = 0          # difference records beyond max_records
    answers_dropped: int = 0          # closed answers that waited too long for the other side's
    early_answers_dropped: int = 0    # connections whose early online answers no session claimed
    baseline_sessions: int = 0        # sessions replayed to the baseline for their noise
    without_baseline: int = 0         # requests judged without the baseline's answer (it never came)


@dataclass(frozen=True, slots=True)
class _Boundary:
    """Where a side's answer to request ``index`` starts (a sequence number), and when."""

    index: int
    seq: int
    at: float


class _Side:
    """One side's answer stream, its boundaries not yet applied, and its closed answers.

    A side applies a boundary only once its bytes reach it (the answer before it is then
    whole) or ``GRACE`` seconds after it: the online answers come by way of the capture
    worker and the target's by way of intercept, each in batches of its own, and either may
    arrive after the next request. Closed answers wait for the other side's (the replay lags
    behind the capture); at most ``MAX_WAITING`` of them, the oldest go first, counted."""

    __slots__ = ("stream", "boundaries", "closed", "count", "last_ack")

    def __init__(self, max_bytes: int):
        self.stream = AnswerStream(max_bytes)
        self.boundaries: list[_Boundary] = []
        self.closed: dict[int, Answer] = {}   # request index -> its answer, until judged
        self.count = 0                         # boundaries seen (the next request's index)
        self.last_ack: int | None = None       # online side: the captured ACK of the last request


class _Compared:
    """One compared session: both sides, and the first bytes of each request."""

    __slots__ = ("key", "flow", "online", "target", "heads")

    def __init__(self, key: EndpointKey, flow: FlowKey, max_bytes: int):
        self.key, self.flow = key, flow
        self.online = _Side(max_bytes)
        self.target = _Side(max_bytes)
        self.heads: dict[int, bytes] = {}   # request index -> its first bytes, until judged


class _Baseline:
    """The baseline's replay of a compared connection: its answer stream, and its closed
    answers kept until every copy compared with them has used them."""

    __slots__ = ("key", "flow", "side", "ended", "uses")

    def __init__(self, key: EndpointKey, flow: FlowKey, max_bytes: int):
        self.key, self.flow = key, flow
        self.side = _Side(max_bytes)
        self.ended = False
        self.uses: dict[int, int] = {}   # request index -> copies that were judged with it


GRACE = 2.0          # seconds a boundary waits for the answer bytes before it
TICK_EVERY = 0.25    # seconds between looks for boundaries past their grace
EARLY_MAX = 1024     # connections whose online answers came before their session
EARLY_FOR = 1.0      # seconds such answers are kept
MAX_WAITING = 1024   # closed answers of one side waiting for the other side's


class Comparing:
    def __init__(self, options: CompareOptions):
        self.options = options
        self.comparator = Comparator(options.config)
        self.counters = CompareCounters()
        self._by_endpoint: dict[EndpointKey, _Compared | _Baseline] = {}
        self._by_flow: dict[FlowKey, list[_Compared]] = {}
        self._baselines: dict[FlowKey, _Baseline] = {}
        # Copies whose session ended while the baseline had not answered all their requests
        # yet: key -> (the copy, when it is judged without them).
        self._finishing: dict[EndpointKey, tuple[_Compared, float]] = {}
        self._records: list[dict] = []
        self._next_tick = 0.0
        # Online answers of connections whose session has not started yet (flow -> packets).
        self._early: dict[FlowKey, list[tuple[int, bytes, float]]] = {}

    # ------------------------------------------------------------------ sessions

    def sampled(self, flow: FlowKey) -> bool:
        """Whether sessions of this captured connection are in the compared sample."""
        return compare_sampled(flow[0], flow[1], self.options.percent)

    def knows(self, flow: FlowKey) -> bool:
        return flow in self._by_flow

    def session_started(self, endpoint: Endpoint, flow: FlowKey) -> bool:
        """Whether the new session is compared (the owner then asks intercept to WATCH it)."""
        if not flow or not self.sampled(flow):
            return False
        if len(self._by_endpoint) >= self.options.max_sessions:
            self.counters.sessions_not_compared += 1
            return False
        if (endpoint.target_ip, endpoint.target_port) in self.options.baselines:
            return self._baseline_started(endpoint, flow)
        compared = _Compared(_key(endpoint), flow, self.options.max_bytes)
        self._by_endpoint[compared.key] = compared
        self._by_flow.setdefault(flow, []).append(compared)
        self.counters.sessions_compared += 1
        for seq, data, at in self._early.get(flow, ()):
            compared.online.stream.add(seq, data, at)
        return True

    def _baseline_started(self, endpoint: Endpoint, flow: FlowKey) -> bool:
        if flow in self._baselines:   # a stale one of a reused 4-tuple: its copies judge without it
            self._end_baseline(self._baselines[flow])
        baseline = _Baseline(_key(endpoint), flow, self.options.max_bytes)
        self._by_endpoint[baseline.key] = baseline
        self._baselines[flow] = baseline
        self.counters.baseline_sessions += 1
        return True

    def client_segment(self, flow: FlowKey, ack: int, head: bytes, at: float) -> None:
        """A captured client segment with data (``head``: its first bytes): one whose
        captured ACK moved (or the first) starts a new request, and the online server's
        answer to it starts at that ACK."""
        for compared in self._by_flow.get(flow, ()):
            side = compared.online
            if side.last_ack is not None and ack == side.last_ack:
                continue
            side.last_ack = ack
            compared.heads[side.count] = head
            self._add_boundary(compared, side, _Boundary(side.count, ack, at))

    def request_sent(self, endpoint: Endpoint, event: RequestSent) -> None:
        """The engine replayed a new request: the target's answer to it starts at rcv_nxt."""
        entry = self._by_endpoint.get(_key(endpoint))
        if type(entry) is _Compared:
            side = entry.target
            self._add_boundary(entry, side, _Boundary(side.count, event.target_seq, event.at))
        elif entry is not None:
            side = entry.side
            side.boundaries.append(_Boundary(side.count, event.target_seq, event.at))
            side.count += 1
            self._advance_baseline(entry, event.at)

    def tick(self, now: float) -> None:
        """Apply boundaries whose bytes never came (their grace is over). The owner calls it
        every loop turn; it looks at the sessions every TICK_EVERY seconds."""
        if now < self._next_tick:
            return
        self._next_tick = now + TICK_EVERY
        for entry in list(self._by_endpoint.values()):
            if type(entry) is _Baseline:
                if entry.side.boundaries and now - entry.side.boundaries[0].at > GRACE:
                    self._advance_baseline(entry, now)
                continue
            for side in (entry.online, entry.target):
                if side.boundaries and now - side.boundaries[0].at > GRACE:
                    self._advance(entry, side, now)
        for key, (compared, until) in list(self._finishing.items()):
            if now >= until:
                self._finish(key, compared)

    def session_ended(self, endpoint: Endpoint, now: float | None = None) -> None:
        """The session is freed: its last answers end with what each side sent. A copy
        whose baseline has not answered all its requests yet waits ``GRACE`` seconds past
        ``now`` for it (without ``now`` it is judged at once)."""
        self._end(_key(endpoint), now)

    def finish_all(self) -> None:
        """The owner stops: every compared session's last answers are judged (the
        baselines' sessions end first, so the copies are judged with their last answers)."""
        for baseline in list(self._baselines.values()):
            if not baseline.ended:
                self._end_baseline(baseline)
        for key in list(self._by_endpoint):
            self._end(key, None)
        for key, (compared, _until) in list(self._finishing.items()):
            self._finish(key, compared)

    def _end(self, key: EndpointKey, now: float | None) -> None:
        entry = self._by_endpoint.pop(key, None)
        if entry is None:
            return
        if type(entry) is _Baseline:
            self._end_baseline(entry)
            return
        self._end_side(entry.online, False)
        self._end_side(entry.target, True)
        self._judge_closed(entry)
        if now is not None and entry.online.closed.keys() & entry.target.closed.keys():
            self._finishing[key] = (entry, now + GRACE)   # the baseline's answers may follow
            self._bound_finishing()
        else:
            self._finish(key, entry)

    def _end_side(self, side: _Side, timed: bool) -> None:
        """A side's session is over: apply every boundary, and its last answer ends with
        what it sent."""
        self._apply_boundaries(side, None, timed)
        answer = side.stream.finish()
        if answer is not None and side.count:
            self._close(side, side.count - 1, answer)
        self.comparator.stream_closed(side.stream)

    def _finish(self, key: EndpointKey, compared: _Compared) -> None:
        """Judge what a copy still holds (without the baseline's answers that never came)
        and forget it."""
        self._finishing.pop(key, None)
        self._judge_closed(compared, force=True)
        siblings = self._by_flow.get(compared.flow, [])
        if compared in siblings:
            siblings.remove(compared)
        if not siblings:
            self._by_flow.pop(compared.flow, None)
            baseline = self._baselines.get(compared.flow)
            if baseline is not None and baseline.ended:
                del self._baselines[compared.flow]

    def _bound_finishing(self) -> None:
        while len(self._finishing) > self.options.max_sessions:
            key = next(iter(self._finishing))
            self._finish(key, self._finishing[key][0])

    def _end_baseline(self, baseline: _Baseline) -> None:
        """The baseline's session is over: its last answers close, and the copies compared
        with it are judged with what it answered (and without it past that)."""
        self._by_endpoint.pop(baseline.key, None)
        self._end_side(baseline.side, True)
        baseline.ended = True
        for compared in list(self._by_flow.get(baseline.flow, ())):
            self._judge_closed(compared)
        for key, (compared, _until) in list(self._finishing.items()):
            if compared.flow == baseline.flow:
                self._finish(key, compared)
        if not self._by_flow.get(baseline.flow) and self._baselines.get(baseline.flow) is baseline:
            del self._baselines[baseline.flow]

    def _add_boundary(self, compared: _Compared, side: _Side, boundary: _Boundary) -> None:
        side.boundaries.append(boundary)
        side.count += 1
        self._advance(compared, side, boundary.at)

    def _advance(self, compared: _Compared, side: _Side, now: float | None) -> None:
        """Apply the side's boundaries its bytes reached (all of them when ``now`` is None,
        or those past their grace), then judge the requests both sides closed."""
        # The online side's latency is not measured: its packets' times here are the
        # owner's, not the online host's.
        self._apply_boundaries(side, now, side is compared.target)
        self._judge_closed(compared)

    def _advance_baseline(self, baseline: _Baseline, now: float | None) -> None:
        if self._apply_boundaries(baseline.side, now, True):
            for compared in list(self._by_flow.get(baseline.flow, ())):
                self._judge_closed(compared)

    def _apply_boundaries(self, side: _Side, now: float | None, timed: bool) -> bool:
        """Apply the boundaries the side's bytes reached (all when ``now`` is None, and those
        past their grace); whether an answer closed."""
        stream, closed = side.stream, False
        while side.boundaries:
            boundary = side.boundaries[0]
            due = now is None or now - boundary.at > GRACE
            if not (due or stream.reached(boundary.seq)):
                break
            del side.boundaries[0]
            answer = stream.begin(boundary.seq, boundary.at if timed else None)
            if answer is not None:
                self._close(side, boundary.index - 1, answer)
                closed = True
        return closed

    def _close(self, side: _Side, index: int, answer: Answer) -> None:
        if len(side.closed) >= MAX_WAITING:
            del side.closed[next(iter(side.closed))]
            self.counters.answers_dropped += 1
        side.closed[index] = answer

    def _judge_closed(self, compared: _Compared, force: bool = False) -> None:
        """Judge the requests both sides closed; with a baseline, those it closed too (or
        all of them when it is over, or ``force``: the copy is done waiting)."""
        both = compared.online.closed.keys() & compared.target.closed.keys()
        baseline = self._baselines.get(compared.flow)
        for index in sorted(both):
            base = None
            if baseline is not None:
                base = baseline.side.closed.get(index)
                if base is None and not (baseline.ended or force):
                    continue
                if base is None:
                    self.counters.without_baseline += 1
                else:
                    self._used(baseline, index)
            online = compared.online.closed.pop(index)
            target = compared.target.closed.pop(index)
            head = compared.heads.pop(index, b"")
            self._judge(head, compared.key, online, target, base)
        if len(compared.heads) > 2 * MAX_WAITING:   # requests one side never answered
            for index in sorted(compared.heads)[:len(compared.heads) - MAX_WAITING]:
                del compared.heads[index]

    def _used(self, baseline: _Baseline, index: int) -> None:
        """One more copy was judged with the baseline's answer ``index``: it goes once every
        copy of the connection has been."""
        uses = baseline.uses.get(index, 0) + 1
        if uses >= len(self._by_flow.get(baseline.flow, ())):
            baseline.side.closed.pop(index, None)
            baseline.uses.pop(index, None)
        else:
            baseline.uses[index] = uses

    # ------------------------------------------------------------------ answers

    def online_answer(self, pkt: pk.Packet, at: float) -> None:
        """A packet the online server sent to a client (captured on the online host). One
        for a connection whose session has not started yet is kept a moment: the capture
        worker reads the answers from a ring of their own, which may hand over a packet
        before the other ring hands over the client's SYN and request."""
        if not pkt.payload_len:
            return
        flow = (pkt.dst, pkt.dport, pkt.src, pkt.sport)
        sessions = self._by_flow.get(flow)
        if not sessions:
            self._keep_early(flow, pkt.seq, _payload(pkt), at)
            return
        for compared in sessions:
            self._online_bytes(compared, pkt.seq, _payload(pkt), at)

    def _online_bytes(self, compared: _Compared, seq: int, data: bytes, at: float) -> None:
        compared.online.stream.add(seq, data, at)
        if compared.online.boundaries:
            self._advance(compared, compared.online, at)

    def _keep_early(self, flow: FlowKey, seq: int, data: bytes, at: float) -> None:
        early = self._early
        while early and (len(early) >= EARLY_MAX or at - early[next(iter(early))][0][2] > EARLY_FOR):
            del early[next(iter(early))]
            self.counters.early_answers_dropped += 1
        early.setdefault(flow, []).append((seq, data, at))

    def target_answer(self, pkt: pk.Packet, at: float) -> None:
        """A packet the target sent to a replayed client (from intercept's ANSWERS)."""
        if not pkt.payload_len:
            return
        key = (pkt.dst, pkt.dport, pkt.src, pkt.sport)
        entry = self._by_endpoint.get(key)
        if type(entry) is _Compared:
            entry.target.stream.add(pkt.seq, _payload(pkt), at)
            if entry.target.boundaries:
                self._advance(entry, entry.target, at)
        elif entry is not None:
            entry.side.stream.add(pkt.seq, _payload(pkt), at)
            if entry.side.boundaries:
                self._advance_baseline(entry, at)

    # ------------------------------------------------------------------ results

    def take_records(self) -> list[dict]:
        """Difference records since the last call (for the JSON-lines file)."""
        records, self._records = self._records, []
        return records

    def summary(self) -> dict:
        return {**self.comparator.summary(), **self.counters.__dict__}

    def _judge(self, request: bytes, key: EndpointKey, online: Answer, target: Answer,
               baseline: Answer | None = None) -> None:
        online_gap, target_gap = _not_captured(online), _not_captured(target)
        if online_gap or target_gap:
            self.counters.not_captured += 1
            self.counters.online_not_captured += online_gap
            self.counters.target_not_captured += target_gap
            return
        result = self.comparator.record(request, online, target, baseline)
        if result.verdict == SAME:
            return
        if len(self._records) >= self.options.max_records:
            self.counters.records_dropped += 1
            return
        record = self.comparator.describe(result, request, online, target)
        record["session"] = _endpoint_text(key)
        self._records.append(record)


def _key(endpoint: Endpoint) -> EndpointKey:
    return (endpoint.client_ip, endpoint.client_port, endpoint.target_ip, endpoint.target_port)


def _payload(pkt: pk.Packet) -> bytes:
    return bytes(pkt.buf[pkt.payload_off:pkt.payload_off + pkt.payload_len])


def _not_captured(answer: Answer) -> bool:
    """An answer the side sent (its length is known from sequence numbers) of which no byte
    reached the owner."""
    return answer.length > 0 and not answer.data


def _endpoint_text(key: EndpointKey) -> str:
    client_ip, client_port, target_ip, target_port = key
    return (f"{ipaddress.ip_address(client_ip)}:{client_port} > "
            f"{ipaddress.ip_address(target_ip)}:{target_port}")
