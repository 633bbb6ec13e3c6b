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
    if fmt == "flag":                                   # a setting, not a claim: no bold "no"
        return "yes" if v else "no"
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


def _header(column: str, fmt: str | None, headers: dict) -> str:
    """The header of a column: the given one, else its name with the unit its format shows."""
    if column in headers:
        return headers[column]
    if fmt == "mib":
        return column.removesuffix("_bytes") + "_MiB"
    if fmt == "pct":
        return column + " (%)"
    return column


def md_table(df: pd.DataFrame, formats: dict | None = None, headers: dict | None = None) -> str:
    """A markdown table of df; ``formats`` maps a column to 'mib', 'pct', 'ratio' or a format spec.

    A MiB column is headed ``<name>_MiB`` (never ``_bytes``) unless ``headers`` names it.
    """
    if df is None or df.empty:
        return "_(no rows)_\n"
    formats, headers = formats or {}, headers or {}
    cols = list(df.columns)
    lines = ["| " + " | ".join(_header(c, formats.get(c), headers) for c in cols) + " |", "|" + "---|" * len(cols)]
    for values in df.itertuples(index=False, name=None):         # iterrows builds a Series per row: 10× slower
        lines.append("| " + " | ".join(_cell(v, formats.get(c)).replace("|", "\\|") for c, v in zip(cols, values)) + " |")
    return "\n".join(lines) + "\n"


def time_with_spread(df: pd.DataFrame, median: str = "time_s", lo: str = "time_lo_s", hi: str = "time_hi_s") -> pd.Series:
    """'median [min–max]' in seconds, per row (the spread over every timed step of every repeat)."""
    def one(r):
        if pd.isna(r[median]):
            return "–"
        if lo in r and hi in r and pd.notna(r[lo]) and pd.notna(r[hi]):
            return f"{r[median]:.4f} [{r[lo]:.4f}–{r[hi]:.4f}]"
        return f"{r[median]:.4f}"
    return df.apply(one, axis=1) if len(df) else pd.Series([], dtype=str)


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


def _at(r) -> str:
    """'width W, batch B' of a fit or row (the sizes a summary line is about)."""
    parts = [f"width {r['width']}" if "width" in r else "", f"batch {r['batch']}" if "batch" in r else ""]
    return ", ".join(p for p in parts if p)


