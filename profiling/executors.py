"""Executors: where a sweep's configurations run.  Each yields rows as they finish.

An executor has ``check(configs)`` (raise before anything runs when it cannot run them; it may
start what it needs), ``run(configs, options)``, an iterator of rows in the order they finish
(the sweep appends each row to disk as soon as it arrives), and ``close()``.  Every configuration still runs in its own fresh process
(``runner.run_config``), whichever executor starts it.

* ``LocalExecutor(jobs=1, fork=True)``: this machine, ``jobs`` configurations at once (timings
  then share the cores: a warning says so).  With ``fork`` each child is forked from a zygote
  that imported numpy, ckpt (and torch, when the sweep has torch rows) once
  (``profiling.zygote``): the same fresh process per configuration without repeating the
  imports (~0.3 s per numpy row, ~2.7 s per torch row on 2 idle cores); ``fork=False``
  (``--launch exec``) starts each child afresh.
* ``RayExecutor(address=None)``: each configuration a Ray task that spawns the runner's child
  process, with the resources it needs (``num_gpus=1`` for CUDA rows, ``threads`` CPUs
  otherwise).  Without ``address`` (and no Ray running) it starts a local Ray instance and stops
  it afterwards; ``address="auto"`` or ``"ray://host:10001"`` joins an existing cluster, whose
  workers get this repository as their working directory.
"""

from __future__ import annotations

import os
import queue
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Iterator

from .config import Config


def _run_one(c: Config, options: dict) -> dict:
    from . import runner                                 # looked up per call: tests replace run_config
    return runner.run_config(c, **options)


class LocalExecutor:
    """Run configurations on this machine, ``jobs`` at a time (forked from zygotes unless ``fork=False``)."""

    name = "local"

    def __init__(self, jobs: int = 1, fork: bool = True):
        if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
            raise ValueError(f"executors: jobs must be an int ≥ 1, got {jobs!r}")
        self.jobs, self.fork = jobs, fork

    def check(self, configs: list[Config]) -> None:
        """Raise before anything runs when a cuda configuration meets this machine without a GPU."""
        if any(c.device == "cuda" for c in configs):
            import torch
            if not torch.cuda.is_available():
                raise RuntimeError("executors: device 'cuda' requested but torch.cuda.is_available() is False here; "
                                   "drop cuda from the grid, run on a machine with a GPU, or use --executor ray "
                                   "with a cluster that has GPUs")

    def close(self) -> None:
        """Nothing to release (zygotes are stopped when ``run`` ends)."""

    def run(self, configs: list[Config], options: dict) -> Iterator[dict]:
        """Rows as they finish."""
        zygotes = self._zygotes(configs, options) if configs else []
        try:
            yield from self._run(configs, options, zygotes or [None] * self.jobs)
        finally:
            for z in zygotes:
                z.close()

    def _run(self, configs: list[Config], options: dict, zygotes: list) -> Iterator[dict]:
        if self.jobs == 1:
            for c in configs:
                yield _run_one(c, {**options, "zygote": zygotes[0]})
            return
        print(f"executors: running {self.jobs} configurations at once; their timings share "
              f"{os.cpu_count()} cores (memory peaks are unaffected)", file=sys.stderr)
        free = queue.Queue()
        for z in zygotes:
            free.put(z)

        def one(c):
            z = free.get()                               # each zygote serves one configuration at a time
            try:
                return _run_one(c, {**options, "zygote": z})
            finally:
                free.put(z)

        with ThreadPoolExecutor(self.jobs) as pool:
            futures = [pool.submit(one, c) for c in configs]
            try:
                for f in as_completed(futures):
                    yield f.result()
            finally:
                for f in futures:
                    f.cancel()

    def _zygotes(self, configs: list[Config], options: dict) -> list:
        """One zygote per job (torch preloaded when a row needs it); none when forking is off or unsafe here."""
        if not self.fork:
            return []
        from .zygote import PRELOAD, TORCH_PRELOAD, Zygote, ZygoteError
        preload = PRELOAD + (TORCH_PRELOAD if any(c.backend == "torch" for c in configs) else ())
        zygotes = []
        try:
            for _ in range(min(self.jobs, len(configs))):
                zygotes.append(Zygote(None, options.get("threads", 1), preload))
        except ZygoteError as e:
            print(f"executors: {e}; starting each configuration's process afresh instead", file=sys.stderr)
            for z in zygotes:
                z.close()
            return []
        return zygotes


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError("executors: --executor ray needs Ray: pip install -e '.[ray]' "
                           "(or pip install 'ray[default]')") from None
    return ray


