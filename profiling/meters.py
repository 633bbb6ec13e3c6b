"""Meters: context managers that report the peak bytes a region of code added.

Each meter answers a different question; a row records every figure that applies,
named ``<meter>_<figure>`` so a reader always knows which instrument produced it.

==================  =====================================================  ===========================
meter               what it sees                                           figures (bytes above entry)
==================  =====================================================  ===========================
``tracemalloc``     Python and numpy allocations (exact; blind to torch)    ``peak``
``torch_cpu``       torch's CPU allocator, from the profiler's memory       ``peak``, ``held`` (at exit),
                    events (exact; blind to numpy and to MKL's workspace)   ``activation_peak``
``rss``             process resident set, sampled by memory_profiler's      ``peak`` (sampled),
                    ``MemTimer`` and the kernel's high-water ``VmHWM``       ``hwm`` (kernel), ``max``
``cuda``            torch's CUDA caching allocator (reset per region)      ``allocated``, ``reserved``
``nvml``            the whole device as the driver sees it (sampled)        ``used``
==================  =====================================================  ===========================

RSS is only meaningful in a fresh process whose glibc returns large blocks to the
system (``MALLOC_MMAP_THRESHOLD_`` fixed, see ``profiling.runner``); otherwise the heap
keeps its high-water mark and the figure overstates by up to 6×.  The RSS meter also
trims glibc's free heap before its baseline (``malloc_trim``): a region that reuses
freed-but-resident pages would otherwise under-read (measured: 40 of 80 MiB missed by a
512-stage torch forward).

Both RSS figures can under-read, differently: the sampler misses peaks shorter than
its interval, and the kernel counts resident pages per CPU in batches (up to ~128 KiB
per CPU not yet in the total when the high-water mark is taken), so a sub-MiB peak can
read far low (measured: a 256 KiB peak read as 16 KiB).  ``rss_max``, the larger of the
two, was the torch CPU row's figure before ``torch_cpu`` existed; it stays as the cross-check.

``torch_cpu`` is the CPU analogue of ``torch.cuda.max_memory_allocated``: torch's
profiler (``profile_memory=True``) records every allocation and free of torch's CPU
allocator with its size; the running sum of those records, in time order, peaks at the
figure.  It goes through torch alone, never through ckpt, so it measures whatever
wrapper runs the step.  Frees of blocks allocated before the region carry no size
(torch warns "Memory block of unknown size") and are not subtracted: the figure is the
peak of bytes the region itself allocated and still held.  ``grad_at_peak`` (the
gradients autograd had stored by the peak, read from ``mark_gradients``' annotations in
the same timeline) and ``activation_peak`` (the peak of held less stored gradients: the
torch analogue of the ledger's ``peak_activation_bytes``) exist when the workload marks
its parameters.  A wrapper that keeps gradients inside one autograd Function until its
backward ends (ckpt's torch wrapper before issue 11) hands them over after the peak:
there ``grad_at_peak`` reads 0 and ``activation_peak`` still holds those gradients.  The profiler roughly
doubles a step of small kernels (measured: depth-64, width-128 Linear+ReLU, batch 256:
0.046 s → 0.072 s fastest of 7), so the runner times steps with no meter running.
"""

from __future__ import annotations

import os
import threading
import time
import tracemalloc
from dataclasses import dataclass
from multiprocessing import Pipe

from ckpt.memcheck import read_status_bytes

MIB = 2 ** 20


class Meter:
    """Base: ``with meter:`` measures a region; ``meter.figures`` then holds ``{name: bytes}``."""

    name = "meter"

    def __init__(self):
        self.figures: dict[str, int] = {}

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.figures = {f"{self.name}_{k}": int(v) for k, v in self.stop().items()}
        return False

    def start(self) -> None:
        """Record the baseline and begin watching."""

    def stop(self) -> dict[str, int]:
        """Stop watching; the peak bytes above the baseline, by figure."""
        return {}


class TracemallocMeter(Meter):
    """Peak of traced allocations (Python objects and numpy buffers) above the region's entry."""

    name = "tracemalloc"

    def start(self) -> None:
        self._owner = not tracemalloc.is_tracing()
        if self._owner:
            tracemalloc.start()
        self._base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()

    def stop(self) -> dict[str, int]:
        peak = tracemalloc.get_traced_memory()[1]
        if self._owner:
            tracemalloc.stop()
        return {"peak": peak - self._base}


