"""tcpcopy.deploy: what an operator deploys (sample config, units, dashboards); no code."""
