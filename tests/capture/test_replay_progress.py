"""Progress of an offline replay: the lines themselves (pure), and the capture worker that
prints them on a terminal and stays quiet elsewhere (a real worker process replaying a real
pcap file, its stderr a pseudo-terminal or a pipe)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time


from tcpcopy.cluster.progress import ReplayProgress, about_left, duration, time_left
from tests.fixtures.pcapfile import FIXTURES_DIR, load_fixture, write_pcap

RECORDING = FIXTURES_DIR / "http_keepalive.pcap"


def test_durations_read_at_a_glance():
    assert [duration(s) for s in (0, 44.6, 60, 185, 3600 + 125)] == ["0 s", "45 s", "1 min 00 s", "3 min 05 s",
                                                                    "1 h 02 min"]
    assert time_left(0.25, 30) == 90 and time_left(0.001, 30) is None and time_left(1.0, 30) == 0
    assert about_left(None) == "time left not known yet" and about_left(90) == "about 1 min 30 s left"


def test_a_line_every_few_seconds_with_count_share_rate_and_time_left():
    lines = []
    progress = ReplayProgress("/data/trace.pcap", 1000, 2, now=100.0, write=lines.append, every=5.0)
    progress.update(10, 100, 0, now=104.9)
    assert lines == []
    progress.update(5000, 500, 0, now=105.0)       # half of round 1 of 2: a quarter of the work
    progress.update(5001, 501, 0, now=106.0)        # not due yet
    progress.update(15000, 500, 1, now=110.0)
    assert lines == [
        "replay: 5,000 packets read, 25% of trace.pcap (round 1 of 2), 1,000 packets/s, about 15 s left\n",
        "replay: 15,000 packets read, 75% of trace.pcap (round 2 of 2), 2,000 packets/s, about 3 s left\n"]
    progress.finish(20000, now=113.0)
    assert lines[-1] == "replay: read all of trace.pcap 2 times: 20,000 packets in 13 s\n"


def stretched_recording(path, seconds: float) -> int:
    """The fixture's frames again and again, 50 ms apart, for ``seconds``: a file whose replay
    takes that long. Returns how many frames it holds."""
    frames = [frame for _ts, frame in load_fixture(RECORDING.name)]
    count = int(seconds / 0.05)
    write_pcap(path, [(1_700_000_000 + i * 0.05, frames[i % len(frames)]) for i in range(count)])
    return count


def replay(path, stderr, tmp_path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "tcpcopy.capture.worker", "--offline", str(path), "--filter", "tcp",
            "--owner", f"ipc://{tmp_path}/no-owner"]     # nobody listens: batches are counted as dropped
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)


def read_terminal(master: int, proc: subprocess.Popen, timeout: float) -> str:
    out, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:          # the worker closed the terminal: it has exited
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out.decode(errors="replace").replace("\r\n", "\n")


def test_on_a_terminal_the_replay_shows_its_progress(tmp_path):
    path = tmp_path / "long.pcap"
    frames = stretched_recording(path, 6.5)
    master, terminal = pty.openpty()
    proc = replay(path, terminal, tmp_path)
    os.close(terminal)
    try:
        text = read_terminal(master, proc, timeout=30)
        assert proc.wait(10) == 0, text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    progress = [line for line in text.splitlines() if line.startswith("replay: ") and "packets/s" in line]
    assert len(progress) == 1, text                                        # at 5 s of a 6.5 s replay
    assert "% of long.pcap" in progress[0] and "left" in progress[0]
    share = int(progress[0].split("packets read, ")[1].split("%")[0])
    assert 60 <= share <= 90, progress[0]
    assert f"replay: read all of long.pcap: {frames:,} packets in" in text


def test_elsewhere_the_replay_is_quiet(tmp_path):
    proc = replay(RECORDING, subprocess.PIPE, tmp_path)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "replay:" not in err.decode()
    assert "capture: captured:" in err.decode()      # what matters is still said
