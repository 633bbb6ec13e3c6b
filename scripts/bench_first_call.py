"""How long the first training step of ``CheckpointedSequential(blocks, budget=...)`` takes, profiling and planning apart.

    PYTHONPATH=. python scripts/bench_first_call.py --out reports/first_call

The first call with a budget profiles the stages (``Profile.from_torch`` through
``ckpt.torch.wrappers.profile_in_isolation``), plans (``BudgetPlans._optimal``:
``ckpt.optimal``, and again if the CPU generator states do not fit beside the plan)
and then runs the step.  Each configuration (n identical Linear(128, 128)+ReLU blocks,
batch 1024, float32, CPU, one thread; ``pool_identical`` on or off) runs in its own
fresh process; the child wraps those two functions with timers (measured:
``time.perf_counter``, wall seconds) and times the whole first step, forward and
backward.  The batch is large against the width so that activations, not the
parameters' gradients, decide the peak: with Linear(256, 256) at batch 64 the gradients
held to the step's end dominate and store_all fits within sqrt_n's peak, leaving the
planner nothing to trade.  The budget is sqrt_n's predicted peak on the blocks' bytes (the memory
model on a profile measured in the parent; bytes do not depend on timing noise).
Rounds interleave the configurations; the report gives medians and min–max.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

WIDTH, BATCH = 128, 1024

CHILD = r"""
import json, os, sys, time
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[4])
import ckpt
from ckpt.torch import wrappers
from bench_first_call import blocks_and_input
n, pool, budget = int(sys.argv[1]), sys.argv[2] == "on", int(sys.argv[3])
seconds = {"profile": 0.0, "plan": 0.0}

