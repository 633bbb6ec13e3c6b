"""The torch wrappers as a specification: gradients equal plain autograd for every strategy."""

import math

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import ckpt  # noqa: E402
from ckpt import every_segment  # noqa: E402
from ckpt import CheckpointedSequential, checkpoint_sequential  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def strategy_cases():
    """(name or function, options) for every registered strategy, a few option variants, and ours."""
    cases = [(name, {}) for name in ckpt.strategies() if name != "revolve" and not ckpt.needs_profile(name)]
    cases += [("revolve", {"slots": 2})]        # planners from a profile: tests/test_optimal.py runs them on torch
    cases += [("sqrt_n", {"segments": 1}), ("sqrt_n", {"segments": 2}), ("sqrt_n", {"segments": 100}),
              (lambda n: every_segment(n, 2), {})]
    return cases


CASES = strategy_cases()
IDS = [f"{getattr(s, '__name__', s)}{o or ''}" for s, o in CASES]


def mlp(depth=5, width=6, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth)],
                         nn.Linear(width, 3)).to(dtype)


def convnet(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
                         nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()),
                         nn.MaxPool2d(2),
                         nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh()),
                         nn.Flatten(), nn.Linear(4 * 3 * 3, 5)).to(dtype)


def transformer(blocks=3, d=8, dtype=torch.float64, seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.TransformerEncoderLayer(d, 2, 16, dropout=dropout, batch_first=True)
                           for _ in range(blocks)]).to(dtype)


MODELS = {"mlp": (mlp, (4, 6)), "conv": (convnet, (3, 2, 6, 6)), "transformer": (transformer, (2, 5, 8))}


def grads_of(model, x, seed=1, params=None):
    """Loss, parameter gradients and input gradient of one step with a fixed loss."""
    params = list(model.parameters()) if params is None else params
    for p in params:
        p.grad = None
    x = x.detach().requires_grad_(x.requires_grad)
    torch.manual_seed(seed)
    out = model(x)
    loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum() + out.square().sum()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in params], x.grad


