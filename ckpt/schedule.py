"""Schedules: what to run and what to keep during one training step, as data.

A network is a chain of n stages f_1..f_n with input x_0 and activations
x_i = f_i(x_{i-1}); a loss ℓ(x_n, y) closes it.  A schedule is an immutable
sequence of the actions below over stage indices.  It runs nothing: the one
executor (``ckpt.executor.execute``) walks it on a backend.

The executor's state while walking a schedule, and the exact meaning of each
action on it:

* ``current``     – the one activation x_c that the next forward step reads
                    (initially x_0, the input).
* ``checkpoints`` – activations kept by ``Save`` until ``Free``.
* ``tapes``       – per stage, what its backward needs (its *tape*), kept by
                    ``ForwardTape(i)`` until ``Backward(i)``.
* ``delta``       – δ_j = ∂J/∂x_j for the one j the backward sweep has reached.

====================  =========================================================
action                meaning
====================  =========================================================
``Forward(i)``        needs current = x_{i-1}; current becomes x_i = f_i(x_{i-1}).
                      No tape is kept (prediction mode).
``ForwardTape(i)``    as ``Forward(i)``, and keeps tape i for ``Backward(i)``.
``Save(i)``           needs current = x_i; keeps x_i as a checkpoint (no copy).
``Load(i)``           needs checkpoint i; current becomes x_i.
``Free(i)``           drops checkpoint i.
``Loss()``            needs current = x_n; computes J = ℓ(x_n, y) (+ penalty)
                      and delta = δ_n; current is dropped.
``Backward(i)``       needs delta = δ_i and tape i; computes δ_{i-1} and stage
                      i's parameter gradients; drops tape i, δ_i and the current
                      activation (a forward resumes from a checkpoint: ``Load``).
``Update(i)``         needs stage i's gradients (``Backward(i)`` ran); applies
                      the optimizer to stage i's parameters with them and drops
                      them (a *fused* optimizer step).  Stage i must not run
                      forward again afterwards: its parameters have changed.
====================  =========================================================

A value is freed as soon as nothing above refers to it.  A *training* schedule
(one with ``Loss``) must backward every stage exactly once, in the order n..1,
and end with no tape and no checkpoint left; it updates either no stage (the
caller applies the optimizer to the returned gradients) or every stage exactly
once (fused: ``fuse_updates``).  A *prediction* schedule has only
``Forward``/``Save``/``Load``/``Free`` and ends with current = x_n.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Iterator


class ScheduleError(ValueError):
    """A schedule that breaks the rules of ``ckpt.schedule``."""


@dataclass(frozen=True)
class Forward:
    """Read as: run stage i on x_{i-1}, keep only its output."""

    i: int


@dataclass(frozen=True)
class ForwardTape:
    """Read as: run stage i on x_{i-1} and keep what its backward needs."""

    i: int


@dataclass(frozen=True)
class Save:
    """Read as: keep the current activation x_i as a checkpoint."""

    i: int


@dataclass(frozen=True)
class Load:
    """Read as: continue the forward from checkpoint x_i."""

    i: int


@dataclass(frozen=True)
class Free:
    """Read as: drop checkpoint x_i."""

    i: int


@dataclass(frozen=True)
class Loss:
    """Read as: evaluate the loss on x_n and start the backward with δ_n."""


@dataclass(frozen=True)
class Backward:
    """Read as: use tape i and δ_i to get δ_{i-1} and stage i's gradients."""

    i: int


@dataclass(frozen=True)
class Update:
    """Read as: apply the optimizer to stage i's parameters using its gradients, then drop them."""

    i: int


Action = Forward | ForwardTape | Save | Load | Free | Loss | Backward | Update
ACTIONS = (Forward, ForwardTape, Save, Load, Free, Loss, Backward, Update)


