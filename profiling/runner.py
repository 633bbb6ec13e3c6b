"""Runner: one configuration in its own fresh process, always returning a row.

The parent (``run_config``) starts ``python -m profiling.runner '<config json>'`` (or,
given a ``profiling.zygote`` started for the same environment, forks the child from it: the
same fresh process without repeating the imports) with glibc's ``MALLOC_MMAP_THRESHOLD_``
fixed (large blocks go straight to mmap and back to the system when freed, so RSS tracks
what is live) and a timeout.  The child builds the
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
``refused``    not run: the predicted bytes exceed what the child may use (``memcheck``)
=============  ==========================================================

With ``memcheck`` (the default) the child compares, before building anything, the memory
model's bytes for the configuration (parameters, inputs and the step's predicted peak with
the optimizer state: ``workloads.needed_bytes``) with what it may use
(``ckpt.memcheck``: free memory, its address-space limit, a cgroup's limit, CUDA free
memory) and refuses with both numbers and the cheapest strategy that would fit, instead of
an ``oom`` half-way.

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

from ckpt.memcheck import InsufficientMemoryError

from .config import Config, load_plugins, validate
from .environment import cpu_model
from .meters import Meters, meters_for, primary_figure
from .workloads import build, impl_of, needed_bytes, predicted, time_steps

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


def check_memory(c: Config) -> None:
    """Raise ``InsufficientMemoryError`` (both numbers, the cheapest fitting strategy) when c cannot fit here."""
    from ckpt.memcheck import InsufficientMemoryError, check_fits
    need, steps = needed_bytes(c)
    what = f"configuration {c.key} (predicted: parameters, inputs, optimizer state and the step's peak)"
    skip = "Run anyway with --no-memcheck (or memcheck = false in the sweep file's [run] table)"
    try:
        check_fits(need, device=c.device, what=what, skip=skip)
    except InsufficientMemoryError:
        check_fits(need, device=c.device, what=what, alternatives=_alternatives(c), steps=steps, skip=skip)


def _alternatives(c: Config) -> list[tuple[str, int, int]]:
    """(strategy, needed bytes, forward steps) of c run with each registered strategy that needs no options."""
    import ckpt
    from dataclasses import replace
    rows = []
    for name in ckpt.strategies():
        try:
            rows.append((name, *needed_bytes(replace(c, strategy=name, segments=None, slots=None, budget=None,
                                                     options={}))))
        except Exception:                                  # needs options (optimal's budget): not a candidate
            continue
    return rows


def measure(c: Config, warmup: int = 1, iters: int = 3, budget_s: float = 2.0,
            memory_limit_mb: int | None = None, memcheck: bool = True) -> dict:
    """In this process: build c, meter one step, time more steps; the row's measured fields."""
    validate(c)
    where = _check_cuda_here(c)
    if c.backend == "torch":
        import torch  # noqa: F401  (imported before the address-space limit: its libraries are large)
    _inject_fault()
    limit_address_space(memory_limit_mb)
    if memcheck:
        check_memory(c)
    w = build(c)
    w.warm_up()
    meters = Meters(meters_for(c.backend, c.device))
    with meters:
        w.step()
    figures = meters.figures
    if c.backend == "numpy" and c.mode == "train":              # the activation high-water: one more step, metered
        figures["tracemalloc_activation_peak"] = w.activation_peak()
    primary = primary_figure(c.backend, c.device, figures)
    row = {"impl": impl_of(c), "peak_meter": primary, "peak_bytes": figures[primary], **figures, **where}
    row.update(w.decomposition())
    row.update(predicted(c))
    # the metered step is the first of the ``warmup`` untimed steps: it ran every kernel at full size
    times = time_steps(w, max(0, warmup - 1), iters, budget_s)
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
        status = "refused" if isinstance(e, InsufficientMemoryError) else "oom" if is_oom(e) else "error"
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


def _timed_out(timeout: float) -> dict:
    return {"status": "timeout", "error": f"no result after {timeout:g} s; the process was killed"}


def run_child(cmd: list[str], env: dict, timeout: float, show_stderr: bool = False) -> dict:
    """Run a measuring child (it dies with us); its emitted row, or a row saying how it ended.

    ``show_stderr`` passes the child's stderr (its progress) through instead of keeping its tail.
    """
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if show_stderr else subprocess.PIPE,
                           text=True, timeout=timeout, env=env, preexec_fn=die_with_parent)
        return _parse(p.stdout) or _died(p.returncode, p.stderr or "")
    except subprocess.TimeoutExpired:
        return _timed_out(timeout)


def run_forked(zygote, args: list[str], env: dict | None, threads: int | None, timeout: float) -> dict | None:
    """The row of a child forked by ``zygote`` (``profiling.zygote``); None when it cannot serve this row."""
    from .zygote import ZygoteError
    if zygote is None or not zygote.serves(env, threads):
        return None
    try:
        returncode, stdout, stderr = zygote.run(args, timeout)
    except ZygoteError:
        return None
    if returncode is None:
        return _timed_out(timeout)
    return _parse(stdout) or _died(returncode, stderr)


def run_config(c: Config, timeout: float = 300.0, warmup: int = 1, iters: int = 3,
               budget_s: float = 2.0, threads: int | None = 1, env: dict | None = None,
               memory_limit_mb: int | None = None, plugins: list[str] | tuple = (), memcheck: bool = True,
               zygote=None) -> dict:
    """Measure c in a fresh process; a complete row (config, status, figures) whatever happens.

    With a ``zygote`` started for the same ``env`` and ``threads``, the process is forked from it (``launch``:
    "fork", no imports to repeat); otherwise it is started afresh ("exec").
    """
    opts = {"warmup": warmup, "iters": iters, "budget_s": budget_s, "memory_limit_mb": memory_limit_mb,
            "plugins": list(plugins), "memcheck": memcheck}
    args = [json.dumps(c.as_dict()), json.dumps(opts)]
    t0 = time.perf_counter()
    result, launch = run_forked(zygote, args, env, threads, timeout), "fork"
    env = child_env(env, threads)
    if result is None:
        result, launch = run_child([sys.executable, "-m", "profiling.runner", *args], env, timeout), "exec"
    return {**c.as_dict(), "key": c.key, **result, **host_details(), "wall_s": time.perf_counter() - t0,
            "launch": launch, "mmap_threshold": env.get("MALLOC_MMAP_THRESHOLD_", ""), "threads": threads or 0}


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
