"""The zygote: children forked from a preloaded process give the rows freshly started ones give."""

import json
import os

import psutil
import pytest

from profiling.config import Config
from profiling.runner import child_env, run_config
from profiling.zygote import PRELOAD, TORCH_PRELOAD, Zygote, ZygoteError

NUMPY_TRAIN = Config(backend="numpy", depth=6, width=64, batch=128, strategy="sqrt_n")
NUMPY_PREDICT = Config(backend="numpy", depth=6, width=64, batch=128, mode="predict", strategy="none",
                       optimizer="none")
TORCH_TRAIN = Config(backend="torch", depth=4, width=32, batch=16, strategy="recompute")
EXACT = ["status", "peak_meter", "peak_bytes", "forward_steps", "engine_peak_bytes", "predicted_peak_bytes"]


@pytest.fixture(scope="module")
def zygote():
    """One zygote with torch preloaded, shared by this module's tests."""
    z = Zygote(preload=PRELOAD + TORCH_PRELOAD)
    yield z
    z.close()


def _zygote_for(env: dict) -> Zygote:
    return Zygote(env)


@pytest.mark.parametrize("config", [NUMPY_TRAIN, NUMPY_PREDICT, TORCH_TRAIN], ids=lambda c: c.key)
def test_a_forked_child_measures_what_a_fresh_one_does(zygote, config):
    forked, fresh = run_config(config, iters=1, zygote=zygote), run_config(config, iters=1)
    assert forked["launch"] == "fork" and fresh["launch"] == "exec"
    assert forked["status"] == "ok", forked.get("error")
    assert {k: forked.get(k) for k in EXACT} == {k: fresh.get(k) for k in EXACT}
    assert forked.get("torch_cpu_peak") == fresh.get("torch_cpu_peak")


@pytest.mark.parametrize("fault, status, words", [
    ("error", "error", "injected failure"),
    ("oom", "oom", "MemoryError"),
    ("crash", "error", "killed by SIGSEGV"),
])
def test_a_forked_child_that_fails_is_a_row_and_the_zygote_serves_the_next(fault, status, words):
    z = _zygote_for({"CKPT_PROFILE_FAULT": fault})
    try:
        for _ in range(2):
            row = run_config(NUMPY_TRAIN, iters=1, env={"CKPT_PROFILE_FAULT": fault}, zygote=z)
            assert row["launch"] == "fork" and row["status"] == status and words in row["error"], row
        assert z.serves(z.made_for[0], 1)
    finally:
        z.close()


def test_a_forked_child_past_its_timeout_is_killed_and_recorded():
    z = _zygote_for({"CKPT_PROFILE_FAULT": "hang"})
    try:
        row = run_config(NUMPY_TRAIN, timeout=1, env={"CKPT_PROFILE_FAULT": "hang"}, zygote=z)
        assert row["launch"] == "fork" and row["status"] == "timeout" and "1 s" in row["error"]
        assert psutil.Process(z._proc.pid).children() == [] and z.serves(z.made_for[0], 1)     # killed and reaped
    finally:
        z.close()


def test_a_row_whose_zygote_dies_under_it_is_measured_afresh():
    z = _zygote_for({"CKPT_PROFILE_FAULT": "hang"})
    try:
        hang = {"CKPT_PROFILE_FAULT": "hang"}
        z._send({"args": [json.dumps(NUMPY_TRAIN.as_dict()), "{}"], "stdout": os.devnull, "stderr": os.devnull})
        z._reply(10)
        os.kill(z._proc.pid, 9)                           # the zygote dies; its hanging child with it
        row = run_config(NUMPY_TRAIN, timeout=2, env=hang, zygote=z)
        assert row["launch"] == "exec" and row["status"] == "timeout" and not z.serves(hang, 1)
    finally:
        z.close()


def test_a_row_whose_environment_differs_from_the_zygotes_starts_afresh(zygote):
    row = run_config(NUMPY_PREDICT, iters=1, threads=2, zygote=zygote)
    assert row["launch"] == "exec" and row["status"] == "ok" and row["threads"] == 2


def test_a_zygote_with_a_thread_is_refused(tmp_path):
    (tmp_path / "threaded.py").write_text("import threading, time\n"
                                          "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), child_env()["PYTHONPATH"]])}
    with pytest.raises(ZygoteError, match="has 2 threads after its imports"):
        Zygote(env, preload=PRELOAD + ("threaded",))


def test_children_die_with_the_zygote():
    z = _zygote_for({"CKPT_PROFILE_FAULT": "hang"})
    z._send({"args": [json.dumps(NUMPY_TRAIN.as_dict()), "{}"], "stdout": os.devnull, "stderr": os.devnull})
    child = psutil.Process(z._reply(10)["pid"])
    z.close()
    child.wait(10)
    assert not child.is_running()


def test_the_local_executor_forks_from_one_zygote_per_job(tmp_path):
    from profiling.executors import LocalExecutor
    from profiling.sweep import run_sweep
    grid = {"depth": [2, 3, 4], "width": 16, "batch": 8}
    df = run_sweep([grid], tmp_path, executor=LocalExecutor(jobs=2), progress=False, iters=1)
    assert set(df["launch"]) == {"fork"} and set(df["status"]) == {"ok"}
    df = run_sweep([grid], tmp_path / "exec", executor=LocalExecutor(fork=False), progress=False, iters=1)
    assert set(df["launch"]) == {"exec"}
