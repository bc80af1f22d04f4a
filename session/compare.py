"""Comparing what the target answered with what the online server answered, per request.

Theory of operation
===================

The session engine paces a replayed connection by requests (see ``engine``): a content
segment whose captured ACK moved starts a new request, and the handshake is request zero.
The same boundaries cut each side's answer bytes into per-request answers:

* **Online side.** The captured ACK of a request is the online server's sequence number
  when the client sent it: the online answer to request k is the online server's bytes
  between request k's captured ACK and request k+1's.
* **Target side.** The engine's ``rcv_nxt`` when it sends request k is where the target's
  answer to it starts; the next request's ``rcv_nxt`` is where it ends.

An ``AnswerStream`` per side and connection takes the answer bytes with their sequence
numbers (in any order, repeated or overlapping) and is told each boundary (``begin``); it
hands back one ``Answer`` per request: its first ``max_bytes`` bytes, its full length (from
sequence numbers, so it is right even for bytes not kept), what was cut or never arrived,
and the latency from the request to the first answer byte.

A ``Comparator`` judges each request from the two answers (and optionally a *baseline*'s,
a second copy of the online build) and gives it one verdict, the first that applies of
``no_answer`` (the target sent nothing where the online server answered),
``status_differs``, ``length_differs``, ``body_differs``, ``headers_differ``, ``same``:

* HTTP/1.x answers are parsed (status, headers, chunked framing, gzip/deflate bodies),
  with every size bounded; malformed input becomes a parse note and a ``body_differs``
  verdict, never an exception. The status, the configured headers (volatile ones ignored)
  and the decoded body (length and BLAKE2b digest) are compared. Content-Length,
  Transfer-Encoding and Content-Encoding say how the body travels, so the decoded body
  stands for them: chunked or not, gzip or identity, the same body is the same answer.
  Other protocols are compared by length and digest of the bytes.
* User masks (regexes) replace what matches with a fixed token first: in header values,
  decoded bodies and raw answers, and in the request key. Bodies cut at ``max_bytes`` are
  compared over the bytes both sides hold, and by their lengths as sent.
* **Noise from a baseline**, as Twitter's Diffy does it: what differs between online and
  baseline (the same build twice) is noise, and only differences between online and the
  candidate that are not noise count. Noise is learned per request key (HTTP method and
  path without its query; the first line of anything else) and kept across requests.

Noise granularity
-----------------

Status and headers are fields: a field (the status, one header name) that differed between
online and baseline is noisy for that key. Bodies are diffed as *tokens* of the masked text
(runs of word characters and of the characters ids and timestamps are made of, runs of
whitespace, single other bytes), not as byte ranges or parsed JSON. A random value (an id,
a nonce, a timestamp) is one token whatever its length, so it is one differing region and
a real change next to it (a path, a count) stays a region of its own; byte ranges would
shift with every length change, and parsing JSON would serve one format only.

A region where online and candidate differ is noise when it lies inside a region where
online and baseline differed in the same request, or when it follows a *context* (the
tokens back to the nearest word, like ``"id": "`` or ``token=``) after which they differed
for the same key before; either way it may be at most twice as wide in tokens. The context
is what carries noise across requests whose bodies differ elsewhere, the way a field name
carries it in Diffy.

The diff is a patience diff (common ends cut off, tokens unique on both sides as anchors,
difflib on the bounded gaps between them), so its cost stays near linear in the body (tens
of milliseconds for a 30 KB JSON answer), and bodies that differ throughout cost no more. It
runs only for a key with noise and bodies that differ. A baseline too unlike the online answer (less
than half its tokens in common, or another status) teaches nothing about bodies
(``noise_bodies_skipped``); bodies of more than ``max_diff_tokens`` tokens fall back to one
field for the whole body (``noise_coarse``).

Bounds
------

Everything is bounded and every cut is counted (``Cuts``): bytes kept per answer, decoded
bytes per answer (decompression stops at the cap), header lines, messages per answer,
noise keys (least recently used go first), noisy fields, spans and contexts per key,
examples per verdict, latency samples (a reservoir).

Pure: no socket, clock, capture or messaging; times are passed in.
"""

from __future__ import annotations

import bisect
import difflib
import hashlib
import math
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from tcpcopy.session.seqnum import unwrap

# Verdicts, most severe first: a request gets the first that applies.
NO_ANSWER = "no_answer"
STATUS_DIFFERS = "status_differs"
LENGTH_DIFFERS = "length_differs"
BODY_DIFFERS = "body_differs"
HEADERS_DIFFER = "headers_differ"
SAME = "same"
VERDICTS = (SAME, STATUS_DIFFERS, HEADERS_DIFFER, BODY_DIFFERS, LENGTH_DIFFERS, NO_ANSWER)

# Headers that change from one answer to the next on the same build.
DEFAULT_VOLATILE = frozenset({
    "date", "server", "set-cookie", "etag", "last-modified", "expires", "age",
    "x-request-id",
    "keep-alive",  # its max= counts the requests left on the connection
})
# How the body travels, not what it is: the decoded, masked bodies are compared instead, so
# chunked and Content-Length, gzip and identity, or masked values of another length compare
# equal. Content-Length is compared as a header only where there is no body (HEAD, 204, 304).
FRAMING_HEADERS = frozenset({"transfer-encoding", "content-encoding", "content-length"})
MASK_TOKEN = b"<masked>"

_MAX_DIFFERENCES = 16      # differences reported per request
_SHOW = 80                 # characters of a value shown in a difference
_MAX_SPANS = 256           # noisy regions kept from one online/baseline body diff
_M64 = (1 << 64) - 1


# ---------------------------------------------------------------------------------------
# Answer assembly


@dataclass(frozen=True, slots=True)
class Answer:
    """What one side answered to one request."""

    data: bytes                    # its first bytes, contiguous from its start
    length: int                    # bytes the side sent for it (from sequence numbers)
    cut: int = 0                   # bytes past the stream's max_bytes, not kept
    missing: int = 0               # bytes within the kept range that never arrived
    latency: float | None = None   # first answer byte minus the request's send time (one clock)

    @classmethod
    def whole(cls, data: bytes, latency: float | None = None) -> "Answer":
        """An answer held entirely."""
        return cls(bytes(data), len(data), latency=latency)

    @property
    def complete(self) -> bool:
        return self.cut == 0 and self.missing == 0


