"""The numpy backend: runs a ``ckpt.Chain``'s own layers on arrays.

It watches for non-finite values after every step (``nonfinite="raise"`` by
default): the first stage whose forward output, backward gradients or updated
parameters hold NaN or inf is named, so an exploding model is caught where it
explodes and not as a ``nan`` loss.  ``"warn"`` warns once per run and goes on;
``"ignore"`` skips the checks.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np

from .base import ChainBackend

NONFINITE = ("raise", "warn", "ignore")


class NonFiniteError(FloatingPointError):
    """NaN or inf appeared during a step; the message names the first stage where it did."""


def all_finite(a: np.ndarray) -> bool:
    """True when ``a`` holds no NaN and no inf (min and max propagate both; no temporary array)."""
    return a.size == 0 or (math.isfinite(a.min()) and math.isfinite(a.max()))


class NumpyBackend(ChainBackend):
    """Stages run as written in ``ckpt.layers``; a tape is the tuple of arrays a stage keeps.

    ``optimizer`` (a ``ckpt.optim.Optimizer``) applies fused schedules' ``Update`` actions.
    """

    def __init__(self, chain, optimizer=None, nonfinite: str = "raise"):
        super().__init__(chain)
        if nonfinite not in NONFINITE:
            raise ValueError(f"numpy backend: nonfinite must be one of {', '.join(NONFINITE)}, got {nonfinite!r}")
        self.optimizer, self.nonfinite, self._warned = optimizer, nonfinite, False

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
        self._warned = False

    def check_can_update(self) -> None:
        """Raise unless an optimizer was given (a fused schedule needs one)."""
        if self.optimizer is None:
            raise ValueError("numpy backend: a fused schedule (Update actions) needs an optimizer: "
                             "NumpyBackend(model, optimizer=ckpt.optim.Adam(model.params)), or ckpt.train_step")

    def _quiet(self):
        """numpy's own overflow warnings off while this backend reports non-finite values itself."""
        return np.errstate(all="ignore") if self.nonfinite != "ignore" else contextlib.nullcontext()

    def forward(self, i, x, keep_tape):
        with self._quiet():
            out, tape = self.stage(i).forward(x, keep_tape)
        self._watch(f"stage {i}'s forward output x_{i}", out)
        return out, tape

    def loss(self, x, y):
        with self._quiet():
            value, delta = self.chain.loss(x, y)
            value += self.chain.penalty()
        self._watch("the loss", np.asarray(value))
        self._watch(f"δ_{len(self.chain)} (the loss's gradient)", delta)
        return value, delta

    def backward(self, i, tape, delta):
        with self._quiet():
            delta_prev, grads = self.stage(i).backward(tape, delta)
        for name, g in grads.items():
            self._watch(f"stage {i}'s backward: gradient {name}_{i}", g)
        self._watch(f"stage {i}'s backward: δ_{i - 1}", delta_prev)
        return delta_prev, grads

    def update(self, i, grads):
        with self._quiet():
            self.optimizer.update(i, grads)
        for name, p in self.stage(i).params.items():
            self._watch(f"stage {i}'s update: parameter {name}_{i}", p)

    def _watch(self, where: str, value) -> None:
        """Raise or warn, by ``nonfinite``, at the first non-finite value of a run."""
        if self.nonfinite == "ignore" or self._warned or all_finite(value):
            return
        message = (f"numpy backend: NaN or inf first appeared in {where} (everything before it was finite); "
                   "the weights or the learning rate may be too large. Pass nonfinite='warn' or 'ignore' "
                   "to continue anyway")
        if self.nonfinite == "raise":
            raise NonFiniteError(message)
        self._warned = True
        warnings.warn(message, RuntimeWarning, stacklevel=2)

    def storage(self, value):
        while value.base is not None:
            value = value.base
        return id(value)

    def nbytes(self, value):
        while value.base is not None:
            value = value.base
        return value.nbytes
