"""ckpt: backprop whose activation memory is a schedule you choose.

    model = ckpt.MLP([784, 256, 256, 10], activation="relu", loss="cross_entropy")
    result = ckpt.gradients(model, x, y, strategy="sqrt_n")   # loss, grads, stats
    ckpt.predict_memory(model, "sqrt_n", batch=128).peak_bytes
"""

from __future__ import annotations

from .backends import NumpyBackend, SymbolicArray, SymbolicBackend
from .chain import MLP, Chain
from .executor import Residual, Result, Stats, execute
from .layers import Dense
from .memory import peak_residuals, predict_memory, print_peak_residuals
from .planners import chen_greedy, min_feasible_budget, optimal, parse_bytes, pareto, revolve
from .profile import Profile, StageCost, schedule_for
from .schedule import (Backward, Forward, ForwardTape, Free, Load, Loss, Save, Schedule,
                       ScheduleError)
from .strategies import (every_segment, forward_only, get_strategy, make_schedule, needs_profile,
                         recompute, register_strategy, sqrt_n, store_all, strategies)


def gradients(model: Chain, x, y, strategy="store_all", **options) -> Result:
    """One training step's loss, gradients and stats on numpy, with the chosen strategy (planners profile x's batch)."""
    batch = len(x) if needs_profile(strategy) else None
    return execute(schedule_for(model, strategy, batch=batch, **options), NumpyBackend(model), x, y)


def forward(model: Chain, x):
    """The model's output for x, keeping no tapes (prediction)."""
    return execute(forward_only(len(model)), NumpyBackend(model), x).output


__all__ = [
    "MLP", "Chain", "Dense", "Schedule", "ScheduleError", "Result", "Stats",
    "Forward", "ForwardTape", "Save", "Load", "Free", "Loss", "Backward",
    "store_all", "recompute", "sqrt_n", "every_segment", "forward_only", "register_strategy", "get_strategy",
    "strategies", "make_schedule", "execute", "gradients", "forward", "predict_memory",
    "peak_residuals", "print_peak_residuals", "Residual",
    "NumpyBackend", "SymbolicBackend", "SymbolicArray",
    "Profile", "StageCost", "schedule_for", "needs_profile", "revolve", "optimal", "pareto",
    "chen_greedy", "min_feasible_budget", "parse_bytes",
]


# torch wrappers, imported on first use so that numpy-only use never imports torch
_TORCH_NAMES = {
    "CheckpointedSequential": "torch_api", "checkpoint_sequential": "torch_api",
    "saved_residuals": "inspect_torch",
    "print_saved_residuals": "inspect_torch", "saved_bytes": "inspect_torch",
}


def __getattr__(name):
    if name in _TORCH_NAMES:
        import importlib
        return getattr(importlib.import_module(f".{_TORCH_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'ckpt' has no attribute {name!r}")