class AnswerStream:
    """One side's answer bytes on one connection, cut into per-request answers.

    Positions are sequence numbers, 32-bit or already unwrapped: each is unwrapped near the
    highest position seen (``seqnum.unwrap``). ``begin`` marks where the answer to a request
    starts and when the request was sent, and closes the previous answer there. Bytes are
    held only near the current answer (its first ``max_bytes`` and as much again ahead,
    which may be the next answer's start when segments come out of order), in at most
    ``max_segments`` segments and ``2 * max_bytes`` bytes; every byte not kept is counted
    once, with its answer: past ``max_bytes`` as ``cut``, else as ``missing``.
    """

    __slots__ = ("max_bytes", "max_segments", "_start", "_sent_at", "_segments", "_held",
                 "_highest", "answers", "bytes_cut", "bytes_missing", "bytes_stray",
                 "segments_dropped", "boundaries_backwards")

    def __init__(self, max_bytes: int = 64 << 10, max_segments: int = 4096):
        if max_bytes < 1 or max_segments < 1:
            raise ValueError("max_bytes and max_segments must be at least 1")
        self.max_bytes = max_bytes
        self.max_segments = max_segments
        self._start: int | None = None       # the current answer's first position
        self._sent_at: float | None = None   # when its request was sent
        self._segments: dict[int, tuple[bytes, float]] = {}  # position -> (bytes, arrival)
        self._held = 0
        self._highest: int | None = None     # end of the highest byte seen
        self.answers = 0
        self.bytes_cut = 0                   # past max_bytes of their answer
        self.bytes_missing = 0               # within the kept range, never held
        self.bytes_stray = 0                 # before the first answer or already cut
        self.segments_dropped = 0            # refused: max_segments or the byte bound
        self.boundaries_backwards = 0        # a boundary before the current answer's start

    def begin(self, position: int, at: float) -> Answer | None:
        """A request was sent at ``at`` and its answer starts at ``position``: the previous
        answer (if any) ends there and is returned."""
        pos = self._position(position)
        self._highest = max(self._highest, pos)
        previous = None
        if self._start is None:
            self._discard_before(pos, stray=True)
        else:
            if pos < self._start:
                self.boundaries_backwards += 1
                pos = self._start
            previous = self._close(pos)
        self._start, self._sent_at = pos, at
        return previous

    def add(self, seq: int, data: bytes, at: float) -> None:
        """Answer bytes at sequence number ``seq``, seen at ``at``."""
        if not data:
            return
        start = self._position(seq)
        end = start + len(data)
        self._highest = end if self._highest is None else max(self._highest, end)
        if self._start is not None and start < self._start:
            if end <= self._start:
                self.bytes_stray += len(data)
                return
            data, start = data[self._start - start:], self._start
        self._hold(start, bytes(data), at)

    def reached(self, position: int) -> bool:
        """Whether bytes up to ``position`` (a sequence number) have been seen: the answer
        that ends there is whole, as far as this side's packets can tell."""
        if self._highest is None:
            return False
        return unwrap(position, self._highest) <= self._highest

    def finish(self, position: int | None = None) -> Answer | None:
        """The connection ended: the current answer ends at ``position`` (the FIN's
        sequence number) or after the highest byte seen. The stream may begin again."""
        if self._start is None:
            return None
        if position is None:
            end = max(self._start, self._highest if self._highest is not None else 0)
        else:
            end = max(self._start, self._position(position))
        answer = self._close(end)
        self._start = self._sent_at = None
        return answer

    def _position(self, seq: int) -> int:
        if self._highest is None:
            self._highest = seq
            return seq
        return unwrap(seq, self._highest)

    def _hold(self, start: int, data: bytes, at: float) -> None:
        window_end = (start if self._start is None else self._start) + 2 * self.max_bytes
        if start >= window_end:
            return  # counted with its answer: past max_bytes (cut) or at its start (missing)
        data = data[:window_end - start]
        held = self._segments.get(start)
        if held is not None and len(held[0]) >= len(data):
            return  # a repeat
        grows = len(data) - (len(held[0]) if held else 0)
        full = held is None and len(self._segments) >= self.max_segments
        if full or self._held + grows > 2 * self.max_bytes:
            self.segments_dropped += 1
            return
        self._segments[start] = (data, min(at, held[1]) if held else at)
        self._held += grows

    def _close(self, end: int) -> Answer:
        start = self._start
        length = end - start
        keep_end = start + min(length, self.max_bytes)
        data = self._assemble(start, keep_end)
        first_at = self._first_arrival(start, end)
        self._discard_before(end, stray=False)
        cut = length - (keep_end - start)
        missing = keep_end - start - len(data)
        latency = None
        if first_at is not None and self._sent_at is not None:
            latency = max(0.0, first_at - self._sent_at)
        self.answers += 1
        self.bytes_cut += cut
        self.bytes_missing += missing
        return Answer(data, length, cut, missing, latency)

    def _assemble(self, start: int, end: int) -> bytes:
        """The bytes from ``start`` up to ``end`` or the first hole."""
        parts, cursor = [], start
        for pos in sorted(self._segments):
            if cursor >= end or pos > cursor:
                break
            data = self._segments[pos][0]
            if pos + len(data) > cursor:
                parts.append(data[cursor - pos:end - pos])
                cursor = min(pos + len(data), end)
        return b"".join(parts)

    def _first_arrival(self, start: int, end: int) -> float | None:
        times = [at for pos, (data, at) in self._segments.items()
                 if pos < end and pos + len(data) > start]
        return min(times) if times else None

    def _discard_before(self, position: int, stray: bool) -> None:
        for pos in [p for p in self._segments if p < position]:
            data, at = self._segments.pop(pos)
            self._held -= len(data)
            behind = min(len(data), position - pos)
            if stray:
                self.bytes_stray += behind
            if behind < len(data):
                self._keep_tail(position, data[behind:], at)

    def _keep_tail(self, position: int, tail: bytes, at: float) -> None:
        held = self._segments.get(position)
        if held is not None and len(held[0]) >= len(tail):
            return
        self._held += len(tail) - (len(held[0]) if held else 0)
        self._segments[position] = (tail, min(at, held[1]) if held else at)


# ---------------------------------------------------------------------------------------
# Configuration and masks


class MaskError(ValueError):
    """A mask is not a valid regular expression."""


@dataclass(frozen=True, slots=True)
class CompareConfig:
    """What is compared and every bound of the comparison."""

    headers: frozenset[str] | None = None          # only these headers (None: all)
    ignore_headers: frozenset[str] = DEFAULT_VOLATILE
    masks: tuple[str, ...] = ()                    # regexes replaced by MASK_TOKEN
    max_head_bytes: int = 16 << 10                 # status line and headers of a message
    max_headers: int = 128                         # header lines per message
    max_messages: int = 32                         # HTTP messages per answer
    max_decoded_bytes: int = 1 << 20               # decompressed body bytes per answer
    max_diff_tokens: int = 1 << 16                 # body tokens diffed for noise
    max_noise_keys: int = 1024
    max_noise_fields: int = 64                     # per key
    max_noise_contexts: int = 64                   # per key
    examples_per_verdict: int = 5
    example_bytes: int = 256
    reservoir_size: int = 1024                     # latency samples kept per side
    seed: int = 0

    def __post_init__(self):
        for name in ("max_head_bytes", "max_headers", "max_messages", "max_decoded_bytes",
                     "max_diff_tokens", "max_noise_keys", "max_noise_fields",
                     "max_noise_contexts", "example_bytes", "reservoir_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.examples_per_verdict < 0:
            raise ValueError("examples_per_verdict must not be negative")
        if self.headers is not None:
            object.__setattr__(self, "headers", frozenset(h.lower() for h in self.headers))
        object.__setattr__(self, "ignore_headers",
                           frozenset(h.lower() for h in self.ignore_headers))
        object.__setattr__(self, "masks", tuple(self.masks))

    def compares_header(self, name: str, bodiless: bool = False) -> bool:
        """Whether header ``name`` (lower case) is compared; Content-Length is, only on
        an answer without a body."""
        framing = name in FRAMING_HEADERS and not (bodiless and name == "content-length")
        if framing or name in self.ignore_headers:
            return False
        return self.headers is None or name in self.headers


def compile_masks(patterns: Iterable[str]) -> tuple[re.Pattern, ...]:
    """The masks as byte regexes; a bad one raises MaskError naming it."""
    compiled = []
    for pattern in patterns:
        try:
            regex = re.compile(pattern.encode("utf-8"))
        except re.error as exc:
            raise MaskError(f"mask {pattern!r} is not a valid regular expression: {exc}") from None
        if regex.match(b""):
            raise MaskError(f"mask {pattern!r} matches the empty string")
        compiled.append(regex)
    return tuple(compiled)


def apply_masks(data: bytes, masks: tuple[re.Pattern, ...]) -> bytes:
    for regex in masks:
        data = regex.sub(MASK_TOKEN, data)
    return data


# ---------------------------------------------------------------------------------------
# Requests


_REQUEST_LINE = re.compile(rb"([A-Z][A-Z0-9_-]{0,19}) ([^ \r\n]{1,4096}) HTTP/\d\.\d\r?\n")
_FIRST_LINE = 64


def request_method(request: bytes) -> bytes | None:
    """The HTTP method of the first request line, if the request is HTTP/1.x."""
    match = _REQUEST_LINE.match(request)
    return match.group(1) if match else None


def request_key(request: bytes, masks: tuple[re.Pattern, ...] = ()) -> str:
    """What requests of one kind share, for noise: the HTTP method and the path without its
    query, or the first line (at most 64 bytes) of another protocol; masked."""
    match = _REQUEST_LINE.match(request)
    if match:
        raw = match.group(1) + b" " + match.group(2).split(b"?", 1)[0]
    else:
        line = request[:_FIRST_LINE].split(b"\n", 1)[0]
        raw = line.rstrip(b"\r")
    return apply_masks(raw, masks)[:200].decode("utf-8", "backslashreplace")


# ---------------------------------------------------------------------------------------
# HTTP/1.x answers


class _Malformed(Exception):
    """Internal: the parser gives up on a message; always caught in this module."""


_HEAD_END = re.compile(rb"\r?\n\r?\n")
_STATUS_LINE = re.compile(rb"HTTP/\d\.\d[ ]+(\d{3})(?:[ \t][^\r\n]*)?")
_HEADER_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,18}")
_MAX_LINE = 1024
_MAX_NOTES = 8             # parse notes kept per answer


