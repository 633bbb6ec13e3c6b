"""Byte budgets in the torch wrappers: planned per input signature, within budget, gradients bitwise plain."""

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import ckpt  # noqa: E402
from ckpt import CheckpointedSequential, Profile, checkpoint_modules  # noqa: E402

WIDTHS = [48, 96, 24, 80, 16, 64, 32, 72, 8]          # heterogeneous: the planner has choices to make


def stages(seed=0):
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Linear(a, b), nn.Tanh()).double() for a, b in zip(WIDTHS, WIDTHS[1:])]


def batch(size, seed=1):
    return torch.randn(size, WIDTHS[0], dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def plain_grads(blocks, x):
    for b in blocks:
        b.zero_grad(set_to_none=True)
    out = x
    for b in blocks:
        out = b(out)
    out.pow(2).sum().backward()
    return [p.grad.clone() for b in blocks for p in b.parameters()]


def tight_budget(blocks, x) -> int:
    """Halfway between recompute's and store_all's predicted peaks: store_all does not fit."""
    profile = Profile.from_torch(blocks, x, repeats=1)
    low = ckpt.predict_memory(profile, "recompute").peak_bytes
    high = ckpt.predict_memory(profile, "store_all").peak_bytes
    return (low + high) // 2


def step(model, x, blocks):
    for b in blocks:
        b.zero_grad(set_to_none=True)
    model(x).pow(2).sum().backward()
    return [p.grad.clone() for b in blocks for p in b.parameters()]


def test_budgeted_sequential_plans_within_budget_and_matches_plain_autograd_bitwise():
    blocks, x = stages(), batch(64)
    reference = plain_grads(blocks, x)
    budget = tight_budget(blocks, x)
    model = CheckpointedSequential(blocks, budget=budget)
    assert model.schedule is None and model.profile is None          # nothing planned before the first call
    grads = step(model, x, blocks)
    assert all(torch.equal(a, b) for a, b in zip(grads, reference))
    assert ckpt.predict_memory(model.profile, model.schedule).peak_bytes <= budget
    assert model.schedule.forward_steps > len(blocks)                  # store_all does not fit: it recomputes
    assert model.last_stats.forward_steps == model.schedule.forward_steps


def test_replans_exactly_once_per_input_signature():
    blocks = stages()
    model = CheckpointedSequential(blocks, budget=tight_budget(blocks, batch(64)))
    for size in (64, 64, 32, 64, 32):
        x = batch(size)
        assert all(torch.equal(a, b) for a, b in zip(step(model, x, blocks), plain_grads(blocks, x)))
        assert model.profile.input_bytes == x.numel() * 8              # the plan of this signature is current
    assert model.budget.plans_made == 2
    step(model, batch(32).float().double().requires_grad_(), blocks)     # requires_grad is in the signature
    assert model.budget.plans_made == 3
    with torch.no_grad():
        model(batch(16))                                                # no training step: nothing to plan
    assert model.budget.plans_made == 3


def test_a_saved_profile_is_planned_from_once_and_budget_errors_name_the_least_budget():
    blocks, x = stages(), batch(64)
    profile = Profile.from_torch(blocks, x, repeats=1)
    budget = tight_budget(blocks, x)
    model = CheckpointedSequential(blocks, budget=f"{budget}B", profile=profile)
    assert model.profile is profile and ckpt.predict_memory(profile, model.schedule).peak_bytes <= budget
    step(model, x, blocks)
    step(model, batch(16), blocks)
    assert model.budget.plans_made == 1
    least = ckpt.min_feasible_budget(profile)
    with pytest.raises(ValueError, match=f"least feasible budget is {least:,} B"):
        CheckpointedSequential(blocks, budget=least - 1, profile=profile)
    with pytest.raises(ValueError, match="least feasible budget"):
        CheckpointedSequential(blocks, budget=1)(x)
    with pytest.raises(ValueError, match="plans with strategy 'optimal'"):
        CheckpointedSequential(blocks, strategy="sqrt_n", budget="1GiB")
    with pytest.raises(ValueError, match="pass budget= with it"):
        CheckpointedSequential(blocks, profile=profile)


def test_checkpoint_modules_with_a_budget():
    blocks, x = stages(), batch(64)
    model = nn.Sequential(*blocks)
    reference = plain_grads(blocks, x)
    budget = tight_budget(blocks, x)
    with checkpoint_modules(model, budget=budget) as handle:
        grads = step(model, x, blocks)
        assert all(torch.equal(a, b) for a, b in zip(grads, reference))
        assert ckpt.predict_memory(handle.profile, handle.schedule).peak_bytes <= budget
        step(model, x, blocks)
        assert handle.budget.plans_made == 1
    assert all(not hasattr(b, "_ckpt_handle") for b in blocks)
