"""The memory model: a schedule executed on shapes alone predicts peak bytes and step counts."""

from __future__ import annotations

import numpy as np

from .backends.symbolic import SymbolicArray, SymbolicBackend
from .executor import Residual, Stats, execute, start
from .strategies import forward_only, make_schedule


def symbolic_inputs(model, batch: int) -> tuple[SymbolicArray, SymbolicArray]:
    """Symbolic x (batch, in_features) and y fitting the model's loss (labels for cross-entropy)."""
    if not hasattr(model, "stages") or not hasattr(model, "loss"):
        raise TypeError(f"memory: model must be a ckpt.Chain (e.g. ckpt.MLP([...])), got {type(model).__name__}")
    if not isinstance(batch, (int, np.integer)) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"memory: batch must be an int ≥ 1, got {batch!r}")
    x = SymbolicArray((batch, model.stages[0].in_features), model.dtype)
    out_shape = model.shapes(x.shape)[-1]
    if model.loss.name == "cross_entropy":
        return x, SymbolicArray((batch,), np.int64)
    return x, SymbolicArray(out_shape, model.dtype)


def predict_memory(model, strategy="store_all", batch: int = 1, mode: str = "train", fused: bool = False,
                   **options) -> Stats:
    """Predicted peak bytes and step counts of one step of ``model`` (train or predict mode).

    ``fused=True``: the optimizer step is fused into the backward (``Update`` after
    each ``Backward``), so finished stages' gradients leave the peak.  Optimizer
    state is resident, like the parameters, and not counted (``Optimizer.nbytes``).
    The strategy and its options are checked in predict mode too.
    """
    if mode not in ("train", "predict"):
        raise ValueError(f"memory: mode must be 'train' or 'predict', got {mode!r}")
    x, y = symbolic_inputs(model, batch)
    schedule = make_schedule(strategy, len(model), fused=fused, **options)
    if mode == "predict":
        return execute(forward_only(len(model)), SymbolicBackend(model), x).stats
    return execute(schedule, SymbolicBackend(model), x, y).stats


def peak_residuals(model, strategy="store_all", batch: int = 1, **options) -> list[Residual]:
    """Every value held at the predicted peak of a training step, with its bytes and why it is there."""
    x, y = symbolic_inputs(model, batch)
    schedule = make_schedule(strategy, len(model), **options)
    peak = execute(schedule, SymbolicBackend(model), x, y).stats
    during = peak.peak_breakdown["in_flight"] > 0
    run = start(schedule, SymbolicBackend(model), x, y, explain=True)
    run.steps(schedule.actions[:peak.peak_action + (0 if during else 1)])
    action = schedule.actions[peak.peak_action]
    return run.residuals(peak.peak_breakdown["in_flight"], action)


def print_peak_residuals(model, strategy="store_all", batch: int = 1, **options) -> None:
    """Print ``peak_residuals`` as a table (tapes, checkpoints, current, δ, gradients, in flight) and the total."""
    rows = peak_residuals(model, strategy, batch, **options)
    width = max(len(r.what) for r in rows)
    for r in rows:
        print(f"{r.what:<{width}}  {r.nbytes:>14,d} B")
    print(f"{'total (the predicted peak)':<{width}}  {sum(r.nbytes for r in rows):>14,d} B")
