"""The torch backend: stages are ``nn.Module``s (or callables); a tape is a stage's autograd graph.

``forward(i, x, keep_tape=True)`` runs stage i under ``torch.enable_grad`` on x
made to require grad, so the graph it records starts at that stage;
``backward(i, tape, δ)`` differentiates that graph with ``torch.autograd.grad``
and returns δ_{i-1} and the stage's parameter gradients (returned, not
accumulated: the wrapper hands them to autograd, so ``torch.autograd.grad``
works through a checkpointed model).

A tape is ``(graph, *held)``: ``graph`` keeps the stage's input and output
edges (not the tensors), ``held`` is one ``Held`` record per storage the stage
keeps alive for its backward (what ``saved_tensors_hooks`` sees), parameters
and buffers left out.  The executor's ledger counts them, each storage once,
so ``Stats`` reports the bytes torch really keeps.  That counting is optional
(``count_bytes``): a Python pack hook on every saved tensor makes a small
stage's forward about twice as slow, so the wrappers count only when asked.
The stage's input enters the graph through ``entry``, not as a leaf, so it is
kept only if an op saves it — as in plain torch.

Two shortcuts, same arithmetic: a stage taped right after its predecessor
continues that stage's graph (``chained``), and a run Backward(j), .., Backward(k)
over chained stages is one engine call at Backward(j); the others then hand out
their share (``pending``).  Per-stage engine calls cost more than the stage on
small layers.

Re-running a stage (a recomputation) restores the RNG state of its first run
(CPU and CUDA), so dropout draws the same masks, and leaves norm layers'
running statistics alone, so they are updated once per step.

Activations are tensors or tuples of them (other tuple items pass through with
no gradient).  ``Loss()`` on this backend means "hand x_n to the caller and take
δ_n back": ``y`` is an ``Upstream`` whose ``grad`` the wrapper fills in.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch.autograd.graph import GradientEdge, get_gradient_edge, saved_tensors_hooks
from torch.nn.modules.batchnorm import _NormBase


@dataclass(eq=False)
class Held:
    """A storage a tape keeps alive: its identity and its bytes."""

    key: tuple
    nbytes: int


@dataclass(eq=False)
class Upstream:
    """δ_n from outside the chain (autograd's grad_output), read by ``loss``."""

    grad: object = None


@dataclass(frozen=True)
class _PassThrough:
    """An output item that is input item j itself: its δ goes straight to δ_{i-1}[j]."""

    j: int


@dataclass(eq=False)
class _Graph:
    """One stage's recorded graph: its input leaves and its output edges."""

    container: type | None       # the input's ``kind``
    inputs: list                 # per input item: its GradientEdge, or None
    edges: list                  # per output item: GradientEdge, _PassThrough or None
    params: list                 # (global index, parameter) pairs of this stage
    chained: bool = False        # the input is the previous stage's taped output, graph attached

    @property
    def simple(self) -> bool:
        """One tensor in, one tensor out: stages like this can be backwarded together."""
        return (self.container is None and len(self.edges) == 1
                and isinstance(self.edges[0], GradientEdge))


def storage_key(t: torch.Tensor) -> tuple:
    """Identity of a tensor's storage (views share their base's): (device number or -1, address)."""
    return (t.get_device(), t.untyped_storage().data_ptr())


def items(v) -> list:
    """The items of an activation: [v] for a tensor, the elements of a tuple or list."""
    return list(v) if isinstance(v, (tuple, list)) else [v]


def kind(v):
    """The container type of an activation (tuple, list, a namedtuple), or None for a tensor."""
    return type(v) if isinstance(v, (tuple, list)) else None


def rebuild(container, values: list):
    """``values`` in a ``container`` from ``kind`` (None: the single value)."""
    if container is None:
        return values[0]
    return container(*values) if hasattr(container, "_fields") else container(values)


def _floating(t) -> bool:
    return isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())


