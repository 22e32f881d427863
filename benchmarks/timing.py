"""Timing, table and JSON helpers shared by the benchmark scripts (not a test).

Timing is torch.utils.benchmark's (``Timer.blocked_autorange``: warm-up, blocks of calls sized to
the timer's resolution, CUDA synchronisation, median and interquartile range over the blocks);
only the table and JSON writers are our own.
"""

import json
import os
import time

import torch

from machine import machine_info
from normflows_emerging.app.evaluation import import_torch_benchmark

benchmark = import_torch_benchmark()  # torch.utils.benchmark, without a CUDA_HOME warning

# Wall-clock time, or the CPU time of the calling thread: on a machine shared with other work the
# latter does not count the time slices given to other processes (it still counts what they cost
# through shared caches). Only for one torch thread: other threads' work is not counted.
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def timed(fn, min_time=0.2, clock="wall"):
    """torch.utils.benchmark ``Measurement`` of ``fn()``: ``.median``, ``.iqr`` in seconds.

    Runs with torch's current number of threads (``Timer`` alone would use one), timed by
    ``CLOCKS[clock]``.
    """
    timer = benchmark.Timer(
        "fn()", globals={"fn": fn}, num_threads=torch.get_num_threads(), timer=CLOCKS[clock]
    )
    return timer.blocked_autorange(min_run_time=min_time)


def measure(fn, min_time=0.2, warmup=1, max_repeat=None):
    """Median seconds per call of ``fn()``.

    Args:
      fn: the call to time
      min_time: seconds of timed calls (``blocked_autorange``'s ``min_run_time``)
      warmup: untimed calls first
      max_repeat: if given, time exactly this many calls instead (their mean), for calls too
        slow to repeat
    """
    for _ in range(warmup):
        fn()
    if max_repeat is not None:
        timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
        return timer.timeit(max_repeat).median
    return timed(fn, min_time).median


def print_table(rows, columns):
    """Print ``rows`` (list of dicts) as an aligned markdown table with the given ``columns``."""

    def fmt(value):
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    cells = [[fmt(row.get(col, "")) for col in columns] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]

    def line(items):
        return "| " + " | ".join(s.rjust(w) for s, w in zip(items, widths)) + " |"

    print(line(columns))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print(line(r))


def write_json(path, rows, **extra):
    """Write the rows plus the machine's CPU model, instruction set and thread count
    (:func:`machine.machine_info`) to ``path`` (directories created)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    payload = {
        "machine": machine_info(),
        **extra,
        "rows": rows,
    }
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"wrote {path}")
