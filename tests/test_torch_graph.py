"""Schedules on autograd's own graph, modelled on PyTorch's TestCheckpoint / non-reentrant cases.

Every case runs for every strategy (store_all, recompute, sqrt_n, every segment through
``checkpoint_sequential``, a user-registered one) in float64 and asks for gradients
*bitwise* equal (``torch.equal``) to plain autograd: a re-run computes the same ops on
the same values, so nothing may differ.  Where our semantics differ on purpose, the
test says so.
"""

import gc
import weakref
from collections import namedtuple

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import ckpt  # noqa: E402
from ckpt.schedule import Backward, Forward, ForwardTape, Free, Load, Loss, Save  # noqa: E402


@ckpt.register_strategy("test_graph_every_second")
def every_second(n):
    """A user strategy: checkpoint every second activation (every_segment with ⌈n/2⌉ segments)."""
    return ckpt.every_segment(n, (n + 1) // 2)


STRATEGIES = ["store_all", "recompute", "sqrt_n", "every_segment", "test_graph_every_second"]


def wrap(stages, strategy, **kw):
    """A callable running ``stages`` as a chain under ``strategy``, with its schedule for checks."""
    if strategy == "every_segment":
        model = nn.ModuleList(s if isinstance(s, nn.Module) else ckpt.torch.wrappers._Stage(s) for s in stages)

        def run(x):
            return ckpt.checkpoint_sequential(model, 2, x)
        return run
    return ckpt.CheckpointedSequential(stages, strategy=strategy, **kw)


def seeded(seed=0):
    torch.manual_seed(seed)
    return seed


def params_of(*modules):
    return [p for m in modules for p in m.parameters()]


def grads(loss_fn, tensors):
    """Gradients of loss_fn() with respect to tensors, via .backward (None where none arrived)."""
    for t in tensors:
        t.grad = None
    loss_fn().backward()
    return [None if t.grad is None else t.grad.clone() for t in tensors]


def assert_equal(got, ref):
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert (g is None) == (r is None)
        if r is not None:
            assert torch.equal(g, r), (g - r).abs().max()


def blocks(n=5, width=6, dropout=0.0):
    seeded()
    return [nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Dropout(dropout)).double() for _ in range(n)]


def compare(stages, strategy, x, tensors, loss=lambda out: out.square().sum(), seed=3):
    """Plain vs checkpointed gradients of the same stages and the same RNG seed."""
    def plain_loss():
        torch.manual_seed(seed)
        h = x
        for s in stages:
            h = s(h)
        return loss(h)
    model = wrap(stages, strategy)

    def ckpt_loss():
        torch.manual_seed(seed)
        return loss(model(x))
    assert_equal(grads(ckpt_loss, tensors), grads(plain_loss, tensors))
    return model


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_gradients_bitwise_equal_with_dropout_masks_replayed(strategy):
    stages = blocks(dropout=0.5)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    compare(stages, strategy, x, [x, *params_of(*stages)])


