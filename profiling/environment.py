"""The environment a sweep ran in: machine, versions, allocator settings (the report's header)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

ENVIRONMENT = "environment.json"
PACKAGES = ("numpy", "torch", "pandas", "matplotlib", "memory_profiler", "psutil", "nvidia-ml-py")


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        import psutil
        return round(psutil.virtual_memory().total / 2 ** 30, 1)
    except Exception:
        return None


def _gpus() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        return []


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def collect() -> dict:
    """Machine, versions and allocator settings, without importing torch."""
    from .runner import MMAP_THRESHOLD, THREAD_VARS
    return {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "memory_gib": _memory_gib(),
        "gpus": _gpus(), "os": platform.platform(), "python": sys.version.split()[0],
        "packages": {p: _version(p) for p in PACKAGES if _version(p)},
        "git_commit": _git_commit(),
        "allocator": {"MALLOC_MMAP_THRESHOLD_ (children)": os.environ.get("MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD),
                      "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "(default)"),
                      "threads (children)": {v: os.environ.get(v, "1") for v in THREAD_VARS}},
    }


def write_environment(out) -> dict:
    """Write ``environment.json`` into a sweep folder (kept when it exists: the sweep's first run)."""
    path = Path(out) / ENVIRONMENT
    if path.exists():
        return json.loads(path.read_text())
    env = collect()
    path.write_text(json.dumps(env, indent=2) + "\n")
    return env


def read_environment(out) -> dict:
    """The environment of a sweep folder ({} when absent)."""
    path = Path(out) / ENVIRONMENT
    return json.loads(path.read_text()) if path.exists() else {}


def blas_runtime() -> dict:
    """The BLAS libraries loaded in this process, their kernel and threads (threadpoolctl when installed)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {"source": "numpy.show_config (threadpoolctl not installed)", "libraries": []}
    return {"source": "threadpoolctl", "libraries": [
        {k: lib.get(k) for k in ("user_api", "internal_api", "prefix", "version", "architecture",
                                 "threading_layer", "num_threads")}
        for lib in threadpool_info()]}


def _numpy_blas(np) -> str:
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{cfg.get('name')} {cfg.get('version')}"
    except Exception:                                   # the config layout differs across numpy versions
        return "?"


def _torch_blas(torch) -> str:
    return next((part.split("=", 1)[1] for part in torch.__config__.show().replace(",", " ").split()
                 if part.startswith("BLAS_INFO=")), "?")


def machine_details(threads: int | None = None) -> dict:
    """What a benchmark's numbers depend on, seen from the measuring process (numpy and torch loaded)."""
    import numpy as np
    import torch
    return {
        "cpu": cpu_model(), "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
        "platform": platform.platform(), "python": platform.python_version(),
        "numpy": np.__version__, "numpy_blas": _numpy_blas(np), "torch": torch.__version__,
        "torch_blas": _torch_blas(torch), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(), "threads_requested": threads, "blas_runtime": blas_runtime(),
        "gpus": _gpus(), "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
