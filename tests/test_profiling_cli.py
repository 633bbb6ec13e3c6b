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
])
def test_bad_input_is_a_clear_error(args, words, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(profiling.runner, "run_config", lambda *a, **k: pytest.fail("ran"))
    assert main(["sweep", *args, "--out", str(tmp_path)]) == 2
    assert words in capsys.readouterr().err


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


def test_example_sweep_file_is_valid(capsys):
    assert main(["sweep", "--config", "scripts/sweep_example.toml", "--dry-run"]) == 0
    assert "configurations" in capsys.readouterr().out
