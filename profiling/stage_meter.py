"""Per stage of a plain torch training forward, what torch's CPU allocator holds: the check on counted stage bytes.

``ckpt.Profile.from_torch`` and the wrappers' memory check count a stage's bytes with the saved-tensor
recorder (``ckpt.torch.measure``); this meters them through torch alone (``meters.TorchCPUMeter``).
Each stage runs on its real input, grad history included, as a plain forward runs it:

* ``held``: the bytes held when it returns — its output and what its tape keeps beyond its input
  and output (a profile predicts ``output_bytes + tape_own_bytes(i)``);
* ``graph``: the bytes still held once its output is dropped and its graph kept — its tape beyond
  its input (a profile predicts ``tape_bytes - tape_keeps_input * activation_bytes(i - 1)``).
  The output is freed in a second meter region; its free carries its size because the first region
  saw it allocated (torch 2.13: a block allocated before any profiler ran frees as 0, with a warning).

A stage that modifies its input in place has no figures of its own to compare: the chain model
frees x_{i-1} as x_i appears, and torch holds one storage for both.  ``forward_held`` checks such
chains whole: the bytes a plain training forward leaves held (every tape and the output) against
store_all's saved bytes, as the memory model counts them.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

from .meters import TorchCPUMeter


@dataclass(frozen=True)
class StageHeld:
    """What one stage's plain training forward left held (measured, bytes)."""

    held: int
    graph: int


def stage_allocations(stages, x) -> list[StageHeld]:
    """Per stage (an iterable of callables, each fed the previous one's output): ``StageHeld``, metered."""
    import torch
    gc.collect()
    gc.disable()                                   # no unrelated tensor freed inside a metered region
    try:
        out, value = [], x
        for stage in stages:
            out.append(_metered(stage, value))
            with torch.enable_grad():
                value = stage(value)               # the next stage's input, with its real grad history
        return out
    finally:
        gc.enable()


def _metered(stage, value) -> StageHeld:
    import torch
    with torch.enable_grad(), TorchCPUMeter() as returned:
        out = stage(value)
    leaves = [out] if isinstance(out, torch.Tensor) else list(out)
    graph = [t.grad_fn for t in leaves]
    del leaves
    with TorchCPUMeter() as dropped:
        del out
    held = returned.figures["torch_cpu_held"]
    del graph
    return StageHeld(held, held + dropped.figures["torch_cpu_held"])


def forward_held(stages, x) -> int:
    """Bytes a plain training forward of ``stages`` (in order) leaves held: their tapes and output (measured)."""
    import torch
    gc.collect()
    gc.disable()
    try:
        with torch.enable_grad(), TorchCPUMeter() as meter:
            out = x
            for stage in stages:
                out = stage(out)
        del out
    finally:
        gc.enable()
    return meter.figures["torch_cpu_held"]


def counted_forward(profile) -> int:
    """The same, as the memory model counts it: store_all's tapes, and the output unless a tape keeps it."""
    from ckpt import predict_memory
    last = profile.stage(len(profile))
    return predict_memory(profile, "store_all").peak_saved_bytes + (0 if last.tape_keeps_output else last.output_bytes)


def counted(profile) -> list[StageHeld]:
    """The same two figures per stage, as a ``ckpt.Profile`` counts them."""
    return [StageHeld(s.output_bytes + profile.tape_own_bytes(i),
                      s.tape_bytes - s.tape_keeps_input * profile.activation_bytes(i - 1))
            for i, s in enumerate(profile.stages, start=1)]