def planned(name: str, n: int):
    """A planner's schedule for n stages, from a profile with deterministic costs (a numpy MLP twin)."""
    profile = ckpt.Profile.from_chain(ckpt.MLP([6] * (n + 1)), 4096)   # activations outweigh parameters
    least, most = ckpt.min_feasible_budget(profile), ckpt.predict_memory(profile, "store_all").peak_bytes
    return {"revolve": lambda: ckpt.revolve(n, 2),
            "optimal, least budget": lambda: ckpt.optimal(profile, least),
            "optimal, halfway budget": lambda: ckpt.optimal(profile, (least + most) // 2),
            "chen_greedy": lambda: ckpt.chen_greedy(profile, (least + most) // 2)}[name]()


@pytest.mark.parametrize("name", ["revolve", "optimal, least budget", "optimal, halfway budget", "chen_greedy"])
def test_planner_schedules_replay_dropout_masks(name):
    # optimal re-runs a segment with Load(a), Free(a), ForwardTape(a+1): once, the re-run's first stage
    # was not taken for a replay start (only a forward right after a Load was), so its dropout masks
    # were drawn afresh and the gradients were silently wrong
    stages = blocks(n=6, dropout=0.5)
    schedule = planned(name, len(stages))
    assert schedule.forward_steps > len(stages)                 # it re-runs stages
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    compare(stages, lambda n: schedule, x, [x, *params_of(*stages)])


def test_a_rerun_after_load_and_free_starts_a_replay():
    schedule = ckpt.Schedule(2, [Save(0), Forward(1), ForwardTape(2), Loss(), Backward(2), Load(0), Free(0),
                                 ForwardTape(1), Backward(1)])
    assert schedule.replay_starts() == {1}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_kwargs_non_tensors_and_dict_activations(strategy):
    seeded()
    lin = nn.Linear(6, 6).double()
    stages = [lambda x: {"h": lin(x), "scale": 2, "tag": "a", "none": None},
              lambda d: {"h": d["h"].tanh() * d["scale"], "scale": d["scale"] + 1, "tag": d["tag"] + "b",
                         "none": d["none"]},
              lambda d: {"h": lin(d["h"]).relu(), "count": len(d["tag"]), "skip": d["h"].detach()}]
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    compare(stages, strategy, x, [x, *lin.parameters()], loss=lambda out: out["h"].sum() * out["count"])


Pair = namedtuple("Pair", "a b")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_namedtuples_and_partial_grads(strategy):
    seeded()
    lin1, lin2 = nn.Linear(6, 6).double(), nn.Linear(6, 6).double()
    lin2.requires_grad_(False)                                     # some parameters frozen
    stages = [lambda p: Pair(lin1(p.a), p.b.exp()), lambda p: Pair(lin2(p.a).tanh(), p.b * p.a),
              lambda p: Pair(p.a.sin(), p.b.cos())]
    a = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 6, dtype=torch.float64)                    # does not require grad
    compare(stages, strategy, Pair(a, b), [a, *lin1.parameters()], loss=lambda out: out.a.sum())  # b unused


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_parameter_used_inside_and_outside_the_chain_and_closures(strategy):
    seeded()
    w = torch.randn(6, 6, dtype=torch.float64, requires_grad=True)
    shared = nn.Linear(6, 6).double()                              # a module no stage registers
    stages = [lambda h: h @ w, lambda h: shared(h).tanh(), lambda h: (h * w.sum()).sin()]
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    compare(stages, strategy, x, [x, w, *shared.parameters()],
            loss=lambda out: (out @ w).square().sum() + shared.weight.sum())


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_nested_checkpointing(strategy):
    stages = blocks(6)
    inner = ckpt.CheckpointedSequential(stages[2:5], strategy="recompute")
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    for_plain = [stages[0], stages[1], *stages[2:5], stages[5]]
    torch.manual_seed(0)
    ref = grads(lambda: _chain(for_plain, x).square().sum(), [x, *params_of(*stages)])
    model = wrap([stages[0], stages[1], inner, stages[5]], strategy)
    got = grads(lambda: model(x).square().sum(), [x, *params_of(*stages)])
    assert_equal(got, ref)


def _chain(stages, x):
    for s in stages:
        x = s(x)
    return x


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_autocast_bfloat16_is_replayed(strategy):
    stages = [b.float() for b in blocks()]
    x = torch.randn(4, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain_out = _chain(stages, x)
    ref = grads(lambda: plain_out.float().square().sum(), [x, *params_of(*stages)])
    model = wrap(stages, strategy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    assert_equal(grads(lambda: out.float().square().sum(), [x, *params_of(*stages)]), ref)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_autograd_grad_and_detached_outputs(strategy):
    stages = blocks(4)
    stages.append(lambda h: (h, h.detach() * 3))                   # a detached output passes out
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    ps = params_of(*stages[:4])
    ref = torch.autograd.grad(_chain(stages, x)[0].sum(), [x, *ps])
    model = wrap(stages, strategy)
    out = model(x)
    assert not out[1].requires_grad
    got = torch.autograd.grad(out[0].sum(), [x, *ps])
    assert_equal(got, ref)
    assert all(p.grad is None for p in ps)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_in_place_stages(strategy):
    seeded()
    lin1, lin2 = nn.Linear(6, 6).double(), nn.Linear(6, 6).double()
    stages = [lin1, nn.ReLU(inplace=True), lin2, lambda h: h.mul_(2), nn.Tanh(), lin1, nn.ReLU(inplace=True)]
    for _ in range(2):                                              # the first step learns, the second fuses
        x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
        model = compare(stages, strategy, x, [x, *lin1.parameters(), *lin2.parameters()])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_in_place_on_the_input_mutates_it_once_as_plain_torch_does(strategy):
    seeded()
    lin = nn.Linear(6, 6).double()
    stages = [lambda h: h.mul_(2), lin, nn.Tanh(), lin]
    model = wrap(stages, strategy)
    for _ in range(2):
        x0 = torch.randn(4, 6, dtype=torch.float64)
        x_plain, x_ckpt = x0.clone(), x0.clone()
        ref = grads(lambda: _chain(stages, x_plain).square().sum(), list(lin.parameters()))
        got = grads(lambda: model(x_ckpt).square().sum(), list(lin.parameters()))
        assert_equal(got, ref)
        assert torch.equal(x_ckpt, x_plain) and torch.equal(x_ckpt, 2 * x0)


def test_in_place_block_is_fused_with_the_one_before():
    stages = [nn.Linear(6, 6).double(), nn.ReLU(inplace=True), nn.Linear(6, 6).double(), nn.Tanh()]
    model = ckpt.CheckpointedSequential(stages, "recompute")
    assert model.schedule.n == 4
    model(torch.randn(2, 6, dtype=torch.float64)).sum().backward()   # learns: ReLU(inplace) modifies x_1
    assert model.last_stats.forward_steps == model.schedule.forward_steps == ckpt.recompute(4).forward_steps
    model(torch.randn(2, 6, dtype=torch.float64)).sum().backward()
    assert model.schedule.n == 3                                     # ReLU(inplace) joined its Linear
    assert model.last_stats.forward_steps == ckpt.recompute(3).forward_steps


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_double_backward_gradient_penalty(strategy):
    stages = blocks(5)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    tensors = [x, *params_of(*stages)]

    def penalised(f):
        def loss():
            out = f(x)
            g, = torch.autograd.grad(out.square().sum(), x, create_graph=True)
            assert g.requires_grad
            return out.sum() + g.square().sum()
        return loss
    model = wrap(stages, strategy)
    assert_equal(grads(penalised(model), tensors), grads(penalised(lambda t: _chain(stages, t)), tensors))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_outputs_backwarded_separately_with_retain_graph(strategy):
    stages = blocks(4)
    stages.append(lambda h: (h.sin(), h.cos()))
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    tensors = [x, *params_of(*stages[:4])]

    def two_backwards(f):
        def loss():
            a, b = f(x)
            a.sum().backward(retain_graph=True)
            return b.square().sum()
        return loss
    assert_equal(grads(two_backwards(wrap(stages, strategy)), tensors),
                 grads(two_backwards(lambda t: _chain(stages, t)), tensors))


@pytest.mark.parametrize("strategy", ["store_all", "recompute", "sqrt_n", "test_graph_every_second"])
@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_forward_steps_are_exactly_the_schedules(strategy, n):
    model = ckpt.CheckpointedSequential(blocks(n), strategy=strategy)
    model(torch.randn(3, 6, dtype=torch.float64, requires_grad=True)).sum().backward()
    assert model.last_stats.forward_steps == model.schedule.forward_steps == ckpt.make_schedule(strategy, n).forward_steps
    assert model.last_stats.backward_steps == n


def test_forward_steps_count_every_stage_run():
    calls = []
    stages = [lambda h, k=k: (calls.append(k), h.tanh())[1] for k in range(6)]
    for strategy in ["store_all", "recompute", "sqrt_n"]:
        calls.clear()
        model = ckpt.CheckpointedSequential(stages, strategy=strategy, memory_check=False)  # no profiling call
        model(torch.randn(2, 3, requires_grad=True)).sum().backward()
        assert len(calls) == model.schedule.forward_steps == model.last_stats.forward_steps


@pytest.mark.parametrize("strategy", ["store_all", "recompute", "sqrt_n"])
def test_saved_bytes_are_what_the_schedule_keeps(strategy):
    depth, width, batch = 9, 16, 8
    seeded()
    stages = [nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth)]
    model = ckpt.CheckpointedSequential(stages, strategy=strategy, track_memory=True)
    model(torch.randn(batch, width)).square().mean().backward()
    chain = ckpt.MLP([width] * (depth + 1), activation="relu", output_activation="relu", dtype="float32")
    predicted = ckpt.predict_memory(chain, strategy, batch=batch)
    assert model.last_stats.peak_saved_bytes == predicted.peak_saved_bytes


def test_no_grad_prediction_keeps_no_tapes_and_runs_stages_once():
    calls = []
    stages = [lambda h, k=k: (calls.append(k), h.tanh())[1] for k in range(5)]
    model = ckpt.CheckpointedSequential(stages, strategy="recompute")
    with torch.no_grad():
        out = model(torch.randn(2, 3, requires_grad=True))
    assert calls == list(range(5)) and out.grad_fn is None


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_forward_never_backwarded_is_freed_without_the_garbage_collector(strategy):
    stages, outputs = blocks(6), []
    for block in stages:
        block.register_forward_hook(lambda m, i, o: outputs.append(weakref.ref(o)))
    model = wrap(stages, strategy)
    gc.collect()
    gc.disable()
    try:
        out = model(torch.randn(4, 6, dtype=torch.float64, requires_grad=True))
        del out
        alive = [r for r in outputs if r() is not None]
    finally:
        gc.enable()
    assert len(outputs) == 6 and alive == []


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "store_all"])    # store_all: no step
@pytest.mark.parametrize("backwarded", [True, False])
def test_a_step_is_freed_without_the_garbage_collector(strategy, backwarded):
    # A step holds its checkpoints and RNG states.  Two reference cycles (the step and its executor's
    # backend; the step and its stages' tapes) kept it alive until gc ran, so a later step's measured
    # peak depended on when gc ran (it freed the states mid-step).
    from ckpt.torch.backend import Step
    model = wrap(blocks(6), strategy)
    gc.collect()
    earlier = {id(o) for o in gc.get_objects() if type(o) is Step}     # other tests' steps
    gc.disable()
    try:
        out = model(torch.randn(4, 6, dtype=torch.float64, requires_grad=True))
        if backwarded:
            out.sum().backward()
        del out
        alive = [o for o in gc.get_objects() if type(o) is Step and id(o) not in earlier]
    finally:
        gc.enable()
    assert alive == []


class Fails(nn.Module):
    """Raises when ``failing``: a forward that fails mid-step (an out-of-memory error, a shape error)."""

    def __init__(self):
        super().__init__()
        self.failing = False

    def forward(self, x):
        if self.failing:
            raise RuntimeError("out of memory (simulated)")
        return x


@pytest.mark.parametrize("wrapper", ["sequential", "in_place"])
def test_a_step_whose_forward_raised_is_freed_at_once(wrapper):
    # A caller that catches an out-of-memory error and retries with a smaller batch needs the failed
    # step's checkpoints and RNG states gone; the runner kept the step until the next one started.
    from ckpt.torch.backend import Step
    stages = blocks(6)
    fails = Fails()
    stages.insert(4, fails)
    if wrapper == "sequential":
        model = ckpt.CheckpointedSequential(stages, strategy="sqrt_n")
    else:
        model = nn.Sequential(*stages)
        ckpt.checkpoint_modules(list(model), strategy="sqrt_n")
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    model(x).sum().backward()                                          # a whole step: nothing to learn
    gc.collect()
    earlier = {id(o) for o in gc.get_objects() if type(o) is Step}
    fails.failing = True
    gc.disable()
    try:
        try:
            model(x)
        except RuntimeError as error:
            assert "simulated" in str(error)
        alive = [o for o in gc.get_objects() if type(o) is Step and id(o) not in earlier]
    finally:
        gc.enable()
    assert alive == []
    fails.failing = False
    plain = nn.Sequential(*stages)
    assert_equal(grads(lambda: model(x).sum(), list(plain.parameters())),
                 grads(lambda: plain(x).sum(), list(plain.parameters())))


def test_batchnorm_statistics_update_once_per_step():
    """Documented difference from torch's checkpoint (pytorch#96136): re-runs do not update them."""
    seeded()
    stages = [nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(inplace=True), nn.Conv2d(3, 3, 3),
              nn.BatchNorm2d(3), nn.Flatten()]
    plain = nn.Sequential(*stages).double()
    seeded()
    copy = nn.Sequential(*[nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(inplace=True), nn.Conv2d(3, 3, 3),
                           nn.BatchNorm2d(3), nn.Flatten()]).double()
    model = ckpt.CheckpointedSequential(list(copy), strategy="recompute")
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    for _ in range(2):
        ref = grads(lambda: plain(x).square().sum(), list(plain.parameters()))
        got = grads(lambda: model(x).square().sum(), list(model.parameters()))
        assert_equal(got, ref)
    for b, b0 in zip(model.buffers(), plain.buffers()):
        assert torch.equal(b, b0)


def test_a_schedule_whose_first_part_is_not_one_sweep_is_refused():
    def twice(n):
        acts = [ckpt.Save(0), ckpt.Forward(1), ckpt.Load(0), *(ckpt.ForwardTape(i) for i in range(1, n + 1)),
                ckpt.Loss(), *(ckpt.Backward(i) for i in range(n, 0, -1)), ckpt.Free(0)]
        return ckpt.Schedule(n, acts)
    with pytest.raises(ckpt.ScheduleError, match="ckpt.torch: .*one sweep"):
        ckpt.CheckpointedSequential(blocks(3), strategy=twice)


# ------------------------------------------------------------------ checkpoint_modules

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.drop = nn.Linear(6, 6), nn.Dropout(0.3)

    def forward(self, hidden, mask=None, position=None, use_cache=False):
        h = self.drop(self.lin(hidden + position)).tanh() * mask
        return (h, None) if not use_cache else (h, h.detach())


class Model(nn.Module):
    """A hand-written model: its own loop, keyword arguments, glue between blocks."""

    def __init__(self, n=5):
        super().__init__()
        self.embed, self.h = nn.Linear(6, 6), nn.ModuleList(Block() for _ in range(n))
        self.head = nn.Linear(6, 1)

    def forward(self, x, mask):
        hidden = self.embed(x)
        position = torch.arange(6, dtype=x.dtype)
        for block in self.h:
            outputs = block(hidden, mask=mask, position=position, use_cache=False)
            hidden = outputs[0]
        return self.head(hidden).sum()


@pytest.mark.parametrize("strategy", ["store_all", "recompute", "sqrt_n", "test_graph_every_second"])
def test_checkpoint_modules_on_a_model_with_its_own_loop(strategy):
    seeded()
    model = Model().double()
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(4, 6, dtype=torch.float64)

    def loss():
        torch.manual_seed(5)
        return model(x, mask)
    tensors = [x, *model.parameters()]
    ref = grads(loss, tensors)
    with ckpt.checkpoint_modules(model.h, strategy=strategy) as handle:
        assert_equal(grads(loss, tensors), ref)
        assert handle.last_stats.forward_steps == handle.schedule.forward_steps
    assert "forward" not in vars(model.h[0])                           # undone
    handle = ckpt.checkpoint_modules(model.h, strategy=strategy)
    assert_equal(grads(loss, tensors), ref)
    assert ckpt.remove_checkpointing(model) == 5
    assert_equal(grads(loss, tensors), ref)


def test_checkpoint_modules_untraceable_input_is_a_forced_checkpoint():
    seeded()
    blocks_ = nn.ModuleList(nn.Linear(6, 6) for _ in range(4)).double()
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)

    def forward():
        h = x
        for b in blocks_:
            h = b(h).tanh() * 2 + 1                                      # glue: no identity link
        return h.square().sum()
    tensors = [x, *blocks_.parameters()]
    ref = grads(forward, tensors)
    with ckpt.checkpoint_modules(blocks_, strategy="recompute"):
        assert_equal(grads(forward, tensors), ref)


