"""The run folders of the lab's harnesses and servers (``/tmp/tcpcopy-live-*``,
``/tmp/tcl-cluster-*``, ``/tmp/tcl-nginx-*`` ...): logs, configs, samples and access logs of
one run, removed once they have been read.

``TCPCOPY_KEEP_RUNS=1`` keeps them all for a closer look, and each kept folder is named on
stderr as it would have gone. A failed end-to-end test keeps its copy's folder regardless
(tests/e2e/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

KEEP_ENV = "TCPCOPY_KEEP_RUNS"


def keep_requested() -> bool:
    """Whether the user asked to keep run folders (``TCPCOPY_KEEP_RUNS`` set, and not 0)."""
    return os.environ.get(KEEP_ENV, "").strip() not in ("", "0")


def remove_run_dir(path: str | Path | None) -> bool:
    """Remove a run folder, or keep it and say where when asked to; True if it was removed."""
    if path is None:
        return False
    if keep_requested():
        print(f"kept {path} ({KEEP_ENV} is set)", file=sys.stderr, flush=True)
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True
