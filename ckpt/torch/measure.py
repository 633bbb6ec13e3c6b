"""Torch stages measured: the one place a stage's bytes are counted, for ``Profile.from_torch`` and the memory check.

``stage_bytes`` runs one stage once, as a training step runs it, under the saved-tensor recorder
(``hooks.SavedRecorder``; ``run_in_step``, which ``ckpt.saved_residuals`` reports from too), and reads
its ``StageCost`` byte fields:

* its tensor arguments are its own copies (a stage that modifies its input in place changes no
  one else's tensor), requiring grad — and not leaves — exactly where gradients flow into them in
  the step: the caller's tensors as given, in a chain the previous stage's outputs that require grad
  (a Tanh on the caller's input, or after a frozen layer, keeps nothing: no gradient flows into it);
* ``tape_bytes``: every storage autograd saves, each once; ``resident`` storages (parameters,
  buffers) are not counted;
* ``tape_keeps_input`` / ``tape_keeps_output``: every storage of the chain value (the first
  argument) / of the output is saved.  A stage that modifies its input in place saves one storage
  that is both; it counts as the output (the input no longer exists apart from it).  ``profile_of``
  keeps a tape's own bytes ≥ 0 (what ``Profile`` requires) where a kept value's bytes as the chain
  holds it exceed the copy the stage saved;
* ``output_bytes``: the output's storages, each once (two views of one buffer are one buffer);
* ``grad_bytes``: the ``.grad`` its backward allocates: of its parameters that require grad (in a
  chain, one that several stages share counts at the last of them: backward reaches it first).

Times and transients are 0 here: ``torch_profile`` (``Profile.from_torch``) adds measured times
and, on CUDA, transients; the memory check (``ckpt.torch.memcheck``) uses the bytes as they are.
``LeftAsItWas`` leaves no trace of profiling: parameters' ``.grad``, buffers and the RNG.
"""

from __future__ import annotations

import time
import types
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..profile import Profile, StageCost, Unrepresentable, describe, pooled_medians, public_attributes
from .hooks import SavedRecorder, storage_key


def tensors_of(value) -> list:
    """The tensors among the leaves of ``value`` (a tensor or any pytree)."""
    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


def nbytes_of(value) -> int:
    """Bytes of the storages behind ``value``'s tensors, each storage once."""
    return sum(t.untyped_storage().nbytes() for t in {storage_key(t): t for t in tensors_of(value)}.values())


def resident_keys(modules) -> set:
    """Storage keys of the modules' parameters and buffers: resident, never counted as saved."""
    return {storage_key(t) for m in modules if isinstance(m, torch.nn.Module)
            for t in (*m.parameters(), *m.buffers())}


def devices_of(tensors) -> list:
    """The CUDA device indices among ``tensors`` (whose RNG ``LeftAsItWas`` restores)."""
    return sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})


def step_inputs(args: tuple, kwargs: dict, resident: set):
    """(args, kwargs) as the stage gets them in a training step, each tensor a fresh copy (resident ones
    as they are): requiring grad, and not a leaf, where the given tensor requires grad."""
    def as_in_step(t):
        if not isinstance(t, torch.Tensor) or storage_key(t) in resident:
            return t
        return t.detach().requires_grad_().clone() if t.requires_grad else t.clone()
    leaves, spec = tree_flatten((args, kwargs))
    return tree_unflatten([as_in_step(t) for t in leaves], spec)


def trainable(module) -> list:
    """A stage's parameters that require grad (none for a plain callable)."""
    return [p for p in getattr(module, "parameters", list)() if p.requires_grad]


@dataclass
class StageRun:
    """A stage run once with grad, as a training step runs it: its inputs, what autograd saved, its output."""

    args: tuple              # its own copies of the arguments (``step_inputs``)
    kwargs: dict
    output: object           # as the stage returned it, its graph attached
    saved: SavedRecorder     # every storage autograd saved, each once (resident ones left out)

    def cost(self, params: list) -> StageCost:
        """Its bytes (times 0); ``params``: those whose gradients its backward adds."""
        saved = set(self.saved.held)
        out_keys = {storage_key(t) for t in tensors_of(self.output)}
        in_keys = {storage_key(t) for t in tensors_of(self.args[:1])} - out_keys   # the chain value; in place: output
        return StageCost(0.0, 0.0, output_bytes=nbytes_of(self.output), tape_bytes=self.saved.bytes,
                         tape_keeps_input=bool(in_keys) and in_keys <= saved,
                         tape_keeps_output=bool(out_keys) and out_keys <= saved,
                         grad_bytes=sum(p.numel() * p.element_size() for p in params))

    def detached_output(self):
        """Its output, detached: what the next stage takes (tensors requiring grad where the output's do)."""
        leaves, spec = tree_flatten(self.output)
        return tree_unflatten([t.detach().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t
                               for t in leaves], spec)


