"""Workloads: build one configuration's model and its step, on numpy or torch.

A configuration is a square MLP of ``depth`` Dense+ReLU stages of ``width`` units,
MSE loss, one ``batch`` of inputs.  ``mode="train"`` is forward + backward + optimizer
step; ``mode="predict"`` is forward only (no tapes on numpy, ``torch.no_grad()`` on torch).

What a measured region contains (everything else — parameters, inputs, the schedule
itself — is allocated before it and excluded, as in ``ckpt.predict_memory``):

* train: the optimizer's state (allocated at the region's start, as it is resident
  during every later step), the step's activations, tapes, δ's, gradients and temporaries,
  and the optimizer update;
* predict: the forward's activations and output.

numpy runs the engine (``ckpt.execute`` of the strategy's schedule); torch uses the
engine's torch backend (``ckpt.CheckpointedSequential``) for training when it is importable
and plain torch otherwise — plain torch can only run ``store_all`` — and plain torch under
``torch.no_grad()`` for prediction; the ``impl`` column says which ("ckpt-torch" / "plain-torch").
"""

from __future__ import annotations

import sys
import time
import tracemalloc

import numpy as np

from ckpt.optim import OPTIMIZERS as OPTIMIZERS_NUMPY

from .config import (BACKENDS, DEVICES, DTYPES, MODES, OPTIMIZERS, Config,  # noqa: F401  (re-exported)
                     known_strategies, validate)
from .meters import mark_gradient_bytes, mark_gradients

STATE_SLOTS = {"none": 0, **{k: cls.slots for k, cls in OPTIMIZERS_NUMPY.items()}}   # state arrays per parameter


def checkpointed_sequential():
    """ckpt's torch backend class when it imports cleanly, else None."""
    try:
        from ckpt import CheckpointedSequential
        return CheckpointedSequential
    except Exception:                                   # absent or mid-change: fall back to plain torch
        return None


def torch_impl(c: Config) -> str | None:
    """'ckpt-torch' or 'plain-torch' for a torch config, None when nothing installed can run it.

    Prediction is always plain torch under ``torch.no_grad()``: the baseline that inference costs.
    """
    if c.mode == "predict":
        return "plain-torch"
    if checkpointed_sequential() is not None:
        return "ckpt-torch"
    if c.mode == "predict" or c.strategy == "store_all":
        return "plain-torch"
    return None


def impl_of(c: Config) -> str | None:
    """Which implementation runs c: 'ckpt-numpy', 'ckpt-torch', 'plain-torch' (None: none can)."""
    return "ckpt-numpy" if c.backend == "numpy" else torch_impl(c)


# ----------------------------------------------------------------- optimizers (numpy)

def numpy_optimizer(kind: str, params: list[dict]):
    """``ckpt.optim``'s optimizer called ``kind`` over ``params`` (its state allocated now); None for 'none'."""
    import ckpt
    return None if kind == "none" else ckpt.optim.make_optimizer(kind, params)


# ----------------------------------------------------------------- numpy workload

