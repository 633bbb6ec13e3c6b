"""ckpt: backprop whose activation memory is a schedule you choose.

    model = ckpt.MLP([784, 256, 256, 10], activation="relu", loss="cross_entropy")
    result = ckpt.gradients(model, x, y, strategy="sqrt_n")   # loss, grads, stats
    ckpt.predict_memory(model, "sqrt_n", batch=128).peak_bytes
    ckpt.train_step(model, x, y, ckpt.optim.Adam(model.params), strategy="sqrt_n")  # fused update
"""

from __future__ import annotations

from . import optim
from .backends import NumpyBackend, SymbolicArray, SymbolicBackend
from .backends.numpy_backend import NonFiniteError
from .chain import MLP, Chain
from .executor import Residual, Result, Stats, execute
from .layers import Dense
from .memcheck import InsufficientMemoryError, check_fits, check_step, memory_limits
from .memory import peak_residuals, predict_memory, print_peak_residuals
from .planners import chen_greedy, min_feasible_budget, optimal, parse_bytes, pareto, revolve
from .profile import Profile, StageCost, schedule_for
from .schedule import (Backward, Forward, ForwardTape, Free, Load, Loss, Save, Schedule,
                       ScheduleError, Update, fuse_updates)
from .strategies import (every_segment, forward_only, get_strategy, make_schedule, needs_profile,
                         recompute, register_strategy, sqrt_n, store_all, strategies)


def gradients(model: Chain, x, y, strategy="store_all", *, memory_check: bool = True,
              nonfinite: str = "raise", **options) -> Result:
    """One training step's loss, gradients and stats on numpy, with the chosen strategy.

    Refused before any work when the memory model's predicted peak does not fit
    (``memory_check=False`` skips that); NaN or inf raises ``NonFiniteError``
    naming the first stage it appeared in (``nonfinite="warn"`` or ``"ignore"``).
    """
    if "fused" in options:
        raise TypeError("ckpt: gradients returns the gradients, so it has no fused optimizer step; "
                        "use ckpt.train_step(model, x, y, optimizer, strategy, fused=True)")
    backend = NumpyBackend(_check_model(model), nonfinite=nonfinite)
    strategy = forward_only if strategy == "forward_only" else strategy     # named: refused as prediction below
    schedule = _training_schedule(model, backend, x, y, strategy, memory_check, False, options)
    return execute(schedule, backend, x, y)


def train_step(model: Chain, x, y, optimizer: optim.Optimizer, strategy="store_all", *, fused: bool = True,
               memory_check: bool = True, nonfinite: str = "raise", **options) -> Result:
    """One training step that also updates the parameters with ``optimizer`` (a ``ckpt.optim`` one).

    ``fused=True`` applies each stage's update right after its backward and drops
    its gradients; ``fused=False`` applies the same updates after the backward.
    The parameters end bitwise equal either way.  The updates use the gradient
    buffers as scratch, so ``Result.grads`` is None per stage in both modes
    (use ``gradients`` and ``optimizer.step(grads)`` to see them).
    """
    if not isinstance(optimizer, optim.Optimizer):
        raise TypeError(f"ckpt: train_step needs a ckpt.optim optimizer (SGD, Momentum, Adam), "
                        f"got {type(optimizer).__name__}")
    if len(optimizer.params) != len(_check_model(model)) or any(
            a is not b for d, e in zip(optimizer.params, model.params) for a, b in zip(d.values(), e.values())):
        raise ValueError("ckpt: the optimizer was built on another model's parameters; "
                         "build it with ckpt.optim.Adam(model.params)")
    backend = NumpyBackend(model, optimizer=optimizer, nonfinite=nonfinite)
    schedule = _training_schedule(model, backend, x, y, strategy, memory_check, fused, options)
    result = execute(schedule, backend, x, y)
    if not fused:
        for i in range(len(model), 0, -1):          # the order a fused step runs (as optimizer.step)
            backend.update(i, result.grads[i - 1])
            result.grads[i - 1] = None
    return result


def _check_model(model) -> Chain:
    if not isinstance(model, Chain):
        raise TypeError(f"ckpt: model must be a ckpt.Chain (e.g. ckpt.MLP([...])), got {type(model).__name__}; "
                        f"torch modules go through ckpt.CheckpointedSequential")
    return model


def _training_schedule(model, backend, x, y, strategy, memory_check: bool, fused: bool, options: dict):
    """The validated training schedule; refused (before any work) for a prediction one, bad inputs, or no room."""
    batch = len(x) if needs_profile(strategy) else None        # planners profile x's batch
    schedule = schedule_for(model, strategy, batch=batch, fused=fused, **options)
    if not schedule.is_training:
        name = strategy if isinstance(strategy, str) else getattr(strategy, "__name__", repr(strategy))
        raise ValueError(f"ckpt: strategy {name!r} builds a prediction schedule (no Loss, no Backward), "
                         f"so it has no gradients; use ckpt.forward(model, x) for outputs, or a training "
                         f"strategy: {', '.join(strategies())}")
    backend.check_inputs(len(model), x, y)
    if not isinstance(memory_check, bool):
        raise TypeError(f"ckpt: memory_check must be True or False, got {memory_check!r}")
    if memory_check:
        check_step(model, int(x.shape[0]), strategy, fused=fused, **options)
    return schedule


def forward(model: Chain, x):
    """The model's output for x, keeping no tapes (prediction)."""
    return execute(forward_only(len(_check_model(model))), NumpyBackend(model), x).output


__all__ = [
    "MLP", "Chain", "Dense", "Schedule", "ScheduleError", "Result", "Stats",
    "Forward", "ForwardTape", "Save", "Load", "Free", "Loss", "Backward", "Update", "fuse_updates",
    "train_step", "optim", "NonFiniteError", "InsufficientMemoryError", "check_fits", "memory_limits",
    "store_all", "recompute", "sqrt_n", "every_segment", "forward_only", "register_strategy", "get_strategy",
    "strategies", "make_schedule", "execute", "gradients", "forward", "predict_memory",
    "peak_residuals", "print_peak_residuals", "Residual",
    "NumpyBackend", "SymbolicBackend", "SymbolicArray",
    "Profile", "StageCost", "schedule_for", "needs_profile", "revolve", "optimal", "pareto",
    "chen_greedy", "min_feasible_budget", "parse_bytes",
]


# torch wrappers, imported on first use so that numpy-only use never imports torch
_TORCH_NAMES = ("CheckpointedSequential", "checkpoint_sequential", "checkpoint_modules",
                "remove_checkpointing", "CheckpointError", "saved_residuals", "print_saved_residuals",
                "saved_bytes")


def __getattr__(name):
    if name in _TORCH_NAMES:
        import importlib
        return getattr(importlib.import_module(".torch", __name__), name)
    raise AttributeError(f"module 'ckpt' has no attribute {name!r}")
