"""Building chains: a list of stages closed by a loss, and the MLP builder."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .layers import Dense, loss_fn
from .memcheck import check_fits
from .layers import activation as activation_named

DTYPES = ("float32", "float64")


class Chain:
    """Stages f_1..f_n and a loss: the objective J = ℓ(f_n(..f_1(x_0)), y) + λ/2 Σ‖W‖².

    A stage is any object with the ``Dense`` interface: ``params``, ``out_shape``,
    ``tape_of``, ``forward``, ``backward``, ``forward_temp``, ``backward_temp``.
    """

    def __init__(self, stages: Sequence, loss: str = "mse", l2: float = 0.0, dtype: str = "float64"):
        if len(stages) == 0:
            raise ValueError("chain: a chain needs at least one stage (depth ≥ 1), got none")
        if dtype not in DTYPES:
            raise ValueError(f"chain: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if isinstance(l2, bool) or not isinstance(l2, (int, float, np.floating, np.integer)) \
                or not (np.isfinite(l2) and l2 >= 0):
            raise ValueError(f"chain: l2 must be a finite number ≥ 0, got {l2!r}")
        self.stages = list(stages)
        self.loss = loss_fn(loss)
        self.l2 = float(l2)
        self.dtype = np.dtype(dtype)
        for stage in self.stages:
            stage.l2 = self.l2

    def __len__(self) -> int:
        return len(self.stages)

    @property
    def params(self) -> list[dict[str, np.ndarray]]:
        """Per stage, its parameters by name (the arrays themselves, not copies)."""
        return [s.params for s in self.stages]

    def set_params(self, params: Sequence[dict]) -> None:
        """Copy values into the parameters; shapes must match."""
        if len(params) != len(self.stages):
            raise ValueError(f"chain: expected parameters for {len(self.stages)} stages, got {len(params)}")
        for i, (mine, theirs) in enumerate(zip(self.params, params), start=1):
            for name, p in mine.items():
                value = np.asarray(theirs[name])
                if value.shape != p.shape:
                    raise ValueError(f"chain: stage {i} {name} has shape {p.shape}, got {value.shape}")
                p[...] = value

    def penalty(self) -> float:
        """s = λ/2 Σ ‖W‖_F² over every stage's weight W."""
        if not self.l2:
            return 0.0
        return 0.5 * self.l2 * sum(float(np.vdot(s.W, s.W)) for s in self.stages)

    def shapes(self, in_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Shapes of x_0..x_n for an input of ``in_shape``; raises on a mismatch."""
        shapes = [tuple(in_shape)]
        for stage in self.stages:
            shapes.append(tuple(stage.out_shape(shapes[-1])))
        return shapes

    def check_inputs(self, x, y) -> None:
        """Raise a clear error unless x and y fit this chain (shape, dtype, a non-empty batch)."""
        if x.dtype.kind != "f":
            raise ValueError(f"chain: x must hold real floating-point numbers ({self.dtype.name}, the model's "
                             f"dtype), got {x.dtype.name}")
        if x.dtype != self.dtype:
            raise ValueError(f"chain: input dtype {x.dtype} does not match the model's {self.dtype}; "
                             f"pass x.astype({self.dtype.name!r})")
        out_shape = self.shapes(x.shape)[-1]
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError(f"chain: the batch is empty (x has shape {tuple(x.shape)}); pass at least one row")
        if y is not None:
            problem = self.loss.check_target(out_shape, y.shape, y.dtype)
            if problem:
                raise ValueError(f"chain: {problem}")


def MLP(sizes: Sequence[int], activation: str = "relu", loss: str = "mse", l2: float = 0.0,
        dtype: str = "float64", seed: int | None = 0, output_activation: str = "identity",
        memory_check: bool = True) -> Chain:
    """A chain of Dense stages sizes[0] → sizes[1] → … → sizes[-1]; He/LeCun-scaled init.

    Weights are drawn into ``dtype`` arrays (no whole float64 copy); with ``memory_check`` a model whose
    parameters cannot fit in what the process may use is refused before any allocation.
    """
    _check_sizes(sizes)
    if dtype not in DTYPES:
        raise ValueError(f"chain: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    hidden, last = activation_named(activation), activation_named(output_activation)
    loss_fn(loss)                                   # a bad name fails before the weights are drawn
    if loss == "cross_entropy" and sizes[-1] < 2:
        raise ValueError(f"chain: cross_entropy needs ≥ 2 outputs (one per class), got {sizes[-1]}; "
                         f"for one output use loss='mse'")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"chain: seed must be an int ≥ 0 or None (fresh randomness), got {seed!r}")
    if not isinstance(memory_check, bool):
        raise TypeError(f"chain: memory_check must be True or False, got {memory_check!r}")
    if memory_check:
        check_fits(parameter_bytes(sizes, dtype), what=f"MLP({list(sizes)}, dtype={dtype!r}) (its parameters)")
    rng = np.random.default_rng(seed)
    stages = []
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        act = last if k == len(sizes) - 2 else hidden
        gain = 2.0 if act.name == "relu" else 1.0
        W = _normal_weights(rng, (n_out, n_in), np.sqrt(gain / n_in), dtype)
        stages.append(Dense(W, np.zeros(n_out, dtype=dtype), act))
    return Chain(stages, loss=loss, l2=l2, dtype=dtype)


def _normal_weights(rng, shape: tuple[int, int], scale: float, dtype: str, chunk_bytes: int = 2**24) -> np.ndarray:
    """N(0, scale²) weights in ``dtype``, drawn in float64 a few rows at a time.

    The values equal ``(rng.standard_normal(shape) * scale).astype(dtype)`` (same
    stream, same rounding), but a float32 model never holds a float64 copy of a
    whole weight matrix: at most ``chunk_bytes`` of it.
    """
    W = np.empty(shape, dtype=dtype)
    rows = max(1, chunk_bytes // (8 * shape[1]))
    for start in range(0, shape[0], rows):
        block = rng.standard_normal((min(rows, shape[0] - start), shape[1]))
        block *= scale
        W[start:start + rows] = block
    return W


def parameter_bytes(sizes: Sequence[int], dtype: str) -> int:
    """Bytes of an MLP's weights and biases."""
    return sum((n_in + 1) * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:])) * np.dtype(dtype).itemsize


def _check_sizes(sizes) -> None:
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise TypeError(f"chain: MLP sizes must be a list of ints [in, hidden..., out], got {sizes!r}")
    if len(sizes) < 2:
        raise ValueError(f"chain: an MLP needs at least [in, out] sizes (depth ≥ 1), got {list(sizes)}")
    if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in sizes):
        raise ValueError(f"chain: layer sizes must be ints ≥ 1, got {list(sizes)}")