def run_in_step(fn, args: tuple, kwargs: dict, resident: set, keep_tensors: bool = False) -> StageRun:
    """``fn(*args, **kwargs)`` run once with grad on ``step_inputs`` copies, under the saved-tensor recorder
    (``keep_tensors``: it keeps each saved storage's first tensor, for a report of them)."""
    args, kwargs = step_inputs(args, kwargs, resident)
    recorder = SavedRecorder(resident, keep_tensors=keep_tensors)
    with torch.enable_grad(), recorder.hooks():
        out = fn(*args, **kwargs)
    return StageRun(args, kwargs, out, recorder)


def stage_bytes(fn, params: list, args: tuple, kwargs: dict, resident: set) -> tuple[StageCost, object]:
    """``fn(*args, **kwargs)`` run once with grad as in a training step: its bytes (a ``StageCost``, times 0;
    ``params``: those whose gradients its backward adds) and its output, detached (its tensors
    requiring grad where the stage's outputs do)."""
    run = run_in_step(fn, args, kwargs, resident)
    return run.cost(params), run.detached_output()


def profile_of(costs, input_bytes: int, **fields) -> Profile:
    """A ``Profile`` of measured stage costs whose tapes hold at least what they say they keep.

    A stage may save a compact copy of a chain value the chain holds as a view of a larger storage:
    its tape is then smaller than the kept value.  Such a stage is said to keep neither input nor
    output, so its whole tape counts as its own: an overcount of what is shared, never an undercount.
    """
    out, previous = [], input_bytes
    for cost in costs:
        if cost.tape_bytes < cost.tape_keeps_input * previous + cost.tape_keeps_output * cost.output_bytes:
            cost = replace(cost, tape_keeps_input=False, tape_keeps_output=False)
        out.append(cost)
        previous = cost.output_bytes
    return Profile(tuple(out), input_bytes, **fields)


def chain_bytes(stages: list, x, call=lambda stage: stage):
    """For each stage in order, run on the previous one's output: (stage, its bytes, the value it took).

    ``call(stage)`` is what runs it: the stage itself, or ``stage.forward`` so its hooks do not fire."""
    resident, value = resident_keys(stages), x
    for stage, params in zip(stages, _gradients_added(stages)):
        cost, out = stage_bytes(call(stage), params, (value,), {}, resident)
        yield stage, cost, value
        value = out


def _gradients_added(stages: list) -> list:
    """Per stage, the trainable parameters whose ``.grad`` its backward allocates: a parameter several
    stages share is the last one's (backward reaches it first; the others add to that ``.grad``)."""
    later, added = set(), []
    for stage in reversed(stages):
        mine = [p for p in trainable(stage) if id(p) not in later]
        later.update(id(p) for p in mine)
        added.append(mine)
    return added[::-1]


class LeftAsItWas:
    """Run code whose side effects must not show (profiling the stages): the RNG, every buffer and the
    parameters' ``.grad`` are as they were afterwards (gradients are None inside)."""

    def __init__(self, modules: list, devices: list):
        self.modules, self.devices = [m for m in modules if isinstance(m, torch.nn.Module)], devices

    def __enter__(self):
        self.rng = torch.random.fork_rng(devices=self.devices)
        self.rng.__enter__()
        self.buffers = [(b, b.detach().clone()) for m in self.modules for b in m.buffers()]
        self.grads = [(p, p.grad) for m in self.modules for p in m.parameters()]
        for p, _ in self.grads:
            p.grad = None

    def __exit__(self, *exc):
        with torch.no_grad():
            for b, saved in self.buffers:
                b.copy_(saved)
        for p, g in self.grads:
            p.grad = g
        self.rng.__exit__(*exc)


