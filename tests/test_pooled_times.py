"""Measured profiles pool the timing samples of structurally identical stages (``pool_identical``):
identical blocks get one forward and one backward time, so ``ckpt.optimal`` shares their sub-problems;
anything that could change a stage's work keeps it apart."""

import numpy as np
import pytest

import ckpt
from ckpt.planners import _Planner
from ckpt.profile import numpy_stage_signature, pooled_medians

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from ckpt.torch.measure import stage_signature  # noqa: E402
from ckpt.torch.wrappers import _Stage  # noqa: E402

COST = ckpt.StageCost(0.0, 0.0, output_bytes=4096, tape_bytes=8192, tape_keeps_input=True)


def linear_relu_blocks(n: int, width: int = 32) -> list:
    torch.manual_seed(0)
    return [nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(n)]


def distinct_times(profile) -> int:
    return len({(s.forward_time, s.backward_time) for s in profile.stages})


def distinct_contents(profile) -> int:
    """How many distinct sub-chain contents the planner sees (what it solves once each)."""
    content = _Planner(profile).content
    return len({cid for a, row in enumerate(content) for cid in row[a:]})


# ------------------------------------------------------------------ the pooling itself

def test_pooled_medians_take_the_median_of_every_sample_of_a_group():
    samples = [([1.0, 9.0, 2.0], [5.0]), ([3.0, 4.0, 8.0], [6.0]), ([7.0], [1.0]), ([0.5], [0.25])]
    medians, note = pooled_medians(samples, ["block", "block", None, "other"])
    assert medians == [(3.5, 5.5), (3.5, 5.5), (7.0, 1.0), (0.5, 0.25)]
    assert note == "times pooled over 1 groups of identical stages (2 stages)"
    assert pooled_medians(samples, [None] * 4)[1] == "times per stage: no two stages identical"


# ------------------------------------------------------------------ torch: identical blocks pool

def test_identical_torch_blocks_get_bitwise_equal_times_and_the_planner_sees_n_plus_one_contents():
    """Six Linear+ReLU blocks on an input that requires grad: every stage, the first too (its input has the
    others' signature and bytes), gets one time; the planner then sees one content per sub-chain length
    (7) instead of one per sub-chain (22)."""
    blocks, x = linear_relu_blocks(6), torch.randn(8, 32, requires_grad=True)
    pooled = ckpt.Profile.from_torch(blocks, x, repeats=3, pool_identical=True)
    own = ckpt.Profile.from_torch(blocks, x, repeats=3, pool_identical=False)
    assert distinct_times(pooled) == 1
    assert "times pooled over 1 groups of identical stages (6 stages)" in pooled.source
    assert distinct_contents(pooled) == 7
    assert distinct_times(own) == 6 and distinct_contents(own) == 22       # per-stage medians: all differ
    assert own.source == "torch stages on cpu, measured (median of 3)"
    assert [replace_times(s) for s in pooled.stages] == [replace_times(s) for s in own.stages]


def replace_times(cost):
    from dataclasses import replace
    return replace(cost, forward_time=0.0, backward_time=0.0)


def test_the_first_stage_pools_only_when_its_input_and_bytes_match():
    """The caller's x needs no gradient: block 1's input signature and its backward's bytes differ from the
    others' (it computes no δ_0), so it keeps its own times; blocks 2..6 pool."""
    blocks, x = linear_relu_blocks(6), torch.randn(8, 32)
    profile = ckpt.Profile.from_torch(blocks, x, repeats=3)
    assert "times pooled over 1 groups of identical stages (5 stages)" in profile.source
    assert profile.stage(1).backward_transient != profile.stage(2).backward_transient
    assert distinct_times(ckpt.Profile(profile.stages[1:], profile.input_bytes)) == 1
    assert distinct_contents(profile) == 2 * 6                 # contents with or without block 1: 6 lengths each


def counting(monkeypatch, name: str) -> list:
    """Calls of ``ckpt.torch.measure.<name>`` (still run), one stage each."""
    import ckpt.torch.measure as measure
    calls, real = [], getattr(measure, name)

    def counted(stage, *args, **kwargs):
        calls.append(stage)
        return real(stage, *args, **kwargs)
    monkeypatch.setattr(measure, name, counted)
    return calls


def norm_blocks(n: int, width: int = 32) -> list:
    """Blocks whose forward and backward allocate transients (LayerNorm, GELU)."""
    torch.manual_seed(0)
    return [nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width), nn.GELU()) for _ in range(n)]


def test_identical_blocks_are_timed_and_checked_a_few_times_and_reuse_equal_transients(monkeypatch):
    """Of 8 identical blocks (the first apart: its input needs no gradient), the next three are timed and
    two have their transients measured; the rest reuse them, equal to the byte to what measuring every
    block gives."""
    from ckpt.torch.measure import CHECKED_PER_GROUP, TIMED_PER_GROUP
    blocks, x = norm_blocks(8), torch.randn(16, 32)
    every = ckpt.Profile.from_torch(blocks, x, repeats=2, pool_identical=False)
    timed, checked = counting(monkeypatch, "_step_times"), counting(monkeypatch, "_cpu_transients")
    pooled = ckpt.Profile.from_torch(blocks, x, repeats=2)
    assert timed == blocks[:1 + TIMED_PER_GROUP] and checked == blocks[:1 + CHECKED_PER_GROUP]
    assert [replace_times(s) for s in pooled.stages] == [replace_times(s) for s in every.stages]
    assert any(s.backward_transient for s in pooled.stages)            # the reused figures are not zeros
    assert distinct_times(ckpt.Profile(pooled.stages[1:], 0)) == 1
    assert "(7 stages), the first 3 of each timed" in pooled.source


