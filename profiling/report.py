"""The markdown report of a sweep: environment, fitted laws, tables, plots; plus the CSV.

``write_report(folder)`` reads ``<folder>/results.jsonl`` and writes ``report.md``,
``results.csv`` and the PNGs beside them; ``render(df, env)`` is the markdown of a frame alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import analysis as A
from .environment import read_environment
from .plots import all_plots

MIB = 2 ** 20


# ----------------------------------------------------------------- formatting

def _cell(v, fmt: str | None) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    if fmt == "mib":
        return f"{v / MIB:,.3f}"
    if fmt == "pct":
        return f"{100 * v:+.1f}%"
    if fmt == "ratio":
        return f"{v:.2f}×"
    if fmt and isinstance(v, (int, float, np.integer, np.floating)):
        return format(v, fmt)
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "**no**"
    return str(v)


def md_table(df: pd.DataFrame, formats: dict | None = None, headers: dict | None = None) -> str:
    """A markdown table of df; ``formats`` maps a column to 'mib', 'pct', 'ratio' or a format spec."""
    if df is None or df.empty:
        return "_(no rows)_\n"
    formats, headers = formats or {}, headers or {}
    cols = list(df.columns)
    lines = ["| " + " | ".join(headers.get(c, c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(_cell(row[c], formats.get(c)).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------- sections

def environment_section(env: dict) -> str:
    """The header: machine, versions, allocator settings."""
    if not env:
        return "_Environment not recorded._\n"
    pk = ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items())
    alloc = env.get("allocator", {})
    lines = [f"- **Run**: {env.get('date_utc', '?')}, commit `{env.get('git_commit') or '?'}`",
             f"- **CPU**: {env.get('cpu')} ({env.get('cpu_count')} cores), {env.get('memory_gib')} GiB RAM; "
             f"**GPU**: {', '.join(env.get('gpus') or []) or 'none'}",
             f"- **Software**: Python {env.get('python')}; {pk}; {env.get('os')}"]
    for k, v in alloc.items():
        v = ", ".join(f"{a}={b}" for a, b in v.items()) if isinstance(v, dict) else v
        lines.append(f"- **{k}**: {v}")
    return "\n".join(lines) + "\n"


def summary_section(df: pd.DataFrame) -> str:
    """Generated sentences stating the fitted laws and the headline ratios."""
    out = []
    slopes = A.loglog_slopes(df)
    for backend, g in slopes.groupby("backend"):
        parts = [f"{r.line} {r.slope:.2f}" for r in g.sort_values("line").itertuples()]
        out.append(f"- **{backend}**: log-log slope of activation memory in depth — " + ", ".join(parts)
                   + " (theory: store_all 1, sqrt_n ½, recompute and predict 0).")
    lin = A.linear_fits(df)
    for _, r in (lin[lin["line"] == "store_all"] if len(lin) else lin).iterrows():
        out.append(f"- **{r.backend}** store_all training peak is linear in {r.axis} "
                   f"({r['from']}–{r['to']}): {r.b / 1024:,.1f} KiB per unit of {r.axis}, R² = {r.r2:.4f}.")
    prod = A.product_fits(df)
    for _, r in (prod[prod["line"] == "store_all"] if len(prod) else prod).iterrows():
        out.append(f"- **{r.backend}** store_all activation memory = {r.a / MIB:.2f} MiB + {r.b:.1f} bytes × depth × batch "
                   f"(R² = {r.r2:.4f}; width {r['width']} × {np.dtype(r['dtype']).itemsize} bytes = "
                   f"{r['width'] * np.dtype(r['dtype']).itemsize}: one kept activation per stage and example).")
    ratio = A.train_predict_ratio(df)
    ratio = ratio[(ratio["strategy"] == "store_all") & ratio["optimizer"].isin(["sgd"])]
    for backend, g in ratio.groupby("backend"):
        top = g.sort_values("depth").iloc[-1]
        out.append(f"- **{backend}**: at depth {top.depth}, batch {top.batch}, a store_all training step needs "
                   f"{top.ratio:.1f}× the memory of prediction ({top.ratio_with_params:.1f}× counting the parameters).")
    trade = A.tradeoff(df)
    trade = trade[trade["strategy"] != "store_all"]
    for (backend, strategy), g in trade.groupby(["backend", "strategy"]):
        deep = g[g["depth"] == g["depth"].max()].iloc[0]
        out.append(f"- **{backend}** {strategy} vs store_all: median {100 * g['time_overhead'].median():+.0f}% time per "
                   f"step for {100 * g['activation_saved'].median():.0f}% less activation memory "
                   f"(at depth {deep.depth}: {100 * deep.time_overhead:+.0f}% time, "
                   f"{100 * deep.activation_saved:.0f}% less).")
    if len(df):
        errs = A.error_summary(df)
        for r in errs.itertuples():
            out.append(f"- Prediction vs **{r.backend}/{r.device}** `{r.peak_meter}` ({r.mode}): median error "
                       f"{100 * r.median_abs_error:.1f}%, worst {100 * r.max_abs_error:.1f}% over {r.rows} rows.")
    return "\n".join(out) + "\n"


def _decomposition_rows(df: pd.DataFrame) -> pd.DataFrame:
    d = A.decomposition(df)
    if d.empty:
        return d
    d = d[d["optimizer"].isin(["sgd", "none", "momentum", "adam"])]
    pick = []
    for backend, g in d.groupby("backend"):
        sizes = g.groupby(["depth", "batch"]).size().reset_index(name="rows")
        sizes["work"] = sizes["depth"] * sizes["batch"]
        depth, batch = sizes.sort_values(["rows", "work"]).iloc[-1][["depth", "batch"]]
        pick.append(g[(g["depth"] == depth) & (g["batch"] == batch)])
    d = pd.concat(pick)
    pred = df[df["mode"] == "predict"][A.SHAPE + ["depth", "batch", "peak_bytes"]]
    pred = pred.rename(columns={"peak_bytes": "predict_peak"})
    d = d.merge(pred, on=A.SHAPE + ["depth", "batch"], how="left")
    cols = ["backend", "depth", "batch", "strategy", "optimizer", "param_bytes", "optimizer_bytes", "grads_at_peak",
            "saved_at_peak_bytes", "other_bytes", "peak_bytes", "predicted_peak_bytes", "pred_error", "predict_peak"]
    return d[cols].sort_values(["backend", "optimizer", "strategy"])


SECTIONS_NOTE = """\
**What the columns mean.** Bytes are MiB *above* the parameters and the input batch, which are
allocated before the measured region (the parameters are shown for scale). A training step's peak
holds the optimizer's state, the gradients finished so far, the activations kept for backward
(tapes and checkpoints: *saved*) and the rest (the current activation, δ, temporaries, bookkeeping).
numpy splits the peak with the executor's ledger at the moment of the peak. torch counts the saved
activations with `saved_tensors_hooks` over one plain forward (each storage once; store_all rows only —
other strategies keep their tapes inside ckpt's autograd Function); the gradients present at torch's
peak moment are not observable (autograd frees activations while it accumulates gradients), so on
torch they are part of *rest* (their full size equals the parameters column).
"""

METHOD_NOTE = """\
Every configuration ran in its own fresh process (`python -m profiling.runner`), with
`MALLOC_MMAP_THRESHOLD_` fixed at 32 KiB so freed blocks from 32 KiB up return to the system. One step was measured
under the meters after a warm-up step (kernels, thread pools, lazy imports; full-batch for torch, so the
math library's batch-sized workspace is not counted as the step's); then steps were
timed with no meter running (time = fastest timed step). Meters: numpy — `tracemalloc` (exact for
numpy buffers, also counts the executor's few KiB of Python bookkeeping); torch CPU — the kernel's
peak RSS (`VmHWM`, reset per region, after `gc.collect()` and glibc's `malloc_trim` so the region
cannot hide in freed heap pages) beside memory_profiler's sampled RSS (`rss_peak`); the row's figure
is the larger (`rss_max`): the kernel folds per-CPU page counts in batches, so `VmHWM` can miss
~128 KiB per CPU, and the sampler misses short peaks; CUDA —
`torch.cuda.max_memory_allocated/reserved` (reset per region) and NVML device-used when present.
RSS moves in pages and counts allocator and autograd slack, so small torch CPU peaks read high
against the model (whose prediction is for the equivalent numpy MLP; torch rows also carry ckpt's
own ledger of torch tensors, `engine_peak_bytes`).
The prediction is `ckpt.predict_memory` (the schedule executed on shapes) plus the optimizer's state
(0, 1 or 2 copies of the parameters for sgd, momentum, adam).

Activation laws are fitted on `activation_bytes` — the step's peak without gradients and optimizer
state: on numpy the executor's ledger during the real run (its total matches tracemalloc, see the
prediction table), on torch measured peak − gradients − optimizer state. The totals are fitted too:
gradients grow as depth·width² whatever the strategy, so a total cannot be flat in depth.
"""


def render(df: pd.DataFrame, env: dict | None = None, plots: dict | None = None, name: str = "sweep",
           command: str | None = None) -> str:
    """The report's markdown, from a raw results frame (any statuses) and its environment."""
    prepared = A.prepare(df)
    failed = df[df["status"] != "ok"] if "status" in df else df.iloc[:0]
    mib = {c: "mib" for c in ("param_bytes", "optimizer_bytes", "grads_at_peak", "saved_at_peak_bytes", "other_bytes",
                             "peak_bytes", "predicted_peak_bytes", "predict_peak", "predict_peak_bytes")}
    parts = [f"# Memory of training vs prediction — `{name}`\n", environment_section(env or {})]
    if command:
        parts.append(f"Reproduce: `{command}`\n")
    parts += [f"{len(df)} rows: {int((df['status'] == 'ok').sum()) if 'status' in df else len(df)} ok, "
              f"{len(failed)} failed.\n", "## Summary\n", summary_section(prepared),
              "## Targets\n", md_table(A.targets(prepared)),
              "## Where the bytes go: training peak decomposed\n", SECTIONS_NOTE,
              md_table(_decomposition_rows(prepared), {**mib, "pred_error": "pct"},
                       {"param_bytes": "params (resident)", "optimizer_bytes": "optimizer state",
                        "grads_at_peak": "gradients", "saved_at_peak_bytes": "saved activations",
                        "other_bytes": "rest", "peak_bytes": "measured peak", "predicted_peak_bytes": "predicted",
                        "pred_error": "error", "predict_peak": "predict peak"})]
    ratio = A.train_predict_ratio(prepared)
    parts += ["## Train / predict ratio\n",
              md_table(ratio.drop(columns=["device", "width", "dtype"]),
                       {**mib, "ratio": "ratio", "ratio_with_params": "ratio"})]
    slopes = A.loglog_slopes(prepared)
    totals = A.loglog_slopes(prepared, "peak_bytes")
    fit_cols = ["backend", "batch", "line", "optimizer", "from", "to", "slope", "r2", "n"]
    parts += ["## Fitted laws\n", "### Log-log slope of activation memory in depth\n",
              md_table(slopes[fit_cols] if len(slopes) else slopes, {"slope": ".3f", "r2": ".4f"}),
              "### Log-log slope of the whole step's peak in depth (gradients included)\n",
              md_table(totals[fit_cols] if len(totals) else totals, {"slope": ".3f", "r2": ".4f"})]
    lin = A.linear_fits(prepared)
    if len(lin):
        lin = lin.assign(a=lin["a"], b=lin["b"])
        parts += ["### Linear fits of the step's peak: peak = a + b·axis\n",
                  md_table(lin[["backend", "axis", "depth", "batch", "line", "optimizer", "from", "to", "a", "b", "r2"]]
                           if "depth" in lin else lin, {"a": "mib", "b": "mib", "r2": ".4f"},
                           {"a": "a (MiB)", "b": "b (MiB per unit)"})]
    for quantity, title in (("activation_bytes", "activation"), ("peak_bytes", "whole-step peak (gradients grow with depth alone)")):
        prod = A.product_fits(prepared, quantity)
        if len(prod):
            parts += [f"### {title} = a + b·(depth·batch), every depth and batch measured\n",
                      md_table(prod[["backend", "line", "optimizer", "a", "b", "r2", "n"]],
                               {"a": "mib", "b": ".1f", "r2": ".4f"}, {"a": "a (MiB)", "b": "b (bytes per depth·batch)"})]
    errs = A.prediction_errors(prepared)
    worst = errs.reindex(errs["pred_error"].abs().sort_values(ascending=False).index).head(10)
    parts += ["## Predicted vs measured\n", md_table(A.error_summary(prepared),
                                                     {"median_abs_error": ".2%", "max_abs_error": ".2%"}),
              "\nWorst rows:\n\n", md_table(worst.drop(columns=["device", "dtype"]), {**mib, "pred_error": "pct"})]
    trade = A.tradeoff(prepared)
    trade = trade[trade["strategy"] != "store_all"]
    parts += ["## Time vs memory\n", "Relative to store_all at the same configuration (fastest timed step).\n\n",
              md_table(trade.drop(columns=["device", "width", "dtype"]),
                       {"time_s": ".4f", "time_overhead": "pct", "peak_saved": "pct", "activation_saved": "pct",
                        "peak_bytes": "mib"})]
    if plots:
        parts.append("## Plots\n")
        parts += [f"### {title}\n\n![{title}]({Path(p).name})\n" for title, p in plots.items()]
    if len(failed):
        cols = [c for c in A.CONFIG + ["status", "error"] if c in failed]
        parts += ["## Failed configurations\n", md_table(failed[cols])]
    parts += ["## How this was measured\n", METHOD_NOTE]
    return "\n".join(parts)


def write_report(folder, name: str | None = None, command: str | None = None) -> Path:
    """Write ``report.md``, ``results.csv`` and the plots into a sweep folder; the report's path."""
    from .sweep import load_results
    folder = Path(folder)
    df = load_results(folder)
    df.to_csv(folder / "results.csv", index=False)
    prepared = A.prepare(df)
    plots = all_plots(prepared, folder) if len(prepared) else {}
    text = render(df, read_environment(folder), plots, name or folder.name, command)
    path = folder / "report.md"
    path.write_text(text)
    return path
