"""Plots (matplotlib, Agg, PNG) of a prepared sweep frame; each function writes one file and returns its path."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .analysis import activation_label, tradeoff, train_predict_ratio  # noqa: E402

MIB = 2 ** 20
STYLE = {"store_all": ("tab:red", "o"), "sqrt_n": ("tab:blue", "s"), "recompute": ("tab:green", "^"),
         "predict": ("black", "x")}


def _line(mode, strategy) -> str:
    return "predict" if mode == "predict" else strategy


def _style(line: str):
    return STYLE.get(line, ("tab:gray", "d"))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _main_sweep(df: pd.DataFrame, axis: str) -> pd.DataFrame:
    """Rows of the most populated sweep along ``axis`` per backend (fixed other sizes, optimizer 'sgd' or none)."""
    other = "batch" if axis == "depth" else "depth"
    parts = []
    for backend, g in df.groupby("backend"):
        g = g[g["optimizer"].isin(["sgd", "none"])]
        counts = g.groupby(["width", other])[axis].nunique()
        if counts.empty or counts.max() < 2:
            continue
        width, fixed = counts.idxmax()
        parts.append(g[(g["width"] == width) & (g[other] == fixed)])
    return pd.concat(parts) if parts else df.iloc[:0]


def _panels(df: pd.DataFrame):
    backends = sorted(df["backend"].unique()) or ["numpy"]
    fig, axes = plt.subplots(1, len(backends), figsize=(6.2 * len(backends), 4.8), squeeze=False)
    return fig, dict(zip(backends, axes[0]))


def _meters(g: pd.DataFrame) -> str:
    """The meter(s) that measured a panel's peaks, for its axis label."""
    return ", ".join(sorted(set(g["peak_meter"].dropna().astype(str)))) or "?"


def _sizes(g: pd.DataFrame, *names: str) -> str:
    """'width 128, batch 512' for the sizes a panel holds fixed."""
    return ", ".join(f"{n} {g[n].iloc[0]}" for n in names if len(g) and g[n].nunique() == 1)


