"""Runner: one configuration in its own fresh process, always returning a row.

The parent (``run_config``) starts ``python -m profiling.runner '<config json>'`` with
glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed (large blocks go straight to mmap and back to
the system when freed, so RSS tracks what is live) and a timeout.  The child builds the
workload, measures **one** step under the meters (after a warm-up step that loads
kernels: a 1-row step for numpy; a full step for torch, whose math library also sizes
its workspace to the batch), then times ``iters`` more steps with no meter
running, and prints its row.  Whatever happens, the parent gets a row:

=============  ==========================================================
status         meaning
=============  ==========================================================
``ok``         measured
``oom``        MemoryError / CUDA or torch CPU allocator out-of-memory, or killed by SIGKILL (the OOM killer)
``error``      any other exception or crash; ``error`` holds its text
``timeout``    still running after ``timeout`` seconds; killed
=============  ==========================================================

The child dies with its parent (``PR_SET_PDEATHSIG``: a ``kill -9`` of the sweep leaves no
orphan) and, with ``memory_limit_mb``, may add at most that much address space after its imports
(``RLIMIT_AS``), so an allocation beyond it fails as it would on a smaller machine.  Plugins
(modules registering user strategies) are imported in the child before validation.  Each row
records where it ran: host, CPU and, for CUDA rows, the GPU.

For tests, the child honours ``CKPT_PROFILE_FAULT`` = ``error`` | ``oom`` | ``hang`` | ``crash``.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import socket
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

from .config import Config, load_plugins, validate
from .environment import cpu_model
from .meters import Meters, meters_for, primary_figure
from .workloads import build, impl_of, predicted, time_steps

MARK = "PROFILING-ROW "
MMAP_THRESHOLD = "32768"     # 32 KiB: a 128-wide float32 activation of batch 128 (64 KiB) is mapped too
REPO_ROOT = str(Path(__file__).resolve().parent.parent)


def _inject_fault() -> None:
    fault = os.environ.get("CKPT_PROFILE_FAULT", "")
    if fault == "error":
        raise RuntimeError("injected failure (CKPT_PROFILE_FAULT=error)")
    if fault == "oom":
        raise MemoryError("injected out-of-memory (CKPT_PROFILE_FAULT=oom)")
    if fault == "hang":
        time.sleep(3600)
    if fault == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)


def _check_cuda_here(c: Config) -> dict:
    """The GPU this row runs on; raises when this host has none (checked where the row runs)."""
    if c.device != "cuda":
        return {}
    import torch
    if not torch.cuda.is_available():
        raise RuntimeError(f"profiling: device 'cuda' requested but torch.cuda.is_available() is False "
                           f"on host {socket.gethostname()!r}")
    return {"gpu": torch.cuda.get_device_name()}


def limit_address_space(extra_mb: int | None) -> None:
    """Let this process map at most ``extra_mb`` MiB more than it has now (RLIMIT_AS)."""
    if not extra_mb:
        return
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[0])
    limit = pages * resource.getpagesize() + extra_mb * 2 ** 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def measure(c: Config, warmup: int = 1, iters: int = 3, budget_s: float = 2.0,
            memory_limit_mb: int | None = None) -> dict:
    """In this process: build c, meter one step, time more steps; the row's measured fields."""
    validate(c)
    where = _check_cuda_here(c)
    if c.backend == "torch":
        import torch  # noqa: F401  (imported before the address-space limit: its libraries are large)
    _inject_fault()
    limit_address_space(memory_limit_mb)
    w = build(c)
    w.warm_up()
    meters = Meters(meters_for(c.backend, c.device))
    t0 = time.perf_counter()
    with meters:
        w.step()
    metered_s = time.perf_counter() - t0
    figures = meters.figures
    if c.backend == "numpy" and c.mode == "train":              # the activation high-water: one more step, metered
        figures["tracemalloc_activation_peak"] = w.activation_peak()
    primary = primary_figure(c.backend, c.device, figures)
    row = {"impl": impl_of(c), "peak_meter": primary, "peak_bytes": figures[primary], **figures, **where}
    row.update(w.decomposition())
    row.update(predicted(c))
    times = time_steps(w, 0 if metered_s > budget_s else warmup, iters, budget_s)
    row.update(time_s=statistics.median(times), time_min_s=min(times), timed_steps=len(times))
    return row


