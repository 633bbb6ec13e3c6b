"""``ckpt-profile`` (or ``python -m profiling``): run a memory sweep, then write its report."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from . import plan, timeline
from .config import (GRID_FIELDS, RUN_OPTIONS, SCHEMA, Config, check_run_option, strategies_without_options,
                     load_plugins, validate)

DESCRIPTION = """\
Measure how much memory one training step needs versus prediction, for each
activation strategy of ckpt (store_all, sqrt_n, recompute, ...), and write a
markdown report with tables, fitted laws and plots.

Every configuration runs in its own fresh process; rows are appended to
<out>/results.jsonl as they finish, so an interrupted sweep continues with --resume.

quick start:
  ckpt-profile sweep --preset default --out runs/mine           # under a minute on 2 idle cores
  ckpt-profile sweep --preset smoke --out /tmp/try               # seconds
  ckpt-profile sweep --backend numpy --depth 8 16 32 64 --strategy all --mode train predict --out /tmp/mine
  ckpt-profile sweep --strategy sqrt_n --segments 2 4 8 --depth 64 --out /tmp/segments
  ckpt-profile sweep --plugin mypkg.strategies --strategy my_strategy --depth 8 16 --out /tmp/mine
  ckpt-profile sweep --config my_sweep.toml --out /tmp/mine --resume
  ckpt-profile sweep --preset smoke --executor ray --out /tmp/ray  # Ray: local, or --address of a cluster
  ckpt-profile report reports/default                             # re-render tables and plots
  ckpt-profile presets                                            # what each preset runs
"""

EPILOG = """\
executors:
  --executor local --jobs N   N configurations at once on this machine (timings then share cores)
  --executor ray              a local Ray instance (pip install -e '.[ray]'), started and stopped here
  --executor ray --address auto          an existing Ray cluster (run on its head node)
