"""Lab fixtures: skip cleanly where namespaces cannot be made, always tear down what was made."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tcpcopy.lab.netns import ONLINE, ONLINE_ADDRESS, Lab, four_host, two_host
from tcpcopy.lab.servers import Nginx


@functools.cache
def lab_unavailable_reason() -> str | None:
    """Why lab tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "lab tests need root (ip netns needs root): run pytest as root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is missing: apt-get install iproute2"
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        return f"`ip netns` is unavailable here: {done.stderr.strip()}"
    return None


@pytest.fixture
def lab_required() -> None:
    """Skip the test, with the reason, unless network namespaces can be created."""
    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def two_host_lab() -> Iterator[Lab]:
    """An up two-host lab (copier 198.18.0.1, target 198.18.0.2), torn down afterwards."""
    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with two_host() as lab:
        yield lab


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """An up four-host lab (client, online, target, assistant) for the module's tests."""
    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with four_host() as lab:
        yield lab


@pytest.fixture
def web(lab: Lab) -> Iterator[Nginx]:
    """nginx on the online host, port 80."""
    with Nginx(lab, ONLINE, ONLINE_ADDRESS, 80) as server:
        yield server
