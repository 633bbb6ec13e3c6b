"""Memory-vs-time trade-off of every strategy: predicted and measured, numpy and torch CPU.

    PYTHONPATH=. python scripts/tradeoff.py --out reports/tradeoff

Chains.  numpy (our Dense stages, batch 1024, float64): a homogeneous MLP; a
chain whose activations shrink with depth (the Dense analogue of a CNN); a
chain with wide first and last layers (the analogue of a transformer's
embedding and head).  torch CPU (float32): an MLP, a real CNN whose
activations shrink with depth, and a GPT: token and position embedding, 16
pre-LayerNorm causal blocks, a final LayerNorm and vocabulary head.

Why the GPT is shaped as it is.  On a chain of identical blocks between an
embedding and a head, every strategy recomputes each block whose tape it does
not hold through the head's backward, so at √n's peak `optimal` can only win by
holding more block tapes there than √n's last segment does.  Where √n's peak
is that moment (the logits' gradient beside the last segment's tapes: a
small-vocabulary-per-width, large-batch step, e.g. width 128, vocabulary 8000,
1024 tokens, 12 blocks) √n already holds all the tapes that fit and `optimal`
equals it (measured profile: 0.994× predicted, 24 forward steps each).  Where the parameter gradients, which accumulate
through the backward, are large beside one block's tape, √n's peak comes late
in the backward and its equal segments leave room unused earlier, which
`optimal` fills with 3 more block tapes (29 forward steps against 32; 0.97×
predicted in reports/tradeoff).  The second is what fine-tuning a GPT-2-sized model at batch 1
looks like: GPT-2 small (width 768, heads of 64, vocabulary 50257, 12 blocks)
on 1024 tokens has 0.5 GB of fp32 gradients against ≈ 47 MB per block tape
(these blocks keep ≈ 15·width floats per token) and 206 MB of logits.  Ours is that at a
third of the width: width 256 (4 heads of 64), vocabulary 8000, 16 blocks,
4 × 128 tokens: 64 MiB of gradients, 8 MiB per block tape, 15.6 MiB of
logits; one step is ≈ 1 s on one CPU thread.

Strategies: store_all, recompute, sqrt_n, Chen's greedy, revolve at several
slot counts, optimal at several budgets.  Predicted: peak by the memory model
on the chain's Profile, time by the Profile (numpy: measured per-stage medians;
torch: measured per-stage medians).  Measured: numpy tracemalloc peak and step
time; torch CPU allocator peak (``profiling.meters.TorchCPUMeter``, one metered
step apart from the timed ones) and step time (CheckpointedSequential running
the schedule) next to torch.utils.checkpoint.checkpoint_sequential.  Times are
medians of repeats interleaved across strategies within one run (one thread);
against √n also paired: the median over rounds of the ratio within a round.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    # one BLAS thread, set before numpy loads OpenBLAS: with a thread per core, each numpy step waits on
    # whichever core a neighbour holds (on the shared 2-core machine the medians spread up to 8×)
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import ckpt  # noqa: E402
from profiling.meters import TorchCPUMeter, TracemallocMeter  # noqa: E402

NUMPY_CHAINS = {
    "mlp (homogeneous)": [128] * 17,
    "shrinking (CNN-like)": [128] + [128 - 4 * i for i in range(24)],
    "wide ends (transformer-like)": [32, 256] + [32] * 20 + [256, 32],
}
BATCH = 1024


def plans(profile) -> list[tuple[str, ckpt.Schedule]]:
    """(label, schedule) for every strategy and budget the report compares."""
    n = len(profile)
    peak = lambda s: ckpt.predict_memory(profile, s).peak_bytes
    out = [(name, ckpt.make_schedule(name, n)) for name in ("store_all", "recompute", "sqrt_n")]
    out += [(f"revolve s={s}", ckpt.revolve(n, s)) for s in (2, 3, 4, 6) if s < n]
    low, mid, high = peak(out[1][1]), peak(out[2][1]), peak(out[0][1])
    least = ckpt.min_feasible_budget(profile)
    budgets = {"min": least, "recompute↔sqrt_n": (low + mid) // 2, "sqrt_n": mid,
               "sqrt_n↔store_all": (mid + high) // 2}
    for label, b in budgets.items():
        if b >= least:
            out.append((f"optimal @{label}", ckpt.optimal(profile, b)))
    for label in ("sqrt_n", "sqrt_n↔store_all"):
        try:
            out.append((f"chen_greedy @{label}", ckpt.chen_greedy(profile, budgets[label])))
        except ValueError:
            pass
    return out


def numpy_rows(name, sizes, repeats) -> list[dict]:
    """Predicted and measured (tracemalloc, time medians) rows for one numpy chain."""
    model = ckpt.MLP(sizes)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((BATCH, sizes[0])), rng.standard_normal((BATCH, sizes[-1]))
    profile = ckpt.Profile.from_chain(model, BATCH, times="measured", repeats=5)
    chosen = plans(profile)
    backend = ckpt.NumpyBackend(model)
    rows = []
    for label, schedule in chosen:
        with TracemallocMeter() as meter:
            ckpt.execute(schedule, backend, x, y)
        rows.append(_row("numpy", name, label, schedule, profile, measured_peak=meter.figures["tracemalloc_peak"]))
    times = {label: [] for label, _ in chosen}
    for _ in range(repeats):                        # interleaved: each repeat runs every schedule once
        for label, schedule in chosen:
            t0 = time.perf_counter()
            ckpt.execute(schedule, backend, x, y)
            times[label].append(time.perf_counter() - t0)
    for row in rows:
        _add_times(row, times[row["strategy"]], times["sqrt_n"])
    return rows


def _row(backend, chain, label, schedule, profile, measured_peak=None) -> dict:
    return {"backend": backend, "chain": chain, "strategy": label, "n": schedule.n,
            "forward_steps": schedule.forward_steps,
            "predicted_peak_MiB": ckpt.predict_memory(profile, schedule).peak_bytes / 2**20,
            "predicted_time_s": profile.schedule_time(schedule),
            "measured_peak_MiB": None if measured_peak is None else measured_peak / 2**20}


def _add_times(row, samples, sqrt_n_samples) -> None:
    """Median step time, its spread, and the median over rounds of its ratio to √n's step in the same round
    (paired: a load change between rounds moves both steps of a round alike)."""
    row["measured_time_s"] = statistics.median(samples)
    row["time_spread"] = (max(samples) - min(samples)) / statistics.median(samples)
    row["time_vs_sqrt_n"] = statistics.median(t / s for t, s in zip(samples, sqrt_n_samples))


def torch_chains():
    """(name, stages, sample input) of the three torch chains."""
    torch.manual_seed(0)
    mlp = nn.Sequential(*[nn.Sequential(nn.Linear(256, 256), nn.ReLU()) for _ in range(16)])
    # four resolutions of four conv blocks: channels double as the side halves, so each block
    # costs about the same time while activations shrink 2× per group (64 px: 2 MiB, 8 px: 256 KiB)
    chans, c_in = [], 3
    for group, c in enumerate((16, 32, 64, 128)):
        for k in range(4):
            chans.append((c_in, c, 2 if group and not k else 1))
            c_in = c
    cnn = nn.Sequential(*[nn.Sequential(nn.Conv2d(a, b, 3, stride=s, padding=1), nn.ReLU()) for a, b, s in chans],
                        nn.Sequential(nn.Flatten(), nn.Linear(128 * 8 * 8, 10)))
    return [("mlp (homogeneous)", mlp, torch.randn(512, 256)),
            ("cnn (activations shrink)", cnn, torch.randn(4, 3, 64, 64)),
            (GPT_NAME, gpt_stages(**GPT_SHAPE), torch.randint(0, GPT_SHAPE["vocab"], (GPT_BATCH, GPT_SHAPE["tokens"])))]


# GPT-2 small fine-tuned at batch 1 (width 768, 12 heads of 64, vocabulary 50257, 1024 tokens), at a
# third of its width: see the module docstring for why this shape and not a wider batch
GPT_SHAPE = {"vocab": 8000, "width": 256, "blocks": 16, "tokens": 128}
GPT_BATCH = 4
GPT_NAME = "gpt (embedding + 16 blocks + head)"


class TokensAndPositions(nn.Module):
    """GPT's input stage: token embedding plus learned position embedding."""

    def __init__(self, vocab: int, width: int, tokens: int):
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Parameter(torch.randn(tokens, width) * 0.02)

    def forward(self, ids):
        return self.tokens(ids) + self.positions[: ids.shape[1]]


