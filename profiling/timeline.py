"""Memory timelines: bytes held through one training step and one prediction, action by action.

The picture of "why training needs more memory than prediction" (compare PyTorch's
memory_viz): training rises through the forward as tapes accumulate and falls through
the backward as they are consumed; prediction stays flat.  Per strategy, side by side:

* **predicted** — the memory model: the schedule stepped one action at a time on the
  symbolic backend (``ckpt.executor.start`` + ``run.steps([a])``), the ledger's bytes
  after each action stacked by category (parameters, optimizer state, gradients, saved
  tapes, checkpoints, current activation and δ).  Temporaries inside an action are not
  in the ledger after it: the model counts them only at its peak.  It describes the numpy
  engine's stages (one Dense+ReLU each); torch's wrapper makes each Linear and ReLU a stage,
  whose prediction is ``profiling.torch_costs`` (the sweep's torch rows), not drawn here;
* **measured, numpy** — the same schedule on the numpy backend, ``tracemalloc`` after each
  action (the line) and its peak during the action (the shaded band above it: temporaries);
* **measured, torch** — one step of the torch workload under ``TorchCPUMeter``: bytes held
  by torch's CPU allocator after each allocation or free, over time (torch runs the step
  inside autograd, so its axis is time, not actions).

Bytes are above the parameters and inputs, plus the parameters as the bottom band.
``ckpt-profile timeline`` (``add_parser``/``run``) writes ``timeline.png`` and ``timeline.csv``.
"""

from __future__ import annotations

import argparse
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from .workloads import STATE_SLOTS, Config, TorchWorkload, validate

MIB = 2 ** 20
CATEGORIES = ("parameters", "optimizer state", "gradients", "saved tapes", "checkpoints", "current activation and δ")
COLORS = ("#bbbbbb", "#9467bd", "#2ca02c", "#d62728", "#1f77b4", "#ff7f0e")


def _model(c: Config):
    import ckpt
    return ckpt.MLP([c.width] * (c.depth + 1), activation="relu", loss="mse", dtype=c.dtype)


def _schedule(c: Config):
    import ckpt
    return ckpt.forward_only(c.depth) if c.mode == "predict" else ckpt.make_schedule(c.strategy, c.depth)


def _resident(model, c: Config) -> tuple[int, int]:
    params = sum(p.nbytes for d in model.params for p in d.values())
    return params, (STATE_SLOTS[c.optimizer] * params if c.mode == "train" else 0)


def _by_category(totals, params: int, optimizer: int) -> dict:
    """The ledger's totals (input, tapes, checkpoints, current, delta, gradients) as CATEGORIES."""
    _, tapes, checkpoints, current, delta, gradients = totals
    return dict(zip(CATEGORIES, (params, optimizer, gradients, tapes, checkpoints, current + delta)))


def predicted_timeline(c: Config) -> pd.DataFrame:
    """The memory model's bytes by category after each action of c's schedule (symbolic backend)."""
    import ckpt
    from ckpt.memory import symbolic_inputs
    model, schedule = _model(c), _schedule(c)
    params, optimizer = _resident(model, c)
    x, y = symbolic_inputs(model, c.batch)
    run = ckpt.executor.start(schedule, ckpt.SymbolicBackend(model), x, y if c.mode == "train" else None)
    rows = [{"step": 0, "action": "start", **_by_category(run.ledger.totals, params, optimizer)}]
    for k, a in enumerate(schedule.actions, 1):
        run.steps([a])
        rows.append({"step": k, "action": repr(a), **_by_category(run.ledger.totals, params, optimizer)})
    return pd.DataFrame(rows)


def numpy_timeline(c: Config, seed: int = 0) -> pd.DataFrame:
    """tracemalloc after each action of c's schedule on the numpy backend, and its peak during the action."""
    import ckpt
    model, schedule = _model(c), _schedule(c)
    params, optimizer = _resident(model, c)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((c.batch, c.width)).astype(c.dtype)
    y = rng.standard_normal((c.batch, c.width)).astype(c.dtype) if c.mode == "train" else None
    backend = ckpt.NumpyBackend(model)
    ckpt.execute(schedule, backend, x[:1].copy(), None if y is None else y[:1].copy())     # warm caches
    owner = not tracemalloc.is_tracing()
    if owner:
        tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        run = ckpt.executor.start(schedule, backend, x, y)
        rows = [{"step": 0, "action": "start", "held": tracemalloc.get_traced_memory()[0] - base, "peak": 0}]
        for k, a in enumerate(schedule.actions, 1):
            tracemalloc.reset_peak()
            run.steps([a])
            held, peak = tracemalloc.get_traced_memory()
            rows.append({"step": k, "action": repr(a), "held": held - base, "peak": peak - base})
    finally:
        if owner:
            tracemalloc.stop()
    df = pd.DataFrame(rows)
    return df.assign(held=df["held"] + params + optimizer, peak=df["peak"] + params + optimizer)


def torch_timeline(c: Config) -> pd.DataFrame:
    """Bytes held by torch's CPU allocator over one step of c's torch workload (after a warm-up step)."""
    from .meters import TorchCPUMeter
    w = TorchWorkload(Config.from_dict({**c.as_dict(), "backend": "torch", "device": "cpu"}))
    w.warm_up()
    with TorchCPUMeter() as meter:
        w.step()
    resident = w.param_bytes
    return pd.DataFrame([{"ms": t.ns / 1e6, "held": t.held + resident, "gradients": t.gradients}
                         for t in meter.timeline])


