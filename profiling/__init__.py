"""profiling: measure the memory and time of training vs prediction, per activation strategy.

    from profiling import run_sweep, preset, write_report
    df = run_sweep(preset("default"), "reports/default")   # tidy DataFrame, one row per run
    write_report("reports/default")                        # report.md, results.csv, plots

Command line: ``ckpt-profile --help`` (or ``python -m profiling --help``).
Nothing here imports torch unless a torch or cuda configuration asks for it.
"""

from .report import render, write_report
from .runner import run_config
from .sweep import PRESETS, expand, load_results, preset, run_sweep
from .workloads import Config

__all__ = ["Config", "run_config", "run_sweep", "expand", "preset", "PRESETS", "load_results",
           "write_report", "render"]