def _ray_task(config: dict, options: dict) -> dict:
    """On a Ray worker: one configuration in its own fresh child process."""
    return _run_one(Config.from_dict(config), options)


def resources(c: Config, options: dict) -> dict:
    """What a configuration's task asks Ray for."""
    if c.device == "cuda":
        return {"num_gpus": 1, "num_cpus": 1}
    return {"num_cpus": options.get("threads") or 1}


class RayExecutor:
    """Run configurations as Ray tasks, locally or on an existing cluster."""

    name = "ray"

    def __init__(self, address: str | None = None):
        self.address, self._started = address, False

    def check(self, configs: list[Config]) -> None:
        """Join (or start) Ray; CUDA rows need a GPU somewhere in the cluster (each row checks its own host)."""
        ray = _import_ray()
        self._started = self._start(ray)
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus == 0 and any(c.device == "cuda" for c in configs):
            self.close()
            raise RuntimeError("executors: device 'cuda' requested but the Ray cluster has no GPU "
                               "(ray.cluster_resources() lists none); its tasks would wait forever. "
                               "Drop cuda from the grid or join a cluster with GPUs (--address)")

    def close(self) -> None:
        """Stop the Ray instance this executor started (one it joined keeps running)."""
        if self._started:
            _import_ray().shutdown()
            self._started = False

    def _runtime_env(self) -> dict:
        from .runner import REPO_ROOT
        path = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH", "")) if p)
        env = {"env_vars": {"PYTHONPATH": path}}
        if self.address:                                 # a cluster's nodes get this checkout
            env = {"working_dir": REPO_ROOT, "excludes": [".git", "reports", "runs"],
                   "env_vars": {"PYTHONPATH": "."}}
        return env

    def _start(self, ray) -> bool:
        if ray.is_initialized():
            return False
        import logging
        local = {} if self.address else {"include_dashboard": False, "log_to_driver": False,
                                         "logging_level": logging.ERROR}   # Ray's start-up notices, not ours
        ray.init(address=self.address, runtime_env=self._runtime_env(), **local)
        if not self.address:
            print(f"executors: started a local Ray instance ({ray.cluster_resources().get('CPU', 0):g} CPUs); "
                  f"it stops when the sweep ends", file=sys.stderr)
        return True

    def run(self, configs: list[Config], options: dict) -> Iterator[dict]:
        """Rows as their tasks finish; unfinished tasks are cancelled when the consumer stops."""
        ray = _import_ray()
        if not ray.is_initialized():
            self._started = self._start(ray)
        task = ray.remote(_ray_task)
        pending = {task.options(**resources(c, options)).remote(c.as_dict(), options): c for c in configs}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    c = pending.pop(ref)
                    yield self._result(ray, ref, c)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    @staticmethod
    def _result(ray, ref, c: Config) -> dict:
        try:
            return ray.get(ref)
        except Exception as e:                            # the task itself failed (worker lost, ...)
            return {**c.as_dict(), "key": c.key, "status": "error",
                    "error": f"ray task failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def make_executor(name: str = "local", jobs: int = 1, address: str | None = None, launch: str = "fork"):
    """The executor called ``name``: 'local' or 'ray' (``launch``: 'fork' from a zygote or 'exec', local only)."""
    if launch not in ("fork", "exec"):
        raise ValueError(f"executors: unknown launch {launch!r}; allowed: fork, exec")
    if name == "local":
        if address:
            raise ValueError("executors: --address is for --executor ray")
        return LocalExecutor(jobs, fork=launch == "fork")
    if name == "ray":
        if jobs != 1:
            raise ValueError("executors: --jobs is for --executor local; Ray runs as many tasks as its CPUs allow")
        return RayExecutor(address)
    raise ValueError(f"executors: unknown executor {name!r}; allowed: local, ray")
