"""Checkpointing for real torch models: any strategy's schedule, as a drop-in module or function.

    model = ckpt.CheckpointedSequential(nn.Sequential(*blocks), strategy="sqrt_n")
    loss = loss_fn(model(x), y); loss.backward()          # gradients as without checkpointing

    y = ckpt.checkpoint_sequential(blocks, segments=4, input=x)   # torch's call shape

The whole chain runs inside one ``torch.autograd.Function``: its forward runs
the schedule's actions before ``Loss()`` and returns x_n (the user's loss is
outside the chain); its backward receives δ_n as grad_output and runs the rest.
Parameters are inputs of that Function and their gradients are returned, so
``loss.backward()`` accumulates ``.grad`` as usual and ``torch.autograd.grad``
works.  Without grad (``torch.no_grad()``, or nothing requires grad) the stages
simply run in order and keep no tapes.

Differences from ``torch.utils.checkpoint.checkpoint_sequential``: every
segment is checkpointed (torch stores the last one), ``segments`` larger than
the number of stages means one stage per segment, recomputation replays the RNG
(dropout masks match) and does not update BatchNorm running statistics again
(pytorch#96136), and the model may take and pass tuples of tensors.
Saved-tensor hooks in force at the forward (``torch.autograd.graph.save_on_cpu``
and the like) apply to every tape, recomputed ones included.  The wrappers add
no hooks of their own unless asked to count bytes (``track_memory=True``).

Limits of one autograd Function: parameter gradients reach autograd when the
chain's backward ends, so with gradients already present
(``zero_grad(set_to_none=False)``, accumulation) one set of the chain's
gradients is transient at the end; autograd holds δ_n (grad_output) for the
whole backward.  Double backward (``create_graph=True``) is not supported.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import ExitStack
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.batchnorm import _NormBase

from .backends.torch_backend import (RngState, TorchBackend, Upstream, items, kind, outer_saved_hooks,
                                     rebuild, storage_key)
from .executor import Stats, start
from .schedule import Backward, Forward, ForwardTape, Load, Loss, Schedule
from .strategies import every_segment, make_schedule


class _Stage(nn.Module):
    """A plain callable as a stage of a ``CheckpointedSequential``."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


def _as_modules(modules) -> OrderedDict:
    if isinstance(modules, nn.Sequential):
        return OrderedDict(modules.named_children())
    if isinstance(modules, OrderedDict):
        pairs = modules.items()
    elif isinstance(modules, (list, tuple, nn.ModuleList)):
        pairs = ((str(k), m) for k, m in enumerate(modules))
    else:
        raise TypeError(f"ckpt.torch: expected an nn.Sequential, a list of modules/callables or an "
                        f"OrderedDict of them, got {type(modules).__name__}; wrap a single module "
                        f"as [module]")
    out = OrderedDict()
    for name, m in pairs:
        if not callable(m):
            raise TypeError(f"ckpt.torch: stage {name!r} is a {type(m).__name__}, not a module or "
                            f"callable")
        out[name] = m if isinstance(m, nn.Module) else _Stage(m)
    if not out:
        raise ValueError("ckpt.torch: a checkpointed chain needs at least one stage, got none")
    return out


