"""Workloads: validation, the numpy optimizers against their formulas, torch's saved-bytes counter."""

import numpy as np
import pytest

from ckpt.optim import make_optimizer
from profiling.workloads import Config, NumpyWorkload, TorchWorkload, predicted, validate


def test_validate_names_the_allowed_values():
    with pytest.raises(ValueError, match="allowed: numpy, torch"):
        validate(Config(backend="jax"))
    with pytest.raises(ValueError, match="allowed: float32, float64"):
        validate(Config(dtype="float16"))


def test_adam_matches_its_formula():
    rng = np.random.default_rng(0)
    p0, g = rng.standard_normal(5), rng.standard_normal(5)
    p = p0.copy()
    opt = make_optimizer("adam", [{"W": p}], lr=0.1)         # the workload's optimizers are ckpt.optim's
    opt.step([{"W": g.copy()}])
    m, v = 0.1 * g, 0.001 * g * g
    expected = p0 - 0.1 * (m / 0.1) / (np.sqrt(v / 0.001) + 1e-8)
    assert p == pytest.approx(expected)
    assert opt.nbytes == 2 * p.nbytes


def test_momentum_and_sgd_match_their_formulas():
    p, g = np.ones(3), np.full(3, 2.0)
    make_optimizer("sgd", [{"W": p}], lr=0.5).step([{"W": g.copy()}])
    assert p == pytest.approx(0.0)
    p = np.ones(3)
    opt = make_optimizer("momentum", [{"W": p}], lr=0.5, mu=0.9)
    opt.step([{"W": g.copy()}])
    opt.step([{"W": g.copy()}])
    assert p == pytest.approx(1 - 0.5 * 2 - 0.5 * (0.9 * 2 + 2))


def test_numpy_workload_step_and_decomposition():
    w = NumpyWorkload(validate(Config(depth=4, width=32, batch=64, optimizer="momentum")))
    w.step()
    d = w.decomposition()
    assert d["optimizer_bytes"] == d["param_bytes"] == d["grad_bytes"]
    assert d["engine_peak_bytes"] + d["optimizer_bytes"] == predicted(w.c)["predicted_peak_bytes"]


@pytest.mark.parametrize("strategy", ["store_all", "sqrt_n", "recompute"])
def test_numpy_fused_workload_holds_one_stage_of_gradients_and_updates_like_the_unfused(strategy):
    config = dict(depth=6, width=32, batch=64, optimizer="adam", dtype="float64", strategy=strategy)
    unfused, fused = (NumpyWorkload(validate(Config(**config, fused=f))) for f in (False, True))
    for w in (unfused, fused):
        w.step()
    for a, b in zip(unfused.model.params, fused.model.params):
        assert all(np.array_equal(a[k], b[k]) for k in a)                       # bitwise the same update
    stage = 32 * 33 * 8
    d, u = fused.decomposition(), unfused.decomposition()
    assert d["grad_bytes"] == stage and u["grad_bytes"] == 6 * stage
    assert d["grad_at_peak_bytes"] <= stage and d["engine_peak_bytes"] <= u["engine_peak_bytes"]
    assert d["engine_peak_bytes"] + d["optimizer_bytes"] == predicted(fused.c)["predicted_peak_bytes"]
    assert predicted(fused.c)["predicted_peak_bytes"] < predicted(unfused.c)["predicted_peak_bytes"]


def test_fused_needs_training_and_an_optimizer():
    with pytest.raises(ValueError, match=r"fused=true .* needs mode='train' and an optimizer .* optimizer='none'"):
        validate(Config(fused=True, optimizer="none"))
    with pytest.raises(ValueError, match=r"got mode='predict'"):
        validate(Config(fused=True, mode="predict"))


def test_torch_fused_workload_updates_inside_backward_and_marks_the_release():
    torch = pytest.importorskip("torch")
    from profiling.meters import TorchCPUMeter
    figures = {}
    for fused in (False, True):
        torch.manual_seed(0)
        w = TorchWorkload(validate(Config(backend="torch", depth=4, width=32, batch=16, optimizer="momentum",
                                          fused=fused)))
        w.warm_up()
        with TorchCPUMeter() as meter:
            w.step()
        figures[fused] = meter.figures, [p.detach().clone() for p in w.params], w.optimizer_bytes
        assert all(p.grad is None for p in w.params) == fused          # fused: released in the backward
    (unfused, p_unfused, opt_unfused), (fused, p_fused, opt_fused) = figures[False], figures[True]
    assert opt_fused == opt_unfused == w.param_bytes                       # one momentum buffer per parameter
    for a, b in zip(p_unfused, p_fused):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    stage = 32 * 33 * 4
    assert unfused["torch_cpu_grad_at_peak"] > stage >= fused["torch_cpu_grad_at_peak"]


