"""Analysis: functions of a sweep's DataFrame alone (no files, no engine).

Which quantity each law is about matters.  A training peak holds the gradients
(∝ depth·width², whatever the strategy) besides the activations, so:

* ``peak_bytes`` — the meter's figure for the whole step (optimizer state, gradients,
  activations, temporaries).  "store_all is linear in depth and batch" is fitted on it.
* ``activation_bytes`` — the step's activation memory: the high-water, over the step, of the
  bytes held less the gradients stored so far and the optimizer state (both grow with
  depth·width² whatever the strategy), *measured* the same way on both backends.  torch:
  torch's CPU allocator (``torch_cpu_activation_peak``: held − gradients, each gradient entering
  the allocator's timeline when autograd stores it) less ``optimizer_bytes``.  numpy:
  tracemalloc over one more training step run action by action (``tracemalloc_activation_peak``:
  each action's peak less the gradients stored before it; no optimizer in it).  Older frames and
  CUDA rows fall back to the executor's ledger (numpy, *counted*) or to the measured peak less the
  optimizer state and the gradients present at the peak.  ``activation_source`` says which,
  row by row.  The depth laws (slopes ≈ 1, ½, 0) are fitted on it.

Claims need data that can decide them: a depth law needs ≥ 3 depths from depth 8 on spanning
≥ 8× (``MIN_FIT_DEPTH``: below it a step's depth-independent few activations dominate), a linear
law ≥ 3 values; otherwise the claim reads "n/a: …", never "no".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .config import STRATEGY_OPTIONS, analysis_columns, unset_columns

CONFIG = analysis_columns()          # every grid field of the schema (profiling.config)
SHAPE = ["backend", "device", "width", "dtype"]


# What produced each peak figure: a row's ``peak_meter`` → its label in tables and plots.
METER_LABELS = {"tracemalloc_peak": "measured: tracemalloc", "torch_cpu_peak": "measured: torch CPU allocator",
                "rss_max": "measured: RSS", "rss_peak": "measured: RSS (sampled)", "rss_hwm": "measured: RSS (VmHWM)",
                "cuda_allocated": "measured: CUDA allocated", "cuda_reserved": "measured: CUDA reserved",
                "nvml_used": "measured: NVML device used"}
NEEDED = {"peak_bytes": np.nan, "predicted_peak_bytes": np.nan, "param_bytes": 0, "peak_meter": "",
          "time_s": np.nan, "impl": ""}


def meter_label(peak_meter) -> str:
    """'measured: <instrument>' for a row's ``peak_meter``."""
    return METER_LABELS.get(peak_meter, f"measured: {peak_meter}" if isinstance(peak_meter, str) and peak_meter
                            else "measured")


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows whose status is ok, with every column the analysis reads (a frame of failures has none)."""
    df = df[df["status"] == "ok"] if "status" in df else df
    missing = {c: v for c, v in NEEDED.items() if c not in df}
    missing.update({c: np.nan for c in CONFIG if c not in df})
    return df.assign(**missing) if missing else df


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: the median over repeats of every numeric column (ok rows only).

    Times also get their spread: ``time_lo_s`` (fastest step of any repeat) and ``time_hi_s``
    (the slowest step, or the slowest repeat's median where steps were not kept).
    """
    df = ok_rows(df)
    config = [c for c in CONFIG if c in df]             # frames may predate a field; unset options are dropped
    num = [c for c in df.select_dtypes("number").columns if c not in CONFIG + ["repeat"]]
    keep = [c for c in ("impl", "peak_meter") if c in df]
    groups = df.groupby(config, dropna=False)
    agg = groups[num].median()
    if "time_s" in df:
        agg["time_lo_s"] = groups["time_min_s" if "time_min_s" in df else "time_s"].min()
        agg["time_hi_s"] = groups["time_max_s" if "time_max_s" in df else "time_s"].max()
    if keep:
        agg = agg.join(groups[keep].first())
    agg = agg.reset_index()
    agg = agg.assign(repeats=groups.size().to_numpy()) if len(agg) else agg.assign(repeats=0)
    return agg.drop(columns=unset_columns(agg))