def test_identical_blocks_whose_transients_differ_are_all_measured_and_timed(monkeypatch):
    import ckpt.torch.measure as measure
    calls = []

    def uneven(stage, fresh):                    # the second block's transients differ from the first's
        calls.append(stage)
        return (0, 1000 if len(calls) == 2 else 0)
    monkeypatch.setattr(measure, "_cpu_transients", uneven)
    timed = counting(monkeypatch, "_step_times")
    blocks = linear_relu_blocks(6)
    profile = ckpt.Profile.from_torch(blocks, torch.randn(8, 32, requires_grad=True), repeats=2)
    assert calls == blocks and timed == blocks
    assert [s.backward_transient for s in profile.stages] == [0, 1000, 0, 0, 0, 0]
    assert "times pooled over 1 groups of identical stages (5 stages)" in profile.source


def test_bytes_alone_keep_stages_apart():
    block = nn.Linear(32, 32)
    x = torch.randn(8, 32, requires_grad=True)
    assert stage_signature(block, x, COST) == stage_signature(block, x.clone(), COST)
    assert stage_signature(block, x, COST) != stage_signature(block, x, ckpt.StageCost(0.0, 0.0, 4096, 4096))
    times_ignored = ckpt.StageCost(1.0, 2.0, output_bytes=4096, tape_bytes=8192, tape_keeps_input=True)
    assert stage_signature(block, x, COST) == stage_signature(block, x, times_ignored)


# ------------------------------------------------------------------ torch: what keeps stages apart

class Repeat(nn.Module):
    """x + 1, ``n_iters`` times: its bytes do not depend on ``n_iters`` (an add saves nothing)."""

    def __init__(self, n_iters: int):
        super().__init__()
        self.n_iters = n_iters

    def forward(self, x):
        for _ in range(self.n_iters):
            x = x + 1
        return x


def test_a_custom_modules_public_int_attribute_keeps_it_apart():
    stages = [Repeat(10), Repeat(10), Repeat(11)]
    profile = ckpt.Profile.from_torch(stages, torch.randn(8, 32, requires_grad=True), repeats=2)
    assert len({replace_times(s) for s in profile.stages}) == 1                 # the same bytes
    assert "times pooled over 1 groups of identical stages (2 stages)" in profile.source


@pytest.mark.parametrize("other", [
    lambda: (nn.Conv2d(4, 4, 3, stride=2, padding=1), torch.randn(2, 4, 8, 8, requires_grad=True)),
    lambda: (nn.Conv2d(4, 4, 3, padding=2, dilation=2), torch.randn(2, 4, 8, 8, requires_grad=True)),
    lambda: (nn.Conv2d(4, 4, 3, padding=1, bias=False), torch.randn(2, 4, 8, 8, requires_grad=True)),
    lambda: (nn.Conv2d(4, 4, 3, padding=1).double(), torch.randn(2, 4, 8, 8, requires_grad=True)),
    lambda: (nn.Conv2d(4, 4, 3, padding=1).eval(), torch.randn(2, 4, 8, 8, requires_grad=True)),
    lambda: (nn.Conv2d(4, 4, 3, padding=1), torch.randn(2, 4, 16, 4, requires_grad=True)),            # shape
    lambda: (nn.Conv2d(4, 4, 3, padding=1), torch.randn(2, 4, 8, 8, dtype=torch.float64, requires_grad=True)),
    lambda: (nn.Conv2d(4, 4, 3, padding=1), torch.randn(2, 4, 8, 8)),                                  # no grad
    lambda: (nn.Conv2d(4, 4, 3, padding=1), torch.randn(2, 8, 8, 4, requires_grad=True).permute(0, 3, 1, 2)),
], ids=["stride", "dilation", "no bias", "float64 weights", "eval", "input shape", "input dtype", "input requires no grad",
        "input strides"])
def test_each_difference_that_can_change_the_work_gives_another_signature(other):
    """Same bytes (``COST``) for both: only the structure, the parameters or the input differ."""
    conv, x = nn.Conv2d(4, 4, 3, padding=1), torch.randn(2, 4, 8, 8, requires_grad=True)
    assert stage_signature(conv, x, COST) == stage_signature(nn.Conv2d(4, 4, 3, padding=1), x.clone(), COST)
    assert stage_signature(conv, x, COST) != stage_signature(*other(), COST)


def test_tied_weights_give_another_signature():
    untied = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False))
    tied = nn.Sequential(nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False))
    tied[1].weight = tied[0].weight
    x = torch.randn(2, 8, requires_grad=True)
    assert stage_signature(untied, x, COST) != stage_signature(tied, x, COST)