def test_checkpoint_modules_errors_say_what_to_do():
    seeded()
    blocks_ = nn.ModuleList(nn.Linear(6, 6) for _ in range(3)).double()
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    with ckpt.checkpoint_modules(blocks_, strategy="recompute"):
        with pytest.raises(ckpt.CheckpointError, match="block 3 was called where block 2"):
            blocks_[2](blocks_[0](x))
        out = blocks_[1](blocks_[0](x))                                   # block 3 never called
        with pytest.raises(ckpt.CheckpointError, match="never called"):
            out.sum().backward()
        with pytest.raises(ValueError, match="already checkpointed"):
            ckpt.checkpoint_modules(blocks_)


def test_a_stage_that_saves_differently_when_recomputed_is_an_error_not_a_wrong_gradient():
    calls = [0]

    def moody(h):
        calls[0] += 1
        return h.exp() if calls[0] == 1 else h.exp().sin().asin()     # more saves on the re-run
    model = ckpt.CheckpointedSequential([moody, nn.Linear(3, 3).double()], strategy="recompute",
                                        memory_check=False)          # the check's profiling call would be the first
    out = model(torch.randn(2, 3, dtype=torch.float64, requires_grad=True))
    with pytest.raises(ckpt.CheckpointError, match="stage 1 saved .* not deterministic"):
        out.sum().backward()
