"""The symbolic backend: shapes and dtypes only.  Executing a schedule on it is the memory model.

Every value is a ``SymbolicArray`` (shape, dtype, no data).  Stages report
their output shapes, what they keep (``tape_of``) and what they allocate
(``forward_temp`` / ``backward_temp``) — the same declarations the numpy
layers run by — and the executor counts the bytes, so the prediction and the
numpy run cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..layers import nbytes
from .base import ChainBackend


@dataclass(eq=False)
class SymbolicArray:
    """An array's shape and dtype; identity stands for its storage."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def __post_init__(self):
        self.shape, self.dtype = tuple(int(s) for s in self.shape), np.dtype(self.dtype)

    @property
    def nbytes(self) -> int:
        return nbytes(self.shape, self.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)


class SymbolicBackend(ChainBackend):
    """Runs a ``ckpt.Chain`` on ``SymbolicArray`` values: no arithmetic, exact byte counts."""

    def __init__(self, chain):
        super().__init__(chain)
        self._in_shapes = {}

    def check_inputs(self, n, x, y):
        for name, v in (("x", x), ("y", y)):
            if v is not None and not isinstance(v, SymbolicArray):
                raise TypeError(f"symbolic backend: {name} must be a SymbolicArray, got {type(v).__name__}")
        super().check_inputs(n, x, y)

    def forward(self, i, x, keep_tape):
        stage = self.stage(i)
        out = SymbolicArray(stage.out_shape(x.shape), self.chain.dtype)
        self._in_shapes[i] = x.shape
        return out, (stage.tape_of(x, out) if keep_tape else None)

    def loss(self, x, y):
        return 0.0, SymbolicArray(x.shape, self.chain.dtype)

    def backward(self, i, tape, delta):
        grads = {k: SymbolicArray(p.shape, self.chain.dtype) for k, p in self.stage(i).params.items()}
        return SymbolicArray(self._in_shapes[i], self.chain.dtype), grads

    def check_can_update(self) -> None:
        """A fused schedule needs no optimizer here: ``Update`` only drops the gradients."""

    def update(self, i, grads):
        """Optimizer state is resident (like parameters) and updates work in place: nothing allocated."""

    def storage(self, value):
        return id(value)

    def nbytes(self, value):
        return value.nbytes
