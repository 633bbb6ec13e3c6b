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
``oom``        MemoryError / CUDA out-of-memory, or killed by SIGKILL (the OOM killer)
``error``      any other exception or crash; ``error`` holds its text
``timeout``    still running after ``timeout`` seconds; killed
=============  ==========================================================

For tests, the child honours ``CKPT_PROFILE_FAULT`` = ``error`` | ``oom`` | ``hang`` | ``crash``.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

from .meters import Meters, meters_for, primary_figure
from .workloads import Config, build, impl_of, predicted, time_steps, validate

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


def measure(c: Config, warmup: int = 1, iters: int = 3, budget_s: float = 2.0) -> dict:
    """In this process: build c, meter one step, time more steps; the row's measured fields."""
    validate(c)
    _inject_fault()
    w = build(c)
    w.warm_up()
    meters = Meters(meters_for(c.backend, c.device))
    t0 = time.perf_counter()
    with meters:
        w.step()
    metered_s = time.perf_counter() - t0
    figures = meters.figures
    primary = primary_figure(c.backend, c.device, figures)
    row = {"impl": impl_of(c), "peak_meter": primary, "peak_bytes": figures[primary], **figures}
    row.update(w.decomposition())
    row.update(predicted(c))
    times = time_steps(w, 0 if metered_s > budget_s else warmup, iters, budget_s)
    row.update(time_s=statistics.median(times), time_min_s=min(times), timed_steps=len(times))
    return row


def _oom_types() -> tuple:
    types = (MemoryError,)
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch.cuda, "OutOfMemoryError"):
        types += (torch.cuda.OutOfMemoryError,)
    return types


def child_main(argv: list[str]) -> int:
    """Entry of the child process: argv = [config json, options json]; prints one marked row."""
    config, opts = json.loads(argv[0]), json.loads(argv[1]) if len(argv) > 1 else {}
    c = Config.from_dict(config)
    try:
        row = {"status": "ok", "error": "", **measure(c, **opts)}
    except Exception as e:                                   # every failure becomes a row
        status = "oom" if isinstance(e, _oom_types()) else "error"
        row = {"status": status, "error": f"{type(e).__name__}: {e}",
               "traceback": traceback.format_exc(limit=6)}
    print(MARK + json.dumps(row), flush=True)
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


def run_config(c: Config, timeout: float = 300.0, warmup: int = 1, iters: int = 3,
               budget_s: float = 2.0, threads: int | None = 1, env: dict | None = None) -> dict:
    """Measure c in a fresh process; a complete row (config, status, figures) whatever happens."""
    opts = {"warmup": warmup, "iters": iters, "budget_s": budget_s}
    cmd = [sys.executable, "-m", "profiling.runner", json.dumps(c.as_dict()), json.dumps(opts)]
    env = child_env(env, threads)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        result = _parse(p.stdout) or _died(p.returncode, p.stderr)
    except subprocess.TimeoutExpired:
        result = {"status": "timeout", "error": f"no result after {timeout:g} s; the process was killed"}
    return {**c.as_dict(), "key": c.key, **result, "wall_s": time.perf_counter() - t0,
            "mmap_threshold": env.get("MALLOC_MMAP_THRESHOLD_", ""), "threads": threads or 0}


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
