"""What a plain torch forward saves for backward, stage by stage: the planners' input.

    ckpt.print_saved_residuals(model, x)      # like jax's print_saved_residuals
    ckpt.saved_bytes(model, x)                # [tape bytes of stage 1, ..., stage n]

Each stage runs once, as in training (grad enabled, its input requiring grad
when gradients flow into it, as the torch backend tapes it), under ``saved_tensors_hooks`` that
record every tensor autograd keeps.  Storages are counted once (views share
their base's); parameters and buffers are resident and left out.  The model is
left as it was: buffers (BatchNorm running statistics) and the RNG are restored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from torch.utils._pytree import tree_flatten, tree_unflatten

from .hooks import SavedRecorder, storage_key


@dataclass(frozen=True)
class SavedTensor:
    """One storage a stage keeps for its backward: shape, dtype, bytes and why."""

    shape: tuple
    dtype: torch.dtype
    nbytes: int          # the whole storage's bytes
    reason: str          # e.g. "input x_3", "output x_4", "AddmmBackward0.mat1"
    new: bool            # False when an earlier stage already keeps this storage


@dataclass(frozen=True)
class StageResiduals:
    """What stage ``stage`` saves: its tensors, their bytes, and the bytes no earlier stage keeps."""

    stage: int
    name: str
    tensors: tuple
    tape_bytes: int      # every storage this stage keeps (its tape alone)
    new_bytes: int       # the part not kept by an earlier stage; sums to the whole forward's


def _stages(model) -> list[tuple[str, object]]:
    if isinstance(model, nn.Sequential):
        return [(name, m) for name, m in model.named_children()]
    if isinstance(model, (list, tuple, nn.ModuleList)):
        return [(str(k), m) for k, m in enumerate(model)]
    if callable(model):
        return [(type(model).__name__, model)]
    raise TypeError(f"ckpt.torch.inspect: expected an nn.Sequential, a list of stages or a module, "
                    f"got {type(model).__name__}")


def _reasons(outputs) -> dict:
    """Storage key → "<Node>.<saved name>" for tensors saved by the graph behind ``outputs``."""
    found, seen = {}, set()
    stack = [o.grad_fn for o in outputs if isinstance(o, torch.Tensor) and o.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for attr in dir(node):
            if attr.startswith("_saved_"):
                try:
                    value = getattr(node, attr)
                except RuntimeError:          # already freed
                    continue
                for v in (value if isinstance(value, (tuple, list)) else [value]):
                    if isinstance(v, torch.Tensor):
                        found.setdefault(storage_key(v), f"{node.name()}.{attr[len('_saved_'):]}")
        stack.extend(fn for fn, _ in node.next_functions)
    return found


def _resident(stages) -> set:
    keys = set()
    for _, s in stages:
        if isinstance(s, nn.Module):
            keys.update(storage_key(t) for t in s.parameters())
            keys.update(storage_key(t) for t in s.buffers())
    return keys


def saved_residuals(model, *inputs) -> list[StageResiduals]:
    """Per stage, the tensors a plain training forward saves for backward (each storage once)."""
    stages = _stages(model)
    x = inputs[0] if len(inputs) == 1 else inputs
    buffers = [(b, b.detach().clone()) for _, s in stages if isinstance(s, nn.Module) for b in s.buffers()]
    resident, earlier, report = _resident(stages), {}, []
    leaves = tree_flatten(x)[0]
    needs = any(t.requires_grad for t in leaves if isinstance(t, torch.Tensor))
    with torch.random.fork_rng(devices=_cuda_devices(x, stages)), torch.enable_grad():
        for i, (name, stage) in enumerate(stages, start=1):
            x, stage_report = _one_stage(i, name, stage, x, needs, resident, earlier)
            report.append(stage_report)
            needs = needs or any(p.requires_grad for p in getattr(stage, "parameters", list)())
    with torch.no_grad():
        for b, saved in buffers:
            b.copy_(saved)
    return report


def _floating(t) -> bool:
    return isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())


def _one_stage(i, name, stage, x, needs, resident, earlier):
    leaves, spec = tree_flatten(x)
    inputs = [t.detach().requires_grad_(needs and _floating(t)) if isinstance(t, torch.Tensor) else t
              for t in leaves]
    recorder = SavedRecorder(resident, keep_tensors=True)
    with recorder.hooks():
        out = stage(tree_unflatten(inputs, spec))
    saved = recorder.tensors
    out_leaves = tree_flatten(out)[0]
    several_in, several_out = len(leaves) > 1, len(out_leaves) > 1
    reasons = _reasons(out_leaves)
    for k, t in enumerate(t for t in inputs if isinstance(t, torch.Tensor)):
        reasons[storage_key(t)] = f"input x_{i - 1}" + (f"[{k}]" if several_in else "")
    for k, t in enumerate(t for t in out_leaves if isinstance(t, torch.Tensor)):
        reasons.setdefault(storage_key(t), f"output x_{i}" + (f"[{k}]" if several_out else ""))
    tensors = tuple(SavedTensor(tuple(t.shape), t.dtype, t.untyped_storage().nbytes(),
                                reasons.get(key, "intermediate"), key not in earlier)
                    for key, t in saved.items())
    earlier.update(saved)        # kept alive to the end, as a plain forward keeps them, so no
    recorder.tensors = {}        # later stage reuses their storage; none left in pack's reach
    tape = sum(s.nbytes for s in tensors)
    new = sum(s.nbytes for s in tensors if s.new)
    plain = tree_unflatten([o.detach() if isinstance(o, torch.Tensor) else o for o in out_leaves],
                           tree_flatten(out)[1])
    return plain, StageResiduals(i, f"{name}: {type(stage).__name__}", tensors, tape, new)


def _cuda_devices(x, stages) -> list:
    tensors = [t for t in tree_flatten(x)[0] if isinstance(t, torch.Tensor)]
    tensors += [p for _, s in stages if isinstance(s, nn.Module) for p in s.parameters()]
    return sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})


def saved_bytes(model, *inputs) -> list[int]:
    """Per stage, the bytes its tape alone keeps (what a planner charges for taping it)."""
    return [r.tape_bytes for r in saved_residuals(model, *inputs)]


def print_saved_residuals(model, *inputs) -> None:
    """Print, per stage, every tensor a plain forward saves for backward and why."""
    report = saved_residuals(model, *inputs)
    for r in report:
        print(f"stage {r.stage} ({r.name}): {r.tape_bytes:,} B kept, {r.new_bytes:,} B new")
        for t in r.tensors:
            mark = "" if t.new else "  (kept by an earlier stage too)"
            print(f"    {str(t.dtype).removeprefix('torch.')}{list(t.shape)}  {t.nbytes:,} B  {t.reason}{mark}")
    print(f"total: {sum(r.new_bytes for r in report):,} B saved for backward by a plain forward")
