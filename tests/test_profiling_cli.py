"""The command line: help, bad input as a clear error before anything runs, a dry run."""

import subprocess
import sys

import pytest

import profiling.runner
from profiling.cli import main


def test_help_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "profiling", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "ckpt-profile sweep --preset default" in out.stdout


@pytest.mark.parametrize("args, words", [
    (["--strategy", "nope", "--depth", "2"], "unknown strategy 'nope'"),
    (["--jobs", "0", "--depth", "2"], "argument --jobs: jobs must be an integer ≥ 1, got 0"),
    (["--launch", "spawn", "--depth", "2"], "argument --launch: invalid choice: 'spawn'"),
    (["--backend", "jax"], "unknown backend 'jax'"),
    (["--mode", "eval", "--depth", "2"], "unknown mode 'eval'"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--config", "/no/such.toml"], "no sweep file"),
    ([], "nothing to run"),
    (["--strategy", "revolve", "--depth", "4"], "strategy 'revolve' needs --slots"),
    (["--fused", "true", "--optimizer", "none"], "fused=true fuses the optimizer step into the backward, so it needs "
                                                 "mode='train' and an optimizer (sgd, momentum, adam)"),
    (["--fused", "maybe"], "argument --fused: expected true or false, got 'maybe'"),
    (["--no-memcheck", "--depth", "0"], "depth must be an int ≥ 1, got 0"),
])
def test_bad_input_is_a_clear_error(args, words, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(profiling.runner, "run_config", lambda *a, **k: pytest.fail("ran"))
    assert main(["sweep", *args, "--out", str(tmp_path)]) == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize("text, words", [
    ("[[grid]]\ndepth = []\n", "grid field(s) depth have no values (an empty list)"),
    ("[[grid]]\nstrategy = 'sqrt_n'\noptions = {segments = []}\n", "grid field(s) segments have no values"),
    ("[run]\nmemcheck = 'no'\n[[grid]]\ndepth = 2\n", "[run]: memcheck must be true or false, got 'no'"),
    ("[[grid]]\nfused = true\nmode = 'train'\noptimizer = 'none'\n", "fused=true fuses the optimizer step"),
])
def test_bad_sweep_file_is_a_clear_error(text, words, capsys, tmp_path):
    (tmp_path / "sweep.toml").write_text(text)
    assert main(["sweep", "--config", str(tmp_path / "sweep.toml"), "--dry-run"]) == 2
    assert words in capsys.readouterr().err


def test_memcheck_off_reaches_every_configuration(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(profiling.runner, "run_config", lambda c, **k: seen.append(k["memcheck"]) or
                        {**c.as_dict(), "key": c.key, "status": "error", "error": "not run"})
    assert main(["sweep", "--depth", "2", "--no-memcheck", "--no-report", "--no-progress", "--out", str(tmp_path)]) == 0
    (tmp_path / "run.toml").write_text("[run]\nmemcheck = false\n[[grid]]\ndepth = 3\n")
    assert main(["sweep", "--config", str(tmp_path / "run.toml"), "--no-report", "--no-progress", "--resume",
                 "--extend", "--out", str(tmp_path)]) == 0
    assert seen == [False, False]


@pytest.mark.parametrize("args, words", [
    (["plan"], "--strategy optimal plans under a byte budget: give --budget (e.g. --budget 512MiB)"),
    (["plan", "--profile", "/no/such.json", "--budget", "1MiB"], "profile: no profile file at '/no/such.json'"),
    (["timeline", "--depth", "2", "--strategy", "revolve", "--out", "OUT"], "strategy 'revolve' needs --slots"),
    (["timeline", "--depth", "2", "--out", "FILE/sub"], "cannot write to output folder"),
])
def test_plan_and_timeline_bad_input(args, words, capsys, tmp_path):
    (tmp_path / "FILE").write_text("x")
    args = [a.replace("OUT", str(tmp_path / "t")).replace("FILE", str(tmp_path / "FILE")) for a in args]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert words in captured.out + captured.err and "Traceback" not in captured.err


def test_plan_refuses_a_file_that_is_not_a_profile(capsys, tmp_path):
    (tmp_path / "p.json").write_text('{"grid": []}')
    assert main(["plan", "--profile", str(tmp_path / "p.json"), "--budget", "1MiB"]) == 2
    assert "is not a ckpt.Profile written by Profile.save (KeyError: 'stages')" in capsys.readouterr().err


def test_unwritable_out_is_a_clear_error(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    assert main(["sweep", "--preset", "smoke", "--out", str(tmp_path / "f" / "sub")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_dry_run_lists_configurations(capsys):
    assert main(["sweep", "--preset", "smoke", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "depth=4|width=64|batch=128" in out and "configurations" in out


def test_strategy_all_expands(capsys):
    assert main(["sweep", "--depth", "2", "--strategy", "all", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "strategy=recompute" in out and "strategy=sqrt_n" in out
    assert "revolve" not in out and "optimal" not in out                # they need options: named in grids of their own


def test_example_sweep_file_is_valid(capsys):
    assert main(["sweep", "--config", "scripts/sweep_example.toml", "--dry-run"]) == 0
    assert "configurations" in capsys.readouterr().out
