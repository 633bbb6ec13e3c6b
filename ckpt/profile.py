"""Cost profiles: per stage, what it costs in time and bytes — what planners read.

A ``Profile`` describes a chain of n stages by numbers alone, so the memory
model (``ckpt.backends.symbolic.ProfileBackend``) and the planners
(``ckpt.planners``) work the same for a numpy ``Chain``, real torch stages or a
chain written by hand.  Per stage i (``StageCost``):

* ``forward_time`` / ``backward_time`` – one forward (taped or not) / one backward;
* ``output_bytes`` – x_i; δ_i has x_i's shape, so it has these bytes too;
* ``tape_bytes`` – everything its tape keeps, each storage once; of these,
  x_{i-1} when ``tape_keeps_input`` and x_i when ``tape_keeps_output`` (shared
  with the activations: counted once by the executor), the rest its own;
* ``forward_transient`` / ``backward_transient`` – high-water of what one forward /
  backward allocates, outputs included (``Backend.temp_bytes``);
* ``grad_bytes`` – its parameter gradients, held from its backward to the step's end.

Plus ``input_bytes`` (x_0, the caller's: never counted in a peak, but δ_0 has its
size), the loss's time and transient bytes, ``loss_bytes`` (what the loss value
itself keeps from ``Loss()`` to the step's end: 0 for a float; torch's ``mse_loss``
returns a 0-d view of a (batch, C) buffer), and ``time_unit`` saying whether
times are seconds (measured) or FLOPs (a model).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from .layers import nbytes


@dataclass(frozen=True)
class StageCost:
    """One stage's time and bytes (see the module docstring for each field)."""

    forward_time: float
    backward_time: float
    output_bytes: int
    tape_bytes: int
    tape_keeps_input: bool = False
    tape_keeps_output: bool = False
    forward_transient: int = 0
    backward_transient: int = 0
    grad_bytes: int = 0

    def __post_init__(self):
        for name in ("output_bytes", "tape_bytes", "forward_transient", "backward_transient", "grad_bytes"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"profile: {name} must be an int ≥ 0 (bytes), got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("forward_time", "backward_time"):
            if not (np.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"profile: {name} must be a finite number ≥ 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Profile:
    """A chain's costs: its stages' ``StageCost`` and the input and loss."""

    stages: tuple[StageCost, ...]
    input_bytes: int
    loss_time: float = 0.0
    loss_transient: int = 0
    loss_bytes: int = 0
    time_unit: str = "seconds"
    source: str = "by hand"
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(self.stages))
        if not self.stages:
            raise ValueError("profile: a profile needs at least one stage, got none")
        if not all(isinstance(s, StageCost) for s in self.stages):
            raise TypeError("profile: stages must be ckpt.StageCost objects")
        for name in ("input_bytes", "loss_bytes"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"profile: {name} must be an int ≥ 0, got {value!r}")

    def __len__(self) -> int:
        return len(self.stages)

    def stage(self, i: int) -> StageCost:
        """Stage i's costs, i in 1..n."""
        return self.stages[i - 1]

    def activation_bytes(self, i: int) -> int:
        """Bytes of x_i (x_0 is the input)."""
        return self.input_bytes if i == 0 else self.stages[i - 1].output_bytes

    def tape_own_bytes(self, i: int) -> int:
        """Bytes of tape i that are neither its input nor its output."""
        s = self.stages[i - 1]
        return (s.tape_bytes - s.tape_keeps_input * self.activation_bytes(i - 1)
                - s.tape_keeps_output * s.output_bytes)

    def schedule_time(self, schedule) -> float:
        """Predicted time of ``schedule``: the sum of its actions' times."""
        from .schedule import Backward, Forward, ForwardTape, Loss
        total = 0.0
        for a in schedule.actions:
            if isinstance(a, (Forward, ForwardTape)):
                total += self.stages[a.i - 1].forward_time
            elif isinstance(a, Backward):
                total += self.stages[a.i - 1].backward_time
            elif isinstance(a, Loss):
                total += self.loss_time
        return total

    # -- JSON ---------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain data (what ``save`` writes)."""
        d = asdict(self)
        d["stages"] = [asdict(s) for s in self.stages]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Profile":
        """Inverse of ``to_dict``."""
        d = dict(d)
        d["stages"] = tuple(StageCost(**s) for s in d["stages"])
        return cls(**d)

    def save(self, path) -> None:
        """Write the profile as JSON, so a plan can be rebuilt exactly."""
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)

    @classmethod
    def load(cls, path) -> "Profile":
        """Read a profile written by ``save``; a clear error for a missing or foreign file."""
        try:
            with open(path) as f:
                return cls.from_dict(json.load(f))
        except FileNotFoundError:
            raise FileNotFoundError(f"profile: no profile file at {str(path)!r}") from None
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"profile: {str(path)!r} is not a ckpt.Profile written by Profile.save "
                             f"({type(e).__name__}: {e})") from None

    # -- builders -----------------------------------------------------------
    @classmethod
    def from_chain(cls, chain, batch: int, times: str = "flops", repeats: int = 3) -> "Profile":
        """Exact bytes from a numpy ``Chain``'s memory model; times a FLOP model or measured.

        ``times="flops"``: a Dense stage costs 2·B·in·out multiply-adds forward
        and twice that backward (δa and ∂W); the loss 4·B·C.  ``times="measured"``:
        medians of ``repeats`` numpy runs of each stage, in seconds.
        """
        from .memory import symbolic_inputs
        from .backends.symbolic import SymbolicArray
        if times not in ("flops", "measured"):
            raise ValueError(f"profile: times must be 'flops' or 'measured', got {times!r}")
        x, y = symbolic_inputs(chain, batch)
        shapes, dtype = chain.shapes(x.shape), chain.dtype
        stages = []
        for i, stage in enumerate(chain.stages, start=1):
            a, out = SymbolicArray(shapes[i - 1], dtype), SymbolicArray(shapes[i], dtype)
            tape = stage.tape_of(a, out)
            flops = _dense_flops(stage, shapes[i - 1])
            stages.append(StageCost(
                forward_time=flops, backward_time=2 * flops, output_bytes=out.nbytes,
                tape_bytes=sum(v.nbytes for v in {id(v): v for v in tape}.values()),
                tape_keeps_input=any(v is a for v in tape), tape_keeps_output=any(v is out for v in tape),
                forward_transient=stage.forward_temp(a.shape, dtype),
                backward_transient=stage.backward_temp(out.shape, dtype),
                grad_bytes=sum(nbytes(p.shape, dtype) for p in stage.params.values())))
        profile = cls(tuple(stages), x.nbytes, loss_time=4 * int(np.prod(shapes[-1])),
                      loss_transient=chain.loss.temp(shapes[-1], y.shape, dtype), time_unit="flops",
                      source=f"numpy chain, batch {batch}, FLOP model", meta={"batch": batch})
        return _measured_chain_times(profile, chain, batch, repeats) if times == "measured" else profile

    @classmethod
    def from_torch(cls, stages, sample_input, repeats: int = 5, warmup: int = 1) -> "Profile":
        """Measured times (medians; CUDA-synchronised on a GPU) and saved-tensor bytes of torch stages."""
        return _torch_profile(cls, stages, sample_input, repeats, warmup)


