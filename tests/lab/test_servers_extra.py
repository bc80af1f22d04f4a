"""Lab servers beyond plain GETs: nginx keeping request bodies, and the server-first greeter."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import psutil
import pytest

from tcpcopy.lab import load
from tcpcopy.lab.netns import CLIENT, CLIENT_ADDRESS, ONLINE, ONLINE_ADDRESS, Lab
from tcpcopy.lab.servers import (
    GREETING,
    UPLOAD_STATUS,
    Greeter,
    Nginx,
    ReceivedBody,
    big_bin,
    parse_greeter_line,
)

GREETER_PORT = 2525


# --------------------------------------------------------------------------- nginx bodies


@pytest.mark.lab
def test_bodies_of_each_request_are_kept_byte_exact(lab: Lab, web: Nginx, tmp_path: Path) -> None:
    first, second = load.body_of(2_500_000, seed=1), load.body_of(3 << 20, seed=2)
    for name, data in (("first.bin", first), ("second.bin", second)):
        (tmp_path / name).write_bytes(data)
    lab.run(CLIENT, [
        "curl", "-sS", "--fail", "--max-time", "10",
        "-T", tmp_path / "first.bin", web.url("/upload/same"),
        "--next", "-sS", "--fail", "--data-binary", f"@{tmp_path / 'second.bin'}", web.url("/upload/same"),
        "--next", "-sS", "--fail", "-H", "Transfer-Encoding: chunked", "--data-binary",
        f"@{tmp_path / 'first.bin'}", web.url("/upload/chunked"),
        "--next", "-sS", "--fail", web.url("/big.bin"), "-o", tmp_path / "big.bin",
    ])
    assert (tmp_path / "big.bin").read_bytes() == big_bin()
    assert web.received_bodies() == [
        ReceivedBody("/upload/same", len(first), hashlib.sha256(first).hexdigest()),
        ReceivedBody("/upload/same", len(second), hashlib.sha256(second).hexdigest()),
        ReceivedBody("/upload/chunked", len(first), hashlib.sha256(first).hexdigest()),
    ]
    uploads = [e for e in web.access_log_entries() if e["uri"].startswith("/upload/")]
    assert [(e["request_method"], e["status"]) for e in uploads] == [
        ("PUT", UPLOAD_STATUS), ("POST", UPLOAD_STATUS), ("POST", UPLOAD_STATUS)]
    assert [e["content_length"] for e in uploads[:2]] == [len(first), len(second)]
    web.stop()
    assert len(web.received_bodies()) == 3, "bodies stay known after stop"


@pytest.mark.lab
def test_h2load_uploads_arrive_intact(lab: Lab, web: Nginx) -> None:
    result = load.upload(lab, CLIENT, web.url("/upload/h2load"), body_bytes=2 << 20, count=4, connections=2)
    assert result.summary.all_succeeded and result.summary.status["2xx"] == 4
    assert web.received_bodies() == [ReceivedBody("/upload/h2load", 2 << 20, result.body_sha256)] * 4


# --------------------------------------------------------------------------- greeter


def converse(address: str, port: int, connections: int, timeout: float) -> list[tuple[int, list[bytes]]]:
    """Runs inside a host: open ``connections`` at once, read every greeting, then on each send
    a line and QUIT. Returns (local port, lines received) per connection."""
    import asyncio

    async def main() -> list[tuple[int, list[bytes]]]:
        opened = await asyncio.gather(*(asyncio.open_connection(address, port) for _ in range(connections)))
        greetings = await asyncio.gather(*(reader.readline() for reader, _ in opened))
        results = []
        for number, (_reader, writer) in enumerate(opened):
            writer.write(f"HELO client {number}\r\nQUIT\r\n".encode())
        for (reader, writer), greeting in zip(opened, greetings, strict=True):
            replies = [await reader.readline(), await reader.readline(), await reader.read()]
            results.append((writer.get_extra_info("sockname")[1], [greeting, *replies]))
            writer.close()
        return results

    return asyncio.run(asyncio.wait_for(main(), timeout))


@pytest.mark.lab
def test_greeter_greets_first_answers_lines_and_logs_them(lab: Lab) -> None:
    with Greeter(lab, ONLINE, ONLINE_ADDRESS, GREETER_PORT) as greeter:
        [(port, lines)] = lab.call(CLIENT, converse, ONLINE_ADDRESS, GREETER_PORT, 1, 5.0, timeout=10)
        entries = _settled_log(greeter, expected=4)
    assert lines == [f"{GREETING}\r\n".encode(), b"250 1 HELO client 0\r\n", b"221 bye\r\n", b""]
    assert [(e.event, e.text) for e in entries] == [
        ("open", ""), ("line", "HELO client 0"), ("line", "QUIT"), ("close", "server")]
    assert {(e.peer_addr, e.peer_port) for e in entries} == {(CLIENT_ADDRESS, port)}
    assert len({e.connection for e in entries}) == 1


@pytest.mark.lab
def test_greeter_serves_many_concurrent_connections_and_stops_by_pid(lab: Lab) -> None:
    connections = 150
    with Greeter(lab, ONLINE, ONLINE_ADDRESS, GREETER_PORT) as greeter:
        results = lab.call(CLIENT, converse, ONLINE_ADDRESS, GREETER_PORT, connections, 20.0, timeout=30)
        entries = _settled_log(greeter, expected=4 * connections)
        # Connections that stay open keep their handlers alive until the stop.
        idle = lab.spawn(CLIENT, _hold_open, ONLINE_ADDRESS, GREETER_PORT, 3, 3.0)
        _wait_for(lambda: len([e for e in greeter.log_entries() if e.event == "open"]) == connections + 3)
        socat = psutil.Process(greeter.proc.pid)  # type: ignore[union-attr]
        handlers = socat.children()
        assert len(handlers) == 3
    assert not greeter.running and not socat.is_running()
    assert not [h for h in handlers if h.is_running() and h.status() != psutil.STATUS_ZOMBIE]
    assert idle.result(10) == 3, "stopping the greeter closes its open connections"
    assert sorted(lines[1] for _port, lines in results) == sorted(
        f"250 1 HELO client {n}\r\n".encode() for n in range(connections))
    opens = [i for i, e in enumerate(entries) if e.event == "open"]
    assert len(opens) == connections and max(opens) < min(i for i, e in enumerate(entries) if e.event == "line"), \
        "every connection was open at once before any line was sent"
    per_connection = Counter(e.connection for e in entries)
    assert len(per_connection) == connections and set(per_connection.values()) == {4}
    assert {e.peer_port for e in entries} == {port for port, _lines in results}


def _hold_open(address: str, port: int, count: int, seconds: float) -> int:
    """Runs inside a host: ``count`` connections that read the greeting, then wait; how many
    the server closed before ``seconds`` ran out."""
    import socket
    import time

    conns = [socket.create_connection((address, port), timeout=seconds) for _ in range(count)]
    closed = 0
    deadline = time.monotonic() + seconds
    for conn in conns:
        conn.makefile("rb").readline()
    for conn in conns:
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            closed += conn.recv(1) == b""
        except (TimeoutError, ConnectionResetError):
            pass
        conn.close()
    return closed


def _settled_log(greeter: Greeter, expected: int, timeout: float = 5.0) -> list:
    """The greeter's log once it holds ``expected`` entries (handlers log a moment after replying)."""
    _wait_for(lambda: len(greeter.log_entries()) >= expected, timeout)
    return greeter.log_entries()


def _wait_for(condition, timeout: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)


def test_greeter_log_lines_parse_with_tabs_in_the_text() -> None:
    entry = parse_greeter_line("1700000000.123456\t42-1700000000123456\t[2001:2::1]\t40000\tline\ta\tb")
    assert (entry.connection, entry.peer_addr, entry.peer_port, entry.event, entry.text) == (
        "42-1700000000123456", "2001:2::1", 40000, "line", "a\tb")
    assert entry.time == pytest.approx(1700000000.123456)


def test_greeter_refuses_a_multiline_greeting() -> None:
    with pytest.raises(ValueError, match="one line"):
        Greeter(None, ONLINE, ONLINE_ADDRESS, GREETER_PORT, greeting="220 a\r\n250 b")  # type: ignore[arg-type]