class CheckpointedSequential(nn.Sequential):
    """An ``nn.Sequential`` whose training step follows a checkpointing strategy's schedule.

    ``strategy`` is a registered name (``ckpt.strategies()``) or a function
    ``(n, **options) -> Schedule``; ``options`` go to it (e.g. ``segments=4``).
    Each top-level module is one stage.  State-dict keys are those of the
    ``nn.Sequential`` it wraps.  After each backward, ``last_stats`` holds the
    executor's step counts and, with ``track_memory=True``, its byte peaks (peak
    saved bytes as torch keeps them), counted at a cost of a few µs per stage.
    """

    def __init__(self, modules, strategy="sqrt_n", preserve_rng_state: bool = True,
                 track_memory: bool = False, **options):
        super().__init__(_as_modules(modules))
        self.strategy, self.options = strategy, options
        self.preserve_rng_state, self.track_memory = preserve_rng_state, track_memory
        self.last_stats: Stats | None = None
        self._plan: _Plan | None = None
        self.schedule          # build now: a bad strategy or option fails here, not mid-training

    @property
    def schedule(self) -> Schedule:
        """The validated schedule for the current number of stages."""
        return self._current_plan().schedule

    def _current_plan(self) -> "_Plan":
        if self._plan is None or self._plan.schedule.n != len(self):
            schedule = make_schedule(self.strategy, len(self), **self.options)
            if not schedule.is_training:
                raise ValueError(f"ckpt.torch: strategy {self.strategy!r} built a prediction "
                                 f"schedule (no Loss()); a CheckpointedSequential needs a training one")
            self._plan = _Plan.of(schedule)
        return self._plan

    def forward(self, *inputs):
        """x_n for input(s) x_0 (several inputs arrive at stage 1 as one tuple)."""
        x = inputs[0] if len(inputs) == 1 else inputs
        return _run_plan(list(self._modules.values()), self._current_plan(), x, self.preserve_rng_state, self,
                         self.track_memory)

    def extra_repr(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"strategy={getattr(self.strategy, '__name__', self.strategy)!r}{opts}"


def checkpoint_sequential(functions, segments: int, input, use_reentrant=None,
                          preserve_rng_state: bool = True, **kwargs):
    """``torch.utils.checkpoint.checkpoint_sequential``'s call, every segment checkpointed.

    ``use_reentrant`` is accepted for compatibility and ignored: the engine is one
    autograd Function.  Other keyword arguments of torch's version are refused.
    """
    if kwargs:
        raise TypeError(f"ckpt.checkpoint_sequential: unsupported arguments {sorted(kwargs)}; "
                        f"supported: functions, segments, input, use_reentrant, preserve_rng_state")
    stages = list(_as_modules(functions).values())
    if not isinstance(segments, int) or isinstance(segments, bool) or segments < 1:
        raise ValueError(f"ckpt.checkpoint_sequential: segments must be an int ≥ 1, got {segments!r}")
    return _run_plan(stages, _segments_plan(len(stages), segments), input, preserve_rng_state)


@lru_cache(maxsize=64)
def _segments_plan(n: int, segments: int) -> "_Plan":
    return _Plan.of(every_segment(n, segments).validate())


# ------------------------------------------------------------------ implementation

def run_chain(stages: list, schedule: Schedule, x, preserve_rng_state: bool = True, owner=None,
              track_memory: bool = False):
    """x_n of the chain; when autograd needs it, a step that follows ``schedule``."""
    return _run_plan(stages, _Plan.of(schedule.validate()), x, preserve_rng_state, owner, track_memory)


def _run_plan(stages: list, plan: "_Plan", x, preserve_rng_state: bool, owner=None, track_memory=False):
    params, per_stage, resident, norms = _scan(stages, track_memory)
    tensors = [t for t in items(x) if isinstance(t, torch.Tensor)]
    if not torch.is_grad_enabled() or not (params or any(t.requires_grad for t in tensors)):
        for stage in stages:
            x = stage(x)
        return x
    call = _Call(stages, plan, x, params, per_stage, resident, norms, preserve_rng_state, owner, track_memory)
    return _ChainFunction.apply(call, *tensors, *params)


def _submodules(module: nn.Module) -> list:
    """``module`` and every module below it, each once (``modules()`` without its generators)."""
    out, seen, k = [module], {id(module)}, 0
    while k < len(out):
        for child in out[k]._modules.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                out.append(child)
        k += 1
    return out


def _scan(stages, with_resident: bool) -> tuple[list, list, frozenset, list]:
    """Parameters requiring grad (each once); per stage its (index, parameter) pairs; resident
    storages (parameters and buffers, when asked: only byte counting needs them); per stage
    its norm layers that track running statistics.

    One walk over each stage's modules: this runs every step.
    """
    index, params, per_stage, resident, norms = {}, [], [], set(), []
    for stage in stages:
        mine, seen, stage_norms = [], set(), []
        for m in (_submodules(stage) if isinstance(stage, nn.Module) else ()):
            if isinstance(m, _NormBase) and m.training and m.track_running_stats:
                stage_norms.append(m)
            if with_resident:
                resident.update(storage_key(t) for t in (*m._buffers.values(), *m._parameters.values())
                                if t is not None)
            for p in m._parameters.values():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                if p.requires_grad:
                    if id(p) not in index:
                        index[id(p)] = len(params)
                        params.append(p)
                    mine.append((index[id(p)], p))
        per_stage.append(mine)
        norms.append(stage_norms)
    return params, per_stage, frozenset(resident), norms


def _autocast_state() -> list:
    """(device type, dtype) for each device type where autocast is on now."""
    types = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [(d, torch.get_autocast_dtype(d)) for d in types if torch.is_autocast_enabled(d)]


def _recomputed(schedule: Schedule) -> frozenset:
    """Stages that ``schedule`` runs forward more than once."""
    counts = {}
    for a in schedule.actions:
        if isinstance(a, (Forward, ForwardTape)):
            counts[a.i] = counts.get(a.i, 0) + 1
    return frozenset(i for i, c in counts.items() if c > 1)


def _replay_starts(schedule: Schedule) -> frozenset:
    """Stages a recomputation starts from (the first forward after a ``Load``).

    Every re-run is ``Load(j)`` then stages j+1, j+2, … in order, as in the first
    sweep, so restoring the RNG state that stage j+1 first saw replays the whole
    run's draws: one RNG state per checkpoint, not per stage.
    """
    acts = schedule.actions
    return frozenset(b.i for a, b in zip(acts, acts[1:])
                     if isinstance(a, Load) and isinstance(b, (Forward, ForwardTape)))


def _joint_backwards(schedule: Schedule) -> tuple[frozenset, dict]:
    """Stages taped right after their predecessor, and runs Backward(j), .., Backward(k) over them.

    The torch backend continues such a stage's graph from its predecessor's and
    backwards a run in one engine call (fewer calls, same arithmetic).
    """
    acts, chained, fuse = schedule.actions, set(), {}
    for p in range(1, len(acts)):
        a = acts[p]
        if isinstance(a, ForwardTape) and acts[p - 1] == ForwardTape(a.i - 1):
            chained.add(a.i)
    p = 0
    while p < len(acts):
        if not isinstance(acts[p], Backward):
            p += 1
            continue
        j = k = acts[p].i
        p += 1
        while p < len(acts) and acts[p] == Backward(k - 1) and k in chained:
            k, p = k - 1, p + 1
        if k < j:
            fuse[j] = k
    return frozenset(chained), fuse


@dataclass(frozen=True)
class _Plan:
    """A schedule and what the torch backend derives from it, computed once per schedule."""

    schedule: Schedule
    split: int                 # actions[:split] run in autograd's forward, the rest in its backward
    recomputed: frozenset
    replay_starts: frozenset
    chained: frozenset
    fuse: dict

    @staticmethod
    def of(schedule: Schedule) -> "_Plan":
        """The plan of a validated training schedule (its callers keep it: it is O(n) to make)."""
        chained, fuse = _joint_backwards(schedule)
        return _Plan(schedule, schedule.actions.index(Loss()), _recomputed(schedule),
                     _replay_starts(schedule), chained, fuse)


class _Call:
    """One training step of a chain: the executor's state between forward and backward."""

    def __init__(self, stages, plan: _Plan, x, params, per_stage, resident, norms, preserve_rng, owner,
                 track_memory):
        self.schedule, self.x, self.owner, self.track_memory = plan.schedule, x, owner, track_memory
        self.x_is_tensor = [isinstance(t, torch.Tensor) for t in items(x)]
        self.split = plan.split
        needs = any(t.requires_grad for t in items(x) if isinstance(t, torch.Tensor))
        input_needs = []
        for ps in per_stage:
            input_needs.append(needs)
            needs = needs or bool(ps)
        devices = {t.device for t in items(x) if isinstance(t, torch.Tensor)} | {p.device for p in params}
        self.cuda_devices = tuple(sorted(d.index or 0 for d in devices if d.type == "cuda"))
        self.n_params, self.autocast = len(params), _autocast_state()
        self.upstream = Upstream()
        self.backend = TorchBackend(stages, per_stage, input_needs, resident=resident,
                                    recomputed=plan.recomputed, replay_starts=plan.replay_starts,
                                    preserve_rng=preserve_rng,
                                    cuda_devices=self.cuda_devices, chained=plan.chained, fuse=plan.fuse,
                                    norms=norms, outer_hooks=outer_saved_hooks(), count_bytes=track_memory)
        self.run = None

    def forward(self):
        self.run = start(self.schedule, self.backend, self.x, self.upstream, account=self.track_memory)
        self.x = None
        self.run.steps(self.schedule.actions[:self.split])
        return self.run.current[1]

    def backward(self, grads: list) -> list:
        run, self.run = self.run, None
        if run is None:
            raise RuntimeError("ckpt.torch: this checkpointed step was already backwarded and its "
                               "tapes are gone; run the forward again (retain_graph=True cannot keep "
                               "a checkpointed chain's tapes)")
        self.upstream.grad = rebuild(kind(run.current[1]), grads)
        rng = RngState(self.cuda_devices) if self.backend.recomputed else None
        try:
            with ExitStack() as stack:
                for device, dtype in self.autocast:
                    stack.enter_context(torch.autocast(device, dtype=dtype))
                run.steps(self.schedule.actions[self.split:])
        finally:
            if rng is not None:
                rng.restore()                 # the caller's RNG stream goes on as without recomputation
            self.upstream.grad = None
        result = run.result(self.schedule)
        if self.owner is not None:
            self.owner.last_stats = result.stats
        param_grads = [None] * self.n_params
        for stage_grads in result.grads:
            for k, g in stage_grads.items():
                param_grads[k] = g if param_grads[k] is None else param_grads[k] + g
        dx = [g for g, is_tensor in zip(items(result.dx), self.x_is_tensor) if is_tensor]
        del run, result                       # autograd may then steal the gradients, not copy them
        return dx + param_grads


class _ChainFunction(torch.autograd.Function):
    """Runs a schedule: actions before Loss() in forward, the rest in backward."""

    @staticmethod
    def forward(ctx, call, *tensors):
        out = call.forward()
        ctx.call = call
        values = items(out)
        for v in values:
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"ckpt.torch: the last stage must return a tensor or a tuple of tensors, "
                                f"got an item of type {type(v).__name__}; return tensors only")
        plain = [v.detach() for v in values]
        ctx.mark_non_differentiable(*[p for p in plain if not (p.is_floating_point() or p.is_complex())])
        return tuple(plain) if kind(out) is not None else plain[0]

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        call, ctx.call = ctx.call, None
        if call is None:
            raise RuntimeError("ckpt.torch: this checkpointed step was already backwarded; run the "
                               "forward again")
        return (None, *call.backward(list(grads)))
