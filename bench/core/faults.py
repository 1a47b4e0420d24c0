"""Named crash points for the crash-safety tests: with BENCH_CRASH_AT=<point> the process SIGKILLs itself there.

Watching a child's output to kill it inside a phase is a race when phases last well under a second (the test
profile); a self-delivered SIGKILL at a named point is the same crash, every time. Points: `baseline` (after the
first baseline epoch, before the cache is written), `joint` (after DECORE's first joint epoch), `finetune` (after
the first fine-tuning epoch), `results` (between writing runs.csv and runs.parquet). Unset: nothing happens.
BENCH_PAUSE_AT=<point>:<seconds> sleeps there instead, so that a signal from outside (a scheduler's `scancel`)
lands inside that phase every time.
"""
from __future__ import annotations

import os
import signal
import time

POINTS = ("baseline", "joint", "finetune", "results")


def crash_point(name: str) -> None:
    if os.environ.get("BENCH_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    point, _, seconds = os.environ.get("BENCH_PAUSE_AT", "").partition(":")
    if point == name:
        time.sleep(float(seconds))
