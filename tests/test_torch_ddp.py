"""Checkpointed models under DistributedDataParallel, and gradients ready stage by stage (overlap).

Two processes (gloo, CPU, 127.0.0.1 only) train every strategy for two SGD steps on half a
batch each. Their gradients must equal (1) plain DDP's bitwise and (2) single-process
training on the concatenated batch (to float64 rounding: DDP averages two partial sums).
DDP's all-reduce must start before the backward of stage 1 runs: a comm hook logs each
bucket it is handed, a probe at the end of stage 1 logs when autograd reaches it (from the
second step on: torch 2.13's DDP puts every parameter in one bucket for the first backward,
then rebuilds its buckets in the order gradients became ready). The same
order is checked without DDP through parameters' post-accumulate-grad hooks, which must
also fire exactly once per parameter per backward (what DDP's reducer relies on).

The workers are this module run as ``python -m``; ``main`` below is their entry point.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import ckpt  # noqa: E402

from .conftest_torch import STRATEGIES, forward_steps, single_thread  # noqa: E402, F401
from .torch_models import mlp_stages  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

WIDTH, BATCH, DEPTH, STEPS, LR = 8, 8, 6, 2, 0.1
CASES = ("plain", *(f"sequential-{s}" for s in STRATEGIES), *(f"modules-{s}" for s in STRATEGIES),
         "checkpoint_sequential-2")
TIMEOUT_S = 240             # generous: six helpers share two cores (this module used ~21 s of CPU here)


class _Probe(torch.autograd.Function):
    """Identity whose backward appends ``name`` to ``log``: marks when autograd reaches a point."""

    @staticmethod
    def forward(ctx, x, log, name):
        ctx.log, ctx.name = log, name
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.log.append(ctx.name)
        return grad, None, None


class Probe(nn.Module):
    """``_Probe`` as a module (the last op of stage 1)."""

    def __init__(self, log: list, name: str = "stage 1 backward"):
        super().__init__()
        self.log, self.name = log, name

    def forward(self, x):
        return _Probe.apply(x, self.log, self.name)


class Net(nn.Module):
    """A model whose own forward loops over a ModuleList (the target of ``checkpoint_modules``)."""

    def __init__(self, stages):
        super().__init__()
        self.blocks = nn.ModuleList(stages)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class SegmentsNet(Net):
    """``Net`` whose forward is ``ckpt.checkpoint_sequential`` over its blocks."""

    def __init__(self, stages, segments: int):
        super().__init__(stages)
        self.segments = segments

    def forward(self, x):
        return ckpt.checkpoint_sequential(list(self.blocks), self.segments, x)


def probed_stages(log: list) -> list:
    """The test chain (Linear+Tanh stages, float64, seed 0) with a probe closing stage 1."""
    stages = mlp_stages(DEPTH, WIDTH, WIDTH)
    stages[0].append(Probe(log))
    return stages


def build(case: str, log: list):
    """(model, handle with ``last_stats`` or None, the last stage) for one case."""
    stages = probed_stages(log)
    kind, _, option = case.partition("-")
    if kind == "plain":
        return nn.Sequential(*stages), None, stages[-1]
    if kind == "sequential":
        model = ckpt.CheckpointedSequential(stages, strategy=option)
        return model, model, stages[-1]
    if kind == "modules":
        model = Net(stages)
        return model, ckpt.checkpoint_modules(model.blocks, strategy=option), stages[-1]
    return SegmentsNet(stages, int(option)), None, stages[-1]


def data():
    """The whole batch and its regression targets (float64, fixed seed)."""
    g = torch.Generator().manual_seed(11)
    return (torch.randn(BATCH, WIDTH, generator=g, dtype=torch.float64),
            torch.randn(BATCH, WIDTH, generator=g, dtype=torch.float64))


def loss_of(out, target):
    """Mean over examples, so that DDP's average of two halves is the loss of the whole batch."""
    return (out - target).square().sum(dim=1).mean()


def train(model, x, target, on_step=None) -> list:
    """``STEPS`` SGD steps; per step, every parameter's gradient by name."""
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    grads = []
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss_of(model(x), target).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        if on_step is not None:
            on_step(step)
        opt.step()
    return grads


def bare(name: str) -> str:
    """A parameter name without DDP's and the wrappers' prefixes: the index in the chain and below."""
    parts = name.split(".")
    while parts and not parts[0].isdigit():
        parts.pop(0)
    return ".".join(parts)


def logging_allreduce(log: list, names: dict):
    """DDP comm hook: log the bucket's parameter names, then all-reduce and average as DDP does."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    def hook(state, bucket):
        log.append(("allreduce", tuple(names[id(p)] for p in bucket.parameters())))
        return allreduce_hook(state, bucket)
    return hook


def run_case(case: str, rank: int, world: int, device: torch.device) -> dict:
    """Train one case under DDP on this rank's half of the batch; its gradients, event log, step counts."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    log: list = []
    model, handle, last = build(case, log)
    model.to(device)
    names = {id(p): bare(n) for n, p in model.named_parameters()}
    last_names = sorted(names[id(p)] for p in last.parameters())
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, bucket_cap_mb=1e-6)
    ddp.register_comm_hook(None, logging_allreduce(log, names))
    x, target = (t.to(device) for t in data())
    half = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    steps, events = [], []

    def on_step(step):
        events.append(list(log))
        log.clear()
        if handle is not None:
            steps.append(forward_steps(handle))
    grads = train(ddp, x[half], target[half], on_step)
    return {"grads": [{bare(n): g.cpu() for n, g in step.items()} for step in grads],
            "events": events, "last": last_names, "forward_steps": steps}