def _dense_flops(stage, in_shape) -> float:
    """2·B·in·out for a stage with a weight W (out, in); else one op per output element."""
    W = getattr(stage, "W", None)
    if W is not None:
        return 2.0 * in_shape[0] * W.shape[0] * W.shape[1]
    return float(np.prod(stage.out_shape(in_shape)))


def median_time(fn, repeats: int, sync=lambda: None) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs (``sync`` before reading the clock)."""
    samples = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _measured_chain_times(profile: Profile, chain, batch: int, repeats: int) -> Profile:
    """``profile`` with each stage's and the loss's times measured on numpy (seconds)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, chain.stages[0].in_features)).astype(chain.dtype)
    stages = []
    for stage, cost in zip(chain.stages, profile.stages):
        out, tape = stage.forward(x, True)
        fwd = median_time(lambda: stage.forward(x, True), repeats)
        bwd = median_time(lambda: stage.backward(tape, np.ones_like(out)), repeats)
        stages.append(replace(cost, forward_time=fwd, backward_time=bwd))
        x = out
    from .memory import symbolic_inputs
    _, y_sym = symbolic_inputs(chain, batch)
    y = (np.zeros(y_sym.shape, y_sym.dtype) if y_sym.dtype.kind == "i"
         else np.zeros(y_sym.shape, chain.dtype))
    loss = median_time(lambda: chain.loss(x, y), repeats)
    return replace(profile, stages=tuple(stages), loss_time=loss, time_unit="seconds",
                   source=f"numpy chain, batch {batch}, measured (median of {repeats})")


