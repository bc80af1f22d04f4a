"""--pcap-failed on disk: the directory checked at start, files never overwritten, a failed
write reported (never raised), and the flags checked before anything starts."""

from __future__ import annotations

import os

import pytest

from tcpcopy.session.failedpcap import PcapFailedOptions
from tcpcopy.session.main import parse_args
from tcpcopy.session.pcapfiles import PROBE, PcapDirectory, PcapDirectoryError

COPY = ["-x", "80-198.18.0.2:8080", "-s", "198.18.2.1"]


def test_a_missing_directory_is_an_error_that_says_to_create_it(tmp_path):
    with pytest.raises(PcapDirectoryError, match="no such directory: create it first"):
        PcapDirectory(str(tmp_path / "nowhere"))


def test_a_directory_this_process_cannot_write_is_an_error_that_names_the_fix(tmp_path):
    if os.geteuid() == 0:
        target = tmp_path / "file"   # root writes anywhere: a file where the directory should be
        target.write_text("")
        with pytest.raises(PcapDirectoryError, match="no such directory"):
            PcapDirectory(str(target))
        return
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o500)
    with pytest.raises(PcapDirectoryError, match="cannot create files there.*give it write access"):
        PcapDirectory(str(closed))


def test_the_check_leaves_nothing_behind(tmp_path):
    PcapDirectory(str(tmp_path))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(PROBE)]


def test_a_file_is_never_written_over(tmp_path):
    directory = PcapDirectory(str(tmp_path))
    assert directory.write("a.pcap", b"one") is None
    assert directory.write("a.pcap", b"two") is None
    assert (tmp_path / "a.pcap").read_bytes() == b"one" and (tmp_path / "a-1.pcap").read_bytes() == b"two"


def test_a_write_that_fails_is_reported_not_raised(tmp_path):
    (tmp_path / "d").mkdir()
    directory = PcapDirectory(str(tmp_path / "d"))
    (tmp_path / "d").rmdir()   # gone while the copy runs
    error = directory.write("a.pcap", b"x")
    assert error is not None and "No such file or directory" in error


def test_the_flags_give_the_options_with_an_absolute_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "failed").mkdir()
    args = parse_args(COPY + ["--pcap-failed", "failed", "--pcap-failed-max", "7",
                              "--pcap-failed-bytes", "200000", "--pcap-failed-memory", "8"])
    assert args.pcap_failed_options == PcapFailedOptions(str(tmp_path / "failed"), 7, 200_000, 8 << 20)
    assert parse_args(COPY).pcap_failed_options == PcapFailedOptions()
    assert parse_args(COPY + ["--pcap-failed", "failed"]).pcap_failed_options == \
        PcapFailedOptions(str(tmp_path / "failed"))


@pytest.mark.parametrize("flags, message", [
    (["--pcap-failed", "/nonexistent/failed"], "no such directory: create it first"),
    (["--pcap-failed-max", "3"], "go with --pcap-failed DIR"),
    (["--pcap-failed", "/tmp", "--pcap-failed-bytes", "100"], "give a whole number 65536"),
    (["--pcap-failed", "/tmp", "--pcap-failed-max", "0"], "give a whole number 1"),
])
def test_bad_flags_stop_the_command_with_the_fault_and_the_fix(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(COPY + flags)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_an_owner_that_cannot_write_a_file_counts_it_logs_once_and_goes_on(tmp_path, caplog):
    from types import SimpleNamespace

    from tcpcopy.session.failedpcap import FailedSessions, SessionPcap
    from tcpcopy.session.owner import Owner

    (tmp_path / "d").mkdir()
    owner = SimpleNamespace(pcap_directory=PcapDirectory(str(tmp_path / "d")), _pcap_failed_logged=False,
                            failed=FailedSessions(PcapFailedOptions(str(tmp_path / "d"))))
    (tmp_path / "d").rmdir()   # e.g. removed while the copy runs
    for n in range(3):
        owner.failed.counters.written += 1   # what freed() did when it handed the file out
        Owner._write_pcap(owner, SessionPcap(f"{n}.pcap", b"x", 1))
    counters = owner.failed.counters
    assert (counters.written, counters.not_written, counters.write_errors) == (0, 3, 3)
    logged = [r for r in caplog.records if "--pcap-failed" in r.getMessage()]
    assert len(logged) == 1 and "No such file or directory" in logged[0].getMessage()
