"""Torch stage bytes, counted vs measured: the memory check's profile, Profile.from_torch's, and the allocator.

    PYTHONPATH=$PWD python scripts/stage_bytes_vs_allocator.py

Per stage of a plain training forward, ``profiling.stage_meter`` meters with TorchCPUMeter (measured)
the bytes held when the stage returns and those its graph holds beyond its input; each profile's
fields give the same two figures (counted).  ✗ marks a count the allocator contradicts.  Then the
allocator's peak while ``Profile.from_torch`` profiles an MLP of growing depth.  For an older
checkout, put its ``ckpt`` first on PYTHONPATH (``profiling.stage_meter`` is new here); a profile
that fails is reported as such.
"""

from __future__ import annotations

import torch
from torch import nn

import ckpt
from ckpt.torch.memcheck import chain_profile
from profiling.meters import TorchCPUMeter
from profiling.stage_meter import counted, counted_forward, forward_held, stage_allocations

BATCH, WIDTH = 4096, 256


class Halves(nn.Module):
    """Two views of one new buffer."""

    def forward(self, h):
        return torch.tanh(h).chunk(2, dim=1)


class Product(nn.Module):
    def forward(self, halves):
        return halves[0] * halves[1]


class Double(nn.Module):
    """Modifies its input in place."""

    def forward(self, h):
        return h.add_(h)


def frozen_prefix():
    return nn.Sequential(nn.Linear(WIDTH, WIDTH).requires_grad_(False), nn.Tanh(), nn.Linear(WIDTH, WIDTH), nn.Tanh())


def first_tanh():
    return nn.Sequential(nn.Tanh(), nn.Linear(WIDTH, WIDTH), nn.Tanh(), nn.Linear(WIDTH, WIDTH))


def halves():
    return nn.Sequential(nn.Linear(WIDTH, WIDTH), Halves(), Product(), nn.Linear(WIDTH // 2, WIDTH))


def in_place():
    return nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU(inplace=True), nn.Linear(WIDTH, WIDTH), Double(),
                         nn.Linear(WIDTH, WIDTH))


def profiles(model, x) -> dict:
    """The memory check's and from_torch's profile of ``model`` on ``x`` (or why it failed)."""
    out = {}
    for name, build in (("memory check", lambda: chain_profile(list(model), x)),
                        ("from_torch", lambda: ckpt.Profile.from_torch(model, x, repeats=1))):
        try:
            out[name] = build()
        except RuntimeError as e:
            out[name] = f"fails: {e}"
    return out


def mark(count: int, measured: int) -> str:
    """A counted figure, marked ✗ where the allocator contradicts it."""
    return f"{count:,}" + ("" if count == measured else " ✗")


def compare(name: str, model) -> None:
    """Print the per-stage table: measured next to each profile's counts."""
    x = torch.randn(BATCH, WIDTH)
    rows = [(m.held, m.graph) for m in stage_allocations(model, x)]
    by = {k: v if isinstance(v, str) else [(c.held, c.graph) for c in counted(v)]
          for k, v in profiles(model, x).items()}
    print(f"\n## {name}\n\n| stage | figure | measured (TorchCPUMeter) | "
          + " | ".join(f"{k} (counted)" for k in by) + " |")
    print("|---|---|---:|" + "---:|" * len(by))
    for i, (stage, measured) in enumerate(zip(model, rows)):
        for k, figure in enumerate(("held when it returns", "graph beyond its input")):
            cells = [v if isinstance(v, str) else mark(v[i][k], measured[k]) for v in by.values()]
            print(f"| {i + 1} {type(stage).__name__} | {figure} | {measured[k]:,} | " + " | ".join(cells) + " |")


def compare_whole(models: dict) -> None:
    """Print the whole-forward table: what a plain training forward leaves held, measured and counted."""
    print("\n## Whole forward: bytes a plain training forward leaves held (tapes and output)\n")
    print("| model | measured (TorchCPUMeter) | memory check (counted) | from_torch (counted) |\n"
          "|---|---:|---:|---:|")
    for name, build in models.items():
        torch.manual_seed(0)
        model, x = build(), torch.randn(BATCH, WIDTH)
        measured = forward_held(model, x)
        cells = [v if isinstance(v, str) else mark(counted_forward(v), measured)
                 for v in profiles(model, x).values()]
        print(f"| {name} | {measured:,} | " + " | ".join(cells) + " |")


def profiling_peak(depth: int) -> int:
    """The allocator's peak above its start while Profile.from_torch profiles a Linear+Tanh MLP (measured)."""
    model = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(WIDTH, WIDTH), nn.Tanh())])
    x = torch.randn(BATCH, WIDTH)
    ckpt.Profile.from_torch(model, x, repeats=1)        # allocates every .grad: not counted below
    with TorchCPUMeter() as m:
        ckpt.Profile.from_torch(model, x, repeats=1)
    return m.figures["torch_cpu_peak"]


def main() -> None:
    torch.manual_seed(0)
    print(f"batch {BATCH}, width {WIDTH}, float32: one activation is {BATCH * WIDTH * 4:,} B")
    models = {"frozen first layer": frozen_prefix, "Tanh first": first_tanh, "two views of one buffer": halves}
    for name, build in models.items():
        compare(name, build())
    compare_whole({**models, "in-place stages": in_place})    # per stage, x_{i-1} and x_i are one storage
    print("\n## Profile.from_torch's own peak (TorchCPUMeter), in activations\n\n"
          "| depth | stages | peak |\n|---:|---:|---:|")
    for depth in (8, 16, 32):
        print(f"| {depth} | {2 * depth} | {profiling_peak(depth) / (BATCH * WIDTH * 4):.1f} |")


if __name__ == "__main__":
    main()
