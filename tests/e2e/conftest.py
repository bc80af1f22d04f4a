"""End-to-end fixtures: one four-host lab per test module, a fresh live copy per test.

A live copy's processes (nginx, intercept, tcpcopy, greeters) stop when its test ends, also
on failure; the lab's namespaces go when the module ends. When a test fails, the tail of the
tcpcopy and intercept logs is printed with it, and their directory is kept for a closer look.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tcpcopy.lab.clustercopy import ClusterCopy
from tcpcopy.lab.netns import Lab, four_host, list_namespaces
from tcpcopy.lab.livecopy import LiveCopy
from tests.lab.conftest import lab_unavailable_reason

LOG_TAIL = 4000


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"e2e_report_{report.when}", report)


def module_lab(make: Callable[[], Lab]) -> Iterator[Lab]:
    """The body of a module's ``lab`` fixture: ``make()`` built and up, skipped with the
    reason where labs cannot run, torn down after the module and checked gone."""
    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with make() as up:
        yield up
    left = [ns for ns in list_namespaces() if ns.startswith(f"{up.prefix}{up.tag}-")]
    assert not left, f"lab namespaces left behind: {left}"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """An up four-host lab (client, online, target, assistant), torn down after the module."""
    yield from module_lab(four_host)


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
                copy.remove_dir()


@pytest.fixture
def cluster_copy(lab: Lab, request) -> Iterator[Callable[..., ClusterCopy]]:
    """``cluster_copy(**ClusterCopy kwargs)``: a started sharded cluster (nginx, intercepts,
    owners, capture workers under supervisord) in the module's lab. Every cluster the test
    started is stopped when it ends, the last started first, also on failure; then no
    supervisord of theirs may be left. On failure the tail of every program log is printed
    and the cluster's directory kept."""
    started: list[ClusterCopy] = []

    def start(*args, **kwargs) -> ClusterCopy:
        copy = ClusterCopy(lab, *args, **kwargs)
        started.append(copy)
        return copy.__enter__()

    yield start
    errors = []
    for copy in reversed(started):
        try:
            copy.__exit__(None, None, None)
        except Exception as exc:  # stop the others all the same
            errors.append(exc)
    report = getattr(request.node, "e2e_report_call", None)
    failed = errors or (report is not None and report.failed)
    for copy in started:
        if failed:
            for role in copy.started_roles:
                print(f"----- cluster {copy.name}, {role} role ({copy.role_dir(role)}) -----")
                print(copy.diagnostics(role, LOG_TAIL // 4))
        else:
            copy.remove_dir()
    left = [pid for copy in started for pid in copy.supervisord_alive()]
    assert not errors, f"stopping the clusters failed: {errors}"
    assert not left, f"supervisord still running after stop: pids {left}"
