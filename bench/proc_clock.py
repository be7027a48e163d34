"""Process clocks shared by the benchmarks, and by both sides of bench/compare_reference.py.

Imports nothing beyond the standard library, so the reference side (run by a Python
that has torch and not TensorFlow) measures exactly as ours does.
"""
from __future__ import annotations

import os
import resource
import statistics
import time


def process_age_s() -> float:
    """Seconds since this process was started by the kernel (Linux /proc; 10 ms ticks).

    Start-up figures count from here, so they include the interpreter's own start and
    every import, on both sides alike.
    """
    with open("/proc/self/stat", encoding="ascii") as f:
        # Field 22 (starttime, clock ticks after boot); the name in field 2 may hold spaces.
        fields = f.read().rsplit(")", 1)[1].split()
    start_ticks = int(fields[19])
    with open("/proc/uptime", encoding="ascii") as f:
        uptime = float(f.read().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (ru_maxrss, KiB on Linux), in GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def cpu_model() -> str:
    """The CPU's model name and the count of logical CPUs this process may use."""
    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {len(os.sched_getaffinity(0))} logical CPUs"


def cpu_flags() -> set[str]:
    """The CPU feature flags (/proc/cpuinfo), e.g. {'amx_bf16', 'avx512_bf16', ...}."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def median_ms(fn, repeats: int) -> float:
    """Median wall milliseconds of `fn()` over `repeats` calls after one warm-up call (of an
    even count: the mean of the middle two). A result that is a tensor, or a list or tuple
    of them, is fetched (`.numpy()`) inside the timing, so that the time includes the work
    and not only its dispatch; other results (numpy arrays) are taken as they are."""
    def call():
        result = fn()
        for value in result if isinstance(result, (list, tuple)) else [result]:
            if hasattr(value, "numpy"):
                value.numpy()

    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3
