"""A slow HTTP backend for a lab nginx: a target that answers after a random delay.

The program (``python -m tcpcopy.lab.slowbackend``) serves the files of a directory on a
Unix socket, one request per connection (HTTP/1.0 style, what nginx's ``proxy_pass`` speaks
by default), each after a delay drawn uniformly from ``--min-delay``..``--max-delay``. An
nginx proxying to it (``Nginx(..., upstream=backend.upstream)``) answers like the online
nginx, only later: the case where a copier must not give up on, or run ahead of, a slow
answer. A Unix socket keeps the backend off every network, the lab's included.

:class:`SlowBackend` runs it inside a lab host (``Lab.popen``, so a teardown stops it) and
reads its log: one line per answer, ``time path status delay``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from .netns import Lab
from .rundirs import remove_run_dir
from .servers import ServerError, _LabServer, default_site

HEADER_LIMIT = 16 << 10
IO_TIMEOUT_S = 10.0
MAX_DELAY_S = 10.0


# --------------------------------------------------------------------------- the program


def answer(root: Path, request_head: bytes) -> tuple[int, bytes, bytes]:
    """(status, reason, body) for a request head: the file its path names under ``root``."""
    try:
        method, target, _version = request_head.split(b"\r\n", 1)[0].split(b" ", 2)
    except ValueError:
        return 400, b"Bad Request", b""
    path = target.split(b"?", 1)[0].decode("latin-1").lstrip("/") or "index.html"
    file = (root / path).resolve()
    if method not in (b"GET", b"HEAD") or root not in file.parents or not file.is_file():
        return 404, b"Not Found", b""
    return 200, b"OK", file.read_bytes()


async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, args: argparse.Namespace,
                    log) -> None:
    """Read one request head, wait the drawn delay, answer, close."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT_S)
        delay = random.uniform(args.min_delay, args.max_delay)
        await asyncio.sleep(delay)
        status, reason, body = answer(args.root, head)
        writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: text/html\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n" % (status, reason, len(body)) + body)
        await asyncio.wait_for(writer.drain(), IO_TIMEOUT_S)
        log.write(f"{time.time():.3f} {head.split(b' ', 2)[1].decode('latin-1')} {status} {delay:.3f}\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(args: argparse.Namespace) -> None:
    with open(args.log, "a", buffering=1) as log:
        server = await asyncio.start_unix_server(lambda r, w: serve_one(r, w, args, log), path=str(args.unix),
                                                 limit=HEADER_LIMIT, backlog=1024)
        os.chmod(args.unix, 0o666)  # nginx's workers run unprivileged
        print(f"listening on {args.unix}", flush=True)
        async with server:
            await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcpcopy.lab.slowbackend",
                                     description="Serve a directory on a Unix socket, each answer after a random delay.")
    parser.add_argument("--unix", type=Path, required=True, help="socket path to listen on")
    parser.add_argument("--root", type=lambda p: Path(p).resolve(), required=True, help="directory to serve")
    parser.add_argument("--min-delay", type=float, default=0.1, help="seconds (0.1)")
    parser.add_argument("--max-delay", type=float, default=0.3, help="seconds (0.3)")
    parser.add_argument("--log", type=Path, required=True, help="one line per answer: time path status delay")
    args = parser.parse_args(argv)
    if not 0 <= args.min_delay <= args.max_delay <= MAX_DELAY_S:
        parser.error(f"need 0 <= --min-delay <= --max-delay <= {MAX_DELAY_S}")
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


# --------------------------------------------------------------------------- in the lab


class SlowBackend(_LabServer):
    """The slow backend inside lab host ``host``, serving ``files`` (default: what every lab
    nginx serves) after ``delay`` = (min, max) seconds each.

    ``with SlowBackend(lab, "target") as backend:`` starts it and waits until it listens;
    :attr:`upstream` is what :class:`Nginx` takes to proxy to it.
    """

    def __init__(self, lab: Lab, host: str, *, files: Mapping[str, bytes] | None = None,
                 delay: tuple[float, float] = (0.1, 0.3)) -> None:
        if not 0 <= delay[0] <= delay[1] <= MAX_DELAY_S:
            raise ValueError(f"delay {delay}: need 0 <= min <= max <= {MAX_DELAY_S}")
        self.lab = lab
        self.host = host
        self.files = dict(default_site() if files is None else files)
        self.delay = delay
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._cached_log: list[tuple[float, str, int, float]] = []

    def _path(self, name: str) -> Path:
        if self.dir is None:
            raise ServerError("the slow backend has not been started")
        return self.dir / name

    @property
    def upstream(self) -> str:
        """The backend as an nginx ``proxy_pass`` server: ``unix:PATH:``."""
        return f"unix:{self._path('backend.sock')}:"

    def start(self) -> SlowBackend:
        if self.proc is not None:
            raise ServerError("the slow backend is already started")
        self.dir = Path(tempfile.mkdtemp(prefix=f"tcl-slow-{self.lab.tag}-{self.host}-"))
        self.dir.chmod(0o755)  # nginx's workers must reach the socket
        site = self._path("site")
        site.mkdir()
        for name, content in self.files.items():
            (site / name.lstrip("/")).write_bytes(content)
        self.lab.add_cleanup(self.stop)
        argv = [sys.executable, "-m", "tcpcopy.lab.slowbackend", "--unix", str(self._path("backend.sock")),
                "--root", str(site), "--min-delay", str(self.delay[0]), "--max-delay", str(self.delay[1]),
                "--log", str(self._path("answers.log"))]
        with self._path("backend.out").open("wb") as output:
            self.proc = self.lab.popen(self.host, argv, stdout=output, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Return once it says it listens; raise ServerError if it exits or takes too long."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "listening" in self._path("backend.out").read_text(errors="replace"):
                return
            if self.proc is None or self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise ServerError(f"slow backend did not start: {self.diagnostics()}")

    def stop(self, grace_s: float = 2.0) -> int | None:
        """Stop it by PID; keep its log (read before the directory goes)."""
        code = None
        if self.proc is not None:
            code = self.lab.stop(self.proc, grace_s)
            self.proc = None
        if self.dir is not None:
            self._cached_log = self._read_log()
            remove_run_dir(self.dir)
            self.dir = None
        return code

    def answers(self) -> list[tuple[float, str, int, float]]:
        """(time, request target, status, delay) of every answer, in order."""
        return self._read_log() if self.dir is not None else list(self._cached_log)

    def _read_log(self) -> list[tuple[float, str, int, float]]:
        try:
            lines = self._path("answers.log").read_text().splitlines()
        except FileNotFoundError:
            return []
        rows = (line.split(" ") for line in lines if line)
        return [(float(t), path, int(status), float(delay)) for t, path, status, delay in rows]

    def diagnostics(self) -> str:
        try:
            return self._path("backend.out").read_text(errors="replace").strip()[-1500:] or "(no output)"
        except (FileNotFoundError, ServerError):
            return "(no output)"


if __name__ == "__main__":
    sys.exit(main())
