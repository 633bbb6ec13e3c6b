"""Schedules executed on autograd's own graph.

The model's forward runs every stage once with grad enabled, so autograd's real
graph exists and gradients flow through it as in plain torch (closures,
captured tensors, in-place ops, dicts, hooks, double backward, DDP's hooks).
That first sweep is the schedule's part before ``Loss()``; it must be one sweep
1..n (``Schedule.first_sweep``).  A stage the schedule tapes there keeps its
saved tensors as usual.  A stage it does not tape is *dropped*: a saved-tensor
pack hook hands autograd a ``Holder`` instead of each tensor.  During backward,
the first unpack of an empty holder advances the executor through the rest of
the schedule (``Load``, ``Forward``, ``ForwardTape`` …) until that stage's tape
is recomputed, which fills its holders; ``Backward(i)`` is autograd consuming
them.  So every schedule runs with exactly its forward-step count.

A *block* is one call of a listed module (or callable); a *planned stage* is a
run of blocks the schedule treats as one stage: a block that modifies its input
in place is fused with the block before it, so no checkpoint boundary falls
there.  Between blocks, the chain values are the tensors of block k's inputs
that *are* tensors of block k-1's output; every other input is a constant held
by reference (a block whose input cannot be traced to its predecessor's output
thus keeps its input: a forced checkpoint).

Ownership, so that a step is freed without the garbage collector once autograd
frees its graph (after its backward, or a forward never backwarded): autograd's
graph holds holders, holders hold their stage's ``StageTape``, which holds the
``Step``; the step holds only detached tensors, and its tapes and executor's
backend weakly — nothing that leads back into the graph or to itself.
"""

from __future__ import annotations

import weakref
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch.autograd.graph import saved_tensors_hooks
from torch.nn.modules.batchnorm import _NormBase
from torch.utils._pytree import tree_flatten as _tree_flatten
from torch.utils._pytree import tree_unflatten as _tree_unflatten

from ..executor import Stats, start
from ..schedule import Backward, Forward, ForwardTape, Free, Schedule, ScheduleError
from ..strategies import make_schedule
from .hooks import SavedRecorder, outer_saved_hooks
from .measure import resident_keys


class CheckpointError(RuntimeError):
    """A checkpointed step that cannot continue correctly (the message says why and what to do)."""


_EMPTY = object()                      # a holder whose tensor is not recomputed yet


class Holder:
    """What autograd keeps in place of one saved tensor of a dropped stage."""

    __slots__ = ("tape", "value", "__weakref__")

    def __init__(self, tape):
        self.tape, self.value = tape, _EMPTY


class StageTape:
    """The holders of planned stage ``p`` in one step, in the order autograd packed them."""

    __slots__ = ("step", "p", "holders", "__weakref__")

    def __init__(self, step, p):
        self.step, self.p, self.holders = step, p, []


def _unpack(holder: Holder):
    if holder.value is _EMPTY:
        holder.tape.step.recompute(holder.tape.p)
    outer = holder.tape.step.outer
    return holder.value if outer is None else outer[1](holder.value)


_CACHE_ARGUMENTS = ("past_key_value", "past_key_values", "layer_past")


def _refuse_cache(k: int, kwargs: dict) -> None:
    """A re-run block would append to a key/value cache a second time: refuse before any wrong number."""
    cached = [name for name in _CACHE_ARGUMENTS if kwargs.get(name) is not None]
    if kwargs.get("use_cache") is True or cached:
        raise CheckpointError(f"ckpt.torch: block {k} was called with a key/value cache "
                              f"({', '.join(cached) or 'use_cache=True'}); recomputing it would append to the "
                              f"cache again. Call the model with use_cache=False while training with "
                              f"checkpointing (as Hugging Face does), or use strategy='store_all'")


# ------------------------------------------------------------------ plan