def timelines(c: Config, strategies, backends=("numpy", "torch")) -> dict:
    """{line: {"predicted": frame, "numpy": frame, "torch": frame}} for each strategy's training step and prediction."""
    out = {}
    configs = [(s, Config.from_dict({**c.as_dict(), "strategy": s, "mode": "train"})) for s in strategies]
    configs.append(("predict", Config.from_dict({**c.as_dict(), "strategy": "store_all", "mode": "predict",
                                                  "optimizer": "none"})))
    for _, config in configs:
        validate(config)                               # every one before any work
    for line, config in configs:
        out[line] = {"predicted": predicted_timeline(config)}
        if "numpy" in backends:
            out[line]["numpy"] = numpy_timeline(config)
        if "torch" in backends:
            out[line]["torch"] = torch_timeline(config)
    return out


def _stack(ax, pred: pd.DataFrame) -> None:
    ax.stackplot(pred["step"], *(pred[k] / MIB for k in CATEGORIES), labels=CATEGORIES, colors=COLORS,
                 step="post", alpha=0.85)


def plot_timelines(tl: dict, c: Config, path: Path) -> Path:
    """One row per strategy (and prediction): predicted stack, measured numpy, measured torch; shared y per row."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kinds = [k for k in ("predicted", "numpy", "torch") if any(k in v for v in tl.values())]
    fig, axes = plt.subplots(len(tl), len(kinds), figsize=(5.2 * len(kinds), 2.7 * len(tl)), squeeze=False)
    top = max(max(v["predicted"][list(CATEGORIES)].sum(axis=1).max(),
                  v["numpy"]["peak"].max() if "numpy" in v else 0,
                  v["torch"]["held"].max() if "torch" in v else 0) for v in tl.values()) / MIB * 1.08
    for row, (line, v) in zip(axes, tl.items()):
        loss = v["predicted"].index[v["predicted"]["action"] == "Loss()"]
        for ax, kind in zip(row, kinds):
            if len(loss) and kind != "torch":
                ax.axvline(loss[0], color="gray", ls="--", lw=0.8)
                ax.annotate("loss: forward ends", (loss[0], 0.02 * top), fontsize=7, color="gray",
                            xytext=(3, 0), textcoords="offset points")
            if kind == "predicted":
                _stack(ax, v["predicted"])
                ax.set_xlabel("action of the schedule")
            elif kind == "numpy":
                d = v["numpy"]
                ax.fill_between(d["step"], d["held"] / MIB, d["peak"] / MIB, step="post", color="tab:orange",
                                alpha=0.3, label="peak during the action")
                ax.step(d["step"], d["held"] / MIB, where="post", color="black", label="held after the action")
                ax.set_xlabel("action of the schedule")
            else:
                d = v["torch"]
                ax.step(d["ms"], d["held"] / MIB, where="post", color="black", label="held (torch CPU allocator)")
                ax.set_xlabel("time in the step, ms (slowed by the profiler)")
            ax.set_ylim(0, top)
            ax.grid(True, alpha=0.3)
            ax.set_ylabel("MiB (params included)", fontsize=8)
            source = {"predicted": "predicted (memory model, numpy engine's stages)", "numpy": "measured: tracemalloc, numpy",
                      "torch": "measured: torch CPU allocator"}[kind]
            ax.set_title(f"{line if line == 'predict' else line + ' training step'} — {source}", fontsize=9)
    axes[0][0].legend(fontsize=7, loc="upper left")
    for j, kind in enumerate(kinds[1:], 1):
        axes[0][j].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Memory over one step: depth {c.depth}, width {c.width}, batch {c.batch}, {c.dtype}, "
                 f"optimizer {c.optimizer}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def to_frame(tl: dict) -> pd.DataFrame:
    """Every timeline as one tidy frame: line, source, step or ms, bytes columns."""
    return pd.concat([d.assign(line=line, source=kind) for line, v in tl.items() for kind, d in v.items()],
                     ignore_index=True)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """The ``timeline`` subcommand's parser."""
    p = subparsers.add_parser("timeline", help="memory over one training step and one prediction, per strategy")
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--optimizer", default="sgd", choices=list(STATE_SLOTS))
    p.add_argument("--strategy", nargs="+", default=["store_all", "sqrt_n", "recompute"])
    p.add_argument("--backend", nargs="+", default=["numpy", "torch"], choices=["numpy", "torch"],
                   help="measured columns beside the prediction")
    p.add_argument("--out", required=True, help="folder for timeline.png and timeline.csv")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """Write ``timeline.png`` and ``timeline.csv`` for one configuration into ``args.out``; 0 on success."""
    c = validate(Config(backend="numpy", depth=args.depth, width=args.width, batch=args.batch, dtype=args.dtype,
                        optimizer=args.optimizer))
    from .sweep import check_out
    out = check_out(args.out)
    tl = timelines(c, args.strategy, tuple(args.backend))
    to_frame(tl).to_csv(out / "timeline.csv", index=False)
    print(f"timeline: {plot_timelines(tl, c, out / 'timeline.png')}")
    return 0
