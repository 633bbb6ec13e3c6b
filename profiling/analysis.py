"""Analysis: functions of a sweep's DataFrame alone (no files, no engine).

Which quantity each law is about matters.  A training peak holds the gradients
(∝ depth·width², whatever the strategy) besides the activations, so:

* ``peak_bytes`` — the meter's figure for the whole step (optimizer state, gradients,
  activations, temporaries).  "store_all is linear in depth and batch" is fitted on it.
* ``activation_bytes`` — the step's peak with gradients and optimizer state left out:
  the executor's ledger on the real run (``Stats.peak_activation_bytes``, numpy arrays or
  torch tensors; on numpy the same ledger's total matches tracemalloc, see ``pred_error``);
  where no ledger ran (plain torch, prediction on torch): measured peak − gradients − optimizer
  state.  The depth laws (slopes ≈ 1, ½, 0) are fitted on it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .config import analysis_columns, unset_columns

CONFIG = analysis_columns()          # every grid field of the schema (profiling.config)
SHAPE = ["backend", "device", "width", "dtype"]


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows whose status is ok."""
    return df[df["status"] == "ok"] if "status" in df else df


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: the median over repeats of every numeric column (ok rows only)."""
    df = ok_rows(df)
    config = [c for c in CONFIG if c in df]             # frames may predate a field; unset options are dropped
    num = [c for c in df.select_dtypes("number").columns if c not in CONFIG + ["repeat"]]
    keep = [c for c in ("impl", "peak_meter") if c in df]
    agg = df.groupby(config, dropna=False)[num].median()
    if keep:
        agg = agg.join(df.groupby(config, dropna=False)[keep].first())
    agg = agg.reset_index()
    return agg.drop(columns=unset_columns(agg))


def with_derived(df: pd.DataFrame) -> pd.DataFrame:
    """Add activation_bytes, other_bytes, pred_error and peak_with_params_bytes (see module doc)."""
    df = df.copy()
    for c in ("optimizer_bytes", "grad_bytes", "grad_at_peak_bytes", "saved_at_peak_bytes", "engine_activation_bytes"):
        if c not in df:
            df[c] = np.nan
    ledger = df["engine_activation_bytes"].notna()
    measured_act = (df["peak_bytes"] - df["optimizer_bytes"].fillna(0) - df["grad_bytes"].fillna(0)).clip(lower=0)
    df["activation_bytes"] = np.where(ledger, df["engine_activation_bytes"], measured_act)
    df["activation_source"] = np.where(ledger, "executor ledger", "measured − grads − optimizer")
    grads = df["grad_at_peak_bytes"].fillna(0)          # unknown (plain torch): inside other_bytes
    df["other_bytes"] = df["peak_bytes"] - df["optimizer_bytes"].fillna(0) - grads - df["saved_at_peak_bytes"]
    df["pred_error"] = (df["peak_bytes"] - df["predicted_peak_bytes"]) / df["predicted_peak_bytes"]
    df["peak_with_params_bytes"] = df["peak_bytes"] + df["param_bytes"]
    return df


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """ok rows, aggregated over repeats, with the derived columns: the input of every analysis."""
    return with_derived(aggregate(df))


def line_fit(x, y) -> dict:
    """Least squares y = a + b·x: {'a', 'b', 'r2', 'n'}."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or np.ptp(x) == 0:
        return {"a": np.nan, "b": np.nan, "r2": np.nan, "n": len(x)}
    b, a = np.polyfit(x, y, 1)
    ss_res, ss_tot = np.sum((y - (a + b * x)) ** 2), np.sum((y - y.mean()) ** 2)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    return {"a": a, "b": b, "r2": r2, "n": len(x)}


def _label(mode: str, strategy: str) -> str:
    return "predict" if mode == "predict" else strategy


def _sweeps(df: pd.DataFrame, axis: str, fixed: list[str], min_points: int = 3):
    """Groups of rows that vary ``axis`` alone (everything in ``fixed`` held), with ≥ min_points values."""
    for key, g in df.groupby(fixed, dropna=False):
        if g[axis].nunique() >= min_points:
            yield dict(zip(fixed, key)), g.sort_values(axis)


def linear_fits(df: pd.DataFrame, y: str = "peak_bytes") -> pd.DataFrame:
    """Per sweep along depth and along batch: y = a + b·axis, with R² (prepared frame)."""
    rows = []
    for axis, other in (("depth", "batch"), ("batch", "depth")):
        fixed = SHAPE + [other, "strategy", "mode", "optimizer"]
        for key, g in _sweeps(df, axis, fixed):
            fit = line_fit(g[axis], g[y])
            rows.append({**key, "axis": axis, "quantity": y, "line": _label(key["mode"], key["strategy"]),
                         "from": g[axis].min(), "to": g[axis].max(), **fit})
    return pd.DataFrame(rows)


