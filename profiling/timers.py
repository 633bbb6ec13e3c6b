"""Timers: seconds per call, synchronised with the device, and the spread of repeated timings.

A CUDA kernel launch returns before the kernel ends, so a step timed without synchronising
measures the launch; ``time_call`` synchronises before and after on ``cuda`` (a no-op on
``cpu``).  ``quartiles`` is the summary every benchmark table reports (median, IQR, min, n).
"""

from __future__ import annotations

import statistics
import time


def synchronize(device: str) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    if device == "cuda":
        import torch
        torch.cuda.synchronize()


def time_call(fn, device: str = "cpu") -> float:
    """Seconds for one ``fn()``, synchronised with the device before and after."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def quartiles(xs) -> dict:
    """Median, 25th and 75th percentiles (linear interpolation), minimum and count of timings."""
    xs = sorted(xs)
    if not xs:
        raise ValueError("timers: quartiles of no timings; time at least one call")
    q25, q50, q75 = (statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else xs * 3)
    return {"median": float(q50), "q25": float(q25), "q75": float(q75), "min": float(xs[0]), "n": len(xs)}
