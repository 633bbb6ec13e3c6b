"""Checkpointing for real torch models: any strategy's schedule, on autograd's own graph.

    model = ckpt.CheckpointedSequential(nn.Sequential(*blocks), strategy="sqrt_n")
    model = ckpt.CheckpointedSequential(blocks, budget="6GiB")   # optimal, planned per input signature
    y = ckpt.checkpoint_sequential(blocks, segments=4, input=x)       # torch's call shape
    with ckpt.checkpoint_modules(model.transformer.h, strategy="sqrt_n"):   # in place, undoable
        loss = model(ids, labels=ids).loss

See ``ckpt.torch.backend`` for how a schedule runs.  Differences from
``torch.utils.checkpoint``: every segment of ``checkpoint_sequential`` is
checkpointed (torch tapes the last one), recomputation replays the RNG and does
not update BatchNorm running statistics again (pytorch#96136), and blocks that
modify their input in place are fused with the block before them.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from contextlib import contextmanager
from functools import lru_cache

from torch import nn

from ..executor import Stats
from ..profile import Profile
from ..schedule import Schedule
from ..strategies import every_segment
from .backend import ChainRunner, CheckpointError, replay_state_bytes  # noqa: F401 (re-exported)
from .measure import LeftAsItWas, devices_of, tensors_of
from .memcheck import MemoryGuard, signature


class _Stage(nn.Module):
    """A plain callable as a stage of a ``CheckpointedSequential``."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

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
            raise TypeError(f"ckpt.torch: stage {name!r} is a {type(m).__name__}, not a module or callable")
        out[name] = m if isinstance(m, nn.Module) else _Stage(m)
    if not out:
        raise ValueError("ckpt.torch: a checkpointed chain needs at least one stage, got none")
    return out


def _run_chain(runner: ChainRunner, stages: list, x):
    step = runner.start()
    if step is None:
        for stage in stages:
            x = stage(x)
        return x
    for k, stage in enumerate(stages, start=1):
        x = step.call(k, stage, (x,), {})
    return x


class _PlanView:
    """What a wrapper over a ``ChainRunner`` (``_runner``) shows of its plan: schedule, profile, last stats."""

    @property
    def schedule(self) -> Schedule | None:
        """The validated schedule over the planned stages (with a budget: None until the first call plans)."""
        if self.budget and self.budget.current is None:
            return None
        return self._runner.plan().schedule

    @property
    def profile(self) -> Profile | None:
        """With a budget: the cost profile the current schedule was planned from."""
        return self.budget and self.budget.profile

    @property
    def last_stats(self) -> Stats | None:
        """Counts (and bytes, with ``track_memory``) of the latest training step."""
        return self._runner.last_stats


