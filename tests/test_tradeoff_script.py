"""scripts/tradeoff.py: its plans stay within their budgets, its claims table says what the numbers say."""

import sys
from pathlib import Path

import pandas as pd
import pytest

import ckpt

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import tradeoff  # noqa: E402


def test_every_plan_validates_and_optimal_keeps_to_its_budget():
    profile = ckpt.Profile.from_chain(ckpt.MLP([32, 256] + [32] * 8 + [256, 32]), 64)
    chosen = dict(tradeoff.plans(profile))
    peak = lambda label: ckpt.predict_memory(profile, chosen[label]).peak_bytes
    for schedule in chosen.values():
        schedule.validate()
    assert peak("optimal @sqrt_n") <= peak("sqrt_n")
    assert peak("optimal @recompute↔sqrt_n") <= (peak("recompute") + peak("sqrt_n")) // 2
    assert profile.schedule_time(chosen["optimal @sqrt_n"]) <= profile.schedule_time(chosen["sqrt_n"])


def row(strategy, peak, time, measured_time, paired):
    return {"backend": "torch", "chain": "gpt", "strategy": strategy, "predicted_peak_MiB": peak,
            "measured_peak_MiB": peak, "predicted_time_s": time, "measured_time_s": measured_time,
            "time_vs_sqrt_n": paired}


def test_the_claims_table_says_not_less_when_optimal_is_slower():
    frame = pd.DataFrame([row("sqrt_n", 10.0, 1.0, 1.0, 1.0), row("optimal @sqrt_n", 10.0, 0.9, 0.98, 1.02),
                          row("optimal @recompute↔sqrt_n", 8.0, 1.1, 1.1, 1.1)])
    line = tradeoff.claims(frame)[-1]
    assert "| 0.900× (less) | 1.020× (NOT less); 0.980× | 8.00 MiB < 10.00 MiB (measured 8.00) |" in line


def test_paired_ratios_are_taken_round_by_round():
    row = {}
    tradeoff._add_times(row, [2.0, 4.0, 9.0], [2.5, 5.0, 10.0])       # each round 0.8 or 0.9 of √n's
    assert row["measured_time_s"] == 4.0 and row["time_vs_sqrt_n"] == pytest.approx(0.8)


def test_the_gpt_chain_is_embedding_causal_blocks_and_head():
    torch = pytest.importorskip("torch")
    stages = tradeoff.gpt_stages(vocab=50, width=64, blocks=2, tokens=8)
    ids = torch.randint(0, 50, (2, 8))
    changed = ids.clone()
    changed[:, -1] = (ids[:, -1] + 1) % 50
    logits, logits_changed = stages(ids), stages(changed)
    assert len(stages) == 4 and logits.shape == (2, 8, 50)
    assert torch.allclose(logits[:, :-1], logits_changed[:, :-1], atol=1e-6)     # the last token is unseen
    assert not torch.allclose(logits[:, -1], logits_changed[:, -1])
