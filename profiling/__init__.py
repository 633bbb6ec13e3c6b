"""profiling: measure the memory and time of training vs prediction, per activation strategy.

    from profiling import run_sweep, preset, write_report, RayExecutor
    df = run_sweep(preset("default"), "runs/mine")            # tidy DataFrame, one row per run
    write_report("runs/mine")                                 # report.md, results.csv, plots
    run_sweep(preset("smoke"), "runs/ray", executor=RayExecutor())   # the same on Ray

Command line: ``ckpt-profile --help`` (or ``python -m profiling --help``).
Names are imported on first use: a measuring child process (``profiling.runner``) loads
neither pandas nor matplotlib, and nothing here imports torch unless a torch
configuration asks for it.
"""

from importlib import import_module

_WHERE = {"Config": "config", "validate": "config", "read_sweep_file": "config", "run_config": "runner",
          "run_sweep": "sweep", "expand": "sweep", "preset": "sweep", "PRESETS": "sweep", "load_results": "sweep",
          "LocalExecutor": "executors", "RayExecutor": "executors", "make_executor": "executors",
          "write_report": "report", "render": "report"}

__all__ = list(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'profiling' has no attribute {name!r}")
