"""A torch stage's bytes are measured once (ckpt.torch.measure): Profile.from_torch and the memory check agree,
and both count what torch's CPU allocator holds."""

from dataclasses import asdict

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import ckpt  # noqa: E402
from ckpt.torch.memcheck import chain_profile, repeated_block_profile  # noqa: E402
from profiling.stage_meter import counted, counted_forward, forward_held, stage_allocations  # noqa: E402

BYTE_FIELDS = ["output_bytes", "tape_bytes", "tape_keeps_input", "tape_keeps_output", "grad_bytes"]
# transients: from_torch measures them (the allocator's events); the memory check, which runs before a
# step and counts bytes only, does not


def mlp_inplace():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(inplace=True), nn.Linear(32, 32), nn.ReLU(inplace=True),
                         nn.Linear(32, 4)), torch.randn(8, 16)


def cnn_batchnorm():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)), torch.randn(4, 3, 8, 8)


def transformer():
    return nn.Sequential(*[nn.TransformerEncoderLayer(16, 2, 32, batch_first=True) for _ in range(3)]), \
        torch.randn(2, 5, 16)


def byte_fields(profile):
    return profile.input_bytes, [{f: asdict(s)[f] for f in BYTE_FIELDS} for s in profile.stages]


@pytest.mark.parametrize("build", [mlp_inplace, cnn_batchnorm, transformer])
def test_from_torch_and_the_memory_check_measure_the_same_bytes(build):
    torch.manual_seed(0)
    model, x = build()
    checked = chain_profile(list(model), x)
    measured = ckpt.Profile.from_torch(model, x, repeats=1)
    assert byte_fields(measured) == byte_fields(checked)
    assert all(s.forward_time > 0 for s in measured.stages) and checked.stages[0].forward_time == 0


def test_the_bytes_of_an_mlp_with_in_place_relu():
    model, x = mlp_inplace()
    profile = ckpt.Profile.from_torch(model, x, repeats=1)
    f32 = 4
    assert [s.output_bytes for s in profile.stages] == [8 * 32 * f32] * 4 + [8 * 4 * f32]
    assert [s.tape_bytes for s in profile.stages] == [8 * 16 * f32] + [8 * 32 * f32] * 4
    # the in-place ReLU keeps the one storage that was its input and is its output: counted as its output
    assert [s.tape_keeps_input for s in profile.stages] == [True, False, True, False, True]
    assert [s.tape_keeps_output for s in profile.stages] == [False, True, False, True, False]
    assert [profile.tape_own_bytes(i) for i in range(1, 6)] == [0] * 5
    assert [s.grad_bytes for s in profile.stages] == [(16 * 32 + 32) * f32, 0, (32 * 32 + 32) * f32, 0,
                                                      (32 * 4 + 4) * f32]


def test_a_stage_that_modifies_the_callers_input_in_place_leaves_it_as_it_was():
    x = torch.randn(4, 6)
    before = x.clone()
    stages = [lambda h: h.mul_(2), nn.Linear(6, 6)]
    profile = ckpt.Profile.from_torch(stages, x, repeats=2)
    checked = chain_profile(stages, x)
    assert torch.equal(x, before)
    assert byte_fields(profile) == byte_fields(checked)
    assert profile.stage(1).tape_bytes == 0 and profile.stage(1).grad_bytes == 0       # x needs no gradient


def frozen_layer_then_views():
    """A Tanh after a frozen layer, then a stage returning two views of one new buffer."""
    frozen = nn.Linear(32, 32).requires_grad_(False)
    return [frozen, nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), lambda h: torch.tanh(h).chunk(2, dim=1),
            lambda halves: halves[0] * halves[1], nn.Linear(16, 8)], torch.randn(64, 32)


def test_bytes_are_what_the_torch_cpu_allocator_holds():
    """Per stage of a plain training forward, what TorchCPUMeter sees held (profiling.stage_meter) is what
    the profile counts.  A Tanh after a frozen layer keeps nothing (its input needs no gradient) and
    two views of one buffer are one buffer."""
    torch.manual_seed(0)
    stages, x = frozen_layer_then_views()
    profile = ckpt.Profile.from_torch(stages, x, repeats=1)
    assert stage_allocations(stages, x) == counted(profile)
    assert profile.stage(2).tape_bytes == 0 and profile.stage(4).tape_bytes == 64 * 32 * 4
    assert profile.stage(5).output_bytes == 64 * 32 * 4


def test_repeated_blocks_are_measured_as_blocks_after_the_first_are_called():
    # block 1 gets x, which needs no gradient; blocks 2..n get a block's output, which does: their Sigmoid
    # output is then kept by the Tanh after it
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Sigmoid(), nn.Tanh(), nn.Linear(12, 12)) for _ in range(4)]
    x = torch.randn(5, 12)
    repeated = repeated_block_profile(blocks, blocks[0].forward, (x,), {})
    chained = chain_profile(blocks, x)
    assert chained.stage(1).tape_bytes < chained.stage(2).tape_bytes
    assert repeated.stages == (chained.stage(2),) * 4


def test_a_parameter_shared_by_stages_has_its_gradient_counted_once_at_the_last():
    # backward reaches stage 3 first: it allocates lin.weight.grad and lin.bias.grad; stage 1 adds to them
    lin = nn.Linear(6, 6)
    stages, x = [lin, nn.Tanh(), lin], torch.randn(3, 6)
    for profile in (ckpt.Profile.from_torch(stages, x, repeats=1), chain_profile(stages, x)):
        assert [s.grad_bytes for s in profile.stages] == [0, 0, (6 * 6 + 6) * 4]


@pytest.mark.parametrize("build", [mlp_inplace, frozen_layer_then_views])
def test_what_a_plain_forward_leaves_held_is_what_the_memory_model_counts(build):
    # whole chains: an in-place stage's figures are only comparable there (x_{i-1} and x_i are one storage)
    torch.manual_seed(0)
    stages, x = build()
    assert forward_held(stages, x) == counted_forward(chain_profile(list(stages), x))


class _HalfView(nn.Module):
    """Returns a view of half its input: the chain holds the whole storage, the next stage copies half."""

    def forward(self, x):
        return x[:, : x.shape[1] // 2]


def test_a_saved_copy_smaller_than_the_chains_view_keeps_the_profile_consistent():
    """A stage fed a view saves a compact copy smaller than the storage the chain holds: the profile says
    it keeps no input (its tape all its own bytes) instead of giving it negative own bytes."""
    torch.manual_seed(0)
    stages = nn.Sequential(nn.Linear(64, 64), _HalfView(), nn.Linear(32, 16))
    profile = ckpt.Profile.from_torch(stages, torch.randn(8, 64), repeats=1)
    assert all(profile.tape_own_bytes(i) >= 0 for i in range(1, len(profile) + 1))
    assert chain_profile(list(stages), torch.randn(8, 64)).stages[2].tape_keeps_input is False
