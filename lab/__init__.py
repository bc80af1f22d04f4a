"""tcpcopy.lab: the test and measurement tooling around the copier, never a part of it.

The namespace lab (netns.py), test servers, load generation, access-log accounting, the
live-copy harnesses, the demo, the benchmark, the C tool's runner and the profiler. It is
importable from a checkout (an editable install maps it, see setup.py) and by the tests,
but not packaged in the wheel: nothing the copier runs imports it.
"""