# ------------------------------------------------------------------ Profile.from_torch: bytes and times

TIMED_PER_GROUP = 3         # identical stages timed (their samples pooled); the group's others are not
CHECKED_PER_GROUP = 2       # identical stages whose transients are measured before the others reuse them


def torch_profile(stages, x, repeats: int, warmup: int, pool_identical: bool = True) -> Profile:
    """Bytes (``stage_bytes``) and median times of torch stages, each called as a module (its hooks fire).

    Transients are measured as the peak allocated above the live bytes: on CUDA from the
    allocator's peak counter, on CPU (which has none) from the profiler's allocation events.
    Without them the memory model misses the moment inside ``Backward(i)`` when stage i's new
    gradients exist beside its tape.  When a profiler is already running (it cannot be nested),
    CPU transients are 0 and ``source`` says so.

    With ``pool_identical``, stages with one ``stage_signature`` and the same transients get one
    time: the median of their samples pooled (``ckpt.profile.pooled_medians``).  Only the first
    ``TIMED_PER_GROUP`` of them are timed, and once the first ``CHECKED_PER_GROUP`` measured equal
    transients the others reuse them (if they differ, every such stage is measured and timed), so
    profiling n identical blocks costs a few blocks' timing runs, not n.
    """
    from .inspect import _stages
    cuda = any(t.is_cuda for t in tensors_of(x))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    transients = _cuda_transients if cuda else _cpu_transients
    measured = cuda or not torch.autograd.profiler._is_profiler_enabled
    modules, costs, samples, groups = [m for _, m in _stages(stages)], [], [], []
    resident = resident_keys(modules)
    peaks_seen, timed = {}, {}              # per signature: the transients measured, the stages timed
    for (stage, cost, value), params in zip(chain_bytes(modules, x), _gradients_added(modules)):
        def fresh(value=value):
            return step_inputs((value,), {}, resident)
        signature = stage_signature(stage, value, cost) if pool_identical else None
        seen = peaks_seen.setdefault(signature, []) if signature is not None else []
        settled = len(seen) >= CHECKED_PER_GROUP and len(set(seen)) == 1
        if signature is None or not settled or timed.get(signature, 0) < TIMED_PER_GROUP:
            samples.append(_step_times(stage, fresh, repeats, warmup, sync))
            timed[signature] = timed.get(signature, 0) + 1
        else:
            samples.append(([], []))
        if settled:
            peaks = seen[0]
        else:
            with _no_gradients_yet(params):
                peaks = transients(stage, fresh) if measured else (0, 0)
            seen.append(peaks)
        costs.append(replace(cost, forward_transient=peaks[0], backward_transient=peaks[1]))
        groups.append(None if signature is None else (signature, peaks))
    medians, note = pooled_medians(samples, groups)
    costs = [replace(cost, forward_time=fwd, backward_time=bwd) for cost, (fwd, bwd) in zip(costs, medians)]
    timed_note = (f", the first {TIMED_PER_GROUP} of each timed" if any(not f for f, _ in samples) else "")
    return profile_of(costs, nbytes_of(x), time_unit="seconds",
                   source=f"torch stages on {'cuda' if cuda else 'cpu'}, measured (median of {repeats}"
                          + (f"; {note}{timed_note})" if pool_identical else ")")
                          + ("" if measured else "; transients not measured (0): a profiler was running"))


# ------------------------------------------------------------------ structure signatures (pooled times)

