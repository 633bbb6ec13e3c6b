"""Sweep: expand grids into configurations, run them through an executor, append rows to disk.

A grid is a dict of config fields (``profiling.config.Config``) to one value or a list of
values (``options`` is a table whose values may be lists too); a sweep is a list of grids.
An executor (``profiling.executors``: local, or Ray) runs each configuration in a fresh
process and streams rows back; each is appended to ``<out>/results.jsonl`` (and fsynced) as it
arrives.  The return value is the tidy frame of all rows (``load_results``).

A results folder never loses or mixes rows:

* ``.lock`` (fcntl): a second sweep into the same folder is refused while one runs;
* a torn last line (a write cut by a crash) is moved to ``results.torn.jsonl`` before
  anything is appended, and every unparseable line is reported, never silently skipped;
* ``sweep.json`` records the sweep's configurations: ``resume=True`` with a different grid is
  refused unless ``extend=True`` (which adds the new configurations to the folder's sweep).

Sweep files are TOML, YAML or JSON (``profiling.config.read_sweep_file``)::

    plugins = ["mypkg.strategies"]   # optional: modules registering user strategies

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

import fcntl
import itertools
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from .config import GRID_FIELDS, SCHEMA, Config, check_grid, key_of_row, load_plugins, read_sweep_file, validate
from .workloads import impl_of

RESULTS = "results.jsonl"
TORN = "results.torn.jsonl"
RECORD = "sweep.json"
LOCK = ".lock"

ALL = ["store_all", "sqrt_n", "recompute"]
PRESETS = {
    # under a minute on 2 idle cores: numpy depth and batch sweeps, optimizers; torch depth and batch
    # sweeps of every strategy (each row's process forked from a preloaded zygote: profiling.zygote)
    "default": [
        dict(backend="numpy", depth=[8, 16, 32, 64, 128, 256], width=128, batch=512,
             strategy=["store_all", "sqrt_n"], mode=["train", "predict"]),
        dict(backend="numpy", depth=[8, 16, 32, 64], width=128, batch=512, strategy="recompute"),
        dict(backend="numpy", depth=16, width=128, batch=[256, 512, 1024, 2048],
             strategy=ALL, mode=["train", "predict"]),
        dict(backend="numpy", depth=32, width=128, batch=256, strategy="store_all",
             optimizer=["none", "momentum", "adam"]),
        # torch: the same claims (depth and batch laws, train vs predict) and its side of the
        # time/memory trade-off, every strategy; recompute stops at depth 16 (its step is quadratic in depth)
        dict(backend="torch", depth=[8, 16, 128], width=128, batch=256, strategy=["store_all", "sqrt_n"],
             mode=["train", "predict"]),
        dict(backend="torch", depth=[8, 16], width=128, batch=256, strategy="recompute"),
        dict(backend="torch", depth=8, width=128, batch=[512, 1024], strategy="store_all"),
    ],
    # the committed large CPU sweep: numpy and torch, depth to 512 (recompute to 256), batch to 2048, every strategy
    "cpu_large": [
        dict(backend=["numpy", "torch"], depth=[4, 8, 16, 32, 64, 128, 256, 512], width=128, batch=256,
             strategy=["store_all", "sqrt_n"], mode=["train", "predict"]),
        # recompute's step is quadratic in depth (torch at depth 512: 0.5 M stage forwards, each one
        # recorded by the allocator meter, past 15 min); its flat memory is decided by depths to 256
        dict(backend=["numpy", "torch"], depth=[4, 8, 16, 32, 64, 128, 256], width=128, batch=256,
             strategy="recompute"),
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


def _combinations(grid: dict):
    """Every dict of one value per field (and per ``options`` keyword) of a grid."""
    options = grid.get("options") or {}
    if not isinstance(options, dict):
        raise ValueError(f"sweep: options must be a table of keyword = value(s), got {options!r}")
    keys = [k for k in grid if k != "options"]
    axes = [_values(grid[k]) for k in keys] + [_values(v) for v in options.values()]
    for combo in itertools.product(*axes):
        d = dict(zip(keys, combo[:len(keys)]))
        d["options"] = dict(zip(options, combo[len(keys):]))
        yield d


def expand(grids: list[dict], repeats: int = 1, plugins=()) -> list[Config]:
    """Every configuration of the grids (validated, duplicates dropped, order kept).

    Prediction rows ignore the strategy, its options and the optimizer: they are collapsed to defaults.
    """
    if isinstance(grids, dict):
        grids = [grids]
    load_plugins(plugins, [s for g in grids for s in _values(g.get("strategy", []))])
    out, seen = [], set()
    for grid in grids:
        check_grid(grid)
        for d in _combinations(grid):
            if d.get("mode", Config.mode) == "predict":
                d.update(strategy="none", optimizer="none", options={},
                         **{k: None for k in ("segments", "slots", "budget")}, fused=False)
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
    """(grids, run options) from a sweep file; its ``plugins`` go into the run options."""
    grids, run, plugins = read_sweep_file(path)
    return grids, ({**run, "plugins": plugins} if plugins else run)


def preset(name: str) -> list[dict]:
    """The grids of a named preset."""
    if name not in PRESETS:
        raise ValueError(f"sweep: unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


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


# ----------------------------------------------------------------- the results file

@contextmanager
def folder_lock(out: Path):
    """Hold ``<out>/.lock`` for the sweep's lifetime; a second sweep into the folder is refused."""
    f = open(out / LOCK, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise RuntimeError(f"sweep: another sweep (pid {holder}) is writing to {str(out)!r}; "
                           f"wait for it to finish, or choose another --out") from None
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def scan_rows(out: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """(rows, one problem per unparseable line) of ``<out>/results.jsonl``."""
    path = Path(out) / RESULTS
    if not path.exists():
        return [], []
    rows, problems = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{n}: not JSON ({e.msg}): {line[:80]!r}")
            continue
        if isinstance(row, dict) and any(f in row for f in GRID_FIELDS):
            rows.append(row)
        else:
            problems.append(f"{path}:{n}: not a result row (a JSON object with config fields): {line[:80]!r}")
    return rows, problems


_REPORTED: set[str] = set()      # problems already printed by this process (a sweep reads its file 2–3 times)


def read_rows(out: str | os.PathLike) -> list[dict]:
    """Rows of ``<out>/results.jsonl``; every unparseable line is reported on stderr, once per process."""
    rows, problems = scan_rows(out)
    for p in problems:
        if p not in _REPORTED:
            _REPORTED.add(p)
            print(f"sweep: skipping line {p}", file=sys.stderr)
    return rows


def repair_torn_tail(out: Path) -> str | None:
    """Move a torn last line (no final newline: a cut write) to ``results.torn.jsonl``; what was moved."""
    path = out / RESULTS
    if not path.exists() or path.stat().st_size == 0:
        return None
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return None
    cut = data.rfind(b"\n") + 1
    fragment = data[cut:]
    with open(out / TORN, "ab") as f:
        f.write(fragment + b"\n")
    with open(path, "r+b") as f:
        f.truncate(cut)
    print(f"sweep: {path} ended in a torn line ({len(fragment)} bytes, an interrupted write); "
          f"moved it to {out / TORN}", file=sys.stderr)
    return fragment.decode(errors="replace")


def finished_keys(out: Path, retry_failed: bool = False) -> set[str]:
    """Keys of rows already in ``results.jsonl`` (only the ``ok`` ones with ``retry_failed``)."""
    return {key_of_row(r) for r in read_rows(out) if not retry_failed or r.get("status") == "ok"}


def load_results(out: str | os.PathLike) -> pd.DataFrame:
    """The tidy frame of a sweep folder: one row per configuration run (latest run of a key wins).

    Keys are recomputed from the fields and fields a row predates get their defaults, so rows
    written before a field existed sit beside new ones.
    """
    rows = read_rows(out)
    if not rows:
        raise FileNotFoundError(f"sweep: no results in {str(Path(out) / RESULTS)!r}; run `ckpt-profile sweep` first")
    df = pd.DataFrame([{**Config.from_dict(r).as_dict(), **_present(r), "key": key_of_row(r)} for r in rows])
    df = df.drop_duplicates("key", keep="last").reset_index(drop=True)
    return df.drop(columns=[c for c in ("traceback",) if c in df])


def _present(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in SCHEMA or v is not None}


def append_row(out: Path, row: dict) -> None:
    """Append one row to the results file and flush it to disk."""
    with open(out / RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ----------------------------------------------------------------- the folder's record of its sweep

def check_record(out: Path, configs: list[Config], resume: bool, extend: bool) -> list[str]:
    """The keys this folder's sweep is made of after this run; refuses a different grid on resume."""
    path = out / RECORD
    keys = [c.key for c in configs]
    if not path.exists():
        return keys
    recorded = json.loads(path.read_text())["keys"]
    if set(keys) <= set(recorded) or not resume:
        return recorded if resume else keys
    if not extend:
        new = sorted(set(keys) - set(recorded))
        raise ValueError(f"sweep: {str(out)!r} holds a different sweep ({len(recorded)} configurations; this grid "
                         f"adds {len(new)}, e.g. {new[0]!r}); pass --extend to add them to it, "
                         f"or choose another --out")
    return recorded + [k for k in keys if k not in set(recorded)]


def write_record(out: Path, keys: list[str], grids: list[dict], plugins, resume: bool) -> None:
    """Record the folder's sweep: its configurations' keys, grids (a resume adds to them) and plugins."""
    path = out / RECORD
    old = json.loads(path.read_text()) if path.exists() and resume else {"keys": None, "grids": []}
    if old["keys"] == keys:                              # a resume that added nothing keeps the record
        return
    record = {"keys": keys, "grids": old["grids"] + [g for g in grids if g not in old["grids"]],
              "plugins": list(plugins)}
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")


def _label(c: Config) -> str:
    what = c.mode if c.mode == "predict" else f"{c.strategy}/{c.optimizer}"
    return f"{c.backend}/{c.device} d={c.depth} w={c.width} b={c.batch} {what}"


def _prepare(out: Path, resume: bool, fresh: bool) -> None:
    results = out / RESULTS
    if results.exists() and results.stat().st_size and not (resume or fresh):
        raise FileExistsError(f"sweep: {str(results)!r} already holds results; pass --resume to continue "
                              f"that sweep or --fresh to start over")
    if fresh:                          # the old rows, the old run's header and record go together
        from .environment import ENVIRONMENT
        for stale in (results, out / ENVIRONMENT, out / RECORD, out / TORN):
            stale.unlink(missing_ok=True)
    repair_torn_tail(out)


def run_sweep(grids: list[dict], out: str | os.PathLike, resume: bool = False, fresh: bool = False,
              retry_failed: bool = False, progress: bool = True, repeats: int = 1, executor=None,
              extend: bool = False, plugins=(), **run_options) -> pd.DataFrame:
    """Run every configuration of ``grids`` not yet in ``out`` with ``executor`` (default: local, one at a time).

    Rows are appended as they finish; the frame of all rows there is returned.
    """
    from .executors import LocalExecutor

    executor = executor or LocalExecutor()
    configs, skipped = runnable(expand(grids, repeats, plugins))
    out = check_out(out)
    executor.check(configs)
    try:
        with folder_lock(out):
            todo = _plan(out, configs, skipped, grids, plugins, resume, fresh, extend, retry_failed)
            _stream(executor.run(todo, {**run_options, "plugins": list(plugins)}), out, len(todo), progress)
    finally:
        executor.close()
    return load_results(out)


def _plan(out, configs, skipped, grids, plugins, resume, fresh, extend, retry_failed) -> list[Config]:
    """Prepare the locked folder (torn tail, record, environment); the configurations still to run."""
    from .environment import write_environment
    _prepare(out, resume, fresh)
    keys = check_record(out, configs, resume, extend)
    for c in skipped:
        print(f"sweep: skipping {_label(c)}: needs ckpt's torch backend (ckpt.CheckpointedSequential)")
    done = finished_keys(out, retry_failed) if resume else set()
    write_environment(out)
    write_record(out, keys, grids, plugins, resume)
    return [c for c in configs if c.key not in done]


def _stream(rows, out: Path, total: int, progress: bool) -> None:
    """Append each row as it arrives, with a progress bar."""
    from tqdm import tqdm
    bar = tqdm(total=total, desc="sweep", unit="config", disable=not progress, dynamic_ncols=True)
    for row in rows:
        append_row(out, row)
        bar.update()
        bar.set_postfix_str(row.get("key", "")[:60])
    bar.close()
