"""Analysis recovers known laws from synthetic frames."""

import numpy as np
import pandas as pd
import pytest

from profiling import analysis as A
from profiling.synthetic import failed_row, noisy, synthetic_frame


@pytest.fixture
def frame():
    return A.prepare(synthetic_frame())


def test_line_fit_recovers_a_line():
    x = np.arange(1, 10)
    fit = A.line_fit(x, 3 + 2 * x)
    assert fit["a"] == pytest.approx(3) and fit["b"] == pytest.approx(2) and fit["r2"] == pytest.approx(1)


def test_loglog_slopes_recover_the_laws(frame):
    slopes = A.loglog_slopes(frame).set_index("line")["slope"]
    assert slopes["store_all"] == pytest.approx(1, abs=1e-9)
    assert slopes["sqrt_n"] == pytest.approx(0.5, abs=1e-9)
    assert slopes["recompute"] == pytest.approx(0, abs=1e-9)
    assert slopes["predict"] == pytest.approx(0, abs=1e-9)


def test_slopes_survive_one_percent_noise():
    slopes = A.loglog_slopes(A.prepare(noisy(synthetic_frame(), 0.01))).set_index("line")["slope"]
    assert slopes["sqrt_n"] == pytest.approx(0.5, abs=0.03)


def test_linear_fits_along_depth_and_batch(frame):
    lin = A.linear_fits(frame, "activation_bytes")
    store = lin[lin["line"] == "store_all"].set_index("axis")
    assert store.loc["depth", "r2"] == pytest.approx(1) and store.loc["batch", "r2"] == pytest.approx(1)
    assert store.loc["batch", "b"] == pytest.approx(4096 / 64 * 4)   # unit·depth/64 per batch row at depth 4


def test_product_fit_of_store_all_is_exact(frame):
    prod = A.product_fits(frame).set_index("line")
    assert prod.loc["store_all", "r2"] == pytest.approx(1)
    assert prod.loc["store_all", "b"] == pytest.approx(4096 / 64)


def test_train_predict_ratio(frame):
    r = A.train_predict_ratio(frame)
    row = r[(r["strategy"] == "store_all") & (r["depth"] == 64) & (r["batch"] == 64)].iloc[0]
    assert row["ratio"] == pytest.approx((4096 * 64 + 64000) / 4096)


def test_prediction_error_per_row(frame):
    assert A.prediction_errors(frame)["pred_error"].to_numpy() == pytest.approx(1 / 1.01 - 1)
    assert A.error_summary(frame)["max_abs_error"].max() == pytest.approx(1 - 1 / 1.01)


def test_tradeoff_against_store_all(frame):
    t = A.tradeoff(frame)
    row = t[(t["strategy"] == "sqrt_n") & (t["depth"] == 64)].iloc[0]
    assert row["time_overhead"] == pytest.approx(1.0)
    assert row["activation_change"] == pytest.approx(8 / 64 - 1)          # a reduction is negative


def test_failed_rows_are_left_out_of_the_analysis():
    df = pd.concat([synthetic_frame(), pd.DataFrame([failed_row()])], ignore_index=True)
    assert 9999 not in set(A.prepare(df)["depth"])


def test_targets_pass_on_exact_laws(frame):
    t = A.targets(frame)
    assert t["met"].all(), t
    assert any("sqrt_n" in c for c in t["claim"])


def test_a_claim_on_sub_mib_rss_peaks_is_not_decided():
    torch_rows = synthetic_frame(backend="torch").assign(peak_meter="rss_max")
    small = A.prepare(pd.concat([synthetic_frame(), torch_rows], ignore_index=True))
    claims = A.targets(small).set_index("claim")["met"]
    assert claims["predict peak flat in depth (log-log slope, numpy)"] == True  # noqa: E712 (numpy bool)
    assert claims["predict peak flat in depth (log-log slope, torch)"].startswith("n/a: peaks of 0.")
    big = torch_rows.assign(peak_bytes=torch_rows["peak_bytes"] * 2 ** 10)
    claims = A.targets(A.prepare(big)).set_index("claim")["met"]
    assert claims["predict peak flat in depth (log-log slope, torch)"] == True  # noqa: E712


def fused_twin(df: pd.DataFrame) -> pd.DataFrame:
    """df plus, for each training row, the same configuration fused: gradients gone from its peak."""
    train = df[df["mode"] == "train"]
    act = train["engine_activation_bytes"]
    fused = train.assign(fused=True, peak_bytes=act, tracemalloc_peak=act, grad_at_peak_bytes=0.0,
                         predicted_peak_bytes=act * 1.02, key=train["key"] + "|fused")
    return pd.concat([df.assign(fused=False), fused], ignore_index=True)


def test_fused_rows_are_compared_with_their_unfused_twin():
    prepared = A.prepare(fused_twin(synthetic_frame()))
    table = A.fused_comparison(prepared)
    one = table[(table["strategy"] == "sqrt_n") & (table["depth"] == 16) & (table["batch"] == 64)].iloc[0]
    assert one["fused_peak"] == pytest.approx(4096 * 16 ** 0.5) and one["fused_grads_at_peak"] == 0
    assert one["unfused_peak"] == pytest.approx(4096 * 4 + 16000) and one["unfused_grads_at_peak"] == 16000
    assert one["fused_error"] == pytest.approx(-0.02 / 1.02) and one["saving"] < 0
    assert len(table) == 3 * 7                                     # every training row has its twin


def test_fused_and_unfused_rows_are_never_mixed_in_a_comparison():
    prepared = A.prepare(fused_twin(synthetic_frame()))
    trade = A.tradeoff(prepared)
    fused_sqrt = trade[(trade["strategy"] == "sqrt_n") & trade["fused"] & (trade["depth"] == 64)].iloc[0]
    assert fused_sqrt["peak_change"] == pytest.approx(64 ** 0.5 / 64 - 1)      # against fused store_all only
    assert "fused" in A.train_predict_ratio(prepared)
    assert A.fused_comparison(A.prepare(synthetic_frame())).empty               # no fused rows: no table


def test_activation_memory_is_the_meters_high_water_less_gradients_and_optimizer_state():
    from profiling.synthetic import grid_frame
    df = grid_frame(backends=("numpy", "torch"), depths=(8,), optimizers=("adam",))
    df["optimizer_bytes"] = 1000
    df["torch_cpu_activation_peak"] = np.where(df["backend"] == "torch", 50_000.0, np.nan)
    df["tracemalloc_activation_peak"] = np.where(df["backend"] == "numpy", 40_000.0, np.nan)
    out = A.with_derived(df).set_index("backend")
    assert out.loc["torch", "activation_bytes"] == 49_000          # the allocator's figure includes the state
    assert out.loc["numpy", "activation_bytes"] == 40_000          # tracemalloc's step has no optimizer in it
    assert out.loc["torch", "activation_source"] == A.ALLOCATOR_ACTIVATION
    assert out.loc["numpy", "activation_source"] == A.TRACED_ACTIVATION
    old = A.with_derived(df.drop(columns=["torch_cpu_activation_peak", "tracemalloc_activation_peak"]))
    assert set(old["activation_source"]) == {"counted: executor ledger on the real arrays (its totals match tracemalloc)",
                                             "measured − gradients at peak (ledger) − optimizer"}