def stage_signature(stage, value, cost: StageCost):
    """What decides a torch stage's time, or None (it does not pool): only ``nn.Module`` stages have one.

    For every submodule, in ``named_modules()`` order: its name and type, its public attributes
    (names not starting with '_') described by value when simple (None, bool, int, float, str,
    ``torch.dtype``, ``torch.device``, and tuples, lists and dicts of those: a Conv2d's stride, a
    Dropout's p, ``training``, a custom module's ``self.n_iters``), and each parameter and buffer by
    name, shape, stride, dtype, device, requires_grad and which earlier one it is (tied weights);
    then each tensor of the input ``value`` the same way, and the stage's bytes (``cost``, times
    zeroed).  Of functions among the attributes, only torch's own top-level ones count, by identity (a
    TransformerEncoderLayer's ``activation=F.relu``).  Anything else — a user's function (a plain
    callable wrapped as a module), a plain tensor or any other object among the public attributes, a
    forward or backward hook, an input that is not tensors and simple values — gives None: a wrong
    pooling would silently give wrong times.  Private attributes ('_' names) are not compared.
    """
    if not isinstance(stage, torch.nn.Module):
        return None
    try:
        seen: dict = {}
        modules = tuple(_module_signature(name, m, seen) for name, m in stage.named_modules())
        return modules, describe(value, _tensor_leaf({})), replace(cost, forward_time=0.0, backward_time=0.0)
    except Unrepresentable:
        return None


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _module_signature(name: str, module, seen: dict) -> tuple:
    """One submodule's part of ``stage_signature`` (``seen``: tensors met so far, by id)."""
    if any(getattr(module, hooks, None) for hooks in _HOOKS):
        raise Unrepresentable(f"ckpt.torch: {name or 'the stage'} has hooks")
    tensors = _tensor_leaf(seen)
    return (name, type(module), public_attributes(module, _torch_simple),
            tuple((k, describe(t, tensors)) for k, t in module._parameters.items()),
            tuple((k, describe(t, tensors)) for k, t in module._buffers.items()))


def _torch_simple(value):
    """torch's own simple values (dtype, device, memory format, layout) and functions (``_torch_function``,
    by identity); None for anything else: a tensor, a user's function, any other object."""
    if isinstance(value, (torch.dtype, torch.device, torch.memory_format, torch.layout)):
        return type(value).__name__, str(value)
    if _torch_function(value):
        return "function", value
    return None


def _torch_function(fn) -> bool:
    """Whether ``fn`` is one of torch's own top-level functions (``F.relu``, ``torch.tanh``): no closure, not
    a lambda, a local or a bound method.  A user's function never pools, not even kept by a module."""
    if isinstance(fn, types.FunctionType):
        top_level = fn.__closure__ is None and "<" not in fn.__qualname__
    elif isinstance(fn, types.BuiltinFunctionType):               # bound to a module or nothing, never an object
        top_level = fn.__self__ is None or isinstance(fn.__self__, types.ModuleType)
    else:
        return False
    module = getattr(fn, "__module__", None) or getattr(fn.__self__, "__name__", "")
    return top_level and (module == "torch" or module.startswith(("torch.", "torch._C")))


def _tensor_leaf(seen: dict):
    """Describes a tensor by its metadata, and whether it is one met before (its first place in ``seen``)."""
    def leaf(t):
        if not isinstance(t, torch.Tensor):
            return _torch_simple(t)
        first = seen.setdefault(id(t), len(seen))
        return ("tensor", tuple(t.shape), t.stride(), t.dtype, t.device, t.requires_grad, first)
    return leaf


@contextmanager
def _no_gradients_yet(params: list):
    """Inside, ``params`` have no ``.grad``, as in a step where the stage's backward allocates them (the
    timing runs have filled them: accumulating into an existing ``.grad`` frees each new gradient at
    once, which hid it from the backward's transient); afterwards they are as before."""
    kept = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        yield
    finally:
        for p, grad in zip(params, kept):
            p.grad = grad


def _taped_forward(stage, args, kwargs) -> list:
    """A taped forward of ``stage``: its output tensors that require grad."""
    with torch.enable_grad():
        out = stage(*args, **kwargs)
    return [t for t in tensors_of(out) if t.requires_grad]


def _backward(outs: list, grads: list) -> None:
    if outs:
        torch.autograd.backward(outs, grads)


def _step_times(stage, fresh, repeats: int, warmup: int, sync) -> tuple[list, list]:
    """Seconds of ``repeats`` taped forwards and of their backwards (ones as the output gradient), after
    ``warmup`` runs, each on fresh input copies (``fresh()``, made off the clock: a stage may modify
    its input in place)."""
    forward, backward = [], []
    for k in range(warmup + repeats):
        args, kwargs = fresh()
        sync()
        t0 = time.perf_counter()
        outs = _taped_forward(stage, args, kwargs)
        sync()
        forward_end = time.perf_counter()
        grads = [torch.ones_like(t) for t in outs]
        sync()
        t1 = time.perf_counter()
        _backward(outs, grads)
        sync()
        if k >= warmup:
            forward.append(forward_end - t0)
            backward.append(time.perf_counter() - t1)
    return forward, backward


