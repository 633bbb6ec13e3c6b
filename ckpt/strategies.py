"""Activation strategies: plain functions ``(n, **options) -> Schedule``, registered by name.

Exact forward-step counts (each a test against the schedule itself):

* ``store_all(n)``:  n.
* ``recompute(n)``:  n + n(n−1)/2  (the first sweep tapes stage n; stage i < n is
  re-taped after re-running stages 1..i−1 from x_0).
* ``sqrt_n(n, segments=k)``: 2n − L_k, where L_k is the length of the last
  segment (the first sweep tapes the last segment; every other segment is run
  once more, with tape, during the backward sweep).

``forward_only(n)`` is the prediction schedule (n steps, no tapes).

Names: a built-in strategy (store_all, recompute, sqrt_n) is replaced only with
``register_strategy(name, fn, replace=True)``; a name you registered yourself may
be registered again (re-running a notebook cell or re-importing a plugin).

A strategy may instead read the chain's cost ``ckpt.Profile``: it declares so by
naming its first parameter ``profile`` (``optimal(profile, budget)``), and is
called ``fn(profile, **options)``; ``make_schedule(..., profile=...)`` and
``ckpt.schedule_for`` supply it.  ``(n, **options)`` strategies are unchanged.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

from .schedule import Backward, Forward, ForwardTape, Free, Load, Loss, Save, Schedule, fuse_updates

Strategy = Callable[..., Schedule]
_REGISTRY: dict[str, Strategy] = {}


_BUILT_IN: set[str] = set()        # filled below, once the built-ins are registered
RESERVED = ("all", "forward_only")  # the CLI's "every strategy", and the prediction schedule
_EXAMPLES = {"slots": 8, "segments": 4, "budget_bytes": "'512MiB'"}


def register_strategy(name: str, fn: Strategy | None = None, *, replace: bool = False):
    """Register ``fn`` under ``name``; without ``fn``, return a decorator that does.

    A built-in name is replaced only with ``replace=True``.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"strategies: a strategy name must be a non-empty str, got {name!r}")
    if name in RESERVED:
        raise ValueError(f"strategies: {name!r} is reserved ({', '.join(RESERVED)}: every strategy on the "
                         f"command line, the prediction schedule); register yours under another name")
    if not isinstance(replace, bool):
        raise TypeError(f"strategies: replace must be True or False, got {replace!r}")
    if name in _BUILT_IN and not replace:
        raise ValueError(f"strategies: {name!r} is a built-in strategy; register yours under another name, "
                         f"or pass replace=True to replace the built-in everywhere")

    def add(f: Strategy) -> Strategy:
        if not callable(f):
            raise TypeError(f"strategies: strategy {name!r} must be callable (n, **options) -> Schedule")
        _check_takes_one_argument(name, f)
        _REGISTRY[name] = f
        return f

    return add if fn is None else add(fn)


def _check_takes_one_argument(name: str, fn) -> None:
    """Refuse a function that cannot be called with the depth (or the profile) alone plus options."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return                               # a builtin or C callable: let the call decide
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    if not positional:
        raise TypeError(f"strategies: strategy {name!r} must take the number of stages n (or a profile) as "
                        f"its first argument: (n, **options) -> Schedule; it takes none")


def strategies() -> list[str]:
    """Names of every registered strategy, sorted."""
    return sorted(_REGISTRY)


def get_strategy(name: str) -> Strategy:
    """The strategy registered as ``name``; the error lists the known ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"strategies: unknown strategy {name!r}; known: {', '.join(strategies())} "
                         f"(register your own with ckpt.register_strategy)") from None


def needs_profile(strategy: str | Strategy) -> bool:
    """True when the strategy reads a cost profile (its first parameter is named ``profile``)."""
    fn = strategy if callable(strategy) else get_strategy(strategy)
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):        # builtins without a signature: (n, **options)
        return False
    return bool(params) and params[0] == "profile"


def make_schedule(strategy: str | Strategy, n: int, profile=None, fused: bool = False, **options) -> Schedule:
    """Build and validate the schedule of ``strategy`` (a name or a function) for n stages.

    A strategy that reads a profile (``needs_profile``) gets ``profile``, which
    must describe the same n stages; other strategies ignore it.
    ``fused=True`` adds ``Update(i)`` after each ``Backward(i)`` (``ckpt.schedule.fuse_updates``).
    """
    _check_depth(n)
    fn = strategy if callable(strategy) else get_strategy(strategy)
    _check_options(strategy, fn, options)
    if needs_profile(fn):
        if profile is None:
            raise ValueError(f"strategies: {strategy!r} plans from a cost profile; pass profile=ckpt.Profile(...) "
                             f"or use ckpt.schedule_for(model, {strategy!r}, batch=...)")
        if len(profile) != n:
            raise ValueError(f"strategies: the profile has {len(profile)} stages, the schedule is for n={n}")
        schedule = fn(profile, **options)
    else:
        schedule = fn(n, **options)
    if not isinstance(schedule, Schedule):
        raise TypeError(f"strategies: {strategy!r} returned {type(schedule).__name__}, expected a Schedule")
    if schedule.n != n:
        raise ValueError(f"strategies: {strategy!r} built a schedule for n={schedule.n}, asked for n={n}")
    if not isinstance(fused, bool):
        raise TypeError(f"strategies: fused must be True or False, got {fused!r}")
    return fuse_updates(schedule) if fused else schedule.validate()