@dataclass(frozen=True, slots=True)
class _Message:
    status: int
    headers: tuple[tuple[str, bytes], ...]   # lower-case name, value
    body: bytes                               # decoded
    complete: bool                            # the whole body is in ``body``
    length: int | None                        # the decoded body's full length, if known
    bodiless: bool                            # HEAD, 1xx, 204, 304


@dataclass(slots=True)
class _Parse:
    """What parsing one answer found (mutable while it runs)."""

    messages: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    trailing: bytes = b""
    decode_budget: int = 0
    decoded_cut: int = 0
    headers_cut: int = 0
    messages_cut: int = 0

    def note(self, text: str) -> None:
        """Keep the first _MAX_NOTES notes, then only how many more there were."""
        if len(self.notes) < _MAX_NOTES:
            self.notes.append(text)
        elif len(self.notes) == _MAX_NOTES:
            self.notes.append("more notes left out")


def _header_values(headers, name: str) -> list[bytes]:
    return [value for key, value in headers if key == name]


def _parse_headers(lines: list[bytes], state: _Parse, limit: int) -> tuple:
    headers: list[tuple[str, bytes]] = []
    for line in lines:
        line = line.rstrip(b"\r")
        if line[:1] in (b" ", b"\t") and headers:        # obsolete line folding
            name, value = headers[-1]
            headers[-1] = (name, value + b" " + line.strip())
            continue
        name, colon, value = line.partition(b":")
        if not colon or not _HEADER_NAME.fullmatch(name):
            state.note(f"malformed header line {_show(line)}")
            continue
        name = name.decode("ascii").lower()
        if len(headers) >= limit and name not in FRAMING_HEADERS:
            state.headers_cut += 1   # framing headers are kept: they say where the body ends
            continue
        headers.append((name, value.strip(b" \t")))
    return tuple(headers)


def _framing(status: int, headers, head_only: bool, state: _Parse) -> tuple[str, int]:
    """How the body is delimited: ('none'|'chunked'|'length'|'close', length)."""
    if head_only or (100 <= status < 200 and status != 101) or status in (204, 304):
        return "none", 0
    codings = b",".join(_header_values(headers, "transfer-encoding")).lower()
    if codings and codings.split(b",")[-1].strip() == b"chunked":
        return "chunked", 0
    lengths = {v.strip() for v in _header_values(headers, "content-length")}
    if not lengths:
        return "close", 0
    if len(lengths) == 1:
        (value,) = lengths
        if _CONTENT_LENGTH.fullmatch(value):
            return "length", int(value)
    state.note("malformed Content-Length")
    return "close", 0


def _line_end(data: bytes, pos: int) -> int:
    """The end of the line at ``pos`` (index of its LF), -1 when it is not all there;
    a line longer than _MAX_LINE is malformed."""
    end = data.find(b"\n", pos, pos + _MAX_LINE)
    if end < 0 and len(data) - pos >= _MAX_LINE:
        raise _Malformed("line too long")
    return end


def _skip_trailers(data: bytes, pos: int) -> int | None:
    """The end of the trailer section at ``pos`` (after its empty line), None if cut."""
    for _ in range(_MAX_LINE):
        end = _line_end(data, pos)
        if end < 0:
            return None
        empty = not data[pos:end].rstrip(b"\r")
        pos = end + 1
        if empty:
            return pos
    raise _Malformed("too many trailer lines")


def _dechunk(data: bytes, pos: int) -> tuple[bytes, int, bool]:
    """Chunked transfer coding: (body, end, complete). The body never outgrows the input."""
    parts = []
    while True:
        end = _line_end(data, pos)
        if end < 0:
            return b"".join(parts), len(data), False
        size_text = data[pos:end].rstrip(b"\r").split(b";", 1)[0].strip(b" \t")
        if not _CHUNK_SIZE.fullmatch(size_text):
            raise _Malformed(f"malformed chunk size {_show(size_text)}")
        size, pos = int(size_text, 16), end + 1
        if size == 0:
            after = _skip_trailers(data, pos)
            return b"".join(parts), len(data) if after is None else after, after is not None
        parts.append(data[pos:pos + size])
        pos += size
        if pos >= len(data):
            return b"".join(parts), len(data), False
        pos = _chunk_end(data, pos)


def _chunk_end(data: bytes, pos: int) -> int:
    if data.startswith(b"\r\n", pos):
        return pos + 2
    if data.startswith(b"\n", pos):
        return pos + 1
    if data[pos:] == b"\r":
        return len(data)
    raise _Malformed("chunk data not followed by CRLF")


def _inflate(data: bytes, wbits: int, limit: int) -> tuple[bytes, bool, bool]:
    """(decoded, reached the end, cut at ``limit``); raises zlib.error on bad data.
    Concatenated gzip members are decoded too (at most 16)."""
    out, eof = [], False
    produced = 0
    for _ in range(16):
        inflater = zlib.decompressobj(wbits)
        chunk = inflater.decompress(data, max(1, limit - produced))
        out.append(chunk)
        produced += len(chunk)
        if inflater.unconsumed_tail or produced >= limit and not inflater.eof:
            return b"".join(out), False, True
        eof = inflater.eof
        data = inflater.unused_data
        if not eof or not data or wbits != 31:
            break
    return b"".join(out), eof, False


def _decode_coding(body: bytes, coding: bytes, limit: int) -> tuple[bytes, bool, bool]:
    if coding in (b"gzip", b"x-gzip"):
        return _inflate(body, 31, limit)
    try:
        return _inflate(body, 15, limit)          # deflate as RFC 9110 says: zlib format
    except zlib.error:
        return _inflate(body, -15, limit)         # ... or raw, as some servers send it


