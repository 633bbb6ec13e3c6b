"""Sweep: expand grids into configurations, run each in a fresh process, append rows to disk.

A grid is a dict of config fields (see ``profiling.workloads.Config``) to one value or a
list of values; a sweep is a list of grids (so a depth sweep and a batch sweep can share
one run).  Rows are appended to ``<out>/results.jsonl`` as each finishes; ``resume=True``
skips every configuration already there, so an interrupted sweep continues where it
stopped.  The return value is the tidy frame of all rows (``load_results``).

Grid files are TOML (or YAML when PyYAML is installed)::

    [run]                      # optional: how each configuration is run
    timeout = 300
    iters = 3

    [[grid]]                   # one or more grids
    backend = "numpy"
    depth = [8, 16, 32, 64]
    strategy = ["store_all", "sqrt_n", "recompute"]
    mode = ["train", "predict"]
"""

from __future__ import annotations

import itertools
import json
import os
import tomllib
from dataclasses import fields
from pathlib import Path

import pandas as pd

from .workloads import Config, impl_of, validate

RESULTS = "results.jsonl"
GRID_FIELDS = [f.name for f in fields(Config) if f.name != "repeat"]
RUN_OPTIONS = ("timeout", "warmup", "iters", "budget_s", "threads", "repeats")

ALL = ["store_all", "sqrt_n", "recompute"]
PRESETS = {
    # ≤ 2 min on 2 cores: numpy depth and batch sweeps, optimizers, a few torch rows
    "default": [
        dict(backend="numpy", depth=[8, 16, 32, 64, 128, 256], width=128, batch=512,
             strategy=["store_all", "sqrt_n"], mode=["train", "predict"]),
        dict(backend="numpy", depth=[8, 16, 32, 64], width=128, batch=512, strategy="recompute"),
        dict(backend="numpy", depth=16, width=128, batch=[256, 512, 1024, 2048],
             strategy=ALL, mode=["train", "predict"]),
        dict(backend="numpy", depth=32, width=128, batch=256, strategy="store_all",
             optimizer=["none", "momentum", "adam"]),
        dict(backend="torch", depth=[16, 128], width=128, batch=256, strategy="store_all",
             mode=["train", "predict"]),
    ],
    # the committed large CPU sweep: numpy and torch, depth to 512, batch to 2048, every strategy
    "cpu_large": [
        dict(backend=["numpy", "torch"], depth=[4, 8, 16, 32, 64, 128, 256, 512], width=128, batch=256,
             strategy=ALL, mode=["train", "predict"]),
        dict(backend=["numpy", "torch"], depth=32, width=128, batch=[128, 256, 512, 1024, 2048],
             strategy=ALL, mode=["train", "predict"]),
        dict(backend=["numpy", "torch"], depth=32, width=128, batch=256, strategy=ALL,
             optimizer=["none", "momentum", "adam"]),
    ],
    # one GPU: torch on cuda (run by scripts/gpu_sweep.sh)
    "gpu": [
        dict(backend="torch", device="cuda", depth=[8, 16, 32, 64, 128, 256, 512], width=1024,
             batch=512, strategy=ALL, mode=["train", "predict"]),
        dict(backend="torch", device="cuda", depth=64, width=1024, batch=[128, 256, 512, 1024, 2048, 4096],
             strategy=ALL, mode=["train", "predict"]),
        dict(backend="torch", device="cuda", depth=64, width=1024, batch=512, strategy=ALL,
             optimizer=["none", "momentum", "adam"]),
    ],
    # seconds: for trying the tool
    "smoke": [dict(backend="numpy", depth=[4, 8, 16], width=64, batch=128, strategy=ALL, mode=["train", "predict"])],
}


