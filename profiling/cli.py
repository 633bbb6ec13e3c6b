"""``ckpt-profile`` (or ``python -m profiling``): run a memory sweep, then write its report."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

DESCRIPTION = """\
Measure how much memory one training step needs versus prediction, for each
activation strategy of ckpt (store_all, sqrt_n, recompute, ...), and write a
markdown report with tables, fitted laws and plots.

Every configuration runs in its own fresh process; rows are appended to
<out>/results.jsonl as they finish, so an interrupted sweep continues with --resume.

quick start:
  ckpt-profile sweep --preset default --out reports/default     # ≤ 2 min on 2 cores
  ckpt-profile sweep --preset smoke --out /tmp/try               # seconds
  ckpt-profile sweep --backend numpy --depth 8 16 32 64 --strategy all --mode train predict --out /tmp/mine
  ckpt-profile sweep --config my_sweep.toml --out /tmp/mine --resume
  ckpt-profile report reports/default                             # re-render tables and plots
  ckpt-profile presets                                            # what each preset runs
"""

GRID_FLAGS = {
    "backend": (str, "numpy (the engine) and/or torch"),
    "device": (str, "cpu and/or cuda (cuda needs torch with a GPU)"),
    "depth": (int, "number of Dense+ReLU stages"),
    "width": (int, "units per stage (square MLP)"),
    "batch": (int, "rows per batch"),
    "dtype": (str, "float32 and/or float64"),
    "strategy": (str, "activation strategies, or 'all' (ignored in predict mode)"),
    "mode": (str, "train (forward+backward+optimizer step) and/or predict (forward only)"),
    "optimizer": (str, "none, sgd, momentum, adam (state: 0, 0, 1, 2 copies of the parameters)"),
}


def _sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid of configurations and write the report",
                       description="Run a grid of configurations, each in a fresh process, then write "
                                   "<out>/report.md. The grid comes from --preset, --config (TOML/YAML) "
                                   "or the grid flags; grid flags given with a preset or file override "
                                   "that field in every one of its grids.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("what to run")
    src.add_argument("--preset", help="a named grid: default, cpu_large, gpu, smoke (see `ckpt-profile presets`)")
    src.add_argument("--config", metavar="FILE", help="a TOML (or YAML) sweep file with [[grid]] tables and an optional [run] table")
    for name, (kind, text) in GRID_FLAGS.items():
        src.add_argument(f"--{name}", nargs="+", type=kind, metavar=name.upper(), help=text)
    src.add_argument("--repeats", type=int, default=None, help="fresh processes per configuration (default 1)")
    run = p.add_argument_group("how each configuration runs")
    run.add_argument("--timeout", type=float, help="seconds before a configuration is killed and recorded as 'timeout' (default 300)")
    run.add_argument("--warmup", type=int, help="untimed steps before timing (default 1)")
    run.add_argument("--iters", type=int, help="timed steps per configuration (default 3)")
    run.add_argument("--budget", dest="budget_s", type=float, help="stop timing a configuration after this many seconds (default 2)")
    run.add_argument("--threads", type=int, help="BLAS/OpenMP threads in each child (default 1: steadier timings on a shared machine)")
    out = p.add_argument_group("output")
    out.add_argument("--out", help="results folder (default reports/<preset or 'sweep'>)")
    out.add_argument("--resume", action="store_true", help="continue the sweep in --out, skipping finished configurations")
    out.add_argument("--retry-failed", action="store_true", help="with --resume: run failed configurations again")
    out.add_argument("--fresh", action="store_true", help="delete existing results in --out first")
    out.add_argument("--no-report", action="store_true", help="only measure; write the report later with `ckpt-profile report`")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    out.add_argument("--dry-run", action="store_true", help="list the configurations and exit")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ckpt-profile``."""
    parser = argparse.ArgumentParser(prog="ckpt-profile", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="{sweep,report,presets,one}")
    _sweep_parser(sub)
    r = sub.add_parser("report", help="(re)write report.md, results.csv and plots of a sweep folder")
    r.add_argument("folder", help="a folder holding results.jsonl")
    r.add_argument("--name", help="title of the report (default: the folder's name)")
    sub.add_parser("presets", help="print the grids of every preset")
    o = sub.add_parser("one", help="measure one configuration in a fresh process and print its row as JSON")
    for name, (kind, text) in GRID_FLAGS.items():
        o.add_argument(f"--{name}", type=kind, help=text)
    o.add_argument("--timeout", type=float, default=300.0, help="seconds before it is killed (default 300)")
    return parser


def _grids(args) -> tuple[list[dict], dict]:
    from .sweep import load_grid_file, preset
    from .workloads import known_strategies
    if args.preset and args.config:
        raise ValueError("choose one of --preset and --config, not both")
    run = {}
    if args.config:
        grids, run = load_grid_file(args.config)
    elif args.preset:
        grids = preset(args.preset)
    else:
        grids = [{}]
    flags = {k: getattr(args, k) for k in GRID_FLAGS if getattr(args, k) is not None}
    if flags.get("strategy") and "all" in flags["strategy"]:
        flags["strategy"] = known_strategies()
    if not args.preset and not args.config and not flags:
        raise ValueError("nothing to run: give --preset, --config or grid flags (see `ckpt-profile sweep --help`)")
    return [{**g, **flags} for g in grids], run


def cmd_sweep(args) -> int:
    """Run a sweep (and its report) from parsed arguments."""
    from .report import write_report
    from .sweep import expand, run_sweep, runnable
    grids, run = _grids(args)
    opts = {k: getattr(args, k) for k in ("timeout", "warmup", "iters", "budget_s", "threads")
            if getattr(args, k) is not None}
    run = {**run, **opts}
    file_repeats = run.pop("repeats", 1)
    repeats = args.repeats or file_repeats
    if args.dry_run:
        configs, skipped = runnable(expand(grids, repeats))
        for c in configs:
            print(c.key)
        print(f"{len(configs)} configurations ({len(skipped)} skipped: no installed implementation)")
        return 0
    out = Path(args.out or f"reports/{args.preset or 'sweep'}")
    run_sweep(grids, out, resume=args.resume, fresh=args.fresh, retry_failed=args.retry_failed,
              progress=not args.no_progress, repeats=repeats, **run)
    command = out / "command.txt"
    if not command.exists():
        command.write_text("ckpt-profile " + " ".join(shlex.quote(a) for a in sys.argv[1:]) + "\n")
    if not args.no_report:
        print(f"report: {write_report(out)}")
    return 0


def cmd_one(args) -> int:
    """Measure one configuration and print its row."""
    from .runner import run_config
    from .workloads import Config, validate
    given = {k: getattr(args, k) for k in GRID_FLAGS if getattr(args, k) is not None}
    c = validate(Config(**given))
    print(json.dumps(run_config(c, timeout=args.timeout), indent=2))
    return 0


def cmd_presets(args) -> int:
    """Print every preset's grids."""
    from .sweep import PRESETS
    for name, grids in PRESETS.items():
        print(f"# --preset {name}")
        for g in grids:
            print("[[grid]]")
            for k, v in g.items():
                print(f"{k} = {json.dumps(v)}")
        print()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ckpt-profile`` and ``python -m profiling``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from .report import write_report
    commands = {"sweep": cmd_sweep, "one": cmd_one, "presets": cmd_presets,
                "report": lambda a: print(f"report: {write_report(a.folder, a.name)}") or 0}
    try:
        return commands[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, RuntimeError) as e:
        print(f"ckpt-profile: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ckpt-profile: interrupted; finished rows are saved — continue with --resume", file=sys.stderr)
        return 130