def rel(a, b):
    """Relative difference, in float64 (a float32 1e-300 floor is 0: two zero gradients gave nan)."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def assert_same(got, ref, tol):
    loss, grads, dx = got
    loss0, grads0, dx0 = ref
    assert rel(loss, loss0) <= tol
    assert len(grads) == len(grads0)
    for g, g0 in zip(grads, grads0):
        assert rel(g, g0) <= tol
    assert (dx is None) == (dx0 is None)
    if dx0 is not None:
        assert rel(dx, dx0) <= tol


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("strategy,options", CASES, ids=IDS)
def test_gradients_equal_plain_autograd(kind, dtype, strategy, options):
    build, shape = MODELS[kind]
    plain = build(dtype=dtype)
    # byte counting (saved-tensor hooks) must not change a gradient: on for float64, off for float32
    wrapped = CheckpointedSequential(build(dtype=dtype), strategy=strategy,
                                     track_memory=dtype is torch.float64, **options)
    x = torch.randn(*shape, dtype=dtype, requires_grad=True)
    assert_same(grads_of(wrapped, x), grads_of(plain, x), TOL[dtype])


@pytest.mark.parametrize("segments", [1, 2, 3, 7, 50])
def test_checkpoint_sequential_equals_plain_for_any_segments(segments):
    model = mlp(depth=6)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    ref = grads_of(model, x)
    got = grads_of(lambda v: checkpoint_sequential(model, segments, v), x, params=list(model.parameters()))
    assert_same(got, ref, 1e-12)


def test_checkpoint_sequential_checkpoints_every_segment():
    s = every_segment(7, 3)
    assert s.forward_steps == 14                     # each stage once before Loss, once after
    before = s.actions[:s.actions.index(ckpt.Loss())]
    assert not any(isinstance(a, ckpt.ForwardTape) for a in before)


def test_checkpoint_sequential_refuses_bad_segments_and_unknown_options():
    model = mlp(depth=2)
    x = torch.randn(2, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="segments must be an int"):
        checkpoint_sequential(model, 0, x)
    with pytest.raises(TypeError, match="unsupported arguments"):
        checkpoint_sequential(model, 2, x, determinism_check="default")


def dropout_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Dropout(0.5)) for _ in range(5)])


@pytest.mark.parametrize("strategy", ["recompute", "sqrt_n"])
def test_dropout_masks_are_replayed(strategy):
    x = torch.randn(4, 6, dtype=torch.float32, requires_grad=True)
    ref = grads_of(dropout_mlp(), x, seed=7)
    got = grads_of(CheckpointedSequential(dropout_mlp(), strategy=strategy), x, seed=7)
    assert_same(got, ref, 1e-6)


def test_dropout_masks_are_replayed_by_checkpoint_sequential():
    x = torch.randn(4, 6, dtype=torch.float32, requires_grad=True)
    ref = grads_of(dropout_mlp(), x, seed=7)
    model = dropout_mlp()
    got = grads_of(lambda t: checkpoint_sequential(model, 2, t), x, seed=7, params=list(model.parameters()))
    assert_same(got, ref, 1e-6)


def test_dropout_transformer_recompute_matches_and_rng_stream_is_left_as_plain():
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    plain, wrapped = transformer(dropout=0.3), CheckpointedSequential(transformer(dropout=0.3), "recompute")
    ref = grads_of(plain, x, seed=3)
    after_plain = torch.rand(3)
    got = grads_of(wrapped, x, seed=3)
    after_wrapped = torch.rand(3)
    assert_same(got, ref, 1e-12)
    assert torch.equal(after_plain, after_wrapped)   # recomputation does not advance the user's RNG


@pytest.mark.parametrize("strategy", ["store_all", "recompute", "sqrt_n"])
def test_batchnorm_running_stats_update_once_per_step(strategy):
    plain, wrapped = convnet(), CheckpointedSequential(convnet(), strategy=strategy)
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    for _ in range(2):
        grads_of(plain, x)
        grads_of(wrapped, x)
    for (name, b), b0 in zip(wrapped.named_buffers(), plain.buffers()):
        assert torch.equal(b, b0), name
    assert int(wrapped[0][1].num_batches_tracked) == 2


def test_frozen_input_still_gives_parameter_gradients():
    torch.manual_seed(0)
    embed = nn.Embedding(10, 6).double().requires_grad_(False)
    tokens = torch.randint(0, 10, (4,))
    x = embed(tokens)                                          # does not require grad
    plain, wrapped = mlp(), CheckpointedSequential(mlp(), "sqrt_n")
    ref, got = grads_of(plain, x), grads_of(wrapped, x)
    assert got[2] is None
    assert_same(got, ref, 1e-12)


def test_frozen_first_stages_and_autograd_grad():
    plain, wrapped = mlp(), CheckpointedSequential(mlp(), "recompute")
    for m in (plain, wrapped):
        m[0].requires_grad_(False)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    params = [p for p in wrapped.parameters() if p.requires_grad]
    got = torch.autograd.grad(wrapped(x).square().sum(), [x, *params])
    ref = torch.autograd.grad(plain(x).square().sum(), [x, *[p for p in plain.parameters() if p.requires_grad]])
    for g, g0 in zip(got, ref):
        assert rel(g, g0) <= 1e-12
    assert all(p.grad is None for p in wrapped.parameters())   # autograd.grad does not accumulate


def test_eval_no_grad_prediction_keeps_no_tapes_and_matches():
    plain, wrapped = convnet().eval(), CheckpointedSequential(convnet(), "sqrt_n").eval()
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        out = wrapped(x)
    assert out.grad_fn is None and not out.requires_grad
    assert wrapped.last_stats is None                          # the executor never ran
    with torch.no_grad():
        assert torch.equal(out, plain(x))

@pytest.mark.parametrize("strategy", ["store_all", "sqrt_n"])
def test_a_forward_never_backwarded_is_freed_without_the_garbage_collector(strategy):
    # In-place ReLU outputs are saved by their own node: a pack hook that handed
    # autograd the tensor itself made a cycle, kept alive until gc ran.
    import gc
    import weakref
    model = nn.Sequential(*[nn.Sequential(nn.Linear(6, 6), nn.ReLU(inplace=True)) for _ in range(4)])
    wrapped, outputs = CheckpointedSequential(model, strategy), []
    for block in model:
        block.register_forward_hook(lambda m, i, o: outputs.append(weakref.ref(o)))
    gc.collect()
    gc.disable()
    try:
        out = wrapped(torch.randn(3, 6))
        del out
        alive = [r for r in outputs if r() is not None]
    finally:
        gc.enable()
    assert len(outputs) == 4 and alive == []



class Split(nn.Module):
    def forward(self, x):
        return x.tanh(), x.sigmoid(), torch.arange(3)          # a non-float item passes through


class Mix(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, xs):
        a, b, idx = xs
        return self.lin(a) * b, b, idx


class Join(nn.Module):
    def forward(self, xs):
        a, b, _ = xs
        return a + b.square()


class Keep(nn.Module):
    def forward(self, xs):
        return xs                                               # passes its input through


@pytest.mark.parametrize("strategy", ["store_all", "recompute", "sqrt_n"])
def test_stages_may_pass_tuples(strategy):
    torch.manual_seed(0)
    stages = [nn.Linear(6, 6), Split(), Mix(), Keep(), Mix(), Join()]
    plain = nn.Sequential(*stages).double()
    wrapped = CheckpointedSequential(list(plain), strategy=strategy)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    ref = grads_of(plain, x)
    assert_same(grads_of(wrapped, x), ref, 1e-12)


def test_tuple_input_and_output():
    torch.manual_seed(0)
    lin = nn.Linear(6, 6).double()
    stages = [lambda xs: (lin(xs[0]) + xs[1], xs[1]), lambda xs: (xs[0].relu(), xs[1] * 2)]
    wrapped = CheckpointedSequential(stages, "recompute")
    a = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    out = wrapped(a, b)
    assert isinstance(out, tuple) and len(out) == 2
    ga, gb = torch.autograd.grad(out[0].sum() + out[1].square().sum(), [a, b])
    a0, b0 = a.detach().requires_grad_(), b.detach().requires_grad_()
    ref = (lin(a0) + b0).relu().sum() + (b0 * 2).square().sum()
    ra, rb = torch.autograd.grad(ref, [a0, b0])
    assert rel(ga, ra) <= 1e-12 and rel(gb, rb) <= 1e-12


def test_state_dict_keys_are_those_of_the_sequential():
    seq = mlp(depth=2)
    wrapped = CheckpointedSequential(seq, "sqrt_n")
    assert list(wrapped.state_dict()) == list(seq.state_dict())
    wrapped.load_state_dict(seq.state_dict())


@pytest.mark.parametrize("track_memory", [False, True])
def test_last_stats_count_forward_steps_and_bytes_when_asked(track_memory):
    n = 9
    wrapped = CheckpointedSequential(mlp(depth=n - 1, dtype=torch.float32), "sqrt_n", track_memory=track_memory)
    wrapped(torch.randn(4, 6, requires_grad=True)).sum().backward()
    stats = wrapped.last_stats
    assert stats.forward_steps == wrapped.schedule.forward_steps == 2 * n - 3 and stats.backward_steps == n
    assert (stats.peak_saved_bytes > 0 and stats.peak_bytes > 0) == track_memory
    assert track_memory or stats.peak_bytes == stats.peak_saved_bytes == 0


@pytest.mark.parametrize("strategy,options", CASES, ids=IDS)
def test_second_backward_over_a_retained_graph_accumulates_as_plain(strategy, options):
    plain, wrapped = mlp(), CheckpointedSequential(mlp(), strategy, **options)
    x = torch.randn(4, 6, dtype=torch.float64)
    for m in (plain, wrapped):
        loss = m(x).square().sum()
        loss.backward(retain_graph=True)
        loss.backward()
    for p, p0 in zip(wrapped.parameters(), plain.parameters()):
        assert torch.equal(p.grad, p0.grad)


def test_bad_arguments_say_what_is_wrong():
    with pytest.raises(TypeError, match="expected an nn.Sequential"):
        CheckpointedSequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown strategy"):
        CheckpointedSequential(mlp(), strategy="nope")
    with pytest.raises(ValueError, match="at least one stage"):
        CheckpointedSequential([])


def test_user_registered_strategy_runs_unchanged():
    @ckpt.register_strategy("test_torch_every_third")
    def every_third(n):
        return every_segment(n, math.ceil(n / 3))

    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    assert_same(grads_of(CheckpointedSequential(mlp(), "test_torch_every_third"), x), grads_of(mlp(), x), 1e-12)


def test_import_ckpt_does_not_import_torch():
    import subprocess
    import sys
    code = "import sys, ckpt; ckpt.MLP([2, 2]); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@CUDA
@pytest.mark.parametrize("strategy", ["recompute", "sqrt_n"])
def test_cuda_dropout_and_gradients_match(strategy):
    x = torch.randn(4, 6, device="cuda", requires_grad=True)
    ref = grads_of(dropout_mlp().cuda(), x, seed=5)
    got = grads_of(CheckpointedSequential(dropout_mlp().cuda(), strategy=strategy), x, seed=5)
    assert_same(got, ref, 1e-5)


@CUDA
def test_cuda_batchnorm_once():
    plain, wrapped = convnet().cuda(), CheckpointedSequential(convnet().cuda(), "recompute")
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64, device="cuda")
    grads_of(plain, x)
    grads_of(wrapped, x)
    for b, b0 in zip(wrapped.buffers(), plain.buffers()):
        assert torch.equal(b, b0)


@pytest.mark.parametrize("strategy", ["recompute", "sqrt_n"])
def test_autocast_state_is_replayed_in_recomputation(strategy):
    x = torch.randn(4, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = grads_of(mlp(dtype=torch.float32), x)
        got = grads_of(CheckpointedSequential(mlp(dtype=torch.float32), strategy=strategy), x)
    assert_same(got, ref, 1e-6)                    # the same bfloat16 ops, forward and recomputation


def test_gradient_accumulation_over_micro_batches():
    plain, wrapped = mlp(), CheckpointedSequential(mlp(), "sqrt_n")
    xs = torch.randn(3, 4, 6, dtype=torch.float64)
    for m in (plain, wrapped):
        m.zero_grad(set_to_none=False)
        for x in xs:
            m(x).square().sum().backward()
    for g, g0 in zip(wrapped.parameters(), plain.parameters()):
        assert rel(g.grad, g0.grad) <= 1e-12


@pytest.mark.parametrize("strategy", ["store_all", "sqrt_n"])
def test_callers_saved_tensor_hooks_see_every_tape(strategy):
    packed = []

    def pack(t):
        packed.append(t.shape)
        return t.clone()                                           # a different tensor comes back

    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    ref = grads_of(mlp(), x)
    wrapped = CheckpointedSequential(mlp(), strategy=strategy)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        got = grads_of(wrapped, x)
    assert len(packed) >= 2 * 6                                    # every stage's saves, re-tapes too
    assert_same(got, ref, 1e-12)
