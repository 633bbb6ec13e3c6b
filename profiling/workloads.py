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

from .config import (BACKENDS, DEVICES, DTYPES, MODES, OPTIMIZERS, Config,  # noqa: F401  (re-exported)
                     known_strategies, validate)
from .meters import mark_gradient_bytes, mark_gradients

STATE_SLOTS = {"none": 0, "sgd": 0, "momentum": 1, "adam": 2}   # state arrays per parameter


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
# In place, no temporaries: the gradient buffer (discarded after the step) is the scratch.

class NumpyOptimizer:
    """SGD, momentum or Adam over a chain's parameters; state allocated at construction."""

    def __init__(self, kind: str, params: list[dict], lr=1e-3, mu=0.9, betas=(0.9, 0.999), eps=1e-8):
        self.kind, self.params, self.lr, self.mu, self.betas, self.eps = kind, params, lr, mu, betas, eps
        self.t = 0
        slots = STATE_SLOTS[kind]
        self.state = [{k: [np.zeros_like(p) for _ in range(slots)] for k, p in d.items()} for d in params]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for d in self.state for arrays in d.values() for a in arrays)

    def step(self, grads: list[dict]) -> None:
        self.t += 1
        for params, state, g in zip(self.params, self.state, grads):
            for k, p in params.items():
                getattr(self, "_" + self.kind)(p, g[k], *state[k])

    def _none(self, p, g):
        pass

    def _sgd(self, p, g):
        g *= self.lr
        p -= g

    def _momentum(self, p, g, v):
        v *= self.mu                                    # v ← μ v + g;  p ← p − lr v
        v += g
        np.multiply(v, self.lr, out=g)
        p -= g

    def _adam(self, p, g, m, v):
        b1, b2 = self.betas                             # Kingma & Ba 2015, Algorithm 1
        m *= b1                                         # m ← β1 m + (1 − β1) g
        g *= 1 - b1
        m += g
        g *= 1 / (1 - b1)
        v *= b2                                         # v ← β2 v + (1 − β2) g²
        np.multiply(g, g, out=g)
        g *= 1 - b2
        v += g
        np.sqrt(v, out=g)                               # p ← p − lr m̂ / (√v̂ + ε)
        g *= 1 / np.sqrt(1 - b2 ** self.t)
        g += self.eps
        np.divide(m, g, out=g)
        g *= self.lr / (1 - b1 ** self.t)
        p -= g


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
        self.schedule = ckpt.forward_only(n) if c.mode == "predict" else ckpt.make_schedule(c.strategy, n, **c.strategy_options)
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
        opt = NumpyOptimizer(self.c.optimizer, self.model.params)
        result = self.ckpt.execute(self.schedule, backend, self.x, self.y)
        opt.step(result.grads)
        self.stats, self.optimizer_bytes = result.stats, opt.nbytes

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
        return {"param_bytes": self.param_bytes,
                "grad_bytes": self.param_bytes if self.c.mode == "train" else 0,
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
        if self.impl == "ckpt-torch":
            seq = checkpointed_sequential()(seq, strategy=c.strategy, track_memory=True, **c.strategy_options)
        self.model = seq
        self._marks = mark_gradients(self.plain.parameters()) if c.mode == "train" else []
        self.x = torch.randn(c.batch, c.width, device=self.device, dtype=dtype)
        self.y = torch.randn(c.batch, c.width, device=self.device, dtype=dtype)
        self.optimizer_bytes, self.saved_bytes = 0, None

    @property
    def params(self):
        return list(self.model.parameters())

    @property
    def param_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.params)

    def _optimizer(self):
        torch, kind, ps = self.torch, self.c.optimizer, self.params
        if kind == "sgd":
            return torch.optim.SGD(ps, lr=1e-3)
        if kind == "momentum":
            return torch.optim.SGD(ps, lr=1e-3, momentum=0.9)
        if kind == "adam":
            return torch.optim.Adam(ps, lr=1e-3)
        return None

    def _prime(self, opt) -> None:
        """Materialise the optimizer's state with a zero-gradient step (parameters unchanged)."""
        if opt is None or self.c.optimizer == "sgd":
            return
        for p in self.params:
            p.grad = self.torch.zeros_like(p)
            mark_gradient_bytes(p.grad.untyped_storage().nbytes())
        opt.step()
        opt.zero_grad(set_to_none=True)
        mark_gradient_bytes(-self.param_bytes)
        self.optimizer_bytes = sum(v.untyped_storage().nbytes() for s in opt.state.values()     # Adam's 0-d
                                   for v in s.values() if self.torch.is_tensor(v))              # step counters too

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
        opt = self._optimizer()
        self._prime(opt)
        loss = self._loss(self.x, self.y)
        loss.backward()
        if opt is not None:
            opt.step()
        del loss
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
        out = {"param_bytes": self.param_bytes, "grad_bytes": self.param_bytes if train else 0,
               "optimizer_bytes": self.optimizer_bytes,
               "hooks_saved_bytes": self.saved_bytes if train else 0,
               "saved_at_peak_bytes": self.saved_bytes if train else 0}
        stats = getattr(self.model, "last_stats", None) if train else None
        if stats is not None:                           # ckpt's torch executor: its ledger of real tensors
            bd = stats.peak_breakdown or {}
            out.update(engine_peak_bytes=stats.peak_bytes, engine_activation_bytes=stats.peak_activation_bytes,
                       engine_saved_bytes=stats.peak_saved_bytes, forward_steps=stats.forward_steps)
            if bd:
                out.update(grad_at_peak_bytes=bd.get("gradients", 0),
                           saved_at_peak_bytes=bd.get("tapes", 0) + bd.get("checkpoints", 0))
        return out


def build(c: Config, seed: int = 0):
    """The workload of a validated configuration."""
    return NumpyWorkload(c, seed) if c.backend == "numpy" else TorchWorkload(c, seed)


def predicted(c: Config) -> dict:
    """The memory model's prediction for c (``ckpt.predict_memory``), plus the optimizer state it leaves out.

    numpy: the engine's MLP on the symbolic backend.  torch: a ``ckpt.Profile`` of what torch's
    Linear/ReLU stages, loss and optimizer allocate (``profiling.torch_costs``).
    """
    if c.backend == "torch":
        from . import torch_costs
        return torch_costs.predicted(c)
    import ckpt
    model = ckpt.MLP([c.width] * (c.depth + 1), activation="relu", loss="mse", dtype=c.dtype)
    strategy = c.strategy if c.mode == "train" else "store_all"
    options = c.strategy_options if c.mode == "train" else {}
    s = ckpt.predict_memory(model, strategy, batch=c.batch, mode=c.mode, **options)
    params = sum(p.nbytes for d in model.params for p in d.values())
    opt = STATE_SLOTS[c.optimizer] * params if c.mode == "train" else 0
    return {"predicted_peak_bytes": s.peak_bytes + opt,
            "predicted_activation_bytes": s.peak_activation_bytes,
            "predicted_saved_bytes": s.peak_saved_bytes}


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
