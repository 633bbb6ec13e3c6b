"""Benchmark the torch wrappers against plain torch and torch's checkpoint_sequential, side by side.

    python scripts/bench_torch.py --device cpu            # writes reports/torch_cpu/
    python scripts/bench_torch.py --device cuda           # writes reports/torch_gpu/ (scripts/gpu_torch.sh)

Per workload, every method runs on the same modules (same parameters), in
interleaved rounds (plain, torch, ours, …, then again), so drift in a shared
machine's speed hits all methods alike; each time is the median of the rounds
after warm-up.  Methods too slow for every round (recompute on deep chains) are
timed after the rounds, so that they do not disturb them.  A plain training
forward (graph recorded, no backward) is timed in the same rounds: "overhead /
recomputed forward time" is (step − plain step) / (recomputed forward steps / n
× that forward).  Ours run as users run them, without byte counting
(``track_memory=False``); a second instance with it on gives the saved bytes.

Built on ``profiling``: each workload is measured in a fresh child process started by the
runner (it dies with this process; ``--timeout`` bounds it), its steps timed by
``profiling.timers`` (CUDA-synchronised), CUDA peaks read by the cuda meter, plain torch's
saved bytes counted by the saved-tensor counter the sweeps use, and the machine described
by ``profiling.environment``.  It drives ckpt's public API only
(``ckpt.CheckpointedSequential(stages, strategy)``, ``track_memory=True`` for saved bytes).

On CPU each child runs by default with glibc's defaults, as a user's process does (the
headline).  ``--malloc tuned`` tells glibc to keep freed memory (``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_MMAP_THRESHOLD_``), as CUDA's caching allocator does: otherwise a step's fresh
allocations fault in from the kernel again (60 000 page faults per plain step on the MLP) by
an amount that depends on which method ran before, and times swing by 10–25%.  Each time is
reported as the median with the min–max of its rounds, and each workload with the load average
before and after it.  Memory (each figure says what produced it):

* ``peak_alloc`` (measured): peak bytes allocated above the resting state during one step
  (CPU: the profiler's allocator events; CUDA: ``max_memory_allocated``).
* ``saved`` (counted): bytes saved for backward at the peak (each storage once, the input,
  parameters and gradients left out).  Plain torch: its forward's saved tensors
  (``ckpt.saved_residuals``); ours: the executor's ledger of checkpoints + tapes.
  torch's ``checkpoint_sequential`` hides its saves behind its own saved-tensor
  hooks, so no outer hook can count them: its column is blank.
* ``held`` (measured): bytes the training forward allocated and still holds when it
  returns, its output left out — what each method keeps for its backward,
  measured from the allocator, so torch's checkpoint is counted too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path

import torch
from torch import nn
import torch.utils.checkpoint as tuc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ckpt  # noqa: E402
from profiling.environment import machine_details  # noqa: E402
from profiling.meters import CudaMeter  # noqa: E402
from profiling.runner import child_env, emit, run_child  # noqa: E402
from profiling.timers import synchronize, time_call  # noqa: E402
from profiling.workloads import he_linear, saved_tensor_counter  # noqa: E402

MiB = 2 ** 20
FORWARD = "plain_forward"      # timed in the same rounds: the unit of recomputation
KEEP_FREED = ("MALLOC_TRIM_THRESHOLD_", str(2 ** 40))    # glibc never returns freed heap to the kernel
KEEP_HEAP = ("MALLOC_MMAP_THRESHOLD_", str(2 ** 25))     # blocks up to 32 MiB (its maximum) from the heap


# ------------------------------------------------------------------ workloads

def mlp(depth, width, batch, device, dtype=torch.float32):
    """Linear+ReLU blocks (ReLU in place, He init), one block per stage."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(he_linear(torch, width), nn.ReLU(inplace=True))
                            for _ in range(depth)]).to(device, dtype)
    return model, torch.randn(batch, width, device=device, dtype=dtype)