def schedule_for(model, strategy, batch=None, **options):
    """The validated schedule of ``strategy`` for ``model``, profiling it when the strategy plans from costs.

    ``model`` is a ``Profile``, a numpy ``Chain`` (with ``batch``, an int) or
    torch stages (with ``batch``, a sample input: measured by ``Profile.from_torch``).
    """
    from .strategies import make_schedule, needs_profile
    profile = None
    if needs_profile(strategy):
        profile = _profile_of(model, batch)
    return make_schedule(strategy, len(model), profile=profile, **options)


def _profile_of(model, batch) -> Profile:
    if isinstance(model, Profile):
        return model
    if batch is None:
        raise ValueError("profile: this strategy plans from a cost profile; pass batch= (an int for a numpy "
                         "Chain, a sample input for torch stages) or a ckpt.Profile")
    from .chain import Chain
    if isinstance(model, Chain):
        return Profile.from_chain(model, batch)
    return Profile.from_torch(model, batch)


def _torch_profile(cls, stages, x, repeats: int, warmup: int) -> Profile:
    """Profile torch stages: saved-tensor bytes (``ckpt.saved_bytes``' recorder) and median times.

    Transients are measured as the peak allocated above the live bytes: on CUDA
    from the allocator's peak counter, on CPU (which has none) from the
    profiler's allocation events.  Without them the memory model misses the
    moment inside ``Backward(i)`` when stage i's new gradients exist beside its
    tape.  When a profiler is already running (it cannot be nested), CPU
    transients are 0 and ``source`` says so.
    """
    import torch
    from .torch.inspect import _stages, saved_bytes
    modules = [m for _, m in _stages(stages)]
    tapes = saved_bytes(stages, x)
    cuda = any(t.is_cuda for t in items(x) if isinstance(t, torch.Tensor))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    transients = _cuda_transients if cuda else _cpu_transients
    measured = cuda or not torch.autograd.profiler._is_profiler_enabled
    out_bytes = lambda v: sum(t.untyped_storage().nbytes() for t in items(v) if isinstance(t, torch.Tensor))
    costs, prev = [], x
    for module, tape in zip(modules, tapes):
        inp = _leaf(prev)
        for _ in range(warmup):
            _stage_step(module, inp)
        fwd = median_time(lambda: module(inp), repeats, sync)
        bwd = statistics.median(_stage_step(module, inp, sync)[1] for _ in range(repeats))
        f_peak, b_peak = transients(module, inp) if measured else (0, 0)
        keeps_input, keeps_output, out = _tape_shares(module, inp)
        costs.append(StageCost(
            forward_time=fwd, backward_time=bwd, output_bytes=out_bytes(out), tape_bytes=tape,
            tape_keeps_input=keeps_input, tape_keeps_output=keeps_output,
            forward_transient=f_peak, backward_transient=b_peak,
            grad_bytes=sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)))
        prev = out.detach() if isinstance(out, torch.Tensor) else out
    return cls(tuple(costs), out_bytes(x), time_unit="seconds",
               source=f"torch stages on {'cuda' if cuda else 'cpu'}, measured (median of {repeats})"
                      + ("" if measured else "; transients not measured (0): a profiler was running"))