ALLOCATOR_ACTIVATION = "measured: torch CPU allocator, high-water of held − gradients − optimizer"
TRACED_ACTIVATION = "measured: tracemalloc per action, high-water of held − gradients"


def with_derived(df: pd.DataFrame) -> pd.DataFrame:
    """Add grad_at_peak_bytes, activation_bytes, other_bytes, pred_error, peak_with_params_bytes (see module doc)."""
    df = df.copy()
    for c in ("optimizer_bytes", "grad_bytes", "grad_at_peak_bytes", "saved_at_peak_bytes", "torch_cpu_grad_at_peak",
              "torch_cpu_activation_peak", "tracemalloc_activation_peak"):
        if c not in df:
            df[c] = np.nan
    df["peak_source"] = [meter_label(m) for m in df["peak_meter"]] if len(df) else []
    if "engine_activation_bytes" not in df:
        df["engine_activation_bytes"] = np.nan
    ledger = df["grad_at_peak_bytes"].notna()
    df["grad_at_peak_bytes"] = df["grad_at_peak_bytes"].fillna(df["torch_cpu_grad_at_peak"])
    marked = ~ledger & df["grad_at_peak_bytes"].notna()
    grads = df["grad_at_peak_bytes"].fillna(df["grad_bytes"].fillna(0))
    opt = df["optimizer_bytes"].fillna(0)
    measured = (df["peak_bytes"] - opt - grads).clip(lower=0)
    allocator = (df["backend"] == "torch") & df["torch_cpu_activation_peak"].notna()
    traced = (df["backend"] == "numpy") & df["tracemalloc_activation_peak"].notna()
    counted = (df["backend"] == "numpy") & df["engine_activation_bytes"].notna()
    df["activation_bytes"] = np.select(
        [allocator, traced, counted],
        [(df["torch_cpu_activation_peak"] - opt).clip(lower=0), df["tracemalloc_activation_peak"],
         df["engine_activation_bytes"]], measured)
    df["activation_source"] = np.select(
        [allocator, traced, counted, ledger, marked],
        [ALLOCATOR_ACTIVATION, TRACED_ACTIVATION,
         "counted: executor ledger on the real arrays (its totals match tracemalloc)",
         "measured − gradients at peak (ledger) − optimizer", "measured − gradients at peak (allocator marks) − optimizer"],
        "measured − all gradients − optimizer (a lower bound)")
    df["other_bytes"] = df["peak_bytes"] - opt - df["grad_at_peak_bytes"].fillna(0) - df["saved_at_peak_bytes"].fillna(0)
    df["pred_error"] = (df["peak_bytes"] - df["predicted_peak_bytes"]) / df["predicted_peak_bytes"]
    df["peak_with_params_bytes"] = df["peak_bytes"] + df["param_bytes"].fillna(0)
    return df


def _option_text(name: str, value) -> str:
    if name == "budget":
        return f"budget={value / 2 ** 20:g} MiB"
    return f"{name}={int(value) if isinstance(value, float) and value.is_integer() else value}"


def series_names(df: pd.DataFrame) -> pd.Series:
    """Each row's strategy with the options it was run with, e.g. ``revolve (slots=2)``: one series per option value.

    Rows without options keep the bare name (``store_all``, ``sqrt_n``), which the targets look for.
    ``fused`` is not an option of the strategy: it is a column of its own, which every comparison keys on.
    """
    options = [c for c in (*STRATEGY_OPTIONS, "options") if c in df]

    def name(row) -> str:
        given = [_option_text(c, row[c]) for c in options if pd.notna(row[c]) and row[c] != ""]
        return f"{row['strategy']} ({', '.join(given)})" if given and row["mode"] == "train" else row["strategy"]
    return df.apply(name, axis=1) if len(df) and options else df["strategy"]


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """ok rows, aggregated over repeats, with the derived columns: the input of every analysis.

    ``strategy`` names the series: a strategy run with options gets them in its name (``series_names``).
    """
    prepared = with_derived(aggregate(df))
    return prepared.assign(strategy=series_names(prepared)) if len(prepared) else prepared


