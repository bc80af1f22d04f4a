"""tcpcopy.cluster.ops: the operator's tools on top of the shared base in tcpcopy.cluster.

The tcpcopy-cluster command and its supervisord rendering, the stats aggregator and hub,
the live view (top), the Prometheus exporter and the run report. They import the base;
no base module (tcpcopy.cluster.*) and no role (capture, session, intercept) imports them.
"""