CPU_ALLOCATOR_FAILURE = "DefaultCPUAllocator: can't allocate memory"   # torch's CPU out-of-memory


def is_oom(e: BaseException) -> bool:
    """Whether e is an out-of-memory: MemoryError, CUDA's, or torch's CPU allocator failing."""
    if isinstance(e, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(e, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    return isinstance(e, RuntimeError) and CPU_ALLOCATOR_FAILURE in str(e)


def child_main(argv: list[str]) -> int:
    """Entry of the child process: argv = [config json, options json]; prints one marked row."""
    config, opts = json.loads(argv[0]), json.loads(argv[1]) if len(argv) > 1 else {}
    try:
        c = Config.from_dict(config)
        load_plugins(opts.pop("plugins", []), [c.strategy])
        row = {"status": "ok", "error": "", **measure(c, **opts)}
    except Exception as e:                                   # every failure becomes a row
        status = "oom" if is_oom(e) else "error"
        row = {"status": status, "error": f"{type(e).__name__}: {e}",
               "traceback": traceback.format_exc(limit=6)}
    emit(row)
    return 0


THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def child_env(extra: dict | None = None, threads: int | None = 1) -> dict:
    """The child's environment: ours, the mmap threshold fixed, BLAS/OpenMP threads set, the repo importable."""
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD)
    if threads:
        env.update({v: str(threads) for v in THREAD_VARS})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def _parse(stdout: str) -> dict | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    return None


def _died(returncode: int, stderr: str) -> dict:
    tail = stderr.strip().splitlines()[-3:]
    if returncode < 0:
        sig = signal.Signals(-returncode).name
        status = "oom" if -returncode == signal.SIGKILL else "error"
        why = f"killed by {sig}" + (" (likely the out-of-memory killer)" if status == "oom" else "")
        return {"status": status, "error": " | ".join([why, *tail])}
    return {"status": "error", "error": " | ".join([f"exited with code {returncode}", *tail])}


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child, before exec: receive SIGKILL when the parent dies (Linux; a no-op elsewhere)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def host_details() -> dict:
    """Where a row ran: a cluster is not one machine."""
    return {"host": socket.gethostname(), "cpu": cpu_model(), "cpu_count": os.cpu_count()}


def emit(row: dict) -> None:
    """In a child: print the row the parent reads (one marked JSON line on stdout)."""
    print(MARK + json.dumps(row), flush=True)


def run_child(cmd: list[str], env: dict, timeout: float, show_stderr: bool = False) -> dict:
    """Run a measuring child (it dies with us); its emitted row, or a row saying how it ended.

    ``show_stderr`` passes the child's stderr (its progress) through instead of keeping its tail.
    """
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if show_stderr else subprocess.PIPE,
                           text=True, timeout=timeout, env=env, preexec_fn=die_with_parent)
        return _parse(p.stdout) or _died(p.returncode, p.stderr or "")
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"no result after {timeout:g} s; the process was killed"}


def run_config(c: Config, timeout: float = 300.0, warmup: int = 1, iters: int = 3,
               budget_s: float = 2.0, threads: int | None = 1, env: dict | None = None,
               memory_limit_mb: int | None = None, plugins: list[str] | tuple = ()) -> dict:
    """Measure c in a fresh process; a complete row (config, status, figures) whatever happens."""
    opts = {"warmup": warmup, "iters": iters, "budget_s": budget_s, "memory_limit_mb": memory_limit_mb,
            "plugins": list(plugins)}
    cmd = [sys.executable, "-m", "profiling.runner", json.dumps(c.as_dict()), json.dumps(opts)]
    env = child_env(env, threads)
    t0 = time.perf_counter()
    result = run_child(cmd, env, timeout)
    return {**c.as_dict(), "key": c.key, **result, **host_details(), "wall_s": time.perf_counter() - t0,
            "mmap_threshold": env.get("MALLOC_MMAP_THRESHOLD_", ""), "threads": threads or 0}


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
