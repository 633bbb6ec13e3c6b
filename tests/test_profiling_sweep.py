"""Sweep: grid expansion, bad input before anything runs, rows on disk, resume."""

import json
import os

import pytest

import profiling.runner
from profiling.sweep import RESULTS, expand, load_grid_file, load_results, read_rows, run_sweep
from profiling.workloads import Config

GRID = {"backend": "numpy", "depth": [2, 3], "width": 16, "batch": 8,
        "strategy": ["store_all", "sqrt_n"], "mode": ["train", "predict"]}


def test_expand_collapses_prediction_rows_and_drops_duplicates():
    configs = expand(GRID)
    assert len(configs) == 2 * (2 + 1)                   # per depth: 2 strategies + 1 predict
    assert {c.strategy for c in configs if c.mode == "predict"} == {"none"}
    assert len(expand([GRID, GRID])) == len(configs)
    assert len(expand(GRID, repeats=2)) == 2 * len(configs)


@pytest.mark.parametrize("field, value, words", [
    ("strategy", "fastest", "unknown strategy 'fastest'"), ("backend", "jax", "unknown backend 'jax'"),
    ("device", "tpu", "unknown device 'tpu'"), ("mode", "eval", "unknown mode 'eval'"),
    ("optimizer", "lbfgs", "unknown optimizer"), ("depth", 0, "depth must be an int ≥ 1")])
def test_bad_values_are_named_with_the_allowed_ones(field, value, words):
    with pytest.raises(ValueError, match=words):
        expand({**GRID, field: value})


def test_empty_grid_and_unknown_field():
    with pytest.raises(ValueError, match="empty"):
        expand({**GRID, "depth": []})
    with pytest.raises(ValueError, match="unknown grid field"):
        expand({**GRID, "layers": 3})


def test_numpy_on_cuda_is_refused():
    with pytest.raises(ValueError, match="numpy backend runs on cpu only"):
        expand({"backend": "numpy", "device": "cuda"})


def _has_cuda():
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.skipif(_has_cuda(), reason="checks the no-GPU error")
def test_cuda_without_gpu_fails_before_running(tmp_path, monkeypatch):
    monkeypatch.setattr(profiling.runner, "run_config", lambda *a, **k: pytest.fail("ran"))
    with pytest.raises(RuntimeError, match="cuda"):
        run_sweep([{"backend": "torch", "device": "cuda"}], tmp_path, progress=False)


def test_unwritable_output_fails_before_running(tmp_path, monkeypatch):
    monkeypatch.setattr(profiling.runner, "run_config", lambda *a, **k: pytest.fail("ran"))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="cannot write"):
        run_sweep([GRID], blocker / "out", progress=False)


class FakeRunner:
    """Records the configurations run; raises KeyboardInterrupt after ``stop_after`` of them."""

    def __init__(self, stop_after=None):
        self.ran, self.stop_after = [], stop_after

    def __call__(self, c, **opts):
        if self.stop_after is not None and len(self.ran) == self.stop_after:
            raise KeyboardInterrupt
        self.ran.append(c.key)
        return {**c.as_dict(), "key": c.key, "status": "ok", "peak_bytes": 1}


def test_rows_are_appended_and_resume_skips_finished(tmp_path, monkeypatch):
    first = FakeRunner(stop_after=2)
    monkeypatch.setattr(profiling.runner, "run_config", first)
    with pytest.raises(KeyboardInterrupt):
        run_sweep([GRID], tmp_path, progress=False)
    assert len(read_rows(tmp_path)) == 2                      # on disk before the interruption
    with pytest.raises(FileExistsError, match="--resume"):
        run_sweep([GRID], tmp_path, progress=False)
    second = FakeRunner()
    monkeypatch.setattr(profiling.runner, "run_config", second)
    df = run_sweep([GRID], tmp_path, resume=True, progress=False)
    assert not set(first.ran) & set(second.ran)
    assert len(second.ran) == len(expand(GRID)) - 2 and len(df) == len(expand(GRID))
    third = FakeRunner()
    monkeypatch.setattr(profiling.runner, "run_config", third)
    run_sweep([GRID], tmp_path, resume=True, progress=False)
    assert third.ran == []


def test_resume_can_retry_failed_rows(tmp_path, monkeypatch):
    c = expand(GRID)[0]
    (tmp_path / RESULTS).write_text(json.dumps({**c.as_dict(), "key": c.key, "status": "timeout"}) + "\n")
    runner = FakeRunner()
    monkeypatch.setattr(profiling.runner, "run_config", runner)
    run_sweep([GRID], tmp_path, resume=True, progress=False)
    assert c.key not in runner.ran
    run_sweep([GRID], tmp_path, resume=True, retry_failed=True, progress=False)
    assert c.key in runner.ran
    assert load_results(tmp_path).set_index("key").loc[c.key, "status"] == "ok"


def test_a_torn_last_line_is_skipped(tmp_path):
    c = Config()
    (tmp_path / RESULTS).write_text(json.dumps({**c.as_dict(), "key": c.key, "status": "ok"}) + "\n{\"key\": ")
    assert len(read_rows(tmp_path)) == 1


def test_toml_sweep_file(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('[run]\ntimeout = 9\n\n[[grid]]\ndepth = [2, 4]\nstrategy = "sqrt_n"\n\n[[grid]]\nbatch = 4\n')
    grids, run = load_grid_file(f)
    assert run == {"timeout": 9} and len(expand(grids)) == 3
    f.write_text("[run]\ntimeot = 9\n[grid]\ndepth = 2\n")
    with pytest.raises(ValueError, match="s.toml' \\[run\\]: unknown run option 'timeot'"):
        load_grid_file(f)


@pytest.mark.skipif(os.cpu_count() is None, reason="needs subprocesses")
def test_a_real_tiny_sweep_writes_rows(tmp_path):
    df = run_sweep([{"backend": "numpy", "depth": 3, "width": 16, "batch": 8, "mode": ["train", "predict"]}],
                   tmp_path, progress=False, iters=1)
    assert list(df["status"]) == ["ok", "ok"] and (tmp_path / "environment.json").exists()


def test_fresh_starts_over_with_a_new_environment_header(tmp_path, monkeypatch):
    monkeypatch.setattr(profiling.runner, "run_config", FakeRunner())
    run_sweep([GRID], tmp_path, progress=False)
    (tmp_path / "environment.json").write_text('{"run": "an old sweep"}\n')
    monkeypatch.setattr(profiling.runner, "run_config", FakeRunner())
    df = run_sweep([GRID], tmp_path, fresh=True, progress=False)
    assert len(df) == len(expand(GRID))
    assert "an old sweep" not in (tmp_path / "environment.json").read_text()


def test_local_jobs_stream_every_row_and_warn_that_timings_share_cores(tmp_path, monkeypatch, capsys):
    from profiling.executors import LocalExecutor, make_executor
    monkeypatch.setattr(profiling.runner, "run_config", FakeRunner())
    df = run_sweep([GRID], tmp_path, executor=LocalExecutor(jobs=3), progress=False)
    assert sorted(df["key"]) == sorted(c.key for c in expand(GRID))
    assert "timings share" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--jobs is for --executor local"):
        make_executor("ray", jobs=2)
    with pytest.raises(ValueError, match="jobs must be an int ≥ 1, got 0"):
        LocalExecutor(0)
