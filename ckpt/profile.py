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
    def from_chain(cls, chain, batch: int, times: str = "flops", repeats: int = 3,
                   pool_identical: bool = True) -> "Profile":
        """Exact bytes from a numpy ``Chain``'s memory model; times a FLOP model or measured.

        ``times="flops"``: a Dense stage costs 2·B·in·out multiply-adds forward
        and twice that backward (δa and ∂W); the loss 4·B·C.  ``times="measured"``:
        medians of ``repeats`` numpy runs of each stage, in seconds; with
        ``pool_identical``, stages with one ``numpy_stage_signature`` (same class, input
        shape, parameters' shapes and dtypes, other attributes and bytes) get the median
        of all their samples pooled (``pooled_medians``), so identical stages have
        identical times and the planner shares their sub-problems.
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
        if times == "flops":
            return profile
        return _measured_chain_times(profile, chain, batch, repeats, pool_identical)

    @classmethod
    def from_torch(cls, stages, sample_input, repeats: int = 5, warmup: int = 1,
                   pool_identical: bool = True) -> "Profile":
        """Measured times (medians; CUDA-synchronised on a GPU) and bytes of torch stages
        (``ckpt.torch.measure``: the bytes the torch wrappers' memory check counts too).

        With ``pool_identical``, ``nn.Module`` stages with one structure signature
        (``ckpt.torch.measure.stage_signature``: every submodule's type, simple public
        attributes, parameters and buffers; the input's tensors; the measured bytes) get one
        forward and one backward time: the median of all their samples pooled.  Identical
        blocks run the same kernels on the same shapes, so their differences are noise, and
        only equal costs let ``ckpt.optimal`` share work between equal sub-chains.
        ``pool_identical=False``: each stage's own medians.

        A schedule's peak predicted from it (``ckpt.predict_memory``, ``ckpt.optimal``'s budget) is
        what the torch wrappers' step allocates running that schedule, except the CPU generator
        states it keeps to replay random draws (at most ``ckpt.torch.replay_state_bytes(schedule)``:
        5,056 B per re-run start, and one more during a re-run) and the caller's loss value."""
        from .torch.measure import torch_profile
        return torch_profile(stages, sample_input, repeats, warmup, pool_identical)


def _dense_flops(stage, in_shape) -> float:
    """2·B·in·out for a stage with a weight W (out, in); else one op per output element."""
    W = getattr(stage, "W", None)
    if W is not None:
        return 2.0 * in_shape[0] * W.shape[0] * W.shape[1]
    return float(np.prod(stage.out_shape(in_shape)))


def time_samples(fn, repeats: int, sync=lambda: None) -> list[float]:
    """Wall seconds of ``repeats`` runs of ``fn()`` (``sync`` before reading the clock)."""
    samples = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - t0)
    return samples