@dataclass(frozen=True)
class Plan:
    """A schedule over planned stages, and the block groups that form them."""

    schedule: Schedule
    groups: tuple                  # per planned stage: its block numbers (1-based), in call order
    group_of: tuple                # per block number (index 0 unused): its planned stage
    taped: frozenset               # planned stages taped in the first sweep
    recomputed: frozenset          # planned stages run again after Loss()
    replay_starts: frozenset
    loss_index: int

    @staticmethod
    def of(schedule: Schedule, groups) -> "Plan":
        """The plan of a training schedule whose first part is one sweep (else a clear error)."""
        try:
            sweep = schedule.first_sweep()
        except ScheduleError as e:
            raise ScheduleError(f"ckpt.torch: torch runs the part of a schedule before Loss() as the "
                                f"model's own forward, so it must be one sweep over stages 1..n "
                                f"(Save/Free allowed); {e}") from None
        group_of = [0] * (sum(len(g) for g in groups) + 1)
        for p, blocks in enumerate(groups, start=1):
            for k in blocks:
                group_of[k] = p
        after = schedule.actions[sweep.loss_index:]
        recomputed = frozenset(a.i for a in after if isinstance(a, (Forward, ForwardTape)))
        return Plan(schedule, tuple(groups), tuple(group_of), sweep.taped, recomputed,
                    schedule.replay_starts(), sweep.loss_index)

    @property
    def plain(self) -> bool:
        """True when nothing is dropped or re-run: plain torch does it all (store_all)."""
        return not self.recomputed and len(self.taped) == self.schedule.n


def fuse(n_blocks: int, inplace: frozenset) -> tuple:
    """Block groups: a block that modifies its input in place joins the group before it."""
    groups = []
    for k in range(1, n_blocks + 1):
        if groups and k in inplace:
            groups[-1].append(k)
        else:
            groups.append([k])
    return tuple(tuple(g) for g in groups)


# ------------------------------------------------------------------ replay state

class RngState:
    """The CPU and CUDA generators' states at one moment, to replay random draws."""

    def __init__(self, cuda_devices: tuple):
        self.devices, self.cpu = cuda_devices, torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in cuda_devices]

    def restore(self) -> None:
        """Put every generator back to this state."""
        torch.set_rng_state(self.cpu)
        for d, state in zip(self.devices, self.cuda):
            torch.cuda.set_rng_state(state, d)


def replay_state_bytes(schedule: Schedule, preserve_rng_state: bool = True) -> int:
    """Most host bytes of generator states a step of ``schedule`` holds at once, which the memory model
    does not count: add them to a predicted peak (``ckpt.predict_memory``; ``ckpt.optimal``'s budget).

    With ``preserve_rng_state`` a step keeps one CPU generator state (``torch.get_rng_state()``,
    5,056 B) per stage a re-run starts from (``Schedule.replay_starts``), from the first sweep to
    the step's end, and during each re-run one more (the caller's).  CUDA generator states are
    host memory too: a GPU peak holds none of them.
    """
    starts = len(schedule.replay_starts()) if preserve_rng_state else 0
    return (starts + 1) * rng_state_nbytes() if starts else 0


def rng_state_nbytes() -> int:
    """Bytes of one saved CPU generator state (``torch.get_rng_state()``)."""
    return torch.get_rng_state().untyped_storage().nbytes()


def _cuda_devices() -> tuple:
    return (torch.cuda.current_device(),) if torch.cuda.is_initialized() else ()


