"""Timing shared by the benchmark scripts (imported as ``_timing``: scripts run from this folder)."""

from __future__ import annotations

import time
from typing import Callable


def best_time(fn: Callable[[], object], repeats: int, clock: Callable[[], float] = time.perf_counter,
              warmup: bool = True) -> float:
    """Best of ``repeats`` timings of ``fn()`` in ``clock`` seconds, after one untimed warm-up call.

    ``clock=time.thread_time`` gives CPU seconds of the calling thread (per-core figures, steadier
    than wall time when other jobs share the machine).
    """
    if warmup:
        fn()
    best = float("inf")
    for _ in range(max(1, repeats)):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return best