def _decode_body(body: bytes, codings: list[bytes], state: _Parse) -> tuple[bytes, bool]:
    """Undo Content-Encoding within the decode budget: (body, whole stream decoded)."""
    whole = True
    for coding in reversed(codings):
        if coding in (b"", b"identity"):
            continue
        if coding not in (b"gzip", b"x-gzip", b"deflate"):
            state.note(f"content-encoding {_show(coding)} not decoded")
            return body, whole
        try:
            body, eof, cut = _decode_coding(body, coding, max(1, state.decode_budget))
        except zlib.error as exc:
            state.note(f"{coding.decode('ascii')} body does not decode: {exc}")
            return body, whole
        state.decode_budget -= len(body)
        if cut:
            state.decoded_cut += 1
            state.note(f"decoded body cut at {len(body)} bytes")
        whole = whole and eof and not cut
    return body, whole


def _message_body(data: bytes, pos: int, framing: tuple[str, int], answer_complete: bool):
    """(raw body, end position, complete)."""
    kind, length = framing
    if kind == "none":
        return b"", pos, True
    if kind == "chunked":
        return _dechunk(data, pos)
    if kind == "length":
        body = data[pos:pos + length]
        return body, pos + len(body), len(body) == length
    return data[pos:], len(data), answer_complete


def _parse_message(data: bytes, pos: int, complete: bool, head_only: bool,
                   state: _Parse, cfg: CompareConfig) -> tuple[_Message, int]:
    head_end = _HEAD_END.search(data, pos, pos + cfg.max_head_bytes)
    if head_end is None:
        cut = len(data) - pos < cfg.max_head_bytes
        raise _Malformed("head cut short" if cut else "head too long")
    lines = data[pos:head_end.start()].split(b"\n")
    status_line = _STATUS_LINE.fullmatch(lines[0].rstrip(b"\r"))
    if status_line is None:
        raise _Malformed(f"malformed status line {_show(lines[0])}")
    status = int(status_line.group(1))
    headers = _parse_headers(lines[1:], state, cfg.max_headers)
    framing = _framing(status, headers, head_only, state)
    raw, end, body_complete = _message_body(data, head_end.end(), framing, complete)
    codings = [c.strip().lower() for v in _header_values(headers, "content-encoding")
               for c in v.split(b",")]
    body, decoded_whole = _decode_body(raw, codings, state) if raw else (raw, True)
    body_complete = body_complete and decoded_whole
    known = body_complete or (framing[0] == "length" and not any(
        c not in (b"", b"identity") for c in codings))
    length = len(body) if body_complete else (framing[1] if known else None)
    message = _Message(status, headers, body, body_complete, length, framing[0] == "none")
    return message, end


def _parse_http(data: bytes, complete: bool, method: bytes | None, cfg: CompareConfig) -> _Parse:
    """Every message of an answer (interim 1xx ones skipped). Raises _Malformed only when
    the first message cannot be parsed; later garbage becomes ``trailing``."""
    state = _Parse(decode_budget=cfg.max_decoded_bytes)
    pos, seen, head_only = 0, 0, method == b"HEAD"
    while pos < len(data):
        if seen >= cfg.max_messages:
            state.messages_cut += 1
            state.note(f"messages past {cfg.max_messages} not compared")
            break
        if seen and not data.startswith(b"HTTP/", pos):
            state.trailing = data[pos:]
            break
        try:
            message, pos = _parse_message(data, pos, complete, head_only, state, cfg)
        except _Malformed as exc:
            if not seen:
                raise
            state.note(f"after message {seen}: {exc}")
            state.trailing = data[pos:]
            break
        seen += 1
        if 100 <= message.status < 200 and message.status != 101:
            state.note(f"interim {message.status} not compared")
            continue
        head_only = False  # a HEAD answers the first request only
        state.messages.append(message)
    if state.trailing:
        state.note(f"{len(state.trailing)} bytes after the last message")
    return state


# ---------------------------------------------------------------------------------------
# Views: what is compared of one answer


@dataclass(frozen=True, slots=True)
class View:
    """The comparable form of one answer."""

    http: bool
    fields: tuple[tuple[str, bytes], ...]     # 'status', 'header NAME' ('N:' after the first)
    body: bytes                               # decoded and masked, as far as held
    complete: bool                            # ``body`` is all of it
    length: int | None                        # the unmasked body's full length, if known
    notes: tuple[str, ...] = ()
    malformed: str | None = None              # why an HTTP-looking answer did not parse
    decoded_cut: int = 0
    headers_cut: int = 0
    messages_cut: int = 0


def raw_view(answer: Answer, masks: tuple[re.Pattern, ...] = (), notes: tuple = (),
             malformed: str | None = None) -> View:
    """Any protocol: the bytes themselves."""
    body = apply_masks(answer.data, masks)
    return View(False, (), body, answer.complete, answer.length, notes=tuple(notes),
                malformed=malformed)


def _message_fields(index: int, message: _Message, cfg: CompareConfig, masks) -> list:
    prefix = f"{index}:" if index else ""
    fields = [(prefix + "status", str(message.status).encode())]
    grouped: dict[str, list[bytes]] = {}
    for name, value in message.headers:
        if cfg.compares_header(name, message.bodiless):
            grouped.setdefault(name, []).append(value)
    for name, values in grouped.items():
        fields.append((f"{prefix}header {name}", apply_masks(b", ".join(values), masks)))
    return fields


def http_view(answer: Answer, method: bytes | None, cfg: CompareConfig,
              masks: tuple[re.Pattern, ...] = ()) -> View:
    """An HTTP/1.x answer; one that does not parse is a raw view with ``malformed`` set."""
    try:
        state = _parse_http(answer.data, answer.complete, method, cfg)
    except _Malformed as exc:
        return raw_view(answer, masks, (f"not HTTP: {exc}",), malformed=str(exc))
    fields, bodies = [], []
    for index, message in enumerate(state.messages):
        fields.extend(_message_fields(index, message, cfg, masks))
        bodies.append(apply_masks(message.body, masks))
    if state.trailing:
        bodies.append(apply_masks(state.trailing, masks))
    complete = (answer.complete and not state.messages_cut
                and all(m.complete for m in state.messages))
    return View(True, tuple(sorted(fields)), b"".join(bodies), complete,
                _http_length(answer, state), tuple(state.notes), None,
                state.decoded_cut, state.headers_cut, state.messages_cut)


def _http_length(answer: Answer, state: _Parse) -> int | None:
    """The bodies' full length (unmasked), None when unknown: a message's length is
    unknown when it is cut short and not declared, and so is whatever lies past the bytes
    held when they end on a message boundary or in trailing bytes."""
    lengths = [m.length for m in state.messages]
    if None in lengths or state.messages_cut:
        return None
    last_complete = not state.messages or state.messages[-1].complete
    if not answer.complete and (state.trailing or last_complete):
        return None
    return sum(lengths) + len(state.trailing)


def view_of(answer: Answer, method: bytes | None, cfg: CompareConfig,
            masks: tuple[re.Pattern, ...] = ()) -> View:
    if answer.data.startswith(b"HTTP/"):
        return http_view(answer, method, cfg, masks)
    return raw_view(answer, masks)


# ---------------------------------------------------------------------------------------
# Tokens and noise