class NumpyWorkload:
    """The engine's MLP, inputs and schedule, built before any region is measured."""

    def __init__(self, c: Config, seed: int = 0):
        import ckpt
        self.c, self.ckpt = c, ckpt
        self.model = ckpt.MLP([c.width] * (c.depth + 1), activation="relu", loss="mse", dtype=c.dtype, seed=seed)
        rng = np.random.default_rng(seed + 1)
        self.x = rng.standard_normal((c.batch, c.width)).astype(c.dtype)
        self.y = rng.standard_normal((c.batch, c.width)).astype(c.dtype)
        n = c.depth
        self.schedule = (ckpt.forward_only(n) if c.mode == "predict"      # planners profile the chain
                         else ckpt.schedule_for(self.model, c.strategy, batch=c.batch, fused=c.fused,
                                                **c.strategy_options))
        # repeated SGD steps on deep chains can diverge; memory and time do not depend on the values,
        # so a non-finite value is reported on stderr instead of failing the row
        self.backend = ckpt.NumpyBackend(self.model, nonfinite="warn")
        self.stats = None
        self.optimizer_bytes = 0

    @property
    def param_bytes(self) -> int:
        return sum(p.nbytes for d in self.model.params for p in d.values())

    def step(self) -> None:
        """One step: the region a meter watches."""
        backend = self.backend
        if self.c.mode == "predict":
            self.stats = self.ckpt.execute(self.schedule, backend, self.x).stats
            return
        opt = backend.optimizer = numpy_optimizer(self.c.optimizer, self.model.params)
        result = self.ckpt.execute(self.schedule, backend, self.x, self.y)     # fused: Update(i) steps opt
        if opt is not None and not self.c.fused:
            opt.step(result.grads)
        self.stats, self.optimizer_bytes = result.stats, opt.nbytes if opt is not None else 0

    def activation_peak(self) -> int | None:
        """Measured: tracemalloc's high-water of bytes held less the gradients stored, over one training step.

        The step runs action by action (``ckpt.executor.start``), tracemalloc's peak reset before
        each; an action's figure is its peak less the gradients of the stages finished before it
        (their arrays and dicts, ``sys.getsizeof``: tracemalloc traces Python objects too) — the
        definition of torch's ``torch_cpu_activation_peak``.  The
        optimizer (state and update) is left out: its state is resident, its update in place.
        None in predict mode.
        """
        if self.c.mode != "train":
            return None
        from ckpt.executor import start
        owner = not tracemalloc.is_tracing()
        if owner:
            tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            run = start(self.schedule, self.backend, self.x, self.y, account=False)     # no ledger: its entries
            best = 0                                                                  # would be traced too
            for action in self.schedule.actions:
                stored = sum(sys.getsizeof(grads) + sum(map(sys.getsizeof, grads.values()))   # Python objects
                             for grads in run.grads if grads)                                 # too: traced
                tracemalloc.reset_peak()
                run.steps((action,))
                best = max(best, tracemalloc.get_traced_memory()[1] - base - stored)
            del run
            return best
        finally:
            if owner:
                tracemalloc.stop()

    def warm_up(self) -> None:
        """One step on a 1-row batch: fills the interpreter's and numpy's one-time caches outside the region."""
        x, y = self.x, self.y
        self.x, self.y = x[:1].copy(), y[:1].copy()
        try:
            self.step()
        finally:
            self.x, self.y, self.stats = x, y, None

    def decomposition(self) -> dict:
        """Where the executor says the peak's bytes were (its ledger, counted on the real arrays)."""
        s, bd = self.stats, self.stats.peak_breakdown
        return {"param_bytes": self.param_bytes, "grad_bytes": gradient_bytes(self.c, [sum(p.nbytes for p in d.values()) for d in self.model.params]),
                "optimizer_bytes": self.optimizer_bytes,
                "grad_at_peak_bytes": bd.get("gradients", 0),
                "saved_at_peak_bytes": bd.get("tapes", 0) + bd.get("checkpoints", 0),
                "engine_peak_bytes": s.peak_bytes,
                "engine_activation_bytes": s.peak_activation_bytes,
                "engine_saved_bytes": s.peak_saved_bytes,
                "forward_steps": s.forward_steps}


# ----------------------------------------------------------------- torch workload

def saved_tensor_counter():
    """A (hooks, totals) pair: ``with hooks:`` counts bytes saved for backward, each storage once.

    ``totals`` gets ``bytes`` (every distinct storage packed) and is filled while the
    hooks are active; storages listed in ``totals['exclude']`` (parameters, inputs) are skipped.
    Counting is ckpt.torch's one recorder (``SavedRecorder``: one notion of storage identity).
    """
    totals = _SavedTotals()
    return totals.recorder.hooks(), totals


class _SavedTotals(dict):
    """``totals['bytes']`` read from the recorder; ``totals['exclude']`` is its set of excluded storages."""

    def __init__(self):
        from ckpt.torch.hooks import SavedRecorder
        super().__init__(exclude=set())
        self.recorder = SavedRecorder(self["exclude"])

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        if key == "exclude":
            self.recorder.exclude = value

    def __getitem__(self, key):
        return self.recorder.bytes if key == "bytes" else super().__getitem__(key)


def he_linear(torch, width: int):
    """A Linear layer with He-normal weights and zero bias, as the numpy MLP is initialised.

    Torch's default init shrinks δ by about √6 per ReLU layer; deep chains then
    backward through subnormal floats, which Intel CPUs run many times slower.
    """
    layer = torch.nn.Linear(width, width)
    torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    torch.nn.init.zeros_(layer.bias)
    return layer


