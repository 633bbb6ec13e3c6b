"""The numpy backend: runs a ``ckpt.Chain``'s own layers on arrays."""

from __future__ import annotations

import numpy as np

from .base import ChainBackend


class NumpyBackend(ChainBackend):
    """Stages run as written in ``ckpt.layers``; a tape is the tuple of arrays a stage keeps."""

    def check_inputs(self, n: int, x, y) -> None:
        for name, v in (("x", x), ("y", y)):
            if v is not None and not isinstance(v, np.ndarray):
                raise TypeError(f"numpy backend: {name} must be a numpy array, got {type(v).__name__}")
        super().check_inputs(n, x, y)
        if not np.isfinite(x).all():
            raise ValueError("numpy backend: x contains NaN or inf; clean the inputs first")
        if y is not None and y.dtype.kind == "f" and not np.isfinite(y).all():
            raise ValueError("numpy backend: y contains NaN or inf; clean the targets first")
        if y is not None:
            problem = self.chain.loss.check_values(y, self.chain.shapes(x.shape)[-1])
            if problem:
                raise ValueError(f"numpy backend: {problem}")

    def forward(self, i, x, keep_tape):
        return self.stage(i).forward(x, keep_tape)

    def loss(self, x, y):
        value, delta = self.chain.loss(x, y)
        return value + self.chain.penalty(), delta

    def backward(self, i, tape, delta):
        return self.stage(i).backward(tape, delta)

    def storage(self, value):
        while value.base is not None:
            value = value.base
        return id(value)

    def nbytes(self, value):
        while value.base is not None:
            value = value.base
        return value.nbytes
