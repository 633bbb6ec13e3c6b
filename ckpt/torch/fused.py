"""The optimizer step fused into torch's backward: each parameter is updated as soon as its gradient exists.

``fuse_optimizer(model, torch.optim.Adam, lr=1e-3)`` gives every parameter its
own optimizer and registers ``Tensor.register_post_accumulate_grad_hook`` on
it: when autograd has accumulated the parameter's gradient, the hook steps that
optimizer and sets ``.grad`` to None, so at most a few gradients are alive at
once instead of all of them (PyTorch's "optimizer in backward" pattern).  It
works with plain modules and with anything built on autograd (the ckpt wrappers
included), and equals the unfused ``torch.optim`` step up to rounding.

Read as: after ``loss.backward()`` the parameters are already updated; there is
no ``optimizer.step()`` and no ``zero_grad()``.  One backward per step: a
gradient is consumed by the backward that produced it, so gradient accumulation
over several backwards needs the unfused optimizer.
"""

from __future__ import annotations

import torch

__all__ = ["FusedOptimizer", "fuse_optimizer"]


class FusedOptimizer:
    """Per-parameter optimizers stepped by post-accumulate-grad hooks; ``remove()`` undoes it."""

    def __init__(self, params: list[torch.nn.Parameter], optimizer_class: type, **hyper):
        self.optimizers: dict[int, torch.optim.Optimizer] = {}
        self._handles = []
        for p in params:
            self.optimizers[id(p)] = optimizer_class([p], **hyper)
        for p in params:
            self._handles.append(p.register_post_accumulate_grad_hook(self._step))
            p._ckpt_fused_optimizer = self
        self._params = params

    def _step(self, p: torch.Tensor) -> None:
        optimizer = self.optimizers[id(p)]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)          # the gradient is released at once

    @property
    def params(self) -> list[torch.nn.Parameter]:
        """The parameters this object updates, in the order given."""
        return list(self._params)

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every parameter's optimizer (for a schedule of learning rates)."""
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = lr

    def remove(self) -> None:
        """Unhook every parameter: later backwards accumulate ``.grad`` as usual."""
        for handle in self._handles:
            handle.remove()
        for p in self._params:
            if getattr(p, "_ckpt_fused_optimizer", None) is self:
                del p._ckpt_fused_optimizer
        self._handles = []

    def __enter__(self) -> "FusedOptimizer":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def fuse_optimizer(module_or_params, optimizer_class: type, **hyper) -> FusedOptimizer:
    """Update each parameter inside backward with its own ``optimizer_class(**hyper)``; returns the handle."""
    if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer)):
        raise TypeError(f"ckpt.torch.fused: optimizer_class must be a torch.optim.Optimizer subclass "
                        f"(e.g. torch.optim.Adam), got {optimizer_class!r}")
    params = _trainable(module_or_params)
    taken = [i for i, p in enumerate(params) if getattr(p, "_ckpt_fused_optimizer", None) is not None]
    if taken:
        raise ValueError(f"ckpt.torch.fused: parameters {taken} already have a fused optimizer (it would step "
                         "twice per backward); call .remove() on the old one first")
    if any(p.grad is not None for p in params):
        raise ValueError("ckpt.torch.fused: some parameters already hold a .grad, which the first fused step "
                         "would add to; call zero_grad(set_to_none=True) first")
    return FusedOptimizer(params, optimizer_class, **hyper)


def _trainable(module_or_params) -> list[torch.nn.Parameter]:
    """The distinct leaf tensors that require grad, from a module or an iterable of tensors."""
    if isinstance(module_or_params, torch.nn.Module):
        candidates = list(module_or_params.parameters())
    elif isinstance(module_or_params, torch.Tensor):
        candidates = [module_or_params]
    else:
        try:
            candidates = list(module_or_params)
        except TypeError:
            raise TypeError(f"ckpt.torch.fused: expected an nn.Module or parameters, "
                            f"got {type(module_or_params).__name__}") from None
    seen, params = set(), []
    for p in candidates:
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"ckpt.torch.fused: expected tensors, got {type(p).__name__}")
        if not p.is_leaf:
            raise ValueError("ckpt.torch.fused: only leaf tensors (parameters) can be updated, got a computed tensor")
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            params.append(p)
    if not params:
        raise ValueError("ckpt.torch.fused: no parameter requires grad; nothing to update")
    return params