class TorchWorkload:
    """A Linear+ReLU ``nn.Sequential`` (wrapped by ckpt's torch backend when present)."""

    def __init__(self, c: Config, seed: int = 0):
        import torch
        self.c, self.torch = c, torch
        self.impl = torch_impl(c)
        if self.impl is None:
            raise RuntimeError(f"profiling: strategy {c.strategy!r} on torch needs ckpt.CheckpointedSequential "
                               f"(ckpt's torch backend), which is not importable; plain torch runs "
                               f"store_all and predict only")
        torch.manual_seed(seed)
        dtype = getattr(torch, c.dtype)
        self.device = torch.device(c.device)
        layers = []
        for _ in range(c.depth):
            layers += [he_linear(torch, c.width), torch.nn.ReLU()]
        seq = torch.nn.Sequential(*layers).to(self.device, dtype)
        self.plain = seq
        self.x = torch.randn(c.batch, c.width, device=self.device, dtype=dtype)
        self.y = torch.randn(c.batch, c.width, device=self.device, dtype=dtype)
        if self.impl == "ckpt-torch":
            seq = checkpointed_sequential()(seq, track_memory=True, memory_check=False,   # the runner checked
                                            **self._strategy(seq))
        self.model = seq
        self._marks = mark_gradients(self.plain.parameters()) if c.mode == "train" else []
        self.optimizer_bytes, self.saved_bytes = 0, None

    def _strategy(self, seq) -> dict:
        """The wrapper's strategy keywords; a planner plans from the profile the prediction uses."""
        import ckpt
        if not ckpt.needs_profile(self.c.strategy):
            return {"strategy": self.c.strategy, **self.c.strategy_options}
        from .torch_costs import mlp_profile
        c = self.c
        schedule = ckpt.schedule_for(mlp_profile(c.depth, c.width, c.batch, c.dtype), c.strategy, **c.strategy_options)
        return {"strategy": lambda n: schedule}

    @property
    def params(self):
        return list(self.model.parameters())

    @property
    def param_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.params)

    def _optimizer_class(self):
        """(torch.optim class, its hyper-parameters) of the config's optimizer; (None, {}) for 'none'."""
        torch, kind = self.torch, self.c.optimizer
        return {"sgd": (torch.optim.SGD, {"lr": 1e-3}),
                "momentum": (torch.optim.SGD, {"lr": 1e-3, "momentum": 0.9}),
                "adam": (torch.optim.Adam, {"lr": 1e-3})}.get(kind, (None, {}))

    def _optimizers(self):
        """(every optimizer, those stepped after backward, handles to remove after the step).

        Fused: ``ckpt.torch.fused.fuse_optimizer`` steps one optimizer per parameter inside
        the backward; the allocator timeline then gets a release mark after each of those
        steps, so ``torch_cpu_grad_at_peak`` counts only the gradients alive at the peak.
        """
        cls, hyper = self._optimizer_class()
        if cls is None:
            return [], [], []
        if not self.c.fused:
            opt = cls(self.params, **hyper)
            return [opt], [opt], []
        from ckpt.torch.fused import fuse_optimizer
        fused = fuse_optimizer(self.plain, cls, **hyper)
        handles = [fused, *mark_gradients(self.plain.parameters(), released=True)] if self._marks else [fused]
        return list(fused.optimizers.values()), [], handles

    def _prime(self, optimizers) -> None:
        """Materialise the optimizers' state with a zero-gradient step (parameters unchanged)."""
        if not optimizers or self.c.optimizer == "sgd":
            return
        for p in self.params:
            p.grad = self.torch.zeros_like(p)
            mark_gradient_bytes(p.grad.untyped_storage().nbytes())
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        mark_gradient_bytes(-self.param_bytes)
        self.optimizer_bytes = sum(v.untyped_storage().nbytes() for opt in optimizers     # Adam's 0-d step
                                   for s in opt.state.values() for v in s.values()         # counters too
                                   if self.torch.is_tensor(v))

    def _loss(self, x, y):
        return self.torch.nn.functional.mse_loss(self.model(x), y)

    def step(self) -> None:
        """One step: the region a meter watches (parameter gradients are freed first)."""
        torch = self.torch
        if self.c.mode == "predict":
            with torch.no_grad():
                out = self.model(self.x)
            del out
            self._sync()
            return
        for p in self.params:
            p.grad = None
        optimizers, after_backward, handles = self._optimizers()
        try:
            self._prime(optimizers)
            loss = self._loss(self.x, self.y)
            loss.backward()                             # fused: each parameter is updated in here
            for opt in after_backward:
                opt.step()
            del loss
        finally:
            for h in handles:
                h.remove()
        self._sync()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def warm_up(self) -> None:
        """One full step: loads kernels, thread pools, lazy modules and MKL's batch-sized workspace.

        A 1-row step (numpy's warm-up) left 1.1–1.9 MiB of it (batch 128–512, depth 32,
        width 128) to the measured step.  It does update the parameters once.
        """
        try:
            self.step()
        finally:
            for p in self.params:
                p.grad = None

    def count_saved(self) -> int | None:
        """Bytes autograd saves for backward in one plain forward (parameters and inputs excluded).

        That is the saved-activation peak of store_all (whether ckpt's backend or plain
        torch runs it).  Other strategies keep their tapes inside ckpt's autograd Function,
        out of the hooks' sight: None.
        """
        if self.c.strategy != "store_all":
            return None
        hooks, totals = saved_tensor_counter()
        totals["exclude"] = {p.untyped_storage().data_ptr() for p in self.params}
        totals["exclude"] |= {self.x.untyped_storage().data_ptr(), self.y.untyped_storage().data_ptr()}
        with hooks:
            loss = self.torch.nn.functional.mse_loss(self.plain(self.x), self.y)
        del loss
        return totals["bytes"]

    def decomposition(self) -> dict:
        """Parameters, gradients, optimizer state, bytes saved for backward, and ckpt's ledger when it ran."""
        train = self.c.mode == "train"
        if train and self.saved_bytes is None:
            self.saved_bytes = self.count_saved()
        stages = [sum(p.numel() * p.element_size() for p in m.parameters()) for m in self.plain]
        out = {"param_bytes": self.param_bytes, "grad_bytes": gradient_bytes(self.c, stages),
               "optimizer_bytes": self.optimizer_bytes,
               "hooks_saved_bytes": self.saved_bytes if train else 0,
               "saved_at_peak_bytes": self.saved_bytes if train else 0}
        stats = getattr(self.model, "last_stats", None) if train else None
        if stats is not None:                           # ckpt's torch executor: its ledger of real tensors
            bd = stats.peak_breakdown or {}
            out.update(engine_peak_bytes=stats.peak_bytes, engine_activation_bytes=stats.peak_activation_bytes,
                       engine_saved_bytes=stats.peak_saved_bytes, forward_steps=stats.forward_steps)
            if bd:                                      # its backward hands gradients to autograd: the
                out.update(saved_at_peak_bytes=bd.get("tapes", 0) + bd.get("checkpoints", 0))  # marks count them
        return out


