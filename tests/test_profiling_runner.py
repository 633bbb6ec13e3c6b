"""The runner: a fresh process per configuration, and a row whatever happens."""

import pytest

from profiling.runner import MMAP_THRESHOLD, child_env, run_config
from profiling.workloads import Config

from .test_profiling_sweep import _has_cuda

TINY = Config(backend="numpy", depth=4, width=128, batch=256, strategy="sqrt_n")


def test_ok_row_measures_and_predicts():
    row = run_config(TINY, iters=1)
    assert row["status"] == "ok", row.get("error")
    assert row["peak_meter"] == "tracemalloc_peak" and row["impl"] == "ckpt-numpy"
    assert row["peak_bytes"] == pytest.approx(row["predicted_peak_bytes"], rel=0.05)
    assert row["mmap_threshold"] == MMAP_THRESHOLD == "32768" and row["key"] == TINY.key


def test_forced_failure_is_a_row_with_the_error_text():
    row = run_config(TINY, env={"CKPT_PROFILE_FAULT": "error"})
    assert row["status"] == "error" and "injected failure" in row["error"]
    assert row["depth"] == 4 and row["strategy"] == "sqrt_n"


def test_memory_error_is_an_oom_row():
    row = run_config(TINY, env={"CKPT_PROFILE_FAULT": "oom"})
    assert row["status"] == "oom" and "MemoryError" in row["error"]


def test_timeout_is_a_row():
    row = run_config(TINY, timeout=2, env={"CKPT_PROFILE_FAULT": "hang"})
    assert row["status"] == "timeout" and "2 s" in row["error"]


def test_crash_is_a_row_naming_the_signal():
    row = run_config(TINY, env={"CKPT_PROFILE_FAULT": "crash"})
    assert row["status"] == "error" and "SIGSEGV" in row["error"]


def test_child_environment_fixes_the_allocator_and_threads():
    env = child_env(threads=1)
    assert env["MALLOC_MMAP_THRESHOLD_"] == MMAP_THRESHOLD and env["OMP_NUM_THREADS"] == "1"


def test_each_row_says_where_it_ran():
    import socket
    row = run_config(TINY, iters=1)
    assert row["host"] == socket.gethostname() and row["cpu"] and row["cpu_count"] >= 1


@pytest.mark.skipif(_has_cuda(), reason="checks the no-GPU row")
def test_cuda_is_checked_where_the_row_runs():
    row = run_config(Config(backend="torch", device="cuda", depth=2, width=8, batch=4))
    assert row["status"] == "error" and "torch.cuda.is_available() is False on host" in row["error"]
