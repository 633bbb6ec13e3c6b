"""Saved-activation inspection and the torch backend's byte ledger, checked against known saves."""

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import ckpt  # noqa: E402
from ckpt import CheckpointedSequential  # noqa: E402


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
    assert "input x_1" in reasons and any("Relu" in r for r in reasons)
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
    saved_input = any(t.reason == "input x_0" for t in ckpt.saved_residuals(blocks, x)[0].tensors)
    assert model.last_stats.peak_saved_bytes == plain - (first_input if saved_input else 0)