GRADIENT_MARK = "profiling.gradient_ready:"


def mark_gradients(params, released: bool = False) -> list:
    """Annotate the profiler's timeline each time autograd stores a parameter's gradient; the hook handles.

    Harmless without a profiler (a no-op annotation).  With these marks ``TorchCPUMeter``
    also reports ``grad_at_peak``: the bytes of gradients autograd had stored when the peak was reached.
    ``released=True``, registered after ``ckpt.torch.fused.fuse_optimizer`` (hooks run in
    registration order), marks each gradient's release by the fused step, so ``grad_at_peak``
    counts the gradients alive at the peak.
    """
    sign = -1 if released else 1          # released: the fused hook has already dropped p.grad
    return [p.register_post_accumulate_grad_hook(lambda p: mark_gradient_bytes(sign * p.numel() * p.element_size()))
            for p in params]


def mark_gradient_bytes(nbytes: int) -> None:
    """Annotate the profiler's timeline: gradients now hold ``nbytes`` more (negative: fewer) bytes.

    For gradients set without autograd (an optimizer primed with zero gradients, then ``zero_grad``),
    so that ``activation_peak`` does not count them as activations.
    """
    from torch.autograd.profiler import record_function
    with record_function(f"{GRADIENT_MARK}{int(nbytes)}"):
        pass


class TorchCPUMeter(Meter):
    """Peak bytes held by torch's CPU allocator above the region's entry, from the profiler's memory events."""

    name = "torch_cpu"

    def start(self) -> None:
        from torch.profiler import ProfilerActivity, profile
        self._profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._profile.__enter__()

    def stop(self) -> dict[str, int]:
        self._profile.__exit__(None, None, None)
        self.timeline = allocator_timeline(self._profile)
        peak = max(self.timeline, key=lambda t: t.held, default=AllocatorStep(0, 0, 0))
        out = {"peak": max(0, peak.held), "held": self.timeline[-1].held if self.timeline else 0}
        if any(t.gradients for t in self.timeline):        # marked (fused: back to 0 at the end)
            out["grad_at_peak"] = peak.gradients
            out["activation_peak"] = max(t.held - t.gradients for t in self.timeline)
        return out


@dataclass(frozen=True)
class AllocatorStep:
    """Bytes held by torch's CPU allocator (and gradients stored so far) after one event, ns after the first."""

    ns: int
    held: int
    gradients: int


def allocator_timeline(prof) -> list[AllocatorStep]:
    """Bytes held above the start after each CPU allocation, free or gradient mark a profile recorded."""
    from ckpt.torch.measure import allocator_events
    events = allocator_events(prof, also=lambda e: e.name().startswith(GRADIENT_MARK))
    t0 = events[0].start_ns() if events else 0
    held = gradients = 0
    out = []
    for e in events:
        if e.name() == "[memory]":
            held += e.nbytes()
        else:
            gradients += int(e.name()[len(GRADIENT_MARK):])
        out.append(AllocatorStep(e.start_ns() - t0, held, gradients))
    return out


def release_free_heap() -> bool:
    """Collect garbage and hand glibc's free heap back to the system (``malloc_trim``); False off glibc.

    Without it, a region can reuse freed-but-resident heap pages and RSS under-reads its growth.
    """
    import ctypes
    import gc
    gc.collect()
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0)) or True
    except (OSError, AttributeError):
        return False


def reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ≥ 4.0); False when refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RSSMeter(Meter):
    """Process RSS: memory_profiler's sampler (a separate process) and the kernel's VmHWM."""

    name = "rss"

    def __init__(self, interval: float = 0.001):
        super().__init__()
        self.interval = interval

    def start(self) -> None:
        from memory_profiler import MemTimer
        release_free_heap()
        self._hwm_ok = reset_hwm()
        self._base = read_status_bytes("VmRSS") or 0
        self._pipe, child = Pipe()
        self._timer = MemTimer(os.getpid(), self.interval, child, "psutil", max_usage=True)
        self._timer.start()
        self._pipe.recv()                                   # the sampler is running
        self._sample_base = self._timer.mem_usage[0] * MIB

    def stop(self) -> dict[str, int]:
        hwm = read_status_bytes("VmHWM")
        self._pipe.send(0)
        peak_mib = self._pipe.recv()[0]
        self._pipe.recv()                                   # number of samples
        self._timer.join()
        out = {"peak": max(0, int(peak_mib * MIB - self._base))}
        if self._hwm_ok and hwm is not None:
            out["hwm"] = max(0, hwm - self._base)
            out["max"] = max(out["hwm"], out["peak"])
        return out


