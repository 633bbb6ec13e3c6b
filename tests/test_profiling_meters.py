"""Meters on known allocations; the CUDA and NVML arithmetic on recorded statistics."""

import numpy as np
import pytest

from profiling.meters import (CudaMeter, Meters, NvmlMeter, RSSMeter, TracemallocMeter, meters_for,
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
    assert [type(m) for m in meters_for("torch", "cpu")] == [RSSMeter]
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