def summary_section(df: pd.DataFrame) -> str:
    """Generated sentences stating the fitted laws and the headline ratios, each labelled by its sizes and meter."""
    if df.empty:
        return "_No successful rows: nothing to summarise._\n"
    out = []
    slopes = A.loglog_slopes(df)
    for (backend, width, batch), g in slopes.groupby(["backend", "width", "batch"]):
        parts = [f"{r.line} {round(r.slope, 2) + 0.0:.2f}" for r in g.sort_values("line").itertuples()]
        out.append(f"- **{backend}** (width {width}, batch {batch}; {A.activation_label(df, backend)}): log-log slope "
                   f"of activation memory in depth — " + ", ".join(parts)
                   + " (theory: store_all 1, sqrt_n ½, recompute and predict 0).")
    lin = A.linear_fits(df)
    for _, r in lin[lin["line"] == "store_all"].iterrows():
        held = "batch" if r.axis == "depth" else "depth"
        out.append(f"- **{r.backend}** store_all measured training peak is linear in {r.axis} "
                   f"({r['from']:g}–{r['to']:g}; width {r['width']:g}, {held} {r[held]:g}): "
                   f"{r.b / 1024:,.1f} KiB per unit of {r.axis}, R² = {r.r2:.4f}.")
    prod = A.product_fits(df)
    for _, r in prod[prod["line"] == "store_all"].iterrows():
        size = np.dtype(r["dtype"]).itemsize
        out.append(f"- **{r.backend}** store_all activation memory ({A.activation_label(df, r.backend)}) = "
                   f"{r.a / MIB:.2f} MiB + {r.b:.1f} bytes × depth × batch (R² = {r.r2:.4f}; width {r['width']} × {size} bytes = "
                   f"{r['width'] * size}: one kept activation per stage and example).")
    ratio = A.train_predict_ratio(df)
    ratio = ratio[(ratio["strategy"] == "store_all") & ratio["optimizer"].isin(["sgd"])]
    for backend, g in ratio.groupby("backend"):
        top = g.sort_values(["depth", "batch"]).iloc[-1]
        out.append(f"- **{backend}**: at depth {top.depth}, width {top.width}, batch {top.batch}, a store_all training "
                   f"step needs {top.ratio:.1f}× the measured memory of prediction "
                   f"({top.ratio_with_params:.1f}× counting the parameters).")
    trade = A.tradeoff(df)
    trade = trade[trade["strategy"] != "store_all"]
    for (backend, strategy, width, batch), g in trade.groupby(["backend", "strategy", "width", "batch"]):
        deep = g.sort_values("depth").iloc[-1]
        out.append(f"- **{backend}** {strategy} vs store_all (width {width}, batch {batch}, {g['depth'].nunique()} depths): median "
                   f"{100 * g['time_overhead'].median():+.0f}% time per step, "
                   f"{100 * g['activation_change'].median():+.0f}% activation memory "
                   f"(at depth {deep.depth}: {100 * deep.time_overhead:+.0f}% time, "
                   f"{100 * deep.activation_change:+.0f}% activation memory).")
    errs = A.error_summary(df)
    for r in errs.itertuples():
        out.append(f"- Prediction vs **{r.backend}/{r.device}** ({r.peak_source}, {r.mode}): median error "
                   f"{100 * r.median_abs_error:.1f}%, worst {100 * r.max_abs_error:.1f}% over {r.rows} rows.")
    return "\n".join(out) + "\n"


def _decomposition_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The training decomposition at each backend's most populated (depth, batch), every strategy and optimizer."""
    d = A.decomposition(df)
    if d.empty:
        return d
    pick = []
    for backend, g in d.groupby("backend"):
        sizes = g.groupby(["depth", "batch", "width"]).size().reset_index(name="rows")
        sizes["work"] = sizes["depth"] * sizes["batch"]
        depth, batch, width = sizes.sort_values(["rows", "work"]).iloc[-1][["depth", "batch", "width"]]
        pick.append(g[(g["depth"] == depth) & (g["batch"] == batch) & (g["width"] == width)])
    d = pd.concat(pick)
    keys = A.SHAPE + ["depth", "batch"]
    pred = df[df["mode"] == "predict"].groupby(keys, dropna=False)["peak_bytes"].median().rename("predict_peak")
    d = d.join(pred, on=keys)
    cols = A.with_fused(["backend", "width", "depth", "batch", "strategy", "optimizer"], d) + [
        "peak_source", "param_bytes", "optimizer_bytes", "grads_at_peak", "saved_at_peak_bytes", "other_bytes",
        "peak_bytes", "predicted_peak_bytes", "pred_error", "predict_peak"]
    return d[cols].sort_values(A.with_fused(["backend", "optimizer", "strategy"], d))


DECOMPOSITION_HEADERS = {
    "peak_source": "peak measured by", "param_bytes": "params, resident (MiB)",
    "optimizer_bytes": "optimizer state (MiB, counted)", "grads_at_peak": "gradients at peak (MiB, counted)",
    "saved_at_peak_bytes": "saved activations (MiB, counted)", "other_bytes": "rest (MiB, measured − counted)",
    "peak_bytes": "peak (MiB, measured)", "predicted_peak_bytes": "peak (MiB, predicted)",
    "pred_error": "measured vs predicted (%)", "predict_peak": "prediction step peak (MiB, measured)"}

SECTIONS_NOTE = """\
**What the columns mean.** Bytes are MiB *above* the parameters and the input batch, which are
allocated before the measured region (the parameters are shown for scale). *Measured* is the row's
meter (named in the table); *counted* is bookkeeping: the optimizer's state arrays, and for the
gradients and saved activations at the peak the executor's ledger of real arrays / tensors (numpy and
ckpt's torch wrapper, every strategy), or — on plain torch — autograd's saved-tensor hooks and the
gradient marks in torch's allocator timeline; *rest* is measured − counted (the current activation,
δ, temporaries); *predicted* is the memory model.
"""