@dataclass
class _Walk:
    """The executor's state, by index only: what ``validate`` simulates."""

    n: int
    current: int | None = 0
    checkpoints: set[int] | None = None
    tapes: set[int] | None = None
    delta: int | None = None
    loss_done: bool = False
    peak_stored: int = 0
    updated: set[int] | None = None

    def __post_init__(self):
        self.checkpoints, self.tapes, self.updated = set(), set(), set()

    def stored(self) -> int:
        """Live stored values: checkpoints, tapes and the current activation."""
        current = self.current is not None and self.current not in self.checkpoints
        return len(self.checkpoints) + len(self.tapes) + int(current)

    def step(self, a: Action) -> str | None:
        """Apply one action; return why it is invalid, or None."""
        problem = self._check(a)
        if problem is None:
            self._apply(a)
            self.peak_stored = max(self.peak_stored, self.stored())
        return problem

    def _check(self, a: Action) -> str | None:
        n = self.n
        if not isinstance(a, ACTIONS):
            return f"{a!r} is not an action; allowed: {', '.join(c.__name__ for c in ACTIONS)}"
        i = getattr(a, "i", None)
        if isinstance(a, (Forward, ForwardTape, Backward, Update)) and not _index_in(i, 1, n):
            return f"stage index must be an int in 1..{n}"
        if isinstance(a, (Save, Load, Free)) and not _index_in(i, 0, n):
            return f"activation index must be an int in 0..{n}"
        if isinstance(a, (Forward, ForwardTape)):
            if i in self.updated:
                return f"stage {i}'s parameters were already updated (Update({i})); it cannot run forward again"
            if self.current != i - 1:
                return f"needs x_{i - 1} as the current activation, but {self._current()}"
            if isinstance(a, ForwardTape) and i in self.tapes:
                return f"tape {i} is already kept (Backward({i}) has not consumed it)"
        elif isinstance(a, Save):
            if self.current != i:
                return f"needs x_{i} as the current activation, but {self._current()}"
            if i in self.checkpoints:
                return f"x_{i} is already a checkpoint"
        elif isinstance(a, (Load, Free)) and i not in self.checkpoints:
            return f"x_{i} is not a checkpoint (Save({i}) it first)"
        elif isinstance(a, Loss):
            if self.loss_done:
                return "the loss was already evaluated"
            if self.current != n:
                return f"needs x_{n} as the current activation, but {self._current()}"
        elif isinstance(a, Backward):
            if self.delta != i:
                expected = "no δ yet (Loss() first)" if self.delta is None else f"δ_{self.delta}"
                return f"needs δ_{i}, but the backward sweep holds {expected}"
            if i not in self.tapes:
                return f"needs tape {i}, but it is not kept (ForwardTape({i}) first)"
        elif isinstance(a, Update):
            if i in self.updated:
                return f"stage {i} was already updated"
            if not self.loss_done or (self.delta is not None and self.delta >= i):
                return f"needs stage {i}'s gradients, but Backward({i}) has not run yet"
        return None

    def _current(self) -> str:
        return "there is none" if self.current is None else f"it is x_{self.current}"

    def _apply(self, a: Action) -> None:
        if isinstance(a, (Forward, ForwardTape)):
            self.current = a.i
            if isinstance(a, ForwardTape):
                self.tapes.add(a.i)
        elif isinstance(a, Save):
            self.checkpoints.add(a.i)
        elif isinstance(a, Load):
            self.current = a.i
        elif isinstance(a, Free):
            self.checkpoints.discard(a.i)
        elif isinstance(a, Loss):
            self.loss_done, self.current, self.delta = True, None, self.n
        elif isinstance(a, Backward):
            self.tapes.discard(a.i)
            self.delta, self.current = a.i - 1, None
        elif isinstance(a, Update):
            self.updated.add(a.i)

    def finish(self) -> str | None:
        """Why the state after the last action is not a valid end, or None."""
        if not self.loss_done:
            if self.tapes:
                return f"a prediction schedule keeps no tapes, but tapes {sorted(self.tapes)} are kept"
            if self.current != self.n:
                return f"a prediction schedule must end at x_{self.n}, but {self._current()}"
            return None
        if self.delta != 0:
            return f"the backward sweep stopped at δ_{self.delta}; Backward({self.delta}) .. Backward(1) are missing"
        if self.tapes:
            return f"tapes {sorted(self.tapes)} are never used by a Backward"
        if self.checkpoints:
            return f"checkpoints {sorted(self.checkpoints)} are never freed (add Free(i))"
        missing = sorted(set(range(1, self.n + 1)) - self.updated)
        if self.updated and missing:
            return (f"a fused schedule updates every stage once, but stages {missing} are never updated "
                    f"(add Update(i) after Backward(i), or use fuse_updates)")
        return None


def _index_in(i, low: int, high: int) -> bool:
    return isinstance(i, int) and not isinstance(i, bool) and low <= i <= high


@dataclass(frozen=True)
class FirstSweep:
    """A training schedule's part before ``Loss()``: where it ends, stages taped, activations saved."""

    loss_index: int
    taped: frozenset
    saved: frozenset


