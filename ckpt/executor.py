"""The one executor: walks any schedule on any backend and owns every buffer's lifetime.

A backend runs one stage at a time (see ``ckpt.backends.base.Backend``).  The
executor holds the only references to what the schedule keeps (current
activation, checkpoints, tapes, δ, gradients), drops them exactly when the
schedule says, and counts the bytes they occupy — each storage once, however
many places refer to it.  On the symbolic backend that count *is* the memory
model; on numpy it is what ``tracemalloc`` sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .schedule import Backward, Forward, ForwardTape, Free, Load, Loss, Save, Schedule, Update


@dataclass
class Stats:
    """What one execution did and the bytes it held (inputs and parameters excluded)."""

    forward_steps: int = 0
    backward_steps: int = 0
    peak_bytes: int = 0               # high-water of everything the step allocated
    peak_activation_bytes: int = 0    # the same, less the gradients of finished stages
    peak_saved_bytes: int = 0         # high-water of checkpoints + tapes
    peak_breakdown: dict[str, int] = field(default_factory=dict)  # at peak_bytes, by holder
    peak_action: int = 0              # index of the action during (in_flight > 0) or after which it peaked


@dataclass(frozen=True)
class Residual:
    """One value held at the peak: what it is (e.g. "tape 4: x_3") and its bytes."""

    what: str
    nbytes: int


@dataclass
class Result:
    """Loss, gradients (one dict per stage, like the parameters; None once a fused step applied them), δ_0, output, stats."""

    loss: float | None
    grads: list[dict] | None
    dx: object | None
    output: object | None
    stats: Stats


# Who can hold a value, most telling first: a storage held by a tape and as the
# current activation counts as a tape's.  The input is the caller's, resident.
GROUPS = ("input", "tapes", "checkpoints", "current", "delta", "gradients")
_RANK = {g: r for r, g in enumerate(GROUPS)}


def _first_holder(counts: list[int]) -> int:
    for rank, count in enumerate(counts):
        if count:
            return rank
    return -1


class _Ledger:
    """Bytes held through references, each storage once, in the group of its first holder.

    O(1) per hold/release (this runs on every action: keep it lean), so the
    breakdown at every new peak costs nothing.  An entry is
    [bytes, holds per group rank, rank of its group].
    """

    def __init__(self, backend):
        self.storage, self.nbytes, self.refs = backend.storage, backend.nbytes, {}
        self.totals = [0] * len(GROUPS)      # by rank in GROUPS
        self.live = 0                        # bytes held, the input left out

    def _add(self, nbytes: int, rank: int) -> None:
        self.totals[rank] += nbytes
        if rank:
            self.live += nbytes

    def hold(self, group: str, *values) -> None:
        rank = _RANK[group]
        for v in values:
            key = self.storage(v)
            entry = self.refs.get(key)
            if entry is None:
                counts = [0] * len(GROUPS)
                counts[rank] = 1
                self.refs[key] = [self.nbytes(v), counts, rank]
                self._add(self.refs[key][0], rank)
                continue
            entry[1][rank] += 1
            if rank < entry[2]:
                self._add(-entry[0], entry[2])
                self._add(entry[0], rank)
                entry[2] = rank

    def release(self, group: str, *values) -> None:
        rank = _RANK[group]
        for v in values:
            key = self.storage(v)
            entry = self.refs[key]
            counts = entry[1]
            counts[rank] -= 1
            if counts[rank] or rank != entry[2]:
                continue
            self._add(-entry[0], rank)
            new = _first_holder(counts)
            if new < 0:
                del self.refs[key]
            else:
                self._add(entry[0], new)
                entry[2] = new


class _NoLedger:
    """A ledger that counts nothing: for callers that want speed, not bytes (peaks stay 0)."""

    totals, live = (0,) * len(GROUPS), 0

    def hold(self, group: str, *values) -> None:
        pass

    release = hold


class Run:
    """The state of one execution; one handler per action type."""

    def __init__(self, schedule: Schedule, backend, x, y, explain: bool = False, account: bool = True):
        self.n, self.backend, self.y, self.k = schedule.n, backend, y, 0
        self.tape_labels = {} if explain else None
        self.ledger = _Ledger(backend) if account else _NoLedger()
        self.current, self.checkpoints, self.tapes = (0, x), {}, {}
        self.delta, self.grads, self.loss = None, [None] * schedule.n, None
        self.stats, self._peak_totals = Stats(), None
        self.explain, self.peak_residuals, self._action = explain, None, None   # explain: what the peak holds
        self.ledger.hold("input", x)
        self.ledger.hold("current", x)
        self.input_key = backend.storage(x)

    # -- accounting ---------------------------------------------------------
    def _note_peak(self, in_flight: int) -> None:
        totals, live, s = self.ledger.totals, self.ledger.live, self.stats
        _, tapes, checkpoints, _, _, gradients = totals
        if live - gradients + in_flight > s.peak_activation_bytes:
            s.peak_activation_bytes = live - gradients + in_flight
        if tapes + checkpoints > s.peak_saved_bytes:
            s.peak_saved_bytes = tapes + checkpoints
        if live + in_flight > s.peak_bytes:
            s.peak_bytes, s.peak_action = live + in_flight, self.k
            self._peak_totals = (*totals, in_flight)      # made a dict once, in result()
            if self.explain:                              # taken now: the moment is gone after the action
                self.peak_residuals = self.residuals(in_flight, self._action)

    def _holders(self):
        """(group, label, value) for every reference held, most telling holder first."""
        labels = self.tape_labels or {}
        for i, tape in sorted(self.tapes.items()):
            for k, v in enumerate(tape):
                yield "tapes", f"tape {i}: {labels.get((i, k), f'item {k}')}", v
        for i, v in sorted(self.checkpoints.items()):
            yield "checkpoints", f"checkpoint x_{i}", v
        if self.current:
            yield "current", f"current x_{self.current[0]}", self.current[1]
        if self.delta:
            yield "delta", f"δ_{self.delta[0]}", self.delta[1]
        for i, grads in enumerate(self.grads, start=1):
            for name, g in (grads or {}).items():
                yield "gradients", f"gradient {name}_{i}", g

    def _unique_holders(self):
        """``_holders`` with each storage once (the input, resident, left out)."""
        seen = {self.input_key}
        for group, label, v in self._holders():
            key = self.backend.storage(v)
            if key not in seen:
                seen.add(key)
                yield group, label, self.backend.nbytes(v)

    def residuals(self, in_flight: int = 0, action=None) -> list[Residual]:
        """Every value held now, each storage once, plus what ``action`` has in flight."""
        held = [Residual(label, nbytes) for _, label, nbytes in self._unique_holders()]
        return held + ([Residual(f"in flight: {action!r} outputs and temporaries", in_flight)]
                       if in_flight else [])

    def _set_current(self, index, value) -> None:
        if self.current is not None:
            self.ledger.release("current", self.current[1])
        self.current = None if value is None else (index, value)
        if value is not None:
            self.ledger.hold("current", value)

    def drop_current(self) -> None:
        """Release the current activation now: for a backend whose ``Backward`` runs later (inside autograd)."""
        self._set_current(None, None)

    # -- actions ------------------------------------------------------------
    def do(self, a) -> None:
        """Apply one action (dispatch on its type; see ``_HANDLERS``)."""
        handler = _HANDLERS.get(type(a))
        if handler is None:
            raise TypeError(f"executor: unexpected action {a!r}")
        self._action = a
        handler(self, a)

    def _forward(self, a) -> None:
        keep = isinstance(a, ForwardTape)
        x_prev = self.current[1]
        self._note_peak(self.backend.temp_bytes(a, x_prev))
        out, tape = self.backend.forward(a.i, x_prev, keep)
        if keep:
            if self.tape_labels is not None:
                self._label_tape(a.i, x_prev, out, tape)
            self.tapes[a.i] = tape
            self.ledger.hold("tapes", *tape)
        del x_prev
        self._set_current(a.i, out)
        self.stats.forward_steps += 1

    def _label_tape(self, i, x_prev, out, tape) -> None:
        """Name tape i's items by the activation they are (for ``residuals``)."""
        names = {self.backend.storage(x_prev): f"x_{i - 1}", self.backend.storage(out): f"x_{i}"}
        for k, v in enumerate(tape):
            self.tape_labels[i, k] = names.get(self.backend.storage(v), f"item {k}")

    def _save(self, a: Save) -> None:
        value = self.current[1]
        self.checkpoints[a.i] = value
        self.ledger.hold("checkpoints", value)

    def _load(self, a: Load) -> None:
        self._set_current(a.i, self.checkpoints[a.i])

    def _free(self, a: Free) -> None:
        value = self.checkpoints.pop(a.i)
        self.ledger.release("checkpoints", value)

    def _loss(self, a: Loss) -> None:
        self._note_peak(self.backend.temp_bytes(a, self.current[1], self.y))
        self.loss, delta = self.backend.loss(self.current[1], self.y)
        self._set_current(None, None)
        self.delta = (self.n, delta)
        self.ledger.hold("delta", delta)
        held_loss = getattr(self.backend, "held_loss", None)     # a loss value that keeps memory, to the step's end
        if held_loss is not None:
            self.ledger.hold("delta", *held_loss(self.loss))

    def _backward(self, a: Backward) -> None:
        self._set_current(None, None)
        old = self.delta[1]
        self._note_peak(self.backend.temp_bytes(a, old))
        self.delta = None
        tape = self.tapes.pop(a.i)
        delta_prev, grads = self.backend.backward(a.i, tape, old)
        self.ledger.release("delta", old)
        self.ledger.release("tapes", *tape)
        del old, tape
        self.grads[a.i - 1] = grads
        self.ledger.hold("delta", delta_prev)
        self.ledger.hold("gradients", *grads.values())
        self.delta = (a.i - 1, delta_prev)
        self.stats.backward_steps += 1

    def _update(self, a: Update) -> None:
        grads, self.grads[a.i - 1] = self.grads[a.i - 1], None
        self.backend.update(a.i, grads)
        self.ledger.release("gradients", *grads.values())

    def steps(self, actions) -> None:
        """Run ``actions`` (a part of the schedule, in order) on the current state."""
        for a in actions:
            self.do(a)
            self._note_peak(0)                  # after action k: its index is the peak's
            self.k += 1

    def run(self, schedule: Schedule) -> Result:
        self.steps(schedule.actions)
        return self.result(schedule)

    def result(self, schedule: Schedule) -> Result:
        """The result after the last action of ``schedule`` has run."""
        if self._peak_totals:
            self.stats.peak_breakdown = dict(zip((*GROUPS[1:], "in_flight"), self._peak_totals[1:]))
        if schedule.is_training:
            return Result(self.loss, self.grads, self.delta[1], None, self.stats)
        return Result(None, None, None, self.current[1], self.stats)