def peak_vs(df: pd.DataFrame, axis: str, path: Path, y: str = "peak_bytes", loglog: bool = True) -> Path:
    """Measured peak memory against depth or batch, one line per strategy, train and predict on the same axes."""
    data = _main_sweep(df, axis)
    fixed = "batch" if axis == "depth" else "depth"
    fig, axes = _panels(data)
    for backend, ax in axes.items():
        g = data[data["backend"] == backend]
        for (mode, strategy), h in g.groupby(["mode", "strategy"]):
            line = _line(mode, strategy)
            color, marker = _style(line)
            h = h.sort_values(axis)
            ax.plot(h[axis], h[y] / MIB, marker=marker, color=color, label=line)
            if y == "peak_bytes" and mode == "train" and "activation_bytes" in h:
                ax.plot(h[axis], h["activation_bytes"] / MIB, ls=":", color=color, alpha=0.7)
        if loglog:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
        ax.set_title(f"{backend}: measured peak vs {axis} ({_sizes(g, 'width', fixed)})", fontsize=10)
        ax.set_xlabel(axis)
        ax.set_ylabel(f"MiB above params + inputs\nsolid: whole step, measured ({_meters(g)})\n"
                      f"dotted: activations ({activation_label(g, backend)})", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _ratio_data(df: pd.DataFrame) -> pd.DataFrame:
    r = train_predict_ratio(df)
    r = r[r["optimizer"].isin(["sgd", "none"])].assign(mode="train")
    return _main_sweep(r, "depth")


def ratio_vs_depth(df: pd.DataFrame, path: Path) -> Path:
    """Measured train/predict peak ratio against depth, one line per strategy."""
    data = _ratio_data(df)
    fig, axes = _panels(data)
    for backend, ax in axes.items():
        g = data[data["backend"] == backend]
        for strategy, h in g.groupby("strategy"):
            color, marker = _style(strategy)
            h = h.sort_values("depth")
            ax.plot(h["depth"], h["ratio"], marker=marker, color=color, label=f"{strategy} (step)")
            ax.plot(h["depth"], h["ratio_with_params"], ls="--", color=color, alpha=0.7,
                    label=f"{strategy} (with parameters)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{backend}: train peak / predict peak, measured ({_sizes(g, 'width', 'batch')})", fontsize=10)
        ax.set_xlabel("depth")
        ax.set_ylabel("ratio of measured peaks")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _tradeoff_data(df: pd.DataFrame) -> pd.DataFrame:
    """Per backend, the (width, batch) with the most non-store_all points of the trade-off."""
    t = tradeoff(df)
    t = t[t["strategy"] != "store_all"]
    parts = []
    for _, g in t.groupby("backend"):
        width, batch = g.groupby(["width", "batch"]).size().idxmax()
        parts.append(g[(g["width"] == width) & (g["batch"] == batch) & g["optimizer"].isin(["sgd", "none"])])
    return pd.concat(parts) if parts else t


def time_vs_memory(df: pd.DataFrame, path: Path) -> Path:
    """Each strategy's time overhead against its change in measured activation memory, relative to store_all."""
    t = _tradeoff_data(df)
    fig, axes = _panels(t)
    for backend, ax in axes.items():
        g = t[t["backend"] == backend]
        for strategy, h in g.groupby("strategy"):
            color, marker = _style(strategy)
            ax.scatter(100 * h["activation_change"], 100 * h["time_overhead"], color=color, marker=marker,
                       label=strategy)
            for _, row in h.iterrows():
                fused = ", fused" if row.get("fused") == True else ""   # noqa: E712 (vs fused store_all; NaN: unfused)
                ax.annotate(f"d={row['depth']}{fused}", (100 * row["activation_change"], 100 * row["time_overhead"]),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.scatter([0], [0], color=_style("store_all")[0], marker=_style("store_all")[1], label="store_all (reference)")
        ax.set_yscale("symlog", linthresh=10)
        ax.set_title(f"{backend}: vs store_all at the same depth ({_sizes(g, 'width', 'batch')})", fontsize=10)
        ax.set_xlabel(f"change in activation memory, % ({activation_label(df, backend)}; "
                      f"negative = saved)", fontsize=8)
        ax.set_ylabel("extra time per step, % (median step)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def predicted_vs_measured(df: pd.DataFrame, path: Path) -> Path:
    """Measured peak against the engine's prediction, every row, with the y = x line."""
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    for (backend, meter), g in df.groupby(["backend", "peak_meter"]):
        ax.scatter(g["predicted_peak_bytes"] / MIB, g["peak_bytes"] / MIB, s=14, label=f"{backend}, measured by {meter}")
    both = pd.concat([df["predicted_peak_bytes"], df["peak_bytes"]]).dropna()
    both = both[both > 0] / MIB
    lo, hi = (both.min(), both.max()) if len(both) else (1e-3, 1.0)
    xs = np.array([lo, max(hi, 1.01 * lo)])
    ax.plot(xs, xs, color="black", lw=1, label="measured = predicted")
    ax.fill_between(xs, 0.95 * xs, 1.05 * xs, color="gray", alpha=0.2, label="±5%")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("predicted peak, MiB (ckpt.predict_memory + optimizer state)")
    ax.set_ylabel("measured peak, MiB (meter per legend)")
    ax.set_title("prediction vs measurement, every configuration")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def all_plots(df: pd.DataFrame, folder) -> dict[str, Path]:
    """Every plot of a prepared frame that has data into ``folder``; {title: path} (no empty figures)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if df.empty:
        return {}
    predicted = df[df["predicted_peak_bytes"].notna() & df["peak_bytes"].notna()]
    jobs = {
        "Peak memory vs depth": (lambda p: peak_vs(df, "depth", p), "peak_vs_depth.png", _main_sweep(df, "depth")),
        "Peak memory vs batch": (lambda p: peak_vs(df, "batch", p), "peak_vs_batch.png", _main_sweep(df, "batch")),
        "Train / predict ratio vs depth": (lambda p: ratio_vs_depth(df, p), "ratio_vs_depth.png", _ratio_data(df)),
        "Time vs memory trade-off": (lambda p: time_vs_memory(df, p), "time_vs_memory.png", _tradeoff_data(df)),
        "Predicted vs measured": (lambda p: predicted_vs_measured(predicted, p), "predicted_vs_measured.png", predicted),
    }
    out = {}
    for title, (fn, name, needed) in jobs.items():
        if len(needed):
            out[title] = fn(folder / name)
        elif (folder / name).exists():
            (folder / name).unlink()                    # a stale figure of an earlier grid would mislead
    return out
