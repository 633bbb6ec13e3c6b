"""What the executor asks of a backend, and the part numpy and symbolic share."""

from __future__ import annotations

from typing import Hashable, Protocol

from ..schedule import Backward, Forward, ForwardTape, Loss


class Backend(Protocol):
    """Runs stage i forward (with or without tape), the loss, and stage i backward."""

    def check_inputs(self, n: int, x, y) -> None:
        """Raise a clear error unless a chain of n stages can run on x (and y)."""

    def forward(self, i: int, x, keep_tape: bool) -> tuple[object, tuple | None]:
        """x_i from x_{i-1}, and stage i's tape (a tuple of values) when asked."""

    def loss(self, x, y) -> tuple[float, object]:
        """The objective J and δ_n."""

    def backward(self, i: int, tape: tuple, delta) -> tuple[object, dict]:
        """δ_{i-1} and stage i's parameter gradients; may overwrite ``delta``."""

    def storage(self, value) -> Hashable:
        """Identity of the memory behind ``value`` (views share their base's)."""

    def nbytes(self, value) -> int:
        """Bytes of the memory behind ``value``."""

    def temp_bytes(self, action, operand, y=None) -> int:
        """High-water of what running ``action`` on ``operand`` allocates, outputs included."""

    def check_can_update(self) -> None:
        """Optional (fused schedules): raise unless ``update`` can run (e.g. no optimizer given)."""

    def update(self, i: int, grads: dict) -> None:
        """Optional (fused schedules): apply the optimizer to stage i with ``grads``, which it may overwrite."""


class ChainBackend:
    """Shared by backends that run a ``ckpt.Chain``: checks and per-op byte counts."""

    def __init__(self, chain):
        self.chain = chain

    def stage(self, i: int):
        return self.chain.stages[i - 1]

    def check_inputs(self, n: int, x, y) -> None:
        if n != len(self.chain):
            raise ValueError(f"executor: the schedule is for {n} stages but the model has {len(self.chain)}; "
                             f"build the schedule with n={len(self.chain)}")
        self.chain.check_inputs(x, y)

    def temp_bytes(self, action, operand, y=None) -> int:
        dtype = self.chain.dtype
        if isinstance(action, (Forward, ForwardTape)):
            return self.stage(action.i).forward_temp(operand.shape, dtype)
        if isinstance(action, Loss):
            return self.chain.loss.temp(operand.shape, y.shape, dtype)
        if isinstance(action, Backward):
            return self.stage(action.i).backward_temp(operand.shape, dtype)
        return 0                 # Save/Load/Free move references; Update works in the gradients' buffers
