"""The optimizer step fused into the backward: Update(i) after Backward(i), on numpy, symbolic and torch."""

import copy
import tracemalloc

import numpy as np
import pytest

import ckpt
from ckpt import Backward, ForwardTape, Loss, Schedule, ScheduleError, Update
from ckpt.optim import SGD, Adam, Momentum

OPTIMIZERS = [(SGD, dict(lr=0.1)), (Momentum, dict(lr=0.05, mu=0.9)), (Adam, dict(lr=0.01))]
STRATEGIES = ["store_all", "sqrt_n", "recompute"]


def problem(sizes=(6, 10, 10, 10, 4), l2=0.0, dtype="float64"):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, sizes[0])).astype(dtype)
    y = rng.standard_normal((5, sizes[-1])).astype(dtype)
    return ckpt.MLP(list(sizes), activation="tanh", l2=l2, dtype=dtype), x, y


def params_of(model):
    return [p.copy() for d in model.params for p in d.values()]


# ------------------------------------------------------------------ schedules

def test_fuse_updates_puts_each_update_right_after_its_backward():
    s = ckpt.make_schedule("sqrt_n", 4, fused=True)
    assert s.is_fused and s.count(Update) == 4
    for k, a in enumerate(s.actions):
        if isinstance(a, Backward):
            assert s.actions[k + 1] == Update(a.i)
    assert ckpt.fuse_updates(s) is s
    assert ckpt.fuse_updates(ckpt.store_all(3)).actions[-2:] == (Backward(1), Update(1))


@pytest.mark.parametrize("actions,match", [
    ([ForwardTape(1), Update(1), Loss(), Backward(1)], r"#1 Update\(i=1\): needs stage 1's gradients, but Backward\(1\)"),
    ([ForwardTape(1), Loss(), Backward(1), Update(1), Update(1)], "stage 1 was already updated"),
    ([ForwardTape(1), ForwardTape(2), Loss(), Backward(2), Update(2), Backward(1)],
     r"stages \[1\] are never updated \(add Update\(i\) after Backward\(i\), or use fuse_updates\)"),
    ([ForwardTape(1), ForwardTape(2), Loss(), Backward(2), Update(2), Update(3)], r"stage index must be an int in 1..2"),
])
def test_update_rules(actions, match):
    n = max(a.i for a in actions if hasattr(a, "i"))
    with pytest.raises(ScheduleError, match=match):
        Schedule(min(n, 2), actions).validate()


def test_no_forward_of_an_updated_stage():
    s = Schedule(2, [ckpt.Save(0), ckpt.Forward(1), ForwardTape(2), Loss(), Backward(2), Update(2),
                     ckpt.Load(0), ForwardTape(1), ckpt.Forward(2)])
    with pytest.raises(ScheduleError, match=r"#8 Forward\(i=2\): stage 2's parameters were already updated"):
        s.validate()


def test_fuse_updates_refuses_prediction_schedules():
    with pytest.raises(ScheduleError, match="fuse_updates needs a training schedule"):
        ckpt.fuse_updates(ckpt.forward_only(3))


def test_a_fused_schedule_needs_an_optimizer():
    model, x, y = problem()
    with pytest.raises(ValueError, match=r"fused schedule \(Update actions\) needs an optimizer"):
        ckpt.execute(ckpt.make_schedule("store_all", 4, fused=True), ckpt.NumpyBackend(model), x, y)

    class NoUpdates:                                                # e.g. a backend without update()
        def check_inputs(self, n, x, y):
            pass
    with pytest.raises(TypeError, match="NoUpdates cannot apply Update actions"):
        ckpt.execute(ckpt.make_schedule("store_all", 4, fused=True), NoUpdates(), x, y)


# ------------------------------------------------------------------ numpy: fused == unfused, bitwise

