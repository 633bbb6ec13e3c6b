"""Measured (tracemalloc) vs predicted (symbolic) peak of one numpy training step, per strategy."""

import argparse

import numpy as np

import ckpt
from profiling.meters import TracemallocMeter


def measure(model, x, y, strategy: str) -> int:
    """tracemalloc peak of one step; inputs, parameters and the schedule allocated before."""
    schedule, backend = ckpt.make_schedule(strategy, len(model)), ckpt.NumpyBackend(model)
    with TracemallocMeter() as meter:
        ckpt.execute(schedule, backend, x, y)
    return meter.figures["tracemalloc_peak"]


def main() -> None:
    """Print one row per strategy: measured, predicted, error, predicted activation peak."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--depth", type=int, default=64)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--strategy", nargs="+", default=["store_all", "recompute", "sqrt_n"])
    args = p.parse_args()
    model = ckpt.MLP([args.width] * (args.depth + 1), dtype=args.dtype)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, args.width)).astype(args.dtype)
    y = rng.standard_normal((args.batch, args.width)).astype(args.dtype)
    print(f"| strategy | measured B | predicted B | error | predicted activations B (peak less gradients) |")
    print("|---|---:|---:|---:|---:|")
    for s in args.strategy:
        measured, pred = measure(model, x, y, s), ckpt.predict_memory(model, s, batch=args.batch)
        print(f"| {s} | {measured:,d} | {pred.peak_bytes:,d} | {(measured - pred.peak_bytes) / pred.peak_bytes:+.2%} "
              f"| {pred.peak_activation_bytes:,d} |")


if __name__ == "__main__":
    main()
