"""A chain of user-defined stages runs on every strategy, backend and the memory model."""

import numpy as np

import ckpt
from ckpt.layers import nbytes
from profiling.meters import TracemallocMeter


class Scale:
    """x = a ⊙ s with a learned per-feature scale s: ∂s = Σ_batch δ ⊙ a, δa = δ ⊙ s."""

    def __init__(self, width, seed):
        self.s = np.random.default_rng(seed).uniform(0.5, 1.5, width)
        self.in_features, self.l2 = width, 0.0

    @property
    def params(self):
        return {"s": self.s}

    def out_shape(self, in_shape):
        return tuple(in_shape)

    def tape_of(self, a, x):
        return (a,)

    def forward(self, a, keep_tape):
        x = a * self.s
        return x, (self.tape_of(a, x) if keep_tape else None)

    def forward_temp(self, in_shape, dtype):
        return nbytes(in_shape, dtype)

    def backward(self, tape, delta):
        (a,) = tape
        ds = np.einsum("bi,bi->i", delta, a)
        delta *= self.s
        return delta, {"s": ds}

    def backward_temp(self, delta_shape, dtype):
        return nbytes(delta_shape[1:], dtype)


def chain(depth=12, width=64):
    return ckpt.Chain([Scale(width, seed) for seed in range(depth)], loss="mse")


def test_custom_stages_give_bitwise_equal_gradients_and_match_calculus():
    model = chain()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 64)), rng.standard_normal((8, 64))
    ref = ckpt.gradients(model, x, y, "store_all")
    for strategy in ("recompute", "sqrt_n"):
        got = ckpt.gradients(model, x, y, strategy)
        assert all(np.array_equal(g["s"], r["s"]) for g, r in zip(got.grads, ref.grads))
    s0, eps = model.stages[0].s, 1e-6
    keep = s0[3]
    s0[3] = keep + eps
    up = ckpt.gradients(model, x, y).loss
    s0[3] = keep - eps
    down = ckpt.gradients(model, x, y).loss
    s0[3] = keep
    assert abs((up - down) / (2 * eps) - ref.grads[0]["s"][3]) < 1e-6 * abs(ref.grads[0]["s"][3]) + 1e-9


def test_custom_stages_memory_prediction_matches_tracemalloc():
    model = chain(depth=16, width=256)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((1024, 256)), rng.standard_normal((1024, 256))
    for strategy in ("store_all", "recompute", "sqrt_n"):
        schedule, backend = ckpt.make_schedule(strategy, 16), ckpt.NumpyBackend(model)
        with TracemallocMeter() as meter:
            ckpt.execute(schedule, backend, x, y)
        measured = meter.figures["tracemalloc_peak"]
        predicted = ckpt.predict_memory(model, strategy, batch=1024).peak_bytes
        assert abs(measured - predicted) / predicted < 0.02, strategy