_TOKEN = re.compile(rb"[\w\-.+/:@%~\x80-\xff]+|\s+|.", re.DOTALL)
_WORD = re.compile(rb"[\w\x80-\xff]")      # a token with one of these is a word
_CONTEXT_REACH = 8         # tokens a context reaches back at most
_MIN_LIKENESS = 0.5        # the share of tokens two bodies must have in common to be diffed
_SMALL_DIFF = 16           # ... unless they differ in this few tokens (a body that is an id)
_MAX_GAP = 2048            # tokens between two anchors diffed token by token, at most


def body_tokens(body: bytes, limit: int) -> list[bytes] | None:
    """The body as tokens, None when there are more than ``limit``. (The body is already
    bounded, by the answer's max_bytes or max_decoded_bytes.)"""
    tokens = _TOKEN.findall(body)
    return tokens if len(tokens) <= limit else None


def _common_ends(a: list[bytes], b: list[bytes]) -> tuple[int, int]:
    """How many tokens a and b share at their start, and then at their end."""
    n, head = min(len(a), len(b)), 0
    while head < n and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < n - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    return head, tail


def _anchors(a: list[bytes], b: list[bytes]) -> list[tuple[int, int]]:
    """Patience diff's anchors: tokens found exactly once in ``a`` and once in ``b``, the
    longest chain of them in the same order on both sides (by patience sorting)."""
    count_a, count_b = Counter(a), Counter(b)
    where_b = {token: j for j, token in enumerate(b) if count_b[token] == 1}
    pairs = [(i, where_b[t]) for i, t in enumerate(a) if count_a[t] == 1 and t in where_b]
    tops: list[int] = []                 # the j ending the best chain of each length
    ends: list[int] = []                 # index into pairs of that chain's last pair
    before = [-1] * len(pairs)
    for k, (_, j) in enumerate(pairs):
        length = bisect.bisect_left(tops, j)
        before[k] = ends[length - 1] if length else -1
        if length == len(tops):
            tops.append(j)
            ends.append(k)
        else:
            tops[length], ends[length] = j, k
    chain, k = [], ends[-1] if ends else -1
    while k >= 0:
        chain.append(pairs[k])
        k = before[k]
    return chain[::-1]


def _gap_ops(a, b, i1, i2, j1, j2) -> list[tuple]:
    """The differing regions between two anchors: difflib on a small gap (its heuristic for
    popular tokens on), one region for an empty side or a gap too long to diff cheaply."""
    if i2 - i1 == j2 - j1 and a[i1:i2] == b[j1:j2]:
        return []
    if i1 == i2 or j1 == j2 or max(i2 - i1, j2 - j1) > _MAX_GAP:
        return [("replace", i1, i2, j1, j2)]
    matcher = difflib.SequenceMatcher(None, a[i1:i2], b[j1:j2])
    return [(tag, i1 + p1, i1 + p2, j1 + q1, j1 + q2)
            for tag, p1, p2, q1, q2 in matcher.get_opcodes() if tag != "equal"]


def _opcodes(a: list[bytes], b: list[bytes], complete: bool) -> list[tuple] | None:
    """The differing regions of two token lists, or None when they are too unlike to
    diff (less than half in common, beyond a few tokens: no region of one then stands for
    a region of the other).

    A patience diff: the common ends are cut off, tokens unique on both sides anchor the
    rest, and only the gaps between anchors are diffed, each bounded (_MAX_GAP); so the
    cost stays near linear in the tokens whatever the bodies. Of bodies cut short, a last
    region that reaches both ends is where the cut fell, not a difference."""
    head, tail = _common_ends(a, b)
    end_a, end_b = len(a) - tail, len(b) - tail
    anchors = _anchors(a[head:end_a], b[head:end_b])
    ops, i, j = [], head, head
    for ai, bj in anchors + [(end_a - head, end_b - head)]:
        ops.extend(_gap_ops(a, b, i, ai + head, j, bj + head))
        i, j = ai + head + 1, bj + head + 1
    differing = sum(op[2] - op[1] + op[4] - op[3] for op in ops)
    if differing > _SMALL_DIFF and differing > (1 - _MIN_LIKENESS) * (len(a) + len(b)):
        return None
    if ops and not complete and ops[-1][2] == len(a) and ops[-1][4] == len(b):
        ops.pop()
    return ops


def _context(tokens: list[bytes], index: int) -> int:
    """A signature of the tokens before ``index`` back to the nearest word (at most
    _CONTEXT_REACH): the field name before a value, as in ``"id":"`` or ``id=``, names a
    noisy place across requests, while the punctuation alone (``":"``) would name them all."""
    start = index
    while start > max(0, index - _CONTEXT_REACH):
        start -= 1
        if _WORD.search(tokens[start]):
            break
    before = b"\x00".join(tokens[start:index])
    return int.from_bytes(hashlib.blake2b(before, digest_size=8).digest(), "little")


def _width(op: tuple) -> int:
    return max(op[2] - op[1], op[4] - op[3], 1)


@dataclass(frozen=True, slots=True)
class Noise:
    """What may differ for one request without counting."""

    fields: frozenset[str] = frozenset()
    spans: tuple[tuple[int, int, int], ...] = ()  # online token regions (start, end, width)
    contexts: Mapping[int, int] = field(default_factory=dict)  # context -> width
    body_coarse: bool = False                     # a body too long to diff was noisy
    length: bool = False                          # the body length was noisy

    @property
    def in_body(self) -> bool:
        return bool(self.spans or self.contexts or self.body_coarse)

    def covers(self, op: tuple, online_tokens: list[bytes]) -> bool:
        """A region where online and candidate differ is noise: inside a region where
        online and baseline differed, or after a context that was noisy, and at most twice
        as wide."""
        width = _width(op)
        for start, end, noisy_width in self.spans:
            if start <= op[1] and op[2] <= end and width <= 2 * noisy_width:
                return True
        noisy_width = self.contexts.get(_context(online_tokens, op[1]))
        return noisy_width is not None and width <= 2 * noisy_width


NO_NOISE = Noise()


@dataclass(slots=True)
class Cuts:
    """Everything a bound left out, counted."""

    answer_bytes: int = 0        # past an answer's max_bytes
    missing_bytes: int = 0       # never arrived (capture loss, hold bounds)
    incomplete_answers: int = 0
    stray_bytes: int = 0         # outside every answer (AnswerStream)
    segments_dropped: int = 0    # AnswerStream hold bounds
    decoded: int = 0             # decompressions stopped at max_decoded_bytes
    headers: int = 0             # header lines past max_headers
    messages: int = 0            # messages past max_messages
    noise_keys: int = 0          # keys evicted (least recently used)
    noise_fields: int = 0
    noise_contexts: int = 0
    noise_spans: int = 0
    noise_coarse: int = 0        # bodies too long to diff for noise
    noise_bodies_skipped: int = 0  # baseline bodies not learned from: another status, or
    #                                too unlike the online body to diff
    examples: int = 0            # examples past examples_per_verdict
    differences: int = 0         # differences past the per-request list

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}


class _KeyNoise:
    __slots__ = ("fields", "contexts", "coarse", "length")

    def __init__(self):
        self.fields: set[str] = set()
        self.contexts: dict[int, int] = {}
        self.coarse = False
        self.length = False


def _bodies(a: View, b: View) -> tuple[bytes, bytes, bool, int | None, int | None]:
    """The body bytes to compare and their lengths: whole bodies when both are complete
    (masked lengths), else the common prefix and the lengths as sent (unmasked)."""
    if a.complete and b.complete:
        return a.body, b.body, True, len(a.body), len(b.body)
    n = min(len(a.body), len(b.body))
    return a.body[:n], b.body[:n], False, a.length, b.length


