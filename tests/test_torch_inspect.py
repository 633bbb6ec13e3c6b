"""Saved-activation inspection and the torch backend's byte ledger, checked against known saves."""

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import ckpt  # noqa: E402
from ckpt import CheckpointedSequential  # noqa: E402

from .torch_models import image_batch, mobilenet_stages, mobilenet_v2, resnet18, resnet_stages  # noqa: E402


def relu_mlp(depth, width, dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True))
                           for _ in range(depth)]).to(dtype)


def test_linear_relu_stage_saves_its_input_and_output():
    b, w = 4, 8
    report = ckpt.saved_residuals(relu_mlp(3, w), torch.randn(b, w))
    act = b * w * 4
    assert [r.tape_bytes for r in report] == [2 * act] * 3
    assert [r.new_bytes for r in report] == [2 * act, act, act]       # x_{i-1} is stage i-1's output
    reasons = [t.reason for t in report[1].tensors]
    assert reasons == ["input x_1 (AddmmBackward0.mat1)", "output x_2 (ReluBackward0.result)"]
    assert ckpt.saved_bytes(relu_mlp(3, w), torch.randn(b, w)) == [2 * act] * 3


def test_inspection_leaves_no_graph_for_the_garbage_collector():
    import gc
    import weakref
    model, outputs = relu_mlp(3, 8), []
    for block in model:
        block.register_forward_hook(lambda m, i, o: outputs.append(weakref.ref(o)))
    gc.collect()
    gc.disable()
    try:
        ckpt.saved_residuals(model, torch.randn(4, 8))
        alive = [r for r in outputs if r() is not None]
    finally:
        gc.enable()
    assert len(outputs) == 3 and alive == []


def test_parameters_and_buffers_are_not_counted_and_model_is_left_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, 4)
    rng = torch.get_rng_state()
    report = ckpt.saved_residuals(model, x)
    for r in report:
        for t in r.tensors:
            assert t.shape != (4, 4)                                   # no weight
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k                            # running stats restored
    assert torch.equal(torch.get_rng_state(), rng)


def test_views_share_one_storage():
    class ViewTwice(nn.Module):
        def forward(self, x):
            y = x.exp()                                                # saves its result y
            return y.view(-1) * y.view(-1).sin()                       # views of y, saved again
    report = ckpt.saved_residuals([ViewTwice()], torch.randn(3, 4, requires_grad=True))
    assert sum(t.nbytes for t in report[0].tensors) == report[0].tape_bytes
    assert report[0].tape_bytes == 2 * 3 * 4 * 4                       # y (and its views) once, sin(y)


def test_print_saved_residuals(capsys):
    ckpt.print_saved_residuals(relu_mlp(2, 4), torch.randn(2, 4))
    out = capsys.readouterr().out
    assert "stage 1" in out and "stage 2" in out and "total:" in out


@pytest.mark.parametrize("strategy", ["store_all", "sqrt_n", "recompute"])
def test_ledger_saved_bytes_equal_symbolic_prediction_on_relu_mlp(strategy):
    """The executor counts torch's real saves; on Linear+ReLU they are the numpy model's tapes."""
    depth, width, batch = 9, 16, 8
    model = CheckpointedSequential(relu_mlp(depth, width), strategy=strategy, track_memory=True)
    model(torch.randn(batch, width)).square().mean().backward()
    chain = ckpt.MLP([width] * (depth + 1), activation="relu", output_activation="relu", dtype="float32")
    predicted = ckpt.predict_memory(chain, strategy, batch=batch)
    assert model.last_stats.peak_saved_bytes == predicted.peak_saved_bytes
    assert model.last_stats.forward_steps == predicted.forward_steps


def test_store_all_saves_what_plain_torch_saves_on_a_transformer():
    torch.manual_seed(0)
    blocks = [nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True) for _ in range(3)]
    x = torch.randn(2, 5, 8)
    plain = sum(r.new_bytes for r in ckpt.saved_residuals(blocks, x))
    model = CheckpointedSequential(blocks, strategy="store_all", track_memory=True)
    model(x).sum().backward()
    first_input = 2 * 5 * 8 * 4
    saved_input = any(t.reason.startswith("input x_0 ") for t in ckpt.saved_residuals(blocks, x)[0].tensors)
    assert model.last_stats.peak_saved_bytes == plain - (first_input if saved_input else 0)


# ------------------------------------------------------------------ in-place stages, agreement with measure

def mlp_inplace():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(inplace=True), nn.Linear(32, 32), nn.ReLU(inplace=True),
                         nn.Linear(32, 4)), torch.randn(8, 16)


def resnet():
    """torchvision's ResNet-18 structure: in-place ReLU modules, BasicBlock's ``out += identity``."""
    return resnet_stages(resnet18()), image_batch(size=16, requires_grad=False)


def mobilenet():
    """torchvision's MobileNetV2 structure: in-place ReLU6, inverted residuals."""
    return mobilenet_stages(mobilenet_v2()), image_batch(size=16, requires_grad=False)


class SigmoidAsPairs(nn.Module):
    """Returns a view of what it saves (sigmoid's result)."""

    def forward(self, x):
        return x.sigmoid().unflatten(1, (-1, 2))


def view_stage():
    return nn.Sequential(nn.Linear(8, 8), SigmoidAsPairs(), nn.Flatten(), nn.Linear(8, 2)), torch.randn(4, 8)


def batchnorm_mlp():
    return nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(inplace=True), nn.Linear(8, 2)), \
        torch.randn(4, 8)


