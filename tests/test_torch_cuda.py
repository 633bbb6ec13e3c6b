"""CUDA: the symbolic memory model predicts the CUDA peak allocated of a checkpointed torch MLP."""

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import ckpt  # noqa: E402
from ckpt import CheckpointedSequential  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# (depth, width, batch, strategy): the GPU benchmark's MLPs (recompute only on a shallow one:
# n(n+1)/2 stage runs), large enough that allocator rounding is noise
CASES = [(d, w, b, s) for d, w, b in [(1024, 1024, 256), (128, 4096, 1024)] for s in ("store_all", "sqrt_n")]
CASES += [(64, 1024, 256, s) for s in ("store_all", "sqrt_n", "recompute")]


def relu_mlp(depth, width):
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True))
                           for _ in range(depth)]).cuda()


def cuda_peak(model, x, y) -> int:
    """Peak bytes allocated above the resting state (parameters, x, y) during one step."""
    for p in model.parameters():
        p.grad = None
    torch.cuda.synchronize()
    rest = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = model(x)
    ((out - y).square().sum() / (2 * x.shape[0])).backward()      # the numpy chain's MSE
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - rest


@pytest.mark.parametrize("depth,width,batch,strategy", CASES)
def test_predicted_peak_within_2_percent_of_cuda_peak_allocated(depth, width, batch, strategy):
    model = CheckpointedSequential(relu_mlp(depth, width), strategy=strategy)
    x = torch.randn(batch, width, device="cuda")
    y = torch.randn(batch, width, device="cuda")
    cuda_peak(model, x, y)                                             # warm-up: cuBLAS workspace
    measured = cuda_peak(model, x, y)
    chain = ckpt.MLP([width] * (depth + 1), activation="relu", output_activation="relu", dtype="float32")
    predicted = ckpt.predict_memory(chain, strategy, batch=batch).peak_bytes
    assert abs(measured - predicted) <= 0.02 * measured, (measured, predicted)
