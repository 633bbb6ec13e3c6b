"""Planners in sweeps: revolve with slots and optimal with a byte budget run as rows, end to end through the CLI."""

import pytest

import ckpt
import profiling.runner
from profiling.cli import main
from profiling.config import Config, strategies_without_options, validate
from profiling.sweep import load_results

DEPTH, WIDTH, BATCH = 8, 64, 256


def test_a_sweep_file_of_planner_grids_gives_ok_rows_within_budget(tmp_path):
    pytest.importorskip("torch")
    model = ckpt.MLP([WIDTH] * (DEPTH + 1), activation="relu", loss="mse", dtype="float32")
    low = ckpt.predict_memory(model, "recompute", batch=BATCH).peak_bytes
    high = ckpt.predict_memory(model, "sqrt_n", batch=BATCH).peak_bytes
    budget = (low + high) // 2                                        # √n does not fit, recompute does
    grid = f"depth = {DEPTH}\nwidth = {WIDTH}\nbatch = {BATCH}\n"
    sweep = tmp_path / "planners.toml"
    sweep.write_text(f'[run]\niters = 1\nwarmup = 0\n\n[[grid]]\nbackend = "numpy"\n{grid}strategy = "revolve"\n'
                     f'slots = 2\n\n[[grid]]\nbackend = ["numpy", "torch"]\n{grid}strategy = "optimal"\n'
                     f'budget = "{budget}B"\n')                   # bytes written with a unit
    assert main(["sweep", "--config", str(sweep), "--out", str(tmp_path / "out"), "--no-report",
                 "--no-progress"]) == 0
    rows = load_results(tmp_path / "out").set_index(["backend", "strategy"])
    assert (rows["status"] == "ok").all(), rows["error"].tolist()
    assert rows.loc[("numpy", "revolve"), "forward_steps"] == ckpt.revolve(DEPTH, 2).forward_steps
    numpy_row, torch_row = rows.loc[("numpy", "optimal")], rows.loc[("torch", "optimal")]
    assert numpy_row["budget"] == budget and numpy_row["predicted_peak_bytes"] <= budget
    assert numpy_row["engine_peak_bytes"] <= budget                             # counted by the engine itself
    # torch plans over its own 2·depth stages (profiling.torch_costs), the profile its prediction uses; the
    # budget bounds the step's peak there (the optimizer's update after the backward is not the plan's)
    from profiling.torch_costs import mlp_profile
    profile = mlp_profile(DEPTH, WIDTH, BATCH)
    plan = ckpt.schedule_for(profile, "optimal", budget_bytes=budget)
    assert ckpt.predict_memory(profile, plan).peak_bytes <= budget and torch_row["budget"] == budget
    assert torch_row["forward_steps"] == plan.forward_steps == torch_row["predicted_forward_steps"]


def test_budget_flags_read_units_and_planners_name_their_missing_option(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(profiling.runner, "run_config", lambda *a, **k: pytest.fail("ran"))
    assert main(["sweep", "--strategy", "optimal", "--budget", "8MiB", "--depth", "4", "--dry-run"]) == 0
    assert f"budget={8 * 2**20}" in capsys.readouterr().out
    assert main(["sweep", "--strategy", "revolve", "--depth", "4", "--out", str(tmp_path)]) == 2
    assert "strategy 'revolve' needs --slots" in capsys.readouterr().err
    assert main(["sweep", "--strategy", "optimal", "--budget", "8 parsecs", "--dry-run"]) == 2
    assert Config(strategy="optimal", budget="1KiB").strategy_options == {"budget_bytes": 1024}
    validate(Config(strategy="revolve", slots=3))


def test_strategy_all_leaves_out_planners_that_need_options_and_says_so(capsys):
    runnable, left_out = strategies_without_options()
    assert {"revolve", "optimal", "chen_greedy"} <= set(left_out) and "sqrt_n" in runnable
    assert main(["sweep", "--depth", "2", "--strategy", "all", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "strategy=revolve" not in out and "strategy=recompute" in out
    assert "leaves out" in err and "revolve" in err
