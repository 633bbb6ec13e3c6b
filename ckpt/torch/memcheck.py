"""The torch wrappers' pre-run memory check: a training step's predicted peak vs what the device may use.

On the first training call per input signature (shapes, dtypes and devices of the
tensor arguments), the wrapped stages are run once each, one at a time, with grad on
and nothing kept from one stage to the next: their output bytes, saved-tensor bytes
(parameters and buffers excluded) and gradient bytes make a bytes-only ``ckpt.Profile``,
and ``ckpt.predict_memory(profile, strategy)`` is the step's predicted peak, compared by
``ckpt.memcheck.check_fits`` with what the process — or the CUDA device — may use.
Parameters' ``.grad``, buffers (BatchNorm running statistics) and the RNG are left as
they were, and the stages' own forward hooks do not fire (their ``forward`` is called).  Checking costs about one extra forward per new input signature, one stage's
memory at a time; ``memory_check=False`` on the wrapper turns it off.

``checkpoint_modules`` blocks take whatever the model passes them, so only block 1's
call is known before the step: when every block has block 1's class and parameter
shapes (a transformer's layers) block 1's costs stand for each; otherwise the step is
not checked.  Optimizer state is not part of the prediction (the wrapper never sees it).
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..memcheck import InsufficientMemoryError, _alternatives, check_fits
from ..profile import Profile, StageCost
from .backend import _refuse_cache
from .hooks import SavedRecorder, storage_key


def signature(args: tuple, kwargs: dict) -> tuple:
    """What a check or a plan depends on: shape, dtype, device and requires_grad of each tensor argument
    (other values by type)."""
    leaves = tree_flatten((args, kwargs))[0]
    return tuple((tuple(t.shape), t.dtype, t.device, t.requires_grad) if isinstance(t, torch.Tensor)
                 else type(t).__name__ for t in leaves)


def _tensors(v) -> list:
    return [t for t in tree_flatten(v)[0] if isinstance(t, torch.Tensor)]


def _nbytes(v) -> int:
    return sum(t.untyped_storage().nbytes() for t in {storage_key(t): t for t in _tensors(v)}.values())


def _as_taped_input(t):
    """A floating tensor as a stage sees it in training: requiring grad, not a leaf (in-place stages work)."""
    if isinstance(t, torch.Tensor) and t.is_floating_point():
        return t.detach().requires_grad_().clone()
    return t


def stage_cost(fn, module, args: tuple, kwargs: dict, resident: set) -> tuple[StageCost, object]:
    """One stage run once with grad: its bytes (``StageCost``, times 0) and its output, detached."""
    leaves, spec = tree_flatten((args, kwargs))
    args, kwargs = tree_unflatten([_as_taped_input(t) for t in leaves], spec)
    recorder = SavedRecorder(resident)
    with torch.enable_grad(), recorder.hooks():
        out = fn(*args, **kwargs)
    saved = {h.key for h in recorder.held.values()}
    keys = lambda v: {storage_key(t) for t in _tensors(v)}
    params = [p for p in getattr(module, "parameters", list)() if p.requires_grad]
    cost = StageCost(0.0, 0.0, output_bytes=_nbytes(out), tape_bytes=recorder.bytes,
                     tape_keeps_input=bool(keys((args, kwargs)) & saved), tape_keeps_output=bool(keys(out) & saved),
                     grad_bytes=sum(p.numel() * p.element_size() for p in params))
    leaves, spec = tree_flatten(out)
    return cost, tree_unflatten([t.detach() if isinstance(t, torch.Tensor) else t for t in leaves], spec)


class LeftAsItWas:
    """Run code whose side effects must not show (profiling the stages): the RNG, every buffer and the
    parameters' ``.grad`` are as they were afterwards (gradients are None inside)."""

    def __init__(self, modules: list, devices: list):
        self.modules, self.devices = [m for m in modules if isinstance(m, torch.nn.Module)], devices

    def __enter__(self):
        self.rng = torch.random.fork_rng(devices=self.devices)
        self.rng.__enter__()
        self.buffers = [(b, b.detach().clone()) for m in self.modules for b in m.buffers()]
        self.grads = [(p, p.grad) for m in self.modules for p in m.parameters()]
        for p, _ in self.grads:
            p.grad = None

    def __exit__(self, *exc):
        with torch.no_grad():
            for b, saved in self.buffers:
                b.copy_(saved)
        for p, g in self.grads:
            p.grad = g
        self.rng.__exit__(*exc)


def _resident(modules) -> set:
    return {storage_key(t) for m in modules if isinstance(m, torch.nn.Module)
            for t in (*m.parameters(), *m.buffers())}


def devices_of(tensors) -> list:
    return sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})


def chain_profile(stages: list, x) -> Profile:
    """Bytes-only profile of a chain (each stage's output is the next one's input)."""
    resident, costs, value = _resident(stages), [], x
    with LeftAsItWas(stages, devices_of(_tensors(x))):
        for stage in stages:
            fn = stage.forward if isinstance(stage, torch.nn.Module) else stage    # its hooks fire once, in the step
            cost, value = stage_cost(fn, stage, (value,), {}, resident)
            costs.append(cost)
    return Profile(tuple(costs), _nbytes(x), source="torch stages, bytes only (memory check)")


def _alike(blocks: list) -> bool:
    shapes = lambda b: (type(b), tuple(tuple(p.shape) for p in b.parameters()))
    return all(shapes(b) == shapes(blocks[0]) for b in blocks)


def repeated_block_profile(blocks: list, forward, args: tuple, kwargs: dict) -> Profile | None:
    """Block 1's costs for every block, when all blocks are alike; None otherwise (not checkable)."""
    if not _alike(blocks):
        return None
    _refuse_cache(1, kwargs)                           # profiling it would append to the cache
    with LeftAsItWas(blocks, devices_of(_tensors((args, kwargs)))):
        cost, _ = stage_cost(forward, blocks[0], args, kwargs, _resident(blocks))
    return Profile((cost,) * len(blocks), _nbytes(args[:1]), source="block 1 repeated, bytes only (memory check)")


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
            tensors = _tensors((args, kwargs))
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
