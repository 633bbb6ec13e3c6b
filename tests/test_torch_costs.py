"""The torch prediction (profiling.torch_costs) against torch's CPU allocator (TorchCPUMeter).

Each configuration is measured in this process (warm-up step first, as the runner does);
the previous workload is dropped and collected before the next one is built, so no free
of an earlier allocation falls in a measured region.
"""

import gc

import pytest

torch = pytest.importorskip("torch")

from profiling import torch_costs  # noqa: E402
from profiling.config import Config  # noqa: E402
from profiling.meters import TorchCPUMeter  # noqa: E402
from profiling.workloads import build, he_linear  # noqa: E402

SMALL = dict(backend="torch", width=64, batch=64)
TOLERANCE = 0.05


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def measured_step(c: Config) -> dict:
    """The torch CPU meter's figures over one step of c's workload (after its warm-up)."""
    gc.collect()
    w = build(c)
    w.warm_up()
    with TorchCPUMeter() as meter:
        w.step()
    figures = {**meter.figures, "optimizer_bytes": w.optimizer_bytes}
    del w
    gc.collect()
    return figures


@pytest.mark.parametrize("strategy", ["store_all", "sqrt_n", "recompute"])
@pytest.mark.parametrize("depth", [1, 3, 8])
def test_training_peak_matches_the_prediction(strategy, depth):
    c = Config(depth=depth, strategy=strategy, **SMALL)
    peak = measured_step(c)["torch_cpu_peak"]
    predicted = torch_costs.predicted(c)["predicted_peak_bytes"]
    assert peak == pytest.approx(predicted, rel=TOLERANCE)


@pytest.mark.parametrize("depth", [1, 8])
def test_prediction_peak_matches_the_prediction(depth):
    c = Config(depth=depth, mode="predict", **SMALL)
    assert measured_step(c)["torch_cpu_peak"] == torch_costs.predicted(c)["predicted_peak_bytes"]


@pytest.mark.parametrize("optimizer", ["none", "momentum", "adam"])
@pytest.mark.parametrize("strategy", ["store_all", "recompute"])
def test_optimizer_state_and_update_are_predicted(optimizer, strategy):
    c = Config(depth=4, strategy=strategy, optimizer=optimizer, **SMALL)
    figures = measured_step(c)
    sizes = torch_costs.parameter_sizes(c.depth, c.width, c.dtype)
    assert figures["optimizer_bytes"] == torch_costs.optimizer_state_bytes(optimizer, sizes)
    assert figures["torch_cpu_peak"] == pytest.approx(torch_costs.predicted(c)["predicted_peak_bytes"], rel=TOLERANCE)


def test_activation_peak_excludes_gradients_and_optimizer_state():
    """With the primed optimizer's zero gradients marked, activation peak − state is the store_all activations."""
    plain = measured_step(Config(depth=4, optimizer="none", **SMALL))
    adam = measured_step(Config(depth=4, optimizer="adam", **SMALL))
    assert adam["torch_cpu_activation_peak"] - adam["optimizer_bytes"] == plain["torch_cpu_activation_peak"]


def plain_step(model, x, y):
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    del loss


@pytest.mark.parametrize("depth", [1, 5])
def test_plain_torch_training_matches_the_store_all_prediction(depth):
    """No ckpt involved: an nn.Sequential stepped by autograd alone, measured by torch's allocator."""
    width, batch = SMALL["width"], SMALL["batch"]
    model = torch.nn.Sequential(*[m for _ in range(depth) for m in (he_linear(torch, width), torch.nn.ReLU())])
    x, y = torch.randn(batch, width), torch.randn(batch, width)
    plain_step(model, x, y)
    model.zero_grad(set_to_none=True)
    with TorchCPUMeter() as meter:
        plain_step(model, x, y)
    c = Config(depth=depth, strategy="store_all", optimizer="none", **SMALL)
    assert meter.figures["torch_cpu_peak"] == torch_costs.predicted(c)["predicted_peak_bytes"]


def test_plain_torch_prediction_is_two_activations():
    width, batch = SMALL["width"], SMALL["batch"]
    model = torch.nn.Sequential(he_linear(torch, width), torch.nn.ReLU(), he_linear(torch, width), torch.nn.ReLU())
    x = torch.randn(batch, width)
    with torch.no_grad():
        model(x)
        with TorchCPUMeter() as meter:
            out = model(x)
    del out
    assert meter.figures["torch_cpu_peak"] == 2 * torch_costs.activation_bytes(batch, width, "float32")


def test_profile_has_two_stages_per_layer_and_keeps_the_loss():
    p = torch_costs.mlp_profile(depth=3, width=8, batch=4)
    a = 4 * 8 * 4
    assert len(p) == 6
    assert p.loss_bytes == a + 4
    assert [s.grad_bytes for s in p.stages] == [8 * 8 * 4 + 8 * 4, 0] * 3


def test_the_loss_value_is_held_from_the_loss_to_the_steps_end():
    """``Profile.loss_bytes``: the memory model holds the loss value with δ until the step ends."""
    import dataclasses

    import ckpt
    base = torch_costs.mlp_profile(depth=4, width=16, batch=8)
    without = dataclasses.replace(base, loss_bytes=0)
    held = base.loss_bytes
    for strategy in ("store_all", "recompute"):
        with_loss, no_loss = (ckpt.predict_memory(p, strategy) for p in (base, without))
        assert with_loss.peak_bytes == no_loss.peak_bytes + held          # every peak here is after Loss()
        assert with_loss.peak_breakdown["delta"] == no_loss.peak_breakdown["delta"] + held
    with pytest.raises(ValueError, match="loss_bytes must be an int ≥ 0"):
        dataclasses.replace(base, loss_bytes=-1)
