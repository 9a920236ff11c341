"""Measured searches over candidate prunes, above the stages they run: sensitivity sweeps
(pool, Ray, shards, merge) and latency budgets."""