def _values(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def expand(grids: list[dict], repeats: int = 1) -> list[Config]:
    """Every configuration of the grids (validated, duplicates dropped, order kept).

    Prediction rows ignore strategy and optimizer: they are collapsed to ``"none"``.
    """
    if isinstance(grids, dict):
        grids = [grids]
    out, seen = [], set()
    for grid in grids:
        unknown = set(grid) - set(GRID_FIELDS)
        if unknown:
            raise ValueError(f"sweep: unknown grid field(s) {', '.join(sorted(unknown))}; "
                             f"allowed: {', '.join(GRID_FIELDS)}")
        keys = list(grid)
        for combo in itertools.product(*(_values(grid[k]) for k in keys)):
            d = dict(zip(keys, combo))
            if d.get("mode", Config.mode) == "predict":
                d.update(strategy="none", optimizer="none")
            for r in range(repeats):
                c = validate(Config(**d, repeat=r))
                if c.key not in seen:
                    seen.add(c.key)
                    out.append(c)
    if not out:
        raise ValueError("sweep: the grid is empty; give at least one value for every field you list")
    return out


def runnable(configs: list[Config]) -> tuple[list[Config], list[Config]]:
    """(configs some installed implementation can run, the others) — e.g. torch sqrt_n without ckpt's torch backend."""
    ok = [c for c in configs if impl_of(c) is not None]
    return ok, [c for c in configs if impl_of(c) is None]


def load_grid_file(path: str | os.PathLike) -> tuple[list[dict], dict]:
    """(grids, run options) from a TOML or YAML sweep file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep: no sweep file at {str(path)!r}")
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError("sweep: YAML sweep files need PyYAML (pip install pyyaml); or use TOML") from None
        data = yaml.safe_load(path.read_text()) or {}
    else:
        data = tomllib.loads(path.read_text())
    grids = data.get("grid", [])
    grids = [grids] if isinstance(grids, dict) else list(grids)
    if not grids:
        raise ValueError(f"sweep: {str(path)!r} has no [grid] / [[grid]] table")
    run = data.get("run", {})
    bad = set(run) - set(RUN_OPTIONS)
    if bad:
        raise ValueError(f"sweep: unknown [run] option(s) {', '.join(sorted(bad))}; allowed: {', '.join(RUN_OPTIONS)}")
    return grids, run


def preset(name: str) -> list[dict]:
    """The grids of a named preset."""
    if name not in PRESETS:
        raise ValueError(f"sweep: unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def check_cuda(configs: list[Config]) -> None:
    """Raise before anything runs when a cuda configuration meets a machine without a GPU."""
    if any(c.device == "cuda" for c in configs):
        import torch
        if not torch.cuda.is_available():
            raise RuntimeError("sweep: device 'cuda' requested but torch.cuda.is_available() is False here; "
                               "drop cuda from the grid, or run scripts/gpu_sweep.sh on a machine with a GPU")


def check_out(out: str | os.PathLike) -> Path:
    """Create the output folder and prove it writable; a clear error otherwise."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"sweep: cannot write to output folder {str(out)!r} ({e.strerror}); "
                              f"choose another --out") from None
    return out


def finished_keys(out: Path, retry_failed: bool = False) -> set[str]:
    """Keys of rows already in ``results.jsonl`` (only the ``ok`` ones with ``retry_failed``)."""
    rows = read_rows(out)
    return {r["key"] for r in rows if not retry_failed or r.get("status") == "ok"}


def read_rows(out: str | os.PathLike) -> list[dict]:
    """Rows of ``<out>/results.jsonl``; a torn last line (an interrupted write) is skipped."""
    path = Path(out) / RESULTS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def load_results(out: str | os.PathLike) -> pd.DataFrame:
    """The tidy frame of a sweep folder: one row per configuration run (latest run of a key wins)."""
    rows = read_rows(out)
    if not rows:
        raise FileNotFoundError(f"sweep: no results in {str(Path(out) / RESULTS)!r}; run `ckpt-profile sweep` first")
    df = pd.DataFrame(rows).drop_duplicates("key", keep="last").reset_index(drop=True)
    return df.drop(columns=[c for c in ("traceback",) if c in df])


def append_row(out: Path, row: dict) -> None:
    """Append one row to the results file and flush it to disk."""
    with open(out / RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _label(c: Config) -> str:
    what = c.mode if c.mode == "predict" else f"{c.strategy}/{c.optimizer}"
    return f"{c.backend}/{c.device} d={c.depth} w={c.width} b={c.batch} {what}"


def run_sweep(grids: list[dict], out: str | os.PathLike, resume: bool = False, fresh: bool = False,
              retry_failed: bool = False, progress: bool = True, repeats: int = 1, **run_options) -> pd.DataFrame:
    """Run every configuration of ``grids`` not yet in ``out``; the frame of all rows there."""
    from tqdm import tqdm

    from .environment import ENVIRONMENT, write_environment
    from .runner import run_config

    configs, skipped = runnable(expand(grids, repeats))
    check_cuda(configs)
    out = check_out(out)
    results = out / RESULTS
    if results.exists() and results.stat().st_size and not (resume or fresh):
        raise FileExistsError(f"sweep: {str(results)!r} already holds results; pass --resume to continue "
                              f"that sweep or --fresh to start over")
    if fresh:                          # the old rows and the old run's environment header go together
        for stale in (results, out / ENVIRONMENT):
            stale.unlink(missing_ok=True)
    for c in skipped:
        print(f"sweep: skipping {_label(c)}: needs ckpt's torch backend (ckpt.CheckpointedSequential)")
    done = finished_keys(out, retry_failed) if resume else set()
    todo = [c for c in configs if c.key not in done]
    write_environment(out)
    bar = tqdm(todo, desc="sweep", unit="config", disable=not progress, dynamic_ncols=True)
    for c in bar:
        bar.set_postfix_str(_label(c))
        append_row(out, run_config(c, **run_options))
    return load_results(out)