def _is_status(name: str) -> bool:
    return name == "status" or name.endswith(":status")


def differing_fields(a: View, b: View) -> list[tuple[str, bytes | None, bytes | None]]:
    """(field, a's value, b's value) for every status or header field that differs."""
    fa, fb = dict(a.fields), dict(b.fields)
    out = []
    for name in sorted(fa.keys() | fb.keys()):
        va, vb = fa.get(name), fb.get(name)
        if va != vb:
            out.append((name, va, vb))
    return out


class NoiseStore:
    """Noise learned per request key, across requests; at most ``max_noise_keys`` keys
    (least recently used evicted) and bounded fields and contexts per key."""

    def __init__(self, config: CompareConfig, cuts: Cuts):
        self.config = config
        self.cuts = cuts
        self._keys: dict[str, _KeyNoise] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def known(self, key: str) -> Noise:
        """The noise learned so far for ``key`` (no baseline for this request)."""
        entry = self._keys.get(key)
        if entry is None:
            return NO_NOISE
        self._touch(key)
        return self._noise(entry, ())

    def learn(self, key: str, online: View, baseline: View) -> Noise:
        """What differs between online and baseline answers to one request is noise, for
        this request and, by field and context, for later ones with the same key."""
        entry = self._entry(key)
        differing = [name for name, _, _ in differing_fields(online, baseline)]
        for name in differing:
            self._add_field(entry, name)
        if any(_is_status(name) for name in differing):
            # A baseline that failed differently says nothing about its body.
            self.cuts.noise_bodies_skipped += 1
            return self._noise(entry, ())
        return self._noise(entry, self._learn_body(entry, online, baseline))

    def _noise(self, entry: _KeyNoise, spans: tuple) -> Noise:
        return Noise(frozenset(entry.fields), spans, dict(entry.contexts), entry.coarse,
                     entry.length)

    def _touch(self, key: str) -> None:
        self._keys[key] = self._keys.pop(key)

    def _entry(self, key: str) -> _KeyNoise:
        entry = self._keys.get(key)
        if entry is not None:
            self._touch(key)
            return entry
        if len(self._keys) >= self.config.max_noise_keys:
            del self._keys[next(iter(self._keys))]
            self.cuts.noise_keys += 1
        entry = self._keys[key] = _KeyNoise()
        return entry

    def _add_field(self, entry: _KeyNoise, name: str) -> None:
        if name in entry.fields:
            return
        if len(entry.fields) >= self.config.max_noise_fields:
            self.cuts.noise_fields += 1
            return
        entry.fields.add(name)

    def _learn_body(self, entry: _KeyNoise, online: View, baseline: View) -> tuple:
        a, b, complete, la, lb = _bodies(online, baseline)
        if la is not None and lb is not None and la != lb:
            entry.length = True
        if a == b:
            return ()
        limit = self.config.max_diff_tokens
        ta, tb = body_tokens(a, limit), body_tokens(b, limit)
        if ta is None or tb is None:
            entry.coarse = True
            self.cuts.noise_coarse += 1
            return ()
        ops = _opcodes(ta, tb, complete)
        if ops is None:
            self.cuts.noise_bodies_skipped += 1
            return ()
        if len(ops) > _MAX_SPANS:
            self.cuts.noise_spans += len(ops) - _MAX_SPANS
            ops = ops[:_MAX_SPANS]
        for op in ops:
            self._add_context(entry, _context(ta, op[1]), _width(op))
        return tuple((op[1], op[2], _width(op)) for op in ops)

    def _add_context(self, entry: _KeyNoise, context: int, width: int) -> None:
        if context in entry.contexts:
            entry.contexts[context] = max(entry.contexts[context], width)
        elif len(entry.contexts) >= self.config.max_noise_contexts:
            self.cuts.noise_contexts += 1
        else:
            entry.contexts[context] = width


# ---------------------------------------------------------------------------------------
# Comparing two views


@dataclass(frozen=True, slots=True)
class Comparison:
    """The verdict on one request."""

    verdict: str
    key: str
    differences: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    noise_ignored: int = 0     # differences found and ignored as noise
    differences_cut: int = 0   # differences past the reported ones


def _show(value: bytes | None, limit: int = _SHOW) -> str:
    if value is None:
        return "(absent)"
    text = value[:limit].decode("utf-8", "backslashreplace")
    return repr(text + ("..." if len(value) > limit else ""))


def _first_difference(a: bytes, b: bytes) -> int:
    n, lo, step = min(len(a), len(b)), 0, 4096
    while lo < n and a[lo:lo + step] == b[lo:lo + step]:
        lo += step
    for i in range(lo, min(lo + step, n)):
        if a[i] != b[i]:
            return i
    return n