def square(x):
    return x * x


def test_functions_closures_and_what_hides_them_never_pool():
    """A plain function, a closure, a lambda, a callable wrapped as a module (how CheckpointedSequential
    holds it), a module keeping a user's function, and a hooked module: no signature."""
    def scaled(x):
        return x * factor
    factor = 2.0
    x = torch.randn(4, 8, requires_grad=True)
    for stage in (square, scaled, lambda v: v * v, _Stage(square), _Stage(lambda v: v)):
        assert stage_signature(stage, x, COST) is None
    for fn in (square, scaled):
        holder = Repeat(2)
        holder.activation = fn
        assert stage_signature(holder, x, COST) is None
    hooked = nn.Linear(8, 8)
    hooked.register_forward_hook(lambda *args: None)
    assert stage_signature(hooked, x, COST) is None
    profile = ckpt.Profile.from_torch([square, square, square], x, repeats=2)
    assert "times per stage: no two stages identical" in profile.source


def test_a_torch_function_attribute_pools_by_identity():
    """A TransformerEncoderLayer keeps ``activation=F.relu`` (one of torch's top-level functions): layers with
    the same function share a signature, with another one they do not."""
    x = torch.randn(2, 5, 16, requires_grad=True)
    layer = lambda act: nn.TransformerEncoderLayer(16, 2, 32, activation=act, batch_first=True)  # noqa: E731
    relu = stage_signature(layer(torch.nn.functional.relu), x, COST)
    assert relu is not None and relu == stage_signature(layer(torch.nn.functional.relu), x, COST)
    assert relu != stage_signature(layer(torch.nn.functional.gelu), x, COST)


# ------------------------------------------------------------------ numpy

def test_identical_numpy_stages_pool_and_others_keep_their_own_times():
    """MLP 16 → 32 → 32 → 32 → 32 → 4: stages 2..4 (32 → 32, ReLU) are identical; 1 and 5 differ in shape."""
    model = ckpt.MLP([16, 32, 32, 32, 32, 4])
    pooled = ckpt.Profile.from_chain(model, 8, times="measured", repeats=3)
    own = ckpt.Profile.from_chain(model, 8, times="measured", repeats=3, pool_identical=False)
    assert pooled.source == ("numpy chain, batch 8, measured (median of 3; times pooled over 1 groups of "
                             "identical stages (3 stages))")
    assert own.source == "numpy chain, batch 8, measured (median of 3)"
    assert distinct_times(pooled) == 3 and distinct_times(own) == 5
    assert len({(s.forward_time, s.backward_time) for s in pooled.stages[1:4]}) == 1


def test_numpy_signatures_see_the_activation_the_shapes_and_the_dtypes():
    """Stage 2 of 8 → 8 → 8 → 8 (ReLU) against another activation, width, weights' dtype, input and bytes."""
    stage_2 = lambda sizes=(8, 8, 8, 8), **kw: ckpt.MLP(list(sizes), **kw).stages[1]  # noqa: E731
    x = np.zeros((4, 8))
    base = numpy_stage_signature(stage_2(), x, COST)
    assert base == numpy_stage_signature(stage_2(), x.copy(), COST)
    for other in (numpy_stage_signature(stage_2(activation="tanh"), x, COST),
                  numpy_stage_signature(stage_2((8, 8, 9, 8)), x, COST),
                  numpy_stage_signature(stage_2(dtype="float32"), x, COST),
                  numpy_stage_signature(stage_2(), np.zeros((5, 8)), COST),
                  numpy_stage_signature(stage_2(), x.astype(np.float32), COST),
                  numpy_stage_signature(stage_2(), x, ckpt.StageCost(0.0, 0.0, 256, 512))):
        assert other != base
    hooked = stage_2()
    hooked.callback = print                                       # a callable attribute: unrepresentable
    assert numpy_stage_signature(hooked, x, COST) is None


# ------------------------------------------------------------------ the wrappers

def test_the_budget_wrappers_profile_with_pooling_unless_told_not_to():
    blocks, x = linear_relu_blocks(5), torch.randn(8, 32)
    budget = ckpt.predict_memory(ckpt.Profile.from_torch(blocks, x, repeats=1), "store_all").peak_bytes * 4
    for pool, distinct in ((True, 2), (False, 5)):
        model = ckpt.CheckpointedSequential(blocks, budget=budget, pool_identical=pool)
        model(x).sum().backward()
        assert distinct_times(model.profile) == distinct
    net = nn.Sequential(*blocks)                         # in place: the blocks' forwards are patched meanwhile
    with ckpt.checkpoint_modules(list(net), budget=budget) as handle:
        net(x).sum().backward()
    assert distinct_times(handle.profile) == 2
    with pytest.raises(ValueError, match="pool_identical=False says how a budget's profile is measured"):
        ckpt.CheckpointedSequential(blocks, pool_identical=False)
    with pytest.raises(TypeError, match="pool_identical must be True or False"):
        ckpt.checkpoint_modules(blocks, budget=budget, pool_identical="yes")
