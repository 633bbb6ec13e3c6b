"""Layers in numpy, written from the backprop equations; batch-first arrays.

Each op's forward sits next to its backward, and each declares what it keeps
for the backward (its *tape*) and how many transient bytes it allocates — the
two numbers the memory model (``ckpt.backends.symbolic``) counts.

Dense stage, a (B, n_in) → x (B, n_out), with W (n_out, n_in), b (n_out,)::

    z = a Wᵀ + b          x = σ(z)                       (forward)
    δz = δx ⊙ σ'(z)       ∂W = δzᵀ a + λW    ∂b = Σ_batch δz    δa = δz W   (backward)

Tape kept per activation (σ' is written through the output x, so the stage
keeps its input a and, except for identity, its output x — the output is the
next stage's input, so a chain of taped stages stores each activation once):

=========  ===============  ====================
σ          σ'(z)            tape
=========  ===============  ====================
identity   1                (a,)
relu       [x > 0]          (a, x)
sigmoid    x (1 − x)        (a, x)
tanh       1 − x²           (a, x)
=========  ===============  ====================

Losses (mean over the batch of B rows; y as given by the caller)::

    MSE:            ℓ = 1/(2B) Σ ‖x − y‖²            δ = (x − y) / B
    cross-entropy:  ℓ = −1/B Σ log softmax(x)[y]     δ = (softmax(x) − onehot(y)) / B

with y integer class labels (B,), or class probabilities (B, C).  The L2
penalty s = λ/2 Σ ‖W‖_F² is added to the objective J = ℓ + s by the chain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def nbytes(shape: tuple[int, ...], dtype) -> int:
    """Bytes of an array of ``shape`` and ``dtype``."""
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def broadcast_buffer(shape: tuple[int, ...], dtype) -> int:
    """Bytes numpy allocates for a broadcasting ufunc over ``shape`` (``z += b``): one ufunc buffer."""
    return min(int(np.prod(shape, dtype=np.int64)), np.getbufsize()) * np.dtype(dtype).itemsize


# ---------------------------------------------------------------- activations
# Each acts in place: forward_ turns z into x, backward_ turns δx into δz.
# ``backward_temp`` is the bytes backward_ allocates (and frees) on the way.

class Identity:
    name, keeps_output = "identity", False

    def forward_(self, z):
        return z

    def backward_(self, delta, x):
        return delta

    def backward_temp(self, shape, dtype) -> int:
        return 0


class ReLU:
    name, keeps_output = "relu", True

    def forward_(self, z):
        return np.maximum(z, 0, out=z)

    def backward_(self, delta, x):
        delta *= np.sign(x)                        # δz = δx ⊙ [x > 0]; x ≥ 0, so [x > 0] = sign(x)
        return delta                               # (~10× faster than a masked copy: no branches)

    def backward_temp(self, shape, dtype) -> int:
        return nbytes(shape, dtype)                # sign(x)


class Sigmoid:
    name, keeps_output = "sigmoid", True

    def forward_(self, z):
        z *= 0.5                                   # σ(z) = (1 + tanh(z/2)) / 2, no overflow
        np.tanh(z, out=z)
        z += 1
        z *= 0.5
        return z

    def backward_(self, delta, x):
        d = np.subtract(1, x)                      # σ' = x (1 − x)
        d *= x
        delta *= d
        return delta

    def backward_temp(self, shape, dtype) -> int:
        return nbytes(shape, dtype)


class Tanh:
    name, keeps_output = "tanh", True

    def forward_(self, z):
        return np.tanh(z, out=z)

    def backward_(self, delta, x):
        d = np.square(x)                           # tanh' = 1 − x²
        np.subtract(1, d, out=d)
        delta *= d
        return delta

    def backward_temp(self, shape, dtype) -> int:
        return nbytes(shape, dtype)


ACTIVATIONS = {a.name: a for a in (Identity(), ReLU(), Sigmoid(), Tanh())}


def activation(name: str):
    """The activation called ``name``; the error lists the allowed ones."""
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"layers: unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}") from None


# --------------------------------------------------------------------- dense

@dataclass(eq=False)
class Dense:
    """One stage x = σ(a Wᵀ + b), with an optional L2 weight ``l2`` on W."""

    W: np.ndarray
    b: np.ndarray
    act: object
    l2: float = 0.0

    @property
    def params(self) -> dict[str, np.ndarray]:
        return {"W": self.W, "b": self.b}

    @property
    def in_features(self) -> int:
        return self.W.shape[1]

    def out_shape(self, in_shape):
        if len(in_shape) != 2 or in_shape[1] != self.W.shape[1]:
            raise ValueError(f"layers: Dense({self.W.shape[1]} → {self.W.shape[0]}) needs input of shape "
                             f"(batch, {self.W.shape[1]}), got {tuple(in_shape)}")
        return (in_shape[0], self.W.shape[0])

    def tape_of(self, a, x) -> tuple:
        """What the backward keeps: the input, and the output unless σ is identity."""
        return (a, x) if self.act.keeps_output else (a,)

    def forward(self, a, keep_tape: bool):
        z = a @ self.W.T
        z += self.b
        x = self.act.forward_(z)
        return x, (self.tape_of(a, x) if keep_tape else None)

    def forward_temp(self, in_shape, dtype) -> int:
        """High-water of what ``forward`` allocates: its output, then the buffer of ``z += b``."""
        shape = self.out_shape(in_shape)
        return nbytes(shape, dtype) + broadcast_buffer(shape, dtype)

    def backward(self, tape, delta):
        """δ_{i-1} and {W, b} gradients; ``delta`` (owned by the executor) is overwritten."""
        a, x = tape if len(tape) == 2 else (tape[0], None)
        dz = self.act.backward_(delta, x)
        dW = dz.T @ a
        if self.l2:
            dW += self.l2 * self.W
        db = dz.sum(axis=0)
        return dz @ self.W, {"W": dW, "b": db}

    def backward_temp(self, delta_shape, dtype) -> int:
        """High-water of what ``backward`` allocates, outputs included."""
        grads = nbytes(self.W.shape, dtype) + nbytes(self.b.shape, dtype)
        l2 = nbytes(self.W.shape, dtype) if self.l2 else 0
        delta_prev = nbytes((delta_shape[0], self.W.shape[1]), dtype)
        return max(self.act.backward_temp(delta_shape, dtype), grads + l2, grads + delta_prev)


# --------------------------------------------------------------------- losses

class MSE:
    """ℓ = 1/(2B) Σ ‖x − y‖², y of the output's shape."""

    name = "mse"

    def check_target(self, out_shape, y_shape, y_dtype) -> str | None:
        if np.dtype(y_dtype).kind != "f":
            hint = "; for class labels use loss='cross_entropy'" if np.dtype(y_dtype).kind in "iu" else ""
            return f"mse needs real floating-point targets y, got {np.dtype(y_dtype).name}{hint}"
        if tuple(y_shape) != tuple(out_shape):
            return f"mse needs y of the output's shape {tuple(out_shape)}, got {tuple(y_shape)}"
        return None

    def check_values(self, y, out_shape) -> str | None:
        return None

    def __call__(self, x, y):
        d = np.subtract(x, y, dtype=x.dtype)
        B = x.shape[0]
        value = 0.5 * float(np.vdot(d, d)) / B
        d /= B
        return value, d

    def temp(self, out_shape, y_shape, dtype) -> int:
        return nbytes(out_shape, dtype)


