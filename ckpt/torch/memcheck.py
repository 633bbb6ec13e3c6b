"""The torch wrappers' pre-run memory check: a training step's predicted peak vs what the device may use.

On the first training call per input signature (shapes, dtypes and devices of the
tensor arguments), the wrapped stages are run once each, one at a time, with grad on
and nothing kept from one stage to the next: their bytes, measured as ``Profile.from_torch``
measures them (``ckpt.torch.measure.stage_bytes``, times and transients 0), make a
bytes-only ``ckpt.Profile``, and ``ckpt.predict_memory(profile, strategy)`` is the step's
predicted peak, compared by ``ckpt.memcheck.check_fits`` with what the process — or the
CUDA device — may use.  Parameters' ``.grad``, buffers (BatchNorm running statistics) and
the RNG are left as they were, and the stages' own forward hooks do not fire (their
``forward`` is called).  Checking costs about one extra forward per new input signature,
one stage's memory at a time; ``memory_check=False`` on the wrapper turns it off.

``checkpoint_modules`` blocks take whatever the model passes them, so only block 1's
call is known before the step: when every block has block 1's class and parameter
shapes (a transformer's layers) block 1's costs stand for each; otherwise the step is
not checked.  Optimizer state is not part of the prediction (the wrapper never sees it).
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..memcheck import InsufficientMemoryError, _alternatives, check_fits
from ..profile import Profile
from .backend import _refuse_cache
from .measure import (LeftAsItWas, chain_bytes, devices_of, nbytes_of, profile_of, resident_keys, stage_bytes,
                      tensors_of, trainable)


def signature(args: tuple, kwargs: dict) -> tuple:
    """What a check or a plan depends on: shape, dtype, device and requires_grad of each tensor argument
    (other values by type)."""
    leaves = tree_flatten((args, kwargs))[0]
    return tuple((tuple(t.shape), t.dtype, t.device, t.requires_grad) if isinstance(t, torch.Tensor)
                 else type(t).__name__ for t in leaves)


def chain_profile(stages: list, x) -> Profile:
    """Bytes-only profile of a chain (each stage's output is the next one's input)."""
    with LeftAsItWas(stages, devices_of(tensors_of(x))):
        costs = [cost for _, cost, _ in chain_bytes(stages, x, call=_forward_of)]
    return profile_of(costs, nbytes_of(x), source="torch stages, bytes only (memory check)")


def _forward_of(stage):
    """What the check calls: a module's ``forward`` (its hooks fire once, in the step), else the callable."""
    return stage.forward if isinstance(stage, torch.nn.Module) else stage


def _alike(blocks: list) -> bool:
    """Whether every block is block 1's like: class, printed form (torch layers print the settings that
    decide their bytes: a Conv2d's stride, padding, dilation) and parameter and buffer shapes."""
    def form(b):
        tensors = (*b.parameters(), *b.buffers()) if isinstance(b, torch.nn.Module) else ()
        return type(b), repr(b), tuple(tuple(t.shape) for t in tensors)
    return all(form(b) == form(blocks[0]) for b in blocks)


def repeated_block_profile(blocks: list, forward, args: tuple, kwargs: dict) -> Profile | None:
    """Block 1's costs for every block, when all blocks are alike; None otherwise (not checkable).

    Block 1 is measured as blocks 2..n are called: its first argument (the chain value) requires
    grad when the blocks have parameters that do (it is then a previous block's output)."""
    if not _alike(blocks):
        return None
    _refuse_cache(1, kwargs)                           # profiling it would append to the cache
    params = trainable(blocks[0])
    if args and params:
        args = (_requiring_grad(args[0]), *args[1:])
    with LeftAsItWas(blocks, devices_of(tensors_of((args, kwargs)))):
        cost, _ = stage_bytes(forward, params, args, kwargs, resident_keys(blocks))
    return profile_of((cost,) * len(blocks), nbytes_of(args[:1]), source="block 1 repeated, bytes only (memory check)")


def _requiring_grad(value):
    """``value`` with its floating tensors requiring grad (detached where they did not)."""
    leaves, spec = tree_flatten(value)
    return tree_unflatten([t.detach().requires_grad_() if isinstance(t, torch.Tensor) and t.is_floating_point()
                           and not t.requires_grad else t for t in leaves], spec)


class MemoryGuard:
    """The wrapper's check: once per input signature, before the first training step with it."""

    def __init__(self, enabled: bool, strategy, options: dict, budget=None):
        if not isinstance(enabled, bool):
            raise TypeError(f"ckpt.torch: memory_check must be True or False, got {enabled!r}")
        self.enabled, self.strategy, self.options, self.budget = enabled, strategy, options, budget
        self.checked: set = set()

    def check_chain(self, stages: list, x) -> None:
        """Check a ``CheckpointedSequential`` step on input x (a tensor or a tuple of them)."""
        self._check((x,), {}, lambda: chain_profile(stages, x))

    def check_blocks(self, blocks: list, forward, args: tuple, kwargs: dict) -> None:
        """Check a ``checkpoint_modules`` step from block 1's call (``forward``: its own forward)."""
        self._check(args, kwargs, lambda: repeated_block_profile(blocks, forward, args, kwargs))

    def _check(self, args, kwargs, profile_of) -> None:
        if not self.enabled or not torch.is_grad_enabled():
            return
        key = signature(args, kwargs)
        if key in self.checked:
            return
        strategy, options = self.strategy, self.options
        if self.budget:                                # the plan made for this input, on its own profile
            profile, (strategy, options) = self.budget.profile, (self.budget.current[1], {})
        else:
            profile = profile_of()
        if profile is not None:
            tensors = tensors_of((args, kwargs))
            device = tensors[0].device if tensors else "cpu"
            check_profile_fits(profile, strategy, options, device, f"input {[tuple(t.shape) for t in tensors]}")
        self.checked.add(key)


def check_profile_fits(profile: Profile, strategy, options: dict, device, inputs: str) -> None:
    """Raise ``InsufficientMemoryError`` when the strategy's predicted peak on ``profile`` does not fit."""
    from ..memory import predict_memory
    stats = predict_memory(profile, strategy, **options)
    name = strategy if isinstance(strategy, str) else getattr(strategy, "__name__", repr(strategy))
    what = f"ckpt.torch: strategy {name!r} on {len(profile)} stages ({inputs}; predicted peak of a training step)"
    try:
        check_fits(stats.peak_bytes, device=device, what=what)
    except InsufficientMemoryError:
        check_fits(stats.peak_bytes, device=device, what=what, alternatives=_alternatives(profile, 1, False),
                   steps=stats.forward_steps)
