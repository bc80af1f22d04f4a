"""End to end on links with every offload off (no partial checksums, no super-packets).

The lab keeps real-host offloads by default and every other end-to-end test runs so; this
module shows the copy is just as exact where a capture sees complete checksums and
segments no larger than the MTU (a physical NIC without offloads, a SPAN port).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tcpcopy.lab import load
from tcpcopy.lab.netns import CLIENT, Lab, four_host
from tcpcopy.lab.servers import bodies_of
from tests.e2e.conftest import module_lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """The four-host lab with offloads off on every link (overrides the e2e default)."""
    yield from module_lab(lambda: four_host(offloads="off"))


def test_short_connections_and_an_upload_copy_exactly_without_offloads(live_copy) -> None:
    copy = live_copy()
    features = copy.lab.run("online", ["ethtool", "-k", copy.lab.interface("online", CLIENT)]).stdout
    assert "tx-checksumming: off" in features and "generic-receive-offload: off" in features
    short = load.short_connections(copy.lab, CLIENT, f"{copy.url}/index.html", rate=500, seconds=4)
    upload = load.upload(copy.lab, CLIENT, f"{copy.url}/upload/off", 4 << 20, 2, connections=2)
    for result in (short, upload):
        assert result.summary.all_succeeded, result.summary.output
    expected = short.summary.done + upload.summary.done
    copy.wait_for_target(expected, timeout=30)
    copy.stop_tcpcopy()
    report = copy.report()
    assert report.online_requests == report.target_requests == expected, report.render()
    stored = [b for b in bodies_of(copy.target.access_log_entries()) if b.length == 4 << 20]
    assert [b.sha256 for b in stored] == [upload.body_sha256] * 2
    table = json.loads(copy.summary_path.read_text())["table"]
    # A complete checksum equals the pseudo-header sum by chance once in 65,536 segments and
    # is then "completed" to the value it already had: nothing more than that may look partial.
    assert table["checksums_completed"] <= 1 + table_packets(copy) // 10_000, table


def table_packets(copy) -> int:
    """Client packets the owner took (from tcpcopy's summary)."""
    return json.loads(copy.summary_path.read_text())["owner"]["client_packets"]