def transformer(blocks, d, heads, ff, batch, seq, device, dtype=torch.float32):
    """Post-norm transformer encoder blocks (dropout off), one block per stage."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=True)
                            for _ in range(blocks)]).to(device, dtype)
    return model, torch.randn(batch, seq, d, device=device, dtype=dtype)


WORKLOADS = {
    "cpu": {
        "mlp_d256_w512_b128": lambda dev: mlp(256, 512, 128, dev),
        "mlp_d256_w64_b8_overhead_bound": lambda dev: mlp(256, 64, 8, dev),
        "transformer_12x_d256_s128_b8": lambda dev: transformer(12, 256, 4, 1024, 8, 128, dev),
    },
    "cuda": {
        "mlp_d1024_w1024_b256": lambda dev: mlp(1024, 1024, 256, dev),
        "mlp_d128_w4096_b1024": lambda dev: mlp(128, 4096, 1024, dev),
        "transformer_12x_d1024_s512_b16": lambda dev: transformer(12, 1024, 16, 4096, 16, 512, dev),
    },
}


# ------------------------------------------------------------------ methods

def methods(model, n):
    """name → (function x ↦ output, forward steps), and ours with byte counting; all share ``model``'s modules."""
    k = math.ceil(math.sqrt(n))
    strategies = ("store_all", "sqrt_n", "recompute")
    ours = {s: ckpt.CheckpointedSequential(model, s) for s in strategies}
    counting = {s: ckpt.CheckpointedSequential(model, s, track_memory=True) for s in strategies}
    return {
        "plain": (model, n),
        "torch_checkpoint_sequential": (
            lambda x: tuc.checkpoint_sequential(model, k, x, use_reentrant=False),
            n + (n // k) * (k - 1)),
        **{f"ours_{s}": (m, ckpt.make_schedule(s, n).forward_steps) for s, m in ours.items()},
    }, counting


def step(fn, model, x):
    """One training step: forward, a scalar loss, backward (gradients set to None first)."""
    for p in model.parameters():
        p.grad = None
    out = fn(x)
    out.float().square().mean().backward()


def time_rounds(fns, model, x, device, rounds, warmup, slow_rounds, slow):
    """Median step time per method: interleaved rounds for most, then ``slow`` ones on their own."""
    times = {name: [] for name in fns}
    fast = [name for name in fns if name not in slow]
    for r in range(warmup + rounds):
        for name in (fast if r % 2 == 0 else fast[::-1]):
            elapsed = time_one(fns[name], model, x, device)
            if r >= warmup:
                times[name].append(elapsed)
    for name in slow:
        time_one(fns[name], model, x, device)            # its warm-up
        times[name] = [time_one(fns[name], model, x, device) for _ in range(slow_rounds)]
    return {name: (statistics.median(ts), len(ts), min(ts), max(ts)) for name, ts in times.items()}


def time_one(fn, model, x, device) -> float:
    """Seconds for one training step of ``fn`` (None: a plain training forward, no backward)."""
    if fn is None:                       # the graph is recorded, as in a training step, then dropped
        return time_call(lambda: model(x), device)
    return time_call(lambda: step(fn, model, x), device)


def peak_alloc(fn, model, x, device):
    """Peak bytes allocated above the resting state during one step."""
    for p in model.parameters():
        p.grad = None
    if device == "cuda":
        with CudaMeter() as meter:
            step(fn, model, x)
        return meter.figures["cuda_allocated"]
    events = cpu_memory_events(lambda: step(fn, model, x))
    live = peak = 0
    for nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def cpu_memory_events(run) -> list[int]:
    """Signed bytes of every CPU allocation (+) and free (−) during ``run()``, in time order."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    return [n for _, n in sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                                 if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)]


def held_after_forward(fn, model, x, device):
    """Bytes a training forward allocates and still holds when it returns, its output left out.

    What the method keeps for backward, measured from the allocator — so it also
    counts torch's checkpoint, whose saves no outer saved-tensor hook can see.
    """
    for p in model.parameters():
        p.grad = None
    outs = []
    if device == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated()
        outs.append(fn(x))
        synchronize(device)
        held = torch.cuda.memory_allocated() - before
    else:
        held = sum(cpu_memory_events(lambda: outs.append(fn(x))))
    held -= outs[0].untyped_storage().nbytes()
    del outs
    return held


def plain_saved(model, x):
    """Bytes plain torch saves for backward (each storage once; the input and parameters left out)."""
    hooks, totals = saved_tensor_counter()
    totals["exclude"] = {p.untyped_storage().data_ptr() for p in model.parameters()} | {x.untyped_storage().data_ptr()}
    with hooks:
        out = model(x)
    del out
    return totals["bytes"]


# ------------------------------------------------------------------ run and report

def bench_workload(wname, device, rounds, warmup, slow_rounds, skip=()):
    """Rows of one workload, every method (in this process: the child of ``bench``)."""
    rows, load_before = [], os.getloadavg()[0]
    model, x = WORKLOADS[device][wname](device)
    n = len(model)
    fns, counting = methods(model, n)
    for name in skip:
        fns.pop(name, None)
    slow = ({"ours_recompute"} if n > 64 else set()) & set(fns)
    after = f" ({slow_rounds} for {sorted(slow)}, after them)" if slow else ""
    print(f"[{wname}] n={n}, timing {rounds} rounds{after}", file=sys.stderr, flush=True)
    times = time_rounds({FORWARD: None, **{k: v[0] for k, v in fns.items()}}, model, x, device,
                        rounds, warmup, slow_rounds, slow)
    t_fwd = times.pop(FORWARD)[0]
    saved = {"plain": plain_saved(model, x)}
    for name, (fn, steps) in fns.items():
        mem = None if name in slow else peak_alloc(fn, model, x, device)
        held = held_after_forward(fn, model, x, device)
        if name.startswith("ours_"):
            ours = counting[name.removeprefix("ours_")]
            step(ours, model, x)
            saved[name] = ours.last_stats.peak_saved_bytes
        rows.append(dict(workload=wname, n=n, method=name, forward_steps=steps,
                         time_s=times[name][0], rounds=times[name][1], time_min_s=times[name][2],
                         time_max_s=times[name][3], peak_alloc_bytes=mem,
                         saved_bytes=saved.get(name), held_bytes=held, plain_forward_s=t_fwd))
        print(f"  {name:30s} {times[name][0]:8.4f} s  peak {(mem or 0) / MiB:9.1f} MiB",
              file=sys.stderr, flush=True)
    load_after = os.getloadavg()[0]
    return [{**r, "load_before": load_before, "load_after": load_after} for r in rows]


def bench(args) -> tuple[list[dict], dict]:
    """(rows, the first child's machine details): each workload in a fresh child process."""
    rows, machine = [], None
    tuned = args.device == "cpu" and args.malloc == "tuned"
    env = child_env(dict([KEEP_FREED, KEEP_HEAP]) if tuned else {}, threads=None)
    if not tuned and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        env.pop("MALLOC_MMAP_THRESHOLD_")             # glibc's defaults: what a user's process gets
    for wname in WORKLOADS[args.device]:
        if args.only and args.only not in wname:
            continue
        cmd = [sys.executable, __file__, "--child", wname, "--device", args.device, "--rounds", str(args.rounds),
               "--warmup", str(args.warmup), "--slow-rounds", str(args.slow_rounds), "--skip", *args.skip]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        print(f"[{wname}] measuring in a fresh process …", flush=True)
        result = run_child(cmd, env, args.timeout, show_stderr=True)
        if "rows" not in result:
            raise SystemExit(f"bench_torch: {wname} ended without a result ({result['status']}: {result['error']})")
        rows += result["rows"]
        machine = machine or {**result["machine"], "malloc": result["malloc"]}
    return rows, machine


def derive(rows):
    """Ratios per workload: to plain, sqrt_n to torch, sqrt_n overhead vs its recomputed forwards."""
    import pandas as pd
    df = pd.DataFrame(rows)
    out = []
    for w, g in df.groupby("workload", sort=False):
        g = g.set_index("method")
        plain, n, t_fwd = g.loc["plain", "time_s"], g.loc["plain", "n"], g.loc["plain", "plain_forward_s"]
        g["vs_plain"] = g["time_s"] / plain
        g["extra_us_per_stage"] = (g["time_s"] - plain) / n * 1e6
        g["recomputed_steps"] = g["forward_steps"] - n
        g["overhead_per_recomputed_forward"] = ((g["time_s"] - plain)
                                                / (g["recomputed_steps"] / n * t_fwd)).where(g["recomputed_steps"] > 0)
        g["sqrt_n_vs_torch"] = None
        g.loc["ours_sqrt_n", "sqrt_n_vs_torch"] = (g.loc["ours_sqrt_n", "time_s"]
                                                    / g.loc["torch_checkpoint_sequential", "time_s"])
        out.append(g.reset_index())
    return pd.concat(out)


MEMORY_NOTE = {
    "cpu": "Memory figures: *peak allocated* and *held after forward* are measured from torch's CPU allocator "
           "(the profiler's memory events, `profile_memory=True`); *saved for backward* is counted: plain torch's "
           "saved tensors by the saved-tensor hooks (`profiling.workloads.saved_tensor_counter`), ours by the "
           "executor's ledger of checkpoints and tapes (`track_memory=True`); torch's checkpoint hides its saves "
           "from outer hooks (—).",
    "cuda": "Memory figures: *peak allocated* and *held after forward* are measured by torch.cuda "
            "(`max_memory_allocated` through `profiling.meters.CudaMeter`, `memory_allocated`); *saved for "
            "backward* is counted: plain torch's saved tensors by the saved-tensor hooks, ours by the executor's "
            "ledger (`track_memory=True`); torch's checkpoint hides its saves from outer hooks (—).",
}


def markdown(df, device, command, machine) -> str:
    lines = [f"# Torch checkpointing benchmark ({device})", "",
             f"Reproduce: `{command}`", "",
             f"torch {machine['torch']}, {machine['torch_threads']} threads, {machine['cpu']}"
             + (f", {', '.join(machine['gpus'])}" if device == "cuda" else "") + ". "
             "Each workload ran in its own fresh process. "
             "Step times are medians of interleaved rounds after warm-up, [min–max] of the rounds and their "
             "count in brackets (recompute on deep chains is timed after the rounds); ratios come from the "
             "same run. glibc: "
             + (", ".join(f"{k}={v}" for k, v in machine["malloc"].items()) or "defaults (no MALLOC_* variables)")
             + ".", "", MEMORY_NOTE[device], ""]
    for w, g in df.groupby("workload", sort=False):
        t_fwd = g["plain_forward_s"].iloc[0]
        lines += [f"## {w} (n = {g['n'].iloc[0]} stages; plain training forward {t_fwd:.4f} s)", "",
                  f"Load average (1 min) {g['load_before'].iloc[0]:.2f} before, {g['load_after'].iloc[0]:.2f} after "
                  f"({machine['logical_cpus']} logical CPUs).", "",
                  "| method | forward steps | step time (s) median [min–max] (rounds) | × plain | µs per stage over plain "
                  "| overhead / recomputed forward time "
                  "| peak allocated (MiB, measured) | saved for backward at peak (MiB, counted) "
                  "| held after forward (MiB, measured) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for _, r in g.iterrows():
            over = "" if r["overhead_per_recomputed_forward"] != r["overhead_per_recomputed_forward"] \
                else f"{r['overhead_per_recomputed_forward']:.2f}"
            peak = "—" if r["peak_alloc_bytes"] != r["peak_alloc_bytes"] or r["peak_alloc_bytes"] is None \
                else f"{r['peak_alloc_bytes'] / MiB:.1f}"
            saved = "—" if r["saved_bytes"] is None or r["saved_bytes"] != r["saved_bytes"] \
                else f"{r['saved_bytes'] / MiB:.1f}"
            lines.append(f"| {r['method']} | {r['forward_steps']} | {r['time_s']:.4f} "
                         f"[{r['time_min_s']:.4f}–{r['time_max_s']:.4f}] ({r['rounds']}) "
                         f"| {r['vs_plain']:.3f} | {r['extra_us_per_stage']:.1f} | {over} | {peak} | {saved} "
                         f"| {r['held_bytes'] / MiB:.1f} |")
        s = g.set_index("method")
        lines += ["", f"ours_sqrt_n / torch_checkpoint_sequential time: "
                      f"**{s.loc['ours_sqrt_n', 'sqrt_n_vs_torch']:.3f}**; "
                      f"ours_store_all / plain time: **{s.loc['ours_store_all', 'vs_plain']:.3f}**; "
                      f"store_all saved = plain saved: **{s.loc['ours_store_all', 'saved_bytes'] == s.loc['plain', 'saved_bytes']}**; "
                      f"ours_sqrt_n peak allocated / torch's: "
                      f"**{s.loc['ours_sqrt_n', 'peak_alloc_bytes'] / s.loc['torch_checkpoint_sequential', 'peak_alloc_bytes']:.3f}**; "
                      f"ours_sqrt_n held after forward / torch's: "
                      f"**{s.loc['ours_sqrt_n', 'held_bytes'] / s.loc['torch_checkpoint_sequential', 'held_bytes']:.3f}**", ""]
    return "\n".join(lines)


def child_main(args) -> int:
    """In a fresh process: one workload's rows, the machine, the allocator settings, as one emitted row."""
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = bench_workload(args.child, args.device, args.rounds, args.warmup, args.slow_rounds, args.skip)
    malloc = {k: os.environ[k] for k, _ in (KEEP_FREED, KEEP_HEAP) if k in os.environ}
    emit({"rows": json.loads(json.dumps(rows, default=float)), "machine": machine_details(args.threads),
          "malloc": malloc})
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--rounds", type=int, default=11, help="timed rounds per method (median)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--slow-rounds", type=int, default=3, help="timed rounds of recompute on deep chains")
    ap.add_argument("--only", default=None, help="run only workloads whose name contains this")
    ap.add_argument("--skip", nargs="*", default=[], help="methods to leave out, e.g. ours_recompute")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", default=None, help="report folder (default reports/torch_<cpu|gpu>)")
    ap.add_argument("--malloc", choices=["system", "tuned"], default="system",
                    help="CPU: glibc's defaults, as users run (default), or tuned to keep freed memory "
                         "as CUDA's caching allocator does (fewer page faults, steadier times)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds before a workload's process is killed")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_torch: --device cuda needs a CUDA GPU, none is visible; run with --device cpu")
    out = Path(args.out or f"reports/torch_{'gpu' if args.device == 'cuda' else 'cpu'}")
    out.mkdir(parents=True, exist_ok=True)
    rows, machine = bench(args)
    df = derive(rows)
    df.to_csv(out / "results.csv", index=False)
    command = "python scripts/bench_torch.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (out / "README.md").write_text(markdown(df, args.device, command.strip(), machine) + "\n")
    print(f"wrote {out / 'results.csv'} and {out / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
