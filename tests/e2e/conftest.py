"""End-to-end fixtures: one four-host lab per test module, a fresh live copy per test.

A live copy's processes (nginx, intercept, tcpcopy, greeters) stop when its test ends, also
on failure; the lab's namespaces go when the module ends. When a test fails, the tail of the
tcpcopy and intercept logs is printed with it, and their directory is kept for a closer look.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator

import pytest

from tcpcopy.deploy.lab import Lab, four_host, list_namespaces
from tcpcopy.deploy.livecopy import LiveCopy
from tests.lab.conftest import lab_unavailable_reason

LOG_TAIL = 4000


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"e2e_report_{report.when}", report)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """An up four-host lab (client, online, target, assistant), torn down after the module."""
    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with four_host() as up:
        yield up
    left = [ns for ns in list_namespaces() if ns.startswith(f"{up.prefix}{up.tag}-")]
    assert not left, f"lab namespaces left behind: {left}"


@pytest.fixture
def live_copy(lab: Lab, request) -> Iterator[Callable[..., LiveCopy]]:
    """``live_copy(**LiveCopy kwargs)``: a started live copy in the module's lab, stopped
    when the test ends."""
    started: list[LiveCopy] = []

    def start(**kwargs) -> LiveCopy:
        copy = LiveCopy(lab, **kwargs)
        started.append(copy)
        return copy.__enter__()

    yield start
    for copy in reversed(started):
        try:
            copy.__exit__(None, None, None)
        finally:
            report = getattr(request.node, "e2e_report_call", None)
            if report is not None and report.failed:
                for name in ("tcpcopy", "intercept"):
                    print(f"----- {name} log ({copy.dir}/{name}.log), tail -----")
                    print(copy.log(name)[-LOG_TAIL:])
            else:
                shutil.rmtree(copy.dir, ignore_errors=True)
