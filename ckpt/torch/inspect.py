"""What a plain torch forward saves for backward, stage by stage: the planners' input.

    ckpt.print_saved_residuals(model, x)      # like jax's print_saved_residuals
    ckpt.saved_bytes(model, x)                # [tape bytes of stage 1, ..., stage n]

Each stage runs once as a training step runs it, on the previous stage's output, exactly as
``ckpt.torch.measure`` runs it for ``Profile.from_torch`` and the memory check (``run_in_step``:
its own copies of its inputs, requiring grad where gradients flow into them; the one saved-tensor
recorder), so the two agree stage by stage.  Storages are counted once (views share their base's);
parameters and buffers are resident and left out.  A stage that modifies its input in place (a
``ReLU(inplace=True)``) saves one storage that is both: it is reported as its output, "x_{i-1}
modified in place", as ``measure`` counts it.  Nothing the caller holds changes: the input tensors
(each stage works on copies), buffers (BatchNorm running statistics), ``.grad`` and the RNG.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .hooks import storage_key
from .measure import LeftAsItWas, StageRun, devices_of, resident_keys, run_in_step, tensors_of


@dataclass(frozen=True)
class SavedTensor:
    """One storage a stage keeps for its backward: shape, dtype, bytes and why."""

    shape: tuple
    dtype: torch.dtype
    nbytes: int          # the whole storage's bytes
    reason: str          # its role, then the op that saved it: "input x_3 (AddmmBackward0.mat1)",
                         # "output x_4, x_3 modified in place (ReluBackward0.result)", "MulBackward0.other"
    new: bool            # False when an earlier stage already keeps this storage


@dataclass(frozen=True)
class StageResiduals:
    """What stage ``stage`` saves: its tensors, their bytes, and the bytes no earlier stage keeps."""

    stage: int
    name: str
    tensors: tuple
    tape_bytes: int      # every storage this stage keeps (its tape alone)
    new_bytes: int       # the part not kept by an earlier stage; sums to the whole forward's


def _stages(model, who: str = "ckpt.torch") -> list[tuple[str, object]]:
    """(name, stage) pairs of a chain given as an nn.Sequential, a list of stages or one module/callable."""
    if isinstance(model, nn.Sequential):
        stages = list(model.named_children())
    elif isinstance(model, (list, tuple, nn.ModuleList)):
        stages = [(str(k), m) for k, m in enumerate(model)]
    elif callable(model):
        return [(type(model).__name__, model)]
    else:
        raise TypeError(f"{who}: expected an nn.Sequential, a list of stages or a module, got {type(model).__name__}")
    if not stages:
        raise ValueError(f"{who}: the model has no stages (an empty {type(model).__name__}); "
                         f"give at least one module or callable")
    for k, (name, stage) in enumerate(stages, start=1):
        if not callable(stage):
            raise TypeError(f"{who}: stage {k} ({name}) is a {type(stage).__name__}, not callable; every stage "
                            f"must be a module or a function of the previous stage's output")
    return stages


def _describe(value) -> str:
    """A tensor as dtype[shape], anything else by its type."""
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).removeprefix('torch.')}{list(value.shape)}"
    return type(value).__name__


def _check_value(value, i: int, who: str) -> None:
    """x_{i-1}, the input of stage i, must hold a tensor: gradients flow through tensors only."""
    if tensors_of(value):
        return
    given = "the model's input" if i == 1 else f"stage {i - 1}'s output"
    raise TypeError(f"{who}: x_{i - 1} ({given}) holds no torch.Tensor, got {_describe(value)}; it must be "
                    f"a tensor or a tuple/list/dict of them (convert with torch.as_tensor)")


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


class _Storages:
    """Storage identity across stages.  Each stage works on its own copies of its inputs, which stand
    for the chain values they copy (an in-place stage's output is then its input's storage too); every
    storage compared is kept alive to the end, as a plain forward keeps it, so no address is reused."""

    def __init__(self):
        self.origin, self.saved, self.alive = {}, set(), []

    def of(self, key: int) -> int:
        """The chain storage a key stands for."""
        return self.origin.get(key, key)

    def copied(self, value, run: StageRun) -> None:
        """Note that the stage's input tensors are copies of ``value``'s."""
        for given, copy in zip(tensors_of(value), tensors_of(run.args[:1])):
            self.origin[storage_key(copy)] = self.of(storage_key(given))
        self.alive += [t.detach() for t in tensors_of((value, run.args))]

    def first_saved(self, key: int) -> bool:
        """Whether no earlier saved tensor holds the chain storage ``key`` stands for; it does from now on."""
        new = self.of(key) not in self.saved
        self.saved.add(self.of(key))
        return new


def saved_residuals(model, *inputs) -> list[StageResiduals]:
    """Per stage, the tensors a plain training forward saves for backward (each storage once)."""
    who = "ckpt.saved_residuals"
    stages = _stages(model, who)
    if not inputs:
        raise TypeError(f"{who}: expected the model's input x_0 (saved_residuals(model, x)), got none")
    x = inputs[0] if len(inputs) == 1 else inputs
    modules = [m for _, m in stages]
    params = [p for m in modules if isinstance(m, nn.Module) for p in m.parameters()]
    resident, storages, report = resident_keys(modules), _Storages(), []
    with LeftAsItWas(modules, devices_of(tensors_of(x) + params)):
        for i, (name, stage) in enumerate(stages, start=1):
            run = _run(i, name, stage, x, resident, who)
            storages.copied(x, run)
            report.append(_stage_report(i, f"{name}: {type(stage).__name__}", run, storages))
            x = run.detached_output()
    return report


def _run(i: int, name: str, stage, x, resident: set, who: str) -> StageRun:
    """Stage i run as in a training step; an error it raises says which stage and what it took."""
    _check_value(x, i, who)
    try:
        return run_in_step(stage, (x,), {}, resident, keep_tensors=True)
    except Exception as error:
        error.add_note(f"{who}: raised by stage {i} ({name}: {type(stage).__name__}) on x_{i - 1} = {_describe(x)}")
        raise


def _stage_report(i: int, name: str, run: StageRun, storages: _Storages) -> StageResiduals:
    """What stage i's run saved, each storage with its role in the chain and the op that saved it."""
    inputs, outputs = tensors_of(run.args[:1]), tensors_of(run.output)
    found = _reasons(outputs)
    tensors = tuple(SavedTensor(tuple(t.shape), t.dtype, t.untyped_storage().nbytes(),
                                _reason(key, i, inputs, outputs, found), storages.first_saved(key))
                    for key, t in run.saved.tensors.items())
    storages.alive += run.saved.tensors.values()
    return StageResiduals(i, name, tensors, sum(t.nbytes for t in tensors),
                          sum(t.nbytes for t in tensors if t.new))


