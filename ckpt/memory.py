"""The memory model: a schedule executed on shapes alone predicts peak bytes and step counts.

``model`` is a numpy ``Chain`` (run on its shapes by ``SymbolicBackend``) or a
``ckpt.Profile`` (run on its byte counts by ``ProfileBackend``: torch models
too); both count the same bytes for the same chain.
"""

from __future__ import annotations

import numpy as np

from .backends.symbolic import ProfileBackend, SymbolicArray, SymbolicBackend
from .executor import Residual, Stats, execute, start
from .profile import Profile
from .schedule import Schedule
from .strategies import forward_only, make_schedule, needs_profile


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


def symbolic_setup(model, batch: int = 1):
    """The symbolic backend, x and y for ``model`` (a Chain and batch, or a Profile)."""
    if isinstance(model, Profile):
        backend = ProfileBackend(model)
        return backend, *backend.inputs()
    return SymbolicBackend(model), *symbolic_inputs(model, batch)


def _schedule(model, strategy, batch: int, options: dict):
    """``strategy``'s schedule for ``model``, profiling a Chain when the strategy plans from costs."""
    profile = None
    if needs_profile(strategy):
        profile = model if isinstance(model, Profile) else Profile.from_chain(model, batch)
    return make_schedule(strategy, len(model), profile=profile, **options)


def predict_memory(model, strategy="store_all", batch: int = 1, mode: str = "train", fused: bool = False,
                   **options) -> Stats:
    """Predicted peak bytes and step counts of one step of ``model`` (a Chain or a Profile).

    ``fused=True``: the optimizer step is fused into the backward (``Update`` after
    each ``Backward``), so finished stages' gradients leave the peak.  Optimizer
    state is resident, like the parameters, and not counted (``Optimizer.nbytes``).
    The strategy and its options are checked in predict mode too.
    """
    if mode not in ("train", "predict"):
        raise ValueError(f"memory: mode must be 'train' or 'predict', got {mode!r}")
    if mode == "predict" and fused is not False:
        raise ValueError(f"memory: fused={fused!r} fuses the optimizer step into the backward; prediction "
                         f"(mode='predict') has neither: leave fused=False")
    backend, x, y = symbolic_setup(model, batch)
    schedule = strategy if isinstance(strategy, Schedule) else _schedule(model, strategy, batch,
                                                                         {**options, "fused": fused})
    if mode == "predict":
        return execute(forward_only(len(model)), backend, x).stats
    return execute(schedule, backend, x, y).stats


def peak_residuals(model, strategy="store_all", batch: int = 1, **options) -> list[Residual]:
    """Every value held at the predicted peak of a training step, with its bytes and why it is there."""
    backend, x, y = symbolic_setup(model, batch)
    schedule = strategy if isinstance(strategy, Schedule) else _schedule(model, strategy, batch, options)
    run = start(schedule, backend, x, y, explain=True)
    run.steps(schedule.actions)
    return run.peak_residuals                  # taken by the run at the moment it peaked


def print_peak_residuals(model, strategy="store_all", batch: int = 1, **options) -> None:
    """Print ``peak_residuals`` as a table (tapes, checkpoints, current, δ, gradients, in flight) and the total."""
    rows = peak_residuals(model, strategy, batch, **options)
    width = max(len(r.what) for r in rows)
    for r in rows:
        print(f"{r.what:<{width}}  {r.nbytes:>14,d} B")
    print(f"{'total (the predicted peak)':<{width}}  {sum(r.nbytes for r in rows):>14,d} B")