class CausalBlock(nn.Module):
    """A pre-LayerNorm GELU transformer block with causal self-attention (heads of 64, MLP 4× wide)."""

    def __init__(self, width: int, tokens: int):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(width, width // 64, 4 * width, dropout=0.0, activation="gelu",
                                                batch_first=True, norm_first=True)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(tokens), persistent=False)

    def forward(self, x):
        return self.layer(x, src_mask=self.mask, is_causal=True)


def gpt_stages(vocab: int, width: int, blocks: int, tokens: int) -> nn.Sequential:
    """Embedding, ``blocks`` causal transformer blocks, and the head (final LayerNorm, vocabulary logits)."""
    torch.manual_seed(0)
    return nn.Sequential(TokensAndPositions(vocab, width, tokens), *[CausalBlock(width, tokens) for _ in range(blocks)],
                         nn.Sequential(nn.LayerNorm(width), nn.Linear(width, vocab, bias=False)))


def torch_rows(name, stages, x, repeats) -> list[dict]:
    """Predicted rows and measured step-time medians for one torch chain, checkpoint_sequential beside."""
    from torch.utils.checkpoint import checkpoint_sequential
    profile = ckpt.Profile.from_torch(stages, x, repeats=5)
    chosen = plans(profile)
    runners = {label: ckpt.CheckpointedSequential(list(stages), strategy=lambda n, s=schedule: s)
               for label, schedule in chosen}
    segments = math.ceil(math.sqrt(len(stages)))
    runners["torch checkpoint_sequential"] = lambda v: checkpoint_sequential(stages, segments, v, use_reentrant=False)
    runners["torch plain"] = stages
    # loss = sum: its backward hands x_n's gradient (x_n's bytes) to the last stage and allocates
    # nothing else, as the profile's Loss does; a squared loss would add two logits-sized
    # buffers that no strategy controls (the transformer's head: 16 MiB each)
    step = lambda run: run(x).float().sum().backward()
    peaks = {}
    for label, run in runners.items():              # metered apart: the profiler slows the step it watches
        stages.zero_grad(set_to_none=True)
        step(run)                                   # warm-up: lazily allocated state is not the strategy's
        stages.zero_grad(set_to_none=True)
        with TorchCPUMeter() as meter:
            step(run)
        peaks[label] = meter.figures["torch_cpu_peak"]
    times = {label: [] for label in runners}
    for _ in range(repeats):                        # interleaved: each round runs every strategy once
        for label, run in runners.items():
            stages.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            step(run)
            times[label].append(time.perf_counter() - t0)
    rows = [_row("torch", name, label, schedule, profile, measured_peak=peaks[label]) for label, schedule in chosen]
    rows += [{"backend": "torch", "chain": name, "strategy": label, "n": len(stages),
              "measured_peak_MiB": peaks[label] / 2**20} for label in ("torch checkpoint_sequential", "torch plain")]
    for row in rows:
        _add_times(row, times[row["strategy"]], times["sqrt_n"])
    return rows