def option_names(strategy) -> tuple[list[str], list[str]] | None:
    """(options ``strategy`` takes, those of them it requires); None when its signature cannot tell."""
    fn = strategy if callable(strategy) else get_strategy(strategy)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None                          # a builtin or C callable: let the call decide
    if any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params.values()):
        return None                          # takes anything: let the call decide
    takes = [k for k, p in list(params.items())[1:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return takes, [k for k in takes if params[k].default is inspect.Parameter.empty]


def _check_options(strategy, fn: Strategy, options: dict) -> None:
    """Refuse options that ``fn`` does not take, naming the ones it does, and name those it needs."""
    names = option_names(fn)
    if names is None:
        return
    takes, required = names
    unknown = sorted(set(options) - set(takes))
    name = strategy if isinstance(strategy, str) else getattr(fn, "__name__", repr(fn))
    if unknown:
        raise TypeError(f"strategies: strategy {name!r} takes no option {', '.join(map(repr, unknown))}; "
                        f"its options: {', '.join(takes) or 'none'}")
    missing = [k for k in required if k not in options]
    if missing:
        raise TypeError(f"strategies: strategy {name!r} needs the option(s) {', '.join(map(repr, missing))} "
                        f"(e.g. {missing[0]}={_EXAMPLES.get(missing[0], '...')}); none given")


def _check_depth(n) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"strategies: depth must be an int ≥ 1 (the number of stages), got {n!r}")


def _taped_backward(first: int, last: int) -> list:
    """Tape stages first..last, then backward them last..first (x_{first-1} is current)."""
    return ([ForwardTape(i) for i in range(first, last + 1)]
            + [Backward(i) for i in range(last, first - 1, -1)])


@register_strategy("store_all")
def store_all(n: int) -> Schedule:
    """Keep every stage's tape: n forward steps, n tapes stored at the peak."""
    _check_depth(n)
    return Schedule(n, [*(ForwardTape(i) for i in range(1, n + 1)), Loss(),
                        *(Backward(i) for i in range(n, 0, -1))])


@register_strategy("recompute")
def recompute(n: int) -> Schedule:
    """Keep only x_0; before each Backward(i), re-run stages 1..i from x_0."""
    _check_depth(n)
    actions = [Save(0), *(Forward(i) for i in range(1, n)), ForwardTape(n), Loss(), Backward(n)]
    for i in range(n - 1, 0, -1):
        actions += [Load(0), *(Forward(j) for j in range(1, i)), ForwardTape(i), Backward(i)]
    return Schedule(n, actions + [Free(0)])


def segment_bounds(n: int, segments: int) -> list[tuple[int, int]]:
    """Split stages 1..n into ``segments`` runs (first, last); later runs are the longer ones."""
    _check_depth(n)
    if not isinstance(segments, int) or isinstance(segments, bool) or segments < 1:
        raise ValueError(f"strategies: segments must be an int ≥ 1, got {segments!r}")
    k = min(segments, n)
    short, extra = divmod(n, k)
    bounds, first = [], 1
    for s in range(k):
        length = short + (s >= k - extra)
        bounds.append((first, first + length - 1))
        first += length
    return bounds


def _segmented(n: int, bounds: list[tuple[int, int]], tape_last: bool) -> Schedule:
    """Keep each segment's input; in the backward, re-tape and backward one segment at a time.

    With ``tape_last`` the last segment is taped in the first sweep instead of
    being checkpointed and re-run (it is backwarded first anyway).
    """
    rerun = bounds[:-1] if tape_last else bounds
    actions = []
    for first, last in rerun:
        actions += [Save(first - 1), *(Forward(i) for i in range(first, last + 1))]
    if tape_last:
        first, last = bounds[-1]
        actions += [*(ForwardTape(i) for i in range(first, last + 1)), Loss(),
                    *(Backward(i) for i in range(last, first - 1, -1))]
    else:
        actions.append(Loss())
    for first, last in reversed(rerun):
        actions += [Load(first - 1), *_taped_backward(first, last), Free(first - 1)]
    return Schedule(n, actions)


@register_strategy("sqrt_n")
def sqrt_n(n: int, segments: int | None = None) -> Schedule:
    """Chen et al. 2016: ⌈√n⌉ segments; keep their inputs, re-tape one segment at a time.

    ``segments`` > n means one stage per segment (what n segments give).
    """
    return _segmented(n, segment_bounds(n, math.ceil(math.sqrt(n)) if segments is None else segments),
                      tape_last=True)


def every_segment(n: int, segments: int) -> Schedule:
    """As ``sqrt_n`` but the last segment is checkpointed and re-run too (``checkpoint_sequential``)."""
    return _segmented(n, segment_bounds(n, segments), tape_last=False)


_BUILT_IN.update(_REGISTRY)


def forward_only(n: int) -> Schedule:
    """Forward only, nothing kept: what inference costs."""
    _check_depth(n)
    return Schedule(n, [Forward(i) for i in range(1, n + 1)])