def digest(data: bytes) -> str:
    """A short content digest (BLAKE2b, 128 bits): equality, not secrecy."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _real_ops(a: bytes, b: bytes, complete: bool, noise: Noise, cfg):
    """(differing token regions that noise does not cover, a's tokens, b's tokens), or
    None when the bodies are too long to diff."""
    limit = cfg.max_diff_tokens
    ta, tb = body_tokens(a, limit), body_tokens(b, limit)
    if ta is None or tb is None:
        return None
    ops = _opcodes(ta, tb, complete)
    if ops is None:                      # too unlike: one region, the whole body
        ops = [("replace", 0, len(ta), 0, len(tb))]
    return [op for op in ops if not noise.covers(op, ta)], ta, tb


def _span_bytes(tokens: list[bytes], start: int, end: int) -> bytes:
    return b"".join(tokens[start:end])


def _describe_op(op: tuple, ta: list[bytes], tb: list[bytes]) -> str:
    at = sum(len(t) for t in ta[:op[1]])
    return (f"body differs at byte {at}: {_show(_span_bytes(ta, op[1], op[2]))} != "
            f"{_show(_span_bytes(tb, op[3], op[4]))} (outside the noise)")


def _describe_body(a: bytes, b: bytes, la, lb, length_differs: bool) -> str:
    at = _first_difference(a, b)
    if at == min(len(a), len(b)):
        return f"body: length {la} != {lb}, equal over the first {at} bytes"
    text = f"body differs at byte {at}: {_show(a[at:at + 40])} != {_show(b[at:at + 40])}"
    if length_differs:
        text += f" (length {la} != {lb})"
    return text + f" (digest {digest(a)[:12]} != {digest(b)[:12]})"


def _noisy_body_verdict(a, b, complete, length_differs, noise: Noise, cfg) -> tuple:
    """(verdict or None, differences) of bodies that differ where noise is known. Of whole
    bodies, the length differs only if the real differences change it."""
    found = _real_ops(a, b, complete, noise, cfg)
    if found is None:
        if noise.body_coarse:
            return None, []
        return (LENGTH_DIFFERS if length_differs else BODY_DIFFERS), []
    ops, ta, tb = found
    if not ops:
        if complete or not length_differs or noise.length:
            return None, []
        return LENGTH_DIFFERS, []
    if complete:
        length_differs = sum(len(_span_bytes(tb, op[3], op[4])) -
                             len(_span_bytes(ta, op[1], op[2])) for op in ops) != 0
    return (LENGTH_DIFFERS if length_differs else BODY_DIFFERS), [_describe_op(ops[0], ta, tb)]


def _body_verdict(online: View, target: View, noise: Noise, cfg) -> tuple:
    """(verdict or None, differences, notes, differences ignored as noise)."""
    a, b, complete, la, lb = _bodies(online, target)
    notes = () if complete else (f"bodies compared on their first {len(a)} bytes",)
    length_differs = la is not None and lb is not None and la != lb
    if a == b and not length_differs:
        return None, [], notes, 0
    if noise.in_body:
        verdict, described = _noisy_body_verdict(a, b, complete, length_differs, noise, cfg)
        if verdict is None:
            return None, [], notes + ("body differences are noise",), 1
        if described:
            return verdict, described, notes, 0
    verdict = LENGTH_DIFFERS if length_differs else BODY_DIFFERS
    return verdict, [_describe_body(a, b, la, lb, length_differs)], notes, 0


def _field_differences(online: View, target: View, noise: Noise) -> tuple[list, list, int]:
    status, headers, ignored = [], [], 0
    for name, va, vb in differing_fields(online, target):
        if name in noise.fields:
            ignored += 1
            continue
        text = f"{name}: {_show(va)} != {_show(vb)}"
        (status if _is_status(name) else headers).append(text)
    return status, headers, ignored


def _side_notes(view: View, side: str) -> tuple[str, ...]:
    return tuple(f"{side}: {note}" for note in view.notes)


def compare_views(key: str, online: View, target: View, noise: Noise = NO_NOISE,
                  config: CompareConfig = CompareConfig()) -> Comparison:
    """The verdict on two answers in comparable form."""
    notes = _side_notes(online, "online") + _side_notes(target, "target")
    if online.http != target.http:
        what = "malformed HTTP" if online.malformed or target.malformed else "not both HTTP"
        return Comparison(BODY_DIFFERS, key, (f"answers are {what}",), notes)
    status, headers, ignored = _field_differences(online, target, noise)
    body_verdict, body, body_notes, body_ignored = _body_verdict(online, target, noise, config)
    if status:
        verdict = STATUS_DIFFERS
    else:
        verdict = body_verdict or (HEADERS_DIFFER if headers else SAME)
    differences = status + body + headers
    return Comparison(verdict, key, tuple(differences[:_MAX_DIFFERENCES]),
                      notes + body_notes, ignored + body_ignored,
                      max(0, len(differences) - _MAX_DIFFERENCES))


# ---------------------------------------------------------------------------------------
# Sampling and latency


def _splitmix64(state: int) -> tuple[int, int]:
    """(next state, output): a small deterministic generator (no global randomness)."""
    state = (state + 0x9E3779B97F4A7C15) & _M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return state, z ^ (z >> 31)


class Sampler:
    """Which sessions are compared: every ``every``-th one offered (in order; the seed
    picks the phase), or a ``share`` of them chosen by a keyed hash of the session key, so
    a session's fate depends only on the seed and its key (the same in every owner)."""

    __slots__ = ("every", "share", "seed", "offered", "chosen")

    def __init__(self, every: int = 1, share: float | None = None, seed: int = 0):
        if every < 1:
            raise ValueError("every must be at least 1")
        if share is not None and not 0.0 <= share <= 1.0:
            raise ValueError("share must be between 0 and 1")
        self.every, self.share, self.seed = every, share, seed
        self.offered = 0
        self.chosen = 0

    def sampled(self, key: bytes) -> bool:
        """Whether the session with ``key`` (e.g. its 4-tuple and ISN) is compared."""
        if self.share is not None:
            chosen = self._hash(key) < self.share
        else:
            chosen = (self.offered + self.seed) % self.every == 0
        self.offered += 1
        self.chosen += chosen
        return chosen

    def _hash(self, key: bytes) -> float:
        mac = hashlib.blake2b(key, digest_size=8, key=(self.seed & _M64).to_bytes(8, "little"))
        return int.from_bytes(mac.digest(), "little") / 2.0 ** 64


class Reservoir:
    """A bounded uniform sample of a stream of values (Vitter's algorithm R)."""

    __slots__ = ("size", "seen", "_values", "_state")

    def __init__(self, size: int = 1024, seed: int = 0):
        self.size = size
        self.seen = 0
        self._values: list[float] = []
        self._state = seed & _M64

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self._values) < self.size:
            self._values.append(value)
            return
        self._state, draw = _splitmix64(self._state)
        slot = draw % self.seen
        if slot < self.size:
            self._values[slot] = value

    def percentile(self, p: float) -> float | None:
        """Nearest-rank percentile of the sample, None when empty."""
        if not self._values:
            return None
        ordered = sorted(self._values)
        return ordered[max(0, math.ceil(p / 100.0 * len(ordered)) - 1)]

    def summary(self) -> dict:
        return {"p50": self.percentile(50), "p90": self.percentile(90),
                "p99": self.percentile(99), "samples": self.seen,
                "kept": len(self._values)}


# ---------------------------------------------------------------------------------------
# The comparator: verdicts, counters, examples


def _text(data: bytes, limit: int) -> str:
    return data[:limit].decode("utf-8", "backslashreplace")


class Comparator:
    """Judges requests one by one and keeps the counters, examples and latencies."""

    def __init__(self, config: CompareConfig = CompareConfig()):
        self.config = config
        self.masks = compile_masks(config.masks)
        self.cuts = Cuts()
        self.noise = NoiseStore(config, self.cuts)
        self.counts = {verdict: 0 for verdict in VERDICTS}
        self.noise_ignored = 0
        self._examples: dict[str, list[dict]] = {verdict: [] for verdict in VERDICTS}
        self.latency = {"online": Reservoir(config.reservoir_size, config.seed),
                        "target": Reservoir(config.reservoir_size, config.seed + 1)}

    @property
    def compared(self) -> int:
        return sum(self.counts.values())

    def record(self, request: bytes, online: Answer, target: Answer,
               baseline: Answer | None = None) -> Comparison:
        """Judge one request from the online and target answers (and the baseline's, a
        second copy of the online build, whose differences from online are noise)."""
        for answer in (online, target) + ((baseline,) if baseline is not None else ()):
            self._count_answer(answer)
        for side, answer in (("online", online), ("target", target)):
            if answer.latency is not None:
                self.latency[side].add(answer.latency)
        result = self.judge(request, online, target, baseline)
        self.counts[result.verdict] += 1
        self.noise_ignored += result.noise_ignored
        self.cuts.differences += result.differences_cut
        self._keep_example(result, request, online, target)
        return result

    def judge(self, request: bytes, online: Answer, target: Answer,
              baseline: Answer | None = None) -> Comparison:
        """The verdict without tallying it (noise is learned, parse cuts counted)."""
        key = request_key(request, self.masks)
        if online.length == 0 and target.length == 0:
            return Comparison(SAME, key)
        if target.length == 0:
            return Comparison(NO_ANSWER, key,
                              (f"target sent nothing (online {online.length} bytes)",))
        if online.length == 0:
            return Comparison(LENGTH_DIFFERS, key,
                              (f"online sent nothing, target {target.length} bytes",))
        method = request_method(request)
        on, tg = self._views(online, target, method)
        noise = self._noise(key, on, baseline, method)
        return compare_views(key, on, tg, noise, self.config)

    def stream_closed(self, stream: AnswerStream) -> None:
        """Count what a finished connection's stream left outside its answers."""
        self.cuts.stray_bytes += stream.bytes_stray
        self.cuts.segments_dropped += stream.segments_dropped

    def _views(self, online: Answer, target: Answer, method) -> tuple[View, View]:
        if not online.data or not target.data:
            note = ("answer bytes not captured",)
            return raw_view(online, self.masks, note), raw_view(target, self.masks, note)
        return self._view(online, method), self._view(target, method)

    def _view(self, answer: Answer, method) -> View:
        view = view_of(answer, method, self.config, self.masks)
        self.cuts.decoded += view.decoded_cut
        self.cuts.headers += view.headers_cut
        self.cuts.messages += view.messages_cut
        return view

    def _noise(self, key: str, online: View, baseline: Answer | None, method) -> Noise:
        if baseline is None or not baseline.data:
            return self.noise.known(key)
        base = self._view(baseline, method)
        if base.http != online.http:
            return self.noise.known(key)
        return self.noise.learn(key, online, base)

    def _count_answer(self, answer: Answer) -> None:
        self.cuts.answer_bytes += answer.cut
        self.cuts.missing_bytes += answer.missing
        self.cuts.incomplete_answers += not answer.complete

    def _keep_example(self, result: Comparison, request: bytes, online: Answer,
                      target: Answer) -> None:
        """The first examples of every verdict but 'same'."""
        if result.verdict == SAME:
            return
        kept = self._examples[result.verdict]
        if len(kept) >= self.config.examples_per_verdict:
            self.cuts.examples += 1
            return
        kept.append(self._example(result, request, online, target))

    def describe(self, result: Comparison, request: bytes, online: Answer,
                 target: Answer) -> dict:
        """One request's comparison as a JSON-ready record (a line of the differences file)."""
        return self._example(result, request, online, target)

    def _example(self, result: Comparison, request: bytes, online: Answer,
                 target: Answer) -> dict:
        n = self.config.example_bytes
        return {
            "verdict": result.verdict, "key": result.key, "request": _text(request, n),
            "online": {"first_bytes": _text(online.data, n), "length": online.length,
                       "latency": online.latency},
            "target": {"first_bytes": _text(target.data, n), "length": target.length,
                       "latency": target.latency},
            "differences": list(result.differences), "notes": list(result.notes),
        }

    def examples(self) -> list[dict]:
        """The examples kept, verdict by verdict (ready for a JSON-lines file)."""
        return [example for verdict in VERDICTS for example in self._examples[verdict]]

    def shares(self) -> dict[str, float]:
        total = self.compared
        return {verdict: (count / total if total else 0.0)
                for verdict, count in self.counts.items()}

    def summary(self) -> dict:
        """Counters, shares, latency percentiles per side and every cut, JSON-ready."""
        return {"compared": self.compared, "counts": dict(self.counts),
                "shares": self.shares(), "noise_ignored": self.noise_ignored,
                "noise_keys": len(self.noise),
                "latency": {side: r.summary() for side, r in self.latency.items()},
                "cuts": self.cuts.as_dict()}