def timed(name, fn):
    def run(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds[name] += time.perf_counter() - t0
    return run

wrappers.profile_in_isolation = timed("profile", wrappers.profile_in_isolation)
wrappers.BudgetPlans._optimal = timed("plan", wrappers.BudgetPlans._optimal)
load = os.getloadavg()[0]
blocks, x = blocks_and_input(n)
model = ckpt.CheckpointedSequential(blocks, budget=budget, pool_identical=pool)
t0 = time.perf_counter()
model(x).sum().backward()
step = time.perf_counter() - t0
profile = model.profile
print(json.dumps({"n": n, "pool_identical": pool, "budget_bytes": budget, "first_step_s": step,
                  "profile_s": seconds["profile"], "plan_s": seconds["plan"],
                  "rest_s": step - seconds["profile"] - seconds["plan"],
                  "distinct_stage_times": len({(s.forward_time, s.backward_time) for s in profile.stages}),
                  "forward_steps": model.schedule.forward_steps,
                  "predicted_peak_bytes": ckpt.predict_memory(profile, model.schedule).peak_bytes,
                  "load_1min": load, "source": profile.source}))
"""


def blocks_and_input(n: int):
    """n identical Linear(WIDTH, WIDTH)+ReLU blocks (seed 0) and a (BATCH, WIDTH) input."""
    import torch
    from torch import nn
    torch.manual_seed(0)
    return [nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU()) for _ in range(n)], torch.randn(BATCH, WIDTH)


def sqrt_n_budget(n: int) -> int:
    """sqrt_n's predicted peak for the n-block chain (bytes from a measured profile)."""
    import ckpt
    import torch
    torch.set_num_threads(1)
    blocks, x = blocks_and_input(n)
    return ckpt.predict_memory(ckpt.Profile.from_torch(blocks, x, repeats=1), "sqrt_n").peak_bytes


def run_child(n: int, pool: bool, budget: int, timeout: float) -> dict:
    """One configuration in a fresh single-threaded process: its row (or a row with the error)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    here = str(Path(__file__).resolve().parent)
    args = [sys.executable, "-c", CHILD, str(n), "on" if pool else "off", str(budget), here]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"n": n, "pool_identical": pool, "status": f"timeout ({timeout:.0f} s)"}
    rows = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not rows:
        return {"n": n, "pool_identical": pool, "status": f"failed: {done.stderr.strip()[-300:]}"}
    return dict(json.loads(rows[-1]), status="ok")


def summary(rows: list) -> list:
    """Per (n, pool_identical): median and min–max of each timing over the rounds that finished."""
    out = []
    for key in sorted({(r["n"], r["pool_identical"]) for r in rows}):
        done = [r for r in rows if (r["n"], r["pool_identical"]) == key and r["status"] == "ok"]
        entry = {"n": key[0], "pool_identical": key[1], "rounds": len(done)}
        for name in ("first_step_s", "profile_s", "plan_s", "rest_s"):
            values = [r[name] for r in done]
            entry[name] = (statistics.median(values), min(values), max(values)) if values else None
        entry["distinct_stage_times"] = sorted({r["distinct_stage_times"] for r in done})
        entry["forward_steps"] = sorted({r["forward_steps"] for r in done})
        out.append(entry)
    return out


def markdown(rows: list, meta: dict) -> str:
    """The report: what was run, then the medians table."""
    fmt = lambda v: "—" if v is None else f"{v[0]:.3f} ({v[1]:.3f}–{v[2]:.3f})"  # noqa: E731
    lines = [
        "# First call of a budget wrapper: profiling and planning seconds",
        "",
        f"Produced by `PYTHONPATH=. python scripts/bench_first_call.py --rounds {meta['rounds']} --out "
        f"reports/first_call` ({meta['date']}, {meta['machine']}, torch {meta['torch']}, {meta['rounds']} rounds; "
        f"1-minute load {meta['load_before']:.2f} before, {meta['load_after']:.2f} after; "
        f"children's load at start {meta['child_load_min']:.2f}–{meta['child_load_max']:.2f}).",
        "",
        f"Model: n identical `Linear({WIDTH}, {WIDTH})` + `ReLU` blocks, input {BATCH}×{WIDTH} float32 (needs no "
        "gradient), CPU, one thread; `ckpt.CheckpointedSequential(blocks, budget=B, pool_identical=...)` with B "
        "= sqrt_n's predicted peak (memory model on the blocks' measured bytes; the batch is large against the "
        "width so that activations, not the gradients held to the step's end, decide the peak: at width 256, "
        "batch 64 store_all fits within sqrt_n's peak and there is nothing to plan). Each configuration runs in its "
        "own fresh process, rounds interleaved. All seconds are **measured** wall time (`time.perf_counter`) in "
        "the child: *first step* = `model(x).sum().backward()` on the first call; *profiling* = "
        "`profile_in_isolation` (`Profile.from_torch`: 3 repeats + 1 warm-up per timed stage, CPU transients "
        "from torch's profiler; without pooling every stage is timed and measured, with it the first 3 and the "
        "first 2 of each group of identical stages); *planning* = `BudgetPlans._optimal` (`ckpt.optimal`, re-planned if the generator states do "
        "not fit beside the plan); *rest* = first step − profiling − planning (the memory check and the step "
        "itself). *Distinct stage times* and *forward steps* are counted from the profile and the plan.",
        "",
        "| n | pool_identical | first step s | profiling s | planning s | rest s | distinct stage times | "
        "forward steps | rounds |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in summary(rows):
        lines.append(f"| {e['n']} | {'on' if e['pool_identical'] else 'off'} | {fmt(e['first_step_s'])} | "
                     f"{fmt(e['profile_s'])} | {fmt(e['plan_s'])} | {fmt(e['rest_s'])} | "
                     f"{', '.join(map(str, e['distinct_stage_times']))} | "
                     f"{', '.join(map(str, e['forward_steps']))} | {e['rounds']} |")
    lines += ["", "Cells: median (min–max) over the rounds. Every run's row: `first_call.csv`; the run's "
              "settings and load: `meta.json`.", ""] + findings(summary(rows)) + [
              "", "Planning seconds depend on `ckpt.optimal`'s engine at the commit measured (the C kernel, "
              "`ckpt/_frontier.c`, where a compiler exists). Forward steps may differ between rounds: "
              "measured times decide near-ties between plans of equal peak."]
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        lines += ["", "Runs that did not finish:", ""] + [f"- n = {r['n']}, pool {r['pool_identical']}: "
                                                           f"{r['status']}" for r in failed]
    return "\n".join(lines) + "\n"


def findings(entries: list) -> list:
    """Sentences on the largest n measured both ways: planning and first-step medians, on vs off."""
    by_key = {(e["n"], e["pool_identical"]): e for e in entries if e["rounds"]}
    both = [n for n in sorted({n for n, _ in by_key}) if (n, True) in by_key and (n, False) in by_key]
    if not both:
        return []
    n = both[-1]
    on, off = by_key[(n, True)], by_key[(n, False)]
    median = lambda e, k: e[k][0]  # noqa: E731
    return [f"At n = {n}, pooling cut the median planning time from {median(off, 'plan_s'):.3f} s to "
            f"{median(on, 'plan_s'):.3f} s ({median(off, 'plan_s') / median(on, 'plan_s'):.0f}× less) and the "
            f"first step from {median(off, 'first_step_s'):.2f} s to {median(on, 'first_step_s'):.2f} s; "
            f"with pooling, profiling is {median(on, 'profile_s') / median(on, 'first_step_s'):.0%} of the "
            f"first step (medians of {on['rounds']} and {off['rounds']} rounds; ratios of medians)."]


def read_rows(path: Path) -> list:
    """The rows of a ``first_call.csv`` with their numbers and booleans back."""
    def value(text: str):
        try:
            return json.loads(text.lower() if text in ("True", "False") else text)
        except ValueError:
            return text
    with open(path, newline="") as f:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(f)]


def main(argv=None) -> None:
    """Run every configuration for ``--rounds`` interleaved rounds; write the CSV and the README."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per child process")
    parser.add_argument("--out", type=Path, default=Path("reports/first_call"))
    parser.add_argument("--render", action="store_true", help="rewrite README.md from --out's CSV and meta.json")
    args = parser.parse_args(argv)
    if args.render:
        meta = json.loads((args.out / "meta.json").read_text())
        (args.out / "README.md").write_text(markdown(read_rows(args.out / "first_call.csv"), meta))
        return
    import torch
    load_before = os.getloadavg()[0]
    budgets = {n: sqrt_n_budget(n) for n in args.n}
    rows = []
    for round_ in range(args.rounds):
        for n in args.n:
            for pool in (True, False):
                row = dict(run_child(n, pool, budgets[n], args.timeout), round=round_)
                rows.append(row)
                print(json.dumps({k: row.get(k) for k in ("round", "n", "pool_identical", "status", "first_step_s",
                                                          "profile_s", "plan_s")}), flush=True)
    ok = [r for r in rows if r["status"] == "ok"] or [{"load_1min": float("nan")}]
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or
            platform.machine(), "torch": torch.__version__, "rounds": args.rounds, "load_before": load_before,
            "load_after": os.getloadavg()[0], "child_load_min": min(r["load_1min"] for r in ok),
            "child_load_max": max(r["load_1min"] for r in ok)}
    args.out.mkdir(parents=True, exist_ok=True)
    fields = sorted({k for r in rows for k in r})
    with open(args.out / "first_call.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    (args.out / "README.md").write_text(markdown(rows, meta))
    print(f"wrote {args.out / 'README.md'} and {args.out / 'first_call.csv'}")


if __name__ == "__main__":
    main()
