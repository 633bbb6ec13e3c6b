"""Synthetic sweep frames that follow known laws exactly: for tests of the analysis and the report."""

from __future__ import annotations

import numpy as np
import pandas as pd

# activation bytes per unit: store_all ∝ depth, sqrt_n ∝ √depth, recompute and predict flat
LAWS = {"store_all": 1.0, "sqrt_n": 0.5, "recompute": 0.0}
METERS = {"numpy": "tracemalloc_peak", "torch": "torch_cpu_peak"}


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
            "impl": "ckpt-numpy" if backend == "numpy" else "ckpt-torch", "peak_meter": METERS[backend],
            "peak_bytes": float(peak), METERS[backend]: float(peak), "param_bytes": params, "grad_bytes": params if train else 0,
            "optimizer_bytes": 0, "grad_at_peak_bytes": (peak - act) if train else 0,
            "saved_at_peak_bytes": 0.8 * act if train else 0, "engine_peak_bytes": float(peak),
            "engine_activation_bytes": float(act), "predicted_peak_bytes": float(peak) * 1.01,
            "predicted_activation_bytes": float(act), "time_s": time_s, "time_min_s": 0.9 * time_s,
            "time_max_s": 1.2 * time_s,
            "wall_s": 0.1, "timed_steps": 1,
            # torch's allocator: held − gradients, high-water (prediction rows have no gradient marks)
            "torch_cpu_activation_peak": float(act) if backend == "torch" and train else None,
            "tracemalloc_activation_peak": float(act) if backend == "numpy" and train else None}


def failed_row(status: str = "timeout", error: str = "no result after 1 s") -> dict:
    """A row of a configuration that did not finish."""
    return {"backend": "numpy", "device": "cpu", "depth": 9999, "width": 32, "batch": 64, "dtype": "float32",
            "strategy": "recompute", "mode": "train", "optimizer": "sgd", "repeat": 0, "key": "failed",
            "status": status, "error": error, "wall_s": 1.0}


def noisy(df: pd.DataFrame, rel: float = 0.01, seed: int = 0) -> pd.DataFrame:
    """df with every byte column scaled by independent factors within ±rel."""
    rng = np.random.default_rng(seed)
    df = df.copy()
    for c in ("peak_bytes", "engine_activation_bytes", "tracemalloc_activation_peak"):
        df[c] = df[c] * (1 + rng.uniform(-rel, rel, len(df)))
    return df


def grid_frame(backends=("numpy",), depths=(8,), batches=(64,), widths=(32,),
               strategies=("store_all",), modes=("train",), optimizers=("sgd",), unit: int = 4096) -> pd.DataFrame:
    """Every combination of the given values (a full grid, as a sweep expands it), following LAWS exactly."""
    rows = []
    for backend in backends:
        for depth in depths:
            for batch in batches:
                for width in widths:
                    params = 4 * (width * width + width) * depth
                    scale = unit * batch / 64 * width / 32
                    for mode in modes:
                        if mode == "predict":
                            rows.append(_row(backend, depth, width, batch, "none", "predict", "none", scale, scale,
                                             params, time_s=5e-4))
                            continue
                        for strategy in strategies:
                            for optimizer in optimizers:
                                act = scale * depth ** LAWS.get(strategy, 0.5)
                                rows.append(_row(backend, depth, width, batch, strategy, "train", optimizer, act,
                                                 act + params, params, time_s=1e-3 * depth))
    return pd.DataFrame(rows)