@pytest.mark.parametrize("build", [mlp_inplace, resnet, mobilenet, view_stage, batchnorm_mlp])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_report_agrees_with_measure_stage_by_stage(build, requires_grad):
    from ckpt.torch.measure import LeftAsItWas, chain_bytes
    torch.manual_seed(0)
    model, x = build()
    x.requires_grad_(requires_grad)
    with LeftAsItWas(list(model), []):
        costs = [cost for _, cost, _ in chain_bytes(list(model), x)]
    report = ckpt.saved_residuals(model, x)
    assert len(report) == len(costs) and [r.tape_bytes for r in report] == [c.tape_bytes for c in costs]
    for i, (r, cost) in enumerate(zip(report, costs), start=1):
        reasons = [t.reason for t in r.tensors]
        assert any(s.startswith(f"input x_{i - 1} ") for s in reasons) == cost.tape_keeps_input, (i, reasons)
        assert any(s.startswith(f"output x_{i}") for s in reasons) == cost.tape_keeps_output, (i, reasons)
    assert sum(r.new_bytes for r in report) == plain_forward_saved_bytes(list(model), x)


def plain_forward_saved_bytes(stages, x) -> int:
    """What one plain forward of the whole chain saves for backward, each storage once (x_0 as given)."""
    from ckpt.torch.hooks import SavedRecorder
    from ckpt.torch.measure import LeftAsItWas, resident_keys
    recorder = SavedRecorder(resident_keys(stages))
    with LeftAsItWas(stages, []), torch.enable_grad(), recorder.hooks():
        for stage in stages:
            x = stage(x)
    return recorder.bytes


def test_in_place_relu_saves_its_output_which_is_its_input_modified():
    b, w = 4, 8
    act = b * w * 4
    model = [nn.Linear(w, w), nn.ReLU(inplace=True), nn.Linear(w, w)]
    report = ckpt.saved_residuals(model, torch.randn(b, w))
    assert [[(t.reason, t.nbytes, t.new) for t in r.tensors] for r in report] == [
        [("input x_0 (AddmmBackward0.mat1)", act, True)],
        [("output x_2, x_1 modified in place (ReluBackward0.result)", act, True)],
        [("input x_2 (AddmmBackward0.mat1)", act, False)]]            # the ReLU's storage, kept once
    assert [r.new_bytes for r in report] == [act, act, 0]
    (only,) = ckpt.saved_residuals([lambda x: x.relu_()], torch.randn(b, w, requires_grad=True))
    assert [t.reason for t in only.tensors] == ["output x_1, x_0 modified in place (ReluBackward0.result)"]


def test_an_output_that_is_a_view_of_the_saved_input():
    (report,) = ckpt.saved_residuals([lambda x: (x[:, :2], x.sin())], torch.randn(3, 4, requires_grad=True))
    assert [t.reason for t in report.tensors] == ["output x_1[0], a view of x_0 (SinBackward0.self)"]


def test_caller_input_and_buffers_are_left_as_they_were():
    torch.manual_seed(0)
    model = nn.Sequential(nn.ReLU(inplace=True), nn.BatchNorm1d(8), nn.ReLU(inplace=True), nn.Linear(8, 2))
    x = torch.randn(4, 8, requires_grad=True)
    x_before, state = x.detach().clone(), {k: v.clone() for k, v in model.state_dict().items()}
    report = ckpt.saved_residuals(model, x)
    assert report[0].tensors[0].reason.startswith("output x_1, x_0 modified in place")
    assert torch.equal(x, x_before) and x._version == 0 and x.grad is None and x.is_leaf
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k                             # running stats and their count
    assert all(p.grad is None for p in model.parameters())
    y = torch.randn(4, 8)
    y_before = y.clone()
    ckpt.saved_residuals([nn.ReLU(inplace=True)], y)
    assert torch.equal(y, y_before) and y._version == 0


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("model, error, message", [
    (nn.Sequential(), ValueError, r"ckpt.saved_residuals: the model has no stages \(an empty Sequential\)"),
    ([], ValueError, r"no stages \(an empty list\); give at least one module or callable"),
    ([nn.ReLU(), "relu"], TypeError, r"stage 2 \(1\) is a str, not callable"),
    (42, TypeError, r"expected an nn.Sequential, a list of stages or a module, got int"),
])
def test_a_model_that_is_no_chain_of_stages_is_refused(model, error, message):
    with pytest.raises(error, match=message):
        ckpt.saved_residuals(model, torch.randn(2, 2))


def test_inputs_that_hold_no_tensor_are_refused():
    import numpy as np
    model = [nn.Linear(2, 2), lambda x: None, nn.Linear(2, 2)]
    with pytest.raises(TypeError, match=r"expected the model's input x_0 \(saved_residuals\(model, x\)\), got none"):
        ckpt.saved_residuals(model)
    with pytest.raises(TypeError, match=r"x_0 \(the model's input\) holds no torch.Tensor, got ndarray; it must "
                                        r"be a tensor or a tuple/list/dict of them \(convert with torch.as_tensor\)"):
        ckpt.saved_residuals(model, np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(TypeError, match=r"x_1 \(stage 1's output\) holds no torch.Tensor, got NoneType"):
        ckpt.saved_residuals([lambda x: None, nn.Linear(2, 2)], torch.randn(2, 2))


def test_an_error_inside_a_stage_names_the_stage_and_what_it_took():
    with pytest.raises(RuntimeError) as raised:
        ckpt.saved_residuals([nn.Linear(8, 4), nn.Linear(8, 2)], torch.randn(3, 8))
    assert "ckpt.saved_residuals: raised by stage 2 (1: Linear) on x_1 = float32[3, 4]" in raised.value.__notes__
