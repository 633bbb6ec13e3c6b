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


def test_a_configuration_that_cannot_fit_is_refused_before_it_runs():
    # depth 32, width 64, batch 4096, float64, momentum: store_all needs 72.1 MiB in all, sqrt_n 30.3 MiB (predicted)
    big = Config(depth=32, width=64, batch=4096, dtype="float64", optimizer="momentum")
    row = run_config(big, memory_limit_mb=45, iters=1)
    assert row["status"] == "refused", row.get("error")
    assert "InsufficientMemoryError: memcheck: configuration depth=32|width=64|batch=4096" in row["error"]
    assert ("needs 72.1 MiB (75,596,800 B), but this process may use 45.0 MiB (47,185,920 B, RLIMIT_AS − VmSize); "
            "sqrt_n would fit (30.3 MiB, 58 forward steps vs 32)") in row["error"]
    assert "--no-memcheck" in row["error"] and "peak_bytes" not in row            # never started


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
