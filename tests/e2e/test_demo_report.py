"""The demo's run report, end to end: a small live copy in its own four-host lab writes
report.json, report.png and report.html; a SIGTERM in the middle of the load still leaves
the report of what was collected, and no lab behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tcpcopy.lab import demo
from tcpcopy.lab.netns import LAB_PREFIX, list_namespaces, remove_stale
from tests.lab.conftest import lab_unavailable_reason

pytestmark = pytest.mark.lab

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def lab_required() -> None:
    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(reason)


def test_the_demo_writes_the_report_files(tmp_path) -> None:
    report_dir = tmp_path / "report"
    run = demo.run_demo(200, 3, (5, 10), 1, report_dir=report_dir)
    loads, report = run.loads, run.report
    assert run.interrupted is None
    assert sum(r.summary.done for r in loads) == 650
    assert run.run_dir is not None and not run.run_dir.exists()     # read, then removed
    assert report.loss_ratio == 0

    data = json.loads((report_dir / "report.json").read_text())
    assert data["traffic"] is True
    assert data["loss"]["from_access_logs"] == 0
    assert data["totals"]["online_requests"] == data["totals"]["target_requests"] == 650
    copier = data["loss"]["from_copier"]
    assert copier is not None and 0 <= copier["content_loss"] <= 1 and copier["requests_sent"] > 0
    assert data["sessions"]["outcomes"].get("closed:completed", 0) > 0
    assert {p["name"] for p in data["processes"]} >= {"tcpcopy", "intercept"}
    assert {p["role"] for p in data["published"]} == {"capture", "owner", "intercept"}
    assert data["samples"] >= 3
    assert max(data["series"]["cpu_percent"]["owner"]) > 0
    assert sum(data["series"]["online"]) == 650
    assert data["series"]["window_loss"] and not any(data["series"]["window_loss"])   # no loss, no spike

    png = (report_dir / "report.png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 10_000
    page = (report_dir / "report.html").read_text()
    assert 'href="report.png"' in page and "data:image/png;base64," in page
    assert "<h2>loss</h2>" in page


def test_sigterm_mid_copy_writes_what_was_collected_and_tears_the_lab_down(tmp_path) -> None:
    report_dir = tmp_path / "report"
    argv = [sys.executable, "-m", "tcpcopy.lab.demo", "--rate", "100", "--seconds", "20",
            "--keepalive", "0x0", "--report-dir", str(report_dir)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    tags: set[str] = set()
    try:
        h2load = _wait_for_h2load(proc, timeout=20)
        tags.add(_lab_tag_of(h2load))
        time.sleep(1.5)                      # some requests copied
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:              # the demo did not stop: end it, then its lab
            proc.kill()
            proc.communicate(timeout=10)
            for tag in tags:
                remove_stale(tag=tag)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM" in err
    assert "report files:" in out and str(report_dir / "report.png") in out
    left = [ns for tag in tags for ns in list_namespaces(f"{LAB_PREFIX}{tag}-")]
    assert not left, f"lab namespaces left behind: {left}"

    data = json.loads((report_dir / "report.json").read_text())
    assert "SIGTERM" in data["meta"]["interrupted"]
    assert data["traffic"] is True and data["totals"]["online_requests"] > 0
    assert data["totals"]["online_requests"] < 100 * 20
    assert data["samples"] >= 1
    assert (report_dir / "report.png").read_bytes()[:8] == PNG_MAGIC
    assert "interrupted" in (report_dir / "report.html").read_text()


def _wait_for_h2load(proc: subprocess.Popen, timeout: float) -> psutil.Process:
    """The h2load the demo started (its direct child, once the copy is up)."""
    deadline = time.monotonic() + timeout
    parent = psutil.Process(proc.pid)
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for child in parent.children():
            try:
                if child.name() == "h2load":
                    return child
            except psutil.Error:
                continue
        time.sleep(0.1)
    raise AssertionError("the demo started no h2load in time")


def _lab_tag_of(process: psutil.Process) -> str:
    """The tag of the lab namespace ``process`` runs in (``tcl-TAG-client`` -> TAG)."""
    inode = os.stat(f"/proc/{process.pid}/ns/net").st_ino
    for name in list_namespaces():
        try:
            if os.stat(f"/var/run/netns/{name}").st_ino == inode:
                return name[len(LAB_PREFIX):].rsplit("-", 1)[0]
        except OSError:
            continue
    raise AssertionError(f"h2load {process.pid} is in no lab namespace")