def _cuda_transients(stage, fresh) -> tuple[int, int]:
    """Peak CUDA bytes a taped forward / a backward allocate above what was live before it."""
    args, kwargs = fresh()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    outs = _taped_forward(stage, args, kwargs)
    f_peak = torch.cuda.max_memory_allocated() - base
    grads = [torch.ones_like(t) for t in outs]                # δ exists before a backward: not its transient
    live = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    _backward(outs, grads)
    b_peak = torch.cuda.max_memory_allocated() - live
    return f_peak, b_peak


_FORWARD, _BACKWARD = "ckpt.measure: taped forward", "ckpt.measure: backward"


def _cpu_transients(stage, fresh) -> tuple[int, int]:
    """Peak CPU bytes a taped forward / a backward allocate above what was live before it.

    Both run in one profiler session, so the backward's frees of the tape the forward allocated
    are seen, and only blocks allocated inside the session count (``_peaks_within``).  In a step,
    autograd frees δ_i as soon as stage i has used it, so the backward's peak may come after δ_i
    is gone; δ_i is therefore made inside the backward (the gradient of a sum of the output times
    a broadcast one) and its bytes taken off, as the memory model holds δ_i beside the transient.
    """
    # torch.autograd.profiler's profile, not torch.profiler's: the latter's first use imports
    # torch._dynamo (1.6 s, measured in a fresh process here); the session and its events are the same
    from torch.autograd.profiler import profile, record_function
    args, kwargs = fresh()
    delta = 0
    with profile(profile_memory=True, use_kineto=True) as prof:
        with record_function(_FORWARD):
            outs = _taped_forward(stage, args, kwargs)
        if outs:
            with torch.enable_grad():
                total = sum((t * t.new_ones(()).expand_as(t)).sum() for t in outs)
            delta = sum(t.numel() * t.element_size() for t in outs)
            del outs
            with record_function(_BACKWARD):
                total.backward()
    peaks = _peaks_within(prof.kineto_results, (_FORWARD, _BACKWARD))
    return peaks[_FORWARD], max(0, peaks.get(_BACKWARD, 0) - delta)


def _peaks_within(results, names) -> dict:
    """Per ``record_function`` range named in ``names``: peak CPU bytes held above its start, from a
    finished session's ``kineto_results``.

    Only blocks allocated inside the session count: the profiler remembers the size of every block
    it saw allocated, also after its session, so a block freed outside a session and its address
    reused outside one is later reported freed with a stale size; such a free is not trusted.
    """
    allocations, ranges = [], {}
    for node in _preorder(results.experimental_event_tree()):
        if node.tag == torch._C._profiler._EventType.Allocation and node.extra_fields.device.type == "cpu":
            allocations.append((node.start_time_ns, node.extra_fields.ptr, node.extra_fields.alloc_size))
        elif node.name in names:
            ranges[node.name] = (node.start_time_ns, node.end_time_ns)
    sizes, held, timeline = {}, 0, []
    for ns, ptr, nbytes in sorted(allocations, key=lambda a: a[0]):     # stable: same-ns keep their order
        if nbytes > 0:
            sizes[ptr] = nbytes
            held += nbytes
        elif ptr in sizes:
            held -= sizes.pop(ptr)
        timeline.append((ns, held))
    peaks = {}
    for name, (begin, end) in ranges.items():
        base = next((h for ns, h in reversed(timeline) if ns < begin), 0)
        peaks[name] = max([h - base for ns, h in timeline if begin <= ns <= end], default=0)
    return peaks


def _preorder(nodes):
    for node in nodes:
        yield node
        yield from _preorder(node.children)


def allocator_events(prof, also=lambda event: False) -> list:
    """A finished profile's CPU allocation and free events (``nbytes`` signed), and those ``also`` picks, in
    time order: what torch's CPU allocator did (it keeps no peak counter of its own)."""
    events = [e for e in prof.profiler.kineto_results.events()
              if (e.name() == "[memory]" and e.device_type().name == "CPU") or also(e)]
    return sorted(events, key=lambda e: e.start_ns())           # stable: same-ns events keep their order
