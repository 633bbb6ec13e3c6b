"""Optimizers in numpy, written from their update equations; one stage at a time.

An optimizer holds its state per stage and per parameter, allocated at
construction (resident, like the parameters), and updates stage i in place
with ``update(i, grads)``.  That one call is both the fused step (the
executor's ``Update(i)`` action, right after ``Backward(i)``) and, stage after
stage, the unfused ``step(grads)`` — so the two give bitwise equal parameters.
Each update uses the gradient arrays as its scratch space (no temporaries);
they are garbage afterwards.

With g the gradient (the L2 term, if any, is already in it) and lr the step::

    SGD:       p ← p − lr g
    momentum:  v ← μ v + g;       p ← p − lr v                  (torch.optim.SGD, dampening 0)
    Adam:      m ← β1 m + (1 − β1) g;   v ← β2 v + (1 − β2) g²   (Kingma & Ba 2015, Algorithm 1)
               p ← p − lr m / (1 − β1ᵗ) / (√v / √(1 − β2ᵗ) + ε)  (torch.optim.Adam's ε placement)

t counts the updates of that stage, so a fused and an unfused step agree.
"""

from __future__ import annotations

import math

import numpy as np


class Optimizer:
    """State per stage and parameter; ``update(i, grads)`` steps stage i (1-based) in place."""

    slots = 0                                      # state arrays per parameter

    def __init__(self, params: list[dict], lr: float = 1e-3):
        if not isinstance(params, (list, tuple)) or not all(isinstance(d, dict) for d in params):
            raise TypeError(f"optim: {type(self).__name__} needs model.params (a list of dicts, one per stage), "
                            f"got {type(params).__name__}")
        _check_positive("lr", lr)
        self.params, self.lr = list(params), float(lr)
        self.t = [0] * len(self.params)
        # no per-parameter containers without state: SGD's step allocates nothing in a measured region
        self.state = [{k: [np.zeros_like(p) for _ in range(self.slots)] for k, p in d.items()}
                      for d in self.params] if self.slots else None

    @property
    def nbytes(self) -> int:
        """Bytes of the optimizer's state (resident, like the parameters)."""
        return sum(a.nbytes for d in self.state or () for arrays in d.values() for a in arrays)

    def update(self, i: int, grads: dict) -> None:
        """Apply one step to stage i's parameters with its gradients (which it overwrites)."""
        if not 1 <= i <= len(self.params):
            raise IndexError(f"optim: stage must be in 1..{len(self.params)}, got {i}")
        self.t[i - 1] += 1
        for k, p in self.params[i - 1].items():
            self._apply(p, grads[k], self.state[i - 1][k] if self.state else (), self.t[i - 1])

    def step(self, grads: list[dict]) -> None:
        """The unfused step: update every stage with the gradients of a finished backward."""
        if len(grads) != len(self.params) or any(g is None for g in grads):
            raise ValueError(f"optim: step needs gradients for all {len(self.params)} stages; "
                             "a fused step (Update actions) has already applied and dropped them")
        for i in range(len(self.params), 0, -1):   # the backward's order, as a fused step runs
            self.update(i, grads[i - 1])

    def _apply(self, p, g, state, t) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """p ← p − lr g."""

    def _apply(self, p, g, state, t):
        g *= self.lr
        p -= g


class Momentum(Optimizer):
    """v ← μ v + g;  p ← p − lr v (heavy ball, as torch.optim.SGD with momentum μ)."""

    slots = 1

    def __init__(self, params, lr: float = 1e-3, mu: float = 0.9):
        super().__init__(params, lr)
        if not (isinstance(mu, (int, float)) and 0 <= mu < 1):
            raise ValueError(f"optim: momentum mu must be a number in [0, 1), got {mu!r}")
        self.mu = float(mu)

    def _apply(self, p, g, state, t):
        v, = state
        if t > 1:
            v *= self.mu
        v += g                                     # torch starts with v = g: the same as 0·μ + g
        np.multiply(v, self.lr, out=g)
        p -= g


class Adam(Optimizer):
    """Kingma & Ba 2015, Algorithm 1, with ε added to √v̂ as torch.optim.Adam does."""

    slots = 2

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, lr)
        if not (len(betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
            raise ValueError(f"optim: Adam betas must be two numbers in [0, 1), got {betas!r}")
        _check_positive("eps", eps)
        self.betas, self.eps = (float(betas[0]), float(betas[1])), float(eps)

    def _apply(self, p, g, state, t):
        m, v = state
        b1, b2 = self.betas
        m -= g                                     # m ← β1 m + (1 − β1) g, as β1 (m − g) + g: no temporary
        m *= b1
        m += g
        v *= b2                                    # v ← β2 v + (1 − β2) g²   (g is scratch from here on)
        np.multiply(g, g, out=g)
        g *= 1 - b2
        v += g
        np.sqrt(v, out=g)                          # denominator √v / √(1 − β2ᵗ) + ε
        g /= math.sqrt(1 - b2 ** t)
        g += self.eps
        np.divide(m, g, out=g)                     # p ← p − lr / (1 − β1ᵗ) · m / denominator
        g *= self.lr / (1 - b1 ** t)
        p -= g


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "adam": Adam}


def make_optimizer(kind: str, params: list[dict], **hyper) -> Optimizer:
    """The optimizer called ``kind`` (sgd, momentum, adam) over ``params``."""
    try:
        cls = OPTIMIZERS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"optim: unknown optimizer {kind!r}; allowed: {', '.join(OPTIMIZERS)}") from None
    return cls(params, **hyper)


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"optim: {name} must be a finite number > 0, got {value!r}")