def gradient_bytes(c: Config, stage_bytes: list[int]) -> int:
    """Most gradient bytes alive at once, from each stage's parameter bytes: all, or fused one stage's."""
    if c.mode != "train":
        return 0
    return max(stage_bytes, default=0) if c.fused else sum(stage_bytes)


def build(c: Config, seed: int = 0):
    """The workload of a validated configuration."""
    return NumpyWorkload(c, seed) if c.backend == "numpy" else TorchWorkload(c, seed)


def shapes_only_mlp(c: Config):
    """c's MLP (as ``NumpyWorkload`` builds it) with zero-stride parameters: its shapes, no memory."""
    import ckpt
    from ckpt.layers import activation
    zeros = lambda *shape: np.broadcast_to(np.zeros((), c.dtype), shape)
    acts = ["relu"] * (c.depth - 1) + ["identity"]                # ckpt.MLP's default output activation
    stages = [ckpt.Dense(zeros(c.width, c.width), zeros(c.width), activation(a)) for a in acts]
    return ckpt.Chain(stages, loss="mse", dtype=c.dtype)


def predicted(c: Config) -> dict:
    """The memory model's prediction for c (``ckpt.predict_memory``), plus the optimizer state it leaves out.

    numpy: the engine's MLP on the symbolic backend.  torch: a ``ckpt.Profile`` of what torch's
    Linear/ReLU stages, loss and optimizer allocate (``profiling.torch_costs``).
    """
    if c.backend == "torch":
        from . import torch_costs
        return torch_costs.predicted(c)
    import ckpt
    model = shapes_only_mlp(c)
    strategy = c.strategy if c.mode == "train" else "store_all"
    options = c.strategy_options if c.mode == "train" else {}
    s = ckpt.predict_memory(model, strategy, batch=c.batch, mode=c.mode, fused=c.fused and c.mode == "train",
                            **options)
    params = sum(p.nbytes for d in model.params for p in d.values())
    opt = STATE_SLOTS[c.optimizer] * params if c.mode == "train" else 0
    return {"predicted_peak_bytes": s.peak_bytes + opt,
            "predicted_activation_bytes": s.peak_activation_bytes,
            "predicted_saved_bytes": s.peak_saved_bytes,
            "predicted_forward_steps": s.forward_steps}


def needed_bytes(c: Config) -> tuple[int, int]:
    """(bytes c needs in all: parameters, x, y and the predicted peak; its forward steps), from the memory model."""
    params = c.depth * (c.width + 1) * c.width * np.dtype(c.dtype).itemsize
    inputs = 2 * c.batch * c.width * np.dtype(c.dtype).itemsize
    p = predicted(c)
    return params + inputs + p["predicted_peak_bytes"], p["predicted_forward_steps"]


def time_steps(workload, warmup: int, iters: int, budget_s: float) -> list[float]:
    """Seconds per step over up to ``iters`` timed steps after ``warmup`` untimed ones (stops at budget)."""
    for _ in range(warmup):
        workload.step()
    times, spent = [], 0.0
    while len(times) < max(1, iters) and (not times or spent < budget_s):
        t0 = time.perf_counter()
        workload.step()
        times.append(time.perf_counter() - t0)
        spent += times[-1]
    return times