def _leaf(v):
    """``v`` detached, floating tensors requiring grad (as a stage's input during training)."""
    import torch
    from torch.utils._pytree import tree_map
    return tree_map(lambda t: t.detach().requires_grad_(t.is_floating_point()) if isinstance(t, torch.Tensor)
                    else t, v)


def _tape_shares(module, inp) -> tuple[bool, bool, object]:
    """Whether the stage's saved tensors include its input's / its output's storage; and its output."""
    import torch
    from torch.autograd.graph import saved_tensors_hooks
    from .torch.hooks import storage_key
    saved = set()

    def pack(t):
        saved.add(storage_key(t))
        return t.detach()

    with torch.enable_grad(), saved_tensors_hooks(pack, lambda t: t):
        out = module(inp)
    keys = lambda v: {storage_key(t) for t in items(v) if isinstance(t, torch.Tensor)}
    return bool(keys(inp) & saved), bool(keys(out) & saved), out


def _stage_step(module, inp, sync=lambda: None):
    """One taped forward and backward of ``module`` (ones as the output gradient): (output, backward seconds)."""
    import torch
    with torch.enable_grad():
        out = module(inp)
    outs = [t for t in items(out) if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = [torch.ones_like(t) for t in outs]
    sync()
    t0 = time.perf_counter()
    if outs:
        torch.autograd.backward(outs, grads)
    sync()
    return out, time.perf_counter() - t0


def _cuda_transients(module, inp) -> tuple[int, int]:
    """Peak CUDA bytes a taped forward / a backward allocate above what was live before it."""
    import torch
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with torch.enable_grad():
        out = module(inp)
    f_peak = torch.cuda.max_memory_allocated() - base
    outs = [t for t in items(out) if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = [torch.ones_like(t) for t in outs]
    live = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    if outs:
        torch.autograd.backward(outs, grads)
    b_peak = torch.cuda.max_memory_allocated() - live
    return f_peak, b_peak


def _cpu_transients(module, inp) -> tuple[int, int]:
    """Peak CPU bytes a taped forward / a backward allocate above what was live before it.

    In a step, autograd frees δ_i as soon as stage i has used it, so the backward's peak may
    come after δ_i is gone; δ_i is therefore made inside the backward (the gradient of a sum of
    the output times ones) and its bytes taken off, as the memory model holds δ_i beside the
    transient.
    """
    import torch
    with torch.enable_grad():
        f_peak, out = _cpu_peak(lambda: module(inp))
        outs = [t for t in items(out) if isinstance(t, torch.Tensor) and t.requires_grad]
        if not outs:
            return f_peak, 0
        total = sum((t * torch.ones_like(t)).sum() for t in outs)
    delta = sum(t.numel() * t.element_size() for t in outs)
    del out, outs
    b_peak, _ = _cpu_peak(total.backward)
    return f_peak, max(0, b_peak - delta)


def _cpu_peak(fn) -> tuple[int, object]:
    """(peak bytes held by torch's CPU allocator above the entry while ``fn()`` runs, its result),
    from the profiler's allocation and free events (the CPU allocator keeps no peak counter)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = sorted((e for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type().name == "CPU"), key=lambda e: e.start_ns())
    held = peak = 0
    for e in events:
        held += e.nbytes()
        peak = max(peak, held)
    return peak, result


def items(v) -> list:
    """The leaves of an activation (a tensor, or any pytree of them)."""
    from torch.utils._pytree import tree_flatten
    return tree_flatten(v)[0]
