"""The Ray executor on a local Ray instance: the same rows as the local executor, and resume after an interruption."""

import json

import pytest

ray = pytest.importorskip("ray")

import profiling.sweep  # noqa: E402
from profiling.executors import LocalExecutor, RayExecutor, resources  # noqa: E402
from profiling.config import Config  # noqa: E402
from profiling.sweep import RESULTS, expand, run_sweep  # noqa: E402

GRID = {"backend": "numpy", "depth": [2, 3, 4, 5, 6], "width": 16, "batch": [8, 16],
        "strategy": ["store_all", "sqrt_n", "recompute"], "mode": ["train", "predict"]}
EXACT = ["status", "forward_steps", "tracemalloc_peak", "peak_bytes", "predicted_peak_bytes"]


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance with 2 CPUs, started and stopped by this module."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env=RayExecutor()._runtime_env())
    yield
    ray.shutdown()


def test_ray_gives_the_same_rows_as_the_local_executor(local_ray, tmp_path):
    assert len(expand(GRID)) == 40
    on_ray = run_sweep([GRID], tmp_path / "ray", executor=RayExecutor(), progress=False, iters=1)
    local = run_sweep([GRID], tmp_path / "local", executor=LocalExecutor(jobs=2), progress=False, iters=1)
    on_ray, local = on_ray.set_index("key").sort_index(), local.set_index("key").sort_index()
    assert list(on_ray.index) == list(local.index) and len(on_ray) == 40
    assert set(on_ray["status"]) == {"ok"}
    assert on_ray[EXACT].equals(local[EXACT])
    ratio = (on_ray["time_min_s"] / local["time_min_s"]).median()
    assert 0.2 < ratio < 5, ratio                       # times within (a shared machine's) noise
    assert on_ray["host"].notna().all() and on_ray["cpu"].notna().all()


def test_an_interrupted_ray_sweep_resumes_without_losing_or_duplicating_a_row(local_ray, tmp_path, monkeypatch):
    grid = {**GRID, "depth": [2, 3], "batch": 8}         # 8 configurations
    append, written = profiling.sweep.append_row, []

    def append_then_stop(out, row):
        if len(written) == 3:
            raise KeyboardInterrupt
        append(out, row)
        written.append(row["key"])

    monkeypatch.setattr(profiling.sweep, "append_row", append_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_sweep([grid], tmp_path, executor=RayExecutor(), progress=False, iters=1)
    monkeypatch.setattr(profiling.sweep, "append_row", append)
    assert ray.is_initialized()                           # the test's instance survives the interruption
    df = run_sweep([grid], tmp_path, executor=RayExecutor(), resume=True, progress=False, iters=1)
    keys = [json.loads(line)["key"] for line in (tmp_path / RESULTS).read_text().splitlines()]
    assert len(keys) == len(set(keys)) == len(expand(grid)) == len(df)
    assert set(written) <= set(keys)


def test_tasks_ask_for_what_their_row_needs():
    assert resources(Config(backend="torch", device="cuda"), {}) == {"num_gpus": 1, "num_cpus": 1}
    assert resources(Config(), {"threads": 2}) == {"num_cpus": 2}


def test_cuda_rows_on_a_cluster_without_gpus_are_refused_before_anything_runs(local_ray, tmp_path):
    with pytest.raises(RuntimeError, match="the Ray cluster has no GPU"):
        run_sweep([{"backend": "torch", "device": "cuda", "depth": 2}], tmp_path, executor=RayExecutor(),
                  progress=False)
    assert ray.is_initialized() and not (tmp_path / RESULTS).exists()
