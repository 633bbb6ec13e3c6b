"""Profiles: the memory model on a Profile predicts what it predicts on the Chain; JSON; torch; the plan command."""

import argparse

import numpy as np
from dataclasses import replace

import pytest

import ckpt
from ckpt import Profile, StageCost

STRATEGIES = [("store_all", {}), ("recompute", {}), ("sqrt_n", {}), ("sqrt_n", {"segments": 2}),
              ("revolve", {"slots": 2}), ("revolve", {"slots": 4})]


@pytest.mark.parametrize("activation", ["relu", "identity", "tanh"])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_profile_predicts_the_chains_peak_for_every_strategy(activation, loss):
    model = ckpt.MLP([12, 40, 7, 30, 30, 5, 9], activation=activation, loss=loss, l2=0.1)
    profile = Profile.from_chain(model, 33)
    for strategy, options in STRATEGIES:
        chain = ckpt.predict_memory(model, strategy, batch=33, **options)
        mine = ckpt.predict_memory(profile, strategy, **options)
        assert (mine.peak_bytes, mine.peak_saved_bytes, mine.peak_activation_bytes) == \
               (chain.peak_bytes, chain.peak_saved_bytes, chain.peak_activation_bytes), (strategy, options)
    for budget in (ckpt.min_feasible_budget(profile), ckpt.predict_memory(profile, "store_all").peak_bytes):
        plan = ckpt.optimal(profile, budget)
        assert ckpt.predict_memory(model, plan, batch=33).peak_bytes == ckpt.predict_memory(profile, plan).peak_bytes


def test_save_and_load_round_trip(tmp_path):
    profile = Profile.from_chain(ckpt.MLP([4, 8, 8, 2]), 16)
    profile.save(tmp_path / "p.json")
    again = Profile.load(tmp_path / "p.json")
    assert again == profile and again.source == profile.source


def test_by_hand_and_bad_values():
    stage = StageCost(forward_time=1.0, backward_time=2.0, output_bytes=100, tape_bytes=150, tape_keeps_output=True)
    profile = Profile((stage,) * 3, input_bytes=100)
    assert profile.tape_own_bytes(2) == 50
    assert ckpt.predict_memory(profile, "store_all").peak_bytes == 3 * 150 + 100      # three tapes and δ_3
    with pytest.raises(ValueError, match="output_bytes must be an int ≥ 0"):
        StageCost(forward_time=1, backward_time=1, output_bytes=-1, tape_bytes=0)
    with pytest.raises(ValueError, match="needs at least one stage"):
        Profile((), 0)


def test_a_tape_smaller_than_what_it_keeps_is_refused():
    """tape_bytes counts a kept input or output: a tape that says it keeps its 2 MiB input in 0 bytes would
    give the stage negative bytes of its own, which the planner's pruning (held bytes ≥ 0) cannot take — it
    refused the least feasible budget of such a profile."""
    embedding = StageCost(forward_time=1, backward_time=1, output_bytes=2**18, tape_bytes=0, tape_keeps_input=True)
    layer = StageCost(forward_time=1, backward_time=2, output_bytes=2**18, tape_bytes=2**22, tape_keeps_input=True)
    with pytest.raises(ValueError, match=r"stage 1's tape_bytes \(0\) is less than what it says it keeps "
                                         r"\(input 2,097,152 \+ output 0 B\)"):
        Profile((embedding, layer), input_bytes=2**21)
    Profile((replace(embedding, tape_keeps_input=False), layer), input_bytes=2**21)


def test_schedule_for_profiles_a_chain_when_the_strategy_needs_it():
    model = ckpt.MLP([8, 16, 16, 16, 4])
    assert ckpt.schedule_for(model, "sqrt_n").forward_steps == 6
    plan = ckpt.schedule_for(model, "optimal", batch=8, budget_bytes="1MiB")
    assert plan.forward_steps == 4
    with pytest.raises(ValueError, match="pass batch="):
        ckpt.schedule_for(model, "optimal", budget_bytes="1MiB")


def test_from_torch_uses_the_saved_tensor_recorder():
    torch = pytest.importorskip("torch")
    from torch import nn
    torch.manual_seed(0)
    stages = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))
    x = torch.randn(8, 16)
    profile = Profile.from_torch(stages, x, repeats=2)
    assert [s.tape_bytes for s in profile.stages] == ckpt.saved_bytes(stages, x)
    assert [s.output_bytes for s in profile.stages] == [8 * 32 * 4] * 4 + [8 * 4 * 4]
    assert [s.tape_keeps_input for s in profile.stages] == [True, False, True, False, True]
    assert [s.tape_keeps_output for s in profile.stages] == [False, True, False, True, False]
    assert profile.stage(1).grad_bytes == (16 * 32 + 32) * 4 and profile.time_unit == "seconds"
    assert ckpt.predict_memory(profile, ckpt.optimal(profile, "1MiB")).peak_bytes <= 2**20


def run_plan(*argv):
    from profiling import plan
    parser = argparse.ArgumentParser()
    plan.add_parser(parser.add_subparsers())
    args = parser.parse_args(["plan", *argv])
    return args.run(args)


def test_plan_command(capsys):
    assert run_plan("--depth", "12", "--width", "32", "--batch", "512", "--budget", "1MiB") == 0
    out = capsys.readouterr().out
    assert "plan: optimal, budget 1,048,576 B" in out and "predicted peak:" in out and "forward steps:" in out
    peak = int(out.split("predicted peak: ")[1].split(" B")[0].replace(",", ""))
    assert peak <= 2**20
    assert run_plan("--depth", "12", "--budget", "1KiB") == 2
    assert "least feasible budget" in capsys.readouterr().out
    assert run_plan("--depth", "10", "--strategy", "revolve", "--slots", "2") == 0
    assert "forward steps: 30" in capsys.readouterr().out