class CrossEntropy:
    """Softmax cross-entropy; y integer labels (B,) or probabilities (B, C)."""

    name = "cross_entropy"

    def check_target(self, out_shape, y_shape, y_dtype) -> str | None:
        B, C = out_shape
        kind = np.dtype(y_dtype).kind
        if tuple(y_shape) == (B,) and kind in "iu":      # bool is kind "b": not a label
            return None
        if tuple(y_shape) == (B, C) and kind == "f":
            return None
        return (f"cross_entropy needs integer labels of shape ({B},) or probabilities of shape "
                f"({B}, {C}), got {np.dtype(y_dtype).name} {tuple(y_shape)}")

    def check_values(self, y, out_shape) -> str | None:
        C = out_shape[1]
        if y.ndim == 1:
            if y.size and (y.min() < 0 or y.max() >= C):
                return f"cross_entropy labels must lie in 0..{C - 1}, got {y.min()}..{y.max()}"
            return None
        if y.size and y.min() < 0:
            row = int(np.argwhere(y < 0)[0, 0])
            return f"cross_entropy probabilities must be ≥ 0, got {y.min()} (row {row})"
        sums = y.sum(axis=1, dtype=np.float64)
        tol = np.sqrt(np.finfo(y.dtype).eps) * max(1, C) ** 0.5
        bad = np.flatnonzero(np.abs(sums - 1) > tol)
        if bad.size:
            return (f"cross_entropy probabilities must sum to 1 in each row (±{tol:.1e}), got {sums[bad[0]]:g} "
                    f"in row {bad[0]}; for class labels pass integers of shape ({y.shape[0]},)")
        return None

    def __call__(self, x, y):
        B = x.shape[0]
        m = x.max(axis=1, keepdims=True)
        p = np.subtract(x, m)
        np.exp(p, out=p)
        s = p.sum(axis=1, keepdims=True)
        log_z = np.log(s) + m                      # log Σ exp x, per row
        if y.ndim == 1:
            rows = np.arange(B)
            value = float(np.sum(log_z[:, 0] - x[rows, y])) / B
            p /= s
            p[rows, y] -= 1
        else:
            value = float(np.sum(y * log_z) - np.vdot(y, x)) / B
            p /= s
            p -= y
        p /= B
        return value, p

    def temp(self, out_shape, y_shape, dtype) -> int:
        B = out_shape[0]
        product = nbytes(out_shape, dtype) if len(y_shape) == 2 else 0     # y * log_z
        rows = 4 * nbytes((B,), dtype) + nbytes((B,), np.int64)            # m, s, log_z, picks; arange
        return nbytes(out_shape, dtype) + product + broadcast_buffer(out_shape, dtype) + rows


LOSSES = {"mse": MSE(), "cross_entropy": CrossEntropy()}


def loss_fn(name: str):
    """The loss called ``name``; the error lists the allowed ones."""
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"layers: unknown loss {name!r}; allowed: {', '.join(LOSSES)}") from None
