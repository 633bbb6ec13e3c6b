"""Shared checks for the torch acceptance tests: one training step, compared bitwise to plain autograd.

Imported explicitly by the test modules (not a pytest conftest). The one place that knows
how a checkpointing handle exposes its step counts is ``forward_steps``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

STRATEGIES = ("store_all", "recompute", "sqrt_n")
NO_GRAD_WARNING = "None of the inputs have requires_grad"


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for the module (tiny tensors: on shared cores more threads only spin)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def forward_steps(handle) -> int:
    """Forward steps of the last checkpointed step (``CheckpointedSequential`` or a ``checkpoint_modules`` handle)."""
    return handle.last_stats.forward_steps


@dataclass
class Step:
    """What one training step leaves behind: output, gradients, buffers, RNG state, warnings."""

    out: object
    grads: dict
    input_grad: torch.Tensor | None
    buffers: dict
    rng: torch.Tensor
    warnings: list = field(default_factory=list)


def weighted_loss(out) -> torch.Tensor:
    """A loss whose gradient differs per output element (a plain ``sum`` would hide permutations)."""
    tensors = [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)]
    total = 0
    for t in tensors:
        w = torch.linspace(-1, 1, t.numel(), dtype=t.dtype).view_as(t)
        total = total + (t * w).sum() + 0.5 * t.square().sum()
    return total


def detached(out):
    """``out`` (a tensor or a tuple of them) detached and cloned."""
    if isinstance(out, torch.Tensor):
        return out.detach().clone()
    return tuple(t.detach().clone() if isinstance(t, torch.Tensor) else t for t in out)


def train_step(forward, model: nn.Module, x: torch.Tensor, seed: int = 1, loss_fn=weighted_loss) -> Step:
    """Run ``loss_fn(forward(x)).backward()`` from seed ``seed``; gradients of ``model``'s parameters by name."""
    for p in model.parameters():
        p.grad = None
    x.grad = None
    torch.manual_seed(seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = forward(x)
        loss_fn(out).backward()
    return Step(detached(out),
                {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()},
                None if x.grad is None else x.grad.clone(),
                {name: b.clone() for name, b in model.named_buffers()},
                torch.get_rng_state(), [str(w.message) for w in caught])


def assert_equal_out(got, ref):
    """Outputs equal bitwise (tensors or tuples of tensors)."""
    if isinstance(ref, torch.Tensor):
        assert torch.equal(got, ref), f"output differs by {(got - ref).abs().max().item():.3g}"
        return
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert_equal_out(g, r)


def assert_same_step(got: Step, ref: Step):
    """Everything of ``got`` bitwise equal to ``ref``; no 'no input requires grad' warning."""
    assert not [w for w in got.warnings if NO_GRAD_WARNING in w], got.warnings
    assert_equal_out(got.out, ref.out)
    assert got.grads.keys() == ref.grads.keys()
    missing = [n for n, g in got.grads.items() if (g is None) != (ref.grads[n] is None)]
    assert not missing, f"gradient present in one step only: {missing}"
    wrong = {n: (g - ref.grads[n]).abs().max().item() for n, g in got.grads.items()
             if g is not None and not torch.equal(g, ref.grads[n])}
    assert not wrong, f"parameter gradients differ (max abs diff per parameter): {wrong}"
    assert (got.input_grad is None) == (ref.input_grad is None)
    if ref.input_grad is not None:
        assert torch.equal(got.input_grad, ref.input_grad), "input gradient differs"
    wrong = [n for n, b in got.buffers.items() if not torch.equal(b, ref.buffers[n])]
    assert not wrong, f"buffers (BatchNorm running statistics) differ: {wrong}"
    assert torch.equal(got.rng, ref.rng), "the RNG stream after the step differs from plain's"


def hook_state(model: nn.Module) -> list:
    """Per module: its type, attribute names, instance-level ``forward`` and every hook dict (nothing may be left)."""
    hook_dicts = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                  "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
                  "_backward_pre_hooks")
    return [(name, type(m), sorted(m.__dict__), m.__dict__.get("forward"), m.__dict__.get("__call__"),
             *(dict(getattr(m, d, {})) for d in hook_dicts))
            for name, m in model.named_modules()]


def global_hook_state() -> tuple:
    """torch's global module hooks (a checkpointing handle must not leave any behind)."""
    from torch.nn.modules import module
    return tuple(dict(getattr(module, d)) for d in ("_global_forward_hooks", "_global_forward_pre_hooks",
                                                    "_global_backward_hooks", "_global_backward_pre_hooks")
                 if hasattr(module, d))


class Counted(nn.Module):
    """A stage that counts its own forward calls (independent of how a wrapper reports steps)."""

    def __init__(self, stage, counter: list):
        super().__init__()
        self.stage, self.counter = stage, counter

    def forward(self, x):
        self.counter[0] += 1
        return self.stage(x)
