"""Run folders go once read, and stay, named on stderr, when the user asks to keep them."""

from __future__ import annotations

import pytest

from tcpcopy.lab import rundirs
from tcpcopy.lab.livecopy import LiveCopy


@pytest.fixture
def run_dir(tmp_path):
    path = tmp_path / "tcpcopy-live-test"
    (path / "logs").mkdir(parents=True)
    (path / "logs" / "tcpcopy.log").write_text("copying\n")
    return path


def test_a_run_folder_is_removed_once_read(run_dir, monkeypatch, capsys):
    monkeypatch.delenv(rundirs.KEEP_ENV, raising=False)
    assert rundirs.remove_run_dir(run_dir) is True
    assert not run_dir.exists() and capsys.readouterr().err == ""


@pytest.mark.parametrize("value", ["1", "yes"])
def test_asked_to_keep_it_stays_and_says_where(run_dir, monkeypatch, capsys, value):
    monkeypatch.setenv(rundirs.KEEP_ENV, value)
    assert rundirs.remove_run_dir(run_dir) is False
    assert (run_dir / "logs" / "tcpcopy.log").exists()
    assert capsys.readouterr().err == f"kept {run_dir} (TCPCOPY_KEEP_RUNS is set)\n"


def test_zero_or_empty_is_not_a_request_to_keep(run_dir, monkeypatch):
    for value in ("0", ""):
        monkeypatch.setenv(rundirs.KEEP_ENV, value)
        assert not rundirs.keep_requested()
    assert rundirs.remove_run_dir(run_dir) and not run_dir.exists()
    assert rundirs.remove_run_dir(None) is False


def test_a_live_copys_folder_goes_or_stays_as_asked(monkeypatch):
    monkeypatch.delenv(rundirs.KEEP_ENV, raising=False)
    copy = LiveCopy(None)                  # nothing started: only its folder was made
    assert copy.dir.is_dir() and copy.dir.name.startswith("tcpcopy-live-")
    copy.remove_dir()
    assert not copy.dir.exists()
    monkeypatch.setenv(rundirs.KEEP_ENV, "1")
    kept = LiveCopy(None)
    try:
        kept.remove_dir()
        assert kept.dir.is_dir()
    finally:
        monkeypatch.delenv(rundirs.KEEP_ENV)
        kept.remove_dir()
    assert not kept.dir.exists()
