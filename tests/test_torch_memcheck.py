"""The torch wrappers' memory check: a step that cannot fit is refused before it runs, and nothing is changed."""

import re
from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import ckpt  # noqa: E402
import ckpt.torch.memcheck as torch_memcheck  # noqa: E402
from ckpt import memcheck  # noqa: E402

MiB = 2 ** 20


def limited(monkeypatch, nbytes: int):
    monkeypatch.setattr(memcheck, "memory_limits", lambda device="cpu": {"MemAvailable": nbytes})


def mlp(depth=16, width=256, norm=False):
    """Blocks of Linear + (BatchNorm) + ReLU: alike, so checkpoint_modules can be checked too."""
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(nn.Linear(width, width), *([nn.BatchNorm1d(width)] if norm else []),
                                         nn.ReLU()) for _ in range(depth)])


def test_profile_bytes_match_the_numpy_model_of_the_same_mlp():
    # 16 Linear+ReLU blocks of width 256, batch 4096, float32: the bytes the numpy memory model counts for
    # its twin, transients aside (torch's CPU transients are not profiled: 0)
    model, x = mlp(), torch.randn(4096, 256)
    profile = torch_memcheck.chain_profile(list(model), x)
    twin = ckpt.Profile.from_chain(ckpt.MLP([256] * 17, dtype="float32", output_activation="relu"), 4096)
    twin = replace(twin, loss_transient=0, stages=[replace(s, forward_transient=0, backward_transient=0)
                                                   for s in twin.stages])
    for strategy in ("store_all", "sqrt_n", "recompute"):
        assert ckpt.predict_memory(profile, strategy).peak_bytes == ckpt.predict_memory(twin, strategy).peak_bytes


def test_a_step_that_cannot_fit_is_refused_naming_both_numbers_and_what_fits(monkeypatch):
    model, x = mlp(norm=True), torch.randn(4096, 256)
    limited(monkeypatch, 40 * MiB)
    wrapped = ckpt.CheckpointedSequential(model, strategy="store_all")
    running_mean = model[0][1].running_mean.clone()
    rng = torch.get_rng_state()
    with pytest.raises(ckpt.InsufficientMemoryError) as refused:
        wrapped(x)
    message = str(refused.value)
    assert re.search(r"ckpt.torch: strategy 'store_all' on 16 stages \(input \[\(4096, 256\)\]; predicted peak of "
                     r"a training step\) needs \d+\.\d MiB \([\d,]+ B\), but this process may use 40.0 MiB "
                     r"\(41,943,040 B, MemAvailable\); recompute would fit \(19.5 MiB, 136 forward steps vs 16\)",
                     message), message
    assert message.endswith("Pass memory_check=False to run anyway")
    assert all(p.grad is None for p in model.parameters())              # nothing ran, nothing changed
    assert torch.equal(model[0][1].running_mean, running_mean) and torch.equal(torch.get_rng_state(), rng)
    ckpt.CheckpointedSequential(model, strategy="recompute")(x)          # the named alternative is let through
    ckpt.CheckpointedSequential(model, strategy="store_all", memory_check=False)(x)


def test_checked_once_per_input_signature_and_never_without_grad(monkeypatch):
    profiled = []
    real = torch_memcheck.chain_profile
    monkeypatch.setattr(torch_memcheck, "chain_profile", lambda stages, x: profiled.append(x.shape) or real(stages, x))
    wrapped = ckpt.CheckpointedSequential(mlp(depth=4, width=8), strategy="sqrt_n")
    for batch in (4, 4, 6, 4):
        wrapped(torch.randn(batch, 8)).sum().backward()
    with torch.no_grad():
        wrapped(torch.randn(5, 8))
    assert profiled == [torch.Size([4, 8]), torch.Size([6, 8])]


def test_the_check_calls_each_stage_once_more_on_the_first_training_call_only():
    calls = []
    stages = [lambda h, k=k: (calls.append(k), h.tanh())[1] for k in range(3)]
    model = ckpt.CheckpointedSequential(stages, strategy="store_all")
    model(torch.randn(2, 3, requires_grad=True)).sum().backward()
    assert calls == [0, 1, 2, 0, 1, 2]                           # the check's profiling run, then the step
    calls.clear()
    model(torch.randn(2, 3, requires_grad=True)).sum().backward()
    assert calls == [0, 1, 2]


def test_checkpoint_modules_checks_alike_blocks_from_block_one(monkeypatch):
    model, x = mlp(), torch.randn(4096, 256)
    limited(monkeypatch, 40 * MiB)
    with ckpt.checkpoint_modules(model, strategy="store_all"):
        with pytest.raises(ckpt.InsufficientMemoryError, match=r"'store_all' on 16 stages .* needs 68.0 MiB"):
            model(x)
    assert all(p.grad is None for p in model.parameters())
    unlike = nn.Sequential(*[m for block in mlp(depth=4, width=8) for m in block])   # Linear, ReLU, ...: not checked
    limited(monkeypatch, 1)
    with ckpt.checkpoint_modules(unlike, strategy="store_all"):
        unlike(torch.randn(4, 8)).sum().backward()


def test_blocks_differing_only_in_their_settings_are_not_checked_as_block_one():
    """A stride changes a block's bytes but not its parameters' shapes: such blocks are not alike (the check
    would predict block 1's bytes for each); equal blocks are."""
    from ckpt.torch.memcheck import repeated_block_profile
    x = torch.randn(2, 4, 8, 8)
    strided = [nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, stride=2)]
    assert repeated_block_profile(strided, strided[0].forward, (x,), {}) is None
    equal = [nn.Conv2d(4, 4, 3, padding=1) for _ in range(2)]
    assert repeated_block_profile(equal, equal[0].forward, (x,), {}) is not None


def test_memory_check_must_be_a_bool():
    with pytest.raises(TypeError, match=r"ckpt.torch: memory_check must be True or False, got 'no'"):
        ckpt.CheckpointedSequential(mlp(depth=2, width=4), memory_check="no")
    with pytest.raises(TypeError, match=r"memory_check must be True or False, got 0"):
        ckpt.checkpoint_modules(mlp(depth=2, width=4), memory_check=0)


# ------------------------------------------------------------------ bad input to the wrappers, found as a user

@pytest.mark.parametrize("flag", ["track_memory", "preserve_rng_state"])
def test_wrapper_flags_must_be_bools(flag):
    with pytest.raises(TypeError, match=rf"ckpt.torch: {flag} must be True or False, got 'x'"):
        ckpt.CheckpointedSequential(mlp(depth=2, width=4), **{flag: "x"})
    with pytest.raises(TypeError, match=rf"{flag} must be True or False, got 'x'"):
        ckpt.checkpoint_modules(mlp(depth=2, width=4), **{flag: "x"})


def test_a_call_without_input_and_blocks_that_are_not_a_list_are_clear_errors():
    with pytest.raises(TypeError, match=r"CheckpointedSequential needs an input x_0 \(model\(x\)\), got none"):
        ckpt.CheckpointedSequential(mlp(depth=2, width=4))()
    with pytest.raises(TypeError, match=r"checkpoint_modules: expected the blocks to checkpoint .* got NoneType"):
        ckpt.checkpoint_modules(None)