@pytest.mark.parametrize("opt,hyper", OPTIMIZERS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_fused_updates_are_bitwise_the_unfused_step(opt, hyper, strategy):
    fused_model, x, y = problem(l2=0.01)
    plain_model = copy.deepcopy(fused_model)
    fused_opt, plain_opt = opt(fused_model.params, **hyper), opt(plain_model.params, **hyper)
    for _ in range(3):
        r = ckpt.train_step(fused_model, x, y, fused_opt, strategy, fused=True)
        grads = ckpt.gradients(plain_model, x, y, strategy).grads        # the textbook step:
        plain_opt.step(grads)                                             # all gradients, then the update
        assert r.grads == [None] * 4
    for a, b in zip(params_of(fused_model), params_of(plain_model)):
        assert np.array_equal(a, b)
    assert not np.array_equal(params_of(fused_model)[0], params_of(problem()[0])[0])     # it did move


@pytest.mark.parametrize("opt,hyper", OPTIMIZERS)
def test_numpy_optimizers_equal_torch_optim(opt, hyper):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    p = [{"W": rng.standard_normal((3, 4))}]
    mine = opt(p, **hyper)
    tp = torch.tensor(p[0]["W"].copy(), requires_grad=True)
    kwargs = {"lr": hyper["lr"]} | ({"momentum": hyper["mu"]} if "mu" in hyper else {})
    theirs = (torch.optim.Adam if opt is Adam else torch.optim.SGD)([tp], **kwargs)
    for _ in range(5):
        g = rng.standard_normal((3, 4))
        tp.grad = torch.tensor(g.copy())
        theirs.step()
        mine.step([{"W": g}])
    assert np.allclose(p[0]["W"], tp.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_optimizer_refuses_bad_input():
    model = problem()[0]
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got -1"):
        SGD(model.params, lr=-1)
    with pytest.raises(TypeError, match="needs model.params"):
        Adam(model)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'; allowed: sgd, momentum, adam"):
        ckpt.optim.make_optimizer("rmsprop", model.params)
    with pytest.raises(ValueError, match="built on another model's parameters"):
        ckpt.train_step(model, *problem()[1:], SGD(problem()[0].params))
    opt = SGD(model.params)
    with pytest.raises(ValueError, match="step needs gradients for all 4 stages"):
        opt.step([None] * 4)


# ------------------------------------------------------------------ memory: predicted == measured

def measured_peak(model, x, y, opt, strategy, fused):
    schedule = ckpt.make_schedule(strategy, len(model), fused=fused)
    backend = ckpt.NumpyBackend(model, optimizer=opt)
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    ckpt.execute(schedule, backend, x, y)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_peak_measured_within_5_percent_of_prediction(dtype):
    depth, width, batch = 16, 128, 64
    model = ckpt.MLP([width] * (depth + 1), dtype=dtype)
    rng = np.random.default_rng(0)
    x, y = (rng.standard_normal((batch, width)).astype(dtype) for _ in range(2))
    opt = SGD(model.params, lr=1e-6)
    ckpt.train_step(model, x[:1], y[:1], opt, fused=True)        # warm numpy's one-time caches
    peaks = {}
    for strategy in STRATEGIES:
        predicted = ckpt.predict_memory(model, strategy, batch=batch, fused=True).peak_bytes
        measured = measured_peak(model, x, y, opt, strategy, fused=True)
        assert abs(measured - predicted) <= 0.05 * predicted, (strategy, measured, predicted)
        peaks[strategy] = measured
    assert peaks["store_all"] > peaks["sqrt_n"] > peaks["recompute"]    # activation memory shows once fused


def test_fused_prediction_holds_one_stage_of_gradients_at_most():
    model = ckpt.MLP([256] * 65, dtype="float32")
    one_stage = (256 * 256 + 256) * 4
    for strategy in STRATEGIES:
        plain = ckpt.predict_memory(model, strategy, batch=128)
        fused = ckpt.predict_memory(model, strategy, batch=128, fused=True)
        assert fused.peak_breakdown["gradients"] <= one_stage
        assert plain.peak_breakdown["gradients"] >= 63 * one_stage      # unfused: nearly all of them
        assert fused.forward_steps == plain.forward_steps
        assert fused.peak_activation_bytes == plain.peak_activation_bytes


# ------------------------------------------------------------------ torch: fuse_optimizer

def torch_mlp(torch, width=12, depth=4):
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Tanh())
                                 for _ in range(depth)]).double()


@pytest.mark.parametrize("name,hyper", [("SGD", dict(lr=0.1)), ("SGD", dict(lr=0.05, momentum=0.9)),
                                        ("Adam", dict(lr=0.01)), ("AdamW", dict(lr=0.01, weight_decay=0.1))])
def test_torch_fused_equals_torch_optim(name, hyper):
    torch = pytest.importorskip("torch")
    from ckpt.torch.fused import fuse_optimizer
    cls = getattr(torch.optim, name)
    fused_model = torch_mlp(torch)
    plain_model = copy.deepcopy(fused_model)
    handle = fuse_optimizer(fused_model, cls, **hyper)
    plain = cls(plain_model.parameters(), **hyper)
    x = torch.randn(6, 12, dtype=torch.float64)
    for _ in range(4):
        fused_model(x).pow(2).mean().backward()
        assert all(p.grad is None for p in fused_model.parameters())       # released at once
        plain.zero_grad()
        plain_model(x).pow(2).mean().backward()
        plain.step()
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    handle.remove()
    before = [p.detach().clone() for p in fused_model.parameters()]
    fused_model(x).sum().backward()
    assert all(p.grad is not None for p in fused_model.parameters())       # unhooked: plain autograd again
    assert all(torch.equal(a, b) for a, b in zip(before, fused_model.parameters()))


def test_torch_fused_works_through_the_checkpoint_wrapper():
    torch = pytest.importorskip("torch")
    from ckpt.torch.fused import fuse_optimizer
    plain_model = torch_mlp(torch)
    wrapped_blocks = copy.deepcopy(list(plain_model))
    wrapped = ckpt.CheckpointedSequential(wrapped_blocks, strategy="sqrt_n")
    x = torch.randn(6, 12, dtype=torch.float64)
    with fuse_optimizer(torch.nn.ModuleList(wrapped_blocks), torch.optim.Adam, lr=0.01):
        plain = torch.optim.Adam(plain_model.parameters(), lr=0.01)
        for _ in range(3):
            wrapped(x).pow(2).mean().backward()
            plain.zero_grad()
            plain_model(x).pow(2).mean().backward()
            plain.step()
    for a, b in zip(torch.nn.ModuleList(wrapped_blocks).parameters(), plain_model.parameters()):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_torch_fused_refuses_bad_input():
    torch = pytest.importorskip("torch")
    from ckpt.torch.fused import fuse_optimizer
    model = torch_mlp(torch)
    with pytest.raises(TypeError, match="optimizer_class must be a torch.optim.Optimizer subclass"):
        fuse_optimizer(model, "adam")
    handle = fuse_optimizer(model, torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match=r"already have a fused optimizer \(it would step twice"):
        fuse_optimizer(model, torch.optim.SGD, lr=0.1)
    handle.remove()
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter requires grad"):
        fuse_optimizer(frozen, torch.optim.SGD, lr=0.1)
    model(torch.randn(2, 12, dtype=torch.float64)).sum().backward()
    with pytest.raises(ValueError, match="already hold a .grad"):
        fuse_optimizer(model, torch.optim.SGD, lr=0.1)