_HANDLERS = {Forward: Run._forward, ForwardTape: Run._forward, Save: Run._save, Load: Run._load,
             Free: Run._free, Loss: Run._loss, Backward: Run._backward, Update: Run._update}


def execute(schedule: Schedule, backend, x, y=None) -> Result:
    """Run ``schedule`` on ``backend`` from input x (and targets y when it trains)."""
    return start(schedule, backend, x, y).run(schedule)


def start(schedule: Schedule, backend, x, y=None, explain: bool = False, account: bool = True) -> Run:
    """Check and set up a run that the caller steps through in parts (``run.steps(actions)``).

    For callers that cannot run a schedule in one go: the torch backend runs the
    actions before ``Loss()`` as the model's own forward calls its blocks, and the
    rest lazily, as autograd's backward unpacks the saved tensors of dropped stages.
    ``account=False`` skips the byte ledger (Stats then has step counts only).
    """
    if not isinstance(schedule, Schedule):
        raise TypeError(f"executor: expected a ckpt.Schedule, got {type(schedule).__name__}")
    schedule.validate()
    if schedule.is_training and y is None:
        raise ValueError("executor: a training schedule needs targets y (got y=None)")
    backend.check_inputs(schedule.n, x, y if schedule.is_training else None)
    if schedule.is_fused:
        _check_can_update(backend)
    return Run(schedule, backend, x, y, explain, account)


def _check_can_update(backend) -> None:
    """Raise unless ``backend`` can apply a fused schedule's ``Update`` actions."""
    check = getattr(backend, "check_can_update", None)
    if check is None:
        raise TypeError(f"executor: {type(backend).__name__} cannot apply Update actions (a fused optimizer "
                        "step); on torch use ckpt.torch.fused.fuse_optimizer with an unfused schedule")
    check()