def line_fit(x, y) -> dict:
    """Least squares y = a + b·x: {'a', 'b', 'r2', 'n'}."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or np.ptp(x) == 0:
        return {"a": np.nan, "b": np.nan, "r2": np.nan, "n": len(x)}
    dx, dy = x - x.mean(), y - y.mean()                 # closed form (np.polyfit costs 10× more per call)
    b = float(dx @ dy / (dx @ dx))
    a = float(y.mean() - b * x.mean())
    ss_res, ss_tot = np.sum((y - (a + b * x)) ** 2), np.sum(dy ** 2)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    return {"a": a, "b": b, "r2": r2, "n": len(x)}


def _label(mode: str, strategy: str) -> str:
    return "predict" if mode == "predict" else strategy


MIN_POINTS, MIN_SPAN = 3, 8          # a depth law needs ≥ 3 depths spanning ≥ 8× (4–16 cannot tell 0.8 from 1)
# Depth laws are fitted from depth 8 on: every step holds a depth-independent few activations (torch: the
# loss's (batch, width) buffer, δ_n and a backward temporary — 3 of the 7 activations of store_all at depth 4),
# which would bend a log-log slope fitted from depth 4 (torch store_all 0.90 over 4–512, 0.93 over 8–512).
MIN_FIT_DEPTH = 8
UNDECIDED_DEPTHS = f"n/a: needs ≥ {MIN_POINTS} depths ≥ {MIN_FIT_DEPTH} spanning ≥ {MIN_SPAN}×"
UNDECIDED_LINE = f"n/a: needs ≥ {MIN_POINTS} values of the axis"


def _sweeps(df: pd.DataFrame, axis: str, fixed: list[str], y: str, min_points: int = MIN_POINTS, min_span: float = 1):
    """Sweeps that vary ``axis`` alone (everything in ``fixed`` held), ≥ min_points values spanning ≥ min_span×.

    Yields (the held values as a dict, axis values, y values), sorted by axis: plain arrays, as a
    frame per group costs most of a report's time.
    """
    if df.empty:
        return
    xs, ys = df[axis].to_numpy(), df[y].to_numpy(float)          # the axis keeps its type (depth 8, not 8.0)
    for key, rows in df.groupby(fixed, dropna=False).indices.items():
        x = xs[rows]
        distinct = np.unique(x[pd.notna(x)])
        if len(distinct) >= min_points and distinct[-1] >= min_span * distinct[0]:
            order = np.argsort(x, kind="stable")
            yield dict(zip(fixed, key if isinstance(key, tuple) else (key,))), x[order], ys[rows][order]


LINEAR_COLUMNS = SHAPE + ["depth", "batch", "strategy", "mode", "optimizer", "axis", "quantity", "line", "from", "to",
                          "a", "b", "r2", "n"]


def linear_fits(df: pd.DataFrame, y: str = "peak_bytes") -> pd.DataFrame:
    """Per sweep along depth and along batch: y = a + b·axis, with R² (prepared frame)."""
    rows = []
    for axis, other in (("depth", "batch"), ("batch", "depth")):
        fixed = SHAPE + [other, "strategy", "mode", "optimizer"]
        for key, x, values in _sweeps(df, axis, fixed, y):
            rows.append({**key, "axis": axis, "quantity": y, "line": _label(key["mode"], key["strategy"]),
                         "from": x.min(), "to": x.max(), **line_fit(x, values)})
    return pd.DataFrame(rows, columns=LINEAR_COLUMNS)


PRODUCT_COLUMNS = SHAPE + ["strategy", "mode", "optimizer", "line", "quantity", "a", "b", "r2", "n"]


def product_fits(df: pd.DataFrame, y: str = "activation_bytes") -> pd.DataFrame:
    """Per strategy: y = a + b·(depth·batch) over every depth and batch measured (prepared frame)."""
    rows = []
    keys = SHAPE + ["strategy", "mode", "optimizer"]
    for key, g in (df.groupby(keys, dropna=False) if len(df) else []):
        x = g["depth"] * g["batch"]
        if x.nunique() < MIN_POINTS:
            continue
        key = dict(zip(keys, key))
        rows.append({**key, "line": _label(key["mode"], key["strategy"]), "quantity": y, **line_fit(x, g[y])})
    return pd.DataFrame(rows, columns=PRODUCT_COLUMNS)


SLOPE_COLUMNS = SHAPE + ["batch", "strategy", "mode", "optimizer", "line", "quantity", "from", "to", "slope", "r2", "n"]


def loglog_slopes(df: pd.DataFrame, y: str = "activation_bytes", min_depth: int = MIN_FIT_DEPTH) -> pd.DataFrame:
    """Per depth sweep (≥ 3 depths ≥ min_depth spanning ≥ 8×): the slope of log y against log depth (≈1 store_all, ≈½ sqrt_n, ≈0 recompute/predict)."""
    rows = []
    fixed = SHAPE + ["batch", "strategy", "mode", "optimizer"]
    for key, depth, values in _sweeps(df[df["depth"] >= min_depth] if len(df) else df, "depth", fixed, y,
                                      min_span=MIN_SPAN):
        positive = values > 0
        depth, values = depth[positive], values[positive]
        if len(np.unique(depth)) < MIN_POINTS or depth.max() < MIN_SPAN * depth.min():
            continue
        fit = line_fit(np.log(depth), np.log(values))
        rows.append({**key, "line": _label(key["mode"], key["strategy"]), "quantity": y,
                     "from": depth.min(), "to": depth.max(), "slope": fit["b"], "r2": fit["r2"], "n": fit["n"]})
    return pd.DataFrame(rows, columns=SLOPE_COLUMNS)


RATIO_COLUMNS = SHAPE + ["depth", "batch", "strategy", "optimizer", "peak_bytes", "predict_peak_bytes", "ratio",
                         "ratio_with_params"]


def train_predict_ratio(df: pd.DataFrame) -> pd.DataFrame:
    """Per backend, depth, batch and training strategy: train peak / predict peak (step alone, and with parameters)."""
    keys = SHAPE + ["depth", "batch"]
    pred = df[df["mode"] == "predict"].groupby(keys, dropna=False)[["peak_bytes", "peak_with_params_bytes"]].median()
    pred.columns = ["predict_peak_bytes", "predict_with_params_bytes"]
    train = df[df["mode"] == "train"].join(pred, on=keys, how="inner")
    if train.empty:
        return pd.DataFrame(columns=RATIO_COLUMNS)
    train["ratio"] = train["peak_bytes"] / train["predict_peak_bytes"]
    train["ratio_with_params"] = train["peak_with_params_bytes"] / train["predict_with_params_bytes"]
    return train[with_fused(RATIO_COLUMNS, df)].sort_values(keys + ["strategy", "optimizer"]).reset_index(drop=True)


def prediction_errors(df: pd.DataFrame) -> pd.DataFrame:
    """Per row: measured vs the engine's predicted peak, relative error (prepared frame)."""
    cols = CONFIG + ["peak_source", "peak_bytes", "predicted_peak_bytes", "pred_error"]
    return df[[c for c in cols if c in df]].reset_index(drop=True)


