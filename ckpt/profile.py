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
        for i in range(1, len(self.stages) + 1):       # the planner's byte arithmetic relies on it
            if self.tape_own_bytes(i) < 0:
                s = self.stages[i - 1]
                raise ValueError(
                    f"profile: stage {i}'s tape_bytes ({s.tape_bytes:,}) is less than what it says it keeps "
                    f"(input {s.tape_keeps_input * self.activation_bytes(i - 1):,} + output "
                    f"{s.tape_keeps_output * s.output_bytes:,} B); tape_bytes counts a kept input or output "
                    f"too: raise it, or set tape_keeps_input / tape_keeps_output False")

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
        """Measured times (medians; CUDA-synchronised on a GPU) and bytes of torch stages
        (``ckpt.torch.measure``: the bytes the torch wrappers' memory check counts too).

        A schedule's peak predicted from it (``ckpt.predict_memory``, ``ckpt.optimal``'s budget) is
        what the torch wrappers' step allocates running that schedule, except the CPU generator
        states it keeps to replay random draws (at most ``ckpt.torch.replay_state_bytes(schedule)``:
        5,056 B per re-run start, and one more during a re-run) and the caller's loss value."""
        from .torch.measure import torch_profile
        return torch_profile(stages, sample_input, repeats, warmup)


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
