"""How long ``ckpt.optimal`` takes to plan n stages (one core), at the peak of sqrt_n and halfway to recompute's.

    PYTHONPATH=. python scripts/bench_planner.py --out reports/planner

Both planner engines are timed, each (chain, n, budget) in its own process: the
C kernel (``native``, the default where a compiler exists) and the numpy engine
(``CKPT_PLANNER_ENGINE=numpy``).  The kernel's one-off build (once per source
version, cached) is timed apart.

Each (chain, n, budget) runs in its own single-threaded process with a CPU-time
limit; a run past it is recorded as a timeout (and larger n of that chain and
budget are not tried).  Chains (Dense+ReLU MLPs, batch 1024, float64, bytes exact
from the memory model, FLOP times):

* homogeneous: width 128 throughout;
* cnn_like: four groups of equal stages whose width halves per group (512 → 64):
  activations shrink with depth, repeated stage types within a group;
* transformer_like: a wide embedding (64 → 1024 → 256), identical 256-wide body
  stages, a wide head (256 → 1024);
* distinct: width 256 − i at stage i (every activation a different size, each
  stage a little cheaper than the one before): the hard case, where no two
  sub-chains share their content and near-equal trade-offs keep thousands of
  entries on every frontier;
* measured_like: the homogeneous chain with each stage's forward and backward
  times scaled by uniform(0.95, 1.05) (seed 2), as per-stage medians of
  identical blocks measured one by one come out: equal bytes, no two stages
  equal, so no sub-chain shares its content (``Profile.from_torch`` pools the
  samples of identical stages to avoid this);
* random: a hand-built profile (seed 1) whose every byte figure is drawn
  uniformly at byte granularity (activations 1 B to 64 MiB, tapes, transients,
  parameter gradients, whether a tape keeps its input) and whose times are
  drawn from a continuum: nothing repeats, but most trade-offs are dominated.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

CHAINS = ("homogeneous", "cnn_like", "transformer_like", "measured_like", "random", "distinct")


def chain_profile(kind: str, n: int):
    """The benchmark's n-stage chain of the given kind (module docstring) as a ``ckpt.Profile``."""
    import dataclasses
    import random
    import ckpt
    if kind == "measured_like":
        rng, base = random.Random(2), chain_profile("homogeneous", n)
        return dataclasses.replace(base, stages=tuple(dataclasses.replace(
            s, forward_time=s.forward_time * rng.uniform(0.95, 1.05),
            backward_time=s.backward_time * rng.uniform(0.95, 1.05)) for s in base.stages))
    if kind == "random":
        rng = random.Random(1)
        X = [rng.randint(1, 64 * 2**20) for _ in range(n + 1)]
        keeps = [rng.random() < 0.7 for _ in range(n + 1)]
        return ckpt.Profile(tuple(ckpt.StageCost(
            rng.uniform(1, 3), rng.uniform(2, 6), X[i], rng.randint(0, 4 * 2**20) + keeps[i] * X[i - 1],
            tape_keeps_input=keeps[i], forward_transient=rng.randint(0, 8 * 2**20),
            backward_transient=rng.randint(0, 8 * 2**20), grad_bytes=rng.randint(0, 4 * 2**20))
            for i in range(1, n + 1)), X[0])
    sizes = {"homogeneous": lambda: [128] * (n + 1),
             "cnn_like": lambda: [512] + [512 >> min(3, 4 * i // n) for i in range(n)],
             "transformer_like": lambda: [64, 1024] + [256] * (n - 2) + [1024],
             "distinct": lambda: [256] + [max(256 - i, 8) for i in range(n)]}[kind]()
    return ckpt.Profile.from_chain(ckpt.MLP(sizes), 1024)


def budget_for(profile, which: str) -> int:
    """sqrt_n's predicted peak ("sqrt_n"), or halfway between recompute's and it ("between")."""
    import ckpt
    high = ckpt.predict_memory(profile, "sqrt_n").peak_bytes
    low = ckpt.predict_memory(profile, "recompute").peak_bytes
    return high if which == "sqrt_n" else (low + high) // 2


CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[4])
import ckpt
from bench_planner import budget_for, chain_profile
profile = chain_profile(sys.argv[1], int(sys.argv[2]))
budget = budget_for(profile, sys.argv[3])
t0 = time.process_time()
plan = ckpt.optimal(profile, budget)
seconds = time.process_time() - t0
peak = ckpt.predict_memory(profile, plan).peak_bytes
print(json.dumps({"seconds": seconds, "peak": peak, "budget": budget, "forward_steps": plan.forward_steps,
                  "engine": ckpt._native.engine(),
                  "max_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


WORK = ("splits", "corner_skips", "sketch_skips", "walks", "walk_steps", "pushes", "leaps", "moved")


def counting_kernel():
    """The C kernel built with ``-DCKPT_FRONTIER_COUNTS`` (its work counters, in the order of ``WORK``), once
    per process into a temporary directory; None without a compiler."""
    import tempfile
    from ckpt import _native
    if not hasattr(counting_kernel, "lib"):
        try:
            counting_kernel.lib = _native.counting_lib(Path(tempfile.mkdtemp(prefix="ckpt-counts-")) / "frontier.so")
        except OSError:
            counting_kernel.lib = None
    return counting_kernel.lib


def frontier_counts(kind: str, n: int, which: str) -> dict:
    """Counted: the entries the planner's frontiers keep (the chain's root; all sub-problems), how many
    sub-problems (content, pinned, pending) it builds at the given budget, and the kernel's work (``WORK``:
    splits judged, skipped at their corners or from the sketches, walked; walk steps, candidates pushed,
    dominated leaps; staircase entries moved by merges)."""
    from ckpt.planners import _Planner, _solve_whole
    profile = chain_profile(kind, n)
    planner, lib = _Planner(profile, cap=budget_for(profile, which)), counting_kernel()
    before = list(lib.ckpt_frontier_counts()[:len(WORK)]) if lib else []
    root = planner.solve_native(lib) if lib else _solve_whole(planner)
    work = (dict(zip(WORK, (now - then for now, then in zip(lib.ckpt_frontier_counts()[:len(WORK)], before))))
            if lib else {})                                               # no compiler: the numpy engine's entries
    sizes = ([len(f.peak) for f in planner.memo.values()] if planner.pool is None
             else [int(m) for k, m in zip(planner.pool[2], planner.pool[3]) if k >= 0])
    return {"chain": kind, "n": n, "budget_at": which, "root_entries": len(root.peak),
            "entries": sum(sizes), "sub_problems": len(sizes), **work}


READING = [
    "How to read it.  `optimal` is exact over its class, in bytes (no memory unit).  Both engines build, per "
    "sub-chain content (x_a's bytes and the stage costs: repeated stage types share work), the whole Pareto "
    "frontier of (peak, time) up to the budget, and answer the budget from the chain's frontier; they build the "
    "same frontiers bit for bit (tests/test_planner_engines.py).  The C kernel fills sub-problems bottom-up and "
    "merges each split's two child frontiers with a two-pointer walk that reads only what the frontier built so "
    "far may not dominate: a split is first judged from 16-entry sketches of its two children, and dominated "
    "stretches are leapt over at a gallop; the splits the neighbouring sub-problems' frontiers use are merged "
    "first; the numpy engine merges every split at once with sorts.",
    "",
    "The work grows with the number of distinct contents (O(n) on the homogeneous and transformer-like chains, "
    "O(n²) on the others) and with the entries their frontiers keep.  Counted at n = 200, budget at sqrt_n's "
    "peak (`PYTHONPATH=. python scripts/bench_planner.py --count --n 200`): the homogeneous chain builds 1,198 "
    "sub-problems holding 0.12 M entries; measured_like, the same bytes with noisy times, 40,402 holding 6.9 M (283 at "
    "its root) and plans about 40x slower: that is why measured profiles give identical stages one time "
    "(`pool_identical=True` in `Profile.from_torch` and `Profile.from_chain(..., times=\"measured\")`), which "
    "gives them the homogeneous chain's O(n) contents.  The random chain, where nothing "
    "repeats, keeps 340 entries at its root and 3.7 M over its 20,502 sub-problems; the CNN-like chain 151 and 6.6 M; the distinct chain 2,007 "
    "and 55.7 M over 40,799, because each stage costs a little less than the one before, so that thousands of "
    "trade-offs are nearly equal and none dominates another.",
]


def one(kind: str, n: int, which: str, limit: float, engine: str) -> dict:
    """Plan once in a fresh single-threaded process; CPU seconds of ``optimal`` alone."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               CKPT_PLANNER_ENGINE=engine)
    row = {"engine": engine, "chain": kind, "n": n, "budget_at": which}
    cpu_limit = lambda: resource.setrlimit(resource.RLIMIT_CPU, (math.ceil(limit), math.ceil(limit) + 1))
    try:                                  # the limit is CPU seconds (a shared machine stretches wall time)
        done = subprocess.run([sys.executable, "-c", CHILD, kind, str(n), which, str(Path(__file__).parent)],
                              capture_output=True,
                              text=True, timeout=20 * limit, env=env, preexec_fn=cpu_limit)
    except subprocess.TimeoutExpired:
        return {**row, "status": f"timeout (> {20 * limit:g} s wall)"}
    if done.returncode == -signal.SIGXCPU:
        return {**row, "status": f"timeout (> {math.ceil(limit)} CPU s)"}
    if done.returncode:
        return {**row, "status": "error: " + done.stderr.strip().splitlines()[-1]}
    return {**row, "status": "ok", **json.loads(done.stdout)}


def kernel_build_seconds() -> float:
    """Wall seconds to compile the planner's C kernel once (into a throw-away cache)."""
    import tempfile
    from ckpt import _native
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        _native._build(Path(cache) / "frontier.so")
        return time.perf_counter() - t0


def main() -> int:
    """Run the grid and write <out>/results.json and <out>/README.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[10, 20, 30, 50, 100, 200])
    parser.add_argument("--limit", type=float, default=30, help="CPU seconds per run before it counts as a timeout")
    parser.add_argument("--engines", nargs="+", default=["native", "numpy"], choices=["native", "numpy"])
    parser.add_argument("--out", default="reports/planner")
    parser.add_argument("--count", action="store_true",
                        help="instead of timing: print the frontier entries each chain keeps at its largest n and the C "
                             "kernel's work counters (a copy built with -DCKPT_FRONTIER_COUNTS)")
    args = parser.parse_args()
    if args.count:
        for kind in CHAINS:
            print(json.dumps(frontier_counts(kind, max(args.n), "sqrt_n")), flush=True)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, load, build = [], os.getloadavg(), kernel_build_seconds()
    for engine in args.engines:
        for kind in CHAINS:
            for which in ("sqrt_n", "between"):
                for n in args.n:
                    rows.append(one(kind, n, which, args.limit, engine))
                    print(rows[-1], flush=True)
                    if rows[-1]["status"] != "ok":
                        break                               # larger n only takes longer
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    lines = ["# Planner benchmark: `ckpt.optimal` planning time", "",
             f"Command: `PYTHONPATH=. python scripts/bench_planner.py --n {' '.join(map(str, args.n))} "
             f"--limit {args.limit:g} --engines {' '.join(args.engines)} --out {args.out}`", "",
             f"Machine: {platform.processor() or platform.machine()}, load average at start "
             f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (shared 2-core machine). "
             "Measured: CPU seconds (`time.process_time`) of one `optimal` call in a fresh single-threaded "
             "process; budget = sqrt_n's predicted peak, or halfway between recompute's and sqrt_n's. "
             "Max RSS: the planning process's peak resident memory (`getrusage`), Python and numpy included. "
             f"The C kernel's build, once per source version (then cached): {build:.2f} s wall.", "",
             "| engine | chain | budget | n | status | CPU s | forward steps | peak ≤ budget | max RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['engine']} | {r['chain']} | {r['budget_at']} | {r['n']} | {r['status']} |"
        lines.append(f"{head} {r['seconds']:.3f} | {r['forward_steps']} | {r['peak'] <= r['budget']} | "
                     f"{r['max_rss_MiB']:.0f} |" if r["status"] == "ok" else f"{head} | | | |")
    slow = sorted({f"{r['chain']} ({r['budget_at']})" for r in rows if r["engine"] == "native" and r["n"] == 200
                   and (r["status"] != "ok" or r["seconds"] >= 2)})
    if 200 in args.n and "native" in args.engines:
        lines += ["", f"Over 2 CPU s at n = 200 with the C kernel: {', '.join(slow) or 'none'}."]
    lines += ["", *READING]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