def median_time(fn, repeats: int, sync=lambda: None) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs (``sync`` before reading the clock)."""
    return statistics.median(time_samples(fn, repeats, sync))


# ------------------------------------------------------------------ pooling the times of identical stages

class Unrepresentable(ValueError):
    """A value a structure signature cannot describe: the stage holding it does not pool."""


_SIMPLE = (type(None), bool, int, float, complex, str, bytes)


def describe(value, leaf=None):
    """A hashable description of ``value``: simple values (None, bool, int, float, complex, str, bytes,
    numpy scalars) with their type, tuples, lists and dicts of describable values; anything else as ``leaf(value)``
    describes it (a backend's arrays), or ``Unrepresentable``."""
    if isinstance(value, _SIMPLE) or (isinstance(value, np.generic) and not isinstance(value, np.object_)):
        return type(value).__name__, value
    if isinstance(value, (tuple, list)):
        return type(value).__name__, tuple(describe(v, leaf) for v in value)
    if isinstance(value, dict):
        return "dict", tuple((describe(k, leaf), describe(v, leaf)) for k, v in value.items())
    described = leaf(value) if leaf is not None else None
    if described is None:
        raise Unrepresentable(f"profile: a {type(value).__name__} has no structure signature")
    return described


def public_attributes(obj, leaf=None) -> tuple:
    """``describe`` of each of ``obj``'s own attributes whose name does not start with '_', in order."""
    return tuple((name, describe(v, leaf)) for name, v in vars(obj).items() if not name.startswith("_"))


def pooled_medians(samples: list, signatures: list) -> tuple[list[tuple[float, float]], str]:
    """Per stage (forward, backward) medians, and a note for ``Profile.source``.

    ``samples[i]`` is stage i's (forward samples, backward samples); stages with one signature
    (not None) get the median of all their samples pooled (a member may have none of its own), the
    others the median of their own.
    """
    groups: dict = {}
    for i, key in enumerate(signatures):
        groups.setdefault(("pool", key) if key is not None else ("own", i), []).append(i)
    medians = [None] * len(samples)
    for members in groups.values():
        pooled = tuple(statistics.median([t for i in members for t in samples[i][k]]) for k in (0, 1))
        for i in members:
            medians[i] = pooled
    shared = [m for m in groups.values() if len(m) > 1]
    note = (f"times pooled over {len(shared)} groups of identical stages ({sum(map(len, shared))} stages)"
            if shared else "times per stage: no two stages identical")
    return medians, note


def numpy_stage_signature(stage, x, cost: StageCost):
    """What decides a numpy stage's time, None when something is unrepresentable: its class, the input
    ``x``'s shape and dtype, its parameters' shapes and dtypes, its other public attributes (objects among
    them by their class and public attributes) and its bytes (``cost`` with times zeroed)."""
    try:
        params = tuple((name, p.shape, p.dtype.str) for name, p in stage.params.items())
        return (type(stage), x.shape, np.dtype(x.dtype).str, params, public_attributes(stage, _numpy_leaf),
                replace(cost, forward_time=0.0, backward_time=0.0))
    except Unrepresentable:
        return None


def _numpy_leaf(value, depth: int = 0):
    """Arrays by shape and dtype; non-callable plain objects (a ``Dense``'s activation) by class and
    public attributes."""
    if isinstance(value, np.ndarray):
        return "ndarray", value.shape, value.dtype.str
    if callable(value) or not hasattr(value, "__dict__") or depth > 3:
        return None
    return type(value), public_attributes(value, lambda v: _numpy_leaf(v, depth + 1))


def _measured_chain_times(profile: Profile, chain, batch: int, repeats: int, pool_identical: bool) -> Profile:
    """``profile`` with each stage's and the loss's times measured on numpy (seconds), pooled over
    identical stages when ``pool_identical``."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, chain.stages[0].in_features)).astype(chain.dtype)
    samples, signatures = [], []
    for stage, cost in zip(chain.stages, profile.stages):
        out, tape = stage.forward(x, True)
        samples.append((time_samples(lambda: stage.forward(x, True), repeats),
                        time_samples(lambda: stage.backward(tape, np.ones_like(out)), repeats)))
        signatures.append(numpy_stage_signature(stage, x, cost) if pool_identical else None)
        x = out
    medians, note = pooled_medians(samples, signatures)
    stages = tuple(replace(cost, forward_time=fwd, backward_time=bwd)
                   for cost, (fwd, bwd) in zip(profile.stages, medians))
    from .memory import symbolic_inputs
    _, y_sym = symbolic_inputs(chain, batch)
    y = (np.zeros(y_sym.shape, y_sym.dtype) if y_sym.dtype.kind == "i"
         else np.zeros(y_sym.shape, chain.dtype))
    loss = median_time(lambda: chain.loss(x, y), repeats)
    source = f"numpy chain, batch {batch}, measured (median of {repeats}" + (f"; {note})" if pool_identical else ")")
    return replace(profile, stages=stages, loss_time=loss, time_unit="seconds", source=source)


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