FAMILIES = ("store_all", "recompute", "sqrt_n", "revolve", "chen_greedy", "optimal", "torch checkpoint_sequential")


def plot(frame, path) -> None:
    """One panel per (backend, chain): measured (filled) and predicted (hollow) peak vs time."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = list(frame.groupby(["backend", "chain"], sort=False))
    fig, axes = plt.subplots(2, 3, figsize=(16, 9.5))
    for ax, ((backend, chain), g) in zip(axes.flat, groups):
        meter = "tracemalloc" if backend == "numpy" else "torch CPU allocator"
        _draw(ax, g)
        ax.set_title(f"{backend}: {chain}", fontsize=10)
        ax.set_xlabel(f"peak MiB — filled: measured ({meter}), hollow: predicted (memory model)", fontsize=8)
        ax.set_ylabel("step ms — filled: measured median, hollow: predicted (profile)", fontsize=8)
        _zoom_near_sqrt_n(ax, g)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Memory vs time per strategy, one training step (lower-left is better; optimal's points joined)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _draw(ax, g) -> None:
    """Every strategy's measured (filled) and predicted (hollow) point; optimal's measured points joined."""
    for k, family in enumerate(FAMILIES):
        part, colour, marker = g[g.strategy.str.startswith(family)], f"C{k}", "svD^PoX"[k]
        ax.scatter(part.measured_peak_MiB, part.measured_time_s * 1e3, marker=marker, color=colour,
                   label=family.replace("torch ", ""), s=45)
        ax.scatter(part.predicted_peak_MiB, part.predicted_time_s * 1e3, marker=marker, s=45,
                   facecolors="none", edgecolors=colour)
    front = g[g.strategy.str.startswith("optimal")].sort_values("predicted_peak_MiB")
    ax.plot(front.measured_peak_MiB, front.measured_time_s * 1e3, color="C5", lw=1, alpha=0.6)
    ax.grid(alpha=0.3)


def _zoom_near_sqrt_n(ax, g) -> None:
    """An inset around √n's peak when the panel's spread crowds the plans near it into a corner."""
    peaks = g[["measured_peak_MiB", "predicted_peak_MiB"]].stack()
    sqrt_n = g.set_index("strategy").loc["sqrt_n"]
    if sqrt_n.predicted_peak_MiB - peaks.min() > 0.1 * (peaks.max() - peaks.min()):
        return
    near = g[g[["measured_peak_MiB", "predicted_peak_MiB"]].max(axis=1) <= 1.03 * sqrt_n.predicted_peak_MiB]
    times = near[near.strategy != "recompute"][["measured_time_s", "predicted_time_s"]].stack() * 1e3
    inset = ax.inset_axes([0.3, 0.36, 0.66, 0.52])
    _draw(inset, near)
    inset.set_xlim(peaks.min() - 0.5, 1.03 * sqrt_n.predicted_peak_MiB)
    inset.set_ylim(0.95 * times.min(), 1.05 * times.max())
    inset.set_title("near √n's peak (recompute off the top)", fontsize=8)
    inset.tick_params(labelsize=7)


def claims(frame) -> list[str]:
    """Per heterogeneous chain: does optimal at √n's peak beat √n (predicted and measured), and fit below it?"""
    lines = ["## Optimal against √n on the heterogeneous chains", "",
             "| backend | chain | optimal @sqrt_n vs sqrt_n: predicted time | measured time (paired; ratio of medians) | "
             "optimal @recompute↔sqrt_n: predicted peak ≤ budget < sqrt_n's peak |", "|---|---|---|---|---|"]
    for (backend, chain), g in frame.groupby(["backend", "chain"], sort=False):
        if "homogeneous" in chain:
            continue
        row = g.set_index("strategy")
        mine, theirs = row.loc["optimal @sqrt_n"], row.loc["sqrt_n"]
        verdict = lambda r: f"{r:.3f}× ({'less' if r < 1 else 'NOT less'})"
        between = row.loc["optimal @recompute↔sqrt_n"] if "optimal @recompute↔sqrt_n" in row.index else None
        fits = ("no plan" if between is None else
                f"{between.predicted_peak_MiB:.2f} MiB < {theirs.predicted_peak_MiB:.2f} MiB "
                f"(measured {between.measured_peak_MiB:.2f})")
        measured = f"{verdict(mine.time_vs_sqrt_n)}; {mine.measured_time_s / theirs.measured_time_s:.3f}×"
        lines.append(f"| {backend} | {chain} | {verdict(mine.predicted_time_s / theirs.predicted_time_s)} | "
                     f"{measured} | {fits} |")
    return lines