exit status: 0 done, 2 bad flag / sweep file / folder (the message names it and what is allowed)
"""


def _grid_type(name: str):
    """The argparse type of a grid field, from the schema (bools read true/false)."""
    meta = SCHEMA[name].metadata
    if meta["kind"] is bool:
        return _boolean
    return meta["read"]


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _run_type(name: str):
    """An argparse type that checks a run option against the schema (type and bound)."""
    kind = RUN_OPTIONS[name].kind

    def parse(text: str):
        try:
            return check_run_option(name, kind(text) if kind is int else float(text), f"--{_flag(name)}")
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1] if "must be" in str(e) else
                                             f"expected {kind.__name__}, got {text!r}") from None
    parse.__name__ = kind.__name__
    return parse


def _jobs(text: str) -> int:
    """``--jobs``: an integer ≥ 1."""
    try:
        jobs = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {text!r}") from None
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"jobs must be an integer ≥ 1, got {jobs}")
    return jobs


def _flag(name: str) -> str:
    return {"budget_s": "time-budget", "memory_limit_mb": "memory-limit-mb"}.get(name, name)


def _option(text: str) -> tuple[str, object]:
    """KEY=VALUE of ``--option``; VALUE read as JSON (numbers, true/false) or kept as text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid of configurations and write the report", epilog=EPILOG,
                       description="Run a grid of configurations, each in a fresh process, then write\n"
                                   "<out>/report.md. The grid comes from --preset, --config (TOML/YAML/JSON)\n"
                                   "or the grid flags; grid flags given with a preset or file override\n"
                                   "that field in every one of its grids.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("what to run")
    src.add_argument("--preset", help="a named grid: default, cpu_large, gpu, smoke (see `ckpt-profile presets`)")
    src.add_argument("--config", metavar="FILE", help="a TOML, YAML or JSON sweep file with [[grid]] tables, "
                                                      "an optional [run] table and plugins")
    _grid_flags(src, nargs="+")
    src.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                     help="import MODULE (which registers user strategies) in every process; repeatable")
    run = p.add_argument_group("how each configuration runs")
    for name, opt in RUN_OPTIONS.items():
        if opt.kind is bool:
            run.add_argument(f"--no-{name}", dest=name, action="store_const", const=False,
                             help=f"turn off (on by default): {opt.help}")
            continue
        default = "" if opt.default is None else f" (default {opt.default:g})"
        run.add_argument(f"--{_flag(name)}", dest=name, type=_run_type(name), help=opt.help + default)
    ex = p.add_argument_group("where configurations run")
    ex.add_argument("--executor", choices=("local", "ray"), default="local", help="local (default) or ray")
    ex.add_argument("--jobs", type=_jobs, default=1,
                    help="local executor: configurations at once (default 1; more share the cores' time)")
    ex.add_argument("--launch", choices=("fork", "exec"), default="fork",
                    help="local executor: fork each configuration's fresh process from a zygote that imported "
                         "numpy/ckpt/torch once (default), or exec each afresh (slower: the imports repeat)")
    ex.add_argument("--address", help="ray executor: an existing cluster ('auto', 'ray://host:10001'); "
                                      "default: start a local Ray instance")
    out = p.add_argument_group("output")
    out.add_argument("--out", help="results folder (default reports/<preset or 'sweep'>)")
    out.add_argument("--resume", action="store_true", help="continue the sweep in --out, skipping finished configurations")
    out.add_argument("--extend", action="store_true", help="with --resume: add this grid's new configurations to the folder's sweep")
    out.add_argument("--retry-failed", action="store_true", help="with --resume: run failed configurations again")
    out.add_argument("--fresh", action="store_true", help="delete existing results in --out first")
    out.add_argument("--no-report", action="store_true", help="only measure; write the report later with `ckpt-profile report`")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    out.add_argument("--dry-run", action="store_true", help="list the configurations and exit")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ckpt-profile``."""
    parser = argparse.ArgumentParser(prog="ckpt-profile", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="{sweep,report,presets,one,plan,timeline}")
    _sweep_parser(sub)
    plan.add_parser(sub)
    timeline.add_parser(sub)
    r = sub.add_parser("report", help="(re)write report.md, results.csv and plots of a sweep folder")
    r.add_argument("folder", help="a folder holding results.jsonl")
    r.add_argument("--name", help="title of the report (default: the folder's name)")
    sub.add_parser("presets", help="print the grids of every preset")
    o = sub.add_parser("one", help="measure one configuration in a fresh process and print its row as JSON")
    _grid_flags(o, nargs=None)
    o.add_argument("--plugin", action="append", default=[], metavar="MODULE", help="import MODULE first")
    o.add_argument("--timeout", type=_run_type("timeout"), default=300.0, help="seconds before it is killed (default 300)")
    return parser


def _grid_flags(group, nargs) -> None:
    """One flag per grid field of the schema; ``options`` becomes repeatable ``--option KEY=VALUE``."""
    for name in GRID_FIELDS:
        meta = SCHEMA[name].metadata
        if name == "options":
            group.add_argument("--option", dest="options", action="append", type=_option, metavar="KEY=VALUE",
                               help=meta["help"] + "; repeat a KEY to sweep its values")
        else:
            group.add_argument(f"--{name}", nargs=nargs, type=_grid_type(name), metavar=name.upper(), help=meta["help"])


def _given_fields(args) -> dict:
    """The grid fields given on the command line (``--option`` pairs gathered into one table)."""
    given = {k: getattr(args, k) for k in GRID_FIELDS if k != "options" and getattr(args, k) is not None}
    if args.options:
        table = {}
        for key, value in args.options:
            table.setdefault(key, []).append(value)
        given["options"] = {k: v if len(v) > 1 else v[0] for k, v in table.items()}
    return given


def _grids(args) -> tuple[list[dict], dict]:
    from .sweep import load_grid_file, preset
    if args.preset and args.config:
        raise ValueError("choose one of --preset and --config, not both")
    run = {}
    if args.config:
        grids, run = load_grid_file(args.config)
    elif args.preset:
        grids = preset(args.preset)
    else:
        grids = [{}]
    flags = _given_fields(args)
    if flags.get("strategy") and "all" in flags["strategy"]:
        load_plugins(args.plugin + run.get("plugins", []))
        flags["strategy"], needing = strategies_without_options()
        if needing:
            print(f"ckpt-profile: strategy 'all' leaves out {', '.join(needing)}: they need an option "
                  f"(revolve --slots, optimal/chen_greedy --budget); sweep them in a grid of their own",
                  file=sys.stderr)
    if not args.preset and not args.config and not flags:
        raise ValueError("nothing to run: give --preset, --config or grid flags (see `ckpt-profile sweep --help`)")
    return [{**g, **flags} for g in grids], run


def cmd_sweep(args) -> int:
    """Run a sweep (and its report) from parsed arguments."""
    from .executors import make_executor
    from .report import write_report
    from .sweep import expand, run_sweep, runnable
    grids, run = _grids(args)
    run.update({k: getattr(args, k) for k in RUN_OPTIONS if getattr(args, k) is not None})
    repeats = run.pop("repeats", 1)
    plugins = list(dict.fromkeys(run.pop("plugins", []) + args.plugin))
    if args.extend and not args.resume:
        raise ValueError("--extend adds configurations to an existing sweep: use it with --resume")
    if args.dry_run:
        configs, skipped = runnable(expand(grids, repeats, plugins))
        for c in configs:
            print(c.key)
        print(f"{len(configs)} configurations ({len(skipped)} skipped: no installed implementation)")
        return 0
    executor = make_executor(args.executor, args.jobs, args.address, args.launch)
    out = Path(args.out or f"reports/{args.preset or 'sweep'}")
    run_sweep(grids, out, resume=args.resume, fresh=args.fresh, retry_failed=args.retry_failed,
              progress=not args.no_progress, repeats=repeats, executor=executor, extend=args.extend,
              plugins=plugins, **run)
    log_command(out, fresh=args.fresh)
    if not args.no_report:
        print(f"report: {write_report(out)}")
    return 0


def log_command(out: Path, fresh: bool = False) -> None:
    """Append this invocation to ``<out>/command.txt`` (one line per run of the folder's sweep; --fresh starts it anew)."""
    from datetime import datetime, timezone
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with open(out / "command.txt", "w" if fresh else "a") as f:
        f.write(f"# {stamp}\nckpt-profile " + " ".join(shlex.quote(a) for a in sys.argv[1:]) + "\n")


def cmd_one(args) -> int:
    """Measure one configuration and print its row."""
    from .runner import run_config
    given = _given_fields(args)
    load_plugins(args.plugin, [given.get("strategy", "")])
    c = validate(Config(**given))
    print(json.dumps(run_config(c, timeout=args.timeout, plugins=args.plugin), indent=2))
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:                              # argparse: --help (0) or a bad flag (2)
        return e.code
    if args.command is None:
        parser.print_help()
        return 2
    from .report import write_report
    commands = {"sweep": cmd_sweep, "one": cmd_one, "presets": cmd_presets, "plan": plan.run, "timeline": timeline.run,
                "report": lambda a: print(f"report: {write_report(a.folder, a.name)}") or 0}
    try:
        return commands[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, RuntimeError) as e:
        print(f"ckpt-profile: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ckpt-profile: interrupted; finished rows are saved — continue with --resume", file=sys.stderr)
        return 130
