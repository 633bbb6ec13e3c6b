"""``ckpt-profile plan``: the schedule a strategy picks for a model and a byte budget, with its predicted peak and time.

    ckpt-profile plan --depth 32 --width 256 --batch 1024 --budget 64MiB
    ckpt-profile plan --profile my_model.json --budget 6GiB          # a saved ckpt.Profile (torch models)
"""

from __future__ import annotations

import argparse

import ckpt
from ckpt.schedule import Backward, ForwardTape, Save


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``plan`` sub-command to an argparse ``subparsers``."""
    p = subparsers.add_parser("plan", help="print the plan for a model and a memory budget",
                              description="Plan one training step of a square Dense+ReLU MLP (or a saved "
                                          "ckpt.Profile) under a byte budget; print the schedule and its "
                                          "predicted peak (memory model) and time (profile).")
    p.add_argument("--depth", type=int, default=32, help="number of Dense+ReLU stages (default 32)")
    p.add_argument("--width", type=int, default=256, help="units per stage (default 256)")
    p.add_argument("--batch", type=int, default=128, help="rows per batch (default 128)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--profile", metavar="FILE", help="plan from a saved ckpt.Profile JSON instead of an MLP")
    p.add_argument("--budget", help="bytes, or e.g. 6GiB, 512MB (needed by optimal and chen_greedy)")
    p.add_argument("--strategy", default="optimal", help="optimal (default), chen_greedy, revolve, sqrt_n, "
                                                         "recompute, store_all or a registered strategy")
    p.add_argument("--slots", type=int, help="revolve's checkpoint slots (x_0 included)")
    p.add_argument("--segments", type=int, help="sqrt_n's segment count")
    p.add_argument("--actions", action="store_true", help="also print every action")
    p.set_defaults(run=run)
    return p


def _profile(args) -> ckpt.Profile:
    if args.profile:
        return ckpt.Profile.load(args.profile)
    model = ckpt.MLP([args.width] * (args.depth + 1), dtype=args.dtype)
    return ckpt.Profile.from_chain(model, args.batch)


def _options(args) -> dict:
    options = {"slots": args.slots, "segments": args.segments}
    if args.strategy in ("optimal", "chen_greedy"):
        options["budget_bytes"] = args.budget
    return {k: v for k, v in options.items() if v is not None}


def summary(schedule, profile) -> list[str]:
    """Lines describing a schedule: counts, what the first sweep keeps, predicted peak and time."""
    stats = ckpt.predict_memory(profile, schedule)
    before = schedule.actions[:schedule.actions.index(ckpt.Loss())]
    saved = [a.i for a in before if isinstance(a, Save)]
    taped = [a.i for a in before if isinstance(a, ForwardTape)]
    unit = "s" if profile.time_unit == "seconds" else profile.time_unit
    return [f"stages: {schedule.n}   forward steps: {schedule.forward_steps}   "
            f"backward steps: {schedule.count(Backward)}   actions: {len(schedule)}",
            f"first sweep keeps checkpoints x_{saved} and tapes of stages {taped}",
            f"predicted peak: {stats.peak_bytes:,} B ({stats.peak_bytes / 2**20:.2f} MiB; memory model, "
            f"input and parameters excluded)",
            f"predicted time: {profile.schedule_time(schedule):.4g} {unit} ({profile.source})"]


def run(args) -> int:
    """Print the plan; return 0, or 2 with the reason when no plan fits the budget."""
    if ckpt.needs_profile(args.strategy) and args.budget is None:
        print(f"ckpt-profile plan: --strategy {args.strategy} plans under a byte budget: give --budget "
              f"(e.g. --budget 512MiB)")
        return 2
    profile = _profile(args)
    try:
        schedule = ckpt.make_schedule(args.strategy, len(profile), profile=profile, **_options(args))
    except (ValueError, TypeError) as e:
        print(f"ckpt-profile plan: {e}")
        return 2
    budget = f", budget {ckpt.parse_bytes(args.budget):,} B" if args.budget else ""
    print(f"plan: {args.strategy}{budget}")
    for line in summary(schedule, profile):
        print("  " + line)
    if args.actions:
        print(schedule)
    return 0