def test_torch_saved_counter_counts_each_storage_once():
    torch = pytest.importorskip("torch")
    from profiling.workloads import saved_tensor_counter
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8)
    hooks, totals = saved_tensor_counter()
    totals["exclude"] = {p.untyped_storage().data_ptr() for p in lin.parameters()} | {x.untyped_storage().data_ptr()}
    with hooks:
        h = torch.relu(lin(x))                   # relu saves its output; exp saves its output too: same size
        y = h * h                                # saves h twice: one storage
    assert totals["bytes"] == 4 * 8 * 4 * 1      # h only (Linear's input x is excluded)
    del y


@pytest.mark.parametrize("mode, optimizer", [("train", "adam"), ("train", "momentum"), ("predict", "none")])
def test_torch_workload_on_cpu(mode, optimizer):
    pytest.importorskip("torch")
    from profiling.workloads import build
    c = validate(Config(backend="torch", depth=3, width=16, batch=8, mode=mode, optimizer=optimizer,
                        strategy="store_all" if mode == "train" else "none"))
    w = build(c)
    w.warm_up()
    w.step()
    d = w.decomposition()
    slots = {"adam": 2, "momentum": 1, "none": 0}[optimizer]
    counters = 4 * 2 * 3 if optimizer == "adam" else 0      # Adam's 0-d float32 step per parameter (W and b × 3)
    assert d["optimizer_bytes"] == slots * d["param_bytes"] + counters
    if mode == "train":
        assert d["hooks_saved_bytes"] == 3 * 8 * 16 * 4      # each ReLU output once (the last is the loss input too)
        assert all(p.grad is not None for p in w.params)
        if w.impl == "ckpt-torch":                         # ckpt's executor ledger is recorded too
            assert d["engine_activation_bytes"] > 0 and d["saved_at_peak_bytes"] > 0
            assert "grad_at_peak_bytes" not in d     # its ledger never holds gradients (autograd does): marks count them


def test_torch_sqrt_n_uses_ckpt_or_is_refused():
    pytest.importorskip("torch")
    from profiling.workloads import build, checkpointed_sequential
    c = validate(Config(backend="torch", depth=4, width=16, batch=8, strategy="sqrt_n"))
    if checkpointed_sequential() is None:
        with pytest.raises(RuntimeError, match="CheckpointedSequential"):
            build(c)
        return
    w = build(c)
    w.step()
    d = w.decomposition()
    assert w.impl == "ckpt-torch" and d["hooks_saved_bytes"] is None and d["engine_saved_bytes"] > 0


def _torch_measured_minus_predicted(strategy, depth, batch=256, width=128):
    from profiling.meters import TorchCPUMeter
    from profiling.workloads import build, predicted
    c = validate(Config(backend="torch", depth=depth, width=width, batch=batch, strategy=strategy))
    w = build(c)
    w.warm_up()
    with TorchCPUMeter() as m:
        w.step()
    return m.figures["torch_cpu_peak"] - predicted(c)["predicted_peak_bytes"]


def test_torch_cpu_peak_is_the_torch_stage_prediction():
    # workloads.predicted describes torch rows by torch's own stages (profiling.torch_costs): exact bytes
    pytest.importorskip("torch")
    assert [_torch_measured_minus_predicted("store_all", d) for d in (16, 64)] == [0, 0]


def test_numpy_activation_peak_is_measured_per_action_and_matches_the_ledger():
    from profiling.workloads import build
    c = validate(Config(depth=16, width=64, batch=128, strategy="sqrt_n"))
    w = build(c)
    w.warm_up()
    w.step()
    traced = w.activation_peak()
    assert traced == pytest.approx(w.stats.peak_activation_bytes, rel=0.03)   # + Python objects tracemalloc sees
    assert build(validate(Config(depth=4, mode="predict"))).activation_peak() is None
