"""Fused vs unfused optimizer step: measured peaks beside the memory model's, numpy and torch CPU.

numpy: one training step (forward, backward, SGD update) per strategy, with the
update after the backward (unfused) or fused into it (``Update(i)`` after each
``Backward(i)``); tracemalloc peak of the step (parameters, inputs and optimizer
state and the schedule built before) vs ``ckpt.predict_memory(..., fused=...)``.

torch CPU: the same MLP as ``nn.Linear`` + ``nn.ReLU`` blocks, plain autograd or
the ckpt wrapper, with ``torch.optim.SGD`` after ``backward()`` (unfused) or
``ckpt.torch.fused.fuse_optimizer`` (fused); each configuration in a fresh
process with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed, meter ``rss_max``
(``profiling.meters.RSSMeter``: the larger of the kernel's VmHWM and
memory_profiler's samples, above the step's start).

    python scripts/check_fused.py --out reports/fused
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import pandas as pd

import ckpt
from profiling.meters import RSSMeter, TracemallocMeter

STRATEGIES = ["store_all", "sqrt_n", "recompute"]


# ------------------------------------------------------------------ numpy

def numpy_rows(depth: int, width: int, batch: int, dtype: str) -> list[dict]:
    """One row per strategy × fused: tracemalloc peak of a step vs the prediction."""
    model = ckpt.MLP([width] * (depth + 1), dtype=dtype)
    rng = np.random.default_rng(0)
    x, y = (rng.standard_normal((batch, width)).astype(dtype) for _ in range(2))
    opt = ckpt.optim.SGD(model.params, lr=1e-6)
    ckpt.train_step(model, x[:1], y[:1], opt, memory_check=False)        # numpy's one-time caches
    rows = []
    backend = ckpt.NumpyBackend(model, optimizer=opt)
    for strategy in STRATEGIES:
        for fused in (False, True):
            pred = ckpt.predict_memory(model, strategy, batch=batch, fused=fused)
            schedule = ckpt.make_schedule(strategy, depth, fused=fused)     # built outside the region
            with TracemallocMeter() as meter:
                result = ckpt.execute(schedule, backend, x, y)
                if not fused:
                    opt.step(result.grads)
                del result
            measured = meter.figures["tracemalloc_peak"]
            rows.append(dict(backend="numpy", dtype=dtype, strategy=strategy, fused=fused, optimizer="sgd",
                             meter="tracemalloc_peak", measured_peak_bytes=measured,
                             predicted_peak_bytes=pred.peak_bytes,
                             error=(measured - pred.peak_bytes) / pred.peak_bytes,
                             predicted_activation_bytes=pred.peak_activation_bytes,
                             predicted_grads_at_peak=pred.peak_breakdown["gradients"],
                             forward_steps=pred.forward_steps))
    return rows


# ------------------------------------------------------------------ torch (one child process per row)

def torch_child(depth: int, width: int, batch: int, dtype: str, method: str, fused: bool) -> dict:
    """Measure one torch step in this (fresh) process; ``method`` is 'plain' or a ckpt strategy."""
    import torch
    from ckpt.torch.fused import fuse_optimizer
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    blocks = [torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU()).to(dt) for _ in range(depth)]
    model = torch.nn.Sequential(*blocks) if method == "plain" else ckpt.CheckpointedSequential(blocks, method)
    params = [p for b in blocks for p in b.parameters()]
    x, y = torch.randn(batch, width, dtype=dt), torch.randn(batch, width, dtype=dt)
    if fused:
        fuse_optimizer(params, torch.optim.SGD, lr=1e-6)
        step = lambda: torch.nn.functional.mse_loss(model(x), y).backward()           # noqa: E731
    else:
        opt = torch.optim.SGD(params, lr=1e-6)

        def step():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)     # the gradients leave with the step, as when fused
    step()                                      # warm-up: allocator and autograd caches
    peaks = []
    for _ in range(3):
        with RSSMeter() as meter:
            step()
        peaks.append(meter.figures["rss_max"])
    grads = sum(p.numel() * p.element_size() for p in params)
    return dict(backend="torch", dtype=dtype, strategy=method, fused=fused, optimizer="sgd", meter="rss_max",
                measured_peak_bytes=int(np.median(peaks)), measured_spread_bytes=max(peaks) - min(peaks),
                grad_bytes=grads)


def torch_rows(depth: int, width: int, batch: int, dtype: str) -> list[dict]:
    """Each torch configuration in its own process (earlier ones leave memory behind)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="32768", OMP_NUM_THREADS="1")
    rows = []
    for method in ["plain", "sqrt_n", "recompute"]:
        for fused in (False, True):
            args = [sys.executable, __file__, "--child", json.dumps([depth, width, batch, dtype, method, fused])]
            done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
            if done.returncode:
                raise RuntimeError(f"check_fused: torch child {method} fused={fused} failed:\n{done.stderr}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


# ------------------------------------------------------------------ report

def mib(b) -> str:
    return f"{b / 2**20:.2f}"


def numpy_table(df: pd.DataFrame) -> list[str]:
    lines = ["| dtype | strategy | forward steps | unfused measured MiB | unfused predicted MiB | error "
             "| fused measured MiB | fused predicted MiB | error | fused − unfused (measured) MiB "
             "| predicted activations MiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (dtype, strategy), g in df.groupby(["dtype", "strategy"], sort=False):
        u, f = g[~g.fused].iloc[0], g[g.fused].iloc[0]
        lines.append(f"| {dtype} | {strategy} | {u.forward_steps} | {mib(u.measured_peak_bytes)} | "
                     f"{mib(u.predicted_peak_bytes)} | {u.error:+.2%} | {mib(f.measured_peak_bytes)} | "
                     f"{mib(f.predicted_peak_bytes)} | {f.error:+.2%} | "
                     f"{mib(f.measured_peak_bytes - u.measured_peak_bytes)} | {mib(f.predicted_activation_bytes)} |")
    return lines


def torch_table(df: pd.DataFrame) -> list[str]:
    lines = ["| dtype | method | unfused MiB (spread) | fused MiB (spread) | fused − unfused MiB | all gradients MiB |",
             "|---|---|---:|---:|---:|---:|"]
    for (dtype, method), g in df.groupby(["dtype", "strategy"], sort=False):
        u, f = g[~g.fused].iloc[0], g[g.fused].iloc[0]
        lines.append(f"| {dtype} | {method} | {mib(u.measured_peak_bytes)} ({mib(u.measured_spread_bytes)}) | "
                     f"{mib(f.measured_peak_bytes)} ({mib(f.measured_spread_bytes)}) | "
                     f"{mib(f.measured_peak_bytes - u.measured_peak_bytes)} | {mib(u.grad_bytes)} |")
    return lines


def write_report(out: str, numpy_df, torch_df, args, seconds: float) -> None:
    os.makedirs(out, exist_ok=True)
    frames = [d for d in (numpy_df, torch_df) if d is not None]
    pd.concat(frames, ignore_index=True).to_csv(os.path.join(out, "results.csv"), index=False)
    load = os.getloadavg()
    text = [f"# Fused optimizer step: peaks with and without it",
            "",
            f"Produced by `python scripts/check_fused.py --out {out}` ({seconds:.0f} s) on {platform.node()!r}, "
            f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, numpy {np.__version__}; "
            f"load average at the end {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} "
            f"(a 2-core machine shared with other jobs). Model: {args.depth} Dense+ReLU stages of width "
            f"{args.width}, batch {args.batch}, MSE loss, SGD. Raw rows: `results.csv`.",
            ""]
    if numpy_df is not None:
        text += ["## numpy engine: measured (tracemalloc) vs predicted (ckpt.predict_memory)", "",
                 "The step's peak above its start (parameters, inputs and optimizer state are resident "
                 "before it). Unfused, every strategy's peak holds all gradients; fused, each stage's "
                 "gradient is applied and released right after its backward, so the peaks differ by what "
                 "each strategy keeps of the activations.", ""] + numpy_table(numpy_df) + [""]
    if torch_df is not None:
        text += ["## torch CPU: measured (RSS, `rss_max`), plain autograd and the ckpt wrapper", "",
                 "Median of 3 steps after a warm-up, each configuration in a fresh process with "
                 "`MALLOC_MMAP_THRESHOLD_=32768`, 1 thread; spread = max − min of the 3. Fused = "
                 "`ckpt.torch.fused.fuse_optimizer(params, torch.optim.SGD)`; unfused = `backward()` "
                 "then `SGD.step()` (gradients set to None after it). RSS also counts allocator slack; "
                 "there is no memory model for torch rows here. The ckpt wrapper rows show no saving: "
                 "its backend differentiates each stage with `torch.autograd.grad` inside one "
                 "`autograd.Function` and hands every parameter gradient to autograd only when that "
                 "Function's backward returns, so every post-accumulate-grad hook fires at the end "
                 "(all gradients alive at once). The fused updates are still correct there "
                 "(`tests/test_fused.py`).", ""] + torch_table(torch_df) + [""]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(text))


def main() -> None:
    """Measure, print and write reports/fused (README.md, results.csv)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=64)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dtype", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    p.add_argument("--part", choices=["numpy", "torch", "all"], default="all")
    p.add_argument("--out", default="reports/fused")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(torch_child(*json.loads(args.child))))
        return
    t0 = time.perf_counter()
    numpy_df = torch_df = None
    if args.part in ("numpy", "all"):
        numpy_df = pd.DataFrame([r for d in args.dtype for r in numpy_rows(args.depth, args.width, args.batch, d)])
        print("\n".join(numpy_table(numpy_df)))
    if args.part in ("torch", "all"):
        torch_df = pd.DataFrame([r for d in args.dtype for r in torch_rows(args.depth, args.width, args.batch, d)])
        print("\n".join(torch_table(torch_df)))
    write_report(args.out, numpy_df, torch_df, args, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
