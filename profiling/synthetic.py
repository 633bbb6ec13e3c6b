"""Synthetic sweep frames that follow known laws exactly: for tests of the analysis and the report."""

from __future__ import annotations

import numpy as np
import pandas as pd

# activation bytes per unit: store_all ∝ depth, sqrt_n ∝ √depth, recompute and predict flat
LAWS = {"store_all": 1.0, "sqrt_n": 0.5, "recompute": 0.0}


def synthetic_frame(depths=(4, 8, 16, 32, 64), batches=(64, 128, 256), width: int = 32, unit: int = 4096,
                    grad_per_stage: int = 1000, backend: str = "numpy") -> pd.DataFrame:
    """Rows of a depth sweep (at batches[0]) and a batch sweep (at depths[0]) with exact power laws.

    Training activation = unit·(batch/64)·depth^slope; peak = activation + gradients; prediction = unit·batch/64.
    """
    rows = []
    sweeps = [(d, batches[0]) for d in depths] + [(depths[0], b) for b in batches[1:]]
    for depth, batch in sweeps:
        scale = unit * batch / 64
        params = grad_per_stage * depth
        for strategy, slope in LAWS.items():
            act = scale * depth ** slope
            rows.append(_row(backend, depth, width, batch, strategy, "train", "sgd", act, act + params, params,
                             time_s=1e-3 * depth * (1 + (strategy != "store_all"))))
        rows.append(_row(backend, depth, width, batch, "none", "predict", "none", scale, scale, params, time_s=5e-4))
    return pd.DataFrame(rows)


def _row(backend, depth, width, batch, strategy, mode, optimizer, act, peak, params, time_s) -> dict:
    train = mode == "train"
    return {"backend": backend, "device": "cpu", "depth": depth, "width": width, "batch": batch,
            "dtype": "float32", "strategy": strategy, "mode": mode, "optimizer": optimizer, "repeat": 0,
            "key": f"{backend}|{depth}|{batch}|{strategy}|{mode}", "status": "ok", "error": "",
            "impl": "ckpt-numpy", "peak_meter": "tracemalloc_peak", "peak_bytes": float(peak),
            "tracemalloc_peak": float(peak), "param_bytes": params, "grad_bytes": params if train else 0,
            "optimizer_bytes": 0, "grad_at_peak_bytes": (peak - act) if train else 0,
            "saved_at_peak_bytes": 0.8 * act if train else 0, "engine_peak_bytes": float(peak),
            "engine_activation_bytes": float(act), "predicted_peak_bytes": float(peak) * 1.01,
            "predicted_activation_bytes": float(act), "time_s": time_s, "time_min_s": time_s,
            "wall_s": 0.1, "timed_steps": 1}


def failed_row(status: str = "timeout", error: str = "no result after 1 s") -> dict:
    """A row of a configuration that did not finish."""
    return {"backend": "numpy", "device": "cpu", "depth": 9999, "width": 32, "batch": 64, "dtype": "float32",
            "strategy": "recompute", "mode": "train", "optimizer": "sgd", "repeat": 0, "key": "failed",
            "status": status, "error": error, "wall_s": 1.0}


def noisy(df: pd.DataFrame, rel: float = 0.01, seed: int = 0) -> pd.DataFrame:
    """df with every byte column scaled by independent factors within ±rel."""
    rng = np.random.default_rng(seed)
    df = df.copy()
    for c in ("peak_bytes", "engine_activation_bytes"):
        df[c] = df[c] * (1 + rng.uniform(-rel, rel, len(df)))
    return df