class RngState:
    """The CPU RNG state and that of the given CUDA devices, captured now."""

    def __init__(self, cuda_devices: tuple = ()):
        self.devices = cuda_devices
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in cuda_devices]

    def restore(self) -> None:
        """Make the generators draw again what they drew after the capture."""
        torch.set_rng_state(self.cpu)
        for d, state in zip(self.devices, self.cuda):
            torch.cuda.set_rng_state(state, d)


@contextmanager
def frozen_running_stats(norms: list):
    """Norm layers in training mode use batch statistics but leave running ones untouched."""
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


def tracking_norms(module) -> list:
    """The norm layers in ``module`` that would update running statistics in this call."""
    if not isinstance(module, torch.nn.Module):
        return []
    return [m for m in module.modules()
            if isinstance(m, _NormBase) and m.training and m.track_running_stats]


@dataclass(eq=False)
class TorchBackend:
    """Runs stage i of ``stages`` forward and backward for the executor."""

    stages: list
    params: list                      # per stage: [(global index, parameter)] requiring grad
    input_needs_grad: list            # per stage: does δ_{i-1} matter
    resident: frozenset = frozenset()  # storage keys of parameters and buffers (not counted)
    recomputed: frozenset = frozenset()  # stages the schedule runs more than once
    replay_starts: frozenset = frozenset()  # stages a re-run starts from: the RNG state is kept there
    preserve_rng: bool = True
    cuda_devices: tuple = ()
    outer_hooks: tuple | None = None   # the caller's saved-tensor hooks (e.g. save_on_cpu): ours call them
    count_bytes: bool = True           # tapes list what they hold (Held); off, a tape is its graph alone
    chained: frozenset = frozenset()   # stages whose ForwardTape directly follows ForwardTape(i-1)
    fuse: dict = field(default_factory=dict)  # Backward(j) → k: Backward(j), .., Backward(k) in a row
    runs: dict = field(default_factory=dict)
    rng: dict = field(default_factory=dict)
    norms: list | None = None          # per stage: its norm layers that track running statistics
    graphs: dict = field(default_factory=dict)    # stage → its _Graph, while taped
    pending: dict = field(default_factory=dict)   # stage → (δ_{i-1}, grads) from a joint backward
    last: tuple | None = None                     # (i, x_i as returned, x_i with its graph)

    def check_inputs(self, n, x, y) -> None:
        """Raise unless the schedule has one stage per module."""
        if n != len(self.stages):
            raise ValueError(f"torch backend: the schedule is for {n} stages but the model has "
                             f"{len(self.stages)}; build the schedule with n={len(self.stages)}")

    # -- forward --------------------------------------------------------------
    def forward(self, i, x, keep_tape):
        """x_i and, when asked, stage i's tape; a re-run replays RNG and spares running statistics."""
        stage, runs = self.stages[i - 1], self.runs.get(i, 0)
        self.runs[i] = runs + 1
        if runs == 0:                                   # the first run: what recomputation replays
            if self.preserve_rng and i in self.replay_starts:
                self.rng[i] = RngState(self.cuda_devices)
            return self._run(i, stage, x, keep_tape)
        if i in self.rng:
            self.rng[i].restore()
        norms = self.norms[i - 1] if self.norms is not None else tracking_norms(stage)
        if not norms:
            return self._run(i, stage, x, keep_tape)
        with frozen_running_stats(norms):
            return self._run(i, stage, x, keep_tape)

    def _run(self, i, stage, x, keep_tape):
        if keep_tape:
            return self._taped(i, stage, x)
        if torch.is_grad_enabled():     # autograd runs the wrapper's forward and backward without grad
            with torch.no_grad():
                return stage(x), None
        return stage(x), None

    def _taped(self, i, stage, x):
        last, self.last, held = self.last, None, {}
        chained = i in self.chained and last is not None and last[0] == i - 1 and last[1] is x
        container = kind(x)
        with torch.enable_grad(), self._hooks(held):
            if chained:       # continue stage i-1's graph: no entry node, one backward can span both
                inputs, in_edges = [last[2]], [last[3]]
            else:
                inputs, in_edges = self._graph_inputs(i, x)
            out = stage(inputs[0] if container is None else rebuild(container, inputs))
        if isinstance(out, torch.Tensor):
            edges, plain = [self._edge(out, inputs)], out.detach()
        else:
            edges = [self._edge(o, inputs) for o in items(out)]
            plain = rebuild(kind(out), [o.detach() if isinstance(o, torch.Tensor) else o for o in items(out)])
        graph = _Graph(container, in_edges, edges, self.params[i - 1], chained)
        if graph.simple:
            self.last = (i, plain, out, edges[0])
        self.graphs[i] = graph
        return plain, (graph, *held.values())

    def _graph_inputs(self, i, x):
        """x's items as the start of stage i's graph, and their gradient edges (None: no gradient)."""
        need = self.input_needs_grad[i - 1]
        inputs = [entry(t) if need and _floating(t) else t.detach() if isinstance(t, torch.Tensor)
                  else t for t in items(x)]
        return inputs, [get_gradient_edge(t) if isinstance(t, torch.Tensor) and t.requires_grad else None
                        for t in inputs]

    def _hooks(self, held: dict):
        """Saved-tensor hooks for one taped stage: count what it saves into ``held`` (when
        counting bytes) and apply the caller's hooks (also when recomputing in backward)."""
        resident, outer = self.resident, self.outer_hooks
        if not self.count_bytes:
            return nullcontext() if outer is None else saved_tensors_hooks(*outer)

        def pack(t):          # autograd keeps it with the graph: it must not refer to the backend
            st = t.untyped_storage()
            key = (t.get_device(), st.data_ptr())          # storage_key(t), one storage lookup
            if key not in held and key not in resident:
                held[key] = Held(key, st.nbytes())
            return t.detach() if outer is None else outer[0](t)     # see _unpack

        return saved_tensors_hooks(pack, _unpack if outer is None else outer[1])

    @staticmethod
    def _edge(o, inputs):
        if not isinstance(o, torch.Tensor) or not o.requires_grad:
            return None
        for j, t in enumerate(inputs):
            if t is o:
                return _PassThrough(j)           # the stage returns its input j as is
        return _edge_of(o) if o.grad_fn is not None else None

    # -- loss and backward ----------------------------------------------------
    def loss(self, x, y):
        """Hand x_n to the caller (the Function returns it) and take δ_n from ``y``, an Upstream."""
        self.last = None
        delta, y.grad = y.grad, None          # the executor's reference is then the only one here
        return None, delta

    def backward(self, i, tape, delta):
        """δ_{i-1} (None inside a joint backward) and stage i's parameter gradients by global index."""
        self.last = None                    # would keep the last re-taped output alive
        self.graphs.pop(i, None)
        if i in self.pending:
            return self.pending.pop(i)
        k = self.fuse.get(i)
        if k is not None and all(m in self.graphs for m in range(k, i)):
            group = [tape[0]] + [self.graphs[m] for m in range(i - 1, k - 1, -1)]
            if all(g.simple for g in group) and all(g.chained for g in group[:-1]):
                return self._backward_together(i, group, delta)
        return self._backward_one(tape[0], delta)

    def _backward_together(self, i, group, delta):
        """Stages i, i-1, .., k (one chained graph) in one engine call; the rest is handed out later."""
        k = i - len(group) + 1
        wrt = [e for e in group[-1].inputs if e is not None]
        n_in, owners, seen = len(wrt), [], set()
        for m, g in zip(range(i, k - 1, -1), group):
            for idx, p in g.params:
                if idx not in seen:                     # a parameter shared by two stages: once
                    seen.add(idx)
                    wrt.append(p)
                    owners.append((m, idx))
        got = [None] * len(wrt)
        if delta is not None and wrt:
            got = list(torch.autograd.grad([group[0].edges[0]], wrt, [delta], allow_unused=True))
        grads = {m: {} for m in range(k, i + 1)}
        for (m, idx), g in zip(owners, got[n_in:]):
            if g is not None:
                grads[m][idx] = g
        for m in range(k + 1, i):
            self.pending[m] = (None, grads[m])          # δ_{m-1} never materialises
        self.pending[k] = (rebuild(group[-1].container, got[:n_in] or [None]), grads[k])
        for m in range(k, i):
            self.graphs.pop(m, None)
        return None, grads[i]

    def _backward_one(self, graph, delta):
        outs, grads_out, passed = [], [], {}
        for edge, d in zip(graph.edges, items(delta)):
            if edge is None or d is None:
                continue
            if isinstance(edge, _PassThrough):
                passed[edge.j] = d
            else:
                outs.append(edge)
                grads_out.append(d)
        wrt = [t for t in graph.inputs if t is not None] + [p for _, p in graph.params]
        got = [None] * len(wrt)
        if outs and wrt:
            got = list(torch.autograd.grad(outs, wrt, grads_out, allow_unused=True))
        k = 0
        dx = []
        for j, t in enumerate(graph.inputs):
            g = None
            if t is not None:
                g, k = got[k], k + 1
            if j in passed:
                g = passed[j] if g is None else g + passed[j]
            dx.append(g)
        grads = {idx: g for (idx, _), g in zip(graph.params, got[k:]) if g is not None}
        return rebuild(graph.container, dx), grads

    # -- byte ledger ----------------------------------------------------------
    def storage(self, value):
        """Identity of the storage behind a tensor, a Held record or a tuple of tensors."""
        if isinstance(value, Held):
            return value.key
        if isinstance(value, torch.Tensor):
            return storage_key(value)
        if isinstance(value, (tuple, list)):
            return tuple(self.storage(v) for v in value)
        return ("object", id(value))

    def nbytes(self, value):
        """Bytes of the storage(s) behind ``value``."""
        if isinstance(value, Held):
            return value.nbytes
        if isinstance(value, torch.Tensor):
            return value.untyped_storage().nbytes()
        if isinstance(value, (tuple, list)):
            return sum(self.nbytes(v) for v in value)
        return 0

    def temp_bytes(self, action, operand, y=None) -> int:
        """Not modelled on torch: 0 (the allocator's transients are measured, not predicted)."""
        return 0


