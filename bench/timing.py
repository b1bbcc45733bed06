"""Timing shared by the benchmarks that compare a case with its baseline in the same run."""

from __future__ import annotations

import time
from typing import Callable, Sequence


def best_times(fns: Sequence[Callable[[], object]], repeat: int) -> list[float]:
    """The fastest of ``repeat`` runs of each of ``fns``, alternating, so load from other processes on a shared
    machine hits every side alike and the minimum is the cost of the work itself."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best