def _autocast_state() -> tuple:
    """(device type, enabled, dtype) per device type autocast knows here."""
    types = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    return tuple((d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in types)


@contextmanager
def _running_stats_kept(norms: list):
    """Norm layers update running statistics once per step: a re-run's update is undone.

    (Switching ``track_running_stats`` off instead would change what the layer saves.)
    """
    buffers = [b for m in norms for b in (m.running_mean, m.running_var, m.num_batches_tracked)
               if b is not None]
    kept = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in zip(buffers, kept):
                b.copy_(v)


_ONE_TENSOR = object()          # the spec of (args, kwargs) = ((tensor,), {}): the common case, no pytree walk


def tree_flatten(tree):
    """``torch.utils._pytree.tree_flatten``, short-cut for a lone tensor."""
    if isinstance(tree, torch.Tensor):
        return [tree], None
    return _tree_flatten(tree)


def flatten_call(args: tuple, kwargs: dict):
    """Leaves and spec of a call's (args, kwargs), short-cut for one tensor argument."""
    if not kwargs and len(args) == 1 and isinstance(args[0], torch.Tensor):
        return [args[0]], _ONE_TENSOR
    return _tree_flatten((args, kwargs))


def tree_unflatten(leaves, spec):
    """The inverse of ``tree_flatten`` above."""
    if spec is None:
        return leaves[0]
    if spec is _ONE_TENSOR:
        return (leaves[0],), {}
    return _tree_unflatten(leaves, spec)


def _detached(leaves) -> tuple:
    return tuple(v.detach() if isinstance(v, torch.Tensor) else v for v in leaves)


@dataclass
class BlockCall:
    """How block k was called in the first sweep, to call it again from its predecessor's output."""

    fn: object
    spec: object                   # pytree spec of (args, kwargs)
    leaves: list                   # constants (tensors detached), or None where a chain slot goes
    slots: tuple                   # (leaf position, index in the predecessor's output leaves)
    grad: tuple                    # (leaf position) of tensors that required grad
    inplace: bool = False          # the block modifies an input in place
    norms: list = ()               # its norm layers that update running statistics

    def inputs(self, x: tuple, taped: bool):
        """(args, kwargs) from the predecessor's output leaves x; taped: inputs as the first call's."""
        leaves = list(self.leaves)
        for pos, j in self.slots:
            leaves[pos] = x[j]
        if self.inplace:          # never modify a checkpoint or the caller's tensor; copies are not leaves
            leaves = [v.clone() if isinstance(v, torch.Tensor) else v for v in leaves]
        if taped:
            for pos in self.grad:
                v = leaves[pos]
                leaves[pos] = v.detach().requires_grad_() if not self.inplace else v.detach().requires_grad_().clone()
        return tree_unflatten(leaves, self.spec)


# ------------------------------------------------------------------ one step

class Step:
    """One training forward of a chain and, lazily, the rest of its schedule during backward."""

    def __init__(self, runner: "ChainRunner", plan: Plan):
        self.runner, self.plan = runner, plan
        self.track = runner.track_memory
        self.outer = _callers_hooks()
        self.recorder = SavedRecorder(runner.resident()) if self.track else None
        self.autocast = _autocast_state()
        self.cuda = _cuda_devices()
        self.calls: dict[int, BlockCall] = {}
        self.tapes: dict[int, weakref.ref] = {}      # dropped stage p → its StageTape (its holders own it)
        self.sweep_tape: StageTape | None = None      # the stage being swept: owned until its holders exist
        self.rng: dict[int, RngState] = {}
        self.run, self.pos, self.next_block, self.swept = None, 0, 1, False
        self.prev_out: list = []          # weak references to the last block's output tensors
        self.prev_pos: list = []          # their positions among its output leaves
        self.first_value = None           # a stage's output, handed to the executor's Forward
        self.refill_count = 0

    # -- first sweep: the model's own forward calls the blocks -------------------------------
    def call(self, k: int, fn, args: tuple, kwargs: dict, module=None):
        """Block k's output (``fn`` called; ``module`` owns its norm layers, default fn), run with
        grad as the schedule's first sweep says."""
        if k != self.next_block:
            raise CheckpointError(f"ckpt.torch: block {k} was called where block {self.next_block} was "
                                  f"expected; the checkpointed blocks must be called once each per "
                                  f"forward, in the order they were listed")
        self.next_block += 1
        plan = self.plan
        p = plan.group_of[k]
        opens = plan.groups[p - 1][0] == k
        leaves, spec = flatten_call(args, kwargs)
        if opens:
            self._open_stage(p, leaves)
        clones = None
        if p in plan.recomputed:
            _refuse_cache(k, kwargs)
            call = self._record(k, fn, leaves, spec)
            call.norms = self.runner.norms_of(fn if module is None else module)
            if opens and (k in self.runner.inplace or not self.runner.confirmed):
                clones = self._copies_to_protect(p, call, leaves)
        with self._first_hooks(p):
            out = fn(*args, **kwargs)
        if clones is not None:
            self._check_inplace(k, call, leaves, clones)
        out_leaves = tree_flatten(out)[0]
        self.prev_out = [weakref.ref(v) for v in out_leaves if isinstance(v, torch.Tensor)]
        self.prev_pos = [j for j, v in enumerate(out_leaves) if isinstance(v, torch.Tensor)]
        if plan.groups[p - 1][-1] == k:
            self._close_stage(p, out_leaves)
        return out

    def _open_stage(self, p: int, leaves) -> None:
        if self.run is None:
            x0 = tuple(v.detach() for v in leaves if isinstance(v, torch.Tensor))
            self.run = start(self.plan.schedule, _Backend(self), x0, y=True, account=self.track)
            if self.recorder is not None:         # the caller's input is resident, not saved
                self.recorder.exclude = self.recorder.exclude | {t.untyped_storage().data_ptr() for t in x0}
        acts = self.plan.schedule.actions
        while not isinstance(acts[self.pos], (Forward, ForwardTape)):
            self._do(acts[self.pos])
        if p in self.plan.replay_starts and self.runner.preserve_rng:
            self.rng[p] = RngState(self.cuda)
        if p not in self.plan.taped:
            self.sweep_tape = StageTape(self, p)
            self.tapes[p] = weakref.ref(self.sweep_tape)

    def _record(self, k, fn, leaves, spec) -> BlockCall:
        previous = {}
        for r, j in zip(self.prev_out, self.prev_pos):
            v = r()
            if v is not None:
                previous.setdefault(id(v), (v, j))
        consts, slots, grad = [], [], []
        for pos, v in enumerate(leaves):
            hit = previous.get(id(v)) if isinstance(v, torch.Tensor) else None
            if hit is not None and hit[0] is v:
                slots.append((pos, hit[1]))
                consts.append(None)
            else:
                consts.append(v.detach() if isinstance(v, torch.Tensor) else v)
            if isinstance(v, torch.Tensor) and v.requires_grad:
                grad.append(pos)
        call = BlockCall(fn, spec, consts, tuple(slots), tuple(grad))
        self.calls[k] = call
        return call

    def _copies_to_protect(self, p, call, leaves) -> list:
        """Copies of the inputs a re-run of stage p reads from the caller or a checkpoint (not the
        ones it recomputes), taken while it is not yet known whether the block modifies them."""
        from_checkpoint = p - 1 in self.plan.schedule.first_sweep().saved
        chained = {pos for pos, _ in call.slots}
        return [(pos, v._version, v.detach().clone() if from_checkpoint or pos not in chained else None)
                for pos, v in enumerate(leaves) if isinstance(v, torch.Tensor)]

    def _check_inplace(self, k, call, leaves, clones) -> None:
        """If block k modified an input in place, re-run it from copies taken before (forced
        checkpoint) and fuse it with the block before it from the next step on."""
        if all(leaves[pos]._version == version for pos, version, _ in clones):
            return
        call.inplace = True
        copied = {pos for pos, _, copy in clones if copy is not None}
        for pos, _, copy in clones:
            if copy is not None:
                call.leaves[pos] = copy
        call.slots = tuple((pos, j) for pos, j in call.slots if pos not in copied)
        self.runner.found_inplace(k)

    def _first_hooks(self, p: int):
        if p in self.tapes:
            tape, holders = self.sweep_tape, self.sweep_tape.holders

            def pack(t):
                h = Holder(tape)
                holders.append(weakref.ref(h))
                return h
            pack.ckpt_own = True
            return saved_tensors_hooks(pack, _unpack)
        if self.recorder is not None:
            return self.recorder.hooks(self.outer)
        return _NO_HOOKS

    def _close_stage(self, p: int, out_leaves) -> None:
        self.sweep_tape = None
        self.first_value = _detached(out_leaves)
        self._do(self.plan.schedule.actions[self.pos])          # the stage's Forward/ForwardTape
        if p == self.plan.schedule.n:
            self.swept = True
            self.prev_out = []
            acts = self.plan.schedule.actions
            while self.pos <= self.plan.loss_index:
                self._do(acts[self.pos])
            self._settle()
            self.runner.finished_sweep(self)

    def _do(self, a) -> None:
        self.run.do(a)
        if self.track:
            self.run._note_peak(0)                  # after action k: its index is the peak's
        self.run.k += 1
        self.pos += 1
        if self.track and self.pos == len(self.plan.schedule.actions):
            self.run.result(self.plan.schedule)              # fills the stats' peak breakdown

    def _settle(self) -> None:
        """Run what is left when it is only Backward/Free (no tape left to recompute)."""
        acts = self.plan.schedule.actions
        if all(isinstance(a, (Backward, Free)) for a in acts[self.pos:]):
            while self.pos < len(acts):
                self._do(acts[self.pos])

    # -- backward: advance the schedule until stage p's tape is recomputed --------------------
    def recompute(self, p: int) -> None:
        """Run the schedule's actions until ``ForwardTape(p)`` has refilled stage p's holders."""
        if not self.swept:
            raise CheckpointError(f"ckpt.torch: backward reached checkpointed stage {p}, but the forward "
                                  f"did not call every listed block (block {self.next_block} was never "
                                  f"called); list only blocks the model's forward calls, in call order")
        acts = self.plan.schedule.actions
        user_rng = RngState(self.cuda) if self.rng else None
        try:
            with self._replay_context():
                while self.pos < len(acts):
                    a = acts[self.pos]
                    self._do(a)
                    if isinstance(a, ForwardTape) and a.i == p:
                        break
                else:
                    raise CheckpointError(f"ckpt.torch: stage {p}'s saved tensors are needed again, but "
                                          f"the schedule has already consumed its tape and ended; this "
                                          f"graph cannot be backwarded again through checkpointed stages")
        finally:
            if user_rng is not None:
                user_rng.restore()
        if self.pos < len(acts) and acts[self.pos] == Backward(p):
            # autograd backwards stage p next, from its tape alone: the replayed x_p is not needed, and
            # held until the executor's Backward(p) (after autograd's) it would add one output to the peak
            self.run.drop_current()
        self._settle()

    def _replay_context(self):
        stack = ExitStack()
        for device, enabled, dtype in self.autocast:
            stack.enter_context(torch.autocast(device, dtype=dtype, enabled=enabled))
        return stack

    def replay(self, p: int, x: tuple, taped: bool) -> tuple:
        """Planned stage p again from its predecessor's output leaves x; taped: refill its holders."""
        if p in self.rng:
            self.rng[p].restore()
        blocks = self.plan.groups[p - 1]
        norms = [m for k in blocks for m in self.calls[k].norms]
        with (_running_stats_kept(norms) if norms else _NO_HOOKS):
            if taped:
                tape = self._tape(p)
                with torch.enable_grad(), self._refill_hooks(tape):
                    x = self._run_blocks(blocks, x, True)
                self._check_refilled(tape)
            else:
                with torch.no_grad():
                    x = self._run_blocks(blocks, x, False)
        return _detached(x)

    def _run_blocks(self, blocks, x: tuple, taped: bool) -> tuple:
        for n, k in enumerate(blocks):
            call = self.calls[k]
            args, kwargs = call.inputs(x, taped and n == 0)
            x = tree_flatten(call.fn(*args, **kwargs))[0]
        return x

    def _tape(self, p: int) -> StageTape:
        """Stage p's holders (an empty tape once autograd has freed them all)."""
        tape = self.tapes[p]()
        return StageTape(self, p) if tape is None else tape

    def _refill_hooks(self, tape: StageTape):
        p = tape.p
        self.refill_count = 0
        outer_pack = self.outer[0] if self.outer is not None else None
        record = self.recorder.record if self.recorder is not None else None

        def pack(t):
            k = self.refill_count
            self.refill_count += 1
            if k >= len(tape.holders):
                raise CheckpointError(f"ckpt.torch: stage {p} saved more tensors when recomputed than "
                                      f"in the forward ({len(tape.holders)}); the stage is not "
                                      f"deterministic (data-dependent control flow, or state that "
                                      f"changed between the forward and the backward)")
            if record is not None:
                record(t)
            h = tape.holders[k]()
            if h is not None:
                h.value = t.detach() if outer_pack is None else outer_pack(t)
            return None

        pack.ckpt_own = True
        return saved_tensors_hooks(pack, _no_unpack)

    def _check_refilled(self, tape: StageTape) -> None:
        p, expected = tape.p, len(tape.holders)
        if self.refill_count != expected:
            raise CheckpointError(f"ckpt.torch: stage {p} saved {expected} tensors in the forward but "
                                  f"{self.refill_count} when recomputed; the stage is not deterministic "
                                  f"(data-dependent control flow, or state that changed between the "
                                  f"forward and the backward)")


def _callers_hooks():
    """The caller's saved-tensor hooks (``save_on_cpu``…), or None; an enclosing step's are not:
    a nested chain's saved tensors are its own holders, dropped and refilled by its own step."""
    outer = outer_saved_hooks()
    return None if outer is None or getattr(outer[0], "ckpt_own", False) else outer


def _no_unpack(_):
    raise CheckpointError("ckpt.torch: a recomputed stage's own graph was backwarded; only the "
                          "original graph can be (do not call backward inside a checkpointed block)")


_NO_HOOKS = nullcontext()


class _Backend:
    """The executor's view of a step: stages run by the model first, then re-run by ``Step.replay``.

    It refers to its step weakly: the step owns the executor's run, which owns this backend, and a
    strong reference back would be a cycle that keeps the step (its checkpoints and RNG states) alive
    after its backward, or after a forward never backwarded, until the garbage collector runs.
    """

    def __init__(self, step: Step):
        self._step = weakref.ref(step)

    @property
    def step(self) -> Step:
        """The step this backend runs (alive while its run is used: the step calls it)."""
        return self._step()

    def check_inputs(self, n, x, y) -> None:
        """Nothing to check: the plan was built for these blocks."""

    def forward(self, i, x, keep_tape):
        """x_i and its tape (Held records when counting bytes) from the first sweep or a replay."""
        step = self.step
        if not step.swept:
            value, step.first_value = step.first_value, None
        else:
            value = step.replay(i, x, keep_tape)
        tape = step.recorder.take() if keep_tape and step.recorder is not None else ()
        return value, tape if keep_tape else None

    def loss(self, x, y):
        """The caller computes the loss; autograd brings δ_n: nothing to hold."""
        return None, None

    def backward(self, i, tape, delta):
        """Autograd consumes tape i itself: nothing to compute here."""
        return None, {}

    def storage(self, value):
        """Identity of the storage(s) behind a Held record, a tensor or a tuple of leaves."""
        if isinstance(value, tuple):      # a chain value: its leaves (one tensor: that tensor's key)
            return self.storage(value[0]) if len(value) == 1 else tuple(self.storage(v) for v in value)
        if isinstance(value, torch.Tensor):
            return value.untyped_storage().data_ptr()
        return getattr(value, "key", ("object", id(value)))

    def nbytes(self, value):
        """Bytes of the storage(s) behind ``value``."""
        if isinstance(value, tuple):
            return sum(self.nbytes(v) for v in value)
        if isinstance(value, torch.Tensor):
            return value.untyped_storage().nbytes()
        return getattr(value, "nbytes", 0)

    def temp_bytes(self, action, operand, y=None) -> int:
        """Not modelled on torch: 0 (the allocator's transients are measured, not predicted)."""
        return 0


# ------------------------------------------------------------------ the chain's owner

class ChainRunner:
    """What a checkpointed chain keeps across steps: strategy, plan, in-place blocks, last stats."""

    def __init__(self, blocks, strategy="sqrt_n", preserve_rng_state: bool = True,
                 track_memory: bool = False, schedule_fn=None, **options):
        for name, flag in (("preserve_rng_state", preserve_rng_state), ("track_memory", track_memory)):
            if not isinstance(flag, bool):
                raise TypeError(f"ckpt.torch: {name} must be True or False, got {flag!r}")
        self.blocks = blocks                 # callables, in call order (for resident bytes and norms)
        self.strategy, self.options = strategy, options
        self.schedule_fn = schedule_fn
        self.preserve_rng, self.track_memory = preserve_rng_state, track_memory
        self.inplace: frozenset = frozenset()
        self.confirmed = False              # a whole step ran: the in-place blocks are known
        self.last_stats: Stats | None = None
        self._plans: dict = {}
        self._found: frozenset = frozenset()   # in-place blocks found by the current step
        self._norms: dict = {}                 # id(module) → (module, its norm layers)
        self.plan()                          # a bad strategy or option fails here, not mid-training

    def reset(self, blocks) -> None:
        """Forget plans and in-place findings: the blocks changed."""
        self.blocks, self.inplace, self.confirmed, self._plans = blocks, frozenset(), False, {}
        self._found = frozenset()

    def forget_plans(self) -> None:
        """Drop the cached plans: the schedule function's answer changed (a budget re-planned)."""
        self._plans = {}

    def plan(self) -> Plan:
        """The plan for the blocks as currently fused."""
        plan = self._plans.get(self.inplace)
        if plan is None:
            groups = fuse(len(self.blocks), self.inplace)
            schedule = (self.schedule_fn(len(groups)) if self.schedule_fn is not None
                        else make_schedule(self.strategy, len(groups), **self.options))
            if not schedule.is_training:
                raise ValueError(f"ckpt.torch: strategy {self.strategy!r} built a prediction schedule "
                                 f"(no Loss()); checkpointing needs a training one")
            plan = self._plans[self.inplace] = Plan.of(schedule.validate(), groups)
        return plan

    def start(self) -> Step | None:
        """A step for the next forward, or None when plain torch runs it (no grad, or nothing dropped)."""
        if not torch.is_grad_enabled():
            return None
        if not self._found <= self.inplace:
            self.inplace = self.inplace | self._found
        plan = self.plan()
        if plan.plain and not self.track_memory:
            s = plan.schedule
            self.last_stats = Stats(forward_steps=s.forward_steps, backward_steps=s.backward_steps)
            return None
        self.last_stats = None
        return Step(self, plan)            # not kept here: a step whose forward raises is freed with its frames

    def finished_sweep(self, step: Step) -> None:
        """Called by a step whose first sweep ended: its stats are the latest."""
        self.last_stats = step.run.stats
        self.confirmed = True

    def norms_of(self, module) -> list:
        """The norm layers in ``module`` that update running statistics now (searched once per module)."""
        entry = self._norms.get(id(module))
        if entry is None or entry[0] is not module:
            layers = ([m for m in module.modules() if isinstance(m, _NormBase)]
                      if isinstance(module, torch.nn.Module) else [])
            entry = self._norms[id(module)] = (module, layers)
        return [m for m in entry[1] if m.training and m.track_running_stats]

    def found_inplace(self, k: int) -> None:
        """Block k modifies its input in place: fuse it with its predecessor from the next step on
        (this step's copies keep it correct; ``schedule`` stays the one this step runs)."""
        self._found = self._found | {k}

    def resident(self) -> frozenset:
        """Storages of the blocks' parameters and buffers (not counted as saved bytes)."""
        return frozenset(resident_keys(self.blocks))
