"""The sites the comparison tests serve: the online nginx and a target whose site differs on
known paths, one page with another body (same status, same length) and one page gone (404);
the rest is the same."""

from __future__ import annotations

from tcpcopy.lab.servers import default_site

SAME, CHANGED, GONE = "/same.html", "/changed.html", "/gone.html"
ONLINE_SITE = {**default_site(), "same.html": b"the same page\n" * 40,
               "changed.html": b"version one\n" * 40, "gone.html": b"still here\n"}
TARGET_SITE = {**default_site(), "same.html": b"the same page\n" * 40,
               "changed.html": b"version two\n" * 40}