def product_fits(df: pd.DataFrame, y: str = "activation_bytes") -> pd.DataFrame:
    """Per strategy: y = a + b·(depth·batch) over every depth and batch measured (prepared frame)."""
    rows = []
    for key, g in df.groupby(SHAPE + ["strategy", "mode", "optimizer"], dropna=False):
        x = g["depth"] * g["batch"]
        if x.nunique() < 3:
            continue
        key = dict(zip(SHAPE + ["strategy", "mode", "optimizer"], key))
        rows.append({**key, "line": _label(key["mode"], key["strategy"]), "quantity": y, **line_fit(x, g[y])})
    return pd.DataFrame(rows)


def loglog_slopes(df: pd.DataFrame, y: str = "activation_bytes", min_depth: int = 1) -> pd.DataFrame:
    """Per depth sweep: the slope of log y against log depth (≈1 store_all, ≈½ sqrt_n, ≈0 recompute/predict)."""
    rows = []
    fixed = SHAPE + ["batch", "strategy", "mode", "optimizer"]
    for key, g in _sweeps(df[df["depth"] >= min_depth], "depth", fixed):
        g = g[g[y] > 0]
        if len(g) < 3:
            continue
        fit = line_fit(np.log(g["depth"]), np.log(g[y]))
        rows.append({**key, "line": _label(key["mode"], key["strategy"]), "quantity": y,
                     "from": g["depth"].min(), "to": g["depth"].max(), "slope": fit["b"], "r2": fit["r2"], "n": fit["n"]})
    return pd.DataFrame(rows)


def train_predict_ratio(df: pd.DataFrame) -> pd.DataFrame:
    """Per backend, depth, batch and training strategy: train peak / predict peak (step alone, and with parameters)."""
    keys = SHAPE + ["depth", "batch"]
    pred = df[df["mode"] == "predict"].set_index(keys)[["peak_bytes", "peak_with_params_bytes"]]
    pred.columns = ["predict_peak_bytes", "predict_with_params_bytes"]
    train = df[df["mode"] == "train"].join(pred, on=keys, how="inner")
    train["ratio"] = train["peak_bytes"] / train["predict_peak_bytes"]
    train["ratio_with_params"] = train["peak_with_params_bytes"] / train["predict_with_params_bytes"]
    cols = keys + ["strategy", "optimizer", "peak_bytes", "predict_peak_bytes", "ratio", "ratio_with_params"]
    return train[cols].sort_values(keys + ["strategy", "optimizer"]).reset_index(drop=True)


def prediction_errors(df: pd.DataFrame) -> pd.DataFrame:
    """Per row: measured vs the engine's predicted peak, relative error (prepared frame)."""
    cols = CONFIG + ["peak_meter", "peak_bytes", "predicted_peak_bytes", "pred_error"]
    return df[[c for c in cols if c in df]].reset_index(drop=True)