METHOD_NOTE = """\
Every configuration ran in its own fresh process (`python -m profiling.runner`), with
`MALLOC_MMAP_THRESHOLD_` fixed at 32 KiB so freed blocks from 32 KiB up return to the system. One step was measured
under the meters after a warm-up step (kernels, thread pools, lazy imports; full-batch for torch, so the
math library's batch-sized workspace is not counted as the step's); then steps were
timed with no meter running: time = median step, [min–max] over every timed step of every repeat.
Meters (what each figure's *measured* means):
- numpy — `tracemalloc` (exact for numpy buffers; also counts the executor's few KiB of Python bookkeeping);
- torch on CPU — `torch_cpu_peak`: torch's CPU allocator, from the profiler's memory events
  (`torch.profiler.profile(profile_memory=True)`): the running sum of every allocation and free in time
  order, peak above the region's start — the CPU analogue of `torch.cuda.max_memory_allocated`, independent
  of ckpt (it measures whatever wrapper runs the step); blind to MKL's workspace and to numpy. The profiler
  slows the metered step (≈ 1.5–2× for small kernels), which is why timing runs without it. Beside it,
  process RSS (`rss_max`: the kernel's `VmHWM`, reset per region after `malloc_trim`, or memory_profiler's
  samples, whichever is larger) as a cross-check: it also counts allocator slack and cannot resolve sub-MiB peaks;
- CUDA — `torch.cuda.max_memory_allocated/reserved` (reset per region) and NVML device-used when present.

The prediction is `ckpt.predict_memory`, the schedule executed on a description of each stage's
bytes, plus the optimizer's state. numpy: the engine's MLP on shapes (its layers declare what they
keep and allocate). torch: a `ckpt.Profile` of what torch's own kernels allocate (`profiling.torch_costs`:
2·depth stages, Linear and ReLU each one; addmm's output and saved input, ReLU's saved output,
threshold_backward's and mm's buffers; the MSE loss's (batch, width) buffer that the 0-d loss keeps;
Adam's update temporaries and step counters; the generator states ckpt saves for replays).

Activation laws are fitted on `activation_bytes`: the high-water over the step of the bytes held less the
gradients stored so far and the optimizer state, *measured* the same way on both backends. torch: torch's
CPU allocator (`torch_cpu_activation_peak`, gradients entering its timeline when autograd stores them, less
`optimizer_bytes`); numpy: tracemalloc over one more training step run action by action
(`tracemalloc_activation_peak`, each action's peak less the gradients stored before it). The
`activation_source` column of `results.csv` says which, row by row (older frames: the executor's ledger,
counted). The totals
are fitted too: gradients grow as depth·width² whatever the strategy, so a total cannot be flat in depth.
A depth law is fitted from depth 8 on (below it the step's depth-independent few activations — on torch
the loss's (batch, width) buffer, δ_n and a backward temporary — are a large share of the total) and needs
≥ 3 such depths spanning ≥ 8×; a linear law needs ≥ 3 values; a target the grid cannot decide reads "n/a".
"""

FIT_HEADERS = {"slope": "slope (log-log)", "r2": "R²", "from": "from depth", "to": "to depth"}


def _section(title: str, body: str) -> list[str]:
    return [f"## {title}\n", body]


