"""Faults: a sweep killed mid-run, torn and garbage lines, two sweeps at once, a changed grid, out of memory."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import profiling.runner
from profiling.cli import main
from profiling.config import Config
from profiling.runner import run_config
from profiling.sweep import RESULTS, TORN, expand, folder_lock, read_rows, run_sweep

from .test_profiling_sweep import FakeRunner

ROOT = Path(__file__).resolve().parent.parent
GRID = {"depth": [2, 3, 4], "width": 16, "batch": 8}


SLOW_PLUGIN = '''
import os, time, ckpt

@ckpt.register_strategy("slow_at_5")
def slow_at_5(n):
    """store_all, but stalls for a minute at depth 5 unless SLOW_AT_5=off."""
    if n == 5 and os.environ.get("SLOW_AT_5") != "off":
        time.sleep(60)
    return ckpt.make_schedule("store_all", n)
'''


def _wait_for(condition, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _lines(out: Path) -> list[str]:
    path = out / RESULTS
    return path.read_text().splitlines() if path.exists() else []


def _slow_sweep(tmp_path, depths: list[str]) -> tuple[list[str], dict, Path]:
    """(command, environment, out) of a CLI sweep whose depth-5 configuration stalls for a minute."""
    (tmp_path / "slowplug.py").write_text(SLOW_PLUGIN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "profiling", "sweep", "--plugin", "slowplug", "--strategy", "slow_at_5",
           "--depth", *depths, "--width", "16", "--batch", "8", "--iters", "1", "--out", str(out),
           "--no-progress", "--no-report"]
    return cmd, env, out


def test_kill_9_mid_sweep_then_resume_keeps_every_row_once_and_leaves_no_orphan(tmp_path):
    cmd, env, out = _slow_sweep(tmp_path, ["2", "3", "5"])
    sweep = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: len(_lines(out)) == 2), "the first two rows never arrived"
        parent = psutil.Process(sweep.pid)
        # the zygote and the depth-5 child it forked (every row's process descends from the sweep)
        assert _wait_for(lambda: len(parent.children(recursive=True)) >= 2), "the depth-5 child never started"
        descendants = parent.children(recursive=True)
        os.kill(sweep.pid, signal.SIGKILL)
        sweep.wait()
        gone = lambda p: not p.is_running() or p.status() == psutil.STATUS_ZOMBIE  # noqa: E731
        assert _wait_for(lambda: all(gone(p) for p in descendants), 10), "a measuring process outlived the sweep"
    finally:
        sweep.kill()
    assert {json.loads(line)["launch"] for line in _lines(out)} == {"fork"}
    env["SLOW_AT_5"] = "off"
    subprocess.run(cmd + ["--resume"], env=env, check=True, capture_output=True)
    keys = [json.loads(line)["key"] for line in _lines(out)]
    assert len(keys) == 3 and len(set(keys)) == 3 and all(r["status"] == "ok" for r in read_rows(out))


def test_a_torn_last_line_is_set_aside_and_the_next_row_starts_on_its_own_line(tmp_path, monkeypatch, capsys):
    c = expand(GRID)[0]
    torn = '{"key": "depth=3|wid'
    (tmp_path / RESULTS).write_text(json.dumps({**c.as_dict(), "key": c.key, "status": "ok"}) + "\n" + torn)
    monkeypatch.setattr(profiling.runner, "run_config", FakeRunner())
    df = run_sweep([GRID], tmp_path, resume=True, progress=False)
    assert len(df) == 3 and len(_lines(tmp_path)) == 3
    assert all(json.loads(line) for line in _lines(tmp_path))
    assert (tmp_path / TORN).read_text() == torn + "\n"
    assert "torn line" in capsys.readouterr().err


def test_every_unparseable_line_is_reported_with_its_number(tmp_path, capsys):
    c = Config(depth=2)
    good = json.dumps({**c.as_dict(), "key": c.key, "status": "ok"})
    (tmp_path / RESULTS).write_text("\n".join([good, "garbage", "[1, 2]", "7", good]) + "\n")
    assert len(read_rows(tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"{RESULTS}:2: not JSON" in err and f"{RESULTS}:3: not a result row" in err and f"{RESULTS}:4:" in err


def test_a_resumed_sweep_reports_each_unparseable_line_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(profiling.runner, "run_config", FakeRunner())
    run_sweep([GRID], tmp_path, progress=False)
    with open(tmp_path / RESULTS, "a") as f:
        f.write("garbage\n")
    run_sweep([{**GRID, "depth": [2, 3, 4, 5]}], tmp_path, resume=True, extend=True, progress=False)
    assert capsys.readouterr().err.count("not JSON") == 1        # the sweep reads its file twice (thrice with its report)


def test_a_second_sweep_into_a_busy_folder_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(profiling.runner, "run_config", lambda *a, **k: pytest.fail("ran"))
    with folder_lock(tmp_path):
        with pytest.raises(RuntimeError, match=f"another sweep \\(pid {os.getpid()}\\) is writing to"):
            run_sweep([GRID], tmp_path, progress=False)
        assert main(["sweep", "--depth", "2", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "another sweep" in capsys.readouterr().err


def test_a_second_sweep_process_into_a_running_sweeps_folder_exits_2_and_writes_nothing(tmp_path):
    cmd, env, out = _slow_sweep(tmp_path, ["2", "5"])
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: len(_lines(out)) == 1), "the first sweep's first row never arrived"
        second = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and f"another sweep (pid {first.pid}) is writing to" in second.stderr
        assert len(_lines(out)) == 1                      # the second wrote nothing
    finally:
        first.kill()
        first.wait()


def test_resume_with_a_different_grid_is_refused_unless_extended(tmp_path, monkeypatch):
    monkeypatch.setattr(profiling.runner, "run_config", FakeRunner())
    run_sweep([GRID], tmp_path, progress=False)
    wider = {**GRID, "depth": [2, 3, 4, 5]}
    with pytest.raises(ValueError, match="holds a different sweep .* pass --extend"):
        run_sweep([wider], tmp_path, resume=True, progress=False)
    runner = FakeRunner()
    monkeypatch.setattr(profiling.runner, "run_config", runner)
    run_sweep([{**GRID, "depth": 3}], tmp_path, resume=True, progress=False)     # a subset: nothing new
    assert runner.ran == []
    df = run_sweep([wider], tmp_path, resume=True, extend=True, progress=False)
    assert runner.ran == ["depth=5|width=16|batch=8"] and len(df) == 4
    record = json.loads((tmp_path / "sweep.json").read_text())
    assert len(record["keys"]) == 4 and len(record["grids"]) == 2


@pytest.mark.parametrize("launch", ["exec", "fork"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_running_out_of_memory_is_an_oom_row(backend, launch):
    from profiling.zygote import PRELOAD, TORCH_PRELOAD, Zygote
    big = Config(backend=backend, depth=4, width=1024, batch=4096)     # 16 MiB per activation
    zygote = Zygote(preload=PRELOAD + (TORCH_PRELOAD if backend == "torch" else ())) if launch == "fork" else None
    try:
        row = run_config(big, memory_limit_mb=24, iters=1, zygote=zygote, memcheck=False)   # the check would refuse it first
    finally:
        if zygote:
            zygote.close()
    assert row["status"] == "oom" and row["launch"] == launch, row.get("error")
    words = "MemoryError" if backend == "numpy" else "DefaultCPUAllocator"
    assert words in row["error"]