def error_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per backend, device, meter and mode: median and worst |relative error| of the prediction."""
    df = df.assign(abs_error=df["pred_error"].abs())
    g = df.groupby(["backend", "device", "peak_meter", "mode"])["abs_error"]
    return pd.DataFrame({"rows": g.size(), "median_abs_error": g.median(), "max_abs_error": g.max()}).reset_index()


def tradeoff(df: pd.DataFrame) -> pd.DataFrame:
    """Per training row: time (fastest timed step) and memory relative to store_all at the same configuration."""
    keys = SHAPE + ["depth", "batch", "optimizer"]
    train = df[df["mode"] == "train"]
    clock = "time_min_s" if "time_min_s" in df else "time_s"      # the fastest step: least disturbed by other load
    base = train[train["strategy"] == "store_all"].set_index(keys)[[clock, "peak_bytes", "activation_bytes"]]
    base.columns = ["base_time_s", "base_peak_bytes", "base_activation_bytes"]
    t = train.join(base, on=keys, how="inner")
    t["time_s"] = t[clock]
    t["time_overhead"] = t["time_s"] / t["base_time_s"] - 1
    t["peak_saved"] = 1 - t["peak_bytes"] / t["base_peak_bytes"]
    t["activation_saved"] = 1 - t["activation_bytes"] / t["base_activation_bytes"]
    cols = keys + ["strategy", "time_s", "time_overhead", "peak_bytes", "peak_saved", "activation_saved"]
    return t[cols].sort_values(keys + ["strategy"]).reset_index(drop=True)


def decomposition(df: pd.DataFrame) -> pd.DataFrame:
    """Per training row: where the peak's bytes are — optimizer state, gradients, saved activations, rest.

    numpy and ckpt's torch backend split the peak with the executor's ledger; on plain torch
    the gradients present at the peak moment are not observable: they stay inside ``other_bytes``.
    """
    train = df[df["mode"] == "train"].copy()
    train["grads_at_peak"] = train["grad_at_peak_bytes"]      # NaN where unobservable: inside "rest"
    cols = CONFIG + ["param_bytes", "optimizer_bytes", "grads_at_peak", "saved_at_peak_bytes", "other_bytes",
                     "peak_bytes", "predicted_peak_bytes", "pred_error"]
    return train[[c for c in cols if c in train]].reset_index(drop=True)


def _pick(fits: pd.DataFrame, **match) -> pd.DataFrame:
    if fits.empty:
        return fits
    m = np.ones(len(fits), bool)
    for k, v in match.items():
        m &= (fits[k] == v).to_numpy()
    return fits[m]


RSS_RESOLUTION = 2 ** 20


def _below_rss_resolution(df: pd.DataFrame, backend: str, mode: str) -> str | None:
    """Why the rows' RSS peaks cannot decide a claim (median under 1 MiB), or None.

    The kernel counts resident pages per CPU in batches (see ``profiling.meters``):
    peaks of a few hundred KiB read anywhere from 60% to 100% of their size.
    """
    rows = df[(df["backend"] == backend) & (df["mode"] == mode)
              & df["peak_meter"].astype(str).str.startswith("rss")]
    median = rows["peak_bytes"].median()
    if rows.empty or median >= RSS_RESOLUTION:
        return None
    return f"n/a: peaks of {median / 2 ** 20:.2f} MiB are below RSS resolution"


def targets(df: pd.DataFrame) -> pd.DataFrame:
    """The issue's acceptance claims, checked on this frame: claim, measured value, target, met."""
    lin, act = linear_fits(df, "peak_bytes"), loglog_slopes(df, "activation_bytes")
    rows = []

    def add(claim, values, target, test, unresolved=None):
        values = [v for v in values if pd.notna(v)]
        if values:
            rows.append({"claim": claim, "value": ", ".join(f"{v:.4f}" for v in values), "target": target,
                         "met": unresolved or all(test(v) for v in values)})

    for axis in ("depth", "batch"):
        f = _pick(lin, axis=axis, strategy="store_all", mode="train", backend="numpy")
        add(f"store_all train peak linear in {axis} (R², numpy)", f["r2"], "≥ 0.99", lambda v: v >= 0.99)
        f = _pick(lin, axis=axis, strategy="store_all", mode="train", backend="torch")
        add(f"store_all train peak linear in {axis} (R², torch)", f["r2"], "≥ 0.99", lambda v: v >= 0.99)
    for backend in ("numpy", "torch"):
        f = _pick(act, line="predict", backend=backend)
        add(f"predict peak flat in depth (log-log slope, {backend})", f["slope"], "|slope| ≤ 0.1",
            lambda v: abs(v) <= 0.1, _below_rss_resolution(df, backend, "predict"))
        f = _pick(act, line="sqrt_n", mode="train", backend=backend)
        add(f"sqrt_n activation log-log slope in depth ({backend})", f["slope"], "0.4 – 0.6", lambda v: 0.4 <= v <= 0.6)
        f = _pick(act, line="store_all", mode="train", backend=backend)
        add(f"store_all activation log-log slope in depth ({backend})", f["slope"], "≈ 1 (0.9 – 1.1)",
            lambda v: 0.9 <= v <= 1.1)
        f = _pick(act, line="recompute", mode="train", backend=backend)
        add(f"recompute activation log-log slope in depth ({backend})", f["slope"], "≈ 0 (|slope| ≤ 0.1)",
            lambda v: abs(v) <= 0.1)
    numpy = df[(df["backend"] == "numpy")]
    if len(numpy):
        add("numpy: worst |measured − predicted| / predicted", [numpy["pred_error"].abs().max()], "≤ 0.05",
            lambda v: v <= 0.05)
    cuda = df[(df["device"] == "cuda")]
    if len(cuda):
        add("cuda allocated: worst |measured − predicted| / predicted", [cuda["pred_error"].abs().max()], "≤ 0.02",
            lambda v: v <= 0.02)
    return pd.DataFrame(rows, columns=["claim", "value", "target", "met"])
