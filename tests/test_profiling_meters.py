"""Meters on known allocations; the CUDA and NVML arithmetic on recorded statistics."""

import numpy as np
import pytest

from profiling.meters import (CudaMeter, Meters, NvmlMeter, RSSMeter, TorchCPUMeter, TracemallocMeter, meters_for,
                              primary_figure, read_status_bytes)

MIB = 2 ** 20


def test_tracemalloc_reads_a_64_mib_array():
    with TracemallocMeter() as m:
        a = np.ones(64 * MIB // 8)
        del a
    assert m.figures["tracemalloc_peak"] == pytest.approx(64 * MIB, rel=0.01)


def test_tracemalloc_excludes_what_existed_before():
    before = np.ones(16 * MIB // 8)
    with TracemallocMeter() as m:
        a = np.ones(MIB // 8)
    assert m.figures["tracemalloc_peak"] == pytest.approx(MIB, rel=0.05)
    del before, a


@pytest.mark.skipif(read_status_bytes("VmHWM") is None, reason="needs Linux /proc")
def test_rss_reads_a_64_mib_array():
    import time
    with RSSMeter() as m:
        a = np.ones(64 * MIB // 8)                  # ones: every page touched
        time.sleep(0.3)                             # the sampler (another process) must get a turn
        del a
    assert m.figures["rss_peak"] == pytest.approx(64 * MIB, rel=0.05)     # sampled: a page or two either way
    if "rss_hwm" in m.figures:
        assert m.figures["rss_hwm"] == pytest.approx(64 * MIB, rel=0.01)
        assert m.figures["rss_max"] == max(m.figures["rss_hwm"], m.figures["rss_peak"])


class RecordedCuda:
    """Stands in for torch.cuda: replays recorded statistics."""

    def __init__(self, allocated, peak, reserved, peak_reserved):
        self.values = dict(allocated=allocated, peak=peak, reserved=reserved, peak_reserved=peak_reserved)
        self.calls = []

    def synchronize(self, device=None):
        self.calls.append("sync")

    def reset_peak_memory_stats(self, device=None):
        self.calls.append("reset")

    def memory_allocated(self, device=None):
        return self.values["allocated"]

    def memory_reserved(self, device=None):
        return self.values["reserved"]

    def max_memory_allocated(self, device=None):
        return self.values["peak"]

    def max_memory_reserved(self, device=None):
        return self.values["peak_reserved"]


def test_cuda_meter_subtracts_the_entry_state_and_resets_peaks():
    stats = RecordedCuda(allocated=100 * MIB, peak=164 * MIB, reserved=128 * MIB, peak_reserved=200 * MIB)
    with CudaMeter(stats=stats) as m:
        pass
    assert m.figures == {"cuda_allocated": 64 * MIB, "cuda_reserved": 72 * MIB}
    assert stats.calls[:2] == ["sync", "reset"] and stats.calls[-1] == "sync"


def test_nvml_meter_reports_the_sampled_peak_above_entry():
    readings = iter([1000, 1500, 4000, 2000] + [2000] * 10_000)
    with NvmlMeter(used=lambda: next(readings), interval=0.0) as m:
        import time
        time.sleep(0.05)
    assert m.figures["nvml_used"] == 3000


def test_meters_merge_figures():
    with Meters([TracemallocMeter()]) as m:
        a = np.ones(MIB // 8)
    del a
    assert set(m.figures) == {"tracemalloc_peak"}


def test_meter_choice_and_primary_figure():
    assert [type(m) for m in meters_for("numpy", "cpu")] == [TracemallocMeter]
    assert [type(m) for m in meters_for("torch", "cpu")] == [TorchCPUMeter, RSSMeter]
    assert primary_figure("torch", "cpu", {"torch_cpu_peak": 3, "rss_peak": 1, "rss_max": 2}) == "torch_cpu_peak"
    assert primary_figure("torch", "cpu", {"rss_peak": 1}) == "rss_peak"
    assert primary_figure("torch", "cpu", {"rss_peak": 1, "rss_hwm": 2, "rss_max": 2}) == "rss_max"
    assert primary_figure("torch", "cuda", {}) == "cuda_allocated"


def _has_cuda():
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA GPU")
def test_cuda_meter_reads_a_64_mib_tensor():
    import torch
    with CudaMeter() as m:
        t = torch.ones(64 * MIB // 4, device="cuda")
        del t
    assert m.figures["cuda_allocated"] == pytest.approx(64 * MIB, rel=0.01)


def test_cuda_meters_are_chosen_without_touching_a_device():
    chosen = meters_for("torch", "cuda")
    assert isinstance(chosen[0], CudaMeter)
    assert all(isinstance(m, (CudaMeter, NvmlMeter)) for m in chosen)


@pytest.mark.skipif(_has_cuda(), reason="checks the no-GPU error")
def test_cuda_meter_without_a_gpu_says_so():
    pytest.importorskip("torch")
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        with CudaMeter():
            pass


# ----------------------------------------------------------------- torch's CPU allocator, no ckpt involved

def _plain_chain(depth, width, batch):
    """A plain torch Linear+ReLU chain (torch's default init), inputs and targets: nothing from ckpt."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers), torch.randn(batch, width), torch.randn(batch, width)


def _train_step(model, x, y):
    import torch
    torch.nn.functional.mse_loss(model(x), y).backward()


def test_torch_cpu_meter_reads_the_saved_activations_of_a_plain_forward():
    # Linear saves its input, ReLU its output (the same tensor as the next Linear's input),
    # the pre-activation z_i dies once ReLU has read it: after the forward, autograd holds
    # exactly one activation per stage (A bytes, the last one is the output); the peak is
    # the last stage with z_n still alive.
    depth, width, batch = 6, 64, 32
    model, x, y = _plain_chain(depth, width, batch)
    activation = batch * width * 4
    _train_step(model, x, y)                                 # warm: lazy init outside the region
    with TorchCPUMeter() as m:
        out = model(x)
    assert m.figures["torch_cpu_held"] == depth * activation
    assert m.figures["torch_cpu_peak"] == (depth + 1) * activation
    del out


def test_torch_cpu_meter_training_peak_grows_by_one_activation_per_stage():
    width, batch = 32, 256                   # activations ≫ gradients: the peak is at the backward's start
    activation, stage_params = batch * width * 4, (width * width + width) * 4
    peaks = {}
    for depth in (4, 8):
        model, x, y = _plain_chain(depth, width, batch)
        _train_step(model, x, y)
        for p in model.parameters():
            p.grad = None
        with TorchCPUMeter() as m:
            _train_step(model, x, y)
        peaks[depth] = m.figures["torch_cpu_peak"]
        assert m.figures["torch_cpu_held"] == depth * stage_params      # only the gradients remain
    assert peaks[8] - peaks[4] == 4 * activation                       # store_all: saved activations ∝ depth


def test_torch_cpu_meter_ignores_numpy_and_what_existed_before():
    torch = pytest.importorskip("torch")
    before = torch.ones(MIB // 4)
    with TorchCPUMeter() as m:
        a = np.ones(MIB // 8)
        t = torch.ones(MIB // 4)
        del t
    assert m.figures == {"torch_cpu_peak": MIB, "torch_cpu_held": 0}
    del before, a


RSS_CHECK = """
import json, time, torch
from profiling.meters import Meters, RSSMeter, TorchCPUMeter
torch.set_num_threads(1)
torch.manual_seed(0)
layers = []
for _ in range(16):
    layers += [torch.nn.Linear(1024, 1024), torch.nn.ReLU()]
model, x, y = torch.nn.Sequential(*layers), torch.randn(1024, 1024), torch.randn(1024, 1024)
torch.nn.functional.mse_loss(model(x), y).backward()
for p in model.parameters():
    p.grad = None
with Meters([TorchCPUMeter(), RSSMeter()]) as m:
    torch.nn.functional.mse_loss(model(x), y).backward()
    time.sleep(0.2)
print(json.dumps(m.figures))
"""


@pytest.mark.skipif(read_status_bytes("VmHWM") is None, reason="needs Linux /proc")
def test_torch_cpu_meter_agrees_with_rss_on_a_large_peak():
    # 16 stages × 4 MiB saved activations + 64 MiB of gradients: an ~130 MiB peak, in a fresh
    # process with glibc's mmap threshold fixed (as the runner runs every configuration)
    pytest.importorskip("torch")
    import json
    import subprocess
    import sys
    from profiling.runner import child_env
    out = subprocess.run([sys.executable, "-c", RSS_CHECK], capture_output=True, text=True, env=child_env(),
                         check=True).stdout
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["torch_cpu_peak"] >= 64 * MIB
    assert figures["rss_max"] == pytest.approx(figures["torch_cpu_peak"], rel=0.05)


def test_gradient_marks_say_which_gradients_the_peak_holds():
    # width ≫ batch: gradients dominate, and the peak is reached while stage 1's weight gradient
    # is computed, with the 7 later stages' gradients already stored by autograd
    from profiling.meters import mark_gradients
    depth, width = 8, 256
    model, x, y = _plain_chain(depth, width, batch=4)
    handles = mark_gradients(model.parameters())
    _train_step(model, x, y)
    for p in model.parameters():
        p.grad = None
    with TorchCPUMeter() as m:
        _train_step(model, x, y)
    stage_params = (width * width + width) * 4
    assert m.figures["torch_cpu_grad_at_peak"] == (depth - 1) * stage_params
    assert m.figures["torch_cpu_activation_peak"] == max(t.held - t.gradients for t in m.timeline)
    assert m.figures["torch_cpu_activation_peak"] < m.figures["torch_cpu_peak"] - (depth - 2) * stage_params
    assert m.figures["torch_cpu_held"] == depth * stage_params
    assert m.figures["torch_cpu_peak"] > depth * stage_params
    for h in handles:
        h.remove()