# ---------------------------------------------------------------------------------------
# The gate


class GateSpecError(ValueError):
    """A --fail-on specification that does not parse."""


# loss: the copy's loss ratio; compared: requests compared (a count); differs: the share of
# requests not 'same'; a verdict: its share.
GATE_METRICS = ("loss", "compared", "differs") + VERDICTS[1:] + (SAME,)
_GATE_ITEM = re.compile(r"\s*([A-Za-z_]+)\s*(>=|<=|>|<|=)?\s*(.*?)\s*")
_OPS = {">": lambda v, t: v > t, ">=": lambda v, t: v >= t,
        "<": lambda v, t: v < t, "<=": lambda v, t: v <= t}


@dataclass(frozen=True, slots=True)
class Threshold:
    metric: str
    op: str
    limit: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.limit:g}"

    def crossed(self, value: float) -> bool:
        return _OPS[self.op](value, self.limit)


@dataclass(frozen=True, slots=True)
class Crossing:
    threshold: Threshold
    value: float

    def __str__(self) -> str:
        return f"{self.threshold.metric} = {self.value:g} ({self.threshold} crossed)"


@dataclass(frozen=True, slots=True)
class GateResult:
    crossed: tuple[Crossing, ...]
    values: Mapping[str, float]

    @property
    def passed(self) -> bool:
        return not self.crossed

    def describe(self) -> str:
        if self.passed:
            return "gate passed"
        return "gate failed: " + "; ".join(str(c) for c in self.crossed)


def _parse_limit(item: str, metric: str, text: str) -> float:
    percent = text.endswith("%")
    number = text[:-1] if percent else text
    try:
        value = float(number)
    except ValueError:
        raise GateSpecError(f"--fail-on {item!r}: {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise GateSpecError(f"--fail-on {item!r}: the limit must be a finite number >= 0")
    value = value / 100.0 if percent else value
    if metric == "compared":
        if percent:
            raise GateSpecError(f"--fail-on {item!r}: 'compared' is a count, not a share")
    elif value > 1.0:
        raise GateSpecError(f"--fail-on {item!r}: {metric} is a share between 0 and 1 "
                            f"(or a percentage like 1%)")
    return value


def _parse_item(item: str) -> Threshold:
    if not item.strip():
        raise GateSpecError("--fail-on: an empty threshold in the list (two commas?)")
    match = _GATE_ITEM.fullmatch(item)
    if not match:
        raise GateSpecError(f"--fail-on {item.strip()!r}: expected METRIC>LIMIT, e.g. "
                            f"body_differs>0.01 (metrics: {', '.join(GATE_METRICS)})")
    metric, op, text = match.groups()
    metric = metric.lower()
    if metric not in GATE_METRICS:
        raise GateSpecError(f"--fail-on {item.strip()!r}: unknown metric {metric!r} "
                            f"(known: {', '.join(GATE_METRICS)})")
    if op is None or op == "=" or not text:
        raise GateSpecError(f"--fail-on {item.strip()!r}: expected METRIC>LIMIT, "
                            f"with one of > >= < <=, e.g. {metric}>0.01")
    return Threshold(metric, op, _parse_limit(item.strip(), metric, text))


def parse_fail_on(spec: str) -> tuple[Threshold, ...]:
    """Parse "loss>0.001,body_differs>0.01,status_differs>0" (shares are fractions or
    percentages; ``compared<100`` fails a run that compared too little)."""
    if not spec or not spec.strip():
        raise GateSpecError("--fail-on: empty specification")
    thresholds, seen = [], set()
    for item in spec.split(","):
        threshold = _parse_item(item)
        if (threshold.metric, threshold.op) in seen:
            raise GateSpecError(f"--fail-on: {threshold.metric}{threshold.op} given twice")
        seen.add((threshold.metric, threshold.op))
        thresholds.append(threshold)
    return tuple(thresholds)


def gate_values(counts: Mapping[str, int], loss: float) -> dict[str, float]:
    """Every gate metric from the verdict counts and the loss ratio (shares of nothing
    compared are 0: pair them with ``compared<N`` to fail an empty run)."""
    if not math.isfinite(loss) or loss < 0:
        raise ValueError(f"the loss ratio must be a finite number >= 0, not {loss!r}")
    total = sum(counts.get(verdict, 0) for verdict in VERDICTS)
    values = {"loss": float(loss), "compared": float(total)}
    for verdict in VERDICTS:
        values[verdict] = counts.get(verdict, 0) / total if total else 0.0
    values["differs"] = (total - counts.get(SAME, 0)) / total if total else 0.0
    return values


def evaluate_gate(thresholds: Iterable[Threshold], counts: Mapping[str, int],
                  loss: float) -> GateResult:
    """Which thresholds the final counters and loss ratio cross."""
    values = gate_values(counts, loss)
    crossed = tuple(Crossing(t, values[t.metric]) for t in thresholds
                    if t.crossed(values[t.metric]))
    return GateResult(crossed, values)
