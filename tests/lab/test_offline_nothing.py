"""An offline replay that copies nothing says why and fails, instead of exiting 0."""

import sys
from pathlib import Path

import pytest

from tcpcopy.lab.netns import COPIER, TARGET_ADDRESS

pytestmark = pytest.mark.lab

RECORDING = Path(__file__).resolve().parents[1] / "fixtures" / "http_keepalive.pcap"


def test_a_replay_whose_x_matches_nothing_names_the_fault(two_host_lab):
    done = two_host_lab.run(COPIER, [sys.executable, "-m", "tcpcopy.session.main", "--offline",
                                     "-i", str(RECORDING), "-x", f"9999-{TARGET_ADDRESS}:8080",
                                     "-s", "127.0.0.1", "-L"], check=False, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "nothing copied: no packet of" in done.stderr and "-x 9999" in done.stderr