def _unpack(t):
    """The saved tensor back.  Packs hand autograd ``t.detach()``, not t: a saved output
    (ReLU's, say) that held itself would make a cycle through its own grad_fn, and
    its graph would outlive the step until Python's garbage collector ran."""
    return t


def outer_saved_hooks():
    """The (pack, unpack) saved-tensor hooks in force now (``save_on_cpu`` and the like), or None."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return top(False) if top is not None else None


def _edge_of(t: torch.Tensor) -> GradientEdge:
    """``get_gradient_edge(t)``, without its extra work when t's node is a C++ one."""
    fn = t.grad_fn
    if fn is not None and not isinstance(fn, torch._C._FunctionBase):
        return GradientEdge(fn, t.output_nr)
    return get_gradient_edge(t)


class _Entry(torch.autograd.Function):
    """x as the start of a stage's graph, without making x a leaf that the graph keeps alive."""

    @staticmethod
    def forward(ctx, anchor, x):
        return x.view_as(x)               # not x.detach(): with saved-tensor hooks on, 3× slower

    @staticmethod
    def backward(ctx, grad):
        return None, None


_ANCHOR = torch.empty(0, requires_grad=True)


def entry(x: torch.Tensor) -> torch.Tensor:
    """x (same storage) requiring grad, its gradient readable at ``get_gradient_edge``.

    A detached leaf would do, but autograd keeps a leaf alive for as long as the
    graph that uses it, even when no op saves it; plain torch would have freed
    it.  Here only what the stage's ops save is kept.
    """
    return _Entry.apply(_ANCHOR, x)