def run_case_or_error(case: str, rank: int, world: int, device: torch.device) -> dict:
    """``run_case``, or its traceback (one failing case must not hide the others' results)."""
    import traceback
    try:
        return run_case(case, rank, world, device)
    except Exception:
        return {"error": traceback.format_exc()}


def case_results(results: dict, case: str, rank: int) -> dict:
    """One case's results on one rank; fails the test with the worker's traceback if it raised."""
    if "error" in results[case]:
        pytest.fail(f"rank {rank}, case {case} raised in the DDP worker:\n{results[case]['error']}")
    return results[case]


def main(argv=None):
    """Worker entry point: join the process group, run every case, save the results."""
    import torch.distributed as dist
    p = argparse.ArgumentParser()
    for arg in ("--rank", "--world", "--port"):
        p.add_argument(arg, type=int, required=True)
    p.add_argument("--backend", required=True)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    dist.init_process_group(a.backend, init_method=f"tcp://127.0.0.1:{a.port}", rank=a.rank,
                            world_size=a.world)
    try:
        device = torch.device("cuda", a.rank) if a.backend == "nccl" else torch.device("cpu")
        results = {case: run_case_or_error(case, a.rank, a.world, device) for case in CASES}
        torch.save(results, a.out / f"rank{a.rank}.pt")
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------ the tests

def free_port() -> int:
    """A port free on the loopback interface now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(backend: str, out: Path, world: int = 2) -> list:
    """Run ``world`` workers to completion (killed after ``TIMEOUT_S``); each rank's results."""
    roots = {str(Path(ckpt.__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1])}
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([*roots, os.environ.get("PYTHONPATH", "")]))
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", __name__, "--rank", str(r), "--world", str(world),
                               "--port", str(port), "--backend", backend, "--out", str(out)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(world)]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        pytest.fail(f"DDP workers did not finish within {TIMEOUT_S} s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for r, (proc, text) in enumerate(zip(procs, logs)):
        assert proc.returncode == 0, f"rank {r} failed:\n{text[-4000:]}"
    return [torch.load(out / f"rank{r}.pt") for r in range(world)]


def single_process_grads() -> list:
    """Plain training on the concatenated batch: the reference every DDP case must match."""
    model = nn.Sequential(*probed_stages([]))
    return [{bare(n): g for n, g in step.items()} for step in train(model, *data())]


def expected_forward_steps(case: str) -> int:
    """Forward steps of one step of a ``sequential-`` or ``modules-`` case."""
    return ckpt.make_schedule(case.partition("-")[2], DEPTH).forward_steps


def overlap_violations(events: list, last: list) -> str | None:
    """None when some bucket of only last-stage parameters was all-reduced before stage 1's backward."""
    if "stage 1 backward" not in events:
        return f"stage 1's backward never ran: {events}"
    before = events[:events.index("stage 1 backward")]
    if not any(e[0] == "allreduce" and set(e[1]) <= set(last) for e in before):
        return f"no all-reduce of the last stage {last} before stage 1's backward: {events}"
    return None


@pytest.fixture(scope="module")
def gloo_results(tmp_path_factory):
    """Both ranks' results of every case (one launch for the whole module)."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    return launch("gloo", tmp_path_factory.mktemp("ddp_gloo"))


@pytest.mark.parametrize("case", CASES[1:])
def test_ddp_gradients_equal_single_process_training(gloo_results, case):
    reference = single_process_grads()
    for rank, results in enumerate(gloo_results):
        mine = case_results(results, case, rank)
        got, plain_ddp = mine["grads"], case_results(results, "plain", rank)["grads"]
        for step in range(STEPS):
            assert got[step].keys() == reference[step].keys()
            for name, g in got[step].items():
                assert torch.equal(g, plain_ddp[step][name]), f"rank {rank} step {step} {name}: differs from plain DDP"
                torch.testing.assert_close(g, reference[step][name], rtol=1e-12, atol=1e-14,
                                           msg=f"rank {rank} step {step} {name}: differs from one process")
        if mine["forward_steps"]:
            assert mine["forward_steps"] == [expected_forward_steps(case)] * STEPS


@pytest.mark.parametrize("case", CASES)
def test_ddp_all_reduce_starts_before_stage_1_backward(gloo_results, case):
    """From the second step on (DDP's rebuilt buckets), the last stage's bucket is all-reduced first."""
    for rank, results in enumerate(gloo_results):
        mine = case_results(results, case, rank)
        for step, events in enumerate(mine["events"][1:], start=1):
            problem = overlap_violations(events, mine["last"])
            assert problem is None, f"rank {rank} step {step}: {problem}"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="nccl needs two CUDA devices")
def test_ddp_nccl_gradients_equal_plain_ddp(tmp_path):
    for rank, results in enumerate(launch("nccl", tmp_path)):
        plain = case_results(results, "plain", rank)
        for case in CASES[1:]:
            mine = case_results(results, case, rank)
            for step in range(STEPS):
                for name, g in mine["grads"][step].items():
                    assert torch.equal(g, plain["grads"][step][name]), (case, step, name)
            assert overlap_violations(mine["events"][-1], mine["last"]) is None


@pytest.mark.parametrize("case", CASES)
def test_gradients_ready_stage_by_stage_once_each(case):
    """Without DDP: the last stage's post-accumulate-grad hooks fire before stage 1's backward, once each."""
    log: list = []
    model, _, last = build(case, log)
    names = {id(p): bare(n) for n, p in model.named_parameters()}
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(lambda p: log.append(("allreduce", (names[id(p)],))))
    x, target = data()
    loss_of(model(x), target).backward()
    assert overlap_violations(log, sorted(names[id(p)] for p in last.parameters())) is None
    ready = sorted(e[1][0] for e in log if e[0] == "allreduce")
    assert ready == sorted(names.values()), "every parameter's gradient must become ready exactly once"


if __name__ == "__main__":
    main()