def error_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per backend, device, meter and mode: median and worst |relative error| of the prediction."""
    df = df.assign(abs_error=df["pred_error"].abs())
    g = df.groupby(["backend", "device", "peak_source", "mode"])["abs_error"]
    return pd.DataFrame({"rows": g.size(), "median_abs_error": g.median(), "max_abs_error": g.max()}).reset_index()


TRADEOFF_COLUMNS = SHAPE + ["depth", "batch", "optimizer", "strategy", "time_s", "time_lo_s", "time_hi_s",
                            "time_overhead", "peak_bytes", "peak_change", "activation_change"]


def with_fused(columns: list[str], df: pd.DataFrame) -> list[str]:
    """``columns`` plus ``fused`` where the frame has fused rows (an aggregated frame drops it otherwise)."""
    return columns + ["fused"] if "fused" in df and "fused" not in columns else columns


def tradeoff(df: pd.DataFrame) -> pd.DataFrame:
    """Per training row: time (median step, with its min–max) and memory relative to store_all at the same configuration.

    Changes are signed: a strategy that saves memory has a negative ``peak_change`` / ``activation_change``.
    """
    keys = with_fused(SHAPE + ["depth", "batch", "optimizer"], df)
    train = df[df["mode"] == "train"]
    for c in ("time_lo_s", "time_hi_s"):
        if c not in train:
            train = train.assign(**{c: train["time_s"]})
    base = train[train["strategy"] == "store_all"].groupby(keys, dropna=False)[
        ["time_s", "peak_bytes", "activation_bytes"]].median()
    base.columns = ["base_time_s", "base_peak_bytes", "base_activation_bytes"]
    t = train.join(base, on=keys, how="inner")
    if t.empty:
        return pd.DataFrame(columns=TRADEOFF_COLUMNS)
    t["time_overhead"] = t["time_s"] / t["base_time_s"] - 1
    t["peak_change"] = t["peak_bytes"] / t["base_peak_bytes"] - 1
    t["activation_change"] = t["activation_bytes"] / t["base_activation_bytes"] - 1
    return t[with_fused(TRADEOFF_COLUMNS, df)].sort_values(keys + ["strategy"]).reset_index(drop=True)


def decomposition(df: pd.DataFrame) -> pd.DataFrame:
    """Per training row, every strategy: where the peak's bytes are — optimizer state, gradients, saved activations, rest.

    Gradients at the peak: the executor's ledger (numpy, ckpt's torch wrapper) or torch's
    allocator marks; saved activations: the ledger, or autograd's saved-tensor hooks (plain torch).
    """
    train = df[df["mode"] == "train"].copy()
    train["grads_at_peak"] = train["grad_at_peak_bytes"]
    cols = CONFIG + ["peak_source", "param_bytes", "optimizer_bytes", "grads_at_peak", "saved_at_peak_bytes",
                     "other_bytes", "peak_bytes", "predicted_peak_bytes", "pred_error"]
    return train[[c for c in cols if c in train]].reset_index(drop=True)


FUSED_COLUMNS = SHAPE + ["depth", "batch", "optimizer", "strategy", "peak_source", "unfused_peak", "fused_peak",
                         "fused_predicted", "fused_error", "unfused_grads_at_peak", "fused_grads_at_peak",
                         "saving", "fused_activation"]


def fused_comparison(df: pd.DataFrame) -> pd.DataFrame:
    """Per fused training row beside its unfused twin: both measured peaks, the fused prediction, gradients at each peak.

    ``fused_activation`` is the fused row's activation memory (measured less optimizer state and
    the gradients at its peak): with the gradients fused away, what tells the strategies apart.
    """
    if "fused" not in df:
        return pd.DataFrame(columns=FUSED_COLUMNS)
    train = df[df["mode"] == "train"]
    keys = [c for c in CONFIG if c in df and c != "fused"]
    fused, unfused = train[train["fused"] == True], train[train["fused"] != True]   # noqa: E712 (NaN is unfused)
    pair = fused.merge(unfused[keys + ["peak_bytes", "grad_at_peak_bytes"]], on=keys, suffixes=("", "_unfused"))
    if pair.empty:
        return pd.DataFrame(columns=FUSED_COLUMNS)
    pair = pair.assign(unfused_peak=pair["peak_bytes_unfused"], fused_peak=pair["peak_bytes"],
                       fused_predicted=pair["predicted_peak_bytes"], fused_error=pair["pred_error"],
                       unfused_grads_at_peak=pair["grad_at_peak_bytes_unfused"],
                       fused_grads_at_peak=pair["grad_at_peak_bytes"],
                       saving=pair["peak_bytes"] / pair["peak_bytes_unfused"] - 1,
                       fused_activation=pair["activation_bytes"])
    return pair[FUSED_COLUMNS].sort_values(SHAPE + ["depth", "batch", "optimizer", "strategy"]).reset_index(drop=True)


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


def _has(df: pd.DataFrame, backend: str, mode: str, strategy: str | None = None) -> bool:
    rows = df[(df["backend"] == backend) & (df["mode"] == mode)]
    return bool(len(rows if strategy is None else rows[rows["strategy"] == strategy]))


def _measured_by(df: pd.DataFrame, backend: str) -> str:
    meters = sorted(set(df.loc[df["backend"] == backend, "peak_meter"].dropna().astype(str)))
    return ", ".join(meters) or "–"


def activation_label(df: pd.DataFrame, backend: str) -> str:
    """How a backend's training activation memory was obtained, in a few words (for summaries and axes)."""
    rows = df[(df["backend"] == backend) & (df["mode"] == "train")] if len(df) else df
    sources = set(rows["activation_source"].dropna().astype(str)) if "activation_source" in rows else set()
    named = {ALLOCATOR_ACTIVATION: "measured: torch_cpu_activation_peak − optimizer",
             TRACED_ACTIVATION: "measured: tracemalloc_activation_peak"}
    short = {"counted: executor ledger" if s.startswith("counted") else named.get(s, f"measured: {_measured_by(df, backend)} − gradients")
             for s in sources}
    return " / ".join(sorted(short)) or "–"