def _fits_section(prepared: pd.DataFrame) -> list[str]:
    slopes = A.loglog_slopes(prepared)
    totals = A.loglog_slopes(prepared, "peak_bytes")
    fit_cols = ["backend", "width", "batch", "line", "optimizer", "from", "to", "slope", "r2", "n"]
    parts = ["## Fitted laws\n",
             "### Log-log slope of activation memory in depth (measured: tracemalloc / torch CPU allocator, see activation_source)\n",
             md_table(slopes[fit_cols], {"slope": ".3f", "r2": ".4f"}, FIT_HEADERS) if len(slopes)
             else f"_{A.UNDECIDED_DEPTHS}: this grid has no such depth sweep._\n",
             "### Log-log slope of the whole step's measured peak in depth (gradients included)\n",
             md_table(totals[fit_cols], {"slope": ".3f", "r2": ".4f"}, FIT_HEADERS) if len(totals)
             else f"_{A.UNDECIDED_DEPTHS}._\n"]
    lin = A.linear_fits(prepared)
    if len(lin):
        parts += ["### Linear fits of the step's measured peak: peak = a + b·axis\n",
                  md_table(lin[["backend", "width", "axis", "depth", "batch", "line", "optimizer", "from", "to", "a",
                                "b", "r2"]], {"a": "mib", "b": "mib", "r2": ".4f"},
                           {"a": "a (MiB)", "b": "b (MiB per unit of axis)", "r2": "R²"})]
    for quantity, title in (("activation_bytes", "activation (measured; see activation_source)"),
                            ("peak_bytes", "measured whole-step peak (gradients grow with depth alone)")):
        prod = A.product_fits(prepared, quantity)
        if len(prod):
            parts += [f"### {title} = a + b·(depth·batch), every depth and batch measured\n",
                      md_table(prod[["backend", "width", "line", "optimizer", "a", "b", "r2", "n"]],
                               {"a": "mib", "b": ".1f", "r2": ".4f"},
                               {"a": "a (MiB)", "b": "b (bytes per depth·batch)", "r2": "R²"})]
    return parts


def _tradeoff_section(prepared: pd.DataFrame) -> list[str]:
    trade = A.tradeoff(prepared)
    trade = trade[trade["strategy"] != "store_all"]
    if trade.empty:
        return ["## Time vs memory\n", "_n/a: needs store_all and another strategy at the same configuration._\n"]
    trade = trade.assign(time=time_with_spread(trade))
    cols = A.with_fused(["backend", "width", "depth", "batch", "optimizer", "strategy"], trade) + [
        "time", "time_overhead", "peak_bytes", "peak_change", "activation_change"]
    return ["## Time vs memory\n",
            "Relative to store_all at the same configuration: time per step (median [min–max] over timed steps); "
            "memory measured, changes signed (a saving is negative).\n\n",
            md_table(trade[cols], {"time_overhead": "pct", "peak_change": "pct", "activation_change": "pct",
                                   "peak_bytes": "mib", "fused": "flag"},
                     {"time": "time (s) median [min–max]", "time_overhead": "time vs store_all (%)",
                      "peak_bytes": "peak (MiB, measured)", "peak_change": "peak vs store_all (%)",
                      "activation_change": "activation vs store_all (%)"})]


FUSED_HEADERS = {"peak_source": "measured by", "unfused_peak": "unfused peak (MiB, measured)",
                 "fused_peak": "fused peak (MiB, measured)", "fused_predicted": "fused peak (MiB, predicted)",
                 "fused_error": "fused measured vs predicted (%)",
                 "unfused_grads_at_peak": "gradients at unfused peak (MiB, counted)",
                 "fused_grads_at_peak": "gradients at fused peak (MiB, counted)",
                 "saving": "fused vs unfused peak (%)", "fused_activation": "fused activations (MiB)"}


def _fused_section(prepared: pd.DataFrame) -> list[str]:
    table = A.fused_comparison(prepared)
    if table.empty:
        return []
    mib = {c: "mib" for c in ("unfused_peak", "fused_peak", "fused_predicted", "unfused_grads_at_peak",
                              "fused_grads_at_peak", "fused_activation")}
    return ["## Fused optimizer step\n",
            "Each stage's update applied right after its backward and its gradient released (numpy: `Update(i)` "
            "actions; torch: `ckpt.torch.fused.fuse_optimizer`), beside the same configuration updated after the "
            "backward. Gradients at the peak: the executor's ledger (numpy) or torch's allocator marks, each "
            "gradient's release by the fused step marked too. The prediction is `ckpt.predict_memory(..., "
            "fused=True)` plus the optimizer state.\n\n",
            md_table(table.drop(columns=["device", "dtype"]), {**mib, "fused_error": "pct", "saving": "pct"},
                     FUSED_HEADERS)]