@dataclass(frozen=True)
class Schedule:
    """An immutable sequence of actions over a chain of ``n`` stages."""

    n: int
    actions: tuple[Action, ...]

    def __init__(self, n: int, actions: Iterable[Action]):
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "actions", tuple(actions))

    def __iter__(self) -> Iterator[Action]:
        return iter(self.actions)

    def __len__(self) -> int:
        return len(self.actions)

    def validate(self) -> "Schedule":
        """Check every rule of the module docstring; raise naming the first bad action."""
        if self.__dict__.get("_valid"):
            return self                    # immutable: once valid, always valid
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            raise ScheduleError(f"schedule: a chain needs at least one stage, got n={self.n!r}")
        walk = _Walk(self.n)
        for k, a in enumerate(self.actions):
            problem = walk.step(a)
            if problem:
                raise ScheduleError(f"schedule: action #{k} {a!r}: {problem}")
        problem = walk.finish()
        if problem:
            raise ScheduleError(f"schedule: after the last action: {problem}")
        object.__setattr__(self, "_valid", True)
        return self

    def count(self, *kinds: type) -> int:
        """How many actions are of the given types."""
        return sum(isinstance(a, kinds) for a in self.actions)

    @cached_property          # immutable: computed once (cached_property bypasses frozen)
    def forward_steps(self) -> int:
        """Stage evaluations, taped or not."""
        return self.count(Forward, ForwardTape)

    @cached_property
    def backward_steps(self) -> int:
        """Stage backward evaluations."""
        return self.count(Backward)

    @cached_property
    def is_training(self) -> bool:
        """True when the schedule evaluates the loss (and so backwards)."""
        return any(isinstance(a, Loss) for a in self.actions)

    @cached_property
    def is_fused(self) -> bool:
        """True when the schedule applies the optimizer stage by stage (``Update`` actions)."""
        return any(isinstance(a, Update) for a in self.actions)

    @property
    def peak_stored(self) -> int:
        """Most values held at once: checkpoints + tapes + the current activation."""
        walk = _Walk(self.n)
        for a in self.actions:
            if walk.step(a):
                raise ScheduleError("schedule: peak_stored needs a valid schedule; call validate()")
        return walk.peak_stored

    # -- analyses (what a backend that cannot re-order the first sweep needs) --
    def first_sweep(self) -> "FirstSweep":
        """The part before ``Loss()`` as one sweep 1..n: stages taped, activations saved.

        Raises ``ScheduleError`` unless that part is ``Forward``/``ForwardTape`` of
        1..n in order with ``Save``/``Free`` between (a model's own forward runs once).
        """
        cached = self.__dict__.get("_first_sweep")
        if cached is not None:
            return cached
        self.validate()
        if not self.is_training:
            raise ScheduleError("schedule: first_sweep needs a training schedule (one with Loss())")
        end = self.actions.index(Loss())
        taped, saved, expected = set(), set(), 1
        for k, a in enumerate(self.actions[:end]):
            if isinstance(a, (Forward, ForwardTape)):
                if a.i != expected:
                    raise ScheduleError(f"schedule: action #{k} {a!r}: the part before Loss() must run "
                                        f"stages 1..{self.n} once each in order, but it runs stage {a.i} "
                                        f"where stage {expected} comes next")
                expected += 1
                if isinstance(a, ForwardTape):
                    taped.add(a.i)
            elif isinstance(a, Save):
                saved.add(a.i)
            elif isinstance(a, Load):
                raise ScheduleError(f"schedule: action #{k} {a!r}: the part before Loss() must be one "
                                    f"sweep 1..{self.n}; it may Save and Free but not Load")
        sweep = FirstSweep(end, frozenset(taped), frozenset(saved))
        object.__setattr__(self, "_first_sweep", sweep)
        return sweep

    def recomputed_stages(self) -> frozenset:
        """Stages the schedule runs forward more than once."""
        counts: dict[int, int] = {}
        for a in self.actions:
            if isinstance(a, (Forward, ForwardTape)):
                counts[a.i] = counts.get(a.i, 0) + 1
        return frozenset(i for i, c in counts.items() if c > 1)

    def replay_starts(self) -> frozenset:
        """Stages a re-run starts from: the first forward after a ``Load`` (``Free`` and ``Save``
        may come between, as in ``optimal``'s ``Load(a), Free(a), ForwardTape(a+1)``).

        Every re-run is ``Load(j)`` then stages j+1, j+2, … in order, as in the first
        sweep, so restoring the RNG state that stage j+1 first saw replays the whole
        run's random draws: one RNG state per replay start, not per stage.
        """
        starts, loaded = set(), False
        for action in self.actions:
            if isinstance(action, (Forward, ForwardTape)) and loaded:
                starts.add(action.i)
            if isinstance(action, Load):
                loaded = True
            elif not isinstance(action, (Free, Save)):
                loaded = False
        return frozenset(starts)

    def __str__(self) -> str:
        head = (f"Schedule(n={self.n}: {len(self)} actions, {self.forward_steps} forward, "
                f"{self.backward_steps} backward)")
        return "\n".join([head] + [f"  {k:4d}  {a!r}" for k, a in enumerate(self.actions)])


def fuse_updates(schedule: Schedule) -> Schedule:
    """The same schedule with ``Update(i)`` right after each ``Backward(i)``: a fused optimizer step."""
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule: fuse_updates needs a Schedule, got {type(schedule).__name__}")
    schedule.validate()
    if not schedule.is_training:
        raise ScheduleError("schedule: fuse_updates needs a training schedule (with Loss and Backward); "
                            "a prediction schedule has no gradients to apply")
    if schedule.is_fused:
        return schedule
    actions = []
    for a in schedule.actions:
        actions.append(a)
        if isinstance(a, Backward):
            actions.append(Update(a.i))
    return Schedule(schedule.n, actions).validate()