class CheckpointedSequential(_PlanView, nn.Sequential):
    """An ``nn.Sequential`` whose training step follows a checkpointing strategy's schedule.

    ``strategy`` is a registered name (``ckpt.strategies()``) or a function
    ``(n, **options) -> Schedule``; ``options`` go to it (e.g. ``segments=4``).
    Each top-level module is one stage (a stage that modifies its input in place is
    fused with the one before it).  State-dict keys are those of the wrapped
    ``nn.Sequential``.  After each forward, ``last_stats`` holds the executor's
    step counts (complete once the backward has run) and, with
    ``track_memory=True``, its byte peaks (saved bytes as torch keeps them).
    The first training call per input shape is refused (``InsufficientMemoryError``) when
    its predicted peak does not fit (``ckpt.torch.memcheck``; ``memory_check=False``: not checked).
    With ``preserve_rng_state`` a step also holds CPU generator states that the predicted peak leaves
    out: at most ``ckpt.torch.replay_state_bytes(schedule)``, 5,056 B each; a ``budget`` plan keeps
    them within the budget too (``BudgetPlans``).  With a ``budget``, ``pool_identical`` (default True)
    gives structurally identical stages one time each when profiling (``Profile.from_torch``).
    """

    def __init__(self, modules, strategy=None, preserve_rng_state: bool = True,
                 track_memory: bool = False, memory_check: bool = True, budget=None,
                 profile: Profile | None = None, pool_identical: bool = True, **options):
        super().__init__(_as_modules(modules))
        self.budget = _budget_plans(budget, profile, strategy, options, "CheckpointedSequential",
                                    preserve_rng_state, pool_identical)
        strategy = strategy or ("optimal" if self.budget else "sqrt_n")
        self._memory = MemoryGuard(memory_check, strategy, options, self.budget)
        self._runner = ChainRunner(list(self._modules.values()), strategy, preserve_rng_state, track_memory,
                                   schedule_fn=self.budget and self.budget.schedule_for, **options)
        self.strategy, self.options = strategy, options
        self.preserve_rng_state, self.track_memory = preserve_rng_state, track_memory

    def forward(self, *inputs):
        """x_n for input(s) x_0 (several inputs arrive at stage 1 as one tuple)."""
        if not inputs:
            raise TypeError("ckpt.torch: CheckpointedSequential needs an input x_0 (model(x)), got none")
        x = inputs[0] if len(inputs) == 1 else inputs
        stages = list(self._modules.values())
        if len(self._runner.blocks) != len(stages):
            self._runner.reset(stages)
            self._memory.checked.clear()
        if self.budget:
            self.budget.plan_for(self._runner, stages, x)
        self._memory.check_chain(stages, x)
        return _run_chain(self._runner, stages, x)

    def extra_repr(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        budget = f", budget={self.budget.budget:,} B" if self.budget else ""
        return f"strategy={getattr(self.strategy, '__name__', self.strategy)!r}{opts}{budget}"


# ------------------------------------------------------------------ byte budgets

class BudgetPlans:
    """``optimal`` schedules for a byte budget, one per input signature (shape, dtype, device, requires_grad).

    The first call with a new signature profiles the stages on that input
    (``Profile.from_torch``, with ``pool_identical``: identical stages timed as one; their
    gradients, buffers and RNG state are left as they were) and plans; later calls with a
    signature seen before reuse its plan.  A ``profile`` given by the user is planned from once, whatever the input.
    With ``preserve_rng_state``, the plan's predicted peak and the CPU generator states its
    re-runs keep (``replay_state_bytes``, which the memory model leaves out) fit the budget
    together; on a GPU those are host bytes, so there the plan is conservative by as much.
    """

    def __init__(self, budget, profile: Profile | None = None, preserve_rng_state: bool = True,
                 pool_identical: bool = True):
        from ..planners import parse_bytes
        self.budget, self.given, self.preserve_rng_state = parse_bytes(budget), profile, preserve_rng_state
        self.pool_identical = pool_identical
        self.plans: dict = {}                 # signature → (profile, schedule)
        self.current = None                   # the (profile, schedule) of the latest call
        if profile is not None:
            self.current = self.plans[None] = (profile, self._optimal(profile))

    @property
    def profile(self) -> Profile | None:
        """The profile of the current plan."""
        return self.current and self.current[0]

    @property
    def plans_made(self) -> int:
        """How many times a schedule was planned (once per signature; once in all with a given profile)."""
        return len(self.plans)

    def plan_for(self, runner: ChainRunner, stages: list, x) -> None:
        """Make the plan for input ``x`` current (planning it if its signature is new)."""
        import torch
        if not torch.is_grad_enabled():
            return                                        # a plain forward: nothing to plan
        key = None if self.given is not None else signature((x,), {})
        plan = self.plans.get(key)
        if plan is None:
            profile = profile_in_isolation(stages, x, self.pool_identical)
            plan = self.plans[key] = (profile, self._optimal(profile))
        if plan is not self.current:
            self.current = plan
            runner.forget_plans()

    def schedule_for(self, n: int) -> Schedule:
        """The current plan's schedule (``ChainRunner``'s schedule function); store_all before any plan."""
        from ..strategies import store_all
        if self.current is None:
            return store_all(n)                           # never run: every step plans first
        schedule = self.current[1]
        if schedule.n != n:
            raise ValueError(f"ckpt.torch: the budget's plan covers {schedule.n} stages but the chain runs {n} "
                             f"(blocks that modify their input in place are fused); budgets need chains "
                             f"without in-place blocks: pass strategy= instead")
        return schedule

    def _optimal(self, profile: Profile) -> Schedule:
        from ..planners import optimal
        schedule = optimal(profile, self.budget)             # an error here names the least feasible budget
        while self.preserve_rng_state and self._over(profile, schedule):
            states = replay_state_bytes(schedule)             # rises with every pass: the loop ends
            try:
                schedule = optimal(profile, self.budget - states)
            except ValueError as error:
                raise ValueError(f"ckpt.torch: a plan fits the budget of {self.budget:,} B, but none with the "
                                 f"{states:,} B of CPU generator states its re-runs keep "
                                 f"(preserve_rng_state=True): raise the budget by up to that much, or pass "
                                 f"preserve_rng_state=False") from error
        return schedule.validate()

    def _over(self, profile: Profile, schedule: Schedule) -> bool:
        """Whether the plan's predicted peak and its generator states exceed the budget together."""
        from ..memory import predict_memory
        return predict_memory(profile, schedule).peak_bytes + replay_state_bytes(schedule) > self.budget


def _budget_plans(budget, profile, strategy, options, who: str, preserve_rng_state: bool,
                  pool_identical: bool = True) -> BudgetPlans | None:
    """The wrapper's ``BudgetPlans``, or None without a budget; refuses options that contradict it."""
    if not isinstance(pool_identical, bool):
        raise TypeError(f"ckpt.{who}: pool_identical must be True or False, got {pool_identical!r}")
    if budget is None:
        if profile is not None:
            raise ValueError(f"ckpt.{who}: profile= is what a budget is planned from; pass budget= with it")
        if not pool_identical:
            raise ValueError(f"ckpt.{who}: pool_identical=False says how a budget's profile is measured; "
                             f"pass budget= with it")
        return None
    if strategy not in (None, "optimal") or options:
        raise ValueError(f"ckpt.{who}: budget= plans with strategy 'optimal' and takes no strategy options; "
                         f"got strategy={strategy!r}, options {sorted(options)}")
    return BudgetPlans(budget, profile, preserve_rng_state, pool_identical)


def profile_in_isolation(stages: list, x, pool_identical: bool = True) -> Profile:
    """``Profile.from_torch`` leaving no trace: parameter gradients, buffers and the RNG as they were."""
    with LeftAsItWas(stages, devices_of(tensors_of(x))):
        return Profile.from_torch(list(stages), x, repeats=3, pool_identical=pool_identical)


_RUNNERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def checkpoint_sequential(functions, segments: int, input, use_reentrant=None,
                          preserve_rng_state: bool = True, **kwargs):
    """``torch.utils.checkpoint.checkpoint_sequential``'s call, every segment checkpointed.

    ``use_reentrant`` is accepted for compatibility and ignored (there is one engine:
    autograd's own graph with saved-tensor hooks).  Other keyword arguments of
    torch's version are refused.
    """
    if kwargs:
        raise TypeError(f"ckpt.checkpoint_sequential: unsupported arguments {sorted(kwargs)}; "
                        f"supported: functions, segments, input, use_reentrant, preserve_rng_state")
    if not isinstance(segments, int) or isinstance(segments, bool) or segments < 1:
        raise ValueError(f"ckpt.checkpoint_sequential: segments must be an int ≥ 1, got {segments!r}")
    stages = list(_as_modules(functions).values())
    key = (segments, preserve_rng_state)
    cache = _RUNNERS.setdefault(functions, {}) if isinstance(functions, nn.Module) else {}
    runner = cache.get(key)
    if runner is None or len(runner.blocks) != len(stages):
        runner = cache[key] = ChainRunner(stages, preserve_rng_state=preserve_rng_state,
                                          schedule_fn=lambda n: _every_segment(n, segments))
    return _run_chain(runner, stages, input)


@lru_cache(maxsize=64)
def _every_segment(n: int, segments: int) -> Schedule:
    return every_segment(n, segments).validate()


# ------------------------------------------------------------------ in place on a model

class CheckpointHandle(_PlanView):
    """Checkpointing applied to blocks of a model: its schedule, stats, and ``remove()``.

    Also a context manager: checkpointing ends when the ``with`` block does.
    """

    def __init__(self, blocks: list, strategy, preserve_rng_state, track_memory, options, budget=None,
                 memory_check=True):
        self.blocks, self.budget = blocks, budget
        self.memory = MemoryGuard(memory_check, strategy, options, budget)
        self._runner = ChainRunner(blocks, strategy, preserve_rng_state, track_memory,
                                  schedule_fn=budget and budget.schedule_for, **options)
        self._step = None
        for k, block in enumerate(blocks, start=1):
            if getattr(block, "_ckpt_handle", None) is not None:
                raise ValueError(f"ckpt.torch: block {k} ({type(block).__name__}) is already "
                                 f"checkpointed; call ckpt.remove_checkpointing first")
        for k, block in enumerate(blocks, start=1):
            block._ckpt_handle = self
            block.forward = _checkpointed_forward(self, k, block.forward)

    def call(self, k: int, forward, args, kwargs):
        """Block k's output: the chain's first sweep when grad is on, plain otherwise."""
        if k == 1:
            if self.budget:
                with self._own_forwards():                 # profiling calls the blocks themselves
                    self.budget.plan_for(self._runner, self.blocks, _chain_input(self.budget, args, kwargs))
            self.memory.check_blocks(self.blocks, forward, args, kwargs)
            self._step = self._runner.start()
        step = self._step
        if step is None:
            return forward(*args, **kwargs)
        try:
            out = step.call(k, forward, args, kwargs, self.blocks[k - 1])
        except BaseException:
            self._step = None             # its last strong reference: the step goes with the exception
            raise
        if k == len(self.blocks):
            self._step = None
        return out

    @contextmanager
    def _own_forwards(self):
        """The blocks' own forwards for the duration (checkpointed ones put back after)."""
        patched = [block.__dict__.pop("forward") for block in self.blocks]
        try:
            yield
        finally:
            for block, forward in zip(self.blocks, patched):
                block.forward = forward

    def remove(self) -> None:
        """Give every block back its own forward."""
        for block in self.blocks:
            if getattr(block, "_ckpt_handle", None) is self:
                del block.forward
                del block._ckpt_handle
        self._step = None

    def __enter__(self) -> "CheckpointHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _chain_input(budget: BudgetPlans, args, kwargs):
    """Block 1's input, to profile the blocks as a chain (each called on the previous one's output)."""
    if budget.given is None and (len(args) != 1 or kwargs):
        raise ValueError(f"ckpt.checkpoint_modules: budget= profiles the blocks as a chain, each called on "
                         f"the previous one's output, but block 1 got {len(args)} positional and keyword "
                         f"arguments {sorted(kwargs)}; pass profile=ckpt.Profile(...) measured for these blocks, "
                         f"or a strategy")
    return args[0] if args else None


def _checkpointed_forward(handle: CheckpointHandle, k: int, forward):
    def checkpointed(*args, **kwargs):
        return handle.call(k, forward, args, kwargs)
    checkpointed.__wrapped__ = forward
    return checkpointed


def _blocks_of(modules) -> list:
    if isinstance(modules, nn.Module) and not isinstance(modules, (nn.Sequential, nn.ModuleList)):
        raise TypeError(f"ckpt.checkpoint_modules: expected the blocks to checkpoint (an nn.ModuleList, "
                        f"nn.Sequential or list of modules, e.g. model.transformer.h), got a "
                        f"{type(modules).__name__}")
    try:
        blocks = list(modules)
    except TypeError:
        raise TypeError(f"ckpt.checkpoint_modules: expected the blocks to checkpoint (an nn.ModuleList, "
                        f"nn.Sequential or list of modules), got {type(modules).__name__}") from None
    if not blocks or not all(isinstance(b, nn.Module) for b in blocks):
        raise TypeError("ckpt.checkpoint_modules: expected a non-empty list of nn.Module blocks, got "
                        f"{[type(b).__name__ for b in blocks]}")
    if len({id(b) for b in blocks}) != len(blocks):
        raise ValueError("ckpt.checkpoint_modules: a block is listed twice; list each block once, in call order")
    return blocks


def checkpoint_modules(modules, strategy=None, preserve_rng_state: bool = True,
                       track_memory: bool = False, memory_check: bool = True, budget=None,
                       profile: Profile | None = None, pool_identical: bool = True,
                       **options) -> CheckpointHandle:
    """Checkpoint the listed blocks of an existing model in place; the model's forward is unchanged.

    The blocks, in the order the model calls them, form the chain the schedule plans
    over; they may take any arguments and return any pytree.  Undo with
    ``handle.remove()``, ``ckpt.remove_checkpointing(model)`` or ``with``.  The first
    training call per input shape is checked against the memory the device has
    (``ckpt.torch.memcheck``: alike blocks only; ``memory_check=False``: not checked).
    ``budget=`` (bytes or "6GiB") plans ``optimal`` per input signature, profiling
    the blocks as a chain on the first call (``pool_identical``: identical blocks timed as
    one, see ``Profile.from_torch``), or once from a given ``profile=``.
    """
    plans = _budget_plans(budget, profile, strategy, options, "checkpoint_modules", preserve_rng_state,
                          pool_identical)
    strategy = strategy or ("optimal" if plans else "sqrt_n")
    return CheckpointHandle(_blocks_of(modules), strategy, preserve_rng_state, track_memory, options, plans,
                            memory_check)


def remove_checkpointing(model_or_modules) -> int:
    """Undo ``checkpoint_modules`` on every block in ``model_or_modules``; returns how many were undone."""
    if isinstance(model_or_modules, nn.Module):
        candidates = model_or_modules.modules()
    else:
        candidates = (m for item in model_or_modules for m in item.modules())
    handles = {id(h): h for m in candidates
               if (h := getattr(m, "_ckpt_handle", None)) is not None}
    count = 0
    for h in handles.values():
        count += sum(getattr(b, "_ckpt_handle", None) is h for b in h.blocks)
        h.remove()
    return count


__all__ = ["CheckpointedSequential", "checkpoint_sequential", "checkpoint_modules", "remove_checkpointing",
           "CheckpointHandle", "CheckpointError", "BudgetPlans"]