def _reason(key: int, i: int, inputs: list, outputs: list, found: dict) -> str:
    """Why a saved storage is kept: its role in the chain, then the op that saved it (``found``)."""
    role, op = _role(key, i, inputs, outputs), found.get(key)
    if role is None:
        return op or "intermediate"
    return f"{role} ({op})" if op else role


def _role(key: int, i: int, inputs: list, outputs: list) -> str | None:
    """A saved storage as stage i's input x_{i-1}, output x_i, or both (modified in place, or a view); None
    for one made inside the stage."""
    into, out = _position(key, inputs), _position(key, outputs)
    if into is None:
        return None if out is None else "output " + _value(i, outputs, out)
    touched = inputs[into]._version > 0             # modified in place: its version counter moved
    given = _value(i - 1, inputs, into) + (" modified in place" if touched else "")
    if out is None:
        return "input " + given
    return f"output {_value(i, outputs, out)}, " + ("" if touched else "a view of ") + given


def _position(key: int, tensors: list) -> int | None:
    return next((k for k, t in enumerate(tensors) if storage_key(t) == key), None)


def _value(i: int, tensors: list, k: int) -> str:
    """x_i, or x_i[k] when the value holds several tensors."""
    return f"x_{i}" + (f"[{k}]" if len(tensors) > 1 else "")


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
