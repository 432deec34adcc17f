"""Wall-clock timing for the book's small speed measurements (the benchmarks/ scripts report ratios, not tests).

Introduced in Chapter 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def fastest(fn: Callable[[], object], repeats: int = 3, device: torch.device | str = "cpu") -> float:
    """The fastest of ``repeats`` timed calls of ``fn`` in seconds, after one untimed warm-up call.

    The minimum is the run least disturbed by the rest of the machine. On CUDA the clock is read only after the
    GPU has finished (its kernels run asynchronously). Introduced in Chapter 1.
    """
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    on_cuda = torch.device(device).type == "cuda"

    def run() -> None:
        fn()
        if on_cuda:
            torch.cuda.synchronize()

    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)