def _errors_section(prepared: pd.DataFrame) -> list[str]:
    if prepared.empty:
        return []
    errs = A.prediction_errors(prepared)
    worst = errs.reindex(errs["pred_error"].abs().sort_values(ascending=False).index).head(10)
    headers = {"peak_source": "measured by", "peak_bytes": "peak (MiB, measured)",
               "predicted_peak_bytes": "peak (MiB, predicted)", "pred_error": "measured vs predicted (%)",
               "median_abs_error": "median |error|", "max_abs_error": "worst |error|"}
    return ["## Predicted vs measured\n",
            md_table(A.error_summary(prepared), {"median_abs_error": ".2%", "max_abs_error": ".2%"}, headers),
            "\nWorst rows:\n\n", md_table(worst.drop(columns=["device", "dtype"]), {"peak_bytes": "mib",
                                             "predicted_peak_bytes": "mib", "pred_error": "pct"}, headers)]


def status_counts(df: pd.DataFrame, failed: pd.DataFrame) -> str:
    """'40 ok, 2 refused, 1 oom': rows per status (refused rows were predicted not to fit and never ran)."""
    counts = failed["status"].value_counts() if "status" in failed else pd.Series(dtype=int)
    return ", ".join([f"{len(df) - len(failed)} ok"] + [f"{n} {status}" for status, n in counts.items()])


def render(df: pd.DataFrame, env: dict | None = None, plots: dict | None = None, name: str = "sweep",
           command: str | None = None) -> str:
    """The report's markdown, from a raw results frame (any statuses, any grid) and its environment."""
    prepared = A.prepare(df)
    failed = df[df["status"] != "ok"] if "status" in df else df.iloc[:0]
    parts = [f"# Memory of training vs prediction — `{name}`\n", environment_section(env or {})]
    if command:
        parts.append(f"Reproduce: `{command}`\n")
    parts += [f"{len(df)} rows: {status_counts(df, failed)}.\n", "## Summary\n",
              summary_section(prepared), "## Targets\n",
              "Each claim on the rows it is about, with the meter that measured them; "
              "\"n/a\" where this grid cannot decide it.\n\n",
              md_table(A.targets(prepared)),
              "## Where the bytes go: training peak decomposed\n", SECTIONS_NOTE,
              md_table(_decomposition_rows(prepared), {c: "mib" for c in DECOMPOSITION_HEADERS if c not in
                                                       ("peak_source", "pred_error")} | {"pred_error": "pct",
                                                                                        "fused": "flag"},
                       DECOMPOSITION_HEADERS)]
    ratio = A.train_predict_ratio(prepared)
    parts += ["## Train / predict ratio (measured)\n",
              md_table(ratio.drop(columns=["device", "dtype"]),
                       {"peak_bytes": "mib", "predict_peak_bytes": "mib", "ratio": "ratio", "ratio_with_params": "ratio",
                        "fused": "flag"},
                       {"peak_bytes": "train peak (MiB)", "predict_peak_bytes": "predict peak (MiB)",
                        "ratio": "train / predict", "ratio_with_params": "with parameters"})]
    parts += _fused_section(prepared) + _fits_section(prepared) + _errors_section(prepared) + _tradeoff_section(prepared)
    if plots:
        parts.append("## Plots\n")
        parts += [f"### {title}\n\n![{title}]({Path(p).name})\n" for title, p in plots.items()]
    if len(failed):
        cols = [c for c in A.CONFIG + ["status", "error"] if c in failed]
        parts += ["## Configurations not measured\n", "`refused`: the pre-run memory check predicted that it "
                  "would not fit (not run); `oom`, `error`, `timeout`: it ran and failed.\n\n", md_table(failed[cols])]
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
