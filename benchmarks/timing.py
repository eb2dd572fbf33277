"""Interleaved timing shared by the benchmark scripts.

Import this before torch: it keeps torch's OpenMP threads from spinning
after each call (OMP_WAIT_POLICY=PASSIVE), which would otherwise slow
whatever runs next in the interleaved loop.
"""

import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def interleaved(runners, inputs, rounds, warmup=5):
    """Seconds per call of each runner, {name: [times]}.

    Every runner is warmed up first; then each round calls every runner
    once, in an order rotated by one each round, so that no runner always
    follows the same one.
    """
    for run in runners.values():
        for _ in range(warmup):
            run(inputs)
    times = {name: [] for name in runners}
    names = list(runners)
    for i in range(rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runners[name](inputs)
            times[name].append(time.perf_counter() - start)
    return times