def targets(df: pd.DataFrame) -> pd.DataFrame:
    """The issue's acceptance claims on this frame: claim, meter, measured value, target, met ("n/a: …" when undecidable).

    A claim appears when the grid has rows it is about; if they cannot decide it, ``met`` says why.
    """
    columns = ["claim", "meter", "value", "target", "met"]
    if df.empty:
        return pd.DataFrame(columns=columns)
    lin, act = linear_fits(df, "peak_bytes"), loglog_slopes(df, "activation_bytes")
    lin_act = linear_fits(df, "activation_bytes")
    rows = []

    def add(claim, backend, values, target, test, relevant, undecided, unresolved=None, meter=None):
        if not relevant:
            return
        values = [v for v in values if pd.notna(v)]
        met = unresolved or (all(test(v) for v in values) if values else undecided)
        rows.append({"claim": claim, "meter": meter or _measured_by(df, backend),
                     "value": ", ".join(f"{v:.4f}" for v in values) or "–", "target": target, "met": met})

    for backend in ("numpy", "torch"):
        activation_meter = activation_label(df, backend)
        for axis in ("depth", "batch"):
            for fits, quantity, meter in ((lin, "peak", None), (lin_act, "activation", activation_meter)):
                f = _pick(fits, axis=axis, strategy="store_all", mode="train", backend=backend)
                add(f"store_all train {quantity} linear in {axis} (R², {backend})", backend, f["r2"], "≥ 0.99",
                    lambda v: v >= 0.99, _has(df, backend, "train", "store_all"), UNDECIDED_LINE.replace("axis", axis),
                    meter=meter)
        f = _pick(act, line="predict", backend=backend)
        add(f"predict peak flat in depth (log-log slope, {backend})", backend, f["slope"], "|slope| ≤ 0.1",
            lambda v: abs(v) <= 0.1, _has(df, backend, "predict"), UNDECIDED_DEPTHS,
            _below_rss_resolution(df, backend, "predict"))
        for strategy, target, test in (("store_all", "≈ 1 (0.9 – 1.1)", lambda v: 0.9 <= v <= 1.1),
                                       ("sqrt_n", "0.4 – 0.6", lambda v: 0.4 <= v <= 0.6),
                                       ("recompute", "≈ 0 (|slope| ≤ 0.1)", lambda v: abs(v) <= 0.1)):
            f = _pick(act, line=strategy, mode="train", backend=backend)
            add(f"{strategy} activation log-log slope in depth ({backend})", backend, f["slope"], target, test,
                _has(df, backend, "train", strategy), UNDECIDED_DEPTHS, meter=activation_meter)
        rows_b = df[df["backend"] == backend]
        tolerance = 0.05
        add(f"{backend}: worst |measured − predicted| / predicted", backend, [rows_b["pred_error"].abs().max()],
            f"≤ {tolerance:.2f}", lambda v: v <= tolerance, len(rows_b) > 0, "n/a: no prediction")
    return pd.DataFrame(rows, columns=columns)
