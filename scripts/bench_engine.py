"""Engine benchmark (issue 3): the numpy engine against torch on CPU, and each strategy against store_all.

Built on ``profiling``: each measurement runs in a fresh child started by the runner (it dies
with this process, a timeout bounds it), timed by ``profiling.timers``, its peaks taken by the
tracemalloc meter and its machine described by ``profiling.environment``.

For one MLP (default depth 32, width 1024, batch 256, float32, ReLU, MSE) it measures, in one
process per OpenBLAS setting:

* the step time (forward + backward, all parameter gradients and δ_0) of ``ckpt.gradients``
  with store_all, and of the same network as a torch ``nn.Sequential`` (same weights, loss
  ½‖a − y‖²/B like ckpt's MSE, input with ``requires_grad`` so torch also computes δ_0);
  numpy and torch repeats are interleaved round by round so machine noise hits both;
* each strategy's step time, its tracemalloc peak over one step (inputs and parameters
  allocated before) and the engine's predicted peak (``ckpt.predict_memory``), with ratios
  against store_all;
* one GEMM of the network's shape in each library, which explains most of the ratio.

numpy (OpenBLAS) and torch (intra-op threads) get the same number of threads; ``--threads 1 2``
measures each count in its own processes.  On a machine shared with other jobs one thread each
gives the steadier ratio: a BLAS call split over 2 threads waits for the slower one whenever
another job holds a core.

Environments set OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE on some processors (older OpenBLAS
builds misbehave there); they pin a current OpenBLAS to an older kernel.  ``--openblas-env``
runs the measurement with them as set, with both unset (for the measuring process alone), or
both, one fresh process each, and records which kernel OpenBLAS then runs.

    python scripts/bench_engine.py                    # both settings → reports/engine_benchmark/
    python scripts/bench_engine.py --openblas-env as-set --repeats 5 --out /tmp/bench
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from profiling.environment import machine_details  # noqa: E402
from profiling.meters import TracemallocMeter  # noqa: E402
from profiling.runner import child_env, emit, run_child  # noqa: E402
from profiling.timers import quartiles, time_call  # noqa: E402

STRATEGIES = ("store_all", "recompute", "sqrt_n")
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


# ------------------------------------------------------------------ measuring (child process)

def torch_twin(model, torch):
    """nn.Sequential(Linear, ReLU, …, Linear) holding copies of the numpy model's weights."""
    layers = []
    for k, stage in enumerate(model.stages):
        lin = torch.nn.Linear(stage.W.shape[1], stage.W.shape[0], dtype=getattr(torch, model.dtype.name))
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(stage.W))
            lin.bias.copy_(torch.from_numpy(stage.b))
        layers.append(lin)
        if stage.act.name != "identity":
            layers.append({"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid}[stage.act.name]())
    return torch.nn.Sequential(*layers)


def measure(args) -> dict:
    """Everything for one process: timings, peaks, predictions, machine facts."""
    import numpy as np
    import torch

    import ckpt

    threads = args.threads
    torch.set_num_threads(threads)

    D, W, B = args.depth, args.width, args.batch
    model = ckpt.MLP([W] * (D + 1), activation="relu", loss="mse", dtype=args.dtype, seed=0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, W)).astype(args.dtype)
    y = rng.standard_normal((B, W)).astype(args.dtype)

    net = torch_twin(model, torch)
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = torch.from_numpy(y)

    def torch_step():
        net.zero_grad(set_to_none=True)
        tx.grad = None
        loss = 0.5 * ((net(tx) - ty) ** 2).sum() / B
        loss.backward()
        return loss

    # the two engines compute the same thing
    r = ckpt.gradients(model, x, y, "store_all")
    tl = torch_step()
    lin = [m for m in net if isinstance(m, torch.nn.Linear)]
    grad_err = max(float(np.abs(g["W"] - l.weight.grad.numpy()).max() / np.abs(l.weight.grad.numpy()).max())
                   for g, l in zip(r.grads, lin))
    agreement = {"loss_numpy": r.loss, "loss_torch": float(tl.detach()), "max_rel_grad_diff": grad_err,
                 "max_rel_dx_diff": float(np.abs(r.dx - tx.grad.numpy()).max() / np.abs(tx.grad.numpy()).max())}
    del r, tl

    runners = {f"numpy {s}": (lambda s=s: ckpt.gradients(model, x, y, s)) for s in args.strategies}
    runners["torch store_all"] = torch_step
    names = list(runners)
    for _ in range(args.warmup):
        for name in names:
            runners[name]()
    times = {name: [] for name in names}
    load_before = os.getloadavg()
    for rep in range(args.repeats):
        k = rep % len(names)                      # rotate the order so no runner always goes first
        for name in names[k:] + names[:k]:
            times[name].append(time_call(runners[name]))
    load_after = os.getloadavg()

    # one GEMM of the network's shape, (B×W)·(W×W)ᵀ, in each library
    Wm = model.stages[0].W
    tW = torch.from_numpy(Wm)
    gemm = {"numpy": [], "torch": []}
    for _ in range(3):
        x @ Wm.T
        tx.detach() @ tW.T
    for _ in range(max(20, args.repeats)):
        gemm["numpy"].append(time_call(lambda: x @ Wm.T))
        gemm["torch"].append(time_call(lambda: tx.detach() @ tW.T))

    # ReLU's backward δz = δx ⊙ [x > 0] as ckpt.layers writes it (δ *= sign(x)) and as a masked copy
    # (np.copyto(δ, 0, where=x <= 0), its form before 2026-11-23), on one layer's activation
    act = np.maximum(x @ Wm.T, 0)
    relu = {"sign multiply": [], "masked copy": []}
    for _ in range(max(30, args.repeats)):
        d = y.copy()
        relu["sign multiply"].append(time_call(lambda: np.multiply(d, np.sign(act), out=d)))
        d = y.copy()
        relu["masked copy"].append(time_call(lambda: np.copyto(d, 0, where=act <= 0)))

    # tracemalloc peaks, one step each, timing done (tracemalloc slows allocation)
    # (schedule and backend built before, as in tests/test_memory_model.py)
    peaks, stats = {}, {}
    for s in args.strategies:
        schedule, backend = ckpt.make_schedule(s, D), ckpt.NumpyBackend(model)
        ckpt.execute(schedule, backend, x, y)
        with TracemallocMeter() as meter:
            res = ckpt.execute(schedule, backend, x, y)
        peaks[s] = meter.figures["tracemalloc_peak"]
        stats[s] = res.stats
        del res
    predicted = {s: ckpt.predict_memory(model, s, batch=B) for s in args.strategies}

    paired = [a / b for a, b in zip(times["numpy store_all"], times["torch store_all"])]
    return {
        "config": {"depth": D, "width": W, "batch": B, "dtype": args.dtype, "activation": "relu", "loss": "mse",
                   "repeats": args.repeats, "warmup": args.warmup, "threads": threads},
        "openblas_env": {v: os.environ.get(v) for v in OPENBLAS_VARS},
        "times": {k: quartiles(v) for k, v in times.items()},
        "raw_times": times,
        "paired_ratio_numpy_over_torch": quartiles(paired),
        "gemm": {k: quartiles(v) for k, v in gemm.items()},
        "relu_backward": {k: quartiles(v) for k, v in relu.items()},
        "peaks": peaks,
        "predicted": {s: {"peak_bytes": p.peak_bytes, "forward_steps": p.forward_steps,
                          "peak_activation_bytes": p.peak_activation_bytes, "peak_saved_bytes": p.peak_saved_bytes,
                          "peak_breakdown": p.peak_breakdown} for s, p in predicted.items()},
        "numpy_ledger": {s: {"peak_bytes": st.peak_bytes, "peak_activation_bytes": st.peak_activation_bytes,
                             "peak_saved_bytes": st.peak_saved_bytes} for s, st in stats.items()},
        "agreement": agreement,
        "load_avg_before": load_before, "load_avg_after": load_after,
        "machine": machine_details(threads),
    }


# ------------------------------------------------------------------ driving and reporting

def measure_in_child(args, setting: str, threads: int) -> dict:
    """One fresh process (profiling's runner); ``unset`` removes both OpenBLAS variables from its environment only."""
    env = child_env(threads=threads)              # BLAS/OpenMP threads set before numpy / torch load
    if setting == "unset":
        for v in OPENBLAS_VARS:
            env.pop(v, None)
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:   # the sweeps' RSS setting would add page faults to each step
        env.pop("MALLOC_MMAP_THRESHOLD_")
    cmd = [sys.executable, __file__, "--child", "--depth", str(args.depth), "--width", str(args.width),
           "--batch", str(args.batch), "--dtype", args.dtype, "--repeats", str(args.repeats),
           "--warmup", str(args.warmup), "--threads", str(threads), "--strategies", *args.strategies]
    print(f"[bench] OpenBLAS variables {setting}, {threads} thread(s): running …", file=sys.stderr, flush=True)
    result = run_child(cmd, env, args.timeout, show_stderr=True)
    if "status" in result:                        # the child died, hung or raised: no numbers
        raise SystemExit(f"bench_engine: the measuring process ended without a result ({result['status']}: "
                         f"{result['error']})")
    result["setting"] = setting
    return result


def kernel_of(result) -> str:
    libs = [lib for lib in result["machine"]["blas_runtime"]["libraries"] if lib.get("internal_api") == "openblas"]
    if not libs:
        return "? (threadpoolctl not installed)"
    return libs[0].get("architecture") or "?"


def mib(b) -> str:
    return f"{b / 2**20:.1f}"


def ms(s) -> str:
    return f"{s * 1e3:.0f}"


def rows_of(result) -> list[dict]:
    """Tidy rows for results.csv: one per (setting, engine, strategy)."""
    t, rows = result["times"], []
    base = t["numpy store_all"]["median"]
    torch_med = t["torch store_all"]["median"]
    for name, q in t.items():
        engine, strategy = name.split()
        row = {"openblas_env": result["setting"], "openblas_kernel": kernel_of(result), "engine": engine,
               "strategy": strategy, **{k: result["config"][k] for k in ("depth", "width", "batch", "dtype", "threads")},
               "median_s": q["median"], "q25_s": q["q25"], "q75_s": q["q75"], "min_s": q["min"], "repeats": q["n"],
               "time_vs_numpy_store_all": q["median"] / base, "time_vs_torch": q["median"] / torch_med,
               "tracemalloc_peak_bytes": "", "predicted_peak_bytes": "", "peak_vs_store_all": "",
               "prediction_error": "", "predicted_activation_peak_bytes": "", "predicted_saved_peak_bytes": "",
               "forward_steps": ""}
        if engine == "numpy":
            peak, pred = result["peaks"][strategy], result["predicted"][strategy]
            row.update(tracemalloc_peak_bytes=peak, predicted_peak_bytes=pred["peak_bytes"],
                       peak_vs_store_all=peak / result["peaks"]["store_all"],
                       prediction_error=peak / pred["peak_bytes"] - 1,
                       predicted_activation_peak_bytes=pred["peak_activation_bytes"],
                       predicted_saved_peak_bytes=pred["peak_saved_bytes"], forward_steps=pred["forward_steps"])
        rows.append(row)
    return rows


def table(result) -> str:
    t = result["times"]
    base_t, base_p = t["numpy store_all"]["median"], result["peaks"]["store_all"]
    base_a = result["predicted"]["store_all"]["peak_activation_bytes"]
    lines = ["| engine | strategy | step time, median ms (IQR) | time vs numpy store_all | "
             "peak MiB (measured: tracemalloc) | peak MiB (predicted: memory model) | peak vs store_all (measured) | "
             "peak less gradients MiB (predicted; vs store_all) | saved MiB (predicted) | forward steps (counted) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in result["peaks"]:
        q = t[f"numpy {s}"]
        pred = result["predicted"][s]
        lines.append(f"| numpy | {s} | {ms(q['median'])} ({ms(q['q25'])}–{ms(q['q75'])}) | "
                     f"{q['median'] / base_t:.2f}× | {mib(result['peaks'][s])} | {mib(pred['peak_bytes'])} | "
                     f"{result['peaks'][s] / base_p:.2f}× | {mib(pred['peak_activation_bytes'])} "
                     f"({pred['peak_activation_bytes'] / base_a:.2f}×) | {mib(pred['peak_saved_bytes'])} | "
                     f"{pred['forward_steps']} |")
    q = t["torch store_all"]
    lines.append(f"| torch | autograd (stores all) | {ms(q['median'])} ({ms(q['q25'])}–{ms(q['q75'])}) | "
                 f"{q['median'] / base_t:.2f}× | — | — | — | — | — | {result['config']['depth']} |")
    return "\n".join(lines)


def ratio_line(result) -> str:
    t = result["times"]
    r = t["numpy store_all"]["median"] / t["torch store_all"]["median"]
    p = result["paired_ratio_numpy_over_torch"]
    g = result["gemm"]
    return (f"numpy store_all / torch = **{r:.2f}** (ratio of medians); per-round paired ratio median "
            f"{p['median']:.2f}, IQR {p['q25']:.2f}–{p['q75']:.2f}. One GEMM (B×W)·(W×W)ᵀ: numpy "
            f"{g['numpy']['median'] * 1e3:.2f} ms, torch {g['torch']['median'] * 1e3:.2f} ms. "
            f"Target numpy/torch ≤ 1.15: **{'met' if r <= 1.15 else 'not met'}** (ratio of medians).")


def relu_line(result) -> str:
    q = result["relu_backward"]
    new, old = q["sign multiply"]["median"], q["masked copy"]["median"]
    return (f"ReLU backward on one {result['config']['batch']}×{result['config']['width']} layer: "
            f"`δ *= sign(x)` (ckpt.layers now) {new * 1e3:.3f} ms vs the masked copy "
            f"`np.copyto(δ, 0, where=x <= 0)` (before) {old * 1e3:.3f} ms, "
            f"{old / new:.0f}× faster; × {result['config']['depth']} layers ≈ "
            f"{(old - new) * result['config']['depth'] * 1e3:.0f} ms less per step.")


def write_report(args, results: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = [row for r in results for row in rows_of(r)]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(out / "timings.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["openblas_env", "threads", "runner", "repeat", "seconds"])
        for r in results:
            for name, ts in r["raw_times"].items():
                w.writerows([r["setting"], r["config"]["threads"], name, i, t] for i, t in enumerate(ts))

    m = results[0]["machine"]
    c = results[0]["config"]
    cmd = ("python scripts/bench_engine.py" + "".join(
        f" --{k} {v}" for k, v in (("depth", c["depth"]), ("width", c["width"]), ("batch", c["batch"]),
                                   ("dtype", c["dtype"]), ("repeats", c["repeats"])))
           + " --threads " + " ".join(str(t) for t in args.threads) + f" --openblas-env {args.openblas_env} --out {args.out}")
    text = [f"# Engine benchmark (issue 3)",
            "",
            f"One MLP: depth {c['depth']} (Dense {c['width']}→{c['width']} + ReLU, last Dense without), "
            f"batch {c['batch']}, {c['dtype']}, MSE loss ½‖a − y‖²/B. A step is forward + backward with every "
            f"parameter gradient and δ_0 (torch's input has `requires_grad`, so it computes δ_0 too). "
            f"Times are medians of {c['repeats']} repeats after {c['warmup']} warm-up rounds, the runners "
            f"interleaved round by round (order rotated) in one process so machine noise hits all of them; "
            f"IQR in brackets. Peaks are tracemalloc's over one step, inputs and parameters allocated before "
            f"(exact for numpy), beside `ckpt.predict_memory`.",
            "",
            "Reproduce (about 3 min on 2 idle cores; much longer on a busy machine):",
            "",
            f"    {cmd}",
            ""]
    for r in results:
        env = ", ".join(f"{k}={v}" for k, v in r["openblas_env"].items() if v) or "both unset"
        title = {"unset": "OpenBLAS variables unset for the benchmark process",
                 "as-set": "OpenBLAS variables as this environment sets them"}[r["setting"]]
        title += f", {r['config']['threads']} thread(s) each"
        a = r["agreement"]
        text += [f"## {title}",
                 "",
                 f"Environment: {env}; OpenBLAS kernel in use: **{kernel_of(r)}**. "
                 f"Load average 1 min: {r['load_avg_before'][0]:.2f} before, {r['load_avg_after'][0]:.2f} after.",
                 "",
                 table(r),
                 "",
                 ratio_line(r),
                 "",
                 f"Agreement numpy vs torch: loss {a['loss_numpy']:.6g} vs {a['loss_torch']:.6g}; max relative "
                 f"difference of W gradients {a['max_rel_grad_diff']:.1e}, of δ_0 {a['max_rel_dx_diff']:.1e} "
                 f"(float32 rounding: different BLAS, different summation order).",
                 "",
                 relu_line(r),
                 ""]
    blas_libs = m["blas_runtime"]["libraries"]
    text += ["## Machine",
             "",
             f"- CPU: {m['cpu']}; {m['logical_cpus']} logical CPUs, {m['usable_cpus']} usable by this process "
             f"(a shared machine: each section gives its load average; read the IQRs)",
             f"- {m['platform']}, Python {m['python']}",
             f"- numpy {m['numpy']} (BLAS: {m['numpy_blas']}); torch {m['torch']} (BLAS: {m['torch_blas']}, "
             f"CPU capability {m['torch_cpu_capability']})",
             "- threads: the same count for both engines in each section — torch.set_num_threads(T) and "
             "OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS=T in the measuring process; as seen at run "
             "time: " + "; ".join(f"T={r['config']['threads']}: torch {r['machine']['torch_threads']}, OpenBLAS "
                                  + ", ".join(str(lib["num_threads"]) for lib in r["machine"]["blas_runtime"]["libraries"]
                                              if lib.get("internal_api") == "openblas")
                                  for r in results),
             f"- BLAS at run time, first section ({m['blas_runtime']['source']}): "
             + ("; ".join(f"{lib['prefix']} {lib.get('version') or ''} {lib['internal_api']} "
                          f"threads={lib['num_threads']}" + (f" kernel={lib['architecture']}" if lib.get('architecture') else "")
                          for lib in blas_libs) or "not available"),
             f"- date: {m['date_utc']}",
             ""]
    (out / "README.md").write_text("\n".join(text + notes(results)) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")


def notes(results) -> list[str]:
    """Hand-written reading of the numbers, kept with the generator so it travels with the table."""
    return ["## Reading it",
            "",
            "- **Engine change made for this benchmark** (ckpt/layers.py, ReLU backward): the masked copy "
            "`np.copyto(δ, 0, where=x <= 0)` runs a branch per element on a random sign pattern and cost "
            "about as much as a third of a layer's GEMM; `δ *= sign(x)` (for x = relu(z) ≥ 0, sign(x) = [x > 0]) "
            "is a branch-free multiply. Same op for every strategy, so gradients stay bitwise identical across "
            "strategies; its transient is one array of the activation's dtype, declared in "
            "`ReLU.backward_temp`. The line under each table times both forms side by side.",
            "- **numpy vs torch.** Both spend nearly all of a step in 3 GEMMs per layer (z = a Wᵀ, ∂W = δᵀ a, "
            "δ_prev = δ W). The GEMM line under each table shows the per-GEMM speed of each library's BLAS "
            "(numpy: OpenBLAS, torch: MKL/oneDNN) on this CPU; the step ratio follows it.",
            "- **OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE.** Set in this environment because older OpenBLAS builds "
            "misbehave on some processors; they pin numpy's OpenBLAS to its Haswell (AVX2) kernel. Unset for "
            "the benchmark process alone, OpenBLAS picks its own kernel (see the kernel named above each table). "
            "Tests and CI keep the environment as it is.",
            "- **Strategies: time.** recompute re-runs the forward from x_0 before each backward "
            "(n + n(n−1)/2 forward steps) and keeps one activation at a time; sqrt_n keeps ⌈√n⌉ checkpoints "
            "and re-tapes one segment at a time (2n − L forward steps).",
            "- **Strategies: memory.** In this configuration the whole-step peak is the same for every "
            "strategy: it comes at the end of the backward, when all 33 weight gradients (4 MiB each at "
            "width 1024) are live and no activation is, so the gradients (132 MiB) dwarf the activations "
            "(1 MiB each at batch 256). What the strategies cut is the activation part: the column "
            "'predicted peak less gradients' (the executor's high-water of everything but finished stages' "
            "gradients) and 'predicted saved' (checkpoints + tapes) show it. Checkpointing pays where "
            "batch × depth activations outweigh the parameters (large batch, narrow layers).",
            "- **Threads.** Each section gives both engines the same thread count. The machine has 2 cores "
            "shared with other jobs: with 2 threads each BLAS call waits for its slower thread whenever another "
            "job holds a core, so on a busy machine the 2-thread sections turn far noisier (wide IQRs, "
            "absolute times above the 1-thread ones); the 1-thread sections are the steadier ratio, and the "
            "paired-ratio IQR gives each section's spread.",
            "- tracemalloc counts every Python allocation, so the measured peak also holds the executor's "
            "own small Python objects (tens of KiB) that the prediction does not model.",
            ""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=32)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--repeats", type=int, default=15, help="timed rounds (each runs every runner once)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, nargs="+", default=[len(os.sched_getaffinity(0))],
                   help="threads for numpy's BLAS and torch alike, one or more counts (default: usable CPUs)")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    p.add_argument("--openblas-env", choices=("as-set", "unset", "both"), default="both",
                   help="run with OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE as set, unset (this run only), or both")
    p.add_argument("--out", default="reports/engine_benchmark")
    p.add_argument("--timeout", type=float, default=3600, help="seconds before a measuring process is killed")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if "store_all" not in args.strategies:
        p.error("--strategies must include store_all (the baseline)")
    if args.repeats < 1:
        p.error("--repeats must be ≥ 1")

    if args.child:
        args.threads = args.threads[0]
        emit(measure(args))
        return 0
    settings = ["unset", "as-set"] if args.openblas_env == "both" else [args.openblas_env]
    results = [measure_in_child(args, s, t) for t in args.threads for s in settings]
    out = Path(args.out)
    out = out if out.is_absolute() else ROOT / out
    write_report(args, results, out)
    for r in results:
        print(f"\n## OpenBLAS variables {r['setting']} (kernel {kernel_of(r)}), {r['config']['threads']} thread(s)"
              f"\n{table(r)}\n{ratio_line(r)}")
    print(f"\nwrote {out / 'README.md'}, results.csv, timings.csv, results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
