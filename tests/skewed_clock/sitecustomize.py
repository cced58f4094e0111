"""Loaded at interpreter start by the processes of one test node (PYTHONPATH):
shifts that node's wall clock, as seen by workers, by WORKERS_TEST_CLOCK_SKEW seconds."""

import os

skew = float(os.environ.get("WORKERS_TEST_CLOCK_SKEW", "0"))
if skew:
    import workers.store.base as base

    real_clock = base.wall_clock
    base.wall_clock = lambda: real_clock() + skew
