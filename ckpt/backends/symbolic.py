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
from ..schedule import Backward, Forward, ForwardTape, Loss
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


class BytesOnly:
    """What the two counting backends share: values stand for storages, updates allocate nothing."""

    def check_can_update(self) -> None:
        """A fused schedule needs no optimizer here: ``Update`` only drops the gradients."""

    def update(self, i, grads):
        """Optimizer state is resident (like parameters) and updates work in place: nothing allocated."""

    def storage(self, value):
        return id(value)

    def nbytes(self, value):
        return value.nbytes


class SymbolicBackend(BytesOnly, ChainBackend):
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



def _token(nbytes: int) -> SymbolicArray:
    """A value of ``nbytes`` bytes and no shape worth knowing."""
    return SymbolicArray((nbytes,), np.uint8)


class ProfileBackend(BytesOnly):
    """Runs any chain described by a ``ckpt.Profile``: values are byte tokens, tapes share storages.

    A tape holds its input x_{i-1} and output x_i themselves (the same tokens as
    the activations, so the executor counts them once) when the profile says
    so, plus one token for the rest of its bytes — the same bookkeeping the
    ``SymbolicBackend`` does from a chain's layers.
    """

    def __init__(self, profile):
        self.profile = profile

    def inputs(self) -> tuple[SymbolicArray, SymbolicArray]:
        """Symbolic x (the input's bytes) and y (targets: never counted)."""
        return _token(self.profile.input_bytes), _token(0)

    def check_inputs(self, n, x, y):
        if n != len(self.profile):
            raise ValueError(f"profile backend: the schedule is for {n} stages but the profile has "
                             f"{len(self.profile)}; build the schedule with n={len(self.profile)}")

    def forward(self, i, x, keep_tape):
        cost = self.profile.stage(i)
        out = _token(cost.output_bytes)
        if not keep_tape:
            return out, None
        own = self.profile.tape_own_bytes(i)
        tape = (x,) * cost.tape_keeps_input + (out,) * cost.tape_keeps_output + ((_token(own),) if own else ())
        return out, tape

    def loss(self, x, y):
        value = _token(self.profile.loss_bytes) if self.profile.loss_bytes else 0.0
        return value, _token(self.profile.activation_bytes(len(self.profile)))

    def held_loss(self, value) -> tuple:
        """The loss value, when it keeps bytes until the step's end (``Profile.loss_bytes``)."""
        return (value,) if isinstance(value, SymbolicArray) else ()

    def backward(self, i, tape, delta):
        grads = {"params": _token(self.profile.stage(i).grad_bytes)}
        return _token(self.profile.activation_bytes(i - 1)), grads

    def temp_bytes(self, action, operand, y=None) -> int:
        if isinstance(action, (Forward, ForwardTape)):
            return self.profile.stage(action.i).forward_transient
        if isinstance(action, Backward):
            return self.profile.stage(action.i).backward_transient
        if isinstance(action, Loss):
            return self.profile.loss_transient
        return 0