def report(frame, out: Path, args, started) -> None:
    """Write results.csv, pareto.png and README.md."""
    frame.to_csv(out / "results.csv", index=False)
    plot(frame, out / "pareto.png")
    lines = ["# Trade-off: memory vs time of every strategy", "",
             f"Command: `PYTHONPATH=. python scripts/tradeoff.py --repeats {args.repeats} "
             f"--numpy-repeats {args.numpy_repeats} --out {args.out}` "
             f"({started}; load average {args.load_at_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the "
             "end (1-minute `uptime` figures) on a shared 2-core machine: timings are noisy, "
             "compare within a chain only).", "",
             "Predicted peak: the memory model on the chain's `ckpt.Profile` (input and parameters excluded; "
             "on torch, each stage's transients measured by `Profile.from_torch` from the CPU allocator's events). "
             "Predicted time: sum of the profile's per-stage measured medians. Measured peak: tracemalloc "
             "(numpy), torch's CPU allocator above the step's entry (torch; `profiling.meters.TorchCPUMeter`, "
             "one metered step after a warm-up, apart from the timed ones). Measured time: median step time, "
             "repeats interleaved across strategies (each round runs every strategy once), one thread; spread = "
             "(max − min) / median; paired = the median over rounds of a step's time over √n's step time in the "
             "same round (the load drifts between rounds; within one it moves both alike).", "",
             "![pareto](pareto.png)", "", *claims(frame), ""]
    for (backend, chain), g in frame.groupby(["backend", "chain"], sort=False):
        lines += [f"## {backend}: {chain}", "",
                  "| strategy | forward steps | predicted peak MiB | measured peak MiB | predicted time ms | "
                  "measured time ms (spread) |", "|---|---|---|---|---|---|"]
        for r in g.itertuples():
            f = lambda v, k=1: "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v * k:.2f}"
            steps = "" if r.forward_steps is None or (isinstance(r.forward_steps, float) and math.isnan(r.forward_steps)) \
                else int(r.forward_steps)
            lines.append(f"| {r.strategy} | {steps} | {f(r.predicted_peak_MiB)} | {f(r.measured_peak_MiB)} | "
                         f"{f(r.predicted_time_s, 1e3)} | {f(r.measured_time_s, 1e3)} ({r.time_spread:.0%}) |")
        lines.append("")
    (out / "README.md").write_text("\n".join(lines))


def main() -> int:
    """Measure every chain and write the report."""
    import pandas as pd
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15, help="timed steps per strategy on torch")
    parser.add_argument("--numpy-repeats", type=int, default=5, help="timed steps per strategy on numpy")
    parser.add_argument("--out", default="reports/tradeoff")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--only", default="", help="run only the chains whose name contains this text (e.g. gpt)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    args.load_at_start = os.getloadavg()[0]
    rows = []
    for name, sizes in NUMPY_CHAINS.items():
        if args.only not in name:
            continue
        rows += numpy_rows(name, sizes, args.numpy_repeats)
        print(f"numpy {name}: done", flush=True)
    if not args.skip_torch:
        torch.set_num_threads(1)
        for name, stages, x in torch_chains():
            if args.only not in name:
                continue
            rows += torch_rows(name, stages, x, args.repeats)
            print(f"torch {name}: done", flush=True)
    report(pd.DataFrame(rows), out, args, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