class CudaMeter(Meter):
    """torch.cuda peak allocated and reserved above the region's entry (stats reset per region).

    ``stats`` is ``torch.cuda`` unless given (tests pass a recorder with the same functions).
    """

    name = "cuda"

    def __init__(self, device=None, stats=None):
        super().__init__()
        self.device, self._stats = device, stats

    def _cuda(self):
        if self._stats is None:
            import torch
            if not torch.cuda.is_available():
                raise RuntimeError("meters: the cuda meter needs a CUDA device; torch.cuda.is_available() is False")
            self._stats = torch.cuda
        return self._stats

    def start(self) -> None:
        s = self._cuda()
        s.synchronize(self.device)
        s.reset_peak_memory_stats(self.device)
        self._alloc = s.memory_allocated(self.device)
        self._reserved = s.memory_reserved(self.device)

    def stop(self) -> dict[str, int]:
        s = self._cuda()
        s.synchronize(self.device)
        return {"allocated": s.max_memory_allocated(self.device) - self._alloc,
                "reserved": s.max_memory_reserved(self.device) - self._reserved}


def nvml_handle(index: int = 0):
    """An NVML device handle, or None when pynvml (nvidia-ml-py) or a driver is absent."""
    try:
        import pynvml
        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:                                       # no package, no driver, no device
        return None


class NvmlMeter(Meter):
    """Device memory used as the driver reports it (all processes), sampled in a thread.

    ``used`` is a callable returning bytes in use; by default NVML's for device ``index``.
    """

    name = "nvml"

    def __init__(self, index: int = 0, interval: float = 0.002, used=None):
        super().__init__()
        self.interval, self._used = interval, used
        if used is None:
            handle = nvml_handle(index)
            if handle is None:
                raise RuntimeError("meters: the nvml meter needs nvidia-ml-py and an NVIDIA driver "
                                   "(pip install 'ckpt-toolkit[gpu]')")
            import pynvml
            self._used = lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used

    def _watch(self) -> None:
        while not self._done.is_set():
            self._peak = max(self._peak, self._used())
            time.sleep(self.interval)

    def start(self) -> None:
        self._base = self._peak = self._used()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, int]:
        self._done.set()
        self._thread.join()
        self._peak = max(self._peak, self._used())
        return {"used": self._peak - self._base}


class Meters(Meter):
    """Several meters over one region; figures merged."""

    def __init__(self, meters):
        super().__init__()
        self.meters = list(meters)

    def __enter__(self):
        for m in self.meters:
            m.__enter__()
        return self

    def __exit__(self, *exc):
        for m in reversed(self.meters):
            m.__exit__(*exc)
        self.figures = {k: v for m in self.meters for k, v in m.figures.items()}
        return False


def meters_for(backend: str, device: str) -> list[Meter]:
    """The meters that apply to a workload: numpy→tracemalloc, torch cpu→torch_cpu + rss, cuda→cuda (+nvml)."""
    if backend == "numpy":
        return [TracemallocMeter()]
    if device == "cpu":
        return [TorchCPUMeter(), RSSMeter()]
    out = [CudaMeter()]
    if nvml_handle() is not None:
        out.append(NvmlMeter())
    return out


PRIMARY = {("numpy", "cpu"): "tracemalloc_peak", ("torch", "cpu"): "torch_cpu_peak",
           ("torch", "cuda"): "cuda_allocated"}
FALLBACK = {"torch_cpu_peak": "rss_max", "rss_max": "rss_peak"}   # when a figure is missing (e.g. no VmHWM)


def primary_figure(backend: str, device: str, figures: dict[str, int]) -> str:
    """The figure a row's ``peak_bytes`` is taken from (the next in FALLBACK when it is missing)."""
    name = PRIMARY[(backend, device)]
    while name not in figures and name in FALLBACK:
        name = FALLBACK[name]
    return name
